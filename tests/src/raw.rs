//! A raw gateway client: HELLO, IDENTIFY, HEARTBEAT, RESUME and any payload a test wants to
//! send, right or wrong; decodes text frames, zlib-stream (one inflate context per connection,
//! sync flush), zstd-stream (one zstd context per connection), per-payload zlib (identify
//! `compress: true`) and close frames.
//!
//! It has no policy of its own: no automatic heartbeats, no reconnects. Dropping it drops the
//! TCP connection without a close frame.

use std::time::{Duration, Instant};

use flate2::{Decompress, FlushDecompress, Status};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use zstd::stream::raw::{Decoder as ZstdDecoder, InBuffer, Operation, OutBuffer};

use crate::RECV_MAX;

/// Any byte stream the WebSocket can run over (plain TCP, TLS).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Transport compression asked for in the query string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    ZlibStream,
    ZstdStream,
}

impl Compression {
    /// The query string for gateway v10 JSON with this compression.
    pub fn query(self) -> &'static str {
        match self {
            Compression::None => "v=10&encoding=json",
            Compression::ZlibStream => "v=10&encoding=json&compress=zlib-stream",
            Compression::ZstdStream => "v=10&encoding=json&compress=zstd-stream",
        }
    }
}

/// A gateway message as received.
#[derive(Clone, Debug)]
pub struct Msg {
    pub value: Value,
    /// The decompressed bytes, exactly as the server wrote them.
    pub raw: Vec<u8>,
    /// Whether it came in a binary (compressed) frame.
    pub binary: bool,
}

impl Msg {
    pub fn op(&self) -> u64 {
        self.value["op"].as_u64().unwrap_or(u64::MAX)
    }

    /// The dispatch name (`t`), if any.
    pub fn t(&self) -> Option<&str> {
        self.value["t"].as_str()
    }

    /// The dispatch sequence (`s`), if any.
    pub fn s(&self) -> Option<u64> {
        self.value["s"].as_u64()
    }

    pub fn d(&self) -> &Value {
        &self.value["d"]
    }

    pub fn is_dispatch(&self) -> bool {
        self.op() == 0
    }
}

/// What one read from the socket gave.
#[derive(Debug)]
pub enum Received {
    Message(Msg),
    /// A close frame, with its code if it had one.
    Close(Option<u16>),
    /// A frame that did not decode: bad compressed data, or not JSON after decompression.
    Undecodable {
        binary: bool,
        error: String,
    },
    /// The connection ended (or failed) without a close frame.
    Ended(String),
}

enum Inflater {
    /// Text frames; binary frames are complete zlib streams (payload compression).
    None,
    ZlibStream {
        inflate: Box<Decompress>,
        pending: Vec<u8>,
    },
    ZstdStream(Box<ZstdDecoder<'static>>),
}

/// One gateway connection.
pub struct RawClient {
    ws: WebSocketStream<Box<dyn Io>>,
    inflater: Inflater,
    /// The connection ended (close frame or EOF); later reads return `Ended` at once.
    ended: bool,
}

/// `ws://host:port` → `host:port`.
fn authority(base: &str) -> &str {
    let rest = base
        .strip_prefix("ws://")
        .or_else(|| base.strip_prefix("wss://"))
        .unwrap_or(base);
    rest.trim_end_matches('/')
}

impl RawClient {
    /// Connects to `{base}/?v=10&encoding=json[&compress=…]`.
    pub async fn connect(base: &str, compression: Compression) -> RawClient {
        RawClient::connect_query(base, compression.query(), compression).await
    }

    /// Connects with an arbitrary query string; `compression` must match what it asks for.
    pub async fn connect_query(base: &str, query: &str, compression: Compression) -> RawClient {
        let connect = async {
            let tcp = TcpStream::connect(authority(base)).await?;
            tcp.set_nodelay(true)?;
            Ok::<_, std::io::Error>(tcp)
        };
        let tcp = timeout(RECV_MAX, connect)
            .await
            .unwrap_or_else(|_| panic!("TCP connect to {base} within 5 s"))
            .unwrap_or_else(|e| panic!("TCP connect to {base}: {e}"));
        RawClient::over(Box::new(tcp), &format!("{base}/?{query}"), compression)
            .await
            .unwrap_or_else(|e| panic!("WebSocket handshake with {base}: {e}"))
    }

    /// Runs the WebSocket handshake for `url` over `io` (plain or TLS).
    pub async fn over(
        io: Box<dyn Io>,
        url: &str,
        compression: Compression,
    ) -> Result<RawClient, String> {
        let (ws, _response) = timeout(RECV_MAX, tokio_tungstenite::client_async(url, io))
            .await
            .map_err(|_| "handshake timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        let inflater = match compression {
            Compression::None => Inflater::None,
            Compression::ZlibStream => Inflater::ZlibStream {
                inflate: Box::new(Decompress::new(true)),
                pending: Vec::new(),
            },
            Compression::ZstdStream => Inflater::ZstdStream(Box::new(
                ZstdDecoder::new().map_err(|e| format!("zstd decoder: {e}"))?,
            )),
        };
        Ok(RawClient {
            ws,
            inflater,
            ended: false,
        })
    }

