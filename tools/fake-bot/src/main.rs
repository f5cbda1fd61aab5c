//! The `fake-bot` binary: runs a [`fake_bot::FakeBot`] until Ctrl-C or SIGTERM, prints its seed
//! and address on stdout (for scripts), an optional summary line on stderr every few seconds,
//! and writes the report to `--report-file` on exit.
//!
//! Must not: print the secret, or write anything on stdout but the two start lines.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use fake_bot::{BotConfig, FakeBot, StreamTotals, StreamsConfig, Totals};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing::info;
use tracing_subscriber::EnvFilter;

/// The bot side of shardgate's forwarding contract: receives batches (POST, any path outside
/// /_bot/) and verifies per shard that nothing is missing, duplicated or out of order.
/// With --redis-url it also consumes the Redis Streams sink through a consumer group, into the
/// same ledger (copies, by the entries' id, are dropped and counted apart).
/// `GET /_bot/report` serves the report; `POST /_bot/control` takes
/// {"fail_rate":F, "slow_ms":N, "refuse_for_ms":N, "reset":true}. Logs go to stderr (RUST_LOG,
/// default info).
#[derive(Debug, Parser)]
#[command(name = "fake-bot", version)]
struct Cli {
    #[command(flatten)]
    bot: BotConfig,

    #[command(flatten)]
    streams: StreamsConfig,

    /// Write the report (JSON) to this file on exit. Default: not written.
    #[arg(long)]
    report_file: Option<PathBuf>,

    /// Print a summary line on stderr every this many seconds; 0 turns it off.
    #[arg(long, default_value_t = 0)]
    summary_secs: u64,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    // One thread: the bot should not take cores from the engine it is measuring against.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot build the runtime")?
        .block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut stop = StopSignals::register()?;
    let bot = FakeBot::start(cli.bot).await?;
    let consumer = match cli.streams.redis_url {
        Some(_) => Some(bot.consume_streams(cli.streams)?),
        None => None,
    };
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "fake-bot seed {}", bot.seed())?;
        writeln!(stdout, "fake-bot listening on http://{}", bot.addr())?;
        stdout.flush()?;
    }
    let started = Instant::now();
    let mut summary = Summary::new(started);
    let summary_period = (cli.summary_secs > 0).then(|| Duration::from_secs(cli.summary_secs));
    let mut ticks = tokio::time::interval(summary_period.unwrap_or(Duration::from_secs(3600)));
    ticks.tick().await; // the first tick is immediate
    loop {
        tokio::select! {
            signal = stop.recv() => {
                info!(signal, "stopping");
                break;
            }
            _ = ticks.tick(), if summary_period.is_some() => {
                let report = bot.report();
                eprintln!("{}", summary.line(&report.totals, report.streams.as_ref()));
            }
        }
    }
    // Stopping the consumer blocks for up to one read's block time: off the runtime's thread.
    if let Some(consumer) = consumer {
        tokio::task::spawn_blocking(move || consumer.stop())
            .await
            .context("the stream consumer's stop panicked")?;
    }
    let report = bot.report();
    bot.shutdown();
    eprintln!("{}", summary.line(&report.totals, report.streams.as_ref()));
    if let Some(path) = &cli.report_file {
        write_report(path, &report)?;
        info!(path = %path.display(), "report written");
    }
    Ok(())
}

/// Ctrl-C and SIGTERM, registered up front: a script may send SIGTERM as soon as it has read the
/// listening line, and a signal that comes before its handler would kill the process without a
/// report.
struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
}

impl StopSignals {
    fn register() -> anyhow::Result<Self> {
        Ok(StopSignals {
            interrupt: signal(SignalKind::interrupt()).context("cannot listen for Ctrl-C")?,
            terminate: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
        })
    }

    /// Waits for either and names the one that came.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "interrupt",
            _ = self.terminate.recv() => "terminate",
        }
    }
}

fn write_report(path: &Path, report: &fake_bot::Report) -> anyhow::Result<()> {
    let mut json = serde_json::to_vec_pretty(report).context("cannot serialise the report")?;
    json.push(b'\n');
    std::fs::write(path, json).with_context(|| format!("cannot write {}", path.display()))
}

/// Formats the periodic stderr line, with a rate since the previous one.
struct Summary {
    started: Instant,
    last_at: Instant,
    last_records: u64,
}

impl Summary {
    fn new(started: Instant) -> Self {
        Summary {
            started,
            last_at: started,
            last_records: 0,
        }
    }

    fn line(&mut self, totals: &Totals, streams: Option<&StreamTotals>) -> String {
        let now = Instant::now();
        let elapsed_secs = now.duration_since(self.last_at).as_secs_f64().max(1e-9);
        let records_per_s = totals.records.saturating_sub(self.last_records) as f64 / elapsed_secs;
        self.last_at = now;
        self.last_records = totals.records;
        let streams = streams.map_or_else(String::new, |streams| {
            format!(
                " stream_entries={} stream_copies={} stream_read_again={} stream_claimed={} \
                 stream_bad_entries={} stream_trimmed_pending={} stream_reconnects={}",
                streams.entries,
                streams.copies,
                streams.read_again,
                streams.claimed,
                streams.bad_entries,
                streams.trimmed_pending,
                streams.reconnects,
            )
        });
        format!(
            "fake-bot uptime_s={} batches_ok={} records={} records_per_s={:.0} bytes={} \
             duplicates={} out_of_order={} gaps={} failed_deliberately={} unauthorized={} \
             bad_batches={} oversized_batches={} notices={}{streams}",
            now.duration_since(self.started).as_secs(),
            totals.batches_ok,
            totals.records,
            records_per_s,
            totals.bytes,
            totals.duplicates,
            totals.out_of_order,
            totals.gaps,
            totals.batches_failed_deliberately,
            totals.unauthorized,
            totals.bad_batches,
            totals.oversized_batches,
            totals.notices.values().sum::<u64>(),
        )
    }
}
