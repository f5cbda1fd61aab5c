//! The few fields of `d` the filter stage needs, read lazily with sonic-rs: no DOM, and nothing
//! outside the path to the field is parsed beyond skipping it. Each helper answers `None` (or an
//! empty list) for a payload that lacks the field or has it in another shape; none panics.
//!
//! Cost: one pass over the payload up to the field, and a small scratch allocation inside sonic-rs
//! per call. sonic-rs validates what it skips, which costs about as much as parsing it: on a 2-core
//! VM, about 0.8 µs per MESSAGE_CREATE/UPDATE for the content hash (the content comes last in
//! `d`) and 0.7 µs per event for the guild id (`fields/*` in the decode bench). Call them only
//! for the events that need them. Snowflakes are accepted as JSON strings (Discord's form) or as
//! unsigned integers.

use std::hash::BuildHasher;
use std::sync::LazyLock;

use sonic_rs::{JsonValueTrait, LazyValue, PointerTree};

use super::classify::{classify, parse_unsigned};

/// The keys of [`content_hash`]: random per process, so that nobody can craft two contents with
/// the same hash to hide an edit behind a redundant-looking update.
static CONTENT_HASH_KEYS: LazyLock<std::hash::RandomState> =
    LazyLock::new(std::hash::RandomState::new);

/// `d.id` and `d.content`, read in one pass.
static MESSAGE_FIELDS: LazyLock<PointerTree> = LazyLock::new(|| {
    let mut tree = PointerTree::new();
    tree.add_path(["d", "id"]);
    tree.add_path(["d", "content"]);
    tree
});

/// MESSAGE_CREATE / MESSAGE_UPDATE: `d.id` and a 64-bit hash of the raw JSON bytes of
/// `d.content` (the string literal as sent, escapes included). `None` without a string `content`
/// (an update that does not carry it) or without an id.
///
/// The hash is SipHash-1-3 keyed per process: equal within a process, different across restarts.
/// The caller decides which events to ask about; this reads the fields of any payload.
pub fn message_id_and_content_hash(payload: &[u8]) -> Option<(u64, u64)> {
    let fields = sonic_rs::get_many(payload, &MESSAGE_FIELDS).ok()?;
    let [Some(id), Some(content)] = fields.as_slice() else {
        return None;
    };
    if !content.is_str() {
        return None;
    }
    Some((
        snowflake(id)?,
        content_hash(content.as_raw_str().as_bytes()),
    ))
}

/// The guild a dispatch belongs to: `d.id` for GUILD_CREATE, GUILD_UPDATE and GUILD_DELETE (whose
/// `d` is the guild), `d.guild_id` for every other event. `None` for DMs and guild-less events.
pub fn guild_id(payload: &[u8]) -> Option<u64> {
    let head = classify(payload).ok()?;
    let key = match head.t {
        Some("GUILD_CREATE" | "GUILD_UPDATE" | "GUILD_DELETE") => "id",
        _ => "guild_id",
    };
    let value = sonic_rs::get_from_slice(payload, ["d", key]).ok()?;
    snowflake(&value)
}

/// `d.unavailable` (GUILD_CREATE, GUILD_DELETE): `None` when absent or not a boolean.
pub fn guild_unavailable(payload: &[u8]) -> Option<bool> {
    sonic_rs::get_from_slice(payload, ["d", "unavailable"])
        .ok()?
        .as_bool()
}

/// READY's `d.guilds[*].id`, in order; entries without a readable id are skipped.
pub fn ready_guild_ids(payload: &[u8]) -> Vec<u64> {
    let Ok(guilds) = sonic_rs::get_from_slice(payload, ["d", "guilds"]) else {
        return Vec::new();
    };
    let Some(entries) = guilds.into_array_iter() else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            snowflake(&entry.get("id")?)
        })
        .collect()
}

/// The content hash: keyed SipHash-1-3 over the raw bytes.
pub(crate) fn content_hash(raw: &[u8]) -> u64 {
    CONTENT_HASH_KEYS.hash_one(raw)
}

