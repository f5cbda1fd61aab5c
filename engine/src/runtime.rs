//! `shardgate run`: startup checks, `/gateway/bot`, the plan, one pinned executor per core,
//! the sink thread, signals, periodic status lines and the graceful stop.
//!
//! Thread layout: the main thread (startup, signals, status), one thread per core (a glommio
//! executor pinned to its CPU, owning its shard group), one sink thread.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};

use crate::admin::{AdminContext, AdminListener, AdminServer};
use crate::config::{Settings, ShardPlan};
use crate::control::{ControlHandle, CoreLink, Doorbell};
use crate::core::{CorePlan, CoreStats, Shared};
use crate::decode::DecoderLimits;
use crate::filter::FilterConfig;
use crate::limiter::{IdentifyLimiter, SessionStartLimit};
use crate::progress::{IdentifyPace, Output, ShardCounts, StartupProgress};
use crate::resharder::{ReshardBoard, Resharder, ResharderConfig};
use crate::shard::{FATAL_CLOSE_CODES, fatal_close_explanation};
use crate::sink::http::{ForwardUrl, HttpClient, HttpError};
use crate::sink::queue::Queue;
use crate::sink::sessions::SavedSessions;
use crate::sink::{Sink, SinkConfig, SinkStats};
use crate::spill::Spill;
use crate::transport::{GatewayUrl, ReadCoalescing};

/// How often the main thread looks at signals, resharding, saved sessions and progress.
const MAIN_POLL: Duration = Duration::from_millis(100);

/// Locked memory glommio needs per executor (io_uring rings and buffers).
pub const LOCKED_MEMORY_PER_EXECUTOR_BYTES: u64 = 512 * 1024;
/// glommio's buffer for DMA file I/O per executor (its minimum; its default is 10 MiB).
const EXECUTOR_IO_MEMORY_BYTES: usize = 64 * 1024;
/// A session that started is saved within about this long (at most one extra save each).
const SESSION_SAVE_SOON: Duration = Duration::from_millis(100);
/// How often the main thread logs a status line.
const STATUS_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(
        "locked memory limit is {limit_bytes} bytes but {cores} core(s) need {needed_bytes}: \
         raise it with `ulimit -l {needed_kib}` (or LimitMEMLOCK= in the systemd unit), or \
         use fewer --cores"
    )]
    LockedMemory {
        limit_bytes: u64,
        needed_bytes: u64,
        needed_kib: u64,
        cores: u32,
    },
    #[error(
        "cannot start the io_uring executor for core {core}: {reason}. shardgate needs Linux \
         io_uring (kernel 5.8 or later, not disabled by sysctl kernel.io_uring_disabled or a \
         seccomp profile) and enough locked memory (`ulimit -l`)"
    )]
    Executor { core: usize, reason: String },
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsConfigError),
    #[error("--api-base: {0}")]
    ApiBase(String),
    #[error("GET {url}: {reason}")]
    GatewayBot { url: String, reason: String },
    #[error("gateway URL '{url}': {reason}")]
    GatewayUrl { url: String, reason: String },
    #[error(transparent)]
    Plan(#[from] crate::config::ConfigError),
    #[error("--forward-url: {0}")]
    ForwardUrl(#[from] crate::sink::http::UrlError),
    #[error(transparent)]
    Limiter(#[from] crate::limiter::LimiterError),
    #[error(transparent)]
    Fleet(#[from] crate::fleet::FleetError),
    #[error("cannot install the signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
    #[error("--data-dir spill: {0}")]
    Spill(#[from] crate::spill::SpillError),
    #[error(
        "{}: the spill of route `{name}`, which the config file no longer has, holds records \
         not delivered yet; add [routes.{name}] back to deliver them, or delete the directory \
         to drop them",
        path.display()
    )]
    OrphanRouteSpill {
        name: String,
        path: std::path::PathBuf,
    },
    #[error(transparent)]
    Admin(#[from] crate::admin::AdminError),
    #[error(
        "--data-dir {}: in use by another shardgate process; give each process its own \
         --data-dir",
        path.display()
    )]
    DataDirLocked { path: std::path::PathBuf },
    #[error("--data-dir {}: {source}", path.display())]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Every route's lanes (each a target, a queue and a spill), batching, and what the admin API
/// shows of them, the default route first. A route of its own has its own counters; the
/// default route alone counts into the totals directly.
fn build_routes(
    settings: &Settings,
    tls: &Arc<rustls::ClientConfig>,
    redis_url: Option<&str>,
    saved: &SavedSessions,
    total_shards: u32,
    totals: &Arc<SinkStats>,
) -> Result<(Vec<crate::sink::Route>, Vec<RouteInfo>), RunError> {
    check_route_spills(settings)?;
    let mut routes = Vec::new();
    let mut infos = Vec::new();
    for route in settings.all_routes() {
        // No more lanes than shards: a lane without shards would only hold its share of the
        // queue and the spill.
        let wanted = route.lanes().min(total_shards.max(1));
        let lanes = lane_count(settings, &route.name, wanted)?;
        let streams_stats = (route.sink == crate::config::SinkKind::RedisStreams)
            .then(|| Arc::new(crate::sink::streams::StreamsStats::default()));
        let destination = match route.sink {
            crate::config::SinkKind::Http => route.forward_url.clone(),
            crate::config::SinkKind::RedisStreams => format!("{}:*", route.stream_key),
        };
        let mut route_lanes = Vec::with_capacity(lanes as usize);
        for lane in 0..lanes {
            let target: Box<dyn crate::sink::Target> = match (&route.sink, &streams_stats) {
                (crate::config::SinkKind::RedisStreams, Some(stats)) => {
                    let url = redis_url.unwrap_or_default();
                    let client = crate::fleet::store::client(url)
                        .map_err(crate::fleet::FleetError::unreachable(url))?;
                    let target = crate::sink::streams::StreamsTarget::new(
                        client,
                        crate::sink::streams::StreamsConfig {
                            key: route.stream_key.clone(),
                            partitions: route.stream_partitions,
                            maxlen: route.stream_maxlen,
                        },
                        Arc::clone(stats),
                    );
                    // One lane polls the route's consumer groups.
                    Box::new(if lane == 0 {
                        target
                    } else {
                        target.without_info_polls()
                    })
                }
                _ => {
                    let forward_url = ForwardUrl::parse(&route.forward_url)?;
                    let authorization = route
                        .forward_secret
                        .as_ref()
                        .map(|s| s.expose_secret().to_owned());
                    let client = HttpClient::new(
                        forward_url,
                        authorization,
                        Some(Arc::clone(tls)),
                        Duration::from_millis(route.forward_timeout_ms),
                    );
                    Box::new(
                        crate::sink::HttpTarget::new(client, route.batch_bytes_max + 64 * 1024)
                            .with_lanes(lanes),
                    )
                }
            };
            let share = route.spill_bytes_max / u64::from(lanes);
            let spill = match settings.lane_spill_config(&route.name, lane, share) {
                None => None,
                Some(config) => {
                    let (spill, recovered) = Spill::open(config)?;
                    if recovered.records > 0 {
                        tracing::info!(
                            route = %route.name,
                            lane,
                            records = recovered.records,
                            bytes = recovered.bytes,
                            torn_tails = recovered.torn_tails,
                            "the spill holds undelivered records from the last run: they go first"
                        );
                    }
                    Some(spill)
                }
            };
            route_lanes.push(crate::sink::Lane {
                queue: Queue::new(
                    route.queue_bytes_max / u64::from(lanes),
                    spill,
                    total_shards,
                    saved,
                ),
                target,
            });
        }
        let config = SinkConfig {
            batch_events_max: route.batch_events_max,
            batch_bytes_max: route.batch_bytes_max,
            batch_linger: Duration::from_millis(route.batch_linger_ms),
            shutdown_grace: Duration::from_secs(10),
            // Shared by the lanes.
            backlog_rate: route.backlog_rate.div_ceil(lanes),
        };
        let stats = if settings.routes.is_empty() {
            Arc::clone(totals)
        } else {
            Arc::new(SinkStats::default())
        };
        if lanes < route.batches_in_flight && lanes == wanted {
            tracing::info!(
                route = %route.name,
                batches_in_flight = lanes,
                asked = route.batches_in_flight,
                "fewer delivery lanes than --batches-in-flight: at most one per shard, each \
                 lane's share of the memory queue holds a whole batch and its share of the \
                 spill at least 1 MiB"
            );
        }
        infos.push(RouteInfo {
            name: route.name.clone(),
            events: route.events.clone(),
            sink: route.sink,
            destination,
            lanes,
            stats: Arc::clone(&stats),
            streams: streams_stats,
        });
        routes.push(crate::sink::Route {
            name: route.name,
            events: route.events.iter().map(|e| (*e).to_owned()).collect(),
            config,
            lanes: route_lanes,
            stats,
        });
    }
    Ok((routes, infos))
}

/// Undelivered records on the spill in `dir` (0 where there is none). Opening it is what the
/// next start does anyway (acknowledged segments deleted, a torn tail cut).
fn spill_records(dir: &std::path::Path) -> Result<u64, RunError> {
    if !dir.is_dir() {
        return Ok(0);
    }
    let config = crate::spill::SpillConfig {
        max_bytes: Settings::SPILL_BYTES_MAX_LIMIT,
        ..crate::spill::SpillConfig::new(dir)
    };
    let (_, recovered) = Spill::open(config)?;
    Ok(recovered.records)
}

/// A spill under `--data-dir/routes` whose route is no longer configured holds records no
/// route would deliver (and the saved sessions count them as delivered): refuse to start,
/// and say how to get them out.
fn check_route_spills(settings: &Settings) -> Result<(), RunError> {
    let Ok(entries) = std::fs::read_dir(settings.routes_dir()) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if settings.routes.iter().any(|route| route.name == name) {
            continue;
        }
        let Ok(spills) = std::fs::read_dir(entry.path()) else {
            continue;
        };
        for spill in spills.flatten() {
            let file_name = spill.file_name().to_string_lossy().into_owned();
            if (file_name == "spill" || file_name.starts_with("spill-lane-"))
                && spill_records(&spill.path())? > 0
            {
                return Err(RunError::OrphanRouteSpill {
                    name,
                    path: spill.path(),
                });
            }
        }
    }
    Ok(())
}

/// A shard's lane is its id modulo the lane count: with another count than the spills were
/// written with, a shard's spilled records and its new ones would be in two lanes, delivered
/// side by side out of order. While any lane's spill holds records, the route keeps the count
/// they were written with (said in the log; the new count applies at a start with the spills
/// drained); otherwise the new count is noted for the next start. Returns the count to run.
fn lane_count(settings: &Settings, route: &str, lanes: u32) -> Result<u32, RunError> {
    let file = settings.lane_count_file(route);
    let written: u32 = std::fs::read_to_string(&file)
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .filter(|written| (1..=Settings::BATCHES_IN_FLIGHT_MAX).contains(written))
        .unwrap_or(1);
    if written != lanes {
        for lane in 0..written.max(lanes) {
            let dir = settings.lane_spill_dir(route, lane);
            let records = spill_records(&dir)?;
            if records > 0 {
                tracing::warn!(
                    route,
                    lanes = written,
                    asked = lanes,
                    spill = %dir.display(),
                    records,
                    "the spill holds records queued with {written} delivery lane(s): keeping \
                     {written} so that every shard's records stay in order; the new count \
                     applies at a start with the spill drained"
                );
                return Ok(written);
            }
        }
    }
    let failed = |source| RunError::DataDir {
        path: file.clone(),
        source,
    };
    if let Some(parent) = file.parent() {
        std::fs::create_dir_all(parent).map_err(failed)?;
    }
    std::fs::write(&file, format!("{lanes}\n")).map_err(failed)?;
    Ok(lanes)
}

/// What `/gateway/bot` said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayBot {
    pub url: String,
    pub shards: u32,
    pub session_start_limit: SessionStartLimit,
}

