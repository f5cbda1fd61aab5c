//! State shared by every connection: sessions, guilds, the world's event timelines, identify
//! limits, the token.
//!
//! One `std::sync::Mutex` guards [`State`]; each [`Session`] has its own mutex so that the
//! hot path (producing and replaying dispatches) never touches the global lock, and each
//! timeline (`timeline.rs`) its own, taken by the sessions subscribed to it. No lock is ever
//! held across an `.await`. Lock order: `State` → `Session` → `Timeline` → ledger (a leaf).
//!
//! A session owns its sequence numbers, replay buffer and ledger counters; its events come from
//! the timelines it subscribed to at READY (steady stream, guild joins and removals), except the
//! dispatches that are its own: READY, the GUILD_CREATE backfill, RESUMED and answers to
//! commands.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use crate::config::MockConfig;
use crate::events::{self, DispatchInfo, SessionEvents};
use crate::ledger::{LedgerWriter, SessionDelta, SessionLedger};
use crate::rng::{Rng, derive_seed};
use crate::timeline::{Arena, EventRef, Subscription, TimelineSettings, Wake, World};

/// Sub-seed stream of guild ids (`derive_seed(seed, &[GUILD_STREAM, epoch])`).
pub(crate) const GUILD_STREAM: u64 = 0x0067_7569_6c64;

/// What a test or operator can ask a live connection to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// op 7 Reconnect.
    Reconnect,
    /// op 9 with `d: true`.
    InvalidSessionResumable,
    /// op 9 with `d: false`: the session ends.
    InvalidSession,
    /// A close frame with this code (4003/4007/4009 also end the session).
    Close(u16),
    /// The TCP connection ends without a close frame.
    Drop,
    /// Nothing more is written or answered; dispatches still count as sent.
    Zombie,
    /// The dispatch stream pauses for `--stall-ms`; heartbeats are still acknowledged.
    Stall,
    /// A frame that does not decode (bad compressed data, or invalid JSON).
    Corrupt,
    /// The next dispatch (not a MESSAGE_CREATE or MESSAGE_UPDATE) is cut short inside `d`, then
    /// compressed as usual: it decodes, its head reads fine, and the rest is not JSON (a broken
    /// gateway's payload). Its sequence is listed in
    /// [`crate::ledger::SessionLedger::truncated_seqs`].
    Truncated,
    /// The server asks for a heartbeat (op 1).
    ServerHeartbeat,
}

impl Fault {
    /// The name used in the ledger and in `POST /_mock/fault`.
    pub fn name(self) -> String {
        match self {
            Fault::Reconnect => "reconnect".into(),
            Fault::InvalidSessionResumable => "invalid_session_resumable".into(),
            Fault::InvalidSession => "invalid_session".into(),
            Fault::Close(code) => format!("close_{code}"),
            Fault::Drop => "drop".into(),
            Fault::Zombie => "zombie".into(),
            Fault::Stall => "stall".into(),
            Fault::Corrupt => "corrupt".into(),
            Fault::Truncated => "truncated".into(),
            Fault::ServerHeartbeat => "server_heartbeat".into(),
        }
    }

    /// Parses a ledger name back (`close_4000` included).
    pub fn parse(name: &str) -> Option<Fault> {
        Some(match name {
            "reconnect" => Fault::Reconnect,
            "invalid_session_resumable" => Fault::InvalidSessionResumable,
            "invalid_session" => Fault::InvalidSession,
            "drop" => Fault::Drop,
            "zombie" => Fault::Zombie,
            "stall" => Fault::Stall,
            "corrupt" => Fault::Corrupt,
            "truncated" => Fault::Truncated,
            "server_heartbeat" => Fault::ServerHeartbeat,
            other => Fault::Close(other.strip_prefix("close_")?.parse().ok()?),
        })
    }
}

/// Messages to a connection task.
#[derive(Debug)]
pub(crate) enum Control {
    Fault(Fault),
    /// Close with this code (token reset: 4004).
    Close(u16),
    /// Another connection resumed this connection's session.
    Superseded,
    /// The guild set changed: joins and removals are waiting in the timelines.
    GuildsChanged,
}

