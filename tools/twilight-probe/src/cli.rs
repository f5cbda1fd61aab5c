//! Command line: every knob of the probe, validated up front.
//!
//! A usage error exits with code 2 (clap's convention), before any connection is made.

use clap::{CommandFactory, Parser, ValueEnum, error::ErrorKind};
use serde::Serialize;
use tracing_subscriber::filter::LevelFilter;

/// Drive real twilight-gateway 0.18 shards against a (mock) Discord gateway and print one
/// JSON summary on stdout.
///
/// Transport compression is chosen when the probe is built, as twilight does: cargo
/// feature `zstd` (compress=zstd-stream) wins over `zlib` (compress=zlib-stream); with
/// neither, no compression. Exit code: 0 target reached, 1 timeout / signal / shard
/// fatally closed, 2 usage error.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
pub struct Cli {
    /// Gateway base URL, e.g. ws://127.0.0.1:PORT (twilight appends
    /// `/?v=10&encoding=json[&compress=...]` itself; plain ws:// only, no TLS).
    #[arg(long)]
    pub url: String,

    /// Bot token sent in IDENTIFY (twilight prefixes it with "Bot ").
    #[arg(long)]
    pub token: String,

    /// Total number of shards of the bot (`shard: [id, total]` in IDENTIFY).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub total_shards: u32,

    /// Shard ids to run: comma separated ids or ranges, e.g. `0..=3`, `0..4`, `1,3,5`.
    /// Default: all of 0..total-shards.
    #[arg(long)]
    pub shard_ids: Option<String>,

    /// Gateway intents bit set, sent as given (unknown bits are kept).
    #[arg(long)]
    pub intents: u64,

    /// Identify max_concurrency of the shared twilight InMemoryQueue: one IDENTIFY per
    /// bucket (shard_id % K) per 5 s. 0 disables the queue (identify at once).
    #[arg(long)]
    pub max_concurrency: u16,

    /// Stop once every shard got a dispatch with seq >= S in its current session
    /// (verify: after being fully ready; bench: as `shard.session()` tracks it).
    /// Required in bench mode. Verify without it: stop once every shard is fully ready.
    #[arg(long)]
    pub until_seq: Option<u64>,

    /// Verify mode: also wait until this many GUILD_CREATE arrived over all shards.
    #[arg(long)]
    pub guilds_expected: Option<u64>,

    /// Give up after this many seconds (exit code 1).
    #[arg(long, default_value_t = 60)]
    pub timeout_secs: u64,

    /// What to do with the traffic.
    #[arg(long, value_enum, default_value_t = Mode::Verify)]
    pub mode: Mode,

    /// Bench mode: how much of twilight's receive path to run per message.
    #[arg(long, value_enum, default_value_t = BenchParse::Full)]
    pub bench_parse: BenchParse,

    /// Run on a multi-thread tokio runtime with N workers (default: current-thread).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,

    /// Log level of the stderr log (twilight's own logs included): off, error, warn,
    /// info, debug, trace.
    #[arg(long, default_value_t = LevelFilter::WARN)]
    pub log_level: LevelFilter,
}

/// What the probe does with the traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Check the gateway's behaviour: sessions, sequences, heartbeats, closes, errors.
    Verify,
    /// Count events as fast as possible and report throughput, CPU time and peak RSS.
    Bench,
}

/// How much of twilight's receive path bench mode runs per message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BenchParse {
    /// What a twilight bot does: `shard.next_event(EventTypeFlags::all())`, i.e. receive,
    /// decompress, classify and deserialize every event into `twilight_model` types.
    /// Event types twilight does not know are skipped inside `next_event`, uncounted.
    Full,
    /// Receive, decompress and let the shard classify each message (its own op/seq/t
    /// scan), without deserializing events: `Stream::next` on the shard.
    Raw,
}

/// Validated arguments.
#[derive(Debug)]
pub struct Args {
    pub cli: Cli,
    /// Shard ids to run, sorted, unique, all below `cli.total_shards`.
    pub shard_ids: Vec<u32>,
}

impl Args {
    /// Parse and validate the command line; exits with code 2 on a usage error.
    pub fn parse() -> Self {
        let mut cli = Cli::parse();
        cli.url = validate_url(&cli.url).unwrap_or_else(|msg| usage_error(&msg));
        let shard_ids = match &cli.shard_ids {
            Some(spec) => parse_shard_ids(spec, cli.total_shards),
            None => Ok((0..cli.total_shards).collect()),
        }
        .unwrap_or_else(|msg| usage_error(&format!("--shard-ids: {msg}")));
        if cli.mode == Mode::Bench && cli.until_seq.is_none() {
            usage_error("--mode bench needs --until-seq");
        }
        if cli.mode == Mode::Bench && cli.guilds_expected.is_some() {
            usage_error("--guilds-expected is a verify-mode option");
        }
        Self { cli, shard_ids }
    }
}

/// Print a clap-style usage error and exit with code 2.
fn usage_error(msg: &str) -> ! {
    Cli::command().error(ErrorKind::ValueValidation, msg).exit()
}

/// Accept `ws://host:port[/]` and return it without the trailing slash: twilight appends
/// `/?v=10&encoding=json...` to the proxy URL (and to READY's `resume_gateway_url`).
fn validate_url(url: &str) -> Result<String, String> {
    if url.starts_with("wss://") {
        return Err("--url: wss:// needs a TLS feature; this probe is built without TLS".into());
    }
    if !url.starts_with("ws://") {
        return Err(format!("--url: expected ws://host:port, got {url:?}"));
    }
    if url.contains('?') {
        return Err("--url: give the base URL only; twilight appends the query string".into());
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// Parse `0..=3`, `0..4`, `5` and comma separated lists of those.
fn parse_shard_ids(spec: &str, total: u32) -> Result<Vec<u32>, String> {
    let number = |s: &str| s.trim().parse::<u32>().map_err(|e| format!("{s:?}: {e}"));
    let mut ids = Vec::new();
    for part in spec.split(',') {
        let (start, end) = if let Some((a, b)) = part.split_once("..=") {
            (number(a)?, number(b)?)
        } else if let Some((a, b)) = part.split_once("..") {
            let end = number(b)?
                .checked_sub(1)
                .ok_or_else(|| format!("empty range {part:?}"))?;
            (number(a)?, end)
        } else {
            let id = number(part)?;
            (id, id)
        };
        if start > end {
            return Err(format!("empty range {part:?}"));
        }
        if end >= total {
            return Err(format!(
                "shard id {end} is not below --total-shards {total}"
            ));
        }
        ids.extend(start..=end);
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn shard_id_specs() {
        assert_eq!(parse_shard_ids("0..=3", 4).unwrap(), [0, 1, 2, 3]);
        assert_eq!(parse_shard_ids("0..4", 4).unwrap(), [0, 1, 2, 3]);
        assert_eq!(parse_shard_ids("5, 1,3..=4,1", 6).unwrap(), [1, 3, 4, 5]);
        assert!(parse_shard_ids("0..=4", 4).is_err());
        assert!(parse_shard_ids("2..2", 4).is_err());
        assert!(parse_shard_ids("x", 4).is_err());
    }

    #[test]
    fn urls() {
        assert_eq!(
            validate_url("ws://127.0.0.1:1/").unwrap(),
            "ws://127.0.0.1:1"
        );
        assert!(validate_url("wss://gateway.discord.gg").is_err());
        assert!(validate_url("ws://127.0.0.1:1/?v=10").is_err());
        assert!(validate_url("http://x").is_err());
    }
}
