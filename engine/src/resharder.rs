//! Control plane: resharding as the engine runs it. The [`Resharder`] lives on the main thread
//! with the engine: it watches the live set's guild counts and Discord's recommendation, starts
//! a reshard (automatically, or when the admin API asks), and carries out what the pure
//! [`Switch`] decides: shards started on the cores, the sink told, the sessions switched, the
//! old set closed. The admin API reaches it through a [`ReshardBoard`].
//!
//! Must not: run on a core, or block for long (a `/gateway/bot` request, at most its timeout,
//! once per `--reshard-check-interval` or after a 4011, is the longest it waits).

use std::collections::{BTreeMap, VecDeque};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::config::ShardPlan;
use crate::control::{ControlHandle, Nudge, Role, ShardStatus};
use crate::record::{Notice, Record, RecordKind};
use crate::reshard::merge::MergeLimits;
use crate::reshard::plan::{self, Fill, ReshardPolicy, Trigger};
use crate::reshard::{Action, NewShard, Outcome, Switch};
use crate::sink::Sink;
use crate::sink::merge::SinkControl;

/// How often the live set's guild counts are looked at (and, during a reshard, its progress).
const WATCH_INTERVAL: Duration = Duration::from_secs(1);
const WATCH_INTERVAL_RESHARDING: Duration = Duration::from_millis(200);
/// A hand-over that has not completed in this time is asked for again, without the live shards
/// that stopped meanwhile (they never will).
const HAND_OVER_RETRY: Duration = Duration::from_secs(10);
/// How long the admin API waits for the main thread's answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(3);

/// What the admin API asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReshardRequest {
    /// `POST /reshard`, optionally with the new total.
    Start { total_shards: Option<u32> },
    /// `DELETE /reshard`.
    Cancel,
}

/// The main thread's answer: an HTTP status and a JSON body.
pub type ReshardAnswer = (u16, Value);

/// Where the admin API and the resharder meet: requests one way, answers and the status the
/// other. `Send + Sync`.
#[derive(Default)]
pub struct ReshardBoard {
    inner: Mutex<BoardInner>,
    answered: Condvar,
}

#[derive(Default)]
struct BoardInner {
    next_id: u64,
    requests: VecDeque<(u64, ReshardRequest)>,
    answers: BTreeMap<u64, ReshardAnswer>,
    status: Value,
    metrics: ReshardMetrics,
}

/// Every phase name of [`ReshardMetrics::phase`], for the metrics' label set.
pub const PHASES: [&str; 6] = [
    "stable",
    "warming",
    "overlap",
    "handing_over",
    "committing",
    "draining",
];

/// What the metrics show of resharding.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReshardMetrics {
    pub phase: &'static str,
    pub counts: ReshardCounts,
    /// Totals over every merge of this process, and the current one's keys and skew.
    pub merge: MergeTotals,
}

/// The merges' figures for the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MergeTotals {
    pub delivered: u64,
    pub duplicates: u64,
    pub released_unmatched: u64,
    pub keys: usize,
    pub max_skew: Duration,
}

impl ReshardBoard {
    fn lock(&self) -> MutexGuard<'_, BoardInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Leaves a request for the resharder without waiting; [`ReshardBoard::answer_to`] tells
    /// its answer once there is one. For a caller on the thread that drives the engine.
    pub fn submit(&self, request: ReshardRequest) -> u64 {
        let mut inner = self.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        inner.requests.push_back((id, request));
        id
    }

    /// The answer to a [`ReshardBoard::submit`]ted request, once it came (taken).
    pub fn answer_to(&self, id: u64) -> Option<ReshardAnswer> {
        self.lock().answers.remove(&id)
    }

