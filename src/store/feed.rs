//! The store's own change feed across every account, for central replication
//! (`replication.rs`): the seam between the store and anything that copies it out.
//! Not over HTTP, and not limited to one account.
//!
//! `changes` entries are keyed `account 0x00 seq`, so reading "every entry after seq
//! S" is one range scan per account, merged by `seq`. Reads are capped at the highest
//! `seq` handed out when the read began (every entry up to it is applied), which makes
//! a page exact: all entries in `(after, next]` of every account are in it.

use std::collections::BTreeMap;

use super::history::EntryReader;
use super::pieces::Seen;
use super::Error;
use super::{keys, Store};
use crate::model::GroupId;

/// One change-feed entry and its account.
#[derive(Debug, Clone)]
pub struct FeedEntry {
    pub seq: u64,
    pub account: String,
    /// The entry JSON as the API serves it (`changes::change_entry`).
    pub entry: sled::IVec,
}

/// A page of the whole store's feed.
#[derive(Debug)]
pub struct FeedPage {
    /// Oldest first, every account.
    pub entries: Vec<FeedEntry>,
    /// Every entry with `seq <= next` is in this page or an earlier one (never below
    /// the `after` asked for).
    pub next: u64,
}

/// One group of a snapshot.
#[derive(Debug, Clone)]
pub struct SnapshotGroup {
    pub account: String,
    /// None only for a group whose latest state came from an entry written before
    /// entries recorded revisions.
    pub revision: Option<u64>,
    /// The group's public JSON.
    pub json: Vec<u8>,
}

/// Every group of every account as of one `seq`.
#[derive(Debug)]
pub struct Snapshot {
    /// The groups are the store's state after the change with this `seq`.
    pub seq: u64,
    pub groups: Vec<SnapshotGroup>,
}