/// The end of a run, for the exit status and the last log line.
#[derive(Debug)]
pub struct RunSummary {
    pub records_delivered: u64,
    pub records_dropped_shutdown: u64,
    pub shards_fatal: u64,
    /// Shards stopped by each fatal close code, in [`FATAL_CLOSE_CODES`] order, codes that
    /// stopped none left out.
    pub fatal_close_codes: Vec<(u16, u64)>,
}

impl RunSummary {
    /// One line for the operator when shards stopped for good: the close code(s), what each
    /// means and what to change (`None` when no shard did).
    pub fn fatal_message(&self) -> Option<String> {
        if self.shards_fatal == 0 {
            return None;
        }
        let shards = |n: u64| {
            if n == 1 {
                "1 shard".to_owned()
            } else {
                format!("{n} shards")
            }
        };
        let mut parts: Vec<String> = self
            .fatal_close_codes
            .iter()
            .map(|&(code, count)| {
                let meaning = fatal_close_explanation(code).unwrap_or("not a fatal code");
                format!("{} stopped on close code {code}, {meaning}", shards(count))
            })
            .collect();
        let by_code: u64 = self.fatal_close_codes.iter().map(|&(_, count)| count).sum();
        if self.shards_fatal > by_code {
            parts.push(format!(
                "{} could not start (see the error logged for it)",
                shards(self.shards_fatal - by_code)
            ));
        }
        let mut message = parts.join("; ");
        if by_code > 0 {
            message.push_str(
                "; Discord does not let these shards reconnect (see docs/troubleshooting.md)",
            );
        }
        Some(message)
    }
}

