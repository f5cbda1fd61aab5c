//! Stage: test world, event generator, session payloads. READY, GUILD_CREATE (padded to a target
//! size), GUILD_DELETE, RESUMED, GUILD_MEMBERS_CHUNK and RATE_LIMITED: the dispatches the server
//! sends around the steady stream, at session start, on joins and outages, and on requests.
//!
//! Must not: touch the message window (these payloads never change what updates may target), or
//! make a guild's content depend on anything but its id and the requested size: a GUILD_CREATE for
//! the same guild and size is the same bytes in every session.

use std::io::Write as _;

use super::SessionEvents;
use super::json::{
    push, push_hex, push_optional_string, push_snowflake, push_string, push_timestamp_us, push_u64,
};
use super::steady::begin_dispatch;
use super::text;
use super::world::{
    APPLICATION_FLAGS, BOT_DISCRIMINATOR, BOT_MEMBER, BOT_USER_ID, BOT_USERNAME, ChildKind, Guild,
    MemberShape,
};
use crate::rng::mix64_pair;

/// Members a GUILD_CREATE lists at most, however large the target (about 200 MB of JSON).
const GUILD_CREATE_MEMBERS_MAX: u32 = 250_000;
/// A guild with more members than this is `large` (the Identify `large_threshold` default).
const LARGE_THRESHOLD_MEMBERS: u32 = 250;

/// Reused buffers for the arrays of a GUILD_CREATE, each holding comma-separated items.
#[derive(Debug, Default)]
pub(super) struct GuildCreateSections {
    voice_states: Vec<u8>,
    threads: Vec<u8>,
    stickers: Vec<u8>,
    roles: Vec<u8>,
    presences: Vec<u8>,
    members: Vec<u8>,
    emojis: Vec<u8>,
    channels: Vec<u8>,
}

impl GuildCreateSections {
    fn clear(&mut self) {
        for section in self.all_mut() {
            section.clear();
        }
    }

    fn all_mut(&mut self) -> [&mut Vec<u8>; 8] {
        [
            &mut self.voice_states,
            &mut self.threads,
            &mut self.stickers,
            &mut self.roles,
            &mut self.presences,
            &mut self.members,
            &mut self.emojis,
            &mut self.channels,
        ]
    }

    fn total_bytes(&self) -> usize {
        [
            &self.voice_states,
            &self.threads,
            &self.stickers,
            &self.roles,
            &self.presences,
            &self.members,
            &self.emojis,
            &self.channels,
        ]
        .iter()
        .map(|section| section.len())
        .sum()
    }
}

/// Starts a new item of a comma-separated section.
fn next_item(section: &mut Vec<u8>) -> &mut Vec<u8> {
    if !section.is_empty() {
        section.push(b',');
    }
    section
}

/// How many of each growing list a GUILD_CREATE holds.
#[derive(Clone, Copy, Debug)]
struct GuildCreateCounts {
    /// Listed members besides the bot.
    members: u32,
    text_channels: u32,
    voice_channels: u32,
    roles: u32,
    emojis: u32,
}

impl SessionEvents {
    pub(super) fn write_ready(
        &mut self,
        seq: u64,
        session_id: &str,
        resume_gateway_url: &str,
        shard: [u32; 2],
        out: &mut Vec<u8>,
    ) {
        begin_dispatch(out, "READY", seq);
        push(
            out,
            "{\"v\":10,\"user_settings\":{},\"user\":{\"verified\":true,",
        );
        push(out, "\"username\":");
        push_string(out, BOT_USERNAME);
        push(out, ",\"primary_guild\":null,\"mfa_enabled\":true,\"id\":");
        push_snowflake(out, BOT_USER_ID);
        push(
            out,
            ",\"global_name\":null,\"flags\":0,\"email\":null,\"discriminator\":",
        );
        push_string(out, BOT_DISCRIMINATOR);
        push(
            out,
            ",\"clan\":null,\"bot\":true,\"avatar\":null},\"session_type\":\"normal\",\"session_id\":",
        );
        push_string(out, session_id);
        push(out, ",\"shard\":[");
        push_u64(out, u64::from(shard[0]));
        out.push(b',');
        push_u64(out, u64::from(shard[1]));
        push(out, "],\"resume_gateway_url\":");
        push_string(out, resume_gateway_url);
        push(
            out,
            ",\"relationships\":[],\"private_channels\":[],\"presences\":[],\"guilds\":[",
        );
        for (position, guild) in self.guilds.iter().enumerate() {
            if position > 0 {
                out.push(b',');
            }
            push(out, "{\"unavailable\":true,\"id\":");
            push_snowflake(out, guild.id);
            out.push(b'}');
        }
        push(
            out,
            "],\"guild_join_requests\":[],\"geo_ordered_rtc_regions\":",
        );
        push(
            out,
            "[\"frankfurt\",\"brussels\",\"milan\",\"paris\",\"rotterdam\"],",
        );
        push(
            out,
            "\"game_relationships\":[],\"auth\":{},\"application\":{\"id\":",
        );
        push_snowflake(out, BOT_USER_ID);
        push(out, ",\"flags\":");
        push_u64(out, APPLICATION_FLAGS);
        push(out, "},\"_trace\":[");
        self.write_trace(
            out,
            &[
                "id_created",
                "session_lookup_time",
                "start_session",
                "guilds_connect",
            ],
        );
        push(out, "]}}");
    }

