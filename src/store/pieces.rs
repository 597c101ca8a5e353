//! Large device lists stored in pieces, so that changing one device of a large group
//! writes a few hundred bytes, not the group.
//!
//! A group whose device list is small (at most `INLINE_MAX` bytes of JSON, about a
//! hundred devices) is one value: `header | public JSON` (`groups.rs`), and a read
//! copies it. A larger one is split: the group's value is the header, the byte `MARK`
//! (where a whole value has its JSON's `{`, so telling the two apart reads one byte),
//! where the list was cut out of the JSON and the number of pieces (4 bytes each,
//! big-endian), then the JSON without its list; the list itself lives in the `k` space as pieces of at most
//! `PIECE_MAX` bytes: `account 0x00 n piece-number` → `"d1","d2",…` (the exact bytes
//! between the brackets, comma-joined across pieces).
//!
//! Piece numbers leave room between them (`STRIDE`), and a write keeps every old piece
//! that is still a run of the new list where it was, so adding or removing a device
//! rewrites the one piece around it ([`relayout`]). Reads join the pieces back
//! ([`Store::view`]); a read outside the writer mutex checks that the group's value did
//! not change while its pieces were read, and that it found as many pieces as the value
//! says, so no reader ever sees half of a change.

use std::collections::HashMap;

use sled::IVec;

use super::value::{is_split, join, Encoded, GroupView};
use super::Error;
use super::{keys, Store};
use crate::model::GroupId;

/// The largest piece (one device longer than this is a piece of its own).
pub(super) const PIECE_MAX: usize = 512;
/// The distance between piece numbers of a list laid out afresh.
const STRIDE: u32 = 1 << 16;

/// The list cut into runs of at most `PIECE_MAX` bytes (at least one device each),
/// as device index ranges.
fn pack(enc: &Encoded, from: usize, to: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = from;
    for i in from..to {
        if i > start && enc.spans[i].1 - enc.spans[start].0 > PIECE_MAX {
            out.push((start, i));
            start = i;
        }
    }
    if start < to {
        out.push((start, to));
    }
    out
}

/// The first JSON string of a piece (`"a","b"` → `"a"`), as stored.
fn first_item(piece: &[u8]) -> Option<&[u8]> {
    if piece.first() != Some(&b'"') {
        return None;
    }
    let mut i = 1;
    while i < piece.len() {
        match piece[i] {
            b'\\' => i += 2,
            b'"' => return Some(&piece[..=i]),
            _ => i += 1,
        }
    }
    None
}

/// A piece written (number, bytes) or removed (number, None).
pub(super) type PieceOp = (u32, Option<Vec<u8>>);

/// The piece writes (number → bytes) and removals (number → None) that turn the
/// stored pieces `old` (in number order) into `enc`'s list. Every old piece that is
/// still a run of the new list, in the same order, stays as it is; the devices between
/// kept pieces go into new pieces numbered between them (reusing the numbers of pieces
/// that went, so a one-device change is one piece rewritten). When there is no room
/// between two numbers, the whole list is laid out afresh. Also returns the number
/// of pieces after.
pub(super) fn relayout(old: &[(u32, IVec)], enc: &Encoded) -> (Vec<PieceOp>, u32) {
    let layout = keep_and_fill(old, enc).unwrap_or_else(|| {
        pack(enc, 0, enc.spans.len())
            .into_iter()
            .zip(1..)
            .map(|(run, i)| (STRIDE.saturating_mul(i), run))
            .collect()
    });
    let mut ops = Vec::new();
    let old_of: HashMap<u32, &IVec> = old.iter().map(|(n, v)| (*n, v)).collect();
    let mut used = std::collections::HashSet::new();
    for (num, (from, to)) in &layout {
        used.insert(*num);
        let bytes = enc.run(*from, *to);
        if old_of.get(num).map(|v| &v[..]) != Some(bytes) {
            ops.push((*num, Some(bytes.to_vec())));
        }
    }
    for (num, _) in old {
        if !used.contains(num) {
            ops.push((*num, None));
        }
    }
    (ops, u32::try_from(layout.len()).unwrap_or(u32::MAX))
}

