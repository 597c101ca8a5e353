//! Office groups at the edge: groups defined centrally (`fleetgroups.office_groups`)
//! that this gateway serves read-only, with IDs `ofc-<m>` (`model::GroupId`) that no
//! local group can have. The pull (`crate::replication::office`) hands each central change to
//! [`Store::apply_office`], which applies it as ONE batch together with the office
//! cursor (the central revision applied through), so a crash at any moment neither
//! loses nor doubles it: either both are on disk or neither, and the change is pulled
//! again. The change enters the feed as the user `office` and replicates back up like
//! any other.
//!
//! A change that cannot be applied here — its name taken by a local group, the
//! account's quota or `limits.max_devices_per_group` exceeded, a document the local
//! rules refuse — is *held*: kept in `meta` (`office\0 account 0x00 n`) with its reason
//! and the time it was first held, never half-applied (a held update leaves the group
//! as it was served). Held changes are tried again on every pull and after every local
//! rename or delete (`retry_office_held`), and applied as soon as the obstacle goes.
//!
//! A restore leaves the cursor and the reconcile mark behind (they are not in a
//! backup): the next pull starts from revision 0, re-applies what is unchanged as
//! no-ops, and then reconciles (`reconcile_office`): office groups the centre no longer
//! means for this gateway go.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::groups::Current;
use super::pieces::Seen;
use super::plan::{Actor, Plan};
use super::{keys, Error, Store};
use crate::model::{name_key, validate_doc, GroupId, Rules, OFFICE_BASE};

/// The user office changes are recorded as in the change feed.
pub const OFFICE_USER: &str = "office";

/// `meta`: the central revision every office change up to which is applied (u64).
const META_OFFICE_CURSOR: &[u8] = b"office_cursor";
/// `meta`: present once this store has reconciled its office groups with the centre
/// (a new or restored store has not).
const META_OFFICE_RECONCILED: &[u8] = b"office_reconciled";
/// `meta`: the `gateway_id` the cursor was pulled for.
const META_OFFICE_GATEWAY: &[u8] = b"office_gateway";
/// `meta`: the prefix of held office changes, `office 0x00 account 0x00 n`.
const HELD_PREFIX: &[u8] = b"office\0";

fn held_key(account: &str, n: u64) -> Vec<u8> {
    let mut k = HELD_PREFIX.to_vec();
    k.extend_from_slice(&keys::group(account, n));
    k
}

/// One office group as the centre defines it (not yet checked against local rules).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfficeGroup {
    pub account: String,
    pub id: GroupId,
    pub name: String,
    pub description: Option<String>,
    pub devices: Vec<String>,
}

/// One central change meant for this gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OfficeChange {
    /// The group exists and targets this gateway: serve it as given.
    Upsert(OfficeGroup),
    /// Deleted centrally, or this gateway was dropped from its `gateways`.
    Remove { account: String, id: GroupId },
}

impl OfficeChange {
    fn key(&self) -> (&str, GroupId) {
        match self {
            OfficeChange::Upsert(g) => (&g.account, g.id),
            OfficeChange::Remove { account, id } => (account, *id),
        }
    }
}

/// Why an office change is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeldReason {
    /// A local group (or another office group) of the account has the name.
    NameTaken,
    /// The account has `limits.max_groups_per_account` groups.
    AccountQuota,
    /// More devices than `limits.max_devices_per_group`.
    MaxDevicesPerGroup,
    /// A document this gateway's rules refuse (a centre without the checks).
    Invalid,
}

impl HeldReason {
    /// As the centre and `/metrics` name it.
    pub fn as_str(self) -> &'static str {
        match self {
            HeldReason::NameTaken => "name_taken",
            HeldReason::AccountQuota => "account_quota",
            HeldReason::MaxDevicesPerGroup => "max_devices_per_group",
            HeldReason::Invalid => "invalid",
        }
    }
}

/// An office change that could not be applied here, kept until it can.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    pub group: OfficeGroup,
    pub reason: HeldReason,
    /// What exactly (the rule's sentence).
    pub detail: String,
    /// When it was first held for this reason (ms).
    pub since: i64,
}

