//! Verify mode: record everything a twilight shard sees, per shard and per session.
//!
//! Each shard runs in its own task and reads raw messages from the shard stream (after
//! twilight has decompressed them and updated its own state), then deserializes each
//! with `twilight_gateway::parse`, exactly as `StreamExt::next_event` would: a payload the
//! mock gets wrong shows up as an error here, as it would in a real bot.

use crate::control::{CloseReport, Control, Outcome, Progress, close_resumably, millis_since};
use crate::seqset::SeqSet;
use futures_util::StreamExt as _;
use serde::Serialize;
use std::{
    collections::{BTreeMap, HashSet},
    sync::Arc,
    time::Duration,
};
use tokio::{sync::watch, time::Instant};
use tracing::Instrument as _;
use twilight_gateway::{
    EventTypeFlags, Latency, Message, Shard,
    error::{ReceiveMessageError, ReceiveMessageErrorType},
    parse,
};
use twilight_model::gateway::event::{DispatchEvent, GatewayEvent, GatewayEventDeserializer};

/// Longest error detail kept in the report (twilight's errors can hold a whole payload).
const MAX_DETAIL: usize = 400;

/// What a shard task needs besides its shard.
#[derive(Clone, Debug)]
pub struct Target {
    pub until_seq: Option<u64>,
    pub start: Instant,
}

/// Everything one shard saw.
#[derive(Debug, Default, Serialize)]
pub struct ShardReport {
    /// Dispatches (op 0) received.
    pub dispatches: u64,
    pub ready: u64,
    pub resumed: u64,
    pub guild_creates: u64,
    /// Whether every guild listed in the current session's READY has arrived.
    pub fully_ready: bool,
    /// Whether the shard reached the stop target.
    pub target_reached: bool,
    /// Dispatch counts by event name (`t`).
    pub by_type: BTreeMap<String, u64>,
    /// Counts of every gateway opcode received, by name.
    pub ops: BTreeMap<&'static str, u64>,
    /// One entry per session, oldest first; a session starts at READY.
    pub sessions: Vec<SessionReport>,
    /// Heartbeats twilight sent, as seen between messages (a lower bound).
    pub heartbeats_sent: u64,
    /// Heartbeats twilight recorded as acknowledged, over all connections.
    pub heartbeats_acked: u64,
    /// Heartbeat round trips (sent → ACK), over all connections; `null` if none.
    pub latency_ms: Option<LatencyReport>,
    /// Errors twilight returned from the shard stream, and payloads `parse` rejected.
    pub errors: Vec<ErrorReport>,
    /// Close frames twilight reported while running (not the final close): the gateway's
    /// own closes, its answers to closes twilight sent (after op 7, op 9, a zombie), and
    /// twilight's 1006 marker for transport errors.
    pub closes: Vec<CloseReport>,
    /// The gateway's answer to the probe's final resumable close (4000); `null` if none
    /// came within 2 s.
    pub final_close: Option<CloseReport>,
    /// Whether the shard stream ended: twilight gave up on the shard (fatal close code).
    pub stream_ended: bool,
}

/// One session: from a READY to the next READY (RESUMED continues it).
#[derive(Debug, Default, Serialize)]
pub struct SessionReport {
    /// `session_id` from READY; `null` for dispatches before any READY.
    pub session_id: Option<String>,
    pub dispatches: u64,
    /// RESUMED dispatches received in this session.
    pub resumed: u64,
    /// Distinct sequence numbers received, as sorted inclusive ranges `[first, last]`.
    pub ranges: Vec<[u64; 2]>,
    /// Dispatches whose seq had already been received in this session.
    pub duplicates: u64,
    /// Dispatches whose seq was lower than the previous dispatch's.
    pub out_of_order: u64,
}

/// Heartbeat round-trip statistics.
#[derive(Debug, Serialize)]
pub struct LatencyReport {
    pub avg: f64,
    pub min: f64,
    pub max: f64,
}

/// An error twilight reported, or a payload it could not deserialize.
#[derive(Debug, Serialize)]
pub struct ErrorReport {
    /// Milliseconds since the probe started.
    pub at_ms: u64,
    /// `reconnect`, `compression`, `deserializing` (from the shard stream), `parse`
    /// (`twilight_gateway::parse` rejected a payload) or `no_opcode`.
    pub kind: &'static str,
    /// Event name, for `parse` errors.
    pub event: Option<String>,
    /// The error and its sources, truncated.
    pub detail: String,
}

