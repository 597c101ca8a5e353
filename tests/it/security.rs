//! Security properties against the real binary: tenants are isolated on every
//! endpoint, the `read` role cannot write anywhere, revoked credentials stop working,
//! failed logins all look alike, and no key or token ends up in the log, an error,
//! `/metrics` or the store's files (only their hashes do).

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::support::{Resp, TestServer};

/// A server with groups in account `default` (user admin), plus user `bob` in account
/// `other` and `carol` (role read) in `default`, added with the CLI while it was down.
struct World {
    server: TestServer,
    admin: String,
    bob: String,
    carol: String,
    keys: Vec<String>,
}

fn world() -> World {
    let mut server = TestServer::start();
    let admin_key = server.admin_key();
    let admin = server.login("admin", &admin_key);
    for body in [
        json!({"name": "Trucks", "description": "secret fleet", "devices": ["shared-dev", "a1"]}),
        json!({"name": "Vans", "devices": ["shared-dev"]}),
    ] {
        let r = server
            .req("POST", "/api/groups")
            .bearer(&admin)
            .json(&body)
            .send();
        assert_eq!(r.status, 201, "{}", r.text());
    }
    server.stop();
    let add = |args: &[&str]| {
        let out = server.cli(args);
        assert_eq!(out.code, 0, "{}", out.stderr);
        out.stdout.trim().to_string()
    };
    let bob_key = add(&["user", "add", "bob", "--account", "other"]);
    let carol_key = add(&["user", "add", "carol", "--role", "read"]);
    server.restart();
    let admin = server.login("admin", &admin_key);
    let bob = server.login("bob", &bob_key);
    let carol = server.login("carol", &carol_key);
    World {
        server,
        admin,
        bob,
        carol,
        keys: vec![admin_key, bob_key, carol_key],
    }
}

fn strip_usage(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("apiUsage");
        o.remove("apiDailyUsage");
    }
    v
}

/// Everything account `default` has, as its own user sees it.
fn snapshot(w: &World) -> Value {
    let s = &w.server;
    json!({
        "groups": s.req("GET", "/api/groups").bearer(&w.admin).send().json()["groups"],
        "changes": s.req("GET", "/api/changes").bearer(&w.admin).send().json()["changes"],
    })
}