/// The old pieces the new list keeps, in order: (old index, first device, end device).
/// An old piece is kept when its bytes are found whole in the new list, in order, ending
/// at a device boundary, unless the gap after it fits into it.
fn kept_runs(old: &[(u32, IVec)], enc: &Encoded) -> Vec<(usize, usize, usize)> {
    let n = enc.spans.len();
    let at: HashMap<&[u8], usize> = enc
        .spans
        .iter()
        .enumerate()
        .map(|(i, (a, b))| (&enc.list[*a..*b], i))
        .collect();
    let ends: Vec<usize> = enc.spans.iter().map(|s| s.1).collect();
    // Old pieces still found whole, in order: (old index, first device, end device).
    let mut kept: Vec<(usize, usize, usize)> = Vec::new();
    let mut cursor = 0;
    for (i, (_, bytes)) in old.iter().enumerate() {
        let Some(&p) = first_item(bytes).and_then(|f| at.get(f)) else {
            continue;
        };
        if p < cursor {
            continue;
        }
        let start = enc.spans[p].0;
        let end = start + bytes.len();
        if enc.list.get(start..end) != Some(&bytes[..]) {
            continue;
        }
        // The run must end at a device boundary.
        let Ok(last) = ends.binary_search(&end) else {
            continue;
        };
        kept.push((i, p, last + 1));
        cursor = last + 1;
    }
    // A gap that fits into the kept piece before it joins that piece (appending to a
    // list rewrites its last piece instead of adding a small one).
    let mut merged: Vec<(usize, usize, usize)> = Vec::new();
    for (k, &(i, from, to)) in kept.iter().enumerate() {
        let gap_end = kept.get(k + 1).map_or(n, |next| next.1);
        if to < gap_end && enc.spans[gap_end - 1].1 - enc.spans[from].0 <= PIECE_MAX {
            // Not kept any more: its devices and the gap's are laid out together.
            continue;
        }
        merged.push((i, from, to));
    }
    merged
}

/// The new layout (piece number → device range, in order), or None when numbers run
/// out and the list must be laid out afresh.
fn keep_and_fill(old: &[(u32, IVec)], enc: &Encoded) -> Option<Vec<(u32, (usize, usize))>> {
    let n = enc.spans.len();
    let kept = kept_runs(old, enc);
    let mut layout = Vec::new();
    let mut pos = 0;
    let mut lo: u64 = 0;
    let old_num = |i: usize| u64::from(old[i].0);
    for k in 0..=kept.len() {
        let (gap_end, hi) = match kept.get(k) {
            Some(&(i, from, _)) => (from, old_num(i)),
            None => (n, u64::from(u32::MAX) + 1),
        };
        if pos < gap_end {
            let runs = pack(enc, pos, gap_end);
            // Numbers of pieces that went, between the neighbours, first.
            let free: Vec<u64> = old
                .iter()
                .map(|(num, _)| u64::from(*num))
                .filter(|num| *num > lo && *num < hi)
                .filter(|num| !kept.iter().any(|&(i, _, _)| old_num(i) == *num))
                .collect();
            let nums: Vec<u64> = if free.len() >= runs.len() {
                free[..runs.len()].to_vec()
            } else if kept.get(k).is_none() {
                (1..=runs.len() as u64)
                    .map(|j| lo + u64::from(STRIDE) * j)
                    .collect()
            } else {
                let step = (hi - lo) / (runs.len() as u64 + 1);
                if step == 0 {
                    return None;
                }
                (1..=runs.len() as u64).map(|j| lo + step * j).collect()
            };
            for (num, run) in nums.into_iter().zip(runs) {
                layout.push((u32::try_from(num).ok()?, run));
            }
        }
        if let Some(&(i, from, to)) = kept.get(k) {
            layout.push((old[i].0, (from, to)));
            pos = to;
            lo = old_num(i);
        }
    }
    Some(layout)
}

