//! `mock-load`: measures the mock gateway on one core.
//!
//! The mock runs in-process on one current-thread runtime (`MockGateway::spawn(config, 1)`,
//! thread `mock-gateway`); the clients run on a separate runtime (`--client-threads`,
//! threads `load-client`) or, with `--clients-in-child`, in a child process. The mock
//! thread's CPU time is read from `/proc/self/task/<tid>/stat` (and `schedstat`) before and
//! after the measured window, so the report gives dispatches per wall second and per CPU
//! second of the mock's own thread: when the clients are the bottleneck the second figure is
//! what the mock could do on a core of its own.
//!
//! - `throughput`: C connections read as fast as they can; dispatches/s, MB/s, mock CPU.
//! - `idle`: thousands of connections that identify and then only heartbeat; CPU and RSS.

mod child;
mod client;
mod procfs;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use mock_gateway::events::EventMix;
use mock_gateway::{Ledger, MockConfig, MockGateway};
use serde_json::{Value, json};

use crate::child::{ChildArgs, ChildClients};
use crate::client::{ClientParams, ClientSet, Compress, Totals};
use crate::procfs::CpuTime;

/// The target for the throughput mode on one core.
const TARGET_DISPATCHES_PER_SEC: f64 = 200_000.0;
/// The mock's thread name (see `MockGateway::spawn`).
const MOCK_THREAD_NAME: &str = "mock-gateway";
/// GUILDS | GUILD_MESSAGES.
const INTENTS: u64 = 513;

/// Load driver for the mock gateway: starts the mock in-process on ONE runtime thread and
/// drives it with raw WebSocket shards on a separate runtime, then reports dispatches/s,
/// MB/s, the mock thread's CPU time, RSS and the mock ledger's violations.
#[derive(Parser, Debug)]
#[command(name = "mock-load", version)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Dispatch throughput: the mock streams as fast as the sockets take (`rate` 0) to
    /// `--connections` shards that read as fast as they can, for `--seconds` after all are
    /// READY and have their GUILD_CREATEs.
    Throughput(ThroughputArgs),
    /// Idle connections: `--connections` shards identify (in a ramp), then only heartbeat
    /// for `--seconds` while the mock trickles events (`--rate` per shard per second).
    Idle(IdleArgs),
    /// (internal) the client side in a child process, for `--clients-in-child`.
    #[command(hide = true)]
    Clients(ChildArgs),
}

#[derive(Args, Debug)]
struct ThroughputArgs {
    /// Client connections; they identify as shards 0..C of C.
    #[arg(long, default_value_t = 64)]
    connections: u32,
    /// Seconds measured after every connection is READY and has its GUILD_CREATEs.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Transport compression the clients ask for (`compress=` query); the clients
    /// decompress every frame.
    #[arg(long, value_enum, default_value_t = Compress::None)]
    compress: Compress,
    /// Stop each shard's steady stream after this many dispatches (0 = never; a run longer
    /// than the stream measures idle time).
    #[arg(long, default_value_t = 0)]
    events_per_shard: u64,
    /// Guilds in the mock (0 = 4 per connection, so nearly every shard streams guild
    /// traffic rather than DMs only).
    #[arg(long, default_value_t = 0)]
    guilds: usize,
    /// Seconds to let the stream run after all are ready and before the window, e.g. until
    /// the mock's replay buffers (`--replay-capacity` per session) are full and its memory
    /// stops growing.
    #[arg(long, default_value_t = 0)]
    warmup_secs: u64,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Debug)]
struct IdleArgs {
    /// Client connections; they identify as shards 0..C of C.
    #[arg(long, default_value_t = 5000)]
    connections: u32,
    /// Seconds to hold the connections after all are READY: longer than two heartbeat
    /// intervals (41.25 s) and than 1/`--rate` (the mock paces each shard evenly, so its first
    /// steady dispatch comes 1/rate seconds after its GUILD_CREATEs).
    #[arg(long, default_value_t = 120)]
    seconds: u64,
    /// Steady-stream dispatches per shard per second while idle (0.01: one per shard every
    /// 100 s).
    #[arg(long, default_value_t = 0.01)]
    rate: f64,
    /// Transport compression the clients ask for.
    #[arg(long, value_enum, default_value_t = Compress::None)]
    compress: Compress,
    /// Guilds in the mock (0 = one per connection: each shard owns about one).
    #[arg(long, default_value_t = 0)]
    guilds: usize,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Debug)]
