//! The mock gateway reshards like Discord: two shard sets with different `num_shards` on one
//! token, connected at once, receive the same events. Each guild event reaches every covering
//! session (`(guild_id >> 22) % num_shards == shard_id`) with byte-identical `t` and `d` and that
//! session's own `s`; guild-less events reach shard 0 of each set; the ledger names every event
//! by one id in every session. Raw clients, as in `mock_rules.rs`.
//!
//! Each test runs its own mock on free ports with short windows; every wait is bounded.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use mock_gateway::{
    EventRecord, Fault, Ledger, MockConfig, MockGateway, SessionLedger, event_content_hash,
};
use serde_json::{Value, json};
use shardgate_tests::raw::{Compression, Msg, RawClient, Received};
use shardgate_tests::{TestMock, owned_guilds, rest, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// GUILDS | GUILD_MESSAGES: no privileged intent.
const INTENTS: u64 = 1 | (1 << 9);
/// Identify window of these tests; the two sets' shard 0 share bucket 0.
const IDENTIFY_WINDOW_MS: u64 = 60;

/// Every identify bucket its own (but shard 0 of both sets), a steady stream of 100/s, small
/// guilds, every event recorded, heartbeats not needed within a test.
fn config(seed: u64, guilds: usize) -> MockConfig {
    MockConfig {
        seed: Some(seed),
        guilds,
        max_concurrency: 16,
        identify_window_ms: IDENTIFY_WINDOW_MS,
        heartbeat_interval_ms: 60_000,
        rate: 100.0,
        guild_create_bytes: 0,
        record_events: true,
        ..MockConfig::default()
    }
}

/// The first seed from `seed` whose guilds satisfy `fits`.
fn spawn_where(mut base: MockConfig, fits: impl Fn(&[u64]) -> bool) -> TestMock {
    let first = base.seed.unwrap_or(1);
    for seed in first..first + 2000 {
        base.seed = Some(seed);
        let mock = TestMock::spawn(base.clone());
        if fits(&mock.guild_ids()) {
            return mock;
        }
    }
    panic!("no seed in {first}..{} fits", first + 2000);
}

/// World events by id: (`s` or the shard's index in its set, `t`, `d` bytes).
type Events<K> = BTreeMap<u64, (K, String, Vec<u8>)>;

/// One session of a raw client, and every dispatch it received.
struct Shard {
    client: RawClient,
    shard: [u32; 2],
    session_id: String,
    dispatches: Vec<Msg>,
}

impl Shard {
    /// Connects, identifies as `shard`, reads READY.
    async fn identify(mock: &MockGateway, shard: [u32; 2], compression: Compression) -> Shard {
        let mut client = RawClient::connect(mock.ws_url(), compression).await;
        client.hello().await;
        client.identify(mock.token(), shard, INTENTS).await;
        let ready = client.next_msg().await;
        assert_eq!(ready.t(), Some("READY"), "{:?}", ready.value);
        assert_eq!(ready.s(), Some(1));
        let session_id = ready.d()["session_id"].as_str().expect("id").to_owned();
        Shard {
            client,
            shard,
            session_id,
            dispatches: vec![ready],
        }
    }

    /// Identifies shards `0..total` of `total`.
    async fn set(mock: &MockGateway, total: u32, compression: Compression) -> Vec<Shard> {
        let mut set = Vec::new();
        for shard in 0..total {
            set.push(Shard::identify(mock, [shard, total], compression).await);
        }
        set
    }

    /// Reads what arrives until nothing came for `quiet`; checks sequences are consecutive.
    async fn read_until_quiet(&mut self, quiet: Duration) {
        while let Some(received) = self.client.recv_timeout(quiet).await {
            match received {
                Received::Message(msg) if msg.is_dispatch() => self.keep(msg),
                Received::Message(msg) => panic!("{:?}: unexpected {:?}", self.shard, msg.value),
                other => panic!("{:?}: unexpected {other:?}", self.shard),
            }
        }
    }

    /// Reads dispatches until `done` holds for one.
    async fn read_until(&mut self, done: impl FnMut(&Msg) -> bool) -> Msg {
        let mut seen = self.client.read_until(Duration::from_secs(10), done).await;
        let last = seen.pop().expect("read_until returns the matching message");
        for msg in seen {
            self.keep(msg);
        }
        self.keep(last.clone());
        last
    }

    fn keep(&mut self, msg: Msg) {
        assert!(msg.is_dispatch(), "{:?}", msg.value);
        if let Some(last) = self.dispatches.last().and_then(Msg::s) {
            assert_eq!(msg.s(), Some(last + 1), "{:?}: consecutive s", self.shard);
        }
        self.dispatches.push(msg);
    }

    fn last_seq(&self) -> u64 {
        self.dispatches.last().and_then(Msg::s).unwrap_or(0)
    }

    fn ledger<'l>(&self, ledger: &'l Ledger) -> &'l SessionLedger {
        ledger.shards[&self.shard[0]]
            .sessions
            .iter()
            .find(|s| s.session_id == self.session_id)
            .expect("the session is in the ledger")
    }

    /// Received world events by id: (`s`, `t`, `d` bytes).
    fn events(&self, ledger: &Ledger) -> Events<u64> {
        let session = self.ledger(ledger);
        self.dispatches
            .iter()
            .filter_map(|msg| {
                let seq = msg.s()?;
                let id = session.event_id(seq)?;
                let t = msg.t()?.to_owned();
                Some((id, (seq, t, d_bytes(&msg.raw).to_vec())))
            })
            .collect()
    }
}

