//! The decompressor of one connection: frame → payload, into a buffer reused from frame to frame.
//!
//! Payloads are decompressed into the caller's buffer, which a core shares among all its
//! connections (each payload is done with before the next frame of any of them is decoded): a
//! connection holds no output buffer of its own, which was most of what an idle compressed
//! connection cost beside its compression context (measured: 95 → 86 KiB per idle zstd-stream
//! shard at 2,000 shards). Only a zlib-stream message that spans frames is moved to a buffer of
//! the decoder's own, until its last frame.
//!
//! Sizes are decided at construction ([`DecoderLimits`], [`OUTPUT_INITIAL_BYTES`]); in steady
//! state a payload costs no allocation. A message bigger than the output buffer grows it (doubling,
//! never past `payload_bytes_max + 1` bytes); once that message has been handed out, the next
//! [`Decoder::decode`] shrinks the core's buffer, if it grew past [`OUTPUT_SHRINK_FACTOR`] × its
//! initial size, back to the initial size, so that one big GUILD_CREATE does not pin memory. A
//! connection's own buffer (a zlib-stream message spanning frames) goes once its message has been
//! handed out, at the next [`Decoder::decode`] or [`Decoder::reset`].
//!
//! # Choices where the protocol is silent
//!
//! - **Text frames are plain JSON in every mode** and are handed back as they are (no copy). With
//!   transport compression Discord sends only binary frames; a server or proxy that ignored
//!   `compress=` and sent text would still be understood, and a text frame does not touch the
//!   compression context.
//! - **zlib-stream frames are inflated as they arrive**, not buffered until the `00 00 ff ff`
//!   suffix: the inflate context takes partial input, so nothing compressed is kept and a message
//!   split across frames costs one copy of what its first frame inflated (out of the core's
//!   buffer, into the decoder's own). `zlib_stream_buffer_bytes_max` still bounds the
//!   compressed bytes one message may span (the CPU a never-ending message can take).
//! - **The suffix is the last 4 bytes of the stream received so far**, as Discord documents it,
//!   so a suffix split across two frames still ends the message.
//! - **Any error poisons the decoder**: the context is in an unknown state, and the driver contract
//!   (shard/machine.rs, step 5) drops the connection on a frame that cannot be decoded. Later calls
//!   answer [`DecodeError::ResetRequired`] until [`Decoder::reset`].
//! - **Payload compression grows by retrying**: a zlib stream does not state its decompressed size,
//!   so libdeflate runs again into a bigger buffer (first guess 8 × the compressed size, then
//!   doubling, capped at `payload_bytes_max`).

use std::fmt;

use flate2::{Decompress, FlushDecompress, Status};
use libdeflater::{DecompressionError, Decompressor};
use thiserror::Error;
use zstd::zstd_safe::{self, DCtx, DParameter, InBuffer, OutBuffer, ResetDirective};

use super::Compression;

/// Initial capacity of an output buffer, and what it shrinks back to: sized for the common
/// payload, not the big one. Over the default event mix a dispatch averages about 1.1 KB, 99% are under 3.5 KB and 0.3% exceed 4 KiB (largest
/// 5.7 KB), which grow the buffer once to 8 KiB; a GUILD_CREATE (median ~22 KB) grows it past the
/// shrink threshold, and the next frame shrinks it back. Uncompressed connections have no output
/// buffer: their text frames are handed back as they are.
pub const OUTPUT_INITIAL_BYTES: usize = 4 * 1024;

/// A buffer that grew past this many times its initial capacity is shrunk back after its message.
pub const OUTPUT_SHRINK_FACTOR: usize = 4;

/// Smallest step when an output buffer grows.
const OUTPUT_GROW_MIN_BYTES: usize = 4 * 1024;

/// Payload compression: the first retry sizes the output for this many times the compressed size
/// (JSON compresses 4–10× with zlib).
const PAYLOAD_EXPANSION_GUESS: usize = 8;

/// What ends a zlib-stream message: the sync flush marker.
const ZLIB_STREAM_SUFFIX: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// zstd's bounds for `ZSTD_d_windowLogMax` on 64-bit targets.
const ZSTD_WINDOW_LOG_MIN: u32 = 10;
const ZSTD_WINDOW_LOG_MAX: u32 = 31;

/// Heap taken by a zlib-rs inflate state with its 32 KiB window (allocated with the state), as
/// glibc's `mallinfo2` counts it (flate2 1.1, zlib-rs 0.6).
pub const ZLIB_INFLATE_STATE_BYTES: usize = 47_680;

/// Heap taken by a libdeflate decompressor, as glibc's `mallinfo2` counts it (libdeflater 1.26).
pub const LIBDEFLATE_DECOMPRESSOR_BYTES: usize = 11_584;

/// One WebSocket message as the driver read it (fragments already joined).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    Text(&'a [u8]),
    Binary(&'a [u8]),
}

