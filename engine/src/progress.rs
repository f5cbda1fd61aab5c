//! Startup progress for `shardgate run`: how many of the owned shards are ready, and how long
//! the rest may take at the identify buckets' pace.
//!
//! [`StartupProgress`] is the state machine: it takes the shard counts and `now` and says what
//! to show ([`Report`]); it reads no clock and writes nothing, so its timing and arithmetic are
//! tested without sleeping. [`Output`] is the driver's half: on a terminal it redraws a bar in
//! place on stderr, otherwise it logs a line every few seconds. Nothing here is on a core: the
//! main thread asks while the shards start, and never once every shard is ready.

use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

/// How often the bar is redrawn on a terminal.
pub const BAR_REDRAW_INTERVAL: Duration = Duration::from_millis(250);
/// How often a progress line is logged when stderr is not a terminal.
pub const LOG_INTERVAL: Duration = Duration::from_secs(5);
/// The widest a bar line gets: one less than an 80-column terminal, so that the cursor never
/// sits in the wrap column (where some terminals move it to the next line).
pub const LINE_WIDTH_MAX: usize = 79;
/// Width of the bar itself, between the brackets, when the numbers leave room for it.
const BAR_WIDTH: usize = 40;
const BAR_PREFIX: &str = "shards ready [";

/// How fast the identify buckets let shards start: `max_concurrency` identifies per interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdentifyPace {
    /// `session_start_limit.max_concurrency`: one identify per bucket per interval.
    pub shards_per_interval: u32,
    /// `--identify-interval-ms` (Discord's 5 s window).
    pub interval: Duration,
}

impl IdentifyPace {
    /// The longest the buckets take to let `shards` identify: one interval per round of
    /// buckets, `ceil(shards / max_concurrency) × interval` (0 for no shard).
    pub fn time_to_identify(self, shards: u64) -> Duration {
        let rounds = shards.div_ceil(u64::from(self.shards_per_interval.max(1)));
        self.interval
            .saturating_mul(u32::try_from(rounds).unwrap_or(u32::MAX))
    }
}

/// The engine's shard counters that startup progress reads (see
/// [`crate::runtime::Snapshot`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardCounts {
    /// Shards that became ready. The counter counts each READY a shard completes, so after a
    /// re-identify it may run past `owned`: it is clamped where shown.
    pub ready: u64,
    pub owned: u64,
    /// Shards stopped on a fatal close code: they never become ready.
    pub fatal: u64,
}

impl ShardCounts {
    /// Ready shards as shown: never more than owned.
    pub fn ready_shown(self) -> u64 {
        self.ready.min(self.owned)
    }

    /// Shards that are not ready and may still be. At worst each of them needs an identify (a
    /// shard resuming a saved session is ready within a second or so).
    pub fn waiting(self) -> u64 {
        self.owned
            .saturating_sub(self.ready)
            .saturating_sub(self.fatal)
    }

    /// Every owned shard is ready or stopped for good: startup is over.
    pub fn settled(self) -> bool {
        self.waiting() == 0
    }
}

/// When the shards not ready yet should be, at the latest the buckets allow: every waiting
/// shard identifies, `max_concurrency` of them per interval.
pub fn eta(counts: ShardCounts, pace: IdentifyPace) -> Duration {
    pace.time_to_identify(counts.waiting())
}

