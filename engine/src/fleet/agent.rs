//! The fleet's agent: this host's membership, the assigner's passes when this host holds that
//! lease, the shard leases, the shards started and handed over, and the sessions in Redis.
//!
//! One thread, one Redis connection, a step every tick (a third of the host lease, a quarter
//! of the shard lease, whichever is shorter; every 50 ms while a hand-over waits for the bot).
//!
//! Safety rules, in the order a step applies them:
//! 1. A lease whose local deadline passed stops its shard (close 4000, session kept): the
//!    deadline is the lease's length from when the last successful renewal was *sent*, less a
//!    margin, so it always falls before Redis lets the lease go. A watchdog thread ([`watch`])
//!    enforces it every 50 ms, whatever the agent's own thread is waiting for (a Redis that
//!    answers slowly can hold a step for seconds).
//! 2. Renewal: a lease another host holds, or that the assignment gave away while Redis lost
//!    it, stops the shard at once.
//! 3. A shard is started only once its lease is granted, resuming the session stored in Redis.
//! 4. A shard the assignment moved away is handed over: closed with 4000, and once the bot has
//!    acknowledged everything it forwarded (or after [`FleetSettings::handover_timeout`]), its
//!    session is saved with that sequence under the lease's token and the lease released. The
//!    new owner resumes from there: no identify, nothing twice.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::FleetCounters;
use super::assign::{self, Host};
use super::store::{
    Acquire, HostInfo, HostRecord, LeaseRecord, Renewal, Store, StoreError, millis,
};
use crate::control::{ControlHandle, Nudge};
use crate::sink::SinkPositions;

/// What the agent is told at start.
#[derive(Debug, Clone)]
pub struct FleetSettings {
    pub cluster: String,
    pub host: HostInfo,
    pub host_lease: Duration,
    pub shard_lease: Duration,
    pub moves_per_minute: u32,
    pub total_shards: u32,
    /// How often the sessions of running shards are written to Redis.
    pub session_save_interval: Duration,
    /// Most time a hand-over waits for the bot to acknowledge the shard's last records.
    pub handover_timeout: Duration,
}

impl FleetSettings {
    /// Time between two steps.
    pub fn tick(&self) -> Duration {
        (self.host_lease / 3)
            .min(self.shard_lease / 4)
            .max(Duration::from_millis(50))
    }

    /// How long before Redis's end of a lease the holder stops its shard: a tick, so that a
    /// late step still stops it in time, and never less than 200 ms.
    fn lease_margin(&self) -> Duration {
        self.tick().max(Duration::from_millis(200))
    }
}

/// What `GET /cluster` shows, as the last step saw it.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    pub redis_connected: bool,
    pub last_error: Option<String>,
    pub assigner: String,
    pub hosts: Vec<HostRecord>,
    /// Shard → host, as the assignment says.
    pub assignment: BTreeMap<u32, String>,
    /// The leases held in the fleet.
    pub leases: BTreeMap<u32, LeaseRecord>,
    /// This host's shards: held (with token) and being handed over.
    pub held: BTreeMap<u32, u64>,
    pub handing_over: Vec<u32>,
    /// When this host takes its first shards (a new fleet state waits a shard lease).
    pub epoch_ms: u64,
}

/// Shared between the agent's thread and the rest of the process.
pub(super) struct AgentShared {
    pub(super) settings: FleetSettings,
    /// The engine stops: no new shards; keep renewing until `finish`.
    pub(super) stopping: AtomicBool,
    /// The sink has flushed: save every session, release every lease, leave.
    pub(super) finish: AtomicBool,
    pub(super) counters: Arc<FleetCounters>,
    pub(super) view: Mutex<ClusterView>,
    /// Requests from the admin API: move this shard to that host.
    pub(super) moves: Mutex<Vec<(u32, String)>>,
    /// Each held shard's lease deadline, for the watchdog.
    pub(super) deadlines: Mutex<BTreeMap<u32, Instant>>,
    /// Shards the watchdog stopped, for the agent to forget.
    pub(super) lapsed: Mutex<Vec<u32>>,
}

impl AgentShared {
    pub(super) fn view(&self) -> std::sync::MutexGuard<'_, ClusterView> {
        self.view.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Debug, Clone, Copy)]
