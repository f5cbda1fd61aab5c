//! Stage: the world's events. One stream of events per guild partition, delivered to every
//! session that covers the guild, so that two shard sets of the same bot (zero-downtime
//! resharding) see the same events, as on Discord.
//!
//! The model:
//! - **Partitions.** The first session that identifies while no session is subscribed fixes
//!   the partition count `P` (its `num_shards`): partition `p` holds the guilds with
//!   `(id >> 22) % P == p`. With one shard set, partition `p` is exactly shard `p`'s guilds.
//!   `P` stays until every session is gone (ended or expired); the next identify picks again.
//! - **Timelines.** Each partition has one [`Timeline`]: the event generator that a session of
//!   shard `p` of `P` used to run on its own (same seed derivation, same `--mix`), now run once
//!   for the partition, with the synthetic clock at the event's index in the timeline rather than
//!   a session's sequence. Each event is rendered once: its `t` and `d` bytes are the same in
//!   every session that receives it; only the envelope's `s` is the session's own. Guild joins
//!   (GUILD_CREATE) and removals (GUILD_DELETE) are timeline events too.
//! - **Pace.** The steady stream starts when the first subscriber has sent its backfill and runs
//!   at `--rate` per partition (so per shard with one set); `--events-per-shard` caps it per
//!   partition, across the timeline's instances. Events are made lazily, when a subscriber pulls
//!   them, so `--rate 0` is "as fast as the subscriber pulls" and costs what it did before.
//! - **Subscribers.** A session subscribes at READY to every partition that can hold one of its
//!   guilds (`p ≡ shard (mod gcd(P, num_shards))`) and, for shard 0 of another count than `P`,
//!   to every partition (for the guild-less events). It takes, in timeline order, every event
//!   from its READY on whose guild it covers (`(id >> 22) % num_shards == shard`). Guild-less
//!   events (direct messages, which a partition makes only while it holds no guild, as a
//!   guild-less shard always did) go to shard `p` of sessions with `num_shards == P` and to shard 0
//!   of every other count: with one set that is today's stream of every shard, and with guilds on
//!   every partition it is Discord's rule (DMs on shard 0 only).
//! - **Identity.** Event `i` of timeline instance `n` has id `n << 40 | i`. A session's
//!   sequences map to ids in the ledger (`SessionLedger::event_runs`); with `--record-events`
//!   each event is listed once with its guild, `t` and content hash.
//! - **Memory.** A timeline keeps an event only while a subscriber still has to take it. With
//!   one subscriber (one shard set) nothing is kept: events go straight from the generator to
//!   the session. A subscriber that falls behind by more than `--replay-capacity` events or
//!   `--replay-bytes-max` bytes (a session disconnected for long while another takes the same
//!   timeline) is overrun: its session ends (`overrun`) and a resume gets op 9, as when Discord
//!   drops a session's buffer.
//!
//! Limits: with `--rate 0` two shard sets on one timeline pull it at the faster one's pace, and
//! the slower one is overrun once it lags by the replay limits; resharding wants a rate. A
//! session that takes several partitions takes each one's pending events in partition order
//! per turn (events of one guild are always in timeline order).
//!
//! Must not: do I/O, read the clock (callers pass `now`), or lock anything but the ledger, a
//! leaf. Lock order: `State` → `Session` → `Timeline` → ledger.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::config::MockConfig;
use crate::events::{self, EventMix, SessionEvents};
use crate::ledger::{EventRecord, LedgerWriter, event_content_hash};
use crate::rng::derive_seed;

/// Event ids are `instance << EVENT_INDEX_BITS | index`.
pub(crate) const EVENT_INDEX_BITS: u32 = 40;

/// First and largest chunk of an [`Arena`].
const ARENA_CHUNK_BYTES_MIN: usize = 16 * 1024;
const ARENA_CHUNK_BYTES_MAX: usize = 256 * 1024;

/// What every timeline is configured with (from [`MockConfig`], fixed at startup).
pub(crate) struct TimelineSettings {
    /// The run's seed (each timeline derives its own from it).
    pub seed: u64,
    pub rate_per_sec: f64,
    pub events_max: u64,
    pub guild_create_bytes: usize,
    pub retained_events_max: usize,
    pub retained_bytes_max: usize,
    pub mix: EventMix,
    /// `--record-events`: list every event in the ledger.
    pub record_events: bool,
}

