//! The fleet's state in Redis, one blocking connection, every multi-key step one Lua script.
//!
//! Keys (all under `sg:{CLUSTER}:`, the braces being a Redis Cluster hash tag so that every
//! script's keys live on one node):
//!
//! | key | type | what |
//! |---|---|---|
//! | `hosts` | zset | host id → end of its lease (ms, Redis clock) |
//! | `host:{id}` | hash | admin address, capacity, pinned shards, counters, first and last seen |
//! | `assigner` | string | the assigner's host id, with a TTL (its lease) |
//! | `assignment` | hash | shard id → the host that should run it |
//! | `placements` | hash | shard id → host: where operators moved shards; the assigner keeps them there while that host lives |
//! | `shard_count` | string | the fleet's shard count (the first host's) |
//! | `epoch` | string | when this Redis's fleet state began (ms): a Redis that lost its data starts a new one |
//! | `fence` | counter | the last fencing token granted (starts at the epoch × 1000) |
//! | `lease:{shard}` | hash, TTL | the shard's holder and its token |
//! | `session:{shard}` | hash | session id, resume URL, acknowledged sequence, shard count, token |
//! | `identify:{bucket}` | hash | when the bucket's next identify may go (`next_free`) |
//! | `identify:{bucket}:queue`, `:owners` | zset, hash | waiting tickets in order, and their hosts |
//! | `identify:order` | counter | the queues' arrival order |
//! | `budget` | hash | the day's `session_start_limit`: total, remaining, reset time |
//! | `identify:stats` | hash | grants, and tickets dropped because their host died |
//! | `identify:wake` | channel | a bucket's number, published when its queue moved |
//!
//! Never touched by a core: the control thread owns a [`Store`].

use std::collections::BTreeMap;
use std::time::Duration;

use redis::{Commands as _, Connection, Script};

use crate::shard::Session;

/// How long a connect, read or write to Redis may take before the step counts as failed.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

macro_rules! script {
    ($file:literal) => {
        Script::new(concat!(
            include_str!("scripts/clock.lua"),
            include_str!(concat!("scripts/", $file))
        ))
    };
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis did not answer, refused, or answered something no script returns. The URL is never
    /// part of the message (it may hold a password).
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("Redis answered {what} with something shardgate did not write: {detail}")]
    Unexpected { what: &'static str, detail: String },
}

/// Key names of one cluster.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(cluster: &str) -> Keys {
        Keys {
            prefix: format!("sg:{{{cluster}}}:"),
        }
    }

    fn key(&self, name: impl std::fmt::Display) -> String {
        format!("{}{name}", self.prefix)
    }

    pub fn hosts(&self) -> String {
        self.key("hosts")
    }
    pub fn host(&self, id: &str) -> String {
        self.key(format_args!("host:{id}"))
    }
    pub fn assigner(&self) -> String {
        self.key("assigner")
    }
    pub fn assignment(&self) -> String {
        self.key("assignment")
    }
    pub fn fence(&self) -> String {
        self.key("fence")
    }
    pub fn epoch(&self) -> String {
        self.key("epoch")
    }
    pub fn shard_count(&self) -> String {
        self.key("shard_count")
    }
    pub fn placements(&self) -> String {
        self.key("placements")
    }
    pub fn lease(&self, shard: u32) -> String {
        self.key(format_args!("lease:{shard}"))
    }
    pub fn session(&self, shard: u32) -> String {
        self.key(format_args!("session:{shard}"))
    }
    pub fn bucket(&self, bucket: u32) -> String {
        self.key(format_args!("identify:{bucket}"))
    }
    pub fn queue(&self, bucket: u32) -> String {
        self.key(format_args!("identify:{bucket}:queue"))
    }
    pub fn owners(&self, bucket: u32) -> String {
        self.key(format_args!("identify:{bucket}:owners"))
    }
    pub fn order(&self) -> String {
        self.key("identify:order")
    }
    pub fn budget(&self) -> String {
        self.key("budget")
    }
    pub fn identify_stats(&self) -> String {
        self.key("identify:stats")
    }
    pub fn wake_channel(&self) -> String {
        self.key("identify:wake")
    }
}

