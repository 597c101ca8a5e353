//! The store's side of backup and restore: every durable fact as a typed [`Record`]
//! (export), and a store rebuilt from such records (import). The records are the backup
//! format's body lines (backup.rs owns the file: header, end line, temp file, fsync), so
//! they are plain, versioned data independent of the sled layout — which is what makes
//! backup + restore the migration path across store format versions.
//!
//! Export takes the writer mutex for its whole duration: every group and user write
//! waits (off the async workers, see `Store::lock_writer`), reads go on. It flushes
//! first and reads what readers see, so a backup never holds a change that was not
//! made durable. Tokens are
//! not exported (they are short-lived; after a restore clients log in again with their
//! unchanged API keys). Name and device indexes and per-account counts are rebuilt from
//! the groups on import, so they cannot disagree with them.

mod bulk;

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::history::{self, ChangeOp, EntryReader};
use super::idempotency::{IdempotencyRecord, Tally};
use super::pieces::{self, Seen};
use super::users::{Role, UsageRecord, UserRecord};
use super::value::{Encoded, PublicGroup};
use super::{keys, space, Kind, Store, META_NEXT_CHANGE, META_NEXT_GROUP, META_PURGED_THROUGH};
use crate::model::{
    name_key, valid_idempotency_key, validate_doc, GroupDoc, GroupId, Rules, MAX_NAME_CHARS,
};
use crate::names::valid_user_name;
use crate::time::parse_rfc3339_ms;
use std::sync::atomic::Ordering;

/// One backup body line. Times are milliseconds since the epoch unless named `time`
/// (the change feed keeps the exact text it served).
///
/// The user, usage and idempotency lines hold the store's own record types
/// ([`UserRecord`], [`UsageRecord`], [`IdempotencyRecord`]), so a field added there is
/// one the compiler makes this file handle. The line's field names are the backup
/// format's (camelCase); the store keeps users and usage in sled under snake_case
/// names, so where the two differ the line names come from a serde `remote`
/// definition below (`UserLine`, `UsageFields`) that the compiler checks field by
/// field against the store's type: neither existing stores nor existing backups change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum Record {
    /// The ID sequences: the next group number and the next change-feed sequence.
    #[serde(rename_all = "camelCase")]
    Sequences { next_group: u64, next_change: u64 },
    /// A user with its argon2id key hash (never the key).
    User(#[serde(with = "UserLine")] UserRecord),
    /// A user's persisted usage counters.
    Usage(UsageLine),
    /// A group with its server-managed fields.
    Group(GroupLine),
    /// A change-feed entry as the API serves it.
    Change(ChangeLine),
    /// A remembered create (`Idempotency-Key`).
    Idempotency(IdempotencyLine),
}

/// The backup's names for the fields of a [`UserRecord`] (a serde `remote`
/// definition: the compiler holds it to the store's type field by field).
#[derive(Serialize, Deserialize)]
#[serde(remote = "UserRecord", rename_all = "camelCase", deny_unknown_fields)]
struct UserLine {
    name: String,
    account: String,
    role: Role,
    daily_limit: Option<u64>,
    disabled: bool,
    key_hash: String,
    key_generation: u64,
    key_created: i64,
    created: i64,
}

/// The backup's names for the fields of a [`UsageRecord`] (`remote`, as `UserLine`).
#[derive(Serialize, Deserialize)]
#[serde(remote = "UsageRecord", rename_all = "camelCase")]
struct UsageFields {
    total: u64,
    day: i64,
    daily: u64,
    last_used: i64,
}

/// A user's usage counters: the user's name beside the store's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageLine {
    pub user: String,
    #[serde(flatten, with = "UsageFields")]
    pub usage: UsageRecord,
}

/// A group: its account, number and server-managed fields beside its document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GroupLine {
    pub account: String,
    pub id: u64,
    pub revision: u64,
    pub creation: i64,
    pub last_modified: i64,
    #[serde(flatten)]
    pub doc: GroupDoc,
}

/// A change-feed entry as the API serves it, with its account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChangeLine {
    pub account: String,
    pub seq: u64,
    pub time: String,
    pub op: String,
    pub id: u64,
    /// The group's revision after the change (absent for deletions and for entries
    /// written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    pub user_name: String,
    pub group: Option<PublicGroup>,
}

/// A remembered create: the user and key it is remembered under beside the store's
/// record (whose field names are the backup's too).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdempotencyLine {
    pub user: String,
    pub key: String,
    #[serde(flatten)]
    pub record: IdempotencyRecord,
}

/// How many records of each kind went out or came in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub groups: u64,
    pub users: u64,
    pub changes: u64,
    pub idempotency: u64,
    pub usage: u64,
    /// Every record, sequences included.
    pub records: u64,
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} groups, {} users, {} change-feed entries, {} idempotency records, {} usage counters",
            self.groups, self.users, self.changes, self.idempotency, self.usage
        )
    }
}

