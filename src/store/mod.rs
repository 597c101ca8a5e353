//! The embedded store: the only module that touches sled. It exposes domain operations
//! (create a group, replace it, list an account's groups, save a user …) with typed
//! inputs, and makes every change durable before it is acknowledged.
//!
//! Every kind of data lives in one sled tree as key spaces (`space.rs`: groups, the
//! name and device indexes, the change feed and its records, idempotency records,
//! users, tokens, usage counters, meta), so a change to several of them is one write.
//!
//! **Log first, apply after** (`commit.rs`): a change is one record in the write-ahead
//! log (`wal.rs`); a group of them is appended and `fdatasync`ed once, and only then is
//! the change visible and acknowledged. sled is brought up to the log in merged batches
//! and flushed by the applier, off the writers' path; what lies between the log and sled is read from
//! the memtable (`memtable.rs`). An open replays what the log holds past the last
//! checkpoint (`replay.rs`).
//!
//! All group and user writers take one mutex (`writer`) for the read-check-write step,
//! so the uniqueness check, the `If-Match` check and the submit to the log are one
//! atomic step, IDs come from an in-memory sequence, and nothing has to retry. The mutex
//! is held only for in-memory work; the fsync happens after it is released, shared.
//!
//! Visible means durable: a change is invisible to readers until the log has it; a
//! change whose append failed never becomes visible, with nothing to undo. ID sequences
//! are never taken back: a skipped number costs nothing, a reused one could confuse a
//! reader (`highwater.rs`).

mod changes;
mod check;
mod delta;
mod disk;
mod error;
pub(crate) mod export;
pub(crate) mod feed;
pub(crate) mod groups;
mod history;
pub(crate) mod idempotency;
mod keys;
pub(crate) mod office;
mod pieces;
mod plan;
mod retention;
mod space;
pub(crate) mod users;
mod value;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use crate::config::Durability;
use crate::sync::lock;
use crate::time::Clock;
pub use commit::sync_dir;
use commit::{Engine, SyncTarget};
use disk::{commit, guard, highwater, memtable, replay, seal};
pub use error::Error;
pub use space::Kind;
use space::Space;

/// The store format this binary reads and writes.
/// 1: a sled tree per kind of data, a transaction per change. 2: one tree of key
/// spaces (`space.rs`), one batch per change. 3: large device lists in pieces
/// (`pieces.rs`). 4: a write-ahead log in front of sled (`wal.rs`, `commit.rs`).
pub const FORMAT_VERSION: u64 = 4;

/// Older formats this binary also opens, and upgrades by writing its own version:
/// a format-2 store is a format-3 store with no group in pieces, and a format-3 store
/// is a format-4 store whose log is empty (sled held everything it acknowledged).
/// After the upgrade an older binary refuses the store (it would not replay the log).
const UPGRADES_FROM: &[u64] = &[2, 3];

/// The write-ahead log's directory inside the store directory.
pub const WAL_DIR: &str = "wal";

/// Whether this binary opens a store of format `v`.
fn opens(v: u64) -> bool {
    v == FORMAT_VERSION || UPGRADES_FROM.contains(&v)
}

const META_FORMAT: &[u8] = b"format_version";
/// The plain file in the store directory that repeats the format version (decimal).
pub const FORMAT_MARKER: &str = "format_version";
const META_NEXT_GROUP: &[u8] = b"next_group";
const META_NEXT_CHANGE: &[u8] = b"next_change";
/// The store's identity (`store_id`): random, made when the store is created; a
/// restore creates a new store and so a new one.
const META_STORE_ID: &[u8] = b"store_id";
/// The highest change-feed `seq` the retention purge may have removed (u64; absent: 0).
/// Written before the purge removes anything (`changes.rs`).
const META_PURGED_THROUGH: &[u8] = b"purged_through";
/// Bytes the change feed takes (keys and values of its `c` and `h` entries), kept in
/// the same batch as every change and purge; what `retention.changes_max_mb` bounds.
const META_FEED_BYTES: &[u8] = b"feed_bytes";
/// The name rules the name index was built under: absent for `to_lowercase`, 2 for
/// NFC + full case folding (`names.rs`).
const META_NAME_RULES: &[u8] = b"name_rules";
const NAME_RULES: u64 = 2;

/// A new random store identity: 128 bits as 32 lowercase hex digits.
fn new_store_id() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Why the store could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// Another process holds the store.
    Locked(PathBuf),
    /// The store was written by a different format version (as found: a number, or
    /// the text that is not one).
    Version { found: String, path: PathBuf },
    /// A `restore` into this directory did not finish.
    Interrupted(PathBuf),
    /// The directory has held a store, and what is there now has lost data.
    Damaged { path: PathBuf, what: String },
    /// Anything else (permissions, corruption …).
    Other(String),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Locked(p) => write!(
                f,
                "the data directory {} is in use by another fleetgroups process (the store is locked); stop it first or choose another --data-dir",
                p.display()
            ),
            OpenError::Version { found, path } => write!(
                f,
                "the store in {} has format version {found}, but this binary reads version {FORMAT_VERSION}; nothing was changed. Use the matching binary, or backup with it and restore with this one",
                path.display()
            ),
            OpenError::Interrupted(p) => write!(
                f,
                "restore was interrupted: remove {} and restore again (nothing was changed)",
                p.display()
            ),
            OpenError::Damaged { path, what } => write!(
                f,
                "the store in {} is damaged: {what}. It has held a store, so it is not taken for a first start, and nothing was changed. Restore the last backup into an empty directory (fleetgroups --data-dir NEW restore FILE) and start on that",
                path.display()
            ),
            OpenError::Other(e) => write!(f, "cannot open the store: {e}"),
        }
    }
}

impl std::error::Error for OpenError {}

/// Store-level options taken from the configuration.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub cache_bytes: u64,
    pub durability: Durability,
    /// Test-only fault injection (see `config::FaultInjection`): the flusher reports
    /// failure after this many successful flushes.
    pub fail_flush_after: Option<u64>,
    /// Set by `restore` only: the directory carries its in-progress marker.
    pub restoring: bool,
    /// `limits.max_devices_per_group`: what `restore` holds each group to, as a live
    /// write would.
    pub max_devices: usize,
    /// The wall clock that dates groups and change records (the server's `App::clock`,
    /// so a test can move it).
    pub clock: Clock,
    /// The write-ahead log's segment size and checkpoint bounds.
    pub log: LogBounds,
}

