//! Signals other than SIGTERM/SIGINT (operations.md "Signals"): SIGHUP re-reads the
//! configuration file and applies the log level (the TLS pair: `tls.rs`), names the
//! changed settings that need a restart, keeps everything when the file is broken, and
//! never stops the server; SIGUSR1, SIGUSR2 and SIGALRM are logged and ignored.

use std::path::PathBuf;

use crate::support::{Options, TestServer};

/// The configuration file `TestServer` passes with `--config`.
fn config_file(server: &TestServer) -> PathBuf {
    server.dir.path().join("test-config.toml")
}

/// Writes the configuration file, sends SIGHUP and waits for the reload's last line.
fn reload_with(server: &TestServer, text: &str, done: &str) {
    std::fs::write(config_file(server), text).unwrap();
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
    healthz(&server, "it-hup-loud-1");
    server.wait_for_log("request_id=it-hup-loud-1");

    // At warn the request line (info) is not written.
    reload_with(
        &server,
        "[log]\nlevel = \"warn\"\n",
        "log level changes from info to warn",
    );
    healthz(&server, "it-hup-quiet");
    // Back to info: the line that says so is the marker that everything before it, the
    // request at warn included, has been logged or filtered out.
    reload_with(
        &server,
        "[log]\nlevel = \"info\"\n",
        "log level is now info",
    );
    healthz(&server, "it-hup-loud-2");
    server.wait_for_log("request_id=it-hup-loud-2");
    let log = server.log();
    assert!(
        !log.contains("it-hup-quiet"),
        "a request was logged at warn:\n{log}"
    );
    assert!(server.is_running());
    assert_eq!(server.stop().code(), Some(0), "{}", server.log());
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
    for sig in ["USR1", "USR2", "ALRM"] {
        server.signal(sig);
        server.wait_for_log(&format!("SIG{sig} received; ignored"));
        healthz(&server, &format!("it-sig-{sig}"));
    }
    // Again: still alive, and the first-time line is not repeated at info.
    for sig in ["USR1", "USR2", "ALRM", "HUP"] {
        server.signal(sig);
    }
    server.wait_for_log_count("SIGHUP received: reloading", 1);
    healthz(&server, "it-sig-again");
    assert_eq!(server.log().matches("SIGUSR1 received; ignored").count(), 1);
    assert!(server.is_running());
    assert_eq!(server.stop().code(), Some(0), "{}", server.log());
}