/// Run one task per shard until the target, a timeout or a signal; return the outcome
/// and each shard's report, in the order of `shards`.
pub async fn run(
    shards: Vec<Shard>,
    control: &Control,
    target: &Target,
    guilds_expected: u64,
    deadline: Instant,
) -> (Outcome, Vec<ShardReport>) {
    let count = shards.len();
    let tasks: Vec<_> = shards
        .into_iter()
        .map(|shard| {
            let span = tracing::info_span!("shard", id = shard.id().number());
            let recorder = Recorder::new(target.clone(), Arc::clone(&control.progress));
            tokio::spawn(recorder.run(shard, control.stop_signal()).instrument(span))
        })
        .collect();
    let outcome = control.wait(count, guilds_expected, deadline).await;
    control.stop();
    let mut reports = Vec::with_capacity(count);
    for task in tasks {
        reports.push(task.await.expect("a shard task panicked"));
    }
    (outcome, reports)
}

/// Per-shard state behind a [`ShardReport`].
struct Recorder {
    target: Target,
    progress: Arc<Progress>,
    report: ShardReport,
    /// The current session; a new READY moves it to `past`.
    session: Option<Session>,
    /// Sessions that ended.
    past: Vec<Session>,
    /// `Latency::periods()` last seen; it restarts at 0 on every HELLO.
    last_periods: u32,
    /// `Latency::sent()` last seen.
    last_sent: Option<std::time::Instant>,
    /// Heartbeat round trips seen.
    round_trips: Vec<Duration>,
}

/// A session being recorded.
#[derive(Default)]
struct Session {
    report: SessionReport,
    seqs: SeqSet,
    last_seq: Option<u64>,
    /// Guilds from READY that have not arrived yet; `None` until READY was parsed.
    pending_guilds: Option<HashSet<u64>>,
}

impl Session {
    fn fully_ready(&self) -> bool {
        self.pending_guilds.as_ref().is_some_and(HashSet::is_empty)
    }
}

impl Recorder {
    fn new(target: Target, progress: Arc<Progress>) -> Self {
        Self {
            target,
            progress,
            report: ShardReport::default(),
            session: None,
            past: Vec::new(),
            last_periods: 0,
            last_sent: None,
            round_trips: Vec::new(),
        }
    }

    /// Read the shard until told to stop or until twilight gives up on it.
    async fn run(mut self, mut shard: Shard, mut stop: watch::Receiver<bool>) -> ShardReport {
        loop {
            let item = tokio::select! {
                biased;
                _ = stop.changed() => break,
                item = shard.next() => item,
            };
            let at_ms = millis_since(self.target.start);
            match item {
                None => {
                    self.report.stream_ended = true;
                    self.progress.shard_ended();
                    break;
                }
                Some(Ok(Message::Text(text))) => self.on_text(text, at_ms),
                Some(Ok(Message::Close(frame))) => {
                    self.report
                        .closes
                        .push(CloseReport::new(at_ms, frame.as_ref()));
                }
                Some(Err(error)) => self.on_error(&error, at_ms),
            }
            self.observe_latency(shard.latency());
        }
        if !self.report.stream_ended {
            self.report.final_close = close_resumably(&mut shard, self.target.start).await;
        }
        self.finish()
    }

    /// Classify a gateway payload and record it.
    fn on_text(&mut self, text: String, at_ms: u64) {
        let Some(head) = GatewayEventDeserializer::from_json(&text) else {
            self.push_error(at_ms, "no_opcode", None, &text);
            return;
        };
        let (op, seq) = (head.op(), head.sequence());
        let name = head.event_type().unwrap_or("").to_owned();
        *self.report.ops.entry(op_name(op)).or_default() += 1;
        if op != 0 {
            return;
        }
        let event = match parse(text, EventTypeFlags::all()) {
            Ok(Some(GatewayEvent::Dispatch(_, event))) => Some(event),
            Ok(_) => None,
            Err(error) => {
                self.push_error(at_ms, "parse", Some(name.clone()), &error_chain(&error));
                None
            }
        };
        self.on_dispatch(&name, seq, event);
    }

