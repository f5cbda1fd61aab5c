//! Fuzzing entry points for the decode stage. A `fuzz/` target is one line into one of them;
//! `engine/tests/fuzz_corpus.rs` replays the seed corpora on stable.
//!
//! - One per decoder mode ([`zstd_stream_entry`], [`zlib_stream_entry`], [`payload_entry`],
//!   [`none_entry`]): bytes become one connection, a sequence of frames (with resets) fed to a
//!   [`Decoder`] of that mode with small limits, and every payload it produces goes through
//!   [`classify`] and the field helpers. [`fuzz_entry`] is the same with the mode in byte 0.
//! - [`classify_entry`]: bytes are one payload (optionally wrapped in deep nesting) for
//!   [`classify`] and the field helpers alone, checked against serde_json and sonic-rs.
//!
//! Connection input: records `[control][length: u16 LE][bytes]` until the input ends (a short
//! last record takes what is left). Control bit 0: text (1) or binary (0); bit 1: reset the
//! decoder before this frame (a new connection).
//!
//! Invariants checked (a violation panics, which is what a fuzzer reports):
//! - no payload is longer than `payload_bytes_max`; no output buffer (the decoder's own, or the
//!   core's it decompresses into) ever holds more than
//!   `payload_bytes_max + 1` bytes of capacity, and the whole decoder no more than that plus its
//!   context (for zstd, the window `zstd_window_log_max` allows);
//! - a text frame is its own payload, in every mode (or `TooLarge`);
//! - only zlib-stream answers "more frames needed", and only for a binary frame;
//! - a decode error only ever means "reconnect": the decoder refuses frames until reset, and
//!   after [`Decoder::reset`] it decodes a fresh connection's first message exactly;
//! - payload compression: what libdeflate inflates, zlib (flate2) inflates to the same bytes;
//! - where the classifier's fast path answers for a UTF-8 payload, its fallback gives the same
//!   head; on a valid JSON object, the head agrees with serde_json ([`check_classification`]);
//! - the field helpers' scanner agrees with the sonic-rs readers it replaced, and the streams
//!   sink's one walk for `t` and the guild with the two walks it replaced ([`check_fields`]).

use std::fmt::Debug;
use std::hint::black_box;
use std::sync::LazyLock;

use serde::de::{Deserializer as _, IgnoredAny, MapAccess, Visitor};

use super::classify::{ClassifyError, NESTING_MAX, classify, classify_lazy, classify_prefix};
use super::fields::{
    event_name_and_guild_id, guild_id, guild_unavailable, message_id, message_id_and_content_hash,
    ready_guild_ids, sonic,
};
use super::scan::{event_name_and_data, nests_deeper_than};
use super::{Compression, DecodeError, Decoder, DecoderLimits, Frame};
use crate::shard::PayloadHead;

/// The fuzzing decoder's limits: small enough that bombs and long messages hit them quickly.
pub const FUZZ_LIMITS: DecoderLimits = DecoderLimits {
    payload_bytes_max: 64 * 1024,
    zlib_stream_buffer_bytes_max: 16 * 1024,
    // The mock gateway's default zstd level (3) asks for a 2 MiB window.
    zstd_window_log_max: 21,
};

/// Heap a zstd decompression context may hold beyond its window (block buffer, tables).
const ZSTD_CONTEXT_OVERHEAD_BYTES: usize = 512 * 1024;

/// Control bit: the frame is text.
pub const CONTROL_TEXT: u8 = 0b01;
/// Control bit: reset the decoder before the frame.
pub const CONTROL_RESET: u8 = 0b10;

/// Byte 0 picks the mode ([`Compression::ALL`], modulo 4); the rest is a connection.
pub fn fuzz_entry(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    connection_entry(
        Compression::ALL[usize::from(mode) % Compression::ALL.len()],
        rest,
    );
}

/// A zstd-stream connection.
pub fn zstd_stream_entry(data: &[u8]) {
    connection_entry(Compression::ZstdStream, data);
}

/// A zlib-stream connection.
pub fn zlib_stream_entry(data: &[u8]) {
    connection_entry(Compression::ZlibStream, data);
}

/// A connection with payload compression (libdeflate).
pub fn payload_entry(data: &[u8]) {
    connection_entry(Compression::Payload, data);
}

/// A connection without compression.
pub fn none_entry(data: &[u8]) {
    connection_entry(Compression::None, data);
}

