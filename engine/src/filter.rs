//! Filter stage: payload → record. Per core, [`Filter::dispatch`] decides for each dispatch
//! whether it becomes a record and of which [`RecordKind`]: the event-type allow list, the
//! redundant MESSAGE_UPDATE drop, and the GUILD_CREATE classification; per shard, a
//! [`ShardFilter`] tracks the guilds of the session's READY and says when the shard is fully
//! ready.
//!
//! Must not: perform I/O, read the clock (callers pass `now`), parse a payload beyond the few
//! fields the decode stage's helpers read, or allocate per ordinary event. The dedup cache is
//! sized once in [`Filter::new`] from the config and logged; a shard's guild list allocates at
//! READY and when a guild is added (a join, an outage of an unknown guild), never per event.
//!
//! # Driver contract
//!
//! 1. One [`Filter`] per core, built at startup; one [`ShardFilter`] per shard, owned by the
//!    shard's driver and kept across reconnects and resumes (a new READY resets it).
//! 2. Every dispatch (op 0, READY and RESUMED included): [`Filter::dispatch`], then
//!    [`ShardFilter::take_notice`]; a notice becomes a record after the dispatch's own record.
//! 3. Wake up at [`ShardFilter::poll_timeout`] and call [`ShardFilter::handle_timeout`], then
//!    [`ShardFilter::take_notice`]. (`dispatch` also checks the deadline against its `now`.)
//! 4. A reporter reads [`Filter::counters`] off the hot path.
//!
//! # The redundant MESSAGE_UPDATE cache
//!
//! Message id → 64-bit hash of the raw `d.content` literal, set-associative: the id picks a
//! bucket of [`DEDUP_CACHE_WAYS`] slots, and a full bucket evicts its oldest slot (a FIFO hand per
//! bucket). Lookup, insert and eviction touch one bucket: O(1), no allocation, no tombstones, no
//! rehash. The full id is the key, so two ids can never share an entry; an update is dropped only
//! when its content hash equals the hash cached *for that id*, which is the last content seen for
//! it. Forgetting (eviction, delete) can only make the filter forward more, never drop a real
//! edit. Memory: [`DEDUP_CACHE_BYTES_PER_ENTRY`] (16 B of id and hash) plus one byte per bucket
//! of 8 for the hand, about 16.1 B per entry; capacity is the configured entries rounded up to a
//! whole bucket.
//!
//! # Choices where the protocol and the design are silent
//!
//! - **The cache works only when MESSAGE_UPDATE is forwarded.** Then every MESSAGE_CREATE is read
//!   into it, forwarded or not (a bot that takes only updates still wants unfurls dropped); when
//!   updates are not forwarded, no create is read and the cache is not allocated.
//! - **Id 0 is malformed** (no snowflake is 0; it marks an empty slot): an update naming it is
//!   forwarded and not cached. So is any update whose id or content cannot be read.
//! - **A GUILD_CREATE for a guild the shard already has is `Return`, not `Join`**: the bot did not
//!   join it again; Discord sent it back (an outage whose GUILD_DELETE we missed). Only a guild
//!   the shard does not know is a `Join`. A GUILD_CREATE without a readable id is a `Join`.
//! - **An outage during the backfill settles a pending guild.** GUILD_DELETE `unavailable: true`
//!   for a guild READY listed takes it off the pending set (Discord says it is unavailable, so
//!   waiting for it would tie readiness to an outage); its later GUILD_CREATE is `Return`.
//! - **The ready deadline is fixed at READY + `ready_timeout`**, not extended by each arrival.
//!   Guilds that arrive after it are still `Backfill`.
//! - **RESUMED on a shard that has seen no READY** (a session resumed from an earlier process)
//!   makes it fully ready at once: its guilds were delivered by that process. A RESUMED never
//!   resets anything.
//! - **Guild count** counts unavailable guilds (the bot is still in them) and not removed ones.

use std::time::{Duration, Instant};

use tracing::info;

use crate::config::{Events, Settings};
use crate::decode::{
    guild_id, guild_unavailable, message_id, message_id_and_content_hash, ready_guild_ids,
    snowflake,
};
use crate::record::{GuildCreateClass, Notice, RecordKind};
use crate::shard::PayloadHead;

/// Slots per bucket of the dedup cache: 8 ids fill one 64-byte cache line.
pub const DEDUP_CACHE_WAYS: usize = 8;

/// Bytes of one dedup cache slot (message id and content hash), not counting the hand byte each
/// bucket of [`DEDUP_CACHE_WAYS`] slots adds.
pub const DEDUP_CACHE_BYTES_PER_ENTRY: usize = 16;

/// What the filter stage is told at startup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterConfig {
    /// Dispatches forwarded (`--events`). Default: all.
    pub events: Events,
    /// Drop MESSAGE_UPDATEs whose content did not change (`--dedup-message-updates`). Default: on.
    pub dedup_message_updates: bool,
    /// Messages the per-core dedup cache remembers (`--dedup-cache-entries`), rounded up to a
    /// bucket of [`DEDUP_CACHE_WAYS`]. Memory about 16.1 B per entry. 0 disables the cache.
    /// Default: [`Settings::DEFAULT_DEDUP_CACHE_ENTRIES`].
    pub dedup_cache_entries: usize,
    /// A shard counts as fully ready when every guild of its READY arrived or this much time
    /// passed since READY. Default: [`FilterConfig::DEFAULT_READY_TIMEOUT`].
    pub ready_timeout: Duration,
}

/// Why a dispatch does not become a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Its event name is not in the allow list.
    NotAllowed,
    /// A MESSAGE_UPDATE whose content equals the last content seen for that message.
    RedundantMessageUpdate,
}

/// What to do with one dispatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Make a record of this kind.
    Forward(RecordKind),
    /// Nothing travels on.
    Drop(DropReason),
}

/// Plain per-core counters, read by a reporter. Suggested metric names:
/// `shardgate_filter_forwarded_total`, `shardgate_filter_dropped_total{reason}`,
/// `shardgate_filter_guild_create_total{class}`, `shardgate_filter_dedup_cache_misses_total`,
/// `shardgate_filter_dedup_cache_evictions_total`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilterCounters {
    /// Dispatches that became records.
    pub forwarded_total: u64,
    /// Dispatches dropped by the allow list.
    pub dropped_not_allowed_total: u64,
    /// MESSAGE_UPDATEs dropped as redundant.
    pub dropped_redundant_message_update_total: u64,
    /// GUILD_CREATEs classified `Backfill` (forwarded or not).
    pub guild_create_backfill_total: u64,
    /// GUILD_CREATEs classified `Join` (forwarded or not).
    pub guild_create_join_total: u64,
    /// GUILD_CREATEs classified `Return` (forwarded or not).
    pub guild_create_return_total: u64,
    /// MESSAGE_UPDATEs with content for a message the cache did not hold (forwarded).
    pub dedup_cache_misses_total: u64,
    /// Cache entries overwritten to make room.
    pub dedup_cache_evictions_total: u64,
}

