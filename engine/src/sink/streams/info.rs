//! What the streams target learns from `XINFO STREAM` and `XINFO GROUPS`: how many entries of a
//! stream were trimmed before a consumer group read them. Parsing (bounded, on hostile input)
//! and arithmetic; no I/O of its own, no clock.
//!
//! # What Redis's counters tell (Redis 7.0 and later; earlier ones have no counters: unknown)
//!
//! A stream counts every entry ever added (`entries-added`); a group counts the entries it was
//! delivered (`entries-read`, nil where Redis lost track: a group created at an arbitrary id,
//! or at `$`/`0` and never read since, in 7.0) and remembers the last id it was delivered
//! (`last-delivered-id`). Entries are never delivered twice to a group and trimming only
//! removes a stream's oldest entries, so
//!
//! `removed unread = entries-added − entries-read − (entries still in the stream after last-delivered-id)`
//!
//! counts the entries that went before the group read them (trimmed, or XDELed by someone).
//! The last term is known without reading entries in three cases: the group is behind the
//! stream's first entry (all `length` entries are after it), at or past its last id (none), or
//! the stream is empty (none). A group that was never delivered anything (`0-0`) has read 0
//! even where Redis says nil. Elsewhere — a group reading inside the stream, or a nil
//! `entries-read` — [`removed_unread`] answers `None`; nothing unread can be trimmed while a
//! group is inside the stream (trimming starts at the oldest entry), so the last count still
//! holds there.
//!
//! [`GroupCounter`] turns these readings into a counter: it adds each rise, and takes a fall as
//! Redis having counted anew (Redis 8 recounts a group's `entries-read` from the stream's start
//! when it reads past a trimmed gap, redis/redis#13958, forgetting the gap; 7.0 keeps it), so
//! only what comes after the fall is added. A gap a group falls into and leaves between two
//! polls is seen on 7.0 at the next count, and not at all where Redis recounts.

use std::io::Read;

use super::resp::{Budget, Header, ReplyReader, RespError, parse_u64};

/// A stream entry id, `ms-seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct EntryId {
    pub(crate) ms: u64,
    pub(crate) seq: u64,
}

impl EntryId {
    pub(crate) const ZERO: EntryId = EntryId { ms: 0, seq: 0 };

    /// `ms-seq`, both decimal (what Redis answers; `None` for anything else).
    pub(crate) fn parse(raw: &[u8]) -> Option<EntryId> {
        let dash = raw.iter().position(|&byte| byte == b'-')?;
        Some(EntryId {
            ms: parse_u64(&raw[..dash])?,
            seq: parse_u64(&raw[dash + 1..])?,
        })
    }
}

/// The figures of `XINFO STREAM` the count needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StreamInfo {
    pub(crate) length: u64,
    /// `None` before Redis 7.0.
    pub(crate) entries_added: Option<u64>,
    pub(crate) last_generated: EntryId,
    /// The first entry's id; `None` when the stream is empty.
    pub(crate) first_entry: Option<EntryId>,
}

/// One group of `XINFO GROUPS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupInfo {
    pub(crate) name: Vec<u8>,
    pub(crate) last_delivered: EntryId,
    /// `None`: nil, or a Redis before 7.0.
    pub(crate) entries_read: Option<u64>,
    /// Redis's own lag; `None`: nil (Redis cannot tell), or a Redis before 7.0.
    pub(crate) lag: Option<u64>,
}

/// The longest group name kept (a longer one is cut, for the metric's label).
pub(crate) const GROUP_NAME_BYTES_MAX: u64 = 256;

/// Entries removed from the stream before the group read them, as Redis's counters show now;
/// `None` where they do not tell (see the module docs).
pub(crate) fn removed_unread(stream: &StreamInfo, group: &GroupInfo) -> Option<u64> {
    let entries_added = stream.entries_added?;
    let read = match group.entries_read {
        Some(read) => read,
        None if group.last_delivered == EntryId::ZERO => 0,
        None => return None,
    };
    let after = match stream.first_entry {
        None => 0,
        Some(first) if group.last_delivered < first => stream.length,
        Some(_) if group.last_delivered >= stream.last_generated => 0,
        Some(_) => return None,
    };
    Some(entries_added.saturating_sub(read).saturating_sub(after))
}

/// A group's entries trimmed unread, as a counter over successive readings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct GroupCounter {
    /// The last reading of [`removed_unread`].
    last: Option<u64>,
    /// What the counter says; `None` until a first reading.
    pub(crate) total: Option<u64>,
}

