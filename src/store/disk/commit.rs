//! The write path: log first, apply after. A writer hands its after-images to
//! [`Engine::submit`], which gives them the next log sequence and puts them in the
//! memtable (`memtable.rs`), invisible to readers. One log thread takes everything
//! submitted since its last append as one frame, appends it to the write-ahead log
//! (`wal.rs`) with one `fdatasync`, and only then marks it durable: the values become
//! visible and the waiting writers hear that their change is durable (group commit: N
//! writers share one fsync). The applier thread then writes whole frames into sled in
//! one merged `apply_batch` per round, with the log sequence they cover in the same
//! batch (`META_WAL_APPLIED`), and trims them from the memtable.
//!
//! Writers never wait for sled: the applier flushes it after each round it applies
//! (`sync_sled`: a reordering disk must not find more than one round unsynced). A
//! checkpoint (on a size or time bound, and
//! whenever a caller needs sled itself durable: close, backup, restore, the CLI) flushes
//! sled, `fdatasync`s its files, then tells the log that everything up to the applied
//! sequence is in the store, so the log recycles those segments. After a crash, the
//! frames after the checkpoint are replayed into sled (`Store::open`); they hold
//! after-images, so replaying one twice changes nothing.
//!
//! A failed append or apply is sticky: the store is failed, every later write is
//! refused, and what no append covered was never visible, so nothing a writer was
//! refused can be seen. Reads go on from sled and the memtable.

use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::memtable::{encode, Memtable, Write};
use super::wal::{make_spare, Log};
use crate::sync::lock;

/// The meta key (full key, `m` space) that holds the highest log sequence sled holds,
/// written in the same batch as the writes it covers.
pub const META_WAL_APPLIED: &[u8] = b"mwal_applied";

/// At most this many bytes of records go in one frame (more wait for the next one; a
/// single larger write goes alone).
const FRAME_MAX: usize = 4 << 20;
/// Writers wait while the memtable holds more than this (the applier is behind): the
/// bound on what logged-but-unapplied values can cost.
pub const MEMTABLE_MAX: usize = 64 << 20;

/// Log progress: every sequence `<= done` is durable; once `broken`, nothing more is;
/// `closed` means the log thread has stopped.
#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    done: u64,
    broken: bool,
    closed: bool,
}

impl Progress {
    /// The outcome for sequence `seq`, if it is known yet.
    fn outcome(&self, seq: u64) -> Option<Result<(), String>> {
        if self.done >= seq {
            Some(Ok(()))
        } else if self.broken {
            Some(Err("writing the store's log failed".to_string()))
        } else if self.closed {
            Some(Err("the store is closed".to_string()))
        } else {
            None
        }
    }
}

/// Writes submitted and not yet taken by the log thread.
#[derive(Default)]
struct Queue {
    /// The next log sequence to hand out.
    next: u64,
    /// Encoded records, in sequence order, and the writes they hold.
    buf: Vec<u8>,
    writes: Records,
    /// (log sequence, change-feed seq it brings once durable), oldest first.
    changes: VecDeque<(u64, u64)>,
    stop: bool,
}

/// Writes with their log sequences, in order.
type Records = Vec<(u64, Vec<Write>)>;

/// A durable frame on its way to sled.
struct Frame {
    last: u64,
    writes: Records,
    /// Its size in the log (what checkpoints are counted in).
    bytes: u64,
}

/// What the applier is sent: a durable frame to apply, or a checkpoint to make.
enum Msg {
    Frame(Frame),
    Checkpoint(mpsc::Sender<Result<(), String>>),
}

/// What the log thread takes from the queue for one frame.
struct Taken {
    buf: Vec<u8>,
    writes: Records,
    changes: Vec<(u64, u64)>,
    stop: bool,
}

impl Shared {
    /// The state of a log whose every sequence up to `last` is durable.
    fn new(last: u64) -> Shared {
        Shared {
            queue: Mutex::new(Queue {
                next: last + 1,
                ..Queue::default()
            }),
            wake: Condvar::new(),
            room: Condvar::new(),
            progress: Mutex::new(Progress {
                done: last,
                ..Progress::default()
            }),
            progressed: Condvar::new(),
            failed: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            visible_seq: AtomicU64::new(0),
            broke: Mutex::new(None),
        }
    }
}

