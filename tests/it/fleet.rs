//! Replication that a fleet can run (README "Many gateways"), against a real
//! PostgreSQL and a real PgBouncer the tests start themselves: more gateways than the
//! centre has connection slots all converge while a reader role keeps connecting; the
//! same through PgBouncer in transaction mode (no named prepared statements, no session
//! state); a persistent apply error backs off and is logged once; an idle centre
//! restart is noticed without a write; heartbeats, the status view, retention of
//! central changes; decommission then return, and rename, leave no duplicates.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::pg::{Bouncer, Pg};
use crate::replication::{caught_up, central_changes, feed_seqs, high, store_id};
use crate::support::{poll_until, Options, TestServer};

/// One gateway of a fleet: its server, its id, a token.
struct Gw {
    server: TestServer,
    id: String,
    token: String,
}

fn options(url: &str, id: &str, extra: &[(&str, &str)]) -> Options {
    let mut o = Options::default()
        .env("FLEETGROUPS_REPLICATION_POSTGRES_URL", url)
        .env("FLEETGROUPS_REPLICATION_GATEWAY_ID", id);
    for (k, v) in extra {
        o = o.env(k, v);
    }
    o
}

/// `n` gateways started at once against `url`, each with `groups` groups (each holding
/// the device "shared"), connections closed after 1 s of quiet.
fn fleet(url: &str, n: usize, groups: usize) -> Vec<Gw> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                s.spawn(move || {
                    let id = format!("gw-{i:02}");
                    let server = TestServer::with(options(
                        url,
                        &id,
                        &[("FLEETGROUPS_REPLICATION_IDLE_DISCONNECT_SECS", "1")],
                    ));
                    let token = server.login("admin", &server.admin_key());
                    for j in 0..groups {
                        server.client(&token).create(&json!({
                            "name": format!("g{j}"),
                            "devices": [format!("{id}-dev{j}"), "shared"],
                        }));
                    }
                    Gw { server, id, token }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a gateway started"))
            .collect()
    })
}

/// Roles as the README's sizing rule has them: the gateways' role capped below the
/// slots left after the superuser reserve, so a reader always finds one.
fn roles(pg: &Pg, fleet_limit: u32) {
    pg.query(&format!(
        "CREATE ROLE fleet LOGIN CONNECTION LIMIT {fleet_limit};
         GRANT CREATE ON DATABASE postgres TO fleet;
         CREATE ROLE reader LOGIN;"
    ));
}

/// What a reader saw while the fleet converged: connects, the slowest one, failures,
/// and the most fleet connections it counted at once.
#[derive(Debug, Default)]
struct ReaderLog {
    connects: u32,
    slowest: Duration,
    failures: Vec<String>,
    peak_fleet: u32,
}

/// Runs `converge` while a reader connects over and over.
fn with_reader(pg: &Pg, converge: impl FnOnce()) -> ReaderLog {
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut log = ReaderLog::default();
            while !done.load(Ordering::SeqCst) {
                match pg.run_as(
                    "reader",
                    "SELECT count(*) FROM pg_stat_activity WHERE usename = 'fleet'",
                ) {
                    Ok((took, n)) => {
                        log.connects += 1;
                        log.slowest = log.slowest.max(took);
                        let n = n.and_then(|n| n.parse().ok()).unwrap_or(0);
                        log.peak_fleet = log.peak_fleet.max(n);
                    }
                    Err(e) => log.failures.push(e),
                }
            }
            log
        });
        converge();
        done.store(true, Ordering::SeqCst);
        reader.join().expect("reader")
    })
}

fn assert_fleet_converged(pg: &Pg, gws: &[Gw], groups: usize) {
    for g in gws {
        caught_up(
            pg,
            &g.id,
            high(&g.server, &g.token),
            Duration::from_secs(120),
        );
    }
    assert_eq!(
        pg.value("SELECT count(*) FROM fleetgroups.groups WHERE devices @> ARRAY['shared']"),
        Some((gws.len() * groups).to_string())
    );
}

