//! Reshard stage: changing the shard count under a running bot without downtime, and without
//! losing or duplicating an event at the switch.
//!
//! The pieces are plain structures without I/O or a clock, tested on their own: [`plan`] says
//! when to reshard and to how many shards, [`merge`] merges the two sets' events while both
//! run, and [`switch`] steps from one set to the other. The runtime drives them.

pub mod merge;
pub mod plan;
pub mod switch;

pub use merge::{MergeLimits, MergeStats, MergeWindow, Merged, Side};
pub use plan::{Fill, Refusal, ReshardPolicy, Trigger};
pub use switch::{Action, NewShard, Outcome, Phase, Switch};

/// Dispatches that answer a command the bot sent on one session (GUILD_MEMBERS_CHUNK for op 8,
/// RATE_LIMITED when Discord refused one, SOUNDBOARD_SOUNDS for op 31). Only that session gets
/// them, so the other set has no twin to merge with, and they are forwarded even after their
/// shard handed over: the new set will never send them.
pub fn answers_a_command(name: &[u8]) -> bool {
    matches!(
        name,
        b"GUILD_MEMBERS_CHUNK" | b"RATE_LIMITED" | b"SOUNDBOARD_SOUNDS"
    )
}
