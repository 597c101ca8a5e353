//! Authentication (docs/api/http.md "Authentication"): the token exchange on both spellings of its path,
//! identical answers for every bad credential, bearer-token checks, the read role,
//! failed-login limiting per userName and per client address, token expiry, the
//! per-user token bound, and revocation by the CLI with the server stopped.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{now_ms, poll_until, timestamp_ms, Options, Resp, TestServer};

fn token_request(server: &TestServer, path: &str, user: &str, key: &str) -> Resp {
    server
        .req("POST", path)
        .json(&json!({"userName": user, "apiKey": key}))
        .send()
}

#[test]
fn token_exchange_answers_a_token_and_its_expiry_on_both_paths() {
    let server = TestServer::start();
    let key = server.admin_key();
    for path in ["/api/Auth/Token", "/api/auth/token", "/API/AUTH/TOKEN"] {
        let before = now_ms();
        let r = token_request(&server, path, "admin", &key);
        let v = r.expect_ok(200);
        let mut keys: Vec<&str> = v
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        // No usage counters: the caller is not authenticated by a token here.
        assert_eq!(keys, ["error", "expires", "success", "token"], "{v}");
        let token = v["token"].as_str().expect("token");
        // 256 random bits at least: 64 hex digits after the prefix.
        let random = token.strip_prefix("fgt_").expect("prefix");
        assert!(random.len() >= 64 && random.bytes().all(|b| b.is_ascii_hexdigit()));
        // The default lifetime is 24 h.
        let expires = timestamp_ms(v["expires"].as_str().expect("expires"));
        let day = 24 * 3600 * 1000;
        assert!((before + day - 1000..=now_ms() + day + 1000).contains(&expires));
        server.client(token).get("/api/groups").expect_ok(200);
        assert!(!server.log().contains(random), "a token was logged");
    }
    assert!(!server.log().contains(&key), "the key was logged");
}

#[test]
fn every_bad_credential_gets_the_same_answer() {
    let mut server = TestServer::unstarted(Options::default());
    let admin_key = server.cli(&["user", "add", "admin"]).key();
    let off_key = server.cli(&["user", "add", "off"]).key();
    assert_eq!(
        server
            .cli(&["user", "set", "off", "--disabled", "true"])
            .code,
        0
    );
    server.restart();

    let attempts = [
        ("nobody", admin_key.as_str()),
        ("admin", "fgk_wrong"),
        ("admin", ""),
        ("Admin", admin_key.as_str()),
        ("admin", &off_key),
        ("off", &off_key),
    ];
    let mut bodies = Vec::new();
    for (user, key) in attempts {
        let r = token_request(&server, "/api/Auth/Token", user, key);
        r.expect_error_message(401, "invalid_credentials", "Invalid API key or username.");
        assert_eq!(r.header("www-authenticate"), None);
        bodies.push(r.text());
    }
    bodies.dedup();
    assert_eq!(
        bodies,
        [
            r#"{"success":false,"error":"Invalid API key or username.","errorCode":"invalid_credentials"}"#
        ]
    );
    // The right key still works after all that (5 failures are under the limit of 10).
    server.login("admin", &admin_key);

    // Malformed exchanges are invalid input naming the field.
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"apiKey": "k"}),
            "Invalid input: userName is required",
        ),
        (
            json!({"userName": "admin"}),
            "Invalid input: apiKey is required",
        ),
        (
            json!({"userName": 1, "apiKey": "k"}),
            "Invalid input: userName must be a string",
        ),
        (
            json!({"userName": "admin", "apiKey": ["k"]}),
            "Invalid input: apiKey must be a string",
        ),
        (
            json!(["admin", "k"]),
            "Invalid input: the body must be a JSON object",
        ),
    ];
    for (body, message) in cases {
        server
            .req("POST", "/api/auth/token")
            .json(&body)
            .send()
            .expect_error_message(400, "invalid_input", message);
    }
    server
        .req("POST", "/api/auth/token")
        .body_as("text/plain", b"userName=admin")
        .send()
        .expect_error(415, "unsupported_media_type");
}

