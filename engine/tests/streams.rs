//! The Redis Streams sink with the real binary: the mock gateway over TLS, a `redis-server` of
//! the test's own, and the fake bot consuming the streams through a consumer group into the
//! same ledger the HTTP tests judge with. In every compression mode every dispatch of the
//! mock's ledger is in the streams once, each shard's in sequence order (also across a Redis
//! that hangs for a while); Redis shut down for 15 s mid-stream and started again with its data
//! loses nothing; and a `kill -9` of shardgate while Redis is down loses nothing either, while
//! every second copy it causes carries its first copy's idempotency key.
//!
//! The example worker users copy (examples/consumers/stream_consumer.py) behind the real engine:
//! every dispatch printed once and in order per shard; and a second worker that claims what a
//! killed first one left pending. It needs python3 with redis-py (Debian: python3-redis); the
//! tests fail, saying how to install it, when neither `python3` nor `/usr/bin/python3` has it.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::redis::RedisServer;
use common::{Engine, wait_until};
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
        Engine::new(
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
                .args(["--admin-addr", "127.0.0.1:0"])
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

    /// Entries of the fake bot's group not yet acknowledged, over every partition.
    fn pending(&self) -> u64 {
        self.pending_of(GROUP)
    }

    /// Entries of `group` not yet acknowledged, over every partition.
    fn pending_of(&self, group: &str) -> u64 {
        let mut conn = self.redis.client().get_connection().unwrap();
        (0..PARTITIONS)
            .map(|partition| {
                let (count, _, _, _): (u64, redis::Value, redis::Value, redis::Value) =
                    redis::cmd("XPENDING")
                        .arg(format!("{STREAM_KEY}:{partition}"))
                        .arg(group)
                        .query(&mut conn)
                        .unwrap();
                count
            })
            .sum()
    }

    /// The entries pending on `consumer` of `group`, as (partition, entry id, idle ms), sorted.
    fn pending_entries(&self, group: &str, consumer: &str) -> Vec<(u32, String, u64)> {
        let mut conn = self.redis.client().get_connection().unwrap();
        let mut all = Vec::new();
        for partition in 0..PARTITIONS {
            // XPENDING key group - + count consumer: [id, consumer, idle ms, deliveries] each.
            let reply: redis::RedisResult<Vec<(String, String, u64, u64)>> = redis::cmd("XPENDING")
                .arg(format!("{STREAM_KEY}:{partition}"))
                .arg(group)
                .arg("-")
                .arg("+")
                .arg(100_000)
                .arg(consumer)
                .query(&mut conn);
            // No group yet: nothing pending.
            for (id, _, idle_ms, _) in reply.unwrap_or_default() {
                all.push((partition, id, idle_ms));
            }
        }
        all
    }

    /// (shard, seq, kind) of each of `entries` (partition, entry id).
    fn entries_by_id(&self, entries: &[(u32, String)]) -> Vec<(u32, u64, String)> {
        let mut conn = self.redis.client().get_connection().unwrap();
        entries
            .iter()
            .flat_map(|(partition, id)| {
                let reply: Vec<(String, Vec<Vec<u8>>)> = redis::cmd("XRANGE")
                    .arg(format!("{STREAM_KEY}:{partition}"))
                    .arg(id)
                    .arg(id)
                    .query(&mut conn)
                    .unwrap();
                reply.into_iter().map(|(_, fields)| {
                    let field = |name: &str| -> String {
                        fields
                            .chunks(2)
                            .find(|pair| pair[0] == name.as_bytes())
                            .map(|pair| String::from_utf8(pair[1].clone()).unwrap())
                            .unwrap_or_default()
                    };
                    (
                        field("shard").parse().unwrap(),
                        field("seq").parse().unwrap(),
                        field("kind"),
                    )
                })
            })
            .collect()
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
        // First Redis, whose append-only file may be in the directory.
        self.redis.stop();
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

/// The example worker, examples/consumers/stream_consumer.py, as `consumer` of group `py`.
struct Worker {
    child: Child,
    /// Its stdout after the first line, while nobody reads it.
    stdout: Option<BufReader<ChildStdout>>,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first of `python3` and Debian's `/usr/bin/python3` that has redis-py (a pyenv's
/// `python3` on the PATH does not see Debian's packages).
fn python_with_redis() -> &'static str {
    for python in ["python3", "/usr/bin/python3"] {
        let has_redis = Command::new(python)
            .args(["-c", "import redis"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if has_redis {
            return python;
        }
    }
    panic!(
        "examples/consumers/stream_consumer.py needs python3 with redis-py: install it \
         (Debian: apt-get install python3-redis; or pip install redis)"
    );
}

impl Worker {
    /// Starts it and waits for its first line (the group exists then).
    fn start(world: &World, consumer: &str, claim_min_idle_ms: u64) -> Worker {
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .join("examples/consumers/stream_consumer.py");
        let mut child = Command::new(python_with_redis())
            .arg(&script)
            .args(["--redis-url", &world.redis.url()])
            .args(["--stream-key", STREAM_KEY])
            .args(["--partitions", &PARTITIONS.to_string()])
            .args(["--group", "py", "--consumer", consumer, "--block-ms", "200"])
            .args(["--claim-min-idle-ms", &claim_min_idle_ms.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        stdout.read_line(&mut first).unwrap();
        assert!(
            first.starts_with("consuming test:events:0, test:events:1 as py/"),
            "{script:?} printed {first:?} first"
        );
        Worker {
            child,
            stdout: Some(stdout),
            lines: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Collects what it prints, on a thread of its own.
    fn read_lines(&mut self) {
        let stdout = self.stdout.take().expect("read once");
        let sink = Arc::clone(&self.lines);
        std::thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
    }

    /// `kill -9`, then every line it got out before it died.
    fn kill_and_read_the_rest(&mut self) -> Vec<String> {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let mut rest = String::new();
        self.stdout
            .take()
            .expect("not read yet")
            .read_to_string(&mut rest)
            .unwrap();
        rest.lines().map(str::to_owned).collect()
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// SIGTERM; it must exit 0.
    fn terminate(&mut self) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let status = self.child.wait().unwrap();
        assert!(status.success(), "the worker exited with {status:?}");
    }
}

/// Per shard, the sequences of the `event` lines in the order printed.
fn printed_events(lines: &[String]) -> BTreeMap<u32, Vec<u64>> {
    let mut events: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for line in lines {
        let Some(rest) = line.strip_prefix("event ") else {
            continue;
        };
        let field = |name: &str| -> u64 {
            rest.split(' ')
                .find_map(|part| part.strip_prefix(name))
                .and_then(|value| value.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {line:?}"))
        };
        events
            .entry(field("shard=") as u32)
            .or_default()
            .push(field("seq="));
    }
    events
}

/// Every shard's stream ended at the mock and `printed` holds every sequence it must.
fn printed_all(world: &World, printed: &BTreeMap<u32, Vec<u64>>) -> bool {
    let ledger = world.mock.ledger();
    (0..SHARDS).all(|shard| {
        let Some(session) = ledger.shards.get(&shard).and_then(|s| s.sessions.first()) else {
            return false;
        };
        let got: BTreeSet<u64> = printed
            .get(&shard)
            .map(|seqs| seqs.iter().copied().collect())
            .unwrap_or_default();
        session.steady_dispatches() >= world.events_per_shard
            && session.expected_seqs().is_subset(&got)
    })
}

#[test]
fn the_python_example_worker_prints_every_event_once_and_in_order() {
    let world = World::start("py-once", 300.0, 300, false);
    let mut worker = Worker::start(&world, "worker-1", 60_000);
    worker.read_lines();
    let mut engine = world.engine("zlib-stream");
    wait_until(
        "every expected event printed by the example worker",
        Duration::from_secs(60),
        || printed_all(&world, &printed_events(&worker.lines())),
    );
    let (status, stderr) = engine.terminate();
    assert!(status.success(), "{status:?}: {stderr}");
    // A second copy of an entry (as a replay writes it: the same fields, the same id), an entry
    // that is not shardgate's, then a marker: the copy is dropped, the bad entry skipped.
    let mut conn = world.redis.client().get_connection().unwrap();
    let first: Vec<(String, Vec<Vec<u8>>)> = redis::cmd("XRANGE")
        .arg(format!("{STREAM_KEY}:0"))
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .unwrap();
    let (_, copy) = first
        .into_iter()
        .find(|(_, fields)| {
            fields
                .chunks(2)
                .any(|pair| pair == [&b"kind"[..], b"dispatch"])
        })
        .unwrap();
    let mut xadd = redis::cmd("XADD");
    xadd.arg(format!("{STREAM_KEY}:0")).arg("*");
    for value in &copy {
        xadd.arg(value.as_slice());
    }
    let _: String = xadd.query(&mut conn).unwrap();
    let _: String = redis::cmd("XADD")
        .arg(format!("{STREAM_KEY}:0"))
        .arg("*")
        .arg("not")
        .arg("shardgate's")
        .query(&mut conn)
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg(format!("{STREAM_KEY}:0"))
        .arg("*")
        .arg(
            &[
                "shard",
                "0",
                "seq",
                "0",
                "type",
                "",
                "kind",
                "notice:TEST_MARKER",
            ][..],
        )
        .arg(&["id", "0:0:00000000", "payload", "{}"][..])
        .query(&mut conn)
        .unwrap();
    wait_until("the marker printed", Duration::from_secs(30), || {
        worker
            .lines()
            .iter()
            .any(|line| line.contains("TEST_MARKER"))
    });
    wait_until("every entry acknowledged", Duration::from_secs(30), || {
        world.pending_of("py") == 0
    });
    worker.terminate();
    let ledger = world.mock.ledger();
    let lines = worker.lines();
    for (shard, seqs) in printed_events(&lines) {
        let want = ledger.shards[&shard].sessions[0].expected_seqs();
        assert!(
            seqs.windows(2).all(|pair| pair[0] < pair[1]),
            "shard {shard}: out of order or twice: {seqs:?}"
        );
        let got: BTreeSet<u64> = seqs.into_iter().collect();
        assert_eq!(got, want, "shard {shard}: exactly the expected events");
    }
    let notices = |name: &str| {
        lines
            .iter()
            .filter(|line| line.starts_with("notice ") && line.contains(name))
            .count()
    };
    assert_eq!(notices("SHARD_READY"), SHARDS as usize);
    assert_eq!(notices("ALL_SHARDS_READY"), 1);
}

/// The first worker stops handling mid-batch (its stdout, which nobody reads, fills up: it
/// blocks in a print with entries read and not acknowledged) and is killed. A second worker of
/// the group claims those entries once they have been idle long enough: between the two, every
/// event is printed; twice only what the first had read and never acknowledged.
#[test]
fn a_second_python_worker_claims_what_a_killed_one_left_pending() {
    // About 4,000 event lines: far more than a pipe holds (64 KiB).
    let world = World::start("py-claim", 400.0, 1_000, false);
    let mut first = Worker::start(&world, "worker-1", 60_000);
    let mut engine = world.engine("zstd-stream");
    // Stuck: the stream is complete, and the first worker's pending entries stay the same.
    let mut last_pending = Vec::new();
    wait_until(
        "every event in the streams and the first worker stuck",
        Duration::from_secs(60),
        || {
            let ledger = world.mock.ledger();
            let expected: usize = (0..SHARDS)
                .map(|shard| {
                    ledger
                        .shards
                        .get(&shard)
                        .and_then(|s| s.sessions.first())
                        .map_or(usize::MAX / 8, |session| session.expected_seqs().len())
                })
                .sum();
            let written = world
                .entries()
                .iter()
                .filter(|(_, _, kind, _)| !kind.starts_with("notice:"))
                .count();
            let pending: Vec<(u32, String)> = world
                .pending_entries("py", "worker-1")
                .into_iter()
                .map(|(partition, id, _)| (partition, id))
                .collect();
            let stuck = !pending.is_empty() && pending == last_pending;
            last_pending = pending;
            std::thread::sleep(Duration::from_millis(300));
            written >= expected && stuck
        },
    );
    // The second worker's first sweep, before it reads anything new, claims them all: they
    // have been idle past its --claim-min-idle-ms (500) by then.
    wait_until(
        "the pending entries idle for 600 ms",
        Duration::from_secs(10),
        || {
            world
                .pending_entries("py", "worker-1")
                .iter()
                .all(|(_, _, idle_ms)| *idle_ms >= 600)
        },
    );
    let left_pending: BTreeSet<(u32, u64)> = world
        .entries_by_id(&last_pending)
        .into_iter()
        .filter(|(_, _, kind)| !kind.starts_with("notice:"))
        .map(|(shard, seq, _)| (shard, seq))
        .collect();
    assert!(
        !left_pending.is_empty(),
        "the first worker left events pending"
    );
    let first_lines = first.kill_and_read_the_rest();

    let mut second = Worker::start(&world, "worker-2", 500);
    second.read_lines();
    wait_until(
        "every event printed by one worker or the other",
        Duration::from_secs(60),
        || {
            let mut all = first_lines.clone();
            all.extend(second.lines());
            printed_all(&world, &printed_events(&all))
        },
    );
    wait_until("nothing pending", Duration::from_secs(30), || {
        world.pending_of("py") == 0
    });
    second.terminate();
    let (status, stderr) = engine.terminate();
    assert!(status.success(), "{status:?}: {stderr}");

    let ledger = world.mock.ledger();
    let by_first = printed_events(&first_lines);
    let by_second = printed_events(&second.lines());
    for shard in 0..SHARDS {
        let want = ledger.shards[&shard].sessions[0].expected_seqs();
        let first_seqs = by_first.get(&shard).cloned().unwrap_or_default();
        let second_seqs = by_second.get(&shard).cloned().unwrap_or_default();
        for (name, seqs) in [("first", &first_seqs), ("second", &second_seqs)] {
            // The second claims the old entries before it reads new ones.
            assert!(
                seqs.windows(2).all(|pair| pair[0] < pair[1]),
                "shard {shard}: the {name} worker printed out of order or twice: {seqs:?}"
            );
        }
        let claimed: BTreeSet<u64> = left_pending
            .iter()
            .filter(|(pending_shard, _)| *pending_shard == shard)
            .map(|(_, seq)| *seq)
            .collect();
        let second_set: BTreeSet<u64> = second_seqs.iter().copied().collect();
        assert!(
            claimed.is_subset(&second_set),
            "shard {shard}: the second worker handled what the first left pending"
        );
        let first_set: BTreeSet<u64> = first_seqs.iter().copied().collect();
        let twice: BTreeSet<u64> = first_set.intersection(&second_set).copied().collect();
        assert!(
            twice.is_subset(&claimed),
            "shard {shard}: printed twice but acknowledged by the first: {:?}",
            twice.difference(&claimed).collect::<Vec<_>>()
        );
        let all: BTreeSet<u64> = first_set.union(&second_set).copied().collect();
        assert_eq!(all, want, "shard {shard}: exactly the expected events");
    }
}