/// Why an export stopped. The messages are what `backup failed: …` says.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The store could not be read: what was being read, and the store's account.
    #[error("reading {what}: {detail}")]
    Read { what: &'static str, detail: String },
    /// The store holds a key or value it never writes.
    #[error("{0}")]
    Corrupt(String),
    /// The backup's destination refused a line.
    #[error("writing the backup: {0}")]
    Output(#[source] std::io::Error),
}

/// Why an import stopped. The messages are what `restore failed: …` and
/// `restore --check` say after the file and line.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("the store is not empty; restore only into an empty one")]
    NotEmpty,
    /// A record, or the backup as a whole, breaks the format's rules: what and where.
    #[error("{0}")]
    Invalid(String),
    /// The store refused a write, or the flush at the end.
    #[error("writing the store: {0}")]
    Write(String),
    /// A record could not be encoded for the store.
    #[error("{0}")]
    Encode(String),
    /// The flush that makes the restored store durable failed.
    #[error("{}", .0.chain())]
    Flush(#[source] super::Error),
}

/// A record the import refuses, and why.
fn invalid(why: impl Into<String>) -> ImportError {
    ImportError::Invalid(why.into())
}

/// Change entries rebuilt per step of an export.
const EXPORT_CHUNK: usize = 4096;

/// A change-feed entry as served (see `changes::change_entry`).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredChange {
    seq: u64,
    time: String,
    op: String,
    id: String,
    #[serde(default)]
    revision: Option<u64>,
    user_name: String,
    group: Option<PublicGroup>,
}

/// Splits `prefix 0x00 rest` keys.
fn split_key(k: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = k.iter().position(|b| *b == 0)?;
    Some((&k[..at], &k[at + 1..]))
}

fn text(b: &[u8], what: &str) -> Result<String, ExportError> {
    String::from_utf8(b.to_vec())
        .map_err(|_| ExportError::Corrupt(format!("corrupt {what} key: not UTF-8")))
}

/// Account of an `account 0x00 u64` key.
fn account_of(k: &[u8], what: &str) -> Result<String, ExportError> {
    let end = k
        .len()
        .checked_sub(9)
        .filter(|at| k[*at] == 0)
        .ok_or_else(|| ExportError::Corrupt(format!("corrupt {what} key")))?;
    text(&k[..end], what)
}

/// A sled read that failed during an export.
fn read_failed(e: sled::Error) -> ExportError {
    ExportError::Read {
        what: "the store",
        detail: e.to_string(),
    }
}

/// A store read that failed during an export: `what` was being read.
fn read(what: &'static str) -> impl Fn(super::Error) -> ExportError {
    move |e| ExportError::Read {
        what,
        detail: e.chain(),
    }
}

/// A corrupt key or value of an export.
fn corrupt(what: &str) -> ExportError {
    ExportError::Corrupt(what.to_string())
}

/// One export in progress: the records go to `out` in the backup's order (sequences,
/// users, usage, groups, changes, idempotency records), counted as they go.
struct Export<'s, 'o> {
    store: &'s Store,
    out: &'o mut dyn FnMut(&Record) -> std::io::Result<()>,
    counts: Counts,
}

impl Export<'_, '_> {
    fn emit(&mut self, rec: Record) -> Result<(), ExportError> {
        (self.out)(&rec).map_err(ExportError::Output)?;
        self.counts.records += 1;
        Ok(())
    }

    /// The users; returns each user's account. Idempotency records are scoped by
    /// account and user, and only those of a user's current account are exported (a
    /// removed user's records are a retry cache that has lost its owner).
    fn users(&mut self) -> Result<HashMap<String, String>, ExportError> {
        let mut accounts: HashMap<String, String> = HashMap::new();
        for user in self.store.users().map_err(read("users"))? {
            accounts.insert(user.name.clone(), user.account.clone());
            self.emit(Record::User(user))?;
            self.counts.users += 1;
        }
        Ok(accounts)
    }

    fn usage(&mut self) -> Result<(), ExportError> {
        for (user, usage) in self.store.usage_records().map_err(read("usage"))? {
            self.emit(Record::Usage(UsageLine { user, usage }))?;
            self.counts.usage += 1;
        }
        Ok(())
    }

    fn groups(&mut self) -> Result<(), ExportError> {
        let store = self.store;
        for item in store.groups.iter() {
            let (k, raw) = item.map_err(read_failed)?;
            let account = account_of(&k, "group")?;
            let id = keys::trailing_u64(&k).ok_or_else(|| corrupt("corrupt group key"))?;
            let Some(view) = store
                .view(&account, GroupId(id), raw, Seen::Durable)
                .map_err(|e| ExportError::Corrupt(e.chain()))?
            else {
                continue;
            };
            let doc = view.doc().map_err(|e| ExportError::Corrupt(e.chain()))?;
            self.emit(Record::Group(GroupLine {
                account,
                id,
                revision: view.revision(),
                creation: view.creation(),
                last_modified: view.last_modified(),
                doc,
            }))?;
            self.counts.groups += 1;
        }
        Ok(())
    }