/// Interprets `data` as one connection's frames for a decoder of `compression` and checks the
/// stage's invariants.
pub fn connection_entry(compression: Compression, data: &[u8]) {
    let mut decoder = Decoder::new(compression, FUZZ_LIMITS).expect("the fuzz limits are valid");
    let capacity_max_bytes = FUZZ_LIMITS.payload_bytes_max + 1;
    let heap_max_bytes = capacity_max_bytes
        + match compression {
            Compression::ZstdStream => {
                (1 << FUZZ_LIMITS.zstd_window_log_max) + ZSTD_CONTEXT_OVERHEAD_BYTES
            }
            Compression::ZlibStream => super::ZLIB_INFLATE_STATE_BYTES,
            Compression::Payload => super::LIBDEFLATE_DECOMPRESSOR_BYTES,
            Compression::None => 0,
        };
    // The core's buffer that zstd-stream and payload compression decompress into.
    let mut scratch = Vec::new();
    let mut rest = data;
    while let Some((&control, after_control)) = rest.split_first() {
        let length = match after_control {
            [low, high, ..] => usize::from(u16::from_le_bytes([*low, *high])),
            _ => after_control.len(),
        };
        let after_length = after_control.get(2..).unwrap_or_default();
        let (bytes, after_frame) = after_length.split_at(length.min(after_length.len()));
        rest = after_frame;
        if control & CONTROL_RESET != 0 {
            decoder.reset();
        }
        let text = control & CONTROL_TEXT != 0;
        let frame = if text {
            Frame::Text(bytes)
        } else {
            Frame::Binary(bytes)
        };
        match decoder.decode(frame, &mut scratch) {
            Ok(Some(payload)) => {
                if text {
                    assert_eq!(payload, bytes, "a text frame is its own payload");
                } else if compression == Compression::Payload {
                    check_against_zlib(bytes, payload);
                }
                check_payload(payload);
            }
            Ok(None) => assert!(
                compression == Compression::ZlibStream && !text,
                "only zlib-stream binary frames wait ({compression}, text: {text})"
            ),
            Err(error) => {
                if text {
                    assert!(
                        matches!(error, DecodeError::TooLarge { .. })
                            && bytes.len() > FUZZ_LIMITS.payload_bytes_max,
                        "text frame of {} bytes refused: {error}",
                        bytes.len()
                    );
                }
                check_reconnect(&mut decoder, &mut scratch);
            }
        }
        let capacity_bytes = decoder.output_capacity_bytes().max(scratch.capacity());
        assert!(
            capacity_bytes <= capacity_max_bytes,
            "output buffer of {capacity_bytes} bytes"
        );
        let heap_bytes = decoder.heap_bytes();
        assert!(
            heap_bytes <= heap_max_bytes,
            "{compression} decoder holds {heap_bytes} bytes"
        );
    }
}

/// What a decode error must mean: the decoder is poisoned until reset, and a reset gives a
/// decoder that reads a new connection's first message exactly (then it is reset again, so that
/// the input's own frames continue on a clean connection).
fn check_reconnect(decoder: &mut Decoder, scratch: &mut Vec<u8>) {
    assert_eq!(
        decoder.decode(Frame::Text(b"{}"), scratch),
        Err(DecodeError::ResetRequired),
        "an error must poison the decoder"
    );
    decoder.reset();
    let compression = decoder.compression();
    let canary = &CANARY_FRAMES[Compression::ALL
        .iter()
        .position(|&mode| mode == compression)
        .expect("ALL lists every mode")];
    let frame = match compression {
        Compression::None => Frame::Text(canary),
        _ => Frame::Binary(canary),
    };
    assert_eq!(
        decoder.decode(frame, scratch),
        Ok(Some(CANARY)),
        "{compression}: a reset decoder must read a new connection"
    );
    decoder.reset();
}

/// The first message of the connection after an error: a heartbeat ACK.
const CANARY: &[u8] = br#"{"t":null,"s":null,"op":11,"d":null}"#;

/// [`CANARY`] as each mode's server sends it, in [`Compression::ALL`] order.
static CANARY_FRAMES: LazyLock<[Vec<u8>; 4]> = LazyLock::new(|| {
    let zstd = zstd::bulk::compress(CANARY, 3).expect("zstd compresses a short message");
    let mut deflate = flate2::Compress::new(flate2::Compression::default(), true);
    let mut zlib_stream = Vec::with_capacity(256);
    deflate
        .compress_vec(CANARY, &mut zlib_stream, flate2::FlushCompress::Sync)
        .expect("deflate compresses a short message");
    assert!(zlib_stream.ends_with(&[0, 0, 0xff, 0xff]), "a sync flush");
    let mut compressor = libdeflater::Compressor::new(libdeflater::CompressionLvl::default());
    let mut zlib = vec![0; compressor.zlib_compress_bound(CANARY.len())];
    let zlib_bytes = compressor
        .zlib_compress(CANARY, &mut zlib)
        .expect("the bound is enough");
    zlib.truncate(zlib_bytes);
    [zstd, zlib_stream, zlib, CANARY.to_vec()]
});

