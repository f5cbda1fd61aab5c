//! Batch parsing: a forwarded body (a JSON array of envelopes) → the few fields the ledger needs,
//! one [`Entry`] per envelope.
//!
//! Must not: build a DOM of a payload or copy payload bytes. Only `shard_id`, `notice`, and the
//! payload's `t`, `s`, `op` (plus `d.session_id`, see [`Dispatch::session_id`]) are read; the
//! rest of `d` and any extra envelope keys are skipped with `serde::de::IgnoredAny`. Strings
//! borrow from the body unless they contain escapes. No I/O.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

/// Parses one batch body. Fails on the first envelope that breaks the forwarding contract; the
/// error names it by its index in the array.
pub fn parse_batch(body: &[u8]) -> Result<Vec<Entry<'_>>, BatchError> {
    let envelopes: Vec<Envelope<'_>> = serde_json::from_slice(body).map_err(BatchError::Json)?;
    envelopes
        .into_iter()
        .enumerate()
        .map(|(index, envelope)| envelope.into_entry(index))
        .collect()
}

/// What a body carried, for tests that compare it with the mock's world events.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BodyContent {
    /// The content hash of every world event, in order: FNV-1a 64 over `t` (the event name,
    /// unquoted), a newline and the raw bytes of `d`. Left out: notices, and what belongs to one
    /// session rather than to the world (READY, RESUMED, the GUILD_CREATEs of a READY's guilds,
    /// `"guild_create":"backfill"`, and the answers to commands: GUILD_MEMBERS_CHUNK,
    /// RATE_LIMITED, SOUNDBOARD_SOUNDS).
    pub events: Vec<ContentRecord>,
    /// The guild (`d.id`) of every backfill GUILD_CREATE, in order.
    pub backfill_guilds: Vec<u64>,
}

/// The [`BodyContent`] of a body [`parse_batch`] accepted.
pub fn body_content(body: &[u8]) -> Result<BodyContent, serde_json::Error> {
    #[derive(Deserialize)]
    struct ContentEnvelope<'a> {
        #[serde(default)]
        shard_id: u32,
        #[serde(default)]
        notice: Option<IgnoredAny>,
        #[serde(default, borrow)]
        guild_create: Option<Cow<'a, str>>,
        #[serde(borrow)]
        payload: Option<&'a RawValue>,
    }
    let envelopes: Vec<ContentEnvelope<'_>> = serde_json::from_slice(body)?;
    let mut content = BodyContent {
        events: Vec::with_capacity(envelopes.len()),
        backfill_guilds: Vec::new(),
    };
    for envelope in envelopes {
        let Some(payload) = envelope.payload else {
            continue;
        };
        add_content(
            &mut content,
            envelope.shard_id,
            envelope.notice.is_some(),
            envelope.guild_create.as_deref(),
            payload.get(),
        )?;
    }
    Ok(content)
}

/// Adds one record's share of a [`BodyContent`]: nothing for a notice or a session's own event,
/// a backfill GUILD_CREATE's guild, or a world event's content hash. `payload` is the raw JSON
/// of a record its reader (a batch's or a stream entry's) accepted.
pub fn add_content(
    content: &mut BodyContent,
    shard_id: u32,
    notice: bool,
    guild_create: Option<&str>,
    payload: &str,
) -> Result<(), serde_json::Error> {
    #[derive(Deserialize)]
    struct Content<'a> {
        #[serde(borrow)]
        t: Cow<'a, str>,
        #[serde(borrow)]
        d: &'a RawValue,
        #[serde(default)]
        s: u64,
    }
    #[derive(Deserialize)]
    struct Guild<'a> {
        #[serde(borrow)]
        d: GuildData<'a>,
    }
    #[derive(Deserialize)]
    struct GuildData<'a> {
        #[serde(borrow)]
        id: Cow<'a, str>,
    }
    if notice {
        return Ok(());
    }
    if guild_create == Some("backfill") {
        let guild: Guild<'_> = serde_json::from_str(payload)?;
        if let Ok(id) = guild.d.id.parse() {
            content.backfill_guilds.push(id);
        }
        return Ok(());
    }
    let event: Content<'_> = serde_json::from_str(payload)?;
    // A session's own, like the answers to its commands: no other session has them.
    if matches!(
        event.t.as_ref(),
        "READY" | "RESUMED" | "GUILD_MEMBERS_CHUNK" | "RATE_LIMITED" | "SOUNDBOARD_SOUNDS"
    ) {
        return Ok(());
    }
    content.events.push(ContentRecord {
        hash: content_hash(event.t.as_bytes(), event.d.get().as_bytes()),
        shard_id,
        seq: event.s,
    });
    Ok(())
}

