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

/// A config value the fake bot cannot run with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("fail rate {0} is not a probability in 0..=1")]
    FailRateOutOfRange(f64),
    #[error("max_body_bytes must be at least 1")]
    ZeroMaxBodyBytes,
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
