//! A shard's connection: TCP on the core's io_uring executor (glommio) → TLS (rustls, driven
//! sans-IO) → WebSocket.
//!
//! No async-tungstenite or futures-rustls in between. The read half of the WebSocket is
//! `FrameReader`, sans-IO: plaintext in, [`Incoming`] messages out, with a frame header parser of
//! its own (each header parsed once, from a slice). The write half is tungstenite (framing,
//! masking, the close state) writing into a buffer this module moves on to TLS. The upgrade
//! request comes from tungstenite and its answer is checked here, so that the first frames, which
//! may arrive with the answer, stay in a buffer this module owns.
//!
//! Memory: an idle connection holds no receive buffer, whatever size its last message had (a
//! GUILD_CREATE can be megabytes).
//! - The socket is read into one buffer per core (`SOCKET_READ_BUFFER`, a thread-local): a read
//!   hands every byte on, to rustls or to the frame reader, before the poll that made it returns.
//! - The frame reader keeps plaintext only while a frame is incomplete; frames are cut out of it
//!   without a copy, and once the last one is handed out it holds nothing (see `FrameReader`).
//! - TLS is rustls's unbuffered client: records are decrypted where the socket read put them, in
//!   the core's buffer, and only the start of a record whose rest has not come is kept, by the
//!   connection (`Tls::partial`, no allocation between records). rustls's buffered client kept a
//!   4 KiB buffer per connection, zero-filled, and copied every byte received into it first.
//!   rustls's session state (keys, the peer's certificates: some 3 KiB) remains.
//!
//! Reading: one non-blocking `recv` per read; when the socket is empty, the connection waits for
//! it to be readable (an io_uring readiness poll, through glommio's read), or, coalescing, tries
//! again at the next tick without waiting on the socket (see [`ReadCoalescing`]).
//!
//! Cancel safety: [`Connection::read_incoming`] may be dropped at any await (the driver races it
//! with timers); everything received stays in the connection's buffers. Writes are queued in
//! `pending` and written by [`Connection::flush`], which is never raced.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::mem;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_lite::AsyncRead;
use glommio::net::TcpStream;
use rustls::client::UnbufferedClientConnection;
use rustls::pki_types::ServerName;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError};
use tungstenite::client::IntoClientRequest;
use tungstenite::error::{CapacityError, ProtocolError, SubProtocolError};
use tungstenite::handshake::client::generate_request;
use tungstenite::handshake::derive_accept_key;
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::{Bytes, Message, Utf8Bytes, WebSocket};

/// Bytes read from the socket per read call.
const SOCKET_READ_BYTES: usize = 64 * 1024;

/// Most ciphertext a connection keeps between reads: the start of one record (at most about
/// 18 KiB), or during the handshake of one handshake message (rustls refuses one over 64 KiB)
/// with the records it came in. More is a peer rustls would refuse anyway, refused here before
/// it is kept.
const TLS_PARTIAL_BYTES_MAX: usize = 128 * 1024;

/// Largest upgrade answer (status line and headers) accepted, in bytes.
pub const UPGRADE_RESPONSE_BYTES_MAX: usize = 16 * 1024;

/// Most headers accepted in the upgrade answer.
const UPGRADE_RESPONSE_HEADERS_MAX: usize = 64;

/// Largest control frame payload (RFC 6455 section 5.5).
const CONTROL_PAYLOAD_BYTES_MAX: usize = 125;

/// Largest payload a frame may declare, whatever the configured limits (none included): RFC 6455
/// section 5.2 wants the top bit of a 64-bit length clear, and no allocation exceeds
/// `isize::MAX`; less a header, so that header plus payload always fits in a `usize`.
const FRAME_PAYLOAD_BYTES_MAX: usize = isize::MAX.unsigned_abs() - FrameHeader::BYTES_MAX;

thread_local! {
    /// The socket read buffer of the core running on this thread, shared by all its connections.
    /// It is borrowed only inside one synchronous poll (read, then ingest) and never across an
    /// await, so no two connections use it at once. 64 KiB per core instead of per connection.
    static SOCKET_READ_BUFFER: RefCell<Box<[u8]>> =
        RefCell::new(vec![0; SOCKET_READ_BYTES].into_boxed_slice());
}

/// A `ws://` or `wss://` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path without a trailing slash ("" for the root).
    pub path: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    #[error("'{0}': a gateway URL starts with ws:// or wss://")]
    Scheme(String),
    #[error("'{0}': no host")]
    Host(String),
    #[error("'{0}': invalid port")]
    Port(String),
}

