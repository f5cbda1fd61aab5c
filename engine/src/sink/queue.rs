//! The sink's queue: records between the rings and the bot, in memory up to a byte bound and
//! on the disk spill beyond it, with each shard's durable position for the saved sessions.
//!
//! Order: one FIFO. While the spill holds anything, every new record goes to the spill too
//! (the memory part only ever holds records older than the spill's), so delivering memory
//! first, then the spill, keeps every shard in sequence order.
//!
//! Durable position: a record is durable once the bot acknowledged it or it was written to the
//! spill. A shard's saved sequence is the last one such that it and everything before it on
//! that shard are durable: records still in memory (or in the batch being delivered) hold it
//! back, since they are older than anything spilled. After a crash the shard resumes from
//! there and Discord replays the rest: duplicates are possible, loss is not.
//!
//! Sessions: a [`RecordKind::Session`] marker from a core starts a new generation for its
//! shard; acknowledgements of older records no longer move the new session's position.
//!
//! Shard sets: a shard is `(shard_count, shard_id)`, since two sets run side by side while a
//! reshard switches between them; [`Queue::saved_sessions`] gives the set chosen with
//! [`Queue::save_set`] (the live one). A [`RecordKind::Position`] record (the merge's duplicate:
//! the other set's copy went out) moves its shard's position like a delivered record, in FIFO
//! order behind that copy, without reaching the bot; it never takes space on the spill.
//!
//! Durable point: every record pushed gets the next index; [`Queue::durable_before`] is the
//! index below which every record is durable (acknowledged, or on the spill with nothing older
//! still in memory). A reshard's switch waits for it to pass the records of the old set.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::Instant;

use crate::record::{Record, RecordKind};
use crate::shard::Session;
use crate::spill::{Spill, SpillError};

use super::sessions::SavedSessions;

/// Where a taken batch came from, for [`Queue::acknowledge`].
#[derive(Debug)]
pub enum Source {
    /// Popped from memory: each record's session generation, and the first record's index.
    Memory(Vec<u32>, u64),
    /// Peeked from the spill: acknowledged there.
    Spill(usize),
}

/// One shard's session and durable position.
#[derive(Debug, Default, Clone)]
struct Track {
    generation: u32,
    session: Option<Session>,
    /// Highest sequence of the current generation the bot acknowledged from memory.
    delivered_seq: u64,
    /// Highest sequence of the current generation written to the spill.
    spilled_seq: u64,
    /// Records of this shard in memory or in the batch being delivered from memory.
    in_memory: u64,
    /// The shard's task ended here (a fleet gave the shard to another host): every record of
    /// its session has reached the queue.
    ended: bool,
    /// Highest sequence of the current generation pushed for this shard, into this queue or
    /// (with routes, see [`Queue::note_seen`]) into another route's.
    seen_seq: u64,
    /// While `in_memory > 0`: `seen_seq` when the first of those records was pushed. Every
    /// record of the shard in this queue up to it is durable (memory was empty then, and a
    /// record goes to memory only while the spill is empty).
    hold: u64,
}

impl Track {
    fn durable_seq(&self) -> u64 {
        if self.in_memory > 0 {
            self.delivered_seq.max(self.hold)
        } else {
            self.delivered_seq.max(self.spilled_seq)
        }
    }

    fn note_pushed(&mut self, seq: u64) {
        if seq > 0 {
            self.seen_seq = seq;
        }
    }
}

/// A shard's session as [`Queue::acknowledged_sessions`] gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acknowledged {
    pub shard_id: u32,
    /// With the last sequence the bot acknowledged.
    pub session: Session,
    /// Records of the shard wait in memory, in delivery, or on the spill past that sequence.
    pub unacknowledged: bool,
    /// Its task ended and its last record reached the queue ([`RecordKind::Ended`]).
    pub ended: bool,
}

/// What [`Queue::push`] did with a record.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pushed {
    pub to_spill: u64,
    /// Older spilled records the disk bound deleted to make room.
    pub spill_dropped: u64,
}

/// A shard of a set: `(shard_count, shard_id)`.
type ShardKey = (u32, u32);

fn key(record: &Record) -> ShardKey {
    (record.shard_count, record.shard_id)
}

/// The queue's per-shard bookkeeping, looked up once per record pushed and acknowledged. Its
/// keys are the engine's own shard numbers, nothing a peer chooses, so they need no keyed hash:
/// SipHash there was half of the collector's CPU as fast as events are read.
type Tracks = HashMap<ShardKey, Track, BuildHasherDefault<ShardKeyHasher>>;