#[test]
fn bearer_token_is_required_on_every_api_path() {
    let server = TestServer::start();
    let admin = server.client(&server.admin_token());
    admin.create(&json!({"name": "Trucks"}));
    let before = admin.groups();

    let bad_headers = [
        None,
        Some(String::new()),
        Some("Bearer".to_string()),
        Some("Bearer ".to_string()),
        Some(format!("Basic {}", admin.token)),
        Some(admin.token.clone()),
        Some(format!("Token {}", admin.token)),
        Some("Bearer fgt_0000000000000000000000000000000000000000000000000000000000000000".into()),
        Some(format!("Bearer {}x", admin.token)),
        Some(format!("Bearer {}", &admin.token[..admin.token.len() - 1])),
        Some(format!("Bearer {}", "a".repeat(5000))),
    ];
    let calls = [
        ("GET", "/api/groups"),
        ("POST", "/api/groups"),
        ("GET", "/api/groups/grp-1"),
        ("PUT", "/api/groups/grp-1"),
        ("PATCH", "/api/groups/grp-1"),
        ("DELETE", "/api/groups/grp-1"),
        ("GET", "/api/groups/grp-404"),
    ];
    for header in &bad_headers {
        for (method, path) in calls {
            let mut req = server.req(method, path);
            if let Some(h) = header {
                req = req.header("Authorization", h);
            }
            if method != "GET" && method != "DELETE" {
                req = req.json(&json!({"name": "Changed"}));
            }
            let r = req.send();
            let v = r.expect_error_message(401, "unauthorized", "Unauthorized access");
            // RFC 6750: the bare challenge without credentials, else why the token
            // was refused (tests/it/operator_messages.rs checks each reason).
            let challenge = r.header("www-authenticate").unwrap_or("");
            match header {
                None => assert_eq!(challenge, "Bearer"),
                Some(_) => assert!(
                    challenge.starts_with("Bearer error=\"invalid_token\", error_description=\""),
                    "{header:?}: {challenge}"
                ),
            }
            assert!(v.get("apiUsage").is_none() && v.get("apiDailyUsage").is_none());
        }
    }
    assert_eq!(admin.groups(), before);

    // The scheme is case-insensitive.
    for scheme in ["bearer", "BEARER", "BeArEr"] {
        server
            .req("GET", "/api/groups")
            .header("Authorization", &format!("{scheme} {}", admin.token))
            .send()
            .expect_ok(200);
    }
}

#[test]
fn read_role_may_read_but_not_write() {
    let mut server = TestServer::unstarted(Options::default());
    let admin_key = server.cli(&["user", "add", "admin"]).key();
    let viewer_key = server
        .cli(&["user", "add", "viewer", "--role", "read"])
        .key();
    server.restart();
    let admin = server.client(&server.login("admin", &admin_key));
    let viewer = server.client(&server.login("viewer", &viewer_key));
    admin.create(&json!({"name": "Trucks", "devices": ["a"]}));
    let before = admin.groups();

    assert_eq!(viewer.groups(), before);
    assert_eq!(viewer.group("grp-1"), before[0]);

    let writes = [
        viewer.post("/api/groups", &json!({"name": "Mine"})),
        viewer.put("/api/groups/grp-1", &json!({"name": "Mine"})),
        viewer.patch(
            "/api/groups/grp-1",
            &json!([{"op": "replace", "path": "/name", "value": "Mine"}]),
        ),
        viewer.delete("/api/groups/grp-1"),
        // Even for a group that does not exist: the role is checked first.
        viewer.delete("/api/groups/grp-99"),
    ];
    for (i, r) in writes.iter().enumerate() {
        let v = r.expect_error(403, "forbidden");
        assert!(v["error"].as_str().expect("msg").starts_with("Forbidden: "));
        // A refused write still counts: the caller was authenticated (two GETs before).
        assert_eq!(r.usage(), (3 + i as u64, 3 + i as u64));
    }
    assert_eq!(admin.groups(), before);
}

#[test]
fn failed_logins_are_limited_per_user_name() {
    let mut server =
        TestServer::unstarted(Options::default().env("FLEETGROUPS_AUTH_MAX_FAILED_LOGINS", "3"));
    let admin_key = server.cli(&["user", "add", "admin"]).key();
    let bob_key = server.cli(&["user", "add", "bob"]).key();
    server.restart();

    let attempt = |from: &str, user: &str, key: &str| {
        server
            .req("POST", "/api/Auth/Token")
            .source_ip(from)
            .json(&json!({"userName": user, "apiKey": key}))
            .send()
    };
    for _ in 0..3 {
        attempt("127.0.0.1", "admin", "fgk_guess").expect_error(401, "invalid_credentials");
    }
    // Now even the right key is refused for this name, from any address.
    for from in ["127.0.0.1", "127.0.0.2"] {
        let r = attempt(from, "admin", &admin_key);
        r.expect_error_message(
            429,
            "too_many_failed_logins",
            "Too many failed login attempts",
        );
        let retry: u64 = r
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .expect("Retry-After");
        assert!((1..=60).contains(&retry), "{retry}");
    }
    // Another name from a fresh address is not affected.
    server.login_from("127.0.0.2", "bob", &bob_key);
}