    /// Sends a text frame as is (any bytes a test wants, valid JSON or not).
    pub async fn send_raw(&mut self, text: impl Into<String>) {
        let text: String = text.into();
        let send = self.ws.send(Message::Text(text.into()));
        match timeout(RECV_MAX, send).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("send failed: {e}"),
            Err(_) => panic!("send did not finish within 5 s"),
        }
    }

    /// Sends a JSON payload.
    pub async fn send(&mut self, payload: &Value) {
        self.send_raw(payload.to_string()).await;
    }

    /// Like [`RawClient::send_raw`], but a failure (the server already closed) is returned.
    pub async fn try_send_raw(&mut self, text: impl Into<String>) -> Result<(), String> {
        let text: String = text.into();
        match timeout(RECV_MAX, self.ws.send(Message::Text(text.into()))).await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => Err("send timed out".into()),
        }
    }

    /// op 2 with the usual fields.
    pub async fn identify(&mut self, token: &str, shard: [u32; 2], intents: u64) {
        self.identify_with(identify_payload(token, shard, intents))
            .await;
    }

    /// op 2 with a custom `d`.
    pub async fn identify_with(&mut self, d: Value) {
        self.send(&json!({"op": 2, "d": d})).await;
    }

    /// op 1.
    pub async fn heartbeat(&mut self, seq: Option<u64>) {
        self.send(&json!({"op": 1, "d": seq})).await;
    }

    /// op 6.
    pub async fn resume(&mut self, token: &str, session_id: &str, seq: u64) {
        self.send(&json!({
            "op": 6,
            "d": {"token": token, "session_id": session_id, "seq": seq}
        }))
        .await;
    }

    /// Sends a close frame with `code` and waits (bounded) for the server's answer.
    pub async fn close(&mut self, code: u16) -> Option<u16> {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: "".into(),
        };
        let _ = timeout(RECV_MAX, self.ws.close(Some(frame))).await;
        self.recv_until_close(RECV_MAX).await.ok().flatten()
    }

    /// The next frame, or `None` if nothing arrived within `limit`.
    pub async fn recv_timeout(&mut self, limit: Duration) -> Option<Received> {
        if self.ended {
            return Some(Received::Ended("already ended".into()));
        }
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let frame = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return None,
                Ok(None) => {
                    self.ended = true;
                    return Some(Received::Ended("end of stream".into()));
                }
                Ok(Some(Err(e))) => {
                    self.ended = true;
                    return Some(Received::Ended(e.to_string()));
                }
                Ok(Some(Ok(frame))) => frame,
            };
            let received = match frame {
                Message::Text(text) => decode_json(text.as_bytes().to_vec(), false),
                Message::Binary(bytes) => match self.inflate(&bytes) {
                    Ok(Some(raw)) => decode_json(raw, true),
                    // zlib-stream: the message continues in the next frame.
                    Ok(None) => continue,
                    Err(error) => Received::Undecodable {
                        binary: true,
                        error,
                    },
                },
                Message::Close(frame) => {
                    self.ended = true;
                    // Let tungstenite write its queued close reply, completing the handshake.
                    let _ = timeout(Duration::from_millis(200), self.ws.flush()).await;
                    Received::Close(frame.map(|f| u16::from(f.code)))
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            };
            return Some(received);
        }
    }

    /// The next frame; panics if nothing arrives within 5 s.
    pub async fn recv(&mut self) -> Received {
        self.recv_timeout(RECV_MAX)
            .await
            .expect("a frame within 5 s")
    }

    /// The next gateway message; panics on a timeout, a close, an undecodable frame or EOF.
    pub async fn next_msg(&mut self) -> Msg {
        match self.recv().await {
            Received::Message(msg) => msg,
            other => panic!("expected a gateway message, got {other:?}"),
        }
    }

    /// Reads HELLO and returns `heartbeat_interval`.
    pub async fn hello(&mut self) -> u64 {
        let msg = self.next_msg().await;
        assert_eq!(msg.op(), 10, "first message must be HELLO: {:?}", msg.value);
        msg.d()["heartbeat_interval"]
            .as_u64()
            .expect("HELLO has heartbeat_interval")
    }

    /// Reads messages until `done` holds for one (returned last), within `limit` overall.
    pub async fn read_until(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&Msg) -> bool,
    ) -> Vec<Msg> {
        let deadline = Instant::now() + limit;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv_timeout(left).await {
                Some(Received::Message(msg)) => {
                    let stop = done(&msg);
                    seen.push(msg);
                    if stop {
                        return seen;
                    }
                }
                Some(other) => panic!(
                    "expected messages, got {other:?} after {} messages",
                    seen.len()
                ),
                None => panic!(
                    "condition not met within {limit:?}; {} messages, last {:?}",
                    seen.len(),
                    seen.last().map(|m| &m.value)
                ),
            }
        }
    }

    /// Reads until a dispatch named `t` arrives; returns it.
    pub async fn wait_dispatch(&mut self, t: &str) -> Msg {
        let mut seen = self.read_until(RECV_MAX, |m| m.t() == Some(t)).await;
        seen.pop().expect("read_until returns the matching message")
    }

    /// Reads until the server's close frame (skipping messages); `Err` on EOF without one or
    /// after `limit`.
    pub async fn recv_until_close(&mut self, limit: Duration) -> Result<Option<u16>, String> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv_timeout(left).await {
                Some(Received::Close(code)) => return Ok(code),
                Some(Received::Ended(why)) => return Err(format!("ended without close: {why}")),
                Some(Received::Message(_) | Received::Undecodable { .. }) => {}
                None => return Err(format!("no close frame within {limit:?}")),
            }
        }
    }

    /// The server's close code; panics if none comes within 5 s.
    pub async fn expect_close(&mut self) -> u16 {
        match self.recv_until_close(RECV_MAX).await {
            Ok(Some(code)) => code,
            Ok(None) => panic!("close frame without a code"),
            Err(why) => panic!("{why}"),
        }
    }

    /// Decompresses one binary frame; `Ok(None)` when a zlib-stream message is incomplete.
    fn inflate(&mut self, frame: &[u8]) -> Result<Option<Vec<u8>>, String> {
        match &mut self.inflater {
            Inflater::None => {
                use std::io::Read;
                let mut out = Vec::new();
                flate2::read::ZlibDecoder::new(frame)
                    .read_to_end(&mut out)
                    .map_err(|e| format!("payload zlib: {e}"))?;
                Ok(Some(out))
            }
            Inflater::ZlibStream { inflate, pending } => {
                pending.extend_from_slice(frame);
                if !pending.ends_with(&[0, 0, 0xff, 0xff]) {
                    return Ok(None);
                }
                let input = std::mem::take(pending);
                inflate_sync(inflate, &input).map(Some)
            }
            Inflater::ZstdStream(decoder) => zstd_feed(decoder, frame).map(Some),
        }
    }
}

