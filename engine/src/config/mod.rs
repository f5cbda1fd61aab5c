//! Settings stage: everything `shardgate run` is told, resolved once at startup.
//!
//! [`RunArgs`] is what the operator wrote (flags, the secrets' environment variables, the
//! `--config` TOML file). [`Settings::load`] merges the sources (flag > environment > file >
//! default), parses and checks every value and every combination, and returns a typed
//! [`Settings`] or the first [`ConfigError`], whose message names the setting and the fix.
//!
//! Must not: read the process environment, touch the file system, print or exit inside
//! [`Settings::load`]. Those belong to [`Environment::from_process`], [`ConfigFile::read`],
//! [`Settings::check_files`] and `main.rs`, so tests drive `load` with explicit inputs. Secrets
//! ([`Token`], [`Secret`]) never appear in a `Debug`, a summary or an error.

mod args;
mod error;
mod names;
mod routes;
mod types;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use args::{
    DemoArgs, ENV_ADMIN_TOKEN, ENV_FORWARD_SECRET, ENV_REDIS_URL, ENV_TOKEN, FILE_KEYS, RawValue,
    RunArgs,
};
pub use error::{ConfigError, Origin};
pub use names::{EVENT_NAMES, INTENTS};
pub use routes::{DEFAULT_ROUTE, ROUTE_KEYS, RouteSettings};
pub use types::{Events, Intents, LogFormat, Secret, ShardPlan, ShardRange, SinkKind, TotalShards};

use crate::decode::Compression;
use crate::shard::Token;
use crate::spill::{FsyncPolicy, SpillConfig};

/// The resolved settings of `shardgate run`: every value parsed, defaulted and checked.
///
/// The knobs are documented (purpose, default, memory cost) on the matching [`RunArgs`] field,
/// which is also their `--help` text; the defaults are the `DEFAULT_*` constants below.
/// `Debug` is safe to log: the secrets print as `[redacted]`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `--token`.
    pub token: Token,
    /// `--api-base`, without a trailing `/`.
    pub api_base: String,
    /// `--gateway-url`, without a trailing `/`; `None`: the URL from `/gateway/bot`.
    pub gateway_url: Option<String>,
    /// `--total-shards`.
    pub total_shards: TotalShards,
    /// `--shards`; `None`: all of the bot's shards. [`Settings::plan`] resolves it.
    pub shards: Option<ShardRange>,
    /// `--cores`: at most [`Settings::cpus_available`].
    pub cores: u32,
    /// CPUs this process may run on, as seen by [`Environment`].
    pub cpus_available: usize,
    /// `--shards-per-core`; `None`: spread evenly. [`Settings::plan`] resolves it.
    pub shards_per_core: Option<u32>,
    /// `--read-coalesce-ms`; 0 is off.
    pub read_coalesce_ms: u64,
    /// `--compression`.
    pub compression: Compression,
    /// `--intents`.
    pub intents: Intents,
    /// `--events`.
    pub events: Events,
    /// `--dedup-message-updates`.
    pub dedup_message_updates: bool,
    /// `--dedup-cache-entries`, per core; `None`: sized from the core's shards
    /// ([`Settings::dedup_cache_entries_for`]).
    pub dedup_cache_entries: Option<usize>,
    /// `--large-threshold`, 50..=250.
    pub large_threshold: u16,
    /// `--payload-bytes-max`.
    pub payload_bytes_max: usize,
    /// `--ring-capacity`, records per core; `None`: sized from the core's shards
    /// ([`Settings::ring_capacity_for`]).
    pub ring_capacity: Option<usize>,
    /// `--forward-url`; empty when `sink` is [`SinkKind::RedisStreams`] and none was given
    /// (that sink does not use it).
    pub forward_url: String,
    /// `--forward-secret`.
    pub forward_secret: Option<Secret>,
    /// `--forward-timeout-ms`.
    pub forward_timeout_ms: u64,
    /// `--batch-events-max`.
    pub batch_events_max: usize,
    /// `--batch-bytes-max`.
    pub batch_bytes_max: usize,
    /// `--batch-linger-ms`.
    pub batch_linger_ms: u64,
    /// `--data-dir`.
    pub data_dir: PathBuf,
    /// `--queue-bytes-max`: payload bytes held in memory for the bot; at least
    /// `batch_bytes_max`.
    pub queue_bytes_max: u64,
    /// `--spill-bytes-max`: 0 (no spill: a full memory queue backpressures the cores) or at
    /// least [`Settings::SPILL_BYTES_MIN`]. See [`Settings::spill_config`].
    pub spill_bytes_max: u64,
    /// `--spill-fsync`.
    pub spill_fsync: FsyncPolicy,
    /// `--backlog-rate`, records per second while a backlog drains; 0: unlimited.
    pub backlog_rate: u32,
    /// `--batches-in-flight`, 1..=[`Settings::BATCHES_IN_FLIGHT_MAX`]: the delivery lanes.
    pub batches_in_flight: u32,
    /// `--session-save-interval-ms`, 100..=60000.
    pub session_save_interval_ms: u64,
    /// `--sink`: where the records go. [`SinkKind::RedisStreams`] always has `redis_url`, and is
    /// a fleet only with `--fleet on`.
    pub sink: SinkKind,
    /// `--stream-key`: the stream keys' prefix, 1 to [`Settings::STREAM_KEY_CHARS_MAX`]
    /// printable ASCII characters without spaces: the streams are
    /// `{stream_key}:{partition}`, a shard's partition `shard_id % stream_partitions`.
    pub stream_key: String,
    /// `--stream-partitions`, 1..=[`Settings::STREAM_PARTITIONS_MAX`].
    pub stream_partitions: u32,
    /// `--stream-maxlen`: each stream is trimmed to about this many entries (`XADD MAXLEN ~`),
    /// [`Settings::STREAM_MAXLEN_MIN`]..=[`Settings::STREAM_MAXLEN_MAX`].
    pub stream_maxlen: u64,
    /// The `[routes.NAME]` tables of the config file, in name order (see [`routes`]); the
    /// default route is the top-level settings ([`Settings::default_route`]).
    pub routes: Vec<RouteSettings>,
    /// `--admin-addr`.
    pub admin_addr: SocketAddr,
    /// `--admin-token`; always set when `admin_addr` is not loopback.
    pub admin_token: Option<Secret>,
    /// `--ca-file`.
    pub ca_file: Option<PathBuf>,
    /// `--log`, a valid tracing `EnvFilter`.
    pub log: String,
    /// `--log-format`.
    pub log_format: LogFormat,
    /// `--identify-interval-ms` (tests only); below 5000 only against a mock.
    pub identify_interval_ms: u64,
    /// `--reshard`: automatic resharding on.
    pub reshard_automatic: bool,
    /// `--reshard-at-percent`.
    pub reshard_at_percent: u8,
    /// `--reshard-check-interval`.
    pub reshard_check_interval: Duration,
    /// The hidden `--reshard-guilds-per-shard` (Discord's 2500).
    pub reshard_guilds_per_shard: u32,
    /// The hidden `--reshard-cooldown`.
    pub reshard_cooldown: Duration,
    /// `--fleet` resolved: auto is on when `redis_url` is set and `sink` is
    /// [`SinkKind::Http`]; on always has `redis_url`. `false`: this process runs alone.
    pub fleet: bool,
    /// `--redis-url`, checked to be a Redis URL: the fleet's Redis when `fleet`, the streams'
    /// with [`SinkKind::RedisStreams`]; `None`: neither.
    pub redis_url: Option<Secret>,
    /// `--cluster-name`: 1 to 64 of `[A-Za-z0-9._-]`.
    pub cluster_name: String,
    /// `--host-id` as given (1 to 64 of `[A-Za-z0-9._-]`); `None`: the hostname.
    /// [`Settings::host_id`] resolves it.
    pub host_id: Option<String>,
    /// This machine's hostname as seen by [`Environment`], or [`Settings::HOSTNAME_FALLBACK`]:
    /// the default of `--host-id`. Checked only in the fleet mode with no `--host-id`.
    pub hostname: String,
    /// `--host-lease-ms`, 500..=600000.
    pub host_lease_ms: u64,
    /// `--shard-lease-ms`, 1000..=600000, at least `host_lease_ms`.
    pub shard_lease_ms: u64,
    /// `--moves-per-minute`, 1..=100000.
    pub moves_per_minute: u32,
    /// `--host-capacity`, at least 1; `None`: as many shards as the bot has (equal weights).
    pub host_capacity: Option<u32>,
}

/// `per_shard` for each of `shards` (at least one), at most `max`; `max` when `shards` is not
/// known.
fn per_shard_size(per_shard: usize, max: usize, shards: Option<u32>) -> usize {
    shards.map_or(max, |shards| {
        per_shard
            .saturating_mul(usize::try_from(shards.max(1)).unwrap_or(usize::MAX))
            .min(max)
    })
}

