//! Judging what a bot received against the world the mock made, by content: every event the
//! mock listed ([`crate::MockGateway::events`], with `--record-events`) against the content
//! hashes a bot kept of what it received, in order (the fake bot's `--record-content`). It does
//! not care which session or shard set carried an event, so it judges delivery across a
//! reshard's two sets the same way as with one.
//!
//! Identical events (the same `t` and `d`) share a hash: each must arrive as many times as the
//! mock made it. Redundant MESSAGE_UPDATEs may arrive or not (an engine may drop them). Order is
//! judged per guild: each arrival stands for the first event with its hash, not yet accounted
//! for, that comes after the last event of its guild that arrived; a guild's events must arrive
//! in the order its timeline made them.

use std::collections::{BTreeMap, HashMap};

use crate::ledger::EventRecord;

/// An event's id is its timeline's number shifted by this, plus its index in the timeline.
const TIMELINE_SHIFT: u32 = crate::timeline::EVENT_INDEX_BITS;

/// What a bot received, against what the mock made.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ContentCheck {
    /// Events made and not received as often as made (hashes; redundant updates left out).
    pub missing: Vec<u64>,
    /// Hashes received more often than made.
    pub duplicated: Vec<u64>,
    /// Hashes received that the mock never made.
    pub unknown: Vec<u64>,
    /// Guilds whose events arrived out of the order they were made.
    pub out_of_order: Vec<u64>,
}

impl ContentCheck {
    /// `delivered`: the content hashes the bot received, in the order it received them.
    pub fn new(events: &[EventRecord], delivered: &[u64]) -> ContentCheck {
        // hash → (events that must arrive, events that may)
        let mut made: HashMap<u64, (usize, usize)> = HashMap::new();
        let mut by_hash: HashMap<u64, Vec<&EventRecord>> = HashMap::new();
        for event in events {
            let slot = made.entry(event.hash).or_default();
            if event.redundant_update {
                slot.1 += 1;
            } else {
                slot.0 += 1;
            }
            by_hash.entry(event.hash).or_default().push(event);
        }
        let mut got: HashMap<u64, usize> = HashMap::new();
        for hash in delivered {
            *got.entry(*hash).or_default() += 1;
        }
        let mut check = ContentCheck::default();
        for (hash, (required, optional)) in &made {
            let count = got.get(hash).copied().unwrap_or(0);
            if count < *required {
                check.missing.push(*hash);
            }
            if count > required + optional {
                check.duplicated.push(*hash);
            }
        }
        check.unknown = got
            .keys()
            .filter(|hash| !made.contains_key(hash))
            .copied()
            .collect();
        // Each arrival takes, of the events with its hash not taken yet, the first one after
        // the last event of its guild that arrived (identical events, some of which an engine
        // may drop, are told apart by their place); out of order when there is none.
        let mut untaken: HashMap<u64, Vec<&EventRecord>> = by_hash;
        let mut last: BTreeMap<u64, u64> = BTreeMap::new();
        for hash in delivered {
            let Some(candidates) = untaken.get_mut(hash).filter(|c| !c.is_empty()) else {
                continue;
            };
            let guild = candidates[0].guild_id;
            let after = guild.and_then(|g| last.get(&g).copied());
            let index = candidates
                .iter()
                .position(|event| after.is_none_or(|last| event.id > last));
            let event = match index {
                Some(index) => candidates.remove(index),
                None => {
                    if let Some(guild) = guild {
                        check.out_of_order.push(guild);
                    }
                    candidates.remove(0)
                }
            };
            if let Some(guild) = event.guild_id {
                last.insert(guild, event.id);
            }
        }
        check.missing.sort_unstable();
        check.duplicated.sort_unstable();
        check.unknown.sort_unstable();
        check.out_of_order.sort_unstable();
        check.out_of_order.dedup();
        check
    }

