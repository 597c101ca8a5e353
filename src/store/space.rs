//! Key spaces in one sled tree, read through the memtable of logged-but-unapplied
//! values.
//!
//! Format 2 keeps everything in sled's default tree: each former tree is a key space,
//! its keys prefixed with one byte (`Kind`). A change to several spaces is then one
//! write of the log and one `apply_batch` on one tree, atomic by itself.
//!
//! **Visible means durable.** A write goes to the write-ahead log first and into sled
//! after (`commit.rs`); meanwhile its values wait in the memtable (`memtable.rs`),
//! visible once the log has them. A reader looks in the memtable, then in sled, which
//! only ever holds durable values. Writers (under the writer mutex) must see every
//! submitted change, durable or not, or uniqueness and `If-Match` would check against
//! stale state: they read with the `_latest` methods.

use std::collections::VecDeque;
use std::ops::Bound;
use std::sync::Arc;

use sled::IVec;

use super::disk::commit::Engine;
use super::disk::memtable::{Seen, Write};

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

/// The error of a write the store refused (failed or closed), in sled's terms for the
/// callers that map sled errors.
fn refused(e: String) -> sled::Error {
    sled::Error::Io(std::io::Error::other(e))
}

/// One key space of the tree.
#[derive(Clone)]
pub struct Space {
    tree: sled::Tree,
    kind: Kind,
    engine: Arc<Engine>,
}

/// Keys read per sled range step before the memtable is consulted.
const CHUNK: usize = 64;

impl Space {
    pub fn new(tree: sled::Tree, kind: Kind, engine: Arc<Engine>) -> Space {
        Space { tree, kind, engine }
    }

    /// The full key of `key` in this space.
    pub fn full(&self, key: &[u8]) -> Vec<u8> {
        full_key(self.kind, key)
    }

    fn get_as(&self, key: &[u8], seen: Seen) -> sled::Result<Option<IVec>> {
        let k = self.full(key);
        // The memtable first, sled second (`memtable.rs`).
        match self.engine.mem.get(&k, seen) {
            Some(v) => Ok(v),
            None => self.tree.get(&k),
        }
    }

    /// The durable value of `key` (what readers see).
    pub fn get(&self, key: impl AsRef<[u8]>) -> sled::Result<Option<IVec>> {
        self.get_as(key.as_ref(), Seen::Durable)
    }

    /// The latest submitted value of `key`, durable or not (for writers).
    pub fn get_latest(&self, key: impl AsRef<[u8]>) -> sled::Result<Option<IVec>> {
        self.get_as(key.as_ref(), Seen::Latest)
    }

    pub fn contains_key(&self, key: impl AsRef<[u8]>) -> sled::Result<bool> {
        Ok(self.get(key)?.is_some())
    }

    /// A write nobody waits on, visible at once and logged like any other: for data
    /// that no acknowledgement depends on (tokens, usage counters, bookkeeping) and for
    /// work before anything is served (open).
    pub fn insert(&self, key: impl AsRef<[u8]>, value: impl Into<IVec>) -> sled::Result<()> {
        let mut batch = self.batch();
        batch.insert(key, value);
        self.apply_batch(batch)
    }

    /// A removal nobody waits on (see `insert`).
    #[cfg(test)]
    pub fn remove(&self, key: impl AsRef<[u8]>) -> sled::Result<()> {
        let mut batch = self.batch();
        batch.remove(key);
        self.apply_batch(batch)
    }

    /// Applies a batch nobody waits on, atomically (see `insert`).
    pub fn apply_batch(&self, batch: Batch) -> sled::Result<()> {
        if batch.writes.is_empty() {
            return Ok(());
        }
        self.engine
            .submit(batch.writes, true, None)
            .map(drop)
            .map_err(refused)
    }