/// Runs until SIGINT/SIGTERM (then closes every shard resumably and flushes), or until every
/// shard stopped on a fatal close code.
pub fn run(settings: Settings) -> Result<RunSummary, RunError> {
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second signal while stopping exits at once (the operator insists).
        signal_hook::flag::register_conditional_shutdown(signal, 130, Arc::clone(&stop))
            .map_err(RunError::Signals)?;
        signal_hook::flag::register(signal, Arc::clone(&stop)).map_err(RunError::Signals)?;
    }
    let engine = Engine::start(settings, Arc::clone(&stop))?;
    // Startup progress until every shard is ready: a bar on a terminal, log lines otherwise.
    let output = Output::detect();
    let mut progress =
        StartupProgress::new(engine.identify_pace(), output.report_interval(), started);
    let shard_counts = |snapshot: &Snapshot| ShardCounts {
        ready: snapshot.shards_ready,
        owned: snapshot.shards_owned,
        fatal: snapshot.shards_fatal,
    };
    let mut last_status = Instant::now();
    while !engine.poll() {
        std::thread::sleep(MAIN_POLL);
        if !progress.is_finished() {
            let counts = shard_counts(&engine.snapshot());
            let now = Instant::now();
            // Seen here before the next poll logs the stop, so the bar's line ends first.
            let report = if stop.load(Ordering::Acquire) {
                progress.stop(counts, now)
            } else {
                progress.poll(counts, now)
            };
            if let Some(report) = report {
                output.show(&report);
            }
        }
        if last_status.elapsed() >= STATUS_INTERVAL {
            last_status = Instant::now();
            log_status(&engine.snapshot());
        }
    }
    // Every core ended (every shard fatal) while shards were still starting.
    if let Some(report) = progress.stop(shard_counts(&engine.snapshot()), Instant::now()) {
        output.show(&report);
    }
    Ok(engine.wait())
}

/// A started engine: its cores and sink threads, and the counters they keep. Whoever starts it
/// calls [`Engine::poll`] now and then (it relays the stop flag to the cores) and finally
/// [`Engine::wait`].
pub struct Engine {
    /// Set by the owner (signals, the demo's clock): close every shard resumably and flush.
    stop: Arc<AtomicBool>,
    shared: Arc<Shared>,
    executors: Vec<glommio::ExecutorJoinHandle<()>>,
    /// Taken by [`Engine::wait`].
    sink: Option<Sink>,
    sessions_path: std::path::PathBuf,
    session_save_interval: Duration,
    sessions_saved_at: std::cell::Cell<Instant>,
    /// What the last save wrote: an unchanged set is not written again (idle shards change
    /// nothing between heartbeats).
    sessions_last_saved: std::cell::RefCell<Option<SavedSessions>>,
    /// Cores whose executor future ended, normally or by a panic (see [`CoreDone`]).
    cores_done: Arc<AtomicUsize>,
    stats: Arc<EngineStats>,
    identify_pace: IdentifyPace,
    /// Taken and stopped first by [`Engine::wait`].
    admin: Option<AdminServer>,
    control: ControlHandle,
    limiter: Arc<IdentifyLimiter>,
    resharder: std::cell::RefCell<Resharder>,
    reshard_board: Arc<ReshardBoard>,
    /// In a fleet (`--redis-url`): this host's part; it saves the sessions (in Redis, not in
    /// the data dir).
    fleet: Option<crate::fleet::Fleet>,
    /// Held (`flock`) until the engine is dropped, after the last sessions save.
    _data_dir_lock: std::fs::File,
}

/// Every counter of the engine: the cores' and the sink's. Shared with the admin API.
pub struct EngineStats {
    shared: Arc<Shared>,
    core_stats: Vec<Arc<CoreStats>>,
    sink_stats: Arc<SinkStats>,
    routes: Vec<RouteInfo>,
}

/// A route as the admin API shows it: its name, what it takes, where it delivers, its counters.
pub struct RouteInfo {
    pub name: String,
    /// Empty for the default route (everything no other route takes).
    pub events: Vec<&'static str>,
    pub sink: crate::config::SinkKind,
    /// The URL, or the streams (`KEY:*`).
    pub destination: String,
    /// Its delivery lanes: batches in flight at once.
    pub lanes: u32,
    pub stats: Arc<SinkStats>,
    /// A Redis Streams route's view of its consumer groups.
    pub streams: Option<Arc<crate::sink::streams::StreamsStats>>,
}

impl EngineStats {
    /// Every route, the default one first.
    pub fn routes(&self) -> &[RouteInfo] {
        &self.routes
    }

    /// Per core, in core order.
    pub fn cores(&self) -> &[Arc<CoreStats>] {
        &self.core_stats
    }

    /// Whether the engine was asked to stop.
    pub fn stopping(&self) -> bool {
        self.shared.stop.load(Ordering::Acquire)
    }

    /// Payload bytes in the sink's memory queue.
    pub fn queue_memory_bytes(&self) -> u64 {
        self.sink_stats.queue_memory_bytes.load(Ordering::Relaxed)
    }

    /// Sum of every delivered batch's latency.
    pub fn batch_latency_sum(&self) -> Duration {
        Duration::from_micros(self.sink_stats.batch_latency_us_sum.load(Ordering::Relaxed))
    }

    /// The counters summed over cores, now.
    pub fn snapshot(&self) -> Snapshot {
        let sum = |f: fn(&CoreStats) -> &AtomicU64| {
            self.core_stats
                .iter()
                .map(|s| f(s).load(Ordering::Relaxed))
                .sum::<u64>()
        };
        let sum_index = |f: fn(&CoreStats) -> &[AtomicU64; FATAL_CLOSE_CODES.len()],
                         index: usize| {
            self.core_stats
                .iter()
                .map(|s| f(s)[index].load(Ordering::Relaxed))
                .sum::<u64>()
        };
        let sink = &self.sink_stats;
        Snapshot {
            shards_owned: self.shared.live_shards.load(Ordering::Relaxed) as u64,
            shards_ready: sum(|s| &s.shards_ready),
            shards_running: sum(|s| &s.shards_running),
            shards_fatal: sum(|s| &s.shards_fatal)
                .saturating_sub(self.shared.fatal_replaced.load(Ordering::Relaxed)),
            shards_fatal_by_code: std::array::from_fn(|index| {
                sum_index(|s| &s.shards_fatal_by_code, index)
            }),
            dispatches_in: sum(|s| &s.dispatches_in),
            records_to_sink: sum(|s| &s.records_forwarded),
            dropped_redundant_update: sum(|s| &s.dropped_redundant_update),
            dropped_not_allowed: sum(|s| &s.dropped_not_allowed),
            decode_errors: sum(|s| &s.decode_errors),
            ring_full_waits: sum(|s| &s.ring_full_waits),
            identifies: sum(|s| &s.identifies),
            resumes: sum(|s| &s.resumes),
            reconnects: sum(|s| &s.reconnects),
            records_received: sink.records_received.load(Ordering::Relaxed),
            records_delivered: sink.records_delivered.load(Ordering::Relaxed),
            batches_delivered: sink.batches_delivered.load(Ordering::Relaxed),
            bytes_delivered: sink.bytes_delivered.load(Ordering::Relaxed),
            delivery_failures: sink.delivery_failures.load(Ordering::Relaxed),
            records_dropped_shutdown: sink.records_dropped_shutdown.load(Ordering::Relaxed),
            records_spilled: sink.records_spilled.load(Ordering::Relaxed),
            records_dropped_spill_full: sink.records_dropped_spill_full.load(Ordering::Relaxed),
            records_dropped_invalid: sink.records_dropped_invalid.load(Ordering::Relaxed),
            queue_memory_records: sink.queue_memory_records.load(Ordering::Relaxed),
            queue_spill_records: sink.queue_spill_records.load(Ordering::Relaxed),
            saved_sessions_resumed: sum(|s| &s.saved_sessions_resumed),
            saved_sessions_rejected: sum(|s| &s.saved_sessions_rejected),
            batch_latency_buckets: sink.latency_buckets(),
        }
    }
}

