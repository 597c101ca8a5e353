//! Clients that never read, and answers without bounds (issue "Nothing outside a
//! request can stop, starve or exhaust the service"): a connection whose client takes
//! none of its answer is cut after `limits.write_timeout_secs`; at the connection limit
//! stalled connections make room for new clients; change-feed pages stop at
//! `limits.max_page_bytes`; the reverse lookup pages; unpaged lists stream, so stalled
//! readers of a long list hold little memory. A stalled client here is a real socket
//! with a small receive buffer that pipelines requests and never reads; every wait on
//! the server is a poll of `/metrics` or a read with a deadline.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{group_ids_of, poll_until, Client, Options, TestServer};

/// A connection that pipelines `count` copies of `request` and never reads. Its
/// receive buffer is made small (before connecting, so the window is small from the
/// start), so the server's writes block after a few answers.
pub fn stalled_client(addr: SocketAddr, request: &str, count: usize) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("runtime");
    let s = rt
        .block_on(async {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.set_recv_buffer_size(4096)?;
            socket.connect(addr).await
        })
        .expect("connect");
    let mut s = s.into_std().expect("into_std");
    s.set_nonblocking(false).expect("blocking");
    s.write_all(request.repeat(count).as_bytes())
        .expect("pipeline the requests");
    s
}

/// The value of one sample line of `/metrics` (0 when absent).
fn metric(server: &TestServer, sample: &str) -> u64 {
    let text = server.req("GET", "/metrics").send().text();
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0)
}

/// The server's resident memory in KiB.
fn rss_kib(server: &TestServer) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

const OPENAPI: &str = "GET /api/openapi.json HTTP/1.1\r\nHost: t\r\n\r\n";

#[test]
fn a_client_that_stops_reading_is_cut_after_the_write_timeout() {
    let server =
        TestServer::with(Options::default().env("FLEETGROUPS_LIMITS_WRITE_TIMEOUT_SECS", "1"));
    let sent = 200;
    let mut stalled = stalled_client(server.addr, OPENAPI, sent);
    poll_until(Duration::from_secs(20), "a write timeout", || {
        (metric(
            &server,
            "fleetgroups_connections_closed_total{reason=\"write_timeout\"}",
        ) == 1)
            .then_some(())
    });
    // Only the answers that fitted the socket buffers were made: a pipelined request
    // waits while the answers before it are not taken.
    let answered = metric(
        &server,
        "fleetgroups_requests_total{route=\"/api/openapi.json\",status=\"200\"}",
    );
    assert!(answered < sent as u64 / 2, "{answered} of {sent} answered");
    // The connection is gone: what the client reads now ends.
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut sink = Vec::new();
    match stalled.read_to_end(&mut sink) {
        Ok(_) => {}
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
    }
    let document_len = server.req("GET", "/api/openapi.json").send().body.len();
    assert!(sink.len() < sent * document_len, "{} bytes", sink.len());
    assert_eq!(server.req("GET", "/healthz").send().status, 200);
}

