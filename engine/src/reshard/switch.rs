//! Reshard stage: the switch from one shard set to another, as a state machine driven by what
//! the runtime observes (the new set's shards, the sink's hand-over and durable point) and by
//! `now`. It decides; the runtime does: start shards on the cores, tell the sink, save the
//! sessions, close a set. No I/O, no clock, tested on its own.
//!
//! Phases, for a reshard from `from` to `to` shards:
//!
//! 1. **Warming.** The new set identifies, one identify round at a time (`max_concurrency`
//!    shards, one per bucket), each round once the previous one has a session: the new set
//!    never holds more than one identify slot per bucket, so a live shard that needs a new
//!    session waits at most one slot. The sink merges both sets (the live set has authority).
//! 2. **Overlap.** Every new shard is fully ready (its READY's guilds arrived). After
//!    [`OVERLAP_SETTLE`], the live set hands over: each of its shards stops forwarding and
//!    says so through its ring, in order behind its last forwarded record.
//! 3. **Handing over.** When the sink has every live shard's hand-over, it flips the merge
//!    (the new set has authority) and notes the index of the next record it queues: the
//!    barrier.
//! 4. **Committing.** Once every record before the barrier is durable (delivered, or on the
//!    spill with nothing older in memory), the saved sessions switch to the new set, the old
//!    set is closed with 1000, and the bot gets `RESHARD_FINISHED`. A restart before this
//!    resumes the old set whole; after it, the new set whole.
//! 5. **Draining.** The merge keeps dropping the new set's late copies of what the old set
//!    delivered for one span, then ends.
//!
//! An abort (`DELETE /reshard`, a new shard on a fatal close code, warming far past its
//! estimate) is possible until the hand-over: the new set is closed with 1000 and the live set
//! goes on as if nothing happened. After the hand-over the switch always completes.

use std::time::{Duration, Instant};

use crate::shard::ShardState;

use super::plan::Trigger;

/// Both sets run at least this long with every new shard ready before the hand-over: longer
/// than the merge's longest span, so that no key of an event from before a new shard connected
/// (which the new set never sees) is left to pair with a later identical one once the new set
/// has authority, and the merge has measured the sets' skew.
pub const OVERLAP_SETTLE: Duration = Duration::from_secs(6);
/// Warming is abandoned when it takes this many times its estimate, plus [`WARMING_SLACK`].
pub const WARMING_PATIENCE: u32 = 3;
pub const WARMING_SLACK: Duration = Duration::from_secs(120);

/// Where a reshard stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Warming,
    Overlap,
    HandingOver,
    Committing,
    Draining,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Warming => "warming",
            Phase::Overlap => "overlap",
            Phase::HandingOver => "handing_over",
            Phase::Committing => "committing",
            Phase::Draining => "draining",
        }
    }
}

/// What the runtime must do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// The bot's notice: `RESHARD_STARTED` `{"from":…,"to":…}`.
    NoticeStarted { from: u32, to: u32 },
    /// The sink merges the two sets from now on, the live one with authority.
    BeginMerge { live: u32, new: u32 },
    /// Start these shards of the new set (the runtime spreads them over the cores).
    StartShards {
        shard_count: u32,
        shard_ids: Vec<u32>,
    },
    /// The live set's shards stop forwarding and say so through their rings; the sink flips
    /// the merge once it has every one and reports the barrier.
    HandOver { shard_count: u32 },
    /// Every record before the barrier is durable: save the new set's sessions from now on
    /// (and at once), and route commands to it.
    Commit { shard_count: u32 },
    /// Close every shard of a set with this code and end their tasks.
    RetireSet { shard_count: u32, close_code: u16 },
    /// The bot's notice: `RESHARD_FINISHED` `{"shards":…}`.
    NoticeFinished { shards: u32 },
    /// The merge ends (after the switch: its span passed; after an abort: at once, its held
    /// copies dropped, since the live set delivers their twins).
    EndMerge,
}

/// The new set's shards as the cores last reported them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewShard {
    pub shard_id: u32,
    pub state: ShardState,
    /// Every guild of its READY arrived.
    pub fully_ready: bool,
}

/// How a reshard ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Finished { from: u32, to: u32, took: Duration },
    Aborted { from: u32, to: u32, reason: String },
}

