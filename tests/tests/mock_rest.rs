//! The mock's login surface, over real HTTP: what a client library calls before it connects
//! (`/users/@me`, the application, `/gateway/bot`) agrees with the READY the same mock sends,
//! every route wants `Authorization: Bot <token>` (but `/gateway`), and everything else under
//! `/api` answers Discord's JSON error shape.
//!
//! Each test runs its own mock on free ports; every wait is bounded.

use std::time::Duration;

use mock_gateway::events::{APPLICATION_FLAGS, BOT_USER_ID};
use mock_gateway::{MockConfig, ViolationKind};
use serde_json::{Value, json};
use shardgate_tests::raw::{Compression, RawClient};
use shardgate_tests::{TestMock, rest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// GUILDS | GUILD_MESSAGES.
const INTENTS: u64 = 1 | (1 << 9);

fn spawn() -> TestMock {
    TestMock::spawn(MockConfig {
        seed: Some(0x4e57),
        guilds: 4,
        rate: 1.0,
        guild_create_bytes: 0,
        ..MockConfig::default()
    })
}

fn bot(mock: &TestMock) -> String {
    format!("Bot {}", mock.token())
}

/// An answer: status, the `Allow` header if any, and the body.
struct Answer {
    status: u16,
    allow: Option<String>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// `method path` with an optional Authorization header and an empty body, on its own
/// connection (`Connection: close`, read to EOF). Bounded at 5 s.
async fn request(http_base: &str, method: &str, path: &str, authorization: Option<&str>) -> Answer {
    let host = http_base.strip_prefix("http://").expect("plain http base");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: 0\r\n"
    );
    if let Some(value) = authorization {
        head.push_str(&format!("Authorization: {value}\r\n"));
    }
    head.push_str("\r\n");
    let exchange = async {
        let mut stream = TcpStream::connect(host).await?;
        stream.write_all(head.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = timeout(Duration::from_secs(5), exchange)
        .await
        .expect("HTTP exchange within 5 s")
        .expect("HTTP exchange");
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").expect("end of headers");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("status code");
    let allow = head
        .split("\r\n")
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("allow"))
        .map(|(_, value)| value.trim().to_owned());
    Answer {
        status,
        allow,
        body: body.to_owned(),
    }
}

/// READY's `d` for shard 0 of 1, over a real WebSocket.
async fn ready(mock: &TestMock) -> Value {
    let mut client = RawClient::connect(mock.ws_url(), Compression::None).await;
    client.hello().await;
    client.identify(mock.token(), [0, 1], INTENTS).await;
    let ready = client.wait_dispatch("READY").await;
    ready.d().clone()
}

#[tokio::test]
async fn users_me_and_the_application_are_the_bot_of_ready() {
    let mock = spawn();
    let auth = bot(&mock);
    let ready = ready(&mock).await;

    let me = rest::get(mock.http_base(), "/api/v10/users/@me", Some(&auth)).await;
    assert_eq!(me.status, 200, "{}", me.body);
    assert!(
        me.headers
            .iter()
            .any(|(name, value)| name == "content-type" && value == "application/json"),
        "{:?}",
        me.headers
    );
    let me = me.json();
    for field in [
        "id",
        "username",
        "discriminator",
        "global_name",
        "avatar",
        "bot",
        "flags",
        "mfa_enabled",
        "verified",
        "email",
    ] {
        assert_eq!(me[field], ready["user"][field], "users/@me `{field}`");
    }
    assert_eq!(me["id"], BOT_USER_ID.to_string());
    assert_eq!(me["bot"], true);
    assert_eq!(me["public_flags"], 0);

    for path in [
        "/api/v10/oauth2/applications/@me",
        "/api/v10/applications/@me",
    ] {
        let application = rest::get(mock.http_base(), path, Some(&auth)).await;
        assert_eq!(application.status, 200, "{path}: {}", application.body);
        let application = application.json();
        assert_eq!(application["id"], ready["application"]["id"], "{path}");
        assert_eq!(
            application["flags"], ready["application"]["flags"],
            "{path}"
        );
        assert_eq!(application["flags"], APPLICATION_FLAGS);
        assert_eq!(application["name"], me["username"], "{path}");
        assert_eq!(application["bot_public"], true);
        assert_eq!(application["bot_require_code_grant"], false);
        assert_eq!(application["description"], "");
        assert_eq!(application["team"], Value::Null);
        assert!(application["owner"]["id"].is_string(), "{application}");
        assert_ne!(application["owner"]["id"], me["id"]);
        assert_eq!(application["approximate_guild_count"], 4);
        for field in ["id", "username", "discriminator", "avatar", "bot"] {
            assert_eq!(
                application["bot"][field], me[field],
                "{path}: bot `{field}`"
            );
        }
    }

    // `approximate_guild_count` follows the mock's guilds.
    mock.set_guild_count(7);
    let application = rest::get(mock.http_base(), "/api/v10/applications/@me", Some(&auth)).await;
    assert_eq!(application.json()["approximate_guild_count"], 7);
    assert!(mock.ledger().violations.is_empty());
}

#[tokio::test]
async fn other_versions_query_strings_and_escapes_reach_the_same_routes() {
    let mock = spawn();
    let auth = bot(&mock);
    let me = rest::get(mock.http_base(), "/api/v10/users/@me", Some(&auth))
        .await
        .json();
    for path in [
        "/api/v9/users/@me",
        "/api/users/@me",
        "/api/v10/users/@me?with_counts=true",
        "/api/v10/users/%40me",
    ] {
        let answer = rest::get(mock.http_base(), path, Some(&auth)).await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.body);
        assert_eq!(answer.json(), me, "{path}");
    }
    for path in [
        "/api/v9/gateway/bot",
        "/api/gateway/bot",
        "/api/v10/gateway/bot?v=10",
    ] {
        let answer = rest::get(mock.http_base(), path, Some(&auth)).await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.body);
        assert_eq!(answer.json()["url"], mock.ws_url(), "{path}");
    }
    let application = rest::get(
        mock.http_base(),
        "/api/oauth2/applications/@me",
        Some(&auth),
    )
    .await;
    assert_eq!(application.status, 200);
    assert_eq!(application.json()["id"], me["id"]);
    assert!(mock.ledger().violations.is_empty());
}