    /// Record a dispatch in the session it belongs to.
    fn on_dispatch(&mut self, name: &str, seq: Option<u64>, event: Option<DispatchEvent>) {
        self.report.dispatches += 1;
        *self.report.by_type.entry(name.to_owned()).or_default() += 1;
        match name {
            "READY" => {
                self.report.ready += 1;
                self.past.extend(self.session.take());
                let mut session = Session::default();
                if let Some(DispatchEvent::Ready(ready)) = &event {
                    session.report.session_id = Some(ready.session_id.clone());
                    session.pending_guilds =
                        Some(ready.guilds.iter().map(|g| g.id.get()).collect());
                }
                self.session = Some(session);
            }
            "RESUMED" => {
                self.report.resumed += 1;
                if let Some(session) = &mut self.session {
                    session.report.resumed += 1;
                }
            }
            "GUILD_CREATE" => {
                self.report.guild_creates += 1;
                self.progress.guild_created();
            }
            _ => {}
        }
        let session = self.session.get_or_insert_with(Session::default);
        if let (Some(DispatchEvent::GuildCreate(guild)), Some(pending)) =
            (&event, &mut session.pending_guilds)
        {
            pending.remove(&guild.id().get());
        }
        session.report.dispatches += 1;
        let Some(seq) = seq else { return };
        if !session.seqs.insert(seq) {
            session.report.duplicates += 1;
        }
        if session.last_seq.is_some_and(|last| seq < last) {
            session.report.out_of_order += 1;
        }
        session.last_seq = Some(seq);

        let reached = session.fully_ready() && self.target.until_seq.is_none_or(|s| seq >= s);
        if reached && !self.report.target_reached {
            self.report.target_reached = true;
            tracing::info!(seq, "shard reached its target");
            self.progress.shard_reached();
        }
    }

    fn on_error(&mut self, error: &ReceiveMessageError, at_ms: u64) {
        let kind = match error.kind() {
            ReceiveMessageErrorType::Reconnect => "reconnect",
            ReceiveMessageErrorType::Deserializing { .. } => "deserializing",
            #[cfg(any(feature = "zlib", feature = "zstd"))]
            ReceiveMessageErrorType::Compression => "compression",
            _ => "other",
        };
        self.push_error(at_ms, kind, None, &error_chain(error));
    }

    fn push_error(&mut self, at_ms: u64, kind: &'static str, event: Option<String>, detail: &str) {
        let mut detail = detail.to_owned();
        if detail.len() > MAX_DETAIL {
            let cut = (0..=MAX_DETAIL).rev().find(|&i| detail.is_char_boundary(i));
            detail.truncate(cut.unwrap_or(0));
            detail.push('…');
        }
        tracing::warn!(kind, event, detail, "shard error");
        self.report.errors.push(ErrorReport {
            at_ms,
            kind,
            event,
            detail,
        });
    }

    /// Accumulate heartbeat statistics: twilight resets `Latency` on every HELLO, and
    /// every ACK is a message, so looking after each message misses none.
    fn observe_latency(&mut self, latency: &Latency) {
        let periods = latency.periods();
        if periods < self.last_periods {
            self.last_periods = 0;
        }
        if periods > self.last_periods {
            self.report.heartbeats_acked += u64::from(periods - self.last_periods);
            self.round_trips.extend(latency.recent().first());
        }
        self.last_periods = periods;
        if latency.sent().is_some() && latency.sent() != self.last_sent {
            self.report.heartbeats_sent += 1;
        }
        self.last_sent = latency.sent();
    }

    fn finish(mut self) -> ShardReport {
        self.report.fully_ready = self.session.as_ref().is_some_and(Session::fully_ready);
        self.past.extend(self.session.take());
        self.report.sessions = self
            .past
            .into_iter()
            .map(|mut s| {
                s.report.ranges = s.seqs.ranges().to_vec();
                s.report
            })
            .collect();
        self.report.latency_ms = latency_report(&self.round_trips);
        self.report
    }
}

/// Name of a gateway opcode the gateway sends.
fn op_name(op: u8) -> &'static str {
    match op {
        0 => "dispatch",
        1 => "heartbeat",
        7 => "reconnect",
        9 => "invalid_session",
        10 => "hello",
        11 => "heartbeat_ack",
        _ => "unknown",
    }
}

/// An error and its sources, joined with ": ".
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

fn latency_report(round_trips: &[Duration]) -> Option<LatencyReport> {
    let ms: Vec<f64> = round_trips.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    let (min, max) = ms
        .iter()
        .fold((f64::MAX, 0.0_f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    // A few thousand heartbeats at most: the count converts exactly.
    #[allow(clippy::cast_precision_loss)]
    let avg = ms.iter().sum::<f64>() / ms.len() as f64;
    (!ms.is_empty()).then_some(LatencyReport { avg, min, max })
}
