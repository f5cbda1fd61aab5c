//! Control plane ↔ cores: what the admin API asks a core, the board a core's shard tasks
//! publish their status to, and the handle the admin API holds.
//!
//! The admin thread never touches a shard. It sends a [`CoreRequest`] over a crossbeam channel
//! and rings the core's [`Doorbell`]; the core's control task (on the core's own executor, which
//! sleeps until the bell rings or [`CONTROL_POLL`] passes) answers from the [`Board`] at once, or
//! stages the request for the shard's task and nudges it. Nothing here waits on a shard task: a
//! shard busy connecting cannot hold up an answer.
//!
//! Shard tasks publish to the board with plain `Cell` writes (same thread: no atomics, no
//! locks), once per loop turn, and copy their counters at most every
//! [`COUNTERS_PUBLISH_INTERVAL`]: the hot path pays a few stores per frame.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::config::ShardPlan;
use crate::shard::{Session, Shard, ShardConfig, ShardCounters, ShardState};

/// How often a core's control task looks for requests and the stop flag when its doorbell did
/// not ring (every sender rings it; this is the safety net, and an idle core's only wake-up
/// besides its shards' heartbeats).
pub const CONTROL_POLL: Duration = Duration::from_millis(250);
/// Most time between two copies of a shard's counters to its board slot.
pub const COUNTERS_PUBLISH_INTERVAL: Duration = Duration::from_millis(250);
/// Bot commands a shard accepts beyond those its machine already queues: staged on the board
/// until the shard task moves them into the machine (it does every loop turn). A shard holds at
/// most this plus [`ShardConfig::DEFAULT_COMMAND_QUEUE_CAPACITY`] commands of at most 4 KiB.
pub const COMMANDS_STAGED_MAX: usize = ShardConfig::DEFAULT_COMMAND_QUEUE_CAPACITY;
/// How long the admin API waits for a core's answer (a core answers as soon as its executor
/// runs the control task, unless it is stuck, which this then reports).
pub const CORE_ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// A request from the control plane to one core.
#[derive(Debug)]
pub enum CoreRequest {
    /// Every shard's status and the core's ring occupancy.
    Report { reply: Sender<CoreReport> },
    /// Queue a bot command (already checked by [`crate::shard::check_command_shape`]) on the
    /// selected shards of the set with `shard_count` shards (the live one when the command was
    /// routed) on this core.
    Command {
        selection: Selection,
        shard_count: u32,
        payload: Vec<u8>,
        reply: Sender<CommandReceipt>,
    },
    /// Reconnect a shard of the set with `shard_count` shards: resume, or with `new_session`
    /// identify anew (through the limiter).
    Reconnect {
        shard_id: u32,
        shard_count: u32,
        new_session: bool,
        reply: Sender<Result<(), ControlError>>,
    },
    /// Start these shards of the set with `shard_count` shards on this core (a reshard's new
    /// set), with `role`.
    StartShards {
        shard_count: u32,
        shard_ids: Vec<u32>,
        role: Role,
    },
    /// Tell every shard of the set with `shard_count` shards on this core: hand over, retire or
    /// become live.
    Set { shard_count: u32, nudge: Nudge },
    /// Start one shard of the live set (a fleet gave it to this host), resuming `session` if
    /// there is one.
    StartShard {
        shard_id: u32,
        shard_count: u32,
        session: Option<Session>,
    },
    /// Tell one shard (the newest of that id in the set).
    Shard {
        shard_id: u32,
        shard_count: u32,
        nudge: Nudge,
    },
}

/// What a shard is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Of the set the bot is fed by: everything it receives is forwarded, notices included, and
    /// bot commands go to it.
    Live,
    /// Of a reshard's new set while it warms up: its READY, its backfill GUILD_CREATEs and its
    /// SHARD_READY notices stay in the engine (the bot has those guilds from the live set); the
    /// rest goes to the sink's merge.
    Warming,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Live => "live",
            Role::Warming => "warming",
        }
    }
}

/// Which shards a command goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    One(u32),
    All,
}

impl Selection {
    fn includes(self, shard_id: u32) -> bool {
        match self {
            Selection::One(id) => id == shard_id,
            Selection::All => true,
        }
    }
}

