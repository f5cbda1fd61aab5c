//! Nothing lost: the real binary with its data dir, the mock gateway over TLS and the fake bot,
//! across a bot that goes away, a graceful restart, a `kill -9` while the bot is away (with a
//! torn write at the spill's tail), and a spill that reaches its disk bound.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Engine, bare_engine_command, command_without_admin, http, wait_until};
use fake_bot::{BotConfig, FakeBot};
use mock_gateway::{MockConfig, MockGateway};

const SHARDS: u32 = 4;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shardgate-durable-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn mock(dir: &Path, rate: f64, events_per_shard: u64) -> MockGateway {
    MockGateway::spawn(
        MockConfig {
            tls: true,
            ca_out: Some(dir.join("ca.pem")),
            seed: Some(11),
            guilds: 16,
            max_concurrency: 16,
            rate,
            events_per_shard,
            guild_create_bytes: 2000,
            heartbeat_interval_ms: 2000,
            ..MockConfig::default()
        },
        1,
    )
    .unwrap()
}

/// `shardgate run` on the data dir `dir/data`, 4 shards on 2 cores, small spill fsync cost.
fn engine(mock: &MockGateway, bot: &FakeBot, dir: &Path, extra: &[&str]) -> Command {
    with_options(bare_engine_command(mock, bot, dir), dir, extra)
}

/// [`engine`] started, with the address its admin API listens on.
fn start_with_admin(
    mock: &MockGateway,
    bot: &FakeBot,
    dir: &Path,
    extra: &[&str],
) -> (Engine, std::net::SocketAddr) {
    let mut command = with_options(command_without_admin(mock, bot, dir), dir, extra);
    Engine::spawn_with_admin(&mut command)
}

fn with_options(mut command: Command, dir: &Path, extra: &[&str]) -> Command {
    command
        .args(["--total-shards", &SHARDS.to_string(), "--cores", "2"])
        .args(["--data-dir", dir.join("data").to_str().unwrap()])
        .args([
            "--spill-fsync",
            "never",
            "--session-save-interval-ms",
            "200",
        ])
        .args(["--log", "info", "--log-format", "json"])
        .args(extra);
    command
}

/// The default route's lanes in use, from `GET /status`.
fn lanes_active(admin: std::net::SocketAddr) -> Option<u64> {
    let (status, _, body) = http(admin, "GET", "/status", None, b"");
    let status_json: serde_json::Value = serde_json::from_str(&body).ok()?;
    (status == 200).then(|| status_json["routes"][0]["lanes_active"].as_u64())?
}

fn start(mut command: Command) -> Engine {
    Engine::new(command.stderr(Stdio::piped()).spawn().unwrap())
}

/// Waits (30 s at most) until the bot holds more than `records` records: the engine streams.
fn wait_for_a_steady_stream(bot: &FakeBot, records: u64) {
    wait_until(
        "a steady stream at the bot",
        Duration::from_secs(30),
        || bot.report().totals.records > records,
    );
}

/// Every shard's stream ended and the bot has at least what the ledger says it must.
fn all_arrived(mock: &MockGateway, bot: &FakeBot, events_per_shard: u64) -> bool {
    let ledger = mock.ledger();
    let report = bot.report();
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
        sent >= events_per_shard
            && shard_ledger
                .sessions
                .iter()
                .all(|session| session.expected_seqs().is_subset(&got))
    })
}

/// Per shard: one session in the ledger and one run at the bot with every expected sequence,
/// in order, and nothing else but (after a restart, whose dedup cache starts empty) updates
/// the mock marked redundant. Returns the duplicates the bot counted.
fn check_exactly_expected(mock: &MockGateway, bot: &FakeBot) -> u64 {
    let ledger = mock.ledger();
    let report = bot.report();
    assert!(ledger.violations.is_empty(), "{:#?}", ledger.violations);
    for shard in 0..SHARDS {
        let shard_ledger = &ledger.shards[&shard];
        assert_eq!(shard_ledger.sessions.len(), 1, "shard {shard}: one session");
        let got = &report.shards[&shard];
        assert_eq!(got.runs.len(), 1, "shard {shard}: one run at the bot");
        assert_eq!(got.out_of_order, 0, "shard {shard}");
        let session = &shard_ledger.sessions[0];
        let want = session.expected_seqs();
        let got = got.runs[0].seqs();
        let missing: Vec<_> = want.difference(&got).collect();
        assert!(missing.is_empty(), "shard {shard}: missing {missing:?}");
        let allowed = session.optional_seqs();
        let extra: BTreeSet<u64> = got.difference(&want).copied().collect();
        assert!(
            extra.is_subset(&allowed),
            "shard {shard}: unexpected {extra:?}"
        );
    }
    report.totals.duplicates
}

