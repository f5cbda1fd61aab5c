//! `GET /metrics`: Prometheus text exposition (format 0.0.4).
//!
//! Names are `shardgate_<thing>_<unit>[_total]`. Labels are bounded: `core` (the cores),
//! `shard` (the owned shards), and fixed sets (`state`, `cause`, `reason`, `tier`, `result`,
//! `le`). Read from the counters the cores and the sink keep and from the cores' reports;
//! nothing here touches the hot path.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use super::AdminContext;
use crate::control::{CoreReport, ShardStatus};
use crate::core::CoreStats;
use crate::shard::{ReconnectCause, ShardCounters, ShardState};
use crate::sink::LATENCY_BUCKETS_US;

/// A counter family read from each core's counters: name, reason label (or ""), help (or ""
/// to continue the family above), field.
type CoreCounter = (
    &'static str,
    &'static str,
    &'static str,
    fn(&CoreStats) -> &AtomicU64,
);
/// A family summed per core from the shards' counters: name, help, field.
type ShardSum = (&'static str, &'static str, fn(&ShardCounters) -> u64);
/// A per-shard family: name, type, help, field.
type PerShard = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ShardStatus) -> u64,
);

/// Renders every metric.
pub fn render(context: &AdminContext, reports: &[CoreReport]) -> String {
    let mut out = Exposition(String::with_capacity(64 * 1024));
    let stats = &context.stats;
    let snapshot = stats.snapshot();

    // Process.
    out.family(
        "shardgate_process_cpu_seconds_total",
        "counter",
        "CPU time (user + system) of the whole process.",
    );
    let cpu = crate::procfs::process_cpu().map_or(0.0, |d| d.as_secs_f64());
    out.sample("shardgate_process_cpu_seconds_total", &[], cpu);
    out.family(
        "shardgate_process_resident_memory_bytes",
        "gauge",
        "Resident memory of the process.",
    );
    let rss = crate::procfs::resident_bytes().unwrap_or(0) as f64;
    out.sample("shardgate_process_resident_memory_bytes", &[], rss);
    out.family(
        "shardgate_uptime_seconds",
        "gauge",
        "Seconds since the engine started.",
    );
    let uptime = context.started.elapsed().as_secs_f64();
    out.sample("shardgate_uptime_seconds", &[], uptime);

    // Shards by state, per core.
    out.family(
        "shardgate_shards_owned",
        "gauge",
        "Shards this process runs.",
    );
    out.sample("shardgate_shards_owned", &[], snapshot.shards_owned as f64);
    out.family(
        "shardgate_shards",
        "gauge",
        "Shards per core in each state of a session's life.",
    );
    for report in reports {
        let core = report.core.to_string();
        for state in ShardState::ALL {
            let count = report.shards.iter().filter(|s| s.state == state).count();
            out.sample(
                "shardgate_shards",
                &[("core", &core), ("state", state.as_str())],
                count as f64,
            );
        }
    }

    // Per core, from the core's own counters.
    let per_core: [CoreCounter; 9] = [
        (
            "shardgate_dispatches_received_total",
            "",
            "Dispatches (op 0) received from Discord.",
            |s| &s.dispatches_in,
        ),
        (
            "shardgate_records_to_sink_total",
            "",
            "Records handed to the sink through the core's ring.",
            |s| &s.records_forwarded,
        ),
        (
            "shardgate_dispatches_dropped_total",
            "redundant_message_update",
            "Dispatches the filter dropped, by reason (counted, never silent).",
            |s| &s.dropped_redundant_update,
        ),
        (
            "shardgate_dispatches_dropped_total",
            "not_allowed",
            "",
            |s| &s.dropped_not_allowed,
        ),
        (
            "shardgate_decode_errors_total",
            "",
            "Frames that could not be decoded (each cost one reconnect).",
            |s| &s.decode_errors,
        ),
        (
            "shardgate_ring_full_waits_total",
            "",
            "Times a shard paused reading because its core's ring to the sink was full.",
            |s| &s.ring_full_waits,
        ),
        (
            "shardgate_connects_total",
            "",
            "WebSocket connects attempted.",
            |s| &s.connects,
        ),
        (
            "shardgate_connect_failures_total",
            "",
            "WebSocket connects that failed or timed out.",
            |s| &s.connect_failures,
        ),
        (
            "shardgate_sessions_started_total",
            "",
            "Sessions started by an identify (READY received).",
            |s| &s.identifies,
        ),
    ];
    for (name, reason, help, counter) in per_core {
        if !help.is_empty() {
            out.family(name, "counter", help);
        }
        for (core, stats) in stats.cores().iter().enumerate() {
            let core = core.to_string();
            let value = counter(stats).load(Ordering::Relaxed) as f64;
            if reason.is_empty() {
                out.sample(name, &[("core", &core)], value);
            } else {
                out.sample(name, &[("core", &core), ("reason", reason)], value);
            }
        }
    }
    out.family(
        "shardgate_sessions_resumed_total",
        "counter",
        "Sessions resumed (RESUMED received).",
    );
    for (core, stats) in stats.cores().iter().enumerate() {
        let value = stats.resumes.load(Ordering::Relaxed) as f64;
        out.sample(
            "shardgate_sessions_resumed_total",
            &[("core", &core.to_string())],
            value,
        );
    }

    // Per core, summed from the shards' own counters.
    let sum = |report: &CoreReport, f: fn(&ShardCounters) -> u64| {
        report.shards.iter().map(|s| f(&s.counters)).sum::<u64>() as f64
    };
    out.family(
        "shardgate_reconnects_total",
        "counter",
        "Reconnects, by cause.",
    );
    for report in reports {
        let core = report.core.to_string();
        for cause in ReconnectCause::ALL {
            let value = report
                .shards
                .iter()
                .map(|s| s.counters.reconnects(cause))
                .sum::<u64>();
            out.sample(
                "shardgate_reconnects_total",
                &[("core", &core), ("cause", cause.as_str())],
                value as f64,
            );
        }
    }
    let shard_sums: [ShardSum; 6] = [
        (
            "shardgate_identifies_sent_total",
            "Identify payloads sent.",
            |c| c.identifies_sent_total,
        ),
        (
            "shardgate_resumes_sent_total",
            "Resume payloads sent.",
            |c| c.resumes_sent_total,
        ),
        ("shardgate_heartbeats_sent_total", "Heartbeats sent.", |c| {
            c.heartbeats_sent_total
        }),
        (
            "shardgate_zombie_connections_total",
            "Connections declared zombie (no heartbeat ACK) and replaced.",
            |c| c.zombie_connections_total,
        ),
        (
            "shardgate_commands_sent_total",
            "Bot commands sent to Discord.",
            |c| c.commands_sent_total,
        ),
        (
            "shardgate_commands_rejected_total",
            "Bot commands a shard refused after they were queued (it stopped).",
            |c| c.commands_rejected_total,
        ),
    ];
    for (name, help, field) in shard_sums {
        out.family(name, "counter", help);
        for report in reports {
            out.sample(
                name,
                &[("core", &report.core.to_string())],
                sum(report, field),
            );
        }
    }
    out.family(
        "shardgate_ring_records",
        "gauge",
        "Records waiting in the core's ring to the sink.",
    );
    for report in reports {
        let core = report.core.to_string();
        out.sample(
            "shardgate_ring_records",
            &[("core", &core)],
            report.ring_records as f64,
        );
    }
    out.family(
        "shardgate_ring_capacity_records",
        "gauge",
        "Capacity of the core's ring to the sink.",
    );
    for report in reports {
        let core = report.core.to_string();
        out.sample(
            "shardgate_ring_capacity_records",
            &[("core", &core)],
            report.ring_capacity as f64,
        );
    }

    // Per shard, of the live set (a reshard's new set shows in the shardgate_reshard_ families).
    let live = context.control.plan().total_shards.get();
    let statuses = || {
        reports
            .iter()
            .flat_map(|report| &report.shards)
            .filter(move |status| status.shard_count == live)
    };
    out.family(
        "shardgate_shard_state",
        "gauge",
        "1 for the state the shard is in (one series per shard).",
    );
    for status in statuses() {
        let shard = status.shard_id.to_string();
        out.sample(
            "shardgate_shard_state",
            &[("shard", &shard), ("state", status.state.as_str())],
            1.0,
        );
    }
    out.family(
        "shardgate_shard_heartbeat_latency_seconds",
        "gauge",
        "The shard's last heartbeat round trip (absent before the first ACK).",
    );
    for status in statuses() {
        if let Some(latency) = status.heartbeat_latency {
            let shard = status.shard_id.to_string();
            out.sample(
                "shardgate_shard_heartbeat_latency_seconds",
                &[("shard", &shard)],
                latency.as_secs_f64(),
            );
        }
    }
    out.family(
        "shardgate_shard_last_event_age_seconds",
        "gauge",
        "Seconds since the shard's last dispatch (absent before the first).",
    );
    for status in statuses() {
        if let Some(age) = status.last_event_age {
            let shard = status.shard_id.to_string();
            out.sample(
                "shardgate_shard_last_event_age_seconds",
                &[("shard", &shard)],
                age.as_secs_f64(),
            );
        }
    }
    let per_shard: [PerShard; 4] = [
        (
            "shardgate_shard_dispatches_received_total",
            "counter",
            "Dispatches the shard received.",
            |s| s.counters.dispatches_total,
        ),
        (
            "shardgate_shard_reconnects_total",
            "counter",
            "Reconnects of the shard, all causes.",
            |s| s.counters.reconnects_total(),
        ),
        (
            "shardgate_shard_guilds",
            "gauge",
            "Guilds in the shard's session.",
            |s| s.guilds,
        ),
        (
            "shardgate_shard_commands_waiting",
            "gauge",
            "Bot commands waiting for the shard's send allowance.",
            |s| s.commands_waiting,
        ),
    ];
    for (name, kind, help, field) in per_shard {
        out.family(name, kind, help);
        for status in statuses() {
            let shard = status.shard_id.to_string();
            out.sample(name, &[("shard", &shard)], field(status) as f64);
        }
    }

    // Sink, queue and spill.
    let sink_counters: [(&str, &str, u64); 6] = [
        (
            "shardgate_sink_records_received_total",
            "Records the sink took from the cores; each ends delivered, dropped, or spilled.",
            snapshot.records_received,
        ),
        (
            "shardgate_sink_batches_total",
            "Batches the bot acknowledged (2xx).",
            snapshot.batches_delivered,
        ),
        (
            "shardgate_sink_records_delivered_total",
            "Records the bot acknowledged.",
            snapshot.records_delivered,
        ),
        (
            "shardgate_sink_bytes_delivered_total",
            "Batch body bytes the bot acknowledged.",
            snapshot.bytes_delivered,
        ),
        (
            "shardgate_sink_delivery_failures_total",
            "Batch POSTs that failed (no 2xx in time); each is retried.",
            snapshot.delivery_failures,
        ),
        (
            "shardgate_spill_records_written_total",
            "Records written to the disk spill.",
            snapshot.records_spilled,
        ),
    ];
    for (name, help, value) in sink_counters {
        out.family(name, "counter", help);
        out.sample(name, &[], value as f64);
    }
    out.family(
        "shardgate_records_dropped_total",
        "counter",
        "Records lost, by reason: spill_full (the spill's disk bound deleted its oldest), \
         shutdown (neither delivered nor spilled at exit; Discord replays them on resume), \
         invalid_payload (not valid JSON, found when the bot refused its batch).",
    );
    out.sample(
        "shardgate_records_dropped_total",
        &[("reason", "spill_full")],
        snapshot.records_dropped_spill_full as f64,
    );
    out.sample(
        "shardgate_records_dropped_total",
        &[("reason", "shutdown")],
        snapshot.records_dropped_shutdown as f64,
    );
    out.sample(
        "shardgate_records_dropped_total",
        &[("reason", "invalid_payload")],
        snapshot.records_dropped_invalid as f64,
    );
    out.family(
        "shardgate_queue_records",
        "gauge",
        "Records waiting for the bot, in memory and on the spill.",
    );
    out.sample(
        "shardgate_queue_records",
        &[("tier", "memory")],
        snapshot.queue_memory_records as f64,
    );
    out.sample(
        "shardgate_queue_records",
        &[("tier", "spill")],
        snapshot.queue_spill_records as f64,
    );
    out.family(
        "shardgate_queue_memory_bytes",
        "gauge",
        "Payload bytes of the records in the memory queue.",
    );
    out.sample(
        "shardgate_queue_memory_bytes",
        &[],
        stats.queue_memory_bytes() as f64,
    );
    out.family(
        "shardgate_sink_batch_latency_seconds",
        "histogram",
        "From a batch's first record entering the sink to the bot's 2xx.",
    );
    let mut cumulative = 0u64;
    for (index, count) in snapshot.batch_latency_buckets.iter().enumerate() {
        cumulative += count;
        let le = match LATENCY_BUCKETS_US.get(index) {
            Some(bound) => format_value(*bound as f64 / 1e6),
            None => "+Inf".to_owned(),
        };
        out.sample(
            "shardgate_sink_batch_latency_seconds_bucket",
            &[("le", &le)],
            cumulative as f64,
        );
    }
    out.sample(
        "shardgate_sink_batch_latency_seconds_sum",
        &[],
        stats.batch_latency_sum().as_secs_f64(),
    );
    out.sample(
        "shardgate_sink_batch_latency_seconds_count",
        &[],
        cumulative as f64,
    );

    write_routes(&mut out, stats.routes());

    // Identify budget and saved sessions.
    let (granted, remaining) = context.limiter.stats();
    out.family(
        "shardgate_identify_permits_granted_total",
        "counter",
        "Identify slots the limiter granted.",
    );
    out.sample(
        "shardgate_identify_permits_granted_total",
        &[],
        granted as f64,
    );
    out.family(
        "shardgate_identify_budget_remaining",
        "gauge",
        "Identifies left in Discord's daily session_start_limit.",
    );
    out.sample(
        "shardgate_identify_budget_remaining",
        &[],
        f64::from(remaining),
    );
    out.family(
        "shardgate_saved_sessions_total",
        "counter",
        "Sessions saved by the last run: resumed, or rejected by Discord (identified instead).",
    );
    out.sample(
        "shardgate_saved_sessions_total",
        &[("result", "resumed")],
        snapshot.saved_sessions_resumed as f64,
    );
    out.sample(
        "shardgate_saved_sessions_total",
        &[("result", "rejected")],
        snapshot.saved_sessions_rejected as f64,
    );
    reshard_families(&mut out, &context.reshard.metrics(), reports, live);
    if let Some(fleet) = &context.fleet {
        fleet_families(&mut out, fleet);
    }
    out.0
}

