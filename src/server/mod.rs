//! The accept loop and connection handling (hyper 1.x), and `run`, the `serve` command's
//! start-up sequence. `serve_http` is a function of its inputs — a bound listener, the app
//! state, an optional TLS acceptor and a shutdown future — so `run` passes a signal
//! future and tests pass a oneshot. Each connection holds a semaphore permit, so the
//! connection limit is a type, not a counter; at the limit, a waiting client closes the
//! longest-idle connection to make room (`http/conns.rs`). Accept errors (EMFILE) are
//! logged and retried after a pause, never fatal.
//!
//! Connections are served by one function generic over the IO type, so plain TCP and
//! TLS share everything after the handshake. The TLS handshake runs in the
//! connection's own task, bounded by `header_timeout_secs`, so a slow or silent client
//! never holds up the accept loop.
//!
//! Shutdown: mark the app stopping (`/readyz` → 503), stop accepting, close connections
//! that have not started a request, let in-flight requests finish within the grace
//! period (every permit back means drained), then flush counters and the store.

mod reload;
mod signals;
mod systemd;
pub(crate) mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::app::App;
use crate::config::{Config, Overrides};
use crate::http::conns::{self, ConnHandle, Conns};
use crate::server::systemd::Notifier;

/// The kernel send buffer of each client socket: what a client may leave unread in the
/// kernel before our writes block. 256 KiB keeps a LAN or a 50 ms link busy (5 MB/s) and
/// bounds what a thousand clients that never read can pin.
const SEND_BUFFER_BYTES: usize = 256 * 1024;

