//! Decode stage: frame → payload → head. Per connection, a [`Decoder`] turns WebSocket frames
//! into complete gateway payloads (zstd-stream, zlib-stream, per-payload zlib with libdeflate, or
//! none) in a buffer it owns and reuses; [`classify`] reads a payload's `op`, `s` and `t` for the
//! shard machine without parsing it; the field helpers read the few values of `d` the filter
//! stage needs ([`message_id_and_content_hash`], [`message_id`], [`guild_id`],
//! [`guild_unavailable`], [`ready_guild_ids`]).
//!
//! Must not: perform I/O, read the clock, build a DOM for an ordinary event, or allocate per
//! message in steady state (buffers are sized at construction and recycled; the hot field helpers
//! scan without allocating, and only [`ready_guild_ids`] and a payload with escaped keys take
//! sonic-rs's small scratch buffer). Sizes and their reasons are in [`DecoderLimits`] and
//! [`OUTPUT_INITIAL_BYTES`].
//!
//! # Driver contract
//!
//! 1. One [`Decoder`] per shard, built at startup with the shard's [`Compression`]; call
//!    [`Decoder::reset`] whenever the shard machine asks for a new connection.
//! 2. Every WebSocket text or binary message: [`Decoder::decode`], with the core's output buffer
//!    (one `Vec<u8>` shared by the core's shards: zstd-stream and payload compression decompress
//!    into it). `Ok(None)`: a zlib-stream message continues in the next frame. `Ok(Some(payload))`:
//!    [`classify`] it and hand the head and the payload to the shard machine; copy the payload out
//!    (to the filter) before the next `decode` of any shard of the core, which reuses the buffer.
//! 3. Any [`DecodeError`] or [`ClassifyError`]: the connection is unusable (report a decode loss
//!    to the shard machine); the decoder refuses frames until [`Decoder::reset`].

mod classify;
mod compression;
mod decoder;
mod fields;
#[doc(hidden)]
pub mod fuzz;
pub(crate) mod scan;
#[cfg(test)]
pub(crate) mod test_support;

pub use classify::{ClassifyError, NESTING_MAX, classify};

/// Whether a payload nests deeper than [`NESTING_MAX`]: such a payload is not given to the
/// recursive readers.
pub fn too_deep(payload: &[u8]) -> bool {
    scan::nests_deeper_than(payload, NESTING_MAX)
}
pub use compression::{Compression, UnknownCompression};
pub use decoder::{
    DecodeError, Decoder, DecoderLimits, Frame, LIBDEFLATE_DECOMPRESSOR_BYTES, LimitsError,
    OUTPUT_INITIAL_BYTES, OUTPUT_SHRINK_FACTOR, ZLIB_INFLATE_STATE_BYTES,
};
pub(crate) use fields::{event_name_and_guild_id, snowflake};
pub use fields::{
    guild_id, guild_unavailable, message_id, message_id_and_content_hash, ready_guild_ids,
};
#[doc(hidden)]
pub use fuzz::fuzz_entry;