    pub(super) fn write_resumed(&mut self, seq: u64, out: &mut Vec<u8>) {
        begin_dispatch(out, "RESUMED", seq);
        push(out, "{\"_trace\":[");
        self.write_trace(out, &["resume_session", "replay_dispatches"]);
        push(out, "]}}");
    }

    /// One `_trace` entry: a JSON document inside a JSON string, as Discord sends it.
    fn write_trace(&mut self, out: &mut Vec<u8>, calls: &[&str]) {
        let mut trace = std::mem::take(&mut self.raw_text);
        trace.clear();
        let mut number = itoa::Buffer::new();
        trace.push_str("[\"gateway-prd-arm-us-east1-");
        trace.push(char::from(b'a' + self.rng.below(4) as u8));
        trace.push('-');
        trace.push_str(number.format(self.rng.below(100)));
        trace.push_str("\",{\"micros\":");
        trace.push_str(number.format(self.rng.range(20_000, 150_000)));
        trace.push_str(",\"calls\":[");
        for (position, call) in calls.iter().enumerate() {
            if position > 0 {
                trace.push(',');
            }
            trace.push('"');
            trace.push_str(call);
            trace.push_str("\",{\"micros\":");
            trace.push_str(number.format(self.rng.range(1, 50_000)));
            trace.push_str(",\"calls\":[]}");
        }
        trace.push_str("]}]");
        push_string(out, &trace);
        self.raw_text = trace;
    }

    pub(super) fn write_guild_create(
        &mut self,
        guild_id: u64,
        seq: u64,
        target_bytes: usize,
        out: &mut Vec<u8>,
    ) {
        let guild = Guild::new(guild_id);
        let sections = &mut self.sections;
        sections.clear();
        let mut counts = GuildCreateCounts {
            members: 0,
            text_channels: guild.text_channel_count,
            voice_channels: guild.voice_channel_count,
            roles: guild.role_count,
            emojis: 1 + (guild.hash() >> 24) as u32 % 3,
        };
        // Minimal form: the guild's channels, roles and emojis, and the bot as the only member
        // listed (as for a large guild).
        write_member_item(sections, &guild, BOT_MEMBER);
        for member in 0..counts.members {
            write_member_item(sections, &guild, member);
        }
        for role in 0..counts.roles {
            write_role(next_item(&mut sections.roles), &guild, role);
        }
        for category in 0..guild.category_count {
            write_category(next_item(&mut sections.channels), &guild, category);
        }
        for channel in 0..counts.text_channels {
            guild.write_text_channel(next_item(&mut sections.channels), channel, None);
        }
        for channel in 0..counts.voice_channels {
            write_voice_channel(next_item(&mut sections.channels), &guild, channel);
        }
        for emoji in 0..counts.emojis {
            write_emoji(next_item(&mut sections.emojis), &guild, emoji);
        }
        if guild.hash().is_multiple_of(2) {
            write_sticker(next_item(&mut sections.stickers), &guild);
        }
        if guild.hash().is_multiple_of(3) {
            write_thread(next_item(&mut sections.threads), &guild);
        }
        if guild.hash().is_multiple_of(4) && counts.members > 0 {
            write_voice_state(next_item(&mut sections.voice_states), &guild, 0);
        }

        // Grow towards the target, a member at a time with channels, roles and emojis in
        // proportion, stopping when the next member would overshoot more than it undershoots.
        let mut fixed_bytes = Vec::new();
        write_guild_create_document(&mut fixed_bytes, &guild, seq, counts, None);
        let fixed_bytes = fixed_bytes.len();
        let mut unit_bytes = 700;
        loop {
            let total_bytes = fixed_bytes + sections.total_bytes();
            if total_bytes + unit_bytes / 2 >= target_bytes
                || counts.members >= GUILD_CREATE_MEMBERS_MAX
            {
                break;
            }
            let before = sections.total_bytes();
            write_member_item(sections, &guild, counts.members);
            counts.members += 1;
            if counts.members.is_multiple_of(5) {
                guild.write_text_channel(
                    next_item(&mut sections.channels),
                    counts.text_channels,
                    None,
                );
                counts.text_channels += 1;
            }
            if counts.members.is_multiple_of(12) {
                write_role(next_item(&mut sections.roles), &guild, counts.roles);
                counts.roles += 1;
            }
            if counts.members.is_multiple_of(25) {
                write_emoji(next_item(&mut sections.emojis), &guild, counts.emojis);
                counts.emojis += 1;
            }
            if counts.members.is_multiple_of(40) {
                write_voice_channel(
                    next_item(&mut sections.channels),
                    &guild,
                    counts.voice_channels,
                );
                counts.voice_channels += 1;
            }
            if counts.members.is_multiple_of(30) {
                write_voice_state(
                    next_item(&mut sections.voice_states),
                    &guild,
                    counts.members - 1,
                );
            }
            unit_bytes = sections.total_bytes() - before;
        }
        write_guild_create_document(out, &guild, seq, counts, Some(&self.sections));
    }
}

