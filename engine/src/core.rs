//! A core: one pinned glommio (io_uring) executor owning a group of shards, and the driver
//! that runs each shard's sans-IO machine against a real connection.
//!
//! Per shard, one task: it feeds frames through decode → machine → filter and hands records
//! to the core's ring. Nothing here blocks the thread: socket I/O is io_uring, the ring is
//! `try_send` with a timed retry (a full ring stops reading that shard's socket while its
//! heartbeats go on), and the identify limiter's lock covers a few instructions.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use futures_lite::future;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use tungstenite::protocol::WebSocketConfig;

use crate::control::{Board, CONTROL_POLL, CoreRequest, Doorbell, Nudge, Role, Slot};
use crate::decode::{self, Compression, Decoder, DecoderLimits, Frame};
use crate::filter::{Filter, FilterConfig, ShardFilter, Verdict};
use crate::limiter::IdentifyLimiter;
use crate::record::{GuildCreateClass, Notice, PayloadArena, Record, RecordKind};
use crate::ring::{PushError, RingSender};
use crate::shard::{
    ConnectTarget, FATAL_CLOSE_CODES, LossCause, PayloadAction, Session, Shard, ShardConfig,
    ShardEvent, ShardState, Token, TransmitKind, fatal_close_explanation,
};
use crate::transport::{Connection, GatewayUrl, Incoming, ReadCoalescing};

/// How long a full ring waits before trying again.
const RING_RETRY: Duration = Duration::from_millis(1);
/// Frames already received that a shard handles in one turn of its loop before it looks at
/// its timers, its commands and the ring again.
const FRAMES_PER_TURN_MAX: usize = 32;
/// A new session's socket opens this long before its identify slot (TCP, TLS, upgrade and
/// HELLO take well under a second against Discord).
const IDENTIFY_CONNECT_LEAD: Duration = Duration::from_secs(3);
/// Bound on writing a close frame before dropping the socket anyway, and then on waiting for the
/// server's close.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a connect in progress looks at the stop flag (only while connecting).
const CONNECT_STOP_POLL: Duration = Duration::from_millis(10);

/// Counters of one core, read by the reporter thread (relaxed atomics, never per-event locks).
#[derive(Debug, Default)]
pub struct CoreStats {
    pub dispatches_in: AtomicU64,
    pub records_forwarded: AtomicU64,
    pub dropped_redundant_update: AtomicU64,
    pub dropped_not_allowed: AtomicU64,
    pub decode_errors: AtomicU64,
    pub ring_full_waits: AtomicU64,
    pub connects: AtomicU64,
    pub connect_failures: AtomicU64,
    pub identifies: AtomicU64,
    pub resumes: AtomicU64,
    pub reconnects: AtomicU64,
    /// Shards that were ready (READY and their guilds in) at least once in this process.
    pub shards_ready: AtomicU64,
    pub shards_fatal: AtomicU64,
    /// Of those, the shards stopped by each of [`FATAL_CLOSE_CODES`], in that order.
    pub shards_fatal_by_code: [AtomicU64; FATAL_CLOSE_CODES.len()],
    pub shards_running: AtomicU64,
    /// Shard tasks started on this core, and ended (stopped, fatal, or a configuration the
    /// machine refused): the runtime stops the engine when nothing runs and nothing can.
    pub shards_spawned: AtomicU64,
    pub shards_ended: AtomicU64,
    /// Dispatches of a shard that handed over at a reshard's switch (the new set forwards
    /// them), and the new set's READY and backfill GUILD_CREATEs (the bot has those guilds).
    pub dropped_handed_over: AtomicU64,
    pub dropped_reshard_backfill: AtomicU64,
    /// Saved sessions (from the last run) that Discord resumed, and that it rejected (the
    /// shard identified instead).
    pub saved_sessions_resumed: AtomicU64,
    pub saved_sessions_rejected: AtomicU64,
    /// The Linux thread id of the core's executor (0 until it starts, or without /proc): the
    /// status page reads the core's CPU time from /proc by it.
    pub thread_id: AtomicU64,
}

/// What every shard of the process shares.
pub struct Shared {
    pub main_url: GatewayUrl,
    pub compression: Compression,
    pub token: Token,
    pub intents: u64,
    pub large_threshold: u16,
    pub total_shards: u32,
    pub decoder_limits: DecoderLimits,
    pub tls: Arc<rustls::ClientConfig>,
    pub limiter: Arc<IdentifyLimiter>,
    /// In a fleet: the fleet's identify limiter, which `limiter` then stands aside for.
    pub fleet_gate: Option<Arc<crate::fleet::gate::FleetGate>>,
    pub connect_timeout: Duration,
    /// Socket reads of every connection wait for a tick after draining their socket.
    pub read_coalescing: Option<ReadCoalescing>,
    /// The start of the heartbeat grid every shard of the process shares (see
    /// [`crate::shard::ShardConfig::heartbeat_grid`]).
    pub heartbeat_grid: Instant,
    /// Shards of this process that are fully ready; the last one announces ALL_SHARDS_READY.
    pub shards_ready: AtomicUsize,
    pub shards_owned: usize,
    /// Shards of the live set this process runs now (`shards_owned` until a reshard).
    pub live_shards: AtomicUsize,
    /// Set by the signal handler: every shard closes resumably and its task ends.
    pub stop: AtomicBool,
    /// A gateway certificate failure was logged at warn and no connect has succeeded since:
    /// the next ones stay at debug (see [`open`]).
    pub certificate_warned: AtomicBool,
    pub rng_seed: u64,
    /// Set while a reshard's merge runs: redundant MESSAGE_UPDATEs go to the sink as
    /// [`RecordKind::Redundant`] records instead of nowhere.
    pub merging: Arc<AtomicBool>,
    /// Shards stopped on a fatal close code (4011) whose set a reshard replaced.
    pub fatal_replaced: Arc<AtomicU64>,
    /// Live shards stopped on a fatal close code (a 4011), as `(shard count, shard id)`: no
    /// session covers their guilds, so a reshard's new set forwards its backfill GUILD_CREATEs
    /// of those guilds (the bot may never have had them: joins while the shard was closed).
    pub uncovered: Mutex<Vec<(u32, u32)>>,
}

