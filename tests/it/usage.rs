//! Usage counters and limits (docs/api/http.md "Usage counters and limits"): every authenticated request counts, whatever
//! its outcome, except refusals for a limit; counters are per user, present on every
//! answer to an authenticated caller and absent otherwise; they survive a graceful
//! restart exactly; the daily limit and the per-minute rate limit refuse with 429.

use serde_json::json;

use crate::support::{now_ms, Options, TestServer};

#[test]
fn every_authenticated_request_counts_whatever_its_outcome() {
    let mut server = TestServer::unstarted(Options::default());
    let admin_key = server.cli(&["user", "add", "admin"]).key();
    let bob_key = server.cli(&["user", "add", "bob"]).key();
    server.restart();
    let admin = server.client(&server.login("admin", &admin_key));

    let answers = [
        admin.post("/api/groups", &json!({"name": "Trucks"})), // 201
        admin.get("/api/groups"),                              // 200
        admin.get("/api/groups/grp-1"),                        // 200
        admin.get("/api/groups/grp-9"),                        // 404
        admin.post("/api/groups", &json!({"name": ""})),       // 400
        admin.post("/api/groups", &json!({"name": "trucks"})), // 409
        admin
            .req("POST", "/api/groups")
            .body_as("text/plain", b"x")
            .send(), // 415
        admin.patch(
            "/api/groups/grp-1",
            &json!([{"op": "test", "path": "/name", "value": "no"}]),
        ), // 409
        admin.patch("/api/groups/grp-1", &json!([{"op": "nope"}])), // 400
        admin.put("/api/groups/grp-1", &json!({"name": "Vans"})), // 200
        admin.delete("/api/groups/grp-1"),                     // 200
    ];
    for (i, r) in answers.iter().enumerate() {
        let n = i as u64 + 1;
        assert_eq!(r.usage(), (n, n), "answer {i}: {}", r.text());
    }

    // Logging in is not an authenticated request, and neither is a refused token.
    let bob_token = server.login("bob", &bob_key);
    let r = server.req("GET", "/api/groups").bearer("fgt_nope").send();
    r.expect_error(401, "unauthorized");
    assert!(r.json().get("apiUsage").is_none());
    // Counters are per user.
    let bob = server.client(&bob_token);
    assert_eq!(bob.get("/api/groups").usage(), (1, 1));
    assert_eq!(admin.get("/api/groups").usage(), (12, 12));
    assert_eq!(bob.get("/api/groups/grp-1").usage(), (2, 2));
}

#[test]
fn counters_survive_a_graceful_restart_exactly() {
    let mut server = TestServer::start();
    let admin = server.client(&server.admin_token());
    for i in 0..7 {
        admin.create(&json!({"name": format!("g{i}")}));
    }
    assert_eq!(admin.get("/api/groups/grp-99").usage(), (8, 8));
    let status = server.stop();
    assert!(status.success(), "graceful stop exits 0: {status:?}");

    // The CLI sees the flushed counters with the server stopped …
    let list = server.cli(&["user", "list"]);
    assert_eq!(list.code, 0, "{list:?}");
    let row: Vec<&str> = list
        .stdout
        .lines()
        .find(|l| l.starts_with("admin "))
        .expect("admin row")
        .split_whitespace()
        .collect();
    assert_eq!((row[5], row[6]), ("8", "8"), "{}", list.stdout);

    // … and the restarted server goes on from there.
    server.restart();
    let admin = server.client(&server.admin_token());
    assert_eq!(admin.get("/api/groups").usage(), (9, 9));
    assert!(server.stop().success());
    server.restart();
    let admin = server.client(&server.admin_token());
    assert_eq!(admin.get("/api/groups").usage(), (10, 10));
}

