//! Stage: test world, event generator, vocabulary. The word lists the generator draws names, chat
//! lines and activities from, and the chat-line composer.
//!
//! Must not: allocate on the hot path (the composer appends to a reused `String`). The lists
//! deliberately contain what real chat contains and what breaks naive writers: quotes, backslashes,
//! emoji, non-Latin scripts and newlines.

use crate::rng::Rng;

/// What a chat line must contain besides words.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct ChatLinePlan {
    /// A URL that the line contains (and that a later MESSAGE_UPDATE may unfurl).
    pub link: Option<&'static str>,
    /// A user to mention as `<@id>`.
    pub mention_user_id: Option<u64>,
    /// A custom emoji id for `<:name:id>` tokens.
    pub custom_emoji_id: u64,
}

/// Appends one realistic chat line to `raw` (unescaped text): mostly a few words, sometimes a
/// paragraph or a code block, with emoji, quotes, backslashes, non-Latin words and line breaks.
pub(super) fn compose_chat_line(rng: &mut Rng, plan: &ChatLinePlan, raw: &mut String) {
    if let Some(user_id) = plan.mention_user_id {
        raw.push_str("<@");
        raw.push_str(itoa::Buffer::new().format(user_id));
        raw.push_str("> ");
    }
    let length_class = rng.below(100);
    if length_class >= 98 {
        compose_code_block(rng, raw);
    } else {
        let word_count = match length_class {
            0..=44 => rng.range(1, 4),
            45..=84 => rng.range(5, 14),
            _ => rng.range(15, 40),
        };
        for index in 0..word_count {
            if index > 0 && !raw.ends_with('\n') {
                raw.push(' ');
            }
            push_chat_token(rng, plan, raw);
        }
    }
    if let Some(link) = plan.link {
        if !raw.is_empty() && !raw.ends_with('\n') {
            raw.push(' ');
        }
        raw.push_str(link);
    }
}

/// Appends one short word, for edits that add to a line.
pub(super) fn push_edit_suffix(rng: &mut Rng, raw: &mut String) {
    raw.push_str(rng.pick(EDIT_SUFFIXES));
}

fn push_chat_token(rng: &mut Rng, plan: &ChatLinePlan, raw: &mut String) {
    match rng.below(100) {
        0..=81 => raw.push_str(rng.pick(WORDS)),
        82..=87 => raw.push_str(rng.pick(EMOJI)),
        88..=89 => {
            raw.push_str("<:");
            raw.push_str(rng.pick(CUSTOM_EMOJI_NAMES));
            raw.push(':');
            raw.push_str(itoa::Buffer::new().format(plan.custom_emoji_id));
            raw.push('>');
        }
        90..=92 => {
            raw.push('"');
            raw.push_str(rng.pick(WORDS));
            raw.push(' ');
            raw.push_str(rng.pick(WORDS));
            raw.push('"');
        }
        93 => raw.push_str(r"¯\_(ツ)_/¯"),
        94..=95 => raw.push_str(rng.pick(NON_LATIN_WORDS)),
        96 => raw.push('\n'),
        _ => raw.push_str(rng.pick(PUNCTUATION)),
    }
}

fn compose_code_block(rng: &mut Rng, raw: &mut String) {
    raw.push_str("```rs\n");
    let line_count = rng.range(4, 14);
    for _ in 0..line_count {
        raw.push_str(rng.pick(CODE_LINES));
        raw.push('\n');
    }
    raw.push_str("```");
}