/// Bounds of one decoder, fixed at construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderLimits {
    /// Largest decompressed payload, in bytes; a bigger one fails with [`DecodeError::TooLarge`]
    /// after at most this many bytes (plus one) were allocated. Default 32 MiB: a big GUILD_CREATE
    /// is several MB; a decompression bomb is not a payload. It also bounds text frames.
    pub payload_bytes_max: usize,
    /// zlib-stream: compressed bytes one message may span, across frames, before its
    /// `00 00 ff ff` suffix; more fails with [`DecodeError::BufferLimit`]. Frames are inflated as
    /// they arrive, so this bounds work, not memory. Default 32 MiB (deflate never makes a JSON
    /// payload bigger, so it never binds before `payload_bytes_max`).
    pub zlib_stream_buffer_bytes_max: usize,
    /// zstd-stream: largest window the server may ask for, as log2 bytes. The window is allocated
    /// per connection for its whole life, so this bounds the memory a server can make one
    /// connection take. Default 23 (8 MiB), the window RFC 8878 asks decoders to support; zstd's
    /// own default is 27 (128 MiB). What is resident is the part of the window the stream has
    /// filled: a connection holds about as much as it has received decompressed, up to the
    /// window the server chose (2 MiB at zstd level 3), whatever this bound.
    pub zstd_window_log_max: u32,
}

impl Default for DecoderLimits {
    fn default() -> DecoderLimits {
        DecoderLimits {
            payload_bytes_max: 32 * 1024 * 1024,
            zlib_stream_buffer_bytes_max: 32 * 1024 * 1024,
            zstd_window_log_max: 23,
        }
    }
}

impl DecoderLimits {
    /// Largest accepted `payload_bytes_max` (4 GiB): a cap, not a size anyone wants.
    pub const PAYLOAD_BYTES_MAX_CEILING: usize = 1 << 32;

    /// Checks every bound.
    pub fn validate(&self) -> Result<(), LimitsError> {
        if !(1..=Self::PAYLOAD_BYTES_MAX_CEILING).contains(&self.payload_bytes_max) {
            return Err(LimitsError::PayloadBytesMax {
                value: self.payload_bytes_max,
            });
        }
        if self.zlib_stream_buffer_bytes_max == 0 {
            return Err(LimitsError::ZlibStreamBufferBytesMax);
        }
        if !(ZSTD_WINDOW_LOG_MIN..=ZSTD_WINDOW_LOG_MAX).contains(&self.zstd_window_log_max) {
            return Err(LimitsError::ZstdWindowLogMax {
                value: self.zstd_window_log_max,
            });
        }
        Ok(())
    }
}

/// A [`DecoderLimits`] bound out of range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum LimitsError {
    #[error("payload_bytes_max must be between 1 and 4 GiB, not {value}")]
    PayloadBytesMax { value: usize },
    #[error("zlib_stream_buffer_bytes_max must be at least 1")]
    ZlibStreamBufferBytesMax,
    #[error("zstd_window_log_max must be between 10 and 31, not {value}")]
    ZstdWindowLogMax { value: u32 },
}

/// Why a frame could not be decoded. Every one of them poisons the decoder (see the module note):
/// drop the connection and [`Decoder::reset`] before the next.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("payload exceeds {limit_bytes} bytes")]
    TooLarge { limit_bytes: usize },
    #[error(
        "zlib-stream message spans more than {limit_bytes} compressed bytes without the suffix"
    )]
    BufferLimit { limit_bytes: usize },
    #[error("zstd-stream: {reason}")]
    Zstd { reason: &'static str },
    #[error("zlib-stream: {reason}")]
    Zlib { reason: String },
    #[error("zlib-stream: the server ended the deflate stream")]
    ZlibStreamEnded,
    #[error("payload compression: a binary frame is not a zlib stream")]
    ZlibPayload,
    #[error("binary frame on a connection without compression")]
    BinaryFrameOnUncompressedConnection,
    #[error("an earlier error left the decoder unusable: reset it for the next connection")]
    ResetRequired,
}

/// The decompression state of one connection.
pub struct Decoder {
    compression: Compression,
    limits: DecoderLimits,
    context: Context,
    /// zlib-stream: the decompressed bytes so far of a message that spans frames (`len`). Empty
    /// otherwise: payloads are decompressed into the caller's buffer.
    output: Vec<u8>,
    output_initial_bytes: usize,
    /// zlib-stream: compressed bytes of the message in progress; 0 between messages.
    zlib_message_compressed_bytes: usize,
    /// zlib-stream: the last 4 bytes received.
    zlib_tail: [u8; 4],
    poisoned: bool,
}

enum Context {
    ZstdStream(DCtx<'static>),
    ZlibStream(Box<Decompress>),
    Payload(Decompressor),
    None,
}

impl Decoder {
    /// A decoder for a new connection using `compression`.
    pub fn new(compression: Compression, limits: DecoderLimits) -> Result<Decoder, LimitsError> {
        limits.validate()?;
        let context = match compression {
            Compression::ZstdStream => Context::ZstdStream(zstd_context(&limits)),
            Compression::ZlibStream => Context::ZlibStream(Box::new(Decompress::new(true))),
            Compression::Payload => Context::Payload(Decompressor::new()),
            Compression::None => Context::None,
        };
        let output_initial_bytes = match compression {
            Compression::None => 0,
            Compression::Payload => OUTPUT_INITIAL_BYTES.min(limits.payload_bytes_max),
            Compression::ZstdStream | Compression::ZlibStream => {
                OUTPUT_INITIAL_BYTES.min(limits.payload_bytes_max + 1)
            }
        };
        Ok(Decoder {
            compression,
            limits,
            context,
            output: Vec::new(),
            output_initial_bytes,
            zlib_message_compressed_bytes: 0,
            zlib_tail: [0; 4],
            poisoned: false,
        })
    }

