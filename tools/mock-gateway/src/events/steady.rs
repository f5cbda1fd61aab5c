//! Stage: test world, event generator, steady stream. The renderers of `next_dispatch`: messages
//! (create, edit, unfurl, delete), typing, presences, member updates, reactions, interactions.
//!
//! Must not: allocate, format or parse: everything is appended to `out` from pre-rendered user
//! objects, static vocabulary and `json` writers. The window bookkeeping here is what makes
//! `DispatchInfo::redundant_update` exact: change a message's content or `edited_timestamp` only in
//! `message_edit`.

use super::json::{
    push, push_base64ish, push_escaped, push_hex, push_snowflake, push_string, push_timestamp_ms,
    push_u64,
};
use super::text::{self, ChatLinePlan, LINKS};
use super::world::{self, BOT_USER_ID, ChildKind, Guild, MemberShape, user_pool};
use super::{DispatchInfo, SessionEvents, WindowMessage};
use crate::rng::{mix64, mix64_pair};

/// The message contains a link (`WindowMessage::link_index`), which an unfurl update shows.
pub(super) const FEATURE_LINK: u16 = 1;
/// A redundant update added the link's embed; later versions keep it.
pub(super) const FEATURE_UNFURLED: u16 = 2;
/// A bot message with a rich embed.
const FEATURE_RICH_EMBED: u16 = 4;
/// A bot message with buttons.
const FEATURE_COMPONENTS: u16 = 8;
/// An image attachment.
const FEATURE_ATTACHMENT: u16 = 16;
/// A sticker and no text.
const FEATURE_STICKER: u16 = 32;

const REPLY_PROBABILITY: f64 = 0.12;
const MENTION_PROBABILITY: f64 = 0.08;
/// Edits that append to the line rather than rewrite it, while it is shorter than this.
const APPEND_EDIT_MAX_CONTENT_BYTES: usize = 1500;

/// Appends `{"t":"NAME","s":SEQ,"op":0,"d":` (the caller writes `d` and the closing `}`).
pub(super) fn begin_dispatch(out: &mut Vec<u8>, name: &str, seq: u64) {
    push(out, "{\"t\":\"");
    push(out, name);
    push(out, "\",\"s\":");
    push_u64(out, seq);
    push(out, ",\"op\":0,\"d\":");
}

