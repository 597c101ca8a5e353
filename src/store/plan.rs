//! What a group write changes, gathered before it is applied: the writes of every key
//! space of one change (`Plan`), and who makes it (`Actor`). Computed under the writer
//! mutex by `groups.rs` (and `idempotency.rs` for the remembered answer), applied as one
//! batch by `Store::apply`.

use super::history::Record;
use super::keys;
use super::pieces::GroupWrites;
use crate::model::GroupId;

/// Who is writing: the account that owns the data and the user for the audit trail.
#[derive(Debug, Clone, Copy)]
pub struct Actor<'a> {
    pub account: &'a str,
    pub user: &'a str,
}

/// Everything a group write changes, computed under the writer mutex and applied in
/// one transaction.
#[derive(Default)]
pub(super) struct Plan {
    pub groups: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    pub names: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    pub devices: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    pub pieces: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    pub changes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    pub history: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    pub idempotency: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    pub idempotency_order: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    pub meta: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl Plan {
    /// Whether the plan writes nothing at all.
    pub(super) fn is_empty(&self) -> bool {
        [
            &self.groups,
            &self.names,
            &self.devices,
            &self.pieces,
            &self.changes,
            &self.history,
            &self.idempotency,
            &self.idempotency_order,
            &self.meta,
        ]
        .iter()
        .all(|v| v.is_empty())
    }

    /// Adds the writes of one group's value and pieces (`pieces.rs`).
    pub(super) fn store_group(&mut self, account: &str, n: u64, w: GroupWrites) {
        self.groups.push((keys::group(account, n), w.value));
        self.pieces.extend(w.pieces);
    }

    /// Adds (`present`) or removes the device index entries of group `n` for
    /// `devices`.
    pub(super) fn index_devices(
        &mut self,
        account: &str,
        n: u64,
        devices: impl IntoIterator<Item = impl AsRef<str>>,
        present: bool,
    ) {
        for d in devices {
            let entry = present.then(Vec::new);
            self.devices
                .push((keys::device(account, d.as_ref(), n), entry));
        }
    }

    /// Adds the change record of this change (`history.rs`): the feed-order key and
    /// the record under its group.
    pub(super) fn record_change(&mut self, actor: Actor<'_>, seq: u64, id: GroupId, rec: &Record) {
        self.changes.push((
            keys::change(actor.account, seq),
            Some(id.0.to_be_bytes().to_vec()),
        ));
        self.history
            .push((keys::record(actor.account, id.0, seq), Some(rec.encode())));
    }
}
