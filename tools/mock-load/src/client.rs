//! The client side of the load: raw WebSocket shards (tokio-tungstenite) on their own tokio
//! runtime, so that they never share a thread with the mock.
//!
//! Each connection reads HELLO, identifies as shard `index` of `total`, heartbeats on the
//! interval HELLO gave (first beat jittered, as Discord asks), answers a server heartbeat
//! request, and reads frames as fast as the socket gives them. Compressed transports are
//! decompressed (one inflate/zstd context per connection) so the client does the work a real
//! one does. Each message's envelope head (`{"t":…,"s":…,"op":…`) is parsed without a DOM to
//! count dispatches and check that sequences arrive without gaps; READY and HELLO are parsed
//! in full.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::procfs::{self, CpuTime};

/// Name of the client runtime's threads (their CPU time is read by this name).
pub const CLIENT_THREAD_NAME: &str = "load-client";
/// Failure messages kept (all are counted).
const ERRORS_KEPT: usize = 10;
/// Discord's zlib-stream message suffix (a sync flush).
const ZLIB_SUFFIX: [u8; 4] = [0, 0, 0xff, 0xff];

/// Transport compression a client asks for with `compress=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Compress {
    /// Plain text frames.
    None,
    /// One zlib context per connection, sync flush per message.
    ZlibStream,
    /// One zstd context per connection, flushed per message.
    ZstdStream,
}

impl Compress {
    pub fn name(self) -> &'static str {
        match self {
            Compress::None => "none",
            Compress::ZlibStream => "zlib-stream",
            Compress::ZstdStream => "zstd-stream",
        }
    }

    fn query(self) -> &'static str {
        match self {
            Compress::None => "",
            Compress::ZlibStream => "&compress=zlib-stream",
            Compress::ZstdStream => "&compress=zstd-stream",
        }
    }
}

/// What the clients connect to and how.
#[derive(Clone, Debug)]
pub struct ClientParams {
    /// `ws://127.0.0.1:PORT`.
    pub ws_url: String,
    pub token: String,
    /// Connections, identifying as shards `0..connections` of `connections`.
    pub connections: u32,
    pub compress: Compress,
    /// Connections between TCP connect and the end of their GUILD_CREATE burst at once.
    pub ramp: usize,
    /// Runtime worker threads.
    pub threads: usize,
    /// tungstenite read buffer per connection (also the read size per syscall).
    pub read_buffer: usize,
    pub intents: u64,
}

/// Counters of one connection. Written by its task only (plain stores), read by anyone;
/// aligned so that connections on different threads never share a cache line.
#[repr(align(128))]
#[derive(Default)]
struct ConnStats {
    frames: AtomicU64,
    wire_bytes: AtomicU64,
    json_bytes: AtomicU64,
    dispatches: AtomicU64,
    guild_creates: AtomicU64,
    heartbeats: AtomicU64,
    acks: AtomicU64,
    seq_errors: AtomicU64,
}

/// The same counters as plain numbers, local to the task between publications.
#[derive(Default, Clone, Copy)]
struct Local {
    frames: u64,
    wire_bytes: u64,
    json_bytes: u64,
    dispatches: u64,
    guild_creates: u64,
    heartbeats: u64,
    acks: u64,
    seq_errors: u64,
}

impl ConnStats {
    fn publish(&self, local: &Local) {
        let r = Ordering::Relaxed;
        self.frames.store(local.frames, r);
        self.wire_bytes.store(local.wire_bytes, r);
        self.json_bytes.store(local.json_bytes, r);
        self.dispatches.store(local.dispatches, r);
        self.guild_creates.store(local.guild_creates, r);
        self.heartbeats.store(local.heartbeats, r);
        self.acks.store(local.acks, r);
        self.seq_errors.store(local.seq_errors, r);
    }
}

