//! The Redis Streams consumer: one thread with a blocking Redis client that reads every
//! partition stream through a consumer group and feeds the bot's ledger, exactly as batches
//! feed it. On each connect it creates the group (XGROUP CREATE … 0 MKSTREAM) and reads its own
//! pending entries first (what it was given before a reconnect but never acknowledged); then it
//! reads new entries (XREADGROUP … BLOCK, bounded) and, every half of the claim idle time,
//! takes over entries pending on a dead consumer (XAUTOCLAIM). Each entry is checked, recorded
//! unless the id window has it, and only then acknowledged (XACK).
//!
//! Must not: panic on anything Redis answers, log the Redis URL or per-entry detail above
//! trace, spin while Redis is away (it backs off up to [`BACKOFF_MAX_MS`]), or keep going once
//! asked to stop (every wait is bounded: the block time, a backoff slice, or, while Redis hangs,
//! [`ANSWER_TIMEOUT`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use redis::{Connection, Value};
use tracing::{debug, info, trace, warn};

use crate::batch::BodyContent;
use crate::config::{ConfigError, StreamsConfig};
use crate::ledger::StreamOutcome;
use crate::server::Shared;
use crate::streams::{
    EntryId, EntryKind, Place, RawEntry, ReplyError, StreamEntry, parse_autoclaim_reply,
    parse_read_reply,
};

/// First pause after a failure; it doubles up to [`BACKOFF_MAX_MS`].
const BACKOFF_MIN_MS: u64 = 50;
/// Longest pause between attempts while Redis is away.
const BACKOFF_MAX_MS: u64 = 1_000;
/// How long a connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a command's answer may take beyond the block time. A Redis that hangs for less is
/// waited out on the same connection; after a longer hang the consumer reconnects, and a read
/// it sent before may still run once Redis goes on: the entries that read took stay pending on
/// this consumer until a claim sweep takes them back (late, so out of order in the ledger).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Pages of one XAUTOCLAIM sweep, or of one read of the consumer's own pending entries, before
/// the loop looks at the stop flag and new entries again.
const PAGES_PER_SWEEP: usize = 64;
/// Slice of a backoff pause after which the stop flag is looked at again.
const STOP_CHECK_MS: u64 = 20;

/// A running consumer. Dropping it (or [`StreamConsumer::stop`]) stops its thread within about
/// one block time (while Redis hangs, [`ANSWER_TIMEOUT`] more) and waits for it.
pub struct StreamConsumer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    consumer: String,
}

impl StreamConsumer {
    /// Checks the config, opens the client (no connection yet) and starts the thread.
    pub(crate) fn start(
        shared: Arc<Shared>,
        config: StreamsConfig,
    ) -> anyhow::Result<StreamConsumer> {
        config.validate()?;
        let url = config.redis_url.as_ref().ok_or(ConfigError::NoRedisUrl)?;
        // The client's own error may quote the URL (and a password in it): only ours is shown.
        let client = redis::Client::open(url.expose()).map_err(|_| ConfigError::BadRedisUrl)?;
        shared.ledger().start_streams(config.dedup_window);
        let stop = Arc::new(AtomicBool::new(false));
        let consumer = config.consumer.clone();
        let worker = Worker {
            keys: config.stream_keys(),
            shared,
            client,
            config,
            stop: Arc::clone(&stop),
            conn: None,
            connected_before: false,
            next_claim_at: Instant::now(),
        };
        let thread = std::thread::Builder::new()
            .name("fake-bot-streams".to_owned())
            .spawn(move || worker.run())
            .context("cannot start the stream consumer's thread")?;
        Ok(StreamConsumer {
            stop,
            thread: Some(thread),
            consumer,
        })
    }

    /// The consumer's name in its group.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// Stops the consumer and waits for its thread. What it read and recorded stays recorded;
    /// an entry read but not yet acknowledged stays pending for the group.
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for StreamConsumer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            warn!("the stream consumer's thread panicked");
        }
    }
}

impl std::fmt::Debug for StreamConsumer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("StreamConsumer")
            .field("consumer", &self.consumer)
            .finish_non_exhaustive()
    }
}