/// The stored form of a group written afresh (a create, a restore): its value and
/// its pieces.
pub(super) fn fresh(enc: &Encoded) -> (Vec<u8>, Vec<(u32, Vec<u8>)>) {
    if !enc.split() {
        return (enc.whole(), Vec::new());
    }
    let pieces: Vec<(u32, Vec<u8>)> = relayout(&[], enc)
        .0
        .into_iter()
        .filter_map(|(num, v)| Some((num, v?)))
        .collect();
    (enc.cut(pieces.len() as u32), pieces)
}

/// Which state a read sees (`space.rs`): the durable one (every reader), or the
/// latest applied one (writers, under the writer mutex).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Seen {
    Durable,
    Latest,
}

impl Store {
    /// The group whose stored value is `raw`, with its pieces joined back when it is
    /// split. A durable read may race a change becoming visible: it reads the value
    /// again after the pieces and starts over when it changed (None when the group
    /// went meanwhile).
    pub(super) fn view(
        &self,
        account: &str,
        id: GroupId,
        raw: IVec,
        seen: Seen,
    ) -> Result<Option<GroupView>, Error> {
        if !is_split(&raw) {
            return GroupView::new(id, raw).map(Some);
        }
        let key = keys::group(account, id.0);
        let mut raw = raw;
        for _ in 0..8 {
            let pieces = self.pieces_of(account, id.0, seen)?;
            let values: Vec<IVec> = pieces.into_iter().map(|(_, v)| v).collect();
            let joined = join(&raw, &values);
            // A writer holds the mutex, so nothing moves under it; a durable read
            // checks that the value it joined is still the group's.
            if seen == Seen::Durable {
                match self.groups.get(&key).map_err(|e| self.read_err(e))? {
                    None => return Ok(None),
                    Some(again) if again == raw => {}
                    Some(again) if !is_split(&again) => return GroupView::new(id, again).map(Some),
                    Some(again) => {
                        raw = again;
                        continue;
                    }
                }
            }
            let whole = joined.ok_or_else(|| {
                Error::corrupt(format!("device list of {id}: pieces are missing"))
            })?;
            return GroupView::new(id, whole.into()).map(Some);
        }
        Err(Error::KeptChanging {
            what: format!("group {id}"),
        })
    }

    /// The stored pieces of group `n`, in order.
    pub(super) fn pieces_of(
        &self,
        account: &str,
        n: u64,
        seen: Seen,
    ) -> Result<Vec<(u32, IVec)>, Error> {
        let prefix = keys::group(account, n);
        let iter = match seen {
            Seen::Durable => self.pieces.scan_prefix(&prefix),
            Seen::Latest => self.pieces.scan_prefix_latest(&prefix),
        };
        let mut out = Vec::new();
        for item in iter {
            let (k, v) = item.map_err(|e| self.read_err(e))?;
            let (_, _, num) = keys::piece_parts(&k)
                .ok_or_else(|| Error::corrupt(format!("piece key of grp-{n}")))?;
            out.push((num, v));
        }
        Ok(out)
    }

    /// The pieces of group `n` as the writer sees them, when its stored value `old`
    /// is split (none otherwise).
    fn stored_pieces(&self, account: &str, n: u64, old: &[u8]) -> Result<Vec<(u32, IVec)>, Error> {
        if is_split(old) {
            self.pieces_of(account, n, Seen::Latest)
        } else {
            Ok(Vec::new())
        }
    }