#[tokio::test]
async fn every_route_but_gateway_needs_the_bot_token() {
    let mock = spawn();
    let unauthorized = json!({ "message": "401: Unauthorized", "code": 0 });
    let routes = [
        "/api/v10/gateway/bot",
        "/api/v10/users/@me",
        "/api/v10/applications/@me",
        "/api/v10/oauth2/applications/@me",
    ];
    let wrong_token = format!("Bot {}x", mock.token());
    let mut refused = 0;
    for path in routes {
        for authorization in [None, Some(wrong_token.as_str()), Some(mock.token())] {
            let answer = request(mock.http_base(), "GET", path, authorization).await;
            assert_eq!(answer.status, 401, "{path} with {authorization:?}");
            assert_eq!(answer.json(), unauthorized, "{path} with {authorization:?}");
            refused += 1;
        }
    }
    let ledger = mock.ledger();
    assert_eq!(ledger.violations.len(), refused, "{:#?}", ledger.violations);
    assert_eq!(
        ledger.violations_of(ViolationKind::AuthenticationFailed),
        refused
    );
    assert!(
        ledger
            .violations
            .iter()
            .any(|v| v.detail == "GET /users/@me without a valid Authorization: Bot <token>"),
        "{:#?}",
        ledger.violations
    );
    assert!(ledger.violations.iter().all(|v| v.shard.is_none()));

    // `/gateway` is open, as on Discord.
    let open = request(mock.http_base(), "GET", "/api/v10/gateway", None).await;
    assert_eq!(open.status, 200);
    assert_eq!(open.json(), json!({ "url": mock.ws_url() }));
    assert_eq!(mock.ledger().violations.len(), refused);
}

#[tokio::test]
async fn unknown_paths_and_methods_answer_discords_error_shape() {
    let mock = spawn();
    let auth = bot(&mock);
    let not_found = json!({ "message": "404: Not Found", "code": 0 });
    for path in [
        "/api",
        "/api/",
        "/api/v10",
        "/api/v10/users/@me/",
        "/api/v10//users/@me",
        "/api/v10/users/1234",
        "/api/v10/guilds/1/channels",
        "/api/v10/channels/1/messages?limit=5",
        "/api/v8/users/@me",
        "/api/v11/gateway/bot",
        "/api/v10/gateway/bot/extra",
        "/apix/v10/users/@me",
        "/",
    ] {
        for authorization in [None, Some(auth.as_str())] {
            let answer = request(mock.http_base(), "GET", path, authorization).await;
            assert_eq!(answer.status, 404, "{path}");
            assert_eq!(answer.json(), not_found, "{path}");
        }
    }

    let not_allowed = json!({ "message": "405: Method Not Allowed", "code": 0 });
    for (method, path) in [
        ("POST", "/api/v10/users/@me"),
        ("PATCH", "/api/v10/applications/@me"),
        ("DELETE", "/api/v9/oauth2/applications/@me"),
        ("PUT", "/api/v10/gateway/bot"),
        ("POST", "/api/gateway"),
        ("HEAD", "/api/v10/users/@me"),
    ] {
        for authorization in [None, Some(auth.as_str())] {
            let answer = request(mock.http_base(), method, path, authorization).await;
            assert_eq!(answer.status, 405, "{method} {path}");
            assert_eq!(answer.allow.as_deref(), Some("GET"), "{method} {path}");
            if method != "HEAD" {
                // A HEAD answer has no body; the status line says enough.
                assert_eq!(answer.json(), not_allowed, "{method} {path}");
            }
        }
    }
    // Neither a wrong path nor a wrong method is an authentication failure.
    assert!(mock.ledger().violations.is_empty());
}
