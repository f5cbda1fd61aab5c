//! The shard protocol core: one Discord gateway session as a state machine.
//!
//! sans-IO: no sockets, no clock, no allocation per ordinary dispatch. Time comes in as `now`
//! arguments, bytes come in from the driver's decode stage, and everything the machine wants done
//! comes out of three polls, in the shape of quinn-proto's `Connection`:
//! [`Shard::poll_transmit`] (a payload to send, written into a caller-owned buffer),
//! [`Shard::poll_event`] (connect, close, identify-permit requests, lifecycle notices) and
//! [`Shard::poll_timeout`] (when to call [`Shard::handle_timeout`] next).
//!
//! # Driver contract
//!
//! 1. Build the machine with [`Shard::new`] or, to resume a saved session, [`Shard::with_session`].
//!    Both queue the first [`ShardEvent::Connect`].
//! 2. After every input (and after construction), drain [`Shard::poll_transmit`] (send each buffer
//!    as one text frame), then [`Shard::poll_event`], then sleep until [`Shard::poll_timeout`] and
//!    call [`Shard::handle_timeout`].
//! 3. [`ShardEvent::Connect`]: drop any connection or connection attempt still held, open a
//!    WebSocket to the target with `?v=10&encoding=json[&compress=…]`, reset the decompressor,
//!    and report [`Shard::connect_succeeded`] or [`Shard::connect_failed`]. A driver should bound
//!    its own handshake; the machine's `connect_timeout_ms` is a backstop after which it issues a
//!    fresh `Connect` that supersedes the stuck attempt.
//! 4. Every inbound payload: classify it into a [`PayloadHead`] and call
//!    [`Shard::payload_received`]; forward the payload to the filter only when it answers
//!    [`PayloadAction::Forward`] (dispatches, READY and RESUMED included).
//! 5. A close frame from the server: [`Shard::close_received`]. A dropped TCP connection, a read or
//!    write error: [`Shard::connection_lost`] with [`LossCause::Transport`]. A frame that cannot be
//!    decompressed or parsed: drop the connection (sending close 4000 if possible, never
//!    1000/1001) and report [`LossCause::Decode`].
//! 6. [`ShardEvent::Close`]: send a close frame with exactly that code (best effort), drop the
//!    connection without waiting long for the echo, then report `connection_lost` or
//!    `close_received`; either completes the close. If no report comes within
//!    `close_timeout_ms`, the machine moves on and its next `Connect` supersedes the socket.
//! 7. [`ShardEvent::NeedIdentify`]: ask the global identify limiter (shared across cores) and call
//!    [`Shard::identify_permitted`] when this shard's turn comes.
//!
//! # Choices where the protocol is silent
//!
//! - **Evidence of life is the heartbeat ACK (op 11) only.** Discord's documentation defines a
//!   zombie by the missing ACK, and a half-dead gateway node can keep flushing buffered dispatches
//!   after it stopped serving the session; counting any frame as life would hide exactly that
//!   case. The cost is a reconnect when a busy gateway delays an ACK past a whole interval,
//!   which a resume makes cheap. Only scheduled heartbeats arm the check (any ACK disarms it):
//!   a heartbeat answering a server op 1 just before the due time cannot make its own ACK,
//!   still on the wire, look missing.
//! - **A server close of 1000/1001, or any code not in the protocol's table, resumes.** Only the
//!   listed fatal codes stop a shard; an unknown code must not kill it. If Discord did end the
//!   session, the resume is answered with op 9 `d: false` and the shard identifies: one round trip.
//!   4006 (a retired "session no longer valid") starts a new session.
//! - **Heartbeat intervals are clamped to [1 s, 10 min].** Below 1 s heartbeats alone would eat
//!   most of the 120-per-60-s send allowance.
//! - **The send limiter counts a 60.5 s window** (60 s plus a 500 ms margin for network jitter)
//!   and keeps `ceil(60.5 s / interval) + 2` slots for heartbeats: one more than twilight, for one
//!   server-requested heartbeat per window. Identify and resume are the first payloads of a
//!   connection and never wait in practice; they only respect the hard limit.
//! - **Resume-URL fallback** counts consecutive connection attempts to `resume_gateway_url` that
//!   never produced HELLO; **identify fallback** counts Resume payloads sent without a RESUMED.
//!   Both reset on READY/RESUMED. A READY without `resume_gateway_url` resumes on the main URL.
//! - **Commands** are accepted only with an op from [`COMMAND_OPCODES`]: a bot that sent op 1, 2
//!   or 6 would break heartbeat accounting or the identify limits. They queue while the shard is
//!   not active and are released only when it is.
//! - **Delays.** Reconnects wait uniform `[0, min(60 s, 1 s × 2^n))` (full jitter), `n` being
//!   the reconnects since the last READY/RESUMED. op 7 reconnects at once when `n = 0`, an operator
//!   request always; op 9 `d: false` waits uniform `[1 s, 5 s)`.
//! - **One identify request at a time.** `NeedIdentify` is not repeated while an earlier request
//!   is unanswered; a permit that arrives when the shard is not waiting is refused with
//!   [`PermitError`] and the shard asks again at its next HELLO.
//! - **Stale driver reports** (a loss or close while already between connections) are counted
//!   and ignored. A server close that crosses the machine's own close still counts when it is
//!   fatal or ends the session.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tracing::{debug, trace, warn};

use super::json::{self, CommandShape, IdentifyFields};
use super::send_window::SendWindow;
use super::token::Token;

/// Payloads a connection may send per window, heartbeats included (Discord closes with 4008 above).
pub const SEND_LIMIT_PER_WINDOW: usize = 120;
/// The window Discord counts sends over.
pub const SEND_WINDOW_MS: u64 = 60_000;
/// Added to [`SEND_WINDOW_MS`] so that network jitter cannot squeeze 121 sends into Discord's window.
pub const SEND_WINDOW_SAFETY_MARGIN_MS: u64 = 500;
/// Largest outbound payload Discord accepts (bigger: close 4002).
pub const PAYLOAD_BYTES_MAX: usize = 4096;
/// Opcodes a bot may send through [`Shard::send_command`]: presence update, voice state update,
/// request guild members, request soundboard sounds, request channel info.
pub const COMMAND_OPCODES: [u8; 5] = [3, 4, 8, 31, 43];
/// Ceiling of the first reconnect delay; it doubles per consecutive failure.
pub const RECONNECT_BACKOFF_BASE_MS: u64 = 1_000;
/// Largest reconnect delay ceiling.
pub const RECONNECT_BACKOFF_CAP_MS: u64 = 60_000;
/// After op 9 `d: false`, wait at least this long before reconnecting (Discord suggests 1–5 s).
pub const INVALID_SESSION_DELAY_MIN_MS: u64 = 1_000;
/// After op 9 `d: false`, wait less than this long before reconnecting.
pub const INVALID_SESSION_DELAY_MAX_MS: u64 = 5_000;
/// Step of [`ShardConfig::heartbeat_grid`]: Discord's 41,250 ms interval is 165 steps, so a
/// shard on the grid stays on it. With a 1,000-shard process's heartbeats spread over 165 slots,
/// a core wakes about 4 times a second to send them instead of about 12.
pub const HEARTBEAT_GRID_STEP: Duration = Duration::from_millis(250);

/// Smallest heartbeat interval honoured; HELLO values below are clamped up.
pub const HEARTBEAT_INTERVAL_MIN_MS: u64 = 1_000;
/// Largest heartbeat interval honoured; HELLO values above are clamped down.
pub const HEARTBEAT_INTERVAL_MAX_MS: u64 = 600_000;
/// The close code the machine uses for every close it starts on its own: the session stays
/// resumable (1000/1001 would end it and take the bot offline).
pub const CLOSE_CODE_KEEP_SESSION: u16 = 4000;
/// The close code used only by [`Shard::request_shutdown`] with `resumable: false`.
pub const CLOSE_CODE_END_SESSION: u16 = 1000;

const OP_DISPATCH: u8 = 0;
const OP_HEARTBEAT: u8 = 1;
const OP_RECONNECT: u8 = 7;
const OP_INVALID_SESSION: u8 = 9;
const OP_HELLO: u8 = 10;
const OP_HEARTBEAT_ACK: u8 = 11;

/// How many doublings of the backoff base are ever applied (2^16 s is far above the cap).
const BACKOFF_DOUBLINGS_MAX: u32 = 16;

/// Settings of one shard's session. Every knob lists its default; none costs memory beyond the
/// command queue (`command_queue_capacity` boxed payloads of at most 4 KiB each).
#[derive(Debug, Clone)]
pub struct ShardConfig {
    /// This shard's id, below `shard_total`. No default.
    pub shard_id: u32,
    /// Number of shards of the bot. No default.
    pub shard_total: u32,
    /// Bot token (without `Bot `). No default; never logged.
    pub token: Token,
    /// Gateway intents bit set. No default.
    pub intents: u64,
    /// `properties.os` of identify. Default: [`std::env::consts::OS`].
    pub os: String,
    /// Send `compress: true` in identify (per-payload zlib; ignored by Discord when transport
    /// compression is on). Default: false.
    pub payload_compression: bool,
    /// Member count above which a guild is "large" (50..=250). Default: 50 (Discord's default).
    pub large_threshold: u16,
    /// Initial presence as one JSON object, sent verbatim in identify. Default: none.
    pub presence_json: Option<String>,
    /// Bot commands waiting to be sent, per shard; [`Shard::send_command`] fails beyond.
    /// Default: 64 (about 30 s of the send allowance).
    pub command_queue_capacity: usize,
    /// Reconnect when HELLO has not arrived this long after the WebSocket opened. Default: 20 s.
    pub hello_timeout_ms: u64,
    /// Backstop for a driver that never reports the outcome of a connect. Default: 30 s.
    pub connect_timeout_ms: u64,
    /// Move on when the driver has not confirmed a requested close this long after. Default: 5 s.
    pub close_timeout_ms: u64,
    /// Consecutive failed connects to `resume_gateway_url` before resuming via the main URL.
    /// Default: 3.
    pub resume_url_failures_max: u32,
    /// Resume payloads sent without a RESUMED before the session is dropped and the shard
    /// identifies. Default: 3.
    pub resume_attempts_max: u32,
    /// Seed of the machine's jitter generator (mixed with the shard id). Fixed seeds make runs
    /// replayable. Default: 0.
    pub rng_seed: u64,
    /// Heartbeats fall on this instant plus whole [`HEARTBEAT_GRID_STEP`]s (never later than
    /// the interval asks): the shards of a process that share it send in a few wake-ups per
    /// second instead of one each. Default: none (heartbeats at the exact jittered instants).
    pub heartbeat_grid: Option<Instant>,
}

impl ShardConfig {
    /// Default of [`ShardConfig::large_threshold`].
    pub const DEFAULT_LARGE_THRESHOLD: u16 = 50;
    /// Default of [`ShardConfig::command_queue_capacity`].
    pub const DEFAULT_COMMAND_QUEUE_CAPACITY: usize = 64;
    /// Default of [`ShardConfig::hello_timeout_ms`].
    pub const DEFAULT_HELLO_TIMEOUT_MS: u64 = 20_000;
    /// Default of [`ShardConfig::connect_timeout_ms`].
    pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 30_000;
    /// Default of [`ShardConfig::close_timeout_ms`].
    pub const DEFAULT_CLOSE_TIMEOUT_MS: u64 = 5_000;
    /// Default of [`ShardConfig::resume_url_failures_max`].
    pub const DEFAULT_RESUME_URL_FAILURES_MAX: u32 = 3;
    /// Default of [`ShardConfig::resume_attempts_max`].
    pub const DEFAULT_RESUME_ATTEMPTS_MAX: u32 = 3;

    /// A config with every knob at its default.
    pub fn new(shard_id: u32, shard_total: u32, token: Token, intents: u64) -> Self {
        Self {
            shard_id,
            shard_total,
            token,
            intents,
            os: std::env::consts::OS.to_owned(),
            payload_compression: false,
            large_threshold: Self::DEFAULT_LARGE_THRESHOLD,
            presence_json: None,
            command_queue_capacity: Self::DEFAULT_COMMAND_QUEUE_CAPACITY,
            hello_timeout_ms: Self::DEFAULT_HELLO_TIMEOUT_MS,
            connect_timeout_ms: Self::DEFAULT_CONNECT_TIMEOUT_MS,
            close_timeout_ms: Self::DEFAULT_CLOSE_TIMEOUT_MS,
            resume_url_failures_max: Self::DEFAULT_RESUME_URL_FAILURES_MAX,
            resume_attempts_max: Self::DEFAULT_RESUME_ATTEMPTS_MAX,
            rng_seed: 0,
            heartbeat_grid: None,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.shard_total == 0 {
            return Err(ConfigError::ZeroShardTotal);
        }
        if self.shard_id >= self.shard_total {
            return Err(ConfigError::ShardIdOutOfRange {
                shard_id: self.shard_id,
                shard_total: self.shard_total,
            });
        }
        if self.token.is_empty() {
            return Err(ConfigError::EmptyToken);
        }
        if !(50..=250).contains(&self.large_threshold) {
            return Err(ConfigError::LargeThresholdOutOfRange {
                large_threshold: self.large_threshold,
            });
        }
        if let Some(presence) = &self.presence_json
            && !json::is_json_object(presence)
        {
            return Err(ConfigError::PresenceNotJsonObject);
        }
        if self.command_queue_capacity == 0 {
            return Err(ConfigError::ZeroCommandQueueCapacity);
        }
        for (name, value) in [
            ("hello_timeout_ms", self.hello_timeout_ms),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("close_timeout_ms", self.close_timeout_ms),
        ] {
            if value == 0 {
                return Err(ConfigError::ZeroTimeout { name });
            }
        }
        Ok(())
    }
}

/// What can be saved to disk and handed to [`Shard::with_session`] after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// READY's `session_id`.
    pub session_id: String,
    /// READY's `resume_gateway_url` (without query string); `None`: resume via the main URL.
    pub resume_url: Option<String>,
    /// The last dispatch sequence number seen.
    pub sequence: u64,
}

/// Where the driver connects for a [`ShardEvent::Connect`]; it appends the query string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectTarget {
    /// The gateway URL from `/gateway/bot` (or `--gateway-url`).
    Main,
    /// A session's `resume_gateway_url`.
    Resume(String),
}

/// Where the machine is in a session's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShardState {
    /// A [`ShardEvent::Connect`] is out; waiting for the driver's outcome.
    Connecting,
    /// WebSocket open, waiting for HELLO.
    AwaitingHello,
    /// HELLO received, no session: waiting for the identify limiter.
    AwaitingIdentifyPermit,
    /// Identify queued or sent, waiting for READY.
    Identifying,
    /// Resume queued or sent, waiting for RESUMED (replayed dispatches arrive meanwhile).
    Resuming,
    /// READY or RESUMED received: the session is live.
    Active,
    /// A [`ShardEvent::Close`] is out; waiting for the driver to report the socket gone.
    Closing,
    /// Between connections, waiting out the reconnect delay.
    WaitingToReconnect,
    /// Stopped by [`Shard::request_shutdown`]; never reconnects.
    Stopped,
    /// Stopped by a fatal close code; never reconnects.
    Fatal,
}

impl ShardState {
    /// Whether the WebSocket is open and in use (not closing).
    pub fn is_open(self) -> bool {
        matches!(
            self,
            Self::AwaitingHello
                | Self::AwaitingIdentifyPermit
                | Self::Identifying
                | Self::Resuming
                | Self::Active
        )
    }