/// In a fleet: this host's leases, hand-overs, identifies through the fleet's buckets, and
/// Redis.
/// Every route's delivery: the same figures as the sink's totals, labelled `route` (the default
/// route is `default`: everything no `[routes.NAME]` table takes).
fn write_routes(out: &mut Exposition, routes: &[crate::runtime::RouteInfo]) {
    use std::sync::atomic::Ordering::Relaxed;
    type Read = fn(&crate::sink::SinkStats) -> u64;
    let counters: [(&str, &str, &str, Read); 5] = [
        (
            "shardgate_route_records_received_total",
            "counter",
            "Records the route took from the sink's collector.",
            |s| s.records_received.load(Relaxed),
        ),
        (
            "shardgate_route_records_delivered_total",
            "counter",
            "Records the route's receiver acknowledged.",
            |s| s.records_delivered.load(Relaxed),
        ),
        (
            "shardgate_route_batches_total",
            "counter",
            "Batches the route's receiver acknowledged.",
            |s| s.batches_delivered.load(Relaxed),
        ),
        (
            "shardgate_route_delivery_failures_total",
            "counter",
            "Deliveries of the route that failed; each is retried.",
            |s| s.delivery_failures.load(Relaxed),
        ),
        (
            "shardgate_route_records_spilled_total",
            "counter",
            "Records the route wrote to its spill.",
            |s| s.records_spilled.load(Relaxed),
        ),
    ];
    for (name, kind, help, read) in counters {
        out.family(name, kind, help);
        for route in routes {
            out.sample(name, &[("route", &route.name)], read(&route.stats) as f64);
        }
    }
    out.family(
        "shardgate_route_records_dropped_total",
        "counter",
        "Records of the route lost, by reason (as shardgate_records_dropped_total).",
    );
    let reasons: [(&str, Read); 3] = [
        ("spill_full", |s| s.records_dropped_spill_full.load(Relaxed)),
        ("shutdown", |s| s.records_dropped_shutdown.load(Relaxed)),
        ("invalid_payload", |s| {
            s.records_dropped_invalid.load(Relaxed)
        }),
    ];
    for route in routes {
        for (reason, read) in reasons {
            out.sample(
                "shardgate_route_records_dropped_total",
                &[("route", &route.name), ("reason", reason)],
                read(&route.stats) as f64,
            );
        }
    }
    out.family(
        "shardgate_route_lanes_active",
        "gauge",
        "Lanes (batches in flight) the route's shards are spread over now: 1 while one batch at a time keeps up.",
    );
    for route in routes {
        out.sample(
            "shardgate_route_lanes_active",
            &[("route", &route.name)],
            route.stats.lanes_active.load(Relaxed) as f64,
        );
    }
    out.family(
        "shardgate_route_queue_records",
        "gauge",
        "Records of the route waiting for its receiver, in memory and on its spill.",
    );
    for route in routes {
        let tiers: [(&str, Read); 2] = [
            ("memory", |s| s.queue_memory_records.load(Relaxed)),
            ("spill", |s| s.queue_spill_records.load(Relaxed)),
        ];
        for (tier, read) in tiers {
            out.sample(
                "shardgate_route_queue_records",
                &[("route", &route.name), ("tier", tier)],
                read(&route.stats) as f64,
            );
        }
    }
    out.family(
        "shardgate_route_batch_latency_seconds",
        "histogram",
        "From a batch's first record entering the route's queue to its receiver's acknowledgement.",
    );
    for route in routes {
        let mut cumulative = 0u64;
        for (index, count) in route.stats.latency_buckets().iter().enumerate() {
            cumulative += count;
            let le = match LATENCY_BUCKETS_US.get(index) {
                Some(bound) => format_value(*bound as f64 / 1e6),
                None => "+Inf".to_owned(),
            };
            out.sample(
                "shardgate_route_batch_latency_seconds_bucket",
                &[("route", &route.name), ("le", &le)],
                cumulative as f64,
            );
        }
        let sum = route.stats.batch_latency_us_sum.load(Relaxed) as f64 / 1e6;
        out.sample(
            "shardgate_route_batch_latency_seconds_sum",
            &[("route", &route.name)],
            sum,
        );
        out.sample(
            "shardgate_route_batch_latency_seconds_count",
            &[("route", &route.name)],
            cumulative as f64,
        );
    }
    write_streams(out, routes);
}

