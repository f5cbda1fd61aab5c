//! The spill's on-disk format: record framing, kind codes, the cursor file and segment names.
//!
//! Pure functions over byte slices: no I/O, no allocation. Every number is little-endian.
//!
//! A segment is a sequence of framed records and nothing else (no file header):
//!
//! ```text
//! offset  size  field
//!      0     4  magic "SGR2" (the 2 is the format version)
//!      4     4  body_bytes: u32, BODY_FIXED_BYTES..=MAX_BODY_BYTES
//!      8     4  crc32 (IEEE, crc32fast) of the body's body_bytes bytes
//!     12     4  body: shard_id: u32
//!     16     8  body: seq: u64
//!     24     1  body: kind code (0 dispatch, 1 guild_create, 2 notice)
//!     25     1  body: class code (dispatch: 0; guild_create: 0 backfill, 1 join, 2 return;
//!               notice: 0 SHARD_READY, 1 ALL_SHARDS_READY, 2 RESHARD_STARTED,
//!               3 RESHARD_FINISHED)
//!     26     4  body: session tag: u32 (see `Record::session`)
//!     30     n  body: payload, n = body_bytes - 18
//! ```
//!
//! Records of version 1 ("SGR1", written before the session tag) are read as well: the same
//! without the session tag (payload at 26), read with tag 0.
//!
//! The cursor file is 24 bytes: magic "SGC1", the segment index (u64), the byte offset in that
//! segment of the first unacknowledged record (u64), and the crc32 of the first 20 bytes.
//!
//! The codes are the format, not the enums' declaration order: never renumber them.

use crate::record::{GuildCreateClass, Notice, Record, RecordKind};

/// Marks the start of every record written ("SGR2").
pub(super) const RECORD_MAGIC: [u8; 4] = *b"SGR2";
/// Marks a record of the first version, still read ("SGR1").
const RECORD_MAGIC_V1: [u8; 4] = *b"SGR1";
/// magic + body length + crc.
pub(super) const HEADER_BYTES: usize = 12;
/// shard_id + seq + kind code + class code + session tag.
pub(super) const BODY_FIXED_BYTES: usize = 18;
/// shard_id + seq + kind code + class code: a version 1 record's fixed body.
const BODY_FIXED_BYTES_V1: usize = 14;
/// What the spill adds to each payload on disk.
pub const RECORD_OVERHEAD_BYTES: usize = HEADER_BYTES + BODY_FIXED_BYTES;
/// The largest body a record may have (64 MiB, far above Discord's largest GUILD_CREATE). A
/// length field above it is corruption: reading never allocates more than this for one record.
pub const MAX_BODY_BYTES: u32 = 64 * 1024 * 1024;

/// Marks a cursor file ("SGC1").
const CURSOR_MAGIC: [u8; 4] = *b"SGC1";
pub(super) const CURSOR_BYTES: usize = 24;

const KIND_DISPATCH: u8 = 0;
const KIND_GUILD_CREATE: u8 = 1;
const KIND_NOTICE: u8 = 2;
const KIND_SESSION: u8 = 3;
/// Never written (the queue keeps position records off the spill); here so that every kind has
/// a code.
const KIND_POSITION: u8 = 4;
/// Never written either: the collector consumes hand-over records.
const KIND_HANDED_OVER: u8 = 5;
/// Never written: the collector consumes redundant-update records.
const KIND_REDUNDANT: u8 = 6;
/// Never written either (the queue consumes it), but coded like every kind.
const KIND_ENDED: u8 = 7;

/// Why the bytes at some offset are not a valid record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Fault {
    /// The header or the body runs past the end of the file (a write cut short).
    CutShort,
    BadMagic,
    /// The length field is below the fixed body or above [`MAX_BODY_BYTES`].
    BadLength(u32),
    BadChecksum,
    /// The checksum matched but the kind/class codes are unknown (a newer format?).
    BadKind {
        kind: u8,
        class: u8,
    },
}

impl Fault {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Fault::CutShort => "cut short",
            Fault::BadMagic => "bad magic",
            Fault::BadLength(_) => "bad length",
            Fault::BadChecksum => "bad checksum",
            Fault::BadKind { .. } => "unknown kind code",
        }
    }
}

/// A parsed record header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Header {
    pub(super) body_bytes: u32,
    pub(super) crc: u32,
    /// The format version's fixed body size.
    fixed_bytes: usize,
}

impl Header {
    /// Header and body: the record's size on disk.
    pub(super) fn framed_bytes(self) -> u64 {
        HEADER_BYTES as u64 + u64::from(self.body_bytes)
    }

