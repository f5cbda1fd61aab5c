//! Stage: results. Per-run samples, their medians per (rate, mode, client), and the markdown
//! tables and summary lines printed on stdout.
//!
//! Must not: measure anything or touch a process; plain arithmetic and formatting, unit tested.
//! A failed run is listed, never averaged: only successful samples enter a median.

use std::fmt::Write as _;

use serde::Serialize;

use crate::{Client, Mode, Parse};

/// What one successful run measured.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Sample {
    /// Events the client processed in the measured window.
    pub events: u64,
    /// Wall time of the window, in seconds.
    pub wall_secs: f64,
    /// Process CPU (`utime + stime`, all threads) over the window, in seconds.
    pub cpu_secs: f64,
    /// Peak resident set (`VmHWM`) of the client process, in KiB.
    pub peak_rss_kib: u64,
    /// CPU the driver process (mock, and the fake bot for shardgate) used meanwhile.
    pub driver_cpu_secs: f64,
    /// CPU the client spent before its first gateway connection, NOT in `cpu_secs` (shardgate:
    /// process start, settings, REST, core setup; 0 for the probe, which starts its clock
    /// after its runtime is built).
    pub startup_cpu_secs: f64,
    /// Redundant MESSAGE_UPDATEs shardgate forwarded anyway (its filter's cache had forgotten
    /// the message); 0 for twilight, which forwards nothing.
    pub redundant_forwarded: u64,
}

impl Sample {
    pub fn events_per_sec(&self) -> f64 {
        ratio(self.events as f64, self.wall_secs)
    }

    /// CPU microseconds per event, which is also CPU seconds per million events.
    pub fn cpu_us_per_event(&self) -> f64 {
        ratio(self.cpu_secs * 1e6, self.events as f64)
    }
}

/// One run, successful or not.
#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    /// Dispatches per second per shard; 0 = as fast as the client reads.
    pub rate: f64,
    pub mode: Mode,
    pub client: Client,
    /// 1-based repetition.
    pub repetition: usize,
    #[serde(flatten)]
    pub outcome: Outcome,
}

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "result", rename_all = "lowercase")]
pub enum Outcome {
    Ok(Sample),
    Failed { reason: String },
}

/// Medians of the successful runs of one (rate, mode, client).
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// Dispatches per second per shard; 0 = as fast as the client reads.
    pub rate: f64,
    pub mode: Mode,
    pub client: Client,
    pub runs: usize,
    pub ok: usize,
    /// `None` when no run succeeded.
    pub median: Option<Medians>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Medians {
    pub events: f64,
    pub wall_secs: f64,
    pub events_per_sec: f64,
    pub cpu_us_per_event: f64,
    pub peak_rss_kib: f64,
    pub driver_cpu_secs: f64,
    pub startup_cpu_secs: f64,
}

/// One row per (rate, mode, client), in the order the runs were made.
pub fn summarize(results: &[RunResult]) -> Vec<Row> {
    let mut keys: Vec<(f64, Mode, Client)> = Vec::new();
    for result in results {
        let key = (result.rate, result.mode, result.client);
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    keys.into_iter()
        .map(|(rate, mode, client)| {
            let runs: Vec<&RunResult> = results
                .iter()
                .filter(|r| (r.rate, r.mode, r.client) == (rate, mode, client))
                .collect();
            let samples: Vec<&Sample> = runs
                .iter()
                .filter_map(|r| match &r.outcome {
                    Outcome::Ok(sample) => Some(sample),
                    Outcome::Failed { .. } => None,
                })
                .collect();
            let of = |f: fn(&Sample) -> f64| median(samples.iter().map(|s| f(s)).collect());
            let median = (!samples.is_empty()).then(|| Medians {
                events: of(|s| s.events as f64),
                wall_secs: of(|s| s.wall_secs),
                events_per_sec: of(Sample::events_per_sec),
                cpu_us_per_event: of(Sample::cpu_us_per_event),
                peak_rss_kib: of(|s| s.peak_rss_kib as f64),
                driver_cpu_secs: of(|s| s.driver_cpu_secs),
                startup_cpu_secs: of(|s| s.startup_cpu_secs),
            });
            Row {
                rate,
                mode,
                client,
                runs: runs.len(),
                ok: samples.len(),
                median,
            }
        })
        .collect()
}

/// The median (the mean of the middle two for an even count); NaN for no values.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// One (rate, mode): shardgate with the most cores against the cheapest twilight variant that
/// ran, the figures of the summary.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Comparison<'a> {
    pub shardgate: &'a Row,
    /// `raw` when it ran, else `full`; `None` where twilight did not run (payload,
    /// `--shardgate-only`).
    pub twilight: Option<&'a Row>,
}