#[test]
fn another_account_sees_and_changes_nothing() {
    let w = world();
    let s = &w.server;
    let before = snapshot(&w);
    let bob = |method: &str, path: &str, body: Option<Value>| -> Resp {
        let r = s.req(method, path).bearer(&w.bob);
        match body {
            Some(b) => r.json(&b).send(),
            None => r.send(),
        }
    };
    let empty = |r: Resp, member: &str| {
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()[member], json!([]), "{}", r.text());
    };
    empty(bob("GET", "/api/groups", None), "groups");
    empty(bob("GET", "/api/groups?device=shared-dev", None), "groups");
    empty(bob("GET", "/api/groups?name=truck", None), "groups");
    empty(
        bob("GET", "/api/groups?limit=10&after=grp-1", None),
        "groups",
    );
    empty(bob("GET", "/api/devices/shared-dev/groups", None), "groups");
    empty(bob("GET", "/api/changes", None), "changes");
    let not_found = [
        bob("GET", "/api/groups/grp-1", None),
        bob("PUT", "/api/groups/grp-1", Some(json!({"name": "Mine"}))),
        bob(
            "PATCH",
            "/api/groups/grp-1",
            Some(json!([{"op": "replace", "path": "/name", "value": "Mine"}])),
        ),
        bob("DELETE", "/api/groups/grp-2", None),
        bob(
            "POST",
            "/api/groups/grp-1/devices",
            Some(json!({"devices": ["x"]})),
        ),
        bob("DELETE", "/api/groups/grp-1/devices/shared-dev", None),
    ];
    // Exactly the answer for a group that does not exist anywhere.
    let missing =
        strip_usage(bob("GET", "/api/groups/grp-999", None).expect_error(404, "group_not_found"));
    for r in not_found {
        assert_eq!(strip_usage(r.expect_error(404, "group_not_found")), missing);
    }
    // Names are per account: bob may use the same name; his group is invisible to admin.
    let r = bob(
        "POST",
        "/api/groups",
        Some(json!({"name": "TRUCKS", "devices": ["shared-dev"]})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap_or("").to_string();
    s.req("GET", &format!("/api/groups/{id}"))
        .bearer(&w.admin)
        .send()
        .expect_error(404, "group_not_found");
    assert_eq!(
        snapshot(&w),
        before,
        "account default changed through account other"
    );
    // And bob sees only his own.
    let mine = bob("GET", "/api/devices/shared-dev/groups", None).json()["groups"].clone();
    assert_eq!(mine.as_array().map(Vec::len), Some(1));
    assert_eq!(mine[0]["id"], id);
}

#[test]
fn the_read_role_cannot_write_anywhere() {
    let w = world();
    let s = &w.server;
    let before = snapshot(&w);
    let writes: Vec<(&str, &str, Option<Value>)> = vec![
        ("POST", "/api/groups", Some(json!({"name": "New"}))),
        ("PUT", "/api/groups/grp-1", Some(json!({"name": "X"}))),
        (
            "PATCH",
            "/api/groups/grp-1",
            Some(json!([{"op": "remove", "path": "/devices/0"}])),
        ),
        ("DELETE", "/api/groups/grp-1", None),
        (
            "POST",
            "/api/groups/grp-1/devices",
            Some(json!({"devices": ["z"]})),
        ),
        ("DELETE", "/api/groups/grp-1/devices/a1", None),
        // Also for a group that does not exist: the role is checked first.
        ("DELETE", "/api/groups/grp-404", None),
    ];
    for (method, path, body) in writes {
        let r = s.req(method, path).bearer(&w.carol);
        let r = match body {
            Some(b) => r.json(&b).send(),
            None => r.send(),
        };
        let v = r.expect_error(403, "forbidden");
        assert!(v["error"].as_str().unwrap_or("").starts_with("Forbidden: "));
    }
    for path in [
        "/api/groups",
        "/api/groups/grp-1",
        "/api/devices/a1/groups",
        "/api/changes",
    ] {
        assert_eq!(
            s.req("GET", path).bearer(&w.carol).send().status,
            200,
            "{path}"
        );
    }
    assert_eq!(snapshot(&w), before);
}

#[test]
fn revoked_credentials_stop_working() {
    let mut w = world();
    let (bob_key, carol_key) = (w.keys[1].clone(), w.keys[2].clone());
    // Without the admin socket the CLI works on a stopped server; the change must hold
    // from the first request after the restart.
    w.server.stop();
    let run = |s: &TestServer, args: &[&str]| {
        let out = s.cli(args);
        assert_eq!(out.code, 0, "{}", out.stderr);
        out.stdout.trim().to_string()
    };
    let new_bob_key = run(&w.server, &["user", "rotate-key", "bob"]);
    run(&w.server, &["user", "set", "carol", "--disabled", "true"]);
    run(&w.server, &["user", "remove", "admin"]);
    w.server.restart();
    let s = &w.server;
    for token in [&w.admin, &w.bob, &w.carol] {
        let r = s.req("GET", "/api/groups").bearer(token).send();
        r.expect_error(401, "unauthorized");
        // After a restart the server no longer knows these tokens at all.
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer error=\"invalid_token\", error_description=\"the token is unknown here: log in again at POST /api/Auth/Token\"")
        );
    }
    let login = |user: &str, key: &str| {
        s.req("POST", "/api/Auth/Token")
            .json(&json!({"userName": user, "apiKey": key}))
            .send()
    };
    login("bob", &bob_key).expect_error(401, "invalid_credentials");
    login("carol", &carol_key).expect_error(401, "invalid_credentials");
    login("admin", &w.keys[0]).expect_error(401, "invalid_credentials");
    let bob = s.login("bob", &new_bob_key);
    assert_eq!(s.req("GET", "/api/groups").bearer(&bob).send().status, 200);
}