/// Counters of all connections together, at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Totals {
    /// WebSocket handshakes completed.
    pub established: u64,
    /// READY received.
    pub ready: u64,
    /// READY and every GUILD_CREATE it announced received.
    pub warmed: u64,
    /// Connections that ended with an error.
    pub failed: u64,
    /// The first few failure messages.
    pub errors: Vec<String>,
    pub frames: u64,
    /// WebSocket payload bytes as received (compressed when compressed).
    pub wire_bytes: u64,
    /// Gateway JSON bytes after decompression.
    pub json_bytes: u64,
    /// Dispatches (op 0), READY and GUILD_CREATE included.
    pub dispatches: u64,
    pub guild_creates: u64,
    pub heartbeats: u64,
    pub acks: u64,
    /// Dispatches whose `s` was not the previous one plus 1.
    pub seq_errors: u64,
}

impl Totals {
    pub fn to_json(&self) -> Value {
        json!({
            "established": self.established,
            "ready": self.ready,
            "warmed": self.warmed,
            "failed": self.failed,
            "errors": self.errors,
            "frames": self.frames,
            "wire_bytes": self.wire_bytes,
            "json_bytes": self.json_bytes,
            "dispatches": self.dispatches,
            "guild_creates": self.guild_creates,
            "heartbeats": self.heartbeats,
            "acks": self.acks,
            "seq_errors": self.seq_errors,
        })
    }

