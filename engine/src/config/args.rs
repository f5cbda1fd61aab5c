//! The settings as the operator wrote them: [`RunArgs`] is both the `shardgate run` flags
//! (clap) and the `--config` TOML file (serde), so the file's keys are exactly the flag names
//! with `-` written as `_`. Nothing is validated here; [`Settings::load`](super::Settings::load)
//! parses and checks every value, whatever its source.
//!
//! Each field's doc comment is its `--help` text: what it is for, its default, and its memory
//! cost where it has one. Defaults are written out in the text (not as clap defaults) because a
//! flag must stay absent when not given, so that the file and the environment can supply it;
//! a test checks the text against the constants on [`Settings`](super::Settings).

use std::fmt;
use std::path::PathBuf;

use clap::Args;
use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};

use super::types::Secret;
use crate::decode::Compression;
use crate::shard::Token;

/// Environment variable of `--token`.
pub const ENV_TOKEN: &str = "DISCORD_TOKEN";
/// Environment variable of `--forward-secret`.
pub const ENV_FORWARD_SECRET: &str = "FORWARD_SECRET";
/// Environment variable of `--admin-token`.
pub const ENV_ADMIN_TOKEN: &str = "SHARDGATE_ADMIN_TOKEN";
/// Environment variable of `--redis-url` (it may carry the Redis password).
pub const ENV_REDIS_URL: &str = "SHARDGATE_REDIS_URL";

/// The keys a `--config` file may hold: every [`RunArgs`] field but `config` (a test keeps this
/// list equal to the flags).
pub const FILE_KEYS: &[&str] = &[
    "token",
    "api_base",
    "gateway_url",
    "total_shards",
    "shards",
    "compression",
    "intents",
    "large_threshold",
    "cores",
    "shards_per_core",
    "read_coalesce_ms",
    "reshard",
    "reshard_at_percent",
    "reshard_check_interval",
    "fleet",
    "redis_url",
    "cluster_name",
    "host_id",
    "host_lease_ms",
    "shard_lease_ms",
    "moves_per_minute",
    "host_capacity",
    "events",
    "dedup_message_updates",
    "dedup_cache_entries",
    "payload_bytes_max",
    "ring_capacity",
    "forward_url",
    "forward_secret",
    "forward_timeout_ms",
    "batch_events_max",
    "batch_bytes_max",
    "batch_linger_ms",
    "data_dir",
    "queue_bytes_max",
    "spill_bytes_max",
    "spill_fsync",
    "backlog_rate",
    "batches_in_flight",
    "session_save_interval_ms",
    "sink",
    "stream_key",
    "stream_partitions",
    "stream_maxlen",
    "admin_addr",
    "admin_token",
    "ca_file",
    "log",
    "log_format",
    "identify_interval_ms",
    "reshard_guilds_per_shard",
    "reshard_cooldown",
];

