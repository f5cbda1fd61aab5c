//! The batch encoder: records → the forwarding body, a JSON array of envelopes.
//!
//! `[{"shard_id":3,"payload":<dispatch bytes>},{"shard_id":3,"guild_create":"join","payload":…},
//!   {"shard_id":3,"notice":"SHARD_READY","payload":{…}}]`
//!
//! The payload bytes are copied in as they are (the contract: "the dispatch exactly as Discord
//! sent it"), never parsed or re-serialised. No allocation beyond growing the caller's buffer.

use crate::record::{Record, RecordKind};

/// Appends the JSON array of `records` to `body` (which the caller clears and reuses).
pub fn encode(records: &[Record], body: &mut Vec<u8>) {
    let total: usize = records.iter().map(Record::encoded_len).sum();
    body.reserve(total + 2);
    body.push(b'[');
    for (index, record) in records.iter().enumerate() {
        if index > 0 {
            body.push(b',');
        }
        body.extend_from_slice(b"{\"shard_id\":");
        body.extend_from_slice(itoa::Buffer::new().format(record.shard_id).as_bytes());
        match record.kind {
            // The sink never batches session markers; were one here, it goes as a dispatch.
            RecordKind::Dispatch | RecordKind::Session => {}
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
                seq: 7,
                kind: RecordKind::Dispatch,
                payload: dispatch.to_vec(),
            },
            Record {
                shard_id: 4,
                seq: 1,
                kind: RecordKind::GuildCreate(GuildCreateClass::Join),
                payload: br#"{"t":"GUILD_CREATE","s":1,"op":0,"d":{}}"#.to_vec(),
            },
            Record {
                shard_id: 4,
                seq: 0,
                kind: RecordKind::Notice(Notice::ShardReady),
                payload: br#"{"guilds":2}"#.to_vec(),
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
    fn an_empty_batch_is_an_empty_array() {
        let mut body = Vec::new();
        encode(&[], &mut body);
        assert_eq!(body, b"[]");
    }
}
