//! The fake bot's knobs: one struct shared by the library (`FakeBot::start`) and the binary's
//! command line (it is a `clap::Args`), so that both document the same defaults.
//!
//! Must not: print or log the secret. [`Secret`] has a redacted `Debug` and no `Display`.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::str::FromStr;
use std::time::Duration;

/// Default listen address of the binary and of [`BotConfig::default`].
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9000));
/// Default length of a refusal window, when `refuse_after_ms` fires.
pub const DEFAULT_REFUSE_FOR_MS: u64 = 5_000;
/// Default bound on one batch body: 64 MiB, far above any batch the engine builds.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Everything that shapes how the fake bot answers. `Default` gives the command line's defaults;
/// in-process tests usually want [`BotConfig::ephemeral`].
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct BotConfig {
    /// Address to listen on. Port 0 picks a free port; the bound address is printed on stdout as
    /// `fake-bot listening on http://ADDR`.
    #[arg(long, default_value_t = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// Secret the engine must send as `Authorization: <secret>` (exactly, no "Bearer"); a batch
    /// without it is answered 401 and not recorded. Default: none (no check). Never printed or
    /// logged.
    #[arg(long, env = "FORWARD_SECRET", hide_env_values = true)]
    pub secret: Option<Secret>,

    /// Probability (0..=1) of answering a batch 500 or 503 instead of recording it. Drawn from
    /// `--seed`, so a run is replayable.
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability)]
    pub fail_rate: f64,

    /// Seed of the failure dice. Default: random; the seed in use is printed at start and is in
    /// the report.
    #[arg(long)]
    pub seed: Option<u64>,

    /// Delay before answering each batch, in milliseconds (a slow bot).
    #[arg(long, default_value_t = 0)]
    pub slow_ms: u64,

    /// After this many milliseconds of uptime, go away once for `--refuse-for-ms`: close the
    /// listener and every open connection, then listen again on the same port (a bot restart).
    /// Default: never (it can still be triggered through `POST /_bot/control`).
    #[arg(long)]
    pub refuse_after_ms: Option<u64>,

    /// Length of the refusal window started by `--refuse-after-ms`, in milliseconds.
    #[arg(long, default_value_t = DEFAULT_REFUSE_FOR_MS)]
    pub refuse_for_ms: u64,

    /// Largest batch body accepted, in bytes; a larger one is answered 413. The whole body is held
    /// in memory while it is parsed, so this is also the memory bound per connection.
    #[arg(long, default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,

    /// Keep, in delivery order, a content hash of every world event received (FNV-1a 64 of `t`,
    /// a newline and the raw `d`: the hash the mock gateway's event list gives each event; READY,
    /// RESUMED, backfill GUILD_CREATEs and answers to commands belong to a session and are left
    /// out, the backfill's guild ids kept apart), for tests that check exactly-once delivery by
    /// content, as across a reshard's two shard sets.
    /// Costs a parse of each payload and 8 bytes per dispatch. Default: off.
    #[arg(long)]
    pub record_content: bool,
}

impl Default for BotConfig {
    fn default() -> Self {
        BotConfig {
            listen: DEFAULT_LISTEN,
            secret: None,
            fail_rate: 0.0,
            seed: None,
            slow_ms: 0,
            refuse_after_ms: None,
            refuse_for_ms: DEFAULT_REFUSE_FOR_MS,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            record_content: false,
        }
    }
}

impl BotConfig {
    /// The defaults, but listening on a free port of 127.0.0.1: what in-process tests want.
    pub fn ephemeral() -> Self {
        BotConfig {
            listen: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)),
            ..BotConfig::default()
        }
    }

    /// Checks the values a `clap` parse would have refused, for configs built in code.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_probability(self.fail_rate)?;
        if self.max_body_bytes == 0 {
            return Err(ConfigError::ZeroMaxBodyBytes);
        }
        Ok(())
    }

    /// The automatic refusal window, if one is configured: (when, for how long).
    pub(crate) fn refuse_schedule(&self) -> Option<(Duration, Duration)> {
        self.refuse_after_ms.map(|after_ms| {
            (
                Duration::from_millis(after_ms),
                Duration::from_millis(self.refuse_for_ms),
            )
        })
    }
}

/// Default of `--stream-key`: the engine's default.
pub const DEFAULT_STREAM_KEY: &str = "shardgate:events";
/// Default of `--group`.
pub const DEFAULT_GROUP: &str = "fake-bot";
/// Default of `--consumer`.
pub const DEFAULT_CONSUMER: &str = "fake-bot-1";
/// Default of `--block-ms`.
pub const DEFAULT_BLOCK_MS: u64 = 500;
/// Default of `--read-count`.
pub const DEFAULT_READ_COUNT: usize = 500;
/// Default of `--claim-min-idle-ms`.
pub const DEFAULT_CLAIM_MIN_IDLE_MS: u64 = 30_000;
/// Default of `--dedup-window`: ids remembered to drop copies (about 60 bytes each).
pub const DEFAULT_DEDUP_WINDOW: usize = 100_000;
/// Longest `--block-ms`: the consumer checks whether it was asked to stop between reads.
pub const BLOCK_MS_MAX: u64 = 10_000;

