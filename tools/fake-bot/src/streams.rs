//! The Redis Streams side, without I/O: what a consumer's replies hold ([`parse_read_reply`],
//! [`parse_autoclaim_reply`]), what one entry of the engine's streams must be ([`StreamEntry`],
//! docs/forwarding.md "Redis Streams instead of HTTP"), and the bounded window of ids already
//! recorded ([`IdWindow`]) by which copies are dropped. The consumer thread (`consumer`) owns
//! the connection; the ledger records what this module accepted.
//!
//! Must not: do I/O, read the clock, panic on any reply or entry (they come from outside), or
//! grow without bound (the window forgets its oldest ids).

use std::collections::{HashMap, VecDeque};
use std::fmt;

use redis::Value;
use serde_json::value::RawValue;

use crate::batch::{self, Dispatch, Entry, Notice, PayloadError};

/// A stream entry's id as Redis writes it, `MS-SEQ`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryId {
    pub ms: u64,
    pub seq: u64,
}

impl EntryId {
    /// The id before every entry: `0-0`.
    pub const ZERO: EntryId = EntryId { ms: 0, seq: 0 };

    pub fn parse(text: &[u8]) -> Option<EntryId> {
        let text = std::str::from_utf8(text).ok()?;
        let (ms, seq) = text.split_once('-')?;
        Some(EntryId {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}-{}", self.ms, self.seq)
    }
}

/// One entry of a reply: its id and its field/value pairs, or `None` when Redis no longer has
/// the entry (a pending entry trimmed away by `MAXLEN` before it was read again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEntry {
    pub id: EntryId,
    pub fields: Option<Vec<(Vec<u8>, Vec<u8>)>>,
}

/// The entries a reply holds for one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamBatch {
    pub key: Vec<u8>,
    pub entries: Vec<RawEntry>,
}

/// What an `XAUTOCLAIM` answered (Redis 7): where to go on, what it claimed, and the ids of
/// pending entries that no longer exist (Redis has dropped them from the pending list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoClaim {
    pub cursor: EntryId,
    pub entries: Vec<RawEntry>,
    pub deleted: Vec<EntryId>,
}

/// A reply that is not the shape the command answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unexpected {command} reply: {what}")]
pub struct ReplyError {
    pub command: &'static str,
    pub what: &'static str,
}

/// Reads an `XREADGROUP` (or `XREAD`) reply: nil (nothing within the block time), or per
/// stream its entries, as an array of `[key, entries]` (RESP2) or a map (RESP3).
pub fn parse_read_reply(reply: Value) -> Result<Vec<StreamBatch>, ReplyError> {
    let error = |what| ReplyError {
        command: "XREADGROUP",
        what,
    };
    let pairs: Vec<(Value, Value)> = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Map(pairs) => pairs,
        Value::Array(streams) => streams
            .into_iter()
            .map(|stream| match stream {
                Value::Array(pair) => {
                    let mut pair = pair.into_iter();
                    match (pair.next(), pair.next(), pair.next()) {
                        (Some(key), Some(entries), None) => Ok((key, entries)),
                        _ => Err(error("a stream is not [key, entries]")),
                    }
                }
                _ => Err(error("a stream is not an array")),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(error("neither nil, an array nor a map")),
    };
    pairs
        .into_iter()
        .map(|(key, entries)| {
            Ok(StreamBatch {
                key: bytes(key).ok_or(error("a stream key is not a string"))?,
                entries: parse_entries(entries).map_err(error)?,
            })
        })
        .collect()
}

/// Reads an `XAUTOCLAIM` reply: `[cursor, entries, deleted ids]`.
pub fn parse_autoclaim_reply(reply: Value) -> Result<AutoClaim, ReplyError> {
    let error = |what| ReplyError {
        command: "XAUTOCLAIM",
        what,
    };
    let Value::Array(parts) = reply else {
        return Err(error("not an array"));
    };
    let mut parts = parts.into_iter();
    let cursor = parts
        .next()
        .and_then(bytes)
        .and_then(|cursor| EntryId::parse(&cursor))
        .ok_or(error("no cursor"))?;
    let entries = parse_entries(parts.next().ok_or(error("no entries"))?).map_err(error)?;
    // Redis 6.2 answers two parts; 7.0 adds the deleted ids.
    let deleted = match parts.next() {
        None => Vec::new(),
        Some(Value::Array(ids)) => ids
            .into_iter()
            .map(|id| bytes(id).and_then(|id| EntryId::parse(&id)))
            .collect::<Option<_>>()
            .ok_or(error("a deleted id is not an entry id"))?,
        Some(_) => return Err(error("the deleted ids are not an array")),
    };
    Ok(AutoClaim {
        cursor,
        entries,
        deleted,
    })
}

fn parse_entries(entries: Value) -> Result<Vec<RawEntry>, &'static str> {
    let Value::Array(entries) = entries else {
        return Err("the entries are not an array");
    };
    entries
        .into_iter()
        .map(|entry| {
            let Value::Array(parts) = entry else {
                return Err("an entry is not an array");
            };
            let mut parts = parts.into_iter();
            let id = parts
                .next()
                .and_then(bytes)
                .and_then(|id| EntryId::parse(&id))
                .ok_or("an entry has no id")?;
            let fields = match parts.next() {
                None | Some(Value::Nil) => None,
                Some(Value::Array(flat)) => {
                    if flat.len() % 2 != 0 {
                        return Err("an entry has a field without a value");
                    }
                    let mut flat = flat.into_iter();
                    let mut fields = Vec::with_capacity(flat.len() / 2);
                    while let (Some(name), Some(value)) = (flat.next(), flat.next()) {
                        let (Some(name), Some(value)) = (bytes(name), bytes(value)) else {
                            return Err("a field or value is not a string");
                        };
                        fields.push((name, value));
                    }
                    Some(fields)
                }
                Some(Value::Map(pairs)) => Some(
                    pairs
                        .into_iter()
                        .map(|(name, value)| bytes(name).zip(bytes(value)))
                        .collect::<Option<_>>()
                        .ok_or("a field or value is not a string")?,
                ),
                Some(_) => return Err("an entry's fields are not an array"),
            };
            Ok(RawEntry { id, fields })
        })
        .collect()
}