/// What a host says of itself in its lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    pub id: String,
    /// Where its admin API listens (other hosts forward commands there).
    pub admin: String,
    /// Most shards it takes from the assigner (its weight too).
    pub capacity: u32,
    /// Shards it runs by `--shards`, outside the assignment; empty when it takes assigned ones.
    pub pinned: Vec<u32>,
}

/// What [`Store::host_beat`] learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Beat {
    /// Redis's clock, ms.
    pub now_ms: u64,
    /// The host was not registered (first beat, or its lease had run out).
    pub fresh: bool,
    /// When the fleet state in this Redis began (ms); it changes when Redis loses its data.
    pub epoch_ms: u64,
}

/// A live host as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRecord {
    pub info: HostInfo,
    /// End of its lease, ms on Redis's clock.
    pub lease_until_ms: u64,
    /// Its counters as of its last beat (JSON; "" before the first).
    pub stats: String,
}

/// The answer to [`Store::acquire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquire {
    /// This host holds the shard, with this fencing token.
    Granted(u64),
    /// Another host holds it (its token).
    Held(u64),
    /// The assignment names another host.
    NotAssigned,
    /// This host's own lease ran out: it may take nothing until it renews.
    HostExpired,
    /// The fleet state is younger than a shard lease: shards still running on hosts that
    /// Redis forgot may only be taken after this long.
    Quiet(Duration),
}

/// What became of one lease in [`Store::renew`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    Renewed,
    /// Another host holds it, or the assignment names another host: stop the shard.
    Lost,
    /// It was gone (Redis lost it) and is this host's again, with a new token.
    Retaken(u64),
}

/// A shard's lease as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    pub host: String,
    pub token: u64,
    /// Left of it, as Redis counts.
    pub ttl: Duration,
}

/// A shard's session in Redis: where a new owner resumes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    pub session: Session,
    pub shard_count: u32,
    /// The fencing token of the lease it was written under.
    pub token: u64,
    pub host: String,
}

/// The answer to [`Store::take_identify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Identify now; `at_ms` is the grant on Redis's clock.
    Granted { at_ms: u64 },
    /// Not yet: another ticket heads the bucket (`None`: wait to be woken), or the bucket's
    /// interval has this long to run.
    Wait(Option<Duration>),
    /// The ticket is not queued (its host's lease ran out meanwhile, or it was cancelled).
    NotQueued,
    /// The day's budget (less the reserve, for a new session) is spent until the reset.
    BudgetSpent(Duration),
}

/// One blocking connection to the cluster's keys.
pub struct Store {
    conn: Connection,
    keys: Keys,
    scripts: Scripts,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("keys", &self.keys).finish()
    }
}

struct Scripts {
    host_beat: Script,
    host_leave: Script,
    assigner: Script,
    assign: Script,
    shard_acquire: Script,
    shard_renew: Script,
    shard_release: Script,
    session_save: Script,
    identify_enqueue: Script,
    identify_take: Script,
    identify_sent: Script,
    identify_cancel: Script,
    budget_reconcile: Script,
}

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            host_beat: script!("host_beat.lua"),
            host_leave: script!("host_leave.lua"),
            assigner: script!("assigner.lua"),
            assign: script!("assign.lua"),
            shard_acquire: script!("shard_acquire.lua"),
            shard_renew: script!("shard_renew.lua"),
            shard_release: script!("shard_release.lua"),
            session_save: script!("session_save.lua"),
            identify_enqueue: script!("identify_enqueue.lua"),
            identify_take: script!("identify_take.lua"),
            identify_sent: script!("identify_sent.lua"),
            identify_cancel: script!("identify_cancel.lua"),
            budget_reconcile: script!("budget_reconcile.lua"),
        }
    }
}

