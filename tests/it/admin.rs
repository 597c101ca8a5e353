//! The admin socket: `user …` commands reach a running server through it, take effect
//! for the very next HTTP request, print exactly what they print with the server
//! stopped, and the socket only serves the server's own uid.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{cli_in, CliOutput, Options, TestServer, BIN};

fn ok(out: &CliOutput) -> &CliOutput {
    assert_eq!(
        out.code, 0,
        "stdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    out
}

fn key_of(out: &CliOutput) -> String {
    let key = ok(out).stdout.trim().to_string();
    assert!(key.starts_with("fgk_") && !key.contains('\n'), "{out:?}");
    key
}

fn list_groups(server: &TestServer, token: &str) -> u16 {
    server.req("GET", "/api/groups").bearer(token).send().status
}

#[test]
fn changes_through_the_socket_apply_to_the_next_request() {
    let mut server = TestServer::start();
    let sock = server.data_dir().join("admin.sock");
    let mode = std::fs::metadata(&sock)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let key = key_of(&server.cli(&["user", "add", "ops"]));
    // It went through the socket: the running server holds the store's lock, so no
    // other process could have added the user, and its own tables know ops at once.
    let token = server.login("ops", &key);
    assert_eq!(list_groups(&server, &token), 200);

    let new_key = key_of(&server.cli(&["user", "rotate-key", "ops"]));
    assert_ne!(new_key, key);
    assert_eq!(
        list_groups(&server, &token),
        401,
        "old token must die at once"
    );
    let r = server
        .req("POST", "/api/Auth/Token")
        .json(&json!({"userName": "ops", "apiKey": key}))
        .send();
    r.expect_error(401, "invalid_credentials");
    let token = server.login("ops", &new_key);

    ok(&server.cli(&["user", "set", "ops", "--role", "read"]));
    let r = server
        .req("POST", "/api/groups")
        .bearer(&token)
        .json(&json!({"name": "x"}))
        .send();
    r.expect_error(403, "forbidden");
    assert_eq!(
        list_groups(&server, &token),
        200,
        "a role change keeps tokens"
    );

    ok(&server.cli(&["user", "set", "ops", "--disabled", "true"]));
    assert_eq!(
        list_groups(&server, &token),
        401,
        "disabling revokes tokens"
    );
    ok(&server.cli(&["user", "set", "ops", "--disabled", "false"]));
    let token = server.login("ops", &new_key);
    assert_eq!(list_groups(&server, &token), 200);

    ok(&server.cli(&["user", "remove", "ops"]));
    assert_eq!(list_groups(&server, &token), 401, "removal revokes tokens");

    // The whole log, once the server has exited: the socket logs each command with its
    // subject and code, and never a secret (no line can still be on its way).
    let log = server.stop_for_log();
    assert!(
        log.contains("command=\"user add\" user=ops code=0"),
        "the command is logged:\n{log}"
    );
    for secret in [&key, &new_key, &token] {
        assert!(!log.contains(secret.as_str()), "a secret reached the log");
    }
}

/// Replaces API keys (the only varying output) and the KEY_CREATED column.
fn normalise(out: &CliOutput) -> (i32, String, String) {
    let scrub = |s: &str| {
        s.lines()
            .map(|l| {
                if l.starts_with("fgk_") {
                    return "<key>".to_string();
                }
                // `user list` rows: keep every column but KEY_CREATED (the 8th).
                let cols: Vec<&str> = l.split_whitespace().collect();
                if cols.len() == 9 && !l.starts_with("fleetgroups:") {
                    let mut c = cols.clone();
                    c[7] = "<time>";
                    return c.join(" ");
                }
                l.to_string()
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    (out.code, scrub(&out.stdout), scrub(&out.stderr))
}

#[test]
fn output_is_the_same_with_the_server_running_or_stopped() {
    let script: &[&[&str]] = &[
        &[
            "user",
            "add",
            "ci",
            "--account",
            "fleet",
            "--daily-limit",
            "9",
        ],
        &["user", "add", "ci"],
        &["user", "add", "bad name"],
        &[
            "user",
            "set",
            "ci",
            "--role",
            "read",
            "--daily-limit",
            "none",
        ],
        &["user", "set", "ghost", "--role", "read"],
        &["user", "rotate-key", "ci"],
        &["user", "rotate-key", "ghost"],
        &["user", "list"],
        &["user", "remove", "ci"],
        &["user", "remove", "ci"],
        &["user", "list"],
    ];
    let mut running = TestServer::start();
    let mut stopped = TestServer::start();
    assert!(stopped.stop().success(), "a clean stop exits 0");
    assert!(
        !stopped.data_dir().join("admin.sock").exists(),
        "a clean stop removes the socket"
    );
    let mut reached_server = 0;
    for args in script {
        let online = running.cli(args);
        let offline = stopped.cli(args);
        assert_eq!(
            normalise(&online),
            normalise(&offline),
            "fleetgroups {}",
            args.join(" ")
        );
        // Usage errors (exit 2) are caught by the CLI before any socket is opened.
        if online.code != 2 {
            reached_server += 1;
        }
    }
    // The running server really did the work (and the stopped one could not have): its
    // whole log, read once it has exited, has one line per command that reached it.
    let log = running.stop_for_log();
    assert_eq!(
        log.matches("admin command").count(),
        reached_server,
        "{log}"
    );
    assert!(reached_server >= 10, "the script must exercise the socket");
}

#[test]
fn a_locked_store_without_a_socket_is_explained() {
    let server = TestServer::start();
    std::fs::remove_file(server.data_dir().join("admin.sock")).expect("remove socket");
    let out = server.cli(&["user", "list"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("locked by a running fleetgroups")
            && out.stderr.contains("admin socket does not answer"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.is_empty());
    // The server is unharmed.
    assert_eq!(server.req("GET", "/healthz").send().status, 200);
}

/// Runs `serve` with the admin socket at `socket`; it must exit (refuse) within 30 s.
fn serve_once(
    cwd: &std::path::Path,
    data: &std::path::Path,
    socket: &std::path::Path,
) -> CliOutput {
    crate::support::cli(&[])
        .data_dir(data)
        .args(&["serve", "--listen", "127.0.0.1:0"])
        .cwd(cwd)
        .env("FLEETGROUPS_ADMIN_SOCKET", socket)
        .run_within(Duration::from_secs(30))
}

#[test]
fn stale_socket_is_replaced_but_a_live_one_or_a_file_is_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stale = dir.path().join("stale.sock");
    drop(UnixListener::bind(&stale).expect("bind"));
    assert!(stale.exists(), "a dropped listener leaves its file behind");
    let env = |p: &std::path::Path| {
        Options::default().env("FLEETGROUPS_ADMIN_SOCKET", p.to_str().expect("utf-8"))
    };
    let mut server = TestServer::with(env(&stale));
    // Replaced: the server answers on that path now (`user list` with the store locked
    // can only have gone through it).
    ok(&server.cli(&["user", "list"]));
    let log = server.stop_for_log();
    assert!(log.contains("removed a stale admin socket"), "{log}");
    assert!(
        !stale.exists(),
        "the server removes its socket when it stops"
    );

    // Someone answers on this one: the server must not steal it.
    let live = dir.path().join("live.sock");
    let _listener = UnixListener::bind(&live).expect("bind");
    let data = dir.path().join("data-live");
    let out = serve_once(dir.path(), &data, &live);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("another process answers"),
        "{}",
        out.stderr
    );
    assert!(live.exists());

    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"keep me").expect("write");
    let data = dir.path().join("data-file");
    let out = serve_once(dir.path(), &data, &file);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("is not a socket"), "{}", out.stderr);
    assert_eq!(std::fs::read(&file).expect("read"), b"keep me");
}

#[test]
fn protocol_errors_get_clear_answers() {
    let server = TestServer::start();
    let sock = server.data_dir().join("admin.sock");
    let ask = |line: &str| -> Value {
        let mut s = UnixStream::connect(&sock).expect("connect");
        s.write_all(line.as_bytes()).expect("write");
        let mut answer = String::new();
        BufReader::new(s).read_line(&mut answer).expect("read");
        serde_json::from_str(&answer).expect("json answer")
    };
    let a = ask("{\"v\":2,\"command\":{\"cmd\":\"user-list\"}}\n");
    assert_eq!(a["code"], 2);
    assert!(
        a["stderr"]
            .as_str()
            .unwrap()
            .contains("version 2 is not supported"),
        "{a}"
    );
    let a = ask("hello\n");
    assert_eq!(a["code"], 2);
    assert!(a["stderr"].as_str().unwrap().contains("bad request"), "{a}");
    let a = ask("{\"v\":1,\"command\":{\"cmd\":\"user-list\"}}\n");
    assert_eq!(a["code"], 0, "{a}");
    assert!(a["stdout"].as_str().unwrap().starts_with("NAME"), "{a}");
}

#[test]
fn other_users_are_refused_and_logged() {
    let uid = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m));
    assert_eq!(
        uid.ok(),
        Some(0),
        "this test connects as another uid with setpriv, which needs root (CI runs as root)"
    );
    // A world-reachable place for the socket and a copy of the binary, so uid 65534
    // can get to both wherever the checkout lives.
    let shared = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let bin = shared.path().join("fleetgroups");
    std::fs::copy(BIN, &bin).expect("copy binary");
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let sock = shared.path().join("admin.sock");
    let sock_s = sock.to_str().expect("utf-8");
    let mut server = TestServer::with(Options::default().env("FLEETGROUPS_ADMIN_SOCKET", sock_s));
    // Open the mode fence so only the uid check stands in the way.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let mut setpriv = std::process::Command::new("setpriv");
    crate::support::clear_fleetgroups_env(&mut setpriv);
    let out = setpriv
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bin)
        .args(["--data-dir", "/nonexistent", "user", "list"])
        .env("FLEETGROUPS_ADMIN_SOCKET", sock_s)
        .current_dir(shared.path())
        .output()
        .expect("setpriv");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("refused"), "{stderr}");
    assert!(out.stdout.is_empty());
    // The owner is still served.
    ok(&cli_in(
        &server.data_dir(),
        &["user", "list"],
        &server.options().env,
    ));
    // The refusal is logged with the peer's uid: read once the server has exited, when
    // no line can still be on its way.
    let log = server.stop_for_log();
    let refused = log
        .lines()
        .find(|l| l.contains("refused a connection from another user"))
        .unwrap_or_else(|| panic!("no refusal logged:\n{log}"));
    assert!(refused.contains("peer_uid=Some(65534)"), "{refused}");
}

