//! Reshard stage: the merge of two shard sets' events into one stream, each event once.
//!
//! While a reshard runs, Discord sends every event of a guild to the guild's shard in each set
//! (the live set and the new one), each session with its own sequence numbers and at its own
//! time. The sink offers every record of either set to a [`MergeWindow`] under a key (a keyed
//! hash of the event's name and its raw `d`, which Discord sends byte for byte the same to
//! every session), and the window says which copy reaches the bot.
//!
//! **One set has authority.** Until the switch it is the live set: each of its copies is
//! delivered as it comes, exactly as without a reshard, so that its saved positions (what a
//! restart resumes) never move past an event that only the other set's copy stands for. A copy
//! of the new set whose twin the live set already delivered is a duplicate; one that comes
//! first is held until its twin comes (then it is the duplicate) or until the switch (then it
//! is delivered: an event only the new set saw, such as one of a guild whose live shard is
//! down). At the switch ([`MergeWindow::flip`]) the live set has stopped
//! forwarding: every held copy is delivered, in order, and the new set has authority. After
//! it, a new-set copy whose twin the old set delivered is a duplicate; any other is delivered.
//!
//! **Exactly once, counted.** Per key the window counts the copies each set has seen and the
//! copies delivered, so each key reaches the bot as many times as the set that saw it most
//! often saw it: two genuinely identical events (the same `d` twice) are both delivered, and
//! the twin of each from the other set is not. Order per guild holds: a guild's events come in
//! order from one shard of each set, and held copies are released in the order they came.
//!
//! **Bounded.** A key both sets have seen equally often is complete and forgotten at once. The
//! others stay for [`MergeWindow::span`] after their first copy, never more than
//! [`MergeLimits::keys_max`] of them; the span follows the skew measured between the sets (four
//! times the 99th percentile of the skews of the last 30 to 60 s, within the limits). A twin that comes later
//! than the span, or after its key was pushed out to stay within the bound, is delivered again:
//! a duplicate, as at-least-once delivery allows, never a loss. Such keys are counted
//! ([`MergeStats::expired_unmatched`], [`MergeStats::evicted_for_room`]), together with the
//! keys only one set could see (the events of a guild whose new shard was not connected yet).
//!
//! Must not: perform I/O, read the clock (every call takes `now`), or allocate beyond its bound.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// The two shard sets of a reshard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// The set the bot has been fed by.
    Live,
    /// The set that replaces it.
    New,
}

impl Side {
    fn index(self) -> usize {
        match self {
            Side::Live => 0,
            Side::New => 1,
        }
    }

    fn other(self) -> Side {
        match self {
            Side::Live => Side::New,
            Side::New => Side::Live,
        }
    }
}

/// What becomes of a copy: [`MergeWindow::offer`] and the release calls append these to the
/// caller's list, in the order the bot must see them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Merged<T> {
    /// Forward it.
    Deliver(T),
    /// The other set's copy of an occurrence already delivered: not forwarded (counted). Its
    /// set's position still moves past it.
    Duplicate(T),
}

/// Bounds, decided at startup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MergeLimits {
    /// Keys held at most; past it the oldest is forgotten.
    pub keys_max: usize,
    /// The span never shrinks below this, however small the skew.
    pub span_min: Duration,
    /// Nor grows past this, however large.
    pub span_max: Duration,
}

impl MergeLimits {
    /// About 80 bytes per key held (map entry, order slot and hashing overhead), plus the
    /// records held for their twin.
    pub const BYTES_PER_KEY: usize = 80;

    /// One million keys (about 80 MiB at most), a span of 0.5 s to 5 s.
    ///
    /// The span is short on purpose: a key waits for its twin only as long as the sets' skew
    /// makes it need to, so that a copy the new set will never see (an event from before its
    /// shard connected) does not stay to pair with a later, identical event. The switch lets
    /// both sets run longer than `span_max` before the live set hands over
    /// ([`crate::reshard::switch::OVERLAP_SETTLE`]), so by then every such key has gone.
    pub const DEFAULT: MergeLimits = MergeLimits {
        keys_max: 1 << 20,
        span_min: Duration::from_millis(500),
        span_max: Duration::from_secs(5),
    };
}

