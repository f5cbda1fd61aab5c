//! The ledger's `overlapping_sessions`: a connection going live (IDENTIFY accepted, RESUME
//! succeeded) for a `[shard_id, num_shards]` while another connection is live for the same pair.
//! The proof a fleet test leans on for "never two hosts running one shard".
//!
//! Driven by a raw client over tokio-tungstenite that sends exactly what each test says; the
//! identify window is shortened so that back-to-back identifies of shard 0 are legal. Every
//! wait is bounded.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use mock_gateway::{Fault, Ledger, MockConfig, MockGateway};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Upper bound of each wait for the mock.
const WAIT_MAX: Duration = Duration::from_secs(5);
/// The mock's identify window in these tests.
const IDENTIFY_WINDOW_MS: u64 = 50;
/// What a client waits between two identifies of one bucket (more than the window).
const IDENTIFY_SPACING: Duration = Duration::from_millis(IDENTIFY_WINDOW_MS + 20);
/// GUILDS | GUILD_MESSAGES.
const INTENTS: u64 = 513;

fn spawn_mock() -> MockGateway {
    MockGateway::spawn(
        MockConfig {
            seed: Some(0x6f76_6572),
            guilds: 4,
            guild_create_bytes: 512,
            max_concurrency: 1,
            identify_window_ms: IDENTIFY_WINDOW_MS,
            ..MockConfig::default()
        },
        1,
    )
    .expect("the mock gateway starts")
}

/// One gateway connection, no policy of its own. Dropping it drops TCP without a close frame.
struct Client {
    ws: WebSocketStream<TcpStream>,
}

/// What one read gave.
#[derive(Debug)]
enum Received {
    Payload(Value),
    /// A close frame, or the end of the connection.
    Ended,
}

impl Client {
    async fn connect(base: &str) -> Client {
        let authority = base.strip_prefix("ws://").expect("a ws:// URL");
        let connect = async {
            let tcp = TcpStream::connect(authority).await.expect("TCP connect");
            tokio_tungstenite::client_async(format!("{base}/?v=10&encoding=json"), tcp)
                .await
                .expect("WebSocket handshake")
                .0
        };
        let ws = timeout(WAIT_MAX, connect).await.expect("connect in time");
        Client { ws }
    }

    async fn send(&mut self, payload: Value) {
        timeout(
            WAIT_MAX,
            self.ws.send(Message::Text(payload.to_string().into())),
        )
        .await
        .expect("send in time")
        .expect("send");
    }

    async fn recv(&mut self) -> Received {
        loop {
            match timeout(WAIT_MAX, self.ws.next())
                .await
                .expect("a frame in time")
            {
                Some(Ok(Message::Text(text))) => {
                    return Received::Payload(serde_json::from_str(&text).expect("JSON"));
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => return Received::Ended,
                Some(Ok(_)) => {}
            }
        }
    }

    /// Reads until a payload `wanted` accepts; panics if the connection ends first.
    async fn recv_until(&mut self, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        loop {
            match self.recv().await {
                Received::Payload(payload) if wanted(&payload) => return payload,
                Received::Payload(_) => {}
                Received::Ended => panic!("the connection ended before {what}"),
            }
        }
    }

    /// IDENTIFY as `shard`; returns READY's session id once READY arrived.
    async fn identify(&mut self, token: &str, shard: [u32; 2]) -> String {
        self.send(json!({
            "op": 2,
            "d": {
                "token": token,
                "intents": INTENTS,
                "properties": {"os": "linux", "browser": "test", "device": "test"},
                "shard": shard,
            }
        }))
        .await;
        let ready = self.recv_until("READY", |p| p["t"] == "READY").await;
        ready["d"]["session_id"]
            .as_str()
            .expect("READY has a session_id")
            .to_owned()
    }

    /// RESUME `session_id` from `seq`; returns once RESUMED arrived.
    async fn resume(&mut self, token: &str, session_id: &str, seq: u64) {
        self.send(json!({
            "op": 6,
            "d": {"token": token, "session_id": session_id, "seq": seq}
        }))
        .await;
        self.recv_until("RESUMED", |p| p["t"] == "RESUMED").await;
    }

    /// Sends a close frame with `code` and reads until the mock's reply ends the connection.
    async fn close(&mut self, code: u16) {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: "".into(),
        };
        timeout(WAIT_MAX, self.ws.close(Some(frame)))
            .await
            .expect("close in time")
            .expect("close");
        self.wait_ended().await;
    }

    /// Reads until the connection ends (whatever arrives before is skipped).
    async fn wait_ended(&mut self) {
        while let Received::Payload(_) = self.recv().await {}
    }
}

