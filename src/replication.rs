//! Push replication into a central PostgreSQL (replication.md): a task in the serving
//! process reads the store's own feed (`store/feed.rs`, not HTTP) and applies it in
//! batches, each one PostgreSQL transaction that writes the groups' new states,
//! inserts the `fleetgroups.changes` rows and advances `fleetgroups.gateways.applied_seq`
//! with a compare-and-set on (previous value, `store_id`). A batch whose outcome is
//! unknown (lost connection, crash) is simply read again: the compare-and-set makes a
//! second application change nothing. When the centre holds another `store_id`, a
//! cursor older than the feed's retention, or one ahead of this store, the gateway
//! resyncs: one transaction replaces all its rows with a consistent snapshot.
//!
//! Nothing here is on the request path: requests never wait for it, and it never holds
//! the store's writer lock (the snapshot is read without it, `Store::snapshot`).
//! Secrets: the password comes from `password_file` or the URL and is never logged,
//! put in an error message, a metric or `check-config` (`pg_url::redact`).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_postgres::Client;

use crate::app::App;
use crate::config::ReplicationConfig;
use crate::pg_url::SslMode;
use crate::store::feed::{parse_entry, FeedPage, Snapshot};
use crate::store::Error as StoreError;

/// The central schema version this binary creates and understands.
pub const SCHEMA_VERSION: i32 = 1;

/// Key of the advisory lock under which gateways create and upgrade the schema.
const SCHEMA_LOCK: i64 = 0x666c_6565_7467_7270; // "fleetgrp"

/// Longest wait between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Most entry JSON in one batch, whatever `batch_size` says.
const MAX_BATCH_BYTES: usize = 8 << 20;

/// How often an idle replicator looks for new entries.
const POLL: Duration = Duration::from_millis(100);

/// Everything a replicator needs to connect, checked.
pub struct Settings {
    pg: tokio_postgres::Config,
    ssl: SslMode,
    tls: Option<Arc<rustls::ClientConfig>>,
    pub gateway_id: String,
    pub batch_size: usize,
    /// The password, to scrub it from any message that might echo it.
    password: Option<String>,
}

impl Settings {
    /// From `[replication]`; every problem names its key and never holds the password.
    pub fn from_config(r: &ReplicationConfig) -> Result<Settings, String> {
        let (mut pg, url_password, ssl) = crate::pg_url::parse(&r.postgres_url, &r.ca_file)?;
        let mut password = url_password;
        if !r.password_file.is_empty() {
            let text = std::fs::read_to_string(&r.password_file).map_err(|e| {
                format!(
                    "replication.password_file: cannot read {}: {}",
                    r.password_file,
                    e.kind()
                )
            })?;
            let p = text.trim_end_matches(['\n', '\r']).to_string();
            if p.is_empty() {
                return Err(format!(
                    "replication.password_file: {} is empty",
                    r.password_file
                ));
            }
            pg.password(p.as_bytes());
            password = Some(p);
        }
        pg.connect_timeout(Duration::from_secs(10));
        pg.application_name("fleetgroups");
        let tls = match ssl {
            SslMode::Disable => None,
            SslMode::Prefer | SslMode::Require => Some(tls_config(Verify::Nothing)?),
            SslMode::VerifyCa | SslMode::VerifyFull => {
                let roots = read_roots(&r.ca_file)?;
                Some(tls_config(if ssl == SslMode::VerifyCa {
                    Verify::Chain(roots)
                } else {
                    Verify::Full(roots)
                })?)
            }
        };
        pg.ssl_mode(match ssl {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        Ok(Settings {
            pg,
            ssl,
            tls,
            gateway_id: r.effective_gateway_id(),
            batch_size: usize::try_from(r.batch_size).unwrap_or(500),
            password,
        })
    }

    /// A message with the password (should anything echo it) replaced by `***`.
    fn scrub(&self, msg: String) -> String {
        match &self.password {
            Some(p) if !p.is_empty() => msg.replace(p.as_str(), "***"),
            _ => msg,
        }
    }

    /// Connects, and runs the connection on its own task.
    async fn connect(&self) -> Result<Client, tokio_postgres::Error> {
        match &self.tls {
            None => {
                let (client, conn) = self.pg.connect(tokio_postgres::NoTls).await?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Ok(client)
            }
            Some(cfg) => {
                let tls = tokio_postgres_rustls::MakeRustlsConnect::new((**cfg).clone());
                let (client, conn) = self.pg.connect(tls).await?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Ok(client)
            }
        }
    }
}

enum Verify {
    Nothing,
    Chain(rustls::RootCertStore),
    Full(rustls::RootCertStore),
}

fn read_roots(path: &str) -> Result<rustls::RootCertStore, String> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("replication.ca_file: cannot read {path}: {}", e.kind()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&bytes) {
        let cert = cert.map_err(|_| format!("replication.ca_file: {path} is not PEM"))?;
        roots
            .add(cert)
            .map_err(|e| format!("replication.ca_file: {path}: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("replication.ca_file: {path} holds no certificate"));
    }
    Ok(roots)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_config(verify: Verify) -> Result<Arc<rustls::ClientConfig>, String> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("replication: TLS: {e}"))?;
    let cfg = match verify {
        Verify::Full(roots) => builder.with_root_certificates(roots).with_no_client_auth(),
        Verify::Chain(roots) => {
            let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| format!("replication.ca_file: {e}"))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly(inner)))
                .with_no_client_auth()
        }
        // `sslmode=require`/`prefer`: encrypted, the certificate not checked (libpq's
        // meaning).
        Verify::Nothing => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(crate::tls::AnyCertificate(provider())))
            .with_no_client_auth(),
    };
    Ok(Arc::new(cfg))
}