/// The write-ahead log's sizes (`[storage]` `log_segment_mb`, `checkpoint_mb`,
/// `checkpoint_secs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogBounds {
    /// One segment file's size (preallocated).
    pub segment_bytes: u64,
    /// A checkpoint runs once this much log was written since the last one: the most a
    /// replay after a crash reads.
    pub checkpoint_bytes: u64,
    /// … or once this long has passed with anything written since.
    pub checkpoint_every: std::time::Duration,
}

impl Default for LogBounds {
    fn default() -> LogBounds {
        LogBounds {
            segment_bytes: 16 << 20,
            checkpoint_bytes: 64 << 20,
            checkpoint_every: std::time::Duration::from_secs(30),
        }
    }
}

/// The first start's key file in the data directory (`app.rs` writes it). It is here
/// because the store reads it too: a directory that has it has held a store
/// (`check_not_lost`).
pub const KEY_FILE: &str = "initial-api-key";

/// The file `restore` writes into the data directory first and removes last: while it
/// exists, the directory holds a half-restored store that nothing may serve.
pub const RESTORE_MARKER: &str = "restore-in-progress";

/// Takes the restore lock of `data_dir`: an exclusive `flock` on the directory itself,
/// held by `restore` from before it looks inside until it has finished (or cleaned
/// up), and released by the kernel when that process dies. So a second restore into
/// the same directory (under any path) is refused instead of taking the first one's
/// marker for an abandoned restore and emptying the directory under it, and the
/// marker without the lock is known to be abandoned. `Ok(None)`: another process
/// holds it.
pub fn lock_for_restore(data_dir: &Path) -> std::io::Result<Option<std::fs::File>> {
    use rustix::fs::{flock, FlockOperation};
    let dir = std::fs::File::open(data_dir)?;
    match flock(&dir, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(dir)),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Whether a `restore` is running into `data_dir` right now (it holds the lock of
/// [`lock_for_restore`]); false when it cannot be told.
fn restore_running(data_dir: &Path) -> bool {
    use rustix::fs::{flock, FlockOperation};
    std::fs::File::open(data_dir).is_ok_and(|dir| {
        flock(&dir, FlockOperation::NonBlockingLockShared)
            .is_err_and(|e| e == rustix::io::Errno::WOULDBLOCK)
    })
}

/// One key written by a change: the space, the key, the new value (None removes it).
type Op = (Kind, Vec<u8>, Option<Vec<u8>>);

/// State guarded by the writer mutex: the sequences.
struct Writer {
    next_group: u64,
    next_change: u64,
    /// The durable reservation (`highwater.rs`): numbers below these may be handed out.
    reserved_group: u64,
    reserved_change: u64,
    /// See `META_FEED_BYTES`.
    feed_bytes: u64,
}

/// A writer's turn (`Store::write_turn`), given back when dropped. (The semaphore is
/// never closed, so the permit is always there.)
pub struct WriteTurn<'a>(#[allow(dead_code)] Option<tokio::sync::SemaphorePermit<'a>>);

/// The open store. Its public face, by what it is for (the methods live beside the
/// data they touch; a unit test holds this list to the code):
///
/// | for | methods | in |
/// |---|---|---|
/// | opening, health, closing | `open`, `healthy`, `probe`, `close`, `store_id`, `dir`, `size_on_disk`, `flush_stats` | `mod.rs` |
/// | writing and durability | `write_turn`, `durable`, `flush_blocking`, `record_highwater` | `mod.rs` (the write path: `commit.rs`) |
/// | groups | `get_group`, `list_groups`, `group_count`, `create_group`, `update_group`, `delete_group`, `purge` | `groups.rs` |
/// | the change feed | `changes`, `purge_to_size`, `purged_through`, `feed_bytes`, `last_seq`, `wait_past` | `changes.rs`, `mod.rs` |
/// | the whole store's feed (replication) | `feed_after`, `snapshot` | `feed.rs` |
/// | office groups | `apply_office`, `retry_office_held`, `reconcile_office`, `advance_office_cursor`, `office_cursor`, `office_reconciled`, `office_held`, `office_gateway`, `office_figures`, `office_served` | `office.rs` |
/// | users, tokens, usage | `users`, `user`, `put_user`, `remove_user`, `tokens`, `put_token`, `remove_tokens`, `usage_records`, `put_usage` | `users.rs` |
/// | backup and restore | `export`, `importer` | `export.rs` |
/// | the offline check | `check` | `check.rs` |
pub struct Store {
    db: sled::Db,
    /// sled's default tree: every key space (`space.rs`).
    tree: sled::Tree,
    groups: Space,
    names: Space,
    devices: Space,
    /// Pieces of large device lists (`pieces.rs`).
    pieces: Space,
    changes: Space,
    history: Space,
    idempotency: Space,
    idempotency_order: Space,
    users: Space,
    tokens: Space,
    usage: Space,
    meta: Space,
    /// The write path: log, memtable, applier, checkpoints (`commit.rs`).
    engine: Arc<Engine>,
    writer: Arc<Mutex<Writer>>,
    /// Set while a long holder (a backup export) has the writer mutex, so that only
    /// then do waiting writers move off the async worker with `block_in_place`.
    long_hold: AtomicBool,
    /// One writer's turn at a time (`write_turn`).
    turns: tokio::sync::Semaphore,
    /// See `StoreOptions::max_devices`.
    max_devices: usize,
    /// See `StoreOptions::clock`.
    clock: Clock,
    dir: PathBuf,
    /// The high-water marks last written to `highwater.rs`'s file.
    recorded: Mutex<Option<highwater::HighWater>>,
    /// The elapsed clock and marks of change-feed retention (`retention.rs`).
    retention: Mutex<retention::Retention>,
    /// See `META_STORE_ID`.
    store_id: String,
    /// See `META_PURGED_THROUGH`.
    purged_through: AtomicU64,
    /// The lock on the store directory (`lock_store_dir`), held as long as the store
    /// is open. `None` for a store this open created.
    _dir_lock: Option<std::fs::File>,
}

impl Store {
    /// Opens (creating if missing) the store under `data_dir/store`: the checks that
    /// must come before sled touches any file, sled itself, the state the log and the
    /// high-water file hold, the flusher, then the repairs and checks made before
    /// anything is served (`settle`).
    ///
    /// After a crash (no seal) sled's recovery may rewrite the files before the checks
    /// can tell damage from a crash; a copy of them is kept meanwhile (`guard.rs`) and
    /// put back when the store is refused, so a refused store is left as found.
    // Long because the recovery guard's three outcomes (kept, discarded, put back)
    // read best side by side.
    pub fn open(data_dir: &Path, options: &StoreOptions) -> Result<Store, OpenError> {
        let dir = data_dir.join("store");
        let dir_lock = lock_store_dir(data_dir, &dir)?;
        if dir_lock.is_some() {
            put_back_leftover_guard(data_dir, &dir)?;
        }
        let before = check_before_sled(data_dir, &dir, options)?;
        let guard = if dir_lock.is_some() && !before.fresh && !before.sealed && !options.restoring {
            match guard::Guard::take(&dir) {
                Ok(g) => Some(g),
                Err(e) => {
                    tracing::warn!(
                        data_dir = %data_dir.display(),
                        error = %e,
                        "cannot keep a copy of the store's files while sled recovers them after a crash; should the store be refused, sled will have changed them"
                    );
                    None
                }
            }
        } else {
            None
        };
        match Store::open_after_checks(data_dir, &dir, options, &before) {
            Ok(mut store) => {
                if let Some(g) = guard {
                    // Not served until the copy is out of use: a start would put it back.
                    g.discard().map_err(|e| {
                        OpenError::Other(format!(
                            "cannot remove the recovery guard {}: {e}",
                            dir.join(guard::DIR).display()
                        ))
                    })?;
                }
                store._dir_lock = match dir_lock {
                    Some(lock) => Some(lock),
                    // A new store: its directory exists now, and is held as long as the
                    // store is open like any other (waiting out a CLI that is looking
                    // at it for a moment, and will find sled's lock held).
                    None => Some(lock_new_store_dir(&dir).map_err(|e| {
                        OpenError::Other(format!("cannot lock {}: {e}", dir.display()))
                    })?),
                };
                Ok(store)
            }
            Err(e @ OpenError::Locked(_)) => {
                // Another process has the files open (one that does not take the
                // directory's lock): they are its, never to be put back from a copy.
                if let Some(g) = guard {
                    let _ = g.discard();
                }
                Err(e)
            }
            Err(e) => {
                // sled is closed (everything it opened was dropped on the way out).
                if let Some(g) = guard {
                    if let Err(re) = g.restore() {
                        tracing::error!(
                            data_dir = %data_dir.display(),
                            error = %re,
                            "cannot put the store's files back as they were found; the copy is in {}",
                            dir.join(guard::DIR).display()
                        );
                    }
                }
                Err(e)
            }
        }
    }

    /// [`Store::open`] once the checks before sled have passed: sled, the state, the
    /// flusher, `settle`.
    // Long because most of it is one struct literal: every field of the store, once.
    fn open_after_checks(
        data_dir: &Path,
        dir: &Path,
        options: &StoreOptions,
        before: &BeforeSled,
    ) -> Result<Store, OpenError> {
        let dir = dir.to_path_buf();
        let db = open_sled(data_dir, &dir, options.cache_bytes, before.fresh)?;
        let tree: sled::Tree = (*db).clone();
        if db.tree_names().len() > 1 {
            // A format-1 store made before the marker file: its data is in named trees.
            return Err(OpenError::Version {
                found: "1".into(),
                path: data_dir.to_path_buf(),
            });
        }
        let has_log = before.marked && !before.fresh;
        let replayed = replay::open_and_replay(data_dir, &dir, &tree, has_log, options.log)?;
        let engine = start_engine(replayed, &db, &dir, options)?;
        let space = |kind: Kind| Space::new(tree.clone(), kind, Arc::clone(&engine));
        let meta = space(Kind::Meta);
        check_format(&meta, data_dir)?;
        let state = Loaded::read(&meta, space(Kind::Users).len() as u64, &dir, data_dir)?;
        engine.publish_seq(state.next_change.saturating_sub(1));
        let start = (state.start_group, state.start_change);
        let reseat = (start != (state.next_group, state.next_change)).then_some(start);
        let store = Store {
            groups: space(Kind::Groups),
            names: space(Kind::Names),
            devices: space(Kind::Devices),
            pieces: space(Kind::Pieces),
            changes: space(Kind::Changes),
            history: space(Kind::History),
            idempotency: space(Kind::Idempotency),
            idempotency_order: space(Kind::IdempotencyOrder),
            users: space(Kind::Users),
            tokens: space(Kind::Tokens),
            usage: space(Kind::Usage),
            meta,
            tree,
            engine,
            writer: Arc::new(Mutex::new(Writer {
                next_group: state.start_group,
                next_change: state.start_change,
                reserved_group: state.start_group,
                reserved_change: state.start_change,
                feed_bytes: state.feed_bytes,
            })),
            long_hold: AtomicBool::new(false),
            turns: tokio::sync::Semaphore::new(1),
            max_devices: options.max_devices,
            clock: options.clock.clone(),
            dir,
            db,
            recorded: Mutex::new(state.recorded),
            retention: Mutex::new(state.retention),
            store_id: state.store_id,
            purged_through: AtomicU64::new(state.purged_through),
            _dir_lock: None,
        };
        store.settle(data_dir, before, reseat, options)?;
        Ok(store)
    }

    /// What an open does once the store is up, before anything is served: the log
    /// learns where the sequences continue (`reseat`: the last run crashed inside a
    /// reservation), the name index follows the current rules, a store that did not
    /// stop cleanly is checked, a new one is made durable, and the format marker is
    /// written. Each step that writes flushes.
    fn settle(
        &self,
        data_dir: &Path,
        before: &BeforeSled,
        reseat: Option<(u64, u64)>,
        options: &StoreOptions,
    ) -> Result<(), OpenError> {
        let damaged = |what| OpenError::Damaged {
            path: data_dir.to_path_buf(),
            what,
        };
        if let Some((start_group, start_change)) = reseat {
            // Started inside a reservation (the last run crashed): the log learns the
            // new starting point, so its marks and the high-water file agree again.
            for (key, value) in [
                (META_NEXT_GROUP, start_group),
                (META_NEXT_CHANGE, start_change),
            ] {
                self.meta.insert(key, &value.to_be_bytes()).map_err(other)?;
            }
            self.flush_blocking().map_err(other)?;
        }
        self.follow_name_rules(before.fresh)?;
        if !before.fresh && !before.sealed && !options.restoring {
            // The last run did not stop cleanly: what the seal would have caught is
            // looked for in the data itself, before anything is served.
            self.fast_check().map_err(damaged)?;
        }
        if before.fresh {
            // The format version and the new files must be on disk before anything
            // else is acknowledged; the data directory entry too.
            self.flush_blocking().map_err(other)?;
            commit::sync_dir(data_dir).map_err(other)?;
        }
        if !before.marked {
            // A new store, or one made before the marker existed (its `meta` version was
            // checked above).
            write_marker(&self.dir).map_err(|e| {
                OpenError::Other(format!(
                    "cannot write {}: {e}",
                    self.dir.join(FORMAT_MARKER).display()
                ))
            })?;
        }
        Ok(())
    }

    /// Rebuilds the name index when it was built under older name rules
    /// (`reindex_names`) and records the rules it follows now.
    fn follow_name_rules(&self, fresh: bool) -> Result<(), OpenError> {
        let rules = self
            .meta
            .get(META_NAME_RULES)
            .map_err(other)?
            .and_then(|v| keys::read_u64(&v));
        if rules == Some(NAME_RULES) {
            return Ok(());
        }
        let collisions = self
            .reindex_names()
            .map_err(|e| OpenError::Other(format!("rebuilding the name index: {e}")))?;
        if !fresh {
            tracing::info!(
                collisions,
                "rebuilt the name index: names now compare NFC-normalised and case-folded"
            );
        }
        self.meta
            .insert(META_NAME_RULES, &NAME_RULES.to_be_bytes())
            .map_err(other)?;
        self.flush_blocking().map_err(other)
    }

    /// Waits, without holding an async worker, for this request's turn at the writer
    /// mutex. Handlers take it before a write and drop it before `durable()`: so at
    /// most one worker thread is ever inside (or blocked on) the mutex, and readers keep
    /// the others while writes run at full rate; the fsync wait stays shared.
    pub async fn write_turn(&self) -> WriteTurn<'_> {
        WriteTurn(self.turns.acquire().await.ok())
    }

    /// Waits until everything submitted so far is durable in the log (per the
    /// durability setting).
    pub async fn durable(&self) -> Result<(), Error> {
        self.engine
            .durable()
            .await
            .map_err(|detail| self.fail(Error::Flush { detail }))
    }

    /// Makes everything submitted so far durable in sled itself (a checkpoint),
    /// blocking: CLI commands, backup, restore, shutdown.
    pub fn flush_blocking(&self) -> Result<(), Error> {
        self.engine
            .checkpoint_blocking()
            .map_err(|detail| Error::Flush { detail })
    }

    /// The store's identity: 32 hex digits, random, made when the store was created
    /// (a restore makes a new store, so a new identity).
    pub fn store_id(&self) -> &str {
        &self.store_id
    }

    /// The highest change-feed `seq` retention may have removed (0: none ever).
    pub fn purged_through(&self) -> u64 {
        self.purged_through.load(Ordering::SeqCst)
    }

    /// Bytes the change feed takes on disk (keys and values; sled's own overhead
    /// comes on top).
    pub fn feed_bytes(&self) -> u64 {
        lock(&self.writer).feed_bytes
    }

    /// The highest change `seq` handed out so far; every entry up to it is applied.
    pub fn last_seq(&self) -> u64 {
        self.engine.visible_seq()
    }

    /// Waits until `last_seq()` passes `seq`. Woken by the flusher's published
    /// outcomes (`commit::FlushWatch`): the visible seq moves in its outcome hook before
    /// it publishes, or, with relaxed durability, at a write that the next timer flush
    /// then announces. An idle store costs its waiters nothing.
    pub async fn wait_past(&self, seq: u64) {
        let mut flushes = self.engine.watch();
        loop {
            flushes.mark_seen();
            if self.last_seq() > seq {
                return;
            }
            flushes.changed().await;
        }
    }

    /// Whether the store currently takes writes: no write or flush has failed
    /// (`Engine::failed`; writes answer 503 and `/readyz` says so).
    pub fn healthy(&self) -> bool {
        !self.engine.failed()
    }

    /// Whether the store answers a read right now: one point read of the users space
    /// for a name no user can have (the userName rule needs at least one character),
    /// so which users exist does not matter; it checks that sled answers, not that
    /// the store takes writes (`healthy`). Blocking, and cheap enough for every
    /// watchdog tick.
    pub fn probe(&self) -> Result<(), Error> {
        self.users.get(b"").map(drop).map_err(|e| self.read_err(e))
    }

    /// Marks the store failed (`Engine::fail`, whatever failed) and gives back `e`.
    fn fail(&self, e: Error) -> Error {
        self.engine.fail();
        e
    }

    /// A sled write that failed: the store is failed from now on.
    fn write_err(&self, source: sled::Error) -> Error {
        self.fail(Error::Storage {
            during: "write",
            source,
        })
    }

    /// Refuses writes while the store is failed.
    fn check_writable(&self) -> Result<(), Error> {
        if self.healthy() {
            Ok(())
        } else {
            Err(Error::Failed)
        }
    }

    /// Takes the writer mutex. When it is contended inside a multi-threaded runtime
    /// (a long export holds it), the wait moves off the async worker with
    /// `block_in_place`, so requests that only read keep being served meanwhile.
    fn lock_writer(&self) -> MutexGuard<'_, Writer> {
        match self.writer.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            // Writers hold the mutex for microseconds: waiting in place is cheaper than
            // `block_in_place`, which hands the worker to a new thread on every
            // contended write and made writes context-switch bound (bench: 2.5k/s).
            Err(TryLockError::WouldBlock) if !self.long_hold.load(Ordering::Relaxed) => {
                lock(&self.writer)
            }
            Err(TryLockError::WouldBlock) => {
                let multi = tokio::runtime::Handle::try_current().is_ok_and(|h| {
                    h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
                });
                if multi {
                    tokio::task::block_in_place(|| lock(&self.writer))
                } else {
                    lock(&self.writer)
                }
            }
        }
    }

    /// Takes the writer mutex for a write: refused (`Failed`) once the store has failed.
    /// The check is made under the mutex, so no change slips in after a rollback.
    fn write_lock(&self) -> Result<MutexGuard<'_, Writer>, Error> {
        self.check_writable()?;
        let w = self.lock_writer();
        self.check_writable()?;
        Ok(w)
    }

    /// Submits `ops` as one write (atomic: one log record, applied to sled in one
    /// batch) under the writer mutex. It stays invisible to readers until the log has
    /// it (`commit.rs`); `last_seq` is the highest change `seq` once it is durable.
    fn apply_ops(&self, _w: &mut Writer, ops: &[Op], last_seq: u64) -> Result<(), Error> {
        let writes = ops
            .iter()
            .map(|(kind, k, v)| memtable::Write {
                key: space::full_key(*kind, k),
                value: v.as_deref().map(sled::IVec::from),
            })
            .collect();
        self.engine
            .submit(writes, false, Some(last_seq))
            .map(drop)
            .map_err(|detail| self.fail(Error::Flush { detail }))
    }

    /// Group-commit counters (metrics).
    pub fn flush_stats(&self) -> &commit::FlushStats {
        &self.engine.stats
    }

    /// Total bytes sled reports on disk (metrics).
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    /// Directory of the sled files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops the flusher after a last flush (graceful shutdown), then records the
    /// high-water marks. A failed store is not flushed: what it refused must not reach
    /// the disk now (see `Drop`).
    pub fn close(&self) -> Result<(), Error> {
        if !self.healthy() {
            self.engine.stop();
            return Err(Error::Failed);
        }
        // The retention clock counts running time: keep what this run added.
        if let Err(e) = self.save_retention_clock() {
            tracing::warn!(error = %e.chain(), "could not save the change-feed retention clock");
        }
        // Everything is written: the reservation shrinks to the marks, so the next
        // start skips no numbers.
        let marks = {
            let mut w = lock(&self.writer);
            w.reserved_group = w.next_group;
            w.reserved_change = w.next_change;
            drop(w);
            self.marks()
        };
        let r = self.flush_blocking();
        self.engine.close();
        self.engine.stop();
        r?;
        self.write_highwater(marks, true)
            .map_err(|source| Error::Io {
                during: "recording the high-water marks",
                source,
            })?;
        // Nothing is written after this (sled's drop flushes nothing: all is flushed),
        // so the files are sealed as the next open will find them.
        if let Err(e) = seal::write(&self.dir) {
            // Everything is durable: the stop itself succeeded. Without a seal the next
            // start checks the store as after a crash (the fast check, and the files
            // kept until it passes), so it is said here rather than failing the stop.
            let removed = seal::remove(&self.dir);
            tracing::warn!(
                store = %self.dir.display(),
                error = %e,
                stale_seal_removed = removed.is_ok(),
                "could not seal the store at this clean stop; the next start checks it as after a crash"
            );
        }
        Ok(())
    }

    /// Writes the high-water marks file when the marks moved since it was last written.
    /// The marks are read before a flush and written after it, so the file never
    /// records more than the log holds durably (or a crash would look like damage).
    pub fn record_highwater(&self) -> Result<(), Error> {
        let marks = self.marks();
        if *lock(&self.recorded) == Some(marks) {
            return Ok(());
        }
        // The log is where the marks must be durable (a replay brings sled there).
        self.engine
            .durable_blocking()
            .map_err(|detail| Error::Flush { detail })?;
        self.write_highwater(marks, false)
            .map_err(|source| Error::Io {
                during: "recording the high-water marks",
                source,
            })
    }

    fn marks(&self) -> highwater::HighWater {
        let w = lock(&self.writer);
        highwater::HighWater {
            next_group: w.next_group,
            next_change: w.next_change,
            users: self.users.len() as u64,
            reserved_group: w.reserved_group,
            reserved_change: w.reserved_change,
        }
    }

    /// Makes sure `next_group` and `next_change` lie inside the durable reservation
    /// before a write hands them out (under the writer mutex). Extending it writes and
    /// fsyncs the high-water file: once per `RESERVE` numbers. A failure fails the store
    /// and refuses the write (`Io`) before anything is applied.
    fn reserve(&self, w: &mut Writer, next_group: u64, next_change: u64) -> Result<(), Error> {
        if next_group <= w.reserved_group && next_change <= w.reserved_change {
            return Ok(());
        }
        let reserved_group = w.reserved_group.max(next_group + highwater::RESERVE);
        let reserved_change = w.reserved_change.max(next_change + highwater::RESERVE);
        let mut last = lock(&self.recorded);
        let base = last.unwrap_or(highwater::HighWater {
            next_group: w.next_group,
            next_change: w.next_change,
            users: 0,
            reserved_group: 0,
            reserved_change: 0,
        });
        let hw = highwater::HighWater {
            reserved_group,
            reserved_change,
            ..base
        };
        hw.write(&self.dir).map_err(|source| {
            self.fail(Error::Io {
                during: "reserving IDs",
                source,
            })
        })?;
        *last = Some(hw);
        w.reserved_group = reserved_group;
        w.reserved_change = reserved_change;
        Ok(())
    }

    /// Writes `marks`, read before a flush. A reservation written meanwhile by
    /// `reserve` (under this same lock) reaches further than the marks read earlier:
    /// the file never takes a reservation back, except at a clean `close`, which
    /// shrinks it on purpose (`shrink`) when no write can come any more.
    fn write_highwater(&self, marks: highwater::HighWater, shrink: bool) -> std::io::Result<()> {
        let mut last = lock(&self.recorded);
        let marks = match *last {
            Some(prev) if !shrink => highwater::HighWater {
                reserved_group: marks.reserved_group.max(prev.reserved_group),
                reserved_change: marks.reserved_change.max(prev.reserved_change),
                ..marks
            },
            _ => marks,
        };
        if *last == Some(marks) {
            return Ok(());
        }
        marks.write(&self.dir)?;
        *last = Some(marks);
        Ok(())
    }

    /// Calls `f` with the prefix (`account 0x00`) of every account that has keys in
    /// `tree`, in order, found by seeking: one lookup per account however many keys it
    /// holds, so a scan that reads only part of each account (a purge, a feed page)
    /// costs what it reads. Keys that are not account-scoped are stepped over.
    pub(super) fn each_account(
        &self,
        tree: &Space,
        mut f: impl FnMut(&[u8]) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let mut cursor: Vec<u8> = Vec::new();
        while let Some(first) = tree.range(cursor.as_slice()..).next() {
            let (k, _) = first.map_err(|e| self.read_err(e))?;
            let Some(sep) = k.iter().position(|b| *b == 0) else {
                cursor = k.to_vec();
                cursor.push(0);
                continue;
            };
            let prefix = &k[..=sep];
            f(prefix)?;
            match keys::prefix_end(prefix) {
                Some(end) => cursor = end,
                None => break,
            }
        }
        Ok(())
    }

    /// A sled read that failed. An I/O error means sled's own writing in the
    /// background hit the disk's refusal (sled then refuses everything until restart):
    /// the store is failed, so writes answer 503 and `/readyz` says so, as when the
    /// log or a checkpoint fails; what the memtable holds still reads.
    fn read_err(&self, e: sled::Error) -> Error {
        if matches!(e, sled::Error::Io(_)) && !self.engine.failed() {
            self.engine.fail();
            tracing::error!(error = %e, "the store's disk refused a read; writes answer 503 until restart");
        }
        Error::read(e)
    }
}

