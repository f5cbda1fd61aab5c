//! The fake bot as a Redis Streams consumer, against a real `redis-server` and entries laid
//! out as the engine writes them: every partition read through the group, each shard's records
//! into the same ledger as batches, copies (an `id` seen before) dropped and counted apart, bad
//! entries counted, everything acknowledged; a dead consumer's pending entries claimed; Redis
//! shut down and started again (its append-only file kept) costs nothing; the binary's flags.
//!
//! Must not: assert timings; every wait polls a condition and is bounded.

mod common;

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::redis::{RedisServer, payload, pending, xadd};
use fake_bot::{BotConfig, FakeBot, Report, StreamsConfig};

const KEY: &str = "test:events";
const GROUP: &str = "bots";

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + common::WAIT_MAX;
    while !done() {
        assert!(Instant::now() < deadline, "gave up waiting: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn config(redis: &RedisServer, partitions: u32, consumer: &str) -> StreamsConfig {
    StreamsConfig {
        stream_key: KEY.to_owned(),
        stream_partitions: partitions,
        group: GROUP.to_owned(),
        consumer: consumer.to_owned(),
        block_ms: 100,
        ..StreamsConfig::new(redis.url())
    }
}

fn entries_read(report: &Report) -> u64 {
    report.streams.as_ref().map_or(0, |streams| streams.entries)
}

#[test]
fn every_partition_is_read_once_in_order_copies_dropped_and_bad_entries_counted() {
    let redis = RedisServer::start("once");
    let mut conn = redis.connect();
    let bot = FakeBot::spawn(BotConfig {
        record_content: true,
        ..BotConfig::ephemeral()
    })
    .expect("the bot starts");
    let consumer = bot
        .consume_streams(config(&redis, 2, "worker-1"))
        .expect("the consumer starts");
    // Shards 0..4 over two partitions, 50 dispatches each, a notice each; then copies of
    // shard 1's seqs 10..=14 (a replay) and two entries that break the layout.
    for shard in 0..4 {
        for seq in 1..=50 {
            xadd(
                &mut conn,
                KEY,
                2,
                shard,
                seq,
                "dispatch",
                &payload("MESSAGE_CREATE", seq),
            );
        }
        xadd(
            &mut conn,
            KEY,
            2,
            shard,
            0,
            "notice:SHARD_READY",
            r#"{"guilds":3}"#,
        );
    }
    for seq in 10..=14 {
        xadd(
            &mut conn,
            KEY,
            2,
            1,
            seq,
            "dispatch",
            &payload("MESSAGE_CREATE", seq),
        );
    }
    let _: String = redis::cmd("XADD")
        .arg(format!("{KEY}:0"))
        .arg("*")
        .arg("shard")
        .arg(0)
        .arg("seq")
        .arg(51)
        .arg("kind")
        .arg("dispatch")
        .arg("id")
        // Another sequence than the entry's.
        .arg("0:50:00000000")
        .arg("type")
        .arg("MESSAGE_CREATE")
        .arg("payload")
        .arg(payload("MESSAGE_CREATE", 51))
        .query(&mut conn)
        .expect("XADD");
    // Shard 3 belongs to partition 1: in partition 0 it breaks the layout.
    let misplaced = payload("MESSAGE_CREATE", 60);
    let _: String = redis::cmd("XADD")
        .arg(format!("{KEY}:0"))
        .arg("*")
        .arg("shard")
        .arg(3)
        .arg("seq")
        .arg(60)
        .arg("kind")
        .arg("dispatch")
        .arg("id")
        .arg(format!(
            "3:60:{:08x}",
            crc32fast::hash(misplaced.as_bytes())
        ))
        .arg("type")
        .arg("MESSAGE_CREATE")
        .arg("payload")
        .arg(&misplaced)
        .query(&mut conn)
        .expect("XADD");
    let total = 4 * 51 + 5 + 2;
    wait_for("every entry acknowledged", || {
        bot.report()
            .streams
            .is_some_and(|streams| streams.acknowledged >= total)
    });
    consumer.stop();
    let report = bot.report();
    let streams = report.streams.clone().expect("a stream section");
    assert_eq!(streams.acknowledged, total);
    assert_eq!(
        streams.entries,
        total - 2,
        "bad entries are not counted read"
    );
    assert_eq!(streams.copies, 5);
    assert_eq!(streams.bad_entries, 2);
    assert_eq!((streams.read_again, streams.claimed), (0, 0));
    assert!(report.is_clean(), "{:?}", report.totals);
    for shard in 0..4 {
        let got = &report.shards[&shard];
        assert_eq!(got.runs.len(), 1);
        assert_eq!(got.runs[0].ranges, vec![[1, 50]], "shard {shard}");
        assert_eq!(got.records, 50);
        assert_eq!(got.notices["SHARD_READY"], 1);
    }
    assert_eq!(bot.content().len(), 200, "each dispatch's content once");
    assert_eq!(pending(&mut conn, KEY, 2, GROUP), 0);
}

#[test]
fn a_dead_consumers_pending_entries_are_claimed_and_nothing_is_lost() {
    let redis = RedisServer::start("claim");
    let mut conn = redis.connect();
    for seq in 1..=100 {
        xadd(
            &mut conn,
            KEY,
            1,
            0,
            seq,
            "dispatch",
            &payload("MESSAGE_CREATE", seq),
        );
    }
    // A worker reads 40 entries and dies before acknowledging them.
    let _: redis::Value = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(format!("{KEY}:0"))
        .arg(GROUP)
        .arg("0")
        .query(&mut conn)
        .expect("XGROUP CREATE");
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg(&["GROUP", GROUP, "dead-worker", "COUNT", "40", "STREAMS"][..])
        .arg(format!("{KEY}:0"))
        .arg(">")
        .query(&mut conn)
        .expect("XREADGROUP");
    assert_eq!(pending(&mut conn, KEY, 1, GROUP), 40);
    let bot = FakeBot::spawn(BotConfig::ephemeral()).expect("the bot starts");
    let consumer = bot
        .consume_streams(StreamsConfig {
            claim_min_idle_ms: 300,
            ..config(&redis, 1, "worker-2")
        })
        .expect("the consumer starts");
    wait_for("all 100 recorded", || bot.report().totals.records >= 100);
    wait_for("nothing pending", || pending(&mut conn, KEY, 1, GROUP) == 0);
    consumer.stop();
    let report = bot.report();
    let streams = report.streams.clone().expect("a stream section");
    assert_eq!(streams.claimed, 40, "the dead worker's entries");
    assert_eq!(report.shards[&0].runs[0].ranges, vec![[1, 100]]);
    assert_eq!((report.totals.duplicates, report.totals.gaps), (0, 0));
    // The claimed entries may come after the newer ones the live worker read first: a
    // consumer group keeps order per consumer only, and the ledger says so.
    assert!(report.totals.out_of_order <= 40);
}

#[test]
fn redis_shut_down_and_started_again_loses_nothing_and_a_stop_is_prompt() {
    let mut redis = RedisServer::start("away");
    let mut conn = redis.connect();
    let bot = FakeBot::spawn(BotConfig::ephemeral()).expect("the bot starts");
    let consumer = bot
        .consume_streams(config(&redis, 1, "worker-1"))
        .expect("the consumer starts");
    for seq in 1..=50 {
        xadd(
            &mut conn,
            KEY,
            1,
            2,
            seq,
            "dispatch",
            &payload("TYPING_START", seq),
        );
    }
    wait_for("the first 50", || bot.report().totals.records >= 50);
    redis.stop();
    // The consumer fails, backs off and tries again while nothing answers.
    std::thread::sleep(Duration::from_millis(1_500));
    redis.start_again();
    let mut conn = redis.connect();
    for seq in 51..=100 {
        xadd(
            &mut conn,
            KEY,
            1,
            2,
            seq,
            "dispatch",
            &payload("TYPING_START", seq),
        );
    }
    wait_for("all 100", || bot.report().totals.records >= 100);
    let report = bot.report();
    let streams = report.streams.clone().expect("a stream section");
    assert!(streams.reconnects >= 1, "{streams:?}");
    assert_eq!(report.shards[&2].runs[0].ranges, vec![[1, 100]]);
    assert!(report.is_clean(), "{:?}", report.totals);
    assert_eq!(pending(&mut conn, KEY, 1, GROUP), 0);
    // Asked to stop while Redis is gone again, it stops within its bounded waits.
    redis.stop();
    std::thread::sleep(Duration::from_millis(300));
    let (stopped, stopped_receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        consumer.stop();
        let _ = stopped.send(());
    });
    stopped_receiver
        .recv_timeout(common::WAIT_MAX)
        .expect("the consumer stops while Redis is away");
}

