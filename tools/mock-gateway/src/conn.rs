//! One gateway WebSocket connection: HELLO, IDENTIFY/RESUME, heartbeats, the dispatch
//! stream, commands, limits and faults.
//!
//! The task owns its socket; it shares sessions and limits through [`Shared`]. Every rule a
//! client breaks is answered the way Discord answers it (close code or op 9) AND recorded in
//! the ledger. Nothing here may panic on client input.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Utf8Bytes, protocol::frame::coding::CloseCode};

use crate::compress::{Encoder, Frame};
use crate::config::Transport;
use crate::events::{self, DispatchInfo};
use crate::ledger::ViolationKind;
use crate::rng::{Rng, derive_seed};
use crate::state::{Budget, ConnectionHandle, Control, Dispatch, Fault, Session, Shared};
use crate::timeline::Wake;

/// Discord's limit on one client payload.
const PAYLOAD_BYTES_MAX: usize = 4096;
/// Intent bits Discord defines (0..=16, 20, 21, 24, 25); others get close 4013.
const INTENTS_VALID: u64 = 0x1_FFFF | (1 << 20) | (1 << 21) | (1 << 24) | (1 << 25);
/// GUILD_MEMBERS, GUILD_PRESENCES, MESSAGE_CONTENT.
const INTENTS_PRIVILEGED: u64 = (1 << 1) | (1 << 8) | (1 << 15);
/// Request Guild Members for all members: once per guild per 30 s.
const MEMBER_REQUEST_WINDOW: Duration = Duration::from_secs(30);
/// Dispatches produced and written per loop turn, so reads are never starved.
const BUDGET: Budget = Budget {
    max_dispatches: 256,
};
/// Time allowed for the close handshake after a close frame.
const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// Gateway opcodes a client may send.
const CLIENT_COMMAND_OPS: [u8; 5] = [3, 4, 8, 31, 43];

/// Serves one upgraded WebSocket until it ends.
pub(crate) async fn serve<S>(shared: Arc<Shared>, stream: S, query: &str, via_resume_url: bool)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(128 * 1024)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20));
    let mut ws = WebSocketStream::from_raw_socket(stream, Role::Server, Some(ws_config)).await;
    shared.ledger.with(|l| l.connections_total += 1);

    let transport = match parse_query(query) {
        Ok(transport) => transport,
        Err((kind, code, detail)) => {
            shared.ledger.violation(None, kind, detail, Some(code));
            close(&mut ws, code).await;
            return;
        }
    };
    let encoder = match Encoder::new(
        transport,
        false,
        shared.config.zlib_level,
        shared.config.zstd_level,
        shared.config.payload_compress_min_bytes,
    ) {
        Ok(encoder) => encoder,
        Err(error) => {
            tracing::error!(%error, "cannot create the encoder");
            return;
        }
    };

    let (control_tx, mut control_rx) = mpsc::unbounded_channel();
    let id = {
        let mut state = shared.lock();
        let id = state.next_connection_id;
        state.next_connection_id += 1;
        state.connections.insert(
            id,
            ConnectionHandle {
                shard: None,
                control: control_tx,
            },
        );
        id
    };
    let now = Instant::now();
    let mut conn = Connection {
        shared: Arc::clone(&shared),
        id,
        transport,
        encoder,
        via_resume_url,
        session: None,
        shard: None,
        sent_upto: 0,
        last_heartbeat_at: now,
        send_times: VecDeque::new(),
        reconnect_deadline: None,
        stall_until: None,
        truncate_next: false,
        zombie_since: None,
        draining: false,
        stream_on_connection: 0,
        rng: Rng::new(derive_seed(shared.seed, &[0x636f_6e6e, id])),
        outbox: Vec::with_capacity(BUDGET.max_dispatches),
    };

    let exit = conn.run(&mut ws, &mut control_rx).await;
    conn.finish(&exit);
    shared.lock().remove_connection(id);
    match exit {
        Exit::Close(code) => close(&mut ws, code).await,
        // Reading on lets tungstenite send its close reply, completing the handshake the
        // client started; a client that gets no reply may treat the session as lost.
        Exit::ClientClosed(_) => {
            let _ = timeout(CLOSE_HANDSHAKE_TIMEOUT, async {
                while let Some(Ok(_)) = ws.next().await {}
            })
            .await;
        }
        Exit::Drop | Exit::Lost => {}
    }
}

/// How a connection ended.
#[derive(Debug)]
enum Exit {
    /// The mock closes with this code.
    Close(u16),
    /// The mock drops TCP without a close frame.
    Drop,
    /// The client sent a close frame (with this code).
    ClientClosed(Option<u16>),
    /// The client's TCP connection ended or failed without a close frame.
    Lost,
}

struct Connection {
    shared: Arc<Shared>,
    id: u64,
    transport: Transport,
    encoder: Encoder,
    via_resume_url: bool,
    session: Option<Arc<Mutex<Session>>>,
    shard: Option<u32>,
    /// Highest sequence written (or, for a zombie, swallowed) on this connection.
    sent_upto: u64,
    last_heartbeat_at: Instant,
    /// Client payload times in the sliding send window.
    send_times: VecDeque<Instant>,
    /// After op 7/op 9: the client must have reconnected by then.
    reconnect_deadline: Option<Instant>,
    stall_until: Option<Instant>,
    zombie_since: Option<Instant>,
    /// After op 7/op 9 no more dispatches are produced on this connection.
    draining: bool,
    /// A `truncated` fault: the next dispatch written is cut short.
    truncate_next: bool,
    stream_on_connection: u64,
    rng: Rng,
    outbox: Vec<Dispatch>,
}

