//! Fleet stage: which host of the fleet runs which shard. One pass takes the live hosts, the
//! owners the last pass published and a move budget, and returns the new owners. The Redis
//! adapter reads its inputs and writes its output; everything here is plain data.
//!
//! - **Ideal owner**: weighted rendezvous hashing (highest random weight). Each (host, shard)
//!   pair gets the score `-capacity / ln(u)`, `u` in (0, 1) from a fixed 64-bit hash of the
//!   host id and the shard id; a shard's ranking of hosts is by descending score, ties to the
//!   lower host id. A host then wins a shard with probability capacity / total capacity, and a
//!   host joining or leaving changes the ideal owner only of the shards it wins or held.
//!   Capacity is a hard cap: when the top-ranked host is full, the shard's ideal is the next one
//!   in its ranking with room. Hosts fill with the shards that have a live owner first, then
//!   those whose owner is gone, then those with none, by shard id within each group: so the
//!   ideal never asks to stop a running shard to start another. With room to spare (the usual
//!   case) the order changes nothing and the ideal is the top-ranked host.
//! - **Stability first**: a shard whose current owner is live (listed, capacity above 0) stays
//!   there. An owner over its capacity (it was lowered) keeps first the shards it is the ideal
//!   owner of, then those that score highest for it; the rest fail over like the shards of a
//!   host that is gone.
//! - **Rebalancing** (`moved`, at most `moves_allowed` a pass): kept shards whose ideal owner
//!   is another host move there, in shard id order. When that host is full of shards that are
//!   themselves waiting to move, the move takes the shortest chain of such moves that ends on
//!   a host with room, or back on the host the first shard leaves (a swap); a chain is taken
//!   whole when the budget left covers it, otherwise skipped. With a budget of at least the
//!   number of hosts (no chain is longer) repeated passes converge to every shard on its
//!   ideal host, and a pass over its own result changes nothing.
//! - **Failover** (`reassigned`, not limited): shards whose owner is gone, draining or over
//!   capacity go to their ideal host, or to the best-ranked host with room when the ideal one
//!   is still held by shards waiting to move away (a later pass moves them on).
//! - **Unplaced**: when the fleet's capacity is below the shard count, kept shards hold their
//!   place, then failed-over shards are placed, then shards with no current owner, by shard id
//!   within each group; the last ones stay unowned. So a running shard is never stopped to
//!   start another, and shards that ran start before shards that never ran.
//!
//! Cost: O(shards × hosts) to score, plus a search of O(hosts²) for each move whose ideal host
//! is full. 10,000 shards over 20 hosts: 25 to 35 ms a pass in a debug build, 60 ms when every
//! host is full and every shard must move; 6 to 15 ms in release.
//!
//! Must not: perform I/O, read the clock, or depend on anything but its arguments. Whichever
//! host holds the assigner's lease, on whatever machine and version, must reach the same answer
//! from the same inputs; hence a fixed hash and a logarithm of our own.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// A live host as the assigner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// The host's name in the fleet; it also seeds the host's scores, so renaming a host moves
    /// its shards.
    pub id: String,
    /// The most shards the host takes, and its weight in the rendezvous scores. 0 means it
    /// takes none (draining).
    pub capacity: u32,
}

/// What one pass decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assignment {
    /// Shard id -> host id, for every shard `0..total_shards` that some host can take.
    pub owners: BTreeMap<u32, String>,
    /// Shards whose owner changed from `current` because that owner is gone, draining or over
    /// capacity (failover; not limited by the budget). Ascending. Those no host can take are
    /// in `unplaced` instead.
    pub reassigned: Vec<u32>,
    /// Shards moved from a live owner to a better one (rebalancing; at most `moves_allowed`).
    /// Ascending.
    pub moved: Vec<u32>,
    /// Shards no host can take (every host full); they stay unowned. Ascending.
    pub unplaced: Vec<u32>,
}

