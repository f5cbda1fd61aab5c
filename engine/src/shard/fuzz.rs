//! Fuzzing entry point for the shard machine: bytes become a sequence of driver inputs
//! (connect ok/failed, connection lost, close frames, payloads, timeouts, identify permits,
//! commands, reconnect and shutdown requests, and arbitrary frames classified as the driver
//! does) and the machine's invariants are checked after every one. A `fuzz/` target is one line
//! into [`fuzz_entry`]; the unit tests feed it seeded random bytes.
//!
//! Invariants checked (a violation panics, which is what a fuzzer reports):
//! - never more than 120 payloads in any 60 s on one connection, heartbeats included;
//! - every payload is valid JSON of at most 4096 bytes; commands only while active, each one
//!   accepted command sent once, in order, byte for byte, or counted as refused when the shard
//!   ends before it could be sent;
//! - identify only after a permit on this connection (one identify per permit), and one
//!   `NeedIdentify` at a time; resume only with a session;
//! - no close with 1000/1001 unless a non-resumable shutdown was requested;
//! - `Fatal` only after a fatal close code, `Stopped` only after a shutdown request;
//! - a shard that is not stopped always has a timer (it can never be left silently dead);
//! - no payload crashes the machine, however deep it nests (a hostile one costs a reconnect).
//!
//! The harness reads the clock once for the base of its fake time; the machine never does.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::machine::{
    CLOSE_CODE_KEEP_SESSION, ClosePolicy, LossCause, PAYLOAD_BYTES_MAX, PayloadHead,
    SEND_LIMIT_PER_WINDOW, SEND_WINDOW_MS, Session, Shard, ShardConfig, ShardCounters, ShardEvent,
    ShardState, TransmitKind, close_policy,
};
use super::token::Token;

/// Interprets `data` as driver inputs and checks the machine's invariants after each.
pub fn fuzz_entry(data: &[u8]) {
    run(data);
}

/// [`fuzz_entry`], returning the machine's counters so tests can see how deep inputs reached.
pub(crate) fn run(data: &[u8]) -> ShardCounters {
    let mut input = Input { data, position: 0 };
    let mut config = ShardConfig::new(0, 1, Token::new("fuzz-token"), 513);
    config.rng_seed = u64::from(input.byte().unwrap_or(0));
    config.command_queue_capacity = 1 + usize::from(input.byte().unwrap_or(0) % 64);
    let now = Instant::now();
    let resume = input.byte().unwrap_or(0) % 2 == 1;
    let shard = if resume {
        let session = Session {
            session_id: "saved".to_owned(),
            resume_url: Some("wss://resume.example".to_owned()),
            sequence: 42,
        };
        Shard::with_session(config, session, now)
    } else {
        Shard::new(config, now)
    };
    let shard = shard.expect("the fuzz config is valid");
    let mut harness = Harness {
        shard,
        now,
        buf: Vec::new(),
        sent_at: VecDeque::new(),
        end_session_requested: false,
        shutdown_requested: false,
        last_close_fatal: false,
        commands: VecDeque::new(),
        commands_refused: 0,
        permit_unspent: false,
        identify_requested: false,
    };
    harness.check();
    while let Some(action) = input.byte() {
        harness.step(action, &mut input);
        harness.check();
    }
    harness.shard.counters().clone()
}

struct Input<'a> {
    data: &'a [u8],
    position: usize,
}

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let byte = self.data.get(self.position).copied();
        self.position += 1;
        byte
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte().unwrap_or(0), self.byte().unwrap_or(0)])
    }

    fn bytes(&mut self, len: usize) -> &[u8] {
        let start = self.position.min(self.data.len());
        let end = start.saturating_add(len).min(self.data.len());
        self.position = end;
        &self.data[start..end]
    }
}

