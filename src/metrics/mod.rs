//! Prometheus metrics: requests by route and status, a latency histogram per route, and
//! gauges read at scrape time (groups, users, store bytes). Counting is one
//! mutex-guarded map update per request; the label set is bounded (routes × statuses,
//! routes × buckets: the route label is the pattern, never the concrete path). The dropped log
//! lines are the one process-wide value shown (`log::lines_dropped`, a static in
//! `log.rs`): stderr belongs to the process, not to one server.

mod process;
mod replication;

pub use replication::ReplicationStats;

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::sync::lock;
use crate::time::Clock;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Request counters and the latency histograms.
#[derive(Default)]
pub struct Metrics {
    /// Per route pattern (`Op::label`): one lock per request for counts and histogram.
    routes: Mutex<BTreeMap<&'static str, RouteStats>>,
    /// Written by the connection table (`http/conns.rs`), shared with it.
    pub conns: std::sync::Arc<ConnStats>,
    /// Written by the replication task (`replication.rs`).
    pub replication: ReplicationStats,
    /// Written by the office pull (`replication/office.rs`).
    pub office: OfficeStats,
}

/// The office pull's own figures (the rest is read from the store at scrape time).
#[derive(Debug, Default)]
pub struct OfficeStats {
    /// Central office changes for this gateway past the cursor, as the last pull saw.
    pub pending: AtomicU64,
    /// When a pull last completed (ms since the epoch; 0: not in this run).
    pub last_pull_ms: std::sync::atomic::AtomicI64,
}

/// What a scrape shows that other parts own (the store, auth, backups), read at scrape
/// time by `App::metrics_snapshot`: this file renders values and depends on none of
/// them.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// None when the store cannot count them right now (the line is left out).
    pub groups: Option<u64>,
    pub users: u64,
    pub failed_login_names: u64,
    pub failed_login_addresses: u64,
    pub store_bytes: u64,
    /// The store takes writes and answers a read (what `/readyz` and the watchdog see).
    pub store_healthy: bool,
    pub live_tokens: u64,
    pub flushes: u64,
    pub flush_waits: u64,
    pub flush_sled_micros: u64,
    pub flush_fsync_micros: u64,
    /// ms since the epoch; 0: none known.
    pub backup_last_success_ms: i64,
    /// The store's highest change seq (the replication lag is measured to it).
    pub last_seq: u64,
    /// The store's office figures (`store::office`): cursor, groups served, changes
    /// held by a conflict. None when the store cannot read them right now.
    pub office: Option<(u64, u64, u64)>,
    /// The body budget (`limits.body_budget_bytes`).
    pub bodies: BudgetFigures,
    /// The answer budget (`limits.answer_budget_bytes`).
    pub answers: BudgetFigures,
}

/// One byte budget's figures (`app/budget.rs`).
#[derive(Debug, Clone, Copy, Default)]
pub struct BudgetFigures {
    pub total: u64,
    pub in_use: u64,
    pub refused: u64,
}

/// What one route answered and how long it took.
#[derive(Default)]
struct RouteStats {
    /// Answers by status code.
    statuses: BTreeMap<u16, u64>,
    /// Cumulative: `buckets[i]` counts the requests that took at most `BUCKETS[i]`.
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum_micros: u64,
}

/// What happened to client connections.
#[derive(Default)]
pub struct ConnStats {
    /// Connections open now.
    pub open: AtomicU64,
    /// The connection limit the accept loop enforces (`limits.max_connections`), set
    /// when it starts.
    pub max: AtomicU64,
    /// Connections with a write waiting for its client to read, now.
    pub blocked: AtomicU64,
    /// Closed because a write made no progress for `limits.write_timeout_secs`.
    pub write_timeouts: AtomicU64,
    /// Closed because the client took answers slower than
    /// `limits.min_read_bytes_per_sec`.
    pub slow_readers: AtomicU64,
    /// Idle connections closed at the connection limit to make room.
    pub evicted_idle: AtomicU64,
    /// Connections whose client stopped reading, closed at the limit to make room.
    pub evicted_stalled: AtomicU64,
}

