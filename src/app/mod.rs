//! The running server's state, built once from a `Config` and shared by every request:
//! the store, the auth tables, usage counters and metrics. Also the first-start
//! bootstrap (user `admin` and its key file) and the background upkeep tasks (usage
//! persistence and failed-login expiry every second, purges of expired tokens,
//! idempotency records and old change-feed entries).

pub(crate) mod budget;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::app::budget::Budget;
use crate::auth::usage::Usage;
use crate::auth::user_manager::UserManager;
use crate::auth::Auth;
use crate::config::Config;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::store::{Store, StoreOptions, KEY_FILE};
use crate::time::Clock;

/// Shared state of one server.
pub struct App {
    pub config: Config,
    pub store: Store,
    pub auth: Auth,
    pub usage: Usage,
    pub metrics: Metrics,
    /// Bytes of request bodies held for clients (`limits.body_budget_bytes`).
    pub bodies: Budget,
    /// Bytes of answers waiting for their clients (`limits.answer_budget_bytes`).
    pub answers: Budget,
    /// When the last backup succeeded (ms since the epoch, 0: none known): set by
    /// backups through the admin socket, and at start by `serve` from the data
    /// directory's `backup::LAST_SUCCESS_FILE` (the app sits below the backup code).
    pub backup_last_success_ms: AtomicI64,
    /// The one source of the time outside the store: tests move it.
    pub clock: Clock,
    stopping: AtomicBool,
}

/// Why the server could not start.
#[derive(Debug)]
pub struct StartError {
    pub message: String,
    /// The data directory needs the operator (a damaged store, an interrupted restore,
    /// another format version): starting again cannot help, so `serve` exits 3 and the
    /// unit does not restart it (which would only run sled's recovery on the damaged
    /// files again and again).
    pub needs_operator: bool,
}

