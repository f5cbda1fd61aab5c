//! State shared by every connection: sessions, guilds, identify limits, the token.
//!
//! One `std::sync::Mutex` guards [`State`]; each [`Session`] has its own mutex so that the
//! hot path (producing and replaying dispatches) never touches the global lock. No lock is
//! ever held across an `.await`. Lock order: `State` before a `Session`; the guild change log
//! and the ledger are leaves (nothing is locked while holding them).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, watch};

use crate::config::MockConfig;
use crate::events::{self, DispatchInfo, SessionEvents};
use crate::ledger::{LedgerWriter, SessionDelta, SessionLedger};
use crate::rng::{Rng, derive_seed};

/// First and largest chunk of a session's dispatch arena.
const ARENA_CHUNK_BYTES_MIN: usize = 16 * 1024;
const ARENA_CHUNK_BYTES_MAX: usize = 256 * 1024;

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
    /// The guild set changed; produce joins and removals.
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
    /// Change `i` took the guild epoch from `i` to `i + 1`. A leaf lock.
    pub guild_changes: Mutex<Vec<GuildChange>>,
    /// Bumped on every guild change; sessions compare it with their own epoch.
    pub guild_epoch: AtomicU64,
    pub resume_down: watch::Sender<bool>,
    pub token_valid: AtomicBool,
}

pub(crate) struct GuildChange {
    pub guild_id: u64,
    pub added: bool,
}

pub(crate) struct State {
    pub guilds: Vec<u64>,
    pub sessions: HashMap<String, Arc<Mutex<Session>>>,
    pub next_session_number: u64,
    /// Identify bucket → when its last identify was accepted.
    pub identify_buckets: HashMap<u32, Instant>,
    pub remaining: u32,
    pub reset_at: Instant,
    /// (shard, total) → steady-stream dispatches produced, across sessions.
    pub stream_counters: HashMap<(u32, u32), Arc<AtomicU64>>,
    pub connections: HashMap<u64, ConnectionHandle>,
    pub next_connection_id: u64,
    /// Guild → when all its members were last requested (op 8, query "", limit 0).
    pub member_requests: HashMap<u64, Instant>,
    /// Per shard: connections seen so far, for per-connection fault seeds.
    pub connection_numbers: HashMap<u32, u64>,
}

pub(crate) struct ConnectionHandle {
    pub shard: Option<u32>,
    pub control: mpsc::UnboundedSender<Control>,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        // State updates are small and panic-free; a poisoned lock still holds consistent data.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends `control` to every live connection of `shard` (all of them if `None`); returns
    /// how many got it.
    pub fn broadcast(&self, shard: Option<u32>, control: impl Fn() -> Control) -> usize {
        let state = self.lock();
        state
            .connections
            .values()
            .filter(|c| shard.is_none() || c.shard == shard)
            .filter(|c| c.control.send(control()).is_ok())
            .count()
    }