    /// A batch of this space's keys.
    pub fn batch(&self) -> Batch {
        Batch {
            kind: self.kind,
            writes: Vec::new(),
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
        Iter::new(
            self.tree.clone(),
            Arc::clone(&self.engine),
            Seen::Durable,
            from,
            to,
        )
    }

    /// The latest submitted entries in `range` (for writers; see `get_latest`).
    pub fn range_latest<K: AsRef<[u8]>, R: std::ops::RangeBounds<K>>(&self, range: R) -> Iter {
        let (from, to) = self.bounds(&range);
        Iter::new(
            self.tree.clone(),
            Arc::clone(&self.engine),
            Seen::Latest,
            from,
            to,
        )
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

    /// Removes every key of the space (before serving only).
    pub fn clear(&self) -> sled::Result<()> {
        let mut batch = self.batch();
        for item in self.range_latest::<&[u8], _>(..) {
            let (k, _) = item?;
            batch.remove(k);
            if batch.len() >= 4096 {
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

/// Writes to one space (and others of the same tree), submitted together.
pub struct Batch {
    kind: Kind,
    writes: Vec<Write>,
}

impl Batch {
    pub fn insert(&mut self, key: impl AsRef<[u8]>, value: impl Into<IVec>) {
        self.insert_in(self.kind, key, value);
    }

    pub fn remove(&mut self, key: impl AsRef<[u8]>) {
        self.remove_in(self.kind, key);
    }

    /// An insert in another space of the same tree, applied atomically with the rest.
    pub fn insert_in(&mut self, kind: Kind, key: impl AsRef<[u8]>, value: impl Into<IVec>) {
        self.writes.push(Write {
            key: full_key(kind, key.as_ref()),
            value: Some(value.into()),
        });
    }

    /// A removal in another space of the same tree, applied atomically with the rest.
    pub fn remove_in(&mut self, kind: Kind, key: impl AsRef<[u8]>) {
        self.writes.push(Write {
            key: full_key(kind, key.as_ref()),
            value: None,
        });
    }

    pub fn len(&self) -> usize {
        self.writes.len()
    }
}

/// A range over one space, read from sled `CHUNK` keys at a time; each chunk is
/// corrected by the memtable's values in the key range it covered, read under the
/// same hold of the apply lock (`memtable.rs`). Keys come without the space prefix.
pub struct Iter {
    tree: sled::Tree,
    engine: Arc<Engine>,
    seen: Seen,
    from: Bound<Vec<u8>>,
    to: Bound<Vec<u8>>,
    buf: VecDeque<(IVec, IVec)>,
    done: bool,
}

impl Iter {
    fn new(
        tree: sled::Tree,
        engine: Arc<Engine>,
        seen: Seen,
        from: Bound<Vec<u8>>,
        to: Bound<Vec<u8>>,
    ) -> Iter {
        Iter {
            tree,
            engine,
            seen,
            from,
            to,
            buf: VecDeque::new(),
            done: false,
        }
    }

    fn fill(&mut self) -> sled::Result<()> {
        let mem = &self.engine.mem;
        let guard = mem.chunk_guard();
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
        let held = mem.between(&self.from, &upper, self.seen);
        drop(guard);
        if !held.is_empty() {
            chunk = merge(chunk, held);
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

/// Lays the memtable's values (sorted; None: removed) over a sorted sled chunk: a held
/// key takes its held value, or goes when it was removed.
fn merge(chunk: Vec<(IVec, IVec)>, held: Vec<(Vec<u8>, Option<IVec>)>) -> Vec<(IVec, IVec)> {
    let mut out = Vec::with_capacity(chunk.len() + held.len());
    let mut held = held.into_iter().peekable();
    for (k, v) in chunk {
        while let Some((hk, _)) = held.peek() {
            if hk.as_slice() >= &k[..] {
                break;
            }
            // A held key sled does not have yet.
            if let Some((hk, Some(hv))) = held.next() {
                out.push((IVec::from(hk), hv));
            }
        }
        match held.peek() {
            Some((hk, _)) if hk.as_slice() == &k[..] => {
                if let Some((_, Some(hv))) = held.next() {
                    out.push((k, hv));
                }
            }
            _ => out.push((k, v)),
        }
    }
    for (hk, hv) in held {
        if let Some(hv) = hv {
            out.push((IVec::from(hk), hv));
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