impl GatewayUrl {
    pub fn parse(url: &str) -> Result<GatewayUrl, UrlError> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("wss://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("ws://") {
            (false, rest)
        } else {
            return Err(UrlError::Scheme(url.to_owned()));
        };
        // Discord's URLs carry no query, but a user-given one might: keep only the path.
        let rest = rest.split(['?', '#']).next().unwrap_or_default();
        let (authority, path) = match rest.find('/') {
            Some(index) => (&rest[..index], rest[index..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let (host, port) = crate::url::split_authority(authority, if tls { 443 } else { 80 })
            .map_err(|error| match error {
                crate::url::AuthorityError::Host => UrlError::Host(url.to_owned()),
                crate::url::AuthorityError::Port => UrlError::Port(url.to_owned()),
            })?;
        Ok(GatewayUrl {
            tls,
            host,
            port,
            path: path.to_owned(),
        })
    }

    /// The URL to request, with the gateway query (`v=10&encoding=json[&compress=…]`).
    pub fn request_url(&self, query: &str) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!(
            "{scheme}://{}:{}{}/?{query}",
            self.host_for_url(),
            self.port,
            self.path
        )
    }

    fn host_for_url(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("resolving {host}: {source}")]
    Resolve { host: String, source: io::Error },
    #[error("connecting: {0}")]
    Connect(io::Error),
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    /// Certificate problems are said in words with their fix ([`crate::tls::error_text`]).
    #[error("TLS: {}", crate::tls::error_text(.0))]
    Tls(#[from] rustls::Error),
    #[error("invalid TLS server name {0}")]
    ServerName(String),
    #[error("WebSocket: {0}")]
    WebSocket(#[from] tungstenite::Error),
    #[error("WebSocket upgrade refused: HTTP status {status}")]
    UpgradeRefused { status: u16 },
    #[error("WebSocket upgrade: the answer exceeds {limit_bytes} bytes")]
    UpgradeResponseTooLarge { limit_bytes: usize },
    #[error("the server closed the TCP connection")]
    Eof,
}

impl TransportError {
    /// The certificate the trust store did not verify, if that is why the connect failed.
    pub fn untrusted_certificate(&self) -> Option<crate::tls::UntrustedCertificate> {
        match self {
            TransportError::Tls(error) => crate::tls::UntrustedCertificate::from_rustls(error),
            _ => None,
        }
    }
}

/// A WebSocket message as the connection hands it up: a data message (its fragments joined) or a
/// control message. Payloads are slices of what was received, without a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A text message, its bytes NOT checked for UTF-8: that check cost about 8% of a core
    /// forwarding 1.25 KB events, and nothing downstream needs it. The engine reads only a
    /// payload's head, and the classifier checks the bytes it reads; the compressed modes
    /// (binary frames) never checked UTF-8 either; and the sink checks every payload of a batch
    /// the bot refuses, dropping (and counting) any that is not valid UTF-8 JSON (see
    /// `sink::batch::invalid_records`).
    Text(Bytes),
    Binary(Bytes),
    Ping(Bytes),
    Pong(Bytes),
    /// The server's close, its reason checked for UTF-8 (rare, and logged as text).
    Close(Option<CloseFrame>),
}

impl Incoming {
    /// Payload bytes (for a close: code and reason).
    fn payload_bytes(&self) -> usize {
        match self {
            Incoming::Text(payload)
            | Incoming::Binary(payload)
            | Incoming::Ping(payload)
            | Incoming::Pong(payload) => payload.len(),
            Incoming::Close(frame) => frame.as_ref().map_or(0, |frame| 2 + frame.reason.len()),
        }
    }
}

/// tungstenite's `Message`, checked as tungstenite checks it: a text payload that is not UTF-8
/// fails with [`tungstenite::Error::Utf8`].
/// An open gateway WebSocket.
pub struct Connection {
    tcp: TcpStream,
    tls: Option<Tls>,
    reader: FrameReader,
    /// The write half: tungstenite frames and masks what is sent and tracks the close; it never
    /// reads (its read buffer is configured empty).
    writer: WebSocket<Outgoing>,
    /// Ciphertext (or plaintext without TLS) waiting for the socket.
    pending: Vec<u8>,
    /// Set by [`coalesce_reads`](Self::coalesce_reads); see [`ReadCoalescing`].
    coalescing: Option<ReadCoalescing>,
    /// Whether the last socket read filled the read buffer (more is likely waiting).
    last_read_full: bool,
    /// Ticks in a row at which a coalesced read found nothing.
    quiet_ticks: u32,
    /// When a read last took something (kept while coalescing).
    last_data_at: Instant,
    /// Bytes read since `window_start`.
    window_bytes: usize,
    window_start: Instant,
    /// Whether the last window (at least a tick long) read at least [`hot_bytes_per_tick`] per
    /// tick: such a shard reads at once, as without coalescing.
    hot: bool,
    /// Bytes read since the last decision whether to hold the next read (see
    /// [`Connection::window_limited`]).
    burst_bytes: usize,
}

/// Bytes per second from which a shard's reads are not held (64 KiB per 5 ms, about 10,000
/// typical events per second): it wakes its core often enough on its own. A rate, not bytes per
/// tick: with a per-tick figure a longer tick made shards hot at lower rates (a 20 ms tick at
/// 4,000 events/s per shard).
const HOT_BYTES_PER_SECOND: u128 = 64 * 1024 * 200;
/// At most this many bytes per tick, whatever the tick: holding a shard that reads more would
/// cap it at about a socket receive buffer per tick.
const HOT_BYTES_PER_TICK_MAX: u128 = 256 * 1024;

/// The bytes per tick that make a shard hot.
fn hot_bytes_per_tick(tick: Duration) -> u128 {
    (HOT_BYTES_PER_SECOND * tick.as_nanos() / 1_000_000_000).min(HOT_BYTES_PER_TICK_MAX)
}

/// Ticks in a row with nothing to read after which a coalescing connection waits on its socket
/// again instead of trying at each tick.
const QUIET_TICKS_MAX: u32 = 8;

/// A tick's reads below this never count as window-limited (most ticks of a busy shard; spares
/// them the `getsockopt`).
const WINDOW_LIMITED_BYTES_MIN: usize = 32 * 1024;

/// How long a window-limited connection's read is held: long enough that a sender at its own
/// pace (5 MB/s is 5 KB per ms) brings far less than [`WINDOW_LIMITED_BYTES_MIN`], short enough
/// that a backlogged one refills the window many times a tick.
const WINDOW_LIMITED_HOLD: Duration = Duration::from_millis(1);

/// Read coalescing: after a socket read that drained the socket, the next read of that
/// connection is a non-blocking one at the next tick (`epoch + n × tick`), and so on at each
/// tick while data keeps coming; nothing waits on the socket meanwhile, so what arrives wakes
/// nothing and is read in one go. After [`QUIET_TICKS_MAX`] ticks in a row with nothing to read,
/// the connection waits on its socket again (an idle shard costs no polling), and data that
/// comes after a longer gap than that is not followed by held reads (a shard with a trickle of
/// events reads as without coalescing).
///
/// Why: a core that waits for its sockets goes to sleep, and each sleep of a glommio executor
/// costs a process-wide memory barrier (`membarrier`, an interrupt to every CPU running one of
/// the process's threads) and a wake-up. Reading at once, a core slept after nearly every event
/// at moderate rates. Every connection of a process ticks on the same boundaries, so a core's
/// busy shards are read in one wake-up per tick. A read that filled the buffer is never held
/// (the socket has more), so a backlog drains as fast as before, and a shard that read at least
/// [`hot_bytes_per_tick`] over the last tick is not held at all; an event waits at most one tick
/// longer.
#[derive(Clone, Copy, Debug)]
pub struct ReadCoalescing {
    pub tick: Duration,
    pub epoch: Instant,
}

impl ReadCoalescing {
    /// The first tick boundary after `now`.
    pub fn next_tick(&self, now: Instant) -> Instant {
        let tick_nanos = self.tick.as_nanos().max(1);
        let ticks = now.saturating_duration_since(self.epoch).as_nanos() / tick_nanos + 1;
        let offset = u64::try_from(ticks * tick_nanos).unwrap_or(u64::MAX);
        self.epoch + Duration::from_nanos(offset)
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("tls", &self.tls.is_some())
            .field("reader", &self.reader)
            .field("pending_bytes", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Opens TCP (+ TLS) and performs the WebSocket handshake for `url` with `query`.
    /// Resolution of a host name uses the system resolver once per call; IP literals (and
    /// the mock) never block.
    ///
    /// Of `ws_config`, the reader applies `max_frame_size` and `max_message_size`, the writer the
    /// write settings; `read_buffer_size` is not used (see the module note on memory).
    pub async fn connect(
        url: &GatewayUrl,
        query: &str,
        tls_config: &Arc<rustls::ClientConfig>,
        ws_config: WebSocketConfig,
        connect_timeout: Duration,
    ) -> Result<Connection, TransportError> {
        let addr = resolve(&url.host, url.port)?;
        let tcp = TcpStream::connect_timeout(addr, connect_timeout)
            .await
            .map_err(|e| TransportError::Connect(e.into()))?;
        tcp.set_nodelay(true)
            .map_err(|e| TransportError::Connect(e.into()))?;
        let tls = if url.tls {
            let name = ServerName::try_from(url.host.clone())
                .map_err(|_| TransportError::ServerName(url.host.clone()))?;
            Some(Tls::new(UnbufferedClientConnection::new(
                Arc::clone(tls_config),
                name,
            )?))
        } else {
            None
        };
        let writer = WebSocket::from_raw_socket(
            Outgoing::default(),
            Role::Client,
            Some(ws_config.read_buffer_size(0)),
        );
        let mut connection = Connection {
            tcp,
            tls,
            reader: FrameReader::new(&ws_config),
            writer,
            pending: Vec::new(),
            coalescing: None,
            last_read_full: true,
            quiet_ticks: 0,
            last_data_at: Instant::now(),
            window_bytes: 0,
            window_start: Instant::now(),
            hot: false,
            burst_bytes: 0,
        };
        connection.finish_tls_handshake().await?;
        connection.upgrade(&url.request_url(query)).await?;
        Ok(connection)
    }

    /// The next WebSocket message (text, binary, close, ping/pong). Cancel safe.
    ///
    /// A ping is answered with a pong and a close with the same close (RFC 6455 sections 5.5.2
    /// and 5.5.1); both go out with the next [`flush`](Self::flush). After a close, reading
    /// fails with [`tungstenite::Error::ConnectionClosed`].
    pub async fn read_incoming(&mut self) -> Result<Incoming, TransportError> {
        loop {
            if let Some(message) = self.reader.next_message()? {
                self.answer(&message)?;
                return Ok(message);
            }
            if let Some(coalescing) = self.coalescing
                && !self.last_read_full
                && self.quiet_ticks < QUIET_TICKS_MAX
                && !self.is_hot(coalescing.tick)
            {
                // Read again at the next tick, without waiting on the socket in between: what
                // arrives meanwhile wakes nothing. A sender held back by the window gets a short
                // hold instead.
                let now = Instant::now();
                let until = if self.window_limited() {
                    now + WINDOW_LIMITED_HOLD
                } else {
                    coalescing.next_tick(now)
                };
                glommio::timer::sleep(until.saturating_duration_since(now)).await;
                if self.try_receive()? {
                    self.quiet_ticks = 0;
                    self.last_data_at = Instant::now();
                } else {
                    self.quiet_ticks += 1;
                }
                continue;
            }
            self.receive().await?;
            self.quiet_ticks = 0;
            if let Some(coalescing) = self.coalescing {
                // Data that came more than the quiet ticks after the data before it is not
                // followed by held reads: they would find the socket empty until the shard
                // waits on it again anyway (a shard with a trickle of events).
                let now = Instant::now();
                if now.saturating_duration_since(self.last_data_at)
                    > coalescing.tick * QUIET_TICKS_MAX
                {
                    self.quiet_ticks = QUIET_TICKS_MAX;
                }
                self.last_data_at = now;
            }
        }
    }

    /// Whether the sender is held back by the socket's receive window rather than sending at its
    /// own pace: the reads since the last such decision (one tick's worth for a held connection)
    /// took at least half of the socket's receive buffer. Such a connection's next read is held
    /// only [`WINDOW_LIMITED_HOLD`]: a backlogged sender has filled the window again by then
    /// (and the kernel, seeing the buffer emptied quickly, grows it), while a shard at its own
    /// pace brings a few KB and goes back to ticks.
    ///
    /// Without this a connection could stay throttled for good: the kernel grows a socket's
    /// receive buffer only as fast as the application empties it, so a backlogged shard whose
    /// reads were held kept the initial buffer (about 128 KiB), read under 100 KiB per tick,
    /// never reached [`hot_bytes_per_tick`], and caught up at a few MB/s while the others read
    /// at once (seen as read: one shard of eight 9 s behind, its buffer 150 KiB against the
    /// others' 1–3 MB). Not holding such a connection at all cost shards at 4,000 events/s
    /// (whose buffers start as small) a wake-up per event for a while and 1–1.5 MiB of RSS.
    fn window_limited(&mut self) -> bool {
        let burst = std::mem::take(&mut self.burst_bytes);
        if burst < WINDOW_LIMITED_BYTES_MIN {
            return false;
        }
        rustix::net::sockopt::socket_recv_buffer_size(descriptor(&self.tcp))
            .is_ok_and(|buffer| burst.saturating_mul(2) >= buffer)
    }

    /// Whether this connection reads so much that its reads are not held: decided again once
    /// the current window is a tick old, from the bytes per tick it read.
    fn is_hot(&mut self, tick: Duration) -> bool {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= tick {
            // bytes / elapsed >= hot bytes per tick / tick, without dividing.
            self.hot = self.window_bytes as u128 * tick.as_nanos()
                >= hot_bytes_per_tick(tick) * elapsed.as_nanos();
            self.window_bytes = 0;
            self.window_start = now;
        }
        self.hot
    }

    /// Coalesces this connection's socket reads from now on (see [`ReadCoalescing`]): the
    /// next read is at once, and each read after one that drained the socket waits for a tick.
    pub fn coalesce_reads(&mut self, coalescing: ReadCoalescing) {
        self.coalescing = Some(coalescing);
        self.last_read_full = true;
        self.quiet_ticks = 0;
        self.last_data_at = Instant::now();
        self.window_bytes = 0;
        self.window_start = Instant::now();
        self.hot = false;
        self.burst_bytes = 0;
    }

    /// The next message among those already received, without reading the socket: `None`
    /// when [`read_incoming`](Self::read_incoming) would have to wait. Answers pings and closes
    /// as `read_incoming` does.
    pub fn next_buffered(&mut self) -> Result<Option<Incoming>, TransportError> {
        let message = self.reader.next_message()?;
        if let Some(message) = &message {
            self.answer(message)?;
        }
        Ok(message)
    }

    /// Queues a text message; [`flush`](Self::flush) writes it.
    pub fn queue_text(&mut self, text: &[u8]) -> Result<(), TransportError> {
        let text = std::str::from_utf8(text)
            .map_err(|_| tungstenite::Error::Utf8(String::from("outbound payload")))?;
        self.writer.write(Message::text(text))?;
        self.queue_ws_output()
    }

    /// Queues a close frame with `code`.
    pub fn queue_close(&mut self, code: u16) -> Result<(), TransportError> {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: "".into(),
        };
        self.close_writer(Some(frame))?;
        self.queue_ws_output()
    }

    /// Writes everything queued. Not cancel safe: do not race it.
    pub async fn flush(&mut self) -> Result<(), TransportError> {
        write_pending(&mut self.tcp, &mut self.pending).await
    }

    /// Bytes queued for the socket.
    pub fn pending_bytes(&self) -> usize {
        self.pending.len()
    }

    /// Bytes the connection holds for received data that was not handed out yet (0 when idle
    /// between messages): ciphertext of an incomplete record and plaintext of an incomplete frame.
    pub fn receive_buffer_bytes(&self) -> usize {
        self.reader.retained_bytes() + self.tls.as_ref().map_or(0, |tls| tls.partial.capacity())
    }

    async fn finish_tls_handshake(&mut self) -> Result<(), TransportError> {
        loop {
            let Some(tls) = &mut self.tls else {
                return Ok(());
            };
            // Queues what is due (first the ClientHello); the answers come with `receive`.
            tls.process_kept(&mut self.reader, &mut self.pending)?;
            if tls.established {
                break;
            }
            self.flush().await?;
            self.receive().await?;
        }
        self.flush().await
    }

    /// Sends the upgrade request and waits for its answer; bytes after the answer stay in the
    /// reader as the first frames.
    async fn upgrade(&mut self, request_url: &str) -> Result<(), TransportError> {
        let request = request_url.into_client_request()?;
        let (mut request, key) = generate_request(request)?;
        let accept_key = derive_accept_key(key.as_bytes());
        queue_plaintext(&mut self.tls, &mut request, &mut self.pending)?;
        self.flush().await?;
        loop {
            if let Some(answer_bytes) = parse_upgrade_response(self.reader.buffered(), &accept_key)?
            {
                self.reader.discard(answer_bytes);
                return Ok(());
            }
            self.receive().await?;
        }
    }

    /// Reads the socket once (waiting until it is readable) and hands what came to TLS and the
    /// reader. Cancel safe: the bytes are read and handed on in one synchronous step, and the
    /// wait consumes nothing.
    async fn receive(&mut self) -> Result<(), TransportError> {
        loop {
            if self.try_receive()? {
                return Ok(());
            }
            // Wait until the socket is readable. On an empty socket glommio's read arms an
            // io_uring readiness poll, which holds no buffer (glommio's peek would hold a
            // 4 KiB-aligned one per waiting shard). Only the first poll reads through glommio,
            // and what came since `try_receive` is handed on as any read; once woken, the loop
            // reads with `try_receive`: a read through glommio that did not fill the buffer
            // arms another readiness poll at once, whose completion would wake the core while
            // the next read is held for a tick.
            let mut first = true;
            let received = std::future::poll_fn(|cx| {
                if mem::take(&mut first) {
                    self.poll_receive(cx)
                } else {
                    Poll::Ready(Ok(false))
                }
            })
            .await?;
            if received {
                return Ok(());
            }
        }
    }

    /// Reads the socket through glommio: the bytes that came, handed on (`true`), or pending
    /// until it is readable.
    fn poll_receive(&mut self, cx: &mut Context<'_>) -> Poll<Result<bool, TransportError>> {
        SOCKET_READ_BUFFER.with(|buffer| {
            // Never borrowed twice: this closure does not await and polls nothing but the socket.
            let mut buffer = buffer.borrow_mut();
            match Pin::new(&mut self.tcp).poll_read(cx, &mut buffer[..]) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Ok(0)) => Poll::Ready(Err(TransportError::Eof)),
                Poll::Ready(Ok(n)) => {
                    let filled = n == buffer.len();
                    Poll::Ready(self.take(&mut buffer[..n], filled).map(|()| true))
                }
                Poll::Ready(Err(error)) => Poll::Ready(Err(error.into())),
            }
        })
    }

    /// Reads what the socket holds, without waiting, and hands it to TLS and the reader:
    /// `false` when there was nothing to read.
    fn try_receive(&mut self) -> Result<bool, TransportError> {
        SOCKET_READ_BUFFER.with(|buffer| {
            // Never borrowed twice: this closure does not await.
            let mut buffer = buffer.borrow_mut();
            let n = loop {
                match receive_now(&self.tcp, &mut buffer[..]) {
                    Ok(0) => return Err(TransportError::Eof),
                    Ok(n) => break n,
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                    Err(error) => return Err(error.into()),
                }
            };
            let filled = n == buffer.len();
            self.take(&mut buffer[..n], filled)?;
            Ok(true)
        })
    }

    /// Hands bytes read from the socket to TLS (which decrypts them in place) and the reader;
    /// `filled`: they filled the read buffer.
    fn take(&mut self, bytes: &mut [u8], filled: bool) -> Result<(), TransportError> {
        self.last_read_full = filled;
        self.window_bytes = self.window_bytes.saturating_add(bytes.len());
        self.burst_bytes = self.burst_bytes.saturating_add(bytes.len());
        ingest(&mut self.tls, bytes, &mut self.reader, &mut self.pending)
    }

    /// Queues what the protocol requires in answer to `message`.
    fn answer(&mut self, message: &Incoming) -> Result<(), TransportError> {
        match message {
            Incoming::Ping(payload) => match self.writer.write(Message::Pong(payload.clone())) {
                // After a close no pong is due.
                Ok(()) | Err(tungstenite::Error::Protocol(ProtocolError::SendAfterClosing)) => {}
                Err(error) => return Err(error.into()),
            },
            Incoming::Close(frame) => {
                // Echo the code (as tungstenite does); one it may not send becomes 1002.
                let reply = frame.as_ref().map(|frame| {
                    if frame.code.is_allowed() {
                        frame.clone()
                    } else {
                        CloseFrame {
                            code: CloseCode::Protocol,
                            reason: Utf8Bytes::from_static("Protocol violation"),
                        }
                    }
                });
                // A no-op when this side closed first: the server's close is then the reply.
                self.close_writer(reply)?;
            }
            _ => return Ok(()),
        }
        self.queue_ws_output()
    }

    fn close_writer(&mut self, frame: Option<CloseFrame>) -> Result<(), TransportError> {
        match self.writer.close(frame) {
            Ok(())
            | Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                Ok(())
            }
            Err(error) => Err(error.into()),
        }
    }

