//! The connection stack (glommio TCP → rustls → tungstenite) against the mock gateway, over
//! ws:// and over wss:// with the mock's generated CA.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};
use mock_gateway::{MockConfig, MockGateway};
use shardgate::transport::{Connection, GatewayUrl, Incoming, ReadCoalescing};
use tungstenite::protocol::WebSocketConfig;

fn text(message: Incoming) -> serde_json::Value {
    match message {
        Incoming::Text(text) => serde_json::from_slice(&text).unwrap(),
        other => panic!("expected text, got {other:?}"),
    }
}

/// Opens a connection to `url` with the query and limits every test here uses.
async fn connect(
    url: &GatewayUrl,
    tls_config: &Arc<rustls::ClientConfig>,
) -> Result<Connection, shardgate::transport::TransportError> {
    Connection::connect(
        url,
        "v=10&encoding=json",
        tls_config,
        WebSocketConfig::default(),
        Duration::from_secs(5),
    )
    .await
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
            let mut connection = connect(&url, &tls_config).await
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
            let result = connect(&url, &tls_config).await;
            assert!(
                matches!(result, Err(shardgate::transport::TransportError::Tls(_))),
                "{result:?}"
            );
        })
        .unwrap()
        .join()
        .unwrap();
}

/// Reads a client's upgrade request from `stream` and answers it with a 101.
fn answer_upgrade(stream: &mut (impl std::io::Read + std::io::Write)) {
    let mut request = Vec::new();
    let mut byte = [0; 1];
    while !request.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        request.push(byte[0]);
    }
    let request = String::from_utf8(request).unwrap();
    let key = request
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-key")
                .then(|| value.trim().to_owned())
        })
        .unwrap();
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    write!(
        stream,
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    )
    .unwrap();
    stream.flush().unwrap();
}

/// A bare WebSocket server on loopback: it answers one upgrade, then writes each of `writes`
/// (raw frame bytes) after its delay; then it closes the socket if `close`, or keeps it open
/// until the client closes.
fn serve_frames(
    writes: Vec<(Duration, Vec<u8>)>,
    close: bool,
) -> (GatewayUrl, std::thread::JoinHandle<()>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = GatewayUrl::parse(&format!("ws://{}", listener.local_addr().unwrap())).unwrap();
    let server = std::thread::spawn(move || {
        let (mut socket, _) = listener.accept().unwrap();
        answer_upgrade(&mut socket);
        let mut byte = [0; 1];
        for (delay, bytes) in writes {
            std::thread::sleep(delay);
            socket.write_all(&bytes).unwrap();
        }
        if !close {
            let _ = socket.read(&mut byte);
        }
    });
    (url, server)
}