/// Any sled or file error while opening, as `OpenError::Other`.
fn other(e: impl std::fmt::Display) -> OpenError {
    OpenError::Other(e.to_string())
}

/// What `Store::open` learns before sled opens the files.
struct BeforeSled {
    /// No store was there: this open makes one.
    fresh: bool,
    /// The format marker already says this binary's version.
    marked: bool,
    /// The last run stopped cleanly and its seal matched (`seal.rs`).
    sealed: bool,
}

/// Everything `Store::open` checks before sled runs, in order: the data directory
/// exists (0700), no restore was cut short, no store was lost (`check_not_lost`), the
/// format marker names a version this binary opens, the directory is owner-only, and
/// the seal of a clean stop matches. sled rewrites files whenever it opens a store
/// (recovery writes a snapshot), so these must come first for "refuse without touching
/// anything" to hold.
fn check_before_sled(
    data_dir: &Path,
    dir: &Path,
    options: &StoreOptions,
) -> Result<BeforeSled, OpenError> {
    crate::perms::create_private_dir(data_dir)
        .map_err(|e| OpenError::Other(format!("cannot create {}: {e}", data_dir.display())))?;
    if !options.restoring && data_dir.join(RESTORE_MARKER).exists() {
        if restore_running(data_dir) {
            // Not the operator's to repair: it is being written, and will start once done.
            return Err(OpenError::Other(format!(
                "a restore into {} is running; start once it has finished",
                data_dir.display()
            )));
        }
        return Err(OpenError::Interrupted(data_dir.to_path_buf()));
    }
    let fresh = check_not_lost(data_dir, dir)?;
    let marked = read_marker(data_dir, dir)?;
    // A directory made by an older version or under a looser umask (SECURITY.md
    // promises 0700/0600) is repaired before the store is read.
    match crate::perms::tighten(data_dir) {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            data_dir = %data_dir.display(),
            changed = n,
            "made the data directory and its files owner-only (0700/0600)"
        ),
        Err(e) => {
            return Err(OpenError::Other(format!(
                "cannot make {} owner-only: {e}",
                data_dir.display()
            )))
        }
    }
    // After a clean stop, any change to sled's files is damage, found before sled's
    // recovery can rewrite them (`seal.rs`). After a crash the fast check runs instead
    // (`Store::settle`).
    let sealed = if fresh {
        false
    } else {
        seal::check_and_remove(dir).map_err(|what| OpenError::Damaged {
            path: data_dir.to_path_buf(),
            what,
        })?
    };
    Ok(BeforeSled {
        fresh,
        marked,
        sealed,
    })
}

