//! The admin socket: how `fleetgroups user …` and `fleetgroups backup` reach a running
//! server (docs/operations/running.md "Users and keys"). A Unix domain socket at `Config::admin_socket()`, mode
//! 0600, that only answers peers whose uid (`SO_PEERCRED`) is the server's own; anyone
//! else is refused and logged.
//!
//! Protocol, version 1: the client sends one JSON line and reads one JSON line back.
//!
//! ```text
//! → {"v":1,"command":{"cmd":"user-set","name":"ci","role":"read","dailyLimit":{"limit":null},"disabled":null}}
//! ← {"v":1,"code":0,"stdout":"","stderr":"updated ci: role read, daily limit none, disabled false\n"}
//! ```
//!
//! The answer carries the exact stdout, stderr and exit code the command has when the
//! server is stopped: both paths run [`execute`], so they cannot drift apart. A new API
//! key travels only in `stdout`; nothing here logs stdout, so keys are never logged.
//!
//! The CLI side ([`request`]) decides: a socket that answers is used; no socket, or one
//! nobody listens on, means the server is not running and the CLI opens the store. It
//! checks the server too: the socket's peer (`SO_PEERCRED`) must be the data
//! directory's owner or root ([`TrustedPeer`]), or nothing is sent and the command
//! fails (exit 1) naming the uid that answered.

use std::future::Future;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use crate::app::App;
use crate::auth::user_manager::{
    render_key_json, render_list, render_list_json, NewKey, UserChanges, UserManager,
};
use crate::store::users::Role;
use crate::store::users::UserRecord;
use crate::store::Store;
use crate::time::Clock;

/// The log target, kept from before the module moved into a folder: `log.level`
/// directives name it (`fleetgroups::admin=debug`), so a move must not change it.
const LOG: &str = "fleetgroups::admin";

/// The protocol version this binary speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Longest request line accepted.
const MAX_REQUEST_BYTES: u64 = 64 * 1024;

/// One request line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub v: u32,
    pub command: Command,
}

/// One answer line: what the CLI prints and exits with.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outcome {
    pub v: u32,
    pub code: u8,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    fn ok(stdout: String, stderr: String) -> Outcome {
        Outcome {
            v: PROTOCOL_VERSION,
            code: 0,
            stdout,
            stderr,
        }
    }

    /// A failed command: `fleetgroups: <why>` on stderr, exit code 1 (or 2 for usage).
    pub fn failed(code: u8, why: impl std::fmt::Display) -> Outcome {
        Outcome {
            v: PROTOCOL_VERSION,
            code,
            stdout: String::new(),
            stderr: format!("fleetgroups: {why}\n"),
        }
    }
}

/// A new daily limit for `user set`: `{"limit": N}` or `{"limit": null}` (use the
/// configured default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitChange {
    pub limit: Option<u64>,
}

/// How a command prints its result. `text` is left out of a request, so a text
/// request is byte for byte what it was before `--output` existed and older servers
/// still take it; a `json` request to an older server is refused as a bad request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Output {
    #[default]
    Text,
    Json,
}

impl Output {
    fn is_text(&self) -> bool {
        *self == Output::Text
    }
}

/// The commands that work the same with the server running or stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Command {
    #[serde(rename_all = "camelCase")]
    UserAdd {
        name: String,
        account: String,
        role: Role,
        daily_limit: Option<u64>,
        #[serde(default, skip_serializing_if = "Output::is_text")]
        output: Output,
    },
    UserList {
        #[serde(default, skip_serializing_if = "Output::is_text")]
        output: Output,
    },
    UserRotateKey {
        name: String,
        #[serde(default, skip_serializing_if = "Output::is_text")]
        output: Output,
    },
    #[serde(rename_all = "camelCase")]
    UserSet {
        name: String,
        role: Option<Role>,
        daily_limit: Option<LimitChange>,
        disabled: Option<bool>,
    },
    UserRemove {
        name: String,
    },
    /// `file` is absolute: the server's working directory is not the client's.
    Backup {
        file: PathBuf,
    },
    /// `backup --dir DIR [--keep N]`: a new timestamped file in `dir` (absolute), then
    /// the oldest beyond `keep` removed (absent: none). A command of its own, so the
    /// `backup` line an older client sends is unchanged.
    BackupDir {
        dir: PathBuf,
        keep: Option<u64>,
    },
}

