//! What the engine's integration tests share: the real binary pointed at the mock and the
//! bot, and the ledger arithmetic that says what the bot must have received.

#![allow(clippy::unwrap_used, dead_code)] // test helpers fail loudly; not every test uses all

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub mod redis;

use fake_bot::FakeBot;
use mock_gateway::{Ledger, MockGateway};

/// A running engine, killed when dropped; the second field drains its stderr when
/// [`Engine::spawn_with_admin`] read the admin address from it.
pub struct Engine(pub Child, Option<StderrDrain>);

/// A thread reading an engine's stderr to its end, keeping the text for [`Engine::terminate`].
struct StderrDrain {
    text: Arc<Mutex<String>>,
    thread: Option<JoinHandle<()>>,
}

/// A `--log` filter that lets through, beside warnings and errors, the admin API's start line
/// that [`Engine::spawn_with_admin`] reads.
pub const LOG_WARN_AND_ADMIN: &str = "warn,shardgate::admin=info";

impl Engine {
    pub fn new(child: Child) -> Engine {
        Engine(child, None)
    }

    /// Spawns `command` with its admin API on a port the engine picks (`--admin-addr
    /// 127.0.0.1:0`, which the command must not give otherwise) and returns the engine with the
    /// address it bound, read from its "admin API listening" line; the command's `--log` must
    /// let that line through (info from `shardgate::admin`, e.g. [`LOG_WARN_AND_ADMIN`]). Unlike
    /// a port found free and handed over, no other process can take it in between (tests run side
    /// by side). stderr is then read to its end by a thread; [`terminate`](Self::terminate)
    /// returns it as for an engine spawned with stderr piped.
    pub fn spawn_with_admin(command: &mut Command) -> (Engine, SocketAddr) {
        let mut child = command
            .args(["--admin-addr", "127.0.0.1:0"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let text = Arc::new(Mutex::new(String::new()));
        let (found, admin) = mpsc::channel();
        let thread = {
            let text = Arc::clone(&text);
            std::thread::spawn(move || drain_stderr(stderr, &text, &found))
        };
        let mut engine = Engine(
            child,
            Some(StderrDrain {
                text,
                thread: Some(thread),
            }),
        );
        match admin.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => (engine, addr),
            Err(_) => {
                let _ = engine.0.kill();
                let (_, stderr) = engine.terminate_output();
                panic!("the engine logged no admin address within 30 s; its stderr:\n{stderr}")
            }
        }
    }

    /// SIGTERM, then the exit status and whatever it wrote to stderr (if piped).
    pub fn terminate(&mut self) -> (std::process::ExitStatus, String) {
        let pid = self.0.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        self.terminate_output()
    }

    /// The engine's stderr once it has exited on its own; `None` while it runs.
    pub fn exited(&mut self) -> Option<String> {
        self.0.try_wait().unwrap()?;
        Some(self.terminate_output().1)
    }

    /// The exit status, once the engine has exited, and its stderr.
    fn terminate_output(&mut self) -> (std::process::ExitStatus, String) {
        let status = self.0.wait().unwrap();
        let mut stderr = String::new();
        if let Some(pipe) = self.0.stderr.as_mut() {
            std::io::Read::read_to_string(pipe, &mut stderr).unwrap();
        }
        if let Some(drain) = self.1.as_mut() {
            // The pipe ends with the process (the engine starts no children).
            if let Some(thread) = drain.thread.take() {
                thread.join().unwrap();
            }
            stderr = std::mem::take(&mut *drain.text.lock().unwrap());
        }
        (status, stderr)
    }
}

/// Reads `stderr` line by line into `text` and sends the address of the first "admin API
/// listening" line (text or JSON format) to `found`.
fn drain_stderr(stderr: ChildStderr, text: &Mutex<String>, found: &mpsc::Sender<SocketAddr>) {
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    let mut sent = false;
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&line);
        if !sent
            && line.contains("admin API listening")
            && let Some(addr) = loopback_addr(&line)
        {
            sent = found.send(addr).is_ok();
        }
        text.lock().unwrap().push_str(&line);
    }
}

/// The first `127.0.0.1:PORT` in `line`.
fn loopback_addr(line: &str) -> Option<SocketAddr> {
    let start = line.find("127.0.0.1:")?;
    let rest = &line[start + "127.0.0.1:".len()..];
    let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    format!("127.0.0.1:{}", &rest[..digits]).parse().ok()
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Seqs the bot must get for a shard: everything the mock sent in its first session minus the
/// redundant updates.
pub fn expected(ledger: &Ledger, shard: u32) -> BTreeSet<u64> {
    ledger.shards[&shard].sessions[0].expected_seqs()
}

/// `shardgate run` pointed at the mock (REST over TLS, its CA trusted) and the bot, with the
/// mock's token, data in `dir` and warnings only; callers add what differs.
pub fn engine_command(mock: &MockGateway, bot: &FakeBot, dir: &std::path::Path) -> Command {
    let mut command = bare_engine_command(mock, bot, dir);
    command.args(["--data-dir", dir.to_str().unwrap(), "--log", "warn"]);
    command
}

/// [`engine_command`] without `--data-dir` and `--log`; the admin API on any free port (tests
/// run side by side).
pub fn bare_engine_command(mock: &MockGateway, bot: &FakeBot, dir: &std::path::Path) -> Command {
    let mut command = command_without_admin(mock, bot, dir);
    command.args(["--admin-addr", "127.0.0.1:0"]);
    command
}

/// [`bare_engine_command`] without `--admin-addr`.
pub fn command_without_admin(mock: &MockGateway, bot: &FakeBot, dir: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_shardgate"));
    command
        .args([
            "run",
            "--api-base",
            &mock.api_base(),
            "--forward-url",
            &bot.url(),
        ])
        .args(["--ca-file", dir.join("ca.pem").to_str().unwrap()])
        .env("DISCORD_TOKEN", mock.token())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// A free loopback port (bound, then released for the engine to bind).
pub fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// One HTTP/1.1 request; the status, headers and body of the answer.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> (u16, Vec<(String, String)>, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|line| line.split_once(": "))
        .map(|(name, value)| (name.to_ascii_lowercase(), value.to_owned()))
        .collect();
    (status, headers, body.to_owned())
}