impl Shared {
    /// Whether `guild_id` belongs to a shard of another set than `shard_count` that stopped on
    /// a fatal close code (no session delivers its GUILD_CREATE but the new set's backfill).
    pub fn guild_uncovered(&self, guild_id: u64, shard_count: u32) -> bool {
        let uncovered = self
            .uncovered
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        uncovered.iter().any(|&(count, shard_id)| {
            count != shard_count
                && (guild_id >> 22) % u64::from(count.max(1)) == u64::from(shard_id)
        })
    }
}

/// One core's assignment.
pub struct CorePlan {
    pub index: usize,
    pub shard_ids: Vec<u32>,
    /// The shard count of their set (the live one).
    pub shard_count: u32,
    pub filter: FilterConfig,
    pub ring: RingSender,
    pub stats: Arc<CoreStats>,
    /// Sessions saved by the last run for this core's shards: they resume instead of
    /// identifying.
    pub sessions: HashMap<u32, Session>,
    /// Requests from the control plane (admin API).
    pub requests: Receiver<CoreRequest>,
    /// Rung with every request, and when the engine stops.
    pub bell: Arc<Doorbell>,
}

/// Runs a core until the engine stops and every shard task ended. A core whose shards all
/// stopped on fatal close codes stays up meanwhile (a reshard may give it new ones); the runtime
/// decides when there is nothing left to run. Call it inside the core's executor.
pub async fn run_core(shared: Arc<Shared>, mut plan: CorePlan) {
    if let Some(thread_id) = crate::procfs::current_thread_id() {
        plan.stats.thread_id.store(thread_id, Ordering::Relaxed);
    }
    let context = Rc::new(CoreContext {
        filter_config: plan.filter.clone(),
        filters: RefCell::new(HashMap::new()),
        arena: Rc::new(RefCell::new(PayloadArena::default())),
        buffers: Rc::new(CoreBuffers::default()),
        board: Rc::new(Board::new(plan.index, &[], plan.shard_count)),
        ring: plan.ring.clone(),
        pushed: Rc::new(Doorbell::default()),
        stats: Arc::clone(&plan.stats),
        nudges: RefCell::new(Vec::new()),
        tasks: RefCell::new(Vec::new()),
        spawned: Doorbell::default(),
        shared: Arc::clone(&shared),
    });
    for shard_id in plan.shard_ids.iter().copied() {
        let saved = plan.sessions.remove(&shard_id);
        context.spawn(shard_id, plan.shard_count, Role::Live, saved);
    }
    drop(plan.ring);
    // The announcer: wakes the collector once per executor turn in which shards pushed records
    // (woken by the first push, it runs after the shard tasks that turn had ready).
    let announcer = glommio::spawn_local({
        let pushed = Rc::clone(&context.pushed);
        let wake = context.ring.collector_wake();
        async move {
            loop {
                pushed.rung().await;
                wake.notify();
            }
        }
    })
    .detach();
    // The control task: relays the process-wide stop flag to every shard, answers the control
    // plane and starts the shards a reshard asks for. It is cancelled below, and the context
    // (with its ring sender) dropped, before the sink can see the ring disconnect.
    let control = glommio::spawn_local({
        let context = Rc::clone(&context);
        let requests = plan.requests.clone();
        let bell = Arc::clone(&plan.bell);
        async move {
            let mut stopped = false;
            loop {
                if !stopped && context.shared.stop.load(Ordering::Acquire) {
                    stopped = true;
                    for nudge in context.nudges.borrow().iter() {
                        // A shard that already ended has dropped its receiver; nothing to tell.
                        let _ = nudge.try_send(Nudge::Stop);
                    }
                    // The loop below may wait for a shard task to start: it may end now.
                    context.spawned.ring();
                }
                while let Ok(request) = requests.try_recv() {
                    match request {
                        CoreRequest::StartShards {
                            shard_count,
                            shard_ids,
                            role,
                        } => {
                            // A stopping engine starts nothing new.
                            if !stopped {
                                for shard_id in shard_ids {
                                    context.spawn(shard_id, shard_count, role, None);
                                }
                            }
                        }
                        CoreRequest::StartShard {
                            shard_id,
                            shard_count,
                            session,
                        } => {
                            if !stopped {
                                context.spawn(shard_id, shard_count, Role::Live, session);
                            }
                        }
                        request => {
                            if let CoreRequest::Set {
                                shard_count,
                                nudge: Nudge::Retire,
                            } = request
                            {
                                // Its shards hold the filter until they end.
                                context.filters.borrow_mut().remove(&shard_count);
                                // Its dead shards' guilds are the new set's now.
                                context
                                    .shared
                                    .uncovered
                                    .lock()
                                    .unwrap_or_else(PoisonError::into_inner)
                                    .retain(|&(count, _)| count != shard_count);
                            }
                            let ring = &context.ring;
                            let occupancy = (ring.len(), ring.capacity());
                            let nudges = context.nudges.borrow();
                            context.board.answer(
                                request,
                                Instant::now(),
                                occupancy,
                                |index, what| {
                                    let _ = nudges[index].try_send(what);
                                },
                            );
                        }
                    }
                }
                future::or(bell.rung(), glommio::timer::sleep(CONTROL_POLL)).await;
            }
        }
    })
    .detach();
    loop {
        let next = context.tasks.borrow_mut().pop();
        match next {
            Some(task) => {
                task.await;
            }
            None if shared.stop.load(Ordering::Acquire) => break,
            None => {
                future::or(context.spawned.rung(), glommio::timer::sleep(CONTROL_POLL)).await;
            }
        }
    }
    control.cancel();
    announcer.cancel();
}