#[test]
fn new_clients_are_answered_within_a_second_while_a_thousand_clients_stall() {
    // More stalled clients than the limit, so that the server stays at the limit
    // however many it cuts; the extra ones wait in the listen backlog.
    let limit = 1000;
    let stalled_count = limit + 10;
    let server = TestServer::with(
        Options::default().env("FLEETGROUPS_LIMITS_MAX_CONNECTIONS", &limit.to_string()),
    );
    let rss_before = rss_kib(&server);
    let stalled: Vec<TcpStream> = (0..stalled_count)
        .map(|_| stalled_client(server.addr, OPENAPI, 30))
        .collect();
    // Every permit is held by a client that reads nothing once their answers block.
    // (Each look at /metrics needs a connection too, so it makes room itself.)
    poll_until(Duration::from_secs(30), "the clients to stall", || {
        (metric(&server, "fleetgroups_connections_blocked") >= limit as u64 - 10).then_some(())
    });
    // Fresh clients, one at a time, each on a new connection.
    let mut waits = Vec::new();
    for _ in 0..10 {
        let started = Instant::now();
        let mut s = TcpStream::connect(server.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .expect("write");
        let r = crate::support::read_response(&mut s);
        assert_eq!(r.status, 200);
        waits.push(started.elapsed());
    }
    waits.sort();
    // Room was made by closing connections: unread ones once every connection stalled
    // (and, before that, ones accepted from the backlog that had not started).
    let closed = |reason: &str| {
        metric(
            &server,
            &format!("fleetgroups_connections_closed_total{{reason=\"{reason}\"}}"),
        )
    };
    let evicted = closed("evicted_stalled");
    assert!(
        evicted >= 1 && evicted + closed("evicted_idle") >= 10,
        "stalled connections made room: {evicted}\n{}",
        server.req("GET", "/metrics").send().text()
    );
    let rss_after = rss_kib(&server);
    println!(
        "fresh client with {limit} stalled at the limit: median {:?}, max {:?}; RSS {} -> {} KiB",
        waits[waits.len() / 2],
        waits[waits.len() - 1],
        rss_before,
        rss_after
    );
    assert!(
        waits[waits.len() / 2] < Duration::from_secs(1),
        "median wait {:?} ({waits:?})",
        waits[waits.len() / 2]
    );
    assert!(waits[waits.len() - 1] < Duration::from_secs(3), "{waits:?}");
    assert!(
        rss_after < rss_before + 96 * 1024,
        "{rss_before} -> {rss_after} KiB"
    );
    drop(stalled);
}

/// `count` device IDs of about 20 bytes each, numbered from `from`.
fn devices(from: usize, count: usize) -> Vec<String> {
    (from..from + count)
        .map(|i| format!("device-{i:012}"))
        .collect()
}

#[test]
fn change_feed_pages_stop_at_max_page_bytes_and_next_continues() {
    let server =
        TestServer::with(Options::default().env("FLEETGROUPS_LIMITS_MAX_PAGE_BYTES", "50000"));
    let admin = server.client(&server.admin_token());
    // Each entry carries its group, about 23 KB with 1,000 devices.
    for i in 0..5 {
        admin.create(&json!({"name": format!("Big {i}"), "devices": devices(i * 1000, 1000)}));
    }
    let mut after = 0u64;
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = admin
            .get(&format!("/api/changes?after={after}&limit=1000"))
            .expect_ok(200);
        let entries = page["changes"].as_array().expect("changes").clone();
        if entries.is_empty() {
            break;
        }
        pages += 1;
        let bytes: usize = entries.iter().map(|e| e.to_string().len()).sum();
        assert!(
            entries.len() == 1 || bytes <= 50_000,
            "{bytes} bytes in one page"
        );
        seen.extend(entries.iter().map(|e| e["seq"].as_u64().expect("seq")));
        after = page["next"].as_u64().expect("next is always a number");
    }
    assert_eq!(seen, vec![1, 2, 3, 4, 5], "every entry once, in order");
    assert!(pages >= 3, "{pages} pages");

    // An entry larger than the bound still comes, alone, so a reader never sticks.
    let small =
        TestServer::with(Options::default().env("FLEETGROUPS_LIMITS_MAX_PAGE_BYTES", "1024"));
    let c = small.client(&small.admin_token());
    c.create(&json!({"name": "Larger than a page", "devices": devices(0, 200)}));
    c.create(&json!({"name": "Second"}));
    let page = c.get("/api/changes?limit=10").expect_ok(200);
    assert_eq!(page["changes"].as_array().map(Vec::len), Some(1));
    assert_eq!(page["next"], 1);
}