/// A `redis://` URL with any user and password left out, for logs.
pub fn redacted_url(url: &str) -> String {
    match redis::parse_redis_url(url) {
        Some(parsed) => {
            let port = parsed
                .port()
                .map_or(String::new(), |port| format!(":{port}"));
            format!(
                "{}://{}{port}{}",
                parsed.scheme(),
                parsed.host_str().unwrap_or(""),
                parsed.path()
            )
        }
        None => "(not a redis:// URL)".to_owned(),
    }
}

/// Opens a client for `url` (checked, nothing connected yet).
pub fn client(url: &str) -> Result<redis::Client, StoreError> {
    Ok(redis::Client::open(url)?)
}

impl Store {
    /// Connects with [`REDIS_TIMEOUT`] on every step.
    pub fn connect(client: &redis::Client, cluster: &str) -> Result<Store, StoreError> {
        let conn = client.get_connection_with_timeout(REDIS_TIMEOUT)?;
        conn.set_read_timeout(Some(REDIS_TIMEOUT))?;
        conn.set_write_timeout(Some(REDIS_TIMEOUT))?;
        Ok(Store {
            conn,
            keys: Keys::new(cluster),
            scripts: Scripts::new(),
        })
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Registers or renews this host's lease, with its counters (JSON) for the fleet's totals.
    pub fn host_beat(
        &mut self,
        host: &HostInfo,
        lease: Duration,
        stats: &str,
    ) -> Result<Beat, StoreError> {
        let pinned = host
            .pinned
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let (now_ms, fresh, epoch_ms): (u64, u8, u64) = self
            .scripts
            .host_beat
            .key(self.keys.hosts())
            .key(self.keys.host(&host.id))
            .key(self.keys.epoch())
            .arg(&host.id)
            .arg(millis(lease))
            .arg(&host.admin)
            .arg(host.capacity)
            .arg(pinned)
            .arg(stats)
            .invoke(&mut self.conn)?;
        Ok(Beat {
            now_ms,
            fresh: fresh == 1,
            epoch_ms,
        })
    }

    /// Ends this host's lease now (a clean stop, after its shard leases were released).
    pub fn host_leave(&mut self, host_id: &str) -> Result<(), StoreError> {
        let _: i64 = self
            .scripts
            .host_leave
            .key(self.keys.hosts())
            .key(self.keys.host(host_id))
            .key(self.keys.assigner())
            .arg(host_id)
            .invoke(&mut self.conn)?;
        Ok(())
    }

    /// The hosts whose lease runs at Redis's `now_ms`, by id.
    pub fn hosts(&mut self, now_ms: u64) -> Result<Vec<HostRecord>, StoreError> {
        let ids: Vec<(String, u64)> =
            self.conn
                .zrangebyscore_withscores(self.keys.hosts(), now_ms, "+inf")?;
        let mut pipe = redis::pipe();
        for (id, _) in &ids {
            pipe.hgetall(self.keys.host(id));
        }
        let details: Vec<BTreeMap<String, String>> = pipe.query(&mut self.conn)?;
        let mut hosts: Vec<HostRecord> = ids
            .into_iter()
            .zip(details)
            .map(|((id, until), fields)| HostRecord {
                info: HostInfo {
                    id,
                    admin: fields.get("admin").cloned().unwrap_or_default(),
                    capacity: fields
                        .get("capacity")
                        .and_then(|text| text.parse().ok())
                        .unwrap_or(0),
                    pinned: fields.get("pinned").map_or_else(Vec::new, |text| {
                        text.split(',').filter_map(|id| id.parse().ok()).collect()
                    }),
                },
                lease_until_ms: until,
                stats: fields.get("stats").cloned().unwrap_or_default(),
            })
            .collect();
        hosts.sort_by(|a, b| a.info.id.cmp(&b.info.id));
        Ok(hosts)
    }

    /// Takes or renews the assigner's lease. Returns whether this host is the assigner, and
    /// who is ("" when nobody).
    pub fn assigner(
        &mut self,
        host_id: &str,
        lease: Duration,
    ) -> Result<(bool, String), StoreError> {
        let (mine, holder): (u8, String) = self
            .scripts
            .assigner
            .key(self.keys.assigner())
            .key(self.keys.hosts())
            .arg(host_id)
            .arg(millis(lease))
            .invoke(&mut self.conn)?;
        Ok((mine == 1, holder))
    }

    /// Writes assignment changes (`None` unassigns), only while `host_id` is the assigner.
    pub fn write_assignment(
        &mut self,
        host_id: &str,
        changes: &[(u32, Option<&str>)],
    ) -> Result<bool, StoreError> {
        let mut invocation = self.scripts.assign.prepare_invoke();
        invocation
            .key(self.keys.assigner())
            .key(self.keys.assignment())
            .arg(host_id);
        for (shard, host) in changes {
            invocation.arg(*shard).arg(host.unwrap_or(""));
        }
        let written: u8 = invocation.invoke(&mut self.conn)?;
        Ok(written == 1)
    }

    /// Shard id → the host the assignment names.
    pub fn assignment(&mut self) -> Result<BTreeMap<u32, String>, StoreError> {
        let raw: BTreeMap<String, String> = self.conn.hgetall(self.keys.assignment())?;
        raw.into_iter()
            .map(|(shard, host)| match shard.parse() {
                Ok(shard) => Ok((shard, host)),
                Err(_) => Err(StoreError::Unexpected {
                    what: "the assignment",
                    detail: format!("field {shard:?} is not a shard id"),
                }),
            })
            .collect()
    }

    /// Takes `shard`'s lease for `lease` if the assignment names this host (or `pinned`) and
    /// nobody holds it.
    pub fn acquire(
        &mut self,
        shard: u32,
        host_id: &str,
        lease: Duration,
        pinned: bool,
    ) -> Result<Acquire, StoreError> {
        let (token, other): (u64, i64) = self
            .scripts
            .shard_acquire
            .key(self.keys.lease(shard))
            .key(self.keys.fence())
            .key(self.keys.assignment())
            .key(self.keys.hosts())
            .key(self.keys.epoch())
            .arg(shard)
            .arg(host_id)
            .arg(millis(lease))
            .arg(u8::from(pinned))
            .invoke(&mut self.conn)?;
        Ok(match (token, other) {
            (0, -1) => Acquire::NotAssigned,
            (0, -2) => Acquire::HostExpired,
            (0, quiet) if quiet <= -3 => {
                Acquire::Quiet(Duration::from_millis(quiet.unsigned_abs() - 3))
            }
            (0, held) => Acquire::Held(u64::try_from(held).unwrap_or(0)),
            (token, _) => Acquire::Granted(token),
        })
    }

    /// Renews every lease in `held` (shard, token) in one round trip. Call it only for leases
    /// whose deadline has not passed: a lease Redis lost is taken again.
    pub fn renew(
        &mut self,
        host_id: &str,
        lease: Duration,
        held: &[(u32, u64)],
    ) -> Result<Vec<Renewal>, StoreError> {
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let mut invocation = self.scripts.shard_renew.prepare_invoke();
        invocation
            .key(self.keys.fence())
            .key(self.keys.assignment())
            .key(self.keys.epoch())
            .arg(host_id)
            .arg(millis(lease));
        for (shard, token) in held {
            invocation
                .key(self.keys.lease(*shard))
                .arg(*shard)
                .arg(*token);
        }
        let renewed: Vec<i64> = invocation.invoke(&mut self.conn)?;
        if renewed.len() != held.len() {
            return Err(StoreError::Unexpected {
                what: "a renewal",
                detail: format!("{} answers for {} leases", renewed.len(), held.len()),
            });
        }
        Ok(renewed
            .into_iter()
            .map(|one| match u64::try_from(one) {
                Ok(0) => Renewal::Renewed,
                Ok(token) => Renewal::Retaken(token),
                Err(_) => Renewal::Lost,
            })
            .collect())
    }

    /// Gives `shard`'s lease up; `false` when it was not held with `token`.
    pub fn release(&mut self, shard: u32, host_id: &str, token: u64) -> Result<bool, StoreError> {
        let released: u8 = self
            .scripts
            .shard_release
            .key(self.keys.lease(shard))
            .arg(host_id)
            .arg(token)
            .invoke(&mut self.conn)?;
        Ok(released == 1)
    }

    /// The leases of shards `0..total_shards` that someone holds.
    pub fn leases(&mut self, total_shards: u32) -> Result<BTreeMap<u32, LeaseRecord>, StoreError> {
        let mut pipe = redis::pipe();
        for shard in 0..total_shards {
            pipe.cmd("HMGET")
                .arg(self.keys.lease(shard))
                .arg("host")
                .arg("token")
                .pttl(self.keys.lease(shard));
        }
        let raw: Vec<redis::Value> = pipe.query(&mut self.conn)?;
        let mut leases = BTreeMap::new();
        for (shard, pair) in (0..total_shards).zip(raw.chunks(2)) {
            let [fields, ttl] = pair else { break };
            let (host, token): (Option<String>, Option<u64>) =
                redis::from_redis_value(fields.clone()).map_err(parse_error("a lease"))?;
            let ttl: i64 = redis::from_redis_value(ttl.clone()).map_err(parse_error("a lease"))?;
            if let (Some(host), Some(token), Ok(ttl)) = (host, token, u64::try_from(ttl)) {
                leases.insert(
                    shard,
                    LeaseRecord {
                        host,
                        token,
                        ttl: Duration::from_millis(ttl),
                    },
                );
            }
        }
        Ok(leases)
    }

    /// Saves `shard`'s session under its lease; `false` when the lease is not this host's
    /// with `token` (the write is refused: a host that lost a shard cannot move its session).
    pub fn save_session(
        &mut self,
        shard: u32,
        host_id: &str,
        token: u64,
        session: &Session,
        shard_count: u32,
    ) -> Result<bool, StoreError> {
        let written: u8 = self
            .scripts
            .session_save
            .key(self.keys.session(shard))
            .key(self.keys.lease(shard))
            .arg(host_id)
            .arg(token)
            .arg(&session.session_id)
            .arg(session.resume_url.as_deref().unwrap_or(""))
            .arg(session.sequence)
            .arg(shard_count)
            .invoke(&mut self.conn)?;
        Ok(written == 1)
    }

    /// Saves many sessions in one round trip (a pipeline of [`Store::save_session`]'s script);
    /// `true` where written.
    pub fn save_sessions(
        &mut self,
        host_id: &str,
        sessions: &[(u32, u64, &Session)],
        shard_count: u32,
    ) -> Result<Vec<bool>, StoreError> {
        if sessions.is_empty() {
            return Ok(Vec::new());
        }
        let hash = self.scripts.session_save.load(&mut self.conn)?;
        let mut pipe = redis::pipe();
        for (shard, token, session) in sessions {
            pipe.cmd("EVALSHA")
                .arg(&hash)
                .arg(2)
                .arg(self.keys.session(*shard))
                .arg(self.keys.lease(*shard))
                .arg(host_id)
                .arg(*token)
                .arg(&session.session_id)
                .arg(session.resume_url.as_deref().unwrap_or(""))
                .arg(session.sequence)
                .arg(shard_count);
        }
        let written: Vec<u8> = pipe.query(&mut self.conn)?;
        Ok(written.into_iter().map(|one| one == 1).collect())
    }

    /// `shard`'s stored session, if any.
    pub fn load_session(&mut self, shard: u32) -> Result<Option<StoredSession>, StoreError> {
        let fields: BTreeMap<String, String> = self.conn.hgetall(self.keys.session(shard))?;
        if fields.is_empty() {
            return Ok(None);
        }
        let number = |name: &'static str| {
            fields
                .get(name)
                .and_then(|text| text.parse::<u64>().ok())
                .ok_or_else(|| StoreError::Unexpected {
                    what: "a session",
                    detail: format!("shard {shard}: field {name} missing or not a number"),
                })
        };
        let session_id = fields.get("session_id").cloned().unwrap_or_default();
        if session_id.is_empty() {
            return Err(StoreError::Unexpected {
                what: "a session",
                detail: format!("shard {shard}: no session_id"),
            });
        }
        Ok(Some(StoredSession {
            session: Session {
                session_id,
                resume_url: fields
                    .get("resume_url")
                    .filter(|url| !url.is_empty())
                    .cloned(),
                sequence: number("seq")?,
            },
            shard_count: u32::try_from(number("shard_count")?).unwrap_or(0),
            token: number("token")?,
            host: fields.get("host").cloned().unwrap_or_default(),
        }))
    }