struct Common {
    /// Approximate GUILD_CREATE size (below a guild's minimal form, about 6 KB, gives the
    /// minimal form).
    #[arg(long, default_value_t = 2000)]
    guild_create_bytes: usize,
    /// Worker threads of the client runtime (the mock always has exactly one).
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Run the clients in a child process: the driver's RSS is then the mock's alone and the
    /// child's RSS and CPU are the clients'.
    #[arg(long)]
    clients_in_child: bool,
    /// Connections between TCP connect and the end of their GUILD_CREATEs at once, so the
    /// accept backlog is never overrun.
    #[arg(long, default_value_t = 200)]
    ramp: usize,
    /// tungstenite read buffer per client connection, bytes (default: 128 KiB for
    /// throughput, 8 KiB for idle).
    #[arg(long)]
    client_read_buffer: Option<usize>,
    /// `max_concurrency` of the mock (0 = max(1024, connections): every shard its own
    /// identify bucket, so identifies are never throttled).
    #[arg(long, default_value_t = 0)]
    max_concurrency: u32,
    /// The mock's identify window per bucket, ms.
    #[arg(long, default_value_t = 1)]
    identify_window_ms: u64,
    /// HELLO's heartbeat interval, ms.
    #[arg(long, default_value_t = 41_250)]
    heartbeat_interval_ms: u64,
    /// Dispatches the mock keeps per session for resumes (its default; costs memory and a
    /// `Bytes` clone per dispatch).
    #[arg(long, default_value_t = 4096)]
    replay_capacity: usize,
    /// Seed of the mock (the same seed replays the same traffic).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Steady-stream mix, e.g. `message_create=30,typing_start=0` (default: the mock's).
    #[arg(long)]
    mix: Option<String>,
    /// zstd level of the mock for zstd-stream.
    #[arg(long, default_value_t = 3)]
    zstd_level: i32,
    /// zlib level of the mock for zlib-stream.
    #[arg(long, default_value_t = 6)]
    zlib_level: u32,
    /// Give up waiting for READY after this many seconds.
    #[arg(long, default_value_t = 180)]
    ready_timeout_secs: u64,
    /// Print one JSON object on stdout instead of the table (progress stays on stderr).
    #[arg(long)]
    json: bool,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.mode {
        Mode::Throughput(args) => throughput(&args).map(|report| report.print(args.common.json)),
        Mode::Idle(args) => idle(&args).map(|report| report.print(args.common.json)),
        Mode::Clients(args) => child::child_main(&args).map(|()| true),
    };
    match result {
        Ok(true) => std::process::ExitCode::SUCCESS,
        // The run completed but failed a check (violations, failed connections, …).
        Ok(false) => std::process::ExitCode::from(1),
        Err(error) => {
            eprintln!("mock-load: {error:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// Ordered rows of a report: printed as a table, or as one JSON object.
struct Report {
    title: String,
    rows: Vec<(&'static str, Value, &'static str)>,
    /// Whether the run passed its checks (all connected, no violations, no client errors).
    ok: bool,
}

impl Report {
    fn new(title: String) -> Report {
        Report {
            title,
            rows: Vec::new(),
            ok: true,
        }
    }

    fn row(&mut self, key: &'static str, value: impl Into<Value>, note: &'static str) {
        self.rows.push((key, value.into(), note));
    }

    /// Prints and says whether the run passed.
    fn print(self, as_json: bool) -> bool {
        if as_json {
            let object: serde_json::Map<String, Value> = self
                .rows
                .iter()
                .map(|(key, value, _)| ((*key).to_owned(), value.clone()))
                .chain([("ok".to_owned(), Value::Bool(self.ok))])
                .collect();
            println!("{}", Value::Object(object));
        } else {
            println!("{}", self.title);
            println!("{}", "-".repeat(self.title.len()));
            for (key, value, note) in &self.rows {
                let value = match value {
                    Value::Number(n) if n.is_f64() => format_float(n.as_f64().unwrap_or(0.0)),
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                if note.is_empty() {
                    println!("{key:<34} {value}");
                } else {
                    println!("{key:<34} {value:<24} {note}");
                }
            }
            println!("{:<34} {}", "ok", self.ok);
        }
        self.ok
    }
}

fn format_float(value: f64) -> String {
    if value.abs() >= 1000.0 {
        format!("{value:.0}")
    } else if value.abs() >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.3}")
    }
}

fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

/// The mock configuration shared by both modes.
fn mock_config(
    common: &Common,
    connections: u32,
    guilds: usize,
    rate: f64,
    events_per_shard: u64,
) -> anyhow::Result<MockConfig> {
    let mix = match &common.mix {
        Some(spec) => Some(EventMix::parse(spec).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let max_concurrency = match common.max_concurrency {
        0 => connections.max(1024),
        n => n,
    };
    Ok(MockConfig {
        seed: Some(common.seed),
        guilds,
        guild_create_bytes: common.guild_create_bytes,
        rate,
        events_per_shard,
        max_concurrency,
        identify_window_ms: common.identify_window_ms,
        // Every connection identifies once; never run out of session starts.
        session_start_total: connections.saturating_mul(4).max(1000),
        heartbeat_interval_ms: common.heartbeat_interval_ms,
        replay_capacity: common.replay_capacity,
        mix,
        zstd_level: common.zstd_level,
        zlib_level: common.zlib_level,
        ..MockConfig::default()
    })
}

/// The mock's runtime thread.
fn mock_thread() -> anyhow::Result<u32> {
    let started = Instant::now();
    loop {
        let threads = procfs::threads_named(MOCK_THREAD_NAME);
        match threads.as_slice() {
            [tid] => return Ok(*tid),
            [] if started.elapsed() < Duration::from_secs(2) => {
                std::thread::sleep(Duration::from_millis(5));
            }
            [] => bail!("no thread named {MOCK_THREAD_NAME} in /proc/self/task"),
            _ => bail!("more than one thread named {MOCK_THREAD_NAME}"),
        }
    }
}

fn mock_cpu(tid: u32) -> anyhow::Result<CpuTime> {
    procfs::thread_cpu(tid).context("cannot read the mock thread's CPU time")
}

/// The clients, in this process or in a child.
enum Clients {
    Here(ClientSet),
    Child(ChildClients),
}

/// One reading of the clients.
struct Reading {
    totals: Totals,
    cpu: CpuTime,
    /// The child's RSS (in-process clients are part of the driver's RSS).
    child_rss_kib: Option<u64>,
}

impl Clients {
    fn start(
        params: ClientParams,
        in_child: bool,
        ready_timeout: Duration,
    ) -> anyhow::Result<Self> {
        Ok(if in_child {
            Clients::Child(ChildClients::spawn(&params, ready_timeout)?)
        } else {
            Clients::Here(ClientSet::start(params)?)
        })
    }

    fn cpu(&self) -> CpuTime {
        match self {
            Clients::Here(set) => set.cpu(),
            Clients::Child(child) => procfs::process_cpu(Some(child.pid())).unwrap_or_default(),
        }
    }

    fn wait_ready(&mut self, limit: Duration) -> anyhow::Result<Reading> {
        match self {
            Clients::Here(set) => Ok(Reading {
                totals: set.wait_ready(limit, false),
                cpu: set.cpu(),
                child_rss_kib: None,
            }),
            Clients::Child(child) => {
                let report = child.wait_ready()?;
                Ok(Reading {
                    totals: report.totals,
                    cpu: self.cpu(),
                    child_rss_kib: report.rss_kib,
                })
            }
        }
    }

    fn read(&mut self) -> anyhow::Result<Reading> {
        match self {
            Clients::Here(set) => Ok(Reading {
                totals: set.totals(),
                cpu: set.cpu(),
                child_rss_kib: None,
            }),
            Clients::Child(child) => {
                let report = child.snapshot()?;
                Ok(Reading {
                    totals: report.totals,
                    cpu: self.cpu(),
                    child_rss_kib: report.rss_kib,
                })
            }
        }
    }

    fn stop(self) -> anyhow::Result<Totals> {
        match self {
            Clients::Here(set) => Ok(set.stop(Duration::from_secs(10))),
            Clients::Child(child) => Ok(child.stop()?.totals),
        }
    }
}

/// Checks that the connections fit under the open-files limit.
fn check_fd_limit(connections: u32, in_child: bool) -> anyhow::Result<()> {
    // Both ends of every connection live in this process unless the clients are a child.
    let per_connection = if in_child { 1 } else { 2 };
    let needed = u64::from(connections) * per_connection + 100;
    if let Some(limit) = procfs::open_files_limit()
        && limit < needed
    {
        bail!(
            "{connections} connections need about {needed} file descriptors; the limit is \
             {limit} (raise `ulimit -n`, or use --clients-in-child)"
        );
    }
    Ok(())
}

fn client_params(
    mock: &MockGateway,
    common: &Common,
    connections: u32,
    compress: Compress,
    read_buffer: usize,
) -> ClientParams {
    ClientParams {
        ws_url: mock.ws_url().to_owned(),
        token: mock.token().to_owned(),
        connections,
        compress,
        ramp: common.ramp,
        threads: common.client_threads,
        read_buffer: common.client_read_buffer.unwrap_or(read_buffer),
        intents: INTENTS,
    }
}

/// Violations summed by kind.
fn violation_kinds(ledger: &Ledger) -> Value {
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    for violation in &ledger.violations {
        *kinds.entry(format!("{:?}", violation.kind)).or_default() += 1;
    }
    json!(kinds)
}

fn add_ready_rows(report: &mut Report, connections: u32, ready: &Totals, ramp_secs: f64) {
    let all = u64::from(connections);
    report.row("connections_established", ready.established, "");
    report.row("connections_ready", ready.ready, "READY received");
    report.row(
        "connections_warmed",
        ready.warmed,
        "READY + every GUILD_CREATE",
    );
    report.row("all_ready", ready.warmed == all, "");
    report.row("ramp_secs", round(ramp_secs, 2), "connect → all warmed");
    if ready.warmed != all {
        report.ok = false;
    }
}

fn add_end_rows(report: &mut Report, end: &Totals, ledger: &Ledger) {
    report.row(
        "client_failures",
        end.failed,
        "connections ended by an error",
    );
    if !end.errors.is_empty() {
        report.row("client_errors", json!(end.errors), "");
    }
    report.row("seq_errors", end.seq_errors, "dispatch s not previous + 1");
    report.row("heartbeats_sent", end.heartbeats, "whole run");
    report.row("heartbeat_acks", end.acks, "whole run");
    report.row("ledger_connections", ledger.connections_total, "");
    report.row("ledger_identifies", ledger.identifies_total, "");
    report.row(
        "ledger_dispatches",
        ledger.dispatches_total,
        "produced by the mock, whole run",
    );
    report.row(
        "client_dispatches",
        end.dispatches,
        "received by the clients, whole run",
    );
    report.row("violations", ledger.violations.len() as u64, "must be 0");
    if !ledger.violations.is_empty() {
        report.row("violation_kinds", violation_kinds(ledger), "");
    }
    if !ledger.violations.is_empty() || end.failed > 0 || end.seq_errors > 0 {
        report.ok = false;
    }
}

fn throughput(args: &ThroughputArgs) -> anyhow::Result<Report> {
    let common = &args.common;
    let connections = args.connections.max(1);
    check_fd_limit(connections, common.clients_in_child)?;
    let guilds = match args.guilds {
        0 => connections as usize * 4,
        n => n,
    };
    let config = mock_config(common, connections, guilds, 0.0, args.events_per_shard)?;
    let mock = MockGateway::spawn(config, 1).context("cannot start the mock")?;
    let mock_tid = mock_thread()?;
    eprintln!(
        "mock-load: throughput, {connections} connections, compress {}, {guilds} guilds, mock \
         at {} (thread {mock_tid}), seed {}",
        args.compress.name(),
        mock.ws_url(),
        mock.seed()
    );
    let params = client_params(&mock, common, connections, args.compress, 128 * 1024);
    let ready_timeout = Duration::from_secs(common.ready_timeout_secs);
    let ramp_started = Instant::now();
    let mut clients = Clients::start(params, common.clients_in_child, ready_timeout)?;
    let ready = clients.wait_ready(ready_timeout)?;
    let ramp_secs = ramp_started.elapsed().as_secs_f64();
    if ready.totals.warmed < u64::from(connections) {
        eprintln!(
            "mock-load: only {} of {connections} connections ready after {ramp_secs:.1} s; \
             measuring anyway",
            ready.totals.warmed
        );
    }

    if args.warmup_secs > 0 {
        eprintln!("  warming up for {} s", args.warmup_secs);
        std::thread::sleep(Duration::from_secs(args.warmup_secs));
    }

    // The measured window.
    let process_start = procfs::process_cpu(None).unwrap_or_default();
    let mock_start = mock_cpu(mock_tid)?;
    let start = clients.read()?;
    let started = Instant::now();
    let mut previous = (started, start.totals.dispatches, mock_start);
    let mut per_second = Vec::new();
    let window = Duration::from_secs(args.seconds.max(1));
    while started.elapsed() < window {
        let step = (window - started.elapsed()).min(Duration::from_secs(1));
        std::thread::sleep(step);
        let now = clients.read()?;
        let mock_now = mock_cpu(mock_tid)?;
        let at = Instant::now();
        let secs = at.duration_since(previous.0).as_secs_f64();
        let rate = (now.totals.dispatches - previous.1) as f64 / secs;
        let mock_step = mock_now.since(previous.2);
        per_second.push(round(rate, 0));
        eprintln!(
            "  {:>5.1} s: {rate:>10.0} dispatches/s, mock CPU {:>3.0}% (system {:>3.0}%)",
            started.elapsed().as_secs_f64(),
            100.0 * mock_step.best() / secs,
            100.0 * mock_step.system_secs / secs,
        );
        previous = (at, now.totals.dispatches, mock_now);
    }
    let end = clients.read()?;
    let wall = started.elapsed().as_secs_f64();
    let mock_used = mock_cpu(mock_tid)?.since(mock_start);
    let process_used = procfs::process_cpu(None)
        .unwrap_or_default()
        .since(process_start);
    let client_used = end.cpu.since(start.cpu);
    let rss_kib = procfs::rss_kib(None);

    let final_totals = clients.stop()?;
    let ledger = mock.ledger();
    let seed = mock.seed();
    mock.shutdown();

    let d = |f: fn(&Totals) -> u64| f(&end.totals) - f(&start.totals);
    let dispatches = d(|t| t.dispatches);
    let guild_creates = d(|t| t.guild_creates);
    let wire = d(|t| t.wire_bytes);
    let json_bytes = d(|t| t.json_bytes);
    let rate = dispatches as f64 / wall;
    let mock_secs = mock_used.best();

    let mut report = Report::new(format!(
        "mock-load throughput: {connections} connections, compress {}, {} client thread(s){}",
        args.compress.name(),
        common.client_threads,
        if common.clients_in_child {
            " in a child process"
        } else {
            ""
        }
    ));
    report.row("mode", "throughput", "");
    report.row("connections", connections, "");
    report.row("compress", args.compress.name(), "");
    report.row("client_threads", common.client_threads as u64, "");
    report.row("clients_in_child", common.clients_in_child, "");
    report.row("guilds", guilds as u64, "");
    report.row("seed", seed, "");
    add_ready_rows(&mut report, connections, &ready.totals, ramp_secs);
    report.row("warmup_secs", args.warmup_secs, "before the window");
    report.row("window_secs", round(wall, 3), "wall");
    report.row("dispatches", dispatches, "in the window");
    report.row("guild_creates", guild_creates, "in the window");
    report.row("dispatches_per_sec", round(rate, 0), "wall");
    report.row("dispatches_per_sec_each_second", json!(per_second), "");
    report.row(
        "wire_mb_per_sec",
        round(wire as f64 / wall / 1e6, 2),
        "WebSocket payload, 1 MB = 10^6 B",
    );
    report.row(
        "json_mb_per_sec",
        round(json_bytes as f64 / wall / 1e6, 2),
        "after decompression",
    );
    report.row(
        "avg_dispatch_bytes",
        round(json_bytes as f64 / dispatches.max(1) as f64, 0),
        "JSON",
    );
    report.row(
        "mock_cpu_secs",
        round(mock_used.stat_secs, 2),
        "mock thread, stat utime+stime",
    );
    report.row(
        "mock_cpu_secs_schedstat",
        round(mock_used.sched_secs, 3),
        "mock thread, schedstat",
    );
    report.row(
        "mock_system_cpu_secs",
        round(mock_used.system_secs, 2),
        "stime part: syscalls, page faults",
    );
    report.row(
        "mock_cpu_pct",
        round(100.0 * mock_secs / wall, 1),
        "of one core",
    );
    report.row(
        "dispatches_per_mock_cpu_sec",
        round(dispatches as f64 / mock_secs.max(1e-9), 0),
        "what the mock does per second of its core",
    );
    report.row(
        "client_cpu_secs",
        round(client_used.best(), 2),
        "client threads (or child)",
    );
    report.row(
        "client_cpu_pct",
        round(100.0 * client_used.best() / wall, 1),
        "",
    );
    report.row(
        "process_cpu_secs",
        round(process_used.best(), 2),
        "this process, all threads",
    );
    report.row("rss_kib", rss_kib, "this process at the end of the window");
    if let Some(child_rss) = end.child_rss_kib {
        report.row("client_child_rss_kib", child_rss, "");
    }
    report.row(
        "target_200k_wall",
        rate >= TARGET_DISPATCHES_PER_SEC,
        "dispatches/s >= 200k (wall)",
    );
    report.row(
        "target_200k_per_mock_cpu_sec",
        dispatches as f64 / mock_secs.max(1e-9) >= TARGET_DISPATCHES_PER_SEC,
        "dispatches per mock CPU-second >= 200k",
    );
    add_end_rows(&mut report, &final_totals, &ledger);
    Ok(report)
}

fn idle(args: &IdleArgs) -> anyhow::Result<Report> {
    let common = &args.common;
    let connections = args.connections.max(1);
    check_fd_limit(connections, common.clients_in_child)?;
    let guilds = match args.guilds {
        0 => connections as usize,
        n => n,
    };
    let rss_before_mock = procfs::rss_kib(None);
    let config = mock_config(common, connections, guilds, args.rate, 0)?;
    let mock = MockGateway::spawn(config, 1).context("cannot start the mock")?;
    let mock_tid = mock_thread()?;
    // Let the mock build its guild list and settle before the baseline.
    std::thread::sleep(Duration::from_millis(200));
    let rss_mock_up = procfs::rss_kib(None);
    eprintln!(
        "mock-load: idle, {connections} connections, {guilds} guilds, rate {}/s per shard, \
         mock at {} (thread {mock_tid}), seed {}",
        args.rate,
        mock.ws_url(),
        mock.seed()
    );
    let params = client_params(&mock, common, connections, args.compress, 8 * 1024);
    let ready_timeout = Duration::from_secs(common.ready_timeout_secs);
    let ramp_started = Instant::now();
    let mock_before_ramp = mock_cpu(mock_tid)?;
    let mut clients = Clients::start(params, common.clients_in_child, ready_timeout)?;
    let ready = clients.wait_ready(ready_timeout)?;
    let ramp_secs = ramp_started.elapsed().as_secs_f64();
    let mock_ramp = mock_cpu(mock_tid)?.since(mock_before_ramp);
    let rss_connected = procfs::rss_kib(None);

    // The hold.
    let mock_start = mock_cpu(mock_tid)?;
    let start = clients.read()?;
    let started = Instant::now();
    let hold = Duration::from_secs(args.seconds);
    while started.elapsed() < hold {
        std::thread::sleep((hold - started.elapsed()).min(Duration::from_secs(10)));
        let now = clients.read()?;
        eprintln!(
            "  {:>5.1} s: {} ready, {} failed, {} heartbeats, {} acks, mock CPU {:.2} s",
            started.elapsed().as_secs_f64(),
            now.totals.warmed,
            now.totals.failed,
            now.totals.heartbeats - start.totals.heartbeats,
            now.totals.acks - start.totals.acks,
            mock_cpu(mock_tid)?.since(mock_start).best()
        );
    }
    let end = clients.read()?;
    let wall = started.elapsed().as_secs_f64();
    let mock_used = mock_cpu(mock_tid)?.since(mock_start);
    let client_used = end.cpu.since(start.cpu);
    let rss_end = procfs::rss_kib(None);

    let final_totals = clients.stop()?;
    let ledger = mock.ledger();
    let seed = mock.seed();
    mock.shutdown();

    let mut report = Report::new(format!(
        "mock-load idle: {connections} connections, {} client thread(s){}",
        common.client_threads,
        if common.clients_in_child {
            " in a child process"
        } else {
            ""
        }
    ));
    report.row("mode", "idle", "");
    report.row("connections", connections, "");
    report.row("compress", args.compress.name(), "");
    report.row("clients_in_child", common.clients_in_child, "");
    report.row("guilds", guilds as u64, "");
    report.row("rate_per_shard", args.rate, "steady dispatches/s per shard");
    report.row("seed", seed, "");
    add_ready_rows(&mut report, connections, &ready.totals, ramp_secs);
    report.row(
        "mock_cpu_secs_ramp",
        round(mock_ramp.best(), 2),
        "mock thread, connect + identify + GUILD_CREATEs",
    );
    report.row("hold_secs", round(wall, 1), "");
    report.row(
        "still_connected_at_end",
        end.totals.warmed - end.totals.failed.min(end.totals.warmed),
        "",
    );
    report.row(
        "mock_cpu_secs",
        round(mock_used.best(), 3),
        "mock thread during the hold",
    );
    report.row(
        "mock_cpu_pct",
        round(100.0 * mock_used.best() / wall, 2),
        "of one core",
    );
    report.row(
        "client_cpu_pct",
        round(100.0 * client_used.best() / wall, 2),
        "",
    );
    report.row(
        "hold_dispatches",
        end.totals.dispatches - start.totals.dispatches,
        "",
    );
    report.row(
        "hold_heartbeats",
        end.totals.heartbeats - start.totals.heartbeats,
        "",
    );
    report.row("hold_acks", end.totals.acks - start.totals.acks, "");
    let per_connection = |before: Option<u64>, after: Option<u64>| match (before, after) {
        (Some(before), Some(after)) => {
            json!(round(
                after.saturating_sub(before) as f64 / f64::from(connections),
                1
            ))
        }
        _ => Value::Null,
    };
    report.row("rss_before_mock_kib", rss_before_mock, "this process");
    report.row(
        "rss_mock_up_kib",
        rss_mock_up,
        "this process, mock up, no connections",
    );
    report.row(
        "rss_connected_kib",
        rss_connected,
        "this process, all ready",
    );
    report.row("rss_end_kib", rss_end, "this process, end of hold");
    if common.clients_in_child {
        report.row(
            "mock_rss_per_connection_kib",
            per_connection(rss_mock_up, rss_end),
            "(end - mock up) / C: the mock's own share",
        );
        report.row("client_rss_ready_kib", ready.child_rss_kib, "child process");
        report.row("client_rss_end_kib", end.child_rss_kib, "child process");
        report.row(
            "client_rss_per_connection_kib",
            per_connection(Some(0), end.child_rss_kib),
            "child RSS / C (includes its runtime)",
        );
    } else {
        report.row(
            "rss_per_connection_kib",
            per_connection(rss_mock_up, rss_end),
            "(end - mock up) / C: mock AND client side",
        );
    }
    add_end_rows(&mut report, &final_totals, &ledger);
    Ok(report)
}
