//! The fleet: several shardgate processes sharing one bot's shards through Redis.
//!
//! Redis holds who is alive (host leases), who decides (the assigner's lease), which host runs
//! each shard (the assignment, and shard leases with fencing tokens), the identify buckets and
//! daily budget shared by every host, and each shard's session. Every step that reads and
//! writes more than one key is one Lua script (in `scripts/`), so it is atomic, and every time
//! comes from Redis's own clock.
//!
//! Nothing here runs on a core: the agent ([`agent`]) and the identify worker ([`identify`])
//! have their own threads and connections; the cores meet them through the [`gate::FleetGate`]
//! and the control handle's nudges.

pub mod agent;
pub mod assign;
pub mod gate;
pub mod identify;
pub mod store;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Receiver;

use crate::control::ControlHandle;
use crate::limiter::SessionStartLimit;
use crate::sink::SinkPositions;
use agent::{Agent, AgentShared, ClusterView, FleetSettings};
use gate::{FleetGate, GateRequest};
use identify::{IdentifySettings, Worker};
use store::{Store, StoreError};

/// The fleet's counters on this host.
#[derive(Debug, Default)]
pub struct FleetCounters {
    pub shards_held: AtomicU64,
    pub leases_granted: AtomicU64,
    /// Leases another host took (a renewal found them gone to it).
    pub leases_lost: AtomicU64,
    /// Leases this host could not renew in time (Redis unreachable): their shards stopped.
    pub leases_lapsed: AtomicU64,
    /// Shards started with a session another host (or this one before) left in Redis.
    pub sessions_taken_over: AtomicU64,
    pub sessions_saved: AtomicU64,
    pub session_saves_refused: AtomicU64,
    pub handed_over: AtomicU64,
    /// Hand-overs that did not wait for the bot's last acknowledgements.
    pub handover_timeouts: AtomicU64,
    pub identifies_granted: AtomicU64,
    /// Redis commands the identify worker sent (enqueue, take, sent, cancel).
    pub identify_round_trips: AtomicU64,
    pub redis_errors: AtomicU64,
}

impl FleetCounters {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Why the fleet could not start.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error(
        "cannot reach Redis at {url} (--redis-url): {source}; check that it runs and that this \
         host may connect"
    )]
    Unreachable { url: String, source: StoreError },
    #[error("cannot start a fleet thread: {0}")]
    Thread(std::io::Error),
}

/// Asks Discord for the day's `session_start_limit` (`GET /gateway/bot`), and how long to
/// wait before asking again.
pub struct BudgetSource {
    pub fetch: Box<dyn FnMut() -> Result<SessionStartLimit, String> + Send>,
    pub every: Duration,
}