/// A fake server listening on the admin socket as another user (uid 65534, `nobody`;
/// the listening thread drops to it with a per-thread setuid, so `SO_PEERCRED` names
/// it) that would answer every command with success and a made-up key. The CLI
/// refuses it before sending anything: `user rotate-key` and `backup` exit 1 naming
/// the uid that answered and the data directory's owner, print no key, write no file,
/// and the old key still works.
#[test]
fn the_cli_refuses_an_admin_socket_answered_by_another_user() {
    assert_eq!(
        rustix::process::geteuid().as_raw(),
        0,
        "this test listens as another uid, which needs root (CI runs as root)"
    );
    let mut server = TestServer::start();
    let old_key = server.admin_key();
    assert!(server.stop().success());
    let shared = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let sock = shared.path().join("admin.sock");
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let (heard_tx, heard) = std::sync::mpsc::channel::<String>();
    let fake_at = sock.clone();
    std::thread::spawn(move || {
        // Only this thread changes uid (the raw syscall, not glibc's process-wide one).
        rustix::thread::set_thread_uid(rustix::process::Uid::from_raw(65534)).expect("setuid");
        let listener = UnixListener::bind(&fake_at).expect("bind as nobody");
        ready_tx.send(()).expect("ready");
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            let mut line = String::new();
            let _ = BufReader::new(&conn).read_line(&mut line);
            let _ = heard_tx.send(line);
            let _ = conn.write_all(
                b"{\"v\":1,\"code\":0,\"stdout\":\"fgk_fake\\n\",\"stderr\":\"done\\n\"}\n",
            );
        }
    });
    ready
        .recv_timeout(Duration::from_secs(10))
        .expect("the fake server listens");
    let env = [(
        "FLEETGROUPS_ADMIN_SOCKET".to_string(),
        sock.to_str().expect("utf-8").to_string(),
    )];
    let backup = shared.path().join("b.jsonl");
    for args in [
        &["user", "rotate-key", "admin"][..],
        &["backup", backup.to_str().expect("utf-8")],
    ] {
        let out = cli_in(&server.data_dir(), args, &env);
        assert_eq!(out.code, 1, "{args:?}: {out:?}");
        assert!(out.stdout.is_empty(), "{args:?}: {out:?}");
        for needle in [
            "refused the admin socket",
            "answered by nobody (uid 65534)",
            "not by the owner of",
            "root (uid 0)",
            "the command was not sent",
        ] {
            assert!(
                out.stderr.contains(needle),
                "{args:?}: {needle:?} in {}",
                out.stderr
            );
        }
    }
    assert!(!backup.exists(), "a backup file appeared");
    // The fake heard nothing: the check comes before the request is written.
    while let Ok(line) = heard.try_recv() {
        assert!(line.is_empty(), "the command was sent: {line}");
    }
    server.restart();
    server.login("admin", &old_key);
}
