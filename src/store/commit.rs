//! Group commit: the one place that makes writes durable. A writer applies its change in
//! memory (a sled transaction), then asks for a flush and waits. One background thread
//! flushes sled's log and then `fdatasync`s the log file and any new blob files,
//! covering every write that asked before the flush began: N concurrent writers share
//! one fsync instead of paying N.
//!
//! A failed flush is sticky: the disk is not trusted again until a restart, so every
//! later ticket fails too. Before any outcome is published, the flusher calls the
//! store's outcome hook: after a good flush it makes the covered changes visible (so a
//! writer's own read after its 2xx sees its change), after a failed one it marks the
//! store failed; what no flush covered was never visible (`space.rs`), so nothing a
//! writer was refused can be seen.
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

use crate::sync::lock;

/// Flush progress: every ticket `<= done` is durable; once `broken`, every later ticket
/// fails; `closed` means the flusher has stopped and takes no more tickets.
#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    done: u64,
    broken: bool,
    closed: bool,
}

impl Progress {
    /// The outcome of `ticket`, if it is known yet.
    fn outcome(&self, ticket: u64) -> Option<Result<(), String>> {
        if self.done >= ticket {
            Some(Ok(()))
        } else if self.broken {
            Some(Err("flushing the store to disk failed".to_string()))
        } else if self.closed {
            Some(Err("the store is closed".to_string()))
        } else {
            None
        }
    }
}

/// Called by the flusher after every flush and before anyone hears of it: `Some(done)`
/// when every ticket up to `done` is durable, None when the flush failed.
pub type OutcomeHook = Box<dyn FnMut(Option<u64>) + Send>;

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
    /// Counters for `/metrics`: how often and how long the flusher works.
    pub stats: Arc<FlushStats>,
    progress: watch::Receiver<Progress>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Follows the flusher's published outcomes without asking for a flush: whoever waits
/// for the store's visible seq to move (the replicator) sleeps until the next outcome
/// instead of polling.
pub struct FlushWatch(watch::Receiver<Progress>);

impl FlushWatch {
    /// Marks every outcome so far as seen: `changed` then waits for a later one.
    pub fn mark_seen(&mut self) {
        self.0.borrow_and_update();
    }

