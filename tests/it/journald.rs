//! Logs journald understands (docs/operations/running.md "Logs under journald", issue 12 item 3): when
//! `JOURNAL_STREAM` names the file the server's stderr is, every line starts with its
//! syslog priority (`<3>` error, `<4>` warning, `<6>` info, `<7>` debug) and has no
//! timestamp of its own; when it names anything else, the lines are the usual ones.
//!
//! systemd hands a service a socket to journald and sets `JOURNAL_STREAM` to that
//! socket's `device:inode`. journald is not running on CI machines, so the test plays
//! systemd with a plain file: the server's stderr is the file and `JOURNAL_STREAM` its
//! device and inode, which is all the server can see of a journald stream anyway. The
//! harness learns the server's address from its READY=1 notification.

use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{clear_fleetgroups_env, poll_until, raw, Options, TestServer, BIN};

/// A server whose stderr is a file (the harness's `Options::stderr_to`; it learns the
/// address from the READY=1 notification).
struct FileLogged {
    server: TestServer,
    log: PathBuf,
}

impl FileLogged {
    /// Starts the server with stderr on a file, `config` as its `--config` file, and
    /// `JOURNAL_STREAM` set by `journal` from the log file's path.
    fn start(
        config: &str,
        env: &[(&str, &str)],
        journal: impl FnOnce(&Path) -> Option<String>,
    ) -> FileLogged {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("stderr.log");
        let stderr = File::create(&log).unwrap();
        let mut options = Options::default().config(config).stderr_to(stderr);
        for (k, v) in env {
            options = options.env(k, v);
        }
        if let Some(value) = journal(&log) {
            options = options.env("JOURNAL_STREAM", &value);
        }
        FileLogged {
            server: TestServer::with_dir(dir, options),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }

    fn config_path(&self) -> PathBuf {
        self.server.config_path()
    }

    /// Polls the log file until `needle` appears `n` times; returns the log.
    fn wait_for(&self, needle: &str, n: usize) -> String {
        poll_until(Duration::from_secs(30), needle, || {
            let log = self.log();
            (log.matches(needle).count() >= n).then_some(log)
        })
    }

    fn signal(&self, sig: &str) {
        self.server.signal(sig);
    }

    fn get(&self, path: &str, id: &str) -> u16 {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nX-Request-Id: {id}\r\nConnection: close\r\n\r\n"
        );
        raw(self.server.addr, req.as_bytes()).status
    }

    /// SIGTERM; the exit code.
    fn stop(mut self) -> Option<i32> {
        self.server.stop().code()
    }
}

/// `device:inode` of `path`, the way systemd writes `JOURNAL_STREAM`.
fn stream_of(path: &Path) -> String {
    let m = std::fs::metadata(path).unwrap();
    format!("{}:{}", m.dev(), m.ino())
}

/// Whether `line` holds an RFC 3339 timestamp such as `2026-11-26T11:25:13.011Z`
/// (tracing's text format starts every line with one; JSON has a `timestamp` member).
fn has_timestamp(line: &str) -> bool {
    let b = line.as_bytes();
    b.windows(11).any(|w| {
        w[..4].iter().all(u8::is_ascii_digit)
            && w[4] == b'-'
            && w[5..7].iter().all(u8::is_ascii_digit)
            && w[7] == b'-'
            && w[8..10].iter().all(u8::is_ascii_digit)
            && w[10] == b'T'
    }) || line.contains("\"timestamp\"")
}

/// The priority prefix of a line (`<6>` → 6), if it has one.
fn priority(line: &str) -> Option<u8> {
    let rest = line.strip_prefix('<')?;
    let (n, _) = rest.split_once('>')?;
    n.parse().ok()
}