    fn queue_ws_output(&mut self) -> Result<(), TransportError> {
        match self.writer.flush() {
            Ok(()) => {}
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {}
            Err(error) => return Err(error.into()),
        }
        let outgoing = &mut self.writer.get_mut().bytes;
        queue_plaintext(&mut self.tls, outgoing, &mut self.pending)
    }
}

/// The read half of the WebSocket, sans-IO: plaintext in ([`push`](Self::push)), messages out
/// ([`next_message`](Self::next_message)). Server frames are unmasked, so a payload is a plain
/// slice of what was received.
///
/// Plaintext is appended to `unsealed` until it holds a whole frame; then that buffer becomes
/// `sealed` (a [`Bytes`], no copy), and frames are cut from its front without a copy, as the
/// payloads of the messages handed out. When `sealed` ends in a partial frame, that tail moves
/// back to `unsealed` (one copy of at most one frame per receive); a frame bigger than what has
/// arrived has its whole size reserved once its header is known, so each of its bytes is copied
/// once. When everything received has been handed out, the reader holds no buffer: the
/// allocation lives on only in the payloads the caller still holds.
///
/// Each frame's header is parsed and checked once, as soon as all of it has arrived (before
/// anything is reserved for the frame), and kept until the frame is cut out.
#[derive(Debug)]
struct FrameReader {
    sealed: Bytes,
    unsealed: Vec<u8>,
    /// The header of the frame at the front of `sealed` or `unsealed`, checked, with the frame's
    /// bytes (header and payload); `None` until all of the header has arrived.
    next_header: Option<(FrameHeader, usize)>,
    /// A message sent in several frames, joined (servers rarely fragment; Discord does not).
    fragments: Option<Fragments>,
    frame_bytes_max: usize,
    message_bytes_max: usize,
    close_received: bool,
}

