//! The fleet's Redis scripts against a real `redis-server`: leases, fencing, the shared
//! identify buckets and budget, sessions. Each test starts its own server on a free port.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::redis::RedisServer;
use shardgate::fleet::store::{Acquire, HostInfo, Renewal, Store, Take};
use shardgate::shard::Session;

const LEASE: Duration = Duration::from_secs(10);

fn store(server: &RedisServer) -> Store {
    Store::connect(&server.client(), "test").unwrap()
}

/// As if the fleet state began long ago (a new one keeps shards for a lease; see
/// `a_fleet_state_that_redis_lost_is_rebuilt_by_the_holders_first`).
fn age_the_epoch(server: &RedisServer) {
    let mut conn = server.client().get_connection().unwrap();
    redis::cmd("SET")
        .arg("sg:{test}:epoch")
        .arg(1)
        .query::<()>(&mut conn)
        .unwrap();
}

fn host(id: &str) -> HostInfo {
    HostInfo {
        id: id.to_owned(),
        admin: format!("127.0.0.1:1/{id}"),
        capacity: 100,
        pinned: Vec::new(),
    }
}

fn ids(store: &mut Store) -> Vec<String> {
    let now = store.now_ms().unwrap();
    store
        .hosts(now)
        .unwrap()
        .into_iter()
        .map(|record| record.info.id)
        .collect()
}

/// Makes `assigner` the assigner and points `shard` at `owner`.
fn assign(store: &mut Store, assigner: &str, shard: u32, owner: &str) {
    assert!(store.assigner(assigner, LEASE).unwrap().0);
    assert!(
        store
            .write_assignment(assigner, &[(shard, Some(owner))])
            .unwrap()
    );
}

#[test]
fn a_host_lease_runs_out_unless_renewed_and_says_when_it_is_new() {
    let server = RedisServer::start();
    let mut store = store(&server);
    let short = Duration::from_millis(300);
    assert!(
        store.host_beat(&host("a"), short, "{}").unwrap().fresh,
        "first beat"
    );
    assert!(
        !store.host_beat(&host("a"), short, "{}").unwrap().fresh,
        "a renewal"
    );
    store.host_beat(&host("b"), LEASE, "{}").unwrap();
    assert_eq!(ids(&mut store), ["a", "b"]);
    let now = store.now_ms().unwrap();
    let a = &store.hosts(now).unwrap()[0];
    assert_eq!(a.info, host("a"));
    assert!(a.lease_until_ms > now && a.lease_until_ms <= now + 300);

    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(ids(&mut store), ["b"], "a's lease ran out");
    assert!(
        store.host_beat(&host("a"), short, "{}").unwrap().fresh,
        "back, as new"
    );
    store.host_leave("b").unwrap();
    assert_eq!(ids(&mut store), ["a"]);
}

#[test]
fn one_assigner_at_a_time_and_a_dead_one_gives_way() {
    let server = RedisServer::start();
    let mut store = store(&server);
    let short = Duration::from_millis(300);
    store.host_beat(&host("a"), short, "{}").unwrap();
    store.host_beat(&host("b"), LEASE, "{}").unwrap();
    assert_eq!(store.assigner("a", LEASE).unwrap(), (true, "a".to_owned()));
    assert_eq!(store.assigner("b", LEASE).unwrap(), (false, "a".to_owned()));
    assert!(store.write_assignment("a", &[(0, Some("b"))]).unwrap());
    assert!(
        !store.write_assignment("b", &[(1, Some("b"))]).unwrap(),
        "only the assigner writes"
    );
    assert_eq!(
        store.assignment().unwrap(),
        BTreeMap::from([(0, "b".to_owned())])
    );
    // a's host lease runs out: its assigner lease (still 10 s) no longer counts.
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(store.assigner("b", LEASE).unwrap(), (true, "b".to_owned()));
    assert!(!store.write_assignment("a", &[(0, Some("a"))]).unwrap());
    assert!(store.write_assignment("b", &[(0, None)]).unwrap());
    assert!(store.assignment().unwrap().is_empty());
    // A host without a lease cannot become the assigner.
    store.host_leave("b").unwrap();
    assert_eq!(store.assigner("c", LEASE).unwrap(), (false, String::new()));
}

