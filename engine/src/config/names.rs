//! Name tables of the settings layer: Discord's gateway intents and dispatch event names.
//!
//! Data only: no parsing here beyond lookups. The tables follow Discord's documentation as of
//! 2026 (topics/gateway#gateway-intents, events/gateway-events#receive-events).

/// Every gateway intent by name, with its bit number, in bit order.
pub const INTENTS: &[(&str, u8)] = &[
    ("GUILDS", 0),
    ("GUILD_MEMBERS", 1),
    ("GUILD_MODERATION", 2),
    ("GUILD_EXPRESSIONS", 3),
    ("GUILD_INTEGRATIONS", 4),
    ("GUILD_WEBHOOKS", 5),
    ("GUILD_INVITES", 6),
    ("GUILD_VOICE_STATES", 7),
    ("GUILD_PRESENCES", 8),
    ("GUILD_MESSAGES", 9),
    ("GUILD_MESSAGE_REACTIONS", 10),
    ("GUILD_MESSAGE_TYPING", 11),
    ("DIRECT_MESSAGES", 12),
    ("DIRECT_MESSAGE_REACTIONS", 13),
    ("DIRECT_MESSAGE_TYPING", 14),
    ("MESSAGE_CONTENT", 15),
    ("GUILD_SCHEDULED_EVENTS", 16),
    ("AUTO_MODERATION_CONFIGURATION", 20),
    ("AUTO_MODERATION_EXECUTION", 21),
    ("GUILD_MESSAGE_POLLS", 24),
    ("DIRECT_MESSAGE_POLLS", 25),
];

/// Older names Discord still documents, accepted on input and never printed.
pub const INTENT_ALIASES: &[(&str, u8)] = &[("GUILD_EMOJIS_AND_STICKERS", 3)];

/// Intents a bot must enable in the developer portal (GUILD_MEMBERS, GUILD_PRESENCES,
/// MESSAGE_CONTENT); identifying with one that is not enabled closes with 4014.
pub const PRIVILEGED_INTENT_BITS: u64 = (1 << 1) | (1 << 8) | (1 << 15);

/// Every named intent bit.
pub const KNOWN_INTENT_BITS: u64 = {
    let mut bits = 0;
    let mut i = 0;
    while i < INTENTS.len() {
        bits |= 1 << INTENTS[i].1;
        i += 1;
    }
    bits
};

/// The bit number of an intent name or alias (exact, upper case).
pub fn intent_bit(name: &str) -> Option<u8> {
    INTENTS
        .iter()
        .chain(INTENT_ALIASES)
        .find(|(known, _)| *known == name)
        .map(|&(_, bit)| bit)
}

