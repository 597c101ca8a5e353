//! The change feed [ext]: one entry per group change, `{seq, time, op, id, userName,
//! group}`, keyed `account 0x00 seq` in the `changes` tree and written by `groups.rs` in
//! the same transaction as the change itself. `seq` is one store-wide sequence, so an
//! account's feed is increasing but has gaps. Reading a page is a range scan from
//! `after`; retention (`retention.rs` decides the cutoff by sequence and elapsed time)
//! is a background purge that removes, per account, the entries below a cutoff `seq`
//! in batches, each under the writer mutex only while it is applied (so a backup sees a
//! batch whole or not at all).

use std::sync::atomic::Ordering;

use super::history::EntryReader;
use super::Error;
use super::{keys, Kind, Store, META_FEED_BYTES, META_PURGED_THROUGH};
use crate::sync::lock;

/// Entries removed per batch while purging.
const PURGE_BATCH: usize = 512;

/// A page of the feed.
#[derive(Debug)]
pub struct ChangePage {
    /// The entries' JSON, oldest first.
    pub entries: Vec<sled::IVec>,
    /// The `after` for the next call: the last entry's `seq` when the page stopped at
    /// its bounds with more entries to come, else the highest `seq` the store had
    /// handed out when the read began (every entry of the account up to it is in this
    /// page or an earlier one), so a cursor moves past other accounts' entries. Never
    /// below `after`.
    pub next: u64,
}