    /// The payload's size.
    pub(super) fn payload_bytes(self) -> usize {
        self.body_bytes as usize - self.fixed_bytes
    }
}

/// The record's size on disk; `None` when its body would exceed [`MAX_BODY_BYTES`].
pub(super) fn framed_bytes(record: &Record) -> Option<u64> {
    let body_bytes = BODY_FIXED_BYTES.checked_add(record.payload.len())?;
    if body_bytes > MAX_BODY_BYTES as usize {
        return None;
    }
    Some((HEADER_BYTES + body_bytes) as u64)
}

/// The header and the fixed part of the body; the payload follows them on disk.
///
/// The caller has checked the size with [`framed_bytes`].
pub(super) fn record_head(record: &Record) -> [u8; RECORD_OVERHEAD_BYTES] {
    let body_bytes = u32::try_from(BODY_FIXED_BYTES + record.payload.len())
        .expect("the caller bounded the payload with framed_bytes (MAX_BODY_BYTES < u32::MAX)");
    let (kind, class) = kind_codes(record.kind);
    let mut head = [0u8; RECORD_OVERHEAD_BYTES];
    head[0..4].copy_from_slice(&RECORD_MAGIC);
    head[4..8].copy_from_slice(&body_bytes.to_le_bytes());
    head[12..16].copy_from_slice(&record.shard_id.to_le_bytes());
    head[16..24].copy_from_slice(&record.seq.to_le_bytes());
    head[24] = kind;
    head[25] = class;
    head[26..30].copy_from_slice(&record.session.to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&head[HEADER_BYTES..]);
    crc.update(&record.payload);
    head[8..12].copy_from_slice(&crc.finalize().to_le_bytes());
    head
}

/// Checks the magic and bounds the length; the checksum needs the body ([`check_body`]).
pub(super) fn parse_header(bytes: &[u8; HEADER_BYTES]) -> Result<Header, Fault> {
    let fixed_bytes = match [bytes[0], bytes[1], bytes[2], bytes[3]] {
        RECORD_MAGIC => BODY_FIXED_BYTES,
        RECORD_MAGIC_V1 => BODY_FIXED_BYTES_V1,
        _ => return Err(Fault::BadMagic),
    };
    let body_bytes = le_u32(bytes, 4);
    if (body_bytes as usize) < fixed_bytes || body_bytes > MAX_BODY_BYTES {
        return Err(Fault::BadLength(body_bytes));
    }
    Ok(Header {
        body_bytes,
        crc: le_u32(bytes, 8),
        fixed_bytes,
    })
}

/// Verifies the body against its header: checksum, then kind codes.
pub(super) fn check_body(header: Header, body: &[u8]) -> Result<RecordKind, Fault> {
    debug_assert_eq!(body.len(), header.body_bytes as usize);
    if crc32fast::hash(body) != header.crc {
        return Err(Fault::BadChecksum);
    }
    let (kind, class) = (body[12], body[13]);
    kind_from_codes(kind, class).ok_or(Fault::BadKind { kind, class })
}

/// Verifies and decodes a body.
pub(super) fn decode_body(header: Header, body: &[u8]) -> Result<Record, Fault> {
    let kind = check_body(header, body)?;
    Ok(Record {
        shard_id: le_u32(body, 0),
        // Not kept on disk: the sink needs a record's set only while it is in memory (for the
        // merge of a reshard and the durable positions, which spilled records no longer move).
        shard_count: 0,
        seq: le_u64(body, 4),
        session: if header.fixed_bytes == BODY_FIXED_BYTES {
            le_u32(body, 14)
        } else {
            0
        },
        kind,
        payload: bytes::Bytes::copy_from_slice(&body[header.fixed_bytes..]),
    })
}

/// A record kind as its (kind, class) codes.
pub(super) fn kind_codes(kind: RecordKind) -> (u8, u8) {
    match kind {
        RecordKind::Dispatch => (KIND_DISPATCH, 0),
        RecordKind::GuildCreate(class) => (
            KIND_GUILD_CREATE,
            match class {
                GuildCreateClass::Backfill => 0,
                GuildCreateClass::Join => 1,
                GuildCreateClass::Return => 2,
            },
        ),
        RecordKind::Notice(notice) => (
            KIND_NOTICE,
            match notice {
                Notice::ShardReady => 0,
                Notice::AllShardsReady => 1,
                Notice::ReshardStarted => 2,
                Notice::ReshardFinished => 3,
            },
        ),
        RecordKind::Session => (KIND_SESSION, 0),
        RecordKind::Position => (KIND_POSITION, 0),
        RecordKind::HandedOver => (KIND_HANDED_OVER, 0),
        RecordKind::Redundant => (KIND_REDUNDANT, 0),
        RecordKind::Ended => (KIND_ENDED, 0),
    }
}

