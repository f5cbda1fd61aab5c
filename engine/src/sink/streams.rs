//! The Redis Streams target: each record becomes one stream entry, XADDed from the deliverer's
//! thread (never a core). A batch's XADDs go out in one write and Redis's answers are read
//! back, one entry id per XADD; the batch counts as delivered when every one came. Until then
//! it is retried, queued in memory and spilled exactly as a batch for an unreachable bot.
//!
//! Layout: a shard's records all go to the stream `{key}:{shard_id % partitions}`, so each
//! shard's order is the stream's order. An entry's fields, in this order: `shard`, `seq`,
//! `type` (the event name, empty for a notice without one), `kind` (`dispatch`,
//! `guild_create:backfill|join|return`, or `notice:NAME`), `id` (see [`idempotency_key`]),
//! `guild` (when the event has one) and `payload` (the raw bytes Discord sent, unchanged). Each
//! stream is trimmed to about `maxlen` entries (`MAXLEN ~`).
//!
//! # Cost
//!
//! The commands are RESP written by hand into one buffer kept between batches (`resp.rs`):
//! each partition's `XADD {key}:{p} MAXLEN ~ {maxlen} * shard` is encoded once, at start, the
//! `kind` values are constants, numbers go through `itoa`, and one walk over the payload gives
//! both `type` and `guild` ([`crate::decode::event_name_and_guild_id`]). Nothing is allocated
//! per record or per argument. The answers are read through a fixed 16 KiB buffer: exactly one
//! reply per XADD, each an entry id (a bulk string of at most 41 bytes) or an error. An error
//! reply, anything else, a timeout or a closed connection fails the batch; the connection is
//! dropped and the whole batch goes again (entries Redis took before the failure come twice,
//! with the same `id`).
//!
//! # Connection
//!
//! `--redis-url` is parsed by redis-rs (`redis://[user][:password@]host[:port][/db]`, or
//! `redis+unix:///path?db=N&pass=…`); the target opens the socket itself (TCP with
//! `TCP_NODELAY`, or a unix socket), sends `AUTH` and `SELECT` where the URL asks, and speaks
//! RESP2. 5 s bound every connect, write and read. TLS (`rediss://`) is not in this build. The
//! password never appears in a log line or an error.
//!
//! # Consumer groups
//!
//! Every [`INFO_POLL_INTERVAL`] (after a delivered batch, so on the deliverer's thread and
//! connection: no thread, socket or lock of its own, and nothing while no records flow — when
//! nothing is added, nothing is trimmed either), the target asks Redis about the consumer
//! groups of up to [`INFO_POLL_PARTITIONS_MAX`] streams (`MULTI`, `XINFO STREAM`, `XINFO
//! GROUPS`, `EXEC` per stream, one round trip) and counts the entries trimmed before each group
//! read them (see `info.rs` for what Redis's counters allow). The figures go to
//! [`StreamsStats`]. A failed poll fails no batch.

mod info;
mod resp;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use redis::{ConnectionAddr, ConnectionInfo};

use self::info::{EntryId, GroupCounter};
use self::resp::{Budget, Header, ReplyReader, RespError};
use super::target::{Failure, Target};
use crate::record::{GuildCreateClass, Notice, Record, RecordKind};

/// How long a connect, a write, or a wait for an answer may take.
const REDIS_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the consumer groups are looked at (while batches flow).
pub const INFO_POLL_INTERVAL: Duration = Duration::from_secs(5);

/// The most streams looked at in one poll; with more partitions, the next poll goes on where
/// this one stopped. Bounds a poll's round trip (two entries, payloads included, per stream).
pub const INFO_POLL_PARTITIONS_MAX: u32 = 16;

/// The most groups per stream counted; the others are read and forgotten.
pub const INFO_GROUPS_PER_STREAM_MAX: usize = 64;

/// What one poll's replies may hold (an `XINFO STREAM` holds its first and last entries).
const INFO_POLL_BUDGET: Budget = Budget {
    bytes: 256 * 1024 * 1024,
    elements: 1024 * 1024,
};