#[test]
fn failed_logins_all_look_alike() {
    let mut w = world();
    w.server.stop();
    let out = w
        .server
        .cli(&["user", "set", "carol", "--disabled", "true"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    w.server.restart();
    let s = &w.server;
    let attempt = |user: &str, key: &str| -> Resp {
        s.req("POST", "/api/Auth/Token")
            .json(&json!({"userName": user, "apiKey": key}))
            .send()
    };
    // Unknown user, wrong key, disabled user (right key), empty key, wrong case.
    let answers = [
        attempt("nobody", "fgk_0000"),
        attempt("bob", "fgk_wrong"),
        attempt("carol", &w.keys[2]),
        attempt("bob", ""),
        attempt("Bob", &w.keys[1]),
    ];
    let header_names = |r: &Resp| {
        let mut names: Vec<String> = r
            .headers
            .iter()
            .map(|(k, _)| k.to_ascii_lowercase())
            .filter(|k| k != "date" && k != "x-request-id")
            .collect();
        names.sort();
        names
    };
    for r in &answers {
        r.expect_error(401, "invalid_credentials");
        assert_eq!(r.body, answers[0].body, "bodies differ");
        assert_eq!(header_names(r), header_names(&answers[0]), "headers differ");
    }
}

/// Hex of bytes.
fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn secrets_never_leave_in_clear() {
    let mut w = world();
    let tokens = [w.admin.clone(), w.bob.clone(), w.carol.clone()];
    let s = &w.server;
    // Put secrets where careless code would echo them: a wrong token, a key in a body
    // field of the wrong type, a key as a group name and a token as a device ID.
    let bogus = format!("{}x", tokens[0]);
    let r = s.req("GET", "/api/groups").bearer(&bogus).send();
    assert!(!contains(&r.body, bogus.as_bytes()));
    let r = s
        .req("POST", "/api/Auth/Token")
        .json(&json!({"userName": "admin", "apiKey": [w.keys[0]]}))
        .send();
    assert!(!contains(&r.body, w.keys[0].as_bytes()), "{}", r.text());
    let r = s
        .req("POST", "/api/groups")
        .bearer(&tokens[0])
        .json(&json!({"name": w.keys[1], "devices": [tokens[1]]}))
        .send();
    assert_eq!(
        r.status, 400,
        "device IDs longer than 64 characters are refused"
    );
    let metrics = s.req("GET", "/metrics").send();
    let text = metrics.text();
    for secret in w.keys.iter().chain(&tokens) {
        assert!(!text.contains(secret.as_str()), "/metrics shows a secret");
    }
    w.server.stop();
    let log = w.server.log();
    for secret in w.keys.iter().chain(&tokens) {
        assert!(!log.contains(secret.as_str()), "the log shows a secret");
        assert!(
            !log.contains(&secret[4..]),
            "the log shows a secret's random part"
        );
    }
    // Every file of the data directory except initial-api-key (which exists to hand
    // the first key to the operator) holds no key and no token, only hashes.
    let mut files = Vec::new();
    let mut stack = vec![w.server.data_dir()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir").flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n != "initial-api-key") {
                files.push(p);
            }
        }
    }
    assert!(files.len() > 1, "{files:?}");
    let mut all = Vec::new();
    for f in &files {
        let bytes = std::fs::read(f).expect("read");
        for secret in w.keys.iter().chain(&tokens) {
            assert!(
                !contains(&bytes, secret.as_bytes()),
                "{} holds a secret",
                f.display()
            );
            assert!(
                !contains(&bytes, &secret.as_bytes()[4..]),
                "{} holds a secret's random part",
                f.display()
            );
        }
        all.extend_from_slice(&bytes);
    }
    // What is there instead: the SHA-256 of each live token and argon2id hashes.
    for t in &tokens {
        let h: [u8; 32] = Sha256::digest(t.as_bytes()).into();
        assert!(contains(&all, &h), "token hash {} not found", hex(&h[..4]));
    }
    assert!(contains(&all, b"$argon2id$"));
}