/// Counters, read by the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MergeStats {
    /// Copies offered, per [`Side`] (live, new).
    pub offered: [u64; 2],
    /// Copies delivered, per side.
    pub delivered: [u64; 2],
    /// Copies not delivered as the other set's twin, per side.
    pub duplicates: [u64; 2],
    /// Copies held for their twin, released because none came within the span (or at the
    /// switch, when the live set stopped): events only the new set saw.
    pub released_unmatched: u64,
    /// Keys forgotten after the span with one set ahead: events only one set saw in time.
    pub expired_unmatched: u64,
    /// Keys forgotten early to stay within `keys_max`.
    pub evicted_for_room: u64,
    /// Most keys held at once.
    pub peak_keys: usize,
    /// Most copies held for their twin at once.
    pub peak_held: usize,
    /// Largest skew measured between the two copies of one event.
    pub max_skew: Duration,
}

/// Per key: when its first copy came, the copies each set has seen, the copies delivered, and
/// the copies of the set without authority waiting for their twin.
#[derive(Debug)]
struct Entry<T> {
    first_seen: Instant,
    seen: [u32; 2],
    delivered: u32,
    /// With the number of their arrival among every held copy (see [`MergeWindow::flip`]).
    held: VecDeque<(u64, T)>,
}

/// The keyed merge of two sets (see the module docs).
#[derive(Debug)]
pub struct MergeWindow<T> {
    limits: MergeLimits,
    authority: Side,
    entries: HashMap<u64, Entry<T>>,
    /// Keys in the order they were first seen, with that time: the eviction and release order.
    /// A key that was completed (and removed) or re-added later leaves a stale slot, skipped
    /// when reached.
    order: VecDeque<(u64, Instant)>,
    /// Keys past the span that still hold copies while the live set has authority: they wait
    /// for their twin or the switch, in the order they were first seen (see [`MergeWindow::expire`]).
    pinned: VecDeque<(u64, Instant)>,
    held: usize,
    /// Numbers the held copies in the order they came.
    arrivals: u64,
    /// The skews of the current and the previous period (see [`SKEW_PERIOD`]).
    skew_recent: [SkewSamples; 2],
    skew_period_started: Option<Instant>,
    stats: MergeStats,
}

/// The span follows the skews of the last one to two of these periods.
const SKEW_PERIOD: Duration = Duration::from_secs(30);
/// The span is this many times that skew.
const SPAN_PER_SKEW: u32 = 4;
/// The share of a period's skews the span covers: the rest are outliers that would otherwise
/// set it alone (a pairing that was a guess, a stalled thread), and cost a duplicate at worst.
const SKEW_QUANTILE: f64 = 0.99;
/// Quarter-octave buckets from 1 ms: the last one starts past 4 hours.
const SKEW_BUCKETS: usize = 96;

/// One period's skew samples: a count and the largest sample per quarter-octave bucket, so a
/// quantile reads as a real sample, within a quarter octave of the exact one.
#[derive(Clone, Debug)]
struct SkewSamples {
    counts: [u32; SKEW_BUCKETS],
    largest: [Duration; SKEW_BUCKETS],
    total: u64,
}

impl Default for SkewSamples {
    fn default() -> SkewSamples {
        SkewSamples {
            counts: [0; SKEW_BUCKETS],
            largest: [Duration::ZERO; SKEW_BUCKETS],
            total: 0,
        }
    }
}

impl SkewSamples {
    fn add(&mut self, skew: Duration) {
        let ms = skew.as_secs_f64() * 1000.0;
        // Bucket 0 below 1 ms; bucket i from 2^((i - 1) / 4) ms.
        let bucket = if ms < 1.0 {
            0
        } else {
            ((ms.log2() * 4.0) as usize + 1).min(SKEW_BUCKETS - 1)
        };
        self.counts[bucket] = self.counts[bucket].saturating_add(1);
        self.largest[bucket] = self.largest[bucket].max(skew);
        self.total += 1;
    }

