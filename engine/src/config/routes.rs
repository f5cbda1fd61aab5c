//! Routes: the `[routes.NAME]` tables of the `--config` file. Each sends the dispatch types it
//! names to its own receiver (an HTTP URL or Redis Streams) with its own batching, memory
//! queue and spill, delivered by its own thread, so that one slow receiver cannot delay
//! another route's events. Everything no route names (and the engine's notices) takes the
//! default route: the top-level settings, filtered by `--events`.
//!
//! A route's keys are the top-level keys of its delivery settings ([`ROUTE_KEYS`]), and each
//! one it leaves out is the top-level value (`forward_url` too when its sink is HTTP).

use std::collections::BTreeMap;

use super::{
    ConfigError, Input, Origin, RunArgs, Settings, SinkKind, Sources, names, parse_events,
    parse_stream_key, parse_url,
};
use super::{Events, HTTP_SCHEMES, Secret};

/// The keys a `[routes.NAME]` table may hold.
pub const ROUTE_KEYS: &[&str] = &[
    "events",
    "sink",
    "forward_url",
    "forward_secret",
    "forward_timeout_ms",
    "batch_events_max",
    "batch_bytes_max",
    "batch_linger_ms",
    "queue_bytes_max",
    "spill_bytes_max",
    "backlog_rate",
    "batches_in_flight",
    "stream_key",
    "stream_partitions",
    "stream_maxlen",
];

/// The name of the route of everything no `[routes.NAME]` table takes.
pub const DEFAULT_ROUTE: &str = "default";

/// Most routes besides the default one.
pub const ROUTES_MAX: usize = 16;

/// Longest route name, in characters.
pub const ROUTE_NAME_CHARS_MAX: usize = 32;

/// One route resolved: where its records go and how they are batched and queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSettings {
    /// [`DEFAULT_ROUTE`], or the table's name: 1 to [`ROUTE_NAME_CHARS_MAX`] of
    /// `[A-Za-z0-9_-]`.
    pub name: String,
    /// The dispatch types it takes, sorted; empty for the default route.
    pub events: Vec<&'static str>,
    pub sink: SinkKind,
    /// Empty when `sink` is Redis Streams and none was given.
    pub forward_url: String,
    pub forward_secret: Option<Secret>,
    pub forward_timeout_ms: u64,
    pub batch_events_max: usize,
    pub batch_bytes_max: usize,
    pub batch_linger_ms: u64,
    pub queue_bytes_max: u64,
    pub spill_bytes_max: u64,
    pub backlog_rate: u32,
    pub batches_in_flight: u32,
    pub stream_key: String,
    pub stream_partitions: u32,
    pub stream_maxlen: u64,
}

impl Settings {
    /// The default route: the top-level delivery settings.
    pub fn default_route(&self) -> RouteSettings {
        RouteSettings {
            name: DEFAULT_ROUTE.to_owned(),
            events: Vec::new(),
            sink: self.sink,
            forward_url: self.forward_url.clone(),
            forward_secret: self.forward_secret.clone(),
            forward_timeout_ms: self.forward_timeout_ms,
            batch_events_max: self.batch_events_max,
            batch_bytes_max: self.batch_bytes_max,
            batch_linger_ms: self.batch_linger_ms,
            queue_bytes_max: self.queue_bytes_max,
            spill_bytes_max: self.spill_bytes_max,
            backlog_rate: self.backlog_rate,
            batches_in_flight: self.batches_in_flight,
            stream_key: self.stream_key.clone(),
            stream_partitions: self.stream_partitions,
            stream_maxlen: self.stream_maxlen,
        }
    }

    /// Every route, the default one first.
    pub fn all_routes(&self) -> Vec<RouteSettings> {
        std::iter::once(self.default_route())
            .chain(self.routes.iter().cloned())
            .collect()
    }

    /// What the cores let through: `--events`, and every type a route names.
    pub fn forwarded_events(&self) -> Events {
        match &self.events {
            Events::All => Events::All,
            Events::Only(names) => Events::only(
                names
                    .iter()
                    .copied()
                    .chain(self.routes.iter().flat_map(|r| r.events.iter().copied()))
                    .collect(),
            ),
        }
    }

    /// Whether any route, the default one included, writes to Redis Streams.
    pub fn uses_streams(&self) -> bool {
        self.sink == SinkKind::RedisStreams
            || self.routes.iter().any(|r| r.sink == SinkKind::RedisStreams)
    }

    /// The directory of a route's spill: `--data-dir/spill` for the default route (as before
    /// routes existed), `--data-dir/routes/NAME/spill` for the others.
    pub fn route_spill_dir(&self, route: &str) -> std::path::PathBuf {
        if route == DEFAULT_ROUTE {
            self.spill_dir()
        } else {
            self.routes_dir().join(route).join("spill")
        }
    }

    /// The spill of lane `lane` of a route: the route's spill directory for lane 0, a sibling
    /// `spill-lane-N` for the others.
    pub fn lane_spill_dir(&self, route: &str, lane: u32) -> std::path::PathBuf {
        let dir = self.route_spill_dir(route);
        match lane {
            0 => dir,
            lane => dir.with_file_name(format!("spill-lane-{lane}")),
        }
    }