/// One line of at most [`LINE_WIDTH_MAX`] ASCII characters:
/// `shards ready [#########################...............]  640/1000  ETA 30s`, with
/// `  N fatal` before the ETA when shards stopped for good. With no shard owned the bar is
/// full (nothing is left to wait for).
pub fn bar_line(counts: ShardCounts, eta: Duration) -> String {
    let ready = counts.ready_shown();
    let fatal = if counts.fatal > 0 {
        format!("  {} fatal", counts.fatal)
    } else {
        String::new()
    };
    let tail = format!(
        "]  {ready}/{}{fatal}  ETA {}",
        counts.owned,
        duration_text(eta)
    );
    let width = BAR_WIDTH.min(LINE_WIDTH_MAX.saturating_sub(BAR_PREFIX.len() + tail.len()));
    let filled = if counts.owned == 0 {
        width
    } else {
        // u128: `width × ready` cannot overflow; the quotient is at most `width`.
        (width as u128 * u128::from(ready) / u128::from(counts.owned)) as usize
    };
    let mut line = String::with_capacity(LINE_WIDTH_MAX + 1);
    line.push_str(BAR_PREFIX);
    line.extend(std::iter::repeat_n('#', filled));
    line.extend(std::iter::repeat_n('.', width - filled));
    line.push_str(&tail);
    // Only counts far past any real bot's make it longer: cut, it stays one terminal line.
    line.truncate(LINE_WIDTH_MAX);
    line
}

/// `45s`, `5m05s`, `2h03m`: whole seconds, rounded up (an ETA should not promise early).
pub fn duration_text(duration: Duration) -> String {
    let seconds = seconds_rounded_up(duration);
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m{:02}s", seconds / 60, seconds % 60),
        _ => format!("{}h{:02}m", seconds / 3600, seconds / 60 % 60),
    }
}

fn seconds_rounded_up(duration: Duration) -> u64 {
    duration
        .as_secs()
        .saturating_add(u64::from(duration.subsec_nanos() > 0))
}

/// What startup progress has to say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Report {
    /// Shards are still starting: redraw the bar, or log a progress line.
    Starting { counts: ShardCounts, eta: Duration },
    /// Every owned shard is ready, or stopped on a fatal close code.
    Settled {
        counts: ShardCounts,
        elapsed: Duration,
    },
    /// The engine stops before every shard was ready.
    Stopped {
        counts: ShardCounts,
        elapsed: Duration,
    },
}

/// Startup progress as a state machine: [`Report::Starting`] every `report_interval` (the first
/// at once), then one [`Report::Settled`] or [`Report::Stopped`], then nothing.
#[derive(Debug)]
pub struct StartupProgress {
    pace: IdentifyPace,
    report_interval: Duration,
    /// When `run` began (before `/gateway/bot`): what "ready in 85.3 s" counts from.
    started: Instant,
    next_report_at: Instant,
    finished: bool,
}

impl StartupProgress {
    pub fn new(pace: IdentifyPace, report_interval: Duration, started: Instant) -> Self {
        StartupProgress {
            pace,
            report_interval,
            started,
            next_report_at: started,
            finished: false,
        }
    }

    /// The counts now: startup is over once they settle (reported at once, whatever the
    /// interval), otherwise a progress report when one is due.
    pub fn poll(&mut self, counts: ShardCounts, now: Instant) -> Option<Report> {
        if self.finished {
            return None;
        }
        if counts.settled() {
            self.finished = true;
            return Some(Report::Settled {
                counts,
                elapsed: now.saturating_duration_since(self.started),
            });
        }
        if now < self.next_report_at {
            return None;
        }
        // From now, not from the last due time: a stalled main thread does not cause a burst.
        self.next_report_at = now + self.report_interval;
        Some(Report::Starting {
            counts,
            eta: eta(counts, self.pace),
        })
    }

    /// The engine stops (a signal, or every core ended): the last report, unless startup was
    /// over already.
    pub fn stop(&mut self, counts: ShardCounts, now: Instant) -> Option<Report> {
        if self.finished {
            return None;
        }
        self.finished = true;
        let elapsed = now.saturating_duration_since(self.started);
        Some(if counts.settled() {
            Report::Settled { counts, elapsed }
        } else {
            Report::Stopped { counts, elapsed }
        })
    }

    /// True once the last report was given: the driver need not poll any more.
    pub fn is_finished(&self) -> bool {
        self.finished
    }
}

