//! The ledger: what the mock sent, per shard and session, and every protocol violation it saw.
//!
//! Tests compare it with what arrived at the other end (the fake bot, or a client's own
//! record). It is served as JSON at `GET /_mock/ledger`; the types are public and
//! `Deserialize` so tests in other crates parse it into the same structs.
//!
//! Updates come from connection tasks in batches (not per dispatch) through [`LedgerWriter`].
//!
//! Event identity: every event of the world (what a guild's timeline or the direct messages
//! produce, and guild joins and removals, see `timeline.rs`) has one id, whichever sessions it
//! reaches. A session's [`SessionLedger::event_runs`] maps its sequences to those ids; the events
//! themselves (id, guild, `t`, content hash) are listed apart, only with `--record-events`
//! ([`EventRecord`], `GET /_mock/events`), because a benchmark makes millions of them.
//! Dispatches that belong to one session only (READY, the GUILD_CREATE backfill, RESUMED,
//! GUILD_MEMBERS_CHUNK, RATE_LIMITED) have no event id.

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
    /// Times a connection went live for a `[shard_id, num_shards]` while another connection was
    /// still live for the same pair: two hosts running one shard. Summed over
    /// [`ShardLedger::overlapping_sessions`], which says exactly what counts.
    #[serde(default)]
    pub overlapping_sessions: u64,
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
    /// Overlaps on this shard id: times a connection went live for `[shard_id, num_shards]`
    /// while another connection was live for the same pair (one count per connection going
    /// live, however many others were live).
    ///
    /// A connection is live from the moment its IDENTIFY is accepted or its RESUME succeeds
    /// until it lets go of the session: it ends (the client closes or drops TCP, the mock
    /// closes or drops it, a read or write error), op 9 `d: false` or an overrun ends its
    /// session (the connection may stay open, but runs no shard), or a RESUME of its session on
    /// another connection takes it over. A zombie connection (a `zombie` fault) stays live until
    /// it ends. So an overlap is two different sessions live at once for one `[shard_id,
    /// num_shards]`, or one session live on two connections at once. The mock never lets the
    /// latter happen: as Discord does, a RESUME that takes over a session whose old connection
    /// is still open drops that connection, and the old connection stops being live at the
    /// instant the new one becomes live (its TCP drop follows a moment later). That hand-over is
    /// not an overlap. A connection whose client closed is live until the mock has read the
    /// close frame (or seen TCP end): a client that waits for the mock's close reply before the
    /// next session starts never overlaps.
    ///
    /// Sessions of one shard id with different `num_shards` never overlap each other (a
    /// zero-downtime reshard runs both shard sets at once); overlaps within either set are
    /// counted here alike, under the shard id.
    #[serde(default)]
    pub overlapping_sessions: u64,
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
    /// Which world events this session's sequences carried, run-length encoded: each
    /// `[first_seq, first_event_id, count]` says that sequences `first_seq..first_seq + count`
    /// carried events `first_event_id..first_event_id + count`. Sequences in no run carried a
    /// dispatch of this session only (READY, the backfill GUILD_CREATEs, RESUMED, member chunks).
    /// With one shard set a session's stream is one run (split only by RESUMED or a member
    /// chunk); with two sets a session that covers part of a timeline has one run per stretch
    /// of consecutive events it took.
    #[serde(default)]
    pub event_runs: Vec<[u64; 3]>,
    /// Why the session ended, if it did: `invalid_session`, `client_close_1000`, `close_4009`,
    /// `close_4011` (guilds were added past `--max-guilds-per-shard`), `token_reset`, `expired`,
    /// `overrun` (it fell further behind its timeline than the replay limits allow).
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

    /// The world event id sequence `seq` carried, if it carried one (see `event_runs`).
    pub fn event_id(&self, seq: u64) -> Option<u64> {
        let at = self.event_runs.partition_point(|run| run[0] <= seq);
        let [first_seq, first_id, count] = *self.event_runs.get(at.checked_sub(1)?)?;
        (seq < first_seq + count).then(|| first_id + (seq - first_seq))
    }

    /// Every `(seq, event_id)` of the session, in sequence order.
    pub fn event_ids(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.event_runs
            .iter()
            .flat_map(|&[seq, id, count]| (0..count).map(move |i| (seq + i, id + i)))
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

/// One world event, as `GET /_mock/events` lists it (only with `--record-events`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct EventRecord {
    /// The id every session's [`SessionLedger::event_runs`] names it by: the timeline's number
    /// times 2^40 plus the event's index in that timeline.
    pub id: u64,
    /// The guild it belongs to; `None` for a direct message.
    pub guild_id: Option<u64>,
    /// The event name, the envelope's `t`.
    pub t: String,
    /// [`event_content_hash`] of `t` and the `d` bytes every session received.
    pub hash: u64,
    /// A MESSAGE_UPDATE that repeats the content and `edited_timestamp` last sent for its
    /// message (an unfurl): a deduplicating client may drop it.
    pub redundant_update: bool,
}

