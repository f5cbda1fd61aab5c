//! The sink: drains every core's ring into a queue (memory up to a bound, then the disk spill)
//! and delivers it to the bot over HTTP in batches, in order per shard, at least once.
//!
//! Two threads, never on a core (blocking I/O is allowed here and nowhere else):
//! - the collector (`shardgate-sink`) drains the rings into the [`queue::Queue`] and writes the
//!   spill; it never waits on the bot, so the cores keep reading while the bot is away. Only
//!   when memory is full and there is no spill does it stop draining: a full ring is then the
//!   cores' backpressure.
//! - the deliverer (`shardgate-deliver`) takes batches from the queue (memory first, then the
//!   spill), posts them, and acknowledges them on a 2xx. Anything else is retried with backoff,
//!   and nothing behind a batch moves while it is retried, so per shard order holds.
//!
//! Saved sessions come from the queue: [`Sink::saved_sessions`] gives every shard's session
//! with the last sequence that reached the bot or the spill.

pub mod batch;
#[doc(hidden)]
pub mod fuzz;
pub mod http;
pub mod merge;
pub mod queue;
pub mod sessions;
pub mod streams;
pub mod target;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::record::{Record, RecordKind};
use crate::ring::{RingReceiver, RingWake, TakeError};
use merge::{MergeReport, Merger, SinkControl};
use queue::{Queue, Source};
use sessions::SavedSessions;
use target::Failure;
pub use target::{HttpTarget, Target};

/// First retry delay after a failed delivery; doubles up to [`RETRY_DELAY_MAX`].
const RETRY_DELAY_MIN: Duration = Duration::from_millis(100);
const RETRY_DELAY_MAX: Duration = Duration::from_secs(5);
/// Records the collector moves per lock of the queue.
const COLLECT_CHUNK: usize = 1024;

/// Batching and delivery settings (sizes decided at startup).
#[derive(Clone, Debug)]
pub struct SinkConfig {
    pub batch_events_max: usize,
    pub batch_bytes_max: usize,
    pub batch_linger: Duration,
    /// After the cores stopped, how long undelivered batches are still retried before they
    /// are written to the spill (or, without one, counted as dropped:
    /// `shutdown_undelivered`).
    pub shutdown_grace: Duration,
    /// The most records per second delivered while a backlog drains; 0: no limit.
    pub backlog_rate: u32,
}

/// Counters read by the reporter.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Records the collector took from the rings (dispatches and notices; not the session
    /// markers, which the sink consumes). Each ends delivered, dropped with a reason (invalid
    /// payload, spill full, shutdown), or on the spill: in a run that started with an empty
    /// spill, `received = delivered + dropped + queued on the spill` at the stop.
    pub records_received: AtomicU64,
    pub batches_delivered: AtomicU64,
    pub records_delivered: AtomicU64,
    pub bytes_delivered: AtomicU64,
    pub delivery_failures: AtomicU64,
    /// Records neither delivered nor written to the spill when the process stopped (their
    /// shards' saved sequence stops before them: Discord replays them on resume).
    pub records_dropped_shutdown: AtomicU64,
    /// Records left out of their batch because their payload is not valid JSON (a broken
    /// gateway's), found when the bot refused the batch.
    pub records_dropped_invalid: AtomicU64,
    /// Records written to the spill.
    pub records_spilled: AtomicU64,
    /// Spilled records deleted unread because the spill reached its disk bound.
    pub records_dropped_spill_full: AtomicU64,
    /// Spill writes that failed (retried; the rings fill meanwhile).
    pub spill_errors: AtomicU64,
    /// Queue depth now: records and bytes in memory, records on the spill.
    pub queue_memory_records: AtomicU64,
    pub queue_memory_bytes: AtomicU64,
    pub queue_spill_records: AtomicU64,
    /// Lanes the route's shards are spread over now: 1 while one batch at a time keeps up,
    /// all of them (`--batches-in-flight`) under load (see [`Lanes`]).
    pub lanes_active: AtomicU64,
    /// Sum and count of batch latencies (first record in → 2xx), for a mean.
    pub batch_latency_us_sum: AtomicU64,
    /// Latency histogram buckets (µs upper bounds in [`LATENCY_BUCKETS_US`]), for p50/p99.
    pub batch_latency_buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
}

/// Upper bounds of the batch latency histogram, in microseconds.
pub const LATENCY_BUCKETS_US: [u64; 14] = [
    250, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000,
    5_000_000, 30_000_000,
];