#[test]
fn a_fleet_larger_than_the_connection_slots_converges_and_readers_keep_a_slot() {
    // 20 slots, 3 reserved for superusers; the fleet's role may hold 8 of them.
    let pg = Pg::start_limited(20);
    roles(&pg, 8);
    let url = pg.url_as("fleet");
    let mut gws = Vec::new();
    let reader = with_reader(&pg, || {
        gws = fleet(&url, 40, 3);
        assert_fleet_converged(&pg, &gws, 3);
    });
    assert!(
        reader.failures.is_empty(),
        "the reader was locked out: {reader:?}"
    );
    assert!(reader.connects > 0, "{reader:?}");
    assert!(reader.peak_fleet <= 8, "{reader:?}");
    // The fleet really had to take turns, and said so once per gateway at most.
    let refused: f64 = gws
        .iter()
        .filter_map(|g| {
            g.server
                .metric("fleetgroups_replication_errors_total{kind=\"refused\"}")
        })
        .sum();
    assert!(refused > 0.0, "no gateway was ever refused a slot");
    for g in &gws {
        let log = g.server.log();
        assert!(
            log.matches("no connection slot").count() <= 1,
            "{}: {log}",
            g.id
        );
        assert!(
            !log.contains("NOTICE") && !log.contains("skipping"),
            "{log}"
        );
    }
    // Idle, the fleet gives its slots back.
    poll_until(
        Duration::from_secs(30),
        "the fleet's connections closed",
        || {
            (pg.value("SELECT count(*) FROM pg_stat_activity WHERE usename = 'fleet'")
                == Some("0".into()))
            .then_some(())
        },
    );
}

#[test]
fn the_fleet_converges_through_pgbouncer_in_transaction_mode() {
    let pg = Pg::start_limited(20);
    roles(&pg, 8);
    let bouncer = Bouncer::start(&pg, 4);
    let url = bouncer.url("fleet");
    let mut gws = Vec::new();
    let reader = with_reader(&pg, || {
        gws = fleet(&url, 20, 3);
        assert_fleet_converged(&pg, &gws, 3);
    });
    assert!(reader.failures.is_empty(), "{reader:?}");
    assert!(reader.peak_fleet <= 4, "more than the pool: {reader:?}");
    // Unnamed statements only: nothing collided in the shared server connections.
    let server_log = pg.log();
    assert!(!server_log.contains("prepared statement"), "{server_log}");
    for g in &gws {
        let log = g.server.log();
        assert!(!log.contains("prepared statement"), "{}: {log}", g.id);
        assert_eq!(
            g.server
                .metric("fleetgroups_replication_errors_total{kind=\"apply\"}"),
            Some(0.0),
            "{}: {log}",
            g.id
        );
    }
    // A second round of writes through the pool, after the gateways went idle.
    for g in gws.iter().take(5) {
        g.server
            .client(&g.token)
            .create(&json!({"name": "later", "devices": ["later-dev"]}));
    }
    assert_fleet_converged(&pg, &gws, 3);
    assert_eq!(
        pg.value("SELECT count(*) FROM fleetgroups.groups WHERE name = 'later'"),
        Some("5".into())
    );
}

#[test]
fn a_persistent_apply_error_backs_off_and_is_logged_once() {
    let pg = Pg::start();
    let g = TestServer::with(options(&pg.url(), "gw-p", &[]));
    let token = g.login("admin", &g.admin_key());
    g.client(&token)
        .create(&json!({"name": "fine", "devices": []}));
    caught_up(&pg, "gw-p", high(&g, &token), Duration::from_secs(30));
    // The office adds a rule this gateway's next change breaks: every retry fails the
    // same way until the rule goes.
    pg.query(
        "ALTER TABLE fleetgroups.groups ADD CONSTRAINT no_poison CHECK (name NOT LIKE 'poison%')",
    );
    g.client(&token)
        .create(&json!({"name": "poison-1", "devices": []}));
    let errors = || {
        g.metric("fleetgroups_replication_errors_total{kind=\"constraint\"}")
            .unwrap_or(0.0)
    };
    poll_until(Duration::from_secs(30), "a constraint error", || {
        (errors() >= 1.0).then_some(())
    });
    // A measurement window, not a synchronisation: how many attempts 20 s hold.
    // Exponential backoff with full jitter from 0.5 s up to 30 s allows about 6
    // (the ceilings 0.5+1+2+4+8 sum to 15.5 s); a hot loop would make hundreds.
    let first = errors();
    let window = Instant::now();
    std::thread::sleep(Duration::from_secs(20));
    let attempts = errors() - first;
    assert!(
        attempts <= 10.0,
        "{attempts} attempts in {:?}: a hot loop",
        window.elapsed()
    );
    let log = g.log();
    assert_eq!(
        log.matches("refuses this gateway's changes").count(),
        1,
        "{log}"
    );
    assert_eq!(log.matches("replication: connected").count(), 1, "{log}");
    assert!(log.contains("no_poison"), "{log}");
    // Fixed centrally: the gateway gets in on its own and says so once.
    pg.query("ALTER TABLE fleetgroups.groups DROP CONSTRAINT no_poison");
    caught_up(&pg, "gw-p", high(&g, &token), Duration::from_secs(60));
    assert_eq!(
        pg.value("SELECT count(*) FROM fleetgroups.groups WHERE name = 'poison-1'"),
        Some("1".into())
    );
    poll_until(Duration::from_secs(10), "a recovery line", || {
        (g.log().matches("replication: connected").count() == 2).then_some(())
    });
}

