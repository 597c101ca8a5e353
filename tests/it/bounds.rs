//! Bytes a client controls, each bounded by a named configuration value (issue "No
//! client can make the server hold more than its configuration allows"): a JSON
//! Patch's operations and the document while it applies, a login's body, the request
//! bodies of all clients together, the answers waiting for slow readers, and the
//! stored first answers of `Idempotency-Key` creates. Each test shows the bound's
//! answer and that nothing else changed; the memory and time these save are measured
//! in `bench/bounds.py`, not here.

use std::io::Write;

use serde_json::{json, Value};

use crate::support::{begin_slow_request, poll_until, raw, Options, TestServer};
use std::time::Duration;

fn devices(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("dev-{i:05}")).collect()
}

/// The patch: 24 copies of the device list into itself, each doubling the
/// document. Refused at the bound, the group as it was, and other accounts' writes go on.
#[test]
fn a_doubling_json_patch_is_refused_at_the_document_bound() {
    let (server, a, b) = TestServer::two_accounts();
    let (a, b) = (server.client(&a), server.client(&b));
    let g = a.create(&json!({"name": "Doubling", "devices": devices(64)}));
    let id = g["id"].as_str().unwrap();
    let before = a.group(id);
    let ops: Vec<Value> = (0..24)
        .map(|_| json!({"op": "copy", "from": "/devices", "path": "/devices/-"}))
        .collect();
    let body = serde_json::to_vec(&ops).unwrap();
    let r = a
        .req("PATCH", &format!("/api/groups/{id}"))
        .body_as("application/json-patch+json", &body)
        .send();
    let v = r.expect_error(400, "invalid_patch");
    let msg = v["error"].as_str().unwrap();
    assert!(msg.contains("limits.max_patch_document_bytes"), "{msg}");
    assert_eq!(a.group(id), before, "the group is unchanged");
    b.create(&json!({"name": "Other account", "devices": ["x"]}));
}

#[test]
fn patch_operation_count_and_document_size_are_configured() {
    let server = TestServer::with(
        Options::default()
            .env("FLEETGROUPS_LIMITS_MAX_PATCH_OPERATIONS", "3")
            .env("FLEETGROUPS_LIMITS_MAX_PATCH_DOCUMENT_BYTES", "2048"),
    );
    let c = server.client(&server.admin_token());
    let g = c.create(&json!({"name": "Small", "devices": ["a"]}));
    let id = g["id"].as_str().unwrap();
    let path = format!("/api/groups/{id}");
    let add = |d: &str| json!({"op": "add", "path": "/devices/-", "value": d});
    let four = serde_json::to_vec(&[add("b"), add("c"), add("d"), add("e")]).unwrap();
    let r = c
        .req("PATCH", &path)
        .body_as("application/json-patch+json", &four)
        .send();
    let v = r.expect_error(400, "invalid_patch");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("at most 3 operations"),
        "{v}"
    );
    let three = serde_json::to_vec(&[add("b"), add("c"), add("d")]).unwrap();
    let r = c
        .req("PATCH", &path)
        .body_as("application/json-patch+json", &three)
        .send();
    assert_eq!(r.expect_ok(200)["devices"], json!(["a", "b", "c", "d"]));
    // A merge patch is bounded alike: its document would pass 2,048 bytes.
    let big = json!({"description": "d".repeat(1000), "devices": devices(100)});
    let r = c
        .req("PATCH", &path)
        .body_as(
            "application/merge-patch+json",
            &serde_json::to_vec(&big).unwrap(),
        )
        .send();
    let v = r.expect_error(400, "invalid_input");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("limits.max_patch_document_bytes"),
        "{v}"
    );
    assert_eq!(c.group(id)["devices"], json!(["a", "b", "c", "d"]));
}

