//! Shipping the feed: where streaming starts (the centre's row for this gateway, or a
//! resync when it cannot be followed), and batches, each one PostgreSQL transaction
//! that advances `applied_seq` with a compare-and-set on (previous value, `store_id`),
//! deletes or upserts each touched group's final state and inserts the batch's
//! `changes` rows. Every statement is unnamed (`query_typed`/`execute_typed`), so the
//! same code runs through a pooler in transaction mode. A `changes` row already present
//! is the same change (its key is gateway, store and seq), so re-streaming a history
//! the centre partly holds is idempotent rather than a conflict.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::{json, Value};
use tokio_postgres::types::Type;
use tokio_postgres::Client;

use super::central::{read_central, row_json, write_rows, DELETE, UPSERT};
use super::{pg_failure, store_failure, to_i64, Failure, Settings};
use crate::app::App;
use crate::store::feed::{parse_entry, FeedPage};
use crate::store::Error as StoreError;

/// Most entry JSON in one batch, whatever `batch_size` says.
const MAX_BATCH_BYTES: usize = 8 << 20;

/// Where streaming starts: the centre's `applied_seq` when it is this store's and the
/// feed still holds what follows it. Otherwise the centre is brought to a state it can
/// follow (a new gateway's row, or a resync) and None says to read it again.
pub(super) async fn start_cursor(
    app: &Arc<App>,
    s: &Settings,
    client: &mut Client,
    store_id: &str,
) -> Result<Option<u64>, Failure> {
    let central = read_central(client, s, false)
        .await
        .map_err(|e| pg_failure(s, "apply", &e))?;
    let purged = app.store.purged_through();
    let last = app.store.last_seq();
    match &central {
        None if purged == 0 => {
            // A new gateway whose feed holds its whole history (or one decommissioned
            // and back): stream it all; `changes` rows already there are skipped.
            client
                .execute_typed(
                    "INSERT INTO fleetgroups.gateways (gateway_id, store_id, applied_seq, applied_at)
                     VALUES ($1, $2, 0, now()) ON CONFLICT (gateway_id) DO NOTHING",
                    &[(&s.gateway_id, Type::TEXT), (&store_id, Type::TEXT)],
                )
                .await
                .map_err(|e| pg_failure(s, "apply", &e))?;
            Ok(None)
        }
        Some(c) if c.store_id == store_id && c.applied_seq >= purged && c.applied_seq <= last => {
            app.metrics
                .replication
                .applied_seq
                .store(c.applied_seq, Ordering::Relaxed);
            Ok(Some(c.applied_seq))
        }
        other => {
            let why = match other {
                None => "the centre has no row for this gateway and the feed no longer holds its whole history",
                Some(c) if c.store_id != store_id => "the centre holds another store_id",
                Some(c) if c.applied_seq < purged => "the centre's applied_seq is older than the feed's retention",
                Some(_) => "the centre's applied_seq is ahead of this store",
            };
            super::resync::resync(app, s, client, other.clone(), why).await?;
            Ok(None)
        }
    }
}

/// How far `ship` got.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Shipped {
    /// Everything visible is central up to this seq; this many batches committed.
    CaughtUp { cursor: u64, batches: u64 },
    /// The compare-and-set or the feed's retention says to read the centre again.
    LookAgain,
}

/// Ships batches from `cursor` until the centre holds everything the store has made
/// visible (and durable).
pub(super) async fn ship(
    app: &Arc<App>,
    s: &Settings,
    client: &mut Client,
    store_id: &str,
    mut cursor: u64,
) -> Result<Shipped, Failure> {
    let stats = &app.metrics.replication;
    let mut batches = 0;
    loop {
        let last = app.store.last_seq();
        stats.observe(last);
        if last <= cursor {
            return Ok(Shipped::CaughtUp { cursor, batches });
        }
        // Only entries on disk go out: the centre is never ahead of the gateway.
        app.store
            .durable()
            .await
            .map_err(|e| store_failure("store", &e))?;
        let store = Arc::clone(app);
        let (after, limit) = (cursor, s.batch_size);
        let page = tokio::task::spawn_blocking(move || {
            store.store.feed_after(after, limit, MAX_BATCH_BYTES)
        })
        .await
        .map_err(|e| Failure {
            kind: "store",
            message: e.to_string(),
        })?;
        let page = match page {
            Ok(p) => p,
            Err(StoreError::CursorExpired) => return Ok(Shipped::LookAgain),
            Err(e) => return Err(store_failure("store", &e)),
        };
        if page.next > last {
            // Never ship beyond what `durable` covered.
            continue;
        }
        if page.entries.is_empty() && page.next <= cursor {
            // Nothing readable past the cursor (a seq a failed write skipped).
            return Ok(Shipped::CaughtUp { cursor, batches });
        }
        if !apply_batch(client, s, store_id, cursor, &page, last).await? {
            return Ok(Shipped::LookAgain);
        }
        cursor = page.next;
        batches += 1;
        stats.applied(cursor, app.store.last_seq());
    }
}