    /// Whether the machine will never connect again.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Stopped | Self::Fatal)
    }

    /// Every state, in lifecycle order (for per-state metrics).
    pub const ALL: [Self; 10] = [
        Self::Connecting,
        Self::AwaitingHello,
        Self::AwaitingIdentifyPermit,
        Self::Identifying,
        Self::Resuming,
        Self::Active,
        Self::Closing,
        Self::WaitingToReconnect,
        Self::Stopped,
        Self::Fatal,
    ];

    /// The name in the admin API and the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connecting => "connecting",
            Self::AwaitingHello => "awaiting_hello",
            Self::AwaitingIdentifyPermit => "awaiting_identify_permit",
            Self::Identifying => "identifying",
            Self::Resuming => "resuming",
            Self::Active => "active",
            Self::Closing => "closing",
            Self::WaitingToReconnect => "waiting_to_reconnect",
            Self::Stopped => "stopped",
            Self::Fatal => "fatal",
        }
    }
}

/// What the decode stage learned about a payload without parsing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadHead<'a> {
    /// `op`. A decoder seeing a value above 255 passes 255 (an unknown opcode).
    pub op: u8,
    /// `s` (dispatches only).
    pub s: Option<u64>,
    /// `t` (dispatches only).
    pub t: Option<&'a str>,
}

/// Whether the driver forwards a payload it handed to [`Shard::payload_received`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadAction {
    /// A dispatch (READY and RESUMED included): forward it.
    Forward,
    /// A control opcode: it stays on the core.
    Consumed,
}

/// What [`Shard::poll_transmit`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Which payload it is.
    pub kind: TransmitKind,
    /// Bytes written into the buffer (the buffer's whole length).
    pub size: usize,
}

/// Kinds of outbound payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransmitKind {
    /// op 1.
    Heartbeat,
    /// op 2.
    Identify,
    /// op 6.
    Resume,
    /// A bot command (ops in [`COMMAND_OPCODES`]).
    Command,
}

/// What the machine asks of the driver, or tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardEvent {
    /// Open a WebSocket to `target` (superseding any connection or attempt still held).
    Connect {
        /// Main gateway URL or the session's resume URL.
        target: ConnectTarget,
    },
    /// Close the WebSocket with exactly this code, then report the socket gone.
    Close {
        /// [`CLOSE_CODE_KEEP_SESSION`], or [`CLOSE_CODE_END_SESSION`] after a non-resumable
        /// shutdown request.
        code: u16,
    },
    /// Ask the identify limiter; call [`Shard::identify_permitted`] when granted.
    NeedIdentify,
    /// READY arrived: a new session.
    Ready {
        /// The new session's id.
        session_id: String,
    },
    /// RESUMED arrived: the session survived the reconnect.
    Resumed,
    /// op 9 arrived.
    InvalidSession {
        /// Its `d`.
        resumable: bool,
    },
    /// The machine decided to reconnect (for metrics and logs).
    Reconnecting {
        /// Why.
        cause: ReconnectCause,
        /// The server's close code, when a close frame caused it.
        close_code: Option<u16>,
        /// Consecutive reconnects since the last READY/RESUMED, this one included (from 1).
        attempt: u32,
        /// How long after the old connection is gone the next `Connect` comes.
        delay: Duration,
        /// Whether the next connection resumes (else it identifies).
        resume: bool,
    },
    /// A fatal close code: this shard stops and will not reconnect.
    Fatal {
        /// The close code (4004, 4010–4014).
        code: u16,
        /// The server's close reason text.
        reason: String,
    },
    /// The machine stopped after [`Shard::request_shutdown`]; no connection remains.
    Stopped,
}

/// Why a reconnect happened; a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReconnectCause {
    /// The driver reported a failed connect.
    ConnectFailed,
    /// The driver never reported a connect outcome.
    ConnectTimeout,
    /// No HELLO in time.
    HelloTimeout,
    /// TCP drop, read or write error.
    Transport,
    /// A frame could not be decompressed or parsed.
    Decode,
    /// No heartbeat ACK since the previous heartbeat.
    Zombie,
    /// The server sent a close frame.
    ServerClose,
    /// op 7.
    ServerReconnect,
    /// op 9.
    InvalidSession,
    /// HELLO or READY missing a required field.
    MalformedPayload,
    /// [`Shard::request_reconnect`].
    Requested,
}

impl ReconnectCause {
    /// Number of causes.
    pub const COUNT: usize = 11;
    /// Every cause, in counter order.
    pub const ALL: [Self; Self::COUNT] = [
        Self::ConnectFailed,
        Self::ConnectTimeout,
        Self::HelloTimeout,
        Self::Transport,
        Self::Decode,
        Self::Zombie,
        Self::ServerClose,
        Self::ServerReconnect,
        Self::InvalidSession,
        Self::MalformedPayload,
        Self::Requested,
    ];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ConnectFailed => "connect_failed",
            Self::ConnectTimeout => "connect_timeout",
            Self::HelloTimeout => "hello_timeout",
            Self::Transport => "transport",
            Self::Decode => "decode",
            Self::Zombie => "zombie",
            Self::ServerClose => "server_close",
            Self::ServerReconnect => "server_reconnect",
            Self::InvalidSession => "invalid_session",
            Self::MalformedPayload => "malformed_payload",
            Self::Requested => "requested",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Why the driver lost a connection ([`Shard::connection_lost`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LossCause {
    /// TCP drop, read or write error, end of stream.
    Transport,
    /// A frame could not be decompressed or parsed; the driver dropped the connection.
    Decode,
}

impl From<LossCause> for ReconnectCause {
    fn from(cause: LossCause) -> Self {
        match cause {
            LossCause::Transport => Self::Transport,
            LossCause::Decode => Self::Decode,
        }
    }
}

/// What a server close code means for the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClosePolicy {
    /// Reconnect and resume.
    Resume,
    /// Reconnect with a new session (identify).
    NewSession,
    /// Stop; never reconnect.
    Fatal,
}

/// The policy for a close frame from the server (`None`: no code, or no close frame at all).
pub fn close_policy(code: Option<u16>) -> ClosePolicy {
    match code {
        // 4006 is a retired "session no longer valid".
        Some(4003 | 4006 | 4007 | 4009) => ClosePolicy::NewSession,
        Some(4004 | 4010..=4014) => ClosePolicy::Fatal,
        // 4000/4001/4002/4005/4008, 1000/1001 and every unknown code: resume; if the session is
        // gone, Discord answers the resume with op 9 and the shard identifies.
        _ => ClosePolicy::Resume,
    }
}

/// The close codes after which a shard stops for good ([`ClosePolicy::Fatal`]), in order.
pub const FATAL_CLOSE_CODES: [u16; 6] = [4004, 4010, 4011, 4012, 4013, 4014];

/// What a fatal close code means and what the operator does about it, in words, for logs and
/// the exit message (`None`: the code is not fatal). docs/troubleshooting.md quotes each text.
pub fn fatal_close_explanation(code: u16) -> Option<&'static str> {
    Some(match code {
        4004 => {
            "authentication failed: the token is wrong or was reset; set the bot's current \
             token with DISCORD_TOKEN or --token (Developer Portal, Bot, Reset Token gives a \
             new one)"
        }
        4010 => {
            "invalid shard: Discord refused this shard id for this shard count; check --shards \
             (every id below --total-shards) and --total-shards"
        }
        4011 => {
            "sharding required: the bot is in too many guilds for this shard count (at most \
             2500 guilds per shard); run more shards: --total-shards auto (Discord's \
             recommendation) or a higher --total-shards"
        }
        4012 => {
            "invalid API version: the gateway refused API version 10; check that --gateway-url \
             (or --api-base's answer) points at Discord's gateway, or upgrade shardgate"
        }
        4013 => {
            "invalid intents: Discord does not accept the intents sent; check --intents (names \
             or a number of known intent bits)"
        }
        4014 => {
            "disallowed intents: --intents asks for a privileged intent (GUILD_MEMBERS, \
             GUILD_PRESENCES or MESSAGE_CONTENT) this bot may not use; enable it in the \
             Developer Portal (Bot, Privileged Gateway Intents) or remove it from --intents"
        }
        _ => return None,
    })
}

/// Ceiling of the reconnect delay after `failures` consecutive reconnects without READY/RESUMED:
/// `min(cap, base × 2^failures)`. The delay itself is uniform in `[0, ceiling)` (full jitter).
pub fn backoff_ceiling(failures: u32) -> Duration {
    let doublings = failures.min(BACKOFF_DOUBLINGS_MAX);
    let ceiling_ms = RECONNECT_BACKOFF_BASE_MS.saturating_mul(1 << doublings);
    Duration::from_millis(ceiling_ms.min(RECONNECT_BACKOFF_CAP_MS))
}

/// Invalid shard settings.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// `shard_total` is 0.
    #[error("shard total must be at least 1")]
    ZeroShardTotal,
    /// `shard_id >= shard_total`.
    #[error("shard id {shard_id} is not below the shard total {shard_total}")]
    ShardIdOutOfRange {
        /// The configured id.
        shard_id: u32,
        /// The configured total.
        shard_total: u32,
    },
    /// The token is empty.
    #[error("the token is empty")]
    EmptyToken,
    /// `large_threshold` outside 50..=250.
    #[error("large_threshold {large_threshold} is outside 50..=250")]
    LargeThresholdOutOfRange {
        /// The configured value.
        large_threshold: u16,
    },
    /// `presence_json` is not exactly one JSON object.
    #[error("presence is not a single JSON object")]
    PresenceNotJsonObject,
    /// The identify payload would exceed [`PAYLOAD_BYTES_MAX`].
    #[error("the identify payload is {bytes} bytes; the gateway accepts at most {max_bytes}")]
    IdentifyTooLarge {
        /// Its size.
        bytes: usize,
        /// [`PAYLOAD_BYTES_MAX`].
        max_bytes: usize,
    },
    /// `command_queue_capacity` is 0.
    #[error("command_queue_capacity must be at least 1")]
    ZeroCommandQueueCapacity,
    /// A timeout is 0.
    #[error("{name} must be above zero")]
    ZeroTimeout {
        /// The knob's name.
        name: &'static str,
    },
    /// A saved session without an id.
    #[error("the saved session has an empty session id")]
    EmptySessionId,
    /// A saved resume URL that is not ws:// or wss://.
    #[error("the saved resume URL {url:?} is not a ws:// or wss:// URL")]
    InvalidResumeUrl {
        /// The rejected URL.
        url: String,
    },
}

/// Why [`Shard::send_command`] refused a command.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CommandError {
    /// Bigger than [`PAYLOAD_BYTES_MAX`] (Discord would close with 4002).
    #[error("command is {bytes} bytes; the gateway accepts at most {max_bytes}")]
    TooLarge {
        /// Its size.
        bytes: usize,
        /// [`PAYLOAD_BYTES_MAX`].
        max_bytes: usize,
    },
    /// Not one JSON object.
    #[error("command is not a JSON object")]
    NotJsonObject,
    /// No integer `op`.
    #[error("command has no integer \"op\"")]
    MissingOpcode,
    /// An `op` not in [`COMMAND_OPCODES`].
    #[error("opcode {op} is not a bot command (allowed: 3, 4, 8, 31, 43)")]
    OpcodeNotAllowed {
        /// The payload's op.
        op: u64,
    },
    /// The queue holds `capacity` commands already.
    #[error("command queue is full ({capacity} commands)")]
    QueueFull {
        /// [`ShardConfig::command_queue_capacity`].
        capacity: usize,
    },
    /// The shard stopped (shutdown or fatal close) and will not send again.
    #[error("shard is stopped ({state:?})")]
    ShardStopped {
        /// Its state.
        state: ShardState,
    },
}

/// Why [`Shard::request_reconnect`] did nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ControlError {
    /// The shard stopped and never reconnects; build a new machine.
    #[error("shard is stopped ({state:?})")]
    ShardStopped {
        /// Its state.
        state: ShardState,
    },
}

/// Why [`Shard::identify_permitted`] did not identify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum PermitError {
    /// The permit came while the shard was not waiting for one (the connection it was asked for
    /// is gone, or a resume made it unnecessary). The shard asks again when it needs one.
    #[error("shard is not waiting for an identify permit ({state:?})")]
    NotAwaitingPermit {
        /// Its state.
        state: ShardState,
    },
}

/// Per-shard counters, read by a reporter (`shardgate_shard_<field>`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardCounters {
    /// Connects issued.
    pub connects_total: u64,
    /// Dispatches received (op 0).
    pub dispatches_total: u64,
    /// Dispatches whose `s` was not above the last one (not tracked).
    pub stale_sequences_total: u64,
    /// Dispatches whose `s` skipped numbers.
    pub sequence_gaps_total: u64,
    /// Heartbeats sent (scheduled and requested).
    pub heartbeats_sent_total: u64,
    /// Heartbeat requests (op 1) from the server.
    pub heartbeat_requests_total: u64,
    /// Heartbeat ACKs (op 11).
    pub heartbeat_acks_total: u64,
    /// HELLO intervals outside [1 s, 10 min] that were clamped.
    pub heartbeat_intervals_clamped_total: u64,
    /// Connections declared zombie.
    pub zombie_connections_total: u64,
    /// Identify payloads sent.
    pub identifies_sent_total: u64,
    /// Resume payloads sent.
    pub resumes_sent_total: u64,
    /// READY received.
    pub ready_total: u64,
    /// RESUMED received.
    pub resumed_total: u64,
    /// op 9 received.
    pub invalid_sessions_total: u64,
    /// Bot commands sent.
    pub commands_sent_total: u64,
    /// Bot commands refused by [`Shard::send_command`].
    pub commands_rejected_total: u64,
    /// Payloads with an opcode the machine does not know.
    pub unknown_opcodes_total: u64,
    /// Inputs that did not fit the state (ignored).
    pub unexpected_inputs_total: u64,
    /// HELLO, READY or op 9 with missing or invalid fields.
    pub malformed_payloads_total: u64,
    /// Times the resume URL was given up for the main URL.
    pub resume_url_fallbacks_total: u64,
    /// Times a resume loop was given up for a new identify.
    pub identify_fallbacks_total: u64,
    /// Closes the driver never confirmed.
    pub close_timeouts_total: u64,
    /// Reconnects by [`ReconnectCause`] (index with [`ShardCounters::reconnects`]).
    pub reconnects_by_cause: [u64; ReconnectCause::COUNT],
}

impl ShardCounters {
    /// Reconnects for one cause.
    pub fn reconnects(&self, cause: ReconnectCause) -> u64 {
        self.reconnects_by_cause[cause.index()]
    }

    /// Reconnects for all causes.
    pub fn reconnects_total(&self) -> u64 {
        self.reconnects_by_cause.iter().sum()
    }
}

/// One shard's gateway session. See the module documentation for the driver contract.
#[derive(Debug)]
pub struct Shard {
    config: ShardConfig,
    /// Built once at construction; copied into the transmit buffer on each identify.
    identify_payload: IdentifyPayload,
    state: ShardState,
    session: Option<Session>,
    events: VecDeque<ShardEvent>,
    rng: Rng,

    // The current connection.
    target_is_resume: bool,
    connect_deadline: Option<Instant>,
    hello_deadline: Option<Instant>,
    close_deadline: Option<Instant>,
    after_close: AfterClose,
    heartbeat: Option<Heartbeat>,
    handshake_pending: Option<Handshake>,
    send_window: SendWindow,