#[test]
fn a_shard_lease_goes_to_the_assigned_host_only_and_every_grant_fences_the_last() {
    let server = RedisServer::start();
    let mut store = store(&server);
    for id in ["a", "b"] {
        store.host_beat(&host(id), LEASE, "{}").unwrap();
    }
    age_the_epoch(&server);
    assign(&mut store, "a", 7, "a");
    assert_eq!(
        store.acquire(7, "b", LEASE, false).unwrap(),
        Acquire::NotAssigned
    );
    let Acquire::Granted(first) = store.acquire(7, "a", LEASE, false).unwrap() else {
        panic!("a is assigned shard 7")
    };
    assert_eq!(
        store.acquire(7, "a", LEASE, false).unwrap(),
        Acquire::Granted(first),
        "a retry keeps the token"
    );
    let session = Session {
        session_id: "s1".to_owned(),
        resume_url: Some("wss://resume.example".to_owned()),
        sequence: 41,
    };
    assert!(store.save_session(7, "a", first, &session, 16).unwrap());

    // The assignment moves the shard to b: b waits until a lets go.
    assign(&mut store, "a", 7, "b");
    assert_eq!(
        store.acquire(7, "b", LEASE, false).unwrap(),
        Acquire::Held(first)
    );
    assert!(!store.release(7, "b", first).unwrap(), "b does not hold it");
    assert!(store.release(7, "a", first).unwrap());
    let Acquire::Granted(second) = store.acquire(7, "b", LEASE, false).unwrap() else {
        panic!("released, and b is assigned")
    };
    assert!(second > first);

    // a, late, is fenced out of everything.
    assert_eq!(
        store.renew("a", LEASE, &[(7, first)]).unwrap(),
        [Renewal::Lost]
    );
    assert!(!store.release(7, "a", first).unwrap());
    let stale = Session {
        sequence: 99,
        ..session.clone()
    };
    assert!(!store.save_session(7, "a", first, &stale, 16).unwrap());
    let stored = store.load_session(7).unwrap().unwrap();
    assert_eq!((stored.session, stored.token), (session.clone(), first));
    // Many at once, in one round trip: each under its own token.
    let fresh = Session {
        sequence: 50,
        ..session.clone()
    };
    assert_eq!(
        store
            .save_sessions("b", &[(7, second, &fresh), (7, first, &stale)], 16)
            .unwrap(),
        [true, false]
    );
    assert_eq!(store.load_session(7).unwrap().unwrap().session.sequence, 50);
    assert_eq!(
        store.renew("b", LEASE, &[(7, second)]).unwrap(),
        [Renewal::Renewed]
    );

    // A pinned shard ignores the assignment; a host without a lease takes nothing.
    assert!(matches!(
        store.acquire(3, "a", LEASE, true).unwrap(),
        Acquire::Granted(_)
    ));
    assert_eq!(
        store.acquire(3, "nobody", LEASE, true).unwrap(),
        Acquire::HostExpired
    );
    let leases = store.leases(8).unwrap();
    assert_eq!(leases.keys().copied().collect::<Vec<_>>(), [3, 7]);
    assert_eq!((leases[&7].host.as_str(), leases[&7].token), ("b", second));
    assert!(leases[&7].ttl > Duration::from_secs(9));
}

