//! Retry-safe create [ext]: the `Idempotency-Key` records of `POST /api/groups`. A record
//! remembers the fingerprint of the request and the first answer, for a TTL (24 h). They
//! are written in the create's own transaction (`groups.rs`), under the writer mutex, so
//! two racing requests with one key cannot both create.
//!
//! Storage is bounded three times: expired records are purged in the background
//! (`purge`), and each user keeps at most `limits.idempotency_keys_per_user` records
//! holding at most `limits.idempotency_bytes_per_user` bytes — the oldest are evicted in
//! the transaction that would go past either (a first answer is a whole group, 650 KB
//! for 10,000 devices, so the count alone let a user keep gigabytes). One record larger
//! than the byte bound is still kept, alone: a create's answer is bounded by the group
//! limits. The `idempotency_order` tree (`scope, group number → key`; group numbers
//! grow with time) finds the oldest record with one seek; a per-user tally in `meta`
//! (`idem\0 scope` → record count, then their bytes, 8 bytes each) says when to evict
//! without counting. A tally of 8 bytes (written before bytes were counted) counts 0
//! bytes for the records it has; those age out within the TTL.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::plan::{Actor, Plan};
use super::value::GroupView;
use super::Error;
use super::{keys, Kind, Op, Store};
use crate::model::GroupId;

/// An `Idempotency-Key` and the fingerprint of the request that carries it.
#[derive(Debug, Clone)]
pub struct IdempotencyRequest {
    pub key: String,
    pub fingerprint: String,
    pub ttl_ms: i64,
    /// Most records kept per user; the oldest is evicted past it.
    pub max_per_user: u64,
    /// Most bytes of records kept per user; the oldest are evicted past it.
    pub max_bytes_per_user: u64,
}

/// A user's records: how many, and their stored bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Tally {
    pub(super) count: u64,
    pub(super) bytes: u64,
}

impl Tally {
    /// The `meta` value: count, then bytes (an 8-byte value from before is a count).
    pub(super) fn read(v: &[u8]) -> Tally {
        let count = keys::read_u64(v.get(..8).unwrap_or_default()).unwrap_or(0);
        let bytes = v.get(8..).and_then(keys::read_u64).unwrap_or(0);
        Tally { count, bytes }
    }

    /// The `meta` value, None when there are no records.
    pub(super) fn encode(self) -> Option<Vec<u8>> {
        (self.count > 0).then(|| {
            let mut v = self.count.to_be_bytes().to_vec();
            v.extend_from_slice(&self.bytes.to_be_bytes());
            v
        })
    }

    fn remove(&mut self, bytes: usize) {
        self.count = self.count.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(bytes as u64);
    }
}

/// A remembered create. Its group number `id` is also its key in `idempotency_order`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    pub(super) fingerprint: String,
    pub(super) id: u64,
    pub(super) revision: u64,
    pub(super) json: String,
    pub(super) expires: i64,
}

impl IdempotencyRecord {
    /// The stored value: 0x00, the length of the record's JSON (u32, big-endian), then
    /// that JSON deflated. A first answer is a
    /// whole group (a 10,000-device group is ~650 KB of JSON, mostly device IDs that
    /// share their prefixes), written once and usually dropped unread: deflating it
    /// shrinks what each keyed create writes several times over, and with it what the
    /// store's log carries until its segments are reclaimed (issue 20: 30 create/delete
    /// cycles with keys grew the store 11-15 MB more than without).
    pub(super) fn encode(&self) -> Result<Vec<u8>, Error> {
        use std::io::Write;
        let json = serde_json::to_vec(self).map_err(|source| Error::Encode {
            what: "an idempotency record",
            source,
        })?;
        let plain = u32::try_from(json.len()).unwrap_or(u32::MAX);
        let mut head = vec![DEFLATED];
        head.extend_from_slice(&plain.to_be_bytes());
        let mut out = flate2::write::DeflateEncoder::new(head, RECORD_COMPRESSION);
        out.write_all(&json)
            .and_then(|()| out.finish())
            .map_err(|source| Error::Io {
                during: "deflating an idempotency record",
                source,
            })
    }