/// The command buffer kept between batches; a bigger one (a burst of big payloads) is freed.
const COMMANDS_BYTES_KEPT: usize = 4 * 1024 * 1024;

/// The longest entry id Redis can answer: two 20-digit numbers and a dash.
const ENTRY_ID_BYTES_MAX: u64 = 41;

/// Where the streams go, and how long they grow.
#[derive(Debug, Clone)]
pub struct StreamsConfig {
    pub key: String,
    pub partitions: u32,
    pub maxlen: u64,
}

/// What the streams target learned about the consumer groups of its streams, for the metrics
/// page. Created by the caller, shared with [`StreamsTarget::new`]; written by the deliverer
/// once per poll ([`INFO_POLL_INTERVAL`]), read by whoever renders the metrics. Suggested
/// families:
///
/// - `shardgate_stream_trimmed_unread_entries_total{stream,group}` (counter): entries trimmed
///   from the stream before the group read them, since this process first counted the group
///   ([`StreamGroupStats::trimmed_unread`]; no sample while `None`);
/// - `shardgate_stream_group_lag_entries{stream,group}` (gauge): Redis's own `lag` for the
///   group ([`StreamGroupStats::lag`]; no sample while Redis answers nil);
/// - `shardgate_stream_info_polls_total` and `shardgate_stream_info_poll_failures_total`
///   (counters): polls made, and those that failed (Redis away, or an answer not understood).
///
/// Group names come from Redis: escape them as label values (`\`, `"`, newline).
#[derive(Debug, Default)]
pub struct StreamsStats {
    groups: Mutex<Vec<StreamGroupStats>>,
    polls: AtomicU64,
    poll_failures: AtomicU64,
}

/// One consumer group of one stream, as of the last poll that saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamGroupStats {
    /// The stream's key, `{key}:{partition}`.
    pub stream: String,
    /// The group's name (invalid UTF-8 replaced, cut at 256 bytes).
    pub group: String,
    /// Entries trimmed before the group read them, counted since this process first could:
    /// `None` while Redis's counters have not allowed a count (a Redis before 7.0; a group whose
    /// `entries-read` is nil after it read, e.g. one created at `$` on a stream with entries,
    /// until it falls behind the stream's first entry or reaches its end).
    pub trimmed_unread: Option<u64>,
    /// Redis's `lag` for the group (`XINFO GROUPS`); `None` where Redis answers nil (it cannot
    /// tell, e.g. after an `XDEL` past the group's position).
    pub lag: Option<u64>,
}

impl StreamsStats {
    /// Every group of the streams polled so far, by stream and group.
    pub fn snapshot(&self) -> Vec<StreamGroupStats> {
        self.groups
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Polls made.
    pub fn polls_total(&self) -> u64 {
        self.polls.load(Ordering::Relaxed)
    }

    /// Polls that failed.
    pub fn poll_failures_total(&self) -> u64 {
        self.poll_failures.load(Ordering::Relaxed)
    }
}

pub struct StreamsTarget {
    /// Only its connection info is used (the URL as redis-rs parsed it).
    client: redis::Client,
    conn: Option<Connection>,
    config: StreamsConfig,
    /// Per partition, the XADD's arguments from `XADD` through the field name `shard`, encoded.
    xadd_heads: Vec<Vec<u8>>,
    /// The prepared batch's commands.
    commands: Vec<u8>,
    entries: usize,
    bytes: u64,
    stats: Arc<StreamsStats>,
    info_poll_interval: Duration,
    next_info_poll: Instant,
    /// Whether this target polls the consumer groups (one lane of a route does).
    info_polls: bool,
    /// The first partition the next poll looks at.
    next_info_partition: u32,
    /// By partition and group name.
    groups: BTreeMap<(u32, Vec<u8>), GroupTrack>,
    /// Whether the last poll failed (a failure is logged once, not every poll).
    info_failing: bool,
}

/// What the target keeps of a group between polls.
#[derive(Debug, Default)]
struct GroupTrack {
    counter: GroupCounter,
    lag: Option<u64>,
}

impl StreamsTarget {
    pub fn new(
        client: redis::Client,
        config: StreamsConfig,
        stats: Arc<StreamsStats>,
    ) -> StreamsTarget {
        let partitions = config.partitions.max(1);
        let maxlen = itoa::Buffer::new().format(config.maxlen).to_owned();
        let xadd_heads = (0..partitions)
            .map(|partition| {
                let mut head = Vec::new();
                resp::bulk(&mut head, b"XADD");
                resp::bulk(&mut head, stream_key(&config, partition).as_bytes());
                for arg in [b"MAXLEN", b"~" as &[u8], maxlen.as_bytes(), b"*", b"shard"] {
                    resp::bulk(&mut head, arg);
                }
                head
            })
            .collect();
        StreamsTarget {
            client,
            conn: None,
            config,
            xadd_heads,
            commands: Vec::new(),
            entries: 0,
            bytes: 0,
            stats,
            info_poll_interval: INFO_POLL_INTERVAL,
            next_info_poll: Instant::now(),
            info_polls: true,
            next_info_partition: 0,
            groups: BTreeMap::new(),
            info_failing: false,
        }
    }

