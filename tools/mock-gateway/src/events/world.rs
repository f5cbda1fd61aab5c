//! Stage: test world, event generator, the simulated population. Users, guilds, channels, roles and
//! members as pure functions of their ids, so that every session, shard count and GUILD_CREATE
//! that mentions a guild agrees on its channels and members.
//!
//! Must not: use a session's random stream (world facts must not depend on call order), or build
//! anything per event: user objects are rendered once per process into `user_pool()`.

use std::sync::OnceLock;

use super::DISCORD_EPOCH_MS;
use super::json::{
    push, push_hex, push_optional_string, push_snowflake, push_string, push_timestamp_us, push_u64,
};
use super::text;
use crate::rng::{Rng, derive_seed, mix64, mix64_pair};

/// Users every session draws authors from: 1024 rendered user objects (about 1.1 MiB per process,
/// built on first use). Guild `g`'s member `k` is pool user `(base_g + k * stride_g) % 1024`, a
/// bijection, so a guild's first 1024 members are distinct users.
pub(super) const USER_POOL_SIZE: usize = 1024;

/// The bot the mock gateway serves: READY's `user` and `application`, every guild's first member.
pub(super) const BOT_USER_ID: u64 = snowflake(1_707_417_291_331, 1, 0, 42);
/// The bot's username, wherever its user object appears (READY, members, REST `/users/@me`) and
/// as the name of its application and of its managed role.
pub(super) const BOT_USERNAME: &str = "shardgate-mock";
/// Bots kept their four-digit discriminators when users moved to unique usernames (whose
/// discriminator is `"0"`).
pub(super) const BOT_DISCRIMINATOR: &str = "7281";
/// READY `application.flags` and the REST application's `flags`: GATEWAY_PRESENCE_LIMITED (1<<13),
/// GATEWAY_GUILD_MEMBERS_LIMITED (1<<15), GATEWAY_MESSAGE_CONTENT_LIMITED (1<<19), 1<<21
/// (undocumented) and APPLICATION_COMMAND_BADGE (1<<23), as a captured READY had them.
pub(super) const APPLICATION_FLAGS: u64 = 11_051_008;
/// The user who owns the bot's application (not on a team), as REST's application `owner`.
pub(super) const APPLICATION_OWNER_ID: u64 = snowflake(1_600_000_000_000, 0, 1, 7);

/// 2015-05-13, when Discord opened: the earliest user.
const FIRST_USER_MS: u64 = 1_431_475_200_000;
/// 2026-01-01: the latest user, guild or member join of the simulated world.
pub(super) const WORLD_END_MS: u64 = 1_767_225_600_000;
/// The population is fixed: the same users in every run (guild ids, hence memberships, vary).
const USER_WORLD_SEED: u64 = 0x5553_4552_5f57_4f52;

/// A snowflake: milliseconds since the Discord epoch, worker, process, increment.
pub(super) const fn snowflake(unix_ms: u64, worker: u64, process: u64, increment: u64) -> u64 {
    ((unix_ms - DISCORD_EPOCH_MS) << 22)
        | ((worker & 31) << 17)
        | ((process & 31) << 12)
        | (increment & 4095)
}

/// Unix milliseconds of a snowflake.
pub(super) const fn snowflake_unix_ms(id: u64) -> u64 {
    (id >> 22) + DISCORD_EPOCH_MS
}

/// One rendered user.
#[derive(Debug)]
pub(super) struct User {
    pub id: u64,
    pub bot: bool,
    /// As in a message's `author` or a mention: no `bot` unless true, no `display_name`.
    pub author_json: Box<[u8]>,
    /// As in `member.user` of reactions, typing, GUILD_CREATE: with `bot` and `display_name`.
    pub member_user_json: Box<[u8]>,
}

