//! A real client library in another language, from login to first messages: discord.js 14
//! (`tests/js`, versions pinned by its package-lock.json) logs in to an in-process mock over
//! plain ws:// with two shards, fetches the bot user and application through its REST client,
//! and receives messages on every shard. Its one-line JSON summary must name the bot READY
//! names, and the mock's ledger must show a client that broke no rule: one identify per
//! shard (spaced by the identify window, max_concurrency 1), heartbeats, no resume, a clean
//! close.
//!
//! Needs Node 18+ and npm on PATH (the test fails, saying so, without them). `npm ci` runs in
//! tests/js when its node_modules is missing or stale, under a file lock so parallel test
//! processes do not race; every child runs under a time limit.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mock_gateway::events::{APPLICATION_FLAGS, BOT_DISCRIMINATOR, BOT_USER_ID, BOT_USERNAME};
use mock_gateway::{Ledger, MockConfig};
use serde_json::Value;
use shardgate_tests::{TestMock, owned_guilds};

/// discord.js must stop by itself within this (the script's own limit is lower).
const SCRIPT_LIMIT: Duration = Duration::from_secs(60);
/// The script's own timeout, passed as `--timeout-ms`.
const SCRIPT_TIMEOUT_MS: u64 = 45_000;
/// `npm ci` from the registry (or npm's cache).
const NPM_CI_LIMIT: Duration = Duration::from_secs(300);
/// `messageCreate` events the script waits for on every shard.
const MESSAGES_PER_SHARD: u64 = 20;
const SHARDS: u32 = 2;

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("js")
}

/// A finished child: its status (None when it ran past its limit and was killed) and output.
struct Finished {
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}

/// Runs `command` with piped output for at most `limit`, killing it after that.
fn run_bounded(mut command: Command, limit: Duration) -> Finished {
    let started = Instant::now();
    let program = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
    let stdout = child.stdout.take().map(drain);
    let stderr = child.stderr.take().map(drain);
    let status = loop {
        if let Some(status) = child.try_wait().expect("child status") {
            break Some(status);
        }
        if started.elapsed() >= limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let join = |handle: Option<JoinHandle<String>>| {
        handle
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default()
    };
    Finished {
        status,
        stdout: join(stdout),
        stderr: join(stderr),
        elapsed: started.elapsed(),
    }
}

/// `tool --version`, or a failure that says what is missing.
fn tool_version(tool: &str) -> String {
    let output = Command::new(tool).arg("--version").output();
    match output {
        Ok(output) if output.status.success() => {
            String::from_utf8_lossy(&output.stdout).trim().to_owned()
        }
        Ok(output) => panic!(
            "`{tool} --version` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(error) => panic!(
            "`{tool}` is not installed or not on PATH ({error}): tests/tests/discord_js.rs runs \
             discord.js and needs Node.js 18 or newer with npm"
        ),
    }
}

/// The version of `package` pinned in package-lock.json and the one installed, if any.
fn pinned_and_installed(package: &str) -> (String, Option<String>) {
    let read_json = |path: PathBuf| -> Option<Value> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    };
    let lock = read_json(js_dir().join("package-lock.json")).expect("tests/js/package-lock.json");
    let pinned = lock["packages"][format!("node_modules/{package}")]["version"]
        .as_str()
        .unwrap_or_else(|| panic!("{package} is not in tests/js/package-lock.json"))
        .to_owned();
    let installed = read_json(
        js_dir()
            .join("node_modules")
            .join(package)
            .join("package.json"),
    )
    .and_then(|manifest| manifest["version"].as_str().map(str::to_owned));
    (pinned, installed)
}

