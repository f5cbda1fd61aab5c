//! Stage: sink, disk spill. What the spill costs per record when the bot is down (append) and when
//! it comes back (replay), for ~1.1 KB records (a typical MESSAGE_CREATE: 1,100 payload bytes,
//! 1,126 bytes on disk), in a directory under the system temp dir.
//!
//! Each iteration moves 10,000 records, in batches of 100 (the sink's unit):
//! - `append/<fsync>`: `append` ×100 then `flush`, per batch, on a spill that is drained (untimed)
//!   after each iteration, so the files stay small and segments rotate and get deleted as in
//!   production;
//! - `replay/<fsync>`: `peek(100 records)` then `ack` until empty, after an untimed fill; the
//!   cursor is saved on every ack (a temp file and a rename);
//! - `recover`: `Spill::open` of a directory holding the 10,000 records (every record read and
//!   checksummed), after an untimed fill and drop.
//!
//! `<fsync>` is `never` or `1000ms` (the default). `/records` variants report records per second,
//! `/bytes` the on-disk bytes per second. Times are wall time: the spill's cost is system calls
//! and, for fsync, waiting on the disk. The files stay in the page cache: this is the cost the
//! sink thread sees, not the disk's sequential bandwidth.
//!
//! Run: `cargo bench -p shardgate-bench --bench spill` (add `-- --quick` for a short run).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use shardgate::record::{Record, RecordKind};
use shardgate::spill::{FsyncPolicy, RECORD_OVERHEAD_BYTES, Spill, SpillConfig};

/// Records moved per iteration.
const RECORDS: u64 = 10_000;
/// Records per append batch (then `flush`) and per peek.
const BATCH_RECORDS: usize = 100;
const PAYLOAD_BYTES: usize = 1_100;
const ON_DISK_BYTES: u64 = (PAYLOAD_BYTES + RECORD_OVERHEAD_BYTES) as u64;

const POLICIES: [FsyncPolicy; 2] = [FsyncPolicy::Never, FsyncPolicy::IntervalMs(1000)];

/// A MESSAGE_CREATE-shaped payload of exactly `PAYLOAD_BYTES`.
fn record(seq: u64) -> Record {
    let mut payload = format!(
        r#"{{"t":"MESSAGE_CREATE","s":{seq},"op":0,"d":{{"id":"1300000000000{seq:06}","content":""#
    )
    .into_bytes();
    payload.resize(PAYLOAD_BYTES - 3, b'x');
    payload.extend_from_slice(br#""}}"#);
    Record {
        shard_id: (seq % 16) as u32,
        shard_count: 0,
        seq,
        session: 0,
        kind: RecordKind::Dispatch,
        payload: payload.into(),
    }
}

/// A directory for one bench case, removed on drop.
struct BenchDir(PathBuf);

impl BenchDir {
    fn new(case: &str) -> BenchDir {
        let path = std::env::temp_dir().join(format!(
            "shardgate-bench-spill-{}-{case}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        BenchDir(path)
    }

    fn config(&self, fsync: FsyncPolicy) -> SpillConfig {
        SpillConfig {
            fsync,
            ..SpillConfig::new(&self.0)
        }
    }
}

impl Drop for BenchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn open(config: &SpillConfig) -> Spill {
    let (spill, _) = Spill::open(config.clone()).expect("the bench directory is writable");
    spill
}

fn fill(spill: &mut Spill, records: &[Record]) {
    for batch in records.chunks(BATCH_RECORDS) {
        for record in batch {
            let appended = spill.append(record).expect("append");
            debug_assert_eq!(appended.dropped_records, 0);
        }
        spill.flush().expect("flush");
    }
}

fn drain(spill: &mut Spill, out: &mut Vec<Record>) -> u64 {
    let mut delivered = 0;
    loop {
        out.clear();
        let count = spill.peek(BATCH_RECORDS, usize::MAX, out).expect("peek");
        if count == 0 {
            return delivered;
        }
        black_box(&out);
        spill.ack(count).expect("ack");
        delivered += count as u64;
    }
}

/// Registers `run` twice: `/records` (elements) and `/bytes` (on-disk bytes).
fn both_throughputs(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    mut run: impl FnMut(u64) -> Duration,
) {
    group.throughput(Throughput::Elements(RECORDS));
    group.bench_function(format!("{name}/records"), |bencher| {
        bencher.iter_custom(&mut run)
    });
    group.throughput(Throughput::Bytes(RECORDS * ON_DISK_BYTES));
    group.bench_function(format!("{name}/bytes"), |bencher| {
        bencher.iter_custom(&mut run)
    });
}

fn spill(c: &mut Criterion) {
    let records: Vec<Record> = (0..RECORDS).map(record).collect();
    assert_eq!(records[0].payload.len(), PAYLOAD_BYTES);

    let mut group = c.benchmark_group("spill");
    group.sample_size(20);
    for policy in POLICIES {
        let dir = BenchDir::new(&format!("append-{policy}"));
        let mut spill = open(&dir.config(policy));
        let mut out = Vec::with_capacity(BATCH_RECORDS);
        both_throughputs(&mut group, &format!("append/{policy}"), |iterations| {
            let mut elapsed = Duration::ZERO;
            for _ in 0..iterations {
                let start = Instant::now();
                fill(&mut spill, &records);
                elapsed += start.elapsed();
                assert_eq!(drain(&mut spill, &mut out), RECORDS);
            }
            elapsed
        });
        drop(spill);

        let dir = BenchDir::new(&format!("replay-{policy}"));
        let mut spill = open(&dir.config(policy));
        both_throughputs(&mut group, &format!("replay/{policy}"), |iterations| {
            let mut elapsed = Duration::ZERO;
            for _ in 0..iterations {
                fill(&mut spill, &records);
                let start = Instant::now();
                let delivered = drain(&mut spill, &mut out);
                elapsed += start.elapsed();
                assert_eq!(delivered, RECORDS);
            }
            elapsed
        });
    }

    let dir = BenchDir::new("recover");
    let config = dir.config(FsyncPolicy::Never);
    both_throughputs(&mut group, "recover", |iterations| {
        let mut elapsed = Duration::ZERO;
        for _ in 0..iterations {
            remove_dir(&config.dir);
            fill(&mut open(&config), &records);
            let start = Instant::now();
            let (spill, recovered) = Spill::open(config.clone()).expect("reopen");
            elapsed += start.elapsed();
            assert_eq!(recovered.records, RECORDS);
            drop(spill);
        }
        elapsed
    });
    group.finish();
}

fn remove_dir(dir: &Path) {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => panic!("cannot clear {}: {error}", dir.display()),
    }
}

criterion_group!(spill_stage, spill);
criterion_main!(spill_stage);
