//! How much gets logged (issue 12 item 3): `log.access` (`all`, `errors`, `off`)
//! decides which requests get their line, and `log.level` takes `EnvFilter`
//! directives (`info,fleetgroups::access=off`) at start and on SIGHUP; a bad directive
//! is a configuration error naming `log.level`.
//!
//! Synchronisation without sleeps: which lines are written is what these tests are
//! about, so they read the log whole, once the server has exited (`stop_for_log`):
//! then every line it wrote is there. A SIGHUP reload changes nothing but what is
//! logged, so the reload's own last line is what shows it is done.

use crate::support::{run_expecting_exit, Options, TestServer};

fn get(server: &TestServer, path: &str, id: &str) -> u16 {
    server
        .req("GET", path)
        .header("X-Request-Id", id)
        .send()
        .status
}

#[test]
fn log_access_all_errors_or_off_picks_the_request_lines() {
    for (mode, ok_logged, error_logged) in [
        ("all", true, true),
        ("errors", false, true),
        ("off", false, false),
    ] {
        let mut server = TestServer::with(Options::default().env("FLEETGROUPS_LOG_ACCESS", mode));
        let ok = format!("it-access-{mode}-ok");
        let missing = format!("it-access-{mode}-404");
        let refused = format!("it-access-{mode}-401");
        assert_eq!(get(&server, "/healthz", &ok), 200);
        assert_eq!(get(&server, "/nope", &missing), 404);
        assert_eq!(get(&server, "/api/groups", &refused), 401);
        let log = server.stop_for_log();
        assert_eq!(log.contains(&ok), ok_logged, "{mode}: {log}");
        assert_eq!(log.contains(&missing), error_logged, "{mode}: {log}");
        assert_eq!(log.contains(&refused), error_logged, "{mode}: {log}");
        // Only the request line is affected: the start-up lines are all there.
        assert!(log.contains("first start: created user admin"), "{log}");
        if error_logged {
            let line = log.lines().find(|l| l.contains(&missing)).unwrap();
            assert!(
                line.contains("status=404") && line.contains("path=/nope"),
                "{line}"
            );
        }
    }
}

#[test]
fn log_level_directives_filter_by_target() {
    // Everything at info except the request lines.
    let mut server = TestServer::with(
        Options::default().env("FLEETGROUPS_LOG_LEVEL", "info,fleetgroups::access=off"),
    );
    assert_eq!(get(&server, "/healthz", "it-directive-off"), 200);
    let log = server.stop_for_log();
    assert!(!log.contains("it-directive-off"), "{log}");
    assert!(log.contains("first start: created user admin"), "{log}");

    // Warnings only, except the request lines and the start-up line with the address.
    let mut server = TestServer::with(
        Options::default()
            .config("[log]\nlevel = \"warn,fleetgroups::server=info,fleetgroups::access=info\"\n"),
    );
    assert_eq!(get(&server, "/healthz", "it-directive-1"), 200);
    assert_eq!(get(&server, "/healthz", "it-directive-2"), 200);
    let log = server.stop_for_log();
    assert!(log.contains("request_id=it-directive-1"), "{log}");
    assert!(log.contains("request_id=it-directive-2"), "{log}");
    assert!(log.contains("listening on http://"), "{log}");
    assert!(!log.contains("first start: created user admin"), "{log}");
    assert!(!log.contains("admin socket ready"), "{log}");
}

#[test]
fn sighup_applies_directives_and_refuses_a_bad_one() {
    let mut server = TestServer::with(Options::default().config("[log]\nlevel = \"info\"\n"));
    let file = server.config_path();
    let reload = |text: &str, done: &str| {
        std::fs::write(&file, text).unwrap();
        let before = server.log().matches(done).count();
        server.signal("HUP");
        server.wait_for_log_count(done, before + 1)
    };
    assert_eq!(get(&server, "/healthz", "it-hup-directive-1"), 200);
    reload(
        "[log]\nlevel = \"info,fleetgroups::access=off\"\n",
        "log level is now info,fleetgroups::access=off",
    );
    assert_eq!(get(&server, "/healthz", "it-hup-directive-quiet"), 200);
    // A bad directive: the reload fails, names the key, and the running level stays.
    let log = reload(
        "[log]\nlevel = \"info,fleetgroups=loud\"\n",
        "reload failed, keeping the running settings",
    );
    let failed = log.lines().rfind(|l| l.contains("reload failed")).unwrap();
    assert!(failed.contains("log.level"), "{failed}");
    assert_eq!(
        get(&server, "/healthz", "it-hup-directive-still-quiet"),
        200
    );
    reload("[log]\nlevel = \"info\"\n", "log level is now info\n");
    assert_eq!(get(&server, "/healthz", "it-hup-directive-2"), 200);
    let log = server.stop_for_log();
    assert!(log.contains("request_id=it-hup-directive-1"), "{log}");
    assert!(log.contains("request_id=it-hup-directive-2"), "{log}");
    assert!(!log.contains("it-hup-directive-quiet"), "{log}");
    assert!(!log.contains("it-hup-directive-still-quiet"), "{log}");
}

#[test]
fn a_bad_directive_stops_the_start_naming_log_level() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["info,fleetgroups=loud", "shout", "info,fleetgroups"] {
        let out = run_expecting_exit(
            dir.path(),
            &["--data-dir", "data", "serve", "--listen", "127.0.0.1:0"],
            &[("FLEETGROUPS_LOG_LEVEL", bad)],
        );
        assert_eq!(out.code, 2, "{bad}: {out:?}");
        assert!(out.stderr.contains("log.level:"), "{bad}: {}", out.stderr);
        let out = run_expecting_exit(
            dir.path(),
            &["--data-dir", "data", "check-config"],
            &[("FLEETGROUPS_LOG_ACCESS", "sometimes")],
        );
        assert_eq!(out.code, 2, "{out:?}");
        assert!(out.stderr.contains("log.access"), "{}", out.stderr);
    }
}
