//! The files in examples/ that users copy still work with the real binary:
//! examples/shardgate.toml names every setting, passes `run --check`, and the defaults it writes
//! down (the `#key = value` lines) are the engine's real defaults; examples/shardgate.service
//! starts the engine with settings `run --check` accepts. (The example bot receivers have their
//! own test, receivers.rs.)

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design

use std::path::{Path, PathBuf};
use std::process::Command;

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn scratch(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("shardgate-examples-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `shardgate run --check ARGS` with a token in the environment: the resolved settings.
fn check(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .args(["run", "--check"])
        .args(args)
        .env("DISCORD_TOKEN", "example-token")
        .env_remove("FORWARD_SECRET")
        .env_remove("SHARDGATE_ADMIN_TOKEN")
        .current_dir(repository())
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        output.status.success(),
        "run --check {args:?}: {stderr}{stdout}"
    );
    assert!(!stdout.contains("example-token"));
    stdout
}

#[test]
fn the_example_config_names_every_setting_with_its_real_default() {
    let path = repository().join("examples/shardgate.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    for key in shardgate::config::FILE_KEYS {
        let named = text
            .lines()
            .filter_map(|line| line.strip_prefix('#'))
            .chain(text.lines())
            .any(|line| {
                line.trim_start().strip_prefix(key).is_some_and(|rest| {
                    rest.starts_with(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                })
            });
        assert!(named, "examples/shardgate.toml does not name `{key}`");
    }

    // As shipped: valid, and every value in it is a default, so it resolves to what the flag
    // alone (the one required setting) gives.
    let shipped = check(&["--config", "examples/shardgate.toml"]);
    let defaults = check(&["--forward-url", "http://127.0.0.1:9000/events"]);
    assert_eq!(shipped, defaults);

    // Every setting written as `#key = value` uncommented: still valid, and still the defaults.
    let dir = scratch("config");
    let uncommented: String = text
        .lines()
        .map(|line| match line.strip_prefix('#') {
            Some(rest) if rest.starts_with(|c: char| c.is_ascii_lowercase()) => rest,
            _ => line,
        })
        .map(|line| format!("{line}\n"))
        .collect();
    let settings_written = uncommented
        .lines()
        .filter(|line| line.contains(" = ") && !line.starts_with('#'))
        .count();
    assert!(
        settings_written >= 20,
        "only {settings_written} settings with a value"
    );
    let all = dir.join("all.toml");
    std::fs::write(&all, uncommented).unwrap();
    assert_eq!(check(&["--config", all.to_str().unwrap()]), defaults);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_example_unit_runs_the_engine_with_valid_settings() {
    let unit = std::fs::read_to_string(repository().join("examples/shardgate.service")).unwrap();
    // ExecStart, with its continuation lines joined.
    let exec = unit
        .replace("\\\n", " ")
        .lines()
        .find_map(|line| line.strip_prefix("ExecStart=").map(str::to_owned))
        .expect("an ExecStart= line");
    let words: Vec<&str> = exec.split_whitespace().collect();
    assert_eq!(words[..2], ["/usr/local/bin/shardgate", "run"], "{exec}");
    // The same command, with this checkout's files for the host's, and --check.
    let dir = scratch("unit");
    let args: Vec<String> = words[2..]
        .iter()
        .map(|word| match *word {
            "/etc/shardgate/shardgate.toml" => "examples/shardgate.toml".to_owned(),
            "/var/lib/shardgate" => dir.join("state").display().to_string(),
            other => other.to_owned(),
        })
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let resolved = check(&args);
    assert!(resolved.contains("log_format=json"), "{resolved}");
    // Exit 2 is a settings error (no restart can fix it); the secrets come from a file, not
    // the command line.
    assert!(unit.contains("\nRestartPreventExitStatus=2\n"));
    assert!(unit.contains("\nEnvironmentFile=/etc/shardgate/secrets.env\n"));
    assert!(!exec.contains("--token") && !exec.contains("secret"));
    let _ = std::fs::remove_dir_all(&dir);
}
