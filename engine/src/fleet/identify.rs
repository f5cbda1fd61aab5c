//! The fleet's identify worker: this host's side of the shared buckets.
//!
//! Each shard that needs a new session gets a ticket in its bucket's queue in Redis as soon as
//! it asks (so the queue holds every host's tickets in arrival order, reconnects first). The
//! worker asks Redis for the grant of this host's first ticket in each bucket when it may be due:
//! when Redis said how long the bucket's interval has left, or when another host's grant or
//! cancel made one of this host's tickets the bucket's next (published on the wake channel as
//! `bucket:host`, which a second connection listens to). No polling while another host's ticket
//! heads a bucket, but a slow fallback in case a wake was lost with a dropped connection.
//!
//! A grant goes to the [`FleetGate`] and the shard's core is nudged; the shard identifies at
//! once and reports the send, which moves the bucket's next grant to a full interval after it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::FleetCounters;
use super::gate::{FleetGate, GateRequest};
use super::store::{Store, Take};
use crate::control::{ControlHandle, Nudge};

/// How long a ticket that another host's ticket heads waits without a wake before asking again
/// (a wake lost while the listening connection was down). Wakes go to the host of the bucket's
/// next ticket only, so this is what every other waiting host pays: one ask per bucket per
/// fallback.
const WAKE_FALLBACK: Duration = Duration::from_secs(10);
/// How long the worker waits before asking Redis again after an error.
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(1);
/// Most time between two looks at the stop flag.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// What the worker needs to know.
#[derive(Debug, Clone)]
pub struct IdentifySettings {
    pub host_id: String,
    pub max_concurrency: u32,
    /// Discord's window per bucket plus the safety margin.
    pub interval: Duration,
    /// Identifies of the day's budget kept for reconnects of running shards.
    pub reserve: u32,
}

#[derive(Debug)]
struct Ticket {
    /// The shard ran a session: it goes ahead of new ones.
    reconnect: bool,
    /// This host's order of asking, within the class.
    order: u64,
    queued: bool,
    /// When to ask Redis for its grant next (only the bucket's first ticket of this host asks).
    due: Instant,
}

pub(super) struct Worker {
    settings: IdentifySettings,
    client: redis::Client,
    store: Option<Store>,
    cluster: String,
    gate: Arc<FleetGate>,
    control: ControlHandle,
    counters: Arc<FleetCounters>,
    tickets: BTreeMap<u32, Ticket>,
    next_order: u64,
    budget_warned: bool,
}

impl Worker {
    pub(super) fn new(
        settings: IdentifySettings,
        client: redis::Client,
        cluster: String,
        gate: Arc<FleetGate>,
        control: ControlHandle,
        counters: Arc<FleetCounters>,
    ) -> Worker {
        Worker {
            settings,
            client,
            store: None,
            cluster,
            gate,
            control,
            counters,
            tickets: BTreeMap::new(),
            next_order: 0,
            budget_warned: false,
        }
    }

    fn bucket(&self, shard_id: u32) -> u32 {
        shard_id % self.settings.max_concurrency.max(1)
    }

    fn ticket_id(&self, shard_id: u32) -> String {
        format!("{}/{shard_id}", self.settings.host_id)
    }

    /// Runs until `stop`: requests from the cores, wakes from the listener, and due tickets.
    pub(super) fn run(
        mut self,
        requests: &Receiver<GateRequest>,
        wakes: &Receiver<(u32, Duration)>,
        stop: &AtomicBool,
    ) {
        while !stop.load(Ordering::Acquire) {
            let now = Instant::now();
            let next_due = self.heads().map(|(_, due)| due).min();
            let wait = next_due
                .map_or(STOP_CHECK, |due| due.saturating_duration_since(now))
                .min(STOP_CHECK);
            crossbeam_channel::select! {
                recv(requests) -> request => match request {
                    Ok(request) => self.handle(request),
                    Err(_) => return,
                },
                recv(wakes) -> wake => {
                    if let Ok((bucket, wait)) = wake {
                        self.wake(bucket, wait);
                    }
                },
                default(wait) => {},
            }
            // Everything that arrived meanwhile, before asking Redis.
            while let Ok(request) = requests.try_recv() {
                self.handle(request);
            }
            while let Ok((bucket, wait)) = wakes.try_recv() {
                self.wake(bucket, wait);
            }
            self.ask_due(Instant::now());
        }
        // The host stops: its tickets leave the queues (the shards closed).
        let shards: Vec<u32> = self.tickets.keys().copied().collect();
        for shard_id in shards {
            self.cancel(shard_id);
        }
    }

