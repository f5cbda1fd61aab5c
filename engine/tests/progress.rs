//! Startup progress of the real binary when stderr is not a terminal: a `startup progress` log
//! line at once (then every 5 s) with the ETA the identify buckets allow, and one `all shards
//! ready` line with the elapsed time, after which progress says nothing more.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::time::Duration;

use common::{Engine, bare_engine_command, wait_until};
use fake_bot::{BotConfig, FakeBot};
use mock_gateway::{MockConfig, MockGateway};

const SHARDS: u64 = 3;
/// One identify bucket and a 1 s window: the shards identify at 0, 1 and 2 s.
const IDENTIFY_INTERVAL_MS: u64 = 1000;

/// The JSON log lines whose message is `message`: their fields.
fn lines<'a>(stderr: &'a str, message: &'a str) -> Vec<serde_json::Value> {
    stderr
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .map(|line| line["fields"].clone())
        .filter(|fields| fields["message"] == message)
        .collect()
}

#[test]
fn log_lines_report_startup_until_every_shard_is_ready() {
    let dir = std::env::temp_dir().join(format!("shardgate-progress-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mock = MockGateway::spawn(
        MockConfig {
            tls: true,
            ca_out: Some(dir.join("ca.pem")),
            guilds: 6,
            max_concurrency: 1,
            identify_window_ms: IDENTIFY_INTERVAL_MS,
            rate: 5.0,
            guild_create_bytes: 0,
            ..MockConfig::default()
        },
        1,
    )
    .unwrap();
    let bot = FakeBot::spawn(BotConfig::ephemeral()).unwrap();
    let child = bare_engine_command(&mock, &bot, &dir)
        .args(["--total-shards", &SHARDS.to_string(), "--cores", "1"])
        .args(["--identify-interval-ms", &IDENTIFY_INTERVAL_MS.to_string()])
        .args(["--data-dir", dir.join("data").to_str().unwrap()])
        .args(["--log", "info", "--log-format", "json"])
        .spawn()
        .unwrap();
    let mut engine = Engine::new(child);
    wait_until("every shard to be ready", Duration::from_secs(30), || {
        bot.report().totals.notices.get("ALL_SHARDS_READY") == Some(&1)
    });
    // The main thread looks every 50 ms; give it a few looks (a stop would report it too).
    std::thread::sleep(Duration::from_millis(300));
    let (status, stderr) = engine.terminate();
    assert!(status.success(), "exit {status:?}: {stderr}");
    let ledger = mock.ledger();
    assert!(ledger.violations.is_empty(), "{:#?}", ledger.violations);
    assert_eq!(ledger.identifies_total, SHARDS);

    let progress = lines(&stderr, "startup progress");
    assert!(!progress.is_empty(), "no startup progress line: {stderr}");
    let field = |fields: &serde_json::Value, name: &str| {
        fields[name]
            .as_u64()
            .unwrap_or_else(|| panic!("no numeric {name} in {fields}"))
    };
    for fields in &progress {
        let ready = field(fields, "shards_ready");
        assert_eq!(field(fields, "shards_owned"), SHARDS, "{fields}");
        assert!(ready < SHARDS, "{fields}");
        // Every shard not ready identifies, one per interval (1 s plus the limiter's safety
        // margin): that long at most, in whole seconds rounded up.
        let interval = Duration::from_millis(IDENTIFY_INTERVAL_MS)
            + shardgate::limiter::IDENTIFY_SAFETY_MARGIN;
        let eta = interval * u32::try_from(SHARDS - ready).unwrap();
        let eta_s = eta.as_secs() + u64::from(eta.subsec_nanos() > 0);
        assert_eq!(field(fields, "eta_s"), eta_s, "{fields}");
    }
    // The first line comes at once: only shard 0 (identified at 0 s) may be ready by then.
    assert!(field(&progress[0], "shards_ready") <= 1, "{stderr}");

    let done = lines(&stderr, "all shards ready");
    assert_eq!(done.len(), 1, "{stderr}");
    assert_eq!(field(&done[0], "shards_ready"), SHARDS);
    assert_eq!(field(&done[0], "shards_owned"), SHARDS);
    let elapsed_ms = field(&done[0], "elapsed_ms");
    let floor_ms = (SHARDS - 1) * IDENTIFY_INTERVAL_MS;
    assert!(
        (floor_ms..30_000).contains(&elapsed_ms),
        "all ready after {elapsed_ms} ms; the buckets allow {floor_ms} ms at the earliest"
    );
    // Nothing about startup after it was over.
    let last_progress = stderr.rfind("startup progress").unwrap();
    assert!(
        last_progress < stderr.find("all shards ready").unwrap(),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
