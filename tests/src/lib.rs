//! Shared helpers for the integration tests.
//!
//! - [`raw`]: a tiny, deliberately dumb gateway client over tokio-tungstenite that sends exactly
//!   what a test tells it to (right or wrong) and decodes what comes back (text, zlib-stream,
//!   zstd-stream, per-payload zlib, close frames).
//! - [`rest`]: a minimal HTTP/1.1 GET over a tokio `TcpStream` (`Connection: close`).
//! - [`wait_until`]: bounded polling of a condition (a ledger count, usually).
//!
//! Must not: wait without a bound. Every await here is under `tokio::time::timeout`.

use std::ops::Deref;
use std::time::Duration;

use mock_gateway::{MockConfig, MockGateway};

pub mod raw;
pub mod rest;

/// A mock gateway for one test (one runtime thread). Dropped normally it shuts down; dropped
/// while the test panics it is leaked instead, so that a mock that froze (the failure being
/// reported) cannot hang the test binary in `MockGateway`'s joining `Drop`.
pub struct TestMock(Option<MockGateway>);

impl TestMock {
    pub fn spawn(config: MockConfig) -> TestMock {
        TestMock(Some(
            MockGateway::spawn(config, 1).expect("the mock gateway starts"),
        ))
    }
}

impl Deref for TestMock {
    type Target = MockGateway;

    fn deref(&self) -> &MockGateway {
        self.0.as_ref().expect("present until dropped")
    }
}

impl Drop for TestMock {
    fn drop(&mut self) {
        if std::thread::panicking() {
            std::mem::forget(self.0.take());
        }
    }
}

/// Upper bound of one receive when a test does not give its own.
pub const RECV_MAX: Duration = Duration::from_secs(5);

/// Polls `condition` every 20 ms until it holds; `false` if `limit` passed first.
pub async fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The guilds shard `shard` of `total` owns, in the given order: `(id >> 22) % total == shard`.
pub fn owned_guilds(guild_ids: &[u64], shard: u32, total: u32) -> Vec<u64> {
    guild_ids
        .iter()
        .copied()
        .filter(|id| (id >> 22) % u64::from(total) == u64::from(shard))
        .collect()
}

/// The keys of the top-level JSON object in `raw`, in the order they appear (serde_json's
/// `Value` sorts them, so the order has to be read from the bytes).
pub fn top_level_keys(raw: &[u8]) -> Vec<String> {
    let mut keys = Vec::new();
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut string_start = 0;
    // At depth 1, whether the next string is a key (after `{` or `,`).
    let mut expect_key = false;
    for (i, &b) in raw.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
                if depth == 1 && expect_key {
                    keys.push(String::from_utf8_lossy(&raw[string_start..i]).into_owned());
                    expect_key = false;
                }
            }
            continue;
        }
        match b {
            b'"' => {
                in_string = true;
                string_start = i + 1;
            }
            b'{' | b'[' => {
                depth += 1;
                if depth == 1 && b == b'{' {
                    expect_key = true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b',' if depth == 1 => expect_key = true,
            _ => {}
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_level_keys_in_byte_order() {
        let raw = br#"{"t":"X","s":1,"op":0,"d":{"a":{"b":"}"},"c":["{\"q\":1}"]}}"#;
        assert_eq!(top_level_keys(raw), ["t", "s", "op", "d"]);
        assert_eq!(top_level_keys(br#"{"op":11,"d":null}"#), ["op", "d"]);
    }

    #[test]
    fn ownership_follows_the_snowflake_rule() {
        let ids = [(3u64 << 22) | 5, 4 << 22, 7 << 22];
        assert_eq!(owned_guilds(&ids, 1, 2), [(3 << 22) | 5, 7 << 22]);
        assert_eq!(owned_guilds(&ids, 0, 2), [4 << 22]);
    }
}
