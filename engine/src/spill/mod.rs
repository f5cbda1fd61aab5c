//! The disk spill: records the bot could not take yet, kept in an append-only, checksummed
//! segment log under `{data_dir}/spill` so that they survive `kill -9`.
//!
//! Stage: sink. When the bot is down or slow and the sink's in-memory queue reaches its bound,
//! the sink appends records here; when the bot is back it delivers the spill first, in order:
//! [`Spill::peek`] a batch, send it, [`Spill::ack`] it. After a crash, [`Spill::open`] finds the
//! records not yet acknowledged and hands them out first again.
//!
//! What it must not do: run on a core (the file I/O blocks), be shared (one owner, the sink
//! thread: no locking inside; a lock file keeps a second process out of the directory), or
//! lose a record it accepted short of the disk bound below. After a crash it delivers again the
//! records peeked and not acknowledged (the batch in flight); duplicates are acceptable, loss is
//! not.
//!
//! # Layout
//!
//! - `{dir}/segment-{index:020}.log`: the records, framed as `spill/format.rs` describes (magic,
//!   length, crc32, then shard id, seq, kind codes and payload). Indices only grow; the newest
//!   segment takes the appends and is rotated when the next record would take it past
//!   [`SpillConfig::segment_bytes`].
//! - `{dir}/cursor`: the segment and byte offset of the first unacknowledged record, with a
//!   checksum, replaced atomically (write `cursor.tmp`, rename) on every [`Spill::ack`]. It is
//!   not fsynced: losing it only means redelivery. Missing or damaged, delivery restarts at the
//!   oldest segment.
//! - `{dir}/lock`: held (`flock`) while a [`Spill`] is open.
//!
//! # Crash recovery
//!
//! [`Spill::open`] validates every record after the cursor. A record cut short, or failing its
//! checksum as the last record of the last segment, or followed only by zeros there, is a torn
//! write: the file is truncated before it (warned and counted in [`Recovered::torn_tails`]).
//! Any other bad record (bad magic, a length above [`MAX_BODY_BYTES`], a checksum failure with
//! records after it) is corruption: the rest of that segment is skipped, logged as an error and
//! counted in [`Recovered::corrupt_bytes_skipped`]; appends then go to a fresh segment. A
//! record that fails its checksum later, when [`Spill::peek`] reads it, is handled the same way.
//!
//! # The disk bound: drop-oldest
//!
//! The segment files never take more than [`SpillConfig::max_bytes`]. When an append would
//! exceed it, the oldest segments are deleted first, unread records included: the spill keeps
//! the newest records and the bot sees a gap. Each such loss is logged at error level with its
//! counts, returned in [`Appended::dropped_records`] and summed in
//! [`SpillStats::dropped_records_total`]. Space is freed a segment at a time, so keep
//! `max_bytes` several times `segment_bytes`.
//!
//! # Durability
//!
//! Appends are buffered ([`WRITE_BUFFER_BYTES`]) and written by [`Spill::flush`] (or when the
//! buffer fills); a written record survives `kill -9`. [`FsyncPolicy`] decides when written
//! records also survive a power loss: at every flush, at most every N ms, or never. A segment
//! is fsynced when it is sealed (unless `never`).

mod format;
mod recover;

use std::collections::VecDeque;
use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use tracing::{debug, error, info};

use crate::record::Record;
use format::{Fault, HEADER_BYTES, Position};

pub use format::{MAX_BODY_BYTES, RECORD_OVERHEAD_BYTES};

/// Appends are gathered in a buffer of this size before a `write` (256 KiB, allocated once at
/// open). A record bigger than the buffer is written directly.
pub const WRITE_BUFFER_BYTES: usize = 256 * 1024;
/// Reads (peek and recovery) go through a buffer of this size (256 KiB, allocated once; it grows
/// to hold a bigger record and shrinks back after).
pub const READ_CHUNK_BYTES: usize = 256 * 1024;

/// Where the spill lives and how big it may grow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpillConfig {
    /// The spill's directory, created if missing: `{data_dir}/spill`.
    pub dir: PathBuf,
    /// The most bytes the segment files may take on disk (default 1 GiB, about a million
    /// ~1 KB dispatches). Past it the oldest records are dropped. Must be at least
    /// `segment_bytes`.
    pub max_bytes: u64,
    /// A segment is sealed and a new one started when the next record would take it past this
    /// (default 64 MiB). Acknowledged records free disk space a whole segment at a time.
    pub segment_bytes: u64,
    /// When written records are fsynced (default `1000ms`).
    pub fsync: FsyncPolicy,
}