/// Reads the format marker: true when it names this binary's version, false when it
/// is missing or names an older format this binary upgrades (the marker is rewritten
/// once the store is open); any other version is refused. `meta` keeps the version
/// too (`check_format`).
fn read_marker(data_dir: &Path, dir: &Path) -> Result<bool, OpenError> {
    let marker = dir.join(FORMAT_MARKER);
    match std::fs::read_to_string(&marker) {
        Ok(text) => {
            let found = text.trim();
            if !found.parse::<u64>().is_ok_and(opens) {
                return Err(OpenError::Version {
                    found: match found.parse::<u64>() {
                        Ok(n) => n.to_string(),
                        Err(_) => format!("{found:?}"),
                    },
                    path: data_dir.to_path_buf(),
                });
            }
            Ok(found.parse::<u64>().ok() == Some(FORMAT_VERSION))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(OpenError::Other(format!(
            "cannot read {}: {e}",
            marker.display()
        ))),
    }
}

/// Locks the store directory (an exclusive `flock` on the directory itself) before
/// anything looks inside, so that only one process reads its seal, keeps a recovery
/// guard or lets sled recover it. `Locked` when another process holds it; `None` when
/// there is no store directory yet (a new store: sled's own lock covers it).
fn lock_store_dir(data_dir: &Path, dir: &Path) -> Result<Option<std::fs::File>, OpenError> {
    use rustix::fs::{flock, FlockOperation};
    let handle = match std::fs::File::open(dir) {
        Ok(h) => h,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(OpenError::Other(format!(
                "cannot open {}: {e}",
                dir.display()
            )))
        }
    };
    match flock(&handle, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(handle)),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
            Err(OpenError::Locked(data_dir.to_path_buf()))
        }
        Err(e) => Err(OpenError::Other(format!(
            "cannot lock {}: {e}",
            dir.display()
        ))),
    }
}