impl Store {
    /// Change-feed entries of an account with `seq > after` (None: from the oldest kept
    /// entry, never expired): at most `limit`, and no
    /// more than `max_bytes` of JSON together (but always at least one entry, or a
    /// reader could never get past a large one).
    ///
    /// `after` is expired — `Error::CursorExpired` — when `after < purged_through()`:
    /// retention may have removed an entry the reader has not seen. `after` equal to
    /// it is fine (every entry up to it was read), so `after = 0` is fine on a store
    /// that never purged. The check is made before and after the scan; the purge
    /// raises `purged_through` before it removes anything, so a page never silently
    /// misses an entry that a concurrent purge took.
    pub fn changes(
        &self,
        account: &str,
        after: Option<u64>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<ChangePage, Error> {
        let check = after.is_some();
        let after = after.unwrap_or(0);
        // Read first: every entry up to `high` is applied, so the scan below sees all
        // of this account's, and none above it (a later one may land before an
        // earlier one is visible to a running scan, which would leave a gap).
        let high = self.last_seq();
        self.check_cursor(check, after)?;
        let mut entries = Vec::new();
        if after >= high {
            return Ok(ChangePage {
                entries,
                next: after,
            });
        }
        // The page's records (at most `limit`), then their entries rebuilt in order
        // until the byte bound (`history.rs`).
        let (items, mut more) = self.page_items(account, after, high, limit)?;
        let mut reader = EntryReader::new(self, account, items).served();
        let mut bytes = 0usize;
        let mut last = after;
        while let Some(seq) = reader.peek_seq() {
            let Some(entry) = reader.next_entry() else {
                break;
            };
            let entry = entry?;
            let len = entry.json.len() + 1;
            if !entries.is_empty() && bytes.saturating_add(len) > max_bytes {
                more = true;
                break;
            }
            bytes += len;
            last = seq;
            entries.push(entry.json);
        }
        self.check_cursor(check, after)?;
        Ok(ChangePage {
            entries,
            next: if more { last } else { high },
        })
    }

    /// The account's (seq, group number) records in `(after, high]`, at most `limit`;
    /// true when more follow.
    fn page_items(
        &self,
        account: &str,
        after: u64,
        high: u64,
        limit: usize,
    ) -> Result<(Vec<(u64, u64)>, bool), Error> {
        let prefix = keys::account_prefix(account);
        let range = keys::change(account, after + 1)..keys::change(account, high + 1);
        let mut items = Vec::new();
        for item in self.changes.range(range) {
            let (k, v) = item.map_err(|e| self.read_err(e))?;
            if !k.starts_with(&prefix) {
                break;
            }
            if items.len() == limit {
                return Ok((items, true));
            }
            let (Some(seq), Some(n)) = (keys::trailing_u64(&k), keys::read_u64(&v)) else {
                return Err(Error::corrupt(format!(
                    "change-feed index entry in {account}"
                )));
            };
            items.push((seq, n));
        }
        Ok((items, false))
    }

    /// `CursorExpired` when retention may have removed an entry after `after`.
    fn check_cursor(&self, check: bool, after: u64) -> Result<(), Error> {
        if check && after < self.purged_through() {
            Err(Error::CursorExpired)
        } else {
            Ok(())
        }
    }

    /// One retention pass at `now_ms` on the store's elapsed clock (`retention.rs`):
    /// records a mark, saves the clock, and removes the entries at least `keep_ms` of
    /// elapsed time old. Returns how many were removed.
    pub(super) fn purge_changes_at(&self, keep_ms: u64, now_ms: u64) -> Result<usize, Error> {
        // Every entry below `next_change` has been applied: the writer mutex covers
        // both the entry and the sequence.
        let next_seq = self.lock_writer().next_change;
        let (cutoff, saved) = {
            let mut r = lock(&self.retention);
            let cutoff = r.pass(now_ms, next_seq, keep_ms);
            (cutoff, r.encode(now_ms))
        };
        self.meta
            .insert(super::retention::META_RETENTION, saved)
            .map_err(|e| self.write_err(e))?;
        self.raise_purged_through(cutoff)?;
        let removed = self.purge_changes_below(cutoff)?;
        tracing::debug!(
            removed,
            below_seq = cutoff,
            elapsed_hours = now_ms / 3_600_000,
            "change-feed retention pass"
        );
        Ok(removed)
    }

    /// Records that entries below `cutoff` may be gone, before anything goes: a reader
    /// checks it after its scan (`CursorExpired`, never a silent gap).
    fn raise_purged_through(&self, cutoff: u64) -> Result<(), Error> {
        if cutoff > 1 && cutoff - 1 > self.purged_through() {
            self.meta
                .insert(META_PURGED_THROUGH, &(cutoff - 1).to_be_bytes())
                .map_err(|e| self.write_err(e))?;
            self.purged_through.store(cutoff - 1, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Keeps the feed within `max_bytes` (`retention.changes_max_mb`): when it takes
    /// more, the oldest entries of the whole store go first, down to the bound, and
    /// a reader behind them gets `CursorExpired` as after any purge. Reads only
    /// the oldest entries of each account, as many as the excess covers.
    pub fn purge_to_size(&self, max_bytes: u64) -> Result<usize, Error> {
        let excess = self.feed_bytes().saturating_sub(max_bytes);
        if excess == 0 {
            return Ok(0);
        }
        let mut oldest: Vec<(u64, u64)> = Vec::new();
        self.each_account(&self.changes, |prefix| {
            let mut sum = 0u64;
            for item in self.changes.scan_prefix(prefix) {
                let (k, v) = item.map_err(|e| self.read_err(e))?;
                let (Some(seq), Some(n)) = (keys::trailing_u64(&k), keys::read_u64(&v)) else {
                    continue;
                };
                let bytes = self.entry_bytes(&k, &keys::record_in(prefix, n, seq))?;
                oldest.push((seq, bytes));
                sum += bytes;
                if sum >= excess {
                    break;
                }
            }
            Ok(())
        })?;
        oldest.sort_unstable();
        let mut sum = 0u64;
        let mut cutoff = None;
        for (seq, bytes) in &oldest {
            sum += bytes;
            if sum >= excess {
                cutoff = Some(seq + 1);
                break;
            }
        }
        let Some(cutoff) = cutoff.or_else(|| oldest.last().map(|(s, _)| s + 1)) else {
            return Ok(0);
        };
        self.raise_purged_through(cutoff)?;
        let removed = self.purge_changes_below(cutoff)?;
        tracing::info!(
            removed,
            below_seq = cutoff,
            max_bytes,
            "change feed over retention.changes_max_mb: purged its oldest entries"
        );
        Ok(removed)
    }

    /// Bytes one entry takes (`META_FEED_BYTES`): its feed-order key and value, its
    /// record's key and value.
    fn entry_bytes(&self, k: &[u8], h: &[u8]) -> Result<u64, Error> {
        let record = self
            .history
            .get(h)
            .map_err(|e| self.read_err(e))?
            .map_or(0, |v| v.len());
        Ok((k.len() + 1 + 8 + h.len() + 1 + record) as u64)
    }

    /// The store's elapsed clock now (`retention.rs`).
    pub(super) fn retention_elapsed_ms(&self) -> u64 {
        lock(&self.retention).elapsed_ms()
    }

    /// Saves the retention clock (at close; a pass saves it too).
    pub(super) fn save_retention_clock(&self) -> Result<(), Error> {
        let saved = {
            let r = lock(&self.retention);
            r.encode(r.elapsed_ms())
        };
        self.meta
            .insert(super::retention::META_RETENTION, saved)
            .map_err(|e| self.write_err(e))?;
        Ok(())
    }

    /// Applies one purge batch under the writer mutex, with the feed's new size.
    fn apply_purge(&self, mut batch: super::space::Batch, bytes: u64) -> Result<(), Error> {
        let mut w = self.lock_writer();
        let left = w.feed_bytes.saturating_sub(bytes);
        batch.insert_in(Kind::Meta, META_FEED_BYTES, left.to_be_bytes().to_vec());
        self.changes
            .apply_batch(batch)
            .map_err(|e| self.write_err(e))?;
        w.feed_bytes = left;
        Ok(())
    }

    /// Removes every account's change-feed entries with `seq < cutoff`. An account's
    /// entries below the cutoff are one key range (`account 0x00 seq`, big-endian), so
    /// the purge reads only what it removes, then seeks to the next account: the cost
    /// follows what is removed, not what is kept.
    fn purge_changes_below(&self, cutoff: u64) -> Result<usize, Error> {
        if cutoff <= 1 {
            return Ok(0);
        }
        let mut removed = 0;
        self.each_account(&self.changes, |prefix| {
            let mut end = prefix.to_vec();
            end.extend_from_slice(&cutoff.to_be_bytes());
            let mut batch = self.changes.batch();
            let mut in_batch = 0;
            let mut bytes = 0u64;
            for item in self.changes.range(prefix..end.as_slice()) {
                let (k, v) = item.map_err(|e| self.read_err(e))?;
                // The record under its group goes with its feed-order key.
                if let (Some(seq), Some(n)) = (keys::trailing_u64(&k), keys::read_u64(&v)) {
                    let h = keys::record_in(prefix, n, seq);
                    bytes += self.entry_bytes(&k, &h)?;
                    batch.remove_in(Kind::History, h);
                }
                batch.remove(k);
                in_batch += 1;
                removed += 1;
                if in_batch == PURGE_BATCH {
                    let full = std::mem::replace(&mut batch, self.changes.batch());
                    self.apply_purge(full, std::mem::take(&mut bytes))?;
                    in_batch = 0;
                }
            }
            if in_batch > 0 {
                self.apply_purge(batch, bytes)?;
            }
            Ok(())
        })?;
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use crate::model::GroupId;
    use crate::store::groups::Actor;
    use crate::store::testing::{doc, store};
    use crate::store::{keys, Error, Store};

    const DAY: u64 = 86_400_000;

    /// The seq of every entry of an account's feed.
    fn seqs(s: &Store, account: &str) -> Vec<u64> {
        s.changes(account, None, 1000, usize::MAX)
            .unwrap()
            .entries
            .iter()
            .map(|e| {
                let v: serde_json::Value = serde_json::from_slice(e).unwrap();
                v["seq"].as_u64().unwrap()
            })
            .collect()
    }

    /// Gives an entry the `time` a wrong wall clock would have written.
    fn set_time(s: &Store, account: &str, seq: u64, time: &str) {
        let n =
            keys::read_u64(&s.changes.get(keys::change(account, seq)).unwrap().unwrap()).unwrap();
        let k = crate::store::keys::record(account, n, seq);
        let mut rec =
            crate::store::history::Record::decode(&s.history.get(&k).unwrap().unwrap()).unwrap();
        rec.time = crate::time::parse_rfc3339_ms(time).unwrap();
        s.history.insert(k, rec.encode()).unwrap();
    }

    /// Writes `n` changes to the group of `account` (creating it first), returns its ID.
    fn write(s: &Store, account: &str, id: Option<GroupId>, n: usize) -> GroupId {
        let actor = Actor { account, user: "u" };
        let id = id.unwrap_or_else(|| s.create_group(actor, &doc("g"), 10, None).unwrap().group.id);
        for i in 0..n {
            s.update_group(actor, id, None, |old| {
                Ok::<_, Error>((doc(&format!("{}{i}", old.name)), ()))
            })
            .unwrap();
        }
        id
    }

    /// Entries go when `keep` of elapsed time has passed since a pass saw them, in
    /// every account, whatever their `time` says: one dated ten years ahead no longer
    /// holds back its account, ones dated years back are no longer purged early.
    #[test]
    fn purge_goes_by_sequence_and_elapsed_time_not_by_entry_time() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let keep = 30 * DAY;
        let a = write(&s, "a", None, 2);
        let b = write(&s, "b", None, 1);
        let first = (seqs(&s, "a"), seqs(&s, "b"));
        set_time(&s, "a", first.0[0], "2036-01-01T00:00:00.000Z");
        set_time(&s, "b", first.1[0], "1970-01-01T00:00:00.000Z");
        assert_eq!(s.purge_changes_at(keep, 0).unwrap(), 0);
        write(&s, "a", Some(a), 2);
        write(&s, "b", Some(b), 1);
        let a_later = seqs(&s, "a")[first.0.len()..].to_vec();
        let b_later = seqs(&s, "b")[first.1.len()..].to_vec();
        set_time(&s, "a", a_later[0], "2016-01-01T00:00:00.000Z");
        let later = a_later.len() + b_later.len();
        assert_eq!(s.purge_changes_at(keep, 3_600_000).unwrap(), 0);
        assert_eq!(s.purge_changes_at(keep, keep - 1).unwrap(), 0);
        assert_eq!(
            s.purge_changes_at(keep, keep).unwrap(),
            first.0.len() + first.1.len()
        );
        assert_eq!((seqs(&s, "a"), seqs(&s, "b")), (a_later, b_later));
        assert_eq!(s.purge_changes_at(keep, keep + 3_600_000).unwrap(), later);
        assert!(seqs(&s, "a").is_empty() && seqs(&s, "b").is_empty());
        // The groups are untouched.
        assert!(s.get_group("a", a).unwrap().is_some());
        assert!(s.get_group("b", b).unwrap().is_some());
        assert!(s.get_group("a", GroupId(99)).unwrap().is_none());
    }

    /// The elapsed clock and the marks are in the store: a restart neither forgets an
    /// entry's age nor restarts it.
    #[test]
    fn the_retention_clock_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let keep = DAY;
        let elapsed = {
            let s = store(dir.path());
            write(&s, "a", None, 1);
            s.purge(std::time::Duration::from_millis(keep), 0).unwrap();
            let elapsed = s.retention_elapsed_ms();
            s.close().unwrap();
            elapsed
        };
        let s = store(dir.path());
        assert!(s.retention_elapsed_ms() >= elapsed);
        assert_eq!(seqs(&s, "a").len(), 2);
        // The mark made before the restart ages on the restored clock.
        assert_eq!(s.purge_changes_at(keep, elapsed + keep).unwrap(), 2);
    }

    /// Pages follow `next` exactly; once the account's entries are read, `next` is
    /// the store's highest `seq`, past the other account's entries, and an empty page
    /// follows.
    #[test]
    fn feed_pages_follow_next_past_other_accounts() {
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
        let mut calls = 0;
        loop {
            let page = s.changes("a", Some(after), 2, usize::MAX).unwrap();
            calls += 1;
            if page.entries.is_empty() {
                assert_eq!(page.next, after);
                break;
            }
            for e in &page.entries {
                let v: serde_json::Value = serde_json::from_slice(e).unwrap();
                assert_eq!(v["userName"], "u");
                seen.push(v["seq"].as_u64().unwrap());
            }
            assert!(page.next > after);
            after = page.next;
        }
        assert_eq!(seen, vec![1, 3, 5, 7, 9]);
        // Full pages end at their last entry; the last (short) page at seq 10, the
        // other account's last entry.
        assert_eq!((after, calls), (10, 4));
        // A quiet account's cursor follows the store: `a` writes nothing, `b` does.
        for i in 5..8 {
            s.create_group(other, &doc(&format!("b{i}")), 10, None)
                .unwrap();
        }
        let page = s.changes("a", Some(after), 2, usize::MAX).unwrap();
        assert_eq!((page.entries.len(), page.next), (0, 13));
        assert!(s
            .changes("a", Some(u64::MAX), 10, usize::MAX)
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
        let all = s.changes("a", Some(0), 1000, usize::MAX).unwrap();
        let one = all.entries[0].len() + 1;
        // Room for two entries and a bit: two, and `next` continues after the second.
        let page = s.changes("a", Some(0), 1000, 2 * one + one / 2).unwrap();
        assert_eq!(page.entries.len(), 2);
        assert_eq!(page.next, 2);
        // Smaller than one entry: still one, or the reader could never move on.
        let page = s.changes("a", Some(0), 1000, 1).unwrap();
        assert_eq!(page.entries.len(), 1);
        assert_eq!(page.next, 1);
        let last = s.changes("a", Some(3), 1000, 1).unwrap();
        assert_eq!((last.entries.len(), last.next), (1, 4));
    }

    /// After a purge, an `after` below the highest purged `seq` is expired; that seq
    /// itself and anything above are not; no `after` reads what is kept. The mark
    /// survives a restart.
    #[test]
    fn a_cursor_older_than_the_retained_history_is_expired() {
        let dir = tempfile::tempdir().unwrap();
        let keep = DAY;
        {
            let s = store(dir.path());
            // Never purged: 0 is fine.
            write(&s, "a", None, 2);
            assert_eq!(s.purged_through(), 0);
            assert_eq!(
                s.changes("a", Some(0), 10, usize::MAX)
                    .unwrap()
                    .entries
                    .len(),
                3
            );
            assert_eq!(s.purge_changes_at(keep, 0).unwrap(), 0);
            assert_eq!(s.purged_through(), 0);
            write(&s, "b", None, 1);
            assert_eq!(s.purge_changes_at(keep, keep).unwrap(), 3);
            assert_eq!(s.purged_through(), 3);
            s.close().unwrap();
        }
        let s = store(dir.path());
        assert_eq!(s.purged_through(), 3);
        for after in [0, 1, 2] {
            let e = s.changes("b", Some(after), 10, usize::MAX).unwrap_err();
            assert!(matches!(e, Error::CursorExpired), "{e:?}");
        }
        let page = s.changes("b", Some(3), 10, usize::MAX).unwrap();
        assert_eq!((page.entries.len(), page.next), (2, 5));
        assert_eq!(
            s.changes("a", None, 10, usize::MAX).unwrap().entries.len(),
            0
        );
        assert_eq!(
            s.changes("b", None, 10, usize::MAX).unwrap().entries.len(),
            2
        );
    }

    /// The feed's size is counted exactly through writes and purges, and a bound on it
    /// purges the oldest entries of every account first, with 410 for a reader behind.
    #[test]
    fn the_feed_is_kept_within_its_byte_bound_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let a = write(&s, "a", None, 30);
        let b = write(&s, "b", None, 30);
        let counted = || -> u64 {
            let mut total = 0;
            for space in [&s.changes, &s.history] {
                for item in space.iter() {
                    let (k, v) = item.unwrap();
                    total += (k.len() + 1 + v.len()) as u64;
                }
            }
            total
        };
        assert_eq!(s.feed_bytes(), counted());
        let all = s.feed_after(0, 1000, usize::MAX).unwrap().entries.len();
        assert_eq!(all, 62);
        assert_eq!(s.purge_to_size(u64::MAX).unwrap(), 0);
        let half = s.feed_bytes() / 2;
        let removed = s.purge_to_size(half).unwrap();
        assert!(removed > 0 && removed < all, "{removed}");
        assert!(s.feed_bytes() <= half);
        assert_eq!(s.feed_bytes(), counted());
        // The oldest went first: what is left is the newest, in both accounts.
        let left: Vec<u64> = s
            .feed_after(s.purged_through(), 1000, usize::MAX)
            .unwrap()
            .entries
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(left.len(), all - removed);
        assert_eq!(left.first().copied(), Some(s.purged_through() + 1));
        let e = s.changes("a", Some(0), 10, usize::MAX).unwrap_err();
        assert!(matches!(e, Error::CursorExpired), "{e:?}");
        // The groups are untouched, and the rest of the feed rebuilds.
        write(&s, "a", Some(a), 1);
        write(&s, "b", Some(b), 1);
        assert!(s.get_group("a", a).unwrap().is_some());
        assert_eq!(s.feed_bytes(), counted());
    }

    /// The store's identity is made once and kept.
    #[test]
    fn the_store_id_is_random_and_kept_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let id = {
            let s = store(dir.path());
            let id = s.store_id().to_string();
            s.close().unwrap();
            id
        };
        assert_eq!(id.len(), 32);
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_eq!(store(dir.path()).store_id(), id);
        assert_ne!(store(other.path()).store_id(), id);
    }
}