impl Settings {
    /// Default of `--api-base`.
    pub const DEFAULT_API_BASE: &str = "https://discord.com/api/v10";
    /// Default of `--dedup-message-updates`.
    pub const DEFAULT_DEDUP_MESSAGE_UPDATES: bool = true;
    /// Default of `--dedup-cache-entries` for a core whose shards are not known at start (a
    /// fleet host's: the fleet places them later), and the most the per-shard default gives.
    pub const DEFAULT_DEDUP_CACHE_ENTRIES: usize = 65_536;
    /// Default of `--dedup-cache-entries`, per shard a core runs at start: 8,192 messages of
    /// history per shard, seconds even at thousands of messages per second per shard (embed
    /// unfurls follow their message within seconds).
    pub const DEDUP_CACHE_ENTRIES_PER_SHARD: usize = 8_192;
    /// Default of `--large-threshold` (Discord's own default).
    pub const DEFAULT_LARGE_THRESHOLD: u16 = 50;
    /// Default of `--payload-bytes-max`: 32 MiB.
    pub const DEFAULT_PAYLOAD_BYTES_MAX: usize = 32 << 20;
    /// Default of `--read-coalesce-ms`.
    pub const DEFAULT_READ_COALESCE_MS: u64 = 20;
    /// Default of `--ring-capacity` for a core whose shards are not known at start (a fleet
    /// host's), and the most the per-shard default gives.
    pub const DEFAULT_RING_CAPACITY: usize = 8_192;
    /// Default of `--ring-capacity`, per shard a core runs at start.
    pub const RING_RECORDS_PER_SHARD: usize = 1_024;
    /// Default of `--forward-timeout-ms`.
    pub const DEFAULT_FORWARD_TIMEOUT_MS: u64 = 10_000;
    /// Default of `--batch-events-max`.
    pub const DEFAULT_BATCH_EVENTS_MAX: usize = 500;
    /// Default of `--batch-bytes-max`: 1 MiB.
    pub const DEFAULT_BATCH_BYTES_MAX: usize = 1 << 20;
    /// Default of `--batch-linger-ms`.
    pub const DEFAULT_BATCH_LINGER_MS: u64 = 5;
    /// Default of `--data-dir`.
    pub const DEFAULT_DATA_DIR: &str = "./data";
    /// Default of `--queue-bytes-max`: 64 MiB, 64 default batches.
    pub const DEFAULT_QUEUE_BYTES_MAX: u64 = 64 << 20;
    /// Largest `--queue-bytes-max`: 1 TiB.
    pub const QUEUE_BYTES_MAX_LIMIT: u64 = 1 << 40;
    /// Default of `--spill-bytes-max`: 1 GiB.
    pub const DEFAULT_SPILL_BYTES_MAX: u64 = SpillConfig::DEFAULT_MAX_BYTES;
    /// Smallest non-zero `--spill-bytes-max`: 1 MiB (four 256 KiB segments).
    pub const SPILL_BYTES_MIN: u64 = 1 << 20;
    /// Largest `--spill-bytes-max`: 1 PiB.
    pub const SPILL_BYTES_MAX_LIMIT: u64 = 1 << 50;
    /// Largest spill segment: 64 MiB, used from a 256 MiB spill up.
    pub const SPILL_SEGMENT_BYTES_MAX: u64 = SpillConfig::DEFAULT_SEGMENT_BYTES;
    /// Default of `--spill-fsync`: `1000ms`.
    pub const DEFAULT_SPILL_FSYNC: FsyncPolicy = SpillConfig::DEFAULT_FSYNC;
    /// Default of `--backlog-rate`, records per second.
    pub const DEFAULT_BACKLOG_RATE: u32 = 20_000;
    /// Default of `--batches-in-flight`.
    pub const DEFAULT_BATCHES_IN_FLIGHT: u32 = 4;
    /// Most `--batches-in-flight`.
    pub const BATCHES_IN_FLIGHT_MAX: u32 = 64;
    /// Default of `--session-save-interval-ms`.
    pub const DEFAULT_SESSION_SAVE_INTERVAL_MS: u64 = 1_000;
    /// Default of `--stream-key`.
    pub const DEFAULT_STREAM_KEY: &str = "shardgate:events";
    /// Longest `--stream-key`, in characters.
    pub const STREAM_KEY_CHARS_MAX: usize = 200;
    /// Default of `--stream-partitions`: one stream, so one consumer sees every shard in order.
    pub const DEFAULT_STREAM_PARTITIONS: u32 = 1;
    /// Most `--stream-partitions`.
    pub const STREAM_PARTITIONS_MAX: u32 = 1_024;
    /// Default of `--stream-maxlen`: about a million records per stream (about 1 GB of ~1 KB
    /// dispatches in Redis).
    pub const DEFAULT_STREAM_MAXLEN: u64 = 1_000_000;
    /// Smallest `--stream-maxlen` (`MAXLEN ~` trims whole radix-tree nodes of about 100).
    pub const STREAM_MAXLEN_MIN: u64 = 1_000;
    /// Largest `--stream-maxlen`.
    pub const STREAM_MAXLEN_MAX: u64 = 1_000_000_000;
    /// Default of `--admin-addr`.
    pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:7878";
    /// Default of `--log`.
    pub const DEFAULT_LOG: &str = "info";
    /// Default of `--identify-interval-ms`: Discord's identify window.
    pub const DEFAULT_IDENTIFY_INTERVAL_MS: u64 = 5_000;
    /// Default of `--reshard-at-percent`.
    pub const DEFAULT_RESHARD_AT_PERCENT: u8 = 80;
    /// Default of `--reshard-check-interval`.
    pub const DEFAULT_RESHARD_CHECK_INTERVAL: Duration = Duration::from_secs(3600);
    /// Default of `--cluster-name`.
    pub const DEFAULT_CLUSTER_NAME: &str = "shardgate";
    /// The hostname, and so the default `--host-id`, when [`Environment`] has none.
    pub const HOSTNAME_FALLBACK: &str = "host";
    /// Default of `--host-lease-ms`.
    pub const DEFAULT_HOST_LEASE_MS: u64 = 10_000;
    /// Default of `--shard-lease-ms`.
    pub const DEFAULT_SHARD_LEASE_MS: u64 = 15_000;
    /// Default of `--moves-per-minute`.
    pub const DEFAULT_MOVES_PER_MINUTE: u32 = 60;
    /// Longest `--cluster-name` and `--host-id`, in characters.
    pub const FLEET_NAME_CHARS_MAX: usize = 64;

