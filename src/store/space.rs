//! Key spaces in one sled tree, and the pending overlay that keeps a change invisible
//! until it is durable.
//!
//! Format 2 keeps everything in sled's default tree: each former tree is a key space,
//! its keys prefixed with one byte (`Kind`). A change to several spaces is then one
//! `apply_batch` on one tree, atomic by itself: sled's multi-tree transactions cost
//! 210–280 µs for a create's sixteen keys, one batch in one tree a fraction of that.
//!
//! **Visible means durable.** A writer records, before it applies a change, the value
//! each key had (`Pending`); a flush that covers the change removes those records. A
//! reader reads sled first and then consults the overlay: a key with a record reads as
//! its recorded value. So a reader never sees a change that is not yet durable, and a
//! change whose flush failed stays invisible for as long as the process runs, with no
//! undo written to a disk that is refusing writes. The order matters: the record is
//! made before the apply and removed only after the flush, so whichever of the two a
//! reader's sled read lands between, the answer is a durable value.
//!
//! Writers (under the writer mutex) must see every applied change, durable or not, or
//! uniqueness and `If-Match` would check against stale state: they read with the
//! `_latest` methods, which skip the overlay.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use sled::IVec;

/// The key spaces. The byte is the prefix of every key of that space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Groups = b'g',
    Names = b'n',
    Devices = b'd',
    /// Pieces of large device lists: `account 0x00 n piece` (`pieces.rs`).
    Pieces = b'k',
    /// The feed order: `account 0x00 seq` → the group number (`history.rs`).
    Changes = b'c',
    /// Change records under their group: `account 0x00 n seq` (`history.rs`).
    History = b'h',
    Idempotency = b'i',
    IdempotencyOrder = b'o',
    Users = b'u',
    Tokens = b't',
    Usage = b's',
    Meta = b'm',
}

/// Full key → (durable value, epoch): see `Pending::map`.
type Records = BTreeMap<Vec<u8>, (Option<IVec>, u64)>;

