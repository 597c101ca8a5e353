//! Push replication into a real PostgreSQL (docs/operations/many-gateways.md), never a mock: each test
//! starts its own throwaway cluster (`pg.rs`). Checked against the gateways' own HTTP
//! answers: central rows equal `GET /api/groups` row for row, every feed entry is in
//! `fleetgroups.changes` exactly once, through a centre that goes away, kills of the
//! gateway and of its connections, and a restore (resync).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::pg::Pg;
use crate::support::{cli_in, poll_until, Options, TestServer};

/// Waits until the gateway has resynced the centre from a snapshot `n` times in all,
/// as its own counter shows.
fn wait_for_resyncs(server: &TestServer, n: f64) {
    poll_until(Duration::from_secs(30), "a resync", || {
        (server.metric("fleetgroups_replication_resyncs_total")? >= n).then_some(())
    });
}

fn options(pg: &Pg, gateway: &str) -> Options {
    Options::default()
        .env("FLEETGROUPS_REPLICATION_POSTGRES_URL", &pg.url())
        .env("FLEETGROUPS_REPLICATION_GATEWAY_ID", gateway)
        .env("FLEETGROUPS_REPLICATION_BATCH_SIZE", "7")
}

/// A gateway with two accounts; returns it with a token for each.
fn gateway(pg: &Pg, id: &str) -> (TestServer, Vec<String>) {
    let (server, tokens, _) = gateway_keys(pg, id);
    (server, tokens)
}

/// `gateway`, and the two users' keys.
fn gateway_keys(pg: &Pg, id: &str) -> (TestServer, Vec<String>, Vec<String>) {
    let server = TestServer::with(options(pg, id));
    let key = server.add_user("other", &["--account", "acme"]);
    let keys = vec![server.admin_key(), key];
    let tokens = vec![
        server.login("admin", &keys[0]),
        server.login("other", &keys[1]),
    ];
    (server, tokens, keys)
}

/// The store's highest seq, from the feed: `next` of a page that reached the end.
pub fn high(server: &TestServer, token: &str) -> u64 {
    // No `after` first: from the oldest kept entry, never expired.
    let mut after: Option<u64> = None;
    loop {
        let v = server
            .req("GET", &feed_path(after))
            .bearer(token)
            .send()
            .expect_ok(200);
        let next = v["next"].as_u64().expect("next");
        if v["changes"].as_array().is_some_and(Vec::is_empty) {
            return next;
        }
        after = Some(next);
    }
}

fn feed_path(after: Option<u64>) -> String {
    match after {
        Some(a) => format!("/api/changes?after={a}&limit=1000"),
        None => "/api/changes?limit=1000".to_string(),
    }
}

/// Every feed seq of the accounts of `tokens`.
pub fn feed_seqs(server: &TestServer, tokens: &[String]) -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    for t in tokens {
        let mut after: Option<u64> = None;
        loop {
            let v = server
                .req("GET", &feed_path(after))
                .bearer(t)
                .send()
                .expect_ok(200);
            let entries = v["changes"].as_array().expect("changes").clone();
            if entries.is_empty() {
                break;
            }
            out.extend(entries.iter().map(|e| e["seq"].as_u64().expect("seq")));
            after = v["next"].as_u64();
        }
    }
    out
}

pub fn central_applied(pg: &Pg, gateway: &str) -> Option<(u64, String)> {
    pg.value("SELECT to_regclass('fleetgroups.gateways')::text")?;
    pg.query(&format!(
        "SELECT applied_seq, store_id FROM fleetgroups.gateways WHERE gateway_id = '{gateway}'"
    ))
    .into_iter()
    .next()
    .map(|r| {
        (
            r[0].as_deref().and_then(|s| s.parse().ok()).unwrap_or(0),
            r[1].clone().unwrap_or_default(),
        )
    })
}

/// Waits until the centre has applied everything up to `seq` for `gateway`.
pub fn caught_up(pg: &Pg, gateway: &str, seq: u64, deadline: Duration) {
    poll_until(deadline, &format!("{gateway} applied up to {seq}"), || {
        central_applied(pg, gateway)
            .filter(|(applied, _)| *applied >= seq)
            .map(|_| ())
    });
}