    /// Change entries, rebuilt from their records (`history.rs`), an account at a time
    /// in chunks of `EXPORT_CHUNK`, as the API serves them.
    fn changes(&mut self) -> Result<(), ExportError> {
        let store = self.store;
        let mut accounts_with_changes: Vec<Vec<u8>> = Vec::new();
        store
            .each_account(&store.changes, |prefix| {
                accounts_with_changes.push(prefix.to_vec());
                Ok(())
            })
            .map_err(read("the change feed"))?;
        for prefix in accounts_with_changes {
            let account = text(&prefix[..prefix.len() - 1], "change-feed")?;
            let mut from = prefix.clone();
            loop {
                let items = self.change_items(&account, &prefix, &from)?;
                let Some(&(last, _)) = items.last() else {
                    break;
                };
                let full = items.len() == EXPORT_CHUNK;
                self.change_entries(&account, items)?;
                if !full {
                    break;
                }
                from = keys::change(&account, last + 1);
            }
        }
        Ok(())
    }

    /// Up to `EXPORT_CHUNK` (seq, group number) pairs of the account's feed from `from`.
    fn change_items(
        &self,
        account: &str,
        prefix: &[u8],
        from: &[u8],
    ) -> Result<Vec<(u64, u64)>, ExportError> {
        let mut items = Vec::new();
        for item in self.store.changes.range(from..) {
            let (k, v) = item.map_err(read_failed)?;
            if !k.starts_with(prefix) {
                break;
            }
            let (Some(seq), Some(n)) = (keys::trailing_u64(&k), keys::read_u64(&v)) else {
                return Err(ExportError::Corrupt(format!(
                    "corrupt change-feed index entry in {account}"
                )));
            };
            items.push((seq, n));
            if items.len() == EXPORT_CHUNK {
                break;
            }
        }
        Ok(items)
    }

    /// The feed entries of `items`, rebuilt and emitted.
    fn change_entries(&mut self, account: &str, items: Vec<(u64, u64)>) -> Result<(), ExportError> {
        let mut reader = EntryReader::new(self.store, account, items);
        while let Some(entry) = reader.next_entry() {
            let entry = entry.map_err(read("the change feed"))?;
            let c: StoredChange = serde_json::from_slice(&entry.json).map_err(|e| {
                ExportError::Corrupt(format!("corrupt change-feed entry in {account}: {e}"))
            })?;
            let id = GroupId::parse(&c.id).ok_or_else(|| {
                ExportError::Corrupt(format!(
                    "corrupt change-feed entry in {account}: id {:?}",
                    c.id
                ))
            })?;
            self.emit(Record::Change(ChangeLine {
                account: account.to_string(),
                seq: c.seq,
                time: c.time,
                op: c.op,
                id: id.0,
                revision: c.revision,
                user_name: c.user_name,
                group: c.group,
            }))?;
            self.counts.changes += 1;
        }
        Ok(())
    }

    /// The idempotency records of users in their current account (`accounts`).
    fn idempotency(&mut self, accounts: &HashMap<String, String>) -> Result<(), ExportError> {
        let store = self.store;
        for item in store.idempotency.iter() {
            let (k, v) = item.map_err(read_failed)?;
            let bad_key = || corrupt("corrupt idempotency key");
            let (account, rest) = split_key(&k).ok_or_else(bad_key)?;
            let (user, key) = split_key(rest).ok_or_else(bad_key)?;
            let (account, user) = (text(account, "idempotency")?, text(user, "idempotency")?);
            if accounts.get(&user) != Some(&account) {
                continue;
            }
            let record = IdempotencyRecord::decode(&v)
                .ok_or_else(|| corrupt("corrupt idempotency record"))?;
            self.emit(Record::Idempotency(IdempotencyLine {
                user,
                key: text(key, "idempotency")?,
                record,
            }))?;
            self.counts.idempotency += 1;
        }
        Ok(())
    }
}

impl Store {
    /// Writes every record to `out` as one consistent snapshot of what is durable.
    /// `out` errors stop the export and are returned as they are.
    pub fn export(
        &self,
        out: &mut dyn FnMut(&Record) -> std::io::Result<()>,
    ) -> Result<Counts, ExportError> {
        let w = self.lock_writer();
        self.long_hold
            .store(true, std::sync::atomic::Ordering::Relaxed);
        // No write can be applied while this mutex is held, so after this flush nothing
        // is pending and the export reads one consistent, durable state. Should the
        // flush fail (or an earlier one have failed), it still does: the overlay hides
        // exactly what is not durable and no longer changes (`space.rs`), so a disk
        // that refuses writes can still be backed up elsewhere.
        if let Err(e) = self.flush_blocking() {
            tracing::warn!(error = %e, "backup: the store could not flush; exporting what is durable");
        }
        let counts = self.export_locked(w.next_group, w.next_change, out);
        self.long_hold
            .store(false, std::sync::atomic::Ordering::Relaxed);
        drop(w);
        let counts = counts?;
        Ok(counts)
    }