    /// Decodes one frame: the complete payload, or `None` while a zlib-stream message still waits
    /// for frames. A text frame's payload is the frame itself; a compressed one is decompressed
    /// into `scratch` (the core's buffer, shared by its connections: its contents are only this
    /// payload, and it is sized here), or for a zlib-stream message that spans frames into the
    /// decoder's own. The payload lives until the next call.
    pub fn decode<'a>(
        &'a mut self,
        frame: Frame<'a>,
        scratch: &'a mut Vec<u8>,
    ) -> Result<Option<&'a [u8]>, DecodeError> {
        if self.poisoned {
            return Err(DecodeError::ResetRequired);
        }
        // Cleared below once the frame is handled: every early error return leaves it set.
        self.poisoned = true;
        self.recycle_output();
        // Whatever the frame (a text frame too), as the decoder's own buffer: the payload it held
        // is done with. A core's first compressed frame gives it its initial capacity.
        if self.output_initial_bytes > 0 {
            shrink_grown(scratch, self.output_initial_bytes);
            if scratch.capacity() == 0 {
                scratch.reserve_exact(self.output_initial_bytes);
            }
        }
        let payload_bytes_max = self.limits.payload_bytes_max;
        let compressed = match frame {
            Frame::Text(text) => {
                if text.len() > payload_bytes_max {
                    return Err(DecodeError::TooLarge {
                        limit_bytes: payload_bytes_max,
                    });
                }
                self.poisoned = false;
                return Ok(Some(text));
            }
            Frame::Binary(compressed) => compressed,
        };
        let payload = match &mut self.context {
            Context::ZstdStream(context) => Payload::Scratch(inflate_zstd(
                context,
                scratch,
                compressed,
                payload_bytes_max,
            )?),
            Context::ZlibStream(context) => {
                let continuing = self.zlib_message_compressed_bytes > 0;
                self.zlib_message_compressed_bytes = self
                    .zlib_message_compressed_bytes
                    .saturating_add(compressed.len());
                let limit_bytes = self.limits.zlib_stream_buffer_bytes_max;
                if self.zlib_message_compressed_bytes > limit_bytes {
                    return Err(DecodeError::BufferLimit { limit_bytes });
                }
                // A message that began in an earlier frame goes on in the decoder's own buffer;
                // a new one is inflated into the core's, and moved to the decoder's own only if
                // it goes on in the next frame.
                if continuing {
                    inflate_zlib_stream(context, &mut self.output, compressed, payload_bytes_max)?;
                } else {
                    scratch.clear();
                    inflate_zlib_stream(context, scratch, compressed, payload_bytes_max)?;
                }
                self.zlib_tail = stream_tail(self.zlib_tail, compressed);
                if self.zlib_tail == ZLIB_STREAM_SUFFIX {
                    self.zlib_message_compressed_bytes = 0;
                    self.zlib_tail = [0; 4];
                    if continuing {
                        Payload::Own(self.output.len())
                    } else {
                        Payload::Scratch(scratch.len())
                    }
                } else {
                    if !continuing {
                        self.output.extend_from_slice(scratch);
                    }
                    Payload::Pending
                }
            }
            Context::Payload(context) => {
                // A zero-filled slab: libdeflate writes into a slice of it.
                if scratch.len() < self.output_initial_bytes {
                    scratch.resize(self.output_initial_bytes, 0);
                }
                Payload::Scratch(inflate_payload(
                    context,
                    scratch,
                    compressed,
                    payload_bytes_max,
                )?)
            }
            Context::None => return Err(DecodeError::BinaryFrameOnUncompressedConnection),
        };
        self.poisoned = false;
        Ok(match payload {
            Payload::Scratch(bytes) => Some(&scratch[..bytes]),
            Payload::Own(bytes) => Some(&self.output[..bytes]),
            Payload::Pending => None,
        })
    }

    /// Makes the decoder ready for a new connection: a fresh compression context (its memory
    /// reused), no message in progress, no poison, the output buffer back to its initial size.
    pub fn reset(&mut self) {
        match &mut self.context {
            Context::ZstdStream(context) => {
                if context.reset(ResetDirective::SessionOnly).is_err() {
                    *context = zstd_context(&self.limits);
                }
            }
            Context::ZlibStream(context) => context.reset(true),
            Context::Payload(_) | Context::None => {}
        }
        self.zlib_message_compressed_bytes = 0;
        self.zlib_tail = [0; 4];
        self.poisoned = false;
        self.recycle_output();
    }

    /// The mode this decoder was built for.
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// The bounds this decoder was built with.
    pub fn limits(&self) -> &DecoderLimits {
        &self.limits
    }

    /// Heap held by this decoder now: its own output buffer (a zlib-stream message spanning
    /// frames) plus the compression context (exact for zstd, [`ZLIB_INFLATE_STATE_BYTES`] /
    /// [`LIBDEFLATE_DECOMPRESSOR_BYTES`] otherwise). A zstd context holds the server's window (up
    /// to `2^zstd_window_log_max` bytes) once the first frame arrived.
    pub fn heap_bytes(&self) -> usize {
        let context_bytes = match &self.context {
            Context::ZstdStream(context) => context.sizeof(),
            Context::ZlibStream(_) => ZLIB_INFLATE_STATE_BYTES,
            Context::Payload(_) => LIBDEFLATE_DECOMPRESSOR_BYTES,
            Context::None => 0,
        };
        self.output.capacity() + context_bytes
    }

    /// Capacity of the decoder's own output buffer (0 but during a zlib-stream message that spans
    /// frames), in bytes.
    pub fn output_capacity_bytes(&self) -> usize {
        self.output.capacity()
    }

    /// Lets the decoder's own output buffer go unless a message spanning frames is in progress in
    /// it (the payload it held, if any, is done with).
    fn recycle_output(&mut self) {
        if self.zlib_message_compressed_bytes == 0 {
            self.output = Vec::new();
        }
    }
}