/// A login body is small: one over `limits.max_token_body_bytes` (4 KiB) is a 413,
/// whether it declares its length or comes chunked, and a valid login still works.
#[test]
fn an_oversized_login_body_is_413() {
    let server = TestServer::start();
    let key = server.admin_key();
    let padded = json!({"userName": "admin", "apiKey": key, "pad": "p".repeat(5000)});
    let r = server.req("POST", "/api/Auth/Token").json(&padded).send();
    r.expect_error(413, "body_too_large");
    // Chunked: cut off once past the limit.
    let body = serde_json::to_vec(&padded).unwrap();
    let mut req = format!(
        "POST /api/Auth/Token HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        server.addr
    )
    .into_bytes();
    for part in body.chunks(1000) {
        req.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        req.extend_from_slice(part);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    raw(server.addr, &req).expect_error(413, "body_too_large");
    server.login("admin", &key);
}

/// Bodies being received are paid for from `limits.body_budget_bytes`: while one body
/// holds the whole budget, another waits and is then refused with 503 `server_busy`
/// (and `Retry-After`), counted in `/metrics`; once the first is done, it goes through.
#[test]
fn the_body_budget_refuses_bodies_past_it() {
    let server = TestServer::with(
        Options::default()
            .env("FLEETGROUPS_LIMITS_MAX_BODY_BYTES", "65536")
            .env("FLEETGROUPS_LIMITS_BODY_BUDGET_BYTES", "65536"),
    );
    let token = server.admin_token();
    let c = server.client(&token);
    let body = serde_json::to_vec(&json!({"name": "Held", "devices": ["a"]})).unwrap();
    let mut padded = body.clone();
    padded.resize(65536, b' ');
    // Declares 64 KiB and sends none of it yet: the whole budget is taken.
    let mut held = begin_slow_request(&server, "POST", "/api/groups", &token, padded.len());
    poll_until(Duration::from_secs(10), "the body budget in use", || {
        (server.metric("fleetgroups_budget_in_use_bytes{budget=\"body\"}") == Some(65536.0))
            .then_some(())
    });
    let r = c.post("/api/groups", &json!({"name": "Refused"}));
    r.expect_error(503, "server_busy");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(
        server.metric("fleetgroups_budget_refused_total{budget=\"body\"}"),
        Some(1.0)
    );
    held.write_all(&padded).unwrap();
    crate::support::read_response(&mut held).expect_ok(201);
    poll_until(Duration::from_secs(10), "the budget given back", || {
        (server.metric("fleetgroups_budget_in_use_bytes{budget=\"body\"}") == Some(0.0))
            .then_some(())
    });
    c.create(&json!({"name": "Refused"}));
    let names: Vec<Value> = c.groups().iter().map(|g| g["name"].clone()).collect();
    assert_eq!(names, [json!("Held"), json!("Refused")]);
}

/// Remembered first answers are bounded in bytes per user
/// (`limits.idempotency_bytes_per_user`): a create whose answer does not fit beside the
/// older ones evicts the oldest, so a retry of that older key creates anew, while the
/// newest still replays — also across a restart (the tally is stored).
#[test]
fn idempotency_answers_are_bounded_in_bytes_per_user() {
    let mut server = TestServer::with(
        Options::default().env("FLEETGROUPS_LIMITS_IDEMPOTENCY_BYTES_PER_USER", "20000"),
    );
    let c = server.client(&server.admin_token());
    let create = |c: &crate::support::Client<'_>, key: &str, name: &str| {
        c.req("POST", "/api/groups")
            .header("Idempotency-Key", key)
            .json(&json!({"name": name, "devices": devices(1000)}))
            .send()
    };
    // Each answer is about 13 KB (what the bound counts, though it is stored
    // deflated): the second does not fit beside the first.
    let first = create(&c, "k1", "One");
    let first_id = first.expect_ok(201)["id"].clone();
    c.delete(&format!("/api/groups/{}", first_id.as_str().unwrap()))
        .expect_ok(200);
    let second = create(&c, "k2", "Two");
    let second_id = second.expect_ok(201)["id"].clone();
    server.stop();
    server.restart();
    let c = server.client(&server.admin_token());
    let again = create(&c, "k2", "Two");
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.expect_ok(201)["id"], second_id);
    let retried = create(&c, "k1", "One");
    assert_eq!(
        retried.header("idempotent-replayed"),
        None,
        "k1 was evicted"
    );
    assert_ne!(retried.expect_ok(201)["id"], first_id);
}

/// A group whose answer (about 670 KB) is larger than what the kernel buffers of a
/// client that does not read can take, so its answer stays in the server.
fn big_group(c: &crate::support::Client<'_>) -> (String, Vec<String>) {
    let devices: Vec<String> = (0..10_000).map(|i| format!("{i:0>64}")).collect();
    let g = c.create(&json!({"name": "Big", "devices": devices}));
    (g["id"].as_str().unwrap().to_string(), devices)
}

