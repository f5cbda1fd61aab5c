//! Resharding with the real binary against the mock gateway over TLS, under steady traffic: the
//! mock sends every event of a guild to every connected session that covers it (each with its
//! own `s`), so during a reshard both shard sets receive every event. Each test checks, by
//! content (the fake bot hashes `t` and the raw `d` of what it receives, the mock lists every
//! event it made with the same hash), that the bot got every event once and in order per guild,
//! and the ledger that the mock saw no protocol violation.
//!
//! Scenarios: the automatic trigger at the fill level (4 → 8 shards) in every compression mode, a
//! manual reshard, one refused for the identify budget, one aborted (the output is that of a
//! run without a reshard), and SIGTERM and kill -9 in the overlap (no loss after the restart).

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Engine, LOG_WARN_AND_ADMIN, http, wait_until};
use fake_bot::{BotConfig, FakeBot};
use mock_gateway::delivery::ContentCheck;
use mock_gateway::{EventRecord, MockConfig, MockGateway};
use serde_json::{Value, json};

/// Identify windows of the mock (and the engine's limiter): short, so a reshard takes seconds.
const IDENTIFY_WINDOW_MS: u64 = 200;

struct World {
    dir: PathBuf,
    mock: MockGateway,
    bot: FakeBot,
    engine: Option<Engine>,
    admin: SocketAddr,
    compression: &'static str,
    shards: u32,
    events_per_shard: u64,
    extra: Vec<String>,
}

struct Setup {
    name: &'static str,
    compression: &'static str,
    shards: u32,
    guilds: usize,
    max_concurrency: u32,
    events_per_shard: u64,
    session_start_remaining: Option<u32>,
    /// The mock's limit; past it a session is closed with 4011.
    max_guilds_per_shard: usize,
    /// More engine flags.
    extra: &'static [&'static str],
}

impl Setup {
    fn new(name: &'static str) -> Setup {
        Setup {
            name,
            compression: "zstd-stream",
            shards: 4,
            guilds: 16,
            max_concurrency: 8,
            events_per_shard: 4500,
            session_start_remaining: None,
            max_guilds_per_shard: 2500,
            extra: &[],
        }
    }
}

