//! The systemd notify protocol through the real binary: the test plays systemd by
//! binding the datagram socket named in `NOTIFY_SOCKET`, and expects READY=1 once the
//! server listens, WATCHDOG=1 pings at `WATCHDOG_USEC / 2`, and STOPPING=1 after
//! SIGTERM, then exit 0.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use crate::support::{Options, TestServer};

/// Receives datagrams until one satisfies `want`; returns it and those skipped before.
fn recv_until(sock: &UnixDatagram, want: impl Fn(&str) -> bool) -> (String, Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut skipped = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        let n = match sock.recv(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
            Err(e) => panic!("recv: {e}"),
        };
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        if want(&msg) {
            return (msg, skipped);
        }
        skipped.push(msg);
    }
    panic!("no matching notification within 30 s; got {skipped:?}");
}

fn listen(path: &std::path::Path) -> UnixDatagram {
    let sock = UnixDatagram::bind(path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    sock
}

#[test]
fn ready_watchdog_and_stopping_reach_the_notify_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = listen(&path);
    let mut server = TestServer::with(
        Options::default()
            .env("NOTIFY_SOCKET", path.to_str().unwrap())
            // 0.4 s: a ping every 0.2 s.
            .env("WATCHDOG_USEC", "400000"),
    );

    let (ready, before) = recv_until(&sock, |m| m.contains("READY=1"));
    assert!(before.is_empty(), "READY=1 must come first, got {before:?}");
    assert!(
        ready.contains(&format!("STATUS=serving on http://{}", server.addr)),
        "{ready:?}"
    );
    // The server is listening by the time it says so.
    assert_eq!(server.req("GET", "/healthz").send().status, 200);

    for _ in 0..2 {
        let (ping, other) = recv_until(&sock, |m| m == "WATCHDOG=1");
        assert_eq!(ping, "WATCHDOG=1");
        assert!(other.is_empty(), "unexpected notifications {other:?}");
    }

    server.signal("TERM");
    let (stopping, between) = recv_until(&sock, |m| m.starts_with("STOPPING=1"));
    assert!(stopping.starts_with("STOPPING=1"), "{stopping:?}");
    assert!(
        between.iter().all(|m| m == "WATCHDOG=1"),
        "only watchdog pings may come before STOPPING=1: {between:?}"
    );
    assert_eq!(server.wait().code(), Some(0), "{}", server.log());
}

#[test]
fn an_abstract_notify_socket_works_too() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("fleetgroups-it-notify-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let sock = UnixDatagram::bind_addr(&addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut server = TestServer::with(Options::default().env("NOTIFY_SOCKET", &format!("@{name}")));
    let (ready, _) = recv_until(&sock, |m| m.contains("READY=1"));
    assert!(ready.starts_with("READY=1"), "{ready:?}");
    server.signal("TERM");
    let (_, before) = recv_until(&sock, |m| m.starts_with("STOPPING=1"));
    // Without WATCHDOG_USEC the watchdog stays off.
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(server.wait().code(), Some(0));
}