    /// The largest sample of the bucket where [`SKEW_QUANTILE`] of the samples are reached.
    fn quantile(&self) -> Duration {
        let wanted = (self.total as f64 * SKEW_QUANTILE).ceil() as u64;
        let mut seen = 0;
        for (count, largest) in self.counts.iter().zip(&self.largest) {
            seen += u64::from(*count);
            if seen >= wanted.max(1) {
                return *largest;
            }
        }
        Duration::ZERO
    }
}

impl<T> MergeWindow<T> {
    /// A window where the live set has authority.
    pub fn new(limits: MergeLimits) -> MergeWindow<T> {
        assert!(limits.keys_max > 0, "the window holds at least one key");
        assert!(limits.span_min <= limits.span_max, "span_min ≤ span_max");
        MergeWindow {
            limits,
            authority: Side::Live,
            entries: HashMap::new(),
            order: VecDeque::new(),
            pinned: VecDeque::new(),
            held: 0,
            arrivals: 0,
            skew_recent: [SkewSamples::default(), SkewSamples::default()],
            skew_period_started: None,
            stats: MergeStats::default(),
        }
    }

    /// A copy of the event with `key` came from `side` at `now`: what becomes of it (and of a
    /// held twin) is appended to `out`. `now` never goes backwards between calls.
    pub fn offer(&mut self, side: Side, key: u64, item: T, now: Instant, out: &mut Vec<Merged<T>>) {
        self.expire(now, out);
        let this = side.index();
        let other = side.other().index();
        self.stats.offered[this] += 1;
        if self.authority == Side::New && side == Side::New && !self.entries.contains_key(&key) {
            // After the switch the live set sends nothing more: only its copies still ahead of
            // the new set's (kept in the window) can make a new copy a duplicate.
            out.push(Merged::Deliver(item));
            self.stats.delivered[this] += 1;
            return;
        }
        if !self.entries.contains_key(&key) {
            if self.entries.len() >= self.limits.keys_max {
                self.evict_oldest(out);
            }
            self.order.push_back((key, now));
            self.entries.insert(
                key,
                Entry {
                    first_seen: now,
                    seen: [0, 0],
                    delivered: 0,
                    held: VecDeque::new(),
                },
            );
        }
        let Some(entry) = self.entries.get_mut(&key) else {
            unreachable!("inserted above");
        };
        entry.seen[this] += 1;
        // The first copy of each side: one skew sample. (With more copies on either side the
        // pairing is a guess: an event repeated byte for byte, one copy seen before the other
        // set was connected.)
        let skew = (entry.seen[this] == 1 && entry.seen[other] == 1)
            .then(|| now.saturating_duration_since(entry.first_seen));
        if entry.seen[this] <= entry.delivered {
            // The other set's copy of this occurrence went out already.
            out.push(Merged::Duplicate(item));
            self.stats.duplicates[this] += 1;
        } else if side == self.authority {
            entry.delivered += 1;
            out.push(Merged::Deliver(item));
            self.stats.delivered[this] += 1;
            // A copy of the other set waiting for this one is its duplicate.
            if let Some((_, twin)) = entry.held.pop_front() {
                self.held -= 1;
                out.push(Merged::Duplicate(twin));
                self.stats.duplicates[other] += 1;
            }
        } else {
            entry.held.push_back((self.arrivals, item));
            self.arrivals += 1;
            self.held += 1;
            self.stats.peak_held = self.stats.peak_held.max(self.held);
        }
        let complete = if self.authority == Side::New {
            // The live set has stopped: the key waits only for new copies of what it delivered.
            entry.seen[Side::New.index()] >= entry.seen[Side::Live.index()]
        } else {
            // Every copy either set saw is accounted for.
            entry.seen[this] == entry.seen[other] && entry.held.is_empty()
        };
        if complete {
            self.entries.remove(&key);
        }
        self.stats.peak_keys = self.stats.peak_keys.max(self.entries.len());
        if let Some(skew) = skew {
            self.record_skew(skew, now);
        }
    }