    /// Polls the consumer groups every `interval` instead of [`INFO_POLL_INTERVAL`] (zero:
    /// after every delivered batch).
    pub fn with_info_poll_interval(mut self, interval: Duration) -> StreamsTarget {
        self.info_poll_interval = interval;
        self
    }

    /// Never polls the consumer groups: another lane of the same route does.
    pub fn without_info_polls(mut self) -> StreamsTarget {
        self.info_polls = false;
        self
    }

    /// The stream a shard's records go to.
    pub fn stream_of(config: &StreamsConfig, shard_id: u32) -> String {
        stream_key(config, shard_id % config.partitions.max(1))
    }

    /// Appends one record's XADD to the commands.
    fn encode(&mut self, record: &Record) {
        let (name, guild) = crate::decode::event_name_and_guild_id(&record.payload);
        let name = name
            .map(|name| name.strip_prefix(b"\"").unwrap_or(name))
            .map(|name| name.strip_suffix(b"\"").unwrap_or(name))
            .unwrap_or_default();
        let partition = record.shard_id % self.config.partitions.max(1);
        let out = &mut self.commands;
        // `XADD key MAXLEN ~ maxlen *` and seven field-value pairs (six without a guild).
        resp::array(out, if guild.is_some() { 20 } else { 18 });
        out.extend_from_slice(&self.xadd_heads[partition as usize]);
        resp::bulk_u64(out, u64::from(record.shard_id));
        resp::bulk(out, b"seq");
        resp::bulk_u64(out, record.seq);
        resp::bulk(out, b"type");
        resp::bulk(out, name);
        resp::bulk(out, b"kind");
        resp::bulk(out, kind_field(record.kind).as_bytes());
        resp::bulk(out, b"id");
        write_idempotency_key(out, record);
        if let Some(guild) = guild {
            resp::bulk(out, b"guild");
            resp::bulk_u64(out, guild);
        }
        resp::bulk(out, b"payload");
        resp::bulk(out, &record.payload);
    }

    /// One poll of the consumer groups (see the module docs); counts a failure and drops the
    /// connection where the answers were not understood.
    fn poll_info(&mut self) {
        self.next_info_poll = Instant::now() + self.info_poll_interval;
        if self.conn.is_none() {
            return;
        }
        self.stats.polls.fetch_add(1, Ordering::Relaxed);
        let partitions = self.config.partitions.max(1);
        let first = self.next_info_partition % partitions;
        let count = partitions.min(INFO_POLL_PARTITIONS_MAX);
        self.next_info_partition = (first + count) % partitions;
        let polled: Vec<u32> = (0..count).map(|n| (first + n) % partitions).collect();
        let keys: Vec<String> = polled
            .iter()
            .map(|&partition| stream_key(&self.config, partition))
            .collect();
        let outcome = match self.conn.as_mut() {
            Some(conn) => conn.xinfo(&keys),
            None => return,
        };
        match outcome {
            Ok(answers) => {
                if self.info_failing {
                    tracing::info!("the streams' consumer groups can be counted again");
                    self.info_failing = false;
                }
                for (&partition, answer) in polled.iter().zip(answers) {
                    self.count_groups(partition, answer);
                }
                self.publish();
            }
            Err(error) => {
                self.conn = None;
                self.stats.poll_failures.fetch_add(1, Ordering::Relaxed);
                if !self.info_failing {
                    tracing::warn!(%error, "cannot read the streams' consumer groups (XINFO); the counts wait for the next poll");
                    self.info_failing = true;
                }
            }
        }
    }