/// The local limits an office group must fit, as for a local write.
#[derive(Debug, Clone, Copy)]
pub struct OfficeLimits {
    pub max_groups: u64,
    pub max_devices: usize,
}

/// What applying one office change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Created, updated or removed: one entry in the feed.
    Changed,
    /// Already so (a repeat, or a removal of a group not served): nothing recorded.
    Unchanged,
    /// Not applied: held for this reason.
    Held(HeldReason),
}

impl Store {
    /// The central revision every office change up to which is applied (0: none).
    pub fn office_cursor(&self) -> Result<u64, Error> {
        Ok(self
            .meta
            .get_latest(META_OFFICE_CURSOR)
            .map_err(|e| self.read_err(e))?
            .and_then(|v| keys::read_u64(&v))
            .unwrap_or(0))
    }

    /// Whether this store has reconciled its office groups with the centre since it
    /// was made (a restore makes a new store that has not).
    pub fn office_reconciled(&self) -> Result<bool, Error> {
        Ok(self
            .meta
            .get_latest(META_OFFICE_RECONCILED)
            .map_err(|e| self.read_err(e))?
            .is_some())
    }

    /// Every held office change, in key order.
    pub fn office_held(&self) -> Result<Vec<Held>, Error> {
        self.held_under(HELD_PREFIX)
    }

    fn held_under(&self, prefix: &[u8]) -> Result<Vec<Held>, Error> {
        let mut out = Vec::new();
        for item in self.meta.scan_prefix_latest(prefix) {
            let (_, v) = item.map_err(|e| self.read_err(e))?;
            out.push(
                serde_json::from_slice(&v)
                    .map_err(|e| Error::corrupt_json("a held office change", e))?,
            );
        }
        Ok(out)
    }

    /// Applies one central change and, in the same batch, moves the office cursor to
    /// `cursor` (never back). See the module comment.
    pub fn apply_office(
        &self,
        change: &OfficeChange,
        cursor: Option<u64>,
        limits: OfficeLimits,
    ) -> Result<Outcome, Error> {
        self.apply_office_if(change, cursor, limits, None)
    }

    /// `apply_office`, only while the change held for its group is still `held` (when
    /// given): checked under the writer mutex, so a retry never applies a held state
    /// that a newer pull has replaced meanwhile (Unchanged then).
    fn apply_office_if(
        &self,
        change: &OfficeChange,
        cursor: Option<u64>,
        limits: OfficeLimits,
        held: Option<&Held>,
    ) -> Result<Outcome, Error> {
        let (account, id) = change.key();
        if !id.is_office() {
            return Err(Error::corrupt(format!(
                "an office change for {id}, which is not an office group ID"
            )));
        }
        let mut w = self.write_lock()?;
        let existing = self.held_one(account, id.0)?;
        if held.is_some_and(|h| existing.as_ref() != Some(h)) {
            return Ok(Outcome::Unchanged);
        }
        let clear_held = |plan: &mut Plan| {
            if existing.is_some() {
                plan.meta.push((held_key(account, id.0), None));
            }
        };
        let mut plan = Plan::default();
        let mut seq = w.next_change;
        if let Some(c) = cursor {
            if c > self.office_cursor()? {
                plan.meta
                    .push((META_OFFICE_CURSOR.to_vec(), Some(c.to_be_bytes().to_vec())));
            }
        }
        let actor = Actor {
            account,
            user: OFFICE_USER,
        };
        let outcome = match change {
            OfficeChange::Remove { .. } => {
                clear_held(&mut plan);
                if self.plan_office_remove(&mut plan, actor, id, seq)? {
                    seq += 1;
                    Outcome::Changed
                } else {
                    Outcome::Unchanged
                }
            }
            OfficeChange::Upsert(g) => match self.plan_office_upsert(&mut plan, g, seq, limits)? {
                Ok(changed) => {
                    clear_held(&mut plan);
                    if changed {
                        seq += 1;
                        Outcome::Changed
                    } else {
                        Outcome::Unchanged
                    }
                }
                Err((reason, detail)) => {
                    let since = match &existing {
                        Some(h) if h.reason == reason => h.since,
                        _ => self.clock.wall_ms(),
                    };
                    let held = Held {
                        group: g.clone(),
                        reason,
                        detail,
                        since,
                    };
                    let bytes = serde_json::to_vec(&held).map_err(|source| Error::Encode {
                        what: "a held office change",
                        source,
                    })?;
                    if existing.as_ref() != Some(&held) {
                        plan.meta.push((held_key(account, id.0), Some(bytes)));
                    }
                    Outcome::Held(reason)
                }
            },
        };
        if plan.is_empty() {
            // A repeat, a removal of nothing, a conflict held as it was: nothing to write.
            return Ok(outcome);
        }
        let ng = w.next_group;
        self.apply(&mut w, plan, ng, seq)?;
        Ok(outcome)
    }