type Ws<S> = WebSocketStream<S>;

fn lock(session: &Mutex<Session>) -> MutexGuard<'_, Session> {
    // Session updates are panic-free bookkeeping; a poisoned lock still holds usable data.
    session.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Connection {
    async fn run<S>(
        &mut self,
        ws: &mut Ws<S>,
        control: &mut mpsc::UnboundedReceiver<Control>,
    ) -> Exit
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let hello = format!(
            r#"{{"t":null,"s":null,"op":10,"d":{{"heartbeat_interval":{},"_trace":["[\"gateway-prd-us-east1-b-mock\",{{\"micros\":0.0}}]"]}}}}"#,
            self.shared.config.heartbeat_interval_ms
        );
        if self.send_control(ws, hello.into()).await.is_err() {
            return Exit::Lost;
        }
        loop {
            let wake = self.next_wake(Instant::now());
            let step = tokio::select! {
                biased;
                Some(message) = control.recv() => self.on_control(ws, message).await,
                incoming = ws.next() => match incoming {
                    Some(Ok(message)) => self.on_message(ws, message).await,
                    Some(Err(_)) | None => Err(Exit::Lost),
                },
                () = sleep_until(wake.into()) => self.on_timer(ws).await,
            };
            if let Err(exit) = step {
                return exit;
            }
        }
    }

    /// The earliest instant something must happen without client input.
    fn next_wake(&self, now: Instant) -> Instant {
        let config = &self.shared.config;
        let mut wake = self.last_heartbeat_at
            + config.heartbeat_interval()
            + Duration::from_millis(config.heartbeat_grace_ms);
        if let Some(since) = self.zombie_since {
            let patience = config.heartbeat_interval() * config.zombie_patience_intervals;
            return wake
                .min(since + patience)
                .min(now + Duration::from_millis(100));
        }
        if let Some(deadline) = self.reconnect_deadline {
            wake = wake.min(deadline);
        }
        if let Some(until) = self.stall_until {
            return wake.min(until);
        }
        if let (Some(session), false) = (&self.session, self.draining) {
            match lock(session).wake(self.sent_upto) {
                Wake::Now => return now,
                Wake::At(due) => wake = wake.min(due),
                Wake::Never => {}
            }
        }
        wake
    }

    async fn on_timer<S>(&mut self, ws: &mut Ws<S>) -> Result<(), Exit>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let now = Instant::now();
        let config = &self.shared.config;
        if let Some(since) = self.zombie_since {
            if now >= since + config.heartbeat_interval() * config.zombie_patience_intervals {
                self.shared.ledger.violation(
                    self.shard,
                    ViolationKind::ZombieUndetected,
                    format!(
                        "connection kept open {} ms after it went silent",
                        now.duration_since(since).as_millis()
                    ),
                    None,
                );
                return Err(Exit::Drop);
            }
            // Events keep "happening" and vanish on the wire; a resume must replay them.
            self.produce_into_the_void(now);
            return Ok(());
        }
        if self
            .reconnect_deadline
            .is_some_and(|deadline| now >= deadline)
        {
            self.shared.ledger.violation(
                self.shard,
                ViolationKind::IgnoredReconnect,
                "no reconnect within --reconnect-grace-ms of op 7/op 9",
                None,
            );
            return Err(Exit::Drop);
        }
        let heartbeat_deadline = self.last_heartbeat_at
            + config.heartbeat_interval()
            + Duration::from_millis(config.heartbeat_grace_ms);
        if now >= heartbeat_deadline {
            self.shared.ledger.violation(
                self.shard,
                ViolationKind::HeartbeatTimeout,
                format!(
                    "no heartbeat for {} ms",
                    now.duration_since(self.last_heartbeat_at).as_millis()
                ),
                Some(4009),
            );
            self.end_session("close_4009");
            return Err(Exit::Close(4009));
        }
        if self.stall_until.is_some_and(|until| now < until) {
            return Ok(());
        }
        self.stall_until = None;
        self.pump(ws, now).await
    }

    /// Produces what is due and writes it, then applies a fault if one was rolled.
    async fn pump<S>(&mut self, ws: &mut Ws<S>, now: Instant) -> Result<(), Exit>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let Some(session) = self.session.clone() else {
            return Ok(());
        };
        if self.draining {
            return Ok(());
        }
        let mut out = std::mem::take(&mut self.outbox);
        let (fault, overrun) = {
            let mut session = lock(&session);
            session.take_unsent(self.sent_upto, &mut out);
            let produced = session.produce(now, &self.shared, &BUDGET, &mut out);
            session.delta.frames_sent += out.len() as u64;
            session.flush_ledger(&self.shared.ledger);
            (self.roll_faults(produced.steady), produced.overrun)
        };
        let result = self.write_dispatches(ws, &mut out).await;
        out.clear();
        self.outbox = out;
        result?;
        if overrun {
            return self.overrun(ws, now).await;
        }
        match fault {
            Some(fault) => self.apply_fault(ws, fault).await,
            None => Ok(()),
        }
    }

    /// The session fell further behind its timeline than the mock keeps and has ended: op 9
    /// `d: false`, as Discord answers a session whose buffer it dropped.
    async fn overrun<S>(&mut self, ws: &mut Ws<S>, now: Instant) -> Result<(), Exit>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        tracing::debug!(shard = ?self.shard, "session overrun");
        self.release_session(now);
        self.reconnect_deadline =
            Some(now + Duration::from_millis(self.shared.config.reconnect_grace_ms));
        self.send_control(ws, r#"{"t":null,"s":null,"op":9,"d":false}"#.into())
            .await
    }

    fn produce_into_the_void(&mut self, now: Instant) {
        let Some(session) = self.session.clone() else {
            return;
        };
        if self.draining {
            return;
        }
        let mut out = std::mem::take(&mut self.outbox);
        {
            let mut session = lock(&session);
            session.take_unsent(self.sent_upto, &mut out);
            // An overrun ends the session; the zombie connection learns it at its next resume.
            session.produce(now, &self.shared, &BUDGET, &mut out);
            session.delta.frames_sent += out.len() as u64;
            session.flush_ledger(&self.shared.ledger);
        }
        if let Some(last) = out.last() {
            self.sent_upto = last.seq;
        }
        out.clear();
        self.outbox = out;
    }

    /// Rolls the configured fault probabilities once per steady-stream dispatch; the first
    /// fault that fires wins.
    fn roll_faults(&mut self, steady_dispatches: usize) -> Option<Fault> {
        let config = &self.shared.config;
        let mut fault = None;
        for _ in 0..steady_dispatches {
            self.stream_on_connection += 1;
            if fault.is_some() || self.stream_on_connection <= config.fault_warmup_dispatches {
                continue;
            }
            let rng = &mut self.rng;
            fault = if rng.chance(config.fault_reconnect) {
                Some(Fault::Reconnect)
            } else if rng.chance(config.fault_invalid_session_resumable) {
                Some(Fault::InvalidSessionResumable)
            } else if rng.chance(config.fault_invalid_session) {
                Some(Fault::InvalidSession)
            } else if rng.chance(config.fault_close) {
                let index = rng.below(config.fault_close_codes.len() as u64) as usize;
                Some(Fault::Close(config.fault_close_codes[index]))
            } else if rng.chance(config.fault_drop) {
                Some(Fault::Drop)
            } else if rng.chance(config.fault_zombie) {
                Some(Fault::Zombie)
            } else if rng.chance(config.fault_stall) {
                Some(Fault::Stall)
            } else if rng.chance(config.fault_corrupt) {
                Some(Fault::Corrupt)
            } else if rng.chance(config.fault_server_heartbeat) {
                Some(Fault::ServerHeartbeat)
            } else {
                None
            };
        }
        fault
    }

    async fn apply_fault<S>(&mut self, ws: &mut Ws<S>, fault: Fault) -> Result<(), Exit>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let Some(shard) = self.shard else {
            return Ok(());
        };
        tracing::debug!(shard, fault = %fault.name(), "fault");
        self.shared.ledger.with(|l| {
            *l.shards
                .entry(shard)
                .or_default()
                .faults
                .entry(fault.name())
                .or_default() += 1;
        });
        let now = Instant::now();
        let grace = Duration::from_millis(self.shared.config.reconnect_grace_ms);
        match fault {
            Fault::Reconnect => {
                self.draining = true;
                self.reconnect_deadline = Some(now + grace);
                self.send_control(ws, r#"{"t":null,"s":null,"op":7,"d":null}"#.into())
                    .await
            }
            Fault::InvalidSessionResumable => {
                self.draining = true;
                self.reconnect_deadline = Some(now + grace);
                self.send_control(ws, r#"{"t":null,"s":null,"op":9,"d":true}"#.into())
                    .await
            }
            Fault::InvalidSession => {
                self.end_session("invalid_session");
                self.release_session(now);
                self.reconnect_deadline = Some(now + grace);
                self.send_control(ws, r#"{"t":null,"s":null,"op":9,"d":false}"#.into())
                    .await
            }
            Fault::Close(code) => {
                if matches!(code, 4003 | 4007 | 4009) {
                    self.end_session(&format!("close_{code}"));
                }
                Err(Exit::Close(code))
            }
            Fault::Drop => Err(Exit::Drop),
            Fault::Zombie => {
                self.zombie_since = Some(now);
                Ok(())
            }
            Fault::Stall => {
                self.stall_until = Some(now + Duration::from_millis(self.shared.config.stall_ms));
                Ok(())
            }
            Fault::Corrupt => {
                let message = if self.encoder.is_binary() {
                    let garbage: Vec<u8> = (0..64).map(|_| self.rng.next_u64() as u8).collect();
                    Message::Binary(garbage.into())
                } else {
                    Message::Text(r#"{"t":"MESSAGE_CREATE","s":"#.into())
                };
                write(ws, vec![message]).await
            }
            Fault::Truncated => {
                self.truncate_next = true;
                Ok(())
            }
            Fault::ServerHeartbeat => {
                self.send_control(ws, r#"{"t":null,"s":null,"op":1,"d":null}"#.into())
                    .await
            }
        }
    }

    async fn on_control<S>(&mut self, ws: &mut Ws<S>, control: Control) -> Result<(), Exit>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        match control {
            Control::Fault(fault) if self.session.is_some() && self.zombie_since.is_none() => {
                self.apply_fault(ws, fault).await
            }
            Control::Fault(_) => Ok(()),
            Control::Close(code) => Err(Exit::Close(code)),
            Control::Superseded => Err(Exit::Drop),
            Control::GuildsChanged if self.zombie_since.is_none() => {
                self.pump(ws, Instant::now()).await
            }
            Control::GuildsChanged => Ok(()),
        }
    }

    async fn on_message<S>(&mut self, ws: &mut Ws<S>, message: Message) -> Result<(), Exit>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        match message {
            Message::Close(frame) => {
                let code = frame.map(|f| u16::from(f.code));
                if matches!(code, Some(1000 | 1001)) && self.zombie_since.is_none() {
                    self.end_session("client_close_1000");
                }
                Err(Exit::ClientClosed(code))
            }
            // A zombie hears nothing.
            _ if self.zombie_since.is_some() => Ok(()),
            Message::Text(text) => self.on_payload(ws, text.as_bytes()).await,
            Message::Binary(_) => self.violation(
                ViolationKind::InvalidPayload,
                "binary frame on encoding=json",
                4002,
            ),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Ok(()),
        }
    }

    fn violation(&self, kind: ViolationKind, detail: &str, code: u16) -> Result<(), Exit> {
        self.shared
            .ledger
            .violation(self.shard, kind, detail, Some(code));
        Err(Exit::Close(code))
    }

    async fn on_payload<S>(&mut self, ws: &mut Ws<S>, payload: &[u8]) -> Result<(), Exit>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let now = Instant::now();
        let config = &self.shared.config;
        let window = Duration::from_millis(config.send_window_ms);
        while self
            .send_times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= window)
        {
            self.send_times.pop_front();
        }
        self.send_times.push_back(now);
        if self.send_times.len() > config.send_limit as usize {
            let detail = format!(
                "{} payloads within {} ms",
                self.send_times.len(),
                window.as_millis()
            );
            return self.violation(ViolationKind::SendRateExceeded, &detail, 4008);
        }
        if payload.len() > PAYLOAD_BYTES_MAX {
            let detail = format!(
                "payload of {} bytes (max {PAYLOAD_BYTES_MAX})",
                payload.len()
            );
            return self.violation(ViolationKind::PayloadTooLarge, &detail, 4002);
        }
        let Ok(value) = serde_json::from_slice::<Value>(payload) else {
            return self.violation(ViolationKind::InvalidPayload, "payload is not JSON", 4002);
        };
        let Some(op) = value.get("op").and_then(Value::as_u64) else {
            return self.violation(ViolationKind::InvalidPayload, "no integer op", 4002);
        };
        let d = value.get("d").cloned().unwrap_or(Value::Null);
        match op {
            1 => {
                self.last_heartbeat_at = now;
                if let Some(shard) = self.shard {
                    self.shared
                        .ledger
                        .with(|l| l.shards.entry(shard).or_default().heartbeats += 1);
                }
                self.send_control(ws, r#"{"t":null,"s":null,"op":11,"d":null}"#.into())
                    .await
            }
            2 => self.on_identify(ws, &d, now).await,
            6 => self.on_resume(ws, &d, now).await,
            op if CLIENT_COMMAND_OPS.contains(&(op as u8)) && op <= 43 => {
                if self.session.is_none() {
                    return self.violation(
                        ViolationKind::NotAuthenticated,
                        &format!("op {op} before identify"),
                        4003,
                    );
                }
                self.on_command(ws, op as u8, value, &d, now).await
            }
            op => {
                if self.session.is_none() {
                    return self.violation(
                        ViolationKind::NotAuthenticated,
                        &format!("op {op} before identify"),
                        4003,
                    );
                }
                self.violation(ViolationKind::UnknownOpcode, &format!("op {op}"), 4001)
            }
        }
    }

    fn token_ok(&self, d: &Value) -> bool {
        let token = d.get("token").and_then(Value::as_str).unwrap_or_default();
        let token = token.strip_prefix("Bot ").unwrap_or(token);
        token == self.shared.config.token && self.shared.token_valid.load(Ordering::Acquire)
    }

    async fn on_identify<S>(&mut self, ws: &mut Ws<S>, d: &Value, now: Instant) -> Result<(), Exit>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let shared = Arc::clone(&self.shared);
        let config = &shared.config;
        if self.session.is_some() {
            return self.violation(ViolationKind::AlreadyAuthenticated, "second identify", 4005);
        }
        if !self.token_ok(d) {
            return self.violation(ViolationKind::AuthenticationFailed, "identify token", 4004);
        }
        let shard_pair = d.get("shard").and_then(Value::as_array);
        let (shard, total) = match shard_pair.map(|a| a.as_slice()) {
            None => (0, 1),
            Some([id, total]) => match (id.as_u64(), total.as_u64()) {
                (Some(id), Some(total))
                    if total > 0 && id < total && total <= u64::from(u32::MAX) =>
                {
                    (id as u32, total as u32)
                }
                _ => {
                    return self.violation(
                        ViolationKind::InvalidShard,
                        &format!("shard {d}"),
                        4010,
                    );
                }
            },
            Some(_) => {
                return self.violation(ViolationKind::InvalidShard, "shard not [id, total]", 4010);
            }
        };
        self.shard = Some(shard);
        let Some(intents) = d.get("intents").and_then(Value::as_u64) else {
            return self.violation(ViolationKind::InvalidIntents, "intents missing", 4013);
        };
        if intents & !INTENTS_VALID != 0 {
            let detail = format!("unknown intent bits {:#x}", intents & !INTENTS_VALID);
            return self.violation(ViolationKind::InvalidIntents, &detail, 4013);
        }
        let disallowed = intents & INTENTS_PRIVILEGED & !config.allowed_privileged_intents;
        if disallowed != 0 {
            let detail = format!("privileged intents {disallowed:#x} not enabled");
            return self.violation(ViolationKind::DisallowedIntents, &detail, 4014);
        }
        let payload_compress = d.get("compress").and_then(Value::as_bool).unwrap_or(false);

        // Limits and the session itself, under the state lock.
        let admitted = {
            let mut state = shared.lock();
            let guilds: Vec<u64> = state
                .guilds
                .iter()
                .copied()
                .filter(|g| events::shard_for_guild(*g, total) == shard)
                .collect();
            let bucket = shard % config.max_concurrency;
            // Arrival times jitter by a few ms against the client's own spacing; 1% of the
            // window is tolerated (a client that waits the full window is never flagged).
            let window =
                Duration::from_millis(config.identify_window_ms - config.identify_window_ms / 100);
            if guilds.len() > config.max_guilds_per_shard {
                Admission::ShardingRequired(guilds.len())
            } else if let Some(last) = state
                .identify_buckets
                .get(&bucket)
                .filter(|t| now.duration_since(**t) < window)
            {
                Admission::TooFast(bucket, now.duration_since(*last))
            } else {
                if now >= state.reset_at {
                    state.remaining = config.session_start_total;
                    state.reset_at =
                        now + Duration::from_millis(config.session_start_reset_after_ms);
                }
                if state.remaining == 0 {
                    // Discord terminates every session when it resets the token.
                    for session in state.sessions.values() {
                        lock(session).end("token_reset", &shared.ledger);
                    }
                    Admission::TokenReset
                } else {
                    state.remaining -= 1;
                    state.identify_buckets.insert(bucket, now);
                    expire_sessions(&shared, &mut state, now);
                    let number = state.next_session_number;
                    state.next_session_number += 1;
                    let mut id_rng = Rng::new(derive_seed(shared.seed, &[0x7365_7373, number]));
                    let session_id = crate::state::session_id(&mut id_rng);
                    let connection_number = {
                        let n = state.connection_numbers.entry(shard).or_default();
                        *n += 1;
                        *n
                    };
                    // Live from here: the session is this connection's in this critical section.
                    state.go_live(self.id, [shard, total], &shared.ledger);
                    let ledger_index = shared.ledger.with(|l| {
                        l.identifies_total += 1;
                        let entry = l.shards.entry(shard).or_default();
                        entry.identifies += 1;
                        entry.connections += 1;
                        entry.sessions.push(crate::ledger::SessionLedger {
                            session_id: session_id.clone(),
                            total_shards: total,
                            ..Default::default()
                        });
                        entry.sessions.len() - 1
                    });
                    let state = &mut *state;
                    let subscriptions = state.world.subscribe(
                        shard,
                        total,
                        &state.guilds,
                        now,
                        &shared.timeline_settings,
                        &shared.ledger,
                    );
                    let mut session = Session::new(
                        session_id.clone(),
                        shard,
                        total,
                        ledger_index,
                        derive_seed(shared.seed, &[u64::from(shard), u64::from(total), number]),
                        guilds,
                        config,
                        subscriptions,
                    );
                    session.owner = Some(self.id);
                    let session = Arc::new(Mutex::new(session));
                    state.sessions.insert(session_id, Arc::clone(&session));
                    Admission::Admitted(session, connection_number)
                }
            }
        };
        match admitted {
            Admission::ShardingRequired(count) => self.violation(
                ViolationKind::ShardingRequired,
                &format!("{count} guilds on shard {shard}/{total}"),
                4011,
            ),
            Admission::TooFast(bucket, since) => {
                shared.ledger.violation(
                    Some(shard),
                    ViolationKind::IdentifyTooFast,
                    format!(
                        "bucket {bucket} identified again after {} ms",
                        since.as_millis()
                    ),
                    None,
                );
                self.send_control(ws, r#"{"t":null,"s":null,"op":9,"d":false}"#.into())
                    .await
            }
            Admission::TokenReset => {
                shared.ledger.violation(
                    Some(shard),
                    ViolationKind::TokenReset,
                    "identify with session_start_limit.remaining at 0",
                    Some(4004),
                );
                shared.ledger.with(|l| l.token_resets += 1);
                shared.token_valid.store(false, Ordering::Release);
                shared.broadcast(None, None, || Control::Close(4004));
                Err(Exit::Close(4004))
            }
            Admission::Admitted(session, connection_number) => {
                self.rng = Rng::new(derive_seed(
                    shared.seed,
                    &[u64::from(shard), connection_number],
                ));
                if payload_compress && self.transport == Transport::None {
                    self.encoder = Encoder::new(
                        Transport::None,
                        true,
                        config.zlib_level,
                        config.zstd_level,
                        config.payload_compress_min_bytes,
                    )
                    .map_err(|_| Exit::Drop)?;
                }
                self.reconnect_deadline = None;
                self.draining = false;
                let resume_url = shared.resume_ws_url.clone();
                {
                    let mut session = lock(&session);
                    let id = session.id.clone();
                    session.push(|events, seq, out| {
                        events.ready(seq, &id, &resume_url, [shard, total], out);
                        DispatchInfo {
                            name: "READY",
                            redundant_update: false,
                        }
                    });
                }
                self.sent_upto = 0;
                self.session = Some(session);
                tracing::debug!(shard, total, "identified");
                self.pump(ws, now).await
            }
        }
    }

    async fn on_resume<S>(&mut self, ws: &mut Ws<S>, d: &Value, now: Instant) -> Result<(), Exit>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let shared = Arc::clone(&self.shared);
        let delay_ms = shared.resume_delay_ms.load(Ordering::Relaxed);
        let now = if delay_ms > 0 {
            // A slow Discord: the answer comes later; the session is looked up then.
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            Instant::now()
        } else {
            now
        };
        if self.session.is_some() {
            return self.violation(
                ViolationKind::AlreadyAuthenticated,
                "resume after identify",
                4005,
            );
        }
        if !self.token_ok(d) {
            return self.violation(ViolationKind::AuthenticationFailed, "resume token", 4004);
        }
        let session_id = d
            .get("session_id")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let seq = d.get("seq").and_then(Value::as_u64).unwrap_or(0);
        let found = {
            let mut state = shared.lock();
            // Look before expiring, so an ended or expired session still names its shard.
            let found = state.sessions.get(session_id).cloned();
            expire_sessions(&shared, &mut state, now);
            found
        };
        let resumed = found.and_then(|session| {
            let mut guard = lock(&session);
            let replay = if guard.ended {
                None
            } else {
                guard.replay_after(seq)
            };
            let (shard, total) = (guard.shard, guard.total);
            self.shard = Some(shard);
            let Some(replay) = replay else {
                shared
                    .ledger
                    .with(|l| l.shards.entry(shard).or_default().resumes_rejected += 1);
                return None;
            };

            let previous = guard
                .owner
                .replace(self.id)
                .filter(|previous| *previous != self.id);
            guard.disconnected_at = None;
            guard.delta.frames_sent += replay.len() as u64;
            let resumed = guard.push(|events, seq, out| {
                events.resumed(seq, out);
                DispatchInfo {
                    name: "RESUMED",
                    redundant_update: false,
                }
            });
            guard.delta.frames_sent += 1;
            guard.flush_ledger(&shared.ledger);
            drop(guard);
            Some((session, replay, resumed, shard, total, previous))
        });
        let Some((session, mut replay, resumed, shard, total, previous)) = resumed else {
            tracing::debug!(shard = ?self.shard, "resume rejected");
            shared.ledger.with(|l| l.resumes_rejected_total += 1);
            return self
                .send_control(ws, r#"{"t":null,"s":null,"op":9,"d":false}"#.into())
                .await;
        };
        let connection_number = {
            // Lock order is State before Session: the hand-over happens here, after the
            // session lock above was let go.
            let mut state = shared.lock();
            if let Some(previous) = previous {
                // Discord closes the connection a resume takes over: it stops being live now,
                // before this one goes live, and drops as soon as it reads this.
                state.leave_live(previous);
                if let Some(handle) = state.connections.get(&previous) {
                    // The old connection may already be gone; nothing to do then.
                    let _ = handle.control.send(Control::Superseded);
                }
            }
            // Another RESUME of the same session may have taken it over since the session lock
            // was let go; then that connection is the live one and this one is superseded.
            if lock(&session).owner == Some(self.id) {
                state.go_live(self.id, [shard, total], &shared.ledger);
            }
            let n = state.connection_numbers.entry(shard).or_default();
            *n += 1;
            *n
        };
        let via_resume_url = self.via_resume_url;
        shared.ledger.with(|l| {
            l.resumes_total += 1;
            let entry = l.shards.entry(shard).or_default();
            entry.resumes += 1;
            entry.connections += 1;
            entry.resumes_via_resume_url += u64::from(via_resume_url);
        });
        self.rng = Rng::new(derive_seed(
            shared.seed,
            &[u64::from(shard), connection_number],
        ));
        self.session = Some(session);
        self.reconnect_deadline = None;
        self.draining = false;
        replay.push(resumed);
        tracing::debug!(shard, seq, replayed = replay.len() - 1, "resumed");
        self.write_dispatches(ws, &mut replay).await?;
        self.pump(ws, now).await
    }

    async fn on_command<S>(
        &mut self,
        ws: &mut Ws<S>,
        op: u8,
        value: Value,
        d: &Value,
        now: Instant,
    ) -> Result<(), Exit>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let shared = Arc::clone(&self.shared);
        let Some(shard) = self.shard else {
            return Ok(());
        };
        shared.ledger.command(shard, op, value);
        if op != 8 {
            return Ok(());
        }
        let guild_ids: Vec<u64> = match d.get("guild_id") {
            Some(Value::String(id)) => id.parse().ok().into_iter().collect(),
            Some(Value::Number(id)) => id.as_u64().into_iter().collect(),
            Some(Value::Array(ids)) => ids
                .iter()
                .filter_map(|v| {
                    v.as_str()
                        .and_then(|s| s.parse().ok())
                        .or_else(|| v.as_u64())
                })
                .collect(),
            _ => Vec::new(),
        };
        if guild_ids.is_empty() {
            shared.ledger.violation(
                Some(shard),
                ViolationKind::InvalidCommand,
                "request guild members without guild_id",
                None,
            );
            return Ok(());
        }
        let nonce = d.get("nonce").and_then(Value::as_str).map(str::to_owned);
        let all_members = d.get("query").and_then(Value::as_str) == Some("")
            && d.get("limit").and_then(Value::as_u64) == Some(0);
        let Some(session) = self.session.clone() else {
            return Ok(());
        };
        for guild_id in guild_ids {
            let retry_after = if all_members {
                let mut state = shared.lock();
                match state.member_requests.get(&guild_id) {
                    Some(last) if now.duration_since(*last) < MEMBER_REQUEST_WINDOW => {
                        Some(MEMBER_REQUEST_WINDOW - now.duration_since(*last))
                    }
                    _ => {
                        state.member_requests.insert(guild_id, now);
                        None
                    }
                }
            } else {
                None
            };
            let mut session = lock(&session);
            match retry_after {
                Some(retry_after) => {
                    shared.ledger.violation(
                        Some(shard),
                        ViolationKind::GuildMembersRateLimited,
                        format!("all members of guild {guild_id} again within 30 s"),
                        None,
                    );
                    session.push(|events, seq, buf| {
                        let secs = retry_after.as_secs_f64();
                        events.rate_limited(8, secs, guild_id, nonce.as_deref(), seq, buf);
                        DispatchInfo {
                            name: "RATE_LIMITED",
                            redundant_update: false,
                        }
                    });
                }
                None => {
                    session.push(|events, seq, buf| {
                        events.guild_members_chunk(guild_id, nonce.as_deref(), seq, buf);
                        DispatchInfo {
                            name: "GUILD_MEMBERS_CHUNK",
                            redundant_update: false,
                        }
                    });
                }
            }
        }
        // The answers, and anything produced earlier but not yet written, in sequence order.
        let mut out = Vec::new();
        {
            let mut session = lock(&session);
            session.take_unsent(self.sent_upto, &mut out);
            session.delta.frames_sent += out.len() as u64;
            session.flush_ledger(&shared.ledger);
        }
        self.write_dispatches(ws, &mut out).await
    }

    /// Writes dispatches in order, compressed as the connection asked.
    async fn write_dispatches<S>(
        &mut self,
        ws: &mut Ws<S>,
        out: &mut Vec<Dispatch>,
    ) -> Result<(), Exit>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if out.is_empty() {
            return Ok(());
        }
        let mut messages = Vec::with_capacity(out.len());
        for dispatch in out.drain(..) {
            if dispatch.seq <= self.sent_upto && self.sent_upto != 0 {
                continue;
            }
            self.sent_upto = dispatch.seq;
            if self.zombie_since.is_some() {
                continue;
            }
            // Not a MESSAGE_UPDATE or MESSAGE_CREATE: whether a client forwards or drops a cut
            // update, or the redundant updates of a message whose cut create its dedup read,
            // would depend on what it read of the cut content.
            if self.truncate_next
                && !dispatch.bytes.starts_with(b"{\"t\":\"MESSAGE_UPDATE\"")
                && !dispatch.bytes.starts_with(b"{\"t\":\"MESSAGE_CREATE\"")
            {
                self.truncate_next = false;
                if let Some(session) = &self.session {
                    lock(session).delta.truncated_seqs.push(dispatch.seq);
                }
                let cut = dispatch.bytes.slice(..truncated_len(&dispatch.bytes));
                messages.push(self.encode(&cut)?);
                continue;
            }
            messages.push(self.encode(&dispatch.bytes)?);
        }
        write(ws, messages).await
    }

    fn encode(&mut self, bytes: &Bytes) -> Result<Message, Exit> {
        match self.encoder.encode(bytes) {
            Ok(Frame::Text(text)) => Utf8Bytes::try_from(text).map(Message::Text).map_err(|_| {
                tracing::error!("generated a non-UTF-8 payload");
                Exit::Drop
            }),
            Ok(Frame::Binary(binary)) => Ok(Message::Binary(binary)),
            Err(error) => {
                tracing::error!(%error, "compression failed");
                Err(Exit::Drop)
            }
        }
    }

    /// Sends a non-dispatch gateway message (HELLO, ACK, op 7, op 9, op 1).
    async fn send_control<S>(&mut self, ws: &mut Ws<S>, payload: Bytes) -> Result<(), Exit>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if self.zombie_since.is_some() {
            return Ok(());
        }
        let message = self.encode(&payload)?;
        write(ws, vec![message]).await
    }

    fn end_session(&mut self, reason: &str) {
        if let Some(session) = &self.session {
            lock(session).end(reason, &self.shared.ledger);
        }
    }

    /// Lets go of the session (it stays resumable unless ended); the connection is no longer
    /// live for its shard.
    fn release_session(&mut self, now: Instant) {
        if let Some(session) = self.session.take() {
            let mut state = self.shared.lock();
            state.leave_live(self.id);
            let mut session = lock(&session);
            session.flush_ledger(&self.shared.ledger);
            if session.owner == Some(self.id) {
                session.owner = None;
                session.disconnected_at = Some(now);
            }
        }
        self.draining = false;
        self.zombie_since = None;
        self.stall_until = None;
    }

    fn finish(&mut self, exit: &Exit) {
        let key = match exit {
            Exit::ClientClosed(Some(code)) => Some(code.to_string()),
            Exit::ClientClosed(None) => Some("none".to_owned()),
            Exit::Lost => Some("drop".to_owned()),
            Exit::Close(_) | Exit::Drop => None,
        };
        if let (Some(key), Some(shard)) = (key, self.shard) {
            self.shared.ledger.with(|l| {
                *l.shards
                    .entry(shard)
                    .or_default()
                    .client_closes
                    .entry(key)
                    .or_default() += 1;
            });
        }
        self.release_session(Instant::now());
    }
}

