//! `mock-gateway`: run the Discord gateway simulator by hand or from scripts.
//!
//! Prints the seed and the URLs on stdout (one `key=value` line each, for scripts), serves
//! until SIGINT/SIGTERM, then optionally writes the final ledger.

use std::path::PathBuf;

use clap::Parser;
use mock_gateway::{MockConfig, MockGateway};

/// A faithful, seeded Discord gateway v10 simulator with a ledger of what it sent and every
/// protocol violation it saw. Control API: GET /_mock/ledger, POST /_mock/guilds
/// {"count":N}, POST /_mock/fault {"shard":N,"kind":K}, POST /_mock/resume-url {"down":B}.
#[derive(Parser, Debug)]
#[command(name = "mock-gateway", version)]
struct Cli {
    #[command(flatten)]
    config: MockConfig,

    /// Runtime threads. 1 = everything on one core.
    #[arg(long, default_value_t = 1)]
    threads: usize,

    /// Write the final ledger (JSON) here on exit.
    #[arg(long)]
    ledger_out: Option<PathBuf>,

    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `mock_gateway=debug`.
    #[arg(long, env = "MOCK_LOG", default_value = "info")]
    log: String,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log))
        .with_writer(std::io::stderr)
        // Colour on a terminal only: scripts redirect stderr to files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let mock = match MockGateway::spawn(cli.config, cli.threads) {
        Ok(mock) => mock,
        Err(error) => {
            eprintln!("mock-gateway: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    println!("seed={}", mock.seed());
    println!("ws_url={}", mock.ws_url());
    println!("resume_ws_url={}", mock.resume_ws_url());
    println!("api_base={}", mock.api_base());
    println!("ledger_url={}/_mock/ledger", mock.http_base());
    if let Some(ca) = mock.ca_file() {
        println!("ca_file={}", ca.display());
    }

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("mock-gateway: cannot start the signal runtime: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    runtime.block_on(async {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match terminate.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {}
        }
    });

    let ledger = mock.ledger();
    mock.shutdown();
    eprintln!(
        "mock-gateway: seed={} dispatches={} identifies={} resumes={} violations={}",
        ledger.seed,
        ledger.dispatches_total,
        ledger.identifies_total,
        ledger.resumes_total,
        ledger.violations.len()
    );
    if let Some(path) = cli.ledger_out {
        let written = serde_json::to_vec_pretty(&ledger)
            .map_err(std::io::Error::other)
            .and_then(|json| std::fs::write(&path, json));
        if let Err(error) = written {
            eprintln!(
                "mock-gateway: cannot write the ledger to {}: {error}",
                path.display()
            );
            return std::process::ExitCode::from(1);
        }
    }
    std::process::ExitCode::SUCCESS
}