/// Every `budget.every`, reconciles the fleet's budget in Redis with Discord's count (other
/// processes on the token, and Discord's own resets, drift from what the hosts counted). On its
/// own thread: a slow `/gateway/bot` holds neither renewals nor identifies.
fn reconcile_budget(
    client: &redis::Client,
    cluster: &str,
    mut budget: BudgetSource,
    stop: &AtomicBool,
) {
    let mut next = std::time::Instant::now() + budget.every;
    while !stop.load(Ordering::Acquire) {
        if std::time::Instant::now() < next {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        next = std::time::Instant::now() + budget.every;
        let limit = match (budget.fetch)() {
            Ok(limit) => limit,
            Err(error) => {
                tracing::warn!(%error, "cannot read the identify budget from Discord; next time");
                continue;
            }
        };
        let reconciled = Store::connect(client, cluster).and_then(|mut store| {
            store.reconcile_budget(
                limit.total,
                limit.remaining,
                Duration::from_millis(limit.reset_after_ms),
            )
        });
        match reconciled {
            Ok((remaining, reset)) => tracing::info!(
                remaining,
                reset_in_s = reset.as_secs(),
                "the fleet's identify budget reconciled with Discord's"
            ),
            Err(error) => tracing::warn!(%error, "cannot reconcile the identify budget in Redis"),
        }
    }
}

/// The shard count of the fleet: the one stored in Redis, or `plan`'s, stored as the fleet's
/// when it is the first host.
pub fn agree_shard_count(
    redis_url: &str,
    cluster: &str,
    plan: crate::config::ShardPlan,
) -> Result<std::num::NonZeroU32, FleetError> {
    let unreachable = FleetError::unreachable(redis_url);
    let client = store::client(redis_url).map_err(&unreachable)?;
    let mut store = Store::connect(&client, cluster).map_err(&unreachable)?;
    let agreed = store
        .agree_shard_count(plan.total_shards.get())
        .map_err(&unreachable)?;
    Ok(std::num::NonZeroU32::new(agreed).unwrap_or(plan.total_shards))
}

impl FleetError {
    /// Wraps a failed Redis step at `url` (shown without its password).
    pub fn unreachable(url: &str) -> impl Fn(StoreError) -> FleetError {
        let url = store::redacted_url(url);
        move |source| FleetError::Unreachable {
            url: url.clone(),
            source,
        }
    }
}

/// This host's part of the fleet: started after the cores and the sink, finished after them.
pub struct Fleet {
    shared: Arc<AgentShared>,
    stop_identify: Arc<AtomicBool>,
    agent: Option<JoinHandle<()>>,
    identify: Vec<JoinHandle<()>>,
}

impl Fleet {
    /// Connects (failing with a clear error when Redis is unreachable), reconciles the day's
    /// identify budget, and starts the agent, the identify worker and its listener.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        redis_url: &str,
        settings: FleetSettings,
        identify: IdentifySettings,
        limit: SessionStartLimit,
        control: ControlHandle,
        positions: SinkPositions,
        gate: Arc<FleetGate>,
        gate_requests: Receiver<GateRequest>,
        stats: agent::Stats,
        budget: BudgetSource,
    ) -> Result<Fleet, FleetError> {
        let unreachable = FleetError::unreachable(redis_url);
        let client = store::client(redis_url).map_err(&unreachable)?;
        let mut store = Store::connect(&client, &settings.cluster).map_err(&unreachable)?;
        let (remaining, reset) = store
            .reconcile_budget(
                limit.total,
                limit.remaining,
                Duration::from_millis(limit.reset_after_ms),
            )
            .map_err(&unreachable)?;
        tracing::info!(
            redis = %store::redacted_url(redis_url),
            cluster = %settings.cluster,
            host = %settings.host.id,
            identifies_left_today = remaining,
            reset_in_s = reset.as_secs(),
            "joining the fleet"
        );
        let counters = Arc::new(FleetCounters::default());
        let shared = Arc::new(AgentShared {
            settings: settings.clone(),
            stopping: AtomicBool::new(false),
            finish: AtomicBool::new(false),
            counters: Arc::clone(&counters),
            view: Mutex::new(ClusterView::default()),
            moves: Mutex::new(Vec::new()),
            deadlines: Mutex::new(std::collections::BTreeMap::new()),
            lapsed: Mutex::new(Vec::new()),
        });
        let stop_identify = Arc::new(AtomicBool::new(false));
        let (wakes_tx, wakes_rx) = crossbeam_channel::unbounded();
        let listener = {
            let client = client.clone();
            let channel = store.keys().wake_channel();
            let host = settings.host.id.clone();
            let stop = Arc::clone(&stop_identify);
            std::thread::Builder::new()
                .name("shardgate-fleet-wake".into())
                .spawn(move || identify::listen(&client, &channel, &host, &wakes_tx, &stop))
                .map_err(FleetError::Thread)?
        };
        let worker = {
            let worker = Worker::new(
                identify,
                client.clone(),
                settings.cluster.clone(),
                gate,
                control.clone(),
                Arc::clone(&counters),
            );
            let stop = Arc::clone(&stop_identify);
            std::thread::Builder::new()
                .name("shardgate-fleet-identify".into())
                .spawn(move || worker.run(&gate_requests, &wakes_rx, &stop))
                .map_err(FleetError::Thread)?
        };
        let reconciler = {
            let client = client.clone();
            let cluster = settings.cluster.clone();
            let stop = Arc::clone(&stop_identify);
            std::thread::Builder::new()
                .name("shardgate-fleet-budget".into())
                .spawn(move || reconcile_budget(&client, &cluster, budget, &stop))
                .map_err(FleetError::Thread)?
        };
        let watchdog = {
            let shared = Arc::clone(&shared);
            let control = control.clone();
            std::thread::Builder::new()
                .name("shardgate-fleet-watch".into())
                .spawn(move || agent::watch(&shared, &control))
                .map_err(FleetError::Thread)?
        };
        let agent = {
            let agent = Agent::new(
                Arc::clone(&shared),
                client,
                store,
                control,
                positions,
                stats,
            );
            std::thread::Builder::new()
                .name("shardgate-fleet".into())
                .spawn(move || {
                    let ran =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| agent.run()));
                    if ran.is_err() {
                        // Nothing renews the leases now: the watchdog stops every shard at its
                        // deadline, before another host may take it.
                        tracing::error!(
                            "the fleet agent failed: this host's shards stop as their leases \
                             run out, and the other hosts take them"
                        );
                    }
                })
                .map_err(FleetError::Thread)?
        };
        Ok(Fleet {
            shared,
            stop_identify,
            agent: Some(agent),
            identify: vec![listener, worker, watchdog, reconciler],
        })
    }

    /// The engine stops: no new shards from now on (the held ones stay renewed until
    /// [`Fleet::finish`]).
    pub fn begin_stop(&self) {
        self.shared.stopping.store(true, Ordering::Release);
    }

    /// After the sink flushed: saves every session, releases every lease, leaves the fleet.
    pub fn finish(mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.finish.store(true, Ordering::Release);
        if let Some(agent) = self.agent.take()
            && agent.join().is_err()
        {
            tracing::error!("the fleet agent panicked");
        }
        self.stop_identify.store(true, Ordering::Release);
        for thread in self.identify.drain(..) {
            let _ = thread.join();
        }
    }

    /// The counters.
    pub fn counters(&self) -> &FleetCounters {
        &self.shared.counters
    }

    /// For the admin API.
    pub fn handle(&self) -> FleetHandle {
        FleetHandle(Arc::clone(&self.shared))
    }
}

/// The fleet as the admin API sees it. Cheap to clone.
#[derive(Clone)]
pub struct FleetHandle(Arc<AgentShared>);

impl FleetHandle {
    /// What the agent's last step saw.
    pub fn view(&self) -> ClusterView {
        self.0.view().clone()
    }

    pub fn settings(&self) -> &FleetSettings {
        &self.0.settings
    }

    pub fn counters(&self) -> &FleetCounters {
        &self.0.counters
    }

    /// Asks the assigner to move a shard to another host: the agent's next step writes it to
    /// Redis and the assigner's next pass (on whichever host) makes it.
    pub fn request_move(&self, shard_id: u32, host: String) {
        self.0
            .moves
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((shard_id, host));
    }
}