#[test]
fn the_reverse_lookup_pages_with_limit_and_after_like_the_group_list() {
    let server = TestServer::start();
    let admin = server.client(&server.admin_token());
    for i in 0..5 {
        admin.create(&json!({"name": format!("G{i}"), "devices": ["shared", format!("own-{i}")]}));
    }
    admin.create(&json!({"name": "Without"}));
    let mut ids = Vec::new();
    let mut path = "/api/devices/shared/groups?limit=2".to_string();
    loop {
        let page = admin.get(&path).expect_ok(200);
        let got = group_ids_of(&page);
        assert!(got.len() <= 2, "{page}");
        ids.extend(got);
        match page["next"].as_str() {
            Some(next) => path = format!("/api/devices/shared/groups?limit=2&after={next}"),
            None => break,
        }
    }
    assert_eq!(ids, ["grp-1", "grp-2", "grp-3", "grp-4", "grp-5"]);
    // Unpaged: every group, no `next`, as before.
    let all = admin.get("/api/devices/shared/groups").expect_ok(200);
    assert_eq!(group_ids_of(&all).len(), 5);
    assert!(all.get("next").is_none(), "{all}");
    let page = admin
        .get("/api/devices/shared/groups?after=grp-4")
        .expect_ok(200);
    assert_eq!(group_ids_of(&page), ["grp-5"]);
    assert_eq!(page["next"], Value::Null);
    for bad in [
        "limit=0",
        "limit=1001",
        "limit=x",
        "after=5",
        "after=grp-01",
    ] {
        admin
            .get(&format!("/api/devices/shared/groups?{bad}"))
            .expect_error(400, "invalid_input");
    }
}

/// Creates `count` groups of `per_group` devices with `threads` writers at once.
fn seed(server: &TestServer, token: &str, count: usize, per_group: usize, threads: usize) {
    std::thread::scope(|scope| {
        for t in 0..threads {
            scope.spawn(move || {
                let c = Client {
                    server,
                    token: token.to_string(),
                };
                for i in (t..count).step_by(threads) {
                    c.create(&json!({"name": format!("Seeded {i}"), "devices": devices(i * per_group, per_group)}));
                }
            });
        }
    });
}

#[test]
fn unpaged_lists_stream_and_stalled_readers_of_them_hold_little_memory() {
    let server = TestServer::start();
    let token = server.admin_token();
    let admin = server.client(&token);
    // About 5 MB of list: well over one streamed chunk.
    seed(&server, &token, 8000, 20, 8);

    let whole = admin.get("/api/groups");
    assert_eq!(whole.status, 200);
    assert_eq!(whole.header("transfer-encoding"), Some("chunked"));
    let whole = whole.json();
    assert_eq!(whole["success"], true);
    assert!(whole.get("next").is_none(), "a Plaspy answer has no next");
    let ids = group_ids_of(&whole);
    let expected: Vec<String> = (1..=8000).map(|n| format!("grp-{n}")).collect();
    assert_eq!(ids, expected);
    // The same groups as the pages give.
    let mut paged = Vec::new();
    let mut after = String::new();
    loop {
        let page = admin
            .get(&format!("/api/groups?limit=1000{after}"))
            .expect_ok(200);
        paged.extend(page["groups"].as_array().expect("groups").iter().cloned());
        match page["next"].as_str() {
            Some(n) => after = format!("&after={n}"),
            None => break,
        }
    }
    assert_eq!(Some(&paged), whole["groups"].as_array());
    // The name and device filters stream too.
    let named = admin.get("/api/groups?name=seeded%207").expect_ok(200);
    assert_eq!(group_ids_of(&named).len(), 1 + 10 + 100 + 1000);

    // Sixteen readers that never read: each holds a chunk, not the list.
    let rss_before = rss_kib(&server);
    let request =
        format!("GET /api/groups HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\r\n");
    let requests = |server: &TestServer| {
        metric(
            server,
            "fleetgroups_requests_total{route=\"/api/groups\",status=\"200\"}",
        )
    };
    let before = requests(&server);
    let stalled: Vec<TcpStream> = (0..16)
        .map(|_| stalled_client(server.addr, &request, 1))
        .collect();
    poll_until(
        Duration::from_secs(20),
        "the stalled lists to begin",
        || (requests(&server) >= before + 16).then_some(()),
    );
    let started = Instant::now();
    admin.group("grp-1");
    let get_one = started.elapsed();
    let rss_after = rss_kib(&server);
    println!("16 stalled list readers: RSS {rss_before} -> {rss_after} KiB; GET one {get_one:?}");
    assert!(
        rss_after < rss_before + 16 * 1024,
        "{rss_before} -> {rss_after} KiB"
    );
    drop(stalled);
}
