//! Group commit: the one place that makes writes durable. A writer applies its change in
//! memory (a sled transaction), then asks for a flush and waits. One background thread
//! flushes sled's log and then `fdatasync`s the log file and any new blob files,
//! covering every write that asked before the flush began: N concurrent writers share
//! one fsync instead of paying N.
//!
//! Why the extra sync: sled 0.34.7's `flush()` ends in `sync_file_range`, which pushes
//! dirty pages to the device but neither flushes the drive's write cache nor persists
//! file metadata (the log's new length), and large values ("blobs") are written to
//! their own files without any sync. `File::sync_data` (fdatasync) on the log file and
//! `sync_all` on new blob files and their directory close that gap.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use tokio::sync::watch;

/// Flush progress: every ticket `<= done` is durable; every ticket in
/// `(done, failed]` failed to flush.
#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    done: u64,
    failed: u64,
}

struct Shared {
    requested: Mutex<Requested>,
    wake: Condvar,
    /// Mirror of the watch value for blocking waiters (CLI, shutdown).
    progress: Mutex<Progress>,
    progressed: Condvar,
}

#[derive(Default)]
struct Requested {
    last: u64,
    stop: bool,
}

/// Hands out tickets and tells when they are durable.
pub struct GroupCommit {
    shared: Arc<Shared>,
    progress: watch::Receiver<Progress>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// What the flusher needs to make sled's files durable.
pub struct SyncTarget {
    pub db: sled::Db,
    pub dir: PathBuf,
}

impl SyncTarget {
    /// Flushes sled and fsyncs its files. Blob files already synced are remembered.
    fn sync(&self, log: &File, synced_blobs: &mut HashSet<PathBuf>) -> std::io::Result<()> {
        self.db
            .flush()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        log.sync_data()?;
        let blobs = self.dir.join("blobs");
        let mut new_blob = false;
        if let Ok(entries) = std::fs::read_dir(&blobs) {
            let mut present = HashSet::new();
            for entry in entries.flatten() {
                let path = entry.path();
                if !synced_blobs.contains(&path) {
                    File::open(&path)?.sync_all()?;
                    new_blob = true;
                }
                present.insert(path);
            }
            // Forget blobs sled has deleted so the set stays small.
            synced_blobs.retain(|p| present.contains(p));
            synced_blobs.extend(present);
        }
        if new_blob {
            File::open(&blobs)?.sync_all()?;
        }
        Ok(())
    }
}

impl GroupCommit {
    /// Starts the flusher thread for a store in `target.dir`.
    pub fn start(target: SyncTarget) -> std::io::Result<GroupCommit> {
        let log = File::open(target.dir.join("db"))?;
        // The store's directory entries themselves must be durable once.
        sync_dir(&target.dir)?;
        let shared = Arc::new(Shared {
            requested: Mutex::new(Requested::default()),
            wake: Condvar::new(),
            progress: Mutex::new(Progress::default()),
            progressed: Condvar::new(),
        });
        let (tx, rx) = watch::channel(Progress::default());
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("fg-flusher".into())
            .spawn(move || flusher(thread_shared, tx, target, log))?;
        Ok(GroupCommit {
            shared,
            progress: rx,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Asks for a flush covering everything applied so far; returns the ticket to wait on.
    pub fn request(&self) -> u64 {
        let mut req = lock(&self.shared.requested);
        req.last += 1;
        let ticket = req.last;
        drop(req);
        self.shared.wake.notify_one();
        ticket
    }

    /// Waits until `ticket` is durable. Err when the flush covering it failed.
    pub async fn wait(&self, ticket: u64) -> Result<(), String> {
        let mut rx = self.progress.clone();
        let seen = rx
            .wait_for(|p| p.done >= ticket || p.failed >= ticket)
            .await
            .map(|p| *p)
            .map_err(|_| "the flusher has stopped".to_string())?;
        if seen.done >= ticket {
            Ok(())
        } else {
            Err("flushing the store to disk failed".to_string())
        }
    }

    /// Blocking form of `request` + `wait`, for the CLI and shutdown.
    pub fn flush_blocking(&self) -> Result<(), String> {
        let ticket = self.request();
        let mut p = lock(&self.shared.progress);
        while p.done < ticket && p.failed < ticket {
            p = self
                .shared
                .progressed
                .wait(p)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        if p.done >= ticket {
            Ok(())
        } else {
            Err("flushing the store to disk failed".into())
        }
    }

    /// Stops the flusher after a final flush of everything requested.
    pub fn stop(&self) {
        lock(&self.shared.requested).stop = true;
        self.shared.wake.notify_one();
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.stop();
    }
}

fn flusher(shared: Arc<Shared>, tx: watch::Sender<Progress>, target: SyncTarget, log: File) {
    let mut synced_blobs = HashSet::new();
    let mut progress = Progress::default();
    loop {
        let (upto, stop) = {
            let mut req = lock(&shared.requested);
            while req.last <= progress.done.max(progress.failed) && !req.stop {
                req = shared
                    .wake
                    .wait(req)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            (req.last, req.stop)
        };
        if upto > progress.done.max(progress.failed) {
            match target.sync(&log, &mut synced_blobs) {
                Ok(()) => progress.done = upto,
                Err(e) => {
                    tracing::error!(error = %e, "store flush failed; the writes waiting on it answer 503");
                    progress.failed = upto;
                }
            }
            tx.send_replace(progress);
            *lock(&shared.progress) = progress;
            shared.progressed.notify_all();
        }
        if stop {
            return;
        }
    }
}

/// fsyncs a directory so entries created in it survive power loss.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Locks a mutex, recovering from poisoning: the data behind these mutexes is plain
/// counters that stay consistent even if a holder panicked.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
