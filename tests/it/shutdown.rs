//! Graceful shutdown (docs/operations/running.md "Shutdown"): SIGTERM stops accepting, lets an
//! in-flight request finish and exits 0 with its write kept; a second signal exits at
//! once, non-zero, and still loses no acknowledged write.

use std::io::Write;
use std::time::Duration;

use serde_json::json;

use crate::support::{begin_slow_request, read_response, Options, TestServer};

/// Waits until the server is draining, observed as the world sees it: the listener is
/// closed, so a new connection is refused (not by waiting on the log's text).
fn wait_until_draining(server: &TestServer) {
    crate::support::poll_until(Duration::from_secs(20), "the listener to close", || {
        std::net::TcpStream::connect(server.addr)
            .is_err()
            .then_some(())
    });
}

#[test]
fn sigterm_lets_an_in_flight_request_finish_and_exits_0() {
    let mut server = TestServer::start();
    let token = server.admin_token();
    let body = serde_json::to_vec(&json!({"name": "Drained", "devices": ["d-1"]})).unwrap();
    let (first, rest) = body.split_at(body.len() / 2);

    let mut slow = begin_slow_request(&server, "POST", "/api/groups", &token, body.len());
    slow.write_all(first).unwrap();
    server.signal("TERM");
    // The listener is closed: new clients are refused, not queued.
    wait_until_draining(&server);

    slow.write_all(rest).unwrap();
    let r = read_response(&mut slow);
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();

    let status = server.wait();
    assert_eq!(status.code(), Some(0), "log:\n{}", server.log());
    assert!(
        server.log().contains("store flushed; bye"),
        "{}",
        server.log()
    );

    server.restart();
    let token = server.admin_token();
    let r = server
        .req("GET", &format!("/api/groups/{id}"))
        .bearer(&token)
        .send();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["name"], "Drained");
}

#[test]
fn a_second_signal_exits_at_once_and_keeps_acknowledged_writes() {
    // A long grace period: without the second signal the server would wait a minute
    // for the slow request below.
    let mut server =
        TestServer::with(Options::default().env("FLEETGROUPS_SHUTDOWN_GRACE_SECS", "60"));
    let token = server.admin_token();
    let mut ids = Vec::new();
    for i in 0..3 {
        let r = server
            .req("POST", "/api/groups")
            .bearer(&token)
            .json(&json!({"name": format!("Kept {i}")}))
            .send();
        assert_eq!(r.status, 201, "{}", r.text());
        ids.push(r.json()["id"].as_str().unwrap().to_string());
    }
    let body = serde_json::to_vec(&json!({"name": "Never acknowledged"})).unwrap();
    let mut slow = begin_slow_request(&server, "POST", "/api/groups", &token, body.len());
    slow.write_all(&body[..4]).unwrap();

    server.signal("TERM");
    wait_until_draining(&server);
    server.signal("INT");
    let status = server
        .wait_timeout(Duration::from_secs(20))
        .unwrap_or_else(|| {
            panic!(
                "the second signal did not end the server; log:\n{}",
                server.log()
            )
        });
    assert!(!status.success(), "{status}");
    assert!(server.log().contains("second signal"), "{}", server.log());

    server.restart();
    let token = server.admin_token();
    for (i, id) in ids.iter().enumerate() {
        let r = server
            .req("GET", &format!("/api/groups/{id}"))
            .bearer(&token)
            .send();
        assert_eq!(r.status, 200, "{id}: {}", r.text());
        assert_eq!(r.json()["name"], format!("Kept {i}"));
    }
    let r = server.req("GET", "/api/groups").bearer(&token).send();
    assert_eq!(r.status, 200, "{}", r.text());
    let names: Vec<_> = r.json()["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["Kept 0", "Kept 1", "Kept 2"]);
}

/// A CLI command while the server shuts down (here: held in its grace period by an
/// unfinished request) is told the server is stopping, exit 1, nothing done; not
/// "wait for the server to finish starting". Once stopped, the same command works.
#[test]
fn a_cli_command_during_shutdown_is_told_the_server_is_stopping() {
    let mut server = TestServer::start();
    let token = server.admin_token();
    let body = serde_json::to_vec(&json!({"name": "Drained"})).unwrap();
    let mut slow = begin_slow_request(&server, "POST", "/api/groups", &token, body.len());
    slow.write_all(&body[..4]).unwrap();
    server.signal("TERM");
    wait_until_draining(&server);
    let out = server.cli(&["user", "add", "late"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .contains("the server is stopping; nothing was done"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("finish starting"), "{}", out.stderr);
    slow.write_all(&body[4..]).unwrap();
    assert_eq!(read_response(&mut slow).status, 201);
    assert_eq!(server.wait().code(), Some(0), "{}", server.log());
    let listed = server.cli(&["user", "list"]);
    assert_eq!(listed.code, 0, "{listed:?}");
    assert!(!listed.stdout.contains("late"), "{}", listed.stdout);
}
