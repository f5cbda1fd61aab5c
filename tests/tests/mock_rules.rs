//! The mock gateway's rules, seen from a raw client that does exactly what each test says,
//! right or wrong. Every test asserts both what the client sees (close code, op 9, dispatches)
//! and what the mock's ledger recorded (violation kind, counters).
//!
//! Each test runs its own mock on free ports with short windows; every wait is bounded.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mock_gateway::{Fault, Ledger, MockConfig, MockGateway, ViolationKind};
use serde_json::{Value, json};
use shardgate_tests::raw::{Compression, Msg, RawClient, Received, identify_payload};
use shardgate_tests::{TestMock, owned_guilds, rest, top_level_keys, wait_until};

/// GUILDS | GUILD_MESSAGES: no privileged intent.
const INTENTS: u64 = 1 | (1 << 9);

fn spawn(config: MockConfig) -> TestMock {
    TestMock::spawn(config)
}

/// Short windows, a slow steady stream, small guilds, a fixed seed.
fn quick() -> MockConfig {
    MockConfig {
        seed: Some(0x5eed),
        guilds: 6,
        heartbeat_interval_ms: 5000,
        identify_window_ms: 2000,
        rate: 50.0,
        guild_create_bytes: 0,
        ..MockConfig::default()
    }
}

/// Connects, reads HELLO, identifies as `shard` and reads READY (the first message after it).
async fn identified(
    mock: &MockGateway,
    compression: Compression,
    shard: [u32; 2],
) -> (RawClient, Msg) {
    let mut client = RawClient::connect(mock.ws_url(), compression).await;
    client.hello().await;
    client.identify(mock.token(), shard, INTENTS).await;
    let ready = client.next_msg().await;
    assert_eq!(ready.t(), Some("READY"), "{:?}", ready.value);
    (client, ready)
}

/// Reads until the first steady-stream dispatch (after READY and the GUILD_CREATE backfill);
/// returns its sequence.
async fn past_backfill(client: &mut RawClient) -> u64 {
    let seen = client
        .read_until(Duration::from_secs(5), |m| {
            m.is_dispatch() && !matches!(m.t(), Some("READY" | "GUILD_CREATE"))
        })
        .await;
    seen.last()
        .and_then(Msg::s)
        .expect("a steady dispatch has s")
}

/// The client sees close `code`, and the ledger holds exactly one violation: `kind`, answered
/// with `code`.
async fn assert_violation_close(
    mock: &MockGateway,
    client: &mut RawClient,
    code: u16,
    kind: ViolationKind,
) {
    assert_eq!(client.expect_close().await, code, "close code");
    let ledger = mock.ledger();
    assert_eq!(ledger.violations.len(), 1, "{:#?}", ledger.violations);
    let violation = &ledger.violations[0];
    assert_eq!(violation.kind, kind, "{violation:?}");
    assert_eq!(violation.close_code, Some(code), "{violation:?}");
}

fn op9_false(msg: &Msg) {
    assert_eq!(msg.op(), 9, "expected op 9, got {:?}", msg.value);
    assert_eq!(msg.d(), &json!(false), "op 9 must say d: false");
}

// ---------------------------------------------------------------------------------------------
// Identify limits
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn identify_too_fast_gets_invalid_session() {
    let mock = spawn(MockConfig {
        max_concurrency: 1,
        ..quick()
    });
    let (_first, _) = identified(&mock, Compression::None, [0, 2]).await;
    // Shard 1 is in the same bucket (1 % 1 == 0), within the window.
    let mut second = RawClient::connect(mock.ws_url(), Compression::None).await;
    second.hello().await;
    second.identify(mock.token(), [1, 2], INTENTS).await;
    op9_false(&second.next_msg().await);

    let ledger = mock.ledger();
    assert_eq!(ledger.violations.len(), 1, "{:#?}", ledger.violations);
    let violation = &ledger.violations[0];
    assert_eq!(violation.kind, ViolationKind::IdentifyTooFast);
    assert_eq!(violation.shard, Some(1));
    assert_eq!(violation.close_code, None);
    assert_eq!(ledger.identifies_total, 1);
}

#[tokio::test]
async fn max_concurrency_two_allows_two_identifies_at_once() {
    let mock = spawn(MockConfig {
        max_concurrency: 2,
        ..quick()
    });
    let (_first, _) = identified(&mock, Compression::None, [0, 2]).await;
    let (_second, _) = identified(&mock, Compression::None, [1, 2]).await;
    let ledger = mock.ledger();
    assert!(ledger.violations.is_empty(), "{:#?}", ledger.violations);
    assert_eq!(ledger.identifies_total, 2);
    assert_eq!(ledger.shards[&0].identifies, 1);
    assert_eq!(ledger.shards[&1].identifies, 1);
}

#[tokio::test]
async fn last_session_start_resets_the_token() {
    let mock = spawn(MockConfig {
        session_start_remaining: Some(1),
        identify_window_ms: 300,
        ..quick()
    });
    let auth = format!("Bot {}", mock.token());
    let bot = rest::get(mock.http_base(), "/api/v10/gateway/bot", Some(&auth)).await;
    assert_eq!(bot.json()["session_start_limit"]["remaining"], 1);

    let (mut first, _) = identified(&mock, Compression::None, [0, 1]).await;
    let bot = rest::get(mock.http_base(), "/api/v10/gateway/bot", Some(&auth)).await;
    assert_eq!(bot.json()["session_start_limit"]["remaining"], 0);

    // Past the identify window, so the only rule broken is the exhausted budget.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut second = RawClient::connect(mock.ws_url(), Compression::None).await;
    second.hello().await;
    second.identify(mock.token(), [0, 1], INTENTS).await;
    assert_eq!(second.expect_close().await, 4004);
    // Every session of the bot goes down with the token.
    assert_eq!(first.expect_close().await, 4004);

    let ledger = mock.ledger();
    assert_eq!(ledger.token_resets, 1);
    assert_eq!(ledger.violations.len(), 1, "{:#?}", ledger.violations);
    assert_eq!(ledger.violations[0].kind, ViolationKind::TokenReset);
    assert_eq!(ledger.violations[0].close_code, Some(4004));
    assert_eq!(ledger.identifies_total, 1);

    // The old token is dead for REST too.
    let bot = rest::get(mock.http_base(), "/api/v10/gateway/bot", Some(&auth)).await;
    assert_eq!(bot.status, 401, "{}", bot.body);
}

