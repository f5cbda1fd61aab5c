//! Replays the fuzz seed corpora (`fuzz/corpus/<target>/`) through the fuzz entry points on stable,
//! so that CI checks every seed, and any crash input a fuzzing run added to a corpus, on every
//! change. One test per `fuzz/` target. The decode, classify and shard seeds are written by
//! `decode::fuzz`'s `write_seed_corpora`, the batch encoder's by `sink::fuzz`'s
//! `write_seed_corpus`, the frame reader's and the admin request reader's by
//! `write_transport_and_admin_seeds` below.

use std::path::{Path, PathBuf};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

fn corpus(target: &str) -> Vec<PathBuf> {
    let directory = corpus_dir(target);
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
fn decode_zstd_stream_corpus_replays_cleanly() {
    replay(
        "decode_zstd_stream",
        shardgate::decode::fuzz::zstd_stream_entry,
    );
}

#[test]
fn decode_zlib_stream_corpus_replays_cleanly() {
    replay(
        "decode_zlib_stream",
        shardgate::decode::fuzz::zlib_stream_entry,
    );
}

#[test]
fn decode_payload_corpus_replays_cleanly() {
    replay("decode_payload", shardgate::decode::fuzz::payload_entry);
}

#[test]
fn decode_none_corpus_replays_cleanly() {
    replay("decode_none", shardgate::decode::fuzz::none_entry);
}

#[test]
fn classify_corpus_replays_cleanly() {
    replay("classify", shardgate::decode::fuzz::classify_entry);
}

#[test]
fn shard_machine_corpus_replays_cleanly() {
    replay("shard_machine", shardgate::shard::fuzz_entry);
}

#[test]
fn batch_encoder_corpus_replays_cleanly() {
    replay("batch_encoder", shardgate::sink::fuzz::batch_encoder_entry);
}

#[test]
fn frame_reader_corpus_replays_cleanly() {
    replay(
        "frame_reader",
        shardgate::transport::frame_reader_fuzz_entry,
    );
}

#[test]
fn admin_request_corpus_replays_cleanly() {
    replay("admin_request", shardgate::admin::fuzz::request_entry);
}

/// A WebSocket frame as a server sends it (unmasked; payloads under 64 KiB).
fn server_frame(opcode: u8, is_final: bool, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![opcode | if is_final { 0x80 } else { 0 }];
    match payload.len() {
        length @ 0..=125 => frame.push(u8::try_from(length).expect("at most 125")),
        length => {
            frame.push(126);
            let length = u16::try_from(length).expect("a seed frame is under 64 KiB");
            frame.extend_from_slice(&length.to_be_bytes());
        }
    }
    frame.extend_from_slice(payload);
    frame
}

/// Writes the seeds of `frame_reader` and `admin_request`:
/// `cargo test -p shardgate --test fuzz_corpus write_transport_and_admin_seeds -- --ignored`.
#[test]
#[ignore = "writes fuzz/corpus; run by hand when the input format changes"]
fn write_transport_and_admin_seeds() {
    const TEXT: u8 = 1;
    const BINARY: u8 = 2;
    const CONTINUE: u8 = 0;
    const CLOSE: u8 = 8;
    const PING: u8 = 9;
    let hello = br#"{"t":null,"s":null,"op":10,"d":{"heartbeat_interval":41250}}"#;
    let dispatch = br#"{"t":"MESSAGE_CREATE","s":2,"op":0,"d":{"id":"1","guild_id":"5","content":"caf\u00e9"}}"#;
    let big = format!(
        r#"{{"t":"GUILD_CREATE","s":3,"op":0,"d":{{"x":"{}"}}}}"#,
        "y".repeat(3000)
    );
    let session = [
        server_frame(TEXT, true, hello),
        server_frame(PING, true, b"p"),
        server_frame(TEXT, true, dispatch),
        server_frame(BINARY, true, &[0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0xff, 0xff]),
        server_frame(TEXT, true, big.as_bytes()),
    ]
    .concat();
    let fragmented = [
        server_frame(TEXT, false, &dispatch[..20]),
        server_frame(PING, true, b""),
        server_frame(CONTINUE, false, &dispatch[20..40]),
        server_frame(CONTINUE, true, &dispatch[40..]),
    ]
    .concat();
    let mut close_reason = 4000u16.to_be_bytes().to_vec();
    close_reason.extend_from_slice(b"resume");
    let closed = [
        server_frame(TEXT, true, dispatch),
        server_frame(CLOSE, true, &close_reason),
        server_frame(TEXT, true, b"{}"),
    ]
    .concat();
    let violations = [
        server_frame(TEXT, true, b"\xff\xfe"),
        vec![0x81 | 0x40, 2, b'{', b'}'],
        vec![0x83, 0],
        vec![0x82, 127, 0, 0, 0, 0, 0x40, 0, 0, 0],
    ]
    .concat();
    // Limits byte: frame and message of `16 << nibble` bytes; 0xcc is 64 KiB for both.
    let frame_reader: [(&str, Vec<u8>); 6] = [
        ("session", [&[0xcc, 7][..], &session].concat()),
        ("session-small-limits", [&[0x88, 1][..], &session].concat()),
        ("fragmented", [&[0xcc, 200][..], &fragmented].concat()),
        (
            "fragmented-message-limit",
            [&[0x3c, 3][..], &fragmented].concat(),
        ),
        ("closed", [&[0xcc, 42][..], &closed].concat()),
        ("violations", [&[0xcc, 9][..], &violations].concat()),
    ];
    let admin: [(&str, &[u8]); 8] = [
        (
            "command",
            b"\x06POST /commands?shard_id=3 HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer k\r\nContent-Type: application/json\r\nContent-Length: 44\r\n\r\n{\"op\":3,\"d\":{\"status\":\"online\",\"afk\":false}}",
        ),
        (
            "status",
            b"\x00GET /status HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer k\r\n\r\n",
        ),
        (
            "reconnect",
            b"\x10POST /shards/0/reconnect?new_session=true HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        ),
        (
            "endless-header",
            b"\x01GET / HTTP/1.1\r\nX-Long: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        ),
        (
            "too-large-body",
            b"\x02POST / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n",
        ),
        (
            "chunked",
            b"\x04POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "extra-bytes",
            b"\x0aPOST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nabcdef",
        ),
        ("cut-short", b"\x00POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc"),
    ];
    for (target, seeds) in [
        ("frame_reader", frame_reader.to_vec()),
        (
            "admin_request",
            admin
                .iter()
                .map(|(name, input)| (*name, input.to_vec()))
                .collect(),
        ),
    ] {
        let directory = corpus_dir(target);
        std::fs::create_dir_all(&directory).unwrap();
        for (name, input) in seeds {
            std::fs::write(directory.join(name), input).unwrap();
        }
    }
}