/// The lock of `lock_store_dir`, for the directory of a store this process has just
/// created (and so holds sled's lock on): waits for it, since another process can only
/// hold it for the moment it takes to find sled's lock taken.
fn lock_new_store_dir(dir: &Path) -> std::io::Result<std::fs::File> {
    let handle = std::fs::File::open(dir)?;
    rustix::fs::flock(&handle, rustix::fs::FlockOperation::LockExclusive)?;
    Ok(handle)
}

/// A recovery guard left by an open that was cut off (`guard.rs`): the files go back
/// as that open found them, before anything else reads them.
fn put_back_leftover_guard(data_dir: &Path, dir: &Path) -> Result<(), OpenError> {
    let leftover = guard::Guard::leftover(dir).map_err(|e| {
        OpenError::Other(format!(
            "cannot read the recovery guard in {}: {e}",
            dir.display()
        ))
    })?;
    if let Some(g) = leftover {
        tracing::warn!(
            data_dir = %data_dir.display(),
            "an earlier start was cut off while sled recovered the store after a crash; putting its files back as that start found them"
        );
        g.restore().map_err(|e| {
            OpenError::Other(format!(
                "cannot put the store's files back from {}: {e}",
                dir.join(guard::DIR).display()
            ))
        })?;
    }
    Ok(())
}