/// Sessions closed by a token reset (4004 broadcast) are marked ended in the ledger.
#[tokio::test]
async fn token_reset_ends_the_sessions_in_the_ledger() {
    let mock = spawn(MockConfig {
        session_start_remaining: Some(1),
        identify_window_ms: 300,
        ..quick()
    });
    let (mut first, _) = identified(&mock, Compression::None, [0, 1]).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut second = RawClient::connect(mock.ws_url(), Compression::None).await;
    second.hello().await;
    second.identify(mock.token(), [0, 1], INTENTS).await;
    assert_eq!(second.expect_close().await, 4004);
    assert_eq!(first.expect_close().await, 4004);
    let ledger = mock.ledger();
    assert_eq!(
        ledger.shards[&0].sessions[0].ended.as_deref(),
        Some("token_reset")
    );
}

// ---------------------------------------------------------------------------------------------
// Send limits and malformed payloads
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn send_limit_allows_120_and_closes_the_121st_with_4008() {
    let mock = spawn(quick());
    let (mut client, _) = identified(&mock, Compression::None, [0, 1]).await;
    // The identify plus 119 heartbeats: 120 payloads in the window, all fine.
    for _ in 0..119 {
        client.heartbeat(None).await;
    }
    let mut acks = 0;
    client
        .read_until(Duration::from_secs(5), |m| {
            acks += u64::from(m.op() == 11);
            acks == 119
        })
        .await;
    let ledger = mock.ledger();
    assert!(ledger.violations.is_empty(), "{:#?}", ledger.violations);
    assert_eq!(ledger.shards[&0].heartbeats, 119);

    client.heartbeat(None).await;
    assert_violation_close(&mock, &mut client, 4008, ViolationKind::SendRateExceeded).await;
    assert!(mock.ledger().violations[0].detail.contains("121"));
}

#[tokio::test]
async fn payload_of_4096_bytes_is_fine_and_5000_bytes_closes_4002() {
    let mock = spawn(quick());
    let mut client = RawClient::connect(mock.ws_url(), Compression::None).await;
    client.hello().await;
    let padded = |size: usize| {
        let head = r#"{"op":1,"d":null,"pad":""#;
        let pad = "x".repeat(size - head.len() - 2);
        format!("{head}{pad}\"}}")
    };
    let exact = padded(4096);
    assert_eq!(exact.len(), 4096);
    client.send_raw(exact).await;
    assert_eq!(client.next_msg().await.op(), 11);

    client.send_raw(padded(5000)).await;
    assert_violation_close(&mock, &mut client, 4002, ViolationKind::PayloadTooLarge).await;
}