/// Answers waiting for their clients are paid for from `limits.answer_budget_bytes`:
/// while a client that does not read holds a large answer, another read of it is
/// refused with 503 `server_busy` (small answers and writes' answers still go out);
/// once that client is gone, the budget is back.
#[test]
fn the_answer_budget_refuses_large_reads_past_it() {
    let server = TestServer::with(
        Options::default()
            .env("FLEETGROUPS_LIMITS_ANSWER_BUDGET_BYTES", "800000")
            .env("FLEETGROUPS_LIMITS_MAX_PAGE_BYTES", "65536"),
    );
    let token = server.admin_token();
    let c = server.client(&token);
    let (id, devices) = big_group(&c);
    let path = format!("/api/groups/{id}");
    let get = format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n");
    let stalled = crate::exhaustion::stalled_client(server.addr, &get, 1);
    let in_use = "fleetgroups_budget_in_use_bytes{budget=\"answer\"}";
    poll_until(Duration::from_secs(10), "the answer budget in use", || {
        (server.metric(in_use).unwrap_or(0.0) > 500_000.0).then_some(())
    });
    let r = c.get(&path);
    r.expect_error(503, "server_busy");
    assert_eq!(r.header("retry-after"), Some("1"));
    server.req("GET", "/healthz").send().expect_ok(200);
    // A small read goes through while a page's worth of the budget is free...
    c.get("/api/groups?limit=1&name=nothing").expect_ok(200);
    // A write's answer is as large, and goes out: the change is made.
    let renamed = c.put(&path, &json!({"name": "Bigger", "devices": devices}));
    assert_eq!(renamed.expect_ok(200)["name"], "Bigger");
    drop(stalled);
    poll_until(
        Duration::from_secs(10),
        "the answer budget given back",
        || (server.metric(in_use) == Some(0.0)).then_some(()),
    );
    assert_eq!(c.get(&path).expect_ok(200)["name"], "Bigger");
    // ...and is refused before it is built when less than that is free.
    let tight = TestServer::with(
        Options::default()
            .env("FLEETGROUPS_LIMITS_ANSWER_BUDGET_BYTES", "700000")
            .env("FLEETGROUPS_LIMITS_MAX_PAGE_BYTES", "65536"),
    );
    let t = tight.client(&tight.admin_token());
    let (id, _) = big_group(&t);
    let get = format!(
        "GET /api/groups/{id} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        t.token
    );
    let _stalled = crate::exhaustion::stalled_client(tight.addr, &get, 1);
    poll_until(Duration::from_secs(10), "the answer budget in use", || {
        (tight.metric(in_use).unwrap_or(0.0) > 500_000.0).then_some(())
    });
    t.get("/api/groups?limit=1&name=nothing")
        .expect_error(503, "server_busy");
    assert!(
        server
            .metric("fleetgroups_budget_refused_total{budget=\"answer\"}")
            .unwrap()
            >= 1.0
    );
}

/// A client that reads, but slower than `limits.min_read_bytes_per_sec`, is cut once
/// the server has waited the write timeout (here 5 s) for it, and counted. It reads
/// often enough that the write timeout (no progress at all) never fires.
#[test]
fn a_slow_reader_is_cut() {
    let server = TestServer::with(
        Options::default()
            .env("FLEETGROUPS_LIMITS_MIN_READ_BYTES_PER_SEC", "1000000")
            .env("FLEETGROUPS_LIMITS_WRITE_TIMEOUT_SECS", "5"),
    );
    let token = server.admin_token();
    let c = server.client(&token);
    let (id, _) = big_group(&c);
    let get = format!(
        "GET /api/groups/{id} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    let mut slow = crate::exhaustion::stalled_client(server.addr, &get, 1);
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // About 40 KB a second: far below the least rate, far from stopping. The pause
    // is the client's slowness, not a wait for the server.
    let started = std::time::Instant::now();
    let mut got = 0usize;
    let mut buf = [0u8; 1024];
    let cut = loop {
        assert!(started.elapsed() < Duration::from_secs(60), "never cut");
        match std::io::Read::read(&mut slow, &mut buf) {
            Ok(0) | Err(_) => break true,
            Ok(n) => got += n,
        }
        std::thread::sleep(Duration::from_millis(25));
    };
    assert!(
        cut && got < 600_000,
        "cut before the whole answer: {got} bytes"
    );
    assert_eq!(
        server.metric("fleetgroups_connections_closed_total{reason=\"slow_reader\"}"),
        Some(1.0)
    );
    // A client that reads at once is not.
    assert_eq!(c.group(&id)["name"], "Big");
}
