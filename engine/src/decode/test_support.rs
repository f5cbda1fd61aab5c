//! Test world for the decode stage: one connection's payloads from the mock gateway's generator,
//! encoded by the mock's encoder exactly as the mock gateway sends them.

use mock_gateway::Transport;
use mock_gateway::compress::{self, Encoder};
use mock_gateway::events::{DispatchInfo, EventMix, SessionEvents, guild_ids};

use super::Compression;

pub(crate) const HELLO: &[u8] =
    br#"{"t":null,"s":null,"op":10,"d":{"heartbeat_interval":41250,"_trace":["[\"gateway-prd-mock\",{\"micros\":0.0}]"]}}"#;
pub(crate) const HEARTBEAT_ACK: &[u8] = br#"{"t":null,"s":null,"op":11,"d":null}"#;

/// One payload of a generated connection.
pub(crate) struct Generated {
    pub(crate) payload: Vec<u8>,
    /// What the steady-stream generator said about it (`None` for session payloads).
    pub(crate) info: Option<DispatchInfo>,
}

/// A connection's payloads: HELLO, READY, a GUILD_CREATE per guild (the first one 300 KB, the
/// others 20 KB), `steady` dispatches of the default mix with a heartbeat ACK every 100, then two
/// GUILD_DELETEs (an outage and a removal), a members chunk, RATE_LIMITED and RESUMED.
/// `guild_count` must be at least 3.
pub(crate) fn connection(seed: u64, guild_count: usize, steady: usize) -> Vec<Generated> {
    assert!(guild_count >= 3, "the tail names three guilds");
    let guilds = guild_ids(seed, guild_count);
    let mut events = SessionEvents::new(seed, 0, guilds.clone(), EventMix::default());
    let mut generated = vec![session(HELLO.to_vec())];
    let mut payload = Vec::new();
    let mut seq = 1;
    events.ready(
        seq,
        "session-decode",
        "wss://resume.example",
        [0, 1],
        &mut payload,
    );
    generated.push(session(std::mem::take(&mut payload)));
    for (index, &guild) in guilds.iter().enumerate() {
        seq += 1;
        let target_bytes = if index == 0 { 300_000 } else { 20_000 };
        events.guild_create(guild, seq, target_bytes, &mut payload);
        generated.push(session(std::mem::take(&mut payload)));
    }
    for index in 0..steady {
        if index % 100 == 99 {
            generated.push(session(HEARTBEAT_ACK.to_vec()));
        }
        seq += 1;
        let info = events.next_dispatch(seq, &mut payload);
        generated.push(Generated {
            payload: std::mem::take(&mut payload),
            info: Some(info),
        });
    }
    seq += 1;
    events.guild_delete(guilds[1], true, seq, &mut payload);
    generated.push(session(std::mem::take(&mut payload)));
    seq += 1;
    events.guild_delete(guilds[2], false, seq, &mut payload);
    generated.push(session(std::mem::take(&mut payload)));
    seq += 1;
    events.guild_members_chunk(guilds[0], Some("nonce-1"), seq, &mut payload);
    generated.push(session(std::mem::take(&mut payload)));
    seq += 1;
    events.rate_limited(8, 12.5, guilds[0], Some("nonce-2"), seq, &mut payload);
    generated.push(session(std::mem::take(&mut payload)));
    seq += 1;
    events.resumed(seq, &mut payload);
    generated.push(session(payload));
    generated
}

/// What an idle shard of `tools/scale/run.sh` receives: HELLO, READY, two GUILD_CREATEs of about
/// 2 KB and five heartbeat ACKs.
pub(crate) fn idle_connection(seed: u64) -> Vec<Generated> {
    let guilds = guild_ids(seed, 2);
    let mut events = SessionEvents::new(seed, 0, guilds.clone(), EventMix::default());
    let mut generated = vec![session(HELLO.to_vec())];
    let mut payload = Vec::new();
    events.ready(
        1,
        "session-idle",
        "wss://resume.example",
        [0, 1],
        &mut payload,
    );
    generated.push(session(std::mem::take(&mut payload)));
    for (seq, &guild) in (2..).zip(&guilds) {
        events.guild_create(guild, seq, 2_000, &mut payload);
        generated.push(session(std::mem::take(&mut payload)));
    }
    generated.extend((0..5).map(|_| session(HEARTBEAT_ACK.to_vec())));
    generated
}

fn session(payload: Vec<u8>) -> Generated {
    Generated {
        payload,
        info: None,
    }
}

/// The mock gateway's encoder for `compression` (default levels; payload compression from 1 KiB).
pub(crate) fn encoder(compression: Compression) -> Encoder {
    let (transport, payload_compress) = match compression {
        Compression::ZstdStream => (Transport::ZstdStream, false),
        Compression::ZlibStream => (Transport::ZlibStream, false),
        Compression::Payload => (Transport::None, true),
        Compression::None => (Transport::None, false),
    };
    Encoder::new(transport, payload_compress, 6, 3, 1024).expect("the mock's levels are valid")
}

/// A frame the mock encoder produced, owned.
#[derive(Clone, Debug)]
pub(crate) enum OwnedFrame {
    Text(Vec<u8>),
    Binary(Vec<u8>),
}

impl OwnedFrame {
    pub(crate) fn as_frame(&self) -> super::Frame<'_> {
        match self {
            OwnedFrame::Text(bytes) => super::Frame::Text(bytes),
            OwnedFrame::Binary(bytes) => super::Frame::Binary(bytes),
        }
    }
}

/// Encodes `payload` with `encoder`.
pub(crate) fn encode(encoder: &mut Encoder, payload: &[u8]) -> OwnedFrame {
    let message = payload.to_vec().into();
    match encoder
        .encode(&message)
        .expect("the mock encoder does not fail")
    {
        compress::Frame::Text(bytes) => OwnedFrame::Text(bytes.to_vec()),
        compress::Frame::Binary(bytes) => OwnedFrame::Binary(bytes.to_vec()),
    }
}

/// xorshift64*: enough randomness for mutations and smoke inputs, no dependency.
pub(crate) struct Random(pub(crate) u64);

impl Random {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub(crate) fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }
}
