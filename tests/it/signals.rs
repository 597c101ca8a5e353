//! Signals other than SIGTERM/SIGINT (docs/operations/running.md "Signals"): SIGHUP re-reads the
//! configuration file and applies the log level (the TLS pair: `src/server/tls.rs`), names the
//! changed settings that need a restart, keeps everything when the file is broken, and
//! never stops the server; SIGUSR1, SIGUSR2 and SIGALRM are logged and ignored.

use crate::support::{Options, TestServer};

/// Writes the configuration file, sends SIGHUP and waits for the reload's last line: a
/// reload changes nothing else a test could observe (a log level, or nothing at all
/// when it is refused), and that line is what these tests check.
fn reload_with(server: &TestServer, text: &str, done: &str) {
    std::fs::write(server.config_path(), text).unwrap();
    let before = server.log().matches(done).count();
    server.signal("HUP");
    server.wait_for_log_count(done, before + 1);
}

fn healthz(server: &TestServer, id: &str) {
    let r = server
        .req("GET", "/healthz")
        .header("X-Request-Id", id)
        .send();
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn sighup_changes_the_log_level_and_keeps_serving() {
    let mut server = TestServer::with(Options::default().config("[log]\nlevel = \"info\"\n"));
    // A request's line is queued before its answer goes out, so the level change
    // below cannot filter this one: no need to wait for it to be written.
    healthz(&server, "it-hup-loud-1");

    // At warn the request line (info) is not written.
    reload_with(
        &server,
        "[log]\nlevel = \"warn\"\n",
        "log level changes from info to warn",
    );
    healthz(&server, "it-hup-quiet");
    // Back to info; its line shows the reload is done before the next request goes out.
    reload_with(
        &server,
        "[log]\nlevel = \"info\"\n",
        "log level is now info",
    );
    healthz(&server, "it-hup-loud-2");
    assert!(server.is_running());
    // The whole log, once the server has exited.
    let log = server.stop_for_log();
    assert!(
        log.contains("request_id=it-hup-loud-1") && log.contains("request_id=it-hup-loud-2"),
        "{log}"
    );
    assert!(
        !log.contains("it-hup-quiet"),
        "a request was logged at warn:\n{log}"
    );
}

#[test]
fn sighup_with_a_broken_file_or_restart_only_changes_keeps_the_running_settings() {
    let mut server = TestServer::with(Options::default().config("shutdown_grace_secs = 10\n"));
    let addr = server.addr;

    reload_with(
        &server,
        "[limits\nbroken",
        "reload failed, keeping the running settings",
    );
    healthz(&server, "it-hup-broken");
    reload_with(
        &server,
        "[log]\nlevel = \"shout\"\n",
        "reload failed, keeping the running settings",
    );
    assert!(server.log().contains("log.level"), "{}", server.log());

    // Settings that need a restart are named in one line and left as they are: the
    // server still listens where it did.
    reload_with(
        &server,
        "listen = \"127.0.0.1:1\"\nshutdown_grace_secs = 3\n[limits]\nmax_body_bytes = 4096\n",
        "reload done",
    );
    let line = server
        .log()
        .lines()
        .find(|l| l.contains("only take effect after a restart"))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no restart-needed line:\n{}", server.log()));
    for key in ["limits.max_body_bytes", "shutdown_grace_secs"] {
        assert!(line.contains(key), "{line}");
    }
    // `--listen` on the command line wins over the file, so listen did not change.
    assert!(!line.contains("listen"), "{line}");
    assert_eq!(server.addr, addr);
    healthz(&server, "it-hup-after");
    assert_eq!(server.stop().code(), Some(0), "{}", server.log());
}

#[test]
fn sigusr1_sigusr2_and_sigalrm_are_ignored() {
    let mut server = TestServer::start();
    // Each delivered (no longer pending), and the server still answers: without a
    // handler, these signals' default action would have ended it.
    for sig in ["USR1", "USR2", "ALRM"] {
        server.signal(sig);
        server.wait_signal_delivered(sig);
        healthz(&server, &format!("it-sig-{sig}"));
    }
    // Again: still alive.
    for sig in ["USR1", "USR2", "ALRM", "HUP"] {
        server.signal(sig);
        server.wait_signal_delivered(sig);
    }
    healthz(&server, "it-sig-again");
    assert!(server.is_running());
    // Each is logged once at info, the first time: the whole log, once the server has
    // exited.
    let log = server.stop_for_log();
    for sig in ["USR1", "USR2", "ALRM"] {
        assert_eq!(
            log.matches(&format!("SIG{sig} received; ignored")).count(),
            1,
            "{log}"
        );
    }
}
