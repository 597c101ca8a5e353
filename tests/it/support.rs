//! Test support: `TestServer` runs the real `fleetgroups` binary on `127.0.0.1:0` with a
//! temporary data directory, and a minimal HTTP/1.1 client talks to it over plain TCP
//! (one connection per request), so tests control every byte they send and see every
//! byte that comes back.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_fleetgroups");

/// How to start a server.
#[derive(Clone, Default)]
pub struct Options {
    /// Extra environment variables (e.g. `FLEETGROUPS_LIMITS_MAX_BODY_BYTES`).
    pub env: Vec<(String, String)>,
    /// Contents of a config file passed with `--config`.
    pub config: Option<String>,
    /// The umask the server starts with (a shell's `umask` before `exec`).
    pub umask: Option<u32>,
    /// `--listen` (default `127.0.0.1:0`), e.g. `[::]:0` for a dual-stack listener.
    pub listen: Option<String>,
    /// Where stderr goes instead of the harness's pipe (a file on a full disk, a pipe
    /// nobody reads, a journald stream). The log is then the test's to read, and the
    /// harness plays systemd: it learns the address from the READY=1 notification.
    pub stderr: Option<Arc<OwnedFd>>,
}

impl Options {
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_string(), v.to_string()));
        self
    }

    /// Starts the server under this umask.
    pub fn umask(mut self, mask: u32) -> Self {
        self.umask = Some(mask);
        self
    }

    /// Passes `text` as the configuration file (`--config`).
    pub fn config(mut self, text: &str) -> Self {
        self.config = Some(text.to_string());
        self
    }

    /// Listens on `addr` instead of `127.0.0.1:0`.
    pub fn listen(mut self, addr: &str) -> Self {
        self.listen = Some(addr.to_string());
        self
    }

    /// Sends the server's stderr to `fd` (see [`Options::stderr`]).
    pub fn stderr_to(mut self, fd: impl Into<OwnedFd>) -> Self {
        self.stderr = Some(Arc::new(fd.into()));
        self
    }
}

/// A running server process with its own data directory.
pub struct TestServer {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    log: Arc<Mutex<String>>,
    /// Set when the server's stderr closed (the process ended).
    log_closed: Arc<AtomicBool>,
    /// Logs of the earlier runs of this server (before `restart`).
    past_logs: String,
    options: Options,
}

impl TestServer {
    pub fn start() -> TestServer {
        Self::with(Options::default())
    }

    pub fn with(options: Options) -> TestServer {
        Self::with_dir(tempfile::tempdir().expect("tempdir"), options)
    }

    /// Starts a server on an existing directory; its data directory is `dir/data`
    /// (e.g. one filled by `restore`).
    pub fn with_dir(dir: tempfile::TempDir, options: Options) -> TestServer {
        let (child, addr, log, log_closed) = spawn(dir.path(), &options);
        TestServer {
            addr,
            dir,
            child: Some(child),
            log,
            log_closed,
            past_logs: String::new(),
            options,
        }
    }

