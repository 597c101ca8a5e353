//! Office groups, central side (docs/operations/many-gateways.md, "Office groups"): the
//! pull of what changed for this gateway since its cursor, and the report of its
//! cursor and conflicts. The tables and triggers are a migration of the central schema
//! (`replication/migrations/0003_office_groups.sql`); the replication session
//! (`replication/session.rs`) calls `Puller::round` when a pull is due. The store applies
//! each change (`store::office`); this file only talks to PostgreSQL and hands rows
//! over.
//!
//! Pooler-safe like the rest of replication: every statement goes out with
//! `query_typed` (the unnamed statement, parameter types given, no prepare round
//! trip, nothing left on the server), and every multi-statement step is one
//! transaction, so PgBouncer in transaction mode can put each on any server connection.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, IsolationLevel, Row};

use crate::app::App;
use crate::model::GroupId;
use crate::store::office::{Held, OfficeChange, OfficeGroup, Outcome};

/// The log target, kept from before the module moved into a folder: `log.level`
/// directives name it (`fleetgroups::office=debug`), so a move must not change it.
const LOG: &str = "fleetgroups::office";

/// Rows one pull transaction reads at most; a round reads pages until it is caught up.
pub const PAGE: i64 = 500;

/// The changes for `$1` (gateway) after `$2` (cursor): live rows and tombstones of
/// every group that targets or ever targeted it, in revision order, at most `$3`.
const PULL: &str =
    "SELECT c.account, c.id, c.name, c.description, c.devices, c.targeted, c.revision
  FROM (SELECT account, id, name, description, devices,
               (gateways IS NULL OR $1 = ANY (gateways)) AS targeted, revision
          FROM fleetgroups.office_groups
         WHERE revision > $2 AND (ever_gateways IS NULL OR $1 = ANY (ever_gateways))
        UNION ALL
        SELECT account, id, NULL, NULL, NULL, false, revision
          FROM fleetgroups.office_tombstones
         WHERE revision > $2 AND (ever_gateways IS NULL OR $1 = ANY (ever_gateways))) AS c
 ORDER BY c.revision
 LIMIT $3";

/// How many such changes follow `$2`, for `fleetgroups_office_pending_changes`.
const PENDING: &str = "SELECT (SELECT count(*) FROM fleetgroups.office_groups
          WHERE revision > $2 AND (ever_gateways IS NULL OR $1 = ANY (ever_gateways)))
     + (SELECT count(*) FROM fleetgroups.office_tombstones
          WHERE revision > $2 AND (ever_gateways IS NULL OR $1 = ANY (ever_gateways)))";

/// Every office group the centre means for `$1` now (a reconcile).
const MEANT: &str = "SELECT account, id FROM fleetgroups.office_groups
 WHERE gateways IS NULL OR $1 = ANY (gateways)";

/// A failure of a pull: where, and the message for the log (never a password: the
/// caller scrubs it).
#[derive(Debug)]
pub enum PullError {
    Central(tokio_postgres::Error),
    Store(crate::store::Error),
}

impl std::fmt::Display for PullError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PullError::Central(e) => write!(f, "office pull: {e}"),
            PullError::Store(e) => write!(f, "office pull: {}", e.chain()),
        }
    }
}

impl From<tokio_postgres::Error> for PullError {
    fn from(e: tokio_postgres::Error) -> PullError {
        PullError::Central(e)
    }
}

impl From<crate::store::Error> for PullError {
    fn from(e: crate::store::Error) -> PullError {
        PullError::Store(e)
    }
}

/// One page read in one snapshot.
struct Page {
    changes: Vec<(OfficeChange, u64)>,
    /// Revisions of changes with an ID this gateway cannot hold (never with the
    /// central checks in place): skipped, the cursor moves past them.
    skipped: Option<u64>,
    pending: u64,
    /// The page was full: more may follow at once.
    full: bool,
    /// With a reconcile asked for and the page the last one: what the centre means
    /// for this gateway in the same snapshot.
    meant: Option<HashSet<(String, GroupId)>>,
}

/// What the pull remembers between rounds (one per replication task): the conflicts
/// it has logged and the report the centre has.
#[derive(Debug, Default)]
pub struct Puller {
    /// (account, id) → reason, as last logged.
    logged: BTreeMap<(String, u64), &'static str>,
    /// (cursor, conflicts) as last reported centrally; None: not yet in this session.
    reported: Option<(u64, Vec<Held>)>,
}