impl Metrics {
    /// Empty counters; replication's figures are dated by `clock`.
    pub fn new(clock: Clock) -> Metrics {
        Metrics {
            replication: ReplicationStats::new(clock),
            ..Metrics::default()
        }
    }

    /// Records one answered request.
    pub fn observe(&self, route: &'static str, status: u16, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let mut routes = lock(&self.routes);
        let r = routes.entry(route).or_default();
        *r.statuses.entry(status).or_insert(0) += 1;
        for (n, upper) in r.buckets.iter_mut().zip(BUCKETS) {
            if secs <= upper {
                *n += 1;
            }
        }
        r.count += 1;
        r.sum_micros = r.sum_micros.saturating_add(micros);
    }

    /// The text exposition format.
    pub fn render(&self, app: &Snapshot) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str(&crate::build_info::prometheus());
        self.render_requests(&mut out);
        let gauges = [
            ("fleetgroups_groups", "Groups in all accounts.", app.groups),
            ("fleetgroups_users", "Users.", Some(app.users)),
            (
                "fleetgroups_failed_login_names",
                "userNames in the failed-login table.",
                Some(app.failed_login_names),
            ),
            (
                "fleetgroups_failed_login_addresses",
                "Client addresses in the failed-login table.",
                Some(app.failed_login_addresses),
            ),
            (
                "fleetgroups_store_bytes",
                "Bytes the store occupies on disk.",
                Some(app.store_bytes),
            ),
        ];
        // A value the store cannot read right now is left out rather than shown as 0.
        for (name, help, value) in gauges
            .into_iter()
            .filter_map(|(n, h, v)| v.map(|v| (n, h, v)))
        {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        render_connections(&mut out, &self.conns);
        render_budgets(&mut out, app);
        // What /readyz and the watchdog look at: writes are taken (no failed flush) and
        // a read answers. 0 pages someone before clients see 503s for long.
        let healthy = app.store_healthy;
        let _ = writeln!(
            out,
            "# HELP fleetgroups_store_healthy 1 while the store answers reads and takes writes, else 0.\n# TYPE fleetgroups_store_healthy gauge\nfleetgroups_store_healthy {}",
            u8::from(healthy)
        );
        let _ = writeln!(
            out,
            "# HELP fleetgroups_tokens Live (unexpired, unrevoked) bearer tokens.\n# TYPE fleetgroups_tokens gauge\nfleetgroups_tokens {}",
            app.live_tokens
        );
        process::render(&mut out);
        render_counters(&mut out, app);
        // 0 until a backup is known: `time() - …` is then huge and an alert fires.
        let _ = writeln!(
            out,
            "# HELP fleetgroups_backup_last_success_timestamp_seconds When the last backup of this data directory succeeded (Unix time; 0: none known).\n# TYPE fleetgroups_backup_last_success_timestamp_seconds gauge\nfleetgroups_backup_last_success_timestamp_seconds {}",
            app.backup_last_success_ms as f64 / 1e3
        );
        render_replication(&mut out, &self.replication, app.last_seq);
        render_office(&mut out, &self.office, app.office);
        out
    }