#[test]
fn a_lease_that_is_not_renewed_runs_out_and_passes_on() {
    let server = RedisServer::start();
    let mut store = store(&server);
    for id in ["a", "b"] {
        store.host_beat(&host(id), LEASE, "{}").unwrap();
    }
    age_the_epoch(&server);
    assign(&mut store, "a", 0, "a");
    let short = Duration::from_millis(300);
    let Acquire::Granted(token) = store.acquire(0, "a", short, false).unwrap() else {
        panic!()
    };
    assign(&mut store, "a", 0, "b");
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(
        store.renew("a", short, &[(0, token)]).unwrap(),
        [Renewal::Renewed]
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        store.acquire(0, "b", LEASE, false).unwrap(),
        Acquire::Held(token),
        "renewed 200 ms ago for 300"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(matches!(
        store.acquire(0, "b", LEASE, false).unwrap(),
        Acquire::Granted(next) if next > token
    ));
}

/// Three hosts, each on its own connection and thread, ask for identifies of 12 shards in 2
/// buckets at once: every shard gets one, each bucket's grants are an interval apart on
/// Redis's clock, and each bucket serves its tickets in the order they were queued.
#[test]
fn three_hosts_share_the_buckets_first_come_first_served_an_interval_apart() {
    let server = RedisServer::start();
    let interval = Duration::from_millis(150);
    let mut setup = store(&server);
    for id in ["a", "b", "c"] {
        setup.host_beat(&host(id), LEASE, "{}").unwrap();
    }
    // Queue order: shards 0..12, host by shard % 3, bucket by shard % 2.
    for shard in 0..12u32 {
        let owner = ["a", "b", "c"][(shard % 3) as usize];
        setup
            .enqueue_identify(shard % 2, &format!("{shard}"), owner, false)
            .unwrap();
    }
    let grants: Vec<(u32, u64)> = std::thread::scope(|scope| {
        let hosts: Vec<_> = (0..3u32)
            .map(|index| {
                let server = &server;
                scope.spawn(move || {
                    let mut store = store(server);
                    let mut mine: Vec<u32> = (0..12).filter(|shard| shard % 3 == index).collect();
                    let mut granted = Vec::new();
                    let deadline = Instant::now() + Duration::from_secs(20);
                    while !mine.is_empty() {
                        assert!(
                            Instant::now() < deadline,
                            "host {index} still waits: {mine:?}"
                        );
                        let mut shortest = Duration::from_millis(20);
                        mine.retain(|&shard| {
                            match store
                                .take_identify(shard % 2, &shard.to_string(), interval, 0, true)
                                .unwrap()
                            {
                                Take::Granted { at_ms } => {
                                    granted.push((shard, at_ms));
                                    false
                                }
                                Take::Wait(Some(wait)) => {
                                    shortest = shortest.min(wait);
                                    true
                                }
                                Take::Wait(None) => true,
                                other => panic!("shard {shard}: {other:?}"),
                            }
                        });
                        std::thread::sleep(shortest);
                    }
                    granted
                })
            })
            .collect();
        hosts
            .into_iter()
            .flat_map(|host| host.join().unwrap())
            .collect()
    });
    assert_eq!(grants.len(), 12);
    for bucket in 0..2 {
        let mut in_bucket: Vec<(u64, u32)> = grants
            .iter()
            .filter(|(shard, _)| shard % 2 == bucket)
            .map(|&(shard, at)| (at, shard))
            .collect();
        in_bucket.sort_unstable();
        let order: Vec<u32> = in_bucket.iter().map(|&(_, shard)| shard).collect();
        let queued: Vec<u32> = (0..12).filter(|shard| shard % 2 == bucket).collect();
        assert_eq!(order, queued, "bucket {bucket} first come first served");
        for pair in in_bucket.windows(2) {
            assert!(
                pair[1].0 - pair[0].0 >= 150,
                "bucket {bucket}: {pair:?} closer than the interval"
            );
        }
    }
    assert_eq!(setup.identify_stats().unwrap(), (12, 0));
}

#[test]
fn reconnects_go_first_and_a_dead_hosts_tickets_do_not_hold_a_bucket() {
    let server = RedisServer::start();
    let mut store = store(&server);
    store
        .host_beat(&host("doomed"), Duration::from_millis(200), "{}")
        .unwrap();
    store.host_beat(&host("a"), LEASE, "{}").unwrap();
    let interval = Duration::from_millis(10);
    assert_eq!(store.enqueue_identify(0, "d", "doomed", false).unwrap(), 0);
    assert_eq!(store.enqueue_identify(0, "new", "a", false).unwrap(), 1);
    assert_eq!(
        store.enqueue_identify(0, "again", "a", true).unwrap(),
        0,
        "a reconnect goes ahead of new sessions"
    );
    assert_eq!(
        store.enqueue_identify(0, "new", "a", false).unwrap(),
        2,
        "idempotent"
    );
    assert!(matches!(
        store.take_identify(0, "again", interval, 0, false).unwrap(),
        Take::Granted { .. }
    ));
    // "d" heads the queue while its host lives.
    std::thread::sleep(interval);
    assert_eq!(
        store.take_identify(0, "new", interval, 0, true).unwrap(),
        Take::Wait(None)
    );
    std::thread::sleep(Duration::from_millis(250));
    assert!(matches!(
        store.take_identify(0, "new", interval, 0, true).unwrap(),
        Take::Granted { .. }
    ));
    assert_eq!(
        store.take_identify(0, "d", interval, 0, true).unwrap(),
        Take::NotQueued
    );
    assert_eq!(store.identify_stats().unwrap(), (2, 1));
    // A cancelled ticket is gone, and says so.
    store.enqueue_identify(1, "x", "a", false).unwrap();
    assert!(store.cancel_identify(1, "x").unwrap());
    assert!(!store.cancel_identify(1, "x").unwrap());
}

#[test]
fn a_grant_wakes_the_next_tickets_host_and_a_late_identify_pushes_the_bucket() {
    let server = RedisServer::start();
    let mut store = store(&server);
    store.host_beat(&host("a"), LEASE, "{}").unwrap();
    let mut listener = server.client().get_connection().unwrap();
    let mut pubsub = listener.as_pubsub();
    pubsub.subscribe(store.keys().wake_channel()).unwrap();
    pubsub
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    store.host_beat(&host("b"), LEASE, "{}").unwrap();
    store.enqueue_identify(3, "t", "a", false).unwrap();
    store.enqueue_identify(3, "next", "b", false).unwrap();
    let interval = Duration::from_millis(500);
    assert!(matches!(
        store.take_identify(3, "t", interval, 0, true).unwrap(),
        Take::Granted { .. }
    ));
    let message = pubsub.get_message().unwrap();
    assert_eq!(
        message.get_payload::<String>().unwrap(),
        "3:b:500",
        "the bucket, the host whose ticket is next, and the interval it waits"
    );
    assert!(store.cancel_identify(3, "next").unwrap());

    // The identify went out 300 ms after its grant: the next waits 500 ms from then.
    std::thread::sleep(Duration::from_millis(300));
    store.identify_sent(3, interval).unwrap();
    store.enqueue_identify(3, "u", "a", false).unwrap();
    let Take::Wait(Some(wait)) = store.take_identify(3, "u", interval, 0, true).unwrap() else {
        panic!("within the interval")
    };
    assert!(wait > Duration::from_millis(400), "{wait:?}");
}

#[test]
fn the_days_budget_is_shared_keeps_a_reserve_for_reconnects_and_takes_the_lower_count() {
    let server = RedisServer::start();
    let mut store = store(&server);
    store.host_beat(&host("a"), LEASE, "{}").unwrap();
    let hour = Duration::from_secs(3600);
    assert_eq!(store.reconcile_budget(1000, 3, hour).unwrap().0, 3);
    // Another host's answer, same period, more left (it asked before our identifies): ours wins.
    let (remaining, reset) = store.reconcile_budget(1000, 5, hour).unwrap();
    assert_eq!(remaining, 3);
    assert!(reset > hour - Duration::from_secs(5) && reset <= hour);
    let no_wait = Duration::ZERO;
    store.enqueue_identify(0, "n1", "a", false).unwrap();
    assert!(matches!(
        store.take_identify(0, "n1", no_wait, 2, true).unwrap(),
        Take::Granted { .. }
    ));
    store.enqueue_identify(0, "n2", "a", false).unwrap();
    let Take::BudgetSpent(until) = store.take_identify(0, "n2", no_wait, 2, true).unwrap() else {
        panic!("2 left, both kept for reconnects")
    };
    assert!(until > hour - Duration::from_secs(5));
    store.enqueue_identify(0, "r1", "a", true).unwrap();
    assert!(matches!(
        store.take_identify(0, "r1", no_wait, 2, false).unwrap(),
        Take::Granted { .. }
    ));
    // A new period (reset a day away, not an hour): Discord's count is taken as it is.
    let day = Duration::from_secs(86_000);
    assert_eq!(store.reconcile_budget(1000, 1000, day).unwrap().0, 1000);
}

/// Redis restarted empty while hosts ran shards: a new epoch begins; the holders take their
/// own shards back (new tokens, higher than before) and no one else may take a shard for a
/// lease's length, so that a shard still running on a host Redis forgot is never started twice.
#[test]
fn a_fleet_state_that_redis_lost_is_rebuilt_by_the_holders_first() {
    let mut server = RedisServer::start();
    let mut store = store(&server);
    let lease = Duration::from_millis(600);
    for id in ["a", "b"] {
        store.host_beat(&host(id), LEASE, "{}").unwrap();
    }
    assert!(matches!(
        store.acquire(1, "a", lease, true).unwrap(),
        Acquire::Quiet(wait) if wait <= lease && wait > lease / 2
    ));
    std::thread::sleep(lease);
    let Acquire::Granted(before) = store.acquire(1, "a", lease, true).unwrap() else {
        panic!("the epoch is a lease old")
    };

    server.restart();
    let mut store = self::store(&server);
    let beat = store.host_beat(&host("b"), LEASE, "{}").unwrap();
    assert!(beat.fresh);
    assert!(beat.epoch_ms + 1000 > beat.now_ms, "a new epoch");
    assign(&mut store, "b", 1, "b");
    assert!(
        matches!(
            store.acquire(1, "b", lease, false).unwrap(),
            Acquire::Quiet(_)
        ),
        "b may not take shard 1 yet: a may still run it"
    );
    // The new assigner kept shard 1 where it was.
    assign(&mut store, "b", 1, "a");
    store.host_beat(&host("a"), LEASE, "{}").unwrap();
    let [Renewal::Retaken(after)] = store.renew("a", lease, &[(1, before)]).unwrap()[..] else {
        panic!("a runs shard 1 and takes it back")
    };
    assert!(
        after > before,
        "tokens keep growing across the loss: {after} > {before}"
    );
    // Past the quiet time, with a renewing its lease meanwhile.
    for _ in 0..3 {
        std::thread::sleep(lease / 3);
        assert_eq!(
            store.renew("a", lease, &[(1, after)]).unwrap(),
            [Renewal::Renewed]
        );
    }
    assign(&mut store, "b", 1, "b");
    assert_eq!(
        store.acquire(1, "b", lease, false).unwrap(),
        Acquire::Held(after)
    );
    // Where the new assignment names another host, the holder does not take it back.
    assign(&mut store, "b", 2, "b");
    assert_eq!(store.renew("a", lease, &[(2, 5)]).unwrap(), [Renewal::Lost]);
}
