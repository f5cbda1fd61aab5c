//! `compare`: shardgate against a minimal twilight-gateway client, on the same mock stream, one
//! after the other in one invocation, and a markdown table of the medians on stdout.
//!
//! For each compression mode and each repetition, every client runs once (A B C A B C …, so
//! that the machine's noise spreads over all of them) against a FRESH in-process mock gateway
//! with the same seed, shards, guilds, event mix, rate and events per shard, over ws:// on
//! loopback:
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
//! Progress goes to stderr; stdout holds only the markdown.

mod child;
mod procfs;
mod report;
mod shardgate;
mod twilight;
mod world;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

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

    /// Steady-stream dispatches per shard after READY and the GUILD_CREATEs (large enough
    /// that connecting and identifying are a rounding error).
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(1..))]
    events_per_shard: u64,

    /// Dispatches per second per shard; 0 = as fast as the client reads.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,

    /// Seed of the mock's stream: the same for every run, so every client sees the same events.
    #[arg(long, default_value_t = 42)]
    seed: u64,

    /// Guilds of the bot (each shard gets one GUILD_CREATE per guild it owns).
    #[arg(long, default_value_t = 16)]
    guilds: usize,

    /// The mock's event mix (`name=weight,…`, see `mock-gateway --help`). Default: its default.
    #[arg(long, value_parser = EventMix::parse)]
    mix: Option<EventMix>,

    /// Runs of each client per mode; the table shows medians.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    repeat: u64,

    /// shardgate `--cores` values, one run of each per repetition (the tables compare the
    /// largest with 1).
    #[arg(long, value_delimiter = ',', default_value = "2,1")]
    cores: Vec<u32>,

    /// twilight variants: `raw` = receive, decompress and the shard's own op/seq/t
    /// classification (`Stream::next`); `full` = `next_event(EventTypeFlags::all())`, which
    /// also deserializes every event into twilight_model types.
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

    /// Give up on one run after this many seconds (it is reported as failed).
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

/// Runs the whole schedule and prints the tables; `Ok(false)` when a run failed.
fn run(cli: &Cli) -> anyhow::Result<bool> {
    check_binaries(cli)?;
    let world = World {
        shards: cli.shards,
        seed: cli.seed,
        guilds: cli.guilds,
        rate: cli.rate,
        events_per_shard: cli.events_per_shard,
        mix: cli.mix.clone(),
        mock_threads: cli.mock_threads,
    };
    let timeout = Duration::from_secs(cli.timeout_secs);
    let schedule = schedule(cli);
    let scratch_root =
        std::env::temp_dir().join(format!("shardgate-compare-{}", std::process::id()));
    let mut results = Vec::with_capacity(schedule.len());
    for (index, &(mode, repetition, client)) in schedule.iter().enumerate() {
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
        let outcome = match measured {
            Ok(sample) => {
                eprintln!(
                    "[{}/{}] {} {} (cores={}) run {repetition}: {} events, {:.0} events/s, \
                     {:.2} µs CPU/event, peak RSS {:.1} MiB, start-up {:.0} ms CPU, {} redundant \
                     updates forwarded",
                    index + 1,
                    schedule.len(),
                    mode.name(),
                    client.label(),
                    client.cores(),
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
                eprintln!(
                    "[{}/{}] {} {} (cores={}) run {repetition}: FAILED: {error:#}",
                    index + 1,
                    schedule.len(),
                    mode.name(),
                    client.label(),
                    client.cores(),
                );
                Outcome::Failed {
                    reason: format!("{error:#}"),
                }
            }
        };
        results.push(RunResult {
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
    print!("{}", markdown(cli, &results));
    Ok(results.iter().all(|r| matches!(r.outcome, Outcome::Ok(_))))
}

/// (mode, repetition, client) in the order they run: per mode, per repetition, every client.
fn schedule(cli: &Cli) -> Vec<(Mode, usize, Client)> {
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
    for &mode in &cli.modes {
        let clients = clients_of(mode);
        // `repeat` was checked to be at least 1 and a run count fits in usize.
        for repetition in 1..=cli.repeat as usize {
            runs.extend(clients.iter().map(|&client| (mode, repetition, client)));
        }
    }
    runs
}

fn twilight_binary(cli: &Cli, mode: Mode) -> Option<&Path> {
    match mode {
        Mode::ZstdStream => Some(&cli.twilight_zstd),
        Mode::ZlibStream => Some(&cli.twilight_zlib),
        Mode::None => Some(&cli.twilight_none),
        Mode::Payload => None,
    }
}

/// Every binary the schedule needs exists, before the first run starts.
fn check_binaries(cli: &Cli) -> anyhow::Result<()> {
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
    anyhow::ensure!(!cli.cores.is_empty(), "--cores needs at least one value");
    Ok(())
}

/// The whole stdout: parameters, the results, the ratios, the cores, the failures.
fn markdown(cli: &Cli, results: &[RunResult]) -> String {
    let rows = report::summarize(results);
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let rate = if cli.rate == 0.0 {
        "as fast as each client reads".to_owned()
    } else {
        format!("{} events/s per shard", cli.rate)
    };
    let mut out = format!(
        "{} shards × {} events (seed {}, {} guilds, {} mix, {rate}), ws:// on loopback; \
         medians of {} runs per client, clients alternating; {cpus} CPUs ({}).\n\n",
        cli.shards,
        cli.events_per_shard,
        cli.seed,
        cli.guilds,
        if cli.mix.is_some() {
            "custom"
        } else {
            "default"
        },
        cli.repeat,
        cpu_model().unwrap_or_else(|| "unknown CPU".to_owned()),
    );
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
            "--modes",
            "none,payload",
            "--repeat",
            "2",
            "--twilight-parse",
            "raw",
        ]);
        let names: Vec<String> = schedule(&cli)
            .into_iter()
            .map(|(mode, repetition, client)| {
                format!(
                    "{} {repetition} {} {}",
                    mode.name(),
                    client.label(),
                    client.cores()
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                "none 1 shardgate 2",
                "none 1 shardgate 1",
                "none 1 twilight-gateway 0.18 (raw) 1",
                "none 2 shardgate 2",
                "none 2 shardgate 1",
                "none 2 twilight-gateway 0.18 (raw) 1",
                "payload 1 shardgate 2",
                "payload 1 shardgate 1",
                "payload 2 shardgate 2",
                "payload 2 shardgate 1",
            ]
        );
    }
}