impl SinkStats {
    fn record_latency(&self, latency: Duration) {
        let micros = latency.as_micros() as u64;
        self.batch_latency_us_sum
            .fetch_add(micros, Ordering::Relaxed);
        let bucket = LATENCY_BUCKETS_US
            .iter()
            .position(|bound| micros <= *bound)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        self.batch_latency_buckets[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// The latency histogram's counts now (bounds in [`LATENCY_BUCKETS_US`], then overflow).
    pub fn latency_buckets(&self) -> Vec<u64> {
        self.batch_latency_buckets
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    /// The latency (µs bucket bound) below which `quantile` of the batches fall.
    pub fn latency_quantile_us(&self, quantile: f64) -> Option<u64> {
        latency_quantile_us(&self.latency_buckets(), quantile)
    }
}

/// The bucket bound (µs) below which `quantile` of the batches counted in `counts` (a
/// [`SinkStats::latency_buckets`] reading, or the difference of two) fall; `None` when empty.
pub fn latency_quantile_us(counts: &[u64], quantile: f64) -> Option<u64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let target = (total as f64 * quantile).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (index, count) in counts.iter().enumerate() {
        seen += count;
        if seen >= target {
            return Some(LATENCY_BUCKETS_US.get(index).copied().unwrap_or(u64::MAX));
        }
    }
    None
}

/// One route: the event types it takes, its own batching, queue (memory bound and spill),
/// target and counters, delivered by its own thread so that a slow receiver delays only its
/// own route.
pub struct Route {
    /// `default` for the route of everything no other route names (and of the notices).
    pub name: String,
    /// The dispatch types it takes; empty for the default route.
    pub events: Vec<String>,
    pub config: SinkConfig,
    /// At least one. A shard's records take lane `shard_id % active` (see [`Lanes`]); each lane
    /// has its own queue, target (connection) and deliverer, so that many batches are in flight
    /// at once while every shard's stay in order.
    pub lanes: Vec<Lane>,
    /// Its counters (all its lanes'); the default route of a sink without other routes may
    /// share the totals'.
    pub stats: Arc<SinkStats>,
}

/// One delivery lane of a route.
pub struct Lane {
    pub queue: Queue,
    pub target: Box<dyn Target>,
}

/// The running sink: the collector, one deliverer per route, and the queues they share.
pub struct Sink {
    shared: Arc<SinkShared>,
    control: crossbeam_channel::Sender<SinkControl>,
    /// The collector's wake-up (a control wakes it).
    collector_wake: Arc<RingWake>,
    collector: Option<std::thread::JoinHandle<()>>,
    deliverers: Vec<std::thread::JoinHandle<()>>,
}

struct SinkShared {
    /// Every lane of every route, route by route (the one order anything locks more than one
    /// queue in).
    routes: Vec<RouteShared>,
    /// Per route: its first lane in `routes`, and how many it has.
    route_lanes: Vec<(usize, usize)>,
    /// Per route: over how many of its lanes its shards are spread now (the collector's; see
    /// [`Lanes`]).
    active_lanes: Vec<AtomicUsize>,
    router: Router,
    /// The index the next record pushed into any route's queue gets (the collector's, written
    /// while it holds every queue).
    pushed: AtomicU64,
    collector_done: AtomicBool,
    stop: Arc<AtomicBool>,
    /// What the collector says about a reshard's merge.
    merge: Mutex<MergeReport>,
}

/// One lane of a route.
struct RouteShared {
    name: String,
    queue: Mutex<Queue>,
    /// Signalled when its deliverer has something new to act on (records after none, a batch's
    /// worth, the collector's end), and by the deliverer when it took records (for a collector
    /// waiting for room).
    changed: Condvar,
    config: SinkConfig,
    stats: Counters,
    /// The deliverer stopped trying (the stop's grace ran out with the receiver away).
    gave_up: AtomicBool,
}

/// One of the counters of [`SinkStats`].
type Counter = fn(&SinkStats) -> &AtomicU64;

/// A route's counters, and the sink's totals when those are another set.
struct Counters {
    route: Arc<SinkStats>,
    total: Option<Arc<SinkStats>>,
    /// This lane's depth gauges as last published (the route's and the totals' are sums).
    depth: [AtomicU64; 3],
}

impl Counters {
    fn add(&self, counter: Counter, value: u64) {
        counter(&self.route).fetch_add(value, Ordering::Relaxed);
        if let Some(total) = &self.total {
            counter(total).fetch_add(value, Ordering::Relaxed);
        }
    }

    fn record_latency(&self, latency: Duration) {
        self.route.record_latency(latency);
        if let Some(total) = &self.total {
            total.record_latency(latency);
        }
    }

    /// The route's depth gauges, and the totals moved by the change.
    fn publish_depth(&self, queue: &Queue) {
        let (records, bytes, spilled) = queue.depth();
        let gauges: [(u64, Counter); 3] = [
            (records, |s| &s.queue_memory_records),
            (bytes, |s| &s.queue_memory_bytes),
            (spilled, |s| &s.queue_spill_records),
        ];
        for ((value, gauge), last) in gauges.into_iter().zip(&self.depth) {
            // Wrapping: a fall is the two's complement of its size.
            let change = value.wrapping_sub(last.swap(value, Ordering::Relaxed));
            gauge(&self.route).fetch_add(change, Ordering::Relaxed);
            if let Some(total) = &self.total {
                gauge(total).fetch_add(change, Ordering::Relaxed);
            }
        }
    }

    /// The route's own counter, when it is not the totals' (those the collector counts once
    /// for every route).
    fn own(&self) -> Option<&SinkStats> {
        self.total.is_some().then_some(&*self.route)
    }
}

/// Where a record goes: the route naming its type, the default route, or every route (the
/// bookkeeping records each queue needs to keep its shards' positions).
struct Router {
    /// Event name → route index; empty when there is only the default route.
    by_name: std::collections::HashMap<Box<[u8]>, usize>,
}

enum Destination {
    One(usize),
    All,
}

impl Router {
    fn new(routes: &[Route]) -> Router {
        let mut by_name = std::collections::HashMap::new();
        for (index, route) in routes.iter().enumerate() {
            for name in &route.events {
                by_name
                    .entry(name.as_bytes().to_vec().into_boxed_slice())
                    .or_insert(index);
            }
        }
        Router { by_name }
    }

    fn destination(&self, record: &Record) -> Destination {
        match record.kind {
            RecordKind::Session | RecordKind::Ended | RecordKind::Position => Destination::All,
            RecordKind::Dispatch | RecordKind::GuildCreate(_) if !self.by_name.is_empty() => {
                let route = crate::decode::scan::event_name(&record.payload)
                    .and_then(|name| self.by_name.get(name))
                    .copied()
                    .unwrap_or(0);
                Destination::One(route)
            }
            _ => Destination::One(0),
        }
    }
}

impl SinkShared {
    fn merge(&self) -> MutexGuard<'_, MergeReport> {
        self.merge.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every route's queue, locked in route order (the one order anything takes more than one).
    fn queues(&self) -> Vec<MutexGuard<'_, Queue>> {
        self.routes.iter().map(RouteShared::queue).collect()
    }

    fn durable_before(&self) -> u64 {
        let queues = self.queues();
        queues
            .iter()
            .filter_map(|queue| queue.oldest_pending())
            .min()
            .unwrap_or_else(|| self.pushed.load(Ordering::Acquire))
    }

    fn notify_all(&self) {
        for route in &self.routes {
            route.changed.notify_all();
        }
    }
}

/// What a lane's deliverer waits for, read from its queue: the collector wakes it only when this
/// changes in a way it waits on (records after none, a batch's worth after less). A deliverer
/// lingering over a part batch wakes by its own deadline, not once per push.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Readiness {
    /// Nothing queued: the deliverer waits without a deadline.
    Empty,
    /// Part of a batch in memory: the deliverer waits for the linger's deadline.
    Lingering,
    /// A batch's worth, or records on the spill: the deliverer sends (or is sending).
    Ready,
}

