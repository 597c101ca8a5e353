//! Resync: when the centre's row cannot be followed (another `store_id`, a cursor older
//! than the feed's retention, or one ahead of this store), one transaction replaces
//! all of this gateway's central groups with a consistent snapshot of the store
//! (`Store::snapshot`, read without the writer lock) and moves `applied_seq` to the
//! snapshot's seq, provided the centre still holds what was seen (`FOR UPDATE`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio_postgres::types::Type;
use tokio_postgres::Client;

use super::central::{read_central, row_json, write_rows, Central, UPSERT};
use super::{pg_failure, store_failure, to_i64, Failure, Settings};
use crate::app::App;
use crate::store::feed::Snapshot;
use crate::store::Error as StoreError;

/// A consistent snapshot of every group (`Store::snapshot`), read again when retention
/// moved past it during the read (three tries).
async fn read_snapshot(app: &Arc<App>) -> Result<Snapshot, Failure> {
    for _ in 0..3 {
        let a = Arc::clone(app);
        match tokio::task::spawn_blocking(move || a.store.snapshot()).await {
            Ok(Ok(snap)) => return Ok(snap),
            // Retention moved during the read: read again.
            Ok(Err(StoreError::CursorExpired)) => continue,
            Ok(Err(e)) => return Err(store_failure("resync", &e)),
            Err(e) => {
                return Err(Failure {
                    kind: "resync",
                    message: e.to_string(),
                })
            }
        }
    }
    Err(Failure {
        kind: "resync",
        message: "the feed kept moving past retention while the snapshot was read".into(),
    })
}

/// Replaces all this gateway's central rows with a consistent snapshot, in one
/// transaction, provided the centre still holds `seen`.
pub(super) async fn resync(
    app: &Arc<App>,
    s: &Settings,
    client: &mut Client,
    seen: Option<Central>,
    why: &str,
) -> Result<(), Failure> {
    let f = |e: tokio_postgres::Error| pg_failure(s, "resync", &e);
    let snapshot = read_snapshot(app).await?;
    let store_id = app.store.store_id().to_string();
    let mut rows = Vec::with_capacity(snapshot.groups.len());
    for g in &snapshot.groups {
        rows.push(
            row_json(&g.account, &g.json, g.revision).map_err(|e| store_failure("resync", &e))?,
        );
    }
    let tx = client.transaction().await.map_err(f)?;
    if read_central(&tx, s, true).await.map_err(f)? != seen {
        tx.rollback().await.map_err(f)?;
        return Ok(());
    }
    tx.execute_typed(
        "DELETE FROM fleetgroups.groups WHERE gateway_id = $1",
        &[(&s.gateway_id, Type::TEXT)],
    )
    .await
    .map_err(f)?;
    for chunk in rows.chunks(2000) {
        write_rows(&tx, UPSERT, &s.gateway_id, chunk.to_vec())
            .await
            .map_err(f)?;
    }
    tx.execute_typed(
        "INSERT INTO fleetgroups.gateways (gateway_id, store_id, applied_seq, applied_at)
         VALUES ($1, $2, $3, now())
         ON CONFLICT (gateway_id) DO UPDATE SET store_id = EXCLUDED.store_id,
             applied_seq = EXCLUDED.applied_seq, applied_at = EXCLUDED.applied_at",
        &[
            (&s.gateway_id, Type::TEXT),
            (&store_id, Type::TEXT),
            (&to_i64(snapshot.seq), Type::INT8),
        ],
    )
    .await
    .map_err(f)?;
    tx.commit().await.map_err(f)?;
    resynced(app, s, seen.as_ref(), &store_id, &snapshot, why);
    Ok(())
}

/// Counts and logs a resync that committed.
fn resynced(
    app: &App,
    s: &Settings,
    seen: Option<&Central>,
    store_id: &str,
    snapshot: &Snapshot,
    why: &str,
) {
    let stats = &app.metrics.replication;
    stats.resyncs.fetch_add(1, Ordering::Relaxed);
    stats.applied(snapshot.seq, app.store.last_seq());
    tracing::warn!(
        gateway_id = %s.gateway_id,
        central_store_id = seen.map_or("(none)", |c| c.store_id.as_str()),
        central_applied_seq = seen.map(|c| c.applied_seq),
        store_id = %store_id,
        snapshot_seq = snapshot.seq,
        groups = snapshot.groups.len(),
        "replication: resynced: {why}; replaced this gateway's central groups with a snapshot"
    );
}
