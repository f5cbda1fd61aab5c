//! Every event the mock generates deserializes into twilight-model's types (a real client
//! library's view of Discord's schema), except RATE_LIMITED, where twilight 0.18 models `meta`
//! as a tagged enum while Discord documents `meta: {guild_id, nonce}` (docs/discord-gateway.md); the mock
//! follows Discord.

use mock_gateway::events::{EventMix, SessionEvents, guild_ids, shard_for_guild};
use serde::de::DeserializeSeed;
use twilight_model::gateway::event::{Event, GatewayEventDeserializer};

fn deserialize(bytes: &[u8]) -> Result<(String, Event), String> {
    let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
    let deserializer =
        GatewayEventDeserializer::from_json(text).ok_or_else(|| "no op/t/s".to_owned())?;
    let name = deserializer.event_type().unwrap_or("?").to_owned();
    let mut json = serde_json::Deserializer::from_str(text);
    let event = deserializer
        .deserialize(&mut json)
        .map_err(|e| format!("{name}: {e}"))?;
    Ok((name, Event::from(event)))
}

#[test]
fn every_generated_event_deserializes_into_twilight_models() {
    let total = 4;
    let guilds = guild_ids(11, 60);
    let owned: Vec<u64> = guilds
        .iter()
        .copied()
        .filter(|g| shard_for_guild(*g, total) == 1)
        .collect();
    assert!(!owned.is_empty());
    let mut events = SessionEvents::new(5, 1, owned.clone(), EventMix::default());
    let mut buffer = Vec::new();
    let mut seq = 1;
    let mut seen = std::collections::BTreeMap::<String, u64>::new();
    let mut check = |buffer: &mut Vec<u8>| {
        let (name, _) = deserialize(buffer).unwrap_or_else(|e| panic!("{e}"));
        *seen.entry(name).or_default() += 1;
        buffer.clear();
    };

    events.ready(
        seq,
        "0123456789abcdef0123456789abcdef",
        "ws://127.0.0.1:1",
        [1, total],
        &mut buffer,
    );
    check(&mut buffer);
    for guild in &owned {
        seq += 1;
        events.guild_create(*guild, seq, 20_000, &mut buffer);
        check(&mut buffer);
    }
    for _ in 0..5_000 {
        seq += 1;
        events.next_dispatch(seq, &mut buffer);
        check(&mut buffer);
    }
    seq += 1;
    events.resumed(seq, &mut buffer);
    check(&mut buffer);
    seq += 1;
    events.guild_members_chunk(owned[0], Some("nonce-1"), seq, &mut buffer);
    check(&mut buffer);
    seq += 1;
    events.guild_delete(owned[0], true, seq, &mut buffer);
    check(&mut buffer);

    for name in [
        "READY",
        "GUILD_CREATE",
        "MESSAGE_CREATE",
        "MESSAGE_UPDATE",
        "MESSAGE_DELETE",
        "TYPING_START",
        "PRESENCE_UPDATE",
        "GUILD_MEMBER_UPDATE",
        "MESSAGE_REACTION_ADD",
        "MESSAGE_REACTION_REMOVE",
        "INTERACTION_CREATE",
        "RESUMED",
        "GUILD_MEMBERS_CHUNK",
        "GUILD_DELETE",
    ] {
        assert!(
            seen.get(name).copied().unwrap_or(0) > 0,
            "{name} never generated: {seen:?}"
        );
    }
}

#[test]
fn rate_limited_follows_discords_documented_shape() {
    let mut events = SessionEvents::new(5, 0, vec![guild_ids(1, 1)[0]], EventMix::default());
    let mut buffer = Vec::new();
    events.rate_limited(8, 12.5, 81_384_788_765_712_384, Some("n1"), 7, &mut buffer);
    let value: serde_json::Value = serde_json::from_slice(&buffer).unwrap();
    assert_eq!(value["t"], "RATE_LIMITED");
    assert_eq!(value["d"]["opcode"], 8);
    assert_eq!(value["d"]["retry_after"], 12.5);
    assert_eq!(value["d"]["meta"]["guild_id"], "81384788765712384");
    assert_eq!(value["d"]["meta"]["nonce"], "n1");
}
