//! Reshard stage: the merge of two shard sets' events into one stream, each event once.
//!
//! While a reshard runs, Discord sends every event of a guild to the guild's shard in each set
//! (the live set and the new one), each session with its own sequence numbers and at its own
//! time. The sink offers every record of either set to a [`MergeWindow`] under a key (a keyed
//! hash of the event's name and its raw `d`, which Discord sends byte for byte the same to
//! every session), and the window says whether this copy is the one to deliver.
//!
//! Exactly once, counted: per key the window counts the copies each set has seen and the copies
//! delivered. A copy is delivered when its set has now seen the key more often than it was
//! delivered, so each key reaches the bot as many times as the set that saw it most often saw
//! it: two genuinely identical events (the same `d` twice) are both delivered, and the twin of
//! each from the other set is not. Order per guild holds, since a guild's events come in order
//! from one shard of each set and the first copy of each is the one delivered.
//!
//! Bounded: a key whose two sets have seen it equally often is complete and forgotten at once;
//! what stays are keys only one set has seen so far, for [`MergeWindow::span`] after their
//! first copy, and never more than [`MergeLimits::keys_max`] of them. The span follows the skew
//! measured between the sets (four times the largest skew seen lately, within the limits). A
//! twin that comes later than the span, or after its key was pushed out to stay within the
//! bound, is delivered again: a duplicate, as at-least-once delivery allows, never a loss. Such
//! keys are counted ([`MergeStats::expired_unmatched`], [`MergeStats::evicted_for_room`]); so
//! are the keys only one set could see, such as the events of a guild whose new shard was not
//! connected yet.
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

/// What to do with a copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The first copy of this occurrence: forward it.
    Deliver,
    /// The other set's copy of an occurrence already delivered: drop it (counted).
    Duplicate,
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
    /// About 80 bytes per key held (map entry, order slot and hashing overhead).
    pub const BYTES_PER_KEY: usize = 80;

    /// One million keys (about 80 MiB at most), a span of 10 s to 60 s.
    pub const DEFAULT: MergeLimits = MergeLimits {
        keys_max: 1 << 20,
        span_min: Duration::from_secs(10),
        span_max: Duration::from_secs(60),
    };
}

/// Counters, read by the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MergeStats {
    /// Copies offered, per [`Side`] (live, new).
    pub offered: [u64; 2],
    /// Copies delivered, per side.
    pub delivered: [u64; 2],
    /// Copies dropped as the other set's twin, per side.
    pub duplicates: [u64; 2],
    /// Keys forgotten after the span with one set ahead: events only one set saw in time.
    pub expired_unmatched: u64,
    /// Keys forgotten early to stay within `keys_max`.
    pub evicted_for_room: u64,
    /// Most keys held at once.
    pub peak_keys: usize,
    /// Largest skew measured between the two copies of one event.
    pub max_skew: Duration,
}

/// Per key: when its first copy came, the copies each set has seen, and the copies delivered.
#[derive(Clone, Copy, Debug)]
struct Entry {
    first_seen: Instant,
    seen: [u32; 2],
    delivered: u32,
}

/// The keyed merge of two sets (see the module docs).
#[derive(Debug)]
pub struct MergeWindow {
    limits: MergeLimits,
    entries: HashMap<u64, Entry>,
    /// Keys in the order they were first seen, with that time: the eviction order. A key that
    /// was completed (and removed) or re-added later leaves a stale slot, skipped when reached.
    order: VecDeque<(u64, Instant)>,
    /// The largest skews of the current and the previous period (see [`SKEW_PERIOD`]).
    skew_recent: [Duration; 2],
    skew_period_started: Option<Instant>,
    stats: MergeStats,
}

/// The span follows the largest skew of the last one to two of these periods.
const SKEW_PERIOD: Duration = Duration::from_secs(30);
/// The span is this many times that skew.
const SPAN_PER_SKEW: u32 = 4;

impl MergeWindow {
    pub fn new(limits: MergeLimits) -> MergeWindow {
        assert!(limits.keys_max > 0, "the window holds at least one key");
        assert!(limits.span_min <= limits.span_max, "span_min ≤ span_max");
        MergeWindow {
            limits,
            entries: HashMap::new(),
            order: VecDeque::new(),
            skew_recent: [Duration::ZERO; 2],
            skew_period_started: None,
            stats: MergeStats::default(),
        }
    }

