//! Fuzzing entry point for the batch encoder ([`super::batch::encode`]): bytes become records
//! (shard id, kind, payload) and the body they encode to is checked. A `fuzz/` target is one line
//! into [`batch_encoder_entry`]; `engine/tests/fuzz_corpus.rs` replays the seed corpus on stable.
//!
//! Input: records `[kind][shard id: u32 LE][length: u16 LE][payload]` until the input ends (a
//! short last record takes what is left). Kind modulo 7: dispatch, session, the three
//! GUILD_CREATE classes, the two notices.
//!
//! The encoder's contract: it copies each payload in as it is, so the body is JSON only if every
//! payload is one JSON value. The engine's records carry a gateway payload (a JSON object, as
//! Discord sent it) or a notice or session the engine wrote (a JSON object). So a payload that is
//! not one JSON object as serde_json reads it (within serde_json's nesting limit, less the
//! envelope's two levels) is replaced by the object `{"bytes": <its bytes, lossily as text>}`;
//! surrounding whitespace is kept.
//!
//! Invariants checked (a violation panics, which is what a fuzzer reports):
//! - the body is valid JSON (serde_json): an array with one element per record, in order;
//! - each element has exactly the keys `shard_id` (the record's), `payload`, and `guild_create`
//!   or `notice` for those kinds, with their names;
//! - each element's `payload` is the record's bytes, byte for byte (sonic-rs's raw value), and
//!   parses to the same value;
//! - the body fits in what the encoder reserved ([`Record::encoded_len`] per record, plus the
//!   brackets): encoding never grows the buffer twice.

use crate::decode::too_deep;
use crate::record::{GuildCreateClass, Notice, Record, RecordKind};

/// The kinds a record may have, by the input's kind byte (modulo the length).
const KINDS: [RecordKind; 13] = [
    RecordKind::Dispatch,
    RecordKind::Session,
    RecordKind::Position,
    RecordKind::HandedOver,
    RecordKind::Redundant,
    RecordKind::GuildCreate(GuildCreateClass::Backfill),
    RecordKind::GuildCreate(GuildCreateClass::Join),
    RecordKind::GuildCreate(GuildCreateClass::Return),
    RecordKind::Notice(Notice::ShardReady),
    RecordKind::Notice(Notice::AllShardsReady),
    RecordKind::Notice(Notice::ReshardStarted),
    RecordKind::Notice(Notice::ReshardFinished),
    RecordKind::Ended,
];

/// Interprets `data` as records, encodes them and checks the body.
pub fn batch_encoder_entry(data: &[u8]) {
    let records = records(data);
    let mut body = Vec::new();
    super::batch::encode(&records, &mut body);
    let reserved_bytes: usize = records.iter().map(Record::encoded_len).sum::<usize>() + 2;
    assert!(
        body.len() <= reserved_bytes,
        "body of {} bytes, {reserved_bytes} reserved",
        body.len()
    );
    let parsed: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(parsed) => parsed,
        Err(error) => panic!(
            "invalid JSON body ({error}): {:?}",
            String::from_utf8_lossy(&body)
        ),
    };
    let elements = parsed.as_array().expect("the body is an array");
    // The engine's bookkeeping records (sessions, positions, hand-overs) never reach the bot.
    let forwarded: Vec<&Record> = records
        .iter()
        .filter(|record| record.kind.is_for_bot())
        .collect();
    assert_eq!(
        elements.len(),
        forwarded.len(),
        "one element per forwarded record"
    );
    let raw_elements = sonic_rs::to_array_iter(&body[..]);
    for ((record, element), raw_element) in forwarded.into_iter().zip(elements).zip(raw_elements) {
        check_element(record, element);
        let raw_element = raw_element.expect("sonic-rs reads what serde_json read");
        let raw_payload = sonic_rs::get_from_str(raw_element.as_raw_str(), ["payload"])
            .expect("the element has a payload");
        assert_eq!(
            raw_payload.as_raw_str().as_bytes(),
            record.payload.trim_ascii(),
            "payload bytes changed"
        );
    }
}

fn check_element(record: &Record, element: &serde_json::Value) {
    let object = element.as_object().expect("an element is an object");
    let (extra_key, extra_value) = match record.kind {
        RecordKind::Dispatch
        | RecordKind::Session
        | RecordKind::Position
        | RecordKind::HandedOver
        | RecordKind::Redundant
        | RecordKind::Ended => (None, None),
        RecordKind::GuildCreate(class) => (Some("guild_create"), Some(class.as_str())),
        RecordKind::Notice(notice) => (Some("notice"), Some(notice.as_str())),
    };
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut expected_keys: Vec<&str> = ["shard_id", "payload"]
        .into_iter()
        .chain(extra_key)
        .collect();
    expected_keys.sort_unstable();
    assert_eq!(keys, expected_keys, "envelope keys");
    assert_eq!(
        object["shard_id"].as_u64(),
        Some(u64::from(record.shard_id))
    );
    if let (Some(key), Some(value)) = (extra_key, extra_value) {
        assert_eq!(object[key].as_str(), Some(value), "{key}");
    }
    let payload: serde_json::Value =
        serde_json::from_slice(&record.payload).expect("records carry JSON objects");
    assert_eq!(object["payload"], payload, "payload value changed");
}

