//! `fleetgroups check`: verifies a stopped store end to end and reports what it found.
//! Opening the store already runs the fast part (format version, a log that is there
//! and not behind the high-water marks, sled able to read it); this reads everything:
//! every group parses and passes the §4 rules, the name and device indexes and the
//! per-account counts agree with the groups, every ID and change sequence lies below
//! the next ones, every change-feed entry parses and sits under its own sequence, and
//! every user record parses. Read-only: nothing is written, so a damaged store stays
//! as it was found.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::pieces::{self, Seen};
use super::value::{self, GroupView};
use super::{keys, Store};
use crate::model::{name_key, GroupDoc, GroupId};

/// (account, n) → (folded name, devices) of every group that parses.
type Found = BTreeMap<(String, u64), (String, HashSet<String>)>;

/// What `check` found.
#[derive(Debug, Default)]
pub struct Report {
    pub groups: u64,
    pub names: u64,
    pub device_entries: u64,
    pub changes: u64,
    pub users: u64,
    /// Everything wrong, one sentence each (the first `MAX_PROBLEMS`).
    pub problems: Vec<String>,
    /// How many problems there were in all.
    pub problem_count: u64,
}

/// Problems listed one by one; past this, only counted.
const MAX_PROBLEMS: usize = 50;

impl Report {
    fn problem(&mut self, what: String) {
        self.problem_count += 1;
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(what);
        }
    }

    /// Whether the store passed.
    pub fn clean(&self) -> bool {
        self.problem_count == 0
    }
}

/// The account name of an account-scoped key (everything before the first 0x00).
fn account_of(k: &[u8]) -> Option<String> {
    let sep = k.iter().position(|b| *b == 0)?;
    String::from_utf8(k[..sep].to_vec()).ok()
}

