//! The forwarding contract from the bot's side, over real sockets on 127.0.0.1: auth, sequence
//! tracking, notices, deliberate failures, refusal windows, malformed and oversized bodies, the
//! control endpoint and the report's JSON.
//!
//! Must not: assert timings. Every wait is a bounded poll of a condition.

mod common;

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::time::Duration;

use bytes::Bytes;
use common::{batch, dispatch, messages, notice, ready, within};
use fake_bot::client::Answer;
use fake_bot::{BotClient, BotConfig, ClientError, Control, FakeBot, Report, Secret};
use http_body_util::Full;
use hyper::{Request, StatusCode};
use tokio::net::TcpStream;

async fn start(config: BotConfig) -> (FakeBot, BotClient) {
    let bot = FakeBot::start(config).await.expect("bot starts");
    let client = BotClient::connect(bot.addr())
        .await
        .expect("client connects");
    (bot, client)
}

async fn post(client: &mut BotClient, body: String) -> Answer {
    client
        .post_batch("/events", None, body)
        .await
        .expect("exchange")
}

fn reason(answer: &Answer) -> serde_json::Value {
    serde_json::from_slice(&answer.body).expect("a JSON reason")
}

#[tokio::test]
async fn missing_or_wrong_secret_is_401_and_not_recorded() {
    let secret = Secret::new("s3cret");
    let (bot, mut client) = start(BotConfig {
        secret: Some(secret.clone()),
        ..BotConfig::ephemeral()
    })
    .await;
    let body = messages(0, 1..=3);
    for presented in [
        None,
        Some(Secret::new("wrong")),
        Some(Secret::new("Bearer s3cret")),
    ] {
        let answer = client
            .post_batch("/events", presented.as_ref(), body.clone())
            .await
            .unwrap();
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{presented:?}");
        assert_eq!(reason(&answer)["error"], "unauthorized");
    }
    let report = bot.report();
    assert_eq!(report.totals.unauthorized, 3);
    assert_eq!((report.totals.batches_ok, report.totals.records), (0, 0));
    assert!(report.shards.is_empty());

    let answer = client
        .post_batch("/events", Some(&secret), body)
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::NO_CONTENT);
    let report = bot.report();
    assert_eq!((report.totals.batches_ok, report.totals.records), (1, 3));
}

#[tokio::test]
async fn ordered_batches_have_no_gaps_or_duplicates() {
    let (bot, mut client) = start(BotConfig::ephemeral()).await;
    let mut payload_bytes = 0;
    for batch_index in 0..10_u64 {
        for shard_id in [0_u32, 1, 7] {
            let first = batch_index * 50 + 1;
            payload_bytes += (first..first + 50)
                .map(|seq| common::payload("MESSAGE_CREATE", seq).len() as u64)
                .sum::<u64>();
            let answer = post(&mut client, messages(shard_id, first..first + 50)).await;
            assert_eq!(answer.status, StatusCode::NO_CONTENT);
        }
    }
    let report = bot.report();
    assert!(report.is_clean(), "{:?}", report.totals);
    assert_eq!(report.totals.batches_ok, 30);
    assert_eq!(report.totals.records, 1500);
    assert_eq!(report.totals.bytes, payload_bytes);
    assert_eq!(report.shards.keys().copied().collect::<Vec<_>>(), [0, 1, 7]);
    for shard in report.shards.values() {
        assert_eq!(shard.records, 500);
        assert_eq!(
            shard.by_type,
            BTreeMap::from([("MESSAGE_CREATE".to_owned(), 500)])
        );
        assert_eq!(shard.runs.len(), 1);
        let run = &shard.runs[0];
        assert_eq!((run.first_seq, run.max_seq, run.received), (1, 500, 500));
        assert_eq!(run.ranges, vec![[1, 500]]);
    }
}