#[derive(Debug)]
struct Fragments {
    text: bool,
    payload: Vec<u8>,
}

impl FrameReader {
    fn new(config: &WebSocketConfig) -> FrameReader {
        FrameReader {
            sealed: Bytes::new(),
            unsealed: Vec::new(),
            next_header: None,
            fragments: None,
            frame_bytes_max: config.max_frame_size.unwrap_or(usize::MAX),
            message_bytes_max: config.max_message_size.unwrap_or(usize::MAX),
            close_received: false,
        }
    }

    /// Appends received plaintext.
    fn push(&mut self, plaintext: &[u8]) {
        if !self.sealed.is_empty() {
            self.unseal();
        }
        self.unsealed.extend_from_slice(plaintext);
    }

    /// Plaintext received and not yet parsed (the upgrade answer, before any frame).
    fn buffered(&self) -> &[u8] {
        debug_assert!(self.sealed.is_empty(), "only before the first frame");
        &self.unsealed
    }

    /// Drops the first `bytes` of [`buffered`](Self::buffered).
    fn discard(&mut self, bytes: usize) {
        debug_assert!(self.next_header.is_none(), "only before the first frame");
        self.unsealed.drain(..bytes);
        if self.unsealed.is_empty() {
            self.unsealed = Vec::new();
        }
    }

    /// Heap held for data not handed out yet (the capacity of `unsealed`, what is left of
    /// `sealed`, and joined fragments).
    fn retained_bytes(&self) -> usize {
        self.unsealed.capacity()
            + self.sealed.len()
            + self.fragments.as_ref().map_or(0, |f| f.payload.capacity())
    }

    /// The next complete message, or `None` until more plaintext arrives.
    fn next_message(&mut self) -> Result<Option<Incoming>, tungstenite::Error> {
        if self.close_received {
            return Err(tungstenite::Error::ConnectionClosed);
        }
        while let Some((header, payload)) = self.next_frame()? {
            if let Some(message) = self.on_frame(&header, payload)? {
                return Ok(Some(message));
            }
        }
        Ok(None)
    }

    /// The next whole frame's header and payload, or `None` until more plaintext arrives.
    fn next_frame(&mut self) -> Result<Option<(FrameHeader, Bytes)>, tungstenite::Error> {
        let (header, frame_bytes) = match self.next_header {
            Some(known) => known,
            None => {
                let received = if self.sealed.is_empty() {
                    &self.unsealed[..]
                } else {
                    &self.sealed[..]
                };
                let Some(header) = FrameHeader::parse(received) else {
                    if !self.sealed.is_empty() {
                        self.unseal();
                    }
                    return Ok(None);
                };
                let payload_bytes = self.check_header(&header)?;
                // No overflow: the check keeps the payload within FRAME_PAYLOAD_BYTES_MAX.
                let known = (header, header.header_bytes + payload_bytes);
                self.next_header = Some(known);
                known
            }
        };
        if self.sealed.is_empty() {
            if self.unsealed.len() < frame_bytes {
                self.unsealed
                    .reserve_exact(frame_bytes - self.unsealed.len());
                return Ok(None);
            }
            self.sealed = Bytes::from(mem::take(&mut self.unsealed));
        } else if self.sealed.len() < frame_bytes {
            self.unseal();
            self.unsealed
                .reserve_exact(frame_bytes - self.unsealed.len());
            return Ok(None);
        }
        self.next_header = None;
        let frame = self.sealed.split_to(frame_bytes);
        if self.sealed.is_empty() {
            // Let the allocation go with the last payload cut from it.
            self.sealed = Bytes::new();
        }
        Ok(Some((header, frame.slice(header.header_bytes..))))
    }

    /// Moves the rest of `sealed` (a partial frame) to the front of `unsealed`.
    fn unseal(&mut self) {
        debug_assert!(
            self.unsealed.is_empty(),
            "sealed and unsealed never both hold data"
        );
        let tail = mem::take(&mut self.sealed);
        self.unsealed.extend_from_slice(&tail);
    }

    /// Checks what a header says on its own, as tungstenite does for a client, before anything
    /// is reserved for its frame; returns the payload bytes. (The rules that depend on the frames
    /// before, continuation and message size, are [`on_frame`](Self::on_frame)'s.)
    fn check_header(&self, header: &FrameHeader) -> Result<usize, tungstenite::Error> {
        if let OpCode::Data(Data::Reserved(code)) | OpCode::Control(Control::Reserved(code)) =
            header.opcode
        {
            return Err(ProtocolError::InvalidOpcode(code).into());
        }
        let payload_bytes = self.check_frame_length(header.payload_length)?;
        if header.reserved_bits != 0 {
            return Err(ProtocolError::NonZeroReservedBits.into());
        }
        if header.mask.is_some() {
            return Err(ProtocolError::MaskedFrameFromServer.into());
        }
        if let OpCode::Control(_) = header.opcode {
            if !header.is_final {
                return Err(ProtocolError::FragmentedControlFrame.into());
            }
            if payload_bytes > CONTROL_PAYLOAD_BYTES_MAX {
                return Err(ProtocolError::ControlFrameTooBig.into());
            }
        }
        Ok(payload_bytes)
    }

    /// Refuses a frame above `max_frame_size` or `max_message_size` (or
    /// [`FRAME_PAYLOAD_BYTES_MAX`]) before anything is reserved for it.
    fn check_frame_length(&self, length: u64) -> Result<usize, tungstenite::Error> {
        let max_size = self
            .frame_bytes_max
            .min(self.message_bytes_max)
            .min(FRAME_PAYLOAD_BYTES_MAX);
        match usize::try_from(length) {
            Ok(bytes) if bytes <= max_size => Ok(bytes),
            _ => Err(CapacityError::MessageTooLong {
                size: usize::try_from(length).unwrap_or(usize::MAX),
                max_size,
            }
            .into()),
        }
    }

    /// Joins a checked frame to the message it belongs to (RFC 6455 section 5.4), and returns
    /// the message it completes, if any.
    fn on_frame(
        &mut self,
        header: &FrameHeader,
        payload: Bytes,
    ) -> Result<Option<Incoming>, tungstenite::Error> {
        match header.opcode {
            OpCode::Control(control) => {
                let message = match control {
                    Control::Close => {
                        self.close_received = true;
                        Incoming::Close(close_frame(payload)?)
                    }
                    Control::Ping => Incoming::Ping(payload),
                    Control::Pong => Incoming::Pong(payload),
                    // Refused by check_header already.
                    Control::Reserved(code) => {
                        return Err(ProtocolError::InvalidOpcode(code).into());
                    }
                };
                Ok(Some(message))
            }
            OpCode::Data(data) => match (data, self.fragments.as_mut()) {
                // Refused by check_header already.
                (Data::Reserved(code), _) => Err(ProtocolError::InvalidOpcode(code).into()),
                (Data::Continue, None) => Err(ProtocolError::UnexpectedContinueFrame.into()),
                (Data::Text | Data::Binary, Some(_)) => {
                    Err(ProtocolError::ExpectedFragment(data).into())
                }
                (Data::Continue, Some(fragments)) => {
                    let size = fragments.payload.len() + payload.len();
                    if size > self.message_bytes_max {
                        return Err(CapacityError::MessageTooLong {
                            size,
                            max_size: self.message_bytes_max,
                        }
                        .into());
                    }
                    fragments.payload.extend_from_slice(&payload);
                    if !header.is_final {
                        return Ok(None);
                    }
                    let Fragments { text, payload } =
                        self.fragments.take().expect("matched Some above");
                    Ok(Some(data_message(text, Bytes::from(payload))))
                }
                (Data::Text | Data::Binary, None) => {
                    let text = data == Data::Text;
                    if header.is_final {
                        return Ok(Some(data_message(text, payload)));
                    }
                    self.fragments = Some(Fragments {
                        text,
                        payload: payload.to_vec(),
                    });
                    Ok(None)
                }
            },
        }
    }
}

/// A text message is handed up unchecked: see [`Incoming::Text`].
fn data_message(text: bool, payload: Bytes) -> Incoming {
    if text {
        Incoming::Text(payload)
    } else {
        Incoming::Binary(payload)
    }
}

fn close_frame(payload: Bytes) -> Result<Option<CloseFrame>, tungstenite::Error> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(ProtocolError::InvalidCloseSequence.into()),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            let reason = Utf8Bytes::try_from(payload.slice(2..))
                .map_err(|error| tungstenite::Error::Utf8(error.to_string()))?;
            Ok(Some(CloseFrame {
                code: CloseCode::from(code),
                reason,
            }))
        }
    }
}

/// A frame header as RFC 6455 section 5.2 lays it out, as read; what it may say is
/// [`FrameReader::check_header`]'s business.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FrameHeader {
    is_final: bool,
    /// RSV1, RSV2 and RSV3, in the low three bits.
    reserved_bits: u8,
    opcode: OpCode,
    /// The masking key, if the MASK bit is set.
    mask: Option<[u8; 4]>,
    /// The payload length as sent (7, 16 or 64 bits).
    payload_length: u64,
    /// 2 to [`BYTES_MAX`](Self::BYTES_MAX).
    header_bytes: usize,
}

impl FrameHeader {
    /// The longest header: 2 bytes, a 64-bit length and a masking key.
    const BYTES_MAX: usize = 14;

