//! The central schema as numbered migrations (`migrations/NNNN_*.sql`, read at build
//! time), applied in order in one transaction under a transaction-scoped advisory lock
//! (so concurrent gateways serialise, and a pooler in transaction mode is fine), each
//! recorded in `fleetgroups.schema_version`. A centre already at this binary's version
//! costs one unlocked read; a centre newer than this binary is refused (upgrade the
//! gateway). To change the schema, add the next file here and to `MIGRATIONS`; never
//! edit one that has shipped.

use tokio_postgres::types::Type;
use tokio_postgres::Client;

use super::{pg_failure, Failure, Settings};

/// Every migration, in order: (version, SQL).
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("migrations/0001_initial.sql")),
    (2, include_str!("migrations/0002_fleet.sql")),
];

/// The central schema version this binary creates and understands.
pub const SCHEMA_VERSION: i32 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// Key of the advisory lock under which gateways create and upgrade the schema.
const SCHEMA_LOCK: i64 = 0x666c_6565_7467_7270; // "fleetgrp"

/// The version the centre records (0: no schema yet).
async fn version(client: &Client) -> Result<i32, tokio_postgres::Error> {
    let table = client
        .query_typed_one(
            "SELECT to_regclass('fleetgroups.schema_version') IS NOT NULL",
            &[],
        )
        .await?;
    if !table.get::<_, bool>(0) {
        return Ok(0);
    }
    let row = client
        .query_typed_one(
            "SELECT coalesce(max(version), 0) FROM fleetgroups.schema_version",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

fn newer(found: i32) -> Failure {
    Failure {
        kind: "schema",
        message: format!(
            "the central schema is version {found}, newer than this gateway knows ({SCHEMA_VERSION}); upgrade the gateway"
        ),
    }
}

/// Brings the centre to `SCHEMA_VERSION`.
pub(super) async fn ensure(client: &mut Client, s: &Settings) -> Result<(), Failure> {
    let f = |e: tokio_postgres::Error| pg_failure(s, "schema", &e);
    let found = version(client).await.map_err(f)?;
    if found == SCHEMA_VERSION {
        return Ok(());
    }
    if found > SCHEMA_VERSION {
        return Err(newer(found));
    }
    let tx = client.transaction().await.map_err(f)?;
    tx.execute_typed(
        "SELECT pg_advisory_xact_lock($1)",
        &[(&SCHEMA_LOCK, Type::INT8)],
    )
    .await
    .map_err(f)?;
    // IF NOT EXISTS notices are noise here; SET LOCAL ends with the transaction.
    tx.batch_execute(
        "SET LOCAL client_min_messages = warning;
         CREATE SCHEMA IF NOT EXISTS fleetgroups;
         CREATE TABLE IF NOT EXISTS fleetgroups.schema_version (
             version integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now());",
    )
    .await
    .map_err(f)?;
    // Read again under the lock: another gateway may have upgraded meanwhile.
    let found: i32 = tx
        .query_typed_one(
            "SELECT coalesce(max(version), 0) FROM fleetgroups.schema_version",
            &[],
        )
        .await
        .map_err(f)?
        .get(0);
    if found > SCHEMA_VERSION {
        return Err(newer(found));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > found) {
        tx.batch_execute(sql).await.map_err(f)?;
        tx.execute_typed(
            "INSERT INTO fleetgroups.schema_version (version) VALUES ($1)",
            &[(version, Type::INT4)],
        )
        .await
        .map_err(f)?;
    }
    tx.commit().await.map_err(f)?;
    tracing::info!(
        from = found,
        to = SCHEMA_VERSION,
        "replication: upgraded the central schema"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_one_by_one_from_one() {
        for (i, (v, sql)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(usize::try_from(*v).ok(), Some(i + 1));
            assert!(!sql.trim().is_empty());
        }
    }
}