/// Why one step of the loop failed; the connection is dropped and made again after a pause.
#[derive(Debug, thiserror::Error)]
enum ConsumeError {
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Reply(#[from] ReplyError),
}

struct Worker {
    shared: Arc<Shared>,
    client: redis::Client,
    config: StreamsConfig,
    keys: Vec<String>,
    stop: Arc<AtomicBool>,
    conn: Option<Connection>,
    connected_before: bool,
    next_claim_at: Instant,
}

impl Worker {
    fn run(mut self) {
        let mut backoff_ms = BACKOFF_MIN_MS;
        let mut failures: u64 = 0;
        while !self.stopped() {
            match self.step() {
                Ok(()) => {
                    backoff_ms = BACKOFF_MIN_MS;
                    failures = 0;
                }
                Err(error) => {
                    self.conn = None;
                    failures += 1;
                    // The first failure of an outage is worth a line; its retries are not.
                    if failures == 1 {
                        warn!(consumer = %self.config.consumer, %error, "stream consumer: Redis failed; retrying");
                    } else {
                        debug!(consumer = %self.config.consumer, failures, %error, "stream consumer: still failing");
                    }
                    self.pause(Duration::from_millis(backoff_ms));
                    backoff_ms = (backoff_ms * 2).min(BACKOFF_MAX_MS);
                }
            }
        }
        debug!(consumer = %self.config.consumer, "stream consumer stopped");
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Sleeps `pause`, in slices, unless asked to stop.
    fn pause(&self, pause: Duration) {
        let until = Instant::now() + pause;
        while !self.stopped() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(Duration::from_millis(STOP_CHECK_MS)));
        }
    }

    /// One round: connect if needed, claim if due, read new entries once.
    fn step(&mut self) -> Result<(), ConsumeError> {
        if self.conn.is_none() {
            self.connect()?;
        }
        if Instant::now() >= self.next_claim_at {
            self.claim()?;
            self.next_claim_at =
                Instant::now() + Duration::from_millis((self.config.claim_min_idle_ms / 2).max(1));
        }
        self.read_new()
    }