/// A reshard in progress.
#[derive(Debug)]
pub struct Switch {
    from: u32,
    to: u32,
    trigger: Trigger,
    started_at: Instant,
    phase: Phase,
    phase_since: Instant,
    /// The new set's shard ids, one identify round each.
    rounds: Vec<Vec<u32>>,
    /// Rounds started so far.
    started_rounds: usize,
    identify_interval: Duration,
    /// The index the sink's queue gave the hand-over barrier.
    barrier: Option<u64>,
    /// After the commit, how long the merge still runs.
    drain_for: Duration,
}

impl Switch {
    /// Starts a reshard; the first actions are what the runtime does now.
    pub fn start(
        from: u32,
        to: u32,
        trigger: Trigger,
        max_concurrency: u32,
        identify_interval: Duration,
        now: Instant,
    ) -> (Switch, Vec<Action>) {
        assert!(
            to > 0 && from > 0 && to != from,
            "a reshard changes the count"
        );
        let per_round = max_concurrency.max(1) as usize;
        let ids: Vec<u32> = (0..to).collect();
        let rounds: Vec<Vec<u32>> = ids.chunks(per_round).map(<[u32]>::to_vec).collect();
        let mut switch = Switch {
            from,
            to,
            trigger,
            started_at: now,
            phase: Phase::Warming,
            phase_since: now,
            rounds,
            started_rounds: 0,
            identify_interval,
            barrier: None,
            drain_for: Duration::ZERO,
        };
        let mut actions = vec![
            Action::NoticeStarted { from, to },
            Action::BeginMerge {
                live: from,
                new: to,
            },
        ];
        actions.extend(switch.next_round());
        (switch, actions)
    }

    /// Advances with the new set's shards as last reported; `None` while the reshard runs, or
    /// how it ended. The runtime does `actions` (appended) in order.
    pub fn tick(
        &mut self,
        new_shards: &[NewShard],
        now: Instant,
        actions: &mut Vec<Action>,
    ) -> Option<Outcome> {
        match self.phase {
            Phase::Warming | Phase::Overlap => {
                if let Some(shard) = new_shards.iter().find(|s| s.state == ShardState::Fatal) {
                    return Some(self.abort(
                        format!(
                            "new shard {} stopped on a fatal close code; the live set runs on",
                            shard.shard_id
                        ),
                        actions,
                    ));
                }
                if self.phase == Phase::Warming {
                    let deadline = self.estimate() * WARMING_PATIENCE + WARMING_SLACK;
                    if now.saturating_duration_since(self.started_at) > deadline {
                        return Some(self.abort(
                            format!(
                                "warming took more than {} s; the live set runs on",
                                deadline.as_secs()
                            ),
                            actions,
                        ));
                    }
                    self.warm(new_shards, now, actions);
                } else if now.saturating_duration_since(self.phase_since) >= OVERLAP_SETTLE {
                    self.enter(Phase::HandingOver, now);
                    actions.push(Action::HandOver {
                        shard_count: self.from,
                    });
                }
                None
            }
            // The sink's turn: [`Switch::handed_over`] and [`Switch::durable`] move these.
            Phase::HandingOver | Phase::Committing => None,
            Phase::Draining => {
                if now.saturating_duration_since(self.phase_since) >= self.drain_for {
                    actions.push(Action::EndMerge);
                    return Some(Outcome::Finished {
                        from: self.from,
                        to: self.to,
                        took: now.saturating_duration_since(self.started_at),
                    });
                }
                None
            }
        }
    }

    /// The sink has every live shard's hand-over and flipped the merge; `barrier` is the index
    /// of the first record queued after it.
    pub fn handed_over(&mut self, barrier: u64, now: Instant) {
        if self.phase == Phase::HandingOver {
            self.barrier = Some(barrier);
            self.enter(Phase::Committing, now);
        }
    }

    /// The sink's durable point is at `durable_before`; `merge_span` is how long the merge
    /// still waits for twins.
    pub fn durable(
        &mut self,
        durable_before: u64,
        merge_span: Duration,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        if self.phase != Phase::Committing || self.barrier.is_none_or(|b| durable_before < b) {
            return;
        }
        actions.push(Action::Commit {
            shard_count: self.to,
        });
        actions.push(Action::RetireSet {
            shard_count: self.from,
            close_code: 1000,
        });
        actions.push(Action::NoticeFinished { shards: self.to });
        self.drain_for = merge_span;
        self.enter(Phase::Draining, now);
    }