/// The `serve` command: checks the TLS files, opens the store, binds, tells systemd it
/// is ready and serves until SIGTERM/SIGINT. Exit codes: 0 after a clean shutdown, 1
/// when the store or the listener cannot be had or the final flush failed, 2 for a
/// configuration problem (the TLS files), 3 when the data directory needs the
/// operator (a damaged store, an interrupted restore, another format version). SIGHUP re-reads the configuration as
/// `overrides` and the environment give it (`reload.rs`).
pub fn run(config: Config, overrides: Overrides) -> ExitCode {
    let level = crate::log::init(&config.log.level, config.log.format);
    // First, so that even a start that fails says which build it was.
    tracing::info!(
        version = crate::build_info::VERSION,
        revision = crate::build_info::REVISION,
        target = crate::build_info::TARGET,
        "starting fleetgroups {}",
        crate::build_info::LONG
    );
    config.log_ignored_env();
    // Configuration problems first, before anything touches the data directory.
    let tls = match check_start_config(&config) {
        Ok(tls) => tls,
        Err(code) => return code,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(start_and_serve(config, overrides, tls, level))
}

/// The checks `run` makes before it touches the data directory: the TLS files, and
/// replication's password and CA files (the CLI's other commands never read those: they
/// may run as a user the credential is not for). Exit code 2 when they fail.
fn check_start_config(config: &Config) -> Result<Option<crate::server::tls::Tls>, ExitCode> {
    let tls = crate::server::tls::load(&config.tls).map_err(|e| {
        tracing::error!("{e}");
        ExitCode::from(2)
    })?;
    if config.replication.enabled() {
        if let Err(e) = crate::replication::Settings::from_config(&config.replication) {
            tracing::error!("configuration error: {e}");
            return Err(ExitCode::from(2));
        }
        // Once per start: the fallback itself happens inside the driver, unseen.
        if let Some(w) = crate::pg_url::sslmode_warning(&config.replication.postgres_url) {
            tracing::warn!("{w}");
        }
    }
    Ok(tls)
}

/// Inside the runtime: signals and the reload task, the store, the listener, the admin
/// socket, READY=1 and the watchdog; then serves until SIGTERM/SIGINT. One linear
/// sequence: each step that fails ends it with its exit code.
async fn start_and_serve(
    config: Config,
    overrides: Overrides,
    tls: Option<crate::server::tls::Tls>,
    level: crate::log::Level,
) -> ExitCode {
    let mut signals = match crate::server::signals::Signals::install() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install the signal handlers");
            return ExitCode::FAILURE;
        }
    };
    let acceptor = tls.as_ref().map(|t| t.acceptor.clone());
    let config_file = Config::file_from_env(&overrides);
    if let Some(reloads) = signals.reloads() {
        let reloader = crate::server::reload::Reloader::new(overrides, config.clone(), tls, level);
        tokio::spawn(reloader.run(reloads));
    }
    // The listener before the store: a first start that cannot listen must not leave
    // an admin and its key file behind for a server that never ran.
    let (listener, addr) = match bind(&config.listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(
                "{}",
                bind_failure(&config.listen, &e, config_file.as_deref())
            );
            return ExitCode::FAILURE;
        }
    };
    let app = match open_app(config) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let admin = match crate::ops::admin::start(&app).await {
        Ok(a) => a,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let stop_admin = admin.stopper();
    let scheme = if acceptor.is_some() { "https" } else { "http" };
    tracing::info!(data_dir = %app.config.data_dir.display(), "listening on {scheme}://{addr}");
    let stop_notifier = notify_ready(&app, &format!("{scheme}://{addr}"));
    let shutdown = async move {
        signals.shutdown().await;
        stop_admin();
        stop_notifier.stopping();
    };
    let served = serve_http(listener, app, acceptor, shutdown).await;
    admin.finished().await;
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

/// Tells systemd (when it listens) that the server is ready and starts the watchdog
/// pings, which follow the store's answers to reads.
fn notify_ready(app: &Arc<App>, url: &str) -> Arc<Notifier> {
    let notifier = Arc::new(Notifier::from_env());
    notifier.ready(&format!("serving on {url}"));
    let probed = Arc::clone(app);
    notifier.spawn_watchdog(move || probed.store_answers_reads());
    notifier
}

/// Opens the app (the store, auth, usage) for `serve`, with the hint a data directory
/// of another user needs; sets the last-backup gauge from the data directory, which
/// the app, below the backup code, does not read.
fn open_app(config: Config) -> Result<Arc<App>, ExitCode> {
    let data_dir = config.data_dir.clone();
    let app = match App::open(config) {
        Ok(a) => Arc::new(a),
        Err(e) => {
            // Root can use any directory: the hint is for a user that cannot.
            let blocked = !rustix::process::geteuid().is_root();
            match crate::perms::foreign_owner(&data_dir).filter(|_| blocked) {
                Some(f) => tracing::error!(
                    "{e}\n{} belongs to {}, but the server runs as {} and cannot use it. Nothing was changed. Run it as the owner:\n  {}\nor, if {} should own it:\n  {}",
                    data_dir.display(),
                    f.owner,
                    f.me,
                    f.run_as_owner,
                    f.me,
                    f.chown_to_me
                ),
                None => tracing::error!("{e}"),
            }
            return Err(if e.needs_operator {
                ExitCode::from(3)
            } else {
                ExitCode::FAILURE
            });
        }
    };
    if let Some(ms) = crate::ops::backup::last_success(&data_dir) {
        app.backup_last_success_ms.store(ms, Ordering::Relaxed);
    }
    Ok(app)
}

/// Serves the HTTP API on `listener` until `shutdown` resolves, then drains and closes
/// the store. With `tls`, every connection must complete a TLS handshake first (HTTPS
/// only). Returns Err when the final flush failed.
pub async fn serve_http(
    listener: TcpListener,
    app: Arc<App>,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), String> {
    crate::app::spawn_upkeep(&app);
    let (stop_replication, replication_stopped) = watch::channel(false);
    let replication = crate::replication::spawn(&app, replication_stopped);
    let limits = &app.config.limits;
    // Bounded so that `acquire_many` below can name every permit.
    let max = u32::try_from(limits.max_connections)
        .unwrap_or(u32::MAX)
        .min(1 << 20);
    app.metrics
        .conns
        .max
        .store(u64::from(max), std::sync::atomic::Ordering::Relaxed);
    let (stop_tx, stop_rx) = watch::channel(false);
    let accept = Acceptor {
        permits: Arc::new(Semaphore::new(max as usize)),
        conns: Conns::new(Arc::clone(&app.metrics.conns)),
        builder: http1_builder(limits),
        write_timeout: Duration::from_secs(limits.write_timeout_secs),
        min_read_rate: limits.min_read_bytes_per_sec,
        handshake_timeout: Duration::from_secs(limits.header_timeout_secs),
        tls,
        stop: stop_rx,
    };
    tokio::pin!(shutdown);
    accept.run(&listener, &app, &mut shutdown).await?;
    app.begin_stop();
    drop(listener);
    tracing::info!("shutting down: no new connections; waiting for in-flight requests");
    let _ = stop_tx.send(true);
    let grace = Duration::from_secs(app.config.shutdown_grace_secs);
    // Replication stops at once (an interrupted batch is simply redone at the next
    // start); it must be gone before the store closes.
    let _ = stop_replication.send(true);
    if let Some(task) = replication {
        stop_replication_task(task, grace.min(Duration::from_secs(5))).await;
    }
    accept.drain(max, grace).await;
    let app2 = Arc::clone(&app);
    let closed = tokio::task::spawn_blocking(move || app2.close())
        .await
        .map_err(|e| e.to_string())?;
    match &closed {
        Ok(()) => tracing::info!("store flushed; bye"),
        Err(e) => tracing::error!(error = %e.chain(), "final flush failed"),
    }
    closed.map_err(|e| e.chain())
}

/// Waits up to `wait` for the replication task to end, then aborts it.
async fn stop_replication_task(mut task: tokio::task::JoinHandle<()>, wait: Duration) {
    if tokio::time::timeout(wait, &mut task).await.is_err() {
        task.abort();
        let _ = task.await;
    }
}

/// hyper's connection settings.
fn http1_builder(limits: &crate::config::LimitsConfig) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(limits.header_timeout_secs))
        .keep_alive(true)
        // A hard cap on the request head (hyper's `max_buf_size` alone is not one: a
        // head read in one go may exceed it); past it, hyper answers 431 and closes.
        .max_header_size(16 * 1024)
        .max_buf_size(64 * 1024);
    builder
}

