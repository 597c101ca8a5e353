//! Compact change records and the change-feed entries rebuilt from them [ext].
//!
//! The feed answers each entry with the group's full state after the change (docs/api/extensions.md
//! "Change feed"), but storing that state every time made a one-device change of a 10,000-device
//! group cost its whole JSON (150 KB) for 30 days. A change is stored as a record of
//! what changed instead (`delta.rs`: an invertible delta, a few dozen bytes), under the
//! group: `h` space, `account 0x00 n seq`. The feed order is a small index beside it:
//! `c` space, `account 0x00 seq` → `n`.
//!
//! The state after a record is rebuilt backwards from a later full state: the nearest
//! later *checkpoint* (a record that also carries the full state: every
//! `CHECKPOINT_EVERY`-th revision, and a delete, which keeps the state before it) or,
//! when there is none, the group itself. A create carries no state: the group, or a
//! later checkpoint, is always there to rebuild it from (retention removes the oldest
//! records first), and storing it would double what a new group costs on disk.
//! (Restored records carry their full state: a backup's entries are states.) So reading an entry reads at most
//! `CHECKPOINT_EVERY` records of its group, and removing old records (retention) never
//! breaks a newer one: nothing is rebuilt forwards from the past. A checkpoint costs
//! the group's state once per `CHECKPOINT_EVERY` changes: for the 10,000-device group,
//! 100 KB / 256 ≈ 400 bytes a change, on top of the delta.
//!
//! Entries of one account are rebuilt by [`EntryReader`], lazily and in `seq` order,
//! holding one state per group of the page, so a page's memory follows what it
//! answers (its byte bound), not the records it walks.

use std::collections::HashMap;

use sled::IVec;

use super::delta::{self, Delta, DeltaError, Reader};
use super::Error;
use super::{keys, Store};
use crate::model::{GroupDoc, GroupId};
use crate::time::rfc3339_ms;

/// A change-feed entry: `{seq, time, op, id, revision, userName, group}` with `group`
/// the raw public JSON (or null) and `revision` the group's revision after the change
/// (left out of deletions, and of entries written before it was recorded).
pub(super) fn change_entry(
    seq: u64,
    time: i64,
    op: &str,
    id: GroupId,
    revision: Option<u64>,
    user: &str,
    group: Option<&[u8]>,
) -> Vec<u8> {
    change_entry_at(seq, &rfc3339_ms(time), op, id, revision, user, group)
}

/// `change_entry` with the time already formatted (restore keeps the stored text).
pub(super) fn change_entry_at(
    seq: u64,
    time: &str,
    op: &str,
    id: GroupId,
    revision: Option<u64>,
    user: &str,
    group: Option<&[u8]>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + group.map_or(4, <[u8]>::len));
    out.extend_from_slice(b"{\"seq\":");
    out.extend_from_slice(seq.to_string().as_bytes());
    out.extend_from_slice(b",\"time\":\"");
    out.extend_from_slice(time.as_bytes());
    out.extend_from_slice(b"\",\"op\":\"");
    out.extend_from_slice(op.as_bytes());
    out.extend_from_slice(b"\",\"id\":\"");
    out.extend_from_slice(id.to_string().as_bytes());
    out.push(b'"');
    if let Some(r) = revision {
        out.extend_from_slice(b",\"revision\":");
        out.extend_from_slice(r.to_string().as_bytes());
    }
    out.extend_from_slice(b",\"userName\":");
    // Serialising a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, user);
    out.extend_from_slice(b",\"group\":");
    out.extend_from_slice(group.unwrap_or(b"null"));
    out.push(b'}');
    out
}

/// A checkpoint every this many revisions of a group.
pub const CHECKPOINT_EVERY: u64 = 256;

/// What a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeOp {
    Created = 1,
    Updated = 2,
    Deleted = 3,
}

impl ChangeOp {
    /// As the API says it.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeOp::Created => "created",
            ChangeOp::Updated => "updated",
            ChangeOp::Deleted => "deleted",
        }
    }

    pub fn parse(s: &str) -> Option<ChangeOp> {
        match s {
            "created" => Some(ChangeOp::Created),
            "updated" => Some(ChangeOp::Updated),
            "deleted" => Some(ChangeOp::Deleted),
            _ => None,
        }
    }
}