enum Admission {
    Admitted(Arc<Mutex<Session>>, u64),
    TooFast(u32, Duration),
    TokenReset,
    ShardingRequired(usize),
}

/// Ends and forgets sessions that nobody resumed within the TTL.
fn expire_sessions(shared: &Shared, state: &mut crate::state::State, now: Instant) {
    let ttl = Duration::from_secs(shared.config.session_ttl_secs);
    state.sessions.retain(|_, session| {
        let mut session = lock(session);
        let expired = session.owner.is_none()
            && session
                .disconnected_at
                .is_some_and(|at| now.duration_since(at) > ttl);
        if expired {
            session.end("expired", &shared.ledger);
        }
        !expired && !session.ended
    });
}

/// Where a `truncated` fault cuts a dispatch: halfway through what follows `"d":`, on a UTF-8
/// character boundary. Any proper prefix of a JSON object is not JSON.
fn truncated_len(payload: &[u8]) -> usize {
    let d_at = payload
        .windows(4)
        .position(|w| w == b"\"d\":")
        .map_or(payload.len() / 2, |at| at + 4);
    let mut cut = d_at + payload.len().saturating_sub(d_at) / 2;
    while cut > d_at && payload.get(cut).is_some_and(|byte| byte & 0xC0 == 0x80) {
        cut -= 1;
    }
    cut.min(payload.len().saturating_sub(1))
}

