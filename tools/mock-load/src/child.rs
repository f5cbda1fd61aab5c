//! Clients in a child process (`--clients-in-child`), so that the driver's own RSS is the
//! mock's alone and the clients' memory and CPU are the child's.
//!
//! The child is this binary's hidden `clients` subcommand. It speaks JSON lines on stdout
//! (`{"phase":"ready"|"snapshot"|"stopped","totals":{…},"rss_kib":N}`) and takes one command
//! per line on stdin (`snapshot`, `stop`; end of input stops too). Progress goes to stderr.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::client::{ClientParams, ClientSet, Compress, Totals};
use crate::procfs;

/// Environment variable carrying the token to the child (kept off its command line).
const TOKEN_ENV: &str = "MOCK_LOAD_TOKEN";

/// The hidden `clients` subcommand.
#[derive(Debug, clap::Args)]
pub struct ChildArgs {
    #[arg(long)]
    ws_url: String,
    #[arg(long)]
    connections: u32,
    #[arg(long, value_enum)]
    compress: Compress,
    #[arg(long)]
    ramp: usize,
    #[arg(long)]
    client_threads: usize,
    #[arg(long)]
    read_buffer: usize,
    #[arg(long)]
    intents: u64,
    #[arg(long)]
    ready_timeout_secs: u64,
}

/// Runs in the child: connects, reports, answers commands until told to stop.
pub fn child_main(args: &ChildArgs) -> anyhow::Result<()> {
    let token = std::env::var(TOKEN_ENV).with_context(|| format!("{TOKEN_ENV} is not set"))?;
    let clients = ClientSet::start(ClientParams {
        ws_url: args.ws_url.clone(),
        token,
        connections: args.connections,
        compress: args.compress,
        ramp: args.ramp,
        threads: args.client_threads,
        read_buffer: args.read_buffer,
        intents: args.intents,
    })?;
    let totals = clients.wait_ready(Duration::from_secs(args.ready_timeout_secs), false);
    let mut stdout = std::io::stdout().lock();
    let mut say = |phase: &str, totals: &Totals| -> anyhow::Result<()> {
        let line = json!({
            "phase": phase,
            "totals": totals.to_json(),
            "rss_kib": procfs::rss_kib(None),
        });
        writeln!(stdout, "{line}")?;
        stdout.flush()?;
        Ok(())
    };
    say("ready", &totals)?;
    let mut lines = std::io::stdin().lock().lines();
    loop {
        match lines.next().transpose()?.as_deref().map(str::trim) {
            Some("snapshot") => say("snapshot", &clients.totals())?,
            Some("stop") | None => break,
            Some(other) => bail!("unknown command `{other}`"),
        }
    }
    let totals = clients.stop(Duration::from_secs(10));
    say("stopped", &totals)
}

/// The driver's handle on a child running the clients.
pub struct ChildClients {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// One answer of the child.
pub struct ChildReport {
    pub totals: Totals,
    pub rss_kib: Option<u64>,
}

impl ChildClients {
    pub fn spawn(params: &ClientParams, ready_timeout: Duration) -> anyhow::Result<ChildClients> {
        let exe = std::env::current_exe().context("cannot find this executable")?;
        let mut child = Command::new(exe)
            .arg("clients")
            .args(["--ws-url", &params.ws_url])
            .args(["--connections", &params.connections.to_string()])
            .args(["--compress", params.compress.name()])
            .args(["--ramp", &params.ramp.to_string()])
            .args(["--client-threads", &params.threads.to_string()])
            .args(["--read-buffer", &params.read_buffer.to_string()])
            .args(["--intents", &params.intents.to_string()])
            .args(["--ready-timeout-secs", &ready_timeout.as_secs().to_string()])
            .env(TOKEN_ENV, &params.token)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start the client process")?;
        let stdin = child.stdin.take().context("child stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("child stdout")?);
        Ok(ChildClients {
            child,
            stdin,
            stdout,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn read(&mut self, phase: &str) -> anyhow::Result<ChildReport> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("the client process ended before `{phase}`");
        }
        let value: Value = serde_json::from_str(&line).context("client process output")?;
        let got = value.get("phase").and_then(Value::as_str);
        if got != Some(phase) {
            bail!("the client process said {got:?}, expected `{phase}`");
        }
        Ok(ChildReport {
            totals: Totals::from_json(value.get("totals").context("no totals")?)?,
            rss_kib: value.get("rss_kib").and_then(Value::as_u64),
        })
    }

    /// Blocks until the child has connected everything (or given up).
    pub fn wait_ready(&mut self) -> anyhow::Result<ChildReport> {
        self.read("ready")
    }

    pub fn snapshot(&mut self) -> anyhow::Result<ChildReport> {
        writeln!(self.stdin, "snapshot")?;
        self.stdin.flush()?;
        self.read("snapshot")
    }

    pub fn stop(mut self) -> anyhow::Result<ChildReport> {
        writeln!(self.stdin, "stop")?;
        self.stdin.flush()?;
        let report = self.read("stopped");
        let _ = self.child.wait();
        report
    }
}

impl Drop for ChildClients {
    fn drop(&mut self) {
        // After `stop` the child has exited and this does nothing; on an early error it must
        // not outlive the driver.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