/// A multiplicative hash of a [`ShardKey`]: both halves in one word, times an odd constant, high
/// half folded onto the low one (the map picks buckets by the low bits and tags by the high).
#[derive(Default)]
struct ShardKeyHasher(u64);

impl Hasher for ShardKeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.write_u8(*byte);
        }
    }

    fn write_u8(&mut self, value: u8) {
        self.0 = self.0.rotate_left(8) ^ u64::from(value);
    }

    fn write_u32(&mut self, value: u32) {
        self.0 = self.0.rotate_left(32) ^ u64::from(value);
    }

    fn finish(&self) -> u64 {
        let mixed = self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        mixed ^ (mixed >> 32)
    }
}

#[derive(Debug)]
pub struct Queue {
    /// Records with their session generation and their index.
    memory: VecDeque<(Record, u32, u64)>,
    memory_bytes: u64,
    memory_bytes_max: u64,
    /// When the oldest record in memory arrived (for the linger).
    oldest_at: Option<Instant>,
    spill: Option<Spill>,
    tracks: Tracks,
    /// The set whose sessions [`Queue::saved_sessions`] gives.
    saved_set: u32,
    /// When a reshard switched to the saved set: the count it came from.
    resharded_from: Option<u32>,
    /// Records pushed so far: the next record's index.
    pushed: u64,
    /// The index of the first record of the batch taken from memory and not yet acknowledged.
    in_flight: Option<u64>,
    /// A shard of the saved set started a session since [`Queue::take_sessions_changed`].
    sessions_changed: bool,
}

impl Queue {
    /// `saved`: the sessions loaded at startup; their positions start at the saved sequence.
    pub fn new(
        memory_bytes_max: u64,
        spill: Option<Spill>,
        total_shards: u32,
        saved: &SavedSessions,
    ) -> Queue {
        let tracks = saved
            .shards
            .iter()
            .map(|(shard, session)| {
                let track = Track {
                    generation: 0,
                    delivered_seq: session.sequence,
                    spilled_seq: session.sequence,
                    session: Some(session.clone()),
                    in_memory: 0,
                    ended: false,
                    seen_seq: session.sequence,
                    hold: session.sequence,
                };
                ((saved.total_shards, *shard), track)
            })
            .collect();
        Queue {
            memory: VecDeque::new(),
            memory_bytes: 0,
            memory_bytes_max,
            oldest_at: None,
            spill,
            tracks,
            saved_set: total_shards,
            resharded_from: saved.resharded_from,
            pushed: 0,
            in_flight: None,
            sessions_changed: false,
        }
    }

    /// True when the memory part is at its bound and there is no spill to take more: the
    /// collector must stop draining the rings (backpressure to the cores).
    pub fn is_full(&self) -> bool {
        self.spill.is_none() && self.memory_bytes >= self.memory_bytes_max
    }

    /// Nothing queued and no batch taken from memory waiting for its acknowledgement (a batch
    /// read from the spill stays on it until acknowledged).
    pub fn is_drained(&self) -> bool {
        self.is_empty() && self.in_flight.is_none()
    }

    pub fn is_empty(&self) -> bool {
        self.memory.is_empty() && self.spill.as_ref().is_none_or(Spill::is_empty)
    }

    /// Records waiting: in memory, and on the spill.
    pub fn depth(&self) -> (u64, u64, u64) {
        (
            self.memory.len() as u64,
            self.memory_bytes,
            self.spill.as_ref().map_or(0, Spill::records),
        )
    }

    pub fn oldest_at(&self) -> Option<Instant> {
        self.oldest_at
    }

    /// A backlog is being drained: more than one batch in memory, or anything on the spill.
    pub fn has_backlog(&self, batch_events_max: usize) -> bool {
        self.memory.len() > batch_events_max || self.spill.as_ref().is_some_and(|s| !s.is_empty())
    }