impl Puller {
    /// Forgets what the centre was told (a new connection reports again).
    pub fn reconnected(&mut self) {
        self.reported = None;
    }

    /// One pull round on `client`: pages of changes until caught up, each change
    /// applied with its cursor (`Store::apply_office`), a reconcile when the store has
    /// none yet, held changes tried again, and the report of cursor and conflicts
    /// when it changed. Returns the changes applied.
    pub async fn round(
        &mut self,
        app: &Arc<App>,
        client: &mut Client,
        gateway: &str,
    ) -> Result<usize, PullError> {
        let limits = app.office_limits();
        if app.store.office_gateway(gateway)? {
            tracing::warn!(target: LOG,
                gateway_id = gateway,
                "office groups: the gateway_id changed; pulling them again from revision 0"
            );
        }
        let mut applied = 0;
        loop {
            let cursor = app.store.office_cursor()?;
            let reconcile = !app.store.office_reconciled()?;
            let page = read_page(client, gateway, cursor, reconcile).await?;
            app.metrics
                .office
                .pending
                .store(page.pending, Ordering::Relaxed);
            let full = page.full;
            for (change, revision) in &page.changes {
                if app.store.apply_office(change, Some(*revision), limits)? == Outcome::Changed {
                    applied += 1;
                }
            }
            if let Some(r) = page.skipped {
                app.store.advance_office_cursor(r)?;
            }
            app.store.durable().await?;
            if let Some(meant) = page.meant {
                let removed = app.store.reconcile_office(&meant, limits)?;
                app.store.durable().await?;
                tracing::info!(target: LOG,
                    removed,
                    serving = meant.len(),
                    "office groups reconciled with the centre"
                );
            }
            if !full {
                break;
            }
        }
        applied += app.store.retry_office_held(None, limits)?;
        app.store.durable().await?;
        self.log_conflicts(&app.store.office_held()?);
        self.report(app, client, gateway).await?;
        app.metrics
            .office
            .last_pull_ms
            .store(app.clock.wall_ms(), Ordering::Relaxed);
        Ok(applied)
    }

    /// One log line per conflict that appears, changes reason, or goes.
    fn log_conflicts(&mut self, held: &[Held]) {
        let now: BTreeMap<(String, u64), &'static str> = held
            .iter()
            .map(|h| ((h.group.account.clone(), h.group.id.0), h.reason.as_str()))
            .collect();
        for h in held {
            let key = (h.group.account.clone(), h.group.id.0);
            if self.logged.get(&key) != Some(&h.reason.as_str()) {
                tracing::warn!(target: LOG,
                    account = %h.group.account,
                    id = %h.group.id,
                    reason = h.reason.as_str(),
                    detail = %h.detail,
                    "office group not applied here: it conflicts with a local rule; it is applied once the obstacle goes"
                );
            }
        }
        for (account, n) in self.logged.keys() {
            if !now.contains_key(&(account.clone(), *n)) {
                tracing::info!(target: LOG, account = %account, id = %GroupId(*n), "office group conflict resolved");
            }
        }
        self.logged = now;
    }