/// `sslmode=verify-ca`: the chain must lead to `ca_file`; the host name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// A failure of one attempt: its metric kind and a message safe to log.
#[derive(Debug)]
struct Failure {
    kind: &'static str,
    message: String,
}

fn pg_failure(settings: &Settings, kind: &'static str, e: &tokio_postgres::Error) -> Failure {
    // A server error's own message (with its SQLSTATE) says more than the wrapper.
    let message = match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    };
    Failure {
        kind,
        message: settings.scrub(message),
    }
}

fn store_failure(kind: &'static str, e: &StoreError) -> Failure {
    Failure {
        kind,
        message: e.chain(),
    }
}

/// Starts the replicator when `[replication]` is configured. It stops when `stop`
/// turns true; the returned handle ends then.
pub fn spawn(app: &Arc<App>, stop: watch::Receiver<bool>) -> Option<tokio::task::JoinHandle<()>> {
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
    Some(tokio::spawn(run(Arc::clone(app), settings, stop)))
}

/// Whether the centre was last reachable (for one log line per state change).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Unknown,
    Up,
    Down,
}

async fn run(app: Arc<App>, settings: Settings, mut stop: watch::Receiver<bool>) {
    let mut link = Link::Unknown;
    let mut backoff = Duration::from_millis(500);
    loop {
        if *stop.borrow() {
            return;
        }
        let session_stop = stop.clone();
        let attempt = async {
            let mut client = settings
                .connect()
                .await
                .map_err(|e| pg_failure(&settings, "connect", &e))?;
            ensure_schema(&client, &settings).await?;
            crate::office::ensure_schema(&mut client, SCHEMA_LOCK)
                .await
                .map_err(|e| pg_failure(&settings, "schema", &e))?;
            session(
                &app,
                &settings,
                client,
                &mut link,
                &mut backoff,
                session_stop,
            )
            .await
        };
        let outcome = tokio::select! {
            r = attempt => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        match outcome {
            Ok(()) => return,
            Err(f) => {
                app.metrics.replication.error(f.kind);
                if link != Link::Down {
                    let what = if link == Link::Up {
                        "replication: lost the central database"
                    } else {
                        "replication: cannot reach the central database"
                    };
                    tracing::warn!(
                        gateway_id = %settings.gateway_id,
                        kind = f.kind,
                        error = %f.message,
                        "{what}; retrying with backoff up to 30 s"
                    );
                    link = Link::Down;
                } else {
                    tracing::debug!(kind = f.kind, error = %f.message, "replication: attempt failed");
                }
            }
        }
        app.metrics.replication.observe(app.store.last_seq());
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Creates or upgrades the central schema under the advisory lock. Long because it is
/// the schema: its statements read top to bottom as the tables, indexes and upgrades
/// they make, in the one transaction that holds the lock.
async fn ensure_schema(client: &Client, s: &Settings) -> Result<(), Failure> {
    let f = |e: tokio_postgres::Error| pg_failure(s, "schema", &e);
    client.batch_execute("BEGIN").await.map_err(f)?;
    let result = async {
        client
            .execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
            .await
            .map_err(f)?;
        client
            .batch_execute(
                "CREATE SCHEMA IF NOT EXISTS fleetgroups;
                 CREATE TABLE IF NOT EXISTS fleetgroups.schema_version (
                     version integer PRIMARY KEY,
                     applied_at timestamptz NOT NULL DEFAULT now());",
            )
            .await
            .map_err(f)?;
        let row = client
            .query_one(
                "SELECT coalesce(max(version), 0) FROM fleetgroups.schema_version",
                &[],
            )
            .await
            .map_err(f)?;
        let found: i32 = row.get(0);
        if found > SCHEMA_VERSION {
            return Err(Failure {
                kind: "schema",
                message: format!(
                    "the central schema is version {found}, newer than this gateway knows ({SCHEMA_VERSION}); upgrade the gateway"
                ),
            });
        }
        if found < 1 {
            client
                .batch_execute(
                    "CREATE TABLE IF NOT EXISTS fleetgroups.gateways (
                         gateway_id text PRIMARY KEY,
                         store_id text NOT NULL,
                         applied_seq bigint NOT NULL,
                         applied_at timestamptz NOT NULL);
                     CREATE TABLE IF NOT EXISTS fleetgroups.groups (
                         gateway_id text NOT NULL,
                         account text NOT NULL,
                         id text NOT NULL,
                         name text NOT NULL,
                         description text,
                         devices text[] NOT NULL,
                         creation timestamptz NOT NULL,
                         last_modified timestamptz NOT NULL,
                         revision bigint,
                         PRIMARY KEY (gateway_id, account, id));
                     CREATE INDEX IF NOT EXISTS groups_devices_gin
                         ON fleetgroups.groups USING gin (devices);
                     CREATE TABLE IF NOT EXISTS fleetgroups.changes (
                         gateway_id text NOT NULL,
                         store_id text NOT NULL,
                         seq bigint NOT NULL,
                         time timestamptz NOT NULL,
                         op text NOT NULL,
                         account text NOT NULL,
                         id text NOT NULL,
                         user_name text NOT NULL,
                         PRIMARY KEY (gateway_id, store_id, seq));
                     INSERT INTO fleetgroups.schema_version (version) VALUES (1);",
                )
                .await
                .map_err(f)?;
        }
        Ok(())
    }
    .await;
    match result {
        Ok(()) => client.batch_execute("COMMIT").await.map_err(f),
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

/// The centre's row for this gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Central {
    store_id: String,
    applied_seq: u64,
}

async fn read_central(
    client: &Client,
    s: &Settings,
    for_update: bool,
) -> Result<Option<Central>, tokio_postgres::Error> {
    let sql = if for_update {
        "SELECT store_id, applied_seq FROM fleetgroups.gateways WHERE gateway_id = $1 FOR UPDATE"
    } else {
        "SELECT store_id, applied_seq FROM fleetgroups.gateways WHERE gateway_id = $1"
    };
    let row = client.query_opt(sql, &[&s.gateway_id]).await?;
    Ok(row.map(|r| Central {
        store_id: r.get(0),
        applied_seq: u64::try_from(r.get::<_, i64>(1)).unwrap_or(0),
    }))
}

/// Runs against one connection until it fails or `stop` turns true.
async fn session(
    app: &Arc<App>,
    s: &Settings,
    mut client: Client,
    link: &mut Link,
    backoff: &mut Duration,
    mut stop: watch::Receiver<bool>,
) -> Result<(), Failure> {
    let store_id = app.store.store_id().to_string();
    let mut announced = false;
    // Office groups are pulled on this connection: at once, then every pull_secs.
    let mut office = Office {
        puller: crate::office::Puller::default(),
        schedule: crate::office::Schedule::new(app.config.replication.pull_secs),
    };
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let central = read_central(&client, s, false)
            .await
            .map_err(|e| pg_failure(s, "apply", &e))?;
        if !announced {
            announced = true;
            *backoff = Duration::from_millis(500);
            if *link != Link::Up {
                tracing::info!(
                    gateway_id = %s.gateway_id,
                    applied_seq = central.as_ref().map(|c| c.applied_seq),
                    "replication: connected to the central database"
                );
                *link = Link::Up;
            }
        }
        let Some(cursor) = start_cursor(app, s, &mut client, central, &store_id).await? else {
            continue;
        };
        if stream(
            app,
            s,
            &mut client,
            &store_id,
            cursor,
            &mut stop,
            &mut office,
        )
        .await?
            == Streamed::Stopped
        {
            return Ok(());
        }
    }
}

/// Where streaming starts: the centre's `applied_seq` when it is this store's and the
/// feed still holds what follows it. Otherwise the centre is brought to a state it can
/// follow (a new gateway's row, or a resync) and None says to read it again.
async fn start_cursor(
    app: &Arc<App>,
    s: &Settings,
    client: &mut Client,
    central: Option<Central>,
    store_id: &str,
) -> Result<Option<u64>, Failure> {
    let purged = app.store.purged_through();
    let last = app.store.last_seq();
    match &central {
        None if purged == 0 => {
            // A new gateway whose feed holds its whole history: stream it all.
            client
                .execute(
                    "INSERT INTO fleetgroups.gateways (gateway_id, store_id, applied_seq, applied_at)
                     VALUES ($1, $2, 0, now()) ON CONFLICT (gateway_id) DO NOTHING",
                    &[&s.gateway_id, &store_id],
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
            resync(app, s, client, other.clone(), why).await?;
            Ok(None)
        }
    }
}

/// Why `stream` returned.
#[derive(Debug, PartialEq, Eq)]
enum Streamed {
    /// Shutdown.
    Stopped,
    /// The compare-and-set or the feed's retention says to read the centre again.
    LookAgain,
}

/// Streams batches from `cursor` until shutdown, or until the centre's state or the
/// feed's retention says to look again.
async fn stream(
    app: &Arc<App>,
    s: &Settings,
    client: &mut Client,
    store_id: &str,
    mut cursor: u64,
    stop: &mut watch::Receiver<bool>,
    office: &mut Office,
) -> Result<Streamed, Failure> {
    let stats = &app.metrics.replication;
    loop {
        if office.schedule.due() {
            office.pull(app, s, client).await?;
        }
        let last = app.store.last_seq();
        stats.observe(last);
        if last <= cursor {
            tokio::select! {
                _ = tokio::time::sleep(POLL) => continue,
                _ = stop.wait_for(|s| *s) => return Ok(Streamed::Stopped),
            }
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
            Err(StoreError::CursorExpired) => return Ok(Streamed::LookAgain),
            Err(e) => return Err(store_failure("store", &e)),
        };
        if page.next > last {
            // Never ship beyond what `durable` covered.
            continue;
        }
        if !apply_batch(client, s, store_id, cursor, &page).await? {
            return Ok(Streamed::LookAgain);
        }
        cursor = page.next;
        stats.applied(cursor, app.store.last_seq());
    }
}

/// The office pull of one session (`crate::office`).
struct Office {
    puller: crate::office::Puller,
    schedule: crate::office::Schedule,
}

impl Office {
    /// One pull round. A failure is counted and logged and the pull tried again after
    /// a backoff; it ends the session only when the connection is gone, so a problem
    /// with office groups alone never stops the push of this gateway's own changes.
    async fn pull(
        &mut self,
        app: &Arc<App>,
        s: &Settings,
        client: &mut Client,
    ) -> Result<(), Failure> {
        match self.puller.round(app, client, &s.gateway_id).await {
            Ok(_) => {
                self.schedule.pulled();
                Ok(())
            }
            Err(e) => {
                app.metrics.replication.error("office");
                self.schedule.failed();
                self.puller.reconnected();
                let message = s.scrub(e.to_string());
                if client.is_closed() {
                    return Err(Failure {
                        kind: "connect",
                        message,
                    });
                }
                tracing::warn!(error = %message, "office pull failed; trying again");
                Ok(())
            }
        }
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

/// One batch in one transaction. Ok(false): the compare-and-set found another state.
async fn apply_batch(
    client: &mut Client,
    s: &Settings,
    store_id: &str,
    prev: u64,
    page: &FeedPage,
) -> Result<bool, Failure> {
    let f = |e: tokio_postgres::Error| pg_failure(s, "apply", &e);
    let Rows {
        changes,
        upserts,
        deletes,
    } = rows_of(page).map_err(|e| store_failure("store", &e))?;
    let tx = client.transaction().await.map_err(f)?;
    let moved = tx
        .execute(
            "UPDATE fleetgroups.gateways SET applied_seq = $3, applied_at = now()
             WHERE gateway_id = $1 AND store_id = $2 AND applied_seq = $4",
            &[&s.gateway_id, &store_id, &to_i64(page.next), &to_i64(prev)],
        )
        .await
        .map_err(f)?;
    if moved != 1 {
        tx.rollback().await.map_err(f)?;
        return Ok(false);
    }
    if !deletes.is_empty() {
        tx.execute(
            "DELETE FROM fleetgroups.groups g USING jsonb_to_recordset($2::jsonb) AS r(account text, id text)
             WHERE g.gateway_id = $1 AND g.account = r.account AND g.id = r.id",
            &[&s.gateway_id, &Value::from(deletes)],
        )
        .await
        .map_err(f)?;
    }
    if !upserts.is_empty() {
        tx.execute(UPSERT, &[&s.gateway_id, &Value::from(upserts)])
            .await
            .map_err(f)?;
    }
    if !changes.is_empty() {
        tx.execute(
            "INSERT INTO fleetgroups.changes (gateway_id, store_id, seq, time, op, account, id, user_name)
             SELECT $1, $2, r.seq, r.time::timestamptz, r.op, r.account, r.id, r.user_name
             FROM jsonb_to_recordset($3::jsonb)
                 AS r(seq bigint, time text, op text, account text, id text, user_name text)",
            &[&s.gateway_id, &store_id, &Value::from(changes)],
        )
        .await
        .map_err(f)?;
    }
    tx.commit().await.map_err(f)?;
    Ok(true)
}

const UPSERT: &str = "INSERT INTO fleetgroups.groups
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

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A central row from a group's public JSON.
fn row_json(account: &str, group: &[u8], revision: Option<u64>) -> Result<Value, StoreError> {
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
async fn resync(
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
    let now = tx
        .query_opt(
            "SELECT store_id, applied_seq FROM fleetgroups.gateways WHERE gateway_id = $1 FOR UPDATE",
            &[&s.gateway_id],
        )
        .await
        .map_err(f)?
        .map(|r| Central {
            store_id: r.get(0),
            applied_seq: u64::try_from(r.get::<_, i64>(1)).unwrap_or(0),
        });
    if now != seen {
        tx.rollback().await.map_err(f)?;
        return Ok(());
    }
    tx.execute(
        "DELETE FROM fleetgroups.groups WHERE gateway_id = $1",
        &[&s.gateway_id],
    )
    .await
    .map_err(f)?;
    for chunk in rows.chunks(2000) {
        tx.execute(UPSERT, &[&s.gateway_id, &Value::from(chunk.to_vec())])
            .await
            .map_err(f)?;
    }
    tx.execute(
        "INSERT INTO fleetgroups.gateways (gateway_id, store_id, applied_seq, applied_at)
         VALUES ($1, $2, $3, now())
         ON CONFLICT (gateway_id) DO UPDATE SET store_id = EXCLUDED.store_id,
             applied_seq = EXCLUDED.applied_seq, applied_at = EXCLUDED.applied_at",
        &[&s.gateway_id, &store_id, &to_i64(snapshot.seq)],
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

#[cfg(test)]
mod tests {
    use super::*;

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
            let e = Settings::from_config(&cfg(url)).err().expect(url);
            assert!(e.starts_with(key), "{url}: {e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
        let mut c = cfg("postgresql://u@h/db");
        c.password_file = "/nonexistent/pw".into();
        let e = Settings::from_config(&c).err().expect("missing file");
        assert!(e.starts_with("replication.password_file"), "{e}");
    }
}