pub(super) const WORDS: &[&str] = &[
    "lol",
    "lmao",
    "yeah",
    "no",
    "ok",
    "wait",
    "what",
    "the",
    "a",
    "is",
    "it",
    "this",
    "that",
    "i",
    "you",
    "we",
    "they",
    "just",
    "really",
    "so",
    "very",
    "not",
    "can",
    "can't",
    "don't",
    "did",
    "anyone",
    "know",
    "how",
    "to",
    "fix",
    "bug",
    "game",
    "server",
    "bot",
    "update",
    "patch",
    "new",
    "old",
    "today",
    "tomorrow",
    "tonight",
    "later",
    "now",
    "gg",
    "wp",
    "nice",
    "cool",
    "cursed",
    "based",
    "fr",
    "ngl",
    "tbh",
    "imo",
    "idk",
    "brb",
    "afk",
    "pog",
    "ranked",
    "queue",
    "match",
    "won",
    "lost",
    "again",
    "again?",
    "why",
    "because",
    "maybe",
    "probably",
    "definitely",
    "and",
    "or",
    "but",
    "with",
    "without",
    "for",
    "from",
    "in",
    "on",
    "at",
    "my",
    "your",
    "their",
    "friend",
    "cat",
    "dog",
    "pizza",
    "coffee",
    "sleep",
    "work",
    "school",
    "exam",
    "homework",
    "stream",
    "video",
    "song",
    "album",
    "movie",
    "episode",
    "season",
    "finale",
    "spoilers",
    "rust",
    "python",
    "compile",
    "error",
    "works",
    "broken",
    "crash",
    "lag",
    "ping",
    "wifi",
    "discord",
    "channel",
    "role",
    "mods",
    "admin",
    "rules",
    "event",
    "giveaway",
    "winner",
    "screenshot",
    "link",
    "check",
    "look",
    "this!",
    "here",
    "there",
    "everyone",
    "someone",
    "thanks",
    "thx",
    "ty",
    "np",
    "welcome",
    "hello",
    "hi",
    "hey",
    "bye",
    "gn",
    "gm",
    "omg",
    "wtf",
    "bruh",
    "literally",
    "actually",
    "honestly",
    "sure",
    "agreed",
    "same",
    "mood",
];

const EMOJI: &[&str] = &[
    "😂", "👍", "🔥", "❤️", "🥺", "💀", "😭", "🙏", "✨", "🎉", "👀", "🤔", "😅", "🫠", "🗿",
];

const CUSTOM_EMOJI_NAMES: &[&str] = &["kekw", "pepega", "catjam", "sadge", "pog", "monkaS"];

const NON_LATIN_WORDS: &[&str] = &[
    "café",
    "naïve",
    "señor",
    "привет",
    "спасибо",
    "こんにちは",
    "ありがとう",
    "你好",
    "안녕",
    "مرحبا",
    "Grüße",
    "ça va",
];

const PUNCTUATION: &[&str] = &[
    "?", "!", "...", "??", "!!", ":)", ":(", ":D", "xD", "<3", "->",
];

const EDIT_SUFFIXES: &[&str] = &[
    " (edit: typo)",
    " *their",
    " nvm",
    " fixed",
    " 🙏",
    " edit: works now",
];

const CODE_LINES: &[&str] = &[
    "fn main() {",
    "    let guild_id: u64 = payload[\"d\"][\"guild_id\"].parse()?;",
    "    println!(\"shard {} of {}\", shard_id, total);",
    "    let path = r\"C:\\Users\\bot\\config.toml\";",
    "    if seq > last_seq { last_seq = seq; }",
    "\tmatch op { 0 => dispatch(), 11 => ack(), _ => {} }",
    "}",
    "// TODO: handle op 9 \"invalid session\"",
    "    return Err(\"unexpected \\\"op\\\"\".into());",
];

/// Links that chat lines contain, with what their unfurled embed shows.
#[derive(Clone, Copy, Debug)]
pub(super) struct Link {
    pub url: &'static str,
    pub embed_type: &'static str,
    pub provider: &'static str,
    pub title: &'static str,
    pub description: &'static str,
    pub thumbnail: &'static str,
    pub color: u32,
}

