//! The HTTP side: the listener lifecycle (serve, refuse for a while, listen again on the same
//! port) and the per-request handler (auth → size → parse → delay → dice → record → answer).
//!
//! Must not: hold the ledger lock across an await, record a batch it answers with anything but
//! a 2xx, or log the secret or per-record detail above trace.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, sleep_until};
use tracing::{debug, info, trace, warn};

use crate::batch::{BatchError, parse_batch};
use crate::config::{Secret, check_probability};
use crate::ledger::{Failure, Ledger};
use crate::report::{Control, Knobs, Report};

/// Paths under this prefix are the bot's own endpoints, never batches.
const BOT_PREFIX: &str = "/_bot";
/// Bound on a `/_bot/control` body.
const CONTROL_BODY_BYTES_MAX: usize = 64 * 1024;
/// How long connections get to finish the request they are in when the bot goes away, on top
/// of `slow_ms`; after that they are dropped.
const CLOSE_GRACE_MS: u64 = 2_000;
/// Pause between attempts to listen again when the port is not free yet.
const REBIND_RETRY_MS: u64 = 100;

/// State shared by the handle, the server task and every connection.
#[derive(Debug)]
pub(crate) struct Shared {
    ledger: Mutex<Ledger>,
    fail_rate_bits: AtomicU64,
    slow_ms: AtomicU64,
    /// Milliseconds to go away for after the next bad batch is answered; 0: do not.
    away_after_bad_batch_ms: AtomicU64,
    secret: Option<Secret>,
    max_body_bytes: usize,
    /// Keep each dispatch's content hash ([`crate::BotConfig::record_content`]).
    record_content: bool,
    commands: mpsc::UnboundedSender<Command>,
}

/// What the handle and `/_bot/control` ask of the server task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Command {
    Refuse(Duration),
    Shutdown,
}

impl Shared {
    pub(crate) fn new(
        seed: u64,
        fail_rate: f64,
        slow_ms: u64,
        secret: Option<Secret>,
        max_body_bytes: usize,
        record_content: bool,
    ) -> (Arc<Shared>, mpsc::UnboundedReceiver<Command>) {
        let (commands, receiver) = mpsc::unbounded_channel();
        let shared = Shared {
            ledger: Mutex::new(Ledger::new(seed)),
            fail_rate_bits: AtomicU64::new(fail_rate.to_bits()),
            slow_ms: AtomicU64::new(slow_ms),
            away_after_bad_batch_ms: AtomicU64::new(0),
            secret,
            max_body_bytes,
            record_content,
            commands,
        };
        (Arc::new(shared), receiver)
    }

    pub(crate) fn ledger(&self) -> MutexGuard<'_, Ledger> {
        // A panic while holding the lock leaves counters that are at worst one batch behind;
        // the report is still worth reading, so poisoning is ignored.
        self.ledger
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether each dispatch's content hash is kept ([`crate::BotConfig::record_content`]).
    pub(crate) fn record_content(&self) -> bool {
        self.record_content
    }

