//! The sink: drains every core's ring, builds batches bounded by events, bytes and linger
//! time, and delivers them to the bot over HTTP, in order per shard, at least once.
//!
//! Runs on its own thread, never on a core; blocking I/O is allowed here and nowhere else.
//! A batch is done only on a 2xx; anything else is retried with backoff, and while it is
//! retried nothing behind it moves, so per shard order holds (a shard feeds one ring, rings
//! are FIFO, batches go one at a time). A full ring is the cores' backpressure.

pub mod batch;
pub mod http;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select, TryRecvError};

use crate::record::Record;
use http::HttpClient;

/// First retry delay after a failed delivery; doubles up to [`RETRY_DELAY_MAX`].
const RETRY_DELAY_MIN: Duration = Duration::from_millis(100);
const RETRY_DELAY_MAX: Duration = Duration::from_secs(5);

/// Batching and delivery settings (sizes decided at startup).
#[derive(Clone, Debug)]
pub struct SinkConfig {
    pub batch_events_max: usize,
    pub batch_bytes_max: usize,
    pub batch_linger: Duration,
    /// After the cores stopped, how long undelivered batches are still retried before they
    /// are counted as dropped (reason `shutdown_undelivered`).
    pub shutdown_grace: Duration,
}

/// Counters read by the reporter.
#[derive(Debug, Default)]
pub struct SinkStats {
    pub batches_delivered: AtomicU64,
    pub records_delivered: AtomicU64,
    pub bytes_delivered: AtomicU64,
    pub delivery_failures: AtomicU64,
    pub records_dropped_shutdown: AtomicU64,
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

/// Runs until every ring is disconnected (all cores ended) and drained.
pub fn run(
    config: SinkConfig,
    rings: Vec<Receiver<Record>>,
    mut client: HttpClient,
    stats: Arc<SinkStats>,
    stop: Arc<AtomicBool>,
) {
    let mut batch: Vec<Record> = Vec::with_capacity(config.batch_events_max);
    let mut body: Vec<u8> = Vec::with_capacity(config.batch_bytes_max + 64 * 1024);
    let mut open = vec![true; rings.len()];
    let mut next_ring = 0;
    loop {
        let mut batch_bytes = 0;
        let mut first_at: Option<Instant> = None;
        // Fill a batch: drain rings round-robin; wait (not spin) when all are empty.
        loop {
            let mut progressed = false;
            for offset in 0..rings.len() {
                let index = (next_ring + offset) % rings.len();
                if !open[index] {
                    continue;
                }
                loop {
                    if batch.len() >= config.batch_events_max
                        || batch_bytes >= config.batch_bytes_max
                    {
                        break;
                    }
                    match rings[index].try_recv() {
                        Ok(record) => {
                            batch_bytes += record.encoded_len();
                            first_at.get_or_insert_with(Instant::now);
                            batch.push(record);
                            progressed = true;
                        }
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => {
                            open[index] = false;
                            break;
                        }
                    }
                }
            }
            next_ring = (next_ring + 1) % rings.len().max(1);
            let full =
                batch.len() >= config.batch_events_max || batch_bytes >= config.batch_bytes_max;
            let lingered = first_at.is_some_and(|at| at.elapsed() >= config.batch_linger);
            let all_closed = open.iter().all(|o| !o);
            if full || lingered || (all_closed && !progressed) {
                break;
            }
            if !progressed {
                let wait = match first_at {
                    Some(at) => config.batch_linger.saturating_sub(at.elapsed()),
                    None => Duration::from_millis(100),
                };
                let mut select = Select::new();
                for (index, ring) in rings.iter().enumerate() {
                    if open[index] {
                        select.recv(ring);
                    }
                }
                // Wakes when any ring has a record (or closes), or the linger ends.
                let _ = select.ready_timeout(wait);
            }
        }
        if batch.is_empty() {
            if open.iter().all(|o| !o) {
                return;
            }
            continue;
        }
        body.clear();
        batch::encode(&batch, &mut body);
        let delivered = deliver(&mut client, &body, &stats, &stop, config.shutdown_grace);
        if delivered {
            stats.batches_delivered.fetch_add(1, Ordering::Relaxed);
            stats
                .records_delivered
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            stats
                .bytes_delivered
                .fetch_add(body.len() as u64, Ordering::Relaxed);
            if let Some(at) = first_at {
                stats.record_latency(at.elapsed());
            }
        } else {
            stats
                .records_dropped_shutdown
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            tracing::error!(
                records = batch.len(),
                "the bot did not accept a batch before the shutdown grace ended; records dropped"
            );
        }
        batch.clear();
        // Keep memory bounded after a burst of big payloads.
        if body.capacity() > 4 * (config.batch_bytes_max + 64 * 1024) {
            body = Vec::with_capacity(config.batch_bytes_max + 64 * 1024);
        }
    }
}

/// Posts `body` until a 2xx, backing off between tries. Once `stop` is set, keeps trying for
/// `grace` more and then gives up (the caller counts the loss).
fn deliver(
    client: &mut HttpClient,
    body: &[u8],
    stats: &SinkStats,
    stop: &AtomicBool,
    grace: Duration,
) -> bool {
    let mut delay = RETRY_DELAY_MIN;
    let mut stop_seen: Option<Instant> = None;
    loop {
        match client.post_json(body) {
            Ok(status) if (200..300).contains(&status) => return true,
            Ok(status) => {
                stats.delivery_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    status,
                    retry_ms = delay.as_millis() as u64,
                    "the bot refused a batch; retrying"
                );
            }
            Err(error) => {
                stats.delivery_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, retry_ms = delay.as_millis() as u64, "cannot deliver a batch; retrying");
            }
        }
        if stop.load(Ordering::Acquire) {
            let since = *stop_seen.get_or_insert_with(Instant::now);
            if since.elapsed() + delay > grace {
                return false;
            }
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(RETRY_DELAY_MAX);
    }
}
