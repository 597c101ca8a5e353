//! Invertible deltas between two versions of a group document, and their compact binary
//! encoding: the change feed stores one [`Delta`] per change instead of the whole group
//! (issue 10, "the change feed costs what changed") and rebuilds the full state of any
//! retained entry on read by walking *backwards* from a later full state (the group's
//! current record, or a checkpoint written with [`encode_state`]) through [`revert`].
//! So a delta records both sides of what changed, which also lets [`apply`] and
//! [`revert`] check that it fits the state they are given: a delta that does not is
//! damaged data and an error, never a panic and never a silently wrong group. Pure
//! logic, no sled and no I/O.
//!
//! Device order matters (the API returns the stored order), so the device part is an
//! exact edit script: the devices removed, with their positions in the old list, and
//! the devices inserted, with their positions in the new list. Appends, removals from
//! anywhere, inserts and single moves cost only the devices involved, never the size of
//! the group; when an edit script would be larger than both lists (a shuffle, a
//! reversal) the delta stores the old and the new list whole.
//!
//! Encoding (all integers unsigned LEB128, minimal length; a string is its byte length
//! then its UTF-8 bytes):
//!
//! ```text
//! delta  = flags:u8  [name_old name_new]  [desc_old] [desc_new]  [devices]
//!          flags: 0x01 name changed, 0x02 description changed, 0x04 old description
//!          present, 0x08 new description present, 0x10 device edit, 0x20 device lists
//!          replaced; 0x40 and 0x80 are reserved and must be 0
//! edit   = old_len  n_removed (gap id)*  n_inserted (gap id)*
//!          positions strictly increasing, each stored as the gap from the previous
//!          one (the first as itself), so runs of appends cost a byte per position
//! lists  = n_old id*  n_new id*
//! state  = flags:u8 (0x01 description present)  name  [description]  n id*
//! ```

use std::collections::HashMap;
use std::fmt;

use crate::model::GroupDoc;

/// What changed from one group document to the next, with both sides of every change.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Delta {
    /// `(old, new)`, only when the name changed.
    pub name: Option<(String, String)>,
    /// `(old, new)`, only when the description changed.
    pub description: Option<(Option<String>, Option<String>)>,
    pub devices: Devices,
}

/// The device part of a [`Delta`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Devices {
    /// The list did not change.
    #[default]
    Same,
    /// An edit script; see [`Edit`].
    Edit(Edit),
    /// Both lists whole: the fallback when an edit script would be larger.
    Replace { old: Vec<String>, new: Vec<String> },
}

/// An exact, order-preserving edit of a device list. The new list is the old one
/// without `removed`, with `inserted` put in at their positions. Storing the removed
/// devices (not just their positions) is what makes the edit invertible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    /// The old list's length: checked on apply, and with the counts it gives the new
    /// length, so an edit applied to a list of another size is caught even when it only
    /// appends.
    pub old_len: usize,
    /// `(position in the old list, device)`, positions strictly increasing.
    pub removed: Vec<(usize, String)>,
    /// `(position in the new list, device)`, positions strictly increasing.
    pub inserted: Vec<(usize, String)>,
}

impl Edit {
    /// The new list's length, or an error when the counts do not fit `old_len`.
    pub fn new_len(&self) -> Result<usize, DeltaError> {
        self.old_len
            .checked_sub(self.removed.len())
            .and_then(|n| n.checked_add(self.inserted.len()))
            .ok_or(DeltaError::Malformed(
                "more devices removed than the list held",
            ))
    }

    /// Whether the edit is well formed in itself: positions strictly increasing and
    /// inside their lists. (Decoding produces only well-formed edits; the fields are
    /// public, so applying checks again.)
    fn check(&self) -> Result<usize, DeltaError> {
        let new_len = self.new_len()?;
        if !increasing_below(&self.removed, self.old_len) {
            return Err(DeltaError::Malformed(
                "removed positions out of order or range",
            ));
        }
        if !increasing_below(&self.inserted, new_len) {
            return Err(DeltaError::Malformed(
                "inserted positions out of order or range",
            ));
        }
        Ok(new_len)
    }
}

fn increasing_below(entries: &[(usize, String)], len: usize) -> bool {
    let mut next = 0;
    for (p, _) in entries {
        if *p < next || *p >= len {
            return false;
        }
        next = p + 1;
    }
    true
}

/// Why a delta or state could not be decoded, applied or reverted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeltaError {
    /// The bytes end inside the record.
    Truncated,
    /// The bytes (or a delta's fields) are not something this version writes.
    Malformed(&'static str),
    /// The delta does not fit the state it was applied to or reverted from.
    Mismatch(&'static str),
}

impl fmt::Display for DeltaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeltaError::Truncated => f.write_str("change delta: the record is truncated"),
            DeltaError::Malformed(what) => write!(f, "change delta: malformed: {what}"),
            DeltaError::Mismatch(what) => {
                write!(f, "change delta: does not fit the group: {what}")
            }
        }
    }
}

impl std::error::Error for DeltaError {}

