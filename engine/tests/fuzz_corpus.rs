//! Replays the fuzz seed corpora (`fuzz/corpus/<target>/`) through the fuzz entry points on stable,
//! so that CI checks every seed, and any crash input a fuzzing run added to a corpus, on every
//! change. The corpora's decode seeds are written by `decode::fuzz`'s `write_seed_corpora`.

use std::path::{Path, PathBuf};

fn corpus(target: &str) -> Vec<PathBuf> {
    let directory = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&directory)
        .unwrap_or_else(|error| panic!("{}: {error}", directory.display()))
        .map(|entry| entry.expect("a readable corpus entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} has no seeds", directory.display());
    files
}

fn replay(target: &str, entry: fn(&[u8])) {
    for path in corpus(target) {
        let input = std::fs::read(&path).expect("a readable corpus file");
        eprintln!("{target}: {}", path.display());
        entry(&input);
    }
}

#[test]
fn decode_corpus_replays_cleanly() {
    replay("decode", shardgate::decode::fuzz_entry);
}

#[test]
fn shard_machine_corpus_replays_cleanly() {
    replay("shard_machine", shardgate::shard::fuzz_entry);
}