/// The filter of one core: the allow list, the bounded MESSAGE_UPDATE dedup cache, counters.
#[derive(Debug)]
pub struct Filter {
    events: Events,
    /// `None` when dedup is off, MESSAGE_UPDATE is not forwarded, or the capacity is 0.
    dedup: Option<DedupCache>,
    ready_timeout: Duration,
    counters: FilterCounters,
}

/// The filter state of one shard: the guilds of its session, READY's pending guilds, readiness.
///
/// Memory: 9 B per guild (id and state), allocated at READY (and on a join).
#[derive(Debug, Clone, Default)]
pub struct ShardFilter {
    phase: Phase,
    /// The session's guilds, sorted and unique; `guild_states` runs parallel.
    guild_ids: Vec<u64>,
    guild_states: Vec<GuildState>,
    /// Guilds in `guild_states` that are `Pending`.
    pending: usize,
    /// Guilds in `guild_states` that are `Unavailable`.
    unavailable: usize,
    notice: Option<Notice>,
}

impl FilterConfig {
    /// Default of [`FilterConfig::ready_timeout`].
    pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);

    /// The filter's part of the settings for a core that runs `shards_on_core` shards at start
    /// (`None`: not known), with the default ready timeout.
    pub fn from_settings(settings: &Settings, shards_on_core: Option<u32>) -> FilterConfig {
        FilterConfig {
            events: settings.forwarded_events(),
            dedup_message_updates: settings.dedup_message_updates,
            dedup_cache_entries: settings.dedup_cache_entries_for(shards_on_core),
            ready_timeout: FilterConfig::DEFAULT_READY_TIMEOUT,
        }
    }
}

impl Default for FilterConfig {
    fn default() -> FilterConfig {
        FilterConfig {
            events: Events::All,
            dedup_message_updates: Settings::DEFAULT_DEDUP_MESSAGE_UPDATES,
            dedup_cache_entries: Settings::DEFAULT_DEDUP_CACHE_ENTRIES,
            ready_timeout: FilterConfig::DEFAULT_READY_TIMEOUT,
        }
    }
}

impl DropReason {
    /// Every reason, for a reporter.
    pub const ALL: [DropReason; 2] = [DropReason::NotAllowed, DropReason::RedundantMessageUpdate];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::NotAllowed => "not_allowed",
            DropReason::RedundantMessageUpdate => "redundant_message_update",
        }
    }
}

impl FilterCounters {
    /// Dispatches dropped for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        match reason {
            DropReason::NotAllowed => self.dropped_not_allowed_total,
            DropReason::RedundantMessageUpdate => self.dropped_redundant_message_update_total,
        }
    }

    /// GUILD_CREATEs classified `class`.
    pub fn guild_creates(&self, class: GuildCreateClass) -> u64 {
        match class {
            GuildCreateClass::Backfill => self.guild_create_backfill_total,
            GuildCreateClass::Join => self.guild_create_join_total,
            GuildCreateClass::Return => self.guild_create_return_total,
        }
    }

    fn count_verdict(&mut self, verdict: Verdict) {
        let counter = match verdict {
            Verdict::Forward(_) => &mut self.forwarded_total,
            Verdict::Drop(DropReason::NotAllowed) => &mut self.dropped_not_allowed_total,
            Verdict::Drop(DropReason::RedundantMessageUpdate) => {
                &mut self.dropped_redundant_message_update_total
            }
        };
        *counter += 1;
    }

    fn count_guild_create(&mut self, class: GuildCreateClass) {
        let counter = match class {
            GuildCreateClass::Backfill => &mut self.guild_create_backfill_total,
            GuildCreateClass::Join => &mut self.guild_create_join_total,
            GuildCreateClass::Return => &mut self.guild_create_return_total,
        };
        *counter += 1;
    }
}

impl Filter {
    /// Builds a core's filter and allocates its dedup cache (the only allocation it makes).
    pub fn new(config: FilterConfig) -> Filter {
        let dedup_active = config.dedup_message_updates
            && config.dedup_cache_entries > 0
            && config.events.allows(b"MESSAGE_UPDATE");
        let dedup = dedup_active.then(|| DedupCache::new(config.dedup_cache_entries));
        let filter = Filter {
            events: config.events,
            dedup,
            ready_timeout: config.ready_timeout,
            counters: FilterCounters::default(),
        };
        info!(
            events = %filter.events,
            dedup_message_updates = filter.dedup.is_some(),
            dedup_cache_entries = filter.dedup_cache_capacity(),
            dedup_cache_bytes = filter.dedup_cache_bytes(),
            ready_timeout_ms = filter.ready_timeout.as_millis() as u64,
            "filter sized"
        );
        filter
    }

    /// Decides what to do with one dispatch (op 0; `op` is not checked). `payload` is the whole
    /// decompressed dispatch and `head` its classification. READY, RESUMED, GUILD_CREATE and
    /// GUILD_DELETE update `shard` whether or not they are forwarded. Never panics.
    pub fn dispatch(
        &mut self,
        shard: &mut ShardFilter,
        head: &PayloadHead<'_>,
        payload: &[u8],
        now: Instant,
    ) -> Verdict {
        shard.handle_timeout(now);
        let name = head.t.unwrap_or("");
        let allowed = self.events.allows(name.as_bytes());
        let verdict = match name {
            "MESSAGE_CREATE" => {
                if let Some(cache) = &mut self.dedup
                    && let Some((id, content_hash)) = message_id_and_content_hash(payload)
                {
                    let seen = cache.record(id, content_hash);
                    self.counters.dedup_cache_evictions_total += u64::from(seen.evicted());
                }
                plain(allowed)
            }
            "MESSAGE_UPDATE" if allowed => self.message_update(payload),
            "MESSAGE_DELETE" => {
                if let Some(cache) = &mut self.dedup
                    && let Some(id) = message_id(payload)
                {
                    cache.forget(id);
                }
                plain(allowed)
            }
            "MESSAGE_DELETE_BULK" => {
                if let Some(cache) = &mut self.dedup {
                    forget_bulk(cache, payload);
                }
                plain(allowed)
            }
            "GUILD_CREATE" => {
                let class = shard.guild_create(guild_id(payload));
                self.counters.count_guild_create(class);
                if allowed {
                    Verdict::Forward(RecordKind::GuildCreate(class))
                } else {
                    Verdict::Drop(DropReason::NotAllowed)
                }
            }
            "GUILD_DELETE" => {
                shard.guild_delete(guild_id(payload), guild_unavailable(payload) == Some(true));
                plain(allowed)
            }
            "READY" => {
                shard.ready(
                    ready_guild_ids(payload),
                    now.checked_add(self.ready_timeout),
                );
                plain(allowed)
            }
            "RESUMED" => {
                shard.resumed();
                plain(allowed)
            }
            _ => plain(allowed),
        };
        self.counters.count_verdict(verdict);
        verdict
    }