    /// Takes one stream's answer into the groups' counters (a stream without groups, or that
    /// does not exist, forgets its groups).
    fn count_groups(
        &mut self,
        partition: u32,
        answer: Option<(info::StreamInfo, Vec<info::GroupInfo>)>,
    ) {
        let (stream, groups) = answer.unwrap_or_else(|| {
            (
                info::StreamInfo {
                    length: 0,
                    entries_added: None,
                    last_generated: EntryId::ZERO,
                    first_entry: None,
                },
                Vec::new(),
            )
        });
        let mut kept = BTreeMap::new();
        for group in groups {
            let key = (partition, group.name.clone());
            let mut track = self.groups.remove(&key).unwrap_or_default();
            track.counter.observe(info::removed_unread(&stream, &group));
            track.lag = group.lag;
            kept.insert(key, track);
        }
        self.groups.retain(|(other, _), _| *other != partition);
        self.groups.append(&mut kept);
    }

    /// Hands the groups' figures to [`StreamsStats`].
    fn publish(&self) {
        let snapshot: Vec<StreamGroupStats> = self
            .groups
            .iter()
            .map(|((partition, group), track)| StreamGroupStats {
                stream: stream_key(&self.config, *partition),
                group: String::from_utf8_lossy(group).into_owned(),
                trimmed_unread: track.counter.total,
                lag: track.lag,
            })
            .collect();
        *self
            .stats
            .groups
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = snapshot;
    }
}

/// `{key}:{partition}`.
fn stream_key(config: &StreamsConfig, partition: u32) -> String {
    format!("{}:{partition}", config.key)
}

/// The `id` field: `shard:seq:TAG`, TAG 8 hex digits: the session's tag
/// ([`Record::session`], the CRC-32 of the session id) for a dispatch, the CRC-32 of the payload
/// for a notice (and for a record spilled by a version that kept no tag). A copy of the same
/// event written again (a resume's replay after a crash, a pipeline sent again) carries its
/// first copy's id; a later session's event with the same sequence does not, even with the
/// same bytes (a guild's backfill GUILD_CREATE after a new IDENTIFY). A consumer drops an
/// entry whose id it has seen.
pub fn idempotency_key(record: &Record) -> String {
    format!("{}:{}:{:08x}", record.shard_id, record.seq, id_tag(record))
}

/// The third part of [`idempotency_key`].
fn id_tag(record: &Record) -> u32 {
    match record.session {
        0 => crc32fast::hash(&record.payload),
        session => session,
    }
}

/// [`idempotency_key`] as one RESP argument, without a `String`.
fn write_idempotency_key(out: &mut Vec<u8>, record: &Record) {
    let mut shard = itoa::Buffer::new();
    let shard = shard.format(record.shard_id).as_bytes();
    let mut seq = itoa::Buffer::new();
    let seq = seq.format(record.seq).as_bytes();
    resp::bulk_header(out, shard.len() + 1 + seq.len() + 1 + 8);
    out.extend_from_slice(shard);
    out.push(b':');
    out.extend_from_slice(seq);
    out.push(b':');
    let tag = id_tag(record);
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for shift in (0..8).rev() {
        out.push(HEX[((tag >> (shift * 4)) & 0xf) as usize]);
    }
    out.extend_from_slice(b"\r\n");
}

/// The `kind` field of an entry.
fn kind_field(kind: RecordKind) -> &'static str {
    match kind {
        RecordKind::GuildCreate(GuildCreateClass::Backfill) => "guild_create:backfill",
        RecordKind::GuildCreate(GuildCreateClass::Join) => "guild_create:join",
        RecordKind::GuildCreate(GuildCreateClass::Return) => "guild_create:return",
        RecordKind::Notice(Notice::ShardReady) => "notice:SHARD_READY",
        RecordKind::Notice(Notice::AllShardsReady) => "notice:ALL_SHARDS_READY",
        RecordKind::Notice(Notice::ReshardStarted) => "notice:RESHARD_STARTED",
        RecordKind::Notice(Notice::ReshardFinished) => "notice:RESHARD_FINISHED",
        _ => "dispatch",
    }
}