    /// A copy of the event with `key` came from `side` at `now`: deliver it or drop it.
    /// `now` never goes backwards between calls.
    pub fn offer(&mut self, side: Side, key: u64, now: Instant) -> Verdict {
        self.expire(now);
        let this = side.index();
        let other = side.other().index();
        self.stats.offered[this] += 1;
        let entry = match self.entries.get_mut(&key) {
            Some(entry) => entry,
            None => {
                if self.entries.len() >= self.limits.keys_max {
                    self.evict_oldest();
                }
                self.order.push_back((key, now));
                self.entries.entry(key).or_insert(Entry {
                    first_seen: now,
                    seen: [0, 0],
                    delivered: 0,
                })
            }
        };
        entry.seen[this] += 1;
        // The first copy of this side meets the other side's: one skew sample.
        let skew = (entry.seen[this] == 1 && entry.seen[other] > 0)
            .then(|| now.saturating_duration_since(entry.first_seen));
        let verdict = if entry.seen[this] > entry.delivered {
            entry.delivered += 1;
            Verdict::Deliver
        } else {
            Verdict::Duplicate
        };
        if entry.seen[this] == entry.seen[other] {
            // Complete: every copy either set saw is accounted for.
            self.entries.remove(&key);
        }
        self.stats.peak_keys = self.stats.peak_keys.max(self.entries.len());
        match verdict {
            Verdict::Deliver => self.stats.delivered[this] += 1,
            Verdict::Duplicate => self.stats.duplicates[this] += 1,
        }
        if let Some(skew) = skew {
            self.record_skew(skew, now);
        }
        verdict
    }

    /// Forgets keys older than the span. [`MergeWindow::offer`] does it too; call it when
    /// nothing is offered for a while, to free the memory.
    pub fn expire(&mut self, now: Instant) {
        let span = self.span();
        while let Some(&(key, first_seen)) = self.order.front() {
            if now.saturating_duration_since(first_seen) < span {
                break;
            }
            self.order.pop_front();
            if self
                .entries
                .get(&key)
                .is_some_and(|entry| entry.first_seen == first_seen)
            {
                self.entries.remove(&key);
                self.stats.expired_unmatched += 1;
            }
        }
        self.compact_order();
    }

    /// How long a key waits for its twin: four times the largest skew of the last 30 to 60 s,
    /// within the limits.
    pub fn span(&self) -> Duration {
        let skew = self.skew_recent[0].max(self.skew_recent[1]);
        (skew * SPAN_PER_SKEW).clamp(self.limits.span_min, self.limits.span_max)
    }

    /// Keys held now.
    pub fn keys(&self) -> usize {
        self.entries.len()
    }

    pub fn stats(&self) -> MergeStats {
        self.stats
    }

