//! One measured run of the real `shardgate` binary between a fresh mock and a fresh fake bot.
//!
//! Window: from the first WebSocket the mock accepted (polled every millisecond; the process's
//! start-up before it, settings, REST and core setup, is reported apart as `startup_cpu_secs`,
//! as the probe's window also starts after its own start-up) to the moment the bot holds every
//! dispatch the mock sent (minus the redundant MESSAGE_UPDATEs shardgate drops by design;
//! polled every [`POLL_INTERVAL`], by when the process is idle). At both ends the driver reads
//! `/proc/<pid>/stat` (utime + stime, all threads); at the end also `VmHWM` (peak since exec),
//! then it sends SIGTERM and checks the ledger, the bot's report and the exit status.
//!
//! Must not: measure after SIGTERM (shutdown work is not per-event cost), or treat a run with a
//! violation, a gap, a duplicate or a non-zero exit as a sample.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use fake_bot::{BotConfig, FakeBot};

use crate::child::{self, Child};
use crate::procfs;
use crate::report::Sample;
use crate::world::{INTENTS, World};
use crate::{Mode, POLL_INTERVAL};

/// How often the driver looks for shardgate's first connection, the start of the window.
const STARTUP_POLL_INTERVAL: Duration = Duration::from_millis(1);

/// Flags that make a firehose measure the engine rather than its backlog policies: no pacing
/// of a backlog (`--backlog-rate`, 20,000 records/s by default, would cap the run) and no disk
/// spill (a bot slower than the engine backpressures the cores instead of costing disk I/O).
pub const BENCH_FLAGS: [&str; 4] = ["--backlog-rate", "0", "--spill-bytes-max", "0"];

/// What to run.
pub struct Shardgate<'a> {
    pub binary: &'a Path,
    pub mode: Mode,
    pub cores: u32,
    /// Extra flags appended to `shardgate run`.
    pub extra_args: &'a [String],
    /// How late the fake bot answers each batch, in milliseconds.
    pub bot_slow_ms: u64,
    pub timeout: Duration,
}

impl Shardgate<'_> {
    /// One run against a fresh mock and bot; `Err` says why the run does not count.
    pub fn run(&self, world: &World, scratch: &Path) -> anyhow::Result<Sample> {
        let mock = world.spawn_mock()?;
        let last_seqs = world.last_seqs(&mock);
        let bot = FakeBot::spawn(BotConfig {
            slow_ms: self.bot_slow_ms,
            ..BotConfig::ephemeral()
        })
        .context("starting the fake bot")?;
        let data_dir = scratch.join("data");
        let stderr_path = scratch.join("shardgate.stderr");
        let stderr = std::fs::File::create(&stderr_path)
            .with_context(|| format!("creating {}", stderr_path.display()))?;
        let mut command = Command::new(self.binary);
        command
            .arg("run")
            .args(["--api-base", &mock.api_base()])
            .args(["--forward-url", &bot.url()])
            .args(["--total-shards", &world.shards.to_string()])
            .args(["--compression", self.mode.name()])
            .args(["--cores", &self.cores.to_string()])
            .args(["--intents", &INTENTS.to_string()])
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--admin-addr", "127.0.0.1:0", "--log", "warn"])
            .args(BENCH_FLAGS)
            .args(self.extra_args)
            .env("DISCORD_TOKEN", mock.token())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);

        let driver_cpu_before = procfs::cpu_secs(None).unwrap_or_default();
        let started = Instant::now();
        let mut child = Child::spawn(&mut command, &stderr_path)
            .with_context(|| format!("starting {}", self.binary.display()))?;
        let pid = child.id();
        let mut last_expected = None;
        let mut first_connection = None;
        let mut startup_cpu_secs = 0.0;
        let (wall_secs, cpu_secs, peak_rss_kib) = loop {
            // The window's start is read within a millisecond; its end is a quiet process.
            std::thread::sleep(if first_connection.is_none() {
                STARTUP_POLL_INTERVAL
            } else {
                POLL_INTERVAL
            });
            if let Some(status) = child.try_wait()? {
                bail!("shardgate exited early ({status}){}", child.stderr_tail());
            }
            if started.elapsed() > self.timeout {
                bail!(
                    "timed out after {:?} ({}): the bot has {} records{}",
                    self.timeout,
                    if last_expected.is_some() {
                        "the mock sent everything"
                    } else {
                        "the mock was still sending"
                    },
                    bot.report().totals.records,
                    child.stderr_tail()
                );
            }
            if first_connection.is_none() || last_expected.is_none() {
                let ledger = mock.ledger();
                if first_connection.is_none() && ledger.connections_total > 0 {
                    first_connection = Some(Instant::now());
                    startup_cpu_secs = procfs::cpu_secs(Some(pid)).unwrap_or_default();
                }
                last_expected = world.last_expected_seqs(&ledger);
            }
            let Some(want) = &last_expected else {
                continue;
            };
            if has_reached(&bot.report(), want) {
                // Read the process first: everything after this is the driver's own work.
                let cpu = procfs::cpu_secs(Some(pid)).context("reading shardgate's stat")?;
                let rss = procfs::peak_rss_kib(pid).context("reading shardgate's status")?;
                // Set in this poll at the latest: the mock counts a connection before it sends
                // the first dispatch.
                let connected = first_connection.unwrap_or(started);
                break (
                    connected.elapsed().as_secs_f64(),
                    cpu - startup_cpu_secs,
                    rss,
                );
            }
        };
        let driver_cpu_secs = procfs::cpu_secs(None).unwrap_or_default() - driver_cpu_before;

        let status = child.terminate(child::SHUTDOWN_GRACE)?;
        let ledger = mock.ledger();
        world.check_ledger(&ledger, &last_seqs, true)?;
        let redundant_forwarded = world.check_bot(&ledger, &bot.report())?;
        if !status.success() {
            bail!(
                "shardgate exited with {status} after SIGTERM{}",
                child.stderr_tail()
            );
        }
        Ok(Sample {
            // Every dispatch the mock sent was decoded, the dropped redundant updates included.
            events: world.dispatches_sent(&ledger),
            wall_secs,
            cpu_secs,
            peak_rss_kib,
            driver_cpu_secs,
            startup_cpu_secs,
            redundant_forwarded,
        })
    }
}

/// Every shard's records reached its last expected seq (records arrive in order per shard).
fn has_reached(report: &fake_bot::Report, last_expected: &[u64]) -> bool {
    last_expected.iter().zip(0_u32..).all(|(&want, shard)| {
        report
            .shards
            .get(&shard)
            .and_then(|got| got.runs.last())
            .is_some_and(|run| run.max_seq >= want)
    })
}
