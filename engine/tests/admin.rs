//! The admin API of the real binary, over real HTTP, with the mock gateway streaming and the
//! fake bot receiving: auth on every endpoint, `/metrics` as Prometheus exposition whose
//! counters move, `/shards` and `/readyz`, reconnects, and gateway commands that reach the
//! mock's ledger on the right shard, within Discord's send limit however hard the bot floods.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::{Engine, LOG_WARN_AND_ADMIN, command_without_admin, http, wait_until};
use fake_bot::{BotConfig, FakeBot};
use mock_gateway::{MockConfig, MockGateway, ViolationKind};
use serde_json::{Value, json};

const SHARDS: u32 = 4;
const TOKEN: &str = "admin-t0ken";

/// The mock, the bot and the engine, with the admin API on a free port.
struct World {
    mock: MockGateway,
    bot: FakeBot,
    _engine: Engine,
    admin: SocketAddr,
}

impl World {
    fn start(name: &str, token: Option<&str>) -> World {
        let dir =
            std::env::temp_dir().join(format!("shardgate-admin-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mock = MockGateway::spawn(
            MockConfig {
                tls: true,
                ca_out: Some(dir.join("ca.pem")),
                seed: Some(11),
                guilds: 16,
                max_concurrency: 16,
                rate: 100.0,
                events_per_shard: 1_000_000,
                guild_create_bytes: 2000,
                heartbeat_interval_ms: 2000,
                ..MockConfig::default()
            },
            1,
        )
        .unwrap();
        let bot = FakeBot::spawn(BotConfig::ephemeral()).unwrap();
        let mut command = command_without_admin(&mock, &bot, &dir);
        command
            .args(["--data-dir", dir.to_str().unwrap()])
            .args(["--log", LOG_WARN_AND_ADMIN])
            .args(["--total-shards", &SHARDS.to_string(), "--cores", "2"]);
        if let Some(token) = token {
            command.env("SHARDGATE_ADMIN_TOKEN", token);
        }
        let (engine, admin) = Engine::spawn_with_admin(&mut command);
        let world = World {
            mock,
            bot,
            _engine: engine,
            admin,
        };
        wait_until("the admin API to answer", Duration::from_secs(20), || {
            TcpStream::connect(admin).is_ok()
        });
        wait_until("every shard to be ready", Duration::from_secs(30), || {
            world.get("/readyz", token).0 == 200
        });
        world
    }

    fn get(&self, path: &str, token: Option<&str>) -> (u16, Vec<(String, String)>, String) {
        http(self.admin, "GET", path, token, b"")
    }

    fn post(
        &self,
        path: &str,
        token: Option<&str>,
        body: &[u8],
    ) -> (u16, Vec<(String, String)>, String) {
        http(self.admin, "POST", path, token, body)
    }
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

/// Every endpoint docs/admin-api.md lists, as `(method, path)` with `{id}` as shard 1 and the
/// optional query left out: the doc's table is what this test walks, so an endpoint the doc
/// promises and the engine does not serve fails here.
fn documented_endpoints() -> Vec<(String, String)> {
    let doc = include_str!("../../docs/admin-api.md");
    let mut endpoints = Vec::new();
    for line in doc.lines().filter(|line| line.starts_with("| `")) {
        // `| `GET /shards`, `GET /shards/{id}` | …`: every backticked method and path in the
        // first cell.
        let cell = line.split('|').nth(1).unwrap_or_default();
        for quoted in cell.split('`').skip(1).step_by(2) {
            let Some((method, path)) = quoted.split_once(' ') else {
                continue;
            };
            if !["GET", "POST", "DELETE", "PUT"].contains(&method) {
                continue;
            }
            let path = path.split('[').next().unwrap().replace("{id}", "1");
            endpoints.push((method.to_owned(), path));
        }
    }
    endpoints
}

#[test]
fn every_endpoint_but_healthz_needs_the_token() {
    let world = World::start("auth", Some(TOKEN));
    let endpoints = documented_endpoints();
    for expected in [
        "GET /healthz",
        "GET /readyz",
        "GET /status",
        "GET /metrics",
        "GET /shards",
        "GET /shards/1",
        "POST /shards/1/reconnect",
        "POST /commands",
        "GET /reshard",
        "POST /reshard",
        "DELETE /reshard",
    ] {
        assert!(
            endpoints
                .iter()
                .any(|(m, p)| format!("{m} {p}") == expected),
            "docs/admin-api.md does not list {expected}: {endpoints:?}"
        );
    }
    for (method, path) in &endpoints {
        let (path, body): (&str, &[u8]) = match path.as_str() {
            "/commands" => (
                "/commands?shard_id=1",
                br#"{"op":3,"d":{"since":null,"activities":[],"status":"online","afk":false}}"#,
            ),
            other => (other, b""),
        };
        if path == "/healthz" {
            continue;
        }
        for token in [None, Some("wrong-token")] {
            let (status, headers, answer) = http(world.admin, method, path, token, body);
            assert_eq!(status, 401, "{method} {path} with {token:?}: {answer}");
            assert_eq!(header(&headers, "www-authenticate"), Some("Bearer"));
            let reason = json_of(&answer)["error"].as_str().unwrap().to_owned();
            assert!(!reason.is_empty());
            assert!(!answer.contains(TOKEN), "the token must not echo back");
        }
        let (status, _, answer) = http(world.admin, method, path, Some(TOKEN), body);
        if path == "/reshard" && method != "GET" {
            // Starting or aborting a reshard is answered, but not always with a 2xx (here: no
            // reshard runs to abort; a start for 4 shards of 16 guilds may be refused).
            assert!(
                [202, 409, 422].contains(&status),
                "{method} {path} with the token: {status} {answer}"
            );
            continue;
        }
        if path == "/cluster" || path.ends_with("/move?to=HOST") {
            // The fleet's endpoints, on a process that runs alone: a 404 that says so.
            assert_eq!(status, 404, "{method} {path} with the token: {answer}");
            assert!(answer.contains("--redis-url"), "{answer}");
            continue;
        }
        assert!(
            (200..300).contains(&status),
            "{method} {path} with the token: {status} {answer}"
        );
    }
    let (status, _, answer) = world.get("/healthz", None);
    assert_eq!(
        (status, json_of(&answer)["status"].as_str()),
        (200, Some("ok"))
    );

    // Errors are JSON with a reason, after auth.
    let (status, _, answer) = world.get("/nope", Some(TOKEN));
    assert_eq!(status, 404);
    assert!(
        json_of(&answer)["error"]
            .as_str()
            .unwrap()
            .contains("/nope")
    );
    let (status, headers, _) = world.post("/shards", Some(TOKEN), b"");
    assert_eq!((status, header(&headers, "allow")), (405, Some("GET")));
    let (status, _, answer) = world.get("/shards/99", Some(TOKEN));
    assert_eq!(status, 404, "{answer}");
    assert!(
        json_of(&answer)["error"]
            .as_str()
            .unwrap()
            .contains("0..=3")
    );
    let (status, _, _) = world.get("/shards/x", Some(TOKEN));
    assert_eq!(status, 400);
}

#[test]
fn shards_and_readyz_describe_live_sessions() {
    let world = World::start("shards", None);
    let (status, _, answer) = world.get("/readyz", None);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(json_of(&answer)["shards_active"], json!(SHARDS));
    wait_until(
        "a heartbeat round trip on every shard",
        Duration::from_secs(10),
        || {
            let shards = json_of(&world.get("/shards", None).2);
            shards
                .as_array()
                .unwrap()
                .iter()
                .all(|s| s["heartbeat_latency_ms"].is_u64())
        },
    );
    let shards = json_of(&world.get("/shards", None).2);
    let shards = shards.as_array().unwrap();
    assert_eq!(shards.len(), SHARDS as usize);
    for (index, shard) in shards.iter().enumerate() {
        assert_eq!(shard["shard_id"], json!(index), "{shard}");
        assert_eq!(shard["state"], "active", "{shard}");
        assert_eq!(shard["core"], json!(index / 2), "{shard}");
        assert!(shard["guilds"].as_u64().unwrap() > 0, "{shard}");
        assert!(shard["sequence"].as_u64().unwrap() > 0, "{shard}");
        assert!(shard["session_age_ms"].is_u64(), "{shard}");
        assert!(
            shard["last_event_age_ms"].as_u64().unwrap() < 10_000,
            "{shard}"
        );
        assert_eq!(shard["reconnects"], json!(0), "{shard}");
    }
    let one = json_of(&world.get("/shards/2", None).2);
    assert_eq!(
        (one["shard_id"].as_u64(), one["state"].as_str()),
        (Some(2), Some("active"))
    );

    // The engine at a glance: the same shards, and counters that match the bot's view.
    let (status, _, answer) = world.get("/status", None);
    assert_eq!(status, 200, "{answer}");
    let glance = json_of(&answer);
    assert_eq!(glance["plan"]["total_shards"], json!(SHARDS), "{glance}");
    assert_eq!(glance["plan"]["shards"], "0..=3", "{glance}");
    assert_eq!(glance["plan"]["cores"], json!(2), "{glance}");
    assert_eq!(glance["shards"]["owned"], json!(SHARDS), "{glance}");
    assert_eq!(
        glance["shards"]["by_state"]["active"],
        json!(SHARDS),
        "{glance}"
    );
    assert_eq!(glance["shards"]["fatal"], json!(0), "{glance}");
    assert!(glance["events"]["dispatches_received"].as_u64().unwrap() > 0);
    assert_eq!(glance["sessions"]["identifies"], json!(SHARDS), "{glance}");
    assert_eq!(glance["sink"]["records_dropped"]["shutdown"], json!(0));
    wait_until(
        "a delivered batch in /status",
        Duration::from_secs(10),
        || {
            json_of(&world.get("/status", None).2)["sink"]["records_delivered"]
                .as_u64()
                .unwrap()
                > 0
        },
    );
    let glance = json_of(&world.get("/status", None).2);
    assert!(glance["sink"]["batch_latency_p50_ms"].as_f64().unwrap() > 0.0);
    assert!(
        glance["sink"]["records_delivered"].as_u64().unwrap()
            <= world.bot.report().totals.records
                + world.bot.report().totals.notices.values().sum::<u64>(),
        "the engine cannot count more deliveries than the bot acknowledged: {glance}"
    );
}

#[test]
fn metrics_parse_as_prometheus_and_move_with_the_stream() {
    use openmetrics_parser::{PrometheusType, PrometheusValue};

    let world = World::start("metrics", None);
    let scrape = || {
        let (status, headers, text) = world.get("/metrics", None);
        assert_eq!(status, 200);
        assert!(
            header(&headers, "content-type")
                .unwrap()
                .starts_with("text/plain; version=0.0.4")
        );
        openmetrics_parser::prometheus::parse_prometheus(&text)
            .unwrap_or_else(|e| panic!("not Prometheus exposition: {e:?}\n{text}"))
    };
    let sum =
        |exposition: &openmetrics_parser::MetricsExposition<PrometheusType, PrometheusValue>,
         name: &str| {
            let family = exposition
                .families
                .get(name)
                .unwrap_or_else(|| panic!("{name} missing"));
            family
                .iter_samples()
                .map(|sample| match &sample.value {
                    PrometheusValue::Counter(counter) => counter.value.as_f64(),
                    PrometheusValue::Gauge(gauge) => gauge.as_f64(),
                    other => panic!("{name}: unexpected {other:?}"),
                })
                .sum::<f64>()
        };
    let first = scrape();
    for name in first.families.keys() {
        assert!(name.starts_with("shardgate_"), "{name}");
        // The documented metric list cannot fall behind what /metrics exposes.
        let listed = format!("`{name}`");
        assert!(
            include_str!("../../docs/admin-api.md").contains(&listed),
            "{name} is not in docs/admin-api.md's metric list"
        );
    }
    for (name, kind) in [
        (
            "shardgate_dispatches_received_total",
            PrometheusType::Counter,
        ),
        ("shardgate_shard_state", PrometheusType::Gauge),
        ("shardgate_reconnects_total", PrometheusType::Counter),
        (
            "shardgate_sink_batch_latency_seconds",
            PrometheusType::Histogram,
        ),
        ("shardgate_queue_records", PrometheusType::Gauge),
        ("shardgate_ring_records", PrometheusType::Gauge),
        (
            "shardgate_process_resident_memory_bytes",
            PrometheusType::Gauge,
        ),
    ] {
        assert_eq!(first.families[name].family_type, kind, "{name}");
    }
    assert_eq!(sum(&first, "shardgate_shard_state"), f64::from(SHARDS));
    assert!(sum(&first, "shardgate_process_resident_memory_bytes") > 1e6);
    std::thread::sleep(Duration::from_secs(2));
    let second = scrape();
    for name in [
        "shardgate_dispatches_received_total",
        "shardgate_records_to_sink_total",
        "shardgate_sink_records_delivered_total",
        "shardgate_sink_batches_total",
        "shardgate_shard_dispatches_received_total",
    ] {
        let (before, after) = (sum(&first, name), sum(&second, name));
        assert!(after > before, "{name} did not move: {before} → {after}");
    }
    let PrometheusValue::Histogram(latency) =
        &second.families["shardgate_sink_batch_latency_seconds"]
            .iter_samples()
            .next()
            .unwrap()
            .value
    else {
        panic!("not a histogram")
    };
    assert!(latency.count.unwrap() > 0);
    assert!(
        latency
            .buckets
            .windows(2)
            .all(|b| b[0].count.as_f64() <= b[1].count.as_f64())
    );
}

#[test]
fn commands_reach_the_right_shard_with_their_payload() {
    let world = World::start("commands", None);
    // Routed by guild: (guild_id >> 22) % 4.
    let guild_id: u64 = 81_384_788_765_712_384;
    let shard = ((guild_id >> 22) % u64::from(SHARDS)) as u32;
    let members = json!({"op": 8, "d": {"guild_id": guild_id.to_string(), "query": "", "limit": 0, "nonce": "n1"}});
    let (status, _, answer) = world.post("/commands", None, members.to_string().as_bytes());
    assert_eq!(status, 202, "{answer}");
    assert_eq!(json_of(&answer)["queued"], json!([shard]));
    // Explicit shard.
    let voice = json!({"op": 4, "d": {"guild_id": "41771983423143937", "channel_id": null, "self_mute": false, "self_deaf": false}});
    let (status, _, answer) =
        world.post("/commands?shard_id=3", None, voice.to_string().as_bytes());
    assert_eq!(
        (status, json_of(&answer)["queued"].clone()),
        (202, json!([3]))
    );
    // Presence to every shard.
    let presence = json!({"op": 3, "d": {"since": null, "activities": [{"name": "tests", "type": 0}], "status": "dnd", "afk": false}});
    let (status, _, answer) = world.post("/commands", None, presence.to_string().as_bytes());
    assert_eq!(
        (status, json_of(&answer)["queued"].clone()),
        (202, json!([0, 1, 2, 3]))
    );

    let commands = |shard: u32| {
        world.mock.ledger().shards[&shard]
            .commands
            .iter()
            .map(|c| c.payload.clone())
            .collect::<Vec<_>>()
    };
    wait_until(
        "the commands to reach the mock",
        Duration::from_secs(10),
        || {
            commands(shard).contains(&members)
                && commands(3).contains(&voice)
                && (0..SHARDS).all(|s| commands(s).contains(&presence))
        },
    );
    for other in (0..SHARDS).filter(|s| *s != shard) {
        assert!(
            !commands(other).contains(&members),
            "op 8 also on shard {other}"
        );
    }
    for other in 0..3 {
        assert!(
            !commands(other).contains(&voice),
            "op 4 also on shard {other}"
        );
    }

    // Invalid commands: 400 with a reason, nothing sent.
    let refused: [(&str, &[u8], &str); 7] = [
        ("/commands?shard_id=1", br#"{"op":2,"d":{}}"#, "opcode 2"),
        ("/commands?shard_id=1", b"[1,2]", "not a JSON object"),
        ("/commands?shard_id=1", br#"{"op":3,"d":"#, "not valid JSON"),
        ("/commands?shard_id=1", &[b' '; 5000], "4096"),
        (
            "/commands",
            br#"{"op":4,"d":{"channel_id":null}}"#,
            "cannot route",
        ),
        (
            "/commands?shard_id=all",
            br#"{"op":8,"d":{}}"#,
            "only for presence",
        ),
        (
            "/commands",
            br#"{"op":8,"d":{"guild_id":"abc"}}"#,
            "snowflake",
        ),
    ];
    for (path, body, reason) in refused {
        let (status, _, answer) = world.post(path, None, body);
        assert_eq!(status, 400, "{path} {answer}");
        let error = json_of(&answer)["error"].as_str().unwrap().to_owned();
        assert!(
            error.contains(reason),
            "{error:?} should mention {reason:?}"
        );
    }
    let (status, _, _) = world.post(
        "/commands?shard_id=9",
        None,
        presence.to_string().as_bytes(),
    );
    assert_eq!(status, 404);
    assert!(
        world.mock.ledger().violations.is_empty(),
        "{:?}",
        world.mock.ledger().violations
    );
}

#[test]
fn a_flood_of_presence_updates_never_breaks_the_send_limit() {
    let world = World::start("flood", None);
    let mut accepted = 0u64;
    let mut refused = 0u64;
    for index in 0..1000 {
        let presence = json!({"op": 3, "d": {"since": null, "activities": [{"name": format!("flood {index}"), "type": 0}], "status": "online", "afk": false}});
        let (status, headers, answer) = world.post(
            "/commands?shard_id=0",
            None,
            presence.to_string().as_bytes(),
        );
        match status {
            202 => accepted += 1,
            429 => {
                refused += 1;
                assert_eq!(header(&headers, "retry-after"), Some("1"));
                assert!(json_of(&answer)["error"].as_str().unwrap().contains("full"));
            }
            other => panic!("unexpected {other}: {answer}"),
        }
    }
    assert!(
        refused > 0 && accepted > 0,
        "accepted {accepted}, refused {refused}"
    );
    // The shard sends what its allowance leaves after the heartbeats' reserve at once, then
    // nothing until the window slides.
    wait_until(
        "the first burst of commands",
        Duration::from_secs(10),
        || {
            world.mock.ledger().shards[&0]
                .commands_by_op
                .get(&3)
                .copied()
                .unwrap_or(0)
                >= 60
        },
    );
    std::thread::sleep(Duration::from_secs(3));
    let ledger = world.mock.ledger();
    let sent = ledger.shards[&0].commands_by_op[&3];
    assert!(
        sent <= 120 && sent <= accepted,
        "sent {sent}, accepted {accepted}"
    );
    assert_eq!(ledger.violations_of(ViolationKind::SendRateExceeded), 0);
    assert!(ledger.violations.is_empty(), "{:?}", ledger.violations);
    assert_eq!(
        ledger.shards[&0].connections, 1,
        "the shard was never closed for it"
    );
    let shard = json_of(&world.get("/shards/0", None).2);
    assert_eq!(shard["state"], "active");
    assert!(shard["commands_waiting"].as_u64().unwrap() > 0, "{shard}");
    assert_eq!(shard["commands_sent"].as_u64().unwrap(), sent, "{shard}");
}

#[test]
fn reconnect_resumes_or_identifies_on_request() {
    let world = World::start("reconnect", None);
    let (status, _, answer) = world.post("/shards/1/reconnect", None, b"");
    assert_eq!(
        (status, json_of(&answer)["reconnect"].as_str()),
        (202, Some("resume"))
    );
    wait_until("shard 1 to resume", Duration::from_secs(15), || {
        world.mock.ledger().shards[&1].resumes == 1
    });
    let (status, _, answer) = world.post("/shards/2/reconnect?identify=true", None, b"");
    assert_eq!(
        (status, json_of(&answer)["reconnect"].as_str()),
        (202, Some("identify"))
    );
    wait_until("shard 2 to identify anew", Duration::from_secs(15), || {
        world.mock.ledger().shards[&2].identifies == 2
    });
    wait_until(
        "every shard to be ready again",
        Duration::from_secs(15),
        || world.get("/readyz", None).0 == 200,
    );
    let ledger = world.mock.ledger();
    assert_eq!(
        ledger.shards[&1].identifies, 1,
        "a resume spends no identify"
    );
    assert_eq!(
        (ledger.shards[&0].resumes, ledger.shards[&0].identifies),
        (0, 1)
    );
    assert!(ledger.violations.is_empty(), "{:?}", ledger.violations);
    let shard = json_of(&world.get("/shards/1", None).2);
    assert_eq!(shard["reconnects"], json!(1), "{shard}");
    let (status, _, answer) = world.post("/shards/1/reconnect?identify=maybe", None, b"");
    assert_eq!(status, 400, "{answer}");
}

#[test]
fn answers_to_commands_and_rate_limits_reach_the_bot_like_any_dispatch() {
    let world = World::start("rate-limited", None);
    let guild_id: u64 = 175_928_847_299_117_063;
    let shard = ((guild_id >> 22) % u64::from(SHARDS)) as u32;
    let members =
        json!({"op": 8, "d": {"guild_id": guild_id.to_string(), "query": "", "limit": 0}});
    let by_type = |name: &str| {
        world
            .bot
            .report()
            .shards
            .get(&shard)
            .and_then(|s| s.by_type.get(name).copied())
            .unwrap_or(0)
    };
    let (status, _, answer) = world.post("/commands", None, members.to_string().as_bytes());
    assert_eq!(status, 202, "{answer}");
    wait_until(
        "GUILD_MEMBERS_CHUNK at the bot",
        Duration::from_secs(10),
        || by_type("GUILD_MEMBERS_CHUNK") == 1,
    );
    // All members of the same guild again within 30 s: Discord answers RATE_LIMITED.
    let (status, _, answer) = world.post("/commands", None, members.to_string().as_bytes());
    assert_eq!(status, 202, "{answer}");
    wait_until("RATE_LIMITED at the bot", Duration::from_secs(10), || {
        by_type("RATE_LIMITED") == 1
    });
    let ledger = world.mock.ledger();
    assert_eq!(
        ledger.violations_of(ViolationKind::GuildMembersRateLimited),
        1,
        "the bot's own second request, nothing else: {:?}",
        ledger.violations
    );
    assert_eq!(ledger.violations.len(), 1);
}

/// A broken gateway's payload, cut short inside `d` but well compressed, passes the cores (they
/// read only its head) and would make its batch invalid JSON, refused by the bot for ever. The
/// sink leaves it out at the first refusal, counts it, and every shard's delivery goes on.
#[test]
fn a_truncated_payload_is_dropped_counted_and_delivery_goes_on() {
    let world = World::start("truncated", Some(TOKEN));
    let cut_shards = [0u32, 2];
    for shard in cut_shards {
        assert_eq!(
            world
                .mock
                .inject_fault(shard, mock_gateway::Fault::Truncated),
            1
        );
    }
    let cut_seq = |shard: u32| -> Option<u64> {
        let ledger = world.mock.ledger();
        let seqs = &ledger.shards[&shard].sessions[0].truncated_seqs;
        seqs.first().copied()
    };
    wait_until(
        "the bot to receive well past the cut payloads",
        Duration::from_secs(30),
        || {
            let report = world.bot.report();
            cut_shards.iter().all(|&shard| {
                cut_seq(shard).is_some_and(|cut| {
                    report
                        .shards
                        .get(&shard)
                        .is_some_and(|r| r.runs[0].max_seq > cut + 50)
                })
            })
        },
    );
    let ledger = world.mock.ledger();
    let report = world.bot.report();
    assert!(ledger.violations.is_empty(), "{:#?}", ledger.violations);
    for shard in 0..SHARDS {
        let session = &ledger.shards[&shard].sessions[0];
        let got = &report.shards[&shard];
        assert_eq!(got.runs.len(), 1, "shard {shard}: one session");
        assert_eq!(
            ledger.shards[&shard].connections, 1,
            "shard {shard}: no reconnect"
        );
        let run = &got.runs[0];
        let received: std::collections::BTreeSet<u64> = run
            .ranges
            .iter()
            .flat_map(|[start, end]| *start..=*end)
            .collect();
        let mut want = session.expected_seqs();
        want.retain(|seq| *seq <= run.max_seq);
        // The cut payloads are not expected; everything else is, and nothing more.
        assert_eq!(received, want, "shard {shard}: all but the cut payload");
        let cuts = usize::from(cut_shards.contains(&shard));
        assert_eq!(session.truncated_seqs.len(), cuts, "shard {shard}");
    }
    let (status, _, text) = world.get("/metrics", Some(TOKEN));
    assert_eq!(status, 200);
    let sample = |line_start: &str| -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(line_start))
            .unwrap_or_else(|| panic!("no {line_start} in {text}"))
            .trim()
            .parse()
            .unwrap()
    };
    assert_eq!(
        sample("shardgate_records_dropped_total{reason=\"invalid_payload\"}"),
        2.0
    );
    assert!(sample("shardgate_sink_delivery_failures_total") >= 1.0);
}