impl GroupCounter {
    /// Takes one reading (`None`: Redis's counters did not tell this time).
    pub(crate) fn observe(&mut self, reading: Option<u64>) {
        let Some(reading) = reading else {
            return;
        };
        let added = match self.last {
            Some(last) if reading >= last => reading - last,
            // The first reading, or Redis counted anew: all of it is news.
            _ => reading,
        };
        self.total = Some(self.total.unwrap_or(0).saturating_add(added));
        self.last = Some(reading);
    }
}

/// Reads an `XINFO STREAM` reply (RESP2: a flat array of names and values). An error reply
/// (no such key) is [`RespError::Refused`], after which the connection is still in step.
pub(crate) fn read_stream<R: Read>(
    reader: &mut ReplyReader,
    io: &mut R,
    budget: &mut Budget,
) -> Result<StreamInfo, RespError> {
    let pairs = map_header(reader, io, "XINFO STREAM")?;
    let (mut length, mut entries_added, mut last_generated, mut first_entry) =
        (None, None, None, None);
    for _ in 0..pairs {
        let mut name = [0u8; 32];
        let name = field_name(reader, io, budget, &mut name)?;
        match name {
            b"length" => length = Some(unsigned(reader, io, "length")?),
            b"entries-added" => entries_added = Some(unsigned(reader, io, "entries-added")?),
            b"last-generated-id" => last_generated = Some(entry_id(reader, io)?),
            b"first-entry" => first_entry = Some(first_entry_id(reader, io, budget)?),
            _ => reader.skip_value(io, budget)?,
        }
    }
    Ok(StreamInfo {
        length: length.ok_or(RespError::Malformed("XINFO STREAM without length"))?,
        entries_added,
        last_generated: last_generated.ok_or(RespError::Malformed(
            "XINFO STREAM without last-generated-id",
        ))?,
        first_entry: first_entry.ok_or(RespError::Malformed("XINFO STREAM without first-entry"))?,
    })
}

/// Reads an `XINFO GROUPS` reply (an array of flat name/value arrays), keeping at most `keep`
/// groups (the others are read and forgotten).
pub(crate) fn read_groups<R: Read>(
    reader: &mut ReplyReader,
    io: &mut R,
    budget: &mut Budget,
    keep: usize,
) -> Result<Vec<GroupInfo>, RespError> {
    let count = match reader.header(io)? {
        Header::Array(Some(count)) => count,
        Header::Error(text) => return Err(RespError::Refused(super::resp::error_text(text))),
        other => {
            return Err(RespError::Unexpected {
                command: "XINFO GROUPS",
                got: other.kind(),
            });
        }
    };
    let mut groups = Vec::new();
    for index in 0..count {
        if index >= keep as u64 {
            reader.skip_value(io, budget)?;
            continue;
        }
        let pairs = map_header(reader, io, "XINFO GROUPS")?;
        let (mut name, mut last_delivered, mut entries_read, mut lag) = (None, None, None, None);
        for _ in 0..pairs {
            let mut field = [0u8; 32];
            match field_name(reader, io, budget, &mut field)? {
                b"name" => name = Some(group_name(reader, io, budget)?),
                b"last-delivered-id" => last_delivered = Some(entry_id(reader, io)?),
                b"entries-read" => entries_read = nullable_unsigned(reader, io, "entries-read")?,
                b"lag" => lag = nullable_unsigned(reader, io, "lag")?,
                _ => reader.skip_value(io, budget)?,
            }
        }
        groups.push(GroupInfo {
            name: name.ok_or(RespError::Malformed("a group without a name"))?,
            last_delivered: last_delivered
                .ok_or(RespError::Malformed("a group without last-delivered-id"))?,
            entries_read,
            lag,
        });
    }
    Ok(groups)
}

/// A flat name/value array's header: the number of pairs.
fn map_header<R: Read>(
    reader: &mut ReplyReader,
    io: &mut R,
    command: &'static str,
) -> Result<u64, RespError> {
    match reader.header(io)? {
        Header::Array(Some(len)) if len % 2 == 0 => Ok(len / 2),
        Header::Array(Some(_)) => Err(RespError::Malformed("an odd name/value array")),
        Header::Error(text) => Err(RespError::Refused(super::resp::error_text(text))),
        other => Err(RespError::Unexpected {
            command,
            got: other.kind(),
        }),
    }
}

