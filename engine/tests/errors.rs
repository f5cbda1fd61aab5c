//! The real `shardgate` binary meeting what a new user meets first: a REST API that accepts and
//! never answers, TLS servers whose certificate the trust store does not know (REST, gateway,
//! bot), a bot that never answers, two processes on one data dir, a start with no session
//! saved. Each message names the cause and the setting that fixes it, and never the token.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{Engine, wait_until};
use fake_bot::{BotConfig, FakeBot};
use mock_gateway::{MockConfig, MockGateway};

const TOKEN: &str = "MTIz.errors-test-token.SECRET";
const CA_FILE_FIX: &str =
    "for a TLS mock gateway or an internal https endpoint, trust its CA with --ca-file <PEM>";

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
        .env_remove("SHARDGATE_REDIS_URL")
        .env("DISCORD_TOKEN", TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// [`shardgate_with_admin`] with the admin API on any free port.
fn shardgate(dir: &Path) -> Command {
    shardgate_with_admin(dir, "127.0.0.1:0")
}

/// A port that was free a moment ago (bound, then let go), for a test that needs to know the
/// admin address in advance.
fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
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
        let mut engine = Engine::new(command.spawn().unwrap());
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

    /// SIGTERM, then the exit status and all of stderr.
    fn terminate(&mut self) -> (ExitStatus, String) {
        let (status, _) = self.engine.terminate();
        (status, self.finish())
    }

    fn finish(&mut self) -> String {
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        self.stderr()
    }
}