    /// Resolves `args` (flags), `env` (environment variables and CPU count) and `file` (the
    /// `--config` file's text, when there is one) into settings.
    ///
    /// Each setting takes the first of: its flag, its environment variable (only the secrets
    /// have one), its file key, its default. Checks run in this order and the first failure is
    /// returned: the file (TOML syntax, unknown keys), every value on its own, the required
    /// settings (`--token`; `--forward-url` with `--sink http`, `--redis-url` with `--sink
    /// redis-streams` or `--fleet on`), then combinations (shards against the shard count,
    /// placement, the memory queue against the batch size, admin exposure, the identify window,
    /// stream settings without `--sink redis-streams`, fleet settings with the fleet mode off,
    /// the shard lease against the host lease, the hostname as the default host id). Pure: no I/O, no
    /// process environment.
    pub fn load(
        args: &RunArgs,
        env: &Environment,
        file: Option<&ConfigFile>,
    ) -> Result<Self, ConfigError> {
        let parsed = file.map(ConfigFile::parse).transpose()?;
        let (file_args, route_tables) = match parsed {
            Some((args, routes)) => (Some(args), routes),
            None => (None, None),
        };
        let src = Sources {
            flags: args,
            file: file
                .zip(file_args.as_ref())
                .map(|(file, args)| (file.path(), args)),
        };

        // Discord.
        let token = src
            .secret("--token", ENV_TOKEN, env, |a| {
                a.token.as_ref().map(Token::expose_secret)
            })?
            .map(checked_token)
            .transpose()?
            .map(Token::new);
        let api_base = match src.get(|a| &a.api_base) {
            Some(input) => base_url(parse_url("--api-base", &input, HTTP_SCHEMES, true)?),
            None => Self::DEFAULT_API_BASE.to_owned(),
        };
        let gateway_url = src
            .get(|a| &a.gateway_url)
            .map(|input| parse_url("--gateway-url", &input, WS_SCHEMES, false).map(base_url))
            .transpose()?;
        let total_shards = match src.get(|a| &a.total_shards) {
            Some(input) => parse_total_shards(&input)?,
            None => TotalShards::Auto,
        };
        let shards = match src.get(|a| &a.shards) {
            Some(input) => parse_shards(&input)?,
            None => None,
        };
        let compression = match src.get(|a| &a.compression) {
            Some(input) => {
                input.choice("--compression", "zstd-stream, zlib-stream, payload, none")?
            }
            None => Compression::default(),
        };
        let intents = match src.get(|a| &a.intents) {
            Some(input) => parse_intents(&input)?,
            None => Intents::default(),
        };
        let events = match src.get(|a| &a.events) {
            Some(input) => parse_events(&input)?,
            None => Events::All,
        };

        // Placement.
        let cpus_available = env.cpus_available();
        let cores = match src.get(|a| &a.cores) {
            Some(input) => {
                let cores = input.number("--cores", 1, None, u64::from(u32::MAX), 1)?;
                if cores > cpus_available as u64 {
                    return Err(ConfigError::CoresExceedCpus {
                        cores,
                        cpus: cpus_available,
                    });
                }
                u32::try_from(cores).expect("bounded by u32::MAX above")
            }
            None => u32::try_from(cpus_available).unwrap_or(u32::MAX),
        };
        let shards_per_core = src
            .get(|a| &a.shards_per_core)
            .map(|input| input.number_u32("--shards-per-core", 1, None, 1))
            .transpose()?;
        let read_coalesce_ms = src.millis(
            |a| &a.read_coalesce_ms,
            "--read-coalesce-ms",
            0,
            1_000,
            Self::DEFAULT_READ_COALESCE_MS,
        )?;

        // Filtering.
        let dedup_message_updates = match src.get(|a| &a.dedup_message_updates) {
            Some(input) => parse_switch("--dedup-message-updates", &input)?,
            None => Self::DEFAULT_DEDUP_MESSAGE_UPDATES,
        };
        let dedup_cache_entries = src.optional_size(
            |a| &a.dedup_cache_entries,
            "--dedup-cache-entries",
            1,
            1 << 24,
            Self::DEFAULT_DEDUP_CACHE_ENTRIES,
        )?;
        let large_threshold = match src.get(|a| &a.large_threshold) {
            Some(input) => {
                let example = u64::from(Self::DEFAULT_LARGE_THRESHOLD);
                let value = input.number("--large-threshold", 50, Some(250), 250, example)?;
                u16::try_from(value).expect("bounded by 250 above")
            }
            None => Self::DEFAULT_LARGE_THRESHOLD,
        };
        let payload_bytes_max = src.size(
            |a| &a.payload_bytes_max,
            "--payload-bytes-max",
            1 << 10,
            1 << 30,
            Self::DEFAULT_PAYLOAD_BYTES_MAX,
        )?;

        // Forwarding.
        let ring_capacity = src.optional_size(
            |a| &a.ring_capacity,
            "--ring-capacity",
            1,
            1 << 24,
            Self::DEFAULT_RING_CAPACITY,
        )?;
        let forward_url = src
            .get(|a| &a.forward_url)
            .map(|input| parse_url("--forward-url", &input, HTTP_SCHEMES, true))
            .transpose()?;
        let forward_secret = src
            .secret("--forward-secret", ENV_FORWARD_SECRET, env, |a| {
                a.forward_secret.as_ref().map(Secret::expose_secret)
            })?
            .map(Secret::new);
        let forward_timeout_ms = src.millis(
            |a| &a.forward_timeout_ms,
            "--forward-timeout-ms",
            1,
            600_000,
            Self::DEFAULT_FORWARD_TIMEOUT_MS,
        )?;
        let batch_events_max = match src.get(|a| &a.batch_events_max) {
            Some(input) => {
                let value = input.number(
                    "--batch-events-max",
                    1,
                    None,
                    u64::from(u32::MAX),
                    Self::DEFAULT_BATCH_EVENTS_MAX as u64,
                )?;
                usize::try_from(value).expect("bounded by u32::MAX above")
            }
            None => Self::DEFAULT_BATCH_EVENTS_MAX,
        };
        let batch_bytes_max = src.size(
            |a| &a.batch_bytes_max,
            "--batch-bytes-max",
            1,
            1 << 30,
            Self::DEFAULT_BATCH_BYTES_MAX,
        )?;
        let batch_linger_ms = src.millis(
            |a| &a.batch_linger_ms,
            "--batch-linger-ms",
            0,
            60_000,
            Self::DEFAULT_BATCH_LINGER_MS,
        )?;
        let data_dir = match src.get(|a| &a.data_dir) {
            Some(input) => input.path("--data-dir")?,
            None => PathBuf::from(Self::DEFAULT_DATA_DIR),
        };
        let queue_bytes_max = match src.get(|a| &a.queue_bytes_max) {
            Some(input) => input.number(
                "--queue-bytes-max",
                1,
                Some(Self::QUEUE_BYTES_MAX_LIMIT),
                Self::QUEUE_BYTES_MAX_LIMIT,
                Self::DEFAULT_QUEUE_BYTES_MAX,
            )?,
            None => Self::DEFAULT_QUEUE_BYTES_MAX,
        };
        let spill_bytes_max = match src.get(|a| &a.spill_bytes_max) {
            Some(input) => parse_spill_bytes_max(&input)?,
            None => Self::DEFAULT_SPILL_BYTES_MAX,
        };
        let spill_fsync = match src.get(|a| &a.spill_fsync) {
            Some(input) => input.choice(
                "--spill-fsync",
                "always, never, <N>ms (fsync at most every N milliseconds, e.g. 1000ms)",
            )?,
            None => Self::DEFAULT_SPILL_FSYNC,
        };
        let backlog_rate = match src.get(|a| &a.backlog_rate) {
            Some(input) => input.number_u32(
                "--backlog-rate",
                0,
                None,
                u64::from(Self::DEFAULT_BACKLOG_RATE),
            )?,
            None => Self::DEFAULT_BACKLOG_RATE,
        };
        let batches_in_flight = match src.get(|a| &a.batches_in_flight) {
            Some(input) => input.number_u32(
                "--batches-in-flight",
                1,
                Some(u64::from(Self::BATCHES_IN_FLIGHT_MAX)),
                u64::from(Self::DEFAULT_BATCHES_IN_FLIGHT),
            )?,
            None => Self::DEFAULT_BATCHES_IN_FLIGHT,
        };
        let session_save_interval_ms = src.millis(
            |a| &a.session_save_interval_ms,
            "--session-save-interval-ms",
            100,
            60_000,
            Self::DEFAULT_SESSION_SAVE_INTERVAL_MS,
        )?;

        // Sink.
        let (sink, sink_origin) = match src.get(|a| &a.sink) {
            Some(input) => (routes::parse_sink(&input)?, input.origin),
            None => (SinkKind::default(), Origin::Flag),
        };
        let stream_key = match src.get(|a| &a.stream_key) {
            Some(input) => parse_stream_key(&input)?,
            None => Self::DEFAULT_STREAM_KEY.to_owned(),
        };
        let stream_partitions = match src.get(|a| &a.stream_partitions) {
            Some(input) => input.number_u32(
                "--stream-partitions",
                1,
                Some(u64::from(Self::STREAM_PARTITIONS_MAX)),
                u64::from(Self::DEFAULT_STREAM_PARTITIONS),
            )?,
            None => Self::DEFAULT_STREAM_PARTITIONS,
        };
        let stream_maxlen = match src.get(|a| &a.stream_maxlen) {
            Some(input) => input.number(
                "--stream-maxlen",
                Self::STREAM_MAXLEN_MIN,
                Some(Self::STREAM_MAXLEN_MAX),
                Self::STREAM_MAXLEN_MAX,
                Self::DEFAULT_STREAM_MAXLEN,
            )?,
            None => Self::DEFAULT_STREAM_MAXLEN,
        };

        // Control plane.
        let admin_addr = match src.get(|a| &a.admin_addr) {
            Some(input) => input
                .text
                .trim()
                .parse()
                .map_err(|_| ConfigError::InvalidAddress {
                    setting: "--admin-addr",
                    value: input.text.to_owned(),
                    origin: input.origin.clone(),
                })?,
            None => Self::DEFAULT_ADMIN_ADDR
                .parse()
                .expect("the default is a valid address"),
        };
        let admin_token = src
            .secret("--admin-token", ENV_ADMIN_TOKEN, env, |a| {
                a.admin_token.as_ref().map(Secret::expose_secret)
            })?
            .map(Secret::new);
        let ca_file = src
            .get(|a| &a.ca_file)
            .map(|input| input.path("--ca-file"))
            .transpose()?;

        // Logging.
        let log = match src.get(|a| &a.log) {
            Some(input) => parse_log_filter(&input)?,
            None => Self::DEFAULT_LOG.to_owned(),
        };
        let log_format = match src.get(|a| &a.log_format) {
            Some(input) => match input.text.trim().to_ascii_lowercase().as_str() {
                "pretty" => LogFormat::Pretty,
                "json" => LogFormat::Json,
                _ => return Err(input.invalid_choice("--log-format", "pretty, json")),
            },
            None => LogFormat::default(),
        };
        let identify_interval_ms = match src.get(|a| &a.identify_interval_ms) {
            Some(input) => input.number(
                "--identify-interval-ms",
                1,
                None,
                u64::MAX,
                Self::DEFAULT_IDENTIFY_INTERVAL_MS,
            )?,
            None => Self::DEFAULT_IDENTIFY_INTERVAL_MS,
        };

        // Resharding.
        let reshard_automatic = match src.get(|a| &a.reshard) {
            Some(input) => match input.text.trim().to_ascii_lowercase().as_str() {
                "auto" => true,
                "off" => false,
                _ => return Err(input.invalid_choice("--reshard", "auto, off")),
            },
            None => true,
        };
        let reshard_at_percent = match src.get(|a| &a.reshard_at_percent) {
            Some(input) => {
                u8::try_from(input.number("--reshard-at-percent", 1, Some(100), 100, 80)?)
                    .expect("bounded by 100 above")
            }
            None => Self::DEFAULT_RESHARD_AT_PERCENT,
        };
        let reshard_check_interval = match src.get(|a| &a.reshard_check_interval) {
            Some(input) => input.duration(
                "--reshard-check-interval",
                Duration::from_secs(1),
                Duration::from_secs(7 * 24 * 3600),
            )?,
            None => Self::DEFAULT_RESHARD_CHECK_INTERVAL,
        };
        let reshard_guilds_per_shard = match src.get(|a| &a.reshard_guilds_per_shard) {
            Some(input) => input.number_u32(
                "--reshard-guilds-per-shard",
                1,
                Some(u64::from(crate::reshard::plan::GUILDS_PER_SHARD_MAX)),
                u64::from(crate::reshard::plan::GUILDS_PER_SHARD_MAX),
            )?,
            None => crate::reshard::plan::GUILDS_PER_SHARD_MAX,
        };
        let reshard_cooldown = match src.get(|a| &a.reshard_cooldown) {
            Some(input) => input.duration(
                "--reshard-cooldown",
                Duration::ZERO,
                Duration::from_secs(7 * 24 * 3600),
            )?,
            None => crate::reshard::plan::COOLDOWN_DEFAULT,
        };

        // Fleet.
        let fleet_choice = match src.get(|a| &a.fleet) {
            Some(input) => match input.text.trim().to_ascii_lowercase().as_str() {
                "auto" => (None, input.origin),
                "on" => (Some(true), input.origin),
                "off" => (Some(false), input.origin),
                _ => return Err(input.invalid_choice("--fleet", "auto, on, off")),
            },
            None => (None, Origin::Flag),
        };
        let redis_url = src
            .secret("--redis-url", ENV_REDIS_URL, env, |a| {
                a.redis_url.as_ref().map(Secret::expose_secret)
            })?
            .map(checked_redis_url)
            .transpose()?
            .map(Secret::new);
        let cluster_name = match src.get(|a| &a.cluster_name) {
            Some(input) => fleet_name("--cluster-name", &input, Self::DEFAULT_CLUSTER_NAME)?,
            None => Self::DEFAULT_CLUSTER_NAME.to_owned(),
        };
        let host_id = src
            .get(|a| &a.host_id)
            .map(|input| fleet_name("--host-id", &input, "gateway-1"))
            .transpose()?;
        let hostname = env.hostname().unwrap_or(Self::HOSTNAME_FALLBACK).to_owned();
        let host_lease_ms = src.millis(
            |a| &a.host_lease_ms,
            "--host-lease-ms",
            500,
            600_000,
            Self::DEFAULT_HOST_LEASE_MS,
        )?;
        let shard_lease_ms = src.millis(
            |a| &a.shard_lease_ms,
            "--shard-lease-ms",
            1_000,
            600_000,
            Self::DEFAULT_SHARD_LEASE_MS,
        )?;
        let moves_per_minute = match src.get(|a| &a.moves_per_minute) {
            Some(input) => input.number_u32(
                "--moves-per-minute",
                1,
                Some(100_000),
                u64::from(Self::DEFAULT_MOVES_PER_MINUTE),
            )?,
            None => Self::DEFAULT_MOVES_PER_MINUTE,
        };
        let host_capacity = src
            .get(|a| &a.host_capacity)
            .map(|input| input.number_u32("--host-capacity", 1, None, 100))
            .transpose()?;

        // Required.
        let token = token.ok_or(ConfigError::MissingToken)?;
        let forward_url = match (sink, forward_url) {
            (_, Some(url)) => url,
            (SinkKind::Http, None) => return Err(ConfigError::MissingForwardUrl),
            // The streams sink does not use it; empty keeps the field a plain `String`.
            (SinkKind::RedisStreams, None) => String::new(),
        };
        if sink == SinkKind::RedisStreams && redis_url.is_none() {
            return Err(ConfigError::SinkWithoutRedis {
                origin: sink_origin,
            });
        }
        let fleet = match fleet_choice {
            (Some(true), origin) if redis_url.is_none() => {
                return Err(ConfigError::FleetWithoutRedis { origin });
            }
            (Some(on), _) => on,
            // Auto: the streams sink's Redis alone does not make a fleet.
            (None, _) => redis_url.is_some() && sink == SinkKind::Http,
        };

        let mut settings = Self {
            token,
            api_base,
            gateway_url,
            total_shards,
            shards,
            cores,
            cpus_available,
            shards_per_core,
            read_coalesce_ms,
            compression,
            intents,
            events,
            dedup_message_updates,
            dedup_cache_entries,
            large_threshold,
            payload_bytes_max,
            ring_capacity,
            forward_url,
            forward_secret,
            forward_timeout_ms,
            batch_events_max,
            batch_bytes_max,
            batch_linger_ms,
            data_dir,
            queue_bytes_max,
            spill_bytes_max,
            spill_fsync,
            backlog_rate,
            batches_in_flight,
            session_save_interval_ms,
            sink,
            stream_key,
            stream_partitions,
            stream_maxlen,
            routes: Vec::new(),
            admin_addr,
            admin_token,
            ca_file,
            log,
            log_format,
            identify_interval_ms,
            reshard_automatic,
            reshard_at_percent,
            reshard_check_interval,
            reshard_guilds_per_shard,
            reshard_cooldown,
            fleet,
            redis_url,
            cluster_name,
            host_id,
            hostname,
            host_lease_ms,
            shard_lease_ms,
            moves_per_minute,
            host_capacity,
        };

        // Combinations.
        if let TotalShards::Fixed(total) = settings.total_shards {
            settings.plan(total)?;
        } else if let Some(shards) = settings.shards {
            settings.placement(shards.len())?;
        }
        if settings.queue_bytes_max < settings.batch_bytes_max as u64 {
            return Err(ConfigError::QueueBelowBatch {
                queue_bytes_max: settings.queue_bytes_max,
                batch_bytes_max: settings.batch_bytes_max as u64,
            });
        }
        if !settings.admin_addr.ip().is_loopback() && settings.admin_token.is_none() {
            return Err(ConfigError::AdminTokenRequired {
                addr: settings.admin_addr,
            });
        }
        if settings.identify_interval_ms < Self::DEFAULT_IDENTIFY_INTERVAL_MS
            && settings.targets_discord()
        {
            return Err(ConfigError::IdentifyIntervalOnDiscord {
                identify_interval_ms: settings.identify_interval_ms,
            });
        }
        settings.check_sink(&src)?;
        if let (Some(tables), Some(file)) = (&route_tables, file) {
            settings.routes =
                routes::load(tables, file.path(), &settings, settings.redis_url.is_some())?;
            // Auto: a Redis that only takes streams does not make a fleet.
            if fleet_choice.0.is_none() && settings.uses_streams() {
                settings.fleet = false;
            }
        }
        settings.check_fleet(&src)?;
        Ok(settings)
    }