#[test]
fn the_binary_consumes_with_its_flags_and_reports_the_streams() {
    let redis = RedisServer::start("cli");
    let mut conn = redis.connect();
    for shard in 0..3 {
        for seq in 1..=20 {
            xadd(
                &mut conn,
                "cli:events",
                3,
                shard,
                seq,
                "dispatch",
                &payload("MESSAGE_CREATE", seq),
            );
        }
    }
    let report_path =
        std::env::temp_dir().join(format!("fake-bot-streams-cli-{}.json", std::process::id()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_fake-bot"))
        .args(["--listen", "127.0.0.1:0", "--redis-url", &redis.url()])
        .args(["--stream-key", "cli:events", "--stream-partitions", "3"])
        .args([
            "--group",
            "cli-bots",
            "--consumer",
            "cli-1",
            "--block-ms",
            "100",
        ])
        .arg("--report-file")
        .arg(&report_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let addr = loop {
        let mut line = String::new();
        assert_ne!(
            stdout.read_line(&mut line).expect("stdout"),
            0,
            "no start line"
        );
        if let Some(addr) = line.trim().strip_prefix("fake-bot listening on http://") {
            break addr.parse().expect("an address");
        }
    };
    wait_for("the report to show 60 records", || {
        let (status, body) = common::blocking_request(addr, "GET", "/_bot/report", &[], "");
        status == 200
            && serde_json::from_str::<Report>(&body).is_ok_and(|report| report.totals.records >= 60)
    });
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill")
            .success()
    );
    let deadline = Instant::now() + common::WAIT_MAX;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "the bot did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("stderr");
    assert!(status.success(), "{status:?}: {stderr}");
    assert!(
        stderr.contains("stream_entries=60"),
        "the summary line counts the entries: {stderr}"
    );
    let report: Report =
        serde_json::from_slice(&std::fs::read(&report_path).expect("report")).expect("a report");
    let _ = std::fs::remove_file(&report_path);
    assert_eq!(entries_read(&report), 60);
    for shard in 0..3 {
        assert_eq!(report.shards[&shard].runs[0].ranges, vec![[1, 20]]);
    }
    assert_eq!(pending(&mut conn, "cli:events", 3, "cli-bots"), 0);
}
