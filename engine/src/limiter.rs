//! The global identify limiter: one per process, shared by every core.
//!
//! Discord allows `max_concurrency` identifies per 5 s, one per bucket
//! (`shard_id % max_concurrency`), and `session_start_limit.total` per day; identifying with
//! `remaining` at 0 gets the token reset. A shard asks for a slot with
//! [`IdentifyLimiter::reserve`] and gets back the instant at which it may identify; the slot is
//! its own from then on, so shards never race for one. Requests in shard order start the
//! buckets in order (shards 0..M-1, then M..2M-1, ...), as Discord asks.
//!
//! No I/O and no clock reads: callers pass `now`. The lock is held for a few arithmetic
//! operations and never across an await.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Discord's identify window per bucket.
pub const IDENTIFY_INTERVAL_DEFAULT: Duration = Duration::from_secs(5);
/// Added to the window between two identifies of a bucket. Discord times an identify when it
/// reads it, not when it was sent: if the first of two arrives late (a busy gateway, network
/// jitter) and the second on time, they can look closer than 5 s, and the second gets op 9 and
/// costs an identify from the daily budget. Against the mock at 32 shards the first round was
/// read up to about 80 ms late; 250 ms adds 5 % to a cold start.
pub const IDENTIFY_SAFETY_MARGIN: Duration = Duration::from_millis(250);

/// The `session_start_limit` object of `GET /gateway/bot`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionStartLimit {
    pub total: u32,
    pub remaining: u32,
    /// Milliseconds until `remaining` refills to `total`.
    pub reset_after_ms: u64,
    pub max_concurrency: u32,
}

/// A granted identify slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reservation {
    /// The shard may send IDENTIFY at or after this instant.
    pub at: Instant,
    /// The bucket the slot was taken from.
    pub bucket: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimiterError {
    #[error("max_concurrency is 0; Discord never sends that, the /gateway/bot answer is broken")]
    ZeroConcurrency,
}

/// Spaces identifies per bucket and never spends more than `remaining` before `reset_after`.
#[derive(Debug)]
pub struct IdentifyLimiter {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    interval: Duration,
    /// Per bucket: the earliest instant its next identify may go out.
    next_free: Vec<Instant>,
    /// Per bucket: when its last identify actually went out (a slot's shard may be late: a
    /// busy core, a slow handshake), so the next one keeps the full interval from it.
    last_sent: Vec<Option<Instant>>,
    total: u32,
    /// Identifies left in the budget period that starts at `budget_from`.
    remaining: u32,
    /// When the budget `remaining` counts becomes usable: the past for the current period, a
    /// reset instant once the current period's budget is spent.
    budget_from: Instant,
    /// When the period after the budget's one begins (the budget refills to `total`).
    reset_at: Instant,
    granted: u64,
}

impl IdentifyLimiter {
    pub fn new(
        limit: SessionStartLimit,
        interval: Duration,
        now: Instant,
    ) -> Result<IdentifyLimiter, LimiterError> {
        if limit.max_concurrency == 0 {
            return Err(LimiterError::ZeroConcurrency);
        }
        Ok(IdentifyLimiter {
            inner: Mutex::new(Inner {
                interval,
                next_free: vec![now; limit.max_concurrency as usize],
                last_sent: vec![None; limit.max_concurrency as usize],
                total: limit.total,
                remaining: limit.remaining,
                budget_from: now,
                reset_at: now + Duration::from_millis(limit.reset_after_ms),
                granted: 0,
            }),
        })
    }

    /// Takes the next identify slot of `shard_id`'s bucket. When the daily budget is spent the
    /// slot lies after the reset (the budget then refills to `total`).
    pub fn reserve(&self, shard_id: u32, now: Instant) -> Reservation {
        let mut inner = self.lock();
        let buckets = inner.next_free.len() as u32;
        let bucket = shard_id % buckets;
        let mut at = inner.next_free[bucket as usize].max(now);
        while at >= inner.reset_at {
            // A slot in a later period: its budget is the full one.
            inner.refill();
        }
        if inner.remaining == 0 {
            // Spent: this and every later slot, in every bucket, waits for the reset.
            inner.refill();
        }
        at = at.max(inner.budget_from);
        inner.remaining -= 1;
        inner.granted += 1;
        let interval = inner.interval;
        inner.next_free[bucket as usize] = at + interval;
        Reservation { at, bucket }
    }