impl TimelineSettings {
    pub fn from_config(config: &MockConfig, seed: u64) -> TimelineSettings {
        TimelineSettings {
            seed,
            rate_per_sec: config.rate,
            events_max: config.events_per_shard,
            guild_create_bytes: config.guild_create_bytes,
            retained_events_max: config.replay_capacity,
            retained_bytes_max: config.replay_bytes_max,
            mix: config.mix_or_default(),
            record_events: config.record_events,
        }
    }
}

/// The partitions and their timelines. Lives in `State`, under its lock.
#[derive(Default)]
pub(crate) struct World {
    partitions: Option<Partitions>,
    next_instance: u64,
    /// (partition, partition count) → steady events made so far, across instances: what
    /// `--events-per-shard` caps.
    steady_counters: HashMap<(u32, u32), Arc<AtomicU64>>,
}

struct Partitions {
    count: u32,
    timelines: Vec<Option<Arc<Mutex<Timeline>>>>,
}

impl World {
    /// Subscribes a session of `shard` of `total` that is ready now to the timelines that hold
    /// its events. `guilds` is the world's guild list.
    pub fn subscribe(
        &mut self,
        shard: u32,
        total: u32,
        guilds: &[u64],
        now: Instant,
        settings: &Arc<TimelineSettings>,
        ledger: &LedgerWriter,
    ) -> Vec<Subscription> {
        if self.partitions.as_ref().is_none_or(Partitions::is_idle) {
            self.partitions = Some(Partitions {
                count: total,
                timelines: (0..total).map(|_| None).collect(),
            });
        }
        let Some(partitions) = self.partitions.as_mut() else {
            unreachable!("set just above");
        };
        let count = partitions.count;
        let common = gcd(total, count);
        let mut subscriptions = Vec::new();
        for partition in 0..count {
            let holds_guilds = partition % common == shard % common;
            let guildless = if total == count {
                shard == partition
            } else {
                shard == 0
            };
            if !holds_guilds && !guildless {
                continue;
            }
            let coverage = Coverage {
                shard,
                total,
                all: total == count && shard == partition,
                guildless,
            };
            let slot = &mut partitions.timelines[partition as usize];
            let reusable = slot.as_ref().is_some_and(|t| lock(t).subscribers > 0);
            if !reusable {
                let instance = self.next_instance;
                self.next_instance += 1;
                let counter = self.steady_counters.entry((partition, count)).or_default();
                let partition_guilds = guilds
                    .iter()
                    .copied()
                    .filter(|g| events::shard_for_guild(*g, count) == partition)
                    .collect();
                // Derived as a session's own stream was ([shard, total, session number]), with
                // the timeline's number: the first set's streams come from the same seeds.
                let seed = derive_seed(
                    settings.seed,
                    &[u64::from(partition), u64::from(count), instance],
                );
                *slot = Some(Arc::new(Mutex::new(Timeline::new(
                    instance,
                    SessionEvents::new(seed, partition, partition_guilds, settings.mix.clone()),
                    Arc::clone(settings),
                    Arc::clone(counter),
                ))));
            }
            let Some(timeline) = slot.as_ref() else {
                unreachable!("set just above");
            };
            let index = lock(timeline).subscribe(now, ledger);
            subscriptions.push(Subscription {
                timeline: Arc::clone(timeline),
                slot: index,
                coverage,
            });
        }
        subscriptions
    }

    /// Appends guild joins (`true`) and removals to the timelines that hold those guilds.
    pub fn apply_guild_changes(&mut self, changes: &[(u64, bool)], ledger: &LedgerWriter) {
        let Some(partitions) = &self.partitions else {
            return;
        };
        for &(guild_id, added) in changes {
            let partition = events::shard_for_guild(guild_id, partitions.count);
            if let Some(timeline) = &partitions.timelines[partition as usize] {
                let mut timeline = lock(timeline);
                if added {
                    timeline.guild_added(guild_id, ledger);
                } else {
                    timeline.guild_removed(guild_id, ledger);
                }
            }
        }
    }
}

impl Partitions {
    fn is_idle(&self) -> bool {
        self.timelines
            .iter()
            .flatten()
            .all(|timeline| lock(timeline).subscribers == 0)
    }
}

/// A session's place in one timeline; dropping it unsubscribes.
pub(crate) struct Subscription {
    timeline: Arc<Mutex<Timeline>>,
    slot: usize,
    coverage: Coverage,
}