/// An unmasked text frame, as a server sends it.
fn text_frame(text: &str) -> Vec<u8> {
    let mut frame = vec![0x81];
    match text.len() {
        len @ 0..=125 => frame.push(len as u8),
        len @ 126..=65_535 => {
            frame.push(126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            frame.push(127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(text.as_bytes());
    frame
}

fn text_of(message: Incoming) -> String {
    match message {
        Incoming::Text(text) => String::from_utf8(text.to_vec()).unwrap(),
        other => panic!("expected text, got {other:?}"),
    }
}

/// Runs `client` on a plain connection to a [`serve_frames`] server.
fn against_server<F, Fut>(writes: Vec<(Duration, Vec<u8>)>, close: bool, client: F)
where
    F: FnOnce(Connection) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let (url, server) = serve_frames(writes, close);
    LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(move || async move {
            let connection = connect(&url, &shardgate::tls::client_config(None).unwrap())
                .await
                .unwrap();
            client(connection).await;
        })
        .unwrap()
        .join()
        .unwrap();
    server.join().unwrap();
}

#[test]
fn a_read_after_one_that_drained_the_socket_waits_for_the_next_tick() {
    // "1" after the upgrade (not with it); "2" and "3" 100 and 200 ms later, while the read
    // after "1" is held.
    let writes = vec![
        (Duration::from_millis(100), text_frame("1")),
        (Duration::from_millis(100), text_frame("2")),
        (Duration::from_millis(100), text_frame("3")),
    ];
    against_server(writes, false, |mut connection| async move {
        let tick = Duration::from_secs(2);
        let epoch = Instant::now();
        connection.coalesce_reads(ReadCoalescing { tick, epoch });
        // The first read is at once.
        assert_eq!(text_of(connection.read_incoming().await.unwrap()), "1");
        // It drained the socket, so the next read waits for the tick: by then "2" and "3"
        // have both arrived, and one read takes both.
        assert_eq!(text_of(connection.read_incoming().await.unwrap()), "2");
        assert!(epoch.elapsed() >= tick, "read before the tick");
        let buffered = connection.next_buffered().unwrap().map(text_of);
        assert_eq!(buffered.as_deref(), Some("3"));
    });
}

#[test]
fn a_read_that_filled_the_buffer_is_followed_at_once() {
    // One write of a small message, a message of one and a half read buffers (64 KiB) and a
    // small one: the first read fills the buffer, so the next does not wait for the (long)
    // tick. (All of it fits the socket's initial receive window, about 128 KiB on loopback.)
    let big = "x".repeat(96 * 1024);
    let mut burst = text_frame("1");
    burst.extend(text_frame(&big));
    burst.extend(text_frame("3"));
    against_server(
        // Not at once: the upgrade's read would take the start of the burst with the answer.
        vec![(Duration::from_millis(100), burst)],
        false,
        |mut connection| async move {
            // Let the whole burst arrive before reading.
            glommio::timer::sleep(Duration::from_millis(400)).await;
            let tick = Duration::from_secs(30);
            connection.coalesce_reads(ReadCoalescing {
                tick,
                epoch: Instant::now(),
            });
            let started = Instant::now();
            assert_eq!(text_of(connection.read_incoming().await.unwrap()), "1");
            assert_eq!(
                text_of(connection.read_incoming().await.unwrap()).len(),
                big.len()
            );
            assert_eq!(text_of(connection.read_incoming().await.unwrap()), "3");
            assert!(started.elapsed() < tick, "a full read was held");
        },
    );
}

#[test]
fn a_coalescing_connection_gone_quiet_still_reads_a_late_message_and_the_end() {
    // "2" comes long after the connection stopped trying at each tick; then the server goes.
    let writes = vec![
        (Duration::from_millis(100), text_frame("1")),
        (Duration::from_millis(1_500), text_frame("2")),
    ];
    against_server(writes, true, |mut connection| async move {
        connection.coalesce_reads(ReadCoalescing {
            tick: Duration::from_millis(100),
            epoch: Instant::now(),
        });
        assert_eq!(text_of(connection.read_incoming().await.unwrap()), "1");
        assert_eq!(text_of(connection.read_incoming().await.unwrap()), "2");
        let end = connection.read_incoming().await;
        assert!(
            matches!(end, Err(shardgate::transport::TransportError::Eof)),
            "{end:?}"
        );
    });
}

#[test]
fn a_shard_reading_a_lot_per_tick_is_not_held() {
    // 1 MiB at once, far above the hot threshold (256 KiB per tick at most); then, after the
    // first tick, one small message, which a held read would take only at the second tick.
    let big = "x".repeat(100 * 1024);
    let burst: Vec<u8> = (0..10).flat_map(|_| text_frame(&big)).collect();
    let writes = vec![
        (Duration::from_millis(100), burst),
        (Duration::from_millis(2_500), text_frame("late")),
    ];
    against_server(writes, false, |mut connection| async move {
        let tick = Duration::from_secs(2);
        let epoch = Instant::now();
        connection.coalesce_reads(ReadCoalescing { tick, epoch });
        for _ in 0..10 {
            assert_eq!(
                text_of(connection.read_incoming().await.unwrap()).len(),
                big.len()
            );
        }
        assert_eq!(text_of(connection.read_incoming().await.unwrap()), "late");
        // Sent about 2.6 s after the epoch: read then, not at the tick at 4 s.
        assert!(
            epoch.elapsed() < Duration::from_millis(3_800),
            "held: {:?}",
            epoch.elapsed()
        );
    });
}

#[test]
fn data_after_a_long_gap_is_not_followed_by_held_reads() {
    // "2" comes 3.6 s after "1", more than the 8 quiet ticks of 400 ms (3.2 s) after it, so
    // the read after "2" is not held: "3", 50 ms later, is read when it comes, before the tick.
    // "2" lands in the middle of a tick (3.7 s after the epoch, which is set a moment after the
    // server starts writing): landing just before a tick would leave "3" no time to come
    // before it, held or not.
    let writes = vec![
        (Duration::from_millis(100), text_frame("1")),
        (Duration::from_millis(3_600), text_frame("2")),
        (Duration::from_millis(50), text_frame("3")),
    ];
    against_server(writes, false, |mut connection| async move {
        let coalescing = ReadCoalescing {
            tick: Duration::from_millis(400),
            epoch: Instant::now(),
        };
        connection.coalesce_reads(coalescing);
        assert_eq!(text_of(connection.read_incoming().await.unwrap()), "1");
        assert_eq!(text_of(connection.read_incoming().await.unwrap()), "2");
        let next_tick = coalescing.next_tick(Instant::now());
        assert_eq!(text_of(connection.read_incoming().await.unwrap()), "3");
        let read_at = Instant::now();
        assert!(read_at < next_tick, "held until the tick");
    });
}

/// A TLS WebSocket server on loopback (the mock's certificate) that sends `frames` after the
/// upgrade, then close_notify, some bytes after it and the socket's end, as one ciphertext
/// stream cut into pieces of the sizes in `pieces` (cycled), each written on its own after a
/// short pause: the client's reads end inside records, inside record headers and across
/// several records.
fn serve_tls_in_pieces(
    frames: Vec<u8>,
    pieces: &'static [usize],
) -> (GatewayUrl, std::path::PathBuf, std::thread::JoinHandle<()>) {
    use std::io::Write;
    let ca_out = std::env::temp_dir().join(format!(
        "shardgate-transport-pieces-{}-{}.pem",
        std::process::id(),
        pieces.len()
    ));
    let config = mock_gateway::tls::server_config(&ca_out).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = GatewayUrl::parse(&format!("wss://{}", listener.local_addr().unwrap())).unwrap();
    let server = std::thread::spawn(move || {
        let (socket, _) = listener.accept().unwrap();
        socket.set_nodelay(true).unwrap();
        let conn = rustls::ServerConnection::new(config).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, socket);
        answer_upgrade(&mut tls);
        // The frames and the close_notify as ciphertext, then bytes that are not TLS at all.
        let (conn, socket) = (&mut tls.conn, &mut tls.sock);
        conn.set_buffer_limit(None);
        conn.writer().write_all(&frames).unwrap();
        conn.send_close_notify();
        let mut ciphertext = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut ciphertext).unwrap();
        }
        ciphertext.extend_from_slice(b"not TLS after close_notify");
        let mut rest = &ciphertext[..];
        for &piece in pieces.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (now, later) = rest.split_at(piece.min(rest.len()));
            socket.write_all(now).unwrap();
            rest = later;
            std::thread::sleep(Duration::from_micros(300));
        }
        // Then the socket's end (the client reads it as such once every message is out).
    });
    (url, ca_out, server)
}