/// What a core's shard tasks share, and what a new one needs.
/// Buffers a core's shard tasks share: each is filled and done with inside one synchronous
/// step of a task (never across an await), so no two tasks use one at once and no shard holds
/// a buffer of its own while it waits. Per core instead of per shard: at 10,000 shards, every
/// kilobyte a shard holds is 10 MB.
#[derive(Default)]
struct CoreBuffers {
    /// Decompression output: a zstd-stream or payload-compressed frame is decompressed into it
    /// and copied (or dropped) before the task yields.
    decoded: RefCell<Vec<u8>>,
    /// A payload the shard machine wants sent (heartbeat, identify, command), written into it
    /// and framed onto the connection's outgoing bytes at once.
    transmit: RefCell<Vec<u8>>,
}

struct CoreContext {
    shared: Arc<Shared>,
    filter_config: FilterConfig,
    /// One filter per shard set (a reshard runs two): a set's redundant-update verdicts must
    /// come from what that set itself received, not from the other set's copies.
    filters: RefCell<HashMap<u32, Rc<RefCell<Filter>>>>,
    /// The core's payload copies, shared by its shards.
    arena: Rc<RefCell<PayloadArena>>,
    /// See [`Driver::buffers`].
    buffers: Rc<CoreBuffers>,
    board: Rc<Board>,
    ring: RingSender,
    /// See [`Driver::pushed`].
    pushed: Rc<Doorbell>,
    stats: Arc<CoreStats>,
    /// Each shard task's nudge channel, in board order.
    nudges: RefCell<Vec<LocalSender<Nudge>>>,
    /// Shard tasks not awaited yet.
    tasks: RefCell<Vec<glommio::task::JoinHandle<()>>>,
    /// Rung when a shard task starts (or the engine stops): the core's loop waits on it when
    /// it has no task to await.
    spawned: Doorbell,
}

impl CoreContext {
    /// Starts a shard task (with a board slot and a nudge channel).
    fn spawn(&self, shard_id: u32, shard_count: u32, role: Role, saved: Option<Session>) {
        let slot = self.board.add(shard_id, shard_count, role);
        let (nudge_tx, nudge_rx) = local_channel::new_unbounded();
        self.nudges.borrow_mut().push(nudge_tx);
        self.stats.shards_spawned.fetch_add(1, Ordering::Relaxed);
        let driver =
            Driver {
                shared: Arc::clone(&self.shared),
                shard_id,
                shard_count,
                filter: Rc::clone(self.filters.borrow_mut().entry(shard_count).or_insert_with(
                    || Rc::new(RefCell::new(Filter::new(self.filter_config.clone()))),
                )),
                arena: Rc::clone(&self.arena),
                buffers: Rc::clone(&self.buffers),
                ring: self.ring.clone(),
                pushed: Rc::clone(&self.pushed),
                stats: Arc::clone(&self.stats),
                nudges: nudge_rx,
                slot,
                saved,
            };
        let stats = Arc::clone(&self.stats);
        let task = glommio::spawn_local(async move {
            driver.run().await;
            stats.shards_ended.fetch_add(1, Ordering::Relaxed);
        })
        .detach();
        self.tasks.borrow_mut().push(task);
        self.spawned.ring();
    }
}

/// What woke the shard's loop.
enum Wake {
    Message(Result<Incoming, crate::transport::TransportError>),
    Timer,
    Nudge(Option<Nudge>),
}

struct Driver {
    shared: Arc<Shared>,
    shard_id: u32,
    /// The shard count of the shard's set: `[shard_id, shard_count]` in identify.
    shard_count: u32,
    filter: Rc<RefCell<Filter>>,
    /// The core's payload copies, shared by its shards.
    arena: Rc<RefCell<PayloadArena>>,
    /// The core's scratch buffers, shared by its shards (see [`CoreBuffers`]).
    buffers: Rc<CoreBuffers>,
    ring: RingSender,
    /// Rung after records went onto the ring: the core's announcer wakes the collector once
    /// for everything its shards pushed in one executor turn.
    pushed: Rc<Doorbell>,
    stats: Arc<CoreStats>,
    nudges: LocalReceiver<Nudge>,
    /// This shard's place on the board: what it publishes, its role, whether it forwards.
    slot: Rc<Slot>,
    saved: Option<Session>,
}

