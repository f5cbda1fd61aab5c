//! Stage: test world, event generator. Produces the dispatches of one mock gateway session as
//! complete gateway messages (`{"t":…,"s":…,"op":0,"d":{…}}`, compact JSON, Discord's key order
//! for the envelope), shaped and sized like 2026 captures: the steady stream of a busy bot
//! (`SessionEvents::next_dispatch`) and the session payloads the server sends around it (READY,
//! GUILD_CREATE, GUILD_DELETE, RESUMED, GUILD_MEMBERS_CHUNK, RATE_LIMITED).
//!
//! Determinism: the output is a function of (seed, shard, guilds, mix, call order) and of the
//! `seq` values passed in; timestamps come from a synthetic clock that advances with `seq` (or
//! with the `clock` of `next_dispatch_at`: the mock's timelines tick it per event of a guild
//! partition and write `"s":0`, so that `d` is the same whichever session's `s` it later gets;
//! `seq` only ever appears in the envelope). World
//! facts (a guild's channels, roles and members, the user population) are functions of ids only,
//! so every session and shard count agrees on them.
//!
//! MESSAGE_UPDATE contract (tests of the engine rely on it): the generator remembers the last
//! `WINDOW_CAPACITY_MESSAGES` messages it created in this session (in the mock: this guild
//! partition's timeline, which a session that became ready later joins midway), with the
//! content and `edited_timestamp` it last sent for each. A redundant update
//! (`redundant_update: true`) repeats both exactly and adds an embed, as a link unfurl does; a
//! real edit changes both. No update or delete ever names a message outside that window.
//!
//! Must not: perform I/O, read the wall clock, or use serde or `format!` on the hot path
//! (`next_dispatch` writes bytes into the caller's buffer from pre-rendered fragments; after warm-up
//! it allocates nothing except when `out` grows).

mod json;
mod session_payloads;
mod steady;
mod text;
mod world;

use std::collections::HashSet;

use crate::rng::{Rng, derive_seed, mix64};
use world::Guild;

/// 2015-01-01T00:00:00Z, the zero of snowflake timestamps.
pub const DISCORD_EPOCH_MS: u64 = 1_420_070_400_000;

/// The user id of the bot the mock serves: READY's `user.id` and `application.id`, the first
/// member of every guild, the `application_id` of interactions.
pub const BOT_USER_ID: u64 = world::BOT_USER_ID;

/// The bot's username: READY's `user.username`, the application's `name`.
pub const BOT_USERNAME: &str = world::BOT_USERNAME;

/// The bot's discriminator (bots kept theirs; migrated users have `"0"`).
pub const BOT_DISCRIMINATOR: &str = world::BOT_DISCRIMINATOR;

/// READY's `application.flags`, also the REST application object's `flags`.
pub const APPLICATION_FLAGS: u64 = world::APPLICATION_FLAGS;

/// The user id of the application's owner (a person, not a team): REST's application `owner`.
pub const APPLICATION_OWNER_ID: u64 = world::APPLICATION_OWNER_ID;

/// How many messages of this session updates and deletes may target (the newest ones created).
pub const WINDOW_CAPACITY_MESSAGES: usize = 64;

/// The shard that receives a guild's events: `(guild_id >> 22) % total_shards`.
pub fn shard_for_guild(guild_id: u64, total_shards: u32) -> u32 {
    assert!(total_shards > 0, "a bot has at least one shard");
    ((guild_id >> 22) % u64::from(total_shards)) as u32
}

/// `count` distinct, realistic guild snowflakes derived from `seed`: creation times uniform over
/// 2016..2026, random worker, process and increment bits. Their shards (`shard_for_guild`) are
/// uniform for any shard count.
pub fn guild_ids(seed: u64, count: usize) -> Vec<u64> {
    let mut rng = Rng::new(derive_seed(seed, &[STREAM_GUILD_IDS]));
    let mut seen = HashSet::with_capacity(count);
    let mut ids = Vec::with_capacity(count);
    while ids.len() < count {
        let created_ms = rng.range(GUILDS_FIRST_MS, world::WORLD_END_MS - 1);
        let id = world::snowflake(created_ms, rng.below(32), rng.below(32), rng.below(4096));
        if seen.insert(id) {
            ids.push(id);
        }
    }
    ids
}

/// Relative weights of the steady stream's dispatch types (0 disables one).
///
/// The default is a busy community bot with the message-content, members and presences intents,
/// modelled on a 2026 capture and the protocol notes: messages dominate, link unfurls make
/// redundant MESSAGE_UPDATEs about twice as common as real edits, typing and presence are the
/// chatter around them. Over the default mix a dispatch averages about 1.1 KB (see the size test).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventMix {
    pub message_create: u32,
    pub message_update_edit: u32,
    pub message_update_unfurl: u32,
    pub message_delete: u32,
    pub typing_start: u32,
    pub presence_update: u32,
    pub guild_member_update: u32,
    pub reaction_add: u32,
    pub reaction_remove: u32,
    pub interaction_create: u32,
}

impl Default for EventMix {
    fn default() -> EventMix {
        EventMix {
            message_create: 30,
            message_update_edit: 4,
            message_update_unfurl: 8,
            message_delete: 3,
            typing_start: 15,
            presence_update: 20,
            guild_member_update: 6,
            reaction_add: 8,
            reaction_remove: 2,
            interaction_create: 4,
        }
    }
}

