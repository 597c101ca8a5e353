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
use crate::store::{keys, OpenError, WAL_DIR};

/// Bytes of records applied to sled per batch during a replay.
const REPLAY_BATCH_BYTES: usize = 4 << 20;

/// The opened log, continuing after its last frame, and its checkpoint.
pub(in crate::store) struct Replayed {
    pub log: Log,
    pub checkpoint: u64,
}

/// Opens the log of the store in `dir` (creating it for a new store or one of an
/// older format, whose sled held everything it acknowledged) and replays into `tree`
/// what lies after the checkpoint. `has_log`: the store's format has a log, so a
/// missing one is damage.
pub(in crate::store) fn open_and_replay(
    data_dir: &Path,
    dir: &Path,
    tree: &sled::Tree,
    has_log: bool,
    bounds: crate::store::LogBounds,
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
            ..LogOptions::default()
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
    replay(data_dir, tree, recovered.frames, checkpoint, last)?;
    Ok(Replayed {
        log: recovered.log,
        checkpoint,
    })
}

/// Applies `frames` (the log after `checkpoint`, ending at `last`) to `tree` in order,
/// `REPLAY_BATCH_BYTES` at a time, each batch with the sequence it reaches.
fn replay(
    data_dir: &Path,
    tree: &sled::Tree,
    frames: Vec<super::wal::Frame>,
    checkpoint: u64,
    last: u64,
) -> Result<(), OpenError> {
    let damaged = |what: String| OpenError::Damaged {
        path: data_dir.to_path_buf(),
        what,
    };
    let started = std::time::Instant::now();
    let mut batch = sled::Batch::default();
    let mut in_batch = 0usize;
    let mut writes = 0u64;
    let count = frames.len();
    let bytes: usize = frames.iter().map(|f| f.payload.len()).sum();
    let apply = |batch: sled::Batch, upto: u64| {
        let mut batch = batch;
        batch.insert(META_WAL_APPLIED, &upto.to_be_bytes());
        tree.apply_batch(batch)
            .map_err(|e| OpenError::Other(format!("replaying the write-ahead log: {e}")))
    };
    for frame in frames {
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
    if count > 0 {
        apply(batch, last)?;
        tracing::info!(
            frames = count,
            bytes,
            writes,
            from = checkpoint + 1,
            to = last,
            millis = started.elapsed().as_millis() as u64,
            "replayed the store's write-ahead log after an unclean stop"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::super::memtable::{encode, Write};
    use super::super::wal::{Log, LogOptions};
    use super::*;
    use crate::store::LogBounds;

    /// One write: (key byte, value byte or removal).
    type Step = Vec<(u8, Option<u8>)>;

    fn writes(step: &Step) -> Vec<Write> {
        step.iter()
            .map(|(k, v)| Write {
                key: vec![b'x', *k],
                value: v.map(|v| sled::IVec::from(vec![v])),
            })
            .collect()
    }

    fn apply_to(tree: &sled::Tree, steps: &[Step], upto: u64) {
        for (i, step) in steps.iter().enumerate() {
            let mut batch = sled::Batch::default();
            for w in writes(step) {
                match w.value {
                    Some(v) => batch.insert(w.key, v),
                    None => batch.remove(w.key),
                }
            }
            batch.insert(META_WAL_APPLIED, &(i as u64 + 1).to_be_bytes());
            tree.apply_batch(batch).unwrap();
            if i as u64 + 1 == upto {
                return;
            }
        }
    }

    fn model(steps: &[Step]) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let mut m = BTreeMap::new();
        for step in steps {
            for (k, v) in step {
                match v {
                    Some(v) => m.insert(vec![b'x', *k], vec![*v]),
                    None => m.remove(&vec![b'x', *k]),
                };
            }
        }
        m
    }

    fn state(tree: &sled::Tree) -> BTreeMap<Vec<u8>, Vec<u8>> {
        tree.scan_prefix(b"x")
            .map(|kv| kv.unwrap())
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect()
    }

    fn bounds() -> LogBounds {
        LogBounds {
            segment_bytes: 64 << 10,
            ..LogBounds::default()
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Whatever sled had applied when the process died (at or past the
        /// checkpoint), the replay leaves exactly the state after every logged write,
        /// and a second replay (a crash during the first) leaves the same.
        #[test]
        fn a_replay_leaves_the_state_after_every_logged_write(
            steps in proptest::collection::vec(
                proptest::collection::vec((0u8..12, proptest::option::of(any::<u8>())), 1..4),
                1..30,
            ),
            checkpoint_at in 0usize..30,
            applied_past in 0usize..30,
        ) {
            let n = steps.len() as u64;
            let checkpoint = (checkpoint_at as u64).min(n);
            let applied = (checkpoint + applied_past as u64).min(n);
            let dir = tempfile::tempdir().unwrap();
            let store = dir.path().join("store");
            let db = sled::open(&store).unwrap();
            {
                let mut log = Log::open(&store.join(WAL_DIR), LogOptions { segment_bytes: 64 << 10, ..LogOptions::default() })
                    .unwrap()
                    .log;
                for (i, step) in steps.iter().enumerate() {
                    let seq = i as u64 + 1;
                    let mut payload = Vec::new();
                    encode(seq, &writes(step), &mut payload);
                    log.append(seq, seq, &payload).unwrap();
                }
                apply_to(&db, &steps, applied);
                db.flush().unwrap();
                if checkpoint > 0 {
                    log.checkpoint(checkpoint).unwrap();
                }
            }
            // One sled handle throughout: a reopen could race sled's own threads for
            // its file lock. Two replays on it are a replay done again after a crash.
            for _ in 0..2 {
                let replayed = open_and_replay(dir.path(), &store, &db, true, bounds()).unwrap();
                prop_assert_eq!(replayed.log.last(), n);
                prop_assert_eq!(state(&db), model(&steps));
            }
        }
    }

    /// sled ahead of the log (the log lost frames sled was given) and sled behind the
    /// checkpoint (sled lost what a checkpoint made durable) are both damage.
    #[test]
    fn sled_and_the_log_disagreeing_is_damage() {
        for (sled_at, log_frames, checkpoint, needle) in [
            (5u64, 3u64, 0u64, "but the log ends at 3"),
            (1, 4, 3, "a checkpoint had made them durable up to 3"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let store = dir.path().join("store");
            let mut log = Log::open(
                &store.join(WAL_DIR),
                LogOptions {
                    segment_bytes: 64 << 10,
                    ..LogOptions::default()
                },
            )
            .unwrap()
            .log;
            for seq in 1..=log_frames {
                let mut payload = Vec::new();
                encode(seq, &[], &mut payload);
                log.append(seq, seq, &payload).unwrap();
            }
            if checkpoint > 0 {
                log.checkpoint(checkpoint).unwrap();
            }
            drop(log);
            let db = sled::open(&store).unwrap();
            db.insert(META_WAL_APPLIED, &sled_at.to_be_bytes()).unwrap();
            match open_and_replay(dir.path(), &store, &db, true, bounds()) {
                Err(OpenError::Damaged { what, .. }) => assert!(what.contains(needle), "{what}"),
                Err(e) => panic!("{e}"),
                Ok(_) => panic!("sled at {sled_at}, log of {log_frames}: accepted"),
            }
        }
    }

    /// A store whose format has a log, without the log, is damage; an older store
    /// (no log yet) gets an empty one.
    #[test]
    fn a_missing_log_is_damage_only_where_the_format_has_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let db = sled::open(&store).unwrap();
        assert!(matches!(
            open_and_replay(dir.path(), &store, &db, true, bounds()),
            Err(OpenError::Damaged { .. })
        ));
        let replayed = open_and_replay(dir.path(), &store, &db, false, bounds()).unwrap();
        assert_eq!((replayed.log.last(), replayed.checkpoint), (0, 0));
        assert!(store.join(WAL_DIR).is_dir());
    }
}