/// The ledger's overlap counts: the total and shard 0's.
fn overlaps(ledger: &Ledger) -> (u64, u64) {
    let shard_0 = ledger.shards.get(&0).map_or(0, |s| s.overlapping_sessions);
    (ledger.overlapping_sessions, shard_0)
}

#[tokio::test]
async fn a_second_session_of_one_shard_while_the_first_is_live_is_an_overlap() {
    let mock = spawn_mock();
    let mut first = Client::connect(mock.ws_url()).await;
    let first_session = first.identify(mock.token(), [0, 2]).await;
    sleep(IDENTIFY_SPACING).await;
    let mut second = Client::connect(mock.ws_url()).await;
    let second_session = second.identify(mock.token(), [0, 2]).await;
    assert_ne!(first_session, second_session);

    let ledger = mock.ledger();
    assert_eq!(overlaps(&ledger), (1, 1), "seed {}", mock.seed());
    assert!(ledger.violations.is_empty(), "{:?}", ledger.violations);
    drop((first, second));
}

#[tokio::test]
async fn a_session_after_the_previous_one_closed_is_no_overlap() {
    let mock = spawn_mock();
    let mut first = Client::connect(mock.ws_url()).await;
    first.identify(mock.token(), [0, 2]).await;
    first.close(1000).await;
    sleep(IDENTIFY_SPACING).await;
    let mut second = Client::connect(mock.ws_url()).await;
    second.identify(mock.token(), [0, 2]).await;

    let ledger = mock.ledger();
    assert_eq!(ledger.shards[&0].identifies, 2);
    assert_eq!(overlaps(&ledger), (0, 0), "seed {}", mock.seed());
    assert!(ledger.violations.is_empty(), "{:?}", ledger.violations);
}

#[tokio::test]
async fn one_shard_id_in_two_shard_sets_is_no_overlap() {
    let mock = spawn_mock();
    let mut old_set = Client::connect(mock.ws_url()).await;
    old_set.identify(mock.token(), [0, 2]).await;
    sleep(IDENTIFY_SPACING).await;
    let mut new_set = Client::connect(mock.ws_url()).await;
    new_set.identify(mock.token(), [0, 4]).await;

    let ledger = mock.ledger();
    assert_eq!(ledger.shards[&0].identifies, 2);
    assert_eq!(overlaps(&ledger), (0, 0), "seed {}", mock.seed());
    assert!(ledger.violations.is_empty(), "{:?}", ledger.violations);
    drop((old_set, new_set));
}

#[tokio::test]
async fn a_resume_taking_over_an_open_connection_is_a_hand_over_not_an_overlap() {
    let mock = spawn_mock();
    let mut first = Client::connect(mock.ws_url()).await;
    let session_id = first.identify(mock.token(), [0, 2]).await;
    // The first connection stays open: the resume takes its session over, and the mock drops it.
    let mut resumed = Client::connect(mock.resume_ws_url()).await;
    resumed.resume(mock.token(), &session_id, 1).await;
    first.wait_ended().await;

    let ledger = mock.ledger();
    assert_eq!(ledger.shards[&0].resumes, 1);
    assert_eq!(overlaps(&ledger), (0, 0), "seed {}", mock.seed());

    // The resumed connection is live: a new session of the shard beside it overlaps.
    sleep(IDENTIFY_SPACING).await;
    let mut another = Client::connect(mock.ws_url()).await;
    another.identify(mock.token(), [0, 2]).await;
    let ledger = mock.ledger();
    assert_eq!(overlaps(&ledger), (1, 1), "seed {}", mock.seed());
    assert!(ledger.violations.is_empty(), "{:?}", ledger.violations);
    drop((resumed, another));
}

#[tokio::test]
async fn a_connection_whose_session_was_invalidated_is_not_live() {
    let mock = spawn_mock();
    let mut first = Client::connect(mock.ws_url()).await;
    first.identify(mock.token(), [0, 2]).await;
    assert_eq!(mock.inject_fault(0, Fault::InvalidSession), 1);
    // op 9 `d: false`: the session is over; the connection stays open for the client to leave.
    first
        .recv_until("op 9", |p| p["op"] == 9 && p["d"] == false)
        .await;
    sleep(IDENTIFY_SPACING).await;
    let mut second = Client::connect(mock.ws_url()).await;
    second.identify(mock.token(), [0, 2]).await;

    let ledger = mock.ledger();
    assert_eq!(overlaps(&ledger), (0, 0), "seed {}", mock.seed());
    assert!(ledger.violations.is_empty(), "{:?}", ledger.violations);
    drop((first, second));
}