impl Subscription {
    /// Takes up to `max` events this session covers, oldest first, making new ones if they are
    /// due; `sink` gets each one.
    pub fn pull(
        &self,
        now: Instant,
        max: usize,
        ledger: &LedgerWriter,
        sink: impl FnMut(EventRef<'_>),
    ) -> Pulled {
        lock(&self.timeline).pull(self.slot, self.coverage, now, max, ledger, sink)
    }

    /// When this subscriber has something to take, or something becomes due.
    pub fn wake(&self) -> Wake {
        lock(&self.timeline).wake(self.slot)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        lock(&self.timeline).unsubscribe(self.slot);
    }
}

/// Which events of a timeline a session takes.
#[derive(Clone, Copy, Debug)]
struct Coverage {
    shard: u32,
    total: u32,
    /// Every event: the session is shard `p` of `P` for partition `p` (one shard set).
    all: bool,
    /// The guild-less events.
    guildless: bool,
}

impl Coverage {
    fn covers(self, guild_id: Option<u64>) -> bool {
        self.all
            || match guild_id {
                Some(guild_id) => events::shard_for_guild(guild_id, self.total) == self.shard,
                None => self.guildless,
            }
    }
}

/// One event handed to a session.
pub(crate) struct EventRef<'a> {
    pub id: u64,
    pub name: &'static str,
    pub redundant_update: bool,
    /// The whole dispatch with `"s":0`: `{"t":"NAME","s":0,"op":0,"d":…}`. Its `d` (the same
    /// bytes for every session) is [`EventRef::d`]; a session writes its own `s` in place of the
    /// `0` ([`EventRef::around_seq`]).
    pub dispatch: &'a [u8],
}

impl EventRef<'_> {
    /// The exact `d` bytes.
    #[cfg(test)]
    pub fn d(&self) -> &[u8] {
        &self.dispatch[d_range(self.name, self.dispatch)]
    }

    /// The dispatch before and after the placeholder `0` of `"s":0`.
    pub fn around_seq(&self) -> (&[u8], &[u8]) {
        let at = SEQ_AT + self.name.len();
        debug_assert_eq!(&self.dispatch[at - 4..=at], br#""s":0"#);
        (&self.dispatch[..at], &self.dispatch[at + 1..])
    }
}

/// Where the sequence is in `{"t":"NAME","s":0,…`, less the name's length.
const SEQ_AT: usize = br#"{"t":"","s":"#.len();

/// What one pull took.
#[derive(Debug, Default)]
pub(crate) struct Pulled {
    /// Events handed to the sink.
    pub delivered: usize,
    /// Of those, steady-stream events (not joins or removals): faults roll per one.
    pub steady: usize,
    /// The subscriber fell behind what the timeline keeps; it got nothing.
    pub overrun: bool,
}

/// When a subscriber needs to pull next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wake {
    Now,
    At(Instant),
    Never,
}

impl Wake {
    pub fn min(self, other: Wake) -> Wake {
        match (self, other) {
            (Wake::Now, _) | (_, Wake::Now) => Wake::Now,
            (Wake::At(a), Wake::At(b)) => Wake::At(a.min(b)),
            (Wake::At(a), Wake::Never) | (Wake::Never, Wake::At(a)) => Wake::At(a),
            (Wake::Never, Wake::Never) => Wake::Never,
        }
    }
}

/// A kept event (only while some subscriber has yet to take it).
struct Event {
    name: &'static str,
    guild_id: Option<u64>,
    redundant_update: bool,
    steady: bool,
    /// The whole dispatch with `"s":0` (see [`EventRef::dispatch`]).
    dispatch: Bytes,
}

/// An event just rendered into a timeline's `scratch`.
struct Made {
    index: u64,
    name: &'static str,
    guild_id: Option<u64>,
    redundant_update: bool,
    /// Where `d` is in `scratch`.
    d: Range<usize>,
}

/// One partition's events, made once, taken by every subscriber.
pub(crate) struct Timeline {
    instance: u64,
    generator: SessionEvents,
    settings: Arc<TimelineSettings>,
    steady_counter: Arc<AtomicU64>,
    /// When the steady stream began (the first pull), and how many steady events it made or
    /// skipped since: the rate schedule.
    started: Option<Instant>,
    steady_scheduled: u64,
    /// Index of the next event; `retained` holds the indices just before it.
    head: u64,
    retained: VecDeque<Event>,
    retained_bytes: usize,
    /// Per subscriber slot: the index of the next event it takes (`None`: a free slot).
    cursors: Vec<Option<u64>>,
    subscribers: usize,
    arena: Arena,
    scratch: Vec<u8>,
    records: Vec<EventRecord>,
}