    /// Takes a record from a ring. Session markers update their shard and go no further. When
    /// the spill cannot take it, the record comes back with the error.
    pub fn push(&mut self, record: Record, now: Instant) -> Result<Pushed, (SpillError, Record)> {
        if record.kind == RecordKind::Session {
            self.start_session(&record);
            return Ok(Pushed::default());
        }
        if record.kind == RecordKind::Ended {
            self.tracks.entry(key(&record)).or_default().ended = true;
            return Ok(Pushed::default());
        }
        if record.kind == RecordKind::Position && self.spill.as_ref().is_some_and(|s| !s.is_empty())
        {
            // Behind everything older on the spill: as good as spilled, without the bytes.
            let track = self.tracks.entry(key(&record)).or_default();
            track.spilled_seq = record.seq;
            track.note_pushed(record.seq);
            self.pushed += 1;
            return Ok(Pushed::default());
        }
        let bytes = record.encoded_len() as u64;
        if self.spill.as_ref().is_some_and(Spill::is_empty)
            && self.memory_bytes + bytes > self.memory_bytes_max
            && let Err(error) = self.move_memory_to_spill(None)
        {
            return Err((error, record));
        }
        let track = self.tracks.entry(key(&record)).or_default();
        if let Some(spill) = self.spill.as_mut()
            && (!spill.is_empty() || self.memory_bytes + bytes > self.memory_bytes_max)
        {
            let appended = match spill.append(&record) {
                Ok(appended) => appended,
                Err(error) => return Err((error, record)),
            };
            if record.seq > 0 {
                track.spilled_seq = record.seq;
            }
            track.note_pushed(record.seq);
            self.pushed += 1;
            return Ok(Pushed {
                to_spill: 1,
                spill_dropped: appended.dropped_records,
            });
        }
        if track.in_memory == 0 {
            track.hold = track.seen_seq;
        }
        track.in_memory += 1;
        track.note_pushed(record.seq);
        let generation = track.generation;
        self.memory_bytes += bytes;
        self.oldest_at.get_or_insert(now);
        self.memory.push_back((record, generation, self.pushed));
        self.pushed += 1;
        Ok(Pushed::default())
    }

    /// Writes what [`Queue::push`] appended to the spill (fsync per its policy).
    pub fn flush_spill(&mut self) -> Result<(), SpillError> {
        match self.spill.as_mut() {
            Some(spill) => spill.flush(),
            None => Ok(()),
        }
    }

    /// The next batch, oldest first: from memory while it has records, else from the spill.
    pub fn take(
        &mut self,
        events_max: usize,
        bytes_max: usize,
        batch: &mut Vec<Record>,
    ) -> Result<Option<Source>, SpillError> {
        batch.clear();
        if let Some(&(_, _, first)) = self.memory.front() {
            let mut generations = Vec::new();
            let mut bytes = 0;
            while batch.len() < events_max && bytes < bytes_max {
                let Some((record, generation, _)) = self.memory.pop_front() else {
                    break;
                };
                let size = record.encoded_len();
                bytes += size;
                self.memory_bytes -= size as u64;
                generations.push(generation);
                batch.push(record);
            }
            self.oldest_at = if self.memory.is_empty() {
                None
            } else {
                Some(Instant::now())
            };
            self.in_flight = Some(first);
            return Ok(Some(Source::Memory(generations, first)));
        }
        match self.spill.as_mut() {
            Some(spill) if !spill.is_empty() => {
                let count = spill.peek(events_max, bytes_max, batch)?;
                Ok(Some(Source::Spill(count)))
            }
            _ => Ok(None),
        }
    }

    /// The bot took the batch `take` returned.
    pub fn acknowledge(&mut self, batch: &[Record], source: Source) -> Result<(), SpillError> {
        match source {
            Source::Spill(count) => {
                if let Some(spill) = self.spill.as_mut() {
                    spill.ack(count)?;
                }
            }
            Source::Memory(generations, _) => {
                self.in_flight = None;
                for (record, generation) in batch.iter().zip(generations) {
                    let track = self.tracks.entry(key(record)).or_default();
                    track.in_memory = track.in_memory.saturating_sub(1);
                    if generation == track.generation && record.seq > 0 {
                        track.delivered_seq = record.seq;
                    }
                }
            }
        }
        Ok(())
    }

    /// Records taken from memory that go no further (their payload was invalid and is dropped):
    /// they no longer hold their shards' durable position back, nor move it past themselves.
    pub fn forget(&mut self, records: &[Record]) {
        for record in records {
            let track = self.tracks.entry(key(record)).or_default();
            track.in_memory = track.in_memory.saturating_sub(1);
        }
    }

    /// Whether a batch taken from memory could go back to the spill in order right now.
    pub fn can_hand_back(&self) -> bool {
        self.spill.as_ref().is_some_and(Spill::is_empty)
    }