/// 64-bit FNV-1a over `t`, a newline and `d`: the content hash of [`EventRecord::hash`]. `d` is
/// the exact bytes of the dispatch's `d` value as sent, so a client computes the same hash from
/// the raw payload without parsing it.
pub fn event_content_hash(t: &[u8], d: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    t.iter()
        .chain(b"\n")
        .chain(d)
        .fold(OFFSET_BASIS, |hash, &byte| {
            (hash ^ u64::from(byte)).wrapping_mul(PRIME)
        })
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
    /// Whether world events are recorded (`--record-events`).
    record_events: bool,
    events: Mutex<Vec<EventRecord>>,
}

impl LedgerWriter {
    pub fn new(seed: u64, commands_max: usize, record_events: bool) -> LedgerWriter {
        LedgerWriter {
            started: Instant::now(),
            commands_max,
            inner: Mutex::new(Ledger {
                seed,
                ..Ledger::default()
            }),
            record_events,
            events: Mutex::new(Vec::new()),
        }
    }

    /// Whether world events are recorded ([`LedgerWriter::record_events`] is a no-op if not).
    pub fn records_events(&self) -> bool {
        self.record_events
    }

    /// Appends world events (a batch, drained from `records`).
    pub fn record_events(&self, records: &mut Vec<EventRecord>) {
        if records.is_empty() {
            return;
        }
        self.events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .append(records);
    }

    /// Every world event recorded so far, in the order they were made (per timeline, by index).
    pub fn events(&self) -> Vec<EventRecord> {
        self.events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
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
    /// New `[first_seq, first_event_id, count]` runs (see `SessionLedger::event_runs`).
    pub event_runs: Vec<[u64; 3]>,
}

impl SessionDelta {
    /// Notes that `seq` carried world event `event_id`.
    pub(crate) fn record_event(&mut self, seq: u64, event_id: u64) {
        if let Some(run) = self.event_runs.last_mut()
            && run[0] + run[2] == seq
            && run[1] + run[2] == event_id
        {
            run[2] += 1;
            return;
        }
        self.event_runs.push([seq, event_id, 1]);
    }

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
        let mut runs = self.event_runs.drain(..);
        if let Some(first) = runs.next() {
            match session.event_runs.last_mut() {
                Some(last) if last[0] + last[2] == first[0] && last[1] + last[2] == first[1] => {
                    last[2] += first[2];
                }
                _ => session.event_runs.push(first),
            }
        }
        session.event_runs.extend(runs);
        self.new_dispatches = 0;
        self.frames_sent = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_hash_is_fnv1a_64_of_t_newline_d() {
        assert_eq!(
            event_content_hash(b"MESSAGE_CREATE", br#"{"id":"1"}"#),
            0xd1ff_18ec_65a2_b2b9
        );
        let fnv = |bytes: &[u8]| {
            bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            })
        };
        // FNV-1a 64 of "a", the published test vector.
        assert_eq!(fnv(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(event_content_hash(b"T", b"{}"), fnv(b"T\n{}"));
    }

    #[test]
    fn a_ledger_from_before_overlapping_sessions_still_parses() {
        let mut ledger = Ledger::default();
        ledger.shards.insert(0, ShardLedger::default());
        let mut json = serde_json::to_value(&ledger).expect("a ledger serialises");
        json.as_object_mut()
            .and_then(|l| l.remove("overlapping_sessions"))
            .expect("the total is there");
        json["shards"]["0"]
            .as_object_mut()
            .and_then(|s| s.remove("overlapping_sessions"))
            .expect("the per-shard count is there");
        let parsed: Ledger = serde_json::from_value(json).expect("an older ledger parses");
        assert_eq!(parsed, ledger);
    }

    #[test]
    fn event_runs_merge_across_flushes_and_map_seqs_to_ids() {
        let mut delta = SessionDelta::default();
        let mut session = SessionLedger::default();
        for (seq, id) in [(3, 100), (4, 101), (5, 102)] {
            delta.record_event(seq, id);
        }
        delta.apply(&mut session);
        // The next flush continues the run; a RESUMED (seq 8, no event) splits it.
        for (seq, id) in [(6, 103), (7, 104), (9, 105), (10, 107)] {
            delta.record_event(seq, id);
        }
        delta.apply(&mut session);
        assert_eq!(
            session.event_runs,
            vec![[3, 100, 5], [9, 105, 1], [10, 107, 1]]
        );
        assert_eq!(session.event_id(2), None);
        assert_eq!(session.event_id(3), Some(100));
        assert_eq!(session.event_id(7), Some(104));
        assert_eq!(session.event_id(8), None);
        assert_eq!(session.event_id(10), Some(107));
        assert_eq!(session.event_id(11), None);
        assert_eq!(
            session.event_ids().collect::<Vec<_>>(),
            vec![
                (3, 100),
                (4, 101),
                (5, 102),
                (6, 103),
                (7, 104),
                (9, 105),
                (10, 107)
            ]
        );
    }
}
