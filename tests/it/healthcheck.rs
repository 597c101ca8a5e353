//! `fleetgroups healthcheck` (issue 12 item 7), run as the real binary: exit 0 when
//! `/readyz` on the configured listen address answers 200 within 3 s, else 1 — never
//! 2, which Docker reserves — for every way a server can be unready, absent, slow,
//! silent or not HTTP at all. Wildcard addresses are probed on loopback, and a TLS
//! server is probed over TLS without trusting its certificate.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{CliOutput, Options, TestServer};

/// `fleetgroups [--config FILE] healthcheck` with `FLEETGROUPS_LISTEN=listen`, timed.
fn healthcheck(listen: &str, config: Option<&Path>) -> (CliOutput, Duration) {
    let mut cmd = crate::support::cli(&[]);
    if let Some(c) = config {
        cmd = cmd.arg("--config").arg(c);
    }
    // An empty directory: no ./config.toml is picked up.
    let cwd = tempfile::tempdir().unwrap();
    let cmd = cmd
        .arg("healthcheck")
        .env("FLEETGROUPS_LISTEN", listen)
        .cwd(cwd.path());
    let started = Instant::now();
    let out = cmd.run_within(Duration::from_secs(30));
    (out, started.elapsed())
}

/// A port on which nothing listens (bound, then released).
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A one-connection fake server on `bind`: reads the request head, hands it to
/// `answer`, which writes what the test wants. Returns the address and a handle that
/// yields the request head.
fn fake_server(
    bind: &str,
    answer: impl FnOnce(&mut TcpStream) + Send + 'static,
) -> Option<(SocketAddr, std::thread::JoinHandle<String>)> {
    let listener = TcpListener::bind(bind).ok()?;
    let addr = listener.local_addr().unwrap();
    let handle = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match conn.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => break,
            }
        }
        answer(&mut conn);
        String::from_utf8_lossy(&head).into_owned()
    });
    Some((addr, handle))
}

#[test]
fn a_ready_server_is_healthy() {
    let server = TestServer::start();
    let (out, took) = healthcheck(&server.addr.to_string(), None);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("ready: 200 from http://{}/readyz", server.addr)),
        "{out:?}"
    );
    assert!(out.stdout.is_empty(), "{out:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[test]
fn a_wildcard_listen_address_is_probed_on_loopback() {
    // The server listens on 127.0.0.1 only; a probe configured with 0.0.0.0 (what a
    // container's configuration says) must reach it there.
    let server = TestServer::start();
    let (out, _) = healthcheck(&format!("0.0.0.0:{}", server.addr.port()), None);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("http://127.0.0.1:{}/readyz", server.addr.port())),
        "{out:?}"
    );
}

#[test]
fn the_ipv6_wildcard_is_probed_on_ipv6_loopback() {
    let Some((addr, request)) = fake_server("[::1]:0", |c| {
        let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    }) else {
        panic!("cannot listen on [::1]: this test needs an IPv6 loopback (`sysctl net.ipv6.conf.lo.disable_ipv6=0`)");
    };
    let (out, _) = healthcheck(&format!("[::]:{}", addr.port()), None);
    assert_eq!(out.code, 0, "{out:?}");
    let head = request.join().unwrap();
    // What the server needs: the path, HTTP/1.1, a Host (400 without one), no
    // keep-alive.
    assert!(head.starts_with("GET /readyz HTTP/1.1\r\n"), "{head:?}");
    assert!(
        head.contains(&format!("\r\nHost: [::1]:{}\r\n", addr.port())),
        "{head:?}"
    );
    assert!(head.contains("\r\nConnection: close\r\n"), "{head:?}");
}

#[test]
fn a_server_whose_storage_refuses_writes_is_unhealthy() {
    // /healthz still says 200 here; /readyz says 503, and the probe follows /readyz.
    let server =
        TestServer::with(Options::default().env("FLEETGROUPS_FAULT_FAIL_FLUSH_AFTER", "3"));
    let token = server.admin_token();
    crate::support::poll_until(Duration::from_secs(30), "a refused write", || {
        let r = server
            .req("POST", "/api/groups")
            .bearer(&token)
            .json(&json!({"name": format!("g{}", rand_suffix())}))
            .send();
        (r.status == 503).then_some(())
    });
    assert_eq!(server.req("GET", "/healthz").send().status, 200);
    let (out, _) = healthcheck(&server.addr.to_string(), None);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("not ready"), "{out:?}");
    assert!(out.stderr.contains("answered 503"), "{out:?}");
}

