//! The few fields of `d` the filter stage needs, read without a DOM. Each helper answers `None`
//! (or an empty list) for a payload that lacks the field or has it in another shape; none panics.
//! Snowflakes are accepted as JSON strings (Discord's form) or as unsigned integers.
//!
//! The hot ones — [`message_id_and_content_hash`] (every MESSAGE_CREATE/UPDATE when deduplication
//! is on), [`message_id`] (every MESSAGE_DELETE then), [`guild_id`] and [`guild_unavailable`] —
//! walk the payload with the scanner of
//! `scan.rs`: one forward pass up to the field, no allocation, no recursion, nothing it skips
//! validated. On valid JSON they answer exactly what the sonic-rs readers in [`sonic`] answer
//! (the unit tests compare them over every generated payload and hand-written edge cases, and the
//! decode fuzz target over every input that sonic-rs parses). On malformed JSON they answer
//! `None` wherever the walk itself is broken, and may read a field that sonic-rs would refuse
//! where the damage lies only in something skipped; a truncated payload never yields a value the
//! whole payload would not. [`ready_guild_ids`], once per session, reads with sonic-rs.
//!
//! Cost, on a 2-core VM (`fields/*` in the decode bench, CPU time, best of six runs): about
//! 0.4 µs per MESSAGE_CREATE/UPDATE for the id and content hash (the content comes late in `d`,
//! so most of `d` is walked; the hash is some 30 ns of it) and 0.41 µs per event for the guild id
//! (usually `d`'s last member: all of it is walked); sonic-rs, which validates what it skips,
//! took 0.8–1.0 and 0.7–0.9 µs. Call them only for the events that need them.

use std::hash::BuildHasher;
use std::sync::LazyLock;

use super::classify::{classify, parse_unsigned};
use super::scan;

/// The keys of [`content_hash`]: random per process, so that nobody can craft two contents with
/// the same hash to hide an edit behind a redundant-looking update.
static CONTENT_HASH_KEYS: LazyLock<std::hash::RandomState> =
    LazyLock::new(std::hash::RandomState::new);

/// MESSAGE_CREATE / MESSAGE_UPDATE: `d.id` and a 64-bit hash of the raw JSON bytes of
/// `d.content` (the string literal as sent, quotes and escapes included). `None` without a string
/// `content` (an update that does not carry it) or without an id.
///
/// The hash is SipHash-1-3 keyed per process: equal within a process, different across restarts.
/// The caller decides which events to ask about; this reads the fields of any payload.
pub fn message_id_and_content_hash(payload: &[u8]) -> Option<(u64, u64)> {
    let fields = scan::message_id_and_content(payload)?;
    if fields.content.first() != Some(&b'"') {
        return None;
    }
    Some((snowflake(fields.id)?, content_hash(fields.content)))
}

/// MESSAGE_DELETE: `d.id`, read as [`message_id_and_content_hash`] reads it (so that a delete
/// forgets the entry its message made). Discord writes `id` first in `d`: a few bytes are walked.
pub fn message_id(payload: &[u8]) -> Option<u64> {
    snowflake(scan::d_member(payload, b"id")?)
}

/// The guild a dispatch belongs to: `d.id` for GUILD_CREATE, GUILD_UPDATE and GUILD_DELETE (whose
/// `d` is the guild), `d.guild_id` for every other event. `None` for DMs and guild-less events.
pub fn guild_id(payload: &[u8]) -> Option<u64> {
    let name = guild_id_member(payload)?;
    snowflake(scan::d_member(payload, name.as_bytes())?)
}

/// The raw `t` (quotes included) and the guild id in one walk over the payload: exactly
/// `(scan::event_name_and_data(payload).map(|(t, _)| t), guild_id(payload))` on every input
/// (the decode fuzz target checks it), for about the cost of [`guild_id`] alone, where the two
/// cost twice that (`t` is only answered once `d` has been skipped to its end). The Redis Streams
/// sink's `type` and `guild` fields.
pub(crate) fn event_name_and_guild_id(payload: &[u8]) -> (Option<&[u8]>, Option<u64>) {
    let member = guild_id_member(payload);
    let (name, guild) = scan::event_name_and_d_member(payload, member.map(str::as_bytes));
    (name, guild.and_then(snowflake))
}

