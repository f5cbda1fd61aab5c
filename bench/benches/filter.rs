//! Stage: filter. What one core's filter costs per event over a realistic stream: 10,000
//! dispatches of the mock generator's default mix on a shard of 1,000 guilds, after READY, the
//! guilds' GUILD_CREATEs and a warm-up that fills the generator's message window (and the dedup
//! cache with it). Payloads are classified once, outside the measurement: `op`/`s`/`t` belong to
//! the decode stage; what is measured is `Filter::dispatch` and `ShardFilter::take_notice`,
//! including the field reads the filter asks the decode helpers for (MESSAGE_CREATE and
//! MESSAGE_UPDATE id and content hash, MESSAGE_DELETE id).
//!
//! Each iteration replays the whole stream through the same filter (steady state: the cache is
//! warm and sized at startup). Cases:
//! - `default`: every event forwarded, redundant MESSAGE_UPDATEs dropped (65,536 entries);
//! - `dedup-off`: every event forwarded, no field reads;
//! - `allow-messages`: only MESSAGE_CREATE, MESSAGE_UPDATE and INTERACTION_CREATE, dedup on;
//! - `allow-interactions`: only INTERACTION_CREATE (no cache, no field reads).
//!
//! `Throughput::Elements`: ns per event = 1e9 / rate. Times are the bench thread's CPU time
//! (`/proc/thread-self/schedstat`; wall time where that file is missing), as in the decode bench.
//!
//! Run: `cargo bench -p shardgate-bench --bench filter` (add `-- --quick` for a short run).

#[path = "support/cpu_clock.rs"]
mod cpu_clock;

use std::hint::black_box;
use std::time::{Duration, Instant};

use cpu_clock::cpu_time;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mock_gateway::events::{EventMix, SessionEvents, guild_ids};
use shardgate::config::Events;
use shardgate::decode::classify;
use shardgate::filter::{DropReason, Filter, FilterConfig, ShardFilter, Verdict};
use shardgate::shard::PayloadHead;

const SEED: u64 = 0x5EED;
/// Guilds of the benchmarked shard: a busy shard of a mid-size bot.
const GUILDS_PER_SHARD: usize = 1000;
/// Dispatches generated and filtered before the measured stream.
const WARM_UP_EVENTS: u64 = 10_000;
/// Events in the replayed stream.
const STREAM_EVENTS: u64 = 10_000;

/// The session's setup (READY and GUILD_CREATEs), the warm-up and the measured stream.
struct Generated {
    setup: Vec<Vec<u8>>,
    stream: Vec<Vec<u8>>,
}

fn generate() -> Generated {
    let guilds = guild_ids(SEED, GUILDS_PER_SHARD);
    let mut events = SessionEvents::new(SEED, 0, guilds.clone(), EventMix::default());
    let mut setup = Vec::new();
    let mut payload = Vec::new();
    let mut seq = 1;
    events.ready(
        seq,
        "session-bench",
        "wss://resume.example",
        [0, 1],
        &mut payload,
    );
    setup.push(std::mem::take(&mut payload));
    for &guild in &guilds {
        seq += 1;
        events.guild_create(guild, seq, 0, &mut payload);
        setup.push(std::mem::take(&mut payload));
    }
    for _ in 0..WARM_UP_EVENTS {
        seq += 1;
        events.next_dispatch(seq, &mut payload);
        setup.push(std::mem::take(&mut payload));
    }
    let stream = (0..STREAM_EVENTS)
        .map(|_| {
            seq += 1;
            events.next_dispatch(seq, &mut payload);
            std::mem::take(&mut payload)
        })
        .collect();
    Generated { setup, stream }
}

fn heads(payloads: &[Vec<u8>]) -> Vec<PayloadHead<'_>> {
    payloads
        .iter()
        .map(|payload| classify(payload).expect("generated payloads classify"))
        .collect()
}

/// Filters every payload once; returns a checksum of the verdicts.
fn replay(
    filter: &mut Filter,
    shard: &mut ShardFilter,
    heads: &[PayloadHead<'_>],
    payloads: &[Vec<u8>],
    now: Instant,
) -> u64 {
    let mut checksum = 0u64;
    for (head, payload) in heads.iter().zip(payloads) {
        checksum += match filter.dispatch(shard, head, payload, now) {
            Verdict::Forward(_) => 1,
            Verdict::Drop(DropReason::NotAllowed) => 2,
            Verdict::Drop(DropReason::RedundantMessageUpdate) => 3,
        };
        checksum += u64::from(shard.take_notice().is_some());
    }
    checksum
}

fn filter(criterion: &mut Criterion) {
    let generated = generate();
    let setup_heads = heads(&generated.setup);
    let stream_heads = heads(&generated.stream);
    let now = Instant::now();
    let mut group = criterion.benchmark_group("filter");
    group.measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(STREAM_EVENTS));
    let cases = [
        ("default", FilterConfig::default()),
        (
            "dedup-off",
            FilterConfig {
                dedup_message_updates: false,
                ..FilterConfig::default()
            },
        ),
        (
            "allow-messages",
            FilterConfig {
                events: Events::only(vec![
                    "MESSAGE_CREATE",
                    "MESSAGE_UPDATE",
                    "INTERACTION_CREATE",
                ]),
                ..FilterConfig::default()
            },
        ),
        (
            "allow-interactions",
            FilterConfig {
                events: Events::only(vec!["INTERACTION_CREATE"]),
                ..FilterConfig::default()
            },
        ),
    ];
    for (name, config) in cases {
        let mut filter = Filter::new(config);
        let mut shard = ShardFilter::new();
        replay(&mut filter, &mut shard, &setup_heads, &generated.setup, now);
        assert!(shard.is_fully_ready(), "every guild arrived");
        let before = filter.counters().clone();
        replay(
            &mut filter,
            &mut shard,
            &stream_heads,
            &generated.stream,
            now,
        );
        let after = filter.counters();
        eprintln!(
            "filter: {name}: of {STREAM_EVENTS} events, {} forwarded, {} not allowed, {} redundant \
             updates; cache {} of {} entries, {} B",
            after.forwarded_total - before.forwarded_total,
            after.dropped_not_allowed_total - before.dropped_not_allowed_total,
            after.dropped_redundant_message_update_total
                - before.dropped_redundant_message_update_total,
            filter.dedup_cache_len(),
            filter.dedup_cache_capacity(),
            filter.dedup_cache_bytes(),
        );
        group.bench_function(format!("{name}/events"), |bencher| {
            cpu_time(bencher, || {
                replay(
                    &mut filter,
                    &mut shard,
                    &stream_heads,
                    black_box(&generated.stream),
                    now,
                )
            })
        });
    }
    group.finish();
}

criterion_group!(filter_stage, filter);
criterion_main!(filter_stage);
