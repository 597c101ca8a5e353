//! Group operations on the store: reads straight from the trees, and writes that check,
//! update the group, its name-index and device-index entries, the per-account count,
//! the ID sequence, the change feed (`changes.rs`) and the idempotency record
//! (`idempotency.rs`) in one sled transaction under the writer mutex.
//!
//! A stored group is `revision | creation ms | lastModified ms | public JSON` (three
//! big-endian 8-byte numbers, then the exact JSON fields the API shows), so a read
//! answers by copying bytes into the response instead of parsing and re-serialising.

use sled::IVec;

use super::history::{self, ChangeOp, Record};
use super::idempotency::IdempotencyRequest;
use super::pieces::Seen;
pub use super::plan::Actor;
use super::plan::Plan;
pub use super::value::{push_served, GroupView};
use super::value::{Encoded, HEADER};
use super::Error;
use super::{keys, Kind, Op, Space, Store, Writer, META_NEXT_CHANGE, META_NEXT_GROUP};
use crate::model::{name_key, GroupDoc, GroupId};

/// The group a write changes: as read, and its stored value (which says whether its
/// device list is in pieces).
pub(super) struct Current {
    pub(super) view: GroupView,
    pub(super) stored: IVec,
}

/// The result of a create.
#[derive(Debug)]
pub struct Created {
    pub group: GroupView,
    /// True when an `Idempotency-Key` matched and the first answer is replayed.
    pub replayed: bool,
}

/// What one purge removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    pub changes: usize,
    pub idempotency: usize,
}

/// Filters and paging for a list (docs/api/extensions.md "Paging and filters").
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub after: Option<u64>,
    pub limit: Option<usize>,
    pub device: Option<String>,
    pub name: Option<String>,
    /// Stop the page once its groups' JSON would pass this many bytes (always at least
    /// one group), so that a page of large groups stays bounded.
    pub max_bytes: Option<usize>,
}

/// A page of groups; `next` is set when the page stopped at `limit` or `max_bytes`
/// and more follow.
#[derive(Debug)]
pub struct Page {
    pub groups: Vec<GroupView>,
    pub next: Option<GroupId>,
}

/// Fills a page up to its limits. A group offered to a full page is the proof that
/// more follow, so the page's last group becomes `next` without reading ahead.
struct Collector {
    groups: Vec<GroupView>,
    limit: usize,
    max_bytes: usize,
    bytes: usize,
    more: bool,
}

impl Collector {
    fn new(q: &ListQuery) -> Collector {
        Collector {
            groups: Vec::new(),
            limit: q.limit.unwrap_or(usize::MAX),
            max_bytes: q.max_bytes.unwrap_or(usize::MAX),
            bytes: 0,
            more: false,
        }
    }

    /// Takes `v` when the page has room; false (and `v` is dropped) when it is full.
    fn offer(&mut self, v: GroupView) -> bool {
        let len = v.json().len() + 1;
        let over = !self.groups.is_empty() && self.bytes.saturating_add(len) > self.max_bytes;
        if self.groups.len() >= self.limit || over {
            self.more = true;
            return false;
        }
        self.bytes += len;
        self.groups.push(v);
        true
    }

    fn finish(self) -> Page {
        let next = if self.more {
            self.groups.last().map(|v| v.id)
        } else {
            None
        };
        Page {
            groups: self.groups,
            next,
        }
    }
}

/// Where `Store::scan_into` reads: keys of one account (`prefix`) from `from`, the
/// first group number that may follow (`first`), and how many groups it may read.
struct Scan<'p> {
    prefix: &'p [u8],
    from: Vec<u8>,
    first: u64,
    budget: usize,
}

/// Groups a paged `name` filter reads directly before it switches to the name index.
const NAME_DIRECT_SCAN: usize = 1000;

/// Whether `needle` occurs in `hay` (an empty needle occurs everywhere).
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