/// The inverse of [`kind_codes`]; `None` for codes this version does not know.
pub(super) fn kind_from_codes(kind: u8, class: u8) -> Option<RecordKind> {
    Some(match (kind, class) {
        (KIND_DISPATCH, 0) => RecordKind::Dispatch,
        (KIND_GUILD_CREATE, 0) => RecordKind::GuildCreate(GuildCreateClass::Backfill),
        (KIND_GUILD_CREATE, 1) => RecordKind::GuildCreate(GuildCreateClass::Join),
        (KIND_GUILD_CREATE, 2) => RecordKind::GuildCreate(GuildCreateClass::Return),
        (KIND_NOTICE, 0) => RecordKind::Notice(Notice::ShardReady),
        (KIND_NOTICE, 1) => RecordKind::Notice(Notice::AllShardsReady),
        (KIND_NOTICE, 2) => RecordKind::Notice(Notice::ReshardStarted),
        (KIND_NOTICE, 3) => RecordKind::Notice(Notice::ReshardFinished),
        (KIND_SESSION, 0) => RecordKind::Session,
        (KIND_POSITION, 0) => RecordKind::Position,
        (KIND_HANDED_OVER, 0) => RecordKind::HandedOver,
        (KIND_REDUNDANT, 0) => RecordKind::Redundant,
        (KIND_ENDED, 0) => RecordKind::Ended,
        _ => return None,
    })
}

/// A place in the log: a segment and a byte offset in it (always a record boundary).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Position {
    pub(super) segment: u64,
    pub(super) offset: u64,
}

pub(super) fn encode_cursor(position: Position) -> [u8; CURSOR_BYTES] {
    let mut bytes = [0u8; CURSOR_BYTES];
    bytes[0..4].copy_from_slice(&CURSOR_MAGIC);
    bytes[4..12].copy_from_slice(&position.segment.to_le_bytes());
    bytes[12..20].copy_from_slice(&position.offset.to_le_bytes());
    let crc = crc32fast::hash(&bytes[..20]);
    bytes[20..24].copy_from_slice(&crc.to_le_bytes());
    bytes
}

/// `None` for anything but a well-formed cursor (wrong size, magic or checksum).
pub(super) fn decode_cursor(bytes: &[u8]) -> Option<Position> {
    if bytes.len() != CURSOR_BYTES
        || bytes[0..4] != CURSOR_MAGIC
        || crc32fast::hash(&bytes[..20]) != le_u32(bytes, 20)
    {
        return None;
    }
    Some(Position {
        segment: le_u64(bytes, 4),
        offset: le_u64(bytes, 12),
    })
}

/// `segment-{index:020}.log`: the zero padding makes name order the log's order.
pub(super) fn segment_file_name(index: u64) -> String {
    format!("segment-{index:020}.log")
}

