//! The change feed [ext]: one entry per group change, `{seq, time, op, id, userName,
//! group}`, keyed `account 0x00 seq` in the `changes` tree and written by `groups.rs` in
//! the same transaction as the change itself. `seq` is one store-wide sequence, so an
//! account's feed is increasing but has gaps. Reading a page is a range scan from
//! `after`; retention is a background purge that removes, per account, the entries
//! older than a cutoff in batches, each under the writer mutex only while it is applied
//! (so a backup sees a batch whole or not at all).

use serde::Deserialize;

use super::{keys, Store};
use crate::error::ApiError;
use crate::model::GroupId;
use crate::time::rfc3339_ms;

/// Entries removed per batch while purging.
const PURGE_BATCH: usize = 512;

/// A change-feed entry: `{seq, time, op, id, userName, group}` with `group` the raw
/// public JSON (or null).
pub(super) fn change_entry(
    seq: u64,
    time: i64,
    op: &str,
    id: GroupId,
    user: &str,
    group: Option<&[u8]>,
) -> Vec<u8> {
    change_entry_at(seq, &rfc3339_ms(time), op, id, user, group)
}

/// `change_entry` with the time already formatted (restore keeps the stored text).
pub(super) fn change_entry_at(
    seq: u64,
    time: &str,
    op: &str,
    id: GroupId,
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
    out.extend_from_slice(b"\",\"userName\":");
    // Serialising a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, user);
    out.extend_from_slice(b",\"group\":");
    out.extend_from_slice(group.unwrap_or(b"null"));
    out.push(b'}');
    out
}

/// A page of the feed.
#[derive(Debug)]
pub struct ChangePage {
    /// The entries' JSON, oldest first.
    pub entries: Vec<sled::IVec>,
    /// The `after` for the next page when more entries follow now, else None.
    pub next: Option<u64>,
}