impl SpillConfig {
    pub const DEFAULT_MAX_BYTES: u64 = 1024 * 1024 * 1024;
    pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
    pub const DEFAULT_FSYNC: FsyncPolicy = FsyncPolicy::IntervalMs(1000);

    /// The defaults, in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            max_bytes: Self::DEFAULT_MAX_BYTES,
            segment_bytes: Self::DEFAULT_SEGMENT_BYTES,
            fsync: Self::DEFAULT_FSYNC,
        }
    }
}

/// When [`Spill::flush`] fsyncs the active segment.
///
/// Text form (`FromStr` and `Display`): `always`, `never`, or an interval in milliseconds with
/// its unit, `1000ms`. `0ms` behaves like `always`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FsyncPolicy {
    /// At every flush that wrote something: a flushed record survives a power loss. Costs a
    /// disk round trip per flush.
    Always,
    /// At a flush when at least this many milliseconds passed since the last fsync: a power
    /// loss costs at most that window. `kill -9` loses nothing flushed either way.
    IntervalMs(u64),
    /// Leave it to the kernel's writeback (about 30 s on Linux).
    Never,
}

impl fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FsyncPolicy::Always => f.write_str("always"),
            FsyncPolicy::IntervalMs(interval_ms) => write!(f, "{interval_ms}ms"),
            FsyncPolicy::Never => f.write_str("never"),
        }
    }
}

impl FromStr for FsyncPolicy {
    type Err = FsyncPolicyParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || FsyncPolicyParseError {
            text: text.to_owned(),
        };
        match text {
            "always" => Ok(FsyncPolicy::Always),
            "never" => Ok(FsyncPolicy::Never),
            _ => {
                let digits = text.strip_suffix("ms").ok_or_else(error)?;
                if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
                    return Err(error());
                }
                digits
                    .parse()
                    .map(FsyncPolicy::IntervalMs)
                    .map_err(|_| error())
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "fsync policy '{text}': choose always, never, or an interval in milliseconds such as 1000ms"
)]
pub struct FsyncPolicyParseError {
    pub text: String,
}

/// What [`Spill::open`] found on disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Segment files kept (the active one included).
    pub segments: usize,
    /// Records not yet acknowledged: they are delivered first.
    pub records: u64,
    /// Their size on disk.
    pub bytes: u64,
    /// Torn writes truncated (at most one: the tail of the last segment).
    pub torn_tails: u64,
    /// Bytes after a corrupt record that were skipped (their records are lost).
    pub corrupt_bytes_skipped: u64,
}

/// What one [`Spill::append`] cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Appended {
    /// Unacknowledged records deleted with the oldest segments to stay under
    /// [`SpillConfig::max_bytes`]. Records peeked but not yet acknowledged do not count: the
    /// caller holds them in the batch it is delivering.
    pub dropped_records: u64,
    /// Their size on disk.
    pub dropped_bytes: u64,
}

/// Counters for the metrics reporter (`shardgate_spill_*`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpillStats {
    /// Unacknowledged records and their size on disk.
    pub records: u64,
    pub bytes: u64,
    /// What the segment files take (acknowledged bytes of the oldest segment included).
    pub disk_bytes: u64,
    pub segments: u64,
    /// Records (and bytes) lost to the disk bound since open.
    pub dropped_records_total: u64,
    pub dropped_bytes_total: u64,
    /// Bytes skipped after corrupt records, at open and since.
    pub corrupt_bytes_skipped_total: u64,
    pub fsyncs_total: u64,
}

/// What the spill was doing when the file system said no; names the file in errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    CreateDir,
    ListDir,
    Lock,
    OpenSegment,
    CreateSegment,
    ReadSegment,
    WriteSegment,
    TruncateSegment,
    SyncSegment,
    DeleteSegment,
    WriteCursor,
    SyncDir,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::CreateDir => "create the directory",
            Operation::ListDir => "list the directory",
            Operation::Lock => "lock",
            Operation::OpenSegment => "open the segment",
            Operation::CreateSegment => "create the segment",
            Operation::ReadSegment => "read the segment",
            Operation::WriteSegment => "write the segment",
            Operation::TruncateSegment => "truncate the torn tail of the segment",
            Operation::SyncSegment => "fsync the segment",
            Operation::DeleteSegment => "delete the segment",
            Operation::WriteCursor => "write the cursor",
            Operation::SyncDir => "fsync the directory",
        })
    }
}