/// One pass of the assigner: see the module docs for the rules.
///
/// `current` is the last pass's `owners`; entries for shards at or above `total_shards` are
/// ignored (the shard count shrank), as are unknown host ids (those hosts are gone). A host
/// listed twice counts once, with the larger capacity.
pub fn assign(
    total_shards: u32,
    hosts: &[Host],
    current: &BTreeMap<u32, String>,
    moves_allowed: u32,
) -> Assignment {
    let fleet = Fleet::new(hosts);
    let claims = Claims::new(&fleet, current, total_shards);
    let ideal = ideal_owners(
        &fleet,
        total_shards,
        claims
            .live_claimed()
            .chain(claims.orphaned.iter().copied())
            .chain(claims.unowned.iter().copied()),
    );
    let mut placement = Placement::new(total_shards, &fleet);
    let (kept, displaced) = keep_current_owners(&fleet, &mut placement, &ideal, &claims);

    let mut assignment = Assignment {
        moved: rebalance(&mut placement, &ideal, &kept, moves_allowed),
        ..Assignment::default()
    };

    for &shard in displaced.iter().chain(&claims.unowned) {
        let host = ideal[index(shard)]
            .filter(|&host| placement.room[host] > 0)
            .or_else(|| fleet.best_with_room(shard, &placement.room));
        let Some(host) = host else {
            assignment.unplaced.push(shard);
            continue;
        };
        placement.put(shard, host);
        // A shard shed by a full owner can land back on it when rebalancing made room there;
        // its owner did not change then.
        if current.contains_key(&shard) && claims.live_owner[index(shard)] != Some(host) {
            assignment.reassigned.push(shard);
        }
    }

    assignment.owners = placement
        .owner
        .iter()
        .zip(0..total_shards)
        .filter_map(|(owner, shard)| owner.map(|host| (shard, fleet.hosts[host].id.to_owned())))
        .collect();
    assignment.reassigned.sort_unstable();
    assignment.moved.sort_unstable();
    assignment.unplaced.sort_unstable();
    assignment
}

/// The hosts that take shards (capacity above 0), sorted by id so that nothing depends on the
/// order the caller listed them in. Hosts are referred to by their index here.
struct Fleet<'a> {
    hosts: Vec<FleetHost<'a>>,
}

struct FleetHost<'a> {
    id: &'a str,
    capacity: u32,
    /// The hash of `id`, computed once: every score of this host starts from it.
    id_hash: u64,
}

impl<'a> Fleet<'a> {
    fn new(hosts: &'a [Host]) -> Self {
        let mut sorted: Vec<&Host> = hosts.iter().filter(|host| host.capacity > 0).collect();
        sorted.sort_by(|a, b| a.id.cmp(&b.id).then(b.capacity.cmp(&a.capacity)));
        sorted.dedup_by(|later, first| later.id == first.id);
        let hosts = sorted
            .into_iter()
            .map(|host| FleetHost {
                id: &host.id,
                capacity: host.capacity,
                id_hash: fnv1a(host.id.as_bytes()),
            })
            .collect();
        Fleet { hosts }
    }

    fn index_of(&self, id: &str) -> Option<usize> {
        self.hosts.binary_search_by(|host| host.id.cmp(id)).ok()
    }

    /// The host with room that ranks first for `shard`, if any host has room.
    fn best_with_room(&self, shard: u32, room: &[u32]) -> Option<usize> {
        let mut best: Option<(usize, f64)> = None;
        for (host, candidate) in self.hosts.iter().enumerate() {
            if room[host] == 0 {
                continue;
            }
            let score = candidate.score(shard);
            // Strictly greater: on a tie the earlier host, the lower id, stays first.
            if best.is_none_or(|(_, best_score)| score > best_score) {
                best = Some((host, score));
            }
        }
        best.map(|(host, _)| host)
    }
}

impl FleetHost<'_> {
    /// The weighted rendezvous score `-capacity / ln(u)`; higher ranks first.
    fn score(&self, shard: u32) -> f64 {
        let hash = mix64(self.id_hash ^ mix64(u64::from(shard).wrapping_add(GOLDEN_GAMMA)));
        // The top 52 bits plus a half: exact in an f64, and never 0 or 1, so ln(u) < 0.
        let u = ((hash >> 12) as f64 + 0.5) / (1u64 << 52) as f64;
        -f64::from(self.capacity) / ln(u)
    }
}

/// Which host each shard is on while the pass runs, and the room each host has left.
struct Placement {
    owner: Vec<Option<usize>>,
    room: Vec<u32>,
}

impl Placement {
    fn new(total_shards: u32, fleet: &Fleet<'_>) -> Self {
        Placement {
            owner: vec![None; index(total_shards)],
            room: fleet.hosts.iter().map(|host| host.capacity).collect(),
        }
    }

    fn put(&mut self, shard: u32, host: usize) {
        debug_assert!(self.room[host] > 0, "host {host} is full");
        self.owner[index(shard)] = Some(host);
        self.room[host] -= 1;
    }
}

/// The shards by what `current` says of them.
struct Claims {
    /// Indexed by shard id: the host `current` puts the shard on, where that host is live.
    live_owner: Vec<Option<usize>>,
    /// Shards whose owner in `current` is gone or draining, ascending.
    orphaned: Vec<u32>,
    /// Shards `current` does not mention, ascending.
    unowned: Vec<u32>,
}