/// Opens sled on `dir`. sled panics on some damaged files instead of returning an
/// error; that is a damaged store to refuse (exit 3 with a message), not a crash to
/// restart. So is an error sled reports as corruption, or as a read past the end or of
/// invalid data, in a store that is not new (a truncated log, a zeroed tail). Another
/// process's lock is `Locked`.
fn open_sled(
    data_dir: &Path,
    dir: &Path,
    cache_bytes: u64,
    fresh: bool,
) -> Result<sled::Db, OpenError> {
    let opened = std::panic::catch_unwind(|| {
        sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            // LowSpace (the default) compacts more eagerly; HighThroughput made a
            // 100,000-group restore 8.4 s instead of 13.7 s and its store 224 MB
            // instead of 432 MB on the bench machine.
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(None)
            .open()
    })
    .map_err(|panic| OpenError::Damaged {
        path: data_dir.to_path_buf(),
        what: format!("sled cannot read it ({})", panic_text(&panic)),
    })?;
    let damaged = |e: &sled::Error| OpenError::Damaged {
        path: data_dir.to_path_buf(),
        what: format!("sled cannot read it ({e})"),
    };
    opened.map_err(|e| match e {
        sled::Error::Io(ref io) if io.to_string().contains("could not acquire lock") => {
            OpenError::Locked(data_dir.to_path_buf())
        }
        sled::Error::Corruption { .. } | sled::Error::ReportableBug(_) if !fresh => damaged(&e),
        sled::Error::Io(ref io)
            if !fresh
                && matches!(
                    io.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData
                ) =>
        {
            damaged(&e)
        }
        other => OpenError::Other(other.to_string()),
    })
}

