//! [ext] Retry-safe create: `Idempotency-Key` on `POST /api/groups` replays the first
//! answer for the same body (also when the retries race), refuses another body with 422,
//! is scoped per user, survives a restart, and is bounded per user.

use serde_json::{json, Value};

use crate::support::{cli_in, group_ids_of, Options, Resp, TestServer};

fn post(server: &TestServer, token: &str, key: &str, body: &[u8]) -> Resp {
    server
        .req("POST", "/api/groups")
        .bearer(token)
        .header("Idempotency-Key", key)
        .body_as("application/json", body)
        .send()
}

fn group_ids(server: &TestServer, token: &str) -> Vec<String> {
    group_ids_of(&server.req("GET", "/api/groups").bearer(token).send().ok())
}

/// The answer without the usage counters, which grow with every request.
fn without_usage(mut v: Value) -> Value {
    let o = v.as_object_mut().expect("the answer has this shape");
    o.remove("apiUsage");
    o.remove("apiDailyUsage");
    v
}

#[test]
fn same_key_same_body_replays_the_first_answer() {
    let mut server = TestServer::start();
    let t = server.admin_token();
    let first = post(
        &server,
        &t,
        "order-17",
        br#"{"name": "Trucks", "devices": ["a", "b"], "description": null}"#,
    );
    assert_eq!(first.status, 201, "{}", first.text());
    assert_eq!(first.header("idempotent-replayed"), None);
    let id = first.json()["id"].as_str().unwrap().to_string();

    // The same body, formatted differently and with its keys in another order.
    let again = post(
        &server,
        &t,
        "order-17",
        br#"{"description":null,"devices":["a","b"],"name":"Trucks"}"#,
    );
    assert_eq!(again.status, 201, "{}", again.text());
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(without_usage(again.json()), without_usage(first.json()));
    assert_eq!(again.header("location"), first.header("location"));
    assert_eq!(again.etag(), first.etag());
    assert_eq!(group_ids(&server, &t), vec![id.clone()]);

    // The same key with another body: 422, nothing created.
    for other in [
        br#"{"name": "Vans"}"#.as_slice(),
        br#"{"name": "Trucks", "devices": ["b", "a"], "description": null}"#,
        br#"{"name": "Trucks", "devices": ["a", "b"], "description": null, "x": 1}"#,
    ] {
        post(&server, &t, "order-17", other).expect_error(422, "idempotency_key_reused");
    }
    assert_eq!(group_ids(&server, &t), vec![id.clone()]);

    // A replay is the first answer even after the group changed.
    server
        .req("PUT", &format!("/api/groups/{id}"))
        .bearer(&t)
        .json(&json!({"name": "Renamed"}))
        .send()
        .ok();
    let replay = post(
        &server,
        &t,
        "order-17",
        br#"{"name": "Trucks", "devices": ["a", "b"], "description": null}"#,
    );
    assert_eq!(replay.status, 201);
    assert_eq!(replay.json()["name"], "Trucks");

    // A failed create is not remembered: the key is still free afterwards.
    post(&server, &t, "k-2", br#"{"name": "renamed"}"#).expect_error(409, "name_conflict");
    let r = post(&server, &t, "k-2", br#"{"name": "Fresh"}"#);
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("idempotent-replayed"), None);

    // Keys are scoped per user: another user of the same account gets its own create.
    let key = server.add_user("bob", &["--account", "default"]);
    let bob = server.login("bob", &key);
    let theirs = post(&server, &bob, "order-17", br#"{"name": "Bobs"}"#);
    assert_eq!(theirs.status, 201, "{}", theirs.text());
    assert_eq!(theirs.header("idempotent-replayed"), None);

    // Records survive a restart (they were written with the group).
    server.stop();
    server.restart();
    let t = server.admin_token();
    let replay = post(
        &server,
        &t,
        "order-17",
        br#"{"name":"Trucks","devices":["a","b"],"description":null}"#,
    );
    assert_eq!(replay.status, 201);
    assert_eq!(replay.json()["id"], id.as_str());
    assert_eq!(group_ids(&server, &t).len(), 3);
}

#[test]
fn invalid_keys_are_refused_and_create_nothing() {
    let server = TestServer::start();
    let t = server.admin_token();
    let long = "k".repeat(256);
    for bad in ["", "has space", "tab\tkey", long.as_str()] {
        let v = post(&server, &t, bad, br#"{"name": "x"}"#).expect_error(400, "invalid_input");
        assert!(
            v["error"].as_str().unwrap().contains("Idempotency-Key"),
            "{v}"
        );
    }
    assert!(group_ids(&server, &t).is_empty());
    let ok = "k".repeat(255);
    assert_eq!(post(&server, &t, &ok, br#"{"name": "x"}"#).status, 201);
    // An invalid body is a 400 before the key is looked at or stored.
    post(&server, &t, "k", br#"{"name": 5}"#).expect_error(400, "invalid_input");
    assert_eq!(post(&server, &t, "k", br#"{"name": "y"}"#).status, 201);
}

#[test]
fn racing_retries_create_exactly_once() {
    let server = TestServer::start();
    let t = server.admin_token();
    let body = br#"{"name": "Raced", "devices": ["d"]}"#;
    let answers: Vec<Resp> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|_| s.spawn(|| post(&server, &t, "same-key", body)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ids: Vec<Value> = answers
        .iter()
        .map(|r| {
            assert_eq!(r.status, 201, "{}", r.text());
            r.json()["id"].clone()
        })
        .collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    let replayed = answers
        .iter()
        .filter(|r| r.header("idempotent-replayed") == Some("true"))
        .count();
    assert_eq!(replayed, 7);
    assert_eq!(
        group_ids(&server, &t),
        vec![ids[0].as_str().unwrap().to_string()]
    );
    // One create in the feed.
    let feed = server.req("GET", "/api/changes").bearer(&t).send().ok();
    assert_eq!(feed["changes"].as_array().unwrap().len(), 1);
}

#[test]
fn records_per_user_are_capped_oldest_first() {
    let server = TestServer::with(
        Options::default().env("FLEETGROUPS_LIMITS_IDEMPOTENCY_KEYS_PER_USER", "3"),
    );
    let t = server.admin_token();
    for i in 0..5 {
        let r = post(
            &server,
            &t,
            &format!("k{i}"),
            format!(r#"{{"name": "g{i}"}}"#).as_bytes(),
        );
        assert_eq!(r.status, 201, "{}", r.text());
    }
    // The three newest keys still replay.
    for i in 2..5 {
        let r = post(
            &server,
            &t,
            &format!("k{i}"),
            format!(r#"{{"name": "g{i}"}}"#).as_bytes(),
        );
        assert_eq!(r.header("idempotent-replayed"), Some("true"), "k{i}");
    }
    // k0 and k1 were evicted: the same request is now a new create (which conflicts on
    // the name, proving it was not replayed).
    for i in 0..2 {
        post(
            &server,
            &t,
            &format!("k{i}"),
            format!(r#"{{"name": "g{i}"}}"#).as_bytes(),
        )
        .expect_error(409, "name_conflict");
    }
    assert_eq!(group_ids(&server, &t).len(), 5);
}

#[test]
fn records_survive_backup_and_restore_with_their_scope_and_age() {
    let cap = Options::default().env("FLEETGROUPS_LIMITS_IDEMPOTENCY_KEYS_PER_USER", "2");
    let mut a = TestServer::with(cap.clone());
    let t = a.admin_token();
    let bob_key = a.add_user("bob", &["--account", "other"]);
    let bob = a.login("bob", &bob_key);
    for (token, body) in [(&t, r#"{"name": "a0"}"#), (&bob, r#"{"name": "b0"}"#)] {
        assert_eq!(post(&a, token, "k0", body.as_bytes()).status, 201);
    }
    assert_eq!(post(&a, &t, "k1", br#"{"name": "a1"}"#).status, 201);
    a.stop();
    let out_dir = tempfile::tempdir().expect("tempdir");
    let file = out_dir.path().join("b.jsonl");
    let out = a.cli(&["backup", file.to_str().expect("utf-8")]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("3 idempotency records"),
        "{}",
        out.stderr
    );

    let b_dir = tempfile::tempdir().expect("tempdir");
    let out = cli_in(
        &b_dir.path().join("data"),
        &["restore", file.to_str().expect("utf-8")],
        &[],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let b = TestServer::with_dir(b_dir, cap);
    let t = b.login("admin", &a.admin_key());
    let bob = b.login("bob", &bob_key);
    // Each user's k0 replays its own group (the scope came back with the user's account).
    let r = post(&b, &t, "k0", br#"{"name": "a0"}"#);
    assert_eq!((r.status, r.json()["name"].clone()), (201, json!("a0")));
    assert_eq!(r.header("idempotent-replayed"), Some("true"));
    let r = post(&b, &bob, "k0", br#"{"name": "b0"}"#);
    assert_eq!((r.status, r.json()["name"].clone()), (201, json!("b0")));
    assert_eq!(r.header("idempotent-replayed"), Some("true"));
    // The age order and the count came back too: a third key evicts admin's oldest (k0).
    assert_eq!(post(&b, &t, "k2", br#"{"name": "a2"}"#).status, 201);
    post(&b, &t, "k0", br#"{"name": "a0"}"#).expect_error(409, "name_conflict");
    assert_eq!(
        post(&b, &t, "k1", br#"{"name": "a1"}"#).header("idempotent-replayed"),
        Some("true")
    );
}