/// A field name (a bulk string); a name longer than `out` cannot be one this module reads,
/// and comes back empty after being skipped.
fn field_name<'a, R: Read>(
    reader: &mut ReplyReader,
    io: &mut R,
    budget: &mut Budget,
    out: &'a mut [u8; 32],
) -> Result<&'a [u8], RespError> {
    match reader.header(io)? {
        Header::Bulk(Some(len)) if len <= out.len() as u64 => {
            let name = reader.bulk(io, len)?;
            let name_len = name.len();
            out[..name_len].copy_from_slice(name);
            Ok(&out[..name_len])
        }
        Header::Bulk(Some(len)) => {
            reader.skip_bulk(io, len, budget)?;
            Ok(&out[..0])
        }
        // RESP2 field names are bulk strings; a simple string is accepted too.
        Header::Simple(name) if name.len() <= out.len() => {
            out[..name.len()].copy_from_slice(name);
            Ok(&out[..name.len()])
        }
        _ => Err(RespError::Malformed("a field name that is not a string")),
    }
}

fn unsigned<R: Read>(
    reader: &mut ReplyReader,
    io: &mut R,
    what: &'static str,
) -> Result<u64, RespError> {
    nullable_unsigned(reader, io, what)?.ok_or(RespError::Malformed(what))
}

/// A non-negative integer, or nil (`$-1` or `*-1`).
fn nullable_unsigned<R: Read>(
    reader: &mut ReplyReader,
    io: &mut R,
    what: &'static str,
) -> Result<Option<u64>, RespError> {
    match reader.header(io)? {
        Header::Integer(value) => u64::try_from(value)
            .map(Some)
            .map_err(|_| RespError::Malformed(what)),
        Header::Bulk(None) | Header::Array(None) => Ok(None),
        _ => Err(RespError::Malformed(what)),
    }
}

/// An entry id as a bulk string.
fn entry_id<R: Read>(reader: &mut ReplyReader, io: &mut R) -> Result<EntryId, RespError> {
    match reader.header(io)? {
        // The longest id: two 20-digit numbers and a dash.
        Header::Bulk(Some(len)) if len <= 41 => {
            EntryId::parse(reader.bulk(io, len)?).ok_or(RespError::Malformed("an entry id"))
        }
        _ => Err(RespError::Malformed("an entry id")),
    }
}

/// `first-entry`: nil (an empty stream) or `[id, [field, value, …]]`; the fields are skipped.
fn first_entry_id<R: Read>(
    reader: &mut ReplyReader,
    io: &mut R,
    budget: &mut Budget,
) -> Result<Option<EntryId>, RespError> {
    match reader.header(io)? {
        Header::Array(None) | Header::Bulk(None) => Ok(None),
        Header::Array(Some(2)) => {
            let id = entry_id(reader, io)?;
            reader.skip_value(io, budget)?;
            Ok(Some(id))
        }
        _ => Err(RespError::Malformed("first-entry")),
    }
}