impl RouteShared {
    fn readiness(&self, queue: &Queue) -> Readiness {
        let (records, bytes, spilled) = queue.depth();
        if records == 0 && spilled == 0 {
            Readiness::Empty
        } else if spilled > 0
            || records as usize >= self.config.batch_events_max
            || bytes as usize >= self.config.batch_bytes_max
        {
            Readiness::Ready
        } else {
            Readiness::Lingering
        }
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        // The queue's invariants hold between calls; a panic elsewhere does not break them.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish_depth(&self, queue: &Queue) {
        self.stats.publish_depth(queue);
    }
}

/// Reads the queues' positions from another thread.
#[derive(Clone)]
pub struct SinkPositions(Arc<SinkShared>);

impl SinkPositions {
    /// See [`Queue::acknowledged_sessions`]; across every route's queue.
    pub fn acknowledged_sessions(&self, shard_count: u32) -> Vec<queue::Acknowledged> {
        let queues = self.0.queues();
        let queues: Vec<&Queue> = queues.iter().map(|queue| &**queue).collect();
        queue::acknowledged_sessions(&queues, shard_count)
    }
}

impl Sink {
    /// Starts the collector and one deliverer per route (the first is the default route).
    /// They end once every ring is disconnected (all cores ended) and the queues are
    /// delivered, or, once `stop` is set, after the shutdown grace (the rest goes to the
    /// spill). `totals` counts for every route together.
    pub fn start(
        routes: Vec<Route>,
        rings: Vec<RingReceiver>,
        wake: Arc<RingWake>,
        totals: Arc<SinkStats>,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<Sink> {
        assert!(!routes.is_empty(), "a sink has its default route");
        let router = Router::new(&routes);
        let mut targets = Vec::new();
        let mut shared_routes = Vec::new();
        let mut route_lanes = Vec::with_capacity(routes.len());
        let mut active_lanes = Vec::with_capacity(routes.len());
        for (route_index, route) in routes.into_iter().enumerate() {
            assert!(!route.lanes.is_empty(), "a route has a lane");
            // Spread over every lane if a lane but the first holds spilled records (they were
            // spread when they spilled); else one lane until the load asks for more.
            let spread = route
                .lanes
                .iter()
                .skip(1)
                .any(|lane| lane.queue.depth().2 > 0);
            let active = if spread { route.lanes.len() } else { 1 };
            route
                .stats
                .lanes_active
                .store(active as u64, Ordering::Relaxed);
            active_lanes.push(AtomicUsize::new(active));
            route_lanes.push((shared_routes.len(), route.lanes.len()));
            let total = (!Arc::ptr_eq(&route.stats, &totals)).then(|| Arc::clone(&totals));
            let lanes = route.lanes.len();
            for (index, lane) in route.lanes.into_iter().enumerate() {
                // Thread names are at most 15 bytes on Linux: the default route's first lane
                // keeps the name it had before lanes.
                let thread = match (route_index, index) {
                    (0, 0) => "shardgate-deliver".to_owned(),
                    _ => format!("sg-dlv-{route_index}.{index}"),
                };
                targets.push((lane.target, thread));
                shared_routes.push(RouteShared {
                    name: if lanes == 1 {
                        route.name.clone()
                    } else {
                        format!("{}/{index}", route.name)
                    },
                    queue: Mutex::new(lane.queue),
                    changed: Condvar::new(),
                    config: route.config.clone(),
                    stats: Counters {
                        route: Arc::clone(&route.stats),
                        total: total.clone(),
                        depth: Default::default(),
                    },
                    gave_up: AtomicBool::new(false),
                });
            }
        }
        let shared = Arc::new(SinkShared {
            routes: shared_routes,
            route_lanes,
            router,
            pushed: AtomicU64::new(0),
            active_lanes,
            collector_done: AtomicBool::new(false),
            stop,
            merge: Mutex::new(MergeReport::default()),
        });
        let (control, control_rx) = crossbeam_channel::unbounded();
        let collector_wake = Arc::clone(&wake);
        let collector = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("shardgate-sink".into())
                .spawn(move || collect(&shared, rings, &wake, &control_rx))?
        };
        let mut deliverers = Vec::with_capacity(targets.len());
        for (index, (target, name)) in targets.into_iter().enumerate() {
            let shared = Arc::clone(&shared);
            deliverers.push(
                std::thread::Builder::new()
                    .name(name)
                    .spawn(move || deliver_loop(&shared, index, target))?,
            );
        }
        Ok(Sink {
            shared,
            control,
            collector_wake,
            collector: Some(collector),
            deliverers,
        })
    }

