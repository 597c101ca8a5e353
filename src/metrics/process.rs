//! The standard process metrics (the names every Prometheus client library exports,
//! so dashboards and alerts written for them work unchanged): memory, CPU time, file
//! descriptors and the start time, read from `/proc/self` at scrape time.
//!
//! Only `/proc/self` is used, because the systemd unit's `ProcSubset=pid` hides the
//! rest of `/proc` (`/proc/stat` with the boot time included). The start time is
//! therefore derived from the process's start in clock ticks since boot
//! (`/proc/self/stat`) and `CLOCK_BOOTTIME` now, both on the same clock. The page size
//! and the clock tick come from the auxiliary vector (rustix), not assumed: aarch64
//! kernels with 16 or 64 KiB pages exist. A value that cannot be read is left out of
//! the scrape rather than reported as 0.

use std::fmt::Write;

/// One reading of the process's figures; `None` where `/proc` did not say.
#[derive(Debug, Default, PartialEq)]
pub struct Process {
    pub resident_bytes: Option<u64>,
    pub virtual_bytes: Option<u64>,
    pub cpu_seconds: Option<f64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    pub start_time_seconds: Option<f64>,
}

/// The fields of `/proc/self/stat` we use (proc(5) numbering in the comments).
#[derive(Debug, PartialEq)]
struct Stat {
    /// (14) user-mode CPU time, clock ticks.
    utime: u64,
    /// (15) kernel-mode CPU time, clock ticks.
    stime: u64,
    /// (22) start time after boot, clock ticks.
    starttime: u64,
    /// (23) virtual memory size, bytes.
    vsize: u64,
    /// (24) resident set size, pages.
    rss: u64,
}

/// Parses `/proc/self/stat`. The command name (field 2) is in parentheses and may
/// itself hold spaces and parentheses, so the fields are counted after the last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let (_, rest) = text.rsplit_once(')')?;
    // `rest` starts at field 3 (state): field n is at index n - 3.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        utime: field(14)?,
        stime: field(15)?,
        starttime: field(22)?,
        vsize: field(23)?,
        rss: field(24)?,
    })
}

/// The soft limit of open files from `/proc/self/limits`
/// (`Max open files            4096                 524288               files`).
fn parse_max_fds(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn seconds(t: rustix::time::Timespec) -> f64 {
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// Reads the figures now.
pub fn read() -> Process {
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let page = rustix::param::page_size() as u64;
    let stat = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|t| parse_stat(&t));
    let start_time_seconds = stat.as_ref().filter(|_| ticks > 0.0).map(|s| {
        use rustix::time::{clock_gettime, ClockId};
        let since_boot = seconds(clock_gettime(ClockId::Boottime));
        let now = seconds(clock_gettime(ClockId::Realtime));
        now - (since_boot - s.starttime as f64 / ticks)
    });
    Process {
        resident_bytes: stat.as_ref().map(|s| s.rss.saturating_mul(page)),
        virtual_bytes: stat.as_ref().map(|s| s.vsize),
        cpu_seconds: stat
            .as_ref()
            .filter(|_| ticks > 0.0)
            .map(|s| (s.utime + s.stime) as f64 / ticks),
        open_fds: std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as u64),
        max_fds: std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|t| parse_max_fds(&t)),
        start_time_seconds,
    }
}

/// Appends the process metrics to a scrape.
pub fn render(out: &mut String) {
    let p = read();
    let n = |v: Option<u64>| v.map(|v| v.to_string());
    // One metric a row: name, type, help, value (None: /proc did not say).
    #[rustfmt::skip]
    let lines = [
        ("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", n(p.resident_bytes)),
        ("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", n(p.virtual_bytes)),
        ("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.", p.cpu_seconds.map(|v| v.to_string())),
        ("process_open_fds", "gauge", "Number of open file descriptors.", n(p.open_fds)),
        ("process_max_fds", "gauge", "Maximum number of open file descriptors (the soft limit).", n(p.max_fds)),
        // Clock ticks are 10 ms: two decimals say all there is.
        ("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.", p.start_time_seconds.map(|v| format!("{v:.2}"))),
    ];
    for (name, kind, help, value) in lines {
        if let Some(value) = value {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        // A command name with spaces and parentheses, as a process may choose.
        let text = "4242 (log (writer) x) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    250 75 0 0 20 0 7 0 98765 123456789 3000 18446744073709551615 \
                    1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";
        assert_eq!(
            parse_stat(text),
            Some(Stat {
                utime: 250,
                stime: 75,
                starttime: 98765,
                vsize: 123456789,
                rss: 3000,
            })
        );
        assert_eq!(parse_stat("4242 (cut short) S 1 2 3\n"), None);
        assert_eq!(parse_stat("no parenthesis"), None);
    }

    #[test]
    fn the_soft_open_files_limit_is_read() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max cpu time              unlimited            unlimited            seconds   \n\
                      Max open files            4096                 524288               files     \n";
        assert_eq!(parse_max_fds(limits), Some(4096));
        assert_eq!(parse_max_fds("Limit Soft Hard\n"), None);
    }

    #[test]
    fn this_process_reads_plausibly() {
        let p = read();
        assert!(p.resident_bytes.is_some_and(|v| v > 0), "{p:?}");
        assert!(p.virtual_bytes >= p.resident_bytes, "{p:?}");
        assert!(p.cpu_seconds.is_some_and(|v| v >= 0.0), "{p:?}");
        assert!(p.open_fds.is_some_and(|v| v >= 3), "{p:?}");
        assert!(p.max_fds >= p.open_fds, "{p:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        // The test binary started at most a few minutes ago, and not in the future.
        let start = p.start_time_seconds.unwrap();
        assert!(
            start <= now + 1.0 && start > now - 3600.0,
            "{start} vs {now}"
        );
    }
}
