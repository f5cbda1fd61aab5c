//! Table-driven tests of the settings layer: precedence, every error variant, value syntaxes,
//! placement, redaction, and the help text against the defaults.

use std::path::PathBuf;

use clap::{Args, Command, FromArgMatches};

use super::*;

/// `--spill-fsync`'s accepted forms, as its error lists them.
const SPILL_FSYNC_CHOICES: &str =
    "always, never, <N>ms (fsync at most every N milliseconds, e.g. 1000ms)";

const TOKEN: &str = "MTIz.token-value.SECRET";
const FORWARD_URL: &str = "http://127.0.0.1:9000/events";
const CPUS: usize = 4;

/// Parses `shardgate run` flags as main does, minus clap's environment variables (the test
/// process's own DISCORD_TOKEN must not leak in).
fn args(argv: &[&str]) -> RunArgs {
    let command = RunArgs::augment_args(Command::new("run")).mut_args(|arg| arg.env(None::<&str>));
    let matches = command
        .try_get_matches_from(std::iter::once("run").chain(argv.iter().copied()))
        .unwrap_or_else(|error| panic!("{argv:?}: {error}"));
    RunArgs::from_arg_matches(&matches).expect("derive and matches agree")
}

/// `argv` plus `--token` and `--forward-url` unless `argv` sets them.
fn with_required(argv: &[&'static str]) -> Vec<&'static str> {
    let mut full = argv.to_vec();
    for (flag, value) in [("--token", TOKEN), ("--forward-url", FORWARD_URL)] {
        if !argv.contains(&flag) {
            full.extend([flag, value]);
        }
    }
    full
}

fn env() -> Environment {
    Environment::new(CPUS)
}

fn load(argv: &[&'static str]) -> Result<Settings, ConfigError> {
    Settings::load(&args(&with_required(argv)), &env(), None)
}

fn load_file(argv: &[&'static str], toml: &str) -> Result<Settings, ConfigError> {
    let file = ConfigFile::new("data.toml", toml);
    Settings::load(&args(&with_required(argv)), &env(), Some(&file))
}

fn from_file() -> Origin {
    Origin::File(PathBuf::from("data.toml"))
}

fn range(start: u32, end: u32) -> ShardRange {
    ShardRange::new(start, end).expect("test ranges are not empty")
}

fn nonzero(value: u32) -> NonZeroU32 {
    NonZeroU32::new(value).expect("test counts are not zero")
}

#[test]
fn defaults() {
    let settings = load(&[]).expect("token and forward URL are enough");
    assert_eq!(settings.token.expose_secret(), TOKEN);
    assert_eq!(settings.api_base, Settings::DEFAULT_API_BASE);
    assert_eq!(settings.gateway_url, None);
    assert_eq!(settings.total_shards, TotalShards::Auto);
    assert_eq!(settings.shards, None);
    assert_eq!(
        (settings.cores, settings.cpus_available),
        (CPUS as u32, CPUS)
    );
    assert_eq!(settings.shards_per_core, None);
    assert_eq!(settings.read_coalesce_ms, 20);
    assert_eq!(settings.compression, Compression::ZstdStream);
    assert_eq!(settings.intents, Intents::NON_PRIVILEGED);
    assert_eq!(settings.events, Events::All);
    assert!(settings.dedup_message_updates);
    assert_eq!(settings.dedup_cache_entries, None);
    assert_eq!(settings.large_threshold, 50);
    assert_eq!(settings.payload_bytes_max, 32 << 20);
    assert_eq!(settings.ring_capacity, None);
    assert_eq!(settings.forward_url, FORWARD_URL);
    assert_eq!(settings.forward_secret, None);
    assert_eq!(settings.forward_timeout_ms, 10_000);
    assert_eq!(settings.batch_events_max, 500);
    assert_eq!(settings.batch_bytes_max, 1 << 20);
    assert_eq!(settings.batch_linger_ms, 5);
    assert_eq!(settings.data_dir, PathBuf::from("./data"));
    assert_eq!(settings.queue_bytes_max, 64 << 20);
    assert_eq!(settings.spill_bytes_max, 1 << 30);
    assert_eq!(settings.spill_fsync, FsyncPolicy::IntervalMs(1_000));
    assert_eq!(settings.backlog_rate, 20_000);
    assert_eq!(settings.batches_in_flight, 4);
    assert_eq!(settings.default_route().lanes(), 4);
    assert_eq!(settings.session_save_interval_ms, 1_000);
    assert_eq!(settings.sink, SinkKind::Http);
    assert_eq!(settings.stream_key, "shardgate:events");
    assert_eq!(settings.stream_partitions, 1);
    assert_eq!(settings.stream_maxlen, 1_000_000);
    assert_eq!(
        settings.sessions_file(),
        PathBuf::from("./data/sessions.json")
    );
    assert_eq!(settings.spill_dir(), PathBuf::from("./data/spill"));
    assert_eq!(
        settings.spill_config(),
        Some(SpillConfig::new(PathBuf::from("./data/spill")))
    );
    assert_eq!(settings.admin_addr.to_string(), "127.0.0.1:7878");
    assert_eq!(settings.admin_token, None);
    assert_eq!(settings.ca_file, None);
    assert_eq!(settings.log, "info");
    assert_eq!(settings.log_format, LogFormat::Pretty);
    assert_eq!(settings.identify_interval_ms, 5_000);
    assert_eq!(settings.redis_url, None);
    assert!(!settings.is_fleet());
    assert_eq!(settings.cluster_name, "shardgate");
    assert_eq!(settings.host_id, None);
    assert_eq!(settings.hostname, "host");
    assert_eq!(settings.host_id(), "host");
    assert_eq!(settings.host_lease_ms, 10_000);
    assert_eq!(settings.shard_lease_ms, 15_000);
    assert_eq!(settings.moves_per_minute, 60);
    assert_eq!(settings.host_capacity, None);
}

#[test]
fn every_flag_is_read() {
    let settings = load(&[
        "--api-base",
        "HTTP://127.0.0.1:1/api/v10/",
        "--gateway-url",
        "ws://127.0.0.1:2/",
        "--total-shards",
        "8",
        "--shards",
        "4..=7",
        "--cores",
        "2",
        "--shards-per-core",
        "3",
        "--read-coalesce-ms",
        "0",
        "--compression",
        "zlib-stream",
        "--intents",
        "GUILDS,GUILD_MESSAGES",
        "--events",
        "message_create,GUILD_CREATE",
        "--dedup-message-updates",
        "off",
        "--dedup-cache-entries",
        "1_000",
        "--large-threshold",
        "250",
        "--payload-bytes-max",
        "1024",
        "--ring-capacity",
        "1",
        "--forward-secret",
        "s3cret",
        "--forward-timeout-ms",
        "250",
        "--batch-events-max",
        "10",
        "--batch-bytes-max",
        "4096",
        "--batch-linger-ms",
        "0",
        "--data-dir",
        "/var/lib/shardgate",
        "--queue-bytes-max",
        "4096",
        "--spill-bytes-max",
        "0",
        "--spill-fsync",
        "always",
        "--backlog-rate",
        "0",
        "--session-save-interval-ms",
        "100",
        "--admin-addr",
        "0.0.0.0:0",
        "--admin-token",
        "admin-s3cret",
        "--ca-file",
        "ca.pem",
        "--log",
        "debug,shardgate=trace",
        "--log-format",
        "JSON",
        "--identify-interval-ms",
        "100",
    ])
    .expect("every value is valid");
    assert_eq!(settings.api_base, "http://127.0.0.1:1/api/v10");
    assert_eq!(settings.gateway_url.as_deref(), Some("ws://127.0.0.1:2"));
    assert_eq!(settings.total_shards, TotalShards::Fixed(nonzero(8)));
    assert_eq!(settings.shards, Some(range(4, 7)));
    assert_eq!((settings.cores, settings.shards_per_core), (2, Some(3)));
    assert_eq!(settings.read_coalesce_ms, 0);
    assert_eq!(settings.compression, Compression::ZlibStream);
    assert_eq!(settings.intents.bits(), 513);
    assert_eq!(
        settings.events,
        Events::only(vec!["GUILD_CREATE", "MESSAGE_CREATE"])
    );
    assert!(!settings.dedup_message_updates);
    assert_eq!(settings.dedup_cache_entries, Some(1_000));
    assert_eq!(settings.large_threshold, 250);
    assert_eq!(settings.payload_bytes_max, 1024);
    assert_eq!(settings.ring_capacity, Some(1));
    assert_eq!(settings.forward_secret, Some(Secret::new("s3cret")));
    assert_eq!(settings.forward_timeout_ms, 250);
    assert_eq!(
        (settings.batch_events_max, settings.batch_bytes_max),
        (10, 4096)
    );
    assert_eq!(settings.batch_linger_ms, 0);
    assert_eq!(settings.data_dir, PathBuf::from("/var/lib/shardgate"));
    assert_eq!(settings.queue_bytes_max, 4096);
    assert_eq!(settings.spill_bytes_max, 0);
    assert_eq!(settings.spill_config(), None);
    assert_eq!(settings.spill_fsync, FsyncPolicy::Always);
    assert_eq!(settings.backlog_rate, 0);
    assert_eq!(settings.session_save_interval_ms, 100);
    assert_eq!(
        settings.sessions_file(),
        PathBuf::from("/var/lib/shardgate/sessions.json")
    );
    assert_eq!(
        settings.spill_dir(),
        PathBuf::from("/var/lib/shardgate/spill")
    );
    assert_eq!(settings.admin_addr.to_string(), "0.0.0.0:0");
    assert_eq!(settings.admin_token, Some(Secret::new("admin-s3cret")));
    assert_eq!(settings.ca_file, Some(PathBuf::from("ca.pem")));
    assert_eq!(settings.log, "debug,shardgate=trace");
    assert_eq!(settings.log_format, LogFormat::Json);
    assert_eq!(settings.identify_interval_ms, 100);
    let plan = settings.fixed_plan().expect("a fixed count");
    assert_eq!(
        (plan.shards, plan.cores, plan.shards_per_core),
        (range(4, 7), 2, 3)
    );
}

#[test]
fn precedence_flag_over_env_over_file_over_default() {
    // (flag, file, expected ring capacity): the non-secret knobs have no variable.
    let cases: &[(Option<&'static str>, Option<&str>, Option<usize>)] = &[
        (Some("200"), Some("100"), Some(200)),
        (None, Some("100"), Some(100)),
        (Some("200"), None, Some(200)),
        (None, None, None),
    ];
    for &(flag, file, expected) in cases {
        let mut argv = Vec::new();
        if let Some(flag) = flag {
            argv.extend(["--ring-capacity", flag]);
        }
        let toml = file.map_or_else(String::new, |value| format!("ring_capacity = {value}"));
        let settings = load_file(&argv, &toml).expect("valid");
        assert_eq!(
            settings.ring_capacity, expected,
            "flag {flag:?} file {file:?}"
        );
    }

    // (flag, env, file, expected) for each secret.
    type Case = (
        Option<&'static str>,
        Option<&'static str>,
        Option<&'static str>,
        &'static str,
    );
    let cases: &[Case] = &[
        (Some("flag"), Some("env"), Some("file"), "flag"),
        (None, Some("env"), Some("file"), "env"),
        (None, None, Some("file"), "file"),
        (Some("flag"), None, Some("file"), "flag"),
        (Some("flag"), Some("env"), None, "flag"),
    ];
    for &(flag, var, file, expected) in cases {
        for (setting, key, name) in [
            ("--token", "token", ENV_TOKEN),
            ("--forward-secret", "forward_secret", ENV_FORWARD_SECRET),
            ("--admin-token", "admin_token", ENV_ADMIN_TOKEN),
            ("--redis-url", "redis_url", ENV_REDIS_URL),
        ] {
            // The Redis URL must be one: the source's name becomes its host.
            let value = |source: &str| match setting {
                "--redis-url" => format!("redis://{source}:6379"),
                _ => source.to_owned(),
            };
            let (flag, var, file) = (flag.map(value), var.map(value), file.map(value));
            let mut argv = vec!["--forward-url", FORWARD_URL];
            if setting != "--token" {
                argv.extend(["--token", TOKEN]);
            }
            if let Some(flag) = &flag {
                argv.extend([setting, flag.as_str()]);
            }
            let mut environment = env();
            if let Some(value) = &var {
                environment = environment.with_var(name, value);
            }
            let toml = file
                .as_ref()
                .map_or_else(String::new, |value| format!("{key} = {value:?}"));
            let file = ConfigFile::new("data.toml", toml);
            let settings = Settings::load(&args(&argv), &environment, Some(&file)).expect("valid");
            let got = match setting {
                "--token" => settings.token.expose_secret().to_owned(),
                "--forward-secret" => settings
                    .forward_secret
                    .expect("set")
                    .expose_secret()
                    .to_owned(),
                "--redis-url" => settings.redis_url.expect("set").expose_secret().to_owned(),
                _ => settings
                    .admin_token
                    .expect("set")
                    .expose_secret()
                    .to_owned(),
            };
            assert_eq!(
                got,
                value(expected),
                "{setting}: flag {flag:?} env {var:?} file {file:?}"
            );
        }
    }
}

#[test]
fn the_file_sets_every_key() {
    let toml = r#"
        token = "file-token"
        api_base = "http://127.0.0.1:1/api/v10"
        gateway_url = "ws://127.0.0.1:2"
        total_shards = 16
        shards = "0..=7"
        cores = 2
        shards_per_core = 4
        read_coalesce_ms = 2
        compression = "none"
        intents = ["GUILDS", "MESSAGE_CONTENT"]
        events = ["MESSAGE_CREATE"]
        dedup_message_updates = false
        dedup_cache_entries = 1_024
        large_threshold = 100
        payload_bytes_max = 65536
        ring_capacity = 64
        forward_url = "https://bot.internal/events"
        forward_secret = "file-secret"
        forward_timeout_ms = 2000
        batch_events_max = 50
        batch_bytes_max = 65536
        batch_linger_ms = 1
        data_dir = "/tmp/shardgate data"
        queue_bytes_max = 131072
        spill_bytes_max = "2_097_152"
        spill_fsync = "250ms"
        backlog_rate = 500
        batches_in_flight = 8
        session_save_interval_ms = 60000
        sink = "redis-streams"
        stream_key = "bot:{events}"
        stream_partitions = 16
        stream_maxlen = "2_000"
        admin_addr = "127.0.0.1:0"
        admin_token = "file-admin"
        ca_file = "ca.pem"
        log = "warn"
        log_format = "json"
        identify_interval_ms = 6000
        reshard = "off"
        reshard_at_percent = 90
        reshard_check_interval = "15m"
        reshard_guilds_per_shard = 10
        reshard_cooldown = 0
        fleet = "ON"
        redis_url = "redis://redis.internal:6379/2"
        cluster_name = "bot-test"
        host_id = "gateway-3"
        host_lease_ms = 2000
        shard_lease_ms = 3000
        moves_per_minute = 10
        host_capacity = 40
    "#;
    let file = ConfigFile::new("data.toml", toml);
    let settings = Settings::load(&RunArgs::default(), &env(), Some(&file)).expect("valid");
    assert_eq!(settings.token.expose_secret(), "file-token");
    assert_eq!(settings.total_shards, TotalShards::Fixed(nonzero(16)));
    assert_eq!(settings.shards, Some(range(0, 7)));
    assert_eq!(settings.compression, Compression::None);
    assert_eq!(settings.intents.bits(), 1 | (1 << 15));
    assert_eq!(settings.events, Events::only(vec!["MESSAGE_CREATE"]));
    assert_eq!(settings.read_coalesce_ms, 2);
    assert!(!settings.dedup_message_updates);
    assert_eq!(settings.dedup_cache_entries, Some(1_024));
    assert_eq!(settings.forward_url, "https://bot.internal/events");
    assert_eq!(settings.data_dir, PathBuf::from("/tmp/shardgate data"));
    assert_eq!(settings.queue_bytes_max, 131_072);
    assert_eq!(settings.spill_bytes_max, 2 << 20);
    assert_eq!(settings.spill_fsync, FsyncPolicy::IntervalMs(250));
    assert_eq!(settings.backlog_rate, 500);
    assert_eq!(settings.batches_in_flight, 8);
    assert_eq!(settings.session_save_interval_ms, 60_000);
    assert_eq!(settings.sink, SinkKind::RedisStreams);
    assert_eq!(settings.stream_key, "bot:{events}");
    assert_eq!(
        (settings.stream_partitions, settings.stream_maxlen),
        (16, 2_000)
    );
    assert_eq!(settings.identify_interval_ms, 6_000);
    assert!(!settings.reshard_automatic);
    assert_eq!(settings.reshard_at_percent, 90);
    assert_eq!(
        settings.reshard_check_interval,
        std::time::Duration::from_secs(900)
    );
    assert_eq!(settings.reshard_guilds_per_shard, 10);
    assert_eq!(settings.reshard_cooldown, std::time::Duration::ZERO);
    assert!(settings.is_fleet());
    assert_eq!(
        settings.redis_url,
        Some(Secret::new("redis://redis.internal:6379/2"))
    );
    assert_eq!(settings.cluster_name, "bot-test");
    assert_eq!(settings.host_id(), "gateway-3");
    assert_eq!(
        (settings.host_lease_ms, settings.shard_lease_ms),
        (2_000, 3_000)
    );
    assert_eq!(settings.moves_per_minute, 10);
    assert_eq!(settings.host_capacity, Some(40));
    assert!(
        settings
            .summary()
            .contains(r#"data_dir="/tmp/shardgate data""#)
    );

    // Every key of the table above is a FILE_KEYS entry and the other way round.
    let table: toml::Table = toml::from_str(toml).expect("valid TOML");
    let mut written: Vec<_> = table.keys().map(String::as_str).collect();
    let mut known = FILE_KEYS.to_vec();
    written.sort_unstable();
    known.sort_unstable();
    assert_eq!(written, known);
}

#[test]
fn file_keys_are_the_flags() {
    let command = RunArgs::augment_args(Command::new("run"));
    let mut flags: Vec<_> = command
        .get_arguments()
        .map(|arg| arg.get_id().as_str())
        .filter(|id| *id != "config")
        .collect();
    let mut keys = FILE_KEYS.to_vec();
    flags.sort_unstable();
    keys.sort_unstable();
    assert_eq!(flags, keys);
    for arg in command.get_arguments() {
        let long = arg.get_long().expect("every setting is a long flag");
        assert_eq!(long.replace('-', "_"), arg.get_id().as_str());
    }
}

#[test]
fn help_states_every_default() {
    let defaults: &[(&str, String)] = &[
        ("api_base", format!("`{}`", Settings::DEFAULT_API_BASE)),
        ("total_shards", "auto".to_owned()),
        ("shards", "all".to_owned()),
        ("compression", Compression::default().to_string()),
        (
            "intents",
            format!(
                "every non-privileged intent ({})",
                Intents::NON_PRIVILEGED.bits()
            ),
        ),
        ("events", "all".to_owned()),
        ("dedup_message_updates", "on".to_owned()),
        ("dedup_cache_entries", "auto".to_owned()),
        (
            "large_threshold",
            Settings::DEFAULT_LARGE_THRESHOLD.to_string(),
        ),
        (
            "payload_bytes_max",
            Settings::DEFAULT_PAYLOAD_BYTES_MAX.to_string(),
        ),
        (
            "read_coalesce_ms",
            Settings::DEFAULT_READ_COALESCE_MS.to_string(),
        ),
        ("ring_capacity", "auto".to_owned()),
        (
            "forward_timeout_ms",
            Settings::DEFAULT_FORWARD_TIMEOUT_MS.to_string(),
        ),
        (
            "batch_events_max",
            Settings::DEFAULT_BATCH_EVENTS_MAX.to_string(),
        ),
        (
            "batch_bytes_max",
            Settings::DEFAULT_BATCH_BYTES_MAX.to_string(),
        ),
        (
            "batch_linger_ms",
            Settings::DEFAULT_BATCH_LINGER_MS.to_string(),
        ),
        ("data_dir", Settings::DEFAULT_DATA_DIR.to_owned()),
        (
            "queue_bytes_max",
            Settings::DEFAULT_QUEUE_BYTES_MAX.to_string(),
        ),
        (
            "spill_bytes_max",
            Settings::DEFAULT_SPILL_BYTES_MAX.to_string(),
        ),
        ("spill_fsync", Settings::DEFAULT_SPILL_FSYNC.to_string()),
        ("backlog_rate", Settings::DEFAULT_BACKLOG_RATE.to_string()),
        (
            "batches_in_flight",
            Settings::DEFAULT_BATCHES_IN_FLIGHT.to_string(),
        ),
        (
            "session_save_interval_ms",
            Settings::DEFAULT_SESSION_SAVE_INTERVAL_MS.to_string(),
        ),
        ("sink", SinkKind::default().to_string()),
        ("stream_key", Settings::DEFAULT_STREAM_KEY.to_owned()),
        (
            "stream_partitions",
            Settings::DEFAULT_STREAM_PARTITIONS.to_string(),
        ),
        ("stream_maxlen", Settings::DEFAULT_STREAM_MAXLEN.to_string()),
        ("admin_addr", Settings::DEFAULT_ADMIN_ADDR.to_owned()),
        ("log", Settings::DEFAULT_LOG.to_owned()),
        ("log_format", LogFormat::default().to_string()),
        (
            "identify_interval_ms",
            Settings::DEFAULT_IDENTIFY_INTERVAL_MS.to_string(),
        ),
        ("fleet", "auto".to_owned()),
        ("redis_url", "none".to_owned()),
        ("cluster_name", Settings::DEFAULT_CLUSTER_NAME.to_owned()),
        (
            "host_id",
            format!(
                "the machine's hostname (from /proc/sys/kernel/hostname; `{}`",
                Settings::HOSTNAME_FALLBACK
            ),
        ),
        ("host_lease_ms", Settings::DEFAULT_HOST_LEASE_MS.to_string()),
        (
            "shard_lease_ms",
            Settings::DEFAULT_SHARD_LEASE_MS.to_string(),
        ),
        (
            "moves_per_minute",
            Settings::DEFAULT_MOVES_PER_MINUTE.to_string(),
        ),
        ("host_capacity", "as many as the bot has".to_owned()),
    ];
    let command = RunArgs::augment_args(Command::new("run"));
    for arg in command.get_arguments() {
        let id = arg.get_id().as_str();
        let help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(ToString::to_string)
            .unwrap_or_default();
        match defaults.iter().find(|(key, _)| *key == id) {
            Some((_, default)) => {
                assert!(
                    help.contains(&format!("Default: {default}")),
                    "{id}: {help}"
                );
            }
            None => assert!(
                help.contains("Default:") || help.contains("Required") || id == "config",
                "{id} states no default: {help}"
            ),
        }
    }
    assert_eq!(
        Settings::DEFAULT_PAYLOAD_BYTES_MAX,
        crate::decode::DecoderLimits::default().payload_bytes_max
    );
}

#[test]
fn errors_name_the_setting() {
    let flag = || Origin::Flag;
    let cases: Vec<(&[&'static str], ConfigError)> = vec![
        (
            &["--shards", "10..=5"],
            ConfigError::EmptyShardRange {
                start: 10,
                end: 5,
                origin: flag(),
            },
        ),
        (
            &["--shards", "0..4"],
            ConfigError::InvalidShardRange {
                value: "0..4".into(),
                origin: flag(),
            },
        ),
        (
            &["--shards", "3-5"],
            ConfigError::InvalidShardRange {
                value: "3-5".into(),
                origin: flag(),
            },
        ),
        (
            &["--total-shards", "4", "--shards", "0..=7"],
            ConfigError::ShardsBeyondTotal {
                shards: range(0, 7),
                total_shards: 4,
                auto: false,
            },
        ),
        (
            &["--total-shards", "many"],
            ConfigError::InvalidTotalShards {
                value: "many".into(),
                origin: flag(),
            },
        ),
        (
            &["--total-shards", "0"],
            ConfigError::OutOfRange {
                setting: "--total-shards",
                value: 0,
                origin: flag(),
                min: 1,
                max: None,
            },
        ),
        (
            &["--token", " \n"],
            ConfigError::EmptySecret {
                setting: "--token",
                env: ENV_TOKEN,
            },
        ),
        (
            &["--forward-url", "ftp://x"],
            ConfigError::UrlScheme {
                setting: "--forward-url",
                value: "ftp://x".into(),
                origin: flag(),
                expected: "http:// or https://",
            },
        ),
        (
            &["--forward-url", "http://:9000/"],
            ConfigError::UrlMalformed {
                setting: "--forward-url",
                value: "http://:9000/".into(),
                origin: flag(),
                problem: "has no host; write e.g. http://127.0.0.1:9000/path",
            },
        ),
        (
            &["--forward-url", "http://bot:99999/"],
            ConfigError::UrlMalformed {
                setting: "--forward-url",
                value: "http://bot:99999/".into(),
                origin: flag(),
                problem: "has an invalid port; a port is a number up to 65535",
            },
        ),
        (
            &["--forward-url", "https://user:pw@bot/"],
            ConfigError::UrlCredentials {
                setting: "--forward-url",
                origin: flag(),
            },
        ),
        (
            &["--gateway-url", "https://gateway.example"],
            ConfigError::UrlScheme {
                setting: "--gateway-url",
                value: "https://gateway.example".into(),
                origin: flag(),
                expected: "ws:// or wss://",
            },
        ),
        (
            &["--cores", "64"],
            ConfigError::CoresExceedCpus {
                cores: 64,
                cpus: CPUS,
            },
        ),
        (
            &["--cores", "0"],
            ConfigError::OutOfRange {
                setting: "--cores",
                value: 0,
                origin: flag(),
                min: 1,
                max: None,
            },
        ),
        (
            &[
                "--total-shards",
                "8",
                "--cores",
                "2",
                "--shards-per-core",
                "3",
            ],
            ConfigError::ShardsPerCoreTooSmall {
                shards_per_core: 3,
                cores: 2,
                owned: 8,
            },
        ),
        (
            &["--intents", "FOO"],
            ConfigError::UnknownIntent {
                name: "FOO".into(),
                origin: flag(),
            },
        ),
        (
            &["--intents", " , "],
            ConfigError::EmptyList {
                setting: "--intents",
                origin: flag(),
                fix: "give a number (0 for none) or names, or leave --intents unset for every \
                      non-privileged intent",
            },
        ),
        (
            &["--events", "MESAGE_CREATE"],
            ConfigError::UnknownEvent {
                name: "MESAGE_CREATE".into(),
                origin: flag(),
                suggestion: Some("MESSAGE_CREATE"),
            },
        ),
        (
            &["--events", "NOT_AN_EVENT_AT_ALL"],
            ConfigError::UnknownEvent {
                name: "NOT_AN_EVENT_AT_ALL".into(),
                origin: flag(),
                suggestion: None,
            },
        ),
        (
            &["--large-threshold", "10"],
            ConfigError::OutOfRange {
                setting: "--large-threshold",
                value: 10,
                origin: flag(),
                min: 50,
                max: Some(250),
            },
        ),
        (
            &["--batch-events-max", "0"],
            ConfigError::OutOfRange {
                setting: "--batch-events-max",
                value: 0,
                origin: flag(),
                min: 1,
                max: None,
            },
        ),
        (
            &["--ring-capacity", "8k"],
            ConfigError::NotANumber {
                setting: "--ring-capacity",
                value: "8k".into(),
                origin: flag(),
                example: 8192,
            },
        ),
        (
            &["--ring-capacity", "99999999999999999999999"],
            ConfigError::OutOfRange {
                setting: "--ring-capacity",
                value: u64::MAX,
                origin: flag(),
                min: 1,
                max: Some(1 << 24),
            },
        ),
        (
            &["--read-coalesce-ms", "1001"],
            ConfigError::OutOfRange {
                setting: "--read-coalesce-ms",
                value: 1_001,
                origin: flag(),
                min: 0,
                max: Some(1_000),
            },
        ),
        (
            &["--batch-linger-ms", "60001"],
            ConfigError::OutOfRange {
                setting: "--batch-linger-ms",
                value: 60_001,
                origin: flag(),
                min: 0,
                max: Some(60_000),
            },
        ),
        (
            &["--compression", "lz4"],
            ConfigError::InvalidChoice {
                setting: "--compression",
                value: "lz4".into(),
                origin: flag(),
                choices: "zstd-stream, zlib-stream, payload, none",
            },
        ),
        (
            &["--dedup-message-updates", "maybe"],
            ConfigError::InvalidChoice {
                setting: "--dedup-message-updates",
                value: "maybe".into(),
                origin: flag(),
                choices: "on, off",
            },
        ),
        (
            &["--log-format", "xml"],
            ConfigError::InvalidChoice {
                setting: "--log-format",
                value: "xml".into(),
                origin: flag(),
                choices: "pretty, json",
            },
        ),
        (
            &["--admin-addr", "localhost:7878"],
            ConfigError::InvalidAddress {
                setting: "--admin-addr",
                value: "localhost:7878".into(),
                origin: flag(),
            },
        ),
        (
            &["--admin-addr", "0.0.0.0:7878"],
            ConfigError::AdminTokenRequired {
                addr: "0.0.0.0:7878".parse().expect("valid"),
            },
        ),
        (
            &["--identify-interval-ms", "100"],
            ConfigError::IdentifyIntervalOnDiscord {
                identify_interval_ms: 100,
            },
        ),
        (
            &[
                "--identify-interval-ms",
                "100",
                "--gateway-url",
                "wss://gateway.discord.gg",
            ],
            ConfigError::IdentifyIntervalOnDiscord {
                identify_interval_ms: 100,
            },
        ),
        (
            &["--data-dir", ""],
            ConfigError::EmptyPath {
                setting: "--data-dir",
                origin: flag(),
            },
        ),
        (
            &["--token", "Bot MTIz.abc"],
            ConfigError::MalformedSecret {
                setting: "--token",
                env: ENV_TOKEN,
                problem: "starts with `Bot `; give the bare token (shardgate adds the prefix where \
                          REST needs it)",
            },
        ),
        (
            &["--forward-secret", "line\nbreak"],
            ConfigError::MalformedSecret {
                setting: "--forward-secret",
                env: ENV_FORWARD_SECRET,
                problem: "contains a control character (a line break?); remove it",
            },
        ),
        (
            &["--admin-token", ""],
            ConfigError::EmptySecret {
                setting: "--admin-token",
                env: ENV_ADMIN_TOKEN,
            },
        ),
        (
            &["--queue-bytes-max", "0"],
            ConfigError::OutOfRange {
                setting: "--queue-bytes-max",
                value: 0,
                origin: flag(),
                min: 1,
                max: Some(1 << 40),
            },
        ),
        (
            &["--queue-bytes-max", "64MiB"],
            ConfigError::NotANumber {
                setting: "--queue-bytes-max",
                value: "64MiB".into(),
                origin: flag(),
                example: 64 << 20,
            },
        ),
        (
            &["--queue-bytes-max", "1048575"],
            ConfigError::QueueBelowBatch {
                queue_bytes_max: (1 << 20) - 1,
                batch_bytes_max: 1 << 20,
            },
        ),
        (
            &["--queue-bytes-max", "4096", "--batch-bytes-max", "4097"],
            ConfigError::QueueBelowBatch {
                queue_bytes_max: 4096,
                batch_bytes_max: 4097,
            },
        ),
        (
            &["--spill-bytes-max", "1048575"],
            ConfigError::SpillTooSmall {
                value: (1 << 20) - 1,
                origin: flag(),
            },
        ),
        (
            &["--spill-bytes-max", "1"],
            ConfigError::SpillTooSmall {
                value: 1,
                origin: flag(),
            },
        ),
        (
            &["--spill-bytes-max", "1125899906842625"],
            ConfigError::OutOfRange {
                setting: "--spill-bytes-max",
                value: (1 << 50) + 1,
                origin: flag(),
                min: 0,
                max: Some(1 << 50),
            },
        ),
        (
            &["--spill-bytes-max", "1GiB"],
            ConfigError::NotANumber {
                setting: "--spill-bytes-max",
                value: "1GiB".into(),
                origin: flag(),
                example: 1 << 30,
            },
        ),
        (
            &["--spill-fsync", "sometimes"],
            ConfigError::InvalidChoice {
                setting: "--spill-fsync",
                value: "sometimes".into(),
                origin: flag(),
                choices: SPILL_FSYNC_CHOICES,
            },
        ),
        (
            &["--spill-fsync", "1000"],
            ConfigError::InvalidChoice {
                setting: "--spill-fsync",
                value: "1000".into(),
                origin: flag(),
                choices: SPILL_FSYNC_CHOICES,
            },
        ),
        (
            &["--spill-fsync", "1s"],
            ConfigError::InvalidChoice {
                setting: "--spill-fsync",
                value: "1s".into(),
                origin: flag(),
                choices: SPILL_FSYNC_CHOICES,
            },
        ),
        (
            &["--spill-fsync", "ms"],
            ConfigError::InvalidChoice {
                setting: "--spill-fsync",
                value: "ms".into(),
                origin: flag(),
                choices: SPILL_FSYNC_CHOICES,
            },
        ),
        (
            &["--backlog-rate", "4294967296"],
            ConfigError::OutOfRange {
                setting: "--backlog-rate",
                value: 1 << 32,
                origin: flag(),
                min: 0,
                max: Some(u64::from(u32::MAX)),
            },
        ),
        (
            &["--backlog-rate", "fast"],
            ConfigError::NotANumber {
                setting: "--backlog-rate",
                value: "fast".into(),
                origin: flag(),
                example: 20_000,
            },
        ),
        (
            &["--session-save-interval-ms", "99"],
            ConfigError::OutOfRange {
                setting: "--session-save-interval-ms",
                value: 99,
                origin: flag(),
                min: 100,
                max: Some(60_000),
            },
        ),
        (
            &["--session-save-interval-ms", "60001"],
            ConfigError::OutOfRange {
                setting: "--session-save-interval-ms",
                value: 60_001,
                origin: flag(),
                min: 100,
                max: Some(60_000),
            },
        ),
        (
            &["--session-save-interval-ms", "1s"],
            ConfigError::NotANumber {
                setting: "--session-save-interval-ms",
                value: "1s".into(),
                origin: flag(),
                example: 1_000,
            },
        ),
        (
            &["--redis-url", " "],
            ConfigError::EmptySecret {
                setting: "--redis-url",
                env: ENV_REDIS_URL,
            },
        ),
        (
            &["--cluster-name", "sg:prod"],
            ConfigError::InvalidFleetName {
                setting: "--cluster-name",
                value: "sg:prod".into(),
                origin: flag(),
                example: "shardgate",
            },
        ),
        (
            &["--redis-url", REDIS_URL, "--host-id", "{gw}"],
            ConfigError::InvalidFleetName {
                setting: "--host-id",
                value: "{gw}".into(),
                origin: flag(),
                example: "gateway-1",
            },
        ),
        (
            &["--host-lease-ms", "499"],
            ConfigError::OutOfRange {
                setting: "--host-lease-ms",
                value: 499,
                origin: flag(),
                min: 500,
                max: Some(600_000),
            },
        ),
        (
            &["--shard-lease-ms", "600001"],
            ConfigError::OutOfRange {
                setting: "--shard-lease-ms",
                value: 600_001,
                origin: flag(),
                min: 1_000,
                max: Some(600_000),
            },
        ),
        (
            &["--moves-per-minute", "0"],
            ConfigError::OutOfRange {
                setting: "--moves-per-minute",
                value: 0,
                origin: flag(),
                min: 1,
                max: Some(100_000),
            },
        ),
        (
            &["--host-capacity", "0"],
            ConfigError::OutOfRange {
                setting: "--host-capacity",
                value: 0,
                origin: flag(),
                min: 1,
                max: None,
            },
        ),
        (
            &["--host-capacity", "lots"],
            ConfigError::NotANumber {
                setting: "--host-capacity",
                value: "lots".into(),
                origin: flag(),
                example: 100,
            },
        ),
        (
            &["--host-id", "gateway-1"],
            ConfigError::FleetSettingWithFleetOff {
                setting: "--host-id",
                origin: flag(),
            },
        ),
        (
            &["--redis-url", REDIS_URL, "--host-lease-ms", "20000"],
            ConfigError::ShardLeaseBelowHostLease {
                shard_lease_ms: 15_000,
                host_lease_ms: 20_000,
            },
        ),
    ];
    for (argv, expected) in cases {
        assert_eq!(load(argv).map(|_| ()), Err(expected), "{argv:?}");
    }

    assert!(matches!(
        load(&["--log", "shardgate=loud"]),
        Err(ConfigError::InvalidLogFilter { value, origin: Origin::Flag, .. }) if value == "shardgate=loud"
    ));
    assert_eq!(
        Settings::load(&args(&["--forward-url", FORWARD_URL]), &env(), None).map(|_| ()),
        Err(ConfigError::MissingToken)
    );
    assert_eq!(
        Settings::load(&args(&["--token", TOKEN]), &env(), None).map(|_| ()),
        Err(ConfigError::MissingForwardUrl)
    );
}

#[test]
fn messages_say_the_setting_and_the_fix() {
    let message = |argv: &[&'static str]| load(argv).expect_err("invalid").to_string();
    let cases: &[(&[&'static str], &str)] = &[
        (
            &["--shards", "10..=5"],
            "--shards 10..=5: the range is empty; write A..=B with A <= B",
        ),
        (
            &["--total-shards", "4", "--shards", "0..=7"],
            "--total-shards 4 but --shards 0..=7 reaches shard 7; use --shards 0..=3 or raise \
             --total-shards",
        ),
        (
            &["--forward-url", "ftp://x"],
            "--forward-url 'ftp://x': must be http:// or https://",
        ),
        (
            &["--cores", "64"],
            "--cores 64 but this machine has 4 CPUs available; use --cores 4 or fewer, or leave \
             --cores unset to use them all",
        ),
        (
            &["--large-threshold", "10"],
            "--large-threshold 10: must be 50..=250",
        ),
        (
            &["--batch-events-max", "0"],
            "--batch-events-max 0: must be at least 1",
        ),
        (
            &["--ring-capacity", "8k"],
            "--ring-capacity 8k: not a whole number; write digits, e.g. --ring-capacity 8192",
        ),
        (
            &["--compression", "lz4"],
            "--compression lz4: choose one of zstd-stream, zlib-stream, payload, none",
        ),
        (
            &["--queue-bytes-max", "0"],
            "--queue-bytes-max 0: must be 1..=1099511627776",
        ),
        (
            &["--queue-bytes-max", "65536", "--batch-bytes-max", "131072"],
            "--queue-bytes-max 65536 is below --batch-bytes-max 131072: the memory queue must \
             hold a full batch; raise --queue-bytes-max to 131072 or more, or lower \
             --batch-bytes-max to 65536 or less",
        ),
        (
            &["--spill-bytes-max", "1000"],
            "--spill-bytes-max 1000: a spill needs at least 1048576 bytes (1 MiB); raise it, or \
             write 0 for no spill (records then wait in memory and a full --queue-bytes-max \
             backpressures the cores)",
        ),
        (
            &["--spill-fsync", "sometimes"],
            "--spill-fsync sometimes: choose one of always, never, <N>ms (fsync at most every N \
             milliseconds, e.g. 1000ms)",
        ),
        (
            &["--backlog-rate", "fast"],
            "--backlog-rate fast: not a whole number; write digits, e.g. --backlog-rate 20000",
        ),
        (
            &["--session-save-interval-ms", "50"],
            "--session-save-interval-ms 50: must be 100..=60000",
        ),
        (
            &["--redis-url", "http://127.0.0.1:6379"],
            "--redis-url (from the flag, SHARDGATE_REDIS_URL or the config file) must start with \
             redis://, rediss:// (TLS) or redis+unix:// (a local socket); write \
             redis://[user:password@]host:port[/db]",
        ),
        (
            &["--cluster-name", "my bot"],
            "--cluster-name 'my bot': write 1 to 64 characters of A-Z, a-z, 0-9, `.`, `_` and \
             `-` (no spaces, braces or colons), e.g. --cluster-name shardgate",
        ),
        (
            &["--host-id", "gateway-1"],
            "--host-id needs the fleet mode, which is off: set --fleet on (with --redis-url), or \
             --redis-url (or SHARDGATE_REDIS_URL) with --sink http and --fleet auto, to run in a \
             fleet, or remove --host-id to run alone",
        ),
        (
            &["--fleet", "on"],
            "--fleet on needs --redis-url (the fleet's Redis): set --redis-url (or \
             SHARDGATE_REDIS_URL) to run in a fleet, or set --fleet auto or off to run alone",
        ),
        (
            &["--fleet", "yes"],
            "--fleet yes: choose one of auto, on, off",
        ),
        (
            &["--redis-url", REDIS_URL, "--shard-lease-ms", "5000"],
            "--shard-lease-ms 5000 is below --host-lease-ms 10000: a shard's lease must last at \
             least as long as its host's; raise --shard-lease-ms to 10000 or more, or lower \
             --host-lease-ms to 5000 or less",
        ),
        (
            &["--host-capacity", "0"],
            "--host-capacity 0: must be at least 1",
        ),
        (
            &["--moves-per-minute", "100001"],
            "--moves-per-minute 100001: must be 1..=100000",
        ),
    ];
    for (argv, expected) in cases {
        assert_eq!(message(argv), *expected, "{argv:?}");
    }
    let intents = message(&["--intents", "FOO"]);
    assert!(
        intents
            .starts_with("--intents FOO: unknown intent name; known names: GUILDS, GUILD_MEMBERS,")
    );
    assert!(intents.contains("DIRECT_MESSAGE_POLLS; or give the bit set as a number"));
    assert_eq!(
        Settings::load(&args(&["--forward-url", FORWARD_URL]), &env(), None)
            .expect_err("no token")
            .to_string(),
        "--token is missing: pass --token or set DISCORD_TOKEN"
    );
}

#[test]
fn file_errors() {
    assert_eq!(
        load_file(&[], "totl_shards = 16").map(|_| ()),
        Err(ConfigError::UnknownFileKey {
            path: "data.toml".into(),
            key: "totl_shards".into(),
            suggestion: Some("total_shards"),
        })
    );
    assert_eq!(
        load_file(&[], "totl_shards = 16")
            .expect_err("unknown key")
            .to_string(),
        "config file data.toml: unknown key `totl_shards`; did you mean `total_shards`?"
    );
    // `config` and `check` are flags only; a nested table is an unknown key by its name.
    for (toml, key) in [
        ("config = \"other.toml\"", "config"),
        ("check = true", "check"),
        ("[engine]\ncores = 2", "engine"),
    ] {
        assert!(
            matches!(load_file(&[], toml), Err(ConfigError::UnknownFileKey { key: found, .. }) if found == key),
            "{toml}"
        );
    }
    let syntax = load_file(&[], "total_shards = ").expect_err("bad TOML");
    assert!(
        matches!(&syntax, ConfigError::FileSyntax { path, .. } if path == &PathBuf::from("data.toml"))
    );
    assert!(
        syntax
            .to_string()
            .starts_with("config file data.toml: TOML parse error at line 1"),
        "{syntax}"
    );
    assert!(matches!(
        load_file(&[], "total_shards = { count = 2 }"),
        Err(ConfigError::FileSyntax { .. })
    ));

    // A bad value from the file names its origin.
    assert_eq!(
        load_file(&[], "shards = \"10..=5\"").map(|_| ()),
        Err(ConfigError::EmptyShardRange {
            start: 10,
            end: 5,
            origin: from_file()
        })
    );
    assert_eq!(
        load_file(&[], "large_threshold = 10")
            .expect_err("out of range")
            .to_string(),
        "--large-threshold 10 (from config file data.toml): must be 50..=250"
    );
    assert_eq!(
        load_file(&[], "batch_linger_ms = 2.5").map(|_| ()),
        Err(ConfigError::NotANumber {
            setting: "--batch-linger-ms",
            value: "2.5".into(),
            origin: from_file(),
            example: 5,
        })
    );
    assert_eq!(
        load_file(&[], "spill_fsync = 1000")
            .expect_err("no unit")
            .to_string(),
        "--spill-fsync 1000 (from config file data.toml): choose one of always, never, <N>ms \
         (fsync at most every N milliseconds, e.g. 1000ms)"
    );
    assert_eq!(
        load_file(&[], "spill_bytes_max = 4096").map(|_| ()),
        Err(ConfigError::SpillTooSmall {
            value: 4096,
            origin: from_file(),
        })
    );
    // A fleet setting in the file without --redis-url names the file.
    assert_eq!(
        load_file(&[], "host_capacity = 50")
            .expect_err("no fleet")
            .to_string(),
        "--host-capacity (from config file data.toml) needs the fleet mode, which is off: set \
         --fleet on (with --redis-url), or --redis-url (or SHARDGATE_REDIS_URL) with --sink \
         http and --fleet auto, to run in a fleet, or remove --host-capacity to run alone"
    );
    assert_eq!(
        load_file(&[], "fleet = \"on\"")
            .expect_err("no Redis")
            .to_string(),
        "--fleet on (from config file data.toml) needs --redis-url (the fleet's Redis): set \
         --redis-url (or SHARDGATE_REDIS_URL) to run in a fleet, or set --fleet auto or off to \
         run alone"
    );
    // A flag overrides a bad file value without complaint.
    assert!(load_file(&["--shards", "0..=1"], "shards = \"10..=5\"").is_ok());

    let missing = ConfigFile::read(Path::new("/nonexistent/shardgate.toml")).expect_err("missing");
    assert!(
        matches!(&missing, ConfigError::FileUnreadable { path, .. } if path == Path::new("/nonexistent/shardgate.toml"))
    );
    assert!(
        missing.to_string().ends_with("; check the --config path"),
        "{missing}"
    );
}

#[test]
fn intents_by_number_and_names() {
    let cases: &[(&'static str, u64)] = &[
        ("513", 513),
        ("0", 0),
        ("GUILDS,GUILD_MESSAGES", 513),
        (" guilds , guild_messages ", 513),
        ("GUILDS,GUILD_MESSAGES,MESSAGE_CONTENT", 33_281),
        ("GUILD_EMOJIS_AND_STICKERS", 1 << 3),
        ("GUILD_EXPRESSIONS,GUILD_EMOJIS_AND_STICKERS", 1 << 3),
        ("GUILDS,512", 513),
        (
            "DIRECT_MESSAGE_POLLS,AUTO_MODERATION_EXECUTION",
            (1 << 25) | (1 << 21),
        ),
        ("1099511627776", 1 << 40),
    ];
    for &(text, bits) in cases {
        let settings = load(&["--intents", text]).unwrap_or_else(|error| panic!("{text}: {error}"));
        assert_eq!(settings.intents.bits(), bits, "{text}");
    }
    for (name, bit) in INTENTS {
        let settings = load(&["--intents", name]).expect("a table name");
        assert_eq!(settings.intents.bits(), 1 << bit, "{name}");
    }
    for (toml, bits) in [("intents = 513", 513), ("intents = [\"GUILDS\", 512]", 513)] {
        assert_eq!(
            load_file(&[], toml).expect("valid").intents.bits(),
            bits,
            "{toml}"
        );
    }
    // Display parses back.
    let odd = Intents::from_bits(1 | (1 << 15) | (1 << 40));
    let text = odd.to_string();
    let settings = Settings::load(
        &args(&with_required(&[])),
        &env(),
        Some(&ConfigFile::new("data.toml", format!("intents = {text:?}"))),
    )
    .expect("display output parses");
    assert_eq!(settings.intents, odd);
}

#[test]
fn total_shards_and_shards_syntax() {
    let cases: &[(&[&'static str], TotalShards, Option<ShardRange>)] = &[
        (&[], TotalShards::Auto, None),
        (&["--total-shards", "auto"], TotalShards::Auto, None),
        (
            &["--total-shards", "AUTO", "--shards", "all"],
            TotalShards::Auto,
            None,
        ),
        (
            &["--total-shards", "16"],
            TotalShards::Fixed(nonzero(16)),
            None,
        ),
        (
            &["--total-shards", "16", "--shards", "3"],
            TotalShards::Fixed(nonzero(16)),
            Some(range(3, 3)),
        ),
        (
            &["--total-shards", "16", "--shards", " 0 ..= 15 "],
            TotalShards::Fixed(nonzero(16)),
            Some(range(0, 15)),
        ),
        (
            &["--shards", "100..=199"],
            TotalShards::Auto,
            Some(range(100, 199)),
        ),
    ];
    for (argv, total, shards) in cases {
        let settings = load(argv).unwrap_or_else(|error| panic!("{argv:?}: {error}"));
        assert_eq!(
            (settings.total_shards, settings.shards),
            (*total, *shards),
            "{argv:?}"
        );
    }
    for (toml, total) in [
        ("total_shards = 16", TotalShards::Fixed(nonzero(16))),
        ("total_shards = \"auto\"", TotalShards::Auto),
    ] {
        assert_eq!(
            load_file(&[], toml).expect("valid").total_shards,
            total,
            "{toml}"
        );
    }
}

#[test]
fn plans() {
    // (argv, Discord's recommendation, expected (shards, cores used, shards per core)).
    type Case = (
        &'static [&'static str],
        u32,
        Result<(ShardRange, u32, u32), ConfigError>,
    );
    let cases: &[Case] = &[
        (&["--total-shards", "16"], 99, Ok((range(0, 15), 4, 4))),
        (&[], 6, Ok((range(0, 5), 3, 2))),
        (&[], 1, Ok((range(0, 0), 1, 1))),
        (&["--cores", "1"], 5, Ok((range(0, 4), 1, 5))),
        (
            &["--total-shards", "16", "--shards-per-core", "10"],
            99,
            Ok((range(0, 15), 2, 10)),
        ),
        (&["--shards", "8..=11"], 16, Ok((range(8, 11), 4, 1))),
        (
            &["--shards", "0..=4294967295", "--cores", "1"],
            u32::MAX,
            Err(ConfigError::ShardsBeyondTotal {
                shards: range(0, u32::MAX),
                total_shards: u32::MAX,
                auto: true,
            }),
        ),
        (
            &["--shards", "2..=5"],
            4,
            Err(ConfigError::ShardsBeyondTotal {
                shards: range(2, 5),
                total_shards: 4,
                auto: true,
            }),
        ),
        (
            &["--cores", "2", "--shards-per-core", "2"],
            5,
            Err(ConfigError::ShardsPerCoreTooSmall {
                shards_per_core: 2,
                cores: 2,
                owned: 5,
            }),
        ),
    ];
    for (argv, recommended, expected) in cases {
        let settings = load(argv).unwrap_or_else(|error| panic!("{argv:?}: {error}"));
        let plan = settings
            .plan(nonzero(*recommended))
            .map(|plan| (plan.shards, plan.cores, plan.shards_per_core));
        assert_eq!(&plan, expected, "{argv:?} recommended {recommended}");
    }
    // An explicit range with `auto` is checked against placement at load already.
    assert_eq!(
        load(&[
            "--shards",
            "0..=9",
            "--cores",
            "2",
            "--shards-per-core",
            "4"
        ])
        .map(|_| ()),
        Err(ConfigError::ShardsPerCoreTooSmall {
            shards_per_core: 4,
            cores: 2,
            owned: 10
        })
    );
    assert_eq!(
        load(&["--shards", "2..=5"])
            .expect("valid")
            .plan(nonzero(4))
            .expect_err("beyond")
            .to_string(),
        "--total-shards 4 (Discord's recommendation for `auto`) but --shards 2..=5 reaches shard 5; \
         use --shards 0..=3 or set --total-shards to the count every process of the bot shares"
    );
}

#[test]
fn identify_interval_is_for_mocks_only() {
    for argv in [
        &[
            "--identify-interval-ms",
            "100",
            "--gateway-url",
            "ws://127.0.0.1:1",
        ][..],
        &[
            "--identify-interval-ms",
            "100",
            "--api-base",
            "http://127.0.0.1:1/api/v10",
        ][..],
        &["--identify-interval-ms", "6000"][..],
    ] {
        assert!(load(argv).is_ok(), "{argv:?}");
    }
}

#[test]
fn spill_and_backlog_settings() {
    // --spill-fsync: the three forms, any case, surrounding spaces.
    let cases: &[(&'static str, FsyncPolicy)] = &[
        ("always", FsyncPolicy::Always),
        ("never", FsyncPolicy::Never),
        ("1000ms", FsyncPolicy::IntervalMs(1_000)),
        ("0ms", FsyncPolicy::IntervalMs(0)),
        (" NEVER ", FsyncPolicy::Never),
        ("250MS", FsyncPolicy::IntervalMs(250)),
    ];
    for &(text, policy) in cases {
        let settings =
            load(&["--spill-fsync", text]).unwrap_or_else(|error| panic!("{text}: {error}"));
        assert_eq!(settings.spill_fsync, policy, "{text}");
        // The summary writes it back in a form that parses to the same policy.
        let (_, shown) = settings
            .summary_fields()
            .into_iter()
            .find(|(key, _)| *key == "spill_fsync")
            .expect("listed");
        assert_eq!(shown.parse::<FsyncPolicy>(), Ok(policy), "{text}");
    }

    // Segments are min(64 MiB, spill / 4); 0 is no spill; 1 MiB is the smallest spill.
    let cases: &[(&'static str, u64)] = &[
        ("0", 0),
        ("1048576", 256 << 10),
        ("4194305", (4 << 20) / 4),
        ("268435456", 64 << 20),
        ("1073741824", 64 << 20),
        ("1125899906842624", 64 << 20),
    ];
    for &(text, segment_bytes) in cases {
        let settings =
            load(&["--spill-bytes-max", text]).unwrap_or_else(|error| panic!("{text}: {error}"));
        assert_eq!(settings.spill_segment_bytes(), segment_bytes, "{text}");
        match settings.spill_config() {
            None => assert_eq!(settings.spill_bytes_max, 0),
            Some(config) => {
                assert_eq!(config.max_bytes, settings.spill_bytes_max);
                assert_eq!(config.segment_bytes, segment_bytes);
                assert!(config.max_bytes >= 4 * config.segment_bytes, "{text}");
                assert_eq!(config.dir, PathBuf::from("./data/spill"));
                assert_eq!(config.fsync, Settings::DEFAULT_SPILL_FSYNC);
            }
        }
    }

    // The queue may equal one batch; the bounds of each range are accepted.
    for argv in [
        &["--queue-bytes-max", "1048576"][..],
        &["--queue-bytes-max", "1", "--batch-bytes-max", "1"][..],
        &["--queue-bytes-max", "1099511627776"][..],
        &["--backlog-rate", "4294967295"][..],
        &["--session-save-interval-ms", "60000"][..],
    ] {
        assert!(load(argv).is_ok(), "{argv:?}");
    }

    let summary = load(&["--spill-bytes-max", "0", "--backlog-rate", "0"])
        .expect("valid")
        .summary();
    for field in [
        "queue_bytes_max=67108864",
        "spill_bytes_max=0",
        "spill_segment_bytes=0",
        "spill_fsync=1000ms",
        "backlog_rate=0",
        "session_save_interval_ms=1000",
    ] {
        assert!(
            summary.split(' ').any(|pair| pair == field),
            "{field} not in {summary}"
        );
    }
}

#[test]
fn secrets_never_print() {
    let secrets = [
        TOKEN,
        "fwd-SECRET-value",
        "admin-SECRET-value",
        "redis-SECRET-value",
    ];
    let argv = [
        "--forward-secret",
        secrets[1],
        "--admin-token",
        secrets[2],
        "--redis-url",
        "redis://shardgate:redis-SECRET-value@redis.internal:6379/0",
        "--admin-addr",
        "0.0.0.0:7878",
        "--total-shards",
        "2",
    ];
    let parsed = args(&with_required(&argv));
    let environment = env().with_var(ENV_TOKEN, "env-SECRET-value");
    let file = ConfigFile::new("data.toml", "token = \"file-SECRET-value\"");
    let settings = Settings::load(&parsed, &environment, Some(&file)).expect("valid");
    let printed = [
        format!("{settings:?}"),
        format!("{settings:#?}"),
        settings.summary(),
        format!("{:?}", settings.summary_fields()),
        format!("{parsed:?}"),
        format!("{environment:?}"),
        format!("{file:?}"),
    ];
    for text in &printed {
        for secret in secrets
            .iter()
            .chain(&["env-SECRET-value", "file-SECRET-value"])
        {
            assert!(!text.contains(secret), "{secret} leaked into {text}");
        }
    }
    assert!(printed[0].contains("[redacted]"));
    let summary = settings.summary();
    assert!(
        summary.contains("forward_secret=set")
            && summary.contains("admin_token=set")
            && summary.contains("redis_url=set"),
        "{summary}"
    );

    // Errors about secrets never repeat them.
    for argv in [
        &["--token", "Bot MTIz.hunter2"][..],
        &["--token", "MTIz hunter2"][..],
        &["--forward-secret", "hunter2\r\ninjected: yes"][..],
        &["--admin-token", "hunter2\u{7}"][..],
        &["--forward-url", "https://user:hunter2@bot/"][..],
        &["--gateway-url", "http://user:hunter2@gateway/"][..],
        &["--redis-url", "http://user:hunter2@redis/"][..],
        &["--redis-url", "redis://user:hunter2@redis:99999/"][..],
        &["--redis-url", "redis://:hunter2@redis/zero"][..],
        &["--redis-url", "redis://:hunter2@[::1"][..],
        &["--redis-url", "redis://:hunter2@redis/?protocol=hunter2"][..],
        &["--redis-url", "hunter2"][..],
        &["--redis-url", "redis://:hunter2 @redis"][..],
    ] {
        let message = load(argv).expect_err("invalid").to_string();
        assert!(!message.contains("hunter2"), "{message}");
    }
}

#[test]
fn summary_lists_the_plan() {
    let settings = load(&[
        "--total-shards",
        "16",
        "--cores",
        "2",
        "--intents",
        "GUILDS,MESSAGE_CONTENT",
        "--events",
        "MESSAGE_CREATE,GUILD_CREATE",
    ])
    .expect("valid");
    let summary = settings.summary();
    for field in [
        "total_shards=16",
        "shards=0..=15",
        "cores=2",
        "cpus_available=4",
        "cores_used=2",
        "shards_per_core=8",
        "compression=zstd-stream",
        "intents=32769",
        "intent_names=GUILDS,MESSAGE_CONTENT",
        "privileged_intents=MESSAGE_CONTENT",
        "events=GUILD_CREATE,MESSAGE_CREATE",
        "ring_capacity=8192",
        "forward_secret=unset",
        "gateway_url=from-gateway-bot",
    ] {
        assert!(
            summary.split(' ').any(|pair| pair == field),
            "{field} not in {summary}"
        );
    }
    let auto = load(&[]).expect("valid").summary();
    assert!(auto.contains("total_shards=auto shards=all"), "{auto}");
    assert!(
        auto.contains("cores_used=auto shards_per_core=auto"),
        "{auto}"
    );
}

#[test]
fn ca_file_is_checked() {
    let dir = std::env::temp_dir().join(format!("shardgate-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let with_ca = |path: &Path| {
        let mut settings = load(&[]).expect("valid");
        settings.ca_file = Some(path.to_owned());
        settings.check_files()
    };
    let pem = dir.join("ca.pem");
    std::fs::write(
        &pem,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .expect("write");
    assert_eq!(with_ca(&pem), Ok(()));
    let empty = dir.join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").expect("write");
    assert_eq!(
        with_ca(&empty),
        Err(ConfigError::CaFileWithoutCertificates {
            path: empty.clone()
        })
    );
    let missing = dir.join("missing.pem");
    assert!(
        matches!(with_ca(&missing), Err(ConfigError::CaFileUnreadable { path, .. }) if path == missing)
    );
    std::fs::remove_dir_all(&dir).expect("clean up");
    assert_eq!(load(&[]).expect("valid").check_files(), Ok(()));
}

#[test]
fn demo_defaults() {
    let command = DemoArgs::augment_args(Command::new("demo"));
    let demo =
        DemoArgs::from_arg_matches(&command.clone().get_matches_from(["demo"])).expect("defaults");
    assert_eq!(
        (demo.duration, demo.shards, demo.cores, demo.rate),
        (30, 32, None, 50)
    );
    assert_eq!(demo.compression, Compression::ZstdStream);
    let matches = command
        .try_get_matches_from([
            "demo",
            "--duration",
            "5",
            "--shards",
            "4",
            "--cores",
            "2",
            "--compression",
            "none",
            "--rate",
            "7",
        ])
        .expect("valid");
    let demo = DemoArgs::from_arg_matches(&matches).expect("valid");
    assert_eq!(
        (demo.duration, demo.shards, demo.cores, demo.rate),
        (5, 4, Some(2), 7)
    );
    assert_eq!(demo.compression, Compression::None);
}

#[test]
fn urls_are_normalised() {
    let settings = load(&[
        "--api-base",
        "https://discord.com/api/v10///",
        "--gateway-url",
        "WSS://[::1]:8443",
        "--forward-url",
        "HTTPS://bot:8443/events?x=1",
    ])
    .expect("valid");
    assert_eq!(settings.api_base, "https://discord.com/api/v10");
    assert_eq!(settings.gateway_url.as_deref(), Some("wss://[::1]:8443"));
    assert_eq!(settings.forward_url, "https://bot:8443/events?x=1");
    assert!(crate::sink::http::ForwardUrl::parse(&settings.forward_url).is_ok());
}

#[test]
fn a_secret_matches_only_itself() {
    let secret = Secret::new("admin-s3cret");
    assert!(secret.matches(b"admin-s3cret"));
    for other in [
        &b""[..],
        b"admin-s3cre",
        b"admin-s3cret!",
        b"admin-s3creT",
        b"x",
    ] {
        assert!(!secret.matches(other), "{other:?}");
    }
    assert!(Secret::new("").matches(b""));
}

/// A valid `--redis-url` with a password.
const REDIS_URL: &str = "redis://shardgate:s3cret@127.0.0.1:6379/0";

#[test]
fn fleet_settings_are_read() {
    let settings = load(&[
        "--redis-url",
        REDIS_URL,
        "--cluster-name",
        "bot.prod_2-eu",
        "--host-id",
        " gateway-1 ",
        "--host-lease-ms",
        "500",
        "--shard-lease-ms",
        "600000",
        "--moves-per-minute",
        "100_000",
        "--host-capacity",
        "4294967295",
    ])
    .expect("every value is valid");
    assert!(settings.is_fleet());
    assert_eq!(settings.redis_url, Some(Secret::new(REDIS_URL)));
    assert_eq!(settings.cluster_name, "bot.prod_2-eu");
    assert_eq!(settings.host_id.as_deref(), Some("gateway-1"));
    assert_eq!(settings.host_id(), "gateway-1");
    assert_eq!(
        (settings.host_lease_ms, settings.shard_lease_ms),
        (500, 600_000)
    );
    assert_eq!(settings.moves_per_minute, 100_000);
    assert_eq!(settings.host_capacity, Some(u32::MAX));
    let summary = settings.summary();
    for field in [
        "fleet=on",
        "redis_url=set",
        "cluster_name=bot.prod_2-eu",
        "host_id=gateway-1",
        "host_lease_ms=500",
        "shard_lease_ms=600000",
        "moves_per_minute=100000",
        "host_capacity=4294967295",
    ] {
        assert!(
            summary.split(' ').any(|pair| pair == field),
            "{field} not in {summary}"
        );
    }
    let alone = load(&[]).expect("valid").summary();
    for field in [
        "fleet=off",
        "redis_url=unset",
        "cluster_name=shardgate",
        "host_id=host",
        "host_lease_ms=10000",
        "shard_lease_ms=15000",
        "moves_per_minute=60",
        "host_capacity=all",
    ] {
        assert!(
            alone.split(' ').any(|pair| pair == field),
            "{field} not in {alone}"
        );
    }

    // The leases may be equal; the names may be 1 or 64 characters.
    let longest: &'static str = "a".repeat(64).leak();
    for argv in [
        &["--host-lease-ms", "15000"][..],
        &["--host-lease-ms", "600000", "--shard-lease-ms", "600000"][..],
        &["--cluster-name", "x", "--host-id", longest][..],
        &["--shard-lease-ms", "1000", "--host-lease-ms", "1000"][..],
    ] {
        let argv: Vec<&'static str> = ["--redis-url", REDIS_URL]
            .iter()
            .chain(argv)
            .copied()
            .collect();
        assert!(load(&argv).is_ok(), "{argv:?}");
    }
}

#[test]
fn without_redis_only_the_fleet_defaults_are_accepted() {
    // The defaults written out (as examples/shardgate.toml does) are fine alone.
    for argv in [
        &["--cluster-name", "shardgate"][..],
        &["--host-lease-ms", "10000"][..],
        &["--shard-lease-ms", "15_000"][..],
        &["--moves-per-minute", "60"][..],
    ] {
        let settings = load(argv).unwrap_or_else(|error| panic!("{argv:?}: {error}"));
        assert!(!settings.is_fleet(), "{argv:?}");
    }
    let toml = "cluster_name = \"shardgate\"\nhost_lease_ms = 10000\nshard_lease_ms = 15000\n\
                moves_per_minute = 60";
    assert!(load_file(&[], toml).is_ok());

    // Anything else names the first such setting.
    let cases: &[(&[&'static str], &str)] = &[
        (&["--cluster-name", "other"], "--cluster-name"),
        (&["--host-id", "host"], "--host-id"),
        (&["--host-lease-ms", "5000"], "--host-lease-ms"),
        (&["--shard-lease-ms", "20000"], "--shard-lease-ms"),
        (&["--moves-per-minute", "61"], "--moves-per-minute"),
        (&["--host-capacity", "100"], "--host-capacity"),
        (
            &["--host-capacity", "100", "--cluster-name", "other"],
            "--cluster-name",
        ),
    ];
    for &(argv, setting) in cases {
        assert_eq!(
            load(argv).map(|_| ()),
            Err(ConfigError::FleetSettingWithFleetOff {
                setting,
                origin: Origin::Flag
            }),
            "{argv:?}"
        );
    }
    assert_eq!(
        load_file(&[], "host_id = \"gateway-1\"").map(|_| ()),
        Err(ConfigError::FleetSettingWithFleetOff {
            setting: "--host-id",
            origin: from_file(),
        })
    );
    // With the URL from the environment or the file, they are accepted.
    let environment = env().with_var(ENV_REDIS_URL, REDIS_URL);
    let parsed = args(&with_required(&["--host-id", "gateway-1"]));
    assert!(Settings::load(&parsed, &environment, None).is_ok());
    assert!(
        load_file(
            &["--host-capacity", "5"],
            &format!("redis_url = {REDIS_URL:?}")
        )
        .is_ok()
    );
}

#[test]
fn sink_settings() {
    // The streams sink: every stream setting read, --forward-url not needed (and empty).
    let argv = [
        "--token",
        TOKEN,
        "--redis-url",
        REDIS_URL,
        "--sink",
        "Redis-Streams",
        "--stream-key",
        " bot:{prod}:events ",
        "--stream-partitions",
        "1024",
        "--stream-maxlen",
        "1_000_000_000",
    ];
    let settings = Settings::load(&args(&argv), &env(), None).expect("every value is valid");
    assert_eq!(settings.sink, SinkKind::RedisStreams);
    assert_eq!(settings.forward_url, "");
    assert_eq!(settings.stream_key, "bot:{prod}:events");
    assert_eq!(
        (settings.stream_partitions, settings.stream_maxlen),
        (1_024, 1_000_000_000)
    );
    let summary = settings.summary();
    for field in [
        "forward_url=none",
        "sink=redis-streams",
        "stream_key=bot:{prod}:events",
        "stream_partitions=1024",
        "stream_maxlen=1000000000",
    ] {
        assert!(
            summary.split(' ').any(|pair| pair == field),
            "{field} not in {summary}"
        );
    }
    // A --forward-url given is kept (unused).
    let settings = load(&["--redis-url", REDIS_URL, "--sink", "redis-streams"]).expect("valid");
    assert_eq!(settings.forward_url, FORWARD_URL);
    // The Redis URL from the environment or the file does as well as the flag.
    let environment = env().with_var(ENV_REDIS_URL, REDIS_URL);
    let parsed = args(&["--token", TOKEN, "--sink", "redis-streams"]);
    assert!(Settings::load(&parsed, &environment, None).is_ok());
    let toml = format!("sink = \"redis-streams\"\nredis_url = {REDIS_URL:?}");
    assert!(load_file(&[], &toml).is_ok());
    // The other end of each range.
    assert!(
        load(&[
            "--redis-url",
            REDIS_URL,
            "--sink",
            "redis-streams",
            "--stream-maxlen",
            "1000",
            "--stream-key",
            "k",
        ])
        .is_ok()
    );

    // The HTTP sink: the stream defaults written out are fine, anything else is refused.
    let settings = load(&[
        "--sink",
        "HTTP",
        "--stream-key",
        "shardgate:events",
        "--stream-partitions",
        "1",
        "--stream-maxlen",
        "1_000_000",
    ])
    .expect("defaults");
    assert_eq!(settings.sink, SinkKind::Http);
    assert!(
        settings
            .summary()
            .contains("sink=http stream_key=shardgate:events stream_partitions=1")
    );
    let toml = "sink = \"http\"\nstream_key = \"shardgate:events\"\nstream_partitions = 1\n\
                stream_maxlen = 1000000";
    assert!(load_file(&[], toml).is_ok());
    for &(argv, setting) in &[
        (&["--stream-key", "other"][..], "--stream-key"),
        (&["--stream-partitions", "2"][..], "--stream-partitions"),
        (&["--stream-maxlen", "5000"][..], "--stream-maxlen"),
        (
            &["--stream-maxlen", "5000", "--stream-key", "other"][..],
            "--stream-key",
        ),
    ] {
        assert_eq!(
            load(argv).map(|_| ()),
            Err(ConfigError::StreamSettingWithoutStreams {
                setting,
                origin: Origin::Flag
            }),
            "{argv:?}"
        );
    }
    assert_eq!(
        load_file(&[], "stream_partitions = 4").map(|_| ()),
        Err(ConfigError::StreamSettingWithoutStreams {
            setting: "--stream-partitions",
            origin: from_file(),
        })
    );

    // Required: --forward-url with http (the default), --redis-url with redis-streams.
    assert_eq!(
        Settings::load(&args(&["--token", TOKEN, "--sink", "http"]), &env(), None).map(|_| ()),
        Err(ConfigError::MissingForwardUrl)
    );
    assert_eq!(
        load(&["--sink", "redis-streams"]).map(|_| ()),
        Err(ConfigError::SinkWithoutRedis {
            origin: Origin::Flag
        })
    );
    assert_eq!(
        load_file(&[], "sink = \"redis-streams\"").map(|_| ()),
        Err(ConfigError::SinkWithoutRedis {
            origin: from_file()
        })
    );

    // Each value on its own.
    let streams = |extra: &[&'static str]| -> Vec<&'static str> {
        ["--redis-url", REDIS_URL, "--sink", "redis-streams"]
            .iter()
            .chain(extra)
            .copied()
            .collect()
    };
    let longest: &'static str = "k".repeat(200).leak();
    let too_long: &'static str = "k".repeat(201).leak();
    assert!(load(&streams(&["--stream-key", longest])).is_ok());
    let invalid_key = |value: &str| ConfigError::InvalidStreamKey {
        setting: "--stream-key",
        value: value.to_owned(),
        origin: Origin::Flag,
        max_chars: 200,
        example: "shardgate:events",
    };
    let cases: Vec<(Vec<&'static str>, ConfigError)> = vec![
        (
            vec!["--redis-url", REDIS_URL, "--sink", "kafka"],
            ConfigError::InvalidChoice {
                setting: "--sink",
                value: "kafka".into(),
                origin: Origin::Flag,
                choices: "http, redis-streams",
            },
        ),
        (streams(&["--stream-key", too_long]), invalid_key(too_long)),
        (
            streams(&["--stream-key", "my events"]),
            invalid_key("my events"),
        ),
        (streams(&["--stream-key", " "]), invalid_key(" ")),
        (streams(&["--stream-key", "évents"]), invalid_key("évents")),
        (streams(&["--stream-key", "a\tb"]), invalid_key("a\tb")),
        (
            streams(&["--stream-partitions", "0"]),
            ConfigError::OutOfRange {
                setting: "--stream-partitions",
                value: 0,
                origin: Origin::Flag,
                min: 1,
                max: Some(1_024),
            },
        ),
        (
            streams(&["--stream-partitions", "1025"]),
            ConfigError::OutOfRange {
                setting: "--stream-partitions",
                value: 1_025,
                origin: Origin::Flag,
                min: 1,
                max: Some(1_024),
            },
        ),
        (
            streams(&["--stream-maxlen", "999"]),
            ConfigError::OutOfRange {
                setting: "--stream-maxlen",
                value: 999,
                origin: Origin::Flag,
                min: 1_000,
                max: Some(1_000_000_000),
            },
        ),
        (
            streams(&["--stream-maxlen", "1e6"]),
            ConfigError::NotANumber {
                setting: "--stream-maxlen",
                value: "1e6".into(),
                origin: Origin::Flag,
                example: 1_000_000,
            },
        ),
    ];
    for (argv, expected) in cases {
        assert_eq!(load(&argv).map(|_| ()), Err(expected), "{argv:?}");
    }

    // The messages name the setting and the fix.
    let message = |argv: &[&'static str]| load(argv).expect_err("invalid").to_string();
    let cases: &[(&[&'static str], &str)] = &[
        (
            &["--sink", "kafka"],
            "--sink kafka: choose one of http, redis-streams",
        ),
        (
            &["--sink", "redis-streams"],
            "--sink redis-streams needs --redis-url (the Redis the streams go to): set \
             --redis-url (or SHARDGATE_REDIS_URL), or use --sink http to POST the batches to \
             --forward-url",
        ),
        (
            &["--stream-partitions", "8"],
            "--stream-partitions needs --sink redis-streams: set --sink redis-streams to write \
             the records to Redis streams, or remove --stream-partitions to POST them to \
             --forward-url",
        ),
        (
            &["--stream-key", "my events"],
            "--stream-key 'my events': write 1 to 200 printable ASCII characters without \
             spaces, e.g. --stream-key shardgate:events",
        ),
        (
            &["--stream-maxlen", "2000000000"],
            "--stream-maxlen 2000000000: must be 1000..=1000000000",
        ),
    ];
    for (argv, expected) in cases {
        assert_eq!(message(argv), *expected, "{argv:?}");
    }
    assert_eq!(
        load_file(&[], "sink = \"redis-streams\"")
            .expect_err("no Redis")
            .to_string(),
        "--sink redis-streams (from config file data.toml) needs --redis-url (the Redis the \
         streams go to): set --redis-url (or SHARDGATE_REDIS_URL), or use --sink http to POST \
         the batches to --forward-url"
    );
}

#[test]
fn redis_urls() {
    for url in [
        "redis://127.0.0.1",
        "redis://127.0.0.1:6379",
        "REDIS://redis.internal:6380/15",
        "redis://user:pa%40ss@redis.internal:6379/3",
        "redis://:password@[::1]:6379",
        "redis://localhost/?protocol=resp3",
        "redis+unix:///run/redis/redis.sock",
        "unix:///run/redis.sock?db=2",
    ] {
        let settings = load(&["--redis-url", url]).unwrap_or_else(|error| panic!("{url}: {error}"));
        assert_eq!(settings.redis_url, Some(Secret::new(url)), "{url}");
    }
    // Trimmed, as every secret is (a variable or a file often ends in a newline).
    let environment = env().with_var(ENV_REDIS_URL, "redis://127.0.0.1:6379\n");
    let settings = Settings::load(&args(&with_required(&[])), &environment, None).expect("valid");
    assert_eq!(
        settings.redis_url,
        Some(Secret::new("redis://127.0.0.1:6379"))
    );

    let problem = |argv: &[&'static str]| match load(argv) {
        Err(ConfigError::MalformedSecret {
            setting: "--redis-url",
            env: ENV_REDIS_URL,
            problem,
        }) => problem,
        other => panic!("{argv:?}: {other:?}"),
    };
    let cases: &[(&'static str, &str)] = &[
        ("127.0.0.1:6379", "is not a Redis URL"),
        ("http://127.0.0.1:6379", "must start with redis://"),
        ("valkey://127.0.0.1:6379", "must start with redis://"),
        ("redis://", "has no host"),
        ("redis://:password@/0", "has no host"),
        ("redis://127.0.0.1:99999", "has an invalid port"),
        ("redis://127.0.0.1:", "has an invalid port"),
        ("redis://127.0.0.1/db0", "has an invalid database"),
        ("redis://127.0.0.1/0/1", "has an invalid database"),
        ("redis://0.0.0.0:6379", "names a wildcard address"),
        ("redis://[::]:6379", "names a wildcard address"),
        ("redis+unix://", "has no socket path"),
        ("unix://relative.sock", "has no socket path"),
        ("redis://a b:6379", "contains whitespace"),
        ("redis://[::1", "is refused by the Redis client"),
        (
            "redis://127.0.0.1/?protocol=9",
            "is refused by the Redis client",
        ),
    ];
    for &(url, start) in cases {
        let problem = problem(&["--redis-url", url]);
        assert!(problem.starts_with(start), "{url}: {problem}");
    }
    assert_eq!(
        load(&["--redis-url", "redis://127.0.0.1\t:6379"]).map(|_| ()),
        Err(ConfigError::MalformedSecret {
            setting: "--redis-url",
            env: ENV_REDIS_URL,
            problem: "contains a control character (a line break?); remove it",
        })
    );

    // rediss:// is accepted exactly when the Redis client was built with TLS.
    let tls_built = redis::IntoConnectionInfo::into_connection_info("rediss://127.0.0.1").is_ok();
    let tls = load(&["--redis-url", "rediss://redis.internal:6380"]);
    if tls_built {
        assert!(tls.is_ok(), "{tls:?}");
    } else {
        assert_eq!(
            tls.expect_err("no TLS in this build").to_string(),
            "--redis-url (from the flag, SHARDGATE_REDIS_URL or the config file) asks for TLS \
             (rediss://), which this build of shardgate does not include; use redis:// (through \
             a TLS tunnel to a remote Redis)"
        );
    }
}

#[test]
fn fleet_names() {
    for name in ["a", "shardgate", "Bot.Prod_2-eu", "10.0.0.7", "gw-1"] {
        let argv = [
            "--redis-url",
            REDIS_URL,
            "--cluster-name",
            name,
            "--host-id",
            name,
        ];
        let settings = load(&argv).unwrap_or_else(|error| panic!("{name}: {error}"));
        assert_eq!(
            (settings.cluster_name.as_str(), settings.host_id().as_str()),
            (name, name)
        );
    }
    let too_long: &'static str = "a".repeat(65).leak();
    for name in ["", " ", "sg:x", "{x}", "a b", "a/b", "é", too_long] {
        for (setting, example) in [("--cluster-name", "shardgate"), ("--host-id", "gateway-1")] {
            assert_eq!(
                load(&["--redis-url", REDIS_URL, setting, name]).map(|_| ()),
                Err(ConfigError::InvalidFleetName {
                    setting,
                    value: name.to_owned(),
                    origin: Origin::Flag,
                    example,
                }),
                "{setting} {name:?}"
            );
        }
    }
}

#[test]
fn the_host_id_defaults_to_the_hostname() {
    let load_env = |argv: &[&'static str], environment: Environment| {
        Settings::load(&args(&with_required(argv)), &environment, None)
    };
    let fleet = ["--redis-url", REDIS_URL];
    let settings = load_env(&fleet, env().with_hostname("gw-7.example\n")).expect("valid");
    assert_eq!(settings.hostname, "gw-7.example");
    assert_eq!(settings.host_id, None);
    assert_eq!(settings.host_id(), "gw-7.example");
    // --host-id wins; no hostname (or an empty one) is `host`.
    let settings = load_env(
        &["--redis-url", REDIS_URL, "--host-id", "gateway-2"],
        env().with_hostname("gw-7"),
    )
    .expect("valid");
    assert_eq!(settings.host_id(), "gateway-2");
    for environment in [env(), env().with_hostname(" \n")] {
        let settings = load_env(&fleet, environment).expect("valid");
        assert_eq!(settings.host_id(), Settings::HOSTNAME_FALLBACK);
    }
    // A hostname that cannot be a host id is refused only when it would be one.
    let odd = "host name with spaces";
    assert_eq!(
        load_env(&fleet, env().with_hostname(odd)).map(|_| ()),
        Err(ConfigError::HostnameNotAHostId {
            hostname: odd.to_owned()
        })
    );
    assert_eq!(
        load_env(&fleet, env().with_hostname(odd))
            .expect_err("invalid")
            .to_string(),
        "--host-id is not set and this machine's hostname 'host name with spaces' cannot be a \
         host id (1 to 64 characters of A-Z, a-z, 0-9, `.`, `_` and `-`); set --host-id, e.g. \
         --host-id gateway-1"
    );
    assert!(load_env(&[], env().with_hostname(odd)).is_ok());
    assert!(
        load_env(
            &["--redis-url", REDIS_URL, "--host-id", "gateway-1"],
            env().with_hostname(odd)
        )
        .is_ok()
    );
    // This process's environment reads the real hostname.
    let real = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty());
    assert_eq!(Environment::from_process().hostname(), real.as_deref());
}

#[test]
fn every_secret_has_its_hidden_environment_variable() {
    let command = RunArgs::augment_args(Command::new("run"));
    for (id, var) in [
        ("token", ENV_TOKEN),
        ("forward_secret", ENV_FORWARD_SECRET),
        ("admin_token", ENV_ADMIN_TOKEN),
        ("redis_url", ENV_REDIS_URL),
    ] {
        let arg = command
            .get_arguments()
            .find(|arg| arg.get_id() == id)
            .expect("a flag");
        assert_eq!(arg.get_env(), Some(std::ffi::OsStr::new(var)), "{id}");
        assert!(arg.is_hide_env_values_set(), "{id}");
        assert!(Environment::VARS.contains(&var), "{var}");
    }
    assert_eq!(Environment::VARS.len(), 4);
}

#[test]
fn fleet_mode_is_resolved_from_fleet_sink_and_redis() {
    let host_id_refused = |origin| ConfigError::FleetSettingWithFleetOff {
        setting: "--host-id",
        origin,
    };

    // Auto (the default, any case): the fleet's Redis with the http sink is a fleet.
    for argv in [
        &["--redis-url", REDIS_URL][..],
        &["--redis-url", REDIS_URL, "--fleet", " AUTO "][..],
        &[
            "--redis-url",
            REDIS_URL,
            "--sink",
            "http",
            "--host-id",
            "gateway-1",
        ][..],
    ] {
        let settings = load(argv).unwrap_or_else(|error| panic!("{argv:?}: {error}"));
        assert!(settings.fleet && settings.is_fleet(), "{argv:?}");
    }

    // Auto with the streams sink: the streams' Redis alone is no fleet, so a fleet setting is
    // refused.
    let streams: &[&'static str] = &["--redis-url", REDIS_URL, "--sink", "redis-streams"];
    let settings = load(streams).expect("valid");
    assert!(!settings.is_fleet());
    assert_eq!(settings.redis_url, Some(Secret::new(REDIS_URL)));
    assert!(
        settings
            .summary()
            .split(' ')
            .any(|pair| pair == "fleet=off")
    );
    let argv: Vec<&'static str> = [streams, &["--host-id", "gateway-1"]].concat();
    assert_eq!(load(&argv).map(|_| ()), Err(host_id_refused(Origin::Flag)));
    let toml = format!("sink = \"redis-streams\"\nredis_url = {REDIS_URL:?}\nhost_id = \"a\"");
    assert_eq!(
        load_file(&[], &toml).map(|_| ()),
        Err(host_id_refused(from_file()))
    );

    // On: a fleet with the streams sink too, fleet settings accepted.
    let argv: Vec<&'static str> = [streams, &["--fleet", "On", "--host-id", "gateway-1"]].concat();
    let settings = load(&argv).expect("valid");
    assert!(settings.is_fleet());
    assert_eq!(settings.sink, SinkKind::RedisStreams);
    assert_eq!(settings.host_id(), "gateway-1");
    assert!(settings.summary().split(' ').any(|pair| pair == "fleet=on"));
    let toml = format!("fleet = \"on\"\nredis_url = {REDIS_URL:?}");
    assert!(load_file(&[], &toml).expect("valid").is_fleet());

    // On without a Redis: refused, wherever --fleet came from.
    assert_eq!(
        load(&["--fleet", "on"]).map(|_| ()),
        Err(ConfigError::FleetWithoutRedis {
            origin: Origin::Flag
        })
    );
    assert_eq!(
        load_file(&[], "fleet = \"on\"").map(|_| ()),
        Err(ConfigError::FleetWithoutRedis {
            origin: from_file()
        })
    );

    // Off: never a fleet, even with the http sink and a Redis; fleet settings refused.
    let settings = load(&["--redis-url", REDIS_URL, "--fleet", "off"]).expect("valid");
    assert!(!settings.is_fleet());
    assert_eq!(
        load(&[
            "--redis-url",
            REDIS_URL,
            "--fleet",
            "off",
            "--host-id",
            "gateway-1"
        ])
        .map(|_| ()),
        Err(host_id_refused(Origin::Flag))
    );
    // Off or auto without a Redis: alone, as before.
    assert!(!load(&["--fleet", "off"]).expect("valid").is_fleet());
    assert!(!load(&["--fleet", "auto"]).expect("valid").is_fleet());

    // Alone, the hostname is never checked as a host id.
    let environment = env().with_hostname("not a host id");
    for argv in [
        &["--redis-url", REDIS_URL, "--fleet", "off"][..],
        &["--redis-url", REDIS_URL, "--sink", "redis-streams"][..],
    ] {
        let parsed = args(&with_required(argv));
        let settings = Settings::load(&parsed, &environment, None)
            .unwrap_or_else(|error| panic!("{argv:?}: {error}"));
        assert!(!settings.is_fleet(), "{argv:?}");
    }
    let parsed = args(&with_required(&["--redis-url", REDIS_URL]));
    assert_eq!(
        Settings::load(&parsed, &environment, None).map(|_| ()),
        Err(ConfigError::HostnameNotAHostId {
            hostname: "not a host id".to_owned()
        })
    );

    // Anything else names the choices.
    assert_eq!(
        load(&["--fleet", "yes"]).map(|_| ()),
        Err(ConfigError::InvalidChoice {
            setting: "--fleet",
            value: "yes".to_owned(),
            origin: Origin::Flag,
            choices: "auto, on, off",
        })
    );
}

#[test]
fn routes_take_their_keys_and_inherit_the_rest() {
    let toml = r#"
        events = ["MESSAGE_CREATE"]
        batch_linger_ms = 7
        redis_url = "redis://127.0.0.1:6379"

        [routes.interactions]
        events = ["INTERACTION_CREATE"]
        forward_url = "http://127.0.0.1:9100/interactions"
        forward_secret = "route-secret"
        batch_events_max = 10
        batch_linger_ms = 0

        [routes.members]
        events = "guild_member_add, GUILD_MEMBER_REMOVE"
        sink = "redis-streams"
        stream_maxlen = 5000
        spill_bytes_max = 2097152
    "#;
    let settings = load_file(&[], toml).expect("valid routes");
    assert_eq!(settings.routes.len(), 2);
    let interactions = &settings.routes[0];
    assert_eq!(interactions.name, "interactions");
    assert_eq!(interactions.events, ["INTERACTION_CREATE"]);
    assert_eq!(interactions.sink, SinkKind::Http);
    assert_eq!(
        interactions.forward_url,
        "http://127.0.0.1:9100/interactions"
    );
    assert_eq!(
        interactions.forward_secret,
        Some(Secret::new("route-secret"))
    );
    assert_eq!(
        (interactions.batch_events_max, interactions.batch_linger_ms),
        (10, 0)
    );
    assert_eq!(
        interactions.batch_bytes_max,
        Settings::DEFAULT_BATCH_BYTES_MAX
    );
    let members = &settings.routes[1];
    assert_eq!(members.events, ["GUILD_MEMBER_ADD", "GUILD_MEMBER_REMOVE"]);
    assert_eq!(members.sink, SinkKind::RedisStreams);
    assert_eq!(members.stream_key, "shardgate:events:members");
    assert_eq!(members.stream_maxlen, 5_000);
    assert_eq!(members.spill_bytes_max, 2 << 20);
    assert_eq!(members.batch_linger_ms, 7, "the top-level value");
    assert_eq!(
        settings.default_route().forward_url,
        FORWARD_URL,
        "the default route is the top-level settings"
    );
    // The cores let through --events and every routed type.
    assert_eq!(
        settings.forwarded_events(),
        Events::only(vec![
            "MESSAGE_CREATE",
            "INTERACTION_CREATE",
            "GUILD_MEMBER_ADD",
            "GUILD_MEMBER_REMOVE"
        ])
    );
    // A Redis for the streams alone does not make a fleet.
    assert!(!settings.is_fleet());
    assert_eq!(
        settings.route_spill_dir("members"),
        settings.data_dir.join("routes/members/spill")
    );
    assert_eq!(
        settings.route_spill_dir(DEFAULT_ROUTE),
        settings.spill_dir()
    );
    let summary = settings.summary();
    assert!(
        summary.contains("interactions[INTERACTION_CREATE]->http://127.0.0.1:9100/interactions"),
        "{summary}"
    );
    assert!(!summary.contains("route-secret"), "{summary}");
    assert!(!format!("{settings:?}").contains("route-secret"));
}

#[test]
fn routes_refuse_what_would_be_ambiguous_or_ignored() {
    let cases: &[(&str, &str)] = &[
        (
            "[routes.a]\nevents = [\"READY\"]\nbatch_event_max = 3\n",
            "did you mean `batch_events_max`?",
        ),
        (
            "[routes.a]\nforward_url = \"http://x/\"\n",
            "events is required",
        ),
        (
            "[routes.a]\nevents = \"all\"\n",
            "a route takes named dispatch types",
        ),
        (
            "[routes.a]\nevents = [\"READY\"]\n[routes.b]\nevents = [\"READY\", \"RESUMED\"]\n",
            "READY is in the events of both [routes.a] and [routes.b]",
        ),
        (
            "[routes.default]\nevents = [\"READY\"]\n",
            "route name `default`",
        ),
        (
            "[routes.\"a b\"]\nevents = [\"READY\"]\n",
            "route name `a b`",
        ),
        (
            "[routes.a]\nevents = [\"READY\"]\nsink = \"redis-streams\"\n",
            "needs --redis-url",
        ),
        (
            "[routes.a]\nevents = [\"READY\"]\nstream_maxlen = 5000\n",
            "--stream-maxlen",
        ),
        (
            "[routes.a]\nevents = [\"READY\"]\nbatch_events_max = 0\n",
            "[routes.a]: --batch-events-max 0",
        ),
        ("[routes.a]\nevents = [\"NOT_AN_EVENT\"]\n", "NOT_AN_EVENT"),
        ("routes = 3\n", "[routes.NAME]"),
    ];
    for (toml, expected) in cases {
        let error = load_file(&[], toml).expect_err(toml).to_string();
        assert!(error.contains(expected), "{toml}: {error}");
    }
}

#[test]
fn lanes_shrink_to_what_the_queue_and_the_spill_can_split() {
    let lanes = |argv: &[&'static str]| load(argv).unwrap().default_route().lanes();
    assert_eq!(lanes(&["--batches-in-flight", "8"]), 8);
    // A 1 MiB memory queue holds one 1 MiB batch: one lane.
    assert_eq!(lanes(&["--queue-bytes-max", "1048576"]), 1);
    assert_eq!(
        lanes(&[
            "--queue-bytes-max",
            "1048576",
            "--batch-bytes-max",
            "262144"
        ]),
        4
    );
    // 2 MiB of spill: two lanes of 1 MiB.
    assert_eq!(lanes(&["--spill-bytes-max", "2097152"]), 2);
    assert_eq!(
        lanes(&["--spill-bytes-max", "0", "--batches-in-flight", "64"]),
        64
    );
    let error = load(&["--batches-in-flight", "65"])
        .unwrap_err()
        .to_string();
    assert!(error.contains("--batches-in-flight"), "{error}");
}

#[test]
fn ring_and_dedup_cache_are_sized_from_the_shards_per_core() {
    let settings = load(&[]).expect("valid");
    // (shards a core runs at start, ring records, dedup cache entries); `None`: not known (a
    // fleet's cores start empty), the most.
    for (shards, ring, dedup) in [
        (Some(0), 1_024, 8_192),
        (Some(1), 1_024, 8_192),
        (Some(4), 4_096, 32_768),
        (Some(8), 8_192, 65_536),
        (Some(1_000), 8_192, 65_536),
        (None, 8_192, 65_536),
    ] {
        assert_eq!(settings.ring_capacity_for(shards), ring, "{shards:?}");
        assert_eq!(
            settings.dedup_cache_entries_for(shards),
            dedup,
            "{shards:?}"
        );
    }
    // Given, they are what was given, whatever the shards.
    let settings =
        load(&["--ring-capacity", "100", "--dedup-cache-entries", "300"]).expect("valid");
    for shards in [Some(1), Some(64), None] {
        assert_eq!(settings.ring_capacity_for(shards), 100);
        assert_eq!(settings.dedup_cache_entries_for(shards), 300);
    }
    // The summary states what a core gets under a fixed plan: 8 shards on 2 cores.
    let settings = load(&["--total-shards", "8", "--cores", "2"]).expect("valid");
    let fields = settings.summary_fields();
    let field = |name: &str| {
        fields
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.clone())
    };
    assert_eq!(field("ring_capacity").as_deref(), Some("4096"));
    assert_eq!(field("dedup_cache_entries").as_deref(), Some("32768"));
}