impl Command {
    /// The command's name, for the log.
    fn name(&self) -> &'static str {
        match self {
            Command::UserAdd { .. } => "user add",
            Command::UserList { .. } => "user list",
            Command::UserRotateKey { .. } => "user rotate-key",
            Command::UserSet { .. } => "user set",
            Command::UserRemove { .. } => "user remove",
            Command::Backup { .. } | Command::BackupDir { .. } => "backup",
        }
    }

    /// The user it is about, for the log.
    fn subject(&self) -> &str {
        match self {
            Command::UserAdd { name, .. }
            | Command::UserRotateKey { name, .. }
            | Command::UserSet { name, .. }
            | Command::UserRemove { name } => name,
            Command::UserList { .. } | Command::Backup { .. } | Command::BackupDir { .. } => "-",
        }
    }
}

/// Runs a command against a store — the running server's (`live`) or one the CLI
/// opened — and returns what to print. Blocking (argon2, fsync).
// Long because it is one match arm per admin command, each a call and its message.
pub fn execute(command: &Command, store: &Store, live: Option<&App>) -> Outcome {
    let clock = live.map_or_else(Clock::system, |app| app.clock.clone());
    let admin = match live {
        Some(app) => UserManager::live(&app.store, &app.auth, &app.usage, clock.clone()),
        None => UserManager::offline(store, clock.clone()),
    };
    let result = match command {
        Command::UserAdd {
            name,
            account,
            role,
            daily_limit,
            output,
        } => admin.add(name, account, *role, *daily_limit).map(|new| {
            key_outcome(&new, *output, format!("created user {name} (account {account}, role {role}); the line above is its API key, shown only now\n"))
        }),
        Command::UserList { output } => admin.list().map(|rows| {
            let stdout = match output {
                Output::Text => render_list(&rows),
                Output::Json => render_list_json(&rows),
            };
            Outcome::ok(stdout, String::new())
        }),
        Command::UserRotateKey { name, output } => admin.rotate_key(name).map(|new| {
            key_outcome(
                &new,
                *output,
                format!(
                    "rotated the key of {name}; the old key and its tokens no longer work\n{}",
                    forget_initial_key(&data_dir_of(store, live), name)
                ),
            )
        }),
        Command::UserSet {
            name,
            role,
            daily_limit,
            disabled,
        } => {
            let changes = UserChanges {
                role: *role,
                daily_limit: daily_limit.map(|c| c.limit),
                disabled: *disabled,
            };
            admin.set(name, &changes).map(|u| updated_outcome(name, &u))
        }
        Command::UserRemove { name } => admin.remove(name).map(|()| {
            Outcome::ok(
                String::new(),
                format!(
                    "removed user {name}; its account's groups stay\n{}",
                    forget_initial_key(&data_dir_of(store, live), name)
                ),
            )
        }),
        Command::Backup { file } => return backup_to_file(store, live, file, &clock),
        Command::BackupDir { dir, keep } => {
            return backup_to_dir(store, live, dir, *keep, &clock);
        }
    };
    result.unwrap_or_else(|e| Outcome::failed(1, e))
}