impl World {
    fn start(setup: Setup) -> World {
        let dir = std::env::temp_dir().join(format!(
            "shardgate-reshard-{}-{}",
            setup.name,
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mock = MockGateway::spawn(
            MockConfig {
                tls: true,
                ca_out: Some(dir.join("ca.pem")),
                seed: Some(41),
                guilds: setup.guilds,
                max_concurrency: setup.max_concurrency,
                identify_window_ms: IDENTIFY_WINDOW_MS,
                session_start_remaining: setup.session_start_remaining,
                max_guilds_per_shard: setup.max_guilds_per_shard,
                rate: 150.0,
                events_per_shard: setup.events_per_shard,
                heartbeat_interval_ms: 2000,
                guild_create_bytes: 1500,
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
        let mut world = World {
            dir,
            mock,
            bot,
            engine: None,
            // Set by each start.
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            compression: setup.compression,
            shards: setup.shards,
            events_per_shard: setup.events_per_shard,
            extra: setup.extra.iter().map(|s| (*s).to_owned()).collect(),
        };
        world.start_engine();
        world
    }

    /// `shardgate run` on this world's data dir (again after a stop); its admin API on a port it
    /// picks, noted in `admin`.
    fn start_engine(&mut self) {
        let mut command = Command::new(env!("CARGO_BIN_EXE_shardgate"));
        command
            .args(["run", "--api-base", &self.mock.api_base()])
            .args(["--ca-file", self.dir.join("ca.pem").to_str().unwrap()])
            .args(["--forward-url", &self.bot.url()])
            .args(["--total-shards", &self.shards.to_string(), "--cores", "2"])
            .args(["--compression", self.compression])
            .args(["--data-dir", self.dir.to_str().unwrap()])
            .args(["--log", LOG_WARN_AND_ADMIN])
            .args(["--identify-interval-ms", &IDENTIFY_WINDOW_MS.to_string()])
            .args([
                "--reshard-guilds-per-shard",
                "10",
                "--reshard-cooldown",
                "0",
            ])
            .args(&self.extra)
            .env("DISCORD_TOKEN", self.mock.token())
            .stdout(Stdio::null());
        let (engine, admin) = Engine::spawn_with_admin(&mut command);
        self.engine = Some(engine);
        self.admin = admin;
        wait_until("the admin API", Duration::from_secs(30), || {
            std::net::TcpStream::connect(admin).is_ok()
        });
    }

    fn call(&self, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
        let (status, _, answer) = http(self.admin, method, path, None, body);
        (status, serde_json::from_str(&answer).unwrap_or(Value::Null))
    }

    fn reshard(&self) -> Value {
        self.call("GET", "/reshard", b"").1
    }

    fn wait_ready(&self) {
        wait_until("every live shard ready", Duration::from_secs(60), || {
            self.call("GET", "/readyz", b"").0 == 200
        });
    }

    /// Waits for the current reshard's phase, or for none to run (`None`).
    fn wait_phase(&self, phase: Option<&str>, timeout: Duration) {
        wait_until(&format!("reshard phase {phase:?}"), timeout, || {
            let state = self.reshard();
            match phase {
                Some(phase) => state["current"]["phase"] == phase,
                None => state["current"].is_null(),
            }
        });
    }

    /// Waits until the bot has at least every event the mock made (all of it, once the
    /// timelines ran out), then a little more for anything extra to show.
    fn wait_for_every_event(&self) {
        self.wait_for_events(|| self.mock.events());
    }

    /// Waits until the world made all its steady events and the bot has every event of `owed`
    /// (read again each time).
    fn wait_for_events(&self, owed: impl Fn() -> Vec<EventRecord>) {
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        loop {
            let events = owed();
            let steady = self
                .mock
                .events()
                .iter()
                .filter(|e| !matches!(e.t.as_str(), "GUILD_CREATE" | "GUILD_DELETE"))
                .count();
            let check = ContentCheck::new(&events, &self.bot.content());
            if steady >= self.expected_total() && check.missing.is_empty() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for every event at the bot: {steady} of {} steady events \
                 made, {} missing ({:?}), {} duplicated, {} unknown; reshard {}; ledger: {} \
                 identifies, {} resumes, {} rejected; sessions {:?}",
                self.expected_total(),
                check.missing.len(),
                describe(&events, &check.missing),
                check.duplicated.len(),
                check.unknown.len(),
                self.reshard(),
                self.mock.ledger().identifies_total,
                self.mock.ledger().resumes_total,
                self.mock.ledger().resumes_rejected_total,
                self.mock
                    .ledger()
                    .shards
                    .iter()
                    .map(|(id, shard)| (
                        *id,
                        shard
                            .sessions
                            .iter()
                            .map(|s| (s.total_shards, s.first_seq, s.last_seq, s.ended.clone()))
                            .collect::<Vec<_>>()
                    ))
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(500));
    }

    /// The world's events split into those some session received and those none did (a guild
    /// joined as its shard was closed).
    fn reached_events(&self) -> (Vec<EventRecord>, Vec<EventRecord>) {
        let received: HashSet<u64> = self
            .mock
            .ledger()
            .shards
            .values()
            .flat_map(|shard| &shard.sessions)
            .flat_map(|session| session.event_ids().map(|(_, id)| id))
            .collect();
        self.mock
            .events()
            .into_iter()
            .partition(|event| received.contains(&event.id))
    }

    /// The steady events the world makes in all: the stream's cap for each partition (the
    /// shard count of the first set).
    fn expected_total(&self) -> usize {
        self.shards as usize * self.events_per_shard as usize
    }

    fn terminate(&mut self) -> String {
        let mut engine = self.engine.take().unwrap();
        let (status, stderr) = engine.terminate();
        assert!(status.success(), "{status:?}: {stderr}");
        stderr
    }

    fn kill(&mut self) {
        let mut engine = self.engine.take().unwrap();
        engine.0.kill().unwrap();
        engine.0.wait().unwrap();
    }

    fn saved_sessions(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.dir.join("sessions.json")).unwrap()).unwrap()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The bot's content hashes against the mock's events ([`ContentCheck`]), with a message.
trait Exactly {
    fn assert_exactly_once(&self, context: &str);
}

impl Exactly for ContentCheck {
    fn assert_exactly_once(&self, context: &str) {
        assert!(
            self.is_exactly_once(),
            "{context}: {} missing, {} duplicated, {} unknown, out of order in guilds {:?}",
            self.missing.len(),
            self.duplicated.len(),
            self.unknown.len(),
            self.out_of_order
        );
    }
}

/// A guild's events as the bot received them: (event id, t, shard, sequence), for a failure
/// message about their order.
fn guild_trace(
    events: &[EventRecord],
    received: &[fake_bot::batch::ContentRecord],
    guild: u64,
) -> Vec<(u64, String, u32, u64)> {
    let by_hash: std::collections::HashMap<u64, &EventRecord> = events
        .iter()
        .filter(|event| event.guild_id == Some(guild))
        .map(|event| (event.hash, event))
        .collect();
    received
        .iter()
        .filter_map(|record| {
            let event = by_hash.get(&record.hash)?;
            Some((event.id, event.t.clone(), record.shard_id, record.seq))
        })
        .collect()
}

/// The first few events with these hashes: (id, guild, t), for a failure message.
fn describe(events: &[EventRecord], hashes: &[u64]) -> Vec<(u64, Option<u64>, String)> {
    events
        .iter()
        .filter(|event| hashes.contains(&event.hash))
        .take(5)
        .map(|event| (event.id, event.guild_id, event.t.clone()))
        .collect()
}

fn notices(bot: &FakeBot, name: &str) -> u64 {
    bot.report().totals.notices.get(name).copied().unwrap_or(0)
}

/// Guilds grow until the fullest shard reaches 80 % of 10 guilds: 4 → 8 shards, every event
/// once across the switch.
fn automatic(compression: &'static str, name: &'static str) {
    let mut world = World::start(Setup {
        compression,
        ..Setup::new(name)
    });
    world.wait_ready();
    assert_eq!(world.reshard()["phase"], "stable");
    std::thread::sleep(Duration::from_millis(500));
    // 32 guilds on 4 shards: the fullest holds at least 8 (80 % of 10). The target brings the
    // average to 4 (half the fill level): 8 shards, a multiple of max_concurrency 8.
    world.mock.set_guild_count(32);
    wait_until("the reshard to start", Duration::from_secs(20), || {
        !world.reshard()["current"].is_null() || !world.reshard()["last"].is_null()
    });
    world.wait_phase(None, Duration::from_secs(60));
    let state = world.reshard();
    assert_eq!(state["last"]["outcome"], "finished", "{state}");
    assert_eq!(
        (state["last"]["from"].as_u64(), state["last"]["to"].as_u64()),
        (Some(4), Some(8))
    );
    assert_eq!(state["live_shards"], json!(8));
    world.wait_for_every_event();
    let check = ContentCheck::new(&world.mock.events(), &world.bot.content());
    check.assert_exactly_once(compression);
    assert_eq!(notices(&world.bot, "RESHARD_STARTED"), 1);
    assert_eq!(notices(&world.bot, "RESHARD_FINISHED"), 1);
    let ledger = world.mock.ledger();
    assert!(ledger.violations.is_empty(), "{:?}", ledger.violations);
    assert_eq!(ledger.identifies_total, 4 + 8, "identifies = old + new");
    let stderr = world.terminate();
    let saved = world.saved_sessions();
    assert_eq!(saved["total_shards"], json!(8), "{stderr}");
    assert_eq!(saved["resharded_from"], json!(4));
}

#[test]
fn automatic_reshard_at_the_fill_level_zstd_stream() {
    automatic("zstd-stream", "auto-zstd");
}

#[test]
fn automatic_reshard_at_the_fill_level_zlib_stream() {
    automatic("zlib-stream", "auto-zlib");
}

#[test]
fn automatic_reshard_at_the_fill_level_payload() {
    automatic("payload", "auto-payload");
}

#[test]
fn automatic_reshard_at_the_fill_level_none() {
    automatic("none", "auto-none");
}

/// `POST /reshard` with a count; the restart that follows runs that count.
#[test]
fn a_manual_reshard_switches_and_a_restart_keeps_its_count() {
    let mut world = World::start(Setup {
        extra: &["--reshard", "off"],
        ..Setup::new("manual")
    });
    world.wait_ready();
    let (status, answer) = world.call("POST", "/reshard", br#"{"total_shards": 6}"#);
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["current"]["to"], json!(6), "{answer}");
    let (status, answer) = world.call("POST", "/reshard", b"");
    assert_eq!(status, 409, "one at a time: {answer}");
    // The bot asks for guild members all through the switch: each request goes to the set that
    // owns the guild then, and each answer reaches the bot once, also one that comes after its
    // shard handed over.
    let guilds: Vec<u64> = {
        let mut guilds: Vec<u64> = world
            .mock
            .events()
            .iter()
            .filter_map(|e| e.guild_id)
            .collect();
        guilds.sort_unstable();
        guilds.dedup();
        guilds
    };
    assert!(!guilds.is_empty());
    let done = std::sync::atomic::AtomicBool::new(false);
    let requests = std::thread::scope(|scope| {
        let asking = scope.spawn(|| {
            let mut queued = 0;
            for guild in guilds.iter().cycle() {
                if done.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let body =
                    format!(r#"{{"op":8,"d":{{"guild_id":"{guild}","query":"a","limit":1}}}}"#);
                let (status, _, answer) =
                    http(world.admin, "POST", "/commands", None, body.as_bytes());
                assert_eq!(status, 202, "{answer}");
                queued += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            queued
        });
        world.wait_phase(None, Duration::from_secs(60));
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        asking.join().unwrap()
    });
    assert_eq!(world.reshard()["last"]["outcome"], "finished");
    let answers = |by_type: &std::collections::BTreeMap<String, u64>| {
        ["GUILD_MEMBERS_CHUNK", "RATE_LIMITED"]
            .iter()
            .map(|name| by_type.get(*name).copied().unwrap_or(0))
            .sum::<u64>()
    };
    wait_until("every answer at the bot", Duration::from_secs(20), || {
        let sent: u64 = world
            .mock
            .ledger()
            .shards
            .values()
            .flat_map(|shard| &shard.sessions)
            .map(|session| answers(&session.by_type))
            .sum();
        let received: u64 = world
            .bot
            .report()
            .shards
            .values()
            .map(|shard| answers(&shard.by_type))
            .sum();
        assert!(
            received <= sent,
            "{received} answers at the bot, {sent} sent"
        );
        sent == requests && received == sent
    });
    world.terminate();
    // Restarted with the same --total-shards 4: the reshard stands.
    world.start_engine();
    world.wait_ready();
    assert_eq!(world.reshard()["live_shards"], json!(6));
    world.wait_for_every_event();
    ContentCheck::new(&world.mock.events(), &world.bot.content()).assert_exactly_once("manual");
    let ledger = world.mock.ledger();
    assert!(ledger.violations.is_empty(), "{:?}", ledger.violations);
    assert_eq!(
        ledger.resumes_rejected_total, 0,
        "the restart resumed the new set"
    );
}

/// The daily identify budget cannot cover the new set and the reserve: refused, with the figures.
#[test]
fn a_reshard_the_budget_cannot_cover_is_refused() {
    let world = World::start(Setup {
        session_start_remaining: Some(4 + 8),
        extra: &["--reshard", "off"],
        ..Setup::new("refused")
    });
    world.wait_ready();
    let (status, answer) = world.call("POST", "/reshard", br#"{"total_shards": 8}"#);
    assert_eq!(status, 422, "{answer}");
    let reason = answer["error"].as_str().unwrap();
    assert!(reason.contains("remaining is 8"), "{reason}");
    assert_eq!(world.reshard()["last_refusal"]["reason"], reason);
    assert_eq!(world.mock.ledger().identifies_total, 4);
}

/// `DELETE /reshard` while the new set warms: it closes, and the bot's stream is the one a run
/// without a reshard gives.
#[test]
fn an_aborted_reshard_leaves_the_stream_as_without_one() {
    let world = World::start(Setup {
        max_concurrency: 1,
        extra: &["--reshard", "off"],
        ..Setup::new("aborted")
    });
    world.wait_ready();
    let (status, answer) = world.call("POST", "/reshard", br#"{"total_shards": 8}"#);
    assert_eq!(status, 202, "{answer}");
    // One identify per round (max_concurrency 1): warming takes a while.
    wait_until("a new shard identified", Duration::from_secs(20), || {
        world.reshard()["current"]["new_shards"]["started"].as_u64() >= Some(2)
    });
    // Progress shard by shard: the ones started, in order, each with its state.
    let current = world.reshard()["current"].clone();
    let shards = current["new_shards"]["shards"].as_array().expect("a list");
    assert!(shards.len() >= 2, "{current}");
    for (index, shard) in shards.iter().enumerate() {
        assert_eq!(shard["shard_id"], json!(index), "{current}");
        assert!(shard["state"].is_string(), "{current}");
    }
    let (status, answer) = world.call("DELETE", "/reshard", b"");
    assert_eq!(status, 202, "{answer}");
    let state = world.reshard();
    assert_eq!(state["last"]["outcome"], "aborted", "{state}");
    assert_eq!(state["live_shards"], json!(4));
    world.wait_for_every_event();
    ContentCheck::new(&world.mock.events(), &world.bot.content()).assert_exactly_once("aborted");
    assert_eq!(notices(&world.bot, "RESHARD_FINISHED"), 0);
    let ledger = world.mock.ledger();
    assert!(ledger.violations.is_empty(), "{:?}", ledger.violations);
}

/// SIGTERM while both sets run: the restart resumes the live set whole, nothing is lost.
#[test]
fn sigterm_in_the_overlap_resumes_one_whole_set() {
    let mut world = World::start(Setup {
        extra: &["--reshard", "off"],
        ..Setup::new("sigterm")
    });
    world.wait_ready();
    let (status, answer) = world.call("POST", "/reshard", br#"{"total_shards": 8}"#);
    assert_eq!(status, 202, "{answer}");
    world.wait_phase(Some("overlap"), Duration::from_secs(30));
    world.terminate();
    let saved = world.saved_sessions();
    assert_eq!(
        saved["total_shards"],
        json!(4),
        "the live set is the saved one"
    );
    world.start_engine();
    world.wait_ready();
    assert_eq!(world.reshard()["live_shards"], json!(4));
    world.wait_for_every_event();
    let check = ContentCheck::new(&world.mock.events(), &world.bot.content());
    assert!(check.missing.is_empty(), "{} lost", check.missing.len());
    assert!(check.unknown.is_empty());
    let ledger = world.mock.ledger();
    assert!(ledger.violations.is_empty(), "{:?}", ledger.violations);
}

/// kill -9 while both sets run: the restart resumes the saved set, nothing is lost.
#[test]
fn kill_9_in_the_overlap_loses_nothing() {
    let mut world = World::start(Setup {
        extra: &["--reshard", "off"],
        ..Setup::new("kill9")
    });
    world.wait_ready();
    let (status, answer) = world.call("POST", "/reshard", br#"{"total_shards": 8}"#);
    assert_eq!(status, 202, "{answer}");
    world.wait_phase(Some("overlap"), Duration::from_secs(30));
    world.kill();
    world.start_engine();
    world.wait_ready();
    world.wait_for_every_event();
    let check = ContentCheck::new(&world.mock.events(), &world.bot.content());
    assert!(check.missing.is_empty(), "{} lost", check.missing.len());
    assert!(check.unknown.is_empty());
    let ledger = world.mock.ledger();
    assert!(ledger.violations.is_empty(), "{:?}", ledger.violations);
}

/// Discord closes the shards that grew past the guilds a shard may hold with 4011: the engine
/// reshards at once (the fill level alone would not have), the closed shards' guilds come back
/// on the new set, and the process does not count them as fatal.
#[test]
fn a_4011_triggers_a_reshard_and_the_closed_shards_guilds_come_back() {
    let mut world = World::start(Setup {
        // The fill level is 10 guilds: only Discord's limit of 7 is passed.
        extra: &["--reshard-at-percent", "100"],
        max_guilds_per_shard: 7,
        ..Setup::new("sharding-required")
    });
    world.wait_ready();
    world.mock.set_guild_count(28);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while world.reshard()["last"]["outcome"] != "finished" {
        assert!(
            std::time::Instant::now() < deadline,
            "no reshard after the 4011s: {}",
            world.reshard()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let ledger = world.mock.ledger();
    let closed: HashSet<u64> = ledger
        .shards
        .iter()
        .filter(|(_, shard)| {
            shard
                .sessions
                .iter()
                .any(|session| session.ended.as_deref() == Some("close_4011"))
        })
        .map(|(&shard_id, _)| u64::from(shard_id))
        .collect();
    assert!(!closed.is_empty(), "the mock closed no shard with 4011");
    assert_eq!(world.reshard()["live_shards"], json!(8));
    world.wait_for_events(|| world.reached_events().0);
    // A guild that joined as its shard was closed reached no session (Discord would not
    // deliver it either): the bot learns of it from the new set's backfill, forwarded because
    // the live shard that covered it is gone.
    let (owed, unreached) = world.reached_events();
    // Events of its guilds made before the new set's shard came up reached no session either:
    // Discord loses those too, and no client can have them.
    for event in &unreached {
        let shard_id = event.guild_id.map_or(0, |guild_id| (guild_id >> 22) % 4);
        assert!(closed.contains(&shard_id), "{event:?} reached no session");
    }
    // Usually some guilds join while their shard is closed; on a slow or busy machine the new
    // set can come up before the mock adds them, and then every join reached a session (the
    // exactly-once check below covers them).
    let joins: Vec<_> = unreached.iter().filter(|e| e.t == "GUILD_CREATE").collect();
    if joins.is_empty() {
        eprintln!("every join reached a session: the backfill of closed shards was not needed");
    }
    let backfill: HashSet<u64> = world.bot.backfill_guilds().into_iter().collect();
    for event in joins {
        let guild_id = event.guild_id.expect("a join has a guild");
        assert!(
            backfill.contains(&guild_id),
            "the bot never got guild {guild_id}, joined while its shard was closed"
        );
    }
    let check = ContentCheck::new(&owed, &world.bot.content());
    if let Some(&guild) = check.out_of_order.first() {
        panic!(
            "guild {guild} out of order: {:?}",
            guild_trace(&owed, &world.bot.content_records(), guild)
        );
    }
    check.assert_exactly_once("after 4011");
    let ledger = world.mock.ledger();
    assert!(ledger.violations.is_empty(), "{:?}", ledger.violations);
    let stderr = world.terminate();
    assert!(!stderr.contains("stopped on close code"), "{stderr}");
}