    /// At (or after) a reserved slot, before identifying: `None` to go ahead, the bucket being
    /// this shard's from `now` (the claim is atomic: a shard of the same bucket on another core
    /// checking a moment later waits a full interval); or the later instant to wait for,
    /// because the bucket's last identify went out (or was claimed) less than an interval ago.
    ///
    /// A shard can come to its slot late (its connect took longer than the lead) after the
    /// next slot's shard identified on time; the claim keeps the two an interval apart, and
    /// each later shard of the bucket moves back by the same amount.
    pub fn claim(&self, shard_id: u32, now: Instant) -> Option<Instant> {
        let mut inner = self.lock();
        let bucket = (shard_id % inner.next_free.len() as u32) as usize;
        let interval = inner.interval;
        if let Some(last) = inner.last_sent[bucket]
            && last + interval > now
        {
            return Some(last + interval);
        }
        inner.last_sent[bucket] = Some(now);
        inner.next_free[bucket] = inner.next_free[bucket].max(now + interval);
        None
    }

    /// The shard's IDENTIFY went out at `at`; the bucket's next one waits a full interval from
    /// there, whatever its reservation said.
    pub fn identified(&self, shard_id: u32, at: Instant) {
        let mut inner = self.lock();
        let bucket = (shard_id % inner.next_free.len() as u32) as usize;
        let interval = inner.interval;
        inner.last_sent[bucket] = Some(inner.last_sent[bucket].map_or(at, |last| last.max(at)));
        inner.next_free[bucket] = inner.next_free[bucket].max(at + interval);
    }

    /// Replaces the budget with a fresh `/gateway/bot` answer (other processes may share the
    /// token, so the local count drifts). Bucket spacing is kept.
    pub fn refresh(&self, limit: SessionStartLimit, now: Instant) {
        let mut inner = self.lock();
        inner.total = limit.total;
        inner.remaining = limit.remaining;
        inner.budget_from = now;
        inner.reset_at = now + Duration::from_millis(limit.reset_after_ms);
    }

    /// Identifies granted so far, and what is left of the budget.
    pub fn stats(&self) -> (u64, u32) {
        let inner = self.lock();
        (inner.granted, inner.remaining)
    }