/// Payload compression: zlib must inflate what libdeflate inflated, to the same bytes.
fn check_against_zlib(compressed: &[u8], payload: &[u8]) {
    let mut inflate = flate2::Decompress::new(true);
    let mut reference = Vec::with_capacity(payload.len() + 1);
    let status =
        inflate.decompress_vec(compressed, &mut reference, flate2::FlushDecompress::Finish);
    assert!(
        matches!(status, Ok(flate2::Status::StreamEnd)) && reference == payload,
        "libdeflate inflated {} bytes that zlib reads as {status:?} with {} bytes",
        payload.len(),
        reference.len()
    );
}

/// One payload, as [`classify`] and the field helpers get it: no length bound, optionally deeply
/// nested. Byte 0: bit 0 wraps the rest in nesting, whose depth is the next two bytes (LE, up to
/// 65535 levels), opened with `[` (bit 1 clear) or `{"a":` (bit 1 set), and closed (bit 2 set)
/// or not; the nesting goes in before the byte whose index is the fourth byte (modulo length).
pub fn classify_entry(data: &[u8]) {
    let Some((&shape, rest)) = data.split_first() else {
        return;
    };
    if shape & 1 == 0 {
        check_classification(rest);
        check_fields(rest);
        return;
    }
    let [low, high, at, body @ ..] = rest else {
        return;
    };
    let depth = usize::from(u16::from_le_bytes([*low, *high]));
    let at = usize::from(*at) % (body.len() + 1);
    let (opener, closer): (&[u8], &[u8]) = if shape & 2 == 0 {
        (b"[", b"]")
    } else {
        (b"{\"a\":", b"}")
    };
    let mut payload = Vec::with_capacity(body.len() + depth * (opener.len() + closer.len()));
    payload.extend_from_slice(&body[..at]);
    for _ in 0..depth {
        payload.extend_from_slice(opener);
    }
    if shape & 4 != 0 {
        for _ in 0..depth {
            payload.extend_from_slice(closer);
        }
    }
    payload.extend_from_slice(&body[at..]);
    check_classification(&payload);
    check_fields(&payload);
}

fn check_payload(payload: &[u8]) {
    assert!(
        payload.len() <= FUZZ_LIMITS.payload_bytes_max,
        "payload of {} bytes",
        payload.len()
    );
    check_classification(payload);
    check_fields(payload);
}

/// [`classify`] on any bytes: where its fast path answers for a UTF-8 payload, the fallback gives
/// the same head (or refuses a payload too deep for it: the fast path reads only the prefix); on
/// a valid JSON object (as serde_json reads it, first key of a name winning), the head or the
/// error agrees with the values; a READY's guild list is read.
pub(crate) fn check_classification(payload: &[u8]) {
    let head = classify(payload);
    if let Some(fast) = classify_prefix(payload)
        && std::str::from_utf8(payload).is_ok()
    {
        let lazy = classify_lazy(payload);
        assert!(
            lazy == Ok(fast) || lazy == Err(ClassifyError::TooDeep),
            "fast path {fast:?} and fallback {lazy:?} disagree on {:?}",
            String::from_utf8_lossy(payload)
        );
    }
    if head == Err(ClassifyError::TooDeep) {
        assert!(
            nests_deeper_than(payload, NESTING_MAX),
            "TooDeep for a payload within {NESTING_MAX} levels"
        );
    }
    if let Some(reference) = Envelope::read(payload) {
        reference.check(payload, head);
    }
    if let Ok(head) = head
        && head.t == Some("READY")
    {
        black_box(ready_guild_ids(payload));
    }
}

/// A JSON object's first `op`, `s` and `t` (serde_json, whose `Value` would keep the last), in
/// document order: the reference for [`classify`] on valid JSON.
#[derive(Debug, Default)]
struct Envelope {
    /// `(key, value)` for the first of each of `op`, `s` and `t`, in the order they came.
    members: Vec<(&'static str, serde_json::Value)>,
}

impl Envelope {
    /// `None` unless `payload` is one valid JSON object within the classifier's nesting limit.
    /// (serde_json does not check UTF-8 in what it skips; the classifier's fallback does.)
    fn read(payload: &[u8]) -> Option<Envelope> {
        if nests_deeper_than(payload, NESTING_MAX) || std::str::from_utf8(payload).is_err() {
            return None;
        }
        let mut deserializer = serde_json::Deserializer::from_slice(payload);
        let envelope = deserializer.deserialize_map(EnvelopeVisitor).ok()?;
        deserializer.end().ok()?;
        Some(envelope)
    }

