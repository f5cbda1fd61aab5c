//! Routes: INTERACTION_CREATE to a receiver of its own, everything else to the default one,
//! through the real binary, the mock gateway over TLS and two fake bots. While the routed
//! receiver is away, the default route keeps delivering (it never queues up, never spills);
//! once it is back, every event the mock's ledger says was sent has reached exactly one of the
//! two receivers, once, each in order per shard, and the routed one only the routed type.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::redis::RedisServer;
use common::{Engine, LOG_WARN_AND_ADMIN, command_without_admin, http, wait_until};
use fake_bot::{BotConfig, FakeBot, Report, StreamsConfig};
use mock_gateway::{MockConfig, MockGateway};
use serde_json::Value;

const SHARDS: u32 = 4;
const EVENTS: u64 = 2500;
const ROUTED: &str = "INTERACTION_CREATE";

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shardgate-routes-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn status(admin: std::net::SocketAddr) -> Value {
    let (code, _, body) = http(admin, "GET", "/status", None, b"");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The route named `name` of a `/status` body.
fn route<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|route| route["name"] == name)
        .unwrap_or_else(|| panic!("no route {name} in {status}"))
}

/// Every sequence a bot holds for `shard`, over all its runs.
fn seqs(report: &Report, shard: u32) -> BTreeSet<u64> {
    report
        .shards
        .get(&shard)
        .map(|r| r.runs.iter().flat_map(fake_bot::RunReport::seqs).collect())
        .unwrap_or_default()
}

fn all_arrived(mock: &MockGateway, bots: [&FakeBot; 2]) -> bool {
    let ledger = mock.ledger();
    let reports = bots.map(FakeBot::report);
    (0..SHARDS).all(|shard| {
        let Some(shard_ledger) = ledger.shards.get(&shard) else {
            return false;
        };
        let got: BTreeSet<u64> = seqs(&reports[0], shard)
            .union(&seqs(&reports[1], shard))
            .copied()
            .collect();
        let sent: u64 = shard_ledger
            .sessions
            .iter()
            .map(mock_gateway::SessionLedger::steady_dispatches)
            .sum();
        sent >= EVENTS
            && shard_ledger
                .sessions
                .iter()
                .all(|session| session.expected_seqs().is_subset(&got))
    })
}

