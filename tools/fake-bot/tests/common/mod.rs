//! Helpers shared by the integration tests: envelope builders, bounded waits, and a blocking
//! HTTP/1.1 exchange over std's TcpStream for callers without a runtime.
//!
//! Must not: sleep for a fixed time to "let things happen"; every wait polls a condition and is
//! bounded.

#![allow(dead_code)] // each test binary uses a different subset

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::time::Duration;

pub mod redis;

/// Upper bound on any wait in the tests; reaching it is a failure, not a timing assertion.
pub const WAIT_MAX: Duration = Duration::from_secs(30);

/// The payload of a dispatch, as Discord would send it.
pub fn payload(event_type: &str, seq: u64) -> String {
    format!(
        r#"{{"t":"{event_type}","s":{seq},"op":0,"d":{{"id":"{seq}","content":"hello \"world\" {seq}","nested":{{"a":[1,2,{{"b":null}}]}}}}}}"#
    )
}

pub fn dispatch(shard_id: u32, event_type: &str, seq: u64) -> String {
    format!(
        r#"{{"shard_id":{shard_id},"payload":{}}}"#,
        payload(event_type, seq)
    )
}

pub fn ready(shard_id: u32, seq: u64, session_id: &str) -> String {
    format!(
        r#"{{"shard_id":{shard_id},"payload":{{"t":"READY","s":{seq},"op":0,"d":{{"v":10,"session_id":"{session_id}","guilds":[]}}}}}}"#
    )
}

pub fn notice(shard_id: Option<u32>, name: &str) -> String {
    match shard_id {
        Some(shard_id) => format!(
            r#"{{"shard_id":{shard_id},"notice":"{name}","payload":{{"shard_id":{shard_id}}}}}"#
        ),
        None => format!(r#"{{"notice":"{name}","payload":{{}}}}"#),
    }
}

pub fn batch(envelopes: &[String]) -> String {
    format!("[{}]", envelopes.join(","))
}

/// Dispatches `seqs` of one shard, all MESSAGE_CREATE.
pub fn messages(shard_id: u32, seqs: impl IntoIterator<Item = u64>) -> String {
    let envelopes: Vec<String> = seqs
        .into_iter()
        .map(|seq| dispatch(shard_id, "MESSAGE_CREATE", seq))
        .collect();
    batch(&envelopes)
}

/// Runs `future` and fails the test if it takes longer than [`WAIT_MAX`].
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT_MAX, future)
        .await
        .unwrap_or_else(|_| panic!("gave up waiting: {what}"))
}

/// One blocking request over a fresh connection (`Connection: close`); returns the status and
/// the body.
pub fn blocking_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(WAIT_MAX))
        .expect("read timeout");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).expect("write");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("read");
    let answer = String::from_utf8(answer).expect("utf-8 answer");
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|status| status.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}