    /// Queues `ticket` in `bucket` (`reconnect`: a running shard's, ahead of new sessions).
    /// Returns its place (0 = next).
    pub fn enqueue_identify(
        &mut self,
        bucket: u32,
        ticket: &str,
        host_id: &str,
        reconnect: bool,
    ) -> Result<u64, StoreError> {
        Ok(self
            .scripts
            .identify_enqueue
            .key(self.keys.queue(bucket))
            .key(self.keys.owners(bucket))
            .key(self.keys.order())
            .arg(ticket)
            .arg(host_id)
            .arg(if reconnect { 0 } else { 1 })
            .invoke(&mut self.conn)?)
    }

    /// Asks for `ticket`'s identify (see [`Take`]). `interval` is Discord's window plus the
    /// safety margin; `reserve` identifies of the day's budget are kept for reconnects.
    pub fn take_identify(
        &mut self,
        bucket: u32,
        ticket: &str,
        interval: Duration,
        reserve: u32,
        new_session: bool,
    ) -> Result<Take, StoreError> {
        let (verdict, value): (i64, u64) = self
            .scripts
            .identify_take
            .key(self.keys.queue(bucket))
            .key(self.keys.owners(bucket))
            .key(self.keys.bucket(bucket))
            .key(self.keys.budget())
            .key(self.keys.hosts())
            .key(self.keys.identify_stats())
            .arg(ticket)
            .arg(millis(interval))
            .arg(reserve)
            .arg(u8::from(new_session))
            .arg(self.keys.wake_channel())
            .arg(bucket)
            .invoke(&mut self.conn)?;
        Ok(match verdict {
            1 => Take::Granted { at_ms: value },
            0 if value == 0 => Take::Wait(None),
            0 => Take::Wait(Some(Duration::from_millis(value))),
            -1 => Take::NotQueued,
            -2 => Take::BudgetSpent(Duration::from_millis(value)),
            other => {
                return Err(StoreError::Unexpected {
                    what: "an identify",
                    detail: format!("verdict {other}"),
                });
            }
        })
    }