    /// The writes that store `enc` as group `n`, whose stored value is `old` (None
    /// for a new group): the value, and the pieces written or removed. Under the writer
    /// mutex.
    pub(super) fn plan_store(
        &self,
        account: &str,
        n: u64,
        old: Option<&[u8]>,
        enc: &Encoded,
    ) -> Result<GroupWrites, Error> {
        let old_pieces = match old {
            Some(raw) => self.stored_pieces(account, n, raw)?,
            None => Vec::new(),
        };
        let (value, ops) = if enc.split() {
            let (ops, count) = relayout(&old_pieces, enc);
            (enc.cut(count), ops)
        } else {
            let ops = old_pieces.iter().map(|(num, _)| (*num, None)).collect();
            (enc.whole(), ops)
        };
        Ok(GroupWrites {
            value: Some(value),
            pieces: ops
                .into_iter()
                .map(|(num, v)| (keys::piece(account, n, num), v))
                .collect(),
        })
    }

    /// The removals that delete group `n` whose stored value is `old`.
    pub(super) fn plan_remove(
        &self,
        account: &str,
        n: u64,
        old: &[u8],
    ) -> Result<GroupWrites, Error> {
        let pieces = self
            .stored_pieces(account, n, old)?
            .into_iter()
            .map(|(num, _)| (keys::piece(account, n, num), None))
            .collect();
        Ok(GroupWrites {
            value: None,
            pieces,
        })
    }

    /// How many pieces each group has, by (account, group number): one pass over the
    /// pieces, for the checks (`check.rs`).
    pub(super) fn piece_counts(&self) -> Result<HashMap<(Vec<u8>, u64), u32>, String> {
        let mut out: HashMap<(Vec<u8>, u64), u32> = HashMap::new();
        for item in self.pieces.iter() {
            let (k, _) = item.map_err(|e| format!("a piece cannot be read ({e})"))?;
            let (account, n, _) = keys::piece_parts(&k).ok_or_else(|| {
                format!("a piece key is not account + group + piece ({:?})", &k[..])
            })?;
            *out.entry((account.to_vec(), n)).or_default() += 1;
        }
        Ok(out)
    }
}

/// Compares the pieces found (`Store::piece_counts`) with the counts the groups name
/// (by account and number), and says what is missing or left over.
pub(super) fn compare_counts(
    mut found: HashMap<(Vec<u8>, u64), u32>,
    named: &HashMap<(Vec<u8>, u64), u32>,
) -> Result<(), String> {
    for ((account, n), want) in named {
        let got = found.remove(&(account.clone(), *n)).unwrap_or(0);
        if got != *want {
            return Err(format!(
                "the device list of {}/grp-{n} has {got} pieces, but {want} are recorded (records were lost)",
                String::from_utf8_lossy(account)
            ));
        }
    }
    if let Some(((account, n), got)) = found.into_iter().next() {
        return Err(format!(
            "{got} device-list pieces belong to {}/grp-{n}, which has none",
            String::from_utf8_lossy(&account)
        ));
    }
    Ok(())
}

/// What storing (or removing) one group writes.
pub(super) struct GroupWrites {
    pub value: Option<Vec<u8>>,
    pub pieces: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::GroupDoc;
    use crate::store::value::{piece_count, PublicGroup, HEADER, MARK};
    use crate::time::rfc3339_ms;

    fn enc(devices: &[String]) -> Encoded {
        let doc = GroupDoc {
            name: "g".into(),
            description: Some("d \"q\"".into()),
            devices: devices.to_vec(),
        };
        Encoded::new(GroupId(7), &doc, 3, 1_000, 2_000)
    }