    pub fn from_json(value: &Value) -> anyhow::Result<Totals> {
        let number = |key: &str| {
            value
                .get(key)
                .and_then(Value::as_u64)
                .with_context(|| format!("client totals without `{key}`"))
        };
        Ok(Totals {
            established: number("established")?,
            ready: number("ready")?,
            warmed: number("warmed")?,
            failed: number("failed")?,
            errors: value
                .get("errors")
                .and_then(Value::as_array)
                .map(|errors| {
                    errors
                        .iter()
                        .filter_map(|e| e.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            frames: number("frames")?,
            wire_bytes: number("wire_bytes")?,
            json_bytes: number("json_bytes")?,
            dispatches: number("dispatches")?,
            guild_creates: number("guild_creates")?,
            heartbeats: number("heartbeats")?,
            acks: number("acks")?,
            seq_errors: number("seq_errors")?,
        })
    }
}

/// State shared by the connection tasks and the driver.
struct Context {
    params: ClientParams,
    addr: SocketAddr,
    url: String,
    stats: Vec<ConnStats>,
    established: AtomicU64,
    ready: AtomicU64,
    warmed: AtomicU64,
    failed: AtomicU64,
    /// Connection tasks still running.
    live: AtomicU64,
    stopping: AtomicBool,
    errors: Mutex<Vec<String>>,
}

impl Context {
    fn fail(&self, index: u32, error: &anyhow::Error) {
        self.failed.fetch_add(1, Ordering::AcqRel);
        let mut errors = self.errors.lock().unwrap_or_else(PoisonError::into_inner);
        if errors.len() < ERRORS_KEPT {
            errors.push(format!("shard {index}: {error:#}"));
        }
    }

    fn totals(&self) -> Totals {
        let r = Ordering::Relaxed;
        let mut totals = Totals {
            established: self.established.load(Ordering::Acquire),
            ready: self.ready.load(Ordering::Acquire),
            warmed: self.warmed.load(Ordering::Acquire),
            failed: self.failed.load(Ordering::Acquire),
            errors: self
                .errors
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            ..Totals::default()
        };
        for stats in &self.stats {
            totals.frames += stats.frames.load(r);
            totals.wire_bytes += stats.wire_bytes.load(r);
            totals.json_bytes += stats.json_bytes.load(r);
            totals.dispatches += stats.dispatches.load(r);
            totals.guild_creates += stats.guild_creates.load(r);
            totals.heartbeats += stats.heartbeats.load(r);
            totals.acks += stats.acks.load(r);
            totals.seq_errors += stats.seq_errors.load(r);
        }
        totals
    }
}

/// The client connections of one run, on their own runtime.
pub struct ClientSet {
    runtime: Option<tokio::runtime::Runtime>,
    context: Arc<Context>,
    stop: watch::Sender<bool>,
    thread_ids: Vec<u32>,
}

impl ClientSet {
    /// Builds the runtime and starts connecting (at most `ramp` handshakes in flight).
    pub fn start(params: ClientParams) -> anyhow::Result<ClientSet> {
        let addr: SocketAddr = params
            .ws_url
            .strip_prefix("ws://")
            .context("the mock URL is not ws://")?
            .parse()
            .context("the mock URL is not ws://IP:PORT")?;
        let url = format!(
            "{}/?v=10&encoding=json{}",
            params.ws_url,
            params.compress.query()
        );
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(params.threads.max(1))
            .thread_name(CLIENT_THREAD_NAME)
            .enable_all()
            .build()
            .context("cannot build the client runtime")?;
        let context = Arc::new(Context {
            stats: (0..params.connections)
                .map(|_| ConnStats::default())
                .collect(),
            params,
            addr,
            url,
            established: AtomicU64::new(0),
            ready: AtomicU64::new(0),
            warmed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            live: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            errors: Mutex::new(Vec::new()),
        });
        let (stop, stop_rx) = watch::channel(false);
        runtime.spawn(launch(Arc::clone(&context), stop_rx));
        // The workers start at once; give them a moment to be named in /proc.
        let started = Instant::now();
        let mut thread_ids = procfs::threads_named(CLIENT_THREAD_NAME);
        while thread_ids.len() < context.params.threads
            && started.elapsed() < Duration::from_secs(1)
        {
            std::thread::sleep(Duration::from_millis(5));
            thread_ids = procfs::threads_named(CLIENT_THREAD_NAME);
        }
        Ok(ClientSet {
            runtime: Some(runtime),
            context,
            stop,
            thread_ids,
        })
    }

    pub fn totals(&self) -> Totals {
        self.context.totals()
    }

    /// CPU time of the client runtime's threads.
    pub fn cpu(&self) -> CpuTime {
        procfs::threads_cpu(&self.thread_ids)
    }

    /// Waits until every connection has its READY and GUILD_CREATE burst (or failed), or
    /// `limit` passes; progress goes to stderr.
    pub fn wait_ready(&self, limit: Duration, quiet: bool) -> Totals {
        let started = Instant::now();
        let mut last_report = started;
        let wanted = u64::from(self.context.params.connections);
        loop {
            let totals = self.totals();
            let done = totals.warmed + totals.failed >= wanted;
            if done || started.elapsed() >= limit {
                return totals;
            }
            if !quiet && last_report.elapsed() >= Duration::from_secs(1) {
                last_report = Instant::now();
                eprintln!(
                    "  ramp: {} established, {} ready, {} warmed, {} failed of {wanted}",
                    totals.established, totals.ready, totals.warmed, totals.failed
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Closes every connection (close code 1000), waits up to `limit` for them to finish
    /// and returns the final counters.
    pub fn stop(mut self, limit: Duration) -> Totals {
        self.context.stopping.store(true, Ordering::Release);
        self.stop.send_replace(true);
        let started = Instant::now();
        while self.context.live.load(Ordering::Acquire) > 0 && started.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(10));
        }
        let totals = self.totals();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(1));
        }
        totals
    }
}

impl Drop for ClientSet {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn launch(context: Arc<Context>, stop: watch::Receiver<bool>) {
    let ramp = Arc::new(Semaphore::new(context.params.ramp.max(1)));
    for index in 0..context.params.connections {
        let Ok(permit) = Arc::clone(&ramp).acquire_owned().await else {
            return;
        };
        if *stop.borrow() {
            return;
        }
        context.live.fetch_add(1, Ordering::AcqRel);
        let context = Arc::clone(&context);
        let stop = stop.clone();
        tokio::spawn(async move {
            let result = Connection::run(&context, index, permit, stop).await;
            if let Err(error) = result
                && !context.stopping.load(Ordering::Acquire)
            {
                context.fail(index, &error);
            }
            context.live.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

/// What a message's envelope says.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    op: u64,
    seq: Option<u64>,
    kind: Kind,
}

#[derive(Debug, PartialEq, Eq)]
enum Kind {
    Ready,
    GuildCreate,
    OtherDispatch,
    NotDispatch,
}

impl Kind {
    fn of(t: Option<&[u8]>) -> Kind {
        match t {
            None => Kind::NotDispatch,
            Some(b"READY") => Kind::Ready,
            Some(b"GUILD_CREATE") => Kind::GuildCreate,
            Some(_) => Kind::OtherDispatch,
        }
    }
}

/// Reads `{"t":…,"s":…,"op":…` from the front of a message (the mock writes Discord's
/// envelope key order); anything else goes through a full parse.
fn parse_head(message: &[u8]) -> anyhow::Result<Head> {
    if let Some(head) = parse_head_fast(message) {
        return Ok(head);
    }
    let value: Value = serde_json::from_slice(message).context("a message is not JSON")?;
    let op = value
        .get("op")
        .and_then(Value::as_u64)
        .context("a message without an integer op")?;
    let t = value.get("t").and_then(Value::as_str).map(str::as_bytes);
    Ok(Head {
        op,
        seq: value.get("s").and_then(Value::as_u64),
        kind: Kind::of(t),
    })
}

fn parse_head_fast(message: &[u8]) -> Option<Head> {
    fn number(input: &[u8]) -> Option<(u64, &[u8])> {
        let digits = input.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || digits > 19 {
            return None;
        }
        let value = std::str::from_utf8(&input[..digits]).ok()?.parse().ok()?;
        Some((value, &input[digits..]))
    }
    let rest = message.strip_prefix(b"{\"t\":")?;
    let (t, rest) = match rest.strip_prefix(b"null") {
        Some(rest) => (None, rest),
        None => {
            let rest = rest.strip_prefix(b"\"")?;
            let end = rest.iter().position(|&b| b == b'"' || b == b'\\')?;
            if rest[end] != b'"' {
                return None;
            }
            (Some(&rest[..end]), &rest[end + 1..])
        }
    };
    let rest = rest.strip_prefix(b",\"s\":")?;
    let (seq, rest) = match rest.strip_prefix(b"null") {
        Some(rest) => (None, rest),
        None => {
            let (seq, rest) = number(rest)?;
            (Some(seq), rest)
        }
    };
    let rest = rest.strip_prefix(b",\"op\":")?;
    let (op, rest) = number(rest)?;
    if !matches!(rest.first(), Some(b',' | b'}')) {
        return None;
    }
    Some(Head {
        op,
        seq,
        kind: Kind::of(t),
    })
}

/// One connection's decompressor.
enum Inflater {
    None,
    Zlib {
        inflate: Box<flate2::Decompress>,
        /// Frames of a message not yet ended by the zlib suffix.
        pending: Vec<u8>,
    },
    Zstd(Box<zstd::stream::raw::Decoder<'static>>),
}

impl Inflater {
    fn new(compress: Compress) -> anyhow::Result<Inflater> {
        Ok(match compress {
            Compress::None => Inflater::None,
            Compress::ZlibStream => Inflater::Zlib {
                inflate: Box::new(flate2::Decompress::new(true)),
                pending: Vec::new(),
            },
            Compress::ZstdStream => Inflater::Zstd(Box::new(
                zstd::stream::raw::Decoder::new().context("cannot create a zstd decoder")?,
            )),
        })
    }

    /// Decompresses one binary frame into `out` (cleared first). `false`: the message is not
    /// complete yet (zlib-stream without the suffix).
    fn inflate(&mut self, frame: &[u8], out: &mut Vec<u8>) -> anyhow::Result<bool> {
        out.clear();
        match self {
            Inflater::None => bail!("a binary frame on an uncompressed connection"),
            Inflater::Zlib { inflate, pending } => {
                let whole;
                let mut input: &[u8] = if pending.is_empty() && frame.ends_with(&ZLIB_SUFFIX) {
                    frame
                } else {
                    pending.extend_from_slice(frame);
                    if !pending.ends_with(&ZLIB_SUFFIX) {
                        return Ok(false);
                    }
                    whole = std::mem::take(pending);
                    &whole
                };
                out.reserve(input.len() * 4 + 1024);
                loop {
                    let before_in = inflate.total_in();
                    let before_out = out.len();
                    inflate
                        .decompress_vec(input, out, flate2::FlushDecompress::Sync)
                        .context("zlib-stream does not inflate")?;
                    let consumed = usize::try_from(inflate.total_in() - before_in)
                        .context("inflate consumed more than its input")?;
                    input = &input[consumed..];
                    if input.is_empty() && out.len() < out.capacity() {
                        return Ok(true);
                    }
                    if consumed == 0 && out.len() == before_out && out.len() < out.capacity() {
                        bail!("zlib-stream inflate makes no progress");
                    }
                    if out.len() == out.capacity() {
                        out.reserve(out.capacity());
                    }
                }
            }
            Inflater::Zstd(decoder) => {
                use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
                out.reserve(frame.len() * 4 + 1024);
                let mut input = InBuffer::around(frame);
                loop {
                    let mut output = OutBuffer::around_pos(out, out.len());
                    decoder
                        .run(&mut input, &mut output)
                        .context("zstd-stream does not decompress")?;
                    let full = output.pos() == output.capacity();
                    if input.pos == frame.len() && !full {
                        return Ok(true);
                    }
                    if full {
                        out.reserve(out.capacity());
                    }
                }
            }
        }
    }
}

/// What to do after a message.
enum Action {
    Nothing,
    Identify,
    Heartbeat,
}

struct Connection<'a> {
    context: &'a Context,
    index: u32,
    stats: &'a ConnStats,
    local: Local,
    inflater: Inflater,
    buffer: Vec<u8>,
    last_seq: Option<u64>,
    interval: Option<Duration>,
    awaiting_ack: bool,
    expected_guilds: Option<u64>,
    permit: Option<OwnedSemaphorePermit>,
}

type Ws = WebSocketStream<TcpStream>;

impl Connection<'_> {
    async fn run(
        context: &Context,
        index: u32,
        permit: OwnedSemaphorePermit,
        mut stop: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let stats = &context.stats[index as usize];
        let mut connection = Connection {
            context,
            index,
            stats,
            local: Local::default(),
            inflater: Inflater::new(context.params.compress)?,
            buffer: Vec::new(),
            last_seq: None,
            interval: None,
            awaiting_ack: false,
            expected_guilds: None,
            permit: Some(permit),
        };
        let mut ws = connection.connect().await?;
        context.established.fetch_add(1, Ordering::AcqRel);
        if *stop.borrow_and_update() {
            return close(&mut ws).await;
        }
        let stopped = stop.changed();
        tokio::pin!(stopped);
        // Armed once HELLO gives the interval.
        let heartbeat = tokio::time::sleep(Duration::from_secs(86_400));
        tokio::pin!(heartbeat);
        loop {
            tokio::select! {
                biased;
                _ = &mut stopped => return close(&mut ws).await,
                () = &mut heartbeat, if connection.interval.is_some() => {
                    let interval = connection.interval.unwrap_or(Duration::from_secs(41));
                    heartbeat.as_mut().reset(tokio::time::Instant::now() + interval);
                    connection.heartbeat(&mut ws).await?;
                }
                incoming = ws.next() => {
                    let message = match incoming {
                        Some(Ok(message)) => message,
                        Some(Err(error)) => return Err(anyhow!(error).context("read failed")),
                        None => bail!("the connection ended without a close frame"),
                    };
                    match connection.on_message(message)? {
                        Action::Nothing => {}
                        Action::Identify => {
                            connection.identify(&mut ws).await?;
                            let interval = connection.interval.unwrap_or(Duration::from_secs(41));
                            let first = interval.mul_f64(jitter(index));
                            heartbeat.as_mut().reset(tokio::time::Instant::now() + first);
                        }
                        Action::Heartbeat => connection.heartbeat(&mut ws).await?,
                    }
                    connection.stats.publish(&connection.local);
                }
            }
        }
    }

    async fn connect(&self) -> anyhow::Result<Ws> {
        let config = WebSocketConfig::default()
            .read_buffer_size(self.context.params.read_buffer)
            .write_buffer_size(0)
            .max_message_size(Some(64 << 20))
            .max_frame_size(Some(16 << 20));
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = async {
                let tcp = TcpStream::connect(self.context.addr)
                    .await
                    .context("TCP connect")?;
                tcp.set_nodelay(true).context("TCP_NODELAY")?;
                let (ws, _response) = tokio_tungstenite::client_async_with_config(
                    self.context.url.as_str(),
                    tcp,
                    Some(config),
                )
                .await
                .context("WebSocket handshake")?;
                Ok::<_, anyhow::Error>(ws)
            }
            .await;
            match result {
                Ok(ws) => return Ok(ws),
                Err(error) if attempt >= 5 => return Err(error),
                Err(_) => tokio::time::sleep(Duration::from_millis(100 * attempt)).await,
            }
        }
    }

    fn on_message(&mut self, message: Message) -> anyhow::Result<Action> {
        self.local.frames += 1;
        match message {
            Message::Text(text) => {
                self.local.wire_bytes += text.len() as u64;
                self.local.json_bytes += text.len() as u64;
                self.on_payload(text.as_bytes())
            }
            Message::Binary(frame) => {
                self.local.wire_bytes += frame.len() as u64;
                let mut buffer = std::mem::take(&mut self.buffer);
                let result = match self.inflater.inflate(&frame, &mut buffer) {
                    Ok(true) => {
                        self.local.json_bytes += buffer.len() as u64;
                        self.on_payload(&buffer)
                    }
                    Ok(false) => Ok(Action::Nothing),
                    Err(error) => Err(error),
                };
                self.buffer = buffer;
                result
            }
            Message::Close(frame) => match frame {
                Some(frame) => bail!("the mock closed with {} {}", frame.code, frame.reason),
                None => bail!("the mock closed without a code"),
            },
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Ok(Action::Nothing),
        }
    }

    fn on_payload(&mut self, payload: &[u8]) -> anyhow::Result<Action> {
        let head = parse_head(payload)?;
        match head.op {
            0 => {
                self.local.dispatches += 1;
                let seq = head.seq.context("a dispatch without s")?;
                if seq != self.last_seq.unwrap_or(0) + 1 {
                    self.local.seq_errors += 1;
                }
                self.last_seq = Some(seq);
                match head.kind {
                    Kind::Ready => self.on_ready(payload)?,
                    Kind::GuildCreate => {
                        self.local.guild_creates += 1;
                        if Some(self.local.guild_creates) == self.expected_guilds {
                            self.warmed();
                        }
                    }
                    Kind::OtherDispatch | Kind::NotDispatch => {}
                }
                Ok(Action::Nothing)
            }
            1 => Ok(Action::Heartbeat),
            7 => bail!("op 7 Reconnect (no faults were asked for)"),
            9 => bail!("op 9 Invalid Session: {}", String::from_utf8_lossy(payload)),
            10 => {
                let hello: Value = serde_json::from_slice(payload).context("HELLO")?;
                let interval = hello
                    .pointer("/d/heartbeat_interval")
                    .and_then(Value::as_u64)
                    .context("HELLO without d.heartbeat_interval")?;
                self.interval = Some(Duration::from_millis(interval));
                Ok(Action::Identify)
            }
            11 => {
                self.local.acks += 1;
                self.awaiting_ack = false;
                Ok(Action::Nothing)
            }
            op => bail!("unexpected op {op}"),
        }
    }

    fn on_ready(&mut self, payload: &[u8]) -> anyhow::Result<()> {
        let ready: Value = serde_json::from_slice(payload).context("READY")?;
        let guilds = ready
            .pointer("/d/guilds")
            .and_then(Value::as_array)
            .context("READY without d.guilds")?
            .len() as u64;
        ready
            .pointer("/d/session_id")
            .and_then(Value::as_str)
            .context("READY without d.session_id")?;
        self.context.ready.fetch_add(1, Ordering::AcqRel);
        self.expected_guilds = Some(guilds);
        if guilds == 0 {
            self.warmed();
        }
        Ok(())
    }

    fn warmed(&mut self) {
        if self.permit.take().is_some() {
            self.context.warmed.fetch_add(1, Ordering::AcqRel);
        }
    }

    async fn identify(&mut self, ws: &mut Ws) -> anyhow::Result<()> {
        let params = &self.context.params;
        let identify = json!({
            "op": 2,
            "d": {
                "token": params.token,
                "intents": params.intents,
                "properties": {"os": "linux", "browser": "mock-load", "device": "mock-load"},
                "compress": false,
                "shard": [self.index, params.connections],
            }
        });
        ws.send(Message::text(identify.to_string()))
            .await
            .context("sending IDENTIFY")
    }

    async fn heartbeat(&mut self, ws: &mut Ws) -> anyhow::Result<()> {
        if self.awaiting_ack {
            bail!("no heartbeat ACK within an interval");
        }
        let d = self
            .last_seq
            .map_or_else(|| "null".to_owned(), |s| s.to_string());
        ws.send(Message::text(format!(r#"{{"op":1,"d":{d}}}"#)))
            .await
            .context("sending a heartbeat")?;
        self.awaiting_ack = true;
        self.local.heartbeats += 1;
        self.stats.publish(&self.local);
        Ok(())
    }
}

/// The first heartbeat's share of the interval, in [0, 1), spread evenly over the shards.
fn jitter(index: u32) -> f64 {
    let spread = u64::from(index).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11;
    spread as f64 / (1u64 << 53) as f64
}

async fn close(ws: &mut Ws) -> anyhow::Result<()> {
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    // The mock answers the close; reading on lets the handshake finish. A mock that is
    // already gone is no error at this point.
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        if ws.close(Some(frame)).await.is_ok() {
            while let Some(Ok(_)) = ws.next().await {}
        }
    })
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_of_mock_messages() {
        let head = parse_head(br#"{"t":"MESSAGE_CREATE","s":42,"op":0,"d":{}}"#).unwrap();
        assert_eq!(
            head,
            Head {
                op: 0,
                seq: Some(42),
                kind: Kind::OtherDispatch
            }
        );
        let head = parse_head(br#"{"t":null,"s":null,"op":11,"d":null}"#).unwrap();
        assert_eq!(head.op, 11);
        assert_eq!(head.kind, Kind::NotDispatch);
        assert_eq!(
            parse_head(br#"{"t":"READY","s":1,"op":0,"d":{}}"#)
                .unwrap()
                .kind,
            Kind::Ready
        );
        // Another key order falls back to a full parse.
        let head = parse_head(br#"{"op":0,"d":{},"s":7,"t":"GUILD_CREATE"}"#).unwrap();
        assert_eq!(
            head,
            Head {
                op: 0,
                seq: Some(7),
                kind: Kind::GuildCreate
            }
        );
        assert!(parse_head(b"{\"t\":").is_err());
        assert!(parse_head_fast(br#"{"t":"A","s":1,"op":0x"#).is_none());
    }

    #[test]
    fn inflaters_follow_the_mock_encoders() {
        use mock_gateway::Transport;
        use mock_gateway::compress::{Encoder, Frame};
        for (transport, compress) in [
            (Transport::ZlibStream, Compress::ZlibStream),
            (Transport::ZstdStream, Compress::ZstdStream),
        ] {
            let mut encoder = Encoder::new(transport, false, 6, 3, 0).unwrap();
            let mut inflater = Inflater::new(compress).unwrap();
            let mut out = Vec::new();
            for i in 0..200 {
                let message = format!(
                    r#"{{"t":"MESSAGE_CREATE","s":{i},"op":0,"d":{{"content":"{}"}}}}"#,
                    "ab".repeat(i * 37 % 5000)
                );
                let Frame::Binary(frame) = encoder.encode(&message.clone().into()).unwrap() else {
                    panic!("compressed frames are binary")
                };
                assert!(inflater.inflate(&frame, &mut out).unwrap());
                assert_eq!(out, message.as_bytes());
            }
        }
    }

    #[test]
    fn jitter_is_a_fraction() {
        for index in 0..10_000 {
            assert!((0.0..1.0).contains(&jitter(index)));
        }
    }
}