/// Where a command goes, as the admin API knows it; resolved against one reading of the live
/// plan, so that a reshard's switch between reading the count and picking the shard cannot
/// send it to a shard of neither set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The shard of the live set that holds the guild.
    Guild(u64),
    Shard(u32),
    All,
}

/// What became of a command, per shard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandReceipt {
    /// Queued: it goes out as soon as the shard's send allowance permits.
    pub queued: Vec<u32>,
    /// Refused: the shard holds as many commands as it may.
    pub full: Vec<u32>,
    /// Refused: the shard stopped (shutdown or a fatal close code).
    pub stopped: Vec<u32>,
}

impl CommandReceipt {
    /// Adds another core's (or, in a fleet, another host's) receipt.
    pub fn merge(&mut self, other: CommandReceipt) {
        self.queued.extend(other.queued);
        self.full.extend(other.full);
        self.stopped.extend(other.stopped);
    }
}

/// One core's answer to [`CoreRequest::Report`].
#[derive(Debug, Clone)]
pub struct CoreReport {
    pub core: usize,
    pub shards: Vec<ShardStatus>,
    /// Records waiting in the core's ring to the sink, and its capacity.
    pub ring_records: usize,
    pub ring_capacity: usize,
}

/// A shard as its core last saw it.
#[derive(Debug, Clone)]
pub struct ShardStatus {
    pub shard_id: u32,
    /// The shard count of its set.
    pub shard_count: u32,
    pub role: Role,
    /// Every guild of its session's READY arrived.
    pub fully_ready: bool,
    pub core: usize,
    pub state: ShardState,
    /// Since the session's READY in this process (or its resume, for a session saved by the
    /// last run); `None` without a session.
    pub session_age: Option<Duration>,
    /// The last dispatch sequence of the session.
    pub sequence: Option<u64>,
    /// The last heartbeat round trip.
    pub heartbeat_latency: Option<Duration>,
    /// Guilds of the session (from READY, joins and leaves).
    pub guilds: u64,
    /// Since the last dispatch; `None` before the first.
    pub last_event_age: Option<Duration>,
    /// Commands waiting: staged on the board and queued in the machine.
    pub commands_waiting: u64,
    /// The machine's counters, at most [`COUNTERS_PUBLISH_INTERVAL`] old.
    pub counters: ShardCounters,
}

/// Why the control plane could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("shard {shard_id} is not run by this process (it runs shards {first}..={last})")]
    NotOwned {
        shard_id: u32,
        first: u32,
        last: u32,
    },
    #[error(
        "shard {shard_id} does not run on this host of the fleet (GET /cluster says which host \
         runs it)"
    )]
    NotHere { shard_id: u32 },
    #[error("core {core} did not answer within {} ms", CORE_ANSWER_TIMEOUT.as_millis())]
    CoreUnresponsive { core: usize },
    #[error("shard {shard_id} is {} and will not connect again", state.as_str())]
    ShardStopped { shard_id: u32, state: ShardState },
}

// ---- The admin side -------------------------------------------------------------------------

/// Wakes a core's task from any thread: the control task sleeps on it instead of polling, so an
/// idle core does not wake every few milliseconds and a request is answered at once.
#[derive(Default)]
pub struct Doorbell {
    rung: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Doorbell {
    /// Wakes the task waiting in [`Doorbell::rung`], or makes its next wait return at once.
    pub fn ring(&self) {
        self.rung.store(true, Ordering::Release);
        let waker = self
            .waker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Resolves once the bell rang since the last time this resolved.
    pub fn rung(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |context| {
            if self.rung.swap(false, Ordering::AcqRel) {
                return Poll::Ready(());
            }
            *self.waker.lock().unwrap_or_else(PoisonError::into_inner) =
                Some(context.waker().clone());
            // A ring between the check and storing the waker found no waker to wake.
            if self.rung.swap(false, Ordering::AcqRel) {
                return Poll::Ready(());
            }
            Poll::Pending
        })
    }
}

/// One core's end of the control plane: its request channel and its doorbell.
#[derive(Clone)]
pub struct CoreLink {
    requests: Sender<CoreRequest>,
    bell: Arc<Doorbell>,
}

impl CoreLink {
    pub fn new(requests: Sender<CoreRequest>, bell: Arc<Doorbell>) -> CoreLink {
        CoreLink { requests, bell }
    }

