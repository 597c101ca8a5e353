//! Test support: `TestServer` runs the real `fleetgroups` binary on `127.0.0.1:0` with a
//! temporary data directory, and a minimal HTTP/1.1 client talks to it over plain TCP
//! (one connection per request), so tests control every byte they send and see every
//! byte that comes back.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
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
}

impl Options {
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_string(), v.to_string()));
        self
    }

    /// Passes `text` as the configuration file (`--config`).
    pub fn config(mut self, text: &str) -> Self {
        self.config = Some(text.to_string());
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
        let dir = tempfile::tempdir().expect("tempdir");
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
    /// the log when it does not appear in time.
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

    /// Waits up to `limit` for the process to exit; `None` if it still runs then.
    pub fn wait_timeout(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let child = self.child.as_mut().expect("running");
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
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

    /// A token for the bootstrap `admin` user.
    pub fn admin_token(&self) -> String {
        self.login("admin", &self.admin_key())
    }

    /// Runs the CLI against this server's data directory.
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        cli_in(&self.data_dir(), args, &self.options.env)
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
        c.wait().expect("wait")
    }

    /// SIGTERM and wait: the polite stop.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal("TERM");
        self.wait()
    }

    /// Starts the server again on the same data directory (new port).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill the server first");
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

fn spawn(dir: &Path, options: &Options) -> Spawned {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir);
    if let Some(text) = &options.config {
        let p = dir.join("test-config.toml");
        std::fs::write(&p, text).expect("write config");
        cmd.arg("--config").arg(&p);
    }
    cmd.args(["--data-dir", "data", "serve", "--listen", "127.0.0.1:0"])
        .env_remove("FLEETGROUPS_CONFIG")
        // A test run under systemd must not notify the test runner's own unit.
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .envs(options.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
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

/// Output of one CLI run.
#[derive(Debug)]
pub struct CliOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `fleetgroups --data-dir DIR args…`.
pub fn cli_in(data_dir: &Path, args: &[&str], env: &[(String, String)]) -> CliOutput {
    let out = Command::new(BIN)
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env_remove("FLEETGROUPS_CONFIG")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(data_dir.parent().unwrap_or(data_dir))
        .output()
        .expect("run fleetgroups");
    CliOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs the binary with `args` in `dir` and waits at most 30 s for it to exit (a start
/// that should fail but serves instead is killed and reported, not waited on forever).
pub fn run_expecting_exit(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> CliOutput {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("FLEETGROUPS_CONFIG")
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
}

impl Req<'_> {
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
        raw(self.server.addr, &bytes)
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

    /// Asserts the status and the `errorCode`, returning the body.
    pub fn expect_error(&self, status: u16, code: &str) -> Value {
        assert_eq!(self.status, status, "{}", self.text());
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
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    s.write_all(bytes).expect("write");
    read_response(&mut s)
}

/// Reads one response from a stream (TCP or TLS).
pub fn read_response<S: Read>(s: &mut S) -> Resp {
    let mut reader = BufReader::new(s);
    let mut line = String::new();
    reader.read_line(&mut line).expect("status line");
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).expect("header");
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
    let mut body = Vec::new();
    match len {
        Some(n) => {
            body.resize(n, 0);
            reader.read_exact(&mut body).expect("body");
        }
        None if status == 304 || status == 204 => {}
        None => {
            let _ = reader.read_to_end(&mut body);
        }
    }
    Resp {
        status,
        headers,
        body,
    }
}
