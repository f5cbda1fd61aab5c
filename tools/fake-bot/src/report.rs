//! The report: what the fake bot saw, as served by `GET /_bot/report`, written by
//! `--report-file` and returned by `FakeBot::report`. Tests in other crates parse the JSON back
//! into these same structs.
//!
//! Must not: hold live state or locks; these are plain values. Maps are `BTreeMap`s so the JSON
//! is sorted (shard ids become string keys, `"0"`, `"1"`, … in numeric order).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Everything recorded since start (or the last reset).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Seed of the failure dice: the same seed replays the same failures.
    pub seed: u64,
    /// The knobs in force when the report was taken.
    pub knobs: Knobs,
    pub totals: Totals,
    /// Per shard id.
    pub shards: BTreeMap<u32, ShardReport>,
    /// What the Redis Streams consumers did; absent when none ran (an HTTP-only bot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streams: Option<StreamTotals>,
}

/// The Redis Streams consumers' counters (over every consumer of one bot). What they record
/// goes to the same per-shard ledger as a batch's records, so [`Totals`] and the shards judge
/// it the same way.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamTotals {
    /// Entries read and checked against the layout: new ones, a consumer's own pending ones
    /// read again after a reconnect, and claimed ones; copies included, bad entries not.
    pub entries: u64,
    /// Entries dropped because another entry with the same `id` had been recorded: the engine
    /// wrote the event twice (a replay after a crash, a pipeline sent again).
    pub copies: u64,
    /// Entries dropped because that very entry had been recorded: read again after its XACK
    /// was lost, or claimed back.
    pub read_again: u64,
    /// Pending entries taken over from another consumer (or this one) with XAUTOCLAIM.
    pub claimed: u64,
    /// Entries acknowledged with XACK (recorded, dropped, bad and trimmed ones alike).
    pub acknowledged: u64,
    /// Entries that break the streams' layout (a field missing, an id that is not made of
    /// the entry, a payload that is not a dispatch…): acknowledged, not recorded.
    pub bad_entries: u64,
    /// Pending entries Redis had trimmed away (`MAXLEN`) before a consumer read them again:
    /// their records are lost to the group.
    pub trimmed_pending: u64,
    /// Connections made again after Redis went away or failed a command.
    pub reconnects: u64,
}

/// Counters over the whole bot. `records`, `bytes`, `duplicates`, `out_of_order` and `gaps` are
/// the sums over shards.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Batches recorded and acknowledged with a 2xx.
    pub batches_ok: u64,
    /// Batches answered 500/503 on purpose (`fail_rate`); none of their records were recorded.
    pub batches_failed_deliberately: u64,
    /// Batches answered 401 (secret missing or wrong).
    pub unauthorized: u64,
    /// Batches answered 400 or 415 (not JSON, wrong content type, or an envelope breaking the
    /// contract).
    pub bad_batches: u64,
    /// Batches answered 413 (`max_body_bytes`).
    pub oversized_batches: u64,
    /// Dispatch records (notices excluded), duplicates included.
    pub records: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub gaps: u64,
    /// Payload JSON bytes of the dispatch records.
    pub bytes: u64,
    /// Lifecycle notices by name, over all shards and those without a shard.
    pub notices: BTreeMap<String, u64>,
}

/// What one shard delivered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardReport {
    /// Dispatch records, duplicates included.
    pub records: u64,
    /// Payload JSON bytes of those records.
    pub bytes: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub gaps: u64,
    /// Records by the payload's `t`.
    pub by_type: BTreeMap<String, u64>,
    /// Lifecycle notices by name.
    pub notices: BTreeMap<String, u64>,
    /// Sequence runs, oldest first. A run starts at a READY (a new Discord session, whose
    /// sequence restarts at 1) or at the shard's first record.
    pub runs: Vec<RunReport>,
}

/// One run of sequence numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunReport {
    /// `d.session_id` of the READY that started the run, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Lowest sequence received in the run.
    pub first_seq: u64,
    /// Highest sequence received in the run.
    pub max_seq: u64,
    /// Records in the run, duplicates included.
    pub received: u64,
    /// Distinct sequences received, as sorted, disjoint, inclusive `[first, last]` ranges.
    pub ranges: Vec<[u64; 2]>,
    /// Records whose sequence had already been received in this run.
    pub duplicates: u64,
    /// Records whose (new) sequence was lower than the run's highest so far.
    pub out_of_order: u64,
    /// Sequences missing between `first_seq` and `max_seq`.
    pub gaps: u64,
}

impl Report {
    /// True when no shard shows a duplicate, an out-of-order record or a gap.
    pub fn is_clean(&self) -> bool {
        self.totals.duplicates == 0 && self.totals.out_of_order == 0 && self.totals.gaps == 0
    }
}

impl RunReport {
    /// The missing sequences, as inclusive `[first, last]` ranges.
    pub fn missing(&self) -> Vec<[u64; 2]> {
        self.ranges
            .windows(2)
            .map(|pair| [pair[0][1] + 1, pair[1][0] - 1])
            .collect()
    }

    /// Every sequence received.
    pub fn seqs(&self) -> std::collections::BTreeSet<u64> {
        self.ranges
            .iter()
            .flat_map(|&[first, last]| first..=last)
            .collect()
    }

    /// Number of distinct sequences received.
    pub fn distinct(&self) -> u64 {
        self.ranges
            .iter()
            .map(|[first, last]| last - first + 1)
            .sum()
    }
}

/// The runtime knobs, as read and changed through `POST /_bot/control`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Knobs {
    pub fail_rate: f64,
    pub slow_ms: u64,
}

/// Body of `POST /_bot/control`. Every key is optional; unknown keys are an error.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Control {
    /// New probability (0..=1) of answering a batch 500/503.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_rate: Option<f64>,
    /// New delay before answering each batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_ms: Option<u64>,
    /// Go away now for this long (close the listener and all connections), then come back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refuse_for_ms: Option<u64>,
    /// Clear everything recorded.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reset: bool,
}
