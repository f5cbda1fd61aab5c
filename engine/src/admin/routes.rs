//! The admin API's endpoints: request in, response out. No I/O beyond the control handle.
//!
//! | endpoint | answer |
//! |---|---|
//! | `GET /` | the status page (no token needed: it holds no data) |
//! | `GET /healthz` | 200 while the process serves (no token needed) |
//! | `GET /readyz` | 200 when every owned shard's session is live, else 503 |
//! | `GET /status` | the engine at a glance: shards by state, events, the sink's queue |
//! | `GET /metrics` | Prometheus text exposition |
//! | `GET /shards`, `GET /shards/{id}` | shard status as JSON |
//! | `GET /shards/summary` | every shard's state in one compact string, the cores (the page's grid) |
//! | `POST /shards/{id}/reconnect[?identify=true]` | 202: resume (or identify anew) |
//! | `POST /commands[?shard_id=N\|all]` | 202: a gateway command queued on its shard(s) |
//! | `GET /reshard`, `POST /reshard`, `DELETE /reshard` | resharding: where it stands, start, abort |

use serde_json::{Value, json};

use super::AdminContext;
use super::http::{Request, Response};
use crate::control::{CommandReceipt, ControlError, Route, ShardStatus};
use crate::resharder::ReshardRequest;
use crate::shard::ShardState;

/// Seconds a refused command should wait: a shard frees a command slot about every
/// 60 s / (120 − heartbeat reserve) ≈ 0.5 s.
const COMMAND_RETRY_AFTER_S: u64 = 1;

/// Routes one request.
pub fn handle(context: &AdminContext, request: &Request) -> Response {
    let path = request.path.trim_end_matches('/');
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let method = request.method.as_str();
    if segments == ["healthz"] {
        return match method {
            "GET" => Response::json(200, &json!({ "status": "ok" })),
            _ => method_not_allowed(method, "GET"),
        };
    }
    if segments.is_empty() {
        // The status page: script and markup only; its data comes from the endpoints below,
        // with the token.
        return match method {
            "GET" => super::page::page(),
            _ => method_not_allowed(method, "GET"),
        };
    }
    if let Err(refusal) = authorize(context, request) {
        return refusal;
    }
    match (method, segments.as_slice()) {
        ("GET", ["readyz"]) => readyz(context),
        ("GET", ["status"]) => status(context),
        ("GET", ["metrics"]) => metrics(context),
        ("GET", ["shards"]) => shards(context),
        ("GET", ["shards", "summary"]) => match context.control.reports() {
            Ok(reports) => super::page::summary(context, &reports),
            Err(error) => control_error(&error),
        },
        ("GET", ["shards", id]) => shard(context, id),
        ("POST", ["shards", id, "reconnect"]) => reconnect(context, id, request),
        ("POST", ["shards", id, "move"]) => move_shard(context, id, request),
        ("GET", ["cluster"]) => cluster(context),
        ("POST", ["commands"]) => command(context, request),
        ("GET", ["reshard"]) => Response::json(200, &context.reshard.status()),
        ("POST", ["reshard"]) => reshard_start(context, request),
        ("DELETE", ["reshard"]) => reshard_ask(context, ReshardRequest::Cancel),
        (_, ["readyz" | "status" | "metrics" | "shards"] | ["shards", _]) => {
            method_not_allowed(method, "GET")
        }
        (_, ["shards", _, "reconnect" | "move"] | ["commands"]) => {
            method_not_allowed(method, "POST")
        }
        (_, ["cluster"]) => method_not_allowed(method, "GET"),
        (_, ["reshard"]) => method_not_allowed(method, "GET, POST, DELETE"),
        _ => Response::error(404, format!("no such endpoint: {method} {}", request.path)),
    }
}

