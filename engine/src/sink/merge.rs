//! The collector's side of a reshard: what it is told ([`SinkControl`]), and the adapter that
//! runs the two sets' records through the [`MergeWindow`] on their way into the queue.
//!
//! A record's key is a keyed hash of its event name and its raw `d` (Discord sends both byte
//! for byte the same to every session; only `s` differs). A record that cannot be read so far
//! (not a gateway message) keys on all of its bytes: it matches nothing and is delivered.
//! Records of neither set, and the engine's own (notices, session markers), pass untouched.
//!
//! The merge's duplicates become [`RecordKind::Position`] records: they move their shard's
//! saved position in order behind the copy that went out, and never reach the bot.

use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::record::{Record, RecordKind};
use crate::reshard::{MergeLimits, MergeStats, MergeWindow, Merged, Side};

/// What the runtime tells the collector during a reshard. Sent over a channel, so that each
/// takes effect in order with the records the collector has taken so far.
#[derive(Debug)]
pub enum SinkControl {
    /// Merge the records of the set with `live` shards and the one with `new` from now on.
    BeginMerge {
        live: u32,
        new: u32,
        limits: MergeLimits,
    },
    /// The live set is handing over: once a hand-over record came from each of these shards,
    /// flip the merge and note the barrier ([`MergeReport::barrier`]).
    AwaitHandOver { shard_ids: Vec<u32> },
    /// End the merge. `abort`: the reshard was abandoned; the copies held for their twin are
    /// dropped (the live set delivers those twins).
    EndMerge { abort: bool },
    /// Queue this record (an engine notice) now, behind what was collected so far.
    Notice(Record),
}

/// What the collector reports about the merge, read by the runtime and the metrics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MergeReport {
    /// The sets being merged, while a merge runs.
    pub sets: Option<(u32, u32)>,
    /// Counters of the current (or last) merge.
    pub stats: MergeStats,
    pub keys: usize,
    pub held: usize,
    pub span: Duration,
    /// The skew the span follows (the 99th percentile of the recent ones).
    pub skew: Duration,
    /// Set once the live set has handed over and the merge flipped: the index of the first
    /// record queued after that.
    pub barrier: Option<u64>,
    /// Copies held for their twin and dropped by an abort.
    pub dropped_on_abort: u64,
}

/// The merge as the collector runs it.
pub(super) struct Merger {
    live: u32,
    new: u32,
    window: MergeWindow<Record>,
    /// Live shards whose hand-over came (a shard may hand over before the collector is told
    /// to wait for it).
    handed_over: HashSet<u32>,
    /// The live shards to wait for, once told.
    expected: Option<HashSet<u32>>,
    out: Vec<Merged<Record>>,
}

/// The keys of [`event_key`]: random per process, so that nobody can craft two events with
/// the same key to hide one behind the other.
static EVENT_KEYS: LazyLock<std::hash::RandomState> = LazyLock::new(std::hash::RandomState::new);

/// The merge key of a dispatch: a keyed 64-bit hash of its `t` and its raw `d`.
pub fn event_key(payload: &[u8]) -> u64 {
    key_of(payload, crate::decode::scan::event_name_and_data(payload))
}

/// [`event_key`] of a payload already split into its `t` and `d`.
fn key_of(payload: &[u8], parts: Option<(&[u8], &[u8])>) -> u64 {
    let mut hasher = EVENT_KEYS.build_hasher();
    match parts {
        Some((name, data)) => {
            hasher.write(name);
            hasher.write_u8(0xff);
            hasher.write(data);
        }
        None => hasher.write(payload),
    }
    hasher.finish()
}

impl Merger {
    pub(super) fn new(live: u32, new: u32, limits: MergeLimits) -> Merger {
        Merger {
            live,
            new,
            window: MergeWindow::new(limits),
            handed_over: HashSet::new(),
            expected: None,
            out: Vec::new(),
        }
    }