#[test]
fn failed_logins_are_limited_per_client_address() {
    let mut server =
        TestServer::unstarted(Options::default().env("FLEETGROUPS_AUTH_MAX_FAILED_LOGINS", "3"));
    let admin_key = server.cli(&["user", "add", "admin"]).key();
    server.restart();

    // Three different unknown names from one address …
    for name in ["alice", "bob", "carol"] {
        server
            .req("POST", "/api/Auth/Token")
            .source_ip("127.0.0.3")
            .json(&json!({"userName": name, "apiKey": "fgk_guess"}))
            .send()
            .expect_error(401, "invalid_credentials");
    }
    // … block that address, even for a good name and key …
    let r = server
        .req("POST", "/api/Auth/Token")
        .source_ip("127.0.0.3")
        .json(&json!({"userName": "admin", "apiKey": admin_key}))
        .send();
    r.expect_error(429, "too_many_failed_logins");
    assert!(r.header("retry-after").is_some());
    // … but not other addresses, nor the name.
    server.login_from("127.0.0.1", "admin", &admin_key);
}

#[test]
fn tokens_expire() {
    let server = TestServer::with(Options::default().env("FLEETGROUPS_AUTH_TOKEN_TTL_SECS", "1"));
    let r = token_request(&server, "/api/Auth/Token", "admin", &server.admin_key());
    let v = r.expect_ok(200);
    let expires = timestamp_ms(v["expires"].as_str().expect("expires"));
    let token = v["token"].as_str().expect("token").to_string();
    assert!(expires - now_ms() <= 1000, "a one-second lifetime");
    let client = server.client(&token);

    // Poll: every answer before the expiry is 200, the first one after it is 401.
    let first_401 = poll_until(Duration::from_secs(10), "the token to expire", || {
        let sent = now_ms();
        let r = client.get("/api/groups");
        let answered = now_ms();
        match r.status {
            200 => {
                assert!(sent < expires, "answered 200 although sent after expiry");
                None
            }
            _ => {
                r.expect_error(401, "unauthorized");
                Some(answered)
            }
        }
    });
    assert!(first_401 >= expires, "refused before its expiry");
    client.get("/api/groups").expect_error(401, "unauthorized");
    // A new token works again.
    server
        .client(&server.admin_token())
        .get("/api/groups")
        .expect_ok(200);
}

#[test]
fn live_tokens_per_user_are_bounded_oldest_first() {
    let server = TestServer::with(Options::default().env("FLEETGROUPS_AUTH_TOKENS_PER_USER", "2"));
    let t1 = server.admin_token();
    let t2 = server.admin_token();
    server.client(&t1).get("/api/groups").expect_ok(200);
    let t3 = server.admin_token();
    server
        .client(&t1)
        .get("/api/groups")
        .expect_error(401, "unauthorized");
    server.client(&t2).get("/api/groups").expect_ok(200);
    server.client(&t3).get("/api/groups").expect_ok(200);
    let t4 = server.admin_token();
    server
        .client(&t2)
        .get("/api/groups")
        .expect_error(401, "unauthorized");
    server.client(&t3).get("/api/groups").expect_ok(200);
    server.client(&t4).get("/api/groups").expect_ok(200);
}