    fn export_locked(
        &self,
        next_group: u64,
        next_change: u64,
        out: &mut dyn FnMut(&Record) -> std::io::Result<()>,
    ) -> Result<Counts, ExportError> {
        let mut ex = Export {
            store: self,
            out,
            counts: Counts::default(),
        };
        ex.emit(Record::Sequences {
            next_group,
            next_change,
        })?;
        let accounts = ex.users()?;
        ex.usage()?;
        ex.groups()?;
        ex.changes()?;
        ex.idempotency(&accounts)?;
        Ok(ex.counts)
    }

    /// Starts an import into this store, which must hold no group and no user.
    pub fn importer(&self) -> Result<Importer<'_>, ImportError> {
        if !self.groups.is_empty() || !self.users.is_empty() {
            return Err(ImportError::NotEmpty);
        }
        Ok(Importer::new(Some(self), self.max_devices))
    }
}

impl Importer<'static> {
    /// An importer that runs every check on the records and stores nothing
    /// (`restore --check`): the same code path as a restore, minus the writes.
    pub fn check_only(max_devices: usize) -> Importer<'static> {
        Importer::new(None, max_devices)
    }
}

impl<'a> Importer<'a> {
    fn new(store: Option<&'a Store>, max_devices: usize) -> Importer<'a> {
        Importer {
            bulk: store.map(|s| bulk::Bulk::new(&s.db, &s.tree)),
            store,
            max_devices,
            feed_bytes: 0,
            sequences: None,
            group_ids: HashSet::new(),
            names: HashMap::new(),
            legacy_names: HashSet::new(),
            users: HashMap::new(),
            usage: HashSet::new(),
            change_seqs: HashSet::new(),
            idempotency: HashSet::new(),
            idempotency_counts: HashMap::new(),
            per_account: HashMap::new(),
            max_group: 0,
            max_change: 0,
            counts: Counts::default(),
        }
    }
}

/// Rebuilds a store from records, checking each as it comes; nothing is durable until
/// [`Importer::finish`]. Restore removes the store when any step fails.
pub struct Importer<'a> {
    /// `None`: check only, write nothing.
    store: Option<&'a Store>,
    /// The writes, from threads of their own (`bulk.rs`); `None` with `store`.
    bulk: Option<bulk::Bulk>,
    /// Bytes of the change feed put so far (`META_FEED_BYTES`).
    feed_bytes: u64,
    sequences: Option<(u64, u64)>,
    group_ids: HashSet<u64>,
    /// `limits.max_devices_per_group`: what each group is held to, as a live write is.
    max_devices: usize,
    /// Name index key → the group that holds it.
    names: HashMap<Vec<u8>, u64>,
    /// Names as earlier versions compared them (`to_lowercase`): equal there means a
    /// damaged or hand-made backup, not an old one.
    legacy_names: HashSet<Vec<u8>>,
    /// userName → account.
    users: HashMap<String, String>,
    usage: HashSet<String>,
    change_seqs: HashSet<u64>,
    idempotency: HashSet<Vec<u8>>,
    /// Records and their bytes per idempotency scope (account, user), for `meta`.
    idempotency_counts: HashMap<Vec<u8>, Tally>,
    per_account: HashMap<String, u64>,
    max_group: u64,
    max_change: u64,
    counts: Counts,
}

/// The time text of a change-feed entry is copied into JSON as it is, so it must be
/// the server's own `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn valid_time(t: &str) -> bool {
    t.len() == 24
        && t.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            10 => b == b'T',
            13 | 16 => b == b':',
            19 => b == b'.',
            23 => b == b'Z',
            _ => b.is_ascii_digit(),
        })
}

/// Checks a group document the way the API would have, without the configurable
/// device limit (a restore must not drop data a server once accepted).
/// A group document of a backup, checked against §4. Names are held to the rules every
/// version enforced (trimmed, 1–128 characters, no control characters) rather than to
/// this version's (NFC, no bidi controls, something visible): `backup` and `restore`
/// are the migration path between store versions, so a store that was valid when it
/// was written must restore. A name the current rules would refuse is kept as written
/// and logged; the next PUT or PATCH of that group has to choose a valid one.
fn checked_doc(
    name: &str,
    description: &Option<String>,
    devices: &[String],
) -> Result<GroupDoc, ImportError> {
    let value =
        serde_json::json!({"name": "placeholder", "description": description, "devices": devices});
    let mut doc = validate_doc(
        &value,
        Rules {
            max_devices: usize::MAX,
        },
    )
    .map_err(|e| invalid(e.0))?;
    let len = name.chars().count();
    if name.trim() != name || len == 0 || len > MAX_NAME_CHARS || name.chars().any(char::is_control)
    {
        return Err(ImportError::Invalid(format!(
            "name {name:?} is not trimmed, not 1 to {MAX_NAME_CHARS} characters, or holds a control character"
        )));
    }
    if crate::names::check(name).is_err() || crate::names::normalize(name) != name {
        tracing::warn!(
            "restore: the group name {name:?} breaks this version's name rules (NFC, no bidirectional controls, something visible); kept as written"
        );
    }
    doc.name = name.to_string();
    if doc.devices != devices {
        return Err(invalid(
            "group document is not in normalised form (name trimmed, devices distinct)",
        ));
    }
    Ok(doc)
}

