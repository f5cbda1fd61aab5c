//! The bench thread's CPU time as criterion's measurement, shared by the decode and filter
//! benches (`#[path]`-included: bench targets have no common crate of their own).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Bencher;

/// Times `routine` in the bench thread's CPU time.
pub fn cpu_time<Output>(bencher: &mut Bencher<'_>, mut routine: impl FnMut() -> Output) {
    bencher.iter_custom(|iterations| {
        let start = ThreadClock::now();
        for _ in 0..iterations {
            black_box(routine());
        }
        start.elapsed()
    });
}

/// The calling thread's CPU time, in nanoseconds, from `/proc/thread-self/schedstat`; `None` where
/// the file is missing or reads 0 (a kernel without scheduler statistics). The kernel brings a
/// running thread's figure up to date only at a scheduler tick or a switch, milliseconds apart,
/// so a yield comes first: it updates the figure (the scheduler accounts the time so far), and a
/// sample no longer reads zero or a tick's worth.
fn thread_cpu_ns() -> Option<u64> {
    std::thread::yield_now();
    let schedstat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let cpu_ns = schedstat.split_whitespace().next()?.parse().ok()?;
    (cpu_ns > 0).then_some(cpu_ns)
}

/// A start instant in thread CPU time, or in wall time where the kernel does not say.
enum ThreadClock {
    Cpu(u64),
    Wall(Instant),
}

impl ThreadClock {
    fn now() -> ThreadClock {
        thread_cpu_ns().map_or_else(|| ThreadClock::Wall(Instant::now()), ThreadClock::Cpu)
    }

    fn elapsed(&self) -> Duration {
        match self {
            ThreadClock::Cpu(start_ns) => {
                let now_ns = thread_cpu_ns().expect("schedstat was readable at the start");
                Duration::from_nanos(now_ns.saturating_sub(*start_ns))
            }
            ThreadClock::Wall(start) => start.elapsed(),
        }
    }
}