    /// Takes a record from a ring; what goes into the queue now is appended to `into`, in order.
    /// Returns true when this record completed the hand-over (the merge flipped).
    pub(super) fn take(&mut self, record: Record, now: Instant, into: &mut Vec<Record>) -> bool {
        if record.kind == RecordKind::HandedOver {
            return self.handed_over(&record, into);
        }
        let side = if record.shard_count == self.live {
            Side::Live
        } else if record.shard_count == self.new {
            Side::New
        } else {
            into.push(record);
            return false;
        };
        if !matches!(
            record.kind,
            RecordKind::Dispatch | RecordKind::GuildCreate(_) | RecordKind::Redundant
        ) {
            into.push(record);
            return false;
        }
        let parts = crate::decode::scan::event_name_and_data(&record.payload);
        // `t` as it is in the payload, quoted.
        let answer = parts.is_some_and(|(name, _)| {
            name.strip_prefix(b"\"")
                .and_then(|name| name.strip_suffix(b"\""))
                .is_some_and(crate::reshard::answers_a_command)
        });
        if answer {
            // Only the session that was asked gets it: no twin will come.
            into.push(record);
            return false;
        }
        let key = key_of(&record.payload, parts);
        self.window.offer(side, key, record, now, &mut self.out);
        self.drain(into);
        false
    }

    /// Releases what waited past the span (call it now and then while the rings are quiet).
    pub(super) fn expire(&mut self, now: Instant, into: &mut Vec<Record>) {
        self.window.expire(now, &mut self.out);
        self.drain(into);
    }

    /// Wait for these live shards' hand-over (again, with fewer, if one of them stopped
    /// meanwhile and never will).
    pub(super) fn await_hand_over(&mut self, shard_ids: Vec<u32>, into: &mut Vec<Record>) -> bool {
        self.expected = Some(shard_ids.into_iter().collect());
        self.maybe_flip(into)
    }

    /// The shard count of the set being merged in.
    pub(super) fn new_set(&self) -> u32 {
        self.new
    }

    /// The merge's end after an abort: the held copies, dropped.
    pub(super) fn abort(self) -> u64 {
        self.window.abort().len() as u64
    }

    pub(super) fn report(&self, report: &mut MergeReport) {
        report.sets = Some((self.live, self.new));
        report.stats = self.window.stats();
        report.keys = self.window.keys();
        report.held = self.window.held();
        report.span = self.window.span();
        report.skew = self.window.skew();
    }

    fn handed_over(&mut self, record: &Record, into: &mut Vec<Record>) -> bool {
        if record.shard_count != self.live {
            return false;
        }
        self.handed_over.insert(record.shard_id);
        self.maybe_flip(into)
    }

    fn maybe_flip(&mut self, into: &mut Vec<Record>) -> bool {
        let complete = self
            .expected
            .as_ref()
            .is_some_and(|expected| expected.is_subset(&self.handed_over));
        if self.window.authority() == Side::New || !complete {
            return false;
        }
        self.window.flip(&mut self.out);
        self.drain(into);
        true
    }