impl Delta {
    /// Whether nothing changed.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.name.is_none() && self.description.is_none() && self.devices == Devices::Same
    }

    /// Appends the encoding (see the module documentation) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut flags = 0u8;
        if self.name.is_some() {
            flags |= F_NAME;
        }
        if let Some((old, new)) = &self.description {
            flags |= F_DESC;
            if old.is_some() {
                flags |= F_DESC_OLD;
            }
            if new.is_some() {
                flags |= F_DESC_NEW;
            }
        }
        match self.devices {
            Devices::Same => {}
            Devices::Edit(_) => flags |= F_EDIT,
            Devices::Replace { .. } => flags |= F_REPLACE,
        }
        out.push(flags);
        if let Some((old, new)) = &self.name {
            put_str(out, old);
            put_str(out, new);
        }
        if let Some((old, new)) = &self.description {
            for s in [old, new].into_iter().flatten() {
                put_str(out, s);
            }
        }
        match &self.devices {
            Devices::Same => {}
            Devices::Edit(e) => {
                put_varint(out, e.old_len as u64);
                put_positioned(out, &e.removed);
                put_positioned(out, &e.inserted);
            }
            Devices::Replace { old, new } => {
                put_list(out, old);
                put_list(out, new);
            }
        }
    }

    /// Decodes one delta from the start of `bytes`; returns it and the bytes it took,
    /// so it can sit inside a larger record. Any input gives a delta or an error; every
    /// allocation is bounded by the input's length.
    pub fn decode(bytes: &[u8]) -> Result<(Delta, usize), DeltaError> {
        let mut r = Reader { bytes, pos: 0 };
        let flags = r.byte()?;
        if flags & !(F_NAME | F_DESC | F_DESC_OLD | F_DESC_NEW | F_EDIT | F_REPLACE) != 0 {
            return Err(DeltaError::Malformed("unknown flags"));
        }
        if flags & F_DESC == 0 && flags & (F_DESC_OLD | F_DESC_NEW) != 0 {
            return Err(DeltaError::Malformed("description flags without a change"));
        }
        if flags & F_EDIT != 0 && flags & F_REPLACE != 0 {
            return Err(DeltaError::Malformed("both device encodings"));
        }
        let name = if flags & F_NAME != 0 {
            Some((r.string()?, r.string()?))
        } else {
            None
        };
        let description = if flags & F_DESC != 0 {
            let old = if flags & F_DESC_OLD != 0 {
                Some(r.string()?)
            } else {
                None
            };
            let new = if flags & F_DESC_NEW != 0 {
                Some(r.string()?)
            } else {
                None
            };
            Some((old, new))
        } else {
            None
        };
        let devices = if flags & F_EDIT != 0 {
            let old_len = r.usize()?;
            let edit = Edit {
                old_len,
                removed: r.positioned()?,
                inserted: r.positioned()?,
            };
            edit.check()?;
            Devices::Edit(edit)
        } else if flags & F_REPLACE != 0 {
            Devices::Replace {
                old: r.list()?,
                new: r.list()?,
            }
        } else {
            Devices::Same
        };
        Ok((
            Delta {
                name,
                description,
                devices,
            },
            r.pos,
        ))
    }
}

const F_NAME: u8 = 0x01;
const F_DESC: u8 = 0x02;
const F_DESC_OLD: u8 = 0x04;
const F_DESC_NEW: u8 = 0x08;
const F_EDIT: u8 = 0x10;
const F_REPLACE: u8 = 0x20;

const S_DESC: u8 = 0x01;

/// The delta that turns `old` into `new`.
pub fn diff(old: &GroupDoc, new: &GroupDoc) -> Delta {
    Delta {
        name: (old.name != new.name).then(|| (old.name.clone(), new.name.clone())),
        description: (old.description != new.description)
            .then(|| (old.description.clone(), new.description.clone())),
        devices: diff_devices(&old.devices, &new.devices),
    }
}

/// Applies `d` forwards: `state` must be the delta's old side and becomes its new side.
/// On an error `state` is unchanged (everything is checked before anything moves).
pub fn apply(state: &mut GroupDoc, d: &Delta) -> Result<(), DeltaError> {
    step(state, d, true)
}

/// Applies `d` backwards: `state` must be the delta's new side and becomes its old side.
/// On an error `state` is unchanged.
pub fn revert(state: &mut GroupDoc, d: &Delta) -> Result<(), DeltaError> {
    step(state, d, false)
}