/// The summary's pairs, one per (rate, mode), in the order the runs were made.
pub fn comparisons(rows: &[Row]) -> Vec<Comparison<'_>> {
    best_shardgate_rows(rows)
        .into_iter()
        .map(|shardgate| {
            let twilight = |wanted: Parse| {
                rows.iter().find(|r| {
                    same_stream(r, shardgate)
                        && matches!(r.client, Client::Twilight { parse, .. } if parse == wanted)
                })
            };
            Comparison {
                shardgate,
                twilight: twilight(Parse::Raw).or_else(|| twilight(Parse::Full)),
            }
        })
        .collect()
}

/// The summary as a table: one line per (rate, mode), CPU per event and peak RSS of twilight
/// and shardgate, and their ratios (shardgate ÷ twilight); "" without rows.
pub fn summary_table(rows: &[Row]) -> String {
    let comparisons = comparisons(rows);
    let Some(first) = comparisons.first() else {
        return String::new();
    };
    // The schedule runs the same clients for every rate and mode (but payload, without
    // twilight), so one header names them; a row that differs names its own in the cell.
    let twilight_head = comparisons
        .iter()
        .find_map(|c| c.twilight)
        .map(|r| r.client);
    let shardgate_head = first.shardgate.client;
    let mut out = format!(
        "| rate per shard | mode | {} | {} | ratio CPU | ratio RSS |\n\
         |---|---|--:|--:|--:|--:|\n",
        twilight_head.map_or_else(|| "twilight-gateway 0.18".to_owned(), Client::label),
        short_label(shardgate_head),
    );
    for comparison in &comparisons {
        let shardgate = comparison.shardgate;
        let twilight_cell = match comparison.twilight {
            None => "–".to_owned(),
            Some(twilight) if Some(twilight.client) == twilight_head => {
                cell_figures(twilight.median.as_ref())
            }
            Some(twilight) => format!(
                "{}: {}",
                twilight.client.label(),
                cell_figures(twilight.median.as_ref())
            ),
        };
        let shardgate_cell = if shardgate.client == shardgate_head {
            cell_figures(shardgate.median.as_ref())
        } else {
            format!(
                "{}: {}",
                short_label(shardgate.client),
                cell_figures(shardgate.median.as_ref())
            )
        };
        let (cpu, rss) = match comparison.ratios() {
            Some((cpu, rss)) => (format!("{cpu:.2}×"), format!("{rss:.1}×")),
            None => ("–".to_owned(), "–".to_owned()),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {twilight_cell} | {shardgate_cell} | {cpu} | {rss} |",
            rate_cell(shardgate.rate),
            shardgate.mode.name(),
        );
    }
    out
}