    /// Asks the resharder and waits for its answer; `None` if it did not answer in time. Not
    /// from the thread that polls the engine (it answers there).
    pub fn ask(&self, request: ReshardRequest) -> Option<ReshardAnswer> {
        let id = self.submit(request);
        let mut inner = self.lock();
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        loop {
            if let Some(answer) = inner.answers.remove(&id) {
                return Some(answer);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                // Not answered: withdraw it if still waiting, so it is not done later.
                inner.requests.retain(|(waiting, _)| *waiting != id);
                return None;
            }
            inner = self
                .answered
                .wait_timeout(inner, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// `GET /reshard`.
    pub fn status(&self) -> Value {
        self.lock().status.clone()
    }

    /// For the metrics.
    pub fn metrics(&self) -> ReshardMetrics {
        let metrics = self.lock().metrics.clone();
        if metrics.phase.is_empty() {
            ReshardMetrics {
                phase: "stable",
                ..metrics
            }
        } else {
            metrics
        }
    }

    fn take_requests(&self) -> Vec<(u64, ReshardRequest)> {
        self.lock().requests.drain(..).collect()
    }

    fn answer(&self, id: u64, answer: ReshardAnswer) {
        self.lock().answers.insert(id, answer);
        self.answered.notify_all();
    }

    fn publish(&self, status: Value, metrics: ReshardMetrics) {
        let mut inner = self.lock();
        inner.status = status;
        inner.metrics = metrics;
    }
}

/// Asks Discord for its recommended shard count (and refreshes the identify budget).
pub type RecommendationSource = Box<dyn FnMut() -> Result<u32, String> + Send>;

/// The fixed facts a resharder works with.
pub struct ResharderConfig {
    pub policy: ReshardPolicy,
    pub check_interval: Duration,
    /// Whether this process runs every shard (resharding needs that).
    pub owns_every_shard: bool,
    /// A fleet's host (`--redis-url`): the fleet does not reshard yet.
    pub in_fleet: bool,
    pub max_concurrency: u32,
    pub identify_interval: Duration,
    /// The live set's plan at start.
    pub plan: ShardPlan,
}

/// The resharder's counters, for the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReshardCounts {
    pub finished: u64,
    pub aborted: u64,
    pub refused: u64,
}

/// See the module docs.
pub struct Resharder {
    config: ResharderConfig,
    board: Arc<ReshardBoard>,
    recommendation: RecommendationSource,
    /// Read by the cores: set while the sink merges two sets.
    merging: Arc<AtomicBool>,
    /// Live shards stopped on a fatal close code (a 4011) whose set a reshard replaced: they no
    /// longer count as the engine's fatal shards.
    fatal_replaced: Arc<AtomicU64>,
    /// The live set's plan (changes at each switch).
    plan: ShardPlan,
    active: Option<Active>,
    recommended: Option<u32>,
    checked_at: Option<Instant>,
    watched_at: Option<Instant>,
    /// Live shards stopped by 4011 so far (a new one asks Discord at once and triggers).
    sharding_required_seen: u64,
    sharding_required: bool,
    fill: Fill,
    last_finished: Option<Instant>,
    last_outcome: Option<(Outcome, Instant)>,
    /// The last reshard's merge, as it ended.
    last_merge_json: Value,
    last_refusal: Option<(String, Instant)>,
    counts: ReshardCounts,
    /// The figures of the merges before the current one, and the current one's as last seen.
    merged_before: MergeTotals,
    last_merge: MergeTotals,
}

struct Active {
    switch: Switch,
    hand_over_asked: Option<Instant>,
    new_shards: Vec<NewShard>,
    /// Live shards stopped on a fatal close code, as last reported.
    live_fatal: u64,
}

/// The new plan of a set of `total` shards on the cores the live set uses.
fn plan_for(total: u32, cores: u32) -> ShardPlan {
    let total = NonZeroU32::new(total).unwrap_or(NonZeroU32::MIN);
    let shards_per_core = total.get().div_ceil(cores.max(1));
    ShardPlan {
        total_shards: total,
        shards: crate::config::ShardRange::all(total),
        cores: total.get().div_ceil(shards_per_core),
        shards_per_core,
    }
}

impl Resharder {
    pub fn new(
        config: ResharderConfig,
        board: Arc<ReshardBoard>,
        recommendation: RecommendationSource,
        merging: Arc<AtomicBool>,
        fatal_replaced: Arc<AtomicU64>,
    ) -> Resharder {
        let plan = config.plan;
        Resharder {
            config,
            board,
            recommendation,
            merging,
            fatal_replaced,
            plan,
            active: None,
            recommended: None,
            checked_at: None,
            watched_at: None,
            sharding_required_seen: 0,
            sharding_required: false,
            fill: Fill::default(),
            last_finished: None,
            last_outcome: None,
            last_merge_json: Value::Null,
            last_refusal: None,
            counts: ReshardCounts::default(),
            merged_before: MergeTotals::default(),
            last_merge: MergeTotals::default(),
        }
    }

    /// Whether a reshard runs (the engine must not stop for want of running shards then).
    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    /// The live set's plan.
    pub fn plan(&self) -> ShardPlan {
        self.plan
    }

    pub fn counts(&self) -> ReshardCounts {
        self.counts
    }

    /// The phase for the metrics: `stable` or the switch's.
    pub fn phase(&self) -> &'static str {
        self.active
            .as_ref()
            .map_or("stable", |active| active.switch.phase().as_str())
    }

    /// Called by the engine every few tens of ms. `sharding_required_total`: live shards the
    /// cores saw stopped by 4011 so far.
    /// `save`: writes the saved sessions now (the commit does, before the old set is closed).
    #[allow(clippy::too_many_arguments)]
    pub fn poll(
        &mut self,
        control: &ControlHandle,
        sink: &Sink,
        save: &dyn Fn(),
        identify_budget: u32,
        sharding_required_total: u64,
        stopping: bool,
        now: Instant,
    ) {
        if sharding_required_total > self.sharding_required_seen {
            self.sharding_required_seen = sharding_required_total;
            if self.config.owns_every_shard {
                tracing::warn!("Discord closed a shard with 4011 (sharding required)");
                self.sharding_required = true;
                self.checked_at = None;
            }
        }
        for (id, request) in self.board.take_requests() {
            let answer = self.request(request, control, sink, save, identify_budget, stopping, now);
            // The status first, so that a GET right after the answer sees what it did.
            self.publish(sink, now);
            self.board.answer(id, answer);
        }
        let interval = if self.active.is_some() {
            WATCH_INTERVAL_RESHARDING
        } else {
            WATCH_INTERVAL
        };
        if self
            .watched_at
            .is_some_and(|at| now.saturating_duration_since(at) < interval)
        {
            return;
        }
        self.watched_at = Some(now);
        let Ok(reports) = control.reports() else {
            return;
        };
        let statuses: Vec<ShardStatus> = reports.into_iter().flat_map(|r| r.shards).collect();
        self.fill = self.live_fill(&statuses);
        if self.active.is_some() {
            self.advance(&statuses, control, sink, save, now);
        } else if !stopping {
            self.maybe_check_discord(now);
            self.maybe_trigger(control, sink, save, identify_budget, now);
        }
        self.publish(sink, now);
    }

    /// The engine is stopping: a reshard before its hand-over is abandoned (the live set stays
    /// the saved one); after it, the switch has already happened or completes at the flush.
    pub fn stop(&mut self, control: &ControlHandle, sink: &Sink) {
        if let Some(active) = self.active.as_mut() {
            let mut actions = Vec::new();
            if let Ok(outcome) = active.switch.cancel("the engine is stopping", &mut actions) {
                self.run(&actions, control, sink, &|| {}, true);
                self.end(outcome, sink, Instant::now());
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn request(
        &mut self,
        request: ReshardRequest,
        control: &ControlHandle,
        sink: &Sink,
        save: &dyn Fn(),
        identify_budget: u32,
        stopping: bool,
        now: Instant,
    ) -> ReshardAnswer {
        match request {
            ReshardRequest::Start { total_shards } => {
                if stopping {
                    return (409, json!({"error": "the engine is stopping"}));
                }
                if let Some(active) = &self.active {
                    return (
                        409,
                        json!({"error": format!(
                            "a reshard from {} to {} shards runs ({})",
                            active.switch.from(),
                            active.switch.to(),
                            active.switch.phase().as_str()
                        )}),
                    );
                }
                if self.config.in_fleet {
                    return (
                        409,
                        json!({"error": "this process is one host of a fleet (--redis-url): a \
                            fleet does not reshard yet; reshard with every shard in one process"}),
                    );
                }
                if !self.config.owns_every_shard {
                    return (
                        409,
                        json!({"error": format!(
                            "this process runs shards {}..={} of {}: resharding needs every \
                             shard in one process",
                            self.plan.shards.start(),
                            self.plan.shards.end(),
                            self.plan.total_shards
                        )}),
                    );
                }
                let live = self.plan.total_shards.get();
                let to = total_shards.unwrap_or_else(|| self.target_count());
                match plan::check(&self.config.policy, live, to, self.fill, identify_budget) {
                    Ok(()) => {
                        self.begin(to, Trigger::Manual, control, sink, save, now);
                        (202, self.status_json(sink, now))
                    }
                    Err(refusal) => {
                        let reason = refusal.to_string();
                        self.refused(&reason, now);
                        (422, json!({"error": reason}))
                    }
                }
            }
            ReshardRequest::Cancel => {
                let Some(active) = self.active.as_mut() else {
                    return (409, json!({"error": "no reshard runs"}));
                };
                let mut actions = Vec::new();
                match active
                    .switch
                    .cancel("cancelled through the admin API", &mut actions)
                {
                    Ok(outcome) => {
                        self.run(&actions, control, sink, save, true);
                        self.end(outcome, sink, now);
                        (202, self.status_json(sink, now))
                    }
                    Err(reason) => (409, json!({"error": reason})),
                }
            }
        }
    }

    fn maybe_check_discord(&mut self, now: Instant) {
        if !self.config.owns_every_shard {
            return;
        }
        let due = self
            .checked_at
            .is_none_or(|at| now.saturating_duration_since(at) >= self.config.check_interval);
        if !due {
            return;
        }
        // The first look at start is the one `/gateway/bot` gave the plan.
        if self.checked_at.is_none() && !self.sharding_required {
            self.checked_at = Some(now);
            return;
        }
        self.checked_at = Some(now);
        match (self.recommendation)() {
            Ok(shards) => {
                tracing::debug!(recommended = shards, "asked Discord for its recommendation");
                self.recommended = Some(shards);
            }
            Err(error) => tracing::warn!(%error, "cannot ask /gateway/bot for the shard count"),
        }
    }

    fn maybe_trigger(
        &mut self,
        control: &ControlHandle,
        sink: &Sink,
        save: &dyn Fn(),
        identify_budget: u32,
        now: Instant,
    ) {
        if !self.config.owns_every_shard {
            return;
        }
        let live = self.plan.total_shards.get();
        let Some(trigger) = plan::automatic_trigger(
            &self.config.policy,
            live,
            self.fill,
            self.recommended,
            self.sharding_required,
            self.last_finished,
            now,
        ) else {
            return;
        };
        let to = self.target_count();
        match plan::check(&self.config.policy, live, to, self.fill, identify_budget) {
            Ok(()) => {
                self.sharding_required = false;
                self.begin(to, trigger, control, sink, save, now);
            }
            Err(refusal) => {
                // Said once per reason, not every second.
                let reason = format!("{trigger}, but {refusal}");
                if self
                    .last_refusal
                    .as_ref()
                    .is_none_or(|(last, _)| *last != reason)
                {
                    tracing::warn!(%reason, "an automatic reshard is refused");
                    self.refused(&reason, now);
                }
            }
        }
    }

    fn refused(&mut self, reason: &str, now: Instant) {
        self.counts.refused += 1;
        self.last_refusal = Some((reason.to_owned(), now));
    }

    /// The count a reshard without a given one goes to (see [`plan::target_count`]).
    fn target_count(&self) -> u32 {
        plan::target_count(
            &self.config.policy,
            self.plan.total_shards.get(),
            self.fill,
            self.recommended,
            self.config.max_concurrency,
        )
    }

    fn begin(
        &mut self,
        to: u32,
        trigger: Trigger,
        control: &ControlHandle,
        sink: &Sink,
        save: &dyn Fn(),
        now: Instant,
    ) {
        let from = self.plan.total_shards.get();
        let (switch, actions) = Switch::start(
            from,
            to,
            trigger,
            self.config.max_concurrency,
            self.config.identify_interval,
            now,
        );
        tracing::info!(
            from,
            to,
            %trigger,
            identify_floor_s = switch.estimate().as_secs(),
            "reshard started: the new set identifies beside the live one"
        );
        self.merged_before.delivered += self.last_merge.delivered;
        self.merged_before.duplicates += self.last_merge.duplicates;
        self.merged_before.released_unmatched += self.last_merge.released_unmatched;
        self.last_merge = MergeTotals::default();
        self.active = Some(Active {
            switch,
            hand_over_asked: None,
            new_shards: Vec::new(),
            live_fatal: 0,
        });
        self.run(&actions, control, sink, save, false);
    }

    fn advance(
        &mut self,
        statuses: &[ShardStatus],
        control: &ControlHandle,
        sink: &Sink,
        save: &dyn Fn(),
        now: Instant,
    ) {
        let live = self.plan.total_shards.get();
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let to = active.switch.to();
        active.new_shards = statuses
            .iter()
            .filter(|s| s.shard_count == to)
            .map(|s| NewShard {
                shard_id: s.shard_id,
                state: s.state,
                fully_ready: s.fully_ready,
            })
            .collect();
        active.live_fatal = statuses
            .iter()
            .filter(|s| s.shard_count == live && s.state == crate::shard::ShardState::Fatal)
            .count() as u64;
        let mut actions = Vec::new();
        let mut outcome = active.switch.tick(&active.new_shards, now, &mut actions);
        let report = sink.merge_report();
        if active.switch.phase() == crate::reshard::Phase::HandingOver {
            // (Again, after a while, without the live shards that stopped meanwhile.)
            let due = active
                .hand_over_asked
                .is_some_and(|at| now.saturating_duration_since(at) >= HAND_OVER_RETRY);
            if due {
                active.hand_over_asked = Some(now);
                sink.control(SinkControl::AwaitHandOver {
                    shard_ids: running(statuses, live),
                });
            }
            if let Some(barrier) = report.barrier {
                active.switch.handed_over(barrier, now);
            }
        }
        if active.switch.phase() == crate::reshard::Phase::Committing {
            active
                .switch
                .durable(sink.durable_before(), report.span, now, &mut actions);
        }
        // Hand-over: the collector waits for the live shards that run now.
        if actions.iter().any(|a| matches!(a, Action::HandOver { .. })) {
            active.hand_over_asked = Some(now);
            sink.control(SinkControl::AwaitHandOver {
                shard_ids: running(statuses, live),
            });
        }
        let aborted = matches!(outcome, Some(Outcome::Aborted { .. }));
        self.run(&actions, control, sink, save, aborted);
        if let Some(outcome) = outcome.take() {
            self.end(outcome, sink, now);
        }
    }

    fn run(
        &mut self,
        actions: &[Action],
        control: &ControlHandle,
        sink: &Sink,
        save: &dyn Fn(),
        abort: bool,
    ) {
        for action in actions {
            match action {
                Action::NoticeStarted { from, to } => sink.control(SinkControl::Notice(notice(
                    Notice::ReshardStarted,
                    *to,
                    format!(r#"{{"from":{from},"to":{to}}}"#),
                ))),
                Action::BeginMerge { live, new } => {
                    sink.control(SinkControl::BeginMerge {
                        live: *live,
                        new: *new,
                        limits: MergeLimits::DEFAULT,
                    });
                    self.merging.store(true, Ordering::Relaxed);
                }
                Action::StartShards {
                    shard_count,
                    shard_ids,
                } => control.start_shards(*shard_count, shard_ids, Role::Warming),
                Action::HandOver { shard_count } => control.tell_set(*shard_count, Nudge::HandOver),
                Action::Commit { shard_count } => {
                    let old = self.plan.total_shards.get();
                    sink.save_set(*shard_count, Some(old));
                    // On disk before the old set is closed (the next action): a crash from here
                    // on resumes the new set.
                    save();
                    self.plan = plan_for(*shard_count, self.plan.cores);
                    control.promote(self.plan);
                    if let Some(active) = &self.active {
                        self.fatal_replaced
                            .fetch_add(active.live_fatal, Ordering::Relaxed);
                    }
                    tracing::info!(
                        shards = shard_count,
                        "reshard switched: the new set is live and its sessions are the saved ones"
                    );
                }
                Action::RetireSet {
                    shard_count,
                    close_code: _,
                } => control.tell_set(*shard_count, Nudge::Retire),
                Action::NoticeFinished { shards } => sink.control(SinkControl::Notice(notice(
                    Notice::ReshardFinished,
                    *shards,
                    format!(r#"{{"shards":{shards}}}"#),
                ))),
                Action::EndMerge => {
                    self.merging.store(false, Ordering::Relaxed);
                    sink.control(SinkControl::EndMerge { abort });
                }
            }
        }
    }

    fn end(&mut self, outcome: Outcome, sink: &Sink, now: Instant) {
        self.last_merge_json = merge_json(&sink.merge_report());
        match &outcome {
            Outcome::Finished { from, to, took } => {
                self.counts.finished += 1;
                self.last_finished = Some(now);
                tracing::info!(
                    from,
                    to,
                    took_ms = took.as_millis() as u64,
                    "reshard finished"
                );
            }
            Outcome::Aborted { from, to, reason } => {
                self.counts.aborted += 1;
                tracing::warn!(from, to, %reason, "reshard aborted; the live set runs on");
            }
        }
        self.active = None;
        self.last_outcome = Some((outcome, now));
    }

    fn live_fill(&self, statuses: &[ShardStatus]) -> Fill {
        let live = self.plan.total_shards.get();
        let mut fill = Fill::default();
        for status in statuses.iter().filter(|s| s.shard_count == live) {
            let guilds = u32::try_from(status.guilds).unwrap_or(u32::MAX);
            fill.fullest = fill.fullest.max(guilds);
            fill.total += status.guilds;
        }
        fill
    }

    fn publish(&mut self, sink: &Sink, now: Instant) {
        let report = sink.merge_report();
        // Merges that ended are added up once, when the next one begins or at their end.
        let current = MergeTotals {
            delivered: report.stats.delivered[0] + report.stats.delivered[1],
            duplicates: report.stats.duplicates[0] + report.stats.duplicates[1],
            released_unmatched: report.stats.released_unmatched,
            keys: report.keys,
            max_skew: report.stats.max_skew,
        };
        let metrics = ReshardMetrics {
            phase: self.phase(),
            counts: self.counts,
            merge: MergeTotals {
                delivered: self.merged_before.delivered + current.delivered,
                duplicates: self.merged_before.duplicates + current.duplicates,
                released_unmatched: self.merged_before.released_unmatched
                    + current.released_unmatched,
                keys: current.keys,
                max_skew: current.max_skew,
            },
        };
        self.last_merge = current;
        self.board.publish(self.status_json(sink, now), metrics);
    }

    /// `GET /reshard`.
    fn status_json(&self, sink: &Sink, now: Instant) -> Value {
        let ago = |at: Instant| now.saturating_duration_since(at).as_secs_f64();
        let current = self.active.as_ref().map(|active| {
            let switch = &active.switch;
            let mut by_state: BTreeMap<&str, u64> = BTreeMap::new();
            for shard in &active.new_shards {
                *by_state.entry(shard.state.as_str()).or_default() += 1;
            }
            let report = sink.merge_report();
            let (rounds_started, rounds) = switch.rounds();
            json!({
                "from": switch.from(),
                "to": switch.to(),
                "phase": switch.phase().as_str(),
                "trigger": switch.trigger().to_string(),
                "started_s_ago": ago(switch.started_at()),
                "identify_rounds_started": rounds_started,
                "identify_rounds": rounds,
                "identify_floor_s": switch.estimate().as_secs_f64(),
                "eta_s": switch.eta().as_secs_f64(),
                "new_shards": {
                    "started": active.new_shards.len(),
                    "fully_ready": active.new_shards.iter().filter(|s| s.fully_ready).count(),
                    "by_state": by_state,
                    "shards": active
                        .new_shards
                        .iter()
                        .map(|s| json!({
                            "shard_id": s.shard_id,
                            "state": s.state.as_str(),
                            "fully_ready": s.fully_ready,
                        }))
                        .collect::<Vec<_>>(),
                },
                "merge": merge_json(&report),
            })
        });
        // The collector keeps the last merge's figures until the next one begins (an aborted
        // set's records still in flight are counted after the end).
        let last_merge = if self.active.is_none() {
            merge_json(&sink.merge_report())
        } else {
            self.last_merge_json.clone()
        };
        let last = self
            .last_outcome
            .as_ref()
            .map(|(outcome, at)| match outcome {
                Outcome::Finished { from, to, took } => json!({
                    "outcome": "finished", "from": from, "to": to,
                    "took_s": took.as_secs_f64(), "ended_s_ago": ago(*at),
                    "merge": last_merge,
                }),
                Outcome::Aborted { from, to, reason } => json!({
                    "outcome": "aborted", "from": from, "to": to,
                    "reason": reason, "ended_s_ago": ago(*at),
                    "merge": last_merge,
                }),
            });
        let refusal = self
            .last_refusal
            .as_ref()
            .map(|(reason, at)| json!({"reason": reason, "s_ago": ago(*at)}));
        json!({
            "phase": self.phase(),
            "automatic": self.config.policy.automatic && self.config.owns_every_shard,
            "at_percent": self.config.policy.at_percent,
            "live_shards": self.plan.total_shards.get(),
            "fill": {
                "fullest_shard_guilds": self.fill.fullest,
                "guilds": self.fill.total,
                "fill_level_guilds": self.config.policy.fill_level(),
            },
            "recommended_shards": self.recommended,
            "current": current,
            "last": last,
            "last_refusal": refusal,
            "counts": {
                "finished": self.counts.finished,
                "aborted": self.counts.aborted,
                "refused": self.counts.refused,
            },
        })
    }
}

fn merge_json(report: &crate::sink::merge::MergeReport) -> Value {
    let stats = report.stats;
    json!({
        "delivered": stats.delivered[0] + stats.delivered[1],
        "duplicates": stats.duplicates[0] + stats.duplicates[1],
        "released_unmatched": stats.released_unmatched,
        "expired_unmatched": stats.expired_unmatched,
        "evicted_for_room": stats.evicted_for_room,
        "keys": report.keys,
        "held": report.held,
        "peak_keys": stats.peak_keys,
        "span_s": report.span.as_secs_f64(),
        "skew_p99_ms": report.skew.as_secs_f64() * 1000.0,
        "max_skew_ms": stats.max_skew.as_secs_f64() * 1000.0,
        "dropped_on_abort": report.dropped_on_abort,
    })
}

/// The live set's shards whose task runs (a stopped or fatal one never hands over).
fn running(statuses: &[ShardStatus], live: u32) -> Vec<u32> {
    statuses
        .iter()
        .filter(|s| s.shard_count == live && !s.state.is_terminal())
        .map(|s| s.shard_id)
        .collect()
}

/// An engine notice record (shard 0 of the set it speaks of).
fn notice(kind: Notice, shard_count: u32, payload: String) -> Record {
    Record {
        shard_id: 0,
        shard_count,
        seq: 0,
        session: 0,
        kind: RecordKind::Notice(kind),
        payload: payload.into_bytes().into(),
    }
}