/// Makes the server log one line at each level: a SIGHUP that changes a setting a
/// reload cannot apply (warning), a SIGHUP with a broken file (error), SIGUSR1 twice
/// (info, then debug at `fleetgroups::signals=debug`), and a request (info). Returns
/// the log once the last of them is there.
fn every_level(server: &FileLogged, config: &str) -> String {
    assert_eq!(server.get("/healthz", "it-journald-1"), 200);
    std::fs::write(
        server.config_path(),
        format!("shutdown_grace_secs = 11\n{config}"),
    )
    .unwrap();
    server.signal("HUP");
    server.wait_for("reload done", 1);
    std::fs::write(server.config_path(), "[log\nbroken").unwrap();
    server.signal("HUP");
    server.wait_for("reload failed, keeping the running settings", 1);
    server.signal("USR1");
    server.wait_for("SIGUSR1 received", 1);
    server.signal("USR1");
    server.wait_for("SIGUSR1 received", 2)
}

/// The line holding `needle`; fails the test with the log when there is none.
fn line_with<'a>(log: &'a str, needle: &str) -> &'a str {
    log.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?}:\n{log}"))
}

const CONFIG: &str = "[log]\nlevel = \"info,fleetgroups::signals=debug\"\n";

#[test]
fn under_journald_lines_carry_priorities_and_no_timestamp() {
    let server = FileLogged::start(CONFIG, &[], |log| Some(stream_of(log)));
    let log = every_level(&server, CONFIG);
    for line in log.lines() {
        let p = priority(line).unwrap_or_else(|| panic!("no priority: {line:?}\n{log}"));
        assert!([3, 4, 6, 7].contains(&p), "{line:?}");
        assert!(!has_timestamp(line), "a timestamp in {line:?}");
    }
    let warning = line_with(&log, "only take effect after a restart");
    assert!(warning.starts_with("<4>WARN "), "{warning}");
    assert!(warning.contains("shutdown_grace_secs"), "{warning}");
    let error = line_with(&log, "reload failed, keeping the running settings");
    assert!(error.starts_with("<3>ERROR "), "{error}");
    let access = line_with(&log, "request_id=it-journald-1");
    assert!(
        access.starts_with("<6>INFO fleetgroups::access: request"),
        "{access}"
    );
    let start = line_with(&log, "listening on http://");
    assert!(start.starts_with("<6>INFO "), "{start}");
    // The second SIGUSR1 is logged at debug.
    let debug = log
        .lines()
        .filter(|l| l.contains("SIGUSR1 received"))
        .nth(1)
        .unwrap();
    assert!(debug.starts_with("<7>DEBUG "), "{debug}");
    // Exactly what `journalctl -p warning` would show: the warning and the error.
    let at_most_warning: Vec<&str> = log
        .lines()
        .filter(|l| priority(l).is_some_and(|p| p <= 4))
        .collect();
    assert_eq!(at_most_warning, [warning, error], "{log}");
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn under_journald_json_lines_carry_priorities_and_no_timestamp() {
    let server = FileLogged::start(&format!("{CONFIG}format = \"json\"\n"), &[], |log| {
        Some(stream_of(log))
    });
    let log = every_level(&server, &format!("{CONFIG}format = \"json\"\n"));
    let mut levels = std::collections::BTreeSet::new();
    for line in log.lines() {
        let p = priority(line).unwrap_or_else(|| panic!("no priority: {line:?}"));
        let json = &line[line.find('>').unwrap() + 1..];
        let v: serde_json::Value =
            serde_json::from_str(json).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v.get("timestamp").is_none(), "{line}");
        let level = v["level"].as_str().unwrap();
        let want = match level {
            "ERROR" => 3,
            "WARN" => 4,
            "INFO" => 6,
            _ => 7,
        };
        assert_eq!(p, want, "{line}");
        levels.insert(level.to_string());
    }
    assert_eq!(
        levels.into_iter().collect::<Vec<_>>(),
        ["DEBUG", "ERROR", "INFO", "WARN"],
        "{log}"
    );
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn a_journal_stream_that_is_not_our_stderr_keeps_the_usual_format() {
    // JOURNAL_STREAM is inherited: a child of a service whose stderr was redirected to
    // a file still carries it. Here it names another file in the directory, and
    // then a garbage value.
    for journal in [
        (|log: &Path| {
            let other = log.with_file_name("not-stderr");
            File::create(&other).unwrap();
            Some(stream_of(&other))
        }) as fn(&Path) -> _,
        |_: &Path| Some("garbage".to_string()),
    ] {
        let server = FileLogged::start(CONFIG, &[], journal);
        let log = every_level(&server, CONFIG);
        for line in log.lines() {
            assert_eq!(priority(line), None, "{line:?}");
            assert!(has_timestamp(line), "no timestamp in {line:?}");
        }
        let warning = line_with(&log, "only take effect after a restart");
        assert!(warning.contains(" WARN "), "{warning}");
        assert_eq!(server.stop(), Some(0));
    }
}

/// The same against a real journald (a systemd machine's, or the one scripts/test.sh
/// starts where none runs; without one this test fails):
/// `systemd-cat` connects the server's stderr to journald, a shell sets
/// `JOURNAL_STREAM` to that socket's `device:inode` as systemd does for a service, and
/// `journalctl -p warning` then shows exactly the warning and the error.
#[test]
fn under_a_real_journald_journalctl_filters_by_priority() {
    let have = |tool: &str| {
        Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    // A socket file left by a journald that has stopped does not count: connect.
    let running = std::os::unix::net::UnixStream::connect("/run/systemd/journal/stdout").is_ok();
    assert!(
        running && have("systemd-cat") && have("journalctl"),
        "this test needs a running journald and systemd-cat/journalctl \
         (scripts/test.sh installs systemd and starts systemd-journald when none runs)"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.toml"), CONFIG).unwrap();
    let tag = format!(
        "fleetgroups-it-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let mut cmd = Command::new("systemd-cat");
    clear_fleetgroups_env(&mut cmd);
    let mut child = cmd
        .current_dir(dir.path())
        .args(["-t", &tag, "sh", "-c"])
        .arg(
            "JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) exec \"$0\" --config config.toml \
             --data-dir data serve --listen 127.0.0.1:0",
        )
        .arg(BIN)
        .env("FLEETGROUPS_SERVICE_HOST", "10.0.0.1")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let journal = |extra: &[&str]| {
        let out = Command::new("journalctl")
            .args(["--no-pager", "-o", "cat", "-t", &tag])
            .args(extra)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let addr: SocketAddr = poll_until(
        Duration::from_secs(30),
        "the address in the journal",
        || {
            let text = journal(&[]);
            let at = text.find("listening on http://")? + "listening on http://".len();
            text[at..].split_whitespace().next()?.parse().ok()
        },
    );
    let id = format!("{tag}-request");
    let req = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Request-Id: {id}\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(raw(addr, req.as_bytes()).status, 200);
    std::fs::write(dir.path().join("config.toml"), "[log\nbroken").unwrap();
    let kill = |sig: &str| {
        assert!(Command::new("kill")
            .args([sig, &child.id().to_string()])
            .status()
            .unwrap()
            .success())
    };
    kill("-HUP");
    let warnings = poll_until(Duration::from_secs(30), "the error in the journal", || {
        let text = journal(&["-p", "warning"]);
        text.contains("reload failed").then_some(text)
    });
    kill("-TERM");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "no exit within 30 s");
        std::thread::sleep(Duration::from_millis(10));
    }
    let lines: Vec<&str> = warnings.lines().collect();
    assert_eq!(lines.len(), 2, "{warnings}");
    assert!(
        lines[0].starts_with("WARN fleetgroups::config: ignored 1 Kubernetes"),
        "{warnings}"
    );
    assert!(
        lines[1].starts_with("ERROR fleetgroups::reload: reload failed"),
        "{warnings}"
    );
    // The request line is there at info, without a timestamp of its own.
    let all = journal(&["-p", "info"]);
    let line = all
        .lines()
        .find(|l| l.contains(&id))
        .unwrap_or_else(|| panic!("{all}"));
    assert!(
        line.starts_with("INFO fleetgroups::access: request"),
        "{line}"
    );
}