pub(super) const LINKS: &[Link] = &[
    Link {
        url: "https://www.youtube.com/watch?v=dQw4w9WgXcQ",
        embed_type: "video",
        provider: "YouTube",
        title: "Rick Astley - Never Gonna Give You Up (Official Video) (4K Remaster)",
        description: "The official video for “Never Gonna Give You Up” by Rick Astley. \
                      Never: The Autobiography 📚 OUT NOW!",
        thumbnail: "https://i.ytimg.com/vi/dQw4w9WgXcQ/maxresdefault.jpg",
        color: 16_711_680,
    },
    Link {
        url: "https://github.com/rust-lang/rust/issues/103765",
        embed_type: "article",
        provider: "GitHub",
        title: "Tracking issue for `#[diagnostic::on_unimplemented]` · Issue #103765",
        description: "This is a tracking issue for the \"diagnostic namespace\" RFC. \
                      The feature gate for the issue is #![feature(diagnostic_namespace)].",
        thumbnail: "https://opengraph.githubassets.com/5f1c0e3b2d9a/rust-lang/rust/issues/103765",
        color: 1_975_079,
    },
    Link {
        url: "https://en.wikipedia.org/wiki/Snowflake_ID",
        embed_type: "article",
        provider: "Wikipedia",
        title: "Snowflake ID",
        description: "Snowflake IDs, or snowflakes, are a form of unique identifier used in \
                      distributed computing. The format was created by Twitter.",
        thumbnail: "https://upload.wikimedia.org/wikipedia/commons/thumb/1/1f/Snowflake_ID.svg/1200px-Snowflake_ID.svg.png",
        color: 16_777_215,
    },
    Link {
        url: "https://store.steampowered.com/app/730/CounterStrike_2/",
        embed_type: "link",
        provider: "Steam",
        title: "Counter-Strike 2 on Steam",
        description: "For over two decades, Counter-Strike has offered an elite competitive \
                      experience, one shaped by millions of players from across the globe.",
        thumbnail: "https://shared.akamai.steamstatic.com/store_item_assets/steam/apps/730/header.jpg",
        color: 1_259_571,
    },
    Link {
        url: "https://open.spotify.com/track/4cOdK2wGLETKBW3PvgPWqT?si=9c1b2d3e4f5a6b7c",
        embed_type: "link",
        provider: "Spotify",
        title: "Never Gonna Give You Up",
        description: "Rick Astley · Whenever You Need Somebody · Song · 1987",
        thumbnail: "https://i.scdn.co/image/ab67616d0000b27315ebbedaacef61af244262a8",
        color: 1_947_988,
    },
    Link {
        url: "https://tenor.com/view/cat-vibing-cat-jam-gif-18532813",
        embed_type: "gifv",
        provider: "Tenor",
        title: "Cat Vibing GIF",
        description: "Click to view the GIF",
        thumbnail: "https://media.tenor.com/2roX3uxz_68AAAAe/cat-vibing.png",
        color: 0,
    },
    Link {
        url: "https://www.reddit.com/r/rust/comments/1b2c3d4/announcing_rust_1950/",
        embed_type: "link",
        provider: "reddit",
        title: "r/rust on Reddit: Announcing Rust 1.95.0",
        description: "Posted by u/ehuss - 1,204 votes and 187 comments",
        thumbnail: "https://external-preview.redd.it/announcing-rust-1-95-0-v0-abc123.png?auto=webp&s=0f1e2d3c",
        color: 16_729_344,
    },
];

pub(super) const USERNAME_PARTS: &[&str] = &[
    "shadow", "pixel", "nova", "luna", "kaiju", "void", "dragon", "mochi", "neon", "frost", "tofu",
    "rusty", "cosmic", "sleepy", "crab", "toast", "echo", "blaze", "ghost", "ember", "maple",
    "static", "orbit", "velvet", "quartz", "noodle", "atlas", "pepper",
];

pub(super) const DISPLAY_NAMES: &[&str] = &[
    "Void Dragon",
    "luna 🌙",
    "Mochi",
    "Sir Toast",
    "ダークネス",
    "Ñoño",
    "\"Mad\" Max",
    "Frost\\Byte",
    "x_X",
    "Kaiju (she/her)",
    "neon ✨",
    "Пётр",
    "김민지",
    "ember 🔥",
    "Quartz",
    "not a bot",
    "Atlas | AFK",
    "sleepy crab 🦀",
];

pub(super) const NICKNAMES: &[&str] = &[
    "mod on duty",
    "🍕 pizza enjoyer",
    "the \"real\" one",
    "Captain",
    "nick_1",
    "Глеб",
    "backslash \\ fan",
    "🌸",
    "AFK until friday",
    "raid leader",
];

pub(super) const BOT_NAMES: &[&str] = &[
    "MEE6",
    "Carl-bot",
    "Dyno",
    "Mudae",
    "Jockie Music",
    "Ticket Tool",
];

pub(super) const GUILD_TAGS: &[&str] = &["RUST", "CAT", "GG", "ONI", "PXL", "ᓚᘏᗢ", "LUNA", "404"];

pub(super) const NAMEPLATE_PALETTES: &[&str] =
    &["crimson", "cobalt", "forest", "sunrise", "bubble_gum"];

pub(super) const NAMEPLATE_ASSETS: &[&str] = &[
    "nameplates/nameplates_v3/spirit_moon/",
    "nameplates/nameplates/twilight/",
    "nameplates/nameplates_v2/koi_pond/",
    "nameplates/nameplates_v3/pixel_hearts/",
];