/// Checks the format version `meta` holds (a format this binary opens), writing this
/// binary's version when it is absent (a new store) or older (the upgrade,
/// `UPGRADES_FROM`; the marker follows at the end of the open).
fn check_format(meta: &Space, data_dir: &Path) -> Result<(), OpenError> {
    let found = match meta.get(META_FORMAT).map_err(other)? {
        Some(v) => {
            let found = keys::read_u64(&v);
            if !found.is_some_and(opens) {
                return Err(OpenError::Version {
                    found: found
                        .map_or_else(|| format!("{:?} (not a number)", &v[..]), |n| n.to_string()),
                    path: data_dir.to_path_buf(),
                });
            }
            found
        }
        None => None,
    };
    if found != Some(FORMAT_VERSION) {
        meta.insert(META_FORMAT, &FORMAT_VERSION.to_be_bytes())
            .map_err(other)?;
    }
    Ok(())
}

/// The state an open reads from `meta` and the high-water file, checked against
/// each other.
struct Loaded {
    /// The log's own ID sequences.
    next_group: u64,
    next_change: u64,
    /// Where the sequences continue: after everything that may have been handed out
    /// (the log's marks, or the reservation when it reaches further: a crash inside a
    /// reservation).
    start_group: u64,
    start_change: u64,
    recorded: Option<highwater::HighWater>,
    retention: retention::Retention,
    store_id: String,
    purged_through: u64,
    feed_bytes: u64,
}

impl Loaded {
    /// Reads the sequences, the retention clock, the high-water marks (refusing a log
    /// that is behind them: data was lost), the store's identity (made here, for a
    /// store that passed the checks) and the feed's counters. `users` is the number
    /// of users in the log.
    fn read(meta: &Space, users: u64, dir: &Path, data_dir: &Path) -> Result<Loaded, OpenError> {
        let damaged = |what| OpenError::Damaged {
            path: data_dir.to_path_buf(),
            what,
        };
        let read_u64 = |key: &[u8]| -> Result<Option<u64>, OpenError> {
            Ok(meta
                .get(key)
                .map_err(other)?
                .and_then(|v| keys::read_u64(&v)))
        };
        let retention = retention::Retention::load(
            meta.get(retention::META_RETENTION)
                .map_err(other)?
                .as_deref(),
        );
        let next_group = read_u64(META_NEXT_GROUP)?.unwrap_or(1);
        let next_change = read_u64(META_NEXT_CHANGE)?.unwrap_or(1);
        let log_marks = highwater::HighWater {
            next_group,
            next_change,
            users,
            reserved_group: next_group,
            reserved_change: next_change,
        };
        let recorded = highwater::HighWater::read(dir).map_err(damaged)?;
        if let Some(what) = recorded.and_then(|hw| hw.behind(&log_marks)) {
            return Err(damaged(what));
        }
        let store_id = match meta.get(META_STORE_ID).map_err(other)? {
            Some(v) => String::from_utf8_lossy(&v).into_owned(),
            None => {
                let id = new_store_id();
                meta.insert(META_STORE_ID, id.as_bytes()).map_err(other)?;
                id
            }
        };
        let purged_through = read_u64(META_PURGED_THROUGH)?.unwrap_or(0);
        let (start_group, start_change) = match recorded {
            Some(hw) => (
                next_group.max(hw.reserved_group),
                next_change.max(hw.reserved_change),
            ),
            None => (next_group, next_change),
        };
        Ok(Loaded {
            next_group,
            next_change,
            start_group,
            start_change,
            recorded,
            retention,
            store_id,
            purged_through,
            feed_bytes: read_u64(META_FEED_BYTES)?.unwrap_or(0),
        })
    }
}

