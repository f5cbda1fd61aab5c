//! Reshard stage: when to reshard and to how many shards. Pure arithmetic over what the engine
//! knows (the guilds of each shard, `/gateway/bot`'s answer), tested without a runtime.
//!
//! - **When**: the fullest shard reaches `--reshard-at-percent` of the guilds a shard may hold
//!   (Discord's 2,500), or Discord recommends more shards than run now, or a shard was closed
//!   with 4011 (sharding required). Automatic reshards wait out a cooldown after the last one.
//! - **To how many**: the larger of Discord's recommendation and what brings the average shard
//!   to half the fill level (so that the fullest, typically close to the average, stays well
//!   under it for a long while), rounded up to a multiple of `max_concurrency` (every identify
//!   round is then full) and, from 150,000 guilds, to a multiple of 16 too (Discord requires
//!   multiples of a number it gives large bots; most libraries use 16). Never fewer shards than
//!   run now when automatic.
//! - **Whether Discord lets us**: identifying the new set spends `session_start_limit`; a
//!   reshard is refused unless `remaining` covers the new set plus a reserve for the live set's
//!   own reconnects that need a new session meanwhile.
//!
//! Must not: perform I/O or read the clock.

use std::time::{Duration, Instant};

/// Guilds Discord lets one shard hold (more gets close 4011).
pub const GUILDS_PER_SHARD_MAX: u32 = 2500;
/// From this many guilds, Discord requires shard counts in multiples of a number it gives the
/// bot; 16 is the usual one.
pub const LARGE_BOT_GUILDS: u64 = 150_000;
pub const LARGE_BOT_SHARD_MULTIPLE: u32 = 16;
/// Automatic reshards are at least this far apart.
pub const COOLDOWN_DEFAULT: Duration = Duration::from_secs(15 * 60);

/// The settings a decision depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReshardPolicy {
    /// `--reshard`: automatic triggers on or off (a manual reshard is always possible).
    pub automatic: bool,
    /// `--reshard-at-percent`, 1..=100.
    pub at_percent: u8,
    /// Guilds a shard may hold: Discord's 2,500 (a hidden setting lowers it for tests).
    pub guilds_per_shard_max: u32,
    /// Between two automatic reshards.
    pub cooldown: Duration,
}

impl ReshardPolicy {
    /// The guild count at which a shard counts as full.
    pub fn fill_level(&self) -> u32 {
        (u64::from(self.guilds_per_shard_max) * u64::from(self.at_percent))
            .div_ceil(100)
            .max(1) as u32
    }
}

/// The guilds of the live set, from READY, joins and leaves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fill {
    /// Guilds on the fullest shard.
    pub fullest: u32,
    /// Guilds on every shard together.
    pub total: u64,
}

/// Why an automatic reshard starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// The fullest shard holds this many guilds, at or past the fill level.
    Fill { fullest: u32 },
    /// `/gateway/bot` recommends this many shards, more than run now.
    Recommended { shards: u32 },
    /// Discord closed a shard with 4011.
    ShardingRequired,
    /// `POST /reshard`.
    Manual,
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trigger::Fill { fullest } => write!(f, "the fullest shard holds {fullest} guilds"),
            Trigger::Recommended { shards } => {
                write!(f, "Discord recommends {shards} shards")
            }
            Trigger::ShardingRequired => f.write_str("Discord closed a shard with 4011"),
            Trigger::Manual => f.write_str("asked through the admin API"),
        }
    }
}

/// Why a reshard cannot start.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "session_start_limit.remaining is {remaining}: {shards} new shards plus a reserve of \
         {reserve} identifies for the live set's reconnects need {needed}; retry after the \
         limit resets"
    )]
    Budget {
        remaining: u32,
        shards: u32,
        reserve: u32,
        needed: u32,
    },
    #[error("{to} shards is the count that runs now")]
    SameCount { to: u32 },
    #[error(
        "{to} shards would put about {per_shard} guilds on each shard, over the {max} a shard \
         may hold"
    )]
    TooFew { to: u32, per_shard: u64, max: u32 },
    #[error("a shard count is between 1 and {max}, not {to}")]
    OutOfRange { to: u32, max: u32 },
}

/// The most shards a reshard may ask for (Discord's largest bots run tens of thousands).
pub const SHARDS_MAX: u32 = 1 << 20;