/// 401 unless the request carries the token (when one is set).
fn authorize(context: &AdminContext, request: &Request) -> Result<(), Response> {
    let Some(token) = &context.token else {
        return Ok(());
    };
    let presented = request
        .authorization
        .as_deref()
        .and_then(|value| value.strip_prefix(b"Bearer "));
    match presented {
        Some(presented) if token.matches(presented) => Ok(()),
        Some(_) => Err(unauthorized("the admin token is wrong")),
        None => Err(unauthorized(
            "this endpoint needs Authorization: Bearer <--admin-token>",
        )),
    }
}

fn unauthorized(reason: &str) -> Response {
    Response::error(401, reason).with_header("WWW-Authenticate", "Bearer".into())
}

fn method_not_allowed(method: &str, allowed: &'static str) -> Response {
    Response::error(405, format!("{method} is not allowed here; use {allowed}"))
        .with_header("Allow", allowed.into())
}

fn control_error(error: &ControlError) -> Response {
    let status = match error {
        ControlError::NotOwned { .. } | ControlError::NotHere { .. } => 404,
        ControlError::ShardStopped { .. } => 409,
        ControlError::CoreUnresponsive { .. } => 503,
    };
    Response::error(status, error)
}

fn readyz(context: &AdminContext) -> Response {
    let reports = match context.control.reports() {
        Ok(reports) => reports,
        Err(error) => return control_error(&error),
    };
    // The live set's shards (a reshard's new set is not serving yet).
    let live = context.control.plan().total_shards.get();
    let statuses = reports
        .iter()
        .flat_map(|report| &report.shards)
        .filter(|status| status.shard_count == live);
    let owned = statuses.clone().count();
    let active = statuses
        .clone()
        .filter(|status| status.state == ShardState::Active)
        .count();
    let stopping = context.stats.stopping();
    let ready = active == owned && !stopping;
    let mut body = json!({
        "ready": ready,
        "shards_active": active,
        "shards_owned": owned,
    });
    if !ready {
        let reason = if stopping {
            "the engine is stopping".to_owned()
        } else {
            format!("{} of {owned} shards have no live session", owned - active)
        };
        body["reason"] = Value::from(reason);
    }
    Response::json(if ready { 200 } else { 503 }, &body)
}

/// `GET /status`: what the `status` log line says, as JSON, with the shards by state. Counters
/// are totals since the process started; the queue figures are now.
fn status(context: &AdminContext) -> Response {
    let reports = match context.control.reports() {
        Ok(reports) => reports,
        Err(error) => return control_error(&error),
    };
    let snapshot = context.stats.snapshot();
    let plan = context.control.plan();
    let mut by_state = serde_json::Map::new();
    for state in ShardState::ALL {
        let count = reports
            .iter()
            .flat_map(|report| &report.shards)
            .filter(|status| status.state == state)
            .count();
        by_state.insert(state.as_str().to_owned(), Value::from(count));
    }
    let quantile_ms = |quantile| {
        crate::sink::latency_quantile_us(&snapshot.batch_latency_buckets, quantile)
            .map(|micros| micros as f64 / 1000.0)
    };
    let (identifies_granted, identify_budget_remaining) = context.limiter.stats();
    let body = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": context.started.elapsed().as_secs_f64(),
        "stopping": context.stats.stopping(),
        "plan": {
            "total_shards": plan.total_shards.get(),
            "shards": format!("{}..={}", plan.shards.start(), plan.shards.end()),
            "cores": plan.cores,
            "shards_per_core": plan.shards_per_core,
        },
        "shards": {
            "owned": snapshot.shards_owned,
            "ready": snapshot.shards_ready,
            "fatal": snapshot.shards_fatal,
            "by_state": by_state,
        },
        "events": {
            "dispatches_received": snapshot.dispatches_in,
            "records_to_sink": snapshot.records_to_sink,
            "dropped_redundant_message_update": snapshot.dropped_redundant_update,
            "dropped_not_allowed": snapshot.dropped_not_allowed,
            "decode_errors": snapshot.decode_errors,
            "ring_full_waits": snapshot.ring_full_waits,
        },
        "sessions": {
            "identifies": snapshot.identifies,
            "resumes": snapshot.resumes,
            "reconnects": snapshot.reconnects,
            "saved_resumed": snapshot.saved_sessions_resumed,
            "saved_rejected": snapshot.saved_sessions_rejected,
            "identifies_granted": identifies_granted,
            "identify_budget_remaining": identify_budget_remaining,
        },
        "sink": {
            "records_received": snapshot.records_received,
            "records_delivered": snapshot.records_delivered,
            "batches_delivered": snapshot.batches_delivered,
            "delivery_failures": snapshot.delivery_failures,
            "queue_memory_records": snapshot.queue_memory_records,
            "queue_memory_bytes": context.stats.queue_memory_bytes(),
            "queue_spill_records": snapshot.queue_spill_records,
            "records_spilled": snapshot.records_spilled,
            "records_dropped": {
                "spill_full": snapshot.records_dropped_spill_full,
                "shutdown": snapshot.records_dropped_shutdown,
                "invalid_payload": snapshot.records_dropped_invalid,
            },
            "batch_latency_p50_ms": quantile_ms(0.5),
            "batch_latency_p99_ms": quantile_ms(0.99),
        },
        "routes": context.stats.routes().iter().map(route_json).collect::<Vec<_>>(),
    });
    Response::json(200, &body)
}

