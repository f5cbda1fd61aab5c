//! The real `shardgate` binary between the mock gateway (over TLS, trusted with `--ca-file`)
//! and the fake bot, several shards on 2 cores, in every compression mode: every dispatch in
//! the mock's ledger reaches the bot exactly once and in order per shard, except the
//! redundant MESSAGE_UPDATEs, which never arrive (while real edits do); SIGTERM closes every
//! shard resumably (4000) and exits 0.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Engine, engine_command, expected, wait_until};
use fake_bot::{BotConfig, FakeBot, Secret};
use mock_gateway::{Ledger, MockConfig, MockGateway};

const SHARDS: u32 = 4;
const EVENTS_PER_SHARD: u64 = 400;
const SECRET: &str = "forward-s3cret";

fn spawn_engine(
    mock: &MockGateway,
    bot: &FakeBot,
    compression: &str,
    dir: &std::path::Path,
) -> Engine {
    let child = engine_command(mock, bot, dir)
        .args(["--total-shards", &SHARDS.to_string(), "--cores", "2"])
        .args(["--compression", compression])
        .env("FORWARD_SECRET", SECRET)
        .spawn()
        .unwrap();
    Engine::new(child)
}

fn run(compression: &str) {
    let dir = std::env::temp_dir().join(format!(
        "shardgate-e2e-{compression}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let mock = MockGateway::spawn(
        MockConfig {
            tls: true,
            ca_out: Some(dir.join("ca.pem")),
            seed: Some(7),
            guilds: 24,
            max_concurrency: 16,
            rate: 200.0,
            events_per_shard: EVENTS_PER_SHARD,
            guild_create_bytes: 4000,
            heartbeat_interval_ms: 2000,
            ..MockConfig::default()
        },
        1,
    )
    .unwrap();
    let bot = FakeBot::spawn(BotConfig {
        secret: Some(Secret::new(SECRET)),
        ..BotConfig::ephemeral()
    })
    .unwrap();
    let mut engine = spawn_engine(&mock, &bot, compression, &dir);

    // The stream ends after EVENTS_PER_SHARD; wait until the bot has everything expected.
    wait_until(
        "every shard's stream to reach the bot",
        Duration::from_secs(60),
        || {
            let ledger = mock.ledger();
            let report = bot.report();
            (0..SHARDS).all(|shard| {
                let Some(session) = ledger.shards.get(&shard).and_then(|s| s.sessions.first())
                else {
                    return false;
                };
                let sent_all = session.steady_dispatches() >= EVENTS_PER_SHARD;
                let want = expected(&ledger, shard);
                sent_all
                    && report.shards.get(&shard).is_some_and(|r| {
                        r.runs.iter().map(|run| run.received).sum::<u64>() >= want.len() as u64
                    })
            })
        },
    );

    let ledger = mock.ledger();
    let report = bot.report();
    assert!(ledger.violations.is_empty(), "{:#?}", ledger.violations);
    let mut redundant_total = 0;
    for shard in 0..SHARDS {
        let want = expected(&ledger, shard);
        let got = &report.shards[&shard];
        assert_eq!(got.runs.len(), 1, "shard {shard}: one session");
        let run = &got.runs[0];
        assert_eq!((got.duplicates, got.out_of_order), (0, 0), "shard {shard}");
        let received: BTreeSet<u64> = run
            .ranges
            .iter()
            .flat_map(|[start, end]| *start..=*end)
            .collect();
        assert_eq!(
            received, want,
            "shard {shard}: exactly the non-redundant dispatches"
        );
        let session = &ledger.shards[&shard].sessions[0];
        redundant_total += session.redundant_update_seqs.len();
        // Real edits arrive: MESSAGE_UPDATEs sent minus redundant ones.
        let updates_sent = session.by_type.get("MESSAGE_UPDATE").copied().unwrap_or(0);
        let updates_got = got.by_type.get("MESSAGE_UPDATE").copied().unwrap_or(0);
        assert_eq!(
            updates_got,
            updates_sent - session.redundant_update_seqs.len() as u64
        );
        assert_eq!(got.notices.get("SHARD_READY"), Some(&1), "shard {shard}");
        assert_eq!(ledger.shards[&shard].identifies, 1);
    }
    assert!(redundant_total > 0, "the mix must exercise the dedup");
    assert_eq!(report.totals.notices.get("ALL_SHARDS_READY"), Some(&1));

    // SIGTERM: every shard closes with 4000 (session kept), exit 0.
    let (status, stderr) = engine.terminate();
    assert!(status.success(), "exit {status:?}: {stderr}");
    wait_until("the mock to see the closes", Duration::from_secs(5), || {
        let ledger = mock.ledger();
        (0..SHARDS).all(|s| ledger.shards[&s].client_closes.get("4000") == Some(&1))
    });
    let ledger = mock.ledger();
    for shard in 0..SHARDS {
        assert_eq!(
            ledger.shards[&shard].sessions[0].ended, None,
            "shard {shard} stays resumable"
        );
    }
    assert!(
        !stderr.contains(mock.token()) && !stderr.contains(SECRET),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn zstd_stream_over_tls() {
    run("zstd-stream");
}

#[test]
fn zlib_stream_over_tls() {
    run("zlib-stream");
}

#[test]
fn payload_compression_over_tls() {
    run("payload");
}

#[test]
fn no_compression_over_tls() {
    run("none");
}

/// Seeded faults on every shard (op 7, op 9 both kinds, every reconnectable close code, TCP
/// drops, zombies, corrupt frames, server heartbeat requests): every session's dispatches
/// reach the bot exactly once and in order (minus redundant updates), and the ledger shows
/// no identify, send or zombie violation. A failure prints the seed; the same seed replays it.
#[test]
fn seeded_faults_lose_nothing() {
    let seed = std::env::var("SHARDGATE_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261121);
    let dir = std::env::temp_dir().join(format!("shardgate-e2e-faults-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mock = MockGateway::spawn(
        MockConfig {
            tls: true,
            ca_out: Some(dir.join("ca.pem")),
            seed: Some(seed),
            guilds: 24,
            max_concurrency: 16,
            identify_window_ms: 5000,
            rate: 250.0,
            events_per_shard: 900,
            guild_create_bytes: 2000,
            heartbeat_interval_ms: 1000,
            fault_warmup_dispatches: 20,
            fault_reconnect: 0.004,
            fault_invalid_session_resumable: 0.003,
            fault_invalid_session: 0.002,
            fault_close: 0.004,
            fault_drop: 0.003,
            fault_zombie: 0.002,
            fault_corrupt: 0.003,
            fault_server_heartbeat: 0.004,
            ..MockConfig::default()
        },
        1,
    )
    .unwrap();
    let bot = FakeBot::spawn(BotConfig {
        secret: Some(Secret::new(SECRET)),
        ..BotConfig::ephemeral()
    })
    .unwrap();
    let mut engine = spawn_engine(&mock, &bot, "zstd-stream", &dir);
    let done = |ledger: &Ledger, report: &fake_bot::Report| {
        (0..SHARDS).all(|shard| {
            let Some(shard_ledger) = ledger.shards.get(&shard) else {
                return false;
            };
            let sent: u64 = shard_ledger
                .sessions
                .iter()
                .map(mock_gateway::SessionLedger::steady_dispatches)
                .sum();
            let want: usize = shard_ledger
                .sessions
                .iter()
                .map(|s| s.expected_seqs().len())
                .sum();
            let got: usize = report
                .shards
                .get(&shard)
                .map_or(0, |r| r.runs.iter().map(|run| run.seqs().len()).sum());
            sent >= 900 && got >= want
        })
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done(&mock.ledger(), &bot.report()) {
        assert!(
            Instant::now() < deadline,
            "seed {seed}: not everything arrived: {:#?}",
            bot.report().totals
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let ledger = mock.ledger();
    let report = bot.report();
    assert!(
        ledger.violations.is_empty(),
        "seed {seed}: {:#?}",
        ledger.violations
    );
    let faults: u64 = ledger.shards.values().flat_map(|s| s.faults.values()).sum();
    assert!(faults >= 8, "seed {seed}: only {faults} faults fired");
    let mut by_kind = std::collections::BTreeMap::<&str, u64>::new();
    for (kind, count) in ledger.shards.values().flat_map(|s| s.faults.iter()) {
        *by_kind.entry(kind.as_str()).or_default() += count;
    }
    eprintln!(
        "seed {seed}: faults {by_kind:?}, identifies {}, resumes {}",
        ledger.identifies_total, ledger.resumes_total
    );
    for shard in 0..SHARDS {
        let sessions = &ledger.shards[&shard].sessions;
        let runs = &report.shards[&shard].runs;
        // The bot tells sessions apart by READY's session_id; match them up.
        for session in sessions.iter().filter(|s| s.dispatches > 0) {
            let run = runs
                .iter()
                .find(|run| run.session_id.as_deref() == Some(session.session_id.as_str()))
                .unwrap_or_else(|| {
                    panic!(
                        "seed {seed}: shard {shard} session {} never reached the bot",
                        session.session_id
                    )
                });
            assert_eq!(
                run.seqs(),
                session.expected_seqs(),
                "seed {seed}: shard {shard} session {}",
                session.session_id
            );
            assert_eq!(
                (run.duplicates, run.out_of_order),
                (0, 0),
                "seed {seed}: shard {shard}"
            );
        }
    }
    let (status, stderr) = engine.terminate();
    assert!(status.success(), "seed {seed}: exit {status:?}: {stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A 4004 (authentication failed) stops every shard with a clear error; nothing reconnects.
#[test]
fn authentication_failure_stops_with_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("shardgate-e2e-4004-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mock = MockGateway::spawn(
        MockConfig {
            tls: true,
            ca_out: Some(dir.join("ca.pem")),
            guilds: 4,
            max_concurrency: 16,
            ..MockConfig::default()
        },
        1,
    )
    .unwrap();
    let bot = FakeBot::spawn(BotConfig::ephemeral()).unwrap();
    // /gateway/bot gets the right token; the shards are given the gateway URL directly and a
    // wrong token, so IDENTIFY is what fails.
    let child = Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .args([
            "run",
            "--gateway-url",
            mock.ws_url(),
            "--total-shards",
            "2",
            "--cores",
            "1",
        ])
        .args([
            "--forward-url",
            &bot.url(),
            "--ca-file",
            dir.join("ca.pem").to_str().unwrap(),
        ])
        .args(["--data-dir", dir.to_str().unwrap(), "--log", "error"])
        .args(["--admin-addr", "127.0.0.1:0"])
        .env("DISCORD_TOKEN", "not-the-token")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut engine = Engine::new(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = engine.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "shardgate kept running after 4004"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(engine.0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("fatal close code") && stderr.contains("4004"),
        "{stderr}"
    );
    // The log line and the last line say what 4004 means and what to change.
    let explanation = shardgate::shard::fatal_close_explanation(4004).unwrap();
    assert!(
        stderr.lines().any(|line| line.contains("fatal close code")
            && line.contains(&format!("cause={explanation}"))),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "shardgate: 2 shards stopped on close code 4004, {explanation}; Discord does not let \
             these shards reconnect (see docs/troubleshooting.md)"
        )),
        "{stderr}"
    );
    assert!(explanation.contains("DISCORD_TOKEN or --token"));
    assert!(!stderr.contains("not-the-token"), "{stderr}");
    let ledger = mock.ledger();
    // One identify attempt per shard, never retried.
    assert_eq!(
        ledger
            .violations
            .iter()
            .filter(|v| v.close_code == Some(4004))
            .count(),
        2
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The identify limiter against the mock's buckets: with max_concurrency 1 and 4, every shard
/// identifies once and the ledger shows no IdentifyTooFast. The startup time is printed next
/// to the floor the buckets allow (not asserted: the machine is shared).
#[test]
fn identify_buckets_are_respected() {
    for (max_concurrency, shards) in [(1u32, 4u32), (4, 8)] {
        let dir = std::env::temp_dir().join(format!(
            "shardgate-e2e-identify-{max_concurrency}-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mock = MockGateway::spawn(
            MockConfig {
                tls: true,
                ca_out: Some(dir.join("ca.pem")),
                guilds: 16,
                max_concurrency,
                identify_window_ms: 5000,
                rate: 5.0,
                guild_create_bytes: 0,
                ..MockConfig::default()
            },
            1,
        )
        .unwrap();
        let bot = FakeBot::spawn(BotConfig::ephemeral()).unwrap();
        let started = Instant::now();
        let admin = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let child = common::command_without_admin(&mock, &bot, &dir)
            .args(["--data-dir", dir.to_str().unwrap(), "--log", "warn"])
            .args(["--admin-addr", &admin.to_string()])
            .args(["--total-shards", &shards.to_string(), "--cores", "2"])
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut engine = Engine::new(child);
        wait_until(
            "the first shard to be ready",
            Duration::from_secs(30),
            || bot.report().totals.notices.contains_key("SHARD_READY"),
        );
        // Sockets open shortly before their bucket's slot, not all at once: with one bucket,
        // the last shard's slot is 5 s × (shards − 1) away.
        let connects = connects_total(admin);
        if max_concurrency == 1 {
            assert!(
                connects < u64::from(shards),
                "{connects} sockets opened at once"
            );
        }
        wait_until("every shard to be ready", Duration::from_secs(60), || {
            bot.report().totals.notices.get("ALL_SHARDS_READY") == Some(&1)
        });
        assert_eq!(connects_total(admin), u64::from(shards));
        let elapsed = started.elapsed();
        let floor = Duration::from_secs(5) * (shards.div_ceil(max_concurrency) - 1);
        eprintln!(
            "max_concurrency {max_concurrency}, {shards} shards: all ready after {} ms; the buckets allow {} ms",
            elapsed.as_millis(),
            floor.as_millis()
        );
        let ledger = mock.ledger();
        assert!(ledger.violations.is_empty(), "{:#?}", ledger.violations);
        assert_eq!(ledger.identifies_total, u64::from(shards));
        assert!(engine.terminate().0.success());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A daily identify budget smaller than the shard count: the engine spends exactly what
/// `remaining` allows and the other shards wait for the reset, instead of identifying once
/// more and getting the token reset (which ends every session with 4004).
#[test]
fn identify_budget_is_never_overspent() {
    const BUDGET: u32 = 3;
    let dir = std::env::temp_dir().join(format!(
        "shardgate-e2e-identify-budget-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let mock = MockGateway::spawn(
        MockConfig {
            tls: true,
            ca_out: Some(dir.join("ca.pem")),
            guilds: 16,
            max_concurrency: 16,
            session_start_total: BUDGET,
            rate: 5.0,
            guild_create_bytes: 0,
            ..MockConfig::default()
        },
        1,
    )
    .unwrap();
    let bot = FakeBot::spawn(BotConfig::ephemeral()).unwrap();
    let child = engine_command(&mock, &bot, &dir)
        .args(["--total-shards", "8", "--cores", "2"])
        .spawn()
        .unwrap();
    let mut engine = Engine::new(child);
    wait_until(
        "the budget's shards to be ready",
        Duration::from_secs(30),
        || bot.report().totals.notices.get("SHARD_READY") == Some(&u64::from(BUDGET)),
    );
    // A round of the identify window later nothing else has identified.
    std::thread::sleep(Duration::from_secs(6));
    let ledger = mock.ledger();
    assert!(ledger.violations.is_empty(), "{:#?}", ledger.violations);
    assert_eq!(ledger.token_resets, 0);
    assert_eq!(ledger.identifies_total, u64::from(BUDGET));
    assert!(engine.0.try_wait().unwrap().is_none(), "the engine runs on");
    let (status, warnings) = engine.terminate();
    assert!(status.success(), "{status:?}");
    assert!(
        warnings.contains("session_start_limit.remaining"),
        "the operator is told why shards wait: {warnings}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A gateway that accepts TCP and then never answers the upgrade must not hold a shard: the
/// whole connect (TCP, TLS, upgrade) has a deadline, after which the shard tries again; and
/// it must not hold a stop either.
#[test]
fn a_server_that_accepts_and_says_nothing_costs_one_connect_timeout() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let dir = std::env::temp_dir().join(format!("shardgate-silent-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    std::thread::spawn({
        let accepted = Arc::clone(&accepted);
        move || {
            // Hold every socket open, read nothing.
            let mut held = Vec::new();
            for stream in silent.incoming().take(8) {
                held.push(stream);
                accepted.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    let bot = FakeBot::spawn(BotConfig::ephemeral()).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .args(["run", "--token", "t0ken", "--forward-url", &bot.url()])
        .args([
            "--gateway-url",
            &format!("ws://{addr}"),
            "--total-shards",
            "1",
        ])
        .args([
            "--data-dir",
            dir.to_str().unwrap(),
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .args(["--log", "warn"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut engine = Engine::new(child);
    wait_until(
        "a second connect after the first one's deadline",
        Duration::from_secs(30),
        || accepted.load(Ordering::SeqCst) >= 2,
    );
    // A stop in the middle of that connect does not wait out its 10 s deadline.
    let stop_asked = Instant::now();
    let (status, _) = engine.terminate();
    assert!(status.success(), "{status:?}");
    let stop_took = stop_asked.elapsed();
    assert!(
        stop_took < Duration::from_secs(5),
        "the stop waited for the connect: {stop_took:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `shardgate_connects_total` summed over cores, from `/metrics`.
fn connects_total(admin: std::net::SocketAddr) -> u64 {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(admin).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
        .lines()
        .filter(|line| line.starts_with("shardgate_connects_total{"))
        .map(|line| line.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}
