//! The sink's HTTP client against the real fake bot over real sockets.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

use std::time::Duration;

use fake_bot::{BotConfig, FakeBot, Secret};
use shardgate::record::{Record, RecordKind};
use shardgate::sink::batch::encode;
use shardgate::sink::http::{ForwardUrl, HttpClient};

fn batch(shard_id: u32, seqs: std::ops::RangeInclusive<u64>) -> Vec<u8> {
    let records: Vec<Record> = seqs
        .map(|seq| Record {
            shard_id,
            shard_count: 1,
            seq,
            session: 0,
            kind: RecordKind::Dispatch,
            payload: format!(r#"{{"t":"MESSAGE_CREATE","s":{seq},"op":0,"d":{{"content":"x"}}}}"#)
                .into_bytes()
                .into(),
        })
        .collect();
    let mut body = Vec::new();
    encode(&records, &mut body);
    body
}

fn client(bot: &FakeBot, secret: Option<&str>) -> HttpClient {
    HttpClient::new(
        ForwardUrl::parse(&bot.url()).unwrap(),
        secret.map(str::to_owned),
        None,
        Duration::from_secs(5),
    )
}

#[test]
fn batches_reach_the_bot_over_one_keep_alive_connection() {
    let bot = FakeBot::spawn(BotConfig {
        secret: Some(Secret::new("s3cret")),
        ..BotConfig::ephemeral()
    })
    .unwrap();
    let mut client = client(&bot, Some("s3cret"));
    for start in (1..=1000).step_by(100) {
        let status = client.post_json(&batch(2, start..=start + 99)).unwrap();
        assert!((200..300).contains(&status), "status {status}");
    }
    assert_eq!(client.connections_opened, 1);
    let report = bot.report();
    let shard = &report.shards[&2];
    assert_eq!(shard.records, 1000);
    assert_eq!(
        (shard.duplicates, shard.gaps, shard.out_of_order),
        (0, 0, 0)
    );
}

#[test]
fn a_wrong_secret_is_401_and_nothing_is_recorded() {
    let bot = FakeBot::spawn(BotConfig {
        secret: Some(Secret::new("s3cret")),
        ..BotConfig::ephemeral()
    })
    .unwrap();
    assert_eq!(
        client(&bot, Some("wrong"))
            .post_json(&batch(0, 1..=3))
            .unwrap(),
        401
    );
    assert_eq!(client(&bot, None).post_json(&batch(0, 1..=3)).unwrap(), 401);
    assert_eq!(bot.report().totals.records, 0);
}

#[test]
fn failures_are_statuses_and_a_gone_bot_is_an_error_then_recovers() {
    let bot = FakeBot::spawn(BotConfig::ephemeral()).unwrap();
    let mut client = client(&bot, None);
    bot.set_fail_rate(1.0);
    let status = client.post_json(&batch(1, 1..=2)).unwrap();
    assert!(status == 500 || status == 503, "status {status}");
    bot.set_fail_rate(0.0);
    bot.refuse_for(Duration::from_millis(1500));
    // While the bot is away: connection errors, never a panic or a fake success.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut saw_error = false;
    loop {
        match client.post_json(&batch(1, 1..=2)) {
            Err(_) => saw_error = true,
            Ok(status) if saw_error && (200..300).contains(&status) => break,
            Ok(_) => {}
        }
        assert!(std::time::Instant::now() < deadline, "bot never came back");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(saw_error);
    assert!(client.connections_opened >= 2);
    // Every delivered copy was the same two records (retries may repeat them, never lose them).
    assert_eq!(bot.report().shards[&1].runs[0].ranges, vec![[1, 2]]);
}