/// The fixed user population, rendered on first use.
pub(super) fn user_pool() -> &'static [User] {
    static POOL: OnceLock<Vec<User>> = OnceLock::new();
    POOL.get_or_init(|| {
        (0..USER_POOL_SIZE as u64)
            .map(|index| {
                let mut rng = Rng::new(derive_seed(USER_WORLD_SEED, &[index]));
                let created_ms = rng.range(FIRST_USER_MS, WORLD_END_MS);
                let id = snowflake(created_ms, rng.below(32), rng.below(31), index);
                let spec = UserSpec::generate(&mut rng, id);
                let mut author_json = Vec::with_capacity(768);
                spec.write(&mut author_json, false);
                let mut member_user_json = Vec::with_capacity(800);
                spec.write(&mut member_user_json, true);
                User {
                    id,
                    bot: spec.bot,
                    author_json: author_json.into_boxed_slice(),
                    member_user_json: member_user_json.into_boxed_slice(),
                }
            })
            .collect()
    })
}

/// Writes the user object of member `member_index` >= `USER_POOL_SIZE` of a guild (only huge
/// GUILD_CREATEs list that many members); rendered on the spot.
pub(super) fn write_extra_member_user(out: &mut Vec<u8>, guild_id: u64, member_index: u32) {
    let mut rng = Rng::new(mix64_pair(guild_id, u64::from(member_index)));
    let id = extra_member_user_id(guild_id, member_index);
    UserSpec::generate(&mut rng, id).write(out, true);
}

fn extra_member_user_id(guild_id: u64, member_index: u32) -> u64 {
    let hash = mix64_pair(guild_id, u64::from(member_index));
    let created_ms = FIRST_USER_MS + hash % (WORLD_END_MS - FIRST_USER_MS);
    // Process 31 is reserved for these, so they never equal a pool user.
    snowflake(created_ms, hash >> 59, 31, u64::from(member_index))
}

/// The facts of one guild, derived from its id alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Guild {
    pub id: u64,
    hash: u64,
    pub created_ms: u64,
    pub text_channel_count: u32,
    pub voice_channel_count: u32,
    pub category_count: u32,
    /// Roles including @everyone (whose id is the guild id) and the bot's managed role (last).
    pub role_count: u32,
    /// Members that chat; messages, typing, reactions and presences come from these.
    pub member_pool_size: u32,
    /// The `member_count` the guild claims (at least the members a GUILD_CREATE lists).
    pub member_count: u32,
    user_base: u32,
    user_stride: u32,
}

/// What kind of child object an id names, so that ids of different kinds never collide.
#[derive(Clone, Copy, Debug)]
#[repr(u64)]
pub(super) enum ChildKind {
    Category = 1,
    TextChannel = 2,
    VoiceChannel = 3,
    Role = 4,
    Emoji = 5,
    Thread = 6,
    Sticker = 7,
    Command = 8,
}

/// The shape of a member object, which differs between events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum MemberShape {
    /// MESSAGE_CREATE/UPDATE `member`, mentions' `member`: no `user`.
    WithoutUser,
    /// Reactions, TYPING_START, GUILD_CREATE members, GUILD_MEMBERS_CHUNK.
    WithUser,
    /// INTERACTION_CREATE: with `user` and `permissions`.
    Interaction,
    /// GUILD_MEMBER_UPDATE: with `user` and `guild_id`, no `mute`/`deaf`.
    Update,
    /// An interaction's `data.resolved.members`: no `user`, `mute` or `deaf`, with
    /// `permissions` (Discord's partial member in resolved data).
    Resolved,
}

impl Guild {
    pub fn new(id: u64) -> Guild {
        let hash = mix64(id ^ 0x47_5549_4c44);
        let member_pool_size = 8 + (hash >> 20) as u32 % 89;
        let crowd = (hash >> 30) as u32 % 40;
        Guild {
            id,
            hash,
            created_ms: snowflake_unix_ms(id),
            text_channel_count: 2 + (hash % 4) as u32,
            voice_channel_count: 1 + (hash >> 8) as u32 % 2,
            category_count: 1 + (hash >> 12) as u32 % 2,
            role_count: 2 + (hash >> 16) as u32 % 5,
            member_pool_size,
            member_count: member_pool_size + crowd * crowd * crowd,
            user_base: (hash >> 40) as u32 % USER_POOL_SIZE as u32,
            user_stride: ((hash >> 50) as u32 % USER_POOL_SIZE as u32) | 1,
        }
    }