    // Across connections.
    reconnect_at: Option<Instant>,
    commands: VecDeque<Vec<u8>>,
    reconnect_attempt: u32,
    resume_url_failures: u32,
    resume_attempts: u32,
    identify_permit_outstanding: bool,
    stop_close_code: u16,
    latency: Option<Duration>,
    counters: ShardCounters,
}

impl Shard {
    /// A machine that connects to the main URL and identifies. Queues the first `Connect`.
    pub fn new(config: ShardConfig, now: Instant) -> Result<Self, ConfigError> {
        Self::build(config, None, now)
    }

    /// A machine that resumes a saved session first. Queues the first `Connect`.
    pub fn with_session(
        config: ShardConfig,
        session: Session,
        now: Instant,
    ) -> Result<Self, ConfigError> {
        if session.session_id.is_empty() {
            return Err(ConfigError::EmptySessionId);
        }
        if let Some(url) = &session.resume_url
            && !is_gateway_url(url)
        {
            return Err(ConfigError::InvalidResumeUrl { url: url.clone() });
        }
        Self::build(config, Some(session), now)
    }

    fn build(
        config: ShardConfig,
        session: Option<Session>,
        now: Instant,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let mut identify_payload = Vec::new();
        json::write_identify(
            &mut identify_payload,
            &IdentifyFields {
                token: config.token.expose_secret(),
                intents: config.intents,
                shard_id: config.shard_id,
                shard_total: config.shard_total,
                os: &config.os,
                payload_compression: config.payload_compression,
                large_threshold: config.large_threshold,
                presence_json: config.presence_json.as_deref(),
            },
        );
        if identify_payload.len() > PAYLOAD_BYTES_MAX {
            return Err(ConfigError::IdentifyTooLarge {
                bytes: identify_payload.len(),
                max_bytes: PAYLOAD_BYTES_MAX,
            });
        }
        let mut shard = Self {
            rng: Rng::new(config.rng_seed, config.shard_id),
            // Grows as commands come (most shards get none), up to `command_queue_capacity`.
            commands: VecDeque::new(),
            identify_payload: IdentifyPayload(identify_payload),
            state: ShardState::Connecting,
            session,
            events: VecDeque::with_capacity(8),
            target_is_resume: false,
            connect_deadline: None,
            hello_deadline: None,
            close_deadline: None,
            after_close: AfterClose::Stop,
            heartbeat: None,
            handshake_pending: None,
            send_window: SendWindow::new(
                SEND_LIMIT_PER_WINDOW,
                Duration::from_millis(SEND_WINDOW_MS + SEND_WINDOW_SAFETY_MARGIN_MS),
            ),
            reconnect_at: None,
            reconnect_attempt: 0,
            resume_url_failures: 0,
            resume_attempts: 0,
            identify_permit_outstanding: false,
            stop_close_code: CLOSE_CODE_KEEP_SESSION,
            latency: None,
            counters: ShardCounters::default(),
            config,
        };
        shard.start_connect(now);
        Ok(shard)
    }

    // ---- Inputs ---------------------------------------------------------------------------

    /// The driver holds the requested connect until `at`: a new session waits for its
    /// identify slot before opening a socket (a cold start of thousands of shards then opens
    /// them bucket round by bucket round, not all at once). The connect deadline counts from
    /// `at`. Ignored unless a connect is pending.
    pub fn defer_connect(&mut self, at: Instant) {
        if self.state == ShardState::Connecting {
            self.connect_deadline = Some(after(at, ms(self.config.connect_timeout_ms)));
        }
    }

    /// The WebSocket opened.
    pub fn connect_succeeded(&mut self, now: Instant) {
        match self.state {
            ShardState::Connecting => {
                self.connect_deadline = None;
                self.send_window.reset();
                self.state = ShardState::AwaitingHello;
                self.hello_deadline = Some(after(now, ms(self.config.hello_timeout_ms)));
                trace!(shard = self.config.shard_id, "websocket open");
            }
            // A connect that was in flight when the shard stopped, or one the machine already
            // gave up on: close it without ending the session.
            ShardState::Stopped => self.push_close(self.stop_close_code),
            ShardState::WaitingToReconnect | ShardState::Fatal => {
                self.counters.unexpected_inputs_total += 1;
                self.push_close(CLOSE_CODE_KEEP_SESSION);
            }
            _ => self.counters.unexpected_inputs_total += 1,
        }
    }

    /// The connect attempt failed (DNS, TCP, TLS, WebSocket upgrade). `reason` is only logged.
    pub fn connect_failed(&mut self, now: Instant, reason: &str) {
        if self.state != ShardState::Connecting {
            self.counters.unexpected_inputs_total += 1;
            return;
        }
        debug!(shard = self.config.shard_id, reason, "connect failed");
        self.note_connect_failure();
        self.begin_reconnect(
            now,
            ReconnectPlan::backoff(ReconnectCause::ConnectFailed),
            false,
        );
    }

    /// The connection is gone (or the driver dropped it) without a close frame from the server.
    pub fn connection_lost(&mut self, now: Instant, cause: LossCause) {
        match self.state {
            ShardState::Connecting => {
                self.note_connect_failure();
                self.begin_reconnect(
                    now,
                    ReconnectPlan::backoff(ReconnectCause::ConnectFailed),
                    false,
                );
            }
            ShardState::AwaitingHello => {
                self.note_connect_failure();
                self.begin_reconnect(now, ReconnectPlan::backoff(cause.into()), false);
            }
            state if state.is_open() => {
                self.begin_reconnect(now, ReconnectPlan::backoff(cause.into()), false);
            }
            ShardState::Closing => self.complete_close(now),
            _ => self.counters.unexpected_inputs_total += 1,
        }
    }

    /// The server sent a close frame (`code: None` for a close frame without a code).
    pub fn close_received(&mut self, now: Instant, code: Option<u16>, reason: &str) {
        let policy = close_policy(code);
        match (self.state, policy, code) {
            (ShardState::Closing, ClosePolicy::Fatal, Some(code)) => self.enter_fatal(code, reason),
            (ShardState::Closing, ClosePolicy::NewSession, _) => {
                // The close we asked for crossed a server close saying the session is gone.
                self.drop_session();
                self.complete_close(now);
            }
            (ShardState::Closing, _, _) => self.complete_close(now),
            (state, _, _) if state == ShardState::Connecting || state.is_open() => {
                debug!(
                    shard = self.config.shard_id,
                    ?code,
                    reason,
                    ?policy,
                    "server closed"
                );
                if matches!(state, ShardState::Connecting | ShardState::AwaitingHello) {
                    self.note_connect_failure();
                }
                match (policy, code) {
                    (ClosePolicy::Fatal, Some(code)) => self.enter_fatal(code, reason),
                    _ => {
                        let plan = ReconnectPlan {
                            cause: ReconnectCause::ServerClose,
                            close_code: code,
                            new_session: policy == ClosePolicy::NewSession,
                            delay: DelayRule::Backoff,
                        };
                        self.begin_reconnect(now, plan, false);
                    }
                }
            }
            _ => self.counters.unexpected_inputs_total += 1,
        }
    }

    /// A payload arrived. `head` is the decode stage's classification, `raw` the complete
    /// decompressed JSON. Ordinary dispatches cost O(1): the machine only tracks `s`; `raw` is
    /// read only for HELLO, READY and op 9.
    pub fn payload_received(
        &mut self,
        now: Instant,
        head: &PayloadHead<'_>,
        raw: &[u8],
    ) -> PayloadAction {
        match head.op {
            OP_DISPATCH => {
                self.on_dispatch(now, head, raw);
                return PayloadAction::Forward;
            }
            OP_HEARTBEAT => self.on_heartbeat_request(),
            OP_RECONNECT => self.on_reconnect_request(now),
            OP_INVALID_SESSION => self.on_invalid_session(now, raw),
            OP_HELLO => self.on_hello(now, raw),
            OP_HEARTBEAT_ACK => self.on_heartbeat_ack(now),
            op => {
                self.counters.unknown_opcodes_total += 1;
                trace!(shard = self.config.shard_id, op, "unknown opcode ignored");
            }
        }
        PayloadAction::Consumed
    }

    /// The identify limiter granted this shard's turn.
    pub fn identify_permitted(&mut self, _now: Instant) -> Result<(), PermitError> {
        self.identify_permit_outstanding = false;
        if self.state != ShardState::AwaitingIdentifyPermit {
            self.counters.unexpected_inputs_total += 1;
            return Err(PermitError::NotAwaitingPermit { state: self.state });
        }
        self.handshake_pending = Some(Handshake::Identify);
        self.state = ShardState::Identifying;
        Ok(())
    }

    /// Queues a bot command (op 3/4/8/31/43). It is released by [`Shard::poll_transmit`] while
    /// the shard is active, within the send allowance left after the heartbeats' reserve.
    pub fn send_command(&mut self, payload: Vec<u8>) -> Result<(), CommandError> {
        let checked = self.check_command(&payload);
        match checked {
            Ok(()) => {
                self.commands.push_back(payload);
                Ok(())
            }
            Err(error) => {
                self.counters.commands_rejected_total += 1;
                Err(error)
            }
        }
    }

    /// The operator asked for a reconnect; `new_session` drops the session and identifies.
    pub fn request_reconnect(
        &mut self,
        now: Instant,
        new_session: bool,
    ) -> Result<(), ControlError> {
        if self.state.is_terminal() {
            return Err(ControlError::ShardStopped { state: self.state });
        }
        if new_session {
            self.drop_session();
        }
        match self.state {
            state if state.is_open() => {
                let plan = ReconnectPlan {
                    cause: ReconnectCause::Requested,
                    close_code: None,
                    new_session,
                    delay: DelayRule::Immediate,
                };
                self.begin_reconnect(now, plan, true);
            }
            // A new session should not start on the resume URL: supersede the attempt.
            ShardState::Connecting if new_session => self.start_connect(now),
            ShardState::WaitingToReconnect => self.start_connect(now),
            // Closing, or connecting for the same kind of session: already on the way.
            _ => {}
        }
        Ok(())
    }

    /// Graceful stop. `resumable: true` closes with 4000 and keeps [`Shard::session`] for saving;
    /// `false` closes with 1000, which ends the session (the bot goes offline).
    pub fn request_shutdown(&mut self, now: Instant, resumable: bool) {
        let code = if resumable {
            CLOSE_CODE_KEEP_SESSION
        } else {
            self.drop_session();
            CLOSE_CODE_END_SESSION
        };
        self.stop_close_code = code;
        if self.state.is_open() {
            self.begin_close(now, code, AfterClose::Stop);
            return;
        }
        match self.state {
            ShardState::Closing => self.after_close = AfterClose::Stop,
            ShardState::Connecting | ShardState::WaitingToReconnect => self.stop(),
            // Already stopped, or open (handled above).
            _ => {}
        }
    }