fn dispatch(name: &'static str) -> DispatchInfo {
    DispatchInfo {
        name,
        redundant_update: false,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MessageMode {
    /// MESSAGE_CREATE: with `nonce`, `member`, `channel_type`, the reference.
    Create,
    /// MESSAGE_UPDATE: the full message as it is now, without `nonce`.
    Update,
    /// `referenced_message` inside a reply: no `member`, `guild_id`, `channel_type`, reference.
    Referenced,
}

impl SessionEvents {
    pub(super) fn message_create(
        &mut self,
        seq: u64,
        now_ms: u64,
        out: &mut Vec<u8>,
    ) -> DispatchInfo {
        let mut reply_to = None;
        if self.window_live > 0 && self.rng.chance(REPLY_PROBABILITY) {
            reply_to = self.window_pick();
        }
        let guild;
        let channel_id;
        let author_member;
        let author_user;
        let mut mention_member = None;
        match reply_to {
            Some(referenced_index) => {
                let referenced = &self.window[referenced_index];
                let (referenced_member, referenced_user) =
                    (referenced.author_member, referenced.author_user);
                guild = referenced.guild;
                channel_id = referenced.channel_id;
                match guild {
                    Some(guild) => {
                        author_member = self.skewed_index(guild.member_pool_size);
                        author_user = guild.member_user_index(author_member);
                        mention_member = Some(referenced_member); // a reply pings its target
                    }
                    None => {
                        author_member = 0;
                        author_user = referenced_user;
                    }
                }
                if referenced_index == self.window_next {
                    // The new message takes this slot: it would reference a message it evicts.
                    reply_to = None;
                }
            }
            None => {
                guild = self.pick_guild();
                match guild {
                    Some(guild) => {
                        let channel_index = self.skewed_index(guild.text_channel_count);
                        channel_id = guild.text_channel_id(channel_index);
                        author_member = self.skewed_index(guild.member_pool_size);
                        author_user = guild.member_user_index(author_member);
                        if self.rng.chance(MENTION_PROBABILITY) {
                            mention_member =
                                Some(self.rng.below(u64::from(guild.member_pool_size)) as u32);
                        }
                    }
                    None => {
                        author_member = 0;
                        author_user = self.dm_user_index();
                        channel_id = world::dm_channel_id(user_pool()[author_user as usize].id);
                    }
                }
            }
        }
        let reply_to_id = reply_to.map(|index| self.window[index].message_id);

        let mut features = 0;
        if user_pool()[author_user as usize].bot {
            if self.rng.chance(0.5) {
                features |= FEATURE_RICH_EMBED;
            }
            if self.rng.chance(0.3) {
                features |= FEATURE_COMPONENTS;
            }
        } else {
            if self.rng.chance(0.25) {
                features |= FEATURE_LINK;
            }
            if self.rng.chance(0.07) {
                features |= FEATURE_ATTACHMENT;
            }
            if self.rng.chance(0.015) {
                features |= FEATURE_STICKER;
            }
        }
        let link_index = self.rng.below(LINKS.len() as u64) as u8;
        let message_id = self.next_snowflake(now_ms);

        self.raw_text.clear();
        if features & FEATURE_STICKER == 0 {
            let plan = chat_plan(guild, features, link_index, mention_member);
            text::compose_chat_line(&mut self.rng, &plan, &mut self.raw_text);
        }
        let index = self.window_insert();
        let message = &mut self.window[index];
        message.message_id = message_id;
        message.guild = guild;
        message.channel_id = channel_id;
        message.author_member = author_member;
        message.author_user = author_user;
        message.mention_member = mention_member;
        message.created_ms = now_ms;
        message.edited_ms = None;
        message.reply_to_id = reply_to_id;
        message.features = features;
        message.link_index = link_index;
        message.content.clear();
        push_escaped(&mut message.content, &self.raw_text);

        self.dispatch_guild = guild.map(|guild| guild.id);
        begin_dispatch(out, "MESSAGE_CREATE", seq);
        write_message(out, &self.window, &self.window[index], MessageMode::Create);
        out.push(b'}');
        dispatch("MESSAGE_CREATE")
    }

    /// A user edit: new content, new `edited_timestamp`.
    pub(super) fn message_edit(
        &mut self,
        index: usize,
        seq: u64,
        now_ms: u64,
        out: &mut Vec<u8>,
    ) -> DispatchInfo {
        let message = &self.window[index];
        let plan = chat_plan(
            message.guild,
            message.features,
            message.link_index,
            message.mention_member,
        );
        let append = message.content.len() < APPEND_EDIT_MAX_CONTENT_BYTES && self.rng.chance(0.5);
        self.raw_text.clear();
        self.scratch.clear();
        if append {
            self.scratch.extend_from_slice(&self.window[index].content);
            text::push_edit_suffix(&mut self.rng, &mut self.raw_text);
        } else {
            text::compose_chat_line(&mut self.rng, &plan, &mut self.raw_text);
        }
        push_escaped(&mut self.scratch, &self.raw_text);
        let message = &mut self.window[index];
        if self.scratch == message.content {
            push(&mut self.scratch, " (edited)");
        }
        std::mem::swap(&mut message.content, &mut self.scratch);
        let previous_ms = message.edited_ms.unwrap_or(message.created_ms);
        message.edited_ms = Some(now_ms.max(previous_ms + 1));

        self.dispatch_guild = self.window[index].guild.map(|guild| guild.id);
        begin_dispatch(out, "MESSAGE_UPDATE", seq);
        write_message(out, &self.window, &self.window[index], MessageMode::Update);
        out.push(b'}');
        dispatch("MESSAGE_UPDATE")
    }

    /// A link unfurl: the same content and `edited_timestamp`, plus an embed.
    pub(super) fn message_unfurl(
        &mut self,
        index: usize,
        seq: u64,
        out: &mut Vec<u8>,
    ) -> DispatchInfo {
        self.window[index].features |= FEATURE_UNFURLED;
        self.dispatch_guild = self.window[index].guild.map(|guild| guild.id);
        begin_dispatch(out, "MESSAGE_UPDATE", seq);
        write_message(out, &self.window, &self.window[index], MessageMode::Update);
        out.push(b'}');
        DispatchInfo {
            name: "MESSAGE_UPDATE",
            redundant_update: true,
        }
    }

    pub(super) fn message_delete(
        &mut self,
        index: usize,
        seq: u64,
        out: &mut Vec<u8>,
    ) -> DispatchInfo {
        let message = &mut self.window[index];
        message.live = false;
        self.window_live -= 1;
        self.dispatch_guild = message.guild.map(|guild| guild.id);
        begin_dispatch(out, "MESSAGE_DELETE", seq);
        push(out, "{\"id\":");
        push_snowflake(out, message.message_id);
        push(out, ",\"channel_id\":");
        push_snowflake(out, message.channel_id);
        if let Some(guild) = message.guild {
            push(out, ",\"guild_id\":");
            push_snowflake(out, guild.id);
        }
        push(out, "}}");
        dispatch("MESSAGE_DELETE")
    }

    pub(super) fn typing_start(
        &mut self,
        seq: u64,
        now_ms: u64,
        out: &mut Vec<u8>,
    ) -> DispatchInfo {
        begin_dispatch(out, "TYPING_START", seq);
        match self.pick_guild() {
            Some(guild) => {
                self.dispatch_guild = Some(guild.id);
                let channel_index = self.skewed_index(guild.text_channel_count);
                let member = self.pick_human_member(&guild);
                push(out, "{\"user_id\":");
                push_snowflake(out, guild.member_user_id(member));
                push(out, ",\"timestamp\":");
                push_u64(out, now_ms / 1000);
                push(out, ",\"member\":");
                guild.write_member(out, member, MemberShape::WithUser);
                push(out, ",\"channel_id\":");
                push_snowflake(out, guild.text_channel_id(channel_index));
                push(out, ",\"guild_id\":");
                push_snowflake(out, guild.id);
            }
            None => {
                let user_id = user_pool()[self.dm_user_index() as usize].id;
                push(out, "{\"user_id\":");
                push_snowflake(out, user_id);
                push(out, ",\"timestamp\":");
                push_u64(out, now_ms / 1000);
                push(out, ",\"channel_id\":");
                push_snowflake(out, world::dm_channel_id(user_id));
            }
        }
        push(out, "}}");
        dispatch("TYPING_START")
    }

    pub(super) fn presence_update(
        &mut self,
        seq: u64,
        now_ms: u64,
        out: &mut Vec<u8>,
    ) -> DispatchInfo {
        let guild = self
            .pick_guild()
            .expect("presence_update is only chosen with guilds");
        let member = self.skewed_index(guild.member_pool_size);
        let status = match self.rng.below(100) {
            0..=59 => "online",
            60..=79 => "idle",
            80..=91 => "dnd",
            _ => "offline",
        };
        self.dispatch_guild = Some(guild.id);
        begin_dispatch(out, "PRESENCE_UPDATE", seq);
        push(out, "{\"user\":{\"id\":");
        push_snowflake(out, guild.member_user_id(member));
        push(out, "},\"status\":\"");
        push(out, status);
        push(out, "\",\"guild_id\":");
        push_snowflake(out, guild.id);
        push(out, ",\"client_status\":{");
        if status != "offline" {
            let platforms: &[&str] = match self.rng.below(100) {
                0..=54 => &["desktop"],
                55..=84 => &["mobile"],
                85..=89 => &["web"],
                _ => &["mobile", "desktop"],
            };
            for (position, platform) in platforms.iter().enumerate() {
                if position > 0 {
                    out.push(b',');
                }
                out.push(b'"');
                push(out, platform);
                push(out, "\":\"");
                push(out, status);
                out.push(b'"');
            }
        }
        push(out, "},\"activities\":[");
        if status != "offline" {
            let user_id = guild.member_user_id(member);
            match self.rng.below(100) {
                0..=11 => {}
                12..=41 => self.write_custom_status(out, now_ms),
                42..=61 => self.write_game_activity(out, now_ms),
                62..=79 => self.write_spotify_activity(out, now_ms, user_id),
                80..=91 => {
                    self.write_custom_status(out, now_ms);
                    out.push(b',');
                    self.write_game_activity(out, now_ms);
                }
                _ => {
                    self.write_custom_status(out, now_ms);
                    out.push(b',');
                    self.write_spotify_activity(out, now_ms, user_id);
                }
            }
        }
        push(out, "]}}");
        dispatch("PRESENCE_UPDATE")
    }

    fn write_custom_status(&mut self, out: &mut Vec<u8>, now_ms: u64) {
        push(out, "{\"type\":4,\"state\":");
        push_string(out, self.rng.pick(text::CUSTOM_STATUSES));
        push(
            out,
            ",\"name\":\"Custom Status\",\"id\":\"custom\",\"emoji\":{\"name\":\"",
        );
        push(out, self.rng.pick(text::STATUS_EMOJI));
        push(out, "\"},\"created_at\":");
        push_u64(out, now_ms - self.rng.below(86_400_000));
        out.push(b'}');
    }

    fn write_game_activity(&mut self, out: &mut Vec<u8>, now_ms: u64) {
        let (name, application_id) = self.rng.pick(text::GAMES);
        let started_ms = now_ms - self.rng.below(3 * 3_600_000);
        push(out, "{\"type\":0,\"timestamps\":{\"start\":");
        push_u64(out, started_ms);
        push(out, "},\"session_id\":\"");
        push_hex(
            out,
            u128::from(self.rng.next_u64()) << 64 | u128::from(self.rng.next_u64()),
            32,
        );
        push(out, "\",\"platform\":\"desktop\",\"name\":");
        push_string(out, name);
        push(out, ",\"id\":\"");
        push_hex(out, u128::from(self.rng.next_u64()), 16);
        push(out, "\",\"created_at\":");
        push_u64(out, started_ms + 1200);
        push(out, ",\"application_id\":");
        push_snowflake(out, application_id);
        out.push(b'}');
    }

    fn write_spotify_activity(&mut self, out: &mut Vec<u8>, now_ms: u64, user_id: u64) {
        let (song, artist, album) = self.rng.pick(text::SONGS);
        let started_ms = now_ms - self.rng.below(180_000);
        push(out, "{\"type\":2,\"timestamps\":{\"start\":");
        push_u64(out, started_ms);
        push(out, ",\"end\":");
        push_u64(out, started_ms + 150_000 + self.rng.below(120_000));
        push(out, "},\"sync_id\":\"");
        push_base64ish(out, self.rng.next_u64(), 22);
        push(out, "\",\"state\":");
        push_string(out, artist);
        push(out, ",\"session_id\":\"");
        push_hex(
            out,
            u128::from(self.rng.next_u64()) << 64 | u128::from(self.rng.next_u64()),
            32,
        );
        push(out, "\",\"party\":{\"id\":\"spotify:");
        push_u64(out, user_id);
        push(
            out,
            "\"},\"name\":\"Spotify\",\"id\":\"spotify:1\",\"flags\":48,\"details\":",
        );
        push_string(out, song);
        push(out, ",\"created_at\":");
        push_u64(out, started_ms + 800);
        push(out, ",\"assets\":{\"large_text\":");
        push_string(out, album);
        push(out, ",\"large_image\":\"spotify:ab67616d0000b273");
        push_hex(
            out,
            u128::from(self.rng.next_u64()) << 64 | u128::from(self.rng.next_u64()),
            32,
        );
        push(out, "\"}}");
    }

    pub(super) fn guild_member_update(
        &mut self,
        seq: u64,
        _now_ms: u64,
        out: &mut Vec<u8>,
    ) -> DispatchInfo {
        let guild = self
            .pick_guild()
            .expect("guild_member_update is only chosen with guilds");
        let member = self.skewed_index(guild.member_pool_size);
        self.dispatch_guild = Some(guild.id);
        begin_dispatch(out, "GUILD_MEMBER_UPDATE", seq);
        guild.write_member(out, member, MemberShape::Update);
        out.push(b'}');
        dispatch("GUILD_MEMBER_UPDATE")
    }

    /// MESSAGE_REACTION_ADD (`add`) or MESSAGE_REACTION_REMOVE, mostly on a window message,
    /// sometimes on an older message of a guild.
    pub(super) fn reaction(
        &mut self,
        add: bool,
        seq: u64,
        now_ms: u64,
        out: &mut Vec<u8>,
    ) -> DispatchInfo {
        let name = if add {
            "MESSAGE_REACTION_ADD"
        } else {
            "MESSAGE_REACTION_REMOVE"
        };
        let target = if self.window_live > 0 && self.rng.chance(0.85) {
            self.window_pick()
        } else {
            None
        };
        let (guild, channel_id, message_id, message_author_id) = match target {
            Some(index) => {
                let message = &self.window[index];
                let author_id = user_pool()[message.author_user as usize].id;
                (
                    message.guild,
                    message.channel_id,
                    message.message_id,
                    author_id,
                )
            }
            None => {
                let old_ms = now_ms - 60_000 - self.rng.below(7 * 86_400_000);
                let message_id = world::snowflake(
                    old_ms,
                    self.rng.below(32),
                    self.rng.below(32),
                    self.rng.below(4096),
                );
                match self.pick_guild() {
                    Some(guild) => {
                        let channel_index = self.skewed_index(guild.text_channel_count);
                        let author = self.skewed_index(guild.member_pool_size);
                        (
                            Some(guild),
                            guild.text_channel_id(channel_index),
                            message_id,
                            guild.member_user_id(author),
                        )
                    }
                    None => {
                        let user_id = user_pool()[self.dm_user_index() as usize].id;
                        (None, world::dm_channel_id(user_id), message_id, user_id)
                    }
                }
            }
        };
        let reactor_member = match guild {
            Some(guild) => self.skewed_index(guild.member_pool_size),
            None => 0,
        };
        let reactor_id = match guild {
            Some(guild) => guild.member_user_id(reactor_member),
            None => message_author_id,
        };
        let burst = self.rng.chance(0.04);
        self.dispatch_guild = guild.map(|guild| guild.id);
        begin_dispatch(out, name, seq);
        push(out, "{\"user_id\":");
        push_snowflake(out, reactor_id);
        push(out, if burst { ",\"type\":1" } else { ",\"type\":0" });
        push(out, ",\"message_id\":");
        push_snowflake(out, message_id);
        if add {
            push(out, ",\"message_author_id\":");
            push_snowflake(out, message_author_id);
            if let Some(guild) = guild {
                push(out, ",\"member\":");
                guild.write_member(out, reactor_member, MemberShape::WithUser);
            }
        }
        push(out, ",\"emoji\":");
        if self.rng.chance(0.75) {
            push(out, "{\"name\":\"");
            push(out, self.rng.pick(REACTION_EMOJI));
            push(out, "\",\"id\":null}");
        } else {
            push(out, "{\"name\":\"");
            push(out, self.rng.pick(&["kekw", "pepega", "catjam", "sadge"]));
            push(out, "\",\"id\":");
            let emoji_id = match guild {
                Some(guild) => guild.child_id(ChildKind::Emoji, 0),
                None => FALLBACK_EMOJI_ID,
            };
            push_snowflake(out, emoji_id);
            push(out, ",\"animated\":false}");
        }
        push(out, ",\"channel_id\":");
        push_snowflake(out, channel_id);
        if burst {
            push(
                out,
                ",\"burst_colors\":[\"#F8C9C2\",\"#E4727A\"],\"burst\":true",
            );
        } else {
            push(out, ",\"burst\":false");
        }
        if let Some(guild) = guild {
            push(out, ",\"guild_id\":");
            push_snowflake(out, guild.id);
        }
        push(out, "}}");
        dispatch(name)
    }

    /// INTERACTION_CREATE: an application command (type 2) or autocomplete (type 4) in a guild.
    pub(super) fn interaction_create(
        &mut self,
        seq: u64,
        now_ms: u64,
        out: &mut Vec<u8>,
    ) -> DispatchInfo {
        let guild = self
            .pick_guild()
            .expect("interaction_create is only chosen with guilds");
        let member = self.pick_human_member(&guild);
        let channel_index = self.skewed_index(guild.text_channel_count);
        let command_index = self.rng.below(text::COMMANDS.len() as u64) as usize;
        let (command, option_name, option_type, option_values) = text::COMMANDS[command_index];
        let autocomplete = option_type == 3 && self.rng.chance(0.25);
        let interaction_id = self.next_snowflake(now_ms);
        let target_member = self.rng.below(u64::from(guild.member_pool_size)) as u32;
        let member_permissions = if guild.hash().is_multiple_of(7) {
            "9007199254740991"
        } else {
            "2248473465835073"
        };

        self.dispatch_guild = Some(guild.id);
        begin_dispatch(out, "INTERACTION_CREATE", seq);
        push(out, "{\"version\":1,\"type\":");
        push(out, if autocomplete { "4" } else { "2" });
        push(out, ",\"token\":\"aW50ZXJhY3Rpb246");
        push_base64ish(out, self.rng.next_u64(), 170);
        push(out, "\",\"member\":");
        guild.write_member(out, member, MemberShape::Interaction);
        push(out, ",\"locale\":\"");
        push(out, self.rng.pick(text::LOCALES));
        push(out, "\",\"id\":");
        push_snowflake(out, interaction_id);
        push(out, ",\"guild_locale\":\"");
        push(out, guild.locale());
        push(out, "\",\"guild_id\":");
        push_snowflake(out, guild.id);
        push(out, ",\"guild\":{\"locale\":\"");
        push(out, guild.locale());
        push(out, "\",\"id\":");
        push_snowflake(out, guild.id);
        push(out, ",\"features\":[");
        let feature_count = 2 + (guild.hash() >> 7) as usize % 5;
        for (position, feature) in text::GUILD_FEATURES.iter().take(feature_count).enumerate() {
            if position > 0 {
                out.push(b',');
            }
            push_string(out, feature);
        }
        push(
            out,
            "]},\"entitlements\":[],\"entitlement_sku_ids\":[],\"data\":{\"type\":1",
        );
        if option_type == 6 {
            let target_id = guild.member_user_id(target_member);
            push(out, ",\"resolved\":{\"users\":{");
            push_snowflake(out, target_id);
            out.push(b':');
            out.extend_from_slice(&guild.member_user(target_member).author_json);
            push(out, "},\"members\":{");
            push_snowflake(out, target_id);
            out.push(b':');
            guild.write_member(out, target_member, MemberShape::Resolved);
            push(out, "}}");
        }
        push(out, ",\"options\":[{\"value\":");
        if option_type == 6 {
            push_snowflake(out, guild.member_user_id(target_member));
        } else {
            push_string(out, self.rng.pick(option_values));
        }
        push(out, ",\"type\":");
        push_u64(out, u64::from(option_type));
        push(out, ",\"name\":\"");
        push(out, option_name);
        if autocomplete {
            push(out, "\",\"focused\":true}]");
        } else {
            push(out, "\"}]");
        }
        push(out, ",\"name\":\"");
        push(out, command);
        push(out, "\",\"id\":");
        push_snowflake(out, command_id(command_index));
        push(out, "},\"context\":0,\"channel_id\":");
        push_snowflake(out, guild.text_channel_id(channel_index));
        push(out, ",\"channel\":");
        guild.write_text_channel(out, channel_index, Some(member_permissions));
        push(out, ",\"authorizing_integration_owners\":{\"0\":");
        push_snowflake(out, guild.id);
        push(
            out,
            "},\"attachment_size_limit\":524288000,\"application_id\":",
        );
        push_snowflake(out, BOT_USER_ID);
        push(out, ",\"app_permissions\":\"2248473465835073\"}}");
        dispatch("INTERACTION_CREATE")
    }

    /// A chatting member who is not a bot (bots do not type or run slash commands), when a few
    /// draws find one.
    fn pick_human_member(&mut self, guild: &Guild) -> u32 {
        let mut member = self.skewed_index(guild.member_pool_size);
        for _ in 0..3 {
            if !guild.member_user(member).bot {
                break;
            }
            member = self.skewed_index(guild.member_pool_size);
        }
        member
    }

    /// A user the bot has a DM channel with (guild-less sessions).
    fn dm_user_index(&mut self) -> u32 {
        (self.dm_user_base + self.skewed_index(32)) % world::USER_POOL_SIZE as u32
    }
}

const REACTION_EMOJI: &[&str] = &["👍", "❤️", "😂", "🔥", "👀", "✅", "🎉", "😭", "💀", "🙏"];
const FALLBACK_EMOJI_ID: u64 = 1_072_403_558_611_828_806;

/// The id of the mock application's command `index`.
fn command_id(index: usize) -> u64 {
    world::snowflake(
        1_707_500_000_000 + index as u64 * 1000,
        0,
        ChildKind::Command as u64,
        index as u64,
    )
}

fn chat_plan(
    guild: Option<Guild>,
    features: u16,
    link_index: u8,
    mention_member: Option<u32>,
) -> ChatLinePlan {
    ChatLinePlan {
        link: (features & FEATURE_LINK != 0).then(|| LINKS[usize::from(link_index)].url),
        mention_user_id: guild
            .zip(mention_member)
            .map(|(guild, member)| guild.member_user_id(member)),
        custom_emoji_id: guild.map_or(FALLBACK_EMOJI_ID, |guild| {
            guild.child_id(ChildKind::Emoji, 0)
        }),
    }
}

/// Writes a message object as it is now in the window.
fn write_message(
    out: &mut Vec<u8>,
    window: &[WindowMessage],
    message: &WindowMessage,
    mode: MessageMode,
) {
    let author = &user_pool()[message.author_user as usize];
    let outer = mode != MessageMode::Referenced;
    push(
        out,
        if message.reply_to_id.is_some() {
            "{\"type\":19"
        } else {
            "{\"type\":0"
        },
    );
    push(out, ",\"tts\":false,\"timestamp\":");
    push_timestamp_ms(out, message.created_ms);
    push(out, ",\"pinned\":false");
    if mode == MessageMode::Create && !author.bot {
        push(out, ",\"nonce\":");
        let nonce_lead_ms = 40 + mix64(message.message_id) % 900;
        push_snowflake(out, message.message_id - (nonce_lead_ms << 22));
    }
    push(out, ",\"mentions\":[");
    if let (Some(member), Some(guild)) = (message.mention_member, message.guild) {
        let user_json = &guild.member_user(member).author_json;
        out.extend_from_slice(&user_json[..user_json.len() - 1]);
        push(out, ",\"member\":");
        guild.write_member(out, member, MemberShape::WithoutUser);
        out.push(b'}');
    }
    push(out, "],\"mention_roles\":[],\"mention_everyone\":false");
    if let (true, Some(guild)) = (outer, message.guild) {
        push(out, ",\"member\":");
        guild.write_member(out, message.author_member, MemberShape::WithoutUser);
    }
    push(out, ",\"id\":");
    push_snowflake(out, message.message_id);
    push(out, ",\"flags\":0,\"embeds\":[");
    if message.features & FEATURE_RICH_EMBED != 0 {
        write_rich_embed(out, message);
    }
    if message.features & FEATURE_UNFURLED != 0 {
        if message.features & FEATURE_RICH_EMBED != 0 {
            out.push(b',');
        }
        write_unfurl_embed(out, message);
    }
    push(out, "],\"edited_timestamp\":");
    match message.edited_ms {
        Some(edited_ms) => push_timestamp_ms(out, edited_ms),
        None => push(out, "null"),
    }
    push(out, ",\"content\":\"");
    out.extend_from_slice(&message.content);
    push(out, "\",\"components\":[");
    if message.features & FEATURE_COMPONENTS != 0 {
        write_buttons(out, message.message_id);
    }
    out.push(b']');
    if outer {
        push(
            out,
            if message.guild.is_some() {
                ",\"channel_type\":0"
            } else {
                ",\"channel_type\":1"
            },
        );
    }
    push(out, ",\"channel_id\":");
    push_snowflake(out, message.channel_id);
    push(out, ",\"author\":");
    out.extend_from_slice(&author.author_json);
    push(out, ",\"attachments\":[");
    if message.features & FEATURE_ATTACHMENT != 0 {
        write_attachment(out, message);
    }
    out.push(b']');
    if message.features & FEATURE_STICKER != 0 {
        push(
            out,
            ",\"sticker_items\":[{\"name\":\"Wave\",\"id\":\"749054660769218631\",\"format_type\":3}]",
        );
    }
    if let (true, Some(reply_to_id)) = (outer, message.reply_to_id) {
        push(out, ",\"message_reference\":{\"type\":0,\"message_id\":");
        push_snowflake(out, reply_to_id);
        if let Some(guild) = message.guild {
            push(out, ",\"guild_id\":");
            push_snowflake(out, guild.id);
        }
        push(out, ",\"channel_id\":");
        push_snowflake(out, message.channel_id);
        push(out, "},\"referenced_message\":");
        // Null when the referenced message was deleted (or left the window), as Discord does.
        match window
            .iter()
            .find(|other| other.live && other.message_id == reply_to_id)
        {
            Some(referenced) => write_message(out, window, referenced, MessageMode::Referenced),
            None => push(out, "null"),
        }
    }
    if let (true, Some(guild)) = (outer, message.guild) {
        push(out, ",\"guild_id\":");
        push_snowflake(out, guild.id);
    }
    out.push(b'}');
}

/// The embed a link unfurl adds: a function of the message's link and id.
fn write_unfurl_embed(out: &mut Vec<u8>, message: &WindowMessage) {
    let link = &LINKS[usize::from(message.link_index)];
    let image_hash = mix64_pair(message.message_id, 0x1);
    push(out, "{\"type\":\"");
    push(out, link.embed_type);
    push(out, "\",\"url\":");
    push_string(out, link.url);
    push(out, ",\"title\":");
    push_string(out, link.title);
    push(out, ",\"thumbnail\":{\"width\":1280,\"url\":");
    push_string(out, link.thumbnail);
    push(
        out,
        ",\"proxy_url\":\"https://images-ext-1.discordapp.net/external/",
    );
    push_base64ish(out, image_hash, 43);
    push(out, "/https/");
    push_escaped(out, link.thumbnail.trim_start_matches("https://"));
    push(out, "\",\"placeholder_version\":1,\"placeholder\":\"");
    push_base64ish(out, image_hash ^ 0xff, 27);
    push(
        out,
        "=\",\"height\":720,\"flags\":0},\"provider\":{\"name\":",
    );
    push_string(out, link.provider);
    push(out, "},\"description\":");
    push_string(out, link.description);
    push(out, ",\"content_scan_version\":2,\"color\":");
    push_u64(out, u64::from(link.color));
    out.push(b'}');
}

const RICH_EMBEDS: &[(&str, &str, &str, &str)] = &[
    (
        "🎉 Giveaway: Nitro \"Classic\"",
        "React with 🎉 to enter!\nEnds <t:1772409600:R>",
        "Winners",
        "1",
    ),
    (
        "Now playing",
        "**Never Gonna Give You Up** — Rick Astley\n`00:42 / 03:33`",
        "Requested by",
        "luna 🌙",
    ),
    (
        "Level up!",
        "GG, you just advanced to **level 12** \\o/",
        "XP",
        "12,480",
    ),
    (
        "Ticket #0421",
        "Support will be with you shortly.\nPlease describe the issue.",
        "Category",
        "Billing",
    ),
];

fn write_rich_embed(out: &mut Vec<u8>, message: &WindowMessage) {
    let (title, description, field_name, field_value) =
        RICH_EMBEDS[(mix64(message.message_id) % RICH_EMBEDS.len() as u64) as usize];
    push(out, "{\"type\":\"rich\",\"title\":");
    push_string(out, title);
    push(out, ",\"footer\":{\"text\":\"");
    push(out, "Powered by shardgate-mock\"},\"fields\":[{\"value\":");
    push_string(out, field_value);
    push(out, ",\"name\":");
    push_string(out, field_name);
    push(out, ",\"inline\":true}],\"description\":");
    push_string(out, description);
    push(out, ",\"content_scan_version\":2,\"color\":5814783}");
}

fn write_buttons(out: &mut Vec<u8>, message_id: u64) {
    push(
        out,
        "{\"type\":1,\"id\":1,\"components\":[{\"type\":2,\"style\":1,\"label\":\"Accept\",\"id\":2,\"custom_id\":\"accept:",
    );
    push_u64(out, message_id);
    push(
        out,
        "\"},{\"type\":2,\"style\":4,\"label\":\"Decline\",\"id\":3,\"custom_id\":\"decline:",
    );
    push_u64(out, message_id);
    push(out, "\"}]}");
}

const ATTACHMENTS: &[(&str, &str, u64, u64)] = &[
    ("image.png", "image/png", 1920, 1080),
    ("IMG_2231.jpg", "image/jpeg", 3024, 4032),
    (
        "Screenshot_2026-02-27_at_23.56.48.png",
        "image/png",
        2560,
        1440,
    ),
    ("clip.mp4", "video/mp4", 1280, 720),
];

fn write_attachment(out: &mut Vec<u8>, message: &WindowMessage) {
    let hash = mix64_pair(message.message_id, 0xa77);
    let (filename, content_type, width, height) =
        ATTACHMENTS[(hash % ATTACHMENTS.len() as u64) as usize];
    let attachment_id = message.message_id - (3 << 22);
    let created_secs = message.created_ms / 1000;
    let write_signed_path = |out: &mut Vec<u8>| {
        push_u64(out, message.channel_id);
        out.push(b'/');
        push_u64(out, attachment_id);
        out.push(b'/');
        push(out, filename);
        push(out, "?ex=");
        push_hex(out, u128::from(created_secs + 86_400), 8);
        push(out, "&is=");
        push_hex(out, u128::from(created_secs), 8);
        push(out, "&hm=");
        push_hex(out, u128::from(mix64(hash)) << 64 | u128::from(hash), 32);
        push_hex(
            out,
            u128::from(mix64(hash ^ 1)) << 64 | u128::from(mix64(hash ^ 2)),
            32,
        );
        push(out, "&\"");
    };
    push(out, "{\"width\":");
    push_u64(out, width);
    push(out, ",\"url\":\"https://cdn.discordapp.com/attachments/");
    write_signed_path(out);
    push(out, ",\"size\":");
    push_u64(out, 40_000 + hash % 8_000_000);
    push(
        out,
        ",\"proxy_url\":\"https://media.discordapp.net/attachments/",
    );
    write_signed_path(out);
    push(out, ",\"placeholder_version\":1,\"placeholder\":\"");
    push_base64ish(out, hash, 27);
    push(out, "=\",\"id\":");
    push_snowflake(out, attachment_id);
    push(out, ",\"height\":");
    push_u64(out, height);
    push(out, ",\"filename\":\"");
    push(out, filename);
    push(out, "\",\"content_type\":\"");
    push(out, content_type);
    push(out, "\",\"content_scan_version\":3}");
}