impl Store {
    /// Change-feed entries of an account with `seq > after`: at most `limit`, and no
    /// more than `max_bytes` of JSON together (but always at least one entry, or a
    /// reader could never get past a large one).
    pub fn changes(
        &self,
        account: &str,
        after: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<ChangePage, ApiError> {
        let prefix = keys::account_prefix(account);
        let mut entries = Vec::new();
        let mut bytes = 0usize;
        let mut last = None;
        let Some(from) = after.checked_add(1) else {
            return Ok(ChangePage {
                entries,
                next: None,
            });
        };
        for item in self.changes.range(keys::change(account, from)..) {
            let (k, v) = item.map_err(|e| self.read_err(e))?;
            if !k.starts_with(&prefix) {
                break;
            }
            let len = v.len() + 1;
            if entries.len() == limit
                || (!entries.is_empty() && bytes.saturating_add(len) > max_bytes)
            {
                return Ok(ChangePage {
                    entries,
                    next: last,
                });
            }
            bytes += len;
            last = keys::trailing_u64(&k);
            entries.push(v);
        }
        Ok(ChangePage {
            entries,
            next: None,
        })
    }

    /// Removes every account's change-feed entries older than `cutoff_ms`. Within an
    /// account, entries are in sequence order and sequence follows time, so each
    /// account's scan stops at its first young entry and the purge then seeks to the
    /// next account: the cost follows what is removed, not what is kept.
    pub(super) fn purge_changes(&self, cutoff_ms: i64) -> Result<usize, ApiError> {
        #[derive(Deserialize)]
        struct TimeOnly {
            time: String,
        }
        // RFC 3339 with a fixed width compares as text in time order.
        let cutoff = rfc3339_ms(cutoff_ms);
        let mut removed = 0;
        let mut cursor: Vec<u8> = Vec::new();
        loop {
            let Some(first) = self.changes.range(cursor.as_slice()..).next() else {
                break;
            };
            let (k, _) = first.map_err(|e| self.read_err(e))?;
            let Some(sep) = k.iter().position(|b| *b == 0) else {
                // Not an account key; step over it.
                cursor = k.to_vec();
                cursor.push(0);
                continue;
            };
            let prefix = k[..=sep].to_vec();
            let mut batch = sled::Batch::default();
            let mut in_batch = 0;
            for item in self.changes.scan_prefix(&prefix) {
                let (k, v) = item.map_err(|e| self.read_err(e))?;
                match serde_json::from_slice::<TimeOnly>(&v) {
                    Ok(t) if t.time >= cutoff => break,
                    Ok(_) => {}
                    // An entry we cannot read is left alone rather than guessed about.
                    Err(_) => continue,
                }
                batch.remove(k);
                in_batch += 1;
                removed += 1;
                if in_batch == PURGE_BATCH {
                    let _w = self.lock_writer();
                    self.changes
                        .apply_batch(std::mem::take(&mut batch))
                        .map_err(|e| self.fail(e))?;
                    in_batch = 0;
                }
            }
            if in_batch > 0 {
                let _w = self.lock_writer();
                self.changes.apply_batch(batch).map_err(|e| self.fail(e))?;
            }
            match keys::prefix_end(&prefix) {
                Some(end) => cursor = end,
                None => break,
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use crate::model::GroupId;
    use crate::store::groups::Actor;
    use crate::store::testing::{doc, store};
    use crate::store::Store;

    /// (seq, time ms) of every entry of an account's feed.
    fn feed(s: &Store, account: &str) -> Vec<(u64, i64)> {
        s.changes(account, 0, 1000, usize::MAX)
            .unwrap()
            .entries
            .iter()
            .map(|e| {
                let v: serde_json::Value = serde_json::from_slice(e).unwrap();
                // An entry's time is the group's lastModified, strictly increasing.
                assert_eq!(v["time"], v["group"]["lastModified"]);
                (
                    v["seq"].as_u64().unwrap(),
                    parse_ms(v["time"].as_str().unwrap()),
                )
            })
            .collect()
    }

    /// Milliseconds since the epoch of `YYYY-MM-DDTHH:MM:SS.mmmZ` (days from civil,
    /// H. Hinnant), the inverse of `rfc3339_ms`.
    fn parse_ms(t: &str) -> i64 {
        let n = |r: std::ops::Range<usize>| t[r].parse::<i64>().unwrap();
        let (y, m, d) = (n(0..4), n(5..7), n(8..10));
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        let ms = ((n(11..13) * 60 + n(14..16)) * 60 + n(17..19)) * 1000 + n(20..23);
        days * 86_400_000 + ms
    }

    #[test]
    fn parse_ms_inverts_rfc3339_ms() {
        for ms in [0, 951_782_400_000, 1_704_067_199_999, crate::time::now_ms()] {
            assert_eq!(parse_ms(&crate::time::rfc3339_ms(ms)), ms);
        }
    }

    #[test]
    fn purge_removes_only_entries_older_than_the_cutoff_in_every_account() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let mut ids = Vec::new();
        for account in ["a", "b"] {
            let actor = Actor { account, user: "u" };
            let g = s.create_group(actor, &doc("g"), 10, None).unwrap().group.id;
            // Each update's time is at least 1 ms after the previous one, without
            // waiting: lastModified is strictly increasing per group.
            for i in 0..4 {
                s.update_group(actor, g, None, |_| Ok((doc(&format!("g{i}")), ())))
                    .unwrap();
            }
            ids.push(g);
        }
        let a = feed(&s, "a");
        let b = feed(&s, "b");
        assert_eq!((a.len(), b.len()), (5, 5));
        // Keep a's last two updates and b's last one.
        let cut_a = a[3].1;
        assert!(a[2].1 < cut_a);
        let purged = s.purge_changes(cut_a).unwrap();
        let left_a: Vec<u64> = feed(&s, "a").iter().map(|e| e.0).collect();
        assert_eq!(left_a, vec![a[3].0, a[4].0]);
        let left_b = feed(&s, "b");
        assert!(left_b.iter().all(|e| e.1 >= cut_a), "{left_b:?}");
        assert_eq!(purged, 3 + (b.len() - left_b.len()));
        // A second purge with the same cutoff has nothing left to do.
        assert_eq!(s.purge_changes(cut_a).unwrap(), 0);
        // A cutoff in the future empties the feed; the groups are untouched.
        let tomorrow = crate::time::now_ms() + 86_400_000;
        let purged = s.purge(tomorrow, 0).unwrap();
        assert_eq!(purged.changes, 2 + left_b.len());
        assert!(feed(&s, "a").is_empty() && feed(&s, "b").is_empty());
        assert!(s.get_group("a", ids[0]).unwrap().is_some());
        assert!(s.get_group("b", ids[1]).unwrap().is_some());
        assert!(s.get_group("a", GroupId(99)).unwrap().is_none());
    }

    #[test]
    fn feed_pages_follow_next() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let actor = Actor {
            account: "a",
            user: "u",
        };
        let other = Actor {
            account: "b",
            user: "v",
        };
        for i in 0..5 {
            s.create_group(actor, &doc(&format!("a{i}")), 10, None)
                .unwrap();
            s.create_group(other, &doc(&format!("b{i}")), 10, None)
                .unwrap();
        }
        let mut seen = Vec::new();
        let mut after = 0;
        loop {
            let page = s.changes("a", after, 2, usize::MAX).unwrap();
            for e in &page.entries {
                let v: serde_json::Value = serde_json::from_slice(e).unwrap();
                assert_eq!(v["userName"], "u");
                seen.push(v["seq"].as_u64().unwrap());
            }
            match page.next {
                Some(n) => after = n,
                None => break,
            }
        }
        assert_eq!(seen, vec![1, 3, 5, 7, 9]);
        assert!(s
            .changes("a", u64::MAX, 10, usize::MAX)
            .unwrap()
            .entries
            .is_empty());
    }

    #[test]
    fn feed_pages_stop_at_their_byte_bound_but_hold_at_least_one_entry() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let actor = Actor {
            account: "a",
            user: "u",
        };
        for i in 0..4 {
            s.create_group(actor, &doc(&format!("g{i}")), 10, None)
                .unwrap();
        }
        let all = s.changes("a", 0, 1000, usize::MAX).unwrap();
        let one = all.entries[0].len() + 1;
        // Room for two entries and a bit: two, and `next` continues after the second.
        let page = s.changes("a", 0, 1000, 2 * one + one / 2).unwrap();
        assert_eq!(page.entries.len(), 2);
        assert_eq!(page.next, Some(2));
        // Smaller than one entry: still one, or the reader could never move on.
        let page = s.changes("a", 0, 1000, 1).unwrap();
        assert_eq!(page.entries.len(), 1);
        assert_eq!(page.next, Some(1));
        let last = s.changes("a", 3, 1000, 1).unwrap();
        assert_eq!((last.entries.len(), last.next), (1, None));
    }
}