/// Everything that can go wrong with the spill.
#[derive(Debug, thiserror::Error)]
pub enum SpillError {
    #[error("disk spill: cannot {operation} {}: {source}", path.display())]
    Io {
        operation: Operation,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "disk spill: {} is locked by another process; give each shardgate process its own --data-dir",
        path.display()
    )]
    Locked { path: PathBuf },
    #[error("disk spill: {setting} = {value}: {reason}")]
    InvalidConfig {
        setting: &'static str,
        value: u64,
        reason: &'static str,
    },
    #[error(
        "disk spill: a record of {record_bytes} bytes on disk exceeds the {limit} ({limit_bytes} bytes)"
    )]
    RecordTooLarge {
        record_bytes: u64,
        limit: &'static str,
        limit_bytes: u64,
    },
}

impl SpillError {
    fn io(operation: Operation, path: &Path, source: io::Error) -> Self {
        SpillError::Io {
            operation,
            path: path.to_owned(),
            source,
        }
    }
}

/// The spill: one owner, synchronous, blocking file I/O.
pub struct Spill {
    config: SpillConfig,
    /// Oldest first; never empty: the last one is the writer's. The cursor is in the first.
    segments: VecDeque<Segment>,
    writer: Writer,
    reader: Reader,
    /// The first unacknowledged record; `cursor.segment == segments[0].index`.
    cursor: Position,
    /// Records of the first segment before the cursor.
    head_acked_records: u64,
    unacked_records: u64,
    unacked_bytes: u64,
    /// Sum of the segments' `file_bytes`: what counts against `max_bytes`.
    disk_bytes: u64,
    /// The records handed out by the last peek and not acknowledged yet, in order.
    peeked: VecDeque<Peeked>,
    /// Peeked records at the front of that list whose segment was dropped since.
    peeked_dropped: usize,
    last_sync: Instant,
    /// A segment file was created or deleted since the last directory fsync.
    dir_unsynced: bool,
    stats: SpillStats,
    /// Holds the `flock` on `{dir}/lock` until drop.
    _lock: File,
}

/// One segment file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Segment {
    index: u64,
    /// Bytes of valid records from the start: reading stops here. The writer's segment counts
    /// its buffered bytes.
    valid_bytes: u64,
    /// The file's length (plus the writer's buffer): past `valid_bytes` when corruption was
    /// skipped.
    file_bytes: u64,
    /// Valid records in it, acknowledged ones included.
    records: u64,
}

/// The end of a peeked record: acknowledging it moves the cursor there.
#[derive(Clone, Copy, Debug)]
struct Peeked {
    segment: u64,
    end: u64,
    framed_bytes: u64,
}

