//! A `redis-server` of the test's own: a free loopback port, stopped on drop; no persistence,
//! or (with [`RedisServer::start_durable`]) an append-only file that outlives a stop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Option<Child>,
    addr: SocketAddr,
    /// Where a durable server keeps its append-only file; `None`: nothing is kept.
    durable_dir: Option<PathBuf>,
}

impl RedisServer {
    /// Starts one (on another port if the free one was taken meanwhile) and waits until it
    /// answers PING.
    pub fn start() -> RedisServer {
        Self::start_in(None)
    }

    /// [`RedisServer::start`] with an append-only file in `dir`, fsynced before every reply
    /// (`appendonly yes`, `appendfsync always`): whatever it acknowledged is on disk, so
    /// [`RedisServer::stop`] then [`RedisServer::start_again`] (or a crash) keeps every
    /// acknowledged write, consumer groups and pending lists included.
    pub fn start_durable(dir: &Path) -> RedisServer {
        std::fs::create_dir_all(dir).unwrap();
        Self::start_in(Some(dir.to_owned()))
    }

    fn start_in(durable_dir: Option<PathBuf>) -> RedisServer {
        for _ in 0..5 {
            let mut server = RedisServer {
                child: None,
                addr: super::free_port(),
                durable_dir: durable_dir.clone(),
            };
            if server.spawn() {
                return server;
            }
        }
        panic!("redis-server did not start on a free port in 5 tries (is it installed?)");
    }

    fn spawn(&mut self) -> bool {
        let mut command = Command::new("redis-server");
        command
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &self.addr.port().to_string(),
            ])
            .args(["--save", "", "--protected-mode", "no"]);
        match &self.durable_dir {
            Some(dir) => command
                .args(["--appendonly", "yes", "--appendfsync", "always"])
                .args(["--dir", dir.to_str().unwrap()]),
            // Nothing is written there (no RDB, no AOF); a directory that surely exists.
            None => command
                .args(["--appendonly", "no"])
                .args(["--dir", std::env::temp_dir().to_str().unwrap()]),
        };
        let child = command
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
            if self.ping() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn ping(&self) -> bool {
        redis::Client::open(self.url())
            .and_then(|client| client.get_connection_with_timeout(Duration::from_millis(200)))
            .and_then(|mut conn| redis::cmd("PING").query::<String>(&mut conn))
            .is_ok()
    }

    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).unwrap()
    }

    /// Stops the server (SIGTERM: the process shuts down and its port closes). Its data is gone,
    /// unless it was started with [`RedisServer::start_durable`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open and nothing answers, like a Redis
    /// that hangs.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen server go on (SIGCONT), with its data.
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("running");
        assert!(
            Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status()
                .unwrap()
                .success()
        );
    }

    /// Starts a stopped server again on the same port: with its append-only file if durable.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "start_again: it is running");
        assert!(
            self.spawn(),
            "redis-server did not come back on {}",
            self.addr
        );
    }

    /// Stops it and starts it again on the same port (empty, like a Redis that lost its data,
    /// unless durable).
    pub fn restart(&mut self) {
        self.stop();
        assert!(
            self.spawn(),
            "redis-server did not come back on {}",
            self.addr
        );
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
