//! The real `shardgate` binary: exit codes and messages of the command line.

use std::path::PathBuf;
use std::process::{Command, Output};

const TOKEN: &str = "MTIz.cli-test-token.SECRET";

/// `shardgate ARGS` with none of the secrets' variables inherited from the test process.
fn shardgate(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_shardgate"));
    command
        .args(args)
        .env_remove("DISCORD_TOKEN")
        .env_remove("FORWARD_SECRET")
        .env_remove("SHARDGATE_ADMIN_TOKEN")
        .env_remove("SHARDGATE_REDIS_URL");
    command
}

fn output(command: &mut Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = command.output().expect("the binary runs");
    (
        status.code().expect("exited, not killed"),
        String::from_utf8(stdout).expect("UTF-8 stdout"),
        String::from_utf8(stderr).expect("UTF-8 stderr"),
    )
}

/// A fresh directory for this test's files.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shardgate-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[test]
fn bad_settings_exit_2_naming_the_setting() {
    let valid = ["--token", TOKEN, "--forward-url", "http://127.0.0.1:9/"];
    let cases: &[(&[&str], &str)] = &[
        (
            &["--shards", "10..=5"],
            "shardgate: --shards 10..=5: the range is empty",
        ),
        (
            &["--total-shards", "4", "--shards", "0..=7"],
            "shardgate: --total-shards 4 but --shards 0..=7",
        ),
        (
            &["--intents", "FOO"],
            "shardgate: --intents FOO: unknown intent name",
        ),
        (
            &["--large-threshold", "10"],
            "shardgate: --large-threshold 10: must be 50..=250",
        ),
        (
            &["--cores", "100000"],
            "shardgate: --cores 100000 but this machine has",
        ),
        (
            &["--compression", "lz4"],
            "shardgate: --compression lz4: choose one of",
        ),
    ];
    for (bad, expected) in cases {
        let (code, stdout, stderr) = output(shardgate(&["run", "--check"]).args(valid).args(*bad));
        assert_eq!(code, 2, "{bad:?}: {stderr}");
        assert!(stderr.starts_with(expected), "{bad:?}: {stderr}");
        assert!(stdout.is_empty(), "{bad:?}: {stdout}");
        assert!(!stderr.contains(TOKEN));
    }

    let (code, _, stderr) = output(&mut shardgate(&[
        "run",
        "--check",
        "--forward-url",
        "http://x/",
    ]));
    assert_eq!(code, 2);
    assert_eq!(
        stderr,
        "shardgate: --token is missing: pass --token or set DISCORD_TOKEN\n"
    );

    let (code, _, stderr) = output(
        shardgate(&["run", "--check", "--forward-url", "ftp://x"]).env("DISCORD_TOKEN", TOKEN),
    );
    assert_eq!(code, 2);
    assert_eq!(
        stderr,
        "shardgate: --forward-url 'ftp://x': must be http:// or https://\n"
    );

    // clap's own usage errors exit 2 as well.
    let (code, _, stderr) = output(&mut shardgate(&["run", "--total-shard", "4"]));
    assert_eq!(code, 2);
    assert!(stderr.contains("--total-shard"), "{stderr}");
}

