//! Fidelity with a real client: twilight-gateway 0.18 (the standalone `tools/twilight-probe`)
//! runs shards against the mock in each transport compression mode, gets an op 7 on one
//! shard mid-stream, and must see exactly what Discord would give it: one READY and one
//! GUILD_CREATE per owned guild per shard, one contiguous run of sequences per session, a
//! resume through `resume_gateway_url`, acknowledged heartbeats — and the mock must see a
//! client that broke no rule.
//!
//! The probe is built here (once per compression feature, serialised; the variants share
//! `target/twilight-probe` so dependencies compile once) because twilight picks its
//! compression by cargo feature and so cannot live in this workspace.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mock_gateway::{Fault, Ledger, MockConfig, MockGateway};
use serde_json::Value;
use shardgate_tests::{TestMock, owned_guilds};

/// GUILDS | GUILD_MESSAGES.
const INTENTS: u64 = 513;

/// Events twilight must parse whatever else it mis-models.
const MUST_PARSE: [&str; 3] = ["READY", "GUILD_CREATE", "MESSAGE_CREATE"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    None,
    Zlib,
    Zstd,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Zlib => "zlib-stream",
            Mode::Zstd => "zstd-stream",
        }
    }

    fn feature(self) -> Option<&'static str> {
        match self {
            Mode::None => None,
            Mode::Zlib => Some("zlib"),
            Mode::Zstd => Some("zstd"),
        }
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository root")
        .to_path_buf()
}

/// Modes built by this test process.
static BUILT: Mutex<Vec<Mode>> = Mutex::new(Vec::new());