    /// Call at or after [`Shard::poll_timeout`]; calling early is harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            ShardState::Connecting => {
                if reached(self.connect_deadline, now) {
                    self.note_connect_failure();
                    let plan = ReconnectPlan::backoff(ReconnectCause::ConnectTimeout);
                    self.begin_reconnect(now, plan, false);
                }
            }
            ShardState::AwaitingHello => {
                if reached(self.hello_deadline, now) {
                    self.note_connect_failure();
                    let plan = ReconnectPlan::backoff(ReconnectCause::HelloTimeout);
                    self.begin_reconnect(now, plan, true);
                }
            }
            ShardState::AwaitingIdentifyPermit
            | ShardState::Identifying
            | ShardState::Resuming
            | ShardState::Active => self.heartbeat_timer(now),
            ShardState::Closing => {
                if reached(self.close_deadline, now) {
                    self.counters.close_timeouts_total += 1;
                    debug!(
                        shard = self.config.shard_id,
                        "driver did not confirm the close"
                    );
                    self.complete_close(now);
                }
            }
            ShardState::WaitingToReconnect => {
                if reached(self.reconnect_at, now) {
                    self.start_connect(now);
                }
            }
            ShardState::Stopped | ShardState::Fatal => {}
        }
    }

    // ---- Outputs --------------------------------------------------------------------------

    /// Writes the next payload to send into `buf` (cleared first) and says what it is. Sends are
    /// recorded at `now` against the connection's send allowance; heartbeats go first.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        if !self.state.is_open() {
            return None;
        }
        let in_window = self.send_window.count(now);
        if in_window >= SEND_LIMIT_PER_WINDOW {
            return None;
        }
        buf.clear();
        let sequence = self.session.as_ref().map(|session| session.sequence);
        if let Some(heartbeat) = self.heartbeat.as_mut()
            && let Some(beat) = heartbeat.pending.take()
        {
            if beat == Beat::Scheduled {
                heartbeat.zombie_check_armed = true;
            }
            heartbeat.unacked_since = Some(now);
            json::write_heartbeat(buf, sequence);
            self.counters.heartbeats_sent_total += 1;
            return Some(self.record_send(now, TransmitKind::Heartbeat, buf));
        }
        match self.handshake_pending.take() {
            Some(Handshake::Identify) => {
                buf.extend_from_slice(&self.identify_payload.0);
                self.counters.identifies_sent_total += 1;
                debug!(shard = self.config.shard_id, "identify sent");
                return Some(self.record_send(now, TransmitKind::Identify, buf));
            }
            Some(Handshake::Resume) => {
                if let Some(session) = &self.session {
                    json::write_resume(
                        buf,
                        self.config.token.expose_secret(),
                        &session.session_id,
                        session.sequence,
                    );
                    self.counters.resumes_sent_total += 1;
                    debug!(
                        shard = self.config.shard_id,
                        seq = session.sequence,
                        "resume sent"
                    );
                    return Some(self.record_send(now, TransmitKind::Resume, buf));
                }
            }
            None => {}
        }
        if self.state == ShardState::Active
            && in_window < self.command_send_limit()
            && let Some(command) = self.commands.pop_front()
        {
            buf.extend_from_slice(&command);
            self.counters.commands_sent_total += 1;
            return Some(self.record_send(now, TransmitKind::Command, buf));
        }
        None
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<ShardEvent> {
        self.events.pop_front()
    }

    /// When [`Shard::handle_timeout`] (or, for a send waiting on the allowance,
    /// [`Shard::poll_transmit`]) has something to do. `None`: only an input can wake the machine.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            ShardState::Connecting => self.connect_deadline,
            ShardState::AwaitingHello => self.hello_deadline,
            ShardState::AwaitingIdentifyPermit
            | ShardState::Identifying
            | ShardState::Resuming
            | ShardState::Active => {
                let heartbeat_due = self.heartbeat.as_ref().map(|heartbeat| heartbeat.due);
                earliest(heartbeat_due, self.send_release_at())
            }
            ShardState::Closing => self.close_deadline,
            ShardState::WaitingToReconnect => self.reconnect_at,
            ShardState::Stopped | ShardState::Fatal => None,
        }
    }

    // ---- Accessors ------------------------------------------------------------------------

    /// Where the machine is.
    pub fn state(&self) -> ShardState {
        self.state
    }

    /// The session to resume (save it on shutdown), if any.
    pub fn session(&self) -> Option<&Session> {
        self.session.as_ref()
    }

    /// The last heartbeat → ACK round trip.
    pub fn latency(&self) -> Option<Duration> {
        self.latency
    }

    /// Counters for the reporter.
    pub fn counters(&self) -> &ShardCounters {
        &self.counters
    }

    /// This shard's id.
    pub fn shard_id(&self) -> u32 {
        self.config.shard_id
    }

    /// The heartbeat interval of the current connection (after clamping), once HELLO arrived.
    pub fn heartbeat_interval(&self) -> Option<Duration> {
        self.heartbeat.as_ref().map(|heartbeat| heartbeat.interval)
    }

    /// Bot commands waiting to be sent.
    pub fn queued_commands(&self) -> usize {
        self.commands.len()
    }

    // ---- Payload handling -----------------------------------------------------------------

    fn on_dispatch(&mut self, now: Instant, head: &PayloadHead<'_>, raw: &[u8]) {
        self.counters.dispatches_total += 1;
        match head.t {
            Some("READY") => self.on_ready(now, head.s, raw),
            Some("RESUMED") => {
                self.track_sequence(head.s);
                self.on_resumed();
            }
            _ => self.track_sequence(head.s),
        }
    }

    fn track_sequence(&mut self, s: Option<u64>) {
        let (Some(s), Some(session)) = (s, self.session.as_mut()) else {
            return;
        };
        if s > session.sequence {
            if s - session.sequence > 1 && session.sequence != 0 {
                self.counters.sequence_gaps_total += 1;
            }
            session.sequence = s;
        } else {
            self.counters.stale_sequences_total += 1;
        }
    }

    fn on_ready(&mut self, now: Instant, s: Option<u64>, raw: &[u8]) {
        let Some((session_id, resume_url)) = json::ready_session(raw) else {
            self.counters.malformed_payloads_total += 1;
            warn!(shard = self.config.shard_id, "READY without a session id");
            if self.state.is_open() {
                let plan = ReconnectPlan::backoff(ReconnectCause::MalformedPayload);
                self.begin_reconnect(now, plan, true);
            }
            return;
        };
        let resume_url = resume_url.filter(|url| is_gateway_url(url));
        debug!(
            shard = self.config.shard_id,
            session_id,
            ?resume_url,
            "ready"
        );
        self.session = Some(Session {
            session_id: session_id.clone(),
            resume_url,
            sequence: s.unwrap_or(0),
        });
        self.session_established();
        self.counters.ready_total += 1;
        self.events.push_back(ShardEvent::Ready { session_id });
    }

    fn on_resumed(&mut self) {
        if self.state != ShardState::Resuming {
            self.counters.unexpected_inputs_total += 1;
            return;
        }
        debug!(shard = self.config.shard_id, "resumed");
        self.session_established();
        self.counters.resumed_total += 1;
        self.events.push_back(ShardEvent::Resumed);
    }

    /// READY or RESUMED: the recovery counters start over.
    fn session_established(&mut self) {
        self.reconnect_attempt = 0;
        self.resume_attempts = 0;
        self.resume_url_failures = 0;
        if self.state.is_open() && self.heartbeat.is_some() {
            self.state = ShardState::Active;
        }
    }

    fn on_hello(&mut self, now: Instant, raw: &[u8]) {
        if self.state != ShardState::AwaitingHello {
            self.counters.unexpected_inputs_total += 1;
            return;
        }
        let Some(interval_ms) = json::hello_interval_ms(raw).filter(|&ms| ms > 0) else {
            self.counters.malformed_payloads_total += 1;
            warn!(
                shard = self.config.shard_id,
                "HELLO without a heartbeat interval"
            );
            let plan = ReconnectPlan::backoff(ReconnectCause::MalformedPayload);
            self.begin_reconnect(now, plan, true);
            return;
        };
        let clamped_ms = interval_ms.clamp(HEARTBEAT_INTERVAL_MIN_MS, HEARTBEAT_INTERVAL_MAX_MS);
        if clamped_ms != interval_ms {
            self.counters.heartbeat_intervals_clamped_total += 1;
        }
        if self.target_is_resume {
            self.resume_url_failures = 0;
        }
        let interval = ms(clamped_ms);
        let window_ms = SEND_WINDOW_MS + SEND_WINDOW_SAFETY_MARGIN_MS;
        let reserved_sends = usize::try_from(window_ms.div_ceil(clamped_ms) + 2)
            .map_or(SEND_LIMIT_PER_WINDOW, |reserved| {
                reserved.min(SEND_LIMIT_PER_WINDOW)
            });
        let first_delay = interval.mul_f64(self.rng.next_unit());
        self.hello_deadline = None;
        self.heartbeat = Some(Heartbeat {
            interval,
            due: grid_floor(self.config.heartbeat_grid, now, after(now, first_delay)),
            pending: None,
            zombie_check_armed: false,
            unacked_since: None,
            reserved_sends,
        });
        trace!(
            shard = self.config.shard_id,
            heartbeat_interval_ms = clamped_ms,
            "hello"
        );
        if self.session.is_some() {
            self.resume_attempts = self.resume_attempts.saturating_add(1);
            self.handshake_pending = Some(Handshake::Resume);
            self.state = ShardState::Resuming;
        } else {
            self.state = ShardState::AwaitingIdentifyPermit;
            // A request still outstanding from an earlier connection will be answered; asking
            // twice would waste a slot of the shared limiter.
            if !self.identify_permit_outstanding {
                self.identify_permit_outstanding = true;
                self.events.push_back(ShardEvent::NeedIdentify);
            }
        }
    }

    fn on_heartbeat_request(&mut self) {
        match self.heartbeat.as_mut() {
            Some(heartbeat) if self.state.is_open() => {
                // Coalesced: at most one heartbeat waits for the send allowance.
                heartbeat.pending = heartbeat.pending.or(Some(Beat::Requested));
                self.counters.heartbeat_requests_total += 1;
            }
            _ => self.counters.unexpected_inputs_total += 1,
        }
    }

    fn on_heartbeat_ack(&mut self, now: Instant) {
        self.counters.heartbeat_acks_total += 1;
        if let Some(heartbeat) = self.heartbeat.as_mut() {
            heartbeat.zombie_check_armed = false;
            if let Some(sent_at) = heartbeat.unacked_since.take() {
                self.latency = Some(now.saturating_duration_since(sent_at));
            }
        }
    }

    fn on_reconnect_request(&mut self, now: Instant) {
        if !self.state.is_open() {
            self.counters.unexpected_inputs_total += 1;
            return;
        }
        debug!(shard = self.config.shard_id, "server asked for a reconnect");
        let plan = ReconnectPlan {
            cause: ReconnectCause::ServerReconnect,
            close_code: None,
            new_session: false,
            delay: DelayRule::ImmediateIfFirst,
        };
        self.begin_reconnect(now, plan, true);
    }

    fn on_invalid_session(&mut self, now: Instant, raw: &[u8]) {
        if !self.state.is_open() {
            self.counters.unexpected_inputs_total += 1;
            return;
        }
        // A `d` that is not a bool is read as `false`: a new session is always safe.
        let resumable = json::invalid_session_resumable(raw).unwrap_or_else(|| {
            self.counters.malformed_payloads_total += 1;
            false
        });
        self.counters.invalid_sessions_total += 1;
        debug!(shard = self.config.shard_id, resumable, "invalid session");
        self.events
            .push_back(ShardEvent::InvalidSession { resumable });
        let resume = resumable && self.session.is_some();
        let plan = ReconnectPlan {
            cause: ReconnectCause::InvalidSession,
            close_code: None,
            new_session: !resume,
            delay: if resume {
                DelayRule::Backoff
            } else {
                DelayRule::InvalidSession
            },
        };
        self.begin_reconnect(now, plan, true);
    }

    // ---- Timers and transitions -----------------------------------------------------------

    fn heartbeat_timer(&mut self, now: Instant) {
        let zombie = match self.heartbeat.as_mut() {
            Some(heartbeat) if now >= heartbeat.due => {
                if heartbeat.pending.is_none() && heartbeat.zombie_check_armed {
                    true
                } else {
                    // A waiting requested heartbeat becomes the scheduled one.
                    heartbeat.pending = Some(Beat::Scheduled);
                    let next = heartbeat.due + heartbeat.interval;
                    // A driver that woke up more than an interval late must not burst.
                    let next = if next > now {
                        next
                    } else {
                        after(now, heartbeat.interval)
                    };
                    heartbeat.due = grid_floor(self.config.heartbeat_grid, now, next);
                    false
                }
            }
            _ => false,
        };
        if zombie {
            self.counters.zombie_connections_total += 1;
            warn!(
                shard = self.config.shard_id,
                "no heartbeat ACK: zombie connection"
            );
            self.begin_reconnect(now, ReconnectPlan::backoff(ReconnectCause::Zombie), true);
        }
    }

    /// Leaves the current connection (closing it with 4000 when `close_socket`) and schedules
    /// the next one.
    fn begin_reconnect(&mut self, now: Instant, plan: ReconnectPlan, close_socket: bool) {
        if plan.new_session {
            self.drop_session();
        }
        if self.session.is_some() && self.resume_attempts >= self.config.resume_attempts_max {
            debug!(
                shard = self.config.shard_id,
                "resume loop: falling back to identify"
            );
            self.counters.identify_fallbacks_total += 1;
            self.drop_session();
        }
        let delay = self.reconnect_delay(plan.delay);
        self.reconnect_attempt = self.reconnect_attempt.saturating_add(1);
        self.counters.reconnects_by_cause[plan.cause.index()] += 1;
        debug!(
            shard = self.config.shard_id,
            cause = plan.cause.as_str(),
            close_code = ?plan.close_code,
            attempt = self.reconnect_attempt,
            delay_ms = delay.as_millis(),
            "reconnecting"
        );
        self.events.push_back(ShardEvent::Reconnecting {
            cause: plan.cause,
            close_code: plan.close_code,
            attempt: self.reconnect_attempt,
            delay,
            resume: self.session.is_some(),
        });
        if close_socket {
            self.begin_close(
                now,
                CLOSE_CODE_KEEP_SESSION,
                AfterClose::Reconnect { delay },
            );
        } else {
            self.reset_connection();
            self.wait_then_connect(now, delay);
        }
    }

    fn reconnect_delay(&mut self, rule: DelayRule) -> Duration {
        match rule {
            DelayRule::Immediate => Duration::ZERO,
            DelayRule::ImmediateIfFirst if self.reconnect_attempt == 0 => Duration::ZERO,
            DelayRule::ImmediateIfFirst | DelayRule::Backoff => self
                .rng
                .duration_below(backoff_ceiling(self.reconnect_attempt)),
            DelayRule::InvalidSession => {
                let spread = INVALID_SESSION_DELAY_MAX_MS - INVALID_SESSION_DELAY_MIN_MS;
                ms(INVALID_SESSION_DELAY_MIN_MS) + self.rng.duration_below(ms(spread))
            }
        }
    }

    fn begin_close(&mut self, now: Instant, code: u16, after_close: AfterClose) {
        self.reset_connection();
        self.state = ShardState::Closing;
        self.close_deadline = Some(after(now, ms(self.config.close_timeout_ms)));
        self.after_close = after_close;
        self.push_close(code);
    }

    fn complete_close(&mut self, now: Instant) {
        self.close_deadline = None;
        match self.after_close {
            AfterClose::Reconnect { delay } => self.wait_then_connect(now, delay),
            AfterClose::Stop => self.stop(),
        }
    }

    fn wait_then_connect(&mut self, now: Instant, delay: Duration) {
        if delay.is_zero() {
            self.start_connect(now);
        } else {
            self.state = ShardState::WaitingToReconnect;
            self.reconnect_at = Some(after(now, delay));
        }
    }

    fn start_connect(&mut self, now: Instant) {
        self.reset_connection();
        self.reconnect_at = None;
        let target = match &self.session {
            Some(Session {
                resume_url: Some(url),
                ..
            }) if self.resume_url_failures < self.config.resume_url_failures_max => {
                ConnectTarget::Resume(url.clone())
            }
            _ => ConnectTarget::Main,
        };
        self.target_is_resume = matches!(target, ConnectTarget::Resume(_));
        self.state = ShardState::Connecting;
        self.connect_deadline = Some(after(now, ms(self.config.connect_timeout_ms)));
        self.counters.connects_total += 1;
        self.events.push_back(ShardEvent::Connect { target });
    }

    fn stop(&mut self) {
        self.reset_connection();
        self.reconnect_at = None;
        self.reject_waiting_commands();
        self.state = ShardState::Stopped;
        debug!(shard = self.config.shard_id, "stopped");
        self.events.push_back(ShardEvent::Stopped);
    }

    fn enter_fatal(&mut self, code: u16, reason: &str) {
        // The driver reports it at error, with what the code means (ShardEvent::Fatal): one
        // line for the operator, not two.
        debug!(
            shard = self.config.shard_id,
            code, reason, "fatal close code: shard stopped"
        );
        self.reset_connection();
        self.reconnect_at = None;
        self.reject_waiting_commands();
        self.state = ShardState::Fatal;
        self.events.push_back(ShardEvent::Fatal {
            code,
            reason: reason.to_owned(),
        });
    }

    /// The shard ends with bot commands still waiting for the send allowance: they will not be
    /// sent, and are counted as refused.
    fn reject_waiting_commands(&mut self) {
        if !self.commands.is_empty() {
            debug!(
                shard = self.config.shard_id,
                commands = self.commands.len(),
                "stopped with commands unsent"
            );
            self.counters.commands_rejected_total += self.commands.len() as u64;
            self.commands.clear();
        }
    }

    /// Forgets everything tied to the current connection.
    fn reset_connection(&mut self) {
        self.connect_deadline = None;
        self.hello_deadline = None;
        self.close_deadline = None;
        self.heartbeat = None;
        self.handshake_pending = None;
        self.send_window.reset();
    }

    fn drop_session(&mut self) {
        self.session = None;
        self.resume_attempts = 0;
        self.resume_url_failures = 0;
    }

    fn note_connect_failure(&mut self) {
        if !self.target_is_resume {
            return;
        }
        self.resume_url_failures = self.resume_url_failures.saturating_add(1);
        if self.resume_url_failures == self.config.resume_url_failures_max {
            debug!(
                shard = self.config.shard_id,
                "resume URL keeps failing: using the main URL"
            );
            self.counters.resume_url_fallbacks_total += 1;
        }
    }

    fn push_close(&mut self, code: u16) {
        self.events.push_back(ShardEvent::Close { code });
    }

    fn record_send(&mut self, now: Instant, kind: TransmitKind, buf: &[u8]) -> Transmit {
        self.send_window.record(now);
        Transmit {
            kind,
            size: buf.len(),
        }
    }

    /// Sends in a window that commands may use: the rest is kept for heartbeats.
    fn command_send_limit(&self) -> usize {
        let reserved = self
            .heartbeat
            .as_ref()
            .map_or(SEND_LIMIT_PER_WINDOW, |heartbeat| heartbeat.reserved_sends);
        SEND_LIMIT_PER_WINDOW.saturating_sub(reserved)
    }

    /// When a payload waiting only for the send allowance can go.
    fn send_release_at(&self) -> Option<Instant> {
        let control_waiting = self.handshake_pending.is_some()
            || self
                .heartbeat
                .as_ref()
                .is_some_and(|heartbeat| heartbeat.pending.is_some());
        let control = if control_waiting {
            self.send_window.free_at(SEND_LIMIT_PER_WINDOW)
        } else {
            None
        };
        let command = if self.state == ShardState::Active && !self.commands.is_empty() {
            self.send_window.free_at(self.command_send_limit())
        } else {
            None
        };
        earliest(control, command)
    }

    fn check_command(&self, payload: &[u8]) -> Result<(), CommandError> {
        if self.state.is_terminal() {
            return Err(CommandError::ShardStopped { state: self.state });
        }
        check_command_shape(payload)?;
        if self.commands.len() >= self.config.command_queue_capacity {
            return Err(CommandError::QueueFull {
                capacity: self.config.command_queue_capacity,
            });
        }
        Ok(())
    }
}