/// The exact bytes of `d` in a dispatch as the server wrote it: `{"t":…,"s":…,"op":0,"d":…}`.
fn d_bytes(raw: &[u8]) -> &[u8] {
    // The first `"d":` is the envelope's: `t`, `s` and `op` come before it.
    let at = raw
        .windows(4)
        .position(|w| w == br#""d":"#)
        .map(|at| at + 4)
        .expect("a d key");
    &raw[at..raw.len() - 1]
}

fn guild_id_of(value: &Value) -> Option<u64> {
    value.as_str().and_then(|id| id.parse().ok())
}

/// The events the mock recorded, by id.
fn recorded(mock: &MockGateway) -> BTreeMap<u64, EventRecord> {
    mock.events().into_iter().map(|e| (e.id, e)).collect()
}

/// Whether session `[shard, total]` covers an event of `guild` (`None`: a DM).
fn covers([shard, total]: [u32; 2], guild: Option<u64>) -> bool {
    match guild {
        Some(guild) => (guild >> 22) % u64::from(total) == u64::from(shard),
        None => shard == 0,
    }
}

async fn post(mock: &MockGateway, path: &str, body: &Value) -> (u16, Value) {
    let host = mock
        .http_base()
        .strip_prefix("http://")
        .expect("plain http")
        .to_owned();
    let body = body.to_string();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let exchange = async {
        let mut stream = TcpStream::connect(&host).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = timeout(Duration::from_secs(5), exchange)
        .await
        .expect("a response within 5 s")
        .expect("the exchange works");
    let text = String::from_utf8(raw).expect("UTF-8");
    let status = text[9..12].parse().expect("status code");
    let (_, body) = text.split_once("\r\n\r\n").expect("a body");
    (status, serde_json::from_str(body).expect("JSON body"))
}

async fn gateway_bot(mock: &MockGateway) -> Value {
    let auth = format!("Bot {}", mock.token());
    rest::get(mock.http_base(), "/api/v10/gateway/bot", Some(&auth))
        .await
        .json()
}

async fn past_identify_window() {
    tokio::time::sleep(Duration::from_millis(IDENTIFY_WINDOW_MS + 20)).await;
}

// ---------------------------------------------------------------------------------------------
// One world, two sets
// ---------------------------------------------------------------------------------------------

/// A 2-shard set (zstd-stream) and a 4-shard set (zlib-stream) at once, in a world where shard 0
/// of 2 owns no guild (so its partition makes the direct messages) and every odd shard of 4
/// owns some. Until the stream ends: every event of the 4-shard set reached the 2-shard set
/// with the same `t` and `d` bytes (and the recorded hash), under each session's own `s`; each
/// event reached exactly the sessions covering its guild; DMs only shard 0 of each set; the
/// ledger's runs map each session's seqs to those ids.
#[tokio::test]
async fn two_sets_receive_the_same_events_under_their_own_sequences() {
    let events_per_shard = 150;
    let mock = spawn_where(
        MockConfig {
            events_per_shard,
            ..config(1, 4)
        },
        |guilds| {
            let odd = |residue| owned_guilds(guilds, residue, 4).len();
            owned_guilds(guilds, 0, 2).is_empty() && odd(1) > 0 && odd(3) > 0
        },
    );
    let mut two = Shard::set(&mock, 2, Compression::ZstdStream).await;
    past_identify_window().await;
    let mut four = Shard::set(&mock, 4, Compression::ZlibStream).await;

    // The 2-shard set covers whole partitions: it gets every event of the stream.
    assert!(
        wait_until(Duration::from_secs(10), || {
            let ledger = mock.ledger();
            two.iter()
                .all(|s| s.ledger(&ledger).steady_dispatches() == events_per_shard)
        })
        .await,
        "the stream ends"
    );
    for shard in two.iter_mut().chain(four.iter_mut()) {
        shard.read_until_quiet(Duration::from_millis(500)).await;
    }
    let ledger = mock.ledger();
    assert!(ledger.violations.is_empty(), "{:#?}", ledger.violations);
    let records = recorded(&mock);
    let mut by_set: Vec<Events<usize>> = Vec::new();
    for set in [&two, &four] {
        let mut events = BTreeMap::new();
        for (index, shard) in set.iter().enumerate() {
            let session = shard.ledger(&ledger);
            assert_eq!(session.last_seq, shard.last_seq(), "{:?}", shard.shard);
            assert!(session.ended.is_none());
            for (id, (seq, t, d)) in shard.events(&ledger) {
                let record = &records[&id];
                assert_eq!(record.t, t, "event {id} at {:?} s {seq}", shard.shard);
                assert_eq!(record.hash, event_content_hash(t.as_bytes(), &d));
                assert!(
                    covers(shard.shard, record.guild_id),
                    "{:?} got event {id} of guild {:?}",
                    shard.shard,
                    record.guild_id
                );
                assert!(
                    events.insert(id, (index, t, d)).is_none(),
                    "event {id} twice in one set"
                );
            }
        }
        by_set.push(events);
    }
    let (in_two, in_four) = (&by_set[0], &by_set[1]);
    assert!(
        in_four.len() > 200,
        "{} events in the 4-shard set",
        in_four.len()
    );
    for (id, (_, t, d)) in in_four {
        let (_, t_two, d_two) = in_two.get(id).expect("every event also in the 2-shard set");
        assert_eq!((t, d), (t_two, d_two), "event {id}: same t and d bytes");
    }
    // From each 4-shard session's first event of a timeline (id >> 40) on, it got every event
    // of that timeline it covers.
    for shard in &four {
        let taken = shard.events(&ledger);
        let mut firsts: BTreeMap<u64, u64> = BTreeMap::new();
        for id in taken.keys() {
            firsts.entry(id >> 40).or_insert(*id);
        }
        for (timeline, first) in firsts {
            let missing: Vec<u64> = in_two
                .keys()
                .filter(|id| *id >> 40 == timeline && **id > first)
                .filter(|id| covers(shard.shard, records[id].guild_id))
                .filter(|id| !taken.contains_key(id))
                .copied()
                .collect();
            assert!(missing.is_empty(), "{:?} missed {missing:?}", shard.shard);
        }
    }
    // DMs (partition 0 holds no guild) went to shard 0 of each set and nowhere else.
    let dms: BTreeSet<u64> = records
        .values()
        .filter(|r| r.guild_id.is_none())
        .map(|r| r.id)
        .collect();
    assert!(
        !dms.is_empty(),
        "the guild-less partition made direct messages"
    );
    assert!(dms.iter().all(|id| in_two[id].0 == 0));
    assert!(
        dms.iter()
            .filter_map(|id| in_four.get(id))
            .all(|e| e.0 == 0)
    );
    assert!(
        four[0].events(&ledger).keys().any(|id| dms.contains(id)),
        "shard 0 of 4 gets DMs"
    );
    // Each 2-shard session took its partition whole: one run of ids, after READY and backfill.
    for shard in &two {
        let session = shard.ledger(&ledger);
        assert_eq!(session.event_runs.len(), 1, "{:?}", session.event_runs);
        let [first_seq, _, count] = session.event_runs[0];
        assert_eq!(first_seq + count - 1, session.last_seq);
        assert_eq!(count, events_per_shard);
    }
    // Shard 2 of 4 owns no guild and is not shard 0: nothing but READY.
    assert_eq!(four[2].dispatches.len(), 1);
    // Resharding recommended by nobody: identifies of both sets spent the start limit.
    let bot = gateway_bot(&mock).await;
    assert_eq!(
        bot["session_start_limit"]["remaining"],
        1000 - 6,
        "identifies of every set count"
    );
}

// ---------------------------------------------------------------------------------------------
// Guild changes
// ---------------------------------------------------------------------------------------------

/// The guild ids (`d.id`) of the dispatches named `t` among `dispatches`.
fn guild_ids_of(dispatches: &[Msg], t: &str) -> BTreeSet<u64> {
    dispatches
        .iter()
        .filter(|m| m.t() == Some(t))
        .filter_map(|m| guild_id_of(&m.d()["id"]))
        .collect()
}

/// Guilds added while a 2-shard and a 3-shard set are connected arrive as a GUILD_CREATE join
/// in the covering session of each set, with the same `d`; removed ones as a GUILD_DELETE.
#[tokio::test]
async fn guild_changes_reach_both_sets() {
    let mock = spawn_where(
        MockConfig {
            events_per_shard: 20,
            ..config(5, 8)
        },
        |guilds| {
            let owns = |shard, total| !owned_guilds(guilds, shard, total).is_empty();
            (0..2).all(|shard| owns(shard, 2)) && (0..3).all(|shard| owns(shard, 3))
        },
    );
    let mut two = Shard::set(&mock, 2, Compression::ZstdStream).await;
    past_identify_window().await;
    let mut three = Shard::set(&mock, 3, Compression::None).await;
    // The backfill and the short steady stream.
    for shard in two.iter_mut().chain(three.iter_mut()) {
        shard.read_until_quiet(Duration::from_millis(400)).await;
    }
    let marks: Vec<usize> = two
        .iter()
        .chain(&three)
        .map(|s| s.dispatches.len())
        .collect();

    mock.set_guild_count(14);
    let grown = mock.guild_ids();
    let added: Vec<u64> = grown[8..].to_vec();
    // The last ones go: two of the first eight and every guild just added.
    mock.set_guild_count(6);
    let removed: Vec<u64> = grown[6..].to_vec();

    let mut creates: BTreeMap<u64, Vec<(u32, Vec<u8>)>> = BTreeMap::new();
    for (shard, mark) in two.iter_mut().chain(three.iter_mut()).zip(marks) {
        shard.read_until_quiet(Duration::from_millis(400)).await;
        let [id, total] = shard.shard;
        let later = &shard.dispatches[mark..];
        let joins: BTreeSet<u64> = owned_guilds(&added, id, total).into_iter().collect();
        let deletes: BTreeSet<u64> = owned_guilds(&removed, id, total).into_iter().collect();
        assert_eq!(
            guild_ids_of(later, "GUILD_CREATE"),
            joins,
            "{:?}",
            shard.shard
        );
        assert_eq!(
            guild_ids_of(later, "GUILD_DELETE"),
            deletes,
            "{:?}",
            shard.shard
        );
        for msg in later.iter().filter(|m| m.t() == Some("GUILD_CREATE")) {
            let guild = guild_id_of(&msg.d()["id"]).expect("id");
            creates
                .entry(guild)
                .or_default()
                .push((total, d_bytes(&msg.raw).to_vec()));
        }
    }
    assert_eq!(creates.len(), added.len());
    for (guild, copies) in &creates {
        assert_eq!(copies.len(), 2, "guild {guild}: one join per set");
        assert_ne!(copies[0].0, copies[1].0);
        assert_eq!(copies[0].1, copies[1].1, "the same GUILD_CREATE bytes");
    }
    let ledger = mock.ledger();
    assert!(ledger.violations.is_empty(), "{:#?}", ledger.violations);
}

/// Guilds added past `--max-guilds-per-shard` close each live session that now holds too many
/// with 4011 (ended `close_4011` in the ledger); the others go on.
#[tokio::test]
async fn guilds_added_past_the_limit_close_live_sessions_with_4011() {
    let mock = spawn_where(
        MockConfig {
            max_guilds_per_shard: 4,
            ..config(9, 6)
        },
        |guilds| (0..2).all(|shard| owned_guilds(guilds, shard, 2).len() <= 4),
    );
    let mut two = Shard::set(&mock, 2, Compression::None).await;
    past_identify_window().await;
    let mut four = Shard::set(&mock, 4, Compression::ZstdStream).await;
    mock.set_guild_count(12);
    let after = mock.guild_ids();
    let over = |[shard, total]: [u32; 2]| owned_guilds(&after, shard, total).len() > 4;
    let closed: Vec<[u32; 2]> = two
        .iter()
        .chain(&four)
        .map(|s| s.shard)
        .filter(|s| over(*s))
        .collect();
    assert!(!closed.is_empty(), "12 guilds on 2 shards of 4 at most");
    for shard in two.iter_mut().chain(four.iter_mut()) {
        let [id, total] = shard.shard;
        if over(shard.shard) {
            assert_eq!(shard.client.expect_close().await, 4011, "{:?}", shard.shard);
        } else if !owned_guilds(&after, id, total).is_empty() {
            // Still streaming.
            let next = shard
                .read_until(|m| !matches!(m.t(), Some("GUILD_CREATE" | "READY")))
                .await;
            assert!(next.is_dispatch());
        }
    }
    let ledger = mock.ledger();
    for shard in two.iter().chain(&four) {
        let ended = shard.ledger(&ledger).ended.as_deref();
        let want = over(shard.shard).then_some("close_4011");
        assert_eq!(ended, want, "{:?}", shard.shard);
    }
    // At IDENTIFY the limit is checked as before.
    past_identify_window().await;
    let [shard, total] = closed[0];
    let mut again = RawClient::connect(mock.ws_url(), Compression::None).await;
    again.hello().await;
    again.identify(mock.token(), [shard, total], INTENTS).await;
    assert_eq!(again.expect_close().await, 4011);
}

// ---------------------------------------------------------------------------------------------
// Control
// ---------------------------------------------------------------------------------------------

/// `/gateway/bot`'s recommended shards change at run time (HTTP and the library method).
#[tokio::test]
async fn recommended_shards_change_at_run_time() {
    let mock = TestMock::spawn(config(3, 1500));
    assert_eq!(gateway_bot(&mock).await["shards"], 2, "ceil(1500 / 1000)");
    let (status, body) = post(&mock, "/_mock/recommended-shards", &json!({"shards": 8})).await;
    assert_eq!((status, &body), (200, &json!({"shards": 8})));
    assert_eq!(gateway_bot(&mock).await["shards"], 8);
    assert_eq!(mock.recommended_shards(), 8);
    let (status, _) = post(&mock, "/_mock/recommended-shards", &json!({"shards": 0})).await;
    assert_eq!(status, 400);
    assert_eq!(mock.set_recommended_shards(Some(16)), 16);
    assert_eq!(gateway_bot(&mock).await["shards"], 16);
    let (status, body) = post(&mock, "/_mock/recommended-shards", &json!({"shards": null})).await;
    assert_eq!((status, &body), (200, &json!({"shards": 2})));
    mock.set_guild_count(3500);
    assert_eq!(
        gateway_bot(&mock).await["shards"],
        4,
        "the default follows the guilds"
    );
}

/// `GET /_mock/events` serves what `MockGateway::events` returns; without `--record-events` it
/// is empty and says so, while the per-session runs are kept.
#[tokio::test]
async fn events_endpoint_and_recording_switch() {
    for record_events in [true, false] {
        let mock = TestMock::spawn(MockConfig {
            record_events,
            events_per_shard: 20,
            rate: 0.0,
            ..config(4, 3)
        });
        let mut shard = Shard::identify(&mock, [0, 1], Compression::None).await;
        shard.read_until_quiet(Duration::from_millis(300)).await;
        let served = rest::get(mock.http_base(), "/_mock/events", None)
            .await
            .json();
        assert_eq!(served["recording"], record_events);
        let served: Vec<EventRecord> =
            serde_json::from_value(served["events"].clone()).expect("records");
        assert_eq!(served, mock.events());
        assert_eq!(served.len(), if record_events { 20 } else { 0 });
        let ledger = mock.ledger();
        assert_eq!(shard.ledger(&ledger).event_runs.len(), 1);
        assert_eq!(shard.events(&ledger).len(), 20);
    }
}

// ---------------------------------------------------------------------------------------------
// A late set, and resumes
// ---------------------------------------------------------------------------------------------

/// Sessions of a second set that connect while the first streams see only the events made from
/// their READY on: none that the first set had already received, and every later one they cover.
#[tokio::test]
async fn a_late_set_sees_only_events_from_its_ready_on() {
    let events_per_shard = 200;
    let mock = TestMock::spawn(MockConfig {
        events_per_shard,
        ..config(7, 10)
    });
    let mut one = Shard::identify(&mock, [0, 1], Compression::ZstdStream).await;
    one.read_until(|m| m.s() == Some(1 + 10 + 40)).await;
    let seen_before = one.last_seq();
    past_identify_window().await;
    let mut late = Shard::set(&mock, 2, Compression::ZstdStream).await;

    assert!(
        wait_until(Duration::from_secs(10), || {
            one.ledger(&mock.ledger()).steady_dispatches() == events_per_shard
        })
        .await
    );
    one.read_until_quiet(Duration::from_millis(500)).await;
    for shard in &mut late {
        shard.read_until_quiet(Duration::from_millis(500)).await;
    }
    let ledger = mock.ledger();
    let records = recorded(&mock);
    let all = one.events(&ledger);
    let before: BTreeSet<u64> = all
        .iter()
        .filter(|(_, (seq, _, _))| *seq <= seen_before)
        .map(|(id, _)| *id)
        .collect();
    for shard in &late {
        let taken = shard.events(&ledger);
        let first = *taken.keys().next().expect("the late session got events");
        assert!(
            before.iter().all(|id| *id < first),
            "{:?}: first event {first} not after what the first set had seen",
            shard.shard
        );
        let expected: BTreeSet<u64> = all
            .keys()
            .filter(|id| **id >= first && covers(shard.shard, records[id].guild_id))
            .copied()
            .collect();
        assert_eq!(taken.keys().copied().collect::<BTreeSet<_>>(), expected);
        for (id, (_, t, d)) in &taken {
            assert_eq!((t, d), (&all[id].1, &all[id].2), "event {id}");
        }
        // Its own sequences: READY, its backfill, then the events.
        let owned = owned_guilds(&mock.guild_ids(), shard.shard[0], 2).len() as u64;
        assert_eq!(shard.ledger(&ledger).event_runs[0][0], 2 + owned);
    }
    assert!(ledger.violations.is_empty(), "{:#?}", ledger.violations);
}

/// A session of one set drops its connection and resumes while the other set streams on: the
/// resumed session gets every event it missed, in order, under its own sequences, and the other
/// set sees no gap, no reconnect and no duplicate. A fault aimed at one set leaves the other
/// alone.
#[tokio::test]
async fn a_resume_in_one_set_does_not_disturb_the_other() {
    let events_per_shard = 300;
    let mock = TestMock::spawn(MockConfig {
        events_per_shard,
        ..config(8, 12)
    });
    let mut two = Shard::set(&mock, 2, Compression::ZstdStream).await;
    past_identify_window().await;
    let mut four = Shard::set(&mock, 4, Compression::ZlibStream).await;
    let resumed = &mut two[1];
    resumed
        .read_until(|m| m.t() == Some("MESSAGE_CREATE"))
        .await;
    let last = resumed.last_seq();
    // Vanish without a close frame (what was sent but not read is lost), stay away a while,
    // resume on the resume URL.
    let compression = Compression::ZstdStream;
    resumed.client = RawClient::connect(mock.resume_ws_url(), compression).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    resumed.client.hello().await;
    resumed
        .client
        .resume(mock.token(), &resumed.session_id, last)
        .await;
    resumed.read_until(|m| m.t() == Some("RESUMED")).await;

    // Only the 4-shard set's shard 1 gets this one.
    assert_eq!(mock.inject_fault_in_set(1, 4, Fault::ServerHeartbeat), 1);
    let heartbeat = four[1]
        .client
        .read_until(Duration::from_secs(5), |m| m.op() == 1)
        .await;
    for msg in heartbeat.into_iter().filter(Msg::is_dispatch) {
        four[1].keep(msg);
    }

    assert!(
        wait_until(Duration::from_secs(10), || {
            let ledger = mock.ledger();
            two.iter()
                .all(|s| s.ledger(&ledger).steady_dispatches() == events_per_shard)
        })
        .await
    );
    for shard in two.iter_mut().chain(four.iter_mut()) {
        shard.read_until_quiet(Duration::from_millis(500)).await;
    }
    let ledger = mock.ledger();
    assert!(ledger.violations.is_empty(), "{:#?}", ledger.violations);
    let records = recorded(&mock);
    let in_two: Events<u64> = two.iter().flat_map(|s| s.events(&ledger)).collect();
    for shard in &four {
        let session = shard.ledger(&ledger);
        assert_eq!(session.last_seq, shard.last_seq());
        assert_eq!(
            session.frames_sent, session.dispatches,
            "no replay in the other set"
        );
        for (id, (_, t, d)) in shard.events(&ledger) {
            assert_eq!((&t, &d), (&in_two[&id].1, &in_two[&id].2));
            assert!(covers(shard.shard, records[&id].guild_id));
        }
    }
    let shard_one = &ledger.shards[&1];
    assert_eq!(shard_one.resumes, 1);
    assert_eq!(shard_one.faults.get("server_heartbeat"), Some(&1));
    // Shard 1 of 2 took its whole partition, RESUMED splitting its run once.
    let session = two[1].ledger(&ledger);
    assert_eq!(session.by_type["RESUMED"], 1);
    assert_eq!(session.event_runs.len(), 2, "{:?}", session.event_runs);
    assert_eq!(two[1].events(&ledger).len() as u64, events_per_shard);
}