    /// A granted identify went out now: the bucket's next one waits a full `interval` from
    /// here, even if the grant was earlier.
    pub fn identify_sent(&mut self, bucket: u32, interval: Duration) -> Result<(), StoreError> {
        let _: u8 = self
            .scripts
            .identify_sent
            .key(self.keys.bucket(bucket))
            .arg(millis(interval))
            .invoke(&mut self.conn)?;
        Ok(())
    }

    /// Withdraws `ticket`; `true` when it was queued.
    pub fn cancel_identify(&mut self, bucket: u32, ticket: &str) -> Result<bool, StoreError> {
        let removed: u8 = self
            .scripts
            .identify_cancel
            .key(self.keys.queue(bucket))
            .key(self.keys.owners(bucket))
            .arg(ticket)
            .arg(self.keys.wake_channel())
            .arg(bucket)
            .invoke(&mut self.conn)?;
        Ok(removed == 1)
    }

    /// Reconciles the fleet's daily budget with a `/gateway/bot` answer; returns what is
    /// stored now (remaining, time to the reset).
    pub fn reconcile_budget(
        &mut self,
        total: u32,
        remaining: u32,
        reset_after: Duration,
    ) -> Result<(u32, Duration), StoreError> {
        let (remaining, reset): (i64, i64) = self
            .scripts
            .budget_reconcile
            .key(self.keys.budget())
            .arg(total)
            .arg(remaining)
            .arg(millis(reset_after))
            .invoke(&mut self.conn)?;
        Ok((
            u32::try_from(remaining).unwrap_or(0),
            Duration::from_millis(u64::try_from(reset).unwrap_or(0)),
        ))
    }

