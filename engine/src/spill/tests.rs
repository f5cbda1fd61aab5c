//! The spill against a real directory: ordering, crash recovery, rotation, the disk bound and
//! damaged files.

use std::collections::VecDeque;
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::*;
use crate::record::{GuildCreateClass, Notice, RecordKind};

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "shardgate-spill-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn spill_dir(&self) -> PathBuf {
        self.0.join("spill")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

impl Spill {
    /// `kill -9`: what is still in the buffer never reaches the file.
    fn crash(mut self) {
        self.writer.buffer.clear();
        drop(self);
    }
}

fn config(dir: &TempDir) -> SpillConfig {
    SpillConfig {
        dir: dir.spill_dir(),
        max_bytes: 1024 * 1024,
        segment_bytes: 4096,
        fsync: FsyncPolicy::Never,
    }
}

fn open(config: &SpillConfig) -> (Spill, Recovered) {
    Spill::open(config.clone()).unwrap()
}

/// Record `n`: every kind, varying sizes.
fn record(n: u64) -> Record {
    let kind = match n % 7 {
        0 => RecordKind::GuildCreate(GuildCreateClass::Backfill),
        1 => RecordKind::GuildCreate(GuildCreateClass::Join),
        2 => RecordKind::GuildCreate(GuildCreateClass::Return),
        3 => RecordKind::Notice(Notice::ShardReady),
        4 => RecordKind::Notice(Notice::AllShardsReady),
        _ => RecordKind::Dispatch,
    };
    Record {
        shard_id: (n % 5) as u32,
        shard_count: 0,
        seq: n,
        session: 0,
        kind,
        payload: format!(
            r#"{{"t":"MESSAGE_CREATE","s":{n},"op":0,"d":{{"content":"{}"}}}}"#,
            "x".repeat((n % 40) as usize)
        )
        .into_bytes()
        .into(),
    }
}