/// Values as they were before changes no flush has covered yet, and the feed position
/// that is visible.
#[derive(Default)]
pub struct Pending {
    /// Full key → (value before the first uncovered change, epoch of the last one).
    /// The epoch is `GroupCommit::last_requested()` after the change was applied; a
    /// flush whose ticket is greater covers it. `u64::MAX` while it is being applied.
    map: RwLock<Records>,
    /// `map.len()`, read without the lock by readers' fast path.
    count: AtomicUsize,
    /// (epoch, highest change `seq` once that change is applied), oldest first.
    changes: Mutex<VecDeque<(u64, u64)>>,
    /// Every change-feed entry up to this `seq` is durable and visible.
    visible_seq: AtomicU64,
    /// Set when a flush or write failed, here only (`fail`): no change of group or
    /// user data is applied again until restart (writes outside the overlay — tokens,
    /// usage counters — go on; they promise nothing, and only a flush takes sled's log
    /// to the disk, which the flusher no longer does). `Store::healthy` reads it.
    failed: std::sync::atomic::AtomicBool,
    /// Set by a clean close before it seals the files (`seal.rs`): from then on
    /// nothing at all may be written, or the next open would take the change for damage.
    closed: std::sync::atomic::AtomicBool,
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Pending {
    pub fn new(visible_seq: u64) -> Pending {
        Pending {
            visible_seq: AtomicU64::new(visible_seq),
            ..Pending::default()
        }
    }

    /// Marks the store failed: stops every later change (see `failed`). The one place
    /// the flag is set, whether a write or the flusher failed.
    pub fn fail(&self) {
        self.failed.store(true, Ordering::SeqCst);
    }

    /// Whether a write or a flush has failed since the store opened.
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    /// Stops every later write of any kind (a clean close, before the seal).
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    /// Err once closed (direct writes outside the overlay).
    fn check_not_closed(&self) -> sled::Result<()> {
        if self.closed.load(Ordering::SeqCst) {
            Err(sled::Error::Io(std::io::Error::other(
                "the store is closed",
            )))
        } else {
            Ok(())
        }
    }

    /// Err once failed or closed.
    pub fn check_open(&self) -> sled::Result<()> {
        if self.failed() || self.closed.load(Ordering::SeqCst) {
            Err(sled::Error::Io(std::io::Error::other(
                "the store has failed and takes no more writes until restart",
            )))
        } else {
            Ok(())
        }
    }

    /// The overlay's answer for `key` given what sled returned: the recorded value
    /// when the key has an uncovered change, else sled's.
    fn visible(&self, key: &[u8], from_sled: Option<IVec>) -> Option<IVec> {
        if self.count.load(Ordering::SeqCst) == 0 {
            return from_sled;
        }
        match read(&self.map).get(key) {
            Some((before, _)) => before.clone(),
            None => from_sled,
        }
    }

    /// Records the values `keys` have now (read through `current`), before a change to
    /// them is applied. A key that already has a record keeps it: that is the durable
    /// value.
    pub fn record(
        &self,
        keys: &[&[u8]],
        current: impl Fn(&[u8]) -> sled::Result<Option<IVec>>,
    ) -> sled::Result<()> {
        let mut map = write(&self.map);
        for k in keys {
            match map.get_mut(*k) {
                Some(entry) => entry.1 = u64::MAX,
                None => {
                    let before = current(k)?;
                    map.insert(k.to_vec(), (before, u64::MAX));
                }
            }
        }
        self.count.store(map.len(), Ordering::SeqCst);
        Ok(())
    }

    /// After the change to `keys` was applied: its epoch, and the feed position it
    /// brings once durable.
    pub fn applied(&self, keys: &[&[u8]], epoch: u64, last_seq: u64) {
        let mut map = write(&self.map);
        for k in keys {
            if let Some(entry) = map.get_mut(*k) {
                entry.1 = epoch;
            }
        }
        crate::sync::lock(&self.changes).push_back((epoch, last_seq));
    }

    /// A flush with ticket `done` succeeded: every change with an epoch below it is
    /// durable and becomes visible. Called by the flusher before it tells anyone.
    pub fn covered(&self, done: u64) {
        let mut map = write(&self.map);
        map.retain(|_, (_, epoch)| *epoch >= done);
        self.count.store(map.len(), Ordering::SeqCst);
        let mut changes = crate::sync::lock(&self.changes);
        while let Some(&(epoch, seq)) = changes.front() {
            if epoch >= done {
                break;
            }
            self.visible_seq.fetch_max(seq, Ordering::SeqCst);
            changes.pop_front();
        }
    }

    /// Visible at once (relaxed durability: nobody waits for a flush).
    pub fn publish_seq(&self, seq: u64) {
        self.visible_seq.fetch_max(seq, Ordering::SeqCst);
    }

    /// Every change-feed entry up to this `seq` is visible.
    pub fn visible_seq(&self) -> u64 {
        self.visible_seq.load(Ordering::SeqCst)
    }

    /// The recorded entries in `[from, to]` (`to` None: unbounded), copied.
    fn between(&self, from: &Bound<Vec<u8>>, to: &Bound<Vec<u8>>) -> Vec<(Vec<u8>, Option<IVec>)> {
        if self.count.load(Ordering::SeqCst) == 0 {
            return Vec::new();
        }
        read(&self.map)
            .range::<Vec<u8>, _>((from.clone(), to.clone()))
            .map(|(k, (v, _))| (k.clone(), v.clone()))
            .collect()
    }
}

/// One key space of the tree.
#[derive(Clone)]
pub struct Space {
    tree: sled::Tree,
    kind: Kind,
    pending: Arc<Pending>,
}

/// Keys read per sled range step before the overlay is consulted.
const CHUNK: usize = 64;

impl Space {
    pub fn new(tree: sled::Tree, kind: Kind, pending: Arc<Pending>) -> Space {
        Space {
            tree,
            kind,
            pending,
        }
    }

    /// The full key of `key` in this space.
    pub fn full(&self, key: &[u8]) -> Vec<u8> {
        full_key(self.kind, key)
    }

    /// The durable value of `key` (what readers see).
    pub fn get(&self, key: impl AsRef<[u8]>) -> sled::Result<Option<IVec>> {
        let k = self.full(key.as_ref());
        let v = self.tree.get(&k)?;
        Ok(self.pending.visible(&k, v))
    }

    /// The latest applied value of `key`, durable or not (for writers).
    pub fn get_latest(&self, key: impl AsRef<[u8]>) -> sled::Result<Option<IVec>> {
        self.tree.get(self.full(key.as_ref()))
    }

    pub fn contains_key(&self, key: impl AsRef<[u8]>) -> sled::Result<bool> {
        Ok(self.get(key)?.is_some())
    }