impl Spill {
    /// Opens (or creates) the spill in `config.dir`: takes the directory's lock, reads the
    /// cursor, deletes acknowledged segments and validates every record after the cursor
    /// (truncating a torn tail, skipping corruption: see the module docs).
    pub fn open(config: SpillConfig) -> Result<(Spill, Recovered), SpillError> {
        if config.segment_bytes == 0 {
            return Err(SpillError::InvalidConfig {
                setting: "segment_bytes",
                value: 0,
                reason: "must be above 0",
            });
        }
        if config.max_bytes < config.segment_bytes {
            return Err(SpillError::InvalidConfig {
                setting: "max_bytes",
                value: config.max_bytes,
                reason: "must be at least segment_bytes",
            });
        }
        let dir = config.dir.clone();
        fs::create_dir_all(&dir)
            .map_err(|source| SpillError::io(Operation::CreateDir, &dir, source))?;
        let lock = lock_dir(&dir)?;

        let temp = recover::cursor_temp_path(&dir);
        match fs::remove_file(&temp) {
            Ok(()) => debug!(path = %temp.display(), "disk spill: removed a stale cursor.tmp"),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(SpillError::io(Operation::WriteCursor, &temp, source)),
        }
        let indices = recover::list_segments(&dir)?;
        let saved_cursor = recover::read_cursor(&dir.join("cursor"));
        let recovery = recover::recover(&dir, &indices, saved_cursor, config.fsync)?;

        let mut segments: VecDeque<Segment> = recovery.segments.into();
        let reuse_last = recovery.last_is_appendable
            && segments
                .back()
                .is_some_and(|last| last.file_bytes < config.segment_bytes);
        let writer = if reuse_last {
            let last = segments.back().expect("reuse_last checked there is one");
            Writer::open(&dir, last.index, last.file_bytes)?
        } else {
            let index = match (segments.back(), saved_cursor) {
                (Some(last), _) => last.index + 1,
                // Keep indices growing past the saved cursor, so it never names a newer segment.
                (None, Some(cursor)) => cursor.segment.saturating_add(1),
                (None, None) => 0,
            };
            segments.push_back(Segment {
                index,
                valid_bytes: 0,
                file_bytes: 0,
                records: 0,
            });
            let (path, file) = create_segment(&dir, index)?;
            Writer::new(index, path, file, 0)
        };
        let cursor = recovery.cursor.unwrap_or(Position {
            segment: writer.index,
            offset: 0,
        });
        let unacked_records = segments.iter().map(|segment| segment.records).sum::<u64>()
            - recovery.head_acked_records;
        let unacked_bytes = segments
            .iter()
            .map(|segment| segment.valid_bytes)
            .sum::<u64>()
            - cursor.offset;
        let disk_bytes = segments.iter().map(|segment| segment.file_bytes).sum();

        let mut spill = Spill {
            config,
            segments,
            writer,
            reader: Reader::new(),
            cursor,
            head_acked_records: recovery.head_acked_records,
            unacked_records,
            unacked_bytes,
            disk_bytes,
            peeked: VecDeque::new(),
            peeked_dropped: 0,
            last_sync: Instant::now(),
            dir_unsynced: !reuse_last,
            stats: SpillStats {
                corrupt_bytes_skipped_total: recovery.corrupt_bytes_skipped,
                ..SpillStats::default()
            },
            _lock: lock,
        };
        spill.release_consumed()?;
        spill.write_cursor()?;

        let recovered = Recovered {
            segments: spill.segments.len(),
            records: spill.unacked_records,
            bytes: spill.unacked_bytes,
            torn_tails: recovery.torn_tails,
            corrupt_bytes_skipped: recovery.corrupt_bytes_skipped,
        };
        if recovered.records > 0 {
            info!(
                dir = %spill.config.dir.display(),
                segments = recovered.segments,
                records = recovered.records,
                bytes = recovered.bytes,
                torn_tails = recovered.torn_tails,
                corrupt_bytes_skipped = recovered.corrupt_bytes_skipped,
                "disk spill: undelivered records found; they go to the bot first"
            );
        }
        info!(
            dir = %spill.config.dir.display(),
            max_bytes = spill.config.max_bytes,
            segment_bytes = spill.config.segment_bytes,
            fsync = %spill.config.fsync,
            write_buffer_bytes = WRITE_BUFFER_BYTES,
            read_chunk_bytes = READ_CHUNK_BYTES,
            "disk spill: open"
        );
        Ok((spill, recovered))
    }

    /// Appends a record to the active segment's buffer (written by [`Spill::flush`] or when the
    /// buffer fills). Rotates the segment at `segment_bytes`; deletes the oldest segments first
    /// when the record would take the files past `max_bytes` (see the module docs).
    ///
    /// On error the record was not appended (segments may have been rotated or dropped).
    pub fn append(&mut self, record: &Record) -> Result<Appended, SpillError> {
        let framed_bytes = format::framed_bytes(record).ok_or(SpillError::RecordTooLarge {
            record_bytes: (RECORD_OVERHEAD_BYTES + record.payload.len()) as u64,
            limit: "record limit",
            limit_bytes: HEADER_BYTES as u64 + u64::from(MAX_BODY_BYTES),
        })?;
        if framed_bytes > self.config.max_bytes {
            return Err(SpillError::RecordTooLarge {
                record_bytes: framed_bytes,
                limit: "spill's max_bytes",
                limit_bytes: self.config.max_bytes,
            });
        }
        let active = self.active_segment();
        if active.file_bytes > 0 && active.file_bytes + framed_bytes > self.config.segment_bytes {
            self.rotate()?;
        }
        let mut appended = Appended::default();
        while self.disk_bytes + framed_bytes > self.config.max_bytes {
            // The active segment holds at most segment_bytes - framed_bytes (or nothing), and
            // segment_bytes <= max_bytes: there is an older segment to drop.
            assert!(
                self.segments.len() > 1,
                "the active segment alone exceeds max_bytes"
            );
            self.drop_oldest(&mut appended)?;
        }
        self.writer.push(record, framed_bytes)?;
        let active = self
            .segments
            .back_mut()
            .expect("the writer's segment is always there");
        active.valid_bytes += framed_bytes;
        active.file_bytes += framed_bytes;
        active.records += 1;
        self.disk_bytes += framed_bytes;
        self.unacked_records += 1;
        self.unacked_bytes += framed_bytes;
        Ok(appended)
    }

    /// Writes the buffered appends (they then survive `kill -9`) and fsyncs per the policy.
    pub fn flush(&mut self) -> Result<(), SpillError> {
        self.writer.write_out()?;
        let due = match self.config.fsync {
            FsyncPolicy::Always => true,
            FsyncPolicy::IntervalMs(interval_ms) => {
                self.last_sync.elapsed() >= Duration::from_millis(interval_ms)
            }
            FsyncPolicy::Never => false,
        };
        if due && (self.writer.unsynced || self.dir_unsynced) {
            self.sync()?;
        }
        Ok(())
    }

