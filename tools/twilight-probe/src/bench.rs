//! Bench mode: the smallest loop a twilight bot runs, counted and timed.
//!
//! `full` is the loop from twilight's documentation, `shard.next_event(
//! EventTypeFlags::all())`: receive, decompress, classify and deserialize every event.
//! `raw` stops after the shard's own processing (decompression plus its op/seq/t scan).
//! Stop target: every shard's session sequence (`shard.session()`) reached `--until-seq`.

use crate::cli::BenchParse;
use crate::control::{Control, Outcome, Progress, close_resumably};
use crate::procfs::{self, CpuTime};
use futures_util::StreamExt as _;
use std::{hint::black_box, sync::Arc};
use tokio::{sync::watch, time::Instant};
use tracing::Instrument as _;
use twilight_gateway::{EventTypeFlags, Session, Shard, StreamExt as _};

/// What one shard counted.
#[derive(Debug, Default)]
pub struct Counts {
    /// Events (`full`: those twilight knows) or messages (`raw`) received, any opcode.
    pub events: u64,
    /// Errors twilight returned.
    pub errors: u64,
    /// When the first and the last event arrived.
    pub first: Option<Instant>,
    pub last: Option<Instant>,
}

/// Run one task per shard until every shard's sequence reached `until_seq`, a timeout or
/// a signal. Also returns the process CPU time at that moment, before the final closes.
pub async fn run(
    shards: Vec<Shard>,
    control: &Control,
    parse: BenchParse,
    until_seq: u64,
    deadline: Instant,
) -> (Outcome, Vec<Counts>, CpuTime) {
    let count = shards.len();
    let tasks: Vec<_> = shards
        .into_iter()
        .map(|shard| {
            let span = tracing::info_span!("shard", id = shard.id().number());
            let task = count_events(
                shard,
                parse,
                until_seq,
                Arc::clone(&control.progress),
                control.stop_signal(),
            );
            tokio::spawn(task.instrument(span))
        })
        .collect();
    let outcome = control.wait(count, 0, deadline).await;
    let cpu = procfs::cpu_time().unwrap_or_default();
    control.stop();
    let mut counts = Vec::with_capacity(count);
    for task in tasks {
        counts.push(task.await.expect("a shard task panicked"));
    }
    (outcome, counts, cpu)
}

/// The bench loop of one shard.
async fn count_events(
    mut shard: Shard,
    parse: BenchParse,
    until_seq: u64,
    progress: Arc<Progress>,
    mut stop: watch::Receiver<bool>,
) -> Counts {
    let mut counts = Counts::default();
    let mut reached = false;
    loop {
        let received = tokio::select! {
            biased;
            _ = stop.changed() => break,
            received = receive(&mut shard, parse) => received,
        };
        let Some(ok) = received else {
            progress.shard_ended();
            // The stream is over: polling it again would panic, there is nothing to close.
            return counts;
        };
        let now = Instant::now();
        counts.first.get_or_insert(now);
        counts.last = Some(now);
        if ok {
            counts.events += 1;
        } else {
            counts.errors += 1;
        }
        if !reached && shard.session().map(Session::sequence) >= Some(until_seq) {
            reached = true;
            progress.shard_reached();
        }
    }
    close_resumably(&mut shard, Instant::now()).await;
    counts
}

/// Receive the next event (`full`) or message (`raw`); `Some(false)` is an error twilight
/// returned, `None` the end of the stream. Cancel safe, like the twilight futures inside.
async fn receive(shard: &mut Shard, parse: BenchParse) -> Option<bool> {
    match parse {
        BenchParse::Full => {
            let item = shard.next_event(EventTypeFlags::all()).await?;
            Some(item.map(black_box).is_ok())
        }
        BenchParse::Raw => Some(shard.next().await?.map(black_box).is_ok()),
    }
}