    /// A write outside the overlay, visible at once: for data that no acknowledgement
    /// depends on (tokens, usage counters, bookkeeping) and for single-threaded work
    /// before anything is served (open, restore).
    pub fn insert(
        &self,
        key: impl AsRef<[u8]>,
        value: impl Into<IVec>,
    ) -> sled::Result<Option<IVec>> {
        self.pending.check_not_closed()?;
        self.tree.insert(self.full(key.as_ref()), value)
    }

    /// A removal outside the overlay (see `insert`).
    pub fn remove(&self, key: impl AsRef<[u8]>) -> sled::Result<Option<IVec>> {
        self.pending.check_not_closed()?;
        self.tree.remove(self.full(key.as_ref()))
    }

    /// Applies a batch of this space's keys outside the overlay (see `insert`).
    pub fn apply_batch(&self, batch: Batch) -> sled::Result<()> {
        self.pending.check_not_closed()?;
        self.tree.apply_batch(batch.inner)
    }

    /// A batch of this space's keys.
    pub fn batch(&self) -> Batch {
        Batch {
            kind: self.kind,
            inner: sled::Batch::default(),
            len: 0,
        }
    }

    fn bounds<K: AsRef<[u8]>, R: std::ops::RangeBounds<K>>(
        &self,
        range: &R,
    ) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
        let start = match range.start_bound() {
            Bound::Included(k) => Bound::Included(self.full(k.as_ref())),
            Bound::Excluded(k) => Bound::Excluded(self.full(k.as_ref())),
            Bound::Unbounded => Bound::Included(vec![self.kind as u8]),
        };
        let end = match range.end_bound() {
            Bound::Included(k) => Bound::Included(self.full(k.as_ref())),
            Bound::Excluded(k) => Bound::Excluded(self.full(k.as_ref())),
            Bound::Unbounded => Bound::Excluded(vec![self.kind as u8 + 1]),
        };
        (start, end)
    }

    /// The durable entries in `range`, in key order (keys without the space prefix).
    pub fn range<K: AsRef<[u8]>, R: std::ops::RangeBounds<K>>(&self, range: R) -> Iter {
        let (from, to) = self.bounds(&range);
        Iter::new(self.tree.clone(), Some(Arc::clone(&self.pending)), from, to)
    }

    /// The latest applied entries in `range` (for writers; see `get_latest`).
    pub fn range_latest<K: AsRef<[u8]>, R: std::ops::RangeBounds<K>>(&self, range: R) -> Iter {
        let (from, to) = self.bounds(&range);
        Iter::new(self.tree.clone(), None, from, to)
    }

    /// The durable entries whose key starts with `prefix`.
    pub fn scan_prefix(&self, prefix: impl AsRef<[u8]>) -> Iter {
        let prefix = prefix.as_ref();
        match super::keys::prefix_end(prefix) {
            Some(end) => self.range(prefix..end.as_slice()),
            None => self.range(prefix..),
        }
    }

    /// `scan_prefix` for writers (see `get_latest`).
    pub fn scan_prefix_latest(&self, prefix: impl AsRef<[u8]>) -> Iter {
        let prefix = prefix.as_ref();
        match super::keys::prefix_end(prefix) {
            Some(end) => self.range_latest(prefix..end.as_slice()),
            None => self.range_latest(prefix..),
        }
    }

    /// Every durable entry of the space.
    pub fn iter(&self) -> Iter {
        self.range::<&[u8], _>(..)
    }

    /// The number of durable entries (a scan: for small spaces and offline checks).
    pub fn len(&self) -> usize {
        self.iter().filter(Result::is_ok).count()
    }

    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    /// Removes every key of the space (outside the overlay; before serving only).
    pub fn clear(&self) -> sled::Result<()> {
        let mut batch = self.batch();
        for item in self.range_latest::<&[u8], _>(..) {
            let (k, _) = item?;
            batch.remove(k);
            if batch.len >= 4096 {
                self.apply_batch(std::mem::replace(&mut batch, self.batch()))?;
            }
        }
        self.apply_batch(batch)
    }
}

/// The full key of `key` in the space `kind`.
pub fn full_key(kind: Kind, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(kind as u8);
    k.extend_from_slice(key);
    k
}

/// Writes to one space, applied together (`Space::apply_batch`).
pub struct Batch {
    kind: Kind,
    inner: sled::Batch,
    len: usize,
}

impl Batch {
    pub fn insert(&mut self, key: impl AsRef<[u8]>, value: impl Into<IVec>) {
        self.inner
            .insert(full_key(self.kind, key.as_ref()), value.into());
        self.len += 1;
    }