/// The central rows of one gateway's account as `GET /api/groups` shows groups.
pub fn central_groups(pg: &Pg, gateway: &str, account: &str) -> Value {
    let ts =
        |c: &str| format!("to_char({c} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')");
    let text = pg
        .value(&format!(
            "SELECT coalesce(json_agg(json_build_object('id', id, 'name', name, \
             'description', description, 'devices', devices, 'creation', {}, \
             'lastModified', {}, 'origin', origin) ORDER BY origin = 'office', substr(id, 5)::bigint), '[]')::text \
             FROM fleetgroups.groups WHERE gateway_id = '{gateway}' AND account = '{account}'",
            ts("creation"),
            ts("last_modified")
        ))
        .expect("a value");
    serde_json::from_str(&text).expect("json")
}

/// The central `changes` seqs of a gateway's store, and how many rows they are.
pub fn central_changes(pg: &Pg, gateway: &str, store_id: &str) -> (BTreeSet<u64>, usize) {
    let rows = pg.query(&format!(
        "SELECT seq FROM fleetgroups.changes WHERE gateway_id = '{gateway}' AND store_id = '{store_id}'"
    ));
    let n = rows.len();
    (
        rows.into_iter()
            .filter_map(|r| r[0].as_deref().and_then(|s| s.parse().ok()))
            .collect(),
        n,
    )
}

/// Row-for-row equality of both accounts with the gateway's own answers.
fn assert_converged(pg: &Pg, server: &TestServer, gateway: &str, tokens: &[String]) {
    for (t, account) in tokens.iter().zip(["default", "acme"]) {
        let live = server
            .req("GET", "/api/groups")
            .bearer(t)
            .send()
            .expect_ok(200);
        assert_eq!(
            central_groups(pg, gateway, account),
            live["groups"],
            "{gateway}/{account}: central rows differ from GET /api/groups"
        );
    }
}

pub fn store_id(server: &TestServer, token: &str) -> String {
    server
        .req("GET", "/api/changes?limit=1")
        .bearer(token)
        .send()
        .expect_ok(200)["storeId"]
        .as_str()
        .expect("storeId")
        .to_string()
}

/// Creates, renames, changes membership and deletes across both accounts.
fn work(server: &TestServer, tokens: &[String], rounds: usize, tag: &str) {
    for i in 0..rounds {
        for (a, t) in tokens.iter().enumerate() {
            let c = server.client(t);
            let g = c.create(&json!({
                "name": format!("{tag}-{a}-{i}"),
                "description": if i % 2 == 0 { Value::Null } else { json!("d") },
                "devices": [format!("dev-{i}"), "shared"],
            }));
            let id = g["id"].as_str().expect("id").to_string();
            match i % 4 {
                0 => {
                    c.put(
                        &format!("/api/groups/{id}"),
                        &json!({"name": format!("{tag}-{a}-{i}-renamed"), "devices": ["x"]}),
                    )
                    .expect_ok(200);
                }
                1 => {
                    c.post(
                        &format!("/api/groups/{id}/devices"),
                        &json!({"devices": ["y", "z"]}),
                    )
                    .expect_ok(200);
                }
                2 => {
                    c.delete(&format!("/api/groups/{id}")).expect_ok(200);
                }
                _ => {}
            }
        }
    }
}