    /// Where the lane count the route's spills were written with is kept.
    pub fn lane_count_file(&self, route: &str) -> std::path::PathBuf {
        self.route_spill_dir(route).with_file_name("spill-lanes")
    }

    /// `--data-dir/routes`: the routes' spills.
    pub fn routes_dir(&self) -> std::path::PathBuf {
        self.data_dir.join("routes")
    }
}

/// The `[routes]` table of a config file, resolved against the top-level settings (`base`,
/// whose `routes` are still empty). `has_redis`: whether `--redis-url` is set.
pub(super) fn load(
    table: &toml::Table,
    path: &std::path::Path,
    base: &Settings,
    has_redis: bool,
) -> Result<Vec<RouteSettings>, ConfigError> {
    if table.len() > ROUTES_MAX {
        return Err(ConfigError::TooManyRoutes {
            count: table.len(),
            max: ROUTES_MAX,
        });
    }
    let mut routes = Vec::with_capacity(table.len());
    let mut owner: BTreeMap<&'static str, String> = BTreeMap::new();
    for (name, value) in table {
        let in_route = |error: ConfigError| ConfigError::Route {
            route: name.clone(),
            message: error.to_string(),
        };
        if !is_route_name(name) {
            return Err(ConfigError::InvalidRouteName {
                name: name.clone(),
                max_chars: ROUTE_NAME_CHARS_MAX,
            });
        }
        let toml::Value::Table(keys) = value else {
            return Err(in_route(ConfigError::RouteNotATable));
        };
        if let Some(key) = keys.keys().find(|key| !ROUTE_KEYS.contains(&key.as_str())) {
            return Err(in_route(ConfigError::UnknownRouteKey {
                key: key.clone(),
                suggestion: names::closest(key, ROUTE_KEYS.iter().copied()),
            }));
        }
        let args: RunArgs =
            keys.clone()
                .try_into()
                .map_err(|error: toml::de::Error| ConfigError::FileSyntax {
                    path: path.to_owned(),
                    message: format!("[routes.{name}]: {}", error.to_string().trim_end()),
                })?;
        let route = route(name, &args, path, base, has_redis).map_err(in_route)?;
        for event in &route.events {
            if let Some(first) = owner.insert(event, name.clone()) {
                return Err(ConfigError::EventInTwoRoutes {
                    event,
                    first,
                    second: name.clone(),
                });
            }
        }
        routes.push(route);
    }
    let streams = std::iter::once(base.default_route())
        .chain(routes.iter().cloned())
        .filter(|route| route.sink == SinkKind::RedisStreams)
        .collect::<Vec<_>>();
    for (index, route) in streams.iter().enumerate() {
        if let Some(other) = streams[..index]
            .iter()
            .find(|other| other.stream_key == route.stream_key)
        {
            return Err(ConfigError::StreamKeyInTwoRoutes {
                key: route.stream_key.clone(),
                first: other.name.clone(),
                second: route.name.clone(),
            });
        }
    }
    Ok(routes)
}