impl Claims {
    fn new(fleet: &Fleet<'_>, current: &BTreeMap<u32, String>, total_shards: u32) -> Self {
        let mut claims = Claims {
            live_owner: vec![None; index(total_shards)],
            orphaned: Vec::new(),
            unowned: Vec::new(),
        };
        for shard in 0..total_shards {
            match current.get(&shard).map(|owner| fleet.index_of(owner)) {
                Some(Some(host)) => claims.live_owner[index(shard)] = Some(host),
                Some(None) => claims.orphaned.push(shard),
                None => claims.unowned.push(shard),
            }
        }
        claims
    }

    /// Shards with a live owner, ascending.
    fn live_claimed(&self) -> impl Iterator<Item = u32> {
        self.live_owner
            .iter()
            .zip(0..)
            .filter_map(|(owner, shard)| owner.map(|_| shard))
    }
}

/// Keeps each shard on its live owner where that owner has room; returns the kept shards and
/// the displaced ones (owner gone, draining or over capacity), both ascending.
///
/// A host over its capacity (it was lowered) keeps first the shards it is the ideal owner of,
/// then the ones that score highest for it (the likeliest to become ideal there); ties go to
/// the lower shard id.
fn keep_current_owners(
    fleet: &Fleet<'_>,
    placement: &mut Placement,
    ideal: &[Option<usize>],
    claims: &Claims,
) -> (Vec<u32>, Vec<u32>) {
    let mut by_host: Vec<Vec<u32>> = vec![Vec::new(); fleet.hosts.len()];
    for (owner, shard) in claims.live_owner.iter().zip(0..) {
        if let Some(host) = *owner {
            by_host[host].push(shard);
        }
    }

    let mut kept = Vec::new();
    let mut displaced = claims.orphaned.clone();
    for (host, mut shards) in by_host.into_iter().enumerate() {
        let capacity = index(fleet.hosts[host].capacity);
        if shards.len() > capacity {
            let is_ideal = |shard: u32| ideal[index(shard)] == Some(host);
            let scores: BTreeMap<u32, f64> = shards
                .iter()
                .map(|&shard| (shard, fleet.hosts[host].score(shard)))
                .collect();
            shards.sort_by(|&a, &b| {
                is_ideal(b)
                    .cmp(&is_ideal(a))
                    .then(scores[&b].total_cmp(&scores[&a]))
                    .then(a.cmp(&b))
            });
            displaced.extend(shards.drain(capacity..));
        }
        for &shard in &shards {
            placement.put(shard, host);
        }
        kept.extend(shards);
    }
    kept.sort_unstable();
    displaced.sort_unstable();
    (kept, displaced)
}

/// The ideal owner of each shard (indexed by shard id): the first host in its ranking with
/// room, filling hosts with the shards in `priority` order. `None` for the shards past the
/// fleet's capacity, which are the last ones in that order.
fn ideal_owners(
    fleet: &Fleet<'_>,
    total_shards: u32,
    priority: impl Iterator<Item = u32>,
) -> Vec<Option<usize>> {
    let mut room: Vec<u32> = fleet.hosts.iter().map(|host| host.capacity).collect();
    let mut ideal = vec![None; index(total_shards)];
    for shard in priority {
        if let Some(host) = fleet.best_with_room(shard, &room) {
            room[host] -= 1;
            ideal[index(shard)] = Some(host);
        }
    }
    ideal
}