#[test]
fn a_routed_receiver_that_is_away_delays_only_its_own_route() {
    let dir = scratch("away");
    let mock = MockGateway::spawn(
        MockConfig {
            tls: true,
            ca_out: Some(dir.join("ca.pem")),
            seed: Some(29),
            guilds: 16,
            max_concurrency: 16,
            rate: 80.0,
            events_per_shard: EVENTS,
            guild_create_bytes: 1500,
            heartbeat_interval_ms: 2000,
            ..MockConfig::default()
        },
        1,
    )
    .unwrap();
    let default_bot = FakeBot::spawn(BotConfig::ephemeral()).unwrap();
    let routed_bot = FakeBot::spawn(BotConfig::ephemeral()).unwrap();
    let config = dir.join("shardgate.toml");
    std::fs::write(
        &config,
        format!(
            "[routes.interactions]\nevents = [\"{ROUTED}\"]\nforward_url = \"{}\"\n\
             batch_events_max = 20\nbatch_bytes_max = 65536\nbatch_linger_ms = 0\nqueue_bytes_max = 65536\n",
            routed_bot.url()
        ),
    )
    .unwrap();
    let mut command = command_without_admin(&mock, &default_bot, &dir);
    command
        .args(["--config", config.to_str().unwrap()])
        .args(["--total-shards", &SHARDS.to_string(), "--cores", "2"])
        .args(["--data-dir", dir.join("data").to_str().unwrap()])
        .args(["--spill-fsync", "never", "--log", LOG_WARN_AND_ADMIN]);
    let (mut engine, admin) = Engine::spawn_with_admin(&mut command);
    wait_until("both routes to deliver", Duration::from_secs(60), || {
        if let Some(text) = engine.exited() {
            panic!("engine exited: {text}");
        }
        default_bot.report().totals.records > 300 && routed_bot.report().totals.records > 3
    });

    // The routed receiver goes away for 15 s.
    let away = Duration::from_secs(15);
    routed_bot.refuse_for(away);
    let went_away = Instant::now();
    // Past the batch that was in flight: from here on the routed route has nothing delivered.
    std::thread::sleep(Duration::from_secs(1));
    let routed_before = routed_bot.report().totals.records;
    let default_before = default_bot.report().totals.records;
    let mut default_spilled = 0;
    while went_away.elapsed() < away - Duration::from_secs(2) {
        let now = status(admin);
        default_spilled = default_spilled.max(
            route(&now, "default")["queue_spill_records"]
                .as_u64()
                .unwrap(),
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let during = status(admin);
    let routed_now = route(&during, "interactions");
    assert!(
        routed_now["queue_spill_records"].as_u64().unwrap()
            + routed_now["queue_memory_records"].as_u64().unwrap()
            > 0,
        "the routed records wait while their receiver is away: {routed_now}"
    );
    assert!(routed_now["delivery_failures"].as_u64().unwrap() > 0);
    assert_eq!(
        routed_bot.report().totals.records,
        routed_before,
        "nothing reached the routed receiver while it refused"
    );
    let default_during = default_bot.report().totals.records - default_before;
    assert!(
        default_during > 500,
        "the default route kept delivering while the other was away: {default_during} records"
    );
    assert_eq!(
        default_spilled, 0,
        "the default route never queued up behind the other"
    );
    eprintln!(
        "default route while the other was away: {default_during} records, batch latency \
         p50 {} ms, p99 {} ms",
        route(&during, "default")["batch_latency_p50_ms"],
        route(&during, "default")["batch_latency_p99_ms"]
    );

    wait_until(
        "every event to reach one of the receivers",
        Duration::from_secs(120),
        || all_arrived(&mock, [&default_bot, &routed_bot]),
    );
    let ledger = mock.ledger();
    assert!(ledger.violations.is_empty(), "{:#?}", ledger.violations);
    let default_report = default_bot.report();
    let routed_report = routed_bot.report();
    for report in [&default_report, &routed_report] {
        assert_eq!(report.totals.out_of_order, 0);
        assert_eq!(report.totals.duplicates, 0);
    }
    for shard in 0..SHARDS {
        let shard_ledger = &ledger.shards[&shard];
        assert_eq!(shard_ledger.sessions.len(), 1, "shard {shard} stayed up");
        let session = &shard_ledger.sessions[0];
        let at_default = seqs(&default_report, shard);
        let at_routed = seqs(&routed_report, shard);
        assert!(
            at_default.is_disjoint(&at_routed),
            "shard {shard}: an event reached both receivers"
        );
        let got: BTreeSet<u64> = at_default.union(&at_routed).copied().collect();
        let extra: BTreeSet<u64> = got.difference(&session.expected_seqs()).copied().collect();
        assert!(
            extra.is_subset(&session.optional_seqs()),
            "shard {shard}: unexpected {extra:?}"
        );
        let routed_types = &routed_report.shards[&shard].by_type;
        assert_eq!(
            routed_types.keys().collect::<Vec<_>>(),
            [ROUTED],
            "shard {shard}: the routed receiver gets its type only"
        );
        assert_eq!(
            routed_types[ROUTED], session.by_type[ROUTED],
            "shard {shard}: every {ROUTED} reached the routed receiver"
        );
        assert!(!default_report.shards[&shard].by_type.contains_key(ROUTED));
    }
    // The notices go to the default route.
    assert!(default_report.totals.notices.contains_key("SHARD_READY"));
    assert!(routed_report.totals.notices.is_empty());

    // Per-route metrics.
    let (code, _, metrics) = http(admin, "GET", "/metrics", None, b"");
    assert_eq!(code, 200);
    let delivered = |name: &str| {
        metrics
            .lines()
            .find(|line| {
                line.starts_with(&format!(
                    "shardgate_route_records_delivered_total{{route=\"{name}\"}}"
                ))
            })
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no delivered count for route {name}"))
    };
    assert_eq!(
        delivered("interactions") as u64,
        routed_report.totals.records
    );
    assert_eq!(
        delivered("default") as u64,
        default_report.totals.records + default_report.totals.notices.values().sum::<u64>()
    );

    let (status, stderr) = engine.terminate();
    assert!(status.success(), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The layout the issue asks for: INTERACTION_CREATE to a low-latency HTTP endpoint with
/// small batches, everything else into Redis streams read by a consumer group. Every ledger
/// event reaches one of them once and in order per shard.
#[test]
fn interactions_over_http_and_the_rest_into_redis_streams() {
    let dir = scratch("http-and-streams");
    let redis = RedisServer::start();
    let mock = MockGateway::spawn(
        MockConfig {
            tls: true,
            ca_out: Some(dir.join("ca.pem")),
            seed: Some(31),
            guilds: 16,
            max_concurrency: 16,
            rate: 150.0,
            events_per_shard: 1500,
            ..MockConfig::default()
        },
        1,
    )
    .unwrap();
    // A second group that never reads: the streams' MAXLEN trims what it did not read, and the
    // engine counts that.
    let mut redis_conn = redis.client().get_connection().unwrap();
    for partition in 0..2 {
        let () = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(format!("bot:events:{partition}"))
            .arg("idle")
            .arg("0")
            .arg("MKSTREAM")
            .query(&mut redis_conn)
            .unwrap();
    }
    let streams_bot = FakeBot::spawn(BotConfig::ephemeral()).unwrap();
    let consumer = streams_bot
        .consume_streams(StreamsConfig {
            stream_key: "bot:events".to_owned(),
            stream_partitions: 2,
            block_ms: 200,
            ..StreamsConfig::new(redis.url())
        })
        .unwrap();
    let interactions_bot = FakeBot::spawn(BotConfig::ephemeral()).unwrap();
    let config = dir.join("shardgate.toml");
    std::fs::write(
        &config,
        format!(
            "sink = \"redis-streams\"\nstream_key = \"bot:events\"\nstream_partitions = 2\n\
             stream_maxlen = 1000\n\
             [routes.interactions]\nevents = [\"{ROUTED}\"]\nforward_url = \"{}\"\n\
             batch_events_max = 10\nbatch_linger_ms = 0\n",
            interactions_bot.url()
        ),
    )
    .unwrap();
    let (mut engine, admin) = Engine::spawn_with_admin(
        std::process::Command::new(env!("CARGO_BIN_EXE_shardgate"))
            .args(["run", "--api-base", &mock.api_base()])
            .args(["--ca-file", dir.join("ca.pem").to_str().unwrap()])
            .args(["--config", config.to_str().unwrap()])
            .args(["--redis-url", &redis.url()])
            .args(["--total-shards", &SHARDS.to_string(), "--cores", "2"])
            .args(["--data-dir", dir.join("data").to_str().unwrap()])
            .args(["--log", LOG_WARN_AND_ADMIN])
            .env("DISCORD_TOKEN", mock.token())
            .stdout(Stdio::null()),
    );
    let bots = [&streams_bot, &interactions_bot];
    wait_until(
        "every event at one of the receivers",
        Duration::from_secs(90),
        || {
            let ledger = mock.ledger();
            let reports = bots.map(FakeBot::report);
            (0..SHARDS).all(|shard| {
                ledger.shards.get(&shard).is_some_and(|shard_ledger| {
                    let got: BTreeSet<u64> = seqs(&reports[0], shard)
                        .union(&seqs(&reports[1], shard))
                        .copied()
                        .collect();
                    shard_ledger
                        .sessions
                        .iter()
                        .map(mock_gateway::SessionLedger::steady_dispatches)
                        .sum::<u64>()
                        >= 1500
                        && shard_ledger
                            .sessions
                            .iter()
                            .all(|session| session.expected_seqs().is_subset(&got))
                })
            })
        },
    );
    let ledger = mock.ledger();
    let at_streams = streams_bot.report();
    let at_http = interactions_bot.report();
    for report in [&at_streams, &at_http] {
        assert_eq!(report.totals.out_of_order, 0);
        assert_eq!(report.totals.duplicates, 0);
    }
    for shard in 0..SHARDS {
        let session = &ledger.shards[&shard].sessions[0];
        assert!(seqs(&at_streams, shard).is_disjoint(&seqs(&at_http, shard)));
        assert_eq!(
            at_http.shards[&shard].by_type.keys().collect::<Vec<_>>(),
            [ROUTED]
        );
        assert_eq!(
            at_http.shards[&shard].by_type[ROUTED],
            session.by_type[ROUTED]
        );
        assert!(!at_streams.shards[&shard].by_type.contains_key(ROUTED));
    }
    // The idle group read nothing: what the streams trimmed it lost, and /metrics says so (the
    // deliverer polls the groups every few seconds; it counts no more than was trimmed).
    let trimmed_by_redis: u64 = (0..2)
        .map(|partition| {
            let key = format!("bot:events:{partition}");
            let info: std::collections::HashMap<String, redis::Value> = redis::cmd("XINFO")
                .arg("STREAM")
                .arg(&key)
                .query(&mut redis_conn)
                .unwrap();
            let added: u64 = redis::from_redis_value(info["entries-added"].clone()).unwrap();
            let length: u64 = redis::cmd("XLEN").arg(&key).query(&mut redis_conn).unwrap();
            added - length
        })
        .sum();
    assert!(trimmed_by_redis > 0, "MAXLEN trimmed the streams");
    let trimmed_counted = || -> u64 {
        let (_, _, metrics) = http(admin, "GET", "/metrics", None, b"");
        metrics
            .lines()
            .filter(|line| {
                line.starts_with("shardgate_stream_trimmed_unread_entries_total{")
                    && line.contains("group=\"idle\"")
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    };
    wait_until(
        "the trimmed entries the idle group never read on /metrics",
        Duration::from_secs(30),
        || trimmed_counted() > 0,
    );
    assert!(trimmed_counted() <= trimmed_by_redis);

    let now = status(admin);
    assert_eq!(route(&now, "default")["sink"], "redis-streams");
    assert_eq!(route(&now, "default")["destination"], "bot:events:*");
    assert_eq!(route(&now, "interactions")["sink"], "http");
    drop(consumer);
    let (status, stderr) = engine.terminate();
    assert!(status.success(), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A route removed from the config while its spill holds records: shardgate refuses to start
/// and names the directory, and the records stay.
#[test]
fn a_removed_route_with_records_on_its_spill_stops_the_start() {
    let dir = scratch("orphan");
    // The route's spill as a run with [routes.interactions] left it: one record undelivered.
    let spill = dir.join("data/routes/interactions/spill");
    {
        let (mut writer, _) =
            shardgate::spill::Spill::open(shardgate::spill::SpillConfig::new(&spill)).unwrap();
        writer
            .append(&shardgate::record::Record {
                shard_id: 0,
                shard_count: 1,
                seq: 7,
                session: 1,
                kind: shardgate::record::RecordKind::Dispatch,
                payload: br#"{"t":"INTERACTION_CREATE","s":7,"op":0,"d":{}}"#.to_vec().into(),
            })
            .unwrap();
        writer.flush().unwrap();
    }
    let on_disk = || {
        std::fs::read_dir(&spill)
            .unwrap()
            .flatten()
            .map(|file| (file.file_name(), std::fs::read(file.path()).unwrap()))
            .collect::<Vec<_>>()
    };
    let before = on_disk();
    let mock = MockGateway::spawn(
        MockConfig {
            tls: true,
            ca_out: Some(dir.join("ca.pem")),
            ..MockConfig::default()
        },
        1,
    )
    .unwrap();
    let bot = FakeBot::spawn(BotConfig::ephemeral()).unwrap();
    let output = command_without_admin(&mock, &bot, &dir)
        .args(["--admin-addr", "127.0.0.1:0"])
        .args(["--total-shards", "1", "--cores", "1"])
        .args(["--data-dir", dir.join("data").to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("routes/interactions/spill") && stderr.contains("[routes.interactions]"),
        "{stderr}"
    );
    assert_eq!(on_disk(), before, "nothing destroyed");
    assert_eq!(mock.ledger().shards.len(), 0, "no shard started");
    let _ = std::fs::remove_dir_all(&dir);
}