impl Target for StreamsTarget {
    fn prepare(&mut self, batch: &[Record], skip: &[usize]) {
        self.commands.clear();
        self.entries = 0;
        self.bytes = 0;
        for (index, record) in batch.iter().enumerate() {
            if !record.kind.is_for_bot() || skip.binary_search(&index).is_ok() {
                continue;
            }
            self.encode(record);
            self.entries += 1;
            self.bytes += record.payload.len() as u64;
        }
    }

    fn send(&mut self) -> Result<(), Failure> {
        if self.entries == 0 {
            return Ok(());
        }
        if self.conn.is_none() {
            let conn = Connection::open(self.client.get_connection_info())
                .map_err(|error| Failure::Unreachable(format!("Redis (--redis-url): {error}")))?;
            self.conn = Some(conn);
        }
        let conn = self.conn.as_mut().expect("connected just above");
        if let Err(error) = conn.xadd(&self.commands, self.entries) {
            // A broken connection is not reused; the batch is sent again whole (the
            // entries Redis may have taken before the break come twice).
            self.conn = None;
            return Err(Failure::Unreachable(format!(
                "Redis (--redis-url): {error}"
            )));
        }
        if self.info_polls && Instant::now() >= self.next_info_poll {
            self.poll_info();
        }
        Ok(())
    }

    fn prepared_bytes(&self) -> u64 {
        self.bytes
    }

    fn shrink(&mut self) {
        if self.commands.capacity() > COMMANDS_BYTES_KEPT {
            self.commands = Vec::new();
        }
    }
}

/// A socket to Redis and the reader of its replies.
struct Connection {
    socket: Socket,
    replies: ReplyReader,
}

enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Read for Socket {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Socket::Tcp(socket) => socket.read(out),
            Socket::Unix(socket) => socket.read(out),
        }
    }
}

impl Write for Socket {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        match self {
            Socket::Tcp(socket) => socket.write(bytes),
            Socket::Unix(socket) => socket.write(bytes),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Socket::Tcp(socket) => socket.flush(),
            Socket::Unix(socket) => socket.flush(),
        }
    }
}

impl Connection {
    /// Connects, then `AUTH` and `SELECT` as the URL says. The error names the address, never
    /// the password.
    fn open(info: &ConnectionInfo) -> Result<Connection, String> {
        let socket = match info.addr() {
            ConnectionAddr::Tcp(host, port) => {
                let socket = connect_tcp(host, *port)?;
                socket
                    .set_nodelay(true)
                    .and_then(|()| socket.set_read_timeout(Some(REDIS_TIMEOUT)))
                    .and_then(|()| socket.set_write_timeout(Some(REDIS_TIMEOUT)))
                    .map_err(|error| format!("{host}:{port}: {error}"))?;
                Socket::Tcp(socket)
            }
            ConnectionAddr::Unix(path) => {
                // A unix socket's connect does not wait on a network; it has no timeout.
                let socket = UnixStream::connect(path)
                    .and_then(|socket| {
                        socket.set_read_timeout(Some(REDIS_TIMEOUT))?;
                        socket.set_write_timeout(Some(REDIS_TIMEOUT))?;
                        Ok(socket)
                    })
                    .map_err(|error| format!("unix socket {}: {error}", path.display()))?;
                Socket::Unix(socket)
            }
            _ => {
                return Err(
                    "rediss:// (TLS) is not supported by this build: use redis:// or a unix \
                     socket (redis+unix://)"
                        .to_owned(),
                );
            }
        };
        let mut conn = Connection {
            socket,
            replies: ReplyReader::new(),
        };
        conn.handshake(info)?;
        Ok(conn)
    }