    /// Returns after the next published outcome; never, once the flusher has stopped
    /// (nothing will move again).
    pub async fn changed(&mut self) {
        if self.0.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Flusher counters (monotonic), exported as Prometheus counters.
#[derive(Debug, Default)]
pub struct FlushStats {
    /// Completed flushes.
    pub flushes: std::sync::atomic::AtomicU64,
    /// Tickets (acknowledged writes and other waits) those flushes covered.
    pub tickets: std::sync::atomic::AtomicU64,
    /// Microseconds spent in sled's `flush()` (log write + `sync_file_range`).
    pub sled_micros: std::sync::atomic::AtomicU64,
    /// Microseconds spent in `fdatasync` of the log and blob files.
    pub sync_micros: std::sync::atomic::AtomicU64,
}

/// What the flusher needs to make sled's files durable.
pub struct SyncTarget {
    pub db: sled::Db,
    pub dir: PathBuf,
    /// Test-only fault injection: report failure after this many successful flushes
    /// (`FLEETGROUPS_FAULT_FAIL_FLUSH_AFTER`, see config.rs). `None` in production.
    pub fail_after: Option<u64>,
    /// Flush on this timer even when nobody asks (relaxed durability: nobody waits,
    /// and sled's own timer is off so that nothing reaches the disk behind the
    /// flusher's back).
    pub every: Option<std::time::Duration>,
}

impl SyncTarget {
    /// Flushes sled and fsyncs its files. Blob files already synced are remembered.
    fn sync(
        &self,
        log: &File,
        synced_blobs: &mut HashSet<PathBuf>,
        succeeded: u64,
        stats: &FlushStats,
    ) -> std::io::Result<()> {
        if self.fail_after.is_some_and(|n| succeeded >= n) {
            // Like a disk that refuses writes: nothing reaches the files.
            return Err(std::io::Error::other(
                "injected fault (FLEETGROUPS_FAULT_FAIL_FLUSH_AFTER)",
            ));
        }
        let started = std::time::Instant::now();
        self.db
            .flush()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let flushed = std::time::Instant::now();
        log.sync_data()?;
        add_micros(&stats.sled_micros, flushed - started);
        let blobs = self.dir.join("blobs");
        let mut new_blob = false;
        if let Ok(entries) = std::fs::read_dir(&blobs) {
            let mut present = HashSet::new();
            for entry in entries.flatten() {
                let path = entry.path();
                if !synced_blobs.contains(&path) {
                    match File::open(&path) {
                        Ok(f) => f.sync_all()?,
                        // sled removed it between the listing and the open: a blob
                        // that is gone needs no sync (and failing the flush for it
                        // would fail the store).
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(e),
                    }
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
        add_micros(&stats.sync_micros, flushed.elapsed());
        Ok(())
    }
}

fn add_micros(counter: &std::sync::atomic::AtomicU64, d: std::time::Duration) {
    counter.fetch_add(
        u64::try_from(d.as_micros()).unwrap_or(u64::MAX),
        std::sync::atomic::Ordering::Relaxed,
    );
}

impl GroupCommit {
    /// Starts the flusher thread for a store in `target.dir`.
    pub fn start(target: SyncTarget, hook: OutcomeHook) -> std::io::Result<GroupCommit> {
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
        let stats = Arc::new(FlushStats::default());
        let thread_stats = Arc::clone(&stats);
        let thread = std::thread::Builder::new()
            .name("fg-flusher".into())
            .spawn(move || flusher(thread_shared, tx, target, log, hook, &thread_stats))?;
        Ok(GroupCommit {
            shared,
            stats,
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

    /// The number of tickets handed out so far. A change applied before this call is
    /// covered by every flush whose ticket is greater than the value returned.
    pub fn last_requested(&self) -> u64 {
        lock(&self.shared.requested).last
    }

    /// Waits until `ticket` is durable. Err when the flush covering it failed.
    pub async fn wait(&self, ticket: u64) -> Result<(), String> {
        let mut rx = self.progress.clone();
        let seen = rx
            .wait_for(|p| p.outcome(ticket).is_some())
            .await
            .map(|p| *p)
            .map_err(|_| "the flusher has stopped".to_string())?;
        seen.outcome(ticket)
            .unwrap_or_else(|| Err("the flusher has stopped".to_string()))
    }

    /// A follower of flush outcomes that holds no ticket (`FlushWatch`).
    pub fn watch(&self) -> FlushWatch {
        FlushWatch(self.progress.clone())
    }

    /// Blocking form of `request` + `wait`, for the CLI and shutdown. Never waits on a
    /// stopped flusher: after `stop` it answers Err at once.
    pub fn flush_blocking(&self) -> Result<(), String> {
        let ticket = self.request();
        let mut p = lock(&self.shared.progress);
        loop {
            if let Some(outcome) = p.outcome(ticket) {
                return outcome;
            }
            p = self
                .shared
                .progressed
                .wait(p)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
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

/// The flusher thread: waits for a ticket (or the relaxed timer), syncs, tells the
/// hook the outcome before any waiter hears of it, then publishes the progress. One
/// function on purpose: that order is what "visible means durable" rests on
/// (`space.rs`), and the crash harnesses check it as it is written here.
fn flusher(
    shared: Arc<Shared>,
    tx: watch::Sender<Progress>,
    target: SyncTarget,
    log: File,
    mut hook: OutcomeHook,
    stats: &FlushStats,
) {
    let mut synced_blobs = HashSet::new();
    let mut progress = Progress::default();
    let mut succeeded = 0u64;
    let publish = |progress: Progress| {
        tx.send_replace(progress);
        *lock(&shared.progress) = progress;
        shared.progressed.notify_all();
    };
    loop {
        let (upto, stop, timer) = {
            let mut req = lock(&shared.requested);
            let mut timer = false;
            // Once broken, nothing is flushed again: waiters already see the failure.
            while (req.last <= progress.done || progress.broken) && !req.stop {
                match target.every {
                    Some(every) if !progress.broken => {
                        let (g, waited) = shared
                            .wake
                            .wait_timeout(req, every)
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        req = g;
                        if waited.timed_out() {
                            timer = true;
                            break;
                        }
                    }
                    _ => {
                        req = shared
                            .wake
                            .wait(req)
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                    }
                }
            }
            (req.last, req.stop, timer)
        };
        if (upto > progress.done || timer) && !progress.broken {
            match target.sync(&log, &mut synced_blobs, succeeded, stats) {
                Ok(()) => {
                    succeeded += 1;
                    stats
                        .flushes
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    stats
                        .tickets
                        .fetch_add(upto - progress.done, std::sync::atomic::Ordering::Relaxed);
                    progress.done = upto;
                    hook(Some(upto));
                }
                Err(e) => {
                    tracing::error!(error = %e, "store flush failed; the changes it should have made durable stay invisible; writes answer 503 until restart");
                    hook(None);
                    progress.broken = true;
                }
            }
            publish(progress);
        }
        if stop {
            progress.closed = true;
            publish(progress);
            return;
        }
    }
}

/// fsyncs a directory so entries created in it survive power loss.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}