/// One route of `GET /status`: what it takes, where it delivers, its queue and counters.
fn route_json(route: &crate::runtime::RouteInfo) -> Value {
    let stats = &route.stats;
    let load =
        |counter: &std::sync::atomic::AtomicU64| counter.load(std::sync::atomic::Ordering::Relaxed);
    let quantile_ms = |quantile| {
        stats
            .latency_quantile_us(quantile)
            .map(|micros| micros as f64 / 1000.0)
    };
    json!({
        "name": route.name,
        "events": if route.events.is_empty() { json!("unrouted") } else { json!(route.events) },
        "sink": route.sink.name(),
        "destination": route.destination,
        "batches_in_flight": route.lanes,
        "lanes_active": load(&stats.lanes_active),
        "records_received": load(&stats.records_received),
        "records_delivered": load(&stats.records_delivered),
        "batches_delivered": load(&stats.batches_delivered),
        "delivery_failures": load(&stats.delivery_failures),
        "queue_memory_records": load(&stats.queue_memory_records),
        "queue_memory_bytes": load(&stats.queue_memory_bytes),
        "queue_spill_records": load(&stats.queue_spill_records),
        "records_spilled": load(&stats.records_spilled),
        "records_dropped": {
            "spill_full": load(&stats.records_dropped_spill_full),
            "shutdown": load(&stats.records_dropped_shutdown),
            "invalid_payload": load(&stats.records_dropped_invalid),
        },
        "batch_latency_p50_ms": quantile_ms(0.5),
        "batch_latency_p99_ms": quantile_ms(0.99),
    })
}

/// `POST /reshard`, with an optional body `{"total_shards": N}`.
fn reshard_start(context: &AdminContext, request: &Request) -> Response {
    let total_shards = if request.body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let body: Value = match serde_json::from_slice(&request.body) {
            Ok(body) => body,
            Err(error) => {
                return Response::error(400, format!("the body is not JSON: {error}"));
            }
        };
        match body.get("total_shards") {
            None | Some(Value::Null) => None,
            Some(value) => match value.as_u64().and_then(|n| u32::try_from(n).ok()) {
                Some(n) => Some(n),
                None => {
                    return Response::error(
                        400,
                        format!("total_shards {value} is not a shard count"),
                    );
                }
            },
        }
    };
    reshard_ask(context, ReshardRequest::Start { total_shards })
}

fn reshard_ask(context: &AdminContext, request: ReshardRequest) -> Response {
    match context.reshard.ask(request) {
        Some((status, body)) => Response::json(status, &body),
        None => Response::error(
            503,
            "the engine did not answer in time (it may be stopping); retry",
        ),
    }
}

