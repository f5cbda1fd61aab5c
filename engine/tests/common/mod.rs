//! What the engine's integration tests share: the real binary pointed at the mock and the
//! bot, and the ledger arithmetic that says what the bot must have received.

#![allow(clippy::unwrap_used, dead_code)] // test helpers fail loudly; not every test uses all

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