    /// The bot is away: puts `returned` (a batch taken from memory, with its generations) back in
    /// front and moves all of memory to the spill, in order, so that all of it is durable (it
    /// survives a crash, and the saved positions move past it). Only while the spill is empty
    /// ([`Queue::can_hand_back`]); otherwise nothing changes and `false` comes back.
    pub fn move_memory_to_spill(
        &mut self,
        returned: Option<(&mut Vec<Record>, Vec<u32>, u64)>,
    ) -> Result<bool, SpillError> {
        if !self.can_hand_back() {
            return Ok(false);
        }
        if let Some((batch, generations, first)) = returned {
            self.in_flight = None;
            // Records left out of the batch leave gaps: the indices given back are at most the
            // true ones, which only holds the durable point back.
            for (offset, (record, generation)) in batch.drain(..).zip(generations).enumerate().rev()
            {
                self.memory_bytes += record.encoded_len() as u64;
                self.memory
                    .push_front((record, generation, first + offset as u64));
            }
        }
        let Some(spill) = self.spill.as_mut() else {
            return Ok(false);
        };
        while let Some((record, generation, index)) = self.memory.pop_front() {
            if record.kind != RecordKind::Position
                && let Err(error) = spill.append(&record)
            {
                // A failing disk: the record stays in memory, now newer than the spill's part.
                // Delivery still goes memory first, so these shards may see this stretch out of
                // order; the caller counts and logs the error.
                self.memory.push_front((record, generation, index));
                return Err(error);
            }
            self.memory_bytes -= record.encoded_len() as u64;
            let track = self.tracks.entry(key(&record)).or_default();
            track.in_memory = track.in_memory.saturating_sub(1);
            if generation == track.generation && record.seq > 0 {
                track.spilled_seq = record.seq;
            }
        }
        self.oldest_at = None;
        spill.flush()?;
        Ok(true)
    }

    /// Records for the bot only in memory (none once they went to the spill); position records
    /// do not count.
    pub fn memory_records(&self) -> u64 {
        self.memory
            .iter()
            .filter(|(record, _, _)| record.kind.is_for_bot())
            .count() as u64
    }

    /// The sessions to save: each shard of the saved set with its durable position.
    pub fn saved_sessions(&self) -> SavedSessions {
        saved_sessions(&[self])
    }

    /// The sessions of the set with `shard_count` shards, each with its durable position.
    pub fn saved_sessions_of(&self, shard_count: u32) -> SavedSessions {
        saved_sessions_of(&[self], shard_count)
    }

    /// The sessions of the set with `shard_count` shards for another host to resume: each with
    /// the last sequence the bot acknowledged (what is only on this host's spill does not
    /// count: resuming from before it, Discord sends it again), and how far the shard's
    /// records got.
    pub fn acknowledged_sessions(&self, shard_count: u32) -> Vec<Acknowledged> {
        acknowledged_sessions(&[self], shard_count)
    }

    /// Routes: a record of the shard `record` belongs to went into another route's queue; its
    /// sequence is what this queue's durable position may reach once its own records of the
    /// shard are durable.
    pub fn note_seen(&mut self, record: &Record) {
        if record.seq > 0
            && let Some(track) = self.tracks.get_mut(&key(record))
        {
            track.note_pushed(record.seq);
        }
    }

    /// Routes: the next record pushed gets this index (a sink with several route queues numbers
    /// every record across them; see [`Queue::durable_before`]). Never moves back.
    pub fn skip_to(&mut self, index: u64) {
        self.pushed = self.pushed.max(index);
    }

    /// From now on [`Queue::saved_sessions`] gives the set with `shard_count` shards (a reshard
    /// switched to it).
    pub fn save_set(&mut self, shard_count: u32) {
        if shard_count != self.saved_set {
            self.resharded_from = Some(self.saved_set);
        }
        self.saved_set = shard_count;
    }

    /// The set whose sessions are saved.
    pub fn saved_set(&self) -> u32 {
        self.saved_set
    }

    /// Drops the positions of a set that no longer runs (an aborted reshard's, or the old set
    /// after the switch).
    pub fn forget_set(&mut self, shard_count: u32) {
        debug_assert_ne!(shard_count, self.saved_set, "the saved set stays");
        self.tracks.retain(|(count, _), _| *count != shard_count);
    }

    /// The index the next record pushed gets.
    pub fn pushed(&self) -> u64 {
        self.pushed
    }

    /// Every record with an index below this is durable: acknowledged by the bot, or on the
    /// spill with nothing older left in memory (memory only ever holds records older than the
    /// spill's, and a batch taken from memory counts as in memory until acknowledged).
    pub fn durable_before(&self) -> u64 {
        self.oldest_pending().unwrap_or(self.pushed)
    }