impl EventMix {
    /// Parses `"message_create=30,typing_start=0,…"`: each named weight replaces the default; names
    /// not given keep their default. An empty spec is the default. Unknown or repeated names,
    /// values that are not a u32, and a mix whose weights are all zero are errors.
    pub fn parse(spec: &str) -> Result<EventMix, String> {
        let mut mix = EventMix::default();
        let mut given: Vec<&str> = Vec::new();
        for item in spec
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
        {
            let (name, value) = item
                .split_once('=')
                .ok_or_else(|| format!("event mix item `{item}` is not name=weight"))?;
            let (name, value) = (name.trim(), value.trim());
            let weight: u32 = value
                .parse()
                .map_err(|_| format!("event mix weight `{value}` of `{name}` is not a u32"))?;
            let slot = mix.weight_mut(name).ok_or_else(|| {
                format!(
                    "unknown event mix name `{name}` (known: {})",
                    KIND_NAMES.join(", ")
                )
            })?;
            *slot = weight;
            if given.contains(&name) {
                return Err(format!("event mix name `{name}` given twice"));
            }
            given.push(name);
        }
        if mix.weights().iter().all(|&weight| weight == 0) {
            return Err("event mix has only zero weights".to_owned());
        }
        Ok(mix)
    }

    /// Only MESSAGE_CREATE.
    pub fn messages_only() -> EventMix {
        EventMix {
            message_create: 1,
            message_update_edit: 0,
            message_update_unfurl: 0,
            message_delete: 0,
            typing_start: 0,
            presence_update: 0,
            guild_member_update: 0,
            reaction_add: 0,
            reaction_remove: 0,
            interaction_create: 0,
        }
    }

    fn weights(&self) -> [u32; KIND_COUNT] {
        [
            self.message_create,
            self.message_update_edit,
            self.message_update_unfurl,
            self.message_delete,
            self.typing_start,
            self.presence_update,
            self.guild_member_update,
            self.reaction_add,
            self.reaction_remove,
            self.interaction_create,
        ]
    }

    fn weight_mut(&mut self, name: &str) -> Option<&mut u32> {
        Some(match name {
            "message_create" => &mut self.message_create,
            "message_update_edit" => &mut self.message_update_edit,
            "message_update_unfurl" => &mut self.message_update_unfurl,
            "message_delete" => &mut self.message_delete,
            "typing_start" => &mut self.typing_start,
            "presence_update" => &mut self.presence_update,
            "guild_member_update" => &mut self.guild_member_update,
            "reaction_add" => &mut self.reaction_add,
            "reaction_remove" => &mut self.reaction_remove,
            "interaction_create" => &mut self.interaction_create,
            _ => return None,
        })
    }
}

/// What `next_dispatch` wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DispatchInfo {
    /// The dispatch name, the envelope's `t`.
    pub name: &'static str,
    /// True for a MESSAGE_UPDATE whose content and `edited_timestamp` equal the last version this
    /// session sent for that message id (an unfurl): an engine that drops redundant updates must
    /// drop exactly these.
    pub redundant_update: bool,
}

/// Generates the dispatches of one gateway session of one shard.
///
/// Memory: the 64-message window (content buffers of up to a few KB each), scratch buffers, and 64
/// bytes per guild; the user population (about 1.1 MiB) is shared by all sessions of the process.
pub struct SessionEvents {
    rng: Rng,
    guilds: Vec<Guild>,
    cumulative_weights: [u64; KIND_COUNT],
    clock_start_ms: u64,
    snowflake_worker: u64,
    snowflake_process: u64,
    snowflake_increment: u64,
    dm_user_base: u32,
    /// The guild of the dispatch `next_dispatch` wrote last (`None` for a direct message).
    dispatch_guild: Option<u64>,
    window: Vec<WindowMessage>,
    window_next: usize,
    window_live: usize,
    raw_text: String,
    scratch: Vec<u8>,
    sections: session_payloads::GuildCreateSections,
}

impl SessionEvents {
    /// A session of shard `shard_id` owning `guild_ids` (duplicates are ignored; empty is allowed:
    /// then the stream is direct messages and DM typing only, as shard 0 of a guild-less bot sees).
    pub fn new(seed: u64, shard_id: u32, guild_ids: Vec<u64>, mix: EventMix) -> SessionEvents {
        let weights = mix.weights();
        assert!(
            weights.iter().any(|&weight| weight > 0),
            "an event mix needs a non-zero weight"
        );
        let mut cumulative_weights = [0u64; KIND_COUNT];
        let mut total = 0u64;
        for (cumulative, weight) in cumulative_weights.iter_mut().zip(weights) {
            total += u64::from(weight);
            *cumulative = total;
        }
        let mut seen = HashSet::with_capacity(guild_ids.len());
        let guilds = guild_ids
            .into_iter()
            .filter(|&id| seen.insert(id))
            .map(Guild::new)
            .collect();
        let session_hash = mix64(derive_seed(seed, &[STREAM_CLOCK, u64::from(shard_id)]));
        SessionEvents {
            rng: Rng::new(derive_seed(seed, &[STREAM_EVENTS, u64::from(shard_id)])),
            guilds,
            cumulative_weights,
            clock_start_ms: CLOCK_FIRST_MS + session_hash % CLOCK_SPREAD_MS,
            snowflake_worker: u64::from(shard_id) % 32,
            snowflake_process: (session_hash >> 40) % 32,
            snowflake_increment: (session_hash >> 20) % 4096,
            dm_user_base: (session_hash >> 50) as u32 % world::USER_POOL_SIZE as u32,
            dispatch_guild: None,
            window: (0..WINDOW_CAPACITY_MESSAGES)
                .map(|_| WindowMessage::default())
                .collect(),
            window_next: 0,
            window_live: 0,
            raw_text: String::with_capacity(4096),
            scratch: Vec::with_capacity(4096),
            sections: session_payloads::GuildCreateSections::default(),
        }
    }

    /// Appends one complete gateway message, the next steady-stream dispatch with sequence `seq`,
    /// to `out` (which it does not clear). Its timestamps follow the synthetic clock at `seq`.
    pub fn next_dispatch(&mut self, seq: u64, out: &mut Vec<u8>) -> DispatchInfo {
        self.next_dispatch_at(seq, seq, out)
    }

