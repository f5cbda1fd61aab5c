//! shardgate: a thread-per-core Discord gateway engine.
//!
//! The crate mirrors the pipeline in docs/architecture.md: shard → decode → filter → ring →
//! sink. Each stage lives in its own module and opens with a `//!` note on what it must not do.

pub mod admin;
pub mod config;
pub mod control;
pub mod core;
pub mod decode;
#[cfg(feature = "demo")]
pub mod demo;
pub mod filter;
pub mod fleet;
pub mod limiter;
pub mod procfs;
pub mod progress;
pub mod record;
pub mod reshard;
pub mod resharder;
pub mod ring;
pub mod runtime;
pub mod shard;
pub mod sink;
pub mod spill;
pub mod tls;
pub mod transport;
pub mod url;