    fn held_one(&self, account: &str, n: u64) -> Result<Option<Held>, Error> {
        match self
            .meta
            .get_latest(held_key(account, n))
            .map_err(|e| self.read_err(e))?
        {
            Some(v) => {
                Ok(Some(serde_json::from_slice(&v).map_err(|e| {
                    Error::corrupt_json("a held office change", e)
                })?))
            }
            None => Ok(None),
        }
    }

    /// Plans the office group `g` as the centre has it: created, or updated to it.
    /// Ok(false) when it is served so already; Err(reason) when a local rule refuses
    /// it (nothing planned). Under the writer mutex.
    fn plan_office_upsert(
        &self,
        plan: &mut Plan,
        g: &OfficeGroup,
        seq: u64,
        limits: OfficeLimits,
    ) -> Result<Result<bool, (HeldReason, String)>, Error> {
        let body = serde_json::json!({
            "name": g.name,
            "description": g.description,
            "devices": g.devices,
        });
        // The central checks (`office.sql`) are the same rules; these are the local
        // limits, and a guard against a centre without the checks.
        let distinct: HashSet<&str> = g.devices.iter().map(String::as_str).collect();
        if distinct.len() > limits.max_devices {
            return Ok(Err((
                HeldReason::MaxDevicesPerGroup,
                format!(
                    "{} devices, more than limits.max_devices_per_group ({})",
                    distinct.len(),
                    limits.max_devices
                ),
            )));
        }
        let doc = match validate_doc(
            &body,
            Rules {
                max_devices: limits.max_devices,
            },
        ) {
            Ok(doc) => doc,
            Err(e) => return Ok(Err((HeldReason::Invalid, e.0))),
        };
        let (account, id) = (g.account.as_str(), g.id);
        let actor = Actor {
            account,
            user: OFFICE_USER,
        };
        let new_k = keys::name(account, &name_key(&doc.name));
        let owner = self
            .names
            .get_latest(&new_k)
            .map_err(|e| self.read_err(e))?
            .and_then(|v| keys::read_u64(&v));
        if let Some(holder) = owner.filter(|n| *n != id.0) {
            return Ok(Err((
                HeldReason::NameTaken,
                format!(
                    "{} of account {account} has the name {:?}",
                    GroupId(holder),
                    doc.name
                ),
            )));
        }
        let Some(current) = self.current_office(account, id)? else {
            let count = self.account_count(account)?;
            if count >= limits.max_groups {
                return Ok(Err((
                    HeldReason::AccountQuota,
                    format!(
                        "account {account} has {count} groups, limits.max_groups_per_account is {}",
                        limits.max_groups
                    ),
                )));
            }
            let now = self.clock.wall_ms();
            self.plan_create(plan, actor, id, &doc, (new_k, count), (seq, now))?;
            return Ok(Ok(true));
        };
        let old = current.view.doc()?;
        if old == doc {
            return Ok(Ok(false));
        }
        self.plan_update(plan, actor, id, &current, (&old, &doc), seq)?;
        Ok(Ok(true))
    }

