//! The ledger: per-shard sequence tracking and counters, plus the seeded failure dice. The
//! server parses a batch, then under one lock asks the dice whether to fail it and, only if not,
//! records it, so a batch answered 5xx leaves no trace (the engine retries it).
//!
//! Must not: do I/O, read the clock, or hold per-sequence state. Sequences are kept as merged
//! ranges ([`SeqSet`]), so a clean run of millions of records costs one map entry. (The one
//! exception is bounded: a Redis Streams consumer's window of recent ids,
//! [`crate::streams::IdWindow`], by which copies of an entry are dropped before they count.)

use std::collections::{BTreeMap, HashMap};

use crate::batch::{Dispatch, Entry, Notice, READY};
use crate::report::{Knobs, Report, RunReport, ShardReport, StreamTotals, Totals};
use crate::streams::{DedupKey, IdWindow, Place, Seen};

/// Everything the bot has recorded, and the dice that decide deliberate failures.
#[derive(Debug)]
pub struct Ledger {
    seed: u64,
    dice: SplitMix64,
    counters: BatchCounters,
    shards: HashMap<u32, ShardLedger>,
    /// Notices over all shards, and those without a shard, by name.
    notices: HashMap<String, u64>,
    /// The world events received, in order (only with `record_content`).
    content: Vec<crate::batch::ContentRecord>,
    /// The guilds of the backfill GUILD_CREATEs received, in order (only with `record_content`).
    backfill_guilds: Vec<u64>,
    /// What the Redis Streams consumers fed in; `None` until one started.
    streams: Option<StreamLedger>,
}

/// The Redis Streams side: its counters and the window of ids already recorded.
#[derive(Debug)]
struct StreamLedger {
    totals: StreamTotals,
    window: IdWindow,
}

/// What became of one stream entry the ledger was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamOutcome {
    /// Recorded; for a dispatch, what its sequence was.
    Recorded(Option<SeqOutcome>),
    /// Dropped: another entry with the same id was recorded first (the engine wrote it twice).
    Copy,
    /// Dropped: this very entry was recorded before (read again after a lost XACK, or claimed).
    Again,
}

/// How a batch is answered when the dice say fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    InternalServerError,
    ServiceUnavailable,
}

/// What happened to one sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqOutcome {
    /// New and not lower than anything seen in the run.
    InOrder,
    /// New but lower than the run's highest so far.
    OutOfOrder,
    /// Already received in this run.
    Duplicate,
}

impl Ledger {
    pub fn new(seed: u64) -> Self {
        Ledger {
            seed,
            dice: SplitMix64::new(seed),
            counters: BatchCounters::default(),
            shards: HashMap::new(),
            notices: HashMap::new(),
            content: Vec::new(),
            backfill_guilds: Vec::new(),
            streams: None,
        }
    }

    /// Makes the ledger ready for stream entries, with a window of at least `window_ids` ids
    /// (several consumers of one bot share it: the larger asked for wins).
    pub fn start_streams(&mut self, window_ids: usize) {
        match &mut self.streams {
            Some(streams) => streams.window.grow_to(window_ids),
            None => {
                self.streams = Some(StreamLedger {
                    totals: StreamTotals::default(),
                    window: IdWindow::new(window_ids),
                });
            }
        }
    }

    /// The stream counters, for the consumer to count what it did (reads, acks, claims,
    /// reconnects). Starts the streams side with the default window if nothing did.
    pub fn stream_totals_mut(&mut self) -> &mut StreamTotals {
        &mut self
            .streams
            .get_or_insert_with(|| StreamLedger {
                totals: StreamTotals::default(),
                window: IdWindow::new(crate::config::DEFAULT_DEDUP_WINDOW),
            })
            .totals
    }

    /// Records one stream entry unless the window has its key: a dispatch as
    /// [`Ledger::record_dispatch`], a notice as a batch's notice. Counts the entry as read.
    pub fn record_stream_entry(
        &mut self,
        key: DedupKey,
        place: Place,
        entry: &Entry<'_>,
    ) -> StreamOutcome {
        let totals = self.stream_totals_mut();
        totals.entries += 1;
        let streams = self
            .streams
            .as_mut()
            .expect("stream_totals_mut above started the streams side");
        match streams.window.check(key, place) {
            Seen::Copy => {
                streams.totals.copies += 1;
                return StreamOutcome::Copy;
            }
            Seen::Again => {
                streams.totals.read_again += 1;
                return StreamOutcome::Again;
            }
            Seen::New => {}
        }
        match entry {
            Entry::Dispatch(dispatch) => {
                StreamOutcome::Recorded(Some(self.record_dispatch(dispatch)))
            }
            Entry::Notice(notice) => {
                self.record_notice(notice);
                StreamOutcome::Recorded(None)
            }
        }
    }