    /// Tells the centre this gateway's cursor and conflicts (one transaction), when
    /// they differ from what it was last told in this session.
    async fn report(
        &mut self,
        app: &Arc<App>,
        client: &mut Client,
        gateway: &str,
    ) -> Result<(), PullError> {
        let cursor = app.store.office_cursor()?;
        let held = app.store.office_held()?;
        if self.reported.as_ref() == Some(&(cursor, held.clone())) {
            return Ok(());
        }
        let accounts: Vec<&str> = held.iter().map(|h| h.group.account.as_str()).collect();
        let ids: Vec<String> = held.iter().map(|h| h.group.id.to_string()).collect();
        let reasons: Vec<&str> = held.iter().map(|h| h.reason.as_str()).collect();
        let details: Vec<&str> = held.iter().map(|h| h.detail.as_str()).collect();
        let since: Vec<i64> = held.iter().map(|h| h.since).collect();
        let c = to_i64(cursor);
        let tx = client.transaction().await?;
        tx.query_typed(
            "INSERT INTO fleetgroups.office_gateways (gateway_id, office_cursor, reported_at)
             VALUES ($1, $2, now())
             ON CONFLICT (gateway_id) DO UPDATE
                SET office_cursor = EXCLUDED.office_cursor, reported_at = EXCLUDED.reported_at",
            &[(&gateway, Type::TEXT), (&c, Type::INT8)],
        )
        .await?;
        tx.query_typed(
            "DELETE FROM fleetgroups.office_conflicts
              WHERE gateway_id = $1
                AND (account, id) NOT IN (SELECT * FROM unnest($2::text[], $3::text[]))",
            &[
                (&gateway, Type::TEXT),
                (&accounts, Type::TEXT_ARRAY),
                (&ids, Type::TEXT_ARRAY),
            ],
        )
        .await?;
        let params: [(&(dyn ToSql + Sync), Type); 6] = [
            (&gateway, Type::TEXT),
            (&accounts, Type::TEXT_ARRAY),
            (&ids, Type::TEXT_ARRAY),
            (&reasons, Type::TEXT_ARRAY),
            (&details, Type::TEXT_ARRAY),
            (&since, Type::INT8_ARRAY),
        ];
        tx.query_typed(
            "INSERT INTO fleetgroups.office_conflicts (gateway_id, account, id, reason, detail, since)
             SELECT $1, a, i, r, d, to_timestamp(s / 1000.0)
               FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::int8[])
                    AS t(a, i, r, d, s)
             ON CONFLICT (gateway_id, account, id) DO UPDATE
                SET reason = EXCLUDED.reason, detail = EXCLUDED.detail, since = EXCLUDED.since",
            &params,
        )
        .await?;
        tx.commit().await?;
        self.reported = Some((cursor, held));
        Ok(())
    }
}

/// Reads one page after `cursor` in one read-only snapshot.
async fn read_page(
    client: &mut Client,
    gateway: &str,
    cursor: u64,
    reconcile: bool,
) -> Result<Page, PullError> {
    let c = to_i64(cursor);
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let rows = tx
        .query_typed(
            PULL,
            &[
                (&gateway, Type::TEXT),
                (&c, Type::INT8),
                (&PAGE, Type::INT8),
            ],
        )
        .await?;
    let last = rows.last().map_or(c, |r| r.get::<_, i64>(6));
    let pending: i64 = tx
        .query_typed(PENDING, &[(&gateway, Type::TEXT), (&last, Type::INT8)])
        .await?
        .first()
        .map_or(0, |r| r.get(0));
    let meant = if reconcile && (rows.len() as i64) < PAGE {
        let all = tx.query_typed(MEANT, &[(&gateway, Type::TEXT)]).await?;
        Some(
            all.iter()
                .filter_map(|r| {
                    let id = GroupId::parse(r.get::<_, &str>(1)).filter(|id| id.is_office())?;
                    Some((r.get::<_, String>(0), id))
                })
                .collect(),
        )
    } else {
        None
    };
    tx.commit().await?;
    let (changes, skipped) = changes_of(&rows);
    Ok(Page {
        changes,
        skipped,
        pending: u64::try_from(pending).unwrap_or(0),
        full: rows.len() as i64 >= PAGE,
        meant,
    })
}

/// The changes of a page's rows with their revisions, and the last revision skipped
/// (a row whose ID is not an office group's; logged).
fn changes_of(rows: &[tokio_postgres::Row]) -> (Vec<(OfficeChange, u64)>, Option<u64>) {
    let mut changes = Vec::with_capacity(rows.len());
    let mut skipped = None;
    for r in rows {
        let revision = u64::try_from(r.get::<_, i64>(6)).unwrap_or(0);
        match change_of(r) {
            Some(change) => changes.push((change, revision)),
            None => {
                tracing::warn!(target: LOG,
                    account = r.get::<_, &str>(0),
                    id = r.get::<_, &str>(1),
                    "office pull: skipped a row whose id is not ofc-<n>"
                );
                skipped = Some(revision);
            }
        }
    }
    (changes, skipped)
}

/// The change a pulled row says: the group as given when it targets this gateway,
/// else its removal. None for an ID that is not an office group's.
fn change_of(r: &Row) -> Option<OfficeChange> {
    let account: String = r.get(0);
    let id = GroupId::parse(r.get::<_, &str>(1)).filter(|id| id.is_office())?;
    if !r.get::<_, bool>(5) {
        return Some(OfficeChange::Remove { account, id });
    }
    Some(OfficeChange::Upsert(OfficeGroup {
        account,
        id,
        name: r.get::<_, Option<String>>(2).unwrap_or_default(),
        description: r.get(3),
        devices: r.get::<_, Option<Vec<String>>>(4).unwrap_or_default(),
    }))
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
