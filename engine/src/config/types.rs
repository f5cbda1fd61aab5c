//! The typed values a resolved [`Settings`](super::Settings) is made of.
//!
//! Plain data with `Display` in the syntax the command line accepts; parsing from operator text
//! (with errors that name the setting) lives in the parent module.

use std::fmt;
use std::num::NonZeroU32;

use serde::Deserialize;

use super::names::{INTENTS, KNOWN_INTENT_BITS, PRIVILEGED_INTENT_BITS};

/// A secret that is not the bot token (`--forward-secret`, `--admin-token`, `--redis-url`).
///
/// `Debug` prints `[redacted]` and there is no `Display`, so a secret inside a config, a log
/// field or an error never prints itself. Read it with [`Secret::expose_secret`] where it must
/// travel (an `Authorization` header, a constant-time comparison).
#[derive(Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret text, for the header or comparison that needs it.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }

    /// Whether `candidate` is the secret, in time that depends only on the lengths (a caller
    /// cannot learn the secret byte by byte from how long a refusal takes).
    pub fn matches(&self, candidate: &[u8]) -> bool {
        let secret = self.0.as_bytes();
        let difference = secret
            .iter()
            .zip(candidate)
            .fold(secret.len() ^ candidate.len(), |acc, (a, b)| {
                acc | usize::from(a ^ b)
            });
        difference == 0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The shard ids one process runs: `start..=end`, never empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ShardRange {
    start: u32,
    end: u32,
}

impl ShardRange {
    /// `start..=end`; `None` when the range would be empty (`start > end`).
    pub const fn new(start: u32, end: u32) -> Option<Self> {
        if start <= end {
            Some(Self { start, end })
        } else {
            None
        }
    }

    /// Every shard of a bot with `total_shards` shards: `0..=total_shards - 1`.
    pub const fn all(total_shards: NonZeroU32) -> Self {
        Self {
            start: 0,
            end: total_shards.get() - 1,
        }
    }

    /// The first shard id.
    pub const fn start(self) -> u32 {
        self.start
    }

    /// The last shard id (included).
    pub const fn end(self) -> u32 {
        self.end
    }

    /// How many shards the range holds (at least 1).
    pub const fn len(self) -> u64 {
        (self.end - self.start) as u64 + 1
    }

    /// Never true; present because `len` is.
    pub const fn is_empty(self) -> bool {
        false
    }

    /// Whether `shard_id` is in the range.
    pub const fn contains(self, shard_id: u32) -> bool {
        self.start <= shard_id && shard_id <= self.end
    }

    /// The shard ids in order.
    pub fn iter(self) -> std::ops::RangeInclusive<u32> {
        self.start..=self.end
    }
}

impl fmt::Display for ShardRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..={}", self.start, self.end)
    }
}

/// How many shards the bot has (`--total-shards`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TotalShards {
    /// Ask Discord: `/gateway/bot`'s recommended `shards`.
    Auto,
    /// Exactly this many.
    Fixed(NonZeroU32),
}

impl TotalShards {
    /// The shard count to run with, given what `/gateway/bot` recommends (used only for `Auto`).
    pub const fn resolve(self, recommended: NonZeroU32) -> NonZeroU32 {
        match self {
            Self::Auto => recommended,
            Self::Fixed(total) => total,
        }
    }
}

impl fmt::Display for TotalShards {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Fixed(total) => write!(f, "{total}"),
        }
    }
}

/// Where this process's shards go: the result of [`Settings::plan`](super::Settings::plan).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardPlan {
    /// The bot's shard count (`--total-shards`, or Discord's recommendation for `auto`).
    pub total_shards: NonZeroU32,
    /// The shards this process owns (`--shards`, default all).
    pub shards: ShardRange,
    /// Cores that get shards: `ceil(shards / shards_per_core)`, at most `--cores`.
    pub cores: u32,
    /// Shards per core (the last core may get fewer).
    pub shards_per_core: u32,
}

/// Gateway intents bit set (`--intents`), sent as given in identify.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Intents(u64);

impl Intents {
    /// Every named intent that needs no portal approval: all but GUILD_MEMBERS, GUILD_PRESENCES
    /// and MESSAGE_CONTENT (53575421). The default.
    pub const NON_PRIVILEGED: Self = Self(KNOWN_INTENT_BITS & !PRIVILEGED_INTENT_BITS);

    /// Wraps a bit set; bits without a name are kept (for intents newer than this build).
    pub const fn from_bits(bits: u64) -> Self {
        Self(bits)
    }

    /// The bit set.
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// The privileged intents in the set (they must be enabled in the developer portal).
    pub const fn privileged(self) -> Self {
        Self(self.0 & PRIVILEGED_INTENT_BITS)
    }

