//! Every knob of the mock gateway, as command-line flags and as a library struct.
//!
//! Defaults follow Discord (docs/discord-gateway.md) where Discord has a number; rates of faults default
//! to zero so that a plain run is a clean gateway. Tests shorten the time windows (identify
//! window, heartbeat interval) to keep runs fast; the defaults are Discord's.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::events::EventMix;

/// Which transport compression a connection asked for with `compress=` in its query string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// Plain text frames (payload compression still possible with identify `compress: true`).
    None,
    /// One zlib context per connection, sync flush per message (`00 00 ff ff` suffix).
    ZlibStream,
    /// One zstd context per connection, flushed (not ended) per message.
    ZstdStream,
}

/// The mock gateway's configuration. `clap` flags double as the library's struct.
#[derive(Clone, Debug, Args)]
pub struct MockConfig {
    /// Address of the main listener: REST (`/api/v10/gateway/bot`), WebSocket and `/_mock/*`
    /// control. Port 0 picks a free port; the bound URLs are printed at startup.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,

    /// Address of the second listener that READY's `resume_gateway_url` points at, so that
    /// clients must resume against a different host:port, as on Discord. Port 0 picks one.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub resume_listen: SocketAddr,

    /// Bot token the mock accepts (REST `Authorization: Bot <token>`, IDENTIFY `d.token`).
    /// Never printed.
    #[arg(
        long,
        env = "MOCK_TOKEN",
        default_value = "mock-token",
        hide_env_values = true
    )]
    pub token: String,

    /// Serve wss:// and https:// with a certificate generated at startup; the CA is written to
    /// `--ca-out` so clients can trust it (shardgate `--ca-file`).
    #[arg(long)]
    pub tls: bool,

    /// Where to write the generated CA certificate (PEM) when `--tls` is on.
    /// Default: `mock-gateway-ca.pem` in the system temp directory.
    #[arg(long)]
    pub ca_out: Option<PathBuf>,

    /// Seed of every random choice (events, faults, jitter). Printed at startup; the same seed
    /// replays the same traffic and faults. Default: random.
    #[arg(long)]
    pub seed: Option<u64>,

    /// Total guilds the bot is in. Guild ids are snowflakes drawn from the seed; a shard owns
    /// the guilds with `(id >> 22) % total_shards == shard_id`. Changeable at runtime with
    /// `POST /_mock/guilds`.
    #[arg(long, default_value_t = 20)]
    pub guilds: usize,

    /// `shards` returned by `/gateway/bot`. Default: ceil(guilds / 1000), at least 1.
    #[arg(long)]
    pub recommended_shards: Option<u32>,

    /// Maximum guilds one shard may hold; more gets close 4011 (Discord: 2500).
    #[arg(long, default_value_t = 2500)]
    pub max_guilds_per_shard: usize,

    /// `session_start_limit.max_concurrency`: identify buckets (`shard_id % max_concurrency`).
    #[arg(long, default_value_t = 1)]
    pub max_concurrency: u32,

    /// One identify per bucket per this window; faster gets op 9 and a violation (Discord: 5000).
    #[arg(long, default_value_t = 5000)]
    pub identify_window_ms: u64,

    /// `session_start_limit.total`: identifies allowed per reset period (Discord: 1000).
    #[arg(long, default_value_t = 1000)]
    pub session_start_total: u32,

    /// `session_start_limit.remaining` at startup; each identify spends one. Identifying at 0
    /// resets the token (every session closed with 4004, recorded as a violation).
    #[arg(long)]
    pub session_start_remaining: Option<u32>,

    /// Milliseconds until `remaining` refills to `total` (Discord: up to 24 h).
    #[arg(long, default_value_t = 86_400_000)]
    pub session_start_reset_after_ms: u64,

    /// Privileged intents this application may use (bitmask of GUILD_MEMBERS 1<<1,
    /// GUILD_PRESENCES 1<<8, MESSAGE_CONTENT 1<<15). Others requested get close 4014.
    #[arg(long, default_value_t = (1 << 1) | (1 << 8) | (1 << 15))]
    pub allowed_privileged_intents: u64,

    /// HELLO's `heartbeat_interval` (Discord: 41250).
    #[arg(long, default_value_t = 41_250)]
    pub heartbeat_interval_ms: u64,

    /// A connection that sends no heartbeat for interval + grace is closed with 4009.
    #[arg(long, default_value_t = 10_000)]
    pub heartbeat_grace_ms: u64,

    /// How long a disconnected session stays resumable.
    #[arg(long, default_value_t = 180)]
    pub session_ttl_secs: u64,

    /// Dispatches kept per session for replay on resume (the oldest are forgotten; resuming
    /// from before them gets op 9 `d: false`). Also how far a session may fall behind the events
    /// of its guilds that another session (a second shard set, or a second session of the same
    /// shard) already took: beyond that the session is overrun and ends.
    #[arg(long, default_value_t = 4096)]
    pub replay_capacity: usize,

    /// Bytes of dispatches kept per session for replay (whichever of this and
    /// `--replay-capacity` is reached first bounds the buffer). Memory per session, and per
    /// partition of the guilds while two sessions take its events at different paces.
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    pub replay_bytes_max: usize,

    /// Steady-stream dispatches per second per shard after the initial GUILD_CREATEs (per
    /// partition of the guilds: per shard of the first shard set; a second set with another
    /// shard count sees the same events, spread over its shards). 0 = as fast as the connection
    /// takes them (one shard set only: a second set would fall behind and be overrun).
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,

    /// Stop the steady stream after this many dispatches per shard (counted across sessions;
    /// per partition, i.e. per shard of the first shard set); 0 = never stop. Tests use it to
    /// compare a finished ledger with what arrived.
    #[arg(long, default_value_t = 0)]
    pub events_per_shard: u64,

    /// Relative weights of the steady stream, e.g.
    /// `message_create=30,message_update_unfurl=8,typing_start=0`; names not given keep their
    /// defaults. Names: message_create, message_update_edit, message_update_unfurl,
    /// message_delete, typing_start, presence_update, guild_member_update, reaction_add,
    /// reaction_remove, interaction_create.
    #[arg(long, value_parser = parse_mix)]
    pub mix: Option<EventMix>,

    /// Approximate size of each GUILD_CREATE in bytes (median of real captures: ~22 KB).
    #[arg(long, default_value_t = 20_000)]
    pub guild_create_bytes: usize,

    /// zstd level for `compress=zstd-stream`.
    #[arg(long, default_value_t = 3)]
    pub zstd_level: i32,

    /// zlib level for `compress=zlib-stream` and payload compression.
    #[arg(long, default_value_t = 6)]
    pub zlib_level: u32,

    /// With identify `compress: true` and no transport compression, payloads at least this
    /// big go out as binary frames, each a complete zlib stream.
    #[arg(long, default_value_t = 1024)]
    pub payload_compress_min_bytes: usize,

    /// Probability per steady-stream dispatch of sending op 7 Reconnect.
    #[arg(long, default_value_t = 0.0)]
    pub fault_reconnect: f64,
    /// Probability per dispatch of op 9 Invalid Session with `d: true` (resumable).
    #[arg(long, default_value_t = 0.0)]
    pub fault_invalid_session_resumable: f64,
    /// Probability per dispatch of op 9 Invalid Session with `d: false` (session gone).
    #[arg(long, default_value_t = 0.0)]
    pub fault_invalid_session: f64,
    /// Probability per dispatch of closing with one of `--fault-close-codes`.
    #[arg(long, default_value_t = 0.0)]
    pub fault_close: f64,
    /// Close codes `--fault-close` picks from (the reconnectable ones; 4003/4007/4009 also end
    /// the session).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "4000,4001,4002,4003,4005,4007,4008,4009"
    )]
    pub fault_close_codes: Vec<u16>,
    /// Probability per dispatch of dropping the TCP connection without a close frame.
    #[arg(long, default_value_t = 0.0)]
    pub fault_drop: f64,
    /// Probability per dispatch of turning the connection into a zombie: nothing more is
    /// written (no ACKs, no dispatches, which still count as sent), nothing read is answered.
    #[arg(long, default_value_t = 0.0)]
    pub fault_zombie: f64,
    /// Probability per dispatch of stalling the stream for `--stall-ms` (ACKs still flow).
    #[arg(long, default_value_t = 0.0)]
    pub fault_stall: f64,
    /// Length of a stall.
    #[arg(long, default_value_t = 3000)]
    pub stall_ms: u64,
    /// Probability per dispatch of a corrupt frame (bad compressed data, or invalid JSON).
    #[arg(long, default_value_t = 0.0)]
    pub fault_corrupt: f64,
    /// Probability per dispatch of the server asking for a heartbeat (op 1).
    #[arg(long, default_value_t = 0.0)]
    pub fault_server_heartbeat: f64,
    /// No fault before this many steady-stream dispatches on a connection.
    #[arg(long, default_value_t = 0)]
    pub fault_warmup_dispatches: u64,

    /// A zombie connection the client has not closed after this many heartbeat intervals is
    /// recorded as `zombie_undetected` and dropped.
    #[arg(long, default_value_t = 3)]
    pub zombie_patience_intervals: u32,

    /// After op 7 or op 9, how long the client has to close the connection before the mock
    /// closes it and records `ignored_reconnect`.
    #[arg(long, default_value_t = 10_000)]
    pub reconnect_grace_ms: u64,

    /// Payloads a client may send per window (Discord: 120 per 60 s, heartbeats included).
    #[arg(long, default_value_t = 120)]
    pub send_limit: u32,
    /// The send-limit window (sliding).
    #[arg(long, default_value_t = 60_000)]
    pub send_window_ms: u64,

    /// Commands (op 3/4/8/31/43) kept in the ledger per shard; counts are never capped.
    #[arg(long, default_value_t = 10_000)]
    pub ledger_commands_max: usize,

    /// List every world event once (id, guild, `t`, content hash, whether it is a redundant
    /// MESSAGE_UPDATE) for `GET /_mock/events`: about 60 bytes of memory per event, kept for the
    /// whole run, so off by default (benchmarks make millions). The per-session `event_runs` of
    /// the ledger are kept either way.
    #[arg(long)]
    pub record_events: bool,
}