/// Writes a member and, when the member is online, its presence.
fn write_member_item(sections: &mut GuildCreateSections, guild: &Guild, member: u32) {
    guild.write_member(
        next_item(&mut sections.members),
        member,
        MemberShape::WithUser,
    );
    let member_hash = mix64_pair(guild.hash() ^ 0x5052_4553, u64::from(member));
    if member != BOT_MEMBER && member_hash.is_multiple_of(3) {
        let out = next_item(&mut sections.presences);
        push(out, "{\"user\":{\"id\":");
        push_snowflake(out, guild.member_user_id(member));
        let status = ["online", "idle", "dnd"][(member_hash >> 8) as usize % 3];
        push(out, "},\"status\":\"");
        push(out, status);
        push(out, "\",\"client_status\":{\"desktop\":\"");
        push(out, status);
        push(out, "\"},\"activities\":[");
        if member_hash.is_multiple_of(2) {
            push(out, "{\"type\":4,\"state\":");
            push_string(
                out,
                text::CUSTOM_STATUSES[(member_hash >> 16) as usize % text::CUSTOM_STATUSES.len()],
            );
            push(
                out,
                ",\"name\":\"Custom Status\",\"id\":\"custom\",\"created_at\":",
            );
            push_u64(out, guild.member_joined_us(member) / 1000);
            out.push(b'}');
        }
        push(out, "]}");
    }
}