    /// No unacknowledged records.
    pub fn is_empty(&self) -> bool {
        self.unacked_records == 0
    }

    /// Unacknowledged records (peeked ones included).
    pub fn records(&self) -> u64 {
        self.unacked_records
    }

    /// The unacknowledged records' size on disk.
    pub fn bytes(&self) -> u64 {
        self.unacked_bytes
    }

    pub fn stats(&self) -> SpillStats {
        SpillStats {
            records: self.unacked_records,
            bytes: self.unacked_bytes,
            disk_bytes: self.disk_bytes,
            segments: self.segments.len() as u64,
            ..self.stats
        }
    }

    /// Appends to `out` the oldest unacknowledged records, in order, without consuming them:
    /// at most `max_records`, and no more than `max_bytes` of [`Record::encoded_len`] (the batch
    /// body's measure) except that one record is always returned when there is one. Returns
    /// how many were appended. Peeking again before [`Spill::ack`] returns the same records.
    ///
    /// Reads the active segment too (its buffer is written first). A record that fails its
    /// checksum here ends its segment like corruption found at open (logged, counted).
    pub fn peek(
        &mut self,
        max_records: usize,
        max_bytes: usize,
        out: &mut Vec<Record>,
    ) -> Result<usize, SpillError> {
        self.peeked.clear();
        self.peeked_dropped = 0;
        let mut position = self.cursor;
        // Records of the current segment before `position`.
        let mut records_before = self.head_acked_records;
        let mut batch_bytes = 0usize;
        let mut count = 0;
        while count < max_records {
            // Looked up by index each time: cutting a corrupt segment may rotate and release.
            let found = self
                .segments
                .binary_search_by_key(&position.segment, |segment| segment.index);
            let slot = match found {
                Ok(slot) if position.offset < self.segments[slot].valid_bytes => slot,
                // Read to its end, or gone: go on at the start of the next segment, if any.
                other => {
                    let next_slot = other.map_or_else(|next_slot| next_slot, |slot| slot + 1);
                    let Some(next) = self.segments.get(next_slot) else {
                        break;
                    };
                    position = Position {
                        segment: next.index,
                        offset: 0,
                    };
                    records_before = 0;
                    continue;
                }
            };
            let segment = self.segments[slot];
            if segment.index == self.writer.index {
                self.writer.write_out()?;
            }
            let mut header = [0u8; HEADER_BYTES];
            header.copy_from_slice(self.reader.read(
                &self.config.dir,
                &segment,
                position.offset,
                HEADER_BYTES,
            )?);
            let header = match format::parse_header(&header) {
                Ok(header) if position.offset + header.framed_bytes() <= segment.valid_bytes => {
                    header
                }
                Ok(_) => {
                    self.cut_segment(slot, position.offset, records_before, Fault::CutShort)?;
                    continue;
                }
                Err(fault) => {
                    self.cut_segment(slot, position.offset, records_before, fault)?;
                    continue;
                }
            };
            let encoded_len = header.payload_bytes() + 64;
            if count > 0 && batch_bytes + encoded_len > max_bytes {
                break;
            }
            let body = self.reader.read(
                &self.config.dir,
                &segment,
                position.offset + HEADER_BYTES as u64,
                header.body_bytes as usize,
            )?;
            let record = match format::decode_body(header, body) {
                Ok(record) => record,
                Err(fault) => {
                    self.cut_segment(slot, position.offset, records_before, fault)?;
                    continue;
                }
            };
            debug_assert_eq!(record.encoded_len(), encoded_len);
            let framed_bytes = header.framed_bytes();
            position.offset += framed_bytes;
            records_before += 1;
            batch_bytes += encoded_len;
            count += 1;
            self.peeked.push_back(Peeked {
                segment: segment.index,
                end: position.offset,
                framed_bytes,
            });
            out.push(record);
        }
        Ok(count)
    }