impl Driver {
    async fn run(self) {
        let Driver {
            shared,
            shard_id,
            shard_count,
            filter,
            arena,
            buffers,
            ring,
            pushed,
            stats,
            nudges,
            slot,
            saved,
        } = self;
        let mut config =
            ShardConfig::new(shard_id, shard_count, shared.token.clone(), shared.intents);
        config.payload_compression = shared.compression.identify_compress();
        config.large_threshold = shared.large_threshold;
        config.rng_seed = shared.rng_seed;
        config.heartbeat_grid = Some(shared.heartbeat_grid);
        let mut outbox: VecDeque<Record> = VecDeque::new();
        let mut saved_pending = saved.is_some();
        // A session to resume that the sink has not heard of (the fleet handed it over from
        // another host): announced ahead of anything the shard forwards.
        if let Some(session) = saved.as_ref().filter(|_| shared.fleet_gate.is_some()) {
            match serde_json::to_vec(session) {
                Ok(payload) => outbox.push_back(Record {
                    shard_id,
                    shard_count,
                    seq: session.sequence,
                    session: 0,
                    kind: RecordKind::Session,
                    payload: payload.into(),
                }),
                Err(error) => tracing::error!(shard = shard_id, %error, "cannot note the session"),
            }
        }
        // Ran (or resumes) a session: its identifies are reconnects, ahead of new sessions.
        let mut had_session = saved.is_some();
        // In a fleet: an identify asked for and not granted yet.
        let mut identify_wanted = false;
        let built = match saved {
            Some(session) => {
                Shard::with_session(config.clone(), session, Instant::now()).or_else(|error| {
                    tracing::warn!(shard = shard_id, %error, "saved session unusable; identifying");
                    saved_pending = false;
                    Shard::new(config, Instant::now())
                })
            }
            None => Shard::new(config, Instant::now()),
        };
        let mut machine = match built {
            Ok(machine) => machine,
            Err(error) => {
                tracing::error!(shard = shard_id, %error, "shard configuration rejected");
                stats.shards_fatal.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let mut decoder = match Decoder::new(shared.compression, shared.decoder_limits) {
            Ok(decoder) => decoder,
            Err(error) => {
                tracing::error!(shard = shard_id, %error, "decoder limits rejected");
                stats.shards_fatal.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        stats.shards_running.fetch_add(1, Ordering::Relaxed);
        let mut shard_filter = ShardFilter::new();
        let mut connection: Option<Connection> = None;
        // The identify slot reserved for this shard's next new session.
        let mut identify_at: Option<Instant> = None;
        // A connect held until shortly before that slot.
        let mut deferred_connect: Option<(ConnectTarget, Instant)> = None;
        let mut stopping = false;
        // When the current session began (READY here, or the resume of a saved session).
        let mut session_since: Option<Instant> = None;
        // Ready at least once in this process: counted once, however many sessions follow.
        let mut ever_ready = false;
        let query = gateway_query(shared.compression);

        loop {
            let now = Instant::now();
            // 1. What the machine wants written (commands from the control plane first).
            slot.take_commands(&mut machine);
            if let Some(conn) = connection.as_mut() {
                let mut failed = false;
                let mut identified = false;
                {
                    // Borrowed for this synchronous loop only (see `CoreBuffers`).
                    let mut transmit = buffers.transmit.borrow_mut();
                    while let Some(sent) = machine.poll_transmit(now, &mut transmit) {
                        identified |= sent.kind == TransmitKind::Identify;
                        if conn.queue_text(&transmit).is_err() {
                            failed = true;
                            break;
                        }
                    }
                }
                if failed || conn.flush().await.is_err() {
                    connection = None;
                    machine.connection_lost(Instant::now(), LossCause::Transport);
                } else if identified {
                    identify_wanted = false;
                    match &shared.fleet_gate {
                        Some(gate) => gate.sent(shard_id, Instant::now()),
                        None => shared.limiter.identified(shard_id, Instant::now()),
                    }
                    tracing::debug!(shard = shard_id, "identify sent");
                }
            }
            // 2. What the machine wants done.
            while let Some(event) = machine.poll_event() {
                match event {
                    ShardEvent::Connect { target } => {
                        connection = None;
                        // A new session takes its identify slot now and opens its socket just
                        // before it: a cold start opens connections round by round.
                        if machine.session().is_none() && shared.fleet_gate.is_none() {
                            let now = Instant::now();
                            let at = *identify_at
                                .get_or_insert_with(|| shared.limiter.reserve(shard_id, now).at);
                            let start = at.checked_sub(IDENTIFY_CONNECT_LEAD).unwrap_or(at);
                            if start > now {
                                machine.defer_connect(start);
                                deferred_connect = Some((target, start));
                                continue;
                            }
                        }
                        deferred_connect = None;
                        connection =
                            open(&shared, &stats, &query, &target, &mut machine, &mut decoder)
                                .await;
                    }
                    ShardEvent::Close { code } => {
                        // Closed in place: a connection moved out of `connection` would be a
                        // second copy of it in the task's state across the awaits below.
                        if let Some(conn) = connection.as_mut()
                            && conn.queue_close(code).is_ok()
                        {
                            // Best effort: the code matters (4000 keeps the session), but a
                            // dead peer must not hold the shard.
                            let flushed = future::or(async { conn.flush().await.is_ok() }, async {
                                glommio::timer::sleep(CLOSE_WRITE_TIMEOUT).await;
                                false
                            });
                            if flushed.await {
                                // The server answers and closes the TCP connection first (RFC
                                // 6455 section 7.1.1). Until then what it still sends is read
                                // and dropped (a resume replays it): closing a socket with
                                // unread bytes resets it, and a peer busy sending can then
                                // lose the close frame with its code.
                                future::or(
                                    async {
                                        while !matches!(
                                            conn.read_incoming().await,
                                            Ok(Incoming::Close(_)) | Err(_)
                                        ) {}
                                    },
                                    glommio::timer::sleep(CLOSE_WRITE_TIMEOUT),
                                )
                                .await;
                            }
                        }
                        connection = None;
                        machine.connection_lost(Instant::now(), LossCause::Transport);
                    }
                    ShardEvent::NeedIdentify => {
                        if let Some(gate) = &shared.fleet_gate {
                            // Asked once; the grant comes as a nudge.
                            if !std::mem::replace(&mut identify_wanted, true) {
                                gate.want(shard_id, had_session);
                            }
                        } else if identify_at.is_none() {
                            // Usually reserved when the connect was asked for.
                            let reservation = shared.limiter.reserve(shard_id, Instant::now());
                            identify_at = Some(reservation.at);
                        }
                    }
                    ShardEvent::Ready { .. } => {
                        had_session = true;
                        session_since = Some(Instant::now());
                        stats.identifies.fetch_add(1, Ordering::Relaxed);
                        if std::mem::take(&mut saved_pending) {
                            stats
                                .saved_sessions_rejected
                                .fetch_add(1, Ordering::Relaxed);
                            tracing::info!(shard = shard_id, "saved session rejected; identified");
                        }
                        tracing::debug!(shard = shard_id, "ready");
                    }
                    ShardEvent::Resumed => {
                        session_since.get_or_insert_with(Instant::now);
                        stats.resumes.fetch_add(1, Ordering::Relaxed);
                        if std::mem::take(&mut saved_pending) {
                            stats.saved_sessions_resumed.fetch_add(1, Ordering::Relaxed);
                        }
                        tracing::debug!(shard = shard_id, "resumed");
                    }
                    ShardEvent::Reconnecting {
                        cause,
                        attempt,
                        delay,
                        ..
                    } => {
                        stats.reconnects.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(
                            shard = shard_id,
                            cause = cause.as_str(),
                            attempt,
                            delay_ms = delay.as_millis() as u64,
                            "reconnecting"
                        );
                    }
                    ShardEvent::InvalidSession { resumable } => {
                        tracing::debug!(shard = shard_id, resumable, "invalid session");
                    }
                    ShardEvent::Fatal { code, reason } => {
                        stats.shards_fatal.fetch_add(1, Ordering::Relaxed);
                        if let Some(index) = FATAL_CLOSE_CODES.iter().position(|c| *c == code) {
                            stats.shards_fatal_by_code[index].fetch_add(1, Ordering::Relaxed);
                        }
                        stats.shards_running.fetch_sub(1, Ordering::Relaxed);
                        tracing::error!(
                            shard = shard_id,
                            code,
                            %reason,
                            cause = %fatal_close_explanation(code).unwrap_or("unknown"),
                            "shard stopped by a fatal close code; the other shards run on"
                        );
                        if slot.role.get() == Role::Live {
                            shared
                                .uncovered
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .push((slot.shard_count(), shard_id));
                        }
                        withdraw_identify(&shared, shard_id, identify_wanted);
                        note_end(&shared, &machine, shard_id, shard_count, &mut outbox);
                        // What came before the close: no session will replay it.
                        flush_outbox(&ring, &pushed, &mut outbox, &stats).await;
                        // The board shows how it ended (a reshard's hand-over waits for every
                        // shard of the live set that still runs).
                        slot.publish(&machine, shard_filter.guilds(), None, Instant::now());
                        return;
                    }
                    ShardEvent::Stopped => {
                        stats.shards_running.fetch_sub(1, Ordering::Relaxed);
                        withdraw_identify(&shared, shard_id, identify_wanted);
                        note_end(&shared, &machine, shard_id, shard_count, &mut outbox);
                        // A fleet's host gave the shard away: it is no longer one of its ready ones.
                        if shared.fleet_gate.is_some() && std::mem::take(&mut ever_ready) {
                            stats.shards_ready.fetch_sub(1, Ordering::Relaxed);
                        }
                        flush_outbox(&ring, &pushed, &mut outbox, &stats).await;
                        slot.publish(&machine, shard_filter.guilds(), None, Instant::now());
                        return;
                    }
                }
            }
            // A connect or close above may have queued more output; go round again first.
            if connection.as_ref().is_some_and(|c| c.pending_bytes() > 0) {
                continue;
            }

            // 3. Hand records to the sink; a full ring pauses reading this socket.
            if push_outbox(&ring, &pushed, &mut outbox, &stats) == Pushed::SinkGone {
                tracing::error!(shard = shard_id, "the sink is gone; stopping the shard");
                stats.shards_running.fetch_sub(1, Ordering::Relaxed);
                return;
            }

            // 4. Publish for the control plane, then wait for a frame, a deadline or the core.
            if machine.session().is_none() {
                session_since = None;
            }
            slot.publish(&machine, shard_filter.guilds(), session_since, now);
            let mut deadline = machine.poll_timeout();
            let awaiting_permit = machine.state() == ShardState::AwaitingIdentifyPermit;
            for candidate in [
                identify_at.filter(|_| awaiting_permit),
                deferred_connect.as_ref().map(|(_, start)| *start),
                shard_filter.poll_timeout(),
            ]
            .into_iter()
            .flatten()
            {
                deadline = Some(deadline.map_or(candidate, |d| d.min(candidate)));
            }
            if !outbox.is_empty() {
                let retry = Instant::now() + RING_RETRY;
                deadline = Some(deadline.map_or(retry, |d| d.min(retry)));
            }
            let reading = connection.as_mut().filter(|_| outbox.is_empty());
            let wake = {
                let read = async {
                    match reading {
                        Some(conn) => Wake::Message(conn.read_incoming().await),
                        None => future::pending().await,
                    }
                };
                let timer = async {
                    match deadline {
                        Some(at) => {
                            glommio::timer::sleep(at.saturating_duration_since(Instant::now()))
                                .await
                        }
                        None => future::pending::<()>().await,
                    }
                    Wake::Timer
                };
                let control = async {
                    if stopping {
                        future::pending().await
                    } else {
                        Wake::Nudge(nudges.recv().await)
                    }
                };
                future::or(read, future::or(timer, control)).await
            };

            let now = Instant::now();
            match wake {
                Wake::Timer => {
                    if let Some((target, _)) = deferred_connect.take_if(|(_, start)| now >= *start)
                    {
                        connection =
                            open(&shared, &stats, &query, &target, &mut machine, &mut decoder)
                                .await;
                        continue;
                    }
                    if identify_at.is_some_and(|at| now >= at)
                        && machine.state() == ShardState::AwaitingIdentifyPermit
                    {
                        let go = match &shared.fleet_gate {
                            // The fleet's bucket granted it (the nudge set `identify_at`);
                            // without a grant to take, the next nudge brings one.
                            Some(gate) => {
                                identify_at = None;
                                let go = gate.take(shard_id, now);
                                if !go {
                                    // Too old to use safely: queue again.
                                    gate.want(shard_id, had_session);
                                    identify_wanted = true;
                                }
                                go
                            }
                            // The bucket's previous identify may have gone out late.
                            None => {
                                identify_at = shared.limiter.claim(shard_id, now);
                                identify_at.is_none()
                            }
                        };
                        if go && let Err(error) = machine.identify_permitted(now) {
                            tracing::debug!(shard = shard_id, %error, "identify slot unused");
                        }
                    }
                    machine.handle_timeout(now);
                    shard_filter.handle_timeout(now);
                    queue_notice(
                        &shared,
                        &stats,
                        shard_id,
                        &slot,
                        &mut shard_filter,
                        &mut outbox,
                        &mut ever_ready,
                    );
                }
                Wake::Nudge(Some(Nudge::Stop)) | Wake::Nudge(None) => {
                    stopping = true;
                    machine.request_shutdown(now, true);
                }
                Wake::Nudge(Some(Nudge::HandOver)) => {
                    if slot.forwarding.replace(false) {
                        // Behind every record this shard forwarded, on the same ring.
                        outbox.push_back(Record {
                            shard_id,
                            shard_count,
                            seq: machine.session().map_or(0, |session| session.sequence),
                            session: 0,
                            kind: RecordKind::HandedOver,
                            payload: bytes::Bytes::new(),
                        });
                    }
                }
                Wake::Nudge(Some(Nudge::Retire)) => {
                    stopping = true;
                    machine.request_shutdown(now, false);
                    // Its set is no longer the live one: it leaves the ready count.
                    if std::mem::take(&mut ever_ready) {
                        stats.shards_ready.fetch_sub(1, Ordering::Relaxed);
                    }
                }
                Wake::Nudge(Some(Nudge::Promote)) => {
                    slot.role.set(Role::Live);
                    // Ready while it warmed: counted now, as the live shard it has become.
                    if slot.fully_ready.get() && !std::mem::replace(&mut ever_ready, true) {
                        stats.shards_ready.fetch_add(1, Ordering::Relaxed);
                    }
                }
                // Taken at the top of the loop.
                Wake::Nudge(Some(Nudge::Commands)) => {}
                // The fleet's bucket granted this shard's identify: used on the next turn.
                Wake::Nudge(Some(Nudge::IdentifyPermit)) => identify_at = Some(now),
                Wake::Nudge(Some(Nudge::Reconnect { new_session })) => {
                    tracing::info!(shard = shard_id, new_session, "reconnect requested");
                    if let Err(error) = machine.request_reconnect(now, new_session) {
                        tracing::info!(shard = shard_id, %error, "reconnect not possible");
                    }
                }
                Wake::Message(Err(error)) => {
                    tracing::debug!(shard = shard_id, %error, "connection lost");
                    connection = None;
                    machine.connection_lost(now, LossCause::Transport);
                }
                Wake::Message(Ok(first)) => {
                    // Frames that came with the same read are handled in this turn, without a
                    // round through the wait (a timer armed and a wake each), up to
                    // FRAMES_PER_TURN_MAX so that timers, commands and the ring get their turn.
                    let mut message = first;
                    let mut handled = 0;
                    loop {
                        let frame = match &message {
                            Incoming::Text(text) => Some(Frame::Text(text)),
                            Incoming::Binary(bytes) => Some(Frame::Binary(bytes)),
                            Incoming::Close(frame) => {
                                let code = frame.as_ref().map(|f| u16::from(f.code));
                                let reason = frame
                                    .as_ref()
                                    .map(|f| f.reason.to_string())
                                    .unwrap_or_default();
                                if let Some(conn) = connection.as_mut() {
                                    // The close reply tungstenite queued; best effort.
                                    let _ = conn.flush().await;
                                }
                                connection = None;
                                machine.close_received(now, code, &reason);
                                break;
                            }
                            Incoming::Ping(_) | Incoming::Pong(_) => None,
                        };
                        if let Some(frame) = frame {
                            let lost = handle_frame(
                                frame,
                                now,
                                shard_id,
                                &slot,
                                &shared,
                                &mut decoder,
                                &mut machine,
                                &filter,
                                &mut shard_filter,
                                &arena,
                                &buffers.decoded,
                                &stats,
                                &mut outbox,
                            );
                            if lost {
                                stats.decode_errors.fetch_add(1, Ordering::Relaxed);
                                connection = None;
                                machine.connection_lost(now, LossCause::Decode);
                                break;
                            }
                            queue_notice(
                                &shared,
                                &stats,
                                shard_id,
                                &slot,
                                &mut shard_filter,
                                &mut outbox,
                                &mut ever_ready,
                            );
                        }
                        handled += 1;
                        if handled == FRAMES_PER_TURN_MAX {
                            break;
                        }
                        match connection.as_mut().map(Connection::next_buffered) {
                            Some(Ok(Some(next))) => message = next,
                            Some(Err(error)) => {
                                tracing::debug!(shard = shard_id, %error, "connection lost");
                                connection = None;
                                machine.connection_lost(now, LossCause::Transport);
                                break;
                            }
                            Some(Ok(None)) | None => break,
                        }
                    }
                }
            }
        }
    }
}

/// Why [`open`] has no connection.
enum Unopened {
    /// The process began to stop: not a failure, and not counted as one.
    Stopped,
    Failed(String),
    /// The TLS handshake failed on the server's certificate: a setting (`--ca-file`, the
    /// URL), not a passing fault, so it is also shown at warn.
    Untrusted(crate::transport::TransportError),
}

/// Opens the connection a [`ShardEvent::Connect`] asked for and tells the machine how it went.
/// The whole connect (TCP, TLS, upgrade) is bounded: a server that accepts and then says
/// nothing must not hold the shard.
///
/// Boxed: its state (the TCP, TLS and upgrade futures, ~2.6 KB) lives only while connecting;
/// inline, it would size every shard's task for good (10.5 against 4.7 KB).
fn open<'a>(
    shared: &'a Shared,
    stats: &'a CoreStats,
    query: &'a str,
    target: &'a ConnectTarget,
    machine: &'a mut Shard,
    decoder: &'a mut Decoder,
) -> Pin<Box<impl Future<Output = Option<Connection>> + 'a>> {
    Box::pin(open_inline(shared, stats, query, target, machine, decoder))
}

/// [`open`]'s body.
async fn open_inline(
    shared: &Shared,
    stats: &CoreStats,
    query: &str,
    target: &ConnectTarget,
    machine: &mut Shard,
    decoder: &mut Decoder,
) -> Option<Connection> {
    let url = match target {
        ConnectTarget::Main => Ok(shared.main_url.clone()),
        ConnectTarget::Resume(url) => GatewayUrl::parse(url),
    };
    stats.connects.fetch_add(1, Ordering::Relaxed);
    let opened = match url {
        Ok(url) => {
            let connect = async {
                Connection::connect(
                    &url,
                    query,
                    &shared.tls,
                    ws_config(&shared.decoder_limits),
                    shared.connect_timeout,
                )
                .await
                .map_err(|error| match error.untrusted_certificate() {
                    Some(_) => Unopened::Untrusted(error),
                    None => Unopened::Failed(error.to_string()),
                })
            };
            let deadline = async {
                glommio::timer::sleep(shared.connect_timeout).await;
                Err(Unopened::Failed(format!(
                    "no WebSocket within {} ms (TCP, TLS handshake and upgrade)",
                    shared.connect_timeout.as_millis()
                )))
            };
            // A stop does not wait for a connect to finish: its session (if any) is kept for
            // the next run either way, and a slow server could hold the stop for the whole
            // connect timeout.
            let stop = async {
                while !shared.stop.load(Ordering::Acquire) {
                    glommio::timer::sleep(CONNECT_STOP_POLL).await;
                }
                Err(Unopened::Stopped)
            };
            future::or(connect, future::or(deadline, stop)).await
        }
        Err(error) => Err(Unopened::Failed(error.to_string())),
    };
    match opened {
        Ok(mut opened) => {
            if let Some(coalescing) = shared.read_coalescing {
                opened.coalesce_reads(coalescing);
            }
            decoder.reset();
            machine.connect_succeeded(Instant::now());
            if shared.certificate_warned.load(Ordering::Relaxed) {
                shared.certificate_warned.store(false, Ordering::Relaxed);
            }
            Some(opened)
        }
        Err(unopened) => {
            let reason = match unopened {
                Unopened::Stopped => "stopping".to_owned(),
                Unopened::Failed(reason) => {
                    stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                    reason
                }
                Unopened::Untrusted(error) => {
                    stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                    let reason = error.to_string();
                    // Once per process until a connect succeeds: every shard of the process
                    // has the same trust store, so one line says it for all of them (and one
                    // per shard per retry would bury the log).
                    if !shared.certificate_warned.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            shard = machine.shard_id(),
                            url = %url_text(shared, target),
                            error = %reason,
                            "cannot connect to the gateway; the shards keep retrying, and \
                             further certificate failures are logged at debug until a connect \
                             succeeds"
                        );
                    }
                    reason
                }
            };
            tracing::debug!(shard = machine.shard_id(), %reason, "connect failed");
            machine.connect_failed(Instant::now(), &reason);
            None
        }
    }
}

