//! shardgate: a thread-per-core Discord gateway engine.
//!
//! The crate mirrors the pipeline in DESIGN.md: shard → decode → filter → ring → sink. Each stage
//! lives in its own module and opens with a `//!` note on what it must not do.

pub mod limiter;
pub mod record;
pub mod shard;
pub mod sink;
