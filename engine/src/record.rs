//! Records: what travels from a core to the sink. A record holds the dispatch bytes exactly
//! as Discord sent them (after decompression); nothing downstream re-serialises them.
//!
//! A core copies each payload it forwards into its [`PayloadArena`]: one allocation per
//! [`ARENA_CHUNK_BYTES`] instead of one per record, and the sink's deliverer, which drops the
//! records, frees one chunk per few dozen records instead of each record's own allocation
//! (a free from another thread than the allocating one is what cost the most there).

use bytes::{Bytes, BytesMut};

/// One dispatch, or a lifecycle notice the engine produced, on its way to the bot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub shard_id: u32,
    /// Discord's sequence number (`s`) for dispatches; 0 for notices.
    pub seq: u64,
    pub kind: RecordKind,
    /// The payload JSON: the whole dispatch `{"t":…,"s":…,"op":0,"d":…}`, or a notice's data.
    pub payload: Bytes,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    Dispatch,
    /// A GUILD_CREATE with its classification (envelope key `"guild_create"`).
    GuildCreate(GuildCreateClass),
    /// An engine notice (envelope key `"notice"`), e.g. `SHARD_READY`.
    Notice(Notice),
    /// Not for the bot: a shard started a session (its payload is the JSON of
    /// [`crate::shard::Session`]). It travels the ring in order with the shard's dispatches so
    /// that the sink knows which session the following sequence numbers belong to; the sink
    /// consumes it and saves sessions from it.
    Session,
}

/// Why a GUILD_CREATE arrived, from the READY guild list and outage tracking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuildCreateClass {
    /// Listed as unavailable in READY: the initial backfill.
    Backfill,
    /// Not listed in READY: the bot joined the guild.
    Join,
    /// It went unavailable (GUILD_DELETE `unavailable: true`) and came back.
    Return,
}

impl GuildCreateClass {
    pub fn as_str(self) -> &'static str {
        match self {
            GuildCreateClass::Backfill => "backfill",
            GuildCreateClass::Join => "join",
            GuildCreateClass::Return => "return",
        }
    }
}

/// Lifecycle notices (the envelope's `"notice"` value).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notice {
    /// Every guild listed in the shard's READY has arrived (or the wait timed out).
    ShardReady,
    /// Every shard this process runs is fully ready.
    AllShardsReady,
}

impl Notice {
    pub fn as_str(self) -> &'static str {
        match self {
            Notice::ShardReady => "SHARD_READY",
            Notice::AllShardsReady => "ALL_SHARDS_READY",
        }
    }
}

impl Record {
    /// Bytes this record adds to a batch body (envelope included, approximately).
    pub fn encoded_len(&self) -> usize {
        self.payload.len() + 64
    }
}

/// Bytes of one arena chunk: about 50 typical dispatches. A chunk is freed when the last record
/// cut from it is dropped (delivered, spilled or filtered), so a core holds at most one chunk
/// beyond what its records hold.
pub const ARENA_CHUNK_BYTES: usize = 64 * 1024;

/// A core's payload copies: records are cut from shared chunks (see the module docs).
#[derive(Default)]
pub struct PayloadArena {
    chunk: BytesMut,
}

impl PayloadArena {
    /// A copy of `payload` that shares its allocation with its chunk's other records. A payload
    /// larger than a chunk gets a chunk of its own size.
    pub fn copy(&mut self, payload: &[u8]) -> Bytes {
        if self.chunk.capacity() - self.chunk.len() < payload.len() {
            self.chunk = BytesMut::with_capacity(payload.len().max(ARENA_CHUNK_BYTES));
        }
        self.chunk.extend_from_slice(payload);
        self.chunk.split().freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_share_a_chunk_until_it_is_full() {
        let mut arena = PayloadArena::default();
        let first = arena.copy(b"{\"a\":1}");
        let second = arena.copy(b"{\"b\":2}");
        assert_eq!(&first[..], b"{\"a\":1}");
        assert_eq!(&second[..], b"{\"b\":2}");
        // Cut from one allocation, back to back.
        assert_eq!(first.as_ptr().wrapping_add(first.len()), second.as_ptr());
        // A payload larger than a chunk gets its own; the next copy starts a new chunk.
        let big = vec![b'x'; ARENA_CHUNK_BYTES + 1];
        let copied = arena.copy(&big);
        assert_eq!(copied, big);
        let after = arena.copy(b"{}");
        assert_eq!(&after[..], b"{}");
        // Dropping the others leaves every copy intact.
        drop((first, copied));
        assert_eq!(&second[..], b"{\"b\":2}");
    }
}