    /// The office group `id` as served, with its stored value (None: not served).
    fn current_office(&self, account: &str, id: GroupId) -> Result<Option<Current>, Error> {
        let Some(stored) = self
            .groups
            .get_latest(keys::group(account, id.0))
            .map_err(|e| self.read_err(e))?
        else {
            return Ok(None);
        };
        Ok(self
            .view(account, id, stored.clone(), Seen::Latest)?
            .map(|view| Current { view, stored }))
    }

    /// Plans removing the office group `id` when it is served; false when it is not.
    fn plan_office_remove(
        &self,
        plan: &mut Plan,
        actor: Actor<'_>,
        id: GroupId,
        seq: u64,
    ) -> Result<bool, Error> {
        let Some(current) = self.current_office(actor.account, id)? else {
            return Ok(false);
        };
        let doc = current.view.doc()?;
        self.plan_delete(plan, actor, id, &current, doc, seq)?;
        Ok(true)
    }

    /// Tries every held office change again (of `account` only, when given): each
    /// that fits now is applied (its own batch, the cursor unmoved). Returns how many
    /// were applied.
    pub fn retry_office_held(
        &self,
        account: Option<&str>,
        limits: OfficeLimits,
    ) -> Result<usize, Error> {
        let prefix = match account {
            Some(a) => {
                let mut p = HELD_PREFIX.to_vec();
                p.extend_from_slice(&keys::account_prefix(a));
                p
            }
            None => HELD_PREFIX.to_vec(),
        };
        let mut applied = 0;
        for held in self.held_under(&prefix)? {
            let change = OfficeChange::Upsert(held.group.clone());
            if self.apply_office_if(&change, None, limits, Some(&held))? == Outcome::Changed {
                applied += 1;
            }
        }
        Ok(applied)
    }

    /// Notes that office changes are pulled for `gateway`. When the cursor was pulled
    /// for another one (`replication.gateway_id` changed), another set of office
    /// groups may be meant for this gateway: the cursor and the reconcile mark go, in
    /// one batch, so the next pull starts from 0 and reconciles. True when it reset.
    pub fn office_gateway(&self, gateway: &str) -> Result<bool, Error> {
        let mut w = self.write_lock()?;
        let known = self
            .meta
            .get_latest(META_OFFICE_GATEWAY)
            .map_err(|e| self.read_err(e))?;
        if known.as_deref() == Some(gateway.as_bytes()) {
            return Ok(false);
        }
        let mut plan = Plan::default();
        plan.meta.push((
            META_OFFICE_GATEWAY.to_vec(),
            Some(gateway.as_bytes().to_vec()),
        ));
        let reset = known.is_some();
        if reset {
            plan.meta.push((META_OFFICE_CURSOR.to_vec(), None));
            plan.meta.push((META_OFFICE_RECONCILED.to_vec(), None));
        }
        let (ng, nc) = (w.next_group, w.next_change);
        self.apply(&mut w, plan, ng, nc)?;
        Ok(reset)
    }

    /// Moves the cursor past `revision` alone (a central row no gateway can hold was
    /// skipped); never back.
    pub fn advance_office_cursor(&self, revision: u64) -> Result<(), Error> {
        let mut w = self.write_lock()?;
        if revision <= self.office_cursor()? {
            return Ok(());
        }
        let mut plan = Plan::default();
        plan.meta.push((
            META_OFFICE_CURSOR.to_vec(),
            Some(revision.to_be_bytes().to_vec()),
        ));
        let (ng, nc) = (w.next_group, w.next_change);
        self.apply(&mut w, plan, ng, nc)
    }

    /// `/metrics`: the cursor, the office groups served and the changes held.
    pub fn office_figures(&self) -> Result<(u64, u64, u64), Error> {
        Ok((
            self.office_cursor()?,
            self.office_served()?.len() as u64,
            self.meta.scan_prefix_latest(HELD_PREFIX).count() as u64,
        ))
    }