    /// Queues `request` for the core and wakes it.
    pub fn send(
        &self,
        request: CoreRequest,
    ) -> Result<(), crossbeam_channel::SendError<CoreRequest>> {
        self.requests.send(request)?;
        self.bell.ring();
        Ok(())
    }

    /// Wakes the core without a request (it looks at the stop flag).
    pub fn ring(&self) {
        self.bell.ring();
    }
}

/// The control plane's link to every core. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct ControlHandle {
    inner: Arc<HandleInner>,
}

struct HandleInner {
    /// Per core: its request channel and doorbell.
    cores: Vec<CoreLink>,
    /// In a fleet: the core each shard this host was given runs on (shards come and go one by
    /// one, each on the core with the fewest).
    placed: Mutex<HashMap<u32, usize>>,
    /// A fleet's host: only the placed shards are here, whatever the plan's range says.
    fleet: bool,
    /// The live set's plan: commands and reconnects go to its shards. A reshard's switch
    /// replaces it ([`ControlHandle::promote`]).
    live: Mutex<ShardPlan>,
}

impl ControlHandle {
    /// `cores[i]`: core `i`'s request channel; `plan` places the live set's shards on them in
    /// contiguous blocks of `plan.shards_per_core`.
    pub fn new(cores: Vec<CoreLink>, plan: ShardPlan) -> ControlHandle {
        Self::with_placement(cores, plan, false)
    }

    /// A fleet host's handle: its shards are those [`ControlHandle::place_shard`] placed.
    pub fn for_fleet(cores: Vec<CoreLink>, plan: ShardPlan) -> ControlHandle {
        Self::with_placement(cores, plan, true)
    }

    fn with_placement(cores: Vec<CoreLink>, plan: ShardPlan, fleet: bool) -> ControlHandle {
        ControlHandle {
            inner: Arc::new(HandleInner {
                cores,
                placed: Mutex::new(HashMap::new()),
                fleet,
                live: Mutex::new(plan),
            }),
        }
    }

    /// Wakes every core (to see the stop flag at once).
    pub fn ring_all(&self) {
        for core in &self.inner.cores {
            core.ring();
        }
    }

