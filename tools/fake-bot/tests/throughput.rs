//! How many records per second the fake bot takes on one core, so it is known never to be the
//! bottleneck of a throughput test. Run by hand, in release:
//!
//! ```text
//! cargo test -p fake-bot --release --test throughput -- --ignored --nocapture
//! ```
//!
//! Must not: assert a timing. It prints the figure; it asserts only that nothing was lost.

use std::time::{Duration, Instant};

use bytes::Bytes;
use fake_bot::{BotClient, BotConfig, FakeBot};
use hyper::StatusCode;

const SHARDS: u32 = 8;
const CONNECTIONS: u32 = 2;
const RECORDS_PER_BATCH: u64 = 500;
const BATCHES_PER_CONNECTION: u64 = 1_000;

/// A MESSAGE_CREATE shaped like a real one, about 1.3 KB; `{SEQ}` is replaced per record.
fn payload_template() -> String {
    let content = "Hello \\\"world\\\" \u{2014} \u{fc}n\u{ef}c\u{f6}d\u{e9} text, a link https://example.com/some/path?x=1&y=2 and an emoji \u{1f600}. ".repeat(3);
    format!(
        concat!(
            r#"{{"t":"MESSAGE_CREATE","s":{{SEQ}},"op":0,"d":{{"type":0,"tts":false,"#,
            r#""timestamp":"2024-05-01T12:34:56.789000+00:00","pinned":false,"nonce":"1235462345234523328","#,
            r#""mentions":[],"mention_roles":[],"mention_everyone":false,"member":{{"roles":["1111111111111111111","#,
            r#""2222222222222222222"],"premium_since":null,"pending":false,"nick":"nickname","mute":false,"#,
            r#""joined_at":"2021-01-01T00:00:00.000000+00:00","flags":0,"deaf":false,"#,
            r#""communication_disabled_until":null,"avatar":null}},"id":"1236000000000000000","flags":0,"#,
            r#""embeds":[{{"type":"rich","title":"An embed","description":"with a description","color":16711680,"#,
            r#""fields":[{{"name":"a","value":"1","inline":true}},{{"name":"b","value":"2","inline":true}}]}}],"#,
            r#""edited_timestamp":null,"content":"{content}","components":[],"channel_id":"1230000000000000000","#,
            r#""author":{{"username":"someone","public_flags":0,"id":"1220000000000000000","global_name":"Some One","#,
            r#""discriminator":"0","avatar_decoration_data":null,"avatar":"a1b2c3d4e5f60718293a4b5c6d7e8f90"}},"#,
            r#""attachments":[],"guild_id":"1210000000000000000"}}}}"#
        ),
        content = content
    )
}

/// Builds one batch: `RECORDS_PER_BATCH` records spread round-robin over `shards`, each
/// shard's sequence continuing from `next_seq`.
fn build_batch(
    template: &(String, String),
    shards: &[u32],
    next_seq: &mut [u64],
    body: &mut Vec<u8>,
) {
    body.clear();
    body.push(b'[');
    for index in 0..RECORDS_PER_BATCH as usize {
        let slot = index % shards.len();
        if index > 0 {
            body.push(b',');
        }
        body.extend_from_slice(b"{\"shard_id\":");
        body.extend_from_slice(shards[slot].to_string().as_bytes());
        body.extend_from_slice(b",\"payload\":");
        body.extend_from_slice(template.0.as_bytes());
        body.extend_from_slice(next_seq[slot].to_string().as_bytes());
        body.extend_from_slice(template.1.as_bytes());
        body.push(b'}');
        next_seq[slot] += 1;
    }
    body.push(b']');
}

/// CPU time (user + system) of this process's thread named `name`, from /proc.
fn thread_cpu(name: &str) -> Option<Duration> {
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let path = task.ok()?.path();
        let comm = std::fs::read_to_string(path.join("comm")).ok()?;
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(path.join("stat")).ok()?;
        // Fields after the parenthesised comm: state is field 3, utime 14, stime 15.
        let after_comm = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = after_comm.split(' ').collect();
        let ticks: u64 = fields[11].parse::<u64>().ok()? + fields[12].parse::<u64>().ok()?;
        // USER_HZ is 100 on Linux for every architecture this runs on.
        return Some(Duration::from_millis(ticks * 10));
    }
    None
}