    /// The header `received` starts with, or `None` until all of it has arrived. Reads at most
    /// [`BYTES_MAX`](Self::BYTES_MAX) bytes; allocates nothing and never fails.
    fn parse(received: &[u8]) -> Option<FrameHeader> {
        let [first, second, rest @ ..] = received else {
            return None;
        };
        let (payload_length, length_bytes) = match second & 0x7f {
            126 => (u64::from(u16::from_be_bytes(*rest.first_chunk()?)), 2),
            127 => (u64::from_be_bytes(*rest.first_chunk()?), 8),
            length => (u64::from(length), 0),
        };
        let mask = if second & 0x80 == 0 {
            None
        } else {
            Some(*rest.get(length_bytes..)?.first_chunk()?)
        };
        Some(FrameHeader {
            is_final: first & 0x80 != 0,
            reserved_bits: (first >> 4) & 0x07,
            // Never panics: 0 to 15 are all opcodes, reserved ones included.
            opcode: OpCode::from(first & 0x0f),
            mask,
            payload_length,
            header_bytes: 2 + length_bytes + if mask.is_some() { 4 } else { 0 },
        })
    }
}

/// Checks the answer to the upgrade request once `received` holds all of it: the length of the
/// answer when it is a valid 101, `None` while it is incomplete.
fn parse_upgrade_response(
    received: &[u8],
    accept_key: &str,
) -> Result<Option<usize>, TransportError> {
    let mut headers = [httparse::EMPTY_HEADER; UPGRADE_RESPONSE_HEADERS_MAX];
    let mut response = httparse::Response::new(&mut headers);
    let parsed = response
        .parse(received)
        .map_err(|error| tungstenite::Error::from(ProtocolError::HttparseError(error)))?;
    let answer_bytes = match parsed {
        httparse::Status::Complete(bytes) => bytes,
        httparse::Status::Partial if received.len() > UPGRADE_RESPONSE_BYTES_MAX => {
            return Err(TransportError::UpgradeResponseTooLarge {
                limit_bytes: UPGRADE_RESPONSE_BYTES_MAX,
            });
        }
        httparse::Status::Partial => return Ok(None),
    };
    let status = response.code.unwrap_or_default();
    if status != 101 {
        return Err(TransportError::UpgradeRefused { status });
    }
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|header| header.name.eq_ignore_ascii_case(name))
            .map(|header| header.value)
    };
    // RFC 6455 section 4.1, the checks tungstenite's own client makes.
    let protocol_error = |error: ProtocolError| Err(tungstenite::Error::from(error).into());
    if !header("Upgrade").is_some_and(|value| value.eq_ignore_ascii_case(b"websocket")) {
        return protocol_error(ProtocolError::MissingUpgradeWebSocketHeader);
    }
    if !header("Connection").is_some_and(|value| value.eq_ignore_ascii_case(b"upgrade")) {
        return protocol_error(ProtocolError::MissingConnectionUpgradeHeader);
    }
    if header("Sec-WebSocket-Accept") != Some(accept_key.as_bytes()) {
        return protocol_error(ProtocolError::SecWebSocketAcceptKeyMismatch);
    }
    if header("Sec-WebSocket-Protocol").is_some() {
        return protocol_error(ProtocolError::SecWebSocketSubProtocolError(
            SubProtocolError::ServerSentSubProtocolNoneRequested,
        ));
    }
    Ok(Some(answer_bytes))
}

/// What the write half of the WebSocket produced, on its way to TLS. Never read.
#[derive(Debug, Default)]
struct Outgoing {
    bytes: Vec<u8>,
}

impl Read for Outgoing {
    fn read(&mut self, _buf: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
}

impl Write for Outgoing {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr, TransportError> {
    let resolve_error = |source| TransportError::Resolve {
        host: host.to_owned(),
        source,
    };
    (host, port)
        .to_socket_addrs()
        .map_err(resolve_error)?
        .next()
        .ok_or_else(|| resolve_error(io::Error::new(io::ErrorKind::NotFound, "no address")))
}

async fn write_pending(tcp: &mut TcpStream, pending: &mut Vec<u8>) -> Result<(), TransportError> {
    use futures_lite::AsyncWriteExt;
    while !pending.is_empty() {
        let n = tcp.write(pending).await?;
        if n == 0 {
            return Err(TransportError::Eof);
        }
        pending.drain(..n);
    }
    Ok(())
}

/// One non-blocking `recv` on the connection's socket.
fn receive_now(tcp: &TcpStream, buffer: &mut [u8]) -> io::Result<usize> {
    let (received, _) =
        rustix::net::recv(descriptor(tcp), buffer, rustix::net::RecvFlags::DONTWAIT)?;
    Ok(received)
}

/// The socket's descriptor, for the calls glommio's stream does not offer.
#[allow(unsafe_code)]
fn descriptor(tcp: &TcpStream) -> BorrowedFd<'_> {
    // SAFETY: the descriptor belongs to `tcp`, and the borrow ties it to `tcp`'s, so it is open
    // and is not closed or reused while the borrowed descriptor exists.
    unsafe { BorrowedFd::borrow_raw(tcp.as_raw_fd()) }
}

/// Moves bytes read from the socket through TLS (if any) into the reader.
fn ingest(
    tls: &mut Option<Tls>,
    received: &mut [u8],
    reader: &mut FrameReader,
    pending: &mut Vec<u8>,
) -> Result<(), TransportError> {
    match tls {
        None => {
            reader.push(received);
            Ok(())
        }
        Some(tls) => tls.receive(received, reader, pending),
    }
}

/// Moves plaintext the WebSocket wrote through TLS (if any) into `pending`.
fn queue_plaintext(
    tls: &mut Option<Tls>,
    plaintext: &mut Vec<u8>,
    pending: &mut Vec<u8>,
) -> Result<(), TransportError> {
    if plaintext.is_empty() {
        return Ok(());
    }
    match tls {
        None => pending.append(plaintext),
        Some(tls) => {
            tls.encrypt(plaintext, pending)?;
            plaintext.clear();
        }
    }
    Ok(())
}

/// A connection's TLS, driven through rustls's unbuffered client: ciphertext is handed in where
/// it was read and decrypted there; what rustls wants sent (handshake records, alerts, encrypted
/// data) is appended to the connection's `pending` bytes, which go out in order.
struct Tls {
    conn: UnbufferedClientConnection,
    /// Ciphertext received and not consumed yet: the start of a record, or during the handshake
    /// of a handshake message, whose rest has not come (rustls's contract: handed in again,
    /// with what follows appended). Empty, without an allocation, between records.
    partial: Vec<u8>,
    /// The handshake completed: application data can be written.
    established: bool,
    /// The peer sent close_notify: nothing after it is read (the socket's end follows).
    peer_closed: bool,
}

/// What a rustls encode or encrypt call into a slice of `pending` answered.
enum TlsWriteError {
    /// The slice must have this many bytes.
    Room(usize),
    Failed(rustls::Error),
}

impl From<EncodeError> for TlsWriteError {
    fn from(error: EncodeError) -> Self {
        match error {
            EncodeError::InsufficientSize(size) => TlsWriteError::Room(size.required_size),
            EncodeError::AlreadyEncoded => {
                TlsWriteError::Failed(rustls::Error::General("TLS record encoded twice".into()))
            }
        }
    }
}

impl From<EncryptError> for TlsWriteError {
    fn from(error: EncryptError) -> Self {
        match error {
            EncryptError::InsufficientSize(size) => TlsWriteError::Room(size.required_size),
            EncryptError::EncryptExhausted => TlsWriteError::Failed(rustls::Error::EncryptError),
        }
    }
}

impl Tls {
    fn new(conn: UnbufferedClientConnection) -> Tls {
        Tls {
            conn,
            partial: Vec::new(),
            established: false,
            peer_closed: false,
        }
    }

    /// Processes ciphertext just read: decrypted application data goes to `reader`, what rustls
    /// answers to `pending`, and an incomplete record's bytes are kept for the next read.
    fn receive(
        &mut self,
        received: &mut [u8],
        reader: &mut FrameReader,
        pending: &mut Vec<u8>,
    ) -> Result<(), TransportError> {
        if self.partial.is_empty() {
            // The usual case: records decrypted where they were read.
            let consumed = self.process(received, reader, pending)?;
            if consumed < received.len() {
                self.partial.extend_from_slice(&received[consumed..]);
            }
        } else {
            // A record began in an earlier read: rustls wants it contiguous with its rest.
            self.partial.extend_from_slice(received);
            self.process_kept(reader, pending)?;
        }
        if self.partial.len() > TLS_PARTIAL_BYTES_MAX {
            return Err(TransportError::Tls(rustls::Error::General(format!(
                "{} bytes of ciphertext without a complete TLS record",
                self.partial.len()
            ))));
        }
        Ok(())
    }

    /// Processes the kept ciphertext (rustls is never handed less than it kept): after a read
    /// appended to it, or for what rustls has to send without new input.
    fn process_kept(
        &mut self,
        reader: &mut FrameReader,
        pending: &mut Vec<u8>,
    ) -> Result<(), TransportError> {
        let mut kept = mem::take(&mut self.partial);
        let consumed = self.process(&mut kept, reader, pending)?;
        if consumed < kept.len() {
            kept.drain(..consumed);
            self.partial = kept;
        }
        Ok(())
    }

