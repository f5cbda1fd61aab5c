//! Process CPU time and peak RSS from Linux procfs (bench mode).

use std::fs;

/// Clock ticks per second of `/proc/self/stat`'s utime/stime. This is USER_HZ, which
/// Linux fixes at 100 for userspace on every mainstream architecture (x86_64, aarch64);
/// asking `sysconf(_SC_CLK_TCK)` would need `unsafe` for the same answer. Resolution is
/// therefore 10 ms: bench runs should last seconds.
const CLK_TCK: f64 = 100.0;

/// CPU time the whole process (all threads) has used so far.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuTime {
    /// User-mode seconds.
    pub user_secs: f64,
    /// Kernel-mode seconds.
    pub sys_secs: f64,
}

/// Read utime and stime (fields 14 and 15 of `/proc/self/stat`).
pub fn cpu_time() -> Option<CpuTime> {
    let stat = fs::read_to_string("/proc/self/stat").ok()?;
    // Field 2 (comm) is parenthesised and may hold spaces: count from the last ')'.
    // What follows starts at field 3, so field N is at index N - 3.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(14 - 3);
    let mut ticks = || fields.next()?.parse::<u64>().ok();
    let (utime, stime) = (ticks()?, ticks()?);
    // Tick counts stay far below 2^52: the conversion is exact.
    #[allow(clippy::cast_precision_loss)]
    Some(CpuTime {
        user_secs: utime as f64 / CLK_TCK,
        sys_secs: stime as f64 / CLK_TCK,
    })
}

/// Peak resident set size in KiB (`VmHWM` of `/proc/self/status`).
pub fn peak_rss_kib() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_own_process() {
        assert!(super::cpu_time().is_some());
        assert!(super::peak_rss_kib().unwrap() > 0);
    }
}