struct Shared {
    queue: Mutex<Queue>,
    /// Wakes the log thread.
    wake: Condvar,
    /// Wakes writers waiting for room in the memtable.
    room: Condvar,
    progress: Mutex<Progress>,
    progressed: Condvar,
    /// A write, append, apply or checkpoint failed: no change is taken until restart.
    failed: AtomicBool,
    /// A clean close has begun: nothing at all may be written any more.
    closed: AtomicBool,
    /// Every change-feed entry up to this `seq` is visible.
    visible_seq: AtomicU64,
    /// Why the log broke (the OS's error), for the messages of the writes it fails.
    broke: Mutex<Option<String>>,
}

impl Shared {
    /// `outcome` with the reason the log broke, when it did.
    fn explain(&self, outcome: Result<(), String>) -> Result<(), String> {
        outcome.map_err(|e| match lock(&self.broke).as_deref() {
            Some(why) => format!("{e}: {why}"),
            None => e,
        })
    }
}

/// Counters for `/metrics` (monotonic).
#[derive(Debug, Default)]
pub struct FlushStats {
    /// Log appends (frames).
    pub flushes: AtomicU64,
    /// Writes those appends covered.
    pub tickets: AtomicU64,
    /// Microseconds spent applying frames to sled and in checkpoints.
    pub sled_micros: AtomicU64,
    /// Microseconds spent in the log's write + `fdatasync`.
    pub sync_micros: AtomicU64,
    /// Checkpoints made.
    pub checkpoints: AtomicU64,
}

/// What the checkpoint needs to make sled's files durable.
pub struct SyncTarget {
    pub db: sled::Db,
    pub dir: PathBuf,
    /// Test-only fault injection: log appends fail after this many successful ones
    /// (`FLEETGROUPS_FAULT_FAIL_FLUSH_AFTER`, see config.rs). `None` in production.
    pub fail_after: Option<u64>,
    /// Relaxed durability: writers do not wait for the log, and their values are
    /// visible at once.
    pub relaxed: bool,
    /// When checkpoints run.
    pub bounds: crate::store::LogBounds,
}

impl SyncTarget {
    /// Flushes sled and fsyncs its files. Blob files already synced are remembered.
    /// sled 0.34.7's `flush()` ends in `sync_file_range`, which neither flushes the
    /// drive's cache nor the file's length; large values ("blobs") are written to their
    /// own files without any sync: `fdatasync` of the log and `sync_all` of new blobs
    /// and their directory close that gap.
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
                    match File::open(&path) {
                        Ok(f) => f.sync_all()?,
                        // sled removed it between the listing and the open.
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(e),
                    }
                    new_blob = true;
                }
                present.insert(path);
            }
            synced_blobs.retain(|p| present.contains(p));
            synced_blobs.extend(present);
        }
        if new_blob {
            File::open(&blobs)?.sync_all()?;
        }
        Ok(())
    }
}