/// Where [`Decoder::decode`] left a frame's payload (its length).
enum Payload {
    /// In the caller's buffer.
    Scratch(usize),
    /// In the decoder's own (zlib-stream).
    Own(usize),
    /// zlib-stream: the message goes on in the next frame.
    Pending,
}

/// Empties `buffer` and gives back its memory beyond `initial_bytes` if it grew past
/// [`OUTPUT_SHRINK_FACTOR`] × that (a payload it held is done with).
fn shrink_grown(buffer: &mut Vec<u8>, initial_bytes: usize) {
    if buffer.capacity() > OUTPUT_SHRINK_FACTOR * initial_bytes {
        buffer.clear();
        buffer.shrink_to(initial_bytes);
    }
}

impl fmt::Debug for Decoder {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Decoder")
            .field("compression", &self.compression)
            .field("limits", &self.limits)
            .field("output_capacity_bytes", &self.output.capacity())
            .field(
                "zlib_message_compressed_bytes",
                &self.zlib_message_compressed_bytes,
            )
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

fn zstd_context(limits: &DecoderLimits) -> DCtx<'static> {
    let mut context = DCtx::create();
    context
        .set_parameter(DParameter::WindowLogMax(limits.zstd_window_log_max))
        .expect("zstd_window_log_max is within zstd's bounds: DecoderLimits::validate checked it");
    context
}

/// Feeds one whole zstd-stream frame; `output` ends up holding exactly its payload.
fn inflate_zstd(
    context: &mut DCtx<'static>,
    output: &mut Vec<u8>,
    compressed: &[u8],
    payload_bytes_max: usize,
) -> Result<usize, DecodeError> {
    output.clear();
    let mut input = InBuffer::around(compressed);
    loop {
        if output.len() == output.capacity() {
            grow_output(output, payload_bytes_max)?;
        }
        let position = output.len();
        // zstd writes into the spare capacity and sets the length.
        context
            .decompress_stream(&mut OutBuffer::around_pos(output, position), &mut input)
            .map_err(|code| DecodeError::Zstd {
                reason: zstd_safe::get_error_name(code),
            })?;
        if output.len() > payload_bytes_max {
            return Err(DecodeError::TooLarge {
                limit_bytes: payload_bytes_max,
            });
        }
        // Room left in the output after all input went in: zstd has flushed everything it can.
        // (zstd itself fails a call that makes no progress, so this loop ends.)
        if input.pos() == compressed.len() && output.len() < output.capacity() {
            return Ok(output.len());
        }
    }
}

/// Inflates one zlib-stream frame, appending to `output`.
fn inflate_zlib_stream(
    context: &mut Decompress,
    output: &mut Vec<u8>,
    compressed: &[u8],
    payload_bytes_max: usize,
) -> Result<(), DecodeError> {
    let mut consumed = 0;
    loop {
        if output.len() == output.capacity() {
            grow_output(output, payload_bytes_max)?;
        }
        let total_in_before = context.total_in();
        let written_before = output.len();
        let status = context
            .decompress_vec(&compressed[consumed..], output, FlushDecompress::Sync)
            .map_err(|error| DecodeError::Zlib {
                reason: error.to_string(),
            })?;
        let read = usize::try_from(context.total_in() - total_in_before)
            .expect("inflate reads at most the input slice");
        consumed += read;
        if output.len() > payload_bytes_max {
            return Err(DecodeError::TooLarge {
                limit_bytes: payload_bytes_max,
            });
        }
        if status == Status::StreamEnd {
            return Err(DecodeError::ZlibStreamEnded);
        }
        let room_left = output.len() < output.capacity();
        if consumed == compressed.len() && room_left {
            return Ok(());
        }
        if read == 0 && output.len() == written_before && room_left {
            return Err(DecodeError::Zlib {
                reason: "inflate made no progress".to_owned(),
            });
        }
    }
}

/// Inflates one complete zlib stream into the zero-filled slab `output`, growing the slab when
/// libdeflate says it is too small.
fn inflate_payload(
    context: &mut Decompressor,
    output: &mut Vec<u8>,
    compressed: &[u8],
    payload_bytes_max: usize,
) -> Result<usize, DecodeError> {
    loop {
        match context.zlib_decompress(compressed, output.as_mut_slice()) {
            Ok(bytes) => return Ok(bytes),
            Err(DecompressionError::BadData) => return Err(DecodeError::ZlibPayload),
            Err(DecompressionError::InsufficientSpace) => {
                let slab_bytes = output.len();
                if slab_bytes >= payload_bytes_max {
                    return Err(DecodeError::TooLarge {
                        limit_bytes: payload_bytes_max,
                    });
                }
                let target = slab_bytes
                    .saturating_mul(2)
                    .max(compressed.len().saturating_mul(PAYLOAD_EXPANSION_GUESS))
                    .max(OUTPUT_GROW_MIN_BYTES)
                    .min(payload_bytes_max);
                output.reserve_exact(target - slab_bytes);
                output.resize(target, 0);
            }
        }
    }
}

