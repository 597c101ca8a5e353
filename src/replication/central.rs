//! The centre's rows this gateway writes, shared by streaming (`stream.rs`) and the
//! resync (`resync.rs`): its row in `fleetgroups.gateways` ([`Central`], read with
//! [`read_central`]) and its groups' rows ([`row_json`] from a group's public JSON,
//! written with [`UPSERT`], removed with [`DELETE`]). Every statement is unnamed (`query_typed`/`execute_typed`).

use serde_json::{json, Value};
use tokio_postgres::types::Type;

use super::Settings;
use crate::store::Error as StoreError;

/// The centre's row for this gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Central {
    pub store_id: String,
    pub applied_seq: u64,
}

impl Central {
    fn of(r: &tokio_postgres::Row) -> Central {
        Central {
            store_id: r.get(0),
            applied_seq: u64::try_from(r.get::<_, i64>(1)).unwrap_or(0),
        }
    }
}

/// The centre's row for this gateway; `FOR UPDATE` when `lock` (inside a transaction).
pub(super) async fn read_central(
    client: &impl tokio_postgres::GenericClient,
    s: &Settings,
    lock: bool,
) -> Result<Option<Central>, tokio_postgres::Error> {
    let sql = if lock {
        "SELECT store_id, applied_seq FROM fleetgroups.gateways WHERE gateway_id = $1 FOR UPDATE"
    } else {
        "SELECT store_id, applied_seq FROM fleetgroups.gateways WHERE gateway_id = $1"
    };
    let rows = client
        .query_typed(sql, &[(&s.gateway_id, Type::TEXT)])
        .await?;
    Ok(rows.first().map(Central::of))
}

/// Writes the rows (from `row_json`) as the groups' states.
pub(super) const UPSERT: &str = "INSERT INTO fleetgroups.groups
         (gateway_id, account, id, name, description, devices, creation, last_modified, revision)
     SELECT $1, r.account, r.id, r.name, r.description,
            ARRAY(SELECT jsonb_array_elements_text(r.devices)),
            r.creation::timestamptz, r.last_modified::timestamptz, r.revision
     FROM jsonb_to_recordset($2::jsonb) AS r(account text, id text, name text,
          description text, devices jsonb, creation text, last_modified text, revision bigint)
     ON CONFLICT (gateway_id, account, id) DO UPDATE SET
         name = EXCLUDED.name, description = EXCLUDED.description,
         devices = EXCLUDED.devices, creation = EXCLUDED.creation,
         last_modified = EXCLUDED.last_modified, revision = EXCLUDED.revision";

/// Deletes the groups the rows name (`{"account", "id"}` objects).
pub(super) const DELETE: &str = "DELETE FROM fleetgroups.groups g
     USING jsonb_to_recordset($2::jsonb) AS r(account text, id text)
     WHERE g.gateway_id = $1 AND g.account = r.account AND g.id = r.id";

/// Runs [`UPSERT`] or [`DELETE`] for the gateway's `rows`, sent as one JSONB array.
pub(super) async fn write_rows(
    tx: &tokio_postgres::Transaction<'_>,
    sql: &str,
    gateway_id: &str,
    rows: Vec<Value>,
) -> Result<u64, tokio_postgres::Error> {
    tx.execute_typed(
        sql,
        &[(&gateway_id, Type::TEXT), (&Value::from(rows), Type::JSONB)],
    )
    .await
}

/// A central row from a group's public JSON.
pub(super) fn row_json(
    account: &str,
    group: &[u8],
    revision: Option<u64>,
) -> Result<Value, StoreError> {
    let g: Value = serde_json::from_slice(group)
        .map_err(|e| StoreError::corrupt_json("group JSON in the feed", e))?;
    Ok(json!({
        "account": account,
        "id": g["id"],
        "name": g["name"],
        "description": g["description"],
        "devices": g["devices"],
        "creation": g["creation"],
        "last_modified": g["lastModified"],
        "revision": revision,
    }))
}