struct Held {
    token: u64,
    /// Stop the shard at this instant unless a renewal moves it.
    deadline: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Leaving {
    since: Instant,
}

pub(super) struct Agent {
    shared: Arc<AgentShared>,
    client: redis::Client,
    store: Option<Store>,
    control: ControlHandle,
    positions: SinkPositions,
    held: BTreeMap<u32, Held>,
    leaving: BTreeMap<u32, Leaving>,
    epoch_ms: u64,
    sessions_saved_at: Instant,
    /// Moves the assigner may still make (refilled at `moves_per_minute`).
    move_credit: f64,
    credit_at: Instant,
    /// The error of the last failed step was logged (once per outage).
    outage_logged: bool,
    /// This host's counters as JSON, written with each beat for the fleet's totals.
    stats: Stats,
}

/// Reads this host's counters as a JSON object.
pub type Stats = Box<dyn Fn() -> String + Send>;

impl Agent {
    pub(super) fn new(
        shared: Arc<AgentShared>,
        client: redis::Client,
        store: Store,
        control: ControlHandle,
        positions: SinkPositions,
        stats: Stats,
    ) -> Agent {
        let moves = f64::from(shared.settings.moves_per_minute);
        Agent {
            shared,
            client,
            store: Some(store),
            control,
            positions,
            held: BTreeMap::new(),
            leaving: BTreeMap::new(),
            epoch_ms: 0,
            sessions_saved_at: Instant::now(),
            move_credit: moves,
            credit_at: Instant::now(),
            outage_logged: false,
            stats,
        }
    }

    fn settings(&self) -> &FleetSettings {
        &self.shared.settings
    }

    /// Steps until told to finish, then hands every shard over and leaves.
    pub(super) fn run(mut self) {
        let tick = self.settings().tick();
        let mut next = Instant::now();
        loop {
            if self.shared.finish.load(Ordering::Acquire) {
                self.leave();
                return;
            }
            let now = Instant::now();
            if now >= next {
                next = now + tick;
                self.step_logged(now);
            } else {
                if !self.leaving.is_empty() {
                    // A hand-over waits on the bot: look often.
                    self.stop_lapsed();
                    if let Err(error) = self.progress_handovers(now) {
                        self.failed(&error);
                    }
                    self.publish_held();
                }
                // Sessions at their own pace (a failover replays what the bot got since the
                // last save), not only at the tick's.
                if self.store.is_some()
                    && self.save_due(now)
                    && let Err(error) = self.save_sessions(false)
                {
                    self.failed(&error);
                }
            }
            std::thread::sleep(Duration::from_millis(50).min(next.saturating_duration_since(now)));
        }
    }

    fn step_logged(&mut self, now: Instant) {
        match self.step(now) {
            Ok(()) => {
                if std::mem::take(&mut self.outage_logged) {
                    tracing::info!("Redis answers again: the fleet goes on");
                }
                let mut view = self.shared.view();
                view.redis_connected = true;
                view.last_error = None;
            }
            Err(error) => self.failed(&error),
        }
        self.publish_held();
    }

    /// This host's shards, for `GET /cluster` and the metrics.
    fn publish_held(&self) {
        let mut view = self.shared.view();
        view.held = self.held.iter().map(|(s, h)| (*s, h.token)).collect();
        view.handing_over = self.leaving.keys().copied().collect();
        view.epoch_ms = self.epoch_ms;
        self.shared
            .counters
            .shards_held
            .store(self.held.len() as u64, Ordering::Relaxed);
    }

    fn failed(&mut self, error: &StoreError) {
        self.store = None;
        self.shared
            .counters
            .redis_errors
            .fetch_add(1, Ordering::Relaxed);
        if !std::mem::replace(&mut self.outage_logged, true) {
            let keep = self
                .held
                .values()
                .map(|held| held.deadline.saturating_duration_since(Instant::now()))
                .min()
                .unwrap_or_default();
            tracing::warn!(
                %error,
                shards = self.held.len(),
                keeps_them_for_ms = keep.as_millis() as u64,
                "Redis does not answer: this host keeps forwarding the shards it holds until \
                 their leases would run out, takes no new ones and identifies nothing"
            );
        }
        let mut view = self.shared.view();
        view.redis_connected = false;
        view.last_error = Some(error.to_string());
    }