/// Installs tests/js/node_modules with `npm ci` unless discord.js is there at the pinned
/// version. Serialised within this process by a mutex and across processes by a file lock.
fn ensure_node_modules() {
    static IN_PROCESS: Mutex<()> = Mutex::new(());
    let _guard = IN_PROCESS.lock().unwrap_or_else(PoisonError::into_inner);
    let lock_path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tests-js-npm-ci.lock");
    let lock_file = File::create(&lock_path)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", lock_path.display()));
    lock_file
        .lock()
        .unwrap_or_else(|e| panic!("cannot lock {}: {e}", lock_path.display()));

    let (pinned, installed) = pinned_and_installed("discord.js");
    if installed.as_deref() == Some(pinned.as_str()) {
        return;
    }
    let npm = tool_version("npm");
    let mut command = Command::new("npm");
    command
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(js_dir());
    let finished = run_bounded(command, NPM_CI_LIMIT);
    assert!(
        finished.status.is_some_and(|s| s.success()),
        "`npm ci` (npm {npm}) in tests/js {} after {:.1} s:\n{}\n{}",
        finished
            .status
            .map_or("ran too long".to_owned(), |s| s.to_string()),
        finished.elapsed.as_secs_f64(),
        finished.stdout,
        finished.stderr
    );
    eprintln!(
        "npm ci (npm {npm}) installed discord.js {pinned} in {:.1} s",
        finished.elapsed.as_secs_f64()
    );
    let (_, installed) = pinned_and_installed("discord.js");
    assert_eq!(installed.as_deref(), Some(pinned.as_str()), "after npm ci");
    // The lock is released when `lock_file` drops.
}