/// Makes room for more decompressed bytes: doubles the capacity, up to one byte past
/// `payload_bytes_max` (the byte that tells "too large" from "exactly the limit").
fn grow_output(output: &mut Vec<u8>, payload_bytes_max: usize) -> Result<(), DecodeError> {
    let ceiling = payload_bytes_max + 1;
    let capacity = output.capacity();
    if capacity >= ceiling {
        return Err(DecodeError::TooLarge {
            limit_bytes: payload_bytes_max,
        });
    }
    let target = capacity
        .saturating_mul(2)
        .max(OUTPUT_GROW_MIN_BYTES)
        .min(ceiling);
    output.reserve_exact(target - output.len());
    Ok(())
}

/// The last 4 bytes of a stream that ended in `tail` and continues with `input`.
fn stream_tail(tail: [u8; 4], input: &[u8]) -> [u8; 4] {
    if let Some(last) = input.last_chunk::<4>() {
        return *last;
    }
    let mut joined = [0u8; 8];
    joined[..4].copy_from_slice(&tail);
    joined[4..4 + input.len()].copy_from_slice(input);
    let mut last = [0u8; 4];
    last.copy_from_slice(&joined[input.len()..input.len() + 4]);
    last
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::decode::test_support::{self, Generated, OwnedFrame};

    fn decoder(compression: Compression) -> Tested {
        Tested::new(Decoder::new(compression, DecoderLimits::default()).unwrap())
    }

    /// A decoder with the buffer its core would lend it.
    #[derive(Debug)]
    struct Tested {
        decoder: Decoder,
        scratch: Vec<u8>,
    }

    impl Tested {
        fn new(decoder: Decoder) -> Tested {
            Tested {
                decoder,
                scratch: Vec::new(),
            }
        }

        fn decode<'a>(&'a mut self, frame: Frame<'a>) -> Result<Option<&'a [u8]>, DecodeError> {
            self.decoder.decode(frame, &mut self.scratch)
        }
    }

    impl std::ops::Deref for Tested {
        type Target = Decoder;
        fn deref(&self) -> &Decoder {
            &self.decoder
        }
    }

    impl std::ops::DerefMut for Tested {
        fn deref_mut(&mut self) -> &mut Decoder {
            &mut self.decoder
        }
    }

    /// Encodes a connection with one encoder, decodes it with one decoder, compares every payload.
    fn round_trip(compression: Compression, generated: &[Generated]) -> Tested {
        let mut encoder = test_support::encoder(compression);
        let mut decoder = decoder(compression);
        for (index, item) in generated.iter().enumerate() {
            let frame = test_support::encode(&mut encoder, &item.payload);
            let payload = decoder.decode(frame.as_frame()).unwrap();
            assert_eq!(
                payload,
                Some(&item.payload[..]),
                "{compression}: payload {index} differs"
            );
        }
        decoder
    }

    #[test]
    fn connections_of_a_core_share_one_output_buffer() {
        let first = test_support::connection(21, 4, 800);
        let second = test_support::connection(22, 4, 800);
        for compression in Compression::ALL {
            let mut encoders = [
                test_support::encoder(compression),
                test_support::encoder(compression),
            ];
            let mut decoders = [
                Decoder::new(compression, DecoderLimits::default()).unwrap(),
                Decoder::new(compression, DecoderLimits::default()).unwrap(),
            ];
            let mut shared = Vec::new();
            // Frame by frame, each connection's in turn, as a core's shards take turns.
            for (index, pair) in first.iter().zip(&second).enumerate() {
                for (connection, item) in [&pair.0, &pair.1].into_iter().enumerate() {
                    let frame = test_support::encode(&mut encoders[connection], &item.payload);
                    let payload = decoders[connection]
                        .decode(frame.as_frame(), &mut shared)
                        .unwrap();
                    assert_eq!(
                        payload,
                        Some(&item.payload[..]),
                        "{compression}: connection {connection}, payload {index}"
                    );
                }
            }
        }
    }

    #[test]
    fn every_mode_round_trips_a_generated_connection() {
        let generated = test_support::connection(11, 8, 3000);
        for compression in Compression::ALL {
            let decoder = round_trip(compression, &generated);
            // The 300 KB GUILD_CREATE was followed by smaller payloads: the buffer shrank back.
            assert!(
                decoder.output_capacity_bytes() <= OUTPUT_SHRINK_FACTOR * OUTPUT_INITIAL_BYTES,
                "{compression}: {decoder:?}"
            );
            assert!(
                decoder.scratch.capacity() <= OUTPUT_SHRINK_FACTOR * OUTPUT_INITIAL_BYTES,
                "{compression}: {} B",
                decoder.scratch.capacity()
            );
            // Each message in one frame: no buffer of the connection's own, the payloads went
            // into the core's (a text frame is its own payload).
            assert_eq!(decoder.output_capacity_bytes(), 0, "{compression}");
            if compression != Compression::None {
                assert!(decoder.scratch.capacity() > 0, "{compression}");
            }
        }
    }

    #[test]
    fn payload_mode_sends_small_payloads_as_text_and_big_ones_as_binary() {
        let generated = test_support::connection(12, 3, 300);
        let mut encoder = test_support::encoder(Compression::Payload);
        let (mut text, mut binary) = (0, 0);
        for item in &generated {
            match test_support::encode(&mut encoder, &item.payload) {
                OwnedFrame::Text(_) => text += 1,
                OwnedFrame::Binary(_) => binary += 1,
            }
        }
        assert!(text > 50 && binary > 50, "text {text}, binary {binary}");
    }

    #[test]
    fn steady_state_reuses_the_output_buffer() {
        let generated = test_support::connection(13, 3, 2000);
        let steady: Vec<&Generated> = generated
            .iter()
            .filter(|item| item.payload.len() < OUTPUT_INITIAL_BYTES)
            .collect();
        for compression in [
            Compression::ZstdStream,
            Compression::ZlibStream,
            Compression::Payload,
        ] {
            let mut encoder = test_support::encoder(compression);
            let mut decoder = decoder(compression);
            let mut buffer = None;
            for item in &steady {
                let frame = test_support::encode(&mut encoder, &item.payload);
                decoder.decode(frame.as_frame()).unwrap();
                let now = (decoder.output.as_ptr(), decoder.output.capacity());
                assert_eq!(*buffer.get_or_insert(now), now, "{compression} reallocated");
            }
        }
    }

    #[test]
    fn zlib_stream_messages_split_across_frames() {
        let generated = test_support::connection(14, 4, 500);
        let mut encoder = test_support::encoder(Compression::ZlibStream);
        let mut decoder = decoder(Compression::ZlibStream);
        for (index, item) in generated.iter().enumerate() {
            let OwnedFrame::Binary(frame) = test_support::encode(&mut encoder, &item.payload)
            else {
                panic!("zlib-stream frames are binary");
            };
            // Cut into 1 to 4 pieces; index 3 (mod 4) cuts inside the suffix itself.
            let pieces = 1 + index % 4;
            let cuts: Vec<usize> = match index % 4 {
                3 => vec![frame.len() - 2],
                _ => (1..pieces)
                    .map(|piece| frame.len() * piece / pieces)
                    .collect(),
            };
            let mut start = 0;
            for cut in cuts {
                assert_eq!(decoder.decode(Frame::Binary(&frame[start..cut])), Ok(None));
                // Another shard of the core decodes into the core's buffer meanwhile.
                decoder.scratch.clear();
                decoder
                    .scratch
                    .extend_from_slice(b"another shard's payload");
                start = cut;
            }
            let payload = decoder.decode(Frame::Binary(&frame[start..])).unwrap();
            assert_eq!(payload, Some(&item.payload[..]), "payload {index}");
        }
    }

    #[test]
    fn zlib_stream_bounds_the_compressed_bytes_of_one_message() {
        let limits = DecoderLimits {
            zlib_stream_buffer_bytes_max: 1000,
            ..DecoderLimits::default()
        };
        let mut decoder = Tested::new(Decoder::new(Compression::ZlibStream, limits).unwrap());
        // One message that never ends: partial flushes emit whole bytes without the suffix.
        let mut compress = flate2::Compress::new(flate2::Compression::new(6), true);
        let text = test_support::connection(17, 3, 10).remove(1).payload;
        let mut fed = 0;
        let error = loop {
            let mut frame = Vec::with_capacity(text.len() + 64);
            compress
                .compress_vec(&text[..100], &mut frame, flate2::FlushCompress::Partial)
                .unwrap();
            assert!(!frame.ends_with(&ZLIB_STREAM_SUFFIX));
            match decoder.decode(Frame::Binary(&frame)) {
                Ok(None) => fed += frame.len(),
                Ok(Some(_)) => panic!("no suffix was sent"),
                Err(error) => break error,
            }
        };
        assert!(fed > 0 && fed <= 1000, "{fed}");
        assert_eq!(error, DecodeError::BufferLimit { limit_bytes: 1000 });
    }

    /// 100 MB of zeros, compressed in 1 MiB steps so that the test never holds them.
    fn bomb(compression: Compression) -> Vec<u8> {
        static CHUNK: [u8; 1 << 20] = [0; 1 << 20];
        match compression {
            Compression::ZstdStream => {
                use zstd::stream::raw::{Encoder, Operation};
                let mut encoder = Encoder::new(3).unwrap();
                let mut out = vec![0u8; 1 << 20];
                let mut written = 0;
                for _ in 0..100 {
                    let mut input = InBuffer::around(&CHUNK);
                    while input.pos() < CHUNK.len() {
                        let mut output = OutBuffer::around_pos(&mut out[..], written);
                        encoder.run(&mut input, &mut output).unwrap();
                        written = output.pos();
                    }
                }
                let mut output = OutBuffer::around_pos(&mut out[..], written);
                assert_eq!(encoder.flush(&mut output).unwrap(), 0);
                written = output.pos();
                out.truncate(written);
                out
            }
            Compression::ZlibStream => {
                let mut compress = flate2::Compress::new(flate2::Compression::new(6), true);
                let mut out = Vec::with_capacity(1 << 20);
                for step in 0..100 {
                    let flush = if step == 99 {
                        flate2::FlushCompress::Sync
                    } else {
                        flate2::FlushCompress::None
                    };
                    let before = compress.total_in();
                    compress.compress_vec(&CHUNK, &mut out, flush).unwrap();
                    assert_eq!(compress.total_in() - before, CHUNK.len() as u64);
                }
                assert!(out.ends_with(&ZLIB_STREAM_SUFFIX));
                out
            }
            Compression::Payload => {
                let mut encoder =
                    flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(9));
                for _ in 0..100 {
                    encoder.write_all(&CHUNK).unwrap();
                }
                encoder.finish().unwrap()
            }
            Compression::None => unreachable!("nothing to decompress"),
        }
    }

    #[test]
    fn a_decompression_bomb_is_too_large_without_allocating_past_the_cap() {
        let limits = DecoderLimits::default();
        for compression in [
            Compression::ZstdStream,
            Compression::ZlibStream,
            Compression::Payload,
        ] {
            let bomb = bomb(compression);
            assert!(bomb.len() < 1 << 20, "{compression}: {} bytes", bomb.len());
            let mut decoder = decoder(compression);
            assert_eq!(
                decoder.decode(Frame::Binary(&bomb)),
                Err(DecodeError::TooLarge {
                    limit_bytes: limits.payload_bytes_max
                }),
                "{compression}"
            );
            assert!(decoder.output_capacity_bytes() <= limits.payload_bytes_max + 1);
            // Poisoned until reset; reset also gives the big buffer back.
            assert_eq!(
                decoder.decode(Frame::Text(b"{}")),
                Err(DecodeError::ResetRequired)
            );
            decoder.reset();
            assert!(decoder.output_capacity_bytes() <= OUTPUT_INITIAL_BYTES);
        }
    }

    #[test]
    fn corrupt_frames_fail_and_reset_recovers() {
        let generated = test_support::connection(15, 3, 200);
        let garbage: Vec<u8> = (0u32..64)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for compression in [
            Compression::ZstdStream,
            Compression::ZlibStream,
            Compression::Payload,
        ] {
            let mut encoder = test_support::encoder(compression);
            let mut decoder = decoder(compression);
            for item in &generated[..20] {
                let frame = test_support::encode(&mut encoder, &item.payload);
                decoder.decode(frame.as_frame()).unwrap();
            }
            // The mock's corrupt fault: 64 random bytes in a binary frame. zstd may decode them
            // into garbage rather than fail; the classifier rejects that.
            let result = decoder
                .decode(Frame::Binary(&garbage))
                .map(|p| p.map(<[u8]>::to_vec));
            match (compression, result) {
                (_, Err(_)) => {}
                (Compression::ZstdStream, Ok(Some(payload))) => {
                    assert!(crate::decode::classify(&payload).is_err());
                    decoder.reset();
                }
                (_, other) => panic!("{compression}: garbage decoded as {other:?}"),
            }
            // A new connection: fresh encoder, reset decoder.
            decoder.reset();
            let mut encoder = test_support::encoder(compression);
            for item in &generated {
                let frame = test_support::encode(&mut encoder, &item.payload);
                assert_eq!(
                    decoder.decode(frame.as_frame()).unwrap(),
                    Some(&item.payload[..])
                );
            }
        }
    }

    #[test]
    fn a_truncated_stream_frame_fails() {
        let mut encoder = test_support::encoder(Compression::ZlibStream);
        let OwnedFrame::Binary(frame) = test_support::encode(&mut encoder, test_support::HELLO)
        else {
            panic!("zlib-stream frames are binary");
        };
        let mut decoder = decoder(Compression::ZlibStream);
        // Drop the zlib header: the rest is not a zlib stream.
        let error = decoder.decode(Frame::Binary(&frame[2..])).unwrap_err();
        assert!(matches!(error, DecodeError::Zlib { .. }), "{error:?}");
        let mut decoder = self::decoder(Compression::ZstdStream);
        let error = decoder.decode(Frame::Binary(b"not zstd")).unwrap_err();
        assert_eq!(
            error,
            DecodeError::Zstd {
                reason: "Unknown frame descriptor"
            }
        );
    }

    #[test]
    fn frames_the_mode_does_not_expect() {
        let mut none = decoder(Compression::None);
        assert_eq!(
            none.decode(Frame::Binary(b"x")),
            Err(DecodeError::BinaryFrameOnUncompressedConnection)
        );
        none.reset();
        assert_eq!(none.decode(Frame::Text(b"{}")), Ok(Some(&b"{}"[..])));
        // Text frames are plain JSON even on transport-compressed connections.
        for compression in [Compression::ZstdStream, Compression::ZlibStream] {
            let mut decoder = decoder(compression);
            let text = test_support::HEARTBEAT_ACK;
            assert_eq!(decoder.decode(Frame::Text(text)), Ok(Some(text)));
        }
    }

    #[test]
    fn text_frames_are_bounded_too() {
        let limits = DecoderLimits {
            payload_bytes_max: 8,
            ..DecoderLimits::default()
        };
        let mut decoder = Tested::new(Decoder::new(Compression::None, limits).unwrap());
        assert_eq!(
            decoder.decode(Frame::Text(b"12345678")),
            Ok(Some(&b"12345678"[..]))
        );
        assert_eq!(
            decoder.decode(Frame::Text(b"123456789")),
            Err(DecodeError::TooLarge { limit_bytes: 8 })
        );
    }

    #[test]
    fn payload_exactly_at_the_limit_passes() {
        let payload = vec![b'x'; 40_000];
        let limits = DecoderLimits {
            payload_bytes_max: payload.len(),
            ..DecoderLimits::default()
        };
        for compression in [
            Compression::ZstdStream,
            Compression::ZlibStream,
            Compression::Payload,
        ] {
            let mut encoder = test_support::encoder(compression);
            let frame = test_support::encode(&mut encoder, &payload);
            let mut decoder = Tested::new(Decoder::new(compression, limits).unwrap());
            assert_eq!(
                decoder.decode(frame.as_frame()),
                Ok(Some(&payload[..])),
                "{compression}"
            );
            let mut bigger = payload.clone();
            bigger.push(b'x');
            let frame = test_support::encode(&mut encoder, &bigger);
            assert_eq!(
                decoder.decode(frame.as_frame()),
                Err(DecodeError::TooLarge {
                    limit_bytes: payload.len()
                }),
                "{compression}"
            );
        }
    }

    #[test]
    fn limits_are_validated() {
        let bad = |limits| Decoder::new(Compression::ZstdStream, limits).unwrap_err();
        let default = DecoderLimits::default();
        assert_eq!(
            bad(DecoderLimits {
                payload_bytes_max: 0,
                ..default
            }),
            LimitsError::PayloadBytesMax { value: 0 }
        );
        assert_eq!(
            bad(DecoderLimits {
                zlib_stream_buffer_bytes_max: 0,
                ..default
            }),
            LimitsError::ZlibStreamBufferBytesMax
        );
        assert_eq!(
            bad(DecoderLimits {
                zstd_window_log_max: 32,
                ..default
            }),
            LimitsError::ZstdWindowLogMax { value: 32 }
        );
    }

    #[test]
    fn a_zstd_window_above_the_limit_is_refused() {
        let limits = DecoderLimits {
            zstd_window_log_max: 20,
            ..DecoderLimits::default()
        };
        // Level 3 asks for a 2 MiB window (log 21).
        let mut encoder = test_support::encoder(Compression::ZstdStream);
        let frame = test_support::encode(&mut encoder, test_support::HELLO);
        let mut decoder = Tested::new(Decoder::new(Compression::ZstdStream, limits).unwrap());
        assert_eq!(
            decoder.decode(frame.as_frame()),
            Err(DecodeError::Zstd {
                reason: "Frame requires too much memory for decoding"
            })
        );
    }

    #[test]
    fn stream_tail_joins_short_frames() {
        assert_eq!(stream_tail([1, 2, 3, 4], &[5, 6, 7, 8, 9]), [6, 7, 8, 9]);
        assert_eq!(stream_tail([1, 2, 3, 4], &[5, 6]), [3, 4, 5, 6]);
        assert_eq!(stream_tail([1, 2, 3, 4], &[]), [1, 2, 3, 4]);
    }

    /// Resident memory of one idle connection's decoder per compressed mode (the touched pages of
    /// its context and, for zstd, of its window; the heap it reserves is far larger): 1,000
    /// decoders fed an idle shard's frames, the process's RSS before and after. Run it alone:
    /// `cargo test -p shardgate --lib decode::decoder::tests::resident_memory_of_idle_decoders --
    /// --ignored --exact --nocapture`.
    #[test]
    #[ignore = "prints measurements; run alone (it reads the process's RSS)"]
    fn resident_memory_of_idle_decoders() {
        const DECODERS: usize = 1_000;
        let generated = test_support::idle_connection(5);
        let decompressed: usize = generated.iter().map(|item| item.payload.len()).sum();
        for compression in [
            Compression::ZstdStream,
            Compression::ZlibStream,
            Compression::Payload,
        ] {
            let mut encoder = test_support::encoder(compression);
            let frames: Vec<OwnedFrame> = generated
                .iter()
                .map(|item| test_support::encode(&mut encoder, &item.payload))
                .collect();
            let mut scratch = Vec::new();
            let before = crate::procfs::resident_bytes().unwrap();
            let decoders: Vec<Decoder> = (0..DECODERS)
                .map(|_| {
                    let mut decoder = Decoder::new(compression, DecoderLimits::default()).unwrap();
                    for frame in &frames {
                        decoder.decode(frame.as_frame(), &mut scratch).unwrap();
                    }
                    decoder
                })
                .collect();
            let after = crate::procfs::resident_bytes().unwrap();
            println!(
                "{compression}: {:.1} KiB resident per idle decoder ({decompressed} B decompressed \
                 each)",
                after.saturating_sub(before) as f64 / 1024.0 / DECODERS as f64
            );
            drop(decoders);
        }
    }

    /// Memory of one decoder per mode after a realistic connection: `cargo test -p shardgate --lib
    /// decode::decoder::tests::memory_per_decoder -- --ignored --nocapture`.
    #[test]
    #[ignore = "prints measurements"]
    fn memory_per_decoder() {
        let generated = test_support::connection(16, 4, 2000);
        for compression in Compression::ALL {
            let fresh = decoder(compression).heap_bytes();
            let decoder = round_trip(compression, &generated);
            println!(
                "{compression}: new {fresh} B, after a connection {} B (output {} B)",
                decoder.heap_bytes(),
                decoder.output_capacity_bytes()
            );
        }
    }
}
