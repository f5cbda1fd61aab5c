//! The `fake-bot` binary as scripts use it: the start lines on stdout, the secret from the
//! environment (never printed), SIGTERM writes the report file, `--help` documents every knob.
//!
//! Must not: assert timings or leave the child running (it is killed on any failure).

mod common;

use std::io::{BufRead as _, BufReader, Read as _};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use fake_bot::Report;

const SECRET: &str = "do-not-print-me-9f2c";

/// Kills the child if the test fails before it exits.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn sigterm_writes_the_report_and_the_secret_is_never_printed() {
    let report_path = std::env::temp_dir().join(format!(
        "fake-bot-cli-test-{}-{}.json",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_nanos()
    ));
    let mut child = Running(
        Command::new(env!("CARGO_BIN_EXE_fake-bot"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--seed",
                "42",
                "--summary-secs",
                "1",
            ])
            .arg("--report-file")
            .arg(&report_path)
            .env("FORWARD_SECRET", SECRET)
            .env("RUST_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts"),
    );
    let mut stdout = BufReader::new(child.0.stdout.take().expect("piped stdout"));
    let mut start_lines = String::new();
    let addr: SocketAddr = loop {
        let mut line = String::new();
        assert_ne!(
            stdout.read_line(&mut line).expect("stdout"),
            0,
            "exited early"
        );
        start_lines.push_str(&line);
        if let Some(url) = line.trim().strip_prefix("fake-bot listening on http://") {
            break url.parse().expect("an address");
        }
    };
    assert!(start_lines.contains("fake-bot seed 42\n"), "{start_lines}");

    let body = common::messages(1, 1..=4);
    let json = [("Content-Type", "application/json")];
    let (status, _) = common::blocking_request(addr, "POST", "/events", &json, &body);
    assert_eq!(status, 401, "the secret comes from FORWARD_SECRET");
    let authorized = [
        ("Content-Type", "application/json"),
        ("Authorization", SECRET),
    ];
    let (status, _) = common::blocking_request(addr, "POST", "/events", &authorized, &body);
    assert_eq!(status, 204);

    let terminated = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(terminated.success());
    let exit = wait_bounded(&mut child.0);
    assert!(exit.success(), "{exit}");

    let mut rest = String::new();
    stdout.read_to_string(&mut rest).expect("stdout");
    let mut stderr = String::new();
    child
        .0
        .stderr
        .take()
        .expect("piped stderr")
        .read_to_string(&mut stderr)
        .expect("stderr");
    let printed = format!("{start_lines}{rest}{stderr}");
    assert!(
        !printed.contains(SECRET),
        "the secret was printed:\n{printed}"
    );
    assert!(
        stderr.contains("records=4"),
        "final summary line:\n{stderr}"
    );

    let report: Report =
        serde_json::from_slice(&std::fs::read(&report_path).expect("report file written"))
            .expect("report file parses");
    let _ = std::fs::remove_file(&report_path);
    assert_eq!(report.seed, 42);
    assert_eq!(report.totals.unauthorized, 1);
    assert_eq!(report.shards[&1].runs[0].ranges, vec![[1, 4]]);
}

#[test]
fn help_documents_every_knob_and_hides_the_secret() {
    let output = Command::new(env!("CARGO_BIN_EXE_fake-bot"))
        .arg("--help")
        .env("FORWARD_SECRET", SECRET)
        .output()
        .expect("the binary runs");
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).expect("utf-8");
    for knob in [
        "--listen",
        "[default: 127.0.0.1:9000]",
        "--secret",
        "[env: FORWARD_SECRET]",
        "--fail-rate",
        "--seed",
        "--slow-ms",
        "--refuse-after-ms",
        "--refuse-for-ms",
        "--max-body-bytes",
        "--report-file",
        "--summary-secs",
        "--redis-url",
        "--stream-key",
        "shardgate:events",
        "--stream-partitions",
        "--group",
        "--consumer",
        "--block-ms",
        "--read-count",
        "--claim-min-idle-ms",
        "--dedup-window",
    ] {
        assert!(help.contains(knob), "{knob} missing from:\n{help}");
    }
    assert!(!help.contains(SECRET));
}

#[test]
fn an_invalid_fail_rate_is_refused_at_parse_time() {
    let output = Command::new(env!("CARGO_BIN_EXE_fake-bot"))
        .args(["--fail-rate", "1.5"])
        .output()
        .expect("the binary runs");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("not a probability"));
}

fn wait_bounded(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + common::WAIT_MAX;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the bot did not exit after SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
