//! Prometheus metrics: requests by route and status, a latency histogram, and gauges
//! read at scrape time (groups, users, store bytes). Counting is a mutex-guarded map
//! update per request; the label set is bounded (routes × statuses). The dropped log
//! lines are the one process-wide value shown (`log::lines_dropped`, a static in
//! `log.rs`): stderr belongs to the process, not to one server.

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
    /// Written by the connection table (`http/conns.rs`), shared with it.
    pub conns: std::sync::Arc<ConnStats>,
}

/// What happened to client connections.
#[derive(Default)]
pub struct ConnStats {
    /// Connections open now.
    pub open: AtomicU64,
    /// Connections with a write waiting for its client to read, now.
    pub blocked: AtomicU64,
    /// Closed because a write made no progress for `limits.write_timeout_secs`.
    pub write_timeouts: AtomicU64,
    /// Idle connections closed at the connection limit to make room.
    pub evicted_idle: AtomicU64,
    /// Connections whose client stopped reading, closed at the limit to make room.
    pub evicted_stalled: AtomicU64,
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
        out.push_str(&crate::build_info::prometheus());
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
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let c = &self.conns;
        let _ = writeln!(
            out,
            "# HELP fleetgroups_connections_open Client connections open now.\n# TYPE fleetgroups_connections_open gauge\nfleetgroups_connections_open {}",
            load(&c.open)
        );
        let _ = writeln!(
            out,
            "# HELP fleetgroups_connections_blocked Connections whose answer waits for the client to read it.\n# TYPE fleetgroups_connections_blocked gauge\nfleetgroups_connections_blocked {}",
            load(&c.blocked)
        );
        out.push_str("# HELP fleetgroups_connections_closed_total Connections the server closed, by reason.\n# TYPE fleetgroups_connections_closed_total counter\n");
        for (reason, n) in [
            ("write_timeout", &c.write_timeouts),
            ("evicted_idle", &c.evicted_idle),
            ("evicted_stalled", &c.evicted_stalled),
        ] {
            let _ = writeln!(
                out,
                "fleetgroups_connections_closed_total{{reason=\"{reason}\"}} {}",
                load(n)
            );
        }
        let f = app.store.flush_stats();
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
            (
                "fleetgroups_log_lines_dropped_total",
                "Log lines dropped because stderr failed or fell behind (log.rs).",
                crate::log::lines_dropped().to_string(),
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