impl StartError {
    fn new(message: String) -> StartError {
        StartError {
            message,
            needs_operator: false,
        }
    }
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StartError {}

/// Store options from the configuration, on the system clock.
pub fn store_options(config: &Config) -> StoreOptions {
    StoreOptions {
        cache_bytes: config.storage.cache_mb.saturating_mul(1024 * 1024),
        durability: config.storage.durability,
        fail_flush_after: config.fault.fail_flush_after,
        restoring: false,
        max_devices: config.limits.max_devices_per_group,
        clock: Clock::system(),
        log: log_bounds(config),
    }
}

/// The write-ahead log's bounds from `[storage]`.
pub fn log_bounds(config: &Config) -> crate::store::LogBounds {
    let mb = |n: u64| n.saturating_mul(1024 * 1024);
    crate::store::LogBounds {
        segment_bytes: mb(config.storage.log_segment_mb),
        checkpoint_bytes: mb(config.storage.checkpoint_mb),
        checkpoint_every: std::time::Duration::from_secs(config.storage.checkpoint_secs),
    }
}

/// How long a starting server waits for a store lock held by someone else.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Opens the store on `clock`. A CLI command run while the server starts (its admin
/// socket is not up yet) opens the store itself and holds the lock for a moment; the
/// server waits for it, up to `LOCK_WAIT`, rather than exit and leave the gateway down.
/// A second server on the same directory still fails once the wait is over.
fn open_waiting(config: &Config, clock: &Clock) -> Result<Store, StartError> {
    let options = StoreOptions {
        clock: clock.clone(),
        ..store_options(config)
    };
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    let mut said = false;
    loop {
        match Store::open(&config.data_dir, &options) {
            Err(crate::store::OpenError::Locked(_)) if std::time::Instant::now() < deadline => {
                if !said {
                    tracing::info!(
                        data_dir = %config.data_dir.display(),
                        "the store is locked by another fleetgroups process (a CLI command?); waiting up to {} s",
                        LOCK_WAIT.as_secs()
                    );
                    said = true;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => {
                return other.map_err(|e| StartError {
                    needs_operator: matches!(
                        e,
                        crate::store::OpenError::Damaged { .. }
                            | crate::store::OpenError::Interrupted(_)
                            | crate::store::OpenError::Version { .. }
                    ),
                    message: e.to_string(),
                })
            }
        }
    }
}

impl App {
    /// Opens the store, creates the first user on a first start, loads auth and usage.
    pub fn open(config: Config) -> Result<App, StartError> {
        App::open_with_clock(config, Clock::system())
    }

    /// [`App::open`] on a given clock (tests pass a manual one).
    pub fn open_with_clock(config: Config, clock: Clock) -> Result<App, StartError> {
        let store = open_waiting(&config, &clock)?;
        bootstrap(&store, &config.data_dir, &clock)?;
        let auth = Auth::load(&store, &config.auth, clock.clone())
            .map_err(|e| StartError::new(format!("loading users: {e:?}")))?;
        let usage = Usage::load(
            store
                .usage_records()
                .map_err(|e| StartError::new(format!("loading usage counters: {}", e.chain())))?,
        );
        Ok(App {
            bodies: Budget::new(config.limits.body_budget_bytes),
            answers: Budget::new(config.limits.answer_budget_bytes),
            config,
            store,
            auth,
            usage,
            metrics: Metrics::new(clock.clone()),
            backup_last_success_ms: AtomicI64::new(0),
            clock,
            stopping: AtomicBool::new(false),
        })
    }

    /// Whether shutdown has begun (`/readyz` answers 503).
    /// The local limits an office group must fit (`store::office`), as a local write.
    pub fn office_limits(&self) -> crate::store::office::OfficeLimits {
        crate::store::office::OfficeLimits {
            max_groups: self.config.limits.max_groups_per_account,
            max_devices: self.config.limits.max_devices_per_group,
        }
    }

    /// After a local write that may have freed a name or a quota slot: applies the
    /// account's held office changes that fit now (`Store::retry_office_held`), and
    /// makes them durable. A failure is logged: the next pull tries again.
    pub async fn retry_office_held(&self, account: &str) {
        match self
            .store
            .retry_office_held(Some(account), self.office_limits())
        {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(
                    account,
                    applied = n,
                    "office groups held by a conflict are applied now"
                );
                if let Err(e) = self.store.durable().await {
                    tracing::warn!(error = %e.chain(), "making applied office groups durable");
                }
            }
            Err(e) => tracing::warn!(error = %e.chain(), "retrying held office groups"),
        }
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// Marks the start of shutdown.
    pub fn begin_stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Whether the store answers right now: a point read comes back without error.
    /// Cheap enough for every watchdog tick; blocking, so call it off the async
    /// workers (the caller's timeout catches a read that hangs).
    ///
    /// A store that refuses writes (`!store.healthy()`, e.g. the disk is full) still
    /// answers: the server keeps serving reads then and `/readyz` says 503. Withholding
    /// the watchdog for it would make systemd restart a server that works as designed,
    /// and on a full disk the restarts can fail and leave no server at all.
    pub fn store_answers_reads(&self) -> bool {
        self.store.probe().is_ok()
    }

    /// The values `/metrics` shows that the store, auth and backups own, read now.
    pub fn metrics_snapshot(&self) -> crate::metrics::Snapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let flush = self.store.flush_stats();
        let (failed_names, failed_addresses) = self.auth.failed_login_entries();
        crate::metrics::Snapshot {
            groups: self.store.group_count(),
            users: self.auth.user_count() as u64,
            failed_login_names: failed_names as u64,
            failed_login_addresses: failed_addresses as u64,
            store_bytes: self.store.size_on_disk(),
            store_healthy: self.store.healthy() && self.store_answers_reads(),
            live_tokens: self.auth.live_tokens() as u64,
            flushes: load(&flush.flushes),
            flush_waits: load(&flush.tickets),
            flush_sled_micros: load(&flush.sled_micros),
            flush_fsync_micros: load(&flush.sync_micros),
            checkpoints: load(&flush.checkpoints),
            backup_last_success_ms: self.backup_last_success_ms.load(Ordering::Relaxed),
            last_seq: self.store.last_seq(),
            office: self.store.office_figures().ok(),
            bodies: figures(&self.bodies),
            answers: figures(&self.answers),
        }
    }

    /// Writes changed usage counters to the store.
    pub fn persist_usage(&self) {
        // A failed store takes no writes (store/space.rs); the counters stay in
        // memory, as docs/api/http.md "Usage counters and limits" allows.
        if !self.store.healthy() {
            return;
        }
        let dirty = self.usage.take_dirty();
        if dirty.is_empty() {
            return;
        }
        if let Err(e) = self.store.put_usage(&dirty) {
            tracing::warn!(error = %e.chain(), "could not persist usage counters; will retry");
            self.usage.mark_dirty(&dirty);
        }
    }

    /// Final flush at shutdown: counters, then the store.
    pub fn close(&self) -> Result<(), crate::store::Error> {
        self.persist_usage();
        self.store.close()
    }

    /// Every ten seconds: the change feed back within `retention.changes_max_mb`.
    pub fn purge_to_size(&self) {
        let max = self.config.retention.changes_max_mb.saturating_mul(1 << 20);
        if let Err(e) = self.store.purge_to_size(max) {
            tracing::warn!(error = %e.chain(), "change-feed size purge failed");
        }
    }

    /// Hourly upkeep: expired tokens, idempotency records and old change entries.
    pub fn purge(&self) {
        let now = self.clock.wall_ms();
        let days = self.config.retention.changes_days.min(36_500);
        match self.store.purge(Duration::from_secs(days * 86_400), now) {
            Ok(p) if p.changes + p.idempotency > 0 => tracing::info!(
                changes = p.changes,
                idempotency_records = p.idempotency,
                "purged old change-feed entries and idempotency records"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e.chain(), "purge failed"),
        }
        if let Err(e) = self.auth.purge_expired(&self.store) {
            tracing::warn!(error = ?e, "token purge failed");
        }
    }
}

fn figures(b: &Budget) -> crate::metrics::BudgetFigures {
    crate::metrics::BudgetFigures {
        total: b.total(),
        in_use: b.in_use(),
        refused: b.refused(),
    }
}

/// Spawns the background upkeep tasks; they end when `app` is the last reference or
/// shutdown begins.
pub fn spawn_upkeep(app: &Arc<App>) {
    let weak = Arc::downgrade(app);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seconds = 0u64;
        let mut warned = false;
        loop {
            tick.tick().await;
            let Some(app) = weak.upgrade() else { return };
            if app.is_stopping() {
                return;
            }
            // In memory and cheap: failed-login entries age out here, not only when a
            // new failure needs room.
            app.auth.expire_failed_logins();
            // sled calls may block briefly; keep them off the async workers.
            let a = Arc::clone(&app);
            let purge = seconds % 3600 == 10;
            let size_check = seconds % 10 == 5;
            let recorded = tokio::task::spawn_blocking(move || {
                a.persist_usage();
                let recorded = a.store.record_highwater();
                if purge {
                    a.purge();
                } else if size_check {
                    a.purge_to_size();
                }
                recorded
            })
            .await;
            // One line when recording starts failing (a full or read-only disk), not
            // one a second.
            match recorded {
                Ok(Err(e)) if !warned => {
                    tracing::warn!(error = %e.chain(), "cannot record the store's high-water marks");
                    warned = true;
                }
                Ok(Ok(())) => warned = false,
                _ => {}
            }
            seconds += 1;
        }
    });
}