    /// The index of the oldest record not durable yet (in memory or in the batch taken from
    /// memory), if any.
    pub fn oldest_pending(&self) -> Option<u64> {
        let oldest_in_memory = self.memory.front().map(|&(_, _, index)| index);
        match (self.in_flight, oldest_in_memory) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (Some(index), None) | (None, Some(index)) => Some(index),
            (None, None) => None,
        }
    }

    pub fn spill_stats(&self) -> Option<crate::spill::SpillStats> {
        self.spill.as_ref().map(Spill::stats)
    }

    fn start_session(&mut self, marker: &Record) {
        let session: Session = match serde_json::from_slice(&marker.payload) {
            Ok(session) => session,
            Err(error) => {
                // Built by the core from its own machine: a broken one is a bug, not input.
                debug_assert!(false, "session marker: {error}");
                tracing::error!(shard = marker.shard_id, %error, "unreadable session marker");
                return;
            }
        };
        let track = self.tracks.entry(key(marker)).or_default();
        track.generation = track.generation.wrapping_add(1);
        track.ended = false;
        // A new session starts at 0; one resumed from elsewhere (a fleet's other host) at the
        // sequence it was handed over with.
        track.delivered_seq = marker.seq;
        track.spilled_seq = marker.seq;
        track.seen_seq = marker.seq;
        track.hold = marker.seq;
        track.session = Some(session);
        self.sessions_changed |= marker.shard_count == self.saved_set;
    }

    /// Whether a shard of the saved set started a session since the last call: the saved
    /// sessions should be written soon, so that a crash right after a READY resumes it.
    pub fn take_sessions_changed(&mut self) -> bool {
        std::mem::take(&mut self.sessions_changed)
    }
}

/// The sessions to save across the queues of a sink's routes (every queue saw every session
/// marker, so they agree on sessions and on the saved set): see [`saved_sessions_of`].
pub fn saved_sessions(queues: &[&Queue]) -> SavedSessions {
    let Some(first) = queues.first() else {
        return SavedSessions::new(0);
    };
    let mut saved = saved_sessions_of(queues, first.saved_set);
    saved.resharded_from = first.resharded_from;
    saved
}

/// Each shard of the set with `shard_count` shards with its durable position across `queues`:
/// while any queue holds records of the shard in memory, the lowest position such a queue
/// vouches for (everything of the shard up to it is durable in every queue: a queue without
/// records in memory has its part durable); otherwise the highest any queue reached.
pub fn saved_sessions_of(queues: &[&Queue], shard_count: u32) -> SavedSessions {
    let mut saved = SavedSessions::new(shard_count);
    let Some(first) = queues.first() else {
        return saved;
    };
    let shards = first
        .tracks
        .iter()
        .filter(|((count, _), _)| *count == shard_count);
    for (shard_key, track) in shards {
        let Some(session) = &track.session else {
            continue;
        };
        let tracks = || {
            queues
                .iter()
                .filter_map(|queue| queue.tracks.get(shard_key))
        };
        let sequence = tracks()
            .filter(|track| track.in_memory > 0)
            .map(Track::durable_seq)
            .min()
            .unwrap_or_else(|| tracks().map(Track::durable_seq).max().unwrap_or(0));
        saved.shards.insert(
            shard_key.1,
            Session {
                sequence,
                ..session.clone()
            },
        );
    }
    saved
}

