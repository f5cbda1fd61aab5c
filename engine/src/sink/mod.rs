//! The sink: drains every core's ring, builds batches bounded by events, bytes and linger
//! time, and delivers them to the bot over HTTP, in order per shard, at least once.
//!
//! Runs on its own thread, never on a core; blocking I/O is allowed here and nowhere else.

pub mod batch;
pub mod http;
