//! A fleet of real shardgate processes on loopback: one `redis-server` of the test's own, the
//! mock gateway over TLS with steady zstd-stream traffic, one fake bot. The mock's ledger says
//! how many identifies and resumes each shard had and whether any identify came too fast; the
//! bot's content check (by hash of `t` and the raw `d`) says whether every event arrived once.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::redis::RedisServer;
use common::{Engine, LOG_WARN_AND_ADMIN, http, wait_until};
use fake_bot::{BotConfig, FakeBot};
use mock_gateway::delivery::ContentCheck;
use mock_gateway::{MockConfig, MockGateway, ViolationKind};
use serde_json::Value;

const IDENTIFY_WINDOW_MS: u64 = 200;
const SHARDS: u32 = 6;

/// Leases and traffic of one test.
#[derive(Clone, Copy)]
struct Options {
    host_lease_ms: u64,
    shard_lease_ms: u64,
    /// At 100 events/s per shard.
    events_per_shard: u64,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            host_lease_ms: 1000,
            shard_lease_ms: 2000,
            events_per_shard: 1500,
        }
    }
}

struct Host {
    id: String,
    engine: Engine,
    admin: SocketAddr,
}

struct Fleet {
    dir: PathBuf,
    redis: RedisServer,
    mock: MockGateway,
    bot: FakeBot,
    hosts: Vec<Host>,
    options: Options,
}

impl Fleet {
    fn start(name: &str, hosts: &[&str]) -> Fleet {
        Fleet::start_with(name, hosts, Options::default())
    }