fn metrics(context: &AdminContext) -> Response {
    let reports = match context.control.reports() {
        Ok(reports) => reports,
        Err(error) => return control_error(&error),
    };
    let text = super::metrics::render(context, &reports);
    Response {
        status: 200,
        content_type: Response::PROMETHEUS,
        headers: Vec::new(),
        body: text.into_bytes(),
    }
}

fn shards(context: &AdminContext) -> Response {
    match context.control.reports() {
        Ok(reports) => {
            // The live set first, in shard order; a reshard's new set after it.
            let live = context.control.plan().total_shards.get();
            let mut statuses: Vec<&ShardStatus> =
                reports.iter().flat_map(|report| &report.shards).collect();
            statuses.sort_by_key(|s| (s.shard_count != live, s.shard_count, s.shard_id));
            let shards: Vec<Value> = statuses.into_iter().map(shard_json).collect();
            Response::json(200, &Value::Array(shards))
        }
        Err(error) => control_error(&error),
    }
}

fn shard(context: &AdminContext, id: &str) -> Response {
    let shard_id = match parse_shard_id(id) {
        Ok(shard_id) => shard_id,
        Err(refusal) => return refusal,
    };
    match context.control.shard(shard_id) {
        Ok(status) => Response::json(200, &shard_json(&status)),
        Err(error) => control_error(&error),
    }
}

fn reconnect(context: &AdminContext, id: &str, request: &Request) -> Response {
    let shard_id = match parse_shard_id(id) {
        Ok(shard_id) => shard_id,
        Err(refusal) => return refusal,
    };
    let new_session = match request.query_value("identify") {
        None | Some("false") => false,
        Some("true" | "") => true,
        Some(other) => {
            return Response::error(400, format!("identify={other}: use identify=true or false"));
        }
    };
    match context.control.reconnect(shard_id, new_session) {
        Ok(()) => Response::json(
            202,
            &json!({
                "shard_id": shard_id,
                "reconnect": if new_session { "identify" } else { "resume" },
            }),
        ),
        Err(error) => control_error(&error),
    }
}

/// `POST /commands`: the body is the gateway payload exactly as Discord expects it
/// (`{"op":…,"d":…}`), sent as it is. Routed by `?shard_id=N`, else by `d.guild_id`; a presence
/// update (op 3) without either goes to every shard (`?shard_id=all` says so explicitly).
fn command(context: &AdminContext, request: &Request) -> Response {
    // The gateway closes the connection (4002) on a payload it cannot decode: check it all,
    // after the size (no parsing of what would be refused anyway).
    let payload: Value = if request.body.len() > crate::shard::PAYLOAD_BYTES_MAX {
        Value::Null
    } else {
        match serde_json::from_slice(&request.body) {
            Ok(payload) => payload,
            Err(error) => {
                return Response::error(400, format!("command is not valid JSON: {error}"));
            }
        }
    };
    let op = match crate::shard::check_command_shape(&request.body) {
        Ok(op) => op,
        Err(error) => return Response::error(400, error),
    };
    let route = match request.query_value("shard_id") {
        Some("all") if op == 3 => Route::All,
        Some("all") => {
            return Response::error(
                400,
                format!("shard_id=all is only for presence updates (op 3), not op {op}"),
            );
        }
        Some(id) => match parse_shard_id(id) {
            Ok(shard_id) => Route::Shard(shard_id),
            Err(refusal) => return refusal,
        },
        None => match guild_id(&payload) {
            Some(Ok(guild_id)) => Route::Guild(guild_id),
            Some(Err(reason)) => return Response::error(400, reason),
            None if op == 3 => Route::All,
            None => {
                return Response::error(
                    400,
                    format!("cannot route op {op}: give ?shard_id=N or a d.guild_id"),
                );
            }
        },
    };
    // A command another host forwarded goes no further (the shard may have moved meanwhile).
    let forwarded = request.query_value("forwarded") == Some("1");
    let fleet = context.fleet.as_ref().filter(|_| !forwarded);
    match context.control.command(route, request.body.clone()) {
        Ok(mut receipt) => {
            if let (Some(fleet), Route::All) = (fleet, route) {
                // Every shard of the fleet: the other hosts queue it on theirs.
                for (host, answer) in forward_to_hosts(fleet, request, None) {
                    match answer {
                        Ok(other) => receipt.merge(other),
                        Err(reason) => {
                            tracing::warn!(%host, %reason, "a command did not reach a host");
                        }
                    }
                }
            }
            command_answer(&receipt)
        }
        Err(ControlError::NotHere { shard_id }) if fleet.is_some() => {
            forward_to_owner(fleet.expect("checked"), request, shard_id)
        }
        Err(error) => control_error(&error),
    }
}