    /// The plan of the live set.
    pub fn plan(&self) -> ShardPlan {
        *self
            .inner
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The core that runs `shard_id` of the live set.
    pub fn core_of(&self, shard_id: u32) -> Result<usize, ControlError> {
        self.core_in(&self.plan(), shard_id)
    }

    fn core_in(&self, plan: &ShardPlan, shard_id: u32) -> Result<usize, ControlError> {
        if let Some(&core) = self.placed().get(&shard_id) {
            return Ok(core);
        }
        if self.inner.fleet {
            return Err(ControlError::NotHere { shard_id });
        }
        let not_owned = ControlError::NotOwned {
            shard_id,
            first: plan.shards.start(),
            last: plan.shards.end(),
        };
        if !(plan.shards.start()..=plan.shards.end()).contains(&shard_id) {
            return Err(not_owned);
        }
        let core = ((shard_id - plan.shards.start()) / plan.shards_per_core.max(1)) as usize;
        if core < self.inner.cores.len() {
            Ok(core)
        } else {
            Err(not_owned)
        }
    }

    /// The shard of the live set that receives a guild's events and commands:
    /// `(guild_id >> 22) % total`.
    pub fn shard_for_guild(&self, guild_id: u64) -> u32 {
        shard_of_guild(&self.plan(), guild_id)
    }

    /// Starts shards of another set (a reshard's new set, all of its `shard_count` shards being
    /// this process's), spread over the cores in contiguous blocks as the live set is.
    pub fn start_shards(&self, shard_count: u32, shard_ids: &[u32], role: Role) {
        let cores = self.inner.cores.len().max(1) as u32;
        let per_core = shard_count.div_ceil(cores).max(1);
        for (core, requests) in self.inner.cores.iter().enumerate() {
            let first = core as u32 * per_core;
            let mine: Vec<u32> = shard_ids
                .iter()
                .copied()
                .filter(|id| (first..first.saturating_add(per_core)).contains(id))
                .collect();
            if !mine.is_empty() {
                // A core that ended has dropped its receiver; its shards never report.
                let _ = requests.send(CoreRequest::StartShards {
                    shard_count,
                    shard_ids: mine,
                    role,
                });
            }
        }
    }

    /// Starts `shard_id` of the live set on the core with the fewest placed shards (a fleet
    /// gave it to this host); returns that core.
    pub fn place_shard(&self, shard_id: u32, session: Option<Session>) -> usize {
        let core = {
            let mut placed = self.placed();
            let mut load = vec![0usize; self.inner.cores.len().max(1)];
            for &core in placed.values() {
                load[core] += 1;
            }
            let core = (0..load.len()).min_by_key(|&core| load[core]).unwrap_or(0);
            placed.insert(shard_id, core);
            core
        };
        if let Some(requests) = self.inner.cores.get(core) {
            let _ = requests.send(CoreRequest::StartShard {
                shard_id,
                shard_count: self.plan().total_shards.get(),
                session,
            });
        }
        core
    }

    /// Tells one placed shard (a fleet's identify grant, or its stop); false when it is not
    /// placed here.
    pub fn nudge_shard(&self, shard_id: u32, nudge: Nudge) -> bool {
        let Some(&core) = self.placed().get(&shard_id) else {
            return false;
        };
        let _ = self.inner.cores[core].send(CoreRequest::Shard {
            shard_id,
            shard_count: self.plan().total_shards.get(),
            nudge,
        });
        true
    }

    /// Forgets where a shard ran (its task ended: the fleet gave it away).
    pub fn unplace_shard(&self, shard_id: u32) {
        self.placed().remove(&shard_id);
    }

    fn placed(&self) -> std::sync::MutexGuard<'_, HashMap<u32, usize>> {
        self.inner
            .placed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Tells every shard of a set, on every core.
    pub fn tell_set(&self, shard_count: u32, nudge: Nudge) {
        for requests in &self.inner.cores {
            let _ = requests.send(CoreRequest::Set { shard_count, nudge });
        }
    }

    /// A reshard's switch: `plan`'s set becomes the live one (commands and reconnects go to it,
    /// and its shards forward their notices).
    pub fn promote(&self, plan: ShardPlan) {
        *self
            .inner
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = plan;
        self.tell_set(plan.total_shards.get(), Nudge::Promote);
    }

    /// Every core's report, in core order.
    pub fn reports(&self) -> Result<Vec<CoreReport>, ControlError> {
        let mut waiting = Vec::with_capacity(self.inner.cores.len());
        for (core, requests) in self.inner.cores.iter().enumerate() {
            let (reply, answer) = crossbeam_channel::bounded(1);
            // A core that ended has dropped its receiver: it reports as unresponsive below.
            let _ = requests.send(CoreRequest::Report { reply });
            waiting.push((core, answer));
        }
        let deadline = Instant::now() + CORE_ANSWER_TIMEOUT;
        let mut reports = waiting
            .into_iter()
            .map(|(core, answer)| {
                answer
                    .recv_deadline(deadline)
                    .map_err(|_| ControlError::CoreUnresponsive { core })
            })
            .collect::<Result<Vec<CoreReport>, ControlError>>()?;
        if self.inner.fleet {
            // A core keeps the slots of the shards the fleet took away: only the shards placed
            // here now count, each by its newest slot.
            let placed = self.placed().clone();
            for report in &mut reports {
                let mut seen = std::collections::HashSet::new();
                let mut current: Vec<ShardStatus> = std::mem::take(&mut report.shards)
                    .into_iter()
                    .rev()
                    .filter(|status| {
                        placed.get(&status.shard_id) == Some(&report.core)
                            && seen.insert(status.shard_id)
                    })
                    .collect();
                current.reverse();
                report.shards = current;
            }
        }
        Ok(reports)
    }

    /// One shard's status (of the live set).
    pub fn shard(&self, shard_id: u32) -> Result<ShardStatus, ControlError> {
        let core = self.core_of(shard_id)?;
        let shard_count = self.plan().total_shards.get();
        let (reply, answer) = crossbeam_channel::bounded(1);
        let report = self.ask(core, CoreRequest::Report { reply }, &answer)?;
        report
            .shards
            .into_iter()
            .rev()
            .find(|status| status.shard_id == shard_id && status.shard_count == shard_count)
            .ok_or(ControlError::CoreUnresponsive { core })
    }

    /// Queues a command on one shard or on every shard of the process, of the live set.
    pub fn command(&self, route: Route, payload: Vec<u8>) -> Result<CommandReceipt, ControlError> {
        let plan = self.plan();
        let selection = match route {
            Route::Guild(guild_id) => Selection::One(shard_of_guild(&plan, guild_id)),
            Route::Shard(shard_id) => Selection::One(shard_id),
            Route::All => Selection::All,
        };
        let cores: Vec<usize> = match selection {
            Selection::One(shard_id) => vec![self.core_in(&plan, shard_id)?],
            Selection::All => (0..self.inner.cores.len()).collect(),
        };
        let mut receipt = CommandReceipt::default();
        for core in cores {
            let (reply, answer) = crossbeam_channel::bounded(1);
            let request = CoreRequest::Command {
                selection,
                shard_count: plan.total_shards.get(),
                payload: payload.clone(),
                reply,
            };
            receipt.merge(self.ask(core, request, &answer)?);
        }
        Ok(receipt)
    }

    /// Reconnects a shard (`new_session`: identify instead of resuming).
    pub fn reconnect(&self, shard_id: u32, new_session: bool) -> Result<(), ControlError> {
        let plan = self.plan();
        let core = self.core_in(&plan, shard_id)?;
        let (reply, answer) = crossbeam_channel::bounded(1);
        let request = CoreRequest::Reconnect {
            shard_id,
            shard_count: plan.total_shards.get(),
            new_session,
            reply,
        };
        self.ask(core, request, &answer)?
    }

    fn ask<T>(
        &self,
        core: usize,
        request: CoreRequest,
        answer: &Receiver<T>,
    ) -> Result<T, ControlError> {
        let unresponsive = ControlError::CoreUnresponsive { core };
        let requests = &self.inner.cores[core];
        requests.send(request).map_err(|_| unresponsive.clone())?;
        answer
            .recv_timeout(CORE_ANSWER_TIMEOUT)
            .map_err(|_| unresponsive)
    }
}

/// `(guild_id >> 22) % total` of `plan`.
fn shard_of_guild(plan: &ShardPlan, guild_id: u64) -> u32 {
    let total = u64::from(plan.total_shards.get());
    // The remainder is below `total`, a u32.
    u32::try_from((guild_id >> 22) % total).unwrap_or(0)
}

// ---- The core side --------------------------------------------------------------------------

/// What the control task asks of a shard task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nudge {
    /// Close resumably and end (the process stops).
    Stop,
    /// Commands are staged on the board.
    Commands,
    /// Reconnect; `new_session` identifies anew.
    Reconnect { new_session: bool },
    /// A reshard's switch: stop forwarding, and say so through the ring in order behind the last
    /// record forwarded. The session stays open (heartbeats go on) until [`Nudge::Retire`].
    HandOver,
    /// Close with 1000 (the session ends; its set is no longer wanted) and end.
    Retire,
    /// Become [`Role::Live`].
    Promote,
    /// The fleet's identify bucket granted this shard's identify.
    IdentifyPermit,
}

