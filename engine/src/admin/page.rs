//! Control plane: the status page (`GET /`) and the compact shard summary it polls
//! (`GET /shards/summary`).
//!
//! The page is one HTML file with its CSS and script inline ([`PAGE_HTML`], built into the
//! binary): no framework, nothing fetched at run time, no build step. It holds no data, so it is
//! served without the admin token; everything it shows comes from the API with the token the
//! operator types once (kept in the tab's `sessionStorage`, sent as `Authorization: Bearer`,
//! never in a URL).
//!
//! The summary is what the grid needs each second at 10,000 shards: one character per shard
//! (its state's index in [`ShardState::ALL`]) instead of 10,000 JSON objects, the shard ids as
//! ranges, and per core its shards, ring and CPU time. It reads the cores' reports (one round
//! over the control channels, like `/status`) and /proc; nothing else.

use serde_json::{Value, json};

use super::AdminContext;
use super::http::Response;
use crate::control::{CoreReport, Role, ShardStatus};
use crate::shard::ShardState;

/// The page: HTML, CSS and script in one file.
pub const PAGE_HTML: &str = include_str!("status_page.html");

/// One digit per state: the summary's state string needs [`ShardState::ALL`] to fit in 0..=9.
const _: () = assert!(ShardState::ALL.len() <= 10);

/// `GET /`: the page. No token needed (it holds no data); never cached, so an upgraded binary
/// serves its own page; framed by nobody.
pub fn page() -> Response {
    Response {
        status: 200,
        content_type: "text/html; charset=utf-8",
        headers: vec![
            ("Cache-Control", "no-store".into()),
            (
                "Content-Security-Policy",
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
                 frame-ancestors 'none'"
                    .into(),
            ),
            ("X-Content-Type-Options", "nosniff".into()),
            ("Referrer-Policy", "no-referrer".into()),
        ],
        body: PAGE_HTML.as_bytes().to_vec(),
    }
}

/// `GET /shards/summary`: every shard's state in one string per set, the cores, the process.
///
/// ```json
/// {"states": ["connecting", …, "fatal"],
///  "sets": [{"role": "live", "shard_count": 4, "ranges": [[0, 3]], "states": "5555"}],
///  "cores": [{"core": 0, "shards": 2, "ring_records": 0, "ring_capacity": 4096, "cpu_s": 1.2}],
///  "process": {"cpu_s": 2.5, "resident_bytes": 31457280}, "uptime_s": 12.0}
/// ```
pub fn summary(context: &AdminContext, reports: &[CoreReport]) -> Response {
    let live = context.control.plan().total_shards.get();
    let mut statuses: Vec<&ShardStatus> =
        reports.iter().flat_map(|report| &report.shards).collect();
    // The live set first, in shard order; a reshard's new set after it (as `/shards`).
    statuses.sort_by_key(|s| (s.shard_count != live, s.shard_count, s.shard_id));
    let sets: Vec<Value> = statuses
        .chunk_by(|a, b| a.shard_count == b.shard_count)
        .map(set_json)
        .collect();
    let cores: Vec<Value> = reports
        .iter()
        .map(|report| {
            let thread_id = context.stats.cores().get(report.core).map_or(0, |stats| {
                stats.thread_id.load(std::sync::atomic::Ordering::Relaxed)
            });
            let cpu_s = (thread_id != 0)
                .then(|| crate::procfs::thread_cpu(thread_id))
                .flatten()
                .map(|cpu| cpu.as_secs_f64());
            json!({
                "core": report.core,
                "shards": report.shards.len(),
                "ring_records": report.ring_records,
                "ring_capacity": report.ring_capacity,
                "cpu_s": cpu_s,
            })
        })
        .collect();
    Response::json(
        200,
        &json!({
            "states": ShardState::ALL.map(ShardState::as_str),
            "sets": sets,
            "cores": cores,
            "process": {
                "cpu_s": crate::procfs::process_cpu().map(|cpu| cpu.as_secs_f64()),
                "resident_bytes": crate::procfs::resident_bytes(),
            },
            "uptime_s": context.started.elapsed().as_secs_f64(),
        }),
    )
}

/// One shard set, sorted by shard id: its ids as `[first, last]` ranges and one state digit
/// per shard, in the same order.
fn set_json(set: &[&ShardStatus]) -> Value {
    let mut ranges: Vec<[u32; 2]> = Vec::new();
    let mut states = String::with_capacity(set.len());
    for status in set {
        match ranges.last_mut() {
            Some(range) if range[1].checked_add(1) == Some(status.shard_id) => {
                range[1] = status.shard_id;
            }
            _ => ranges.push([status.shard_id, status.shard_id]),
        }
        states.push(state_digit(status.state));
    }
    let role = set.first().map_or(Role::Live, |status| status.role);
    json!({
        "role": role.as_str(),
        "shard_count": set.first().map_or(0, |status| status.shard_count),
        "ranges": ranges,
        "states": states,
    })
}

/// The state's index in [`ShardState::ALL`], as one ASCII digit.
fn state_digit(state: ShardState) -> char {
    let index = ShardState::ALL
        .iter()
        .position(|each| *each == state)
        .expect("ALL lists every state");
    char::from(b'0' + index as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_has_its_own_digit() {
        let digits: Vec<char> = ShardState::ALL.iter().map(|s| state_digit(*s)).collect();
        assert_eq!(digits.iter().collect::<String>(), "0123456789");
    }

    #[test]
    fn the_page_is_whole_and_fetches_nothing_from_elsewhere() {
        assert!(PAGE_HTML.starts_with("<!doctype html>"));
        assert!(PAGE_HTML.trim_end().ends_with("</html>"));
        // Everything inline: no script, style or image from another origin.
        for needle in ["src=\"http", "href=\"http", "//cdn", "import "] {
            assert!(!PAGE_HTML.contains(needle), "the page refers to {needle}");
        }
        // The token goes in a header, never in a URL; its field has no name, so a form
        // submitted without the script (or before it runs) does not carry it either.
        assert!(PAGE_HTML.contains("'Bearer ' + token"));
        assert!(!PAGE_HTML.contains("token=") && !PAGE_HTML.contains("name=\"token\""));
    }
}