/// Writes the whole GUILD_CREATE message, keys in Discord's (reverse alphabetical) order. With
/// `sections` `None`, writes the document with empty arrays (to measure its fixed part).
fn write_guild_create_document(
    out: &mut Vec<u8>,
    guild: &Guild,
    seq: u64,
    counts: GuildCreateCounts,
    sections: Option<&GuildCreateSections>,
) {
    let section = |out: &mut Vec<u8>, key: &str, pick: fn(&GuildCreateSections) -> &Vec<u8>| {
        push(out, ",\"");
        push(out, key);
        push(out, "\":[");
        if let Some(sections) = sections {
            out.extend_from_slice(pick(sections));
        }
        out.push(b']');
    };
    let member_count = guild.member_count.max(counts.members + 1);
    begin_dispatch(out, "GUILD_CREATE", seq);
    push(out, "{\"voice_states\":[");
    if let Some(sections) = sections {
        out.extend_from_slice(&sections.voice_states);
    }
    push(out, "],\"version\":");
    push_u64(out, guild.created_ms + 86_400_000);
    push(
        out,
        ",\"verification_level\":1,\"vanity_url_code\":null,\"unavailable\":false",
    );
    section(out, "threads", |sections| &sections.threads);
    push(out, ",\"system_channel_id\":");
    push_snowflake(out, guild.text_channel_id(0));
    push(out, ",\"system_channel_flags\":0");
    section(out, "stickers", |sections| &sections.stickers);
    push(
        out,
        ",\"stage_instances\":[],\"splash\":null,\"soundboard_sounds\":[],",
    );
    push(
        out,
        "\"safety_alerts_channel_id\":null,\"rules_channel_id\":null",
    );
    section(out, "roles", |sections| &sections.roles);
    push(
        out,
        ",\"region\":\"deprecated\",\"public_updates_channel_id\":null,\"profile\":null",
    );
    section(out, "presences", |sections| &sections.presences);
    let boosts = (guild.hash() >> 33) % 20;
    push(out, ",\"premium_tier\":");
    push_u64(
        out,
        match boosts {
            0..=1 => 0,
            2..=6 => 1,
            7..=13 => 2,
            _ => 3,
        },
    );
    push(out, ",\"premium_subscription_count\":");
    push_u64(out, boosts);
    push(
        out,
        ",\"premium_progress_bar_enabled\":false,\"preferred_locale\":\"",
    );
    push(out, guild.locale());
    push(out, "\",\"owner_id\":");
    push_snowflake(out, guild.member_user_id(0));
    push(out, ",\"nsfw_level\":0,\"nsfw\":false,\"name\":");
    push_string(out, guild.name());
    push(out, ",\"mfa_level\":0");
    section(out, "members", |sections| &sections.members);
    push(out, ",\"member_count\":");
    push_u64(out, u64::from(member_count));
    push(
        out,
        ",\"max_video_channel_users\":25,\"max_stage_video_channel_users\":50,",
    );
    push(
        out,
        "\"max_members\":25000000,\"latest_onboarding_question_id\":null,\"lazy\":true,\"large\":",
    );
    push(
        out,
        if member_count > LARGE_THRESHOLD_MEMBERS {
            "true"
        } else {
            "false"
        },
    );
    push(out, ",\"joined_at\":");
    push_timestamp_us(out, guild.member_joined_us(BOT_MEMBER));
    push(out, ",\"incidents_data\":null,\"id\":");
    push_snowflake(out, guild.id);
    push(out, ",\"icon\":");
    if guild.hash().is_multiple_of(5) {
        push(out, "null");
    } else {
        out.push(b'"');
        push_hex(
            out,
            u128::from(guild.hash()) << 64 | u128::from(!guild.hash()),
            32,
        );
        out.push(b'"');
    }
    push(
        out,
        ",\"hub_type\":null,\"home_header\":null,\"guild_scheduled_events\":[],\"features\":[",
    );
    let feature_count = 2 + (guild.hash() >> 7) as usize % 5;
    for (position, feature) in text::GUILD_FEATURES.iter().take(feature_count).enumerate() {
        if position > 0 {
            out.push(b',');
        }
        push_string(out, feature);
    }
    push(out, "],\"explicit_content_filter\":0");
    section(out, "emojis", |sections| &sections.emojis);
    push(
        out,
        ",\"embedded_activities\":[],\"discovery_splash\":null,\"description\":null,",
    );
    push(out, "\"default_message_notifications\":0");
    section(out, "channels", |sections| &sections.channels);
    push(
        out,
        ",\"banner\":null,\"application_id\":null,\"application_command_counts\":{},",
    );
    push(
        out,
        "\"afk_timeout\":300,\"afk_channel_id\":null,\"activity_instances\":[]}}",
    );
}