/// The command for a shard another host runs goes to that host's admin API; its answer comes
/// back as it is, with `host` added.
fn forward_to_owner(
    fleet: &crate::fleet::FleetHandle,
    request: &Request,
    shard_id: u32,
) -> Response {
    let view = fleet.view();
    let Some(owner) = view.leases.get(&shard_id).map(|lease| lease.host.clone()) else {
        return Response::error(
            503,
            format!("shard {shard_id} runs on no host right now (it is moving); retry shortly"),
        )
        .with_header("Retry-After", COMMAND_RETRY_AFTER_S.to_string());
    };
    let mut answers = forward_to_hosts(fleet, request, Some((&owner, shard_id)));
    match answers.pop() {
        Some((_, Ok(receipt))) => {
            let mut response = command_answer(&receipt);
            if let Ok(mut body) = serde_json::from_slice::<Value>(&response.body) {
                body["host"] = Value::from(owner);
                response.body = body.to_string().into_bytes();
            }
            response
        }
        Some((host, Err(reason))) => Response::error(
            502,
            format!(
                "shard {shard_id} runs on host {host}, which did not take the command: {reason}"
            ),
        ),
        None => Response::error(
            503,
            format!("shard {shard_id} runs on host {owner}, which is not live; retry shortly"),
        )
        .with_header("Retry-After", COMMAND_RETRY_AFTER_S.to_string()),
    }
}

/// POSTs the command to other hosts' admin APIs (`only`: one host, for one shard; else every
/// live host but this one, for all their shards); each host's receipt, or why not.
fn forward_to_hosts(
    fleet: &crate::fleet::FleetHandle,
    request: &Request,
    only: Option<(&str, u32)>,
) -> Vec<(String, Result<CommandReceipt, String>)> {
    let view = fleet.view();
    let me = &fleet.settings().host.id;
    let path = match only {
        Some((_, shard_id)) => format!("/commands?shard_id={shard_id}&forwarded=1"),
        None => "/commands?shard_id=all&forwarded=1".to_owned(),
    };
    view.hosts
        .iter()
        .filter(|host| match only {
            Some((owner, _)) => host.info.id == owner,
            None => host.info.id != *me,
        })
        .map(|host| {
            let answer = super::forward::post(
                &host.info.admin,
                &path,
                request.authorization.as_deref(),
                &request.body,
            )
            .and_then(|(status, body)| receipt_of(status, &body));
            (host.info.id.clone(), answer)
        })
        .collect()
}