    fn start_with(name: &str, hosts: &[&str], options: Options) -> Fleet {
        let dir =
            std::env::temp_dir().join(format!("shardgate-fleet-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let redis = RedisServer::start();
        let mock = MockGateway::spawn(
            MockConfig {
                tls: true,
                ca_out: Some(dir.join("ca.pem")),
                seed: Some(17),
                guilds: 24,
                max_concurrency: 2,
                identify_window_ms: IDENTIFY_WINDOW_MS,
                rate: 100.0,
                events_per_shard: options.events_per_shard,
                heartbeat_interval_ms: 2000,
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
        let mut fleet = Fleet {
            dir,
            redis,
            mock,
            bot,
            hosts: Vec::new(),
            options,
        };
        for id in hosts {
            fleet.add_host(id);
        }
        fleet
    }

    fn add_host(&mut self, id: &str) {
        self.add_host_with(id, &[]);
    }

    fn add_host_with(&mut self, id: &str, extra: &[&str]) {
        let data = self.dir.join(id);
        let mut command = Command::new(env!("CARGO_BIN_EXE_shardgate"));
        command
            .args(["run", "--api-base", &self.mock.api_base()])
            .args(["--ca-file", self.dir.join("ca.pem").to_str().unwrap()])
            .args(["--forward-url", &self.bot.url()])
            .args(["--total-shards", &SHARDS.to_string(), "--cores", "1"])
            .args(["--compression", "zstd-stream"])
            .args(["--data-dir", data.to_str().unwrap()])
            .args(["--log", LOG_WARN_AND_ADMIN])
            .args(["--identify-interval-ms", &IDENTIFY_WINDOW_MS.to_string()])
            .args(["--redis-url", &self.redis.url(), "--cluster-name", "test"])
            .args(["--host-id", id])
            .args(["--host-lease-ms", &self.options.host_lease_ms.to_string()])
            .args(["--shard-lease-ms", &self.options.shard_lease_ms.to_string()])
            .args(["--session-save-interval-ms", "200"])
            .args(extra)
            .env("DISCORD_TOKEN", self.mock.token())
            .stdout(Stdio::null());
        let (engine, admin) = Engine::spawn_with_admin(&mut command);
        wait_until("the admin API", Duration::from_secs(30), || {
            std::net::TcpStream::connect(admin).is_ok()
        });
        self.hosts.push(Host {
            id: id.to_owned(),
            engine,
            admin,
        });
    }

    fn cluster(&self, host: &Host) -> Value {
        let (status, _, body) = http(host.admin, "GET", "/cluster", None, b"");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Shard → the host whose agent holds its lease, as each host says of itself.
    fn held(&self) -> BTreeMap<u32, String> {
        let mut held = BTreeMap::new();
        for host in &self.hosts {
            for shard in self.cluster(host)["held"].as_array().unwrap() {
                let shard = u32::try_from(shard.as_u64().unwrap()).unwrap();
                let before = held.insert(shard, host.id.clone());
                assert_eq!(before, None, "shard {shard} held by two hosts");
            }
        }
        held
    }

    /// Waits until every shard has a session at the mock that is ready (its READY or RESUMED
    /// went out) and a holder.
    fn wait_all_running(&self) {
        wait_until(
            "every shard held and connected",
            Duration::from_secs(60),
            || {
                self.held().len() == SHARDS as usize
                    && (0..SHARDS).all(|shard| {
                        self.mock
                            .ledger()
                            .shards
                            .get(&shard)
                            .is_some_and(|ledger| !ledger.sessions.is_empty())
                    })
            },
        );
    }

    /// Waits until every shard runs where the assignment wants it: the hosts that started a
    /// moment apart have finished rebalancing, and no hand-over is under way.
    fn wait_settled(&self) {
        self.wait_all_running();
        wait_until("the assignment settled", Duration::from_secs(60), || {
            self.hosts.iter().all(|host| {
                let cluster = self.cluster(host);
                cluster["handing_over"]
                    .as_array()
                    .is_some_and(Vec::is_empty)
                    && cluster["hosts"].as_array().is_some_and(|hosts| {
                        hosts.len() == self.hosts.len()
                            && hosts.iter().all(|h| {
                                // A pinned host runs its pinned shards, not assigned ones.
                                let mut wanted: Vec<Value> =
                                    h["assigned"].as_array().unwrap().clone();
                                wanted.extend(h["pinned"].as_array().unwrap().iter().cloned());
                                wanted.sort_by_key(|id| id.as_u64());
                                // The assignment names a pinned host for its pinned shards too.
                                wanted.dedup();
                                h["leased"] == Value::Array(wanted)
                            })
                    })
            })
        });
    }

    fn wait_for_every_event(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        loop {
            let events = self.mock.events();
            let steady = events
                .iter()
                .filter(|e| !matches!(e.t.as_str(), "GUILD_CREATE" | "GUILD_DELETE"))
                .count();
            let check = ContentCheck::new(&events, &self.bot.content());
            let total = u64::from(SHARDS) * self.options.events_per_shard;
            if steady >= total as usize && check.missing.is_empty() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out: {steady} steady events made, {} missing, {} duplicated; ledger: {} \
                 identifies, {} resumes, {} rejected",
                check.missing.len(),
                check.duplicated.len(),
                self.mock.ledger().identifies_total,
                self.mock.ledger().resumes_total,
                self.mock.ledger().resumes_rejected_total,
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(500));
    }

    /// Once every event arrived: one identify per shard (every later session resumed), none
    /// too fast for its bucket, never two sessions live at once on one shard, nothing missing
    /// at the bot, and at most `duplicates_allowed` events twice. Returns how many came twice.
    fn assert_every_event_once(&self, duplicates_allowed: usize) -> usize {
        self.wait_for_every_event();
        let ledger = self.mock.ledger();
        assert_eq!(
            ledger.identifies_total,
            u64::from(SHARDS),
            "every later session resumed: {} resumes, {} rejected",
            ledger.resumes_total,
            ledger.resumes_rejected_total
        );
        assert_eq!(ledger.violations_of(ViolationKind::IdentifyTooFast), 0);
        assert_eq!(
            ledger.overlapping_sessions, 0,
            "two sessions live on one shard"
        );
        let check = ContentCheck::new(&self.mock.events(), &self.bot.content());
        assert!(check.missing.is_empty(), "{} missing", check.missing.len());
        assert!(
            check.duplicated.len() <= duplicates_allowed,
            "{} duplicated (at most {duplicates_allowed})",
            check.duplicated.len()
        );
        check.duplicated.len()
    }

    fn host(&self, id: &str) -> &Host {
        self.hosts.iter().find(|host| host.id == id).unwrap()
    }

    /// SIGTERM to one host; its exit status must be success.
    fn terminate(&mut self, id: &str) -> String {
        let index = self.hosts.iter().position(|host| host.id == id).unwrap();
        let mut host = self.hosts.remove(index);
        let (status, stderr) = host.engine.terminate();
        assert!(status.success(), "{id}: {status:?}: {stderr}");
        stderr
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.hosts.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Three hosts share six shards: each shard runs on exactly one host, each identified once and
/// never too fast for its bucket across hosts. One host stops (SIGTERM): its shards are resumed
/// by the others from the sessions it handed over, with no identify, and the bot gets every
/// event exactly once.
#[test]
fn three_hosts_share_the_shards_and_a_sigterm_hands_them_over_without_an_identify() {
    let mut fleet = Fleet::start("handover", &["alpha", "bravo", "charlie"]);
    fleet.wait_settled();
    let held = fleet.held();
    let per_host: BTreeMap<&str, usize> = held.values().fold(BTreeMap::new(), |mut map, host| {
        *map.entry(host.as_str()).or_default() += 1;
        map
    });
    assert_eq!(per_host.len(), 3, "every host runs shards: {held:?}");
    let ledger = fleet.mock.ledger();
    assert_eq!(
        ledger.identifies_total,
        u64::from(SHARDS),
        "one identify per shard"
    );
    assert_eq!(ledger.violations_of(ViolationKind::IdentifyTooFast), 0);
    let cluster = fleet.cluster(fleet.host("alpha"));
    assert_eq!(cluster["hosts"].as_array().unwrap().len(), 3);
    assert!(!cluster["assigner"].as_str().unwrap().is_empty());
    // The fleet's totals, from every host's counters as of its last beat.
    wait_until("the fleet's totals", Duration::from_secs(10), || {
        let totals = &fleet.cluster(fleet.host("charlie"))["fleet"];
        totals["shards_ready"] == u64::from(SHARDS) && totals["identifies"] == u64::from(SHARDS)
    });

    // The fleet's metrics: every family documented, and the fleet as the hosts see it.
    let (_, _, metrics) = http(fleet.host("alpha").admin, "GET", "/metrics", None, b"");
    let doc = include_str!("../../docs/admin-api.md");
    let families: Vec<&str> = metrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|line| line.split(' ').next())
        .filter(|name| name.starts_with("shardgate_fleet_"))
        .collect();
    assert!(families.len() >= 10, "{families:?}");
    for name in &families {
        assert!(
            doc.contains(&format!("`{name}`")),
            "{name} is not in docs/admin-api.md"
        );
    }
    let sample = |name: &str| {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name} ")))
            .and_then(|value| value.parse::<f64>().ok())
    };
    assert_eq!(sample("shardgate_fleet_hosts"), Some(3.0));
    assert_eq!(
        sample("shardgate_fleet_shards_leased"),
        Some(f64::from(SHARDS))
    );
    assert_eq!(sample("shardgate_fleet_redis_connected"), Some(1.0));

    // Commands sent to any host reach the shard's host: one for a shard of bravo's, sent to
    // alpha; a presence update for every shard of the fleet, sent to charlie.
    let (&bravos, _) = held
        .iter()
        .find(|(_, host)| host.as_str() == "bravo")
        .unwrap();
    let member_request = br#"{"op":8,"d":{"guild_id":"1","query":"a","limit":1}}"#;
    let (status, _, answer) = http(
        fleet.host("alpha").admin,
        "POST",
        &format!("/commands?shard_id={bravos}"),
        None,
        member_request,
    );
    assert_eq!(status, 202, "{answer}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(
        (answer["host"].as_str(), answer["queued"][0].as_u64()),
        (Some("bravo"), Some(u64::from(bravos)))
    );
    let presence = br#"{"op":3,"d":{"since":null,"activities":[],"status":"idle","afk":false}}"#;
    let (status, _, answer) = http(
        fleet.host("charlie").admin,
        "POST",
        "/commands?shard_id=all",
        None,
        presence,
    );
    assert_eq!(status, 202, "{answer}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    let mut queued: Vec<u64> = answer["queued"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_u64().unwrap())
        .collect();
    queued.sort_unstable();
    assert_eq!(
        queued,
        (0..u64::from(SHARDS)).collect::<Vec<_>>(),
        "{answer}"
    );
    wait_until("the commands at the mock", Duration::from_secs(10), || {
        let ledger = fleet.mock.ledger();
        ledger.shards[&bravos].commands_by_op.get(&8) == Some(&1)
            && (0..SHARDS).all(|shard| ledger.shards[&shard].commands_by_op.get(&3) == Some(&1))
    });

    // bravo leaves: its shards go to alpha and charlie, resumed.
    let leaving: BTreeSet<u32> = held
        .iter()
        .filter(|(_, host)| host.as_str() == "bravo")
        .map(|(shard, _)| *shard)
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    fleet.terminate("bravo");
    wait_until(
        "bravo's shards running elsewhere",
        Duration::from_secs(30),
        || {
            let held = fleet.held();
            held.len() == SHARDS as usize && leaving.iter().all(|shard| held[shard] != "bravo")
        },
    );
    fleet.assert_every_event_once(0);
    assert!(fleet.mock.ledger().resumes_total >= leaving.len() as u64);
    let _ = &fleet.redis;
}

/// A host killed with -9 hands nothing over: the others take its shards once its leases run
/// out and resume them from the sessions it stored (no identify). Nothing is lost; what the
/// bot acknowledged after the last save comes again, and the duplicates stay within that.
#[test]
fn a_killed_hosts_shards_are_resumed_elsewhere_after_its_leases_and_nothing_is_lost() {
    let mut fleet = Fleet::start("kill", &["alpha", "bravo", "charlie"]);
    fleet.wait_settled();
    let dead: BTreeSet<u32> = fleet
        .held()
        .iter()
        .filter(|(_, host)| host.as_str() == "charlie")
        .map(|(shard, _)| *shard)
        .collect();
    assert!(!dead.is_empty(), "charlie runs shards");
    std::thread::sleep(Duration::from_secs(2));
    let index = fleet
        .hosts
        .iter()
        .position(|host| host.id == "charlie")
        .unwrap();
    let mut charlie = fleet.hosts.remove(index);
    charlie.engine.0.kill().unwrap();
    charlie.engine.0.wait().unwrap();
    let killed = std::time::Instant::now();
    wait_until(
        "charlie's shards running elsewhere",
        Duration::from_secs(30),
        || {
            let held = fleet.held();
            held.len() == SHARDS as usize && dead.iter().all(|shard| held[shard] != "charlie")
        },
    );
    let failover = killed.elapsed();
    // The shard lease is 2 s: nobody may take them sooner.
    assert!(failover >= Duration::from_millis(1500), "{failover:?}");
    // At 100 events/s per shard, a save every 200 ms: what came since the last one, per shard.
    let duplicated = fleet.assert_every_event_once(dead.len() * 100);
    eprintln!(
        "kill -9: {} shards failed over in {failover:?}, {duplicated} duplicates",
        dead.len()
    );
}

/// A fourth host joins: it takes its share from the others by hand-over, and an operator's
/// move (asked on a host that is neither end of it) does the same: no identify, every event
/// exactly once.
#[test]
fn a_joining_host_and_a_manual_move_take_shards_by_hand_over() {
    let mut fleet = Fleet::start("join", &["alpha", "bravo", "charlie"]);
    fleet.wait_settled();
    std::thread::sleep(Duration::from_secs(1));
    // By rendezvous, "echo" wins one of the six shards (a "delta" would win none).
    fleet.add_host("echo");
    wait_until("echo runs its share", Duration::from_secs(30), || {
        let held = fleet.held();
        held.len() == SHARDS as usize && held.values().any(|host| host == "echo")
    });
    let held = fleet.held();
    let (&shard, from) = held
        .iter()
        .find(|(_, host)| host.as_str() != "bravo")
        .unwrap();
    let asked_on = fleet
        .hosts
        .iter()
        .find(|host| host.id != "bravo" && host.id != *from)
        .unwrap();
    let (status, _, answer) = http(
        asked_on.admin,
        "POST",
        &format!("/shards/{shard}/move?to=bravo"),
        None,
        b"",
    );
    assert_eq!(status, 202, "{answer}");
    let (status, _, answer) = http(
        asked_on.admin,
        "POST",
        &format!("/shards/{shard}/move?to=nobody"),
        None,
        b"",
    );
    assert_eq!(status, 409, "{answer}");
    let (status, _, answer) = http(asked_on.admin, "POST", "/reshard", None, b"");
    assert_eq!(status, 409, "{answer}");
    assert!(answer.contains("fleet does not reshard"), "{answer}");
    wait_until("the moved shard on bravo", Duration::from_secs(30), || {
        fleet.held().get(&shard).is_some_and(|host| host == "bravo")
    });
    fleet.assert_every_event_once(0);
}

/// Redis stops for 10 s and comes back empty (no persistence): every host keeps forwarding the
/// shards it holds (their leases' deadlines are 15 s out), takes its own shards back in the new
/// epoch, and nobody takes another's. No split brain (the mock never sees two sessions live at
/// once on one shard), no identify, nothing lost or twice.
#[test]
fn redis_stopped_for_ten_seconds_and_back_empty_costs_nothing() {
    let options = Options {
        host_lease_ms: 3000,
        shard_lease_ms: 15_000,
        events_per_shard: 3500,
    };
    let mut fleet = Fleet::start_with("redis-down", &["alpha", "bravo", "charlie"], options);
    fleet.wait_settled();
    let before = fleet.held();
    let epoch = fleet.cluster(&fleet.hosts[0])["epoch_ms"].clone();
    fleet.redis.stop();
    std::thread::sleep(Duration::from_secs(3));
    for host in &fleet.hosts {
        assert_eq!(fleet.cluster(host)["redis_connected"], false, "{}", host.id);
    }
    std::thread::sleep(Duration::from_secs(7));
    fleet.redis.restart();
    wait_until(
        "every host back on the new Redis",
        Duration::from_secs(30),
        || {
            fleet.hosts.iter().all(|host| {
                let cluster = fleet.cluster(host);
                cluster["redis_connected"] == true
                    && cluster["epoch_ms"] != epoch
                    && cluster["hosts"]
                        .as_array()
                        .is_some_and(|hosts| hosts.len() == 3)
                    && cluster["leases"]
                        .as_object()
                        .is_some_and(|l| l.len() == SHARDS as usize)
            })
        },
    );
    assert_eq!(fleet.held(), before, "every shard stayed where it ran");
    fleet.assert_every_event_once(0);
}

/// Redis hangs (frozen, nothing answers) for longer than a shard lease: every host stops its
/// shards at their leases' deadlines (closed with 4000, sessions kept), although its agent is
/// stuck waiting on Redis, so that no lease can pass to another host while a shard still runs.
/// When Redis answers again, the shards are taken again and resumed: no identify, no two live
/// sessions on one shard, nothing lost.
#[test]
fn a_hung_redis_stops_every_shard_before_its_lease_ends_and_they_resume_after() {
    let fleet = Fleet::start_with(
        "redis-hung",
        &["alpha", "bravo", "charlie"],
        Options {
            events_per_shard: 2500,
            ..Options::default()
        },
    );
    fleet.wait_settled();
    std::thread::sleep(Duration::from_secs(1));
    let sessions_before = fleet.mock.ledger().resumes_total;
    fleet.redis.freeze();
    // The shard lease is 2 s: by 3 s every shard has stopped, on every host.
    std::thread::sleep(Duration::from_secs(3));
    let lapsed: u64 = fleet
        .hosts
        .iter()
        .map(|host| {
            let (_, _, text) = http(host.admin, "GET", "/metrics", None, b"");
            text.lines()
                .find(|line| line.starts_with("shardgate_fleet_leases_total{event=\"lapsed\"}"))
                .and_then(|line| line.rsplit(' ').next())
                .and_then(|value| value.parse::<f64>().ok())
                .unwrap_or(0.0) as u64
        })
        .sum();
    assert_eq!(
        lapsed,
        u64::from(SHARDS),
        "every lease lapsed and its shard stopped"
    );
    fleet.redis.thaw();
    wait_until("every shard running again", Duration::from_secs(30), || {
        fleet.held().len() == SHARDS as usize
            && fleet.mock.ledger().resumes_total >= sessions_before + u64::from(SHARDS)
    });
    fleet.assert_every_event_once(usize::MAX);
}

/// A host pinned with `--shards` runs exactly those shards (still under leases) and the
/// assigner places only the others; when it stops, its shards go to the rest of the fleet by
/// hand-over rather than stay dark, and when it comes back they are handed back to it.
#[test]
fn a_pinned_host_runs_its_shards_lends_them_to_the_fleet_while_away_and_gets_them_back() {
    let mut fleet = Fleet::start("pinned", &[]);
    fleet.add_host_with("pinned", &["--shards", "4..=5"]);
    fleet.add_host("bravo");
    fleet.add_host("charlie");
    fleet.wait_settled();
    let held = fleet.held();
    for shard in 0..SHARDS {
        let pinned = held[&shard] == "pinned";
        assert_eq!(
            pinned,
            shard >= 4,
            "shard {shard} on {}: {held:?}",
            held[&shard]
        );
    }
    fleet.terminate("pinned");
    wait_until(
        "the pinned shards on the others",
        Duration::from_secs(30),
        || {
            let held = fleet.held();
            held.len() == SHARDS as usize && held.values().all(|host| host != "pinned")
        },
    );
    // Back: the others hand its shards back.
    fleet.add_host_with("pinned", &["--shards", "4..=5"]);
    wait_until(
        "the pinned shards back on their host",
        Duration::from_secs(30),
        || {
            let held = fleet.held();
            held.len() == SHARDS as usize
                && (0..SHARDS).all(|shard| (held[&shard] == "pinned") == (shard >= 4))
        },
    );
    fleet.assert_every_event_once(0);
}

/// A rolling restart: each host in turn stops (SIGTERM) and starts again with the same id. Its
/// shards go to the others and, by rendezvous, come back to it, each time by hand-over: the
/// whole restart costs no identify, and the bot gets every event exactly once.
#[test]
fn a_rolling_restart_of_every_host_keeps_every_session() {
    let mut fleet = Fleet::start_with(
        "rolling",
        &["alpha", "bravo", "charlie"],
        Options {
            events_per_shard: 3000,
            ..Options::default()
        },
    );
    fleet.wait_settled();
    let before = fleet.held();
    for id in ["alpha", "bravo", "charlie"] {
        fleet.terminate(id);
        wait_until(
            &format!("{id}'s shards elsewhere"),
            Duration::from_secs(30),
            || {
                let held = fleet.held();
                held.len() == SHARDS as usize && held.values().all(|host| host != id)
            },
        );
        fleet.add_host(id);
        fleet.wait_settled();
    }
    assert_eq!(fleet.held(), before, "every host got its shards back");
    fleet.assert_every_event_once(0);
}
