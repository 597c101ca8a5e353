//! Messages that say what to do next, each checked word for word where it matters:
//! a listen address in use (and nothing written first), a key in the wrong section,
//! `serve` on a data directory its user cannot use, the reason of every 401 in
//! `WWW-Authenticate` (and in the log at debug), a merge patch sent as plain JSON, and
//! the first start's key file after `admin`'s key is rotated.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::support::{
    clear_fleetgroups_env, poll_until, run_expecting_exit, run_with_deadline, Options, TestServer,
    BIN,
};

#[test]
fn a_listen_address_in_use_names_it_and_the_setting_and_writes_nothing() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run_expecting_exit(
        dir.path(),
        &["--data-dir", "data", "serve", "--listen", &addr],
        &[],
    );
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("cannot listen on {addr}: Address already in use")),
        "{out:?}"
    );
    assert!(
        out.stderr.contains("Another process (another fleetgroups?) listens there already: stop it, or choose another address. The address is set with --listen ADDR, FLEETGROUPS_LISTEN=ADDR or `listen` in the configuration file. Nothing was written to the data directory."),
        "{out:?}"
    );
    // A fresh directory stays fresh: no store, no admin, no key file.
    assert!(!dir.path().join("data").exists(), "{out:?}");

    // With a configuration file, the message names it.
    let file = dir.path().join("fg.toml");
    std::fs::write(&file, format!("listen = \"{addr}\"\n")).expect("write");
    let file_s = file.to_str().expect("utf-8");
    let out = run_expecting_exit(
        dir.path(),
        &["--config", file_s, "--data-dir", "data", "serve"],
        &[],
    );
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains(&format!("or `listen` in {file_s}.")),
        "{out:?}"
    );
    assert!(!dir.path().join("data").exists(), "{out:?}");
}

#[test]
fn a_top_level_key_after_a_section_says_where_it_belongs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("config.toml");
    std::fs::write(
        &file,
        "[limits]\nmax_body_bytes = 2048\nlisten = \"0.0.0.0:8080\"\n",
    )
    .expect("write");
    for args in [&["check-config"][..], &["--data-dir", "data", "serve"]] {
        let out = run_expecting_exit(dir.path(), args, &[]);
        assert_eq!(out.code, 2, "{args:?}: {out:?}");
        assert!(
            out.stderr.contains("limits.listen: unknown key; `listen` is a top-level key: put it above the first [section] of the file (after [limits], TOML reads it as limits.listen)"),
            "{args:?}: {out:?}"
        );
    }
    assert!(!dir.path().join("data").exists());
}

#[test]
fn serve_on_a_data_directory_its_user_cannot_use_names_the_owner_and_the_way_out() {
    let uid = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m));
    assert_eq!(
        uid.ok(),
        Some(0),
        "this test runs the server as another uid, which needs root (CI runs as root)"
    );
    // Root's data directory with a store, inside a directory uid 65534 can enter, and
    // a copy of the binary it can run wherever the checkout lives.
    let top = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(top.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let data = top.path().join("data");
    crate::support::cli_in(&data, &["user", "add", "ops"], &[]).key();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let bin = top.path().join("fleetgroups");
    std::fs::copy(BIN, &bin).expect("copy binary");
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let data_s = data.to_str().expect("utf-8");

    let mut setpriv = Command::new("setpriv");
    clear_fleetgroups_env(&mut setpriv);
    setpriv
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bin)
        .args(["--data-dir", data_s, "serve", "--listen", "127.0.0.1:0"])
        .current_dir("/");
    let out = run_with_deadline(setpriv, Duration::from_secs(60));
    assert_eq!(out.code, 1, "{out:?}");
    let bin_s = bin.to_str().expect("utf-8");
    for want in [
        format!("{data_s} belongs to root (uid 0), but the server runs as nobody (uid 65534) and cannot use it. Nothing was changed. Run it as the owner:"),
        format!("  sudo -u root -- {bin_s} --data-dir {data_s} serve --listen 127.0.0.1:0"),
        "or, if nobody (uid 65534) should own it:".to_string(),
        format!("  chown -R nobody: {data_s}"),
    ] {
        assert!(out.stderr.contains(&want), "{out:?}\nexpected: {want}");
    }
}

