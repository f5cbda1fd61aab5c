//! The Redis Streams sink with the real binary: the mock gateway over TLS, a `redis-server` of
//! the test's own, no bot. Every event of the mock's ledger must be in the streams once, each
//! shard's in sequence order, also across a Redis that stops answering for a while.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::collections::BTreeMap;
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
    payload: Vec<u8>,
}

fn entries(redis: &RedisServer) -> Vec<Entry> {
    let mut conn = redis.client().get_connection().unwrap();
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
            let number = |name: &str| {
                String::from_utf8(field(name))
                    .unwrap()
                    .parse::<u64>()
                    .unwrap()
            };
            let entry = Entry {
                shard: number("shard") as u32,
                seq: number("seq"),
                kind: String::from_utf8(field("kind")).unwrap(),
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

/// The content hashes of the world's events among `entries` (as the fake bot computes them),
/// and whether each shard's sequence only grows within its stream.
fn content(entries: &[Entry]) -> (Vec<u64>, bool) {
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
        if entry.kind != "dispatch" && !entry.kind.starts_with("guild_create:join") {
            continue;
        }
        let event: Event<'_> = serde_json::from_slice(&entry.payload).unwrap();
        if matches!(event.t.as_str(), "READY" | "RESUMED") {
            continue;
        }
        hashes.push(fake_bot::batch::content_hash(
            event.t.as_bytes(),
            event.d.get().as_bytes(),
        ));
    }
    (hashes, in_order)
}

#[test]
fn every_event_reaches_the_streams_once_in_order_also_across_a_redis_that_stops_answering() {
    let dir = std::env::temp_dir().join(format!("shardgate-streams-{}", std::process::id()));
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
    let admin = free_port();
    let mut engine = Engine(
        Command::new(env!("CARGO_BIN_EXE_shardgate"))
            .args(["run", "--api-base", &mock.api_base()])
            .args(["--ca-file", dir.join("ca.pem").to_str().unwrap()])
            .args(["--sink", "redis-streams", "--redis-url", &redis.url()])
            .args(["--stream-key", "test:events"])
            .args(["--stream-partitions", &PARTITIONS.to_string()])
            .args(["--total-shards", &SHARDS.to_string(), "--cores", "1"])
            .args([
                "--compression",
                "zstd-stream",
                "--identify-interval-ms",
                "200",
            ])
            // A lease longer than the outage below: the shards keep running through it.
            .args([
                "--host-id",
                "solo",
                "--host-lease-ms",
                "1000",
                "--shard-lease-ms",
                "6000",
            ])
            .args(["--admin-addr", &admin.to_string()])
            .args([
                "--data-dir",
                dir.join("data").to_str().unwrap(),
                "--log",
                "warn",
            ])
            .env("DISCORD_TOKEN", mock.token())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let made = || {
        mock.events()
            .iter()
            .filter(|e| !matches!(e.t.as_str(), "GUILD_CREATE" | "GUILD_DELETE"))
            .count()
    };
    wait_until("traffic in the streams", Duration::from_secs(60), || {
        entries(&redis).len() > 200
    });
    // Redis stops answering for 4 s mid-stream: the records wait in memory, then go in order.
    redis.freeze();
    std::thread::sleep(Duration::from_secs(4));
    redis.thaw();
    wait_until(
        "every event in the streams",
        Duration::from_secs(90),
        || {
            made() >= (u64::from(SHARDS) * EVENTS_PER_SHARD) as usize
                && ContentCheck::new(&mock.events(), &content(&entries(&redis)).0)
                    .missing
                    .is_empty()
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    let entries = entries(&redis);
    let (hashes, in_order) = content(&entries);
    let check = ContentCheck::new(&mock.events(), &hashes);
    assert!(
        check.missing.is_empty() && check.duplicated.is_empty(),
        "{} missing, {} duplicated",
        check.missing.len(),
        check.duplicated.len()
    );
    assert!(in_order, "a shard's sequence went back within its stream");
    assert_eq!(mock.ledger().identifies_total, u64::from(SHARDS));
    let (status, stderr) = engine.terminate();
    assert!(status.success(), "{status:?}: {stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