/// The user a first start creates, whose key goes to [`KEY_FILE`].
pub const FIRST_USER: &str = "admin";

/// On a first start (no user at all), creates `admin` and writes its key to
/// `<data_dir>/initial-api-key` (0600). Logs the file's path, never the key.
fn bootstrap(store: &Store, data_dir: &Path, clock: &Clock) -> Result<(), StartError> {
    let users = store
        .users()
        .map_err(|e| StartError::new(format!("reading users: {}", e.chain())))?;
    if !users.is_empty() {
        return Ok(());
    }
    let key = UserManager::offline(store, clock.clone())
        .add(
            FIRST_USER,
            "default",
            crate::store::users::Role::Write,
            None,
        )
        .map_err(|e| StartError::new(format!("creating the first user: {e}")))?
        .key;
    let path = data_dir.join(KEY_FILE);
    crate::perms::write_private(&path, format!("{key}\n").as_bytes())
        .map_err(|e| StartError::new(format!("writing {}: {e}", path.display())))?;
    tracing::info!(path = %path.display(), "first start: created user admin; its API key is in this file (mode 0600)");
    Ok(())
}

static REQUEST_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A new request ID: a per-process random prefix and a counter (unique, cheap).
pub fn new_request_id() -> String {
    use std::sync::OnceLock;
    static PREFIX: OnceLock<u32> = OnceLock::new();
    let prefix = PREFIX.get_or_init(rand::random::<u32>);
    let n = REQUEST_COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix:08x}-{n:x}")
}

impl From<StartError> for ApiError {
    fn from(e: StartError) -> ApiError {
        ApiError::Internal(e.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_app_runs_on_the_clock_it_is_given() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            data_dir: dir.path().join("data"),
            ..Config::default()
        };
        let start = 1_796_000_000_000;
        let clock = Clock::manual(start);
        let app = App::open_with_clock(config, clock.clone()).unwrap();
        // The first user is dated by it...
        let admin = app.store.user("admin").unwrap().unwrap();
        assert_eq!((admin.created, admin.key_created), (start, start));
        // ...and it moves only when the test says so.
        clock.advance(Duration::from_secs(3));
        assert_eq!(app.clock.wall_ms(), start + 3_000);
        assert!(app.store_answers_reads());
        let snapshot = app.metrics_snapshot();
        assert_eq!((snapshot.users, snapshot.live_tokens), (1, 0));
        assert!(snapshot.store_healthy);
        app.close().unwrap();
    }
}
