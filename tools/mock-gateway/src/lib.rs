//! A faithful, seeded Discord gateway v10 simulator: the REST a client calls before it connects
//! (`/gateway/bot`, `/users/@me`, the application; see `http.rs` for what paths it accepts), the
//! WebSocket gateway (identify, resume, heartbeats, compression, limits), scriptable faults, and
//! a ledger of what it sent and every violation it saw.
//!
//! The facts it honours are in `docs/discord-gateway.md`; where a client breaks a rule the mock
//! answers as Discord does (close code or op 9) and records it, so a test can assert both.
//!
//! Events happen in one world: each guild's events are made once (`timeline.rs`) and reach every
//! connected session that covers the guild, so two shard sets with different `num_shards` (a
//! zero-downtime reshard) receive the same events, each under its own sequence numbers. The
//! ledger names every event by one id in every session ([`SessionLedger::event_runs`]), and
//! with [`MockConfig::record_events`] lists each one once ([`MockGateway::events`]).
//!
//! ```no_run
//! use mock_gateway::{MockConfig, MockGateway};
//! let mock = MockGateway::spawn(MockConfig { guilds: 100, ..MockConfig::default() }, 1)?;
//! println!("connect to {} (REST at {})", mock.ws_url(), mock.api_base());
//! let ledger = mock.ledger();
//! assert!(ledger.violations.is_empty());
//! # Ok::<(), mock_gateway::MockError>(())
//! ```

pub mod compress;
pub mod config;
pub mod delivery;
pub mod events;
pub mod ledger;
pub mod rng;

mod conn;
mod http;
mod state;
mod timeline;
pub mod tls;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::{oneshot, watch};

pub use config::{MockConfig, Transport};
pub use ledger::{
    EventRecord, Ledger, SessionLedger, ShardLedger, Violation, ViolationKind, event_content_hash,
};
pub use state::Fault;

use crate::http::Listener;
use crate::ledger::LedgerWriter;
use crate::rng::{Rng, derive_seed};
use crate::state::{Control, Shared, State};
use crate::timeline::TimelineSettings;

/// Why the mock could not start.
#[derive(Debug, thiserror::Error)]
pub enum MockError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
}