fn bytes(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(text) => Some(text.into_bytes()),
        Value::Okay => Some(b"OK".to_vec()),
        Value::Int(number) => Some(number.to_string().into_bytes()),
        _ => None,
    }
}

/// The `id` field of an entry, `shard:seq:TAG` (TAG 8 lower-case hex digits: the session's
/// tag, the CRC-32 of its session id, for a dispatch; the CRC-32 of the payload for a notice),
/// as numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdempotencyKey {
    pub shard: u32,
    pub seq: u64,
    pub tag: u32,
}

impl IdempotencyKey {
    pub fn parse(text: &[u8]) -> Option<IdempotencyKey> {
        let text = std::str::from_utf8(text).ok()?;
        let mut parts = text.split(':');
        let (Some(shard), Some(seq), Some(tag), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        if tag.len() != 8 {
            return None;
        }
        Some(IdempotencyKey {
            shard: shard.parse().ok()?,
            seq: seq.parse().ok()?,
            tag: u32::from_str_radix(tag, 16).ok()?,
        })
    }
}

/// A READY's session tag (the CRC-32 of `d.session_id`), or `None` for any other payload.
fn ready_session_tag(payload: &[u8]) -> Option<u32> {
    #[derive(serde::Deserialize)]
    struct Ready<'a> {
        t: Option<&'a str>,
        #[serde(borrow)]
        d: Option<ReadyData<'a>>,
    }
    #[derive(serde::Deserialize)]
    struct ReadyData<'a> {
        session_id: Option<&'a str>,
    }
    let ready: Ready<'_> = serde_json::from_slice(payload).ok()?;
    if ready.t != Some("READY") {
        return None;
    }
    Some(crc32fast::hash(ready.d?.session_id?.as_bytes()))
}

/// What an entry's `kind` field says it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind<'a> {
    Dispatch,
    /// `guild_create:backfill|join|return`.
    GuildCreate(&'a str),
    /// `notice:NAME`.
    Notice(&'a str),
}

/// One entry of the engine's streams, checked against the layout: every field there, numbers
/// that are numbers, the `id` made of this entry's shard, sequence and payload, a dispatch
/// payload whose `t` and `s` are the `type` and `seq` fields, and the shard in its partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry<'a> {
    pub shard: u32,
    pub seq: u64,
    pub kind: EntryKind<'a>,
    pub key: IdempotencyKey,
    /// The record the ledger takes.
    pub entry: Entry<'a>,
    /// The payload, raw JSON.
    pub payload: &'a str,
}