/// The checks of a group record that need nothing else from the backup: its account
/// name, its ID and revision, and its times.
fn check_group_fields(
    account: &str,
    gid: GroupId,
    revision: u64,
    creation: i64,
    last_modified: i64,
) -> Result<(), ImportError> {
    if !valid_user_name(account) {
        return Err(ImportError::Invalid(format!(
            "group {gid}: invalid account name {account:?}"
        )));
    }
    if gid.0 == 0 || revision == 0 {
        return Err(ImportError::Invalid(format!(
            "group {gid}: id and revision start at 1"
        )));
    }
    if last_modified < creation {
        return Err(ImportError::Invalid(format!(
            "group {gid}: lastModified is before creation"
        )));
    }
    Ok(())
}

impl ChangeLine {
    /// The checks that need nothing else from the backup.
    fn check(&self) -> Result<(), ImportError> {
        let (seq, time, op) = (self.seq, &self.time, &self.op);
        if !valid_user_name(&self.account) || seq == 0 || self.id == 0 || self.revision == Some(0) {
            return Err(ImportError::Invalid(format!(
                "change {seq}: invalid account, seq or id"
            )));
        }
        if !valid_time(time) {
            return Err(ImportError::Invalid(format!(
                "change {seq}: time {time:?} is not YYYY-MM-DDTHH:MM:SS.mmmZ"
            )));
        }
        if !matches!(op.as_str(), "created" | "updated" | "deleted") {
            return Err(ImportError::Invalid(format!(
                "change {seq}: unknown op {op:?}"
            )));
        }
        if (op == "deleted") != self.group.is_none() {
            return Err(ImportError::Invalid(format!(
                "change {seq}: a deletion has no group, other changes have one"
            )));
        }
        Ok(())
    }

    /// The group's state after the change (None for a deletion), with its creation
    /// time. Restored changes are stored with their full state (no delta: the state
    /// before each may not be in the backup); the feed rebuilds the same entries from
    /// them (`history.rs`), so the group's times must be the ones a live write gives:
    /// lastModified is the change's time (`ms`).
    fn state(&self, ms: i64) -> Result<Option<(GroupDoc, i64)>, ImportError> {
        let Some(g) = &self.group else {
            return Ok(None);
        };
        let (seq, id) = (self.seq, self.id);
        let creation = parse_rfc3339_ms(&g.creation);
        if GroupId::parse(&g.id) != Some(GroupId(id))
            || g.last_modified != self.time
            || !matches!(creation, Some(c) if c <= ms)
        {
            return Err(ImportError::Invalid(format!(
                "change {seq}: its group is not grp-{id} as of the change (id, lastModified = the change's time, creation not after it)"
            )));
        }
        let doc = checked_doc(&g.name, &g.description, &g.devices)
            .map_err(|e| invalid(format!("change {seq}: {e}")))?;
        Ok(Some((doc, creation.unwrap_or(ms))))
    }
}