/// A core's shards as their tasks last published them, in the order they started.
pub(crate) struct Board {
    core: usize,
    slots: RefCell<Vec<Rc<Slot>>>,
}

/// One shard's place on the board.
pub(crate) struct Slot {
    shard_id: u32,
    shard_count: u32,
    pub(crate) role: Cell<Role>,
    /// Every guild of the current session's READY has arrived.
    pub(crate) fully_ready: Cell<bool>,
    /// Cleared by [`Nudge::HandOver`]: the shard's dispatches stay in the engine.
    pub(crate) forwarding: Cell<bool>,
    view: Cell<View>,
    counters: RefCell<ShardCounters>,
    counters_at: Cell<Option<Instant>>,
    /// Commands the control task accepted and the shard task has not moved yet.
    staged: RefCell<VecDeque<Vec<u8>>>,
    /// A [`Nudge::Commands`] is on its way (one is enough).
    nudged: Cell<bool>,
}

#[derive(Clone, Copy)]
struct View {
    state: ShardState,
    sequence: Option<u64>,
    latency: Option<Duration>,
    session_since: Option<Instant>,
    last_event_at: Option<Instant>,
    dispatches: u64,
    guilds: u64,
    commands_queued: usize,
}

impl Board {
    /// A board with the live set's `shard_ids` (of `shard_count`).
    pub(crate) fn new(core: usize, shard_ids: &[u32], shard_count: u32) -> Board {
        let board = Board {
            core,
            slots: RefCell::new(Vec::new()),
        };
        for &shard_id in shard_ids {
            board.add(shard_id, shard_count, Role::Live);
        }
        board
    }

