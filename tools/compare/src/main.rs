//! `compare`: shardgate against a minimal twilight-gateway client, on the same mock stream, one
//! after the other in one invocation, and a markdown table of the medians on stdout.
//!
//! For each rate, each compression mode and each repetition, every client runs once (A B C A B
//! C …, so that the machine's noise spreads over all of them) against a FRESH in-process mock
//! gateway with the same seed, shards, guilds, event mix, rate and events per shard, over ws://
//! on loopback:
//!
//! - shardgate (`target/release/shardgate run`, one run per `--cores` value) forwarding every
//!   event to an in-process fake bot; measured from outside, see `shardgate.rs`;
//! - twilight-gateway 0.18 (`tools/twilight-probe --mode bench`, one binary per compression
//!   mode because twilight picks it by cargo feature) receiving, decompressing and classifying
//!   every event, forwarding nothing; it measures itself, see `twilight.rs`.
//!
//! Both figures come from the client process's own `/proc/<pid>/stat` (utime + stime, every
//! thread) and `VmHWM`: the mock and the bot run in this driver process and are not counted
//! (their CPU is reported apart). Both windows start at the client's first connection, its
//! process start-up left out (shardgate's is reported on its own line). Every run is checked
//! (no ledger violation, one session per shard, shardgate's bot got every expected seq in
//! order and nothing the mock did not send, twilight counted every event up to its stop); a
//! failed run is listed and left out of the medians. Exit status: 0 when every
//! run passed, 1 when one failed, 2 on a usage error.
//!
//! Progress goes to stderr; stdout holds only the markdown, which opens with the command line
//! and the date, so that a table pasted elsewhere says how it was made.

mod child;
mod procfs;
mod report;
mod shardgate;
mod twilight;
mod world;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use mock_gateway::events::EventMix;
use serde::Serialize;

use crate::report::{Outcome, RunResult};
use crate::shardgate::Shardgate;
use crate::twilight::Twilight;
use crate::world::World;

