//! `twilight-probe`: runs real twilight-gateway 0.18 shards against a gateway (in practice
//! shardgate's mock) and prints one JSON summary on stdout; logs go to stderr.
//!
//! `--mode verify` checks the gateway's fidelity as a real client sees it: sessions,
//! sequence numbers, heartbeat ACKs, close codes and payloads twilight cannot parse.
//! `--mode bench` measures what twilight's receive loop costs per event.
//!
//! Transport compression is fixed at build time by twilight's cargo features (`zstd` wins
//! over `zlib`; neither: none), which is why this crate lives outside the workspace.

mod bench;
mod cli;
mod control;
mod procfs;
mod seqset;
mod verify;

use cli::{Args, BenchParse, Mode};
use control::{Control, Outcome, millis_since};
use serde::Serialize;
use std::{collections::BTreeMap, process::ExitCode, time::Duration};
use tokio::time::Instant;
use twilight_gateway::{ConfigBuilder, Intents, Shard, ShardId, queue::InMemoryQueue};

/// Transport compression this binary was built with, as twilight requests it.
const COMPRESSION: &str = if cfg!(feature = "zstd") {
    "zstd-stream"
} else if cfg!(feature = "zlib") {
    "zlib-stream"
} else {
    "none"
};

/// Identify budget of the shared queue: large enough never to run out in a test.
const IDENTIFY_BUDGET: u32 = 1_000_000;

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Never colour: this crate builds tracing-subscriber without its `ansi` feature, so
        // there is nothing to switch on at a terminal (and `with_ansi(true)` would panic in a
        // debug build). Logs go to test pipes and files, where escape codes do not belong.
        .with_ansi(false)
        .with_max_level(args.cli.log_level)
        .init();
    let runtime = match args.cli.threads {
        None => tokio::runtime::Builder::new_current_thread(),
        Some(threads) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(threads.into());
            builder
        }
    }
    .enable_all()
    .build()
    .expect("building the tokio runtime");

    let (summary, ok) = runtime.block_on(run(&args));
    println!("{summary}");
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Connect the shards, run the chosen mode, and return the JSON summary and whether the
/// target was reached.
async fn run(args: &Args) -> (serde_json::Value, bool) {
    let cli = &args.cli;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(cli.timeout_secs);
    let shards = connect(args);
    let control = Control::new();
    let summary = match cli.mode {
        Mode::Verify => {
            let target = verify::Target {
                until_seq: cli.until_seq,
                start,
            };
            let guilds = cli.guilds_expected.unwrap_or(0);
            let (outcome, reports) = verify::run(shards, &control, &target, guilds, deadline).await;
            serde_json::to_value(VerifySummary {
                mode: Mode::Verify,
                ok: outcome == Outcome::TargetReached,
                reason: outcome,
                elapsed_ms: millis_since(start),
                compression: COMPRESSION,
                guild_creates: reports.iter().map(|r| r.guild_creates).sum(),
                shards: args.shard_ids.iter().copied().zip(reports).collect(),
            })
        }
        Mode::Bench => {
            let until_seq = cli
                .until_seq
                .expect("validated: bench mode has --until-seq");
            let cpu_before = procfs::cpu_time().unwrap_or_default();
            let (outcome, counts, cpu_after) =
                bench::run(shards, &control, cli.bench_parse, until_seq, deadline).await;
            serde_json::to_value(BenchSummary::new(
                outcome,
                millis_since(start),
                cli.bench_parse,
                &counts,
                cpu_before,
                cpu_after,
            ))
        }
    };
    let summary = summary.expect("the summary is plain data");
    let ok = summary["ok"] == true;
    (summary, ok)
}

/// One twilight shard per requested id, all behind one identify queue, as a bot runs them.
fn connect(args: &Args) -> Vec<Shard> {
    let cli = &args.cli;
    let queue = InMemoryQueue::new(
        cli.max_concurrency,
        IDENTIFY_BUDGET,
        twilight_gateway::queue::LIMIT_PERIOD,
        IDENTIFY_BUDGET,
    );
    let intents = Intents::from_bits_retain(cli.intents);
    args.shard_ids
        .iter()
        .map(|&id| {
            let config = ConfigBuilder::new(cli.token.clone(), intents)
                .proxy_url(cli.url.clone())
                .queue(queue.clone())
                .build();
            Shard::with_config(ShardId::new(id, cli.total_shards), config)
        })
        .collect()
}

/// Verify mode's JSON summary.
#[derive(Serialize)]
struct VerifySummary {
    mode: Mode,
    /// Whether the target was reached.
    ok: bool,
    reason: Outcome,
    elapsed_ms: u64,
    compression: &'static str,
    /// GUILD_CREATE dispatches over all shards.
    guild_creates: u64,
    /// Reports by shard id.
    shards: BTreeMap<u32, verify::ShardReport>,
}

/// Bench mode's JSON summary.
#[derive(Serialize)]
struct BenchSummary {
    mode: Mode,
    ok: bool,
    reason: Outcome,
    elapsed_ms: u64,
    compression: &'static str,
    parse: BenchParse,
    /// Events (`full`) or messages (`raw`) over all shards, any opcode.
    events: u64,
    errors: u64,
    /// From the first event to the last one, over all shards.
    active_ms: f64,
    /// `events` / `active_ms`.
    events_per_sec: Option<f64>,
    /// Process CPU time (all threads) from start to stop, before the final close.
    cpu_secs: f64,
    cpu_user_secs: f64,
    cpu_sys_secs: f64,
    cpu_us_per_event: Option<f64>,
    peak_rss_kib: Option<u64>,
}

impl BenchSummary {
    fn new(
        outcome: Outcome,
        elapsed_ms: u64,
        parse: BenchParse,
        counts: &[bench::Counts],
        before: procfs::CpuTime,
        after: procfs::CpuTime,
    ) -> Self {
        let events: u64 = counts.iter().map(|c| c.events).sum();
        let first = counts.iter().filter_map(|c| c.first).min();
        let last = counts.iter().filter_map(|c| c.last).max();
        let active = first.zip(last).map_or(Duration::ZERO, |(f, l)| l - f);
        let user = after.user_secs - before.user_secs;
        let sys = after.sys_secs - before.sys_secs;
        // Event counts stay far below 2^52: the conversion is exact.
        #[allow(clippy::cast_precision_loss)]
        let events_f = events as f64;
        Self {
            mode: Mode::Bench,
            ok: outcome == Outcome::TargetReached,
            reason: outcome,
            elapsed_ms,
            compression: COMPRESSION,
            parse,
            events,
            errors: counts.iter().map(|c| c.errors).sum(),
            active_ms: active.as_secs_f64() * 1e3,
            events_per_sec: (!active.is_zero()).then(|| events_f / active.as_secs_f64()),
            cpu_secs: user + sys,
            cpu_user_secs: user,
            cpu_sys_secs: sys,
            cpu_us_per_event: (events > 0).then(|| (user + sys) * 1e6 / events_f),
            peak_rss_kib: procfs::peak_rss_kib(),
        }
    }
}