impl Store {
    /// Applies a plan and the new sequences in one transaction (under the writer
    /// mutex), keeping its undo until a flush covers it.
    pub(super) fn apply(
        &self,
        w: &mut Writer,
        plan: Plan,
        next_group: u64,
        next_change: u64,
    ) -> Result<(), Error> {
        let added: u64 = plan
            .changes
            .iter()
            .chain(&plan.history)
            .map(|(k, v)| (k.len() + 1 + v.as_ref().map_or(0, Vec::len)) as u64)
            .sum();
        let feed_bytes = w.feed_bytes + added;
        let mut ops: Vec<Op> = Vec::new();
        for (tree, list) in [
            (Kind::Groups, plan.groups),
            (Kind::Names, plan.names),
            (Kind::Devices, plan.devices),
            (Kind::Pieces, plan.pieces),
            (Kind::Changes, plan.changes),
            (Kind::History, plan.history),
            (Kind::Idempotency, plan.idempotency),
            (Kind::IdempotencyOrder, plan.idempotency_order),
            (Kind::Meta, plan.meta),
        ] {
            ops.extend(list.into_iter().map(|(k, v)| (tree, k, v)));
        }
        ops.push((
            Kind::Meta,
            META_NEXT_GROUP.to_vec(),
            Some(next_group.to_be_bytes().to_vec()),
        ));
        ops.push((
            Kind::Meta,
            META_NEXT_CHANGE.to_vec(),
            Some(next_change.to_be_bytes().to_vec()),
        ));
        if added > 0 {
            ops.push((
                Kind::Meta,
                super::META_FEED_BYTES.to_vec(),
                Some(feed_bytes.to_be_bytes().to_vec()),
            ));
        }
        self.reserve(w, next_group, next_change)?;
        self.apply_ops(w, &ops, next_change.saturating_sub(1))?;
        w.next_group = next_group;
        w.next_change = next_change;
        w.feed_bytes = feed_bytes;
        Ok(())
    }

    /// One group of an account, if it exists there.
    pub fn get_group(&self, account: &str, id: GroupId) -> Result<Option<GroupView>, Error> {
        match self
            .groups
            .get(keys::group(account, id.0))
            .map_err(|e| self.read_err(e))?
        {
            Some(raw) => self.view(account, id, raw, Seen::Durable),
            None => Ok(None),
        }
    }

    /// Groups of an account in ID order, filtered and paged. The `device` filter walks
    /// the reverse index (cost follows the matches). The `name` filter alone reads up to
    /// 1000 groups directly when a page size is given (common matches fill the page
    /// there), else the account's whole name index (names only) and then the page.
    pub fn list_groups(&self, account: &str, q: &ListQuery) -> Result<Page, Error> {
        let name_filter = q.name.as_deref().map(name_key);
        let matches_name = |v: &GroupView| -> Result<bool, Error> {
            Ok(match &name_filter {
                None => true,
                Some(f) => name_key(&v.name()?).contains(f.as_str()),
            })
        };
        let by_value = |n: u64, raw: IVec| self.view(account, GroupId(n), raw, Seen::Durable);
        let mut page = Collector::new(q);
        // Nothing can follow the largest possible ID.
        let Some(first) = q.after.unwrap_or(0).checked_add(1) else {
            return Ok(page.finish());
        };
        let prefix = keys::account_prefix(account);
        let groups = Scan {
            prefix: &prefix,
            from: keys::group(account, first),
            first,
            budget: usize::MAX,
        };
        if let Some(device) = &q.device {
            let prefix = keys::device_prefix(account, device);
            let mut from = prefix.clone();
            from.extend_from_slice(&first.to_be_bytes());
            let scan = Scan {
                prefix: &prefix,
                from,
                ..groups
            };
            // The index entry and the group are read one after the other, not as one
            // snapshot: a writer may have taken the device out in between. The group
            // itself is the truth, so check it.
            let fetch = |n: u64, _| self.get_group(account, GroupId(n));
            let keep = |v: &GroupView| Ok(v.has_device(device)? && matches_name(v)?);
            self.scan_into(&self.devices, scan, &mut page, fetch, keep)?;
        } else if let Some(f) = &name_filter {
            // With a page size, first read up to NAME_DIRECT_SCAN groups in ID order:
            // when matches are common the page is full long before that.
            let from = if q.limit.is_some() {
                let scan = Scan {
                    budget: NAME_DIRECT_SCAN,
                    ..groups
                };
                self.scan_into(&self.groups, scan, &mut page, by_value, matches_name)?
            } else {
                Some(first)
            };
            // Rare matches: the rest from the name index (`name_index_matches`), in ID
            // order, only the page read (and re-checked: a rename may have come
            // between the index read and the group read).
            if let Some(from) = from {
                let ids = self.name_index_matches(&prefix, f, from)?;
                self.offer_ids(account, ids, &mut page, matches_name)?;
            }
        } else {
            self.scan_into(&self.groups, groups, &mut page, by_value, |_| Ok(true))?;
        }
        Ok(page.finish())
    }