/// Record `n` taking exactly 100 bytes on disk.
fn record_100(n: u64) -> Record {
    let mut payload = format!(r#"{{"s":{n}}}"#).into_bytes();
    payload.resize(100 - RECORD_OVERHEAD_BYTES, b' ');
    Record {
        shard_id: 1,
        shard_count: 0,
        seq: n,
        session: 0,
        kind: RecordKind::Dispatch,
        payload: payload.into(),
    }
}

fn records(range: std::ops::Range<u64>) -> Vec<Record> {
    range.map(record).collect()
}

fn append_all(spill: &mut Spill, records: &[Record]) -> Appended {
    let mut total = Appended::default();
    for record in records {
        let appended = spill.append(record).unwrap();
        total.dropped_records += appended.dropped_records;
        total.dropped_bytes += appended.dropped_bytes;
    }
    total
}

/// Peeks and acknowledges everything, in batches of 7.
fn drain(spill: &mut Spill) -> Vec<Record> {
    let mut delivered = Vec::new();
    loop {
        let mut batch = Vec::new();
        let count = spill.peek(7, usize::MAX, &mut batch).unwrap();
        assert_eq!(count, batch.len());
        if count == 0 {
            break;
        }
        spill.ack(count).unwrap();
        delivered.extend(batch);
    }
    assert!(spill.is_empty());
    assert_eq!((spill.records(), spill.bytes()), (0, 0));
    delivered
}

fn peek(spill: &mut Spill, max_records: usize) -> Vec<Record> {
    let mut out = Vec::new();
    spill.peek(max_records, usize::MAX, &mut out).unwrap();
    out
}

fn segment_indices(config: &SpillConfig) -> Vec<u64> {
    recover::list_segments(&config.dir).unwrap()
}

fn segment_path(config: &SpillConfig, index: u64) -> PathBuf {
    config.dir.join(format::segment_file_name(index))
}

/// The accounting matches the directory: segment count and bytes.
fn assert_disk_matches(spill: &mut Spill) {
    spill.flush().unwrap();
    let indices = segment_indices(&spill.config);
    let stats = spill.stats();
    assert_eq!(stats.segments, indices.len() as u64);
    let on_disk: u64 = indices
        .iter()
        .map(|&index| {
            fs::metadata(segment_path(&spill.config, index))
                .unwrap()
                .len()
        })
        .sum();
    assert_eq!(stats.disk_bytes, on_disk);
    assert!(stats.disk_bytes <= spill.config.max_bytes);
}

fn flip_byte(path: &Path, offset: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x40;
    fs::write(path, bytes).unwrap();
}

fn framed(record: &Record) -> u64 {
    format::framed_bytes(record).unwrap()
}

#[test]
fn append_peek_ack_round_trip_in_order() {
    let dir = TempDir::new("round-trip");
    let (mut spill, recovered) = open(&config(&dir));
    assert_eq!(
        recovered,
        Recovered {
            segments: 1,
            ..Recovered::default()
        }
    );
    assert!(spill.is_empty());

    let written = records(0..100);
    append_all(&mut spill, &written);
    spill.flush().unwrap();
    assert_eq!(spill.records(), 100);
    assert_eq!(spill.bytes(), written.iter().map(framed).sum::<u64>());

    // Peeking does not consume: the same records until ack.
    assert_eq!(peek(&mut spill, 10), written[..10]);
    assert_eq!(peek(&mut spill, 10), written[..10]);
    assert_eq!(spill.records(), 100);
    spill.ack(4).unwrap();
    assert_eq!(spill.records(), 96);
    // The rest of a peek stays acknowledgeable.
    spill.ack(6).unwrap();
    assert_eq!(peek(&mut spill, 5), written[10..15]);

    assert_eq!(drain(&mut spill), written[10..]);
    assert_disk_matches(&mut spill);
}

#[test]
fn peek_sees_appends_not_yet_flushed() {
    let dir = TempDir::new("unflushed");
    let (mut spill, _) = open(&config(&dir));
    let written = records(0..3);
    append_all(&mut spill, &written);
    assert_eq!(peek(&mut spill, 10), written);
    spill.ack(3).unwrap();
    append_all(&mut spill, &records(3..5));
    assert_eq!(drain(&mut spill), records(3..5));
}

#[test]
fn peek_stops_at_max_bytes_but_returns_at_least_one_record() {
    let dir = TempDir::new("peek-bytes");
    let (mut spill, _) = open(&config(&dir));
    let written: Vec<Record> = (0..10).map(record_100).collect();
    append_all(&mut spill, &written);
    // Each record is 70 payload bytes: encoded_len 134.
    let encoded = 100 - RECORD_OVERHEAD_BYTES + 64;
    let mut out = Vec::new();
    assert_eq!(spill.peek(10, 3 * encoded, &mut out).unwrap(), 3);
    out.clear();
    assert_eq!(spill.peek(10, 3 * encoded - 1, &mut out).unwrap(), 2);
    out.clear();
    assert_eq!(spill.peek(10, 1, &mut out).unwrap(), 1);
    assert_eq!(out, written[..1]);
    out.clear();
    assert_eq!(spill.peek(0, usize::MAX, &mut out).unwrap(), 0);
}

#[test]
fn reopen_redelivers_unacknowledged_records_in_order() {
    let dir = TempDir::new("reopen");
    let config = config(&dir);
    let written = records(0..50);
    let (mut spill, _) = open(&config);
    append_all(&mut spill, &written);
    spill.flush().unwrap();
    // Peeked, maybe sent, never acknowledged: delivered again.
    assert_eq!(peek(&mut spill, 20), written[..20]);
    spill.crash();

    let (mut spill, recovered) = open(&config);
    assert_eq!(recovered.records, 50);
    assert_eq!(recovered.bytes, written.iter().map(framed).sum::<u64>());
    assert_eq!(
        (recovered.torn_tails, recovered.corrupt_bytes_skipped),
        (0, 0)
    );
    assert_eq!(drain(&mut spill), written);
}

#[test]
fn a_crash_loses_only_the_unflushed_buffer() {
    let dir = TempDir::new("crash-buffer");
    let config = config(&dir);
    let (mut spill, _) = open(&config);
    append_all(&mut spill, &records(0..5));
    spill.flush().unwrap();
    append_all(&mut spill, &records(5..10));
    spill.crash();

    let (mut spill, recovered) = open(&config);
    assert_eq!(recovered.records, 5);
    assert_eq!(drain(&mut spill), records(0..5));

    // A clean drop writes the buffer out.
    append_all(&mut spill, &records(10..13));
    drop(spill);
    let (mut spill, recovered) = open(&config);
    assert_eq!(recovered.records, 3);
    assert_eq!(drain(&mut spill), records(10..13));
}

#[test]
fn acknowledged_records_are_not_redelivered_after_reopen() {
    let dir = TempDir::new("cursor");
    let config = config(&dir);
    let written = records(0..50);
    let (mut spill, _) = open(&config);
    append_all(&mut spill, &written);
    spill.flush().unwrap();
    assert_eq!(peek(&mut spill, 20).len(), 20);
    spill.ack(15).unwrap();
    spill.crash();

    let (mut spill, recovered) = open(&config);
    assert_eq!(recovered.records, 35);
    assert_eq!(
        recovered.bytes,
        written[15..].iter().map(framed).sum::<u64>()
    );
    assert_eq!(peek(&mut spill, 1), written[15..16]);
    spill.ack(1).unwrap();
    drop(spill);

    let (mut spill, recovered) = open(&config);
    assert_eq!(recovered.records, 34);
    assert_eq!(drain(&mut spill), written[16..]);
    drop(spill);

    let (spill, recovered) = open(&config);
    assert_eq!(recovered.records, 0);
    assert!(spill.is_empty());
}

#[test]
fn a_damaged_or_missing_cursor_redelivers_from_the_oldest_segment() {
    let dir = TempDir::new("bad-cursor");
    let config = config(&dir);
    let written = records(0..20);
    let (mut spill, _) = open(&config);
    append_all(&mut spill, &written);
    assert_eq!(peek(&mut spill, 10).len(), 10);
    spill.ack(10).unwrap();
    drop(spill);

    let cursor = config.dir.join("cursor");
    flip_byte(&cursor, 6);
    let (mut spill, recovered) = open(&config);
    assert_eq!(recovered.records, 20, "duplicates, never loss");
    assert_eq!(peek(&mut spill, 10), written[..10]);
    spill.ack(10).unwrap();
    drop(spill);

    fs::remove_file(&cursor).unwrap();
    let (mut spill, recovered) = open(&config);
    assert_eq!(recovered.records, 20);
    assert_eq!(drain(&mut spill), written);
}

#[test]
fn segments_rotate_and_fully_acknowledged_ones_are_deleted() {
    let dir = TempDir::new("rotate");
    let mut config = config(&dir);
    config.segment_bytes = 1000;
    let (mut spill, _) = open(&config);
    let written: Vec<Record> = (0..95).map(record_100).collect();
    append_all(&mut spill, &written);
    spill.flush().unwrap();
    // 10 records of 100 bytes fill a segment exactly.
    assert_eq!(segment_indices(&config), (0..10).collect::<Vec<_>>());
    for index in 0..9 {
        assert_eq!(
            fs::metadata(segment_path(&config, index)).unwrap().len(),
            1000
        );
    }
    assert_disk_matches(&mut spill);

    // Acknowledging into the fourth segment deletes the first three files.
    assert_eq!(peek(&mut spill, 35), written[..35]);
    spill.ack(35).unwrap();
    assert_eq!(segment_indices(&config), (3..10).collect::<Vec<_>>());
    assert!(!segment_path(&config, 0).exists());
    assert_disk_matches(&mut spill);

    // Exactly at a segment's end: that segment goes too.
    assert_eq!(peek(&mut spill, 5).len(), 5);
    spill.ack(5).unwrap();
    assert_eq!(segment_indices(&config), (4..10).collect::<Vec<_>>());

    assert_eq!(drain(&mut spill), written[40..]);
    // The active segment stays; everything before it is gone.
    assert_eq!(segment_indices(&config), vec![9]);
    assert_disk_matches(&mut spill);

    // Once the active segment fills and rotates, it is deleted too (all acknowledged).
    append_all(&mut spill, &(95..106).map(record_100).collect::<Vec<_>>());
    assert_eq!(segment_indices(&config), vec![9, 10]);
    assert_eq!(peek(&mut spill, 5).len(), 5);
    spill.ack(5).unwrap();
    assert_eq!(segment_indices(&config), vec![10]);
    assert_eq!(
        drain(&mut spill),
        (100..106).map(record_100).collect::<Vec<_>>()
    );
    drop(spill);

    let (mut spill, recovered) = open(&config);
    assert_eq!((recovered.segments, recovered.records), (1, 0));
    assert_disk_matches(&mut spill);
}

#[test]
fn peek_crosses_segment_boundaries_in_order() {
    let dir = TempDir::new("boundaries");
    let mut config = config(&dir);
    config.segment_bytes = 300;
    let (mut spill, _) = open(&config);
    let written = records(0..40);
    append_all(&mut spill, &written);
    let segments = segment_indices(&config).len();
    assert!(segments > 5, "{segments} segments");

    assert_eq!(peek(&mut spill, 25), written[..25]);
    spill.ack(25).unwrap();
    assert_eq!(peek(&mut spill, 100), written[25..]);
    spill.ack(15).unwrap();
    assert!(spill.is_empty());
    assert_eq!(segment_indices(&config).len(), 1);
}

#[test]
fn the_disk_bound_drops_the_oldest_segments_and_counts_exactly() {
    let dir = TempDir::new("bound");
    let mut config = config(&dir);
    config.segment_bytes = 1024;
    config.max_bytes = 4096;
    let (mut spill, _) = open(&config);
    // 10 records (1,000 bytes) per segment; 4 segments fit.
    let appended = append_all(&mut spill, &(0..40).map(record_100).collect::<Vec<_>>());
    assert_eq!(appended, Appended::default());
    assert_eq!(peek(&mut spill, 5).len(), 5);
    spill.ack(5).unwrap();

    // Each new segment from record 40 on costs the oldest: 5 unread records of segment 0,
    // then 10 for each of the segments 1 to 5.
    let appended = append_all(&mut spill, &(40..100).map(record_100).collect::<Vec<_>>());
    assert_eq!(
        appended,
        Appended {
            dropped_records: 55,
            dropped_bytes: 5500,
        }
    );
    let stats = spill.stats();
    assert_eq!(
        (stats.dropped_records_total, stats.dropped_bytes_total),
        (55, 5500)
    );
    assert_eq!(segment_indices(&config), vec![6, 7, 8, 9]);
    assert_disk_matches(&mut spill);
    assert_eq!(spill.records(), 40);
    // The newest are kept.
    assert_eq!(
        drain(&mut spill),
        (60..100).map(record_100).collect::<Vec<_>>()
    );
}

#[test]
fn records_peeked_then_dropped_can_still_be_acknowledged() {
    let dir = TempDir::new("bound-peeked");
    let mut config = config(&dir);
    config.segment_bytes = 1000;
    config.max_bytes = 4000;
    let (mut spill, _) = open(&config);
    append_all(&mut spill, &(0..40).map(record_100).collect::<Vec<_>>());
    // In flight to the bot: records 0..15, across segments 0 and 1.
    assert_eq!(peek(&mut spill, 15).len(), 15);
    let appended = spill.append(&record_100(40)).unwrap();
    // The 10 deleted were all in the batch in flight: deleted from disk, not lost.
    assert_eq!(appended.dropped_records, 0);
    // The bot took them: the 10 already dropped and 5 more.
    spill.ack(15).unwrap();
    assert_eq!(spill.records(), 26);
    assert_eq!(
        drain(&mut spill),
        (15..41).map(record_100).collect::<Vec<_>>()
    );
}

#[test]
fn a_record_cut_short_at_the_tail_is_truncated_and_counted() {
    let dir = TempDir::new("torn-short");
    let config = config(&dir);
    let written = records(0..10);
    let (mut spill, _) = open(&config);
    append_all(&mut spill, &written);
    drop(spill);

    let path = segment_path(&config, 0);
    let intact: u64 = written[..9].iter().map(framed).sum();
    let length = fs::metadata(&path).unwrap().len();
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(length - 5).unwrap();
    drop(file);

    let (mut spill, recovered) = open(&config);
    assert_eq!(
        recovered,
        Recovered {
            segments: 1,
            records: 9,
            bytes: intact,
            torn_tails: 1,
            corrupt_bytes_skipped: 0,
        }
    );
    assert_eq!(fs::metadata(&path).unwrap().len(), intact);
    // Appends continue after the truncation point.
    append_all(&mut spill, &records(10..20));
    let mut expected = written[..9].to_vec();
    expected.extend(records(10..20));
    assert_eq!(drain(&mut spill), expected);
    drop(spill);

    // Only a few header bytes of a record.
    let (mut spill, _) = open(&config);
    append_all(&mut spill, &records(20..21));
    drop(spill);
    let length = fs::metadata(&path).unwrap().len();
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(length - framed(&record(20)) + 3).unwrap();
    drop(file);
    let (mut spill, recovered) = open(&config);
    assert_eq!((recovered.records, recovered.torn_tails), (0, 1));
    assert!(drain(&mut spill).is_empty());
}

#[test]
fn a_damaged_last_record_is_a_torn_tail() {
    let dir = TempDir::new("torn-flip");
    let config = config(&dir);
    let written = records(0..10);
    let (mut spill, _) = open(&config);
    append_all(&mut spill, &written);
    drop(spill);

    let path = segment_path(&config, 0);
    let length = fs::metadata(&path).unwrap().len();
    flip_byte(&path, length - 2);

    let (mut spill, recovered) = open(&config);
    assert_eq!((recovered.records, recovered.torn_tails), (9, 1));
    assert_eq!(recovered.corrupt_bytes_skipped, 0);
    append_all(&mut spill, &records(10..12));
    let mut expected = written[..9].to_vec();
    expected.extend(records(10..12));
    assert_eq!(drain(&mut spill), expected);
}

#[test]
fn zeros_after_the_last_record_are_a_torn_tail() {
    let dir = TempDir::new("torn-zeros");
    let config = config(&dir);
    let written = records(0..10);
    let (mut spill, _) = open(&config);
    append_all(&mut spill, &written);
    drop(spill);

    let path = segment_path(&config, 0);
    let length = fs::metadata(&path).unwrap().len();
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(length + 4096).unwrap();
    drop(file);

    let (mut spill, recovered) = open(&config);
    assert_eq!((recovered.records, recovered.torn_tails), (10, 1));
    assert_eq!(fs::metadata(&path).unwrap().len(), length);
    assert_eq!(drain(&mut spill), written);
}

#[test]
fn corruption_inside_a_segment_skips_the_rest_of_it() {
    let dir = TempDir::new("corrupt-middle");
    let mut config = config(&dir);
    config.segment_bytes = 1000;
    let (mut spill, _) = open(&config);
    let written: Vec<Record> = (0..25).map(record_100).collect();
    append_all(&mut spill, &written);
    drop(spill);

    // Segment 0: record 3's payload. Segment 2 (the last): record 22's checksum.
    flip_byte(&segment_path(&config, 0), 3 * 100 + 50);
    flip_byte(&segment_path(&config, 2), 2 * 100 + 9);

    let (mut spill, recovered) = open(&config);
    assert_eq!(recovered.torn_tails, 0);
    assert_eq!(recovered.corrupt_bytes_skipped, 700 + 300);
    assert_eq!(recovered.records, 3 + 10 + 2);
    assert_eq!(spill.stats().corrupt_bytes_skipped_total, 1000);
    // The damaged last segment takes no more appends: a new one does.
    append_all(&mut spill, &(25..27).map(record_100).collect::<Vec<_>>());
    assert_eq!(segment_indices(&config), vec![0, 1, 2, 3]);
    let expected: Vec<Record> = [0..3, 10..22, 25..27]
        .into_iter()
        .flatten()
        .map(record_100)
        .collect();
    assert_eq!(drain(&mut spill), expected);
    assert_eq!(segment_indices(&config), vec![3]);
    assert_disk_matches(&mut spill);
}

#[test]
fn a_huge_length_field_is_corruption_not_an_allocation() {
    let dir = TempDir::new("huge-length");
    let config = config(&dir);
    let (mut spill, _) = open(&config);
    let written: Vec<Record> = (0..10).map(record_100).collect();
    append_all(&mut spill, &written);
    drop(spill);

    // Above MAX_BODY_BYTES: rejected from the header alone (nothing is read or allocated).
    let path = segment_path(&config, 0);
    let mut bytes = fs::read(&path).unwrap();
    bytes[204..208].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    fs::write(&path, &bytes).unwrap();
    let (mut spill, recovered) = open(&config);
    assert_eq!(recovered.records, 2);
    assert_eq!(recovered.corrupt_bytes_skipped, 800);
    assert_eq!(recovered.torn_tails, 0);
    assert_eq!(drain(&mut spill), written[..2]);
    drop(spill);

    // Within MAX_BODY_BYTES but past the end of the file: bounded by the file's size first.
    let dir = TempDir::new("long-length");
    let config = self::config(&dir);
    let (mut spill, _) = open(&config);
    append_all(&mut spill, &written);
    drop(spill);
    let path = segment_path(&config, 0);
    let mut bytes = fs::read(&path).unwrap();
    bytes[204..208].copy_from_slice(&MAX_BODY_BYTES.to_le_bytes());
    fs::write(&path, &bytes).unwrap();
    let (mut spill, recovered) = open(&config);
    assert_eq!((recovered.records, recovered.torn_tails), (2, 1));
    assert_eq!(drain(&mut spill), written[..2]);
}

#[test]
fn a_record_damaged_after_open_is_skipped_on_peek() {
    let dir = TempDir::new("corrupt-read");
    let mut config = config(&dir);
    config.segment_bytes = 1000;
    let (mut spill, _) = open(&config);
    let written: Vec<Record> = (0..15).map(record_100).collect();
    append_all(&mut spill, &written);
    spill.flush().unwrap();

    flip_byte(&segment_path(&config, 0), 4 * 100 + 30);
    let expected: Vec<Record> = [0..4, 10..15]
        .into_iter()
        .flatten()
        .map(record_100)
        .collect();
    assert_eq!(peek(&mut spill, 100), expected);
    assert_eq!(spill.records(), 9);
    assert_eq!(spill.stats().corrupt_bytes_skipped_total, 600);
    spill.ack(9).unwrap();
    assert!(spill.is_empty());

    // In the active segment: the records after the bad one are lost, and appends move on to a
    // fresh segment where they stay readable.
    append_all(&mut spill, &(15..18).map(record_100).collect::<Vec<_>>());
    spill.flush().unwrap();
    flip_byte(&segment_path(&config, 1), 5 * 100 + 30);
    assert!(peek(&mut spill, 100).is_empty());
    assert!(spill.is_empty());
    assert_eq!(spill.stats().corrupt_bytes_skipped_total, 900);
    append_all(&mut spill, &(18..20).map(record_100).collect::<Vec<_>>());
    assert_eq!(segment_indices(&config), vec![2]);
    assert_eq!(
        drain(&mut spill),
        (18..20).map(record_100).collect::<Vec<_>>()
    );
    assert_disk_matches(&mut spill);
}

#[test]
fn records_bigger_than_the_buffers_round_trip() {
    let dir = TempDir::new("big");
    let mut config = config(&dir);
    config.max_bytes = 8 * 1024 * 1024;
    let (mut spill, _) = open(&config);
    let mut big = record(1);
    big.payload = (0..3 * WRITE_BUFFER_BYTES)
        .map(|n| (n % 251) as u8)
        .collect();
    let written = vec![record(0), big.clone(), record(2), big, record(4)];
    append_all(&mut spill, &written);
    assert_eq!(drain(&mut spill), written);
    append_all(&mut spill, &written);
    drop(spill);
    let (mut spill, recovered) = open(&config);
    assert_eq!(recovered.records, 5);
    assert_eq!(drain(&mut spill), written);
}

#[test]
fn limits_are_checked() {
    let dir = TempDir::new("limits");
    let mut config = config(&dir);
    config.max_bytes = 100;
    config.segment_bytes = 200;
    assert!(matches!(
        Spill::open(config.clone()),
        Err(SpillError::InvalidConfig {
            setting: "max_bytes",
            value: 100,
            ..
        })
    ));
    config.segment_bytes = 0;
    assert!(matches!(
        Spill::open(config.clone()),
        Err(SpillError::InvalidConfig {
            setting: "segment_bytes",
            ..
        })
    ));

    config.segment_bytes = 100;
    let (mut spill, _) = open(&config);
    let mut too_big = record_100(0);
    too_big.payload = [&too_big.payload[..], b" "].concat().into();
    assert!(matches!(
        spill.append(&too_big),
        Err(SpillError::RecordTooLarge {
            record_bytes: 101,
            limit_bytes: 100,
            ..
        })
    ));
    // Exactly max_bytes fits; each such record replaces the previous one.
    spill.append(&record_100(1)).unwrap();
    let appended = spill.append(&record_100(2)).unwrap();
    assert_eq!(appended.dropped_records, 1);
    assert_eq!(drain(&mut spill), vec![record_100(2)]);
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let dir = TempDir::new("lock");
    let config = config(&dir);
    let (spill, _) = open(&config);
    match Spill::open(config.clone()) {
        Err(SpillError::Locked { path }) => assert_eq!(path, config.dir.join("lock")),
        other => panic!("expected Locked, got {other:?}"),
    }
    drop(spill);
    open(&config);
}

#[test]
fn fsync_follows_the_policy() {
    let dir = TempDir::new("fsync");
    let mut config = config(&dir);
    let mut fsyncs = |policy| {
        config.fsync = policy;
        let (mut spill, _) = open(&config);
        for n in 0..3 {
            spill.append(&record(n)).unwrap();
            spill.flush().unwrap();
        }
        // Nothing new written: no fsync even under `always`.
        spill.flush().unwrap();
        let fsyncs = spill.stats().fsyncs_total;
        drain(&mut spill);
        fsyncs
    };
    assert_eq!(fsyncs(FsyncPolicy::Always), 3);
    assert_eq!(fsyncs(FsyncPolicy::IntervalMs(0)), 3);
    assert_eq!(fsyncs(FsyncPolicy::IntervalMs(3_600_000)), 0);
    assert_eq!(fsyncs(FsyncPolicy::Never), 0);
}

#[test]
fn fsync_policies_parse_and_print() {
    for (text, policy) in [
        ("always", FsyncPolicy::Always),
        ("never", FsyncPolicy::Never),
        ("1000ms", FsyncPolicy::IntervalMs(1000)),
        ("0ms", FsyncPolicy::IntervalMs(0)),
    ] {
        assert_eq!(text.parse::<FsyncPolicy>(), Ok(policy));
        assert_eq!(policy.to_string(), text);
    }
    for text in [
        "",
        "ms",
        "1000",
        "1s",
        "-5ms",
        "+5ms",
        " always",
        "Always",
        "interval:1000",
        "1e3ms",
        "99999999999999999999ms",
    ] {
        assert_eq!(
            text.parse::<FsyncPolicy>(),
            Err(FsyncPolicyParseError {
                text: text.to_owned()
            }),
            "{text:?}"
        );
    }
    assert_eq!(
        SpillConfig::new("/tmp/x").fsync.to_string(),
        "1000ms",
        "the default"
    );
}

#[test]
fn errors_name_the_operation_and_the_path() {
    let dir = TempDir::new("errors");
    let blocker = dir.0.join("file");
    fs::write(&blocker, b"").unwrap();
    let config = SpillConfig {
        dir: blocker.join("spill"),
        ..config(&dir)
    };
    let error = Spill::open(config).unwrap_err();
    assert!(matches!(
        &error,
        SpillError::Io {
            operation: Operation::CreateDir,
            ..
        }
    ));
    let message = error.to_string();
    assert!(
        message.starts_with("disk spill: cannot create the directory ")
            && message.contains("file/spill"),
        "{message}"
    );
}

#[test]
fn segments_the_saved_cursor_passed_are_deleted_at_open() {
    let dir = TempDir::new("stale-segment");
    let mut config = config(&dir);
    config.segment_bytes = 1000;
    let (mut spill, _) = open(&config);
    append_all(&mut spill, &(0..30).map(record_100).collect::<Vec<_>>());
    spill.flush().unwrap();
    let first = fs::read(segment_path(&config, 0)).unwrap();
    assert_eq!(peek(&mut spill, 15).len(), 15);
    spill.ack(15).unwrap();
    assert_eq!(segment_indices(&config), vec![1, 2]);
    drop(spill);
    // A crash between saving the cursor and deleting the segment.
    fs::write(segment_path(&config, 0), first).unwrap();

    let (mut spill, recovered) = open(&config);
    assert_eq!(recovered.records, 15);
    // Segment 2 is full: appends go to a new segment 3.
    assert_eq!(segment_indices(&config), vec![1, 2, 3]);
    assert_eq!(
        drain(&mut spill),
        (15..30).map(record_100).collect::<Vec<_>>()
    );
}

#[test]
fn an_implausible_cursor_errs_towards_redelivery() {
    let dir = TempDir::new("odd-cursor");
    let mut config = config(&dir);
    config.segment_bytes = 1000;
    let written: Vec<Record> = (0..30).map(record_100).collect();
    let reopen_with_cursor = |segment, offset| {
        let cursor = format::encode_cursor(Position { segment, offset });
        fs::write(config.dir.join("cursor"), cursor).unwrap();
        let (spill, recovered) = open(&config);
        (spill, recovered.records)
    };
    let (mut spill, _) = open(&config);
    append_all(&mut spill, &written);
    drop(spill);

    // Newer than any segment: someone deleted files; everything is delivered again.
    let (spill, records) = reopen_with_cursor(9, 0);
    assert_eq!(records, 30);
    drop(spill);
    // Not on a record boundary: segment 1 from its start (segment 0 counts as delivered).
    let (spill, records) = reopen_with_cursor(1, 550);
    assert_eq!(records, 20);
    assert_eq!(segment_indices(&config), vec![1, 2, 3]);
    drop(spill);
    // Older than the oldest segment: from the oldest.
    let (spill, records) = reopen_with_cursor(0, 300);
    assert_eq!(records, 20);
    drop(spill);
    // Past the end of the valid records: all of segment 2 counts as delivered.
    let (mut spill, records) = reopen_with_cursor(2, 5000);
    assert_eq!(records, 0);
    assert!(drain(&mut spill).is_empty());
    append_all(&mut spill, &[record_100(30)]);
    drop(spill);
    let (mut spill, recovered) = open(&config);
    assert_eq!(recovered.records, 1);
    assert_eq!(drain(&mut spill), vec![record_100(30)]);
}

/// Random appends, flushes, peeks, acks and reopens against a queue, from a seed.
#[test]
fn random_operations_match_a_queue() {
    for seed in 1..=8u64 {
        run_model(seed);
    }
}

fn run_model(seed: u64) {
    let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = |bound: u64| {
        // xorshift64*
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        rng.wrapping_mul(0x2545_F491_4F6C_DD1D) % bound
    };
    let dir = TempDir::new("model");
    let mut config = config(&dir);
    config.segment_bytes = 1000 + next(4000);
    let (mut spill, _) = open(&config);
    let mut model: VecDeque<Record> = VecDeque::new();
    let mut peeked = 0usize;
    let mut appended = 0u64;
    for step in 0..300 {
        let context = format!("seed {seed}, step {step}");
        match next(10) {
            0..=3 => {
                for _ in 0..=next(20) {
                    let record = record(appended * 7 + next(7));
                    appended += 1;
                    spill.append(&record).unwrap();
                    model.push_back(record);
                }
            }
            4 => spill.flush().unwrap(),
            5..=6 => {
                let max_records = next(30) as usize;
                let max_bytes = 100 + next(2000) as usize;
                let mut out = vec![record(0)];
                let count = spill.peek(max_records, max_bytes, &mut out).unwrap();
                assert_eq!(out.len(), count + 1, "{context}");
                let expected: Vec<Record> = model.iter().take(count).cloned().collect();
                assert_eq!(out[1..], expected, "{context}");
                assert!(count <= max_records, "{context}");
                if count < max_records && count < model.len() {
                    let bytes: usize = out[1..].iter().map(Record::encoded_len).sum();
                    assert!(bytes + model[count].encoded_len() > max_bytes, "{context}");
                }
                peeked = count;
            }
            7..=8 => {
                let count = next(peeked as u64 + 1) as usize;
                spill.ack(count).unwrap();
                model.drain(..count);
                peeked -= count;
            }
            _ => {
                if next(2) == 0 {
                    spill.flush().unwrap();
                    spill.crash();
                } else {
                    drop(spill);
                }
                let recovered;
                (spill, recovered) = open(&config);
                assert_eq!(recovered.records, model.len() as u64, "{context}");
                assert_eq!(
                    (recovered.torn_tails, recovered.corrupt_bytes_skipped),
                    (0, 0)
                );
                peeked = 0;
            }
        }
        assert_eq!(spill.records(), model.len() as u64, "{context}");
        assert_eq!(
            spill.bytes(),
            model.iter().map(framed).sum::<u64>(),
            "{context}"
        );
    }
    assert_disk_matches(&mut spill);
    assert_eq!(drain(&mut spill), Vec::from(model), "seed {seed}");
}

#[test]
fn a_segment_deleted_by_hand_does_not_wedge_the_bound() {
    let dir = TempDir::new("deleted-by-hand");
    let mut config = config(&dir);
    config.segment_bytes = 1000;
    config.max_bytes = 4000;
    let (mut spill, _) = open(&config);
    append_all(&mut spill, &(0..40).map(record_100).collect::<Vec<_>>());
    fs::remove_file(segment_path(&config, 0)).unwrap();
    let appended = spill.append(&record_100(40)).unwrap();
    assert_eq!(appended.dropped_records, 10);
    assert_eq!(
        drain(&mut spill),
        (10..41).map(record_100).collect::<Vec<_>>()
    );
    assert_disk_matches(&mut spill);
}