/// `shardgate run` settings as written: flags, the four secrets' environment variables (read by
/// clap), or the `--config` file. Precedence and validation: [`Settings::load`](super::Settings::load).
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunArgs {
    /// TOML file of settings.
    ///
    /// Keys are the flag names with - written as _ (total_shards = 16, forward_url = "..."),
    /// numbers as TOML numbers or strings, lists (intents, events) as arrays or comma-separated
    /// strings. Flags win over environment variables, which win over the file, which wins over
    /// the defaults. Unknown keys are an error. Relative paths in the file are relative to the
    /// working directory.
    #[arg(long, value_name = "PATH", help_heading = "Config file")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    // ---- Discord ----
    /// Bot token, without the "Bot " prefix. Required. Never logged or printed.
    ///
    /// Prefer the environment variable: flags are visible in the process list.
    #[arg(
        long,
        env = ENV_TOKEN,
        hide_env_values = true,
        value_name = "TOKEN",
        value_parser = token_arg,
        help_heading = "Discord"
    )]
    #[serde(deserialize_with = "token_from_file")]
    pub token: Option<Token>,

    /// Base URL of Discord's REST API (for GET /gateway/bot).
    ///
    /// http:// or https://. Default: `https://discord.com/api/v10`. Tests point it at a mock.
    #[arg(long, value_name = "URL", help_heading = "Discord")]
    pub api_base: Option<RawValue>,

    /// Connect the shards here instead of the URL /gateway/bot returns.
    ///
    /// ws:// or wss://, without a query string (shardgate appends ?v=10&encoding=json and the
    /// compression). Default: the URL from /gateway/bot. Tests point it at a mock.
    #[arg(long, value_name = "URL", help_heading = "Discord")]
    pub gateway_url: Option<RawValue>,

    /// The bot's shard count: `auto` (the count /gateway/bot recommends) or a number.
    ///
    /// Every process of one bot must use the same count. Default: auto.
    #[arg(long, value_name = "auto|N", help_heading = "Discord")]
    pub total_shards: Option<RawValue>,

    /// The shard ids this process runs: A..=B (both ends included), one id, or `all`.
    ///
    /// Split a large bot over several processes with disjoint ranges. Default: all (0 up to
    /// the shard count minus one).
    #[arg(long, value_name = "A..=B", help_heading = "Discord")]
    pub shards: Option<RawValue>,

    /// Gateway transport compression: zstd-stream, zlib-stream, payload or none.
    ///
    /// zstd-stream is the cheapest compressed mode per event (about 2 µs of decompression on a
    /// 2 GHz core); zlib-stream costs about 1.5× that and payload (per-message zlib) about 2×;
    /// none spends nothing on decompression but moves several times the bytes. Memory: the
    /// stream modes keep one decompression context per shard for the connection's life
    /// (zlib-stream about 41 KiB; zstd-stream the window the server asks for, at most 8 MiB).
    /// Default: zstd-stream.
    #[arg(long, value_name = "MODE", help_heading = "Discord")]
    pub compression: Option<RawValue>,

    /// Gateway intents: a number, or comma-separated names (GUILDS,GUILD_MESSAGES,MESSAGE_CONTENT).
    ///
    /// Names: GUILDS, GUILD_MEMBERS*, GUILD_MODERATION, GUILD_EXPRESSIONS (alias
    /// GUILD_EMOJIS_AND_STICKERS), GUILD_INTEGRATIONS, GUILD_WEBHOOKS, GUILD_INVITES,
    /// GUILD_VOICE_STATES, GUILD_PRESENCES*, GUILD_MESSAGES, GUILD_MESSAGE_REACTIONS,
    /// GUILD_MESSAGE_TYPING, DIRECT_MESSAGES, DIRECT_MESSAGE_REACTIONS, DIRECT_MESSAGE_TYPING,
    /// MESSAGE_CONTENT*, GUILD_SCHEDULED_EVENTS, AUTO_MODERATION_CONFIGURATION,
    /// AUTO_MODERATION_EXECUTION, GUILD_MESSAGE_POLLS, DIRECT_MESSAGE_POLLS. Items may also be
    /// numbers; all are OR-ed. *privileged: enable them in the developer portal first (Discord
    /// closes with 4014 otherwise). Default: every non-privileged intent (53575421).
    #[arg(long, value_name = "BITS|NAMES", help_heading = "Discord")]
    pub intents: Option<RawValue>,

    /// Member count above which Discord sends a guild without its offline members (identify
    /// `large_threshold`).
    ///
    /// Higher values make GUILD_CREATE payloads bigger. Range 50..=250. Default: 50.
    #[arg(long, value_name = "MEMBERS", help_heading = "Discord")]
    pub large_threshold: Option<RawValue>,

    // ---- Placement ----
    /// Cores to run shards on, one pinned executor thread each.
    ///
    /// At most the CPUs available to this process. Default: all of them.
    #[arg(long, value_name = "N", help_heading = "Placement")]
    pub cores: Option<RawValue>,

    /// Shards per core.
    ///
    /// Memory: an idle shard is meant to cost at most 150 KiB with zstd-stream. Cores beyond
    /// ceil(shards / shards-per-core) stay unused. Default: ceil(owned shards / cores), i.e.
    /// spread evenly over every core.
    #[arg(long, value_name = "N", help_heading = "Placement")]
    pub shards_per_core: Option<RawValue>,

    /// After a read that emptied a shard's socket, read it again only at the next tick of this
    /// many milliseconds (the same ticks for every shard): a core then wakes once per tick for
    /// all its busy shards instead of once per event.
    ///
    /// Each wake-up of a core costs far more than an event, so at moderate event rates this
    /// cuts the CPU per event to about 0.4× at 5 ms and about half of that again at 20 ms; an
    /// event waits at most one tick longer. A shard with more waiting than one read takes, or
    /// reading more than 12.8 MB/s (at most 256 KiB per tick), is read at once. 0 reads as soon as data arrives (lowest
    /// latency). Range 0..=1000. Default: 20.
    #[arg(long, value_name = "MS", help_heading = "Placement")]
    pub read_coalesce_ms: Option<RawValue>,

    // ---- Resharding ----
    /// Reshard on its own when the shards fill up: auto or off.
    ///
    /// auto: when the fullest shard reaches --reshard-at-percent of the 2,500 guilds a shard may
    /// hold, when Discord recommends more shards than run now (asked every
    /// --reshard-check-interval), or when Discord closes a shard with 4011, a new set of shards
    /// identifies beside the live one and takes over without a gap or a duplicate. Needs every
    /// shard in this process. POST /reshard on the admin API starts one either way. Default:
    /// auto.
    #[arg(long, value_name = "auto|off", help_heading = "Resharding")]
    pub reshard: Option<RawValue>,

    /// The fill level that triggers an automatic reshard: this percentage of the 2,500 guilds a
    /// shard may hold, on the fullest shard.
    ///
    /// The new count brings the average shard to half of it. Range 1..=100. Default: 80.
    #[arg(long, value_name = "PERCENT", help_heading = "Resharding")]
    pub reshard_at_percent: Option<RawValue>,

    /// How often /gateway/bot is asked whether Discord recommends more shards: a duration such
    /// as 90s, 15m or 1h (a bare number is seconds).
    ///
    /// Also asked at once when Discord closes a shard with 4011. Range 1s..=7d. Default: 1h.
    #[arg(long, value_name = "DURATION", help_heading = "Resharding")]
    pub reshard_check_interval: Option<RawValue>,

    // ---- Fleet ----
    /// The fleet mode: auto, on or off. In a fleet, several shardgate processes share the bot's
    /// shards through --redis-url, and a shard whose host dies moves to a live one.
    ///
    /// auto: on when --redis-url is set and --sink is http, off otherwise (so --sink
    /// redis-streams with --redis-url runs alone, writing to the streams). on: always a fleet
    /// (needs --redis-url; with --sink redis-streams the streams go to the same Redis). off:
    /// never a fleet. In the fleet mode, --shards names the shards pinned to this host; off,
    /// the other fleet settings are refused. Default: auto.
    #[arg(long, value_name = "auto|on|off", help_heading = "Fleet (Redis)")]
    pub fleet: Option<RawValue>,

    /// The Redis of the fleet and of --sink redis-streams:
    /// redis://[user:password@]host:port[/db] or redis+unix:///path/to/socket. With --sink http
    /// (the default) it turns on the fleet mode (see --fleet).
    ///
    /// rediss:// (TLS) needs a build with the Redis client's TLS support; --check says when it
    /// is missing. May carry the Redis password: never logged or printed. Prefer the
    /// environment variable: flags are visible in the process list. Default: none (this process
    /// runs alone, with every shard of --shards).
    #[arg(
        long,
        env = ENV_REDIS_URL,
        hide_env_values = true,
        value_name = "URL",
        value_parser = secret_arg,
        help_heading = "Fleet (Redis)"
    )]
    pub redis_url: Option<Secret>,

    /// The fleet's name: its keys in Redis start with sg:{NAME}:, so several bots (or a test
    /// fleet beside the real one) can share one Redis.
    ///
    /// Every process of one fleet must use the same name. 1 to 64 characters of A-Z, a-z, 0-9,
    /// `.`, `_` and `-`. Needs the fleet mode (--fleet). Default: shardgate.
    #[arg(long, value_name = "NAME", help_heading = "Fleet (Redis)")]
    pub cluster_name: Option<RawValue>,

    /// This process's name in the fleet.
    ///
    /// Several processes on one machine need distinct ids. Keep an id across restarts: a host
    /// that comes back under the same id gets its shards back. 1 to 64 characters of A-Z, a-z,
    /// 0-9, `.`, `_` and `-`. Needs the fleet mode (--fleet). Default: the machine's hostname
    /// (from /proc/sys/kernel/hostname; `host` when it cannot be read).
    #[arg(long, value_name = "ID", help_heading = "Fleet (Redis)")]
    pub host_id: Option<RawValue>,

    /// This host's lease in Redis: how long it counts as alive after its last renewal.
    ///
    /// A host silent for this long is dead, and the assigner gives its shards to the live
    /// hosts. Shorter moves a dead host's shards sooner, but also declares a host dead after a
    /// shorter stall (a long pause, a slow Redis). Range 500..=600000. Needs the fleet mode
    /// (--fleet). Default: 10000.
    #[arg(long, value_name = "MS", help_heading = "Fleet (Redis)")]
    pub host_lease_ms: Option<RawValue>,

    /// A host's lease on each shard it runs: how long it lasts unless renewed. Another host
    /// takes the shard only after the lease has run out.
    ///
    /// At least --host-lease-ms. Range 1000..=600000. Needs the fleet mode (--fleet). Default:
    /// 15000.
    #[arg(long, value_name = "MS", help_heading = "Fleet (Redis)")]
    pub shard_lease_ms: Option<RawValue>,

    /// Most shards the assigner moves between live hosts per minute when it rebalances (a
    /// host joined, or the weights changed).
    ///
    /// Each move is a reconnect of that shard on its new host. The shards of a dead host are
    /// not limited: they move at once. Range 1..=100000. Needs the fleet mode (--fleet).
    /// Default: 60.
    #[arg(long, value_name = "SHARDS", help_heading = "Fleet (Redis)")]
    pub moves_per_minute: Option<RawValue>,

    /// Most shards this host takes from the assigner, and its weight when the shards are
    /// spread (a host with 200 gets twice the shards of one with 100).
    ///
    /// At least 1. Needs the fleet mode (--fleet). Default: as many as the bot has (every host
    /// the same weight).
    #[arg(long, value_name = "SHARDS", help_heading = "Fleet (Redis)")]
    pub host_capacity: Option<RawValue>,

    // ---- Filtering ----
    /// Forward only these dispatch events: comma-separated names as Discord sends them in `t`
    /// (MESSAGE_CREATE,GUILD_CREATE), or `all`.
    ///
    /// Dropped events cost their decode only: they never reach the ring or the bot. Default: all.
    #[arg(long, value_name = "NAMES", help_heading = "Decoding and filtering")]
    pub events: Option<RawValue>,

    /// Drop MESSAGE_UPDATEs whose content did not change (embed unfurls): on or off.
    ///
    /// Removes most MESSAGE_UPDATE traffic; a user edit always passes. Default: on.
    #[arg(long, value_name = "on|off", help_heading = "Decoding and filtering")]
    pub dedup_message_updates: Option<RawValue>,

    /// Messages remembered per core for --dedup-message-updates (message id and content hash).
    ///
    /// When it is full, entries make room for new ones; an update of a forgotten message is
    /// forwarded.
    /// Memory: about 16 bytes per entry per core, 1 MiB per core at the default's most. Range
    /// 1..=16777216. Default: auto: 8192 per shard the core runs at start, at most 65536 (a
    /// fleet host's cores, whose shards come later: 65536).
    #[arg(long, value_name = "ENTRIES", help_heading = "Decoding and filtering")]
    pub dedup_cache_entries: Option<RawValue>,

    /// Largest decompressed payload accepted; a bigger one drops the connection (and resumes).
    ///
    /// A guard against decompression bombs; a READY or GUILD_CREATE of a big guild can be
    /// hundreds of KiB. Memory: a shard's decode buffer grows to the largest payload it has
    /// seen, up to this. Range 1024..=1073741824. Default: 33554432 (32 MiB).
    #[arg(long, value_name = "BYTES", help_heading = "Decoding and filtering")]
    pub payload_bytes_max: Option<RawValue>,

    // ---- Forwarding ----
    /// Records each core's ring to the sink holds; when full, the core stops reading its shards
    /// until the sink catches up (backpressure, never a drop).
    ///
    /// Memory: about 64 bytes per slot per core (512 KiB at the default's most), all of it from
    /// the start, plus the payloads waiting in it. Range 1..=16777216. Default: auto: 1024 per
    /// shard the core runs at start, at most 8192 (a fleet host's cores, whose shards come
    /// later: 8192).
    #[arg(long, value_name = "RECORDS", help_heading = "Forwarding")]
    pub ring_capacity: Option<RawValue>,

    /// Where batches are POSTed: the bot's endpoint, http:// or https://. Required with
    /// --sink http (the default); not needed with --sink redis-streams, which does not use it.
    #[arg(long, value_name = "URL", help_heading = "Forwarding")]
    pub forward_url: Option<RawValue>,

    /// Sent as the Authorization header of every batch, for the bot to check.
    ///
    /// Never logged. Default: none (no header).
    #[arg(
        long,
        env = ENV_FORWARD_SECRET,
        hide_env_values = true,
        value_name = "SECRET",
        value_parser = secret_arg,
        help_heading = "Forwarding"
    )]
    pub forward_secret: Option<Secret>,

    /// How long a batch POST may take before it counts as failed and is retried.
    ///
    /// Range 1..=600000. Default: 10000.
    #[arg(long, value_name = "MS", help_heading = "Forwarding")]
    pub forward_timeout_ms: Option<RawValue>,

    /// Most records in one batch.
    ///
    /// Default: 500.
    #[arg(long, value_name = "RECORDS", help_heading = "Forwarding")]
    pub batch_events_max: Option<RawValue>,

    /// Most payload bytes in one batch; a record bigger than this travels alone.
    ///
    /// Memory: the sink holds one batch of about this size while delivering it. Range
    /// 1..=1073741824. Default: 1048576 (1 MiB).
    #[arg(long, value_name = "BYTES", help_heading = "Forwarding")]
    pub batch_bytes_max: Option<RawValue>,

    /// How long the sink waits for more records before sending a batch that is not full.
    ///
    /// Trades latency for fewer, larger POSTs. 0 sends whatever is there at once. Range
    /// 0..=60000. Default: 5.
    #[arg(long, value_name = "MS", help_heading = "Forwarding")]
    pub batch_linger_ms: Option<RawValue>,

    /// Directory of the disk spill (batches kept while the bot is down) and saved sessions.
    ///
    /// Created if missing. Default: ./data.
    #[arg(long, value_name = "DIR", help_heading = "Forwarding")]
    pub data_dir: Option<RawValue>,

    /// Payload bytes of records held in memory for the bot (waiting for, or in, a batch);
    /// beyond it new records go to the disk spill.
    ///
    /// With --spill-bytes-max 0 there is no spill: a full queue backpressures the cores (they
    /// stop reading their shards) until the bot catches up. Memory: up to this many payload
    /// bytes, plus about 64 bytes per record. At least --batch-bytes-max (the queue must hold
    /// a full batch). The default holds 64 full default batches, about 60000 ~1 KB dispatches.
    /// Range 1..=1099511627776. Default: 67108864 (64 MiB).
    #[arg(long, value_name = "BYTES", help_heading = "Forwarding")]
    pub queue_bytes_max: Option<RawValue>,

    /// Most bytes the disk spill under --data-dir/spill may take, for records beyond
    /// --queue-bytes-max while the bot is down or slow. 0: no spill.
    ///
    /// Records survive a restart or kill -9 there and are delivered first, in order, when the
    /// bot is back. When the spill is full its oldest records are dropped (logged at error).
    /// With 0 records only wait in memory, and a full --queue-bytes-max backpressures the cores
    /// (they stop reading their shards) instead. Files are segments of min(64 MiB, this / 4);
    /// space is freed a segment at a time. A record larger than the spill cannot be spilled:
    /// keep it well above --payload-bytes-max. Memory: about 512 KiB of buffers when enabled.
    /// The default holds about a million ~1 KB dispatches. 0, or 1048576..=1125899906842624.
    /// Default: 1073741824 (1 GiB).
    #[arg(long, value_name = "BYTES", help_heading = "Forwarding")]
    pub spill_bytes_max: Option<RawValue>,

    /// When spilled records are fsynced: always, never, or at most every N milliseconds (<N>ms,
    /// e.g. 1000ms).
    ///
    /// A spilled record survives kill -9 in any mode; this decides what a power loss can take:
    /// always loses nothing written (a disk round trip per write), <N>ms at most the last N ms
    /// (0ms is always), never up to the kernel's writeback (about 30 s on Linux). Default:
    /// 1000ms.
    #[arg(long, value_name = "always|never|<N>ms", help_heading = "Forwarding")]
    pub spill_fsync: Option<RawValue>,

    /// Most records per second delivered to the bot while a backlog is drained (more than one
    /// batch in the memory queue, or anything in the spill), so a returning bot is not
    /// flattened. 0: unlimited.
    ///
    /// Set it above the live event rate, or the backlog never shrinks. At the default a full
    /// 1 GiB spill of ~1 KB dispatches drains in about a minute. Range 0..=4294967295.
    /// Default: 20000.
    #[arg(long, value_name = "RECORDS_PER_SEC", help_heading = "Forwarding")]
    pub backlog_rate: Option<RawValue>,

    /// Batches delivered at once, each over its own connection: the shards are split into this
    /// many lanes (shard id modulo the count), each with its own share of the memory queue and
    /// the spill, so each shard's records stay in order while a slow receiver's round trips
    /// overlap.
    ///
    /// While one batch at a time keeps up, every shard uses the first lane (one request per
    /// linger instead of one per lane); when that lane holds two batches, the shards spread
    /// over all lanes, and gather again after 10 s without a batch's worth in any lane. Each
    /// switch waits for the lanes to drain, so no shard has records in two lanes.
    ///
    /// Each lane gets --queue-bytes-max and --spill-bytes-max divided by the count, and
    /// --backlog-rate is shared among them. A start with another count while the spill holds
    /// records keeps the old count until the spill has drained (a shard must not change lanes
    /// with records queued). Range 1..=64. Default: 4.
    #[arg(long, value_name = "N", help_heading = "Forwarding")]
    pub batches_in_flight: Option<RawValue>,

    /// How often the saved-session file (--data-dir/sessions.json: each shard's session id,
    /// sequence and resume URL) is rewritten while running, so that a restart after a crash
    /// resumes instead of identifying again.
    ///
    /// It is always written at shutdown. After a crash the shards resume from the saved
    /// sequence, so Discord replays what followed it: shorter intervals replay fewer events to
    /// the bot, and each rewrite costs a small file write with an fsync. Range 100..=60000.
    /// Default: 1000.
    #[arg(long, value_name = "MS", help_heading = "Forwarding")]
    pub session_save_interval_ms: Option<RawValue>,

    // ---- Sink ----
    /// Where the records go: http (batches POSTed to --forward-url) or redis-streams (XADD
    /// into the Redis streams --stream-key:PARTITION on --redis-url, for consumers that read
    /// them with XREAD or XREADGROUP).
    ///
    /// redis-streams needs --redis-url (which then does not turn the fleet mode on, unless
    /// --fleet on) and makes --forward-url unnecessary. Default: http.
    #[arg(long, value_name = "http|redis-streams", help_heading = "Sink")]
    pub sink: Option<RawValue>,

    /// The prefix of the stream keys: the records go to the streams KEY:0, KEY:1, … up to
    /// --stream-partitions minus one.
    ///
    /// 1 to 200 printable ASCII characters, no spaces. Several bots sharing one Redis need
    /// distinct prefixes. Needs --sink redis-streams. Default: shardgate:events.
    #[arg(long, value_name = "KEY", help_heading = "Sink")]
    pub stream_key: Option<RawValue>,

    /// How many streams the records are spread over: a shard's records all go to stream
    /// shard_id % PARTITIONS, so each shard's order is kept within one stream.
    ///
    /// More partitions let more consumers read in parallel. Range 1..=1024. Needs --sink
    /// redis-streams. Default: 1.
    #[arg(long, value_name = "PARTITIONS", help_heading = "Sink")]
    pub stream_partitions: Option<RawValue>,

    /// Entries each stream is trimmed to, approximately (XADD MAXLEN ~): older entries are
    /// dropped by Redis whether or not a consumer has read them.
    ///
    /// Memory (in Redis, not here): about this many records per stream, so size it to what the
    /// consumers may fall behind by. Range 1000..=1000000000. Needs --sink redis-streams.
    /// Default: 1000000.
    #[arg(long, value_name = "ENTRIES", help_heading = "Sink")]
    pub stream_maxlen: Option<RawValue>,

    // ---- Control plane ----
    /// Address of the admin HTTP API (status, metrics, shard reconnects, gateway commands): IP:PORT.
    ///
    /// An address beyond loopback needs --admin-token. Default: 127.0.0.1:7878.
    #[arg(long, value_name = "IP:PORT", help_heading = "Control plane")]
    pub admin_addr: Option<RawValue>,

    /// Token every caller of the admin API must present.
    ///
    /// Never logged. Default: none (only allowed on a loopback --admin-addr).
    #[arg(
        long,
        env = ENV_ADMIN_TOKEN,
        hide_env_values = true,
        value_name = "TOKEN",
        value_parser = secret_arg,
        help_heading = "Control plane"
    )]
    pub admin_token: Option<Secret>,

    /// Extra trusted root certificates (PEM), added to the built-in web roots, for a TLS mock
    /// gateway or an internal bot endpoint.
    ///
    /// Default: none.
    #[arg(long, value_name = "PATH", help_heading = "Control plane")]
    pub ca_file: Option<RawValue>,

    // ---- Logging ----
    /// Log filter (tracing EnvFilter syntax): a level or directives like info,shardgate=debug.
    ///
    /// Default: info.
    #[arg(long, value_name = "FILTER", help_heading = "Logging")]
    pub log: Option<RawValue>,

    /// Log line format on stderr: pretty or json.
    ///
    /// Default: pretty.
    #[arg(long, value_name = "FORMAT", help_heading = "Logging")]
    pub log_format: Option<RawValue>,

    /// Tests only; Discord's is 5000. Length of one identify window per max_concurrency bucket.
    ///
    /// Values below 5000 are refused unless --gateway-url or --api-base points away from
    /// Discord. Default: 5000.
    #[arg(long, value_name = "MS", hide = true)]
    pub identify_interval_ms: Option<RawValue>,

    /// Tests only; Discord's is 2500. The guilds a shard may hold, for --reshard-at-percent.
    ///
    /// Range 1..=2500. Default: 2500.
    #[arg(long, value_name = "GUILDS", hide = true)]
    pub reshard_guilds_per_shard: Option<RawValue>,

    /// Tests only. The least time between two automatic reshards. Default: 15m.
    #[arg(long, value_name = "DURATION", hide = true)]
    pub reshard_cooldown: Option<RawValue>,
}

