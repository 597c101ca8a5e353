//! A failing log destination (docs/operations/running.md "When the log destination fails"): with stderr on a full
//! disk, a pipe whose reader went away, or a pipe nobody reads, the server starts,
//! answers every request promptly, counts the lines it could not write in
//! `fleetgroups_log_lines_dropped_total`, and exits 0 on SIGTERM. The CLI, for its
//! part, never panics on a broken stdout or stderr: a result it could not print is
//! exit code 1.
//!
//! These servers cannot be found through their log (that is the point), so the harness
//! plays systemd and reads the address from the READY=1 notification. The full disk is
//! a real one: a 64 KiB tmpfs mounted for the test (root only; without the mount the
//! test fails and says why, rather than passing without having tested anything).

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::support::{try_raw, Options, Resp, TestServer};

/// A server whose stderr is the test's choice (the harness's `Options::stderr_to`),
/// with what these tests ask of it.
struct Server(TestServer);

impl Server {
    fn start(stderr: impl Into<OwnedFd>) -> Server {
        Server(TestServer::with(Options::default().stderr_to(stderr)))
    }

    /// One request; fails the test unless it is answered within `limit`.
    fn get(&self, path: &str, limit: Duration) -> (Resp, Duration) {
        let started = Instant::now();
        let mut s = std::net::TcpStream::connect(self.0.addr).unwrap();
        s.set_read_timeout(Some(limit)).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.0.addr
        )
        .unwrap();
        let r = crate::support::try_read_response(&mut s).unwrap_or_else(|e| {
            panic!(
                "GET {}…: no answer within {limit:?}: {e}",
                &path[..path.len().min(20)]
            )
        });
        (r, started.elapsed())
    }

    fn dropped(&self) -> u64 {
        let r = try_raw(
            self.0.addr,
            format!(
                "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                self.0.addr
            )
            .as_bytes(),
        )
        .expect("/metrics answers");
        assert_eq!(r.status, 200, "{}", r.text());
        r.text()
            .lines()
            .find_map(|l| l.strip_prefix("fleetgroups_log_lines_dropped_total "))
            .unwrap_or_else(|| panic!("no dropped-lines counter in:\n{}", r.text()))
            .parse()
            .unwrap()
    }

    /// Polls the counter until it reaches `at_least`.
    fn wait_for_drops(&self, at_least: u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let n = self.dropped();
            if n >= at_least {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{n} log lines counted as dropped, expected {at_least}"
            );
            // Each /metrics request logs a line too: the next poll has one more to drop.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then the exit status (failing the test after 30 s: a stop stuck on
    /// its log destination is what these tests look for).
    fn stop(&mut self) -> ExitStatus {
        self.0.signal("TERM");
        self.0
            .wait_timeout(Duration::from_secs(30))
            .expect("no exit within 30 s of SIGTERM")
    }
}

/// A pipe: (read end, write end). Close-on-exec, so that no child (this server, or
/// one another test starts meanwhile) holds the read end open by inheritance.
fn pipe() -> (OwnedFd, OwnedFd) {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).expect("pipe")
}

/// A 64 KiB tmpfs, filled: every write to a file on it fails with ENOSPC.
struct FullDisk {
    dir: tempfile::TempDir,
}