/// A world event as a bot received it: its content hash, and the shard and sequence that
/// carried it (which say which session did, for a failure's message).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContentRecord {
    pub hash: u64,
    pub shard_id: u32,
    pub seq: u64,
}

/// FNV-1a 64 of `t`, a newline and `d`.
pub fn content_hash(t: &[u8], d: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    for &byte in t.iter().chain(b"\n").chain(d) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(PRIME);
    }
    hash
}

/// One envelope of a batch, reduced to what the ledger records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry<'a> {
    /// A Discord dispatch forwarded by the engine.
    Dispatch(Dispatch<'a>),
    /// A lifecycle notice produced by the engine itself (the envelope has a string `"notice"`).
    Notice(Notice<'a>),
}

/// A forwarded dispatch: `{"shard_id": N, "payload": {"t": …, "s": …, "op": 0, "d": …}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dispatch<'a> {
    pub shard_id: u32,
    /// The payload's `t`.
    pub event_type: Cow<'a, str>,
    /// The payload's `s`.
    pub seq: u64,
    /// Length of the payload JSON as it appears in the body.
    pub payload_bytes: usize,
    /// `d.session_id` when `d` has one at its top level. It is read so that a READY delivered
    /// twice (an at-least-once retry) is told apart from a READY that starts a new session.
    pub session_id: Option<Cow<'a, str>>,
}

/// An engine lifecycle notice. `shard_id` is absent for notices about the whole process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice<'a> {
    pub shard_id: Option<u32>,
    pub name: Cow<'a, str>,
}

/// Why a batch body breaks the forwarding contract (the bot answers 400 with this text).
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("body is not a JSON array of envelope objects: {0}")]
    Json(#[source] serde_json::Error),
    #[error("envelope {index}: no integer \"shard_id\"")]
    MissingShardId { index: usize },
    #[error("envelope {index}: no \"payload\"")]
    MissingPayload { index: usize },
    #[error("envelope {index}: payload is not a dispatch object: {source}")]
    Payload {
        index: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("envelope {index}: payload has op {op:?}, a forwarded dispatch has op 0")]
    NotDispatch { index: usize, op: Option<u64> },
    #[error("envelope {index}: payload has no integer \"s\"")]
    MissingSeq { index: usize },
    #[error("envelope {index}: payload has no string \"t\"")]
    MissingType { index: usize },
}

/// The envelope as it is on the wire. Unknown keys are allowed (the contract lets the engine add
/// some) and skipped.
#[derive(Deserialize)]
struct Envelope<'a> {
    shard_id: Option<u32>,
    #[serde(borrow)]
    notice: Option<Text<'a>>,
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
}

impl<'a> Envelope<'a> {
    fn into_entry(self, index: usize) -> Result<Entry<'a>, BatchError> {
        if let Some(Text(name)) = self.notice {
            // A notice's payload is the engine's own business: it is not a dispatch and is not
            // sequenced, so it is not parsed.
            return Ok(Entry::Notice(Notice {
                shard_id: self.shard_id,
                name,
            }));
        }
        let shard_id = self.shard_id.ok_or(BatchError::MissingShardId { index })?;
        let payload = self.payload.ok_or(BatchError::MissingPayload { index })?;
        read_dispatch(shard_id, payload.get())
            .map(Entry::Dispatch)
            .map_err(|error| match error {
                PayloadError::Json(source) => BatchError::Payload { index, source },
                PayloadError::NotDispatch { op } => BatchError::NotDispatch { index, op },
                PayloadError::MissingSeq => BatchError::MissingSeq { index },
                PayloadError::MissingType => BatchError::MissingType { index },
            })
    }
}

/// Why a payload is not a forwarded dispatch.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("payload is not a dispatch object: {0}")]
    Json(#[source] serde_json::Error),
    #[error("payload has op {op:?}, a forwarded dispatch has op 0")]
    NotDispatch { op: Option<u64> },
    #[error("payload has no integer \"s\"")]
    MissingSeq,
    #[error("payload has no string \"t\"")]
    MissingType,
}

