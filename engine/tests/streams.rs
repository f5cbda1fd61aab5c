//! The Redis Streams sink with the real binary: the mock gateway over TLS, a `redis-server` of
//! the test's own, and the fake bot consuming the streams through a consumer group into the
//! same ledger the HTTP tests judge with. In every compression mode every dispatch of the
//! mock's ledger is in the streams once, each shard's in sequence order (also across a Redis
//! that hangs for a while); Redis shut down for 15 s mid-stream and started again with its data
//! loses nothing; and a `kill -9` of shardgate while Redis is down loses nothing either, while
//! every second copy it causes carries its first copy's idempotency key.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::redis::RedisServer;
use common::{Engine, free_port, wait_until};
use fake_bot::{BotConfig, FakeBot, Report, StreamConsumer, StreamsConfig};
use mock_gateway::delivery::ContentCheck;
use mock_gateway::{MockConfig, MockGateway};

const SHARDS: u32 = 4;
const PARTITIONS: u32 = 2;
const STREAM_KEY: &str = "test:events";
const GROUP: &str = "bot";

struct World {
    dir: PathBuf,
    redis: RedisServer,
    mock: MockGateway,
    bot: FakeBot,
    events_per_shard: u64,
}

impl World {
    /// A world whose mock sends `events_per_shard` steady events per shard at `rate` a second.
    /// `durable`: Redis keeps an append-only file fsynced before every reply (`appendfsync
    /// always`), so a stop and a start again keep every XADD it acknowledged.
    fn start(name: &str, rate: f64, events_per_shard: u64, durable: bool) -> World {
        let dir =
            std::env::temp_dir().join(format!("shardgate-streams-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let redis = if durable {
            RedisServer::start_durable(&dir.join("redis"))
        } else {
            RedisServer::start()
        };
        let mock = MockGateway::spawn(
            MockConfig {
                tls: true,
                ca_out: Some(dir.join("ca.pem")),
                seed: Some(5),
                guilds: 16,
                max_concurrency: 4,
                identify_window_ms: 200,
                rate,
                events_per_shard,
                record_events: true,
                ..MockConfig::default()
            },
            1,
        )
        .unwrap();
        let bot = FakeBot::spawn(BotConfig {
            record_content: true,
            ..BotConfig::ephemeral()
        })
        .unwrap();
        World {
            dir,
            redis,
            mock,
            bot,
            events_per_shard,
        }
    }

    /// `shardgate run` into the streams (again after a kill: the same data dir).
    fn engine(&self, compression: &str) -> Engine {
        Engine(
            Command::new(env!("CARGO_BIN_EXE_shardgate"))
                .args(["run", "--api-base", &self.mock.api_base()])
                .args(["--ca-file", self.dir.join("ca.pem").to_str().unwrap()])
                .args(["--sink", "redis-streams", "--redis-url", &self.redis.url()])
                .args(["--stream-key", STREAM_KEY])
                .args(["--stream-partitions", &PARTITIONS.to_string()])
                .args(["--total-shards", &SHARDS.to_string(), "--cores", "1"])
                .args(["--compression", compression])
                .args(["--identify-interval-ms", "200"])
                .args(["--session-save-interval-ms", "200"])
                .args(["--admin-addr", &free_port().to_string()])
                .args([
                    "--data-dir",
                    self.dir.join("data").to_str().unwrap(),
                    "--log",
                    "warn",
                ])
                .env("DISCORD_TOKEN", self.mock.token())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        )
    }

    /// The fake bot reading every partition as `consumer` of the group.
    fn consume(&self, consumer: &str) -> StreamConsumer {
        self.bot
            .consume_streams(StreamsConfig {
                stream_key: STREAM_KEY.to_owned(),
                stream_partitions: PARTITIONS,
                group: GROUP.to_owned(),
                consumer: consumer.to_owned(),
                block_ms: 200,
                ..StreamsConfig::new(self.redis.url())
            })
            .unwrap()
    }

    /// Waits until the bot holds more than `records` records: the streams flow.
    fn wait_for_traffic(&self, records: u64) {
        wait_until(
            "traffic through the streams",
            Duration::from_secs(60),
            || self.bot.report().totals.records > records,
        );
    }

    /// Every shard's stream ended at the mock and the bot holds every sequence the mock's
    /// ledger says it must.
    fn all_arrived(&self) -> bool {
        let ledger = self.mock.ledger();
        let report = self.bot.report();
        (0..SHARDS).all(|shard| {
            let Some(shard_ledger) = ledger.shards.get(&shard) else {
                return false;
            };
            let sent: u64 = shard_ledger
                .sessions
                .iter()
                .map(mock_gateway::SessionLedger::steady_dispatches)
                .sum();
            let got: BTreeSet<u64> = report
                .shards
                .get(&shard)
                .map(|r| r.runs.iter().flat_map(fake_bot::RunReport::seqs).collect())
                .unwrap_or_default();
            sent >= self.events_per_shard
                && shard_ledger
                    .sessions
                    .iter()
                    .all(|session| session.expected_seqs().is_subset(&got))
        })
    }

    fn wait_for_every_event(&self) {
        wait_until(
            "every event through the streams",
            Duration::from_secs(90),
            || self.all_arrived(),
        );
    }

    /// Entries of the group not yet acknowledged, over every partition.
    fn pending(&self) -> u64 {
        let mut conn = self.redis.client().get_connection().unwrap();
        (0..PARTITIONS)
            .map(|partition| {
                // XPENDING's summary: [count, first id, last id, consumers].
                let (count, _, _, _): (u64, redis::Value, redis::Value, redis::Value) =
                    redis::cmd("XPENDING")
                        .arg(format!("{STREAM_KEY}:{partition}"))
                        .arg(GROUP)
                        .query(&mut conn)
                        .unwrap();
                count
            })
            .sum()
    }

    /// Every entry of the streams as (shard, seq, kind, id), read with XRANGE, in stream order.
    fn entries(&self) -> Vec<(u32, u64, String, String)> {
        let mut conn = self.redis.client().get_connection().unwrap();
        let mut all = Vec::new();
        for partition in 0..PARTITIONS {
            // XRANGE: [id, [field, value, ...]] per entry.
            let reply: Vec<(String, Vec<Vec<u8>>)> = redis::cmd("XRANGE")
                .arg(format!("{STREAM_KEY}:{partition}"))
                .arg("-")
                .arg("+")
                .query(&mut conn)
                .unwrap();
            for (_, fields) in reply {
                let field = |name: &str| -> String {
                    fields
                        .chunks(2)
                        .find(|pair| pair[0] == name.as_bytes())
                        .map(|pair| String::from_utf8(pair[1].clone()).unwrap())
                        .unwrap_or_default()
                };
                all.push((
                    field("shard").parse().unwrap(),
                    field("seq").parse().unwrap(),
                    field("kind"),
                    field("id"),
                ));
            }
        }
        all
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// How strictly [`check_delivery`] judges.
#[derive(Clone, Copy, PartialEq, Eq)]
enum After {
    /// One process from start to end: exactly the expected sequences, in order.
    OneProcess,
    /// A `kill -9` and a restart: the new process's empty dedup cache lets through redundant
    /// updates the old one dropped, and those (only) may arrive behind a higher sequence.
    ACrash,
}

/// Per shard, against the mock's ledger: one session, one run at the bot, every expected
/// sequence, nothing else (but late redundant updates after a crash), no duplicate (a copy whose
/// `id` differed from its first copy's would be one) and nothing out of order.
fn check_delivery(world: &World, report: &Report, after: After) {
    let ledger = world.mock.ledger();
    assert!(ledger.violations.is_empty(), "{:#?}", ledger.violations);
    for shard in 0..SHARDS {
        let shard_ledger = &ledger.shards[&shard];
        assert_eq!(shard_ledger.sessions.len(), 1, "shard {shard}: one session");
        assert_eq!(
            shard_ledger.identifies, 1,
            "shard {shard}: one identify, every restart resumed"
        );
        let got = &report.shards[&shard];
        assert_eq!(got.runs.len(), 1, "shard {shard}: one run at the bot");
        assert_eq!(got.duplicates, 0, "shard {shard}: a copy got through");
        let session = &shard_ledger.sessions[0];
        let want = session.expected_seqs();
        let arrived = got.runs[0].seqs();
        let missing: Vec<_> = want.difference(&arrived).collect();
        assert!(missing.is_empty(), "shard {shard}: missing {missing:?}");
        let extra: BTreeSet<u64> = arrived.difference(&want).copied().collect();
        match after {
            After::OneProcess => {
                assert!(extra.is_empty(), "shard {shard}: unexpected {extra:?}");
                assert_eq!(got.out_of_order, 0, "shard {shard}");
            }
            After::ACrash => {
                let redundant: BTreeSet<u64> =
                    session.redundant_update_seqs.iter().copied().collect();
                assert!(extra.is_subset(&redundant), "shard {shard}: {extra:?}");
                assert!(
                    got.out_of_order <= extra.len() as u64,
                    "shard {shard}: {} out of order, {} late redundant updates",
                    got.out_of_order,
                    extra.len()
                );
            }
        }
    }
}

/// One engine, one consumer, one compression mode: every event once and in order.
fn once_in_order(compression: &str, hang_redis_for: Option<Duration>) {
    let world = World::start(&format!("once-{compression}"), 200.0, 400, false);
    let consumer = world.consume("worker-1");
    let mut engine = world.engine(compression);
    if let Some(hang) = hang_redis_for {
        // Redis stops answering mid-stream: the records wait in memory, then go in order.
        world.wait_for_traffic(200);
        world.redis.freeze();
        std::thread::sleep(hang);
        world.redis.thaw();
    }
    world.wait_for_every_event();
    wait_until("every entry acknowledged", Duration::from_secs(30), || {
        world.pending() == 0
    });
    consumer.stop();
    let report = world.bot.report();
    check_delivery(&world, &report, After::OneProcess);
    let streams = report.streams.clone().unwrap();
    assert_eq!(
        (streams.copies, streams.read_again, streams.bad_entries),
        (0, 0, 0),
        "each record written once, read once, in the layout: {streams:?}"
    );
    assert_eq!(streams.trimmed_pending, 0);
    for shard in 0..SHARDS {
        assert_eq!(
            report.shards[&shard].notices.get("SHARD_READY"),
            Some(&1),
            "shard {shard}"
        );
    }
    assert_eq!(report.totals.notices.get("ALL_SHARDS_READY"), Some(&1));
    // The payloads are Discord's bytes: each world event's content once, in order per guild.
    let check = ContentCheck::new(&world.mock.events(), &world.bot.content());
    assert!(check.is_exactly_once(), "{check:?}");
    let (status, stderr) = engine.terminate();
    assert!(status.success(), "{status:?}: {stderr}");
    assert!(!stderr.contains(world.mock.token()), "{stderr}");
}

#[test]
fn zstd_stream_once_in_order_also_across_a_redis_that_hangs_for_4_s() {
    once_in_order("zstd-stream", Some(Duration::from_secs(4)));
}

#[test]
fn zlib_stream_once_in_order() {
    once_in_order("zlib-stream", None);
}

#[test]
fn payload_compression_once_in_order() {
    once_in_order("payload", None);
}

#[test]
fn no_compression_once_in_order() {
    once_in_order("none", None);
}

/// Redis really stops (the process shuts down, its port closed) for 15 s while events keep
/// coming, then starts again on the same port with its append-only file: the engine's records
/// waited and go in order, the consumer reconnects and reads on, nothing is lost.
#[test]
fn redis_shut_down_for_15_s_mid_stream_and_started_again_with_its_data_loses_nothing() {
    // 50 events/s per shard for 24 s: the stream is still flowing when Redis comes back.
    let mut world = World::start("stopped", 50.0, 1_200, true);
    let consumer = world.consume("worker-1");
    let mut engine = world.engine("zstd-stream");
    world.wait_for_traffic(200);
    world.redis.stop();
    std::thread::sleep(Duration::from_secs(15));
    world.redis.start_again();
    world.wait_for_every_event();
    wait_until("every entry acknowledged", Duration::from_secs(30), || {
        world.pending() == 0
    });
    consumer.stop();
    let report = world.bot.report();
    check_delivery(&world, &report, After::OneProcess);
    let streams = report.streams.clone().unwrap();
    assert!(
        streams.reconnects >= 1,
        "the consumer saw Redis go: {streams:?}"
    );
    assert_eq!(
        (streams.bad_entries, streams.trimmed_pending),
        (0, 0),
        "{streams:?}"
    );
    // A pipeline Redis took part of before it went is sent again whole: such copies carry
    // their first copy's id and are dropped by it (a copy with another id would show above as
    // a duplicate).
    eprintln!(
        "Redis down 15 s: {} entries, {} copies dropped by id",
        streams.entries, streams.copies
    );
    let (status, stderr) = engine.terminate();
    assert!(status.success(), "{status:?}: {stderr}");
}

/// `kill -9` while Redis is down: what was only in memory is gone with the process, but the
/// restarted process resumes each session from the last sequence Redis (or the spill) took, so
/// Discord sends the rest again. Nothing is missing; the second copies it brings carry their
/// first copies' ids, so the consumer drops every one of them (and counts them).
#[test]
fn a_kill_9_while_redis_is_down_loses_nothing_and_second_copies_keep_their_ids() {
    let mut world = World::start("kill", 150.0, 1_600, true);
    let consumer = world.consume("worker-1");
    let mut engine = world.engine("zstd-stream");
    world.wait_for_traffic(300);
    world.redis.stop();
    std::thread::sleep(Duration::from_secs(1));
    engine.0.kill().unwrap();
    engine.0.wait().unwrap();
    world.redis.start_again();
    let mut engine = world.engine("zstd-stream");
    world.wait_for_every_event();
    wait_until("every entry acknowledged", Duration::from_secs(30), || {
        world.pending() == 0
    });
    consumer.stop();
    let report = world.bot.report();
    check_delivery(&world, &report, After::ACrash);
    let streams = report.streams.clone().unwrap();
    assert!(streams.copies > 0, "the replay brought second copies");
    assert_eq!(streams.bad_entries, 0);
    // The streams themselves: every (shard, seq) written more than once carries one id, and the
    // consumer dropped exactly the entries beyond each first copy.
    let mut ids: BTreeMap<(u32, u64), Vec<String>> = BTreeMap::new();
    for (shard, seq, kind, id) in world.entries() {
        if !kind.starts_with("notice:") {
            ids.entry((shard, seq)).or_default().push(id);
        }
    }
    let mut written_again = 0;
    for ((shard, seq), copies) in &ids {
        assert!(
            copies.iter().all(|id| id == &copies[0]),
            "shard {shard} seq {seq}: copies with other ids: {copies:?}"
        );
        written_again += copies.len() as u64 - 1;
    }
    assert_eq!(written_again, streams.copies, "{streams:?}");
    eprintln!(
        "kill -9 while Redis was down: {} entries, {} second copies dropped by id",
        streams.entries, streams.copies
    );
    let (status, stderr) = engine.terminate();
    assert!(status.success(), "{status:?}: {stderr}");
}