    /// Offers to `page`, in key order, the groups named by the keys of `space` from
    /// `scan.from` on while they start with `scan.prefix`: `fetch` reads the group a
    /// key's number names (None: it is gone), `keep` filters. Stops when the page is
    /// full, at the first key past the prefix, or once `scan.budget` groups were read.
    /// Returns the group number a scan stopped by its budget (or by the end of the
    /// space) would go on from; None when nothing is left.
    fn scan_into(
        &self,
        space: &Space,
        scan: Scan<'_>,
        page: &mut Collector,
        mut fetch: impl FnMut(u64, IVec) -> Result<Option<GroupView>, Error>,
        keep: impl Fn(&GroupView) -> Result<bool, Error>,
    ) -> Result<Option<u64>, Error> {
        let mut budget = scan.budget;
        let mut next = Some(scan.first);
        for item in space.range(scan.from..) {
            let (k, v) = item.map_err(|e| self.read_err(e))?;
            if !k.starts_with(scan.prefix) {
                return Ok(None);
            }
            let Some(n) = keys::trailing_u64(&k) else {
                continue;
            };
            next = n.checked_add(1);
            let Some(view) = fetch(n, v)? else {
                continue;
            };
            if keep(&view)? && !page.offer(view) {
                return Ok(None);
            }
            budget -= 1;
            if budget == 0 {
                break;
            }
        }
        Ok(next)
    }

    /// Offers the account's groups `ids` (in that order) that `keep` takes to `page`,
    /// until it is full; a group gone meanwhile is skipped.
    fn offer_ids(
        &self,
        account: &str,
        ids: Vec<u64>,
        page: &mut Collector,
        keep: impl Fn(&GroupView) -> Result<bool, Error>,
    ) -> Result<(), Error> {
        for n in ids {
            if let Some(v) = self.get_group(account, GroupId(n))? {
                if keep(&v)? && !page.offer(v) {
                    break;
                }
            }
        }
        Ok(())
    }

    /// The group numbers from `first` on whose indexed name holds `f` (folded), in ID
    /// order. The name index holds every name of the account already folded, a few
    /// bytes each, so scanning it costs far less than reading the groups; its matches
    /// come in name order.
    fn name_index_matches(&self, prefix: &[u8], f: &str, first: u64) -> Result<Vec<u64>, Error> {
        let mut matches = Vec::new();
        for item in self.names.scan_prefix(prefix) {
            let (k, v) = item.map_err(|e| self.read_err(e))?;
            let Some(n) = keys::read_u64(&v) else {
                continue;
            };
            // A byte substring of UTF-8 is a character substring.
            if n >= first && contains(&k[prefix.len()..], f.as_bytes()) {
                matches.push(n);
            }
        }
        matches.sort_unstable();
        Ok(matches)
    }

    /// Number of groups in every account together (metrics).
    /// None when the counts cannot be read (sled may fail a read while the disk
    /// refuses writes): a gauge should then be absent, not 0.
    pub fn group_count(&self) -> Option<u64> {
        let mut total = 0;
        for item in self.meta.scan_prefix(keys::GROUP_COUNTS) {
            let (_, v) = item.ok()?;
            total += keys::read_u64(&v).unwrap_or(0);
        }
        Some(total)
    }