fn parse_mix(spec: &str) -> Result<EventMix, String> {
    EventMix::parse(spec)
}

impl Default for MockConfig {
    fn default() -> Self {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            config: MockConfig,
        }
        // The defaults live in one place, the clap attributes; parsing no arguments cannot
        // fail because every field has a default.
        <Wrapper as clap::Parser>::try_parse_from(["mock-gateway"])
            .expect("every MockConfig field has a default")
            .config
    }
}

impl MockConfig {
    /// Checks knobs that clap cannot: rates are probabilities, windows are not zero.
    pub fn validate(&self) -> Result<(), String> {
        let probabilities = [
            ("--fault-reconnect", self.fault_reconnect),
            (
                "--fault-invalid-session-resumable",
                self.fault_invalid_session_resumable,
            ),
            ("--fault-invalid-session", self.fault_invalid_session),
            ("--fault-close", self.fault_close),
            ("--fault-drop", self.fault_drop),
            ("--fault-zombie", self.fault_zombie),
            ("--fault-stall", self.fault_stall),
            ("--fault-corrupt", self.fault_corrupt),
            ("--fault-server-heartbeat", self.fault_server_heartbeat),
        ];
        for (name, p) in probabilities {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!(
                    "{name} is {p}; it is a probability: use 0.0 to 1.0"
                ));
            }
        }
        if self.rate.is_nan() || self.rate < 0.0 {
            return Err(format!(
                "--rate is {}; use 0 (unlimited) or a positive number",
                self.rate
            ));
        }
        if self.max_concurrency == 0 {
            return Err("--max-concurrency is 0; use 1 or more".into());
        }
        if self.heartbeat_interval_ms == 0 {
            return Err("--heartbeat-interval-ms is 0; use a positive interval".into());
        }
        if self.send_limit == 0 || self.send_window_ms == 0 {
            return Err("--send-limit and --send-window-ms must be positive".into());
        }
        if self.replay_capacity < 256 {
            return Err(format!(
                "--replay-capacity is {}; use at least 256 (one write burst must fit)",
                self.replay_capacity
            ));
        }
        if let Some(code) = self
            .fault_close_codes
            .iter()
            .find(|c| !(4000..=4999).contains(*c))
        {
            return Err(format!(
                "--fault-close-codes has {code}; use 4000..=4999 gateway codes"
            ));
        }
        if self.fault_close > 0.0 && self.fault_close_codes.is_empty() {
            return Err("--fault-close is set but --fault-close-codes is empty".into());
        }
        if !(-7..=22).contains(&self.zstd_level) || self.zlib_level > 9 {
            return Err("--zstd-level must be -7..=22 and --zlib-level 0..=9".into());
        }
        Ok(())
    }

    pub(crate) fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    pub(crate) fn mix_or_default(&self) -> EventMix {
        self.mix.clone().unwrap_or_default()
    }

    pub(crate) fn recommended_shards_for(&self, guilds: usize) -> u32 {
        self.recommended_shards
            .unwrap_or_else(|| u32::try_from(guilds.div_ceil(1000).max(1)).unwrap_or(u32::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_discords_numbers_and_valid() {
        let config = MockConfig::default();
        assert_eq!(config.heartbeat_interval_ms, 41_250);
        assert_eq!(config.identify_window_ms, 5000);
        assert_eq!(config.send_limit, 120);
        assert_eq!(config.max_guilds_per_shard, 2500);
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.recommended_shards_for(0), 1);
        assert_eq!(config.recommended_shards_for(2001), 3);
    }

    #[test]
    fn probabilities_out_of_range_are_named() {
        let config = MockConfig {
            fault_drop: 1.5,
            ..MockConfig::default()
        };
        let error = config.validate().unwrap_err();
        assert!(error.contains("--fault-drop"), "{error}");
    }
}