impl FullDisk {
    fn mount() -> FullDisk {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test needs a real full disk: `mount -t tmpfs` was refused ({}). Run the \
             tests as root (CAP_SYS_ADMIN) where mounting is allowed; the test does not \
             pass without having tested anything.",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let disk = FullDisk { dir };
        let mut fill = std::fs::File::create(disk.path().join("fill")).unwrap();
        let chunk = vec![0u8; 4096];
        let e = loop {
            if let Err(e) = fill.write_all(&chunk) {
                break e;
            }
        };
        assert_eq!(e.raw_os_error(), Some(28), "expected ENOSPC, got {e}");
        disk
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for FullDisk {
    fn drop(&mut self) {
        // Lazy: a process that still holds a file there cannot keep the mount busy.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn stderr_on_a_full_disk_starts_serves_counts_and_exits_0() {
    let disk = FullDisk::mount();
    let log: PathBuf = disk.path().join("fleetgroups.log");
    // Created before filling would need space; tmpfs creates an empty file on a full
    // disk, and the first byte written to it fails.
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap();
    let e = (&file).write_all(b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(28), "the disk is not full: {e}");

    let mut server = Server::start(file);
    for _ in 0..5 {
        let (r, _) = server.get("/healthz", Duration::from_secs(10));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // At least the five request lines (and the start-up lines before them).
    server.wait_for_drops(5);
    let status = server.stop();
    assert_eq!(status.code(), Some(0), "{status}");
    assert_eq!(std::fs::metadata(&log).unwrap().len(), 0);
}

#[test]
fn stderr_pipe_whose_reader_went_away_answers_and_exits_0() {
    let (reader, writer) = pipe();
    let mut server = Server::start(writer);
    // The reader goes away (journald restarted, `… | head` done): writes now get EPIPE.
    drop(reader);
    for _ in 0..5 {
        let (r, _) = server.get("/healthz", Duration::from_secs(10));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    server.wait_for_drops(5);
    let status = server.stop();
    assert_eq!(status.code(), Some(0), "{status}");
}

#[test]
fn stderr_pipe_nobody_reads_does_not_slow_requests() {
    let (unread, writer) = pipe();
    let mut server = Server::start(writer);
    // Kept open, never read: once its 64 KiB are full, every write to it blocks.
    let _unread = unread;
    // A 4,000-byte path makes a 4 KB log line (and a 404): the pipe is full after ~16
    // of them, the server's 1 MiB queue after ~270 more; then lines are dropped.
    let long = format!("/{}", "a".repeat(4000));
    let limit = Duration::from_secs(2);
    let mut slowest = Duration::ZERO;
    // Well past the pipe's 64 KiB first: a server that writes to stderr itself stalls
    // here, at about the 17th request.
    for _ in 0..40 {
        let (r, took) = server.get(&long, limit);
        assert_eq!(r.status, 404, "{}", r.text());
        slowest = slowest.max(took);
    }
    let mut sent = 40;
    while server.dropped() == 0 {
        assert!(sent < 2000, "2000 long lines and still nothing dropped");
        let (r, took) = server.get(&long, limit);
        assert_eq!(r.status, 404, "{}", r.text());
        slowest = slowest.max(took);
        sent += 1;
    }
    // The destination is stuck and the queue full: requests are still answered at once.
    for _ in 0..50 {
        let (r, took) = server.get("/healthz", limit);
        assert_eq!(r.status, 200);
        slowest = slowest.max(took);
    }
    assert!(slowest < limit, "slowest answer {slowest:?}");
    eprintln!("stalled stderr: {sent} long lines until the first drop; slowest answer {slowest:?}");
    // The exit waits for the stuck writer only briefly (log.rs FLUSH_WAIT).
    let status = server.stop();
    assert_eq!(status.code(), Some(0), "{status}");
}

/// Starts the CLI on `data` with the given stdout and stderr.
fn cli_with(data: &Path, args: &[&str], stdout: Stdio, stderr: Stdio) -> Child {
    crate::support::cli(&[])
        .data_dir(data)
        .args(args)
        .cwd(data.parent().unwrap())
        .spawn(stdout, stderr)
}

/// The write end of a pipe whose reader has already exited.
fn closed_pipe() -> Stdio {
    let mut reader = Command::new("true").stdin(Stdio::piped()).spawn().unwrap();
    let write_end = reader.stdin.take().unwrap();
    reader.wait().unwrap();
    Stdio::from(write_end)
}

fn dev_full() -> Stdio {
    Stdio::from(OpenOptions::new().write(true).open("/dev/full").unwrap())
}

#[test]
fn the_cli_never_panics_on_a_broken_stdout_or_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for (name, stdout) in [("pipe-gone", closed_pipe()), ("disk-full", dev_full())] {
        let out = cli_with(&data, &["user", "add", name], stdout, Stdio::piped())
            .wait_with_output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        // The key did not reach anyone: a failure, said in words, not a panic (101).
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
        assert!(
            stderr.contains("cannot write the result to stdout")
                && stderr.contains("user rotate-key"),
            "{name}: {stderr}"
        );
    }
    for args in [&["user", "list"][..], &["check-config"]] {
        let out = cli_with(&data, args, dev_full(), Stdio::piped())
            .wait_with_output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    // Only stderr broken: the command works and says so with its exit code.
    for stderr in [closed_pipe(), dev_full()] {
        let out = cli_with(&data, &["user", "add", "quiet"], Stdio::piped(), stderr)
            .wait_with_output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0));
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("fgk_"));
        let out = cli_with(
            &data,
            &["user", "remove", "quiet"],
            Stdio::null(),
            Stdio::null(),
        )
        .wait()
        .unwrap();
        assert!(out.success());
    }
}
