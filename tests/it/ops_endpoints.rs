//! `/healthz`, `/readyz` and `/metrics` (docs/api/http.md "Endpoints"): the probes answer without
//! authentication; the metrics count requests by route and status, keep a latency
//! histogram consistent with those counts, and report groups, users and store bytes
//! that match what the test wrote; `metrics.enabled = false` hides the endpoint.

use std::collections::BTreeMap;

use serde_json::json;

use crate::support::{Options, TestServer};

/// Sample lines of the exposition text: `name{labels}` → value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (k, v) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad line {l:?}"));
            (
                k.to_string(),
                v.parse().unwrap_or_else(|_| panic!("bad value in {l:?}")),
            )
        })
        .collect()
}

#[test]
fn probes_answer_without_authentication() {
    let server = TestServer::start();
    let r = server.req("GET", "/healthz").send();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ok");
    let r = server.req("GET", "/readyz").send();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "ready");
}

#[test]
fn metrics_count_what_happened() {
    let server = TestServer::start();
    let token = server.admin_token();
    for i in 0..5 {
        let r = server
            .req("POST", "/api/groups")
            .bearer(&token)
            .json(&json!({"name": format!("g{i}"), "devices": ["a", "b", "c"]}))
            .send();
        assert_eq!(r.status, 201, "{}", r.text());
    }
    assert_eq!(
        server
            .req("GET", "/api/groups/grp-1")
            .bearer(&token)
            .send()
            .status,
        200
    );
    assert_eq!(
        server
            .req("GET", "/api/groups/grp-99")
            .bearer(&token)
            .send()
            .status,
        404
    );
    assert_eq!(
        server
            .req("DELETE", "/api/groups/grp-5")
            .bearer(&token)
            .send()
            .status,
        200
    );
    assert_eq!(server.req("GET", "/api/groups").send().status, 401);

    let r = server.req("GET", "/metrics").send();
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        r.headers
    );
    let text = r.text();
    for name in [
        "fleetgroups_requests_total",
        "fleetgroups_request_duration_seconds",
        "fleetgroups_groups",
        "fleetgroups_users",
        "fleetgroups_store_bytes",
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} missing:\n{text}"
        );
    }
    let m = samples(&text);
    let count = |route: &str, status: u16| {
        m.get(&format!(
            "fleetgroups_requests_total{{route=\"{route}\",status=\"{status}\"}}"
        ))
        .copied()
        .unwrap_or(0.0)
    };
    assert_eq!(count("/api/auth/token", 200), 1.0, "{text}");
    assert_eq!(count("/api/groups", 201), 5.0, "{text}");
    assert_eq!(count("/api/groups/{groupId}", 200), 2.0, "{text}");
    assert_eq!(count("/api/groups/{groupId}", 404), 1.0, "{text}");
    assert_eq!(count("/api/groups", 401), 1.0, "{text}");

    // The histograms (one per route) saw exactly the counted requests (the scrape
    // itself is counted after it renders), and their buckets never decrease.
    let total: f64 = m
        .iter()
        .filter(|(k, _)| k.starts_with("fleetgroups_requests_total{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(total, 10.0, "{text}");
    let counted: f64 = m
        .iter()
        .filter(|(k, _)| k.starts_with("fleetgroups_request_duration_seconds_count{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(counted, total, "{text}");
    for route in ["/api/auth/token", "/api/groups", "/api/groups/{groupId}"] {
        let series = |suffix: &str| format!("fleetgroups_request_duration_seconds_{suffix}");
        let buckets: Vec<f64> = text
            .lines()
            .filter(|l| l.starts_with(&series(&format!("bucket{{route=\"{route}\","))))
            .map(|l| l.rsplit_once(' ').unwrap().1.parse().unwrap())
            .collect();
        assert_eq!(buckets.len(), 13, "{route}: {text}");
        assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
        let count = m[&series(&format!("count{{route=\"{route}\"}}"))];
        assert_eq!(buckets[12], count, "{route}: +Inf is the count");
        let sum = m[&series(&format!("sum{{route=\"{route}\"}}"))];
        assert!(sum > 0.0 && sum < 60.0, "{route}: {sum}");
    }

    assert_eq!(m["fleetgroups_groups"], 4.0, "{text}");
    assert_eq!(m["fleetgroups_users"], 1.0, "{text}");
    let bytes = m["fleetgroups_store_bytes"];
    assert!(
        bytes > 1000.0 && bytes < 1e9,
        "implausible store size {bytes}"
    );

    // The scrape is counted too, from the next scrape on.
    let again = samples(&server.req("GET", "/metrics").send().text());
    assert_eq!(
        again.get("fleetgroups_requests_total{route=\"/metrics\",status=\"200\"}"),
        Some(&1.0)
    );
}

#[test]
fn metrics_can_be_switched_off() {
    let server = TestServer::with(Options::default().config("[metrics]\nenabled = false\n"));
    server
        .req("GET", "/metrics")
        .send()
        .expect_error(404, "not_found");
    // The probes stay.
    assert_eq!(server.req("GET", "/healthz").send().status, 200);
    assert_eq!(server.req("GET", "/readyz").send().status, 200);
}