    /// Reads a stored value: deflated behind 0x00, or plain JSON (records written
    /// before records were deflated; JSON never starts with 0x00). `None` when it does
    /// not read, or would inflate past [`MAX_RECORD_BYTES`] (damage, not a record).
    pub(super) fn decode(raw: &[u8]) -> Option<IdempotencyRecord> {
        use std::io::Read;
        match raw.split_first() {
            Some((&DEFLATED, rest)) => {
                let deflated = rest.get(4..)?;
                let mut json = Vec::new();
                flate2::read::DeflateDecoder::new(deflated)
                    .take(MAX_RECORD_BYTES + 1)
                    .read_to_end(&mut json)
                    .ok()?;
                if json.len() as u64 > MAX_RECORD_BYTES {
                    return None;
                }
                serde_json::from_slice(&json).ok()
            }
            _ => serde_json::from_slice(raw).ok(),
        }
    }
}

/// The first byte of a deflated record.
const DEFLATED: u8 = 0x00;

/// What a stored record counts against `limits.idempotency_bytes_per_user`: the size
/// of its JSON, as a backup writes it and a replay serves it (deflated records carry
/// it in their header), so the bound holds for backups too, not only for the store.
pub(super) fn charged_len(raw: &[u8]) -> usize {
    match raw {
        [DEFLATED, a, b, c, d, ..] => u32::from_be_bytes([*a, *b, *c, *d]) as usize,
        _ => raw.len(),
    }
}

/// Fast deflate: a record is written on the create's path, under the writer mutex.
const RECORD_COMPRESSION: flate2::Compression = flate2::Compression::fast();

/// The most a stored record may inflate to: far above any first answer (a group is
/// bounded by `limits.max_devices_per_group` and the body limit), far below harm.
const MAX_RECORD_BYTES: u64 = 64 << 20;

/// Records removed per purge transaction, so the writer mutex is held only briefly.
const PURGE_BATCH: usize = 256;

/// The scope (`account\0user\0`) of a record key, which ends with the idempotency key
/// (visible ASCII, so it holds no 0x00).
pub(super) fn scope_of(record_key: &[u8]) -> Option<&[u8]> {
    let first = record_key.iter().position(|b| *b == 0)?;
    let second = first + 1 + record_key[first + 1..].iter().position(|b| *b == 0)?;
    Some(&record_key[..=second])
}

impl Store {
    fn idem_tally(&self, scope: &[u8]) -> Result<Tally, Error> {
        Ok(self
            .meta
            .get_latest(keys::idempotency_count(scope))
            .map_err(|e| self.read_err(e))?
            .map(|v| Tally::read(&v))
            .unwrap_or_default())
    }

    #[cfg(test)]
    fn idem_count(&self, scope: &[u8]) -> Result<u64, Error> {
        Ok(self.idem_tally(scope)?.count)
    }

    /// Looks a key up for a create. `Ok(Some)`: the first answer, to replay. `Ok(None)`:
    /// no live record, go ahead and create. `Err`: the key was used with another body.
    /// Call with the writer mutex held.
    pub(super) fn idempotency_replay(
        &self,
        account: &str,
        user: &str,
        req: &IdempotencyRequest,
        now: i64,
    ) -> Result<Option<GroupView>, Error> {
        let k = keys::idempotency(account, user, &req.key);
        let Some(raw) = self
            .idempotency
            .get_latest(k)
            .map_err(|e| self.read_err(e))?
        else {
            return Ok(None);
        };
        // An unreadable record is treated as absent and replaced by this create.
        let Some(rec) = IdempotencyRecord::decode(&raw) else {
            return Ok(None);
        };
        if rec.expires <= now {
            return Ok(None);
        }
        if rec.fingerprint != req.fingerprint {
            return Err(Error::IdempotencyKeyReused);
        }
        Ok(Some(GroupView::from_parts(
            GroupId(rec.id),
            rec.revision,
            rec.json.as_bytes(),
        )?))
    }

