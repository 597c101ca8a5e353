//! Central replication's figures (docs/operations/many-gateways.md "Metrics"): written by the replication task
//! (`replication.rs`), read at scrape time. They live here, beside `ConnStats`, so that
//! the app holds them without depending on the replication task.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Error kinds of `fleetgroups_replication_errors_total{kind}`.
/// `refused`: no connection slot (too many connections, or the role's limit);
/// `constraint`, `permission`: the centre refuses a statement until fixed there;
/// `schema`: creating or upgrading the schema, or one that does not match.
pub const ERROR_KINDS: [&str; 11] = [
    "connect",
    "refused",
    "schema",
    "apply",
    "constraint",
    "permission",
    "heartbeat",
    "prune",
    "resync",
    "store",
    "office",
];

/// What `/metrics` shows (docs/operations/many-gateways.md "Metrics").
#[derive(Debug, Default)]
pub struct ReplicationStats {
    /// Dates the marks and the last success (the app's clock).
    clock: crate::time::Clock,
    pub enabled: std::sync::atomic::AtomicBool,
    /// The `applied_seq` the centre confirmed last.
    pub applied_seq: AtomicU64,
    /// When a batch or resync last committed (ms since the epoch; 0: never).
    pub last_success_ms: AtomicI64,
    pub resyncs: AtomicU64,
    errors: [AtomicU64; ERROR_KINDS.len()],
    /// (highest seq seen, when it was first seen), oldest first, only seqs not yet
    /// applied centrally: the front dates the oldest pending change (monotonic clock).
    marks: Mutex<VecDeque<(u64, Instant)>>,
}

/// At most this many marks; past it new ones wait (the front, which dates the lag,
/// is kept).
const MAX_MARKS: usize = 4096;

impl ReplicationStats {
    /// Empty figures on `clock`.
    pub fn new(clock: crate::time::Clock) -> ReplicationStats {
        ReplicationStats {
            clock,
            ..ReplicationStats::default()
        }
    }

    /// Counts a failed attempt of `kind` (one of [`ERROR_KINDS`]).
    pub fn error(&self, kind: &str) {
        if let Some(i) = ERROR_KINDS.iter().position(|k| *k == kind) {
            self.errors[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `fleetgroups_replication_errors_total` per kind.
    pub fn errors(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        ERROR_KINDS
            .iter()
            .zip(&self.errors)
            .map(|(k, n)| (*k, n.load(Ordering::Relaxed)))
    }

    /// Seconds the oldest change not yet applied centrally has waited since it was
    /// first seen (0: caught up).
    pub fn lag_seconds(&self, last_seq: u64) -> f64 {
        self.observe(last_seq);
        if last_seq <= self.applied_seq.load(Ordering::Relaxed) {
            return 0.0;
        }
        crate::sync::lock(&self.marks)
            .front()
            .map_or(0.0, |(_, t)| {
                self.clock
                    .mono()
                    .saturating_duration_since(*t)
                    .as_secs_f64()
            })
    }

    /// Notes the store's highest seq now, and forgets what the centre has applied.
    pub fn observe(&self, last_seq: u64) {
        let applied = self.applied_seq.load(Ordering::Relaxed);
        let mut marks = crate::sync::lock(&self.marks);
        while marks.front().is_some_and(|(s, _)| *s <= applied) {
            marks.pop_front();
        }
        if last_seq > applied
            && marks.back().map_or(true, |(s, _)| *s < last_seq)
            && marks.len() < MAX_MARKS
        {
            marks.push_back((last_seq, self.clock.mono()));
        }
    }

    /// A batch or resync committed centrally up to `seq`.
    pub fn applied(&self, seq: u64, last_seq: u64) {
        self.applied_seq.store(seq, Ordering::Relaxed);
        self.last_success_ms
            .store(self.clock.wall_ms(), Ordering::Relaxed);
        self.observe(last_seq);
    }
}
