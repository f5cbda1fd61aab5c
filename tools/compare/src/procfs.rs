//! Process CPU time and peak resident memory of a process, from Linux procfs.
//!
//! Must not: read per-thread files or sum anything itself; `/proc/<pid>/stat` already sums
//! every thread of the process, the ones that have exited included.

use std::fs;

/// Clock ticks per second of `stat`'s utime/stime: USER_HZ, which Linux fixes at 100 for user
/// space on every mainstream architecture (`getconf CLK_TCK`); asking `sysconf` would need
/// `unsafe` for the same answer. Resolution is 10 ms, so a measured run should last seconds.
const USER_HZ: f64 = 100.0;

/// CPU seconds (`utime + stime`, all threads) the process has used since it started;
/// `None` reads this process.
pub fn cpu_secs(pid: Option<u32>) -> Option<f64> {
    let stat = fs::read_to_string(proc_path(pid, "stat")).ok()?;
    // Field 2 (comm) is parenthesised and may hold spaces: what follows the last ')' starts at
    // field 3, so utime (field 14) and stime (field 15) are at indexes 11 and 12.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let mut ticks = || fields.next()?.parse::<u64>().ok();
    let (utime, stime) = (ticks()?, ticks()?);
    // Tick counts stay far below 2^52: the conversion is exact.
    #[allow(clippy::cast_precision_loss)]
    Some((utime + stime) as f64 / USER_HZ)
}

/// Peak resident set size in KiB (`VmHWM` of `/proc/<pid>/status`).
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(proc_path(Some(pid), "status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
}

fn proc_path(pid: Option<u32>, file: &str) -> String {
    match pid {
        Some(pid) => format!("/proc/{pid}/{file}"),
        None => format!("/proc/self/{file}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_this_process() {
        assert!(super::cpu_secs(None).expect("own stat") >= 0.0);
        assert!(super::peak_rss_kib(std::process::id()).expect("own status") > 0);
    }
}