/// How an entry breaks the streams' layout. It is counted, acknowledged and not recorded.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    #[error("no {0:?} field")]
    MissingField(&'static str),
    #[error("the {0:?} field is not a number")]
    NotANumber(&'static str),
    #[error("unknown kind {0:?}")]
    UnknownKind(String),
    #[error("the id is not shard:seq:TAG (8 hex digits)")]
    BadId,
    #[error(
        "the id does not match the entry's shard and seq, or the session (READY) or payload (notice) it names"
    )]
    IdMismatch,
    #[error("shard {shard} is in partition {partition}, not {expected}")]
    WrongPartition {
        shard: u32,
        partition: u32,
        expected: u32,
    },
    #[error("the payload is not UTF-8 JSON: {0}")]
    PayloadJson(String),
    #[error("the payload is not a dispatch: {0}")]
    Payload(#[source] PayloadError),
    #[error("the payload's t or s differs from the type and seq fields")]
    FieldsDisagree,
}

impl<'a> StreamEntry<'a> {
    /// Reads one entry's fields, read from partition `partition` of `partitions`.
    pub fn parse(
        fields: &'a [(Vec<u8>, Vec<u8>)],
        partition: u32,
        partitions: u32,
    ) -> Result<StreamEntry<'a>, EntryError> {
        let field = |name: &'static str| {
            fields
                .iter()
                .find(|(field, _)| field == name.as_bytes())
                .map(|(_, value)| value.as_slice())
                .ok_or(EntryError::MissingField(name))
        };
        let number = |name: &'static str| -> Result<u64, EntryError> {
            std::str::from_utf8(field(name)?)
                .ok()
                .and_then(|text| text.parse().ok())
                .ok_or(EntryError::NotANumber(name))
        };
        let shard = u32::try_from(number("shard")?).map_err(|_| EntryError::NotANumber("shard"))?;
        let seq = number("seq")?;
        let expected = shard % partitions.max(1);
        if expected != partition {
            return Err(EntryError::WrongPartition {
                shard,
                partition,
                expected,
            });
        }
        let kind_text = std::str::from_utf8(field("kind")?)
            .map_err(|_| EntryError::UnknownKind("(not UTF-8)".to_owned()))?;
        let kind = match kind_text.split_once(':') {
            None if kind_text == "dispatch" => EntryKind::Dispatch,
            Some(("guild_create", class @ ("backfill" | "join" | "return"))) => {
                EntryKind::GuildCreate(class)
            }
            Some(("notice", name)) if !name.is_empty() => EntryKind::Notice(name),
            _ => return Err(EntryError::UnknownKind(kind_text.to_owned())),
        };
        let payload_bytes = field("payload")?;
        let key = IdempotencyKey::parse(field("id")?).ok_or(EntryError::BadId)?;
        // The tag: a notice's payload, a READY's session; other dispatches carry their session's
        // tag, which only the READY before them names.
        let tag = match kind {
            EntryKind::Notice(_) => Some(crc32fast::hash(payload_bytes)),
            _ => ready_session_tag(payload_bytes),
        };
        if (key.shard, key.seq) != (shard, seq) || tag.is_some_and(|tag| tag != key.tag) {
            return Err(EntryError::IdMismatch);
        }
        let payload = std::str::from_utf8(payload_bytes)
            .map_err(|error| EntryError::PayloadJson(error.to_string()))?;
        // The whole payload is one JSON value (the head reader alone stops early).
        serde_json::from_str::<&RawValue>(payload)
            .map_err(|error| EntryError::PayloadJson(error.to_string()))?;
        let entry = match kind {
            EntryKind::Notice(name) => Entry::Notice(Notice {
                shard_id: Some(shard),
                name: name.into(),
            }),
            EntryKind::Dispatch | EntryKind::GuildCreate(_) => {
                let dispatch: Dispatch<'a> =
                    batch::read_dispatch(shard, payload).map_err(EntryError::Payload)?;
                if dispatch.seq != seq || dispatch.event_type.as_bytes() != field("type")? {
                    return Err(EntryError::FieldsDisagree);
                }
                Entry::Dispatch(dispatch)
            }
        };
        Ok(StreamEntry {
            shard,
            seq,
            kind,
            key,
            entry,
            payload,
        })
    }

    /// What an entry is deduplicated by: a dispatch by its `id`; a notice (sequence 0, whose
    /// `id` two sessions' identical notices share) only as this very entry read again.
    pub fn dedup_key(&self, partition: u32, entry_id: EntryId) -> DedupKey {
        match self.kind {
            EntryKind::Notice(_) => DedupKey::Entry {
                partition,
                entry_id,
            },
            EntryKind::Dispatch | EntryKind::GuildCreate(_) => DedupKey::Event(self.key),
        }
    }
}