    /// A slot for a shard that starts now; its index is the shard task's nudge channel's.
    pub(crate) fn add(&self, shard_id: u32, shard_count: u32, role: Role) -> Rc<Slot> {
        let slot = Rc::new(Slot {
            shard_id,
            shard_count,
            role: Cell::new(role),
            fully_ready: Cell::new(false),
            forwarding: Cell::new(true),
            view: Cell::new(View {
                state: ShardState::Connecting,
                sequence: None,
                latency: None,
                session_since: None,
                last_event_at: None,
                dispatches: 0,
                guilds: 0,
                commands_queued: 0,
            }),
            counters: RefCell::new(ShardCounters::default()),
            counters_at: Cell::new(None),
            staged: RefCell::new(VecDeque::new()),
            nudged: Cell::new(false),
        });
        self.slots.borrow_mut().push(Rc::clone(&slot));
        slot
    }

    #[cfg(test)]
    pub(crate) fn slot(&self, index: usize) -> Rc<Slot> {
        Rc::clone(&self.slots.borrow()[index])
    }

    /// The live shard `shard_id`'s index: commands and reconnects go to the live set.
    /// The newest slot of `shard_id` in the set with `shard_count` shards (an aborted set's
    /// stopped shard may sit before a later one of the same set).
    fn index_in_set(&self, shard_id: u32, shard_count: u32) -> Option<usize> {
        self.slots
            .borrow()
            .iter()
            .rposition(|slot| slot.shard_id == shard_id && slot.shard_count == shard_count)
    }

    /// Answers `request`; `nudge(index, what)` reaches the shard task at `index`.
    /// [`CoreRequest::StartShards`] and [`CoreRequest::StartShard`] are the core's to do; here
    /// they are ignored.
    pub(crate) fn answer(
        &self,
        request: CoreRequest,
        now: Instant,
        ring: (usize, usize),
        mut nudge: impl FnMut(usize, Nudge),
    ) {
        let slots = self.slots.borrow();
        match request {
            CoreRequest::Report { reply } => {
                let report = CoreReport {
                    core: self.core,
                    shards: slots.iter().map(|s| s.status(self.core, now)).collect(),
                    ring_records: ring.0,
                    ring_capacity: ring.1,
                };
                // The asker may have given up; nothing to do then.
                let _ = reply.send(report);
            }
            CoreRequest::Command {
                selection,
                shard_count,
                payload,
                reply,
            } => {
                let mut receipt = CommandReceipt::default();
                for (index, slot) in slots.iter().enumerate() {
                    // By set, not by role: a promoted set's shards may not have taken their
                    // new role yet.
                    if slot.shard_count != shard_count || !selection.includes(slot.shard_id) {
                        continue;
                    }
                    let view = slot.view.get();
                    if view.state.is_terminal() && slot.role.get() != Role::Live {
                        // An aborted set's stopped shard, beside its namesake of a later set.
                        continue;
                    }
                    let mut staged = slot.staged.borrow_mut();
                    if view.state.is_terminal() {
                        receipt.stopped.push(slot.shard_id);
                    } else if staged.len() >= COMMANDS_STAGED_MAX {
                        receipt.full.push(slot.shard_id);
                    } else {
                        staged.push_back(payload.clone());
                        receipt.queued.push(slot.shard_id);
                        if !slot.nudged.replace(true) {
                            nudge(index, Nudge::Commands);
                        }
                    }
                }
                let _ = reply.send(receipt);
            }
            CoreRequest::Reconnect {
                shard_id,
                shard_count,
                new_session,
                reply,
            } => {
                let answer = match self.index_in_set(shard_id, shard_count) {
                    None => Err(ControlError::CoreUnresponsive { core: self.core }),
                    Some(index) => {
                        let state = slots[index].view.get().state;
                        if state.is_terminal() {
                            Err(ControlError::ShardStopped { shard_id, state })
                        } else {
                            nudge(index, Nudge::Reconnect { new_session });
                            Ok(())
                        }
                    }
                };
                let _ = reply.send(answer);
            }
            CoreRequest::Set {
                shard_count,
                nudge: what,
            } => {
                for (index, slot) in slots.iter().enumerate() {
                    if slot.shard_count == shard_count {
                        nudge(index, what);
                    }
                }
            }
            CoreRequest::Shard {
                shard_id,
                shard_count,
                nudge: what,
            } => {
                if let Some(index) = self.index_in_set(shard_id, shard_count) {
                    nudge(index, what);
                }
            }
            CoreRequest::StartShards { .. } | CoreRequest::StartShard { .. } => {}
        }
    }
}