    /// A stable per-guild hash for picking names and flags.
    pub fn hash(&self) -> u64 {
        self.hash
    }

    pub fn name(&self) -> &'static str {
        text::GUILD_NAMES[(self.hash >> 3) as usize % text::GUILD_NAMES.len()]
    }

    pub fn locale(&self) -> &'static str {
        text::LOCALES[(self.hash >> 5) as usize % 3]
    }

    /// The id of child `index` of `kind`, created after the guild.
    pub fn child_id(&self, kind: ChildKind, index: u32) -> u64 {
        if matches!(kind, ChildKind::Role) && index == 0 {
            return self.id; // @everyone
        }
        let created_ms = (self.created_ms + 1000 * (u64::from(index) + 1)).min(WORLD_END_MS);
        snowflake(created_ms, self.hash >> 59, kind as u64, u64::from(index))
    }

    pub fn text_channel_id(&self, index: u32) -> u64 {
        self.child_id(ChildKind::TextChannel, index)
    }

    /// Pool index of member `member_index` (< `USER_POOL_SIZE`).
    pub fn member_user_index(&self, member_index: u32) -> u32 {
        debug_assert!((member_index as usize) < USER_POOL_SIZE);
        self.user_base
            .wrapping_add(member_index.wrapping_mul(self.user_stride))
            % USER_POOL_SIZE as u32
    }

    pub fn member_user(&self, member_index: u32) -> &'static User {
        &user_pool()[self.member_user_index(member_index) as usize]
    }

    pub fn member_user_id(&self, member_index: u32) -> u64 {
        if (member_index as usize) < USER_POOL_SIZE {
            self.member_user(member_index).id
        } else {
            extra_member_user_id(self.id, member_index)
        }
    }

    fn member_hash(&self, member_index: u32) -> u64 {
        mix64_pair(self.hash, u64::from(member_index))
    }

    /// Unix microseconds the member joined (between the guild's creation and `WORLD_END_MS`).
    pub fn member_joined_us(&self, member_index: u32) -> u64 {
        let span_ms = WORLD_END_MS.saturating_sub(self.created_ms).max(1);
        (self.created_ms + self.member_hash(member_index) % span_ms) * 1000
            + (self.member_hash(member_index) >> 44) % 1000
    }

    /// Writes a member object `{…}` of member `member_index` (`u32::MAX` = the bot).
    pub fn write_member(&self, out: &mut Vec<u8>, member_index: u32, shape: MemberShape) {
        let member_hash = self.member_hash(member_index);
        out.push(b'{');
        if shape != MemberShape::WithoutUser && shape != MemberShape::Resolved {
            push(out, "\"user\":");
            if member_index == BOT_MEMBER {
                write_bot_user(out, true);
            } else if (member_index as usize) < USER_POOL_SIZE {
                let user = self.member_user(member_index);
                out.extend_from_slice(if shape == MemberShape::WithUser {
                    &user.member_user_json
                } else {
                    &user.author_json
                });
            } else {
                write_extra_member_user(out, self.id, member_index);
            }
            out.push(b',');
        }
        if shape == MemberShape::Update || shape == MemberShape::Interaction {
            push(out, "\"unusual_dm_activity_until\":null,");
        }
        push(out, "\"roles\":[");
        let role_mask = if member_index == BOT_MEMBER {
            1u64 << (self.role_count - 1)
        } else {
            member_hash & (member_hash >> 9)
        };
        let mut first = true;
        // Role 0 is @everyone (implicit), the last is the bot's managed role.
        let last_role = if member_index == BOT_MEMBER {
            self.role_count
        } else {
            self.role_count - 1
        };
        for role_index in 1..last_role {
            if role_mask & (1 << role_index) != 0 {
                if !first {
                    out.push(b',');
                }
                first = false;
                push_snowflake(out, self.child_id(ChildKind::Role, role_index));
            }
        }
        push(out, "],\"premium_since\":");
        if member_hash.is_multiple_of(19) {
            push_timestamp_us(out, self.member_joined_us(member_index) + 86_400_000_000);
        } else {
            push(out, "null");
        }
        if shape == MemberShape::Interaction || shape == MemberShape::Resolved {
            push(out, ",\"permissions\":\"");
            push(
                out,
                if member_hash.is_multiple_of(7) {
                    "9007199254740991"
                } else {
                    "2248473465835073"
                },
            );
            out.push(b'"');
        }
        push(out, ",\"pending\":false,\"nick\":");
        let nick = (member_hash >> 32).is_multiple_of(5) && member_index != BOT_MEMBER;
        push_optional_string(
            out,
            nick.then(|| text::NICKNAMES[(member_hash >> 40) as usize % text::NICKNAMES.len()]),
        );
        if shape != MemberShape::Update && shape != MemberShape::Resolved {
            push(out, ",\"mute\":false");
        }
        push(out, ",\"joined_at\":");
        push_timestamp_us(out, self.member_joined_us(member_index));
        if shape == MemberShape::Update {
            push(out, ",\"guild_id\":");
            push_snowflake(out, self.id);
        }
        push(out, ",\"flags\":");
        push_u64(out, if member_hash.is_multiple_of(11) { 2 } else { 0 });
        if shape == MemberShape::Update || shape == MemberShape::Interaction {
            push(out, ",\"display_name_styles\":null");
        }
        if shape != MemberShape::Update && shape != MemberShape::Resolved {
            push(out, ",\"deaf\":false");
        }
        push(out, ",\"communication_disabled_until\":null");
        if shape == MemberShape::Update || shape == MemberShape::Interaction {
            push(out, ",\"collectibles\":null");
        }
        push(out, ",\"banner\":null,\"avatar\":null}");
    }
}