    /// Identifies granted by the fleet, and tickets dropped because their host's lease ran out.
    pub fn identify_stats(&mut self) -> Result<(u64, u64), StoreError> {
        let (granted, abandoned): (Option<u64>, Option<u64>) = redis::cmd("HMGET")
            .arg(self.keys.identify_stats())
            .arg("granted")
            .arg("abandoned")
            .query(&mut self.conn)?;
        Ok((granted.unwrap_or(0), abandoned.unwrap_or(0)))
    }

    /// The fleet's shard count: the stored one, or `proposed` when none is (this host is the
    /// first).
    pub fn agree_shard_count(&mut self, proposed: u32) -> Result<u32, StoreError> {
        let key = self.keys.shard_count();
        let _: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(proposed)
            .arg("NX")
            .query(&mut self.conn)?;
        let stored: Option<u32> = self.conn.get(&key)?;
        Ok(stored.unwrap_or(proposed))
    }

    /// Places `shard` on `host` (an operator's move): the assigner keeps it there while that
    /// host lives.
    pub fn place(&mut self, shard: u32, host: &str) -> Result<(), StoreError> {
        let _: i64 = self.conn.hset(self.keys.placements(), shard, host)?;
        Ok(())
    }

    /// The operators' placements.
    pub fn placements(&mut self) -> Result<BTreeMap<u32, String>, StoreError> {
        let raw: BTreeMap<String, String> = self.conn.hgetall(self.keys.placements())?;
        Ok(raw
            .into_iter()
            .filter_map(|(shard, host)| Some((shard.parse().ok()?, host)))
            .collect())
    }