    /// A data directory with no server running yet: run CLI commands first (e.g.
    /// `user add`), then `restart()` starts the server for the first time. The server
    /// only bootstraps `admin` when no user exists at that point.
    pub fn unstarted(options: Options) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        TestServer {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            dir,
            child: None,
            log: Arc::new(Mutex::new(String::new())),
            log_closed: Arc::new(AtomicBool::new(true)),
            past_logs: String::new(),
            options,
        }
    }

    /// A server with two accounts: `admin` in `default` and `other` in `acme` (both
    /// `write`); returns it with a token for each.
    pub fn two_accounts() -> (TestServer, String, String) {
        let mut server = TestServer::unstarted(Options::default());
        let admin_key = server.cli(&["user", "add", "admin"]).key();
        let other_key = server
            .cli(&["user", "add", "other", "--account", "acme"])
            .key();
        server.restart();
        let admin = server.login("admin", &admin_key);
        let other = server.login("other", &other_key);
        (server, admin, other)
    }

    /// Whether a server process is running (not stopped or killed by the test).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The key written to `initial-api-key` on first start.
    pub fn admin_key(&self) -> String {
        std::fs::read_to_string(self.data_dir().join("initial-api-key"))
            .expect("initial-api-key")
            .trim()
            .to_string()
    }

    /// Everything the server wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The logs of every run of this server, the current one last.
    pub fn all_logs(&self) -> String {
        format!("{}{}", self.past_logs, self.log())
    }

    /// Waits (polling, with a deadline) until the log contains `needle`; panics with
    /// the log when it does not appear in time. Only for tests whose subject is the log
    /// itself and where nothing else shows that the line is due (a refused reload, a
    /// log level): a test that waits for something to happen waits on the state it
    /// changes (`metric`, `signal_delivered`, a file, a connection), and one that checks
    /// a line after the fact reads `stop_for_log`.
    pub fn wait_for_log(&self, needle: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if self.log().contains(needle) {
                return;
            }
            if self.log_closed.load(Ordering::Relaxed) && !self.log().contains(needle) {
                panic!(
                    "server exited before logging {needle:?}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("{needle:?} not logged within 30 s; log:\n{}", self.log());
    }

    /// Waits (polling, with a deadline) until the log contains `needle` `n` times;
    /// returns the log. The same rule as `wait_for_log`.
    pub fn wait_for_log_count(&self, needle: &str, n: usize) -> String {
        poll_until(Duration::from_secs(10), needle, || {
            let log = self.log();
            (log.matches(needle).count() >= n).then_some(log)
        })
    }

    /// The configuration file the server was started with (`Options::config`), for a
    /// test that edits it before a SIGHUP.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("test-config.toml")
    }

    /// The options the server runs with.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// Waits up to `limit` for the process to exit; `None` if it still runs then.
    pub fn wait_timeout(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let child = self.child.as_mut().expect("running");
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                self.drain_log();
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A raw TCP connection to the server, for tests that pace their own bytes.
    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        s
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("running")
    }

    /// Sends a request and reads the answer.
    pub fn req(&self, method: &str, path: &str) -> Req<'_> {
        Req {
            server: self,
            method: method.to_string(),
            path: path.to_string(),
            headers: Vec::new(),
            body: None,
            from: None,
        }
    }

    /// Trades a userName and key for a token; panics unless it works.
    pub fn login(&self, user: &str, key: &str) -> String {
        let r = self
            .req("POST", "/api/Auth/Token")
            .json(&serde_json::json!({"userName": user, "apiKey": key}))
            .send();
        assert_eq!(r.status, 200, "login failed: {}", r.text());
        r.json()["token"].as_str().expect("token").to_string()
    }

    /// Like `login`, connecting from a chosen local address.
    pub fn login_from(&self, ip: &str, user: &str, key: &str) -> String {
        let r = self
            .req("POST", "/api/Auth/Token")
            .source_ip(ip)
            .json(&serde_json::json!({"userName": user, "apiKey": key}))
            .send();
        assert_eq!(r.status, 200, "login failed: {}", r.text());
        r.json()["token"].as_str().expect("token").to_string()
    }

    /// A token for the bootstrap `admin` user.
    pub fn admin_token(&self) -> String {
        self.login("admin", &self.admin_key())
    }

    /// Creates a user with the CLI (through the running server's admin socket) and
    /// returns its API key.
    pub fn add_user(&self, name: &str, extra: &[&str]) -> String {
        let mut args = vec!["user", "add", name];
        args.extend_from_slice(extra);
        let out = self.cli(&args);
        assert_eq!(out.code, 0, "user add failed: {}", out.stderr);
        out.stdout.trim().to_string()
    }

    /// Runs the CLI against this server's data directory.
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        cli_in(&self.data_dir(), args, &self.options.env)
    }

    /// Starts another `serve` process on this server's data directory and waits (up to
    /// 30 s) for it to exit; panics if it is still running then.
    pub fn second_server(&self) -> CliOutput {
        let mut cmd = Command::new(BIN);
        cmd.current_dir(self.dir.path()).args([
            "--data-dir",
            "data",
            "serve",
            "--listen",
            "127.0.0.1:0",
        ]);
        clear_fleetgroups_env(&mut cmd);
        cmd.envs(
            self.options
                .env
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        );
        run_with_deadline(cmd, Duration::from_secs(30))
    }

    /// A client that sends `token` as its bearer token.
    pub fn client(&self, token: &str) -> Client<'_> {
        Client {
            server: self,
            token: token.to_string(),
        }
    }

    /// SIGKILL, no chance to flush.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal (by number) to the process.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit (after a signal).
    pub fn wait(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        let status = c.wait().expect("wait");
        self.drain_log();
        status
    }

    /// After the process ended: waits (with a deadline) until the log reader has read
    /// stderr to its end, so `log()` holds the last lines too (the server writes its log
    /// from a thread of its own, and the reader may still be behind at the exit).
    fn drain_log(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !self.log_closed.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGTERM and wait: the polite stop.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal("TERM");
        self.wait()
    }

    /// Stops the server (it must exit 0) and returns its whole log. Once the process
    /// has exited and its stderr is read to the end, every line it logged is there: the
    /// way to check a line after the state that caused it was observed, since the
    /// server writes its log from a thread of its own and a line can trail the answer
    /// or the state change it belongs to.
    pub fn stop_for_log(&mut self) -> String {
        let status = self.stop();
        assert!(status.success(), "{status}; log:\n{}", self.log());
        self.log()
    }

    /// The value of one sample of `/metrics` (`name` or `name{labels}`, as written),
    /// `None` when the scrape does not carry it.
    pub fn metric(&self, sample: &str) -> Option<f64> {
        let text = self.req("GET", "/metrics").send().text();
        text.lines().find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == sample).then(|| value.parse().ok()).flatten()
        })
    }

    /// Waits until the kernel has delivered `sig` (a name such as `USR1`, sent with
    /// `signal`) to the process: it is no longer pending in `/proc/<pid>/status`. A
    /// signal whose handler is installed leaves the process running; one without
    /// would have ended it by then, which `is_running`/a request then shows.
    pub fn wait_signal_delivered(&self, sig: &str) {
        let number: u32 = match sig {
            "HUP" => 1,
            "INT" => 2,
            "USR1" => 10,
            "USR2" => 12,
            "ALRM" => 14,
            "TERM" => 15,
            other => panic!("no signal number known for SIG{other}"),
        };
        let bit = 1u64 << (number - 1);
        let status = format!("/proc/{}/status", self.pid());
        poll_until(
            Duration::from_secs(10),
            &format!("SIG{sig} to be delivered"),
            || {
                let text = std::fs::read_to_string(&status).ok()?;
                // SigPnd: pending for the main thread; ShdPnd: for the whole process
                // (where `kill` puts it).
                let pending = text
                    .lines()
                    .filter_map(|l| {
                        let mask = l
                            .strip_prefix("SigPnd:")
                            .or_else(|| l.strip_prefix("ShdPnd:"))?;
                        u64::from_str_radix(mask.trim(), 16).ok()
                    })
                    .fold(0, |all, m| all | m);
                (pending & bit == 0).then_some(())
            },
        );
    }

    /// Starts the server on its data directory and kills it (SIGKILL) `after` that,
    /// wherever its start has got to: the injected fault of tests that crash a start
    /// (a replay, a recovery). Returns what it wrote to stderr by then.
    pub fn start_killed_after(&mut self, after: Duration) -> String {
        assert!(self.child.is_none(), "stop or kill the server first");
        let mut cmd = server_command(self.dir.path(), &self.options);
        let mut child = cmd
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn fleetgroups");
        let mut stderr = child.stderr.take().expect("stderr");
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
            text
        });
        std::thread::sleep(after);
        let _ = child.kill();
        let _ = child.wait();
        let text = reader.join().unwrap_or_default();
        self.past_logs.push_str(&text);
        text
    }

    /// Starts the server again on the same data directory (new port); also the first
    /// start of an `unstarted` one.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill the server first");
        self.start_process();
    }

    /// Starts the server again on the same data directory with other options.
    pub fn restart_with(&mut self, options: Options) {
        assert!(self.child.is_none(), "stop or kill the server first");
        self.options = options;
        self.start_process();
    }

    fn start_process(&mut self) {
        let (child, addr, log, log_closed) = spawn(self.dir.path(), &self.options);
        self.past_logs.push_str(&self.log());
        self.child = Some(child);
        self.addr = addr;
        self.log = log;
        self.log_closed = log_closed;
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

type Spawned = (Child, SocketAddr, Arc<Mutex<String>>, Arc<AtomicBool>);

/// The command that starts the server in `dir` as `options` say (stderr not set).
fn server_command(dir: &Path, options: &Options) -> Command {
    let mut cmd = match options.umask {
        None => Command::new(BIN),
        Some(mask) => {
            let mut sh = Command::new("sh");
            sh.args(["-c", &format!("umask {mask:03o}; exec \"$0\" \"$@\""), BIN]);
            sh
        }
    };
    cmd.current_dir(dir);
    if let Some(text) = &options.config {
        let p = dir.join("test-config.toml");
        std::fs::write(&p, text).expect("write config");
        cmd.arg("--config").arg(&p);
    }
    let listen = options.listen.as_deref().unwrap_or("127.0.0.1:0");
    cmd.args(["--data-dir", "data", "serve", "--listen", listen]);
    clear_fleetgroups_env(&mut cmd);
    cmd
        // A test run under systemd must not notify the test runner's own unit, nor
        // log as if its stderr were the runner's journal stream.
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .env_remove("JOURNAL_STREAM")
        .envs(options.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    cmd
}

fn spawn(dir: &Path, options: &Options) -> Spawned {
    let mut cmd = server_command(dir, options);
    if let Some(fd) = &options.stderr {
        return spawn_notified(dir, cmd, fd);
    }
    cmd.stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn fleetgroups");
    let stderr = child.stderr.take().expect("stderr");
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = mpsc::channel();
    let sink = Arc::clone(&log);
    let closed = Arc::new(AtomicBool::new(false));
    let closed_flag = Arc::clone(&closed);
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            // Into the log first, so a test that got the address also sees the line.
            if let Ok(mut l) = sink.lock() {
                l.push_str(&line);
                l.push('\n');
            }
            let found = ["listening on http://", "listening on https://"]
                .iter()
                .find_map(|m| line.find(m).map(|pos| pos + m.len()));
            if let Some(start) = found {
                let rest = &line[start..];
                let addr: String = rest
                    .chars()
                    .take_while(|c| !c.is_whitespace() && *c != '"')
                    .collect();
                if let (Some(tx), Ok(addr)) = (tx.take(), addr.parse::<SocketAddr>()) {
                    let _ = tx.send(addr);
                }
            }
        }
        closed_flag.store(true, Ordering::Relaxed);
    });
    let addr = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(a) => a,
        Err(_) => {
            let _ = child.kill();
            panic!(
                "server did not start; log:\n{}",
                log.lock().map(|l| l.clone()).unwrap_or_default()
            );
        }
    };
    (child, addr, log, closed)
}