/// One stored change.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub op: ChangeOp,
    /// When it happened (ms); also the group's `lastModified` after it.
    pub time: i64,
    /// The group's revision after the change (None for deletions and for entries
    /// restored from before revisions were recorded).
    pub revision: Option<u64>,
    pub user: String,
    /// Updated: from the state before to the state after. None only for the oldest
    /// record a restore kept of a group whose earlier records were gone.
    pub delta: Option<Delta>,
    /// A full state and the group's creation time: after the change (created, a
    /// checkpoint), or before it (deleted).
    pub full: Option<(GroupDoc, i64)>,
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

impl Record {
    /// `op | time | revision (0: none) | user | flags (1 delta, 2 full) | delta |
    /// creation, state` (integers LEB128, times zigzag).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.user.len());
        out.push(self.op as u8);
        delta::put_varint(&mut out, zigzag(self.time));
        delta::put_varint(&mut out, self.revision.unwrap_or(0));
        delta::put_str(&mut out, &self.user);
        let flags = u8::from(self.delta.is_some()) | (u8::from(self.full.is_some()) << 1);
        out.push(flags);
        if let Some(d) = &self.delta {
            d.encode(&mut out);
        }
        if let Some((doc, creation)) = &self.full {
            delta::put_varint(&mut out, zigzag(*creation));
            delta::encode_state(doc, &mut out);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Record, DeltaError> {
        let mut r = Reader::new(bytes);
        let op = match r.byte()? {
            1 => ChangeOp::Created,
            2 => ChangeOp::Updated,
            3 => ChangeOp::Deleted,
            _ => return Err(DeltaError::Malformed("unknown change op")),
        };
        let time = unzigzag(r.varint()?);
        let revision = Some(r.varint()?).filter(|r| *r != 0);
        let user = r.string()?;
        let flags = r.byte()?;
        if flags & !3 != 0 {
            return Err(DeltaError::Malformed("unknown record flags"));
        }
        let delta = if flags & 1 != 0 {
            let (d, n) = Delta::decode(r.rest())?;
            r.skip(n)?;
            Some(d)
        } else {
            None
        };
        let full = if flags & 2 != 0 {
            let creation = unzigzag(r.varint()?);
            let (doc, n) = delta::decode_state(r.rest())?;
            r.skip(n)?;
            Some((doc, creation))
        } else {
            None
        };
        if r.pos() != bytes.len() {
            return Err(DeltaError::Malformed(
                "trailing bytes after a change record",
            ));
        }
        Ok(Record {
            op,
            time,
            revision,
            user,
            delta,
            full,
        })
    }
}

/// One rebuilt entry.
#[derive(Debug, Clone)]
pub struct Entry {
    pub seq: u64,
    /// The entry's JSON as the API serves it (`changes::change_entry`).
    pub json: IVec,
}

/// Where one group of a page is: its state after the record at `at`, that record,
/// and the records still ahead (oldest first).
struct Cursor {
    state: Option<GroupDoc>,
    creation: i64,
    at: u64,
    current: Record,
    ahead: std::collections::VecDeque<(u64, Record)>,
}

/// Rebuilds the entries of one account for a list of `(seq, n)` (ascending `seq`),
/// one at a time. See the module comment.
pub struct EntryReader<'a> {
    store: &'a Store,
    account: String,
    items: std::collections::VecDeque<(u64, u64)>,
    /// The highest `seq` of each group among `items`.
    last_of: HashMap<u64, u64>,
    cursors: HashMap<u64, Cursor>,
    /// Entries as the API serves them: each group with its `origin` (`served`).
    served: bool,
}

fn damaged(account: &str, n: u64, what: impl std::fmt::Display) -> Error {
    Error::corrupt(format!(
        "change records of {account}/{}: {what}",
        GroupId(n)
    ))
}

impl<'a> EntryReader<'a> {
    pub fn new(store: &'a Store, account: &str, items: Vec<(u64, u64)>) -> EntryReader<'a> {
        let mut last_of = HashMap::new();
        for (seq, n) in &items {
            last_of.insert(*n, *seq);
        }
        EntryReader {
            store,
            account: account.to_string(),
            items: items.into(),
            last_of,
            cursors: HashMap::new(),
            served: false,
        }
    }

    /// Entries as the API serves them (`value::push_served`: each group with its
    /// `origin`); without this, as stored and backed up.
    pub fn served(mut self) -> EntryReader<'a> {
        self.served = true;
        self
    }

    /// The `seq` of the next entry, if any.
    pub fn peek_seq(&self) -> Option<u64> {
        self.items.front().map(|(seq, _)| *seq)
    }