/// The records of `data`, each payload made to honour the encoder's contract.
fn records(data: &[u8]) -> Vec<Record> {
    let mut records = Vec::new();
    let mut rest = data;
    while let Some((&kind, after_kind)) = rest.split_first() {
        let mut shard_id = [0u8; 4];
        let id_bytes = after_kind.len().min(4);
        shard_id[..id_bytes].copy_from_slice(&after_kind[..id_bytes]);
        let after_id = &after_kind[id_bytes..];
        let length = match after_id {
            [low, high, ..] => usize::from(u16::from_le_bytes([*low, *high])),
            _ => after_id.len(),
        };
        let after_length = after_id.get(2..).unwrap_or_default();
        let (payload, after_payload) = after_length.split_at(length.min(after_length.len()));
        rest = after_payload;
        records.push(Record {
            shard_id: u32::from_le_bytes(shard_id),
            shard_count: 4,
            seq: 0,
            session: 0,
            kind: KINDS[usize::from(kind) % KINDS.len()],
            payload: json_object(payload).into(),
        });
    }
    records
}

/// `bytes` if it is one JSON object that serde_json reads inside an envelope, else the object
/// `{"bytes": …}` holding them as text.
fn json_object(bytes: &[u8]) -> Vec<u8> {
    let is_object = !too_deep(bytes)
        && serde_json::from_slice::<serde_json::Value>(bytes).is_ok_and(|value| value.is_object());
    if is_object {
        return bytes.to_vec();
    }
    serde_json::to_vec(&serde_json::json!({ "bytes": String::from_utf8_lossy(bytes) }))
        .expect("a string serialises")
}

/// Builds a [`batch_encoder_entry`] input from `(kind, shard id, payload)` records.
pub fn encode_input(records: &[(u8, u32, &[u8])]) -> Vec<u8> {
    let mut input = Vec::new();
    for &(kind, shard_id, payload) in records {
        let length = u16::try_from(payload.len()).expect("a fuzz payload is at most 64 KiB");
        input.push(kind);
        input.extend_from_slice(&shard_id.to_le_bytes());
        input.extend_from_slice(&length.to_le_bytes());
        input.extend_from_slice(payload);
    }
    input
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const DISPATCH: &[u8] =
        br#"{"t":"MESSAGE_CREATE","s":7,"op":0,"d":{"content":"h\u00e9 \"x\"","id":"1"}}"#;
    const GUILD_CREATE: &[u8] =
        br#"{"t":"GUILD_CREATE","s":2,"op":0,"d":{"id":"3","unavailable":false,"channels":[]}}"#;
    const SESSION: &[u8] =
        br#"{"session_id":"abc","resume_url":"wss://resume.example","sequence":42}"#;

    fn seeds() -> Vec<(&'static str, Vec<u8>)> {
        vec![
            ("empty", Vec::new()),
            ("dispatch", encode_input(&[(0, 3, DISPATCH)])),
            (
                "mixed",
                encode_input(&[
                    (1, 3, SESSION),
                    (0, 3, DISPATCH),
                    (3, 4, GUILD_CREATE),
                    (5, 4, br#"{"guilds":2}"#),
                    (6, 0, br#"{"shards":2}"#),
                ]),
            ),
            (
                "edges",
                encode_input(&[
                    (2, u32::MAX, b" \n{ \"a\" : [ 1 , { } ] }\t"),
                    (4, 0, br#"{"\ud83d\ude00":"\u0000","":null}"#),
                    (0, 9, b"not json"),
                    (0, 9, b"[1,2]"),
                    (6, 1, b"\xff\xfe{}"),
                ]),
            ),
        ]
    }

    #[test]
    fn seeds_pass_the_invariants() {
        for (_, input) in seeds() {
            batch_encoder_entry(&input);
        }
    }

    #[test]
    fn random_inputs_never_fail_the_invariants() {
        let mut state = 0x0BA7_C4E5_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..2000 {
            let length = (next() % 300) as usize;
            let input: Vec<u8> = (0..length).map(|_| next() as u8).collect();
            batch_encoder_entry(&input);
        }
    }

    /// Writes the seed corpus of `fuzz/`:
    /// `cargo test -p shardgate --lib sink::fuzz::tests::write_seed_corpus -- --ignored`.
    #[test]
    #[ignore = "writes fuzz/corpus; run by hand when the input format changes"]
    fn write_seed_corpus() {
        let directory = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/batch_encoder");
        std::fs::create_dir_all(&directory).unwrap();
        for (name, input) in seeds() {
            std::fs::write(directory.join(name), input).unwrap();
        }
    }
}