/// The accept loop's state: the connection limit, the table of open connections and
/// what each connection is served with.
struct Acceptor {
    /// One per connection: all of them back means drained.
    permits: Arc<Semaphore>,
    conns: Arc<Conns>,
    builder: http1::Builder,
    write_timeout: Duration,
    /// `limits.min_read_bytes_per_sec`.
    min_read_rate: u64,
    handshake_timeout: Duration,
    tls: Option<TlsAcceptor>,
    /// Turns true when shutdown begins (closes connections that never started a request).
    stop: watch::Receiver<bool>,
}

impl Acceptor {
    /// Accepts connections until `shutdown` resolves. Accept errors (EMFILE) are logged
    /// and retried after a pause.
    async fn run(
        &self,
        listener: &TcpListener,
        app: &Arc<App>,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> Result<(), String> {
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed; retrying");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut *shutdown => return Ok(()),
            };
            let Some(permit) = self.permit(shutdown).await? else {
                return Ok(());
            };
            self.spawn_connection(stream, peer, permit, app);
        }
    }

    /// Waits up to `grace` for every connection to end: each holds a permit until it
    /// does, so all `max` permits back means drained.
    async fn drain(&self, max: u32, grace: Duration) {
        if tokio::time::timeout(grace, self.permits.acquire_many(max))
            .await
            .is_err()
        {
            tracing::warn!(
                open = self.conns.len(),
                "grace period over; closing remaining connections"
            );
        }
    }

    /// A connection permit, taken after accept so that a client waiting at the limit
    /// can be seen: it makes room by closing the longest-idle connection
    /// (http/conns.rs). When every connection is inside a request, it waits for one to
    /// finish, asking again every 100 ms: a connection may have stalled (its client
    /// stopped reading) since. None when shutdown came first.
    async fn permit(
        &self,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> Result<Option<OwnedSemaphorePermit>, String> {
        if let Ok(p) = Arc::clone(&self.permits).try_acquire_owned() {
            return Ok(Some(p));
        }
        loop {
            if self.conns.make_room() {
                tracing::debug!("connection limit reached; closing a connection to make room");
            }
            tokio::select! {
                p = Arc::clone(&self.permits).acquire_owned() => match p {
                    Ok(p) => return Ok(Some(p)),
                    Err(_) => return Err("the connection semaphore closed".into()),
                },
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
                () = &mut *shutdown => return Ok(None),
            }
        }
    }

    /// Registers the connection and serves it on its own task (the TLS handshake
    /// included, so a slow client never holds up the accept loop).
    fn spawn_connection(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        permit: OwnedSemaphorePermit,
        app: &Arc<App>,
    ) {
        let _ = stream.set_nodelay(true);
        // Bounded kernel memory per client: left to autotuning, a socket whose client
        // reads nothing holds up to `tcp_wmem`'s maximum (4 MiB by default) of answers,
        // 4 GiB at the connection limit. (Linux doubles the value for its bookkeeping.)
        let _ = rustix::net::sockopt::set_socket_send_buffer_size(&stream, SEND_BUFFER_BYTES / 2);
        let handle = Arc::new(self.conns.register(permit));
        // Watched below TLS, so a client that stops reading is seen the same way on
        // both transports (and during the handshake).
        let stream = handle.watch(stream, self.write_timeout, self.min_read_rate);
        let builder = self.builder.clone();
        let app = Arc::clone(app);
        let tls = self.tls.clone();
        let stop = self.stop.clone();
        let handshake_timeout = self.handshake_timeout;
        tokio::spawn(async move {
            // The registration (with the permit) lives as long as the connection.
            let Some(acceptor) = tls else {
                serve_connection(&builder, &handle, stop, stream, app, peer).await;
                return;
            };
            let handshake = tokio::time::timeout(handshake_timeout, acceptor.accept(stream));
            tokio::select! {
                done = handshake => match done {
                    Ok(Ok(stream)) => {
                        serve_connection(&builder, &handle, stop, stream, app, peer).await;
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
                    }
                    Err(_) => tracing::debug!(peer = %peer, "TLS handshake timed out"),
                },
                // Evicted at the connection limit before it sent anything.
                () = handle.state.evicted() => {}
            }
        });
    }
}

