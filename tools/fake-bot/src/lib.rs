//! fake-bot: the bot's side of shardgate's forwarding contract (docs/forwarding.md). An
//! HTTP/1.1 server that receives batches and verifies, per shard, that nothing is missing,
//! duplicated or out of order; it can be told to fail, to be slow, or to go away for a while.
//! It can also consume the Redis Streams sink through a consumer group
//! ([`FakeBot::consume_streams`]), into the same ledger and report.
//!
//! Stages: [`batch`] parses a body without building a DOM, [`streams`] checks a stream entry
//! (sans-IO), [`ledger`] records either (sans-IO), `server` owns the sockets and `consumer`
//! the Redis connection, [`FakeBot`] is the handle, [`client`] talks to a running bot.
//!
//! Must not: record a batch it does not answer with a 2xx (at-least-once: the engine retries
//! it), print or log the secret, or log anything per record above trace.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let bot = fake_bot::FakeBot::start(fake_bot::BotConfig::ephemeral()).await?;
//! // point the engine's --forward-url at bot.url(), run it, then:
//! assert!(bot.report().is_clean());
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

pub mod batch;
pub mod client;
mod config;
mod consumer;
pub mod ledger;
mod report;
mod server;
pub mod streams;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tracing::{info, warn};

pub use crate::batch::BatchError;
pub use crate::client::{BotClient, ClientError};
pub use crate::config::{BotConfig, ConfigError, RedisUrl, Secret, StreamsConfig};
pub use crate::consumer::StreamConsumer;
pub use crate::report::{Control, Knobs, Report, RunReport, ShardReport, StreamTotals, Totals};
use crate::server::{Command, Shared};

