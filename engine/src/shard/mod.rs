//! Shard stage: one Discord gateway session per shard.
//!
//! [`Shard`] is the sans-IO protocol core (heartbeat, zombie detection, identify, resume,
//! reconnect, close-code policy, send limiting). It owns no socket and reads no clock; a driver
//! owns the WebSocket and feeds the machine bytes and `now`. See [`machine`] for the driver
//! contract.

mod json;
pub mod machine;
mod send_window;
mod token;

#[doc(hidden)]
pub mod fuzz;

#[doc(hidden)]
pub use fuzz::fuzz_entry;
pub use machine::{
    CLOSE_CODE_END_SESSION, CLOSE_CODE_KEEP_SESSION, COMMAND_OPCODES, ClosePolicy, CommandError,
    ConfigError, ConnectTarget, ControlError, FATAL_CLOSE_CODES, HEARTBEAT_INTERVAL_MAX_MS,
    HEARTBEAT_INTERVAL_MIN_MS, INVALID_SESSION_DELAY_MAX_MS, INVALID_SESSION_DELAY_MIN_MS,
    LossCause, PAYLOAD_BYTES_MAX, PayloadAction, PayloadHead, PermitError,
    RECONNECT_BACKOFF_BASE_MS, RECONNECT_BACKOFF_CAP_MS, ReconnectCause, SEND_LIMIT_PER_WINDOW,
    SEND_WINDOW_MS, SEND_WINDOW_SAFETY_MARGIN_MS, Session, Shard, ShardConfig, ShardCounters,
    ShardEvent, ShardState, Transmit, TransmitKind, backoff_ceiling, check_command_shape,
    close_policy, fatal_close_explanation,
};
pub use token::Token;
