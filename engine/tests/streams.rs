//! The Redis Streams sink with the real binary: the mock gateway over TLS, a `redis-server` of
//! the test's own, no bot. Every event of the mock's ledger must be in the streams once, each
//! shard's in sequence order, also across a Redis that stops answering for a while; and after
//! a `kill -9` while Redis is away, nothing is missing and every second copy carries its first
//! copy's idempotency key.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::redis::RedisServer;
use common::{Engine, free_port, wait_until};
use mock_gateway::delivery::ContentCheck;
use mock_gateway::{MockConfig, MockGateway};
use serde::Deserialize;

const SHARDS: u32 = 4;
const EVENTS_PER_SHARD: u64 = 800;
const PARTITIONS: u32 = 2;

/// A stream entry as the test reads it back.
struct Entry {
    shard: u32,
    seq: u64,
    kind: String,
    id: String,
    payload: Vec<u8>,
}

struct World {
    dir: PathBuf,
    redis: RedisServer,
    mock: MockGateway,
}

impl World {
    fn start(name: &str) -> World {
        let dir =
            std::env::temp_dir().join(format!("shardgate-streams-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let redis = RedisServer::start();
        let mock = MockGateway::spawn(
            MockConfig {
                tls: true,
                ca_out: Some(dir.join("ca.pem")),
                seed: Some(5),
                guilds: 16,
                max_concurrency: 4,
                identify_window_ms: 200,
                rate: 100.0,
                events_per_shard: EVENTS_PER_SHARD,
                record_events: true,
                ..MockConfig::default()
            },
            1,
        )
        .unwrap();
        World { dir, redis, mock }
    }

    /// `shardgate run` into the streams (again after a kill: the same data dir and host id).
    fn engine(&self) -> Engine {
        Engine(
            Command::new(env!("CARGO_BIN_EXE_shardgate"))
                .args(["run", "--api-base", &self.mock.api_base()])
                .args(["--ca-file", self.dir.join("ca.pem").to_str().unwrap()])
                .args(["--sink", "redis-streams", "--redis-url", &self.redis.url()])
                .args(["--stream-key", "test:events"])
                .args(["--stream-partitions", &PARTITIONS.to_string()])
                .args(["--total-shards", &SHARDS.to_string(), "--cores", "1"])
                .args([
                    "--compression",
                    "zstd-stream",
                    "--identify-interval-ms",
                    "200",
                ])
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

    fn entries(&self) -> Vec<Entry> {
        let mut conn = self.redis.client().get_connection().unwrap();
        let mut all = Vec::new();
        for partition in 0..PARTITIONS {
            // XRANGE: [id, [field, value, ...]] per entry.
            let reply: Vec<(String, Vec<Vec<u8>>)> = redis::cmd("XRANGE")
                .arg(format!("test:events:{partition}"))
                .arg("-")
                .arg("+")
                .query(&mut conn)
                .unwrap();
            for (_, fields) in reply {
                let field = |name: &str| -> Vec<u8> {
                    fields
                        .chunks(2)
                        .find(|pair| pair[0] == name.as_bytes())
                        .map(|pair| pair[1].clone())
                        .unwrap_or_default()
                };
                let text = |name: &str| String::from_utf8(field(name)).unwrap();
                let entry = Entry {
                    shard: text("shard").parse().unwrap(),
                    seq: text("seq").parse().unwrap(),
                    kind: text("kind"),
                    id: text("id"),
                    payload: field("payload"),
                };
                assert_eq!(
                    entry.shard % PARTITIONS,
                    partition,
                    "shard {} in the wrong stream",
                    entry.shard
                );
                all.push(entry);
            }
        }
        all
    }

    /// Waits until the world made every steady event and each is in the streams.
    fn wait_for_every_event(&self) {
        wait_until(
            "every event in the streams",
            Duration::from_secs(90),
            || {
                let made = self
                    .mock
                    .events()
                    .iter()
                    .filter(|e| !matches!(e.t.as_str(), "GUILD_CREATE" | "GUILD_DELETE"))
                    .count();
                made >= (u64::from(SHARDS) * EVENTS_PER_SHARD) as usize
                    && self.check(&self.entries()).missing.is_empty()
            },
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    fn check(&self, entries: &[Entry]) -> ContentCheck {
        let hashes: Vec<u64> = content(entries)
            .0
            .into_iter()
            .map(|(hash, _)| hash)
            .collect();
        ContentCheck::new(&self.mock.events(), &hashes)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The content hashes of the world's events among `entries` (as the fake bot computes them),
/// each with its entry's id, and whether each shard's sequence only grows within its stream.
fn content(entries: &[Entry]) -> (Vec<(u64, String)>, bool) {
    #[derive(Deserialize)]
    struct Event<'a> {
        t: String,
        #[serde(borrow)]
        d: &'a serde_json::value::RawValue,
    }
    let mut last: BTreeMap<u32, u64> = BTreeMap::new();
    let mut in_order = true;
    let mut hashes = Vec::new();
    for entry in entries {
        let previous = last.insert(entry.shard, entry.seq).unwrap_or(0);
        in_order &= entry.seq > previous || entry.seq == 0;
        if entry.kind != "dispatch" && entry.kind != "guild_create:join" {
            continue;
        }
        let event: Event<'_> = serde_json::from_slice(&entry.payload).unwrap();
        if matches!(event.t.as_str(), "READY" | "RESUMED") {
            continue;
        }
        hashes.push((
            fake_bot::batch::content_hash(event.t.as_bytes(), event.d.get().as_bytes()),
            entry.id.clone(),
        ));
    }
    (hashes, in_order)
}

#[test]
fn every_event_reaches_the_streams_once_in_order_also_across_a_redis_that_stops_answering() {
    let world = World::start("once");
    let mut engine = world.engine();
    wait_until("traffic in the streams", Duration::from_secs(60), || {
        world.entries().len() > 200
    });
    // Redis stops answering for 4 s mid-stream: the records wait in memory, then go in order.
    world.redis.freeze();
    std::thread::sleep(Duration::from_secs(4));
    world.redis.thaw();
    world.wait_for_every_event();
    let entries = world.entries();
    let (hashes, in_order) = content(&entries);
    let ids: HashSet<&String> = hashes.iter().map(|(_, id)| id).collect();
    assert_eq!(ids.len(), hashes.len(), "every entry's id is its own");
    let check = world.check(&entries);
    assert!(
        check.missing.is_empty() && check.duplicated.is_empty(),
        "{} missing, {} duplicated",
        check.missing.len(),
        check.duplicated.len()
    );
    assert!(in_order, "a shard's sequence went back within its stream");
    assert_eq!(world.mock.ledger().identifies_total, u64::from(SHARDS));
    let (status, stderr) = engine.terminate();
    assert!(status.success(), "{status:?}: {stderr}");
}

/// `kill -9` while Redis is away: what was only in memory is gone with the process, but the
/// restarted process resumes each session from the last sequence Redis acknowledged, so
/// Discord sends it again. Nothing is missing; what comes twice has its first copy's id.
#[test]
fn a_kill_9_while_redis_is_away_loses_nothing_and_second_copies_keep_their_ids() {
    let world = World::start("kill");
    let mut engine = world.engine();
    wait_until("traffic in the streams", Duration::from_secs(60), || {
        world.entries().len() > 200
    });
    world.redis.freeze();
    std::thread::sleep(Duration::from_secs(1));
    engine.0.kill().unwrap();
    engine.0.wait().unwrap();
    world.redis.thaw();
    let mut engine = world.engine();
    world.wait_for_every_event();
    let entries = world.entries();
    let check = world.check(&entries);
    assert!(check.missing.is_empty(), "{} missing", check.missing.len());
    assert!(
        !check.duplicated.is_empty(),
        "the replay brought second copies"
    );
    let mut ids: HashMap<u64, HashSet<String>> = HashMap::new();
    for (hash, id) in content(&entries).0 {
        ids.entry(hash).or_default().insert(id);
    }
    // The world may make events of equal content (their hash is the same): one id per event.
    let mut made: HashMap<u64, usize> = HashMap::new();
    for event in world.mock.events() {
        *made.entry(event.hash).or_default() += 1;
    }
    for hash in &check.duplicated {
        assert!(
            ids[hash].len() <= made[hash],
            "the copies of one event carry one id: {:?} for {} events",
            ids[hash],
            made[hash]
        );
    }
    assert_eq!(
        world.mock.ledger().identifies_total,
        u64::from(SHARDS),
        "the restart resumed every session"
    );
    eprintln!(
        "kill -9 while Redis was away: {} events came twice",
        check.duplicated.len()
    );
    let (status, stderr) = engine.terminate();
    assert!(status.success(), "{status:?}: {stderr}");
}