    /// A core's dedup cache entries: `--dedup-cache-entries`, else
    /// [`Settings::DEDUP_CACHE_ENTRIES_PER_SHARD`] per shard the core runs at start, at most
    /// [`Settings::DEFAULT_DEDUP_CACHE_ENTRIES`] (also what a core gets whose shards are not
    /// known at start, `None`). A core of a 1,000-shard bot on 16 cores gets the most; a small
    /// bot's core does not hold a megabyte for messages it never sees.
    pub fn dedup_cache_entries_for(&self, shards_on_core: Option<u32>) -> usize {
        self.dedup_cache_entries.unwrap_or_else(|| {
            per_shard_size(
                Self::DEDUP_CACHE_ENTRIES_PER_SHARD,
                Self::DEFAULT_DEDUP_CACHE_ENTRIES,
                shards_on_core,
            )
        })
    }

    /// A core's ring capacity: `--ring-capacity`, else [`Settings::RING_RECORDS_PER_SHARD`] per
    /// shard the core runs at start, at most [`Settings::DEFAULT_RING_CAPACITY`] (also what a
    /// core gets whose shards are not known at start, `None`). Every slot of a ring is written
    /// when it is made, so its size is resident from the start.
    pub fn ring_capacity_for(&self, shards_on_core: Option<u32>) -> usize {
        self.ring_capacity.unwrap_or_else(|| {
            per_shard_size(
                Self::RING_RECORDS_PER_SHARD,
                Self::DEFAULT_RING_CAPACITY,
                shards_on_core,
            )
        })
    }

    /// A per-core size for the summary: as given, else from the shards per core of the fixed
    /// `plan`, else `auto` (decided once Discord's recommendation is known; a fleet's: the most).
    fn per_core_size(
        &self,
        plan: Option<ShardPlan>,
        given: Option<usize>,
        sized: impl Fn(Option<u32>) -> usize,
    ) -> String {
        if given.is_none() && plan.is_none() && !self.fleet {
            return "auto".to_owned();
        }
        sized(self.planned_shards_per_core(plan)).to_string()
    }

    /// The shards a core runs at start under `plan`: `None` in a fleet (the fleet places them
    /// later) or when the plan waits for Discord's recommendation.
    pub fn planned_shards_per_core(&self, plan: Option<ShardPlan>) -> Option<u32> {
        plan.filter(|_| !self.fleet)
            .map(|plan| plan.shards_per_core)
    }

    /// Whether this process runs in a fleet: `--fleet` resolved (see [`Settings::fleet`]).
    pub fn is_fleet(&self) -> bool {
        self.fleet
    }

    /// This process's id in the fleet: `--host-id`, else the machine's hostname (else
    /// [`Settings::HOSTNAME_FALLBACK`]).
    pub fn host_id(&self) -> String {
        self.host_id
            .clone()
            .unwrap_or_else(|| self.hostname.clone())
    }

    /// What decides an automatic reshard.
    pub fn reshard_policy(&self) -> crate::reshard::ReshardPolicy {
        crate::reshard::ReshardPolicy {
            automatic: self.reshard_automatic,
            at_percent: self.reshard_at_percent,
            guilds_per_shard_max: self.reshard_guilds_per_shard,
            cooldown: self.reshard_cooldown,
        }
    }

    /// [`Settings::load`] with this process's environment and CPUs and the `--config` file read
    /// from disk, followed by [`Settings::check_files`].
    pub fn from_process(args: &RunArgs) -> Result<Self, ConfigError> {
        let file = args.config.as_deref().map(ConfigFile::read).transpose()?;
        let settings = Self::load(args, &Environment::from_process(), file.as_ref())?;
        settings.check_files()?;
        Ok(settings)
    }

    /// Checks the files the settings name and `load` cannot look at: `--ca-file` must be
    /// readable and hold at least one PEM certificate. (`--data-dir` is created at startup.)
    pub fn check_files(&self) -> Result<(), ConfigError> {
        let Some(path) = &self.ca_file else {
            return Ok(());
        };
        let unreadable = |error: std::io::Error| ConfigError::CaFileUnreadable {
            path: path.clone(),
            reason: error.to_string(),
        };
        let pem = std::fs::read(path).map_err(unreadable)?;
        let mut certificates = 0;
        for certificate in rustls_pemfile::certs(&mut pem.as_slice()) {
            certificate.map_err(unreadable)?;
            certificates += 1;
        }
        if certificates == 0 {
            return Err(ConfigError::CaFileWithoutCertificates { path: path.clone() });
        }
        Ok(())
    }

    /// Where the shards go once the bot's shard count is known: `recommended_shards` is
    /// `/gateway/bot`'s `shards`, used only when `--total-shards` is `auto`.
    ///
    /// Fails when `--shards` reaches past the shard count, or when `--shards-per-core` ×
    /// `--cores` cannot hold the owned shards. `load` already ran it for a fixed count.
    pub fn plan(&self, recommended_shards: NonZeroU32) -> Result<ShardPlan, ConfigError> {
        let total_shards = self.total_shards.resolve(recommended_shards);
        let shards = match self.shards {
            Some(shards) if shards.end() >= total_shards.get() => {
                return Err(ConfigError::ShardsBeyondTotal {
                    shards,
                    total_shards: total_shards.get(),
                    auto: self.total_shards == TotalShards::Auto,
                });
            }
            Some(shards) => shards,
            None => ShardRange::all(total_shards),
        };
        let (cores, shards_per_core) = self.placement(shards.len())?;
        Ok(ShardPlan {
            total_shards,
            shards,
            cores,
            shards_per_core,
        })
    }