/// The summary as one line per (rate, mode), to paste into prose:
/// `none @ 2,000/s per shard: shardgate (2 cores) 9.50 µs/event 61.0 MiB | twilight raw 7.00 µs
/// 3.8 MiB | ratio CPU 1.36× RSS 16.1×`.
pub fn summary_lines(rows: &[Row]) -> String {
    let mut out = String::new();
    for comparison in comparisons(rows) {
        let shardgate = comparison.shardgate;
        let _ = write!(
            out,
            "{} @ {}: {} {}",
            shardgate.mode.name(),
            rate_phrase(shardgate.rate),
            short_label(shardgate.client),
            line_figures(shardgate.median.as_ref(), "µs/event"),
        );
        if let Some(twilight) = comparison.twilight {
            let _ = write!(
                out,
                " | {} {}",
                short_label(twilight.client),
                line_figures(twilight.median.as_ref(), "µs"),
            );
        }
        if let Some((cpu, rss)) = comparison.ratios() {
            let _ = write!(out, " | ratio CPU {cpu:.2}× RSS {rss:.1}×");
        }
        out.push('\n');
    }
    out
}

impl Comparison<'_> {
    /// shardgate ÷ twilight of the CPU per event and the peak RSS; `None` unless both have a
    /// successful run.
    pub fn ratios(&self) -> Option<(f64, f64)> {
        let shardgate = self.shardgate.median.as_ref()?;
        let twilight = self.twilight?.median.as_ref()?;
        Some((
            ratio(shardgate.cpu_us_per_event, twilight.cpu_us_per_event),
            ratio(shardgate.peak_rss_kib, twilight.peak_rss_kib),
        ))
    }
}

/// The main table: one line per (rate, mode, client) with the medians.
pub fn results_table(rows: &[Row], shards: u32) -> String {
    let mut out = String::from(
        "| rate per shard | mode | client | cores | runs ok | events | wall s | events/s | \
         CPU-s per M events (= µs CPU/event) | peak RSS MiB | RSS/shard KiB | \
         driver CPU-s (mock+bot) |\n\
         |---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    for row in rows {
        let head = format!(
            "| {} | {} | {} | {} | {}/{} |",
            rate_cell(row.rate),
            row.mode.name(),
            row.client.label(),
            row.client.cores(),
            row.ok,
            row.runs
        );
        let Some(m) = &row.median else {
            let _ = writeln!(out, "{head} – | – | – | – | – | – | – |");
            continue;
        };
        let _ = writeln!(
            out,
            "{head} {} | {:.2} | {} | {:.2} | {:.1} | {:.0} | {:.2} |",
            thousands(m.events),
            m.wall_secs,
            thousands(m.events_per_sec),
            m.cpu_us_per_event,
            m.peak_rss_kib / 1024.0,
            m.peak_rss_kib / f64::from(shards.max(1)),
            m.driver_cpu_secs,
        );
    }
    out
}

/// shardgate ÷ each twilight variant, per rate and mode (ratios of medians; < 1 means
/// shardgate uses less); shardgate is its run with the most cores.
pub fn ratios_table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| rate per shard | mode | shardgate ÷ | CPU per event | events/s | peak RSS |\n\
         |---|---|---|--:|--:|--:|\n",
    );
    let mut any = false;
    for shardgate in best_shardgate_rows(rows) {
        let Some(sg) = &shardgate.median else {
            continue;
        };
        for twilight in rows
            .iter()
            .filter(|r| same_stream(r, shardgate) && matches!(r.client, Client::Twilight { .. }))
        {
            let Some(tw) = &twilight.median else { continue };
            any = true;
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.2} | {:.2} | {:.2} |",
                rate_cell(shardgate.rate),
                shardgate.mode.name(),
                twilight.client.label(),
                ratio(sg.cpu_us_per_event, tw.cpu_us_per_event),
                ratio(sg.events_per_sec, tw.events_per_sec),
                ratio(sg.peak_rss_kib, tw.peak_rss_kib),
            );
        }
    }
    if any { out } else { String::new() }
}

