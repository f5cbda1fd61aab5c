//! Recovery at open: read the cursor, delete acknowledged segments, validate every record of the
//! rest, truncate a torn tail and fence off corruption.
//!
//! Runs once, before the spill is used. It never panics and never loops on bad data: each
//! segment is read front to back once, a length field is bounded before anything is read or
//! allocated, and the first bad record ends that segment's scan.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use super::format::{self, Fault, HEADER_BYTES, Position};
use super::{FsyncPolicy, Operation, READ_CHUNK_BYTES, Segment, SpillError};

/// What the scan found, ready to become a [`Spill`](super::Spill).
pub(super) struct Recovery {
    /// Kept segments, oldest first (the head holds the cursor); may be empty.
    pub(super) segments: Vec<Segment>,
    /// Whether the last kept segment may take more appends (no corruption in it).
    pub(super) last_is_appendable: bool,
    /// The first unacknowledged record; `None` when no segment is kept.
    pub(super) cursor: Option<Position>,
    /// Records of the head segment before the cursor.
    pub(super) head_acked_records: u64,
    pub(super) torn_tails: u64,
    pub(super) corrupt_bytes_skipped: u64,
}

/// Scans the segments `indices` (sorted, oldest first) of `dir` against the saved `cursor`.
pub(super) fn recover(
    dir: &Path,
    indices: &[u64],
    cursor: Option<Position>,
    fsync: FsyncPolicy,
) -> Result<Recovery, SpillError> {
    let (first_kept, mut cursor_offset) = locate_cursor(indices, cursor);
    // Everything before the cursor's segment was acknowledged (a crash came between writing the
    // cursor and deleting them).
    for &index in &indices[..first_kept] {
        let path = dir.join(format::segment_file_name(index));
        super::delete_segment(&path)?;
    }
    if first_kept > 0 {
        info!(
            segments = first_kept,
            "disk spill: deleted segments the cursor had already passed"
        );
    }

    let kept = &indices[first_kept..];
    let mut recovery = Recovery {
        segments: Vec::with_capacity(kept.len()),
        last_is_appendable: true,
        cursor: None,
        head_acked_records: 0,
        torn_tails: 0,
        corrupt_bytes_skipped: 0,
    };
    let mut body = Vec::new();
    for (position, &index) in kept.iter().enumerate() {
        let is_last = position + 1 == kept.len();
        let path = dir.join(format::segment_file_name(index));
        let head_cursor = if position == 0 {
            cursor_offset.take()
        } else {
            None
        };
        let scanned = scan_segment(&path, index, is_last, head_cursor, fsync, &mut body)?;
        if position == 0 {
            let (offset, acked) = match (head_cursor, scanned.records_before_cursor) {
                (None, _) => (0, 0),
                (Some(offset), Some(acked)) => (offset, acked),
                (Some(offset), None) if offset > scanned.segment.valid_bytes => {
                    warn!(
                        segment = index,
                        cursor_offset = offset,
                        valid_bytes = scanned.segment.valid_bytes,
                        "disk spill: the cursor lies past the segment's valid records; \
                         treating them all as delivered"
                    );
                    (scanned.segment.valid_bytes, scanned.segment.records)
                }
                (Some(offset), None) => {
                    warn!(
                        segment = index,
                        cursor_offset = offset,
                        "disk spill: the cursor is not on a record boundary; \
                         redelivering the segment from its start"
                    );
                    (0, 0)
                }
            };
            recovery.cursor = Some(Position {
                segment: index,
                offset,
            });
            recovery.head_acked_records = acked;
        }
        match scanned.outcome {
            Outcome::Clean => {}
            Outcome::TornTail => recovery.torn_tails += 1,
            Outcome::Corrupt { skipped_bytes } => {
                recovery.corrupt_bytes_skipped += skipped_bytes;
                if is_last {
                    recovery.last_is_appendable = false;
                }
            }
        }
        recovery.segments.push(scanned.segment);
    }
    Ok(recovery)
}

/// Which of `indices` holds the cursor, and the offset in it (`None`: start at its beginning).
/// Segments before that position are acknowledged.
fn locate_cursor(indices: &[u64], cursor: Option<Position>) -> (usize, Option<u64>) {
    let (Some(cursor), Some(&oldest), Some(&newest)) = (cursor, indices.first(), indices.last())
    else {
        return (0, None);
    };
    if cursor.segment < oldest {
        // The cursor's segment was deleted after its records were delivered or dropped.
        return (0, None);
    }
    if cursor.segment > newest {
        // The writer's segment is never deleted, so the cursor cannot outrun it: someone
        // removed files. Duplicates are acceptable, loss is not: start from the oldest.
        warn!(
            cursor_segment = cursor.segment,
            newest_segment = newest,
            "disk spill: the cursor names a segment newer than any on disk; redelivering everything"
        );
        return (0, None);
    }
    let first_kept = indices.partition_point(|&index| index < cursor.segment);
    let offset = (indices[first_kept] == cursor.segment).then_some(cursor.offset);
    (first_kept, offset)
}

enum Outcome {
    Clean,
    TornTail,
    Corrupt { skipped_bytes: u64 },
}

struct Scanned {
    segment: Segment,
    outcome: Outcome,
    /// Records before `cursor_offset` when it is a record boundary (0 and the end included).
    records_before_cursor: Option<u64>,
}