    /// `DELETE /reshard` (or the engine stopping): possible until the hand-over. `Err` says why
    /// not.
    pub fn cancel(&mut self, reason: &str, actions: &mut Vec<Action>) -> Result<Outcome, String> {
        match self.phase {
            Phase::Warming | Phase::Overlap => Ok(self.abort(reason.to_owned(), actions)),
            phase => Err(format!(
                "the live set has handed over ({}): the switch completes",
                phase.as_str()
            )),
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn from(&self) -> u32 {
        self.from
    }

    pub fn to(&self) -> u32 {
        self.to
    }

    pub fn trigger(&self) -> Trigger {
        self.trigger
    }

    pub fn started_at(&self) -> Instant {
        self.started_at
    }

    /// Identify rounds started, and in all.
    pub fn rounds(&self) -> (usize, usize) {
        (self.started_rounds, self.rounds.len())
    }

    /// Until every new shard has a session, at the identify buckets' pace: the rounds not
    /// started yet, one interval each.
    pub fn eta(&self) -> Duration {
        match self.phase {
            Phase::Warming => {
                self.identify_interval * (self.rounds.len() - self.started_rounds) as u32
            }
            _ => Duration::ZERO,
        }
    }

    /// The floor the identify buckets allow for the whole new set: the first round identifies
    /// at once, each later one an interval after the one before.
    pub fn estimate(&self) -> Duration {
        self.identify_interval * (self.rounds.len() as u32).saturating_sub(1)
    }

    fn warm(&mut self, new_shards: &[NewShard], now: Instant, actions: &mut Vec<Action>) {
        let started: Vec<u32> = self.rounds[..self.started_rounds].concat();
        let state_of = |id: u32| new_shards.iter().find(|s| s.shard_id == id);
        let all_identified = started.iter().all(|&id| {
            state_of(id).is_some_and(|s| matches!(s.state, ShardState::Active) || s.fully_ready)
        });
        if !all_identified {
            return;
        }
        if self.started_rounds < self.rounds.len() {
            actions.extend(self.next_round());
            return;
        }
        if started
            .iter()
            .all(|&id| state_of(id).is_some_and(|s| s.fully_ready))
        {
            self.enter(Phase::Overlap, now);
        }
    }

    fn next_round(&mut self) -> Option<Action> {
        let ids = self.rounds.get(self.started_rounds)?.clone();
        self.started_rounds += 1;
        Some(Action::StartShards {
            shard_count: self.to,
            shard_ids: ids,
        })
    }

    fn abort(&mut self, reason: String, actions: &mut Vec<Action>) -> Outcome {
        actions.push(Action::RetireSet {
            shard_count: self.to,
            close_code: 1000,
        });
        actions.push(Action::EndMerge);
        Outcome::Aborted {
            from: self.from,
            to: self.to,
            reason,
        }
    }

    fn enter(&mut self, phase: Phase, now: Instant) {
        self.phase = phase;
        self.phase_since = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIVE: Duration = Duration::from_secs(5);

    fn shards(ids: std::ops::Range<u32>, state: ShardState, fully_ready: bool) -> Vec<NewShard> {
        ids.map(|shard_id| NewShard {
            shard_id,
            state,
            fully_ready,
        })
        .collect()
    }

    #[test]
    fn the_overlap_outlasts_the_merges_longest_span() {
        assert!(OVERLAP_SETTLE > super::super::merge::MergeLimits::DEFAULT.span_max);
    }

    #[test]
    fn a_reshard_warms_round_by_round_overlaps_hands_over_commits_and_drains() {
        let t0 = Instant::now();
        let (mut switch, actions) = Switch::start(4, 8, Trigger::Manual, 4, FIVE, t0);
        assert_eq!(
            actions,
            [
                Action::NoticeStarted { from: 4, to: 8 },
                Action::BeginMerge { live: 4, new: 8 },
                Action::StartShards {
                    shard_count: 8,
                    shard_ids: vec![0, 1, 2, 3]
                }
            ]
        );
        assert_eq!(switch.rounds(), (1, 2));
        assert_eq!(switch.eta(), FIVE);
        assert_eq!(switch.estimate(), FIVE);
        let mut actions = Vec::new();
        // Round 0 still identifying: nothing new.
        let identifying = shards(0..4, ShardState::Identifying, false);
        assert_eq!(switch.tick(&identifying, t0 + FIVE, &mut actions), None);
        assert!(actions.is_empty());
        // Round 0 has sessions: round 1 starts.
        let mut seen = shards(0..4, ShardState::Active, false);
        switch.tick(&seen, t0 + FIVE, &mut actions);
        assert_eq!(
            actions,
            [Action::StartShards {
                shard_count: 8,
                shard_ids: vec![4, 5, 6, 7]
            }]
        );
        actions.clear();
        // Every shard active but not all fully ready: still warming.
        seen.extend(shards(4..8, ShardState::Active, false));
        switch.tick(&seen, t0 + FIVE * 2, &mut actions);
        assert_eq!(switch.phase(), Phase::Warming);
        // All fully ready: overlap, then the hand-over after the settle time.
        let ready = shards(0..8, ShardState::Active, true);
        switch.tick(&ready, t0 + FIVE * 3, &mut actions);
        assert_eq!(switch.phase(), Phase::Overlap);
        assert!(actions.is_empty());
        switch.tick(&ready, t0 + FIVE * 3 + OVERLAP_SETTLE, &mut actions);
        assert_eq!(actions, [Action::HandOver { shard_count: 4 }]);
        actions.clear();
        assert_eq!(switch.phase(), Phase::HandingOver);
        // The sink flips at barrier 1000; the durable point reaches it later.
        switch.handed_over(1000, t0 + FIVE * 4);
        assert_eq!(switch.phase(), Phase::Committing);
        switch.durable(999, FIVE, t0 + FIVE * 4, &mut actions);
        assert!(actions.is_empty());
        switch.durable(1000, FIVE, t0 + FIVE * 4, &mut actions);
        assert_eq!(
            actions,
            [
                Action::Commit { shard_count: 8 },
                Action::RetireSet {
                    shard_count: 4,
                    close_code: 1000
                },
                Action::NoticeFinished { shards: 8 }
            ]
        );
        actions.clear();
        assert_eq!(switch.phase(), Phase::Draining);
        // The merge runs one more span, then ends.
        assert_eq!(
            switch.tick(
                &ready,
                t0 + FIVE * 5 - Duration::from_millis(1),
                &mut actions
            ),
            None
        );
        let outcome = switch.tick(&ready, t0 + FIVE * 5, &mut actions);
        assert_eq!(actions, [Action::EndMerge]);
        assert_eq!(
            outcome,
            Some(Outcome::Finished {
                from: 4,
                to: 8,
                took: FIVE * 5
            })
        );
    }

    #[test]
    fn a_fatal_new_shard_aborts_and_the_live_set_runs_on() {
        let t0 = Instant::now();
        let (mut switch, _) = Switch::start(2, 4, Trigger::Manual, 4, FIVE, t0);
        let mut seen = shards(0..4, ShardState::Active, true);
        seen[2].state = ShardState::Fatal;
        let mut actions = Vec::new();
        let outcome = switch.tick(&seen, t0 + FIVE, &mut actions);
        assert!(
            matches!(outcome, Some(Outcome::Aborted { ref reason, .. }) if reason.contains("new shard 2"))
        );
        assert_eq!(
            actions,
            [
                Action::RetireSet {
                    shard_count: 4,
                    close_code: 1000
                },
                Action::EndMerge
            ]
        );
    }

    #[test]
    fn a_cancel_is_possible_until_the_hand_over_only() {
        let t0 = Instant::now();
        let (mut switch, _) = Switch::start(2, 4, Trigger::Manual, 4, FIVE, t0);
        let mut actions = Vec::new();
        assert!(switch.cancel("DELETE /reshard", &mut actions).is_ok());
        let (mut switch, _) = Switch::start(2, 4, Trigger::Manual, 4, FIVE, t0);
        let ready = shards(0..4, ShardState::Active, true);
        switch.tick(&ready, t0, &mut actions);
        switch.tick(&ready, t0 + OVERLAP_SETTLE, &mut actions);
        assert_eq!(switch.phase(), Phase::HandingOver);
        actions.clear();
        let refused = switch.cancel("DELETE /reshard", &mut actions).unwrap_err();
        assert!(refused.contains("handed over"), "{refused}");
        assert!(actions.is_empty());
    }

    #[test]
    fn warming_far_past_its_estimate_aborts() {
        let t0 = Instant::now();
        let (mut switch, _) = Switch::start(2, 4, Trigger::Manual, 1, FIVE, t0);
        assert_eq!(switch.estimate(), FIVE * 3);
        let stuck = shards(0..1, ShardState::WaitingToReconnect, false);
        let mut actions = Vec::new();
        let limit = FIVE * 3 * WARMING_PATIENCE + WARMING_SLACK;
        assert_eq!(switch.tick(&stuck, t0 + limit, &mut actions), None);
        let outcome = switch.tick(&stuck, t0 + limit + Duration::from_secs(1), &mut actions);
        assert!(
            matches!(outcome, Some(Outcome::Aborted { .. })),
            "{outcome:?}"
        );
    }
}