    pub fn remove(&mut self, key: impl AsRef<[u8]>) {
        self.inner.remove(full_key(self.kind, key.as_ref()));
        self.len += 1;
    }

    /// An insert in another space of the same tree, applied atomically with the rest.
    pub fn insert_in(&mut self, kind: Kind, key: impl AsRef<[u8]>, value: impl Into<IVec>) {
        self.inner
            .insert(full_key(kind, key.as_ref()), value.into());
        self.len += 1;
    }

    /// A removal in another space of the same tree, applied atomically with the rest.
    pub fn remove_in(&mut self, kind: Kind, key: impl AsRef<[u8]>) {
        self.inner.remove(full_key(kind, key.as_ref()));
        self.len += 1;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A range over one space, read from sled `CHUNK` keys at a time; with an overlay,
/// each chunk is corrected by the pending records in the key range it covered (read
/// after the chunk, as `Space` explains). Keys come without the space prefix.
pub struct Iter {
    tree: sled::Tree,
    pending: Option<Arc<Pending>>,
    from: Bound<Vec<u8>>,
    to: Bound<Vec<u8>>,
    buf: VecDeque<(IVec, IVec)>,
    done: bool,
}

impl Iter {
    fn new(
        tree: sled::Tree,
        pending: Option<Arc<Pending>>,
        from: Bound<Vec<u8>>,
        to: Bound<Vec<u8>>,
    ) -> Iter {
        Iter {
            tree,
            pending,
            from,
            to,
            buf: VecDeque::new(),
            done: false,
        }
    }

    fn fill(&mut self) -> sled::Result<()> {
        let mut chunk: Vec<(IVec, IVec)> = Vec::with_capacity(CHUNK);
        for item in self
            .tree
            .range::<Vec<u8>, _>((self.from.clone(), self.to.clone()))
        {
            chunk.push(item?);
            if chunk.len() == CHUNK {
                break;
            }
        }
        let exhausted = chunk.len() < CHUNK;
        // The key range this chunk covered: to the end of the range when sled had no
        // more, else up to and including its last key.
        let upper = match (exhausted, chunk.last()) {
            (false, Some((k, _))) => Bound::Included(k.to_vec()),
            _ => self.to.clone(),
        };
        if let Some(pending) = &self.pending {
            let records = pending.between(&self.from, &upper);
            if !records.is_empty() {
                chunk = merge(chunk, records);
            }
        }
        self.from = match upper {
            Bound::Included(k) => Bound::Excluded(k),
            other => other,
        };
        self.done = exhausted;
        self.buf.extend(
            chunk
                .into_iter()
                .map(|(k, v)| (IVec::from(k.get(1..).unwrap_or_default()), v)),
        );
        Ok(())
    }
}

/// Lays pending records (sorted, with their durable values) over a sorted sled chunk:
/// a recorded key takes its recorded value, or goes when it had none.
fn merge(chunk: Vec<(IVec, IVec)>, records: Vec<(Vec<u8>, Option<IVec>)>) -> Vec<(IVec, IVec)> {
    let mut out = Vec::with_capacity(chunk.len() + records.len());
    let mut records = records.into_iter().peekable();
    for (k, v) in chunk {
        while let Some((rk, _)) = records.peek() {
            if rk.as_slice() >= &k[..] {
                break;
            }
            // A recorded key sled no longer has (a pending removal).
            if let Some((rk, Some(rv))) = records.next() {
                out.push((IVec::from(rk), rv));
            }
        }
        match records.peek() {
            Some((rk, _)) if rk.as_slice() == &k[..] => {
                if let Some((_, Some(rv))) = records.next() {
                    out.push((k, rv));
                }
            }
            _ => out.push((k, v)),
        }
    }
    for (rk, rv) in records {
        if let Some(rv) = rv {
            out.push((IVec::from(rk), rv));
        }
    }
    out
}

impl Iterator for Iter {
    type Item = sled::Result<(IVec, IVec)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(item) = self.buf.pop_front() {
                return Some(Ok(item));
            }
            if self.done {
                return None;
            }
            if let Err(e) = self.fill() {
                self.done = true;
                return Some(Err(e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, sled::Db, Arc<Pending>, Space) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let pending = Arc::new(Pending::new(0));
        let space = Space::new((*db).clone(), Kind::Groups, Arc::clone(&pending));
        (dir, db, pending, space)
    }

    /// Applies `ops` as a writer does: record, apply, mark applied at `epoch`.
    fn change(space: &Space, pending: &Pending, ops: &[(&[u8], Option<&[u8]>)], epoch: u64) {
        let keys: Vec<Vec<u8>> = ops.iter().map(|(k, _)| space.full(k)).collect();
        let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        pending.record(&refs, |k| space.tree.get(k)).unwrap();
        for (k, v) in ops {
            match v {
                Some(v) => space.insert(k, *v).unwrap(),
                None => space.remove(k).unwrap(),
            };
        }
        pending.applied(&refs, epoch, epoch);
    }

    fn visible(space: &Space) -> Vec<(Vec<u8>, Vec<u8>)> {
        space
            .iter()
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).unwrap())
            .collect()
    }

    #[test]
    fn uncovered_changes_are_invisible_and_appear_when_covered() {
        let (_dir, _db, pending, space) = setup();
        space.insert(b"a", b"1".as_slice()).unwrap();
        space.insert(b"c", b"3".as_slice()).unwrap();
        change(
            &space,
            &pending,
            &[(b"a", Some(b"new")), (b"b", Some(b"2")), (b"c", None)],
            5,
        );
        assert_eq!(space.get(b"a").unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(space.get(b"b").unwrap(), None);
        assert_eq!(space.get(b"c").unwrap().as_deref(), Some(&b"3"[..]));
        assert_eq!(
            space.get_latest(b"a").unwrap().as_deref(),
            Some(&b"new"[..])
        );
        assert_eq!(
            visible(&space),
            vec![
                (b"a".to_vec(), b"1".to_vec()),
                (b"c".to_vec(), b"3".to_vec())
            ]
        );
        // A flush that started before the change was applied does not cover it.
        pending.covered(5);
        assert_eq!(space.get(b"b").unwrap(), None);
        assert_eq!(pending.visible_seq(), 0);
        pending.covered(6);
        assert_eq!(
            visible(&space),
            vec![
                (b"a".to_vec(), b"new".to_vec()),
                (b"b".to_vec(), b"2".to_vec())
            ]
        );
        assert_eq!(pending.visible_seq(), 5);
    }

    #[test]
    fn a_second_uncovered_change_keeps_the_durable_value() {
        let (_dir, _db, pending, space) = setup();
        space.insert(b"k", b"durable".as_slice()).unwrap();
        change(&space, &pending, &[(b"k", Some(b"one"))], 1);
        change(&space, &pending, &[(b"k", Some(b"two"))], 2);
        pending.covered(2);
        assert_eq!(space.get(b"k").unwrap().as_deref(), Some(&b"durable"[..]));
        pending.covered(3);
        assert_eq!(space.get(b"k").unwrap().as_deref(), Some(&b"two"[..]));
    }

    #[test]
    fn ranges_merge_the_overlay_across_chunks() {
        let (_dir, _db, pending, space) = setup();
        let key = |n: u32| n.to_be_bytes().to_vec();
        for n in (0..500).step_by(2) {
            space.insert(key(n), b"old".as_slice()).unwrap();
        }
        let mut ops: Vec<(Vec<u8>, Option<&[u8]>)> = Vec::new();
        for n in 0..500 {
            if n % 7 == 0 {
                // Pending insert of an odd key, pending removal or change of an even one.
                ops.push((key(n), if n % 2 == 0 { None } else { Some(b"new") }));
            }
        }
        let refs: Vec<(&[u8], Option<&[u8]>)> =
            ops.iter().map(|(k, v)| (k.as_slice(), *v)).collect();
        change(&space, &pending, &refs, 1);
        let want: Vec<Vec<u8>> = (0..500).step_by(2).map(key).collect();
        let got: Vec<Vec<u8>> = visible(&space).into_iter().map(|(k, _)| k).collect();
        assert_eq!(got, want);
        assert!(visible(&space).iter().all(|(_, v)| v == b"old"));
        let from = key(100);
        let to = key(300);
        let got: Vec<Vec<u8>> = space
            .range(from.as_slice()..to.as_slice())
            .map(|r| r.unwrap().0.to_vec())
            .collect();
        assert_eq!(got, (100..300).step_by(2).map(key).collect::<Vec<_>>());
        // The latest view sees the change.
        let latest: Vec<Vec<u8>> = space
            .range_latest::<&[u8], _>(..)
            .map(|r| r.unwrap().0.to_vec())
            .collect();
        assert!(latest.contains(&key(7)) && !latest.contains(&key(14)));
    }
}
