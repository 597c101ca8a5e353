//! Office groups (docs/operations/many-gateways.md, "Office groups") against a real PostgreSQL (`pg.rs`): defined
//! with plain SQL in `fleetgroups.office_groups`, pulled by the gateways they target,
//! served read-only with `ofc-` IDs, through kills of the gateway and of its
//! connections, a central outage and a restore. Checked against the gateways' own
//! HTTP answers and the centre's tables.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::pg::{Bouncer, Pg};
use crate::support::{cli_in, env_u64, poll_until, without_envelope, Options, TestServer};

fn options(pg: &Pg, gateway: &str) -> Options {
    Options::default()
        .env("FLEETGROUPS_REPLICATION_POSTGRES_URL", &pg.url())
        .env("FLEETGROUPS_REPLICATION_GATEWAY_ID", gateway)
        .env("FLEETGROUPS_REPLICATION_PULL_SECS", "1")
}

/// A gateway and its admin's token (account `default`).
fn gateway(pg: &Pg, id: &str) -> (TestServer, String) {
    let server = TestServer::with(options(pg, id));
    let token = server.admin_token();
    (server, token)
}

/// A new office group of account `default` for every gateway; its id.
fn office_group(pg: &Pg, name: &str) -> String {
    pg.value(&format!(
        "INSERT INTO fleetgroups.office_groups (account, name) VALUES ('default', '{name}')
         RETURNING id"
    ))
    .expect("id")
}

/// A gateway serving one new office group `name`: the gateway, its admin's token and
/// the group's id.
fn serving_one(pg: &Pg, gw: &str, name: &str) -> (TestServer, String, String) {
    let (server, token) = gateway(pg, gw);
    schema_ready(pg);
    let id = office_group(pg, name);
    converged(pg, &server, &token, gw);
    (server, token, id)
}

/// Waits until the gateway has created the office schema (its first connect).
fn schema_ready(pg: &Pg) {
    poll_until(Duration::from_secs(30), "the office schema", || {
        pg.value("SELECT to_regclass('fleetgroups.office_status')::text")
            .map(|_| ())
    });
}

/// The office groups a gateway serves to `token`'s account: id → group (as listed).
fn served(server: &TestServer, token: &str) -> BTreeMap<String, Value> {
    let v = server
        .req("GET", "/api/groups")
        .bearer(token)
        .send()
        .expect_ok(200);
    v["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .filter(|g| g["origin"] == "office")
        .map(|g| (g["id"].as_str().expect("id").to_string(), g.clone()))
        .collect()
}

/// The office state the centre means for `gateway` in account `default`: id →
/// (name, description, devices).
fn meant(pg: &Pg, gateway: &str) -> BTreeMap<String, (String, Option<String>, String)> {
    pg.query(&format!(
        "SELECT id, name, description, array_to_json(devices)::text FROM fleetgroups.office_groups
          WHERE account = 'default' AND (gateways IS NULL OR '{gateway}' = ANY (gateways))"
    ))
    .into_iter()
    .map(|r| {
        (
            r[0].clone().expect("id"),
            (
                r[1].clone().expect("name"),
                r[2].clone(),
                r[3].clone().expect("devices"),
            ),
        )
    })
    .collect()
}

/// What a gateway serves, in `meant`'s form.
fn served_state(
    server: &TestServer,
    token: &str,
) -> BTreeMap<String, (String, Option<String>, String)> {
    served(server, token)
        .into_iter()
        .map(|(id, g)| {
            (
                id,
                (
                    g["name"].as_str().expect("name").to_string(),
                    g["description"].as_str().map(str::to_string),
                    g["devices"].to_string(),
                ),
            )
        })
        .collect()
}

/// Waits until the gateway serves exactly what the centre means for it.
fn converged(pg: &Pg, server: &TestServer, token: &str, gateway: &str) {
    poll_until(Duration::from_secs(60), "the office state", || {
        (served_state(server, token) == meant(pg, gateway)).then_some(())
    });
}

/// Every feed entry of the account: (seq, op, id, userName, group).
fn feed(server: &TestServer, token: &str) -> Vec<(u64, String, String, String, Value)> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let v = server
            .req("GET", &format!("/api/changes?after={after}&limit=1000"))
            .bearer(token)
            .send()
            .expect_ok(200);
        let changes = v["changes"].as_array().expect("changes");
        if changes.is_empty() {
            return out;
        }
        for c in changes {
            out.push((
                c["seq"].as_u64().expect("seq"),
                c["op"].as_str().expect("op").to_string(),
                c["id"].as_str().expect("id").to_string(),
                c["userName"].as_str().expect("userName").to_string(),
                c["group"].clone(),
            ));
        }
        after = v["next"].as_u64().expect("next");
    }
}