    /// As [`SessionEvents::next_dispatch`], with the synthetic clock at `clock` instead of `seq`:
    /// a timeline shared by several sessions renders with the event's index in the timeline, so
    /// `d` does not depend on which session's sequence it will carry.
    pub fn next_dispatch_at(&mut self, clock: u64, seq: u64, out: &mut Vec<u8>) -> DispatchInfo {
        let now_ms = self.now_ms(clock);
        self.dispatch_guild = None;
        let draw = self
            .rng
            .below(*self.cumulative_weights.last().expect("KIND_COUNT > 0"));
        let kind = self
            .cumulative_weights
            .iter()
            .position(|&bound| draw < bound)
            .unwrap_or(0);
        let has_guilds = !self.guilds.is_empty();
        match kind {
            KIND_MESSAGE_CREATE => self.message_create(seq, now_ms, out),
            KIND_MESSAGE_UPDATE_EDIT => match self.window_pick() {
                Some(index) => self.message_edit(index, seq, now_ms, out),
                None => self.message_create(seq, now_ms, out),
            },
            KIND_MESSAGE_UPDATE_UNFURL => match self.window_pick_for_unfurl() {
                Some(index) => self.message_unfurl(index, seq, out),
                None => self.message_create(seq, now_ms, out),
            },
            KIND_MESSAGE_DELETE => match self.window_pick() {
                Some(index) => self.message_delete(index, seq, out),
                None => self.message_create(seq, now_ms, out),
            },
            KIND_TYPING_START => self.typing_start(seq, now_ms, out),
            KIND_PRESENCE_UPDATE if has_guilds => self.presence_update(seq, now_ms, out),
            KIND_GUILD_MEMBER_UPDATE if has_guilds => self.guild_member_update(seq, now_ms, out),
            KIND_REACTION_ADD => self.reaction(true, seq, now_ms, out),
            KIND_REACTION_REMOVE => self.reaction(false, seq, now_ms, out),
            KIND_INTERACTION_CREATE if has_guilds => self.interaction_create(seq, now_ms, out),
            _ => self.typing_start(seq, now_ms, out),
        }
    }

    /// Appends READY (sequence `seq`, normally 1): `d.guilds` lists an unavailable stub for exactly
    /// this session's guilds, in order.
    pub fn ready(
        &mut self,
        seq: u64,
        session_id: &str,
        resume_gateway_url: &str,
        shard: [u32; 2],
        out: &mut Vec<u8>,
    ) {
        self.write_ready(seq, session_id, resume_gateway_url, shard, out);
    }

    /// Appends a GUILD_CREATE for `guild_id` (which need not be one of this session's guilds),
    /// padded with members, channels and roles to about `target_bytes` (±10%); 0, or any target
    /// below the guild's minimal form, gives the minimal form: its channels, roles and emojis with
    /// the bot as the only member listed, 4 to 7.5 KB (median about 6 KB, like the 6.3 KB capture
    /// of a small guild). The content is a function of the guild id and `target_bytes` only.
    pub fn guild_create(
        &mut self,
        guild_id: u64,
        seq: u64,
        target_bytes: usize,
        out: &mut Vec<u8>,
    ) {
        self.write_guild_create(guild_id, seq, target_bytes, out);
    }

    /// Appends GUILD_DELETE: `{"unavailable":true,"id":…}` for an outage, `{"id":…}` when the bot
    /// was removed.
    pub fn guild_delete(&mut self, guild_id: u64, unavailable: bool, seq: u64, out: &mut Vec<u8>) {
        session_payloads::write_guild_delete(guild_id, unavailable, seq, out);
    }

    /// Appends RESUMED with a `_trace`.
    pub fn resumed(&mut self, seq: u64, out: &mut Vec<u8>) {
        self.write_resumed(seq, out);
    }

    /// Appends one GUILD_MEMBERS_CHUNK (chunk 0 of 1) listing the bot and the guild's chatting
    /// members.
    pub fn guild_members_chunk(
        &mut self,
        guild_id: u64,
        nonce: Option<&str>,
        seq: u64,
        out: &mut Vec<u8>,
    ) {
        session_payloads::write_guild_members_chunk(guild_id, nonce, seq, out);
    }

    /// Appends RATE_LIMITED `{"retry_after":…,"opcode":…,"meta":{"nonce":…,"guild_id":…}}`.
    /// `retry_after_secs` must be finite and not negative.
    pub fn rate_limited(
        &mut self,
        opcode: u8,
        retry_after_secs: f64,
        guild_id: u64,
        nonce: Option<&str>,
        seq: u64,
        out: &mut Vec<u8>,
    ) {
        session_payloads::write_rate_limited(opcode, retry_after_secs, guild_id, nonce, seq, out);
    }

    /// Adds a guild to this session's steady stream (a join, or a guild back from an outage). The
    /// server sends the GUILD_CREATE itself. Adding a guild twice is a no-op.
    pub fn add_guild(&mut self, guild_id: u64) {
        if !self.guilds.iter().any(|guild| guild.id == guild_id) {
            self.guilds.push(Guild::new(guild_id));
        }
    }

    /// Removes a guild from the steady stream and forgets its messages, so that no later update or
    /// delete names them. The server sends the GUILD_DELETE itself.
    pub fn remove_guild(&mut self, guild_id: u64) {
        self.guilds.retain(|guild| guild.id != guild_id);
        for message in &mut self.window {
            if message.live && message.guild.is_some_and(|guild| guild.id == guild_id) {
                message.live = false;
                self.window_live -= 1;
            }
        }
    }

    /// The guild the dispatch last written by `next_dispatch` belongs to (its `d.guild_id`), or
    /// `None` for a direct message.
    pub fn last_dispatch_guild(&self) -> Option<u64> {
        self.dispatch_guild
    }

