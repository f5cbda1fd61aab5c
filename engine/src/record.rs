//! Records: what travels from a core to the sink. A record holds the dispatch bytes exactly
//! as Discord sent them (after decompression); nothing downstream re-serialises them.
//!
//! A core copies each payload it forwards into its [`PayloadArena`]: one allocation per
//! [`ARENA_CHUNK_BYTES`] instead of one per record, and the sink's deliverer, which drops the
//! records, frees one chunk per few dozen records instead of each record's own allocation
//! (a free from another thread than the allocating one is what cost the most there).
//!
//! A core also takes its full chunks back once every record cut from them has been dropped,
//! so that while the bot keeps up no chunk is allocated or freed at all. Without that, every
//! chunk was a new allocation freed on the deliverer's thread, and once the allocator had
//! returned freed pages to the kernel, new chunks were faulted in and zeroed again.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

/// One dispatch, or a lifecycle notice the engine produced, on its way to the bot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub shard_id: u32,
    /// The shard count of the set the shard belongs to: `shard_id` is `[shard_id, shard_count]`
    /// in Discord's terms. Two sets run side by side while a reshard switches between them.
    /// 0 for a record spilled by a version that did not keep it.
    pub shard_count: u32,
    /// Discord's sequence number (`s`) for dispatches; 0 for notices.
    pub seq: u64,
    /// The session the dispatch came in: [`session_tag`] of its session id. With `seq` it names
    /// the event for a receiver dropping duplicates (a resume's replay after a crash carries
    /// the same pair; a later session's event with the same `seq` another). 0 for notices and
    /// bookkeeping records, and for records spilled by a version that did not keep it.
    pub session: u32,
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
    /// Not for the bot: the reshard merge's duplicate (the other shard set's copy of the same
    /// event went out first). It moves its shard's saved position like a delivered record, in
    /// order behind that copy; its payload is empty.
    Position,
    /// Not for the bot: a shard of the live set handed over at a reshard's switch and forwards
    /// nothing more. It travels the ring behind the shard's last record; the sink's collector
    /// consumes it. `seq` is the session's last sequence.
    HandedOver,
    /// Not for the bot: a MESSAGE_UPDATE the filter dropped as redundant, sent on only while a
    /// reshard merges two sets, so that the merge knows this set saw it: the other set's copy
    /// (which its own filter, with another cache, may have let through) is then a duplicate, not
    /// an event only that set saw. The collector never queues it.
    Redundant,
    /// Not for the bot: a fleet's shard task ended on this host (the shard went to another).
    /// It travels the ring behind the shard's last record, so that once the queue has it, the
    /// queue knows every record of that session here (see
    /// [`crate::sink::queue::Queue::acknowledged_sessions`]); the queue consumes it.
    Ended,
}

impl RecordKind {
    /// Whether records of this kind reach the bot (the others are the engine's bookkeeping).
    pub fn is_for_bot(self) -> bool {
        !matches!(
            self,
            RecordKind::Session
                | RecordKind::Position
                | RecordKind::HandedOver
                | RecordKind::Redundant
                | RecordKind::Ended
        )
    }
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
    /// A reshard began (`{"from":N,"to":M}`): a new set of M shards identifies beside the live
    /// one; the bot keeps receiving each event once.
    ReshardStarted,
    /// The reshard switched (`{"shards":M}`): the new set is the live one.
    ReshardFinished,
}

impl Notice {
    pub fn as_str(self) -> &'static str {
        match self {
            Notice::ShardReady => "SHARD_READY",
            Notice::AllShardsReady => "ALL_SHARDS_READY",
            Notice::ReshardStarted => "RESHARD_STARTED",
            Notice::ReshardFinished => "RESHARD_FINISHED",
        }
    }
}