/// Counts a core as done when its executor's future ends, also by unwinding from a panic, so
/// that a broken core cannot leave [`Engine::poll`] waiting for ever.
struct CoreDone(Arc<AtomicUsize>);

impl Drop for CoreDone {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
}

/// The engine's counters summed over cores, at one instant.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub shards_owned: u64,
    pub shards_ready: u64,
    pub shards_running: u64,
    pub shards_fatal: u64,
    /// Of those, the shards stopped by each of [`FATAL_CLOSE_CODES`], in that order.
    pub shards_fatal_by_code: [u64; FATAL_CLOSE_CODES.len()],
    pub dispatches_in: u64,
    pub records_to_sink: u64,
    pub dropped_redundant_update: u64,
    pub dropped_not_allowed: u64,
    pub decode_errors: u64,
    pub ring_full_waits: u64,
    pub identifies: u64,
    pub resumes: u64,
    pub reconnects: u64,
    pub records_received: u64,
    pub records_delivered: u64,
    pub batches_delivered: u64,
    pub bytes_delivered: u64,
    pub delivery_failures: u64,
    pub records_dropped_shutdown: u64,
    pub records_spilled: u64,
    pub records_dropped_spill_full: u64,
    pub records_dropped_invalid: u64,
    pub queue_memory_records: u64,
    pub queue_spill_records: u64,
    pub saved_sessions_resumed: u64,
    pub saved_sessions_rejected: u64,
    /// The sink's batch latency histogram (bounds in [`crate::sink::LATENCY_BUCKETS_US`]).
    pub batch_latency_buckets: Vec<u64>,
}