/// Should an automatic reshard start now? `None` when not (or when the cooldown since
/// `last_finished` has not passed, or automatic resharding is off).
pub fn automatic_trigger(
    policy: &ReshardPolicy,
    live_shards: u32,
    fill: Fill,
    recommended: Option<u32>,
    sharding_required: bool,
    last_finished: Option<Instant>,
    now: Instant,
) -> Option<Trigger> {
    if !policy.automatic {
        return None;
    }
    if last_finished.is_some_and(|at| now.saturating_duration_since(at) < policy.cooldown) {
        return None;
    }
    if sharding_required {
        return Some(Trigger::ShardingRequired);
    }
    if fill.fullest >= policy.fill_level() {
        return Some(Trigger::Fill {
            fullest: fill.fullest,
        });
    }
    match recommended {
        Some(shards) if shards > live_shards => Some(Trigger::Recommended { shards }),
        _ => None,
    }
}

/// The shard count to reshard to when none is given: see the module docs.
pub fn target_count(
    policy: &ReshardPolicy,
    live_shards: u32,
    fill: Fill,
    recommended: Option<u32>,
    max_concurrency: u32,
) -> u32 {
    let half_fill = u64::from(policy.fill_level().div_ceil(2).max(1));
    let by_fill = u32::try_from(fill.total.div_ceil(half_fill)).unwrap_or(SHARDS_MAX);
    let wanted = by_fill
        .max(recommended.unwrap_or(0))
        .max(live_shards.saturating_add(1))
        .min(SHARDS_MAX);
    let mut multiple = max_concurrency.max(1);
    if fill.total >= LARGE_BOT_GUILDS {
        multiple = lcm(multiple, LARGE_BOT_SHARD_MULTIPLE);
    }
    wanted
        .div_ceil(multiple)
        .saturating_mul(multiple)
        .min(SHARDS_MAX)
}

/// Identifies to keep for the live set while the new one identifies: a tenth of it, at least 5.
pub fn budget_reserve(live_shards: u32) -> u32 {
    live_shards.div_ceil(10).max(5)
}

/// Whether `to` shards may start now: a count that differs from the live one, holds every
/// guild, and whose identifies the daily budget covers with the reserve.
pub fn check(
    policy: &ReshardPolicy,
    live_shards: u32,
    to: u32,
    fill: Fill,
    remaining: u32,
) -> Result<(), Refusal> {
    if to == 0 || to > SHARDS_MAX {
        return Err(Refusal::OutOfRange {
            to,
            max: SHARDS_MAX,
        });
    }
    if to == live_shards {
        return Err(Refusal::SameCount { to });
    }
    let per_shard = fill.total.div_ceil(u64::from(to));
    if per_shard > u64::from(policy.guilds_per_shard_max) {
        return Err(Refusal::TooFew {
            to,
            per_shard,
            max: policy.guilds_per_shard_max,
        });
    }
    let reserve = budget_reserve(live_shards);
    let needed = to.saturating_add(reserve);
    if remaining < needed {
        return Err(Refusal::Budget {
            remaining,
            shards: to,
            reserve,
            needed,
        });
    }
    Ok(())
}