/// How the fake bot consumes the engine's Redis Streams sink (`--sink redis-streams`), in
/// addition to listening for batches: a consumer group over every partition stream, whose
/// entries go to the same ledger and report as forwarded batches. Off unless `--redis-url` is
/// given. In code, [`StreamsConfig::new`] and `FakeBot::consume_streams`.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct StreamsConfig {
    /// Consume the streams in this Redis (`redis://[:PASSWORD@]HOST:PORT[/DB]`) with a
    /// consumer group. Never printed or logged.
    #[arg(long)]
    pub redis_url: Option<RedisUrl>,

    /// The engine's `--stream-key`: the streams are `KEY:0` … `KEY:(PARTITIONS-1)`.
    #[arg(long, default_value = DEFAULT_STREAM_KEY)]
    pub stream_key: String,

    /// The engine's `--stream-partitions`: how many streams to read.
    #[arg(long, default_value_t = 1)]
    pub stream_partitions: u32,

    /// The consumer group (created at `0`, with MKSTREAM, if it does not exist).
    #[arg(long, default_value = DEFAULT_GROUP)]
    pub group: String,

    /// This consumer's name in the group. A consumer started again with the same name reads
    /// its own pending entries first.
    #[arg(long, default_value = DEFAULT_CONSUMER)]
    pub consumer: String,

    /// How long one XREADGROUP waits for new entries, in milliseconds (1..=10000); also the
    /// longest a stop waits for the read in flight.
    #[arg(long, default_value_t = DEFAULT_BLOCK_MS)]
    pub block_ms: u64,

    /// Most entries one XREADGROUP or XAUTOCLAIM returns.
    #[arg(long, default_value_t = DEFAULT_READ_COUNT)]
    pub read_count: usize,

    /// Pending entries idle this long, in milliseconds, are claimed from whichever consumer
    /// holds them (a dead one) with XAUTOCLAIM, checked every half of it.
    #[arg(long, default_value_t = DEFAULT_CLAIM_MIN_IDLE_MS)]
    pub claim_min_idle_ms: u64,

    /// How many recent ids are kept to drop copies (an entry whose `id` was recorded before);
    /// a copy older than that reaches the ledger, which counts it as a duplicate.
    #[arg(long, default_value_t = DEFAULT_DEDUP_WINDOW)]
    pub dedup_window: usize,
}

impl Default for StreamsConfig {
    fn default() -> Self {
        StreamsConfig {
            redis_url: None,
            stream_key: DEFAULT_STREAM_KEY.to_owned(),
            stream_partitions: 1,
            group: DEFAULT_GROUP.to_owned(),
            consumer: DEFAULT_CONSUMER.to_owned(),
            block_ms: DEFAULT_BLOCK_MS,
            read_count: DEFAULT_READ_COUNT,
            claim_min_idle_ms: DEFAULT_CLAIM_MIN_IDLE_MS,
            dedup_window: DEFAULT_DEDUP_WINDOW,
        }
    }
}

impl StreamsConfig {
    /// The defaults, consuming from `redis_url`.
    pub fn new(redis_url: impl Into<String>) -> Self {
        StreamsConfig {
            redis_url: Some(RedisUrl(redis_url.into())),
            ..StreamsConfig::default()
        }
    }

    /// Checks what a consumer cannot run with.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.redis_url.is_none() {
            return Err(ConfigError::NoRedisUrl);
        }
        let names = [
            ("stream key", &self.stream_key),
            ("group", &self.group),
            ("consumer", &self.consumer),
        ];
        for (what, name) in names {
            if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(ConfigError::BadName(what));
            }
        }
        if !(1..=1024).contains(&self.stream_partitions) {
            return Err(ConfigError::OutOfRange("stream partitions", "1..=1024"));
        }
        if !(1..=BLOCK_MS_MAX).contains(&self.block_ms) {
            return Err(ConfigError::OutOfRange("block ms", "1..=10000"));
        }
        if !(1..=100_000).contains(&self.read_count) {
            return Err(ConfigError::OutOfRange("read count", "1..=100000"));
        }
        if self.claim_min_idle_ms == 0 {
            return Err(ConfigError::OutOfRange("claim min idle ms", "at least 1"));
        }
        if self.dedup_window == 0 {
            return Err(ConfigError::OutOfRange("dedup window", "at least 1"));
        }
        Ok(())
    }

    /// The stream of each partition, in partition order.
    pub fn stream_keys(&self) -> Vec<String> {
        (0..self.stream_partitions)
            .map(|partition| format!("{}:{partition}", self.stream_key))
            .collect()
    }
}

