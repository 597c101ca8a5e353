//! The writes of a restore: sled inserts from writer threads of their own, fed in
//! chunks, while the importer's thread parses and checks the next records.
//!
//! A restore fills an empty store that nothing else reads, and stays invisible until
//! it has finished (the restore marker, `backup.rs`), so it needs neither sled's
//! batches nor their atomicity, and it pays for both: each `apply_batch` takes sled's
//! global write lock and seals its IO buffer twice (`pin_log`), so a 512-key batch was
//! the unit of a pwrite and of a wake-up of sled's IO threads (measured: plain inserts
//! took half the CPU of 512-key batches for the same restore, bench/results/backup.md).
//!
//! Keys go to a writer by key space, so two writers never insert into the same
//! leaves (sled resolves such races by redoing the insert: with chunks shared between
//! two writers a restore took 1.7x the CPU of one writer; split by space, the same).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::super::Kind;
use super::ImportError;

/// Writer threads: one for the device index, one for every other space. (Two
/// writers sharing every space cost more CPU than one, in redone inserts.)
const WRITERS: usize = 2;
/// Keys handed to a writer at a time.
const CHUNK: usize = 1024;
/// Chunks queued ahead of each writer: bounds what a restore holds in memory.
const QUEUED: usize = 8;
/// Keys between sled flushes: sled holds what it has not written in memory (its
/// flush timer is off), so a restore writes out as it goes. The flushes run on a
/// thread of their own, so neither the importer nor the writers wait for them; what
/// makes the restore durable is the store's flush at the end (`Importer::finish`).
const FLUSH_EVERY: u64 = 32 * 1024;

type Chunk = Vec<(Vec<u8>, Vec<u8>)>;

/// One writer thread and the chunk being filled for it.
struct Lane {
    chunk: Chunk,
    tx: Option<SyncSender<Chunk>>,
    worker: Option<JoinHandle<Result<(), sled::Error>>>,
}

/// The writer threads of one restore.
pub(super) struct Bulk {
    lanes: Vec<Lane>,
    /// Wakes the flusher (a flush already asked for covers a second request).
    flush_tx: Option<SyncSender<()>>,
    flusher: Option<JoinHandle<Result<(), sled::Error>>>,
    stop: Arc<AtomicBool>,
    since_flush: u64,
}

impl Bulk {
    pub(super) fn new(db: &sled::Db, tree: &sled::Tree) -> Bulk {
        let stop = Arc::new(AtomicBool::new(false));
        let lanes = (0..WRITERS)
            .map(|_| {
                let (tx, rx) = sync_channel::<Chunk>(QUEUED);
                let (tree, stop) = (tree.clone(), Arc::clone(&stop));
                Lane {
                    chunk: Vec::with_capacity(CHUNK),
                    tx: Some(tx),
                    worker: Some(std::thread::spawn(move || write_chunks(&tree, &rx, &stop))),
                }
            })
            .collect();
        let (flush_tx, flush_rx) = sync_channel::<()>(1);
        let db = db.clone();
        let flusher = std::thread::spawn(move || {
            while flush_rx.recv().is_ok() {
                db.flush()?;
            }
            Ok(())
        });
        Bulk {
            lanes,
            flush_tx: Some(flush_tx),
            flusher: Some(flusher),
            stop,
            since_flush: 0,
        }
    }

    /// Queues one key of space `kind` (`k` is the full key); an error is a writer's,
    /// and ends the restore.
    pub(super) fn put(&mut self, kind: Kind, k: Vec<u8>, v: Vec<u8>) -> Result<(), ImportError> {
        // The device index is most of a store's keys (a key per device per group).
        let lane = usize::from(kind == Kind::Devices);
        let chunk = &mut self.lanes[lane].chunk;
        chunk.push((k, v));
        if chunk.len() >= CHUNK {
            self.send(lane)?;
        }
        Ok(())
    }

    fn send(&mut self, lane: usize) -> Result<(), ImportError> {
        let l = &mut self.lanes[lane];
        let chunk = std::mem::replace(&mut l.chunk, Vec::with_capacity(CHUNK));
        self.since_flush += chunk.len() as u64;
        if !l.tx.as_ref().is_some_and(|tx| tx.send(chunk).is_ok()) {
            // The writer has stopped: it failed, and says why.
            return self.join();
        }
        if self.since_flush >= FLUSH_EVERY {
            self.since_flush = 0;
            if let Some(tx) = &self.flush_tx {
                match tx.try_send(()) {
                    Ok(()) | Err(TrySendError::Full(())) => {}
                    // The flusher has stopped: a flush failed, and says why.
                    Err(TrySendError::Disconnected(())) => return self.join(),
                }
            }
        }
        Ok(())
    }

    /// Writes what is queued and waits for the writers; the first error, if any.
    pub(super) fn finish(&mut self) -> Result<(), ImportError> {
        for lane in 0..self.lanes.len() {
            if !self.lanes[lane].chunk.is_empty() {
                self.send(lane)?;
            }
        }
        self.join()
    }

    fn join(&mut self) -> Result<(), ImportError> {
        let mut result = Ok(());
        for lane in &mut self.lanes {
            lane.tx = None;
            let Some(worker) = lane.worker.take() else {
                continue;
            };
            let r = match worker.join() {
                Ok(r) => r.map_err(|e| ImportError::Write(e.to_string())),
                Err(_) => Err(ImportError::Write("a writer thread panicked".into())),
            };
            if result.is_ok() {
                result = r;
            }
        }
        self.flush_tx = None;
        if let Some(flusher) = self.flusher.take() {
            let r = match flusher.join() {
                Ok(r) => r.map_err(|e| ImportError::Write(e.to_string())),
                Err(_) => Err(ImportError::Write("the flusher thread panicked".into())),
            };
            if result.is_ok() {
                result = r;
            }
        }
        result
    }
}

impl Drop for Bulk {
    /// A restore that failed stops its writers before the store is removed.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.join();
    }
}

/// One writer: inserts chunks until its queue closes, a writer fails, or the restore
/// stops.
fn write_chunks(
    tree: &sled::Tree,
    rx: &Receiver<Chunk>,
    stop: &AtomicBool,
) -> Result<(), sled::Error> {
    while let Ok(chunk) = rx.recv() {
        for (k, v) in chunk {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            if let Err(e) = tree.insert(k, v) {
                stop.store(true, Ordering::SeqCst);
                return Err(e);
            }
        }
    }
    Ok(())
}