fn write_role(out: &mut Vec<u8>, guild: &Guild, role: u32) {
    let role_hash = mix64_pair(guild.hash() ^ 0x524f_4c45, u64::from(role));
    let bot_role = role + 1 == guild.role_count;
    let color = if role == 0 || role_hash.is_multiple_of(3) {
        0
    } else {
        role_hash >> 40
    };
    push(out, "{\"version\":");
    push_u64(out, guild.created_ms + u64::from(role) * 1000);
    push(out, ",\"unicode_emoji\":null,\"tags\":{");
    if bot_role {
        push(out, "\"bot_id\":");
        push_snowflake(out, BOT_USER_ID);
    }
    push(out, "},\"position\":");
    push_u64(out, u64::from(role));
    push(out, ",\"permissions\":\"");
    push(
        out,
        match role {
            0 => "2248473465835073",
            1 => "9007199254740991",
            _ => "6755692304264272",
        },
    );
    push(out, "\",\"name\":");
    if bot_role {
        push_string(out, BOT_USERNAME);
    } else {
        push_string(
            out,
            text::ROLE_NAMES[role as usize % text::ROLE_NAMES.len()],
        );
    }
    push(out, ",\"mentionable\":false,\"managed\":");
    push(out, if bot_role { "true" } else { "false" });
    push(out, ",\"icon\":null,\"id\":");
    push_snowflake(out, guild.child_id(ChildKind::Role, role));
    push(out, ",\"hoist\":");
    push(
        out,
        if role_hash.is_multiple_of(4) {
            "true"
        } else {
            "false"
        },
    );
    push(
        out,
        ",\"flags\":0,\"colors\":{\"tertiary_color\":null,\"secondary_color\":null,\"primary_color\":",
    );
    push_u64(out, color);
    push(out, "},\"color\":");
    push_u64(out, color);
    out.push(b'}');
}

fn write_category(out: &mut Vec<u8>, guild: &Guild, category: u32) {
    push(out, "{\"version\":");
    push_u64(out, guild.created_ms + 2000);
    push(out, ",\"type\":4,\"position\":");
    push_u64(out, u64::from(category));
    push(out, ",\"permission_overwrites\":[],\"name\":");
    push_string(
        out,
        text::CATEGORY_NAMES[category as usize % text::CATEGORY_NAMES.len()],
    );
    push(out, ",\"id\":");
    push_snowflake(out, guild.child_id(ChildKind::Category, category));
    push(out, ",\"flags\":0}");
}

fn write_voice_channel(out: &mut Vec<u8>, guild: &Guild, channel: u32) {
    push(out, "{\"version\":");
    push_u64(out, guild.created_ms + 3000);
    push(
        out,
        ",\"user_limit\":0,\"type\":2,\"status\":null,\"rtc_region\":null,",
    );
    push(out, "\"rate_limit_per_user\":0,\"position\":");
    push_u64(out, u64::from(channel));
    push(out, ",\"permission_overwrites\":[],\"parent_id\":");
    push_snowflake(
        out,
        guild.child_id(ChildKind::Category, (channel + 1) % guild.category_count),
    );
    push(out, ",\"nsfw\":false,\"name\":");
    let names = text::VOICE_CHANNEL_NAMES;
    push_string(out, names[channel as usize % names.len()]);
    push(out, ",\"last_message_id\":null,\"id\":");
    push_snowflake(out, guild.child_id(ChildKind::VoiceChannel, channel));
    push(out, ",\"flags\":0,\"bitrate\":64000}");
}

fn write_emoji(out: &mut Vec<u8>, guild: &Guild, emoji: u32) {
    const NAMES: &[&str] = &[
        "kekw",
        "pepega",
        "catjam",
        "sadge",
        "pog",
        "monkaS",
        "blobheart",
    ];
    push(out, "{\"version\":");
    push_u64(out, guild.created_ms + 5000);
    push(out, ",\"roles\":[],\"require_colons\":true,\"name\":\"");
    push(out, NAMES[emoji as usize % NAMES.len()]);
    if emoji as usize >= NAMES.len() {
        push_u64(out, u64::from(emoji));
    }
    push(out, "\",\"managed\":false,\"id\":");
    push_snowflake(out, guild.child_id(ChildKind::Emoji, emoji));
    push(out, ",\"available\":true,\"animated\":false}");
}

fn write_sticker(out: &mut Vec<u8>, guild: &Guild) {
    push(out, "{\"version\":");
    push_u64(out, guild.created_ms + 7000);
    push(
        out,
        ",\"type\":2,\"tags\":\"coffee\",\"name\":\"Morning ☕\",\"id\":",
    );
    push_snowflake(out, guild.child_id(ChildKind::Sticker, 0));
    push(out, ",\"guild_id\":");
    push_snowflake(out, guild.id);
    push(
        out,
        ",\"format_type\":1,\"description\":\"when the \\\"standup\\\" starts\",",
    );
    push(out, "\"available\":true,\"asset\":\"\"}");
}