#[tokio::test]
async fn invalid_json_closes_4002() {
    let mock = spawn(quick());
    let mut client = RawClient::connect(mock.ws_url(), Compression::None).await;
    client.hello().await;
    client.send_raw(r#"{"op":1,"d":nul"#).await;
    assert_violation_close(&mock, &mut client, 4002, ViolationKind::InvalidPayload).await;
}

#[tokio::test]
async fn unknown_opcode_closes_4001() {
    let mock = spawn(quick());
    let (mut client, _) = identified(&mock, Compression::None, [0, 1]).await;
    client.send(&json!({"op": 99, "d": null})).await;
    assert_violation_close(&mock, &mut client, 4001, ViolationKind::UnknownOpcode).await;
}

#[tokio::test]
async fn receive_only_opcode_from_the_client_closes_4001() {
    let mock = spawn(quick());
    let (mut client, _) = identified(&mock, Compression::None, [0, 1]).await;
    client.send(&json!({"op": 11, "d": null})).await;
    assert_violation_close(&mock, &mut client, 4001, ViolationKind::UnknownOpcode).await;
}

#[tokio::test]
async fn command_before_identify_closes_4003() {
    let mock = spawn(quick());
    let mut client = RawClient::connect(mock.ws_url(), Compression::None).await;
    client.hello().await;
    client
        .send(&json!({"op": 3, "d": {"since": null, "activities": [], "status": "online", "afk": false}}))
        .await;
    assert_violation_close(&mock, &mut client, 4003, ViolationKind::NotAuthenticated).await;
}

#[tokio::test]
async fn second_identify_closes_4005() {
    let mock = spawn(quick());
    let (mut client, _) = identified(&mock, Compression::None, [0, 1]).await;
    client.identify(mock.token(), [0, 1], INTENTS).await;
    assert_violation_close(
        &mock,
        &mut client,
        4005,
        ViolationKind::AlreadyAuthenticated,
    )
    .await;
    assert_eq!(mock.ledger().identifies_total, 1);
}

#[tokio::test]
async fn wrong_token_closes_4004() {
    let mock = spawn(quick());
    let mut client = RawClient::connect(mock.ws_url(), Compression::None).await;
    client.hello().await;
    client.identify("not-the-token", [0, 1], INTENTS).await;
    assert_violation_close(
        &mock,
        &mut client,
        4004,
        ViolationKind::AuthenticationFailed,
    )
    .await;
    assert_eq!(mock.ledger().identifies_total, 0);
}

#[tokio::test]
async fn shard_out_of_range_closes_4010() {
    let mock = spawn(quick());
    let mut client = RawClient::connect(mock.ws_url(), Compression::None).await;
    client.hello().await;
    client.identify(mock.token(), [5, 2], INTENTS).await;
    assert_violation_close(&mock, &mut client, 4010, ViolationKind::InvalidShard).await;
}

#[tokio::test]
async fn too_many_guilds_for_one_shard_closes_4011() {
    let mock = spawn(MockConfig {
        guilds: 30,
        max_guilds_per_shard: 10,
        ..quick()
    });
    let mut client = RawClient::connect(mock.ws_url(), Compression::None).await;
    client.hello().await;
    client.identify(mock.token(), [0, 1], INTENTS).await;
    assert_violation_close(&mock, &mut client, 4011, ViolationKind::ShardingRequired).await;
    assert_eq!(mock.ledger().identifies_total, 0);
}

#[tokio::test]
async fn unknown_intent_bit_closes_4013() {
    let mock = spawn(quick());
    let mut client = RawClient::connect(mock.ws_url(), Compression::None).await;
    client.hello().await;
    client.identify(mock.token(), [0, 1], 1 << 30).await;
    assert_violation_close(&mock, &mut client, 4013, ViolationKind::InvalidIntents).await;
}

#[tokio::test]
async fn privileged_intent_not_enabled_closes_4014() {
    let mock = spawn(MockConfig {
        allowed_privileged_intents: 0,
        ..quick()
    });
    let mut client = RawClient::connect(mock.ws_url(), Compression::None).await;
    client.hello().await;
    client.identify(mock.token(), [0, 1], 1 << 1).await;
    assert_violation_close(&mock, &mut client, 4014, ViolationKind::DisallowedIntents).await;
}

#[tokio::test]
async fn api_version_9_closes_4012() {
    let mock = spawn(quick());
    let mut client =
        RawClient::connect_query(mock.ws_url(), "v=9&encoding=json", Compression::None).await;
    assert_violation_close(&mock, &mut client, 4012, ViolationKind::InvalidApiVersion).await;
}

#[tokio::test]
async fn unsupported_encoding_closes_4002() {
    let mock = spawn(quick());
    let mut client =
        RawClient::connect_query(mock.ws_url(), "v=10&encoding=etf", Compression::None).await;
    assert_violation_close(&mock, &mut client, 4002, ViolationKind::InvalidQuery).await;
}

// ---------------------------------------------------------------------------------------------
// Heartbeats
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn missed_heartbeats_close_4009_and_end_the_session() {
    let mock = spawn(MockConfig {
        heartbeat_interval_ms: 300,
        heartbeat_grace_ms: 200,
        ..quick()
    });
    let (mut client, _) = identified(&mock, Compression::None, [0, 1]).await;
    let code = client
        .recv_until_close(Duration::from_secs(3))
        .await
        .expect("a close frame");
    assert_eq!(code, Some(4009));
    let ledger = mock.ledger();
    assert_eq!(ledger.violations.len(), 1, "{:#?}", ledger.violations);
    assert_eq!(ledger.violations[0].kind, ViolationKind::HeartbeatTimeout);
    assert_eq!(ledger.violations[0].close_code, Some(4009));
    assert_eq!(
        ledger.shards[&0].sessions[0].ended.as_deref(),
        Some("close_4009")
    );
}

#[tokio::test]
async fn heartbeats_every_interval_keep_the_connection_alive() {
    let mock = spawn(MockConfig {
        heartbeat_interval_ms: 300,
        heartbeat_grace_ms: 700,
        ..quick()
    });
    let (mut client, ready) = identified(&mock, Compression::None, [0, 1]).await;
    let mut last = ready.s();
    let mut acks = 0;
    // Eight intervals: 2.4 s, over twice the 1 s the mock allows without a heartbeat.
    for _ in 0..8 {
        client.heartbeat(last).await;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
        while let Some(received) = client
            .recv_timeout(deadline.saturating_duration_since(tokio::time::Instant::now()))
            .await
        {
            match received {
                Received::Message(msg) => {
                    acks += u32::from(msg.op() == 11);
                    last = msg.s().or(last);
                }
                other => panic!("connection must stay up, got {other:?}"),
            }
        }
    }
    assert_eq!(acks, 8);
    let ledger = mock.ledger();
    assert!(ledger.violations.is_empty(), "{:#?}", ledger.violations);
    assert_eq!(ledger.shards[&0].heartbeats, 8);
}

// ---------------------------------------------------------------------------------------------
// REST
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn gateway_bot_needs_the_token_and_reports_limits() {
    let mock = spawn(MockConfig {
        recommended_shards: Some(3),
        max_concurrency: 4,
        session_start_total: 1000,
        ..quick()
    });
    let path = "/api/v10/gateway/bot";
    assert_eq!(rest::get(mock.http_base(), path, None).await.status, 401);
    let wrong = rest::get(mock.http_base(), path, Some("Bot wrong-token")).await;
    assert_eq!(wrong.status, 401);
    let bare = rest::get(mock.http_base(), path, Some(mock.token())).await;
    assert_eq!(
        bare.status, 401,
        "the token without `Bot ` is not an authorization"
    );
    let ledger = mock.ledger();
    assert_eq!(ledger.violations_of(ViolationKind::AuthenticationFailed), 3);

    let auth = format!("Bot {}", mock.token());
    let bot = rest::get(mock.http_base(), path, Some(&auth)).await;
    assert_eq!(bot.status, 200, "{}", bot.body);
    let body = bot.json();
    assert_eq!(body["url"], mock.ws_url());
    assert_eq!(body["shards"], 3);
    let limit = &body["session_start_limit"];
    assert_eq!(limit["total"], 1000);
    assert_eq!(limit["remaining"], 1000);
    assert_eq!(limit["max_concurrency"], 4);
    let reset_after = limit["reset_after"].as_u64().expect("reset_after is ms");
    assert!(
        reset_after > 0 && reset_after <= 86_400_000,
        "{reset_after}"
    );

    // Each identify spends one.
    let (_a, _) = identified(&mock, Compression::None, [0, 3]).await;
    let (_b, _) = identified(&mock, Compression::None, [1, 3]).await;
    let bot = rest::get(mock.http_base(), path, Some(&auth)).await;
    assert_eq!(bot.json()["session_start_limit"]["remaining"], 998);

    let plain = rest::get(mock.http_base(), "/api/v10/gateway", None).await;
    assert_eq!(plain.status, 200);
    assert_eq!(plain.json()["url"], mock.ws_url());
    // Only the three unauthorised calls above were violations.
    assert_eq!(mock.ledger().violations.len(), 3);
}

// ---------------------------------------------------------------------------------------------
// A correct client: zero violations, in every compression mode
// ---------------------------------------------------------------------------------------------

/// Checks the envelope of every message: a JSON object whose bytes start with `{"t":` and
/// whose keys are `t, s, op, d` in that order.
fn assert_envelope(msg: &Msg) {
    assert!(
        msg.raw.starts_with(br#"{"t":"#),
        "message does not start with {{\"t\": {:?}",
        String::from_utf8_lossy(&msg.raw[..msg.raw.len().min(80)])
    );
    assert_eq!(
        top_level_keys(&msg.raw),
        ["t", "s", "op", "d"],
        "{:?}",
        msg.value
    );
}

async fn correct_session(compression: Compression, payload_compress: bool) {
    let (shard, total) = (1, 2);
    let mock = spawn(MockConfig {
        seed: Some(11),
        guilds: 12,
        heartbeat_interval_ms: 1000,
        rate: 200.0,
        ..quick()
    });
    let owned = owned_guilds(&mock.guild_ids(), shard, total);
    assert!(
        owned.len() >= 2,
        "seed 11 gives shard 1 some guilds: {owned:?}"
    );

    let mut client = RawClient::connect(mock.ws_url(), compression).await;
    let mut all = Vec::new();
    let hello = client.next_msg().await;
    assert_eq!(hello.op(), 10);
    assert_eq!(hello.d()["heartbeat_interval"], 1000);
    all.push(hello);

    let mut identify = identify_payload(mock.token(), [shard, total], INTENTS);
    if payload_compress {
        identify["compress"] = json!(true);
    }
    client.identify_with(identify).await;

    // READY first, with exactly this shard's guilds as unavailable stubs.
    let ready = client.next_msg().await;
    assert_eq!(ready.t(), Some("READY"));
    assert_eq!(ready.s(), Some(1));
    let d = ready.d();
    assert!(!d["session_id"].as_str().unwrap_or_default().is_empty());
    assert_eq!(d["resume_gateway_url"], mock.resume_ws_url());
    assert_eq!(d["shard"], json!([shard, total]));
    let stubs = d["guilds"].as_array().expect("READY d.guilds");
    let stub_ids: Vec<u64> = stubs
        .iter()
        .map(|g| {
            assert_eq!(g["unavailable"], true, "{g}");
            g["id"]
                .as_str()
                .expect("id string")
                .parse()
                .expect("snowflake")
        })
        .collect();
    assert_eq!(stub_ids, owned);
    all.push(ready);

    // One GUILD_CREATE per guild, then the steady stream, sequences consecutive.
    let mut creates = BTreeSet::new();
    let mut last_seq = 1;
    let mut acked = false;
    let mut heartbeat_sent = false;
    let target = 1 + owned.len() as u64 + 60;
    while last_seq < target || !acked {
        let msg = client.next_msg().await;
        match msg.op() {
            0 => {
                let seq = msg.s().expect("dispatch has s");
                assert_eq!(seq, last_seq + 1, "sequences are consecutive");
                last_seq = seq;
                let backfill = seq <= 1 + owned.len() as u64;
                assert_eq!(
                    msg.t() == Some("GUILD_CREATE"),
                    backfill,
                    "GUILD_CREATEs come right after READY, one per guild: seq {seq} {:?}",
                    msg.t()
                );
                if backfill {
                    let id: u64 = msg.d()["id"].as_str().expect("id").parse().expect("id");
                    assert!(creates.insert(id), "GUILD_CREATE for {id} twice");
                } else if !heartbeat_sent && seq > 1 + owned.len() as u64 + 10 {
                    client.heartbeat(Some(seq)).await;
                    heartbeat_sent = true;
                }
            }
            11 => {
                assert!(heartbeat_sent, "an ACK without a heartbeat");
                acked = true;
            }
            op => panic!("unexpected op {op}: {:?}", msg.value),
        }
        all.push(msg);
    }
    assert_eq!(creates, owned.iter().copied().collect::<BTreeSet<_>>());

    for msg in &all {
        assert_envelope(msg);
    }
    let is_create = |m: &&Msg| m.t() == Some("GUILD_CREATE");
    match (compression, payload_compress) {
        (Compression::None, false) => assert!(all.iter().all(|m| !m.binary)),
        (Compression::None, true) => {
            assert!(
                all.iter().filter(is_create).all(|m| m.binary),
                "big payloads are zlib"
            );
            assert!(all.iter().filter(|m| m.raw.len() >= 1024).all(|m| m.binary));
            let small: Vec<&Msg> = all.iter().filter(|m| m.raw.len() < 1024).collect();
            assert!(!small.is_empty());
            assert!(small.iter().all(|m| !m.binary), "small payloads stay text");
        }
        // Transport compression: every frame binary, `compress: true` ignored.
        _ => assert!(all.iter().all(|m| m.binary)),
    }

    assert_eq!(client.close(1000).await, Some(1000));
    let ledger = mock.ledger();
    assert!(ledger.violations.is_empty(), "{:#?}", ledger.violations);
    let shard_ledger = &ledger.shards[&shard];
    assert_eq!(shard_ledger.identifies, 1);
    assert!(shard_ledger.heartbeats >= 1);
    let session = &shard_ledger.sessions[0];
    assert_eq!(session.by_type["READY"], 1);
    assert_eq!(session.by_type["GUILD_CREATE"], owned.len() as u64);
    assert_eq!(session.first_seq, 1);
    assert!(session.last_seq >= last_seq);
    assert_eq!(session.ended.as_deref(), Some("client_close_1000"));
}

#[tokio::test]
async fn correct_client_no_compression() {
    correct_session(Compression::None, false).await;
}

#[tokio::test]
async fn correct_client_zlib_stream() {
    correct_session(Compression::ZlibStream, false).await;
}

#[tokio::test]
async fn correct_client_zstd_stream() {
    correct_session(Compression::ZstdStream, false).await;
}

#[tokio::test]
async fn correct_client_payload_compression() {
    correct_session(Compression::None, true).await;
}

#[tokio::test]
async fn correct_client_zlib_stream_ignores_payload_compression() {
    correct_session(Compression::ZlibStream, true).await;
}

// ---------------------------------------------------------------------------------------------
// Resume
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn resume_replays_what_was_missed_then_resumed() {
    let mock = spawn(MockConfig {
        rate: 100.0,
        ..quick()
    });
    let (mut client, ready) = identified(&mock, Compression::None, [0, 1]).await;
    let session_id = ready.d()["session_id"]
        .as_str()
        .expect("session_id")
        .to_owned();
    let resume_url = ready.d()["resume_gateway_url"]
        .as_str()
        .expect("url")
        .to_owned();
    assert_eq!(resume_url, mock.resume_ws_url());
    let first_steady = past_backfill(&mut client).await;
    let seen = client
        .read_until(Duration::from_secs(5), |m| {
            m.s().is_some_and(|s| s >= first_steady + 20)
        })
        .await;
    let last = seen.last().and_then(Msg::s).expect("seq");
    // Let more dispatches go out unread, then vanish without a close frame.
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(client);
    assert!(
        wait_until(Duration::from_secs(3), || {
            mock.ledger().shards[&0].client_closes.get("drop") == Some(&1)
        })
        .await,
        "the mock notices the dropped connection"
    );
    let sent = mock.ledger().shards[&0].sessions[0].last_seq;
    assert!(
        sent > last,
        "some dispatches went out unread ({sent} vs {last})"
    );

    let mut client = RawClient::connect(&resume_url, Compression::None).await;
    client.hello().await;
    client.resume(mock.token(), &session_id, last).await;
    let replayed = client
        .read_until(Duration::from_secs(5), |m| m.t() == Some("RESUMED"))
        .await;
    let seqs: Vec<u64> = replayed.iter().filter_map(Msg::s).collect();
    let expected: Vec<u64> = (last + 1..=sent + 1).collect();
    assert_eq!(
        seqs, expected,
        "replay from seq+1, no gap, no duplicate, then RESUMED"
    );
    assert_eq!(
        replayed.len(),
        seqs.len(),
        "nothing but dispatches in the replay"
    );
    // The stream goes on from there.
    let next = client.next_msg().await;
    assert_eq!(next.s(), Some(sent + 2), "{:?}", next.value);

    let ledger = mock.ledger();
    assert!(ledger.violations.is_empty(), "{:#?}", ledger.violations);
    let shard = &ledger.shards[&0];
    assert_eq!(shard.resumes, 1);
    assert_eq!(shard.resumes_via_resume_url, 1);
    assert_eq!(shard.identifies, 1);
    assert_eq!(shard.sessions.len(), 1);
}

#[tokio::test]
async fn resume_of_an_unknown_session_is_invalid() {
    let mock = spawn(quick());
    let mut client = RawClient::connect(mock.resume_ws_url(), Compression::None).await;
    client.hello().await;
    client
        .resume(mock.token(), "00000000000000000000000000000000", 5)
        .await;
    op9_false(&client.next_msg().await);
    let ledger = mock.ledger();
    assert_eq!(ledger.resumes_total, 0);
    assert!(ledger.violations.is_empty(), "{:#?}", ledger.violations);
}

/// Resuming an ended session is answered with op 9 and counted as rejected, per shard and in
/// the total.
#[tokio::test]
async fn resume_of_an_ended_session_is_counted_as_rejected() {
    let mock = spawn(quick());
    let (mut client, ready) = identified(&mock, Compression::None, [0, 1]).await;
    let session_id = ready.d()["session_id"].as_str().expect("id").to_owned();
    let last = past_backfill(&mut client).await;
    assert_eq!(mock.inject_fault(0, Fault::InvalidSession), 1);
    client
        .read_until(Duration::from_secs(5), |m| m.op() == 9)
        .await;
    client.close(4000).await;
    let mut client = RawClient::connect(mock.resume_ws_url(), Compression::None).await;
    client.hello().await;
    client.resume(mock.token(), &session_id, last).await;
    op9_false(&client.next_msg().await);
    let ledger = mock.ledger();
    assert_eq!(ledger.shards[&0].resumes_rejected, 1);
    assert_eq!(ledger.resumes_rejected_total, 1);
}

#[tokio::test]
async fn resume_from_before_the_replay_buffer_is_invalid() {
    let mock = spawn(MockConfig {
        replay_capacity: 256,
        rate: 0.0,
        events_per_shard: 400,
        guilds: 2,
        ..quick()
    });
    let (mut client, ready) = identified(&mock, Compression::None, [0, 1]).await;
    let session_id = ready.d()["session_id"].as_str().expect("id").to_owned();
    let seen = client
        .read_until(Duration::from_secs(10), |m| m.s().is_some_and(|s| s >= 350))
        .await;
    let last = seen.last().and_then(Msg::s).expect("seq");
    drop(client);
    assert!(
        wait_until(Duration::from_secs(3), || {
            mock.ledger().shards[&0].client_closes.get("drop") == Some(&1)
        })
        .await
    );

    let mut stale = RawClient::connect(mock.resume_ws_url(), Compression::None).await;
    stale.hello().await;
    stale.resume(mock.token(), &session_id, 10).await;
    op9_false(&stale.next_msg().await);
    let ledger = mock.ledger();
    assert_eq!(ledger.shards[&0].resumes_rejected, 1);
    assert_eq!(ledger.shards[&0].resumes, 0);
    drop(stale);

    // The session itself is intact: resuming from a kept seq works.
    let mut client = RawClient::connect(mock.resume_ws_url(), Compression::None).await;
    client.hello().await;
    client.resume(mock.token(), &session_id, last).await;
    let first = client.next_msg().await;
    assert_eq!(first.s(), Some(last + 1), "{:?}", first.value);
    client
        .read_until(Duration::from_secs(5), |m| m.t() == Some("RESUMED"))
        .await;
    let ledger = mock.ledger();
    assert_eq!(ledger.shards[&0].resumes, 1);
    assert!(ledger.violations.is_empty(), "{:#?}", ledger.violations);
}

// ---------------------------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn fault_reconnect_sends_op7_and_stops_the_stream() {
    let mock = spawn(MockConfig {
        rate: 100.0,
        ..quick()
    });
    let (mut client, _) = identified(&mock, Compression::None, [0, 1]).await;
    past_backfill(&mut client).await;
    assert_eq!(mock.inject_fault(0, Fault::Reconnect), 1);
    let seen = client
        .read_until(Duration::from_secs(3), |m| m.op() != 0)
        .await;
    let op7 = seen.last().expect("a message");
    assert_eq!(op7.op(), 7, "{:?}", op7.value);
    // Nothing more on this connection.
    assert!(
        client
            .recv_timeout(Duration::from_millis(300))
            .await
            .is_none()
    );
    assert_eq!(client.close(4000).await, Some(4000));
    let ledger = mock.ledger();
    assert_eq!(ledger.shards[&0].faults["reconnect"], 1);
    assert!(ledger.violations.is_empty(), "{:#?}", ledger.violations);
    assert_eq!(ledger.shards[&0].sessions[0].ended, None, "still resumable");
}

#[tokio::test]
async fn fault_close_4000_sends_the_close_frame() {
    let mock = spawn(quick());
    let (mut client, _) = identified(&mock, Compression::None, [0, 1]).await;
    past_backfill(&mut client).await;
    assert_eq!(mock.inject_fault(0, Fault::Close(4000)), 1);
    assert_eq!(client.expect_close().await, 4000);
    let ledger = mock.ledger();
    assert_eq!(ledger.shards[&0].faults["close_4000"], 1);
    assert_eq!(
        ledger.shards[&0].sessions[0].ended, None,
        "4000 keeps the session"
    );
    assert!(ledger.violations.is_empty(), "{:#?}", ledger.violations);
}

#[tokio::test]
async fn fault_invalid_session_ends_the_session() {
    let mock = spawn(quick());
    let (mut client, _) = identified(&mock, Compression::None, [0, 1]).await;
    past_backfill(&mut client).await;
    assert_eq!(mock.inject_fault(0, Fault::InvalidSession), 1);
    let seen = client
        .read_until(Duration::from_secs(3), |m| m.op() != 0)
        .await;
    op9_false(seen.last().expect("a message"));
    assert_eq!(client.close(4000).await, Some(4000));
    let ledger = mock.ledger();
    assert_eq!(
        ledger.shards[&0].sessions[0].ended.as_deref(),
        Some("invalid_session")
    );
    assert_eq!(ledger.shards[&0].faults["invalid_session"], 1);
    assert!(ledger.violations.is_empty(), "{:#?}", ledger.violations);
}

#[tokio::test]
async fn fault_zombie_goes_silent_and_an_undetected_zombie_is_recorded() {
    let mock = spawn(MockConfig {
        heartbeat_interval_ms: 500,
        heartbeat_grace_ms: 10_000,
        zombie_patience_intervals: 5,
        rate: 100.0,
        ..quick()
    });
    let (mut client, _) = identified(&mock, Compression::None, [0, 1]).await;
    past_backfill(&mut client).await;
    assert_eq!(mock.inject_fault(0, Fault::Zombie), 1);
    // Whatever was already on the wire when the fault hit.
    while client
        .recv_timeout(Duration::from_millis(150))
        .await
        .is_some()
    {}
    let before = mock.ledger().dispatches_for(0);
    client.heartbeat(None).await;
    // Two intervals: no ACK, no dispatch, nothing.
    let silence = client.recv_timeout(Duration::from_millis(1000)).await;
    assert!(silence.is_none(), "a zombie says nothing: {silence:?}");
    // Events keep happening (and must be replayed on resume).
    assert!(mock.ledger().dispatches_for(0) > before);
    // Kept open past the patience (5 intervals), the mock gives up: TCP drop, no close frame.
    match client.recv_timeout(Duration::from_secs(4)).await {
        Some(Received::Ended(_)) => {}
        other => panic!("expected the connection to drop, got {other:?}"),
    }
    let ledger = mock.ledger();
    assert_eq!(ledger.violations.len(), 1, "{:#?}", ledger.violations);
    assert_eq!(ledger.violations[0].kind, ViolationKind::ZombieUndetected);
    assert_eq!(ledger.violations[0].shard, Some(0));
    assert_eq!(ledger.shards[&0].faults["zombie"], 1);
}

#[tokio::test]
async fn fault_corrupt_on_zstd_stream_is_a_frame_that_does_not_decode() {
    let mock = spawn(quick());
    let (mut client, _) = identified(&mock, Compression::ZstdStream, [0, 1]).await;
    past_backfill(&mut client).await;
    assert_eq!(mock.inject_fault(0, Fault::Corrupt), 1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match client.recv_timeout(left).await {
            Some(Received::Message(msg)) => assert!(msg.binary),
            Some(Received::Undecodable { binary, error }) => {
                assert!(binary, "zstd-stream frames are binary");
                eprintln!("corrupt zstd-stream frame: {error}");
                break;
            }
            other => panic!("expected an undecodable frame, got {other:?}"),
        }
    }
    assert_eq!(mock.ledger().shards[&0].faults["corrupt"], 1);
}

#[tokio::test]
async fn fault_corrupt_on_text_is_invalid_json() {
    let mock = spawn(quick());
    let (mut client, _) = identified(&mock, Compression::None, [0, 1]).await;
    past_backfill(&mut client).await;
    assert_eq!(mock.inject_fault(0, Fault::Corrupt), 1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match client.recv_timeout(left).await {
            Some(Received::Message(_)) => {}
            Some(Received::Undecodable { binary, .. }) => {
                assert!(!binary);
                break;
            }
            other => panic!("expected an undecodable frame, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn fault_stall_pauses_dispatches_but_not_acks() {
    let mock = spawn(MockConfig {
        stall_ms: 1500,
        rate: 100.0,
        ..quick()
    });
    let (mut client, _) = identified(&mock, Compression::None, [0, 1]).await;
    past_backfill(&mut client).await;
    assert_eq!(mock.inject_fault(0, Fault::Stall), 1);
    while client
        .recv_timeout(Duration::from_millis(100))
        .await
        .is_some()
    {}
    client.heartbeat(None).await;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(900);
    let mut acks = 0;
    while let Some(received) = client
        .recv_timeout(deadline.saturating_duration_since(tokio::time::Instant::now()))
        .await
    {
        match received {
            Received::Message(msg) if msg.op() == 11 => acks += 1,
            other => panic!("nothing but the ACK during a stall, got {other:?}"),
        }
    }
    assert_eq!(acks, 1, "heartbeats are still acknowledged");
    // Then the stream resumes.
    let next = client.next_msg().await;
    assert_eq!(next.op(), 0, "{:?}", next.value);
    let ledger = mock.ledger();
    assert_eq!(ledger.shards[&0].faults["stall"], 1);
    assert!(ledger.violations.is_empty(), "{:#?}", ledger.violations);
}

#[tokio::test]
async fn fault_server_heartbeat_sends_op1() {
    let mock = spawn(quick());
    let (mut client, _) = identified(&mock, Compression::None, [0, 1]).await;
    let last = past_backfill(&mut client).await;
    assert_eq!(mock.inject_fault(0, Fault::ServerHeartbeat), 1);
    let seen = client
        .read_until(Duration::from_secs(3), |m| m.op() != 0)
        .await;
    let request = seen.last().expect("a message");
    assert_eq!(request.op(), 1, "{:?}", request.value);
    assert_eq!(request.d(), &Value::Null);
    // Answering at once is acknowledged like any heartbeat.
    client.heartbeat(Some(last)).await;
    client
        .read_until(Duration::from_secs(3), |m| m.op() == 11)
        .await;
    assert_eq!(mock.ledger().shards[&0].faults["server_heartbeat"], 1);
}

/// Runs a client that handles op 7 by closing with 4000 and resuming on the resume URL, until
/// the mock's fixed number of steady dispatches has all arrived; returns the final ledger.
async fn run_with_reconnect_faults(seed: u64) -> Ledger {
    let events = 600;
    let mock = spawn(MockConfig {
        seed: Some(seed),
        guilds: 2,
        rate: 0.0,
        events_per_shard: events,
        fault_reconnect: 0.05,
        ..quick()
    });
    let (mut client, ready) = identified(&mock, Compression::None, [0, 1]).await;
    let session_id = ready.d()["session_id"].as_str().expect("id").to_owned();
    let mut last = 1;
    let steady_done = |ledger: &Ledger| {
        let session = &ledger.shards[&0].sessions[0];
        let steady: u64 = session
            .by_type
            .iter()
            .filter(|(name, _)| !matches!(name.as_str(), "READY" | "GUILD_CREATE" | "RESUMED"))
            .map(|(_, count)| count)
            .sum();
        (steady, session.last_seq)
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        assert!(tokio::time::Instant::now() < deadline, "run did not finish");
        match client.recv_timeout(Duration::from_millis(300)).await {
            Some(Received::Message(msg)) => match msg.op() {
                0 => {
                    let seq = msg.s().expect("s");
                    assert_eq!(seq, last + 1, "consecutive across reconnects");
                    last = seq;
                }
                7 => {
                    assert_eq!(client.close(4000).await, Some(4000));
                    client = RawClient::connect(mock.resume_ws_url(), Compression::None).await;
                    client.hello().await;
                    client.resume(mock.token(), &session_id, last).await;
                }
                op => panic!("unexpected op {op}"),
            },
            Some(other) => panic!("unexpected {other:?}"),
            None => {
                let (steady, last_sent) = steady_done(&mock.ledger());
                if steady == events && last_sent == last {
                    break;
                }
            }
        }
    }
    mock.ledger()
}

#[tokio::test]
async fn rate_driven_faults_are_determined_by_the_seed() {
    let first = run_with_reconnect_faults(4242).await;
    let second = run_with_reconnect_faults(4242).await;
    let faults = |ledger: &Ledger| ledger.shards[&0].faults.get("reconnect").copied();
    let count = faults(&first).expect("some reconnect faults fired");
    eprintln!("seed 4242: {count} reconnect faults over 600 dispatches, in both runs");
    assert!(count >= 2, "{count}");
    assert_eq!(faults(&first), faults(&second));
    assert_eq!(first.shards[&0].resumes, count);
    assert_eq!(second.shards[&0].resumes, count);
    assert_eq!(first.dispatches_total, second.dispatches_total);
    assert_eq!(
        first.shards[&0].sessions[0].by_type,
        second.shards[&0].sessions[0].by_type
    );
    assert!(first.violations.is_empty(), "{:#?}", first.violations);
    assert!(second.violations.is_empty(), "{:#?}", second.violations);
}

// ---------------------------------------------------------------------------------------------
// Guild changes
// ---------------------------------------------------------------------------------------------

/// Reads from `client` until dispatches `t` arrived for every id in `expected` (and returns
/// every id seen in such dispatches).
async fn collect_guild_events(
    client: &mut RawClient,
    t: &str,
    expected: &BTreeSet<u64>,
) -> BTreeSet<u64> {
    let mut seen = BTreeSet::new();
    if expected.is_empty() {
        return seen;
    }
    client
        .read_until(Duration::from_secs(5), |m| {
            if m.t() == Some(t) {
                let id: Option<u64> = m.d()["id"].as_str().and_then(|s| s.parse().ok());
                seen.extend(id);
            }
            expected.is_subset(&seen)
        })
        .await;
    seen
}

#[tokio::test]
async fn guild_count_changes_reach_the_owning_shard() {
    let mock = spawn(MockConfig {
        guilds: 10,
        max_concurrency: 2,
        rate: 20.0,
        ..quick()
    });
    let before = mock.guild_ids();
    let mut clients = Vec::new();
    for shard in 0..2 {
        let (mut client, _) = identified(&mock, Compression::None, [shard, 2]).await;
        let owned: BTreeSet<u64> = owned_guilds(&before, shard, 2).into_iter().collect();
        let created = collect_guild_events(&mut client, "GUILD_CREATE", &owned).await;
        assert_eq!(created, owned);
        clients.push(client);
    }

    mock.set_guild_count(20);
    let after = mock.guild_ids();
    assert_eq!(after.len(), 20);
    let added: Vec<u64> = after
        .iter()
        .copied()
        .filter(|g| !before.contains(g))
        .collect();
    assert_eq!(added.len(), 10);
    for (shard, client) in (0..2).zip(clients.iter_mut()) {
        let expected: BTreeSet<u64> = owned_guilds(&added, shard, 2).into_iter().collect();
        let created = collect_guild_events(client, "GUILD_CREATE", &expected).await;
        assert_eq!(
            created, expected,
            "shard {shard} gets exactly its new guilds"
        );
    }

    mock.set_guild_count(5);
    let kept = mock.guild_ids();
    assert_eq!(kept, after[..5]);
    let removed = &after[5..];
    for (shard, client) in (0..2).zip(clients.iter_mut()) {
        let expected: BTreeSet<u64> = owned_guilds(removed, shard, 2).into_iter().collect();
        let deleted = collect_guild_events(client, "GUILD_DELETE", &expected).await;
        assert_eq!(
            deleted, expected,
            "shard {shard} loses exactly its removed guilds"
        );
    }
    let ledger = mock.ledger();
    assert!(ledger.violations.is_empty(), "{:#?}", ledger.violations);
    let deletes: u64 = (0..2)
        .map(|s| {
            ledger.shards[&s].sessions[0]
                .by_type
                .get("GUILD_DELETE")
                .copied()
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(deletes, removed.len() as u64);
}

// ---------------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------------

fn temp_dir(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!(
        "shardgate-tests-{name}-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

async fn tls_connect(
    authority: &str,
    roots: tokio_rustls::rustls::RootCertStore,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use tokio_rustls::rustls::{self, pki_types::ServerName};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let host = authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host);
    let server_name = ServerName::try_from(host.to_owned()).expect("server name");
    let tcp = tokio::net::TcpStream::connect(authority).await?;
    tokio::time::timeout(Duration::from_secs(5), connector.connect(server_name, tcp))
        .await
        .map_err(|_| std::io::Error::other("TLS handshake timed out"))?
}

#[tokio::test]
async fn tls_with_the_written_ca_and_only_with_it() {
    let dir = temp_dir("tls");
    let ca_path = dir.join("ca.pem");
    let mock = spawn(MockConfig {
        tls: true,
        ca_out: Some(ca_path.clone()),
        ..quick()
    });
    assert_eq!(mock.ca_file(), Some(ca_path.as_path()));
    let url = mock.ws_url().to_owned();
    let authority = url
        .strip_prefix("wss://")
        .expect("wss:// with TLS")
        .to_owned();
    assert!(mock.resume_ws_url().starts_with("wss://"));

    let pem = std::fs::read(&ca_path).expect("CA written");
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &pem[..]) {
        roots
            .add(cert.expect("PEM certificate"))
            .expect("CA accepted");
    }
    assert_eq!(roots.len(), 1);
    let tls = tls_connect(&authority, roots)
        .await
        .expect("TLS with the mock's CA");
    let mut client = RawClient::over(
        Box::new(tls),
        &format!("{url}/?{}", Compression::None.query()),
        Compression::None,
    )
    .await
    .expect("WebSocket over TLS");
    assert!(client.hello().await > 0);
    client.identify(mock.token(), [0, 1], INTENTS).await;
    assert_eq!(client.next_msg().await.t(), Some("READY"));

    // The public roots do not vouch for the mock.
    let mut public = tokio_rustls::rustls::RootCertStore::empty();
    public.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let error = tls_connect(&authority, public)
        .await
        .expect_err("no TLS without the mock's CA");
    eprintln!("without the CA: {error}");

    drop(client);
    drop(mock);
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// Request Guild Members
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn request_guild_members_once_per_30s() {
    let mock = spawn(MockConfig {
        rate: 10.0,
        ..quick()
    });
    let (mut client, _) = identified(&mock, Compression::None, [0, 1]).await;
    past_backfill(&mut client).await;
    let guild = mock.guild_ids()[0].to_string();
    let request = |nonce: &str| json!({"op": 8, "d": {"guild_id": guild, "query": "", "limit": 0, "nonce": nonce}});

    client.send(&request("n1")).await;
    let chunk = client.wait_dispatch("GUILD_MEMBERS_CHUNK").await;
    assert_eq!(chunk.d()["guild_id"], guild.as_str());
    assert_eq!(chunk.d()["nonce"], "n1");
    assert!(!chunk.d()["members"].as_array().expect("members").is_empty());
    assert!(mock.ledger().violations.is_empty());

    client.send(&request("n2")).await;
    let limited = client.wait_dispatch("RATE_LIMITED").await;
    let d = limited.d();
    assert_eq!(d["opcode"], 8);
    assert_eq!(d["meta"]["guild_id"], guild.as_str());
    assert_eq!(d["meta"]["nonce"], "n2");
    let retry_after = d["retry_after"].as_f64().expect("retry_after");
    assert!(retry_after > 0.0 && retry_after <= 30.0, "{retry_after}");

    // Without a guild_id: recorded, not closed.
    client
        .send(&json!({"op": 8, "d": {"query": "", "limit": 0}}))
        .await;
    assert!(
        wait_until(Duration::from_secs(2), || {
            mock.ledger().violations_of(ViolationKind::InvalidCommand) == 1
        })
        .await
    );

    let ledger = mock.ledger();
    assert_eq!(ledger.violations.len(), 2, "{:#?}", ledger.violations);
    assert_eq!(
        ledger.violations[0].kind,
        ViolationKind::GuildMembersRateLimited
    );
    assert_eq!(ledger.violations[0].shard, Some(0));
    let shard = &ledger.shards[&0];
    assert_eq!(shard.commands_by_op[&8], 3);
    let commands: Vec<_> = shard.commands.iter().filter(|c| c.op == 8).collect();
    assert_eq!(commands.len(), 3);
    assert_eq!(commands[0].payload["d"]["guild_id"], guild.as_str());
    assert_eq!(commands[0].payload["d"]["nonce"], "n1");
    assert_eq!(commands[1].payload["d"]["nonce"], "n2");
    assert_eq!(shard.sessions[0].by_type["GUILD_MEMBERS_CHUNK"], 1);
    assert_eq!(shard.sessions[0].by_type["RATE_LIMITED"], 1);
}
