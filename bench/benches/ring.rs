//! Stage: ring, core → sink. What the per-core ring costs per record: a
//! `crossbeam_channel::bounded::<Record>(capacity)`, as `runtime.rs` builds it, with one producer
//! thread (a core: blocking `send`, the equivalent of its `try_send` and retry while the ring is
//! full) and one consumer thread (the sink: `recv`, which spins and then parks where the sink's
//! `try_recv` loop would `select`).
//!
//! Each record carries a 1,100-byte payload (the mean dispatch of the mock's default mix), moved
//! through the ring, never copied. Payloads are recycled so that the allocator stays out of the
//! figure: the consumer collects records into pools of [`POOL_RECORDS`] and hands each full pool
//! back to the producer (one message on a side channel per pool), with enough pools in
//! circulation that the ring can fill.
//!
//! Cases:
//! - `spsc/capacity-4096` and `spsc/capacity-65536`: two threads, the wall time from the
//!   producer's first send to the consumer's last receive;
//! - `single-thread`: one thread sends a record and receives it again (no contention, no
//!   wake-ups: the floor of the channel operations themselves).
//!
//! `Throughput::Elements`: records per second (ns per record = 1e9 / rate). On a 2-core machine
//! the two threads share the cores with everything else running, so the two-thread figures move
//! with the machine's load.
//!
//! Run: `cargo bench -p shardgate-bench --bench ring` (add `-- --quick` for a short run).

use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use crossbeam_channel::{Receiver, Sender, bounded, unbounded};
use shardgate::record::{Record, RecordKind};

/// Payload bytes per record: the mean dispatch of the mock generator's default mix.
const PAYLOAD_BYTES: usize = 1_100;
/// Records per pool, the unit of recycling and of one measured iteration.
const POOL_RECORDS: usize = 1_024;
/// Ring capacities measured: a small and a large `ring_capacity` (the default lies between).
const CAPACITIES: [usize; 2] = [4_096, 65_536];

fn record(seq: u64) -> Record {
    let mut payload = Vec::with_capacity(PAYLOAD_BYTES);
    payload.extend_from_slice(br#"{"t":"MESSAGE_CREATE","s":1,"op":0,"d":{"content":""#);
    payload.resize(PAYLOAD_BYTES - 3, b'x');
    payload.extend_from_slice(br#""}}"#);
    Record {
        shard_id: 0,
        shard_count: 16,
        seq,
        session: 0,
        kind: RecordKind::Dispatch,
        payload: payload.into(),
    }
}

/// One ring and the side channels that recycle its records between samples.
struct Ring {
    ring_tx: Sender<Record>,
    ring_rx: Receiver<Record>,
    /// Full pools, consumer → producer.
    full_tx: Sender<Vec<Record>>,
    full_rx: Receiver<Vec<Record>>,
    /// Drained pools, producer → consumer.
    empty_tx: Sender<Vec<Record>>,
    empty_rx: Receiver<Vec<Record>>,
}

impl Ring {
    /// A ring of `capacity` with enough pooled records to fill it and keep both threads busy.
    fn new(capacity: usize) -> Ring {
        let (ring_tx, ring_rx) = bounded(capacity);
        let (full_tx, full_rx) = unbounded();
        let (empty_tx, empty_rx) = unbounded();
        let pools = capacity / POOL_RECORDS + 3;
        let mut seq = 0;
        for _ in 0..pools {
            let pool: Vec<Record> = (0..POOL_RECORDS)
                .map(|_| {
                    seq += 1;
                    record(seq)
                })
                .collect();
            full_tx.send(pool).expect("the receiver is held");
            empty_tx
                .send(Vec::with_capacity(POOL_RECORDS))
                .expect("the receiver is held");
        }
        Ring {
            ring_tx,
            ring_rx,
            full_tx,
            full_rx,
            empty_tx,
            empty_rx,
        }
    }

    /// Moves `pools × POOL_RECORDS` records from a producer thread to a consumer thread; the
    /// wall time from the first send to the last receive. Every record is back in a full pool
    /// afterwards.
    fn run(&self, pools: u64) -> Duration {
        let records = pools * POOL_RECORDS as u64;
        let start_line = Barrier::new(2);
        thread::scope(|scope| {
            let producer = scope.spawn(|| {
                start_line.wait();
                let start = Instant::now();
                for _ in 0..pools {
                    let mut pool = self.full_rx.recv().expect("the consumer returns pools");
                    for record in pool.drain(..) {
                        self.ring_tx
                            .send(record)
                            .expect("the consumer holds the ring");
                    }
                    self.empty_tx
                        .send(pool)
                        .expect("the consumer holds the channel");
                }
                start
            });
            let consumer = scope.spawn(|| {
                let mut pool = self.empty_rx.recv().expect("a drained pool is waiting");
                start_line.wait();
                for received in 1..=records {
                    pool.push(self.ring_rx.recv().expect("the producer holds the ring"));
                    if pool.len() == POOL_RECORDS {
                        self.full_tx
                            .send(pool)
                            .expect("the producer holds the channel");
                        if received == records {
                            break;
                        }
                        pool = self.empty_rx.recv().expect("the producer returns pools");
                    }
                }
                Instant::now()
            });
            let start = producer.join().expect("the producer does not panic");
            let end = consumer.join().expect("the consumer does not panic");
            end.duration_since(start)
        })
    }
}

/// Sends each record and receives it again on one thread, `count` times.
fn single_thread(ring: &Ring, record: &mut Option<Record>, count: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..count {
        let sent = record
            .take()
            .expect("the record is back after each receive");
        ring.ring_tx.try_send(sent).expect("the ring is empty");
        *record = Some(ring.ring_rx.try_recv().expect("the record is in the ring"));
    }
    start.elapsed()
}

fn ring(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("ring");
    group.measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(POOL_RECORDS as u64));
    for capacity in CAPACITIES {
        let ring = Ring::new(capacity);
        group.bench_function(format!("spsc/capacity-{capacity}/records"), |bencher| {
            bencher.iter_custom(|pools| ring.run(pools))
        });
    }
    let ring = Ring::new(CAPACITIES[0]);
    let mut record = Some(record(0));
    group.throughput(Throughput::Elements(1));
    group.bench_function("single-thread/records", |bencher| {
        bencher.iter_custom(|count| single_thread(&ring, &mut record, count))
    });
    group.finish();
}

criterion_group!(ring_stage, ring);
criterion_main!(ring_stage);