/// [`Queue::acknowledged_sessions`] across the queues of a sink's routes: a shard is
/// unacknowledged while any queue holds records of it past what the bot acknowledged, and
/// its sequence is then the lowest such queue's.
pub fn acknowledged_sessions(queues: &[&Queue], shard_count: u32) -> Vec<Acknowledged> {
    let Some(first) = queues.first() else {
        return Vec::new();
    };
    let mut sessions: Vec<Acknowledged> = first
        .tracks
        .iter()
        .filter(|((count, _), _)| *count == shard_count)
        .filter_map(|(shard_key, track)| {
            let session = track.session.as_ref()?;
            let tracks = || {
                queues
                    .iter()
                    .filter_map(|queue| queue.tracks.get(shard_key))
            };
            let pending =
                |track: &&Track| track.in_memory > 0 || track.spilled_seq > track.delivered_seq;
            // In memory only (nothing on the spill), a queue's records up to the hold were
            // all acknowledged: memory is older than the spill.
            let acknowledged = |track: &Track| {
                if track.in_memory > 0 && track.spilled_seq <= track.delivered_seq {
                    track.delivered_seq.max(track.hold)
                } else {
                    track.delivered_seq
                }
            };
            let unacknowledged = tracks().any(|track| pending(&track));
            let sequence = if unacknowledged {
                tracks().filter(pending).map(acknowledged).min()
            } else {
                tracks().map(|track| track.delivered_seq).max()
            }
            .unwrap_or(track.delivered_seq);
            Some(Acknowledged {
                shard_id: shard_key.1,
                session: Session {
                    sequence,
                    ..session.clone()
                },
                unacknowledged,
                ended: tracks().all(|track| track.ended),
            })
        })
        .collect();
    sessions.sort_unstable_by_key(|acknowledged| acknowledged.shard_id);
    sessions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_keys_spread_over_the_low_and_high_bits() {
        use std::hash::BuildHasher;
        let hasher = BuildHasherDefault::<ShardKeyHasher>::default();
        for count in [1u32, 16, 1024, 4096] {
            let hashes: Vec<u64> = (0..count).map(|id| hasher.hash_one((count, id))).collect();
            let distinct = |bits: fn(u64) -> u64| {
                let mut seen: Vec<u64> = hashes.iter().map(|h| bits(*h)).collect();
                seen.sort_unstable();
                seen.dedup();
                seen.len()
            };
            let wanted = (count as usize).min(256);
            // Buckets come from the low bits, tags from the top seven: neither collapses.
            assert!(
                distinct(|h| h & 0xff) * 4 >= wanted * 3,
                "low bits, {count} shards"
            );
            assert!(
                distinct(|h| h >> 57) * 4 >= wanted.min(128) * 3,
                "high bits, {count} shards"
            );
            assert_eq!(distinct(|h| h), count as usize);
        }
        // Another set's shard of the same number hashes elsewhere.
        assert_ne!(hasher.hash_one((4u32, 1u32)), hasher.hash_one((8u32, 1u32)));
    }

    fn record(shard_id: u32, seq: u64) -> Record {
        Record {
            shard_id,
            shard_count: 4,
            seq,
            session: 0,
            kind: RecordKind::Dispatch,
            payload: format!(r#"{{"t":"X","s":{seq},"op":0,"d":{{}}}}"#)
                .into_bytes()
                .into(),
        }
    }

    fn marker(shard_id: u32, id: &str) -> Record {
        Record {
            shard_id,
            shard_count: 4,
            seq: 0,
            session: 0,
            kind: RecordKind::Session,
            payload: serde_json::to_vec(&Session {
                session_id: id.into(),
                resume_url: Some("wss://resume.example".into()),
                sequence: 1,
            })
            .unwrap()
            .into(),
        }
    }

    fn seq_of(queue: &Queue, shard: u32) -> Option<(String, u64)> {
        queue
            .saved_sessions()
            .shards
            .get(&shard)
            .map(|s| (s.session_id.clone(), s.sequence))
    }

    #[test]
    fn memory_positions_move_on_acknowledgement_only() {
        let mut queue = Queue::new(1 << 20, None, 4, &SavedSessions::new(4));
        let now = Instant::now();
        queue.push(marker(1, "a"), now).unwrap();
        for seq in 1..=5 {
            queue.push(record(1, seq), now).unwrap();
        }
        assert_eq!(seq_of(&queue, 1), Some(("a".into(), 0)));
        let mut batch = Vec::new();
        let source = queue.take(3, usize::MAX, &mut batch).unwrap().unwrap();
        assert_eq!(batch.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3]);
        // Taken is not delivered.
        assert_eq!(seq_of(&queue, 1), Some(("a".into(), 0)));
        queue.acknowledge(&batch, source).unwrap();
        assert_eq!(seq_of(&queue, 1), Some(("a".into(), 3)));
        assert_eq!(queue.depth().0, 2);
    }

    #[test]
    fn a_new_session_is_not_moved_by_the_old_one() {
        let mut queue = Queue::new(1 << 20, None, 4, &SavedSessions::new(4));
        let now = Instant::now();
        queue.push(marker(2, "old"), now).unwrap();
        queue.push(record(2, 40), now).unwrap();
        queue.push(marker(2, "new"), now).unwrap();
        queue.push(record(2, 1), now).unwrap();
        let mut batch = Vec::new();
        let source = queue.take(1, usize::MAX, &mut batch).unwrap().unwrap();
        queue.acknowledge(&batch, source).unwrap();
        // Seq 40 belonged to "old": "new" has nothing durable yet.
        assert_eq!(seq_of(&queue, 2), Some(("new".into(), 0)));
        let source = queue.take(1, usize::MAX, &mut batch).unwrap().unwrap();
        queue.acknowledge(&batch, source).unwrap();
        assert_eq!(seq_of(&queue, 2), Some(("new".into(), 1)));
    }

    /// A fleet's hand-over: the session marker carries the sequence the other host left it
    /// at, and the acknowledged position (not what merely reached the spill) moves from there.
    #[test]
    fn a_handed_over_session_starts_where_it_was_and_reports_what_the_bot_acknowledged() {
        let mut queue = Queue::new(1 << 20, None, 4, &SavedSessions::new(4));
        let now = Instant::now();
        let mut handed = marker(3, "moved");
        handed.seq = 120;
        queue.push(handed, now).unwrap();
        let sessions = queue.acknowledged_sessions(4);
        assert_eq!(sessions.len(), 1);
        assert_eq!(
            (sessions[0].shard_id, sessions[0].session.sequence),
            (3, 120)
        );
        assert!(!sessions[0].unacknowledged && !sessions[0].ended);
        for seq in 121..=123 {
            queue.push(record(3, seq), now).unwrap();
        }
        let mut ended = record(3, 123);
        ended.kind = RecordKind::Ended;
        queue.push(ended, now).unwrap();
        assert!(
            queue.acknowledged_sessions(4)[0].unacknowledged,
            "three not acknowledged"
        );
        let mut batch = Vec::new();
        let source = queue.take(2, usize::MAX, &mut batch).unwrap().unwrap();
        queue.acknowledge(&batch, source).unwrap();
        let shard = queue.acknowledged_sessions(4).remove(0);
        assert_eq!(
            (shard.session.session_id.as_str(), shard.session.sequence),
            ("moved", 122)
        );
        assert!(shard.unacknowledged && shard.ended);
        let source = queue.take(2, usize::MAX, &mut batch).unwrap().unwrap();
        queue.acknowledge(&batch, source).unwrap();
        let shard = queue.acknowledged_sessions(4).remove(0);
        assert_eq!(shard.session.sequence, 123);
        assert!(!shard.unacknowledged);
        assert!(queue.acknowledged_sessions(8).is_empty(), "another set");
    }

    #[test]
    fn saved_sessions_start_where_they_were() {
        let mut saved = SavedSessions::new(4);
        saved.shards.insert(
            0,
            Session {
                session_id: "s".into(),
                resume_url: None,
                sequence: 77,
            },
        );
        let queue = Queue::new(1 << 20, None, 4, &saved);
        assert_eq!(seq_of(&queue, 0), Some(("s".into(), 77)));
    }

    #[test]
    fn without_a_spill_a_full_memory_is_backpressure() {
        let mut queue = Queue::new(150, None, 1, &SavedSessions::new(1));
        let now = Instant::now();
        assert!(!queue.is_full());
        queue.push(record(0, 1), now).unwrap();
        queue.push(record(0, 2), now).unwrap();
        assert!(queue.is_full());
    }
    fn in_set(mut record: Record, shard_count: u32) -> Record {
        record.shard_count = shard_count;
        record
    }

    fn position(shard_count: u32, shard_id: u32, seq: u64) -> Record {
        Record {
            kind: RecordKind::Position,
            payload: bytes::Bytes::new(),
            ..in_set(record(shard_id, seq), shard_count)
        }
    }

    fn take_and_ack(queue: &mut Queue, count: usize) -> Vec<Record> {
        let mut batch = Vec::new();
        let source = queue.take(count, usize::MAX, &mut batch).unwrap().unwrap();
        queue.acknowledge(&batch, source).unwrap();
        batch
    }

    #[test]
    fn two_sets_keep_their_own_positions_and_the_saved_one_switches() {
        let mut queue = Queue::new(1 << 20, None, 4, &SavedSessions::new(4));
        let now = Instant::now();
        // Shard 1 of the live set (4 shards) and shard 1 of the new set (8 shards).
        queue.push(marker(1, "live"), now).unwrap();
        queue.push(in_set(marker(1, "new"), 8), now).unwrap();
        queue.push(record(1, 10), now).unwrap();
        queue.push(in_set(record(1, 3), 8), now).unwrap();
        take_and_ack(&mut queue, 2);
        assert_eq!(seq_of(&queue, 1), Some(("live".into(), 10)));
        let new = queue.saved_sessions_of(8);
        assert_eq!(new.total_shards, 8);
        assert_eq!(new.shards[&1].session_id, "new");
        assert_eq!(new.shards[&1].sequence, 3);
        // The switch: the new set is the saved one; the old set's positions can go.
        queue.save_set(8);
        assert_eq!(queue.saved_sessions().total_shards, 8);
        assert_eq!(seq_of(&queue, 1), Some(("new".into(), 3)));
        queue.forget_set(4);
        assert!(queue.saved_sessions_of(4).shards.is_empty());
    }

    #[test]
    fn a_position_record_moves_its_shard_in_order_and_never_reaches_the_bot() {
        let mut queue = Queue::new(1 << 20, None, 8, &SavedSessions::new(8));
        let now = Instant::now();
        queue.push(in_set(marker(2, "new"), 8), now).unwrap();
        // The other set's copy (shard 0 of 4) goes first, the new set's duplicate behind it.
        queue.push(in_set(record(0, 7), 4), now).unwrap();
        queue.push(in_set(record(2, 1), 8), now).unwrap();
        queue.push(position(8, 2, 2), now).unwrap();
        assert_eq!(queue.memory_records(), 2, "the position is not for the bot");
        take_and_ack(&mut queue, 2);
        assert_eq!(seq_of(&queue, 2), Some(("new".into(), 1)));
        let batch = take_and_ack(&mut queue, 10);
        assert_eq!(batch.len(), 1);
        assert_eq!(seq_of(&queue, 2), Some(("new".into(), 2)));
    }

    #[test]
    fn the_durable_point_waits_for_memory_and_the_batch_in_flight() {
        let dir =
            std::env::temp_dir().join(format!("shardgate-queue-durable-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (spill, _) = Spill::open(crate::spill::SpillConfig::new(&dir)).unwrap();
        // Memory holds two records; a third moves them all to the spill.
        let size = record(0, 1).encoded_len() as u64;
        let mut queue = Queue::new(2 * size, Some(spill), 4, &SavedSessions::new(4));
        let now = Instant::now();
        assert_eq!(queue.durable_before(), 0);
        queue.push(record(0, 1), now).unwrap();
        queue.push(record(1, 1), now).unwrap();
        assert_eq!(queue.durable_before(), 0);
        let mut batch = Vec::new();
        let source = queue.take(1, usize::MAX, &mut batch).unwrap().unwrap();
        assert_eq!(queue.durable_before(), 0, "taken is not acknowledged");
        queue.acknowledge(&batch, source).unwrap();
        assert_eq!(
            queue.durable_before(),
            1,
            "the second record is still in memory"
        );
        queue.push(record(2, 1), now).unwrap();
        assert_eq!(queue.durable_before(), 1);
        let pushed = queue.push(record(3, 1), now).unwrap();
        assert_eq!(pushed.to_spill, 1);
        assert_eq!(
            queue.depth().2,
            3,
            "memory went to the spill, then the new record"
        );
        assert_eq!(
            queue.durable_before(),
            4,
            "everything is acknowledged or on the spill"
        );
        // A position behind the spill is as good as spilled, without taking space there.
        queue.push(position(4, 3, 5), now).unwrap();
        assert_eq!((queue.pushed(), queue.durable_before()), (5, 5));
        assert_eq!(queue.depth().2, 3);
        let saved = queue.saved_sessions_of(4);
        assert!(saved.shards.is_empty(), "no session markers in this test");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Routes: a shard's records split over two queues. The saved position never passes a
    /// record still in memory in either, and does not stay behind at a quiet route's last
    /// delivery.
    #[test]
    fn routes_save_the_lowest_position_any_queue_still_holds() {
        let mut a = Queue::new(1 << 20, None, 4, &SavedSessions::new(4));
        let mut b = Queue::new(1 << 20, None, 4, &SavedSessions::new(4));
        let now = Instant::now();
        let mut index = 0;
        let mut push = |to_b: bool, a: &mut Queue, b: &mut Queue, record: Record| {
            let (into, other) = if to_b { (b, a) } else { (a, b) };
            into.skip_to(index);
            if record.kind == RecordKind::Session {
                into.push(record.clone(), now).unwrap();
                other.skip_to(index);
                other.push(record, now).unwrap();
            } else {
                other.note_seen(&record);
                into.push(record, now).unwrap();
            }
            index += 1;
        };
        push(false, &mut a, &mut b, marker(1, "s"));
        // A gets 1..=3, B gets 4, A gets 5 and 6.
        for seq in 1..=6 {
            push(seq == 4, &mut a, &mut b, record(1, seq));
        }
        let saved = |a: &Queue, b: &Queue| saved_sessions(&[a, b]).shards[&1].sequence;
        assert_eq!(saved(&a, &b), 0, "nothing delivered");
        take_and_ack(&mut a, 10);
        assert_eq!(saved(&a, &b), 3, "4 waits in B");
        assert_eq!(
            (a.oldest_pending(), b.oldest_pending()),
            (None, Some(4)),
            "B's record has the index the sink gave it"
        );
        take_and_ack(&mut b, 10);
        assert_eq!(saved(&a, &b), 6);
        let acknowledged = acknowledged_sessions(&[&a, &b], 4);
        assert_eq!(acknowledged[0].session.sequence, 6);
        assert!(!acknowledged[0].unacknowledged);
        // A quiet route's last delivery (4, in B) does not hold the position back while A
        // has a batch out.
        for seq in 7..=9 {
            push(false, &mut a, &mut b, record(1, seq));
        }
        assert_eq!(saved(&a, &b), 6);
        push(true, &mut a, &mut b, record(1, 10));
        take_and_ack(&mut a, 10);
        assert_eq!(
            saved(&a, &b),
            9,
            "B holds 10 back; A vouches for everything"
        );
        let acknowledged = acknowledged_sessions(&[&a, &b], 4);
        assert_eq!(acknowledged[0].session.sequence, 9);
        assert!(acknowledged[0].unacknowledged);
    }
}