/// Starts `cmd` with stderr on `fd`, as systemd would: the address comes from the
/// `STATUS=serving on …` of the READY=1 notification on a socket in `dir`.
fn spawn_notified(dir: &Path, mut cmd: Command, fd: &OwnedFd) -> Spawned {
    let notify_path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&notify_path);
    let notify = UnixDatagram::bind(&notify_path).expect("bind the notify socket");
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let stderr = fd.try_clone().expect("dup stderr");
    let mut child = cmd
        .env("NOTIFY_SOCKET", &notify_path)
        .stderr(Stdio::from(stderr))
        .spawn()
        .expect("spawn fleetgroups");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut buf = [0u8; 4096];
    let addr = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!("the server exited before it was ready: {status}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no READY=1 within 30 s"
        );
        let Ok(n) = notify.recv(&mut buf) else {
            continue;
        };
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        let found = ["STATUS=serving on http://", "STATUS=serving on https://"]
            .iter()
            .find_map(|m| msg.find(m).map(|at| at + m.len()));
        if let Some(at) = found {
            let line = msg[at..].lines().next().unwrap_or_default();
            break line.parse().expect("an address after `serving on`");
        }
    };
    // Nothing to read: the log is the test's, wherever it sent it.
    (
        child,
        addr,
        Arc::new(Mutex::new(String::new())),
        Arc::new(AtomicBool::new(true)),
    )
}

