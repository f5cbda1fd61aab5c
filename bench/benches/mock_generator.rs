//! Stage: test world, event generator. How fast the mock gateway's seeded generator writes
//! dispatches: the steady stream over the default mix (bytes and events per second) and a 20 KB
//! GUILD_CREATE. The generator must stay far cheaper than what it feeds (the engine's ~2 µs per
//! event decompression), so that the mock never limits an end-to-end figure.
//!
//! Run: `cargo bench -p shardgate-bench --bench mock_generator` (add `-- --quick` for a short run).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mock_gateway::events::{EventMix, SessionEvents, guild_ids};

const SEED: u64 = 0x5EED;
/// Guilds of the benchmarked shard: a busy shard of a mid-size bot.
const GUILDS_PER_SHARD: usize = 1000;
/// Events generated before measuring, to fill the message window and size the throughput.
const WARM_UP_EVENTS: u64 = 100_000;

fn steady_stream(criterion: &mut Criterion) {
    let mut events = SessionEvents::new(
        SEED,
        0,
        guild_ids(SEED, GUILDS_PER_SHARD),
        EventMix::default(),
    );
    let mut out = Vec::with_capacity(64 * 1024);
    let mut seq = 1;
    let mut warm_up_bytes = 0;
    for _ in 0..WARM_UP_EVENTS {
        out.clear();
        events.next_dispatch(seq, &mut out);
        warm_up_bytes += out.len() as u64;
        seq += 1;
    }
    let mean_event_bytes = warm_up_bytes / WARM_UP_EVENTS;
    eprintln!("mock_generator: mean dispatch over the default mix: {mean_event_bytes} B");

    let mut group = criterion.benchmark_group("mock_generator");
    group.measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Bytes(mean_event_bytes));
    group.bench_function("next_dispatch/default_mix/bytes", |bencher| {
        bencher.iter(|| {
            out.clear();
            let info = events.next_dispatch(seq, &mut out);
            seq += 1;
            black_box((info, out.len()))
        })
    });
    group.throughput(Throughput::Elements(1));
    group.bench_function("next_dispatch/default_mix/events", |bencher| {
        bencher.iter(|| {
            out.clear();
            let info = events.next_dispatch(seq, &mut out);
            seq += 1;
            black_box((info, out.len()))
        })
    });

    let guild_id = guild_ids(SEED, 1)[0];
    let target_bytes = 20_000;
    out.clear();
    events.guild_create(guild_id, 2, target_bytes, &mut out);
    group.throughput(Throughput::Bytes(out.len() as u64));
    group.bench_function("guild_create/20000", |bencher| {
        bencher.iter(|| {
            out.clear();
            events.guild_create(black_box(guild_id), 2, target_bytes, &mut out);
            black_box(out.len())
        })
    });
    group.finish();
}

criterion_group!(mock_generator, steady_stream);
criterion_main!(mock_generator);