/// A Redis URL, which may hold a password: its `Debug` is redacted and it has no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl RedisUrl {
    pub fn new(url: impl Into<String>) -> Self {
        RedisUrl(url.into())
    }

    /// The URL itself, for the one place that must use it (opening the client).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("RedisUrl(<redacted>)")
    }
}

impl FromStr for RedisUrl {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(RedisUrl(text.to_owned()))
    }
}

/// A config value the fake bot cannot run with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("fail rate {0} is not a probability in 0..=1")]
    FailRateOutOfRange(f64),
    #[error("max_body_bytes must be at least 1")]
    ZeroMaxBodyBytes,
    #[error("consuming streams needs a Redis URL (--redis-url)")]
    NoRedisUrl,
    #[error("the Redis URL does not parse (redis://[:PASSWORD@]HOST:PORT[/DB])")]
    BadRedisUrl,
    #[error("the {0} must be non-empty, without spaces or control characters")]
    BadName(&'static str),
    #[error("the {0} must be in {1}")]
    OutOfRange(&'static str, &'static str),
}

/// Checks that `fail_rate` is a probability: finite and in 0..=1.
pub fn check_probability(fail_rate: f64) -> Result<f64, ConfigError> {
    if (0.0..=1.0).contains(&fail_rate) {
        Ok(fail_rate)
    } else {
        Err(ConfigError::FailRateOutOfRange(fail_rate))
    }
}

fn parse_probability(text: &str) -> Result<f64, String> {
    let value: f64 = text.parse().map_err(|error| format!("{error}"))?;
    check_probability(value).map_err(|error| error.to_string())
}

/// The shared secret of the forwarding contract. Its `Debug` is redacted and it has no
/// `Display`, so it cannot end up in a log line by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(secret: impl Into<String>) -> Self {
        Secret(secret.into())
    }

    /// The secret itself, for the one place that must send it (an HTTP header).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Compares a presented `Authorization` value with the secret, in time that does not depend
    /// on where they differ.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let expected = self.0.as_bytes();
        presented.len() == expected.len()
            && presented
                .iter()
                .zip(expected)
                .fold(0_u8, |difference, (a, b)| difference | (a ^ b))
                == 0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("Secret(<redacted>)")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Secret(text.to_owned()))
    }
}

impl From<&str> for Secret {
    fn from(text: &str) -> Self {
        Secret(text.to_owned())
    }
}

impl From<String> for Secret {
    fn from(text: String) -> Self {
        Secret(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_debug_is_redacted() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
        let config = BotConfig {
            secret: Some(secret),
            ..BotConfig::default()
        };
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn redis_url_debug_is_redacted_and_streams_config_is_checked() {
        let config = StreamsConfig::new("redis://:hunter2@127.0.0.1:6379/");
        assert!(!format!("{config:?}").contains("hunter2"));
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(
            StreamsConfig::default().validate(),
            Err(ConfigError::NoRedisUrl)
        );
        let bad = |change: fn(&mut StreamsConfig)| {
            let mut config = StreamsConfig::new("redis://127.0.0.1/");
            change(&mut config);
            config.validate().unwrap_err()
        };
        assert_eq!(
            bad(|c| c.group = "a b".into()),
            ConfigError::BadName("group")
        );
        assert_eq!(
            bad(|c| c.stream_key = String::new()),
            ConfigError::BadName("stream key")
        );
        assert!(matches!(
            bad(|c| c.block_ms = 0),
            ConfigError::OutOfRange("block ms", _)
        ));
        assert!(matches!(
            bad(|c| c.stream_partitions = 0),
            ConfigError::OutOfRange("stream partitions", _)
        ));
        let mut two = StreamsConfig::new("redis://127.0.0.1/");
        two.stream_partitions = 2;
        two.stream_key = "k".into();
        assert_eq!(two.stream_keys(), ["k:0", "k:1"]);
    }

    #[test]
    fn secret_matches_exactly() {
        let secret = Secret::new("abc");
        assert!(secret.matches(b"abc"));
        assert!(!secret.matches(b"abd"));
        assert!(!secret.matches(b"abcd"));
        assert!(!secret.matches(b"Bearer abc"));
        assert!(!secret.matches(b""));
    }

    #[test]
    fn probability_bounds() {
        assert_eq!(check_probability(0.0), Ok(0.0));
        assert_eq!(check_probability(1.0), Ok(1.0));
        assert_eq!(
            check_probability(1.5),
            Err(ConfigError::FailRateOutOfRange(1.5))
        );
        assert!(check_probability(f64::NAN).is_err());
        assert!(parse_probability("-0.1").is_err());
        assert!(parse_probability("x").is_err());
    }
}