impl Engine {
    /// Startup: the data dir's lock, `/gateway/bot` (unless the URL and shard count are
    /// given), the plan, the locked-memory check, one pinned executor per core and the sink
    /// thread. Returns once they run; shards connect in the background, paced by the identify
    /// limiter. The admin API listens on `--admin-addr`.
    pub fn start(settings: Settings, stop: Arc<AtomicBool>) -> Result<Engine, RunError> {
        let started = Instant::now();
        // The data dir's lock first, before anything talks to the network or binds a port: a
        // second process on the same --data-dir (it would overwrite the saved sessions) is
        // told so, not about a port both asked for, and spends none of Discord's requests.
        let data_dir_lock = lock_data_dir(&settings.data_dir)?;
        let tls = crate::tls::client_config(settings.ca_file.as_deref())?;

        // Discord's view: URL, recommended shards, identify limits.
        let redis_url = settings
            .redis_url
            .as_ref()
            .map(|url| url.expose_secret().to_owned());
        // The fleet's Redis, when this process is one host of a fleet (`--fleet`).
        let fleet_url = redis_url.clone().filter(|_| settings.is_fleet());
        // A fleet reconciles the day's identify budget with Discord's own count.
        let needs_rest = settings.gateway_url.is_none()
            || settings.fixed_plan().is_none()
            || fleet_url.is_some();
        let gateway_bot = if needs_rest {
            Some(fetch_gateway_bot(&settings, &tls)?)
        } else {
            None
        };
        let recommended = gateway_bot.as_ref().map_or(1, |g| g.shards).max(1);
        let mut plan = settings.plan(NonZeroU32::new(recommended).unwrap_or(NonZeroU32::MIN))?;
        if let Some(url) = &fleet_url {
            // Every host runs the count the first one started with.
            let agreed = crate::fleet::agree_shard_count(url, &settings.cluster_name, plan)?;
            if agreed != plan.total_shards {
                tracing::info!(
                    configured = plan.total_shards.get(),
                    fleet = agreed.get(),
                    "the fleet runs another shard count: running its count"
                );
            }
            plan = settings.plan_with_total(agreed)?;
        }
        // A reshard of the last run stands: its sessions are saved for its new count, and the
        // configured count is still the one it left behind.
        if fleet_url.is_some() {
            // Sessions live in Redis; the data dir's file is the single process's.
        } else if let Some(total) =
            resharded_count(&settings.sessions_file(), plan, settings.shards)
        {
            tracing::info!(
                configured = plan.total_shards.get(),
                running = total.get(),
                "the last run resharded: running its shard count (write it in --total-shards to \
                 make it the configured one)"
            );
            plan = settings.plan_with_total(total)?;
        }
        check_locked_memory(plan.cores)?;
        // Before anything starts: a taken port fails here, with every session as it was.
        let admin_listener = AdminListener::bind(settings.admin_addr)?;

        let url_text = settings
            .gateway_url
            .clone()
            .or_else(|| gateway_bot.as_ref().map(|g| g.url.clone()))
            .unwrap_or_else(|| "wss://gateway.discord.gg".to_owned());
        let main_url = GatewayUrl::parse(&url_text).map_err(|e| RunError::GatewayUrl {
            url: url_text.clone(),
            reason: e.to_string(),
        })?;
        let session_start_limit = gateway_bot.as_ref().map_or(
            // Without /gateway/bot we know nothing: the most careful limits.
            SessionStartLimit {
                total: 1000,
                remaining: 1000,
                reset_after_ms: 0,
                max_concurrency: 1,
            },
            |g| g.session_start_limit,
        );
        let identify_interval = Duration::from_millis(settings.identify_interval_ms)
            + crate::limiter::IDENTIFY_SAFETY_MARGIN;
        let limiter = Arc::new(IdentifyLimiter::new(
            session_start_limit,
            identify_interval,
            Instant::now(),
        )?);
        let owned: Vec<u32> = (plan.shards.start()..=plan.shards.end()).collect();
        tracing::info!(
            total_shards = plan.total_shards.get(),
            shards = %format!("{}..={}", plan.shards.start(), plan.shards.end()),
            cores = plan.cores,
            shards_per_core = plan.shards_per_core,
            max_concurrency = session_start_limit.max_concurrency,
            remaining = session_start_limit.remaining,
            compression = %settings.compression,
            gateway = %url_text,
            identify_floor_ms = IdentifyLimiter::minimum_startup(owned.len() as u32, session_start_limit.max_concurrency, identify_interval).as_millis() as u64,
            "plan"
        );
        if (session_start_limit.remaining as usize) < owned.len() {
            tracing::warn!(
                shards = owned.len(),
                remaining = session_start_limit.remaining,
                reset_after_ms = session_start_limit.reset_after_ms,
                "session_start_limit.remaining is smaller than the shards to identify: the \
                 rest wait for the reset (identifying past it gets the token reset)"
            );
        }
        // Sized from the shards a core runs at start (none known in a fleet: the most).
        let shards_on_core = settings.planned_shards_per_core(Some(plan));
        let ring_capacity = settings.ring_capacity_for(shards_on_core);
        tracing::info!(
            ring_capacity,
            dedup_cache_entries = settings.dedup_cache_entries_for(shards_on_core),
            batch_events_max = settings.batch_events_max,
            batch_bytes_max = settings.batch_bytes_max,
            payload_bytes_max = settings.payload_bytes_max,
            "sizes per core"
        );

        let (fleet_gate, gate_requests) = if fleet_url.is_some() {
            let (requests_tx, requests_rx) = crossbeam_channel::unbounded();
            (
                Some(Arc::new(crate::fleet::gate::FleetGate::new(requests_tx))),
                Some(requests_rx),
            )
        } else {
            (None, None)
        };
        let merging = Arc::new(AtomicBool::new(false));
        let fatal_replaced = Arc::new(AtomicU64::new(0));
        let shared = Arc::new(Shared {
            main_url,
            compression: settings.compression,
            token: settings.token.clone(),
            intents: settings.intents.bits(),
            large_threshold: settings.large_threshold,
            total_shards: plan.total_shards.get(),
            decoder_limits: DecoderLimits {
                payload_bytes_max: settings.payload_bytes_max,
                ..DecoderLimits::default()
            },
            tls: Arc::clone(&tls),
            limiter: Arc::clone(&limiter),
            fleet_gate: fleet_gate.clone(),
            connect_timeout: Duration::from_secs(10),
            heartbeat_grid: Instant::now(),
            read_coalescing: (settings.read_coalesce_ms > 0).then(|| ReadCoalescing {
                tick: Duration::from_millis(settings.read_coalesce_ms),
                epoch: Instant::now(),
            }),
            shards_ready: AtomicUsize::new(0),
            // A fleet host's shards come and go: it never announces ALL_SHARDS_READY, and never
            // stops for lack of shards.
            shards_owned: if fleet_url.is_some() {
                usize::MAX
            } else {
                owned.len()
            },
            live_shards: AtomicUsize::new(if fleet_url.is_some() { 0 } else { owned.len() }),
            stop: AtomicBool::new(false),
            certificate_warned: AtomicBool::new(false),
            rng_seed: started.elapsed().as_nanos() as u64 ^ u64::from(std::process::id()),
            merging: Arc::clone(&merging),
            fatal_replaced: Arc::clone(&fatal_replaced),
            uncovered: std::sync::Mutex::new(Vec::new()),
        });

        let sink_stats = Arc::new(SinkStats::default());

        // Durable state (the data dir is ours since the start): the sessions the last run
        // saved, then each route's spill and queue.
        let sessions_path = settings.sessions_file();
        let saved = if fleet_url.is_some() {
            SavedSessions::new(plan.total_shards.get())
        } else {
            load_sessions(&sessions_path, plan.total_shards.get(), &owned)
        };
        let (routes, route_infos) = build_routes(
            &settings,
            &tls,
            redis_url.as_deref(),
            &saved,
            plan.total_shards.get(),
            &sink_stats,
        )?;

        // Cores.
        let core_ids: Vec<usize> = core_affinity::get_core_ids()
            .map(|ids| ids.into_iter().map(|id| id.id).collect())
            .unwrap_or_default();
        let per_core = plan.shards_per_core.max(1) as usize;
        let mut rings = Vec::new();
        let ring_wake = Arc::new(crate::ring::RingWake::default());
        let mut core_links = Vec::new();
        let mut core_stats = Vec::new();
        let mut executors = Vec::new();
        let cores_done = Arc::new(AtomicUsize::new(0));
        // In a fleet the cores start empty: the agent places each shard it is given.
        let core_shards: Vec<Vec<u32>> = if fleet_url.is_some() {
            vec![Vec::new(); plan.cores as usize]
        } else {
            owned.chunks(per_core).map(<[u32]>::to_vec).collect()
        };
        for (index, shard_ids) in core_shards.iter().enumerate() {
            let (ring_tx, ring_rx) = crate::ring::ring(ring_capacity, Arc::clone(&ring_wake));
            rings.push(ring_rx);
            // Unbounded: only the admin API sends, one request per HTTP request in flight.
            let (requests_tx, requests_rx) = crossbeam_channel::unbounded();
            let bell = Arc::new(Doorbell::default());
            core_links.push(CoreLink::new(requests_tx, Arc::clone(&bell)));
            let stats = Arc::new(CoreStats::default());
            core_stats.push(Arc::clone(&stats));
            let core_plan = CorePlan {
                index,
                shard_ids: shard_ids.to_vec(),
                shard_count: plan.total_shards.get(),
                filter: FilterConfig::from_settings(&settings, shards_on_core),
                ring: ring_tx,
                stats,
                sessions: shard_ids
                    .iter()
                    .filter_map(|id| saved.shards.get(id).map(|s| (*id, s.clone())))
                    .collect(),
                requests: requests_rx,
                bell,
            };
            let placement = match core_ids.get(index % core_ids.len().max(1)) {
                Some(cpu) if !core_ids.is_empty() => Placement::Fixed(*cpu),
                _ => Placement::Unbound,
            };
            let shared = Arc::clone(&shared);
            let done = CoreDone(Arc::clone(&cores_done));
            let handle = LocalExecutorBuilder::new(placement)
                .name(&format!("shardgate-core-{index}"))
                // glommio preallocates (and registers with io_uring) 10 MiB per executor for
                // its DMA file I/O, which shardgate does not use (sockets only; the spill is on
                // the sink's thread): its smallest.
                .io_memory(EXECUTOR_IO_MEMORY_BYTES)
                .spawn(move || async move {
                    let _done = done;
                    crate::core::run_core(shared, core_plan).await;
                })
                .map_err(|e| RunError::Executor {
                    core: index,
                    reason: e.to_string(),
                })?;
            executors.push(handle);
        }
        let sink = Sink::start(
            routes,
            rings,
            ring_wake,
            Arc::clone(&sink_stats),
            Arc::clone(&stop),
        )
        .map_err(RunError::Thread)?;
        let stats = Arc::new(EngineStats {
            shared: Arc::clone(&shared),
            core_stats,
            sink_stats,
            routes: route_infos,
        });
        let control = if fleet_url.is_some() {
            ControlHandle::for_fleet(core_links, plan)
        } else {
            ControlHandle::new(core_links, plan)
        };
        let fleet = match (&fleet_url, fleet_gate, gate_requests) {
            (Some(url), Some(gate), Some(gate_requests)) => {
                let pinned: Vec<u32> = settings
                    .shards
                    .map(|range| (range.start()..=range.end()).collect())
                    .unwrap_or_default();
                let fleet_settings = crate::fleet::agent::FleetSettings {
                    cluster: settings.cluster_name.clone(),
                    host: crate::fleet::store::HostInfo {
                        id: settings.host_id(),
                        // Where the other hosts forward commands for its shards.
                        admin: admin_listener.local_addr().to_string(),
                        capacity: if pinned.is_empty() {
                            settings.host_capacity.unwrap_or(plan.total_shards.get())
                        } else {
                            pinned.len() as u32
                        },
                        pinned,
                    },
                    host_lease: Duration::from_millis(settings.host_lease_ms),
                    shard_lease: Duration::from_millis(settings.shard_lease_ms),
                    moves_per_minute: settings.moves_per_minute,
                    total_shards: plan.total_shards.get(),
                    session_save_interval: Duration::from_millis(settings.session_save_interval_ms),
                    handover_timeout: HANDOVER_TIMEOUT,
                };
                let identify = crate::fleet::identify::IdentifySettings {
                    host_id: settings.host_id(),
                    max_concurrency: session_start_limit.max_concurrency,
                    interval: identify_interval,
                    reserve: identify_reserve(session_start_limit.total),
                };
                Some(crate::fleet::Fleet::start(
                    url,
                    fleet_settings,
                    identify,
                    session_start_limit,
                    control.clone(),
                    sink.positions(),
                    gate,
                    gate_requests,
                    host_stats(Arc::clone(&stats)),
                    crate::fleet::BudgetSource {
                        fetch: {
                            let settings = settings.clone();
                            let tls = Arc::clone(&tls);
                            Box::new(move || {
                                fetch_gateway_bot(&settings, &tls)
                                    .map(|answer| answer.session_start_limit)
                                    .map_err(|error| error.to_string())
                            })
                        },
                        every: settings.reshard_check_interval,
                    },
                )?)
            }
            _ => None,
        };
        let reshard_board = Arc::new(ReshardBoard::default());
        let recommendation = {
            let settings = settings.clone();
            let tls = Arc::clone(&tls);
            let limiter = Arc::clone(&limiter);
            Box::new(move || {
                let answer = fetch_gateway_bot(&settings, &tls).map_err(|e| e.to_string())?;
                limiter.refresh(answer.session_start_limit, Instant::now());
                Ok(answer.shards)
            })
        };
        let resharder = Resharder::new(
            ResharderConfig {
                policy: settings.reshard_policy(),
                check_interval: settings.reshard_check_interval,
                // A fleet does not reshard (yet): no host sees every shard's guilds.
                in_fleet: fleet_url.is_some(),
                owns_every_shard: fleet_url.is_none()
                    && plan.shards.len() == u64::from(plan.total_shards.get()),
                max_concurrency: session_start_limit.max_concurrency,
                identify_interval,
                plan,
            },
            Arc::clone(&reshard_board),
            recommendation,
            merging,
            fatal_replaced,
        );
        let mut engine = Engine {
            stop,
            shared,
            executors,
            sink: Some(sink),
            sessions_path,
            session_save_interval: Duration::from_millis(settings.session_save_interval_ms),
            sessions_saved_at: std::cell::Cell::new(Instant::now()),
            sessions_last_saved: std::cell::RefCell::new(None),
            cores_done,
            stats: Arc::clone(&stats),
            identify_pace: IdentifyPace {
                shards_per_interval: session_start_limit.max_concurrency,
                interval: identify_interval,
            },
            admin: None,
            control: control.clone(),
            limiter: Arc::clone(&limiter),
            resharder: std::cell::RefCell::new(resharder),
            reshard_board: Arc::clone(&reshard_board),
            fleet,
            _data_dir_lock: data_dir_lock,
        };
        let context = AdminContext {
            control,
            stats,
            limiter,
            reshard: reshard_board,
            fleet: engine.fleet.as_ref().map(crate::fleet::Fleet::handle),
            token: settings.admin_token.clone(),
            started,
        };
        match AdminServer::start(admin_listener, context) {
            Ok(server) => engine.admin = Some(server),
            Err(error) => {
                // Only a thread that cannot start: stop what runs (sessions saved).
                engine.wait();
                return Err(error.into());
            }
        }
        Ok(engine)
    }

