//! What a replicator needs to reach the centre, checked once from `[replication]`, and
//! the connection itself: TCP keepalive (an idle link that died is noticed in about a
//! minute, not the kernel's two hours), `application_name` = `fleetgroups/<gateway_id>`
//! unless the URL names one, and a driver task that drops the server's NOTICEs (they
//! are never errors here, and the log is for state changes) and says when the
//! connection ends, so an idle session hears of a centre restart at once.
//! Secrets: the password comes from `password_file` or the URL and is never logged,
//! put in an error message, a metric or `check-config` (`pg_url::redact`).

use crate::pg_url::SettingError;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;
use tokio_postgres::{AsyncMessage, Client, Connection};

use crate::config::ReplicationConfig;
use crate::pg_url::SslMode;

/// Everything a replicator needs to connect, checked.
pub struct Settings {
    pg: tokio_postgres::Config,
    pub(super) ssl: SslMode,
    tls: Option<Arc<rustls::ClientConfig>>,
    pub gateway_id: String,
    pub batch_size: usize,
    /// Close the connection after this long with nothing to ship; None keeps it open.
    pub(super) idle_disconnect: Option<Duration>,
    /// How often a gateway reports that it is alive (before jitter).
    pub(super) heartbeat: Duration,
    /// `pull_secs`: office groups are pulled at least this often (jittered).
    pub(super) pull: Duration,
    /// Central `changes` older than this many days are pruned; 0 keeps them.
    pub(super) central_changes_days: u32,
    /// The password, to scrub it from any message that might echo it.
    password: Option<String>,
}

impl Settings {
    /// From `[replication]`; every problem names its key and never holds the password.
    pub fn from_config(r: &ReplicationConfig) -> Result<Settings, SettingError> {
        let (mut pg, url_password, ssl) = crate::pg_url::parse(&r.postgres_url, &r.ca_file)?;
        let mut password = url_password;
        if !r.password_file.is_empty() {
            let p = read_password(&r.password_file)?;
            pg.password(p.as_bytes());
            password = Some(p);
        }
        let gateway_id = r.effective_gateway_id();
        pg.connect_timeout(Duration::from_secs(10));
        // Probes after 30 s of silence, every 10 s, 3 unanswered: a dead link is
        // noticed within about a minute even when nothing is being sent.
        pg.keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .keepalives_interval(Duration::from_secs(10))
            .keepalives_retries(3);
        if pg.get_application_name().is_none() {
            pg.application_name(format!("fleetgroups/{gateway_id}"));
        }
        let tls = super::tls::config_for(ssl, &r.ca_file)?;
        pg.ssl_mode(match ssl {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        Ok(Settings {
            pg,
            ssl,
            tls,
            gateway_id,
            batch_size: usize::try_from(r.batch_size).unwrap_or(500),
            idle_disconnect: (r.idle_disconnect_secs > 0)
                .then(|| Duration::from_secs(r.idle_disconnect_secs)),
            heartbeat: Duration::from_secs(r.heartbeat_secs.max(1)),
            pull: Duration::from_secs(r.pull_secs.max(1)),
            central_changes_days: u32::try_from(r.central_changes_days).unwrap_or(u32::MAX),
            password,
        })
    }

    /// A message with the password (should anything echo it) replaced by `***`.
    pub(super) fn scrub(&self, msg: String) -> String {
        match &self.password {
            Some(p) if !p.is_empty() => msg.replace(p.as_str(), "***"),
            _ => msg,
        }
    }

    /// Connects, and drives the connection on its own task.
    pub(super) async fn connect(&self) -> Result<Conn, tokio_postgres::Error> {
        match &self.tls {
            None => {
                let (client, conn) = self.pg.connect(tokio_postgres::NoTls).await?;
                Ok(Conn::drive(client, conn))
            }
            Some(cfg) => {
                let tls = tokio_postgres_rustls::MakeRustlsConnect::new((**cfg).clone());
                let (client, conn) = self.pg.connect(tls).await?;
                Ok(Conn::drive(client, conn))
            }
        }
    }
}

fn read_password(path: &str) -> Result<String, SettingError> {
    const KEY: &str = "replication.password_file";
    let text = std::fs::read_to_string(path)
        .map_err(|e| SettingError::new(KEY, format!("cannot read {path}: {}", e.kind())))?;
    let p = text.trim_end_matches(['\n', '\r']).to_string();
    if p.is_empty() {
        return Err(SettingError::new(KEY, format!("{path} is empty")));
    }
    Ok(p)
}

/// An open connection: the client, and word of the connection's end.
pub(super) struct Conn {
    pub client: Client,
    /// Resolves with why the connection ended (the server went away, a read failed).
    pub ended: oneshot::Receiver<String>,
}

impl Conn {
    fn drive<S, T>(client: Client, mut conn: Connection<S, T>) -> Conn
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (tx, ended) = oneshot::channel();
        tokio::spawn(async move {
            let why = std::future::poll_fn(|cx| loop {
                match conn.poll_message(cx) {
                    Poll::Ready(Some(Ok(AsyncMessage::Notice(n)))) => {
                        tracing::trace!(notice = n.message(), "replication: server notice");
                    }
                    Poll::Ready(Some(Ok(_))) => {}
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(e.to_string()),
                    Poll::Ready(None) => {
                        return Poll::Ready("the server closed the connection".to_string())
                    }
                    Poll::Pending => return Poll::Pending,
                }
            })
            .await;
            let _ = tx.send(why);
        });
        Conn { client, ended }
    }
}