impl Guild {
    /// Writes text channel `index` as a channel object. `permissions` (the invoker's computed
    /// permissions) is present in interactions only.
    pub fn write_text_channel(&self, out: &mut Vec<u8>, index: u32, permissions: Option<&str>) {
        let channel_hash = mix64_pair(self.hash ^ 0x4348_414e, u64::from(index));
        push(out, "{\"type\":0,\"topic\":");
        push_optional_string(
            out,
            (channel_hash.is_multiple_of(3))
                .then_some("Be nice. No spoilers outside #spoilers \u{1f6ab}"),
        );
        push(out, ",\"theme_color\":null,\"rate_limit_per_user\":");
        push_u64(out, if channel_hash.is_multiple_of(5) { 5 } else { 0 });
        push(out, ",\"position\":");
        push_u64(out, u64::from(index));
        if let Some(permissions) = permissions {
            push(out, ",\"permissions\":\"");
            push(out, permissions);
            out.push(b'"');
        }
        push(out, ",\"permission_overwrites\":[");
        if channel_hash.is_multiple_of(4) {
            push(out, "{\"type\":0,\"id\":");
            push_snowflake(out, self.id);
            push(out, ",\"deny\":\"2048\",\"allow\":\"0\"}");
        }
        push(out, "],\"parent_id\":");
        push_snowflake(
            out,
            self.child_id(ChildKind::Category, index % self.category_count),
        );
        push(out, ",\"nsfw\":false,\"name\":");
        let names = text::TEXT_CHANNEL_NAMES;
        if (index as usize) < names.len() {
            push_string(out, names[index as usize]);
        } else {
            out.push(b'"');
            push(out, names[index as usize % names.len()]);
            out.push(b'-');
            push_u64(out, u64::from(index));
            out.push(b'"');
        }
        push(out, ",\"last_pin_timestamp\":");
        if channel_hash.is_multiple_of(2) {
            push_timestamp_us(
                out,
                (self.created_ms + (channel_hash >> 20) % 86_400_000) * 1000,
            );
        } else {
            push(out, "null");
        }
        push(out, ",\"last_message_id\":");
        push_snowflake(
            out,
            snowflake(
                WORLD_END_MS - (channel_hash >> 30) % 86_400_000,
                0,
                0,
                index.into(),
            ),
        );
        push(out, ",\"id\":");
        push_snowflake(out, self.text_channel_id(index));
        push(
            out,
            ",\"icon_emoji\":{\"name\":\"💬\",\"id\":null},\"guild_id\":",
        );
        push_snowflake(out, self.id);
        push(out, ",\"flags\":0}");
    }
}