    /// Runs rustls over `incoming` until it needs more input or has nothing to do: the bytes of
    /// `incoming` consumed (a prefix; the rest must be handed in again with what follows).
    fn process(
        &mut self,
        incoming: &mut [u8],
        reader: &mut FrameReader,
        pending: &mut Vec<u8>,
    ) -> Result<usize, TransportError> {
        let mut consumed = 0;
        loop {
            if self.peer_closed {
                // Anything after close_notify is not the peer's data.
                return Ok(incoming.len());
            }
            let status = self.conn.process_tls_records(&mut incoming[consumed..]);
            let mut discard = status.discard;
            let more = match status.state? {
                ConnectionState::ReadTraffic(mut traffic) => {
                    while let Some(record) = traffic.next_record() {
                        let record = record?;
                        discard += record.discard;
                        reader.push(record.payload);
                    }
                    true
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    append_tls(pending, 512, |out| Ok(encode.encode(out)?))?;
                    true
                }
                // Written to `pending`, which goes out ahead of anything queued after it.
                ConnectionState::TransmitTlsData(transmit) => {
                    transmit.done();
                    true
                }
                ConnectionState::PeerClosed => {
                    self.peer_closed = true;
                    true
                }
                ConnectionState::WriteTraffic(_) => {
                    self.established = true;
                    false
                }
                ConnectionState::BlockedHandshake | ConnectionState::Closed => false,
                // Early data is a server's; the enum is non-exhaustive.
                _ => {
                    return Err(TransportError::Tls(rustls::Error::General(
                        "unexpected TLS state".into(),
                    )));
                }
            };
            consumed += discard;
            if !more {
                return Ok(consumed);
            }
        }
    }

    /// Encrypts `plaintext` onto `pending`, after whatever rustls has to send first.
    fn encrypt(&mut self, plaintext: &[u8], pending: &mut Vec<u8>) -> Result<(), TransportError> {
        // A record adds a header, a content type and a tag; rustls asks for more if needed.
        let records = plaintext.len() / (16 * 1024) + 1;
        let room = plaintext.len() + records * 64;
        loop {
            // The kept ciphertext is handed in, never less; it holds no complete record, so
            // nothing in it is consumed.
            let status = self.conn.process_tls_records(&mut self.partial);
            let discard = status.discard;
            match status.state? {
                ConnectionState::WriteTraffic(mut traffic) => {
                    debug_assert_eq!(discard, 0, "nothing complete was kept");
                    return append_tls(pending, room, |out| Ok(traffic.encrypt(plaintext, out)?));
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    append_tls(pending, 512, |out| Ok(encode.encode(out)?))?;
                }
                ConnectionState::TransmitTlsData(transmit) => transmit.done(),
                ConnectionState::PeerClosed => self.peer_closed = true,
                _ => {
                    return Err(TransportError::Tls(rustls::Error::General(
                        "TLS cannot send now".into(),
                    )));
                }
            }
            self.partial.drain(..discard);
        }
    }
}

/// Appends what `write` puts into a slice of `pending`, growing the slice to the size rustls
/// asks for.
fn append_tls(
    pending: &mut Vec<u8>,
    mut room: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, TlsWriteError>,
) -> Result<(), TransportError> {
    let start = pending.len();
    loop {
        pending.resize(start + room, 0);
        match write(&mut pending[start..]) {
            Ok(written) => {
                pending.truncate(start + written);
                return Ok(());
            }
            Err(TlsWriteError::Room(needed)) if needed > room => room = needed,
            Err(TlsWriteError::Room(_)) => {
                pending.truncate(start);
                return Err(TransportError::Tls(rustls::Error::General(
                    "TLS asked for less room than it had".into(),
                )));
            }
            Err(TlsWriteError::Failed(error)) => {
                pending.truncate(start);
                return Err(TransportError::Tls(error));
            }
        }
    }
}

/// Fuzzing entry point for `FrameReader` (`fuzz/fuzz_targets/frame_reader.rs`). Byte 0 picks the
/// limits (low nibble: frame, high nibble: message, each `16 << n` bytes), byte 1 seeds the sizes
/// of the pieces the rest arrives in. The plaintext pushed whole and pushed in pieces must give
/// the same messages and the same first error, none over the limits, and after every piece the
/// reader holds at most one partial frame, within the limits. The header parser must read the
/// first header of the plaintext, and each of its prefixes, as tungstenite's does.
#[doc(hidden)]
pub fn frame_reader_fuzz_entry(data: &[u8]) {
    let [limits, seed, stream @ ..] = data else {
        return;
    };
    let head = &stream[..stream.len().min(FrameHeader::BYTES_MAX)];
    for end in 0..=head.len() {
        assert_eq!(
            FrameHeader::parse(&head[..end]),
            tungstenite_header(&head[..end]),
            "{:02x?}",
            &head[..end]
        );
    }
    let config = WebSocketConfig::default()
        .max_frame_size(Some(16 << (limits & 0x0f)))
        .max_message_size(Some(16 << (limits >> 4)));
    let whole = read_in_pieces(&config, stream, 0);
    let pieces = read_in_pieces(&config, stream, *seed);
    assert_eq!(whole, pieces, "the messages depend on how the bytes arrive");
}

/// The header `received` starts with, as tungstenite's parser reads it.
fn tungstenite_header(received: &[u8]) -> Option<FrameHeader> {
    let mut cursor = io::Cursor::new(received);
    let (header, payload_length) =
        match tungstenite::protocol::frame::FrameHeader::parse(&mut cursor) {
            Ok(parsed) => parsed?,
            // Its one refusal, a reserved opcode: ours reads that header (its check refuses it).
            Err(tungstenite::Error::Protocol(ProtocolError::InvalidOpcode(_))) => {
                return FrameHeader::parse(received).filter(|header| {
                    matches!(
                        header.opcode,
                        OpCode::Data(Data::Reserved(_)) | OpCode::Control(Control::Reserved(_))
                    )
                });
            }
            Err(error) => panic!("tungstenite's parser failed: {error}"),
        };
    Some(FrameHeader {
        is_final: header.is_final,
        reserved_bits: u8::from(header.rsv1) << 2
            | u8::from(header.rsv2) << 1
            | u8::from(header.rsv3),
        opcode: header.opcode,
        mask: header.mask,
        payload_length,
        header_bytes: usize::try_from(cursor.position()).expect("at most 14 bytes"),
    })
}

/// Messages and the first error (as text) of `stream` pushed in pieces of 1 to 256 bytes drawn
/// from `seed` (0: all at once), each piece read out to the end before the next.
fn read_in_pieces(
    config: &WebSocketConfig,
    mut stream: &[u8],
    seed: u8,
) -> (Vec<Incoming>, Option<String>) {
    const HEADER_BYTES_MAX: usize = FrameHeader::BYTES_MAX;
    let mut reader = FrameReader::new(config);
    let frame_max = reader.frame_bytes_max.min(reader.message_bytes_max);
    let mut messages = Vec::new();
    let mut state = u32::from(seed);
    while !stream.is_empty() {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let piece_bytes = if seed == 0 {
            stream.len()
        } else {
            1 + (state >> 16) as usize % 256
        };
        let (piece, rest) = stream.split_at(piece_bytes.min(stream.len()));
        stream = rest;
        reader.push(piece);
        loop {
            match reader.next_message() {
                Ok(Some(message)) => {
                    assert!(
                        message.payload_bytes() <= reader.message_bytes_max,
                        "{message:?}"
                    );
                    messages.push(message);
                }
                Ok(None) => break,
                Err(error) => return (messages, Some(error.to_string())),
            }
        }
        assert!(reader.sealed.is_empty(), "a complete frame left unread");
        assert!(
            reader.unsealed.len() < HEADER_BYTES_MAX + frame_max,
            "{} bytes held, frames of at most {frame_max}",
            reader.unsealed.len()
        );
        let joined_max = reader.message_bytes_max;
        let retained_max = 2 * (HEADER_BYTES_MAX + frame_max + piece.len()) + 2 * joined_max;
        assert!(
            reader.retained_bytes() <= retained_max,
            "{} bytes retained, at most {retained_max}",
            reader.retained_bytes()
        );
    }
    (messages, None)
}

#[cfg(test)]
mod tests {
    use tungstenite::protocol::frame::Frame;

    use super::*;

    #[test]
    fn gateway_urls_parse() {
        let url = GatewayUrl::parse("wss://gateway.discord.gg").unwrap();
        assert_eq!(
            url,
            GatewayUrl {
                tls: true,
                host: "gateway.discord.gg".into(),
                port: 443,
                path: String::new()
            }
        );
        assert_eq!(
            url.request_url("v=10&encoding=json"),
            "wss://gateway.discord.gg:443/?v=10&encoding=json"
        );
        let url = GatewayUrl::parse("ws://127.0.0.1:4000/resume/").unwrap();
        assert_eq!((url.port, url.path.as_str()), (4000, "/resume"));
        assert_eq!(url.request_url("v=10"), "ws://127.0.0.1:4000/resume/?v=10");
        let url = GatewayUrl::parse("ws://[::1]:9/?v=9").unwrap();
        assert_eq!((url.host.as_str(), url.port), ("::1", 9));
        assert_eq!(url.request_url("v=10"), "ws://[::1]:9/?v=10");
        assert!(matches!(
            GatewayUrl::parse("http://x"),
            Err(UrlError::Scheme(_))
        ));
        assert!(matches!(
            GatewayUrl::parse("ws://:1"),
            Err(UrlError::Host(_))
        ));
        assert!(matches!(
            GatewayUrl::parse("ws://h:x"),
            Err(UrlError::Port(_))
        ));
    }