    /// Where the admin API listens (`None` once [`Engine::wait`] stopped it).
    pub fn admin_addr(&self) -> Option<std::net::SocketAddr> {
        self.admin.as_ref().map(AdminServer::local_addr)
    }

    /// Relays a requested stop to the cores; true once every core has ended (after a stop, or
    /// because every shard stopped on a fatal close code). Cheap: call it every few ms.
    pub fn poll(&self) -> bool {
        let stopping = self.stop.load(Ordering::Acquire);
        if let Some(sink) = self.sink.as_ref() {
            let mut resharder = self.resharder.borrow_mut();
            if stopping && !self.shared.stop.load(Ordering::Acquire) {
                resharder.stop(&self.control, sink);
            }
            resharder.poll(
                &self.control,
                sink,
                &|| self.save_sessions(),
                self.limiter.stats().1,
                self.sharding_required_total(),
                stopping || self.shared.stop.load(Ordering::Acquire),
                Instant::now(),
            );
            let live = match &self.fleet {
                Some(fleet) => crate::fleet::FleetCounters::get(&fleet.counters().shards_held),
                None => resharder.plan().shards.len(),
            };
            self.shared.live_shards.store(
                usize::try_from(live).unwrap_or(usize::MAX),
                Ordering::Relaxed,
            );
        }
        if stopping && !self.shared.stop.load(Ordering::Acquire) {
            if let Some(fleet) = &self.fleet {
                fleet.begin_stop();
            }
            tracing::info!("stopping: closing every shard resumably (4000) and flushing");
            self.shared.stop.store(true, Ordering::Release);
            self.control.ring_all();
        }
        if !self.shared.stop.load(Ordering::Acquire)
            && !self.resharder.borrow().is_active()
            && self.nothing_runs()
        {
            // Every shard stopped on a fatal close code and nothing will start another: the
            // cores would idle for ever.
            self.shared.stop.store(true, Ordering::Release);
            self.control.ring_all();
        }
        // Every interval, and soon after a session starts: a crash right after a READY must
        // resume that session, not identify a new one (its events would be gone).
        let new_session = self.sessions_saved_at.get().elapsed() >= SESSION_SAVE_SOON
            && self.sink.as_ref().is_some_and(Sink::take_sessions_changed);
        if new_session || self.sessions_saved_at.get().elapsed() >= self.session_save_interval {
            self.sessions_saved_at.set(Instant::now());
            self.save_sessions();
        }
        self.cores_done.load(Ordering::Acquire) >= self.executors.len()
    }

    /// Live shards stopped by 4011 (sharding required) so far.
    fn sharding_required_total(&self) -> u64 {
        let index = crate::shard::FATAL_CLOSE_CODES
            .iter()
            .position(|code| *code == 4011);
        index.map_or(0, |index| {
            self.stats
                .cores()
                .iter()
                .map(|s| s.shards_fatal_by_code[index].load(Ordering::Relaxed))
                .sum()
        })
    }

    /// Where the admin API asks for reshards (the demo asks there too).
    pub fn reshard_board(&self) -> Arc<ReshardBoard> {
        Arc::clone(&self.reshard_board)
    }

    /// Resharding's state for the metrics: the phase, and finished, aborted and refused counts.
    pub fn reshard_summary(&self) -> (&'static str, crate::resharder::ReshardCounts) {
        let resharder = self.resharder.borrow();
        (resharder.phase(), resharder.counts())
    }