impl Slot {
    pub(crate) fn shard_count(&self) -> u32 {
        self.shard_count
    }

    /// Called by the shard task once per loop turn: what the admin API shows.
    pub(crate) fn publish(
        &self,
        machine: &Shard,
        guilds: usize,
        session_since: Option<Instant>,
        now: Instant,
    ) {
        let before = self.view.get();
        let counters = machine.counters();
        let state = machine.state();
        self.view.set(View {
            state,
            sequence: machine.session().map(|session| session.sequence),
            latency: machine.latency(),
            session_since: machine.session().and(session_since),
            last_event_at: if counters.dispatches_total != before.dispatches {
                Some(now)
            } else {
                before.last_event_at
            },
            dispatches: counters.dispatches_total,
            guilds: guilds as u64,
            commands_queued: machine.queued_commands(),
        });
        let stale = self
            .counters_at
            .get()
            .is_none_or(|at| now.saturating_duration_since(at) >= COUNTERS_PUBLISH_INTERVAL);
        if stale || state != before.state {
            self.counters.borrow_mut().clone_from(counters);
            self.counters_at.set(Some(now));
        }
    }

    /// Moves staged commands into the machine, as far as its queue takes them; the rest stay.
    pub(crate) fn take_commands(&self, machine: &mut Shard) {
        self.nudged.set(false);
        let mut staged = self.staged.borrow_mut();
        while let Some(command) = staged.pop_front() {
            if machine.queued_commands() >= ShardConfig::DEFAULT_COMMAND_QUEUE_CAPACITY {
                staged.push_front(command);
                break;
            }
            if let Err(error) = machine.send_command(command) {
                // Checked before staging; only a stopped shard refuses here (counted by the
                // machine as rejected).
                tracing::debug!(shard = self.shard_id, %error, "staged command refused");
            }
        }
    }