/// `d.unavailable` (GUILD_CREATE, GUILD_DELETE): `None` when absent or not a boolean.
pub fn guild_unavailable(payload: &[u8]) -> Option<bool> {
    match scan::d_member(payload, b"unavailable")? {
        b"true" => Some(true),
        b"false" => Some(false),
        _ => None,
    }
}

/// READY's `d.guilds[*].id`, in order; entries without a readable id are skipped. Once per
/// session: sonic-rs reads it.
pub fn ready_guild_ids(payload: &[u8]) -> Vec<u64> {
    if super::scan::nests_deeper_than(payload, super::classify::NESTING_MAX) {
        return Vec::new();
    }
    sonic::ready_guild_ids(payload)
}

/// The content hash: keyed SipHash-1-3 over the raw bytes. About 30 ns for a content of some 90
/// bytes, under a tenth of [`message_id_and_content_hash`]. A fast non-cryptographic hash, even a
/// seeded one, does not promise that nobody can find an edit that hashes like the text it
/// replaces, and the filter would drop such an edit as redundant.
pub(crate) fn content_hash(raw: &[u8]) -> u64 {
    CONTENT_HASH_KEYS.hash_one(raw)
}

/// The member of `d` that names the guild, by event name.
fn guild_id_member(payload: &[u8]) -> Option<&'static str> {
    let head = classify(payload).ok()?;
    Some(match head.t {
        Some("GUILD_CREATE" | "GUILD_UPDATE" | "GUILD_DELETE") => "id",
        _ => "guild_id",
    })
}

/// A snowflake given as `"123"` (Discord's form) or `123`, from the value's raw bytes: digits
/// without a leading zero that fit a u64; `None` for anything else. Every id the filter reads
/// goes through it, so that a delete names the entry its create made.
pub(crate) fn snowflake(raw: &[u8]) -> Option<u64> {
    let digits = raw
        .strip_prefix(b"\"")
        .and_then(|raw| raw.strip_suffix(b"\""))
        .unwrap_or(raw);
    parse_unsigned(digits)
}

/// The sonic-rs readers: [`ready_guild_ids`]'s, and those the hot helpers used before the
/// scanner, kept as the reference it is tested and fuzzed against. Each call parses up to the
/// field, validating what it skips (recursively, one stack frame per level of nesting), with a
/// small scratch allocation inside sonic-rs.
pub(crate) mod sonic {
    use std::sync::LazyLock;

    use sonic_rs::{JsonValueTrait, LazyValue, PointerTree};

    use super::{content_hash, guild_id_member, scan};

    /// `d.id` and `d.content`, read in one pass.
    static MESSAGE_FIELDS: LazyLock<PointerTree> = LazyLock::new(|| {
        let mut tree = PointerTree::new();
        tree.add_path(["d", "id"]);
        tree.add_path(["d", "content"]);
        tree
    });