pub(super) const GUILD_NAMES: &[&str] = &[
    "The Coffee House ☕",
    "Rust Community",
    "r/gaming hub",
    "Pixel Art Café",
    "Lo-fi Lounge",
    "Study Together",
    "Minecraft Survival SMP",
    "Anime \"Discussion\" Club",
    "Dev\\Null",
    "日本語 Learners",
    "Валорант RU",
    "Cozy Gamers 🌿",
    "Homelab & Self-hosting",
    "Speedrun Central",
];

pub(super) const TEXT_CHANNEL_NAMES: &[&str] = &[
    "general",
    "off-topic",
    "memes",
    "help",
    "announcements",
    "bot-commands",
    "media",
    "gaming",
    "music",
    "dev",
    "introductions",
    "art",
    "lfg",
    "suggestions",
    "showcase",
    "📌-rules",
];

pub(super) const VOICE_CHANNEL_NAMES: &[&str] =
    &["General", "Gaming", "Music 🎵", "AFK", "Lounge", "Stage"];

pub(super) const CATEGORY_NAMES: &[&str] = &[
    "TEXT CHANNELS",
    "VOICE CHANNELS",
    "INFO",
    "COMMUNITY",
    "ARCHIVE",
];

pub(super) const ROLE_NAMES: &[&str] = &[
    "@everyone",
    "Admin",
    "Moderator",
    "Member",
    "Verified",
    "Booster",
    "VIP",
    "Muted",
    "DJ",
    "Event Host",
    "Artist",
    "Developer",
    "he/him",
    "she/her",
    "they/them",
    "EU",
    "NA",
    "Bots",
];

pub(super) const GUILD_FEATURES: &[&str] = &[
    "AUTO_MODERATION",
    "BYPASS_SLOWMODE_PERMISSION_MIGRATION_COMPLETE",
    "PIN_PERMISSION_MIGRATION_COMPLETE",
    "COMMUNITY",
    "NEWS",
    "GUILD_ONBOARDING",
    "SOUNDBOARD",
    "INVITE_SPLASH",
    "ANIMATED_ICON",
    "ROLE_ICONS",
    "GUILD_TAGS",
];

pub(super) const LOCALES: &[&str] = &[
    "en-US", "en-GB", "de", "fr", "pt-BR", "es-ES", "ja", "ru", "ko", "pl",
];

pub(super) const GAMES: &[(&str, u64)] = &[
    ("Counter-Strike 2", 1_158_877_933_042_143_272),
    ("League of Legends", 401_518_684_763_586_560),
    ("Minecraft", 356_875_570_916_753_438),
    ("Valorant", 700_136_079_562_375_258),
    ("Visual Studio Code", 383_226_320_970_055_681),
    ("Baldur's Gate 3", 1_137_837_264_116_281_394),
    ("Fortnite", 432_980_957_394_370_572),
];

pub(super) const SONGS: &[(&str, &str, &str)] = &[
    (
        "Never Gonna Give You Up",
        "Rick Astley",
        "Whenever You Need Somebody",
    ),
    ("Blinding Lights", "The Weeknd", "After Hours"),
    ("Pomegranate \"Intro\"", "Café Lo-fi", "Late Nights"),
    ("夜に駆ける", "YOASOBI", "THE BOOK"),
    ("Around the World", "Daft Punk", "Homework"),
];

pub(super) const CUSTOM_STATUSES: &[&str] = &[
    "grinding ranked 🎮",
    "do not disturb, exams",
    "🦀 rewriting it in rust",
    "away",
    "\"touch grass\" arc",
    "ask me about C:\\Windows",
    "listening to lo-fi",
];

pub(super) const STATUS_EMOJI: &[&str] = &["🔥", "🎮", "📚", "💤", "🦀", "☕"];

/// Slash commands of the mock application: (name, option name, option type, sample values).
pub(super) const COMMANDS: &[(&str, &str, u8, &[&str])] = &[
    (
        "play",
        "query",
        3,
        &[
            "never gonna give you up",
            "lofi hip hop radio 📚",
            "夜に駆ける",
        ],
    ),
    ("rank", "user", 6, &[]),
    (
        "remind",
        "text",
        3,
        &[
            "take the \"pizza\" out",
            "standup in 10",
            "stretch\\breathe",
        ],
    ),
    ("weather", "city", 3, &["São Paulo", "Zürich", "東京"]),
    ("ban", "user", 6, &[]),
    (
        "poll",
        "question",
        3,
        &["pineapple on pizza?", "best lang: rust or c++", "🐱 or 🐶"],
    ),
];