    /// Rolls the dice for one batch: `Some` means answer with that failure and record nothing.
    /// The failure is counted here.
    pub fn roll_failure(&mut self, fail_rate: f64) -> Option<Failure> {
        if fail_rate <= 0.0 || self.dice.next_unit() >= fail_rate {
            return None;
        }
        self.counters.batches_failed_deliberately += 1;
        Some(if self.dice.next_u64() & 1 == 0 {
            Failure::InternalServerError
        } else {
            Failure::ServiceUnavailable
        })
    }

    /// Records an accepted batch.
    pub fn record_batch(&mut self, entries: &[Entry<'_>]) {
        self.counters.batches_ok += 1;
        for entry in entries {
            match entry {
                Entry::Dispatch(dispatch) => {
                    self.record_dispatch(dispatch);
                }
                Entry::Notice(notice) => self.record_notice(notice),
            }
        }
    }

    /// Records one dispatch and says what its sequence was.
    pub fn record_dispatch(&mut self, dispatch: &Dispatch<'_>) -> SeqOutcome {
        let shard = self.shards.entry(dispatch.shard_id).or_default();
        shard.records += 1;
        shard.bytes += dispatch.payload_bytes as u64;
        bump(&mut shard.by_type, &dispatch.event_type);
        if dispatch.event_type == READY || shard.runs.is_empty() {
            let redelivered = dispatch.event_type == READY
                && dispatch.session_id.is_some()
                && shard
                    .runs
                    .last()
                    .is_some_and(|run| run.session_id.as_deref() == dispatch.session_id.as_deref());
            if !redelivered {
                let session_id = if dispatch.event_type == READY {
                    dispatch.session_id.as_deref().map(str::to_owned)
                } else {
                    None
                };
                shard.runs.push(RunLedger::new(session_id));
            }
        }
        shard
            .runs
            .last_mut()
            .expect("a run was pushed above when there was none")
            .record(dispatch.seq)
    }

    fn record_notice(&mut self, notice: &Notice<'_>) {
        bump(&mut self.notices, &notice.name);
        if let Some(shard_id) = notice.shard_id {
            bump(
                &mut self.shards.entry(shard_id).or_default().notices,
                &notice.name,
            );
        }
    }

    pub fn count_unauthorized(&mut self) {
        self.counters.unauthorized += 1;
    }

    pub fn count_bad_batch(&mut self) {
        self.counters.bad_batches += 1;
    }

    pub fn count_oversized_batch(&mut self) {
        self.counters.oversized_batches += 1;
    }

    /// Forgets everything recorded. The dice keep rolling where they were.
    pub fn reset(&mut self) {
        self.counters = BatchCounters::default();
        self.shards.clear();
        self.notices.clear();
        self.content.clear();
        self.backfill_guilds.clear();
        if let Some(streams) = &mut self.streams {
            streams.totals = StreamTotals::default();
            streams.window.clear();
        }
    }

    /// Records the content hashes of an accepted batch's dispatches.
    pub fn record_content(&mut self, content: &crate::batch::BodyContent) {
        self.content.extend_from_slice(&content.events);
        self.backfill_guilds
            .extend_from_slice(&content.backfill_guilds);
    }

    /// The guilds of the backfill GUILD_CREATEs received, in order.
    pub fn backfill_guilds(&self) -> &[u64] {
        &self.backfill_guilds
    }

    /// The world events received, in order.
    pub fn content(&self) -> &[crate::batch::ContentRecord] {
        &self.content
    }

    pub fn report(&self, knobs: Knobs) -> Report {
        let shards: BTreeMap<u32, ShardReport> = self
            .shards
            .iter()
            .map(|(&shard_id, shard)| (shard_id, shard.report()))
            .collect();
        let mut totals = Totals {
            batches_ok: self.counters.batches_ok,
            batches_failed_deliberately: self.counters.batches_failed_deliberately,
            unauthorized: self.counters.unauthorized,
            bad_batches: self.counters.bad_batches,
            oversized_batches: self.counters.oversized_batches,
            notices: sorted(&self.notices),
            ..Totals::default()
        };
        for shard in shards.values() {
            totals.records += shard.records;
            totals.bytes += shard.bytes;
            totals.duplicates += shard.duplicates;
            totals.out_of_order += shard.out_of_order;
            totals.gaps += shard.gaps;
        }
        Report {
            seed: self.seed,
            knobs,
            totals,
            shards,
            streams: self.streams.as_ref().map(|streams| streams.totals.clone()),
        }
    }
}

#[derive(Debug, Default)]
struct BatchCounters {
    batches_ok: u64,
    batches_failed_deliberately: u64,
    unauthorized: u64,
    bad_batches: u64,
    oversized_batches: u64,
}

#[derive(Debug, Default)]
struct ShardLedger {
    records: u64,
    bytes: u64,
    by_type: HashMap<String, u64>,
    notices: HashMap<String, u64>,
    runs: Vec<RunLedger>,
}

impl ShardLedger {
    fn report(&self) -> ShardReport {
        let runs: Vec<RunReport> = self.runs.iter().map(RunLedger::report).collect();
        ShardReport {
            records: self.records,
            bytes: self.bytes,
            duplicates: runs.iter().map(|run| run.duplicates).sum(),
            out_of_order: runs.iter().map(|run| run.out_of_order).sum(),
            gaps: runs.iter().map(|run| run.gaps).sum(),
            by_type: sorted(&self.by_type),
            notices: sorted(&self.notices),
            runs,
        }
    }
}

#[derive(Debug)]
struct RunLedger {
    session_id: Option<String>,
    seqs: SeqSet,
    max_seq: Option<u64>,
    received: u64,
    duplicates: u64,
    out_of_order: u64,
}

impl RunLedger {
    fn new(session_id: Option<String>) -> Self {
        RunLedger {
            session_id,
            seqs: SeqSet::default(),
            max_seq: None,
            received: 0,
            duplicates: 0,
            out_of_order: 0,
        }
    }