/// What one batch writes to the centre: a row per change, and the state after the
/// batch of every group it touches (the last entry wins), as upserts or deletes.
struct Rows {
    changes: Vec<Value>,
    upserts: Vec<Value>,
    deletes: Vec<Value>,
}

fn rows_of(page: &FeedPage) -> Result<Rows, StoreError> {
    let mut last: BTreeMap<(String, u64), Option<Value>> = BTreeMap::new();
    let mut changes = Vec::with_capacity(page.entries.len());
    for e in &page.entries {
        let p = parse_entry(&e.entry)?;
        changes.push(json!({
            "seq": e.seq, "time": p.time, "op": p.op, "account": e.account,
            "id": p.id.to_string(), "user_name": p.user_name,
        }));
        let state = match &p.group {
            None => None,
            Some(g) => Some(row_json(&e.account, g, p.revision)?),
        };
        last.insert((e.account.clone(), p.id.0), state);
    }
    let mut upserts = Vec::new();
    let mut deletes = Vec::new();
    for ((account, n), state) in last {
        match state {
            Some(row) => upserts.push(row),
            None => deletes.push(json!({"account": account, "id": format!("grp-{n}")})),
        }
    }
    Ok(Rows {
        changes,
        upserts,
        deletes,
    })
}

/// One batch in one transaction; `head` is the store's own head seq, recorded with it.
/// Ok(false): the compare-and-set found another state.
async fn apply_batch(
    client: &mut Client,
    s: &Settings,
    store_id: &str,
    prev: u64,
    page: &FeedPage,
    head: u64,
) -> Result<bool, Failure> {
    let f = |e: tokio_postgres::Error| pg_failure(s, "apply", &e);
    let Rows {
        changes,
        upserts,
        deletes,
    } = rows_of(page).map_err(|e| store_failure("store", &e))?;
    let tx = client.transaction().await.map_err(f)?;
    let moved = tx
        .execute_typed(
            "UPDATE fleetgroups.gateways SET applied_seq = $3, applied_at = now(),
                 last_seen_at = now(), head_seq = greatest($5, $3)
             WHERE gateway_id = $1 AND store_id = $2 AND applied_seq = $4",
            &[
                (&s.gateway_id, Type::TEXT),
                (&store_id, Type::TEXT),
                (&to_i64(page.next), Type::INT8),
                (&to_i64(prev), Type::INT8),
                (&to_i64(head), Type::INT8),
            ],
        )
        .await
        .map_err(f)?;
    if moved != 1 {
        tx.rollback().await.map_err(f)?;
        return Ok(false);
    }
    for (sql, rows) in [(DELETE, deletes), (UPSERT, upserts)] {
        if !rows.is_empty() {
            write_rows(&tx, sql, &s.gateway_id, rows).await.map_err(f)?;
        }
    }
    if !changes.is_empty() {
        tx.execute_typed(
            "INSERT INTO fleetgroups.changes (gateway_id, store_id, seq, time, op, account, id, user_name)
             SELECT $1, $2, r.seq, r.time::timestamptz, r.op, r.account, r.id, r.user_name
             FROM jsonb_to_recordset($3::jsonb)
                 AS r(seq bigint, time text, op text, account text, id text, user_name text)
             ON CONFLICT (gateway_id, store_id, seq) DO NOTHING",
            &[
                (&s.gateway_id, Type::TEXT),
                (&store_id, Type::TEXT),
                (&Value::from(changes), Type::JSONB),
            ],
        )
        .await
        .map_err(f)?;
    }
    tx.commit().await.map_err(f)?;
    Ok(true)
}