#[test]
#[ignore = "a measurement, run by hand in release"]
fn records_per_second_on_one_core() {
    let bot = FakeBot::spawn(BotConfig::ephemeral()).expect("bot starts");
    let addr = bot.addr();
    let template = payload_template();
    let (head, tail) = template.split_once("{SEQ}").expect("placeholder");
    let template = (head.to_owned(), tail.to_owned());
    let record_bytes = template.0.len() + template.1.len() + 4;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cpu_before = thread_cpu("fake-bot").expect("the bot's thread");
    let started = Instant::now();
    runtime.block_on(async {
        let mut tasks = Vec::new();
        for connection in 0..CONNECTIONS {
            let template = template.clone();
            let shards: Vec<u32> = (0..SHARDS)
                .filter(|s| s % CONNECTIONS == connection)
                .collect();
            tasks.push(tokio::spawn(async move {
                let mut client = BotClient::connect(addr).await.unwrap();
                let mut next_seq = vec![1_u64; shards.len()];
                let mut body = Vec::new();
                for _ in 0..BATCHES_PER_CONNECTION {
                    build_batch(&template, &shards, &mut next_seq, &mut body);
                    let answer = client
                        .post_batch("/events", None, Bytes::copy_from_slice(&body))
                        .await
                        .unwrap();
                    assert_eq!(answer.status, StatusCode::NO_CONTENT);
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    });
    let elapsed = started.elapsed();
    let cpu = thread_cpu("fake-bot").expect("the bot's thread") - cpu_before;

    let report = bot.report();
    let records = u64::from(CONNECTIONS) * BATCHES_PER_CONNECTION * RECORDS_PER_BATCH;
    assert_eq!(report.totals.records, records);
    assert!(report.is_clean(), "{:?}", report.totals);
    let per_wall_second = records as f64 / elapsed.as_secs_f64();
    let per_cpu_second = records as f64 / cpu.as_secs_f64();
    println!(
        "fake-bot throughput: {records} records of ~{record_bytes} bytes in batches of \
         {RECORDS_PER_BATCH}: {:.0} records/s wall ({:.2} s), {:.0} records per CPU-second of \
         the bot's thread ({:.2} s CPU), {:.0} MB/s of payload",
        per_wall_second,
        elapsed.as_secs_f64(),
        per_cpu_second,
        cpu.as_secs_f64(),
        report.totals.bytes as f64 / elapsed.as_secs_f64() / 1e6,
    );
}

#[test]
#[ignore = "a measurement, run by hand in release"]
fn parse_and_record_cost_per_record() {
    let template = payload_template();
    let (head, tail) = template.split_once("{SEQ}").expect("placeholder");
    let template = (head.to_owned(), tail.to_owned());
    let shards: Vec<u32> = (0..SHARDS).collect();
    let mut next_seq = vec![1_u64; shards.len()];
    let mut body = Vec::new();
    build_batch(&template, &shards, &mut next_seq, &mut body);
    let rounds = 400;
    let records = rounds * RECORDS_PER_BATCH;

    let started = Instant::now();
    for _ in 0..rounds {
        let value: Vec<&serde_json::value::RawValue> = serde_json::from_slice(&body).unwrap();
        std::hint::black_box(value);
    }
    let skip_ns = started.elapsed().as_nanos() as f64 / records as f64;

    let started = Instant::now();
    for _ in 0..rounds {
        std::hint::black_box(fake_bot::batch::parse_batch(&body).unwrap());
    }
    let parse_ns = started.elapsed().as_nanos() as f64 / records as f64;

    let entries = fake_bot::batch::parse_batch(&body).unwrap();
    let mut ledger = fake_bot::ledger::Ledger::new(0);
    let started = Instant::now();
    for _ in 0..rounds {
        ledger.record_batch(std::hint::black_box(&entries));
    }
    let record_ns = started.elapsed().as_nanos() as f64 / records as f64;
    println!(
        "per record of {} bytes: validate-and-skip {skip_ns:.0} ns, parse_batch {parse_ns:.0} ns, \
         ledger {record_ns:.0} ns",
        body.len() / RECORDS_PER_BATCH as usize
    );
}
