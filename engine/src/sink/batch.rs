//! The batch encoder: records → the forwarding body, a JSON array of envelopes.
//!
//! `[{"shard_id":3,"payload":<dispatch bytes>},{"shard_id":3,"guild_create":"join","payload":…},
//!   {"shard_id":3,"notice":"SHARD_READY","payload":{…}}]`
//!
//! The payload bytes are copied in as they are (the contract: "the dispatch exactly as Discord
//! sent it"), never parsed or re-serialised. No allocation beyond growing the caller's buffer.
//! Only for a batch the bot refused does [`invalid_records`] parse the payloads, to leave out
//! the ones no bot could read.

use crate::record::{Record, RecordKind};

/// Appends the JSON array of `records` to `body` (which the caller clears and reuses).
pub fn encode(records: &[Record], body: &mut Vec<u8>) {
    encode_except(records, &[], body);
}

/// [`encode`] without the records at the indices in `skip` (ascending): the ones
/// [`invalid_records`] found.
pub fn encode_except(records: &[Record], skip: &[usize], body: &mut Vec<u8>) {
    let total: usize = records.iter().map(Record::encoded_len).sum();
    body.reserve(total + 2);
    body.push(b'[');
    let mut skip = skip.iter().peekable();
    let mut first = true;
    for (index, record) in records.iter().enumerate() {
        if skip.next_if_eq(&&index).is_some() || !record.kind.is_for_bot() {
            continue;
        }
        if !first {
            body.push(b',');
        }
        first = false;
        body.extend_from_slice(b"{\"shard_id\":");
        body.extend_from_slice(itoa::Buffer::new().format(record.shard_id).as_bytes());
        match record.kind {
            RecordKind::Dispatch => {}
            RecordKind::Session
            | RecordKind::Position
            | RecordKind::HandedOver
            | RecordKind::Redundant
            | RecordKind::Ended => {
                unreachable!("skipped above")
            }
            RecordKind::GuildCreate(class) => {
                body.extend_from_slice(b",\"guild_create\":\"");
                body.extend_from_slice(class.as_str().as_bytes());
                body.push(b'"');
            }
            RecordKind::Notice(notice) => {
                body.extend_from_slice(b",\"notice\":\"");
                body.extend_from_slice(notice.as_str().as_bytes());
                body.push(b'"');
            }
        }
        body.extend_from_slice(b",\"payload\":");
        body.extend_from_slice(&record.payload);
        body.push(b'}');
    }
    body.push(b']');
}

/// The indices (ascending) of the records whose payload is not one complete JSON value in
/// UTF-8, or nests deeper than serde_json's default limit (128 levels, which most bots' parsers
/// share): each of them makes the whole body unreadable to the bot.
///
/// Not on the hot path: the cores read only a payload's head (the bot parses the rest), so a
/// broken gateway's truncated payload reaches the sink as it came. The deliverer calls this
/// once for a batch the bot did not acknowledge, so that one bad payload cannot hold every
/// shard's delivery back for good.
pub fn invalid_records(records: &[Record]) -> Vec<usize> {
    records
        .iter()
        .enumerate()
        .filter(|(_, record)| record.kind.is_for_bot() && !is_valid_json(&record.payload))
        .map(|(index, _)| index)
        .collect()
}

/// The deepest a payload may nest: serde_json's limit (128) less the envelope's array and object.
const PAYLOAD_NESTING_MAX: usize = 126;

/// One complete JSON value in UTF-8 (serde_json skips ignored strings without checking them,
/// and ignores values without its depth limit, hence the two checks before it).
fn is_valid_json(payload: &[u8]) -> bool {
    std::str::from_utf8(payload).is_ok_and(|text| {
        !crate::decode::scan::nests_deeper_than(payload, PAYLOAD_NESTING_MAX)
            && serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{GuildCreateClass, Notice};

    #[test]
    fn envelopes_embed_the_original_bytes() {
        let dispatch =
            br#"{"t":"MESSAGE_CREATE","s":7,"op":0,"d":{"content":"h\u00e9 \"x\"","id":"1"}}"#;
        let records = vec![
            Record {
                shard_id: 3,
                shard_count: 8,
                seq: 7,
                session: 0,
                kind: RecordKind::Dispatch,
                payload: dispatch.to_vec().into(),
            },
            Record {
                shard_id: 4,
                shard_count: 8,
                seq: 1,
                session: 0,
                kind: RecordKind::GuildCreate(GuildCreateClass::Join),
                payload: br#"{"t":"GUILD_CREATE","s":1,"op":0,"d":{}}"#.to_vec().into(),
            },
            Record {
                shard_id: 4,
                shard_count: 8,
                seq: 0,
                session: 0,
                kind: RecordKind::Notice(Notice::ShardReady),
                payload: br#"{"guilds":2}"#.to_vec().into(),
            },
        ];
        let mut body = Vec::new();
        encode(&records, &mut body);
        let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed[0]["shard_id"], 3);
        assert_eq!(parsed[0]["payload"]["s"], 7);
        assert_eq!(parsed[1]["guild_create"], "join");
        assert_eq!(parsed[2]["notice"], "SHARD_READY");
        // The dispatch bytes appear verbatim (escapes and key order untouched).
        let needle = std::str::from_utf8(dispatch).unwrap();
        assert!(std::str::from_utf8(&body).unwrap().contains(needle));
    }

    #[test]
    fn invalid_payloads_are_found_and_left_out() {
        let record = |seq: u64, payload: &[u8]| Record {
            shard_id: 1,
            shard_count: 8,
            seq,
            session: 0,
            kind: RecordKind::Dispatch,
            payload: payload.to_vec().into(),
        };
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        let records = vec![
            record(1, br#"{"t":"A","s":1,"op":0,"d":{}}"#),
            // Truncated after the head: the cores' classifier accepts it.
            record(2, br#"{"t":"A","s":2,"op":0,"d":{"content":"hel"#),
            record(3, b"{\"t\":\"A\",\"s\":3,\"op\":0,\"d\":\"\xff\"}"),
            record(4, br#"{"t":"A","s":4,"op":0,"d":{}}"#),
            record(5, br#"{"t":"A","s":5,"op":0,"d":{}},{"shard_id":9}"#),
            record(6, deep.as_bytes()),
            record(7, br#"{"t":"A","s":7,"op":0,"d":{}}"#),
        ];
        let skip = invalid_records(&records);
        assert_eq!(skip, [1, 2, 4, 5]);
        let mut body = Vec::new();
        encode_except(&records, &skip, &mut body);
        let parsed: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
        let seqs: Vec<_> = parsed.iter().map(|e| e["payload"]["s"].clone()).collect();
        assert_eq!(seqs, [1, 4, 7]);
        body.clear();
        encode_except(&records, &[0, 1, 2, 3, 4, 5, 6], &mut body);
        assert_eq!(body, b"[]");
    }

    #[test]
    fn an_empty_batch_is_an_empty_array() {
        let mut body = Vec::new();
        encode(&[], &mut body);
        assert_eq!(body, b"[]");
    }
}
