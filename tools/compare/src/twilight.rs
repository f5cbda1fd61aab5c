//! One measured run of `tools/twilight-probe --mode bench`: real twilight-gateway 0.18 shards
//! that receive, decompress and classify every event and forward nothing.
//!
//! Window: the probe's own. It reads `/proc/self/stat` (utime + stime, all threads) when its
//! runtime is up, before any connection, and again the moment every shard's session sequence
//! reached `--until-seq`, before its closing handshakes; `VmHWM` is read at exit. Its wall time
//! (`active_ms`) runs from the first message any shard received to the last one counted. That
//! is the same procfs source and the same window as shardgate's, read from inside instead of
//! outside: the driver cannot see from outside when twilight has read its last event. The
//! probe's `elapsed_ms` is not used: it includes the closing handshakes (up to 2 s).
//!
//! Must not: accept a summary from a probe built for another compression mode.

use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Deserialize;

use crate::child::Child;
use crate::procfs;
use crate::report::Sample;
use crate::world::{INTENTS, World};
use crate::{Mode, Parse};

/// What to run.
pub struct Twilight<'a> {
    /// The probe built with this mode's cargo feature.
    pub binary: &'a Path,
    pub mode: Mode,
    pub parse: Parse,
    /// tokio worker threads; `None`: the probe's current-thread runtime.
    pub threads: Option<u16>,
    pub timeout: Duration,
}

/// The fields of the probe's bench summary this driver uses.
#[derive(Debug, Deserialize)]
struct Summary {
    ok: bool,
    reason: serde_json::Value,
    active_ms: f64,
    compression: String,
    events: u64,
    errors: u64,
    cpu_secs: f64,
    peak_rss_kib: Option<u64>,
}

impl Twilight<'_> {
    /// One run against a fresh mock; `Err` says why the run does not count.
    pub fn run(&self, world: &World, scratch: &Path) -> anyhow::Result<Sample> {
        let mock = world.spawn_mock()?;
        let last_seqs = world.last_seqs(&mock);
        // One stop sequence for all shards (the probe takes one): the lowest last seq. Shards
        // own different numbers of guilds, so the others may leave their last GUILD_CREATE
        // count of events (a few out of `events_per_shard`) unread when the probe stops.
        let until_seq = last_seqs.iter().copied().min().context("no shards")?;
        let stderr_path = scratch.join("twilight.stderr");
        let stderr = std::fs::File::create(&stderr_path)
            .with_context(|| format!("creating {}", stderr_path.display()))?;
        let shards = world.shards.to_string();
        let mut command = Command::new(self.binary);
        command
            .args(["--url", mock.ws_url()])
            .args(["--token", mock.token()])
            // 0: no identify queue, every shard identifies at once (the mock allows it,
            // `max_concurrency` = shards). twilight's InMemoryQueue would hold a shard whose
            // request misses the first round for IDENTIFY_DELAY (5 s), adding seconds of
            // idle to the wall time at random.
            .args(["--total-shards", &shards, "--max-concurrency", "0"])
            .args(["--intents", &INTENTS.to_string()])
            .args(["--mode", "bench", "--bench-parse", self.parse.name()])
            .args(["--until-seq", &until_seq.to_string()])
            .args(["--timeout-secs", &self.timeout.as_secs().to_string()])
            .args(["--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        if let Some(threads) = self.threads {
            command.args(["--threads", &threads.to_string()]);
        }

        let driver_cpu_before = procfs::cpu_secs(None).unwrap_or_default();
        let mut child = Child::spawn(&mut command, &stderr_path)
            .with_context(|| format!("starting {}", self.binary.display()))?;
        let mut stdout = child.take_stdout().context("the probe's stdout")?;
        // The summary is one small line written at exit: it fits the pipe, so reading it after
        // the exit cannot deadlock.
        let status = child.wait_for(self.timeout + Duration::from_secs(10))?;
        let driver_cpu_secs = procfs::cpu_secs(None).unwrap_or_default() - driver_cpu_before;
        let mut text = String::new();
        stdout
            .read_to_string(&mut text)
            .context("reading the probe's summary")?;
        let summary: Summary = serde_json::from_str(text.trim()).with_context(|| {
            format!(
                "the probe ({status}) printed no bench summary: {text:?}{}",
                child.stderr_tail()
            )
        })?;

        if summary.compression != self.mode.name() {
            bail!(
                "{} was built for {}, not {}",
                self.binary.display(),
                summary.compression,
                self.mode.name()
            );
        }
        if !summary.ok || !status.success() {
            bail!(
                "the probe did not reach seq {until_seq} on every shard ({status}, reason {}){}",
                summary.reason,
                child.stderr_tail()
            );
        }
        if summary.errors > 0 {
            bail!("twilight returned {} errors", summary.errors);
        }
        // Every shard reached `until_seq`, so at least that many dispatches were counted.
        let floor = until_seq * u64::from(world.shards);
        if summary.events < floor {
            bail!(
                "twilight counted {} events, fewer than the {floor} dispatches up to seq \
                 {until_seq} on every shard",
                summary.events
            );
        }
        world.check_ledger(&mock.ledger(), &last_seqs, false)?;
        Ok(Sample {
            events: summary.events,
            wall_secs: summary.active_ms / 1e3,
            cpu_secs: summary.cpu_secs,
            peak_rss_kib: summary.peak_rss_kib.context("the probe read no VmHWM")?,
            driver_cpu_secs,
            // The probe's window starts after its runtime is built, before connecting.
            startup_cpu_secs: 0.0,
            redundant_forwarded: 0,
        })
    }
}