    /// The next entry.
    pub fn next_entry(&mut self) -> Option<Result<Entry, Error>> {
        let (seq, n) = self.items.pop_front()?;
        Some(self.entry(seq, n))
    }

    fn entry(&mut self, seq: u64, n: u64) -> Result<Entry, Error> {
        if !self.cursors.contains_key(&n) {
            let last = self.last_of.get(&n).copied().unwrap_or(seq);
            let cursor = self.start(n, seq, last)?;
            self.cursors.insert(n, cursor);
        }
        let account = self.account.clone();
        let cursor = self
            .cursors
            .get_mut(&n)
            .ok_or_else(|| damaged(&account, n, "lost its cursor"))?;
        // Move forward to `seq`, applying every record passed.
        while cursor.at < seq {
            let Some((at, rec)) = cursor.ahead.pop_front() else {
                return Err(damaged(&account, n, format!("change {seq} is missing")));
            };
            forward(&mut cursor.state, &mut cursor.creation, &rec)
                .map_err(|e| damaged(&account, n, e))?;
            cursor.at = at;
            cursor.current = rec;
        }
        if cursor.at != seq {
            return Err(damaged(&account, n, format!("change {seq} is missing")));
        }
        let rec = &cursor.current;
        let group = cursor.state.as_ref().map(|doc| {
            super::value::encode(
                GroupId(n),
                doc,
                rec.revision.unwrap_or(0),
                cursor.creation,
                rec.time,
            )
        });
        let mut public = group
            .as_deref()
            .and_then(|raw| raw.get(super::value::HEADER..));
        let served;
        if self.served {
            if let Some(json) = public {
                let mut out = Vec::with_capacity(json.len() + 20);
                super::value::push_served(&mut out, GroupId(n), json);
                served = out;
                public = Some(&served);
            }
        }
        let json = change_entry(
            seq,
            rec.time,
            rec.op.as_str(),
            GroupId(n),
            rec.revision,
            &rec.user,
            public,
        );
        Ok(Entry {
            seq,
            json: json.into(),
        })
    }

    /// A cursor positioned just before `first` (the state after the record before
    /// it), with the records from `first` on ahead, found by walking back from the
    /// nearest full state at or after `last`. A writer may make a change visible
    /// between the records read and the group read: then the group is newer than the
    /// last record, and the walk is simply made again.
    fn start(&self, n: u64, first: u64, last: u64) -> Result<Cursor, Error> {
        for _ in 0..8 {
            if let Some(c) = self.try_start(n, first, last)? {
                return Ok(c);
            }
        }
        Err(Error::KeptChanging {
            what: "the change feed".into(),
        })
    }

    /// The records of group `n` from `first` on, up to the first full state at or after
    /// `last` (or its newest record).
    fn records_from(&self, n: u64, first: u64, last: u64) -> Result<Vec<(u64, Record)>, Error> {
        let account = &self.account;
        let store = self.store;
        let prefix = keys::group(account, n);
        let mut records: Vec<(u64, Record)> = Vec::new();
        for item in store.history.range(keys::record(account, n, first)..) {
            let (k, v) = item.map_err(|e| store.read_err(e))?;
            if !k.starts_with(&prefix) {
                break;
            }
            let seq = keys::trailing_u64(&k).ok_or_else(|| damaged(account, n, "a bad key"))?;
            let rec = Record::decode(&v).map_err(|e| damaged(account, n, e))?;
            let checkpoint = seq >= last && rec.full.is_some();
            records.push((seq, rec));
            if checkpoint {
                break;
            }
        }
        Ok(records)
    }

    /// Walks `state` (and `creation`), the state after `records[top]`, back to the
    /// state after `records[0]`: a full state where a record has one, else the record
    /// after it reverted.
    fn walk_back(
        &self,
        n: u64,
        records: &[(u64, Record)],
        top: usize,
        state: &mut Option<GroupDoc>,
        creation: &mut i64,
    ) -> Result<(), Error> {
        let account = &self.account;
        for i in (1..=top).rev() {
            let (before, after) = (&records[i - 1].1, &records[i].1);
            match (&before.op, &before.full) {
                (ChangeOp::Created | ChangeOp::Updated, Some((doc, c))) => {
                    *state = Some(doc.clone());
                    *creation = *c;
                }
                // A delete followed by more records: an office group deleted and
                // made again under its central ID (`office.rs`; local numbers are
                // never reused). Nothing exists after a delete.
                (ChangeOp::Deleted, _) => *state = None,
                // ... and a delete in the middle keeps the state before it.
                _ if after.op == ChangeOp::Deleted && after.full.is_some() => {
                    if let Some((doc, c)) = &after.full {
                        *state = Some(doc.clone());
                        *creation = *c;
                    }
                }
                _ => {
                    let d = after
                        .delta
                        .as_ref()
                        .ok_or_else(|| damaged(account, n, "an update without its delta"))?;
                    let s = state
                        .as_mut()
                        .ok_or_else(|| damaged(account, n, "an update of nothing"))?;
                    delta::revert(s, d).map_err(|e| damaged(account, n, e))?;
                }
            }
        }
        Ok(())
    }