/// Builds the probe for `mode` (once per process; cargo makes a rebuild of a fresh tree cheap)
/// and returns the path of its own copy, `target/twilight-probe/twilight-probe-<mode>`.
fn probe_binary(mode: Mode) -> PathBuf {
    let mut built = BUILT.lock().unwrap_or_else(PoisonError::into_inner);
    let root = repo_root();
    let target_dir = root.join("target").join("twilight-probe");
    let copy = target_dir.join(format!("twilight-probe-{}", mode.name()));
    if built.contains(&mode) {
        return copy;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut command = Command::new(cargo);
    command
        .arg("build")
        .arg("--manifest-path")
        .arg(root.join("tools").join("twilight-probe").join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .arg("--locked");
    if let Some(feature) = mode.feature() {
        command.args(["--features", feature]);
    }
    let started = Instant::now();
    let output = command.output().expect("running cargo build for the probe");
    assert!(
        output.status.success(),
        "building twilight-probe ({}) failed:\n{}",
        mode.name(),
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!(
        "built twilight-probe ({}) in {:.1} s",
        mode.name(),
        started.elapsed().as_secs_f64()
    );
    std::fs::copy(target_dir.join("debug").join("twilight-probe"), &copy)
        .expect("copying the probe binary");
    built.push(mode);
    copy
}

/// A running probe whose stdout and stderr are drained by threads (so a full pipe never
/// blocks it).
struct Probe {
    child: Child,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
}

fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}

impl Probe {
    fn spawn(binary: &Path, args: &[String]) -> Probe {
        let mut child = Command::new(binary)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting twilight-probe");
        let stdout = child.stdout.take().map(drain);
        let stderr = child.stderr.take().map(drain);
        Probe {
            child,
            stdout,
            stderr,
        }
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits up to `limit` (killing it after that); returns the JSON summary and stderr.
    fn finish(mut self, limit: Duration) -> (Value, String) {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("probe status") {
                break Some(status);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let stdout = self.stdout.take().map(|h| h.join().unwrap_or_default());
        let stderr = self.stderr.take().map(|h| h.join().unwrap_or_default());
        let (stdout, stderr) = (stdout.unwrap_or_default(), stderr.unwrap_or_default());
        let status =
            status.unwrap_or_else(|| panic!("probe ran past {limit:?}; stderr:\n{stderr}"));
        let summary: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
            panic!("probe ({status}) printed no JSON summary ({e}):\n{stdout}\nstderr:\n{stderr}")
        });
        (summary, stderr)
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn probe_args(mock: &MockGateway, total: u32, max_concurrency: u32, until_seq: u64) -> Vec<String> {
    [
        "--url",
        mock.ws_url(),
        "--token",
        mock.token(),
        "--total-shards",
        &total.to_string(),
        "--intents",
        &INTENTS.to_string(),
        "--max-concurrency",
        &max_concurrency.to_string(),
        "--until-seq",
        &until_seq.to_string(),
        "--timeout-secs",
        "60",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// Checks one shard's report; returns the names of events twilight could not parse.
fn check_shard(summary: &Value, shard: u32, owned: usize, until_seq: u64) -> BTreeSet<String> {
    let report = &summary["shards"][shard.to_string()];
    assert!(report.is_object(), "no report for shard {shard}: {summary}");
    let context = || format!("shard {shard}: {report:#}");
    assert_eq!(report["ready"], 1, "{}", context());
    assert_eq!(report["guild_creates"], owned, "{}", context());
    assert_eq!(report["fully_ready"], true, "{}", context());
    assert_eq!(report["stream_ended"], false, "{}", context());
    let acked = report["heartbeats_acked"].as_u64().unwrap_or(0);
    assert!(
        acked > 0,
        "twilight's heartbeats are acknowledged: {}",
        context()
    );

    let sessions = report["sessions"].as_array().expect("sessions");
    assert_eq!(sessions.len(), 1, "{}", context());
    let session = &sessions[0];
    let ranges = session["ranges"].as_array().expect("ranges");
    assert_eq!(ranges.len(), 1, "one contiguous range: {}", context());
    assert_eq!(ranges[0][0], 1, "starting at READY: {}", context());
    let last = ranges[0][1].as_u64().expect("range end");
    assert!(last >= until_seq, "{}", context());
    assert_eq!(session["duplicates"], 0, "{}", context());
    assert_eq!(session["out_of_order"], 0, "{}", context());

    let mut unparsed = BTreeSet::new();
    for error in report["errors"].as_array().expect("errors") {
        assert_eq!(
            error["kind"], "parse",
            "only parse errors are tolerated: {error}"
        );
        let event = error["event"].as_str().unwrap_or_default().to_owned();
        assert!(
            !MUST_PARSE.contains(&event.as_str()),
            "twilight must parse {event}: {error}"
        );
        unparsed.insert(event);
    }
    unparsed
}

fn assert_clean_ledger(ledger: &Ledger, shards: u32) {
    assert!(ledger.violations.is_empty(), "{:#?}", ledger.violations);
    for shard in 0..shards {
        assert_eq!(
            ledger.shards[&shard].identifies, 1,
            "shard {shard} identified once"
        );
    }
}

fn fidelity(mode: Mode) {
    let (total, until_seq) = (4u32, 400u64);
    let binary = probe_binary(mode);
    let mock = TestMock::spawn(MockConfig {
        seed: Some(0x7711),
        guilds: 40,
        max_concurrency: 4,
        heartbeat_interval_ms: 2000,
        rate: 100.0,
        guild_create_bytes: 5000,
        events_per_shard: 0,
        ..MockConfig::default()
    });
    let guilds = mock.guild_ids();

    let mut probe = Probe::spawn(&binary, &probe_args(&mock, total, 4, until_seq));
    let started = Instant::now();
    while mock.ledger().dispatches_for(1) <= 100 {
        assert!(probe.running(), "the probe exited before the fault");
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "shard 1 never got 100 dispatches"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(mock.inject_fault(1, Fault::Reconnect), 1);
    let (summary, stderr) = probe.finish(Duration::from_secs(90));
    assert_eq!(summary["ok"], true, "{summary:#}\nstderr:\n{stderr}");
    assert_eq!(summary["compression"], mode.name());

    let mut unparsed = BTreeSet::new();
    for shard in 0..total {
        let owned = owned_guilds(&guilds, shard, total).len();
        unparsed.extend(check_shard(&summary, shard, owned, until_seq));
    }
    let resumed = summary["shards"]["1"]["resumed"].as_u64().unwrap_or(0);
    assert!(resumed >= 1, "shard 1 resumed after op 7: {summary:#}");
    if !unparsed.is_empty() {
        eprintln!(
            "twilight 0.18 could not parse ({}): {unparsed:?}",
            mode.name()
        );
    }

    let ledger = mock.ledger();
    assert_clean_ledger(&ledger, total);
    let shard1 = &ledger.shards[&1];
    assert!(shard1.resumes >= 1, "{shard1:#?}");
    assert!(shard1.resumes_via_resume_url >= 1, "{shard1:#?}");
    assert_eq!(shard1.faults["reconnect"], 1);
}

#[test]
fn twilight_zstd_stream_sees_a_faithful_gateway() {
    fidelity(Mode::Zstd);
}

#[test]
fn twilight_zlib_stream_sees_a_faithful_gateway() {
    fidelity(Mode::Zlib);
}

#[test]
fn twilight_uncompressed_sees_a_faithful_gateway() {
    fidelity(Mode::None);
}

#[test]
fn twilight_identify_queue_keeps_max_concurrency_one() {
    let (total, until_seq) = (2u32, 30u64);
    let binary = probe_binary(Mode::Zstd);
    let mock = TestMock::spawn(MockConfig {
        seed: Some(0x7712),
        guilds: 10,
        max_concurrency: 1,
        // Discord's window; the mock tolerates 1% of arrival jitter (4996 ms was seen under
        // load against twilight's exact 5 s spacing). Unqueued identifies arrive ~0 ms apart.
        identify_window_ms: 5000,
        heartbeat_interval_ms: 2000,
        rate: 50.0,
        guild_create_bytes: 0,
        ..MockConfig::default()
    });
    let guilds = mock.guild_ids();
    let probe = Probe::spawn(&binary, &probe_args(&mock, total, 1, until_seq));
    let (summary, stderr) = probe.finish(Duration::from_secs(90));
    assert_eq!(summary["ok"], true, "{summary:#}\nstderr:\n{stderr}");
    for shard in 0..total {
        let owned = owned_guilds(&guilds, shard, total).len();
        check_shard(&summary, shard, owned, until_seq);
    }
    // No IdentifyTooFast (nor anything else): twilight's queue spaces the two identifies.
    assert_clean_ledger(&mock.ledger(), total);
}
