//! The life of a replicator. Offline, it waits (without polling: the store's commit
//! progress wakes it) until there is something to ship or a heartbeat is due; then it
//! connects, brings the schema up to date once per process, ships until caught up,
//! runs the periodic steps, and waits for more. After `idle_disconnect_secs` without a
//! batch it closes the connection, so a fleet larger than the centre's connection
//! slots takes turns (a connection opened only for a heartbeat closes right after it).
//! A gateway that keeps writing gives its connection back after `MAX_HOLD` (between
//! batches) and takes one again after a short random pause, so a refused gateway gets
//! its turn even while the holders stay busy.
//!
//! Failures back off exponentially with full jitter up to 30 s, and the backoff resets
//! only after a whole cycle succeeded (everything shipped committed, the periodic steps
//! done): a persistent error (a constraint, a permission, a schema that does not
//! match) is retried at that pace for ever, never in a hot loop, and logged once per
//! state change, not once per retry.
//!
//! The periodic steps live in `Connected::periodic`: the heartbeat (`heartbeat_secs`,
//! jittered; last seen, head seq, version, revision) and retention of central changes
//! (one gateway at a time fleet-wide, under an advisory lock), and the office-groups
//! pull (`crate::replication::office`: at every connect, then every `pull_secs`, jittered; a due
//! pull is a reason to connect). A failing pull is counted and retried on its own
//! backoff, and ends the session only when the connection is gone: office groups never
//! hold up the push of the gateway's own changes.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::watch;
use tokio::time::{sleep, sleep_until, Instant};
use tokio_postgres::types::Type;
use tokio_postgres::Client;

use super::settings::Conn;
use super::stream::{self, Shipped};
use super::{pg_failure, schema, to_i64, Failure, Settings};
use crate::app::App;

/// First backoff ceiling; it doubles per failure up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// Longest wait between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Longest a busy gateway keeps its connection before giving it back (after a batch,
/// never in the middle of one), so gateways refused a slot get their turn even while
/// the holders keep writing.
const MAX_HOLD: Duration = Duration::from_secs(60);

/// Longest pause before a gateway that gave its slot back takes one again (uniform).
const TURN_PAUSE: Duration = Duration::from_secs(5);

/// Refusals of a slot in a row after which a connected gateway says so.
const REFUSALS_NEWS: u32 = 12;

/// How often the fleet prunes central changes (whichever gateway comes first).
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Central changes deleted per transaction while pruning.
const PRUNE_BATCH: i64 = 5000;

/// Key of the advisory lock under which one gateway at a time prunes.
const PRUNE_LOCK: i64 = 0x666c_6565_7470_7275; // "fleetpru"

/// Exponential backoff with full jitter: each wait is uniform in [0, ceiling].
#[derive(Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let ceiling = FIRST_BACKOFF
            .saturating_mul(1 << self.failures.min(16))
            .min(MAX_BACKOFF);
        self.failures = self.failures.saturating_add(1);
        ceiling.mul_f64(rand::thread_rng().gen::<f64>())
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

/// `d` spread by ±25 %, so a fleet started together does not report together.
fn jittered(d: Duration) -> Duration {
    d.mul_f64(rand::thread_rng().gen_range(0.75..1.25))
}