/// A snowflake given as `"123"` (Discord's form) or `123`.
fn snowflake(value: &LazyValue<'_>) -> Option<u64> {
    let raw = value.as_raw_str().as_bytes();
    let digits = raw
        .strip_prefix(b"\"")
        .and_then(|raw| raw.strip_suffix(b"\""))
        .unwrap_or(raw);
    parse_unsigned(digits)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use mock_gateway::events::guild_ids;

    use super::*;
    use crate::decode::test_support;

    fn snowflake_of(value: &serde_json::Value) -> Option<u64> {
        value.as_str()?.parse().ok()
    }

    #[test]
    fn fields_of_every_generated_payload_match_serde_json() {
        let generated = test_support::connection(31, 6, 4000);
        let (mut guild_events, mut unavailable_events) = (0, 0);
        for item in &generated {
            let payload = &item.payload[..];
            let value: serde_json::Value = serde_json::from_slice(payload).unwrap();
            let name = value["t"].as_str();
            let expected_guild = match name {
                Some("GUILD_CREATE" | "GUILD_UPDATE" | "GUILD_DELETE") => {
                    snowflake_of(&value["d"]["id"])
                }
                _ => snowflake_of(&value["d"]["guild_id"]),
            };
            assert_eq!(guild_id(payload), expected_guild, "{name:?}");
            guild_events += usize::from(expected_guild.is_some());
            let expected_unavailable = value["d"]["unavailable"].as_bool();
            assert_eq!(guild_unavailable(payload), expected_unavailable, "{name:?}");
            unavailable_events += usize::from(expected_unavailable.is_some());
        }
        assert!(guild_events > 2000, "{guild_events}");
        // Every GUILD_CREATE says `unavailable: false`; of the GUILD_DELETEs only the outage has it.
        assert_eq!(unavailable_events, 6 + 1);
    }

    #[test]
    fn content_hash_tells_unfurls_from_edits() {
        let generated = test_support::connection(32, 6, 6000);
        let mut last_hash: HashMap<u64, u64> = HashMap::new();
        let (mut unfurls, mut edits) = (0, 0);
        for item in &generated {
            let Some(info) = item.info else { continue };
            let payload = &item.payload[..];
            let value: serde_json::Value = serde_json::from_slice(payload).unwrap();
            match info.name {
                "MESSAGE_CREATE" => {
                    let (id, hash) = message_id_and_content_hash(payload).unwrap();
                    assert_eq!(Some(id), snowflake_of(&value["d"]["id"]));
                    last_hash.insert(id, hash);
                }
                "MESSAGE_UPDATE" => {
                    let (id, hash) = message_id_and_content_hash(payload).unwrap();
                    assert_eq!(Some(id), snowflake_of(&value["d"]["id"]));
                    let previous = last_hash.insert(id, hash).expect("updates follow creates");
                    if info.redundant_update {
                        unfurls += 1;
                        assert_eq!(hash, previous, "an unfurl keeps the content");
                    } else {
                        edits += 1;
                        assert_ne!(hash, previous, "an edit changes the content");
                    }
                }
                _ => {
                    if value["d"].get("content").is_none() {
                        assert_eq!(message_id_and_content_hash(payload), None, "{}", info.name);
                    }
                }
            }
        }
        assert!(
            unfurls > 100 && edits > 50,
            "unfurls {unfurls}, edits {edits}"
        );
    }

    #[test]
    fn content_hash_reads_the_raw_literal() {
        let hash = |payload: &[u8]| message_id_and_content_hash(payload).map(|(_, hash)| hash);
        let create =
            br#"{"t":"MESSAGE_CREATE","s":1,"op":0,"d":{"content":"caf\u00e9","id":"42"}}"#;
        let update = br#"{"t":"MESSAGE_UPDATE","s":2,"op":0,"d":{"id":"42","embeds":[],"content":"caf\u00e9"}}"#;
        let literal = "{\"t\":\"MESSAGE_UPDATE\",\"s\":3,\"op\":0,\"d\":{\"id\":\"42\",\"content\":\"café\"}}";
        assert_eq!(hash(create), hash(update));
        assert_eq!(hash(create), Some(content_hash(br#""caf\u00e9""#)));
        // Raw bytes: the same text written differently is a different hash (Discord is consistent).
        assert_ne!(hash(create), hash(literal.as_bytes()));
        // No content, content null, no id, no d.
        assert_eq!(hash(br#"{"op":0,"d":{"id":"42","embeds":[]}}"#), None);
        assert_eq!(hash(br#"{"op":0,"d":{"id":"42","content":null}}"#), None);
        assert_eq!(hash(br#"{"op":0,"d":{"content":"x"}}"#), None);
        assert_eq!(hash(br#"{"op":0,"d":null}"#), None);
        assert_eq!(hash(b"not json"), None);
        assert_eq!(
            message_id_and_content_hash(br#"{"d":{"id":42,"content":""}}"#),
            Some((42, content_hash(br#""""#)))
        );
    }

    #[test]
    fn ready_lists_the_sessions_guilds_in_order() {
        let generated = test_support::connection(33, 40, 0);
        let ready = &generated[1].payload;
        assert_eq!(ready_guild_ids(ready), guild_ids(33, 40));
        assert_eq!(
            ready_guild_ids(br#"{"op":0,"d":{"guilds":[]}}"#),
            Vec::<u64>::new()
        );
        assert_eq!(
            ready_guild_ids(
                br#"{"op":0,"d":{"guilds":[{"id":"1"},{"x":2},5,{"id":"x"},{"id":3}]}}"#
            ),
            vec![1, 3]
        );
        assert_eq!(
            ready_guild_ids(br#"{"op":0,"d":{"guilds":{}}}"#),
            Vec::<u64>::new()
        );
        assert_eq!(ready_guild_ids(b"[]"), Vec::<u64>::new());
    }

    #[test]
    fn guild_id_depends_on_the_event() {
        assert_eq!(
            guild_id(br#"{"t":"GUILD_DELETE","s":1,"op":0,"d":{"unavailable":true,"id":"7"}}"#),
            Some(7)
        );
        assert_eq!(
            guild_id(br#"{"t":"GUILD_MEMBER_UPDATE","s":1,"op":0,"d":{"id":"8","guild_id":"9"}}"#),
            Some(9)
        );
        assert_eq!(
            guild_id(br#"{"t":"MESSAGE_CREATE","s":1,"op":0,"d":{"id":"8"}}"#),
            None
        );
        assert_eq!(guild_id(b"{"), None);
    }
}