    /// Adds the record of a create to `plan`, replacing an expired record under the same
    /// key and evicting the user's oldest records so the count stays within the cap.
    /// Call with the writer mutex held.
    pub(super) fn plan_idempotency(
        &self,
        plan: &mut Plan,
        actor: Actor<'_>,
        req: &IdempotencyRequest,
        created: (GroupId, u64, &[u8]),
        now: i64,
    ) -> Result<(), Error> {
        let Actor { account, user } = actor;
        let (id, revision, json) = created;
        let scope = keys::idempotency_scope(account, user);
        let record_key = keys::idempotency(account, user, &req.key);
        let mut tally = self.idem_tally(&scope)?;
        if let Some(old) = self
            .idempotency
            .get(&record_key)
            .map_err(|e| self.read_err(e))?
        {
            if let Some(old) = IdempotencyRecord::decode(&old) {
                plan.idempotency_order
                    .push((keys::idempotency_order(account, user, old.id), None));
            }
            tally.remove(charged_len(&old));
        }
        let rec = IdempotencyRecord {
            fingerprint: req.fingerprint.clone(),
            id: id.0,
            revision,
            json: String::from_utf8_lossy(json).into_owned(),
            expires: now.saturating_add(req.ttl_ms),
        };
        let bytes = rec.encode()?;
        let charged = charged_len(&bytes) as u64;
        let max = req.max_per_user.max(1);
        let over =
            |t: &Tally| t.count >= max || t.bytes.saturating_add(charged) > req.max_bytes_per_user;
        if tally.count > 0 && over(&tally) {
            for item in self.idempotency_order.scan_prefix_latest(&scope) {
                if tally.count == 0 || !over(&tally) {
                    break;
                }
                let (order_key, evicted_key) = item.map_err(|e| self.read_err(e))?;
                // The record being replaced is already accounted for above.
                if evicted_key.as_ref() == req.key.as_bytes() {
                    continue;
                }
                let mut rk = scope.clone();
                rk.extend_from_slice(&evicted_key);
                let size = self
                    .idempotency
                    .get_latest(&rk)
                    .map_err(|e| self.read_err(e))?
                    .map_or(0, |v| charged_len(&v));
                plan.idempotency.push((rk, None));
                plan.idempotency_order.push((order_key.to_vec(), None));
                tally.remove(size);
            }
        }
        plan.idempotency_order.push((
            keys::idempotency_order(account, user, id.0),
            Some(req.key.as_bytes().to_vec()),
        ));
        let tally = Tally {
            count: tally.count + 1,
            bytes: tally.bytes.saturating_add(charged),
        };
        plan.idempotency.push((record_key, Some(bytes)));
        plan.meta
            .push((keys::idempotency_count(&scope), tally.encode()));
        Ok(())
    }

    /// Removes idempotency records that expired at `now`, in small transactions that
    /// each hold the writer mutex only briefly. Returns how many were removed.
    pub(super) fn purge_idempotency(&self, now: i64) -> Result<usize, Error> {
        let mut removed = 0;
        let mut cursor: Vec<u8> = Vec::new();
        loop {
            // Find candidates without the mutex; they are checked again under it.
            let mut candidates = Vec::with_capacity(PURGE_BATCH);
            let mut last_seen = None;
            for item in self.idempotency.range(cursor.as_slice()..) {
                let (k, v) = item.map_err(|e| self.read_err(e))?;
                last_seen = Some(k.to_vec());
                if is_expired(&v, now) {
                    candidates.push(k.to_vec());
                    if candidates.len() == PURGE_BATCH {
                        break;
                    }
                }
            }
            let Some(last) = last_seen else { break };
            removed += self.remove_expired(&candidates, now)?;
            if candidates.len() < PURGE_BATCH {
                break;
            }
            cursor = last;
            cursor.push(0);
        }
        Ok(removed)
    }