/// A group's name, cut at [`GROUP_NAME_BYTES_MAX`].
fn group_name<R: Read>(
    reader: &mut ReplyReader,
    io: &mut R,
    budget: &mut Budget,
) -> Result<Vec<u8>, RespError> {
    match reader.header(io)? {
        Header::Bulk(Some(len)) if len <= GROUP_NAME_BYTES_MAX => {
            Ok(reader.bulk(io, len)?.to_vec())
        }
        Header::Bulk(Some(len)) => {
            // Keep the head: read it, then skip the rest.
            let head = reader.bulk_prefix(io, GROUP_NAME_BYTES_MAX)?.to_vec();
            reader.skip_bulk(io, len - GROUP_NAME_BYTES_MAX, budget)?;
            Ok(head)
        }
        _ => Err(RespError::Malformed("a group name")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ms: u64, seq: u64) -> EntryId {
        EntryId { ms, seq }
    }

    fn stream(length: u64, added: u64, first: Option<EntryId>, last: EntryId) -> StreamInfo {
        StreamInfo {
            length,
            entries_added: Some(added),
            last_generated: last,
            first_entry: first,
        }
    }

    fn group(last_delivered: EntryId, entries_read: Option<u64>) -> GroupInfo {
        GroupInfo {
            name: b"g".to_vec(),
            last_delivered,
            entries_read,
            lag: None,
        }
    }

    #[test]
    fn entry_ids_parse_and_order() {
        assert_eq!(
            EntryId::parse(b"1700000000000-12"),
            Some(id(1_700_000_000_000, 12))
        );
        assert_eq!(EntryId::parse(b"0-0"), Some(EntryId::ZERO));
        for bad in [
            &b""[..],
            b"12",
            b"-1",
            b"1-",
            b"1-2-3",
            b"a-1",
            b"1--1",
            b"99999999999999999999999-1",
        ] {
            assert_eq!(
                EntryId::parse(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(id(1, 9) < id(2, 0) && id(2, 0) < id(2, 1));
    }

    #[test]
    fn removed_unread_where_redis_counters_tell() {
        let (first, last) = (id(10, 0), id(20, 0));
        // 300 added, 100 left from entry 10-0 on.
        let s = stream(100, 300, Some(first), last);
        // Read nothing (0-0): everything that went was unread, whether entries-read is nil
        // (7.0, a group created at 0 or $ on an empty stream) or 0.
        assert_eq!(removed_unread(&s, &group(EntryId::ZERO, None)), Some(200));
        assert_eq!(
            removed_unread(&s, &group(EntryId::ZERO, Some(0))),
            Some(200)
        );
        // Read 50, then fell behind the first entry: 300 - 50 - 100.
        assert_eq!(removed_unread(&s, &group(id(5, 0), Some(50))), Some(150));
        // At the end of the stream: whatever was added and not read went unread.
        assert_eq!(removed_unread(&s, &group(last, Some(300))), Some(0));
        assert_eq!(removed_unread(&s, &group(last, Some(280))), Some(20));
        assert_eq!(removed_unread(&s, &group(id(30, 0), Some(280))), Some(20));
        // Inside the stream: how many entries follow is not known without reading them.
        assert_eq!(removed_unread(&s, &group(first, Some(201))), None);
        assert_eq!(removed_unread(&s, &group(id(15, 0), Some(250))), None);
        // A nil entries-read after reads: unknown.
        assert_eq!(removed_unread(&s, &group(id(5, 0), None)), None);
        // An empty stream: nothing follows anything.
        let empty = stream(0, 300, None, last);
        assert_eq!(
            removed_unread(&empty, &group(id(5, 0), Some(50))),
            Some(250)
        );
        // A Redis without counters.
        let old = StreamInfo {
            entries_added: None,
            ..s
        };
        assert_eq!(removed_unread(&old, &group(EntryId::ZERO, None)), None);
        // Counters that do not add up (a recount) never go below zero.
        assert_eq!(removed_unread(&s, &group(id(5, 0), Some(290))), Some(0));
    }

    #[test]
    fn the_counter_adds_rises_and_starts_over_after_a_fall() {
        let mut counter = GroupCounter::default();
        counter.observe(None);
        assert_eq!(counter.total, None);
        counter.observe(Some(100));
        assert_eq!(counter.total, Some(100));
        counter.observe(None);
        counter.observe(Some(100));
        counter.observe(Some(150));
        assert_eq!(counter.total, Some(150));
        // Redis counted anew (8.x, after the group read past the gap): then 30 more went.
        counter.observe(Some(0));
        counter.observe(Some(30));
        assert_eq!(counter.total, Some(180));
        // A fall to a non-zero reading: it is all news.
        counter.observe(Some(10));
        assert_eq!(counter.total, Some(190));
    }

    /// XINFO STREAM of redis-server 7.0.15 with 3 groups, as it answers on the wire.
    const STREAM_REPLY: &[u8] = b"*20\r\n$6\r\nlength\r\n:100\r\n$15\r\nradix-tree-keys\r\n:1\r\n\
$16\r\nradix-tree-nodes\r\n:2\r\n$17\r\nlast-generated-id\r\n$15\r\n1796566273705-0\r\n\
$20\r\nmax-deleted-entry-id\r\n$3\r\n0-0\r\n$13\r\nentries-added\r\n:300\r\n\
$23\r\nrecorded-first-entry-id\r\n$16\r\n1796566273701-17\r\n$6\r\ngroups\r\n:3\r\n\
$11\r\nfirst-entry\r\n*2\r\n$16\r\n1796566273701-17\r\n*2\r\n$1\r\nf\r\n$3\r\n201\r\n\
$10\r\nlast-entry\r\n*2\r\n$15\r\n1796566273705-0\r\n*2\r\n$1\r\nf\r\n$3\r\n300\r\n";

    const GROUPS_REPLY: &[u8] =
        b"*2\r\n*12\r\n$4\r\nname\r\n$7\r\ngdollar\r\n$9\r\nconsumers\r\n:1\r\n\
$7\r\npending\r\n:1\r\n$17\r\nlast-delivered-id\r\n$16\r\n1796566273701-17\r\n\
$12\r\nentries-read\r\n:201\r\n$3\r\nlag\r\n:99\r\n\
*12\r\n$4\r\nname\r\n$5\r\ngzero\r\n$9\r\nconsumers\r\n:0\r\n$7\r\npending\r\n:0\r\n\
$17\r\nlast-delivered-id\r\n$3\r\n0-0\r\n$12\r\nentries-read\r\n$-1\r\n$3\r\nlag\r\n:100\r\n";

    fn budget() -> Budget {
        Budget {
            bytes: 1 << 20,
            elements: 10_000,
        }
    }

    #[test]
    fn xinfo_replies_as_redis_writes_them() {
        let mut reader = ReplyReader::with_capacity(128);
        let mut io = STREAM_REPLY;
        assert_eq!(
            read_stream(&mut reader, &mut io, &mut budget()),
            Ok(stream(
                100,
                300,
                Some(id(1796566273701, 17)),
                id(1796566273705, 0)
            ))
        );
        let mut io = GROUPS_REPLY;
        let groups = read_groups(&mut reader, &mut io, &mut budget(), 8).unwrap();
        assert_eq!(
            groups,
            vec![
                GroupInfo {
                    name: b"gdollar".to_vec(),
                    last_delivered: id(1796566273701, 17),
                    entries_read: Some(201),
                    lag: Some(99),
                },
                GroupInfo {
                    name: b"gzero".to_vec(),
                    last_delivered: EntryId::ZERO,
                    entries_read: None,
                    lag: Some(100),
                },
            ]
        );
        // Keeping one: the other is read and forgotten, and the reader is in step after it.
        let input = [GROUPS_REPLY, b"+next\r\n"].concat();
        let mut io = &input[..];
        assert_eq!(
            read_groups(&mut reader, &mut io, &mut budget(), 1)
                .unwrap()
                .len(),
            1
        );
        assert_eq!(reader.header(&mut io), Ok(Header::Simple(b"next")));
        // No such key.
        let mut io = &b"-ERR no such key\r\n"[..];
        assert_eq!(
            read_groups(&mut reader, &mut io, &mut budget(), 8),
            Err(RespError::Refused("ERR no such key".into()))
        );
    }

    #[test]
    fn a_long_group_name_is_cut() {
        let name = vec![b'n'; 1000];
        let mut input = b"*1\r\n*4\r\n$4\r\nname\r\n$1000\r\n".to_vec();
        input.extend_from_slice(&name);
        input.extend_from_slice(b"\r\n$17\r\nlast-delivered-id\r\n$3\r\n1-1\r\n");
        let mut reader = ReplyReader::with_capacity(512);
        let groups = read_groups(&mut reader, &mut &input[..], &mut budget(), 8).unwrap();
        assert_eq!(groups[0].name, vec![b'n'; GROUP_NAME_BYTES_MAX as usize]);
        assert_eq!((groups[0].entries_read, groups[0].lag), (None, None));
    }

    #[test]
    fn broken_xinfo_replies_are_errors() {
        let mut cases: Vec<Vec<u8>> = vec![
            b"*3\r\n".to_vec(),
            b"*2\r\n$6\r\nlength\r\n:-1\r\n".to_vec(),
            b"*2\r\n$6\r\nlength\r\n$2\r\n12\r\n".to_vec(),
            b"*2\r\n$17\r\nlast-generated-id\r\n$3\r\n1-x\r\n".to_vec(),
            b"*2\r\n$11\r\nfirst-entry\r\n*3\r\n".to_vec(),
            b"*2\r\n:1\r\n:1\r\n".to_vec(),
            b"*0\r\n".to_vec(),
            b":5\r\n".to_vec(),
        ];
        // Every cut of a good reply.
        for cut in 0..STREAM_REPLY.len() {
            cases.push(STREAM_REPLY[..cut].to_vec());
        }
        for input in cases {
            let mut reader = ReplyReader::with_capacity(128);
            assert!(
                read_stream(&mut reader, &mut &input[..], &mut budget()).is_err(),
                "{:?}",
                String::from_utf8_lossy(&input)
            );
        }
        for cut in 0..GROUPS_REPLY.len() {
            let mut reader = ReplyReader::with_capacity(128);
            assert!(read_groups(&mut reader, &mut &GROUPS_REPLY[..cut], &mut budget(), 8).is_err());
        }
    }
}