    /// Every shard task the cores started has ended (and the first ones have all started).
    fn nothing_runs(&self) -> bool {
        let sum = |f: fn(&CoreStats) -> &AtomicU64| {
            self.stats
                .cores()
                .iter()
                .map(|s| f(s).load(Ordering::Acquire))
                .sum::<u64>()
        };
        let spawned = sum(|s| &s.shards_spawned);
        spawned >= self.shared.shards_owned as u64 && sum(|s| &s.shards_ended) >= spawned
    }

    /// Writes every shard's session and durable sequence to the data dir (alone; a fleet keeps
    /// them in Redis).
    fn save_sessions(&self) {
        let Some(sink) = self.sink.as_ref().filter(|_| self.fleet.is_none()) else {
            return;
        };
        let saved = sink.saved_sessions();
        let mut last = self.sessions_last_saved.borrow_mut();
        if last.as_ref() == Some(&saved) {
            return;
        }
        match crate::sink::sessions::save(&self.sessions_path, &saved) {
            Ok(()) => *last = Some(saved),
            Err(error) => {
                tracing::error!(%error, "cannot save the sessions; a restart would identify");
            }
        }
    }

    /// The shard plan of the live set (a reshard changes it).
    pub fn plan(&self) -> ShardPlan {
        self.resharder.borrow().plan()
    }

    /// How fast the identify buckets let shards start (for startup progress).
    pub fn identify_pace(&self) -> IdentifyPace {
        self.identify_pace
    }

    /// The counters now.
    pub fn snapshot(&self) -> Snapshot {
        self.stats.snapshot()
    }

    /// Stops (if no one asked yet), waits for every core to close its shards and for the sink
    /// to deliver what it holds, and sums up.
    pub fn wait(mut self) -> RunSummary {
        if let Some(admin) = self.admin.take() {
            admin.stop();
        }
        self.stop.store(true, Ordering::Release);
        while !self.poll() {
            std::thread::sleep(Duration::from_millis(20));
        }
        for executor in std::mem::take(&mut self.executors) {
            if let Err(error) = executor.join() {
                tracing::error!(?error, "a core ended abnormally");
            }
        }
        // Cores gone → rings disconnected → the sink delivers (or spills) and returns; then
        // the sessions are saved with their final sequences.
        if let Some(sink) = self.sink.take() {
            let (clean, saved) = sink.finish();
            if !clean {
                tracing::error!("a sink thread panicked");
            }
            if let Some(fleet) = self.fleet.take() {
                fleet.finish();
            } else {
                match crate::sink::sessions::save(&self.sessions_path, &saved) {
                    Ok(()) => tracing::info!(
                        sessions = saved.shards.len(),
                        path = %self.sessions_path.display(),
                        "sessions saved"
                    ),
                    Err(error) => {
                        tracing::error!(%error, "cannot save the sessions; a restart will identify");
                    }
                }
            }
        }
        let last = self.snapshot();
        log_status(&last);
        RunSummary {
            records_delivered: last.records_delivered,
            records_dropped_shutdown: last.records_dropped_shutdown,
            shards_fatal: last.shards_fatal,
            // None when every fatal shard was of a set a reshard replaced (a 4011 it healed).
            fatal_close_codes: FATAL_CLOSE_CODES
                .into_iter()
                .zip(last.shards_fatal_by_code)
                .filter(|&(_, count)| count > 0 && last.shards_fatal > 0)
                .collect(),
        }
    }
}

/// A fleet host's counters for `GET /cluster`'s fleet totals (written to Redis with each beat).
fn host_stats(stats: Arc<EngineStats>) -> crate::fleet::agent::Stats {
    Box::new(move || {
        let now = stats.snapshot();
        serde_json::json!({
            "shards_ready": now.shards_ready,
            "dispatches_received": now.dispatches_in,
            "records_delivered": now.records_delivered,
            "records_queued": now.queue_memory_records + now.queue_spill_records,
            "identifies": now.identifies,
            "resumes": now.resumes,
            "delivery_failures": now.delivery_failures,
        })
        .to_string()
    })
}

/// Most time a fleet's hand-over waits for the bot to acknowledge the shard's last records.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(10);

/// Identifies of the day's budget a fleet keeps for reconnects of running shards: a twentieth
/// of it (50 of Discord's usual 1,000), at least one.
fn identify_reserve(total: u32) -> u32 {
    (total / 20).max(1)
}