/// Everything the connection tasks share.
pub(crate) struct Shared {
    pub config: MockConfig,
    pub seed: u64,
    pub ledger: LedgerWriter,
    pub main_ws_url: String,
    pub resume_ws_url: String,
    pub state: Mutex<State>,
    pub timeline_settings: Arc<TimelineSettings>,
    pub resume_down: watch::Sender<bool>,
    /// Milliseconds a RESUME waits before it is answered (a slow Discord); 0 by default.
    pub resume_delay_ms: AtomicU64,
    pub token_valid: AtomicBool,
}

pub(crate) struct State {
    pub guilds: Vec<u64>,
    /// Guilds added or removed so far (the seed of the next additions).
    pub guild_changes_total: u64,
    /// `/gateway/bot`'s `shards` when set at run time (`POST /_mock/recommended-shards`).
    pub recommended_shards: Option<u32>,
    /// The partitions and their event timelines.
    pub world: World,
    pub sessions: HashMap<String, Arc<Mutex<Session>>>,
    pub next_session_number: u64,
    /// Identify bucket → when its last identify was accepted.
    pub identify_buckets: HashMap<u32, Instant>,
    pub remaining: u32,
    pub reset_at: Instant,
    pub connections: HashMap<u64, ConnectionHandle>,
    /// `[shard, num_shards]` → the connections live for it, in the order they went live. A
    /// connection is live from the moment its IDENTIFY is accepted or its RESUME takes its
    /// session over until it lets go of that session: it ends (any side, any way), op 9
    /// `d: false` or an overrun takes its session, or another connection's RESUME takes it
    /// over. Only [`State::go_live`] adds to it and [`State::leave_live`] removes; an entry with
    /// two connections is an overlap (see [`crate::ledger::Ledger::overlapping_sessions`]).
    pub live: HashMap<[u32; 2], Vec<u64>>,
    pub next_connection_id: u64,
    /// Guild → when all its members were last requested (op 8, query "", limit 0).
    pub member_requests: HashMap<u64, Instant>,
    /// Per shard: connections seen so far, for per-connection fault seeds.
    pub connection_numbers: HashMap<u32, u64>,
}

pub(crate) struct ConnectionHandle {
    /// `[shard, num_shards]` once identified or resumed (kept after the connection lets go of
    /// its session; [`State::live`] says whether it is live).
    pub shard: Option<[u32; 2]>,
    pub control: mpsc::UnboundedSender<Control>,
}

impl State {
    /// Connection `id` went live for `shard_set` (`[shard, num_shards]`): its IDENTIFY was
    /// accepted, or its RESUME took its session over. If another connection is live for the
    /// same pair, that is an overlap and the ledger counts it (once, however many others are
    /// live). Called in the critical section that hands the session to `id`, so that of two
    /// connections going live at once one sees the other; a superseded connection must have
    /// left (see `leave_live`) before its successor goes live.
    pub fn go_live(&mut self, id: u64, shard_set: [u32; 2], ledger: &LedgerWriter) {
        self.leave_live(id);
        // The connection's task registered its handle before reading anything and removes it
        // only as it ends, so it is there; were it not, `live` must not name the connection
        // (nothing would take it out again).
        let Some(handle) = self.connections.get_mut(&id) else {
            return;
        };
        handle.shard = Some(shard_set);
        let live = self.live.entry(shard_set).or_default();
        let overlap = !live.is_empty();
        live.push(id);
        if overlap {
            let [shard, total] = shard_set;
            tracing::debug!(shard, total, live = live.len(), "overlapping sessions");
            ledger.with(|l| {
                l.overlapping_sessions += 1;
                l.shards.entry(shard).or_default().overlapping_sessions += 1;
            });
        }
    }

    /// Connection `id` is no longer live (it let go of its session, was superseded, or
    /// ended). A no-op if it was not live.
    pub fn leave_live(&mut self, id: u64) {
        let Some(shard_set) = self.connections.get(&id).and_then(|handle| handle.shard) else {
            return;
        };
        if let Some(live) = self.live.get_mut(&shard_set) {
            live.retain(|other| *other != id);
            if live.is_empty() {
                self.live.remove(&shard_set);
            }
        }
    }

    /// Forgets connection `id` as it ends, leaving [`State::live`] first.
    pub fn remove_connection(&mut self, id: u64) {
        self.leave_live(id);
        self.connections.remove(&id);
    }