/// A running mock gateway on its own thread and tokio runtime. Dropping it stops it and
/// closes every connection (abruptly, like a crashed server).
pub struct MockGateway {
    shared: Arc<Shared>,
    http_base: String,
    ca_file: Option<PathBuf>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl MockGateway {
    /// Binds the listeners, generates TLS material if asked, and serves on `threads` runtime
    /// threads (1 = a current-thread runtime: the whole mock on one core).
    pub fn spawn(config: MockConfig, threads: usize) -> Result<MockGateway, MockError> {
        config.validate().map_err(MockError::Config)?;
        let seed = config.seed.unwrap_or_else(random_seed);
        let bind = |addr| {
            let listener = std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .map_err(|source| MockError::Bind { addr, source })?;
            let local = listener
                .local_addr()
                .map_err(|source| MockError::Bind { addr, source })?;
            Ok::<_, MockError>((listener, local))
        };
        let (main_listener, main_addr) = bind(config.listen)?;
        let (resume_listener, resume_addr) = bind(config.resume_listen)?;

        let (tls, ca_file) = if config.tls {
            let path = config
                .ca_out
                .clone()
                .unwrap_or_else(|| std::env::temp_dir().join("mock-gateway-ca.pem"));
            (Some(tls::acceptor(&path)?), Some(path))
        } else {
            (None, None)
        };
        let (ws_scheme, http_scheme) = if tls.is_some() {
            ("wss", "https")
        } else {
            ("ws", "http")
        };
        let http_base = format!("{http_scheme}://{main_addr}");

        let guilds = events::guild_ids(derive_seed(seed, &[state::GUILD_STREAM]), config.guilds);
        let now = Instant::now();
        let state = State {
            guilds,
            guild_changes_total: 0,
            recommended_shards: None,
            world: Default::default(),
            sessions: Default::default(),
            next_session_number: 0,
            identify_buckets: Default::default(),
            remaining: config
                .session_start_remaining
                .unwrap_or(config.session_start_total),
            reset_at: now + std::time::Duration::from_millis(config.session_start_reset_after_ms),
            connections: Default::default(),
            live: Default::default(),
            next_connection_id: 0,
            member_requests: Default::default(),
            connection_numbers: Default::default(),
        };
        let shared = Arc::new(Shared {
            ledger: LedgerWriter::new(seed, config.ledger_commands_max, config.record_events),
            main_ws_url: format!("{ws_scheme}://{main_addr}"),
            resume_ws_url: format!("{ws_scheme}://{resume_addr}"),
            state: Mutex::new(state),
            timeline_settings: Arc::new(TimelineSettings::from_config(&config, seed)),
            resume_down: watch::channel(false).0,
            resume_delay_ms: AtomicU64::new(0),
            token_valid: AtomicBool::new(true),
            seed,
            config,
        });

        let mut builder = if threads <= 1 {
            tokio::runtime::Builder::new_current_thread()
        } else {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(threads);
            builder
        };
        let runtime = builder.enable_all().build().map_err(MockError::Runtime)?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("mock-gateway".into())
            .spawn(move || {
                runtime.block_on(async move {
                    for (listener, which) in [
                        (main_listener, Listener::Main),
                        (resume_listener, Listener::Resume),
                    ] {
                        match tokio::net::TcpListener::from_std(listener) {
                            Ok(listener) => {
                                let shared = Arc::clone(&task_shared);
                                tokio::spawn(http::accept_loop(
                                    shared,
                                    listener,
                                    tls.clone(),
                                    which,
                                ));
                            }
                            Err(error) => tracing::error!(%error, "cannot register a listener"),
                        }
                    }
                    let _ = stopped.await;
                });
                runtime.shutdown_background();
            })
            .map_err(MockError::Runtime)?;

        tracing::info!(seed, ws = %shared.main_ws_url, resume = %shared.resume_ws_url, "mock gateway up");
        Ok(MockGateway {
            shared,
            http_base,
            ca_file,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The seed in use (print it: the same seed replays the run).
    pub fn seed(&self) -> u64 {
        self.shared.seed
    }

    /// The gateway URL `/gateway/bot` returns, e.g. `ws://127.0.0.1:PORT`.
    pub fn ws_url(&self) -> &str {
        &self.shared.main_ws_url
    }

    /// The `resume_gateway_url` READY hands out (a second listener).
    pub fn resume_ws_url(&self) -> &str {
        &self.shared.resume_ws_url
    }

    /// `http(s)://127.0.0.1:PORT`.
    pub fn http_base(&self) -> &str {
        &self.http_base
    }

    /// REST base for clients, e.g. `http://127.0.0.1:PORT/api/v10`.
    pub fn api_base(&self) -> String {
        format!("{}/api/v10", self.http_base)
    }

    /// The CA certificate (PEM) to trust, when TLS is on.
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// The token the mock accepts.
    pub fn token(&self) -> &str {
        &self.shared.config.token
    }

    /// A snapshot of the ledger.
    pub fn ledger(&self) -> Ledger {
        self.shared.ledger.snapshot()
    }

    /// Every world event made so far, once each, in the order each timeline made them; empty
    /// unless [`MockConfig::record_events`] is on. Sessions name them by id in
    /// [`SessionLedger::event_runs`].
    pub fn events(&self) -> Vec<EventRecord> {
        self.shared.ledger.events()
    }

    /// Applies `fault` now to every live connection of `shard` (in every shard set); returns
    /// how many.
    pub fn inject_fault(&self, shard: u32, fault: Fault) -> usize {
        self.shared
            .broadcast(Some(shard), None, || Control::Fault(fault))
    }

    /// Applies `fault` now to the live connections of shard `shard` of `total` only (one shard
    /// set when two run side by side); returns how many.
    pub fn inject_fault_in_set(&self, shard: u32, total: u32, fault: Fault) -> usize {
        self.shared
            .broadcast(Some(shard), Some(total), || Control::Fault(fault))
    }

    /// Changes the number of guilds; every live session covering a changed guild gets its
    /// GUILD_CREATE join or GUILD_DELETE, and one left over `--max-guilds-per-shard` is closed
    /// with 4011.
    pub fn set_guild_count(&self, count: usize) {
        self.shared.set_guild_count(count);
    }

    /// Sets `/gateway/bot`'s recommended `shards` (`None`: back to `--recommended-shards`, or
    /// one per 1000 guilds); returns what it recommends now.
    pub fn set_recommended_shards(&self, shards: Option<u32>) -> u32 {
        let mut state = self.shared.lock();
        state.recommended_shards = shards;
        state.recommended_shards(&self.shared.config)
    }

    /// What `/gateway/bot` recommends now as `shards`.
    pub fn recommended_shards(&self) -> u32 {
        self.shared.lock().recommended_shards(&self.shared.config)
    }

    /// The current guild ids.
    pub fn guild_ids(&self) -> Vec<u64> {
        self.shared.lock().guilds.clone()
    }

    /// Takes the resume listener down (connections refused) or brings it back.
    pub fn set_resume_url_down(&self, down: bool) {
        self.shared.resume_down.send_replace(down);
    }

    /// Holds every RESUME this long before answering it (replay and RESUMED), as a slow Discord
    /// does: the client stays resuming meanwhile. Heartbeats on that connection are answered
    /// after it, so keep it below the heartbeat interval. `Duration::ZERO` (the default) ends it.
    pub fn set_resume_delay(&self, delay: std::time::Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.shared.resume_delay_ms.store(ms, Ordering::Relaxed);
    }

    /// Stops serving and waits for the runtime thread.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for MockGateway {
    fn drop(&mut self) {
        self.stop_now();
    }
}

fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    Rng::new(nanos ^ u64::from(std::process::id()).rotate_left(32)).next_u64()
}