#[test]
fn rotating_disabling_and_removing_revoke_keys_and_tokens() {
    let mut server = TestServer::unstarted(Options::default());
    let admin_key = server.cli(&["user", "add", "admin"]).key();
    let rotated_key = server.cli(&["user", "add", "rotated"]).key();
    let disabled_key = server.cli(&["user", "add", "disabled"]).key();
    let removed_key = server.cli(&["user", "add", "removed"]).key();
    server.restart();
    let tokens: Vec<String> = [
        ("admin", &admin_key),
        ("rotated", &rotated_key),
        ("disabled", &disabled_key),
        ("removed", &removed_key),
    ]
    .iter()
    .map(|(u, k)| server.login(u, k))
    .collect();
    server
        .client(&tokens[3])
        .create(&json!({"name": "Made by removed"}));

    assert!(server.stop().success());
    let new_key = server.cli(&["user", "rotate-key", "rotated"]).key();
    assert_ne!(new_key, rotated_key);
    assert_eq!(
        server
            .cli(&["user", "set", "disabled", "--disabled", "true"])
            .code,
        0
    );
    assert_eq!(server.cli(&["user", "remove", "removed"]).code, 0);
    server.restart();

    // The untouched user's token survived the restart.
    server.client(&tokens[0]).get("/api/groups").expect_ok(200);
    for t in &tokens[1..] {
        server
            .client(t)
            .get("/api/groups")
            .expect_error(401, "unauthorized");
    }
    for (user, key) in [
        ("rotated", &rotated_key),
        ("disabled", &disabled_key),
        ("removed", &removed_key),
    ] {
        token_request(&server, "/api/Auth/Token", user, key)
            .expect_error(401, "invalid_credentials");
    }
    server.login("rotated", &new_key);
    // The removed user's groups stay with the account.
    let admin = server.client(&tokens[0]);
    assert_eq!(admin.group("grp-1")["name"], "Made by removed");

    // Enabling again lets the same key log in; its old tokens stay revoked.
    assert!(server.stop().success());
    assert_eq!(
        server
            .cli(&["user", "set", "disabled", "--disabled", "false"])
            .code,
        0
    );
    server.restart();
    server
        .client(&tokens[2])
        .get("/api/groups")
        .expect_error(401, "unauthorized");
    let t = server.login("disabled", &disabled_key);
    server.client(&t).get("/api/groups").expect_ok(200);
}

#[test]
fn failed_logins_are_forgotten_after_the_window() {
    let server = TestServer::with(
        Options::default()
            .env("FLEETGROUPS_AUTH_MAX_FAILED_LOGINS", "2")
            .env("FLEETGROUPS_AUTH_FAILED_LOGIN_WINDOW_SECS", "1"),
    );
    let key = server.admin_key();
    for _ in 0..2 {
        token_request(&server, "/api/Auth/Token", "admin", "fgk_guess")
            .expect_error(401, "invalid_credentials");
    }
    let blocked_at = now_ms();
    let r = token_request(&server, "/api/Auth/Token", "admin", &key);
    r.expect_error(429, "too_many_failed_logins");
    assert_eq!(r.header("retry-after"), Some("1"));
    // Poll with the right key: refused while the failures are in the window, then let in.
    let let_in_at = poll_until(Duration::from_secs(10), "the window to pass", || {
        let r = token_request(&server, "/api/Auth/Token", "admin", &key);
        match r.status {
            429 => None,
            _ => {
                r.expect_ok(200);
                Some(now_ms())
            }
        }
    });
    assert!(let_in_at - blocked_at < 5_000);
}

/// The nice value of the server's thread named `name`, if it has one.
fn thread_nice(pid: u32, name: &str) -> Option<i64> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let dir = task.ok()?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
        // Fields after the parenthesised command; nice is field 19 of the whole line.
        let rest = stat.rsplit_once(')')?.1;
        return rest.split_whitespace().nth(16)?.parse().ok();
    }
    None
}

/// The nice value this test process runs at, which the server inherits (`nice -n 10
/// cargo test` starts everything at 10).
fn own_nice() -> i64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let rest = stat.rsplit_once(')').expect("stat").1;
    rest.split_whitespace()
        .nth(16)
        .and_then(|n| n.parse().ok())
        .expect("nice")
}

#[test]
fn key_hashing_runs_below_request_handling_priority() {
    let server = TestServer::start();
    // The hashing threads start with the server; a login makes sure one has run.
    server.admin_token();
    // The hashing threads run at nice 10 (an absolute value, src/auth/hashing.rs).
    assert_eq!(thread_nice(server.pid(), "fg-argon2-0"), Some(10));
    // The request workers keep the priority the server was started with: below the
    // hashing threads' whenever that is the usual 0; under `nice -n 10 cargo test`
    // both are 10, and only the values can be checked.
    assert_eq!(
        thread_nice(server.pid(), "tokio-rt-worker"),
        Some(own_nice())
    );
}