impl Store {
    /// Entries of every account with `seq > after`, oldest first: at most `limit`, and
    /// no more than `max_bytes` of entry JSON (at least one entry). `CursorExpired`
    /// when `after` is below what retention may have removed.
    pub fn feed_after(
        &self,
        after: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<FeedPage, Error> {
        let high = self.last_seq();
        let expired = |s: &Store| {
            if after < s.purged_through() {
                Err(Error::CursorExpired)
            } else {
                Ok(())
            }
        };
        expired(self)?;
        if after >= high || limit == 0 {
            return Ok(FeedPage {
                entries: Vec::new(),
                next: after,
            });
        }
        let (bound, per_account) = self.feed_heads(after, high, limit)?;
        let (entries, cut) = self.merge_feed(per_account, bound, limit, max_bytes)?;
        let next = match (cut, entries.last()) {
            (true, Some(e)) => e.seq,
            _ => bound,
        };
        expired(self)?;
        Ok(FeedPage { entries, next })
    }

    /// Each account's first records in `(after, high]` (at most `limit`), and the
    /// bound of the merged page: `high`, lowered by an account cut short to its last
    /// record taken (its records above that are not in this page, so neither is
    /// anything above that).
    #[allow(clippy::type_complexity)]
    fn feed_heads(
        &self,
        after: u64,
        high: u64,
        limit: usize,
    ) -> Result<(u64, Vec<(String, Vec<(u64, u64)>)>), Error> {
        let mut bound = high;
        let mut per_account: Vec<(String, Vec<(u64, u64)>)> = Vec::new();
        self.each_account(&self.changes, |prefix| {
            let account = String::from_utf8_lossy(&prefix[..prefix.len() - 1]).into_owned();
            let mut from = prefix.to_vec();
            from.extend_from_slice(&(after + 1).to_be_bytes());
            let mut to = prefix.to_vec();
            to.extend_from_slice(&high.saturating_add(1).to_be_bytes());
            let mut items = Vec::new();
            for item in self.changes.range(from.as_slice()..to.as_slice()) {
                let (k, v) = item.map_err(|e| self.read_err(e))?;
                let (Some(seq), Some(n)) = (keys::trailing_u64(&k), keys::read_u64(&v)) else {
                    return Err(Error::corrupt(format!(
                        "change-feed index entry in {account}"
                    )));
                };
                if seq > bound {
                    break;
                }
                if items.len() == limit {
                    bound = bound.min(items.last().map_or(after, |(s, _)| *s));
                    break;
                }
                items.push((seq, n));
            }
            if !items.is_empty() {
                per_account.push((account, items));
            }
            Ok(())
        })?;
        Ok((bound, per_account))
    }

    /// Merges the accounts' records up to `bound` by seq, rebuilding each entry as it
    /// is taken (`history.rs`), until `limit` or the byte bound; true when the page
    /// was cut short there.
    fn merge_feed(
        &self,
        per_account: Vec<(String, Vec<(u64, u64)>)>,
        bound: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<(Vec<FeedEntry>, bool), Error> {
        let mut readers: Vec<(String, EntryReader<'_>)> = per_account
            .into_iter()
            .map(|(account, mut items)| {
                items.retain(|(seq, _)| *seq <= bound);
                let reader = EntryReader::new(self, &account, items);
                (account, reader)
            })
            .collect();
        let mut all: Vec<FeedEntry> = Vec::new();
        let mut bytes = 0usize;
        while let Some((i, _)) = readers
            .iter()
            .enumerate()
            .filter_map(|(i, (_, r))| r.peek_seq().map(|s| (i, s)))
            .min_by_key(|(_, s)| *s)
        {
            if all.len() == limit {
                return Ok((all, true));
            }
            let (account, reader) = &mut readers[i];
            let Some(entry) = reader.next_entry() else {
                break;
            };
            let entry = entry?;
            if !all.is_empty() && bytes.saturating_add(entry.json.len()) > max_bytes {
                return Ok((all, true));
            }
            bytes += entry.json.len();
            all.push(FeedEntry {
                seq: entry.seq,
                account: account.clone(),
                entry: entry.json,
            });
        }
        Ok((all, false))
    }

    /// Every group of every account as of one `seq`, without holding the writer lock:
    /// the groups are read at some moments between `h0` and `h1` (the highest `seq`
    /// before and after the scan), then the feed's entries in `(h0, h1]` are laid
    /// over them, so each group is its state after `h1`. `CursorExpired` when
    /// retention removed entries of that window meanwhile (try again).
    pub fn snapshot(&self) -> Result<Snapshot, Error> {
        let h0 = self.last_seq();
        if h0 < self.purged_through() {
            return Err(Error::CursorExpired);
        }
        let mut groups: BTreeMap<(String, u64), (Option<u64>, Vec<u8>)> = BTreeMap::new();
        for item in self.groups.iter() {
            let (k, v) = item.map_err(|e| self.read_err(e))?;
            let Some(sep) = k.iter().position(|b| *b == 0) else {
                continue;
            };
            let Some(n) = keys::trailing_u64(&k) else {
                continue;
            };
            let account = String::from_utf8_lossy(&k[..sep]).into_owned();
            let Some(view) = self.view(&account, GroupId(n), v, Seen::Durable)? else {
                continue;
            };
            groups.insert((account, n), (Some(view.revision()), view.json().to_vec()));
        }
        let h1 = self.last_seq();
        let mut after = h0;
        while after < h1 {
            let page = self.feed_after(after, 10_000, 16 << 20)?;
            for e in &page.entries {
                if e.seq > h1 {
                    break;
                }
                let parsed = parse_entry(&e.entry)?;
                let key = (e.account.clone(), parsed.id.0);
                match parsed.group {
                    None => {
                        groups.remove(&key);
                    }
                    Some(json) => {
                        groups.insert(key, (parsed.revision, json));
                    }
                }
            }
            if page.next <= after {
                break;
            }
            after = page.next;
        }
        Ok(Snapshot {
            seq: h1,
            groups: groups
                .into_iter()
                .map(|((account, _), (revision, json))| SnapshotGroup {
                    account,
                    revision,
                    json,
                })
                .collect(),
        })
    }
}

/// The parts of an entry a replica needs.
#[derive(Debug)]
pub struct ParsedEntry {
    pub op: String,
    pub id: GroupId,
    pub revision: Option<u64>,
    pub user_name: String,
    pub time: String,
    /// The group's public JSON after the change; None after a deletion.
    pub group: Option<Vec<u8>>,
}

/// Parses an entry's JSON (`changes::change_entry`).
pub fn parse_entry(raw: &[u8]) -> Result<ParsedEntry, Error> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct E<'a> {
        op: String,
        id: String,
        #[serde(default)]
        revision: Option<u64>,
        user_name: String,
        time: String,
        #[serde(borrow)]
        group: Option<&'a serde_json::value::RawValue>,
    }
    let e: E<'_> =
        serde_json::from_slice(raw).map_err(|err| Error::corrupt_json("change-feed entry", err))?;
    let id = GroupId::parse(&e.id)
        .ok_or_else(|| Error::corrupt(format!("change-feed entry id {:?}", e.id)))?;
    Ok(ParsedEntry {
        op: e.op,
        id,
        revision: e.revision,
        user_name: e.user_name,
        time: e.time,
        group: e
            .group
            .filter(|g| g.get() != "null")
            .map(|g| g.get().as_bytes().to_vec()),
    })
}

#[cfg(test)]
mod tests {
    use crate::store::groups::Actor;
    use crate::store::testing::{doc, store};
    use crate::store::Error;

