//! `shardgate demo`: the whole pipeline on this machine without a token. The mock gateway (a
//! simulated Discord over TLS, its CA trusted through `--ca-file`) and the fake bot run in this
//! process on their own threads; the engine runs against them exactly as `shardgate run` would,
//! through the same settings, sockets, TLS and HTTP.
//!
//! It prints startup progress, one line per second and a summary, and checks what arrived: the
//! bot's per-shard sequences against the mock's ledger. The exit status says whether anything was
//! lost, duplicated or out of order, or the mock saw a protocol violation.
//!
//! CPU figures come from /proc per thread: the engine's cores and sink (`shardgate-*` threads)
//! apart from the mock's and the bot's, so the per-event cost is the engine's alone.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use clap::Parser;
use fake_bot::{BotConfig, FakeBot, Report, Secret};
use mock_gateway::{Ledger, MockConfig, MockGateway};

use crate::config::{DemoArgs, Environment, RunArgs, Settings};
use crate::resharder::{ReshardBoard, ReshardRequest};
use crate::runtime::{Engine, Snapshot};
use crate::sink::latency_quantile_us;
use mock_gateway::delivery::ContentCheck;

/// The demo bot's shared secret (it only ever travels over loopback).
const DEMO_FORWARD_SECRET: &str = "shardgate-demo-secret";
/// Guilds per simulated shard.
const GUILDS_PER_SHARD: usize = 4;
/// Identify buckets of the simulated Discord: a large bot's `max_concurrency`.
const DEMO_MAX_CONCURRENCY: u32 = 16;
/// With `--reshard`: the simulated Discord's identify window (Discord's is 5 s).
const DEMO_RESHARD_IDENTIFY_WINDOW_MS: u64 = 1000;
/// With `--reshard`: how long after every shard is ready the reshard starts, and how long the
/// demo goes on after it finished.
const DEMO_RESHARD_AFTER: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot create the demo's directory {path}: {source}")]
    Directory {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the simulated Discord: {0}")]
    Mock(String),
    #[error("cannot start the demo bot: {0}")]
    Bot(String),
    #[error("demo settings: {0}")]
    Settings(String),
    #[error(transparent)]
    Engine(#[from] crate::runtime::RunError),
}

/// What the demo found, for the exit status.
#[derive(Debug)]
pub struct DemoOutcome {
    /// Nothing lost, duplicated or out of order, no protocol violation, no shard fatal.
    pub clean: bool,
}

/// Runs the demo for `args.duration` seconds (or until `interrupt` is set), printing to stdout.
pub fn run(args: &DemoArgs, interrupt: Arc<AtomicBool>) -> Result<DemoOutcome, DemoError> {
    let dir = std::env::temp_dir().join(format!("shardgate-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|source| DemoError::Directory {
        path: dir.clone(),
        source,
    })?;
    let result = run_in(args, interrupt, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_in(
    args: &DemoArgs,
    interrupt: Arc<AtomicBool>,
    dir: &std::path::Path,
) -> Result<DemoOutcome, DemoError> {
    let ca_file = dir.join("mock-ca.pem");
    let mock = MockGateway::spawn(
        MockConfig {
            tls: true,
            ca_out: Some(ca_file.clone()),
            guilds: args.shards as usize * GUILDS_PER_SHARD,
            recommended_shards: Some(args.shards),
            max_concurrency: DEMO_MAX_CONCURRENCY,
            rate: f64::from(args.rate),
            record_events: args.reshard,
            identify_window_ms: if args.reshard {
                DEMO_RESHARD_IDENTIFY_WINDOW_MS
            } else {
                MockConfig::default().identify_window_ms
            },
            ..MockConfig::default()
        },
        1,
    )
    .map_err(|e| DemoError::Mock(e.to_string()))?;
    let bot = FakeBot::spawn(BotConfig {
        secret: Some(Secret::new(DEMO_FORWARD_SECRET)),
        record_content: args.reshard,
        ..BotConfig::ephemeral()
    })
    .map_err(|e| DemoError::Bot(format!("{e:#}")))?;

    let settings = demo_settings(args, &mock, &bot, &ca_file, dir)?;
    let engine = Engine::start(settings, Arc::clone(&interrupt))?;
    let plan = engine.plan();
    println!(
        "shardgate demo: {} shards on {} core(s), {}, {} events/s per shard, for {} s \
         (simulated Discord over TLS, seed {}; Ctrl-C stops early)",
        plan.total_shards,
        plan.cores,
        args.compression,
        args.rate,
        args.duration,
        mock.seed(),
    );
    if let Some(addr) = engine.admin_addr() {
        println!("admin API: http://{addr}/shards and http://{addr}/metrics while it runs");
    }

    let started = Instant::now();
    let mut deadline = started + Duration::from_secs(args.duration);
    let board = engine.reshard_board();
    let mut reshard = args.reshard.then(DemoReshard::default);
    let mut last = engine.snapshot();
    let mut last_at = started;
    let mut all_ready_after: Option<Duration> = None;
    // The engine's CPU and deliveries when every shard was first seen ready: what it spends from
    // there on is the steady state at `--rate`, apart from startup's TLS, identifies and backfill.
    let mut steady_from: Option<SteadyMark> = None;
    let mut next_line = started + Duration::from_secs(1);
    let mut finished_early = false;
    while Instant::now() < deadline && !interrupt.load(std::sync::atomic::Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(20));
        if engine.poll() {
            finished_early = true;
            break;
        }
        if Instant::now() < next_line {
            continue;
        }
        next_line += Duration::from_secs(1);
        let now = engine.snapshot();
        let elapsed = last_at.elapsed();
        last_at = Instant::now();
        if all_ready_after.is_none() && now.shards_ready >= now.shards_owned {
            all_ready_after = Some(started.elapsed());
            steady_from = crate::procfs::threads_cpu("shardgate-").map(|cpu| SteadyMark {
                at: Instant::now(),
                engine_cpu: cpu,
                delivered: now.records_delivered,
            });
        }
        let mut line = second_line(started.elapsed(), &last, &now, elapsed);
        if let Some(reshard) = reshard.as_mut() {
            let target = plan.total_shards.get() * 2;
            if let Some(text) = reshard.step(&board, all_ready_after, started, target) {
                line.push_str(&text);
            }
            // Run on until the reshard finished (or failed), and a little after.
            if let Some(ended) = reshard.ended_at {
                deadline = deadline.max(ended + DEMO_RESHARD_AFTER);
            } else if Instant::now() + Duration::from_secs(1) >= deadline
                && started.elapsed() < Duration::from_secs(args.duration + 300)
            {
                deadline += Duration::from_secs(1);
            }
        }
        println!("{line}");
        let _ = std::io::stdout().flush();
        last = now;
    }

    // Measure before the stop: exited threads no longer show in /proc.
    let measured_for = started.elapsed();
    let measured_at = Instant::now();
    let engine_cpu = crate::procfs::threads_cpu("shardgate-");
    let mock_cpu = crate::procfs::threads_cpu("mock-gateway");
    let bot_cpu = crate::procfs::threads_cpu("fake-bot");
    let before_stop = engine.snapshot();
    let resident = crate::procfs::resident_bytes();

    let summary = engine.wait();
    let after = {
        // The bot may still be answering the last batch when the engine returns.
        std::thread::sleep(Duration::from_millis(100));
        (mock.ledger(), bot.report())
    };
    let (ledger, report) = after;
    // Across a reshard's two sets, sequences per shard say nothing: judge by content.
    let content = reshard
        .is_some()
        .then(|| ContentCheck::up_to_the_last_received(&mock.events(), &bot.content()));
    let check = match &content {
        Some(content) => DeliveryCheck {
            missing: content.missing.len() as u64,
            duplicated: content.duplicated.len() as u64,
            out_of_order: content.out_of_order.len() as u64,
        },
        None => check_delivery(&ledger, &report),
    };

    let mut text = String::new();
    let _ = writeln!(
        text,
        "\nsummary after {:.1} s{}",
        measured_for.as_secs_f64(),
        if finished_early {
            " (every shard stopped)"
        } else {
            ""
        }
    );
    let per_second = |count: u64| count as f64 / measured_for.as_secs_f64().max(0.001);
    let _ = writeln!(
        text,
        "  shards ready         {}/{}{}",
        before_stop.shards_ready,
        before_stop.shards_owned,
        all_ready_after.map_or_else(String::new, |at| format!(
            " (all within {:.1} s)",
            at.as_secs_f64()
        ))
    );
    let _ = writeln!(
        text,
        "  events in            {} ({:.0}/s)",
        before_stop.dispatches_in,
        per_second(before_stop.dispatches_in)
    );
    let _ = writeln!(
        text,
        "  dropped redundant    {} (MESSAGE_UPDATEs whose content did not change)",
        before_stop.dropped_redundant_update
    );
    let _ = writeln!(
        text,
        "  delivered to the bot {} records in {} batches{}",
        summary.records_delivered,
        before_stop.batches_delivered,
        latency_text(&before_stop.batch_latency_buckets)
    );
    let _ = writeln!(
        text,
        "  bot's check          {} dispatches and {} notices received, {} missing, {} \
         duplicated, {} out of order{}",
        report.totals.records,
        report.totals.notices.values().sum::<u64>(),
        check.missing,
        check.duplicated,
        check.out_of_order,
        if content.is_some() {
            " (by content, every event of the simulated world; out of order per guild)"
        } else {
            ""
        }
    );
    if let Some(reshard) = &reshard {
        let _ = writeln!(text, "  reshard              {}", reshard.summary(&board));
    }
    let _ = writeln!(
        text,
        "  Discord's check      {} dispatches sent, {} protocol violations, {} identifies, {} \
         resumes",
        ledger.dispatches_total,
        ledger.violations.len(),
        ledger.identifies_total,
        ledger.resumes_total,
    );
    if let Some(engine_cpu) = engine_cpu {
        let _ = write!(
            text,
            "{}",
            cpu_text(
                engine_cpu,
                steady_from.as_ref(),
                measured_at,
                before_stop.records_delivered
            )
        );
        let _ = writeln!(
            text,
            "  others' CPU          simulated Discord {:.2} s, bot {:.2} s (they share this \
             machine's CPUs with the engine)",
            mock_cpu.unwrap_or_default().as_secs_f64(),
            bot_cpu.unwrap_or_default().as_secs_f64()
        );
    }
    if let Some(resident) = resident {
        let _ = writeln!(
            text,
            "  memory               {:.1} MiB resident (engine, simulated Discord and bot)",
            resident as f64 / (1024.0 * 1024.0)
        );
    }
    let reshard_clean = reshard.as_ref().is_none_or(|r| r.finished);
    let clean = check.missing == 0
        && check.duplicated == 0
        && check.out_of_order == 0
        && reshard_clean
        && ledger.violations.is_empty()
        && summary.shards_fatal == 0
        && summary.records_dropped_shutdown == 0;
    let _ = writeln!(
        text,
        "  result               {}",
        if clean {
            "every event arrived once and in order"
        } else {
            "PROBLEM: see the counts above"
        }
    );
    print!("{text}");
    let _ = std::io::stdout().flush();
    Ok(DemoOutcome { clean })
}

/// The settings `shardgate run` would get from these flags.
fn demo_settings(
    args: &DemoArgs,
    mock: &MockGateway,
    bot: &FakeBot,
    ca_file: &std::path::Path,
    dir: &std::path::Path,
) -> Result<Settings, DemoError> {
    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        run: RunArgs,
    }
    let mut flags: Vec<String> = vec![
        "shardgate-demo".into(),
        "--token".into(),
        mock.token().into(),
        "--api-base".into(),
        mock.api_base(),
        "--forward-url".into(),
        bot.url(),
        "--forward-secret".into(),
        DEMO_FORWARD_SECRET.into(),
        "--ca-file".into(),
        ca_file.display().to_string(),
        "--data-dir".into(),
        dir.display().to_string(),
        "--compression".into(),
        args.compression.to_string(),
        "--total-shards".into(),
        args.shards.to_string(),
        // Any free port: a shardgate already running on 7878 must not stop the demo.
        "--admin-addr".into(),
        "127.0.0.1:0".into(),
    ];
    if let Some(cores) = args.cores {
        flags.extend(["--cores".into(), cores.to_string()]);
    }
    if args.reshard {
        // The simulated Discord's shorter identify window, and a manual reshard only.
        flags.extend([
            "--identify-interval-ms".into(),
            DEMO_RESHARD_IDENTIFY_WINDOW_MS.to_string(),
            "--reshard".into(),
            "off".into(),
        ]);
    }
    let parsed = Flags::try_parse_from(&flags).map_err(|e| DemoError::Settings(e.to_string()))?;
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    Settings::load(&parsed.run, &Environment::new(cpus), None)
        .map_err(|e| DemoError::Settings(e.to_string()))
}

/// Where the steady state began: every shard ready.
struct SteadyMark {
    at: Instant,
    engine_cpu: Duration,
    delivered: u64,
}

/// The engine's CPU: in all, then over the steady state as a share of one CPU and per forwarded
/// event, with what the per-event figure depends on.
fn cpu_text(
    engine_cpu: Duration,
    steady_from: Option<&SteadyMark>,
    measured_at: Instant,
    delivered: u64,
) -> String {
    let steady = steady_from.and_then(|mark| {
        let window = measured_at.saturating_duration_since(mark.at);
        let events = delivered.saturating_sub(mark.delivered);
        (window >= Duration::from_secs(2) && events > 0).then(|| {
            (
                engine_cpu.saturating_sub(mark.engine_cpu),
                engine_cpu.min(mark.engine_cpu),
                window,
                events,
            )
        })
    });
    let mut text = format!(
        "  engine CPU           {:.2} s in all on its cores and sink",
        engine_cpu.as_secs_f64()
    );
    match steady {
        Some((cpu, startup_cpu, window, events)) => {
            let seconds = window.as_secs_f64();
            let _ = writeln!(
                text,
                "; {:.2} s of it starting (TLS, identify, READY, guild backfill)",
                startup_cpu.as_secs_f64()
            );
            let _ = writeln!(
                text,
                "  steady state         {seconds:.1} s at {:.0} events/s: {:.1} % of one CPU, \
                 {:.1} µs per forwarded event",
                events as f64 / seconds,
                cpu.as_secs_f64() * 100.0 / seconds,
                cpu.as_secs_f64() * 1e6 / events as f64,
            );
            let _ = writeln!(
                text,
                "                       (per event it falls as --rate rises: heartbeats, wake-ups \
                 and batches are shared by more events; on a busy machine wake-ups cost more)"
            );
        }
        None => {
            let _ = writeln!(
                text,
                "\n  steady state         none to measure: the shards were not all ready 2 s \
                 before the end (raise --duration)"
            );
        }
    }
    text
}

/// One line per second: rates over the last interval.
fn second_line(
    since_start: Duration,
    last: &Snapshot,
    now: &Snapshot,
    elapsed: Duration,
) -> String {
    let rate = |now: u64, last: u64| now.saturating_sub(last) as f64 / elapsed.as_secs_f64();
    let latency: Vec<u64> = now
        .batch_latency_buckets
        .iter()
        .zip(
            last.batch_latency_buckets
                .iter()
                .chain(std::iter::repeat(&0)),
        )
        .map(|(now, last)| now.saturating_sub(*last))
        .collect();
    format!(
        "{:>4} s  ready {:>4}/{:<4}  in {:>8.0}/s  forwarded {:>8.0}/s  redundant {:>6.0}/s  \
         batches {:>5.0}/s{}",
        since_start.as_secs(),
        now.shards_ready,
        now.shards_owned,
        rate(now.dispatches_in, last.dispatches_in),
        rate(now.records_delivered, last.records_delivered),
        rate(now.dropped_redundant_update, last.dropped_redundant_update),
        rate(now.batches_delivered, last.batches_delivered),
        latency_text(&latency),
    )
}

/// `, batch latency p50 ≤ 1 ms, p99 ≤ 5 ms` from histogram counts (bucket bounds).
fn latency_text(buckets: &[u64]) -> String {
    let format = |micros: u64| {
        if micros == u64::MAX {
            "> 30 s".to_owned()
        } else if micros < 1000 {
            format!("≤ {micros} µs")
        } else {
            format!("≤ {} ms", micros / 1000)
        }
    };
    match (
        latency_quantile_us(buckets, 0.5),
        latency_quantile_us(buckets, 0.99),
    ) {
        (Some(p50), Some(p99)) => {
            format!(", batch latency p50 {} p99 {}", format(p50), format(p99))
        }
        _ => String::new(),
    }
}

/// The bot's view against Discord's: sequences the bot should have (everything the mock sent
/// in a session up to the highest the bot got, minus the redundant updates the engine drops)
/// but does not.
struct DeliveryCheck {
    missing: u64,
    duplicated: u64,
    out_of_order: u64,
}

fn check_delivery(ledger: &Ledger, report: &Report) -> DeliveryCheck {
    let mut missing = 0;
    for (shard, shard_ledger) in &ledger.shards {
        let Some(shard_report) = report.shards.get(shard) else {
            // Nothing arrived for this shard: everything it was sent counts.
            missing += shard_ledger
                .sessions
                .iter()
                .map(|s| s.dispatches)
                .sum::<u64>();
            continue;
        };
        for session in &shard_ledger.sessions {
            let Some(run) = shard_report
                .runs
                .iter()
                .find(|run| run.session_id.as_deref() == Some(session.session_id.as_str()))
            else {
                missing += session.dispatches;
                continue;
            };
            let redundant: BTreeSet<u64> = session.redundant_update_seqs.iter().copied().collect();
            let received: BTreeSet<u64> = run
                .ranges
                .iter()
                .flat_map(|[start, end]| *start..=*end)
                .collect();
            missing += (session.first_seq..=run.max_seq.min(session.last_seq))
                .filter(|seq| !redundant.contains(seq) && !received.contains(seq))
                .count() as u64;
        }
    }
    DeliveryCheck {
        missing,
        duplicated: report.totals.duplicates,
        out_of_order: report.totals.out_of_order,
    }
}

/// `--reshard`: asks for one once every shard is ready, and follows it.
#[derive(Default)]
struct DemoReshard {
    /// The request, once submitted (this thread drives the engine, which answers it).
    asked: Option<u64>,
    accepted: bool,
    ended_at: Option<Instant>,
    finished: bool,
}

impl DemoReshard {
    /// Called once a second: starts the reshard when it is time, and says where it stands.
    fn step(
        &mut self,
        board: &ReshardBoard,
        all_ready_after: Option<Duration>,
        started: Instant,
        target: u32,
    ) -> Option<String> {
        let Some(id) = self.asked else {
            let ready = all_ready_after?;
            if started.elapsed() < ready + DEMO_RESHARD_AFTER {
                return None;
            }
            self.asked = Some(board.submit(ReshardRequest::Start {
                total_shards: Some(target),
            }));
            return Some(format!("  reshard to {target} asked"));
        };
        if self.ended_at.is_some() {
            return None;
        }
        if !self.accepted {
            match board.answer_to(id) {
                Some((202, _)) => self.accepted = true,
                Some((_, answer)) => {
                    self.ended_at = Some(Instant::now());
                    return Some(format!("  reshard refused: {answer}"));
                }
                None => return Some("  reshard asked".to_owned()),
            }
        }
        let status = board.status();
        let current = &status["current"];
        if current.is_null() {
            self.ended_at = Some(Instant::now());
            self.finished = status["last"]["outcome"] == "finished";
            return Some(format!(
                "  reshard {}",
                status["last"]["outcome"].as_str().unwrap_or("ended")
            ));
        }
        Some(format!(
            "  reshard {} → {} {} ({}/{} new ready)",
            current["from"],
            current["to"],
            current["phase"].as_str().unwrap_or("?"),
            current["new_shards"]["fully_ready"],
            current["to"],
        ))
    }

    fn summary(&self, board: &ReshardBoard) -> String {
        let status = board.status();
        let last = &status["last"];
        if last.is_null() {
            return "did not end".to_owned();
        }
        let merge = &last["merge"];
        format!(
            "{} → {}: {} in {:.1} s; the merge dropped {} duplicates and released {} copies only \
             the new set saw; at most {} events waited for their twin, largest skew {:.1} ms",
            last["from"],
            last["to"],
            last["outcome"].as_str().unwrap_or("?"),
            last["took_s"].as_f64().unwrap_or(0.0),
            merge["duplicates"],
            merge["released_unmatched"],
            merge["peak_keys"],
            merge["max_skew_ms"].as_f64().unwrap_or(0.0),
        )
    }
}
