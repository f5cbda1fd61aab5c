//! A `redis-server` of the test's own on a free loopback port, its files in a temporary
//! directory, stopped on drop; and XADD of entries laid out as the engine's Redis Streams sink
//! writes them (docs/forwarding.md).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl RedisServer {
    /// Starts one with an append-only file fsynced on every write (`appendfsync always`), so
    /// that [`RedisServer::stop`] and [`RedisServer::start_again`] keep every acknowledged
    /// write.
    pub fn start(name: &str) -> RedisServer {
        let dir = std::env::temp_dir().join(format!(
            "fake-bot-redis-{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("after 1970")
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|listener| listener.local_addr())
                .expect("a free port")
                .port();
            let mut server = RedisServer {
                child: None,
                port,
                dir: dir.clone(),
            };
            if server.spawn() {
                return server;
            }
        }
        panic!("redis-server did not start on a free port in 5 tries (is it installed?)");
    }

    fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .args(["--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (Debian package redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return false;
            }
            if self.connection().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn connection(&self) -> Option<redis::Connection> {
        let mut conn = redis::Client::open(self.url())
            .ok()?
            .get_connection_with_timeout(Duration::from_millis(500))
            .ok()?;
        redis::cmd("PING").query::<String>(&mut conn).ok()?;
        Some(conn)
    }

    /// A connection, or the test fails.
    pub fn connect(&self) -> redis::Connection {
        self.connection().expect("redis-server answers")
    }

    /// Shuts the server down (SIGTERM): the process is gone, its port closed.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, with the data of its append-only file.
    pub fn start_again(&mut self) {
        assert!(
            self.spawn(),
            "redis-server did not come back on {}",
            self.port
        );
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A dispatch payload as Discord sends it.
pub fn payload(event_type: &str, seq: u64) -> String {
    format!(r#"{{"t":"{event_type}","s":{seq},"op":0,"d":{{"id":"{seq}","content":"hi"}}}}"#)
}

/// XADDs one entry to `{key}:{shard % partitions}` as the engine writes it; returns its id.
pub fn xadd(
    conn: &mut redis::Connection,
    key: &str,
    partitions: u32,
    shard: u32,
    seq: u64,
    kind: &str,
    payload: &str,
) -> String {
    let event_type = payload
        .split(r#""t":""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or("");
    let id = format!("{shard}:{seq}:{:08x}", crc32fast::hash(payload.as_bytes()));
    redis::cmd("XADD")
        .arg(format!("{key}:{}", shard % partitions))
        .arg("*")
        .arg("shard")
        .arg(shard)
        .arg("seq")
        .arg(seq)
        .arg("type")
        .arg(event_type)
        .arg("kind")
        .arg(kind)
        .arg("id")
        .arg(id)
        .arg("payload")
        .arg(payload)
        .query(conn)
        .expect("XADD")
}

/// Entries pending in `group` over the streams `{key}:0..partitions`.
pub fn pending(conn: &mut redis::Connection, key: &str, partitions: u32, group: &str) -> u64 {
    (0..partitions)
        .map(|partition| {
            // XPENDING's summary: [count, first id, last id, consumers].
            let summary: redis::Value = redis::cmd("XPENDING")
                .arg(format!("{key}:{partition}"))
                .arg(group)
                .query(conn)
                .expect("XPENDING");
            match summary {
                redis::Value::Array(parts) => match parts.first() {
                    Some(redis::Value::Int(count)) => *count as u64,
                    other => panic!("XPENDING count: {other:?}"),
                },
                other => panic!("XPENDING: {other:?}"),
            }
        })
        .sum()
}