    fn record(&mut self, seq: u64) -> SeqOutcome {
        self.received += 1;
        if !self.seqs.insert(seq) {
            self.duplicates += 1;
            return SeqOutcome::Duplicate;
        }
        match self.max_seq {
            Some(max_seq) if seq < max_seq => {
                self.out_of_order += 1;
                SeqOutcome::OutOfOrder
            }
            _ => {
                self.max_seq = Some(seq);
                SeqOutcome::InOrder
            }
        }
    }

    fn report(&self) -> RunReport {
        RunReport {
            session_id: self.session_id.clone(),
            first_seq: self.seqs.first().unwrap_or(0),
            max_seq: self.max_seq.unwrap_or(0),
            received: self.received,
            ranges: self
                .seqs
                .ranges()
                .map(|(first, last)| [first, last])
                .collect(),
            duplicates: self.duplicates,
            out_of_order: self.out_of_order,
            gaps: self.seqs.gaps(),
        }
    }
}

/// A set of sequence numbers stored as disjoint, non-adjacent inclusive ranges
/// (first → last), merged on insert.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SeqSet {
    ranges: BTreeMap<u64, u64>,
    len: u64,
}

impl SeqSet {
    /// Adds `seq`; false if it was already there.
    pub fn insert(&mut self, seq: u64) -> bool {
        // The common case by far: the next sequence of an in-order stream.
        if let Some(mut last) = self.ranges.last_entry()
            && seq.checked_sub(1) == Some(*last.get())
        {
            *last.get_mut() = seq;
            self.len += 1;
            return true;
        }
        let before = self
            .ranges
            .range(..=seq)
            .next_back()
            .map(|(&first, &last)| (first, last));
        if let Some((_, last)) = before
            && last >= seq
        {
            return false;
        }
        let joins_before = before.filter(|&(_, last)| last + 1 == seq);
        let joins_after = seq
            .checked_add(1)
            .and_then(|next| self.ranges.get(&next).map(|&last| (next, last)));
        match (joins_before, joins_after) {
            (Some((first, _)), Some((next, last))) => {
                self.ranges.remove(&next);
                self.ranges.insert(first, last);
            }
            (Some((first, _)), None) => {
                self.ranges.insert(first, seq);
            }
            (None, Some((next, last))) => {
                self.ranges.remove(&next);
                self.ranges.insert(seq, last);
            }
            (None, None) => {
                self.ranges.insert(seq, seq);
            }
        }
        self.len += 1;
        true
    }

    pub fn contains(&self, seq: u64) -> bool {
        self.ranges
            .range(..=seq)
            .next_back()
            .is_some_and(|(_, &last)| last >= seq)
    }