/// Validates every record of one segment; truncates a torn tail when `is_last`.
fn scan_segment(
    path: &Path,
    index: u64,
    is_last: bool,
    cursor_offset: Option<u64>,
    fsync: FsyncPolicy,
    body: &mut Vec<u8>,
) -> Result<Scanned, SpillError> {
    let read_error = |source| SpillError::io(Operation::ReadSegment, path, source);
    let file =
        File::open(path).map_err(|source| SpillError::io(Operation::OpenSegment, path, source))?;
    let file_bytes = file.metadata().map_err(read_error)?.len();
    let mut reader = BufReader::with_capacity(READ_CHUNK_BYTES, file);

    let mut offset = 0u64;
    let mut records = 0u64;
    let mut records_before_cursor = None;
    let fault = loop {
        if cursor_offset == Some(offset) {
            records_before_cursor = Some(records);
        }
        let remaining = file_bytes - offset;
        if remaining == 0 {
            break None;
        }
        if remaining < HEADER_BYTES as u64 {
            break Some((Fault::CutShort, None));
        }
        let mut header = [0u8; HEADER_BYTES];
        reader.read_exact(&mut header).map_err(read_error)?;
        let header = match format::parse_header(&header) {
            Ok(header) => header,
            Err(fault) => break Some((fault, None)),
        };
        let framed_bytes = header.framed_bytes();
        if framed_bytes > remaining {
            break Some((Fault::CutShort, Some(framed_bytes)));
        }
        // Bounded by MAX_BODY_BYTES (parse_header) and by the bytes the file really holds.
        body.resize(header.body_bytes as usize, 0);
        reader.read_exact(body).map_err(read_error)?;
        if let Err(fault) = format::check_body(header, body) {
            break Some((fault, Some(framed_bytes)));
        }
        offset += framed_bytes;
        records += 1;
    };

    let mut segment = Segment {
        index,
        valid_bytes: offset,
        file_bytes,
        records,
    };
    let outcome = match fault {
        None => Outcome::Clean,
        Some((fault, framed_bytes)) => {
            let reaches_end = framed_bytes.is_some_and(|framed| offset + framed == file_bytes);
            let torn = is_last
                && (fault == Fault::CutShort
                    || (fault == Fault::BadChecksum && reaches_end)
                    || rest_is_zero(&mut reader, offset).map_err(read_error)?);
            if torn {
                truncate(path, offset, fsync)?;
                warn!(
                    segment = index,
                    offset,
                    torn_bytes = file_bytes - offset,
                    fault = fault.as_str(),
                    "disk spill: torn write at the end of the last segment (a crash mid-append); \
                     truncated it"
                );
                segment.file_bytes = offset;
                Outcome::TornTail
            } else {
                let skipped_bytes = file_bytes - offset;
                tracing::error!(
                    segment = index,
                    offset,
                    skipped_bytes,
                    fault = fault.as_str(),
                    "disk spill: corrupt record; skipping the rest of the segment, \
                     the records in it are lost"
                );
                Outcome::Corrupt { skipped_bytes }
            }
        }
    };
    Ok(Scanned {
        segment,
        outcome,
        records_before_cursor,
    })
}

/// Whether every byte from `offset` to the end is zero: a file the filesystem extended before
/// the data landed (a power loss), which is a torn tail and not corruption.
fn rest_is_zero(reader: &mut BufReader<File>, offset: u64) -> io::Result<bool> {
    reader.seek(SeekFrom::Start(offset))?;
    let mut chunk = [0u8; 4096];
    loop {
        let read = reader.read(&mut chunk)?;
        if read == 0 {
            return Ok(true);
        }
        if chunk[..read].iter().any(|&byte| byte != 0) {
            return Ok(false);
        }
    }
}

fn truncate(path: &Path, length: u64, fsync: FsyncPolicy) -> Result<(), SpillError> {
    let error = |source| SpillError::io(Operation::TruncateSegment, path, source);
    let file = OpenOptions::new().write(true).open(path).map_err(error)?;
    file.set_len(length).map_err(error)?;
    if fsync != FsyncPolicy::Never {
        file.sync_all().map_err(error)?;
    }
    Ok(())
}

/// The segment indices in `dir`, oldest first.
pub(super) fn list_segments(dir: &Path) -> Result<Vec<u64>, SpillError> {
    let error = |source| SpillError::io(Operation::ListDir, dir, source);
    let mut indices = Vec::new();
    for entry in fs::read_dir(dir).map_err(error)? {
        let entry = entry.map_err(error)?;
        if let Some(index) = entry
            .file_name()
            .to_str()
            .and_then(format::parse_segment_file_name)
        {
            indices.push(index);
        }
    }
    indices.sort_unstable();
    Ok(indices)
}

/// The saved cursor; `None` (start from the oldest segment) when missing or damaged.
pub(super) fn read_cursor(path: &Path) -> Option<Position> {
    match fs::read(path) {
        Ok(bytes) => {
            let cursor = format::decode_cursor(&bytes);
            if cursor.is_none() {
                warn!(
                    path = %path.display(),
                    bytes = bytes.len(),
                    "disk spill: the cursor file is damaged; redelivering from the oldest segment"
                );
            }
            cursor
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => None,
        Err(error) => {
            warn!(
                path = %path.display(),
                %error,
                "disk spill: cannot read the cursor file; redelivering from the oldest segment"
            );
            None
        }
    }
}

/// `{dir}/cursor.tmp`: where a new cursor is written before it is renamed over the old one.
pub(super) fn cursor_temp_path(dir: &Path) -> PathBuf {
    dir.join("cursor.tmp")
}
