//! The Redis Streams target on its own, against a `redis-server` of the test's own (TCP with a
//! password and a database, and a unix socket) and against a fake Redis that answers what no
//! Redis would: entries land with their fields in order, a consumer group's entries trimmed
//! unread are counted as Redis's own counters show them, and a broken answer fails the batch,
//! never the process.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::redis::RedisServer;
use common::wait_until;
use shardgate::record::{Record, RecordKind};
use shardgate::sink::Target;
use shardgate::sink::streams::{StreamGroupStats, StreamsConfig, StreamsStats, StreamsTarget};
use shardgate::sink::target::Failure;

fn config(key: &str, partitions: u32, maxlen: u64) -> StreamsConfig {
    StreamsConfig {
        key: key.to_owned(),
        partitions,
        maxlen,
    }
}

/// `count` dispatches of `shard` from `seq` on, every other one with a guild.
fn batch(shard: u32, seq: u64, count: u64) -> Vec<Record> {
    (seq..seq + count)
        .map(|seq| {
            let payload = if seq % 2 == 0 {
                format!(r#"{{"t":"MESSAGE_CREATE","s":{seq},"op":0,"d":{{"content":"m{seq}","guild_id":"77"}}}}"#)
            } else {
                format!(r#"{{"t":"TYPING_START","s":{seq},"op":0,"d":{{"user_id":"5"}}}}"#)
            };
            Record {
                shard_id: shard,
                shard_count: 1,
                seq,
                session: 0,
                kind: RecordKind::Dispatch,
                payload: Bytes::from(payload),
            }
        })
        .collect()
}

fn send(target: &mut StreamsTarget, records: &[Record]) -> Result<(), String> {
    target.prepare(records, &[]);
    target.send().map_err(|failure| match failure {
        Failure::Unreachable(error) => error,
        Failure::Refused(status) => format!("refused {status}"),
    })
}

fn query<T: redis::FromRedisValue>(conn: &mut redis::Connection, args: &[&str]) -> T {
    let mut command = redis::cmd(args[0]);
    for arg in &args[1..] {
        command.arg(*arg);
    }
    command.query(conn).unwrap()
}

fn group<'a>(stats: &'a [StreamGroupStats], name: &str) -> &'a StreamGroupStats {
    stats
        .iter()
        .find(|group| group.group == name)
        .unwrap_or_else(|| panic!("no group {name} in {stats:?}"))
}

#[test]
fn entries_keep_their_fields_in_order() {
    let redis = RedisServer::start();
    let mut target =
        StreamsTarget::new(redis.client(), config("t:fields", 2, 1000), Arc::default());
    let records = batch(3, 10, 2);
    send(&mut target, &records).unwrap();
    let mut conn = redis.client().get_connection().unwrap();
    let entries: Vec<(String, Vec<Vec<u8>>)> = redis::cmd("XRANGE")
        .arg("t:fields:1")
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .unwrap();
    let fields: Vec<Vec<Vec<u8>>> = entries.into_iter().map(|(_, fields)| fields).collect();
    let text = |parts: &[&[u8]]| parts.iter().map(|part| part.to_vec()).collect::<Vec<_>>();
    let crc = |record: &Record| format!("{:08x}", crc32fast::hash(&record.payload));
    assert_eq!(
        fields,
        vec![
            text(&[
                b"shard",
                b"3",
                b"seq",
                b"10",
                b"type",
                b"MESSAGE_CREATE",
                b"kind",
                b"dispatch",
                b"id",
                format!("3:10:{}", crc(&records[0])).as_bytes(),
                b"guild",
                b"77",
                b"payload",
                &records[0].payload,
            ]),
            text(&[
                b"shard",
                b"3",
                b"seq",
                b"11",
                b"type",
                b"TYPING_START",
                b"kind",
                b"dispatch",
                b"id",
                format!("3:11:{}", crc(&records[1])).as_bytes(),
                b"payload",
                &records[1].payload,
            ]),
        ]
    );
}