    /// `NameTaken` when the (account-scoped, folded) name key is taken.
    pub(super) fn check_name_free(&self, name_key: &[u8]) -> Result<(), Error> {
        match self
            .names
            .get_latest(name_key)
            .map_err(|e| self.read_err(e))?
        {
            Some(_) => Err(Error::NameTaken),
            None => Ok(()),
        }
    }

    /// Removes the name index entry `name_key` in `plan` when it belongs to group `n`.
    /// Two groups of a store made before names were case-folded may share a folded
    /// name (see `reindex_names`); the entry then names the older one, and the younger
    /// one's rename or delete must not free a name that is still taken.
    pub(super) fn release_name(
        &self,
        plan: &mut Plan,
        name_key: Vec<u8>,
        n: u64,
    ) -> Result<(), Error> {
        let owner = self
            .names
            .get_latest(&name_key)
            .map_err(|e| self.read_err(e))?
            .and_then(|v| keys::read_u64(&v));
        if owner == Some(n) {
            plan.names.push((name_key, None));
        }
        Ok(())
    }

    /// Rebuilds the name index under the current name rules (NFC, full case folding)
    /// when the store's index was built under older ones (`to_lowercase`), so that
    /// uniqueness holds for names written before. Names stay as they were written. Two
    /// groups of one account whose names now fold the same both stay, readable and
    /// writable; the index names the older one, so no third group can take the name,
    /// and either can be renamed or deleted. Returns the number of such collisions,
    /// each logged. Runs once per store, before anything is served; idempotent, so an
    /// interruption only means it runs again at the next start.
    pub(super) fn reindex_names(&self) -> Result<usize, sled::Error> {
        self.names.clear()?;
        let mut collisions = 0;
        let mut batch = self.names.batch();
        let mut seen: std::collections::HashMap<Vec<u8>, u64> = std::collections::HashMap::new();
        let mut account: Vec<u8> = Vec::new();
        for item in self.groups.iter() {
            let (k, raw) = item?;
            let Some(sep) = k.iter().position(|b| *b == 0) else {
                continue;
            };
            let Some(n) = keys::trailing_u64(&k) else {
                continue;
            };
            if k[..sep] != account[..] {
                // A new account: its names cannot collide with the last one's.
                self.names
                    .apply_batch(std::mem::replace(&mut batch, self.names.batch()))?;
                seen.clear();
                account = k[..sep].to_vec();
            }
            let acc = String::from_utf8_lossy(&account).into_owned();
            let Ok(Some(view)) = self.view(&acc, GroupId(n), raw, Seen::Latest) else {
                continue;
            };
            let Ok(name) = view.name() else { continue };
            let key = keys::name(&acc, &name_key(&name));
            match seen.get(&key) {
                Some(first) => {
                    collisions += 1;
                    tracing::warn!(
                        account = %acc,
                        "groups grp-{first} and grp-{n} have names that are now the same name (Unicode case folding); both are kept, and grp-{first} holds the name"
                    );
                }
                None => {
                    batch.insert(key.clone(), &n.to_be_bytes());
                    seen.insert(key, n);
                }
            }
        }
        self.names.apply_batch(batch)?;
        Ok(collisions)
    }

    pub(super) fn account_count(&self, account: &str) -> Result<u64, Error> {
        Ok(self
            .meta
            .get_latest(keys::group_count(account))
            .map_err(|e| self.read_err(e))?
            .and_then(|v| keys::read_u64(&v))
            .unwrap_or(0))
    }