impl Importer<'_> {
    fn put(&mut self, tree: Kind, k: Vec<u8>, v: Vec<u8>) -> Result<(), ImportError> {
        let Some(bulk) = self.bulk.as_mut() else {
            return Ok(());
        };
        if matches!(tree, Kind::Changes | Kind::History) {
            self.feed_bytes += (k.len() + 1 + v.len()) as u64;
        }
        bulk.put(tree, space::full_key(tree, &k), v)
    }

    /// Waits until every key put so far is in sled.
    fn apply(&mut self) -> Result<(), ImportError> {
        match self.bulk.as_mut() {
            Some(bulk) => bulk.finish(),
            None => Ok(()),
        }
    }

    /// Checks and stores one record: each kind has its own step.
    pub fn add(&mut self, rec: Record) -> Result<(), ImportError> {
        self.counts.records += 1;
        match rec {
            Record::Sequences {
                next_group,
                next_change,
            } => self.add_sequences(next_group, next_change),
            Record::User(user) => self.add_user(user),
            Record::Usage(UsageLine { user, usage }) => self.add_usage(user, usage),
            Record::Group(g) => self.add_group(g),
            Record::Change(c) => self.add_change(c),
            Record::Idempotency(IdempotencyLine { user, key, record }) => {
                self.add_idempotency(user, key, record)
            }
        }
    }

    fn add_sequences(&mut self, next_group: u64, next_change: u64) -> Result<(), ImportError> {
        if self.sequences.is_some() {
            return Err(invalid("a second sequences record"));
        }
        if next_group == 0 || next_change == 0 {
            return Err(invalid("sequences start at 1"));
        }
        self.sequences = Some((next_group, next_change));
        Ok(())
    }

    fn add_user(&mut self, user: UserRecord) -> Result<(), ImportError> {
        let (name, account) = (&user.name, &user.account);
        if !valid_user_name(name) || !valid_user_name(account) {
            return Err(ImportError::Invalid(format!(
                "invalid user or account name {name:?}/{account:?}"
            )));
        }
        // The cost parameters come from the file: bounded, or one login for the
        // name could take seconds and gigabytes (`key_hash::check_key_hash`).
        if let Err(why) = crate::key_hash::check_key_hash(&user.key_hash) {
            return Err(ImportError::Invalid(format!(
                "user {name}: keyHash {why}. Nothing was restored; remove the user's line (and its usage line) from the backup, restore, and `user add` it again"
            )));
        }
        if self.users.insert(name.clone(), account.clone()).is_some() {
            return Err(ImportError::Invalid(format!("user {name} appears twice")));
        }
        let v = serde_json::to_vec(&user).map_err(|e| ImportError::Encode(e.to_string()))?;
        self.put(Kind::Users, user.name.into_bytes(), v)?;
        self.counts.users += 1;
        Ok(())
    }

    fn add_usage(&mut self, user: String, rec: UsageRecord) -> Result<(), ImportError> {
        if !self.users.contains_key(&user) {
            return Err(ImportError::Invalid(format!(
                "usage counters of {user:?}, who is not a user (users come first)"
            )));
        }
        if !self.usage.insert(user.clone()) {
            return Err(ImportError::Invalid(format!(
                "usage counters of {user} appear twice"
            )));
        }
        let v = serde_json::to_vec(&rec).map_err(|e| ImportError::Encode(e.to_string()))?;
        self.put(Kind::Usage, user.into_bytes(), v)?;
        self.counts.usage += 1;
        Ok(())
    }

    /// Checks a group's own fields (`check_group_fields`) and document (`checked_doc`),
    /// then against the rest of the backup: the device limit, its ID and its name
    /// unique; stores it with its indexes.
    fn add_group(&mut self, g: GroupLine) -> Result<(), ImportError> {
        let (account, id) = (g.account, g.id);
        let gid = GroupId(id);
        check_group_fields(&account, gid, g.revision, g.creation, g.last_modified)?;
        let doc = checked_doc(&g.doc.name, &g.doc.description, &g.doc.devices)
            .map_err(|e| invalid(format!("group {gid}: {e}")))?;
        let enc = Encoded::new(gid, &doc, g.revision, g.creation, g.last_modified);
        if doc.devices.len() > self.max_devices {
            return Err(ImportError::Invalid(format!(
                "group {gid}: {} devices, more than limits.max_devices_per_group ({}) allows",
                doc.devices.len(),
                self.max_devices
            )));
        }
        if !self.group_ids.insert(id) {
            return Err(ImportError::Invalid(format!("group {gid} appears twice")));
        }
        let name_k = self.take_name(&account, gid, &doc.name)?;
        if !gid.is_office() {
            // Office groups are numbered centrally, above every local number.
            self.max_group = self.max_group.max(id);
        }
        let (raw, pieces) = pieces::fresh(&enc);
        self.put(Kind::Groups, keys::group(&account, id), raw)?;
        for (num, piece) in pieces {
            self.put(Kind::Pieces, keys::piece(&account, id, num), piece)?;
        }
        if let Some(name_k) = name_k {
            self.put(Kind::Names, name_k, id.to_be_bytes().to_vec())?;
        }
        for d in &doc.devices {
            self.put(Kind::Devices, keys::device(&account, d, id), Vec::new())?;
        }
        *self.per_account.entry(account).or_default() += 1;
        self.counts.groups += 1;
        Ok(())
    }

    /// The name index key group `gid` holds, or None when an earlier group holds it.
    /// Names equal as earlier versions compared them (`to_lowercase`) are refused: a
    /// damaged or hand-made backup. A backup of a store made before names were
    /// case-folded may hold two names that now fold the same: both are kept, as the
    /// live store keeps them (`Store::reindex_names`), and the older group holds the
    /// name.
    fn take_name(
        &mut self,
        account: &str,
        gid: GroupId,
        name: &str,
    ) -> Result<Option<Vec<u8>>, ImportError> {
        if !self
            .legacy_names
            .insert(keys::name(account, &name.to_lowercase()))
        {
            return Err(ImportError::Invalid(format!(
                "group {gid}: another group of account {account} has the name {name:?}"
            )));
        }
        let name_k = keys::name(account, &name_key(name));
        match self.names.get(&name_k) {
            Some(first) => {
                tracing::warn!(
                    account = %account,
                    "restore: groups grp-{first} and {gid} have names that are now the same name (Unicode case folding); both are kept, and grp-{first} holds the name"
                );
                Ok(None)
            }
            None => {
                self.names.insert(name_k.clone(), gid.0);
                Ok(Some(name_k))
            }
        }
    }

    fn add_change(&mut self, c: ChangeLine) -> Result<(), ImportError> {
        let seq = c.seq;
        c.check()?;
        if !self.change_seqs.insert(seq) {
            return Err(ImportError::Invalid(format!("change {seq} appears twice")));
        }
        self.max_change = self.max_change.max(seq);
        let (Some(op), Some(ms)) = (ChangeOp::parse(&c.op), parse_rfc3339_ms(&c.time)) else {
            return Err(ImportError::Invalid(format!(
                "change {seq}: unknown op {:?} or time {:?}",
                c.op, c.time
            )));
        };
        let full = c.state(ms)?;
        let rec = history::Record {
            op,
            time: ms,
            revision: c.revision,
            user: c.user_name,
            delta: None,
            full,
        };
        self.put(
            Kind::Changes,
            keys::change(&c.account, seq),
            c.id.to_be_bytes().to_vec(),
        )?;
        self.put(
            Kind::History,
            keys::record(&c.account, c.id, seq),
            rec.encode(),
        )?;
        self.counts.changes += 1;
        Ok(())
    }

    fn add_idempotency(
        &mut self,
        user: String,
        key: String,
        rec: IdempotencyRecord,
    ) -> Result<(), ImportError> {
        if user.contains('\0') || !valid_idempotency_key(&key) || rec.id == 0 {
            return Err(invalid("idempotency record: invalid user, key or group"));
        }
        // Records belong to the user's account (the backup names only the user).
        let account = self.users.get(&user).cloned().ok_or_else(|| {
            ImportError::Invalid(format!(
                "idempotency record of {user:?}, who is not a user (users come first)"
            ))
        })?;
        let k = keys::idempotency(&account, &user, &key);
        if !self.idempotency.insert(k.clone()) {
            return Err(ImportError::Invalid(format!(
                "idempotency key {key:?} of {user} appears twice"
            )));
        }
        self.put(
            Kind::IdempotencyOrder,
            keys::idempotency_order(&account, &user, rec.id),
            key.as_bytes().to_vec(),
        )?;
        let v = rec
            .encode()
            .map_err(|e| ImportError::Encode(e.to_string()))?;
        let tally = self
            .idempotency_counts
            .entry(keys::idempotency_scope(&account, &user))
            .or_default();
        tally.count += 1;
        tally.bytes += super::idempotency::charged_len(&v) as u64;
        self.put(Kind::Idempotency, k, v)?;
        self.counts.idempotency += 1;
        Ok(())
    }

    /// Checks the sequences against what came in, writes the derived counts and the
    /// sequences, and makes everything durable.
    pub fn finish(mut self) -> Result<Counts, ImportError> {
        let (next_group, next_change) = self
            .sequences
            .ok_or_else(|| invalid("the backup has no sequences record"))?;
        if next_group <= self.max_group {
            return Err(ImportError::Invalid(format!(
                "the next group number {next_group} is not above the highest group grp-{}",
                self.max_group
            )));
        }
        if next_change <= self.max_change {
            return Err(ImportError::Invalid(format!(
                "the next change sequence {next_change} is not above the highest entry {}",
                self.max_change
            )));
        }
        let (purged_through, feed_bytes) = self.put_meta(next_group, next_change)?;
        self.apply()?;
        let Some(store) = self.store else {
            return Ok(self.counts);
        };
        // The in-memory sequences must match, should the store be used before reopening.
        {
            let mut w = store.lock_writer();
            w.next_group = next_group;
            w.next_change = next_change;
            w.feed_bytes = feed_bytes;
            store.engine.publish_seq(next_change - 1);
            store.purged_through.store(purged_through, Ordering::SeqCst);
        }
        store.flush_blocking().map_err(ImportError::Flush)?;
        Ok(self.counts)
    }

    /// Puts what `meta` holds beside the records: the counts derived from them, the
    /// sequences, `purged_through` and the feed's size; returns the last two.
    fn put_meta(&mut self, next_group: u64, next_change: u64) -> Result<(u64, u64), ImportError> {
        for (scope, tally) in std::mem::take(&mut self.idempotency_counts) {
            if let Some(v) = tally.encode() {
                self.put(Kind::Meta, keys::idempotency_count(&scope), v)?;
            }
        }
        let per_account = std::mem::take(&mut self.per_account);
        for (account, n) in per_account {
            self.put(
                Kind::Meta,
                keys::group_count(&account),
                n.to_be_bytes().to_vec(),
            )?;
        }
        self.put(
            Kind::Meta,
            META_NEXT_GROUP.to_vec(),
            next_group.to_be_bytes().to_vec(),
        )?;
        self.put(
            Kind::Meta,
            META_NEXT_CHANGE.to_vec(),
            next_change.to_be_bytes().to_vec(),
        )?;
        // The feed's history before the oldest entry the backup holds is gone: a cursor
        // below it is expired (`changes.rs`).
        let purged_through = self
            .change_seqs
            .iter()
            .min()
            .copied()
            .unwrap_or(next_change)
            .saturating_sub(1);
        self.put(
            Kind::Meta,
            META_PURGED_THROUGH.to_vec(),
            purged_through.to_be_bytes().to_vec(),
        )?;
        let feed_bytes = self.feed_bytes;
        self.put(
            Kind::Meta,
            super::META_FEED_BYTES.to_vec(),
            feed_bytes.to_be_bytes().to_vec(),
        )?;
        Ok((purged_through, feed_bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_text_is_checked() {
        assert!(valid_time("2026-11-26T10:01:42.123Z"));
        assert!(!valid_time("2026-11-26T10:01:42Z"));
        assert!(!valid_time("2026-11-26T10:01:42.123\""));
    }

    #[test]
    fn records_round_trip_as_json() {
        let r = Record::Sequences {
            next_group: 4,
            next_change: 9,
        };
        let line = serde_json::to_string(&r).unwrap();
        assert_eq!(line, r#"{"type":"sequences","nextGroup":4,"nextChange":9}"#);
        assert_eq!(serde_json::from_str::<Record>(&line).unwrap(), r);
        let bad = r#"{"type":"sequences","nextGroup":4,"nextChange":9,"extra":1}"#;
        assert!(serde_json::from_str::<Record>(bad).is_err());
    }

    /// One line of each kind exactly as the backup format has written it since
    /// version 1 (the records before they wrapped the store's types): each reads, and
    /// writes back to the same bytes; the same line with one more field is refused.
    #[test]
    fn every_kind_keeps_its_line() {
        let lines = [
            r#"{"type":"sequences","nextGroup":4,"nextChange":9}"#,
            r#"{"type":"user","name":"admin","account":"default","role":"write","dailyLimit":null,"disabled":false,"keyHash":"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA","keyGeneration":2,"keyCreated":1764151302123,"created":1764151302000}"#,
            r#"{"type":"user","name":"ro","account":"other","role":"read","dailyLimit":500,"disabled":true,"keyHash":"x","keyGeneration":1,"keyCreated":5,"created":4}"#,
            r#"{"type":"usage","user":"admin","total":12,"day":20418,"daily":3,"lastUsed":1764151302999}"#,
            r#"{"type":"group","account":"default","id":3,"revision":2,"creation":1764151302123,"lastModified":1764151303000,"name":"Trucks","description":null,"devices":["a","b"]}"#,
            r#"{"type":"group","account":"default","id":4,"revision":1,"creation":1,"lastModified":1,"name":"Vans","description":"north","devices":[]}"#,
            r#"{"type":"change","account":"default","seq":7,"time":"2026-11-26T10:01:42.123Z","op":"updated","id":3,"revision":2,"userName":"admin","group":{"id":"grp-3","name":"Trucks","description":null,"devices":["a","b"],"creation":"2026-11-26T10:01:42.000Z","lastModified":"2026-11-26T10:01:42.123Z"}}"#,
            r#"{"type":"change","account":"default","seq":8,"time":"2026-11-26T10:01:43.000Z","op":"deleted","id":5,"userName":"admin","group":null}"#,
            r#"{"type":"idempotency","user":"admin","key":"k-1","fingerprint":"ab12","id":3,"revision":1,"json":"{\"id\":\"grp-3\"}","expires":1764237702123}"#,
        ];
        for line in lines {
            let rec: Record = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(serde_json::to_string(&rec).unwrap(), line);
            let extra = format!("{},\"extra\":1}}", &line[..line.len() - 1]);
            assert!(
                serde_json::from_str::<Record>(&extra).is_err(),
                "an unknown field is refused: {extra}"
            );
        }
        // A missing field is refused too, in the store's types as in the lines.
        for line in [
            r#"{"type":"usage","user":"admin","total":12,"day":20418,"daily":3}"#,
            r#"{"type":"user","name":"admin","account":"default","role":"write","dailyLimit":null,"disabled":false,"keyGeneration":2,"keyCreated":1,"created":1}"#,
            r#"{"type":"idempotency","user":"admin","key":"k-1","fingerprint":"ab12","id":3,"revision":1,"expires":1}"#,
        ] {
            assert!(serde_json::from_str::<Record>(line).is_err(), "{line}");
        }
    }
}