    pub(crate) fn knobs(&self) -> Knobs {
        Knobs {
            fail_rate: f64::from_bits(self.fail_rate_bits.load(Ordering::Relaxed)),
            slow_ms: self.slow_ms.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn report(&self) -> Report {
        let knobs = self.knobs();
        self.ledger().report(knobs)
    }

    pub(crate) fn content(&self) -> Vec<crate::batch::ContentRecord> {
        self.ledger().content().to_vec()
    }

    pub(crate) fn backfill_guilds(&self) -> Vec<u64> {
        self.ledger().backfill_guilds().to_vec()
    }

    pub(crate) fn set_fail_rate(&self, fail_rate: f64) {
        self.fail_rate_bits
            .store(fail_rate.to_bits(), Ordering::Relaxed);
    }

    pub(crate) fn set_slow_ms(&self, slow_ms: u64) {
        self.slow_ms.store(slow_ms, Ordering::Relaxed);
    }

    pub(crate) fn go_away_after_the_next_bad_batch(&self, away: Duration) {
        let ms = u64::try_from(away.as_millis()).unwrap_or(u64::MAX).max(1);
        self.away_after_bad_batch_ms.store(ms, Ordering::Relaxed);
    }

    /// Counts a bad batch and, if asked, goes away once its answer is out.
    fn bad_batch_seen(&self) {
        self.ledger().count_bad_batch();
        let away = self.away_after_bad_batch_ms.swap(0, Ordering::Relaxed);
        if away > 0 {
            self.command(Command::Refuse(Duration::from_millis(away)));
        }
    }

    pub(crate) fn reset(&self) {
        self.ledger().reset();
    }

    /// Sends a command to the server task; if it is gone there is nothing left to command.
    pub(crate) fn command(&self, command: Command) {
        if self.commands.send(command).is_err() {
            debug!(?command, "server task already stopped");
        }
    }
}

/// The server task: accepts connections until told to refuse or to stop; while refusing, the
/// listener is closed (clients get connection refused) and every connection is closed; then it
/// listens again on the same address. `SO_REUSEADDR` (set by tokio's `TcpListener::bind` on
/// Unix) lets the port be bound again although closed connections sit in TIME_WAIT.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    mut commands: mpsc::UnboundedReceiver<Command>,
    refuse_schedule: Option<(Duration, Duration)>,
) {
    let addr = match listener.local_addr() {
        Ok(addr) => addr,
        Err(error) => {
            warn!(%error, "listener has no local address; stopping");
            return;
        }
    };
    let mut scheduled_refusal =
        refuse_schedule.map(|(after, refuse_for)| (Instant::now() + after, refuse_for));
    let mut listener = Some(listener);
    loop {
        let current = match listener.take() {
            Some(listener) => listener,
            None => match rebind(addr, &mut commands).await {
                Some(listener) => listener,
                None => return,
            },
        };
        let (close, closing) = watch::channel(false);
        let mut connections = JoinSet::new();
        let refuse_for = loop {
            let scheduled = async {
                match scheduled_refusal {
                    Some((at, refuse_for)) => {
                        sleep_until(at).await;
                        refuse_for
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                accepted = current.accept() => match accepted {
                    Ok((stream, peer)) => {
                        trace!(%peer, "connection accepted");
                        connections.spawn(serve_connection(
                            Arc::clone(&shared),
                            stream,
                            closing.clone(),
                        ));
                    }
                    Err(error) => {
                        // Usually out of file descriptors: back off instead of spinning.
                        warn!(%error, "accept failed");
                        sleep(Duration::from_millis(REBIND_RETRY_MS)).await;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                command = commands.recv() => match command {
                    Some(Command::Refuse(refuse_for)) => break refuse_for,
                    Some(Command::Shutdown) | None => return,
                },
                refuse_for = scheduled => {
                    scheduled_refusal = None;
                    break refuse_for;
                }
            }
        };

        // Go away: no more accepts, then close every connection once its current request is
        // answered (an idle keep-alive connection closes at once).
        drop(current);
        let mut refuse_until = Instant::now() + refuse_for;
        info!(%addr, refuse_for_ms = refuse_for.as_millis() as u64, "refusing connections");
        // Nobody listening only means every connection has already ended.
        let _ = close.send(true);
        let slow_ms = shared.slow_ms.load(Ordering::Relaxed);
        let grace = Duration::from_millis(slow_ms.saturating_add(CLOSE_GRACE_MS));
        let grace_until = Instant::now() + grace;
        loop {
            tokio::select! {
                joined = connections.join_next() => if joined.is_none() { break },
                () = sleep_until(grace_until) => {
                    debug!(connections = connections.len(), "grace over; dropping connections");
                    connections.abort_all();
                    while connections.join_next().await.is_some() {}
                    break;
                }
                command = commands.recv() => match command {
                    Some(Command::Refuse(more)) => {
                        refuse_until = refuse_until.max(Instant::now() + more);
                    }
                    Some(Command::Shutdown) | None => return,
                },
            }
        }
        loop {
            tokio::select! {
                () = sleep_until(refuse_until) => break,
                command = commands.recv() => match command {
                    Some(Command::Refuse(more)) => {
                        refuse_until = refuse_until.max(Instant::now() + more);
                    }
                    Some(Command::Shutdown) | None => return,
                },
            }
        }
    }
}

/// Binds `addr` again after a refusal window, retrying while the port is busy. A refusal asked
/// for meanwhile delays the next attempt. `None` when told to stop meanwhile.
async fn rebind(
    addr: SocketAddr,
    commands: &mut mpsc::UnboundedReceiver<Command>,
) -> Option<TcpListener> {
    let mut attempts: u64 = 0;
    let mut next_attempt = Instant::now();
    loop {
        tokio::select! {
            () = sleep_until(next_attempt) => {}
            command = commands.recv() => {
                match command {
                    Some(Command::Refuse(more)) => {
                        next_attempt = next_attempt.max(Instant::now() + more);
                    }
                    Some(Command::Shutdown) | None => return None,
                }
                continue;
            }
        }
        match TcpListener::bind(addr).await {
            Ok(listener) => {
                info!(%addr, "listening again");
                return Some(listener);
            }
            Err(error) => {
                attempts += 1;
                if attempts == 1 || attempts.is_multiple_of(50) {
                    warn!(%addr, %error, attempts, "cannot listen again yet; retrying");
                }
                next_attempt = Instant::now() + Duration::from_millis(REBIND_RETRY_MS);
            }
        }
    }
}

async fn serve_connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    mut closing: watch::Receiver<bool>,
) {
    if let Err(error) = stream.set_nodelay(true) {
        debug!(%error, "cannot set TCP_NODELAY");
    }
    let service = service_fn(move |request| {
        let shared = Arc::clone(&shared);
        async move { Ok::<_, Infallible>(handle(&shared, request).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        // No timer is installed; a client that stalls mid-headers is the engine's bug to find,
        // and the refusal window still closes it.
        .header_read_timeout(None)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = closed(&mut closing) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        debug!(%error, "connection ended with an error");
    }
}

/// Resolves once the server asks connections to close (or is gone).
async fn closed(closing: &mut watch::Receiver<bool>) {
    // An error means the sender is gone: the server task ended, so close as well.
    let _ = closing.wait_for(|closing| *closing).await;
}

type Answer = Response<Full<Bytes>>;

async fn handle(shared: &Shared, request: Request<Incoming>) -> Answer {
    let path = request.uri().path();
    if path == BOT_PREFIX || path.starts_with("/_bot/") {
        return match (request.method(), &path[BOT_PREFIX.len()..]) {
            (&Method::GET, "/report") => json(StatusCode::OK, &shared.report()),
            (&Method::POST, "/control") => control(shared, request).await,
            _ => error(StatusCode::NOT_FOUND, "not_found", "no such bot endpoint"),
        };
    }
    if request.method() != Method::POST {
        let mut answer = error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "batches are POSTed",
        );
        answer
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return answer;
    }
    batch(shared, request).await
}

/// One forwarded batch. The order matters: nothing is recorded unless the answer is a 2xx.
async fn batch(shared: &Shared, request: Request<Incoming>) -> Answer {
    if let Some(secret) = &shared.secret {
        let presented = request.headers().get(header::AUTHORIZATION);
        if !presented.is_some_and(|value| secret.matches(value.as_bytes())) {
            shared.ledger().count_unauthorized();
            debug!(
                present = presented.is_some(),
                "batch refused: bad or missing secret"
            );
            return error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Authorization must be the forward secret",
            );
        }
    }
    if !is_json(request.headers().get(header::CONTENT_TYPE)) {
        shared.bad_batch_seen();
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "bad_batch",
            "Content-Type must be application/json",
        );
    }
    let body = match read_body(request, shared.max_body_bytes).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => {
            shared.ledger().count_oversized_batch();
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                &format!("a batch body is at most {} bytes", shared.max_body_bytes),
            );
        }
        Err(BodyError::Read(reason)) => {
            shared.bad_batch_seen();
            return error(StatusCode::BAD_REQUEST, "bad_batch", &reason);
        }
    };
    let entries = match parse_batch(&body) {
        Ok(entries) => entries,
        Err(reason) => {
            shared.bad_batch_seen();
            debug!(%reason, body_bytes = body.len(), "batch refused: malformed");
            return bad_batch(&reason);
        }
    };
    // A body parse_batch accepted is JSON with dispatch payloads: this reads the same bytes.
    let content = if shared.record_content {
        crate::batch::body_content(&body).unwrap_or_default()
    } else {
        crate::batch::BodyContent::default()
    };
    let slow_ms = shared.slow_ms.load(Ordering::Relaxed);
    if slow_ms > 0 {
        sleep(Duration::from_millis(slow_ms)).await;
    }
    let fail_rate = f64::from_bits(shared.fail_rate_bits.load(Ordering::Relaxed));
    let failure = {
        let mut ledger = shared.ledger();
        let failure = ledger.roll_failure(fail_rate);
        if failure.is_none() {
            ledger.record_batch(&entries);
            ledger.record_content(&content);
        }
        failure
    };
    match failure {
        None => {
            debug!(
                records = entries.len(),
                body_bytes = body.len(),
                "batch recorded"
            );
            empty(StatusCode::NO_CONTENT)
        }
        Some(failure) => {
            debug!(?failure, records = entries.len(), "batch failed on purpose");
            let status = match failure {
                Failure::InternalServerError => StatusCode::INTERNAL_SERVER_ERROR,
                Failure::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            };
            error(status, "failed_deliberately", "fail_rate")
        }
    }
}

async fn control(shared: &Shared, request: Request<Incoming>) -> Answer {
    let body = match read_body(request, CONTROL_BODY_BYTES_MAX).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "control body too large",
            );
        }
        Err(BodyError::Read(reason)) => {
            return error(StatusCode::BAD_REQUEST, "bad_control", &reason);
        }
    };
    let control: Control = match serde_json::from_slice(&body) {
        Ok(control) => control,
        Err(reason) => {
            return error(StatusCode::BAD_REQUEST, "bad_control", &reason.to_string());
        }
    };
    if let Some(fail_rate) = control.fail_rate
        && let Err(reason) = check_probability(fail_rate)
    {
        return error(StatusCode::BAD_REQUEST, "bad_control", &reason.to_string());
    }
    if control.reset {
        shared.reset();
        info!("recorded state reset");
    }
    if let Some(fail_rate) = control.fail_rate {
        shared.set_fail_rate(fail_rate);
        info!(fail_rate, "fail rate changed");
    }
    if let Some(slow_ms) = control.slow_ms {
        shared.set_slow_ms(slow_ms);
        info!(slow_ms, "delay changed");
    }
    if let Some(refuse_for_ms) = control.refuse_for_ms {
        // This connection is in a request, so it is closed only after this answer is written.
        shared.command(Command::Refuse(Duration::from_millis(refuse_for_ms)));
    }
    json(StatusCode::OK, &shared.knobs())
}