    fn check(&self, payload: &[u8], head: Result<PayloadHead<'_>, ClassifyError>) {
        let text = String::from_utf8_lossy(payload);
        let value = |name: &str| {
            self.members
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value)
        };
        match head {
            Ok(head) => {
                let op = value("op").expect("an op was read");
                let expected_op = match op.as_u64() {
                    Some(op) => u8::try_from(op).unwrap_or(u8::MAX),
                    // A literal too big for a u64 (serde_json reads it as a float).
                    None => u8::MAX,
                };
                assert!(op.is_number(), "op {op} accepted in {text}");
                assert_eq!(head.op, expected_op, "op of {text}");
                let expected_s = value("s").and_then(serde_json::Value::as_u64);
                assert_eq!(head.s, expected_s, "s of {text}");
                assert!(
                    value("s").is_none_or(|s| s.is_null() || s.is_u64()),
                    "s accepted in {text}"
                );
                assert_eq!(
                    head.t,
                    value("t").and_then(serde_json::Value::as_str),
                    "t of {text}"
                );
            }
            Err(error) => {
                // Walking the three members in document order, the first invalid one is the
                // error. Some failures do not show in a `Value` (an escape in `t`, a fraction or
                // exponent in an `op` that serde_json reads as a float): those members may fail.
                let mut allowed = Vec::new();
                for (key, value) in &self.members {
                    let (invalid, maybe) = match *key {
                        "op" if value.is_f64() => (None, Some(ClassifyError::InvalidOp)),
                        "op" if !value.is_u64() => (Some(ClassifyError::InvalidOp), None),
                        "s" if !value.is_null() && !value.is_u64() => {
                            (Some(ClassifyError::InvalidSequence), None)
                        }
                        "t" if value.is_string() => (None, Some(ClassifyError::EscapedEventName)),
                        "t" if !value.is_null() => (Some(ClassifyError::InvalidEventName), None),
                        _ => (None, None),
                    };
                    allowed.extend(maybe);
                    if let Some(invalid) = invalid {
                        allowed.push(invalid);
                        break;
                    }
                }
                if value("op").is_none() {
                    allowed.push(ClassifyError::MissingOp);
                }
                let allowed = allowed.contains(&error);
                assert!(allowed, "{error:?} (serde_json: {self:?}) on {text}");
            }
        }
    }
}

struct EnvelopeVisitor;

impl<'de> Visitor<'de> for EnvelopeVisitor {
    type Value = Envelope;

    fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Envelope, A::Error> {
        let mut envelope = Envelope::default();
        while let Some(key) = map.next_key::<String>()? {
            let name = match key.as_str() {
                "op" => "op",
                "s" => "s",
                "t" => "t",
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            let value = map.next_value::<serde_json::Value>()?;
            if envelope.members.iter().all(|(key, _)| *key != name) {
                envelope.members.push((name, value));
            }
        }
        Ok(envelope)
    }
}

/// The field helpers against the sonic-rs readers they replaced, on any bytes: the same answers
/// wherever sonic-rs parses the whole payload; wherever both answer, the same value (the scanner
/// may refuse a malformed payload sonic-rs reads, or read one whose damage it skips over). A
/// payload nesting deeper than [`NESTING_MAX`] goes to the scanner alone: sonic-rs recurses per
/// level (and the engine never gives it such a payload).
pub(crate) fn check_fields(payload: &[u8]) {
    // The streams sink's one walk answers what the two walks it replaced answer, on any input.
    assert_eq!(
        event_name_and_guild_id(payload),
        (
            event_name_and_data(payload).map(|(name, _)| name),
            guild_id(payload)
        ),
        "event_name_and_guild_id on {:?}",
        String::from_utf8_lossy(payload)
    );
    if nests_deeper_than(payload, NESTING_MAX) {
        black_box(message_id_and_content_hash(payload));
        black_box(message_id(payload));
        black_box(guild_id(payload));
        black_box(guild_unavailable(payload));
        return;
    }
    let valid = sonic_rs::from_slice::<sonic_rs::Value>(payload).is_ok();
    // On malformed JSON sonic-rs may walk on past a member the scanner stops at, into a `d`
    // after an escaped key, where a debug build fails its assertion even though the scanner saw
    // no such `d`: there, only a payload without any escape is safe to ask.
    if sonic::can_read_message_fields(payload) && (valid || !payload.contains(&b'\\')) {
        check_field(
            "message_id_and_content_hash",
            payload,
            valid,
            message_id_and_content_hash(payload),
            sonic::message_id_and_content_hash(payload),
        );
    } else {
        black_box(message_id_and_content_hash(payload));
    }
    check_field(
        "message_id",
        payload,
        valid,
        message_id(payload),
        sonic::message_id(payload),
    );
    check_field(
        "guild_id",
        payload,
        valid,
        guild_id(payload),
        sonic::guild_id(payload),
    );
    check_field(
        "guild_unavailable",
        payload,
        valid,
        guild_unavailable(payload),
        sonic::guild_unavailable(payload),
    );
}

fn check_field<T: PartialEq + Debug>(
    name: &str,
    payload: &[u8],
    valid: bool,
    scanned: Option<T>,
    parsed: Option<T>,
) {
    let agree = if valid {
        scanned == parsed
    } else {
        scanned.is_none() || parsed.is_none() || scanned == parsed
    };
    assert!(
        agree,
        "{name}: scanner {scanned:?}, sonic-rs {parsed:?} (valid JSON: {valid}) on {:?}",
        String::from_utf8_lossy(payload)
    );
}

/// Builds a [`fuzz_entry`] input from `(control, bytes)` frames of at most 64 KiB each.
pub fn encode_input(compression: Compression, frames: &[(u8, &[u8])]) -> Vec<u8> {
    let mode = Compression::ALL
        .iter()
        .position(|&candidate| candidate == compression)
        .expect("ALL lists every mode");
    let mut input = vec![u8::try_from(mode).expect("four modes")];
    for &(control, bytes) in frames {
        let length = u16::try_from(bytes.len()).expect("a fuzz frame is at most 64 KiB");
        input.push(control);
        input.extend_from_slice(&length.to_le_bytes());
        input.extend_from_slice(bytes);
    }
    input
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::decode::test_support::{self, OwnedFrame, Random};

    fn frame_record(frame: &OwnedFrame) -> (u8, &[u8]) {
        match frame {
            OwnedFrame::Text(bytes) => (CONTROL_TEXT, bytes),
            OwnedFrame::Binary(bytes) => (0, bytes),
        }
    }

    /// `count` generated payloads of one connection (skipping the big GUILD_CREATEs), encoded.
    fn encoded(compression: Compression, seed: u64, count: usize) -> Vec<OwnedFrame> {
        let generated = test_support::connection(seed, 3, count);
        let mut encoder = test_support::encoder(compression);
        generated
            .iter()
            .filter(|item| item.payload.len() < 8 * 1024)
            .take(count)
            .map(|item| test_support::encode(&mut encoder, &item.payload))
            .collect()
    }

    fn input_of(compression: Compression, frames: &[OwnedFrame]) -> Vec<u8> {
        let records: Vec<(u8, &[u8])> = frames.iter().map(frame_record).collect();
        encode_input(compression, &records)
    }

    #[test]
    fn generated_connections_pass_the_invariants() {
        for compression in Compression::ALL {
            fuzz_entry(&input_of(compression, &encoded(compression, 41, 200)));
        }
    }

    #[test]
    fn random_and_mutated_inputs_never_panic() {
        let mut random = Random(0x5EED_DEC0DE);
        for _ in 0..2000 {
            let length = random.below(600);
            let input: Vec<u8> = (0..length).map(|_| random.next() as u8).collect();
            fuzz_entry(&input);
        }
        for compression in Compression::ALL {
            let clean = input_of(compression, &encoded(compression, 42, 40));
            for _ in 0..300 {
                let mut input = clean.clone();
                for _ in 0..1 + random.below(4) {
                    let at = random.below(input.len());
                    input[at] ^= 1 << random.below(8);
                }
                fuzz_entry(&input);
            }
        }
    }

    /// The fuzz target of one decoder mode: `decode_zstd_stream`, …
    fn mode_target(compression: Compression) -> String {
        format!("decode_{}", compression.as_str().replace('-', "_"))
    }

    /// One classify input: shape byte 0 (the payload as it is).
    fn plain(payload: &[u8]) -> Vec<u8> {
        [&[0u8][..], payload].concat()
    }

    /// One classify input that nests `depth` levels at byte `at` of `payload`.
    fn nested(payload: &[u8], depth: u16, at: u8, object: bool, closed: bool) -> Vec<u8> {
        let shape = 1 | (u8::from(object) << 1) | (u8::from(closed) << 2);
        let [low, high] = depth.to_le_bytes();
        [&[shape, low, high, at][..], payload].concat()
    }

    fn write_classify_corpus() {
        let mut seeds: Vec<(String, Vec<u8>)> = Vec::new();
        let generated = test_support::connection(21, 3, 30);
        for (index, item) in generated
            .iter()
            .filter(|item| item.payload.len() < 2 * 1024)
            .take(12)
            .enumerate()
        {
            seeds.push((format!("generated-{index}"), plain(&item.payload)));
        }
        let texts: [&[u8]; 12] = [
            br#"{"op":0,"d":{"id":"1","content":"x"},"s":5,"t":"MESSAGE_CREATE"}"#,
            b"{ \"t\" : \"READY\" , \"s\" : 1 , \"op\" : 0 , \"d\" : {\"guilds\":[{\"id\":\"1\"}]} }",
            br#"{"\u0074":"GUILD_CREATE","s":2,"op":0,"d":{"id":"3","unavailable":true}}"#,
            br#"{"t":"MESSAGE\u005fCREATE","s":1,"op":0}"#,
            br#"{"t":null,"s":null,"op":256,"d":null}"#,
            br#"{"op":1.5,"s":-1}"#,
            br#"{"t":"A","s":18446744073709551616,"op":0}"#,
            br#"{"t":"A","s":1,"op":99999999999999999999999,"t":"B","op":1}"#,
            br#"{"t":"MESSAGE_CREATE","s":"#,
            b"[1,2]",
            br#"{"t":"MESSAGE_UPDATE","s":9,"op":0,"d":{"id":"4","guild_id":"5","content":"a\"b"}}"#,
            br#"{"t":"GUILD_DELETE","s":3,"op":0,"d":{"unavailable":true,"id":"7"}}"#,
        ];
        for (index, text) in texts.iter().enumerate() {
            seeds.push((format!("text-{index}"), plain(text)));
        }
        // Deep nesting, in `d` (the fast path's payload) and before the head (the fallback's).
        let hello = br#"{"t":null,"s":null,"op":10,"d":{"x":1,"heartbeat_interval":41250}}"#;
        let dispatch = br#"{"op":0,"s":4,"t":"MESSAGE_CREATE","d":{"guild_id":"5","id":"6"}}"#;
        seeds.push(("deep-d".into(), nested(hello, 40_000, 36, false, true)));
        seeds.push(("deep-d-object".into(), nested(hello, 200, 36, true, true)));
        seeds.push(("deep-head".into(), nested(dispatch, 33, 1, true, true)));
        seeds.push((
            "deep-unclosed".into(),
            nested(dispatch, 3_000, 30, false, false),
        ));
        let directory = corpus_dir("classify");
        std::fs::create_dir_all(&directory).unwrap();
        for (name, input) in &seeds {
            classify_entry(input);
            std::fs::write(directory.join(name), input).unwrap();
        }
    }

    #[test]
    fn mode_entries_take_the_connection_without_the_mode_byte() {
        for compression in Compression::ALL {
            let input = input_of(compression, &encoded(compression, 43, 30));
            let entry = match compression {
                Compression::ZstdStream => zstd_stream_entry,
                Compression::ZlibStream => zlib_stream_entry,
                Compression::Payload => payload_entry,
                Compression::None => none_entry,
            };
            entry(&input[1..]);
        }
    }

    #[test]
    fn errors_leave_a_decoder_that_reads_a_new_connection() {
        // Garbage, then the same connection again: every mode fails once and recovers.
        for compression in [
            Compression::ZstdStream,
            Compression::ZlibStream,
            Compression::Payload,
        ] {
            let frames = encoded(compression, 44, 6);
            let mut records: Vec<(u8, &[u8])> = vec![(0, b"\x01\x02garbage")];
            records.extend(frames.iter().enumerate().map(|(index, frame)| {
                let (control, bytes) = frame_record(frame);
                (control | if index == 0 { CONTROL_RESET } else { 0 }, bytes)
            }));
            fuzz_entry(&encode_input(compression, &records));
        }
    }

    #[test]
    fn classify_entry_on_generated_random_and_mutated_payloads() {
        let mut random = Random(0xC1A551F1);
        let generated = test_support::connection(45, 3, 300);
        for item in generated
            .iter()
            .filter(|item| item.payload.len() < 8 * 1024)
        {
            classify_entry(&plain(&item.payload));
            let mut payload = item.payload.clone();
            for _ in 0..1 + random.below(3) {
                let at = random.below(payload.len());
                const BYTES: &[u8] = b"{}[]\",:0-.e \\tsop";
                payload[at] = BYTES[random.below(BYTES.len())];
            }
            classify_entry(&plain(&payload));
            let depth = random.below(100) as u16;
            let at = random.below(256) as u8;
            classify_entry(&nested(&payload, depth, at, random.below(2) == 0, true));
        }
        for _ in 0..2000 {
            let length = random.below(200);
            let input: Vec<u8> = (0..length).map(|_| random.next() as u8).collect();
            classify_entry(&input);
        }
    }

    fn corpus_dir(target: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus")
            .join(target)
    }

    /// Writes the seed corpora of `fuzz/` from the mock generator and encoder:
    /// `cargo test -p shardgate --lib decode::fuzz::tests::write_seed_corpora -- --ignored`.
    #[test]
    #[ignore = "writes fuzz/corpus; run by hand when the input format changes"]
    fn write_seed_corpora() {
        let mut seeds: Vec<(String, Vec<u8>)> = Vec::new();
        for compression in Compression::ALL {
            for (index, (seed, count)) in [(1, 4), (2, 8), (3, 12), (4, 20)].into_iter().enumerate()
            {
                let frames = encoded(compression, seed, count);
                seeds.push((
                    format!("{compression}-stream-{index}"),
                    input_of(compression, &frames),
                ));
            }
            // A new connection after a few frames: reset, fresh encoder.
            let mut frames: Vec<(u8, Vec<u8>)> = Vec::new();
            for (round, seed) in [5, 6].into_iter().enumerate() {
                for (index, frame) in encoded(compression, seed, 4).iter().enumerate() {
                    let (control, bytes) = frame_record(frame);
                    let reset = if round > 0 && index == 0 {
                        CONTROL_RESET
                    } else {
                        0
                    };
                    frames.push((control | reset, bytes.to_vec()));
                }
            }
            let records: Vec<(u8, &[u8])> = frames
                .iter()
                .map(|(control, bytes)| (*control, &bytes[..]))
                .collect();
            seeds.push((
                format!("{compression}-reset"),
                encode_input(compression, &records),
            ));
            if compression == Compression::None {
                continue;
            }
            // A small GUILD_CREATE, the 4–7.5 KB minimal form.
            let mut events = mock_gateway::events::SessionEvents::new(
                7,
                0,
                mock_gateway::events::guild_ids(7, 1),
                mock_gateway::events::EventMix::default(),
            );
            let mut payload = Vec::new();
            events.guild_create(mock_gateway::events::guild_ids(7, 1)[0], 2, 0, &mut payload);
            let mut encoder = test_support::encoder(compression);
            let frame = test_support::encode(&mut encoder, &payload);
            seeds.push((
                format!("{compression}-guild-create"),
                input_of(compression, &[frame]),
            ));
            // The mock's corrupt fault: 64 random bytes in a binary frame, after a good frame.
            let mut random = Random(9);
            let garbage: Vec<u8> = (0..64).map(|_| random.next() as u8).collect();
            let mut frames = encoded(compression, 8, 2);
            frames.push(OwnedFrame::Binary(garbage));
            frames.extend(encoded(compression, 8, 2));
            seeds.push((
                format!("{compression}-corrupt"),
                input_of(compression, &frames),
            ));
            // A bomb: 1 MiB of zeros, past the fuzz limit.
            let mut encoder = test_support::encoder(compression);
            let zeros = vec![0u8; 1 << 20];
            let bomb = match test_support::encode(&mut encoder, &zeros) {
                OwnedFrame::Binary(bytes) => bytes,
                OwnedFrame::Text(_) => unreachable!("1 MiB is compressed in every compressed mode"),
            };
            seeds.push((
                format!("{compression}-bomb"),
                encode_input(compression, &[(0, &bomb[..])]),
            ));
        }
        // zlib-stream messages cut into three frames each.
        let mut records: Vec<(u8, Vec<u8>)> = Vec::new();
        for frame in encoded(Compression::ZlibStream, 10, 6) {
            let (_, bytes) = frame_record(&frame);
            let third = bytes.len() / 3;
            records.push((0, bytes[..third].to_vec()));
            records.push((0, bytes[third..2 * third].to_vec()));
            records.push((0, bytes[2 * third..].to_vec()));
        }
        let records: Vec<(u8, &[u8])> = records
            .iter()
            .map(|(control, bytes)| (*control, &bytes[..]))
            .collect();
        seeds.push((
            "zlib-stream-split".to_owned(),
            encode_input(Compression::ZlibStream, &records),
        ));
        // Text frames the classifier's fallback and error paths read.
        let texts: [&[u8]; 10] = [
            br#"{"op":0,"d":{"id":"1","content":"x"},"s":5,"t":"MESSAGE_CREATE"}"#,
            b"{ \"t\" : \"READY\" , \"s\" : 1 , \"op\" : 0 , \"d\" : {\"guilds\":[{\"id\":\"1\"}]} }",
            br#"{"\u0074":"GUILD_CREATE","s":2,"op":0,"d":{"id":"3","unavailable":true}}"#,
            br#"{"t":"MESSAGE\u005fCREATE","s":1,"op":0}"#,
            br#"{"t":null,"s":null,"op":256,"d":null}"#,
            br#"{"op":1.5}"#,
            br#"{"op":0,"s":-1}"#,
            br#"{"t":"MESSAGE_CREATE","s":"#,
            b"[1,2]",
            br#"{"t":"MESSAGE_UPDATE","s":9,"op":0,"d":{"id":"4","guild_id":"5","content":"a\"b"}}"#,
        ];
        let records: Vec<(u8, &[u8])> = texts.iter().map(|text| (CONTROL_TEXT, *text)).collect();
        seeds.push((
            "none-classify".to_owned(),
            encode_input(Compression::None, &records),
        ));
        seeds.push((
            "zstd-stream-text".to_owned(),
            encode_input(Compression::ZstdStream, &records),
        ));
        // Text frames the field helpers' scanner reads: escapes in strings and keys, `id` and
        // `content` nested before the real ones, repeated keys and `d`s, whitespace, numbers last.
        let texts: [&[u8]; 8] = [
            br#"{"t":"MESSAGE_CREATE","s":1,"op":0,"d":{"author":{"id":"9","content":"no"},"x":"\"}]\\","content":"say \"hi\"","id":"42","guild_id":"7"}}"#,
            br#"{"t":"MESSAGE_UPDATE","s":2,"op":0,"\u0064":{"\u0069d":"7","con\u0074ent":"k"}}"#,
            br#"{"t":"MESSAGE_UPDATE","s":3,"op":0,"d":{"id":"1"},"d":{"content":"x"}}"#,
            br#"{"t":"MESSAGE_UPDATE","s":4,"op":0,"d":{"id":"1","id":"2","content":"x"}}"#,
            b"{ \"t\" : \"GUILD_DELETE\" , \"s\" : 5 , \"op\" : 0 , \"d\" : { \"unavailable\" : true , \"id\" : \"9\" } }",
            br#"{"t":"TYPING_START","s":6,"op":0,"d":{"member":{"guild_id":"1"},"guild_id":123456}}"#,
            br#"{"t":"GUILD_CREATE","s":7,"op":0,"d":{"channels":[[[{"id":"1"}]]],"unavailable":false,"id":8}}"#,
            br#"{"t":"MESSAGE_CREATE","s":8,"op":0,"d":{"content":"\ud83d\ude00 caf\u00e9","id":18446744073709551615}}"#,
        ];
        let records: Vec<(u8, &[u8])> = texts.iter().map(|text| (CONTROL_TEXT, *text)).collect();
        seeds.push((
            "none-fields".to_owned(),
            encode_input(Compression::None, &records),
        ));

        let directory = corpus_dir("decode");
        std::fs::create_dir_all(&directory).unwrap();
        for (name, input) in &seeds {
            fuzz_entry(input);
            std::fs::write(directory.join(name), input).unwrap();
        }
        // The per-mode targets take the small seeds, without the mode byte.
        for (name, input) in &seeds {
            if name.ends_with("-stream-2") || name.ends_with("-stream-3") {
                continue;
            }
            let compression = Compression::ALL[usize::from(input[0])];
            let directory = corpus_dir(&mode_target(compression));
            std::fs::create_dir_all(&directory).unwrap();
            connection_entry(compression, &input[1..]);
            std::fs::write(directory.join(name), &input[1..]).unwrap();
        }
        write_classify_corpus();

        // The shard machine's input: rng seed, command queue capacity, resume flag, then actions
        // (action % 24 >= 18 is "what a well-behaved driver and server would do next").
        let progress = |count: usize| vec![18u8; count];
        let deep = |prefix: &[u8], kind: u8| {
            [prefix, &[12, 0xff, kind, 0], &10_000u16.to_le_bytes()[..]].concat()
        };
        let shard_seeds: [(&str, Vec<u8>); 9] = [
            ("session", [vec![0, 8, 0], progress(40)].concat()),
            (
                "resume-after-reconnect",
                [vec![1, 8, 1], progress(20), vec![9], progress(20)].concat(),
            ),
            (
                "close-codes",
                [
                    vec![2, 8, 0],
                    progress(10),
                    vec![5, 4],
                    progress(10),
                    vec![5, 8],
                    vec![1; 4],
                ]
                .concat(),
            ),
            (
                "commands-and-heartbeats",
                [
                    vec![3, 4, 0],
                    progress(10),
                    vec![14, 5, 0, 1, 2, 3, 4, 0],
                    vec![17],
                    progress(5),
                ]
                .concat(),
            ),
            (
                "invalid-session",
                [
                    vec![4, 8, 0],
                    progress(8),
                    vec![10, 1],
                    vec![1; 5],
                    progress(10),
                ]
                .concat(),
            ),
            (
                "shutdown",
                [vec![5, 8, 0], progress(8), vec![16, 0], vec![1; 3]].concat(),
            ),
            // Crash inputs: a HELLO, READY and op 9 whose `d` nests 20,000 levels (action 12,
            // op 0xff: a frame through the classifier, kinds 1–3) overflowed the stack in
            // sonic-rs until the shard's readers refused payloads nesting too deep.
            ("deep-hello", deep(&[0, 8, 0, 2], 1)),
            ("deep-ready", deep(&[0, 8, 0, 2, 6, 0, 13], 2)),
            ("deep-invalid-session", deep(&[0, 8, 0, 2, 6, 0], 3)),
        ];
        let directory = corpus_dir("shard_machine");
        std::fs::create_dir_all(&directory).unwrap();
        for (name, input) in &shard_seeds {
            crate::shard::fuzz_entry(input);
            std::fs::write(directory.join(name), input).unwrap();
        }
    }
}