/// Once the first user's key is rotated or the user removed, the first start's key
/// file holds a key that no longer works: it is removed, and the line returned (for
/// stderr) says so. Removed rather than rewritten: the new key is printed once, like
/// every other user's, and a key in a plain file is a risk kept no longer than needed.
fn forget_initial_key(data_dir: &Path, name: &str) -> String {
    if name != crate::app::FIRST_USER {
        return String::new();
    }
    let path = data_dir.join(crate::store::KEY_FILE);
    // Named as the operator can find it: the server's data directory may be relative
    // to its own working directory.
    let path = std::path::absolute(&path).unwrap_or(path);
    match std::fs::remove_file(&path) {
        Ok(()) => format!(
            "removed {}: it held the old key of {name}\n",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => format!(
            "fleetgroups: warning: {} holds the old key of {name}, which no longer works, and cannot be removed ({e}): remove it\n",
            path.display()
        ),
    }
}

/// The data directory of `store`: the running server's, or the one the CLI opened.
fn data_dir_of(store: &Store, live: Option<&App>) -> std::path::PathBuf {
    match live {
        Some(app) => app.config.data_dir.clone(),
        // The store lives in `<data_dir>/store`.
        None => store
            .dir()
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
    }
}

/// A new key: alone on stdout (or as JSON), what happened on stderr.
fn key_outcome(new: &NewKey, output: Output, stderr: String) -> Outcome {
    let stdout = match output {
        Output::Text => format!("{}\n", new.key),
        Output::Json => render_key_json(new),
    };
    Outcome::ok(stdout, stderr)
}

/// `user set`'s answer: the user's settings as they are now.
fn updated_outcome(name: &str, u: &UserRecord) -> Outcome {
    Outcome::ok(
        String::new(),
        format!(
            "updated {name}: role {}, daily limit {}, disabled {}\n",
            u.role,
            u.daily_limit
                .map_or_else(|| "none".to_string(), |l| l.to_string()),
            u.disabled
        ),
    )
}

/// `backup FILE`.
fn backup_to_file(store: &Store, live: Option<&App>, file: &Path, clock: &Clock) -> Outcome {
    if let Some(app) = live {
        // The counters live in memory; the backup should have the latest.
        app.persist_usage();
    }
    match crate::ops::backup::write(store, file, clock) {
        Ok(counts) => Outcome::ok(
            String::new(),
            format!(
                "wrote a backup of {counts} to {}\n{}",
                file.display(),
                backed_up(store, live, file, clock)
            ),
        ),
        Err(e) => Outcome::failed(1, format!("backup failed: {e}")),
    }
}

/// `backup --dir DIR [--keep N]`: the new file's path alone on stdout.
fn backup_to_dir(
    store: &Store,
    live: Option<&App>,
    dir: &Path,
    keep: Option<u64>,
    clock: &Clock,
) -> Outcome {
    if let Some(app) = live {
        app.persist_usage();
    }
    let done = match crate::ops::backup::write_to_dir(store, dir, keep, clock) {
        Ok(done) => done,
        Err(e) => return Outcome::failed(1, format!("backup failed: {e}")),
    };
    let mut stderr = format!(
        "wrote a backup of {} to {}\n",
        done.counts,
        done.file.display()
    );
    for old in &done.removed {
        stderr.push_str(&format!("removed the old backup {}\n", old.display()));
    }
    stderr.push_str(&backed_up(store, live, &done.file, clock));
    // The path alone on stdout, for scripts (`FILE=$(fleetgroups backup --dir …)`).
    let stdout = format!("{}\n", done.file.display());
    match done.rotate_error {
        None => Outcome::ok(stdout, stderr),
        // The new backup is complete; but left alone the directory fills the
        // disk, so the timer's run should show as failed.
        Some(e) => Outcome {
            code: 1,
            stdout,
            stderr: format!(
                "{stderr}fleetgroups: the backup is complete, but removing old backups failed: {e}\n"
            ),
            ..Outcome::default()
        },
    }
}

/// Records a successful backup for `/metrics` (in the running server's memory and in
/// the data directory's state file, which a restarted server reads); returns a
/// warning for stderr when the file could not be written (the backup itself is fine).
fn backed_up(store: &Store, live: Option<&App>, file: &Path, clock: &Clock) -> String {
    let data_dir = data_dir_of(store, live);
    let (ms, warning) = match crate::ops::backup::record_success(&data_dir, file, clock) {
        Ok(ms) => (ms, String::new()),
        Err(e) => (
            clock.wall_ms(),
            format!("fleetgroups: warning: {e}; after a restart the server will not know of this backup\n"),
        ),
    };
    if let Some(app) = live {
        app.backup_last_success_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }
    warning
}

// ---------------------------------------------------------------------------------
// Client (the CLI).

/// Why the CLI could not get an answer over the socket.
#[derive(Debug)]
pub enum ClientError {
    /// Nothing listens there: the server is not running (or has no socket yet).
    NotRunning(String),
    /// Something listens but the exchange failed; the server may be running.
    Failed(String),
}

/// Who may answer on the admin socket: the data directory's owner (the uid the server
/// runs as) and root. Anyone else who can put a socket at that path (a shared
/// directory, a socket left behind) could otherwise answer `user rotate-key` with a
/// fake key while the old one stays valid, or `backup` with a success and no file.
#[derive(Debug, Clone)]
pub struct TrustedPeer {
    /// The data directory's owner (or, with no data directory yet, the CLI's own uid).
    pub owner: u32,
    /// What that owner is called.
    pub what: String,
}

/// Checks the socket's peer (`SO_PEERCRED`: the uid of the process that listens)
/// against `trusted`, before anything is sent.
fn check_peer(
    stream: &std::os::unix::net::UnixStream,
    socket: &Path,
    trusted: &TrustedPeer,
) -> Result<(), ClientError> {
    let cred = rustix::net::sockopt::socket_peercred(stream).map_err(|e| {
        ClientError::Failed(format!(
            "admin socket {}: cannot tell who answers on it ({e}); nothing was sent",
            socket.display()
        ))
    })?;
    let uid = cred.uid.as_raw();
    if uid == trusted.owner || uid == 0 {
        return Ok(());
    }
    Err(ClientError::Failed(format!(
        "refused the admin socket {}: it is answered by {} (pid {}), not by {} or root, so its answer cannot be trusted and the command was not sent. Check admin.socket: another user may have put a socket there",
        socket.display(),
        crate::perms::who(uid),
        cred.pid.as_raw_nonzero(),
        trusted.what,
    )))
}

/// Sends one command to a running server and returns its answer. The server must be
/// `trusted` ([`TrustedPeer`]): anyone else is refused before the command is sent.
pub fn request(
    socket: &Path,
    command: &Command,
    trusted: &TrustedPeer,
) -> Result<Outcome, ClientError> {
    let mut stream = std::os::unix::net::UnixStream::connect(socket).map_err(|e| {
        ClientError::NotRunning(format!("cannot connect to {}: {e}", socket.display()))
    })?;
    check_peer(&stream, socket, trusted)?;
    let failed =
        |e: std::io::Error| ClientError::Failed(format!("admin socket {}: {e}", socket.display()));
    // A backup of a big store takes a while; anything else answers within seconds.
    let patience = match command {
        Command::Backup { .. } | Command::BackupDir { .. } => Duration::from_secs(3600),
        _ => Duration::from_secs(120),
    };
    stream.set_read_timeout(Some(patience)).map_err(failed)?;
    let mut line = serde_json::to_vec(&Request {
        v: PROTOCOL_VERSION,
        command: command.clone(),
    })
    .map_err(|e| ClientError::Failed(e.to_string()))?;
    line.push(b'\n');
    // A server that refuses us (another uid) answers and closes without reading, so the
    // write may fail with a broken pipe while the answer is already waiting: read it.
    let written = stream.write_all(&line);
    let mut answer = String::new();
    let read = BufReader::new(stream).read_line(&mut answer);
    if answer.is_empty() {
        written.map_err(failed)?;
        read.map_err(failed)?;
    }
    if answer.is_empty() {
        return Err(ClientError::Failed(format!(
            "admin socket {}: the server closed the connection without answering",
            socket.display()
        )));
    }
    serde_json::from_str::<Outcome>(&answer).map_err(|e| {
        ClientError::Failed(format!(
            "admin socket {}: unreadable answer ({e})",
            socket.display()
        ))
    })
}

// ---------------------------------------------------------------------------------
// Server.

/// A bound admin socket, ready to serve.
pub struct AdminSocket {
    listener: UnixListener,
    path: PathBuf,
    /// (device, inode) of the socket file we created, so we only ever remove our own.
    identity: (u64, u64),
    own_uid: u32,
}

impl AdminSocket {
    /// Where it listens.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Why the admin socket could not be set up (the start stops with this message).
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("{} exists and is not a socket; remove it or set admin.socket to another path", .0.display())]
    NotASocket(std::path::PathBuf),
    #[error("another process answers on the admin socket {}; is another fleetgroups using it? Stop it or set admin.socket to another path", .0.display())]
    InUse(std::path::PathBuf),
    /// A file operation on the socket `path` failed `during` this step.
    #[error("cannot {during} {}: {source}", path.display())]
    Io {
        during: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Binds the admin socket at `path`. A socket file left by a crashed run is removed
/// only when nothing answers on it; a live one, or a file that is not a socket, stops
/// the start with a message.
pub async fn bind(path: &Path) -> Result<AdminSocket, SocketError> {
    let io = |during: &'static str| {
        move |source| SocketError::Io {
            during,
            path: path.to_path_buf(),
            source,
        }
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(SocketError::NotASocket(path.to_path_buf()));
        }
        match UnixStream::connect(path).await {
            Ok(_) => return Err(SocketError::InUse(path.to_path_buf())),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                std::fs::remove_file(path).map_err(io("remove the stale admin socket"))?;
                tracing::info!(target: LOG, path = %path.display(), "removed a stale admin socket left by an earlier run");
            }
            Err(e) => return Err(io("check the existing admin socket")(e)),
        }
    }
    let listener = UnixListener::bind(path).map_err(io("create the admin socket"))?;
    // The peer-uid check below is what keeps others out; the mode is a second fence.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io("set the mode of"))?;
    let meta = std::fs::metadata(path).map_err(io("stat"))?;
    // Our uid without `unsafe`: the owner of /proc/self is the process's effective uid;
    // without /proc, the owner of the socket file we just created is the same.
    let own_uid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(meta.uid());
    Ok(AdminSocket {
        listener,
        path: path.to_path_buf(),
        identity: (meta.dev(), meta.ino()),
        own_uid,
    })
}