/// The consumer groups of every Redis Streams route, as its deliverer last polled them
/// (`XINFO GROUPS`, a few times a minute).
fn write_streams(out: &mut Exposition, routes: &[crate::runtime::RouteInfo]) {
    let streams: Vec<_> = routes
        .iter()
        .filter_map(|route| Some((route.name.as_str(), route.streams.as_ref()?)))
        .collect();
    if streams.is_empty() {
        return;
    }
    out.family(
        "shardgate_stream_trimmed_unread_entries_total",
        "counter",
        "Entries trimmed from a stream (MAXLEN) before the consumer group read them, since this \
         process first could count them: events that group will never see.",
    );
    for (route, stats) in &streams {
        for group in stats.snapshot() {
            if let Some(trimmed) = group.trimmed_unread {
                out.sample(
                    "shardgate_stream_trimmed_unread_entries_total",
                    &[
                        ("route", route),
                        ("stream", &group.stream),
                        ("group", &group.group),
                    ],
                    trimmed as f64,
                );
            }
        }
    }
    out.family(
        "shardgate_stream_group_lag_entries",
        "gauge",
        "Entries of a stream the consumer group has not read yet (Redis's lag).",
    );
    for (route, stats) in &streams {
        for group in stats.snapshot() {
            if let Some(lag) = group.lag {
                out.sample(
                    "shardgate_stream_group_lag_entries",
                    &[
                        ("route", route),
                        ("stream", &group.stream),
                        ("group", &group.group),
                    ],
                    lag as f64,
                );
            }
        }
    }
    type Read = fn(&crate::sink::streams::StreamsStats) -> u64;
    let polls: [(&str, &str, Read); 2] = [
        (
            "shardgate_stream_info_polls_total",
            "Polls of the streams' consumer groups (XINFO).",
            |s| s.polls_total(),
        ),
        (
            "shardgate_stream_info_poll_failures_total",
            "Polls of the consumer groups that failed (Redis away, or an answer not understood).",
            |s| s.poll_failures_total(),
        ),
    ];
    for (name, help, read) in polls {
        out.family(name, "counter", help);
        for (route, stats) in &streams {
            out.sample(name, &[("route", route)], read(stats) as f64);
        }
    }
}