/// The ledger once `condition` holds on it, or the last one after 5 s.
fn ledger_when(mock: &TestMock, condition: impl Fn(&Ledger) -> bool) -> Ledger {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ledger = mock.ledger();
        if condition(&ledger) || Instant::now() >= deadline {
            return ledger;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn discord_js_logs_in_and_receives_messages_on_every_shard() {
    let node = tool_version("node");
    let major: u32 = node
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|major| major.parse().ok())
        .unwrap_or_else(|| panic!("unexpected `node --version`: {node}"));
    assert!(
        major >= 18,
        "discord.js 14 needs Node 18 or newer, found {node}"
    );
    ensure_node_modules();

    let mock = TestMock::spawn(MockConfig {
        seed: Some(0xd15c_0bd5),
        guilds: 6,
        recommended_shards: Some(SHARDS),
        max_concurrency: 1,
        // Shorter than discord.js's fixed 5 s spacing, so its throttle passes with a margin;
        // without one its second identify would come within milliseconds and be refused.
        identify_window_ms: 4000,
        heartbeat_interval_ms: 2000,
        rate: 25.0,
        ..MockConfig::default()
    });
    let guild_ids = mock.guild_ids();
    for shard in 0..SHARDS {
        assert!(
            !owned_guilds(&guild_ids, shard, SHARDS).is_empty(),
            "seed gives shard {shard} no guild: {guild_ids:?}"
        );
    }

    let mut command = Command::new("node");
    command
        .arg("discordjs-login.mjs")
        .args(["--api", &format!("{}/api", mock.http_base())])
        .args(["--token", mock.token()])
        .args(["--shards", "auto"])
        .args(["--messages", &MESSAGES_PER_SHARD.to_string()])
        .args(["--timeout-ms", &SCRIPT_TIMEOUT_MS.to_string()])
        .current_dir(js_dir());
    let finished = run_bounded(command, SCRIPT_LIMIT);
    let Finished {
        status,
        stdout,
        stderr,
        elapsed,
    } = finished;
    let status = status.unwrap_or_else(|| {
        panic!("discord.js ran past {SCRIPT_LIMIT:?}:\n{stdout}\nstderr:\n{stderr}")
    });
    assert!(
        status.success(),
        "discord.js script failed ({status}):\n{stdout}\nstderr:\n{stderr}"
    );
    eprintln!(
        "discord.js login to {MESSAGES_PER_SHARD} messages per shard in {:.1} s",
        elapsed.as_secs_f64()
    );
    let summary: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("no JSON summary ({e}):\n{stdout}\nstderr:\n{stderr}"));
    eprintln!("{summary}");

    // One bot: READY's user and application, REST's user and both application routes.
    let bot_id = BOT_USER_ID.to_string();
    for user in ["ready_user", "rest_user"] {
        assert_eq!(summary[user]["id"], bot_id.as_str(), "{user}");
        assert_eq!(summary[user]["username"], BOT_USERNAME, "{user}");
        assert_eq!(summary[user]["discriminator"], BOT_DISCRIMINATOR, "{user}");
        assert_eq!(summary[user]["bot"], true, "{user}");
    }
    assert_eq!(summary["ready_application"]["id"], bot_id.as_str());
    assert_eq!(summary["ready_application"]["flags"], APPLICATION_FLAGS);
    let application = &summary["rest_application"];
    assert_eq!(application["id"], bot_id.as_str());
    assert_eq!(application["name"], BOT_USERNAME);
    assert_eq!(application["flags"], APPLICATION_FLAGS);
    assert_eq!(application["bot_public"], true);
    assert_eq!(application["bot_require_code_grant"], false);
    assert_eq!(application["approximate_guild_count"], guild_ids.len());
    assert!(application["owner_id"].is_string(), "{application}");
    assert_eq!(summary["oauth2_application"]["id"], bot_id.as_str());
    assert_eq!(summary["oauth2_application"]["bot_id"], bot_id.as_str());

    // Every shard ready, its messages delivered, one unbroken run of sequences from READY.
    assert_eq!(
        summary["shard_count"], SHARDS,
        "from /gateway/bot's `shards`"
    );
    assert_eq!(summary["shards_ready"], serde_json::json!([0, 1]));
    assert_eq!(summary["guilds"], guild_ids.len());
    let ledger = ledger_when(&mock, |ledger| {
        (0..SHARDS).all(|shard| {
            ledger
                .shards
                .get(&shard)
                .is_some_and(|s| s.client_closes.get("1000") == Some(&1))
        })
    });
    for shard in 0..SHARDS {
        let seen = &summary["shards"][shard.to_string()];
        let number = |key: &str| {
            seen[key]
                .as_u64()
                .unwrap_or_else(|| panic!("shard {shard} `{key}`: {seen}"))
        };
        assert!(
            number("messages") >= MESSAGES_PER_SHARD,
            "shard {shard}: {seen}"
        );
        // discord.js queues what arrives before `clientReady` and handles newer packets first;
        // a reply handled before the message it answers caches that message, whose own
        // MESSAGE_CREATE then raises no event. The script counts those; nothing else may vanish.
        assert_eq!(number("not_delivered_other"), 0, "shard {shard}: {seen}");
        assert_eq!(
            number("messages") + number("not_delivered_reply_first"),
            number("raw_message_creates"),
            "shard {shard}: every MESSAGE_CREATE became a messageCreate or was answered first"
        );
        assert_eq!(number("first_seq"), 1, "shard {shard}: READY is s = 1");
        assert_eq!(number("seq_gaps"), 0, "shard {shard}: {seen}");
        assert_eq!(number("dispatches"), number("last_seq"), "shard {shard}");
        assert_eq!(seen["by_type"]["READY"], 1, "shard {shard}");
        let owned = owned_guilds(&guild_ids, shard, SHARDS).len() as u64;
        assert_eq!(seen["by_type"]["GUILD_CREATE"], owned, "shard {shard}");

        let recorded = &ledger.shards[&shard];
        assert_eq!(recorded.identifies, 1, "shard {shard}");
        assert_eq!(recorded.resumes, 0, "shard {shard}");
        assert!(recorded.heartbeats >= 1, "shard {shard}: {recorded:?}");
        assert_eq!(recorded.sessions.len(), 1, "shard {shard}");
        let session = &recorded.sessions[0];
        assert_eq!(session.total_shards, SHARDS);
        assert!(
            session.last_seq >= number("last_seq"),
            "shard {shard}: the mock sent what arrived"
        );
        assert!(
            session.by_type.get("MESSAGE_CREATE").copied().unwrap_or(0)
                >= number("raw_message_creates"),
            "shard {shard}"
        );
        assert_eq!(
            recorded.client_closes.get("1000"),
            Some(&1),
            "shard {shard}: client.destroy() closes with 1000: {:?}",
            recorded.client_closes
        );
    }
    assert!(ledger.violations.is_empty(), "{:#?}", ledger.violations);
    assert_eq!(ledger.identifies_total, u64::from(SHARDS));
    assert_eq!(ledger.resumes_total, 0);
    assert_eq!(ledger.token_resets, 0);
}
