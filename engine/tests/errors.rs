//! The real `shardgate` binary meeting what a new user meets first: a REST API that accepts and
//! never answers, a bot that never answers. Each message names the cause and the setting that fixes it, and never the token.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::Engine;
use mock_gateway::{MockConfig, MockGateway};

const TOKEN: &str = "MTIz.errors-test-token.SECRET";

/// A fresh directory for this test's files (its data dir is `data` inside).
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shardgate-errors-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `shardgate run` with the admin API on `admin`, data in `dir/data`, the test token and no
/// secret inherited from the test process; callers add the rest.
fn shardgate_with_admin(dir: &Path, admin: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_shardgate"));
    command
        .args(["run", "--admin-addr", admin])
        .args(["--data-dir", dir.join("data").to_str().unwrap()])
        .env_remove("FORWARD_SECRET")
        .env_remove("SHARDGATE_ADMIN_TOKEN")
        .env("DISCORD_TOKEN", TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// [`shardgate_with_admin`] with the admin API on any free port.
fn shardgate(dir: &Path) -> Command {
    shardgate_with_admin(dir, "127.0.0.1:0")
}

/// A server that accepts TCP and never says anything; counts the connections it accepted.
fn silent_listener() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    std::thread::spawn({
        let accepted = Arc::clone(&accepted);
        move || {
            // Hold every socket open, read nothing.
            let mut held = Vec::new();
            for stream in listener.incoming() {
                held.push(stream);
                accepted.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    (addr, accepted)
}

/// A running binary whose stderr is collected as it comes (a test can wait for a line while it
/// runs, and a chatty process never blocks on a full pipe).
struct Running {
    engine: Engine,
    stderr: Arc<Mutex<String>>,
    reader: Option<JoinHandle<()>>,
}

impl Running {
    fn start(command: &mut Command) -> Running {
        let mut engine = Engine(command.spawn().unwrap());
        let pipe = engine.0.stderr.take().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let reader = std::thread::spawn({
            let stderr = Arc::clone(&stderr);
            move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { return };
                    let mut text = stderr.lock().unwrap();
                    text.push_str(&line);
                    text.push('\n');
                }
            }
        });
        Running {
            engine,
            stderr,
            reader: Some(reader),
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn wait_for_stderr(&self, what: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.stderr().contains(what) {
            assert!(
                Instant::now() < deadline,
                "no {what:?} on stderr after {timeout:?}:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The exit status and all of stderr, once the process ended on its own within `timeout`.
    fn exit_within(&mut self, timeout: Duration) -> (ExitStatus, String) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.engine.0.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "still running after {timeout:?}:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        (status, self.finish())
    }

    fn finish(&mut self) -> String {
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        self.stderr()
    }
}

fn plain_mock() -> MockGateway {
    MockGateway::spawn(
        MockConfig {
            guilds: 2,
            max_concurrency: 16,
            rate: 50.0,
            ..MockConfig::default()
        },
        1,
    )
    .unwrap()
}

/// `/gateway/bot` on a server that accepts and never answers: after the 10 s REST timeout the
/// engine exits 1 saying it timed out and naming --api-base (not "Resource temporarily
/// unavailable").
#[test]
fn an_api_base_that_never_answers_times_out_naming_the_setting() {
    let dir = scratch("api-silent");
    let (api, accepted) = silent_listener();
    let api_base = format!("http://{api}/api/v10");
    // No --total-shards: the plan needs /gateway/bot.
    let mut engine = Running::start(shardgate(&dir).args([
        "--api-base",
        &api_base,
        "--forward-url",
        "http://127.0.0.1:9/",
    ]));
    let (status, stderr) = engine.exit_within(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "shardgate: GET {api_base}/gateway/bot: waiting for the response: timed out after \
             10 s; check --api-base: nothing there answered in time (Discord's REST API is \
             https://discord.com/api/v10)"
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("os error"), "{stderr}");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    assert!(!stderr.contains(TOKEN), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A bot that accepts and never answers: the sink's warning says the POST timed out, in the
/// unit of the setting it names.
#[test]
fn a_bot_that_never_answers_warns_naming_forward_timeout_ms() {
    let dir = scratch("forward-silent");
    let mock = plain_mock();
    let (bot, accepted) = silent_listener();
    let engine = Running::start(
        shardgate(&dir)
            .args(["--api-base", &mock.api_base(), "--total-shards", "1"])
            .args(["--forward-url", &format!("http://{bot}/events")])
            .args(["--forward-timeout-ms", "300", "--log", "warn"])
            .env("DISCORD_TOKEN", mock.token()),
    );
    engine.wait_for_stderr("(--forward-timeout-ms)", Duration::from_secs(30));
    let stderr = engine.stderr();
    let warning = stderr
        .lines()
        .find(|line| line.contains("(--forward-timeout-ms)"))
        .unwrap();
    assert!(
        warning.contains(
            "error=waiting for the response: timed out after 300 ms (--forward-timeout-ms)"
        ),
        "{warning}"
    );
    assert!(
        warning.contains("cannot deliver a batch; retrying"),
        "{warning}"
    );
    assert!(accepted.load(Ordering::SeqCst) >= 1);
    assert!(!stderr.contains(mock.token()), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