    /// Forgets keys older than the span. [`MergeWindow::offer`] does it too; call it when
    /// nothing is offered for a while.
    ///
    /// A key that still holds new-set copies while the live set has authority is not forgotten:
    /// its twin has not come, and releasing the copy now could put it ahead of the live set's
    /// earlier events of the same guild (a live set that lags). It waits for the twin or for the
    /// switch, when it is delivered in order. The live set delivers every event of the guilds it
    /// covers, so a copy waits that long only for a guild whose live shard is down.
    pub fn expire(&mut self, now: Instant, out: &mut Vec<Merged<T>>) {
        let span = self.span();
        while let Some(&(key, first_seen)) = self.order.front() {
            if now.saturating_duration_since(first_seen) < span {
                break;
            }
            self.order.pop_front();
            let Some(entry) = self
                .entries
                .get(&key)
                .filter(|entry| entry.first_seen == first_seen)
            else {
                continue;
            };
            if self.authority == Side::Live && !entry.held.is_empty() {
                self.pinned.push_back((key, first_seen));
            } else {
                self.forget(key, out);
                self.stats.expired_unmatched += 1;
            }
        }
        self.compact_order();
    }

    /// The switch: the live set has stopped forwarding (its last copies were offered), so the
    /// held copies' twins will not come. They are delivered, in the order they came, and the new
    /// set has authority from here on.
    pub fn flip(&mut self, out: &mut Vec<Merged<T>>) {
        if self.authority == Side::New {
            return;
        }
        // In the order they came, not key by key: a key can hold several copies (an event
        // repeated with the same bytes, such as a presence that did not change), and the events
        // of its guild that came between them must stay between them.
        let mut released = Vec::with_capacity(self.held);
        for entry in self.entries.values_mut() {
            entry.delivered += entry.held.len() as u32;
            released.extend(entry.held.drain(..));
        }
        released.sort_unstable_by_key(|&(arrival, _)| arrival);
        self.stats.delivered[Side::New.index()] += released.len() as u64;
        self.stats.released_unmatched += released.len() as u64;
        out.extend(released.into_iter().map(|(_, item)| Merged::Deliver(item)));
        self.pinned.clear();
        self.held = 0;
        self.authority = Side::New;
        // What the new set has seen as often as the live set is complete.
        self.entries
            .retain(|_, entry| entry.seen[Side::Live.index()] > entry.seen[Side::New.index()]);
    }

    /// The reshard is abandoned: the held copies go back to the caller undelivered (the live set,
    /// which keeps authority, delivers their twins, or a restart's resume replays them).
    pub fn abort(self) -> Vec<T> {
        let MergeWindow {
            mut entries,
            order,
            pinned,
            ..
        } = self;
        let mut held = Vec::new();
        for (key, first_seen) in pinned.into_iter().chain(order) {
            if let Some(entry) = entries.remove(&key) {
                if entry.first_seen == first_seen {
                    held.extend(entry.held.into_iter().map(|(_, item)| item));
                } else {
                    entries.insert(key, entry);
                }
            }
        }
        held
    }

    /// Which set has authority.
    pub fn authority(&self) -> Side {
        self.authority
    }

    /// How long a key waits for its twin: four times the skew of the last 30 to 60 s (its 99th
    /// percentile, see [`SKEW_QUANTILE`]), within the limits.
    pub fn span(&self) -> Duration {
        (self.skew() * SPAN_PER_SKEW).clamp(self.limits.span_min, self.limits.span_max)
    }

    /// The skew the span follows: the 99th percentile of the last 30 to 60 s.
    pub fn skew(&self) -> Duration {
        self.skew_recent[0]
            .quantile()
            .max(self.skew_recent[1].quantile())
    }

    /// Keys held now.
    pub fn keys(&self) -> usize {
        self.entries.len()
    }

    /// Copies held for their twin now.
    pub fn held(&self) -> usize {
        self.held
    }