#[test]
fn the_daily_limit_refuses_until_midnight_without_counting() {
    let mut server = TestServer::unstarted(Options::default());
    let admin_key = server.cli(&["user", "add", "admin"]).key();
    let bob_key = server
        .cli(&["user", "add", "bob", "--daily-limit", "3"])
        .key();
    server.restart();
    let admin = server.client(&server.login("admin", &admin_key));
    let bob = server.client(&server.login("bob", &bob_key));

    bob.create(&json!({"name": "Mine"}));
    bob.get("/api/groups").expect_ok(200);
    bob.get("/api/groups/grp-7")
        .expect_error(404, "group_not_found");
    for _ in 0..3 {
        let before = now_ms();
        let r = bob.post("/api/groups", &json!({"name": "Another"}));
        let after = now_ms();
        r.expect_error_message(429, "daily_limit_exceeded", "Daily API limit exceeded");
        // The refusal shows the counters but does not add to them.
        assert_eq!(r.usage(), (3, 3));
        let retry: i64 = r
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .expect("Retry-After");
        let day = 86_400_000;
        let until = |t: i64| ((t / day + 1) * day - t + 999) / 1000;
        assert!(
            (until(after)..=until(before)).contains(&retry),
            "Retry-After {retry} is not the time to the next 00:00 UTC"
        );
    }
    // Other users are not affected, and the refused creates left nothing.
    assert_eq!(admin.get("/api/groups").usage(), (1, 1));
    let names: Vec<_> = admin.groups().iter().map(|g| g["name"].clone()).collect();
    assert_eq!(names, [json!("Mine")]);
}

#[test]
fn the_configured_daily_limit_applies_to_users_without_their_own() {
    let mut server =
        TestServer::unstarted(Options::default().env("FLEETGROUPS_LIMITS_DAILY_LIMIT", "2"));
    let plain_key = server.cli(&["user", "add", "plain"]).key();
    let own_key = server
        .cli(&["user", "add", "own", "--daily-limit", "4"])
        .key();
    server.restart();
    let plain = server.client(&server.login("plain", &plain_key));
    let own = server.client(&server.login("own", &own_key));
    for _ in 0..2 {
        plain.get("/api/groups").expect_ok(200);
    }
    plain
        .get("/api/groups")
        .expect_error(429, "daily_limit_exceeded");
    for _ in 0..4 {
        own.get("/api/groups").expect_ok(200);
    }
    own.get("/api/groups")
        .expect_error(429, "daily_limit_exceeded");
}

#[test]
fn the_rate_limit_refuses_past_the_requests_per_minute() {
    let mut server = TestServer::unstarted(
        Options::default().env("FLEETGROUPS_LIMITS_REQUESTS_PER_MINUTE", "3"),
    );
    let admin_key = server.cli(&["user", "add", "admin"]).key();
    let bob_key = server.cli(&["user", "add", "bob"]).key();
    server.restart();
    let admin = server.client(&server.login("admin", &admin_key));
    let bob = server.client(&server.login("bob", &bob_key));

    admin.create(&json!({"name": "One"}));
    admin.get("/api/groups").expect_ok(200);
    admin.get("/api/groups/grp-1").expect_ok(200);
    for _ in 0..2 {
        let r = admin.post("/api/groups", &json!({"name": "Two"}));
        r.expect_error_message(429, "rate_limited", "Too many requests");
        assert_eq!(r.usage(), (3, 3), "refusals for a limit do not count");
        let retry: u64 = r
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .expect("Retry-After");
        assert!((1..=60).contains(&retry), "{retry}");
    }
    // The limit is per user.
    assert_eq!(bob.groups().len(), 1);
    // Nothing was created by the refused requests.
    assert_eq!(bob.get("/api/groups").json()["groups"][0]["id"], "grp-1");
}

/// Decision: routing comes before authentication. A path that matches no route (404
/// `not_found`) or a known path with another method (405) is answered without looking
/// at the token, so it neither counts nor shows counters, token or not.
#[test]
fn requests_that_match_no_route_are_not_counted() {
    let server = TestServer::start();
    let admin = server.client(&server.admin_token());
    assert_eq!(admin.get("/api/groups").usage(), (1, 1));
    for r in [
        admin.get("/api/nothing"),
        admin.get("/api/groups/"),
        admin.req("DELETE", "/api/groups").send(),
    ] {
        let v = r.json();
        assert!(r.status == 404 || r.status == 405, "{v}");
        assert!(
            v.get("apiUsage").is_none() && v.get("apiDailyUsage").is_none(),
            "{v}"
        );
    }
    assert_eq!(admin.get("/api/groups").usage(), (2, 2));
}