#[tokio::test]
async fn a_duplicate_an_out_of_order_seq_and_a_gap_are_each_counted_exactly() {
    let (bot, mut client) = start(BotConfig::ephemeral()).await;
    assert_eq!(
        post(&mut client, messages(4, [1, 2, 3])).await.status,
        StatusCode::NO_CONTENT
    );
    // 3 again (duplicate), 5, then 4 (out of order), then 8 (6 and 7 missing).
    assert_eq!(
        post(&mut client, messages(4, [3, 5, 4, 8])).await.status,
        StatusCode::NO_CONTENT
    );
    let report = bot.report();
    let shard = &report.shards[&4];
    assert_eq!(
        (shard.duplicates, shard.out_of_order, shard.gaps),
        (1, 1, 2)
    );
    assert_eq!(
        (
            report.totals.duplicates,
            report.totals.out_of_order,
            report.totals.gaps
        ),
        (1, 1, 2)
    );
    assert_eq!(shard.records, 7);
    let run = &shard.runs[0];
    assert_eq!(run.ranges, vec![[1, 5], [8, 8]]);
    assert_eq!(run.missing(), vec![[6, 7]]);
    assert_eq!((run.received, run.distinct()), (7, 6));
    assert!(!report.is_clean());
}

#[tokio::test]
async fn ready_starts_a_new_run() {
    let (bot, mut client) = start(BotConfig::ephemeral()).await;
    let first_session = batch(&[
        ready(2, 1, "aaa"),
        dispatch(2, "GUILD_CREATE", 2),
        dispatch(2, "MESSAGE_CREATE", 3),
    ]);
    let second_session = batch(&[ready(2, 1, "bbb"), dispatch(2, "GUILD_CREATE", 2)]);
    for body in [first_session, second_session.clone()] {
        assert_eq!(post(&mut client, body).await.status, StatusCode::NO_CONTENT);
    }
    let report = bot.report();
    assert!(report.is_clean(), "{:?}", report.totals);
    let shard = &report.shards[&2];
    let runs: Vec<(Option<&str>, Vec<[u64; 2]>)> = shard
        .runs
        .iter()
        .map(|run| (run.session_id.as_deref(), run.ranges.clone()))
        .collect();
    assert_eq!(
        runs,
        vec![(Some("aaa"), vec![[1, 3]]), (Some("bbb"), vec![[1, 2]])]
    );
    assert_eq!(shard.by_type["READY"], 2);

    // The same READY again (a redelivery, not a new session) is a duplicate in the same run.
    assert_eq!(
        post(&mut client, second_session).await.status,
        StatusCode::NO_CONTENT
    );
    let shard = &bot.report().shards[&2];
    assert_eq!(shard.runs.len(), 2);
    assert_eq!(shard.duplicates, 2);
}

#[tokio::test]
async fn notices_are_counted_not_sequenced() {
    let (bot, mut client) = start(BotConfig::ephemeral()).await;
    let body = batch(&[
        notice(Some(3), "SHARD_READY"),
        dispatch(0, "MESSAGE_CREATE", 1),
        notice(Some(0), "SHARD_READY"),
        notice(None, "ALL_SHARDS_READY"),
        dispatch(0, "MESSAGE_CREATE", 2),
        notice(Some(3), "SHARD_RESUMED"),
    ]);
    assert_eq!(post(&mut client, body).await.status, StatusCode::NO_CONTENT);
    let report = bot.report();
    assert!(report.is_clean());
    assert_eq!(report.totals.records, 2);
    assert_eq!(
        report.totals.notices,
        BTreeMap::from([
            ("ALL_SHARDS_READY".to_owned(), 1),
            ("SHARD_READY".to_owned(), 2),
            ("SHARD_RESUMED".to_owned(), 1),
        ])
    );
    let shard_3 = &report.shards[&3];
    assert_eq!((shard_3.records, shard_3.runs.len()), (0, 0));
    assert_eq!(
        shard_3.notices,
        BTreeMap::from([
            ("SHARD_READY".to_owned(), 1),
            ("SHARD_RESUMED".to_owned(), 1)
        ])
    );
    assert_eq!(report.shards[&0].runs[0].ranges, vec![[1, 2]]);
}