    fn handle(&mut self, request: GateRequest) {
        match request {
            GateRequest::Want {
                shard_id,
                reconnect,
            } => {
                let order = self.next_order;
                self.next_order += 1;
                self.tickets.entry(shard_id).or_insert(Ticket {
                    reconnect,
                    order,
                    queued: false,
                    due: Instant::now(),
                });
                self.enqueue(shard_id);
            }
            GateRequest::Sent { shard_id, at } => {
                let bucket = self.bucket(shard_id);
                let interval = self.settings.interval;
                // The bucket's next grant waits a full interval from the send (later than the
                // grant's own spacing when the send was late). A report that waited here for
                // more than a second is moot: the next grant is spaced from Redis's clock.
                if at.elapsed() < RETRY_AFTER_ERROR {
                    let _ = self.with_store(|store| store.identify_sent(bucket, interval));
                }
            }
            GateRequest::Cancel { shard_id } => self.cancel(shard_id),
        }
    }

    fn enqueue(&mut self, shard_id: u32) {
        let Some(ticket) = self.tickets.get(&shard_id) else {
            return;
        };
        if ticket.queued {
            return;
        }
        let (bucket, id, host, reconnect) = (
            self.bucket(shard_id),
            self.ticket_id(shard_id),
            self.settings.host_id.clone(),
            ticket.reconnect,
        );
        if self
            .with_store(|store| store.enqueue_identify(bucket, &id, &host, reconnect))
            .is_some()
            && let Some(ticket) = self.tickets.get_mut(&shard_id)
        {
            ticket.queued = true;
        }
    }

    fn cancel(&mut self, shard_id: u32) {
        if let Some(ticket) = self.tickets.remove(&shard_id)
            && ticket.queued
        {
            let (bucket, id) = (self.bucket(shard_id), self.ticket_id(shard_id));
            let _ = self.with_store(|store| store.cancel_identify(bucket, &id));
        }
    }

    /// A grant or cancel made this host's first ticket in `bucket` the next: it asks once the
    /// bucket's interval (`wait`) has run.
    fn wake(&mut self, bucket: u32, wait: Duration) {
        let due = Instant::now() + wait;
        if let Some(shard_id) = self.head_of(bucket)
            && let Some(ticket) = self.tickets.get_mut(&shard_id)
        {
            ticket.due = due;
        }
    }

    /// This host's first ticket in `bucket`: reconnects first, then in the order asked.
    fn head_of(&self, bucket: u32) -> Option<u32> {
        self.tickets
            .iter()
            .filter(|(shard, _)| self.bucket(**shard) == bucket)
            .min_by_key(|(_, ticket)| (!ticket.reconnect, ticket.order))
            .map(|(shard, _)| *shard)
    }