/// A name that differs per call, without a clock or a counter shared between tests.
fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[test]
fn nothing_listening_is_unhealthy_at_once() {
    let port = closed_port();
    let (out, took) = healthcheck(&format!("127.0.0.1:{port}"), None);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("unhealthy"), "{out:?}");
    assert!(
        took < Duration::from_secs(2),
        "a refused connection needs no timeout: {took:?}"
    );
}

#[test]
fn a_server_that_accepts_and_says_nothing_fails_within_the_deadline() {
    let (addr, request) = fake_server("127.0.0.1:0", |c| {
        // Hold the connection open, silent, well past the probe's deadline.
        let mut buf = [0u8; 1];
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = c.read(&mut buf);
    })
    .unwrap();
    let (out, took) = healthcheck(&addr.to_string(), None);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("no answer within 3 s"), "{out:?}");
    assert!(
        took >= Duration::from_millis(2900) && took < Duration::from_secs(6),
        "the deadline is 3 s: {took:?}"
    );
    request.join().unwrap();
}

#[test]
fn a_server_trickling_bytes_cannot_stretch_the_deadline() {
    // Every read makes progress, so only a deadline for the whole probe ends it.
    let (addr, request) = fake_server("127.0.0.1:0", |c| {
        let started = Instant::now();
        for b in b"HTTP/1.1 200 OK".iter().cycle() {
            if c.write_all(&[*b]).is_err() || started.elapsed() > Duration::from_secs(8) {
                break;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    })
    .unwrap();
    let (out, took) = healthcheck(&addr.to_string(), None);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        took < Duration::from_secs(6),
        "the deadline is 3 s: {took:?}"
    );
    request.join().unwrap();
}

#[test]
fn a_slow_answer_inside_the_deadline_is_healthy() {
    let (addr, request) = fake_server("127.0.0.1:0", |c| {
        // The server under test is slow: that is what this test is about.
        std::thread::sleep(Duration::from_millis(1500));
        let _ = c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    })
    .unwrap();
    let (out, took) = healthcheck(&addr.to_string(), None);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(took >= Duration::from_millis(1500), "{took:?}");
    request.join().unwrap();
}

#[test]
fn an_answer_that_is_not_http_is_unhealthy() {
    let (addr, request) = fake_server("127.0.0.1:0", |c| {
        let _ = c.write_all(b"SSH-2.0-OpenSSH_9.2\r\n");
    })
    .unwrap();
    let (out, _) = healthcheck(&addr.to_string(), None);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("not HTTP/1.x"), "{out:?}");
    request.join().unwrap();
}

#[test]
fn configuration_problems_are_exit_1_not_2() {
    // Docker reads 2 as "reserved"; a probe that cannot even start is unhealthy.
    let (out, _) = healthcheck("not-an-address", None);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("listen"), "{out:?}");
    let (out, _) = healthcheck("127.0.0.1:0", None);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("port 0"), "{out:?}");
}

#[test]
fn a_tls_server_is_probed_over_tls_without_trusting_its_certificate() {
    // The certificate is for "localhost" and self-signed; the probe connects to
    // 127.0.0.1 and trusts no one, and must still get its 200.
    let dir = tempfile::tempdir().unwrap();
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    let config = format!(
        "[tls]\ncert = {:?}\nkey = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    );
    let server = TestServer::with(Options::default().config(&config));
    let config_file = dir.path().join("probe.toml");
    std::fs::write(&config_file, &config).unwrap();
    let (out, _) = healthcheck(&server.addr.to_string(), Some(&config_file));
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("https://{}/readyz", server.addr)),
        "{out:?}"
    );
    // Without the TLS settings the probe speaks plain HTTP to the TLS port: unhealthy.
    let (out, _) = healthcheck(&server.addr.to_string(), None);
    assert_eq!(out.code, 1, "{out:?}");
}