    /// The plan for `total_shards` whatever `--total-shards` says (the count a reshard left),
    /// for a process that runs every shard.
    pub fn plan_with_total(&self, total_shards: NonZeroU32) -> Result<ShardPlan, ConfigError> {
        let shards = ShardRange::all(total_shards);
        let (cores, shards_per_core) = self.placement(shards.len())?;
        Ok(ShardPlan {
            total_shards,
            shards,
            cores,
            shards_per_core,
        })
    }

    /// The plan when it does not depend on Discord (`--total-shards` is a number).
    pub fn fixed_plan(&self) -> Option<ShardPlan> {
        match self.total_shards {
            TotalShards::Fixed(total) => self.plan(total).ok(),
            TotalShards::Auto => None,
        }
    }

    /// One log-friendly line of `key=value` pairs: the resolved inputs of the plan and every
    /// size, without secrets (only whether each is set).
    pub fn summary(&self) -> String {
        let pairs: Vec<String> = self
            .summary_fields()
            .into_iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        pairs.join(" ")
    }

    /// The pairs of [`Settings::summary`], in order; values with spaces are quoted.
    pub fn summary_fields(&self) -> Vec<(&'static str, String)> {
        let plan = self.fixed_plan();
        let auto = || "auto".to_owned();
        let set = |secret: &Option<Secret>| if secret.is_some() { "set" } else { "unset" };
        let privileged: Vec<_> = self.intents.privileged().names().collect();
        let fields = vec![
            ("total_shards", self.total_shards.to_string()),
            (
                "shards",
                match (plan, self.shards) {
                    (Some(plan), _) => plan.shards.to_string(),
                    (None, Some(range)) => range.to_string(),
                    (None, None) => "all".to_owned(),
                },
            ),
            ("cores", self.cores.to_string()),
            ("cpus_available", self.cpus_available.to_string()),
            (
                "cores_used",
                plan.map_or_else(auto, |plan| plan.cores.to_string()),
            ),
            (
                "shards_per_core",
                match (self.shards_per_core, plan) {
                    (Some(value), _) => value.to_string(),
                    (None, Some(plan)) => plan.shards_per_core.to_string(),
                    (None, None) => auto(),
                },
            ),
            ("read_coalesce_ms", self.read_coalesce_ms.to_string()),
            ("compression", self.compression.to_string()),
            ("intents", self.intents.bits().to_string()),
            ("intent_names", self.intents.to_string()),
            (
                "privileged_intents",
                if privileged.is_empty() {
                    "none".to_owned()
                } else {
                    privileged.join(",")
                },
            ),
            ("events", self.events.to_string()),
            (
                "dedup_message_updates",
                on_off(self.dedup_message_updates).to_owned(),
            ),
            (
                "dedup_cache_entries",
                self.per_core_size(plan, self.dedup_cache_entries, |shards| {
                    self.dedup_cache_entries_for(shards)
                }),
            ),
            ("large_threshold", self.large_threshold.to_string()),
            ("payload_bytes_max", self.payload_bytes_max.to_string()),
            (
                "ring_capacity",
                self.per_core_size(plan, self.ring_capacity, |shards| {
                    self.ring_capacity_for(shards)
                }),
            ),
            (
                "forward_url",
                if self.forward_url.is_empty() {
                    "none".to_owned()
                } else {
                    self.forward_url.clone()
                },
            ),
            ("forward_secret", set(&self.forward_secret).to_owned()),
            ("forward_timeout_ms", self.forward_timeout_ms.to_string()),
            ("batch_events_max", self.batch_events_max.to_string()),
            ("batch_bytes_max", self.batch_bytes_max.to_string()),
            ("batch_linger_ms", self.batch_linger_ms.to_string()),
            ("data_dir", self.data_dir.display().to_string()),
            ("queue_bytes_max", self.queue_bytes_max.to_string()),
            ("spill_bytes_max", self.spill_bytes_max.to_string()),
            (
                "spill_segment_bytes",
                self.spill_segment_bytes().to_string(),
            ),
            ("spill_fsync", self.spill_fsync.to_string()),
            ("backlog_rate", self.backlog_rate.to_string()),
            ("batches_in_flight", self.batches_in_flight.to_string()),
            (
                "session_save_interval_ms",
                self.session_save_interval_ms.to_string(),
            ),
            ("sink", self.sink.to_string()),
            ("stream_key", self.stream_key.clone()),
            ("stream_partitions", self.stream_partitions.to_string()),
            ("stream_maxlen", self.stream_maxlen.to_string()),
            (
                "routes",
                if self.routes.is_empty() {
                    "none".to_owned()
                } else {
                    self.routes
                        .iter()
                        .map(|route| {
                            let to = match route.sink {
                                SinkKind::Http => route.forward_url.clone(),
                                SinkKind::RedisStreams => format!("{}:*", route.stream_key),
                            };
                            format!("{}[{}]->{to}", route.name, route.events.join("|"))
                        })
                        .collect::<Vec<_>>()
                        .join(",")
                },
            ),
            ("admin_addr", self.admin_addr.to_string()),
            ("admin_token", set(&self.admin_token).to_owned()),
            ("api_base", self.api_base.clone()),
            (
                "gateway_url",
                self.gateway_url
                    .clone()
                    .unwrap_or_else(|| "from-gateway-bot".to_owned()),
            ),
            (
                "ca_file",
                self.ca_file
                    .as_ref()
                    .map_or_else(|| "none".to_owned(), |p| p.display().to_string()),
            ),
            ("log", self.log.clone()),
            ("log_format", self.log_format.to_string()),
            (
                "identify_interval_ms",
                self.identify_interval_ms.to_string(),
            ),
            (
                "reshard",
                if self.reshard_automatic {
                    "auto"
                } else {
                    "off"
                }
                .to_owned(),
            ),
            ("reshard_at_percent", self.reshard_at_percent.to_string()),
            (
                "reshard_check_interval",
                format!("{}s", self.reshard_check_interval.as_secs()),
            ),
            (
                "reshard_guilds_per_shard",
                self.reshard_guilds_per_shard.to_string(),
            ),
            (
                "reshard_cooldown",
                format!("{}s", self.reshard_cooldown.as_secs()),
            ),
            ("fleet", if self.fleet { "on" } else { "off" }.to_owned()),
            ("redis_url", set(&self.redis_url).to_owned()),
            ("cluster_name", self.cluster_name.clone()),
            ("host_id", self.host_id()),
            ("host_lease_ms", self.host_lease_ms.to_string()),
            ("shard_lease_ms", self.shard_lease_ms.to_string()),
            ("moves_per_minute", self.moves_per_minute.to_string()),
            (
                "host_capacity",
                self.host_capacity
                    .map_or_else(|| "all".to_owned(), |capacity| capacity.to_string()),
            ),
        ];
        fields
            .into_iter()
            .map(|(key, value)| (key, quoted(value)))
            .collect()
    }

    /// The saved-sessions file: `{data_dir}/sessions.json`.
    pub fn sessions_file(&self) -> PathBuf {
        self.data_dir.join("sessions.json")
    }

    /// The disk spill's directory: `{data_dir}/spill`.
    pub fn spill_dir(&self) -> PathBuf {
        self.data_dir.join("spill")
    }

    /// The spill's segment size: min(64 MiB, `spill_bytes_max` / 4), so that freeing a segment
    /// never takes more than a quarter of the spill; 0 when there is no spill.
    pub fn spill_segment_bytes(&self) -> u64 {
        Self::segment_bytes_for(self.spill_bytes_max)
    }

    /// The segment size of a spill of `max_bytes`: min(64 MiB, `max_bytes` / 4).
    fn segment_bytes_for(max_bytes: u64) -> u64 {
        Self::SPILL_SEGMENT_BYTES_MAX.min(max_bytes / 4)
    }

    /// The spill's configuration; `None` when `--spill-bytes-max` is 0 (no spill).
    pub fn spill_config(&self) -> Option<SpillConfig> {
        self.lane_spill_config(DEFAULT_ROUTE, 0, self.spill_bytes_max)
    }

    /// The spill of lane `lane` of a route, `max_bytes` large (the route's share for the lane);
    /// `None` when `max_bytes` is 0 (no spill).
    pub fn lane_spill_config(&self, route: &str, lane: u32, max_bytes: u64) -> Option<SpillConfig> {
        (max_bytes != 0).then(|| SpillConfig {
            dir: self.lane_spill_dir(route, lane),
            max_bytes,
            segment_bytes: Self::segment_bytes_for(max_bytes),
            fsync: self.spill_fsync,
        })
    }

    /// Cores used and shards per core for `owned` shards.
    fn placement(&self, owned: u64) -> Result<(u32, u32), ConfigError> {
        let cores = u64::from(self.cores.max(1));
        let shards_per_core = match self.shards_per_core {
            Some(per_core) if u64::from(per_core) * cores < owned => {
                return Err(ConfigError::ShardsPerCoreTooSmall {
                    shards_per_core: per_core,
                    cores: self.cores,
                    owned,
                });
            }
            Some(per_core) => u64::from(per_core),
            None => owned.div_ceil(cores),
        };
        let used = owned.div_ceil(shards_per_core);
        // Only `--shards 0..=4294967295` on one core exceeds u32 here, and that range is past
        // any shard count, so `plan` refuses it anyway.
        Ok((
            u32::try_from(used).expect("at most --cores"),
            u32::try_from(shards_per_core).unwrap_or(u32::MAX),
        ))
    }