/// A running fake bot. Dropping it (or [`FakeBot::shutdown`]) stops it: the listener and every
/// connection are closed.
pub struct FakeBot {
    shared: Arc<Shared>,
    addr: SocketAddr,
    seed: u64,
    /// The bot's own thread, when started with [`FakeBot::spawn`].
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeBot {
    /// Binds the listener and serves on the caller's tokio runtime (any flavour).
    pub async fn start(config: BotConfig) -> anyhow::Result<FakeBot> {
        let (bot, server) = launch(config).await?;
        tokio::spawn(server);
        Ok(bot)
    }

    /// Starts the bot on its own thread (named `fake-bot`) with a current-thread tokio runtime:
    /// for callers without a runtime, or that want the bot on a core of its own. Returns once
    /// the listener is bound.
    pub fn spawn(config: BotConfig) -> anyhow::Result<FakeBot> {
        let (started, started_receiver) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("fake-bot".to_owned())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        // The receiver only goes away if the caller is gone too.
                        let _ = started.send(Err(anyhow::Error::new(error)
                            .context("cannot build the fake bot's runtime")));
                        return;
                    }
                };
                runtime.block_on(async move {
                    match launch(config).await {
                        Ok((bot, server)) => {
                            let _ = started.send(Ok(bot));
                            server.await;
                        }
                        Err(error) => {
                            let _ = started.send(Err(error));
                        }
                    }
                });
            })
            .context("cannot start the fake bot's thread")?;
        let mut bot = started_receiver
            .recv()
            .context("the fake bot's thread ended before it listened")??;
        bot.thread = Some(thread);
        Ok(bot)
    }

    /// The address actually bound (the real port when the config asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A forward URL for the engine: `http://ADDR/events`. Any path outside `/_bot/` works.
    pub fn url(&self) -> String {
        format!("http://{}/events", self.addr)
    }

    /// The seed of the failure dice (the configured one, or the random one chosen at start).
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The content hash of every dispatch received, in order (empty unless
    /// [`BotConfig::record_content`]): FNV-1a 64 of `t`, a newline and the raw `d`.
    pub fn content(&self) -> Vec<u64> {
        self.shared
            .content()
            .iter()
            .map(|record| record.hash)
            .collect()
    }

    /// [`FakeBot::content`] with the shard and sequence that carried each event.
    pub fn content_records(&self) -> Vec<batch::ContentRecord> {
        self.shared.content()
    }

    /// The guild of every backfill GUILD_CREATE received, in order (empty unless
    /// [`BotConfig::record_content`]).
    pub fn backfill_guilds(&self) -> Vec<u64> {
        self.shared.backfill_guilds()
    }

    /// What the bot has recorded so far; the same value `GET /_bot/report` serves.
    pub fn report(&self) -> Report {
        self.shared.report()
    }

    /// The runtime knobs now in force.
    pub fn knobs(&self) -> Knobs {
        self.shared.knobs()
    }

    /// Changes the probability of answering a batch 500/503 instead of recording it.
    ///
    /// # Panics
    /// If `fail_rate` is not in 0..=1: that is a bug in the caller.
    pub fn set_fail_rate(&self, fail_rate: f64) {
        if let Err(error) = config::check_probability(fail_rate) {
            panic!("set_fail_rate: {error}");
        }
        self.shared.set_fail_rate(fail_rate);
    }

    /// Changes the delay before answering each batch.
    pub fn set_slow_ms(&self, slow_ms: u64) {
        self.shared.set_slow_ms(slow_ms);
    }

    /// Answers the next bad batch (400 or 415, counted in `bad_batches`) as always, then goes
    /// away for `away` as [`refuse_for`](Self::refuse_for) does: a bot that fell over on it.
    /// Once; asking again before it happened replaces the length.
    pub fn go_away_after_the_next_bad_batch(&self, away: Duration) {
        self.shared.go_away_after_the_next_bad_batch(away);
    }

    /// Goes away now for `refuse_for`: the listener is closed (connects are refused) and every
    /// open connection is closed once the request it is in (if any) is answered; then the bot
    /// listens again on the same address. Asking again while away extends the window. Returns at
    /// once; the server task acts within microseconds.
    pub fn refuse_for(&self, refuse_for: Duration) {
        self.shared.command(Command::Refuse(refuse_for));
    }

    /// Starts a Redis Streams consumer on its own thread that feeds this bot's ledger: what it
    /// reads shows in [`FakeBot::report`] (per shard, like forwarded batches) and its counters
    /// in [`Report::streams`]. Several consumers of one bot (other names, one group) share the
    /// ledger and the id window, as the workers of one bot would share a database. Returns once
    /// the thread runs; it connects (and reconnects) on its own.
    pub fn consume_streams(&self, config: StreamsConfig) -> anyhow::Result<StreamConsumer> {
        StreamConsumer::start(Arc::clone(&self.shared), config)
    }

    /// Forgets everything recorded (the knobs and the dice stay).
    pub fn reset(&self) {
        self.shared.reset();
    }

    /// Stops the bot. With [`FakeBot::spawn`] this waits for its thread to end.
    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for FakeBot {
    fn drop(&mut self) {
        self.shared.command(Command::Shutdown);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            warn!("the fake bot's thread panicked");
        }
    }
}

impl std::fmt::Debug for FakeBot {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("FakeBot")
            .field("addr", &self.addr)
            .field("seed", &self.seed)
            .field("own_thread", &self.thread.is_some())
            .finish_non_exhaustive()
    }
}

/// Binds the listener and builds the server future, not yet polled.
async fn launch(
    config: BotConfig,
) -> anyhow::Result<(FakeBot, impl Future<Output = ()> + Send + 'static)> {
    config.validate()?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener
        .local_addr()
        .context("the listener has no local address")?;
    let seed = config.seed.unwrap_or_else(random_seed);
    info!(
        %addr,
        seed,
        fail_rate = config.fail_rate,
        slow_ms = config.slow_ms,
        refuse_after_ms = config.refuse_after_ms,
        refuse_for_ms = config.refuse_for_ms,
        max_body_bytes = config.max_body_bytes,
        secret = config.secret.is_some(),
        "fake bot listening"
    );
    let refuse_schedule = config.refuse_schedule();
    let (shared, commands) = Shared::new(
        seed,
        config.fail_rate,
        config.slow_ms,
        config.secret,
        config.max_body_bytes,
        config.record_content,
    );
    let server = server::serve(Arc::clone(&shared), listener, commands, refuse_schedule);
    let bot = FakeBot {
        shared,
        addr,
        seed,
        thread: None,
    };
    Ok((bot, server))
}

/// A seed nobody chose: the time and the process id, mixed by std's randomly keyed hasher.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64);
    RandomState::new().hash_one((nanos, std::process::id()))
}