/// wss:// with records cut anywhere by the reads: every message arrives whole and in order,
/// a message of many records included, and close_notify ends the stream (what follows it is
/// not read as data).
#[test]
fn tls_records_cut_across_reads_arrive_whole() {
    let big = "x".repeat(100_000);
    let texts = ["first", big.as_str(), "after the big one", "last"];
    let frames: Vec<u8> = texts.iter().flat_map(|text| text_frame(text)).collect();
    for pieces in [
        &[1usize, 2, 3, 5, 7][..],
        &[4_000, 1, 17_000, 6, 300, 20_000][..],
    ] {
        let (url, ca_out, server) = serve_tls_in_pieces(frames.clone(), pieces);
        let tls_config = shardgate::tls::client_config(Some(ca_out.as_path())).unwrap();
        let expected: Vec<String> = texts.iter().map(|text| (*text).to_owned()).collect();
        LocalExecutorBuilder::new(Placement::Unbound)
            .spawn(move || async move {
                let mut connection = connect(&url, &tls_config).await.unwrap();
                for text in expected {
                    assert_eq!(text_of(connection.read_incoming().await.unwrap()), text);
                }
                // Nothing but the end of the stream after close_notify.
                let end = connection.read_incoming().await;
                assert!(
                    matches!(end, Err(shardgate::transport::TransportError::Eof)),
                    "{end:?}"
                );
                assert_eq!(connection.receive_buffer_bytes(), 0);
            })
            .unwrap()
            .join()
            .unwrap();
        server.join().unwrap();
    }
}