/// The server refuses unknown `FLEETGROUPS_*` variables, and the test process may carry
/// its own (`FLEETGROUPS_CRASH_ROUNDS`) or an operator's: children get only what a test
/// passes in `Options`. Nor do they read the machine's `/etc/fleetgroups/config.toml`
/// (there when the package is installed): `FLEETGROUPS_SYSTEM_CONFIG` is set empty, and
/// a test that wants a system-wide file passes its own path.
pub fn clear_fleetgroups_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("FLEETGROUPS_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("FLEETGROUPS_SYSTEM_CONFIG", "");
}

/// Output of one CLI run.
#[derive(Debug)]
pub struct CliOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `fleetgroups --data-dir DIR args…` in DIR's parent (failing the test if it runs
/// over a minute).
pub fn cli_in(data_dir: &Path, args: &[&str], env: &[(String, String)]) -> CliOutput {
    cli(args)
        .data_dir(data_dir)
        .cwd(data_dir.parent().unwrap_or(data_dir))
        .envs(env.iter().map(|(k, v)| (k, v)))
        .run()
}

/// The binary as a test runs it outside `TestServer`: with no `FLEETGROUPS_*` variable
/// of the test process and no system-wide config (`clear_fleetgroups_env`), stdin
/// closed, and what the test adds (a data directory, always first on the command line;
/// a working directory; variables); then run to completion under a deadline, or
/// spawned.
pub struct Cli {
    cmd: Command,
    data_dir: Option<PathBuf>,
    args: Vec<std::ffi::OsString>,
}