    /// Names of the named bits in the set, in bit order.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        INTENTS
            .iter()
            .filter(move |&&(_, bit)| self.0 & (1 << bit) != 0)
            .map(|&(name, _)| name)
    }
}

impl Default for Intents {
    fn default() -> Self {
        Self::NON_PRIVILEGED
    }
}

/// Comma-separated names, bits without a name as one trailing number; `0` for the empty set.
/// The output parses back to the same set.
impl fmt::Display for Intents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut separator = "";
        for name in self.names() {
            write!(f, "{separator}{name}")?;
            separator = ",";
        }
        let unnamed = self.0 & !KNOWN_INTENT_BITS;
        if unnamed != 0 || self.0 == 0 {
            write!(f, "{separator}{unnamed}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Intents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Intents({} = {self})", self.0)
    }
}

/// Which dispatch events are forwarded (`--events`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Events {
    /// Every dispatch. The default.
    #[default]
    All,
    /// Only these, sorted and unique, spelled as in [`EVENT_NAMES`](super::EVENT_NAMES).
    Only(Box<[&'static str]>),
}

impl Events {
    /// An allow-list of table names (sorts and deduplicates).
    pub fn only(mut names: Vec<&'static str>) -> Self {
        names.sort_unstable();
        names.dedup();
        Self::Only(names.into_boxed_slice())
    }

    /// Whether a dispatch with this `t` is forwarded.
    pub fn allows(&self, event_name: &[u8]) -> bool {
        match self {
            Self::All => true,
            Self::Only(names) => names
                .binary_search_by(|known| known.as_bytes().cmp(event_name))
                .is_ok(),
        }
    }
}

impl fmt::Display for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("all"),
            Self::Only(names) => f.write_str(&names.join(",")),
        }
    }
}

/// Where the records go (`--sink`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SinkKind {
    /// Batches POSTed to the bot's `--forward-url`. The default.
    #[default]
    Http,
    /// `XADD` into the Redis streams `{stream_key}:{partition}` on `--redis-url`, one stream per
    /// partition; a shard's records all go to partition `shard_id % stream_partitions`.
    RedisStreams,
}

impl SinkKind {
    /// The command-line spelling.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::RedisStreams => "redis-streams",
        }
    }
}

impl fmt::Display for SinkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Shape of the log lines on stderr (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LogFormat {
    /// Human-readable lines. The default.
    #[default]
    Pretty,
    /// One JSON object per line, for log collectors.
    Json,
}

impl LogFormat {
    /// The command-line spelling.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Pretty => "pretty",
            Self::Json => "json",
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_range_basics() {
        let range = ShardRange::new(2, 5).expect("2 <= 5");
        assert_eq!((range.start(), range.end(), range.len()), (2, 5, 4));
        assert!(range.contains(2) && range.contains(5) && !range.contains(6));
        assert_eq!(range.to_string(), "2..=5");
        assert_eq!(range.iter().collect::<Vec<_>>(), [2, 3, 4, 5]);
        assert_eq!(ShardRange::new(5, 2), None);
        assert_eq!(
            ShardRange::new(0, u32::MAX).map(ShardRange::len),
            Some(1 << 32)
        );
    }

    #[test]
    fn intents_display_and_privileged() {
        assert_eq!(Intents::NON_PRIVILEGED.bits(), 53_575_421);
        assert_eq!(Intents::NON_PRIVILEGED.privileged().bits(), 0);
        let intents = Intents::from_bits(1 | (1 << 9) | (1 << 15) | (1 << 40));
        assert_eq!(
            intents.to_string(),
            format!("GUILDS,GUILD_MESSAGES,MESSAGE_CONTENT,{}", 1u64 << 40)
        );
        assert_eq!(
            intents.privileged().names().collect::<Vec<_>>(),
            ["MESSAGE_CONTENT"]
        );
        assert_eq!(Intents::from_bits(0).to_string(), "0");
    }

    #[test]
    fn events_allow_list() {
        let events = Events::only(vec!["MESSAGE_CREATE", "GUILD_CREATE", "MESSAGE_CREATE"]);
        assert_eq!(events.to_string(), "GUILD_CREATE,MESSAGE_CREATE");
        assert!(events.allows(b"MESSAGE_CREATE"));
        assert!(!events.allows(b"MESSAGE_UPDATE"));
        assert!(Events::All.allows(b"ANYTHING"));
    }

    #[test]
    fn sink_kind_names() {
        assert_eq!(SinkKind::default(), SinkKind::Http);
        assert_eq!(SinkKind::Http.to_string(), "http");
        assert_eq!(SinkKind::RedisStreams.to_string(), "redis-streams");
    }

    #[test]
    fn secret_debug_is_redacted() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(&secret)), "Some([redacted])");
        assert_eq!(secret.expose_secret(), "hunter2");
    }
}