    /// Per bucket with tickets: this host's first ticket and when it is due.
    fn heads(&self) -> impl Iterator<Item = (u32, Instant)> + '_ {
        let mut heads: BTreeMap<u32, (bool, u64, u32, Instant)> = BTreeMap::new();
        for (&shard, ticket) in &self.tickets {
            let candidate = (!ticket.reconnect, ticket.order, shard, ticket.due);
            heads
                .entry(self.bucket(shard))
                .and_modify(|head| {
                    if (candidate.0, candidate.1) < (head.0, head.1) {
                        *head = candidate;
                    }
                })
                .or_insert(candidate);
        }
        heads.into_values().map(|(_, _, shard, due)| (shard, due))
    }

    fn ask_due(&mut self, now: Instant) {
        let due: Vec<u32> = self
            .heads()
            .filter(|(_, due)| *due <= now)
            .map(|(shard, _)| shard)
            .collect();
        for shard_id in due {
            self.ask(shard_id, now);
        }
    }

    fn ask(&mut self, shard_id: u32, now: Instant) {
        self.enqueue(shard_id);
        let (bucket, id) = (self.bucket(shard_id), self.ticket_id(shard_id));
        let Some(reconnect) = self.tickets.get(&shard_id).map(|ticket| ticket.reconnect) else {
            return;
        };
        let (interval, reserve) = (self.settings.interval, self.settings.reserve);
        let answer = self
            .with_store(|store| store.take_identify(bucket, &id, interval, reserve, !reconnect));
        let due = match answer {
            None => now + RETRY_AFTER_ERROR,
            Some(Take::Granted { .. }) => {
                self.tickets.remove(&shard_id);
                self.counters
                    .identifies_granted
                    .fetch_add(1, Ordering::Relaxed);
                self.gate.grant(shard_id, Instant::now());
                if !self.control.nudge_shard(shard_id, Nudge::IdentifyPermit) {
                    // The shard went away meanwhile; its grant is simply not used.
                    self.gate.cancel(shard_id);
                }
                return;
            }
            Some(Take::Wait(None)) => now + WAKE_FALLBACK,
            Some(Take::Wait(Some(wait))) => now + wait,
            Some(Take::NotQueued) => {
                // Dropped while this host's lease had run out: queue again, at the back.
                if let Some(ticket) = self.tickets.get_mut(&shard_id) {
                    ticket.queued = false;
                }
                now
            }
            Some(Take::BudgetSpent(wait)) => {
                if !std::mem::replace(&mut self.budget_warned, true) {
                    tracing::warn!(
                        reset_in_s = wait.as_secs(),
                        reserve,
                        "the fleet's identify budget for today is spent (less the reserve for \
                         reconnects): new sessions wait for Discord's reset"
                    );
                }
                now + wait.min(Duration::from_secs(60))
            }
        };
        if let Some(ticket) = self.tickets.get_mut(&shard_id) {
            ticket.due = due;
        }
    }

    /// Runs `step` on the connection (opened if needed, dropped on an error); counts the round
    /// trip.
    fn with_store<T>(
        &mut self,
        step: impl FnOnce(&mut Store) -> Result<T, super::store::StoreError>,
    ) -> Option<T> {
        if self.store.is_none() {
            match Store::connect(&self.client, &self.cluster) {
                Ok(store) => self.store = Some(store),
                Err(error) => {
                    self.counters.redis_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%error, "identify worker: Redis unreachable");
                    return None;
                }
            }
        }
        let store = self.store.as_mut()?;
        self.counters
            .identify_round_trips
            .fetch_add(1, Ordering::Relaxed);
        match step(store) {
            Ok(value) => Some(value),
            Err(error) => {
                self.counters.redis_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%error, "identify worker: Redis step failed");
                self.store = None;
                None
            }
        }
    }
}

/// A wake for this host: `bucket:host:ms` names the bucket whose next ticket is `host`'s and
/// how long its interval has to run.
fn parse_wake(payload: &str, host: &str) -> Option<(u32, Duration)> {
    let mut parts = payload.split(':');
    let bucket = parts.next()?.parse().ok()?;
    let next = parts.next()?;
    let wait = parts.next()?.parse().ok()?;
    (next == host && parts.next().is_none()).then(|| (bucket, Duration::from_millis(wait)))
}

/// Listens to the wake channel on its own connection and passes on the buckets whose next
/// ticket is `host`'s, until `stop`; reconnects after a failure.
pub(super) fn listen(
    client: &redis::Client,
    channel: &str,
    host: &str,
    wakes: &Sender<(u32, Duration)>,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::Acquire) {
        let Ok(mut conn) = client.get_connection_with_timeout(super::store::REDIS_TIMEOUT) else {
            std::thread::sleep(RETRY_AFTER_ERROR);
            continue;
        };
        let mut pubsub = conn.as_pubsub();
        if pubsub.subscribe(channel).is_err() || pubsub.set_read_timeout(Some(STOP_CHECK)).is_err()
        {
            std::thread::sleep(RETRY_AFTER_ERROR);
            continue;
        }
        while !stop.load(Ordering::Acquire) {
            match pubsub.get_message() {
                Ok(message) => {
                    let payload: String = message.get_payload().unwrap_or_default();
                    if let Some(wake) = parse_wake(&payload, host) {
                        let _ = wakes.send(wake);
                    }
                }
                Err(error) if error.is_timeout() => {}
                Err(_) => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wake_is_for_the_host_it_names_with_the_wait() {
        assert_eq!(
            parse_wake("3:gw-1:5250", "gw-1"),
            Some((3, Duration::from_millis(5250)))
        );
        assert_eq!(parse_wake("3:gw-2:5250", "gw-1"), None);
        assert_eq!(parse_wake("3:gw-1", "gw-1"), None);
        assert_eq!(parse_wake("x:gw-1:0", "gw-1"), None);
        assert_eq!(parse_wake("3:gw-1:0:extra", "gw-1"), None);
    }
}