fn fleet_families(out: &mut Exposition, fleet: &crate::fleet::FleetHandle) {
    let counters = fleet.counters();
    let view = fleet.view();
    let get = crate::fleet::FleetCounters::get;
    out.family(
        "shardgate_fleet_shards_held",
        "gauge",
        "Shards whose lease this host holds.",
    );
    out.sample(
        "shardgate_fleet_shards_held",
        &[],
        get(&counters.shards_held) as f64,
    );
    out.family(
        "shardgate_fleet_leases_total",
        "counter",
        "Shard leases by what became of them: granted, lost (another host holds it), lapsed \
         (not renewed in time: Redis did not answer).",
    );
    for (event, counter) in [
        ("granted", &counters.leases_granted),
        ("lost", &counters.leases_lost),
        ("lapsed", &counters.leases_lapsed),
    ] {
        out.sample(
            "shardgate_fleet_leases_total",
            &[("event", event)],
            get(counter) as f64,
        );
    }
    out.family(
        "shardgate_fleet_handovers_total",
        "counter",
        "Shards handed to another host, by whether the bot had acknowledged every record first \
         (acknowledged) or the wait ran out (timed_out: the new host gets the rest again).",
    );
    let timed_out = get(&counters.handover_timeouts);
    for (outcome, value) in [
        (
            "acknowledged",
            get(&counters.handed_over).saturating_sub(timed_out),
        ),
        ("timed_out", timed_out),
    ] {
        out.sample(
            "shardgate_fleet_handovers_total",
            &[("outcome", outcome)],
            value as f64,
        );
    }
    for (name, help, counter) in [
        (
            "shardgate_fleet_sessions_taken_over_total",
            "Shards started here by resuming a session another host (or this one) left in Redis.",
            &counters.sessions_taken_over,
        ),
        (
            "shardgate_fleet_identifies_granted_total",
            "Identifies the fleet's shared buckets granted to this host's shards.",
            &counters.identifies_granted,
        ),
        (
            "shardgate_fleet_identify_round_trips_total",
            "Redis commands this host's identify worker sent.",
            &counters.identify_round_trips,
        ),
        (
            "shardgate_fleet_redis_errors_total",
            "Redis steps that failed (unreachable, timed out, refused).",
            &counters.redis_errors,
        ),
    ] {
        out.family(name, "counter", help);
        out.sample(name, &[], get(counter) as f64);
    }
    // The fleet as this host's last step saw it (the same on every host).
    out.family("shardgate_fleet_hosts", "gauge", "Live hosts in the fleet.");
    out.sample("shardgate_fleet_hosts", &[], view.hosts.len() as f64);
    out.family(
        "shardgate_fleet_shards_leased",
        "gauge",
        "Shards of the fleet some host holds the lease of (the rest are moving or unplaced).",
    );
    out.sample(
        "shardgate_fleet_shards_leased",
        &[],
        view.leases.len() as f64,
    );
    out.family(
        "shardgate_fleet_redis_connected",
        "gauge",
        "1 while the agent's last step reached Redis.",
    );
    out.sample(
        "shardgate_fleet_redis_connected",
        &[],
        f64::from(u8::from(view.redis_connected)),
    );
}