enum BodyError {
    TooLarge,
    Read(String),
}

async fn read_body(request: Request<Incoming>, max_bytes: usize) -> Result<Bytes, BodyError> {
    let declared_bytes = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared_bytes.is_some_and(|bytes| bytes > max_bytes as u64) {
        return Err(BodyError::TooLarge);
    }
    match Limited::new(request.into_body(), max_bytes).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<LengthLimitError>() => Err(BodyError::TooLarge),
        Err(error) => Err(BodyError::Read(format!("cannot read the body: {error}"))),
    }
}

fn is_json(content_type: Option<&HeaderValue>) -> bool {
    content_type
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media_type| media_type.trim().eq_ignore_ascii_case("application/json"))
}

fn bad_batch(reason: &BatchError) -> Answer {
    error(StatusCode::BAD_REQUEST, "bad_batch", &reason.to_string())
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    reason: &'a str,
}

fn error(status: StatusCode, kind: &str, reason: &str) -> Answer {
    json(
        status,
        &ErrorBody {
            error: kind,
            reason,
        },
    )
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Answer {
    let body = serde_json::to_vec(value)
        .expect("plain structs, string or integer keys: serialising to memory cannot fail");
    let mut answer = Response::new(Full::new(Bytes::from(body)));
    *answer.status_mut() = status;
    answer.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    answer
}

fn empty(status: StatusCode) -> Answer {
    let mut answer = Response::new(Full::new(Bytes::new()));
    *answer.status_mut() = status;
    answer
}
