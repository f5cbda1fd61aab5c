//! The JSON the shard machine writes (heartbeat, identify, resume) and the few fields it reads
//! from rare payloads (HELLO, READY, INVALID_SESSION, bot commands).
//!
//! Writers append to a caller-owned buffer and cannot fail. Readers use sonic-rs lazy access:
//! no DOM for the payloads that matter, and every malformed input is `None`, never a panic.

use sonic_rs::{JsonValueTrait, PointerTree};

/// Appends `value` in decimal.
pub(crate) fn write_u64(buf: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        // `value % 10` is below 10, so the cast cannot truncate.
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[start..]);
}

/// Appends `text` as a JSON string literal (quotes, backslashes and control characters escaped).
pub(crate) fn write_str(buf: &mut Vec<u8>, text: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    buf.push(b'"');
    for &byte in text.as_bytes() {
        match byte {
            b'"' => buf.extend_from_slice(b"\\\""),
            b'\\' => buf.extend_from_slice(b"\\\\"),
            b'\n' => buf.extend_from_slice(b"\\n"),
            b'\r' => buf.extend_from_slice(b"\\r"),
            b'\t' => buf.extend_from_slice(b"\\t"),
            0x00..=0x1f => {
                buf.extend_from_slice(b"\\u00");
                buf.push(HEX[usize::from(byte >> 4)]);
                buf.push(HEX[usize::from(byte & 0x0f)]);
            }
            _ => buf.push(byte),
        }
    }
    buf.push(b'"');
}

/// `{"op":1,"d":<seq|null>}`
pub(crate) fn write_heartbeat(buf: &mut Vec<u8>, sequence: Option<u64>) {
    buf.extend_from_slice(b"{\"op\":1,\"d\":");
    match sequence {
        Some(sequence) => write_u64(buf, sequence),
        None => buf.extend_from_slice(b"null"),
    }
    buf.push(b'}');
}

/// `{"op":6,"d":{"token":…,"session_id":…,"seq":…}}`
pub(crate) fn write_resume(buf: &mut Vec<u8>, token: &str, session_id: &str, sequence: u64) {
    buf.extend_from_slice(b"{\"op\":6,\"d\":{\"token\":");
    write_str(buf, token);
    buf.extend_from_slice(b",\"session_id\":");
    write_str(buf, session_id);
    buf.extend_from_slice(b",\"seq\":");
    write_u64(buf, sequence);
    buf.extend_from_slice(b"}}");
}

/// The fields of an identify payload (op 2); borrowed from the shard's config.
pub(crate) struct IdentifyFields<'a> {
    pub(crate) token: &'a str,
    pub(crate) intents: u64,
    pub(crate) shard_id: u32,
    pub(crate) shard_total: u32,
    pub(crate) os: &'a str,
    pub(crate) payload_compression: bool,
    pub(crate) large_threshold: u16,
    /// Already validated to be one JSON object.
    pub(crate) presence_json: Option<&'a str>,
}

/// Writes a complete identify payload.
pub(crate) fn write_identify(buf: &mut Vec<u8>, fields: &IdentifyFields<'_>) {
    buf.extend_from_slice(b"{\"op\":2,\"d\":{\"token\":");
    write_str(buf, fields.token);
    buf.extend_from_slice(b",\"intents\":");
    write_u64(buf, fields.intents);
    buf.extend_from_slice(b",\"properties\":{\"os\":");
    write_str(buf, fields.os);
    buf.extend_from_slice(b",\"browser\":\"shardgate\",\"device\":\"shardgate\"},\"shard\":[");
    write_u64(buf, u64::from(fields.shard_id));
    buf.push(b',');
    write_u64(buf, u64::from(fields.shard_total));
    buf.push(b']');
    if fields.payload_compression {
        buf.extend_from_slice(b",\"compress\":true");
    }
    buf.extend_from_slice(b",\"large_threshold\":");
    write_u64(buf, u64::from(fields.large_threshold));
    if let Some(presence) = fields.presence_json {
        buf.extend_from_slice(b",\"presence\":");
        buf.extend_from_slice(presence.trim().as_bytes());
    }
    buf.extend_from_slice(b"}}");
}

/// `raw`, unless it nests deeper than [`crate::decode::NESTING_MAX`]: sonic-rs recurses once per
/// level while it skips to a field, and the classifier's fast path reads only the head, so a
/// deeply nested HELLO, READY or op 9 would otherwise take the core's stack. Such a payload has
/// no readable fields (a malformed payload: a reconnect).
fn shallow(raw: &[u8]) -> Option<&[u8]> {
    (!crate::decode::too_deep(raw)).then_some(raw)
}

/// HELLO's `d.heartbeat_interval` in milliseconds, if present and a non-negative integer.
pub(crate) fn hello_interval_ms(raw: &[u8]) -> Option<u64> {
    sonic_rs::get_from_slice(shallow(raw)?, &["d", "heartbeat_interval"])
        .ok()?
        .as_u64()
}