#[test]
fn check_with_a_config_file_prints_the_summary_without_secrets() {
    let dir = scratch("check");
    let config = dir.join("shardgate.toml");
    std::fs::write(
        &config,
        format!(
            "token = \"{TOKEN}\"\n\
             total_shards = 16\n\
             shards = \"0..=7\"\n\
             cores = 1\n\
             forward_url = \"http://127.0.0.1:9000/events\"\n\
             forward_secret = \"fwd-SECRET\"\n\
             intents = [\"GUILDS\", \"GUILD_MESSAGES\"]\n\
             ring_capacity = 1024\n"
        ),
    )
    .expect("write config");
    let config = config.to_str().expect("UTF-8 temp path");

    // The flag wins over the file; the environment's token wins over the file's.
    let (code, stdout, stderr) = output(
        shardgate(&[
            "run",
            "--check",
            "--config",
            config,
            "--ring-capacity",
            "2048",
        ])
        .env("DISCORD_TOKEN", "env-token-SECRET"),
    );
    assert_eq!(code, 0, "{stderr}");
    for line in [
        "total_shards=16",
        "shards=0..=7",
        "cores=1",
        "cores_used=1",
        "shards_per_core=8",
        "intents=513",
        "ring_capacity=2048",
        "forward_url=http://127.0.0.1:9000/events",
        "forward_secret=set",
        "admin_token=unset",
    ] {
        assert!(
            stdout.lines().any(|got| got == line),
            "{line} not in:\n{stdout}"
        );
    }
    for secret in [TOKEN, "env-token-SECRET", "fwd-SECRET"] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{secret} leaked"
        );
    }

    // An unknown key names itself and the file.
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "totl_shards = 16\n").expect("write config");
    let (code, _, stderr) = output(&mut shardgate(&[
        "run",
        "--check",
        "--config",
        bad.to_str().expect("UTF-8"),
    ]));
    assert_eq!(code, 2);
    assert!(
        stderr.contains("bad.toml: unknown key `totl_shards`; did you mean `total_shards`?"),
        "{stderr}"
    );

    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn run_fails_clearly_when_discord_is_unreachable() {
    // Port 9 on loopback refuses: startup stops at /gateway/bot with the URL and the cause,
    // and the token never appears.
    let dir = scratch("discord-unreachable");
    let (code, stdout, stderr) = output(
        shardgate(&[
            "run",
            "--api-base",
            "http://127.0.0.1:9/api/v10",
            "--forward-url",
            "http://127.0.0.1:9/",
            "--admin-addr",
            "127.0.0.1:0",
            "--data-dir",
            dir.join("data").to_str().expect("UTF-8 path"),
        ])
        .env("DISCORD_TOKEN", TOKEN),
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("shardgate: GET http://127.0.0.1:9/api/v10/gateway/bot: connecting"),
        "{stderr}"
    );
    assert!(!stderr.contains(TOKEN), "{stderr}");
    assert!(stdout.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_taken_admin_port_fails_startup_before_any_shard_or_file() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let addr = taken.local_addr().expect("bound").to_string();
    let dir = scratch("admin-taken");
    let data = dir.join("data");
    let (code, stdout, stderr) = output(
        shardgate(&[
            "run",
            "--gateway-url",
            "ws://127.0.0.1:9",
            "--total-shards",
            "1",
            "--forward-url",
            "http://127.0.0.1:9/",
            "--admin-addr",
            &addr,
            "--data-dir",
            data.to_str().expect("UTF-8 path"),
        ])
        .env("DISCORD_TOKEN", TOKEN),
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!("shardgate: --admin-addr {addr}: cannot listen")),
        "{stderr}"
    );
    assert!(stderr.contains("choose a free address"), "{stderr}");
    // The data dir's lock comes first (a second process on it must say so, not report the
    // port); nothing else is written before the port is ours.
    let written: Vec<_> = std::fs::read_dir(&data)
        .expect("the data dir exists: its lock was taken")
        .map(|entry| entry.expect("an entry").file_name())
        .collect();
    assert_eq!(
        written,
        ["shardgate.lock"],
        "nothing but the lock before the port was ours"
    );
    assert!(stdout.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_data_dir_in_use_by_another_process_is_refused() {
    let dir = scratch("data-dir-locked");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    // Another shardgate holds it (here: this test, the same way).
    let held = std::fs::File::create(data.join("shardgate.lock")).expect("lock file");
    held.try_lock().expect("the lock is free");
    let (code, _, stderr) = output(
        shardgate(&[
            "run",
            "--gateway-url",
            "ws://127.0.0.1:9",
            "--total-shards",
            "1",
            "--forward-url",
            "http://127.0.0.1:9/",
            "--admin-addr",
            "127.0.0.1:0",
            "--spill-bytes-max",
            "0",
            "--data-dir",
            data.to_str().expect("UTF-8 path"),
        ])
        .env("DISCORD_TOKEN", TOKEN),
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("in use by another shardgate process"),
        "{stderr}"
    );
    assert!(!data.join("sessions.json").exists());
    drop(held);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_shard_range_past_discords_count_is_a_settings_error() {
    // `--total-shards auto`: the plan is checked against /gateway/bot's answer (2 shards).
    let mock = mock_gateway::MockGateway::spawn(
        mock_gateway::MockConfig {
            recommended_shards: Some(2),
            ..mock_gateway::MockConfig::default()
        },
        1,
    )
    .expect("the mock starts");
    let dir = scratch("plan-after-discord");
    let (code, _, stderr) = output(
        shardgate(&[
            "run",
            "--api-base",
            &mock.api_base(),
            "--shards",
            "0..=5",
            "--forward-url",
            "http://127.0.0.1:9/",
            "--admin-addr",
            "127.0.0.1:0",
            "--data-dir",
            dir.join("data").to_str().expect("UTF-8 path"),
        ])
        .env("DISCORD_TOKEN", mock.token()),
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--shards"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn demo_runs_the_whole_pipeline_and_checks_it() {
    // The real binary, its built-in simulated Discord over TLS and its bot: 4 shards on both
    // cores, zlib-stream, for 5 s. Each second prints a line; the summary's checks pass.
    let (code, stdout, stderr) = output(&mut shardgate(&[
        "demo",
        "--duration",
        "5",
        "--shards",
        "4",
        "--cores",
        "2",
        "--compression",
        "zlib-stream",
        "--rate",
        "200",
    ]));
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        stdout.starts_with("shardgate demo: 4 shards on 2 core(s), zlib-stream, 200 events/s"),
        "{stdout}"
    );
    let seconds = stdout.lines().filter(|l| l.contains(" s  ready ")).count();
    assert!((4..=5).contains(&seconds), "{stdout}");
    // The CPU figure is the steady state's, apart from startup, with what it depends on.
    assert!(stdout.contains("% of one CPU"), "{stdout}");
    assert!(stdout.contains("µs per forwarded event"), "{stdout}");
    assert!(stdout.contains("it falls as --rate rises"), "{stdout}");
    assert!(stdout.contains("shards ready         4/4"), "{stdout}");
    assert!(
        stdout.contains(" 0 missing, 0 duplicated, 0 out of order"),
        "{stdout}"
    );
    assert!(
        stdout.contains(" 0 protocol violations, 4 identifies"),
        "{stdout}"
    );
    assert!(
        stdout.contains("result               every event arrived once and in order"),
        "{stdout}"
    );
    // Something flowed: the events-in figure is not zero.
    let events_in: u64 = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("events in"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(events_in > 400, "{stdout}");
    assert!(!stderr.contains("ERROR"), "{stderr}");
}

#[test]
fn demo_reshards_under_traffic_and_checks_every_event_once() {
    // 4 shards become 8 while events flow; the demo runs until the reshard is done and judges
    // delivery by content across both sets.
    let (code, stdout, stderr) = output(&mut shardgate(&[
        "demo",
        "--duration",
        "4",
        "--shards",
        "4",
        "--cores",
        "2",
        "--rate",
        "100",
        "--reshard",
    ]));
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("reshard to 8 asked"), "{stdout}");
    assert!(stdout.contains(" 4 → 8: finished in"), "{stdout}");
    assert!(
        stdout.contains(" 0 missing, 0 duplicated, 0 out of order (by content"),
        "{stdout}"
    );
    assert!(stdout.contains("shards ready         8/8"), "{stdout}");
    assert!(
        stdout.contains("result               every event arrived once and in order"),
        "{stdout}"
    );
}

#[test]
fn help_lists_the_fixed_flags() {
    let (code, stdout, _) = output(&mut shardgate(&["run", "--help"]));
    assert_eq!(code, 0);
    for flag in [
        "--token",
        "--api-base",
        "--gateway-url",
        "--total-shards",
        "--shards ",
        "--cores",
        "--shards-per-core",
        "--compression",
        "--intents",
        "--forward-url",
        "--forward-secret",
        "--data-dir",
        "--admin-addr",
        "--admin-token",
        "--ca-file",
        "--config",
        "--check",
        "[env: DISCORD_TOKEN]",
        "[env: FORWARD_SECRET]",
        "[env: SHARDGATE_ADMIN_TOKEN]",
    ] {
        assert!(stdout.contains(flag), "{flag} not in run --help");
    }
    // Tests-only knob stays out of the operator's help.
    assert!(!stdout.contains("--identify-interval-ms"));
}
