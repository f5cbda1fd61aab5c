//! Records: what travels from a core to the sink. A record owns the dispatch bytes exactly
//! as Discord sent them (after decompression); nothing downstream re-serialises them.

/// One dispatch, or a lifecycle notice the engine produced, on its way to the bot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub shard_id: u32,
    /// Discord's sequence number (`s`) for dispatches; 0 for notices.
    pub seq: u64,
    pub kind: RecordKind,
    /// The payload JSON: the whole dispatch `{"t":…,"s":…,"op":0,"d":…}`, or a notice's data.
    pub payload: Vec<u8>,
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