#[test]
fn an_idle_centre_restart_is_noticed_without_a_write() {
    let pg = Pg::start();
    // Connection kept open (idle_disconnect_secs = 0): the restart cuts it.
    let g = TestServer::with(options(
        &pg.url(),
        "gw-r",
        &[("FLEETGROUPS_REPLICATION_IDLE_DISCONNECT_SECS", "0")],
    ));
    poll_until(Duration::from_secs(30), "connected", || {
        g.log().contains("replication: connected").then_some(())
    });
    pg.stop_fast();
    pg.start_again();
    // Noticed at once (the connection's end), not at the next local write.
    poll_until(Duration::from_secs(15), "the loss noticed", || {
        g.log()
            .contains("replication: lost the central database")
            .then_some(())
    });
    poll_until(Duration::from_secs(45), "reconnected", || {
        (g.log().matches("replication: connected").count() == 2).then_some(())
    });
    let log = g.log();
    assert_eq!(log.matches("lost the central database").count(), 1, "{log}");
}

#[test]
fn heartbeats_the_status_view_and_retention_of_central_changes() {
    let pg = Pg::start();
    let mut g = TestServer::with(options(
        &pg.url(),
        "gw-h",
        &[
            ("FLEETGROUPS_REPLICATION_HEARTBEAT_SECS", "1"),
            ("FLEETGROUPS_REPLICATION_IDLE_DISCONNECT_SECS", "0"),
        ],
    ));
    let token = g.login("admin", &g.admin_key());
    g.client(&token)
        .create(&json!({"name": "a", "devices": []}));
    let head = high(&g, &token);
    caught_up(&pg, "gw-h", head, Duration::from_secs(30));
    // The heartbeat row and the view: seen just now, nothing behind, not stale.
    let row = poll_until(Duration::from_secs(10), "a heartbeat", || {
        pg.query(
            "SELECT head_seq::text, version, revision IS NOT NULL, behind::text, stale::text,
                    (seen_ago < interval '5 seconds')::text
               FROM fleetgroups.gateway_status WHERE gateway_id = 'gw-h' AND version IS NOT NULL",
        )
        .into_iter()
        .next()
    });
    assert_eq!(
        row[0].as_deref(),
        Some(head.to_string().as_str()),
        "{row:?}"
    );
    assert_eq!(row[1].as_deref(), Some(env!("CARGO_PKG_VERSION")));
    assert_eq!(row[2].as_deref(), Some("t"));
    assert_eq!(row[3].as_deref(), Some("0"));
    assert_eq!(row[4].as_deref(), Some("false"));
    assert_eq!(row[5].as_deref(), Some("true"));
    // Named in pg_stat_activity.
    assert_eq!(
        pg.value(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'fleetgroups/gw-h'"
        ),
        Some("1".into())
    );
    // A gateway that stops reporting turns stale after three heartbeats.
    g.stop();
    poll_until(Duration::from_secs(20), "stale", || {
        (pg.value("SELECT stale::text FROM fleetgroups.gateway_status WHERE gateway_id = 'gw-h'")
            == Some("true".into()))
        .then_some(())
    });
    // Retention: 7,000 changes from 400 days ago (more than one prune batch) go, the
    // recent ones stay; one gateway prunes, under the lock.
    pg.query(
        "INSERT INTO fleetgroups.changes
             SELECT 'gw-old', 'store-old', n, now() - interval '400 days', 'created',
                    'default', 'grp-' || n, 'admin'
               FROM generate_series(1, 7000) AS n;
         DELETE FROM fleetgroups.maintenance;",
    );
    g.restart_with(options(
        &pg.url(),
        "gw-h",
        &[("FLEETGROUPS_REPLICATION_CENTRAL_CHANGES_DAYS", "30")],
    ));
    poll_until(Duration::from_secs(30), "old changes pruned", || {
        (pg.value("SELECT count(*) FROM fleetgroups.changes WHERE gateway_id = 'gw-old'")
            == Some("0".into()))
        .then_some(())
    });
    assert_eq!(
        pg.value("SELECT count(*) FROM fleetgroups.changes WHERE gateway_id = 'gw-h'"),
        Some(head.to_string())
    );
    assert!(g.log().contains("pruned central changes"), "{}", g.log());
}

