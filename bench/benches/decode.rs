//! Stage: decode. What one connection's decoder costs per event in each compression mode, over a
//! realistic stream: 2,000 dispatches of the mock generator's default mix (after a warm-up that
//! fills its message window), encoded once by the mock's encoder as the mock gateway sends them.
//!
//! Each iteration resets the decoder and replays the whole stream in order (a zstd or zlib
//! context must see a connection from its start). Per mode:
//! - `decompress-only`: frames → payloads;
//! - `decompress+classify`: plus `op`/`s`/`t` (the whole stage as the shard machine sees it);
//! - `decompress+classify+copy`: plus copying each payload into a reused record buffer, as the
//!   driver does before the next frame (the "decode + classify + copy" floor).
//! - `stage`: the whole per-frame work of a core before the ring: decompress, classify, the
//!   filter (allow list, redundant MESSAGE_UPDATE drop) and an owned copy of each forwarded
//!   payload for its record. `stage` minus `decompress-only` is shardgate's own overhead.
//!
//! `/bytes` variants report decompressed bytes per second, `/events` events per second (ns per
//! event = 1e9 / rate). Times are the bench thread's CPU time (`/proc/thread-self/schedstat`;
//! wall time where that file is missing), so that other work on a shared machine does not
//! inflate them (measure CPU, not wall time). Also `classify` alone, and the field
//! helpers the filter stage calls: `fields/message-id-and-content-hash` over the stream's
//! MESSAGE_CREATE/UPDATE events, `fields/guild-id` over all of them.
//!
//! Run: `cargo bench -p shardgate-bench --bench decode` (add `-- --quick` for a short run).

#[path = "support/cpu_clock.rs"]
mod cpu_clock;

use std::hint::black_box;
use std::time::{Duration, Instant};

use cpu_clock::cpu_time;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mock_gateway::Transport;
use mock_gateway::compress::{self, Encoder};
use mock_gateway::events::{EventMix, SessionEvents, guild_ids};
use shardgate::decode::{
    Compression, Decoder, DecoderLimits, Frame, classify, guild_id, message_id_and_content_hash,
};
use shardgate::filter::{Filter, FilterConfig, ShardFilter, Verdict};
use shardgate::record::PayloadArena;

const SEED: u64 = 0x5EED;
/// Guilds of the benchmarked shard: a busy shard of a mid-size bot.
const GUILDS_PER_SHARD: usize = 1000;
/// Dispatches generated (not encoded) first, so that updates, deletes and replies have targets.
const WARM_UP_EVENTS: u64 = 10_000;
/// Events in the replayed stream.
const STREAM_EVENTS: u64 = 2_000;

/// The stream's payloads, in order.
fn payloads() -> Vec<Vec<u8>> {
    let mut events = SessionEvents::new(
        SEED,
        0,
        guild_ids(SEED, GUILDS_PER_SHARD),
        EventMix::default(),
    );
    let mut scratch = Vec::with_capacity(64 * 1024);
    for seq in 1..=WARM_UP_EVENTS {
        scratch.clear();
        events.next_dispatch(seq, &mut scratch);
    }
    (WARM_UP_EVENTS + 1..=WARM_UP_EVENTS + STREAM_EVENTS)
        .map(|seq| {
            let mut payload = Vec::new();
            events.next_dispatch(seq, &mut payload);
            payload
        })
        .collect()
}

/// One connection's frames, owned.
enum OwnedFrame {
    Text(Vec<u8>),
    Binary(Vec<u8>),
}

impl OwnedFrame {
    fn as_frame(&self) -> Frame<'_> {
        match self {
            OwnedFrame::Text(bytes) => Frame::Text(bytes),
            OwnedFrame::Binary(bytes) => Frame::Binary(bytes),
        }
    }
}

/// Encodes the stream with one encoder, as the mock gateway does for `compression` (its default
/// levels: zstd 3, zlib 6; payload compression from 1 KiB).
fn frames(compression: Compression, payloads: &[Vec<u8>]) -> Vec<OwnedFrame> {
    let (transport, payload_compress) = match compression {
        Compression::ZstdStream => (Transport::ZstdStream, false),
        Compression::ZlibStream => (Transport::ZlibStream, false),
        Compression::Payload => (Transport::None, true),
        Compression::None => (Transport::None, false),
    };
    let mut encoder =
        Encoder::new(transport, payload_compress, 6, 3, 1024).expect("the mock's levels are valid");
    payloads
        .iter()
        .map(|payload| {
            let message = payload.clone().into();
            match encoder
                .encode(&message)
                .expect("the mock encoder does not fail")
            {
                compress::Frame::Text(bytes) => OwnedFrame::Text(bytes.to_vec()),
                compress::Frame::Binary(bytes) => OwnedFrame::Binary(bytes.to_vec()),
            }
        })
        .collect()
}

/// What an iteration does with each payload.
#[derive(Clone, Copy)]
enum Work {
    DecompressOnly,
    Classify,
    ClassifyAndCopy,
    /// What a core does per frame before the ring: decompress, classify, filter (allow list,
    /// redundant MESSAGE_UPDATE drop), and the record's own copy of a forwarded payload.
    Stage,
}

/// The filter state of [`Work::Stage`], kept across iterations (a MESSAGE_CREATE resets its
/// message's cached content, so a second pass sees what the first saw).
struct StageFilter {
    filter: Filter,
    shard: ShardFilter,
    arena: PayloadArena,
    now: Instant,
}