#[tokio::test]
async fn fail_rate_one_answers_5xx_and_records_nothing() {
    let (bot, mut client) = start(BotConfig {
        fail_rate: 1.0,
        seed: Some(7),
        ..BotConfig::ephemeral()
    })
    .await;
    let body = batch(&[
        ready(0, 1, "s"),
        dispatch(0, "MESSAGE_CREATE", 2),
        notice(Some(0), "SHARD_READY"),
    ]);
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let status = post(&mut client, body.clone()).await.status;
        assert!(
            status == StatusCode::INTERNAL_SERVER_ERROR
                || status == StatusCode::SERVICE_UNAVAILABLE,
            "{status}"
        );
        statuses.push(status);
    }
    assert!(statuses.contains(&StatusCode::INTERNAL_SERVER_ERROR));
    assert!(statuses.contains(&StatusCode::SERVICE_UNAVAILABLE));
    let report = bot.report();
    assert_eq!(report.totals.batches_failed_deliberately, 20);
    assert_eq!((report.totals.batches_ok, report.totals.records), (0, 0));
    assert!(report.totals.notices.is_empty());
    assert!(report.shards.is_empty());

    // The engine's retry, once the bot recovers, is recorded exactly once.
    bot.set_fail_rate(0.0);
    assert_eq!(post(&mut client, body).await.status, StatusCode::NO_CONTENT);
    let report = bot.report();
    assert!(report.is_clean());
    assert_eq!((report.totals.batches_ok, report.totals.records), (1, 2));
}

#[tokio::test]
async fn failures_replay_from_the_seed() {
    async fn statuses(seed: u64) -> Vec<StatusCode> {
        let (_bot, mut client) = start(BotConfig {
            fail_rate: 0.5,
            seed: Some(seed),
            ..BotConfig::ephemeral()
        })
        .await;
        let mut statuses = Vec::new();
        for seq in 1..=40 {
            statuses.push(post(&mut client, messages(0, [seq])).await.status);
        }
        statuses
    }
    let first = statuses(99).await;
    assert_eq!(first, statuses(99).await);
    assert!(first.contains(&StatusCode::NO_CONTENT));
    assert!(first.iter().any(|status| status.is_server_error()));
}

