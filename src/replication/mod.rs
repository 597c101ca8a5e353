//! Push replication into a central PostgreSQL (README "Many gateways"): a task in the
//! serving process reads the store's own feed (`store/feed.rs`, not HTTP) and ships it
//! in batches, each one PostgreSQL transaction, exactly once and in order.
//!
//! The rooms: `settings` (the checked `[replication]` keys and the connection: keepalive,
//! `application_name`, NOTICEs dropped) with `tls` (rustls verifiers for each
//! `sslmode`); `schema` (numbered migration files under an advisory lock); `session`
//! (the life of a replicator: offline until there is something to ship or a heartbeat
//! is due, connected only while busy, backoff with full jitter, one log line per state
//! change, and the periodic steps: heartbeat, retention of central changes, the
//! office-groups pull of `office`, the central side of office groups); `stream`
//! (batches with a compare-and-set on `applied_seq`); `resync` (a snapshot replaces
//! the gateway's central rows); `central` (the gateway's row and its groups' rows, which
//! both write).
//!
//! Nothing here is on the request path: requests never wait for it, and it never holds
//! the store's writer lock. Every statement is unnamed and every multi-statement step
//! is one transaction, so a pooler in transaction mode (PgBouncer) sits in between
//! unnoticed. The password is never logged, put in an error message, a metric or
//! `check-config` (`pg_url::redact`, `Settings::scrub`).

mod central;
pub(crate) mod office;
mod resync;
mod schema;
mod session;
mod settings;
mod stream;
mod tls;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::watch;

use crate::app::App;
use crate::store::Error as StoreError;

pub use schema::SCHEMA_VERSION;
pub(crate) use settings::Settings;

/// A failure of one attempt: its metric kind (`metrics::replication::ERROR_KINDS`) and a message
/// safe to log.
#[derive(Debug)]
struct Failure {
    kind: &'static str,
    message: String,
}

impl Failure {
    /// Whether retrying cannot help until someone changes something centrally (a
    /// constraint, a permission, a schema that does not match): logged as such.
    fn persistent(&self) -> bool {
        matches!(self.kind, "constraint" | "permission" | "schema")
    }
}

/// The metric kind of a PostgreSQL error met at `stage`: the SQLSTATE says more than
/// the stage (a full centre, a constraint, a permission, a missing table or column).
fn kind_of(stage: &'static str, e: &tokio_postgres::Error) -> &'static str {
    let Some(code) = e.code().map(tokio_postgres::error::SqlState::code) else {
        return stage;
    };
    match code {
        // too_many_connections: a full centre (or the role's CONNECTION LIMIT).
        "53300" => "refused",
        // Cannot log in (pg_hba, password) stays a connect error, as the README says.
        _ if stage == "connect" => stage,
        c if c.starts_with("23") => "constraint",
        c if c.starts_with("28") || c == "42501" => "permission",
        // undefined table, column, function; datatype mismatch.
        "42P01" | "42703" | "42883" | "42804" => "schema",
        _ => stage,
    }
}

fn pg_failure(settings: &Settings, stage: &'static str, e: &tokio_postgres::Error) -> Failure {
    // A server error's own message (with its SQLSTATE) says more than the wrapper.
    let message = match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    };
    Failure {
        kind: kind_of(stage, e),
        message: settings.scrub(message),
    }
}

fn store_failure(kind: &'static str, e: &StoreError) -> Failure {
    Failure {
        kind,
        message: e.chain(),
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Starts the replicator when `[replication]` is configured. It stops when `stop`
/// turns true; the returned handle ends then.
pub(crate) fn spawn(
    app: &Arc<App>,
    stop: watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    if !app.config.replication.enabled() {
        return None;
    }
    let settings = match Settings::from_config(&app.config.replication) {
        Ok(s) => s,
        Err(e) => {
            // Validated at start; a password file removed since then lands here.
            tracing::error!("replication not started: {e}");
            return None;
        }
    };
    app.metrics
        .replication
        .enabled
        .store(true, Ordering::Relaxed);
    tracing::info!(
        gateway_id = %settings.gateway_id,
        store_id = %app.store.store_id(),
        sslmode = ?settings.ssl,
        "replication: starting"
    );
    Some(tokio::spawn(session::run(Arc::clone(app), settings, stop)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ReplicationConfig;

    fn cfg(url: &str) -> ReplicationConfig {
        ReplicationConfig {
            postgres_url: url.into(),
            gateway_id: "gw-1".into(),
            ..ReplicationConfig::default()
        }
    }

    #[test]
    fn settings_are_checked_naming_the_key_and_never_the_password() {
        assert!(
            Settings::from_config(&cfg("postgresql://u:pw@127.0.0.1:5/db?sslmode=disable")).is_ok()
        );
        for (url, key) in [
            ("mysql://u:hunter2@h/db", "replication.postgres_url"),
            (
                "postgresql://u:hunter2@h/db?sslmode=sometimes",
                "replication.postgres_url",
            ),
            ("postgresql://h/db", "replication.postgres_url"),
            (
                "postgresql://u:hunter2@h/db?sslmode=verify-full",
                "replication.ca_file",
            ),
        ] {
            let e = Settings::from_config(&cfg(url))
                .err()
                .expect(url)
                .to_string();
            assert!(e.starts_with(key), "{url}: {e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
        let mut c = cfg("postgresql://u@h/db");
        c.password_file = "/nonexistent/pw".into();
        let e = Settings::from_config(&c)
            .err()
            .expect("missing file")
            .to_string();
        assert!(e.starts_with("replication.password_file"), "{e}");
    }
}