    /// The first `count` records of the last peek were delivered: moves the cursor past them,
    /// deletes the segments that are then fully acknowledged and saves the cursor (write a temp
    /// file, rename).
    ///
    /// On error the records are still acknowledged here; only the saved cursor (or a file
    /// deletion) lags, so a restart would redeliver them.
    ///
    /// # Panics
    ///
    /// When `count` exceeds the records the last peek returned and not acknowledged yet.
    pub fn ack(&mut self, count: usize) -> Result<(), SpillError> {
        let available = self.peeked_dropped + self.peeked.len();
        assert!(
            count <= available,
            "ack of {count} records, but only {available} were peeked and not acknowledged"
        );
        let already_dropped = count.min(self.peeked_dropped);
        self.peeked_dropped -= already_dropped;
        let remaining = count - already_dropped;
        if remaining == 0 {
            return Ok(());
        }
        for peeked in self.peeked.drain(..remaining) {
            if peeked.segment != self.cursor.segment {
                self.cursor = Position {
                    segment: peeked.segment,
                    offset: 0,
                };
                self.head_acked_records = 0;
            }
            self.cursor.offset = peeked.end;
            self.head_acked_records += 1;
            self.unacked_records -= 1;
            self.unacked_bytes -= peeked.framed_bytes;
        }
        // Save the cursor before deleting: a crash between the two then redelivers nothing
        // (open deletes the segments the saved cursor has passed).
        self.normalize_cursor();
        let saved = self.write_cursor();
        let released = self.release_consumed();
        saved.and(released)
    }

    /// Starts a new segment; the old one is written out and (unless `never`) fsynced.
    fn rotate(&mut self) -> Result<(), SpillError> {
        self.writer.write_out()?;
        if self.config.fsync != FsyncPolicy::Never && self.writer.unsynced {
            self.writer.sync()?;
            self.stats.fsyncs_total += 1;
        }
        let index = self.writer.index + 1;
        let (path, file) = create_segment(&self.config.dir, index)?;
        self.writer.start(index, path, file);
        self.segments.push_back(Segment {
            index,
            valid_bytes: 0,
            file_bytes: 0,
            records: 0,
        });
        self.dir_unsynced = true;
        self.release_consumed()
    }

    /// Deletes the oldest segment for room, unread records and all.
    fn drop_oldest(&mut self, appended: &mut Appended) -> Result<(), SpillError> {
        let oldest = self.segments[0];
        debug_assert_eq!(oldest.index, self.cursor.segment);
        let path = self.segment_path(oldest.index);
        self.reader.forget(oldest.index);
        delete_segment(&path)?;
        self.segments.pop_front();
        self.dir_unsynced = true;

        let deleted_records = oldest.records - self.head_acked_records;
        let dropped_bytes = oldest.valid_bytes - self.cursor.offset;
        self.unacked_records -= deleted_records;
        self.unacked_bytes -= dropped_bytes;
        self.disk_bytes -= oldest.file_bytes;
        // Records peeked from it are in the caller's batch in flight: deleted here, not lost.
        let mut in_flight = 0;
        while self
            .peeked
            .front()
            .is_some_and(|peeked| peeked.segment == oldest.index)
        {
            self.peeked.pop_front();
            self.peeked_dropped += 1;
            in_flight += 1;
        }
        let dropped_records = deleted_records - in_flight;
        self.cursor = Position {
            segment: self.segments[0].index,
            offset: 0,
        };
        self.head_acked_records = 0;

        appended.dropped_records += dropped_records;
        appended.dropped_bytes += dropped_bytes;
        self.stats.dropped_records_total += dropped_records;
        self.stats.dropped_bytes_total += dropped_bytes;
        error!(
            segment = oldest.index,
            dropped_records,
            dropped_bytes,
            dropped_records_total = self.stats.dropped_records_total,
            max_bytes = self.config.max_bytes,
            "disk spill full: deleted the oldest segment; its undelivered records are lost"
        );
        Ok(())
    }

    /// A record of `segments[slot]` at `offset` failed its check on read: the segment ends there.
    fn cut_segment(
        &mut self,
        slot: usize,
        offset: u64,
        records_before: u64,
        fault: Fault,
    ) -> Result<(), SpillError> {
        let segment = &mut self.segments[slot];
        let lost_records = segment.records - records_before;
        let lost_bytes = segment.valid_bytes - offset;
        segment.records = records_before;
        segment.valid_bytes = offset;
        let index = segment.index;
        self.unacked_records -= lost_records;
        self.unacked_bytes -= lost_bytes;
        self.stats.corrupt_bytes_skipped_total += lost_bytes;
        error!(
            segment = index,
            offset,
            lost_records,
            lost_bytes,
            fault = fault.as_str(),
            "disk spill: a record failed its check on read; skipping the rest of the segment, \
             the records in it are lost"
        );
        if index == self.writer.index {
            // Appends after the bad record could never be read: continue in a new segment.
            self.rotate()?;
        }
        Ok(())
    }

