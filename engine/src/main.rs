//! The `shardgate` binary: command line, settings, and the runtime.
//!
//! Exit codes: 0 success (`run --check` with valid settings, `--help`), 1 the engine could not
//! run (startup failed, a shard stopped on a fatal close code, or records were dropped at
//! shutdown), 2 a usage or settings error, printed to stderr as
//! `shardgate: <error>` (clap prints its own usage errors).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use shardgate::config::{DemoArgs, RunArgs, Settings};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A thread-per-core Discord gateway engine: holds the shards' sessions, filters their events
/// and forwards them in batches to the bot.
#[derive(Debug, Parser)]
#[command(
    name = "shardgate",
    version,
    after_help = "Exit codes: 0 success, 1 the engine could not run, 2 usage or settings error."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
// Parsed once at startup; boxing the larger variant would buy nothing.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Run the engine: hold the sessions of this process's shards and forward their events.
    ///
    /// Settings come from flags, then the three secrets' environment variables, then the
    /// --config TOML file, then the defaults.
    Run {
        /// Check the settings, print the resolved summary (no secrets) and exit: 0 when valid,
        /// 2 with the problem otherwise. Reads the --config file and --ca-file; contacts nothing.
        #[arg(long)]
        check: bool,

        #[command(flatten)]
        args: RunArgs,
    },
    /// Run the whole pipeline on this machine against a built-in simulated Discord and bot,
    /// without a token, with live progress and a per-second summary.
    Demo(DemoArgs),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run { check, args } => run(&args, check),
        Command::Demo(args) => demo(&args),
    }
}

fn run(args: &RunArgs, check: bool) -> ExitCode {
    let settings = match Settings::from_process(args) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("shardgate: {error}");
            return ExitCode::from(2);
        }
    };
    if check {
        for (key, value) in settings.summary_fields() {
            println!("{key}={value}");
        }
        return ExitCode::SUCCESS;
    }
    init_logging(&settings);
    match shardgate::runtime::run(settings) {
        Ok(summary) => {
            tracing::info!(
                delivered = summary.records_delivered,
                dropped_at_shutdown = summary.records_dropped_shutdown,
                shards_fatal = summary.shards_fatal,
                "stopped"
            );
            if let Some(message) = summary.fatal_message() {
                eprintln!("shardgate: {message}");
            }
            if summary.records_dropped_shutdown > 0 || summary.shards_fatal > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        // A plan that only fails against Discord's answer (`--shards` past an `auto` count)
        // is still a settings error.
        Err(error @ shardgate::runtime::RunError::Plan(_)) => {
            eprintln!("shardgate: {error}");
            ExitCode::from(2)
        }
        Err(error) => {
            eprintln!("shardgate: {error}");
            ExitCode::from(1)
        }
    }
}

/// Logs go to stderr; `--log` is an EnvFilter, `--log-format` pretty or json.
fn init_logging(settings: &Settings) {
    let filter = tracing_subscriber::EnvFilter::new(&settings.log);
    // Colours only for a person at a terminal, never into a file or a journal.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match settings.log_format {
        shardgate::config::LogFormat::Json => builder.json().init(),
        shardgate::config::LogFormat::Pretty => builder.init(),
    }
}

#[cfg(feature = "demo")]
fn demo(args: &DemoArgs) -> ExitCode {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    // Only warnings and errors: the demo's own lines are the show. RUST_LOG overrides.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let interrupt = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let registered =
            signal_hook::flag::register_conditional_shutdown(signal, 130, Arc::clone(&interrupt))
                .and_then(|_| signal_hook::flag::register(signal, Arc::clone(&interrupt)));
        if let Err(error) = registered {
            eprintln!("shardgate: cannot install the signal handlers: {error}");
            return ExitCode::from(1);
        }
    }
    match shardgate::demo::run(args, interrupt) {
        Ok(outcome) if outcome.clean => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(error) => {
            eprintln!("shardgate: {error}");
            ExitCode::from(1)
        }
    }
}

#[cfg(not(feature = "demo"))]
fn demo(_args: &DemoArgs) -> ExitCode {
    eprintln!(
        "shardgate: this binary was built without the demo; build it with the default \
         features (cargo build --release -p shardgate)"
    );
    ExitCode::from(2)
}
