//! The Redis Streams target: each record becomes one stream entry, XADDed in one pipeline per
//! batch from the deliverer's thread (never a core). A batch counts as delivered when Redis
//! answered every XADD; until then it is retried, queued in memory and spilled exactly as a
//! batch for an unreachable bot.
//!
//! Layout: a shard's records all go to the stream `{key}:{shard_id % partitions}`, so each
//! shard's order is the stream's order. An entry's fields: `shard`, `seq`, `type` (the event
//! name, empty for a notice without one), `guild` (when the event has one), `kind` (`dispatch`,
//! `guild_create:backfill|join|return`, or `notice:NAME`), `id` (see [`idempotency_key`]) and
//! `payload` (the raw bytes Discord sent, unchanged). Each stream is trimmed to about `maxlen`
//! entries (`MAXLEN ~`).

use std::time::Duration;

use redis::{Connection, Pipeline};

use super::target::{Failure, Target};
use crate::record::{Record, RecordKind};

/// How long a connect, or a pipeline's answer, may take.
const REDIS_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the streams go, and how long they grow.
#[derive(Debug, Clone)]
pub struct StreamsConfig {
    pub key: String,
    pub partitions: u32,
    pub maxlen: u64,
}

pub struct StreamsTarget {
    client: redis::Client,
    conn: Option<Connection>,
    config: StreamsConfig,
    pipeline: Pipeline,
    entries: usize,
    bytes: u64,
}

impl StreamsTarget {
    pub fn new(client: redis::Client, config: StreamsConfig) -> StreamsTarget {
        StreamsTarget {
            client,
            conn: None,
            config,
            pipeline: redis::pipe(),
            entries: 0,
            bytes: 0,
        }
    }

    /// The stream a shard's records go to.
    pub fn stream_of(config: &StreamsConfig, shard_id: u32) -> String {
        format!("{}:{}", config.key, shard_id % config.partitions.max(1))
    }
}

/// The `id` field: `shard:seq:crc32 of the payload`. A copy of the same event written again (a
/// resume's replay after a crash, a pipeline sent again) carries the same id as its first copy,
/// since Discord replays the same bytes; a new session's event with the same sequence does not
/// (its payload differs). A consumer drops an entry whose id it has seen.
pub fn idempotency_key(record: &Record) -> String {
    format!(
        "{}:{}:{:08x}",
        record.shard_id,
        record.seq,
        crc32fast::hash(&record.payload)
    )
}

/// The `kind` field of an entry.
fn kind_field(kind: RecordKind) -> String {
    match kind {
        RecordKind::GuildCreate(class) => format!("guild_create:{}", class.as_str()),
        RecordKind::Notice(notice) => format!("notice:{}", notice.as_str()),
        _ => "dispatch".to_owned(),
    }
}

impl Target for StreamsTarget {
    fn prepare(&mut self, batch: &[Record], skip: &[usize]) {
        self.pipeline = redis::pipe();
        self.entries = 0;
        self.bytes = 0;
        for (index, record) in batch.iter().enumerate() {
            if !record.kind.is_for_bot() || skip.binary_search(&index).is_ok() {
                continue;
            }
            // One walk for both (see `event_name_and_guild_id`).
            let (name, guild) = crate::decode::event_name_and_guild_id(&record.payload);
            let name = name
                .map(|name| name.strip_prefix(b"\"").unwrap_or(name))
                .map(|name| name.strip_suffix(b"\"").unwrap_or(name))
                .unwrap_or_default();
            let command = self
                .pipeline
                .cmd("XADD")
                .arg(Self::stream_of(&self.config, record.shard_id))
                .arg("MAXLEN")
                .arg("~")
                .arg(self.config.maxlen)
                .arg("*")
                .arg("shard")
                .arg(record.shard_id)
                .arg("seq")
                .arg(record.seq)
                .arg("type")
                .arg(name)
                .arg("kind")
                .arg(kind_field(record.kind))
                .arg("id")
                .arg(idempotency_key(record));
            if let Some(guild) = guild {
                command.arg("guild").arg(guild);
            }
            command.arg("payload").arg(record.payload.as_ref());
            self.entries += 1;
            self.bytes += record.payload.len() as u64;
        }
    }

    fn send(&mut self) -> Result<(), Failure> {
        if self.entries == 0 {
            return Ok(());
        }
        if self.conn.is_none() {
            let conn = self
                .client
                .get_connection_with_timeout(REDIS_TIMEOUT)
                .and_then(|conn| {
                    conn.set_read_timeout(Some(REDIS_TIMEOUT))?;
                    conn.set_write_timeout(Some(REDIS_TIMEOUT))?;
                    Ok(conn)
                })
                .map_err(|error| Failure::Unreachable(format!("Redis (--redis-url): {error}")))?;
            self.conn = Some(conn);
        }
        let conn = self.conn.as_mut().expect("just connected");
        match self.pipeline.query::<Vec<redis::Value>>(conn) {
            Ok(ids) if ids.len() == self.entries => Ok(()),
            Ok(ids) => {
                self.conn = None;
                Err(Failure::Unreachable(format!(
                    "Redis answered {} of {} XADDs",
                    ids.len(),
                    self.entries
                )))
            }
            Err(error) => {
                // A broken connection is not reused; the batch is sent again whole (the
                // entries Redis may have taken before the break come twice).
                self.conn = None;
                Err(Failure::Unreachable(format!(
                    "Redis (--redis-url): {error}"
                )))
            }
        }
    }

    fn prepared_bytes(&self) -> u64 {
        self.bytes
    }

    fn shrink(&mut self) {
        self.pipeline = redis::pipe();
    }
}
