//! The Redis Streams target on its own, against a `redis-server` of the test's own (TCP with a
//! password and a database, and a unix socket) and against a fake Redis that answers what no
//! Redis would: entries land with their fields in order, and a broken answer fails the batch,
//! never the process.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use common::redis::RedisServer;
use common::wait_until;
use shardgate::record::{Record, RecordKind};
use shardgate::sink::Target;
use shardgate::sink::streams::{StreamsConfig, StreamsTarget};
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

#[test]
fn entries_keep_their_fields_in_order() {
    let redis = RedisServer::start();
    let mut target = StreamsTarget::new(redis.client(), config("t:fields", 2, 1000));
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
    let mut target = StreamsTarget::new(with(":s3cr3t-pw", "3"), config("t:auth", 1, 1000));
    send(&mut target, &batch(0, 1, 4)).unwrap();
    let mut admin = with(":s3cr3t-pw", "3").get_connection().unwrap();
    let length: u64 = query(&mut admin, &["XLEN", "t:auth:0"]);
    assert_eq!(length, 4, "the entries are in database 3");
    let mut wrong = StreamsTarget::new(with(":not-the-pw", ""), config("t:auth", 1, 1000));
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
    let mut user = StreamsTarget::new(with("sink:user-pw", "3"), config("t:auth", 1, 1000));
    send(&mut user, &batch(0, 5, 1)).unwrap();
    let length: u64 = query(&mut admin, &["XLEN", "t:auth:0"]);
    assert_eq!(length, 5);
}

#[test]
fn an_error_reply_fails_the_batch_and_the_next_try_reconnects() {
    let redis = RedisServer::start();
    let mut conn = redis.client().get_connection().unwrap();
    let mut target = StreamsTarget::new(redis.client(), config("t:wrong", 1, 1000));
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
        );
        let error = send(&mut target, &batch(0, 1, 2)).unwrap_err();
        assert!(error.contains(expected), "{expected:?} in {error:?}");
    }
}