    /// This core's counters.
    pub fn counters(&self) -> &FilterCounters {
        &self.counters
    }

    /// Messages the dedup cache can hold (0 when dedup is inactive).
    pub fn dedup_cache_capacity(&self) -> usize {
        self.dedup.as_ref().map_or(0, DedupCache::capacity)
    }

    /// Messages the dedup cache holds now.
    pub fn dedup_cache_len(&self) -> usize {
        self.dedup.as_ref().map_or(0, |cache| cache.len)
    }

    /// Heap bytes of the dedup cache.
    pub fn dedup_cache_bytes(&self) -> usize {
        self.dedup.as_ref().map_or(0, DedupCache::memory_bytes)
    }

    /// An allowed MESSAGE_UPDATE.
    fn message_update(&mut self, payload: &[u8]) -> Verdict {
        let forward = Verdict::Forward(RecordKind::Dispatch);
        let Some(cache) = &mut self.dedup else {
            return forward;
        };
        // No content (a partial update) or no readable id: nothing to compare.
        let Some((id, content_hash)) = message_id_and_content_hash(payload) else {
            return forward;
        };
        match cache.record(id, content_hash) {
            Seen::Same => Verdict::Drop(DropReason::RedundantMessageUpdate),
            Seen::Changed | Seen::Ignored => forward,
            Seen::New { evicted } => {
                self.counters.dedup_cache_misses_total += 1;
                self.counters.dedup_cache_evictions_total += u64::from(evicted);
                forward
            }
        }
    }
}

/// Forward as a plain dispatch when allowed.
fn plain(allowed: bool) -> Verdict {
    if allowed {
        Verdict::Forward(RecordKind::Dispatch)
    } else {
        Verdict::Drop(DropReason::NotAllowed)
    }
}

impl ShardFilter {
    /// A shard that has seen no READY yet.
    pub fn new() -> ShardFilter {
        ShardFilter::default()
    }

    /// The notice to emit, once: `ShardReady` when the shard just became fully ready (after the
    /// dispatch or timeout that made it so). A new READY discards one not taken.
    pub fn take_notice(&mut self) -> Option<Notice> {
        self.notice.take()
    }

    /// When [`ShardFilter::handle_timeout`] should run next: the ready deadline while the shard
    /// waits for its READY guilds.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Waiting { deadline } => deadline,
            Phase::Fresh | Phase::Ready => None,
        }
    }

    /// Gives up waiting for READY's guilds once the deadline passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Phase::Waiting {
            deadline: Some(deadline),
        } = self.phase
            && now >= deadline
        {
            self.become_ready();
        }
    }

    /// Whether every guild of the last READY arrived (or the deadline passed).
    pub fn is_fully_ready(&self) -> bool {
        self.phase == Phase::Ready
    }

    /// Guilds of the session, unavailable ones included.
    pub fn guilds(&self) -> usize {
        self.guild_ids.len()
    }

    /// Guilds of the last READY that have not arrived yet.
    pub fn pending_guilds(&self) -> usize {
        self.pending
    }

    /// Guilds in an outage (GUILD_DELETE `unavailable: true`, not back yet).
    pub fn unavailable_guilds(&self) -> usize {
        self.unavailable
    }

    /// READY: its guilds become the session's, all pending. `ids` is READY's list.
    fn ready(&mut self, mut ids: Vec<u64>, deadline: Option<Instant>) {
        ids.sort_unstable();
        ids.dedup();
        self.guild_states.clear();
        self.guild_states.resize(ids.len(), GuildState::Pending);
        self.pending = ids.len();
        self.unavailable = 0;
        self.guild_ids = ids;
        self.notice = None;
        self.phase = Phase::Waiting { deadline };
        if self.pending == 0 {
            self.become_ready();
        }
    }

    fn resumed(&mut self) {
        if self.phase == Phase::Fresh {
            self.become_ready();
        }
    }

    fn guild_create(&mut self, id: Option<u64>) -> GuildCreateClass {
        let Some(id) = id else {
            return GuildCreateClass::Join;
        };
        match self.guild_ids.binary_search(&id) {
            Ok(index) => {
                let state = std::mem::replace(&mut self.guild_states[index], GuildState::Available);
                match state {
                    GuildState::Pending => {
                        self.settle_pending();
                        GuildCreateClass::Backfill
                    }
                    GuildState::Unavailable => {
                        self.unavailable -= 1;
                        GuildCreateClass::Return
                    }
                    GuildState::Available => GuildCreateClass::Return,
                }
            }
            Err(index) => {
                self.guild_ids.insert(index, id);
                self.guild_states.insert(index, GuildState::Available);
                GuildCreateClass::Join
            }
        }
    }

    fn guild_delete(&mut self, id: Option<u64>, unavailable: bool) {
        let Some(id) = id else {
            return;
        };
        match self.guild_ids.binary_search(&id) {
            Ok(index) => {
                let state = self.guild_states[index];
                if state == GuildState::Unavailable {
                    self.unavailable -= 1;
                }
                if unavailable {
                    self.guild_states[index] = GuildState::Unavailable;
                    self.unavailable += 1;
                } else {
                    self.guild_ids.remove(index);
                    self.guild_states.remove(index);
                }
                if state == GuildState::Pending {
                    self.settle_pending();
                }
            }
            Err(index) if unavailable => {
                self.guild_ids.insert(index, id);
                self.guild_states.insert(index, GuildState::Unavailable);
                self.unavailable += 1;
            }
            Err(_) => {}
        }
    }

    /// One pending guild arrived or was settled otherwise.
    fn settle_pending(&mut self) {
        self.pending -= 1;
        if self.pending == 0 && matches!(self.phase, Phase::Waiting { .. }) {
            self.become_ready();
        }
    }

    fn become_ready(&mut self) {
        self.phase = Phase::Ready;
        self.notice = Some(Notice::ShardReady);
    }
}

/// Where a shard is on the way to fully ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Phase {
    /// No READY seen.
    #[default]
    Fresh,
    /// READY seen, guilds pending; `None`: a deadline past `Instant`'s range (never).
    Waiting { deadline: Option<Instant> },
    /// Fully ready (notice issued).
    Ready,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GuildState {
    /// Listed in READY, not arrived.
    Pending,
    Available,
    /// In an outage.
    Unavailable,
}

/// The id slot value of an empty slot (no snowflake is 0).
const EMPTY_ID: u64 = 0;

/// One bucket: the ids in the first cache line, their content hashes in the second.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Bucket {
    ids: [u64; DEDUP_CACHE_WAYS],
    content_hashes: [u64; DEDUP_CACHE_WAYS],
}

const _: () = assert!(
    std::mem::size_of::<Bucket>() == DEDUP_CACHE_WAYS * DEDUP_CACHE_BYTES_PER_ENTRY,
    "a bucket has no padding"
);