/// Replays the whole stream once through a reset decoder.
fn replay(
    decoder: &mut Decoder,
    scratch: &mut Vec<u8>,
    frames: &[OwnedFrame],
    work: Work,
    record: &mut Vec<u8>,
    stage: &mut StageFilter,
) -> u64 {
    decoder.reset();
    let mut checksum = 0u64;
    for frame in frames {
        let payload = decoder
            .decode(frame.as_frame(), scratch)
            .expect("the stream decodes")
            .expect("every frame ends a message");
        checksum += payload.len() as u64;
        match work {
            Work::DecompressOnly => {}
            Work::Classify => {
                let head = classify(payload).expect("generated payloads classify");
                checksum += u64::from(head.op) + head.s.unwrap_or(0);
            }
            Work::ClassifyAndCopy => {
                let head = classify(payload).expect("generated payloads classify");
                checksum += u64::from(head.op) + head.s.unwrap_or(0);
                record.clear();
                record.extend_from_slice(payload);
                checksum += record.len() as u64;
            }
            Work::Stage => {
                let head = classify(payload).expect("generated payloads classify");
                let verdict = stage
                    .filter
                    .dispatch(&mut stage.shard, &head, payload, stage.now);
                if let Verdict::Forward(_) = verdict {
                    // The record's payload, cut from the core's arena as the core does (it
                    // moves through the ring).
                    let owned = stage.arena.copy(payload);
                    checksum += owned.len() as u64;
                    black_box(owned);
                }
            }
        }
    }
    checksum
}

fn decode(criterion: &mut Criterion) {
    let payloads = payloads();
    let payload_bytes: u64 = payloads.iter().map(|payload| payload.len() as u64).sum();
    eprintln!(
        "decode: {STREAM_EVENTS} events, {payload_bytes} B decompressed (mean {} B)",
        payload_bytes / STREAM_EVENTS
    );
    let mut group = criterion.benchmark_group("decode");
    group.measurement_time(Duration::from_secs(5));
    let mut record = Vec::with_capacity(64 * 1024);
    for compression in Compression::ALL {
        let frames = frames(compression, &payloads);
        let frame_bytes: usize = frames
            .iter()
            .map(|frame| match frame {
                OwnedFrame::Text(bytes) | OwnedFrame::Binary(bytes) => bytes.len(),
            })
            .sum();
        eprintln!("decode: {compression}: {frame_bytes} B on the wire");
        let mut decoder = Decoder::new(compression, DecoderLimits::default())
            .expect("the default limits are valid");
        let mut scratch = Vec::new();
        let cases = [
            ("decompress-only", Work::DecompressOnly, true),
            ("decompress+classify", Work::Classify, true),
            ("decompress+classify+copy", Work::ClassifyAndCopy, false),
            ("stage", Work::Stage, false),
        ];
        let mut stage = StageFilter {
            filter: Filter::new(FilterConfig::default()),
            shard: ShardFilter::new(),
            arena: PayloadArena::default(),
            now: Instant::now(),
        };
        for (name, work, with_bytes) in cases {
            // The same replay, reported per byte (where asked) and per event.
            let bytes = with_bytes.then_some((Throughput::Bytes(payload_bytes), "bytes"));
            let events = Some((Throughput::Elements(STREAM_EVENTS), "events"));
            for (throughput, unit) in bytes.into_iter().chain(events) {
                group.throughput(throughput);
                group.bench_function(format!("{compression}/{name}/{unit}"), |bencher| {
                    cpu_time(bencher, || {
                        replay(
                            &mut decoder,
                            &mut scratch,
                            &frames,
                            work,
                            &mut record,
                            &mut stage,
                        )
                    })
                });
            }
        }
    }

    group.throughput(Throughput::Bytes(payload_bytes));
    group.bench_function("classify/bytes", |bencher| {
        cpu_time(bencher, || classify_all(&payloads))
    });
    group.throughput(Throughput::Elements(STREAM_EVENTS));
    group.bench_function("classify/events", |bencher| {
        cpu_time(bencher, || classify_all(&payloads))
    });
    // The filter stage's reads: the content hash of every message event, the guild of every event.
    let messages: Vec<&[u8]> = payloads
        .iter()
        .map(Vec::as_slice)
        .filter(|payload| {
            let head = classify(payload).expect("generated payloads classify");
            matches!(head.t, Some("MESSAGE_CREATE" | "MESSAGE_UPDATE"))
        })
        .collect();
    group.throughput(Throughput::Elements(messages.len() as u64));
    group.bench_function("fields/message-id-and-content-hash/events", |bencher| {
        cpu_time(bencher, || {
            let mut checksum = 0u64;
            for payload in &messages {
                let (id, hash) = message_id_and_content_hash(payload).expect("messages have both");
                checksum ^= id ^ hash;
            }
            black_box(checksum)
        })
    });
    group.throughput(Throughput::Elements(STREAM_EVENTS));
    group.bench_function("fields/guild-id/events", |bencher| {
        cpu_time(bencher, || {
            let mut checksum = 0u64;
            for payload in &payloads {
                checksum += guild_id(payload).unwrap_or(0);
            }
            black_box(checksum)
        })
    });
    group.finish();
}

fn classify_all(payloads: &[Vec<u8>]) -> u64 {
    let mut checksum = 0u64;
    for payload in payloads {
        let head = classify(black_box(payload)).expect("generated payloads classify");
        checksum += u64::from(head.op) + head.s.unwrap_or(0);
    }
    black_box(checksum)
}

criterion_group!(decode_stage, decode);
criterion_main!(decode_stage);