/// MAXLEN ~ 10 trims whole nodes of 100 entries. Three groups, created before any entry:
/// `idle` reads nothing, `reader` reads everything after every batch, `behind` reads the first
/// three entries and stops. What each lost is known from the outside: every entry gone was
/// among the oldest, so `idle` lost all that went, `behind` all but its three, `reader` none.
#[test]
fn entries_trimmed_before_a_group_read_them_are_counted() {
    let redis = RedisServer::start();
    let mut conn = redis.client().get_connection().unwrap();
    for name in ["idle", "reader", "behind"] {
        let _: () = query(
            &mut conn,
            &["XGROUP", "CREATE", "t:trim:0", name, "$", "MKSTREAM"],
        );
    }
    let stats = Arc::new(StreamsStats::default());
    // Partition 1 gets no records: its stream never exists.
    let mut target =
        StreamsTarget::new(redis.client(), config("t:trim", 2, 10), Arc::clone(&stats))
            .with_info_poll_interval(Duration::ZERO);
    let (batches, per_batch) = (100u64, 5u64);
    for index in 0..batches {
        send(&mut target, &batch(0, 1 + index * per_batch, per_batch)).unwrap();
        let _: redis::Value = query(
            &mut conn,
            &[
                "XREADGROUP",
                "GROUP",
                "reader",
                "r",
                "STREAMS",
                "t:trim:0",
                ">",
            ],
        );
        if index == 0 {
            let _: redis::Value = query(
                &mut conn,
                &[
                    "XREADGROUP",
                    "GROUP",
                    "behind",
                    "b",
                    "COUNT",
                    "3",
                    "STREAMS",
                    "t:trim:0",
                    ">",
                ],
            );
        }
    }
    // One more batch, so that the last poll sees `reader` after its last read; then the figures
    // the poll saw, against the stream as the test reads it right after.
    send(&mut target, &batch(2, 1, per_batch)).unwrap();
    let added = (batches + 1) * per_batch;
    let length: u64 = query(&mut conn, &["XLEN", "t:trim:0"]);
    assert!(
        length < added - 300,
        "MAXLEN ~ 10 trimmed: {length} left of {added}"
    );
    let snapshot = stats.snapshot();
    eprintln!("{length} of {added} entries left: {snapshot:?}");
    assert_eq!(snapshot.len(), 3, "{snapshot:?}");
    assert!(snapshot.iter().all(|group| group.stream == "t:trim:0"));
    assert_eq!(
        group(&snapshot, "idle").trimmed_unread,
        Some(added - length)
    );
    assert_eq!(
        group(&snapshot, "behind").trimmed_unread,
        Some(added - 3 - length)
    );
    assert_eq!(group(&snapshot, "reader").trimmed_unread, Some(0));
    // Redis's own lag, as XINFO GROUPS says it.
    let groups: Vec<std::collections::HashMap<String, redis::Value>> =
        query(&mut conn, &["XINFO", "GROUPS", "t:trim:0"]);
    for info in groups {
        let name: String = redis::from_redis_value(info["name"].clone()).unwrap();
        let lag: Option<u64> = redis::from_redis_value(info["lag"].clone()).unwrap();
        assert_eq!(group(&snapshot, &name).lag, lag, "{name}");
    }
    assert_eq!(stats.polls_total(), batches + 1);
    assert_eq!(stats.poll_failures_total(), 0);
    // A group that goes away leaves the figures at the next poll.
    let _: () = query(&mut conn, &["XGROUP", "DESTROY", "t:trim:0", "idle"]);
    send(&mut target, &batch(0, 10_000, 1)).unwrap();
    assert_eq!(stats.snapshot().len(), 2);
}

#[test]
fn password_and_database_from_the_url_and_never_in_an_error() {
    let redis = RedisServer::start();
    let mut conn = redis.client().get_connection().unwrap();
    let _: () = query(&mut conn, &["CONFIG", "SET", "requirepass", "s3cr3t-pw"]);
    let url = redis.url();
    let with = |credentials: &str, db: &str| {
        let url = url.replacen("redis://", &format!("redis://{credentials}@"), 1);
        redis::Client::open(format!("{url}{db}")).unwrap()
    };
    let mut target = StreamsTarget::new(
        with(":s3cr3t-pw", "3"),
        config("t:auth", 1, 1000),
        Arc::default(),
    );
    send(&mut target, &batch(0, 1, 4)).unwrap();
    let mut admin = with(":s3cr3t-pw", "3").get_connection().unwrap();
    let length: u64 = query(&mut admin, &["XLEN", "t:auth:0"]);
    assert_eq!(length, 4, "the entries are in database 3");
    let mut wrong = StreamsTarget::new(
        with(":not-the-pw", ""),
        config("t:auth", 1, 1000),
        Arc::default(),
    );
    let error = send(&mut wrong, &batch(0, 1, 1)).unwrap_err();
    assert!(error.contains("AUTH refused: WRONGPASS"), "{error}");
    assert!(
        !error.contains("not-the-pw") && !error.contains("s3cr3t"),
        "{error}"
    );
    // An ACL user.
    let _: () = query(
        &mut admin,
        &["ACL", "SETUSER", "sink", "on", ">user-pw", "~t:*", "+@all"],
    );
    let mut user = StreamsTarget::new(
        with("sink:user-pw", "3"),
        config("t:auth", 1, 1000),
        Arc::default(),
    );
    send(&mut user, &batch(0, 5, 1)).unwrap();
    let length: u64 = query(&mut admin, &["XLEN", "t:auth:0"]);
    assert_eq!(length, 5);
}