/// The index of a segment file name; `None` for any other file.
pub(super) fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("segment-")?.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn le_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: RecordKind, payload: &[u8]) -> Record {
        Record {
            shard_id: 7,
            shard_count: 0,
            seq: 0x0102_0304_0506_0708,
            session: 0x0A0B_0C0D,
            kind,
            payload: payload.to_vec().into(),
        }
    }

    fn frame(record: &Record) -> Vec<u8> {
        let mut bytes = record_head(record).to_vec();
        bytes.extend_from_slice(&record.payload);
        bytes
    }

    fn header_of(bytes: &[u8]) -> Result<Header, Fault> {
        let mut header = [0u8; HEADER_BYTES];
        header.copy_from_slice(&bytes[..HEADER_BYTES]);
        parse_header(&header)
    }

    #[test]
    fn every_kind_round_trips_through_a_frame() {
        let kinds = [
            RecordKind::Dispatch,
            RecordKind::GuildCreate(GuildCreateClass::Backfill),
            RecordKind::GuildCreate(GuildCreateClass::Join),
            RecordKind::GuildCreate(GuildCreateClass::Return),
            RecordKind::Notice(Notice::ShardReady),
            RecordKind::Notice(Notice::AllShardsReady),
            RecordKind::Notice(Notice::ReshardStarted),
            RecordKind::Notice(Notice::ReshardFinished),
            RecordKind::Position,
            RecordKind::HandedOver,
            RecordKind::Redundant,
            RecordKind::Ended,
        ];
        for kind in kinds {
            let (code, class) = kind_codes(kind);
            assert_eq!(kind_from_codes(code, class), Some(kind));
            let original = record(kind, br#"{"t":"X","s":1,"op":0,"d":{}}"#);
            let bytes = frame(&original);
            assert_eq!(bytes.len() as u64, framed_bytes(&original).unwrap());
            let header = header_of(&bytes).unwrap();
            assert_eq!(header.framed_bytes(), bytes.len() as u64);
            assert_eq!(decode_body(header, &bytes[HEADER_BYTES..]), Ok(original));
        }
        assert_eq!(kind_from_codes(KIND_DISPATCH, 1), None);
        assert_eq!(kind_from_codes(8, 0), None);
    }

    #[test]
    fn the_fixed_layout_is_the_documented_one() {
        let bytes = frame(&record(RecordKind::Notice(Notice::AllShardsReady), b"{}"));
        assert_eq!(&bytes[0..4], b"SGR2");
        assert_eq!(&bytes[4..8], &20u32.to_le_bytes());
        assert_eq!(&bytes[8..12], &crc32fast::hash(&bytes[12..]).to_le_bytes());
        assert_eq!(&bytes[12..16], &7u32.to_le_bytes());
        assert_eq!(&bytes[16..24], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&bytes[24..26], &[2, 1]);
        assert_eq!(&bytes[26..30], &[0x0D, 0x0C, 0x0B, 0x0A]);
        assert_eq!(&bytes[30..], b"{}");
    }

    /// A spill written before the session tag (version 1) is still delivered after an upgrade:
    /// its records read with tag 0.
    #[test]
    fn a_version_1_record_reads_with_session_0() {
        let mut bytes = b"SGR1".to_vec();
        bytes.extend_from_slice(&16u32.to_le_bytes());
        let mut body = 7u32.to_le_bytes().to_vec();
        body.extend_from_slice(&0x0102_0304_0506_0708u64.to_le_bytes());
        body.extend_from_slice(&[KIND_DISPATCH, 0]);
        body.extend_from_slice(b"{}");
        bytes.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        bytes.extend_from_slice(&body);
        let header = header_of(&bytes).unwrap();
        assert_eq!(header.framed_bytes(), bytes.len() as u64);
        assert_eq!(header.payload_bytes(), 2);
        let read = decode_body(header, &bytes[HEADER_BYTES..]).unwrap();
        assert_eq!(
            read,
            Record {
                session: 0,
                ..record(RecordKind::Dispatch, b"{}")
            }
        );
    }

    #[test]
    fn damaged_frames_name_their_fault() {
        let good = frame(&record(RecordKind::Dispatch, b"{\"a\":1}"));

        let mut magic = good.clone();
        magic[1] ^= 0xFF;
        assert_eq!(header_of(&magic), Err(Fault::BadMagic));

        let mut huge = good.clone();
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(header_of(&huge), Err(Fault::BadLength(u32::MAX)));
        let mut tiny = good.clone();
        tiny[4..8].copy_from_slice(&13u32.to_le_bytes());
        assert_eq!(header_of(&tiny), Err(Fault::BadLength(13)));

        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 0x01;
        let header = header_of(&flipped).unwrap();
        assert_eq!(
            decode_body(header, &flipped[HEADER_BYTES..]),
            Err(Fault::BadChecksum)
        );
    }

    #[test]
    fn cursor_round_trips_and_rejects_damage() {
        let position = Position {
            segment: 42,
            offset: 1 << 40,
        };
        let bytes = encode_cursor(position);
        assert_eq!(decode_cursor(&bytes), Some(position));
        for index in 0..CURSOR_BYTES {
            let mut damaged = bytes;
            damaged[index] ^= 0x10;
            assert_eq!(decode_cursor(&damaged), None, "byte {index}");
        }
        assert_eq!(decode_cursor(&bytes[..23]), None);
        assert_eq!(decode_cursor(&[]), None);
    }

    #[test]
    fn segment_names_sort_in_log_order() {
        assert_eq!(segment_file_name(3), "segment-00000000000000000003.log");
        assert_eq!(
            parse_segment_file_name(&segment_file_name(u64::MAX)),
            Some(u64::MAX)
        );
        assert!(segment_file_name(9) < segment_file_name(10));
        for other in [
            "cursor",
            "segment-3.log",
            "segment-0000000000000000000a.log",
            "segment-00000000000000000003.log.tmp",
            "segment-+0000000000000000003.log",
        ] {
            assert_eq!(parse_segment_file_name(other), None, "{other}");
        }
    }
}