/// Reads the head of one dispatch payload (raw JSON, as a batch envelope's `payload` or a
/// stream entry's `payload` field carries it) for the ledger. `payload` must already be known to
/// be one JSON value (the batch pass checks it as a `RawValue`): the reader stops once it has
/// `t`, `s` and `op`, so it does not see a broken tail.
pub fn read_dispatch(shard_id: u32, payload: &str) -> Result<Dispatch<'_>, PayloadError> {
    let head = PayloadHead::read(payload).map_err(PayloadError::Json)?;
    if head.op != Some(0) {
        return Err(PayloadError::NotDispatch { op: head.op });
    }
    let seq = head.s.ok_or(PayloadError::MissingSeq)?;
    let Text(event_type) = head.t.ok_or(PayloadError::MissingType)?;
    Ok(Dispatch {
        shard_id,
        event_type,
        seq,
        payload_bytes: payload.len(),
        session_id: head.session_id.map(|Text(id)| id),
    })
}

/// The payload fields the ledger reads; everything else is skipped.
#[derive(Default)]
struct PayloadHead<'a> {
    t: Option<Text<'a>>,
    s: Option<u64>,
    op: Option<u64>,
    /// `d.session_id`; only READY needs it.
    session_id: Option<Text<'a>>,
    d_seen: bool,
}

impl<'a> PayloadHead<'a> {
    /// Reads the head of a payload the envelope pass has already validated as one JSON value.
    ///
    /// Discord writes `t`, `s` and `op` before `d`, and the engine forwards its bytes untouched,
    /// so the reader stops as soon as it has those three (and, for READY, `d`): the rest of the
    /// payload is not scanned a second time. serde_json then reports the unread rest as an
    /// error, which is ignored only when the reader stopped early on purpose. A payload in
    /// another key order is read whole, with the same result.
    fn read(raw: &'a str) -> Result<PayloadHead<'a>, serde_json::Error> {
        let mut head = PayloadHead::default();
        let mut stopped_early = false;
        let mut deserializer = serde_json::Deserializer::from_str(raw);
        let seed = HeadSeed {
            head: &mut head,
            stopped_early: &mut stopped_early,
        };
        match de::DeserializeSeed::deserialize(seed, &mut deserializer) {
            Ok(()) => Ok(head),
            Err(_) if stopped_early => Ok(head),
            Err(error) => Err(error),
        }
    }

    fn complete(&self) -> bool {
        match &self.t {
            Some(Text(t)) => self.s.is_some() && self.op.is_some() && (t != READY || self.d_seen),
            None => false,
        }
    }
}

/// The event type that starts a new Discord session (whose sequence restarts at 1).
pub const READY: &str = "READY";

/// Fills a [`PayloadHead`] and stops once it is complete.
struct HeadSeed<'h, 'a> {
    head: &'h mut PayloadHead<'a>,
    stopped_early: &'h mut bool,
}

impl<'de: 'a, 'a> de::DeserializeSeed<'de> for HeadSeed<'_, 'a> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de: 'a, 'a> Visitor<'de> for HeadSeed<'_, 'a> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a dispatch object")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<(), M::Error> {
        while let Some(key) = map.next_key::<HeadKey>()? {
            match key {
                HeadKey::T => self.head.t = map.next_value()?,
                HeadKey::S => self.head.s = map.next_value()?,
                HeadKey::Op => self.head.op = map.next_value()?,
                HeadKey::D => {
                    let d: Option<DataHead<'a>> = map.next_value()?;
                    self.head.session_id = d.and_then(|d| d.session_id);
                    self.head.d_seen = true;
                }
                HeadKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            if self.head.complete() {
                *self.stopped_early = true;
                return Ok(());
            }
        }
        Ok(())
    }
}

/// A payload key, compared without allocating.
enum HeadKey {
    T,
    S,
    Op,
    D,
    Other,
}

impl<'de> Deserialize<'de> for HeadKey {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = HeadKey;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("an object key")
            }

            fn visit_str<E: de::Error>(self, key: &str) -> Result<HeadKey, E> {
                Ok(match key {
                    "t" => HeadKey::T,
                    "s" => HeadKey::S,
                    "op" => HeadKey::Op,
                    "d" => HeadKey::D,
                    _ => HeadKey::Other,
                })
            }
        }
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

/// `d`, of which only a top-level `session_id` string is kept.
struct DataHead<'a> {
    session_id: Option<Text<'a>>,
}

impl<'de: 'a, 'a> Deserialize<'de> for DataHead<'a> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(DataHeadVisitor(std::marker::PhantomData))
    }
}

struct DataHeadVisitor<'a>(std::marker::PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for DataHeadVisitor<'a> {
    type Value = DataHead<'a>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("an object")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
        let mut session_id = None;
        while let Some(key) = map.next_key::<DataKey>()? {
            match key {
                DataKey::SessionId => session_id = map.next_value::<Option<Text<'a>>>()?,
                DataKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(DataHead { session_id })
    }
}

/// A key of `d`, compared without allocating.
enum DataKey {
    SessionId,
    Other,
}

impl<'de> Deserialize<'de> for DataKey {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = DataKey;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("an object key")
            }