impl Timeline {
    fn new(
        instance: u64,
        generator: SessionEvents,
        settings: Arc<TimelineSettings>,
        steady_counter: Arc<AtomicU64>,
    ) -> Timeline {
        Timeline {
            instance,
            generator,
            settings,
            steady_counter,
            started: None,
            steady_scheduled: 0,
            head: 0,
            retained: VecDeque::new(),
            retained_bytes: 0,
            cursors: Vec::new(),
            subscribers: 0,
            arena: Arena::new(),
            scratch: Vec::with_capacity(4096),
            records: Vec::new(),
        }
    }

    /// A new subscriber, ready `now`: its first event is the first one made after now. Steady
    /// events already due (not yet made because nobody pulled) happened before it: they are made
    /// and kept for the other subscribers.
    fn subscribe(&mut self, now: Instant, ledger: &LedgerWriter) -> usize {
        self.catch_up(now);
        ledger.record_events(&mut self.records);
        let slot = match self.cursors.iter().position(Option::is_none) {
            Some(slot) => slot,
            None => {
                self.cursors.push(None);
                self.cursors.len() - 1
            }
        };
        self.cursors[slot] = Some(self.head);
        self.subscribers += 1;
        slot
    }

    fn unsubscribe(&mut self, slot: usize) {
        if self.cursors.get_mut(slot).and_then(Option::take).is_some() {
            self.subscribers -= 1;
            self.trim();
        }
    }