#[test]
fn every_401_says_why_in_www_authenticate_and_in_the_debug_log() {
    let server = TestServer::with(Options::default().env("FLEETGROUPS_LOG_LEVEL", "debug"));
    let key = server.admin_key();
    let token = server.login("admin", &key);
    let challenge = |auth: Option<&str>| {
        let mut req = server.req("GET", "/api/groups");
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        let r = req.send();
        r.expect_error_message(401, "unauthorized", "Unauthorized access");
        r.header("www-authenticate").unwrap_or("").to_string()
    };
    let invalid =
        |why: &str| format!("Bearer error=\"invalid_token\", error_description=\"{why}\"");
    // No credentials at all: the bare challenge (RFC 6750 §3.1).
    assert_eq!(challenge(None), "Bearer");
    assert_eq!(
        challenge(Some(&token)),
        invalid("the Authorization header must be Bearer <token>")
    );
    assert_eq!(
        challenge(Some(&format!("Basic {token}"))),
        invalid("the Authorization header must be Bearer <token>")
    );
    assert_eq!(
        challenge(Some(&format!("Bearer {key}"))),
        invalid("an API key is not a token: trade it for one at POST /api/Auth/Token")
    );
    assert_eq!(
        challenge(Some(&format!("Bearer {}", "x".repeat(300)))),
        invalid("the token is malformed")
    );
    assert_eq!(
        challenge(Some("Bearer fgt_0000")),
        invalid("the token is unknown here: log in again at POST /api/Auth/Token")
    );
    let two = server
        .req("GET", "/api/groups")
        .header("Authorization", &format!("Bearer {token}"))
        .header("Authorization", &format!("Bearer {token}"))
        .send();
    assert_eq!(
        two.header("www-authenticate"),
        Some(invalid("more than one Authorization header: send exactly one").as_str())
    );
    // Revoked: the key was rotated.
    server.cli(&["user", "rotate-key", "admin"]).key();
    assert_eq!(
        challenge(Some(&format!("Bearer {token}"))),
        invalid("the token was revoked (key rotated, or user disabled or removed)")
    );
    // The log says it at debug, and never the token or the key.
    server.wait_for_log("bearer token refused");
    let log = server.log();
    assert!(
        log.contains("the token was revoked (key rotated, or user disabled or removed)"),
        "{log}"
    );
    assert!(!log.contains(&token) && !log.contains(&key), "{log}");

    // Expired: a one-second token, polled until its lifetime is over.
    let short = TestServer::with(Options::default().env("FLEETGROUPS_AUTH_TOKEN_TTL_SECS", "1"));
    let token = short.admin_token();
    let expired = invalid("the token has expired: log in again at POST /api/Auth/Token");
    poll_until(Duration::from_secs(10), "the token to expire", || {
        let r = short.req("GET", "/api/groups").bearer(&token).send();
        (r.status == 401 && r.header("www-authenticate") == Some(expired.as_str())).then_some(())
    });
}

#[test]
fn a_merge_patch_sent_as_json_names_the_media_type_and_changes_nothing() {
    let server = TestServer::start();
    let admin = server.client(&server.admin_token());
    let g = admin.create(&json!({"name": "Trucks", "description": "north"}));
    let id = g["id"].as_str().expect("id");
    for content_type in ["application/json", "application/json-patch+json"] {
        let r = admin
            .req("PATCH", &format!("/api/groups/{id}"))
            .body_as(content_type, br#"{"description": "south"}"#)
            .send();
        r.expect_error_message(
            400,
            "invalid_input",
            "Invalid input: the body must be a JSON Patch array of operations; an object is a merge patch: send it with Content-Type: application/merge-patch+json",
        );
    }
    assert_eq!(admin.group(id)["description"], "north");
    // As the message says, it works.
    let r = admin
        .req("PATCH", &format!("/api/groups/{id}"))
        .body_as(
            "application/merge-patch+json",
            br#"{"description": "south"}"#,
        )
        .send();
    assert_eq!(r.expect_ok(200)["description"], "south");
}

#[test]
fn rotating_admins_key_removes_the_initial_key_file_and_says_so() {
    let mut server = TestServer::start();
    let path = server.data_dir().join("initial-api-key");
    let path_s = path.display().to_string();
    assert!(path.exists());
    // Another user's rotation leaves the file alone.
    server.add_user("ci", &[]);
    let out = server.cli(&["user", "rotate-key", "ci"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        path.exists() && !out.stderr.contains("initial-api-key"),
        "{out:?}"
    );
    // Through the running server's admin socket.
    let out = server.cli(&["user", "rotate-key", "admin"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("removed {path_s}: it held the old key of admin")),
        "{out:?}"
    );
    assert!(!path.exists());
    let key = out.key();
    server.login("admin", &key);
    // Offline, with the file written back by hand: removed again; then nothing to say.
    assert!(server.stop().success());
    std::fs::write(&path, format!("{key}\n")).expect("write");
    let out = server.cli(&["user", "rotate-key", "admin"]);
    assert!(out.stderr.contains("removed") && !path.exists(), "{out:?}");
    let out = server.cli(&["user", "rotate-key", "admin"]);
    assert!(!out.stderr.contains("removed"), "{out:?}");
}