fn add_micros(counter: &AtomicU64, d: Duration) {
    counter.fetch_add(
        u64::try_from(d.as_micros()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
}

/// The write path's threads and what writers and waiters share with them.
pub struct Engine {
    pub mem: Arc<Memtable>,
    shared: Arc<Shared>,
    pub stats: Arc<FlushStats>,
    progress: watch::Receiver<Progress>,
    to_applier: Mutex<Option<mpsc::Sender<Msg>>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    relaxed: bool,
}

/// Follows the log's published progress without asking for anything: whoever waits
/// for the store's visible seq to move (the replicator) sleeps until the next append.
pub struct FlushWatch(watch::Receiver<Progress>);

impl FlushWatch {
    /// Marks every outcome so far as seen: `changed` then waits for a later one.
    pub fn mark_seen(&mut self) {
        self.0.borrow_and_update();
    }

    /// Returns after the next published outcome; never, once the log thread has
    /// stopped (nothing will move again).
    pub async fn changed(&mut self) {
        if self.0.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Engine {
    /// Starts the log thread and the applier. `log` continues after its last frame
    /// (every sequence up to it is durable and applied to sled), `checkpoint` is what
    /// sled holds durably. The visible change-feed seq starts at 0: the open publishes
    /// it (`publish_seq`) once it has read the store.
    pub fn start(
        log: Log,
        checkpoint: u64,
        tree: sled::Tree,
        target: SyncTarget,
    ) -> std::io::Result<Engine> {
        let last = log.last();
        let sled_log = File::open(target.dir.join("db"))?;
        sync_dir(&target.dir)?;
        let shared = Arc::new(Shared::new(last));
        let mem = Arc::new(Memtable::new(last));
        let stats = Arc::new(FlushStats::default());
        let (tx, rx) = watch::channel(Progress {
            done: last,
            ..Progress::default()
        });
        let (to_applier, from_log) = mpsc::channel();
        let log = Arc::new(Mutex::new(log));
        let relaxed = target.relaxed;
        let fail_after = target.fail_after;
        let applier = Applier {
            tree,
            mem: Arc::clone(&mem),
            shared: Arc::clone(&shared),
            stats: Arc::clone(&stats),
            log: Arc::clone(&log),
            target,
            sled_log,
            synced_blobs: HashSet::new(),
            since_checkpoint: 0,
            applied: last,
            checkpointed: checkpoint,
            last_checkpoint: Instant::now(),
            broken: false,
        };
        let applier_thread = std::thread::Builder::new()
            .name("fg-apply".into())
            .spawn(move || applier.run(from_log))?;
        let log_thread = {
            let shared = Arc::clone(&shared);
            let mem = Arc::clone(&mem);
            let stats = Arc::clone(&stats);
            let to_applier = to_applier.clone();
            std::thread::Builder::new()
                .name("fg-log".into())
                .spawn(move || {
                    log_thread(&shared, &mem, &stats, &log, &tx, to_applier, fail_after)
                })?
        };
        Ok(Engine {
            mem,
            shared,
            stats,
            progress: rx,
            to_applier: Mutex::new(Some(to_applier)),
            threads: Mutex::new(vec![log_thread, applier_thread]),
            relaxed,
        })
    }

    /// Submits one write: its after-images get the next log sequence and go into the
    /// memtable, invisible until the log has them (`now`: visible at once — a write no
    /// acknowledgement depends on); `change_seq` is the change-feed seq it brings, once
    /// durable. Waits while the memtable is over its bound. Err once the store has
    /// failed or closed: nothing was recorded.
    pub fn submit(
        &self,
        writes: Vec<Write>,
        now: bool,
        change_seq: Option<u64>,
    ) -> Result<u64, String> {
        self.wait_for_room()?;
        let now = now || self.relaxed;
        let mut q = lock(&self.shared.queue);
        self.check_open()?;
        let seq = q.next;
        q.next += 1;
        self.mem.insert(seq, now, &writes);
        encode(seq, &writes, &mut q.buf);
        q.writes.push((seq, writes));
        if let Some(c) = change_seq {
            if self.relaxed {
                self.shared.visible_seq.fetch_max(c, Ordering::SeqCst);
            } else {
                q.changes.push_back((seq, c));
            }
        }
        drop(q);
        self.shared.wake.notify_one();
        Ok(seq)
    }

    /// Waits while the memtable holds more than `MEMTABLE_MAX` (the applier is behind).
    fn wait_for_room(&self) -> Result<(), String> {
        let mut q = lock(&self.shared.queue);
        while self.mem.bytes() > MEMTABLE_MAX {
            self.check_open()?;
            q = self
                .shared
                .room
                .wait_timeout(q, Duration::from_millis(10))
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        Ok(())
    }

    /// The last log sequence handed out.
    pub fn last_submitted(&self) -> u64 {
        lock(&self.shared.queue).next - 1
    }

    /// Err once failed or closed.
    pub fn check_open(&self) -> Result<(), String> {
        if self.failed() {
            Err("the store has failed and takes no more writes until restart".into())
        } else if self.shared.closed.load(Ordering::SeqCst) {
            Err("the store is closed".into())
        } else {
            Ok(())
        }
    }

    /// Marks the store failed: no change is taken again until restart.
    pub fn fail(&self) {
        self.shared.failed.store(true, Ordering::SeqCst);
    }

    /// Whether a write, append, apply or checkpoint has failed since the store opened.
    pub fn failed(&self) -> bool {
        self.shared.failed.load(Ordering::SeqCst)
    }

    /// Every change-feed entry up to this `seq` is visible.
    pub fn visible_seq(&self) -> u64 {
        self.shared.visible_seq.load(Ordering::SeqCst)
    }

    /// Makes `seq` visible at once (work done before anything is served: restore).
    pub fn publish_seq(&self, seq: u64) {
        self.shared.visible_seq.fetch_max(seq, Ordering::SeqCst);
    }

    /// Waits until everything submitted so far is durable in the log. Relaxed
    /// durability waits for nothing.
    pub async fn durable(&self) -> Result<(), String> {
        if self.relaxed {
            return Ok(());
        }
        let target = self.last_submitted();
        let mut rx = self.progress.clone();
        let seen = rx
            .wait_for(|p| p.outcome(target).is_some())
            .await
            .map(|p| *p)
            .map_err(|_| "the store's log has stopped".to_string())?;
        let outcome = seen
            .outcome(target)
            .unwrap_or_else(|| Err("the store's log has stopped".to_string()));
        self.shared.explain(outcome)
    }

    /// Blocking form of `durable` (whatever the durability setting).
    pub fn durable_blocking(&self) -> Result<(), String> {
        let target = self.last_submitted();
        let mut p = lock(&self.shared.progress);
        loop {
            if let Some(outcome) = p.outcome(target) {
                drop(p);
                return self.shared.explain(outcome);
            }
            p = self
                .shared
                .progressed
                .wait(p)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// Makes everything submitted so far durable in sled itself: the log appends it,
    /// the applier applies it, and a checkpoint flushes sled and lets the log recycle.
    /// For close, backup, restore and the CLI; blocking.
    pub fn checkpoint_blocking(&self) -> Result<(), String> {
        self.durable_blocking()?;
        let (reply, answer) = mpsc::channel();
        let sent = lock(&self.to_applier)
            .as_ref()
            .is_some_and(|tx| tx.send(Msg::Checkpoint(reply)).is_ok());
        if !sent {
            return Err("the store is closed".into());
        }
        answer
            .recv()
            .unwrap_or_else(|_| Err("the store's applier has stopped".into()))
    }

    /// A follower of the log's progress that asks for nothing (`FlushWatch`).
    pub fn watch(&self) -> FlushWatch {
        FlushWatch(self.progress.clone())
    }

    /// Takes no write of any kind from now on (a clean close, before the seal).
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
    }

    /// Stops the log thread (after it has appended everything submitted) and the
    /// applier (after it has applied everything appended).
    pub fn stop(&self) {
        lock(&self.shared.queue).stop = true;
        self.shared.wake.notify_one();
        lock(&self.to_applier).take();
        for t in lock(&self.threads).drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The log thread: takes what was submitted as one frame, appends it (one write, one
/// `fdatasync`), then — before any waiter hears of it — makes it visible and hands it
/// to the applier, then publishes the progress.
// Long because its order is what "visible means durable" rests on: one function keeps
// it readable top to bottom, as the crash harnesses check it.
fn log_thread(
    shared: &Shared,
    mem: &Memtable,
    stats: &FlushStats,
    log: &Mutex<Log>,
    tx: &watch::Sender<Progress>,
    to_applier: mpsc::Sender<Msg>,
    fail_after: Option<u64>,
) {
    let mut progress = *lock(&shared.progress);
    let mut appended = 0u64;
    let publish = |progress: Progress| {
        tx.send_replace(progress);
        *lock(&shared.progress) = progress;
        shared.progressed.notify_all();
    };
    loop {
        let Taken {
            buf,
            writes,
            changes,
            stop,
        } = {
            let mut q = lock(&shared.queue);
            while (q.writes.is_empty() || progress.broken) && !q.stop {
                q = shared
                    .wake
                    .wait(q)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            take_frame(&mut q)
        };
        if !writes.is_empty() && !progress.broken {
            let first = writes[0].0;
            let last = writes[writes.len() - 1].0;
            let started = Instant::now();
            let result = if fail_after.is_some_and(|n| appended >= n) {
                Err(std::io::Error::other(
                    "injected fault (FLEETGROUPS_FAULT_FAIL_FLUSH_AFTER)",
                ))
            } else {
                lock(log).append(first, last, &buf)
            };
            add_micros(&stats.sync_micros, started.elapsed());
            match result {
                Ok(()) => {
                    appended += 1;
                    stats.flushes.fetch_add(1, Ordering::Relaxed);
                    stats
                        .tickets
                        .fetch_add(writes.len() as u64, Ordering::Relaxed);
                    mem.set_durable(last);
                    for (_, c) in changes.iter().filter(|(s, _)| *s <= last) {
                        shared.visible_seq.fetch_max(*c, Ordering::SeqCst);
                    }
                    // Sent before the progress is published: a checkpoint asked for
                    // once the progress shows this frame finds it ahead in the channel.
                    let _ = to_applier.send(Msg::Frame(Frame {
                        last,
                        writes,
                        bytes: buf.len() as u64,
                    }));
                    progress.done = last;
                }
                Err(e) => {
                    tracing::error!(error = %e, "appending to the store's log failed; the changes it held stay invisible; writes answer 503 until restart");
                    *lock(&shared.broke) = Some(e.to_string());
                    shared.failed.store(true, Ordering::SeqCst);
                    progress.broken = true;
                }
            }
            publish(progress);
        }
        if stop && lock(&shared.queue).writes.is_empty() {
            progress.closed = true;
            publish(progress);
            return;
        }
    }
}

/// Takes up to `FRAME_MAX` bytes of records from the queue (at least one write).
fn take_frame(q: &mut Queue) -> Taken {
    let stop = q.stop;
    if q.buf.len() <= FRAME_MAX {
        return Taken {
            buf: std::mem::take(&mut q.buf),
            writes: std::mem::take(&mut q.writes),
            changes: q.changes.drain(..).collect(),
            stop,
        };
    }
    // Too much for one frame: whole records up to the bound, found by re-encoding the
    // writes one by one (rare: only when the log thread fell far behind).
    let mut buf = Vec::new();
    let mut n = 0;
    for (seq, w) in &q.writes {
        let before = buf.len();
        encode(*seq, w, &mut buf);
        if n > 0 && buf.len() > FRAME_MAX {
            buf.truncate(before);
            break;
        }
        n += 1;
    }
    let writes: Vec<_> = q.writes.drain(..n).collect();
    q.buf.drain(..buf.len());
    let last = writes.last().map_or(0, |(s, _)| *s);
    let mut changes = Vec::new();
    while q.changes.front().is_some_and(|(s, _)| *s <= last) {
        if let Some(c) = q.changes.pop_front() {
            changes.push(c);
        }
    }
    Taken {
        buf,
        writes,
        changes,
        stop,
    }
}

/// The applier thread's state.
struct Applier {
    tree: sled::Tree,
    mem: Arc<Memtable>,
    shared: Arc<Shared>,
    stats: Arc<FlushStats>,
    log: Arc<Mutex<Log>>,
    target: SyncTarget,
    sled_log: File,
    synced_blobs: HashSet<PathBuf>,
    /// Log bytes applied since the last checkpoint.
    since_checkpoint: u64,
    /// Every log sequence up to this is in sled (not necessarily durable there).
    applied: u64,
    /// … and up to this, durable in sled and recorded in the log.
    checkpointed: u64,
    last_checkpoint: Instant,
    /// An apply failed: nothing more goes into sled.
    broken: bool,
}

impl Applier {
    fn run(mut self, from_log: mpsc::Receiver<Msg>) {
        loop {
            let msg = match from_log.recv_timeout(Duration::from_secs(1)) {
                Ok(m) => Some(m),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            };
            let mut frames = Vec::new();
            let mut replies = Vec::new();
            let mut collect = |m: Msg| match m {
                Msg::Frame(f) => frames.push(f),
                Msg::Checkpoint(reply) => replies.push(reply),
            };
            if let Some(m) = msg {
                collect(m);
            }
            // Everything that arrived meanwhile goes in the same merged batch.
            while let Ok(m) = from_log.try_recv() {
                collect(m);
            }
            // Durable frames are applied even once a later append failed: sled then
            // holds what the log holds. Not once an apply failed: sled is not trusted.
            if !frames.is_empty() && !self.broken {
                self.broken = self.apply(frames).is_err() || self.sync_sled().is_err();
            }
            let bounds = self.target.bounds;
            let due = self.since_checkpoint >= bounds.checkpoint_bytes
                || (self.applied > self.checkpointed
                    && self.last_checkpoint.elapsed() >= bounds.checkpoint_every);
            let outcome = if self.shared.failed.load(Ordering::SeqCst) {
                Err("the store has failed; nothing more is written".to_string())
            } else if due || !replies.is_empty() {
                self.checkpoint()
            } else {
                Ok(())
            };
            for reply in replies {
                let _ = reply.send(outcome.clone());
            }
            self.make_spare();
        }
    }

    /// Zero-fills a spare segment when the log wants one, off the append path: the
    /// log is locked only to hand out the job and to take the file.
    fn make_spare(&self) {
        let Some(job) = lock(&self.log).spare_wanted() else {
            return;
        };
        match make_spare(&job) {
            Ok(()) => {
                if let Err(e) = lock(&self.log).add_spare(job) {
                    tracing::warn!(error = %e, "could not take a new spare segment of the store's log; the next segment is made when it is needed");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not make a spare segment of the store's log; the next segment is made when it is needed");
                lock(&self.log).spare_abandoned(job);
            }
        }
    }

    /// Applies whole frames to sled as one batch, with the sequence they cover, then
    /// trims them from the memtable — both under the apply lock, so a range chunk sees
    /// sled and the memtable at one log position.
    fn apply(&mut self, frames: Vec<Frame>) -> Result<(), ()> {
        let started = Instant::now();
        let upto = frames.last().map_or(self.applied, |f| f.last);
        let mut batch = sled::Batch::default();
        let mut bytes = 0;
        for frame in &frames {
            bytes += frame.bytes;
            for (_, ws) in &frame.writes {
                for w in ws {
                    match &w.value {
                        Some(v) => batch.insert(w.key.as_slice(), v.clone()),
                        None => batch.remove(w.key.as_slice()),
                    }
                }
            }
        }
        batch.insert(META_WAL_APPLIED, &upto.to_be_bytes());
        let guard = self.mem.apply_guard();
        if let Err(e) = self.tree.apply_batch(batch) {
            drop(guard);
            tracing::error!(error = %e, "applying logged changes to the store failed; they stay readable from memory; writes answer 503 until restart");
            self.shared.failed.store(true, Ordering::SeqCst);
            return Err(());
        }
        let keys = frames
            .iter()
            .flat_map(|f| f.writes.iter())
            .flat_map(|(_, ws)| ws.iter().map(|w| w.key.as_slice()));
        self.mem.trim(upto, keys);
        drop(guard);
        self.shared.room.notify_all();
        self.applied = upto;
        self.since_checkpoint += bytes;
        add_micros(&self.stats.sled_micros, started.elapsed());
        Ok(())
    }

    /// Makes what was just applied durable in sled's own files, off the writers' path
    /// (they waited for the log only). Why every round and not only at checkpoints: a
    /// disk that reorders unsynced writes can keep a later page of sled's log without
    /// an earlier one, and sled cannot read such a file back (the reordering power cut
    /// of tests/it/crash.rs found it); so sled's unsynced writes are never more than
    /// the round being applied, as before the log existed.
    fn sync_sled(&mut self) -> Result<(), ()> {
        let started = Instant::now();
        let result = self.target.sync(&self.sled_log, &mut self.synced_blobs);
        add_micros(&self.stats.sled_micros, started.elapsed());
        result.map_err(|e| {
            tracing::error!(error = %e, "flushing the store's applied changes failed; writes answer 503 until restart");
            self.shared.failed.store(true, Ordering::SeqCst);
        })
    }

    /// Flushes sled and fsyncs its files, then records in the log that everything up
    /// to `applied` is in the store (the log recycles what lies below). The flush stays
    /// even right after a round's `sync_sled`: a restore writes into sled directly, not
    /// through the applier, and its checkpoint is what makes those writes durable.
    fn checkpoint(&mut self) -> Result<(), String> {
        let started = Instant::now();
        let upto = self.applied;
        let result = self
            .target
            .sync(&self.sled_log, &mut self.synced_blobs)
            .and_then(|()| {
                if upto > self.checkpointed {
                    lock(&self.log).checkpoint(upto)
                } else {
                    Ok(())
                }
            });
        add_micros(&self.stats.sled_micros, started.elapsed());
        match result {
            Ok(()) => {
                self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
                self.checkpointed = upto;
                self.since_checkpoint = 0;
                self.last_checkpoint = Instant::now();
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "the store's checkpoint failed (flushing sled or recording it in the log); writes answer 503 until restart");
                self.shared.failed.store(true, Ordering::SeqCst);
                Err(format!("the store's checkpoint failed: {e}"))
            }
        }
    }
}

/// fsyncs a directory so entries created in it survive power loss.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}
