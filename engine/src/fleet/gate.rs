//! Where a core's shard meets the fleet's identify limiter without doing any Redis I/O.
//!
//! A shard that needs a new session says so here ([`FleetGate::want`]); the fleet's identify
//! worker queues its ticket in Redis, and when the bucket grants it, records the grant here and
//! has the shard's core nudge the shard ([`crate::control::Nudge::IdentifyPermit`]). The shard
//! then takes the grant ([`FleetGate::take`]) and identifies at once, and reports when the
//! IDENTIFY went out ([`FleetGate::sent`]) so that the bucket keeps a full interval from then.
//!
//! A shard waits for its grant with its connection open (after HELLO, heartbeating), as
//! Discord allows, so that the grant is used within a round trip of being given.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

/// How old a grant may be when the shard comes to use it. The bucket's next grant comes an
/// interval (5 s and the margin) after this one, and the worker moves it back when the
/// IDENTIFY goes out later than its grant: a grant used within half an interval leaves that
/// report time to arrive. Older ones are given back and asked for again.
pub const GRANT_USABLE_FOR: Duration = Duration::from_millis(2500);

/// What the cores tell the identify worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateRequest {
    /// The shard needs an identify; `reconnect`: it ran a session before (it goes first).
    Want { shard_id: u32, reconnect: bool },
    /// The shard's granted IDENTIFY went out at this instant.
    Sent { shard_id: u32, at: Instant },
    /// The shard no longer needs one (it stopped, or resumed after all).
    Cancel { shard_id: u32 },
}

/// Shared by the cores and the identify worker.
#[derive(Debug)]
pub struct FleetGate {
    requests: Sender<GateRequest>,
    /// Shards whose grant came and was not taken yet, with when it came.
    granted: Mutex<HashMap<u32, Instant>>,
}

impl FleetGate {
    pub fn new(requests: Sender<GateRequest>) -> FleetGate {
        FleetGate {
            requests,
            granted: Mutex::new(HashMap::new()),
        }
    }

    /// Asks for an identify (once per need; asking again while waiting changes nothing there).
    pub fn want(&self, shard_id: u32, reconnect: bool) {
        // The worker ends only with the process; a send to it cannot fail before.
        let _ = self.requests.send(GateRequest::Want {
            shard_id,
            reconnect,
        });
    }

    /// Takes the shard's grant: true when it may identify now (a grant older than
    /// [`GRANT_USABLE_FOR`] is dropped).
    pub fn take(&self, shard_id: u32, now: Instant) -> bool {
        self.lock()
            .remove(&shard_id)
            .is_some_and(|at| now.saturating_duration_since(at) <= GRANT_USABLE_FOR)
    }

    /// The shard's IDENTIFY went out.
    pub fn sent(&self, shard_id: u32, at: Instant) {
        let _ = self.requests.send(GateRequest::Sent { shard_id, at });
    }

    /// The shard stopped waiting (stopped, or gave the shard away).
    pub fn cancel(&self, shard_id: u32) {
        self.lock().remove(&shard_id);
        let _ = self.requests.send(GateRequest::Cancel { shard_id });
    }

    /// The worker's side: the bucket granted the shard's ticket.
    pub fn grant(&self, shard_id: u32, now: Instant) {
        self.lock().insert(shard_id, now);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Instant>> {
        // Inserts and removals only: a poisoned map is still a consistent one.
        self.granted.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grant_is_taken_once_and_a_cancel_drops_it() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let gate = FleetGate::new(tx);
        gate.want(3, true);
        assert_eq!(
            rx.try_recv().unwrap(),
            GateRequest::Want {
                shard_id: 3,
                reconnect: true
            }
        );
        let now = Instant::now();
        assert!(!gate.take(3, now), "nothing granted yet");
        gate.grant(3, now);
        assert!(gate.take(3, now + GRANT_USABLE_FOR));
        assert!(!gate.take(3, now), "a grant is used once");
        gate.grant(4, now);
        gate.cancel(4);
        assert!(!gate.take(4, now));
        gate.grant(5, now);
        assert!(
            !gate.take(5, now + GRANT_USABLE_FOR + Duration::from_millis(1)),
            "too old"
        );
        assert_eq!(rx.try_recv().unwrap(), GateRequest::Cancel { shard_id: 4 });
    }
}