    fn store(&mut self) -> Result<&mut Store, StoreError> {
        if self.store.is_none() {
            self.store = Some(Store::connect(&self.client, &self.shared.settings.cluster)?);
        }
        Ok(self.store.as_mut().expect("just connected"))
    }

    /// One step (see the module's rules).
    fn step(&mut self, now: Instant) -> Result<(), StoreError> {
        self.stop_lapsed();
        let settings = self.settings().clone();
        let me = settings.host.id.clone();
        let sent = Instant::now();
        let stats = (self.stats)();
        let beat = self
            .store()?
            .host_beat(&settings.host, settings.host_lease, &stats)?;
        if self.epoch_ms != 0 && beat.epoch_ms != self.epoch_ms {
            tracing::warn!(
                shards = self.held.len(),
                "Redis lost the fleet's state (a new epoch): this host takes its own shards \
                 back; no host takes another's for a shard lease"
            );
        }
        self.epoch_ms = beat.epoch_ms;

        // Renewals, leaving shards included (their sessions are not saved yet).
        let list: Vec<(u32, u64)> = self.held.iter().map(|(s, h)| (*s, h.token)).collect();
        let renewals = self.store()?.renew(&me, settings.shard_lease, &list)?;
        let deadline = sent + settings.shard_lease - settings.lease_margin();
        for ((shard_id, _), renewal) in list.into_iter().zip(renewals) {
            match renewal {
                Renewal::Renewed => {
                    if let Some(held) = self.held.get_mut(&shard_id) {
                        held.deadline = deadline;
                    }
                }
                Renewal::Retaken(token) => {
                    tracing::info!(
                        shard = shard_id,
                        token,
                        "lease taken back after Redis lost it"
                    );
                    self.held.insert(shard_id, Held { token, deadline });
                }
                Renewal::Lost => {
                    tracing::warn!(shard = shard_id, "lease lost to another host: stopping it");
                    self.shared
                        .counters
                        .leases_lost
                        .fetch_add(1, Ordering::Relaxed);
                    self.drop_shard(shard_id);
                }
            }
        }
        self.sync_deadlines();

        // Moves asked for here go to Redis, where the assigner (on whichever host) takes them.
        let asked = std::mem::take(
            &mut *self
                .shared
                .moves
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for (shard_id, host) in &asked {
            self.store()?.place(*shard_id, host)?;
        }
        // Who lives and who holds what, read once a step: for the assigner's pass and the view.
        let hosts = self.store()?.hosts(beat.now_ms)?;
        let leases = self.store()?.leases(settings.total_shards)?;
        let (assigner, holder) = self.store()?.assigner(&me, settings.host_lease)?;
        // A new fleet state (a first start, or a Redis that lost its data) waits a host lease
        // before the first pass, so that every live host has registered and the holders have
        // taken their shards back: the pass then keeps them where they run.
        let settled = beat.now_ms >= beat.epoch_ms + millis(settings.host_lease);
        if assigner && settled && !self.shared.stopping.load(Ordering::Acquire) {
            self.assign_pass(&hosts, &leases)?;
        }
        let assignment = self.store()?.assignment()?;
        let pinned: BTreeSet<u32> = settings.host.pinned.iter().copied().collect();
        let mine: BTreeSet<u32> = if pinned.is_empty() {
            assignment
                .iter()
                .filter(|(_, host)| **host == me)
                .map(|(shard, _)| *shard)
                .collect()
        } else {
            pinned.clone()
        };

        // Moved away (the assignment names another host; a shard it does not name, as after
        // Redis lost its data, stays where it runs): hand over.
        let moved: Vec<u32> = self
            .held
            .keys()
            .copied()
            .filter(|shard| {
                let elsewhere = if pinned.is_empty() {
                    assignment.get(shard).is_some_and(|host| *host != me)
                } else {
                    !pinned.contains(shard)
                };
                elsewhere && !self.leaving.contains_key(shard)
            })
            .collect();
        for shard_id in moved {
            tracing::info!(shard = shard_id, "handing the shard over to its new host");
            self.control.nudge_shard(shard_id, Nudge::Stop);
            self.leaving.insert(shard_id, Leaving { since: now });
        }

        // Given to this host: take the lease, then start it.
        if !self.shared.stopping.load(Ordering::Acquire) {
            let wanted: Vec<u32> = mine
                .iter()
                .copied()
                .filter(|shard| !self.held.contains_key(shard))
                .collect();
            for shard_id in wanted {
                self.take(shard_id, !pinned.is_empty(), &settings)?;
            }
        }

        self.progress_handovers(now)?;
        if self.save_due(now) {
            self.save_sessions(false)?;
        }

        let mut view = self.shared.view();
        view.assigner = holder;
        view.hosts = hosts;
        view.assignment = assignment;
        view.leases = leases;
        Ok(())
    }

    /// Whether the sessions are due to be saved; if so, counts them as saved now.
    fn save_due(&mut self, now: Instant) -> bool {
        let due =
            now.duration_since(self.sessions_saved_at) >= self.settings().session_save_interval;
        if due {
            self.sessions_saved_at = now;
        }
        due
    }

    /// Forgets the shards the watchdog stopped (their leases were not renewed in time).
    fn stop_lapsed(&mut self) {
        let lapsed = std::mem::take(&mut *lock(&self.shared.lapsed));
        for shard_id in lapsed {
            self.drop_shard(shard_id);
        }
    }

    /// Stops a shard this host no longer holds, and forgets it.
    fn drop_shard(&mut self, shard_id: u32) {
        self.control.nudge_shard(shard_id, Nudge::Stop);
        self.control.unplace_shard(shard_id);
        self.held.remove(&shard_id);
        self.leaving.remove(&shard_id);
        self.sync_deadlines();
    }

    /// Hands the held shards' deadlines to the watchdog.
    fn sync_deadlines(&self) {
        *lock(&self.shared.deadlines) = self
            .held
            .iter()
            .map(|(shard, held)| (*shard, held.deadline))
            .collect();
    }

    fn take(
        &mut self,
        shard_id: u32,
        pinned: bool,
        settings: &FleetSettings,
    ) -> Result<(), StoreError> {
        let sent = Instant::now();
        let me = settings.host.id.clone();
        match self
            .store()?
            .acquire(shard_id, &me, settings.shard_lease, pinned)?
        {
            Acquire::Granted(token) => {
                let stored = self.store()?.load_session(shard_id)?;
                let session = stored
                    .filter(|stored| stored.shard_count == settings.total_shards)
                    .map(|stored| stored.session);
                let counters = &self.shared.counters;
                counters.leases_granted.fetch_add(1, Ordering::Relaxed);
                if session.is_some() {
                    counters.sessions_taken_over.fetch_add(1, Ordering::Relaxed);
                }
                tracing::info!(
                    shard = shard_id,
                    token,
                    resumes = session.is_some(),
                    "shard lease granted: starting the shard"
                );
                self.held.insert(
                    shard_id,
                    Held {
                        token,
                        deadline: sent + settings.shard_lease - settings.lease_margin(),
                    },
                );
                self.sync_deadlines();
                self.control.place_shard(shard_id, session);
            }
            Acquire::Held(_) | Acquire::NotAssigned | Acquire::HostExpired | Acquire::Quiet(_) => {}
        }
        Ok(())
    }

    /// The assigner's pass: live hosts, the current assignment and the move budget in; the
    /// changes out (only while this host holds the assigner's lease, checked in the script).
    fn assign_pass(
        &mut self,
        hosts: &[HostRecord],
        leases: &BTreeMap<u32, LeaseRecord>,
    ) -> Result<(), StoreError> {
        let settings = self.settings().clone();
        let me = settings.host.id.clone();
        // Shards pinned to a live host (`--shards`): the assignment names that host, so that
        // whoever ran them while it was away hands them back.
        let pinned: BTreeMap<u32, &str> = hosts
            .iter()
            .flat_map(|host| {
                host.info
                    .pinned
                    .iter()
                    .map(move |shard| (*shard, host.info.id.as_str()))
            })
            .collect();
        let candidates: Vec<Host> = hosts
            .iter()
            .filter(|host| host.info.pinned.is_empty())
            .map(|host| Host {
                id: host.info.id.clone(),
                capacity: host.info.capacity,
            })
            .collect();
        let current = self.store()?.assignment()?;
        // A shard the assignment does not name (it was lost with Redis's data) counts as where
        // its lease is, when that host lives.
        let mut wanted = current.clone();
        for (shard_id, lease) in leases {
            if candidates.iter().any(|host| host.id == lease.host) {
                wanted
                    .entry(*shard_id)
                    .or_insert_with(|| lease.host.clone());
            }
        }
        let now = Instant::now();
        let elapsed = now.duration_since(self.credit_at).as_secs_f64();
        self.credit_at = now;
        let per_minute = f64::from(settings.moves_per_minute);
        self.move_credit = (self.move_credit + per_minute * elapsed / 60.0).min(per_minute);
        let mut pass = assign::assign(
            settings.total_shards,
            &candidates,
            &wanted,
            self.move_credit.floor() as u32,
        );
        self.move_credit -= pass.moved.len() as f64;
        // Operators' moves (POST /shards/{id}/move) stand while their host lives.
        let placements = self.store()?.placements()?;
        let mut gone = Vec::new();
        for (shard_id, host) in placements {
            if candidates.iter().any(|candidate| candidate.id == host)
                && shard_id < settings.total_shards
                && !pinned.contains_key(&shard_id)
            {
                if pass.owners.get(&shard_id) != Some(&host) {
                    tracing::info!(shard = shard_id, to = %host, "assigner: a shard placed by hand");
                }
                pass.owners.insert(shard_id, host);
            } else {
                gone.push(shard_id);
            }
        }
        self.store()?.forget_placements(&gone)?;
        let mut changes: Vec<(u32, Option<&str>)> = Vec::new();
        for shard_id in 0..settings.total_shards {
            let owner = match pinned.get(&shard_id) {
                Some(host) => Some(*host),
                None => pass.owners.get(&shard_id).map(String::as_str),
            };
            if current.get(&shard_id).map(String::as_str) != owner {
                changes.push((shard_id, owner));
            }
        }
        if !changes.is_empty() {
            tracing::info!(
                changes = changes.len(),
                reassigned = pass.reassigned.len(),
                moved = pass.moved.len(),
                unplaced = pass.unplaced.len(),
                "assigner: shards placed"
            );
            self.store()?.write_assignment(&me, &changes)?;
        }
        Ok(())
    }

    /// Finishes hand-overs whose shard ended and whose records the bot acknowledged (or that
    /// waited too long): session saved under the lease, lease released.
    fn progress_handovers(&mut self, now: Instant) -> Result<(), StoreError> {
        if self.leaving.is_empty() {
            return Ok(());
        }
        let settings = self.settings().clone();
        let positions: BTreeMap<u32, _> = self
            .positions
            .acknowledged_sessions(settings.total_shards)
            .into_iter()
            .map(|position| (position.shard_id, position))
            .collect();
        let leaving: Vec<(u32, Leaving)> = self.leaving.iter().map(|(s, l)| (*s, *l)).collect();
        for (shard_id, leaving) in leaving {
            let position = positions.get(&shard_id);
            let settled = position.is_none_or(|p| p.ended && !p.unacknowledged);
            let late = now.duration_since(leaving.since) >= settings.handover_timeout;
            if !settled && !late {
                continue;
            }
            if late && !settled {
                self.shared
                    .counters
                    .handover_timeouts
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    shard = shard_id,
                    "the bot did not acknowledge the shard's last records in time: handing \
                     the session over from the last acknowledged sequence (the new host gets \
                     the rest again from Discord)"
                );
            }
            let Some(held) = self.held.get(&shard_id).copied() else {
                self.leaving.remove(&shard_id);
                continue;
            };
            let me = settings.host.id.clone();
            if let Some(position) = position {
                let saved = self.store()?.save_session(
                    shard_id,
                    &me,
                    held.token,
                    &position.session,
                    settings.total_shards,
                )?;
                if saved {
                    self.shared
                        .counters
                        .sessions_saved
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
            self.store()?.release(shard_id, &me, held.token)?;
            self.shared
                .counters
                .handed_over
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(shard = shard_id, "shard handed over");
            self.leaving.remove(&shard_id);
            self.held.remove(&shard_id);
            self.sync_deadlines();
            self.control.unplace_shard(shard_id);
        }
        Ok(())
    }

    /// Writes the acknowledged session of every held shard under its lease (`all`: the leaving
    /// ones too). A refused write means the lease is not ours any more: that shard stops.
    fn save_sessions(&mut self, all: bool) -> Result<(), StoreError> {
        let settings = self.settings().clone();
        let me = settings.host.id.clone();
        let positions: Vec<(u32, u64, crate::shard::Session)> = self
            .positions
            .acknowledged_sessions(settings.total_shards)
            .into_iter()
            .filter(|position| all || !self.leaving.contains_key(&position.shard_id))
            .filter_map(|position| {
                let held = self.held.get(&position.shard_id)?;
                Some((position.shard_id, held.token, position.session))
            })
            .collect();
        let batch: Vec<(u32, u64, &crate::shard::Session)> = positions
            .iter()
            .map(|(shard, token, session)| (*shard, *token, session))
            .collect();
        let written = self
            .store()?
            .save_sessions(&me, &batch, settings.total_shards)?;
        for ((shard_id, _, _), saved) in positions.iter().zip(written) {
            if saved {
                self.shared
                    .counters
                    .sessions_saved
                    .fetch_add(1, Ordering::Relaxed);
            } else {
                self.shared
                    .counters
                    .session_saves_refused
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(shard = shard_id, "session save refused: the lease is gone");
                self.drop_shard(*shard_id);
            }
        }
        Ok(())
    }

    /// The process stops and the sink delivered what it could: every session saved with what
    /// the bot acknowledged, every lease released, the host lease ended. The other hosts resume
    /// the shards without an identify.
    fn leave(&mut self) {
        let settings = self.settings().clone();
        let me = settings.host.id.clone();
        let outcome = (|| -> Result<usize, StoreError> {
            self.save_sessions(true)?;
            let held: Vec<(u32, Held)> = self.held.iter().map(|(s, h)| (*s, *h)).collect();
            let mut released = 0;
            for (shard_id, held) in held {
                if self.store()?.release(shard_id, &me, held.token)? {
                    released += 1;
                }
            }
            self.store()?.host_leave(&me)?;
            Ok(released)
        })();
        match outcome {
            Ok(released) => tracing::info!(
                released,
                "left the fleet: sessions saved and leases released for the other hosts"
            ),
            Err(error) => tracing::error!(
                %error,
                shards = self.held.len(),
                lease_ms = settings.shard_lease.as_millis() as u64,
                "could not hand the shards over through Redis: the other hosts take them when \
                 their leases run out, from the sessions saved last"
            ),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The watchdog: every 50 ms, stops each held shard whose lease deadline passed (close 4000,
/// session kept), until the agent finishes. It does no I/O but the nudge to the shard's core.
pub(super) fn watch(shared: &AgentShared, control: &ControlHandle) {
    while !shared.finish.load(Ordering::Acquire) {
        let now = Instant::now();
        let lapsed: Vec<u32> = {
            let mut deadlines = lock(&shared.deadlines);
            let lapsed: Vec<u32> = deadlines
                .iter()
                .filter(|(_, deadline)| **deadline <= now)
                .map(|(shard, _)| *shard)
                .collect();
            for shard_id in &lapsed {
                deadlines.remove(shard_id);
            }
            lapsed
        };
        for &shard_id in &lapsed {
            tracing::warn!(
                shard = shard_id,
                "lease not renewed in time: stopping the shard (closed with 4000) before \
                 another host may take it"
            );
            shared
                .counters
                .leases_lapsed
                .fetch_add(1, Ordering::Relaxed);
            control.nudge_shard(shard_id, Nudge::Stop);
            control.unplace_shard(shard_id);
        }
        lock(&shared.lapsed).extend(lapsed);
        std::thread::sleep(Duration::from_millis(50));
    }
}