/// shardgate's events/s, CPU per event and peak RSS with each core count, per rate and mode,
/// and the speed-up of the most cores over one.
pub fn cores_table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| rate per shard | mode | shardgate cores | events/s | CPU µs/event | peak RSS MiB | \
         events/s ÷ 1 core |\n\
         |---|---|--:|--:|--:|--:|--:|\n",
    );
    let mut any = false;
    for best in best_shardgate_rows(rows) {
        let one_core = rows.iter().find(|r| {
            same_stream(r, best) && r.client == Client::Shardgate { cores: 1 } && r.median.is_some()
        });
        let (Some(one), Some(_)) = (one_core, &best.median) else {
            continue;
        };
        if one.client == best.client {
            continue;
        }
        let base = one.median.as_ref().map_or(f64::NAN, |m| m.events_per_sec);
        for row in rows
            .iter()
            .filter(|r| same_stream(r, best) && matches!(r.client, Client::Shardgate { .. }))
        {
            let Some(m) = &row.median else { continue };
            any = true;
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {:.2} | {:.1} | {:.2} |",
                rate_cell(row.rate),
                row.mode.name(),
                row.client.cores(),
                thousands(m.events_per_sec),
                m.cpu_us_per_event,
                m.peak_rss_kib / 1024.0,
                ratio(m.events_per_sec, base),
            );
        }
    }
    if any { out } else { String::new() }
}

/// The range of shardgate's median startup CPU (before its first connection) over the rows,
/// in milliseconds; `None` without a shardgate sample.
pub fn shardgate_startup_ms(rows: &[Row]) -> Option<(f64, f64)> {
    rows.iter()
        .filter(|r| matches!(r.client, Client::Shardgate { .. }))
        .filter_map(|r| r.median.as_ref())
        .map(|m| m.startup_cpu_secs * 1e3)
        .fold(None, |range, ms| match range {
            None => Some((ms, ms)),
            Some((low, high)) => Some((f64::min(low, ms), f64::max(high, ms))),
        })
}

/// Every failed run with its reason.
pub fn failures_table(results: &[RunResult]) -> String {
    let mut out = String::new();
    for result in results {
        if let Outcome::Failed { reason } = &result.outcome {
            if out.is_empty() {
                out.push_str(
                    "| rate per shard | mode | client | cores | run | why |\n\
                     |---|---|---|--:|--:|---|\n",
                );
            }
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                rate_cell(result.rate),
                result.mode.name(),
                result.client.label(),
                result.client.cores(),
                result.repetition,
                reason.replace('|', "\\|").replace('\n', " "),
            );
        }
    }
    out
}

/// A rate in a table cell: `2,000/s`, or `as read` for 0 (as fast as the client reads).
pub fn rate_cell(rate: f64) -> String {
    if rate == 0.0 {
        "as read".to_owned()
    } else {
        format!("{}/s", rate_number(rate))
    }
}

/// A rate in a sentence: `2,000/s per shard`, or `as fast as read` for 0.
pub fn rate_phrase(rate: f64) -> String {
    if rate == 0.0 {
        "as fast as read".to_owned()
    } else {
        format!("{}/s per shard", rate_number(rate))
    }
}