impl Store {
    /// The fast part of `check`, run at an open after a run that did not stop cleanly
    /// (no seal, `seal.rs`): every group record is read (so a missing or damaged blob
    /// is found), its key and header are well-formed, its number lies below the next
    /// one, and the groups of each account are as many as its recorded count (a zeroed
    /// block loses records, not the counts kept apart from them). Cost: one pass over
    /// the groups, no parsing of their JSON. A panic inside sled is damage too.
    pub(super) fn fast_check(&self) -> Result<(), String> {
        let next_group = crate::sync::lock(&self.writer).next_group;
        let scan = || -> Result<(), String> {
            let mut per_account: HashMap<Vec<u8>, u64> = HashMap::new();
            let mut named_pieces: HashMap<(Vec<u8>, u64), u32> = HashMap::new();
            for item in self.groups.iter() {
                let (k, raw) = item.map_err(|e| format!("a group cannot be read ({e})"))?;
                let (Some(sep), Some(n)) = (k.iter().position(|b| *b == 0), keys::trailing_u64(&k))
                else {
                    return Err(format!(
                        "a group key is not account + number ({:?})",
                        &k[..]
                    ));
                };
                if n == 0 || (n >= next_group && !GroupId(n).is_office()) {
                    return Err(format!(
                        "group grp-{n} is not below the next group number {next_group}"
                    ));
                }
                if value::is_split(&raw) {
                    named_pieces.insert((k[..sep].to_vec(), n), value::piece_count(&raw));
                } else {
                    GroupView::new(GroupId(n), raw)
                        .map_err(|_| format!("the record of grp-{n} is damaged"))?;
                }
                *per_account.entry(k[..sep].to_vec()).or_default() += 1;
            }
            pieces::compare_counts(self.piece_counts()?, &named_pieces)?;
            for item in self.meta.scan_prefix(keys::GROUP_COUNTS) {
                let (k, v) = item.map_err(|e| format!("a count cannot be read ({e})"))?;
                let account = &k[keys::GROUP_COUNTS.len()..];
                let recorded = keys::read_u64(&v).unwrap_or(u64::MAX);
                let found = per_account.remove(account).unwrap_or(0);
                if recorded != found {
                    return Err(format!(
                        "account {:?} has {found} groups, but {recorded} are recorded (records were lost)",
                        String::from_utf8_lossy(account)
                    ));
                }
            }
            if let Some((account, found)) = per_account.into_iter().next() {
                return Err(format!(
                    "account {:?} has {found} groups but no recorded count",
                    String::from_utf8_lossy(&account)
                ));
            }
            Ok(())
        };
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(scan))
            .unwrap_or_else(|p| Err(format!("sled cannot read it ({})", super::panic_text(&p))))
    }

    /// Reads the whole store and checks it (see the module comment). Read errors are
    /// problems too.
    pub fn check(&self) -> Report {
        let mut r = Report::default();
        let (next_group, next_change) = {
            let w = crate::sync::lock(&self.writer);
            (w.next_group, w.next_change)
        };
        let (groups, per_account) = self.check_groups(next_group, &mut r);
        self.check_names(&groups, &mut r);
        self.check_devices(&groups, &mut r);
        self.check_counts(&per_account, &mut r);
        self.check_changes(next_change, &mut r);
        self.check_users(&mut r);
        r
    }

    /// Every group record: its key, its number below `next_group`, its pieces, that it
    /// parses and keeps the rules (`check_group`). Returns what the index checks need
    /// of each group that parses, and the groups per account.
    fn check_groups(&self, next_group: u64, r: &mut Report) -> (Found, HashMap<String, u64>) {
        let mut groups: Found = BTreeMap::new();
        let mut per_account: HashMap<String, u64> = HashMap::new();
        let mut named_pieces: HashMap<(Vec<u8>, u64), u32> = HashMap::new();
        for item in self.groups.iter() {
            let (k, raw) = match item {
                Ok(kv) => kv,
                Err(e) => {
                    r.problem(format!("reading the groups: {e}"));
                    break;
                }
            };
            r.groups += 1;
            let (Some(account), Some(n)) = (account_of(&k), keys::trailing_u64(&k)) else {
                r.problem(format!(
                    "a group key that is not account + number: {:?}",
                    &k[..]
                ));
                continue;
            };
            let id = GroupId(n);
            if n == 0 || (n >= next_group && !GroupId(n).is_office()) {
                r.problem(format!(
                    "{account}/{id}: not below the next group number {next_group}"
                ));
            }
            if value::is_split(&raw) {
                named_pieces.insert((account.as_bytes().to_vec(), n), value::piece_count(&raw));
            }
            let view = match self.view(&account, id, raw, Seen::Durable) {
                Ok(Some(v)) => v,
                Ok(None) => continue,
                Err(e) => {
                    r.problem(format!("{account}/{id}: does not parse ({})", e.chain()));
                    continue;
                }
            };
            let Some(doc) = self.check_group(&account, &view, r) else {
                continue;
            };
            *per_account.entry(account.clone()).or_default() += 1;
            groups.insert(
                (account, n),
                (name_key(&doc.name), doc.devices.into_iter().collect()),
            );
        }
        if let Err(e) = self
            .piece_counts()
            .and_then(|found| pieces::compare_counts(found, &named_pieces))
        {
            r.problem(e);
        }
        (groups, per_account)
    }

    /// One group's document, parsed and held to the rules; None when it does not parse.
    fn check_group(&self, account: &str, view: &GroupView, r: &mut Report) -> Option<GroupDoc> {
        let id = view.id;
        let doc = match view.doc() {
            Ok(d) => d,
            Err(e) => {
                r.problem(format!(
                    "{account}/{id}: its document does not parse ({})",
                    e.chain()
                ));
                return None;
            }
        };
        // Names written before the current name rules are kept as they were (see
        // names.rs), so a name is held to the rules every version enforced; every
        // other field to the current ones.
        let body = serde_json::json!({"name": "placeholder", "description": doc.description, "devices": doc.devices});
        let rules = crate::model::Rules {
            max_devices: self.max_devices,
        };
        match crate::model::validate_doc(&body, rules) {
            Ok(valid) if valid.devices == doc.devices => {}
            Ok(_) => r.problem(format!("{account}/{id}: devices are not distinct")),
            Err(e) => r.problem(format!("{account}/{id}: {e}")),
        }
        let chars = doc.name.chars().count();
        if doc.name.trim() != doc.name
            || chars == 0
            || chars > crate::model::MAX_NAME_CHARS
            || doc.name.chars().any(char::is_control)
        {
            r.problem(format!(
                "{account}/{id}: the name {:?} breaks the name rules",
                doc.name
            ));
        }
        if view.revision() == 0 {
            r.problem(format!("{account}/{id}: revision 0"));
        }
        if view.last_modified() < view.creation() {
            r.problem(format!("{account}/{id}: lastModified before creation"));
        }
        Some(doc)
    }

    /// Each account's recorded group count is the number of its groups.
    fn check_counts(&self, per_account: &HashMap<String, u64>, r: &mut Report) {
        for (account, n) in per_account {
            let stored = self
                .meta
                .get(keys::group_count(account))
                .ok()
                .flatten()
                .and_then(|v| keys::read_u64(&v))
                .unwrap_or(0);
            if stored != *n {
                r.problem(format!(
                    "account {account}: the group count says {stored}, there are {n}"
                ));
            }
        }
    }

    /// Every user record parses.
    fn check_users(&self, r: &mut Report) {
        for item in self.users.iter() {
            match item {
                Ok((k, _)) => {
                    r.users += 1;
                    let name = String::from_utf8_lossy(&k).into_owned();
                    if let Err(e) = self.user(&name) {
                        r.problem(format!("user {name}: does not parse ({})", e.chain()));
                    }
                }
                Err(e) => {
                    r.problem(format!("reading the users: {e}"));
                    break;
                }
            }
        }
    }

    /// Every group's folded name is indexed, by it or (two names that fold the same in
    /// a store written before folding) by an older group of that name; every entry
    /// names an existing group of that name.
    fn check_names(&self, groups: &Found, r: &mut Report) {
        let mut index: HashMap<Vec<u8>, u64> = HashMap::new();
        for item in self.names.iter() {
            let Ok((k, v)) = item else {
                r.problem("reading the name index failed".into());
                return;
            };
            r.names += 1;
            let (Some(account), Some(n)) = (account_of(&k), keys::read_u64(&v)) else {
                r.problem(format!(
                    "a name index entry that does not parse: {:?}",
                    &k[..]
                ));
                continue;
            };
            match groups.get(&(account.clone(), n)) {
                Some((folded, _)) if keys::name(&account, folded) == k[..] => {}
                Some(_) => r.problem(format!(
                    "{account}/{}: the name index holds a name it does not have",
                    GroupId(n)
                )),
                None => r.problem(format!(
                    "{account}: the name index names {}, which does not exist",
                    GroupId(n)
                )),
            }
            index.insert(k.to_vec(), n);
        }
        for ((account, n), (folded, _)) in groups {
            match index.get(&keys::name(account, folded)) {
                Some(holder) if holder <= n => {}
                _ => r.problem(format!(
                    "{account}/{}: its name is not in the name index",
                    GroupId(*n)
                )),
            }
        }
    }

    /// The device index holds exactly one entry per (group, device).
    fn check_devices(&self, groups: &Found, r: &mut Report) {
        let mut seen: HashSet<(String, String, u64)> = HashSet::new();
        for item in self.devices.iter() {
            let Ok((k, _)) = item else {
                r.problem("reading the device index failed".into());
                return;
            };
            r.device_entries += 1;
            let parsed = account_of(&k).and_then(|account| {
                let rest = &k[account.len() + 1..];
                let sep = rest.iter().position(|b| *b == 0)?;
                let device = String::from_utf8(rest[..sep].to_vec()).ok()?;
                Some((account, device, keys::trailing_u64(&k)?))
            });
            let Some((account, device, n)) = parsed else {
                r.problem(format!(
                    "a device index entry that does not parse: {:?}",
                    &k[..]
                ));
                continue;
            };
            match groups.get(&(account.clone(), n)) {
                Some((_, devices)) if devices.contains(&device) => {}
                _ => r.problem(format!(
                    "{account}: the device index puts {device:?} in {}, which does not hold it",
                    GroupId(n)
                )),
            }
            seen.insert((account, device, n));
        }
        for ((account, n), (_, devices)) in groups {
            for d in devices {
                if !seen.contains(&(account.clone(), d.clone(), *n)) {
                    r.problem(format!(
                        "{account}/{}: device {d:?} is not in the device index",
                        GroupId(*n)
                    ));
                }
            }
        }
    }

    /// Every entry parses, carries the sequence it is stored under, lies below the next
    /// change sequence, and is one of the three operations.
    /// The feed-order index and the change records (`history.rs`): every index entry
    /// names a record that decodes, under a sequence below the next one; every record
    /// has its index entry; and every account's entries rebuild (the same walk the
    /// feed makes).
    fn check_changes(&self, next_change: u64, r: &mut Report) {
        let mut indexed: HashSet<(String, u64, u64)> = HashSet::new();
        let mut per_account: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
        for item in self.changes.iter() {
            let Ok((k, v)) = item else {
                r.problem("reading the change feed failed".into());
                return;
            };
            r.changes += 1;
            let (Some(account), Some(seq), Some(n)) =
                (account_of(&k), keys::trailing_u64(&k), keys::read_u64(&v))
            else {
                r.problem(format!("a change key that does not parse: {:?}", &k[..]));
                continue;
            };
            if seq == 0 || seq >= next_change {
                r.problem(format!(
                    "{account}: change {seq} is not below the next change sequence {next_change}"
                ));
            }
            match self.history.get(super::keys::record(&account, n, seq)) {
                Ok(Some(raw)) => {
                    if let Err(e) = super::history::Record::decode(&raw) {
                        r.problem(format!("{account}: change {seq} does not parse ({e})"));
                    }
                }
                Ok(None) => r.problem(format!(
                    "{account}: change {seq} of {} has no record",
                    GroupId(n)
                )),
                Err(e) => r.problem(format!("{account}: change {seq} cannot be read ({e})")),
            }
            indexed.insert((account.clone(), n, seq));
            per_account.entry(account).or_default().push((seq, n));
        }
        if self.check_records_indexed(&indexed, r) {
            self.check_rebuild(per_account, r);
        }
    }

    /// Every change record is in the feed (`indexed`: account, group number, seq).
    /// False when the records cannot be read.
    fn check_records_indexed(&self, indexed: &HashSet<(String, u64, u64)>, r: &mut Report) -> bool {
        for item in self.history.iter() {
            let Ok((k, _)) = item else {
                r.problem("reading the change records failed".into());
                return false;
            };
            let seq = keys::trailing_u64(&k);
            let n = k
                .len()
                .checked_sub(8)
                .and_then(|end| keys::trailing_u64(&k[..end]));
            let account = account_of(&k);
            match (account, n, seq) {
                (Some(account), Some(n), Some(seq)) => {
                    if !indexed.contains(&(account.clone(), n, seq)) {
                        r.problem(format!(
                            "{account}: the record of change {seq} ({}) is not in the feed",
                            GroupId(n)
                        ));
                    }
                }
                _ => r.problem(format!(
                    "a change record key that does not parse: {:?}",
                    &k[..]
                )),
            }
        }
        true
    }

    /// Every account's feed entries rebuild from their records (`history.rs`).
    fn check_rebuild(&self, per_account: BTreeMap<String, Vec<(u64, u64)>>, r: &mut Report) {
        for (account, items) in per_account {
            for chunk in items.chunks(4096) {
                let mut reader = super::history::EntryReader::new(self, &account, chunk.to_vec());
                while let Some(entry) = reader.next_entry() {
                    if let Err(e) = entry {
                        r.problem(format!(
                            "{account}: the feed does not rebuild ({})",
                            e.chain()
                        ));
                        break;
                    }
                }
            }
        }
    }
}