    fn evict_oldest(&mut self) {
        while let Some((key, first_seen)) = self.order.pop_front() {
            if self
                .entries
                .get(&key)
                .is_some_and(|entry| entry.first_seen == first_seen)
            {
                self.entries.remove(&key);
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
            self.skew_recent = [Duration::ZERO, self.skew_recent[0]];
            self.skew_period_started = Some(now);
        }
        self.skew_recent[0] = self.skew_recent[0].max(skew);
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

    #[test]
    fn each_event_is_delivered_once_whichever_set_sees_it_first() {
        let t0 = Instant::now();
        let mut window = MergeWindow::new(LIMITS);
        // Event 1 reaches the live set first, event 2 the new set first.
        assert_eq!(window.offer(Side::Live, 1, t0), Verdict::Deliver);
        assert_eq!(window.offer(Side::New, 2, t0 + ms(1)), Verdict::Deliver);
        assert_eq!(window.offer(Side::New, 1, t0 + ms(5)), Verdict::Duplicate);
        assert_eq!(window.offer(Side::Live, 2, t0 + ms(7)), Verdict::Duplicate);
        assert_eq!(window.keys(), 0, "complete keys are forgotten at once");
        let stats = window.stats();
        assert_eq!(stats.delivered, [1, 1]);
        assert_eq!(stats.duplicates, [1, 1]);
        assert_eq!(stats.max_skew, ms(6));
    }

    #[test]
    fn identical_events_are_delivered_as_often_as_the_busier_set_saw_them() {
        let t0 = Instant::now();
        let mut window = MergeWindow::new(LIMITS);
        // The same `d` twice in the live set, then twice in the new set.
        assert_eq!(window.offer(Side::Live, 9, t0), Verdict::Deliver);
        assert_eq!(window.offer(Side::Live, 9, t0 + ms(1)), Verdict::Deliver);
        assert_eq!(window.offer(Side::New, 9, t0 + ms(2)), Verdict::Duplicate);
        assert_eq!(window.offer(Side::New, 9, t0 + ms(3)), Verdict::Duplicate);
        // Interleaved: live, new, new, live.
        assert_eq!(window.offer(Side::Live, 7, t0), Verdict::Deliver);
        assert_eq!(window.offer(Side::New, 7, t0), Verdict::Duplicate);
        assert_eq!(window.offer(Side::New, 7, t0), Verdict::Deliver);
        assert_eq!(window.offer(Side::Live, 7, t0), Verdict::Duplicate);
        assert_eq!(window.keys(), 0);
        // A third copy in one set only (a guild only the live set covered at the time).
        assert_eq!(window.offer(Side::Live, 7, t0 + ms(4)), Verdict::Deliver);
        assert_eq!(window.keys(), 1);
    }

    #[test]
    fn a_key_one_set_never_sees_expires_after_the_span_and_is_counted() {
        let t0 = Instant::now();
        let mut window = MergeWindow::new(LIMITS);
        assert_eq!(window.offer(Side::Live, 1, t0), Verdict::Deliver);
        assert_eq!(window.offer(Side::Live, 2, t0 + ms(100)), Verdict::Deliver);
        window.expire(t0 + LIMITS.span_min - ms(1));
        assert_eq!(window.keys(), 2);
        window.expire(t0 + LIMITS.span_min);
        assert_eq!(window.keys(), 1);
        assert_eq!(window.stats().expired_unmatched, 1);
        // Past the span, a twin is delivered again: a duplicate at the bot, never a loss.
        assert_eq!(
            window.offer(Side::New, 1, t0 + LIMITS.span_min + ms(1)),
            Verdict::Deliver
        );
        // Within it, still matched.
        assert_eq!(
            window.offer(Side::New, 2, t0 + LIMITS.span_min + ms(2)),
            Verdict::Duplicate
        );
    }

    #[test]
    fn the_span_follows_the_measured_skew_within_its_limits() {
        let t0 = Instant::now();
        let mut window = MergeWindow::new(LIMITS);
        assert_eq!(window.span(), LIMITS.span_min);
        window.offer(Side::New, 1, t0);
        window.offer(Side::Live, 1, t0 + Duration::from_secs(5));
        assert_eq!(window.span(), Duration::from_secs(20));
        // 16 s is within the 20 s span: matched, and 4 × 16 s is capped.
        let t1 = t0 + Duration::from_secs(6);
        window.offer(Side::New, 2, t1);
        assert_eq!(
            window.offer(Side::Live, 2, t1 + Duration::from_secs(16)),
            Verdict::Duplicate
        );
        assert_eq!(window.span(), LIMITS.span_max, "capped");
        // A minute later with small skews only, the large one no longer counts.
        let later = t0 + Duration::from_secs(100);
        window.offer(Side::New, 3, later);
        window.offer(Side::Live, 3, later + ms(10));
        window.offer(Side::New, 4, later + Duration::from_secs(31));
        window.offer(Side::Live, 4, later + Duration::from_secs(31));
        assert_eq!(window.span(), LIMITS.span_min);
        assert_eq!(window.stats().max_skew, Duration::from_secs(16));
    }

    #[test]
    fn the_key_bound_holds_and_what_it_pushes_out_is_counted() {
        let t0 = Instant::now();
        let limits = MergeLimits {
            keys_max: 3,
            ..LIMITS
        };
        let mut window = MergeWindow::new(limits);
        for key in 0..10 {
            window.offer(Side::Live, key, t0 + ms(key));
            assert!(window.keys() <= 3);
        }
        let stats = window.stats();
        assert_eq!(stats.evicted_for_room, 7);
        assert_eq!(stats.peak_keys, 3);
        // The newest keys are the ones kept.
        assert_eq!(window.offer(Side::New, 9, t0 + ms(20)), Verdict::Duplicate);
        assert_eq!(window.offer(Side::New, 0, t0 + ms(21)), Verdict::Deliver);
    }

    #[test]
    fn memory_stays_proportional_to_the_keys_held() {
        let t0 = Instant::now();
        let mut window = MergeWindow::new(LIMITS);
        for key in 0..100_000u64 {
            let at = t0 + Duration::from_micros(key);
            assert_eq!(window.offer(Side::Live, key, at), Verdict::Deliver);
            assert_eq!(window.offer(Side::New, key, at), Verdict::Duplicate);
        }
        assert_eq!(window.keys(), 0);
        window.expire(t0 + Duration::from_millis(200));
        assert!(window.order.len() <= 64, "{}", window.order.len());
    }

    /// Two sets see the same stream of events (some identical to each other) in the same order,
    /// with different delays; whatever the interleaving, the merged output is each event once,
    /// in order.
    #[test]
    fn any_interleaving_of_two_ordered_copies_gives_the_stream_once_in_order() {
        use std::collections::VecDeque;
        // Events: keys with repeats (identical events).
        let events: Vec<u64> = (0..400u64).map(|i| (i * 7919) % 97).collect();
        for seed in 0..200u64 {
            let t0 = Instant::now();
            let mut window = MergeWindow::new(LIMITS);
            let mut live: VecDeque<u64> = events.iter().copied().collect();
            let mut new: VecDeque<u64> = events.iter().copied().collect();
            let mut rng = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let mut out = Vec::new();
            let mut step = 0u64;
            while !live.is_empty() || !new.is_empty() {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let side = match (live.is_empty(), new.is_empty()) {
                    (false, true) => Side::Live,
                    (true, false) => Side::New,
                    _ if rng % 2 == 0 => Side::Live,
                    _ => Side::New,
                };
                let key = match side {
                    Side::Live => live.pop_front(),
                    Side::New => new.pop_front(),
                }
                .unwrap();
                step += 1;
                if window.offer(side, key, t0 + Duration::from_micros(step)) == Verdict::Deliver {
                    out.push(key);
                }
            }
            assert_eq!(out, events, "seed {seed}");
            assert_eq!(window.keys(), 0, "seed {seed}");
        }
    }
}