/// Where startup progress goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// stderr is a terminal: a bar redrawn in place, then a summary line.
    Terminal,
    /// stderr is a pipe or a file (systemd, containers): `tracing` lines.
    Log,
}

impl Output {
    /// [`Output::Terminal`] when stderr is a terminal that understands `ESC [2K` (not
    /// `TERM=dumb`).
    pub fn detect() -> Output {
        let dumb = std::env::var_os("TERM").is_some_and(|term| term == "dumb");
        if std::io::stderr().is_terminal() && !dumb {
            Output::Terminal
        } else {
            Output::Log
        }
    }

    /// How often [`StartupProgress`] should report for this output.
    pub fn report_interval(self) -> Duration {
        match self {
            Output::Terminal => BAR_REDRAW_INTERVAL,
            Output::Log => LOG_INTERVAL,
        }
    }

    /// Shows a report.
    ///
    /// On a terminal the bar is written after `\r` and an erase-line, and followed by `\r`:
    /// the cursor waits at the start of the bar's line, so a log line written meanwhile (also
    /// to stderr, by any thread) starts at column 0 and covers the bar instead of running on
    /// after it; the next redraw draws the bar again below. Write errors are ignored: a
    /// closed stderr must not stop the engine.
    pub fn show(self, report: &Report) {
        match self {
            Output::Terminal => {
                let text = match *report {
                    Report::Starting { counts, eta } => {
                        format!("\r\x1b[2K{}\r", bar_line(counts, eta))
                    }
                    Report::Settled { .. } | Report::Stopped { .. } => {
                        format!("\r\x1b[2K{}\n", summary_line(report))
                    }
                };
                let mut stderr = std::io::stderr().lock();
                let _ = stderr.write_all(text.as_bytes());
                let _ = stderr.flush();
            }
            Output::Log => log(report),
        }
    }
}

/// The line that ends the bar: `1000/1000 shards ready in 85.3 s`.
pub fn summary_line(report: &Report) -> String {
    match *report {
        Report::Starting { counts, eta } => bar_line(counts, eta),
        Report::Settled { counts, elapsed } => {
            let mut line = format!(
                "{}/{} shards ready in {:.1} s",
                counts.ready_shown(),
                counts.owned,
                elapsed.as_secs_f64()
            );
            if counts.fatal > 0 {
                line.push_str(&format!("; {} stopped on a fatal close code", counts.fatal));
            }
            line
        }
        Report::Stopped { counts, elapsed } => format!(
            "stopping: {}/{} shards were ready after {:.1} s",
            counts.ready_shown(),
            counts.owned,
            elapsed.as_secs_f64()
        ),
    }
}