    fn handshake(&mut self, info: &ConnectionInfo) -> Result<(), String> {
        let settings = info.redis_settings();
        let mut commands = Vec::new();
        let mut expected = Vec::new();
        if let Some(password) = settings.password() {
            match settings.username() {
                Some(username) => resp::command(
                    &mut commands,
                    &[b"AUTH", username.as_bytes(), password.as_bytes()],
                ),
                None => resp::command(&mut commands, &[b"AUTH", password.as_bytes()]),
            }
            expected.push("AUTH");
        }
        if settings.db() != 0 {
            let db = itoa::Buffer::new().format(settings.db()).to_owned();
            resp::command(&mut commands, &[b"SELECT", db.as_bytes()]);
            expected.push("SELECT");
        }
        if commands.is_empty() {
            return Ok(());
        }
        self.socket
            .write_all(&commands)
            .map_err(|error| RespError::io(&error).to_string())?;
        for command in expected {
            match self.replies.header(&mut self.socket) {
                Ok(Header::Simple(b"OK")) => {}
                Ok(Header::Error(text)) => {
                    return Err(format!("{command} refused: {}", resp::error_text(text)));
                }
                Ok(other) => {
                    return Err(RespError::Unexpected {
                        command,
                        got: other.kind(),
                    }
                    .to_string());
                }
                Err(error) => return Err(format!("{command}: {error}")),
            }
        }
        Ok(())
    }

    /// Writes a batch's XADDs and reads one entry id per XADD.
    fn xadd(&mut self, commands: &[u8], entries: usize) -> Result<(), String> {
        self.socket
            .write_all(commands)
            .map_err(|error| format!("sending {entries} XADDs: {}", RespError::io(&error)))?;
        for index in 1..=entries {
            let failure = |error: RespError| format!("XADD {index} of {entries}: {error}");
            match self.replies.header(&mut self.socket).map_err(failure)? {
                Header::Bulk(Some(len)) if len <= ENTRY_ID_BYTES_MAX => {
                    let id = self.replies.bulk(&mut self.socket, len).map_err(failure)?;
                    if EntryId::parse(id).is_none() {
                        return Err(failure(RespError::Malformed("an entry id")));
                    }
                }
                Header::Error(text) => {
                    return Err(failure(RespError::Refused(resp::error_text(text))));
                }
                other => {
                    return Err(failure(RespError::Unexpected {
                        command: "XADD",
                        got: other.kind(),
                    }));
                }
            }
        }
        Ok(())
    }