/// One `[routes.NAME]` table: its keys, else the top-level values.
fn route(
    name: &str,
    args: &RunArgs,
    path: &std::path::Path,
    base: &Settings,
    has_redis: bool,
) -> Result<RouteSettings, ConfigError> {
    let src = Sources {
        flags: &RunArgs::default(),
        file: Some((path, args)),
    };
    let events = match src.get(|a| &a.events) {
        Some(input) => match parse_events(&input)? {
            Events::Only(names) => names.into_vec(),
            Events::All => return Err(ConfigError::RouteTakesAll),
        },
        None => return Err(ConfigError::RouteWithoutEvents),
    };
    let forward_url = src
        .get(|a| &a.forward_url)
        .map(|input| parse_url("--forward-url", &input, HTTP_SCHEMES, true))
        .transpose()?;
    let sink = match src.get(|a| &a.sink) {
        Some(input) => parse_sink(&input)?,
        None if forward_url.is_some() => SinkKind::Http,
        None => base.sink,
    };
    let forward_url = match (sink, forward_url) {
        (_, Some(url)) => url,
        (SinkKind::Http, None) if base.sink == SinkKind::Http => base.forward_url.clone(),
        (SinkKind::Http, None) => return Err(ConfigError::MissingForwardUrl),
        (SinkKind::RedisStreams, None) => String::new(),
    };
    if sink == SinkKind::RedisStreams && !has_redis {
        return Err(ConfigError::SinkWithoutRedis {
            origin: Origin::File(path.to_owned()),
        });
    }
    let forward_secret = match args.forward_secret.as_ref() {
        Some(secret) => {
            let secret = secret.expose_secret().trim();
            if secret.is_empty() || secret.chars().any(char::is_control) {
                return Err(ConfigError::MalformedSecret {
                    setting: "--forward-secret",
                    env: super::ENV_FORWARD_SECRET,
                    problem: "is empty or contains a control character; write it on one line",
                });
            }
            Some(Secret::new(secret))
        }
        None => base.forward_secret.clone(),
    };
    let number = |field: super::Field, setting: &'static str, min: u64, max: u64, default: u64| {
        src.millis(field, setting, min, max, default)
    };
    let forward_timeout_ms = number(
        |a| &a.forward_timeout_ms,
        "--forward-timeout-ms",
        1,
        600_000,
        base.forward_timeout_ms,
    )?;
    let batch_events_max = number(
        |a| &a.batch_events_max,
        "--batch-events-max",
        1,
        u64::from(u32::MAX),
        base.batch_events_max as u64,
    )? as usize;
    let batch_bytes_max = number(
        |a| &a.batch_bytes_max,
        "--batch-bytes-max",
        1,
        1 << 30,
        base.batch_bytes_max as u64,
    )? as usize;
    let batch_linger_ms = number(
        |a| &a.batch_linger_ms,
        "--batch-linger-ms",
        0,
        60_000,
        base.batch_linger_ms,
    )?;
    let queue_bytes_max = number(
        |a| &a.queue_bytes_max,
        "--queue-bytes-max",
        1,
        Settings::QUEUE_BYTES_MAX_LIMIT,
        base.queue_bytes_max,
    )?;
    let spill_bytes_max = match src.get(|a| &a.spill_bytes_max) {
        Some(input) => super::parse_spill_bytes_max(&input)?,
        None => base.spill_bytes_max,
    };
    let backlog_rate = number(
        |a| &a.backlog_rate,
        "--backlog-rate",
        0,
        u64::from(u32::MAX),
        u64::from(base.backlog_rate),
    )? as u32;
    let batches_in_flight = number(
        |a| &a.batches_in_flight,
        "--batches-in-flight",
        1,
        u64::from(Settings::BATCHES_IN_FLIGHT_MAX),
        u64::from(base.batches_in_flight),
    )? as u32;
    let stream_key = match src.get(|a| &a.stream_key) {
        Some(input) => parse_stream_key(&input)?,
        // Its own streams: beside the default route's, named after the route.
        None => format!("{}:{name}", base.stream_key),
    };
    let stream_partitions = number(
        |a| &a.stream_partitions,
        "--stream-partitions",
        1,
        u64::from(Settings::STREAM_PARTITIONS_MAX),
        u64::from(base.stream_partitions),
    )? as u32;
    let stream_maxlen = number(
        |a| &a.stream_maxlen,
        "--stream-maxlen",
        Settings::STREAM_MAXLEN_MIN,
        Settings::STREAM_MAXLEN_MAX,
        base.stream_maxlen,
    )?;
    if sink == SinkKind::Http {
        let given = [
            ("--stream-key", args.stream_key.is_some()),
            ("--stream-partitions", args.stream_partitions.is_some()),
            ("--stream-maxlen", args.stream_maxlen.is_some()),
        ];
        if let Some((setting, _)) = given.iter().find(|(_, set)| *set) {
            return Err(ConfigError::StreamSettingWithoutStreams {
                setting,
                origin: Origin::File(path.to_owned()),
            });
        }
    }
    if queue_bytes_max < batch_bytes_max as u64 {
        return Err(ConfigError::QueueBelowBatch {
            queue_bytes_max,
            batch_bytes_max: batch_bytes_max as u64,
        });
    }
    Ok(RouteSettings {
        name: name.to_owned(),
        events,
        sink,
        forward_url,
        forward_secret,
        forward_timeout_ms,
        batch_events_max,
        batch_bytes_max,
        batch_linger_ms,
        queue_bytes_max,
        spill_bytes_max,
        backlog_rate,
        batches_in_flight,
        stream_key,
        stream_partitions,
        stream_maxlen,
    })
}

impl RouteSettings {
    /// The delivery lanes the route runs: `batches_in_flight`, fewer where a lane's share of the
    /// memory queue would not hold a whole batch or its share of the spill would be below the
    /// smallest spill ([`Settings::SPILL_BYTES_MIN`]).
    pub fn lanes(&self) -> u32 {
        let by_queue = self.queue_bytes_max / (self.batch_bytes_max.max(1) as u64);
        let by_spill = match self.spill_bytes_max {
            0 => u64::MAX,
            bytes => bytes / Settings::SPILL_BYTES_MIN,
        };
        u64::from(self.batches_in_flight)
            .min(by_queue)
            .min(by_spill)
            .max(1) as u32
    }
}

/// `--sink`'s choices.
pub(super) fn parse_sink(input: &Input<'_>) -> Result<SinkKind, ConfigError> {
    match input.text.trim().to_ascii_lowercase().as_str() {
        "http" => Ok(SinkKind::Http),
        "redis-streams" => Ok(SinkKind::RedisStreams),
        _ => Err(input.invalid_choice("--sink", "http, redis-streams")),
    }
}

fn is_route_name(name: &str) -> bool {
    name != DEFAULT_ROUTE
        && (1..=ROUTE_NAME_CHARS_MAX).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}