    /// `/gateway/bot`'s `shards`: set at run time, else `--recommended-shards`, else one per
    /// 1000 guilds.
    pub fn recommended_shards(&self, config: &MockConfig) -> u32 {
        self.recommended_shards
            .unwrap_or_else(|| config.recommended_shards_for(self.guilds.len()))
    }
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        // State updates are small and panic-free; a poisoned lock still holds consistent data.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends `control` to every live connection of `shard` (all of them if `None`; only those
    /// of sessions with `total` shards if that is given); returns how many got it.
    pub fn broadcast(
        &self,
        shard: Option<u32>,
        total: Option<u32>,
        control: impl Fn() -> Control,
    ) -> usize {
        let state = self.lock();
        state
            .connections
            .values()
            .filter(|c| shard.is_none() || c.shard.map(|[id, _]| id) == shard)
            .filter(|c| total.is_none() || c.shard.map(|[_, total]| total) == total)
            .filter(|c| c.control.send(control()).is_ok())
            .count()
    }

    /// Changes the number of guilds: the timelines get the joins and removals (every session
    /// covering the guild receives them), and a live session left with more guilds than
    /// `--max-guilds-per-shard` is closed with 4011, as Discord closes a shard that must be
    /// resharded.
    pub fn set_guild_count(&self, count: usize) {
        let mut state = self.lock();
        let state = &mut *state;
        let current = state.guilds.len();
        let mut changes = Vec::new();
        if count > current {
            let epoch = state.guild_changes_total;
            let mut fresh =
                events::guild_ids(derive_seed(self.seed, &[GUILD_STREAM, epoch]), count);
            fresh.retain(|id| !state.guilds.contains(id));
            for guild_id in fresh.into_iter().take(count - current) {
                state.guilds.push(guild_id);
                changes.push((guild_id, true));
            }
        } else {
            for guild_id in state.guilds.split_off(count) {
                changes.push((guild_id, false));
            }
        }
        state.guild_changes_total += changes.len() as u64;
        state.world.apply_guild_changes(&changes, &self.ledger);
        let mut too_many = Vec::new();
        for session in state.sessions.values() {
            let mut session = lock_session(session);
            if session.apply_guild_changes(&changes) > self.config.max_guilds_per_shard
                && !session.ended
            {
                tracing::debug!(
                    shard = session.shard,
                    total = session.total,
                    guilds = session.guild_count,
                    "guilds added past the limit: 4011"
                );
                session.end("close_4011", &self.ledger);
                too_many.extend(session.owner);
            }
        }
        for owner in too_many {
            if let Some(handle) = state.connections.get(&owner) {
                // The connection may be ending already; the session is ended either way.
                let _ = handle.control.send(Control::Close(4011));
            }
        }
        for handle in state.connections.values() {
            let _ = handle.control.send(Control::GuildsChanged);
        }
    }
}

fn lock_session(session: &Mutex<Session>) -> MutexGuard<'_, Session> {
    // Session updates are panic-free bookkeeping; a poisoned lock still holds usable data.
    session.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A produced dispatch: its sequence, bytes and what it was.
#[derive(Clone)]
pub(crate) struct Dispatch {
    pub seq: u64,
    pub bytes: Bytes,
}

/// One gateway session. Owned by at most one connection at a time.
pub(crate) struct Session {
    pub id: String,
    pub shard: u32,
    pub total: u32,
    pub ledger_index: usize,
    /// Writes this session's own dispatches (READY, backfill, RESUMED, command answers).
    pub events: SessionEvents,
    /// Guilds this session covers now (READY's, plus joins, minus removals).
    pub guild_count: usize,
    /// Where its world events come from; empty once the session ended.
    subscriptions: Vec<Subscription>,
    next_seq: u64,
    replay: VecDeque<Dispatch>,
    replay_capacity: usize,
    replay_bytes: usize,
    replay_bytes_max: usize,
    /// Dispatch bytes are carved out of shared chunks: one allocation per many dispatches,
    /// and a clone is a reference count.
    arena: Arena,
    pending_guild_creates: VecDeque<u64>,
    guild_create_bytes: usize,
    /// Connection that owns the session, if any.
    pub owner: Option<u64>,
    pub disconnected_at: Option<Instant>,
    pub ended: bool,
    pub delta: SessionDelta,
    scratch: Vec<u8>,
}