    /// Every office group this gateway serves, as (account, id), in key order.
    pub fn office_served(&self) -> Result<Vec<(String, GroupId)>, Error> {
        let mut accounts = Vec::new();
        self.each_account(&self.groups, |prefix| {
            accounts.push(prefix.to_vec());
            Ok(())
        })?;
        let mut out = Vec::new();
        for prefix in accounts {
            let account = String::from_utf8_lossy(&prefix[..prefix.len() - 1]).into_owned();
            let mut from = prefix.clone();
            from.extend_from_slice(&(OFFICE_BASE + 1).to_be_bytes());
            for item in self.groups.range_latest(from..) {
                let (k, _) = item.map_err(|e| self.read_err(e))?;
                if !k.starts_with(&prefix) {
                    break;
                }
                if let Some(n) = keys::trailing_u64(&k) {
                    out.push((account.clone(), GroupId(n)));
                }
            }
        }
        Ok(out)
    }

    /// Ends a reconcile with the centre: every office group served or held that is not
    /// in `meant` (what the centre means for this gateway, read in the same snapshot as
    /// the changes applied up to the cursor) is removed, each in its own batch, and
    /// then the store is marked reconciled. Interrupted, it is simply done again.
    pub fn reconcile_office(
        &self,
        meant: &HashSet<(String, GroupId)>,
        limits: OfficeLimits,
    ) -> Result<usize, Error> {
        let mut removed = 0;
        let held = self.office_held()?;
        let extra = self
            .office_served()?
            .into_iter()
            .chain(held.into_iter().map(|h| (h.group.account, h.group.id)))
            .filter(|k| !meant.contains(k))
            .collect::<Vec<_>>();
        for (account, id) in extra {
            let change = OfficeChange::Remove { account, id };
            if self.apply_office(&change, None, limits)? == Outcome::Changed {
                removed += 1;
            }
        }
        let mut w = self.write_lock()?;
        let mut plan = Plan::default();
        plan.meta
            .push((META_OFFICE_RECONCILED.to_vec(), Some(vec![1])));
        let (ng, nc) = (w.next_group, w.next_change);
        self.apply(&mut w, plan, ng, nc)?;
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{doc, store};

    const LIMITS: OfficeLimits = OfficeLimits {
        max_groups: 3,
        max_devices: 4,
    };

    fn office(account: &str, m: u64, name: &str, devices: &[&str]) -> OfficeGroup {
        OfficeGroup {
            account: account.into(),
            id: GroupId::office(m).unwrap(),
            name: name.into(),
            description: None,
            devices: devices.iter().map(|d| d.to_string()).collect(),
        }
    }

    fn feed_users(s: &Store, account: &str) -> Vec<(String, String)> {
        s.changes(account, Some(0), 100, usize::MAX)
            .unwrap()
            .entries
            .iter()
            .map(|e| {
                let v: serde_json::Value = serde_json::from_slice(e).unwrap();
                (
                    v["op"].as_str().unwrap().to_string(),
                    v["userName"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// An office group is created, updated and removed with the cursor in the same
    /// batch; a repeat of any change records nothing; the feed has each once, as the
    /// user `office`, with `origin` in the group.
    #[test]
    fn office_changes_apply_once_with_the_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let g = office("a", 7, "Trucks", &["d1"]);
        let up = OfficeChange::Upsert(g.clone());
        assert_eq!(
            s.apply_office(&up, Some(3), LIMITS).unwrap(),
            Outcome::Changed
        );
        assert_eq!(
            s.apply_office(&up, Some(3), LIMITS).unwrap(),
            Outcome::Unchanged
        );
        assert_eq!(s.office_cursor().unwrap(), 3);
        let v = s.get_group("a", g.id).unwrap().unwrap();
        assert_eq!(v.id.to_string(), "ofc-7");
        assert!(String::from_utf8(v.served())
            .unwrap()
            .ends_with(r#","origin":"office"}"#));
        let up2 = OfficeChange::Upsert(office("a", 7, "Trucks 2", &["d2"]));
        assert_eq!(
            s.apply_office(&up2, Some(5), LIMITS).unwrap(),
            Outcome::Changed
        );
        // The device index follows.
        let by_device = |d: &str| {
            s.list_groups(
                "a",
                &crate::store::groups::ListQuery {
                    device: Some(d.into()),
                    ..Default::default()
                },
            )
            .unwrap()
            .groups
            .len()
        };
        assert_eq!((by_device("d1"), by_device("d2")), (0, 1));
        // A cursor never goes back.
        s.apply_office(&up2, Some(4), LIMITS).unwrap();
        assert_eq!(s.office_cursor().unwrap(), 5);
        let rm = OfficeChange::Remove {
            account: "a".into(),
            id: g.id,
        };
        assert_eq!(
            s.apply_office(&rm, Some(6), LIMITS).unwrap(),
            Outcome::Changed
        );
        assert_eq!(
            s.apply_office(&rm, Some(6), LIMITS).unwrap(),
            Outcome::Unchanged
        );
        assert!(s.get_group("a", g.id).unwrap().is_none());
        let feed = feed_users(&s, "a");
        let office = |op: &str| (op.to_string(), "office".to_string());
        assert_eq!(
            feed,
            vec![office("created"), office("updated"), office("deleted")]
        );
        let entry = &s.changes("a", Some(0), 1, usize::MAX).unwrap().entries[0];
        assert!(String::from_utf8_lossy(entry).contains(r#""origin":"office"}"#));
    }

    /// An office ID deleted and made again (the same number): every feed entry of
    /// both lives reads back, in pages of every size.
    #[test]
    fn an_office_id_made_again_keeps_the_feed_readable() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let id = GroupId::office(4).unwrap();
        let rm = OfficeChange::Remove {
            account: "a".into(),
            id,
        };
        let mut want = Vec::new();
        for life in 0..3 {
            for v in 0..3 {
                let g = office("a", 4, &format!("life {life}"), &[&format!("d{v}")]);
                s.apply_office(&OfficeChange::Upsert(g), None, LIMITS)
                    .unwrap();
                want.push(s.get_group("a", id).unwrap().map(|v| v.served()));
            }
            s.apply_office(&rm, None, LIMITS).unwrap();
            want.push(None);
        }
        s.apply_office(
            &OfficeChange::Upsert(office("a", 4, "last", &[])),
            None,
            LIMITS,
        )
        .unwrap();
        want.push(s.get_group("a", id).unwrap().map(|v| v.served()));
        for limit in [1, 2, 3, 5, 100] {
            let mut got = Vec::new();
            let mut after = 0;
            loop {
                let page = s.changes("a", Some(after), limit, usize::MAX).unwrap();
                if page.entries.is_empty() {
                    break;
                }
                for e in &page.entries {
                    let v: serde_json::Value = serde_json::from_slice(e).unwrap();
                    got.push((!v["group"].is_null()).then(|| v["group"].to_string()));
                }
                after = page.next;
            }
            let want: Vec<Option<String>> = want
                .iter()
                .map(|w| {
                    w.as_ref().map(|b| {
                        serde_json::from_slice::<serde_json::Value>(b)
                            .unwrap()
                            .to_string()
                    })
                })
                .collect();
            assert_eq!(got, want, "limit {limit}");
        }
        let report = s.check();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    }

    /// A name taken by a local group, the quota and the device limit hold an office
    /// change back whole (an update leaves the served state); it is applied once the
    /// obstacle goes, and a removal clears it.
    #[test]
    fn conflicts_are_held_whole_and_applied_when_the_obstacle_goes() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let local = Actor {
            account: "a",
            user: "u",
        };
        let lid = s
            .create_group(local, &doc("Trucks"), 10, None)
            .unwrap()
            .group
            .id;
        let g = office("a", 1, "trucks", &[]);
        let out = s
            .apply_office(&OfficeChange::Upsert(g.clone()), Some(1), LIMITS)
            .unwrap();
        assert_eq!(out, Outcome::Held(HeldReason::NameTaken));
        assert_eq!(s.office_cursor().unwrap(), 1, "the cursor moves past it");
        assert!(s.get_group("a", g.id).unwrap().is_none());
        let held = s.office_held().unwrap();
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].group, g);
        // Still held while the name is taken; applied once the local group is renamed.
        assert_eq!(s.retry_office_held(Some("a"), LIMITS).unwrap(), 0);
        s.update_group(local, lid, None, |_| Ok::<_, Error>((doc("Vans"), ())))
            .unwrap();
        assert_eq!(s.retry_office_held(Some("a"), LIMITS).unwrap(), 1);
        assert!(s.office_held().unwrap().is_empty());
        assert_eq!(
            s.get_group("a", g.id).unwrap().unwrap().name().unwrap(),
            "trucks"
        );
        // An update over the device limit is held; the served state stays.
        let big = office("a", 1, "trucks", &["1", "2", "3", "4", "5"]);
        let out = s
            .apply_office(&OfficeChange::Upsert(big), Some(2), LIMITS)
            .unwrap();
        assert_eq!(out, Outcome::Held(HeldReason::MaxDevicesPerGroup));
        assert_eq!(
            s.get_group("a", g.id)
                .unwrap()
                .unwrap()
                .doc()
                .unwrap()
                .devices
                .len(),
            0
        );
        // The quota (3): two groups exist; a third fits, a fourth is held.
        s.apply_office(
            &OfficeChange::Upsert(office("a", 2, "x", &[])),
            Some(3),
            LIMITS,
        )
        .unwrap();
        let out = s
            .apply_office(
                &OfficeChange::Upsert(office("a", 3, "y", &[])),
                Some(4),
                LIMITS,
            )
            .unwrap();
        assert_eq!(out, Outcome::Held(HeldReason::AccountQuota));
        // A removal clears a held change.
        let rm = OfficeChange::Remove {
            account: "a".into(),
            id: GroupId::office(3).unwrap(),
        };
        assert_eq!(
            s.apply_office(&rm, Some(5), LIMITS).unwrap(),
            Outcome::Unchanged
        );
        assert_eq!(
            s.office_held().unwrap().len(),
            1,
            "only the device-limit one"
        );
        // Local writes to an office group are refused in the store too.
        let err = s.delete_group(local, g.id, None).unwrap_err();
        assert!(matches!(err, Error::OfficeReadOnly), "{err:?}");
    }

    /// Another gateway_id resets the cursor and the reconcile mark; the same one
    /// changes nothing.
    #[test]
    fn a_new_gateway_id_starts_the_office_pull_again() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        assert!(!s.office_gateway("gw-1").unwrap(), "the first is no change");
        s.apply_office(
            &OfficeChange::Upsert(office("a", 1, "g", &[])),
            Some(9),
            LIMITS,
        )
        .unwrap();
        s.reconcile_office(&HashSet::new(), LIMITS).unwrap();
        assert!(!s.office_gateway("gw-1").unwrap());
        assert_eq!(s.office_cursor().unwrap(), 9);
        assert!(s.office_gateway("gw-2").unwrap());
        assert_eq!(s.office_cursor().unwrap(), 0);
        assert!(!s.office_reconciled().unwrap());
    }

    /// Reconciling removes what the centre no longer means for this gateway, held
    /// changes included, and marks the store reconciled.
    #[test]
    fn reconcile_removes_what_is_not_meant() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        for m in 1..=2 {
            s.apply_office(
                &OfficeChange::Upsert(office("a", m, &format!("g{m}"), &[])),
                Some(m),
                LIMITS,
            )
            .unwrap();
        }
        assert!(!s.office_reconciled().unwrap());
        let meant: HashSet<(String, GroupId)> =
            [("a".to_string(), GroupId::office(2).unwrap())].into();
        assert_eq!(s.reconcile_office(&meant, LIMITS).unwrap(), 1);
        assert!(s.office_reconciled().unwrap());
        assert_eq!(
            s.office_served().unwrap(),
            vec![("a".to_string(), GroupId::office(2).unwrap())]
        );
    }
}