/// The DM channel between the bot and `user_id`.
pub(super) fn dm_channel_id(user_id: u64) -> u64 {
    let opened_ms = (snowflake_unix_ms(user_id) + 86_400_000).min(WORLD_END_MS);
    snowflake(opened_ms, user_id >> 59, 9, user_id & 4095)
}

/// The member index that stands for the bot itself in `Guild::write_member`.
pub(super) const BOT_MEMBER: u32 = u32::MAX;

/// Writes the bot's user object (READY `user` is written separately).
pub(super) fn write_bot_user(out: &mut Vec<u8>, member_variant: bool) {
    push(out, "{\"username\":");
    push_string(out, BOT_USERNAME);
    push(out, ",\"public_flags\":0,\"primary_guild\":null,\"id\":");
    push_snowflake(out, BOT_USER_ID);
    push(out, ",\"global_name\":null,\"display_name_styles\":null");
    if member_variant {
        push(out, ",\"display_name\":null");
    }
    push(out, ",\"discriminator\":");
    push_string(out, BOT_DISCRIMINATOR);
    push(out, ",\"collectibles\":null,\"clan\":null,\"bot\":true");
    push(out, ",\"avatar_decoration_data\":null,\"avatar\":null}");
}

/// The random facts of one user, rendered into its two JSON variants.
struct UserSpec {
    id: u64,
    bot: bool,
    username: String,
    global_name: Option<&'static str>,
    avatar: Option<(bool, u128)>,
    public_flags: u64,
    discriminator: u64,
    /// Server tag shown next to the name: (tag, identity guild id, badge hash).
    primary_guild: Option<(&'static str, u64, u128)>,
    /// Avatar decoration: (asset hash, SKU id).
    decoration: Option<(u128, u64)>,
    /// Nameplate collectible: (SKU id, palette, asset).
    nameplate: Option<(u64, &'static str, &'static str)>,
    /// Display name style: (font id, effect id, colour).
    name_style: Option<(u64, u64, u64)>,
}

impl UserSpec {
    fn generate(rng: &mut Rng, id: u64) -> UserSpec {
        let bot = rng.chance(0.04);
        let mut username = String::with_capacity(32);
        if bot {
            username.push_str(rng.pick(text::BOT_NAMES));
        } else {
            username.push_str(rng.pick(text::USERNAME_PARTS));
            if rng.chance(0.5) {
                username.push(if rng.chance(0.5) { '_' } else { '.' });
                username.push_str(rng.pick(text::USERNAME_PARTS));
            }
            if rng.chance(0.4) {
                username.push_str(itoa::Buffer::new().format(rng.below(10_000)));
            }
        }
        let hash = |rng: &mut Rng| (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
        let avatar = rng.chance(0.88).then(|| (rng.chance(0.1), hash(rng)));
        let human = !bot;
        UserSpec {
            id,
            bot,
            global_name: (human && rng.chance(0.85)).then(|| rng.pick(text::DISPLAY_NAMES)),
            avatar,
            public_flags: if rng.chance(0.8) {
                0
            } else {
                rng.pick(&[64, 128, 256, 4_194_304])
            },
            discriminator: if bot { rng.range(1000, 9999) } else { 0 },
            primary_guild: (human && rng.chance(0.3))
                .then(|| (rng.pick(text::GUILD_TAGS), rng.next_u64() >> 4, hash(rng))),
            decoration: (human && rng.chance(0.2)).then(|| (hash(rng), rng.next_u64() >> 4)),
            nameplate: (human && rng.chance(0.12)).then(|| {
                (
                    rng.next_u64() >> 4,
                    rng.pick(text::NAMEPLATE_PALETTES),
                    rng.pick(text::NAMEPLATE_ASSETS),
                )
            }),
            name_style: (human && rng.chance(0.08))
                .then(|| (rng.range(1, 12), rng.range(1, 6), rng.below(0x100_0000))),
            username,
        }
    }

    /// Keys in reverse alphabetical order, as Discord's gateway writes maps.
    fn write(&self, out: &mut Vec<u8>, member_variant: bool) {
        push(out, "{\"username\":");
        push_string(out, &self.username);
        push(out, ",\"public_flags\":");
        push_u64(out, self.public_flags);
        push(out, ",\"primary_guild\":");
        self.write_guild_tag(out);
        push(out, ",\"id\":");
        push_snowflake(out, self.id);
        push(out, ",\"global_name\":");
        push_optional_string(out, self.global_name);
        push(out, ",\"display_name_styles\":");
        match self.name_style {
            Some((font_id, effect_id, color)) => {
                push(out, "{\"font_id\":");
                push_u64(out, font_id);
                push(out, ",\"effect_id\":");
                push_u64(out, effect_id);
                push(out, ",\"colors\":[");
                push_u64(out, color);
                push(out, "]}");
            }
            None => push(out, "null"),
        }
        if member_variant {
            push(out, ",\"display_name\":");
            push_optional_string(out, self.global_name);
        }
        push(out, ",\"discriminator\":\"");
        push_u64(out, self.discriminator);
        push(out, "\",\"collectibles\":");
        match self.nameplate {
            Some((sku_id, palette, asset)) => {
                push(out, "{\"nameplate\":{\"sku_id\":");
                push_snowflake(out, sku_id);
                push(out, ",\"palette\":");
                push_string(out, palette);
                push(out, ",\"label\":\"\",\"expires_at\":null,\"asset\":");
                push_string(out, asset);
                push(out, "}}");
            }
            None => push(out, "null"),
        }
        push(out, ",\"clan\":");
        self.write_guild_tag(out);
        if self.bot || member_variant {
            push(
                out,
                if self.bot {
                    ",\"bot\":true"
                } else {
                    ",\"bot\":false"
                },
            );
        }
        push(out, ",\"avatar_decoration_data\":");
        match self.decoration {
            Some((asset, sku_id)) => {
                push(out, "{\"sku_id\":");
                push_snowflake(out, sku_id);
                push(out, ",\"expires_at\":null,\"asset\":\"a_");
                push_hex(out, asset, 32);
                push(out, "\"}");
            }
            None => push(out, "null"),
        }
        push(out, ",\"avatar\":");
        match self.avatar {
            Some((animated, avatar_hash)) => {
                out.push(b'"');
                if animated {
                    push(out, "a_");
                }
                push_hex(out, avatar_hash, 32);
                out.push(b'"');
            }
            None => push(out, "null"),
        }
        out.push(b'}');
    }

    fn write_guild_tag(&self, out: &mut Vec<u8>) {
        match self.primary_guild {
            Some((tag, identity_guild_id, badge)) => {
                push(out, "{\"tag\":");
                push_string(out, tag);
                push(out, ",\"identity_guild_id\":");
                push_snowflake(out, identity_guild_id);
                push(out, ",\"identity_enabled\":true,\"badge\":\"");
                push_hex(out, badge, 32);
                push(out, "\"}");
            }
            None => push(out, "null"),
        }
    }
}