/// Checks what [`Shard::send_command`] checks of the payload itself: at most
/// [`PAYLOAD_BYTES_MAX`] bytes, a JSON object whose `op` is in [`COMMAND_OPCODES`]. Returns the op.
/// (The admin API checks commands with it before routing them to a core.)
pub fn check_command_shape(payload: &[u8]) -> Result<u8, CommandError> {
    if payload.len() > PAYLOAD_BYTES_MAX {
        return Err(CommandError::TooLarge {
            bytes: payload.len(),
            max_bytes: PAYLOAD_BYTES_MAX,
        });
    }
    match json::command_opcode(payload) {
        CommandShape::NotJsonObject => Err(CommandError::NotJsonObject),
        CommandShape::MissingOpcode => Err(CommandError::MissingOpcode),
        CommandShape::Opcode(op) => COMMAND_OPCODES
            .iter()
            .copied()
            .find(|&allowed| u64::from(allowed) == op)
            .ok_or(CommandError::OpcodeNotAllowed { op }),
    }
}

/// The identify payload; it holds the token, so its `Debug` prints only its size.
struct IdentifyPayload(Vec<u8>);

impl std::fmt::Debug for IdentifyPayload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[redacted; {} bytes]", self.0.len())
    }
}

/// Per-connection heartbeat state, created by HELLO.
#[derive(Debug, Clone)]
struct Heartbeat {
    interval: Duration,
    /// When the next scheduled heartbeat is due (and the previous one's ACK is checked).
    due: Instant,
    /// A heartbeat waits for `poll_transmit`.
    pending: Option<Beat>,
    /// A scheduled heartbeat went out and no ACK has come since: if the next one falls due
    /// like this, the connection is a zombie. Only scheduled heartbeats arm the check, so that
    /// the ACK of a requested heartbeat answered just before the due time cannot be "missing".
    zombie_check_armed: bool,
    /// When the last heartbeat without an ACK yet went out (for latency).
    unacked_since: Option<Instant>,
    /// Sends per window kept for heartbeats.
    reserved_sends: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Beat {
    /// From the heartbeat schedule.
    Scheduled,
    /// Answering a server op 1.
    Requested,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handshake {
    Identify,
    Resume,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterClose {
    Reconnect { delay: Duration },
    Stop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DelayRule {
    Immediate,
    /// Immediate when no reconnect happened since the last READY/RESUMED, else backoff.
    ImmediateIfFirst,
    Backoff,
    /// Uniform in [1 s, 5 s).
    InvalidSession,
}

#[derive(Debug, Clone, Copy)]
struct ReconnectPlan {
    cause: ReconnectCause,
    close_code: Option<u16>,
    new_session: bool,
    delay: DelayRule,
}

impl ReconnectPlan {
    fn backoff(cause: ReconnectCause) -> Self {
        Self {
            cause,
            close_code: None,
            new_session: false,
            delay: DelayRule::Backoff,
        }
    }
}

/// xorshift64* seeded through splitmix64: jitter only, not cryptography.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64, shard_id: u32) -> Self {
        let mixed = splitmix64(seed ^ splitmix64(u64::from(shard_id)));
        // xorshift must not start at 0.
        Self(if mixed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            mixed
        })
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [0, 1).
    fn next_unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, max).
    fn duration_below(&mut self, max: Duration) -> Duration {
        max.mul_f64(self.next_unit())
    }
}

fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn ms(milliseconds: u64) -> Duration {
    Duration::from_millis(milliseconds)
}

/// `now + delay`, saturating instead of panicking on an absurd `Instant`.
fn after(now: Instant, delay: Duration) -> Instant {
    now.checked_add(delay).unwrap_or(now)
}

/// `at` moved back to the last step of `grid` at or before it (a heartbeat due then goes out
/// at most one step early), unless that is before `now`: then `at` itself (a first heartbeat
/// jittered to within a step of HELLO; the next one lands on the grid). `at` without a grid.
fn grid_floor(grid: Option<Instant>, now: Instant, at: Instant) -> Instant {
    let Some(epoch) = grid else {
        return at;
    };
    let Some(since) = at.checked_duration_since(epoch) else {
        return at;
    };
    let step = HEARTBEAT_GRID_STEP.as_nanos();
    let back = Duration::from_nanos(u64::try_from(since.as_nanos() % step).unwrap_or(0));
    let floor = at - back;
    if floor >= now { floor } else { at }
}

fn reached(deadline: Option<Instant>, now: Instant) -> bool {
    deadline.is_some_and(|deadline| now >= deadline)
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn is_gateway_url(url: &str) -> bool {
    ["wss://", "ws://"]
        .iter()
        .any(|scheme| url.len() > scheme.len() && url.starts_with(scheme))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const INTERVAL_MS: u64 = 41_250;
    const RESUME_URL: &str = "wss://resume.example";
    const READY_RAW: &[u8] = br#"{"t":"READY","s":1,"op":0,"d":{"v":10,"session_id":"sess-1","resume_gateway_url":"wss://resume.example","guilds":[]}}"#;

    fn config() -> ShardConfig {
        let mut config = ShardConfig::new(3, 16, Token::new("tok\"en"), 33_281);
        config.rng_seed = 7;
        config
    }

    fn hello_raw(interval_ms: u64) -> Vec<u8> {
        format!(r#"{{"t":null,"s":null,"op":10,"d":{{"heartbeat_interval":{interval_ms}}}}}"#)
            .into_bytes()
    }

    fn saved_session() -> Session {
        Session {
            session_id: "saved-1".to_owned(),
            resume_url: Some(RESUME_URL.to_owned()),
            sequence: 42,
        }
    }

    #[derive(Debug)]
    struct Sent {
        at: Instant,
        kind: TransmitKind,
        json: Value,
    }

    /// A fake driver: fake time, records everything the machine asks for.
    struct Driver {
        shard: Shard,
        now: Instant,
        buf: Vec<u8>,
        sent: Vec<Sent>,
        events: Vec<ShardEvent>,
        ack_heartbeats: bool,
    }

    impl Driver {
        fn new(config: ShardConfig) -> Self {
            let now = Instant::now();
            Self::wrap(Shard::new(config, now).expect("valid config"), now)
        }

        fn with_session(config: ShardConfig, session: Session) -> Self {
            let now = Instant::now();
            Self::wrap(
                Shard::with_session(config, session, now).expect("valid config"),
                now,
            )
        }

        fn wrap(shard: Shard, now: Instant) -> Self {
            let mut driver = Self {
                shard,
                now,
                buf: Vec::new(),
                sent: Vec::new(),
                events: Vec::new(),
                ack_heartbeats: false,
            };
            driver.drain();
            driver
        }

        fn drain(&mut self) {
            while let Some(transmit) = self.shard.poll_transmit(self.now, &mut self.buf) {
                assert_eq!(transmit.size, self.buf.len());
                let json = serde_json::from_slice(&self.buf).expect("machine writes valid JSON");
                self.sent.push(Sent {
                    at: self.now,
                    kind: transmit.kind,
                    json,
                });
                if transmit.kind == TransmitKind::Heartbeat && self.ack_heartbeats {
                    let head = PayloadHead {
                        op: 11,
                        s: None,
                        t: None,
                    };
                    self.shard
                        .payload_received(self.now, &head, br#"{"op":11}"#);
                }
            }
            while let Some(event) = self.shard.poll_event() {
                self.events.push(event);
            }
        }

        fn take_events(&mut self) -> Vec<ShardEvent> {
            std::mem::take(&mut self.events)
        }

        fn take_sent(&mut self) -> Vec<Sent> {
            std::mem::take(&mut self.sent)
        }

        fn kinds(sent: &[Sent]) -> Vec<TransmitKind> {
            sent.iter().map(|sent| sent.kind).collect()
        }

        fn advance(&mut self, by: Duration) {
            self.now += by;
        }

        fn tick(&mut self) {
            self.shard.handle_timeout(self.now);
            self.drain();
        }

        /// Fires every timer up to `until`, then sets the clock to `until`.
        fn run_until(&mut self, until: Instant) {
            for _ in 0..1_000_000 {
                match self.shard.poll_timeout() {
                    Some(deadline) if deadline <= until => {
                        self.now = self.now.max(deadline);
                        self.tick();
                    }
                    _ => {
                        self.now = self.now.max(until);
                        return;
                    }
                }
            }
            panic!("timers never settle");
        }

        fn run_for(&mut self, span: Duration) {
            let until = self.now + span;
            self.run_until(until);
        }

        /// Runs timers until the machine asks for a connect; returns its target.
        fn run_until_connect(&mut self) -> ConnectTarget {
            for _ in 0..100 {
                let connect = self.events.iter().find_map(|event| match event {
                    ShardEvent::Connect { target } => Some(target.clone()),
                    _ => None,
                });
                if let Some(target) = connect {
                    self.events.clear();
                    return target;
                }
                let deadline = self.shard.poll_timeout().expect("a reconnect timer");
                self.now = self.now.max(deadline);
                self.tick();
            }
            panic!("no connect");
        }

        fn open(&mut self) {
            self.shard.connect_succeeded(self.now);
            self.drain();
        }

        fn payload(
            &mut self,
            op: u8,
            s: Option<u64>,
            t: Option<&str>,
            raw: &[u8],
        ) -> PayloadAction {
            let action = self
                .shard
                .payload_received(self.now, &PayloadHead { op, s, t }, raw);
            self.drain();
            action
        }

        fn hello(&mut self) {
            self.payload(10, None, None, &hello_raw(INTERVAL_MS));
        }

        fn ack(&mut self) {
            self.payload(11, None, None, br#"{"op":11}"#);
        }

        fn dispatch(&mut self, s: u64) -> PayloadAction {
            self.payload(
                0,
                Some(s),
                Some("MESSAGE_CREATE"),
                br#"{"t":"MESSAGE_CREATE"}"#,
            )
        }

        fn permit(&mut self) {
            self.shard
                .identify_permitted(self.now)
                .expect("waiting for a permit");
            self.drain();
        }

        /// Connect → HELLO → identify → READY (s = 1).
        fn identify_to_ready(&mut self) {
            assert_eq!(self.run_until_connect(), ConnectTarget::Main);
            self.open();
            self.hello();
            assert_eq!(self.take_events(), vec![ShardEvent::NeedIdentify]);
            self.permit();
            let action = self.payload(0, Some(1), Some("READY"), READY_RAW);
            assert_eq!(action, PayloadAction::Forward);
            assert_eq!(self.shard.state(), ShardState::Active);
            self.events.clear();
            self.sent.clear();
        }

        fn heartbeat_due(&self) -> Instant {
            self.shard
                .heartbeat
                .as_ref()
                .expect("heartbeat running")
                .due
        }

        /// The connection's socket is gone (after a `Close`, or on its own).
        fn lose(&mut self) {
            self.shard.connection_lost(self.now, LossCause::Transport);
            self.drain();
        }
    }

    fn active() -> Driver {
        let mut driver = Driver::new(config());
        driver.identify_to_ready();
        driver
    }

    fn reconnecting(events: &[ShardEvent]) -> (ReconnectCause, Option<u16>, u32, Duration, bool) {
        events
            .iter()
            .find_map(|event| match *event {
                ShardEvent::Reconnecting {
                    cause,
                    close_code,
                    attempt,
                    delay,
                    resume,
                } => Some((cause, close_code, attempt, delay, resume)),
                _ => None,
            })
            .expect("a Reconnecting event")
    }

    fn close_codes(events: &[ShardEvent]) -> Vec<u16> {
        events
            .iter()
            .filter_map(|event| match event {
                ShardEvent::Close { code } => Some(*code),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn happy_path_identify_ready_then_dispatches_track_sequence() {
        let mut driver = Driver::new(config());
        assert_eq!(
            driver.take_events(),
            vec![ShardEvent::Connect {
                target: ConnectTarget::Main
            }]
        );
        assert_eq!(driver.shard.state(), ShardState::Connecting);
        driver.open();
        assert_eq!(driver.shard.state(), ShardState::AwaitingHello);
        driver.hello();
        assert_eq!(driver.take_events(), vec![ShardEvent::NeedIdentify]);
        assert_eq!(driver.shard.state(), ShardState::AwaitingIdentifyPermit);
        assert!(
            driver.take_sent().is_empty(),
            "nothing before the permit (first beat is later)"
        );
        driver.permit();
        let sent = driver.take_sent();
        assert_eq!(Driver::kinds(&sent), vec![TransmitKind::Identify]);
        assert_eq!(driver.shard.state(), ShardState::Identifying);

        assert_eq!(
            driver.payload(0, Some(1), Some("READY"), READY_RAW),
            PayloadAction::Forward
        );
        assert_eq!(
            driver.take_events(),
            vec![ShardEvent::Ready {
                session_id: "sess-1".to_owned()
            }]
        );
        assert_eq!(driver.shard.state(), ShardState::Active);
        for s in [2, 3, 5] {
            assert_eq!(driver.dispatch(s), PayloadAction::Forward);
        }
        assert_eq!(
            driver.shard.session(),
            Some(&Session {
                session_id: "sess-1".to_owned(),
                resume_url: Some(RESUME_URL.to_owned()),
                sequence: 5,
            })
        );
        let counters = driver.shard.counters();
        assert_eq!(counters.dispatches_total, 4);
        assert_eq!(counters.sequence_gaps_total, 1);
        assert_eq!(counters.identifies_sent_total, 1);
        assert_eq!(counters.ready_total, 1);
    }

    #[test]
    fn identify_payload_carries_the_config() {
        let mut driver = Driver::new(config());
        driver.run_until_connect();
        driver.open();
        driver.hello();
        driver.permit();
        let sent = driver.take_sent();
        assert_eq!(
            sent[0].json,
            json!({"op": 2, "d": {
                "token": "tok\"en",
                "intents": 33_281,
                "properties": {"os": std::env::consts::OS, "browser": "shardgate", "device": "shardgate"},
                "shard": [3, 16],
                "large_threshold": 50,
            }})
        );

        let mut config = config();
        config.payload_compression = true;
        config.large_threshold = 250;
        config.presence_json = Some(r#"{"status":"idle","afk":false}"#.to_owned());
        let mut driver = Driver::new(config);
        driver.run_until_connect();
        driver.open();
        driver.hello();
        driver.permit();
        let identify = &driver.take_sent()[0].json["d"];
        assert_eq!(identify["compress"], json!(true));
        assert_eq!(identify["large_threshold"], json!(250));
        assert_eq!(
            identify["presence"],
            json!({"status": "idle", "afk": false})
        );
    }

    #[test]
    fn token_and_config_debug_are_redacted() {
        let mut config = config();
        config.token = Token::new("SECRET-VALUE");
        assert!(!format!("{config:?}").contains("SECRET"));
        assert!(format!("{config:?}").contains("token: [redacted]"));
        let shard = Shard::new(config, Instant::now()).expect("valid config");
        let debug = format!("{shard:?}");
        assert!(!debug.contains("SECRET"));
        assert!(debug.contains("identify_payload: [redacted; "), "{debug}");
    }

    #[test]
    fn heartbeats_on_a_grid_fall_on_its_steps_never_later_than_due() {
        for (interval_ms, seed) in [(INTERVAL_MS, 1), (INTERVAL_MS, 2), (41_337, 3), (1_100, 4)] {
            let interval = ms(interval_ms);
            let mut config = config();
            config.rng_seed = seed;
            // The grid started some time before this shard (another shard's start, say).
            let grid = Instant::now() - Duration::from_millis(1_234);
            config.heartbeat_grid = Some(grid);
            let mut driver = Driver::new(config);
            driver.run_until_connect();
            driver.open();
            let hello_at = driver.now;
            driver.payload(10, None, None, &hello_raw(interval_ms));
            let mut due = driver.shard.poll_timeout().expect("heartbeat timer");
            assert!(due >= hello_at && due < hello_at + interval);
            let on_grid = |at: Instant| {
                (at - grid)
                    .as_nanos()
                    .is_multiple_of(HEARTBEAT_GRID_STEP.as_nanos())
            };
            let mut previous: Option<Instant> = None;
            for _ in 0..6 {
                driver.run_until(due);
                let sent = driver.take_sent();
                assert_eq!(Driver::kinds(&sent), vec![TransmitKind::Heartbeat]);
                assert_eq!(sent[0].at, due);
                if let Some(previous) = previous {
                    // On a step, at most one step earlier than the interval asks, never later.
                    assert!(on_grid(due), "{interval_ms} ms: {:?}", due - grid);
                    assert!(due - previous <= interval, "{interval_ms} ms: late");
                    assert!(
                        due - previous + HEARTBEAT_GRID_STEP > interval,
                        "{interval_ms} ms"
                    );
                }
                previous = Some(due);
                driver.ack();
                due = driver.heartbeat_due();
            }
        }
    }

    #[test]
    fn first_heartbeat_within_interval_then_every_interval() {
        let interval = ms(INTERVAL_MS);
        let mut first_delays = Vec::new();
        for seed in 0..50 {
            let mut config = config();
            config.rng_seed = seed;
            let mut driver = Driver::new(config);
            driver.run_until_connect();
            driver.open();
            let hello_at = driver.now;
            driver.hello();
            let first_due = driver.shard.poll_timeout().expect("heartbeat timer");
            assert!(first_due >= hello_at && first_due < hello_at + interval);
            first_delays.push(first_due - hello_at);

            driver.run_until(first_due);
            let sent = driver.take_sent();
            assert_eq!(Driver::kinds(&sent), vec![TransmitKind::Heartbeat]);
            assert_eq!(sent[0].at, first_due);
            assert_eq!(sent[0].json, json!({"op": 1, "d": null}));
            driver.ack();
            assert_eq!(driver.heartbeat_due(), first_due + interval);
            for beat in 1..4 {
                driver.run_until(first_due + interval * beat);
                let sent = driver.take_sent();
                assert_eq!(Driver::kinds(&sent), vec![TransmitKind::Heartbeat]);
                assert_eq!(sent[0].at, first_due + interval * beat);
                driver.ack();
            }
        }
        first_delays.sort();
        first_delays.dedup();
        assert!(first_delays.len() > 40, "jitter differs between seeds");
    }

    #[test]
    fn heartbeat_carries_the_last_sequence() {
        let mut driver = active();
        driver.dispatch(2);
        driver.dispatch(7);
        let due = driver.heartbeat_due();
        driver.run_until(due);
        let sent = driver.take_sent();
        assert_eq!(sent[0].json, json!({"op": 1, "d": 7}));
    }

    #[test]
    fn ack_measures_latency() {
        let mut driver = active();
        assert_eq!(driver.shard.latency(), None);
        let due = driver.heartbeat_due();
        driver.run_until(due);
        driver.advance(ms(123));
        driver.ack();
        assert_eq!(driver.shard.latency(), Some(ms(123)));
        assert_eq!(driver.shard.counters().heartbeat_acks_total, 1);
    }

    #[test]
    fn zombie_closes_with_4000_then_resumes_on_the_resume_url() {
        let mut driver = active();
        driver.dispatch(9);
        let first = driver.heartbeat_due();
        driver.run_until(first);
        assert_eq!(
            Driver::kinds(&driver.take_sent()),
            vec![TransmitKind::Heartbeat]
        );
        // No ACK: the next due heartbeat finds a zombie.
        driver.run_until(first + ms(INTERVAL_MS));
        assert!(driver.take_sent().is_empty(), "no heartbeat on a zombie");
        let events = driver.take_events();
        assert_eq!(close_codes(&events), vec![CLOSE_CODE_KEEP_SESSION]);
        let (cause, _, _, _, resume) = reconnecting(&events);
        assert_eq!((cause, resume), (ReconnectCause::Zombie, true));
        assert_eq!(driver.shard.state(), ShardState::Closing);
        assert_eq!(driver.shard.counters().zombie_connections_total, 1);

        driver.lose();
        assert_eq!(
            driver.run_until_connect(),
            ConnectTarget::Resume(RESUME_URL.to_owned())
        );
        driver.open();
        driver.hello();
        assert!(driver.take_events().is_empty(), "no identify when resuming");
        let sent = driver.take_sent();
        assert_eq!(
            sent[0].json,
            json!({"op": 6, "d": {"token": "tok\"en", "session_id": "sess-1", "seq": 9}})
        );
        assert_eq!(driver.shard.state(), ShardState::Resuming);
        assert_eq!(
            driver.dispatch(10),
            PayloadAction::Forward,
            "replayed dispatch"
        );
        driver.payload(
            0,
            Some(11),
            Some("RESUMED"),
            br#"{"t":"RESUMED","s":11,"op":0,"d":{}}"#,
        );
        assert_eq!(driver.take_events(), vec![ShardEvent::Resumed]);
        assert_eq!(driver.shard.state(), ShardState::Active);
        assert_eq!(
            driver.shard.session().map(|session| session.sequence),
            Some(11)
        );
    }

    #[test]
    fn zombie_recovers_even_if_the_driver_never_confirms_the_close() {
        let mut driver = active();
        let first = driver.heartbeat_due();
        driver.run_until(first + ms(INTERVAL_MS));
        assert_eq!(driver.shard.state(), ShardState::Closing);
        // The driver never reports the socket gone: the close timeout moves on.
        assert_eq!(
            driver.run_until_connect(),
            ConnectTarget::Resume(RESUME_URL.to_owned())
        );
        assert_eq!(driver.shard.counters().close_timeouts_total, 1);
    }

    #[test]
    fn server_heartbeat_request_is_answered_at_once_without_moving_the_schedule() {
        let mut driver = active();
        driver.dispatch(4);
        let due = driver.heartbeat_due();
        driver.advance(ms(10));
        assert!(driver.now < due);
        assert_eq!(
            driver.payload(1, None, None, br#"{"op":1,"d":null}"#),
            PayloadAction::Consumed
        );
        let sent = driver.take_sent();
        assert_eq!(Driver::kinds(&sent), vec![TransmitKind::Heartbeat]);
        assert_eq!(sent[0].at, driver.now);
        assert_eq!(sent[0].json, json!({"op": 1, "d": 4}));
        assert_eq!(driver.heartbeat_due(), due);
        driver.ack();
        driver.run_until(due);
        assert_eq!(
            Driver::kinds(&driver.take_sent()),
            vec![TransmitKind::Heartbeat]
        );
    }

    #[test]
    fn requested_heartbeat_just_before_due_is_not_a_zombie() {
        let mut driver = active();
        let first = driver.heartbeat_due();
        driver.run_until(first);
        driver.ack();
        driver.take_sent();
        let second = driver.heartbeat_due();
        driver.run_until(second - ms(10));
        driver.payload(1, None, None, b"{}");
        // Its ACK is still on the wire when the scheduled heartbeat falls due.
        driver.run_until(second);
        assert_eq!(
            Driver::kinds(&driver.take_sent()),
            vec![TransmitKind::Heartbeat, TransmitKind::Heartbeat]
        );
        assert_eq!(driver.shard.state(), ShardState::Active);
        driver.advance(ms(40));
        driver.ack();
        driver.run_until(second + ms(INTERVAL_MS));
        assert_eq!(driver.shard.state(), ShardState::Active);
        assert_eq!(driver.shard.counters().zombie_connections_total, 0);
    }

    #[test]
    fn op7_closes_with_4000_and_resumes_immediately() {
        let mut driver = active();
        assert_eq!(
            driver.payload(7, None, None, br#"{"op":7,"d":null}"#),
            PayloadAction::Consumed
        );
        let events = driver.take_events();
        assert_eq!(close_codes(&events), vec![CLOSE_CODE_KEEP_SESSION]);
        let (cause, _, attempt, delay, resume) = reconnecting(&events);
        assert_eq!(
            (cause, attempt, delay, resume),
            (ReconnectCause::ServerReconnect, 1, Duration::ZERO, true)
        );
        driver.lose();
        // No timer needed: the Connect is already out.
        assert_eq!(
            driver.take_events(),
            vec![ShardEvent::Connect {
                target: ConnectTarget::Resume(RESUME_URL.to_owned())
            }]
        );
    }

    #[test]
    fn op9_resumable_reconnects_and_resumes() {
        let mut driver = active();
        driver.payload(9, None, None, br#"{"op":9,"d":true}"#);
        let events = driver.take_events();
        assert_eq!(events[0], ShardEvent::InvalidSession { resumable: true });
        assert_eq!(close_codes(&events), vec![CLOSE_CODE_KEEP_SESSION]);
        let (cause, _, _, _, resume) = reconnecting(&events);
        assert_eq!((cause, resume), (ReconnectCause::InvalidSession, true));
        driver.lose();
        assert_eq!(
            driver.run_until_connect(),
            ConnectTarget::Resume(RESUME_URL.to_owned())
        );
        driver.open();
        driver.hello();
        assert_eq!(
            Driver::kinds(&driver.take_sent()),
            vec![TransmitKind::Resume]
        );
    }

    #[test]
    fn op9_not_resumable_identifies_on_the_main_url_after_1_to_5_s() {
        for seed in 0..20 {
            let mut config = config();
            config.rng_seed = seed;
            let mut driver = Driver::new(config);
            driver.identify_to_ready();
            driver.payload(9, None, None, br#"{"op":9,"d":false}"#);
            let events = driver.take_events();
            assert_eq!(events[0], ShardEvent::InvalidSession { resumable: false });
            assert_eq!(close_codes(&events), vec![CLOSE_CODE_KEEP_SESSION]);
            let (_, _, _, delay, resume) = reconnecting(&events);
            assert!(!resume);
            assert!(delay >= ms(1_000) && delay < ms(5_000), "{delay:?}");
            assert_eq!(driver.shard.session(), None);
            driver.lose();
            let lost_at = driver.now;
            assert_eq!(driver.run_until_connect(), ConnectTarget::Main);
            assert_eq!(driver.now - lost_at, delay);
            driver.open();
            driver.hello();
            assert_eq!(driver.take_events(), vec![ShardEvent::NeedIdentify]);
        }
    }

    #[test]
    fn op9_with_a_non_bool_d_is_read_as_not_resumable() {
        let mut driver = active();
        driver.payload(9, None, None, br#"{"op":9,"d":"yes"}"#);
        assert_eq!(
            driver.take_events()[0],
            ShardEvent::InvalidSession { resumable: false }
        );
        assert_eq!(driver.shard.session(), None);
        assert_eq!(driver.shard.counters().malformed_payloads_total, 1);
    }

    #[test]
    fn every_fatal_close_code_is_explained_with_its_fix() {
        // (code, the meaning's first words, what the operator changes)
        let table: [(u16, &str, &[&str]); 6] = [
            (
                4004,
                "authentication failed: ",
                &["DISCORD_TOKEN", "--token"],
            ),
            (4010, "invalid shard: ", &["--shards", "--total-shards"]),
            (
                4011,
                "sharding required: ",
                &["--total-shards auto", "higher --total-shards"],
            ),
            (4012, "invalid API version: ", &["--gateway-url"]),
            (4013, "invalid intents: ", &["--intents"]),
            (
                4014,
                "disallowed intents: ",
                &["Developer Portal", "remove it from --intents"],
            ),
        ];
        assert_eq!(table.map(|(code, _, _)| code), FATAL_CLOSE_CODES);
        for (code, meaning, fixes) in table {
            assert_eq!(close_policy(Some(code)), ClosePolicy::Fatal, "{code}");
            let text = fatal_close_explanation(code).unwrap();
            assert!(text.starts_with(meaning), "{code}: {text}");
            for fix in fixes {
                assert!(text.contains(fix), "{code} names {fix}: {text}");
            }
            // One line, and a Markdown table cell in docs/troubleshooting.md.
            assert!(!text.contains(['\n', '|']), "{code}: {text}");
        }
        for code in [1000, 4000, 4003, 4009, 4015] {
            assert_eq!(fatal_close_explanation(code), None, "{code}");
        }
    }

    #[test]
    fn every_close_code_class_from_the_protocol() {
        use ClosePolicy::{Fatal, NewSession, Resume};
        let table: &[(Option<u16>, ClosePolicy)] = &[
            (None, Resume),
            (Some(4000), Resume),
            (Some(4001), Resume),
            (Some(4002), Resume),
            (Some(4005), Resume),
            (Some(4008), Resume),
            (Some(4003), NewSession),
            (Some(4007), NewSession),
            (Some(4009), NewSession),
            (Some(4004), Fatal),
            (Some(4010), Fatal),
            (Some(4011), Fatal),
            (Some(4012), Fatal),
            (Some(4013), Fatal),
            (Some(4014), Fatal),
            // Not in the table: resume (Discord answers op 9 if the session is gone).
            (Some(1000), Resume),
            (Some(1001), Resume),
            (Some(1006), Resume),
            (Some(4006), NewSession),
            (Some(4015), Resume),
        ];
        for &(code, policy) in table {
            assert_eq!(close_policy(code), policy, "{code:?}");
            // Exactly the fatal codes have an explanation.
            assert_eq!(
                code.and_then(fatal_close_explanation).is_some(),
                policy == Fatal,
                "{code:?}"
            );
            let mut driver = active();
            driver.shard.close_received(driver.now, code, "bye");
            driver.drain();
            let events = driver.take_events();
            assert!(
                close_codes(&events).is_empty(),
                "the server closed; nothing to close"
            );
            match policy {
                Resume | NewSession => {
                    let (cause, close_code, _, _, resume) = reconnecting(&events);
                    assert_eq!(cause, ReconnectCause::ServerClose);
                    assert_eq!(close_code, code);
                    assert_eq!(resume, policy == Resume, "{code:?}");
                    let expected = if policy == Resume {
                        ConnectTarget::Resume(RESUME_URL.to_owned())
                    } else {
                        ConnectTarget::Main
                    };
                    assert_eq!(driver.run_until_connect(), expected, "{code:?}");
                }
                Fatal => {
                    let code = code.expect("fatal codes are codes");
                    assert_eq!(
                        events,
                        vec![ShardEvent::Fatal {
                            code,
                            reason: "bye".to_owned()
                        }]
                    );
                    assert_eq!(driver.shard.state(), ShardState::Fatal);
                }
            }
        }
    }

    #[test]
    fn fatal_codes_stop_and_never_reconnect() {
        for code in [4004, 4010, 4011, 4012, 4013, 4014] {
            // While identifying, and while active.
            for identified in [false, true] {
                let mut driver = Driver::new(config());
                if identified {
                    driver.identify_to_ready();
                } else {
                    driver.run_until_connect();
                    driver.open();
                    driver.hello();
                    driver.permit();
                }
                driver.shard.close_received(driver.now, Some(code), "nope");
                driver.drain();
                assert_eq!(driver.shard.state(), ShardState::Fatal);
                assert_eq!(driver.shard.poll_timeout(), None);
                driver.take_events();
                driver.run_for(Duration::from_secs(3_600));
                driver
                    .shard
                    .connection_lost(driver.now, LossCause::Transport);
                driver.shard.handle_timeout(driver.now);
                driver.drain();
                assert!(
                    !driver
                        .take_events()
                        .iter()
                        .any(|event| matches!(event, ShardEvent::Connect { .. })),
                    "{code} must not reconnect"
                );
                assert_eq!(
                    driver.shard.request_reconnect(driver.now, false),
                    Err(ControlError::ShardStopped {
                        state: ShardState::Fatal
                    })
                );
                assert_eq!(
                    driver.shard.send_command(br#"{"op":3,"d":{}}"#.to_vec()),
                    Err(CommandError::ShardStopped {
                        state: ShardState::Fatal
                    })
                );
            }
        }
    }

    #[test]
    fn resume_url_falls_back_to_the_main_url_after_repeated_failures() {
        let mut driver = active();
        driver.lose();
        for _ in 0..ShardConfig::DEFAULT_RESUME_URL_FAILURES_MAX {
            assert_eq!(
                driver.run_until_connect(),
                ConnectTarget::Resume(RESUME_URL.to_owned())
            );
            driver
                .shard
                .connect_failed(driver.now, "connection refused");
            driver.drain();
        }
        assert_eq!(driver.run_until_connect(), ConnectTarget::Main);
        assert_eq!(driver.shard.counters().resume_url_fallbacks_total, 1);
        assert!(
            driver.shard.session().is_some(),
            "the session survives a dead resume URL"
        );
        driver.open();
        driver.hello();
        assert_eq!(
            Driver::kinds(&driver.take_sent()),
            vec![TransmitKind::Resume]
        );
    }

    #[test]
    fn hello_timeouts_on_the_resume_url_also_fall_back() {
        let mut driver = active();
        driver.lose();
        for _ in 0..ShardConfig::DEFAULT_RESUME_URL_FAILURES_MAX {
            assert_eq!(
                driver.run_until_connect(),
                ConnectTarget::Resume(RESUME_URL.to_owned())
            );
            driver.open();
            driver.run_for(ms(ShardConfig::DEFAULT_HELLO_TIMEOUT_MS));
            let events = driver.take_events();
            assert_eq!(reconnecting(&events).0, ReconnectCause::HelloTimeout);
            assert_eq!(close_codes(&events), vec![CLOSE_CODE_KEEP_SESSION]);
            driver.lose();
        }
        assert_eq!(driver.run_until_connect(), ConnectTarget::Main);
    }

    #[test]
    fn resume_loop_falls_back_to_identify() {
        let mut driver = active();
        driver.lose();
        for round in 0..ShardConfig::DEFAULT_RESUME_ATTEMPTS_MAX {
            assert_eq!(
                driver.run_until_connect(),
                ConnectTarget::Resume(RESUME_URL.to_owned()),
                "round {round}"
            );
            driver.open();
            driver.hello();
            assert_eq!(
                Driver::kinds(&driver.take_sent()),
                vec![TransmitKind::Resume]
            );
            // Alternate the two loop shapes: a resumable op 9, a resumable close code.
            if round % 2 == 0 {
                driver.payload(9, None, None, br#"{"op":9,"d":true}"#);
                driver.lose();
            } else {
                driver.shard.close_received(driver.now, Some(4000), "");
                driver.drain();
            }
        }
        let events = driver.take_events();
        assert!(!reconnecting(&events).4, "the last reconnect identifies");
        assert_eq!(driver.shard.session(), None);
        assert_eq!(driver.shard.counters().identify_fallbacks_total, 1);
        assert_eq!(driver.run_until_connect(), ConnectTarget::Main);
        driver.open();
        driver.hello();
        assert_eq!(driver.take_events(), vec![ShardEvent::NeedIdentify]);
    }

    #[test]
    fn reconnect_causes_index_their_counters() {
        for (index, cause) in ReconnectCause::ALL.into_iter().enumerate() {
            assert_eq!(cause.index(), index, "{cause:?}");
        }
        let mut labels: Vec<_> = ReconnectCause::ALL
            .iter()
            .map(|cause| cause.as_str())
            .collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), ReconnectCause::COUNT);
    }

    #[test]
    fn backoff_ceiling_doubles_and_is_capped() {
        assert_eq!(backoff_ceiling(0), ms(1_000));
        assert_eq!(backoff_ceiling(1), ms(2_000));
        assert_eq!(backoff_ceiling(5), ms(32_000));
        assert_eq!(backoff_ceiling(6), ms(RECONNECT_BACKOFF_CAP_MS));
        assert_eq!(backoff_ceiling(u32::MAX), ms(RECONNECT_BACKOFF_CAP_MS));
    }

    #[test]
    fn backoff_grows_is_capped_and_resets_after_resumed() {
        let mut driver = active();
        driver.lose();
        let mut delays = Vec::new();
        for expected_attempt in 1..=20 {
            let (_, _, attempt, delay, _) = reconnecting(&driver.take_events());
            assert_eq!(attempt, expected_attempt);
            assert!(
                delay < backoff_ceiling(attempt - 1),
                "attempt {attempt}: {delay:?}"
            );
            delays.push(delay);
            driver.events.clear();
            driver.run_until_connect();
            driver.shard.connect_failed(driver.now, "refused");
            driver.drain();
        }
        assert!(
            delays
                .iter()
                .all(|&delay| delay <= ms(RECONNECT_BACKOFF_CAP_MS))
        );
        let early = delays[..3].iter().max().copied().unwrap_or_default();
        let late = delays[8..].iter().max().copied().unwrap_or_default();
        assert!(early < ms(8_000) && late > ms(30_000), "{delays:?}");

        // A RESUMED resets the backoff.
        driver.run_until_connect();
        driver.open();
        driver.hello();
        driver.payload(0, Some(2), Some("RESUMED"), b"{}");
        assert_eq!(driver.shard.state(), ShardState::Active);
        driver.events.clear();
        driver.lose();
        let (_, _, attempt, delay, _) = reconnecting(&driver.take_events());
        assert_eq!(attempt, 1);
        assert!(delay < ms(RECONNECT_BACKOFF_BASE_MS));
    }

    #[test]
    fn op7_during_a_failure_streak_backs_off() {
        let mut driver = active();
        driver.lose();
        driver.run_until_connect();
        driver.open();
        driver.hello();
        driver.payload(7, None, None, b"{}");
        let (cause, _, attempt, _, _) = reconnecting(&driver.take_events());
        assert_eq!((cause, attempt), (ReconnectCause::ServerReconnect, 2));
        driver.lose();
        assert_eq!(driver.shard.state(), ShardState::WaitingToReconnect);
    }

    #[test]
    fn command_flood_never_exceeds_120_per_minute_and_heartbeats_stay_on_time() {
        let mut config = config();
        config.command_queue_capacity = 1_000;
        let mut driver = Driver::new(config);
        driver.ack_heartbeats = true;
        driver.identify_to_ready();
        let command =
            br#"{"op":3,"d":{"since":null,"activities":[],"status":"online","afk":false}}"#;
        for _ in 0..1_000 {
            driver
                .shard
                .send_command(command.to_vec())
                .expect("queue has room");
        }
        let start = driver.now;
        let mut sent = Vec::new();
        let mut heartbeats = 0;
        while driver.now < start + Duration::from_secs(900) {
            let due = driver.heartbeat_due();
            let deadline = driver.shard.poll_timeout().expect("timer while active");
            driver.now = driver.now.max(deadline);
            driver.tick();
            for transmit in driver.take_sent() {
                if transmit.kind == TransmitKind::Heartbeat {
                    assert_eq!(transmit.at, due, "heartbeat delayed");
                    heartbeats += 1;
                }
                sent.push(transmit.at);
            }
        }
        assert_eq!(driver.shard.queued_commands(), 0);
        assert_eq!(driver.shard.counters().commands_sent_total, 1_000);
        assert!(heartbeats > 20);
        assert_eq!(driver.shard.counters().zombie_connections_total, 0);
        let window = ms(SEND_WINDOW_MS);
        for (index, &at) in sent.iter().enumerate() {
            let in_window = sent[index..]
                .iter()
                .take_while(|&&later| later - at < window)
                .count();
            assert!(
                in_window <= SEND_LIMIT_PER_WINDOW,
                "{in_window} sends within 60 s"
            );
        }
        // The allowance is used: the first minute sends all it may.
        let first_minute = sent.iter().filter(|&&at| at - start < window).count();
        assert!(first_minute >= SEND_LIMIT_PER_WINDOW - 6, "{first_minute}");
    }

    #[test]
    fn heartbeat_requests_flood_stays_within_the_allowance() {
        let mut driver = active();
        for _ in 0..300 {
            driver.payload(1, None, None, b"{}");
            driver.ack();
            driver.advance(ms(10));
        }
        assert!(driver.take_sent().len() <= SEND_LIMIT_PER_WINDOW);
        // The waiting heartbeat goes when the window frees.
        driver.run_for(Duration::from_secs(61));
        assert!(!driver.take_sent().is_empty());
    }

    #[test]
    fn command_over_4096_bytes_is_rejected() {
        let mut driver = active();
        let mut exact = br#"{"op":8,"d":{"guild_id":"1","query":""#.to_vec();
        let tail = br#"","limit":0}}"#;
        exact.resize(PAYLOAD_BYTES_MAX - tail.len(), b'a');
        exact.extend_from_slice(tail);
        assert_eq!(exact.len(), PAYLOAD_BYTES_MAX);
        assert_eq!(driver.shard.send_command(exact), Ok(()));
        let mut too_big = br#"{"op":8,"d":{"query":""#.to_vec();
        too_big.resize(PAYLOAD_BYTES_MAX + 1, b'a');
        assert_eq!(
            driver.shard.send_command(too_big),
            Err(CommandError::TooLarge {
                bytes: 4097,
                max_bytes: 4096
            })
        );
        assert_eq!(driver.shard.queued_commands(), 1);
        assert_eq!(driver.shard.counters().commands_rejected_total, 1);
    }

    #[test]
    fn commands_still_waiting_when_the_shard_stops_are_counted_as_refused() {
        let mut driver = active();
        driver
            .shard
            .connection_lost(driver.now, LossCause::Transport);
        driver.drain();
        // Waiting for the reconnect, as it would for the send allowance.
        assert_eq!(
            driver.shard.send_command(br#"{"op":3,"d":{}}"#.to_vec()),
            Ok(())
        );
        assert_eq!(driver.shard.queued_commands(), 1);
        driver.shard.request_shutdown(driver.now, true);
        driver.drain();
        assert_eq!(driver.shard.state(), ShardState::Stopped);
        assert_eq!(driver.shard.queued_commands(), 0);
        assert_eq!(driver.shard.counters().commands_rejected_total, 1);
    }

    #[test]
    fn command_queue_full_is_an_error() {
        let mut config = config();
        config.command_queue_capacity = 2;
        let mut driver = Driver::new(config);
        let command = br#"{"op":4,"d":{"guild_id":"1","channel_id":null}}"#;
        assert_eq!(driver.shard.send_command(command.to_vec()), Ok(()));
        assert_eq!(driver.shard.send_command(command.to_vec()), Ok(()));
        assert_eq!(
            driver.shard.send_command(command.to_vec()),
            Err(CommandError::QueueFull { capacity: 2 })
        );
    }

    #[test]
    fn commands_must_be_bot_opcodes() {
        let mut driver = active();
        for (payload, error) in [
            (&b"not json"[..], CommandError::NotJsonObject),
            (b"[3]", CommandError::NotJsonObject),
            (br#"{"d":{}}"#, CommandError::MissingOpcode),
            (br#"{"op":"3","d":{}}"#, CommandError::MissingOpcode),
            (
                br#"{"op":1,"d":null}"#,
                CommandError::OpcodeNotAllowed { op: 1 },
            ),
            (
                br#"{"op":2,"d":{}}"#,
                CommandError::OpcodeNotAllowed { op: 2 },
            ),
            (
                br#"{"op":6,"d":{}}"#,
                CommandError::OpcodeNotAllowed { op: 6 },
            ),
        ] {
            assert_eq!(driver.shard.send_command(payload.to_vec()), Err(error));
        }
        for op in COMMAND_OPCODES {
            let payload = format!(r#"{{"op":{op},"d":{{}}}}"#).into_bytes();
            assert_eq!(driver.shard.send_command(payload), Ok(()));
        }
    }

    #[test]
    fn commands_wait_until_the_session_is_active() {
        let mut driver = Driver::new(config());
        driver
            .shard
            .send_command(br#"{"op":3,"d":{}}"#.to_vec())
            .expect("queued");
        driver.run_until_connect();
        driver.open();
        driver.hello();
        driver.permit();
        assert_eq!(
            Driver::kinds(&driver.take_sent()),
            vec![TransmitKind::Identify]
        );
        driver.payload(0, Some(1), Some("READY"), READY_RAW);
        let sent = driver.take_sent();
        assert_eq!(Driver::kinds(&sent), vec![TransmitKind::Command]);
        assert_eq!(sent[0].json, json!({"op": 3, "d": {}}));
    }

    #[test]
    fn shutdown_resumable_closes_with_4000_and_keeps_the_session() {
        let mut driver = active();
        driver.dispatch(8);
        driver.shard.request_shutdown(driver.now, true);
        driver.drain();
        assert_eq!(driver.take_events(), vec![ShardEvent::Close { code: 4000 }]);
        assert_eq!(driver.shard.state(), ShardState::Closing);
        // The server echoes our close code.
        driver.shard.close_received(driver.now, Some(4000), "");
        driver.drain();
        assert_eq!(driver.take_events(), vec![ShardEvent::Stopped]);
        assert_eq!(driver.shard.state(), ShardState::Stopped);
        assert_eq!(driver.shard.poll_timeout(), None);
        assert_eq!(
            driver.shard.session(),
            Some(&Session {
                session_id: "sess-1".to_owned(),
                resume_url: Some(RESUME_URL.to_owned()),
                sequence: 8,
            })
        );
        driver.run_for(Duration::from_secs(600));
        assert!(driver.take_events().is_empty());
    }

    #[test]
    fn shutdown_not_resumable_closes_with_1000_and_drops_the_session() {
        let mut driver = active();
        driver.shard.request_shutdown(driver.now, false);
        driver.drain();
        assert_eq!(
            driver.take_events(),
            vec![ShardEvent::Close {
                code: CLOSE_CODE_END_SESSION
            }]
        );
        assert_eq!(driver.shard.session(), None);
        // The driver never confirms: the close timeout still stops the shard.
        driver.run_for(ms(ShardConfig::DEFAULT_CLOSE_TIMEOUT_MS));
        assert_eq!(driver.take_events(), vec![ShardEvent::Stopped]);
    }

    #[test]
    fn shutdown_between_connections_stops_at_once() {
        let mut driver = active();
        driver.lose();
        assert_eq!(driver.shard.state(), ShardState::WaitingToReconnect);
        driver.events.clear();
        driver.shard.request_shutdown(driver.now, true);
        driver.drain();
        assert_eq!(driver.take_events(), vec![ShardEvent::Stopped]);
        assert!(driver.shard.session().is_some());

        // A connect in flight when the shutdown came is closed, resumably, when it opens.
        let mut driver = active();
        driver.lose();
        driver.run_until_connect();
        driver.shard.request_shutdown(driver.now, true);
        driver.drain();
        assert_eq!(driver.take_events(), vec![ShardEvent::Stopped]);
        driver.open();
        assert_eq!(driver.take_events(), vec![ShardEvent::Close { code: 4000 }]);
    }

    #[test]
    fn hello_timeout_reconnects() {
        let mut driver = Driver::new(config());
        driver.run_until_connect();
        driver.open();
        driver.advance(ms(ShardConfig::DEFAULT_HELLO_TIMEOUT_MS - 1));
        driver.tick();
        assert!(driver.take_events().is_empty());
        driver.advance(ms(1));
        driver.tick();
        let events = driver.take_events();
        assert_eq!(reconnecting(&events).0, ReconnectCause::HelloTimeout);
        assert_eq!(close_codes(&events), vec![CLOSE_CODE_KEEP_SESSION]);
        assert_eq!(
            driver
                .shard
                .counters()
                .reconnects(ReconnectCause::HelloTimeout),
            1
        );
    }

    #[test]
    fn a_deferred_connect_times_out_only_after_its_start() {
        let mut driver = Driver::new(config());
        driver.run_until_connect();
        let start = driver.now + Duration::from_secs(120);
        driver.shard.defer_connect(start);
        driver.run_for(Duration::from_secs(119));
        assert!(driver.events.is_empty(), "{:?}", driver.events);
        assert_eq!(driver.shard.state(), ShardState::Connecting);
        driver.run_for(Duration::from_secs(1) + ms(ShardConfig::DEFAULT_CONNECT_TIMEOUT_MS));
        assert_eq!(
            reconnecting(&driver.events).0,
            ReconnectCause::ConnectTimeout
        );
    }

    #[test]
    fn connect_timeout_issues_a_fresh_connect() {
        let mut driver = Driver::new(config());
        driver.run_until_connect();
        driver.run_for(ms(ShardConfig::DEFAULT_CONNECT_TIMEOUT_MS));
        assert_eq!(
            reconnecting(&driver.events).0,
            ReconnectCause::ConnectTimeout
        );
        driver.events.clear();
        assert_eq!(driver.run_until_connect(), ConnectTarget::Main);
    }

    #[test]
    fn malformed_hello_and_ready_close_with_4000() {
        for raw in [
            &br#"{"op":10,"d":{}}"#[..],
            br#"{"op":10,"d":{"heartbeat_interval":0}}"#,
            b"{",
        ] {
            let mut driver = Driver::new(config());
            driver.run_until_connect();
            driver.open();
            assert_eq!(driver.payload(10, None, None, raw), PayloadAction::Consumed);
            let events = driver.take_events();
            assert_eq!(reconnecting(&events).0, ReconnectCause::MalformedPayload);
            assert_eq!(close_codes(&events), vec![CLOSE_CODE_KEEP_SESSION]);
        }
        let mut driver = Driver::new(config());
        driver.run_until_connect();
        driver.open();
        driver.hello();
        driver.permit();
        driver.take_events();
        let action = driver.payload(
            0,
            Some(1),
            Some("READY"),
            br#"{"t":"READY","op":0,"d":{"v":10}}"#,
        );
        assert_eq!(action, PayloadAction::Forward);
        let events = driver.take_events();
        assert_eq!(reconnecting(&events).0, ReconnectCause::MalformedPayload);
        assert_eq!(close_codes(&events), vec![CLOSE_CODE_KEEP_SESSION]);
        assert_eq!(driver.shard.counters().malformed_payloads_total, 1);
    }

    #[test]
    fn hello_interval_is_clamped() {
        for (interval_ms, expected_ms) in [
            (1, 1_000),
            (999, 1_000),
            (41_250, 41_250),
            (u64::MAX, 600_000),
        ] {
            let mut driver = Driver::new(config());
            driver.run_until_connect();
            driver.open();
            driver.payload(10, None, None, &hello_raw(interval_ms));
            assert_eq!(driver.shard.heartbeat_interval(), Some(ms(expected_ms)));
        }
    }

    #[test]
    fn lower_or_equal_sequence_is_ignored_and_counted() {
        let mut driver = active();
        driver.dispatch(5);
        driver.dispatch(3);
        driver.dispatch(5);
        assert_eq!(
            driver.shard.session().map(|session| session.sequence),
            Some(5)
        );
        assert_eq!(driver.shard.counters().stale_sequences_total, 2);
        driver.dispatch(6);
        assert_eq!(
            driver.shard.session().map(|session| session.sequence),
            Some(6)
        );
    }

    #[test]
    fn ready_resets_the_session() {
        let mut driver = active();
        driver.dispatch(500);
        let raw = br#"{"t":"READY","s":1,"op":0,"d":{"session_id":"sess-2","resume_gateway_url":"wss://other.example"}}"#;
        driver.payload(0, Some(1), Some("READY"), raw);
        assert_eq!(
            driver.shard.session(),
            Some(&Session {
                session_id: "sess-2".to_owned(),
                resume_url: Some("wss://other.example".to_owned()),
                sequence: 1,
            })
        );
    }

    #[test]
    fn unknown_opcodes_are_ignored_and_counted() {
        let mut driver = active();
        for op in [2, 3, 4, 5, 6, 8, 12, 31, 43, 255] {
            assert_eq!(
                driver.payload(op, Some(99), None, b"{}"),
                PayloadAction::Consumed
            );
        }
        assert_eq!(driver.shard.counters().unknown_opcodes_total, 10);
        assert_eq!(driver.shard.state(), ShardState::Active);
        assert_eq!(
            driver.shard.session().map(|session| session.sequence),
            Some(1)
        );
        assert!(driver.take_events().is_empty());
    }

    #[test]
    fn saved_session_resumes_first() {
        let mut driver = Driver::with_session(config(), saved_session());
        assert_eq!(
            driver.run_until_connect(),
            ConnectTarget::Resume(RESUME_URL.to_owned())
        );
        driver.open();
        driver.hello();
        assert!(driver.take_events().is_empty(), "no identify needed");
        let sent = driver.take_sent();
        assert_eq!(
            sent[0].json,
            json!({"op": 6, "d": {"token": "tok\"en", "session_id": "saved-1", "seq": 42}})
        );
        let due = driver.heartbeat_due();
        driver.run_until(due);
        assert_eq!(driver.take_sent()[0].json, json!({"op": 1, "d": 42}));
    }

    #[test]
    fn saved_session_resume_rejected_falls_back_to_identify() {
        let mut driver = Driver::with_session(config(), saved_session());
        driver.run_until_connect();
        driver.open();
        driver.hello();
        driver.payload(9, None, None, br#"{"op":9,"d":false}"#);
        driver.lose();
        assert_eq!(driver.run_until_connect(), ConnectTarget::Main);
        driver.open();
        driver.hello();
        assert_eq!(driver.take_events(), vec![ShardEvent::NeedIdentify]);
    }

    #[test]
    fn config_and_session_validation() {
        let now = Instant::now();
        let with = |change: fn(&mut ShardConfig)| {
            let mut config = config();
            change(&mut config);
            Shard::new(config, now).map(|_| ())
        };
        assert_eq!(
            with(|config| config.shard_total = 0),
            Err(ConfigError::ZeroShardTotal)
        );
        assert_eq!(
            with(|config| config.shard_id = 16),
            Err(ConfigError::ShardIdOutOfRange {
                shard_id: 16,
                shard_total: 16
            })
        );
        assert_eq!(
            with(|config| config.token = Token::new("")),
            Err(ConfigError::EmptyToken)
        );
        assert_eq!(
            with(|config| config.large_threshold = 251),
            Err(ConfigError::LargeThresholdOutOfRange {
                large_threshold: 251
            })
        );
        assert_eq!(
            with(|config| config.presence_json = Some("[1]".to_owned())),
            Err(ConfigError::PresenceNotJsonObject)
        );
        assert!(matches!(
            with(|config| config.presence_json = Some(format!(r#"{{"x":"{}"}}"#, "a".repeat(5000)))),
            Err(ConfigError::IdentifyTooLarge { bytes, max_bytes: PAYLOAD_BYTES_MAX }) if bytes > 5_000
        ));
        assert_eq!(
            with(|config| config.command_queue_capacity = 0),
            Err(ConfigError::ZeroCommandQueueCapacity)
        );
        assert_eq!(
            with(|config| config.close_timeout_ms = 0),
            Err(ConfigError::ZeroTimeout {
                name: "close_timeout_ms"
            })
        );
        let mut session = saved_session();
        session.session_id.clear();
        assert_eq!(
            Shard::with_session(config(), session, now).map(|_| ()),
            Err(ConfigError::EmptySessionId)
        );
        let mut session = saved_session();
        session.resume_url = Some("https://nope".to_owned());
        assert_eq!(
            Shard::with_session(config(), session, now).map(|_| ()),
            Err(ConfigError::InvalidResumeUrl {
                url: "https://nope".to_owned()
            })
        );
    }

    #[test]
    fn identify_permit_outside_its_state_is_an_error_and_is_not_asked_twice() {
        let mut driver = Driver::new(config());
        assert_eq!(
            driver.shard.identify_permitted(driver.now),
            Err(PermitError::NotAwaitingPermit {
                state: ShardState::Connecting
            })
        );
        driver.run_until_connect();
        driver.open();
        driver.hello();
        assert_eq!(driver.take_events(), vec![ShardEvent::NeedIdentify]);
        // The connection drops before the limiter answers: the request stays outstanding.
        driver.lose();
        driver.run_until_connect();
        driver.open();
        driver.hello();
        assert!(
            driver.take_events().is_empty(),
            "no second request to the limiter"
        );
        driver.permit();
        assert_eq!(
            Driver::kinds(&driver.take_sent()),
            vec![TransmitKind::Identify]
        );
    }

    #[test]
    fn requested_reconnects() {
        let mut driver = active();
        assert_eq!(driver.shard.request_reconnect(driver.now, false), Ok(()));
        driver.drain();
        let events = driver.take_events();
        let (cause, _, _, delay, resume) = reconnecting(&events);
        assert_eq!(
            (cause, delay, resume),
            (ReconnectCause::Requested, Duration::ZERO, true)
        );
        assert_eq!(close_codes(&events), vec![CLOSE_CODE_KEEP_SESSION]);
        driver.lose();
        assert_eq!(
            driver.run_until_connect(),
            ConnectTarget::Resume(RESUME_URL.to_owned())
        );

        let mut driver = active();
        assert_eq!(driver.shard.request_reconnect(driver.now, true), Ok(()));
        driver.drain();
        let events = driver.take_events();
        assert!(!reconnecting(&events).4);
        assert_eq!(
            close_codes(&events),
            vec![CLOSE_CODE_KEEP_SESSION],
            "never 1000 here"
        );
        driver.lose();
        assert_eq!(driver.run_until_connect(), ConnectTarget::Main);
    }

    #[test]
    fn server_close_crossing_our_close_is_honoured() {
        let mut driver = active();
        driver.payload(7, None, None, b"{}");
        driver.take_events();
        // Our 4000 crossed the server's "session timed out".
        driver.shard.close_received(driver.now, Some(4009), "");
        driver.drain();
        assert_eq!(driver.shard.session(), None);
        assert_eq!(driver.run_until_connect(), ConnectTarget::Main);
    }

    #[test]
    fn stale_driver_reports_are_ignored() {
        let mut driver = active();
        driver.lose();
        let state = driver.shard.state();
        driver.lose();
        driver.shard.close_received(driver.now, Some(4004), "late");
        driver.shard.connect_failed(driver.now, "late");
        driver.drain();
        assert_eq!(driver.shard.state(), state);
        assert_eq!(driver.shard.counters().reconnects_total(), 1);
        assert_eq!(driver.shard.counters().unexpected_inputs_total, 3);
    }

    /// xorshift64 for test inputs.
    fn next(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn garbage_inputs_never_panic() {
        let mut state = 0x1234_5678_9abc_def1_u64;
        let mut reached = ShardCounters::default();
        for _ in 0..3_000 {
            let len = (next(&mut state) % 600) as usize;
            let data: Vec<u8> = (0..len).map(|_| next(&mut state) as u8).collect();
            let counters = crate::shard::fuzz::run(&data);
            reached.ready_total += counters.ready_total.min(1);
            reached.resumed_total += counters.resumed_total.min(1);
            reached.commands_sent_total += counters.commands_sent_total.min(1);
            reached.zombie_connections_total += counters.zombie_connections_total.min(1);
            reached.identify_fallbacks_total += counters.identify_fallbacks_total.min(1);
            reached.resume_url_fallbacks_total += counters.resume_url_fallbacks_total.min(1);
        }
        // Random bytes must reach the interesting states, or the loop proves little.
        assert!(reached.ready_total > 500, "{reached:?}");
        assert!(reached.resumed_total > 100, "{reached:?}");
        assert!(reached.commands_sent_total > 50, "{reached:?}");
        assert!(reached.zombie_connections_total > 50, "{reached:?}");
        assert!(reached.resume_url_fallbacks_total > 50, "{reached:?}");
        // Random heads and bodies, in every state a session reaches.
        let mut driver = active();
        for _ in 0..20_000 {
            let op = next(&mut state) as u8 % 16;
            let len = (next(&mut state) % 64) as usize;
            let raw: Vec<u8> = (0..len).map(|_| next(&mut state) as u8).collect();
            let s = Some(next(&mut state) % 1_000);
            let t = ["READY", "RESUMED", "X"]
                .get((next(&mut state) % 4) as usize)
                .copied();
            driver.payload(op, s, t, &raw);
            match next(&mut state) % 8 {
                0 => driver.lose(),
                1 => {
                    let code = Some((next(&mut state) % 5_000) as u16);
                    driver.shard.close_received(driver.now, code, "");
                }
                2 => driver.open(),
                3 => driver.run_for(ms(next(&mut state) % 60_000)),
                _ => {}
            }
            driver.drain();
            assert!(
                driver.shard.state().is_terminal() || driver.shard.poll_timeout().is_some(),
                "live shard without a timer"
            );
            assert!(
                close_codes(&driver.take_events())
                    .iter()
                    .all(|&code| code == 4000),
                "only 4000 without a shutdown request"
            );
            if driver.shard.state().is_terminal() {
                driver = active();
            }
        }
    }

    #[test]
    fn fuzz_entry_reaches_deep_states() {
        // A scripted byte sequence: connect, hello, permit, ready, commands, timers.
        let script = [
            0, 10, 0, // seed, queue capacity, no saved session
            2, // open
            6, 0,  // hello 41250
            13, // permit
            11, 2, 0, 0, // READY (s = 2)
            14, 3, 0, 4, 0,  // three commands
            17, // heartbeats with ACKs
            1, 1, 1, // timers
            8, // server heartbeat request
            9, // op 7
            4, 0, // lost
            1, 2, 6, 0, // reconnect, open, hello
            16, 1, // shutdown, resumable
        ];
        let counters = crate::shard::fuzz::run(&script);
        assert_eq!(counters.ready_total, 1, "{counters:?}");
        crate::shard::fuzz_entry(&script);
    }
}
