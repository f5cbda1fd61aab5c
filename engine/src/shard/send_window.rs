//! Sliding-window count of the payloads sent on one connection.
//!
//! Discord allows 120 payloads per connection per 60 s, heartbeats included. The window keeps the
//! send instants of the last `capacity` payloads and answers "may I send now?" and "when may I
//! send next?". No I/O, no clock: `now` comes in. Its memory grows with the sends inside the
//! window (an idle shard's heartbeats: a few instants), never past `capacity`, and goes with a
//! reset.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub(crate) struct SendWindow {
    /// Send instants, oldest first, never more than `capacity`.
    sent_at: VecDeque<Instant>,
    capacity: usize,
    window: Duration,
}

impl SendWindow {
    pub(crate) fn new(capacity: usize, window: Duration) -> Self {
        assert!(
            capacity > 0,
            "a send window must allow at least one payload"
        );
        Self {
            sent_at: VecDeque::new(),
            capacity,
            window,
        }
    }

    /// Forgets every send: a new connection starts with a fresh allowance.
    pub(crate) fn reset(&mut self) {
        self.sent_at = VecDeque::new();
    }

    /// Sends still inside the window at `now`.
    pub(crate) fn count(&mut self, now: Instant) -> usize {
        while let Some(&oldest) = self.sent_at.front() {
            // `saturating_duration_since`: a driver handing in an earlier `now` must not panic.
            if now.saturating_duration_since(oldest) >= self.window {
                self.sent_at.pop_front();
            } else {
                break;
            }
        }
        self.sent_at.len()
    }

    /// Records a send at `now`. Callers check [`SendWindow::count`] against their limit first.
    pub(crate) fn record(&mut self, now: Instant) {
        // Keep the deque sorted even if the driver's `now` went backwards.
        let at = self.sent_at.back().map_or(now, |&last| last.max(now));
        if self.sent_at.len() == self.capacity {
            // Only reachable if a caller skipped the count check; dropping the oldest keeps the bound.
            self.sent_at.pop_front();
        }
        self.sent_at.push_back(at);
    }

    /// The earliest instant at which fewer than `limit` sends are inside the window, or `None`
    /// when that is already true as far as the recorded sends go.
    pub(crate) fn free_at(&self, limit: usize) -> Option<Instant> {
        let limit = limit.min(self.capacity);
        let len = self.sent_at.len();
        if len < limit {
            return None;
        }
        // Sends are sorted: once the one at `len - limit` leaves the window, `limit - 1` remain.
        self.sent_at.get(len - limit).map(|&at| at + self.window)
    }
}

#[cfg(test)]
mod tests {
    use super::SendWindow;
    use std::time::{Duration, Instant};

    #[test]
    fn counts_and_frees_in_order() {
        let start = Instant::now();
        let mut window = SendWindow::new(3, Duration::from_secs(60));
        for second in 0..3 {
            let at = start + Duration::from_secs(second);
            assert!(window.count(at) < 3);
            window.record(at);
        }
        assert_eq!(window.count(start + Duration::from_secs(10)), 3);
        assert_eq!(window.free_at(3), Some(start + Duration::from_secs(60)));
        assert_eq!(window.free_at(2), Some(start + Duration::from_secs(61)));
        assert_eq!(window.count(start + Duration::from_secs(60)), 2);
        assert_eq!(window.count(start + Duration::from_secs(62)), 0);
    }

    #[test]
    fn earlier_now_does_not_panic_or_unsort() {
        let start = Instant::now() + Duration::from_secs(100);
        let mut window = SendWindow::new(4, Duration::from_secs(60));
        window.record(start);
        window.record(start - Duration::from_secs(5));
        assert_eq!(window.count(start - Duration::from_secs(50)), 2);
        assert_eq!(window.free_at(2), Some(start + Duration::from_secs(60)));
    }
}