    fn drain(&mut self, into: &mut Vec<Record>) {
        for merged in self.out.drain(..) {
            match merged {
                // A copy its set's filter dropped: it told the merge, it goes no further.
                Merged::Deliver(record) | Merged::Duplicate(record)
                    if record.kind == RecordKind::Redundant => {}
                Merged::Deliver(record) => into.push(record),
                Merged::Duplicate(record) => into.push(Record {
                    kind: RecordKind::Position,
                    payload: Bytes::new(),
                    ..record
                }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dispatch(shard_count: u32, shard_id: u32, seq: u64, d: &str) -> Record {
        Record {
            shard_id,
            shard_count,
            seq,
            session: 0,
            kind: RecordKind::Dispatch,
            payload: format!(r#"{{"t":"MESSAGE_CREATE","s":{seq},"op":0,"d":{d}}}"#)
                .into_bytes()
                .into(),
        }
    }

    fn handed_over(shard_count: u32, shard_id: u32) -> Record {
        Record {
            shard_id,
            shard_count,
            seq: 0,
            session: 0,
            kind: RecordKind::HandedOver,
            payload: Bytes::new(),
        }
    }

    fn summary(records: &[Record]) -> Vec<(u32, u32, u64, RecordKind)> {
        records
            .iter()
            .map(|r| (r.shard_count, r.shard_id, r.seq, r.kind))
            .collect()
    }

    #[test]
    fn the_key_ignores_the_sequence_and_reads_name_and_data() {
        let a = dispatch(4, 1, 10, r#"{"id":"1"}"#);
        let b = dispatch(8, 5, 3, r#"{"id":"1"}"#);
        let c = dispatch(8, 5, 3, r#"{"id":"2"}"#);
        assert_eq!(event_key(&a.payload), event_key(&b.payload));
        assert_ne!(event_key(&a.payload), event_key(&c.payload));
        let renamed = br#"{"t":"MESSAGE_UPDATE","s":3,"op":0,"d":{"id":"1"}}"#;
        assert_ne!(event_key(renamed), event_key(&a.payload));
        // Not a gateway message: keyed on every byte.
        assert_ne!(event_key(b"nope"), event_key(b"nope!"));
    }

    #[test]
    fn duplicates_become_positions_and_the_hand_over_flips_the_merge() {
        let now = Instant::now();
        let mut merger = Merger::new(4, 8, MergeLimits::DEFAULT);
        let mut into = Vec::new();
        // Live first: delivered; the new set's twin is a position record.
        assert!(!merger.take(dispatch(4, 1, 10, "{\"id\":1}"), now, &mut into));
        assert!(!merger.take(dispatch(8, 5, 3, "{\"id\":1}"), now, &mut into));
        assert_eq!(
            summary(&into),
            [
                (4, 1, 10, RecordKind::Dispatch),
                (8, 5, 3, RecordKind::Position)
            ]
        );
        assert!(into[1].payload.is_empty());
        into.clear();
        // New first: held until the switch, since the live shard hands over before its copy.
        merger.take(dispatch(8, 5, 4, "{\"id\":2}"), now, &mut into);
        assert!(into.is_empty());
        // Shard 1's hand-over may come before the collector is told to wait for it.
        assert!(!merger.take(handed_over(4, 1), now, &mut into));
        assert!(!merger.await_hand_over(vec![1, 2], &mut into));
        assert!(merger.take(handed_over(4, 2), now, &mut into));
        assert_eq!(summary(&into), [(8, 5, 4, RecordKind::Dispatch)]);
        // Other sets and the engine's own records pass untouched.
        into.clear();
        let mut notice = dispatch(2, 0, 0, "{}");
        notice.kind = RecordKind::Notice(crate::record::Notice::ShardReady);
        merger.take(notice, now, &mut into);
        merger.take(dispatch(16, 0, 1, "{}"), now, &mut into);
        assert_eq!(into.len(), 2);
    }

    #[test]
    fn a_commands_answer_passes_the_merge_even_after_the_switch() {
        let now = Instant::now();
        let chunk = |shard_count, seq| Record {
            shard_id: 1,
            shard_count,
            seq,
            session: 0,
            kind: RecordKind::Dispatch,
            payload: format!(
                r#"{{"t":"GUILD_MEMBERS_CHUNK","s":{seq},"op":0,"d":{{"nonce":"a"}}}}"#
            )
            .into_bytes()
            .into(),
        };
        let mut merger = Merger::new(4, 8, MergeLimits::DEFAULT);
        let mut into = Vec::new();
        // The new set's copy of an event waits for its twin; an answer to the live session does
        // not wait for one.
        merger.take(dispatch(8, 1, 1, "{\"id\":1}"), now, &mut into);
        merger.take(chunk(4, 7), now, &mut into);
        assert_eq!(summary(&into), [(4, 1, 7, RecordKind::Dispatch)]);
        into.clear();
        assert!(!merger.await_hand_over(vec![1], &mut into));
        assert!(merger.take(handed_over(4, 1), now, &mut into));
        into.clear();
        // Asked before the hand-over, answered after it: still the bot's.
        merger.take(chunk(4, 8), now, &mut into);
        assert_eq!(summary(&into), [(4, 1, 8, RecordKind::Dispatch)]);
        assert_eq!(merger.window.keys(), 0, "answers leave no key behind");
    }
}