    /// A frame as a server sends it (unmasked).
    fn server_frame(frame: Frame) -> Vec<u8> {
        let mut bytes = Vec::new();
        frame.format(&mut bytes).unwrap();
        bytes
    }

    fn text_frame(text: &str, opcode: Data, is_final: bool) -> Vec<u8> {
        server_frame(Frame::message(
            Bytes::copy_from_slice(text.as_bytes()),
            OpCode::Data(opcode),
            is_final,
        ))
    }

    fn reader() -> FrameReader {
        FrameReader::new(&WebSocketConfig::default().max_message_size(Some(1 << 20)))
    }

    fn text(text: &str) -> Incoming {
        Incoming::Text(Bytes::copy_from_slice(text.as_bytes()))
    }

    /// Pushes `stream` in pieces of `piece` bytes, reading every message as soon as it is whole.
    fn read_all(stream: &[u8], piece: usize) -> (Vec<Incoming>, FrameReader) {
        let mut reader = reader();
        let mut messages = Vec::new();
        for chunk in stream.chunks(piece) {
            reader.push(chunk);
            while let Some(message) = reader.next_message().unwrap() {
                messages.push(message);
            }
        }
        (messages, reader)
    }

    #[test]
    fn coalesced_reads_resume_on_the_shared_ticks() {
        let epoch = Instant::now();
        let coalescing = ReadCoalescing {
            tick: Duration::from_millis(5),
            epoch,
        };
        let at = |micros| epoch + Duration::from_micros(micros);
        // Strictly after `now`, on a multiple of the tick from the epoch.
        assert_eq!(coalescing.next_tick(epoch), at(5_000));
        assert_eq!(coalescing.next_tick(at(1)), at(5_000));
        assert_eq!(coalescing.next_tick(at(4_999)), at(5_000));
        assert_eq!(coalescing.next_tick(at(5_000)), at(10_000));
        assert_eq!(coalescing.next_tick(at(12_345)), at(15_000));
    }

