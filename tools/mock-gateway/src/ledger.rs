//! The ledger: what the mock sent, per shard and session, and every protocol violation it saw.
//!
//! Tests compare it with what arrived at the other end (the fake bot, or a client's own
//! record). It is served as JSON at `GET /_mock/ledger`; the types are public and
//! `Deserialize` so tests in other crates parse it into the same structs.
//!
//! Updates come from connection tasks in batches (not per dispatch) through [`LedgerWriter`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// A snapshot of the ledger.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Ledger {
    /// The seed this run used; the same seed replays the same traffic and faults.
    pub seed: u64,
    /// Per shard id (as a decimal string key, sorted numerically by the writer).
    pub shards: BTreeMap<u32, ShardLedger>,
    /// Every violation, in the order seen.
    pub violations: Vec<Violation>,
    /// How many times the token was reset (identify with `remaining` at 0).
    pub token_resets: u64,
    /// Totals over all shards.
    pub connections_total: u64,
    pub identifies_total: u64,
    pub resumes_total: u64,
    /// RESUMEs answered with op 9 `d: false`, including unknown session ids (which have no
    /// shard to be counted under).
    pub resumes_rejected_total: u64,
    pub dispatches_total: u64,
}

/// What happened on one shard id (across all shard totals it was used with).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ShardLedger {
    /// WebSocket connections opened for this shard (counted at IDENTIFY or RESUME).
    pub connections: u64,
    /// IDENTIFY payloads accepted (a session started).
    pub identifies: u64,
    /// RESUME payloads that resumed a live session.
    pub resumes: u64,
    /// Resumes that arrived on the `resume_gateway_url` listener.
    pub resumes_via_resume_url: u64,
    /// RESUME payloads answered with op 9 `d: false` (unknown, expired or ended session).
    pub resumes_rejected: u64,
    /// Heartbeats (op 1) received.
    pub heartbeats: u64,
    /// Sessions in the order they started.
    pub sessions: Vec<SessionLedger>,
    /// Gateway commands received (op 3, 4, 8, 31, 43), up to `--ledger-commands-max`.
    pub commands: Vec<CommandRecord>,
    /// Commands received per opcode (never capped).
    pub commands_by_op: BTreeMap<u8, u64>,
    /// Faults injected on this shard, by kind.
    pub faults: BTreeMap<String, u64>,
    /// Close codes the client closed with (`"none"` when it closed without a code, `"drop"`
    /// when the TCP connection ended without a close frame).
    pub client_closes: BTreeMap<String, u64>,
}

/// One gateway session: an IDENTIFY and everything sent under its session id.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SessionLedger {
    pub session_id: String,
    pub total_shards: u32,
    /// Sequence of the first and last dispatch sent in this session (READY is 1).
    pub first_seq: u64,
    pub last_seq: u64,
    /// Distinct dispatches sent (`last_seq - first_seq + 1` once anything was sent).
    pub dispatches: u64,
    /// Dispatch frames written including replays after resumes.
    pub frames_sent: u64,
    /// Dispatches by event name.
    pub by_type: BTreeMap<String, u64>,
    /// Sequences of MESSAGE_UPDATEs whose content was unchanged (embed unfurls): the ones a
    /// deduplicating client may drop. Real edits are not listed.
    pub redundant_update_seqs: Vec<u64>,
    /// Sequences of the dispatches a `truncated` fault cut short on the wire (the session
    /// still counts them as sent, and a resume from before one replays it whole).
    #[serde(default)]
    pub truncated_seqs: Vec<u64>,
    /// Why the session ended, if it did: `invalid_session`, `client_close_1000`, `close_4009`,
    /// `token_reset`, `expired`, `superseded`.
    pub ended: Option<String>,
}

impl SessionLedger {
    /// The sequences a forwarding client must deliver: every dispatch of the session but the
    /// redundant MESSAGE_UPDATEs (which a deduplicating client may drop) and the ones a
    /// `truncated` fault cut short (no bot could read them; one arrives whole only if the client
    /// resumed from before it).
    pub fn expected_seqs(&self) -> BTreeSet<u64> {
        let optional = self.optional_seqs();
        (self.first_seq..=self.last_seq)
            .filter(|seq| !optional.contains(seq))
            .collect()
    }

    /// The sequences a client may or may not deliver: the redundant MESSAGE_UPDATEs (a client
    /// whose dedup cache starts empty, after a restart, forwards some) and the cut payloads (one
    /// arrives whole after a resume from before it).
    pub fn optional_seqs(&self) -> BTreeSet<u64> {
        self.redundant_update_seqs
            .iter()
            .chain(&self.truncated_seqs)
            .copied()
            .collect()
    }

    /// Steady-stream dispatches (what `events_per_shard` counts): all but READY, RESUMED and
    /// GUILD_CREATE.
    pub fn steady_dispatches(&self) -> u64 {
        self.by_type
            .iter()
            .filter(|(name, _)| !matches!(name.as_str(), "READY" | "RESUMED" | "GUILD_CREATE"))
            .map(|(_, count)| count)
            .sum()
    }
}

/// A gateway command the client sent.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct CommandRecord {
    pub at_ms: u64,
    pub op: u8,
    /// The payload as received (`d` and all), parsed.
    pub payload: serde_json::Value,
}

/// A rule the client broke (or, for `zombie_undetected`, a failure it did not notice).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Violation {
    /// Milliseconds since the mock started.
    pub at_ms: u64,
    pub shard: Option<u32>,
    pub kind: ViolationKind,
    pub detail: String,
    /// The close code the mock answered with, if it closed the connection.
    pub close_code: Option<u16>,
}