/// A session id's tag: its CRC-32 (a shard's sessions differ in it but for a one in four
/// billion chance, and then only an event with the same sequence is mistaken for the other).
pub fn session_tag(session_id: &str) -> u32 {
    crc32fast::hash(session_id.as_bytes())
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

/// Full chunks a core keeps to reuse once their records are gone: at most 1 MiB per core
/// beyond what records in flight hold. A chunk pushed out of this list is freed as before,
/// with its last record.
pub const ARENA_RETIRED_MAX: usize = 16;

/// A core's payload copies: records are cut from shared chunks (see the module docs).
#[derive(Default)]
pub struct PayloadArena {
    /// The chunk records are being cut from; none before the first copy.
    chunk: Option<BytesMut>,
    /// Full chunks, oldest first. Records leave roughly in the order they were made, so the
    /// oldest chunk is the likeliest to have none left.
    retired: VecDeque<BytesMut>,
}

impl PayloadArena {
    /// A copy of `payload` that shares its allocation with its chunk's other records. A payload
    /// larger than a chunk gets an allocation of its own.
    pub fn copy(&mut self, payload: &[u8]) -> Bytes {
        if payload.len() > ARENA_CHUNK_BYTES {
            return Bytes::copy_from_slice(payload);
        }
        let chunk = match self.chunk {
            Some(ref mut chunk) if chunk.capacity() - chunk.len() >= payload.len() => chunk,
            _ => self.next_chunk(),
        };
        chunk.extend_from_slice(payload);
        chunk.split().freeze()
    }

    /// Retires the current chunk and starts another: the oldest retired chunk if no record
    /// holds it any more, else a new allocation.
    fn next_chunk(&mut self) -> &mut BytesMut {
        if let Some(full) = self.chunk.take() {
            self.retired.push_back(full);
        }
        // Unique (every record cut from it dropped): the whole buffer again, in place.
        let reclaimed = self
            .retired
            .front_mut()
            .is_some_and(|oldest| oldest.try_reclaim(ARENA_CHUNK_BYTES));
        let reused = if reclaimed {
            self.retired.pop_front()
        } else {
            None
        };
        if reused.is_none() && self.retired.len() > ARENA_RETIRED_MAX {
            // Freed with its last record, as if it had never been kept.
            self.retired.pop_front();
        }
        self.chunk
            .insert(reused.unwrap_or_else(|| BytesMut::with_capacity(ARENA_CHUNK_BYTES)))
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
        // A payload larger than a chunk gets its own; the next copy goes on in the chunk.
        let big = vec![b'x'; ARENA_CHUNK_BYTES + 1];
        let copied = arena.copy(&big);
        assert_eq!(copied, big);
        let after = arena.copy(b"{}");
        assert_eq!(&after[..], b"{}");
        assert_eq!(second.as_ptr().wrapping_add(second.len()), after.as_ptr());
        // Dropping the others leaves every copy intact.
        drop((first, copied));
        assert_eq!(&second[..], b"{\"b\":2}");
    }

    /// Fills the arena's current chunk with 1 KiB payloads of `byte` and returns them.
    fn fill_chunk(arena: &mut PayloadArena, byte: u8) -> Vec<Bytes> {
        let payload = [byte; 1024];
        (0..ARENA_CHUNK_BYTES / 1024)
            .map(|_| arena.copy(&payload))
            .collect()
    }

    #[test]
    fn a_chunk_is_reused_once_its_records_are_dropped_and_not_before() {
        let mut arena = PayloadArena::default();
        let first = fill_chunk(&mut arena, b'1');
        let first_start = first[0].as_ptr();
        // The chunk is full; its records are all alive, so the next one is new.
        let second = fill_chunk(&mut arena, b'2');
        assert_ne!(second[0].as_ptr(), first_start);
        // One record of the first chunk still alive keeps it from being reused.
        let kept = first[7].clone();
        drop(first);
        let third = fill_chunk(&mut arena, b'3');
        assert!(third.iter().all(|record| record.as_ptr() != first_start));
        assert_eq!(kept[..], [b'1'; 1024][..]);
        // With that one gone too, the oldest full chunk comes back, from its start, and what
        // is written there is what the new records read.
        drop(kept);
        let fourth = fill_chunk(&mut arena, b'4');
        assert_eq!(fourth[0].as_ptr(), first_start);
        assert!(fourth.iter().all(|record| record[..] == [b'4'; 1024][..]));
        // The other chunks' records were never touched.
        assert!(second.iter().all(|record| record[..] == [b'2'; 1024][..]));
        assert!(third.iter().all(|record| record[..] == [b'3'; 1024][..]));
    }

    #[test]
    fn a_core_keeps_a_bounded_number_of_full_chunks() {
        let mut arena = PayloadArena::default();
        // Records that stay alive (the bot is away): every chunk is full and held.
        let held: Vec<Vec<Bytes>> = (0..ARENA_RETIRED_MAX * 3)
            .map(|_| fill_chunk(&mut arena, b'h'))
            .collect();
        assert_eq!(arena.retired.len(), ARENA_RETIRED_MAX);
        drop(held);
        // Everything dropped: the kept chunks are reused, and no more are kept.
        let mut starts = std::collections::HashSet::new();
        for _ in 0..ARENA_RETIRED_MAX * 3 {
            starts.insert(fill_chunk(&mut arena, b'r')[0].as_ptr());
        }
        assert!(arena.retired.len() <= ARENA_RETIRED_MAX);
        assert!(
            starts.len() <= ARENA_RETIRED_MAX + 1,
            "{} chunks",
            starts.len()
        );
    }
}