    /// Pages of the whole feed are exact across accounts whatever the bounds: every
    /// entry once, in order, and `next` never skips one.
    #[test]
    fn the_whole_feed_pages_exactly_across_accounts() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let accounts = ["a", "b", "c"];
        // Uneven: "a" writes most, so its account is cut short first.
        for i in 0..20 {
            let acc = accounts[if i % 4 == 3 { 1 + i % 2 } else { 0 }];
            let actor = Actor {
                account: acc,
                user: "u",
            };
            s.create_group(actor, &doc(&format!("g{i}")), 100, None)
                .unwrap();
        }
        for (limit, bytes) in [
            (1, usize::MAX),
            (3, usize::MAX),
            (7, 400),
            (100, 1),
            (100, usize::MAX),
        ] {
            let mut seen = Vec::new();
            let mut after = 0;
            loop {
                let page = s.feed_after(after, limit, bytes).unwrap();
                assert!(page.entries.len() <= limit);
                if page.entries.is_empty() {
                    assert_eq!(page.next, after);
                    break;
                }
                for e in &page.entries {
                    assert!(e.seq > after && e.seq <= page.next);
                    seen.push(e.seq);
                }
                after = page.next;
            }
            assert_eq!(seen, (1..=20).collect::<Vec<u64>>(), "{limit} {bytes}");
        }
        let snap = s.snapshot().unwrap();
        assert_eq!(snap.seq, 20);
        assert_eq!(snap.groups.len(), 20);
        assert!(snap.groups.iter().all(|g| g.revision == Some(1)));
        // An update and a deletion: the snapshot follows, with the new revision.
        let a = Actor {
            account: "a",
            user: "u",
        };
        // The ID a snapshot group carries is its JSON's, as replication reads it.
        let id_of = |g: &super::SnapshotGroup| {
            let v: serde_json::Value = serde_json::from_slice(&g.json).unwrap();
            crate::model::GroupId::parse(v["id"].as_str().unwrap()).unwrap()
        };
        let mut of_a = snap.groups.iter().filter(|g| g.account == "a").map(id_of);
        let (first, second) = (of_a.next().unwrap(), of_a.next().unwrap());
        s.update_group(a, first, None, |_| Ok::<_, Error>((doc("renamed"), ())))
            .unwrap();
        s.delete_group(a, second, None).unwrap();
        let snap = s.snapshot().unwrap();
        assert_eq!((snap.seq, snap.groups.len()), (22, 19));
        let g = snap
            .groups
            .iter()
            .find(|g| g.account == "a" && id_of(g) == first)
            .unwrap();
        assert_eq!(g.revision, Some(2));
        assert!(String::from_utf8_lossy(&g.json).contains("renamed"));
    }
}
