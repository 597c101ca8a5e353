//! The failed-login table is bounded whatever clients send (issue 11, item 1): a
//! userName outside the rule never becomes a key, names and addresses each have a size
//! bound (`auth.failed_login_max_entries`), entries age out on a timer, and a flood of
//! new keys never unlocks a name that is locked. The table's size is read from
//! `/metrics` (`fleetgroups_failed_login_names`, `fleetgroups_failed_login_addresses`).

use std::time::Duration;

use serde_json::json;

use crate::support::{poll_until, without_envelope, Options, Resp, TestServer};

/// (userNames, addresses) in the failed-login table, from `/metrics`.
fn table(server: &TestServer) -> (u64, u64) {
    let text = server.req("GET", "/metrics").send().text();
    let gauge = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no gauge {name} in /metrics:\n{text}"))
    };
    (
        gauge("fleetgroups_failed_login_names"),
        gauge("fleetgroups_failed_login_addresses"),
    )
}

fn login_from(server: &TestServer, from: &str, user: &str, key: &str) -> Resp {
    server
        .req("POST", "/api/Auth/Token")
        .source_ip(from)
        .json(&json!({"userName": user, "apiKey": key}))
        .send()
}

/// A name outside the userName rule (here 100 KB, or with a space) gets exactly the
/// answer an unknown user gets and is never a key; the addresses are, up to the bound.
#[test]
fn names_outside_the_rule_never_become_keys() {
    // Login bodies are limited to 4 KiB by default (413 past it, `bounds.rs`); raised
    // here so the failed-login table itself is shown to hold whatever arrives.
    let server = TestServer::with(
        Options::default()
            .env("FLEETGROUPS_AUTH_FAILED_LOGIN_MAX_ENTRIES", "20")
            .env("FLEETGROUPS_LIMITS_MAX_TOKEN_BODY_BYTES", "1048576"),
    );
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
    let first = login_from(&server, "127.0.1.250", "nobody", "fgk_wrong");
    let unknown = without_envelope(first.expect_error(401, "invalid_credentials"));
    let long = "a".repeat(100 * 1024);
    for i in 0..30 {
        let name = if i % 2 == 0 {
            format!("{long}{i}")
        } else {
            format!("user {i}")
        };
        let r = login_from(&server, &format!("127.0.1.{}", i + 1), &name, "fgk_wrong");
        let v = r.expect_error_message(401, "invalid_credentials", "Invalid API key or username.");
        assert_eq!(without_envelope(v), unknown);
        assert_eq!(header_names(&r), header_names(&first));
    }
    // One name ("nobody"); 31 addresses, of which the newest 20 are kept.
    assert_eq!(table(&server), (1, 20));
}

/// The server's resident memory in KiB (`VmRSS`).
fn rss_kib(server: &TestServer) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid()))
        .expect("/proc/<pid>/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Failed logins with a new 256 KiB userName each, from a new address each: the
/// table used to keep every name whole (1.3 GB in 20 s at ~900 KB a name); now they
/// leave nothing behind but the addresses.
#[test]
fn huge_names_from_many_addresses_do_not_grow_memory() {
    // The login body limit (4 KiB by default) would refuse these names with 413 before
    // the table sees them; raised, the table is what keeps memory flat.
    let server = TestServer::with(
        Options::default().env("FLEETGROUPS_LIMITS_MAX_TOKEN_BODY_BYTES", "1048576"),
    );
    let long = "a".repeat(256 * 1024);
    let flood = |range: std::ops::Range<u32>| {
        for i in range {
            let from = format!("127.0.{}.{}", 6 + i / 250, 1 + i % 250);
            login_from(&server, &from, &format!("{long}{i}"), "fgk_wrong")
                .expect_error(401, "invalid_credentials");
        }
    };
    // Warm up the allocator with the same traffic first.
    flood(0..20);
    let before = rss_kib(&server);
    flood(20..170);
    let grown = rss_kib(&server).saturating_sub(before);
    println!("150 failed logins with 256 KiB names: RSS grew {grown} KiB");
    // 150 names kept whole would be 37.5 MiB.
    assert!(grown < 12 * 1024, "RSS grew {grown} KiB");
}

/// Valid names are keys, bounded like addresses, and every entry leaves the table when
/// its window has passed, with no new failure to trigger a prune.
#[test]
fn entries_are_bounded_and_age_out_on_a_timer() {
    let server = TestServer::with(
        Options::default()
            .env("FLEETGROUPS_AUTH_FAILED_LOGIN_MAX_ENTRIES", "5")
            .env("FLEETGROUPS_AUTH_FAILED_LOGIN_WINDOW_SECS", "10"),
    );
    for i in 0..8 {
        login_from(
            &server,
            &format!("127.0.2.{}", i + 1),
            &format!("user{i}"),
            "fgk_x",
        )
        .expect_error(401, "invalid_credentials");
    }
    assert_eq!(table(&server), (5, 5));
    poll_until(
        Duration::from_secs(30),
        "the failed-login table to empty",
        || (table(&server) == (0, 0)).then_some(()),
    );
}

/// `admin` locked by three bad logins stays locked through a flood of failures from
/// new addresses, with invalid and with valid names, far past the table's bound.
#[test]
fn a_flood_of_new_keys_never_unlocks_a_locked_name() {
    let server = TestServer::with(
        Options::default()
            .env("FLEETGROUPS_AUTH_MAX_FAILED_LOGINS", "3")
            .env("FLEETGROUPS_AUTH_FAILED_LOGIN_MAX_ENTRIES", "10"),
    );
    let key = server.admin_key();
    for _ in 0..3 {
        login_from(&server, "127.0.3.1", "admin", "fgk_wrong")
            .expect_error(401, "invalid_credentials");
    }
    login_from(&server, "127.0.3.2", "admin", &key).expect_error(429, "too_many_failed_logins");
    for i in 0..60 {
        let from = format!("127.0.4.{}", i + 1);
        let name = if i % 3 == 0 {
            format!("flood{i}")
        } else {
            format!("flood {i}")
        };
        login_from(&server, &from, &name, "fgk_wrong").expect_error(401, "invalid_credentials");
    }
    let (names, addrs) = table(&server);
    assert!(
        names <= 10 && addrs == 10,
        "{names} names, {addrs} addresses"
    );
    let r = login_from(&server, "127.0.5.1", "admin", &key);
    r.expect_error(429, "too_many_failed_logins");
}