    /// Changes the number of guilds, recording joins and removals for live sessions.
    pub fn set_guild_count(&self, count: usize) {
        let mut state = self.lock();
        let mut changes = self
            .guild_changes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let current = state.guilds.len();
        if count > current {
            let epoch = changes.len() as u64;
            let mut fresh =
                events::guild_ids(derive_seed(self.seed, &[GUILD_STREAM, epoch]), count);
            fresh.retain(|id| !state.guilds.contains(id));
            for guild_id in fresh.into_iter().take(count - current) {
                state.guilds.push(guild_id);
                changes.push(GuildChange {
                    guild_id,
                    added: true,
                });
            }
        } else {
            for guild_id in state.guilds.split_off(count) {
                changes.push(GuildChange {
                    guild_id,
                    added: false,
                });
            }
        }
        self.guild_epoch
            .store(changes.len() as u64, Ordering::Release);
        drop(changes);
        drop(state);
        self.broadcast(None, || Control::GuildsChanged);
    }
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
    pub events: SessionEvents,
    pub guilds: Vec<u64>,
    pub guild_epoch: u64,
    next_seq: u64,
    replay: VecDeque<Dispatch>,
    replay_capacity: usize,
    replay_bytes: usize,
    replay_bytes_max: usize,
    /// Dispatch bytes are carved out of shared chunks: one allocation per many dispatches,
    /// and a clone is a reference count.
    arena: BytesMut,
    arena_chunk_bytes: usize,
    pending_guild_creates: VecDeque<u64>,
    guild_create_bytes: usize,
    /// When the steady stream began and how much of it this session produced since.
    stream_started: Option<Instant>,
    stream_produced: u64,
    stream_counter: Arc<AtomicU64>,
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
    pub rate_per_sec: f64,
    pub events_per_shard: u64,
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
        guild_epoch: u64,
        config: &MockConfig,
        stream_counter: Arc<AtomicU64>,
    ) -> Session {
        let events = SessionEvents::new(seed, shard, guilds.clone(), config.mix_or_default());
        Session {
            id,
            shard,
            total,
            ledger_index,
            events,
            pending_guild_creates: guilds.iter().copied().collect(),
            guilds,
            guild_epoch,
            next_seq: 1,
            replay: VecDeque::new(),
            replay_capacity: config.replay_capacity,
            replay_bytes: 0,
            replay_bytes_max: config.replay_bytes_max,
            arena: BytesMut::new(),
            arena_chunk_bytes: ARENA_CHUNK_BYTES_MIN,
            guild_create_bytes: config.guild_create_bytes,
            stream_started: None,
            stream_produced: 0,
            stream_counter,
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

    /// Writes one dispatch with the next sequence through `write` and keeps it for replay.
    pub fn push(
        &mut self,
        write: impl FnOnce(&mut SessionEvents, u64, &mut Vec<u8>) -> DispatchInfo,
    ) -> Dispatch {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.scratch.clear();
        let info = write(&mut self.events, seq, &mut self.scratch);
        if self.arena.capacity() - self.arena.len() < self.scratch.len() {
            // Chunks grow with a busy session and stay small for an idle one.
            self.arena = BytesMut::with_capacity(self.arena_chunk_bytes.max(self.scratch.len()));
            self.arena_chunk_bytes = (self.arena_chunk_bytes * 2).min(ARENA_CHUNK_BYTES_MAX);
        }
        self.arena.extend_from_slice(&self.scratch);
        let bytes = self.arena.split().freeze();
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
        self.delta.record_type(info.name);
        if info.redundant_update {
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

    /// Steady-stream dispatches produced for this shard so far, across sessions.
    pub fn stream_count(&self) -> u64 {
        self.stream_counter.load(Ordering::Acquire)
    }

    /// Produces what is due: guild joins/removals, the initial GUILD_CREATEs, then the
    /// steady stream at the configured rate. Returns the dispatches and, for the steady-stream
    /// ones, how many there were (faults roll per steady-stream dispatch).
    pub fn produce(
        &mut self,
        now: Instant,
        shared: &Shared,
        budget: &Budget,
        out: &mut Vec<Dispatch>,
    ) -> usize {
        self.produce_guild_changes(shared, out);
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
        if !self.pending_guild_creates.is_empty() {
            return 0;
        }
        let started = *self.stream_started.get_or_insert(now);
        let mut due = budget.max_dispatches.saturating_sub(out.len()) as u64;
        if budget.rate_per_sec > 0.0 {
            let owed = (now.duration_since(started).as_secs_f64() * budget.rate_per_sec) as u64;
            due = due.min(owed.saturating_sub(self.stream_produced));
        }
        let mut produced = 0;
        for _ in 0..due {
            if budget.events_per_shard > 0 {
                let taken = self.stream_counter.fetch_add(1, Ordering::AcqRel);
                if taken >= budget.events_per_shard {
                    self.stream_counter.fetch_sub(1, Ordering::AcqRel);
                    break;
                }
            }
            out.push(self.push(|events, seq, buf| events.next_dispatch(seq, buf)));
            self.stream_produced += 1;
            produced += 1;
        }
        produced
    }

    /// When the next steady-stream dispatch is due, if the stream is rate limited and running.
    pub fn next_due(&self, rate_per_sec: f64) -> Option<Instant> {
        let started = self.stream_started?;
        if rate_per_sec <= 0.0 || !self.pending_guild_creates.is_empty() {
            return None;
        }
        let at_secs = (self.stream_produced + 1) as f64 / rate_per_sec;
        Some(started + Duration::from_secs_f64(at_secs))
    }

    /// Whether more can be produced right now without waiting (backfill or unlimited rate).
    pub fn has_backlog(&self) -> bool {
        !self.pending_guild_creates.is_empty()
    }

    fn produce_guild_changes(&mut self, shared: &Shared, out: &mut Vec<Dispatch>) {
        let epoch = shared.guild_epoch.load(Ordering::Acquire);
        if epoch == self.guild_epoch {
            return;
        }
        let changes: Vec<(u64, bool)> = {
            let log = shared
                .guild_changes
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            log[self.guild_epoch as usize..epoch as usize]
                .iter()
                .filter(|c| events::shard_for_guild(c.guild_id, self.total) == self.shard)
                .map(|c| (c.guild_id, c.added))
                .collect()
        };
        self.guild_epoch = epoch;
        for (guild_id, added) in changes {
            let target_bytes = self.guild_create_bytes;
            if added {
                self.guilds.push(guild_id);
                self.events.add_guild(guild_id);
                out.push(self.push(|events, seq, buf| {
                    events.guild_create(guild_id, seq, target_bytes, buf);
                    DispatchInfo {
                        name: "GUILD_CREATE",
                        redundant_update: false,
                    }
                }));
            } else {
                self.guilds.retain(|g| *g != guild_id);
                self.pending_guild_creates.retain(|g| *g != guild_id);
                out.push(self.push(|events, seq, buf| {
                    events.guild_delete(guild_id, false, seq, buf);
                    DispatchInfo {
                        name: "GUILD_DELETE",
                        redundant_update: false,
                    }
                }));
                self.events.remove_guild(guild_id);
            }
        }
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

    /// Ends the session for good (no resume), with a reason for the ledger.
    pub fn end(&mut self, reason: &str, ledger: &LedgerWriter) {
        if self.ended {
            return;
        }
        self.ended = true;
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