/// How often the driver checks on a running client.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Compare shardgate (forwarding every event to a fake bot) with twilight-gateway 0.18
/// (receive, decompress, classify; no forwarding) on the same mock gateway stream, and print
/// events/s, CPU per event and peak RSS as a markdown table (medians of --repeat runs).
///
/// Run from the repository root after building the binaries; `tools/compare/run.sh` builds
/// everything and runs the full comparison.
#[derive(Debug, Parser)]
#[command(name = "compare", version, about, long_about)]
struct Cli {
    /// Compression modes, in order. twilight has no payload mode: there shardgate runs alone.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "zstd-stream,zlib-stream,none,payload"
    )]
    modes: Vec<Mode>,

    /// Shards of the bot; every client runs all of them in one process.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    shards: u32,

    /// Dispatches per second per shard, one set of runs per rate, in order; 0 = as fast as the
    /// client reads (the firehose, printed "as read"). `--rate N` is the same flag (an alias,
    /// kept for the commands in docs/benchmarks.md): one rate, a one-element list.
    ///
    /// A full table, `--rates 500,2000,4000,0` with the other defaults (4 modes, shardgate with
    /// 2 and 1 cores, twilight raw and full, 3 repeats: 168 runs), takes about 45 minutes on
    /// 2 cores: 42 runs per rate, of 20 s at 500 and 2,000/s and 12.5 s at 4,000/s (the 50,000
    /// events per shard come first), 0.5–9 s as read, and well under a second of start and
    /// stop each. `--modes zstd-stream,zlib-stream,none --twilight-parse raw` (108 runs) takes
    /// about 25. The driver prints its own estimate when it starts.
    #[arg(
        long,
        visible_alias = "rate",
        value_delimiter = ',',
        default_value = "0",
        value_parser = parse_rate
    )]
    rates: Vec<f64>,

    /// Steady-stream dispatches per shard after READY and the GUILD_CREATEs (large enough
    /// that connecting and identifying are a rounding error). At a fixed rate, at most
    /// rate × `--seconds-per-run` of them.
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(1..))]
    events_per_shard: u64,

    /// At a fixed rate, a run streams for at most this many seconds: each shard gets
    /// min(`--events-per-shard`, rate × this) steady dispatches (at 500/s: 10,000 in 20 s,
    /// where 50,000 would take 100 s). Ignored as read, where `--events-per-shard` alone
    /// bounds a run.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    seconds_per_run: u64,

    /// Seed of the mock's stream: the same for every run, so every client sees the same events.
    #[arg(long, default_value_t = 42)]
    seed: u64,

    /// Guilds of the bot (each shard gets one GUILD_CREATE per guild it owns).
    #[arg(long, default_value_t = 16)]
    guilds: usize,

    /// The mock's event mix (`name=weight,…`, see `mock-gateway --help`). Default: its default.
    #[arg(long, value_parser = EventMix::parse)]
    mix: Option<EventMix>,

    /// Runs of each client per rate and mode; the tables show medians.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    repeat: u64,

    /// shardgate `--cores` values, one run of each per repetition (the summary compares the
    /// largest with twilight; the cores table compares it with 1).
    #[arg(long, value_delimiter = ',', default_value = "2,1")]
    cores: Vec<u32>,

    /// twilight variants: `raw` = receive, decompress and the shard's own op/seq/t
    /// classification (`Stream::next`); `full` = `next_event(EventTypeFlags::all())`, which
    /// also deserializes every event into twilight_model types. The summary compares shardgate
    /// with `raw` (the cheaper) when it ran; `full` is in the main table.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "raw,full")]
    twilight_parse: Vec<Parse>,

    /// Run shardgate alone (no twilight-probe binaries needed).
    #[arg(long)]
    shardgate_only: bool,

    /// tokio worker threads of the twilight probe. Default: a current-thread runtime (one core).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    twilight_threads: Option<u16>,

    /// The shardgate binary (release build).
    #[arg(long, default_value = "target/release/shardgate")]
    shardgate: PathBuf,

    /// twilight-probe built with `--features zstd` (release).
    #[arg(long, default_value = "target/twilight-zstd/release/twilight-probe")]
    twilight_zstd: PathBuf,

    /// twilight-probe built with `--features zlib` (release).
    #[arg(long, default_value = "target/twilight-zlib/release/twilight-probe")]
    twilight_zlib: PathBuf,

    /// twilight-probe built without compression features (release).
    #[arg(long, default_value = "target/twilight-none/release/twilight-probe")]
    twilight_none: PathBuf,

    /// An extra flag for `shardgate run`, repeatable (`--shardgate-arg=--batch-linger-ms=1`).
    #[arg(long, allow_hyphen_values = true)]
    shardgate_arg: Vec<String>,

    /// The fake bot answers each batch this many milliseconds late (a bot framework's own
    /// handling time); 0: at once.
    #[arg(long, default_value_t = 0)]
    bot_slow_ms: u64,

    /// Runtime threads of the in-process mock gateway.
    #[arg(long, default_value_t = 1)]
    mock_threads: usize,

    /// Give up on one run after this many seconds (it is reported as failed); more than
    /// `--seconds-per-run`.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,

    /// Also write every run's result (failed ones too) as JSON to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
}

/// Transport compression of the gateway connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    ZstdStream,
    ZlibStream,
    /// Per-payload zlib (identify `compress: true`): shardgate only.
    Payload,
    None,
}

impl Mode {
    /// The name both shardgate's `--compression` and the probe's summary use.
    pub fn name(self) -> &'static str {
        match self {
            Mode::ZstdStream => "zstd-stream",
            Mode::ZlibStream => "zlib-stream",
            Mode::Payload => "payload",
            Mode::None => "none",
        }
    }
}

/// How much of twilight's receive path runs per message (the probe's `--bench-parse`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Parse {
    Raw,
    Full,
}