    /// The sink's combinations: without `--sink redis-streams` no stream setting may differ
    /// from its default (a value written down for the streams would otherwise be silently
    /// ignored). `--redis-url` with the streams sink is checked with the required settings.
    fn check_sink(&self, src: &Sources<'_>) -> Result<(), ConfigError> {
        if self.sink == SinkKind::RedisStreams {
            return Ok(());
        }
        let given: [(&'static str, Field, bool); 3] = [
            (
                "--stream-key",
                |a| &a.stream_key,
                self.stream_key != Self::DEFAULT_STREAM_KEY,
            ),
            (
                "--stream-partitions",
                |a| &a.stream_partitions,
                self.stream_partitions != Self::DEFAULT_STREAM_PARTITIONS,
            ),
            (
                "--stream-maxlen",
                |a| &a.stream_maxlen,
                self.stream_maxlen != Self::DEFAULT_STREAM_MAXLEN,
            ),
        ];
        match given.iter().find(|(_, _, set)| *set) {
            Some(&(setting, field, _)) => Err(ConfigError::StreamSettingWithoutStreams {
                setting,
                // A non-default value was read from one of the two sources.
                origin: src.get(field).map_or(Origin::Flag, |input| input.origin),
            }),
            None => Ok(()),
        }
    }

    /// The fleet's combinations: with the fleet mode off no fleet setting may differ from its
    /// default (a value written down for a fleet would otherwise be silently ignored); the
    /// shard lease at least the host lease; in the fleet mode, a usable host id.
    fn check_fleet(&self, src: &Sources<'_>) -> Result<(), ConfigError> {
        if !self.is_fleet() {
            let given: [(&'static str, Field, bool); 6] = [
                (
                    "--cluster-name",
                    |a| &a.cluster_name,
                    self.cluster_name != Self::DEFAULT_CLUSTER_NAME,
                ),
                ("--host-id", |a| &a.host_id, self.host_id.is_some()),
                (
                    "--host-lease-ms",
                    |a| &a.host_lease_ms,
                    self.host_lease_ms != Self::DEFAULT_HOST_LEASE_MS,
                ),
                (
                    "--shard-lease-ms",
                    |a| &a.shard_lease_ms,
                    self.shard_lease_ms != Self::DEFAULT_SHARD_LEASE_MS,
                ),
                (
                    "--moves-per-minute",
                    |a| &a.moves_per_minute,
                    self.moves_per_minute != Self::DEFAULT_MOVES_PER_MINUTE,
                ),
                (
                    "--host-capacity",
                    |a| &a.host_capacity,
                    self.host_capacity.is_some(),
                ),
            ];
            if let Some(&(setting, field, _)) = given.iter().find(|(_, _, set)| *set) {
                return Err(ConfigError::FleetSettingWithFleetOff {
                    setting,
                    // A non-default value was read from one of the two sources.
                    origin: src.get(field).map_or(Origin::Flag, |input| input.origin),
                });
            }
        }
        if self.shard_lease_ms < self.host_lease_ms {
            return Err(ConfigError::ShardLeaseBelowHostLease {
                shard_lease_ms: self.shard_lease_ms,
                host_lease_ms: self.host_lease_ms,
            });
        }
        if self.is_fleet() && self.host_id.is_none() && !is_fleet_name(&self.hostname) {
            return Err(ConfigError::HostnameNotAHostId {
                hostname: self.hostname.clone(),
            });
        }
        Ok(())
    }

    /// Whether the gateway is Discord's own (no mock named by `--gateway-url`/`--api-base`).
    fn targets_discord(&self) -> bool {
        match &self.gateway_url {
            Some(url) => is_discord_host(url),
            None => is_discord_host(&self.api_base),
        }
    }
}

/// The environment `load` reads: the secrets' variables, the CPUs available and the hostname.
#[derive(Clone)]
pub struct Environment {
    vars: BTreeMap<String, String>,
    cpus_available: usize,
    hostname: Option<String>,
}

impl Environment {
    /// The variables shardgate reads.
    pub const VARS: [&str; 4] = [
        ENV_TOKEN,
        ENV_FORWARD_SECRET,
        ENV_ADMIN_TOKEN,
        ENV_REDIS_URL,
    ];

    /// Where Linux keeps the hostname.
    const HOSTNAME_FILE: &str = "/proc/sys/kernel/hostname";

    /// No variables, `cpus_available` CPUs (at least 1), no hostname: for tests and embedding.
    pub fn new(cpus_available: usize) -> Self {
        Self {
            vars: BTreeMap::new(),
            cpus_available: cpus_available.max(1),
            hostname: None,
        }
    }

    /// This process's: [`Environment::VARS`] (non-UTF-8 values count as unset; clap has
    /// already refused them), the CPUs it may run on (`available_parallelism`, which honours
    /// the affinity mask and cgroup quotas; else `core_affinity`'s core list; else 1) and the
    /// hostname (`/proc/sys/kernel/hostname`; none where it cannot be read).
    pub fn from_process() -> Self {
        let cpus = std::thread::available_parallelism()
            .map(NonZeroUsize::get)
            .ok()
            .or_else(|| core_affinity::get_core_ids().map(|ids| ids.len()))
            .unwrap_or(1);
        let mut env = Self::new(cpus);
        for name in Self::VARS {
            if let Ok(value) = std::env::var(name) {
                env = env.with_var(name, value);
            }
        }
        if let Ok(hostname) = std::fs::read_to_string(Self::HOSTNAME_FILE) {
            env = env.with_hostname(hostname);
        }
        env
    }

    /// Sets the hostname (trimmed; empty means none).
    #[must_use]
    pub fn with_hostname(mut self, hostname: impl Into<String>) -> Self {
        let hostname = hostname.into();
        let trimmed = hostname.trim();
        self.hostname = (!trimmed.is_empty()).then(|| trimmed.to_owned());
        self
    }

    /// The machine's hostname, when known.
    pub fn hostname(&self) -> Option<&str> {
        self.hostname.as_deref()
    }

    /// Sets a variable.
    #[must_use]
    pub fn with_var(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.vars.insert(name.into(), value.into());
        self
    }

    /// A variable's value.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// CPUs this process may run on (at least 1).
    pub fn cpus_available(&self) -> usize {
        self.cpus_available
    }
}

/// Variable names only: the values may be secrets.
impl fmt::Debug for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Environment")
            .field("vars", &self.vars.keys().collect::<Vec<_>>())
            .field("cpus_available", &self.cpus_available)
            .field("hostname", &self.hostname)
            .finish()
    }
}

/// A `--config` file: its path (for messages) and its text.
#[derive(Clone)]
pub struct ConfigFile {
    path: PathBuf,
    text: String,
}

impl ConfigFile {
    /// A file with this text, as if read from `path` (for tests and embedding).
    pub fn new(path: impl Into<PathBuf>, text: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            text: text.into(),
        }
    }

    /// Reads the file.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        std::fs::read_to_string(path)
            .map(|text| Self::new(path, text))
            .map_err(|error| ConfigError::FileUnreadable {
                path: path.to_owned(),
                reason: error.to_string(),
            })
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's settings, and its `[routes]` table; every other key must be a [`FILE_KEYS`]
    /// entry.
    fn parse(&self) -> Result<(RunArgs, Option<toml::Table>), ConfigError> {
        let syntax = |error: toml::de::Error| ConfigError::FileSyntax {
            path: self.path.clone(),
            message: error.to_string().trim_end().to_owned(),
        };
        // Keys first, on the plain table, so an unknown key is reported by name whatever
        // serde's message says; `deny_unknown_fields` on `RunArgs` stays as the backstop.
        let mut table: toml::Table = toml::from_str(&self.text).map_err(syntax)?;
        let routes = match table.remove(FILE_ROUTES) {
            Some(toml::Value::Table(routes)) => Some(routes),
            Some(_) => {
                return Err(ConfigError::FileSyntax {
                    path: self.path.clone(),
                    message: "`routes` must be a table of tables: [routes.NAME]".to_owned(),
                });
            }
            None => None,
        };
        if let Some(key) = table.keys().find(|key| !FILE_KEYS.contains(&key.as_str())) {
            return Err(ConfigError::UnknownFileKey {
                path: self.path.clone(),
                key: key.clone(),
                suggestion: names::closest(key, FILE_KEYS.iter().copied().chain([FILE_ROUTES])),
            });
        }
        let args: RunArgs = table.try_into().map_err(syntax)?;
        Ok((args, routes))
    }
}

/// Text only when asked: the file may hold the token.
impl fmt::Debug for ConfigFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigFile")
            .field("path", &self.path)
            .field("bytes", &self.text.len())
            .finish()
    }
}

/// The config file's table of routes (`[routes.NAME]`), the one key that is no flag.
pub const FILE_ROUTES: &str = "routes";

// ---- merging sources ----

/// Reads one field of the flags, then of the file.
type Field = for<'a> fn(&'a RunArgs) -> &'a Option<RawValue>;

struct Sources<'a> {
    flags: &'a RunArgs,
    file: Option<(&'a Path, &'a RunArgs)>,
}