/// Polls `connect` until the bot refuses it. Before that, a connect may succeed, or be reset
/// when it sat in the accept queue of the listener being closed.
async fn until_refused(addr: std::net::SocketAddr) {
    within("connection refused", async {
        loop {
            match TcpStream::connect(addr).await {
                Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => return,
                Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {}
                Err(error) => panic!("unexpected connect error: {error}"),
                Ok(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// Polls until the bot listens again; returns a client connected to it.
async fn until_listening(addr: std::net::SocketAddr) -> BotClient {
    within("listening again", async {
        loop {
            match BotClient::connect(addr).await {
                Ok(client) => return client,
                Err(ClientError::Connect { source, .. })
                    if source.kind() == std::io::ErrorKind::ConnectionRefused =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(error) => panic!("unexpected error: {error}"),
            }
        }
    })
    .await
}

async fn until_closed(client: &BotClient) {
    within("keep-alive connection closed by the bot", async {
        while !client.is_closed() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn refuse_for_refuses_connections_during_the_window_and_accepts_after() {
    let (bot, mut client) = start(BotConfig::ephemeral()).await;
    let addr = bot.addr();
    assert_eq!(
        post(&mut client, messages(0, 1..=10)).await.status,
        StatusCode::NO_CONTENT
    );
    let idle = BotClient::connect(addr).await.unwrap();

    bot.refuse_for(Duration::from_secs(4));
    until_closed(&client).await;
    until_closed(&idle).await;
    until_refused(addr).await;

    let mut client = until_listening(addr).await;
    assert_eq!(
        post(&mut client, messages(0, 11..=20)).await.status,
        StatusCode::NO_CONTENT
    );
    let report = bot.report();
    assert!(report.is_clean());
    assert_eq!(report.shards[&0].runs[0].ranges, vec![[1, 20]]);
}

#[tokio::test]
async fn control_refuse_answers_first_then_goes_away() {
    let (bot, mut client) = start(BotConfig::ephemeral()).await;
    let addr = bot.addr();
    let knobs = client
        .control(&Control {
            refuse_for_ms: Some(4_000),
            ..Control::default()
        })
        .await
        .expect("the control request is answered before the bot goes away");
    assert_eq!(knobs, bot.knobs());
    until_closed(&client).await;
    until_refused(addr).await;
    let mut client = until_listening(addr).await;
    assert_eq!(
        post(&mut client, messages(0, [1])).await.status,
        StatusCode::NO_CONTENT
    );
}

#[tokio::test]
async fn refuse_after_ms_goes_away_once_by_itself() {
    let bot = FakeBot::start(BotConfig {
        refuse_after_ms: Some(200),
        refuse_for_ms: 4_000,
        ..BotConfig::ephemeral()
    })
    .await
    .unwrap();
    until_refused(bot.addr()).await;
    let mut client = until_listening(bot.addr()).await;
    assert_eq!(
        post(&mut client, messages(0, [1])).await.status,
        StatusCode::NO_CONTENT
    );
}

#[tokio::test]
async fn malformed_bodies_are_400_and_not_recorded() {
    let (bot, mut client) = start(BotConfig::ephemeral()).await;
    let cases = [
        ("not json".to_owned(), "not a JSON array"),
        (r#"{"shard_id":0}"#.to_owned(), "not a JSON array"),
        (
            batch(&[
                dispatch(0, "MESSAGE_CREATE", 1),
                r#"{"shard_id":0,"payload":{"t":"X","op":0}}"#.to_owned(),
            ]),
            "envelope 1: payload has no integer \"s\"",
        ),
        (
            batch(&[r#"{"shard_id":0,"payload":{"t":"X","s":1,"op":1}}"#.to_owned()]),
            "envelope 0: payload has op Some(1)",
        ),
        (
            batch(&[r#"{"payload":{"t":"X","s":1,"op":0}}"#.to_owned()]),
            "envelope 0: no integer \"shard_id\"",
        ),
    ];
    for (body, expected) in &cases {
        let answer = post(&mut client, body.clone()).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{body}");
        let reason = reason(&answer);
        assert_eq!(reason["error"], "bad_batch");
        let text = reason["reason"].as_str().expect("reason is a string");
        assert!(
            text.contains(expected),
            "{text:?} should contain {expected:?}"
        );
    }
    // The wrong content type is refused too.
    let request = Request::post("/events")
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from(messages(0, [1]))))
        .unwrap();
    let answer = client.send(request).await.unwrap();
    assert_eq!(answer.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let report = bot.report();
    assert_eq!(report.totals.bad_batches, cases.len() as u64 + 1);
    assert_eq!((report.totals.batches_ok, report.totals.records), (0, 0));
    assert!(report.shards.is_empty());
}

#[tokio::test]
async fn oversized_bodies_are_413_declared_or_streamed() {
    let (bot, mut client) = start(BotConfig {
        max_body_bytes: 1024,
        ..BotConfig::ephemeral()
    })
    .await;
    let big = messages(0, 1..=50);
    assert!(big.len() > 1024);
    assert_eq!(
        post(&mut client, big.clone()).await.status,
        StatusCode::PAYLOAD_TOO_LARGE
    );

    // Chunked, so the size is only known while reading.
    let addr = bot.addr();
    let status_line = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(common::WAIT_MAX)).unwrap();
        let head = "POST /events HTTP/1.1\r\nHost: bot\r\nContent-Type: application/json\r\n\
                    Transfer-Encoding: chunked\r\n\r\n";
        let chunk = format!("{:x}\r\n{big}\r\n0\r\n\r\n", big.len());
        stream.write_all(head.as_bytes()).unwrap();
        // The bot may answer and close before the whole chunk is written.
        let _ = stream.write_all(chunk.as_bytes());
        let mut answer = [0_u8; 12];
        stream.read_exact(&mut answer).unwrap();
        String::from_utf8_lossy(&answer).into_owned()
    })
    .await
    .unwrap();
    assert_eq!(status_line, "HTTP/1.1 413");

    let report = bot.report();
    assert_eq!(report.totals.oversized_batches, 2);
    assert_eq!(report.totals.records, 0);
    assert_eq!(
        post(&mut client, messages(0, [1])).await.status,
        StatusCode::NO_CONTENT
    );
}

#[tokio::test]
async fn control_changes_knobs_and_resets() {
    let (bot, mut client) = start(BotConfig::ephemeral()).await;
    assert_eq!(
        post(&mut client, messages(0, 1..=5)).await.status,
        StatusCode::NO_CONTENT
    );

    let knobs = client
        .control(&Control {
            fail_rate: Some(1.0),
            slow_ms: Some(1),
            ..Control::default()
        })
        .await
        .unwrap();
    assert_eq!((knobs.fail_rate, knobs.slow_ms), (1.0, 1));
    assert!(
        post(&mut client, messages(0, [6]))
            .await
            .status
            .is_server_error()
    );

    client
        .control(&Control {
            fail_rate: Some(0.0),
            slow_ms: Some(0),
            reset: true,
            ..Control::default()
        })
        .await
        .unwrap();
    let report = client.report().await.unwrap();
    assert_eq!(report.totals, fake_bot::Totals::default());
    assert!(report.shards.is_empty());

    for bad in [r#"{"fail_rate":2}"#, r#"{"bogus":1}"#, "nope"] {
        let request = Request::post("/_bot/control")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(bad)))
            .unwrap();
        let answer = client.send(request).await.unwrap();
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(reason(&answer)["error"], "bad_control");
    }
    assert_eq!(bot.knobs().fail_rate, 0.0);

    let request = Request::get("/_bot/nothing")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(
        client.send(request).await.unwrap().status,
        StatusCode::NOT_FOUND
    );
    let request = Request::get("/events")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(
        client.send(request).await.unwrap().status,
        StatusCode::METHOD_NOT_ALLOWED
    );
}

#[tokio::test]
async fn report_json_round_trips_through_the_public_structs() {
    let (bot, mut client) = start(BotConfig {
        seed: Some(1234),
        ..BotConfig::ephemeral()
    })
    .await;
    for shard_id in [10, 2, 0] {
        let body = batch(&[
            ready(shard_id, 1, &format!("session-{shard_id}")),
            dispatch(shard_id, "GUILD_CREATE", 2),
            dispatch(shard_id, "MESSAGE_CREATE", 4),
            dispatch(shard_id, "MESSAGE_CREATE", 4),
            notice(Some(shard_id), "SHARD_READY"),
        ]);
        assert_eq!(post(&mut client, body).await.status, StatusCode::NO_CONTENT);
    }
    let request = Request::get("/_bot/report")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let answer = client.send(request).await.unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    let text = std::str::from_utf8(&answer.body).unwrap();
    let parsed: Report = serde_json::from_str(text).unwrap();
    assert_eq!(parsed, bot.report());
    assert_eq!(parsed.seed, 1234);
    assert_eq!((parsed.totals.duplicates, parsed.totals.gaps), (3, 3));
    // Shard ids are string keys in numeric order.
    let positions: Vec<usize> = ["\"0\":", "\"2\":", "\"10\":"]
        .iter()
        .map(|key| text.find(key).unwrap_or_else(|| panic!("{key} in {text}")))
        .collect();
    assert!(positions.is_sorted(), "{positions:?}");
    let again: Report = serde_json::from_str(&serde_json::to_string(&parsed).unwrap()).unwrap();
    assert_eq!(again, parsed);
}

#[test]
fn spawn_serves_callers_without_a_runtime() {
    let bot = FakeBot::spawn(BotConfig::ephemeral()).expect("bot starts on its own thread");
    let addr = bot.addr();
    assert_eq!(bot.url(), format!("http://{addr}/events"));
    let (status, _) = common::blocking_request(
        addr,
        "POST",
        "/anything",
        &[("Content-Type", "application/json; charset=utf-8")],
        &messages(5, 1..=3),
    );
    assert_eq!(status, 204);
    let (status, body) = common::blocking_request(addr, "GET", "/_bot/report", &[], "");
    assert_eq!(status, 200);
    let report: Report = serde_json::from_str(&body).unwrap();
    assert_eq!(report.shards[&5].runs[0].ranges, vec![[1, 3]]);
    assert_eq!(report, bot.report());
    bot.shutdown();
    // shutdown() waited for the thread: the listener is gone.
    let error = std::net::TcpStream::connect(addr).expect_err("nobody listens after shutdown");
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[tokio::test]
async fn starting_on_a_busy_port_is_an_error() {
    let bot = FakeBot::start(BotConfig::ephemeral()).await.unwrap();
    let error = FakeBot::start(BotConfig {
        listen: bot.addr(),
        ..BotConfig::default()
    })
    .await
    .expect_err("the port is taken");
    assert!(error.to_string().contains("cannot listen on"), "{error:#}");
    let invalid = FakeBot::start(BotConfig {
        fail_rate: 2.0,
        ..BotConfig::ephemeral()
    })
    .await
    .expect_err("fail_rate is checked");
    assert_eq!(
        invalid.downcast_ref::<fake_bot::ConfigError>(),
        Some(&fake_bot::ConfigError::FailRateOutOfRange(2.0))
    );
}