#[test]
fn an_error_reply_fails_the_batch_and_the_next_try_reconnects() {
    let redis = RedisServer::start();
    let mut conn = redis.client().get_connection().unwrap();
    let mut target = StreamsTarget::new(redis.client(), config("t:wrong", 1, 1000), Arc::default());
    let _: () = query(&mut conn, &["SET", "t:wrong:0", "a string"]);
    let error = send(&mut target, &batch(0, 1, 3)).unwrap_err();
    assert!(
        error.contains("XADD 1 of 3: Redis answered: WRONGTYPE"),
        "{error}"
    );
    let _: () = query(&mut conn, &["DEL", "t:wrong:0"]);
    send(&mut target, &batch(0, 1, 3)).unwrap();
    let length: u64 = query(&mut conn, &["XLEN", "t:wrong:0"]);
    assert_eq!(length, 3);
}

/// A `redis-server` on a unix socket only.
struct UnixRedis {
    child: Child,
    dir: std::path::PathBuf,
}

impl Drop for UnixRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_unix_socket() {
    let dir = std::env::temp_dir().join(format!("shardgate-streams-unix-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("redis.sock");
    let server = UnixRedis {
        child: Command::new("redis-server")
            .args(["--port", "0", "--unixsocket", socket.to_str().unwrap()])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                dir.to_str().unwrap(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        dir,
    };
    wait_until("the unix socket", Duration::from_secs(10), || {
        socket.exists()
    });
    let url = format!("redis+unix://{}", socket.display());
    let mut target = StreamsTarget::new(
        redis::Client::open(url.as_str()).unwrap(),
        config("t:unix", 1, 1000),
        Arc::default(),
    );
    wait_until(
        "a first batch over the socket",
        Duration::from_secs(10),
        || send(&mut target, &batch(0, 1, 2)).is_ok(),
    );
    let mut conn = redis::Client::open(url).unwrap().get_connection().unwrap();
    let length: u64 = query(&mut conn, &["XLEN", "t:unix:0"]);
    assert!(length >= 2);
    drop(server);
}

/// A fake Redis that answers each connection with `reply`, whatever it was sent, and closes.
fn hostile_redis(reply: Vec<u8>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}/", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let _ = stream.write_all(&reply);
            // Closes its side only, and reads on until the target hangs up, so that nothing
            // unread makes the close a reset that could eat the reply.
            let _ = stream.shutdown(std::net::Shutdown::Write);
            let _ = std::io::copy(&mut stream, &mut std::io::sink());
        }
    });
    url
}

#[test]
fn broken_answers_fail_the_batch_and_nothing_else() {
    let huge_line = [&b"+"[..], &vec![b'a'; 100_000], b"\r\n"].concat();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            b"+OK\r\n".to_vec(),
            "XADD 1 of 2: unexpected reply to XADD: a simple string",
        ),
        (
            b"$999999999999\r\n".to_vec(),
            "XADD 1 of 2: a reply over its budget",
        ),
        (
            b"$50\r\n".to_vec(),
            "XADD 1 of 2: unexpected reply to XADD: a bulk string",
        ),
        (
            huge_line,
            "XADD 1 of 2: malformed reply: a line longer than the reply buffer",
        ),
        (
            b"$3\r\n1-1\r\n".to_vec(),
            "XADD 2 of 2: the connection closed",
        ),
        (
            b"$3\r\nabc\r\n".to_vec(),
            "XADD 1 of 2: malformed reply: an entry id",
        ),
        (
            b"$3\r\n1-1\r\n:1\r\n".to_vec(),
            "XADD 2 of 2: unexpected reply to XADD: an integer",
        ),
        (
            b"*-1\r\n".to_vec(),
            "XADD 1 of 2: unexpected reply to XADD: a null array",
        ),
        (
            b"%2\r\n".to_vec(),
            "XADD 1 of 2: malformed reply: not a RESP2 reply",
        ),
        (
            b"-ERR \x01\xff\r\n".to_vec(),
            "XADD 1 of 2: Redis answered: ERR ??",
        ),
    ];
    for (reply, expected) in cases {
        let url = hostile_redis(reply);
        let mut target = StreamsTarget::new(
            redis::Client::open(url.as_str()).unwrap(),
            config("t:hostile", 1, 1000),
            Arc::default(),
        );
        let error = send(&mut target, &batch(0, 1, 2)).unwrap_err();
        assert!(error.contains(expected), "{expected:?} in {error:?}");
    }
}

#[test]
fn a_broken_xinfo_answer_fails_the_poll_not_the_batch() {
    // Two entry ids, then MULTI's and the queued XINFOs' answers, then an EXEC that says 5.
    let url =
        hostile_redis(b"$3\r\n1-1\r\n$3\r\n1-2\r\n+OK\r\n+QUEUED\r\n+QUEUED\r\n:5\r\n".to_vec());
    let stats = Arc::new(StreamsStats::default());
    let mut target = StreamsTarget::new(
        redis::Client::open(url.as_str()).unwrap(),
        config("t:hostile", 1, 1000),
        Arc::clone(&stats),
    )
    .with_info_poll_interval(Duration::ZERO);
    for _ in 0..2 {
        send(&mut target, &batch(0, 1, 2)).unwrap();
    }
    assert_eq!(stats.polls_total(), 2);
    assert_eq!(stats.poll_failures_total(), 2);
    assert!(stats.snapshot().is_empty());
}
