//! The connection stack (glommio TCP → rustls → tungstenite) against the mock gateway, over
//! ws:// and over wss:// with the mock's generated CA.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

use std::time::Duration;

use glommio::{LocalExecutorBuilder, Placement};
use mock_gateway::{MockConfig, MockGateway};
use shardgate::transport::{Connection, GatewayUrl, Incoming};
use tungstenite::protocol::WebSocketConfig;

fn text(message: Incoming) -> serde_json::Value {
    match message {
        Incoming::Text(text) => serde_json::from_slice(&text).unwrap(),
        other => panic!("expected text, got {other:?}"),
    }
}

fn hello_identify_ready(tls: bool) {
    let ca_dir =
        std::env::temp_dir().join(format!("shardgate-transport-{}-{tls}", std::process::id()));
    std::fs::create_dir_all(&ca_dir).unwrap();
    let ca_out = ca_dir.join("ca.pem");
    let mock = MockGateway::spawn(
        MockConfig {
            tls,
            ca_out: Some(ca_out.clone()),
            guilds: 3,
            ..MockConfig::default()
        },
        1,
    )
    .unwrap();
    let url = GatewayUrl::parse(mock.ws_url()).unwrap();
    let token = mock.token().to_owned();
    let tls_config = shardgate::tls::client_config(tls.then_some(ca_out.as_path())).unwrap();
    LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(move || async move {
            let mut connection = Connection::connect(
                &url,
                "v=10&encoding=json",
                &tls_config,
                WebSocketConfig::default(),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
            let hello = text(connection.read_incoming().await.unwrap());
            assert_eq!(hello["op"], 10);
            let identify = format!(
                r#"{{"op":2,"d":{{"token":"{token}","intents":513,"properties":{{"os":"linux","browser":"t","device":"t"}}}}}}"#
            );
            connection.queue_text(identify.as_bytes()).unwrap();
            connection.flush().await.unwrap();
            let ready = text(connection.read_incoming().await.unwrap());
            assert_eq!(ready["t"], "READY");
            assert_eq!(ready["s"], 1);
            // Three GUILD_CREATEs follow, in order.
            for seq in 2..=4 {
                let guild_create = text(connection.read_incoming().await.unwrap());
                assert_eq!((guild_create["t"].as_str(), guild_create["s"].as_u64()), (Some("GUILD_CREATE"), Some(seq)));
            }
            connection.queue_close(4000).unwrap();
            connection.flush().await.unwrap();
        })
        .unwrap()
        .join()
        .unwrap();
    let ledger = mock.ledger();
    assert!(ledger.violations.is_empty(), "{:?}", ledger.violations);
    assert_eq!(ledger.identifies_total, 1);
}

#[test]
fn plain_websocket_to_the_mock() {
    hello_identify_ready(false);
}

#[test]
fn tls_websocket_to_the_mock_with_its_ca() {
    hello_identify_ready(true);
}

#[test]
fn tls_without_the_ca_is_refused() {
    let ca_out = std::env::temp_dir().join(format!(
        "shardgate-transport-noca-{}.pem",
        std::process::id()
    ));
    let mock = MockGateway::spawn(
        MockConfig {
            tls: true,
            ca_out: Some(ca_out),
            ..MockConfig::default()
        },
        1,
    )
    .unwrap();
    let url = GatewayUrl::parse(mock.ws_url()).unwrap();
    let tls_config = shardgate::tls::client_config(None).unwrap();
    LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(move || async move {
            let result = Connection::connect(
                &url,
                "v=10&encoding=json",
                &tls_config,
                WebSocketConfig::default(),
                Duration::from_secs(5),
            )
            .await;
            assert!(
                matches!(result, Err(shardgate::transport::TransportError::Tls(_))),
                "{result:?}"
            );
        })
        .unwrap()
        .join()
        .unwrap();
}