/// The per-core message id → content hash cache (see the module notes).
struct DedupCache {
    buckets: Box<[Bucket]>,
    /// Per bucket, the slot to evict next (its oldest), in `0..DEDUP_CACHE_WAYS`.
    hands: Box<[u8]>,
    /// Occupied slots.
    len: usize,
}

impl std::fmt::Debug for DedupCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DedupCache")
            .field("capacity", &self.capacity())
            .field("len", &self.len)
            .field("memory_bytes", &self.memory_bytes())
            .finish()
    }
}

/// What [`DedupCache::record`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// The id was cached with this content hash.
    Same,
    /// The id was cached with another content hash, now replaced.
    Changed,
    /// The id was not cached; now it is, evicting another one if `evicted`.
    New { evicted: bool },
    /// Id 0: not cacheable.
    Ignored,
}

impl Seen {
    fn evicted(self) -> bool {
        matches!(self, Seen::New { evicted: true })
    }
}

impl DedupCache {
    /// Room for at least `entries` messages (rounded up to whole buckets), all empty.
    fn new(entries: usize) -> DedupCache {
        let bucket_count = entries.div_ceil(DEDUP_CACHE_WAYS).max(1);
        let empty = Bucket {
            ids: [EMPTY_ID; DEDUP_CACHE_WAYS],
            content_hashes: [0; DEDUP_CACHE_WAYS],
        };
        DedupCache {
            buckets: vec![empty; bucket_count].into_boxed_slice(),
            hands: vec![0; bucket_count].into_boxed_slice(),
            len: 0,
        }
    }

    fn capacity(&self) -> usize {
        self.buckets.len() * DEDUP_CACHE_WAYS
    }

    fn memory_bytes(&self) -> usize {
        std::mem::size_of_val(&*self.buckets) + self.hands.len()
    }