impl Parse {
    pub fn name(self) -> &'static str {
        match self {
            Parse::Raw => "raw",
            Parse::Full => "full",
        }
    }
}

/// One measured client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Client {
    Shardgate { cores: u32 },
    Twilight { parse: Parse, threads: Option<u16> },
}

impl Client {
    pub fn label(self) -> String {
        match self {
            Client::Shardgate { .. } => "shardgate".to_owned(),
            Client::Twilight { parse, .. } => format!("twilight-gateway 0.18 ({})", parse.name()),
        }
    }

    /// Cores the client may use: shardgate's `--cores`, the probe's runtime threads.
    pub fn cores(self) -> u32 {
        match self {
            Client::Shardgate { cores } => cores,
            Client::Twilight { threads, .. } => threads.map_or(1, u32::from),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("compare: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// One run of the schedule.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Planned {
    /// Dispatches per second per shard; 0 = as fast as the client reads.
    rate: f64,
    mode: Mode,
    /// 1-based.
    repetition: usize,
    client: Client,
}

/// Runs the whole schedule and prints the tables; `Ok(false)` when a run failed.
fn run(cli: &Cli) -> anyhow::Result<bool> {
    check_usage(cli)?;
    let started = SystemTime::now();
    let timeout = Duration::from_secs(cli.timeout_secs);
    let schedule = schedule(cli);
    eprintln!("compare: {}", time_estimate(cli, &schedule));
    let scratch_root =
        std::env::temp_dir().join(format!("shardgate-compare-{}", std::process::id()));
    let mut results = Vec::with_capacity(schedule.len());
    for (index, planned) in schedule.iter().enumerate() {
        let Planned {
            rate,
            mode,
            repetition,
            client,
        } = *planned;
        let world = world(cli, rate);
        let scratch = scratch_root.join(index.to_string());
        std::fs::create_dir_all(&scratch)
            .with_context(|| format!("creating {}", scratch.display()))?;
        let measured = match client {
            Client::Shardgate { cores } => Shardgate {
                binary: &cli.shardgate,
                mode,
                cores,
                extra_args: &cli.shardgate_arg,
                bot_slow_ms: cli.bot_slow_ms,
                timeout,
            }
            .run(&world, &scratch),
            Client::Twilight { parse, threads } => Twilight {
                binary: twilight_binary(cli, mode).context("twilight has no payload mode")?,
                mode,
                parse,
                threads,
                timeout,
            }
            .run(&world, &scratch),
        };
        // Best effort: a leftover scratch dir in the temp dir harms nothing.
        let _ = std::fs::remove_dir_all(&scratch);
        let run_name = format!(
            "[{}/{}] {} {} {} (cores={}) run {repetition}",
            index + 1,
            schedule.len(),
            report::rate_cell(rate),
            mode.name(),
            client.label(),
            client.cores(),
        );
        let outcome = match measured {
            Ok(sample) => {
                eprintln!(
                    "{run_name}: {} events, {:.0} events/s, {:.2} µs CPU/event, peak RSS \
                     {:.1} MiB, start-up {:.0} ms CPU, {} redundant updates forwarded",
                    sample.events,
                    sample.events_per_sec(),
                    sample.cpu_us_per_event(),
                    sample.peak_rss_kib as f64 / 1024.0,
                    sample.startup_cpu_secs * 1e3,
                    sample.redundant_forwarded,
                );
                Outcome::Ok(sample)
            }
            Err(error) => {
                eprintln!("{run_name}: FAILED: {error:#}");
                Outcome::Failed {
                    reason: format!("{error:#}"),
                }
            }
        };
        results.push(RunResult {
            rate,
            mode,
            client,
            repetition,
            outcome,
        });
    }
    let _ = std::fs::remove_dir_all(&scratch_root);

    if let Some(path) = &cli.json_out {
        let json = serde_json::to_string_pretty(&results).context("serializing the results")?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    print!("{}", markdown(cli, &results, started));
    Ok(results.iter().all(|r| matches!(r.outcome, Outcome::Ok(_))))
}

/// The runs in the order they run: per rate, per mode, per repetition, every client, so that
/// the clients of one (rate, mode) alternate and the machine's noise hits them alike.
fn schedule(cli: &Cli) -> Vec<Planned> {
    let clients_of = |mode: Mode| {
        let mut clients: Vec<Client> = cli
            .cores
            .iter()
            .map(|&cores| Client::Shardgate { cores })
            .collect();
        if mode != Mode::Payload && !cli.shardgate_only {
            clients.extend(cli.twilight_parse.iter().map(|&parse| Client::Twilight {
                parse,
                threads: cli.twilight_threads,
            }));
        }
        clients
    };
    let mut runs = Vec::new();
    for &rate in &cli.rates {
        for &mode in &cli.modes {
            let clients = clients_of(mode);
            // `repeat` was checked to be at least 1 and a run count fits in usize.
            for repetition in 1..=cli.repeat as usize {
                runs.extend(clients.iter().map(|&client| Planned {
                    rate,
                    mode,
                    repetition,
                    client,
                }));
            }
        }
    }
    runs
}

/// The mock's stream at `rate`: the same for every client and repetition.
fn world(cli: &Cli, rate: f64) -> World {
    World {
        shards: cli.shards,
        seed: cli.seed,
        guilds: cli.guilds,
        rate,
        events_per_shard: events_per_shard(cli, rate),
        mix: cli.mix.clone(),
        mock_threads: cli.mock_threads,
    }
}

/// Steady dispatches per shard at `rate`: `--events-per-shard`, and at a fixed rate no more
/// than `--seconds-per-run` of them (at least one: the mock reads 0 as "never stop").
fn events_per_shard(cli: &Cli, rate: f64) -> u64 {
    if rate == 0.0 {
        return cli.events_per_shard;
    }
    let in_time = (rate * cli.seconds_per_run as f64).ceil();
    // Finite and non-negative (`parse_rate`); a float above u64::MAX saturates.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let in_time = in_time as u64;
    cli.events_per_shard.min(in_time).max(1)
}

/// How long the schedule streams at fixed rates (the firehose's length depends on the machine).
fn time_estimate(cli: &Cli, schedule: &[Planned]) -> String {
    let fixed: Vec<&Planned> = schedule.iter().filter(|run| run.rate > 0.0).collect();
    let streaming_secs: f64 = fixed
        .iter()
        .map(|run| events_per_shard(cli, run.rate) as f64 / run.rate)
        .sum();
    let streaming = if streaming_secs < 120.0 {
        format!("{streaming_secs:.0} s")
    } else {
        format!("{:.0} minutes", streaming_secs / 60.0)
    };
    format!(
        "{} runs; the {} at a fixed rate stream for {streaming} in all, plus under a second of \
         start and stop per run and the runs as read",
        schedule.len(),
        fixed.len(),
    )
}

/// A rate: a finite number of dispatches per second, 0 or more.
fn parse_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .trim()
        .parse()
        .map_err(|error| format!("{text:?} is not a number: {error}"))?;
    if rate.is_finite() && rate >= 0.0 {
        Ok(rate)
    } else {
        Err(format!(
            "{text:?}: a rate is 0 (as fast as read) or a positive number of dispatches/s"
        ))
    }
}

fn twilight_binary(cli: &Cli, mode: Mode) -> Option<&Path> {
    match mode {
        Mode::ZstdStream => Some(&cli.twilight_zstd),
        Mode::ZlibStream => Some(&cli.twilight_zlib),
        Mode::None => Some(&cli.twilight_none),
        Mode::Payload => None,
    }
}

/// What clap cannot check, and every binary the schedule needs exists, before the first run.
fn check_usage(cli: &Cli) -> anyhow::Result<()> {
    anyhow::ensure!(!cli.cores.is_empty(), "--cores needs at least one value");
    anyhow::ensure!(!cli.rates.is_empty(), "--rates needs at least one value");
    anyhow::ensure!(
        cli.timeout_secs > cli.seconds_per_run,
        "--timeout-secs ({}) must exceed --seconds-per-run ({})",
        cli.timeout_secs,
        cli.seconds_per_run
    );
    let mut needed = vec![cli.shardgate.as_path()];
    if !cli.shardgate_only {
        needed.extend(
            cli.modes
                .iter()
                .filter_map(|&mode| twilight_binary(cli, mode)),
        );
    }
    for path in needed {
        anyhow::ensure!(
            path.is_file(),
            "{} not found: build it first (tools/compare/run.sh does), or pass its path",
            path.display()
        );
    }
    Ok(())
}

/// The whole stdout: how it was made, the parameters, the summary, the results, the ratios,
/// the cores, the failures.
fn markdown(cli: &Cli, results: &[RunResult], started: SystemTime) -> String {
    let rows = report::summarize(results);
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let arguments: Vec<String> = std::env::args_os()
        .map(|argument| argument.to_string_lossy().into_owned())
        .collect();
    let started_unix_secs = started
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let events: Vec<String> = cli
        .rates
        .iter()
        .map(|&rate| {
            let events = events_per_shard(cli, rate);
            if rate == 0.0 {
                format!("{} as read", report::thousands(events as f64))
            } else {
                format!(
                    "{} at {} ({:.1} s)",
                    report::thousands(events as f64),
                    report::rate_cell(rate),
                    events as f64 / rate
                )
            }
        })
        .collect();
    let mut out = format!(
        "Made with `{}`, {}.\n\n\
         {} shards (seed {}, {} guilds, {} mix), ws:// on loopback; steady dispatches per \
         shard: {}; medians of {} per client, clients alternating; {cpus} CPUs ({}).\n\n",
        report::command_line(&arguments),
        report::utc_minute(started_unix_secs),
        cli.shards,
        cli.seed,
        cli.guilds,
        if cli.mix.is_some() {
            "custom"
        } else {
            "default"
        },
        events.join(", "),
        match cli.repeat {
            1 => "1 run".to_owned(),
            runs => format!("{runs} runs"),
        },
        cpu_model().unwrap_or_else(|| "unknown CPU".to_owned()),
    );
    let summary = report::summary_table(&rows);
    if !summary.is_empty() {
        out.push_str(
            "CPU per event and peak RSS, medians; shardgate with the most cores against the \
             cheapest twilight variant that ran (ratio: shardgate ÷ twilight, below 1: \
             shardgate uses less):\n\n",
        );
        out.push_str(&summary);
        let _ = write!(out, "\n```text\n{}```\n", report::summary_lines(&rows));
    }
    out.push_str("\nEvery client:\n\n");
    out.push_str(&report::results_table(&rows, cli.shards));
    if let Some((low, high)) = report::shardgate_startup_ms(&rows) {
        let _ = writeln!(
            out,
            "\nshardgate's CPU before its first connection (process start, settings, REST, \
             core setup), left out above as twilight's start-up is: {low:.0}–{high:.0} ms \
             (medians per row)."
        );
    }
    let ratios = report::ratios_table(&rows);
    if !ratios.is_empty() {
        out.push_str("\nshardgate ÷ twilight, ratios of the medians (below 1: shardgate uses less or is slower):\n\n");
        out.push_str(&ratios);
    }
    let cores = report::cores_table(&rows);
    if !cores.is_empty() {
        out.push_str("\nshardgate by cores:\n\n");
        out.push_str(&cores);
    }
    let failures = report::failures_table(results);
    if !failures.is_empty() {
        out.push_str("\nFailed runs (left out of the medians):\n\n");
        out.push_str(&failures);
    }
    out
}

/// The CPU model from `/proc/cpuinfo`.
fn cpu_model() -> Option<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .and_then(|rest| rest.split_once(':'))
        .map(|(_, model)| model.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn schedule_alternates_clients_and_skips_twilight_for_payload() {
        let cli = Cli::parse_from([
            "compare",
            "--rates",
            "500,0",
            "--modes",
            "none,payload",
            "--repeat",
            "2",
            "--twilight-parse",
            "raw",
        ]);
        let names: Vec<String> = schedule(&cli)
            .into_iter()
            .map(|run| {
                format!(
                    "{} {} {} {} {}",
                    report::rate_cell(run.rate),
                    run.mode.name(),
                    run.repetition,
                    run.client.label(),
                    run.client.cores()
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                "500/s none 1 shardgate 2",
                "500/s none 1 shardgate 1",
                "500/s none 1 twilight-gateway 0.18 (raw) 1",
                "500/s none 2 shardgate 2",
                "500/s none 2 shardgate 1",
                "500/s none 2 twilight-gateway 0.18 (raw) 1",
                "500/s payload 1 shardgate 2",
                "500/s payload 1 shardgate 1",
                "500/s payload 2 shardgate 2",
                "500/s payload 2 shardgate 1",
                "as read none 1 shardgate 2",
                "as read none 1 shardgate 1",
                "as read none 1 twilight-gateway 0.18 (raw) 1",
                "as read none 2 shardgate 2",
                "as read none 2 shardgate 1",
                "as read none 2 twilight-gateway 0.18 (raw) 1",
                "as read payload 1 shardgate 2",
                "as read payload 1 shardgate 1",
                "as read payload 2 shardgate 2",
                "as read payload 2 shardgate 1",
            ]
        );
    }

    #[test]
    fn rate_is_a_one_rate_list() {
        let cli = Cli::parse_from(["compare", "--rate", "4000"]);
        assert_eq!(cli.rates, [4000.0]);
        let cli = Cli::parse_from(["compare"]);
        assert_eq!(cli.rates, [0.0]);
        let cli = Cli::parse_from(["compare", "--rates", "500,2000", "--rates", "0"]);
        assert_eq!(cli.rates, [500.0, 2000.0, 0.0]);
        for bad in ["-1", "inf", "NaN", "fast"] {
            assert!(
                Cli::try_parse_from(["compare", "--rates", bad]).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_fixed_rate_run_is_bounded_by_time() {
        let cli = Cli::parse_from(["compare", "--seconds-per-run", "20"]);
        // As read: --events-per-shard (50,000) alone.
        assert_eq!(events_per_shard(&cli, 0.0), 50_000);
        // 500/s × 20 s, where 50,000 would take 100 s.
        assert_eq!(events_per_shard(&cli, 500.0), 10_000);
        // 4,000/s × 20 s = 80,000: the 50,000 come first.
        assert_eq!(events_per_shard(&cli, 4000.0), 50_000);
        // Never 0, which the mock reads as "never stop".
        assert_eq!(events_per_shard(&cli, 0.01), 1);
        let schedule = schedule(&Cli::parse_from([
            "compare",
            "--rates",
            "500,4000,0",
            "--modes",
            "none",
            "--repeat",
            "1",
            "--twilight-parse",
            "raw",
        ]));
        // 3 runs at 500/s (20 s each), 3 at 4,000/s (12.5 s each).
        assert_eq!(
            time_estimate(&cli, &schedule),
            "9 runs; the 6 at a fixed rate stream for 98 s in all, plus under a second of start \
             and stop per run and the runs as read"
        );
        let twice = [schedule.as_slice(), schedule.as_slice()].concat();
        assert!(
            time_estimate(&cli, &twice).contains("stream for 3 minutes in all"),
            "{}",
            time_estimate(&cli, &twice)
        );
    }

    #[test]
    fn timeout_must_exceed_a_run() {
        let cli = Cli::parse_from([
            "compare",
            "--seconds-per-run",
            "300",
            "--shardgate",
            "/nonexistent",
        ]);
        let error = check_usage(&cli).expect_err("300 s runs with a 300 s timeout");
        assert_eq!(
            error.to_string(),
            "--timeout-secs (300) must exceed --seconds-per-run (300)"
        );
    }
}