    fn pull(
        &mut self,
        slot: usize,
        coverage: Coverage,
        now: Instant,
        max: usize,
        ledger: &LedgerWriter,
        mut sink: impl FnMut(EventRef<'_>),
    ) -> Pulled {
        let mut pulled = Pulled::default();
        let Some(mut cursor) = self.cursors.get(slot).copied().flatten() else {
            return pulled;
        };
        let oldest = self.head - self.retained.len() as u64;
        if cursor < oldest {
            pulled.overrun = true;
            return pulled;
        }
        // Kept events first (made by another subscriber's pull, or joins and removals).
        while pulled.delivered < max && cursor < self.head {
            let event = &self.retained[(cursor - oldest) as usize];
            if coverage.covers(event.guild_id) {
                sink(EventRef {
                    id: self.event_id(cursor),
                    name: event.name,
                    redundant_update: event.redundant_update,
                    dispatch: &event.dispatch,
                });
                pulled.delivered += 1;
                pulled.steady += usize::from(event.steady);
            }
            cursor += 1;
        }
        // Then new ones, if this subscriber is at the head and they are due. With no other
        // subscriber they are not kept: they go straight to this one.
        if cursor == self.head && pulled.delivered < max {
            let due = self.due(now, (max - pulled.delivered) as u64);
            let keep = self.subscribers > 1;
            for _ in 0..due {
                if !self.claim_steady() {
                    break;
                }
                let made = self.make_steady();
                if coverage.covers(made.guild_id) {
                    sink(EventRef {
                        id: self.event_id(made.index),
                        name: made.name,
                        redundant_update: made.redundant_update,
                        dispatch: &self.scratch,
                    });
                    pulled.delivered += 1;
                    pulled.steady += 1;
                }
                if keep {
                    self.keep(&made, true);
                }
            }
            cursor = self.head;
        }
        self.cursors[slot] = Some(cursor);
        self.trim();
        ledger.record_events(&mut self.records);
        pulled
    }

    fn wake(&self, slot: usize) -> Wake {
        let Some(cursor) = self.cursors.get(slot).copied().flatten() else {
            return Wake::Never;
        };
        let rate = self.settings.rate_per_sec;
        if cursor < self.head {
            return Wake::Now;
        }
        if self.exhausted() {
            return Wake::Never;
        }
        match self.started {
            Some(started) if rate > 0.0 => {
                let at_secs = (self.steady_scheduled + 1) as f64 / rate;
                Wake::At(started + Duration::from_secs_f64(at_secs))
            }
            // Unlimited, or not started yet (the first pull starts the clock).
            _ => Wake::Now,
        }
    }

    fn guild_added(&mut self, guild_id: u64, ledger: &LedgerWriter) {
        self.generator.add_guild(guild_id);
        self.scratch.clear();
        let target_bytes = self.settings.guild_create_bytes;
        self.generator
            .guild_create(guild_id, 0, target_bytes, &mut self.scratch);
        self.push_now("GUILD_CREATE", guild_id, ledger);
    }

    fn guild_removed(&mut self, guild_id: u64, ledger: &LedgerWriter) {
        self.scratch.clear();
        self.generator
            .guild_delete(guild_id, false, 0, &mut self.scratch);
        self.push_now("GUILD_DELETE", guild_id, ledger);
        self.generator.remove_guild(guild_id);
    }

    /// Appends the event in `scratch` (a join or a removal) at the head, for every subscriber.
    fn push_now(&mut self, name: &'static str, guild_id: u64, ledger: &LedgerWriter) {
        let made = Made {
            index: self.head,
            name,
            guild_id: Some(guild_id),
            redundant_update: false,
            d: d_range(name, &self.scratch),
        };
        self.head += 1;
        self.record(&made);
        if self.subscribers > 0 {
            self.keep(&made, false);
        }
        self.trim();
        ledger.record_events(&mut self.records);
    }

    /// How many steady events to make now for a subscriber with room for `room`.
    fn due(&mut self, now: Instant, room: u64) -> u64 {
        let started = *self.started.get_or_insert(now);
        let rate = self.settings.rate_per_sec;
        if rate <= 0.0 {
            return room;
        }
        let owed = (now.duration_since(started).as_secs_f64() * rate) as u64;
        room.min(owed.saturating_sub(self.steady_scheduled))
    }

    /// Makes the steady events that came due while nobody pulled, keeping them for the
    /// subscribers that have yet to take them (at most what the limits keep; older ones are
    /// skipped: those subscribers are overrun either way).
    fn catch_up(&mut self, now: Instant) {
        let rate = self.settings.rate_per_sec;
        let (Some(started), true, true) = (self.started, rate > 0.0, self.subscribers > 0) else {
            return;
        };
        let owed = ((now.duration_since(started).as_secs_f64() * rate) as u64)
            .saturating_sub(self.steady_scheduled);
        let kept_max = self.settings.retained_events_max as u64;
        let skipped = owed.saturating_sub(kept_max);
        self.steady_scheduled += skipped;
        for _ in skipped..owed {
            if !self.claim_steady() {
                break;
            }
            let made = self.make_steady();
            self.keep(&made, true);
        }
        self.trim();
    }

    /// Counts one steady event against `--events-per-shard`; false when the cap is reached.
    fn claim_steady(&mut self) -> bool {
        let max = self.settings.events_max;
        if max > 0 {
            let taken = self.steady_counter.fetch_add(1, Ordering::AcqRel);
            if taken >= max {
                self.steady_counter.fetch_sub(1, Ordering::AcqRel);
                return false;
            }
        }
        true
    }

    fn exhausted(&self) -> bool {
        let max = self.settings.events_max;
        max > 0 && self.steady_counter.load(Ordering::Acquire) >= max
    }

    /// Renders the next steady event into `scratch`.
    fn make_steady(&mut self) -> Made {
        let index = self.head;
        self.head += 1;
        self.steady_scheduled += 1;
        self.scratch.clear();
        // The clock ticks per event of the timeline (index + 1, as a session's first steady
        // event never had sequence 0), and the envelope's `s` is a placeholder.
        let info = self
            .generator
            .next_dispatch_at(index + 1, 0, &mut self.scratch);
        let made = Made {
            index,
            name: info.name,
            guild_id: self.generator.last_dispatch_guild(),
            redundant_update: info.redundant_update,
            d: d_range(info.name, &self.scratch),
        };
        self.record(&made);
        made
    }

    fn record(&mut self, made: &Made) {
        if self.settings.record_events {
            self.records.push(EventRecord {
                id: self.event_id(made.index),
                guild_id: made.guild_id,
                t: made.name.to_owned(),
                hash: event_content_hash(made.name.as_bytes(), &self.scratch[made.d.clone()]),
                redundant_update: made.redundant_update,
            });
        }
    }

    /// Keeps the event just made (in `scratch`) for the subscribers that have yet to take it.
    fn keep(&mut self, made: &Made, steady: bool) {
        let dispatch = self.arena.copy(&self.scratch);
        self.retained_bytes += dispatch.len();
        self.retained.push_back(Event {
            name: made.name,
            guild_id: made.guild_id,
            redundant_update: made.redundant_update,
            steady,
            dispatch,
        });
    }

    /// Forgets the events every subscriber took, then the oldest beyond the limits (whoever had
    /// yet to take them is overrun).
    fn trim(&mut self) {
        let oldest_needed = self
            .cursors
            .iter()
            .flatten()
            .copied()
            .min()
            .unwrap_or(self.head);
        let mut oldest = self.head - self.retained.len() as u64;
        let settings = &self.settings;
        while let Some(front) = self.retained.front() {
            let over = self.retained.len() > settings.retained_events_max
                || (self.retained_bytes > settings.retained_bytes_max && self.retained.len() > 1);
            if oldest >= oldest_needed && !over {
                break;
            }
            self.retained_bytes -= front.dispatch.len();
            self.retained.pop_front();
            oldest += 1;
        }
    }

    fn event_id(&self, index: u64) -> u64 {
        self.instance << EVENT_INDEX_BITS | index
    }
}

/// Where `d` is in a dispatch the generator wrote with sequence 0:
/// `{"t":"NAME","s":0,"op":0,"d":…}`.
fn d_range(name: &str, dispatch: &[u8]) -> Range<usize> {
    const BEFORE_NAME: usize = br#"{"t":""#.len();
    const AFTER_NAME: usize = br#"","s":0,"op":0,"d":"#.len();
    let start = BEFORE_NAME + name.len() + AFTER_NAME;
    debug_assert!(dispatch[..start].ends_with(br#","s":0,"op":0,"d":"#));
    debug_assert_eq!(dispatch.last(), Some(&b'}'));
    start..dispatch.len() - 1
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

fn lock(timeline: &Mutex<Timeline>) -> MutexGuard<'_, Timeline> {
    // Timeline updates are panic-free bookkeeping; a poisoned lock still holds usable data.
    timeline.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Bytes carved out of shared chunks: one allocation per many payloads, and a clone is a
/// reference count. Chunks grow with a busy owner and stay small for an idle one.
pub(crate) struct Arena {
    buf: BytesMut,
    chunk_bytes: usize,
}

impl Arena {
    pub fn new() -> Arena {
        Arena {
            buf: BytesMut::new(),
            chunk_bytes: ARENA_CHUNK_BYTES_MIN,
        }
    }

    /// Room for `len` more bytes: append them, then call [`Arena::finish`].
    #[inline]
    pub fn reserve(&mut self, len: usize) -> &mut BytesMut {
        if self.buf.capacity() - self.buf.len() < len {
            self.buf = BytesMut::with_capacity(self.chunk_bytes.max(len));
            self.chunk_bytes = (self.chunk_bytes * 2).min(ARENA_CHUNK_BYTES_MAX);
        }
        &mut self.buf
    }

    /// What was appended since the last `finish`.
    #[inline]
    pub fn finish(&mut self) -> Bytes {
        self.buf.split().freeze()
    }

    #[inline]
    pub fn copy(&mut self, bytes: &[u8]) -> Bytes {
        self.reserve(bytes.len()).extend_from_slice(bytes);
        self.finish()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::events::guild_ids;

    const SEED: u64 = 0x7133;

    fn settings(rate_per_sec: f64, retained_events_max: usize) -> Arc<TimelineSettings> {
        Arc::new(TimelineSettings {
            seed: SEED,
            rate_per_sec,
            events_max: 0,
            guild_create_bytes: 0,
            retained_events_max,
            retained_bytes_max: 64 << 20,
            mix: EventMix::default(),
            record_events: true,
        })
    }

    /// What one session took: (event id, `t`, `d`).
    type Taken = Vec<(u64, &'static str, Vec<u8>)>;
    /// Per event id, what one set got: (shard, `t`, `d`).
    type SetEvents = BTreeMap<u64, (u32, &'static str, Vec<u8>)>;

    fn pull(
        subscriptions: &[Subscription],
        now: Instant,
        max: usize,
        ledger: &LedgerWriter,
    ) -> Taken {
        let mut taken = Vec::new();
        for subscription in subscriptions {
            let pulled = subscription.pull(now, max, ledger, |event| {
                taken.push((event.id, event.name, event.d().to_vec()));
            });
            assert!(!pulled.overrun);
        }
        taken
    }

    fn guild_of(d: &[u8]) -> Option<u64> {
        let value: serde_json::Value = serde_json::from_slice(d).expect("d is JSON");
        value
            .get("guild_id")
            .map(|id| id.as_str().expect("string").parse().expect("snowflake"))
    }

    /// One shard set: every event goes straight through; nothing is kept, ids are consecutive.
    #[test]
    fn one_set_streams_without_keeping_anything() {
        let mut world = World::default();
        let ledger = LedgerWriter::new(SEED, 0, true);
        let guilds = guild_ids(SEED, 40);
        let now = Instant::now();
        let settings = settings(0.0, 4096);
        let shard1 = world.subscribe(1, 4, &guilds, now, &settings, &ledger);
        assert_eq!(shard1.len(), 1, "shard p of P takes partition p only");
        let taken = pull(&shard1, now, 500, &ledger);
        assert_eq!(taken.len(), 500);
        let first = taken[0].0;
        for (offset, (id, _, d)) in taken.iter().enumerate() {
            assert_eq!(*id, first + offset as u64);
            if let Some(guild) = guild_of(d) {
                assert_eq!(events::shard_for_guild(guild, 4), 1);
            }
        }
        assert!(lock(&shard1[0].timeline).retained.is_empty());
        assert_eq!(ledger.events().len(), 500);
    }

    /// Two sets (2 and 4 shards) on one world: each event reaches exactly one session of each
    /// set, with the same id and `d` bytes; DMs only shard 0 of each.
    #[test]
    fn two_sets_take_the_same_events() {
        let mut world = World::default();
        let ledger = LedgerWriter::new(SEED, 0, true);
        let guilds = guild_ids(SEED, 60);
        let now = Instant::now();
        let settings = settings(0.0, 1 << 20);
        let first: Vec<Vec<Subscription>> = (0..2)
            .map(|shard| world.subscribe(shard, 2, &guilds, now, &settings, &ledger))
            .collect();
        let second: Vec<Vec<Subscription>> = (0..4)
            .map(|shard| world.subscribe(shard, 4, &guilds, now, &settings, &ledger))
            .collect();
        // The 2-shard set made the partitions: a 4-shard session takes one of them.
        assert!(second.iter().all(|subscriptions| subscriptions.len() <= 2));
        let mut by_set: Vec<SetEvents> = Vec::new();
        for (total, set) in [(2, &first), (4, &second)] {
            let mut events = BTreeMap::new();
            // Several turns, sets interleaved, as connections would pull.
            for _ in 0..3 {
                for (shard, subscriptions) in set.iter().enumerate() {
                    for (id, name, d) in pull(subscriptions, now, 300, &ledger) {
                        match guild_of(&d) {
                            Some(guild) => {
                                assert_eq!(events::shard_for_guild(guild, total), shard as u32);
                            }
                            None => assert_eq!(shard, 0, "a DM on shard {shard} of {total}"),
                        }
                        assert!(events.insert(id, (shard as u32, name, d)).is_none());
                    }
                }
            }
            by_set.push(events);
        }
        let common: BTreeSet<u64> = by_set[0]
            .keys()
            .filter(|id| by_set[1].contains_key(id))
            .copied()
            .collect();
        assert!(common.len() > 1000, "{}", common.len());
        for id in &common {
            let (_, name_a, d_a) = &by_set[0][id];
            let (_, name_b, d_b) = &by_set[1][id];
            assert_eq!((name_a, d_a), (name_b, d_b), "event {id}");
        }
        let recorded: BTreeMap<u64, EventRecord> =
            ledger.events().into_iter().map(|e| (e.id, e)).collect();
        for (id, (_, name, d)) in &by_set[1] {
            let record = &recorded[id];
            assert_eq!(record.t, *name);
            assert_eq!(record.hash, event_content_hash(name.as_bytes(), d));
            assert_eq!(record.guild_id, guild_of(d));
        }
    }

    /// A session that becomes ready later takes the events made from then on; those due before
    /// are made for the others.
    #[test]
    fn a_late_subscriber_starts_at_its_ready() {
        let mut world = World::default();
        let ledger = LedgerWriter::new(SEED, 0, false);
        let guilds = guild_ids(SEED, 10);
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let settings = settings(100.0, 4096);
        let early = world.subscribe(0, 1, &guilds, start, &settings, &ledger);
        assert!(
            pull(&early, at(0), 1000, &ledger).is_empty(),
            "starts the clock"
        );
        let first = pull(&early, at(1000), 1000, &ledger);
        assert_eq!(first.len(), 100);
        let late = world.subscribe(0, 1, &guilds, at(1500), &settings, &ledger);
        assert_eq!(early[0].wake(), Wake::Now, "made at the late READY, kept");
        let late_taken = pull(&late, at(2000), 1000, &ledger);
        let early_taken = pull(&early, at(2000), 1000, &ledger);
        assert_eq!(early_taken.len(), 100);
        assert_eq!(late_taken.len(), 50);
        assert_eq!(late_taken[..], early_taken[50..]);
        assert_eq!(early_taken[0].0, first[99].0 + 1);
        assert_eq!(
            early[0].wake(),
            Wake::At(at(2010)),
            "the next one is due 10 ms later"
        );
        assert!(lock(&early[0].timeline).retained.is_empty());
    }

    /// A subscriber that falls behind the limits is overrun; the others go on.
    #[test]
    fn a_subscriber_left_behind_is_overrun() {
        let mut world = World::default();
        let ledger = LedgerWriter::new(SEED, 0, false);
        let guilds = guild_ids(SEED, 10);
        let now = Instant::now();
        let settings = settings(0.0, 300);
        let stuck = world.subscribe(0, 1, &guilds, now, &settings, &ledger);
        let busy = world.subscribe(0, 1, &guilds, now, &settings, &ledger);
        assert_eq!(pull(&busy, now, 250, &ledger).len(), 250);
        assert_eq!(pull(&stuck, now, 10, &ledger).len(), 10);
        assert_eq!(pull(&busy, now, 250, &ledger).len(), 250);
        let pulled = stuck[0].pull(now, 10, &ledger, |_| panic!("nothing for an overrun one"));
        assert!(pulled.overrun);
        assert_eq!(lock(&busy[0].timeline).retained.len(), 300);
        drop(stuck);
        assert!(
            lock(&busy[0].timeline).retained.is_empty(),
            "kept for nobody"
        );
    }

    /// Joins and removals reach every subscriber that covers the guild, once.
    #[test]
    fn guild_changes_reach_every_covering_subscriber() {
        let mut world = World::default();
        let ledger = LedgerWriter::new(SEED, 0, false);
        let guilds = guild_ids(SEED, 20);
        let now = Instant::now();
        // A stream so slow that nothing but the changes is due.
        let settings = settings(1e-9, 4096);
        let two: Vec<_> = (0..2)
            .map(|shard| world.subscribe(shard, 2, &guilds, now, &settings, &ledger))
            .collect();
        let three: Vec<_> = (0..3)
            .map(|shard| world.subscribe(shard, 3, &guilds, now, &settings, &ledger))
            .collect();
        let added = guild_ids(SEED + 1, 6);
        let changes: Vec<(u64, bool)> = added
            .iter()
            .map(|&g| (g, true))
            .chain([(guilds[0], false)])
            .collect();
        world.apply_guild_changes(&changes, &ledger);
        for (total, set) in [(2u32, &two), (3, &three)] {
            let mut joined = BTreeSet::new();
            let mut removed = BTreeSet::new();
            for (shard, subscriptions) in set.iter().enumerate() {
                for (_, name, d) in pull(subscriptions, now, 1000, &ledger) {
                    let guild = guild_of(&d)
                        .or_else(|| guild_of_id(&d))
                        .expect("a guild event");
                    assert_eq!(events::shard_for_guild(guild, total), shard as u32);
                    let new = match name {
                        "GUILD_CREATE" => joined.insert(guild),
                        "GUILD_DELETE" => removed.insert(guild),
                        other => panic!("{other}"),
                    };
                    assert!(new, "{name} {guild} twice in the {total}-shard set");
                }
            }
            assert_eq!(joined, added.iter().copied().collect());
            assert_eq!(removed, BTreeSet::from([guilds[0]]));
        }
    }

    fn guild_of_id(d: &[u8]) -> Option<u64> {
        let value: serde_json::Value = serde_json::from_slice(d).ok()?;
        value.get("id")?.as_str()?.parse().ok()
    }

    /// When every session is gone, the next identify partitions again with its own count.
    #[test]
    fn an_idle_world_partitions_again() {
        let mut world = World::default();
        let ledger = LedgerWriter::new(SEED, 0, false);
        let guilds = guild_ids(SEED, 10);
        let now = Instant::now();
        let settings = settings(0.0, 4096);
        let one = world.subscribe(0, 1, &guilds, now, &settings, &ledger);
        let four = world.subscribe(2, 4, &guilds, now, &settings, &ledger);
        assert_eq!(four.len(), 1, "partition 0 of 1 holds shard 2's guilds");
        drop((one, four));
        let four = world.subscribe(2, 4, &guilds, now, &settings, &ledger);
        assert_eq!(world.partitions.as_ref().map(|p| p.count), Some(4));
        assert_eq!(four.len(), 1);
        assert!(four[0].coverage.all);
    }
}