/// A sum of one counter over its labels, from the admin API's `/metrics`.
fn metric_total(admin: SocketAddr, name: &str) -> u64 {
    let mut stream = TcpStream::connect(admin).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let prefix = format!("{name}{{");
    answer
        .lines()
        .filter(|line| line.starts_with(&prefix))
        .map(|line| line.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

fn tls_mock(dir: &Path) -> MockGateway {
    MockGateway::spawn(
        MockConfig {
            tls: true,
            // Written, and deliberately not given to the engine.
            ca_out: Some(dir.join("ca.pem")),
            guilds: 2,
            ..MockConfig::default()
        },
        1,
    )
    .unwrap()
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

/// `/gateway/bot` over TLS to a server whose CA is not trusted: the message says so in words
/// and names --ca-file.
#[test]
fn rest_to_an_unknown_certificate_issuer_names_ca_file() {
    let dir = scratch("rest-tls");
    let mock = tls_mock(&dir);
    let mut engine = Running::start(
        shardgate(&dir)
            .args(["--api-base", &mock.api_base()])
            .args(["--forward-url", "http://127.0.0.1:9/"])
            .env("DISCORD_TOKEN", mock.token()),
    );
    let (status, stderr) = engine.exit_within(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "shardgate: GET {}/gateway/bot: TLS: the server's certificate is not trusted: it was \
             not issued by a known certificate authority (Mozilla's roots, plus --ca-file if \
             given); {CA_FILE_FIX}",
            mock.api_base()
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("UnknownIssuer"), "{stderr}");
    assert!(!stderr.contains(mock.token()), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The gateway over TLS without its CA, /gateway/bot not asked (URL and shard count given):
/// the certificate failure shows at warn with the --ca-file fix, once for the process however
/// many shards fail however often, and the shards keep retrying.
#[test]
fn a_gateway_with_an_unknown_certificate_issuer_warns_once_naming_ca_file() {
    let dir = scratch("ws-tls");
    let mock = tls_mock(&dir);
    let admin = free_addr();
    let mut engine = Running::start(
        shardgate_with_admin(&dir, &admin.to_string())
            .args(["--gateway-url", mock.ws_url(), "--total-shards", "2"])
            .args(["--cores", "1", "--forward-url", "http://127.0.0.1:9/"])
            .env("DISCORD_TOKEN", mock.token()),
    );
    engine.wait_for_stderr(CA_FILE_FIX, Duration::from_secs(30));
    // Both shards, several tries each.
    wait_until("several failed connects", Duration::from_secs(40), || {
        metric_total(admin, "shardgate_connect_failures_total") >= 4
    });
    let (status, stderr) = engine.terminate();
    assert!(status.success(), "{status:?}: {stderr}");
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("cannot connect to the gateway"))
        .collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    let warning = warnings[0];
    assert!(warning.contains("WARN"), "{warning}");
    assert!(
        warning.contains(&format!("url={}/", mock.ws_url())),
        "{warning}"
    );
    assert!(
        warning.contains(&format!(
            "error=TLS: the server's certificate is not trusted: it was not issued by a known \
             certificate authority (Mozilla's roots, plus --ca-file if given); {CA_FILE_FIX}"
        )),
        "{warning}"
    );
    assert_eq!(mock.ledger().identifies_total, 0);
    assert!(!stderr.contains(mock.token()), "{stderr}");
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

/// An https --forward-url whose certificate the trust store does not know: the sink's warning
/// says so and names --ca-file.
#[test]
fn an_https_bot_with_an_unknown_certificate_issuer_warns_naming_ca_file() {
    let dir = scratch("forward-tls");
    let mock = plain_mock();
    // A second mock, over TLS, stands in for an https bot with an internal CA.
    let https_bot = tls_mock(&dir);
    let engine = Running::start(
        shardgate(&dir)
            .args(["--api-base", &mock.api_base(), "--total-shards", "1"])
            .args([
                "--forward-url",
                &format!("{}/events", https_bot.http_base()),
            ])
            .args(["--log", "warn"])
            .env("DISCORD_TOKEN", mock.token()),
    );
    engine.wait_for_stderr(CA_FILE_FIX, Duration::from_secs(30));
    let stderr = engine.stderr();
    let warning = stderr
        .lines()
        .find(|line| line.contains(CA_FILE_FIX))
        .unwrap();
    assert!(
        warning.contains("cannot deliver a batch; retrying"),
        "{warning}"
    );
    assert!(
        warning.contains("error=TLS: the server's certificate is not trusted: it was not issued"),
        "{warning}"
    );
    assert!(!stderr.contains(mock.token()), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A second process on a data dir in use, asking for the same admin address: it is told about
/// the data dir (not the port), and asks Discord nothing.
#[test]
fn a_second_process_on_the_same_data_dir_is_refused_before_any_network() {
    let dir = scratch("data-dir-twice");
    let mock = plain_mock();
    let bot = FakeBot::spawn(BotConfig::ephemeral()).unwrap();
    let admin = free_addr().to_string();
    let mut first = Running::start(
        shardgate_with_admin(&dir, &admin)
            .args(["--api-base", &mock.api_base(), "--total-shards", "1"])
            .args(["--forward-url", &bot.url(), "--log", "warn"])
            .env("DISCORD_TOKEN", mock.token()),
    );
    // The admin API listens only after the data dir is locked.
    wait_until(
        "the first engine's admin API",
        Duration::from_secs(30),
        || TcpStream::connect(&admin).is_ok(),
    );
    // Without --total-shards the second would need /gateway/bot: count who asks.
    let (api, contacted) = silent_listener();
    let mut second = Running::start(
        shardgate_with_admin(&dir, &admin)
            .args(["--api-base", &format!("http://{api}/api/v10")])
            .args(["--forward-url", &bot.url()]),
    );
    let (status, stderr) = second.exit_within(Duration::from_secs(20));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "shardgate: --data-dir {}: in use by another shardgate process; give each process \
             its own --data-dir",
            dir.join("data").display()
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("--admin-addr"), "{stderr}");
    assert_eq!(contacted.load(Ordering::SeqCst), 0, "asked /gateway/bot");
    assert!(
        first.engine.0.try_wait().unwrap().is_none(),
        "the first runs on"
    );
    let (status, stderr) = first.terminate();
    assert!(status.success(), "{status:?}: {stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A start after a run that saved no session (its shards never connected) says nothing about
/// resuming; one after a run that saved a session says how many it resumes.
/// A fleet whose Redis does not answer: the start fails at once, naming `--redis-url` and what
/// to check, without the URL's password, and nothing runs.
#[test]
fn a_redis_that_does_not_answer_stops_the_start_naming_redis_url() {
    let dir = scratch("redis-down");
    let mock = plain_mock();
    let bot = FakeBot::spawn(BotConfig::ephemeral()).unwrap();
    // A port nothing listens on.
    let redis = free_addr();
    let mut engine = Running::start(
        shardgate(&dir)
            .args(["--api-base", &mock.api_base(), "--total-shards", "2"])
            .args(["--forward-url", &bot.url()])
            .args(["--redis-url", &format!("redis://:hunter2-secret@{redis}/0")])
            .args(["--host-id", "gateway-1"])
            .env("DISCORD_TOKEN", mock.token()),
    );
    let (status, stderr) = engine.exit_within(Duration::from_secs(20));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "shardgate: cannot reach Redis at redis://{redis}/0 (--redis-url)"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("check that it runs"), "{stderr}");
    assert!(
        !stderr.contains("hunter2"),
        "the password must not show: {stderr}"
    );
    assert_eq!(mock.ledger().connections_total, 0, "no shard connected");
}

#[test]
fn resuming_saved_sessions_is_logged_only_when_there_are_some() {
    let dir = scratch("sessions-log");
    let mock = plain_mock();
    let bot = FakeBot::spawn(BotConfig::ephemeral()).unwrap();
    let against_the_mock = || {
        let mut command = shardgate(&dir);
        command
            .args(["--api-base", &mock.api_base(), "--total-shards", "1"])
            .args(["--forward-url", &bot.url(), "--log", "info"])
            .env("DISCORD_TOKEN", mock.token());
        command
    };
    // 1. A gateway that is not there: the stop saves an empty sessions file.
    let nowhere = format!("ws://{}", free_addr());
    let mut first = Running::start(
        shardgate(&dir)
            .args(["--gateway-url", &nowhere, "--total-shards", "1"])
            .args(["--forward-url", &bot.url(), "--log", "info"]),
    );
    first.wait_for_stderr("sizes per core", Duration::from_secs(30));
    let (status, stderr) = first.terminate();
    assert!(status.success(), "{status:?}: {stderr}");
    assert!(stderr.contains("sessions saved sessions=0"), "{stderr}");

    // 2. Nothing to resume: not a word about resuming.
    let mut second = Running::start(&mut against_the_mock());
    wait_until("the shard to be ready", Duration::from_secs(30), || {
        bot.report().totals.notices.contains_key("SHARD_READY")
    });
    let (status, stderr) = second.terminate();
    assert!(status.success(), "{status:?}: {stderr}");
    assert!(!stderr.contains("resuming saved sessions"), "{stderr}");
    assert!(stderr.contains("sessions saved sessions=1"), "{stderr}");

    // 3. A saved session: the line, with its count, and the session resumes.
    let mut third = Running::start(&mut against_the_mock());
    third.wait_for_stderr("resuming saved sessions", Duration::from_secs(30));
    wait_until(
        "the saved session to resume",
        Duration::from_secs(30),
        || mock.ledger().resumes_total == 1,
    );
    let (status, stderr) = third.terminate();
    assert!(status.success(), "{status:?}: {stderr}");
    let line = stderr
        .lines()
        .find(|line| line.contains("resuming saved sessions"))
        .unwrap();
    assert!(line.contains("sessions=1"), "{line}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// docs/troubleshooting.md quotes every fatal close code's explanation as the engine logs it,
/// so the two cannot drift apart.
#[test]
fn the_troubleshooting_guide_quotes_every_fatal_close_explanation() {
    let guide = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/troubleshooting.md"
    ))
    .unwrap();
    for code in shardgate::shard::FATAL_CLOSE_CODES {
        let explanation = shardgate::shard::fatal_close_explanation(code).unwrap();
        let row = guide
            .lines()
            .find(|line| line.starts_with(&format!("| {code} ")))
            .unwrap_or_else(|| panic!("no table row for {code}"));
        assert!(
            row.contains(explanation),
            "the row for {code} must quote {explanation:?}: {row}"
        );
    }
}
