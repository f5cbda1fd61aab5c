//! Fuzzing entry point for the decode stage: bytes become a connection (a mode and a sequence of
//! frames, with resets) fed to a [`Decoder`] with small limits, and every payload it produces goes
//! through [`classify`] and the field helpers. A `fuzz/` target is one line into [`fuzz_entry`];
//! `engine/tests/fuzz_corpus.rs` replays the seed corpus on stable.
//!
//! Input: byte 0 picks the mode ([`Compression::ALL`], modulo 4); then records
//! `[control][length: u16 LE][bytes]` until the input ends (a short last record takes what is
//! left). Control bit 0: text (1) or binary (0); bit 1: reset the decoder before this frame.
//!
//! Invariants checked (a violation panics, which is what a fuzzer reports):
//! - no payload is longer than `payload_bytes_max`, and the output buffer never holds more than
//!   `payload_bytes_max + 1` bytes of capacity;
//! - only zlib-stream answers "more frames needed";
//! - after an error the decoder refuses frames until reset;
//! - where the classifier's fast path answers for a UTF-8 payload, its fallback gives the same head;
//! - the field helpers' scanner agrees with the sonic-rs readers it replaced ([`check_fields`]).

use std::fmt::Debug;
use std::hint::black_box;

use super::classify::{classify, classify_lazy, classify_prefix};
use super::fields::{
    guild_id, guild_unavailable, message_id_and_content_hash, ready_guild_ids, sonic,
};
use super::{Compression, DecodeError, Decoder, DecoderLimits, Frame};

/// The fuzzing decoder's limits: small enough that bombs and long messages hit them quickly.
pub const FUZZ_LIMITS: DecoderLimits = DecoderLimits {
    payload_bytes_max: 64 * 1024,
    zlib_stream_buffer_bytes_max: 16 * 1024,
    // The mock gateway's default zstd level (3) asks for a 2 MiB window.
    zstd_window_log_max: 21,
};

/// Control bit: the frame is text.
pub const CONTROL_TEXT: u8 = 0b01;
/// Control bit: reset the decoder before the frame.
pub const CONTROL_RESET: u8 = 0b10;

/// Interprets `data` as one connection's frames and checks the stage's invariants.
pub fn fuzz_entry(data: &[u8]) {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let compression = Compression::ALL[usize::from(mode) % Compression::ALL.len()];
    let mut decoder = Decoder::new(compression, FUZZ_LIMITS).expect("the fuzz limits are valid");
    let capacity_max_bytes = FUZZ_LIMITS.payload_bytes_max + 1;
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
        let frame = if control & CONTROL_TEXT != 0 {
            Frame::Text(bytes)
        } else {
            Frame::Binary(bytes)
        };
        match decoder.decode(frame) {
            Ok(Some(payload)) => check_payload(payload),
            Ok(None) => assert_eq!(
                compression,
                Compression::ZlibStream,
                "only zlib-stream waits"
            ),
            Err(_) => {
                assert_eq!(
                    decoder.decode(Frame::Text(b"{}")),
                    Err(DecodeError::ResetRequired),
                    "an error must poison the decoder"
                );
                decoder.reset();
            }
        }
        let capacity_bytes = decoder.output_capacity_bytes();
        assert!(
            capacity_bytes <= capacity_max_bytes,
            "output buffer of {capacity_bytes} bytes"
        );
    }
}

fn check_payload(payload: &[u8]) {
    assert!(
        payload.len() <= FUZZ_LIMITS.payload_bytes_max,
        "payload of {} bytes",
        payload.len()
    );
    let head = classify(payload);
    if let Some(fast) = classify_prefix(payload)
        && std::str::from_utf8(payload).is_ok()
    {
        assert_eq!(
            classify_lazy(payload),
            Ok(fast),
            "fast path and fallback disagree on {:?}",
            String::from_utf8_lossy(payload)
        );
    }
    if let Ok(head) = head
        && head.t == Some("READY")
    {
        black_box(ready_guild_ids(payload));
    }
    check_fields(payload);
}

/// The field helpers against the sonic-rs readers they replaced, on any bytes: the same answers
/// wherever sonic-rs parses the whole payload; wherever both answer, the same value (the scanner
/// may refuse a malformed payload sonic-rs reads, or read one whose damage it skips over).
pub(crate) fn check_fields(payload: &[u8]) {
    let valid = sonic_rs::from_slice::<sonic_rs::Value>(payload).is_ok();
    if sonic::can_read_message_fields(payload) {
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
    use crate::decode::test_support::{self, OwnedFrame};

    /// xorshift64*: enough randomness for smoke inputs, no dependency.
    struct Random(u64);

    impl Random {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, bound: usize) -> usize {
            (self.next() % bound as u64) as usize
        }
    }

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

        // The shard machine's input: rng seed, command queue capacity, resume flag, then actions
        // (action % 24 >= 18 is "what a well-behaved driver and server would do next").
        let progress = |count: usize| vec![18u8; count];
        let shard_seeds: [(&str, Vec<u8>); 6] = [
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
        ];
        let directory = corpus_dir("shard_machine");
        std::fs::create_dir_all(&directory).unwrap();
        for (name, input) in &shard_seeds {
            crate::shard::fuzz_entry(input);
            std::fs::write(directory.join(name), input).unwrap();
        }
    }
}
