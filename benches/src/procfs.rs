//! What the bench binaries read from `/proc` to account a process's or a thread's CPU and sleeps. Each
//! binary uses a part of it.

use std::path::Path;

/// The first field of a `schedstat` file: nanoseconds on the CPU (0 when unreadable).
pub fn schedstat_ns(path: impl AsRef<Path>) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Σ over the live threads of `proc` (`/proc/PID`, `/proc/self`) of their `schedstat` time:
/// nanosecond-exact, but threads that have exited are not counted.
pub fn tasks_cpu_ns(proc: &str) -> u64 {
    std::fs::read_dir(format!("{proc}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|t| schedstat_ns(t.path().join("schedstat")))
        .sum()
}

/// Σ over the live threads of `proc` of their context switches (voluntary: went to sleep; and not:
/// preempted).
pub fn tasks_switches(proc: &str) -> u64 {
    std::fs::read_dir(format!("{proc}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|t| {
            let status = t.path().join("status");
            status_count(&status, "voluntary_ctxt_switches")
                + status_count(&status, "nonvoluntary_ctxt_switches")
        })
        .sum()
}

/// The number after `key:` in a `status` file (0 when absent).
pub fn status_count(path: impl AsRef<Path>, key: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// utime + stime of `proc`'s `stat`, in nanoseconds: clock ticks, but threads that have exited
/// included.
pub fn stat_cpu_ns(proc: &str) -> u64 {
    std::fs::read_to_string(format!("{proc}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name (which may hold spaces): `state` first, then utime and
            // stime are the 12th and 13th.
            let f: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
            let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
            Some(ticks * tick_ns())
        })
        .unwrap_or(0)
}

/// Nanoseconds per clock tick of `/proc/PID/stat` (USER_HZ).
pub fn tick_ns() -> u64 {
    static TICK: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .filter(|hz| *hz > 0)
            .map_or(10_000_000, |hz| 1_000_000_000 / hz)
    })
}