/// Each office change is in the feed once: per group, a created, then updates that
/// each change something, a deleted, and so on; every entry by the user `office`.
fn assert_each_change_once(entries: &[(u64, String, String, String, Value)]) {
    let mut last: BTreeMap<&str, (&str, &Value)> = BTreeMap::new();
    for (seq, op, id, user, group) in entries.iter().filter(|e| e.2.starts_with("ofc-")) {
        assert_eq!(user, "office", "entry {seq}");
        let before = last.get(id.as_str()).copied();
        match (op.as_str(), before) {
            ("created", None | Some(("deleted", _))) => {}
            ("updated", Some((prev, state))) if prev != "deleted" => {
                let strip = |g: &Value| json!([g["name"], g["description"], g["devices"]]);
                assert_ne!(strip(state), strip(group), "entry {seq} repeats {id}");
            }
            ("deleted", Some((prev, _))) if prev != "deleted" => {}
            _ => panic!("entry {seq}: {op} of {id} after {before:?}"),
        }
        last.insert(id, (op, group));
    }
}

/// An office group reaches the gateways it targets and only those, with one `ofc-`
/// ID everywhere and `origin: office` in every read (list, get, reverse lookup, feed);
/// an update and a delete follow; retargeting removes it from a dropped gateway; its
/// changes replicate back up per gateway.
#[test]
fn office_groups_reach_only_the_targeted_gateways_and_follow_every_change() {
    let pg = Pg::start();
    let (a, ta) = gateway(&pg, "gw-a");
    let (b, tb) = gateway(&pg, "gw-b");
    let (c, tc) = gateway(&pg, "gw-c");
    schema_ready(&pg);
    let id = pg
        .value(
            "INSERT INTO fleetgroups.office_groups (account, name, description, devices, gateways)
             VALUES ('default', 'Refrigerated trucks', 'cold chain', ARRAY['truck-1', 'truck-2'],
                     ARRAY['gw-a', 'gw-b'])
             RETURNING id",
        )
        .expect("id");
    assert!(id.starts_with("ofc-"), "{id}");
    let everywhere = office_group(&pg, "All depots");
    for (s, t, gw) in [(&a, &ta, "gw-a"), (&b, &tb, "gw-b"), (&c, &tc, "gw-c")] {
        converged(&pg, s, t, gw);
    }
    assert!(served(&c, &tc).contains_key(&everywhere));
    assert!(!served(&c, &tc).contains_key(&id), "gw-c is not targeted");
    // Every read shows it as an ordinary group with its origin.
    let one = a
        .req("GET", &format!("/api/groups/{id}"))
        .bearer(&ta)
        .send()
        .expect_ok(200);
    assert_eq!(
        (&one["id"], &one["name"], &one["origin"]),
        (&json!(id), &json!("Refrigerated trucks"), &json!("office"))
    );
    assert_eq!(one["devices"], json!(["truck-1", "truck-2"]));
    let by_device = b
        .req("GET", "/api/devices/truck-2/groups")
        .bearer(&tb)
        .send()
        .expect_ok(200);
    assert_eq!(by_device["groups"][0]["id"], json!(id), "{by_device}");
    let local = a
        .req("POST", "/api/groups")
        .bearer(&ta)
        .json(&json!({"name": "Local vans"}))
        .send()
        .expect_ok(201);
    assert_eq!(local["origin"], "local");
    assert!(local["id"].as_str().expect("id").starts_with("grp-"));
    // Paging runs local groups first, then office groups.
    let page = a
        .req("GET", "/api/groups?limit=1&after=grp-99999")
        .bearer(&ta)
        .send()
        .expect_ok(200);
    assert!(
        page["groups"][0]["id"]
            .as_str()
            .is_some_and(|i| i.starts_with("ofc-")),
        "{page}"
    );
    // An update follows on both targeted gateways.
    pg.query(&format!(
        "UPDATE fleetgroups.office_groups SET name = 'Reefer trucks', devices = ARRAY['truck-2', 'truck-3']
          WHERE id = '{id}'"
    ));
    converged(&pg, &a, &ta, "gw-a");
    converged(&pg, &b, &tb, "gw-b");
    // Retargeting drops gw-b: the group goes there, stays on gw-a.
    pg.query(&format!(
        "UPDATE fleetgroups.office_groups SET gateways = ARRAY['gw-a'] WHERE id = '{id}'"
    ));
    converged(&pg, &b, &tb, "gw-b");
    assert!(!served(&b, &tb).contains_key(&id));
    assert!(served(&a, &ta).contains_key(&id));
    // A delete follows.
    pg.query(&format!(
        "DELETE FROM fleetgroups.office_groups WHERE id = '{id}'"
    ));
    converged(&pg, &a, &ta, "gw-a");
    assert_eq!(
        a.req("GET", &format!("/api/groups/{id}"))
            .bearer(&ta)
            .send()
            .status,
        404
    );
    let fa = feed(&a, &ta);
    assert_each_change_once(&fa);
    let ops: Vec<&str> = fa
        .iter()
        .filter(|e| e.2 == id)
        .map(|e| e.1.as_str())
        .collect();
    assert_eq!(ops, ["created", "updated", "deleted"]);
    let fb = feed(&b, &tb);
    let ops: Vec<&str> = fb
        .iter()
        .filter(|e| e.2 == id)
        .map(|e| e.1.as_str())
        .collect();
    assert_eq!(
        ops,
        ["created", "updated", "deleted"],
        "gw-b: removed when dropped"
    );
    assert_eq!(
        fa.iter().find(|e| e.2 == id).expect("created").4["origin"],
        "office"
    );
    // They replicate back up: fleet-wide queries show the office group per gateway.
    poll_until(Duration::from_secs(30), "office groups centrally", || {
        let n = pg.value(&format!(
            "SELECT count(DISTINCT gateway_id) FROM fleetgroups.groups WHERE id = '{everywhere}'"
        ))?;
        (n == "3").then_some(())
    });
    let origins =
        pg.query("SELECT DISTINCT origin, left(id, 4) FROM fleetgroups.groups ORDER BY 1");
    assert_eq!(
        origins,
        vec![
            vec![Some("local".to_string()), Some("grp-".to_string())],
            vec![Some("office".to_string()), Some("ofc-".to_string())]
        ]
    );
    let cursor = pg
        .value("SELECT max(revision) FROM fleetgroups.office_tombstones")
        .expect("revision");
    poll_until(Duration::from_secs(30), "the cursor metric", || {
        (a.metric("fleetgroups_office_cursor")? == cursor.parse::<f64>().ok()?).then_some(())
    });
}