/// The URL a connect to `target` goes to, for a log line.
fn url_text(shared: &Shared, target: &ConnectTarget) -> String {
    match target {
        ConnectTarget::Main => shared
            .main_url
            .request_url("")
            .trim_end_matches('?')
            .to_owned(),
        ConnectTarget::Resume(url) => url.clone(),
    }
}

/// Decodes one frame and routes its payload; returns true when the connection must go
/// (bad compressed data, oversize, or a payload that is not a gateway message).
#[allow(clippy::too_many_arguments)]
fn handle_frame(
    frame: Frame<'_>,
    now: Instant,
    shard_id: u32,
    slot: &Slot,
    shared: &Shared,
    decoder: &mut Decoder,
    machine: &mut Shard,
    filter: &RefCell<Filter>,
    shard_filter: &mut ShardFilter,
    arena: &RefCell<PayloadArena>,
    decoded: &RefCell<Vec<u8>>,
    stats: &CoreStats,
    outbox: &mut VecDeque<Record>,
) -> bool {
    // Held to the end: no await below.
    let mut decoded = decoded.borrow_mut();
    let payload = match decoder.decode(frame, &mut decoded) {
        Ok(Some(payload)) => payload,
        Ok(None) => return false,
        Err(error) => {
            tracing::warn!(shard = shard_id, %error, "undecodable frame; reconnecting");
            return true;
        }
    };
    let head = match decode::classify(payload) {
        Ok(head) => head,
        Err(error) => {
            tracing::warn!(shard = shard_id, %error, "unclassifiable payload; reconnecting");
            return true;
        }
    };
    if machine.payload_received(now, &head, payload) != PayloadAction::Forward {
        return false;
    }
    stats.dispatches_in.fetch_add(1, Ordering::Relaxed);
    let shard_count = slot.shard_count();
    if head.t == Some("READY") {
        slot.fully_ready.set(false);
    }
    if head.t == Some("READY")
        && let Some(session) = machine.session()
    {
        // Ahead of READY on the ring: the sink learns which session the sequences that follow
        // belong to.
        match serde_json::to_vec(session) {
            Ok(payload) => outbox.push_back(Record {
                shard_id,
                shard_count,
                seq: 0,
                session: 0,
                kind: RecordKind::Session,
                payload: payload.into(),
            }),
            Err(error) => tracing::error!(shard = shard_id, %error, "cannot note the session"),
        }
    }
    let verdict = filter
        .borrow_mut()
        .dispatch(shard_filter, &head, payload, now);
    match verdict {
        // After a reshard's hand-over the new set forwards what this shard receives.
        Verdict::Forward(_)
            if !slot.forwarding.get()
                && !head
                    .t
                    .is_some_and(|name| crate::reshard::answers_a_command(name.as_bytes())) =>
        {
            stats.dropped_handed_over.fetch_add(1, Ordering::Relaxed);
        }
        // A warming shard's READY and backfill: the bot has those guilds from the live set,
        // unless their live shard stopped on a fatal close code (joins while it was closed).
        Verdict::Forward(RecordKind::GuildCreate(GuildCreateClass::Backfill))
            if slot.role.get() == Role::Warming
                && !decode::guild_id(payload)
                    .is_some_and(|guild_id| shared.guild_uncovered(guild_id, shard_count)) =>
        {
            stats
                .dropped_reshard_backfill
                .fetch_add(1, Ordering::Relaxed);
        }
        Verdict::Forward(_)
            if matches!(head.t, Some("READY" | "RESUMED")) && slot.role.get() == Role::Warming =>
        {
            stats
                .dropped_reshard_backfill
                .fetch_add(1, Ordering::Relaxed);
        }
        Verdict::Forward(kind) => outbox.push_back(Record {
            shard_id,
            shard_count,
            seq: head.s.unwrap_or(0),
            session: session_tag(machine),
            kind,
            payload: arena.borrow_mut().copy(payload),
        }),
        Verdict::Drop(crate::filter::DropReason::RedundantMessageUpdate)
            if slot.forwarding.get() && shared.merging.load(Ordering::Relaxed) =>
        {
            stats
                .dropped_redundant_update
                .fetch_add(1, Ordering::Relaxed);
            outbox.push_back(Record {
                shard_id,
                shard_count,
                seq: head.s.unwrap_or(0),
                session: session_tag(machine),
                kind: RecordKind::Redundant,
                payload: arena.borrow_mut().copy(payload),
            });
        }
        Verdict::Drop(reason) => {
            let counter = match reason {
                crate::filter::DropReason::RedundantMessageUpdate => {
                    &stats.dropped_redundant_update
                }
                crate::filter::DropReason::NotAllowed => &stats.dropped_not_allowed,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
    false
}

/// The tag of the session a dispatch came in (0 before the first READY: none reaches here).
fn session_tag(machine: &Shard) -> u32 {
    machine
        .session()
        .map_or(0, |session| crate::record::session_tag(&session.session_id))
}

/// In a fleet, a shard's last record says that it ended here: the fleet hands the session over
/// once the bot has every record before it.
fn note_end(
    shared: &Shared,
    machine: &Shard,
    shard_id: u32,
    shard_count: u32,
    outbox: &mut VecDeque<Record>,
) {
    if shared.fleet_gate.is_some() {
        outbox.push_back(Record {
            shard_id,
            shard_count,
            seq: machine.session().map_or(0, |session| session.sequence),
            session: 0,
            kind: RecordKind::Ended,
            payload: bytes::Bytes::new(),
        });
    }
}

/// A stopping shard's identify ticket, if it still waits, leaves the fleet's bucket.
fn withdraw_identify(shared: &Shared, shard_id: u32, wanted: bool) {
    if wanted && let Some(gate) = &shared.fleet_gate {
        gate.cancel(shard_id);
    }
}

/// How far [`push_outbox`] got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pushed {
    All,
    RingFull,
    SinkGone,
}

/// Moves the outbox's records onto the sink's ring, oldest first, until it is empty or the ring
/// is full.
fn push_outbox(
    ring: &RingSender,
    pushed: &Doorbell,
    outbox: &mut VecDeque<Record>,
    stats: &CoreStats,
) -> Pushed {
    if !outbox.is_empty() {
        // Rung first: the announcer runs after this task yields, whatever happens below.
        pushed.ring();
    }
    while let Some(record) = outbox.pop_front() {
        match ring.try_push(record) {
            Ok(()) => {
                stats.records_forwarded.fetch_add(1, Ordering::Relaxed);
            }
            Err(PushError::Full(record)) => {
                stats.ring_full_waits.fetch_add(1, Ordering::Relaxed);
                outbox.push_front(record);
                return Pushed::RingFull;
            }
            Err(PushError::Disconnected) => return Pushed::SinkGone,
        }
    }
    Pushed::All
}

/// Hands every record still in a shard's outbox to the sink as its task ends, waiting while
/// the ring is full (the collector empties it into memory or the spill). Records read with the
/// frame that ended the shard (a fatal close code) have no session left to replay them.
async fn flush_outbox(
    ring: &RingSender,
    pushed: &Doorbell,
    outbox: &mut VecDeque<Record>,
    stats: &CoreStats,
) {
    loop {
        match push_outbox(ring, pushed, outbox, stats) {
            Pushed::All => return,
            Pushed::RingFull => glommio::timer::sleep(RING_RETRY).await,
            Pushed::SinkGone => {
                tracing::error!(
                    records = outbox.len() + 1,
                    "the sink is gone; a stopping shard's last records are lost"
                );
                return;
            }
        }
    }
}

/// Queues the notice the shard's filter has ready, if any (after a frame or a timer).
fn queue_notice(
    shared: &Shared,
    stats: &CoreStats,
    shard_id: u32,
    slot: &Slot,
    shard_filter: &mut ShardFilter,
    outbox: &mut VecDeque<Record>,
    ever_ready: &mut bool,
) {
    let Some(notice) = shard_filter.take_notice() else {
        return;
    };
    if notice == Notice::ShardReady {
        slot.fully_ready.set(true);
    }
    // A warming shard's readiness is the reshard's business, not the bot's.
    if slot.role.get() != Role::Live {
        return;
    }
    let shard_count = slot.shard_count();
    let payload = format!(r#"{{"guilds":{}}}"#, shard_filter.guilds()).into_bytes();
    outbox.push_back(Record {
        shard_id,
        shard_count,
        seq: 0,
        session: 0,
        kind: RecordKind::Notice(notice),
        payload: payload.into(),
    });
    // Every session's SHARD_READY reaches the bot; the counts (startup progress, and the one
    // ALL_SHARDS_READY) take each shard once.
    if notice == Notice::ShardReady && !std::mem::replace(ever_ready, true) {
        stats.shards_ready.fetch_add(1, Ordering::Relaxed);
        let ready = shared.shards_ready.fetch_add(1, Ordering::AcqRel) + 1;
        if ready == shared.shards_owned {
            let payload = format!(r#"{{"shards":{ready}}}"#).into_bytes();
            outbox.push_back(Record {
                shard_id,
                shard_count,
                seq: 0,
                session: 0,
                kind: RecordKind::Notice(Notice::AllShardsReady),
                payload: payload.into(),
            });
        }
    }
}

/// `v=10&encoding=json[&compress=…]`.
pub fn gateway_query(compression: Compression) -> String {
    match compression.query_param() {
        Some(compress) => format!("v=10&encoding=json&compress={compress}"),
        None => "v=10&encoding=json".to_owned(),
    }
}

fn ws_config(limits: &DecoderLimits) -> WebSocketConfig {
    // A frame bigger than the decompressed cap cannot decode into anything we accept. (No
    // read_buffer_size: the transport keeps no per-connection read buffer, see transport.rs.)
    WebSocketConfig::default()
        .max_message_size(Some(limits.payload_bytes_max))
        .max_frame_size(Some(limits.payload_bytes_max))
}