    /// Requests by route and status, and the latency histogram per route.
    fn render_requests(&self, out: &mut String) {
        out.push_str(
            "# HELP fleetgroups_requests_total HTTP requests answered, by route and status.\n",
        );
        out.push_str("# TYPE fleetgroups_requests_total counter\n");
        {
            let routes = lock(&self.routes);
            for (route, r) in routes.iter() {
                let route = label_value(route);
                for (status, n) in &r.statuses {
                    let _ = writeln!(
                        out,
                        "fleetgroups_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                    );
                }
            }
            out.push_str(
                "# HELP fleetgroups_request_duration_seconds Time from request head to response, by route.\n",
            );
            out.push_str("# TYPE fleetgroups_request_duration_seconds histogram\n");
            for (route, r) in routes.iter() {
                let route = label_value(route);
                for (n, upper) in r.buckets.iter().zip(BUCKETS) {
                    let _ = writeln!(
                        out,
                        "fleetgroups_request_duration_seconds_bucket{{route=\"{route}\",le=\"{upper}\"}} {n}"
                    );
                }
                let count = r.count;
                let _ = writeln!(
                    out,
                    "fleetgroups_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {count}"
                );
                let _ = writeln!(
                    out,
                    "fleetgroups_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                    r.sum_micros as f64 / 1e6
                );
                let _ = writeln!(
                    out,
                    "fleetgroups_request_duration_seconds_count{{route=\"{route}\"}} {count}"
                );
            }
        }
    }
}

/// The flush and dropped-log-line counters.
fn render_counters(out: &mut String, app: &Snapshot) {
    let secs = |micros: u64| (micros as f64 / 1e6).to_string();
    let counters = [
        (
            "fleetgroups_store_flushes_total",
            "Group-commit flushes (sled flush + fdatasync).",
            app.flushes.to_string(),
        ),
        (
            "fleetgroups_store_flush_waits_total",
            "Durable-write waits those flushes released.",
            app.flush_waits.to_string(),
        ),
        (
            "fleetgroups_store_flush_sled_seconds_total",
            "Time in sled's flush (log write, sync_file_range).",
            secs(app.flush_sled_micros),
        ),
        (
            "fleetgroups_store_flush_fsync_seconds_total",
            "Time in fdatasync of the store files.",
            secs(app.flush_fsync_micros),
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
}

/// The connection table's gauges and counters (`http/conns.rs`).
fn render_connections(out: &mut String, c: &ConnStats) {
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let _ = writeln!(
        out,
        "# HELP fleetgroups_connections_open Client connections open now.\n# TYPE fleetgroups_connections_open gauge\nfleetgroups_connections_open {}",
        load(&c.open)
    );
    let _ = writeln!(
        out,
        "# HELP fleetgroups_connections_max Most client connections served at once (limits.max_connections).\n# TYPE fleetgroups_connections_max gauge\nfleetgroups_connections_max {}",
        load(&c.max)
    );
    let _ = writeln!(
        out,
        "# HELP fleetgroups_connections_blocked Connections whose answer waits for the client to read it.\n# TYPE fleetgroups_connections_blocked gauge\nfleetgroups_connections_blocked {}",
        load(&c.blocked)
    );
    out.push_str("# HELP fleetgroups_connections_closed_total Connections the server closed, by reason.\n# TYPE fleetgroups_connections_closed_total counter\n");
    for (reason, n) in [
        ("write_timeout", &c.write_timeouts),
        ("slow_reader", &c.slow_readers),
        ("evicted_idle", &c.evicted_idle),
        ("evicted_stalled", &c.evicted_stalled),
    ] {
        let _ = writeln!(
            out,
            "fleetgroups_connections_closed_total{{reason=\"{reason}\"}} {}",
            load(n)
        );
    }
}

/// The byte budgets: size, use and refusals by budget. `in_use / bytes` near 1, or
/// refusals rising, says clients are being turned away (503 `server_busy`).
fn render_budgets(out: &mut String, app: &Snapshot) {
    let budgets = [("body", &app.bodies), ("answer", &app.answers)];
    for (name, help, value) in [
        (
            "fleetgroups_budget_bytes",
            "Size of a shared byte budget (limits.body_budget_bytes, limits.answer_budget_bytes).",
            (|b: &BudgetFigures| b.total) as fn(&BudgetFigures) -> u64,
        ),
        (
            "fleetgroups_budget_in_use_bytes",
            "Bytes of a budget held now (request bodies received or in use; answers not yet taken by their clients).",
            |b: &BudgetFigures| b.in_use,
        ),
        (
            "fleetgroups_budget_refused_total",
            "Requests refused with 503 server_busy because a budget was spent.",
            |b: &BudgetFigures| b.refused,
        ),
    ] {
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (budget, figures) in budgets {
            let _ = writeln!(out, "{name}{{budget=\"{budget}\"}} {}", value(figures));
        }
    }
}

/// A label value as the text format wants it: backslash, double quote and newline
/// escaped. The route patterns need none of it today; the format does.
fn label_value(v: &str) -> std::borrow::Cow<'_, str> {
    if v.contains(['\\', '"', '\n']) {
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
            .into()
    } else {
        v.into()
    }
}

/// The office-group metrics (docs/operations/many-gateways.md, "Office groups"): always present, since a restore
/// can bring office groups to a gateway without `[replication]`.
fn render_office(out: &mut String, stats: &OfficeStats, store: Option<(u64, u64, u64)>) {
    let mut gauges = Vec::new();
    if let Some((cursor, served, held)) = store {
        gauges.extend([
            (
                "fleetgroups_office_cursor",
                "The central office revision every change up to which is applied here.",
                cursor.to_string(),
            ),
            (
                "fleetgroups_office_groups",
                "Office groups this gateway serves.",
                served.to_string(),
            ),
            (
                "fleetgroups_office_conflicts",
                "Office changes held back by a conflict (a name taken locally, a quota, the device limit).",
                held.to_string(),
            ),
        ]);
    }
    gauges.extend([
        (
            "fleetgroups_office_pending_changes",
            "Central office changes for this gateway past the cursor, as the last pull saw them.",
            stats.pending.load(Ordering::Relaxed).to_string(),
        ),
        (
            "fleetgroups_office_last_pull_timestamp_seconds",
            "When an office pull last completed (Unix time; 0: not yet in this run).",
            format!(
                "{}",
                stats.last_pull_ms.load(Ordering::Relaxed) as f64 / 1e3
            ),
        ),
    ]);
    for (name, help, value) in gauges {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    }
}

/// The replication metrics (docs/operations/many-gateways.md "Metrics"), present only when `[replication]` is
/// configured.
fn render_replication(out: &mut String, r: &ReplicationStats, last: u64) {
    if !r.enabled.load(Ordering::Relaxed) {
        return;
    }
    let applied = r.applied_seq.load(Ordering::Relaxed);
    let gauges = [
        (
            "fleetgroups_replication_applied_seq",
            "The change seq the central database has applied (fleetgroups.gateways.applied_seq).",
            applied.to_string(),
        ),
        (
            "fleetgroups_replication_pending_changes",
            "Change seqs handed out here and not yet applied centrally.",
            last.saturating_sub(applied).to_string(),
        ),
        (
            "fleetgroups_replication_lag_seconds",
            "Age of the oldest change not yet applied centrally (0: caught up).",
            format!("{:.3}", r.lag_seconds(last)),
        ),
        (
            "fleetgroups_replication_last_success_timestamp_seconds",
            "When a batch or resync last committed centrally (Unix time; 0: not yet).",
            format!("{}", r.last_success_ms.load(Ordering::Relaxed) as f64 / 1e3),
        ),
    ];
    for (name, help, value) in gauges {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP fleetgroups_replication_errors_total Failed replication attempts, by kind (connect, refused, schema, apply, constraint, permission, heartbeat, prune, resync, store, office).\n# TYPE fleetgroups_replication_errors_total counter"
    );
    for (kind, n) in r.errors() {
        let _ = writeln!(
            out,
            "fleetgroups_replication_errors_total{{kind=\"{kind}\"}} {n}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP fleetgroups_replication_resyncs_total Times this gateway replaced its central rows with a snapshot.\n# TYPE fleetgroups_replication_resyncs_total counter\nfleetgroups_replication_resyncs_total {}",
        r.resyncs.load(Ordering::Relaxed)
    );
}