    /// [`ContentCheck::new`] for a bot whose engine stopped while the mock went on: of each
    /// guild (or, for guild-less events, each timeline) only the events up to the last one the bot
    /// received count; what was in flight at the stop is Discord's to replay on the next resume.
    /// (A guild's events reach one shard of a set, so its tail is what one connection had in
    /// flight; shards of one timeline stop at different points.)
    ///
    /// An event repeated byte for byte shares its hash with its earlier copies: a hash received
    /// `n` times stands for the first `n` events made with it, so that the earlier copies'
    /// arrival does not make a later one, still in flight at the stop, look received.
    pub fn up_to_the_last_received(events: &[EventRecord], delivered: &[u64]) -> ContentCheck {
        let mut received: HashMap<u64, usize> = HashMap::new();
        for hash in delivered {
            *received.entry(*hash).or_default() += 1;
        }
        let scope = |event: &EventRecord| match event.guild_id {
            Some(guild) => (0, guild),
            None => (1, event.id >> TIMELINE_SHIFT),
        };
        let mut in_order: Vec<&EventRecord> = events.iter().collect();
        in_order.sort_by_key(|event| event.id);
        let mut last: HashMap<(u8, u64), u64> = HashMap::new();
        for event in in_order {
            let Some(left) = received.get_mut(&event.hash).filter(|left| **left > 0) else {
                continue;
            };
            *left -= 1;
            let entry = last.entry(scope(event)).or_default();
            *entry = (*entry).max(event.id);
        }
        let made: Vec<EventRecord> = events
            .iter()
            .filter(|event| {
                last.get(&scope(event))
                    .is_some_and(|&last| event.id <= last)
            })
            .cloned()
            .collect();
        ContentCheck::new(&made, delivered)
    }

    /// Every event once and in order per guild.
    pub fn is_exactly_once(&self) -> bool {
        self.missing.is_empty()
            && self.duplicated.is_empty()
            && self.unknown.is_empty()
            && self.out_of_order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: u64, guild: u64, hash: u64, redundant_update: bool) -> EventRecord {
        EventRecord {
            id,
            guild_id: Some(guild),
            t: "MESSAGE_CREATE".into(),
            hash,
            redundant_update,
        }
    }

    #[test]
    fn counts_missing_duplicated_unknown_and_out_of_order() {
        let events = [
            event(1, 10, 100, false),
            event(2, 10, 200, false),
            event(3, 10, 100, false), // identical to 1
            event(4, 20, 300, true),  // redundant: optional
            event(5, 20, 400, false),
        ];
        assert!(ContentCheck::new(&events, &[100, 200, 100, 400]).is_exactly_once());
        assert!(ContentCheck::new(&events, &[100, 200, 100, 300, 400]).is_exactly_once());
        let check = ContentCheck::new(&events, &[100, 200, 400, 999, 400]);
        assert_eq!(check.missing, [100], "made twice, received once");
        assert_eq!(check.duplicated, [400]);
        assert_eq!(check.unknown, [999]);
        let check = ContentCheck::new(&events, &[200, 100, 100, 400]);
        assert_eq!(check.out_of_order, [10]);
    }

    #[test]
    fn a_repeat_in_flight_at_the_stop_is_not_counted_as_received() {
        // The same member update three times; the third was in flight when the engine stopped.
        // The first two arriving does not make the third look received.
        let events = [
            event(1, 10, 100, false),
            event(2, 10, 200, false),
            event(3, 10, 100, false),
            event(4, 10, 300, false),
            event(5, 10, 100, false),
        ];
        let check = ContentCheck::up_to_the_last_received(&events, &[100, 200, 100, 300]);
        assert!(check.is_exactly_once(), "{check:?}");
        // A repeat lost before a later event of its guild arrived is still missing.
        let check = ContentCheck::up_to_the_last_received(&events, &[100, 200, 300]);
        assert_eq!(check.missing, [100]);
        let check = ContentCheck::up_to_the_last_received(&events, &[100, 200, 300, 100]);
        assert!(check.missing.is_empty(), "{check:?}");
        assert_eq!(
            check.out_of_order,
            [10],
            "the repeat came after the event that follows it"
        );
    }

    #[test]
    fn an_identical_event_an_engine_dropped_does_not_look_out_of_order() {
        // Two identical unfurl updates of one message (the same bytes); the first was dropped as
        // redundant, the second arrived after a later event of the guild.
        let events = [
            event(1, 10, 500, true),
            event(2, 10, 600, false),
            event(3, 10, 500, true),
        ];
        assert!(ContentCheck::new(&events, &[600, 500]).is_exactly_once());
        assert_eq!(
            ContentCheck::new(&events, &[500, 500, 600]).out_of_order,
            [10],
            "both updates before the event between them"
        );
    }
}
