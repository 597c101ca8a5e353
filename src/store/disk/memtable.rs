//! The table of logged-but-unapplied values: what lies between the write-ahead log and
//! sled. A write is logged, then applied to sled in a merged batch; meanwhile its
//! after-images live here, each with the log sequence of the write that made it.
//!
//! **Visible means durable, with no overlay.** sled only ever holds values whose log
//! frame is durable (the applier writes nothing else), so a reader that finds nothing
//! here reads sled and sees a durable value. A value here is visible once the log's
//! durable sequence has reached it (`now`: a write that promises nothing, visible at
//! once, as tokens and counters are); writers under the store's writer mutex see every
//! value (`latest`). A reader looks here first and in sled second: a value is removed
//! from here only after sled holds it, so whichever moment the sled read lands at, the
//! answer is the value here or a newer durable one.
//!
//! Ranges take the apply lock for reading (`Memtable::apply_lock`) around each chunk:
//! the applier holds it for writing while it applies a batch and trims what it applied,
//! so a chunk sees sled and this table at one log position and the merged answer is one
//! consistent state (never a later write without an earlier one).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use sled::IVec;

/// One key written by a change: the full key (space prefix included) and its new value
/// (None removes it).
#[derive(Debug, Clone)]
pub struct Write {
    pub key: Vec<u8>,
    pub value: Option<IVec>,
}

/// One value of a key, as a write left it.
#[derive(Debug, Clone)]
struct Version {
    /// The log sequence of the write.
    seq: u64,
    /// Visible at once (a write nobody waits on, or relaxed durability).
    now: bool,
    value: Option<IVec>,
}

#[derive(Default)]
struct Table {
    /// Full key → its versions not yet applied, oldest first.
    map: BTreeMap<Vec<u8>, Vec<Version>>,
    /// Bytes of keys and values held (what `Memtable::bytes` bounds).
    bytes: usize,
}

/// Which values a read sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Values whose write is durable (readers).
    Durable,
    /// Every value written (writers, under the writer mutex).
    Latest,
}

/// Logged values not yet in sled (see the module text).
#[derive(Default)]
pub struct Memtable {
    table: RwLock<Table>,
    /// `table.map.len()`, read without the lock by the readers' fast path.
    count: AtomicUsize,
    /// Every write up to this log sequence is durable.
    durable: AtomicU64,
    /// Held for writing by the applier across one apply and its trim; for reading by a
    /// range chunk (see the module text).
    apply_lock: RwLock<()>,
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Memtable {
    pub fn new(durable: u64) -> Memtable {
        Memtable {
            durable: AtomicU64::new(durable),
            ..Memtable::default()
        }
    }

    /// Records the after-images of the write with log sequence `seq`.
    pub fn insert(&self, seq: u64, now: bool, writes: &[Write]) {
        let mut t = write(&self.table);
        for w in writes {
            let size = w.key.len() + w.value.as_ref().map_or(0, |v| v.len()) + 32;
            t.bytes += size;
            let version = Version {
                seq,
                now,
                value: w.value.clone(),
            };
            match t.map.get_mut(w.key.as_slice()) {
                Some(versions) => versions.push(version),
                None => {
                    t.map.insert(w.key.clone(), vec![version]);
                }
            }
        }
        self.count.store(t.map.len(), Ordering::SeqCst);
    }

    /// Every write up to `seq` is durable: its values become visible.
    pub fn set_durable(&self, seq: u64) {
        self.durable.fetch_max(seq, Ordering::SeqCst);
    }

    /// The log sequence every durable write lies at or below.
    pub fn durable(&self) -> u64 {
        self.durable.load(Ordering::SeqCst)
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        read(&self.table).bytes
    }

    /// The value `seen` finds here for `key`: `Some(value)` (None inside: removed) when
    /// a visible version is held, else None (read sled).
    pub fn get(&self, key: &[u8], seen: Seen) -> Option<Option<IVec>> {
        if self.count.load(Ordering::SeqCst) == 0 {
            return None;
        }
        let durable = self.durable();
        let t = read(&self.table);
        pick(t.map.get(key)?, seen, durable)
    }

    /// The entries held in `[from, to]` as `seen` finds them (None: removed), copied,
    /// in key order.
    pub fn between(
        &self,
        from: &Bound<Vec<u8>>,
        to: &Bound<Vec<u8>>,
        seen: Seen,
    ) -> Vec<(Vec<u8>, Option<IVec>)> {
        if self.count.load(Ordering::SeqCst) == 0 {
            return Vec::new();
        }
        let durable = self.durable();
        let t = read(&self.table);
        t.map
            .range::<Vec<u8>, _>((from.clone(), to.clone()))
            .filter_map(|(k, versions)| Some((k.clone(), pick(versions, seen, durable)?)))
            .collect()
    }

    /// Held by a range chunk around its sled read and its read here.
    pub fn chunk_guard(&self) -> RwLockReadGuard<'_, ()> {
        read(&self.apply_lock)
    }