async fn write<S>(ws: &mut Ws<S>, messages: Vec<Message>) -> Result<(), Exit>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if messages.is_empty() {
        return Ok(());
    }
    let send = async {
        for message in messages {
            ws.feed(message).await?;
        }
        ws.flush().await
    };
    // A client that stops reading is gone; do not hold its task forever.
    match timeout(Duration::from_secs(60), send).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) | Err(_) => Err(Exit::Lost),
    }
}

async fn close<S>(ws: &mut Ws<S>, code: u16)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: Utf8Bytes::from_static(""),
    };
    let handshake = async {
        if ws.close(Some(frame)).await.is_ok() {
            while let Some(Ok(_)) = ws.next().await {}
        }
    };
    // The peer may never answer; the close frame is out either way.
    let _ = timeout(CLOSE_HANDSHAKE_TIMEOUT, handshake).await;
}

/// Validates `v`, `encoding` and `compress`; the error is what to record and close with.
fn parse_query(query: &str) -> Result<Transport, (ViolationKind, u16, String)> {
    let mut version = None;
    let mut encoding = None;
    let mut compress = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "v" => version = Some(value),
            "encoding" => encoding = Some(value),
            "compress" => compress = Some(value),
            _ => {}
        }
    }
    match version {
        Some("10") => {}
        other => {
            let detail = format!("v={}", other.unwrap_or("(missing)"));
            return Err((ViolationKind::InvalidApiVersion, 4012, detail));
        }
    }
    match encoding {
        Some("json") | None => {}
        Some(other) => {
            let detail = format!("encoding={other} (the mock speaks json)");
            return Err((ViolationKind::InvalidQuery, 4002, detail));
        }
    }
    match compress {
        None => Ok(Transport::None),
        Some("zlib-stream") => Ok(Transport::ZlibStream),
        Some("zstd-stream") => Ok(Transport::ZstdStream),
        Some(other) => Err((
            ViolationKind::InvalidQuery,
            4002,
            format!("compress={other}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing_follows_discord() {
        assert_eq!(parse_query("v=10&encoding=json").unwrap(), Transport::None);
        assert_eq!(
            parse_query("v=10&encoding=json&compress=zstd-stream").unwrap(),
            Transport::ZstdStream
        );
        assert_eq!(
            parse_query("encoding=json&v=10&compress=zlib-stream").unwrap(),
            Transport::ZlibStream
        );
        assert_eq!(parse_query("v=9&encoding=json").unwrap_err().1, 4012);
        assert_eq!(parse_query("encoding=json").unwrap_err().1, 4012);
        assert_eq!(parse_query("v=10&encoding=etf").unwrap_err().1, 4002);
        assert_eq!(parse_query("v=10&compress=gzip").unwrap_err().1, 4002);
    }

    #[test]
    fn intent_masks() {
        assert_eq!(INTENTS_VALID & (1 << 17), 0);
        assert_ne!(INTENTS_VALID & (1 << 25), 0);
        assert_eq!(INTENTS_PRIVILEGED & INTENTS_VALID, INTENTS_PRIVILEGED);
    }
}