    /// Moves a cursor that sits at the end of a sealed segment to the start of the next.
    fn normalize_cursor(&mut self) {
        let mut slot = self
            .segments
            .iter()
            .position(|segment| segment.index == self.cursor.segment)
            .expect("the cursor's segment is kept");
        while self.segments[slot].index != self.writer.index
            && self.cursor.offset >= self.segments[slot].valid_bytes
        {
            slot += 1;
            self.cursor = Position {
                segment: self.segments[slot].index,
                offset: 0,
            };
            self.head_acked_records = 0;
        }
    }

    /// Deletes the segments before the cursor's (all their records are acknowledged).
    fn release_consumed(&mut self) -> Result<(), SpillError> {
        self.normalize_cursor();
        while self.segments[0].index < self.cursor.segment {
            let released = self.segments[0];
            let path = self.segment_path(released.index);
            self.reader.forget(released.index);
            delete_segment(&path)?;
            self.segments.pop_front();
            self.disk_bytes -= released.file_bytes;
            self.dir_unsynced = true;
        }
        Ok(())
    }

    fn write_cursor(&mut self) -> Result<(), SpillError> {
        let temp = recover::cursor_temp_path(&self.config.dir);
        let path = self.config.dir.join("cursor");
        fs::write(&temp, format::encode_cursor(self.cursor))
            .and_then(|()| fs::rename(&temp, &path))
            .map_err(|source| SpillError::io(Operation::WriteCursor, &path, source))
    }

    fn sync(&mut self) -> Result<(), SpillError> {
        self.writer.sync()?;
        if self.dir_unsynced {
            let dir = &self.config.dir;
            File::open(dir)
                .and_then(|handle| handle.sync_all())
                .map_err(|source| SpillError::io(Operation::SyncDir, dir, source))?;
            self.dir_unsynced = false;
        }
        self.last_sync = Instant::now();
        self.stats.fsyncs_total += 1;
        Ok(())
    }

    fn active_segment(&self) -> Segment {
        *self
            .segments
            .back()
            .expect("the writer's segment is always there")
    }

    fn segment_path(&self, index: u64) -> PathBuf {
        self.config.dir.join(format::segment_file_name(index))
    }
}

impl Drop for Spill {
    /// Writes the buffer out (no fsync), so that dropping without [`Spill::flush`] loses
    /// nothing on a clean shutdown.
    fn drop(&mut self) {
        if let Err(error) = self.writer.write_out() {
            error!(%error, "disk spill: cannot write the buffered records at close; they are lost");
        }
    }
}

impl fmt::Debug for Spill {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spill")
            .field("dir", &self.config.dir)
            .field("cursor", &self.cursor)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

fn lock_dir(dir: &Path) -> Result<File, SpillError> {
    let path = dir.join("lock");
    match try_lock_file(&path) {
        Ok(Some(lock)) => Ok(lock),
        Ok(None) => Err(SpillError::Locked { path }),
        Err(source) => Err(SpillError::io(Operation::Lock, &path, source)),
    }
}

/// Opens (creating it) and `flock`s `path` for this process: `None` when another process holds
/// it. The lock lasts as long as the returned file; the kernel drops it if the process dies.
pub(crate) fn try_lock_file(path: &Path) -> io::Result<Option<File>> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(source)) => Err(source),
    }
}

/// Deletes a segment file; one already gone (removed by hand) is not an error, or every later
/// append would fail on it.
fn delete_segment(path: &Path) -> Result<(), SpillError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(SpillError::io(Operation::DeleteSegment, path, source)),
    }
}

/// A new, empty segment file.
fn create_segment(dir: &Path, index: u64) -> Result<(PathBuf, File), SpillError> {
    let path = dir.join(format::segment_file_name(index));
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|source| SpillError::io(Operation::CreateSegment, &path, source))?;
    Ok((path, file))
}

/// The active segment: appends gather in `buffer` and are written at `written_bytes` with
/// positioned writes, so a write that failed half way is simply redone over the same bytes.
struct Writer {
    index: u64,
    path: PathBuf,
    file: File,
    /// Bytes of the file holding complete, written records.
    written_bytes: u64,
    buffer: Vec<u8>,
    /// Written since the last fsync.
    unsynced: bool,
}