/// Creates the data dir and takes `{data_dir}/shardgate.lock` for this process.
fn lock_data_dir(dir: &std::path::Path) -> Result<std::fs::File, RunError> {
    let failed = |source| RunError::DataDir {
        path: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(failed)?;
    crate::spill::try_lock_file(&dir.join("shardgate.lock"))
        .map_err(failed)?
        .ok_or_else(|| RunError::DataDirLocked {
            path: dir.to_owned(),
        })
}

/// The shard count to run instead of `plan`'s when the last run resharded: its saved sessions
/// are for that count, the configured count is still the one it resharded from, and this
/// process runs every shard. `None` otherwise (the configured count stands).
fn resharded_count(
    path: &std::path::Path,
    plan: ShardPlan,
    range: Option<crate::config::ShardRange>,
) -> Option<NonZeroU32> {
    if range.is_some_and(|r| r.len() != u64::from(plan.total_shards.get())) {
        return None;
    }
    let saved = crate::sink::sessions::load(path).ok()??;
    (saved.total_shards != plan.total_shards.get()
        && saved.resharded_from == Some(plan.total_shards.get()))
    .then(|| NonZeroU32::new(saved.total_shards))
    .flatten()
}

/// The sessions the last run saved for the `owned` shards, if they were identified with the
/// same shard count. Anything unreadable is reported and ignored (left on disk as it is).
fn load_sessions(path: &std::path::Path, total_shards: u32, owned: &[u32]) -> SavedSessions {
    let mut saved = match crate::sink::sessions::load(path) {
        Ok(Some(saved)) if saved.total_shards == total_shards => saved,
        Ok(Some(saved)) => {
            tracing::warn!(
                saved_total_shards = saved.total_shards,
                total_shards,
                "the saved sessions are for another shard count; every shard identifies"
            );
            return SavedSessions::new(total_shards);
        }
        Ok(None) => {
            tracing::debug!("no saved sessions: every shard identifies");
            return SavedSessions::new(total_shards);
        }
        Err(error) => {
            tracing::warn!(%error, "cannot use the saved sessions; every shard identifies");
            return SavedSessions::new(total_shards);
        }
    };
    saved.shards.retain(|shard, _| owned.contains(shard));
    if saved.shards.is_empty() {
        tracing::debug!("no saved sessions for these shards: every shard identifies");
    } else {
        tracing::info!(
            sessions = saved.shards.len(),
            shards = owned.len(),
            "resuming saved sessions; the other shards identify"
        );
    }
    saved
}

fn log_status(snapshot: &Snapshot) {
    tracing::info!(
        shards_ready = snapshot.shards_ready,
        shards_owned = snapshot.shards_owned,
        shards_running = snapshot.shards_running,
        dispatches_in = snapshot.dispatches_in,
        dropped_redundant = snapshot.dropped_redundant_update,
        dropped_not_allowed = snapshot.dropped_not_allowed,
        received = snapshot.records_received,
        delivered = snapshot.records_delivered,
        batches = snapshot.batches_delivered,
        delivery_failures = snapshot.delivery_failures,
        reconnects = snapshot.reconnects,
        decode_errors = snapshot.decode_errors,
        ring_full_waits = snapshot.ring_full_waits,
        queued_memory = snapshot.queue_memory_records,
        queued_spill = snapshot.queue_spill_records,
        spilled = snapshot.records_spilled,
        dropped_spill_full = snapshot.records_dropped_spill_full,
        dropped_invalid = snapshot.records_dropped_invalid,
        saved_sessions_resumed = snapshot.saved_sessions_resumed,
        saved_sessions_rejected = snapshot.saved_sessions_rejected,
        "status"
    );
}

/// `GET {api_base}/gateway/bot`.
pub fn fetch_gateway_bot(
    settings: &Settings,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<GatewayBot, RunError> {
    let url = format!("{}/gateway/bot", settings.api_base.trim_end_matches('/'));
    let parsed = ForwardUrl::parse(&url).map_err(|e| RunError::ApiBase(e.to_string()))?;
    let mut client = HttpClient::new(
        parsed,
        Some(format!("Bot {}", settings.token.expose_secret())),
        Some(Arc::clone(tls)),
        Duration::from_secs(10),
    );
    let failed = |reason: String| RunError::GatewayBot {
        url: url.clone(),
        reason,
    };
    let (status, body) = client.get().map_err(|e| failed(gateway_bot_failure(&e)))?;
    match status {
        200 => {}
        401 => {
            return Err(failed(
                "401 Unauthorized: the token is wrong (check --token / DISCORD_TOKEN)".into(),
            ));
        }
        other => return Err(failed(format!("HTTP {other}"))),
    }
    parse_gateway_bot(&body).map_err(failed)
}

/// Why `GET /gateway/bot` failed, with the setting to check.
fn gateway_bot_failure(error: &HttpError) -> String {
    match error {
        HttpError::TimedOut { .. } => format!(
            "{error}; check --api-base: nothing there answered in time (Discord's REST API is \
             {})",
            Settings::DEFAULT_API_BASE
        ),
        HttpError::Connect { .. } => format!("{error}; check --api-base"),
        // A certificate problem already names its fix (--ca-file).
        other => other.to_string(),
    }
}

fn parse_gateway_bot(body: &[u8]) -> Result<GatewayBot, String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("answer is not JSON: {e}"))?;
    let number = |v: &serde_json::Value, key: &str| {
        v.get(key)
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| format!("answer has no numeric `{key}`"))
    };
    let limit = value
        .get("session_start_limit")
        .ok_or("answer has no session_start_limit")?;
    let clamp = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    Ok(GatewayBot {
        url: value
            .get("url")
            .and_then(serde_json::Value::as_str)
            .ok_or("answer has no `url`")?
            .to_owned(),
        shards: clamp(number(&value, "shards")?),
        session_start_limit: SessionStartLimit {
            total: clamp(number(limit, "total")?),
            remaining: clamp(number(limit, "remaining")?),
            reset_after_ms: number(limit, "reset_after")?,
            max_concurrency: clamp(number(limit, "max_concurrency")?).max(1),
        },
    })
}

/// Reads `Max locked memory` from /proc/self/limits (no unsafe, no libc).
fn check_locked_memory(cores: u32) -> Result<(), RunError> {
    let needed_bytes = LOCKED_MEMORY_PER_EXECUTOR_BYTES * u64::from(cores);
    let Ok(limits) = std::fs::read_to_string("/proc/self/limits") else {
        return Ok(());
    };
    let Some(line) = limits.lines().find(|l| l.starts_with("Max locked memory")) else {
        return Ok(());
    };
    let soft = line.split_whitespace().nth(3).unwrap_or("unlimited");
    let Ok(limit_bytes) = soft.parse::<u64>() else {
        return Ok(());
    }; // "unlimited"
    if limit_bytes < needed_bytes {
        return Err(RunError::LockedMemory {
            limit_bytes,
            needed_bytes,
            needed_kib: needed_bytes.div_ceil(1024),
            cores,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_bot_answers_parse_and_broken_ones_are_named() {
        let body = br#"{"url":"wss://gateway.discord.gg","shards":9,"session_start_limit":{"total":1000,"remaining":999,"reset_after":14400000,"max_concurrency":1}}"#;
        let parsed = parse_gateway_bot(body).unwrap();
        assert_eq!(parsed.shards, 9);
        assert_eq!(parsed.session_start_limit.remaining, 999);
        assert_eq!(parsed.session_start_limit.reset_after_ms, 14_400_000);
        assert!(
            parse_gateway_bot(b"{}")
                .unwrap_err()
                .contains("session_start_limit")
        );
        assert!(parse_gateway_bot(b"nope").unwrap_err().contains("not JSON"));
    }

    #[test]
    fn a_gateway_bot_failure_names_the_setting_to_check() {
        let timed_out = HttpError::TimedOut {
            stage: crate::sink::http::Stage::WaitingForResponse,
            timeout: Duration::from_secs(10),
        };
        assert_eq!(
            gateway_bot_failure(&timed_out),
            "waiting for the response: timed out after 10 s; check --api-base: nothing there \
             answered in time (Discord's REST API is https://discord.com/api/v10)"
        );
        let refused = HttpError::Connect {
            host: "127.0.0.1".into(),
            port: 9,
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        };
        assert!(gateway_bot_failure(&refused).ends_with("; check --api-base"));
        let untrusted = HttpError::Tls(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        ));
        assert!(gateway_bot_failure(&untrusted).contains("--ca-file <PEM>"));
    }

    #[test]
    fn the_exit_message_names_each_fatal_code_its_meaning_and_fix() {
        let summary = |shards_fatal, fatal_close_codes| RunSummary {
            records_delivered: 0,
            records_dropped_shutdown: 0,
            shards_fatal,
            fatal_close_codes,
        };
        assert_eq!(summary(0, vec![]).fatal_message(), None);
        assert_eq!(
            summary(2, vec![(4004, 2)]).fatal_message().unwrap(),
            format!(
                "2 shards stopped on close code 4004, {}; Discord does not let these shards \
                 reconnect (see docs/troubleshooting.md)",
                fatal_close_explanation(4004).unwrap()
            )
        );
        let mixed = summary(4, vec![(4010, 1), (4014, 2)])
            .fatal_message()
            .unwrap();
        assert!(
            mixed.starts_with("1 shard stopped on close code 4010, invalid shard: "),
            "{mixed}"
        );
        assert!(
            mixed.contains("; 2 shards stopped on close code 4014, disallowed intents: "),
            "{mixed}"
        );
        assert!(
            mixed.contains("; 1 shard could not start (see the error logged for it); Discord"),
            "{mixed}"
        );
        assert_eq!(
            summary(1, vec![]).fatal_message().unwrap(),
            "1 shard could not start (see the error logged for it)"
        );
    }
}