fn decode_json(raw: Vec<u8>, binary: bool) -> Received {
    match serde_json::from_slice::<Value>(&raw) {
        Ok(value) => Received::Message(Msg { value, raw, binary }),
        Err(e) => Received::Undecodable {
            binary,
            error: format!("not JSON ({e}): {:?}", String::from_utf8_lossy(&raw)),
        },
    }
}

/// Inflates one complete zlib-stream message (ending in `00 00 ff ff`) with the connection's
/// context.
fn inflate_sync(inflate: &mut Decompress, input: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(input.len() * 4 + 1024);
    let mut consumed = 0usize;
    loop {
        let (in_before, out_before) = (inflate.total_in(), inflate.total_out());
        let status = inflate
            .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync)
            .map_err(|e| format!("zlib-stream: {e}"))?;
        consumed += usize::try_from(inflate.total_in() - in_before).expect("fits the input");
        let progressed = inflate.total_in() != in_before || inflate.total_out() != out_before;
        let room_left = out.len() < out.capacity();
        if status == Status::StreamEnd || (consumed == input.len() && room_left) {
            return Ok(out);
        }
        if !progressed && room_left {
            return Err("zlib-stream: no progress".into());
        }
        out.reserve(out.capacity().max(4096));
    }
}

/// Feeds one zstd-stream frame to the connection's decoder until its input is consumed.
fn zstd_feed(decoder: &mut ZstdDecoder<'static>, input: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = vec![0u8; (input.len() * 8).max(64 * 1024)];
    let mut written = 0;
    let mut in_buffer = InBuffer::around(input);
    for _ in 0..10_000 {
        let mut out_buffer = OutBuffer::around_pos(&mut out[..], written);
        decoder
            .run(&mut in_buffer, &mut out_buffer)
            .map_err(|e| format!("zstd-stream: {e}"))?;
        written = out_buffer.pos();
        if in_buffer.pos == input.len() && written < out.len() {
            out.truncate(written);
            return Ok(out);
        }
        if written == out.len() {
            out.resize(out.len() * 2, 0);
        }
    }
    Err("zstd-stream: no progress".into())
}

/// The `d` of a plain, valid IDENTIFY.
pub fn identify_payload(token: &str, shard: [u32; 2], intents: u64) -> Value {
    json!({
        "token": token,
        "intents": intents,
        "shard": shard,
        "properties": {"os": "linux", "browser": "shardgate-tests", "device": "shardgate-tests"}
    })
}