/// Kinds of violation; serialised in snake_case.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum ViolationKind {
    /// IDENTIFY faster than one per `max_concurrency` bucket per window: op 9.
    IdentifyTooFast,
    /// IDENTIFY with `session_start_limit.remaining` at 0: the token is reset, close 4004.
    TokenReset,
    /// IDENTIFY or REST call with the wrong token: close 4004 / HTTP 401.
    AuthenticationFailed,
    /// More payloads than `--send-limit` per window: close 4008.
    SendRateExceeded,
    /// A payload over 4096 bytes: close 4002.
    PayloadTooLarge,
    /// A payload that is not JSON, or not an object with an integer `op`: close 4002.
    InvalidPayload,
    /// An opcode a client may not send: close 4001.
    UnknownOpcode,
    /// Anything but heartbeat, identify or resume before identifying: close 4003.
    NotAuthenticated,
    /// A second IDENTIFY on an identified connection: close 4005.
    AlreadyAuthenticated,
    /// Shard id out of range: close 4010.
    InvalidShard,
    /// Too many guilds for the shard count: close 4011.
    ShardingRequired,
    /// Unsupported `v=`: close 4012.
    InvalidApiVersion,
    /// Unknown intent bits: close 4013.
    InvalidIntents,
    /// Privileged intents not enabled for the application: close 4014.
    DisallowedIntents,
    /// Unsupported `encoding=` or `compress=`.
    InvalidQuery,
    /// No heartbeat within interval + grace: close 4009.
    HeartbeatTimeout,
    /// The client kept a zombie connection open for `--zombie-patience-intervals`.
    ZombieUndetected,
    /// The client did not reconnect within `--reconnect-grace-ms` of op 7 or op 9.
    IgnoredReconnect,
    /// Request Guild Members for all members of a guild more than once per 30 s.
    GuildMembersRateLimited,
    /// A malformed command payload (e.g. op 8 without guild_id).
    InvalidCommand,
}

/// Shared, lock-protected ledger with the mock's clock origin.
pub struct LedgerWriter {
    started: Instant,
    commands_max: usize,
    inner: Mutex<Ledger>,
}

impl LedgerWriter {
    pub fn new(seed: u64, commands_max: usize) -> LedgerWriter {
        LedgerWriter {
            started: Instant::now(),
            commands_max,
            inner: Mutex::new(Ledger {
                seed,
                ..Ledger::default()
            }),
        }
    }

    /// Milliseconds since the mock started.
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub fn snapshot(&self) -> Ledger {
        self.lock().clone()
    }

    /// Runs `f` with the ledger locked. Callers keep `f` short and never await inside.
    pub fn with<R>(&self, f: impl FnOnce(&mut Ledger) -> R) -> R {
        f(&mut self.lock())
    }

    pub fn violation(
        &self,
        shard: Option<u32>,
        kind: ViolationKind,
        detail: impl Into<String>,
        close_code: Option<u16>,
    ) {
        let at_ms = self.now_ms();
        let detail = detail.into();
        tracing::warn!(?shard, ?kind, %detail, ?close_code, "violation");
        self.lock().violations.push(Violation {
            at_ms,
            shard,
            kind,
            detail,
            close_code,
        });
    }

    pub fn command(&self, shard: u32, op: u8, payload: serde_json::Value) {
        let at_ms = self.now_ms();
        let commands_max = self.commands_max;
        self.with(|ledger| {
            let shard = ledger.shards.entry(shard).or_default();
            *shard.commands_by_op.entry(op).or_default() += 1;
            if shard.commands.len() < commands_max {
                shard.commands.push(CommandRecord { at_ms, op, payload });
            }
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ledger> {
        // A panic while holding the lock would be a bug in a ledger update (plain counter
        // arithmetic); the data is still the best record we have, so keep serving it.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Ledger {
    /// Violations of the given kind.
    pub fn violations_of(&self, kind: ViolationKind) -> usize {
        self.violations.iter().filter(|v| v.kind == kind).count()
    }

    /// All dispatches sent to a shard, summed over its sessions.
    pub fn dispatches_for(&self, shard: u32) -> u64 {
        self.shards
            .get(&shard)
            .map_or(0, |s| s.sessions.iter().map(|x| x.dispatches).sum())
    }
}

/// Counters a connection accumulates between flushes into its [`SessionLedger`].
#[derive(Default)]
pub(crate) struct SessionDelta {
    pub last_seq: u64,
    pub new_dispatches: u64,
    pub frames_sent: u64,
    pub by_type: Vec<(&'static str, u64)>,
    pub redundant_update_seqs: Vec<u64>,
    pub truncated_seqs: Vec<u64>,
}

impl SessionDelta {
    pub(crate) fn record_type(&mut self, name: &'static str) {
        match self.by_type.iter_mut().find(|(n, _)| *n == name) {
            Some((_, count)) => *count += 1,
            None => self.by_type.push((name, 1)),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.new_dispatches == 0 && self.frames_sent == 0
    }

    pub(crate) fn apply(&mut self, session: &mut SessionLedger) {
        if self.new_dispatches > 0 {
            if session.dispatches == 0 {
                session.first_seq = self.last_seq + 1 - self.new_dispatches;
            }
            session.last_seq = self.last_seq;
            session.dispatches += self.new_dispatches;
        }
        session.frames_sent += self.frames_sent;
        for (name, count) in self.by_type.drain(..) {
            *session.by_type.entry(name.to_owned()).or_default() += count;
        }
        session
            .redundant_update_seqs
            .append(&mut self.redundant_update_seqs);
        session.truncated_seqs.append(&mut self.truncated_seqs);
        self.new_dispatches = 0;
        self.frames_sent = 0;
    }
}
