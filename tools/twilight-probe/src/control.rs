//! What the shard tasks and the main task share: progress towards the stop target, the
//! stop signal, and the resumable close at the end.

use futures_util::StreamExt as _;
use serde::Serialize;
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{Notify, watch},
    time::{Instant, sleep_until, timeout},
};
use twilight_gateway::{CloseFrame, Message, Shard};

/// How long a shard may take to finish its closing handshake at the end of a run.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Progress reported by the shard tasks; the main task wakes up on every change.
#[derive(Debug, Default)]
pub struct Progress {
    /// Shards that reached their target (latched: counted once per shard).
    reached: AtomicUsize,
    /// GUILD_CREATE dispatches over all shards.
    guild_creates: AtomicU64,
    /// Shards whose stream ended (twilight closed them fatally).
    ended: AtomicUsize,
    /// Wakes the main task.
    changed: Notify,
}

impl Progress {
    /// A shard reached its target.
    pub fn shard_reached(&self) {
        self.reached.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_one();
    }

    /// A shard received a GUILD_CREATE.
    pub fn guild_created(&self) {
        self.guild_creates.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_one();
    }

    /// A shard's stream ended: it will not reconnect.
    pub fn shard_ended(&self) {
        self.ended.fetch_add(1, Ordering::Relaxed);
        self.changed.notify_one();
    }
}

/// Why a run stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every shard reached the target (and enough GUILD_CREATEs arrived).
    TargetReached,
    /// `--timeout-secs` elapsed first.
    Timeout,
    /// A shard was fatally closed, so the target can no longer be reached.
    ShardFatallyClosed,
    /// SIGINT.
    Sigint,
    /// SIGTERM.
    Sigterm,
}

/// The main task's side: waits for an outcome, then tells the shard tasks to stop.
#[derive(Debug)]
pub struct Control {
    pub progress: Arc<Progress>,
    stop_tx: watch::Sender<bool>,
}

impl Control {
    pub fn new() -> Self {
        Self {
            progress: Arc::default(),
            stop_tx: watch::Sender::new(false),
        }
    }

    /// A receiver that changes when the run must stop.
    pub fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop_tx.subscribe()
    }

    /// Wait until `shards` shards reached their target and at least `guilds_expected`
    /// GUILD_CREATEs arrived, or a shard died, the deadline passed or a signal came.
    pub async fn wait(&self, shards: usize, guilds_expected: u64, deadline: Instant) -> Outcome {
        let mut sigint = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
        let mut sigterm = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
        let progress = &self.progress;
        loop {
            // Checked before each wait; `notify_one` keeps a permit, so no wake-up is lost.
            if progress.ended.load(Ordering::Relaxed) > 0 {
                return Outcome::ShardFatallyClosed;
            }
            if progress.reached.load(Ordering::Relaxed) >= shards
                && progress.guild_creates.load(Ordering::Relaxed) >= guilds_expected
            {
                return Outcome::TargetReached;
            }
            tokio::select! {
                () = progress.changed.notified() => {}
                () = sleep_until(deadline) => return Outcome::Timeout,
                _ = sigint.recv() => return Outcome::Sigint,
                _ = sigterm.recv() => return Outcome::Sigterm,
            }
        }
    }

    /// Tell every shard task to close its shard and return.
    pub fn stop(&self) {
        self.stop_tx.send_replace(true);
    }
}

/// A WebSocket close as twilight reported it. Code 1006 with an empty reason is
/// twilight's own marker for a transport error or a zombied connection.
#[derive(Debug, Serialize)]
pub struct CloseReport {
    /// Milliseconds since the probe started.
    pub at_ms: u64,
    /// Close code; `null` when the close frame had none.
    pub code: Option<u16>,
    pub reason: String,
}

impl CloseReport {
    pub fn new(at_ms: u64, frame: Option<&CloseFrame<'_>>) -> Self {
        Self {
            at_ms,
            code: frame.map(|f| f.code),
            reason: frame.map(|f| f.reason.to_string()).unwrap_or_default(),
        }
    }
}

/// Close the shard resumably (code 4000, so the session survives) and read until the
/// gateway's answering close frame. Returns it, or `None` if none came in time.
pub async fn close_resumably(shard: &mut Shard, start: Instant) -> Option<CloseReport> {
    shard.close(CloseFrame::RESUME);
    let drain = async {
        while let Some(item) = shard.next().await {
            if let Ok(Message::Close(frame)) = item {
                return Some(CloseReport::new(millis_since(start), frame.as_ref()));
            }
        }
        None
    };
    timeout(CLOSE_TIMEOUT, drain).await.ok().flatten()
}

/// Whole milliseconds since `start`.
pub fn millis_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}