#[test]
fn decommission_then_return_and_rename_leave_no_duplicates() {
    let pg = Pg::start();
    let mut g = TestServer::with(options(&pg.url(), "gw-d", &[]));
    let mut token = g.login("admin", &g.admin_key());
    for i in 0..4 {
        g.client(&token)
            .create(&json!({"name": format!("d{i}"), "devices": ["dev-d"]}));
    }
    caught_up(&pg, "gw-d", high(&g, &token), Duration::from_secs(30));
    let sid = store_id(&g, &token);
    // Decommission, keeping the audit trail.
    g.stop();
    pg.query("SELECT fleetgroups.decommission('gw-d', keep_audit => true)");
    assert_eq!(
        pg.value("SELECT count(*) FROM fleetgroups.groups WHERE gateway_id = 'gw-d'"),
        Some("0".into())
    );
    assert_eq!(central_changes(&pg, "gw-d", &sid).1, 4);
    // It returns: the re-stream meets its own audit rows and goes through, once.
    g.restart();
    token = g.login("admin", &g.admin_key());
    caught_up(&pg, "gw-d", high(&g, &token), Duration::from_secs(30));
    let (central, rows) = central_changes(&pg, "gw-d", &sid);
    assert_eq!(rows, central.len(), "a change twice");
    assert_eq!(central, feed_seqs(&g, std::slice::from_ref(&token)));
    assert_eq!(
        pg.value("SELECT count(*) FROM fleetgroups.groups WHERE gateway_id = 'gw-d'"),
        Some("4".into())
    );
    assert_eq!(
        g.metric("fleetgroups_replication_errors_total{kind=\"constraint\"}"),
        Some(0.0)
    );
    // Rename: stop, rename centrally, start under the new id; it continues (no resync)
    // and nothing is left under the old id.
    g.stop();
    pg.query("SELECT fleetgroups.rename_gateway('gw-d', 'gw-e')");
    g.restart_with(options(&pg.url(), "gw-e", &[]));
    token = g.login("admin", &g.admin_key());
    g.client(&token)
        .create(&json!({"name": "after-rename", "devices": ["dev-d"]}));
    caught_up(&pg, "gw-e", high(&g, &token), Duration::from_secs(30));
    assert_eq!(g.metric("fleetgroups_replication_resyncs_total"), Some(0.0));
    assert_eq!(
        pg.value("SELECT count(*) FROM fleetgroups.gateways WHERE gateway_id = 'gw-d'"),
        Some("0".into())
    );
    assert_eq!(
        pg.value("SELECT count(*) FROM fleetgroups.groups WHERE devices @> ARRAY['dev-d']"),
        Some("5".into()),
        "fleet-wide, each group once"
    );
    assert_eq!(
        pg.value("SELECT count(*) FROM fleetgroups.changes WHERE gateway_id <> 'gw-e'"),
        Some("0".into())
    );
    // Rename the other way round: the gateway already streamed itself in under the
    // new id; renaming then drops the old rows.
    g.stop();
    g.restart_with(options(&pg.url(), "gw-f", &[]));
    token = g.login("admin", &g.admin_key());
    caught_up(&pg, "gw-f", high(&g, &token), Duration::from_secs(30));
    pg.query("SELECT fleetgroups.rename_gateway('gw-e', 'gw-f')");
    assert_eq!(
        pg.value("SELECT count(*) FROM fleetgroups.groups WHERE devices @> ARRAY['dev-d']"),
        Some("5".into())
    );
    let (central, rows) = central_changes(&pg, "gw-f", &sid);
    assert_eq!(rows, central.len());
    // Decommission dropping the audit trail too.
    g.stop();
    pg.query("SELECT fleetgroups.decommission('gw-f', keep_audit => false)");
    assert_eq!(
        pg.value("SELECT count(*) FROM fleetgroups.changes"),
        Some("0".into())
    );
}
