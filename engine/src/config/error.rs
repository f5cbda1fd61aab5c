//! [`ConfigError`]: every way the settings can be wrong, each message naming the setting and
//! the fix. No message ever contains a secret's value.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use thiserror::Error;

use super::names::INTENTS;
use super::types::ShardRange;

/// Where a setting's text came from, shown after the value in error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A command-line flag (shown as nothing: the message already names the flag).
    Flag,
    /// The `--config` file at this path (shown as ` (from config file PATH)`).
    File(PathBuf),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Flag => Ok(()),
            Self::File(path) => write!(f, " (from config file {})", path.display()),
        }
    }
}

/// Why [`Settings::load`](super::Settings::load) (or
/// [`Settings::check_files`](super::Settings::check_files)) refused the settings.
///
/// Settings are named by their flag; a value from the config file adds ` (from config file
/// PATH)`. `PartialEq` so tests can assert the exact failure.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    // ---- the config file ----
    /// The `--config` file could not be read.
    #[error("config file {}: cannot read it ({reason}); check the --config path", path.display())]
    FileUnreadable {
        /// The `--config` path.
        path: PathBuf,
        /// The I/O error.
        reason: String,
    },
    /// The config file is not valid TOML, or a value has a shape no setting takes (a table).
    #[error("config file {}: {message}", path.display())]
    FileSyntax {
        /// The `--config` path.
        path: PathBuf,
        /// The TOML parser's message, with line and column.
        message: String,
    },
    /// The config file has a key that is no setting.
    #[error(
        "config file {}: unknown key `{key}`; {}",
        path.display(),
        match suggestion {
            Some(known) => format!("did you mean `{known}`?"),
            None => "keys are the `shardgate run` flag names with - written as _ \
                     (total_shards = 16)".to_owned(),
        }
    )]
    UnknownFileKey {
        /// The `--config` path.
        path: PathBuf,
        /// The key as written.
        key: String,
        /// The closest known key, when the key looks like a typo of it.
        suggestion: Option<&'static str>,
    },

    // ---- one value ----
    /// A number setting whose text is not a whole number.
    #[error(
        "{setting} {value}{origin}: not a whole number; write digits, e.g. {setting} {example}"
    )]
    NotANumber {
        /// The flag, e.g. `--ring-capacity`.
        setting: &'static str,
        /// The text as written.
        value: String,
        /// Where the text came from.
        origin: Origin,
        /// A valid value (the default).
        example: u64,
    },
    /// A number outside the setting's range.
    #[error(
        "{setting} {value}{origin}: must be {}",
        match max {
            Some(max) => format!("{min}..={max}"),
            None => format!("at least {min}"),
        }
    )]
    OutOfRange {
        /// The flag, e.g. `--large-threshold`.
        setting: &'static str,
        /// The value given.
        value: u64,
        /// Where it came from.
        origin: Origin,
        /// Smallest allowed value.
        min: u64,
        /// Largest allowed value, when there is one below the type's limit.
        max: Option<u64>,
    },
    /// A setting with a fixed set of words (`--compression`, `--log-format`, on/off switches).
    #[error("{setting} {value}{origin}: choose one of {choices}")]
    InvalidChoice {
        /// The flag.
        setting: &'static str,
        /// The text as written.
        value: String,
        /// Where it came from.
        origin: Origin,
        /// The accepted words, comma separated.
        choices: &'static str,
    },
    /// `--total-shards` is neither `auto` nor a number.
    #[error(
        "--total-shards {value}{origin}: write `auto` (Discord's recommendation) or a number \
         of shards, e.g. --total-shards 16"
    )]
    InvalidTotalShards {
        /// The text as written.
        value: String,
        /// Where it came from.
        origin: Origin,
    },
    /// `--shards` is not `A..=B`, a single id or `all`.
    #[error(
        "--shards {value}{origin}: write A..=B (both ends included, e.g. --shards 0..=15), \
         a single shard id, or `all`"
    )]
    InvalidShardRange {
        /// The text as written.
        value: String,
        /// Where it came from.
        origin: Origin,
    },
    /// `--shards A..=B` with `A > B`.
    #[error("--shards {start}..={end}{origin}: the range is empty; write A..=B with A <= B")]
    EmptyShardRange {
        /// `A`.
        start: u32,
        /// `B`.
        end: u32,
        /// Where it came from.
        origin: Origin,
    },
    /// An `--intents` item that is neither a known name nor a number.
    #[error(
        "--intents {name}{origin}: unknown intent name; known names: {}; or give the bit set \
         as a number, e.g. --intents 33281",
        INTENTS.iter().map(|(known, _)| *known).collect::<Vec<_>>().join(", ")
    )]
    UnknownIntent {
        /// The item as written.
        name: String,
        /// Where it came from.
        origin: Origin,
    },
    /// An `--events` name that is no dispatch event shardgate knows.
    #[error(
        "--events {name}{origin}: unknown event name; {}",
        match suggestion {
            Some(known) => format!("did you mean {known}?"),
            None => "write dispatch names as Discord sends them in `t`, e.g. \
                     --events MESSAGE_CREATE,GUILD_CREATE, or leave --events unset to \
                     forward every event".to_owned(),
        }
    )]
    UnknownEvent {
        /// The name as written.
        name: String,
        /// Where it came from.
        origin: Origin,
        /// The closest known name, when this looks like a typo of it.
        suggestion: Option<&'static str>,
    },
    /// A list setting (`--intents`, `--events`) with no items.
    #[error("{setting}{origin}: the list is empty; {fix}")]
    EmptyList {
        /// The flag.
        setting: &'static str,
        /// Where it came from.
        origin: Origin,
        /// What to write instead.
        fix: &'static str,
    },
    /// A duration that does not parse or is out of range.
    #[error(
        "{setting} '{value}'{origin}: write a duration between {min_s} s and {max_s} s, such as \
         90s, 15m or 1h (a bare number is seconds)"
    )]
    InvalidDuration {
        /// The flag.
        setting: &'static str,
        /// The text as written.
        value: String,
        /// Where it came from.
        origin: Origin,
        min_s: u64,
        max_s: u64,
    },
    /// A URL with the wrong scheme.
    #[error("{setting} '{value}'{origin}: must be {expected}")]
    UrlScheme {
        /// The flag.
        setting: &'static str,
        /// The text as written.
        value: String,
        /// Where it came from.
        origin: Origin,
        /// The schemes allowed, e.g. `http:// or https://`.
        expected: &'static str,
    },
    /// A URL with the right scheme that still cannot be used.
    #[error("{setting} '{value}'{origin}: {problem}")]
    UrlMalformed {
        /// The flag.
        setting: &'static str,
        /// The text as written.
        value: String,
        /// Where it came from.
        origin: Origin,
        /// What is wrong and how to fix it.
        problem: &'static str,
    },
    /// A URL carrying `user:password@`, which would end up in logs. The value is not repeated.
    #[error(
        "{setting}{origin}: the URL carries credentials (user:password@), which would be \
         logged; remove them{}",
        if *setting == "--forward-url" {
            " and put the credential in --forward-secret (sent as the Authorization header, \
             e.g. `Basic …`)"
        } else {
            ""
        }
    )]
    UrlCredentials {
        /// The flag.
        setting: &'static str,
        /// Where it came from.
        origin: Origin,
    },
    /// A socket address that does not parse.
    #[error(
        "{setting} {value}{origin}: write IP:PORT, e.g. {setting} 127.0.0.1:7878 \
         (host names are not resolved)"
    )]
    InvalidAddress {
        /// The flag.
        setting: &'static str,
        /// The text as written.
        value: String,
        /// Where it came from.
        origin: Origin,
    },
    /// A path setting (`--data-dir`, `--ca-file`) given as empty text.
    #[error("{setting}{origin}: the path is empty; give a path or leave {setting} unset")]
    EmptyPath {
        /// The flag.
        setting: &'static str,
        /// Where it came from.
        origin: Origin,
    },
    /// `--spill-bytes-max` between 1 and 1 MiB - 1: too small for a spill, and not 0.
    #[error(
        "--spill-bytes-max {value}{origin}: a spill needs at least 1048576 bytes (1 MiB); \
         raise it, or write 0 for no spill (records then wait in memory and a full \
         --queue-bytes-max backpressures the cores)"
    )]
    SpillTooSmall {
        /// The value given.
        value: u64,
        /// Where it came from.
        origin: Origin,
    },
    /// `--cluster-name` or `--host-id` with characters or a length a Redis key part cannot
    /// take.
    #[error(
        "{setting} '{value}'{origin}: write 1 to 64 characters of A-Z, a-z, 0-9, `.`, `_` and \
         `-` (no spaces, braces or colons), e.g. {setting} {example}"
    )]
    InvalidFleetName {
        /// The flag.
        setting: &'static str,
        /// The text as written.
        value: String,
        /// Where it came from.
        origin: Origin,
        /// A valid value.
        example: &'static str,
    },
    /// `--stream-key` with a length or characters a stream key prefix cannot take.
    #[error(
        "{setting} '{value}'{origin}: write 1 to {max_chars} printable ASCII characters without \
         spaces, e.g. {setting} {example}"
    )]
    InvalidStreamKey {
        /// The flag.
        setting: &'static str,
        /// The text as written.
        value: String,
        /// Where it came from.
        origin: Origin,
        /// The longest prefix allowed, in characters.
        max_chars: usize,
        /// A valid value (the default).
        example: &'static str,
    },
    /// `--log` is not a valid tracing `EnvFilter`.
    #[error(
        "--log {value}{origin}: not a valid log filter ({reason}); write a level \
         (error, warn, info, debug, trace) or directives like info,shardgate=debug"
    )]
    InvalidLogFilter {
        /// The text as written.
        value: String,
        /// Where it came from.
        origin: Origin,
        /// The filter parser's message.
        reason: String,
    },
    /// No token anywhere.
    #[error("--token is missing: pass --token or set DISCORD_TOKEN")]
    MissingToken,
    /// No forwarding URL anywhere, with `--sink http` (the default).
    #[error(
        "--forward-url is missing: pass --forward-url http://HOST:PORT/PATH, the bot endpoint \
         that receives the batches"
    )]
    MissingForwardUrl,
    /// A secret that is set but empty (or only whitespace).
    #[error(
        "{setting} is empty: give it a value (with {setting}, {env} or the config file){}",
        if *setting == "--token" { "" } else { ", or unset it" }
    )]
    EmptySecret {
        /// The flag.
        setting: &'static str,
        /// Its environment variable.
        env: &'static str,
    },
    /// A secret that cannot be used as given. The value is never repeated.
    #[error("{setting} (from the flag, {env} or the config file) {problem}")]
    MalformedSecret {
        /// The flag.
        setting: &'static str,
        /// Its environment variable.
        env: &'static str,
        /// What is wrong and how to fix it.
        problem: &'static str,
    },

    // ---- combinations ----
    /// `--shards` reaches past the bot's shard count.
    #[error(
        "--total-shards {total_shards}{} but --shards {shards} reaches shard {}; use --shards \
         0..={} or {}",
        if *auto { " (Discord's recommendation for `auto`)" } else { "" },
        shards.end(),
        total_shards.saturating_sub(1),
        if *auto {
            "set --total-shards to the count every process of the bot shares"
        } else {
            "raise --total-shards"
        }
    )]
    ShardsBeyondTotal {
        /// The `--shards` range.
        shards: ShardRange,
        /// The shard count it was checked against.
        total_shards: u32,
        /// Whether that count came from `/gateway/bot` (`--total-shards auto`).
        auto: bool,
    },
    /// More cores asked for than this process may run on.
    #[error(
        "--cores {cores} but this machine has {cpus} CPUs available; use --cores {cpus} or \
         fewer, or leave --cores unset to use them all"
    )]
    CoresExceedCpus {
        /// The value given.
        cores: u64,
        /// CPUs available to this process.
        cpus: usize,
    },
    /// `--shards-per-core × --cores` cannot hold the shards this process owns.
    #[error(
        "--shards-per-core {shards_per_core} with --cores {cores} places {} shards but this \
         process owns {owned}; raise --shards-per-core to {} or more, raise --cores, or leave \
         --shards-per-core unset",
        u64::from(*shards_per_core) * u64::from(*cores),
        owned.div_ceil(u64::from((*cores).max(1)))
    )]
    ShardsPerCoreTooSmall {
        /// The value given.
        shards_per_core: u32,
        /// Cores available to the plan.
        cores: u32,
        /// Shards this process owns.
        owned: u64,
    },
    /// The memory queue cannot hold one full batch.
    #[error(
        "--queue-bytes-max {queue_bytes_max} is below --batch-bytes-max {batch_bytes_max}: \
         the memory queue must hold a full batch; raise --queue-bytes-max to {batch_bytes_max} \
         or more, or lower --batch-bytes-max to {queue_bytes_max} or less"
    )]
    QueueBelowBatch {
        /// `--queue-bytes-max`.
        queue_bytes_max: u64,
        /// `--batch-bytes-max`.
        batch_bytes_max: u64,
    },
    /// The admin API would listen beyond loopback without a token.
    #[error(
        "--admin-addr {addr} accepts connections from other machines but no --admin-token is \
         set; set --admin-token (or SHARDGATE_ADMIN_TOKEN), or bind 127.0.0.1"
    )]
    AdminTokenRequired {
        /// The address given.
        addr: SocketAddr,
    },
    /// A fleet setting with the fleet mode off, with a value other than its default.
    #[error(
        "{setting}{origin} needs the fleet mode, which is off: set --fleet on (with \
         --redis-url), or --redis-url (or SHARDGATE_REDIS_URL) with --sink http and --fleet \
         auto, to run in a fleet, or remove {setting} to run alone"
    )]
    FleetSettingWithFleetOff {
        /// The flag.
        setting: &'static str,
        /// Where it came from.
        origin: Origin,
    },
    /// `--fleet on` without `--redis-url`.
    #[error(
        "--fleet on{origin} needs --redis-url (the fleet's Redis): set --redis-url (or \
         SHARDGATE_REDIS_URL) to run in a fleet, or set --fleet auto or off to run alone"
    )]
    FleetWithoutRedis {
        /// Where `--fleet` came from.
        origin: Origin,
    },
    /// `--sink redis-streams` without `--redis-url`.
    #[error(
        "--sink redis-streams{origin} needs --redis-url (the Redis the streams go to): set \
         --redis-url (or SHARDGATE_REDIS_URL), or use --sink http to POST the batches to \
         --forward-url"
    )]
    SinkWithoutRedis {
        /// Where `--sink` came from.
        origin: Origin,
    },
    // ---- routes ----
    /// A `[routes.NAME]` table's setting is wrong: the message names it.
    #[error(
        "config file [routes.{route}]: {message} (a route's keys are the flag names with - written as _)"
    )]
    Route {
        /// The route's name.
        route: String,
        /// What is wrong, as the top-level setting would say it.
        message: String,
    },
    /// A route name that is not a plain word.
    #[error(
        "config file: route name `{name}`: use 1 to {max_chars} of A-Z a-z 0-9 _ - (and not \
         `default`, the route of everything no route names): it names the route's spill \
         directory and its metrics"
    )]
    InvalidRouteName {
        /// The name as written.
        name: String,
        /// The longest name.
        max_chars: usize,
    },
    /// `routes.NAME` is a value, not a table.
    #[error("write the route as a table: [routes.NAME] with events = [...] and its receiver")]
    RouteNotATable,
    /// A key no route takes.
    #[error(
        "unknown key `{key}`; {}",
        match suggestion {
            Some(known) => format!("did you mean `{known}`?"),
            None => "a route takes events, sink, forward_url, forward_secret, \
                     forward_timeout_ms, batch_*, queue_bytes_max, spill_bytes_max, \
                     backlog_rate and stream_*"
                .to_owned(),
        }
    )]
    UnknownRouteKey {
        /// The key as written.
        key: String,
        /// The closest route key, when the key looks like a typo of it.
        suggestion: Option<&'static str>,
    },
    /// A route without `events`.
    #[error(
        "events is required: name the dispatch types this route takes, e.g. events = [\"INTERACTION_CREATE\"]"
    )]
    RouteWithoutEvents,
    /// A route with `events = "all"`.
    #[error(
        "events = all: a route takes named dispatch types; everything else already goes to the \
         top-level receiver (filtered by --events)"
    )]
    RouteTakesAll,
    /// One event type named by two routes.
    #[error(
        "config file: {event} is in the events of both [routes.{first}] and [routes.{second}]; \
         an event goes to one route: remove it from one of them"
    )]
    EventInTwoRoutes {
        /// The event type.
        event: &'static str,
        /// The first route naming it.
        first: String,
        /// The second.
        second: String,
    },
    /// Two routes writing to one stream key.
    #[error(
        "config file: routes `{first}` and `{second}` both write to the streams {key}:*; give \
         one of them its own stream_key (each route's streams keep its shards in order)"
    )]
    StreamKeyInTwoRoutes {
        /// The shared key.
        key: String,
        /// The first route.
        first: String,
        /// The second.
        second: String,
    },
    /// More routes than the engine runs delivery threads for.
    #[error(
        "config file: {count} routes; at most {max} (each has its own delivery thread and \
         queue): send several event types to one route with events = [..]"
    )]
    TooManyRoutes {
        /// Routes written.
        count: usize,
        /// The most.
        max: usize,
    },

    /// A stream setting without `--sink redis-streams`, with a value other than its default.
    #[error(
        "{setting}{origin} needs --sink redis-streams: set --sink redis-streams to write the \
         records to Redis streams, or remove {setting} to POST them to --forward-url"
    )]
    StreamSettingWithoutStreams {
        /// The flag.
        setting: &'static str,
        /// Where it came from.
        origin: Origin,
    },
    /// A shard lease shorter than the host lease.
    #[error(
        "--shard-lease-ms {shard_lease_ms} is below --host-lease-ms {host_lease_ms}: a \
         shard's lease must last at least as long as its host's; raise --shard-lease-ms to \
         {host_lease_ms} or more, or lower --host-lease-ms to {shard_lease_ms} or less"
    )]
    ShardLeaseBelowHostLease {
        /// `--shard-lease-ms`.
        shard_lease_ms: u64,
        /// `--host-lease-ms`.
        host_lease_ms: u64,
    },
    /// The fleet mode without `--host-id`, on a machine whose hostname is no valid host id.
    #[error(
        "--host-id is not set and this machine's hostname '{hostname}' cannot be a host id \
         (1 to 64 characters of A-Z, a-z, 0-9, `.`, `_` and `-`); set --host-id, e.g. \
         --host-id gateway-1"
    )]
    HostnameNotAHostId {
        /// The hostname `--host-id` would default to.
        hostname: String,
    },
    /// A shortened identify window aimed at the real Discord.
    #[error(
        "--identify-interval-ms {identify_interval_ms} is below Discord's 5000 ms identify \
         window, which risks a token reset; it is for tests against a mock gateway: set \
         --gateway-url (or --api-base) to the mock, or remove --identify-interval-ms"
    )]
    IdentifyIntervalOnDiscord {
        /// The value given.
        identify_interval_ms: u64,
    },

    // ---- files named by settings ----
    /// `--ca-file` cannot be read.
    #[error("--ca-file {}: cannot read it ({reason}); give a readable PEM file", path.display())]
    CaFileUnreadable {
        /// The path given.
        path: PathBuf,
        /// The I/O error.
        reason: String,
    },
    /// `--ca-file` holds no PEM certificate.
    #[error(
        "--ca-file {}: no PEM certificate in it; give a file with \
         -----BEGIN CERTIFICATE----- blocks",
        path.display()
    )]
    CaFileWithoutCertificates {
        /// The path given.
        path: PathBuf,
    },
}