/// Moves kept shards to their ideal hosts, at most `moves_allowed` of them, in shard id order;
/// returns the shards moved.
///
/// Shards with a live owner come first when ideals are filled, so every kept shard has an
/// ideal host unless the live owners held more shards than the fleet takes (then the ones
/// without stay where they are). And the ideals fit every host: when a shard's ideal host is
/// full, that host holds a shard whose ideal is elsewhere, and following such shards always
/// reaches a host with room or the host the first shard leaves.
fn rebalance(
    placement: &mut Placement,
    ideal: &[Option<usize>],
    kept: &[u32],
    moves_allowed: u32,
) -> Vec<u32> {
    // (host it is on, host it should be on) -> shards.
    let mut misplaced: BTreeMap<(usize, usize), BTreeSet<u32>> = BTreeMap::new();
    let mut candidates = Vec::new();
    for &shard in kept {
        if let (Some(on), Some(wanted)) = (placement.owner[index(shard)], ideal[index(shard)])
            && on != wanted
        {
            misplaced.entry((on, wanted)).or_default().insert(shard);
            candidates.push(shard);
        }
    }

    let mut budget = index(moves_allowed);
    let mut moved = Vec::new();
    for shard in candidates {
        if budget == 0 {
            break;
        }
        let (Some(from), Some(to)) = (placement.owner[index(shard)], ideal[index(shard)]) else {
            continue;
        };
        if from == to {
            continue; // an earlier chain already moved it
        }
        let Some(chain) = chain_of_moves(shard, from, to, &placement.room, &misplaced, budget)
        else {
            continue;
        };
        // Free every slot first, then take them: mid-chain the hosts are over their
        // capacity, which the chain as a whole is not.
        let moves: Vec<(u32, usize, usize)> = chain
            .iter()
            .map(|&shard| {
                let from = placement.owner[index(shard)].expect("a chain holds placed shards");
                let to = ideal[index(shard)].expect("a chain holds shards with an ideal host");
                (shard, from, to)
            })
            .collect();
        for &(shard, from, to) in &moves {
            if let Some(shards) = misplaced.get_mut(&(from, to)) {
                shards.remove(&shard);
                if shards.is_empty() {
                    misplaced.remove(&(from, to));
                }
            }
            placement.owner[index(shard)] = None;
            placement.room[from] += 1;
        }
        for &(shard, _, to) in &moves {
            placement.put(shard, to);
        }
        budget -= chain.len();
        moved.extend(chain);
    }
    moved
}

/// The shortest chain of moves, at most `max_moves` long, that brings `shard` from `from` to
/// `to`: `shard` itself, then a shard that leaves `to` for its own ideal host to make room, and
/// so on until a host with room, or `from` (which `shard` leaves), takes the last one. Hosts
/// are searched in id order and the lowest shard id is taken on each step, so the chain is the
/// same on every run. `None` when no chain fits.
fn chain_of_moves(
    shard: u32,
    from: usize,
    to: usize,
    room: &[u32],
    misplaced: &BTreeMap<(usize, usize), BTreeSet<u32>>,
    max_moves: usize,
) -> Option<Vec<u32>> {
    let takes_one = |host: usize| room[host] > 0 || host == from;
    // Breadth first over hosts from `to`. `previous[h] = Some(g)`: g makes room for the shard
    // coming to it by sending one of its misplaced shards to h.
    let mut previous: Vec<Option<usize>> = vec![None; room.len()];
    let mut queue = VecDeque::from([(to, 1)]);
    let mut end = takes_one(to).then_some(to);
    while end.is_none()
        && let Some((host, moves)) = queue.pop_front()
    {
        if moves == max_moves {
            continue;
        }
        for &(_, next) in misplaced
            .range((host, 0)..(host + 1, 0))
            .map(|(key, _)| key)
        {
            if next == to || previous[next].is_some() {
                continue;
            }
            previous[next] = Some(host);
            if takes_one(next) {
                end = Some(next);
                break;
            }
            queue.push_back((next, moves + 1));
        }
    }

    let mut at = end?;
    let mut chain = Vec::new();
    while let Some(before) = previous[at] {
        let leaving = misplaced[&(before, at)].first();
        chain.push(*leaving.expect("empty sets are removed"));
        at = before;
    }
    chain.push(shard);
    chain.reverse();
    Some(chain)
}

/// A shard id or count as an index. Shard ids are u32 and every target this engine builds for
/// has pointers of 32 bits or more.
fn index(value: u32) -> usize {
    usize::try_from(value).expect("usize holds a u32 on every supported target")
}

/// SplitMix64's increment, the odd constant closest to 2^64 / golden ratio.
const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64's finaliser: every input bit flips about half the output bits.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// 64-bit FNV-1a. Fixed, unlike std's `RandomState`, which is seeded per process.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// 1/1, 1/3, 1/5, …: the coefficients of atanh's series, one term per power of t².
const ATANH_SERIES: [f64; 10] = {
    let mut coefficients = [0.0; 10];
    let mut term = 0;
    while term < coefficients.len() {
        coefficients[term] = 1.0 / (2 * term + 1) as f64;
        term += 1;
    }
    coefficients
};