    /// Creates a group. Checks the name, the account quota and the idempotency key, then
    /// writes everything in one transaction. Not yet durable: call `durable()`.
    pub fn create_group(
        &self,
        actor: Actor<'_>,
        doc: &GroupDoc,
        max_groups: u64,
        idempotency: Option<&IdempotencyRequest>,
    ) -> Result<Created, Error> {
        let mut w = self.write_lock()?;
        let now = self.clock.wall_ms();
        if let Some(req) = idempotency {
            if let Some(first) = self.idempotency_replay(actor.account, actor.user, req, now)? {
                return Ok(Created {
                    group: first,
                    replayed: true,
                });
            }
        }
        let lname = name_key(&doc.name);
        let name_k = keys::name(actor.account, &lname);
        self.check_name_free(&name_k)?;
        let count = self.account_count(actor.account)?;
        if count >= max_groups {
            return Err(Error::QuotaReached { max: max_groups });
        }
        let id = GroupId(w.next_group);
        let seq = w.next_change;
        let mut plan = Plan::default();
        let raw = self.plan_create(&mut plan, actor, id, doc, (name_k, count), (seq, now))?;
        let json = &raw[HEADER..];
        if let Some(req) = idempotency {
            self.plan_idempotency(&mut plan, actor, req, (id, 1, json), now)?;
        }
        let (ng, nc) = (id.0 + 1, seq + 1);
        self.apply(&mut w, plan, ng, nc)?;
        Ok(Created {
            group: GroupView::new(id, raw.into())?,
            replayed: false,
        })
    }

    /// Plans creating group `id` with `doc` (its name key `name_k` not taken, `count`
    /// the account's groups before it) as change `seq` at `now`; returns its whole
    /// value.
    pub(super) fn plan_create(
        &self,
        plan: &mut Plan,
        actor: Actor<'_>,
        id: GroupId,
        doc: &GroupDoc,
        (name_k, count): (Vec<u8>, u64),
        (seq, now): (u64, i64),
    ) -> Result<Vec<u8>, Error> {
        let enc = Encoded::new(id, doc, 1, now, now);
        let writes = self.plan_store(actor.account, id.0, None, &enc)?;
        plan.store_group(actor.account, id.0, writes);
        plan.names.push((name_k, Some(id.0.to_be_bytes().to_vec())));
        plan.index_devices(actor.account, id.0, doc.devices.iter(), true);
        plan.meta.push((
            keys::group_count(actor.account),
            Some((count + 1).to_be_bytes().to_vec()),
        ));
        plan.record_change(
            actor,
            seq,
            id,
            &Record {
                op: ChangeOp::Created,
                time: now,
                revision: Some(1),
                user: actor.user.to_string(),
                delta: None,
                // The state after a create is rebuilt backwards like any other
                // (`history.rs`): from the group, or from a later checkpoint or delete.
                // Storing it would double what a group costs on disk. An office ID
                // comes back when the office deletes a group and makes it again
                // (local numbers never do): the feed then reads forward over this
                // create, so an office create carries its state.
                full: id.is_office().then(|| (doc.clone(), now)),
            },
        );
        Ok(enc.whole())
    }

    /// Plans changing group `id` from `current` (its document `old`) to `new` as change
    /// `seq`: the name index (refused when the new name is taken), the device index,
    /// the value and the change record. Returns the new whole value.
    pub(super) fn plan_update(
        &self,
        plan: &mut Plan,
        actor: Actor<'_>,
        id: GroupId,
        current: &Current,
        (old, new): (&GroupDoc, &GroupDoc),
        seq: u64,
    ) -> Result<Vec<u8>, Error> {
        let (old_lname, new_lname) = (name_key(&old.name), name_key(&new.name));
        if old_lname != new_lname {
            let new_k = keys::name(actor.account, &new_lname);
            self.check_name_free(&new_k)?;
            self.release_name(plan, keys::name(actor.account, &old_lname), id.0)?;
            plan.names.push((new_k, Some(id.0.to_be_bytes().to_vec())));
        }
        let old_set: std::collections::HashSet<&str> =
            old.devices.iter().map(String::as_str).collect();
        let new_set: std::collections::HashSet<&str> =
            new.devices.iter().map(String::as_str).collect();
        plan.index_devices(actor.account, id.0, old_set.difference(&new_set), false);
        plan.index_devices(actor.account, id.0, new_set.difference(&old_set), true);
        let view = &current.view;
        let now = self.clock.wall_ms().max(view.last_modified() + 1);
        let revision = view.revision() + 1;
        let enc = Encoded::new(id, new, revision, view.creation(), now);
        let writes = self.plan_store(actor.account, id.0, Some(&current.stored), &enc)?;
        plan.store_group(actor.account, id.0, writes);
        plan.record_change(
            actor,
            seq,
            id,
            &Record {
                op: ChangeOp::Updated,
                time: now,
                revision: Some(revision),
                user: actor.user.to_string(),
                delta: Some(super::delta::diff(old, new)),
                // A checkpoint now and then bounds how far a read walks back.
                full: (revision % history::CHECKPOINT_EVERY == 0)
                    .then(|| (new.clone(), view.creation())),
            },
        );
        Ok(enc.whole())
    }

