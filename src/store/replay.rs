//! Opening the write-ahead log and bringing sled up to it: the frames the last run
//! logged after its last checkpoint are applied again, in order, before anything else
//! reads the store. They hold after-images, so a frame sled already has (its applied
//! mark, `META_WAL_APPLIED`, is past the checkpoint) is applied again harmlessly, and a
//! replay cut short by a crash is simply done again at the next start.
//!
//! What the log and sled say of each other is checked first: sled behind the
//! checkpoint (it lost what a checkpoint made durable) or ahead of the log's end (the
//! log lost frames sled was given) is damage, refused like any other (`OpenError::Damaged`).

use std::path::Path;

use super::commit::META_WAL_APPLIED;
use super::memtable::decode;
use super::wal::{Log, LogError, LogOptions};
use super::{keys, OpenError, WAL_DIR};

/// Bytes of records applied to sled per batch during a replay.
const REPLAY_BATCH_BYTES: usize = 4 << 20;

/// The opened log, continuing after its last frame, and its checkpoint.
pub(super) struct Replayed {
    pub log: Log,
    pub checkpoint: u64,
}

/// Opens the log of the store in `dir` (creating it for a new store or one of an
/// older format, whose sled held everything it acknowledged) and replays into `tree`
/// what lies after the checkpoint. `has_log`: the store's format has a log, so a
/// missing one is damage.
pub(super) fn open_and_replay(
    data_dir: &Path,
    dir: &Path,
    tree: &sled::Tree,
    has_log: bool,
    bounds: super::LogBounds,
) -> Result<Replayed, OpenError> {
    let damaged = |what: String| OpenError::Damaged {
        path: data_dir.to_path_buf(),
        what,
    };
    let wal_dir = dir.join(WAL_DIR);
    if has_log && !wal_dir.exists() {
        return Err(damaged(format!(
            "its write-ahead log {} is missing",
            wal_dir.display()
        )));
    }
    let recovered = Log::open(
        &wal_dir,
        LogOptions {
            segment_bytes: bounds.segment_bytes,
        },
    )
    .map_err(|e| match e {
        LogError::Damaged(what) => damaged(format!("its write-ahead log is damaged: {what}")),
        LogError::Io { .. } => OpenError::Other(format!(
            "cannot read the write-ahead log in {}: {e}",
            wal_dir.display()
        )),
    })?;
    let applied = tree
        .get(META_WAL_APPLIED)
        .map_err(|e| OpenError::Other(format!("reading the store: {e}")))?
        .and_then(|v| keys::read_u64(&v))
        .unwrap_or(0);
    let checkpoint = recovered.checkpoint;
    let last = recovered.log.last();
    if applied < checkpoint {
        return Err(damaged(format!(
            "it holds the log's changes up to {applied}, but a checkpoint had made them durable up to {checkpoint}"
        )));
    }
    if applied > last {
        return Err(damaged(format!(
            "it holds the log's changes up to {applied}, but the log ends at {last}"
        )));
    }
    let started = std::time::Instant::now();
    let mut batch = sled::Batch::default();
    let mut in_batch = 0usize;
    let mut writes = 0u64;
    let frames = recovered.frames.len();
    let apply = |batch: sled::Batch, upto: u64| {
        let mut batch = batch;
        batch.insert(META_WAL_APPLIED, &upto.to_be_bytes());
        tree.apply_batch(batch)
            .map_err(|e| OpenError::Other(format!("replaying the write-ahead log: {e}")))
    };
    for frame in recovered.frames {
        let records = decode(&frame.payload).map_err(|what| {
            damaged(format!(
                "its write-ahead log frame {}..={} passed its checksum but {what}",
                frame.first, frame.last
            ))
        })?;
        for (_, ws) in records {
            for w in ws {
                writes += 1;
                in_batch += w.key.len() + w.value.as_ref().map_or(0, |v| v.len());
                match w.value {
                    Some(v) => batch.insert(w.key, v),
                    None => batch.remove(w.key),
                }
            }
        }
        if in_batch >= REPLAY_BATCH_BYTES {
            apply(std::mem::take(&mut batch), frame.last)?;
            in_batch = 0;
        }
    }
    if frames > 0 {
        apply(batch, last)?;
        tracing::info!(
            frames,
            writes,
            from = checkpoint + 1,
            to = last,
            millis = started.elapsed().as_millis() as u64,
            "replayed the store's write-ahead log after an unclean stop"
        );
    }
    Ok(Replayed {
        log: recovered.log,
        checkpoint,
    })
}