/// The natural logarithm of a positive normal `x`, from additions, multiplications and
/// divisions only. IEEE 754 rounds each of those exactly, so the result is the same bits on
/// every machine; `f64::ln` calls the platform's libm, whose last bit may differ, and two
/// hosts that rank a near-tie differently would both claim a shard.
fn ln(x: f64) -> f64 {
    debug_assert!(x.is_normal() && x > 0.0, "ln of {x}");
    let bits = x.to_bits();
    // x = mantissa · 2^exponent with mantissa in [1, 2)...
    let mut exponent = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mut mantissa = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000);
    // ...then in [√2/2, √2], so that the series below converges fast.
    if mantissa > std::f64::consts::SQRT_2 {
        mantissa /= 2.0;
        exponent += 1;
    }
    // ln(m) = 2·atanh(t) = 2·(t + t³/3 + t⁵/5 + …) with t = (m - 1)/(m + 1), |t| ≤ 0.172:
    // each term is under 3% of the one before, so what 10 terms leave out is below 1e-16 of
    // the sum.
    let t = (mantissa - 1.0) / (mantissa + 1.0);
    let t_squared = t * t;
    // Horner's rule, as a plain loop: iterator adapters cost more than the arithmetic in
    // debug builds, and this runs once per (shard, host).
    let mut series = 0.0;
    let mut term = ATANH_SERIES.len();
    while term > 0 {
        term -= 1;
        series = series * t_squared + ATANH_SERIES[term];
    }
    exponent as f64 * std::f64::consts::LN_2 + 2.0 * t * series
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(hosts: &[(&str, u32)]) -> Vec<Host> {
        hosts
            .iter()
            .map(|&(id, capacity)| Host {
                id: id.to_owned(),
                capacity,
            })
            .collect()
    }

    fn shards_of(owners: &BTreeMap<u32, String>, host: &str) -> Vec<u32> {
        owners
            .iter()
            .filter(|(_, owner)| *owner == host)
            .map(|(&shard, _)| shard)
            .collect()
    }

    fn fresh(total_shards: u32, hosts: &[Host]) -> Assignment {
        assign(total_shards, hosts, &BTreeMap::new(), u32::MAX)
    }

    /// Runs passes with `moves_allowed` until one moves nothing; returns the passes' results.
    fn passes_until_settled(
        total_shards: u32,
        hosts: &[Host],
        mut current: BTreeMap<u32, String>,
        moves_allowed: u32,
    ) -> Vec<Assignment> {
        let mut passes = Vec::new();
        loop {
            let pass = assign(total_shards, hosts, &current, moves_allowed);
            current = pass.owners.clone();
            let settled = pass.moved.is_empty() && pass.reassigned.is_empty();
            passes.push(pass);
            if settled {
                return passes;
            }
            assert!(passes.len() < 1000, "no convergence");
        }
    }

    #[test]
    fn three_equal_hosts_share_96_shards_within_a_quarter_of_even() {
        let hosts = fleet(&[("host-a", 100), ("host-b", 100), ("host-c", 100)]);
        let assignment = fresh(96, &hosts);
        assert_eq!(assignment.owners.len(), 96);
        for host in ["host-a", "host-b", "host-c"] {
            let count = shards_of(&assignment.owners, host).len();
            assert!((24..=40).contains(&count), "{host} has {count} shards");
        }
        assert!(assignment.reassigned.is_empty() && assignment.moved.is_empty());
        assert!(assignment.unplaced.is_empty());
    }

    #[test]
    fn the_result_does_not_depend_on_the_order_of_hosts() {
        let hosts = fleet(&[("a", 30), ("b", 60), ("c", 30), ("d", 45), ("e", 0)]);
        let mut current = fresh(200, &hosts[..3]).owners;
        current.insert(7, "gone".to_owned());
        let expected = assign(150, &hosts, &current, 5);
        let mut shuffled = hosts.clone();
        for rotation in 0..shuffled.len() {
            shuffled.rotate_left(1);
            assert_eq!(
                assign(150, &shuffled, &current, 5),
                expected,
                "rotation {rotation}"
            );
            shuffled.reverse();
            assert_eq!(
                assign(150, &shuffled, &current, 5),
                expected,
                "reversed {rotation}"
            );
        }
    }

    #[test]
    fn a_host_listed_twice_counts_once_with_its_larger_capacity() {
        let once = fleet(&[("a", 5), ("b", 20)]);
        let twice = fleet(&[("a", 2), ("b", 20), ("a", 5)]);
        assert_eq!(fresh(30, &twice), fresh(30, &once));
    }

    #[test]
    fn a_pass_over_its_own_result_changes_nothing() {
        let hosts = fleet(&[("a", 40), ("b", 40), ("c", 40)]);
        let first = fresh(100, &hosts);
        let second = assign(100, &hosts, &first.owners, u32::MAX);
        assert_eq!(second.owners, first.owners);
        assert!(second.reassigned.is_empty() && second.moved.is_empty());
    }

    #[test]
    fn a_host_leaving_moves_only_its_own_shards() {
        let hosts = fleet(&[("a", 100), ("b", 100), ("c", 100), ("d", 100)]);
        let before = fresh(200, &hosts).owners;
        let after = assign(200, &hosts[..3], &before, 0);

        assert_eq!(after.reassigned, shards_of(&before, "d"));
        assert!(after.moved.is_empty());
        for (shard, owner) in &before {
            if owner != "d" {
                assert_eq!(&after.owners[shard], owner, "shard {shard}");
            }
        }
        assert!(shards_of(&after.owners, "d").is_empty());
        assert_eq!(after.owners.len(), 200);
    }

    #[test]
    fn a_joining_host_takes_its_share_and_nothing_else_moves() {
        let hosts = fleet(&[("a", 200), ("b", 200), ("c", 200), ("d", 200)]);
        let before = fresh(300, &hosts[..3]).owners;
        let after = assign(300, &hosts, &before, u32::MAX);

        let taken = shards_of(&after.owners, "d");
        assert_eq!(after.moved, taken);
        assert!((56..=94).contains(&taken.len()), "d took {}", taken.len());
        assert!(after.reassigned.is_empty());
        for (shard, owner) in &after.owners {
            if owner != "d" {
                assert_eq!(owner, &before[shard], "shard {shard}");
            }
        }
        // The same answer as a fleet that always had d: rendezvous has no memory.
        assert_eq!(after.owners, fresh(300, &hosts).owners);
    }

    #[test]
    fn the_move_budget_caps_each_pass_and_passes_converge_to_the_unlimited_answer() {
        let hosts = fleet(&[("a", 200), ("b", 200), ("c", 200), ("d", 200)]);
        let before = fresh(300, &hosts[..3]).owners;
        let unlimited = assign(300, &hosts, &before, u32::MAX);

        let passes = passes_until_settled(300, &hosts, before, 10);
        let mut moved_in_all: Vec<u32> = Vec::new();
        for pass in &passes {
            assert!(pass.moved.len() <= 10);
            assert!(pass.moved.iter().all(|shard| pass.owners[shard] == "d"));
            moved_in_all.extend(&pass.moved);
        }
        assert_eq!(passes.len(), unlimited.moved.len().div_ceil(10) + 1);
        moved_in_all.sort_unstable();
        assert_eq!(moved_in_all, unlimited.moved);
        assert_eq!(
            passes.last().map(|pass| &pass.owners),
            Some(&unlimited.owners)
        );
    }

    #[test]
    fn capacity_is_a_hard_cap_and_the_rest_is_unplaced() {
        let hosts = fleet(&[("a", 10), ("b", 10), ("c", 10)]);
        let assignment = fresh(40, &hosts);
        for host in ["a", "b", "c"] {
            assert_eq!(shards_of(&assignment.owners, host).len(), 10);
        }
        assert_eq!(assignment.unplaced, (30..40).collect::<Vec<_>>());
        assert_eq!(assignment.owners.len(), 30);
    }

    #[test]
    fn shards_that_ran_are_placed_before_shards_that_never_ran() {
        let hosts = fleet(&[("a", 5), ("b", 5)]);
        // Shards 6..12 ran on a host that is gone; 0..6 never ran.
        let current: BTreeMap<u32, String> =
            (6..12).map(|shard| (shard, "gone".to_owned())).collect();
        let assignment = assign(12, &hosts, &current, 0);
        assert_eq!(assignment.reassigned, (6..12).collect::<Vec<_>>());
        assert_eq!(assignment.unplaced, (4..6).collect::<Vec<_>>());
    }

    #[test]
    fn a_running_shard_is_not_stopped_to_start_another() {
        let hosts = fleet(&[("a", 3)]);
        let current: BTreeMap<u32, String> = [7, 8, 9].map(|shard| (shard, "a".to_owned())).into();
        let assignment = assign(10, &hosts, &current, u32::MAX);
        assert_eq!(shards_of(&assignment.owners, "a"), [7, 8, 9]);
        assert_eq!(assignment.unplaced, (0..7).collect::<Vec<_>>());
    }

    #[test]
    fn a_host_with_double_capacity_gets_about_double_the_shards() {
        let hosts = fleet(&[("a", 1000), ("b", 1000), ("c", 2000)]);
        let assignment = fresh(1000, &hosts);
        let count = |host| shards_of(&assignment.owners, host).len();
        let single = count("a") + count("b");
        let ratio = count("c") as f64 * 2.0 / single as f64;
        assert!(
            (1.7..=2.3).contains(&ratio),
            "double gets {ratio} times as many"
        );
    }

    #[test]
    fn a_draining_host_gets_nothing_and_its_shards_are_reassigned() {
        let all = fleet(&[("a", 100), ("b", 100), ("c", 100)]);
        let before = fresh(90, &all).owners;
        let draining = fleet(&[("a", 100), ("b", 100), ("c", 0)]);
        let after = assign(90, &draining, &before, 0);
        assert!(shards_of(&after.owners, "c").is_empty());
        assert_eq!(after.reassigned, shards_of(&before, "c"));
        assert!(after.moved.is_empty());
        assert_eq!(after.owners.len(), 90);
    }

    #[test]
    fn a_host_whose_capacity_shrinks_sheds_only_the_excess() {
        let hosts = fleet(&[("a", 100), ("b", 100)]);
        let before = fresh(100, &hosts).owners;
        let held = shards_of(&before, "a");
        let shrunk = fleet(&[("a", 10), ("b", 100)]);
        let after = assign(100, &shrunk, &before, 0);

        let kept = shards_of(&after.owners, "a");
        assert_eq!(kept.len(), 10);
        assert!(kept.iter().all(|shard| held.contains(shard)));
        let shed: Vec<u32> = held
            .into_iter()
            .filter(|shard| !kept.contains(shard))
            .collect();
        assert_eq!(after.reassigned, shed);
        assert!(after.moved.is_empty());
        for shard in shards_of(&before, "b") {
            assert_eq!(after.owners[&shard], "b");
        }
        // The shed shards went where they belong: nothing left to rebalance.
        let next = assign(100, &shrunk, &after.owners, u32::MAX);
        assert!(next.moved.is_empty() && next.reassigned.is_empty());
    }

    #[test]
    fn full_hosts_swap_shards_when_the_budget_covers_the_whole_swap() {
        let hosts = fleet(&[("a", 1), ("b", 1)]);
        let ideal = fresh(2, &hosts).owners;
        let swapped: BTreeMap<u32, String> =
            [(0, ideal[&1].clone()), (1, ideal[&0].clone())].into();

        let one_move = assign(2, &hosts, &swapped, 1);
        assert_eq!(
            one_move.owners, swapped,
            "half a swap would overfill a host"
        );
        assert!(one_move.moved.is_empty());

        let two_moves = assign(2, &hosts, &swapped, 2);
        assert_eq!(two_moves.owners, ideal);
        assert_eq!(two_moves.moved, [0, 1]);
    }

    #[test]
    fn with_no_hosts_every_shard_is_unplaced() {
        let current: BTreeMap<u32, String> = [(0, "gone".to_owned())].into();
        let assignment = assign(5, &[], &current, 3);
        assert!(assignment.owners.is_empty());
        assert_eq!(assignment.unplaced, [0, 1, 2, 3, 4]);
        assert!(assignment.reassigned.is_empty() && assignment.moved.is_empty());
    }

    #[test]
    fn owners_of_shards_past_the_count_are_forgotten() {
        let hosts = fleet(&[("a", 10)]);
        let current: BTreeMap<u32, String> = (0..8).map(|shard| (shard, "a".to_owned())).collect();
        let assignment = assign(4, &hosts, &current, 0);
        assert_eq!(shards_of(&assignment.owners, "a"), [0, 1, 2, 3]);
    }

    #[test]
    fn ten_thousand_shards_over_twenty_hosts_fit_and_fail_over() {
        let ids: Vec<String> = (0..20).map(|host| format!("host-{host:02}")).collect();
        let hosts: Vec<Host> = ids
            .iter()
            .map(|id| Host {
                id: id.clone(),
                capacity: 600,
            })
            .collect();
        let before = fresh(10_000, &hosts);
        assert_eq!(before.owners.len(), 10_000);
        let after = assign(10_000, &hosts[1..], &before.owners, 100);
        assert_eq!(after.reassigned, shards_of(&before.owners, "host-00"));
        assert!(after.owners.len() + after.unplaced.len() == 10_000);
    }

    #[test]
    fn the_logarithm_agrees_with_std_to_the_last_bits() {
        for x in [
            1e-16,
            2.0f64.powi(-52),
            0.001,
            0.25,
            0.5,
            std::f64::consts::FRAC_1_SQRT_2,
            0.75,
            0.9,
            0.999_999,
            1.0,
            std::f64::consts::SQRT_2,
            2.0,
            1e10,
        ]
        .into_iter()
        .chain((0..10_000).map(|n| (f64::from(n) + 0.5) / 10_000.0))
        {
            let error = (ln(x) - x.ln()).abs();
            assert!(
                error <= 4.0 * f64::EPSILON * x.ln().abs().max(1.0),
                "ln({x}) is off by {error}"
            );
        }
    }

    /// Mixed versions of the engine in one fleet must rank hosts the same way: a change to the
    /// hash or the score moves shards on upgrade, and must be a decision, not an accident.
    #[test]
    fn the_hash_and_scores_are_pinned() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        let hosts = fleet(&[("host-a", 12), ("host-b", 12), ("host-c", 12)]);
        let owners = fresh(12, &hosts).owners;
        let pinned: Vec<&str> = owners.values().map(String::as_str).collect();
        assert_eq!(pinned, PINNED_OWNERS);
        let fleet = Fleet::new(&hosts);
        let scores: Vec<u64> = (0..3)
            .map(|shard| fleet.hosts[shard].score(shard as u32).to_bits())
            .collect();
        assert_eq!(scores, PINNED_SCORE_BITS);
    }

    const PINNED_OWNERS: [&str; 12] = [
        "host-a", "host-b", "host-a", "host-a", "host-b", "host-b", "host-a", "host-b", "host-c",
        "host-b", "host-a", "host-b",
    ];
    const PINNED_SCORE_BITS: [u64; 3] = [
        0x408c_1351_ff88_4d81,
        0x402d_7323_10d3_8fa2,
        0x4020_ee0a_17c6_60b9,
    ];

    /// Random fleets, owners and budgets from a seed: every pass keeps its invariants, and
    /// passes with a budget of one chain reach the unlimited answer.
    #[test]
    fn random_fleets_keep_every_invariant() {
        for seed in 0..500u64 {
            check_random_fleet(seed);
        }
    }

    fn check_random_fleet(seed: u64) {
        let mut state = seed;
        let mut next = |below: u32| {
            state = state.wrapping_add(GOLDEN_GAMMA);
            u32::try_from(mix64(state) % u64::from(below)).expect("below a u32")
        };
        let total_shards = next(120);
        let host_count = next(7);
        let hosts: Vec<Host> = (0..host_count)
            .map(|host| Host {
                id: format!("h{host}"),
                capacity: next(4) * next(30),
            })
            .collect();
        let mut current = BTreeMap::new();
        for shard in 0..total_shards + 10 {
            if next(4) > 0 {
                current.insert(shard, format!("h{}", next(host_count + 2)));
            }
        }
        let moves_allowed = next(20);
        let pass = assign(total_shards, &hosts, &current, moves_allowed);
        let context = format!("seed {seed}: {hosts:?}");

        let capacity: BTreeMap<&str, u32> = hosts
            .iter()
            .map(|host| (host.id.as_str(), host.capacity))
            .collect();
        for (host, &cap) in &capacity {
            assert!(
                shards_of(&pass.owners, host).len() <= index(cap),
                "{context}"
            );
        }
        let mut accounted: Vec<u32> = pass
            .owners
            .keys()
            .copied()
            .chain(pass.unplaced.iter().copied())
            .collect();
        accounted.sort_unstable();
        assert_eq!(
            accounted,
            (0..total_shards).collect::<Vec<_>>(),
            "{context}"
        );
        assert!(pass.moved.len() <= index(moves_allowed), "{context}");
        for shard in &pass.moved {
            // Moved only from a live owner, and not also failed over.
            let from = current[shard].as_str();
            assert!(capacity.get(from).is_some_and(|&cap| cap > 0), "{context}");
            assert!(!pass.reassigned.contains(shard), "{context}");
        }
        for shard in &pass.reassigned {
            assert!(current.contains_key(shard), "{context}");
        }
        for (shard, owner) in &pass.owners {
            let was = current.get(shard);
            let changed = was != Some(owner);
            let listed = pass.moved.contains(shard) || pass.reassigned.contains(shard);
            assert_eq!(changed && was.is_some(), listed, "shard {shard}, {context}");
        }
        let total_capacity: u32 = hosts.iter().map(|host| host.capacity).sum();
        assert_eq!(
            pass.owners.len(),
            index(total_shards.min(total_capacity)),
            "{context}"
        );

        let unlimited = assign(total_shards, &hosts, &pass.owners, u32::MAX);
        let settled =
            passes_until_settled(total_shards, &hosts, pass.owners.clone(), host_count.max(1));
        assert_eq!(
            settled.last().map(|pass| &pass.owners),
            Some(&unlimited.owners),
            "{context}"
        );
        let again = assign(total_shards, &hosts, &unlimited.owners, u32::MAX);
        assert_eq!(again.owners, unlimited.owners, "{context}");
    }
}