    /// Plans deleting group `id` (`current`, its document `doc`) with its index
    /// entries as change `seq`.
    pub(super) fn plan_delete(
        &self,
        plan: &mut Plan,
        actor: Actor<'_>,
        id: GroupId,
        current: &Current,
        doc: GroupDoc,
        seq: u64,
    ) -> Result<(), Error> {
        let writes = self.plan_remove(actor.account, id.0, &current.stored)?;
        plan.store_group(actor.account, id.0, writes);
        self.release_name(plan, keys::name(actor.account, &name_key(&doc.name)), id.0)?;
        plan.index_devices(actor.account, id.0, doc.devices.iter(), false);
        let count = self.account_count(actor.account)?;
        plan.meta.push((
            keys::group_count(actor.account),
            Some(count.saturating_sub(1).to_be_bytes().to_vec()),
        ));
        plan.record_change(
            actor,
            seq,
            id,
            &Record {
                op: ChangeOp::Deleted,
                time: self.clock.wall_ms(),
                revision: None,
                user: actor.user.to_string(),
                delta: None,
                // The state before: earlier records are rebuilt from it.
                full: Some((doc, current.view.creation())),
            },
        );
        Ok(())
    }

    /// The group a write is about to change, with `If-Match` checked: `GroupNotFound`
    /// when the account has no such group, `RevisionMismatch` when the revision is not
    /// one of `if_match`.
    /// Called under the writer mutex, so the check and the write are one step.
    fn current_for_write(
        &self,
        actor: Actor<'_>,
        id: GroupId,
        if_match: Option<&[u64]>,
    ) -> Result<Current, Error> {
        let stored = self
            .groups
            .get_latest(keys::group(actor.account, id.0))
            .map_err(|e| self.read_err(e))?
            .ok_or(Error::GroupNotFound)?;
        if id.is_office() {
            // Only the office pull (`office.rs`) changes an office group.
            return Err(Error::OfficeReadOnly);
        }
        let view = self
            .view(actor.account, id, stored.clone(), Seen::Latest)?
            .ok_or(Error::GroupNotFound)?;
        if if_match.is_some_and(|revs| !revs.contains(&view.revision())) {
            return Err(Error::RevisionMismatch);
        }
        Ok(Current { view, stored })
    }

    /// Changes a group: `change` gets the current document and returns the new one and
    /// a value for the caller. `if_match` is checked against the revision under the same
    /// lock as the write. A change that leaves the document as it was writes nothing.
    /// `change` fails with the caller's error type, which store errors convert into.
    pub fn update_group<T, E: From<Error>>(
        &self,
        actor: Actor<'_>,
        id: GroupId,
        if_match: Option<&[u64]>,
        change: impl FnOnce(&GroupDoc) -> Result<(GroupDoc, T), E>,
    ) -> Result<(GroupView, T), E> {
        let mut w = self.write_lock()?;
        let current = self.current_for_write(actor, id, if_match)?;
        let old = current.view.doc()?;
        let (new, extra) = change(&old)?;
        if new == old {
            return Ok((current.view, extra));
        }
        let mut plan = Plan::default();
        let seq = w.next_change;
        let raw = self.plan_update(&mut plan, actor, id, &current, (&old, &new), seq)?;
        let ng = w.next_group;
        self.apply(&mut w, plan, ng, seq + 1)?;
        Ok((GroupView::new(id, raw.into())?, extra))
    }