/// Where the admin socket is in the server's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Commands are run.
    Serving,
    /// Shutdown has begun: every new command is answered "the server is stopping"
    /// (exit 1), so the CLI neither waits on a server that will not run it nor opens
    /// a store the server still holds and says "wait for the server to finish
    /// starting".
    Stopping,
    /// The server is done with the store: the socket goes.
    Closed,
}

/// The running admin socket task, as `server::run` holds it.
pub struct Running {
    stop: tokio::sync::watch::Sender<Phase>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Something to call when shutdown begins; the socket stops taking commands (it
    /// answers that the server is stopping until [`Running::finished`]).
    pub fn stopper(&self) -> impl FnOnce() + Send + 'static {
        let stop = self.stop.clone();
        move || {
            stop.send_if_modified(|p| {
                let moved = *p < Phase::Stopping;
                if moved {
                    *p = Phase::Stopping;
                }
                moved
            });
        }
    }

    /// Closes the socket once the commands in flight are done, and removes its file.
    pub async fn finished(self) {
        let _ = self.stop.send(Phase::Closed);
        let _ = self.task.await;
    }
}

/// Binds the admin socket and serves it on its own task until stopped. Call it before
/// "listening" is logged, so a CLI started after that line always finds the socket.
pub async fn start(app: &Arc<App>) -> Result<Running, SocketError> {
    let socket = bind(&app.config.admin_socket()).await?;
    tracing::info!(target: LOG, path = %socket.path().display(), "admin socket ready");
    let (stop, phase) = tokio::sync::watch::channel(Phase::Serving);
    let mut closed = phase.clone();
    let task = tokio::spawn(serve_socket(socket, Arc::clone(app), phase, async move {
        let _ = closed.wait_for(|p| *p == Phase::Closed).await;
    }));
    Ok(Running { stop, task })
}