    /// Connects, creates the group on every stream and reads this consumer's own pending
    /// entries (given to it before and never acknowledged: lost with a connection, or left by
    /// an earlier run under the same name).
    fn connect(&mut self) -> Result<(), ConsumeError> {
        let conn = self.client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
        conn.set_read_timeout(Some(
            Duration::from_millis(self.config.block_ms) + ANSWER_TIMEOUT,
        ))?;
        conn.set_write_timeout(Some(ANSWER_TIMEOUT))?;
        self.conn = Some(conn);
        for key in self.keys.clone() {
            let created: redis::RedisResult<Value> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&key)
                .arg(&self.config.group)
                .arg("0")
                .arg("MKSTREAM")
                .query(self.conn_mut());
            match created {
                Ok(_) => debug!(stream = %key, group = %self.config.group, "group created"),
                Err(error) if error.code() == Some("BUSYGROUP") => {}
                Err(error) => return Err(error.into()),
            }
        }
        if std::mem::replace(&mut self.connected_before, true) {
            self.shared.ledger().stream_totals_mut().reconnects += 1;
            info!(consumer = %self.config.consumer, "stream consumer: Redis is back");
        } else {
            info!(
                consumer = %self.config.consumer,
                group = %self.config.group,
                stream_key = %self.config.stream_key,
                partitions = self.config.stream_partitions,
                "stream consumer connected"
            );
        }
        for partition in 0..self.config.stream_partitions {
            self.read_own_pending(partition)?;
        }
        Ok(())
    }

    fn conn_mut(&mut self) -> &mut Connection {
        self.conn
            .as_mut()
            .expect("callers run after connect() stored a connection")
    }

    /// XREADGROUP from `0`: this consumer's pending entries of one stream, page by page.
    fn read_own_pending(&mut self, partition: u32) -> Result<(), ConsumeError> {
        let key = self.keys[partition as usize].clone();
        let mut after = EntryId::ZERO;
        for _ in 0..PAGES_PER_SWEEP {
            if self.stopped() {
                break;
            }
            let reply: Value = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(&self.config.group)
                .arg(&self.config.consumer)
                .arg("COUNT")
                .arg(self.config.read_count)
                .arg("STREAMS")
                .arg(&key)
                .arg(after.to_string())
                .query(self.conn_mut())?;
            let entries: Vec<RawEntry> = parse_read_reply(reply)?
                .into_iter()
                .flat_map(|batch| batch.entries)
                .collect();
            let Some(last) = entries.last().map(|entry| entry.id) else {
                break;
            };
            debug!(stream = %key, entries = entries.len(), "own pending entries read again");
            self.handle(partition, &entries, 0)?;
            after = last;
        }
        Ok(())
    }

    /// XAUTOCLAIM on every stream: entries idle past the claim time, whoever holds them.
    fn claim(&mut self) -> Result<(), ConsumeError> {
        for partition in 0..self.config.stream_partitions {
            let key = self.keys[partition as usize].clone();
            let mut cursor = EntryId::ZERO;
            for _ in 0..PAGES_PER_SWEEP {
                if self.stopped() {
                    return Ok(());
                }
                let reply: Value = redis::cmd("XAUTOCLAIM")
                    .arg(&key)
                    .arg(&self.config.group)
                    .arg(&self.config.consumer)
                    .arg(self.config.claim_min_idle_ms)
                    .arg(cursor.to_string())
                    .arg("COUNT")
                    .arg(self.config.read_count)
                    .query(self.conn_mut())?;
                let claim = parse_autoclaim_reply(reply)?;
                if !claim.entries.is_empty() || !claim.deleted.is_empty() {
                    debug!(
                        stream = %key,
                        claimed = claim.entries.len(),
                        deleted = claim.deleted.len(),
                        "pending entries claimed"
                    );
                }
                // XAUTOCLAIM has already taken deleted ids off the pending list.
                self.shared.ledger().stream_totals_mut().trimmed_pending +=
                    claim.deleted.len() as u64;
                let claimed = claim.entries.len() as u64;
                self.handle(partition, &claim.entries, claimed)?;
                if claim.cursor == EntryId::ZERO {
                    break;
                }
                cursor = claim.cursor;
            }
        }
        Ok(())
    }

    /// XREADGROUP `>` on every stream, waiting at most the block time.
    fn read_new(&mut self) -> Result<(), ConsumeError> {
        let mut command = redis::cmd("XREADGROUP");
        command
            .arg("GROUP")
            .arg(&self.config.group)
            .arg(&self.config.consumer)
            .arg("COUNT")
            .arg(self.config.read_count)
            .arg("BLOCK")
            .arg(self.config.block_ms)
            .arg("STREAMS")
            .arg(&self.keys);
        for _ in &self.keys {
            command.arg(">");
        }
        let reply: Value = command.query(self.conn_mut())?;
        for batch in parse_read_reply(reply)? {
            let Some(partition) = self.keys.iter().position(|key| key.as_bytes() == batch.key)
            else {
                warn!("XREADGROUP answered for a stream it was not asked about");
                continue;
            };
            self.handle(partition as u32, &batch.entries, 0)?;
        }
        Ok(())
    }

    /// Checks and records `entries` of one partition (under one lock), then acknowledges all of
    /// them: recorded, dropped as copies, bad, or trimmed.
    fn handle(
        &mut self,
        partition: u32,
        entries: &[RawEntry],
        claimed: u64,
    ) -> Result<(), ConsumeError> {
        if entries.is_empty() {
            return Ok(());
        }
        let partitions = self.config.stream_partitions;
        let record_content = self.shared.record_content();
        // Checked (and their content hashed) outside the ledger's lock, then recorded under one
        // lock for the whole batch. `None`: trimmed away since it was first read.
        let checked: Vec<_> = entries
            .iter()
            .map(|raw| {
                let entry = raw
                    .fields
                    .as_ref()
                    .map(|fields| StreamEntry::parse(fields, partition, partitions));
                let content = match &entry {
                    Some(Ok(entry)) if record_content => content_of(entry),
                    _ => BodyContent::default(),
                };
                (raw.id, entry, content)
            })
            .collect();
        {
            let mut ledger = self.shared.ledger();
            ledger.stream_totals_mut().claimed += claimed;
            let mut content = BodyContent::default();
            for (entry_id, entry, entry_content) in checked {
                let entry = match entry {
                    None => {
                        ledger.stream_totals_mut().trimmed_pending += 1;
                        continue;
                    }
                    Some(Err(error)) => {
                        ledger.stream_totals_mut().bad_entries += 1;
                        debug!(partition, %entry_id, %error, "bad stream entry");
                        continue;
                    }
                    Some(Ok(entry)) => entry,
                };
                let place = Place {
                    partition,
                    entry_id,
                };
                let outcome = ledger.record_stream_entry(
                    entry.dedup_key(partition, entry_id),
                    place,
                    &entry.entry,
                );
                trace!(partition, %entry_id, shard = entry.shard, seq = entry.seq, ?outcome, "stream entry");
                if matches!(outcome, StreamOutcome::Recorded(_)) {
                    content.events.extend(entry_content.events);
                    content
                        .backfill_guilds
                        .extend(entry_content.backfill_guilds);
                }
            }
            if record_content {
                ledger.record_content(&content);
            }
        }
        let key = self.keys[partition as usize].clone();
        let acknowledged: i64 = redis::cmd("XACK")
            .arg(&key)
            .arg(&self.config.group)
            .arg(
                entries
                    .iter()
                    .map(|entry| entry.id.to_string())
                    .collect::<Vec<_>>(),
            )
            .query(self.conn_mut())?;
        self.shared.ledger().stream_totals_mut().acknowledged += acknowledged.max(0) as u64;
        Ok(())
    }
}

/// An entry's share of the content hashes ([`crate::BotConfig::record_content`]). A payload the
/// dispatch reader took but whose `d` cannot be read adds nothing, as in a batch.
fn content_of(entry: &StreamEntry<'_>) -> BodyContent {
    let (notice, guild_create) = match entry.kind {
        EntryKind::Notice(_) => (true, None),
        EntryKind::GuildCreate(class) => (false, Some(class)),
        EntryKind::Dispatch => (false, None),
    };
    let mut content = BodyContent::default();
    if crate::batch::add_content(
        &mut content,
        entry.shard,
        notice,
        guild_create,
        entry.payload,
    )
    .is_err()
    {
        return BodyContent::default();
    }
    content
}