    /// Every shard's session with the last sequence that reached the bot or the spill (on
    /// every route).
    pub fn saved_sessions(&self) -> SavedSessions {
        let queues = self.shared.queues();
        let queues: Vec<&Queue> = queues.iter().map(|queue| &**queue).collect();
        queue::saved_sessions(&queues)
    }

    /// A handle on the queues' positions for another thread (the fleet's agent).
    pub fn positions(&self) -> SinkPositions {
        SinkPositions(Arc::clone(&self.shared))
    }

    /// Tells the collector (in order with the records it takes).
    pub fn control(&self, control: SinkControl) {
        // The collector ends only after the cores; a control then has nothing left to act on.
        let _ = self.control.send(control);
        self.collector_wake.wake();
    }

    /// What the collector says about a reshard's merge.
    pub fn merge_report(&self) -> MergeReport {
        self.shared.merge().clone()
    }

    /// Whether a session of the saved set started since the last call.
    pub fn take_sessions_changed(&self) -> bool {
        // Every queue saw every marker: take them all, so that the next call starts afresh.
        let mut changed = false;
        for mut queue in self.shared.queues() {
            changed |= queue.take_sessions_changed();
        }
        changed
    }

    /// The sink's durable point: every record with an index below it is durable in its
    /// route's queue (see [`Queue::durable_before`]).
    pub fn durable_before(&self) -> u64 {
        self.shared.durable_before()
    }

    /// From now on the saved sessions are those of the set with `shard_count` shards, and the
    /// positions of the set `forget` (if any) are dropped.
    pub fn save_set(&self, shard_count: u32, forget: Option<u32>) {
        for mut queue in self.shared.queues() {
            queue.save_set(shard_count);
            if let Some(old) = forget {
                queue.forget_set(old);
            }
        }
    }

    /// Waits for every thread (false if one panicked) and returns the final sessions.
    pub fn finish(mut self) -> (bool, SavedSessions) {
        let collector = self.collector.take().is_none_or(|t| t.join().is_ok());
        // A collector that panicked never says it is done; say it for it.
        self.shared.collector_done.store(true, Ordering::Release);
        self.shared.notify_all();
        let mut deliverers = true;
        for deliverer in self.deliverers.drain(..) {
            deliverers &= deliverer.join().is_ok();
        }
        (collector && deliverers, self.saved_sessions())
    }
}