            fn visit_str<E: de::Error>(self, key: &str) -> Result<DataKey, E> {
                Ok(if key == "session_id" {
                    DataKey::SessionId
                } else {
                    DataKey::Other
                })
            }
        }
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

/// A string that borrows from the body when it has no escapes (serde's plain `Cow<str>` always
/// allocates).
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for TextVisitor<'a> {
            type Value = Text<'a>;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a string")
            }

            fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Borrowed(text)))
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(text.to_owned())))
            }

            fn visit_string<E: de::Error>(self, text: String) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(text)))
            }
        }
        deserializer.deserialize_str(TextVisitor(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_content_reads_name_and_raw_data_skips_notices_and_lists_backfill_guilds() {
        // FNV-1a 64 reference values: the empty input, and "a".
        assert_eq!(content_hash(b"", b""), {
            let mut hash = 0xcbf2_9ce4_8422_2325_u64;
            hash ^= u64::from(b'\n');
            hash.wrapping_mul(0x0000_0100_0000_01b3)
        });
        let body = br#"[{"shard_id":0,"notice":"SHARD_READY","payload":{"guilds":1}},
            {"shard_id":0,"payload":{"t":"READY","s":1,"op":0,"d":{"v":10}}},
            {"shard_id":0,"guild_create":"backfill","payload":{"t":"GUILD_CREATE","s":2,"op":0,"d":{"id":"41"}}},
            {"shard_id":1,"payload":{"t":"MESSAGE_CREATE","s":9,"op":0,"d":{"id":"1"}}},
            {"shard_id":3,"shard_count":8,"payload":{"t":"MESSAGE_CREATE","s":2,"op":0,"d":{"id":"1"}}}]"#;
        let content = body_content(body).unwrap();
        assert_eq!(content.backfill_guilds, [41]);
        let records = content.events;
        assert_eq!(records.len(), 2);
        assert_eq!(
            records[0].hash, records[1].hash,
            "the same event from two sessions"
        );
        assert_eq!(
            records[0].hash,
            content_hash(b"MESSAGE_CREATE", br#"{"id":"1"}"#)
        );
        assert_eq!((records[1].shard_id, records[1].seq), (3, 2));
    }

    fn dispatch<'e, 'a>(entry: &'e Entry<'a>) -> &'e Dispatch<'a> {
        match entry {
            Entry::Dispatch(dispatch) => dispatch,
            Entry::Notice(notice) => panic!("expected a dispatch, got {notice:?}"),
        }
    }

    #[test]
    fn reads_only_the_head_of_each_payload() {
        let payload = r#"{"t":"MESSAGE_CREATE","s":42,"op":0,"d":{"content":"hi \"there\"","nested":[1,{"session_id":"inner"}]}}"#;
        let body = format!(r#"[{{"shard_id":3,"payload":{payload},"extra":{{"kind":"join"}}}}]"#);
        let entries = parse_batch(body.as_bytes()).unwrap();
        assert_eq!(entries.len(), 1);
        let entry = dispatch(&entries[0]);
        assert_eq!(entry.shard_id, 3);
        assert_eq!(entry.event_type, "MESSAGE_CREATE");
        assert!(matches!(entry.event_type, Cow::Borrowed(_)));
        assert_eq!(entry.seq, 42);
        assert_eq!(entry.payload_bytes, payload.len());
        assert_eq!(entry.session_id, None, "only a top-level session_id counts");
    }

    #[test]
    fn field_order_does_not_matter_and_ready_session_is_read() {
        let body = br#"[{"payload":{"d":{"v":10,"session_id":"abc"},"op":0,"s":1,"t":"READY"},"shard_id":0}]"#;
        let entries = parse_batch(body).unwrap();
        let entry = dispatch(&entries[0]);
        assert_eq!(entry.event_type, "READY");
        assert_eq!(entry.session_id.as_deref(), Some("abc"));
    }

    #[test]
    fn head_is_read_in_any_key_order_and_nested_keys_do_not_count() {
        let payloads = [
            r#"{"t":"GUILD_CREATE","s":7,"op":0,"d":{"t":"x","s":99,"op":5}}"#,
            r#"{"d":{"t":"x","s":99,"op":5,"session_id":"nested"},"op":0,"s":7,"t":"GUILD_CREATE"}"#,
            r#"{"op":0,"d":null,"s":7,"t":"GUILD_CREATE","extra":[1,2]}"#,
        ];
        for payload in payloads {
            let body = format!(r#"[{{"shard_id":1,"payload":{payload}}}]"#);
            let entries = parse_batch(body.as_bytes()).unwrap();
            let entry = dispatch(&entries[0]);
            assert_eq!(
                (entry.event_type.as_ref(), entry.seq),
                ("GUILD_CREATE", 7),
                "{payload}"
            );
            assert_eq!(entry.payload_bytes, payload.len());
        }
        // READY reads on into `d`, wherever it is.
        for payload in [
            r#"{"t":"READY","s":1,"op":0,"d":{"session_id":"abc"}}"#,
            r#"{"t":"READY","d":{"session_id":"abc"},"s":1,"op":0}"#,
            r#"{"d":{"session_id":"abc"},"t":"READY","s":1,"op":0}"#,
        ] {
            let body = format!(r#"[{{"shard_id":1,"payload":{payload}}}]"#);
            let entries = parse_batch(body.as_bytes()).unwrap();
            assert_eq!(
                dispatch(&entries[0]).session_id.as_deref(),
                Some("abc"),
                "{payload}"
            );
        }
    }

    #[test]
    fn an_error_before_the_head_is_complete_is_reported() {
        let body = br#"[{"shard_id":0,"payload":{"t":"A","s":"one","op":0,"d":{}}}]"#;
        let error = parse_batch(body).unwrap_err();
        assert!(
            matches!(error, BatchError::Payload { index: 0, .. }),
            "{error}"
        );
    }

    #[test]
    fn escaped_strings_are_decoded() {
        let body = br#"[{"shard_id":1,"payload":{"t":"TYPING\u005fSTART","s":1,"op":0,"d":null}}]"#;
        let entries = parse_batch(body).unwrap();
        assert_eq!(dispatch(&entries[0]).event_type, "TYPING_START");
    }

    #[test]
    fn notices_are_not_parsed_as_dispatches() {
        let body = br#"[{"shard_id":2,"notice":"SHARD_READY","payload":{"anything":true}},{"notice":"ALL_SHARDS_READY"}]"#;
        let entries = parse_batch(body).unwrap();
        assert_eq!(
            entries,
            vec![
                Entry::Notice(Notice {
                    shard_id: Some(2),
                    name: Cow::Borrowed("SHARD_READY")
                }),
                Entry::Notice(Notice {
                    shard_id: None,
                    name: Cow::Borrowed("ALL_SHARDS_READY")
                }),
            ]
        );
    }

    #[test]
    fn empty_batch_is_valid() {
        assert_eq!(parse_batch(b"[]").unwrap(), Vec::new());
    }

    #[test]
    fn contract_violations_are_named() {
        type Expected = fn(&BatchError) -> bool;
        let cases: &[(&[u8], Expected)] = &[
            (b"{}", |e| matches!(e, BatchError::Json(_))),
            (b"[1]", |e| matches!(e, BatchError::Json(_))),
            (b"[{\"shard_id\":0}", |e| matches!(e, BatchError::Json(_))),
            (b"[{\"shard_id\":-1,\"payload\":{}}]", |e| {
                matches!(e, BatchError::Json(_))
            }),
            (b"[{\"payload\":{\"t\":\"A\",\"s\":1,\"op\":0}}]", |e| {
                matches!(e, BatchError::MissingShardId { index: 0 })
            }),
            (
                b"[{\"shard_id\":0,\"payload\":{\"t\":\"A\",\"s\":1,\"op\":0}},{\"shard_id\":0}]",
                |e| matches!(e, BatchError::MissingPayload { index: 1 }),
            ),
            (b"[{\"shard_id\":0,\"payload\":[1]}]", |e| {
                matches!(e, BatchError::Payload { index: 0, .. })
            }),
            (
                b"[{\"shard_id\":0,\"payload\":{\"t\":\"A\",\"s\":1,\"op\":11}}]",
                |e| {
                    matches!(
                        e,
                        BatchError::NotDispatch {
                            index: 0,
                            op: Some(11)
                        }
                    )
                },
            ),
            (
                b"[{\"shard_id\":0,\"payload\":{\"t\":\"A\",\"s\":null,\"op\":0}}]",
                |e| matches!(e, BatchError::MissingSeq { index: 0 }),
            ),
            (b"[{\"shard_id\":0,\"payload\":{\"s\":1,\"op\":0}}]", |e| {
                matches!(e, BatchError::MissingType { index: 0 })
            }),
        ];
        for (body, expected) in cases {
            let error = parse_batch(body).expect_err(&String::from_utf8_lossy(body));
            assert!(
                expected(&error),
                "{}: {error}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
