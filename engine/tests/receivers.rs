//! The example bot endpoints users copy (examples/receivers/bot.py and bot.mjs) behind the real
//! `shardgate` binary and the mock gateway: every dispatch the mock's ledger says the bot must
//! get reaches the example once and in order per shard, the notices arrive, a wrong secret is
//! refused, and SIGTERM stops the engine cleanly. The examples print one line per event; that
//! output is what is checked.
//!
//! Needs `python3` and `node` (18 or later) on the PATH; the test fails, with how to install
//! them, when one is missing.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Engine, expected, wait_until};
use mock_gateway::{MockConfig, MockGateway};

const SHARDS: u32 = 2;
const EVENTS_PER_SHARD: u64 = 300;
const SECRET: &str = "receiver-s3cret";

/// A running example receiver and the lines it printed so far.
struct Receiver {
    child: Child,
    url: String,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Receiver {
    fn start(program: &str, script: &str) -> Receiver {
        let script = repository().join(script);
        let mut child = Command::new(program)
            .arg(&script)
            .args(["--listen", "127.0.0.1:0"])
            .env("FORWARD_SECRET", SECRET)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot run `{program} {}`: {error}. The example receivers are tested with \
                     python3 and node (18 or later): install them (Debian: apt-get install \
                     python3 nodejs)",
                    script.display()
                )
            });
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        stdout.read_line(&mut first).unwrap();
        let url = first
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("{script:?} printed {first:?} first"))
            .trim_end_matches('/')
            .to_owned();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        Receiver { child, url, lines }
    }

    /// Per shard, the sequence numbers of the `event` lines, in the order printed.
    fn events(&self) -> BTreeMap<u32, Vec<u64>> {
        let mut events: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
        for line in self.lines.lock().unwrap().iter() {
            let Some(rest) = line.strip_prefix("event ") else {
                continue;
            };
            let field = |name: &str| {
                rest.split(' ')
                    .find_map(|part| part.strip_prefix(name))
                    .and_then(|value| value.parse().ok())
                    .unwrap_or_else(|| panic!("no {name} in {line:?}"))
            };
            events
                .entry(field("shard=") as u32)
                .or_default()
                .push(field("seq="));
        }
        events
    }

    fn notices(&self, name: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|line| line.starts_with("notice ") && line.contains(name))
            .count()
    }
}

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// One POST with `authorization`; the answer's status.
fn post_status(url: &str, authorization: &str) -> u16 {
    let address = url.strip_prefix("http://").unwrap();
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let body = br#"[{"shard_id":0,"payload":{"t":"TYPING_START","s":1,"op":0,"d":{}}}]"#;
    write!(
        stream,
        "POST /events HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
         Authorization: {authorization}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(body).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
        .split(' ')
        .nth(1)
        .and_then(|status| status.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"))
}

fn run(program: &str, script: &str) {
    let name = Path::new(script).extension().unwrap().to_str().unwrap();
    let dir =
        std::env::temp_dir().join(format!("shardgate-receiver-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let receiver = Receiver::start(program, script);
    assert_eq!(
        post_status(&receiver.url, "not-the-secret"),
        401,
        "a wrong secret must be refused"
    );
    assert!(
        receiver.events().is_empty(),
        "a refused batch is not handled"
    );

    let mock = MockGateway::spawn(
        MockConfig {
            tls: true,
            ca_out: Some(dir.join("ca.pem")),
            seed: Some(23),
            guilds: 12,
            max_concurrency: 16,
            rate: 300.0,
            events_per_shard: EVENTS_PER_SHARD,
            ..MockConfig::default()
        },
        1,
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .args(["run", "--api-base", &mock.api_base()])
        .args(["--ca-file", dir.join("ca.pem").to_str().unwrap()])
        .args(["--forward-url", &format!("{}/events", receiver.url)])
        .args(["--total-shards", &SHARDS.to_string(), "--cores", "1"])
        .args(["--admin-addr", "127.0.0.1:0"])
        .args(["--data-dir", dir.to_str().unwrap(), "--log", "warn"])
        .env("DISCORD_TOKEN", mock.token())
        .env("FORWARD_SECRET", SECRET)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut engine = Engine::new(child);

    wait_until(
        "every expected event at the example receiver",
        Duration::from_secs(60),
        || {
            let ledger = mock.ledger();
            let events = receiver.events();
            (0..SHARDS).all(|shard| {
                let sent_all = ledger
                    .shards
                    .get(&shard)
                    .and_then(|s| s.sessions.first())
                    .is_some_and(|session| session.steady_dispatches() >= EVENTS_PER_SHARD);
                let got: BTreeSet<u64> = events
                    .get(&shard)
                    .map(|seqs| seqs.iter().copied().collect())
                    .unwrap_or_default();
                sent_all && expected(&ledger, shard).is_subset(&got)
            })
        },
    );
    let (status, stderr) = engine.terminate();
    assert!(status.success(), "{status:?}: {stderr}");

    let ledger = mock.ledger();
    assert!(ledger.violations.is_empty(), "{:?}", ledger.violations);
    for (shard, seqs) in receiver.events() {
        let session = &ledger.shards[&shard].sessions[0];
        let optional = session.optional_seqs();
        assert!(
            seqs.windows(2).all(|pair| pair[0] < pair[1]),
            "shard {shard}: out of order or duplicated: {seqs:?}"
        );
        let unexpected: Vec<u64> = seqs
            .iter()
            .copied()
            .filter(|seq| !expected(&ledger, shard).contains(seq) && !optional.contains(seq))
            .collect();
        assert!(unexpected.is_empty(), "shard {shard}: {unexpected:?}");
    }
    assert_eq!(receiver.notices("SHARD_READY"), SHARDS as usize);
    assert_eq!(receiver.notices("ALL_SHARDS_READY"), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_python_example_receives_every_event_once_and_in_order() {
    run("python3", "examples/receivers/bot.py");
}

#[test]
fn the_node_example_receives_every_event_once_and_in_order() {
    run("node", "examples/receivers/bot.mjs");
}
