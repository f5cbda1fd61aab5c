//! The real `shardgate` binary between the mock gateway (over TLS, trusted with `--ca-file`)
//! and the fake bot, several shards on 2 cores, in every compression mode: every dispatch in
//! the mock's ledger reaches the bot exactly once and in order per shard, except the
//! redundant MESSAGE_UPDATEs, which never arrive (while real edits do); SIGTERM closes every
//! shard resumably (4000) and exits 0.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fake_bot::{BotConfig, FakeBot, Secret};
use mock_gateway::{Ledger, MockConfig, MockGateway};

const SHARDS: u32 = 4;
const EVENTS_PER_SHARD: u64 = 400;
const SECRET: &str = "forward-s3cret";

struct Engine(Child);

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Seqs the bot must get for a shard: everything the mock sent minus redundant updates.
fn expected(ledger: &Ledger, shard: u32) -> BTreeSet<u64> {
    let session = &ledger.shards[&shard].sessions[0];
    let redundant: BTreeSet<u64> = session.redundant_update_seqs.iter().copied().collect();
    (session.first_seq..=session.last_seq)
        .filter(|s| !redundant.contains(s))
        .collect()
}

fn run(compression: &str) {
    let dir = std::env::temp_dir().join(format!(
        "shardgate-e2e-{compression}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    let mock = MockGateway::spawn(
        MockConfig {
            tls: true,
            ca_out: Some(ca.clone()),
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
    let child = Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .args([
            "run",
            "--api-base",
            &mock.api_base(),
            "--total-shards",
            &SHARDS.to_string(),
        ])
        .args([
            "--cores",
            "2",
            "--compression",
            compression,
            "--forward-url",
            &bot.url(),
        ])
        .args([
            "--ca-file",
            ca.to_str().unwrap(),
            "--data-dir",
            dir.to_str().unwrap(),
        ])
        .args(["--log", "warn"])
        .env("DISCORD_TOKEN", mock.token())
        .env("FORWARD_SECRET", SECRET)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut engine = Engine(child);

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
                let sent_all = session.by_type.values().sum::<u64>() >= EVENTS_PER_SHARD;
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
    let pid = engine.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = engine.0.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(engine.0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
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