    /// Deletes a group with its index entries.
    pub fn delete_group(
        &self,
        actor: Actor<'_>,
        id: GroupId,
        if_match: Option<&[u64]>,
    ) -> Result<(), Error> {
        let mut w = self.write_lock()?;
        let current = self.current_for_write(actor, id, if_match)?;
        let doc = current.view.doc()?;
        let mut plan = Plan::default();
        let seq = w.next_change;
        self.plan_delete(&mut plan, actor, id, &current, doc, seq)?;
        let ng = w.next_group;
        self.apply(&mut w, plan, ng, seq + 1)
    }

    /// Background upkeep: removes change-feed entries that are at least `keep` of the
    /// store's running time old (`retention.rs`: by sequence and elapsed time, not by
    /// their wall-clock time) and idempotency records expired at `now`. Neither part
    /// blocks requests for long: both work in small batches, each under the writer
    /// mutex only briefly.
    pub fn purge(&self, keep: std::time::Duration, now: i64) -> Result<Purged, Error> {
        let keep_ms = u64::try_from(keep.as_millis()).unwrap_or(u64::MAX);
        Ok(Purged {
            changes: self.purge_changes_at(keep_ms, self.retention_elapsed_ms())?,
            idempotency: self.purge_idempotency(now)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{Actor, ListQuery, NAME_DIRECT_SCAN};
    use crate::model::GroupDoc;
    use crate::store::{Store, StoreOptions};

    /// The name filter gives the same pages whichever way it finds them: reading the
    /// groups directly, switching to the name index after NAME_DIRECT_SCAN groups, or
    /// the index alone (no limit).
    #[test]
    fn name_filter_pages_agree_with_a_brute_force_scan() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(
            dir.path(),
            &StoreOptions {
                cache_bytes: 4 << 20,
                ..crate::store::testing::options()
            },
        )
        .unwrap();
        let actor = Actor {
            account: "a",
            user: "u",
        };
        let total = NAME_DIRECT_SCAN + 300;
        let name = |n: usize| {
            // Dense "Common" matches everywhere; rare "Rare" ones only past the direct
            // scan; "ÜBER" to check Unicode case folding on the index path.
            if n % 3 == 0 {
                format!("Common {n}")
            } else if n > NAME_DIRECT_SCAN + 100 && n % 50 == 1 {
                format!("Rare über {n}")
            } else {
                format!("Other {n}")
            }
        };
        for n in 1..=total {
            let doc = GroupDoc {
                name: name(n),
                description: None,
                devices: vec![],
            };
            s.create_group(actor, &doc, u64::MAX, None).unwrap();
        }
        for filter in ["common", "RARE", "ÜBER", "nothing"] {
            let want: Vec<u64> = (1..=total as u64)
                .filter(|n| {
                    name(*n as usize)
                        .to_lowercase()
                        .contains(&filter.to_lowercase())
                })
                .collect();
            // Without a limit: everything at once.
            let all = s
                .list_groups(
                    "a",
                    &ListQuery {
                        name: Some(filter.into()),
                        ..ListQuery::default()
                    },
                )
                .unwrap();
            assert_eq!(
                all.groups.iter().map(|g| g.id.0).collect::<Vec<_>>(),
                want,
                "{filter}"
            );
            assert_eq!(all.next, None);
            // Paged, following `next`.
            for limit in [1, 7, 100] {
                let mut seen = Vec::new();
                let mut after = None;
                loop {
                    let page = s
                        .list_groups(
                            "a",
                            &ListQuery {
                                name: Some(filter.into()),
                                limit: Some(limit),
                                after,
                                ..ListQuery::default()
                            },
                        )
                        .unwrap();
                    assert!(page.groups.len() <= limit);
                    seen.extend(page.groups.iter().map(|g| g.id.0));
                    match page.next {
                        Some(id) => after = Some(id.0),
                        None => break,
                    }
                }
                assert_eq!(seen, want, "{filter} limit {limit}");
            }
        }
    }

    /// Groups and their change records are dated by the store's clock, so a test can
    /// move it.
    #[test]
    fn writes_are_dated_by_the_clock_the_store_is_given() {
        let dir = tempfile::tempdir().unwrap();
        let start = 1_796_000_000_000;
        let clock = crate::time::Clock::manual(start);
        let s = Store::open(
            dir.path(),
            &StoreOptions {
                clock: clock.clone(),
                ..crate::store::testing::options()
            },
        )
        .unwrap();
        let actor = Actor {
            account: "a",
            user: "u",
        };
        let doc = |name: &str| GroupDoc {
            name: name.into(),
            description: None,
            devices: vec![],
        };
        let id = s.create_group(actor, &doc("g"), 10, None).unwrap().group.id;
        clock.advance(std::time::Duration::from_secs(60));
        let (v, ()) = s
            .update_group(actor, id, None, |_| Ok::<_, super::Error>((doc("h"), ())))
            .unwrap();
        assert_eq!((v.creation(), v.last_modified()), (start, start + 60_000));
        let page = s.changes("a", Some(0), 10, usize::MAX).unwrap();
        assert_eq!(page.entries.len(), 2);
        let updated = String::from_utf8_lossy(&page.entries[1]).into_owned();
        assert!(
            updated.contains(&crate::time::rfc3339_ms(start + 60_000)),
            "{updated}"
        );
    }

    /// A store whose name index was built with `to_lowercase` (before names were
    /// case-folded) gets it rebuilt at open; names that now fold the same both stay.
    #[test]
    fn an_old_name_index_is_rebuilt_and_collisions_keep_the_name_taken() {
        use crate::model::GroupId;
        use crate::store::keys;
        use crate::store::testing::{doc, store};
        let dir = tempfile::tempdir().unwrap();
        let actor = Actor {
            account: "a",
            user: "u",
        };
        {
            let s = store(dir.path());
            s.create_group(actor, &doc("Straße"), 10, None).unwrap();
            s.create_group(actor, &doc("Other"), 10, None).unwrap();
            // What an earlier version could hold: grp-2 named "STRASSE", indexed apart.
            let raw = crate::store::value::encode(GroupId(2), &doc("STRASSE"), 2, 1, 2);
            s.groups.insert(keys::group("a", 2), raw).unwrap();
            s.names.clear().unwrap();
            s.names
                .insert(keys::name("a", "straße"), &1u64.to_be_bytes())
                .unwrap();
            s.names
                .insert(keys::name("a", "strasse"), &2u64.to_be_bytes())
                .unwrap();
            s.meta.remove(super::super::META_NAME_RULES).unwrap();
            s.close().unwrap();
        }
        // sled's own background flusher may hold the file lock a moment after the
        // last handle is dropped; wait for it rather than fail.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let options = crate::store::testing::options();
        let s = loop {
            match Store::open(dir.path(), &options) {
                Ok(s) => break s,
                Err(crate::store::OpenError::Locked(_)) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("{e}"),
            }
        };
        let index: Vec<_> = s.names.iter().map(Result::unwrap).collect();
        assert_eq!(index.len(), 1, "one entry for the one folded name");
        assert_eq!(
            keys::read_u64(&index[0].1),
            Some(1),
            "the older group holds it"
        );
        let e = s
            .create_group(actor, &doc("strasse"), 10, None)
            .unwrap_err();
        assert!(matches!(e, crate::store::Error::NameTaken), "{e:?}");
        assert_eq!(
            s.get_group("a", GroupId(2))
                .unwrap()
                .unwrap()
                .name()
                .unwrap(),
            "STRASSE"
        );
    }
}