/// Limits on one call to [`Session::produce`].
pub(crate) struct Budget {
    pub max_dispatches: usize,
}

/// What one call to [`Session::produce`] made.
#[derive(Debug, Default)]
pub(crate) struct Produced {
    /// Steady-stream dispatches among them (faults roll per one).
    pub steady: usize,
    /// The session fell too far behind a timeline and ended (`overrun`).
    pub overrun: bool,
}

impl Session {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: String,
        shard: u32,
        total: u32,
        ledger_index: usize,
        seed: u64,
        guilds: Vec<u64>,
        config: &MockConfig,
        subscriptions: Vec<Subscription>,
    ) -> Session {
        let events = SessionEvents::new(seed, shard, guilds.clone(), config.mix_or_default());
        Session {
            id,
            shard,
            total,
            ledger_index,
            events,
            guild_count: guilds.len(),
            subscriptions,
            pending_guild_creates: guilds.into_iter().collect(),
            next_seq: 1,
            replay: VecDeque::new(),
            replay_capacity: config.replay_capacity,
            replay_bytes: 0,
            replay_bytes_max: config.replay_bytes_max,
            arena: Arena::new(),
            guild_create_bytes: config.guild_create_bytes,
            owner: None,
            disconnected_at: None,
            ended: false,
            delta: SessionDelta::default(),
            scratch: Vec::with_capacity(4096),
        }
    }

    /// The last sequence produced (0 before READY).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Writes one of this session's own dispatches with the next sequence through `write` and
    /// keeps it for replay.
    pub fn push(
        &mut self,
        write: impl FnOnce(&mut SessionEvents, u64, &mut Vec<u8>) -> DispatchInfo,
    ) -> Dispatch {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.scratch.clear();
        let info = write(&mut self.events, seq, &mut self.scratch);
        let bytes = self.arena.copy(&self.scratch);
        self.keep(seq, bytes, info.name, info.redundant_update)
    }

    /// Writes a world event with the next sequence: the event's dispatch with this session's
    /// `s` (every other byte is the same in every session).
    fn push_event(&mut self, event: EventRef<'_>) -> Dispatch {
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut digits = itoa::Buffer::new();
        let seq_digits = digits.format(seq).as_bytes();
        let (before, after) = event.around_seq();
        let buf = self
            .arena
            .reserve(before.len() + seq_digits.len() + after.len());
        buf.extend_from_slice(before);
        buf.extend_from_slice(seq_digits);
        buf.extend_from_slice(after);
        let bytes = self.arena.finish();
        self.delta.record_event(seq, event.id);
        self.keep(seq, bytes, event.name, event.redundant_update)
    }

    fn keep(
        &mut self,
        seq: u64,
        bytes: Bytes,
        name: &'static str,
        redundant_update: bool,
    ) -> Dispatch {
        self.replay_bytes += bytes.len();
        let dispatch = Dispatch { seq, bytes };
        self.replay.push_back(dispatch.clone());
        while self.replay.len() > self.replay_capacity
            || (self.replay_bytes > self.replay_bytes_max && self.replay.len() > 1)
        {
            if let Some(evicted) = self.replay.pop_front() {
                self.replay_bytes -= evicted.bytes.len();
            }
        }
        self.delta.last_seq = seq;
        self.delta.new_dispatches += 1;
        self.delta.record_type(name);
        if redundant_update {
            self.delta.redundant_update_seqs.push(seq);
        }
        dispatch
    }

    /// Dispatches after `seq` for a resume, or `None` when some of them were forgotten or
    /// `seq` was never sent.
    pub fn replay_after(&self, seq: u64) -> Option<Vec<Dispatch>> {
        if seq > self.last_seq() {
            return None;
        }
        let oldest = self.replay.front().map_or(self.next_seq, |d| d.seq);
        if seq + 1 < oldest {
            return None;
        }
        let mut out = Vec::new();
        self.take_unsent(seq, &mut out);
        Some(out)
    }

    /// Appends the kept dispatches after `sent_upto` (produced but not yet written).
    pub fn take_unsent(&self, sent_upto: u64, out: &mut Vec<Dispatch>) {
        let Some(oldest) = self.replay.front().map(|d| d.seq) else {
            return;
        };
        // The replay buffer holds consecutive sequences, so the position is arithmetic.
        let start = usize::try_from((sent_upto + 1).saturating_sub(oldest)).unwrap_or(usize::MAX);
        out.extend(self.replay.iter().skip(start).cloned());
    }

    /// Whether dispatches after `sent_upto` exist.
    pub fn has_new_for(&self, sent_upto: u64) -> bool {
        self.last_seq() > sent_upto
    }

    /// Produces what is due: the initial GUILD_CREATEs, then what the timelines have for this
    /// session (guild joins and removals, the steady stream at the configured rate).
    pub fn produce(
        &mut self,
        now: Instant,
        shared: &Shared,
        budget: &Budget,
        out: &mut Vec<Dispatch>,
    ) -> Produced {
        while out.len() < budget.max_dispatches {
            let Some(guild_id) = self.pending_guild_creates.pop_front() else {
                break;
            };
            let target_bytes = self.guild_create_bytes;
            out.push(self.push(|events, seq, buf| {
                events.guild_create(guild_id, seq, target_bytes, buf);
                DispatchInfo {
                    name: "GUILD_CREATE",
                    redundant_update: false,
                }
            }));
        }
        let mut produced = Produced::default();
        if !self.pending_guild_creates.is_empty() {
            return produced;
        }
        let subscriptions = std::mem::take(&mut self.subscriptions);
        for subscription in &subscriptions {
            let room = budget.max_dispatches.saturating_sub(out.len());
            if room == 0 {
                break;
            }
            let pulled = subscription.pull(now, room, &shared.ledger, |event| {
                out.push(self.push_event(event));
            });
            produced.steady += pulled.steady;
            produced.overrun |= pulled.overrun;
        }
        self.subscriptions = subscriptions;
        if produced.overrun {
            self.end("overrun", &shared.ledger);
        }
        produced
    }

    /// When this session has something to produce: now (backfill, unsent or kept events, an
    /// unlimited stream), at the next steady event's time, or never (the stream is over).
    pub fn wake(&self, sent_upto: u64) -> Wake {
        if !self.pending_guild_creates.is_empty() || self.has_new_for(sent_upto) {
            return Wake::Now;
        }
        self.subscriptions
            .iter()
            .map(Subscription::wake)
            .fold(Wake::Never, Wake::min)
    }

    /// Applies guild joins (`true`) and removals to this session's own bookkeeping (the events
    /// themselves come from the timelines); returns how many guilds it covers now.
    pub fn apply_guild_changes(&mut self, changes: &[(u64, bool)]) -> usize {
        for &(guild_id, added) in changes {
            if events::shard_for_guild(guild_id, self.total) != self.shard {
                continue;
            }
            if added {
                self.guild_count += 1;
            } else {
                self.guild_count = self.guild_count.saturating_sub(1);
                self.pending_guild_creates.retain(|g| *g != guild_id);
            }
        }
        self.guild_count
    }

    /// Moves the counters accumulated since the last flush into the ledger.
    pub fn flush_ledger(&mut self, ledger: &LedgerWriter) {
        if self.delta.is_empty()
            && self.delta.redundant_update_seqs.is_empty()
            && self.delta.truncated_seqs.is_empty()
        {
            return;
        }
        let (shard, index) = (self.shard, self.ledger_index);
        let delta = &mut self.delta;
        ledger.with(|l| {
            l.dispatches_total += delta.new_dispatches;
            let session: &mut SessionLedger =
                &mut l.shards.entry(shard).or_default().sessions[index];
            delta.apply(session);
        });
    }

    /// Ends the session for good (no resume), with a reason for the ledger; it leaves its
    /// timelines.
    pub fn end(&mut self, reason: &str, ledger: &LedgerWriter) {
        if self.ended {
            return;
        }
        self.ended = true;
        self.subscriptions.clear();
        self.flush_ledger(ledger);
        let (shard, index) = (self.shard, self.ledger_index);
        ledger.with(|l| {
            l.shards.entry(shard).or_default().sessions[index].ended = Some(reason.to_owned());
        });
    }
}

/// A fresh session id: 32 lowercase hex digits, like Discord's.
pub(crate) fn session_id(rng: &mut Rng) -> String {
    format!("{:016x}{:016x}", rng.next_u64(), rng.next_u64())
}