    fn status(&self, core: usize, now: Instant) -> ShardStatus {
        let view = self.view.get();
        let age = |at: Option<Instant>| at.map(|at| now.saturating_duration_since(at));
        ShardStatus {
            shard_id: self.shard_id,
            shard_count: self.shard_count,
            role: self.role.get(),
            fully_ready: self.fully_ready.get(),
            core,
            state: view.state,
            session_age: age(view.session_since),
            sequence: view.sequence,
            heartbeat_latency: view.latency,
            guilds: view.guilds,
            last_event_age: age(view.last_event_at),
            commands_waiting: (view.commands_queued + self.staged.borrow().len()) as u64,
            counters: self.counters.borrow().clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::Token;

    fn machine(shard_id: u32) -> Shard {
        let config = ShardConfig::new(shard_id, 8, Token::new("t0ken"), 1);
        Shard::new(config, Instant::now()).unwrap()
    }

    fn report(board: &Board) -> CoreReport {
        let (reply, answer) = crossbeam_channel::bounded(1);
        board.answer(
            CoreRequest::Report { reply },
            Instant::now(),
            (3, 8),
            |_, _| {},
        );
        answer.try_recv().unwrap()
    }

    #[test]
    fn a_report_shows_what_the_shard_tasks_published() {
        let board = Board::new(1, &[2, 3], 8);
        let now = Instant::now();
        board.slot(1).publish(&machine(3), 7, Some(now), now);
        let report = report(&board);
        assert_eq!(report.core, 1);
        assert_eq!((report.ring_records, report.ring_capacity), (3, 8));
        let ids: Vec<u32> = report.shards.iter().map(|s| s.shard_id).collect();
        assert_eq!(ids, [2, 3]);
        let published = &report.shards[1];
        assert_eq!(published.guilds, 7);
        assert_eq!(published.state, ShardState::Connecting);
        // No session yet: no age, whatever the task passed.
        assert_eq!(published.session_age, None);
        assert_eq!(published.counters.connects_total, 1);
    }

    #[test]
    fn commands_are_staged_bounded_and_nudge_once() {
        let board = Board::new(0, &[0, 1], 8);
        let mut nudges = Vec::new();
        let mut send = |selection| {
            let (reply, answer) = crossbeam_channel::bounded(1);
            let request = CoreRequest::Command {
                selection,
                shard_count: 8,
                payload: br#"{"op":3,"d":{}}"#.to_vec(),
                reply,
            };
            board.answer(request, Instant::now(), (0, 0), |index, nudge| {
                nudges.push((index, nudge))
            });
            answer.try_recv().unwrap()
        };
        let first = send(Selection::All);
        assert_eq!(first.queued, [0, 1]);
        for _ in 1..COMMANDS_STAGED_MAX {
            assert_eq!(send(Selection::One(1)).queued, [1]);
        }
        let full = send(Selection::All);
        assert_eq!((full.queued, full.full), (vec![0], vec![1]));
        assert_eq!(
            nudges,
            [(0, Nudge::Commands), (1, Nudge::Commands)],
            "one nudge until the task takes the commands"
        );

        // The task moves what its machine's queue takes; the rest stays staged.
        let mut shard = machine(1);
        board.slot(1).take_commands(&mut shard);
        assert_eq!(
            shard.queued_commands(),
            ShardConfig::DEFAULT_COMMAND_QUEUE_CAPACITY
        );
        assert_eq!(
            board.slot(1).staged.borrow().len(),
            COMMANDS_STAGED_MAX - ShardConfig::DEFAULT_COMMAND_QUEUE_CAPACITY
        );
        assert!(!board.slot(1).nudged.get());
    }

    #[test]
    fn a_stopped_shard_refuses_commands_and_reconnects() {
        let board = Board::new(0, &[5], 8);
        let mut shard = machine(5);
        shard.request_shutdown(Instant::now(), true);
        board.slot(0).publish(&shard, 0, None, Instant::now());
        let (reply, answer) = crossbeam_channel::bounded(1);
        let request = CoreRequest::Command {
            selection: Selection::One(5),
            shard_count: 8,
            payload: b"{}".to_vec(),
            reply,
        };
        board.answer(request, Instant::now(), (0, 0), |_, _| panic!("no nudge"));
        assert_eq!(answer.try_recv().unwrap().stopped, [5]);
        let (reply, answer) = crossbeam_channel::bounded(1);
        let request = CoreRequest::Reconnect {
            shard_id: 5,
            shard_count: 8,
            new_session: false,
            reply,
        };
        board.answer(request, Instant::now(), (0, 0), |_, _| panic!("no nudge"));
        assert_eq!(
            answer.try_recv().unwrap(),
            Err(ControlError::ShardStopped {
                shard_id: 5,
                state: shard.state()
            })
        );
    }

    /// A reshard's switch promotes the new set's plan before its shard tasks take the live
    /// role: a command routed by the new count reaches the new set's shard (not nobody, not the
    /// old set's namesake).
    #[test]
    fn a_command_goes_to_the_set_it_was_routed_by_whatever_the_roles_say() {
        let board = Board::new(0, &[1], 4);
        board.add(1, 8, Role::Warming);
        let mut nudged = Vec::new();
        let mut send = |shard_count| {
            let (reply, answer) = crossbeam_channel::bounded(1);
            let request = CoreRequest::Command {
                selection: Selection::One(1),
                shard_count,
                payload: b"{}".to_vec(),
                reply,
            };
            board.answer(request, Instant::now(), (0, 0), |index, _| {
                nudged.push(index)
            });
            answer.try_recv().unwrap()
        };
        assert_eq!(send(8).queued, [1]);
        assert_eq!(send(4).queued, [1]);
        assert_eq!(nudged, [1, 0], "the new set's slot, then the old set's");
        let (reply, answer) = crossbeam_channel::bounded(1);
        let request = CoreRequest::Reconnect {
            shard_id: 1,
            shard_count: 8,
            new_session: false,
            reply,
        };
        let mut reconnected = Vec::new();
        board.answer(request, Instant::now(), (0, 0), |index, nudge| {
            reconnected.push((index, nudge))
        });
        assert_eq!(answer.try_recv().unwrap(), Ok(()));
        assert_eq!(reconnected, [(1, Nudge::Reconnect { new_session: false })]);
    }
}