/// The command line as one shell command: each argument as typed where the shell would read
/// it back unchanged, else in single quotes.
pub fn command_line(arguments: &[String]) -> String {
    let plain = |argument: &str| {
        !argument.is_empty()
            && argument
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_=,./:@%+".contains(c))
    };
    arguments
        .iter()
        .map(|argument| {
            if plain(argument) {
                argument.clone()
            } else {
                format!("'{}'", argument.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `YYYY-MM-DD HH:MM UTC` of a Unix time, in seconds (the proleptic Gregorian calendar, as
/// `date -u`; days to a civil date after Howard Hinnant's `civil_from_days`).
pub fn utc_minute(unix_secs: u64) -> String {
    let (days, secs_of_day) = (unix_secs / 86_400, unix_secs % 86_400);
    // Days since 0000-03-01, so that a leap day ends its year; then 400-year eras.
    let shifted = days + 719_468;
    let era = shifted / 146_097;
    let day_of_era = shifted % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        secs_of_day / 3600,
        secs_of_day % 3600 / 60
    )
}

/// Per (rate, mode), the shardgate row with the most cores.
fn best_shardgate_rows(rows: &[Row]) -> Vec<&Row> {
    let mut best: Vec<&Row> = Vec::new();
    for row in rows {
        let Client::Shardgate { cores } = row.client else {
            continue;
        };
        match best.iter_mut().find(|b| same_stream(b, row)) {
            Some(b) if b.client.cores() < cores => *b = row,
            Some(_) => {}
            None => best.push(row),
        }
    }
    best
}

/// The two rows measured the same stream: the same rate and mode.
fn same_stream(a: &Row, b: &Row) -> bool {
    a.rate == b.rate && a.mode == b.mode
}

/// `shardgate (2 cores)`, `twilight raw`: a client in the summary.
fn short_label(client: Client) -> String {
    match client {
        Client::Shardgate { cores: 1 } => "shardgate (1 core)".to_owned(),
        Client::Shardgate { cores } => format!("shardgate ({cores} cores)"),
        Client::Twilight { parse, .. } => format!("twilight {}", parse.name()),
    }
}

/// `7.00 µs/event, 3.8 MiB` for a summary cell.
fn cell_figures(median: Option<&Medians>) -> String {
    median.map_or_else(
        || "no successful run".to_owned(),
        |m| {
            format!(
                "{:.2} µs/event, {:.1} MiB",
                m.cpu_us_per_event,
                m.peak_rss_kib / 1024.0
            )
        },
    )
}

/// `7.00 µs 3.8 MiB` (with the given unit after the CPU) for a summary line.
fn line_figures(median: Option<&Medians>, cpu_unit: &str) -> String {
    median.map_or_else(
        || "no successful run".to_owned(),
        |m| {
            format!(
                "{:.2} {cpu_unit} {:.1} MiB",
                m.cpu_us_per_event,
                m.peak_rss_kib / 1024.0
            )
        },
    )
}

/// A positive rate with thousands separators, or as typed when it has a fraction.
fn rate_number(rate: f64) -> String {
    if rate.fract() == 0.0 {
        thousands(rate)
    } else {
        rate.to_string()
    }
}

fn ratio(numerator: f64, denominator: f64) -> f64 {
    if denominator == 0.0 {
        f64::NAN
    } else {
        numerator / denominator
    }
}

/// A non-negative number rounded to an integer, with `,` between thousands.
pub fn thousands(value: f64) -> String {
    if !value.is_finite() {
        return "–".to_owned();
    }
    // Rounded, finite and far below 2^63 for anything this tool counts.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let digits = (value.round().max(0.0) as u64).to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAW: Client = Client::Twilight {
        parse: Parse::Raw,
        threads: None,
    };
    const FULL: Client = Client::Twilight {
        parse: Parse::Full,
        threads: None,
    };
    const SHARDGATE_2: Client = Client::Shardgate { cores: 2 };
    const SHARDGATE_1: Client = Client::Shardgate { cores: 1 };

    fn sample(events: u64, wall_secs: f64, cpu_secs: f64, peak_rss_kib: u64) -> Sample {
        Sample {
            events,
            wall_secs,
            cpu_secs,
            peak_rss_kib,
            driver_cpu_secs: 1.0,
            startup_cpu_secs: 0.0,
            redundant_forwarded: 0,
        }
    }

    fn ok(mode: Mode, client: Client, repetition: usize, sample: Sample) -> RunResult {
        ok_at(0.0, mode, client, repetition, sample)
    }

    fn ok_at(
        rate: f64,
        mode: Mode,
        client: Client,
        repetition: usize,
        sample: Sample,
    ) -> RunResult {
        RunResult {
            rate,
            mode,
            client,
            repetition,
            outcome: Outcome::Ok(sample),
        }
    }

    fn failed_at(rate: f64, mode: Mode, client: Client, repetition: usize) -> RunResult {
        RunResult {
            rate,
            mode,
            client,
            repetition,
            outcome: Outcome::Failed {
                reason: "timed out".into(),
            },
        }
    }

    #[test]
    fn medians() {
        assert!(median(vec![]).is_nan());
        assert_eq!(median(vec![3.0]), 3.0);
        assert_eq!(median(vec![5.0, 1.0, 3.0]), 3.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(1_234_567.6), "1,234,568");
        assert_eq!(thousands(f64::NAN), "–");
    }

    #[test]
    fn rates() {
        assert_eq!(rate_cell(0.0), "as read");
        assert_eq!(rate_cell(2000.0), "2,000/s");
        assert_eq!(rate_cell(12.5), "12.5/s");
        assert_eq!(rate_phrase(0.0), "as fast as read");
        assert_eq!(rate_phrase(500.0), "500/s per shard");
    }

    #[test]
    fn command_lines_quote_what_the_shell_would_change() {
        let arguments: Vec<String> = [
            "target/release/compare",
            "--rates",
            "500,0",
            "--shardgate-arg=--batch-linger-ms=1",
            "--mix",
            "message_create=30 typing_start=0",
            "it's",
            "",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            command_line(&arguments),
            "target/release/compare --rates 500,0 --shardgate-arg=--batch-linger-ms=1 --mix \
             'message_create=30 typing_start=0' 'it'\\''s' ''"
        );
    }

    #[test]
    fn utc_minutes() {
        assert_eq!(utc_minute(0), "1970-01-01 00:00 UTC");
        // `date -u -d @951782400`: the leap day of a year divisible by 400.
        assert_eq!(utc_minute(951_782_400), "2000-02-29 00:00 UTC");
        // `date -u -d @1765000000` and the last minute of a year.
        assert_eq!(utc_minute(1_765_000_000), "2025-12-06 05:46 UTC");
        assert_eq!(utc_minute(1_798_761_599), "2026-12-31 23:59 UTC");
    }

    #[test]
    fn failed_runs_are_listed_not_averaged() {
        let shardgate = Client::Shardgate { cores: 2 };
        let results = vec![
            ok(
                Mode::ZstdStream,
                shardgate,
                1,
                sample(1_000_000, 2.0, 1.0, 8192),
            ),
            RunResult {
                rate: 0.0,
                mode: Mode::ZstdStream,
                client: shardgate,
                repetition: 2,
                outcome: Outcome::Failed {
                    reason: "shard 3: the bot is missing 1 seqs | and\nmore".into(),
                },
            },
            ok(
                Mode::ZstdStream,
                shardgate,
                3,
                sample(1_000_000, 4.0, 3.0, 4096),
            ),
        ];
        let rows = summarize(&results);
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].runs, rows[0].ok), (3, 2));
        let m = rows[0].median.as_ref().expect("two good runs");
        assert_eq!(m.cpu_us_per_event, 2.0);
        assert_eq!(m.events_per_sec, 375_000.0);
        let failures = failures_table(&results);
        assert!(
            failures.contains("| as read | zstd-stream | shardgate | 2 | 2 | shard 3"),
            "{failures}"
        );
        assert!(failures.contains("\\| and more |"), "{failures}");
    }

    #[test]
    fn tables() {
        let results = vec![
            ok(
                Mode::None,
                SHARDGATE_2,
                1,
                sample(400_000, 2.0, 0.4, 16 * 1024),
            ),
            ok(
                Mode::None,
                SHARDGATE_1,
                1,
                sample(400_000, 4.0, 0.36, 12 * 1024),
            ),
            ok(Mode::None, RAW, 1, sample(400_000, 4.0, 0.8, 8 * 1024)),
            ok(
                Mode::Payload,
                SHARDGATE_2,
                1,
                sample(400_000, 2.0, 1.6, 16 * 1024),
            ),
        ];
        let rows = summarize(&results);
        let table = results_table(&rows, 8);
        assert!(
            table.contains("| as read | none | shardgate | 2 | 1/1 | 400,000 | 2.00 | 200,000 | 1.00 | 16.0 | 2048 | 1.00 |"),
            "{table}"
        );
        assert!(
            table.contains("| as read | payload | shardgate | 2 | 1/1 |"),
            "{table}"
        );
        let ratios = ratios_table(&rows);
        assert!(
            ratios
                .contains("| as read | none | twilight-gateway 0.18 (raw) | 0.50 | 2.00 | 2.00 |"),
            "{ratios}"
        );
        assert!(!ratios.contains("payload"), "{ratios}");
        let cores = cores_table(&rows);
        assert!(
            cores.contains("| as read | none | 2 | 200,000 | 1.00 | 16.0 | 2.00 |"),
            "{cores}"
        );
        assert!(
            cores.contains("| as read | none | 1 | 100,000 | 0.90 | 12.0 | 1.00 |"),
            "{cores}"
        );
        assert!(!cores.contains("payload"), "{cores}");
        assert_eq!(failures_table(&results), "");
    }

    /// Two rates, raw and full, a payload mode without twilight and a (rate, mode) where
    /// shardgate's only runs failed.
    fn rated_results() -> Vec<RunResult> {
        vec![
            // 2,000/s, none: shardgate 2 cores 9.5 µs/event (median of 9 and 10), 61 MiB.
            ok_at(
                2000.0,
                Mode::None,
                SHARDGATE_2,
                1,
                sample(100_000, 20.0, 0.9, 62_464),
            ),
            ok_at(
                2000.0,
                Mode::None,
                SHARDGATE_1,
                1,
                sample(100_000, 20.0, 0.8, 40_960),
            ),
            ok_at(
                2000.0,
                Mode::None,
                RAW,
                1,
                sample(100_000, 20.0, 0.7, 3_891),
            ),
            ok_at(
                2000.0,
                Mode::None,
                FULL,
                1,
                sample(100_000, 20.0, 1.5, 7_168),
            ),
            ok_at(
                2000.0,
                Mode::None,
                SHARDGATE_2,
                2,
                sample(100_000, 20.0, 1.0, 62_464),
            ),
            ok_at(
                2000.0,
                Mode::None,
                SHARDGATE_1,
                2,
                sample(100_000, 20.0, 0.8, 40_960),
            ),
            ok_at(
                2000.0,
                Mode::None,
                RAW,
                2,
                sample(100_000, 20.0, 0.7, 3_891),
            ),
            ok_at(
                2000.0,
                Mode::None,
                FULL,
                2,
                sample(100_000, 20.0, 1.5, 7_168),
            ),
            // 2,000/s, payload: shardgate alone.
            ok_at(
                2000.0,
                Mode::Payload,
                SHARDGATE_2,
                1,
                sample(100_000, 20.0, 1.2, 51_200),
            ),
            ok_at(
                2000.0,
                Mode::Payload,
                SHARDGATE_1,
                1,
                sample(100_000, 20.0, 1.1, 40_960),
            ),
            // As read, none: shardgate's 2-core run failed; twilight raw 1 µs/event.
            failed_at(0.0, Mode::None, SHARDGATE_2, 1),
            ok_at(
                0.0,
                Mode::None,
                SHARDGATE_1,
                1,
                sample(400_000, 1.0, 0.8, 102_400),
            ),
            ok_at(0.0, Mode::None, RAW, 1, sample(400_000, 0.5, 0.4, 4_608)),
            ok_at(0.0, Mode::None, FULL, 1, sample(400_000, 2.0, 2.4, 7_168)),
        ]
    }

    #[test]
    fn summary_compares_the_most_cores_with_raw() {
        let rows = summarize(&rated_results());
        let pairs: Vec<(f64, Mode, Client, Option<Client>)> = comparisons(&rows)
            .into_iter()
            .map(|c| {
                (
                    c.shardgate.rate,
                    c.shardgate.mode,
                    c.shardgate.client,
                    c.twilight.map(|t| t.client),
                )
            })
            .collect();
        assert_eq!(
            pairs,
            [
                (2000.0, Mode::None, SHARDGATE_2, Some(RAW)),
                (2000.0, Mode::Payload, SHARDGATE_2, None),
                (0.0, Mode::None, SHARDGATE_2, Some(RAW)),
            ]
        );
        // Without raw, full is the one to compare with.
        let full_only: Vec<RunResult> = rated_results()
            .into_iter()
            .filter(|r| r.client != RAW)
            .collect();
        let rows = summarize(&full_only);
        assert_eq!(comparisons(&rows)[0].twilight.map(|t| t.client), Some(FULL));
    }

    #[test]
    fn summary_lines_one_per_rate_and_mode() {
        let rows = summarize(&rated_results());
        assert_eq!(
            summary_lines(&rows),
            "none @ 2,000/s per shard: shardgate (2 cores) 9.50 µs/event 61.0 MiB | twilight \
             raw 7.00 µs 3.8 MiB | ratio CPU 1.36× RSS 16.1×\n\
             payload @ 2,000/s per shard: shardgate (2 cores) 12.00 µs/event 50.0 MiB\n\
             none @ as fast as read: shardgate (2 cores) no successful run | twilight raw \
             1.00 µs 4.5 MiB\n"
        );
    }

    #[test]
    fn summary_table_rows_per_rate_and_mode() {
        let rows = summarize(&rated_results());
        assert_eq!(
            summary_table(&rows),
            "| rate per shard | mode | twilight-gateway 0.18 (raw) | shardgate (2 cores) | \
             ratio CPU | ratio RSS |\n\
             |---|---|--:|--:|--:|--:|\n\
             | 2,000/s | none | 7.00 µs/event, 3.8 MiB | 9.50 µs/event, 61.0 MiB | 1.36× | 16.1× |\n\
             | 2,000/s | payload | – | 12.00 µs/event, 50.0 MiB | – | – |\n\
             | as read | none | 1.00 µs/event, 4.5 MiB | no successful run | – | – |\n"
        );
        assert_eq!(summary_table(&[]), "");
    }

    #[test]
    fn every_table_row_has_its_rate_and_peak_rss() {
        let results = rated_results();
        let rows = summarize(&results);
        assert_eq!(rows.len(), 10, "{rows:#?}");
        let table = results_table(&rows, 8);
        assert!(
            table.contains(
                "| 2,000/s | none | twilight-gateway 0.18 (full) | 1 | 2/2 | 100,000 | 20.00 | \
                 5,000 | 15.00 | 7.0 | 896 | 1.00 |"
            ),
            "{table}"
        );
        assert!(
            table.contains("| as read | none | shardgate | 2 | 0/1 | – | – | – | – | – | – | – |"),
            "{table}"
        );
        let cores = cores_table(&rows);
        assert!(
            cores.contains("| 2,000/s | payload | 2 | 5,000 | 12.00 | 50.0 | 1.00 |"),
            "{cores}"
        );
        // As read, shardgate's 2-core run failed: nothing to compare 1 core with.
        assert!(!cores.contains("as read"), "{cores}");
        let ratios = ratios_table(&rows);
        assert!(
            ratios
                .contains("| 2,000/s | none | twilight-gateway 0.18 (full) | 0.63 | 1.00 | 8.71 |"),
            "{ratios}"
        );
        let failures = failures_table(&results);
        assert!(
            failures.contains("| as read | none | shardgate | 2 | 1 | timed out |"),
            "{failures}"
        );
    }
}