struct Harness {
    shard: Shard,
    now: Instant,
    buf: Vec<u8>,
    /// Send instants on the current connection.
    sent_at: VecDeque<Instant>,
    end_session_requested: bool,
    shutdown_requested: bool,
    last_close_fatal: bool,
    /// Commands the machine accepted and has not sent, in order.
    commands: VecDeque<Vec<u8>>,
    /// Commands refused: at once, or still waiting when the shard ended.
    commands_refused: u64,
    /// A permit was granted on this connection and no identify went out for it yet.
    permit_unspent: bool,
    /// A `NeedIdentify` is waiting for [`Harness::permit`].
    identify_requested: bool,
}

const CLOSE_CODES: [u16; 24] = [
    1000, 1001, 1006, 1011, 4000, 4001, 4002, 4003, 4004, 4005, 4006, 4007, 4008, 4009, 4010, 4011,
    4012, 4013, 4014, 4015, 4999, 0, 3000, 65535,
];

impl Harness {
    fn step(&mut self, action: u8, input: &mut Input<'_>) {
        let now = self.now;
        match action % 24 {
            0 => {
                self.now += Duration::from_millis(u64::from(input.u16()) * 10);
                self.fire_timer();
            }
            1 => {
                if let Some(deadline) = self.shard.poll_timeout() {
                    self.now = self.now.max(deadline);
                }
                self.fire_timer();
            }
            2 => {
                let was_connecting = self.shard.state() == ShardState::Connecting;
                self.shard.connect_succeeded(now);
                if was_connecting {
                    self.sent_at.clear();
                }
            }
            3 => self.shard.connect_failed(now, "fuzz"),
            4 => {
                let cause = if input.byte().unwrap_or(0).is_multiple_of(2) {
                    LossCause::Transport
                } else {
                    LossCause::Decode
                };
                self.shard.connection_lost(now, cause);
            }
            5 => {
                let pick = input.byte().unwrap_or(0);
                let code = match pick {
                    255 => None,
                    254 => Some(input.u16()),
                    _ => Some(CLOSE_CODES[usize::from(pick) % CLOSE_CODES.len()]),
                };
                self.last_close_fatal = close_policy(code) == ClosePolicy::Fatal;
                self.shard.close_received(now, code, "fuzz");
            }
            6 => {
                let raw = match input.byte().unwrap_or(0) % 5 {
                    0 => br#"{"op":10,"d":{"heartbeat_interval":41250}}"#.to_vec(),
                    1 => format!(
                        r#"{{"op":10,"d":{{"heartbeat_interval":{}}}}}"#,
                        input.u16()
                    )
                    .into_bytes(),
                    2 => br#"{"op":10,"d":{"heartbeat_interval":0}}"#.to_vec(),
                    3 => br#"{"op":10,"d":{}}"#.to_vec(),
                    _ => br#"{"op":10,"d":{"heartbeat_interval":18446744073709551615}}"#.to_vec(),
                };
                self.payload(10, None, None, &raw);
            }
            7 => self.payload(11, None, None, br#"{"op":11}"#),
            8 => self.payload(1, None, None, br#"{"op":1,"d":null}"#),
            9 => self.payload(7, None, None, br#"{"op":7,"d":null}"#),
            10 => {
                let raw: &[u8] = match input.byte().unwrap_or(0) % 3 {
                    0 => br#"{"op":9,"d":true}"#,
                    1 => br#"{"op":9,"d":false}"#,
                    _ => br#"{"op":9,"d":"maybe"}"#,
                };
                self.payload(9, None, None, raw);
            }
            11 => {
                let s = u64::from(input.u16());
                match input.byte().unwrap_or(0) % 4 {
                    0 => self.payload(
                        0,
                        Some(s),
                        Some("READY"),
                        br#"{"t":"READY","s":1,"op":0,"d":{"session_id":"fz","resume_gateway_url":"wss://r.example"}}"#,
                    ),
                    1 => self.payload(0, Some(s), Some("READY"), br#"{"t":"READY","op":0,"d":{}}"#),
                    2 => self.payload(0, Some(s), Some("RESUMED"), br#"{"t":"RESUMED"}"#),
                    _ => self.payload(0, Some(s), Some("MESSAGE_CREATE"), b"{}"),
                }
            }
            12 => {
                let op = input.byte().unwrap_or(0);
                if op == FRAME_ESCAPE {
                    let raw = frame(input);
                    // What the driver does with a decoded payload (core.rs, `handle_frame`).
                    match crate::decode::classify(&raw) {
                        Ok(head) => {
                            self.shard.payload_received(now, &head, &raw);
                        }
                        Err(_) => self.shard.connection_lost(now, LossCause::Decode),
                    }
                    return self.drain();
                }
                let len = usize::from(input.byte().unwrap_or(0));
                let raw = input.bytes(len).to_vec();
                let s = if op.is_multiple_of(2) {
                    Some(u64::from(op))
                } else {
                    None
                };
                let t = std::str::from_utf8(&raw)
                    .ok()
                    .filter(|_| op.is_multiple_of(3));
                let head = PayloadHead { op, s, t };
                self.shard.payload_received(now, &head, &raw);
            }
            13 => self.permit(),
            14 => {
                let count = 1 + usize::from(input.byte().unwrap_or(0));
                for index in 0..count {
                    let payload = match (input.byte().unwrap_or(0) % 6, index) {
                        (0, _) => br#"{"op":3,"d":{"since":null,"activities":[],"status":"online","afk":false}}"#.to_vec(),
                        (1, _) => {
                            let mut big = br#"{"op":8,"d":{"query":""#.to_vec();
                            big.resize(PAYLOAD_BYTES_MAX + 1, b'a');
                            big
                        }
                        (2, _) => br#"{"op":2,"d":{}}"#.to_vec(),
                        (3, _) => br#"{"op":8,"d":"#.to_vec(),
                        (4, _) => br#"{"op":43,"d":{"guild_id":"1","fields":["status"]}}"#.to_vec(),
                        _ => {
                            let len = usize::from(input.byte().unwrap_or(0));
                            input.bytes(len).to_vec()
                        }
                    };
                    // Rejections are valid answers; the invariants are checked on what is sent.
                    if self.shard.send_command(payload.clone()).is_ok() {
                        self.commands.push_back(payload);
                    } else {
                        self.commands_refused += 1;
                    }
                }
            }
            15 => {
                let _ = self
                    .shard
                    .request_reconnect(now, input.byte().unwrap_or(0) % 2 == 1);
            }
            16 => {
                let resumable = !input.byte().unwrap_or(0).is_multiple_of(4);
                self.shutdown_requested = true;
                self.end_session_requested |= !resumable;
                self.shard.request_shutdown(now, resumable);
            }
            17 => {
                // A burst of ACKed heartbeats over a long stretch: exercises the send window.
                for _ in 0..64 {
                    let Some(deadline) = self.shard.poll_timeout() else {
                        break;
                    };
                    self.now = self.now.max(deadline);
                    self.fire_timer();
                    self.drain();
                    let ack_now = self.now;
                    self.shard.payload_received(
                        ack_now,
                        &PayloadHead {
                            op: 11,
                            s: None,
                            t: None,
                        },
                        b"{}",
                    );
                    self.drain();
                }
            }
            // A quarter of the actions do what a well-behaved driver and server would do
            // next, so that random inputs get deep into sessions instead of dying at the handshake.
            _ => self.progress(),
        }
        self.drain();
    }

    fn progress(&mut self) {
        let now = self.now;
        match self.shard.state() {
            ShardState::Connecting => self.shard.connect_succeeded(now),
            ShardState::AwaitingHello => {
                self.payload(10, None, None, br#"{"op":10,"d":{"heartbeat_interval":41250}}"#);
            }
            ShardState::AwaitingIdentifyPermit => self.permit(),
            ShardState::Identifying => self.payload(
                0,
                Some(1),
                Some("READY"),
                br#"{"t":"READY","s":1,"op":0,"d":{"session_id":"fz","resume_gateway_url":"wss://r.example"}}"#,
            ),
            ShardState::Resuming | ShardState::Active => {
                let next = self.shard.session().map_or(1, |session| session.sequence + 1);
                let t = if self.shard.state() == ShardState::Resuming {
                    "RESUMED"
                } else {
                    "MESSAGE_CREATE"
                };
                self.payload(0, Some(next), Some(t), b"{}");
            }
            ShardState::Closing => self.shard.connection_lost(now, LossCause::Transport),
            ShardState::WaitingToReconnect | ShardState::Stopped | ShardState::Fatal => {
                if let Some(deadline) = self.shard.poll_timeout() {
                    self.now = self.now.max(deadline);
                }
                self.fire_timer();
            }
        }
    }

    /// The identify limiter's answer. The shard may not be waiting (the request may belong to an
    /// older connection): an error is a valid answer.
    fn permit(&mut self) {
        self.identify_requested = false;
        if self.shard.identify_permitted(self.now).is_ok() {
            self.permit_unspent = true;
        }
    }

    fn payload(&mut self, op: u8, s: Option<u64>, t: Option<&str>, raw: &[u8]) {
        let head = PayloadHead { op, s, t };
        self.shard.payload_received(self.now, &head, raw);
    }

    fn fire_timer(&mut self) {
        if self
            .shard
            .poll_timeout()
            .is_some_and(|deadline| deadline <= self.now)
        {
            self.shard.handle_timeout(self.now);
        }
        self.drain();
    }

    /// Drains transmits and events, checking each.
    fn drain(&mut self) {
        let window = Duration::from_millis(SEND_WINDOW_MS);
        while let Some(transmit) = self.shard.poll_transmit(self.now, &mut self.buf) {
            let state = self.shard.state();
            assert!(state.is_open(), "transmit while {state:?}");
            assert_eq!(transmit.size, self.buf.len());
            assert!(
                self.buf.len() <= PAYLOAD_BYTES_MAX,
                "payload of {} bytes",
                self.buf.len()
            );
            assert!(
                sonic_rs::from_slice::<sonic_rs::Value>(&self.buf).is_ok(),
                "invalid JSON sent: {:?}",
                String::from_utf8_lossy(&self.buf)
            );
            match transmit.kind {
                TransmitKind::Command => {
                    assert_eq!(state, ShardState::Active, "command sent while {state:?}");
                    let queued = self.commands.pop_front();
                    assert_eq!(
                        queued.as_deref(),
                        Some(&self.buf[..]),
                        "a command sent that is not the oldest one accepted"
                    );
                }
                TransmitKind::Identify => {
                    assert_eq!(state, ShardState::Identifying, "identify while {state:?}");
                    assert!(self.permit_unspent, "identify without a permit");
                    self.permit_unspent = false;
                }
                TransmitKind::Resume => {
                    assert_eq!(state, ShardState::Resuming, "resume while {state:?}");
                    assert!(self.shard.session().is_some(), "resume without a session");
                }
                TransmitKind::Heartbeat => {}
            }
            while self
                .sent_at
                .front()
                .is_some_and(|&at| self.now.saturating_duration_since(at) >= window)
            {
                self.sent_at.pop_front();
            }
            self.sent_at.push_back(self.now);
            assert!(
                self.sent_at.len() <= SEND_LIMIT_PER_WINDOW,
                "{} payloads within 60 s",
                self.sent_at.len()
            );
        }
        while let Some(event) = self.shard.poll_event() {
            match event {
                ShardEvent::Close { code } => {
                    assert!(
                        code == CLOSE_CODE_KEEP_SESSION || self.end_session_requested,
                        "closed with {code} without a non-resumable shutdown request"
                    );
                }
                ShardEvent::Fatal { code, .. } => {
                    assert!(
                        self.last_close_fatal,
                        "fatal {code} without a fatal close code"
                    );
                    self.commands_refused += self.commands.len() as u64;
                    self.commands.clear();
                }
                ShardEvent::Stopped => {
                    assert!(self.shutdown_requested, "stopped unasked");
                    self.commands_refused += self.commands.len() as u64;
                    self.commands.clear();
                }
                ShardEvent::Connect { .. } => {
                    self.sent_at.clear();
                    self.permit_unspent = false;
                }
                ShardEvent::NeedIdentify => {
                    assert!(!self.identify_requested, "NeedIdentify twice");
                    self.identify_requested = true;
                }
                _ => {}
            }
        }
    }

    fn check(&self) {
        let state = self.shard.state();
        if !state.is_terminal() {
            assert!(
                self.shard.poll_timeout().is_some(),
                "{state:?} without a timer: dead shard"
            );
        }
        if state == ShardState::Stopped {
            assert!(
                self.shutdown_requested,
                "stopped without a shutdown request"
            );
        }
        assert_eq!(
            self.shard.queued_commands(),
            self.commands.len(),
            "commands lost or duplicated"
        );
        assert_eq!(
            self.shard.counters().commands_rejected_total,
            self.commands_refused,
            "a command neither sent nor counted as refused"
        );
    }
}

/// Action 12 with this "op": an arbitrary [`frame`] classified as the driver does, instead of a
/// made-up head. Behind an escape so that random inputs, which rarely classify, mostly keep
/// their sessions (the unit tests measure how deep they get).
const FRAME_ESCAPE: u8 = 0xff;

/// Envelopes for [`frame`]: the start of a payload the machine reads (HELLO, READY, op 9) and
/// its end, around the nesting and bytes the input chooses.
const FRAME_TEMPLATES: [(&[u8], &[u8]); 3] = [
    (
        br#"{"t":null,"s":null,"op":10,"d":{"x":"#,
        br#","heartbeat_interval":41250}}"#,
    ),
    (
        br#"{"t":"READY","s":1,"op":0,"d":{"x":"#,
        br#","session_id":"fz","resume_gateway_url":"wss://r.example"}}"#,
    ),
    (br#"{"t":null,"s":null,"op":9,"d":"#, b"}"),
];

/// A frame from the input: `[kind][length][bytes]`, and for kinds 1–3 a depth (u16 LE, doubled)
/// of `[`…`]` nesting around the bytes, inside a [`FRAME_TEMPLATES`] envelope. Kind 0: the
/// bytes alone.
fn frame(input: &mut Input<'_>) -> Vec<u8> {
    let kind = usize::from(input.byte().unwrap_or(0) % 4);
    let len = usize::from(input.byte().unwrap_or(0));
    let Some(&(start, end)) = kind
        .checked_sub(1)
        .and_then(|index| FRAME_TEMPLATES.get(index))
    else {
        return input.bytes(len).to_vec();
    };
    let depth = usize::from(input.u16()) * 2;
    let bytes = input.bytes(len);
    let mut raw = Vec::with_capacity(start.len() + 2 * depth + bytes.len() + end.len());
    raw.extend_from_slice(start);
    raw.resize(raw.len() + depth, b'[');
    raw.extend_from_slice(bytes);
    raw.resize(raw.len() + depth, b']');
    raw.extend_from_slice(end);
    raw
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The input of a HELLO, READY or op 9 (template `kind`) whose `d` nests `2 × depth` levels,
    /// after `prefix` (seed, queue capacity, no session, then actions).
    fn deep(prefix: &[u8], kind: u8, depth: u16) -> Vec<u8> {
        [
            prefix,
            &[12, FRAME_ESCAPE, kind, 0],
            &depth.to_le_bytes()[..],
        ]
        .concat()
    }

    #[test]
    fn deeply_nested_payloads_cost_a_reconnect_not_the_stack() {
        // 200,000 levels: sonic-rs, which recurses per level, would overflow any core's stack.
        let inputs = [
            deep(&[0, 8, 0, 2], 1, 50_000),
            deep(&[0, 8, 0, 2, 6, 0, 13], 2, 50_000),
            deep(&[0, 8, 0, 2, 6, 0], 3, 50_000),
        ];
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || {
                for input in &inputs {
                    let counters = run(input);
                    assert_eq!(counters.malformed_payloads_total, 1, "{counters:?}");
                }
            })
            .expect("a test thread")
            .join()
            .expect("no stack overflow");
    }
}