    /// Removes the given records if they are still expired, in one transaction under
    /// the writer mutex (counts stay exact; a backup sees the batch whole or not at
    /// all). Not kept for undo: a purge need not survive a failed flush.
    fn remove_expired(&self, candidates: &[Vec<u8>], now: i64) -> Result<usize, Error> {
        if candidates.is_empty() {
            return Ok(0);
        }
        let mut w = self.lock_writer();
        let mut ops: Vec<Op> = Vec::new();
        let mut removed = 0;
        let mut per_scope: HashMap<Vec<u8>, Vec<usize>> = HashMap::new();
        for k in candidates {
            let Some(v) = self
                .idempotency
                .get_latest(k)
                .map_err(|e| self.read_err(e))?
            else {
                continue;
            };
            if !is_expired(&v, now) {
                continue;
            }
            ops.push((Kind::Idempotency, k.clone(), None));
            removed += 1;
            let Some(scope) = scope_of(k) else { continue };
            if let Some(rec) = IdempotencyRecord::decode(&v) {
                let mut ok = scope.to_vec();
                ok.extend_from_slice(&rec.id.to_be_bytes());
                ops.push((Kind::IdempotencyOrder, ok, None));
            }
            per_scope
                .entry(scope.to_vec())
                .or_default()
                .push(charged_len(&v));
        }
        for (scope, sizes) in per_scope {
            let mut tally = self.idem_tally(&scope)?;
            sizes.into_iter().for_each(|size| tally.remove(size));
            ops.push((Kind::Meta, keys::idempotency_count(&scope), tally.encode()));
        }
        let seq = w.next_change.saturating_sub(1);
        self.apply_ops(&mut w, &ops, seq)?;
        Ok(removed)
    }

    /// How many idempotency records a user has (tests and diagnostics).
    #[cfg(test)]
    pub fn idempotency_records(&self, account: &str, user: &str) -> Result<u64, Error> {
        let scope = keys::idempotency_scope(account, user);
        let mut n = 0;
        for item in self.idempotency.scan_prefix(&scope) {
            item.map_err(|e| self.read_err(e))?;
            n += 1;
        }
        Ok(n)
    }
}

/// Whether a stored record is expired at `now`; an unreadable record counts as expired.
fn is_expired(raw: &[u8], now: i64) -> bool {
    #[derive(Deserialize)]
    struct ExpiresOnly {
        expires: i64,
    }
    match raw.first() {
        Some(&DEFLATED) => IdempotencyRecord::decode(raw).map_or(true, |r| r.expires <= now),
        _ => serde_json::from_slice::<ExpiresOnly>(raw)
            .map(|r| r.expires <= now)
            .unwrap_or(true),
    }
}

#[cfg(test)]
mod tests {
    use super::{scope_of, IdempotencyRecord, MAX_RECORD_BYTES};

    fn record(devices: usize) -> IdempotencyRecord {
        let list: Vec<String> = (0..devices).map(|i| format!("\"dev-{i}\"")).collect();
        IdempotencyRecord {
            fingerprint: "fp".into(),
            id: 7,
            revision: 1,
            json: format!("{{\"id\":\"grp-7\",\"devices\":[{}]}}", list.join(",")),
            expires: 42,
        }
    }

    #[test]
    fn records_are_stored_deflated_and_older_plain_ones_still_read() {
        let rec = record(10_000);
        let stored = rec.encode().unwrap();
        let plain = serde_json::to_vec(&rec).unwrap();
        assert_eq!(stored[0], 0);
        assert_eq!(super::charged_len(&stored), plain.len());
        assert_eq!(super::charged_len(&plain), plain.len());
        // A 10,000-device answer: several times smaller on disk.
        assert!(
            stored.len() * 4 < plain.len(),
            "{} vs {}",
            stored.len(),
            plain.len()
        );
        let back = IdempotencyRecord::decode(&stored).unwrap();
        assert_eq!((back.json, back.expires), (rec.json.clone(), 42));
        // A record written before records were deflated.
        assert_eq!(IdempotencyRecord::decode(&plain).unwrap().json, rec.json);
        assert!(IdempotencyRecord::decode(b"\0not deflate").is_none());
        assert!(super::is_expired(&stored, 42) && !super::is_expired(&stored, 41));
    }