/// `fleetgroups args…` (see [`Cli`]).
pub fn cli(args: &[&str]) -> Cli {
    let mut cmd = Command::new(BIN);
    clear_fleetgroups_env(&mut cmd);
    cmd.stdin(Stdio::null());
    Cli {
        cmd,
        data_dir: None,
        args: Vec::new(),
    }
    .args(args)
}

impl Cli {
    /// `--data-dir DIR`, before every argument.
    pub fn data_dir(mut self, dir: &Path) -> Self {
        self.data_dir = Some(dir.to_path_buf());
        self
    }

    pub fn arg(mut self, arg: impl AsRef<std::ffi::OsStr>) -> Self {
        self.args.push(arg.as_ref().to_os_string());
        self
    }

    pub fn args(self, args: &[&str]) -> Self {
        args.iter().fold(self, |cli, a| cli.arg(a))
    }

    /// The working directory (where `./config.toml` and a relative `--data-dir` are).
    pub fn cwd(mut self, dir: &Path) -> Self {
        self.cmd.current_dir(dir);
        self
    }

    pub fn env(mut self, k: &str, v: impl AsRef<std::ffi::OsStr>) -> Self {
        self.cmd.env(k, v);
        self
    }

    pub fn envs<K, V>(mut self, vars: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: AsRef<std::ffi::OsStr>,
        V: AsRef<std::ffi::OsStr>,
    {
        self.cmd.envs(vars);
        self
    }

    fn command(mut self) -> Command {
        if let Some(dir) = &self.data_dir {
            self.cmd.arg("--data-dir").arg(dir);
        }
        self.cmd.args(&self.args);
        self.cmd
    }

    /// Runs to completion (failing the test past a minute).
    pub fn run(self) -> CliOutput {
        self.run_within(Duration::from_secs(60))
    }

    /// Runs to completion, failing the test past `deadline`.
    pub fn run_within(self, deadline: Duration) -> CliOutput {
        run_with_deadline(self.command(), deadline)
    }

    /// Starts it with stdout and stderr where the test wants them.
    pub fn spawn(self, stdout: Stdio, stderr: Stdio) -> Child {
        self.command()
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("spawn fleetgroups")
    }
}

/// Runs a command to completion, killing it (and failing the test) past `deadline`.
pub fn run_with_deadline(mut cmd: Command, deadline: Duration) -> CliOutput {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fleetgroups");
    // Drain both pipes on threads so a chatty child cannot block on a full pipe.
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut s);
            }
            s
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if started.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "process still running after {deadline:?}; stderr:\n{}",
                err.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    CliOutput {
        code: status.code().unwrap_or(-1),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Polls `check` every 20 ms until it returns `Some`, failing the test after `deadline`.
/// A number from the environment (the rounds and seeds of the long adversarial runs),
/// else `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn poll_until<T>(deadline: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let started = std::time::Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(started.elapsed() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl CliOutput {
    /// Asserts success and that stdout is exactly one line holding an API key; returns it.
    pub fn key(&self) -> String {
        assert_eq!(self.code, 0, "{self:?}");
        let lines: Vec<&str> = self.stdout.lines().collect();
        assert_eq!(lines.len(), 1, "stdout must be the key alone: {self:?}");
        assert!(
            lines[0].starts_with("fgk_") && lines[0].len() == 68,
            "{self:?}"
        );
        assert!(self.stdout.ends_with('\n'));
        lines[0].to_string()
    }
}