    /// Held by the applier around one apply and its `trim`.
    pub fn apply_guard(&self) -> RwLockWriteGuard<'_, ()> {
        write(&self.apply_lock)
    }

    /// sled now holds every write up to `upto`: their versions of `keys` go.
    pub fn trim<'a>(&self, upto: u64, keys: impl Iterator<Item = &'a [u8]>) {
        let mut t = write(&self.table);
        let mut freed = 0usize;
        for key in keys {
            let Some(versions) = t.map.get_mut(key) else {
                continue;
            };
            versions.retain(|v| {
                let gone = v.seq <= upto;
                if gone {
                    freed += key.len() + v.value.as_ref().map_or(0, |v| v.len()) + 32;
                }
                !gone
            });
            if versions.is_empty() {
                t.map.remove(key);
            }
        }
        t.bytes = t.bytes.saturating_sub(freed);
        self.count.store(t.map.len(), Ordering::SeqCst);
    }
}

/// The newest version `seen` may see.
fn pick(versions: &[Version], seen: Seen, durable: u64) -> Option<Option<IVec>> {
    versions
        .iter()
        .rev()
        .find(|v| seen == Seen::Latest || v.now || v.seq <= durable)
        .map(|v| v.value.clone())
}

/// Appends the log record of one write to `out`: `seq u64, count u32`, then per key
/// `key length u32, key, present u8, value length u32, value` (big-endian). The record
/// holds after-images, never operations: replaying it twice leaves what once leaves.
pub fn encode(seq: u64, writes: &[Write], out: &mut Vec<u8>) {
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&(writes.len() as u32).to_be_bytes());
    for w in writes {
        out.extend_from_slice(&(w.key.len() as u32).to_be_bytes());
        out.extend_from_slice(&w.key);
        match &w.value {
            Some(v) => {
                out.push(1);
                out.extend_from_slice(&(v.len() as u32).to_be_bytes());
                out.extend_from_slice(v);
            }
            None => out.push(0),
        }
    }
}

/// Reads back the records of one log frame's payload (`encode`, one after another):
/// (seq, writes) in order. Err names what is malformed: a frame passed its CRC, so a
/// malformed payload is a bug or damage, never a torn write.
pub fn decode(mut payload: &[u8]) -> Result<Vec<(u64, Vec<Write>)>, String> {
    fn take<'a>(p: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
        if p.len() < n {
            return Err(format!(
                "a log record ends early ({} bytes left, {n} needed)",
                p.len()
            ));
        }
        let (head, rest) = p.split_at(n);
        *p = rest;
        Ok(head)
    }
    fn u32_of(p: &mut &[u8]) -> Result<usize, String> {
        let b = take(p, 4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
    let mut out = Vec::new();
    while !payload.is_empty() {
        let s = take(&mut payload, 8)?;
        let seq = u64::from_be_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]]);
        let n = u32_of(&mut payload)?;
        let mut writes = Vec::with_capacity(n.min(1 << 16));
        for _ in 0..n {
            let klen = u32_of(&mut payload)?;
            let key = take(&mut payload, klen)?.to_vec();
            let present = take(&mut payload, 1)?[0];
            let value = match present {
                0 => None,
                1 => {
                    let vlen = u32_of(&mut payload)?;
                    Some(IVec::from(take(&mut payload, vlen)?))
                }
                other => return Err(format!("a log record has a bad presence byte {other}")),
            };
            writes.push(Write { key, value });
        }
        out.push((seq, writes));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(k: &str, v: Option<&str>) -> Write {
        Write {
            key: k.as_bytes().to_vec(),
            value: v.map(|v| IVec::from(v.as_bytes())),
        }
    }

    #[test]
    fn records_round_trip_and_a_short_payload_is_an_error() {
        let mut buf = Vec::new();
        encode(7, &[w("a", Some("1")), w("b", None)], &mut buf);
        encode(8, &[w("c", Some(""))], &mut buf);
        let back = decode(&buf).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].0, 7);
        assert_eq!(back[0].1[1].value, None);
        assert_eq!(back[1].1[0].value.as_deref(), Some(&b""[..]));
        let first = {
            let mut one = Vec::new();
            encode(7, &[w("a", Some("1")), w("b", None)], &mut one);
            one.len()
        };
        for cut in 1..buf.len() {
            if cut == first {
                // the end of the first record: a whole record decodes
                assert_eq!(decode(&buf[..cut]).unwrap().len(), 1);
                continue;
            }
            assert!(decode(&buf[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn values_are_visible_once_durable_or_at_once_and_trim_frees_them() {
        let m = Memtable::new(0);
        m.insert(1, false, &[w("k", Some("a"))]);
        assert_eq!(m.get(b"k", Seen::Durable), None);
        assert_eq!(m.get(b"k", Seen::Latest), Some(Some(IVec::from("a"))));
        m.insert(2, true, &[w("t", Some("now"))]);
        assert_eq!(m.get(b"t", Seen::Durable), Some(Some(IVec::from("now"))));
        m.insert(3, false, &[w("k", None)]);
        m.set_durable(1);
        assert_eq!(m.get(b"k", Seen::Durable), Some(Some(IVec::from("a"))));
        assert_eq!(m.get(b"k", Seen::Latest), Some(None));
        m.set_durable(3);
        assert_eq!(m.get(b"k", Seen::Durable), Some(None));
        let all = m.between(&Bound::Unbounded, &Bound::Unbounded, Seen::Durable);
        assert_eq!(all.len(), 2);
        m.trim(2, [&b"k"[..], &b"t"[..]].into_iter());
        assert_eq!(m.get(b"t", Seen::Latest), None);
        assert_eq!(m.get(b"k", Seen::Latest), Some(None));
        m.trim(3, [&b"k"[..]].into_iter());
        assert_eq!(m.bytes(), 0);
        assert_eq!(m.get(b"k", Seen::Latest), None);
    }
}
