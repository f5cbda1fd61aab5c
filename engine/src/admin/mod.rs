//! Control plane: the admin HTTP API on `--admin-addr` (status, metrics, commands to shards,
//! reconnects) and the status page at `/` ([`page`]).
//!
//! Its own threads with blocking std sockets, never a core: one acceptor, and one short-lived
//! thread per connection, at most [`CONNECTIONS_MAX`] at once (one more is answered 503 and
//! closed). Each connection carries one request, bounded in size ([`http`]) and time
//! ([`IO_TIMEOUT`]). The API reaches the shards only through [`ControlHandle`]'s channels.
//!
//! Every endpoint but `/healthz` and the status page (`/`: markup and script, no data) needs
//! `Authorization: Bearer <--admin-token>` when a token is set (the settings refuse an address
//! beyond loopback without one). The token is compared in constant time and never logged.
//!
//! Why this small server and not hyper: the status page polls once a second (two requests,
//! each a fresh connection and a short thread), which costs the engine far less than the core
//! reports those requests read (docs/benchmarks.md measures both at 10,000 shards); server-sent
//! events would hold a thread and one of the [`CONNECTIONS_MAX`] slots per open page, and hyper
//! would bring tokio into a binary whose only tokio is the demo's. The bounded reader
//! ([`http`]) stays the one the fuzz target and the admin tests cover.

mod forward;
#[doc(hidden)]
pub mod fuzz;
mod http;
mod metrics;
mod page;
mod routes;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::Secret;
use crate::control::ControlHandle;
use crate::limiter::IdentifyLimiter;
use crate::runtime::EngineStats;

pub use http::{BODY_BYTES_MAX, HEAD_BYTES_MAX};

/// Connections served at once; more are answered 503.
pub const CONNECTIONS_MAX: usize = 32;
/// Read and write deadline per connection.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// What the handlers read.
pub struct AdminContext {
    pub control: ControlHandle,
    pub stats: Arc<EngineStats>,
    pub limiter: Arc<IdentifyLimiter>,
    pub reshard: Arc<crate::resharder::ReshardBoard>,
    /// In a fleet: `GET /cluster` and moves.
    pub fleet: Option<crate::fleet::FleetHandle>,
    pub token: Option<Secret>,
    pub started: Instant,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "--admin-addr {addr}: cannot listen: {source} (choose a free address, e.g. --admin-addr 127.0.0.1:7879)"
)]
pub struct AdminError {
    addr: SocketAddr,
    source: std::io::Error,
}

/// The running admin API. [`AdminServer::stop`] (or drop) ends it.
pub struct AdminServer {
    local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

/// The admin API's socket, bound before the engine starts anything (a taken port must fail
/// startup before a shard connects), served by [`AdminServer::start`].
pub struct AdminListener {
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl AdminListener {
    /// The address it listens on (the port chosen, for `--admin-addr` with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Binds `addr` (port 0: any free port).
    pub fn bind(addr: SocketAddr) -> Result<AdminListener, AdminError> {
        let failed = |source| AdminError { addr, source };
        let listener = TcpListener::bind(addr).map_err(failed)?;
        let local_addr = listener.local_addr().map_err(failed)?;
        Ok(AdminListener {
            listener,
            local_addr,
        })
    }
}

impl AdminServer {
    /// Serves the API on `listener`.
    pub fn start(
        listener: AdminListener,
        context: AdminContext,
    ) -> Result<AdminServer, AdminError> {
        let AdminListener {
            listener,
            local_addr,
        } = listener;
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = std::thread::Builder::new()
            .name("shardgate-admin".into())
            .spawn({
                let stop = Arc::clone(&stop);
                let context = Arc::new(context);
                move || accept(&listener, &stop, &context)
            })
            .map_err(|source| AdminError {
                addr: local_addr,
                source,
            })?;
        tracing::info!(addr = %local_addr, "admin API listening");
        Ok(AdminServer {
            local_addr,
            stop,
            acceptor: Some(acceptor),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting and waits for the acceptor (connections in flight finish on their own
    /// within [`IO_TIMEOUT`]).
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        let Some(acceptor) = self.acceptor.take() else {
            return;
        };
        self.stop.store(true, Ordering::Release);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.local_addr, Duration::from_secs(1));
        if acceptor.join().is_err() {
            tracing::error!("the admin API thread panicked");
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.shut_down();
    }
}

fn accept(listener: &TcpListener, stop: &AtomicBool, context: &Arc<AdminContext>) {
    let active = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        if stop.load(Ordering::Acquire) {
            return;
        }
        let mut stream = match stream {
            Ok(stream) => stream,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%error, "admin API: accept failed");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
        let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
        if active.fetch_add(1, Ordering::AcqRel) >= CONNECTIONS_MAX {
            active.fetch_sub(1, Ordering::AcqRel);
            let busy = http::Response::error(503, "too many admin connections at once")
                .with_header("Retry-After", "1".into());
            let _ = http::write_response(&mut stream, &busy);
            continue;
        }
        let spawned = std::thread::Builder::new()
            .name("shardgate-admin-conn".into())
            .spawn({
                let context = Arc::clone(context);
                let active = Arc::clone(&active);
                move || {
                    serve(&mut stream, &context);
                    active.fetch_sub(1, Ordering::AcqRel);
                }
            });
        if let Err(error) = spawned {
            active.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(%error, "admin API: cannot start a connection thread");
        }
    }
}

fn serve(stream: &mut TcpStream, context: &AdminContext) {
    let response = match http::read_request(stream) {
        Ok(request) => routes::handle(context, &request),
        Err(error) => match error.response() {
            Some(response) => response,
            None => return,
        },
    };
    if let Err(error) = http::write_response(stream, &response) {
        tracing::debug!(%error, "admin API: the client went away before the answer");
    }
}