/// The last JSON status line's `field`.
fn last_status(stderr: &str, field: &str) -> Option<u64> {
    last_logged(stderr, "status", field)
}

/// `field` of the last JSON log line whose message is `message`.
fn last_logged(stderr: &str, message: &str, field: &str) -> Option<u64> {
    stderr
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["fields"]["message"] == message)
        .filter_map(|line| line["fields"][field].as_u64())
        .next_back()
}

#[test]
fn bot_away_for_30_seconds_loses_nothing() {
    let dir = scratch("bot-away");
    const EVENTS: u64 = 3000;
    let mock = mock(&dir, 60.0, EVENTS);
    let bot = FakeBot::spawn(BotConfig::ephemeral()).unwrap();
    // A 1 MiB memory queue: the 30 s backlog (about 7 MB) goes through the disk spill.
    let mut engine = start(engine(&mock, &bot, &dir, &["--queue-bytes-max", "1048576"]));
    wait_for_a_steady_stream(&bot, 400);
    bot.refuse_for(Duration::from_secs(30));
    // A broken payload while the bot is away: it goes to the spill with the rest, is left out
    // once the bot refuses its batch, and is counted once.
    assert_eq!(mock.inject_fault(1, mock_gateway::Fault::Truncated), 1);
    wait_until(
        "everything to arrive after the bot is back",
        Duration::from_secs(150),
        || all_arrived(&mock, &bot, EVENTS),
    );
    let duplicates = check_exactly_expected(&mock, &bot);
    // Refused connections never took a batch, so nothing was sent twice.
    assert_eq!(duplicates, 0);
    let ledger = mock.ledger();
    for shard in 0..SHARDS {
        assert_eq!(
            ledger.shards[&shard].identifies, 1,
            "shard {shard} stayed up"
        );
    }
    let (status, stderr) = engine.terminate();
    assert!(status.success(), "{stderr}");
    assert!(
        last_status(&stderr, "spilled").unwrap() > 1000,
        "the backlog went through the spill"
    );
    assert_eq!(mock.ledger().shards[&1].sessions[0].truncated_seqs.len(), 1);
    assert_eq!(last_status(&stderr, "dropped_invalid"), Some(1));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_payload_still_unacknowledged_at_the_stop_is_counted_once() {
    // No spill and a bot that falls over on the cut payload's batch: the engine leaves the
    // payload out (counted `invalid_payload`) and retries the rest against a bot that is gone
    // until the stop's grace (10 s) runs out. Everything the sink took in must then be delivered or
    // dropped with exactly one reason; the cut payload used to be counted again as a shutdown
    // drop.
    let dir = scratch("bad-payload-at-stop");
    let mock = mock(&dir, 60.0, 1_000_000);
    let bot = FakeBot::spawn(BotConfig::ephemeral()).unwrap();
    let mut engine = start(engine(&mock, &bot, &dir, &["--spill-bytes-max", "0"]));
    wait_for_a_steady_stream(&bot, 200);
    bot.go_away_after_the_next_bad_batch(Duration::from_secs(600));
    assert_eq!(mock.inject_fault(1, mock_gateway::Fault::Truncated), 1);
    wait_until(
        "the bot to refuse the cut payload's batch",
        Duration::from_secs(30),
        || bot.report().totals.bad_batches == 1,
    );
    // Events keep coming meanwhile and wait in memory for a bot that is away.
    std::thread::sleep(Duration::from_secs(1));
    let (status, stderr) = engine.terminate();
    // Undelivered records at the stop make the exit status 1.
    assert_eq!(status.code(), Some(1), "{stderr}");
    let received = last_status(&stderr, "received").unwrap();
    let delivered = last_status(&stderr, "delivered").unwrap();
    let invalid = last_status(&stderr, "dropped_invalid").unwrap();
    let at_stop = last_logged(&stderr, "stopped", "dropped_at_shutdown").unwrap();
    assert_eq!(invalid, 1);
    assert!(at_stop > 0, "the bot was away at the stop");
    assert_eq!(
        received,
        delivered + invalid + at_stop,
        "received {received}, delivered {delivered}, invalid {invalid}, dropped at the stop {at_stop}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// No spill, a full memory queue and a bot that is away at the stop: the deliverer gives up
/// after the grace, the collector must not keep waiting for room (it used to, and the process
/// never ended), and everything the sink took in is delivered or counted as dropped.
#[test]
fn a_full_queue_without_a_spill_and_the_bot_away_still_stops() {
    let dir = scratch("full-no-spill");
    let mock = mock(&dir, 150.0, 1_000_000);
    let bot = FakeBot::spawn(BotConfig::ephemeral()).unwrap();
    let mut engine = start(engine(
        &mock,
        &bot,
        &dir,
        &[
            "--spill-bytes-max",
            "0",
            "--queue-bytes-max",
            "262144",
            "--batch-bytes-max",
            "65536",
        ],
    ));
    wait_for_a_steady_stream(&bot, 200);
    bot.refuse_for(Duration::from_secs(600));
    // 150 events/s of ~1 KB on 4 shards: the 256 KiB queue is full within a second or two.
    std::thread::sleep(Duration::from_secs(4));
    let pid = engine.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    // The grace is 10 s; give it three times that before calling it a hang.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = engine.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "shardgate did not stop within 30 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(engine.0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "undelivered records: {stderr}");
    let received = last_status(&stderr, "received").unwrap();
    let delivered = last_status(&stderr, "delivered").unwrap();
    let at_stop = last_logged(&stderr, "stopped", "dropped_at_shutdown").unwrap();
    assert!(at_stop > 0, "{stderr}");
    assert_eq!(
        received,
        delivered + at_stop,
        "received {received}, delivered {delivered}, dropped at the stop {at_stop}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn records_on_the_spill_at_the_stop_are_not_counted_as_dropped() {
    // The bot goes away for good: the first refused batch sends memory to the spill, and the
    // engine then retries batches read from the spill until the stop's grace (10 s) runs out.
    // Such a batch is still on the spill (never acknowledged there): nothing is lost, and the
    // stop must say so.
    let dir = scratch("spill-at-stop");
    let mock = mock(&dir, 60.0, 1_000_000);
    let bot = FakeBot::spawn(BotConfig::ephemeral()).unwrap();
    let mut engine = start(engine(&mock, &bot, &dir, &[]));
    wait_for_a_steady_stream(&bot, 200);
    bot.refuse_for(Duration::from_secs(600));
    // Long enough for the hand-back and a few retries of a batch read from the spill.
    std::thread::sleep(Duration::from_secs(2));
    let (status, stderr) = engine.terminate();
    assert!(status.success(), "{stderr}");
    let received = last_status(&stderr, "received").unwrap();
    let delivered = last_status(&stderr, "delivered").unwrap();
    let on_spill = last_status(&stderr, "queued_spill").unwrap();
    let at_stop = last_logged(&stderr, "stopped", "dropped_at_shutdown").unwrap();
    assert_eq!(at_stop, 0, "{stderr}");
    assert!(on_spill > 0, "the bot was away at the stop");
    assert_eq!(
        received,
        delivered + on_spill,
        "received {received}, delivered {delivered}, on the spill {on_spill}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigterm_and_restart_resumes_every_session() {
    let dir = scratch("restart");
    const EVENTS: u64 = 2400;
    let mock = mock(&dir, 150.0, EVENTS);
    let bot = FakeBot::spawn(BotConfig::ephemeral()).unwrap();
    let mut first = start(engine(&mock, &bot, &dir, &[]));
    wait_for_a_steady_stream(&bot, 1000);
    let (status, stderr) = first.terminate();
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("sessions saved"), "{stderr}");
    let mut second = start(engine(&mock, &bot, &dir, &[]));
    wait_until(
        "everything to arrive after the restart",
        Duration::from_secs(90),
        || all_arrived(&mock, &bot, EVENTS),
    );
    let duplicates = check_exactly_expected(&mock, &bot);
    assert_eq!(
        duplicates, 0,
        "a graceful restart resumes exactly where it stopped"
    );
    let ledger = mock.ledger();
    for shard in 0..SHARDS {
        let shard_ledger = &ledger.shards[&shard];
        assert_eq!(shard_ledger.identifies, 1, "shard {shard}: no new identify");
        assert!(shard_ledger.resumes >= 1, "shard {shard} resumed");
        assert_eq!(
            shard_ledger.client_closes.get("4000"),
            Some(&1),
            "shard {shard} closed resumably"
        );
    }
    let (status, stderr) = second.terminate();
    assert!(status.success(), "{stderr}");
    assert_eq!(last_status(&stderr, "saved_sessions_resumed"), Some(4));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Several batches in flight: each shard keeps one lane (its id modulo the count). A start
/// with another count while the lanes' spills hold records keeps the count they were written
/// with (a shard changing lanes could have its new records overtake its spilled ones), says so,
/// and delivers everything once and in order; the new count applies once the spill is drained.
#[test]
fn a_changed_lane_count_waits_for_the_spill_to_drain_and_nothing_is_lost() {
    let dir = scratch("lanes");
    const EVENTS: u64 = 2400;
    let mock = mock(&dir, 150.0, EVENTS);
    let bot = FakeBot::spawn(BotConfig::ephemeral()).unwrap();
    let (mut first, admin) = start_with_admin(
        &mock,
        &bot,
        &dir,
        &["--batches-in-flight", "2", "--batch-events-max", "10"],
    );
    wait_for_a_steady_stream(&bot, 500);
    // A slow bot spreads the shards over both lanes (one batch at a time falls behind).
    bot.set_slow_ms(50);
    wait_until("both lanes in use", Duration::from_secs(30), || {
        lanes_active(admin) == Some(2)
    });
    bot.set_slow_ms(0);
    // Away for the stop and a little after the next start.
    bot.refuse_for(Duration::from_secs(15));
    let lane_1 = dir.join("data").join("spill-lane-1");
    wait_until(
        "records on both lanes' spills",
        Duration::from_secs(30),
        || spill_bytes(&dir.join("data").join("spill")) > 20_000 && spill_bytes(&lane_1) > 20_000,
    );
    let (status, stderr) = first.terminate();
    assert!(status.success(), "{stderr}");

    let three = ["--batches-in-flight", "3"];
    let mut second = start(engine(&mock, &bot, &dir, &three));
    wait_until(
        "everything to arrive from both lanes",
        Duration::from_secs(120),
        || all_arrived(&mock, &bot, EVENTS),
    );
    let duplicates = check_exactly_expected(&mock, &bot);
    assert_eq!(
        duplicates, 0,
        "a graceful stop with the bot away loses and repeats nothing"
    );
    let (status, stderr) = second.terminate();
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("keeping 2 so that every shard's records stay in order"),
        "{stderr}"
    );
    // Drained: the next start takes the new count.
    let lanes_file = dir.join("data").join("spill-lanes");
    assert_eq!(std::fs::read_to_string(&lanes_file).unwrap().trim(), "2");
    let mut third = start(engine(&mock, &bot, &dir, &three));
    wait_until(
        "the third start to note its lanes",
        Duration::from_secs(30),
        || std::fs::read_to_string(&lanes_file).is_ok_and(|text| text.trim() == "3"),
    );
    let (status, stderr) = third.terminate();
    assert!(status.success(), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn kill_9_while_the_bot_is_away_loses_nothing_and_a_torn_tail_is_skipped() {
    let dir = scratch("kill");
    const EVENTS: u64 = 2400;
    let mock = mock(&dir, 150.0, EVENTS);
    let bot = FakeBot::spawn(BotConfig::ephemeral()).unwrap();
    let mut first = start(engine(&mock, &bot, &dir, &["--queue-bytes-max", "1048576"]));
    wait_for_a_steady_stream(&bot, 300);
    bot.refuse_for(Duration::from_secs(12));
    let spill = dir.join("data").join("spill");
    wait_until("records on the spill", Duration::from_secs(30), || {
        spill_bytes(&spill) > 200_000
    });
    std::thread::sleep(Duration::from_secs(1));
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    // A write torn by the crash: half a record header at the tail of the newest segment.
    let newest = newest_segment(&spill);
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&newest)
        .unwrap();
    std::io::Write::write_all(&mut file, b"SGR1\x40\x00").unwrap();
    drop(file);

    let mut second = start(engine(&mock, &bot, &dir, &[]));
    wait_until(
        "everything to arrive after the crash",
        Duration::from_secs(120),
        || all_arrived(&mock, &bot, EVENTS),
    );
    let ledger = mock.ledger();
    let report = bot.report();
    assert!(ledger.violations.is_empty(), "{:#?}", ledger.violations);
    for shard in 0..SHARDS {
        let shard_ledger = &ledger.shards[&shard];
        assert_eq!(
            shard_ledger.identifies, 1,
            "shard {shard}: resumed, no identify"
        );
        let got = &report.shards[&shard];
        let session = &shard_ledger.sessions[0];
        let want = session.expected_seqs();
        let arrived = got.runs[0].seqs();
        assert!(want.is_subset(&arrived), "shard {shard}: 0 lost");
        // Discord's replay after the crash repeats what the spill already delivered, and the
        // new process's empty dedup cache lets through redundant updates the old one dropped:
        // those are the only extras, and the only records that can arrive behind a higher seq.
        let redundant: BTreeSet<u64> = session.redundant_update_seqs.iter().copied().collect();
        let extra: BTreeSet<u64> = arrived.difference(&want).copied().collect();
        assert!(extra.is_subset(&redundant), "shard {shard}: {extra:?}");
        assert!(
            got.out_of_order <= extra.len() as u64,
            "shard {shard}: {} out of order, {} late redundant updates",
            got.out_of_order,
            extra.len()
        );
    }
    eprintln!(
        "kill -9 with the bot away: {} records, {} duplicates (allowed after a crash)",
        report.totals.records, report.totals.duplicates
    );
    let (status, stderr) = second.terminate();
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("torn"),
        "the torn tail was reported: {stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_full_spill_drops_exactly_what_it_counts() {
    let dir = scratch("spill-full");
    const EVENTS: u64 = 1500;
    let mock = mock(&dir, 300.0, EVENTS);
    let bot = FakeBot::spawn(BotConfig::ephemeral()).unwrap();
    let mut engine = start(engine(
        &mock,
        &bot,
        &dir,
        &[
            "--batch-bytes-max",
            "65536",
            "--queue-bytes-max",
            "65536",
            "--spill-bytes-max",
            "1048576",
        ],
    ));
    wait_until("every shard ready", Duration::from_secs(30), || {
        bot.report().totals.notices.get("ALL_SHARDS_READY") == Some(&1)
    });
    // Away for the whole stream (about 6.6 MB against a 1 MiB spill).
    bot.refuse_for(Duration::from_secs(8));
    wait_until("the stream to end", Duration::from_secs(60), || {
        let ledger = mock.ledger();
        (0..SHARDS).all(|s| {
            ledger.shards[&s]
                .sessions
                .iter()
                .map(mock_gateway::SessionLedger::steady_dispatches)
                .sum::<u64>()
                >= EVENTS
        })
    });
    // The bot comes back; wait until it stops receiving.
    let mut last = u64::MAX;
    wait_until("delivery to settle", Duration::from_secs(60), || {
        std::thread::sleep(Duration::from_secs(2));
        let now = bot.report().totals.records;
        let settled = now == last;
        last = now;
        settled
    });
    let (status, stderr) = engine.terminate();
    assert!(status.success(), "the process stays healthy: {stderr}");
    let dropped = last_status(&stderr, "dropped_spill_full").unwrap();
    let ledger = mock.ledger();
    let report = bot.report();
    let mut missing = 0;
    for shard in 0..SHARDS {
        let want = ledger.shards[&shard].sessions[0].expected_seqs();
        let got = report.shards[&shard].runs[0].seqs();
        missing += want.difference(&got).count() as u64;
    }
    assert!(dropped > 0, "the bound was reached");
    assert_eq!(
        dropped, missing,
        "every drop is counted, and only drops are missing"
    );
    assert_eq!(report.totals.out_of_order, 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Shards go to one lane while one batch at a time keeps up, spread over every lane when the
/// bot falls behind, and back to one when it keeps up again; each switch waits for the lanes to
/// drain, so every event arrives once and in order across them.
#[test]
fn lanes_spread_under_load_and_gather_when_light_losing_nothing() {
    let dir = scratch("lane-switch");
    const EVENTS: u64 = 6000;
    let mock = mock(&dir, 150.0, EVENTS);
    let bot = FakeBot::spawn(BotConfig::ephemeral()).unwrap();
    let (mut engine, admin) = start_with_admin(
        &mock,
        &bot,
        &dir,
        &["--batches-in-flight", "4", "--batch-events-max", "50"],
    );
    wait_for_a_steady_stream(&bot, 300);
    // 600 events/s in batches of up to 50: one lane keeps up with a quick bot (the start's
    // burst may have spread them for 10 s).
    wait_until("one lane with a quick bot", Duration::from_secs(30), || {
        lanes_active(admin) == Some(1)
    });
    // 50 records per 200 ms is 250/s: one lane falls behind.
    bot.set_slow_ms(200);
    wait_until("all four lanes in use", Duration::from_secs(30), || {
        lanes_active(admin) == Some(4)
    });
    bot.set_slow_ms(0);
    wait_until(
        "one lane again after 10 s light",
        Duration::from_secs(40),
        || lanes_active(admin) == Some(1),
    );
    wait_until("every event at the bot", Duration::from_secs(120), || {
        all_arrived(&mock, &bot, EVENTS)
    });
    assert_eq!(check_exactly_expected(&mock, &bot), 0, "nothing twice");
    let (status, stderr) = engine.terminate();
    assert!(status.success(), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn spill_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("segment-"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn newest_segment(dir: &Path) -> PathBuf {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("segment-")
        })
        .collect();
    segments.sort();
    segments.pop().unwrap()
}