#[test]
fn two_gateways_converge_row_for_row_and_every_change_is_central_exactly_once() {
    let pg = Pg::start();
    let (a, ta) = gateway(&pg, "gw-a");
    let (b, tb) = gateway(&pg, "gw-b");
    work(&a, &ta, 12, "a");
    work(&b, &tb, 9, "b");
    for (server, tokens, gw) in [(&a, &ta, "gw-a"), (&b, &tb, "gw-b")] {
        caught_up(&pg, gw, high(server, &tokens[0]), Duration::from_secs(30));
        assert_converged(&pg, server, gw, tokens);
        let sid = store_id(server, &tokens[0]);
        assert_eq!(central_applied(&pg, gw).map(|c| c.1), Some(sid.clone()));
        let (central, rows) = central_changes(&pg, gw, &sid);
        let feed = feed_seqs(server, tokens);
        assert_eq!(rows, central.len(), "{gw}: a change is in changes twice");
        assert_eq!(central, feed, "{gw}: changes differ from the feed");
    }
    // The audit trail says who did what; the GIN index answers the fleet-wide lookup.
    assert_eq!(
        pg.value(
            "SELECT count(*) FROM fleetgroups.changes WHERE user_name = 'other' AND op = 'deleted'"
        ),
        Some("5".into())
    );
    let holders = pg.value(
        "SELECT count(DISTINCT gateway_id) FROM fleetgroups.groups WHERE devices @> ARRAY['shared']",
    );
    assert_eq!(holders, Some("2".into()));
    assert_eq!(
        pg.value("SELECT max(version)::text FROM fleetgroups.schema_version"),
        Some(fleetgroups::replication::SCHEMA_VERSION.to_string())
    );
    // Metrics: caught up.
    let m = a.req("GET", "/metrics").send().text();
    let h = high(&a, &ta[0]);
    assert!(
        m.contains(&format!("fleetgroups_replication_applied_seq {h}\n")),
        "{m}"
    );
    assert!(
        m.contains("fleetgroups_replication_pending_changes 0\n"),
        "{m}"
    );
    assert!(
        m.contains("fleetgroups_replication_lag_seconds 0.000\n"),
        "{m}"
    );
    assert!(
        m.contains("fleetgroups_replication_resyncs_total 0\n"),
        "{m}"
    );
    assert_eq!(
        a.log().matches("replication: connected").count(),
        1,
        "{}",
        a.log()
    );
}

#[test]
fn with_the_centre_down_writes_go_on_and_replication_catches_up_after() {
    let pg = Pg::start();
    let (a, ta) = gateway(&pg, "gw-a");
    work(&a, &ta, 3, "before");
    caught_up(&pg, "gw-a", high(&a, &ta[0]), Duration::from_secs(30));
    let timed = |tag: &str| {
        let t0 = Instant::now();
        work(&a, &ta, 4, tag);
        t0.elapsed()
    };
    let up = timed("up");
    pg.stop_immediate();
    let down = timed("down");
    // Readiness does not depend on the centre.
    assert_eq!(a.req("GET", "/readyz").send().status, 200);
    let gauge = |m: &str, name: &str| -> f64 {
        m.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {m}"))
    };
    // The metrics show the backlog and its age, which grows while the centre is away:
    // waited for until it passes 1.5 s (the writes above are older than that by then).
    poll_until(Duration::from_secs(30), "the backlog's age to grow", || {
        let m = a.req("GET", "/metrics").send().text();
        (gauge(&m, "fleetgroups_replication_pending_changes") > 0.0
            && gauge(&m, "fleetgroups_replication_lag_seconds") >= 1.5)
            .then_some(())
    });
    let down2 = timed("down2");
    println!("the same writes: {up:?} with the centre up, {down:?} and {down2:?} with it down");
    assert!(
        down < up * 3 + Duration::from_millis(500) && down2 < up * 3 + Duration::from_millis(500),
        "writes slowed down without the centre: {up:?} → {down:?}, {down2:?}"
    );
    pg.start_again();
    caught_up(&pg, "gw-a", high(&a, &ta[0]), Duration::from_secs(60));
    assert_converged(&pg, &a, "gw-a", &ta);
    let sid = store_id(&a, &ta[0]);
    let (central, rows) = central_changes(&pg, "gw-a", &sid);
    assert_eq!(
        (central, rows),
        (feed_seqs(&a, &ta), feed_seqs(&a, &ta).len())
    );
    let log = a.log();
    assert!(
        log.contains("replication: lost the central database"),
        "{log}"
    );
    assert_eq!(
        log.matches("replication: lost").count(),
        1,
        "one line per state change: {log}"
    );
    assert_eq!(log.matches("replication: connected").count(), 2, "{log}");
    let m = a.req("GET", "/metrics").send().text();
    assert!(
        !m.contains("fleetgroups_replication_errors_total{kind=\"connect\"} 0\n"),
        "{m}"
    );
    assert_eq!(
        gauge(&m, "fleetgroups_replication_pending_changes"),
        0.0,
        "{m}"
    );
    assert_eq!(gauge(&m, "fleetgroups_replication_lag_seconds"), 0.0, "{m}");
}