/// Resharding: the phase, the shards of each set, reshards by outcome, and the merge.
fn reshard_families(
    out: &mut Exposition,
    metrics: &crate::resharder::ReshardMetrics,
    reports: &[CoreReport],
    live: u32,
) {
    out.family(
        "shardgate_reshard_phase",
        "gauge",
        "1 for the phase resharding is in: stable, or a reshard's warming, overlap, \
         handing_over, committing, draining.",
    );
    for phase in crate::resharder::PHASES {
        let value = if metrics.phase == phase { 1.0 } else { 0.0 };
        out.sample("shardgate_reshard_phase", &[("phase", phase)], value);
    }
    out.family(
        "shardgate_reshard_shards",
        "gauge",
        "Shards this process runs, by set: live (the bot is fed by it), new (a reshard's).",
    );
    let statuses = || reports.iter().flat_map(|report| &report.shards);
    let live_shards = statuses().filter(|s| s.shard_count == live).count();
    out.sample(
        "shardgate_reshard_shards",
        &[("set", "live")],
        live_shards as f64,
    );
    out.sample(
        "shardgate_reshard_shards",
        &[("set", "new")],
        (statuses().count() - live_shards) as f64,
    );
    out.family(
        "shardgate_reshards_total",
        "counter",
        "Reshards by outcome: finished, aborted (the live set ran on), refused (not started).",
    );
    for (outcome, count) in [
        ("finished", metrics.counts.finished),
        ("aborted", metrics.counts.aborted),
        ("refused", metrics.counts.refused),
    ] {
        out.sample(
            "shardgate_reshards_total",
            &[("outcome", outcome)],
            count as f64,
        );
    }
    let merge = &metrics.merge;
    out.family(
        "shardgate_reshard_merge_records_total",
        "counter",
        "Records of both sets through the reshard merges: delivered, duplicate (the other \
         set's copy went out), released_unmatched (held for a twin that did not come).",
    );
    for (result, count) in [
        ("delivered", merge.delivered),
        ("duplicate", merge.duplicates),
        ("released_unmatched", merge.released_unmatched),
    ] {
        out.sample(
            "shardgate_reshard_merge_records_total",
            &[("result", result)],
            count as f64,
        );
    }
    out.family(
        "shardgate_reshard_merge_keys",
        "gauge",
        "Events the current merge holds while it waits for the other set's copy.",
    );
    out.sample("shardgate_reshard_merge_keys", &[], merge.keys as f64);
    out.family(
        "shardgate_reshard_merge_skew_seconds",
        "gauge",
        "The largest skew measured between the two sets' copies of one event, in the last merge.",
    );
    out.sample(
        "shardgate_reshard_merge_skew_seconds",
        &[],
        merge.max_skew.as_secs_f64(),
    );
}

/// A Prometheus text exposition under construction.
struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        // Writing to a String cannot fail.
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (index, (key, value)) in labels.iter().enumerate() {
                if index > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{key}=\"");
                // Most values are numbers and fixed names; a stream group's name comes from
                // Redis and is escaped as the text format says.
                for c in value.chars() {
                    match c {
                        '\\' => self.0.push_str("\\\\"),
                        '"' => self.0.push_str("\\\""),
                        '\n' => self.0.push_str("\\n"),
                        c => self.0.push(c),
                    }
                }
                self.0.push('"');
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {}", format_value(value));
    }
}

fn format_value(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}