/// Dispatch event names `--events` accepts, sorted (binary search relies on it).
///
/// Discord's documented receive events, plus `RATE_LIMITED` (opcode 8 answers), `CHANNEL_INFO`
/// (opcode 43 answers) and the undocumented voice channel events seen in 2026 captures. An event
/// Discord adds later needs an entry here before it can be allow-listed; leaving `--events`
/// unset forwards it regardless.
pub const EVENT_NAMES: &[&str] = &[
    "APPLICATION_COMMAND_PERMISSIONS_UPDATE",
    "AUTO_MODERATION_ACTION_EXECUTION",
    "AUTO_MODERATION_RULE_CREATE",
    "AUTO_MODERATION_RULE_DELETE",
    "AUTO_MODERATION_RULE_UPDATE",
    "CHANNEL_CREATE",
    "CHANNEL_DELETE",
    "CHANNEL_INFO",
    "CHANNEL_PINS_UPDATE",
    "CHANNEL_UPDATE",
    "ENTITLEMENT_CREATE",
    "ENTITLEMENT_DELETE",
    "ENTITLEMENT_UPDATE",
    "GUILD_AUDIT_LOG_ENTRY_CREATE",
    "GUILD_BAN_ADD",
    "GUILD_BAN_REMOVE",
    "GUILD_CREATE",
    "GUILD_DELETE",
    "GUILD_EMOJIS_UPDATE",
    "GUILD_INTEGRATIONS_UPDATE",
    "GUILD_MEMBERS_CHUNK",
    "GUILD_MEMBER_ADD",
    "GUILD_MEMBER_REMOVE",
    "GUILD_MEMBER_UPDATE",
    "GUILD_ROLE_CREATE",
    "GUILD_ROLE_DELETE",
    "GUILD_ROLE_UPDATE",
    "GUILD_SCHEDULED_EVENT_CREATE",
    "GUILD_SCHEDULED_EVENT_DELETE",
    "GUILD_SCHEDULED_EVENT_UPDATE",
    "GUILD_SCHEDULED_EVENT_USER_ADD",
    "GUILD_SCHEDULED_EVENT_USER_REMOVE",
    "GUILD_SOUNDBOARD_SOUNDS_UPDATE",
    "GUILD_SOUNDBOARD_SOUND_CREATE",
    "GUILD_SOUNDBOARD_SOUND_DELETE",
    "GUILD_SOUNDBOARD_SOUND_UPDATE",
    "GUILD_STICKERS_UPDATE",
    "GUILD_UPDATE",
    "INTEGRATION_CREATE",
    "INTEGRATION_DELETE",
    "INTEGRATION_UPDATE",
    "INTERACTION_CREATE",
    "INVITE_CREATE",
    "INVITE_DELETE",
    "MESSAGE_CREATE",
    "MESSAGE_DELETE",
    "MESSAGE_DELETE_BULK",
    "MESSAGE_POLL_VOTE_ADD",
    "MESSAGE_POLL_VOTE_REMOVE",
    "MESSAGE_REACTION_ADD",
    "MESSAGE_REACTION_REMOVE",
    "MESSAGE_REACTION_REMOVE_ALL",
    "MESSAGE_REACTION_REMOVE_EMOJI",
    "MESSAGE_UPDATE",
    "PRESENCE_UPDATE",
    "RATE_LIMITED",
    "READY",
    "RESUMED",
    "SOUNDBOARD_SOUNDS",
    "STAGE_INSTANCE_CREATE",
    "STAGE_INSTANCE_DELETE",
    "STAGE_INSTANCE_UPDATE",
    "SUBSCRIPTION_CREATE",
    "SUBSCRIPTION_DELETE",
    "SUBSCRIPTION_UPDATE",
    "THREAD_CREATE",
    "THREAD_DELETE",
    "THREAD_LIST_SYNC",
    "THREAD_MEMBERS_UPDATE",
    "THREAD_MEMBER_UPDATE",
    "THREAD_UPDATE",
    "TYPING_START",
    "USER_UPDATE",
    "VOICE_CHANNEL_EFFECT_SEND",
    "VOICE_CHANNEL_START_TIME_UPDATE",
    "VOICE_CHANNEL_STATUS_UPDATE",
    "VOICE_SERVER_UPDATE",
    "VOICE_STATE_UPDATE",
    "WEBHOOKS_UPDATE",
];

/// The table's own spelling of an event name (exact, upper case), for interning.
pub fn event_name(name: &str) -> Option<&'static str> {
    EVENT_NAMES
        .binary_search(&name)
        .ok()
        .map(|index| EVENT_NAMES[index])
}

/// The candidate closest to `word` by edit distance, if it is close enough to be a typo.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = 2.max(word.len() / 4);
    candidates
        .into_iter()
        .map(|candidate| (edit_distance(word, candidate), candidate))
        .filter(|&(distance, _)| distance <= limit)
        .min_by_key(|&(distance, _)| distance)
        .map(|(_, candidate)| candidate)
}

/// Levenshtein distance over bytes (the names are ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for (i, &ca) in a.iter().enumerate() {
        current[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names_are_sorted_unique_and_upper_case() {
        assert!(EVENT_NAMES.windows(2).all(|pair| pair[0] < pair[1]));
        for name in EVENT_NAMES {
            assert!(
                name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'),
                "{name}"
            );
            assert_eq!(event_name(name), Some(*name));
        }
    }

    #[test]
    fn intent_table_is_in_bit_order_and_privileged_bits_are_named() {
        assert!(INTENTS.windows(2).all(|pair| pair[0].1 < pair[1].1));
        assert_eq!(
            KNOWN_INTENT_BITS & PRIVILEGED_INTENT_BITS,
            PRIVILEGED_INTENT_BITS
        );
        assert_eq!(
            intent_bit("GUILD_EMOJIS_AND_STICKERS"),
            intent_bit("GUILD_EXPRESSIONS")
        );
        assert_eq!(intent_bit("MESSAGE_CONTENT"), Some(15));
        assert_eq!(intent_bit("message_content"), None);
    }

    #[test]
    fn closest_suggests_typos_only() {
        let keys = ["total_shards", "shards", "cores"];
        assert_eq!(closest("totl_shards", keys), Some("total_shards"));
        assert_eq!(closest("core", keys), Some("cores"));
        assert_eq!(closest("compression", keys), None);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