impl Writer {
    fn open(dir: &Path, index: u64, written_bytes: u64) -> Result<Writer, SpillError> {
        let path = dir.join(format::segment_file_name(index));
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|source| SpillError::io(Operation::OpenSegment, &path, source))?;
        Ok(Writer::new(index, path, file, written_bytes))
    }

    fn new(index: u64, path: PathBuf, file: File, written_bytes: u64) -> Writer {
        Writer {
            index,
            path,
            file,
            written_bytes,
            buffer: Vec::with_capacity(WRITE_BUFFER_BYTES),
            unsynced: false,
        }
    }

    /// Continues in a new, empty segment file (the buffer is empty and kept).
    fn start(&mut self, index: u64, path: PathBuf, file: File) {
        debug_assert!(self.buffer.is_empty());
        self.index = index;
        self.path = path;
        self.file = file;
        self.written_bytes = 0;
        self.unsynced = false;
    }

    /// Adds one record; on error nothing of it counts as written.
    fn push(&mut self, record: &Record, framed_bytes: u64) -> Result<(), SpillError> {
        let framed = framed_bytes as usize;
        if self.buffer.len() + framed > WRITE_BUFFER_BYTES {
            self.write_out()?;
        }
        let head = format::record_head(record);
        if framed > WRITE_BUFFER_BYTES {
            let payload_at = self.written_bytes + head.len() as u64;
            self.file
                .write_all_at(&head, self.written_bytes)
                .and_then(|()| self.file.write_all_at(&record.payload, payload_at))
                .map_err(|source| SpillError::io(Operation::WriteSegment, &self.path, source))?;
            self.written_bytes += framed_bytes;
            self.unsynced = true;
        } else {
            self.buffer.extend_from_slice(&head);
            self.buffer.extend_from_slice(&record.payload);
        }
        Ok(())
    }

    fn write_out(&mut self) -> Result<(), SpillError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        self.file
            .write_all_at(&self.buffer, self.written_bytes)
            .map_err(|source| SpillError::io(Operation::WriteSegment, &self.path, source))?;
        self.written_bytes += self.buffer.len() as u64;
        self.buffer.clear();
        self.unsynced = true;
        Ok(())
    }

    fn sync(&mut self) -> Result<(), SpillError> {
        self.file
            .sync_data()
            .map_err(|source| SpillError::io(Operation::SyncSegment, &self.path, source))?;
        self.unsynced = false;
        Ok(())
    }
}

/// Positioned reads through one chunk buffer; remembers the last segment file it opened.
struct Reader {
    file: Option<(u64, File)>,
    chunk: Vec<u8>,
    /// The segment and file offset `chunk` was read from.
    chunk_segment: u64,
    chunk_offset: u64,
}

impl Reader {
    fn new() -> Reader {
        Reader {
            file: None,
            chunk: Vec::with_capacity(READ_CHUNK_BYTES),
            chunk_segment: u64::MAX,
            chunk_offset: 0,
        }
    }

    /// `len` bytes of `segment` at `offset`, which lie within its valid bytes (written out).
    fn read(
        &mut self,
        dir: &Path,
        segment: &Segment,
        offset: u64,
        len: usize,
    ) -> Result<&[u8], SpillError> {
        let end = offset + len as u64;
        debug_assert!(end <= segment.valid_bytes);
        let cached = self.chunk_segment == segment.index
            && offset >= self.chunk_offset
            && end <= self.chunk_offset + self.chunk.len() as u64;
        if !cached {
            let path = dir.join(format::segment_file_name(segment.index));
            if self
                .file
                .as_ref()
                .is_none_or(|(index, _)| *index != segment.index)
            {
                let file = File::open(&path)
                    .map_err(|source| SpillError::io(Operation::OpenSegment, &path, source))?;
                self.file = Some((segment.index, file));
            }
            let (_, file) = self.file.as_ref().expect("opened just above");
            let available = (segment.valid_bytes - offset) as usize;
            let want = len.max(READ_CHUNK_BYTES).min(available);
            if want <= READ_CHUNK_BYTES && self.chunk.capacity() > 4 * READ_CHUNK_BYTES {
                // A huge record passed: give its memory back.
                self.chunk = Vec::with_capacity(READ_CHUNK_BYTES);
            }
            self.chunk.resize(want, 0);
            // Mark the chunk empty until the read succeeds.
            self.chunk_segment = u64::MAX;
            file.read_exact_at(&mut self.chunk, offset)
                .map_err(|source| SpillError::io(Operation::ReadSegment, &path, source))?;
            self.chunk_segment = segment.index;
            self.chunk_offset = offset;
        }
        let start = (offset - self.chunk_offset) as usize;
        Ok(&self.chunk[start..start + len])
    }

    /// The segment is being deleted: close it so its space is freed.
    fn forget(&mut self, index: u64) {
        if self.file.as_ref().is_some_and(|(open, _)| *open == index) {
            self.file = None;
        }
        if self.chunk_segment == index {
            self.chunk_segment = u64::MAX;
        }
    }
}

#[cfg(test)]
mod tests;