impl<'a> Sources<'a> {
    /// The field's text from the flag, else from the file.
    fn get(&self, field: Field) -> Option<Input<'a>> {
        if let Some(value) = field(self.flags) {
            return Some(Input {
                text: value.as_str(),
                origin: Origin::Flag,
            });
        }
        let (path, file) = self.file?;
        field(file).as_ref().map(|value| Input {
            text: value.as_str(),
            origin: Origin::File(path.to_owned()),
        })
    }

    /// A secret's text from the flag, else the environment variable, else the file; trimmed
    /// (a file or variable often ends in a newline), never empty, no control characters (they
    /// would break or inject into an HTTP header).
    fn secret(
        &self,
        setting: &'static str,
        var: &'static str,
        env: &'a Environment,
        field: for<'b> fn(&'b RunArgs) -> Option<&'b str>,
    ) -> Result<Option<&'a str>, ConfigError> {
        let Some(text) = field(self.flags)
            .or_else(|| env.var(var))
            .or_else(|| self.file.and_then(|(_, file)| field(file)))
        else {
            return Ok(None);
        };
        let secret = text.trim();
        if secret.is_empty() {
            return Err(ConfigError::EmptySecret { setting, env: var });
        }
        if secret.chars().any(char::is_control) {
            return Err(ConfigError::MalformedSecret {
                setting,
                env: var,
                problem: "contains a control character (a line break?); remove it",
            });
        }
        Ok(Some(secret))
    }

    /// A byte or entry count in `min..=max`.
    fn size(
        &self,
        field: Field,
        setting: &'static str,
        min: u64,
        max: u64,
        default: usize,
    ) -> Result<usize, ConfigError> {
        Ok(self
            .optional_size(field, setting, min, max, default)?
            .unwrap_or(default))
    }

    /// [`Sources::size`] without a default: `None` when not given (`example` shows in errors).
    fn optional_size(
        &self,
        field: Field,
        setting: &'static str,
        min: u64,
        max: u64,
        example: usize,
    ) -> Result<Option<usize>, ConfigError> {
        self.get(field)
            .map(|input| {
                let value = input.number(setting, min, Some(max), max, example as u64)?;
                Ok(usize::try_from(value).expect("every size maximum is below 2^31"))
            })
            .transpose()
    }

    /// A duration in milliseconds in `min..=max`.
    fn millis(
        &self,
        field: Field,
        setting: &'static str,
        min: u64,
        max: u64,
        default: u64,
    ) -> Result<u64, ConfigError> {
        match self.get(field) {
            Some(input) => input.number(setting, min, Some(max), max, default),
            None => Ok(default),
        }
    }
}

/// One setting's text and where it came from.
struct Input<'a> {
    text: &'a str,
    origin: Origin,
}

impl Input<'_> {
    /// A whole number (underscores allowed as separators) in `min..=max.unwrap_or(limit)`;
    /// `limit` is the type's bound, shown only when the value exceeds it.
    fn number(
        &self,
        setting: &'static str,
        min: u64,
        max: Option<u64>,
        limit: u64,
        example: u64,
    ) -> Result<u64, ConfigError> {
        let digits: String = self.text.trim().chars().filter(|&c| c != '_').collect();
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ConfigError::NotANumber {
                setting,
                value: self.text.to_owned(),
                origin: self.origin.clone(),
                example,
            });
        }
        // All digits: parsing fails only on overflow, which is out of range as well.
        let value = digits.parse::<u64>().unwrap_or(u64::MAX);
        let max_shown = max.unwrap_or(limit);
        if value < min || value > max_shown {
            return Err(ConfigError::OutOfRange {
                setting,
                value,
                origin: self.origin.clone(),
                min,
                max: if value > max_shown {
                    Some(max_shown)
                } else {
                    max
                },
            });
        }
        Ok(value)
    }

    /// [`Input::number`] for a `u32` setting without a natural maximum.
    fn number_u32(
        &self,
        setting: &'static str,
        min: u64,
        max: Option<u64>,
        example: u64,
    ) -> Result<u32, ConfigError> {
        let value = self.number(setting, min, max, u64::from(u32::MAX), example)?;
        Ok(u32::try_from(value).expect("bounded by u32::MAX"))
    }

    /// A duration: `<N>s`, `<N>m`, `<N>h`, `<N>d`, or a bare number of seconds, within
    /// `min..=max`.
    fn duration(
        &self,
        setting: &'static str,
        min: Duration,
        max: Duration,
    ) -> Result<Duration, ConfigError> {
        let text = self.text.trim().to_ascii_lowercase();
        let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit() && c != '_') {
            Some(at) => text.split_at(at),
            None => (text.as_str(), "s"),
        };
        let seconds_per_unit = match unit {
            "s" => Some(1),
            "m" => Some(60),
            "h" => Some(3600),
            "d" => Some(86_400),
            _ => None,
        };
        let value = digits
            .chars()
            .filter(|&c| c != '_')
            .collect::<String>()
            .parse::<u64>()
            .ok()
            .zip(seconds_per_unit)
            .and_then(|(n, unit)| n.checked_mul(unit))
            .map(Duration::from_secs);
        match value {
            Some(duration) if (min..=max).contains(&duration) => Ok(duration),
            _ => Err(ConfigError::InvalidDuration {
                setting,
                value: self.text.to_owned(),
                origin: self.origin.clone(),
                min_s: min.as_secs(),
                max_s: max.as_secs(),
            }),
        }
    }

    /// A non-empty path.
    fn path(&self, setting: &'static str) -> Result<PathBuf, ConfigError> {
        if self.text.trim().is_empty() {
            return Err(ConfigError::EmptyPath {
                setting,
                origin: self.origin.clone(),
            });
        }
        Ok(PathBuf::from(self.text))
    }

    /// One of a setting's named values, case-insensitive, through its `FromStr`.
    fn choice<T: std::str::FromStr>(
        &self,
        setting: &'static str,
        choices: &'static str,
    ) -> Result<T, ConfigError> {
        self.text
            .trim()
            .to_ascii_lowercase()
            .parse()
            .map_err(|_| self.invalid_choice(setting, choices))
    }

    fn invalid_choice(&self, setting: &'static str, choices: &'static str) -> ConfigError {
        ConfigError::InvalidChoice {
            setting,
            value: self.text.to_owned(),
            origin: self.origin.clone(),
            choices,
        }
    }
}

// ---- one value each ----

const HTTP_SCHEMES: &[&str] = &["http://", "https://"];
const WS_SCHEMES: &[&str] = &["ws://", "wss://"];

/// A URL with one of `schemes`, a host, no credentials, no whitespace; a query string only
/// when `query_allowed`.
fn parse_url(
    setting: &'static str,
    input: &Input<'_>,
    schemes: &[&str],
    query_allowed: bool,
) -> Result<String, ConfigError> {
    let text = input.text.trim();
    let malformed = |problem| ConfigError::UrlMalformed {
        setting,
        value: text.to_owned(),
        origin: input.origin.clone(),
        problem,
    };
    // Credentials first: no later message may repeat a URL that carries them.
    let after_scheme = text.split_once("://").map_or(text, |(_, rest)| rest);
    let authority = &after_scheme[..after_scheme
        .find(['/', '?', '#'])
        .unwrap_or(after_scheme.len())];
    if authority.contains('@') {
        return Err(ConfigError::UrlCredentials {
            setting,
            origin: input.origin.clone(),
        });
    }
    let Some(scheme) = schemes.iter().find(|scheme| {
        text.get(..scheme.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(scheme))
    }) else {
        return Err(ConfigError::UrlScheme {
            setting,
            value: text.to_owned(),
            origin: input.origin.clone(),
            expected: if schemes == WS_SCHEMES {
                "ws:// or wss://"
            } else {
                "http:// or https://"
            },
        });
    };
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(malformed(
            "contains whitespace; write the URL without spaces",
        ));
    }
    let rest = &text[scheme.len()..];
    let host = authority_host(authority);
    if host.is_empty() {
        return Err(malformed(
            "has no host; write e.g. http://127.0.0.1:9000/path",
        ));
    }
    let port = &authority[host.len()..];
    if !port.is_empty()
        && port
            .strip_prefix(':')
            .is_none_or(|port| port.parse::<u16>().is_err())
    {
        return Err(malformed(
            "has an invalid port; a port is a number up to 65535",
        ));
    }
    if !query_allowed && rest.contains(['?', '#']) {
        return Err(malformed(
            "has a query string; give the base URL only (shardgate appends \
             ?v=10&encoding=json and the compression)",
        ));
    }
    // Lower-case scheme: the sink's and the driver's parsers match it exactly.
    Ok(format!("{scheme}{rest}"))
}

/// The host part of `host[:port]` or `[v6][:port]`.
fn authority_host(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority
            .find(']')
            .map_or(authority, |end| &authority[..=end]);
    }
    authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host)
}

/// A base URL without its trailing slashes (paths are appended to it).
fn base_url(url: String) -> String {
    let trimmed = url.trim_end_matches('/');
    if trimmed.len() == url.len() {
        url
    } else {
        trimmed.to_owned()
    }
}

/// Whether the URL's host is one of Discord's (discord.com, discordapp.com, discord.gg).
fn is_discord_host(url: &str) -> bool {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = after_scheme
        .split(['/', '?', '#'])
        .next()
        .unwrap_or_default();
    let host = authority_host(authority).to_ascii_lowercase();
    ["discord.com", "discordapp.com", "discord.gg"]
        .iter()
        .any(|domain| host == *domain || host.ends_with(&format!(".{domain}")))
}

fn parse_total_shards(input: &Input<'_>) -> Result<TotalShards, ConfigError> {
    let text = input.text.trim();
    if text.eq_ignore_ascii_case("auto") {
        return Ok(TotalShards::Auto);
    }
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit() || b == b'_') {
        return Err(ConfigError::InvalidTotalShards {
            value: input.text.to_owned(),
            origin: input.origin.clone(),
        });
    }
    let total = input.number_u32("--total-shards", 1, None, 16)?;
    Ok(TotalShards::Fixed(
        NonZeroU32::new(total).expect("at least 1"),
    ))
}

/// `A..=B`, `N` or `all` (`None`).
fn parse_shards(input: &Input<'_>) -> Result<Option<ShardRange>, ConfigError> {
    let text = input.text.trim();
    if text.eq_ignore_ascii_case("all") {
        return Ok(None);
    }
    let invalid = || ConfigError::InvalidShardRange {
        value: input.text.to_owned(),
        origin: input.origin.clone(),
    };
    let (start, end) = match text.split_once("..=") {
        Some(ends) => ends,
        None if text.contains("..") => return Err(invalid()),
        None => (text, text),
    };
    let id = |text: &str| {
        let text = text.trim();
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
        text.parse::<u32>().map_err(|_| invalid())
    };
    let (start, end) = (id(start)?, id(end)?);
    ShardRange::new(start, end)
        .map(Some)
        .ok_or(ConfigError::EmptyShardRange {
            start,
            end,
            origin: input.origin.clone(),
        })
}