    fn try_start(&self, n: u64, first: u64, last: u64) -> Result<Option<Cursor>, Error> {
        let account = &self.account;
        let store = self.store;
        let records = self.records_from(n, first, last)?;
        if records.first().map(|(seq, _)| *seq) != Some(first) {
            return Err(damaged(account, n, format!("change {first} is missing")));
        }
        // The state after records[top], to walk back from.
        let (last_rec, top) = match records.last() {
            Some((_, rec)) => (rec, records.len() - 1),
            None => return Err(damaged(account, n, "no records")),
        };
        let (mut state, mut creation, top) = match (&last_rec.op, &last_rec.full) {
            // A delete keeps the state before it: the state after the record before.
            (ChangeOp::Deleted, Some((doc, creation))) if top > 0 => {
                (Some(doc.clone()), *creation, top - 1)
            }
            (ChangeOp::Deleted, Some((_, creation))) => (None, *creation, 0),
            // A restored delete keeps no state; what came before it does (restored
            // records are all full), and nothing before the delete needs it.
            (ChangeOp::Deleted, None) => (None, 0, top),
            (_, Some((doc, creation))) => (Some(doc.clone()), *creation, top),
            _ => {
                // No checkpoint after `last`: the group itself is the state after the
                // newest record. Its revision must be that record's, or a change
                // became visible meanwhile.
                let Some(view) = store.get_group(account, GroupId(n))? else {
                    return Ok(None);
                };
                if Some(view.revision()) != last_rec.revision {
                    return Ok(None);
                }
                (Some(view.doc()?), view.creation(), top)
            }
        };
        self.walk_back(n, &records, top, &mut state, &mut creation)?;
        let mut records: std::collections::VecDeque<(u64, Record)> = records.into();
        let Some((at, current)) = records.pop_front() else {
            return Err(damaged(account, n, "no records"));
        };
        Ok(Some(Cursor {
            state,
            creation,
            at,
            current,
            ahead: records,
        }))
    }
}

