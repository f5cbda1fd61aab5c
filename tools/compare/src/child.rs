//! A measured client process: started with its stderr in a file, polled, stopped with SIGTERM,
//! and killed if the driver gives up on it (never left running).
//!
//! Must not: pipe stderr (a chatty child would block on a full pipe and distort the run).

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::POLL_INTERVAL;

/// How long a child may take to exit after SIGTERM before it is killed.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// Lines of the child's stderr quoted in a failure.
const STDERR_TAIL_LINES: usize = 5;

pub struct Child {
    process: std::process::Child,
    stderr_path: PathBuf,
    exited: bool,
}

impl Child {
    /// Spawns `command`, whose stderr the caller pointed at `stderr_path`.
    pub fn spawn(command: &mut Command, stderr_path: &Path) -> anyhow::Result<Child> {
        Ok(Child {
            process: command.spawn()?,
            stderr_path: stderr_path.to_owned(),
            exited: false,
        })
    }

    /// The child's stdout, when the command piped it.
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.process.stdout.take()
    }

    pub fn id(&self) -> u32 {
        self.process.id()
    }

    /// The exit status if the child has exited.
    pub fn try_wait(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        let status = self.process.try_wait().context("polling the child")?;
        self.exited |= status.is_some();
        Ok(status)
    }

    /// Waits for the child to exit on its own, killing it after `timeout`.
    pub fn wait_for(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                self.kill();
                bail!(
                    "still running after {timeout:?}; killed{}",
                    self.stderr_tail()
                );
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// SIGTERM (through kill(1): no `unsafe` for libc), then waits at most `grace`.
    pub fn terminate(&mut self, grace: Duration) -> anyhow::Result<ExitStatus> {
        let sent = Command::new("kill")
            .args(["-TERM", &self.id().to_string()])
            .status()
            .context("running kill -TERM")?;
        if !sent.success() {
            bail!("kill -TERM {} failed ({sent})", self.id());
        }
        self.wait_for(grace)
    }

    /// The last lines of the child's stderr, as a suffix for an error message ("" if none).
    pub fn stderr_tail(&self) -> String {
        let mut text = String::new();
        if std::fs::File::open(&self.stderr_path)
            .and_then(|mut file| file.read_to_string(&mut text))
            .is_err()
        {
            return String::new();
        }
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        if lines.is_empty() {
            return String::new();
        }
        let tail = &lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..];
        format!("; stderr: {}", tail.join(" / "))
    }

    fn kill(&mut self) {
        // Errors here mean it is already gone, which is what we want.
        let _ = self.process.kill();
        let _ = self.process.wait();
        self.exited = true;
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if !self.exited {
            self.kill();
        }
    }
}