fn write_thread(out: &mut Vec<u8>, guild: &Guild) {
    let created_us = guild.member_joined_us(0) + 3_600_000_000;
    push(
        out,
        "{\"type\":11,\"total_message_sent\":3,\"thread_metadata\":{\"locked\":false,",
    );
    push(out, "\"invitable\":true,\"create_timestamp\":");
    push_timestamp_us(out, created_us);
    push(
        out,
        ",\"auto_archive_duration\":4320,\"archived\":false,\"archive_timestamp\":",
    );
    push_timestamp_us(out, created_us);
    push(out, "},\"rate_limit_per_user\":0,\"parent_id\":");
    push_snowflake(out, guild.text_channel_id(0));
    push(out, ",\"owner_id\":");
    push_snowflake(out, guild.member_user_id(0));
    push(
        out,
        ",\"name\":\"bug: op 9 loop after resume\",\"message_count\":2,\"member_count\":2,",
    );
    push(out, "\"last_message_id\":");
    push_snowflake(out, guild.child_id(ChildKind::Thread, 1));
    push(out, ",\"id\":");
    push_snowflake(out, guild.child_id(ChildKind::Thread, 0));
    push(out, ",\"guild_id\":");
    push_snowflake(out, guild.id);
    push(out, ",\"flags\":0}");
}

fn write_voice_state(out: &mut Vec<u8>, guild: &Guild, member: u32) {
    let state_hash = mix64_pair(guild.hash() ^ 0x564f_4943, u64::from(member));
    push(out, "{\"user_id\":");
    push_snowflake(out, guild.member_user_id(member));
    push(out, ",\"suppress\":false,\"session_id\":\"");
    push_hex(
        out,
        u128::from(state_hash) << 64 | u128::from(!state_hash),
        32,
    );
    push(out, "\",\"self_video\":false,\"self_mute\":");
    push(
        out,
        if state_hash.is_multiple_of(3) {
            "true"
        } else {
            "false"
        },
    );
    push(
        out,
        ",\"self_deaf\":false,\"request_to_speak_timestamp\":null,\"mute\":false,",
    );
    push(out, "\"discoverable\":true,\"deaf\":false,\"channel_id\":");
    push_snowflake(out, guild.child_id(ChildKind::VoiceChannel, 0));
    out.push(b'}');
}

pub(super) fn write_guild_delete(guild_id: u64, unavailable: bool, seq: u64, out: &mut Vec<u8>) {
    begin_dispatch(out, "GUILD_DELETE", seq);
    push(
        out,
        if unavailable {
            "{\"unavailable\":true,\"id\":"
        } else {
            "{\"id\":"
        },
    );
    push_snowflake(out, guild_id);
    push(out, "}}");
}

pub(super) fn write_guild_members_chunk(
    guild_id: u64,
    nonce: Option<&str>,
    seq: u64,
    out: &mut Vec<u8>,
) {
    let guild = Guild::new(guild_id);
    begin_dispatch(out, "GUILD_MEMBERS_CHUNK", seq);
    out.push(b'{');
    if let Some(nonce) = nonce {
        push(out, "\"nonce\":");
        push_string(out, nonce);
        out.push(b',');
    }
    push(out, "\"members\":[");
    guild.write_member(out, BOT_MEMBER, MemberShape::WithUser);
    for member in 0..guild.member_pool_size {
        out.push(b',');
        guild.write_member(out, member, MemberShape::WithUser);
    }
    push(out, "],\"guild_id\":");
    push_snowflake(out, guild_id);
    push(out, ",\"chunk_index\":0,\"chunk_count\":1}}");
}

pub(super) fn write_rate_limited(
    opcode: u8,
    retry_after_secs: f64,
    guild_id: u64,
    nonce: Option<&str>,
    seq: u64,
    out: &mut Vec<u8>,
) {
    assert!(
        retry_after_secs.is_finite() && retry_after_secs >= 0.0,
        "retry_after must be a finite, non-negative number of seconds"
    );
    begin_dispatch(out, "RATE_LIMITED", seq);
    push(out, "{\"retry_after\":");
    // Display of a finite f64 is plain decimal (never exponent notation): valid JSON.
    write!(out, "{retry_after_secs}").expect("writing to a Vec cannot fail");
    push(out, ",\"opcode\":");
    push_u64(out, u64::from(opcode));
    push(out, ",\"meta\":{\"nonce\":");
    push_optional_string(out, nonce);
    push(out, ",\"guild_id\":");
    push_snowflake(out, guild_id);
    push(out, "}}}");
}