    /// The guilds this session currently owns, in READY order.
    pub fn guild_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.guilds.iter().map(|guild| guild.id)
    }

    /// The synthetic clock: Unix milliseconds at tick `clock` (a sequence, or a timeline index),
    /// strictly increasing with `clock`.
    fn now_ms(&self, clock: u64) -> u64 {
        let jitter_ms = mix64(clock ^ self.clock_start_ms) % CLOCK_MS_PER_SEQ;
        self.clock_start_ms + clock * CLOCK_MS_PER_SEQ + jitter_ms
    }

    /// A fresh snowflake stamped `now_ms`, unique within the session.
    fn next_snowflake(&mut self, now_ms: u64) -> u64 {
        self.snowflake_increment = (self.snowflake_increment + 1) % 4096;
        world::snowflake(
            now_ms,
            self.snowflake_worker,
            self.snowflake_process,
            self.snowflake_increment,
        )
    }

    /// An index in `[0, count)` skewed towards 0 (the minimum of two uniform draws): a few busy
    /// guilds, channels and members, as in real servers.
    fn skewed_index(&mut self, count: u32) -> u32 {
        let count = u64::from(count.max(1));
        self.rng.below(count).min(self.rng.below(count)) as u32
    }

    fn pick_guild(&mut self) -> Option<Guild> {
        if self.guilds.is_empty() {
            return None;
        }
        let index = self.skewed_index(self.guilds.len() as u32);
        Some(self.guilds[index as usize])
    }

    /// A random live message of the window, or `None` when the window is empty.
    fn window_pick(&mut self) -> Option<usize> {
        self.window_pick_preferring(&[])
    }

    /// The message a link unfurl updates: preferably one with a link not unfurled yet, then one
    /// with a link, then any.
    fn window_pick_for_unfurl(&mut self) -> Option<usize> {
        use steady::{FEATURE_LINK, FEATURE_UNFURLED};
        self.window_pick_preferring(&[
            (FEATURE_LINK | FEATURE_UNFURLED, FEATURE_LINK),
            (FEATURE_LINK, FEATURE_LINK),
        ])
    }

    /// A live message whose `features & mask == value` for the first `(mask, value)` preference
    /// some message meets, else any live message; `None` when the window is empty. One random
    /// draw whatever the outcome.
    fn window_pick_preferring(&mut self, preferences: &[(u16, u16)]) -> Option<usize> {
        if self.window_live == 0 {
            return None;
        }
        let start = self.rng.below(WINDOW_CAPACITY_MESSAGES as u64) as usize;
        for &(mask, value) in preferences.iter().chain(&[(0, 0)]) {
            for step in 0..WINDOW_CAPACITY_MESSAGES {
                let index = (start + step) % WINDOW_CAPACITY_MESSAGES;
                let message = &self.window[index];
                if message.live && message.features & mask == value {
                    return Some(index);
                }
            }
        }
        unreachable!("window_live > 0 but no live message")
    }

    /// Claims the window slot of a new message, evicting the oldest.
    fn window_insert(&mut self) -> usize {
        let index = self.window_next;
        self.window_next = (index + 1) % WINDOW_CAPACITY_MESSAGES;
        if !self.window[index].live {
            self.window_live += 1;
        }
        self.window[index].live = true;
        index
    }
}

/// A message of this session that updates and deletes may target, with the content and
/// `edited_timestamp` last sent for it.
#[derive(Debug, Default)]
struct WindowMessage {
    live: bool,
    message_id: u64,
    /// `None` for a direct message.
    guild: Option<Guild>,
    channel_id: u64,
    author_member: u32,
    author_user: u32,
    mention_member: Option<u32>,
    created_ms: u64,
    edited_ms: Option<u64>,
    reply_to_id: Option<u64>,
    /// `steady::FEATURE_*` bits.
    features: u16,
    link_index: u8,
    /// JSON-escaped body of `content`, exactly as last sent.
    content: Vec<u8>,
}

/// Sub-streams of a session seed.
const STREAM_GUILD_IDS: u64 = 0x4755_494c_4453;
const STREAM_EVENTS: u64 = 0x4556_454e_5453;
const STREAM_CLOCK: u64 = 0x43_4c4f_434b;

/// 2016-01-01: the oldest guild `guild_ids` makes.
const GUILDS_FIRST_MS: u64 = 1_451_606_400_000;
/// 2026-03-01: sessions' synthetic clocks start within 30 days after this.
const CLOCK_FIRST_MS: u64 = 1_772_323_200_000;
const CLOCK_SPREAD_MS: u64 = 30 * 86_400_000;
/// Synthetic time per sequence number: 25 dispatches per second per shard.
const CLOCK_MS_PER_SEQ: u64 = 40;

