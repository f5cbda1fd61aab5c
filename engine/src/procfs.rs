//! This process's CPU time and memory from Linux's /proc, for the demo's figures and the
//! metrics. Reads files only; no unsafe, no libc. Every reader answers `None` where /proc is
//! missing or unreadable (another OS, a locked-down container) instead of failing.

use std::time::Duration;

/// Clock ticks per second of `utime`/`stime` in /proc stat files. Linux has fixed USER_HZ at
/// 100 on every architecture it exports to user space.
const TICKS_PER_SECOND: u64 = 100;

/// CPU time (user + system) of this process's live threads whose name starts with `prefix`
/// (Linux keeps 15 bytes of a thread name). Threads that already exited are not counted.
///
/// Uses `schedstat` (nanoseconds on CPU) where the kernel has it, else `stat` (10 ms ticks).
pub fn threads_cpu(prefix: &str) -> Option<Duration> {
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    let mut total = Duration::ZERO;
    for task in tasks.flatten() {
        let path = task.path();
        let Ok(name) = std::fs::read_to_string(path.join("comm")) else {
            continue; // exited meanwhile
        };
        if !name.trim_end().starts_with(prefix) {
            continue;
        }
        let cpu = std::fs::read_to_string(path.join("schedstat"))
            .ok()
            .and_then(|text| schedstat_cpu(&text))
            .or_else(|| {
                std::fs::read_to_string(path.join("stat"))
                    .ok()
                    .and_then(|text| stat_cpu(&text))
            });
        total += cpu.unwrap_or_default();
    }
    Some(total)
}

/// The Linux thread id of the calling thread (`/proc/thread-self` names it).
pub fn current_thread_id() -> Option<u64> {
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    link.file_name()?.to_str()?.parse().ok()
}

/// CPU time (user + system) of one live thread of this process, by its Linux thread id;
/// `None` once it exited.
pub fn thread_cpu(thread_id: u64) -> Option<Duration> {
    let task = std::path::Path::new("/proc/self/task").join(thread_id.to_string());
    std::fs::read_to_string(task.join("schedstat"))
        .ok()
        .and_then(|text| schedstat_cpu(&text))
        .or_else(|| stat_cpu(&std::fs::read_to_string(task.join("stat")).ok()?))
}

/// CPU time (user + system) of the whole process, exited threads included.
pub fn process_cpu() -> Option<Duration> {
    stat_cpu(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// Resident memory of the process, in bytes (`VmRSS`).
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// `utime + stime` from a stat line. The command name (field 2) is in parentheses and may hold
/// spaces or parentheses itself, so fields are counted after its last `)`.
fn stat_cpu(stat: &str) -> Option<Duration> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace();
    // After the name: state (3), ppid (4), ... utime is field 14, stime 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let ticks = utime + stime;
    Some(Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND))
}

/// The first schedstat field: nanoseconds spent on a CPU.
fn schedstat_cpu(schedstat: &str) -> Option<Duration> {
    let nanos: u64 = schedstat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_thread_is_found_by_its_id() {
        let id = current_thread_id().expect("Linux has /proc/thread-self");
        // Spin until the kernel has charged this thread some CPU.
        let start = std::time::Instant::now();
        while thread_cpu(id).unwrap_or_default().is_zero() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no CPU time for thread {id}"
            );
        }
        let other = std::thread::spawn(|| current_thread_id().expect("/proc/thread-self"))
            .join()
            .expect("the thread ran");
        assert_ne!(id, other);
        assert_eq!(thread_cpu(u64::MAX), None);
    }

    #[test]
    fn stat_fields_are_counted_after_the_name() {
        // A name with spaces and a parenthesis; utime 250 ticks, stime 50 ticks.
        let line = "1234 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 3 0 100 0 0";
        assert_eq!(stat_cpu(line), Some(Duration::from_secs(3)));
        assert_eq!(stat_cpu("garbage"), None);
        assert_eq!(stat_cpu("1 (x) S 1"), None);
    }

    #[test]
    fn schedstat_is_nanoseconds() {
        assert_eq!(
            schedstat_cpu("1500000000 20 30\n"),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(schedstat_cpu(""), None);
    }

    #[test]
    fn this_process_is_measured() {
        let name = "procfs-spin";
        let (spun_tx, spun_rx) = std::sync::mpsc::channel();
        let (exit_tx, exit_rx) = std::sync::mpsc::channel::<()>();
        let spinner = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                // Spin until this thread has had 200 ms of CPU by its own account (bounded by
                // a wall-clock deadline on a starved machine), then stay alive to be measured.
                let deadline = std::time::Instant::now() + Duration::from_secs(20);
                let own = || {
                    std::fs::read_to_string("/proc/thread-self/stat")
                        .ok()
                        .and_then(|text| stat_cpu(&text))
                        .unwrap_or_default()
                };
                while own() < Duration::from_millis(200) && std::time::Instant::now() < deadline {
                    std::hint::black_box((0..10_000u64).sum::<u64>());
                }
                spun_tx.send(own()).unwrap();
                let _ = exit_rx.recv();
            })
            .unwrap();
        let own = spun_rx.recv().unwrap();
        let measured = threads_cpu(name).unwrap();
        assert!(own >= Duration::from_millis(200), "{own:?}");
        assert!(
            measured + Duration::from_millis(10) >= own,
            "{measured:?} < {own:?}"
        );
        assert!(threads_cpu("no-such-thread").unwrap().is_zero());
        assert!(process_cpu().unwrap() >= own);
        assert!(resident_bytes().unwrap() > 1024 * 1024);
        exit_tx.send(()).unwrap();
        spinner.join().unwrap();
    }
}