/// READY's `d.session_id` (required, non-empty) and `d.resume_gateway_url` (optional).
pub(crate) fn ready_session(raw: &[u8]) -> Option<(String, Option<String>)> {
    let mut tree = PointerTree::new();
    tree.add_path(&["d", "session_id"]);
    tree.add_path(&["d", "resume_gateway_url"]);
    let fields = sonic_rs::get_many(shallow(raw)?, &tree).ok()?;
    let session_id = fields.first()?.as_ref()?.as_str()?;
    if session_id.is_empty() {
        return None;
    }
    let resume_url = fields
        .get(1)
        .and_then(Option::as_ref)
        .and_then(|value| value.as_str())
        .map(str::to_owned);
    Some((session_id.to_owned(), resume_url))
}

/// INVALID_SESSION's `d`: whether the session may be resumed. `None` when `d` is not a bool.
pub(crate) fn invalid_session_resumable(raw: &[u8]) -> Option<bool> {
    sonic_rs::get_from_slice(shallow(raw)?, &["d"])
        .ok()?
        .as_bool()
}

/// Why a bot command's bytes are not a gateway payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CommandShape {
    NotJsonObject,
    MissingOpcode,
    Opcode(u64),
}

/// The `op` of a bot command after validating that the whole payload is one JSON object.
/// Commands are rare (at most ~2 per second per shard), so a DOM here costs nothing that matters.
pub(crate) fn command_opcode(payload: &[u8]) -> CommandShape {
    let Ok(value) = sonic_rs::from_slice::<sonic_rs::Value>(payload) else {
        return CommandShape::NotJsonObject;
    };
    if !value.is_object() {
        return CommandShape::NotJsonObject;
    }
    match value.get("op").and_then(|op| op.as_u64()) {
        Some(op) => CommandShape::Opcode(op),
        None => CommandShape::MissingOpcode,
    }
}

/// Whether `text` is exactly one JSON object (for the configured presence).
pub(crate) fn is_json_object(text: &str) -> bool {
    sonic_rs::from_str::<sonic_rs::Value>(text).is_ok_and(|value| value.is_object())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_numbers_and_escaped_strings() {
        let mut buf = Vec::new();
        for value in [0, 7, 10, 1234567890, u64::MAX] {
            buf.clear();
            write_u64(&mut buf, value);
            assert_eq!(buf, value.to_string().as_bytes());
        }
        buf.clear();
        write_str(&mut buf, "a\"b\\c\n\u{1}é");
        let parsed: String = serde_json::from_slice(&buf).expect("valid JSON string");
        assert_eq!(parsed, "a\"b\\c\n\u{1}é");
    }

    #[test]
    fn reads_rare_payload_fields() {
        assert_eq!(
            hello_interval_ms(br#"{"op":10,"d":{"heartbeat_interval":41250}}"#),
            Some(41250)
        );
        assert_eq!(hello_interval_ms(br#"{"op":10,"d":{}}"#), None);
        assert_eq!(
            hello_interval_ms(br#"{"op":10,"d":{"heartbeat_interval":-1}}"#),
            None
        );
        assert_eq!(hello_interval_ms(b"\xff\x00garbage"), None);
        assert_eq!(
            ready_session(
                br#"{"t":"READY","s":1,"op":0,"d":{"v":10,"session_id":"abc","resume_gateway_url":"wss://r.example","guilds":[]}}"#
            ),
            Some(("abc".to_owned(), Some("wss://r.example".to_owned())))
        );
        assert_eq!(
            ready_session(br#"{"t":"READY","s":1,"op":0,"d":{"session_id":"abc"}}"#),
            Some(("abc".to_owned(), None))
        );
        assert_eq!(
            ready_session(br#"{"t":"READY","s":1,"op":0,"d":{"v":10}}"#),
            None
        );
        assert_eq!(
            ready_session(br#"{"t":"READY","s":1,"op":0,"d":{"session_id":""}}"#),
            None
        );
        assert_eq!(
            ready_session(br#"{"t":"READY","op":0,"d":{"session_id":5}}"#),
            None
        );
        assert_eq!(
            invalid_session_resumable(br#"{"op":9,"d":true}"#),
            Some(true)
        );
        assert_eq!(
            invalid_session_resumable(br#"{"op":9,"d":false}"#),
            Some(false)
        );
        assert_eq!(invalid_session_resumable(br#"{"op":9,"d":null}"#), None);
        assert_eq!(
            command_opcode(br#"{"op":3,"d":{}}"#),
            CommandShape::Opcode(3)
        );
        assert_eq!(command_opcode(br#"{"d":{}}"#), CommandShape::MissingOpcode);
        assert_eq!(command_opcode(br#"[1]"#), CommandShape::NotJsonObject);
        assert_eq!(
            command_opcode(br#"{"op":3,"d":{}"#),
            CommandShape::NotJsonObject
        );
        assert!(is_json_object(r#" {"status":"online"} "#));
        assert!(!is_json_object("[]"));
    }
}
