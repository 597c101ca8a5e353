//! Test support: `TestServer` runs the real `fleetgroups` binary on `127.0.0.1:0` with a
//! temporary data directory, and a minimal HTTP/1.1 client talks to it over plain TCP
//! (one connection per request), so tests control every byte they send and see every
//! byte that comes back.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
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
}

/// A running server process with its own data directory.
pub struct TestServer {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    log: Arc<Mutex<String>>,
    options: Options,
}

impl TestServer {
    pub fn start() -> TestServer {
        Self::with(Options::default())
    }

    pub fn with(options: Options) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let (child, addr, log) = spawn(dir.path(), &options);
        TestServer {
            addr,
            dir,
            child: Some(child),
            log,
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
        let (child, addr, log) = spawn(self.dir.path(), &self.options);
        self.child = Some(child);
        self.addr = addr;
        self.log = log;
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn spawn(dir: &Path, options: &Options) -> (Child, SocketAddr, Arc<Mutex<String>>) {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir);
    if let Some(text) = &options.config {
        let p = dir.join("test-config.toml");
        std::fs::write(&p, text).expect("write config");
        cmd.arg("--config").arg(&p);
    }
    cmd.args(["--data-dir", "data", "serve", "--listen", "127.0.0.1:0"])
        .env_remove("FLEETGROUPS_CONFIG")
        .envs(options.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn fleetgroups");
    let stderr = child.stderr.take().expect("stderr");
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = mpsc::channel();
    let sink = Arc::clone(&log);
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(pos) = line.find("listening on http://") {
                let rest = &line[pos + "listening on http://".len()..];
                let addr: String = rest
                    .chars()
                    .take_while(|c| !c.is_whitespace() && *c != '"')
                    .collect();
                if let (Some(tx), Ok(addr)) = (tx.take(), addr.parse::<SocketAddr>()) {
                    let _ = tx.send(addr);
                }
            }
            if let Ok(mut l) = sink.lock() {
                l.push_str(&line);
                l.push('\n');
            }
        }
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
    (child, addr, log)
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

/// Sends raw bytes and parses the response (reads to EOF; the request says close).
pub fn raw(addr: SocketAddr, bytes: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    s.write_all(bytes).expect("write");
    read_response(&mut s)
}

/// Reads one response from a stream.
pub fn read_response(s: &mut TcpStream) -> Resp {
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