/// Sends requests with one bearer token.
pub struct Client<'a> {
    pub server: &'a TestServer,
    pub token: String,
}

impl<'a> Client<'a> {
    /// A request carrying the token, to extend before `send()`.
    pub fn req(&self, method: &str, path: &str) -> Req<'a> {
        self.server.req(method, path).bearer(&self.token)
    }

    pub fn get(&self, path: &str) -> Resp {
        self.req("GET", path).send()
    }

    pub fn post(&self, path: &str, body: &Value) -> Resp {
        self.req("POST", path).json(body).send()
    }

    pub fn put(&self, path: &str, body: &Value) -> Resp {
        self.req("PUT", path).json(body).send()
    }

    /// PATCH with `Content-Type: application/json` (what Plaspy clients send).
    pub fn patch(&self, path: &str, body: &Value) -> Resp {
        self.req("PATCH", path).json(body).send()
    }

    pub fn delete(&self, path: &str) -> Resp {
        self.req("DELETE", path).send()
    }

    /// Creates a group and returns its fields (asserts 201).
    pub fn create(&self, body: &Value) -> Value {
        self.post("/api/groups", body).expect_ok(201)
    }

    /// The group as GET shows it now (asserts 200), without the envelope.
    pub fn group(&self, id: &str) -> Value {
        let v = self.get(&format!("/api/groups/{id}")).expect_ok(200);
        without_envelope(v)
    }

    /// Every group of the caller's account (asserts 200).
    pub fn groups(&self) -> Vec<Value> {
        let v = self.get("/api/groups").expect_ok(200);
        v["groups"].as_array().expect("groups array").clone()
    }
}

/// The `id`s of the `groups` array of an answer, in order.
pub fn group_ids_of(v: &Value) -> Vec<String> {
    v["groups"]
        .as_array()
        .expect("the answer has a groups array")
        .iter()
        .map(|g| g["id"].as_str().expect("a group has an id").to_string())
        .collect()
}

/// The resource fields of an answer: the object without `success`, `error`,
/// `errorCode`, `apiUsage` and `apiDailyUsage`.
pub fn without_envelope(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        for k in ["success", "error", "errorCode", "apiUsage", "apiDailyUsage"] {
            o.remove(k);
        }
    }
    v
}

