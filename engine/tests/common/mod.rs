//! What the engine's integration tests share: the real binary pointed at the mock and the
//! bot, and the ledger arithmetic that says what the bot must have received.

#![allow(clippy::unwrap_used, dead_code)] // test helpers fail loudly; not every test uses all

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod redis;

use fake_bot::FakeBot;
use mock_gateway::{Ledger, MockGateway};

pub struct Engine(pub Child);

impl Engine {
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
        let status = self.0.wait().unwrap();
        let mut stderr = String::new();
        if let Some(pipe) = self.0.stderr.as_mut() {
            std::io::Read::read_to_string(pipe, &mut stderr).unwrap();
        }
        (status, stderr)
    }
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
