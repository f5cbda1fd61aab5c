//! The test world every client meets: a fresh in-process mock gateway (ws://, no TLS: the
//! twilight probe speaks ws:// only) with the same seed, shards, event mix, rate and events per
//! shard for every run, and the ledger arithmetic that says whether a run saw everything.
//!
//! Must not: start or measure a client; that is `shardgate.rs` and `twilight.rs`.

use std::collections::BTreeSet;

use anyhow::{Context as _, bail};
use mock_gateway::events::EventMix;
use mock_gateway::{Ledger, MockConfig, MockGateway};

/// Every non-privileged intent (shardgate's default), sent by both clients.
pub const INTENTS: u64 = 53_575_421;

/// What the mock streams, identical for every run.
#[derive(Clone, Debug)]
pub struct World {
    pub shards: u32,
    pub seed: u64,
    pub guilds: usize,
    /// Dispatches per second per shard; 0 = as fast as the client reads.
    pub rate: f64,
    pub events_per_shard: u64,
    pub mix: Option<EventMix>,
    /// Runtime threads of the mock (1: the whole mock on one core).
    pub mock_threads: usize,
}

impl World {
    /// A fresh mock: every identify bucket open at once (`max_concurrency` = shards), so that
    /// startup is the same handful of milliseconds for both clients.
    pub fn spawn_mock(&self) -> anyhow::Result<MockGateway> {
        let config = MockConfig {
            tls: false,
            seed: Some(self.seed),
            guilds: self.guilds,
            max_concurrency: self.shards,
            rate: self.rate,
            events_per_shard: self.events_per_shard,
            mix: self.mix.clone(),
            ..MockConfig::default()
        };
        MockGateway::spawn(config, self.mock_threads).context("starting the mock gateway")
    }

    /// The last sequence each shard's session will have: READY (1), one GUILD_CREATE per guild
    /// the shard owns (`(id >> 22) % shards`), then `events_per_shard` steady dispatches.
    pub fn last_seqs(&self, mock: &MockGateway) -> Vec<u64> {
        let mut guilds = vec![0_u64; self.shards as usize];
        for id in mock.guild_ids() {
            // The remainder is below `shards`, a u32: the cast cannot truncate.
            #[allow(clippy::cast_possible_truncation)]
            let shard = ((id >> 22) % u64::from(self.shards)) as usize;
            guilds[shard] += 1;
        }
        guilds
            .into_iter()
            .map(|count| 1 + count + self.events_per_shard)
            .collect()
    }

    /// The ledger shows one clean session per shard: one connection, one identify, no resume,
    /// no violation, and (when `complete`) the whole stream sent, ending at `last_seqs`.
    pub fn check_ledger(
        &self,
        ledger: &Ledger,
        last_seqs: &[u64],
        complete: bool,
    ) -> anyhow::Result<()> {
        if let Some(violation) = ledger.violations.first() {
            bail!(
                "the mock recorded {} violation(s), first: {:?} {}",
                ledger.violations.len(),
                violation.kind,
                violation.detail
            );
        }
        for shard in 0..self.shards {
            let Some(record) = ledger.shards.get(&shard) else {
                bail!("shard {shard} never connected");
            };
            if (record.connections, record.identifies, record.resumes) != (1, 1, 0) {
                bail!(
                    "shard {shard}: {} connections, {} identifies, {} resumes (want 1, 1, 0)",
                    record.connections,
                    record.identifies,
                    record.resumes
                );
            }
            let [session] = record.sessions.as_slice() else {
                bail!("shard {shard}: {} sessions, want 1", record.sessions.len());
            };
            let want = last_seqs[shard as usize];
            if complete && (session.first_seq, session.last_seq) != (1, want) {
                bail!(
                    "shard {shard}: the mock sent seqs {}..={}, want 1..={want}",
                    session.first_seq,
                    session.last_seq
                );
            }
        }
        Ok(())
    }

    /// When the mock has sent every shard its whole stream: per shard, the last seq the bot
    /// must get (the last one that is not a redundant MESSAGE_UPDATE). Records arrive in seq
    /// order per shard, so once the bot holds it, it holds everything before it too (which
    /// [`World::check_bot`] then verifies).
    pub fn last_expected_seqs(&self, ledger: &Ledger) -> Option<Vec<u64>> {
        (0..self.shards)
            .map(|shard| {
                let session = ledger.shards.get(&shard)?.sessions.first()?;
                if session.steady_dispatches() < self.events_per_shard {
                    return None;
                }
                (session.first_seq..=session.last_seq)
                    .rev()
                    .find(|seq| !session.redundant_update_seqs.contains(seq))
            })
            .collect()
    }

    /// Dispatches the mock sent over all shards (what a client that saw everything decoded).
    pub fn dispatches_sent(&self, ledger: &Ledger) -> u64 {
        ledger
            .shards
            .values()
            .flat_map(|shard| &shard.sessions)
            .map(|session| session.dispatches)
            .sum()
    }

    /// The bot got every expected seq of each shard, in one run, no duplicate, nothing out of
    /// order, and nothing the mock did not send. Redundant MESSAGE_UPDATEs may arrive: the
    /// filter forwards an update of a message its cache has forgotten, by design. Returns how
    /// many did.
    pub fn check_bot(&self, ledger: &Ledger, report: &fake_bot::Report) -> anyhow::Result<u64> {
        let mut redundant_forwarded = 0;
        for shard in 0..self.shards {
            let session = ledger
                .shards
                .get(&shard)
                .and_then(|record| record.sessions.first())
                .with_context(|| format!("shard {shard}: no session in the ledger"))?;
            let Some(got) = report.shards.get(&shard) else {
                bail!("shard {shard}: the bot got nothing");
            };
            if (got.duplicates, got.out_of_order) != (0, 0) {
                bail!(
                    "shard {shard}: the bot got {} duplicates and {} out of order",
                    got.duplicates,
                    got.out_of_order
                );
            }
            let [run] = got.runs.as_slice() else {
                bail!("shard {shard}: the bot saw {} runs, want 1", got.runs.len());
            };
            let received = run.seqs();
            let want = session.expected_seqs();
            let missing = want.difference(&received).count();
            let redundant: BTreeSet<u64> = session.redundant_update_seqs.iter().copied().collect();
            let extra: Vec<u64> = received.difference(&want).copied().collect();
            let unknown = extra.iter().filter(|seq| !redundant.contains(seq)).count();
            if missing > 0 || unknown > 0 {
                bail!(
                    "shard {shard}: the bot is missing {missing} seqs and has {unknown} the mock \
                     never sent"
                );
            }
            redundant_forwarded += extra.len() as u64;
        }
        Ok(redundant_forwarded)
    }
}