    #[test]
    fn frames_come_out_whole_however_the_bytes_arrive() {
        let big: String = (0..70_000)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        let mut stream = Vec::new();
        stream.extend(text_frame(r#"{"op":10}"#, Data::Text, true));
        stream.extend(server_frame(Frame::ping(Bytes::from_static(b"p"))));
        stream.extend(server_frame(Frame::message(
            Bytes::from(vec![7u8; 300]),
            OpCode::Data(Data::Binary),
            true,
        )));
        stream.extend(text_frame(&big, Data::Text, true));
        stream.extend(text_frame("frag", Data::Text, false));
        stream.extend(text_frame("men", Data::Continue, false));
        stream.extend(text_frame("ted", Data::Continue, true));
        let expected = vec![
            text(r#"{"op":10}"#),
            Incoming::Ping(Bytes::from_static(b"p")),
            Incoming::Binary(Bytes::from(vec![7u8; 300])),
            text(&big),
            text("fragmented"),
        ];
        for piece in [1, 2, 3, 7, 100, 4096, 16 * 1024, stream.len()] {
            let (messages, reader) = read_all(&stream, piece);
            assert_eq!(messages, expected, "pieces of {piece} bytes");
            assert_eq!(reader.retained_bytes(), 0, "pieces of {piece} bytes");
        }
    }

    #[test]
    fn an_idle_reader_holds_no_buffer() {
        let big = "x".repeat(300_000);
        let frame = text_frame(&big, Data::Text, true);
        let mut reader = reader();
        // The header of a big frame reserves the whole frame once.
        reader.push(&frame[..10]);
        assert_eq!(reader.next_message().unwrap(), None);
        assert!(reader.retained_bytes() >= frame.len());
        reader.push(&frame[10..]);
        let message = reader.next_message().unwrap().unwrap();
        assert_eq!(reader.next_message().unwrap(), None);
        // The payload still holds the allocation; the reader does not.
        assert_eq!(reader.retained_bytes(), 0);
        assert_eq!(message.payload_bytes(), big.len());
        // A partial frame is kept, and only it.
        let small = text_frame("{}", Data::Text, true);
        reader.push(&small[..3]);
        assert_eq!(reader.next_message().unwrap(), None);
        assert!(reader.retained_bytes() < 64, "{}", reader.retained_bytes());
    }

    #[test]
    fn a_close_is_the_last_message() {
        let mut stream = server_frame(Frame::close(Some(CloseFrame {
            code: CloseCode::from(4004),
            reason: "Authentication failed.".into(),
        })));
        stream.extend(text_frame("{}", Data::Text, true));
        let mut reader = reader();
        reader.push(&stream);
        let Some(Incoming::Close(Some(frame))) = reader.next_message().unwrap() else {
            panic!("expected a close");
        };
        assert_eq!(
            (u16::from(frame.code), frame.reason.as_str()),
            (4004, "Authentication failed.")
        );
        assert!(matches!(
            reader.next_message(),
            Err(tungstenite::Error::ConnectionClosed)
        ));
    }

    fn first_error(stream: &[u8]) -> tungstenite::Error {
        let mut reader = reader();
        reader.push(stream);
        loop {
            match reader.next_message() {
                Ok(Some(_)) => {}
                Ok(None) => panic!("no error"),
                Err(error) => return error,
            }
        }
    }

    #[test]
    fn protocol_violations_fail() {
        let protocol = |stream: &[u8]| match first_error(stream) {
            tungstenite::Error::Protocol(error) => error,
            other => panic!("{other:?}"),
        };
        let mut masked = text_frame("{}", Data::Text, true);
        masked[1] |= 0x80;
        masked.splice(2..2, [1, 2, 3, 4]);
        assert_eq!(protocol(&masked), ProtocolError::MaskedFrameFromServer);
        let mut reserved_bits = text_frame("{}", Data::Text, true);
        reserved_bits[0] |= 0x40;
        assert_eq!(protocol(&reserved_bits), ProtocolError::NonZeroReservedBits);
        assert_eq!(
            protocol(&text_frame("x", Data::Continue, true)),
            ProtocolError::UnexpectedContinueFrame
        );
        let mut interleaved = text_frame("a", Data::Text, false);
        interleaved.extend(text_frame("b", Data::Text, true));
        assert_eq!(
            protocol(&interleaved),
            ProtocolError::ExpectedFragment(Data::Text)
        );
        let mut fragmented_ping = server_frame(Frame::ping(Bytes::from_static(b"p")));
        fragmented_ping[0] &= 0x7f;
        assert_eq!(
            protocol(&fragmented_ping),
            ProtocolError::FragmentedControlFrame
        );
        assert_eq!(protocol(&[0x83, 0]), ProtocolError::InvalidOpcode(3));
        assert_eq!(protocol(&[0x8b, 0]), ProtocolError::InvalidOpcode(11));
        assert_eq!(protocol(&[0x88, 1, 3]), ProtocolError::InvalidCloseSequence);
        assert!(matches!(
            first_error(&[0x88, 3, 0x0f, 0xa0, 0xff]),
            tungstenite::Error::Utf8(_)
        ));
        let mut ping_too_big = server_frame(Frame::ping(Bytes::from(vec![0; 126])));
        assert_eq!(protocol(&ping_too_big), ProtocolError::ControlFrameTooBig);
        // A 125-byte ping sent with a 16-bit length is still within the limit.
        ping_too_big.splice(1..4, [126, 0, 125]);
        ping_too_big.truncate(4 + 125);
        let mut reader = reader();
        reader.push(&ping_too_big);
        assert_eq!(
            reader.next_message().unwrap(),
            Some(Incoming::Ping(Bytes::from(vec![0; 125])))
        );
    }

    /// Each refusal that a header alone decides comes with the header, before its payload
    /// arrives and before anything is reserved for it.
    #[test]
    fn a_header_is_refused_before_its_payload_arrives() {
        let refused = |header: &[u8]| {
            let mut reader = reader();
            reader.push(header);
            let error = reader.next_message().unwrap_err();
            assert!(reader.retained_bytes() < 64, "{header:02x?}");
            error
        };
        let protocol = |header: &[u8]| match refused(header) {
            tungstenite::Error::Protocol(error) => error,
            other => panic!("{other:?}"),
        };
        // A masked 64 KiB text frame: refused once its masking key is there.
        assert_eq!(
            protocol(&[0x81, 0xfe, 0xff, 0xff, 1, 2, 3, 4]),
            ProtocolError::MaskedFrameFromServer
        );
        for first in [0xc1, 0xa1, 0x91] {
            assert_eq!(
                protocol(&[first, 126, 0x10, 0]),
                ProtocolError::NonZeroReservedBits
            );
        }
        assert_eq!(
            protocol(&[0x09, 126, 0, 100]),
            ProtocolError::FragmentedControlFrame
        );
        assert_eq!(
            protocol(&[0x8a, 126, 0x10, 0]),
            ProtocolError::ControlFrameTooBig
        );
        assert_eq!(
            protocol(&[0x87, 126, 0x10, 0]),
            ProtocolError::InvalidOpcode(7)
        );
        // The length is checked first, as tungstenite did: a frame over the limits is refused
        // as such whatever else is wrong with it.
        assert!(matches!(
            refused(&[0xf1, 0xff, 0, 0, 0, 0, 0x40, 0, 0, 0, 1, 2, 3, 4]),
            tungstenite::Error::Capacity(CapacityError::MessageTooLong { .. })
        ));
    }

    /// A length with its top bit set (RFC 6455 section 5.2), or one no allocation could hold, is
    /// refused even without configured limits.
    #[test]
    fn a_length_beyond_any_allocation_is_refused_without_limits() {
        let config = WebSocketConfig::default()
            .max_frame_size(None)
            .max_message_size(None);
        let just_over = u64::try_from(FRAME_PAYLOAD_BYTES_MAX).unwrap() + 1;
        for length in [u64::MAX, 1 << 63, just_over] {
            let mut reader = FrameReader::new(&config);
            reader.push(&[0x82, 127]);
            reader.push(&length.to_be_bytes());
            match reader.next_message() {
                Err(tungstenite::Error::Capacity(CapacityError::MessageTooLong {
                    size,
                    max_size,
                })) => assert_eq!(
                    (size, max_size),
                    (usize::try_from(length).unwrap(), FRAME_PAYLOAD_BYTES_MAX)
                ),
                other => panic!("{length}: {other:?}"),
            }
            assert!(reader.retained_bytes() < 64);
        }
    }

    /// Text is handed up unchecked (see `Incoming::Text`).
    #[test]
    fn a_text_message_that_is_not_utf8_is_handed_up() {
        let mut stream = vec![0x81, 2, 0xff, 0xfe];
        stream.extend(text_frame("{", Data::Text, false));
        stream.extend([0x80, 1, 0xc3]);
        stream.extend(text_frame("{}", Data::Text, true));
        let (messages, _) = read_all(&stream, 1);
        assert_eq!(
            messages,
            [
                Incoming::Text(Bytes::from_static(b"\xff\xfe")),
                Incoming::Text(Bytes::from_static(b"{\xc3")),
                text("{}"),
            ]
        );
    }

    /// Every length encoding, masked and not, each header read as tungstenite writes it, and
    /// every prefix of it incomplete.
    #[test]
    fn headers_parse_in_every_length_encoding() {
        let lengths: [(u64, usize); 9] = [
            (0, 2),
            (1, 2),
            (125, 2),
            (126, 4),
            (127, 4),
            (0xffff, 4),
            (0x1_0000, 10),
            (1 << 40, 10),
            (u64::MAX, 10),
        ];
        let opcodes = [
            OpCode::Data(Data::Continue),
            OpCode::Data(Data::Text),
            OpCode::Data(Data::Binary),
            OpCode::Data(Data::Reserved(3)),
            OpCode::Control(Control::Close),
            OpCode::Control(Control::Ping),
            OpCode::Control(Control::Pong),
            OpCode::Control(Control::Reserved(15)),
        ];
        for (length, unmasked_bytes) in lengths {
            for opcode in opcodes {
                for mask in [None, Some([1, 2, 0xfe, 0xff])] {
                    for (is_final, rsv1, rsv2, rsv3) in [
                        (true, false, false, false),
                        (false, true, false, true),
                        (true, false, true, false),
                    ] {
                        let written = tungstenite::protocol::frame::FrameHeader {
                            is_final,
                            rsv1,
                            rsv2,
                            rsv3,
                            opcode,
                            mask,
                        };
                        let mut bytes = Vec::new();
                        written.format(length, &mut bytes).unwrap();
                        let header_bytes = unmasked_bytes + if mask.is_some() { 4 } else { 0 };
                        assert_eq!(bytes.len(), header_bytes);
                        let expected = FrameHeader {
                            is_final,
                            reserved_bits: u8::from(rsv1) << 2
                                | u8::from(rsv2) << 1
                                | u8::from(rsv3),
                            opcode,
                            mask,
                            payload_length: length,
                            header_bytes,
                        };
                        for end in 0..bytes.len() {
                            assert_eq!(FrameHeader::parse(&bytes[..end]), None, "{bytes:02x?}");
                        }
                        assert_eq!(FrameHeader::parse(&bytes), Some(expected));
                        // What follows the header is not the header's.
                        bytes.extend([0xff; 20]);
                        assert_eq!(FrameHeader::parse(&bytes), Some(expected));
                        assert_eq!(tungstenite_header(&bytes), Some(expected));
                    }
                }
            }
        }
    }

    /// A frame that arrives in many receives has its header parsed once, and a header split
    /// over receives is read whole.
    #[test]
    fn a_header_is_kept_until_its_frame_is_whole() {
        let payload = "z".repeat(70_000);
        let frame = text_frame(&payload, Data::Text, true);
        let mut reader = reader();
        for byte in &frame[..9] {
            reader.push(&[*byte]);
            assert_eq!(reader.next_message().unwrap(), None);
            assert!(reader.next_header.is_none());
        }
        reader.push(&frame[9..10]);
        assert_eq!(reader.next_message().unwrap(), None);
        let known = reader.next_header.expect("the header is whole");
        assert_eq!(known.1, frame.len());
        // Overwriting the header bytes now would go unnoticed: it is not parsed again.
        reader.unsealed[1] = 0;
        reader.push(&frame[10..frame.len() - 1]);
        assert_eq!(reader.next_message().unwrap(), None);
        assert_eq!(reader.next_header, Some(known));
        reader.push(&frame[frame.len() - 1..]);
        assert_eq!(reader.next_message().unwrap(), Some(text(&payload)));
        assert_eq!(reader.next_header, None);
        assert_eq!(reader.retained_bytes(), 0);
    }

    #[test]
    fn an_oversized_frame_fails_on_its_header() {
        let mut reader = FrameReader::new(
            &WebSocketConfig::default()
                .max_frame_size(Some(1000))
                .max_message_size(Some(2000)),
        );
        // Only the header of a 1 GiB frame: refused before anything is reserved.
        reader.push(&[0x82, 127, 0, 0, 0, 0, 0x40, 0, 0, 0]);
        match reader.next_message() {
            Err(tungstenite::Error::Capacity(CapacityError::MessageTooLong { size, max_size })) => {
                assert_eq!((size, max_size), (1 << 30, 1000))
            }
            other => panic!("{other:?}"),
        }
        assert!(reader.retained_bytes() < 100);
        // Fragments add up against max_message_size.
        let mut reader = FrameReader::new(
            &WebSocketConfig::default()
                .max_frame_size(Some(1000))
                .max_message_size(Some(2000)),
        );
        let part = "y".repeat(900);
        for (opcode, is_final) in [(Data::Text, false), (Data::Continue, false)] {
            reader.push(&text_frame(&part, opcode, is_final));
            assert_eq!(reader.next_message().unwrap(), None);
        }
        reader.push(&text_frame(&part, Data::Continue, true));
        assert!(matches!(
            reader.next_message(),
            Err(tungstenite::Error::Capacity(
                CapacityError::MessageTooLong { size: 2700, .. }
            ))
        ));
    }

    const ANSWER: &str = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
    /// RFC 6455 section 1.3's example key and its accept value.
    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    #[test]
    fn the_upgrade_answer_is_checked_and_what_follows_it_kept() {
        let accept_key = derive_accept_key(KEY.as_bytes());
        let hello = text_frame(r#"{"op":10}"#, Data::Text, true);
        let mut received = ANSWER.as_bytes().to_vec();
        received.extend(&hello);
        for cut in [1, 20, ANSWER.len() - 1] {
            assert!(
                parse_upgrade_response(&received[..cut], &accept_key)
                    .unwrap()
                    .is_none()
            );
        }
        let mut reader = reader();
        reader.push(&received);
        let answer_bytes = parse_upgrade_response(reader.buffered(), &accept_key)
            .unwrap()
            .unwrap();
        assert_eq!(answer_bytes, ANSWER.len());
        reader.discard(answer_bytes);
        assert_eq!(reader.next_message().unwrap(), Some(text(r#"{"op":10}"#)));

        let refused = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n";
        assert!(matches!(
            parse_upgrade_response(refused, &accept_key),
            Err(TransportError::UpgradeRefused { status: 403 })
        ));
        let protocol = |answer: &str| match parse_upgrade_response(answer.as_bytes(), &accept_key) {
            Err(TransportError::WebSocket(tungstenite::Error::Protocol(error))) => error,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            protocol(&ANSWER.replace("s3pP", "xxxx")),
            ProtocolError::SecWebSocketAcceptKeyMismatch
        );
        assert_eq!(
            protocol(&ANSWER.replace("Upgrade: websocket", "Upgrade: h2c")),
            ProtocolError::MissingUpgradeWebSocketHeader
        );
        assert_eq!(
            protocol(&ANSWER.replace("Connection: Upgrade", "Connection: close")),
            ProtocolError::MissingConnectionUpgradeHeader
        );
        let endless = format!(
            "HTTP/1.1 101 OK\r\nX: {}",
            "y".repeat(UPGRADE_RESPONSE_BYTES_MAX)
        );
        assert!(matches!(
            parse_upgrade_response(endless.as_bytes(), &accept_key),
            Err(TransportError::UpgradeResponseTooLarge { .. })
        ));
    }
}
