//! The embedded store: the only module that touches sled. It exposes domain operations
//! (create a group, replace it, list an account's groups, save a user …) with typed
//! inputs, keeps every multi-key change in one sled transaction, and makes writes
//! durable through group commit (`commit.rs`) before they are acknowledged.
//!
//! Trees: `groups`, `names` (case-insensitive name index), `devices` (reverse index),
//! `changes` (change feed), `idempotency`, `users`, `tokens` (SHA-256 of bearer tokens),
//! `usage` (per-user counters) and `meta` (format version, ID sequences, counts).
//!
//! All group writers take one mutex (`writer`) for the read-check-write step, so the
//! uniqueness check, the `If-Match` check and the write are one atomic step, IDs come
//! from an in-memory sequence, and sled's transaction never has to retry. The mutex is
//! held only for in-memory work; the fsync happens after it is released, shared.

mod commit;
pub mod groups;
pub mod keys;
pub mod users;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sled::transaction::{ConflictableTransactionError, TransactionError};

use crate::config::Durability;
use crate::error::ApiError;
pub use commit::lock;
use commit::{GroupCommit, SyncTarget};

/// The store format this binary reads and writes.
pub const FORMAT_VERSION: u64 = 1;

const META_FORMAT: &[u8] = b"format_version";
const META_NEXT_GROUP: &[u8] = b"next_group";
const META_NEXT_CHANGE: &[u8] = b"next_change";

/// Why the store could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// Another process holds the store.
    Locked(PathBuf),
    /// The store was written by a different format version.
    Version { found: u64, path: PathBuf },
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
}

/// Sequences handed out under the writer mutex.
#[derive(Debug)]
struct Writer {
    next_group: u64,
    next_change: u64,
}

/// The open store.
pub struct Store {
    db: sled::Db,
    groups: sled::Tree,
    names: sled::Tree,
    devices: sled::Tree,
    changes: sled::Tree,
    idempotency: sled::Tree,
    users: sled::Tree,
    tokens: sled::Tree,
    usage: sled::Tree,
    meta: sled::Tree,
    writer: Mutex<Writer>,
    commit: GroupCommit,
    durability: Durability,
    dir: PathBuf,
    /// Set when a flush or write failed: writes answer 503 and `/readyz` says so.
    failed: std::sync::atomic::AtomicBool,
}

impl Store {
    /// Opens (creating if missing) the store under `data_dir/store`.
    pub fn open(data_dir: &Path, options: &StoreOptions) -> Result<Store, OpenError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| OpenError::Other(format!("cannot create {}: {e}", data_dir.display())))?;
        let dir = data_dir.join("store");
        let fresh = !dir.join("db").exists();
        let db = sled::Config::new()
            .path(&dir)
            .cache_capacity(options.cache_bytes)
            .flush_every_ms(Some(500))
            .open()
            .map_err(|e| match e {
                sled::Error::Io(ref io) if io.to_string().contains("could not acquire lock") => {
                    OpenError::Locked(data_dir.to_path_buf())
                }
                other => OpenError::Other(other.to_string()),
            })?;
        let tree = |name: &str| {
            db.open_tree(name)
                .map_err(|e| OpenError::Other(e.to_string()))
        };
        let meta = tree("meta")?;
        match meta
            .get(META_FORMAT)
            .map_err(|e| OpenError::Other(e.to_string()))?
        {
            Some(v) => {
                let found = keys::read_u64(&v).unwrap_or(u64::MAX);
                if found != FORMAT_VERSION {
                    return Err(OpenError::Version {
                        found,
                        path: data_dir.to_path_buf(),
                    });
                }
            }
            None => {
                meta.insert(META_FORMAT, &FORMAT_VERSION.to_be_bytes())
                    .map_err(|e| OpenError::Other(e.to_string()))?;
            }
        }
        let read_seq = |key: &[u8]| -> Result<u64, OpenError> {
            Ok(meta
                .get(key)
                .map_err(|e| OpenError::Other(e.to_string()))?
                .and_then(|v| keys::read_u64(&v))
                .unwrap_or(1))
        };
        let writer = Writer {
            next_group: read_seq(META_NEXT_GROUP)?,
            next_change: read_seq(META_NEXT_CHANGE)?,
        };
        let commit = GroupCommit::start(SyncTarget {
            db: db.clone(),
            dir: dir.clone(),
        })
        .map_err(|e| OpenError::Other(format!("cannot start the flusher: {e}")))?;
        let store = Store {
            groups: tree("groups")?,
            names: tree("names")?,
            devices: tree("devices")?,
            changes: tree("changes")?,
            idempotency: tree("idempotency")?,
            users: tree("users")?,
            tokens: tree("tokens")?,
            usage: tree("usage")?,
            meta,
            writer: Mutex::new(writer),
            commit,
            durability: options.durability,
            dir,
            db,
            failed: std::sync::atomic::AtomicBool::new(false),
        };
        if fresh {
            // The format version and the new files must be on disk before anything
            // else is acknowledged; the data directory entry too.
            store.flush_blocking().map_err(OpenError::Other)?;
            commit::sync_dir(data_dir).map_err(|e| OpenError::Other(e.to_string()))?;
        }
        Ok(store)
    }

    /// Waits until everything applied so far is durable (per the durability setting).
    pub async fn durable(&self) -> Result<(), ApiError> {
        if self.durability == Durability::Relaxed {
            return Ok(());
        }
        let ticket = self.commit.request();
        self.commit.wait(ticket).await.map_err(|e| self.fail(e))
    }

    /// Flushes and fsyncs now, blocking (CLI commands, shutdown).
    pub fn flush_blocking(&self) -> Result<(), String> {
        self.commit.flush_blocking()
    }

    /// Whether the store currently takes writes.
    pub fn healthy(&self) -> bool {
        !self.failed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Marks the store failed and turns a storage error into 503.
    fn fail(&self, detail: impl std::fmt::Display) -> ApiError {
        self.failed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        ApiError::Unavailable(format!("storage: {detail}"))
    }

    /// Refuses writes while the store is failed.
    fn check_writable(&self) -> Result<(), ApiError> {
        if self.healthy() {
            Ok(())
        } else {
            Err(ApiError::Unavailable(
                "storage: an earlier write failed; refusing writes until restart".into(),
            ))
        }
    }

    /// Total bytes sled reports on disk (metrics).
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    /// Directory of the sled files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops the flusher after a last flush (graceful shutdown).
    pub fn close(&self) -> Result<(), String> {
        let r = self.flush_blocking();
        self.commit.stop();
        r
    }

    /// Maps a sled read error to 503.
    fn read_err(&self, e: sled::Error) -> ApiError {
        ApiError::Unavailable(format!("storage read: {e}"))
    }
}

/// Turns the result of a sled transaction into ours.
fn tx_result<T>(store: &Store, r: Result<T, TransactionError<ApiError>>) -> Result<T, ApiError> {
    match r {
        Ok(v) => Ok(v),
        Err(TransactionError::Abort(e)) => Err(e),
        Err(TransactionError::Storage(e)) => Err(store.fail(e)),
    }
}

/// Aborts a transaction with an API error.
#[allow(dead_code)]
fn abort<T>(e: ApiError) -> Result<T, ConflictableTransactionError<ApiError>> {
    Err(ConflictableTransactionError::Abort(e))
}