/// Sleeps until `t`; for ever when None.
async fn until(t: Option<Instant>) {
    match t {
        Some(t) => sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// What the operator was last told (one log line per state change).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Unknown,
    Up,
    Down(&'static str),
}

/// When each periodic step is next due.
struct Timers {
    heartbeat: Instant,
    prune: Instant,
    office: Instant,
}

/// How a connected session ended without a failure.
enum End {
    Stopped,
    /// `idle_disconnect_secs` passed without a batch: the slot is given back.
    Idle,
    /// Held for `MAX_HOLD`: the slot is given back for a moment, for the others.
    Turn,
}

struct Replicator {
    app: Arc<App>,
    s: Settings,
    store_id: String,
    link: Link,
    backoff: Backoff,
    /// Whether the centre's schema was found current in this process.
    schema_ok: bool,
    /// Refusals of a slot in a row (taking turns is normal; a long run is news).
    refusals: u32,
    timers: Timers,
    /// The office-groups pull: what it logged and reported, across sessions.
    office: crate::replication::office::Puller,
    /// The pull's own backoff, and whether it is failing (one log line per change).
    office_backoff: Backoff,
    office_failing: bool,
}

/// Runs until `stop` turns true.
pub(super) async fn run(app: Arc<App>, s: Settings, mut stop: watch::Receiver<bool>) {
    let now = Instant::now();
    let mut r = Replicator {
        store_id: app.store.store_id().to_string(),
        app,
        s,
        link: Link::Unknown,
        backoff: Backoff::default(),
        schema_ok: false,
        refusals: 0,
        timers: Timers {
            heartbeat: now,
            prune: now,
            office: now,
        },
        office: crate::replication::office::Puller::default(),
        office_backoff: Backoff::default(),
        office_failing: false,
    };
    loop {
        if r.link != Link::Unknown {
            tokio::select! {
                () = r.reason_to_connect() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
        let outcome = tokio::select! {
            o = r.session(stop.clone()) => o,
            _ = stop.wait_for(|s| *s) => return,
        };
        match outcome {
            Ok(End::Stopped) => return,
            Ok(End::Idle) => {
                tracing::debug!("replication: idle; closed the central connection");
            }
            Ok(End::Turn) => {
                tracing::debug!(
                    "replication: held the connection long enough; giving others a turn"
                );
                tokio::select! {
                    () = sleep(TURN_PAUSE.mul_f64(rand::thread_rng().gen::<f64>())) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
            Err(f) => {
                r.failed(&f);
                tokio::select! {
                    () = sleep(r.backoff.next()) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        }
    }
}

impl Replicator {
    /// Returns when there is a reason to be connected: changes the centre lacks, a
    /// heartbeat due, or a connection that is to be kept open.
    async fn reason_to_connect(&self) {
        if self.s.idle_disconnect.is_none() {
            return;
        }
        let applied = self
            .app
            .metrics
            .replication
            .applied_seq
            .load(Ordering::Relaxed);
        tokio::select! {
            () = self.app.store.wait_past(applied) => {}
            () = sleep_until(self.timers.heartbeat) => {}
            () = sleep_until(self.timers.office) => {}
        }
    }

    /// A connection to the centre, its schema brought up to date on the first one.
    async fn connect(&mut self) -> Result<Conn, Failure> {
        let mut conn = self
            .s
            .connect()
            .await
            .map_err(|e| pg_failure(&self.s, "connect", &e))?;
        if !self.schema_ok {
            schema::ensure(&mut conn.client, &self.s).await?;
            self.schema_ok = true;
        }
        Ok(conn)
    }

    /// One connection's life: ship, run the periodic steps, wait for more; until idle,
    /// stopped, or failed.
    async fn session(&mut self, mut stop: watch::Receiver<bool>) -> Result<End, Failure> {
        let mut conn = self.connect().await?;
        // Office groups are pulled whenever connected: at once, then every pull_secs.
        self.timers.office = Instant::now();
        self.office.reconnected();
        let mut last_batch: Option<Instant> = None;
        let turn_ends = self.s.idle_disconnect.map(|_| Instant::now() + MAX_HOLD);
        loop {
            let Some(cursor) =
                stream::start_cursor(&self.app, &self.s, &mut conn.client, &self.store_id).await?
            else {
                continue;
            };
            let cursor =
                match stream::ship(&self.app, &self.s, &mut conn.client, &self.store_id, cursor)
                    .await?
                {
                    Shipped::LookAgain => continue,
                    Shipped::CaughtUp { cursor, batches } => {
                        if batches > 0 {
                            last_batch = Some(Instant::now());
                        }
                        cursor
                    }
                };
            self.periodic(&mut conn.client).await?;
            self.healthy(cursor);
            let idle_until = self
                .s
                .idle_disconnect
                .map(|d| last_batch.map_or_else(Instant::now, |t| t + d));
            let idle = until(idle_until);
            let turn = until(turn_ends);
            let next_step = self
                .timers
                .heartbeat
                .min(self.timers.prune)
                .min(self.timers.office);
            tokio::select! {
                () = self.app.store.wait_past(cursor) => {}
                () = sleep_until(next_step) => {}
                () = idle => return Ok(End::Idle),
                () = turn => return Ok(End::Turn),
                why = &mut conn.ended => {
                    return Err(Failure {
                        kind: "connect",
                        message: self.s.scrub(why.unwrap_or_else(|_| "the connection ended".into())),
                    });
                }
                _ = stop.wait_for(|s| *s) => return Ok(End::Stopped),
            }
        }
    }

    /// The steps that run on a timer while connected.
    async fn periodic(&mut self, client: &mut Client) -> Result<(), Failure> {
        let now = Instant::now();
        if now >= self.timers.office {
            self.pull_office(client).await?;
        }
        if now >= self.timers.heartbeat {
            self.heartbeat(client).await?;
            self.timers.heartbeat = now + jittered(self.s.heartbeat);
        }
        if now >= self.timers.prune {
            self.prune(client).await?;
            self.timers.prune = now + jittered(PRUNE_EVERY);
        }
        Ok(())
    }

    /// One office-groups pull round (`office::Puller::round`). A failure is counted,
    /// logged once per state change and tried again after the pull's own backoff
    /// (never later than `pull_secs`); it fails the session only when the connection
    /// is gone.
    async fn pull_office(&mut self, client: &mut Client) -> Result<(), Failure> {
        match self
            .office
            .round(&self.app, client, &self.s.gateway_id)
            .await
        {
            Ok(_) => {
                self.timers.office = Instant::now() + jittered(self.s.pull);
                self.office_backoff.reset();
                if self.office_failing {
                    tracing::info!("replication: office groups are pulled again");
                    self.office_failing = false;
                }
                Ok(())
            }
            Err(e) => {
                let message = self.s.scrub(e.to_string());
                self.app.metrics.replication.error("office");
                self.office.reconnected();
                let wait = self.office_backoff.next().max(FIRST_BACKOFF / 5);
                self.timers.office = Instant::now() + wait.min(self.s.pull);
                if client.is_closed() {
                    return Err(Failure {
                        kind: "connect",
                        message,
                    });
                }
                if !self.office_failing {
                    tracing::warn!(error = %message, "replication: the office-groups pull fails; retrying with backoff");
                    self.office_failing = true;
                }
                Ok(())
            }
        }
    }

    /// Tells the centre this gateway is alive: when, its own head seq, its build, and
    /// how often it reports (the status view's staleness threshold).
    async fn heartbeat(&self, client: &Client) -> Result<(), Failure> {
        let head = to_i64(self.app.store.last_seq());
        let every = i32::try_from(self.s.heartbeat.as_secs()).unwrap_or(i32::MAX);
        client
            .execute_typed(
                "UPDATE fleetgroups.gateways SET last_seen_at = now(), head_seq = $2,
                     version = $3, revision = $4, heartbeat_secs = $5
                 WHERE gateway_id = $1",
                &[
                    (&self.s.gateway_id, Type::TEXT),
                    (&head, Type::INT8),
                    (&crate::build_info::VERSION, Type::TEXT),
                    (&crate::build_info::REVISION, Type::TEXT),
                    (&every, Type::INT4),
                ],
            )
            .await
            .map_err(|e| pg_failure(&self.s, "heartbeat", &e))?;
        Ok(())
    }

    /// Deletes central changes older than `central_changes_days`, in batches, when no
    /// other gateway has done so within `PRUNE_EVERY` (`fleetgroups.maintenance`) and
    /// none is doing so now (a transaction-scoped advisory lock, taken without waiting).
    async fn prune(&self, client: &mut Client) -> Result<(), Failure> {
        let days = i32::try_from(self.s.central_changes_days).unwrap_or(i32::MAX);
        if days == 0 {
            return Ok(());
        }
        let f = |e: tokio_postgres::Error| pg_failure(&self.s, "prune", &e);
        let mut pruned = 0u64;
        for round in 0..1000 {
            let tx = client.transaction().await.map_err(f)?;
            let locked: bool = tx
                .query_typed_one(
                    "SELECT pg_try_advisory_xact_lock($1)",
                    &[(&PRUNE_LOCK, Type::INT8)],
                )
                .await
                .map_err(f)?
                .get(0);
            if !locked {
                break;
            }
            if round == 0 && !claim_prune(&tx).await.map_err(f)? {
                break;
            }
            let n = tx
                .execute_typed(
                    "DELETE FROM fleetgroups.changes WHERE ctid = ANY(ARRAY(
                         SELECT ctid FROM fleetgroups.changes
                          WHERE time < now() - make_interval(days => $1) LIMIT $2))",
                    &[(&days, Type::INT4), (&PRUNE_BATCH, Type::INT8)],
                )
                .await
                .map_err(f)?;
            tx.commit().await.map_err(f)?;
            pruned += n;
            if n < PRUNE_BATCH.unsigned_abs() {
                break;
            }
        }
        if pruned > 0 {
            tracing::info!(
                pruned,
                days,
                "replication: pruned central changes older than central_changes_days"
            );
        }
        Ok(())
    }

    /// A whole cycle succeeded: the backoff starts over, and a recovery is told once.
    fn healthy(&mut self, applied_seq: u64) {
        self.backoff.reset();
        self.refusals = 0;
        if self.link != Link::Up {
            tracing::info!(
                gateway_id = %self.s.gateway_id,
                applied_seq,
                "replication: connected to the central database"
            );
            self.link = Link::Up;
        }
    }

    /// Counts a failure, and logs it when it is news.
    fn failed(&mut self, f: &Failure) {
        self.app.metrics.replication.error(f.kind);
        if f.kind == "schema" {
            // Check (and upgrade) the schema again at the next connection.
            self.schema_ok = false;
        }
        if f.kind == "refused" {
            self.refusals += 1;
        }
        // A connected gateway refused a slot later is taking turns, not news, until
        // the refusals run long (about five minutes at the backoff's ceiling).
        let turns = f.kind == "refused" && self.link == Link::Up && self.refusals < REFUSALS_NEWS;
        if self.link == Link::Down(f.kind) || turns {
            tracing::debug!(kind = f.kind, error = %f.message, "replication: attempt failed");
            return;
        }
        let what = if f.persistent() {
            "replication: the central database refuses this gateway's changes until it is fixed there"
        } else if f.kind == "refused" {
            "replication: the central database has no connection slot for this gateway"
        } else if self.link == Link::Up {
            "replication: lost the central database"
        } else {
            "replication: cannot reach the central database"
        };
        tracing::warn!(
            gateway_id = %self.s.gateway_id,
            kind = f.kind,
            error = %f.message,
            "{what}; retrying with backoff up to 30 s"
        );
        self.link = Link::Down(f.kind);
    }
}

/// Claims this period's prune in `fleetgroups.maintenance`: false when another gateway
/// pruned within `PRUNE_EVERY`.
async fn claim_prune(tx: &tokio_postgres::Transaction<'_>) -> Result<bool, tokio_postgres::Error> {
    let period = PRUNE_EVERY.as_secs_f64();
    let due = tx
        .query_typed_opt(
            "INSERT INTO fleetgroups.maintenance AS m (job, last_run)
             VALUES ('prune_changes', now())
             ON CONFLICT (job) DO UPDATE SET last_run = now()
             WHERE m.last_run < now() - make_interval(secs => $1)
             RETURNING 1",
            &[(&period, Type::FLOAT8)],
        )
        .await?;
    Ok(due.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_full_jitter_under_a_doubling_ceiling_capped_at_30_s() {
        let mut b = Backoff::default();
        for failure in 0..20u32 {
            let ceiling = FIRST_BACKOFF
                .saturating_mul(1 << failure.min(16))
                .min(MAX_BACKOFF);
            let d = b.next();
            assert!(d <= ceiling, "failure {failure}: {d:?} > {ceiling:?}");
        }
        // Capped: many waits at the ceiling spread over [0, 30 s], not bunched at 30.
        let waits: Vec<Duration> = (0..200).map(|_| b.next()).collect();
        assert!(waits.iter().all(|d| *d <= MAX_BACKOFF));
        assert!(waits.iter().any(|d| *d < MAX_BACKOFF / 4));
        assert!(waits.iter().any(|d| *d > MAX_BACKOFF * 3 / 4));
        b.reset();
        assert!(b.next() <= FIRST_BACKOFF);
    }
}
