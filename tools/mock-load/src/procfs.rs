//! CPU time of threads and processes, and resident memory, from `/proc` (Linux only).
//!
//! CPU time is read two ways: `stat` fields 14 and 15 (`utime + stime`, in clock ticks of
//! `USER_HZ`, which Linux fixes at 100 for user space) and, where the kernel provides it,
//! `schedstat`'s first field (nanoseconds on the CPU), which is finer. Both are reported.

use std::fs;

/// Linux exposes CPU times in `/proc` in units of `USER_HZ`, which is 100 on every
/// architecture user space sees (`getconf CLK_TCK`).
const USER_HZ: f64 = 100.0;

/// CPU time consumed so far.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuTime {
    /// `utime + stime` from `stat`, in seconds (10 ms resolution).
    pub stat_secs: f64,
    /// The `stime` part of `stat_secs` (in the kernel: syscalls, page faults).
    pub system_secs: f64,
    /// `schedstat` run time in seconds, when the kernel reports it (0 otherwise).
    pub sched_secs: f64,
}

impl CpuTime {
    /// The finer of the two readings when available.
    pub fn best(self) -> f64 {
        if self.sched_secs > 0.0 {
            self.sched_secs
        } else {
            self.stat_secs
        }
    }

    pub fn since(self, earlier: CpuTime) -> CpuTime {
        CpuTime {
            stat_secs: self.stat_secs - earlier.stat_secs,
            system_secs: self.system_secs - earlier.system_secs,
            sched_secs: self.sched_secs - earlier.sched_secs,
        }
    }

    fn add(self, other: CpuTime) -> CpuTime {
        CpuTime {
            stat_secs: self.stat_secs + other.stat_secs,
            system_secs: self.system_secs + other.system_secs,
            sched_secs: self.sched_secs + other.sched_secs,
        }
    }
}

/// Ids of this process's threads whose name (`comm`) is exactly `name`.
pub fn threads_named(name: &str) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let tid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let comm = fs::read_to_string(entry.path().join("comm")).ok()?;
            (comm.trim_end() == name).then_some(tid)
        })
        .collect()
}

/// CPU time of one thread of this process.
pub fn thread_cpu(tid: u32) -> Option<CpuTime> {
    cpu_at(&format!("/proc/self/task/{tid}"))
}

/// CPU time of several threads of this process, summed (threads that are gone count 0).
pub fn threads_cpu(tids: &[u32]) -> CpuTime {
    tids.iter()
        .filter_map(|tid| thread_cpu(*tid))
        .fold(CpuTime::default(), CpuTime::add)
}

/// CPU time of a whole process, all threads (`None`: this one). Only `stat` sums the
/// threads (`schedstat` of a process is its main thread's), so `sched_secs` is 0.
pub fn process_cpu(pid: Option<u32>) -> Option<CpuTime> {
    let cpu = match pid {
        Some(pid) => cpu_at(&format!("/proc/{pid}")),
        None => cpu_at("/proc/self"),
    }?;
    Some(CpuTime {
        sched_secs: 0.0,
        ..cpu
    })
}

fn cpu_at(dir: &str) -> Option<CpuTime> {
    let stat = fs::read_to_string(format!("{dir}/stat")).ok()?;
    // The command name may hold spaces and parentheses; the fields after the last ')' start
    // at field 3 (state), so field N is at index N - 3.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let sched_secs = fs::read_to_string(format!("{dir}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0.0, |ns| ns as f64 / 1e9);
    Some(CpuTime {
        stat_secs: (utime + stime) as f64 / USER_HZ,
        system_secs: stime as f64 / USER_HZ,
        sched_secs,
    })
}

/// Resident set size in KiB (`VmRSS` of `/proc/<pid>/status`; `None`: this process).
pub fn rss_kib(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_owned(),
    };
    let status = fs::read_to_string(path).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
}

/// The soft limit on open files (`Max open files` of `/proc/self/limits`).
pub fn open_files_limit() -> Option<u64> {
    let limits = fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        assert!(rss_kib(None).unwrap() > 0);
        let cpu = process_cpu(None).unwrap();
        assert!(cpu.stat_secs >= 0.0);
        let name = fs::read_to_string("/proc/thread-self/comm").unwrap();
        let me = threads_named(name.trim_end());
        assert!(!me.is_empty());
        assert!(open_files_limit().unwrap() > 0);
    }
}