/// The collector: rings → (a reshard's merge) → the routes' queues, until every ring is
/// disconnected and drained.
fn collect(
    shared: &SinkShared,
    rings: Vec<RingReceiver>,
    wake: &RingWake,
    control: &Receiver<SinkControl>,
) {
    let mut open = vec![true; rings.len()];
    let mut chunk: VecDeque<Record> = VecDeque::with_capacity(COLLECT_CHUNK);
    // What goes into the queues, in order: the merge's output, or the rings' records as they are.
    let mut staged: VecDeque<Record> = VecDeque::with_capacity(COLLECT_CHUNK);
    let mut merged: Vec<Record> = Vec::new();
    let mut merger: Option<Merger> = None;
    // The set of the last reshard aborted: its shards' records still on the rings are the live
    // set's events a second time, and go no further.
    let mut aborted_set: Option<u32> = None;
    // After a hand-over flipped the merge: how many staged records come before the barrier.
    let mut before_barrier: Option<usize> = None;
    // A record for every route whose push failed part way: the routes that have it.
    let mut broadcast_done = 0;
    let mut next_ring = 0;
    let mut lanes: Vec<Lanes> = (0..shared.route_lanes.len())
        .map(|_| Lanes::new(Instant::now()))
        .collect();
    loop {
        // Backpressure: without a spill, a full memory queue waits for its deliverer, unless
        // that deliverer gave up at the stop: then what the cores still send waits in memory
        // (counted as dropped at shutdown), so that they can end.
        for route in &shared.routes {
            let mut queue = route.queue();
            while queue.is_full() && !route.gave_up.load(Ordering::Acquire) {
                queue = route
                    .changed
                    .wait_timeout(queue, Duration::from_millis(100))
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        }
        let now = Instant::now();
        let holding = steer_lanes(shared, &mut lanes, now);
        while let Ok(order) = control.try_recv() {
            let flipped = match order {
                SinkControl::BeginMerge { live, new, limits } => {
                    merger = Some(Merger::new(live, new, limits));
                    aborted_set = None;
                    // A new merge's figures start from nothing.
                    *shared.merge() = MergeReport::default();
                    false
                }
                SinkControl::AwaitHandOver { shard_ids } => merger
                    .as_mut()
                    .is_some_and(|m| m.await_hand_over(shard_ids, &mut merged)),
                SinkControl::EndMerge { abort } => {
                    if let Some(ended) = merger.take() {
                        let mut report = shared.merge();
                        ended.report(&mut report);
                        report.sets = None;
                        if abort {
                            aborted_set = Some(ended.new_set());
                            report.dropped_on_abort += ended.abort();
                        }
                    }
                    false
                }
                SinkControl::Notice(record) => {
                    merged.push(record);
                    false
                }
            };
            staged.extend(merged.drain(..));
            if flipped {
                before_barrier = Some(staged.len());
            }
        }
        // While a route switches its lanes, the rings wait (the cores see a full ring at worst).
        for offset in (0..rings.len()).filter(|_| !holding) {
            let index = (next_ring + offset) % rings.len();
            while open[index] && chunk.len() < COLLECT_CHUNK {
                match rings[index].try_recv() {
                    Ok(record) => chunk.push_back(record),
                    Err(TakeError::Empty) => break,
                    Err(TakeError::Disconnected) => open[index] = false,
                }
            }
        }
        next_ring = (next_ring + 1) % rings.len().max(1);
        let received = chunk
            .iter()
            .filter(|record| record.kind.is_for_bot())
            .count() as u64;
        // The totals (a route counts its own share as it takes it).
        match &shared.routes[0].stats.total {
            Some(total) => total
                .records_received
                .fetch_add(received, Ordering::Relaxed),
            None => shared.routes[0]
                .stats
                .route
                .records_received
                .fetch_add(received, Ordering::Relaxed),
        };
        match merger.as_mut() {
            Some(merger) => {
                for record in chunk.drain(..) {
                    let flipped = merger.take(record, now, &mut merged);
                    staged.extend(merged.drain(..));
                    if flipped {
                        before_barrier = Some(staged.len());
                    }
                }
                merger.expire(now, &mut merged);
                staged.extend(merged.drain(..));
                merger.report(&mut shared.merge());
            }
            // Hand-over records outside a merge (a reshard that ended meanwhile) go no further,
            // nor does what an aborted reshard's set sent before it closed.
            None => {
                let mut dropped = 0;
                staged.extend(chunk.drain(..).filter(|record| {
                    if aborted_set == Some(record.shard_count) {
                        dropped += u64::from(record.kind.is_for_bot());
                        return false;
                    }
                    !matches!(record.kind, RecordKind::HandedOver | RecordKind::Redundant)
                }));
                if dropped > 0 {
                    shared.merge().dropped_on_abort += dropped;
                }
            }
        }
        if staged.is_empty() && before_barrier.is_none() {
            if open.iter().all(|o| !o) {
                break;
            }
            if holding {
                std::thread::sleep(LANE_SWITCH_POLL);
                continue;
            }
            // Wakes when any ring has a record (or closes) or a control comes, and at least
            // every 100 ms during a merge (for its expiry), every second otherwise.
            let timeout = if merger.is_some() {
                Duration::from_millis(100)
            } else {
                COLLECTOR_IDLE_WAKE
            };
            wake.sleep(timeout, || {
                rings
                    .iter()
                    .zip(&open)
                    .any(|(ring, open)| *open && ring.is_ready())
            });
            continue;
        }
        // Wakes the deliverers that wait for what it pushed.
        let failed = push_staged(
            shared,
            &mut staged,
            &mut before_barrier,
            &mut broadcast_done,
            now,
        );
        if let Some(error) = failed {
            // The cores wait behind the full rings meanwhile; nothing is dropped.
            tracing::error!(%error, "cannot write the spill; retrying in 1 s");
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    shared.collector_done.store(true, Ordering::Release);
    shared.notify_all();
}

/// The longest the collector sleeps without a merge in progress (a safety net: rings, controls
/// and the stop wake it).
const COLLECTOR_IDLE_WAKE: Duration = Duration::from_secs(1);
/// The longest a deliverer with nothing queued sleeps (the collector wakes it for records and
/// at its end).
const DELIVERER_IDLE_WAKE: Duration = Duration::from_secs(1);

/// How long a route must stay light (no lane holding a batch's worth) before its shards go
/// back to one lane.
const LANES_LIGHT_HOLD: Duration = Duration::from_secs(10);
/// A switch whose lanes do not drain within this is given up (the receiver slowed down or went
/// away meanwhile) and tried again after [`LANES_RETRY_AFTER`].
const LANE_SWITCH_WAIT_MAX: Duration = Duration::from_secs(1);
const LANES_RETRY_AFTER: Duration = Duration::from_secs(5);
/// How often the collector looks at the lanes while it holds the rings for a switch.
const LANE_SWITCH_POLL: Duration = Duration::from_millis(1);

/// Over how many of its lanes a route spreads its shards, decided by the collector.
///
/// One lane while one batch at a time keeps up: every lane's batch is a request, a response and
/// wake-ups of its own, so at a few thousand events per second four lanes would each send a
/// part batch every linger, four times the cost of one (measured: 25 % more engine CPU per
/// event at 500 events/s per shard). All lanes (`--batches-in-flight`) as soon as the first
/// holds two batches' worth: a slow receiver then has that many batches to work on at once.
/// Back to one after [`LANES_LIGHT_HOLD`] without a batch's worth in any lane.
///
/// A shard never has records in two lanes, so its order holds: the collector switches only
/// once every lane of the route is drained (nothing queued, nothing in flight), taking nothing
/// from the rings meanwhile (the cores wait as for a full ring; nothing is dropped), which at a
/// switch up is two batches and the one in flight. A route with records on a spill does not
/// switch; a switch whose lanes do not drain within [`LANE_SWITCH_WAIT_MAX`] is given up.
struct Lanes {
    /// The count being switched to, since when.
    switching: Option<(usize, Instant)>,
    /// When a lane last held a batch's worth.
    busy_at: Instant,
    /// No switch up before this (after one was given up).
    retry_after: Instant,
}

impl Lanes {
    fn new(now: Instant) -> Lanes {
        Lanes {
            switching: None,
            busy_at: now,
            retry_after: now,
        }
    }
}

/// Decides and completes lane switches (see [`Lanes`]); whether the rings must wait.
fn steer_lanes(shared: &SinkShared, lanes: &mut [Lanes], now: Instant) -> bool {
    let stopping = shared.stop.load(Ordering::Acquire);
    let mut holding = false;
    for (route, state) in lanes.iter_mut().enumerate() {
        let (first, count) = shared.route_lanes[route];
        if count < 2 {
            continue;
        }
        let config = &shared.routes[first].config;
        let (mut loaded, mut busy, mut spilled, mut drained) = (false, false, false, true);
        for (index, lane) in shared.routes[first..first + count].iter().enumerate() {
            let queue = lane.queue();
            let (records, bytes, on_spill) = queue.depth();
            let batches = (records as usize / config.batch_events_max.max(1))
                .max(bytes as usize / config.batch_bytes_max.max(1));
            loaded |= index == 0 && batches >= 2;
            busy |= batches >= 1;
            spilled |= on_spill > 0;
            drained &= queue.is_drained();
        }
        if busy {
            state.busy_at = now;
        }
        let active = shared.active_lanes[route].load(Ordering::Relaxed);
        match state.switching {
            None if stopping || spilled => {}
            None if active == 1 && loaded && now >= state.retry_after => {
                state.switching = Some((count, now));
            }
            None if active == count && now.duration_since(state.busy_at) >= LANES_LIGHT_HOLD => {
                state.switching = Some((1, now));
            }
            None => {}
            Some((to, _)) if drained => {
                shared.active_lanes[route].store(to, Ordering::Relaxed);
                shared.routes[first]
                    .stats
                    .route
                    .lanes_active
                    .store(to as u64, Ordering::Relaxed);
                tracing::debug!(route = %shared.routes[first].name, lanes = to, "lanes switched");
                state.switching = None;
                state.busy_at = now;
            }
            Some((_, since))
                if stopping || spilled || now.duration_since(since) >= LANE_SWITCH_WAIT_MAX =>
            {
                state.switching = None;
                state.retry_after = now + LANES_RETRY_AFTER;
            }
            Some(_) => {}
        }
        holding |= state.switching.is_some();
    }
    holding
}

/// Moves `staged` into the routes' queues in order, numbering every record across them. Stops
/// at the first record a queue cannot take (its spill failed; the error is counted and comes
/// back): it stays first in `staged`, and `broadcast_done` says which routes already have it
/// when it goes to every route.
fn push_staged(
    shared: &SinkShared,
    staged: &mut VecDeque<Record>,
    before_barrier: &mut Option<usize>,
    broadcast_done: &mut usize,
    now: Instant,
) -> Option<crate::spill::SpillError> {
    let mut queues = shared.queues();
    let several = queues.len() > 1;
    let before: Vec<Readiness> = shared
        .routes
        .iter()
        .zip(&queues)
        .map(|(route, queue)| route.readiness(queue))
        .collect();
    let mut next = shared.pushed.load(Ordering::Relaxed);
    let mut spilled = vec![0; queues.len()];
    let mut failed = None;
    'records: loop {
        if *before_barrier == Some(0) {
            *before_barrier = None;
            shared.merge().barrier = Some(next);
        }
        let Some(record) = staged.pop_front() else {
            break;
        };
        let account = |route: usize, pushed: queue::Pushed, spilled: &mut Vec<u64>| {
            spilled[route] += pushed.to_spill;
            if pushed.spill_dropped > 0 {
                shared.routes[route]
                    .stats
                    .add(|s| &s.records_dropped_spill_full, pushed.spill_dropped);
            }
        };
        match shared.router.destination(&record) {
            Destination::One(route) => {
                let (first, _) = shared.route_lanes[route];
                let active = shared.active_lanes[route].load(Ordering::Relaxed).max(1);
                let route = first + record.shard_id as usize % active;
                if several {
                    for (other, queue) in queues.iter_mut().enumerate() {
                        if other != route {
                            queue.note_seen(&record);
                        }
                    }
                }
                let for_bot = record.kind.is_for_bot();
                let queue = &mut queues[route];
                queue.skip_to(next);
                match queue.push(record, now) {
                    Ok(pushed) => {
                        if for_bot && let Some(own) = shared.routes[route].stats.own() {
                            own.records_received.fetch_add(1, Ordering::Relaxed);
                        }
                        account(route, pushed, &mut spilled);
                    }
                    Err((error, record)) => {
                        // Keep it and everything after it: retried, in order.
                        shared.routes[route].stats.add(|s| &s.spill_errors, 1);
                        staged.push_front(record);
                        failed = Some(error);
                        break;
                    }
                }
            }
            Destination::All => {
                for (route, queue) in queues.iter_mut().enumerate().skip(*broadcast_done) {
                    queue.skip_to(next);
                    match queue.push(record.clone(), now) {
                        Ok(pushed) => account(route, pushed, &mut spilled),
                        Err((error, _)) => {
                            shared.routes[route].stats.add(|s| &s.spill_errors, 1);
                            *broadcast_done = route;
                            staged.push_front(record);
                            failed = Some(error);
                            break 'records;
                        }
                    }
                }
            }
        }
        *broadcast_done = 0;
        if let Some(count) = before_barrier.as_mut() {
            *count -= 1;
        }
        next += 1;
    }
    shared.pushed.store(next, Ordering::Release);
    for ((route, queue), spilled) in shared.routes.iter().zip(queues.iter_mut()).zip(spilled) {
        if spilled > 0 {
            route.stats.add(|s| &s.records_spilled, spilled);
            if let Err(error) = queue.flush_spill() {
                route.stats.add(|s| &s.spill_errors, 1);
                tracing::error!(route = %route.name, %error, "cannot flush the spill");
            }
        }
        route.publish_depth(queue);
    }
    for ((route, queue), before) in shared.routes.iter().zip(&queues).zip(before) {
        let after = route.readiness(queue);
        if after != before && (before == Readiness::Empty || after == Readiness::Ready) {
            route.changed.notify_all();
        }
    }
    failed
}

/// The deliverer: queue → bot, until the collector is done and the queue empty (or the stop's
/// grace ran out).
fn deliver_loop(shared: &SinkShared, index: usize, mut target: Box<dyn Target>) {
    let route = &shared.routes[index];
    let config = &route.config;
    let stats = &route.stats;
    let mut batch: Vec<Record> = Vec::with_capacity(config.batch_events_max);
    let mut stop_seen: Option<Instant> = None;
    let mut paced_until = Instant::now();
    loop {
        // Wait for a batch worth sending: full, lingered, or the end.
        let taken = {
            let mut queue = route.queue();
            loop {
                let done = shared.collector_done.load(Ordering::Acquire);
                if queue.is_empty() {
                    if done {
                        return;
                    }
                    queue = route
                        .changed
                        .wait_timeout(queue, DELIVERER_IDLE_WAKE)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                    continue;
                }
                let (memory_records, memory_bytes, _) = queue.depth();
                let full = memory_records as usize >= config.batch_events_max
                    || memory_bytes as usize >= config.batch_bytes_max;
                let linger_left = queue.oldest_at().map_or(Duration::ZERO, |at| {
                    config.batch_linger.saturating_sub(at.elapsed())
                });
                let spill_only = memory_records == 0;
                if full || done || linger_left.is_zero() || spill_only {
                    break;
                }
                queue = route
                    .changed
                    .wait_timeout(queue, linger_left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            let backlog = queue.has_backlog(config.batch_events_max);
            let taken = queue.take(config.batch_events_max, config.batch_bytes_max, &mut batch);
            route.publish_depth(&queue);
            match taken {
                Ok(Some(source)) => (source, backlog),
                Ok(None) => continue,
                Err(error) => {
                    tracing::error!(%error, "cannot read the spill; retrying");
                    drop(queue);
                    std::thread::sleep(RETRY_DELAY_MIN);
                    continue;
                }
            }
        };
        let (source, backlog) = taken;
        // A returning bot gets the backlog at most at backlog_rate records per second.
        if backlog && config.backlog_rate > 0 {
            let now = Instant::now();
            if paced_until > now {
                std::thread::sleep(paced_until - now);
            }
            let spacing =
                Duration::from_secs_f64(batch.len() as f64 / f64::from(config.backlog_rate));
            paced_until = paced_until.max(now) + spacing;
        }
        let first_in = Instant::now();
        target.prepare(&batch, &[]);
        // A batch from memory is tried once; if the bot is away it goes back, with all of
        // memory, to the spill (durable and in order) and delivery continues from there.
        let mut hand_back = matches!(source, Source::Memory(..)) && route.queue().can_hand_back();
        // The first failure also checks the payloads, once per batch (see `drop_invalid`);
        // `left_out` are the indices in `batch` of those no longer in what the target prepared.
        let mut checked = false;
        let mut left_out: Vec<usize> = Vec::new();
        let outcome = loop {
            if left_out.len() as u64 == forwarded_len(&batch) {
                // Every record was invalid, or only position records are left: nothing to send.
                break Some(Outcome::Delivered);
            }
            match deliver(
                target.as_mut(),
                stats,
                &shared.stop,
                &mut stop_seen,
                config.shutdown_grace,
                hand_back || !checked,
            ) {
                Outcome::Failed => {
                    if !checked {
                        checked = true;
                        left_out = drop_invalid(&batch, target.as_mut(), stats);
                        if !left_out.is_empty() {
                            continue;
                        }
                    }
                    if !hand_back {
                        // Only the check asked to return; back to retrying with backoff.
                        std::thread::sleep(RETRY_DELAY_MIN);
                        continue;
                    }
                    let mut queue = route.queue();
                    let (mut generations, first) = match &source {
                        Source::Memory(generations, first) => (generations.clone(), *first),
                        Source::Spill(_) => (Vec::new(), 0),
                    };
                    if queue.can_hand_back() {
                        leave_out(&mut queue, &mut batch, &mut generations, &mut left_out);
                    }
                    match queue.move_memory_to_spill(Some((&mut batch, generations, first))) {
                        Ok(true) => {
                            tracing::info!(
                                spilled = queue.depth().2,
                                "the bot is away: the queue moved to the spill"
                            );
                            route.publish_depth(&queue);
                            break None;
                        }
                        Ok(false) => {}
                        Err(error) => {
                            stats.add(|s| &s.spill_errors, 1);
                            tracing::error!(%error, "cannot move the queue to the spill");
                            route.publish_depth(&queue);
                            break None;
                        }
                    }
                    hand_back = false;
                }
                other => break Some(other),
            }
        };
        match outcome {
            // Handed back: the next batch comes from the spill.
            None => continue,
            Some(Outcome::Delivered) => {
                let forwarded = forwarded_len(&batch) - left_out.len() as u64;
                if forwarded > 0 {
                    stats.add(|s| &s.batches_delivered, 1);
                    stats.add(|s| &s.records_delivered, forwarded);
                    stats.add(|s| &s.bytes_delivered, target.prepared_bytes());
                    stats.record_latency(first_in.elapsed());
                }
                let mut queue = route.queue();
                if let Err(error) = queue.acknowledge(&batch, source) {
                    tracing::error!(%error, "cannot record the spill's progress; a restart may deliver some records again");
                }
                route.publish_depth(&queue);
            }
            Some(Outcome::Failed | Outcome::GraceOver) => {
                // The stop's grace ran out with the bot away. The spill keeps what it holds;
                // records only in memory are lost with the process, and their shards' saved
                // sequence stops before them, so Discord replays them on resume.
                // The collector may wait for room in this queue: it need not any more.
                route.gave_up.store(true, Ordering::Release);
                route.changed.notify_all();
                while !shared.collector_done.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let mut queue = route.queue();
                // Try once more to keep everything on disk, in order (the payloads left out
                // are counted already: they go nowhere, nor into the count below).
                let returned = match &source {
                    Source::Memory(generations, first) => {
                        let mut generations = generations.clone();
                        leave_out(&mut queue, &mut batch, &mut generations, &mut left_out);
                        Some((&mut batch, generations, *first))
                    }
                    Source::Spill(_) => None,
                };
                if let Err(error) = queue.move_memory_to_spill(returned) {
                    tracing::error!(%error, "cannot spill at shutdown");
                }
                // A batch read from the spill was never acknowledged there: it is still on it.
                let batch_not_spilled = match source {
                    Source::Memory(..) => forwarded_len(&batch),
                    Source::Spill(_) => 0,
                };
                let left = queue.memory_records() + batch_not_spilled;
                if left > 0 {
                    stats.add(|s| &s.records_dropped_shutdown, left);
                    tracing::warn!(
                        records = left,
                        "the bot is away at shutdown and these records are not on the spill; \
                         their shards' saved sequence stops before them, so Discord replays \
                         them on resume"
                    );
                } else {
                    tracing::info!(
                        spilled = queue.depth().2,
                        "the bot is away at shutdown: undelivered records are on the spill"
                    );
                }
                route.publish_depth(&queue);
                return;
            }
        }
        // Keep memory bounded after a burst of big payloads.
        target.shrink();
    }
}

/// Records of `batch` that go to the bot (position records do not).
fn forwarded_len(batch: &[Record]) -> u64 {
    batch
        .iter()
        .filter(|record| record.kind.is_for_bot())
        .count() as u64
}

/// Takes the records at `left_out` (ascending indices into `batch`, already counted as
/// `invalid_payload` by [`drop_invalid`]) out of a batch taken from memory and out of the
/// queue's books, so that they go neither back to memory or the spill nor into another count.
fn leave_out(
    queue: &mut Queue,
    batch: &mut Vec<Record>,
    generations: &mut Vec<u32>,
    left_out: &mut Vec<usize>,
) {
    let mut dropped = Vec::with_capacity(left_out.len());
    for &index in left_out.iter().rev() {
        dropped.push(batch.remove(index));
        generations.remove(index);
    }
    queue.forget(&dropped);
    left_out.clear();
}

/// Leaves the records whose payload no bot could parse out of `body` (re-encoded), and
/// returns their indices in `batch`, counted and logged as dropped (`invalid_payload`).
///
/// The cores read only a payload's head, so a broken gateway's truncated or non-UTF-8 payload
/// reaches the sink as it came and makes the whole body invalid JSON: without this, the bot
/// would refuse it for ever and every shard's delivery would stop behind it. Called once per
/// batch, at its first failure, so the parse costs nothing while the bot acknowledges.
fn drop_invalid(batch: &[Record], target: &mut dyn Target, stats: &Counters) -> Vec<usize> {
    let invalid = batch::invalid_records(batch);
    if invalid.is_empty() {
        return invalid;
    }
    for &index in &invalid {
        let record = &batch[index];
        tracing::error!(
            shard = record.shard_id,
            seq = record.seq,
            bytes = record.payload.len(),
            "dropped a payload that is not valid JSON; the bot never sees it"
        );
    }
    stats.add(|s| &s.records_dropped_invalid, invalid.len() as u64);
    target.prepare(batch, &invalid);
    invalid
}

/// How [`deliver`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Delivered,
    /// The first try failed and the caller asked to hear about it.
    Failed,
    /// Stopping, and the grace ran out.
    GraceOver,
}

/// Posts `body` until a 2xx, backing off between tries; with `first_failure_returns`, returns
/// [`Outcome::Failed`] after the first failed try instead. Once `stop` is set, keeps trying for
/// `grace` more and then gives up.
fn deliver(
    target: &mut dyn Target,
    stats: &Counters,
    stop: &AtomicBool,
    stop_seen: &mut Option<Instant>,
    grace: Duration,
    first_failure_returns: bool,
) -> Outcome {
    let mut delay = RETRY_DELAY_MIN;
    loop {
        match target.send() {
            Ok(()) => return Outcome::Delivered,
            Err(Failure::Refused(status)) => {
                stats.add(|s| &s.delivery_failures, 1);
                tracing::warn!(
                    status,
                    retry_ms = delay.as_millis() as u64,
                    "the bot refused a batch; retrying"
                );
            }
            Err(Failure::Unreachable(error)) => {
                stats.add(|s| &s.delivery_failures, 1);
                tracing::warn!(
                    error = %error,
                    retry_ms = delay.as_millis() as u64,
                    "cannot deliver a batch; retrying"
                );
            }
        }
        if first_failure_returns {
            return Outcome::Failed;
        }
        if stop.load(Ordering::Acquire) {
            let since = *stop_seen.get_or_insert_with(Instant::now);
            if since.elapsed() + delay > grace {
                return Outcome::GraceOver;
            }
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(RETRY_DELAY_MAX);
    }
}