/// Comma-separated intent names (any case) and numbers, OR-ed.
fn parse_intents(input: &Input<'_>) -> Result<Intents, ConfigError> {
    let mut bits = 0u64;
    let mut items = 0;
    for item in input
        .text
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
    {
        items += 1;
        if item.bytes().all(|b| b.is_ascii_digit() || b == b'_') {
            let item_input = Input {
                text: item,
                origin: input.origin.clone(),
            };
            bits |= item_input.number("--intents", 0, None, u64::MAX, 33_281)?;
            continue;
        }
        match names::intent_bit(&item.to_ascii_uppercase()) {
            Some(bit) => bits |= 1 << bit,
            None => {
                return Err(ConfigError::UnknownIntent {
                    name: item.to_owned(),
                    origin: input.origin.clone(),
                });
            }
        }
    }
    if items == 0 {
        return Err(ConfigError::EmptyList {
            setting: "--intents",
            origin: input.origin.clone(),
            fix: "give a number (0 for none) or names, or leave --intents unset for every \
                  non-privileged intent",
        });
    }
    Ok(Intents::from_bits(bits))
}

/// `all`, or comma-separated event names (any case) from [`EVENT_NAMES`].
fn parse_events(input: &Input<'_>) -> Result<Events, ConfigError> {
    let mut allowed = Vec::new();
    for item in input
        .text
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
    {
        if item.eq_ignore_ascii_case("all") {
            return Ok(Events::All);
        }
        let upper = item.to_ascii_uppercase();
        match names::event_name(&upper) {
            Some(name) => allowed.push(name),
            None => {
                return Err(ConfigError::UnknownEvent {
                    name: item.to_owned(),
                    origin: input.origin.clone(),
                    suggestion: names::closest(&upper, EVENT_NAMES.iter().copied()),
                });
            }
        }
    }
    if allowed.is_empty() {
        return Err(ConfigError::EmptyList {
            setting: "--events",
            origin: input.origin.clone(),
            fix: "name at least one event, or leave --events unset (or `all`) to forward every \
                  event",
        });
    }
    Ok(Events::only(allowed))
}

/// `on`/`off` (also `true`/`false`, as TOML booleans arrive).
fn parse_switch(setting: &'static str, input: &Input<'_>) -> Result<bool, ConfigError> {
    match input.text.trim().to_ascii_lowercase().as_str() {
        "on" | "true" => Ok(true),
        "off" | "false" => Ok(false),
        _ => Err(input.invalid_choice(setting, "on, off")),
    }
}

fn parse_log_filter(input: &Input<'_>) -> Result<String, ConfigError> {
    let text = input.text.trim();
    let invalid = |reason: String| ConfigError::InvalidLogFilter {
        value: input.text.to_owned(),
        origin: input.origin.clone(),
        reason,
    };
    if text.is_empty() {
        return Err(invalid("it is empty".to_owned()));
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(text)
        .map_err(|error| invalid(error.to_string()))?;
    Ok(text.to_owned())
}

/// The token's own rules on top of [`Sources::secret`]'s: no `Bot ` prefix, no whitespace.
fn checked_token(token: &str) -> Result<&str, ConfigError> {
    let malformed = |problem| ConfigError::MalformedSecret {
        setting: "--token",
        env: ENV_TOKEN,
        problem,
    };
    if token
        .get(..4)
        .is_some_and(|head| head.eq_ignore_ascii_case("bot "))
    {
        return Err(malformed(
            "starts with `Bot `; give the bare token (shardgate adds the prefix where REST needs it)",
        ));
    }
    if token.chars().any(char::is_whitespace) {
        return Err(malformed("contains whitespace; give the token alone"));
    }
    Ok(token)
}

/// `--redis-url`'s own rules on top of [`Sources::secret`]'s: a URL the Redis client accepts,
/// checked here piece by piece so the message says what is wrong. No message repeats any part
/// of the URL: it may carry the password.
fn checked_redis_url(url: &str) -> Result<&str, ConfigError> {
    let malformed = |problem| ConfigError::MalformedSecret {
        setting: "--redis-url",
        env: ENV_REDIS_URL,
        problem,
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(malformed(
            "is not a Redis URL; write redis://[user:password@]host:port[/db] (rediss:// for \
             TLS, redis+unix:///path/to/socket for a local socket)",
        ));
    };
    let scheme = scheme.to_ascii_lowercase();
    if !["redis", "rediss", "redis+unix", "unix"].contains(&scheme.as_str()) {
        return Err(malformed(
            "must start with redis://, rediss:// (TLS) or redis+unix:// (a local socket); \
             write redis://[user:password@]host:port[/db]",
        ));
    }
    if url.chars().any(char::is_whitespace) {
        return Err(malformed(
            "contains whitespace; write the URL without spaces (a space in the password is \
             written %20)",
        ));
    }
    if scheme.ends_with("unix") {
        if !rest.starts_with('/') || rest.len() < 2 {
            return Err(malformed(
                "has no socket path; write redis+unix:///path/to/redis.sock",
            ));
        }
    } else {
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, after) = rest.split_at(end);
        // The host starts after the last `@` (a password's own `@` is written %40).
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
        let host = authority_host(host_port);
        if host.is_empty() {
            return Err(malformed(
                "has no host; write redis://[user:password@]host:port[/db], e.g. \
                 redis://127.0.0.1:6379",
            ));
        }
        if ["0.0.0.0", "[::]"].contains(&host) {
            return Err(malformed(
                "names a wildcard address (0.0.0.0 or ::); write the Redis server's address",
            ));
        }
        let port = &host_port[host.len()..];
        if !port.is_empty()
            && port
                .strip_prefix(':')
                .is_none_or(|port| port.parse::<u16>().is_err())
        {
            return Err(malformed(
                "has an invalid port; a port is a number up to 65535, e.g. \
                 redis://127.0.0.1:6379",
            ));
        }
        let db = after[..after.find(['?', '#']).unwrap_or(after.len())].trim_matches('/');
        if !db.is_empty() && db.parse::<u32>().is_err() {
            return Err(malformed(
                "has an invalid database; after the host write only a database number, e.g. \
                 redis://127.0.0.1:6379/0",
            ));
        }
    }
    if redis::IntoConnectionInfo::into_connection_info(url).is_err() {
        // Parsing only, nothing is connected; the client's own message is not shown, as it
        // could name a part of the URL.
        let tls_built =
            redis::IntoConnectionInfo::into_connection_info("rediss://127.0.0.1").is_ok();
        return Err(malformed(if scheme == "rediss" && !tls_built {
            "asks for TLS (rediss://), which this build of shardgate does not include; use \
             redis:// (through a TLS tunnel to a remote Redis)"
        } else {
            "is refused by the Redis client; write redis://[user:password@]host:port[/db]"
        }));
    }
    Ok(url)
}

/// `--cluster-name` or `--host-id`: trimmed, checked by [`is_fleet_name`].
fn fleet_name(
    setting: &'static str,
    input: &Input<'_>,
    example: &'static str,
) -> Result<String, ConfigError> {
    let name = input.text.trim();
    if !is_fleet_name(name) {
        return Err(ConfigError::InvalidFleetName {
            setting,
            value: input.text.to_owned(),
            origin: input.origin.clone(),
            example,
        });
    }
    Ok(name.to_owned())
}

/// `--stream-key`: trimmed, 1 to [`Settings::STREAM_KEY_CHARS_MAX`] printable ASCII characters
/// and no spaces, so a stream key is one Redis argument and one log field as written.
/// `--spill-bytes-max`: 0, or [`Settings::SPILL_BYTES_MIN`] up to the limit.
fn parse_spill_bytes_max(input: &Input<'_>) -> Result<u64, ConfigError> {
    let value = input.number(
        "--spill-bytes-max",
        0,
        Some(Settings::SPILL_BYTES_MAX_LIMIT),
        Settings::SPILL_BYTES_MAX_LIMIT,
        Settings::DEFAULT_SPILL_BYTES_MAX,
    )?;
    if value != 0 && value < Settings::SPILL_BYTES_MIN {
        return Err(ConfigError::SpillTooSmall {
            value,
            origin: input.origin.clone(),
        });
    }
    Ok(value)
}

fn parse_stream_key(input: &Input<'_>) -> Result<String, ConfigError> {
    let key = input.text.trim();
    if !(1..=Settings::STREAM_KEY_CHARS_MAX).contains(&key.len())
        || !key.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(ConfigError::InvalidStreamKey {
            setting: "--stream-key",
            value: input.text.to_owned(),
            origin: input.origin.clone(),
            max_chars: Settings::STREAM_KEY_CHARS_MAX,
            example: Settings::DEFAULT_STREAM_KEY,
        });
    }
    Ok(key.to_owned())
}

/// 1 to [`Settings::FLEET_NAME_CHARS_MAX`] of `[A-Za-z0-9._-]`: safe inside a Redis key
/// (`sg:{NAME}:`, no `:`, no braces that would change the key's hash slot) and in a log field.
fn is_fleet_name(name: &str) -> bool {
    (1..=Settings::FLEET_NAME_CHARS_MAX).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn on_off(on: bool) -> &'static str {
    if on { "on" } else { "off" }
}

/// A summary value as written, or Debug-quoted when it is empty or has whitespace or quotes
/// (a `=` inside is fine: a reader splits each pair at its first `=`).
fn quoted(value: String) -> String {
    if value.is_empty() || value.contains(char::is_whitespace) || value.contains('"') {
        format!("{value:?}")
    } else {
        value
    }
}

#[cfg(test)]
mod tests;