/// What the [`IdWindow`] remembers an entry by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DedupKey {
    Event(IdempotencyKey),
    Entry { partition: u32, entry_id: EntryId },
}

/// Where an entry was read: the partition and the entry's id in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Place {
    pub partition: u32,
    pub entry_id: EntryId,
}

/// What the window says of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Not in the window: record it (it is remembered now).
    New,
    /// Another entry with the same key was recorded: the engine wrote the event twice.
    Copy,
    /// This very entry was recorded already (read again: a lost XACK, or a claim).
    Again,
}

/// The last `capacity` dedup keys recorded, each with the place of the entry that carried it.
/// Bounded: a copy that comes after its first copy has left the window is not dropped here, and
/// the ledger then counts it as a duplicate sequence, so nothing passes silently. A replay
/// reaches back at most the engine's session save interval; the default window (100,000) covers
/// that at tens of thousands of events per second. About 60 bytes per key.
#[derive(Debug)]
pub struct IdWindow {
    capacity: usize,
    places: HashMap<DedupKey, Place>,
    order: VecDeque<DedupKey>,
}

impl IdWindow {
    pub fn new(capacity: usize) -> IdWindow {
        IdWindow {
            capacity: capacity.max(1),
            places: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Raises the capacity to `capacity` if it is lower, keeping what it holds.
    pub fn grow_to(&mut self, capacity: usize) {
        self.capacity = self.capacity.max(capacity);
    }

    /// Looks `key` up and, when new, remembers it (forgetting the oldest beyond capacity).
    pub fn check(&mut self, key: DedupKey, place: Place) -> Seen {
        if let Some(first) = self.places.get(&key) {
            return if *first == place {
                Seen::Again
            } else {
                Seen::Copy
            };
        }
        if self.order.len() >= self.capacity
            && let Some(oldest) = self.order.pop_front()
        {
            self.places.remove(&oldest);
        }
        self.places.insert(key, place);
        self.order.push_back(key);
        Seen::New
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    pub fn clear(&mut self) {
        self.places.clear();
        self.order.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    fn fields(pairs: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
        pairs
            .iter()
            .map(|(name, value)| (name.as_bytes().to_vec(), value.as_bytes().to_vec()))
            .collect()
    }

    fn dispatch_fields(shard: u32, seq: u64, payload: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
        let id = format!("{shard}:{seq}:{:08x}", crc32fast::hash(payload.as_bytes()));
        fields(&[
            ("shard", &shard.to_string()),
            ("seq", &seq.to_string()),
            ("type", "MESSAGE_CREATE"),
            ("kind", "dispatch"),
            ("id", &id),
            ("payload", payload),
        ])
    }

    #[test]
    fn a_ready_names_its_session_in_the_id() {
        let payload = r#"{"t":"READY","s":1,"op":0,"d":{"session_id":"abc","guilds":[]}}"#;
        let tag = crc32fast::hash(b"abc");
        let entry = |id: String| {
            fields(&[
                ("shard", "1"),
                ("seq", "1"),
                ("type", "READY"),
                ("kind", "dispatch"),
                ("id", &id),
                ("payload", payload),
            ])
        };
        let good = entry(format!("1:1:{tag:08x}"));
        assert_eq!(StreamEntry::parse(&good, 1, 2).unwrap().key.tag, tag);
        let other_session = entry(format!("1:1:{:08x}", tag ^ 1));
        assert!(matches!(
            StreamEntry::parse(&other_session, 1, 2),
            Err(EntryError::IdMismatch)
        ));
    }

    #[test]
    fn read_replies_in_resp2_and_resp3_shapes() {
        let entry = |id: &str, flat: &[&str]| {
            Value::Array(vec![
                bulk(id),
                Value::Array(flat.iter().map(|text| bulk(text)).collect()),
            ])
        };
        let resp2 = Value::Array(vec![Value::Array(vec![
            bulk("k:0"),
            Value::Array(vec![
                entry("5-1", &["a", "1"]),
                Value::Array(vec![bulk("6-0"), Value::Nil]),
            ]),
        ])]);
        let batches = parse_read_reply(resp2).unwrap();
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].key, b"k:0");
        assert_eq!(
            batches[0].entries,
            vec![
                RawEntry {
                    id: EntryId { ms: 5, seq: 1 },
                    fields: Some(fields(&[("a", "1")])),
                },
                RawEntry {
                    id: EntryId { ms: 6, seq: 0 },
                    fields: None,
                },
            ]
        );
        let resp3 = Value::Map(vec![(
            bulk("k:1"),
            Value::Array(vec![entry("7-0", &["b", "2"])]),
        )]);
        assert_eq!(parse_read_reply(resp3).unwrap()[0].key, b"k:1");
        assert_eq!(parse_read_reply(Value::Nil).unwrap(), Vec::new());
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        for reply in [
            Value::Int(3),
            Value::Array(vec![Value::Int(1)]),
            Value::Array(vec![Value::Array(vec![bulk("k")])]),
            Value::Array(vec![Value::Array(vec![bulk("k"), Value::Int(1)])]),
            Value::Array(vec![Value::Array(vec![
                bulk("k"),
                Value::Array(vec![Value::Array(vec![bulk("not-an-id")])]),
            ])]),
            Value::Array(vec![Value::Array(vec![
                bulk("k"),
                Value::Array(vec![Value::Array(vec![
                    bulk("1-1"),
                    Value::Array(vec![bulk("odd")]),
                ])]),
            ])]),
        ] {
            assert!(parse_read_reply(reply.clone()).is_err(), "{reply:?}");
        }
        for reply in [
            Value::Nil,
            Value::Array(vec![]),
            Value::Array(vec![bulk("x"), Value::Array(vec![])]),
            Value::Array(vec![bulk("0-0"), Value::Array(vec![]), Value::Int(1)]),
        ] {
            assert!(parse_autoclaim_reply(reply.clone()).is_err(), "{reply:?}");
        }
    }

    #[test]
    fn autoclaim_reply_has_cursor_entries_and_deleted_ids() {
        let reply = Value::Array(vec![
            bulk("9-0"),
            Value::Array(vec![Value::Array(vec![
                bulk("3-0"),
                Value::Array(vec![bulk("f"), bulk("v")]),
            ])]),
            Value::Array(vec![bulk("2-0")]),
        ]);
        let claim = parse_autoclaim_reply(reply).unwrap();
        assert_eq!(claim.cursor, EntryId { ms: 9, seq: 0 });
        assert_eq!(claim.entries.len(), 1);
        assert_eq!(claim.deleted, vec![EntryId { ms: 2, seq: 0 }]);
    }

    #[test]
    fn an_entry_of_the_layout_is_read() {
        let payload = r#"{"t":"MESSAGE_CREATE","s":42,"op":0,"d":{"id":"1"}}"#;
        let dispatch_entry = dispatch_fields(3, 42, payload);
        let entry = StreamEntry::parse(&dispatch_entry, 1, 2).unwrap();
        assert_eq!((entry.shard, entry.seq), (3, 42));
        assert_eq!(entry.kind, EntryKind::Dispatch);
        assert_eq!(entry.payload, payload);
        match &entry.entry {
            Entry::Dispatch(dispatch) => {
                assert_eq!((dispatch.shard_id, dispatch.seq), (3, 42));
                assert_eq!(dispatch.payload_bytes, payload.len());
            }
            other => panic!("{other:?}"),
        }
        let notice_payload = r#"{"guilds":4}"#;
        let notice = fields(&[
            ("shard", "2"),
            ("seq", "0"),
            ("type", ""),
            ("kind", "notice:SHARD_READY"),
            (
                "id",
                &format!("2:0:{:08x}", crc32fast::hash(notice_payload.as_bytes())),
            ),
            ("payload", notice_payload),
        ]);
        let entry = StreamEntry::parse(&notice, 0, 2).unwrap();
        assert_eq!(
            entry.entry,
            Entry::Notice(Notice {
                shard_id: Some(2),
                name: "SHARD_READY".into()
            })
        );
        let place = EntryId { ms: 1, seq: 0 };
        assert_eq!(
            entry.dedup_key(0, place),
            DedupKey::Entry {
                partition: 0,
                entry_id: place
            }
        );
    }

    #[test]
    fn each_break_of_the_layout_is_named() {
        let payload = r#"{"t":"MESSAGE_CREATE","s":42,"op":0,"d":{}}"#;
        let good = dispatch_fields(3, 42, payload);
        let with = |name: &str, value: &str| {
            let mut fields = good.clone();
            for (field, old) in &mut fields {
                if field == name.as_bytes() {
                    *old = value.as_bytes().to_vec();
                }
            }
            fields
        };
        let without = |name: &str| {
            let mut fields = good.clone();
            fields.retain(|(field, _)| field != name.as_bytes());
            fields
        };
        type Expected = fn(&EntryError) -> bool;
        type Fields = Vec<(Vec<u8>, Vec<u8>)>;
        let cases: Vec<(Fields, Expected)> = vec![
            (without("shard"), |e| {
                matches!(e, EntryError::MissingField("shard"))
            }),
            (with("seq", "x"), |e| {
                matches!(e, EntryError::NotANumber("seq"))
            }),
            (with("shard", "99999999999"), |e| {
                matches!(e, EntryError::NotANumber("shard"))
            }),
            (with("kind", "guild_create:other"), |e| {
                matches!(e, EntryError::UnknownKind(_))
            }),
            (with("id", "3:42"), |e| matches!(e, EntryError::BadId)),
            (with("id", "3:42:0000000g"), |e| {
                matches!(e, EntryError::BadId)
            }),
            (with("id", "3:41:00000000"), |e| {
                matches!(e, EntryError::IdMismatch)
            }),
            (with("type", "TYPING_START"), |e| {
                matches!(e, EntryError::FieldsDisagree)
            }),
            (without("payload"), |e| {
                matches!(e, EntryError::MissingField("payload"))
            }),
        ];
        for (fields, expected) in cases {
            let error = StreamEntry::parse(&fields, 1, 2).unwrap_err();
            assert!(expected(&error), "{error}");
        }
        let error = StreamEntry::parse(&good, 0, 2).unwrap_err();
        assert!(
            matches!(
                error,
                EntryError::WrongPartition {
                    shard: 3,
                    partition: 0,
                    expected: 1
                }
            ),
            "{error}"
        );
        // A payload cut short, with an id made for it: the head alone would pass.
        let cut = &payload[..payload.len() - 3];
        let error = StreamEntry::parse(&dispatch_fields(3, 42, cut), 1, 2).unwrap_err();
        assert!(matches!(error, EntryError::PayloadJson(_)), "{error}");
        let not_dispatch = r#"{"t":"X","s":42,"op":11,"d":{}}"#;
        let error = StreamEntry::parse(&dispatch_fields(3, 42, not_dispatch), 1, 2).unwrap_err();
        assert!(matches!(error, EntryError::Payload(_)), "{error}");
    }

    #[test]
    fn the_window_tells_copies_from_entries_read_again_and_forgets_its_oldest() {
        let key = |seq| {
            DedupKey::Event(IdempotencyKey {
                shard: 0,
                seq,
                tag: 7,
            })
        };
        let place = |ms| Place {
            partition: 0,
            entry_id: EntryId { ms, seq: 0 },
        };
        let mut window = IdWindow::new(2);
        assert_eq!(window.check(key(1), place(1)), Seen::New);
        assert_eq!(window.check(key(1), place(1)), Seen::Again);
        assert_eq!(window.check(key(1), place(2)), Seen::Copy);
        assert_eq!(window.check(key(2), place(3)), Seen::New);
        assert_eq!(window.check(key(3), place(4)), Seen::New);
        assert_eq!(window.len(), 2);
        assert_eq!(
            window.check(key(1), place(5)),
            Seen::New,
            "forgotten: the ledger is what catches it now"
        );
        assert_eq!(window.check(key(3), place(6)), Seen::Copy);
    }

    #[test]
    fn ids_parse_only_in_their_shape() {
        assert_eq!(
            IdempotencyKey::parse(b"3:42:0a0b0c0d"),
            Some(IdempotencyKey {
                shard: 3,
                seq: 42,
                tag: 0x0a0b_0c0d
            })
        );
        for bad in [
            &b""[..],
            b"3:42",
            b"3:42:abc",
            b"3:42:0a0b0c0d:1",
            b"x:42:0a0b0c0d",
            b"\xff",
        ] {
            assert_eq!(IdempotencyKey::parse(bad), None);
        }
        assert_eq!(
            EntryId::parse(b"1700000000000-3"),
            Some(EntryId {
                ms: 1_700_000_000_000,
                seq: 3
            })
        );
        assert_eq!(EntryId::parse(b"17"), None);
        assert_eq!(EntryId { ms: 4, seq: 2 }.to_string(), "4-2");
    }
}