/// `shardgate demo`: the whole pipeline against a built-in simulated Discord and bot.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// How long the demo runs, in seconds. Default: 30.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 30,
        hide_default_value = true,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub duration: u64,

    /// Number of simulated shards. Default: 32.
    #[arg(
        long,
        value_name = "COUNT",
        default_value_t = 32,
        hide_default_value = true,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub shards: u32,

    /// Engine cores. Default: all available CPUs.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub cores: Option<u32>,

    /// Transport compression: zstd-stream, zlib-stream, payload or none. Default: zstd-stream.
    #[arg(long, value_name = "MODE", default_value_t = Compression::ZstdStream, hide_default_value = true)]
    pub compression: Compression,

    /// Dispatches per second each simulated shard sends. Default: 50.
    #[arg(
        long,
        value_name = "EVENTS_PER_SEC",
        default_value_t = 50,
        hide_default_value = true,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub rate: u32,

    /// Reshard under traffic: 3 s after every shard is ready, double the shard count (as POST
    /// /reshard would), and check across the switch that every event arrived once and in order
    /// per guild. The simulated Discord's identify window is then 1 s instead of 5 s, and the
    /// demo runs until the reshard has finished, however long --duration.
    #[arg(long)]
    pub reshard: bool,
}

/// A setting's text before parsing: a flag's argument, or a config file value rendered as
/// text (`16` → `16`, `true` → `true`, `["GUILDS", "GUILD_MESSAGES"]` → `GUILDS,GUILD_MESSAGES`).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct RawValue(String);