    #[test]
    fn a_record_that_would_inflate_past_the_bound_does_not_read() {
        use std::io::Write;
        let mut out =
            flate2::write::DeflateEncoder::new(vec![0u8, 0, 0, 0, 1], flate2::Compression::best());
        let zeros = vec![b' '; 1 << 20];
        for _ in 0..=(MAX_RECORD_BYTES >> 20) {
            out.write_all(&zeros).unwrap();
        }
        let bomb = out.finish().unwrap();
        assert!(bomb.len() < 1 << 20);
        assert!(IdempotencyRecord::decode(&bomb).is_none());
    }

    #[test]
    fn scope_is_account_and_user() {
        assert_eq!(scope_of(b"acct\0bob\0key-1"), Some(&b"acct\0bob\0"[..]));
        assert_eq!(scope_of(b"acct\0bob"), None);
        assert_eq!(scope_of(b"acct"), None);
    }
}

#[cfg(test)]
mod store_tests {
    use super::IdempotencyRequest;
    use crate::error::ApiError;
    use crate::store::groups::Actor;

    const ACTOR: Actor<'static> = Actor {
        account: "acct",
        user: "u",
    };

    use crate::store::testing::{doc, store};

    fn req(key: &str, fp: &str, ttl_ms: i64, max: u64) -> IdempotencyRequest {
        IdempotencyRequest {
            key: key.into(),
            fingerprint: fp.into(),
            ttl_ms,
            max_per_user: max,
            max_bytes_per_user: u64::MAX,
        }
    }

    #[test]
    fn replays_and_refuses_a_different_body() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let first = s
            .create_group(ACTOR, &doc("a"), 100, Some(&req("k", "f1", 60_000, 10)))
            .unwrap();
        assert!(!first.replayed);
        let again = s
            .create_group(ACTOR, &doc("a"), 100, Some(&req("k", "f1", 60_000, 10)))
            .unwrap();
        assert!(again.replayed);
        assert_eq!(again.group.id, first.group.id);
        assert_eq!(again.group.json(), first.group.json());
        assert_eq!(again.group.revision(), 1);
        let e = ApiError::from(
            s.create_group(ACTOR, &doc("b"), 100, Some(&req("k", "f2", 60_000, 10)))
                .unwrap_err(),
        );
        assert_eq!(e, ApiError::IdempotencyKeyReused);
        // Another user of the same account has its own keys.
        let other = Actor {
            account: "acct",
            user: "u2",
        };
        let theirs = s
            .create_group(other, &doc("c"), 100, Some(&req("k", "f3", 60_000, 10)))
            .unwrap();
        assert!(!theirs.replayed);
        assert_eq!(s.group_count(), Some(2));
    }

    #[test]
    fn the_cap_evicts_the_oldest_records() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        for i in 0..5 {
            s.create_group(
                ACTOR,
                &doc(&format!("g{i}")),
                100,
                Some(&req(&format!("k{i}"), &format!("f{i}"), 60_000, 3)),
            )
            .unwrap();
        }
        assert_eq!(s.idempotency_records("acct", "u").unwrap(), 3);
        // k0 and k1 were evicted: the same request creates again (and so conflicts on
        // the name), while k4 still replays.
        let e = ApiError::from(
            s.create_group(ACTOR, &doc("g0"), 100, Some(&req("k0", "f0", 60_000, 3)))
                .unwrap_err(),
        );
        assert_eq!(e, ApiError::NameConflict);
        assert!(
            s.create_group(ACTOR, &doc("g4"), 100, Some(&req("k4", "f4", 60_000, 3)))
                .unwrap()
                .replayed
        );
        // A lower cap (configuration changed) evicts down to it on the next create.
        s.create_group(ACTOR, &doc("g5"), 100, Some(&req("k5", "f5", 60_000, 1)))
            .unwrap();
        assert_eq!(s.idempotency_records("acct", "u").unwrap(), 1);
        assert_eq!(
            s.idem_count(&crate::store::keys::idempotency_scope("acct", "u"))
                .unwrap(),
            1
        );
    }

    #[test]
    fn expired_records_are_replaced_and_purged() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        // A TTL of 0 expires at once: the same key creates again.
        let a = s
            .create_group(ACTOR, &doc("a"), 100, Some(&req("k", "f", 0, 10)))
            .unwrap();
        let b = s
            .create_group(ACTOR, &doc("b"), 100, Some(&req("k", "f2", 60_000, 10)))
            .unwrap();
        assert!(!b.replayed);
        assert_ne!(a.group.id, b.group.id);
        assert_eq!(s.idempotency_records("acct", "u").unwrap(), 1);
        for i in 0..600 {
            s.create_group(
                ACTOR,
                &doc(&format!("x{i}")),
                10_000,
                Some(&req(&format!("x{i}"), "f", 60_000, 10_000)),
            )
            .unwrap();
        }
        // Nothing has expired yet.
        assert_eq!(
            s.purge(std::time::Duration::MAX, crate::time::now_ms())
                .unwrap()
                .idempotency,
            0
        );
        // Past the TTL, everything goes, over several batches.
        let later = crate::time::now_ms() + 120_000;
        assert_eq!(
            s.purge(std::time::Duration::MAX, later)
                .unwrap()
                .idempotency,
            601
        );
        assert_eq!(s.idempotency_records("acct", "u").unwrap(), 0);
        let scope = crate::store::keys::idempotency_scope("acct", "u");
        assert_eq!(s.idem_count(&scope).unwrap(), 0);
        assert_eq!(s.idempotency_order.scan_prefix(&scope).count(), 0);
    }

    /// Records are also bounded in bytes per user: a create past the bound evicts the
    /// oldest records until it fits, and one record larger than the bound is kept alone.
    #[test]
    fn the_byte_bound_evicts_the_oldest_records() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let scope = crate::store::keys::idempotency_scope("acct", "u");
        let bounded = |key: &str, max_bytes: u64| IdempotencyRequest {
            max_bytes_per_user: max_bytes,
            ..req(key, key, 60_000, 100)
        };
        let mut sizes = Vec::new();
        for i in 0..4 {
            s.create_group(
                ACTOR,
                &doc(&format!("g{i}")),
                100,
                Some(&bounded(&format!("k{i}"), 10_000)),
            )
            .unwrap();
            let k = crate::store::keys::idempotency("acct", "u", &format!("k{i}"));
            sizes.push(super::charged_len(&s.idempotency.get(k).unwrap().unwrap()) as u64);
        }
        let tally = s.idem_tally(&scope).unwrap();
        assert_eq!((tally.count, tally.bytes), (4, sizes.iter().sum()));
        // A bound of three records' bytes: the next create evicts the two oldest.
        // (Deflated records differ by a byte or two: a margin, far below a record.)
        let biggest = *sizes.iter().max().unwrap();
        let three = biggest * 3 + 16;
        assert!(sizes.iter().sum::<u64>() > three + 16);
        s.create_group(ACTOR, &doc("g4"), 100, Some(&bounded("k4", three)))
            .unwrap();
        assert_eq!(s.idempotency_records("acct", "u").unwrap(), 3);
        assert!(
            !s.create_group(ACTOR, &doc("g9"), 100, Some(&bounded("k0", three)))
                .unwrap()
                .replayed,
            "k0 was evicted"
        );
        // Smaller than one record: that record alone is kept.
        s.create_group(ACTOR, &doc("g5"), 100, Some(&bounded("k5", 10)))
            .unwrap();
        assert_eq!(s.idempotency_records("acct", "u").unwrap(), 1);
        let tally = s.idem_tally(&scope).unwrap();
        assert_eq!(tally.count, 1);
        // Expiry gives the bytes back too.
        s.purge(std::time::Duration::MAX, crate::time::now_ms() + 120_000)
            .unwrap();
        assert_eq!(s.idem_tally(&scope).unwrap(), super::Tally::default());
    }

    #[test]
    fn a_tally_from_before_bytes_were_counted_reads_as_a_count() {
        let t = super::Tally::read(&7u64.to_be_bytes());
        assert_eq!((t.count, t.bytes), (7, 0));
        let both = super::Tally {
            count: 2,
            bytes: 300,
        };
        assert_eq!(super::Tally::read(&both.encode().unwrap()), both);
        assert_eq!(super::Tally { count: 0, bytes: 0 }.encode(), None);
    }
}
