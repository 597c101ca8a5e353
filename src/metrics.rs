//! Prometheus metrics: requests by route and status, a latency histogram, and gauges
//! read at scrape time (groups, users, store bytes). Counting is a mutex-guarded map
//! update per request; the label set is bounded (routes × statuses).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::app::App;
use crate::store::lock;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Request counters and the latency histogram.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Metrics {
    /// Records one answered request.
    pub fn observe(&self, route: &'static str, status: u16, elapsed: Duration) {
        *lock(&self.requests).entry((route, status)).or_insert(0) += 1;
        let secs = elapsed.as_secs_f64();
        for (i, upper) in BUCKETS.iter().enumerate() {
            if secs <= *upper {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// The text exposition format.
    pub fn render(&self, app: &App) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str(
            "# HELP fleetgroups_requests_total HTTP requests answered, by route and status.\n",
        );
        out.push_str("# TYPE fleetgroups_requests_total counter\n");
        for ((route, status), n) in lock(&self.requests).iter() {
            let _ = writeln!(
                out,
                "fleetgroups_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        out.push_str(
            "# HELP fleetgroups_request_duration_seconds Time from request head to response.\n",
        );
        out.push_str("# TYPE fleetgroups_request_duration_seconds histogram\n");
        for (i, upper) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "fleetgroups_request_duration_seconds_bucket{{le=\"{upper}\"}} {}",
                self.buckets[i].load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "fleetgroups_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "fleetgroups_request_duration_seconds_sum {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "fleetgroups_request_duration_seconds_count {count}");
        let gauges = [
            (
                "fleetgroups_groups",
                "Groups in all accounts.",
                app.store.group_count(),
            ),
            ("fleetgroups_users", "Users.", app.auth.user_count() as u64),
            (
                "fleetgroups_failed_login_names",
                "userNames in the failed-login table.",
                app.auth.failed_login_entries().0 as u64,
            ),
            (
                "fleetgroups_failed_login_addresses",
                "Client addresses in the failed-login table.",
                app.auth.failed_login_entries().1 as u64,
            ),
            (
                "fleetgroups_store_bytes",
                "Bytes the store occupies on disk.",
                app.store.size_on_disk(),
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        let f = app.store.flush_stats();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let secs = |a: &AtomicU64| (load(a) as f64 / 1e6).to_string();
        let counters = [
            (
                "fleetgroups_store_flushes_total",
                "Group-commit flushes (sled flush + fdatasync).",
                load(&f.flushes).to_string(),
            ),
            (
                "fleetgroups_store_flush_waits_total",
                "Durable-write waits those flushes released.",
                load(&f.tickets).to_string(),
            ),
            (
                "fleetgroups_store_flush_sled_seconds_total",
                "Time in sled's flush (log write, sync_file_range).",
                secs(&f.sled_micros),
            ),
            (
                "fleetgroups_store_flush_fsync_seconds_total",
                "Time in fdatasync of the store files.",
                secs(&f.sync_micros),
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        out
    }
}