impl RawValue {
    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<String> for RawValue {
    fn from(text: String) -> Self {
        Self(text)
    }
}

impl From<&str> for RawValue {
    fn from(text: &str) -> Self {
        Self(text.to_owned())
    }
}

impl fmt::Debug for RawValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl<'de> Deserialize<'de> for RawValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawValueVisitor)
    }
}

struct RawValueVisitor;

impl<'de> Visitor<'de> for RawValueVisitor {
    type Value = RawValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string, a number, a boolean, or an array of those")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<RawValue, E> {
        Ok(RawValue(text.to_owned()))
    }

    fn visit_string<E: de::Error>(self, text: String) -> Result<RawValue, E> {
        Ok(RawValue(text))
    }

    fn visit_i64<E: de::Error>(self, number: i64) -> Result<RawValue, E> {
        Ok(RawValue(number.to_string()))
    }

    fn visit_u64<E: de::Error>(self, number: u64) -> Result<RawValue, E> {
        Ok(RawValue(number.to_string()))
    }

    fn visit_f64<E: de::Error>(self, number: f64) -> Result<RawValue, E> {
        Ok(RawValue(number.to_string()))
    }

    fn visit_bool<E: de::Error>(self, flag: bool) -> Result<RawValue, E> {
        Ok(RawValue(flag.to_string()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<RawValue, A::Error> {
        let mut joined = String::new();
        while let Some(item) = items.next_element::<RawValue>()? {
            if !joined.is_empty() {
                joined.push(',');
            }
            joined.push_str(item.as_str());
        }
        Ok(RawValue(joined))
    }
}

/// clap value parser of `--token` (infallible, so clap never echoes a token in an error).
fn token_arg(text: &str) -> Result<Token, std::convert::Infallible> {
    Ok(Token::new(text))
}

/// clap value parser of the other secrets (infallible for the same reason).
fn secret_arg(text: &str) -> Result<Secret, std::convert::Infallible> {
    Ok(Secret::new(text))
}

/// `token = "..."` in the config file.
fn token_from_file<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Token>, D::Error> {
    String::deserialize(deserializer).map(|text| Some(Token::new(text)))
}