/// Both directions: an edit reverted is the same splice with removed and inserted
/// swapped, so there is one code path to get right.
// Long because both directions share it: one code path to get right.
fn step(state: &mut GroupDoc, d: &Delta, forward: bool) -> Result<(), DeltaError> {
    fn flip<T>(forward: bool, old: T, new: T) -> (T, T) {
        if forward {
            (old, new)
        } else {
            (new, old)
        }
    }
    // Check everything first, so a damaged delta leaves the state as it was.
    if let Some((old, new)) = &d.name {
        let (from, _) = flip(forward, old, new);
        if state.name != *from {
            return Err(DeltaError::Mismatch("name"));
        }
    }
    if let Some((old, new)) = &d.description {
        let (from, _) = flip(forward, old, new);
        if state.description != *from {
            return Err(DeltaError::Mismatch("description"));
        }
    }
    match &d.devices {
        Devices::Same => {}
        Devices::Edit(e) => {
            let new_len = e.check()?;
            let (len, remove) = if forward {
                (e.old_len, &e.removed)
            } else {
                (new_len, &e.inserted)
            };
            if state.devices.len() != len {
                return Err(DeltaError::Mismatch("device count"));
            }
            for (p, id) in remove {
                if state.devices.get(*p) != Some(id) {
                    return Err(DeltaError::Mismatch("device not at its position"));
                }
            }
        }
        Devices::Replace { old, new } => {
            let (from, _) = flip(forward, old, new);
            if state.devices != *from {
                return Err(DeltaError::Mismatch("devices"));
            }
        }
    }
    // Then change.
    if let Some((old, new)) = &d.name {
        state.name.clone_from(flip(forward, old, new).1);
    }
    if let Some((old, new)) = &d.description {
        state.description.clone_from(flip(forward, old, new).1);
    }
    match &d.devices {
        Devices::Same => {}
        Devices::Edit(e) => {
            let (remove, insert) = flip(forward, &e.removed, &e.inserted);
            splice(&mut state.devices, remove, insert);
        }
        Devices::Replace { old, new } => state.devices.clone_from(flip(forward, old, new).1),
    }
    Ok(())
}

/// Removes the (already checked) `remove` positions, then puts `insert` in at theirs.
/// Linear in the list from the first position touched; nothing before it moves, so an
/// append or a removal near the end is cheap.
fn splice(list: &mut Vec<String>, remove: &[(usize, String)], insert: &[(usize, String)]) {
    if let Some((first, _)) = remove.first() {
        let tail = list.split_off((*first).min(list.len()));
        let mut gone = remove.iter().map(|(p, _)| *p).peekable();
        for (i, d) in tail.into_iter().enumerate() {
            if gone.peek() == Some(&(first + i)) {
                gone.next();
            } else {
                list.push(d);
            }
        }
    }
    if let Some((first, _)) = insert.first() {
        // Checked positions put the first insert at most at the end of what is kept.
        let mut kept = list.split_off((*first).min(list.len())).into_iter();
        list.reserve(kept.len() + insert.len());
        let mut ins = insert.iter().peekable();
        while let Some((p, d)) = ins.peek() {
            if *p == list.len() {
                list.push(d.clone());
                ins.next();
            } else if let Some(d) = kept.next() {
                list.push(d);
            } else {
                // Unreachable for a checked edit; stop rather than loop.
                break;
            }
        }
        list.extend(kept);
    }
}

/// The device part of [`diff`]: an edit script keeping the longest run of devices whose
/// order both lists share, or both lists whole when that is smaller.
fn diff_devices(old: &[String], new: &[String]) -> Devices {
    if old == new {
        return Devices::Same;
    }
    let edit = edit_script(old, new);
    let edit_len = varint_len(edit.old_len as u64)
        + positioned_len(&edit.removed)
        + positioned_len(&edit.inserted);
    if edit_len <= list_len(old) + list_len(new) {
        Devices::Edit(edit)
    } else {
        Devices::Replace {
            old: old.to_vec(),
            new: new.to_vec(),
        }
    }
}