    /// `XINFO STREAM` and `XINFO GROUPS` of each key, each pair in one transaction, all in one
    /// round trip: per key, its figures, or `None` where Redis refused (no such key).
    #[allow(clippy::type_complexity)]
    fn xinfo(
        &mut self,
        keys: &[String],
    ) -> Result<Vec<Option<(info::StreamInfo, Vec<info::GroupInfo>)>>, RespError> {
        let mut commands = Vec::new();
        for key in keys {
            resp::command(&mut commands, &[b"MULTI"]);
            resp::command(&mut commands, &[b"XINFO", b"STREAM", key.as_bytes()]);
            resp::command(&mut commands, &[b"XINFO", b"GROUPS", key.as_bytes()]);
            resp::command(&mut commands, &[b"EXEC"]);
        }
        self.socket
            .write_all(&commands)
            .map_err(|error| RespError::io(&error))?;
        let mut budget = INFO_POLL_BUDGET;
        let mut answers = Vec::with_capacity(keys.len());
        for _ in keys {
            for (command, reply) in [("MULTI", "OK"), ("XINFO", "QUEUED"), ("XINFO", "QUEUED")] {
                match self.replies.header(&mut self.socket)? {
                    Header::Simple(text) if text == reply.as_bytes() => {}
                    other => {
                        return Err(RespError::Unexpected {
                            command,
                            got: other.kind(),
                        });
                    }
                }
            }
            match self.replies.header(&mut self.socket)? {
                Header::Array(Some(2)) => {}
                other => {
                    return Err(RespError::Unexpected {
                        command: "EXEC",
                        got: other.kind(),
                    });
                }
            }
            let stream = info::read_stream(&mut self.replies, &mut self.socket, &mut budget);
            let stream = match stream {
                Ok(stream) => Some(stream),
                Err(error) if error.leaves_connection_usable() => None,
                Err(error) => return Err(error),
            };
            let groups = info::read_groups(
                &mut self.replies,
                &mut self.socket,
                &mut budget,
                INFO_GROUPS_PER_STREAM_MAX,
            );
            let groups = match groups {
                Ok(groups) => Some(groups),
                Err(error) if error.leaves_connection_usable() => None,
                Err(error) => return Err(error),
            };
            answers.push(stream.zip(groups));
        }
        Ok(answers)
    }
}