    /// The bucket of `id`: a multiplicative mix (snowflakes differ mostly in their low and middle
    /// bits), mapped onto `0..buckets` by the high half of a 128-bit product (no modulo, no
    /// power-of-two size). Unkeyed on purpose: ids are Discord's, not the sender's, and even ids
    /// chosen to share a bucket cost no more than any others (a lookup reads one bucket of
    /// [`DEDUP_CACHE_WAYS`] slots, never a chain) and can only evict the entries of that bucket,
    /// which makes the filter forward more, never drop an edit.
    fn bucket_index(&self, id: u64) -> usize {
        let mixed = (id ^ (id >> 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        ((u128::from(mixed) * self.buckets.len() as u128) >> 64) as usize
    }

    /// Caches `content_hash` for `id` and says what was there.
    fn record(&mut self, id: u64, content_hash: u64) -> Seen {
        if id == EMPTY_ID {
            return Seen::Ignored;
        }
        let index = self.bucket_index(id);
        let bucket = &mut self.buckets[index];
        if let Some(way) = bucket.ids.iter().position(|&slot| slot == id) {
            if bucket.content_hashes[way] == content_hash {
                return Seen::Same;
            }
            bucket.content_hashes[way] = content_hash;
            return Seen::Changed;
        }
        // From the hand on, the first empty slot, or the hand's (the oldest) when all are full;
        // the hand moves past the slot taken, so the newest entry is the last to go.
        let hand = &mut self.hands[index];
        let start = usize::from(*hand);
        let way = (0..DEDUP_CACHE_WAYS)
            .map(|step| (start + step) % DEDUP_CACHE_WAYS)
            .find(|&way| bucket.ids[way] == EMPTY_ID);
        let (way, evicted) = match way {
            Some(way) => {
                self.len += 1;
                (way, false)
            }
            None => (start, true),
        };
        bucket.ids[way] = id;
        bucket.content_hashes[way] = content_hash;
        // A way index is below 8, so it fits a u8.
        *hand = ((way + 1) % DEDUP_CACHE_WAYS) as u8;
        Seen::New { evicted }
    }

    fn forget(&mut self, id: u64) {
        if id == EMPTY_ID {
            return;
        }
        let index = self.bucket_index(id);
        let bucket = &mut self.buckets[index];
        if let Some(way) = bucket.ids.iter().position(|&slot| slot == id) {
            bucket.ids[way] = EMPTY_ID;
            self.len -= 1;
        }
    }
}

/// MESSAGE_DELETE_BULK: forgets every readable id of `d.ids`.
fn forget_bulk(cache: &mut DedupCache, payload: &[u8]) {
    if crate::decode::too_deep(payload) {
        return;
    }
    let Ok(ids) = sonic_rs::get_from_slice(payload, ["d", "ids"]) else {
        return;
    };
    let Some(entries) = ids.into_array_iter() else {
        return;
    };
    for entry in entries {
        let Ok(entry) = entry else {
            return;
        };
        if let Some(id) = snowflake(entry.as_raw_str().as_bytes()) {
            cache.forget(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use mock_gateway::events::{EventMix, SessionEvents, guild_ids};

    use super::*;

    /// `run --help` states the dedup cache's memory; it must be the cache's real size.
    #[test]
    fn the_help_states_the_dedup_caches_real_memory() {
        use clap::Args as _;
        let command = crate::config::RunArgs::augment_args(clap::Command::new("run"));
        let help = command
            .get_arguments()
            .find(|arg| arg.get_id() == "dedup_cache_entries")
            .and_then(|arg| arg.get_long_help())
            .expect("--dedup-cache-entries has a long help")
            .to_string();
        let bytes =
            DedupCache::new(crate::config::Settings::DEFAULT_DEDUP_CACHE_ENTRIES).memory_bytes();
        let per_entry = bytes as f64 / crate::config::Settings::DEFAULT_DEDUP_CACHE_ENTRIES as f64;
        let mib = (bytes as f64 / (1024.0 * 1024.0)).round() as usize;
        let stated = format!(
            "about {} bytes per entry per core, {mib} MiB per core at the default",
            per_entry.round() as usize
        );
        assert!(help.contains(&stated), "help says: {help}\nreal: {stated}");
    }
    use crate::decode::classify;

    const FORWARD: Verdict = Verdict::Forward(RecordKind::Dispatch);
    const REDUNDANT: Verdict = Verdict::Drop(DropReason::RedundantMessageUpdate);
    const NOT_ALLOWED: Verdict = Verdict::Drop(DropReason::NotAllowed);

    fn config() -> FilterConfig {
        FilterConfig::default()
    }

    fn dispatch(name: &str, data: &str) -> Vec<u8> {
        format!(r#"{{"t":"{name}","s":1,"op":0,"d":{data}}}"#).into_bytes()
    }

    fn create(id: u64, content: &str) -> Vec<u8> {
        dispatch(
            "MESSAGE_CREATE",
            &format!(r#"{{"id":"{id}","channel_id":"5","content":"{content}","embeds":[]}}"#),
        )
    }

    fn update(id: u64, content: &str) -> Vec<u8> {
        dispatch(
            "MESSAGE_UPDATE",
            &format!(r#"{{"id":"{id}","content":"{content}","embeds":[{{"type":"link"}}]}}"#),
        )
    }

    fn ready(guilds: &[u64]) -> Vec<u8> {
        let stubs: Vec<String> = guilds
            .iter()
            .map(|id| format!(r#"{{"id":"{id}","unavailable":true}}"#))
            .collect();
        dispatch(
            "READY",
            &format!(
                r#"{{"v":10,"guilds":[{}],"session_id":"x"}}"#,
                stubs.join(",")
            ),
        )
    }

    fn guild_create(id: u64) -> Vec<u8> {
        dispatch(
            "GUILD_CREATE",
            &format!(r#"{{"name":"g","unavailable":false,"id":"{id}"}}"#),
        )
    }

    fn guild_delete(id: u64, unavailable: bool) -> Vec<u8> {
        let data = if unavailable {
            format!(r#"{{"unavailable":true,"id":"{id}"}}"#)
        } else {
            format!(r#"{{"id":"{id}"}}"#)
        };
        dispatch("GUILD_DELETE", &data)
    }

    /// Classifies and filters one payload at `now`.
    fn run(filter: &mut Filter, shard: &mut ShardFilter, payload: &[u8], now: Instant) -> Verdict {
        let head = classify(payload).expect("test payloads classify");
        filter.dispatch(shard, &head, payload, now)
    }

    /// A filter, a shard and a clock, for short tests.
    struct World {
        filter: Filter,
        shard: ShardFilter,
        now: Instant,
    }

    impl World {
        fn new(config: FilterConfig) -> World {
            World {
                filter: Filter::new(config),
                shard: ShardFilter::new(),
                now: Instant::now(),
            }
        }

        fn send(&mut self, payload: &[u8]) -> Verdict {
            run(&mut self.filter, &mut self.shard, payload, self.now)
        }

        /// The shard's bookkeeping agrees with its guild states.
        fn check_shard(&self) {
            let shard = &self.shard;
            let count = |wanted| shard.guild_states.iter().filter(|&&s| s == wanted).count();
            assert_eq!(shard.pending, count(GuildState::Pending));
            assert_eq!(shard.unavailable, count(GuildState::Unavailable));
            assert_eq!(shard.guild_ids.len(), shard.guild_states.len());
            assert!(shard.guild_ids.windows(2).all(|pair| pair[0] < pair[1]));
        }
    }

    #[test]
    fn default_forwards_every_dispatch() {
        let mut world = World::new(config());
        for payload in [
            create(1, "a"),
            dispatch("TYPING_START", "{}"),
            dispatch("SOMETHING_NEW", "{}"),
            dispatch("RESUMED", "{}"),
            br#"{"t":null,"s":1,"op":0,"d":{}}"#.to_vec(),
        ] {
            assert_eq!(world.send(&payload), FORWARD);
        }
        assert_eq!(world.filter.counters().forwarded_total, 5);
    }

    #[test]
    fn allow_list_drops_others_but_still_inspects_session_events() {
        let events = Events::only(vec!["MESSAGE_UPDATE", "TYPING_START"]);
        let mut world = World::new(FilterConfig { events, ..config() });
        assert_eq!(world.send(&ready(&[10, 11])), NOT_ALLOWED);
        assert_eq!(world.shard.pending_guilds(), 2);
        assert_eq!(world.send(&guild_create(10)), NOT_ALLOWED);
        assert_eq!(world.send(&guild_create(12)), NOT_ALLOWED);
        assert_eq!(world.send(&guild_delete(12, false)), NOT_ALLOWED);
        assert_eq!(world.shard.take_notice(), None);
        assert_eq!(world.send(&guild_create(11)), NOT_ALLOWED);
        assert_eq!(world.shard.take_notice(), Some(Notice::ShardReady));
        assert_eq!(world.shard.guilds(), 2);
        assert_eq!(world.send(&dispatch("TYPING_START", "{}")), FORWARD);
        assert_eq!(world.send(&dispatch("RESUMED", "{}")), NOT_ALLOWED);
        assert_eq!(
            world.send(&br#"{"t":null,"s":1,"op":0,"d":{}}"#[..]),
            NOT_ALLOWED
        );
        // MESSAGE_CREATE is not forwarded, but it still feeds the cache for the updates.
        assert_eq!(world.send(&create(7, "hello")), NOT_ALLOWED);
        assert_eq!(world.send(&update(7, "hello")), REDUNDANT);
        assert_eq!(world.send(&update(7, "edited")), FORWARD);
        let counters = world.filter.counters();
        assert_eq!(counters.guild_create_backfill_total, 2);
        assert_eq!(counters.guild_create_join_total, 1);
        assert_eq!(counters.dropped(DropReason::NotAllowed), 8);
        assert_eq!(counters.dropped(DropReason::RedundantMessageUpdate), 1);
        assert_eq!(counters.forwarded_total, 2);
    }

    #[test]
    fn updates_not_forwarded_means_no_cache() {
        let events = Events::only(vec!["MESSAGE_CREATE"]);
        let mut world = World::new(FilterConfig { events, ..config() });
        assert_eq!(world.filter.dedup_cache_capacity(), 0);
        assert_eq!(world.filter.dedup_cache_bytes(), 0);
        assert_eq!(world.send(&create(7, "hello")), FORWARD);
        assert_eq!(world.send(&update(7, "hello")), NOT_ALLOWED);
        assert_eq!(world.filter.dedup_cache_len(), 0);
    }

    #[test]
    fn redundant_update_is_dropped_and_a_real_edit_forwarded() {
        let mut world = World::new(config());
        assert_eq!(world.send(&create(1, "look https://x.example")), FORWARD);
        assert_eq!(world.send(&update(1, "look https://x.example")), REDUNDANT);
        assert_eq!(world.send(&update(1, "look https://y.example")), FORWARD);
        assert_eq!(world.send(&update(1, "look https://y.example")), REDUNDANT);
        // Back to the first text: a change from the last content seen.
        assert_eq!(world.send(&update(1, "look https://x.example")), FORWARD);
        // Another message with the same text is another key.
        assert_eq!(world.send(&create(2, "look https://x.example")), FORWARD);
        assert_eq!(world.send(&update(2, "look https://x.example")), REDUNDANT);
        // A second MESSAGE_CREATE for an id (a replay) refreshes the content.
        assert_eq!(world.send(&create(2, "other")), FORWARD);
        assert_eq!(world.send(&update(2, "look https://x.example")), FORWARD);
        let counters = world.filter.counters();
        assert_eq!(counters.dropped_redundant_message_update_total, 3);
        assert_eq!(counters.dedup_cache_misses_total, 0);
    }

    #[test]
    fn update_of_an_unknown_message_is_forwarded_then_cached() {
        let mut world = World::new(config());
        assert_eq!(world.send(&update(9, "text")), FORWARD);
        assert_eq!(world.filter.counters().dedup_cache_misses_total, 1);
        assert_eq!(world.send(&update(9, "text")), REDUNDANT);
        assert_eq!(world.filter.dedup_cache_len(), 1);
    }

    #[test]
    fn partial_or_unreadable_updates_are_forwarded() {
        let mut world = World::new(config());
        assert_eq!(world.send(&create(3, "text")), FORWARD);
        let partials = [
            r#"{"id":"3","embeds":[{"type":"link"}]}"#,
            r#"{"id":"3","content":null}"#,
            r#"{"content":"text"}"#,
            r#"{"id":"x3","content":"text"}"#,
            r#"{"id":"0","content":"text"}"#,
            r#"{"id":"0","content":"text"}"#,
            r#"[]"#,
            r#"null"#,
        ];
        for data in partials {
            assert_eq!(
                world.send(&dispatch("MESSAGE_UPDATE", data)),
                FORWARD,
                "{data}"
            );
        }
        // The partials left the cached content alone.
        assert_eq!(world.send(&update(3, "text")), REDUNDANT);
        assert_eq!(world.filter.dedup_cache_len(), 1);
    }

    #[test]
    fn dedup_off_forwards_every_update() {
        let mut world = World::new(FilterConfig {
            dedup_message_updates: false,
            ..config()
        });
        assert_eq!(world.filter.dedup_cache_capacity(), 0);
        assert_eq!(world.send(&create(1, "a")), FORWARD);
        assert_eq!(world.send(&update(1, "a")), FORWARD);
        assert_eq!(world.send(&update(1, "a")), FORWARD);
        let mut world = World::new(FilterConfig {
            dedup_cache_entries: 0,
            ..config()
        });
        assert_eq!(world.send(&create(1, "a")), FORWARD);
        assert_eq!(world.send(&update(1, "a")), FORWARD);
    }

    #[test]
    fn deletes_forget_messages() {
        let mut world = World::new(config());
        for id in 1..=5 {
            world.send(&create(id, "a"));
        }
        assert_eq!(world.filter.dedup_cache_len(), 5);
        assert_eq!(
            world.send(&dispatch("MESSAGE_DELETE", r#"{"id":"1"}"#)),
            FORWARD
        );
        let bulk = r#"{"ids":["2","3",4,"x",null],"channel_id":"5"}"#;
        assert_eq!(world.send(&dispatch("MESSAGE_DELETE_BULK", bulk)), FORWARD);
        assert_eq!(world.filter.dedup_cache_len(), 1);
        assert_eq!(world.send(&update(1, "a")), FORWARD);
        assert_eq!(world.send(&update(5, "a")), REDUNDANT);
        for data in [r#"{"id":"99"}"#, r#"{"id":"0"}"#, r#"{}"#, r#"{"ids":"1"}"#] {
            world.send(&dispatch("MESSAGE_DELETE", data));
            world.send(&dispatch("MESSAGE_DELETE_BULK", data));
        }
        assert_eq!(world.filter.dedup_cache_len(), 2);
    }

    #[test]
    fn cache_size_is_rounded_to_whole_buckets() {
        for (entries, capacity) in [(1, 8), (8, 8), (100, 104), (65_536, 65_536)] {
            let filter = Filter::new(FilterConfig {
                dedup_cache_entries: entries,
                ..config()
            });
            assert_eq!(filter.dedup_cache_capacity(), capacity);
            assert_eq!(
                filter.dedup_cache_bytes(),
                capacity * DEDUP_CACHE_BYTES_PER_ENTRY + capacity / DEDUP_CACHE_WAYS
            );
        }
    }

    #[test]
    fn a_full_bucket_evicts_its_oldest_entry() {
        // One bucket: every id lands in it.
        let mut cache = DedupCache::new(DEDUP_CACHE_WAYS);
        for id in 1..=8 {
            assert_eq!(cache.record(id, id), Seen::New { evicted: false });
        }
        assert_eq!(cache.record(9, 9), Seen::New { evicted: true });
        assert_eq!(
            cache.record(1, 1),
            Seen::New { evicted: true },
            "1 was the oldest"
        );
        assert_eq!(cache.record(2, 2), Seen::New { evicted: true }, "then 2");
        assert_eq!(cache.record(9, 9), Seen::Same);
        assert_eq!(cache.record(8, 80), Seen::Changed);
        assert_eq!(cache.len, 8);
        // A hole left by a delete is filled, and the newcomer is not the next victim.
        cache.forget(5);
        assert_eq!(cache.len, 7);
        assert_eq!(cache.record(10, 10), Seen::New { evicted: false });
        assert_eq!(cache.record(11, 11), Seen::New { evicted: true });
        assert_eq!(cache.record(10, 10), Seen::Same);
        assert_eq!(cache.record(0, 1), Seen::Ignored);
        assert_eq!(cache.len, 8);
    }

    #[test]
    fn cache_stays_bounded_and_never_drops_an_edit_after_eviction() {
        let messages = 5_000u64;
        let mut world = World::new(FilterConfig {
            dedup_cache_entries: 256,
            ..config()
        });
        let ids = |index: u64| 1_100_000_000_000_000_000 + index * 4_194_304 + index % 7;
        for index in 0..messages {
            world.send(&create(ids(index), "same"));
            assert!(world.filter.dedup_cache_len() <= 256);
        }
        assert_eq!(world.filter.dedup_cache_len(), 256);
        assert_eq!(
            world.filter.counters().dedup_cache_evictions_total,
            messages - 256
        );
        assert!(world.filter.dedup_cache_bytes() <= 256 * 17);
        // Real edits: never dropped, whether the message is still cached or not.
        for index in 0..messages {
            assert_eq!(world.send(&update(ids(index), "edited")), FORWARD);
        }
        // Unfurls, newest message first: dropped exactly for the 256 whose last content is still
        // cached (each bucket keeps its newest 8); the rest were evicted and are forwarded.
        let mut dropped = 0;
        for index in (0..messages).rev() {
            match world.send(&update(ids(index), "edited")) {
                REDUNDANT => dropped += 1,
                verdict => assert_eq!(verdict, FORWARD),
            }
        }
        assert_eq!(dropped, 256);
        // The oldest message's update was forwarded, and cached: now its unfurl is dropped.
        assert_eq!(world.send(&update(ids(0), "edited")), REDUNDANT);
    }

    #[test]
    fn guild_creates_are_classified() {
        let mut world = World::new(config());
        let backfill = Verdict::Forward(RecordKind::GuildCreate(GuildCreateClass::Backfill));
        let join = Verdict::Forward(RecordKind::GuildCreate(GuildCreateClass::Join));
        let back = Verdict::Forward(RecordKind::GuildCreate(GuildCreateClass::Return));
        // Before any READY every guild is a join.
        assert_eq!(world.send(&guild_create(50)), join);
        assert_eq!(world.send(&ready(&[3, 1, 2, 2])), FORWARD);
        assert_eq!(
            world.shard.guilds(),
            3,
            "READY resets; duplicates count once"
        );
        assert_eq!(world.send(&guild_create(1)), backfill);
        assert_eq!(world.send(&guild_create(4)), join);
        assert_eq!(world.shard.guilds(), 4);
        assert_eq!(world.send(&guild_delete(1, true)), FORWARD);
        assert_eq!(world.shard.unavailable_guilds(), 1);
        assert_eq!(world.shard.guilds(), 4, "an outage keeps the guild");
        assert_eq!(world.send(&guild_create(1)), back);
        assert_eq!(world.shard.unavailable_guilds(), 0);
        assert_eq!(world.send(&guild_delete(4, false)), FORWARD);
        assert_eq!(world.shard.guilds(), 3);
        assert_eq!(
            world.send(&guild_create(4)),
            join,
            "removed, then added again"
        );
        // A guild we already have, without an outage in between: Discord sent it back.
        assert_eq!(world.send(&guild_create(4)), back);
        // An outage of a guild we did not know, then its return.
        assert_eq!(world.send(&guild_delete(77, true)), FORWARD);
        assert_eq!(world.shard.guilds(), 5);
        assert_eq!(world.send(&guild_create(77)), back);
        assert_eq!(world.send(&guild_create(2)), backfill);
        assert_eq!(world.send(&guild_create(3)), backfill);
        assert_eq!(
            world.send(&guild_delete(999, false)),
            FORWARD,
            "unknown: nothing"
        );
        assert_eq!(world.shard.guilds(), 5);
        world.check_shard();
        let counters = world.filter.counters();
        assert_eq!(counters.guild_creates(GuildCreateClass::Backfill), 3);
        assert_eq!(counters.guild_creates(GuildCreateClass::Join), 3);
        assert_eq!(counters.guild_creates(GuildCreateClass::Return), 3);
    }

    #[test]
    fn fully_ready_notice_comes_once_per_ready() {
        let mut world = World::new(config());
        assert!(!world.shard.is_fully_ready());
        world.send(&ready(&[1, 2, 3]));
        assert_eq!(world.shard.take_notice(), None);
        world.send(&guild_create(1));
        world.send(&guild_create(99));
        world.send(&guild_create(1));
        assert_eq!(world.shard.take_notice(), None);
        assert_eq!(world.shard.pending_guilds(), 2);
        world.send(&guild_delete(3, false));
        assert_eq!(world.shard.take_notice(), None);
        assert!(!world.shard.is_fully_ready());
        world.send(&guild_create(2));
        assert!(world.shard.is_fully_ready());
        assert_eq!(world.shard.take_notice(), Some(Notice::ShardReady));
        assert_eq!(world.shard.take_notice(), None);
        assert_eq!(world.shard.poll_timeout(), None);
        // Nothing after it re-arms the notice but a new READY.
        world.send(&guild_create(3));
        world.send(&guild_delete(2, true));
        world.send(&guild_create(2));
        world.send(&dispatch("RESUMED", "{}"));
        assert_eq!(world.shard.take_notice(), None);
        assert!(world.shard.is_fully_ready());
        assert_eq!(world.shard.guilds(), 4);
        world.send(&ready(&[5]));
        assert!(!world.shard.is_fully_ready());
        assert_eq!(world.shard.guilds(), 1);
        world.send(&guild_create(5));
        assert_eq!(world.shard.take_notice(), Some(Notice::ShardReady));
        // A READY without guilds is ready at once.
        world.send(&ready(&[]));
        assert!(world.shard.is_fully_ready());
        assert_eq!(world.shard.take_notice(), Some(Notice::ShardReady));
        world.check_shard();
    }

    #[test]
    fn an_outage_during_backfill_settles_the_guild() {
        let mut world = World::new(config());
        world.send(&ready(&[1, 2]));
        world.send(&guild_create(1));
        world.send(&guild_delete(2, true));
        assert_eq!(world.shard.take_notice(), Some(Notice::ShardReady));
        assert_eq!(world.shard.guilds(), 2);
        let back = Verdict::Forward(RecordKind::GuildCreate(GuildCreateClass::Return));
        assert_eq!(world.send(&guild_create(2)), back);
        world.check_shard();
    }

    #[test]
    fn ready_times_out() {
        let mut world = World::new(config());
        let start = world.now;
        world.send(&ready(&[1, 2]));
        assert_eq!(
            world.shard.poll_timeout(),
            Some(start + Duration::from_secs(30))
        );
        world.shard.handle_timeout(start + Duration::from_secs(29));
        assert_eq!(world.shard.take_notice(), None);
        world.shard.handle_timeout(start + Duration::from_secs(30));
        assert!(world.shard.is_fully_ready());
        assert_eq!(world.shard.take_notice(), Some(Notice::ShardReady));
        assert_eq!(world.shard.poll_timeout(), None);
        // Late guilds are still the backfill, and no second notice comes.
        let backfill = Verdict::Forward(RecordKind::GuildCreate(GuildCreateClass::Backfill));
        assert_eq!(world.send(&guild_create(1)), backfill);
        assert_eq!(world.send(&guild_create(2)), backfill);
        assert_eq!(world.shard.take_notice(), None);
        assert_eq!(world.shard.pending_guilds(), 0);

        // A dispatch after the deadline notices it too.
        let mut world = World::new(FilterConfig {
            ready_timeout: Duration::from_secs(5),
            ..config()
        });
        world.send(&ready(&[1, 2]));
        world.now += Duration::from_secs(6);
        world.send(&dispatch("TYPING_START", "{}"));
        assert_eq!(world.shard.take_notice(), Some(Notice::ShardReady));

        // A deadline beyond `Instant`'s range never comes (and does not panic).
        let mut world = World::new(FilterConfig {
            ready_timeout: Duration::MAX,
            ..config()
        });
        world.send(&ready(&[1]));
        assert_eq!(world.shard.poll_timeout(), None);
        assert!(!world.shard.is_fully_ready());
    }

    #[test]
    fn resumed_without_ready_is_a_session_from_before() {
        let mut world = World::new(config());
        world.send(&dispatch("RESUMED", "{}"));
        assert!(world.shard.is_fully_ready());
        assert_eq!(world.shard.take_notice(), Some(Notice::ShardReady));
        world.send(&dispatch("RESUMED", "{}"));
        assert_eq!(world.shard.take_notice(), None);
        // A RESUMED while waiting for guilds changes nothing.
        world.send(&ready(&[1]));
        world.send(&dispatch("RESUMED", "{}"));
        assert!(!world.shard.is_fully_ready());
        assert_eq!(world.shard.pending_guilds(), 1);
    }

    #[test]
    fn malformed_payloads_do_not_panic() {
        let names = [
            "READY",
            "RESUMED",
            "GUILD_CREATE",
            "GUILD_DELETE",
            "MESSAGE_CREATE",
            "MESSAGE_UPDATE",
            "MESSAGE_DELETE",
            "MESSAGE_DELETE_BULK",
            "TYPING_START",
        ];
        let data = [
            "null",
            "[]",
            "1",
            r#""d""#,
            "{}",
            r#"{"id":null}"#,
            r#"{"id":"18446744073709551616","content":"x"}"#,
            r#"{"id":18446744073709551615,"content":"x"}"#,
            r#"{"id":"-1","unavailable":"yes"}"#,
            r#"{"id":"","content":7}"#,
            r#"{"guilds":[{"id":"1"},5,{"id":"0"}],"ids":[[],{}]}"#,
            r#"{"guilds":"all","ids":null}"#,
            r#"{"id":"1","content":"x""#,
            r#"{"#,
        ];
        for config in [
            config(),
            FilterConfig {
                events: Events::only(vec!["GUILD_CREATE"]),
                dedup_cache_entries: 1,
                ..config()
            },
        ] {
            let mut world = World::new(config);
            for name in names {
                for data in data {
                    let payload = dispatch(name, data);
                    let head = PayloadHead {
                        op: 0,
                        s: Some(1),
                        t: Some(name),
                    };
                    world
                        .filter
                        .dispatch(&mut world.shard, &head, &payload, world.now);
                    world.shard.take_notice();
                    world.check_shard();
                }
            }
            let head = PayloadHead {
                op: 0,
                s: None,
                t: None,
            };
            for payload in [&b""[..], b"\xff\xfe", b"{\"d\":"] {
                world
                    .filter
                    .dispatch(&mut world.shard, &head, payload, world.now);
            }
        }
    }

    /// What [`generated_session`] asserts about the unfurls (redundant updates).
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Unfurls {
        /// Every one is dropped (a cache much bigger than the generator's window).
        AllDropped,
        /// Some are forwarded (a cache too small to remember the window).
        SomeForwarded,
        /// No claim (a cache about the window's size).
        Any,
    }

    /// One generated session through the filter: READY, its GUILD_CREATEs, `steady` dispatches of
    /// the default mix, an outage and its return, a removal. Whatever `cache_entries`, every
    /// dispatch but an unfurl is forwarded (no real edit is ever dropped); `unfurls` says what
    /// happens to those.
    fn generated_session(
        seed: u64,
        cache_entries: usize,
        steady: u64,
        unfurls_expected: Unfurls,
    ) -> FilterCounters {
        let guild_count = 40;
        let guilds = guild_ids(seed, guild_count);
        let mut events = SessionEvents::new(seed, 0, guilds.clone(), EventMix::default());
        let mut filter = Filter::new(FilterConfig {
            dedup_cache_entries: cache_entries,
            ..config()
        });
        let mut shard = ShardFilter::new();
        let now = Instant::now();
        let mut payload = Vec::new();
        let mut seq = 1;
        events.ready(seq, "session", "wss://resume.example", [0, 1], &mut payload);
        assert_eq!(run(&mut filter, &mut shard, &payload, now), FORWARD);
        for (index, &guild) in guilds.iter().enumerate() {
            seq += 1;
            payload.clear();
            events.guild_create(guild, seq, 0, &mut payload);
            let verdict = run(&mut filter, &mut shard, &payload, now);
            let backfill = RecordKind::GuildCreate(GuildCreateClass::Backfill);
            assert_eq!(verdict, Verdict::Forward(backfill));
            let notice = shard.take_notice();
            assert_eq!(notice.is_some(), index == guild_count - 1, "{index}");
        }
        assert_eq!(shard.take_notice(), None);
        let (mut unfurls, mut edits, mut dropped_unfurls) = (0, 0, 0);
        let mut names = HashSet::new();
        for _ in 0..steady {
            seq += 1;
            payload.clear();
            let info = events.next_dispatch(seq, &mut payload);
            let verdict = run(&mut filter, &mut shard, &payload, now);
            names.insert(info.name);
            if info.name == "MESSAGE_UPDATE" && info.redundant_update {
                unfurls += 1;
                dropped_unfurls += usize::from(verdict == REDUNDANT);
                if unfurls_expected == Unfurls::AllDropped {
                    assert_eq!(verdict, REDUNDANT, "seq {seq}");
                } else {
                    assert!(matches!(verdict, REDUNDANT | FORWARD));
                }
            } else {
                edits += usize::from(info.name == "MESSAGE_UPDATE");
                assert_eq!(verdict, FORWARD, "{} seq {seq}", info.name);
            }
        }
        assert!(
            unfurls > 100 && edits > 50,
            "unfurls {unfurls}, edits {edits}"
        );
        match unfurls_expected {
            Unfurls::AllDropped => assert_eq!(dropped_unfurls, unfurls),
            Unfurls::SomeForwarded => assert!(dropped_unfurls < unfurls, "{dropped_unfurls}"),
            Unfurls::Any => {}
        }
        assert!(names.len() >= 8, "the mix covers many events: {names:?}");
        // An outage and its return, then a removal.
        for (guild, unavailable) in [(guilds[1], true), (guilds[2], false)] {
            seq += 1;
            payload.clear();
            events.guild_delete(guild, unavailable, seq, &mut payload);
            assert_eq!(run(&mut filter, &mut shard, &payload, now), FORWARD);
        }
        assert_eq!(shard.unavailable_guilds(), 1);
        assert_eq!(shard.guilds(), guild_count - 1);
        seq += 1;
        payload.clear();
        events.guild_create(guilds[1], seq, 0, &mut payload);
        let back = Verdict::Forward(RecordKind::GuildCreate(GuildCreateClass::Return));
        assert_eq!(run(&mut filter, &mut shard, &payload, now), back);
        seq += 1;
        payload.clear();
        events.resumed(seq, &mut payload);
        assert_eq!(run(&mut filter, &mut shard, &payload, now), FORWARD);
        assert_eq!(shard.take_notice(), None);
        assert!(filter.dedup_cache_len() <= filter.dedup_cache_capacity());
        let counters = filter.counters().clone();
        assert_eq!(
            counters.dropped_redundant_message_update_total,
            dropped_unfurls as u64
        );
        assert_eq!(counters.guild_create_backfill_total, guild_count as u64);
        assert_eq!(counters.guild_create_return_total, 1);
        counters
    }

    #[test]
    fn generated_stream_drops_exactly_the_redundant_updates() {
        for seed in [41, 42] {
            let entries = Settings::DEFAULT_DEDUP_CACHE_ENTRIES;
            let counters = generated_session(seed, entries, 6000, Unfurls::AllDropped);
            assert_eq!(counters.dedup_cache_evictions_total, 0);
        }
        // The generator's window and a bit: a bucket may overflow, but a forgotten message only
        // means a forwarded unfurl.
        generated_session(43, 64, 6000, Unfurls::Any);
    }

    #[test]
    fn generated_stream_with_a_tiny_cache_never_drops_an_edit() {
        let counters = generated_session(44, 8, 6000, Unfurls::SomeForwarded);
        assert!(counters.dedup_cache_evictions_total > 1000);
        assert!(counters.dedup_cache_misses_total > 100);
    }
}