/// kill -9 of the gateway and `pg_terminate_backend` of its connections at seeded
/// random moments under writes: nothing lost, nothing doubled, rows equal.
#[test]
fn kills_of_the_gateway_and_its_connections_lose_and_double_nothing() {
    let rounds: u64 = std::env::var("FLEETGROUPS_REPL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let seed: u64 = std::env::var("FLEETGROUPS_REPL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(9);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let pg = Pg::start();
    let (mut a, mut tokens, keys) = gateway_keys(&pg, "gw-k");
    let (mut terminated, mut killed_in) = (0u64, 0u64);
    for round in 0..rounds {
        let kill_at = Duration::from_millis(rng.gen_range(50..600));
        let terminate_at = Duration::from_millis(rng.gen_range(10..500));
        let pid = a.pid();
        std::thread::scope(|s| {
            let server = &a;
            let toks = &tokens;
            s.spawn(move || {
                for i in 0.. {
                    let t = &toks[i % 2];
                    let r = server
                        .req("POST", "/api/groups")
                        .bearer(t)
                        .json(
                            &json!({"name": format!("r{round}-{i}"), "devices": [format!("d{i}")]}),
                        )
                        .try_send();
                    match r {
                        Ok(r) if r.status == 201 => {
                            let id = r.json()["id"].as_str().unwrap_or("").to_string();
                            if i % 3 == 0 {
                                let _ = server
                                    .req("DELETE", &format!("/api/groups/{id}"))
                                    .bearer(t)
                                    .try_send();
                            }
                        }
                        _ => break,
                    }
                }
            });
            std::thread::sleep(terminate_at);
            let n = pg.value(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name LIKE 'fleetgroups/%'",
            );
            terminated += n.and_then(|n| n.parse().ok()).unwrap_or(0);
            std::thread::sleep(kill_at.saturating_sub(terminate_at));
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
        });
        a.kill9();
        let (applied_at_kill, _) = central_applied(&pg, "gw-k").unwrap_or((0, String::new()));
        killed_in += 1;
        a.restart();
        tokens = vec![a.login("admin", &keys[0]), a.login("other", &keys[1])];
        let h = high(&a, &tokens[0]);
        caught_up(&pg, "gw-k", h, Duration::from_secs(60));
        assert_converged(&pg, &a, "gw-k", &tokens);
        let sid = store_id(&a, &tokens[0]);
        let (central, rows) = central_changes(&pg, "gw-k", &sid);
        let feed = feed_seqs(&a, &tokens);
        let lost = feed.difference(&central).count();
        let doubled = rows - central.len();
        let extra = central.difference(&feed).count();
        println!(
            "round {round}: kill at {kill_at:?} (centre had {applied_at_kill}), {} changes, lost {lost}, doubled {doubled}, not in the feed {extra}",
            feed.len()
        );
        assert_eq!((lost, doubled, extra), (0, 0, 0), "round {round}");
    }
    let sid = store_id(&a, &tokens[0]);
    let (central, _) = central_changes(&pg, "gw-k", &sid);
    println!(
        "kill rounds: {killed_in} rounds, {} changes, {terminated} connections terminated, lost 0, doubled 0 (seed {seed})",
        central.len()
    );
    assert!(central.len() > rounds as usize, "the writers wrote");
}

/// A restored store has a new store_id: the gateway resyncs, in one transaction, and
/// says so naming both IDs; afterwards it replicates from the snapshot on.
#[test]
fn a_restore_resyncs_the_centre_from_a_snapshot() {
    let pg = Pg::start();
    let (mut a, ta) = gateway(&pg, "gw-r");
    work(&a, &ta, 4, "old");
    caught_up(&pg, "gw-r", high(&a, &ta[0]), Duration::from_secs(30));
    let old_id = store_id(&a, &ta[0]);
    let out_dir = tempfile::tempdir().expect("tempdir");
    let file = out_dir.path().join("b.jsonl");
    assert_eq!(a.cli(&["backup", file.to_str().expect("utf-8")]).code, 0);
    // Changes after the backup: the restore goes back in time.
    work(&a, &ta, 2, "lost");
    caught_up(&pg, "gw-r", high(&a, &ta[0]), Duration::from_secs(30));
    let admin_key = a.admin_key();
    a.stop();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = cli_in(
        &dir.path().join("data"),
        &["restore", file.to_str().expect("utf-8")],
        &[],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let mut b = TestServer::with_dir(dir, options(&pg, "gw-r"));
    let other_key = b.cli(&["user", "rotate-key", "other"]).key();
    let tb = vec![b.login("admin", &admin_key), b.login("other", &other_key)];
    let new_id = store_id(&b, &tb[0]);
    assert_ne!(new_id, old_id);
    poll_until(
        Duration::from_secs(30),
        "the centre takes the new store",
        || {
            central_applied(&pg, "gw-r")
                .filter(|(_, s)| *s == new_id)
                .map(|_| ())
        },
    );
    wait_for_resyncs(&b, 1.0);
    work(&b, &tb, 2, "new");
    caught_up(&pg, "gw-r", high(&b, &tb[0]), Duration::from_secs(30));
    assert_converged(&pg, &b, "gw-r", &tb);
    // The new store's changes after the snapshot are central; the old store's stay.
    let (central, rows) = central_changes(&pg, "gw-r", &new_id);
    assert_eq!(rows, central.len());
    assert!(!central.is_empty());
    let m = b.req("GET", "/metrics").send().text();
    assert!(
        m.contains("fleetgroups_replication_resyncs_total 1\n"),
        "{m}"
    );
    // The resync's line names both stores: the whole log, once the gateway has exited.
    let log = b.stop_for_log();
    let resynced = log
        .lines()
        .find(|l| l.contains("replication: resynced"))
        .unwrap_or_else(|| panic!("no resync logged:\n{log}"));
    assert!(
        resynced.contains(&old_id) && resynced.contains(&new_id),
        "{resynced}"
    );
}

/// The password is never printed: not by `check-config`, not in the log, not in a
/// configuration error; bad values stop the start naming the key.
#[test]
fn the_password_is_never_printed_and_bad_settings_name_their_key() {
    let pg = Pg::start();
    let secret = "pw-Zq8sEcret";
    let url = format!(
        "postgresql://postgres:{secret}@127.0.0.1:{}/postgres?sslmode=disable",
        pg.port
    );
    let opts = Options::default()
        .env("FLEETGROUPS_REPLICATION_POSTGRES_URL", &url)
        .env("FLEETGROUPS_REPLICATION_GATEWAY_ID", "gw-p");
    let a = TestServer::with(opts);
    let t = a.admin_token();
    work(&a, std::slice::from_ref(&t), 1, "p");
    caught_up(&pg, "gw-p", high(&a, &t), Duration::from_secs(30));
    let shown = a.cli(&["check-config"]);
    assert!(
        shown.stdout.contains("postgres:***@127.0.0.1"),
        "{}",
        shown.stdout
    );
    let json = a.cli(&["check-config", "--output", "json"]);
    let m = a.req("GET", "/metrics").send().text();
    for text in [&shown.stdout, &shown.stderr, &json.stdout, &a.log(), &m] {
        assert!(!text.contains(secret), "the password was printed: {text}");
    }
    for (key, value, named) in [
        (
            "FLEETGROUPS_REPLICATION_BATCH_SIZE",
            "0",
            "replication.batch_size",
        ),
        (
            "FLEETGROUPS_REPLICATION_GATEWAY_ID",
            "no spaces",
            "replication.gateway_id",
        ),
        (
            "FLEETGROUPS_REPLICATION_POSTGRES_URL",
            "postgresql://u:hunter2@h/db?sslmode=maybe",
            "replication.postgres_url",
        ),
        (
            "FLEETGROUPS_REPLICATION_PASSWORD_FILE",
            "/nonexistent/pw",
            "replication.password_file",
        ),
    ] {
        let mut env = vec![(
            "FLEETGROUPS_REPLICATION_POSTGRES_URL".to_string(),
            url.clone(),
        )];
        env.retain(|(k, _)| k != key);
        env.push((key.to_string(), value.to_string()));
        let out = cli_in(&a.data_dir(), &["check-config"], &env);
        assert_eq!(out.code, 2, "{key}={value}: {}", out.stderr);
        assert!(out.stderr.contains(named), "{key}: {}", out.stderr);
        assert!(
            !out.stderr.contains(secret) && !out.stderr.contains("hunter2"),
            "{}",
            out.stderr
        );
    }
}

/// A backup whose feed lost its first entry to retention, as a file.
fn purged_backup(server: &TestServer, dir: &std::path::Path) -> std::path::PathBuf {
    let file = dir.join("full.jsonl");
    assert_eq!(
        server.cli(&["backup", file.to_str().expect("utf-8")]).code,
        0
    );
    let text = std::fs::read_to_string(&file).expect("backup");
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines.retain(|l| {
        let v: Value = serde_json::from_str(l).expect("json");
        !(v["type"] == "change" && v["seq"] == 1)
    });
    let records = lines.len() - 2;
    *lines.last_mut().expect("end") = format!("{{\"type\":\"end\",\"records\":{records}}}");
    let purged = dir.join("purged.jsonl");
    std::fs::write(&purged, lines.join("\n") + "\n").expect("write");
    purged
}

/// A centre cursor older than what the feed still holds resyncs: both for a gateway
/// the centre has never seen whose feed lost its start, and for a row whose
/// `applied_seq` fell below the feed's retention.
#[test]
fn a_cursor_older_than_the_feeds_retention_resyncs() {
    let pg = Pg::start();
    // The source gateway replicates elsewhere; only its backup matters.
    let (a, ta, keys) = gateway_keys(&pg, "gw-source");
    work(&a, &ta, 3, "src");
    let out_dir = tempfile::tempdir().expect("tempdir");
    let purged = purged_backup(&a, out_dir.path());
    let dir = tempfile::tempdir().expect("tempdir");
    let out = cli_in(
        &dir.path().join("data"),
        &["restore", purged.to_str().expect("utf-8")],
        &[],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let mut b = TestServer::with_dir(dir, options(&pg, "gw-t"));
    let tb = vec![b.login("admin", &keys[0]), b.login("other", &keys[1])];
    caught_up(&pg, "gw-t", high(&b, &tb[0]), Duration::from_secs(30));
    wait_for_resyncs(&b, 1.0);
    assert_converged(&pg, &b, "gw-t", &tb);
    // The centre's cursor falls behind the retained history (as after a long outage).
    pg.query("UPDATE fleetgroups.gateways SET applied_seq = 0 WHERE gateway_id = 'gw-t'");
    work(&b, &tb, 1, "after");
    caught_up(&pg, "gw-t", high(&b, &tb[0]), Duration::from_secs(30));
    wait_for_resyncs(&b, 2.0);
    assert_converged(&pg, &b, "gw-t", &tb);
    let m = b.req("GET", "/metrics").send().text();
    assert!(
        m.contains("fleetgroups_replication_resyncs_total 2\n"),
        "{m}"
    );
    // Each resync's line says why: the whole log, once the gateway has exited.
    let log = b.stop_for_log();
    let reasons: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("replication: resynced"))
        .collect();
    assert_eq!(reasons.len(), 2, "{log}");
    assert!(
        reasons[0].contains("no longer holds its whole history"),
        "{}",
        reasons[0]
    );
    assert!(
        reasons[1].contains("older than the feed's retention"),
        "{}",
        reasons[1]
    );
}

/// `sslmode` is honoured against a centre that takes only TLS, whose certificate
/// names `localhost` alone: `require` encrypts without checking; `verify-ca` checks
/// the chain but not the name (reached as 127.0.0.1); `verify-full` checks the name
/// too (as `localhost`: connects; as 127.0.0.1: refused); a wrong CA and `disable`
/// never connect. TLS is rustls: no OpenSSL anywhere.
#[test]
fn sslmodes_are_honoured_over_tls() {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    let pg = Pg::start_tls(
        &generated.cert.pem(),
        &generated.signing_key.serialize_pem(),
    );
    let certs = tempfile::tempdir().expect("tempdir");
    let ca = certs.path().join("ca.pem");
    std::fs::write(&ca, generated.cert.pem()).expect("write");
    let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    let wrong_ca = certs.path().join("wrong.pem");
    std::fs::write(&wrong_ca, other.cert.pem()).expect("write");
    let url = |host: &str, mode: &str| {
        format!(
            "postgresql://postgres@{host}:{}/postgres?hostaddr=127.0.0.1&sslmode={mode}",
            pg.port
        )
    };
    let start = |gw: &str, url: String, ca_file: &std::path::Path| {
        TestServer::with(
            Options::default()
                .env("FLEETGROUPS_REPLICATION_POSTGRES_URL", &url)
                .env("FLEETGROUPS_REPLICATION_GATEWAY_ID", gw)
                .env(
                    "FLEETGROUPS_REPLICATION_CA_FILE",
                    ca_file.to_str().expect("utf-8"),
                ),
        )
    };
    let none = std::path::Path::new("");
    let good = [
        ("gw-require", url("127.0.0.1", "require"), none),
        ("gw-verify-ca", url("127.0.0.1", "verify-ca"), ca.as_path()),
        (
            "gw-verify-full",
            url("localhost", "verify-full"),
            ca.as_path(),
        ),
    ];
    let bad = [
        (
            "gw-wrong-name",
            url("127.0.0.1", "verify-full"),
            ca.as_path(),
        ),
        (
            "gw-wrong-ca",
            url("localhost", "verify-full"),
            wrong_ca.as_path(),
        ),
        ("gw-disable", url("127.0.0.1", "disable"), none),
    ];
    let mut servers = Vec::new();
    for (gw, u, ca_file) in good.iter().chain(&bad) {
        let s = start(gw, u.clone(), ca_file);
        let t = s.admin_token();
        s.client(&t).create(&json!({"name": format!("{gw} group")}));
        servers.push((gw.to_string(), s, t));
    }
    for (gw, s, t) in &servers[..good.len()] {
        caught_up(&pg, gw, high(s, t), Duration::from_secs(30));
        assert_converged_one(&pg, s, gw, t);
    }
    for (gw, s, _) in &servers[good.len()..] {
        // It tried and failed: its connect errors counted.
        poll_until(Duration::from_secs(30), "a failed connect", || {
            (s.metric("fleetgroups_replication_errors_total{kind=\"connect\"}")? > 0.0)
                .then_some(())
        });
        assert!(
            central_applied(&pg, gw).is_none(),
            "{gw} reached the centre"
        );
    }
}

fn assert_converged_one(pg: &Pg, server: &TestServer, gateway: &str, token: &str) {
    let live = server
        .req("GET", "/api/groups")
        .bearer(token)
        .send()
        .expect_ok(200);
    assert_eq!(
        central_groups(pg, gateway, "default"),
        live["groups"],
        "{gateway}"
    );
}

/// A centre that takes the connection and never answers (a hung database) neither
/// delays readiness nor the stop: SIGTERM ends the server well within the grace
/// period.
#[test]
fn a_hung_centre_delays_neither_readiness_nor_the_stop() {
    // Accepts TCP (the kernel's backlog) and never says a word.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!(
        "postgresql://fleet@127.0.0.1:{}/fleet?sslmode=disable",
        hung.local_addr().expect("addr").port()
    );
    let mut s = TestServer::with(
        Options::default()
            .env("FLEETGROUPS_REPLICATION_POSTGRES_URL", &url)
            .env("FLEETGROUPS_REPLICATION_GATEWAY_ID", "gw-hung"),
    );
    assert_eq!(s.req("GET", "/readyz").send().status, 200);
    let t = s.admin_token();
    s.client(&t)
        .create(&json!({"name": "written while the centre hangs"}));
    // The gateway is inside its connect to the hung centre: the connection is there
    // (taken from the backlog here, and held open without a word).
    hung.set_nonblocking(true).expect("nonblocking");
    let _held = poll_until(Duration::from_secs(30), "the gateway to connect", || {
        hung.accept().ok().map(|(stream, _)| stream)
    });
    let t0 = Instant::now();
    let status = s.stop();
    assert!(status.success(), "{status:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "the stop took {:?}",
        t0.elapsed()
    );
    drop(hung);
}