/// Runs the binary with `args` in `dir` and waits at most 30 s for it to exit (a start
/// that should fail but serves instead is killed and reported, not waited on forever).
pub fn run_expecting_exit(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> CliOutput {
    let mut cmd = Command::new(BIN);
    clear_fleetgroups_env(&mut cmd);
    let mut child = cmd
        .args(args)
        .env_remove("NOTIFY_SOCKET")
        .envs(env.iter().copied())
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run fleetgroups");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("try_wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "fleetgroups {args:?} did not exit; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().expect("output");
    CliOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A request being built.
pub struct Req<'a> {
    server: &'a TestServer,
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
    from: Option<std::net::IpAddr>,
}

impl Req<'_> {
    /// Connects from this local address (any 127.x.y.z works on Linux loopback), so a
    /// test can act as several clients.
    pub fn source_ip(mut self, ip: &str) -> Self {
        self.from = Some(ip.parse().expect("ip"));
        self
    }

    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.to_string(), v.to_string()));
        self
    }

    pub fn bearer(self, token: &str) -> Self {
        self.header("Authorization", &format!("Bearer {token}"))
    }

    /// A JSON body with `Content-Type: application/json`.
    pub fn json(self, v: &Value) -> Self {
        self.body_as("application/json", &serde_json::to_vec(v).expect("json"))
    }

    /// Raw body bytes with a given content type.
    pub fn body_as(mut self, content_type: &str, body: &[u8]) -> Self {
        self.headers
            .push(("Content-Type".into(), content_type.into()));
        self.body = Some(body.to_vec());
        self
    }

    /// Raw body without any content type.
    pub fn raw_body(mut self, body: &[u8]) -> Self {
        self.body = Some(body.to_vec());
        self
    }

    pub fn send(self) -> Resp {
        let bytes = self.bytes();
        match self.from {
            None => raw(self.server.addr, &bytes),
            Some(ip) => {
                let mut s = connect_from(ip, self.server.addr);
                s.write_all(&bytes).expect("write");
                read_response(&mut s)
            }
        }
    }

    /// Like `send`, but a refused or broken connection is an `Err` instead of a panic
    /// (crash tests send while the server may be killed).
    pub fn try_send(self) -> std::io::Result<Resp> {
        let bytes = self.bytes();
        try_raw(self.server.addr, &bytes)
    }

    /// The request as bytes on the wire.
    pub fn bytes(&self) -> Vec<u8> {
        let mut req = format!(
            "{} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.method, self.path, self.server.addr
        );
        for (k, v) in &self.headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(b) = &self.body {
            req.push_str(&format!("Content-Length: {}\r\n", b.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        if let Some(b) = &self.body {
            bytes.extend_from_slice(b);
        }
        bytes
    }
}

/// An HTTP response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Asserts what every JSON answer carries: the JSON content type and a request ID.
    pub fn assert_json_answer(&self) {
        assert_eq!(
            self.header("content-type"),
            Some("application/json; charset=utf-8"),
            "{self:?}"
        );
        assert!(
            self.header("x-request-id").is_some_and(|v| !v.is_empty()),
            "no X-Request-Id: {self:?}"
        );
    }

    /// Asserts a success with this status (envelope: `success` true, `error` null, no
    /// `errorCode`), returning the body.
    pub fn expect_ok(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "{}", self.text());
        self.assert_json_answer();
        let v = self.json();
        assert_eq!(v["success"], true, "{v}");
        assert!(v.get("error").is_some_and(Value::is_null), "{v}");
        assert!(v.get("errorCode").is_none(), "no errorCode on success: {v}");
        v
    }

    /// Asserts the status, the `errorCode` and the exact `error` message.
    pub fn expect_error_message(&self, status: u16, code: &str, message: &str) -> Value {
        let v = self.expect_error(status, code);
        assert_eq!(v["error"], message, "{v}");
        v
    }

    /// The (`apiUsage`, `apiDailyUsage`) pair, asserting both are present.
    pub fn usage(&self) -> (u64, u64) {
        let v = self.json();
        match (v["apiUsage"].as_u64(), v["apiDailyUsage"].as_u64()) {
            (Some(t), Some(d)) => (t, d),
            _ => panic!("no usage counters in {v}"),
        }
    }

    /// The `ETag` header; panics when there is none.
    pub fn etag(&self) -> String {
        self.header("etag")
            .unwrap_or_else(|| panic!("no ETag: {} {}", self.status, self.text()))
            .to_string()
    }

    /// Asserts a 2xx status and returns the JSON body.
    pub fn ok(&self) -> Value {
        assert!(
            (200..300).contains(&self.status),
            "{} {}",
            self.status,
            self.text()
        );
        self.json()
    }

    /// Asserts the status and the `errorCode`, returning the body.
    pub fn expect_error(&self, status: u16, code: &str) -> Value {
        assert_eq!(self.status, status, "{}", self.text());
        self.assert_json_answer();
        let v = self.json();
        assert_eq!(v["success"], false, "{v}");
        assert_eq!(v["errorCode"], code, "{v}");
        assert!(v["error"].is_string(), "{v}");
        v
    }
}

/// Starts a request whose body the test sends itself: writes the head with
/// `Expect: 100-continue` and returns once the server answered `100 Continue`, which it
/// does only when the handler has authenticated the request and starts reading the
/// body — so the request is in flight on the server when this returns.
pub fn begin_slow_request(
    server: &TestServer,
    method: &str,
    path: &str,
    token: &str,
    body_len: usize,
) -> TcpStream {
    let mut s = server.connect();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {body_len}\r\nExpect: 100-continue\r\n\r\n",
        server.addr
    );
    s.write_all(head.as_bytes()).expect("write head");
    let mut line = String::new();
    let mut reader = BufReader::new(&mut s);
    reader.read_line(&mut line).expect("interim status line");
    assert!(
        line.starts_with("HTTP/1.1 100"),
        "expected 100 Continue, got {line:?}"
    );
    let mut blank = String::new();
    reader
        .read_line(&mut blank)
        .expect("end of interim response");
    assert_eq!(blank, "\r\n");
    s
}

/// Sends raw bytes and parses the response (reads to EOF; the request says close).
pub fn raw(addr: SocketAddr, bytes: &[u8]) -> Resp {
    try_raw(addr, bytes).expect("request")
}