/// Serves admin connections until `shutdown` resolves (answering that the server is
/// stopping once `phase` says so), lets the ones in flight finish (bounded), then
/// removes the socket file if it is still ours.
pub async fn serve_socket(
    socket: AdminSocket,
    app: Arc<App>,
    phase: tokio::sync::watch::Receiver<Phase>,
    shutdown: impl Future<Output = ()>,
) {
    let mut running = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = socket.listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let app = Arc::clone(&app);
                    let stopping = *phase.borrow() != Phase::Serving;
                    running.spawn(connection(stream, app, socket.own_uid, stopping));
                }
                Err(e) => {
                    tracing::warn!(target: LOG, error = %e, "admin socket: accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = running.join_next(), if !running.is_empty() => {}
            () = &mut shutdown => break,
        }
    }
    drop(socket.listener);
    let drain = async { while running.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(30), drain)
        .await
        .is_err()
    {
        tracing::warn!(target: LOG, "admin socket: commands still running at shutdown were abandoned");
    }
    let still_ours = std::fs::symlink_metadata(&socket.path)
        .is_ok_and(|m| (m.dev(), m.ino()) == socket.identity);
    if still_ours {
        if let Err(e) = std::fs::remove_file(&socket.path) {
            tracing::warn!(target: LOG, path = %socket.path.display(), error = %e, "cannot remove the admin socket");
        }
    }
}