    pub fn stats(&self) -> MergeStats {
        self.stats
    }

    /// Removes `key`, delivering the copies it held.
    fn forget(&mut self, key: u64, out: &mut Vec<Merged<T>>) {
        if let Some(entry) = self.entries.remove(&key) {
            for (_, item) in entry.held {
                self.held -= 1;
                out.push(Merged::Deliver(item));
                self.stats.delivered[self.authority.other().index()] += 1;
                self.stats.released_unmatched += 1;
            }
        }
    }

    fn evict_oldest(&mut self, out: &mut Vec<Merged<T>>) {
        while let Some((key, first_seen)) =
            self.pinned.pop_front().or_else(|| self.order.pop_front())
        {
            if self
                .entries
                .get(&key)
                .is_some_and(|entry| entry.first_seen == first_seen)
            {
                self.forget(key, out);
                self.stats.evicted_for_room += 1;
                return;
            }
        }
    }

    /// Completed keys leave stale slots in `order`; when they outnumber the live ones, rebuild
    /// it so that its memory stays proportional to the keys held.
    fn compact_order(&mut self) {
        if self.order.len() > 64 && self.order.len() > 2 * self.entries.len() {
            let entries = &self.entries;
            self.order.retain(|(key, first_seen)| {
                entries
                    .get(key)
                    .is_some_and(|entry| entry.first_seen == *first_seen)
            });
        }
    }