fn lcm(a: u32, b: u32) -> u32 {
    fn gcd(a: u32, b: u32) -> u32 {
        if b == 0 { a } else { gcd(b, a % b) }
    }
    (a / gcd(a, b)).saturating_mul(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: ReshardPolicy = ReshardPolicy {
        automatic: true,
        at_percent: 80,
        guilds_per_shard_max: GUILDS_PER_SHARD_MAX,
        cooldown: COOLDOWN_DEFAULT,
    };

    fn fill(fullest: u32, total: u64) -> Fill {
        Fill { fullest, total }
    }

    #[test]
    fn the_fullest_shard_at_the_fill_level_triggers() {
        let now = Instant::now();
        assert_eq!(POLICY.fill_level(), 2000);
        assert_eq!(
            automatic_trigger(&POLICY, 4, fill(1999, 7000), None, false, None, now),
            None
        );
        assert_eq!(
            automatic_trigger(&POLICY, 4, fill(2000, 7000), None, false, None, now),
            Some(Trigger::Fill { fullest: 2000 })
        );
        // Discord recommending more, or a 4011, triggers too; 4011 first.
        assert_eq!(
            automatic_trigger(&POLICY, 4, fill(10, 40), Some(6), false, None, now),
            Some(Trigger::Recommended { shards: 6 })
        );
        assert_eq!(
            automatic_trigger(&POLICY, 4, fill(2400, 9000), Some(6), true, None, now),
            Some(Trigger::ShardingRequired)
        );
        assert_eq!(
            automatic_trigger(&POLICY, 4, fill(10, 40), Some(4), false, None, now),
            None
        );
    }

    #[test]
    fn automatic_triggers_wait_for_the_cooldown_and_obey_off() {
        let now = Instant::now();
        let just_now = Some(now);
        let full = fill(2400, 9000);
        assert_eq!(
            automatic_trigger(
                &POLICY,
                4,
                full,
                None,
                true,
                just_now,
                now + Duration::from_secs(60)
            ),
            None
        );
        assert!(
            automatic_trigger(
                &POLICY,
                4,
                full,
                None,
                false,
                just_now,
                now + COOLDOWN_DEFAULT
            )
            .is_some()
        );
        let off = ReshardPolicy {
            automatic: false,
            ..POLICY
        };
        assert_eq!(
            automatic_trigger(&off, 4, full, Some(99), true, None, now),
            None
        );
    }

    #[test]
    fn the_target_halves_the_fill_and_rounds_to_whole_identify_rounds() {
        // 9,000 guilds: half the fill level is 1,000 per shard, so 9 shards; max_concurrency 1.
        assert_eq!(target_count(&POLICY, 4, fill(2400, 9000), None, 1), 9);
        // Rounded up to a multiple of max_concurrency.
        assert_eq!(target_count(&POLICY, 4, fill(2400, 9000), None, 16), 16);
        // Discord's recommendation wins when larger.
        assert_eq!(target_count(&POLICY, 4, fill(2400, 9000), Some(12), 4), 12);
        // Never fewer than run now, even with few guilds.
        assert_eq!(target_count(&POLICY, 8, fill(10, 40), None, 1), 9);
        // From 150,000 guilds: a multiple of 16 as well as of max_concurrency.
        assert_eq!(target_count(&POLICY, 96, fill(2000, 150_000), None, 1), 160);
        assert_eq!(
            target_count(&POLICY, 96, fill(2000, 150_000), None, 24),
            192
        );
        // A small guild limit (as tests use) scales the same way.
        let small = ReshardPolicy {
            guilds_per_shard_max: 10,
            ..POLICY
        };
        assert_eq!(small.fill_level(), 8);
        assert_eq!(target_count(&small, 4, fill(8, 30), None, 4), 8);
    }

    #[test]
    fn a_reshard_the_budget_cannot_cover_is_refused_with_the_figures() {
        assert_eq!(budget_reserve(4), 5);
        assert_eq!(budget_reserve(96), 10);
        assert_eq!(check(&POLICY, 4, 8, fill(100, 400), 13), Ok(()));
        assert_eq!(
            check(&POLICY, 4, 8, fill(100, 400), 12),
            Err(Refusal::Budget {
                remaining: 12,
                shards: 8,
                reserve: 5,
                needed: 13
            })
        );
        let refusal = check(&POLICY, 4, 8, fill(100, 400), 12)
            .unwrap_err()
            .to_string();
        assert!(refusal.contains("remaining is 12"), "{refusal}");
    }

    #[test]
    fn counts_that_cannot_hold_the_guilds_or_change_nothing_are_refused() {
        assert_eq!(
            check(&POLICY, 4, 4, fill(100, 400), 1000),
            Err(Refusal::SameCount { to: 4 })
        );
        assert_eq!(
            check(&POLICY, 4, 2, fill(2400, 9000), 1000),
            Err(Refusal::TooFew {
                to: 2,
                per_shard: 4500,
                max: 2500
            })
        );
        // A manual shrink that still holds every guild is allowed.
        assert_eq!(check(&POLICY, 8, 4, fill(500, 4000), 1000), Ok(()));
        assert!(matches!(
            check(&POLICY, 4, 0, fill(1, 1), 1000),
            Err(Refusal::OutOfRange { .. })
        ));
    }
}