fn log(report: &Report) {
    match *report {
        Report::Starting { counts, eta } => tracing::info!(
            shards_ready = counts.ready_shown(),
            shards_owned = counts.owned,
            shards_fatal = counts.fatal,
            eta_s = seconds_rounded_up(eta),
            "startup progress"
        ),
        Report::Settled { counts, elapsed } if counts.fatal == 0 => tracing::info!(
            shards_ready = counts.ready_shown(),
            shards_owned = counts.owned,
            elapsed_ms = elapsed.as_millis() as u64,
            "all shards ready"
        ),
        Report::Settled { counts, elapsed } => tracing::warn!(
            shards_ready = counts.ready_shown(),
            shards_owned = counts.owned,
            shards_fatal = counts.fatal,
            elapsed_ms = elapsed.as_millis() as u64,
            "startup over: the shards not ready stopped on a fatal close code"
        ),
        Report::Stopped { counts, elapsed } => tracing::info!(
            shards_ready = counts.ready_shown(),
            shards_owned = counts.owned,
            elapsed_ms = elapsed.as_millis() as u64,
            "stopping before every shard was ready"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIVE: Duration = Duration::from_secs(5);

    fn counts(ready: u64, owned: u64, fatal: u64) -> ShardCounts {
        ShardCounts {
            ready,
            owned,
            fatal,
        }
    }

    fn pace(shards_per_interval: u32) -> IdentifyPace {
        IdentifyPace {
            shards_per_interval,
            interval: FIVE,
        }
    }

    #[test]
    fn eta_is_one_interval_per_round_of_buckets_for_the_shards_not_ready() {
        // 360 waiting at 16 per 5 s: 23 rounds.
        assert_eq!(eta(counts(640, 1000, 0), pace(16)), FIVE * 23);
        assert_eq!(eta(counts(0, 8, 0), pace(1)), FIVE * 8);
        assert_eq!(eta(counts(0, 8, 0), pace(4)), FIVE * 2);
        assert_eq!(eta(counts(7, 8, 0), pace(16)), FIVE);
        // Nothing left, or more READYs than shards (re-identifies): never below 0.
        assert_eq!(eta(counts(8, 8, 0), pace(1)), Duration::ZERO);
        assert_eq!(eta(counts(12, 8, 0), pace(1)), Duration::ZERO);
        // Fatal shards never identify again.
        assert_eq!(eta(counts(5, 8, 3), pace(1)), Duration::ZERO);
        assert_eq!(eta(counts(4, 8, 2), pace(1)), FIVE * 2);
        // A broken pace (0 buckets) counts as 1; huge counts saturate instead of panicking.
        assert_eq!(eta(counts(0, 3, 0), pace(0)), FIVE * 3);
        assert_eq!(
            eta(counts(0, u64::MAX, 0), pace(1)),
            FIVE.saturating_mul(u32::MAX)
        );
    }

    #[test]
    fn settled_once_every_shard_is_ready_or_fatal() {
        assert!(!counts(3, 4, 0).settled());
        assert!(counts(4, 4, 0).settled());
        assert!(counts(3, 4, 1).settled());
        assert!(counts(9, 4, 0).settled());
        assert!(counts(0, 0, 0).settled());
    }

    #[test]
    fn bar_line_looks_like_the_issue_and_fits_80_columns() {
        let line = bar_line(counts(640, 1000, 0), Duration::from_secs(30));
        let bar = format!("[{}{}]", "#".repeat(25), ".".repeat(15));
        assert_eq!(line, format!("shards ready {bar}  640/1000  ETA 30s"));
        assert!(line.len() <= LINE_WIDTH_MAX);

        let fatal = bar_line(counts(2, 4, 1), FIVE * 61);
        assert!(fatal.ends_with("]  2/4  1 fatal  ETA 5m05s"), "{fatal}");
    }

    #[test]
    fn bar_line_handles_nothing_owned_too_many_ready_and_absurd_numbers() {
        let full = format!("[{}]", "#".repeat(BAR_WIDTH));
        assert_eq!(
            bar_line(counts(0, 0, 0), Duration::ZERO),
            format!("shards ready {full}  0/0  ETA 0s")
        );
        // More READYs than shards (a shard re-identified): clamped, full bar.
        assert_eq!(
            bar_line(counts(7, 4, 0), Duration::ZERO),
            format!("shards ready {full}  4/4  ETA 0s")
        );
        assert!(bar_line(counts(0, 4, 0), FIVE).contains(&format!("[{}]", ".".repeat(40))));
        // Long numbers shrink the bar, and nothing ever passes the width.
        let big = bar_line(counts(123_456, 1_000_000, 12_345), FIVE * 100_000);
        assert!(big.len() <= LINE_WIDTH_MAX, "{big}");
        assert!(
            big.ends_with("]  123456/1000000  12345 fatal  ETA 138h53m"),
            "{big}"
        );
        for absurd in [
            counts(u64::MAX, u64::MAX, u64::MAX),
            counts(u64::MAX / 2, u64::MAX, 0),
        ] {
            let line = bar_line(absurd, Duration::MAX);
            assert!(line.len() <= LINE_WIDTH_MAX, "{line}");
            assert!(line.starts_with(BAR_PREFIX));
        }
    }

    #[test]
    fn durations_read_in_seconds_minutes_or_hours_rounded_up() {
        assert_eq!(duration_text(Duration::ZERO), "0s");
        assert_eq!(duration_text(Duration::from_millis(1)), "1s");
        assert_eq!(duration_text(Duration::from_secs(59)), "59s");
        assert_eq!(duration_text(Duration::from_secs(60)), "1m00s");
        assert_eq!(duration_text(Duration::from_secs(3599)), "59m59s");
        assert_eq!(duration_text(Duration::from_secs(7380)), "2h03m");
    }

    #[test]
    fn reports_come_at_the_interval_then_once_when_settled() {
        let start = Instant::now();
        let ms = Duration::from_millis;
        let mut progress = StartupProgress::new(pace(1), LOG_INTERVAL, start);
        // The first report at once, then one per interval.
        assert_eq!(
            progress.poll(counts(0, 3, 0), start),
            Some(Report::Starting {
                counts: counts(0, 3, 0),
                eta: FIVE * 3
            })
        );
        assert_eq!(progress.poll(counts(1, 3, 0), start + ms(4999)), None);
        assert_eq!(
            progress.poll(counts(1, 3, 0), start + ms(5000)),
            Some(Report::Starting {
                counts: counts(1, 3, 0),
                eta: FIVE * 2
            })
        );
        // Settling is reported at once, not at the next interval, and only once.
        assert_eq!(
            progress.poll(counts(3, 3, 0), start + ms(6200)),
            Some(Report::Settled {
                counts: counts(3, 3, 0),
                elapsed: ms(6200)
            })
        );
        assert!(progress.is_finished());
        assert_eq!(progress.poll(counts(2, 3, 0), start + ms(20_000)), None);
        assert_eq!(progress.stop(counts(3, 3, 0), start + ms(30_000)), None);
    }

    #[test]
    fn fatal_shards_end_startup_instead_of_hanging() {
        let start = Instant::now();
        let mut progress = StartupProgress::new(pace(16), BAR_REDRAW_INTERVAL, start);
        let now = start + Duration::from_secs(2);
        assert_eq!(
            progress.poll(counts(2, 4, 2), now),
            Some(Report::Settled {
                counts: counts(2, 4, 2),
                elapsed: Duration::from_secs(2)
            })
        );
        assert_eq!(
            summary_line(&Report::Settled {
                counts: counts(2, 4, 2),
                elapsed: Duration::from_millis(2040)
            }),
            "2/4 shards ready in 2.0 s; 2 stopped on a fatal close code"
        );
    }

    #[test]
    fn a_stop_during_startup_ends_it_with_one_report() {
        let start = Instant::now();
        let mut progress = StartupProgress::new(pace(1), BAR_REDRAW_INTERVAL, start);
        assert!(progress.poll(counts(0, 4, 0), start).is_some());
        let at = start + Duration::from_millis(1500);
        let stopped = progress.stop(counts(1, 4, 0), at);
        assert_eq!(
            stopped,
            Some(Report::Stopped {
                counts: counts(1, 4, 0),
                elapsed: Duration::from_millis(1500)
            })
        );
        assert_eq!(
            summary_line(&stopped.unwrap()),
            "stopping: 1/4 shards were ready after 1.5 s"
        );
        assert_eq!(progress.stop(counts(1, 4, 0), at), None);
        assert_eq!(progress.poll(counts(1, 4, 0), at + FIVE), None);
    }

    #[test]
    fn the_summary_reads_like_the_issue() {
        let report = Report::Settled {
            counts: counts(1000, 1000, 0),
            elapsed: Duration::from_millis(85_300),
        };
        assert_eq!(summary_line(&report), "1000/1000 shards ready in 85.3 s");
    }
}