    fn record_skew(&mut self, skew: Duration, now: Instant) {
        let started = *self.skew_period_started.get_or_insert(now);
        if now.saturating_duration_since(started) >= SKEW_PERIOD {
            let current = std::mem::take(&mut self.skew_recent[0]);
            self.skew_recent[1] = current;
            self.skew_period_started = Some(now);
        }
        self.skew_recent[0].add(skew);
        self.stats.max_skew = self.stats.max_skew.max(skew);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: MergeLimits = MergeLimits {
        keys_max: 1000,
        span_min: Duration::from_secs(10),
        span_max: Duration::from_secs(60),
    };

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Test copies: (side, key, a number to tell them apart).
    type Copy = (Side, u64, u32);

    struct World {
        window: MergeWindow<Copy>,
        out: Vec<Merged<Copy>>,
        t0: Instant,
    }

    impl World {
        fn new(limits: MergeLimits) -> World {
            World {
                window: MergeWindow::new(limits),
                out: Vec::new(),
                t0: Instant::now(),
            }
        }

        /// Offers a copy at `at` after the start; what came out of it.
        fn offer(&mut self, side: Side, key: u64, n: u32, at: Duration) -> Vec<Merged<Copy>> {
            self.window
                .offer(side, key, (side, key, n), self.t0 + at, &mut self.out);
            std::mem::take(&mut self.out)
        }
    }

    use Merged::{Deliver, Duplicate};
    use Side::{Live, New};

    #[test]
    fn the_live_sets_copies_go_out_as_they_come_and_the_new_sets_wait_for_them() {
        let mut world = World::new(LIMITS);
        // Event 1 reaches the live set first: delivered; the new set's twin is a duplicate.
        assert_eq!(world.offer(Live, 1, 0, ms(0)), [Deliver((Live, 1, 0))]);
        assert_eq!(world.offer(New, 1, 0, ms(5)), [Duplicate((New, 1, 0))]);
        // Event 2 reaches the new set first: held, then the live copy goes out and the held one
        // is its duplicate.
        assert_eq!(world.offer(New, 2, 0, ms(6)), []);
        assert_eq!(world.window.held(), 1);
        assert_eq!(
            world.offer(Live, 2, 0, ms(9)),
            [Deliver((Live, 2, 0)), Duplicate((New, 2, 0))]
        );
        assert_eq!(
            world.window.keys(),
            0,
            "complete keys are forgotten at once"
        );
        assert_eq!(world.window.held(), 0);
        let stats = world.window.stats();
        assert_eq!(stats.delivered, [2, 0]);
        assert_eq!(stats.duplicates, [0, 2]);
        assert_eq!(stats.max_skew, ms(5));
    }

    #[test]
    fn identical_events_are_delivered_as_often_as_the_busier_set_saw_them() {
        let mut world = World::new(LIMITS);
        // The same `d` twice in each set, in every interleaving below.
        assert_eq!(world.offer(Live, 9, 1, ms(0)), [Deliver((Live, 9, 1))]);
        assert_eq!(world.offer(Live, 9, 2, ms(1)), [Deliver((Live, 9, 2))]);
        assert_eq!(world.offer(New, 9, 1, ms(2)), [Duplicate((New, 9, 1))]);
        assert_eq!(world.offer(New, 9, 2, ms(3)), [Duplicate((New, 9, 2))]);
        assert_eq!(world.offer(New, 7, 1, ms(4)), []);
        assert_eq!(world.offer(New, 7, 2, ms(4)), []);
        assert_eq!(
            world.offer(Live, 7, 1, ms(5)),
            [Deliver((Live, 7, 1)), Duplicate((New, 7, 1))]
        );
        assert_eq!(
            world.offer(Live, 7, 2, ms(6)),
            [Deliver((Live, 7, 2)), Duplicate((New, 7, 2))]
        );
        assert_eq!(world.window.keys(), 0);
        // A third copy in one set only (a guild only the live set covered at the time).
        assert_eq!(world.offer(Live, 7, 3, ms(7)), [Deliver((Live, 7, 3))]);
        assert_eq!(world.window.keys(), 1);
    }

    #[test]
    fn a_held_copy_waits_for_its_twin_past_the_span_and_goes_out_at_the_switch() {
        let mut world = World::new(LIMITS);
        // A lagging live set: the new set's copies of 1 and 2 wait, past the span, for theirs.
        assert_eq!(world.offer(New, 1, 0, ms(0)), []);
        assert_eq!(world.offer(New, 2, 0, ms(100)), []);
        let late = LIMITS.span_min + ms(500);
        assert_eq!(
            world.offer(Live, 1, 0, late),
            [Deliver((Live, 1, 0)), Duplicate((New, 1, 0))]
        );
        // Key 3 is the live set's alone (a new shard not connected yet): it expires.
        assert_eq!(world.offer(Live, 3, 0, late), [Deliver((Live, 3, 0))]);
        world
            .window
            .expire(world.t0 + late + LIMITS.span_max, &mut world.out);
        assert_eq!(world.window.stats().expired_unmatched, 1);
        assert_eq!(world.window.held(), 1, "2 still waits");
        // The live shard of 2's guild is down; at the switch 2 goes out.
        let mut out = Vec::new();
        world.window.flip(&mut out);
        assert_eq!(out, [Deliver((New, 2, 0))]);
        assert_eq!(world.window.stats().released_unmatched, 1);
    }

    #[test]
    fn an_occurrence_the_new_set_never_saw_does_not_pair_with_a_later_identical_one() {
        // Event x happens once before the new shard connects, then again after: after the
        // span, the first occurrence's key is gone, so the new set's copy of the second pairs
        // with the live set's second copy, whichever set has authority.
        let mut world = World::new(LIMITS);
        assert_eq!(world.offer(Live, 7, 1, ms(0)), [Deliver((Live, 7, 1))]);
        let later = LIMITS.span_min + ms(1);
        world.window.expire(world.t0 + later, &mut world.out);
        let mut out = Vec::new();
        world.window.flip(&mut out);
        assert_eq!(
            world.offer(New, 7, 2, later + ms(1)),
            [Deliver((New, 7, 2))],
            "the second occurrence is not taken for the twin of the first"
        );
    }

    #[test]
    fn at_the_switch_held_copies_go_out_in_order_and_the_new_set_has_authority() {
        let mut world = World::new(LIMITS);
        assert_eq!(world.offer(Live, 1, 0, ms(0)), [Deliver((Live, 1, 0))]);
        assert_eq!(world.offer(New, 2, 0, ms(1)), []);
        assert_eq!(world.offer(New, 3, 0, ms(2)), []);
        // The live set stopped forwarding before its copies of 2 and 3.
        let mut out = Vec::new();
        world.window.flip(&mut out);
        assert_eq!(out, [Deliver((New, 2, 0)), Deliver((New, 3, 0))]);
        assert_eq!(world.window.authority(), New);
        // The new set's late copy of 1 is a duplicate; its new events go out at once.
        assert_eq!(world.offer(New, 1, 0, ms(3)), [Duplicate((New, 1, 0))]);
        assert_eq!(world.offer(New, 4, 0, ms(4)), [Deliver((New, 4, 0))]);
        assert_eq!(
            world.window.keys(),
            0,
            "nothing waits for a live twin any more"
        );
    }

    #[test]
    fn at_the_switch_a_repeated_event_goes_out_where_each_copy_came_not_with_the_first() {
        // A guild whose live shard is down: only the new set sees its events, and one of them
        // repeats byte for byte (2), with another event (3) between the two.
        let mut world = World::new(LIMITS);
        assert_eq!(world.offer(New, 2, 0, ms(0)), []);
        assert_eq!(world.offer(New, 3, 0, ms(1)), []);
        assert_eq!(world.offer(New, 2, 1, ms(2)), []);
        let mut out = Vec::new();
        world.window.flip(&mut out);
        assert_eq!(
            out,
            [
                Deliver((New, 2, 0)),
                Deliver((New, 3, 0)),
                Deliver((New, 2, 1))
            ]
        );
        assert_eq!(world.window.held(), 0);
        assert_eq!(world.window.stats().released_unmatched, 3);
    }

    #[test]
    fn an_abort_hands_the_held_copies_back_undelivered() {
        let mut world = World::new(LIMITS);
        assert_eq!(world.offer(New, 1, 0, ms(0)), []);
        assert_eq!(world.offer(Live, 2, 0, ms(1)), [Deliver((Live, 2, 0))]);
        assert_eq!(world.offer(New, 3, 0, ms(2)), []);
        assert_eq!(world.window.abort(), [(New, 1, 0), (New, 3, 0)]);
    }

    #[test]
    fn the_span_follows_the_measured_skew_within_its_limits() {
        let mut world = World::new(LIMITS);
        assert_eq!(world.window.span(), LIMITS.span_min);
        world.offer(New, 1, 0, ms(0));
        world.offer(Live, 1, 0, Duration::from_secs(5));
        assert_eq!(world.window.span(), Duration::from_secs(20));
        // 16 s is within the 20 s span: matched, and 4 × 16 s is capped.
        world.offer(Live, 2, 0, Duration::from_secs(6));
        assert_eq!(
            world.offer(New, 2, 0, Duration::from_secs(22)),
            [Duplicate((New, 2, 0))]
        );
        assert_eq!(world.window.span(), LIMITS.span_max, "capped");
        // A minute later with small skews only, the large one no longer counts.
        world.offer(New, 3, 0, Duration::from_secs(100));
        world.offer(Live, 3, 0, Duration::from_secs(100) + ms(10));
        world.offer(New, 4, 0, Duration::from_secs(131));
        world.offer(Live, 4, 0, Duration::from_secs(131));
        assert_eq!(world.window.span(), LIMITS.span_min);
        assert_eq!(world.window.stats().max_skew, Duration::from_secs(16));
    }

    #[test]
    fn the_span_follows_most_skews_not_the_outliers() {
        let mut world = World::new(LIMITS);
        // 300 events 3 s apart between the sets, then two 9.9 s apart.
        for key in 0..300 {
            world.offer(Live, key, 0, ms(key));
        }
        for key in 0..300 {
            assert_eq!(
                world.offer(New, key, 0, ms(3000 + key)),
                [Duplicate((New, key, 0))]
            );
        }
        assert_eq!(world.window.span(), Duration::from_secs(12));
        for key in 300..302 {
            world.offer(Live, key, 0, ms(3400));
        }
        for key in 300..302 {
            world.offer(New, key, 0, ms(13_300));
        }
        assert_eq!(world.window.stats().max_skew, ms(9900));
        assert_eq!(
            world.window.span(),
            Duration::from_secs(12),
            "two outliers in 302 do not set the span"
        );
    }

    #[test]
    fn the_key_bound_holds_and_what_it_pushes_out_is_counted() {
        let limits = MergeLimits {
            keys_max: 3,
            ..LIMITS
        };
        let mut world = World::new(limits);
        for key in 0..10 {
            world.offer(Live, key, 0, ms(key));
            assert!(world.window.keys() <= 3);
        }
        // A held copy pushed out to make room is delivered, not lost.
        assert_eq!(world.offer(New, 20, 0, ms(20)), []);
        assert_eq!(world.offer(Live, 21, 0, ms(21)), [Deliver((Live, 21, 0))]);
        assert_eq!(world.offer(Live, 22, 0, ms(22)), [Deliver((Live, 22, 0))]);
        assert_eq!(
            world.offer(Live, 23, 0, ms(23)),
            [Deliver((New, 20, 0)), Deliver((Live, 23, 0))]
        );
        let stats = world.window.stats();
        assert_eq!(stats.evicted_for_room, 11);
        assert_eq!(stats.peak_keys, 3);
        // The newest keys are the ones kept.
        assert_eq!(world.offer(New, 23, 0, ms(30)), [Duplicate((New, 23, 0))]);
    }

    #[test]
    fn memory_stays_proportional_to_the_keys_held() {
        let mut world = World::new(LIMITS);
        for key in 0..100_000u64 {
            let at = Duration::from_micros(key);
            world.offer(Live, key, 0, at);
            world.offer(New, key, 0, at);
        }
        assert_eq!(world.window.keys(), 0);
        world.window.expire(world.t0 + ms(200), &mut world.out);
        assert!(
            world.window.order.len() <= 64,
            "{}",
            world.window.order.len()
        );
    }

    /// Two sets see the same stream of events (some identical to each other) in the same order,
    /// with different delays, and the live set stops at some point (the switch): whatever the
    /// interleaving, the bot gets the stream once, in order, and every copy is either delivered
    /// or a duplicate.
    #[test]
    fn any_interleaving_and_switch_point_gives_the_stream_once_in_order() {
        let events: Vec<u64> = (0..300u64).map(|i| (i * 7919) % 97).collect();
        for seed in 0..300u64 {
            let mut window: MergeWindow<(Side, usize)> = MergeWindow::new(LIMITS);
            let t0 = Instant::now();
            let mut rng = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407)
                | 1;
            let mut next = || {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng
            };
            // The live set forwards the stream up to `stop`, then hands over.
            let stop = (next() % events.len() as u64) as usize;
            let (mut live, mut new) = (0usize, 0usize);
            let mut out = Vec::new();
            let mut flipped = false;
            let mut step = 0u64;
            while new < events.len() || live < stop {
                step += 1;
                let now = t0 + Duration::from_micros(step);
                if live < stop && (next() % 2 == 0) {
                    window.offer(Live, events[live], (Live, live), now, &mut out);
                    live += 1;
                } else if live == stop && !flipped && next() % 3 == 0 {
                    window.flip(&mut out);
                    flipped = true;
                } else if new < events.len() && (flipped || new < live + 40) {
                    window.offer(New, events[new], (New, new), now, &mut out);
                    new += 1;
                }
            }
            if !flipped {
                window.flip(&mut out);
            }
            let delivered: Vec<usize> = out
                .iter()
                .filter_map(|merged| match merged {
                    Merged::Deliver((_, index)) => Some(*index),
                    Merged::Duplicate(_) => None,
                })
                .collect();
            let keys: Vec<u64> = delivered.iter().map(|&i| events[i]).collect();
            assert_eq!(keys, events, "seed {seed}, stop {stop}");
            assert_eq!(
                out.len(),
                stop + events.len(),
                "seed {seed}: every copy accounted for"
            );
        }
    }
}