/// A TCP connection to the first address of `host` that answers within [`REDIS_TIMEOUT`].
fn connect_tcp(host: &str, port: u16) -> Result<TcpStream, String> {
    let addrs = (host, port)
        .to_socket_addrs()
        .map_err(|error| format!("cannot resolve {host}:{port}: {error}"))?;
    let mut last_error = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, REDIS_TIMEOUT) {
            Ok(socket) => return Ok(socket),
            Err(error) => last_error = Some(error),
        }
    }
    Err(match last_error {
        Some(error) => format!("cannot connect to {host}:{port}: {error}"),
        None => format!("cannot connect to {host}:{port}: no address"),
    })
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn target(partitions: u32) -> StreamsTarget {
        StreamsTarget::new(
            redis::Client::open("redis://127.0.0.1:1/").unwrap(),
            StreamsConfig {
                key: "sg:events".into(),
                partitions,
                maxlen: 100_000,
            },
            Arc::default(),
        )
    }

    fn record(shard_id: u32, seq: u64, kind: RecordKind, payload: &[u8]) -> Record {
        Record {
            shard_id,
            shard_count: 4,
            seq,
            session: 0x5e55_1011,
            kind,
            payload: Bytes::copy_from_slice(payload),
        }
    }

    /// The pipeline the target built with redis-rs before it wrote RESP itself: what it sends
    /// must stay byte for byte the same.
    fn redis_rs_pipeline(config: &StreamsConfig, batch: &[Record], skip: &[usize]) -> Vec<u8> {
        let mut pipeline = redis::pipe();
        for (index, record) in batch.iter().enumerate() {
            if !record.kind.is_for_bot() || skip.binary_search(&index).is_ok() {
                continue;
            }
            let name = crate::decode::scan::event_name_and_data(&record.payload)
                .map(|(name, _)| name.strip_prefix(b"\"").unwrap_or(name))
                .map(|name| name.strip_suffix(b"\"").unwrap_or(name))
                .unwrap_or_default();
            let kind = match record.kind {
                RecordKind::GuildCreate(class) => format!("guild_create:{}", class.as_str()),
                RecordKind::Notice(notice) => format!("notice:{}", notice.as_str()),
                _ => "dispatch".to_owned(),
            };
            let command = pipeline
                .cmd("XADD")
                .arg(StreamsTarget::stream_of(config, record.shard_id))
                .arg("MAXLEN")
                .arg("~")
                .arg(config.maxlen)
                .arg("*")
                .arg("shard")
                .arg(record.shard_id)
                .arg("seq")
                .arg(record.seq)
                .arg("type")
                .arg(name)
                .arg("kind")
                .arg(kind)
                .arg("id")
                .arg(idempotency_key(record));
            if let Some(guild) = crate::decode::guild_id(&record.payload) {
                command.arg("guild").arg(guild);
            }
            command.arg("payload").arg(record.payload.as_ref());
        }
        pipeline.get_packed_pipeline()
    }

    fn every_kind_of_record() -> Vec<Record> {
        let message = br#"{"t":"MESSAGE_CREATE","s":7,"op":0,"d":{"id":"11","content":"hi","guild_id":"81384788765712384"}}"#;
        let dm = br#"{"t":"MESSAGE_CREATE","s":8,"op":0,"d":{"id":"12","content":"dm"}}"#;
        let guild = br#"{"t":"GUILD_CREATE","s":9,"op":0,"d":{"id":"41771983423143937","unavailable":false}}"#;
        let mut batch = vec![
            record(0, 7, RecordKind::Dispatch, message),
            record(1, 8, RecordKind::Dispatch, dm),
            record(
                2,
                u64::MAX,
                RecordKind::Dispatch,
                br#"{"t":null,"s":1,"op":0,"d":{}}"#,
            ),
            record(u32::MAX, 0, RecordKind::Dispatch, b"not json \xff"),
            record(3, 0, RecordKind::Dispatch, b""),
            record(5, 2, RecordKind::Session, b"{}"),
            record(5, 3, RecordKind::Position, b""),
        ];
        for class in [
            GuildCreateClass::Backfill,
            GuildCreateClass::Join,
            GuildCreateClass::Return,
        ] {
            batch.push(record(6, 9, RecordKind::GuildCreate(class), guild));
        }
        for notice in [
            Notice::ShardReady,
            Notice::AllShardsReady,
            Notice::ReshardStarted,
            Notice::ReshardFinished,
        ] {
            batch.push(record(
                7,
                0,
                RecordKind::Notice(notice),
                br#"{"from":4,"to":8}"#,
            ));
        }
        batch
    }

    #[test]
    fn the_commands_are_what_redis_rs_wrote_byte_for_byte() {
        for partitions in [1, 3] {
            let mut target = target(partitions);
            let batch = every_kind_of_record();
            for skip in [&[][..], &[0, 3, 8]] {
                target.prepare(&batch, skip);
                assert_eq!(
                    String::from_utf8_lossy(&target.commands),
                    String::from_utf8_lossy(&redis_rs_pipeline(&target.config, &batch, skip)),
                );
                let forwarded = batch
                    .iter()
                    .enumerate()
                    .filter(|(index, r)| r.kind.is_for_bot() && !skip.contains(index))
                    .count();
                assert_eq!(target.entries, forwarded);
            }
        }
        // Every generated payload, as the mock gateway writes them.
        let mut target = target(2);
        let batch: Vec<Record> = crate::decode::test_support::connection(3, 3, 300)
            .into_iter()
            .enumerate()
            .map(|(seq, item)| {
                record(
                    seq as u32 % 5,
                    seq as u64,
                    RecordKind::Dispatch,
                    &item.payload,
                )
            })
            .collect();
        target.prepare(&batch, &[]);
        assert!(target.commands == redis_rs_pipeline(&target.config, &batch, &[]));
    }

    #[test]
    fn kind_fields_and_ids() {
        assert_eq!(
            kind_field(RecordKind::GuildCreate(GuildCreateClass::Join)),
            format!("guild_create:{}", GuildCreateClass::Join.as_str())
        );
        for notice in [
            Notice::ShardReady,
            Notice::AllShardsReady,
            Notice::ReshardStarted,
            Notice::ReshardFinished,
        ] {
            assert_eq!(
                kind_field(RecordKind::Notice(notice)),
                format!("notice:{}", notice.as_str())
            );
        }
        let record = record(12, 345, RecordKind::Dispatch, b"{}");
        let mut out = Vec::new();
        write_idempotency_key(&mut out, &record);
        let mut expected = Vec::new();
        resp::bulk(&mut expected, idempotency_key(&record).as_bytes());
        assert_eq!(out, expected);
    }
}