/// A request body: its content type and JSON.
type Body = Option<(&'static str, Value)>;

/// Every write verb on an office group is 403 `office_group_read_only`, also with
/// `If-Match` and an `Idempotency-Key`, and changes nothing; the centre refuses a
/// group that breaks the rules.
#[test]
fn every_write_to_an_office_group_is_refused_and_changes_nothing() {
    let pg = Pg::start();
    let (a, ta) = gateway(&pg, "gw-w");
    schema_ready(&pg);
    let id = pg
        .value(
            "INSERT INTO fleetgroups.office_groups (account, name, devices)
             VALUES ('default', 'Office', ARRAY['d1']) RETURNING id",
        )
        .expect("id");
    converged(&pg, &a, &ta, "gw-w");
    let before = a
        .req("GET", &format!("/api/groups/{id}"))
        .bearer(&ta)
        .send();
    let etag = before.header("etag").expect("etag").to_string();
    let feed_before = feed(&a, &ta);
    let path = format!("/api/groups/{id}");
    let devices = format!("/api/groups/{id}/devices");
    let one_device = format!("/api/groups/{id}/devices/d1");
    let body = json!({"name": "Mine now", "devices": ["d2"]});
    let writes: Vec<(&str, &str, Body)> = vec![
        ("PUT", &path, Some(("application/json", body.clone()))),
        (
            "PUT",
            &path,
            Some(("application/json", json!({"bad": true}))),
        ),
        (
            "PATCH",
            &path,
            Some(("application/merge-patch+json", json!({"name": "x"}))),
        ),
        (
            "PATCH",
            &path,
            Some((
                "application/json-patch+json",
                json!([{"op": "replace", "path": "/name", "value": "x"}]),
            )),
        ),
        ("DELETE", &path, None),
        (
            "POST",
            &devices,
            Some(("application/json", json!({"devices": ["d9"]}))),
        ),
        ("DELETE", &one_device, None),
    ];
    for (method, p, body) in &writes {
        for (if_match, key) in [(None, None), (Some(etag.as_str()), Some("k-1"))] {
            let mut req = a.req(method, p).bearer(&ta);
            if let Some((ct, b)) = body {
                req = req.body_as(ct, b.to_string().as_bytes());
            }
            if let Some(m) = if_match {
                req = req.header("If-Match", m);
            }
            if let Some(k) = key {
                req = req.header("Idempotency-Key", k);
            }
            let r = req.send();
            assert_eq!(r.status, 403, "{method} {p}: {}", r.text());
            let v = r.json();
            assert_eq!(v["errorCode"], "office_group_read_only", "{method} {p}");
            assert!(
                v["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("office group")),
                "{v}"
            );
        }
    }
    let after = a
        .req("GET", &format!("/api/groups/{id}"))
        .bearer(&ta)
        .send();
    assert_eq!(after.header("etag"), Some(etag.as_str()));
    assert_eq!(
        without_envelope(after.json()),
        without_envelope(before.json())
    );
    assert_eq!(feed(&a, &ta), feed_before, "the feed is unchanged");
    // A missing office group is 404, as any.
    let r = a.req("DELETE", "/api/groups/ofc-999999").bearer(&ta).send();
    assert_eq!(r.status, 404);
    // The centre refuses what no gateway could apply, naming the rule.
    for bad in [
        "INSERT INTO fleetgroups.office_groups (account, name) VALUES ('default', ' padded ')",
        "INSERT INTO fleetgroups.office_groups (account, name, devices) VALUES ('default', 'x', ARRAY['a', 'a'])",
        "INSERT INTO fleetgroups.office_groups (account, name, devices) VALUES ('default', 'x', ARRAY[' a'])",
        "INSERT INTO fleetgroups.office_groups (account, id, name) VALUES ('default', 'grp-1', 'x')",
        "INSERT INTO fleetgroups.office_groups (account, name) VALUES ('default', 'OFFICE')",
        "TRUNCATE fleetgroups.office_groups",
    ] {
        let e = pg.try_query(bad).expect_err(bad);
        assert!(!e.is_empty(), "{bad}");
    }
    assert_eq!(
        pg.value("SELECT count(*) FROM fleetgroups.office_groups")
            .as_deref(),
        Some("1")
    );
}

/// A name taken by a local group: the office group is not applied there, a conflict
/// row says so centrally (and `/metrics`); renaming the local group lets it in and the
/// conflict goes. The device limit holds an update back whole.
#[test]
fn a_name_conflict_is_reported_centrally_and_resolved_by_a_local_rename() {
    let pg = Pg::start();
    let (a, ta) = gateway(&pg, "gw-n");
    schema_ready(&pg);
    let local = a
        .req("POST", "/api/groups")
        .bearer(&ta)
        .json(&json!({"name": "Trucks"}))
        .send()
        .expect_ok(201);
    let lid = local["id"].as_str().expect("id").to_string();
    let id = office_group(&pg, "TRUCKS");
    let conflict = poll_until(Duration::from_secs(30), "the conflict row", || {
        pg.query(&format!(
            "SELECT reason, detail FROM fleetgroups.office_conflicts
              WHERE gateway_id = 'gw-n' AND account = 'default' AND id = '{id}'"
        ))
        .into_iter()
        .next()
    });
    assert_eq!(conflict[0].as_deref(), Some("name_taken"));
    assert!(conflict[1].as_deref().is_some_and(|d| d.contains(&lid)));
    assert_eq!(
        pg.value("SELECT conflicts FROM fleetgroups.office_status WHERE gateway_id = 'gw-n'")
            .as_deref(),
        Some("1")
    );
    assert_eq!(a.metric("fleetgroups_office_conflicts"), Some(1.0));
    assert!(served(&a, &ta).is_empty(), "not applied");
    a.req("PUT", &format!("/api/groups/{lid}"))
        .bearer(&ta)
        .json(&json!({"name": "Vans"}))
        .send()
        .expect_ok(200);
    // Applied at the rename itself, not only at the next pull.
    let g = a
        .req("GET", &format!("/api/groups/{id}"))
        .bearer(&ta)
        .send()
        .expect_ok(200);
    assert_eq!(g["name"], "TRUCKS");
    poll_until(Duration::from_secs(30), "the conflict to go", || {
        (pg.value("SELECT count(*) FROM fleetgroups.office_conflicts")
            .as_deref()
            == Some("0"))
        .then_some(())
    });
    assert_eq!(a.metric("fleetgroups_office_conflicts"), Some(0.0));
    // The local limits hold: an update past limits.max_devices_per_group is held whole.
    drop(a);
    let opts = options(&pg, "gw-m").env("FLEETGROUPS_LIMITS_MAX_DEVICES_PER_GROUP", "2");
    let m = TestServer::with(opts);
    let tm = m.admin_token();
    converged(&pg, &m, &tm, "gw-m");
    pg.query(&format!(
        "UPDATE fleetgroups.office_groups SET name = 'Big', devices = ARRAY['1', '2', '3'] WHERE id = '{id}'"
    ));
    poll_until(Duration::from_secs(30), "the device-limit conflict", || {
        pg.value(&format!(
            "SELECT reason FROM fleetgroups.office_conflicts WHERE gateway_id = 'gw-m' AND id = '{id}'"
        ))
        .filter(|r| r == "max_devices_per_group")
    });
    let g = &served(&m, &tm)[&id];
    assert_eq!((&g["name"], &g["devices"]), (&json!("TRUCKS"), &json!([])));
    let log = m.log();
    assert_eq!(
        log.matches("office group not applied here").count(),
        1,
        "one line per state change:\n{log}"
    );
    // Decommissioning the gateway takes its office report along.
    drop(m);
    pg.query("SELECT fleetgroups.decommission('gw-m')");
    assert_eq!(
        pg.value("SELECT count(*) FROM fleetgroups.office_conflicts WHERE gateway_id = 'gw-m'")
            .as_deref(),
        Some("0")
    );
    assert_eq!(
        pg.value("SELECT count(*) FROM fleetgroups.office_status WHERE gateway_id = 'gw-m'")
            .as_deref(),
        Some("0")
    );
}

/// kill -9 of gateways and `pg_terminate_backend` of their connections at seeded
/// moments while the office changes groups: each gateway ends with exactly the office
/// state meant for it, and each change is once in its feed.
/// `FLEETGROUPS_OFFICE_ROUNDS` (default 3) and `FLEETGROUPS_OFFICE_SEED` for more.
#[test]
fn kills_during_pulls_lose_and_double_no_office_change() {
    let rounds = env_u64("FLEETGROUPS_OFFICE_ROUNDS", 3);
    let seed = env_u64("FLEETGROUPS_OFFICE_SEED", 24);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let pg = Pg::start();
    let mut gws: Vec<(TestServer, String, &str)> = ["gw-x", "gw-y"]
        .into_iter()
        .map(|g| {
            let (s, t) = gateway(&pg, g);
            (s, t, g)
        })
        .collect();
    schema_ready(&pg);
    let mut changes = 0u64;
    for round in 0..rounds {
        let victim = rng.gen_range(0..gws.len());
        let kill_at = Duration::from_millis(rng.gen_range(50..1500));
        let terminate_at = Duration::from_millis(rng.gen_range(10..1000));
        let pid = gws[victim].0.pid();
        let ops: Vec<String> = (0..40)
            .map(|i| {
                let n = rng.gen_range(1..12);
                let target = match rng.gen_range(0..3) {
                    0 => "NULL".to_string(),
                    1 => "ARRAY['gw-x']".to_string(),
                    _ => "ARRAY['gw-y']".to_string(),
                };
                match rng.gen_range(0..4) {
                    0 => format!("DELETE FROM fleetgroups.office_groups WHERE id = 'ofc-{n}'"),
                    1 => format!(
                        "UPDATE fleetgroups.office_groups SET gateways = {target} WHERE id = 'ofc-{n}'"
                    ),
                    _ => format!(
                        "INSERT INTO fleetgroups.office_groups (account, id, name, devices, gateways)
                         VALUES ('default', 'ofc-{n}', 'g{n}', ARRAY['d{round}-{i}'], {target})
                         ON CONFLICT (account, id) DO UPDATE
                            SET devices = EXCLUDED.devices, gateways = EXCLUDED.gateways"
                    ),
                }
            })
            .collect();
        std::thread::scope(|s| {
            let pg = &pg;
            s.spawn(move || {
                for op in &ops {
                    pg.query(op);
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
            std::thread::sleep(terminate_at);
            let _ = pg.value(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                  WHERE application_name LIKE 'fleetgroups%'",
            );
            std::thread::sleep(kill_at.saturating_sub(terminate_at));
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
        });
        changes += 40;
        let (server, token, _) = &mut gws[victim];
        server.kill9();
        server.restart();
        *token = server.admin_token();
        for (s, t, g) in &gws {
            converged(&pg, s, t, g);
            assert_each_change_once(&feed(s, t));
        }
        println!("round {round}: killed gw-{victim} at {kill_at:?}, terminated at {terminate_at:?}: converged");
    }
    println!("office kill rounds: {rounds} rounds, {changes} central changes, lost 0, doubled 0 (seed {seed})");
}

/// Through PgBouncer in transaction mode (one server connection for two gateways):
/// the pulls and reports use no named statements and no session state, so office
/// groups and conflicts arrive as directly.
#[test]
fn office_groups_arrive_through_pgbouncer_in_transaction_mode() {
    let pg = Pg::start();
    let bouncer = Bouncer::start(&pg, 1);
    let opts = |gw: &str| {
        Options::default()
            .env(
                "FLEETGROUPS_REPLICATION_POSTGRES_URL",
                &bouncer.url("postgres"),
            )
            .env("FLEETGROUPS_REPLICATION_GATEWAY_ID", gw)
            .env("FLEETGROUPS_REPLICATION_PULL_SECS", "1")
    };
    let a = TestServer::with(opts("gw-p1"));
    let b = TestServer::with(opts("gw-p2"));
    let (ta, tb) = (a.admin_token(), b.admin_token());
    a.req("POST", "/api/groups")
        .bearer(&ta)
        .json(&json!({"name": "Pooled"}))
        .send()
        .expect_ok(201);
    schema_ready(&pg);
    pg.query("INSERT INTO fleetgroups.office_groups (account, name) VALUES ('default', 'Pooled')");
    pg.query(
        "INSERT INTO fleetgroups.office_groups (account, name) VALUES ('default', 'Everyone')",
    );
    converged(&pg, &b, &tb, "gw-p2");
    poll_until(
        Duration::from_secs(30),
        "the conflict through the pool",
        || {
            pg.value("SELECT reason FROM fleetgroups.office_conflicts WHERE gateway_id = 'gw-p1'")
                .filter(|r| r == "name_taken")
        },
    );
    // The two inserts may reach gw-p1 in two pulls: wait for the second.
    let on_a = poll_until(Duration::from_secs(30), "Everyone on gw-p1", || {
        let ids: Vec<String> = served(&a, &ta)
            .values()
            .map(|g| g["name"].as_str().unwrap_or("").to_string())
            .collect();
        (!ids.is_empty()).then_some(ids)
    });
    assert_eq!(on_a, ["Everyone"], "only Everyone on gw-p1");
    for (s, name) in [(&a, "gw-p1"), (&b, "gw-p2")] {
        assert_eq!(
            s.metric("fleetgroups_replication_errors_total{kind=\"office\"}"),
            Some(0.0),
            "{name}: {}",
            s.log()
        );
    }
    let log = pg.log();
    assert!(!log.contains("prepared statement"), "{log}");
}

/// While the centre is down a gateway serves the last office state it applied, also
/// across its own restart; when it is back, changes follow again.
#[test]
fn a_central_outage_leaves_the_last_office_state_served() {
    let pg = Pg::start();
    let (mut a, _, id) = serving_one(&pg, "gw-o", "Kept");
    pg.stop_immediate();
    a.stop();
    a.restart();
    let ta = a.admin_token();
    let g = a
        .req("GET", &format!("/api/groups/{id}"))
        .bearer(&ta)
        .send()
        .expect_ok(200);
    assert_eq!(
        (&g["name"], &g["origin"]),
        (&json!("Kept"), &json!("office"))
    );
    assert_eq!(a.req("GET", "/readyz").send().status, 200);
    pg.start_again();
    pg.query(&format!(
        "UPDATE fleetgroups.office_groups SET name = 'Kept 2' WHERE id = '{id}'"
    ));
    converged(&pg, &a, &ta, "gw-o");
}

/// A restore makes a new store without the office cursor: the next pull starts from
/// revision 0 and reconciles, so a group deleted centrally after the backup goes and
/// one made since arrives; nothing is doubled in the feed.
#[test]
fn a_restore_pulls_from_revision_zero_and_reconciles() {
    let pg = Pg::start();
    let (mut a, _, old) = serving_one(&pg, "gw-r", "Old");
    let out_dir = tempfile::tempdir().expect("tempdir");
    let file = out_dir.path().join("b.jsonl");
    assert_eq!(a.cli(&["backup", file.to_str().expect("utf-8")]).code, 0);
    let backup = std::fs::read_to_string(&file).expect("backup");
    assert!(
        backup.contains("\"name\":\"Old\""),
        "office groups are backed up"
    );
    let admin_key = a.admin_key();
    a.stop();
    pg.query(&format!(
        "DELETE FROM fleetgroups.office_groups WHERE id = '{old}'"
    ));
    let new = office_group(&pg, "New");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = cli_in(
        &dir.path().join("data"),
        &["restore", file.to_str().expect("utf-8")],
        &[],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let b = TestServer::with_dir(dir, options(&pg, "gw-r"));
    let tb = b.login("admin", &admin_key);
    converged(&pg, &b, &tb, "gw-r");
    let ids: Vec<String> = served(&b, &tb).into_keys().collect();
    assert_eq!(ids, vec![new.clone()]);
    assert_each_change_once(&feed(&b, &tb));
    let top = pg
        .value("SELECT max(revision) FROM fleetgroups.office_groups")
        .expect("revision");
    poll_until(Duration::from_secs(30), "the cursor", || {
        (b.metric("fleetgroups_office_cursor")? >= top.parse::<f64>().ok()?).then_some(())
    });
}

/// Without a centre: an office group a restore brings (a backup keeps office groups
/// like any other) is served read-only in every read, `check` finds the store sound,
/// and `check-config` shows `replication.pull_secs`.
#[test]
fn an_office_group_from_a_backup_is_served_read_only_without_a_centre() {
    let mut a = TestServer::start();
    let ta = a.admin_token();
    a.req("POST", "/api/groups")
        .bearer(&ta)
        .json(&json!({"name": "Local", "devices": ["d1"]}))
        .send()
        .expect_ok(201);
    let shown = a.cli(&["check-config"]);
    assert!(shown.stdout.contains("pull_secs = 60"), "{}", shown.stdout);
    let out_dir = tempfile::tempdir().expect("tempdir");
    let file = out_dir.path().join("b.jsonl");
    assert_eq!(a.cli(&["backup", file.to_str().expect("utf-8")]).code, 0);
    let admin_key = a.admin_key();
    a.stop();
    // ofc-7 is group number 2^63 + 7 inside, as a pull would have stored it.
    let text = std::fs::read_to_string(&file).expect("backup");
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let end: Value = serde_json::from_str(&lines.pop().expect("end")).expect("json");
    let records = end["records"].as_u64().expect("records");
    lines.push(
        json!({"type": "group", "account": "default", "id": (1u64 << 63) + 7, "revision": 1,
               "creation": 1_796_000_000_000i64, "lastModified": 1_796_000_000_000i64,
               "name": "Office trucks", "description": null, "devices": ["d1"]})
        .to_string(),
    );
    lines.push(json!({"type": "end", "records": records + 1}).to_string());
    std::fs::write(&file, lines.join("\n") + "\n").expect("write");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = cli_in(
        &dir.path().join("data"),
        &["restore", file.to_str().expect("utf-8")],
        &[],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let mut b = TestServer::with_dir(dir, Options::default());
    let tb = b.login("admin", &admin_key);
    let g = b
        .req("GET", "/api/groups/ofc-7")
        .bearer(&tb)
        .send()
        .expect_ok(200);
    assert_eq!(
        (&g["name"], &g["origin"]),
        (&json!("Office trucks"), &json!("office"))
    );
    let listed = b
        .req("GET", "/api/groups")
        .bearer(&tb)
        .send()
        .expect_ok(200);
    let ids: Vec<(&str, &str)> = listed["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| {
            (
                g["id"].as_str().unwrap_or(""),
                g["origin"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(ids, [("grp-1", "local"), ("ofc-7", "office")]);
    let holders = b
        .req("GET", "/api/devices/d1/groups")
        .bearer(&tb)
        .send()
        .expect_ok(200);
    assert_eq!(
        holders["groups"].as_array().map(Vec::len),
        Some(2),
        "{holders}"
    );
    for (method, path) in [
        ("DELETE", "/api/groups/ofc-7"),
        ("DELETE", "/api/groups/ofc-7/devices/d1"),
    ] {
        let r = b.req(method, path).bearer(&tb).send();
        assert_eq!(r.status, 403, "{method} {path}");
        assert_eq!(r.json()["errorCode"], "office_group_read_only");
    }
    // A local group may not take its name either.
    let r = b
        .req("POST", "/api/groups")
        .bearer(&tb)
        .json(&json!({"name": "office TRUCKS"}))
        .send();
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(b.metric("fleetgroups_office_groups"), Some(1.0));
    assert_eq!(b.metric("fleetgroups_office_cursor"), Some(0.0));
    b.stop();
    let checked = cli_in(&b.data_dir(), &["check"], &[]);
    assert_eq!(checked.code, 0, "{}{}", checked.stdout, checked.stderr);
}