const KIND_COUNT: usize = 10;
const KIND_MESSAGE_CREATE: usize = 0;
const KIND_MESSAGE_UPDATE_EDIT: usize = 1;
const KIND_MESSAGE_UPDATE_UNFURL: usize = 2;
const KIND_MESSAGE_DELETE: usize = 3;
const KIND_TYPING_START: usize = 4;
const KIND_PRESENCE_UPDATE: usize = 5;
const KIND_GUILD_MEMBER_UPDATE: usize = 6;
const KIND_REACTION_ADD: usize = 7;
const KIND_REACTION_REMOVE: usize = 8;
const KIND_INTERACTION_CREATE: usize = 9;
const KIND_NAMES: [&str; KIND_COUNT] = [
    "message_create",
    "message_update_edit",
    "message_update_unfurl",
    "message_delete",
    "typing_start",
    "presence_update",
    "guild_member_update",
    "reaction_add",
    "reaction_remove",
    "interaction_create",
];

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use serde_json::Value;

    use super::*;

    const SEED: u64 = 0x5EED_CAFE;

    /// Parses one gateway message and checks the envelope: key order `t, s, op, d` (byte prefix),
    /// `op` 0, the expected name and sequence.
    fn parse_dispatch(bytes: &[u8], name: &str, seq: u64) -> Value {
        let text = std::str::from_utf8(bytes).expect("UTF-8");
        let prefix = format!("{{\"t\":\"{name}\",\"s\":{seq},\"op\":0,\"d\":");
        assert!(
            text.starts_with(&prefix),
            "bad envelope prefix: {}",
            &text[..text.len().min(120)]
        );
        let value: Value =
            serde_json::from_str(text).unwrap_or_else(|error| panic!("{error}: {text}"));
        // Compact, and escaped as serde escapes: re-serialising (in another key order) gives the
        // same number of bytes.
        let reserialized = serde_json::to_string(&value).expect("serialisable");
        assert_eq!(reserialized.len(), bytes.len(), "not compact JSON: {text}");
        assert_eq!(value["t"], name);
        assert_eq!(value["s"], seq);
        assert_eq!(value["op"], 0);
        assert!(value["d"].is_object());
        value
    }

    fn session(seed: u64, shard: u32, guild_count: usize) -> (SessionEvents, Vec<u64>) {
        let guilds = guild_ids(seed, guild_count);
        (
            SessionEvents::new(seed, shard, guilds.clone(), EventMix::default()),
            guilds,
        )
    }

    /// Runs the steady stream from seq 2, returning (info, parsed message, byte length).
    fn stream(events: &mut SessionEvents, count: u64) -> Vec<(DispatchInfo, Value, usize)> {
        let mut out = Vec::new();
        (2..count + 2)
            .map(|seq| {
                out.clear();
                let info = events.next_dispatch(seq, &mut out);
                let value = parse_dispatch(&out, info.name, seq);
                (info, value, out.len())
            })
            .collect()
    }

    fn id(value: &Value) -> u64 {
        value
            .as_str()
            .expect("snowflake string")
            .parse()
            .expect("snowflake digits")
    }

    #[test]
    fn session_events_can_move_between_threads() {
        fn assert_send<T: Send>() {}
        assert_send::<SessionEvents>();
    }

    #[test]
    fn every_dispatch_is_a_valid_envelope() {
        for seed in [1, 2, SEED] {
            let (mut events, _) = session(seed, 0, 25);
            let dispatches = stream(&mut events, 3000);
            let names: HashSet<&str> = dispatches.iter().map(|(info, _, _)| info.name).collect();
            for name in [
                "MESSAGE_CREATE",
                "MESSAGE_UPDATE",
                "MESSAGE_DELETE",
                "TYPING_START",
                "PRESENCE_UPDATE",
                "GUILD_MEMBER_UPDATE",
                "MESSAGE_REACTION_ADD",
                "MESSAGE_REACTION_REMOVE",
                "INTERACTION_CREATE",
            ] {
                assert!(names.contains(name), "{name} never generated");
            }
        }
    }

    #[test]
    fn guildless_session_sends_direct_messages_only() {
        let mut events = SessionEvents::new(SEED, 0, Vec::new(), EventMix::default());
        for (info, value, _) in stream(&mut events, 2000) {
            assert!(
                matches!(
                    info.name,
                    "MESSAGE_CREATE"
                        | "MESSAGE_UPDATE"
                        | "MESSAGE_DELETE"
                        | "TYPING_START"
                        | "MESSAGE_REACTION_ADD"
                        | "MESSAGE_REACTION_REMOVE"
                ),
                "{}",
                info.name
            );
            assert!(value["d"].get("guild_id").is_none(), "{value}");
            assert!(value["d"].get("member").is_none(), "{value}");
        }
    }

    #[test]
    fn messages_only_mix() {
        let (mut events, _) = session(SEED, 0, 5);
        events = SessionEvents::new(
            SEED,
            0,
            events.guild_ids().collect(),
            EventMix::messages_only(),
        );
        for (info, _, _) in stream(&mut events, 500) {
            assert_eq!(info.name, "MESSAGE_CREATE");
        }
    }

    #[test]
    fn same_seed_same_bytes_different_seed_different_bytes() {
        let run = |seed: u64| {
            let (mut events, guilds) = session(seed, 3, 12);
            let mut out = Vec::new();
            events.ready(1, "abc", "wss://gateway.example/", [3, 16], &mut out);
            for (seq, &guild) in guilds.iter().enumerate() {
                events.guild_create(guild, seq as u64 + 2, 8000, &mut out);
            }
            for seq in 100..2100 {
                events.next_dispatch(seq, &mut out);
            }
            events.resumed(2100, &mut out);
            out
        };
        assert_eq!(run(SEED), run(SEED));
        assert_ne!(run(SEED), run(SEED + 1));
        // Sessions of different shards with the same seed differ too.
        let mut first = Vec::new();
        let mut second = Vec::new();
        let guilds = guild_ids(SEED, 4);
        let mut a = SessionEvents::new(SEED, 0, guilds.clone(), EventMix::default());
        let mut b = SessionEvents::new(SEED, 1, guilds, EventMix::default());
        for seq in 2..200 {
            a.next_dispatch(seq, &mut first);
            b.next_dispatch(seq, &mut second);
        }
        assert_ne!(first, second);
    }

    #[test]
    fn guild_ids_are_distinct_realistic_and_spread_evenly_over_shards() {
        let ids = guild_ids(SEED, 20_000);
        assert_eq!(ids.len(), 20_000);
        assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len());
        assert_eq!(ids, guild_ids(SEED, 20_000));
        assert_ne!(ids[..10], guild_ids(SEED + 1, 10)[..]);
        assert_eq!(guild_ids(SEED, 10)[..], ids[..10]);
        for &id in &ids {
            let created_ms = (id >> 22) + DISCORD_EPOCH_MS;
            assert!((GUILDS_FIRST_MS..world::WORLD_END_MS).contains(&created_ms));
        }
        for total_shards in [1u32, 2, 16, 160] {
            let mut per_shard = vec![0usize; total_shards as usize];
            for &id in &ids {
                let shard = shard_for_guild(id, total_shards);
                assert_eq!(u64::from(shard), (id >> 22) % u64::from(total_shards));
                per_shard[shard as usize] += 1;
            }
            let expected = ids.len() as f64 / f64::from(total_shards);
            let tolerance = 0.15f64.max(4.0 / expected.sqrt());
            for count in per_shard {
                let deviation = (count as f64 - expected).abs() / expected;
                assert!(
                    deviation < tolerance,
                    "{total_shards} shards: {count} vs {expected}"
                );
            }
        }
    }

    #[test]
    fn ready_lists_exactly_the_sessions_guilds() {
        let (mut events, guilds) = session(SEED, 5, 40);
        let mut out = Vec::new();
        events.ready(
            1,
            "session \"7\"",
            "wss://resume.example/?v=10",
            [5, 16],
            &mut out,
        );
        let ready = parse_dispatch(&out, "READY", 1);
        let listed: Vec<u64> = ready["d"]["guilds"]
            .as_array()
            .expect("guilds")
            .iter()
            .map(|stub| id(&stub["id"]))
            .collect();
        assert_eq!(listed, guilds);
        for stub in ready["d"]["guilds"].as_array().expect("guilds") {
            assert_eq!(stub["unavailable"], true);
        }
        let d = &ready["d"];
        assert_eq!(d["v"], 10);
        assert_eq!(d["session_id"], "session \"7\"");
        assert_eq!(d["resume_gateway_url"], "wss://resume.example/?v=10");
        assert_eq!(d["shard"], serde_json::json!([5, 16]));
        assert_eq!(d["session_type"], "normal");
        assert_eq!(d["user"]["bot"], true);
        assert_eq!(d["application"]["id"], d["user"]["id"]);
        let trace = d["_trace"][0].as_str().expect("trace string");
        let _: Value = serde_json::from_str(trace).expect("the trace string holds JSON");

        events.remove_guild(guilds[0]);
        events.add_guild(12345 << 22);
        events.add_guild(12345 << 22);
        out.clear();
        events.ready(1, "s", "wss://r", [5, 16], &mut out);
        let ready = parse_dispatch(&out, "READY", 1);
        let listed: Vec<u64> = ready["d"]["guilds"]
            .as_array()
            .expect("guilds")
            .iter()
            .map(|stub| id(&stub["id"]))
            .collect();
        let mut expected = guilds[1..].to_vec();
        expected.push(12345 << 22);
        assert_eq!(listed, expected);

        let mut empty = SessionEvents::new(SEED, 0, Vec::new(), EventMix::default());
        out.clear();
        empty.ready(1, "s", "wss://r", [0, 1], &mut out);
        assert_eq!(
            parse_dispatch(&out, "READY", 1)["d"]["guilds"],
            serde_json::json!([])
        );
    }

    /// The exact MESSAGE_UPDATE contract: redundant = same content and edited_timestamp as the
    /// last version sent; edits change both; updates and deletes name only live window messages.
    #[test]
    fn message_updates_follow_the_window_contract() {
        let (mut events, guilds) = session(SEED, 0, 30);
        let guild_set: HashSet<u64> = guilds.iter().copied().collect();
        let mut last_version: HashMap<u64, (String, Value)> = HashMap::new();
        let mut created_order: Vec<u64> = Vec::new();
        let (mut redundant, mut edits, mut deletes) = (0, 0, 0);
        for (info, value, _) in stream(&mut events, 20_000) {
            let d = &value["d"];
            if let Some(guild_id) = d.get("guild_id") {
                assert!(
                    guild_set.contains(&id(guild_id)),
                    "foreign guild in {value}"
                );
            }
            match info.name {
                "MESSAGE_CREATE" => {
                    assert!(!info.redundant_update);
                    assert!(d["edited_timestamp"].is_null());
                    let message_id = id(&d["id"]);
                    let content = d["content"].as_str().expect("content").to_owned();
                    assert!(
                        last_version
                            .insert(message_id, (content, Value::Null))
                            .is_none()
                    );
                    created_order.push(message_id);
                }
                "MESSAGE_UPDATE" => {
                    let message_id = id(&d["id"]);
                    let position = created_order.iter().rposition(|&other| other == message_id);
                    let position = position.expect("update of a message this session created");
                    assert!(
                        created_order.len() - position <= WINDOW_CAPACITY_MESSAGES,
                        "outside window"
                    );
                    let (content, edited) = last_version
                        .get(&message_id)
                        .expect("update of a live message");
                    let new_content = d["content"].as_str().expect("content");
                    let new_edited = &d["edited_timestamp"];
                    if info.redundant_update {
                        redundant += 1;
                        assert_eq!(new_content, content);
                        assert_eq!(new_edited, edited);
                        assert!(!d["embeds"].as_array().expect("embeds").is_empty());
                    } else {
                        edits += 1;
                        assert_ne!(new_content, content);
                        assert_ne!(new_edited, edited);
                        assert!(new_edited.is_string());
                        if let (Some(old), Some(new)) = (edited.as_str(), new_edited.as_str()) {
                            assert!(new > old, "edited_timestamp must advance");
                        }
                    }
                    last_version.insert(message_id, (new_content.to_owned(), new_edited.clone()));
                }
                "MESSAGE_DELETE" => {
                    deletes += 1;
                    let message_id = id(&d["id"]);
                    let position = created_order.iter().rposition(|&other| other == message_id);
                    let position = position.expect("delete of a message this session created");
                    assert!(created_order.len() - position <= WINDOW_CAPACITY_MESSAGES);
                    assert!(last_version.remove(&message_id).is_some(), "deleted twice");
                }
                _ => assert!(!info.redundant_update),
            }
        }
        assert!(
            redundant > 1000 && edits > 500 && deletes > 300,
            "{redundant} {edits} {deletes}"
        );
    }

    /// `last_dispatch_guild` names the guild of `d.guild_id` (none for direct messages), for a
    /// session with guilds and for a guild-less one.
    #[test]
    fn last_dispatch_guild_is_the_guild_of_d() {
        for guild_count in [0, 1, 7] {
            let (mut events, _) = session(SEED, 0, guild_count);
            let mut out = Vec::new();
            for seq in 2..5000 {
                out.clear();
                let info = events.next_dispatch(seq, &mut out);
                let value = parse_dispatch(&out, info.name, seq);
                let guild = value["d"].get("guild_id").map(id);
                assert_eq!(events.last_dispatch_guild(), guild, "{value}");
            }
        }
    }

    /// The sequence only appears in the envelope: the same clock gives the same `d` whatever
    /// `seq` it is written with.
    #[test]
    fn seq_only_changes_the_envelope() {
        let (mut first, _) = session(SEED, 3, 5);
        let (mut second, _) = session(SEED, 3, 5);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for clock in 1..3000 {
            a.clear();
            b.clear();
            let info = first.next_dispatch_at(clock, 0, &mut a);
            assert_eq!(second.next_dispatch_at(clock, clock * 977, &mut b), info);
            let d_at = |bytes: &[u8]| bytes.windows(5).position(|w| w == b"\"d\":{").expect("d");
            assert_eq!(a[d_at(&a)..], b[d_at(&b)..]);
        }
    }

    #[test]
    fn removed_guilds_get_no_more_events() {
        let (mut events, guilds) = session(SEED, 0, 3);
        stream(&mut events, 300);
        events.remove_guild(guilds[0]);
        events.remove_guild(guilds[1]);
        for (_, value, _) in stream(&mut events, 2000) {
            if let Some(guild_id) = value["d"].get("guild_id") {
                assert_eq!(id(guild_id), guilds[2], "{value}");
            }
        }
        events.remove_guild(guilds[2]);
        for (_, value, _) in stream(&mut events, 300) {
            assert!(value["d"].get("guild_id").is_none());
        }
    }

    /// Channels and authors of the stream are those the guild's GUILD_CREATE and
    /// GUILD_MEMBERS_CHUNK list; timestamps follow the synthetic clock.
    #[test]
    fn ids_are_consistent_with_the_world() {
        let (mut events, guilds) = session(SEED, 0, 6);
        let mut channels: HashMap<u64, HashSet<u64>> = HashMap::new();
        let mut members: HashMap<u64, HashSet<u64>> = HashMap::new();
        let mut out = Vec::new();
        for &guild in &guilds {
            out.clear();
            events.guild_create(guild, 2, 0, &mut out);
            let create = parse_dispatch(&out, "GUILD_CREATE", 2);
            let ids = create["d"]["channels"]
                .as_array()
                .expect("channels")
                .iter()
                .map(|c| id(&c["id"]));
            channels.insert(guild, ids.collect());
            out.clear();
            events.guild_members_chunk(guild, Some("n"), 3, &mut out);
            let chunk = parse_dispatch(&out, "GUILD_MEMBERS_CHUNK", 3);
            let ids = chunk["d"]["members"]
                .as_array()
                .expect("members")
                .iter()
                .map(|m| id(&m["user"]["id"]));
            members.insert(guild, ids.collect());
        }
        let mut last_timestamp = String::new();
        for (info, value, _) in stream(&mut events, 5000) {
            let d = &value["d"];
            let guild = id(&d["guild_id"]);
            if let Some(channel_id) = d.get("channel_id") {
                assert!(channels[&guild].contains(&id(channel_id)), "{value}");
            }
            let user_id = d
                .get("user_id")
                .or_else(|| d.get("author").map(|author| &author["id"]));
            if let Some(user_id) = user_id {
                assert!(members[&guild].contains(&id(user_id)), "{value}");
            }
            if info.name == "MESSAGE_CREATE" {
                let timestamp = d["timestamp"].as_str().expect("timestamp").to_owned();
                assert!(timestamp > last_timestamp, "clock must advance");
                assert!(timestamp.starts_with("2026-0") && timestamp.ends_with("000+00:00"));
                let id_ms = (id(&d["id"]) >> 22) + DISCORD_EPOCH_MS;
                assert_eq!(
                    id_ms % 1000,
                    timestamp[20..23].parse::<u64>().expect("millis")
                );
                last_timestamp = timestamp;
            }
        }
    }

    #[test]
    fn chat_content_exercises_escaping() {
        let (mut events, _) = session(SEED, 0, 10);
        let (mut quotes, mut backslashes, mut newlines, mut non_ascii) = (0, 0, 0, 0);
        for (_, value, _) in stream(&mut events, 5000) {
            if let Some(content) = value["d"].get("content").and_then(Value::as_str) {
                quotes += usize::from(content.contains('"'));
                backslashes += usize::from(content.contains('\\'));
                newlines += usize::from(content.contains('\n'));
                non_ascii += usize::from(!content.is_ascii());
            }
        }
        assert!(quotes > 20 && backslashes > 5 && newlines > 20 && non_ascii > 50);
    }

    #[test]
    fn sizes_match_2026_captures() {
        let (mut events, _) = session(SEED, 0, 50);
        let mut sizes: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        let mut total_bytes = 0;
        let count = 40_000;
        for (info, _, bytes) in stream(&mut events, count) {
            let name = if info.redundant_update {
                "MESSAGE_UPDATE (unfurl)"
            } else {
                info.name
            };
            let entry = sizes.entry(name).or_default();
            entry.0 += 1;
            entry.1 += bytes;
            total_bytes += bytes;
        }
        let mean_bytes = total_bytes as f64 / count as f64;
        eprintln!("mean dispatch size over the default mix: {mean_bytes:.0} B");
        for (name, (events, bytes)) in &sizes {
            eprintln!(
                "{name:<26} {:>6} events, mean {:>5} B",
                events,
                bytes / events
            );
        }
        let mean = |name: &str| sizes[name].1 / sizes[name].0;
        let expect = |name: &str, low: usize, high: usize| {
            assert!(
                (low..=high).contains(&mean(name)),
                "{name}: mean {} B",
                mean(name)
            );
        };
        expect("MESSAGE_CREATE", 1100, 2600);
        expect("MESSAGE_UPDATE", 1100, 2800);
        expect("MESSAGE_UPDATE (unfurl)", 1500, 3200);
        expect("MESSAGE_DELETE", 100, 180);
        expect("TYPING_START", 400, 900);
        expect("PRESENCE_UPDATE", 250, 650);
        expect("GUILD_MEMBER_UPDATE", 450, 900);
        expect("MESSAGE_REACTION_ADD", 700, 1400);
        expect("MESSAGE_REACTION_REMOVE", 150, 400);
        expect("INTERACTION_CREATE", 1600, 3200);
        assert!((950.0..=1400.0).contains(&mean_bytes), "mean {mean_bytes}");
    }

    #[test]
    fn guild_create_honours_target_bytes() {
        let (mut events, guilds) = session(SEED, 0, 8);
        let mut out = Vec::new();
        let mut worst_deviation = 0.0f64;
        for &guild in &guilds {
            out.clear();
            events.guild_create(guild, 7, 0, &mut out);
            let minimal = out.len();
            assert!(
                (3000..=9000).contains(&minimal),
                "minimal GUILD_CREATE {minimal} B"
            );
            parse_dispatch(&out, "GUILD_CREATE", 7);
            out.clear();
            events.guild_create(guild, 8, 5000, &mut out);
            assert!(
                out.len() <= minimal.max(5750),
                "target 5000: {} B",
                out.len()
            );
            for target_bytes in [12_000usize, 20_000, 100_000, 900_000] {
                out.clear();
                events.guild_create(guild, 9, target_bytes, &mut out);
                let value = parse_dispatch(&out, "GUILD_CREATE", 9);
                let deviation =
                    (out.len() as f64 - target_bytes as f64).abs() / target_bytes as f64;
                worst_deviation = worst_deviation.max(deviation);
                assert!(deviation < 0.15, "target {target_bytes}: {} B", out.len());
                let d = &value["d"];
                assert_eq!(id(&d["id"]), guild);
                assert_eq!(d["unavailable"], false);
                let listed = d["members"].as_array().expect("members");
                let user_ids: HashSet<u64> = listed
                    .iter()
                    .map(|member| id(&member["user"]["id"]))
                    .collect();
                assert_eq!(user_ids.len(), listed.len(), "duplicate members");
                assert!(d["member_count"].as_u64().expect("count") >= listed.len() as u64);
                assert_eq!(d["large"], d["member_count"].as_u64().expect("count") > 250);
                let channel_ids: HashSet<u64> = d["channels"]
                    .as_array()
                    .expect("channels")
                    .iter()
                    .map(|c| id(&c["id"]))
                    .collect();
                assert_eq!(
                    channel_ids.len(),
                    d["channels"].as_array().expect("channels").len()
                );
            }
            // A target below the minimal form gives the minimal form.
            let mut small = Vec::new();
            events.guild_create(guild, 7, 100, &mut small);
            let mut zero = Vec::new();
            events.guild_create(guild, 7, 0, &mut zero);
            assert_eq!(small, zero);
        }
        eprintln!(
            "GUILD_CREATE: worst deviation from target_bytes {:.1}%",
            worst_deviation * 100.0
        );
    }

    #[test]
    fn session_payloads_parse() {
        let (mut events, guilds) = session(SEED, 0, 2);
        let mut out = Vec::new();
        events.guild_delete(guilds[0], true, 10, &mut out);
        let value = parse_dispatch(&out, "GUILD_DELETE", 10);
        assert_eq!(
            value["d"],
            serde_json::json!({"unavailable": true, "id": guilds[0].to_string()})
        );
        out.clear();
        events.guild_delete(guilds[0], false, 11, &mut out);
        let value = parse_dispatch(&out, "GUILD_DELETE", 11);
        assert_eq!(value["d"], serde_json::json!({"id": guilds[0].to_string()}));
        out.clear();
        events.resumed(12, &mut out);
        let value = parse_dispatch(&out, "RESUMED", 12);
        assert!(value["d"]["_trace"][0].is_string());
        out.clear();
        events.guild_members_chunk(guilds[1], None, 13, &mut out);
        let value = parse_dispatch(&out, "GUILD_MEMBERS_CHUNK", 13);
        assert!(value["d"].get("nonce").is_none());
        assert_eq!(value["d"]["chunk_count"], 1);
        out.clear();
        events.rate_limited(8, 27.5, guilds[1], Some("req \"1\""), 14, &mut out);
        let value = parse_dispatch(&out, "RATE_LIMITED", 14);
        assert_eq!(
            value["d"],
            serde_json::json!({"retry_after": 27.5, "opcode": 8,
                "meta": {"nonce": "req \"1\"", "guild_id": guilds[1].to_string()}})
        );
        out.clear();
        events.rate_limited(8, 30.0, guilds[1], None, 15, &mut out);
        let value = parse_dispatch(&out, "RATE_LIMITED", 15);
        assert_eq!(value["d"]["retry_after"], 30);
        assert!(value["d"]["meta"]["nonce"].is_null());
    }

    #[test]
    fn event_mix_parse() {
        assert_eq!(EventMix::parse(""), Ok(EventMix::default()));
        let mix = EventMix::parse("message_create=50, typing_start=0").expect("valid");
        assert_eq!(mix.message_create, 50);
        assert_eq!(mix.typing_start, 0);
        assert_eq!(mix.presence_update, EventMix::default().presence_update);
        let error = EventMix::parse("message_create=1,mesage_delete=2").expect_err("typo");
        assert!(error.contains("`mesage_delete`"), "{error}");
        let error = EventMix::parse("typing_start=lots").expect_err("not a number");
        assert!(
            error.contains("typing_start") && error.contains("lots"),
            "{error}"
        );
        let error = EventMix::parse("typing_start").expect_err("no weight");
        assert!(error.contains("typing_start"), "{error}");
        let error = EventMix::parse("typing_start=1,typing_start=2").expect_err("twice");
        assert!(error.contains("typing_start"), "{error}");
        let all_zero = KIND_NAMES
            .iter()
            .map(|name| format!("{name}=0"))
            .collect::<Vec<_>>()
            .join(",");
        assert!(
            EventMix::parse(&all_zero)
                .expect_err("all zero")
                .contains("zero")
        );
        let only_messages = KIND_NAMES
            .iter()
            .map(|name| format!("{name}={}", u32::from(*name == "message_create")))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(
            EventMix::parse(&only_messages),
            Ok(EventMix::messages_only())
        );
    }
}