/// Serves HTTP/1.1 on one connection of any transport until it closes, is evicted at
/// the connection limit, or the server shuts down (see `http/conns.rs`).
async fn serve_connection<S>(
    builder: &http1::Builder,
    handle: &Arc<ConnHandle>,
    stop: watch::Receiver<bool>,
    stream: S,
    app: Arc<App>,
    peer: SocketAddr,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let requests = Arc::clone(handle);
    let service = service_fn(move |req| {
        let app = Arc::clone(&app);
        let requests = Arc::clone(&requests);
        async move {
            // A pipelined request waits while the answers before it are stuck.
            requests.drained().await;
            let guard = requests.begin_request();
            let response = crate::http::handle(app, req, peer).await;
            drop(guard);
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    if let Err(e) = conns::run(conn, &handle.state, stop).await {
        tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
    }
}

/// Binds the configured address.
/// What to do when the listen address cannot be had: the address, why, and the three
/// places the setting comes from (flag, variable, file), naming the file in use.
fn bind_failure(addr: &str, e: &std::io::Error, file: Option<&std::path::Path>) -> String {
    let why = match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            "Another process (another fleetgroups?) listens there already: stop it, or choose another address. "
        }
        std::io::ErrorKind::PermissionDenied => {
            "A port below 1024 needs CAP_NET_BIND_SERVICE (a drop-in, docs/operations/install.md), or choose another port. "
        }
        std::io::ErrorKind::AddrNotAvailable => "This machine has no such address. ",
        _ => "",
    };
    let key = match file {
        Some(f) => format!("`listen` in {}", f.display()),
        None => "`listen` in the configuration file".to_string(),
    };
    format!(
        "cannot listen on {addr}: {e}. {why}The address is set with --listen ADDR, FLEETGROUPS_LISTEN=ADDR or {key}. Nothing was written to the data directory."
    )
}

pub async fn bind(addr: &str) -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

#[cfg(test)]
mod tests {
    //! In-process, because it must look at `/readyz` from inside: once shutdown begins
    //! the listener is closed and idle connections are closed, so no client could ask.

    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpStream;

    async fn exchange(addr: SocketAddr, request: String) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readyz_turns_503_while_in_flight_requests_drain() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            data_dir: dir.path().join("data"),
            ..Config::default()
        };
        let app = Arc::new(App::open(config).unwrap());
        let (listener, addr) = bind("127.0.0.1:0").await.unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_http(listener, Arc::clone(&app), None, async {
            let _ = stopped.await;
        }));
        assert!(crate::api::ops::readyz(&app).is_ok());

        let key = std::fs::read_to_string(dir.path().join("data/initial-api-key")).unwrap();
        let login = format!("{{\"userName\":\"admin\",\"apiKey\":\"{}\"}}", key.trim());
        let answer = exchange(addr, format!(
            "POST /api/Auth/Token HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{login}",
            login.len()
        ))
        .await;
        let json = answer.split("\r\n\r\n").nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        let token = v["token"].as_str().unwrap().to_string();

        // A create whose body is still coming: 100 Continue says the handler waits for it.
        let body = r#"{"name":"late"}"#;
        let mut slow = BufReader::new(TcpStream::connect(addr).await.unwrap());
        slow.get_mut().write_all(format!(
            "POST /api/groups HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
            body.len()
        ).as_bytes()).await.unwrap();
        let mut line = String::new();
        slow.read_line(&mut line).await.unwrap();
        assert!(line.starts_with("HTTP/1.1 100"), "{line:?}");

        stop.send(()).unwrap();
        while !app.is_stopping() {
            tokio::task::yield_now().await;
        }
        let refused = crate::api::ops::readyz(&app).err().unwrap();
        assert_eq!(refused.status(), 503);
        assert!(
            !server.is_finished(),
            "the server must wait for the in-flight request"
        );

        slow.get_mut().write_all(body.as_bytes()).await.unwrap();
        let mut rest = String::new();
        slow.read_to_string(&mut rest).await.unwrap();
        assert!(rest.contains("HTTP/1.1 201"), "{rest}");
        server.await.unwrap().unwrap();
    }
}