    /// Forgets the placements of `shards` (their host is gone).
    pub fn forget_placements(&mut self, shards: &[u32]) -> Result<(), StoreError> {
        if !shards.is_empty() {
            let _: i64 = self.conn.hdel(self.keys.placements(), shards)?;
        }
        Ok(())
    }

    /// Redis's clock, ms.
    pub fn now_ms(&mut self) -> Result<u64, StoreError> {
        let (seconds, micros): (u64, u64) = redis::cmd("TIME").query(&mut self.conn)?;
        Ok(seconds * 1000 + micros / 1000)
    }
}

fn parse_error(what: &'static str) -> impl Fn(redis::ParsingError) -> StoreError {
    move |error| StoreError::Unexpected {
        what,
        detail: error.to_string(),
    }
}

/// A duration in whole milliseconds, as the scripts take them.
pub(super) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_in_a_log_has_no_password() {
        assert_eq!(
            redacted_url("redis://user:hunter2@10.0.0.5:6380/2"),
            "redis://10.0.0.5:6380/2"
        );
        assert_eq!(
            redacted_url("rediss://:pw@cache.internal/"),
            "rediss://cache.internal/"
        );
        assert_eq!(redacted_url("http://x"), "(not a redis:// URL)");
    }

    #[test]
    fn every_key_carries_the_clusters_hash_tag() {
        let keys = Keys::new("prod");
        for key in [
            keys.hosts(),
            keys.lease(3),
            keys.queue(1),
            keys.wake_channel(),
        ] {
            assert!(key.starts_with("sg:{prod}:"), "{key}");
        }
    }
}