    fn devices(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("device-{i:06}")).collect()
    }

    /// Applies piece ops to a stored layout.
    fn apply(old: &[(u32, IVec)], ops: &[PieceOp]) -> Vec<(u32, IVec)> {
        let mut m: std::collections::BTreeMap<u32, IVec> = old.iter().cloned().collect();
        for (num, v) in ops {
            match v {
                Some(v) => m.insert(*num, v.clone().into()),
                None => m.remove(num),
            };
        }
        m.into_iter().collect()
    }

    fn joined(enc: &Encoded, pieces: &[(u32, IVec)]) -> Vec<u8> {
        let values: Vec<IVec> = pieces.iter().map(|(_, v)| v.clone()).collect();
        join(&enc.cut(pieces.len() as u32), &values).unwrap()
    }

    #[test]
    fn the_encoding_is_the_serde_one() {
        let doc = GroupDoc {
            name: "naïve \"x\"".into(),
            description: None,
            devices: vec!["a\u{1}".into(), "b,c".into()],
        };
        let e = Encoded::new(GroupId(9), &doc, 1, 5, 6);
        let public = PublicGroup {
            id: GroupId(9).to_string(),
            name: doc.name.clone(),
            description: None,
            devices: doc.devices.clone(),
            creation: rfc3339_ms(5),
            last_modified: rfc3339_ms(6),
        };
        assert_eq!(&e.whole()[HEADER..], serde_json::to_vec(&public).unwrap());
        assert!(!e.whole()[HEADER..].contains(&MARK));
    }

    #[test]
    fn a_large_list_is_split_and_joins_back() {
        let e = enc(&devices(10_000));
        assert!(e.split());
        let (value, pieces) = fresh(&e);
        assert!(pieces.iter().all(|(_, p)| p.len() <= PIECE_MAX));
        assert_eq!(piece_count(&value), pieces.len() as u32);
        let stored: Vec<(u32, IVec)> = pieces.into_iter().map(|(n, v)| (n, v.into())).collect();
        assert_eq!(joined(&e, &stored), e.whole());
        assert!(!is_split(&enc(&devices(10)).whole()));
    }

    #[test]
    fn a_one_device_change_rewrites_one_piece() {
        let mut list = devices(9_999);
        let e = enc(&list);
        let (_, pieces) = fresh(&e);
        let mut stored: Vec<(u32, IVec)> = pieces.into_iter().map(|(n, v)| (n, v.into())).collect();
        for round in 0..50 {
            // Add at the end, then take it out again; then take one out of the middle
            // and put it back at the end.
            list.push(format!("toggle-{round}"));
            let e = enc(&list);
            let (ops, _) = relayout(&stored, &e);
            let written: usize = ops
                .iter()
                .map(|(_, v)| v.as_ref().map_or(8, Vec::len))
                .sum();
            assert!(
                ops.len() <= 2 && written <= 2 * PIECE_MAX,
                "{round}: {ops:?}"
            );
            stored = apply(&stored, &ops);
            assert_eq!(joined(&e, &stored), e.whole());

            list.pop();
            let e = enc(&list);
            let (ops, _) = relayout(&stored, &e);
            assert!(ops.len() <= 2, "{round}: {ops:?}");
            stored = apply(&stored, &ops);
            assert_eq!(joined(&e, &stored), e.whole());

            let d = list.remove(round * 37);
            let e = enc(&list);
            let (ops, _) = relayout(&stored, &e);
            assert!(ops.len() <= 2, "{round}: {ops:?}");
            stored = apply(&stored, &ops);
            assert_eq!(joined(&e, &stored), e.whole());
            list.push(d);
        }
    }

    #[test]
    fn any_change_of_the_list_joins_back_exactly() {
        // Inserts in the middle, reversals, replacements: whatever the new list, the
        // pieces written join to it, in order, with no piece over PIECE_MAX unless it
        // is one device.
        let mut list = devices(3_000);
        let mut stored: Vec<(u32, IVec)> = fresh(&enc(&list))
            .1
            .into_iter()
            .map(|(n, v)| (n, v.into()))
            .collect();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = move |m: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % m as u64) as usize
        };
        for step in 0..300 {
            match rnd(5) {
                0 => {
                    let at = rnd(list.len() + 1);
                    list.insert(at, format!("new-{step}"));
                }
                1 if !list.is_empty() => {
                    let at = rnd(list.len());
                    list.remove(at);
                }
                2 => {
                    let at = rnd(list.len() + 1);
                    for j in 0..40 {
                        list.insert(at, format!("burst-{step}-{j}"));
                    }
                }
                3 if list.len() > 100 => {
                    let at = rnd(list.len() - 100);
                    list.drain(at..at + 100);
                }
                _ => {
                    let at = rnd(list.len().max(1));
                    list[at..].reverse();
                }
            }
            let e = enc(&list);
            stored = apply(&stored, &relayout(&stored, &e).0);
            assert_eq!(joined(&e, &stored), e.whole(), "step {step}");
            assert!(stored
                .iter()
                .all(|(_, p)| p.len() <= PIECE_MAX
                    || first_item(p).map(<[u8]>::len) == Some(p.len())));
        }
    }

    /// A large group through a store: every change reads back whole, in every reader
    /// (GET, list, change feed, check), a one-device change writes one piece, and a
    /// delete leaves no piece behind, also across a reopen.
    #[test]
    fn a_large_group_reads_back_whole_through_the_store() {
        use crate::store::groups::{Actor, ListQuery};
        use crate::store::testing::store;
        let dir = tempfile::tempdir().unwrap();
        let a = Actor {
            account: "acct",
            user: "u",
        };
        let mut want = GroupDoc {
            name: "big".into(),
            description: None,
            devices: devices(9_950),
        };
        let id = {
            let s = store(dir.path());
            let id = s.create_group(a, &want, 100, None).unwrap().group.id;
            let pieces = s.pieces_of("acct", id.0, Seen::Latest).unwrap().len();
            assert!(pieces > 100, "{pieces} pieces");
            for round in 0..20 {
                want.devices.push(format!("toggle-{round}"));
                let before = s.pieces_of("acct", id.0, Seen::Latest).unwrap();
                let (v, ()) = s
                    .update_group(a, id, None, |_| Ok::<_, Error>((want.clone(), ())))
                    .unwrap();
                assert_eq!(v.doc().unwrap(), want);
                let after = s.pieces_of("acct", id.0, Seen::Latest).unwrap();
                let changed = after.iter().filter(|p| !before.contains(p)).count();
                assert!(changed <= 1, "round {round}: {changed} pieces written");
                if round % 3 == 0 {
                    want.devices.remove(round * 101);
                    s.update_group(a, id, None, |_| Ok::<_, Error>((want.clone(), ())))
                        .unwrap();
                }
            }
            let got = s.get_group("acct", id).unwrap().unwrap();
            assert_eq!(got.doc().unwrap(), want);
            let page = s.list_groups("acct", &ListQuery::default()).unwrap();
            assert_eq!(page.groups.len(), 1);
            assert_eq!(page.groups[0].json(), got.json());
            let report = s.check();
            assert!(report.problems.is_empty(), "{:?}", report.problems);
            s.close().unwrap();
            id
        };
        let s = store(dir.path());
        let got = s.get_group("acct", id).unwrap().unwrap();
        assert_eq!(got.doc().unwrap(), want);
        s.fast_check().unwrap();
        // Shrinking below the bound stores the group whole again.
        want.devices.truncate(5);
        s.update_group(a, id, None, |_| Ok::<_, Error>((want.clone(), ())))
            .unwrap();
        assert!(s.pieces_of("acct", id.0, Seen::Latest).unwrap().is_empty());
        assert_eq!(
            s.get_group("acct", id).unwrap().unwrap().doc().unwrap(),
            want
        );
        want.devices = devices(5_000);
        s.update_group(a, id, None, |_| Ok::<_, Error>((want.clone(), ())))
            .unwrap();
        assert!(!s.pieces_of("acct", id.0, Seen::Latest).unwrap().is_empty());
        s.delete_group(a, id, None).unwrap();
        assert!(s.pieces_of("acct", id.0, Seen::Latest).unwrap().is_empty());
        assert!(s.check().problems.is_empty());
    }

    #[test]
    fn first_item_reads_escaped_strings() {
        assert_eq!(first_item(br#""a\"b","c""#), Some(&br#""a\"b""#[..]));
        assert_eq!(first_item(br#""a\\","c""#), Some(&br#""a\\""#[..]));
        assert_eq!(first_item(b"x"), None);
    }
}