    /// Number of distinct sequences.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn first(&self) -> Option<u64> {
        self.ranges.first_key_value().map(|(&first, _)| first)
    }

    /// Sequences missing between the lowest and the highest present.
    pub fn gaps(&self) -> u64 {
        match (self.ranges.first_key_value(), self.ranges.last_key_value()) {
            (Some((&first, _)), Some((_, &last))) => last - first + 1 - self.len,
            _ => 0,
        }
    }

    /// The ranges, sorted, as inclusive (first, last).
    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|(&first, &last)| (first, last))
    }
}

fn bump(counts: &mut HashMap<String, u64>, key: &str) {
    match counts.get_mut(key) {
        Some(count) => *count += 1,
        None => {
            counts.insert(key.to_owned(), 1);
        }
    }
}

fn sorted(counts: &HashMap<String, u64>) -> BTreeMap<String, u64> {
    counts
        .iter()
        .map(|(key, &count)| (key.clone(), count))
        .collect()
}

/// SplitMix64: a tiny, well-mixed generator; plenty for deciding which batches fail, and its
/// whole state is the seed, so a run is replayable.
#[derive(Debug, Clone)]
struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn next_unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1_u64 << 53) as f64)
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    fn dispatch(shard_id: u32, event_type: &'static str, seq: u64) -> Dispatch<'static> {
        Dispatch {
            shard_id,
            event_type: Cow::Borrowed(event_type),
            seq,
            payload_bytes: 10,
            session_id: None,
        }
    }

    fn ready(shard_id: u32, session_id: Option<&'static str>) -> Dispatch<'static> {
        Dispatch {
            session_id: session_id.map(Cow::Borrowed),
            ..dispatch(shard_id, READY, 1)
        }
    }

    fn ranges(set: &SeqSet) -> Vec<(u64, u64)> {
        set.ranges().collect()
    }

    #[test]
    fn seq_set_merges_on_insert() {
        let mut set = SeqSet::default();
        for seq in [1, 2, 3, 7, 5, 9, 8] {
            assert!(set.insert(seq));
        }
        assert_eq!(ranges(&set), vec![(1, 3), (5, 5), (7, 9)]);
        assert_eq!(set.gaps(), 2);
        assert!(set.insert(4), "joins both neighbours");
        assert_eq!(ranges(&set), vec![(1, 5), (7, 9)]);
        assert!(set.insert(6));
        assert_eq!(ranges(&set), vec![(1, 9)]);
        assert_eq!((set.len(), set.gaps()), (9, 0));
        assert!(!set.insert(1) && !set.insert(5) && !set.insert(9));
        assert!(set.insert(0), "extends the first range downwards");
        assert_eq!(ranges(&set), vec![(0, 9)]);
        assert!(set.contains(0) && set.contains(9) && !set.contains(10));
    }

    #[test]
    fn seq_set_handles_extremes() {
        let mut set = SeqSet::default();
        assert!(set.is_empty() && set.gaps() == 0 && set.first().is_none());
        assert!(set.insert(u64::MAX));
        assert!(set.insert(u64::MAX - 1));
        assert!(!set.insert(u64::MAX));
        assert_eq!(ranges(&set), vec![(u64::MAX - 1, u64::MAX)]);
    }

    #[test]
    fn a_million_in_order_seqs_is_one_range() {
        let mut set = SeqSet::default();
        for seq in 1..=1_000_000 {
            assert!(set.insert(seq));
        }
        assert_eq!(ranges(&set), vec![(1, 1_000_000)]);
    }

    #[test]
    fn duplicate_out_of_order_and_gap_are_each_counted() {
        let mut ledger = Ledger::new(0);
        let outcomes: Vec<SeqOutcome> = [1, 2, 4, 3, 3, 7]
            .into_iter()
            .map(|seq| ledger.record_dispatch(&dispatch(0, "MESSAGE_CREATE", seq)))
            .collect();
        use SeqOutcome::*;
        assert_eq!(
            outcomes,
            vec![InOrder, InOrder, InOrder, OutOfOrder, Duplicate, InOrder]
        );
        let report = ledger.report(Knobs::default());
        let shard = &report.shards[&0];
        assert_eq!(shard.records, 6);
        assert_eq!(shard.bytes, 60);
        assert_eq!(
            (shard.duplicates, shard.out_of_order, shard.gaps),
            (1, 1, 2)
        );
        assert_eq!(shard.runs.len(), 1);
        assert_eq!(shard.runs[0].ranges, vec![[1, 4], [7, 7]]);
        assert_eq!(shard.runs[0].missing(), vec![[5, 6]]);
        assert_eq!((shard.runs[0].first_seq, shard.runs[0].max_seq), (1, 7));
    }

    #[test]
    fn ready_starts_a_run_unless_it_is_the_same_session_again() {
        let mut ledger = Ledger::new(0);
        ledger.record_dispatch(&dispatch(5, "GUILD_CREATE", 10));
        ledger.record_dispatch(&ready(5, Some("a")));
        ledger.record_dispatch(&dispatch(5, "GUILD_CREATE", 2));
        // The same READY delivered again: a duplicate in the same run, not a new session.
        assert_eq!(
            ledger.record_dispatch(&ready(5, Some("a"))),
            SeqOutcome::Duplicate
        );
        ledger.record_dispatch(&ready(5, Some("b")));
        ledger.record_dispatch(&ready(5, None));
        let shard = &ledger.report(Knobs::default()).shards[&5];
        type Run<'a> = (Option<&'a str>, Vec<[u64; 2]>, u64);
        let runs: Vec<Run<'_>> = shard
            .runs
            .iter()
            .map(|run| {
                (
                    run.session_id.as_deref(),
                    run.ranges.clone(),
                    run.duplicates,
                )
            })
            .collect();
        assert_eq!(
            runs,
            vec![
                (None, vec![[10, 10]], 0),
                (Some("a"), vec![[1, 2]], 1),
                (Some("b"), vec![[1, 1]], 0),
                (None, vec![[1, 1]], 0),
            ]
        );
        assert_eq!(shard.by_type[READY], 4);
    }

    #[test]
    fn stream_entries_are_recorded_once_and_copies_counted_apart() {
        use crate::streams::{EntryId, IdempotencyKey};
        let mut ledger = Ledger::new(0);
        ledger.start_streams(16);
        let key = |seq| {
            DedupKey::Event(IdempotencyKey {
                shard: 1,
                seq,
                tag: 9,
            })
        };
        let place = |ms| Place {
            partition: 1,
            entry_id: EntryId { ms, seq: 0 },
        };
        let entry = |seq| Entry::Dispatch(dispatch(1, "MESSAGE_CREATE", seq));
        let outcomes = [
            ledger.record_stream_entry(key(1), place(1), &entry(1)),
            ledger.record_stream_entry(key(2), place(2), &entry(2)),
            ledger.record_stream_entry(key(1), place(3), &entry(1)),
            ledger.record_stream_entry(key(2), place(2), &entry(2)),
        ];
        use SeqOutcome::InOrder;
        assert_eq!(
            outcomes,
            [
                StreamOutcome::Recorded(Some(InOrder)),
                StreamOutcome::Recorded(Some(InOrder)),
                StreamOutcome::Copy,
                StreamOutcome::Again,
            ]
        );
        let notice = Entry::Notice(Notice {
            shard_id: Some(1),
            name: "SHARD_READY".into(),
        });
        let notice_key = DedupKey::Entry {
            partition: 1,
            entry_id: EntryId { ms: 4, seq: 0 },
        };
        assert_eq!(
            ledger.record_stream_entry(notice_key, place(4), &notice),
            StreamOutcome::Recorded(None)
        );
        let report = ledger.report(Knobs::default());
        let streams = report.streams.clone().unwrap();
        assert_eq!(
            (streams.entries, streams.copies, streams.read_again),
            (5, 1, 1)
        );
        let shard = &report.shards[&1];
        assert_eq!((shard.records, shard.duplicates), (2, 0));
        assert_eq!(shard.notices["SHARD_READY"], 1);
        // An HTTP-only ledger has no stream section.
        assert_eq!(Ledger::new(0).report(Knobs::default()).streams, None);
        ledger.reset();
        assert_eq!(
            ledger.record_stream_entry(key(1), place(1), &entry(1)),
            StreamOutcome::Recorded(Some(InOrder)),
            "a reset forgets the ids too"
        );
    }

    #[test]
    fn dice_are_replayable_and_respect_the_extremes() {
        let rolls = |seed| {
            let mut ledger = Ledger::new(seed);
            (0..64)
                .map(|_| ledger.roll_failure(0.5))
                .collect::<Vec<_>>()
        };
        assert_eq!(rolls(7), rolls(7));
        assert_ne!(rolls(7), rolls(8));
        let mut ledger = Ledger::new(1);
        assert!((0..1000).all(|_| ledger.roll_failure(1.0).is_some()));
        assert!((0..1000).all(|_| ledger.roll_failure(0.0).is_none()));
        assert_eq!(
            ledger
                .report(Knobs::default())
                .totals
                .batches_failed_deliberately,
            1000
        );
    }
}