    /// The earliest time every shard in `shard_ids` could have identified, were they asked
    /// for in order right now: the floor the buckets allow (for startup logs).
    pub fn minimum_startup(shard_count: u32, max_concurrency: u32, interval: Duration) -> Duration {
        let rounds = shard_count.div_ceil(max_concurrency.max(1));
        interval * rounds.saturating_sub(1)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The critical sections are arithmetic that cannot panic; a poisoned lock still holds
        // consistent numbers.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    /// Moves to the next budget period: usable from the reset on, full, and itself ending a
    /// day later.
    fn refill(&mut self) {
        self.remaining = self.total.max(1);
        self.budget_from = self.reset_at;
        self.reset_at += Duration::from_secs(24 * 3600);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(max_concurrency: u32, remaining: u32) -> SessionStartLimit {
        SessionStartLimit {
            total: 1000,
            remaining,
            reset_after_ms: 3_600_000,
            max_concurrency,
        }
    }

    #[test]
    fn one_identify_per_bucket_per_interval_in_shard_order() {
        let now = Instant::now();
        let limiter = IdentifyLimiter::new(limit(4, 1000), IDENTIFY_INTERVAL_DEFAULT, now).unwrap();
        let offsets: Vec<Duration> = (0..10)
            .map(|shard| limiter.reserve(shard, now).at - now)
            .collect();
        let five = Duration::from_secs(5);
        assert_eq!(offsets[..4], [Duration::ZERO; 4]);
        assert_eq!(offsets[4..8], [five; 4]);
        assert_eq!(offsets[8..], [five * 2; 2]);
        assert_eq!(limiter.stats(), (10, 990));
    }

    #[test]
    fn a_bucket_that_idled_is_free_again() {
        let now = Instant::now();
        let limiter = IdentifyLimiter::new(limit(1, 1000), IDENTIFY_INTERVAL_DEFAULT, now).unwrap();
        assert_eq!(limiter.reserve(0, now).at, now);
        let later = now + Duration::from_secs(60);
        assert_eq!(limiter.reserve(3, later).at, later);
        // Right after, the same bucket waits a full interval.
        assert_eq!(
            limiter.reserve(7, later).at,
            later + IDENTIFY_INTERVAL_DEFAULT
        );
    }

    #[test]
    fn never_identifies_past_remaining_before_the_reset() {
        let now = Instant::now();
        let reset_after = Duration::from_millis(3_600_000);
        let limiter = IdentifyLimiter::new(limit(16, 2), IDENTIFY_INTERVAL_DEFAULT, now).unwrap();
        assert_eq!(limiter.reserve(0, now).at, now);
        assert_eq!(limiter.reserve(1, now).at, now);
        // Budget spent: the third waits for the reset, which refills it.
        assert_eq!(limiter.reserve(2, now).at, now + reset_after);
        // So does every later one, in any bucket, although the next period's budget is full.
        for shard in 3..20 {
            assert!(
                limiter.reserve(shard, now).at >= now + reset_after,
                "shard {shard} may not identify before the reset"
            );
        }
        assert_eq!(limiter.stats(), (20, 1000 - 18));
    }

    #[test]
    fn a_late_identify_pushes_the_next_in_its_bucket() {
        let now = Instant::now();
        let five = IDENTIFY_INTERVAL_DEFAULT;
        let limiter = IdentifyLimiter::new(limit(2, 100), five, now).unwrap();
        assert_eq!(limiter.reserve(0, now).at, now);
        assert_eq!(limiter.reserve(2, now).at, now + five);
        // Shard 0 went out 300 ms late: shard 2 must wait until 5 s after that.
        let late = now + Duration::from_millis(300);
        limiter.identified(0, late);
        assert_eq!(limiter.claim(2, now + five), Some(late + five));
        assert_eq!(limiter.claim(2, late + five), None);
        // The other bucket is untouched, and later reservations start after the late one.
        assert_eq!(limiter.claim(1, now), None);
        assert_eq!(limiter.reserve(4, now).at, late + five * 2);
    }

    #[test]
    fn a_shard_late_for_its_slot_never_identifies_next_to_the_one_after_it() {
        let now = Instant::now();
        let five = IDENTIFY_INTERVAL_DEFAULT;
        let limiter = IdentifyLimiter::new(limit(1, 100), five, now).unwrap();
        let slots: Vec<Instant> = (0..4).map(|shard| limiter.reserve(shard, now).at).collect();
        assert_eq!(limiter.claim(0, slots[0]), None);
        // Shard 1's connect is slow; shard 2 comes on time and goes first.
        assert_eq!(limiter.claim(2, slots[2]), None);
        let late = slots[2] + Duration::from_millis(1500);
        assert_eq!(limiter.claim(1, late), Some(slots[2] + five));
        // Shard 1 then goes at slots[2] + 5 s, and shard 3, due then too, one interval later:
        // the claim is taken before either has flushed its identify.
        assert_eq!(limiter.claim(1, slots[2] + five), None);
        assert_eq!(limiter.claim(3, slots[3]), Some(slots[2] + five * 2));
        assert_eq!(limiter.claim(3, slots[2] + five * 2), None);
    }

    #[test]
    fn a_slot_after_the_reset_uses_the_next_budget() {
        let now = Instant::now();
        let reset_after = Duration::from_millis(3_600_000);
        let limiter = IdentifyLimiter::new(limit(1, 1), IDENTIFY_INTERVAL_DEFAULT, now).unwrap();
        assert_eq!(limiter.reserve(0, now).at, now);
        let after_reset = now + reset_after + Duration::from_secs(1);
        // Asked after the reset: the refilled budget applies at once.
        assert_eq!(limiter.reserve(0, after_reset).at, after_reset);
        assert_eq!(limiter.stats(), (2, 999));
    }

    #[test]
    fn refresh_replaces_the_budget() {
        let now = Instant::now();
        let limiter = IdentifyLimiter::new(limit(1, 5), IDENTIFY_INTERVAL_DEFAULT, now).unwrap();
        limiter.refresh(limit(1, 0), now);
        assert!(limiter.reserve(0, now).at >= now + Duration::from_secs(3600));
    }

    #[test]
    fn zero_concurrency_is_refused_and_minimum_startup_is_the_bucket_floor() {
        let now = Instant::now();
        assert_eq!(
            IdentifyLimiter::new(limit(0, 1), IDENTIFY_INTERVAL_DEFAULT, now).unwrap_err(),
            LimiterError::ZeroConcurrency
        );
        let five = IDENTIFY_INTERVAL_DEFAULT;
        assert_eq!(IdentifyLimiter::minimum_startup(8, 1, five), five * 7);
        assert_eq!(IdentifyLimiter::minimum_startup(8, 4, five), five);
        assert_eq!(
            IdentifyLimiter::minimum_startup(8, 16, five),
            Duration::ZERO
        );
    }
}