    /// [`super::message_id_and_content_hash`].
    pub(crate) fn message_id_and_content_hash(payload: &[u8]) -> Option<(u64, u64)> {
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

    /// Whether [`message_id_and_content_hash`] can be asked about `payload` in this build: in a
    /// debug build sonic-rs's `get_many` fails an internal assertion when it enters `d` after a
    /// key written with escapes (see `scan::message_id_and_content_traced`). Release builds answer.
    pub(crate) fn can_read_message_fields(payload: &[u8]) -> bool {
        !cfg!(debug_assertions) || !scan::message_id_and_content_traced(payload).1
    }

    /// [`super::message_id`].
    pub(crate) fn message_id(payload: &[u8]) -> Option<u64> {
        snowflake(&sonic_rs::get_from_slice(payload, ["d", "id"]).ok()?)
    }

    /// [`super::guild_id`].
    pub(crate) fn guild_id(payload: &[u8]) -> Option<u64> {
        let name = guild_id_member(payload)?;
        let value = sonic_rs::get_from_slice(payload, ["d", name]).ok()?;
        snowflake(&value)
    }

    /// [`super::guild_unavailable`].
    pub(crate) fn guild_unavailable(payload: &[u8]) -> Option<bool> {
        sonic_rs::get_from_slice(payload, ["d", "unavailable"])
            .ok()?
            .as_bool()
    }

    /// [`super::ready_guild_ids`].
    pub(crate) fn ready_guild_ids(payload: &[u8]) -> Vec<u64> {
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

    fn snowflake(value: &LazyValue<'_>) -> Option<u64> {
        super::snowflake(value.as_raw_str().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use mock_gateway::events::guild_ids;

    use super::*;
    use crate::decode::fuzz::check_fields;
    use crate::decode::test_support::{self, Random};

    fn snowflake_of(value: &serde_json::Value) -> Option<u64> {
        value.as_str()?.parse().ok()
    }

    #[test]
    fn fields_of_every_generated_payload_match_serde_json() {
        let generated = test_support::connection(31, 6, 4000);
        let (mut guild_events, mut unavailable_events, mut deletes) = (0, 0, 0);
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
            if name == Some("MESSAGE_DELETE") {
                assert_eq!(message_id(payload), snowflake_of(&value["d"]["id"]));
                deletes += 1;
            }
            let expected_unavailable = value["d"]["unavailable"].as_bool();
            assert_eq!(guild_unavailable(payload), expected_unavailable, "{name:?}");
            unavailable_events += usize::from(expected_unavailable.is_some());
        }
        assert!(guild_events > 2000, "{guild_events}");
        assert!(deletes > 50, "{deletes}");
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

    /// The three scanned helpers on `payload`, which must be valid JSON, against sonic-rs.
    fn assert_same_as_sonic(payload: &[u8]) {
        let text = String::from_utf8_lossy(payload);
        assert!(
            sonic_rs::from_slice::<sonic_rs::Value>(payload).is_ok(),
            "not valid JSON: {text}"
        );
        if sonic::can_read_message_fields(payload) {
            assert_eq!(
                message_id_and_content_hash(payload),
                sonic::message_id_and_content_hash(payload),
                "{text}"
            );
        }
        assert_eq!(guild_id(payload), sonic::guild_id(payload), "{text}");
        assert_eq!(
            guild_unavailable(payload),
            sonic::guild_unavailable(payload),
            "{text}"
        );
    }

    #[test]
    fn the_scanner_matches_sonic_on_every_generated_payload() {
        let (mut messages, mut guilds, mut unavailable) = (0, 0, 0);
        for seed in [31, 34] {
            for item in &test_support::connection(seed, 6, 4000) {
                let payload = &item.payload[..];
                assert_same_as_sonic(payload);
                messages += usize::from(message_id_and_content_hash(payload).is_some());
                guilds += usize::from(guild_id(payload).is_some());
                unavailable += usize::from(guild_unavailable(payload).is_some());
                // The same JSON with whitespace everywhere, keys sorted (`d` first, `content`
                // before `id`) and strings re-escaped: the same ids, and still sonic-rs's answers.
                let value: serde_json::Value = serde_json::from_slice(payload).unwrap();
                let pretty = serde_json::to_vec_pretty(&value).unwrap();
                assert_same_as_sonic(&pretty);
                assert_eq!(
                    message_id_and_content_hash(&pretty).map(|(id, _)| id),
                    message_id_and_content_hash(payload).map(|(id, _)| id)
                );
                assert_eq!(guild_id(&pretty), guild_id(payload));
                assert_eq!(guild_unavailable(&pretty), guild_unavailable(payload));
            }
        }
        assert!(messages > 2000 && guilds > 4000, "{messages} {guilds}");
        assert_eq!(unavailable, 2 * (6 + 1));
    }

    #[test]
    fn message_edge_cases() {
        let hash = |raw: &[u8]| content_hash(raw);
        /// A payload and its message id and content hash.
        type Case = (&'static [u8], Option<(u64, u64)>);
        let cases: &[Case] = &[
            // Escaped quotes and backslashes in the content, before the id.
            (
                br#"{"t":"MESSAGE_CREATE","s":1,"op":0,"d":{"content":"say \"hi\" \\","id":"42"}}"#,
                Some((42, hash(br#""say \"hi\" \\""#))),
            ),
            // `id` and `content` inside nested values come first; only d's own count.
            (
                br#"{"t":"MESSAGE_UPDATE","s":1,"op":0,"d":{"author":{"id":"9","content":"no"},"referenced_message":{"id":"8","content":"old","d":{"id":"7"}},"embeds":[{"id":"6"},["content"]],"id":"1","content":"yes"}}"#,
                Some((1, hash(br#""yes""#))),
            ),
            // ... or inside strings, brackets included.
            (
                br#"{"d":{"x":"\"id\":\"5\",\"content\":\"z\"}]","id":"2","content":"w"}}"#,
                Some((2, hash(br#""w""#))),
            ),
            (
                br#"{"t":"X","s":1,"op":0,"x":{"d":{"id":"3","content":"c"}},"d":{"id":"4","content":"e"}}"#,
                Some((4, hash(br#""e""#))),
            ),
            // Whitespace wherever JSON allows it.
            (
                b" \n{ \"t\" : \"MESSAGE_CREATE\" ,\t\"s\" : 1 , \"op\" : 0 , \"d\" :\r\n{ \"id\" : \"5\" , \"content\" : \"x y\" } } ",
                Some((5, hash(br#""x y""#))),
            ),
            // Unicode, raw and escaped.
            (
                "{\"d\":{\"content\":\"caf\u{e9} \u{2713} \u{1F600} \\ud83d\\ude00\",\"id\":\"6\"}}"
                    .as_bytes(),
                Some((
                    6,
                    hash("\"caf\u{e9} \u{2713} \u{1F600} \\ud83d\\ude00\"".as_bytes()),
                )),
            ),
            // Escaped keys are the keys they spell.
            (
                br#"{"\u0064":{"\u0069d":"7","con\u0074ent":"k"}}"#,
                Some((7, hash(br#""k""#))),
            ),
            (br#"{"d":{"id":"1","content":""}}"#, Some((1, hash(br#""""#)))),
            // Content that is not a string, ids that are not snowflakes.
            (br#"{"d":{"id":"1","content":null}}"#, None),
            (br#"{"d":{"id":"1","content":5}}"#, None),
            (br#"{"d":{"id":"1","content":{"a":"b"}}}"#, None),
            (br#"{"d":{"id":null,"content":"x"}}"#, None),
            (br#"{"d":{"id":42,"content":"x"}}"#, Some((42, hash(br#""x""#)))),
            (br#"{"d":{"id":"042","content":"x"}}"#, None),
            (br#"{"d":{"id":"-1","content":"x"}}"#, None),
            (br#"{"d":{"id":1.5,"content":"x"}}"#, None),
            (br#"{"d":{"id":1e3,"content":"x"}}"#, None),
            (br#"{"d":{"id":"18446744073709551616","content":"x"}}"#, None),
            (
                br#"{"d":{"id":"18446744073709551615","content":"x"}}"#,
                Some((u64::MAX, hash(br#""x""#))),
            ),
            // Repeated keys, as sonic-rs's get_many reads them: the walk stops at the second
            // value found, and a second `d` is walked when the first lacked one.
            (br#"{"d":{"id":"1","id":"2","content":"x"}}"#, None),
            (
                br#"{"d":{"id":"1","content":"x","id":"2"}}"#,
                Some((1, hash(br#""x""#))),
            ),
            (
                br#"{"d":{"id":"1"},"d":{"content":"x"}}"#,
                Some((1, hash(br#""x""#))),
            ),
            (br#"{"d":{"content":"a"},"d":{"content":"b","id":"3"}}"#, None),
            (br#"{"d":{},"d":{"id":"1","content":"x"}}"#, None),
            // `d` that is not an object.
            (br#"{"d":[{"id":"1","content":"x"}]}"#, None),
            (br#"{"d":"{\"id\":\"1\",\"content\":\"x\"}"}"#, None),
            (br#"[{"d":{"id":"1","content":"x"}}]"#, None),
        ];
        for (payload, expected) in cases {
            assert_eq!(
                message_id_and_content_hash(payload),
                *expected,
                "{}",
                String::from_utf8_lossy(payload)
            );
            assert_same_as_sonic(payload);
        }
    }

    #[test]
    fn guild_edge_cases() {
        let cases: &[(&[u8], Option<u64>, Option<bool>)] = &[
            (
                br#"{"t":"GUILD_CREATE","s":1,"op":0,"d":{"channels":[{"id":"1","guild_id":"2"}],"unavailable":false,"id":"3"}}"#,
                Some(3),
                Some(false),
            ),
            (
                br#"{"t":"TYPING_START","s":1,"op":0,"d":{"member":{"guild_id":"1"},"guild_id":"2"}}"#,
                Some(2),
                None,
            ),
            // The first of a repeated key, the first `d`.
            (
                br#"{"t":"MESSAGE_CREATE","s":1,"op":0,"d":{"guild_id":"5","guild_id":"6"}}"#,
                Some(5),
                None,
            ),
            (
                br#"{"t":"X","s":1,"op":0,"d":{"a":1},"d":{"guild_id":"2"}}"#,
                None,
                None,
            ),
            (
                br#"{"t":"X","s":1,"op":0,"x":{"d":{"guild_id":"1"}},"d":{"guild_id":"2"}}"#,
                Some(2),
                None,
            ),
            (br#"{"t":"X","s":1,"op":0,"d":{"guild_id":5}}"#, Some(5), None),
            (br#"{"t":"X","s":1,"op":0,"d":{"guild_id":null}}"#, None, None),
            (br#"{"t":"X","s":1,"op":0,"d":{}}"#, None, None),
            (br#"{"t":"X","s":1,"op":0,"d":null}"#, None, None),
            // Another key order (classify's fallback) and escaped keys.
            (
                br#"{"op":0,"t":"GUILD_DELETE","d":{"unavailable":true,"id":"7"},"s":1}"#,
                Some(7),
                Some(true),
            ),
            (
                br#"{"t":"GUILD_UPDATE","s":1,"op":0,"d":{"\u0069\u0064":"8","unavail\u0061ble":true}}"#,
                Some(8),
                Some(true),
            ),
            (
                b"{ \"t\" : \"GUILD_DELETE\" , \"s\" : 1 , \"op\" : 0 , \"d\" : { \"unavailable\" : false , \"id\" : \"9\" } }",
                Some(9),
                Some(false),
            ),
            (
                br#"{"t":"GUILD_DELETE","s":1,"op":0,"d":{"unavailable":"true","id":"9"}}"#,
                Some(9),
                None,
            ),
            (
                br#"{"t":"GUILD_DELETE","s":1,"op":0,"d":{"unavailable":1,"id":"9"}}"#,
                Some(9),
                None,
            ),
        ];
        for (payload, expected_guild, expected_unavailable) in cases {
            let text = String::from_utf8_lossy(payload);
            assert_eq!(guild_id(payload), *expected_guild, "{text}");
            assert_eq!(guild_unavailable(payload), *expected_unavailable, "{text}");
            assert_same_as_sonic(payload);
        }
    }

    #[test]
    fn truncated_payloads_never_read_a_wrong_value() {
        let generated = test_support::connection(35, 3, 300);
        let first = |name: &str| {
            generated
                .iter()
                .find(|item| item.info.is_some_and(|info| info.name == name))
                .map(|item| item.payload.clone())
                .unwrap()
        };
        let mut payloads = vec![
            first("MESSAGE_CREATE"),
            first("MESSAGE_UPDATE"),
            first("TYPING_START"),
            // The two GUILD_DELETEs near the end.
            generated[generated.len() - 5].payload.clone(),
            generated[generated.len() - 4].payload.clone(),
            test_support::HELLO.to_vec(),
        ];
        let mut events = mock_gateway::events::SessionEvents::new(
            35,
            0,
            guild_ids(35, 1),
            mock_gateway::events::EventMix::default(),
        );
        let mut guild_create = Vec::new();
        events.guild_create(guild_ids(35, 1)[0], 2, 0, &mut guild_create);
        payloads.push(guild_create);
        // Numbers last, where a cut loses digits: sonic-rs reads what is left, the scanner does
        // not.
        let numbers: [&[u8]; 3] = [
            br#"{"t":"X","s":1,"op":0,"d":{"guild_id":123456}}"#,
            br#"{"t":"GUILD_DELETE","s":1,"op":0,"d":{"id":"1","unavailable":false}}"#,
            br#"{"d":{"content":"x","id":123456}}"#,
        ];
        payloads.extend(numbers.iter().map(|payload| payload.to_vec()));
        assert_eq!(
            sonic::guild_id(&numbers[0][..numbers[0].len() - 5]),
            Some(123)
        );
        assert_eq!(guild_id(&numbers[0][..numbers[0].len() - 5]), None);

        for payload in &payloads {
            let whole = (
                message_id_and_content_hash(payload),
                guild_id(payload),
                guild_unavailable(payload),
            );
            assert!(
                whole.0.is_some()
                    || whole.1.is_some()
                    || whole.2.is_some()
                    || payload[..] == *test_support::HELLO,
                "{}",
                String::from_utf8_lossy(payload)
            );
            for cut in 0..payload.len() {
                let part = &payload[..cut];
                let read = (
                    message_id_and_content_hash(part),
                    guild_id(part),
                    guild_unavailable(part),
                );
                assert!(
                    (read.0.is_none() || read.0 == whole.0)
                        && (read.1.is_none() || read.1 == whole.1)
                        && (read.2.is_none() || read.2 == whole.2),
                    "{read:?} from {}",
                    String::from_utf8_lossy(part)
                );
                check_fields(part);
            }
        }
    }

    #[test]
    fn mutated_payloads_agree_with_sonic() {
        const INSERTED: &[u8] = b"\"\\{}[],: \n0tx\xff";
        let generated = test_support::connection(36, 3, 400);
        let payloads: Vec<&[u8]> = generated
            .iter()
            .map(|item| &item.payload[..])
            .filter(|payload| payload.len() < 8 * 1024)
            .collect();
        let mut random = Random(0x5CA7_F1E1D5);
        let mut still_valid = 0;
        for round in 0..20_000 {
            let mut payload = payloads[round % payloads.len()].to_vec();
            for _ in 0..1 + random.below(3) {
                let at = random.below(payload.len());
                match random.below(3) {
                    0 => payload[at] ^= 1 << random.below(8),
                    1 => {
                        payload.remove(at);
                    }
                    _ => payload.insert(at, INSERTED[random.below(INSERTED.len())]),
                }
            }
            check_fields(&payload);
            still_valid += usize::from(sonic_rs::from_slice::<sonic_rs::Value>(&payload).is_ok());
        }
        // Enough of them still parse for the strict comparison to have run often.
        assert!(still_valid > 2000, "{still_valid}");
    }

    #[test]
    fn deep_nesting_costs_no_stack() {
        const DEPTH: usize = 1_000_000;
        let nested = |tail: &[u8]| {
            let mut payload = br#"{"t":"X","s":1,"op":0,"d":{"a":"#.to_vec();
            payload.extend(std::iter::repeat_n(b'[', DEPTH));
            payload.extend(std::iter::repeat_n(b']', DEPTH));
            payload.extend_from_slice(tail);
            payload
        };
        let balanced = nested(br#","guild_id":"5","id":"1","content":"x"}}"#);
        let mut unbalanced = balanced.clone();
        unbalanced.remove(40);
        // A small stack: the scanner does not recurse (sonic-rs would overflow it).
        std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || {
                assert_eq!(guild_id(&balanced), Some(5));
                assert_eq!(
                    message_id_and_content_hash(&balanced),
                    Some((1, content_hash(br#""x""#)))
                );
                assert_eq!(guild_id(&unbalanced), None);
                assert_eq!(message_id_and_content_hash(&unbalanced), None);
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