/// A command answer's receipt (202, 409 and 429 carry one), or the error it reports.
fn receipt_of(status: u16, body: &[u8]) -> Result<CommandReceipt, String> {
    let value: Value = serde_json::from_slice(body).map_err(|_| format!("answered {status}"))?;
    let ids = |key: &str| -> Vec<u32> {
        value[key]
            .as_array()
            .map(|ids| {
                ids.iter()
                    .filter_map(|id| u32::try_from(id.as_u64()?).ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    match status {
        202 | 409 | 429 if value.get("queued").is_some() => Ok(CommandReceipt {
            queued: ids("queued"),
            full: ids("full"),
            stopped: ids("stopped"),
        }),
        _ => Err(format!(
            "answered {status}: {}",
            value["error"].as_str().unwrap_or("no reason given")
        )),
    }
}

fn command_answer(receipt: &CommandReceipt) -> Response {
    let body = json!({
        "queued": receipt.queued,
        "full": receipt.full,
        "stopped": receipt.stopped,
    });
    if !receipt.queued.is_empty() {
        let mut response = Response::json(202, &body);
        if !receipt.full.is_empty() {
            response = response.with_header("Retry-After", COMMAND_RETRY_AFTER_S.to_string());
        }
        return response;
    }
    if !receipt.full.is_empty() {
        let mut refusal = body;
        refusal["error"] = Value::from(format!(
            "the command queue of shard(s) {:?} is full (Discord allows 120 payloads per \
             minute per connection); retry later",
            receipt.full
        ));
        return Response::json(429, &refusal)
            .with_header("Retry-After", COMMAND_RETRY_AFTER_S.to_string());
    }
    let mut refusal = body;
    refusal["error"] = Value::from(format!(
        "shard(s) {:?} stopped and will not send again",
        receipt.stopped
    ));
    Response::json(409, &refusal)
}

/// `d.guild_id` as a snowflake (a string, as Discord sends them, or a number).
fn guild_id(payload: &Value) -> Option<Result<u64, String>> {
    let value = payload.get("d")?.get("guild_id")?;
    let parsed = match value {
        Value::String(text) => text.parse().ok(),
        Value::Number(number) => number.as_u64(),
        _ => None,
    };
    Some(parsed.ok_or_else(|| format!("d.guild_id {value} is not a snowflake")))
}

/// Without `--redis-url` there is no fleet to show or move shards in.
fn no_fleet() -> Response {
    Response::error(
        404,
        "this process runs alone: the fleet endpoints need --redis-url (see docs/fleet.md)",
    )
}

/// `GET /cluster`: the hosts, their shards and leases, and the assigner, as this host's agent
/// last saw them (every tick).
fn cluster(context: &AdminContext) -> Response {
    let Some(fleet) = &context.fleet else {
        return no_fleet();
    };
    let view = fleet.view();
    let settings = fleet.settings();
    let counters = fleet.counters();
    let get = crate::fleet::FleetCounters::get;
    // The fleet's totals: every live host's counters as of its last beat, summed.
    let mut totals = serde_json::Map::new();
    let hosts: Vec<Value> = view
        .hosts
        .iter()
        .map(|host| {
            let stats: Value = serde_json::from_str(&host.stats).unwrap_or(Value::Null);
            if let Some(stats) = stats.as_object() {
                for (name, value) in stats {
                    let sum = totals.entry(name.clone()).or_insert(Value::from(0u64));
                    *sum = Value::from(sum.as_u64().unwrap_or(0) + value.as_u64().unwrap_or(0));
                }
            }
            let assigned: Vec<u32> = view
                .assignment
                .iter()
                .filter(|(_, owner)| **owner == host.info.id)
                .map(|(shard, _)| *shard)
                .collect();
            let leased: Vec<u32> = view
                .leases
                .iter()
                .filter(|(_, lease)| lease.host == host.info.id)
                .map(|(shard, _)| *shard)
                .collect();
            json!({
                "id": host.info.id,
                "admin": host.info.admin,
                "capacity": host.info.capacity,
                "pinned": host.info.pinned,
                "assigned": assigned,
                "leased": leased,
                "lease_until_ms": host.lease_until_ms,
                "stats": stats,
            })
        })
        .collect();
    let leases: serde_json::Map<String, Value> = view
        .leases
        .iter()
        .map(|(shard, lease)| {
            (
                shard.to_string(),
                json!({
                    "host": lease.host,
                    "token": lease.token,
                    "ttl_ms": lease.ttl.as_millis() as u64,
                }),
            )
        })
        .collect();
    Response::json(
        200,
        &json!({
            "cluster": settings.cluster,
            "host": settings.host.id,
            "total_shards": settings.total_shards,
            "redis_connected": view.redis_connected,
            "last_error": view.last_error,
            "assigner": view.assigner,
            "hosts": hosts,
            "fleet": totals,
            "leases": leases,
            "held": view.held.keys().collect::<Vec<_>>(),
            "epoch_ms": view.epoch_ms,
            "handing_over": view.handing_over,
            "counters": {
                "leases_granted": get(&counters.leases_granted),
                "leases_lost": get(&counters.leases_lost),
                "leases_lapsed": get(&counters.leases_lapsed),
                "sessions_taken_over": get(&counters.sessions_taken_over),
                "sessions_saved": get(&counters.sessions_saved),
                "handed_over": get(&counters.handed_over),
                "handover_timeouts": get(&counters.handover_timeouts),
                "identifies_granted": get(&counters.identifies_granted),
                "identify_round_trips": get(&counters.identify_round_trips),
                "redis_errors": get(&counters.redis_errors),
            },
        }),
    )
}

/// `POST /shards/{id}/move?to=HOST`: the assigner moves the shard to a live host; the shard is
/// handed over (its session resumed there, no identify). Answers 202 at once.
fn move_shard(context: &AdminContext, id: &str, request: &Request) -> Response {
    let Some(fleet) = &context.fleet else {
        return no_fleet();
    };
    let shard_id = match parse_shard_id(id) {
        Ok(shard_id) => shard_id,
        Err(refusal) => return refusal,
    };
    let total = fleet.settings().total_shards;
    if shard_id >= total {
        return Response::error(
            400,
            format!("shard {shard_id} does not exist: the fleet runs {total} shards"),
        );
    }
    let Some(to) = request.query_value("to").filter(|to| !to.is_empty()) else {
        return Response::error(400, "give the host to move it to: ?to=HOST");
    };
    let view = fleet.view();
    let Some(host) = view.hosts.iter().find(|host| host.info.id == to) else {
        let live: Vec<&str> = view.hosts.iter().map(|h| h.info.id.as_str()).collect();
        return Response::error(
            409,
            format!("no live host '{to}' in the fleet; live hosts: {live:?}"),
        );
    };
    if !host.info.pinned.is_empty() {
        return Response::error(
            409,
            format!("host '{to}' runs pinned shards only (--shards); it takes no moves"),
        );
    }
    fleet.request_move(shard_id, to.to_owned());
    Response::json(
        202,
        &json!({
            "shard_id": shard_id,
            "from": view.assignment.get(&shard_id),
            "to": to,
        }),
    )
}

fn parse_shard_id(id: &str) -> Result<u32, Response> {
    id.parse()
        .map_err(|_| Response::error(400, format!("'{id}' is not a shard id")))
}

fn shard_json(status: &ShardStatus) -> Value {
    let millis = |d: Option<std::time::Duration>| d.map(|d| d.as_millis() as u64);
    json!({
        "shard_id": status.shard_id,
        "shard_count": status.shard_count,
        "role": status.role.as_str(),
        "core": status.core,
        "state": status.state.as_str(),
        "session_age_ms": millis(status.session_age),
        "sequence": status.sequence,
        "heartbeat_latency_ms": millis(status.heartbeat_latency),
        "guilds": status.guilds,
        "last_event_age_ms": millis(status.last_event_age),
        "reconnects": status.counters.reconnects_total(),
        "identifies": status.counters.identifies_sent_total,
        "resumes": status.counters.resumes_sent_total,
        "dispatches": status.counters.dispatches_total,
        "commands_waiting": status.commands_waiting,
        "commands_sent": status.counters.commands_sent_total,
    })
}