/// `raw` that returns connection errors instead of panicking.
pub fn try_raw(addr: SocketAddr, bytes: &[u8]) -> std::io::Result<Resp> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(bytes)?;
    try_read_response(&mut s)
}

/// A blocking TCP connection from a chosen local address (std cannot bind before
/// connecting; tokio's `TcpSocket` can).
pub fn connect_from(ip: std::net::IpAddr, to: SocketAddr) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("runtime");
    let s = rt
        .block_on(async {
            let socket = if ip.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            socket.bind(SocketAddr::new(ip, 0))?;
            socket.connect(to).await
        })
        .expect("connect from address");
    let s = s.into_std().expect("into_std");
    s.set_nonblocking(false).expect("blocking");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    s
}

/// Reads one response from a stream (TCP or TLS).
pub fn read_response<S: Read>(s: &mut S) -> Resp {
    try_read_response(s).expect("response")
}

/// Reads one response from a stream; a connection that ends before a whole response
/// arrived is an `Err`.
pub fn try_read_response<S: Read>(s: &mut S) -> std::io::Result<Resp> {
    let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let mut reader = BufReader::new(s);
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let len = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let mut body = Vec::new();
    match len {
        None if chunked => read_chunked(&mut reader, &mut body)?,
        Some(n) => {
            body.resize(n, 0);
            reader.read_exact(&mut body)?;
        }
        None if status == 304 || status == 204 => {}
        None => {
            let _ = reader.read_to_end(&mut body);
        }
    }
    Ok(Resp {
        status,
        headers,
        body,
    })
}

/// Reads a chunked body (RFC 9112 §7.1) to its last chunk; an answer cut before it is
/// an `UnexpectedEof` error, as a streamed answer that failed must be.
fn read_chunked<R: BufRead>(reader: &mut R, body: &mut Vec<u8>) -> std::io::Result<()> {
    let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    loop {
        let mut size = String::new();
        if reader.read_line(&mut size)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let hex = size.trim_end().split(';').next().unwrap_or("");
        let n = usize::from_str_radix(hex, 16).map_err(|_| bad(format!("chunk size {size:?}")))?;
        if n == 0 {
            // Trailers (none are sent) and the final CRLF.
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
                    return Ok(());
                }
            }
        }
        let start = body.len();
        body.resize(start + n, 0);
        reader.read_exact(&mut body[start..])?;
        let mut crlf = [0u8; 2];
        reader.read_exact(&mut crlf)?;
        if &crlf != b"\r\n" {
            return Err(bad("chunk not followed by CRLF".into()));
        }
    }
}

/// Whether `s` is an API timestamp: `^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$`.
pub fn is_timestamp(s: &str) -> bool {
    let shape = "dddd-dd-ddTdd:dd:dd.dddZ";
    s.len() == shape.len()
        && s.bytes().zip(shape.bytes()).all(|(c, p)| match p {
            b'd' => c.is_ascii_digit(),
            _ => c == p,
        })
}

/// Milliseconds since the epoch of an API timestamp (panics unless `is_timestamp`).
pub fn timestamp_ms(s: &str) -> i64 {
    assert!(is_timestamp(s), "not an API timestamp: {s:?}");
    let n = |a: usize, b: usize| s[a..b].parse::<i64>().expect("digits");
    let (y, m, d) = (n(0, 4), n(5, 7), n(8, 10));
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    ((days * 24 + n(11, 13)) * 60 + n(14, 16)) * 60_000 + n(17, 19) * 1000 + n(20, 23)
}

/// The test's own clock, in the same unit.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[test]
fn timestamps_parse() {
    assert!(is_timestamp("2026-11-26T10:01:42.123Z"));
    assert!(!is_timestamp("2026-11-26T10:01:42Z"));
    assert!(!is_timestamp("2026-11-26T10:01:42.123+00:00"));
    assert_eq!(timestamp_ms("1970-01-01T00:00:00.000Z"), 0);
    assert_eq!(timestamp_ms("2026-11-26T10:01:42.123Z"), 1_795_687_302_123);
    assert_eq!(timestamp_ms("2000-02-29T00:00:00.000Z"), 951_782_400_000);
}

/// Opens a stopped server's sled store directly, to tamper with it as another binary
/// or damage would. The server opens sled with its default segment size, as this does.
pub fn open_sled(store_dir: &Path) -> sled::Db {
    sled::open(store_dir).expect("open the store with sled")
}