/// Starts the write path (`commit.rs`) on `db`, continuing `log`.
fn start_engine(
    replayed: replay::Replayed,
    db: &sled::Db,
    dir: &Path,
    options: &StoreOptions,
) -> Result<Arc<Engine>, OpenError> {
    if let Some(n) = options.fail_flush_after {
        tracing::warn!(
            after = n,
            "FAULT INJECTION: the store's log appends will fail after {n} successful ones (test only)"
        );
    }
    let target = SyncTarget {
        db: db.clone(),
        dir: dir.to_path_buf(),
        fail_after: options.fail_flush_after,
        relaxed: options.durability == Durability::Relaxed,
        bounds: options.log,
    };
    Engine::start(replayed.log, replayed.checkpoint, (**db).clone(), target)
        .map(Arc::new)
        .map_err(|e| OpenError::Other(format!("cannot start the store's log: {e}")))
}

/// Whether the directory is new (no store yet), or Damaged when it has held a store
/// (its format marker, or the first start's key file, is there) but the log that holds
/// everything is missing or empty — the typical zero-length file after a power cut,
/// which sled would otherwise take for a new store (a new admin, IDs from grp-1 again).
fn check_not_lost(data_dir: &Path, store_dir: &Path) -> Result<bool, OpenError> {
    let db = store_dir.join("db");
    let held = store_dir.join(FORMAT_MARKER).exists() || data_dir.join(KEY_FILE).exists();
    let what = match std::fs::metadata(&db) {
        Ok(m) if m.len() > 0 => return Ok(false),
        Ok(_) => format!("{} is empty", db.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            format!("{} is missing", db.display())
        }
        Err(e) => {
            return Err(OpenError::Other(format!(
                "cannot read {}: {e}",
                db.display()
            )))
        }
    };
    if held {
        return Err(OpenError::Damaged {
            path: data_dir.to_path_buf(),
            what,
        });
    }
    Ok(true)
}

/// The message of a caught panic.
fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

/// Writes the format marker durably (`perms::replace_private`).
fn write_marker(dir: &Path) -> std::io::Result<()> {
    crate::perms::replace_private(dir, FORMAT_MARKER, format!("{FORMAT_VERSION}\n").as_bytes())
}

/// Helpers shared by the store's unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::{Store, StoreOptions};
    use crate::config::Durability;
    use crate::model::GroupDoc;

    /// A small cache, relaxed durability, the system clock.
    pub fn options() -> StoreOptions {
        StoreOptions {
            cache_bytes: 1 << 20,
            durability: Durability::Relaxed,
            fail_flush_after: None,
            restoring: false,
            max_devices: 10_000,
            clock: crate::time::Clock::system(),
            log: super::LogBounds::default(),
        }
    }

    /// A store in `dir` with `options()`.
    pub fn store(dir: &std::path::Path) -> Store {
        Store::open(dir, &options()).unwrap()
    }

    /// A group document with a name and nothing else.
    pub fn doc(name: &str) -> GroupDoc {
        GroupDoc {
            name: name.into(),
            description: None,
            devices: vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{doc, store};

    /// Every public method of `Store`, in whichever file, is named in the table on
    /// `Store` (its public face, read in one place), and the table names no other.
    #[test]
    fn the_face_of_the_store_lists_every_public_method() {
        let sources = [
            include_str!("mod.rs"),
            include_str!("changes.rs"),
            include_str!("check.rs"),
            include_str!("export.rs"),
            include_str!("feed.rs"),
            include_str!("groups.rs"),
            include_str!("idempotency.rs"),
            include_str!("office.rs"),
            include_str!("users.rs"),
            include_str!("pieces.rs"),
            include_str!("history.rs"),
            include_str!("retention.rs"),
        ];
        let mut public = std::collections::BTreeSet::new();
        for src in sources {
            let mut in_store = false;
            let mut test_only = false;
            for line in src.lines() {
                if line.starts_with("impl Store") {
                    in_store = true;
                } else if line.starts_with('}') {
                    in_store = false;
                }
                let rest = line
                    .strip_prefix("    pub fn ")
                    .or_else(|| line.strip_prefix("    pub async fn "));
                if let (true, false, Some(rest)) = (in_store, test_only, rest) {
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    public.insert(name);
                }
                test_only = line.trim() == "#[cfg(test)]";
            }
        }
        let face = include_str!("mod.rs");
        let table: String = face
            .lines()
            .skip_while(|l| !l.starts_with("/// The open store."))
            .take_while(|l| l.starts_with("///"))
            .collect();
        let listed: std::collections::BTreeSet<String> = table
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|w| !w.ends_with(".rs"))
            .map(str::to_string)
            .collect();
        assert_eq!(
            public, listed,
            "the table on `Store` and its public methods differ"
        );
    }
    use super::{keys, OpenError, FORMAT_MARKER, FORMAT_VERSION, META_FORMAT};
    use crate::store::groups::Actor;

    /// A format-2 store (marker and meta say 2) opens, keeps its groups, and is
    /// upgraded to this format in both places; a newer format is still refused.
    #[test]
    fn a_format_2_store_is_upgraded_in_place_and_a_newer_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = Actor {
            account: "acct",
            user: "u",
        };
        let id = {
            let s = store(dir.path());
            let id = s.create_group(a, &doc("kept"), 10, None).unwrap().group.id;
            s.meta.insert(META_FORMAT, &2u64.to_be_bytes()).unwrap();
            s.close().unwrap();
            id
        };
        let marker = dir.path().join("store").join(FORMAT_MARKER);
        std::fs::write(&marker, "2\n").unwrap();
        {
            let s = store(dir.path());
            assert_eq!(
                s.get_group("acct", id).unwrap().unwrap().doc().unwrap(),
                doc("kept")
            );
            let meta = s.meta.get(META_FORMAT).unwrap().unwrap();
            assert_eq!(keys::read_u64(&meta), Some(FORMAT_VERSION));
            s.close().unwrap();
        }
        assert_eq!(
            std::fs::read_to_string(&marker).unwrap(),
            format!("{FORMAT_VERSION}\n")
        );
        std::fs::write(&marker, format!("{}\n", FORMAT_VERSION + 1)).unwrap();
        let refused = super::Store::open(dir.path(), &super::testing::options());
        assert!(matches!(refused, Err(OpenError::Version { .. })));
    }
}