/// Applies one record to the state after the record before it.
fn forward(state: &mut Option<GroupDoc>, creation: &mut i64, rec: &Record) -> Result<(), String> {
    match rec.op {
        ChangeOp::Created => {
            let (doc, c) = rec.full.clone().ok_or("a create without its state")?;
            *state = Some(doc);
            *creation = c;
        }
        ChangeOp::Updated => match (&rec.delta, &rec.full) {
            (_, Some((doc, _))) => *state = Some(doc.clone()),
            (Some(d), None) => {
                let s = state.as_mut().ok_or("an update of nothing")?;
                delta::apply(s, d).map_err(|e| e.to_string())?;
            }
            (None, None) => return Err("an empty update".into()),
        },
        ChangeOp::Deleted => *state = None,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(name: &str, devices: &[&str]) -> GroupDoc {
        GroupDoc {
            name: name.into(),
            description: None,
            devices: devices.iter().map(|d| d.to_string()).collect(),
        }
    }

    #[test]
    fn records_round_trip_and_stay_small() {
        let big: Vec<String> = (0..10_000).map(|i| format!("dev-{i:05}")).collect();
        let old = GroupDoc {
            name: "big".into(),
            description: Some("d".into()),
            devices: big.clone(),
        };
        let mut new = old.clone();
        new.devices.push("dev-new".into());
        let rec = Record {
            op: ChangeOp::Updated,
            time: 1_764_000_000_000,
            revision: Some(7),
            user: "admin".into(),
            delta: Some(delta::diff(&old, &new)),
            full: None,
        };
        let bytes = rec.encode();
        assert!(bytes.len() < 48, "{} bytes", bytes.len());
        assert_eq!(Record::decode(&bytes).unwrap(), rec);
        let full = Record {
            op: ChangeOp::Created,
            time: -5,
            revision: None,
            user: "u".into(),
            delta: None,
            full: Some((doc("a", &["x", "y"]), 3)),
        };
        assert_eq!(Record::decode(&full.encode()).unwrap(), full);
        let mut bad = full.encode();
        bad.push(0);
        assert!(Record::decode(&bad).is_err());
        for cut in 0..full.encode().len() {
            assert!(Record::decode(&full.encode()[..cut]).is_err());
        }
    }

    /// Every entry of the feed rebuilds to exactly the group the write answered, across
    /// checkpoints, deletions, interleaved groups and pages of every size; and a
    /// one-device change of a 10,000-device group stores well under 1 KiB.
    #[test]
    fn the_feed_rebuilds_every_state_a_write_answered() {
        use crate::store::groups::Actor;
        use crate::store::testing::store;
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let actor = Actor {
            account: "a",
            user: "u",
        };
        // seq → the group JSON that write answered (None: a deletion).
        let mut want: Vec<(u64, Option<Vec<u8>>)> = Vec::new();
        let mut seq = 0;
        let mut ids = Vec::new();
        for g in 0..3 {
            let c = s
                .create_group(actor, &doc(&format!("g{g}"), &["a", "b"]), 10, None)
                .unwrap();
            seq += 1;
            want.push((seq, Some(c.group.served())));
            ids.push(c.group.id);
        }
        // Enough updates of group 0 to pass a checkpoint; the others now and then.
        for i in 0..(CHECKPOINT_EVERY as usize + 40) {
            let id = ids[if i % 5 == 4 { 1 + i % 2 } else { 0 }];
            let (view, ()) = s
                .update_group(actor, id, None, |old| {
                    let mut new = old.clone();
                    match i % 3 {
                        0 => new.devices.push(format!("d{i}")),
                        1 => {
                            if !new.devices.is_empty() {
                                new.devices.remove(0);
                            }
                        }
                        _ => new.name = format!("n{i}"),
                    }
                    Ok::<_, Error>((new, ()))
                })
                .unwrap();
            seq += 1;
            want.push((seq, Some(view.served())));
        }
        s.delete_group(actor, ids[1], None).unwrap();
        seq += 1;
        want.push((seq, None));
        let group_of = |entry: &IVec| -> Option<Vec<u8>> {
            let v: serde_json::Value = serde_json::from_slice(entry).unwrap();
            (!v["group"].is_null()).then(|| serde_json::to_vec(&v["group"]).unwrap())
        };
        let norm = |raw: &Option<Vec<u8>>| {
            raw.as_ref()
                .map(|r| serde_json::from_slice::<serde_json::Value>(r).unwrap())
        };
        for limit in [1, 7, 300, 10_000] {
            let mut got = Vec::new();
            let mut after = 0;
            loop {
                let page = s.changes("a", Some(after), limit, usize::MAX).unwrap();
                if page.entries.is_empty() {
                    break;
                }
                got.extend(page.entries.iter().map(group_of));
                after = page.next;
            }
            assert_eq!(got.len(), want.len(), "limit {limit}");
            for ((seq, w), g) in want.iter().zip(&got) {
                assert_eq!(
                    norm(g),
                    norm(w),
                    "limit {limit}: entry {seq} does not rebuild"
                );
            }
        }
        // The whole-store feed rebuilds the same.
        let page = s.feed_after(0, 10_000, usize::MAX).unwrap();
        assert_eq!(page.entries.len(), want.len());
        // A one-device toggle of a 10,000-device group.
        let devices: Vec<String> = (0..10_000).map(|i| format!("dev-{i:05}")).collect();
        let big = s
            .create_group(
                actor,
                &GroupDoc {
                    name: "big".into(),
                    description: None,
                    devices,
                },
                10,
                None,
            )
            .unwrap()
            .group
            .id;
        let before: usize = s.history.iter().map(|r| r.unwrap().1.len()).sum();
        let rounds = 512;
        for i in 0..rounds {
            s.update_group(actor, big, None, |old| {
                let mut new = old.clone();
                if i % 2 == 0 {
                    new.devices.push("toggle".into());
                } else {
                    new.devices.pop();
                }
                Ok::<_, Error>((new, ()))
            })
            .unwrap();
        }
        let after: usize = s.history.iter().map(|r| r.unwrap().1.len()).sum();
        let per_change = (after - before) / rounds;
        assert!(
            per_change < 1024,
            "{per_change} bytes of records per change"
        );
    }
}