/// One admin connection: check the peer, read one request, answer it (while
/// `stopping`, with "the server is stopping" whatever it asks).
async fn connection(mut stream: UnixStream, app: Arc<App>, own_uid: u32, stopping: bool) {
    let peer = stream.peer_cred();
    let peer_uid = peer.as_ref().map(|c| c.uid()).ok();
    if peer_uid != Some(own_uid) {
        let pid = peer.as_ref().ok().and_then(|c| c.pid());
        tracing::warn!(target: LOG,
            peer_uid = ?peer_uid,
            peer_pid = ?pid,
            server_uid = own_uid,
            "admin socket: refused a connection from another user"
        );
        let answer = Outcome::failed(
            1,
            "refused: the admin socket only serves the user the server runs as",
        );
        let _ = send(&mut stream, &answer).await;
        return;
    }
    if stopping {
        let answer = Outcome::failed(
            1,
            "the server is stopping; nothing was done. Run the command again once it has stopped (the command then opens the store itself)",
        );
        let _ = send(&mut stream, &answer).await;
        return;
    }
    let (read, mut write) = stream.split();
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(read.take(MAX_REQUEST_BYTES));
    let got = tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line)).await;
    let answer = match got {
        Err(_) => Outcome::failed(2, "admin socket: no request line within 10 s"),
        Ok(Err(e)) => Outcome::failed(2, format!("admin socket: reading the request: {e}")),
        Ok(Ok(_)) if !line.ends_with('\n') => Outcome::failed(
            2,
            format!(
                "admin socket: the request must be one line of at most {MAX_REQUEST_BYTES} bytes"
            ),
        ),
        Ok(Ok(_)) => answer(&line, app).await,
    };
    let _ = send_half(&mut write, &answer).await;
}

async fn answer(line: &str, app: Arc<App>) -> Outcome {
    let request: Request = match serde_json::from_str(line) {
        Ok(r) => r,
        Err(e) => {
            // Tell an old or new client which version this server speaks.
            let v = serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v.get("v").and_then(serde_json::Value::as_u64));
            return match v {
                Some(v) if v != u64::from(PROTOCOL_VERSION) => Outcome::failed(
                    2,
                    format!("admin protocol version {v} is not supported; this server speaks version {PROTOCOL_VERSION}"),
                ),
                _ => Outcome::failed(2, format!("admin socket: bad request: {e}")),
            };
        }
    };
    if request.v != PROTOCOL_VERSION {
        return Outcome::failed(
            2,
            format!(
                "admin protocol version {} is not supported; this server speaks version {PROTOCOL_VERSION}",
                request.v
            ),
        );
    }
    let command = request.command;
    let (name, subject) = (command.name(), command.subject().to_string());
    let outcome = tokio::task::spawn_blocking(move || execute(&command, &app.store, Some(&app)))
        .await
        .unwrap_or_else(|e| Outcome::failed(1, format!("the command failed: {e}")));
    // stdout may hold a new API key: only the command, its subject and the code are logged.
    tracing::info!(target: LOG, command = name, user = %subject, code = outcome.code, "admin command");
    outcome
}

async fn send(stream: &mut UnixStream, answer: &Outcome) -> std::io::Result<()> {
    let (_, mut write) = stream.split();
    send_half(&mut write, answer).await
}

async fn send_half(
    write: &mut tokio::net::unix::WriteHalf<'_>,
    answer: &Outcome,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(answer).map_err(std::io::Error::other)?;
    line.push(b'\n');
    write.write_all(&line).await?;
    write.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_a_stable_wire_form() {
        let r = Request {
            v: 1,
            command: Command::UserSet {
                name: "ci".into(),
                role: Some(Role::Read),
                daily_limit: Some(LimitChange { limit: None }),
                disabled: None,
            },
        };
        let line = serde_json::to_string(&r).unwrap();
        assert_eq!(
            line,
            r#"{"v":1,"command":{"cmd":"user-set","name":"ci","role":"read","dailyLimit":{"limit":null},"disabled":null}}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), r);
        // Scheduled backups are a command of their own; `backup` is unchanged.
        let dir = Request {
            v: 1,
            command: Command::BackupDir {
                dir: "/var/lib/fleetgroups/backups".into(),
                keep: Some(14),
            },
        };
        let line = serde_json::to_string(&dir).unwrap();
        assert_eq!(
            line,
            r#"{"v":1,"command":{"cmd":"backup-dir","dir":"/var/lib/fleetgroups/backups","keep":14}}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), dir);
        let file = r#"{"v":1,"command":{"cmd":"backup","file":"/b/x.jsonl"}}"#;
        assert_eq!(
            serde_json::from_str::<Request>(file).unwrap().command,
            Command::Backup {
                file: "/b/x.jsonl".into()
            }
        );
        let unknown = r#"{"v":1,"command":{"cmd":"user-drop","name":"ci"}}"#;
        assert!(serde_json::from_str::<Request>(unknown).is_err());
    }
}