/// The common prefix and suffix are trimmed first (the usual change touches one end or
/// one spot, so this is a plain comparison, no hashing). In what is left, the devices
/// kept are the longest increasing subsequence of old positions taken in new order: any
/// increasing run is a correct choice, the longest moves the fewest devices. A device
/// listed twice (not valid, but the delta must still be exact) is matched at most once
/// and otherwise removed and inserted like any other.
fn edit_script(old: &[String], new: &[String]) -> Edit {
    let prefix = old.iter().zip(new).take_while(|(a, b)| a == b).count();
    let o = old.get(prefix..).unwrap_or_default();
    let n = new.get(prefix..).unwrap_or_default();
    let suffix = o
        .iter()
        .rev()
        .zip(n.iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    let o = o.get(..o.len() - suffix).unwrap_or_default();
    let n = n.get(..n.len() - suffix).unwrap_or_default();

    let mut at: HashMap<&str, usize> = HashMap::with_capacity(o.len());
    for (i, d) in o.iter().enumerate() {
        at.entry(d.as_str()).or_insert(i);
    }
    // (new position, old position) of every device of the new middle found in the old.
    let pairs: Vec<(usize, usize)> = n
        .iter()
        .enumerate()
        .filter_map(|(j, d)| at.get(d.as_str()).map(|&i| (j, i)))
        .collect();
    let kept = longest_increasing(&pairs);

    let mut removed = Vec::new();
    let mut inserted = Vec::new();
    let mut ko = kept.iter().map(|&(_, i)| i).peekable();
    for (i, d) in o.iter().enumerate() {
        if ko.peek() == Some(&i) {
            ko.next();
        } else {
            removed.push((prefix + i, d.clone()));
        }
    }
    let mut kn = kept.iter().map(|&(j, _)| j).peekable();
    for (j, d) in n.iter().enumerate() {
        if kn.peek() == Some(&j) {
            kn.next();
        } else {
            inserted.push((prefix + j, d.clone()));
        }
    }
    Edit {
        old_len: old.len(),
        removed,
        inserted,
    }
}

/// The longest subsequence of `pairs` (increasing in `.0`) that is strictly increasing
/// in `.1`, by patience sorting: O(k log k).
fn longest_increasing(pairs: &[(usize, usize)]) -> Vec<(usize, usize)> {
    // tails[l]: index in `pairs` of the smallest last element of a run of length l + 1.
    let mut tails: Vec<usize> = Vec::new();
    let mut prev: Vec<Option<usize>> = Vec::with_capacity(pairs.len());
    let key = |k: usize| pairs.get(k).map_or(usize::MAX, |p| p.1);
    for (k, &(_, x)) in pairs.iter().enumerate() {
        let l = tails.partition_point(|&t| key(t) < x);
        prev.push(l.checked_sub(1).and_then(|l| tails.get(l).copied()));
        match tails.get_mut(l) {
            Some(t) => *t = k,
            None => tails.push(k),
        }
    }
    let mut run = Vec::with_capacity(tails.len());
    let mut k = tails.last().copied();
    while let Some(i) = k {
        if let Some(&p) = pairs.get(i) {
            run.push(p);
        }
        k = prev.get(i).copied().flatten();
    }
    run.reverse();
    run
}

/// Appends the encoding of a full state (a checkpoint to walk back from) to `out`.
pub fn encode_state(doc: &GroupDoc, out: &mut Vec<u8>) {
    out.push(if doc.description.is_some() { S_DESC } else { 0 });
    put_str(out, &doc.name);
    if let Some(d) = &doc.description {
        put_str(out, d);
    }
    put_list(out, &doc.devices);
}

/// Decodes a full state from the start of `bytes`; returns it and the bytes it took.
pub fn decode_state(bytes: &[u8]) -> Result<(GroupDoc, usize), DeltaError> {
    let mut r = Reader { bytes, pos: 0 };
    let flags = r.byte()?;
    if flags & !S_DESC != 0 {
        return Err(DeltaError::Malformed("unknown state flags"));
    }
    let name = r.string()?;
    let description = if flags & S_DESC != 0 {
        Some(r.string()?)
    } else {
        None
    };
    let devices = r.list()?;
    Ok((
        GroupDoc {
            name,
            description,
            devices,
        },
        r.pos,
    ))
}

pub(super) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

pub(super) fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn str_len(s: &str) -> usize {
    varint_len(s.len() as u64) + s.len()
}

fn put_list(out: &mut Vec<u8>, list: &[String]) {
    put_varint(out, list.len() as u64);
    for s in list {
        put_str(out, s);
    }
}

fn list_len(list: &[String]) -> usize {
    varint_len(list.len() as u64) + list.iter().map(|s| str_len(s)).sum::<usize>()
}

/// Positions as gaps from the previous one (strictly increasing, so never negative).
fn put_positioned(out: &mut Vec<u8>, entries: &[(usize, String)]) {
    put_varint(out, entries.len() as u64);
    let mut next = 0;
    for (p, s) in entries {
        put_varint(out, p.saturating_sub(next) as u64);
        put_str(out, s);
        next = p + 1;
    }
}

fn positioned_len(entries: &[(usize, String)]) -> usize {
    let mut next = 0;
    let mut len = varint_len(entries.len() as u64);
    for (p, s) in entries {
        len += varint_len(p.saturating_sub(next) as u64) + str_len(s);
        next = p + 1;
    }
    len
}

/// A cursor over untrusted bytes: every read is checked, nothing indexes.
pub(super) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, pos: 0 }
    }

    /// Bytes consumed so far.
    pub(super) fn pos(&self) -> usize {
        self.pos
    }

    /// The bytes not yet consumed.
    pub(super) fn rest(&self) -> &'a [u8] {
        self.bytes.get(self.pos..).unwrap_or_default()
    }

    /// Skips `n` bytes (consumed by a nested decoder).
    pub(super) fn skip(&mut self, n: usize) -> Result<(), DeltaError> {
        if n > self.remaining() {
            return Err(DeltaError::Truncated);
        }
        self.pos += n;
        Ok(())
    }
}

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    pub(super) fn byte(&mut self) -> Result<u8, DeltaError> {
        let b = *self.bytes.get(self.pos).ok_or(DeltaError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    /// LEB128, at most 10 bytes, minimal (no trailing zero groups), so one value has
    /// one encoding and decoding then encoding gives the same bytes.
    pub(super) fn varint(&mut self) -> Result<u64, DeltaError> {
        let mut v: u64 = 0;
        for i in 0..10u32 {
            let b = self.byte()?;
            let part = u64::from(b & 0x7f);
            if i == 9 && part > 1 {
                return Err(DeltaError::Malformed("integer too large"));
            }
            v |= part << (7 * i);
            if b & 0x80 == 0 {
                if i > 0 && part == 0 {
                    return Err(DeltaError::Malformed("integer not minimally encoded"));
                }
                return Ok(v);
            }
        }
        Err(DeltaError::Malformed("integer too long"))
    }

    fn usize(&mut self) -> Result<usize, DeltaError> {
        usize::try_from(self.varint()?).map_err(|_| DeltaError::Malformed("integer too large"))
    }

    /// A count of items that each take at least `min_bytes`: larger than what is left
    /// is an error, so the count can size an allocation.
    fn count(&mut self, min_bytes: usize) -> Result<usize, DeltaError> {
        let n = self.usize()?;
        if n > self.remaining() / min_bytes {
            return Err(DeltaError::Truncated);
        }
        Ok(n)
    }

    pub(super) fn string(&mut self) -> Result<String, DeltaError> {
        let n = self.usize()?;
        let end = self.pos.checked_add(n).ok_or(DeltaError::Truncated)?;
        let raw = self.bytes.get(self.pos..end).ok_or(DeltaError::Truncated)?;
        let s = std::str::from_utf8(raw).map_err(|_| DeltaError::Malformed("not UTF-8"))?;
        self.pos = end;
        Ok(s.to_owned())
    }

    fn list(&mut self) -> Result<Vec<String>, DeltaError> {
        let n = self.count(1)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.string()?);
        }
        Ok(out)
    }

    fn positioned(&mut self) -> Result<Vec<(usize, String)>, DeltaError> {
        let n = self.count(2)?;
        let mut out = Vec::with_capacity(n);
        let mut next: usize = 0;
        for _ in 0..n {
            let p = next
                .checked_add(self.usize()?)
                .ok_or(DeltaError::Malformed("position too large"))?;
            out.push((p, self.string()?));
            next = p
                .checked_add(1)
                .ok_or(DeltaError::Malformed("position too large"))?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn doc(name: &str, description: Option<&str>, devices: &[&str]) -> GroupDoc {
        GroupDoc {
            name: name.into(),
            description: description.map(str::to_string),
            devices: devices.iter().map(|d| d.to_string()).collect(),
        }
    }

    fn big(n: usize) -> GroupDoc {
        GroupDoc {
            name: "fleet".into(),
            description: Some("ten thousand trucks".into()),
            devices: (0..n).map(|i| format!("dev-{i:05}")).collect(),
        }
    }

    fn encoded(d: &Delta) -> Vec<u8> {
        let mut out = Vec::new();
        d.encode(&mut out);
        out
    }

    /// Everything a delta between `old` and `new` must do: both directions, and the
    /// same after an encode/decode round trip. Returns the encoding.
    fn check_pair(old: &GroupDoc, new: &GroupDoc) -> Vec<u8> {
        let d = diff(old, new);
        let mut s = old.clone();
        apply(&mut s, &d).unwrap();
        assert_eq!(&s, new);
        revert(&mut s, &d).unwrap();
        assert_eq!(&s, old);
        let bytes = encoded(&d);
        let (back, used) = Delta::decode(&bytes).unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(back, d);
        bytes
    }

    #[test]
    fn no_change_is_one_byte() {
        let a = doc("a", Some("x"), &["1", "2"]);
        let d = diff(&a, &a);
        assert!(d.is_empty());
        assert_eq!(encoded(&d), vec![0]);
    }

    #[test]
    fn name_and_description_changes() {
        let a = doc("a", None, &["1"]);
        let b = doc("b", Some("déscription 🚚"), &["1"]);
        let bytes = check_pair(&a, &b);
        assert_eq!(bytes[0], F_NAME | F_DESC | F_DESC_NEW);
        let d = diff(&a, &b);
        assert_eq!(d.devices, Devices::Same);
        check_pair(&b, &a);
        check_pair(&b, &doc("b", Some("other"), &["1"]));
        check_pair(&doc("a", Some(""), &[]), &doc("a", None, &[]));
    }

    #[test]
    fn one_device_on_a_big_group_is_small() {
        let old = big(10_000);
        let id = "a-rather-long-device-identifier-of-64-characters-000000000000000";
        let mut added = old.clone();
        added.devices.push(id.into());
        let bytes = check_pair(&old, &added);
        assert!(bytes.len() < 64 + id.len(), "{}", bytes.len());
        // flags, old_len (2), no removals, one insert: gap 10000 (2), length, id.
        assert_eq!(bytes.len(), 1 + 2 + 1 + 1 + 2 + 1 + id.len());

        // Removing it again, and removing one from the middle, from the front.
        let bytes = check_pair(&added, &old);
        assert!(bytes.len() < 64 + id.len(), "{}", bytes.len());
        for at in [0, 4_321, 9_999] {
            let mut removed = old.clone();
            let gone = removed.devices.remove(at);
            let bytes = check_pair(&old, &removed);
            assert!(bytes.len() < 64 + gone.len(), "{at}: {}", bytes.len());
            let bytes = check_pair(&removed, &old);
            assert!(bytes.len() < 64 + gone.len(), "{at}: {}", bytes.len());
        }
    }

    #[test]
    fn removals_and_appends_together() {
        let old = big(10_000);
        let mut new = old.clone();
        new.devices.remove(7_000);
        new.devices.remove(10);
        new.devices.push("x".into());
        new.devices.push("y".into());
        let d = diff(&old, &new);
        let Devices::Edit(e) = &d.devices else {
            panic!("{d:?}")
        };
        assert_eq!(
            e.removed,
            vec![(10, "dev-00010".into()), (7_000, "dev-07000".into())]
        );
        assert_eq!(e.inserted, vec![(9_998, "x".into()), (9_999, "y".into())]);
        let bytes = check_pair(&old, &new);
        assert!(bytes.len() < 40, "{}", bytes.len());
    }

    #[test]
    fn inserts_and_moves_stay_small() {
        let old = big(10_000);
        let mut new = old.clone();
        new.devices.insert(5_000, "middle".into());
        assert!(check_pair(&old, &new).len() < 32);
        let mut moved = old.clone();
        let d = moved.devices.remove(9_000);
        moved.devices.insert(3, d);
        let bytes = check_pair(&old, &moved);
        assert!(bytes.len() < 48, "{}", bytes.len());
    }

    #[test]
    fn a_reversal_stores_both_lists() {
        let old = doc("a", None, &["1", "2", "3", "4", "5", "6"]);
        let new = doc("a", None, &["6", "5", "4", "3", "2", "1"]);
        let d = diff(&old, &new);
        assert!(matches!(d.devices, Devices::Replace { .. }), "{d:?}");
        check_pair(&old, &new);
        check_pair(&old, &doc("a", None, &[]));
        check_pair(&doc("a", None, &[]), &old);
    }

    #[test]
    fn duplicates_still_round_trip() {
        check_pair(
            &doc("a", None, &["1", "1", "2", "1"]),
            &doc("a", None, &["1", "2", "2", "1", "1"]),
        );
    }

    #[test]
    fn a_delta_that_does_not_fit_is_an_error_and_changes_nothing() {
        let old = doc("a", Some("d"), &["1", "2", "3"]);
        let new = doc("b", Some("d"), &["1", "3", "4"]);
        let d = diff(&old, &new);

        let mut wrong = doc("a", Some("d"), &["1", "9", "3"]);
        let before = wrong.clone();
        assert_eq!(
            apply(&mut wrong, &d),
            Err(DeltaError::Mismatch("device not at its position"))
        );
        assert_eq!(wrong, before);

        let mut wrong = doc("z", Some("d"), &["1", "2", "3"]);
        assert_eq!(apply(&mut wrong, &d), Err(DeltaError::Mismatch("name")));
        let mut wrong = doc("b", Some("d"), &["1", "3", "4", "5"]);
        assert_eq!(
            revert(&mut wrong, &d),
            Err(DeltaError::Mismatch("device count"))
        );
        // Forward again on the new state: its name is not the old one.
        let mut s = new.clone();
        assert!(apply(&mut s, &d).is_err());
        assert_eq!(s, new);

        // A pure append applied to a list of another length.
        let app = diff(&doc("a", None, &["1"]), &doc("a", None, &["1", "2"]));
        let mut s = doc("a", None, &["1", "0"]);
        assert_eq!(
            apply(&mut s, &app),
            Err(DeltaError::Mismatch("device count"))
        );

        // Hand-made nonsense in the public fields.
        let bad = Delta {
            devices: Devices::Edit(Edit {
                old_len: 1,
                removed: vec![(0, "1".into()), (0, "1".into())],
                inserted: vec![],
            }),
            ..Delta::default()
        };
        let mut s = doc("a", None, &["1"]);
        assert!(apply(&mut s, &bad).is_err());
        let bad = Delta {
            devices: Devices::Edit(Edit {
                old_len: 1,
                removed: vec![],
                inserted: vec![(5, "x".into())],
            }),
            ..Delta::default()
        };
        assert!(apply(&mut s, &bad).is_err());
        assert_eq!(s, doc("a", None, &["1"]));
        // Out of order: each device is where the edit says, but the splice needs order.
        let bad = Delta {
            devices: Devices::Edit(Edit {
                old_len: 3,
                removed: vec![(1, "2".into()), (0, "1".into())],
                inserted: vec![],
            }),
            ..Delta::default()
        };
        let mut s = doc("a", None, &["1", "2", "3"]);
        assert_eq!(
            apply(&mut s, &bad),
            Err(DeltaError::Malformed(
                "removed positions out of order or range"
            ))
        );
        assert_eq!(s, doc("a", None, &["1", "2", "3"]));
    }

    #[test]
    fn decode_rejects_damage() {
        use DeltaError::*;
        let cases: &[(&[u8], DeltaError)] = &[
            (&[], Truncated),
            (&[0x40], Malformed("unknown flags")),
            (&[0x04], Malformed("description flags without a change")),
            (&[0x30], Malformed("both device encodings")),
            (&[F_NAME, 3, b'a'], Truncated),
            (&[F_NAME, 1, 0xff, 0], Malformed("not UTF-8")),
            (
                &[F_NAME, 0x80, 0x00],
                Malformed("integer not minimally encoded"),
            ),
            (
                &[
                    F_NAME, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
                ],
                Malformed("integer too large"),
            ),
            // A list count far beyond the input: refused before any allocation.
            (&[F_REPLACE, 0xff, 0xff, 0xff, 0xff, 0x0f, 0], Truncated),
            (
                &[F_EDIT, 0xff, 0xff, 0xff, 0xff, 0x0f, 0xff, 0x7f],
                Truncated,
            ),
            // Removing position 1 of a one-device list.
            (
                &[F_EDIT, 1, 1, 1, 1, b'a', 0],
                Malformed("removed positions out of order or range"),
            ),
            // Removing two devices of a one-device list.
            (
                &[F_EDIT, 1, 2, 0, 1, b'a', 0, 1, b'b', 0],
                Malformed("more devices removed than the list held"),
            ),
            // Inserting at position 2 of what becomes a two-device list.
            (
                &[F_EDIT, 1, 0, 1, 2, 1, b'a'],
                Malformed("inserted positions out of order or range"),
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(Delta::decode(bytes).err().as_ref(), Some(want), "{bytes:?}");
        }
        assert_eq!(
            decode_state(&[2]).err(),
            Some(Malformed("unknown state flags"))
        );
        assert_eq!(
            decode_state(&[0, 0, 0xff, 0xff, 0x03]).err(),
            Some(Truncated)
        );
    }

    #[test]
    fn state_round_trips_inside_a_larger_record() {
        for d in [
            big(300),
            doc("", None, &[]),
            doc("日本 🚚", Some(""), &["é"]),
        ] {
            let mut out = vec![];
            encode_state(&d, &mut out);
            let len = out.len();
            out.extend_from_slice(b"trailing");
            assert_eq!(decode_state(&out).unwrap(), (d, len));
        }
    }

    // Property tests.

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => "[a-c]{0,3}",
            1 => "\\PC{0,12}",
        ]
    }

    /// Short IDs from a small alphabet, so two lists share devices.
    fn device() -> impl Strategy<Value = String> {
        prop_oneof![
            8 => "[a-f]{1,2}",
            1 => "\\PC{1,8}",
        ]
    }

    /// A device list without duplicates, in random order.
    fn devices() -> impl Strategy<Value = Vec<String>> {
        prop::collection::vec(device(), 0..24).prop_map(|mut v| {
            let mut seen = std::collections::HashSet::new();
            v.retain(|d| seen.insert(d.clone()));
            v
        })
    }

    fn group() -> impl Strategy<Value = GroupDoc> {
        (text(), prop::option::of(text()), devices()).prop_map(|(name, description, devices)| {
            GroupDoc {
                name,
                description,
                devices,
            }
        })
    }

    #[derive(Debug, Clone)]
    enum Op {
        Remove(prop::sample::Index),
        Append(String),
        Insert(prop::sample::Index, String),
        Move(prop::sample::Index, prop::sample::Index),
        Shuffle(Vec<prop::sample::Index>),
        Name(String),
        Description(Option<String>),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => any::<prop::sample::Index>().prop_map(Op::Remove),
            3 => device().prop_map(Op::Append),
            2 => (any::<prop::sample::Index>(), device()).prop_map(|(i, d)| Op::Insert(i, d)),
            2 => (any::<prop::sample::Index>(), any::<prop::sample::Index>())
                .prop_map(|(a, b)| Op::Move(a, b)),
            1 => prop::collection::vec(any::<prop::sample::Index>(), 0..8).prop_map(Op::Shuffle),
            1 => text().prop_map(Op::Name),
            1 => prop::option::of(text()).prop_map(Op::Description),
        ]
    }

    /// The kind of edits clients make, keeping the list free of duplicates.
    fn mutate(doc: &GroupDoc, ops: &[Op]) -> GroupDoc {
        let mut d = doc.clone();
        for op in ops {
            let v = &mut d.devices;
            match op {
                Op::Remove(i) if !v.is_empty() => {
                    v.remove(i.index(v.len()));
                }
                Op::Append(id) if !v.contains(id) => v.push(id.clone()),
                Op::Insert(i, id) if !v.contains(id) => v.insert(i.index(v.len() + 1), id.clone()),
                Op::Move(a, b) if !v.is_empty() => {
                    let x = v.remove(a.index(v.len()));
                    v.insert(b.index(v.len() + 1), x);
                }
                Op::Shuffle(swaps) if !v.is_empty() => {
                    for (k, s) in swaps.iter().enumerate() {
                        let n = v.len();
                        v.swap(k % n, s.index(n));
                    }
                }
                Op::Name(n) => d.name.clone_from(n),
                Op::Description(x) => d.description.clone_from(x),
                _ => {}
            }
        }
        d
    }

    /// A pair of documents: unrelated, or the second an edit of the first.
    fn pair() -> impl Strategy<Value = (GroupDoc, GroupDoc)> {
        prop_oneof![
            (group(), group()),
            (group(), prop::collection::vec(op(), 0..6)).prop_map(|(g, ops)| {
                let n = mutate(&g, &ops);
                (g, n)
            }),
        ]
    }

    /// A delta from arbitrary bytes, or from an unrelated pair: one that usually does
    /// not fit the state it meets.
    fn any_delta() -> impl Strategy<Value = Delta> {
        prop_oneof![
            pair().prop_map(|(a, b)| diff(&a, &b)),
            prop::collection::vec(any::<u8>(), 0..48)
                .prop_map(|b| Delta::decode(&b).map(|(d, _)| d).unwrap_or_default()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

        #[test]
        fn diff_applies_both_ways((old, new) in pair()) {
            let d = diff(&old, &new);
            prop_assert_eq!(d.is_empty(), old == new);
            let mut s = old.clone();
            apply(&mut s, &d).unwrap();
            prop_assert_eq!(&s, &new);
            revert(&mut s, &d).unwrap();
            prop_assert_eq!(&s, &old);
        }

        #[test]
        fn duplicates_apply_both_ways(
            old in prop::collection::vec("[a-c]", 0..10),
            new in prop::collection::vec("[a-c]", 0..10),
        ) {
            let (old, new) = (
                GroupDoc { name: "n".into(), description: None, devices: old },
                GroupDoc { name: "n".into(), description: None, devices: new },
            );
            let d = diff(&old, &new);
            let mut s = old.clone();
            apply(&mut s, &d).unwrap();
            prop_assert_eq!(&s, &new);
            revert(&mut s, &d).unwrap();
            prop_assert_eq!(&s, &old);
        }

        #[test]
        fn encoding_round_trips((old, new) in pair(), tail in prop::collection::vec(any::<u8>(), 0..8)) {
            let d = diff(&old, &new);
            let mut bytes = Vec::new();
            d.encode(&mut bytes);
            let len = bytes.len();
            bytes.extend_from_slice(&tail);
            let (back, used) = Delta::decode(&bytes).unwrap();
            prop_assert_eq!(used, len);
            prop_assert_eq!(&back, &d);

            let mut bytes = Vec::new();
            encode_state(&new, &mut bytes);
            let len = bytes.len();
            bytes.extend_from_slice(&tail);
            let (back, used) = decode_state(&bytes).unwrap();
            prop_assert_eq!(used, len);
            prop_assert_eq!(back, new);
        }

        /// Arbitrary bytes decode or fail, never panic; what decodes is canonical: it
        /// encodes back to exactly the bytes it was read from.
        #[test]
        fn decoding_any_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            if let Ok((d, used)) = Delta::decode(&bytes) {
                let mut again = Vec::new();
                d.encode(&mut again);
                prop_assert_eq!(&again[..], &bytes[..used]);
            }
            if let Ok((s, used)) = decode_state(&bytes) {
                let mut again = Vec::new();
                encode_state(&s, &mut again);
                prop_assert_eq!(&again[..], &bytes[..used]);
            }
        }

        /// Bytes shaped like real records (a valid one, then flipped or cut) too.
        #[test]
        fn decoding_damaged_records_never_panics(
            (old, new) in pair(),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut bytes = Vec::new();
            diff(&old, &new).encode(&mut bytes);
            for (i, x) in &flips {
                let n = bytes.len();
                bytes[i.index(n)] ^= x;
            }
            bytes.truncate(cut.index(bytes.len() + 1));
            if let Ok((d, _)) = Delta::decode(&bytes) {
                let mut s = old.clone();
                let _ = apply(&mut s, &d);
                let mut s = new.clone();
                let _ = revert(&mut s, &d);
            }
        }

        /// Any delta on any state: an error leaves the state alone, and a forward step
        /// that succeeds is undone exactly by the backward one (and the other way).
        #[test]
        fn applying_any_delta_is_safe(state in group(), d in any_delta()) {
            let mut s = state.clone();
            match apply(&mut s, &d) {
                Ok(()) => {
                    revert(&mut s, &d).unwrap();
                    prop_assert_eq!(&s, &state);
                }
                Err(_) => prop_assert_eq!(&s, &state),
            }
            match revert(&mut s, &d) {
                Ok(()) => {
                    apply(&mut s, &d).unwrap();
                    prop_assert_eq!(&s, &state);
                }
                Err(_) => prop_assert_eq!(&s, &state),
            }
        }

        /// The change feed's read path: deltas of a group's history stored one after
        /// another in one buffer, then walked back from the last state reproduce every
        /// earlier state.
        #[test]
        fn a_chain_reverts_to_every_state(
            start in group(),
            steps in prop::collection::vec(
                prop_oneof![
                    6 => prop::collection::vec(op(), 1..4).prop_map(Some),
                    1 => Just(None),
                ],
                0..16,
            ),
            replacement in group(),
        ) {
            let mut states = vec![start];
            for ops in &steps {
                let last = states.last().unwrap();
                states.push(match ops {
                    Some(ops) => mutate(last, ops),
                    None => replacement.clone(),
                });
            }
            let mut log = Vec::new();
            let mut ends = Vec::new();
            for w in states.windows(2) {
                diff(&w[0], &w[1]).encode(&mut log);
                ends.push(log.len());
            }
            let mut deltas = Vec::new();
            let mut at = 0;
            while at < log.len() {
                let (d, used) = Delta::decode(&log[at..]).unwrap();
                at += used;
                prop_assert_eq!(Some(&at), ends.get(deltas.len()));
                deltas.push(d);
            }
            let mut s = states.last().unwrap().clone();
            for (i, d) in deltas.iter().enumerate().rev() {
                revert(&mut s, d).unwrap();
                prop_assert_eq!(&s, &states[i]);
            }
        }
    }
}
