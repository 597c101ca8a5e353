//! The command line with the server stopped (docs/operations/running.md "Users and keys"): `user add` prints
//! the key alone on stdout, `user list` shows the columns, `rotate-key`, `set` and
//! `remove` change what the restarted server accepts, mistakes exit 1 (failed) or 2
//! (bad usage) with a clear message and change nothing, and `check-config` validates.

use serde_json::json;

use std::time::Duration;

use crate::support::{cli_in, CliOutput, Options, TestServer};

/// The rows of `user list` as whitespace-separated cells, header first.
fn table(out: &CliOutput) -> Vec<Vec<String>> {
    assert_eq!(out.code, 0, "{out:?}");
    out.stdout
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

fn row<'a>(rows: &'a [Vec<String>], name: &str) -> &'a [String] {
    rows.iter()
        .find(|r| r[0] == name)
        .unwrap_or_else(|| panic!("no row for {name}: {rows:?}"))
}

#[test]
fn user_add_prints_the_key_alone_and_user_list_shows_every_column() {
    let mut server = TestServer::unstarted(Options::default());
    let out = server.cli(&["user", "add", "admin"]);
    let admin_key = out.key();
    assert!(
        out.stderr.contains("admin"),
        "a note for the operator on stderr"
    );
    assert!(!out.stderr.contains(&admin_key), "the key only on stdout");
    let viewer_key = server
        .cli(&[
            "user",
            "add",
            "viewer@acme.example",
            "--account",
            "acme",
            "--role",
            "read",
            "--daily-limit",
            "500",
        ])
        .key();
    assert_ne!(admin_key, viewer_key);

    let rows = table(&server.cli(&["user", "list"]));
    assert_eq!(
        rows[0],
        [
            "NAME",
            "ACCOUNT",
            "ROLE",
            "DAILY_LIMIT",
            "DISABLED",
            "API_USAGE",
            "API_DAILY_USAGE",
            "KEY_CREATED",
            "LAST_USED"
        ]
    );
    assert_eq!(rows.len(), 3);
    let admin = row(&rows, "admin");
    assert_eq!(
        &admin[..7],
        ["admin", "default", "write", "none", "false", "0", "0"]
    );
    assert!(crate::support::is_timestamp(&admin[7]), "{admin:?}");
    assert_eq!(admin[8], "never");
    let viewer = row(&rows, "viewer@acme.example");
    assert_eq!(
        &viewer[..7],
        [
            "viewer@acme.example",
            "acme",
            "read",
            "500",
            "false",
            "0",
            "0"
        ]
    );

    // The keys work once the server runs; no admin was bootstrapped over them.
    server.restart();
    assert!(!server.data_dir().join("initial-api-key").exists());
    let admin = server.client(&server.login("admin", &admin_key));
    admin.create(&json!({"name": "Trucks"}));
    let viewer = server.client(&server.login("viewer@acme.example", &viewer_key));
    assert_eq!(viewer.groups().len(), 0, "another account");
    viewer
        .post("/api/groups", &json!({"name": "x"}))
        .expect_error(403, "forbidden");
    assert!(server.stop().success());

    let rows = table(&server.cli(&["user", "list"]));
    let admin = row(&rows, "admin");
    assert_eq!((admin[5].as_str(), admin[6].as_str()), ("1", "1"));
    assert!(
        crate::support::is_timestamp(&admin[8]),
        "last used: {admin:?}"
    );
}

#[test]
fn mistakes_exit_non_zero_with_a_clear_message_and_change_nothing() {
    let mut server = TestServer::unstarted(Options::default());
    let key = server.cli(&["user", "add", "admin"]).key();
    let list_before = server.cli(&["user", "list"]).stdout;

    // A duplicate name fails (1) and leaves the first user and its key alone.
    let out = server.cli(&["user", "add", "admin", "--role", "read"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("already exists"), "{out:?}");
    assert!(out.stdout.is_empty(), "no key printed: {out:?}");

    // Bad usage exits 2 and names the problem.
    let usage_errors: [(&[&str], &str); 9] = [
        (&["user", "add"], "<NAME>"),
        (&["user", "add", "has space"], "has space"),
        (&["user", "add", "slash/name"], "slash/name"),
        (&["user", "add", &"a".repeat(65)], "1-64"),
        (
            &["user", "add", "ok", "--account", "bad account"],
            "--account",
        ),
        (&["user", "add", "ok", "--role", "admin"], "--role"),
        (
            &["user", "add", "ok", "--daily-limit", "many"],
            "--daily-limit",
        ),
        (&["user", "frobnicate"], "frobnicate"),
        (
            &["user", "set", "admin", "--disabled", "maybe"],
            "--disabled",
        ),
    ];
    for (args, mention) in usage_errors {
        let out = server.cli(args);
        assert_eq!(out.code, 2, "{args:?}: {out:?}");
        assert!(
            out.stderr.contains(mention),
            "{args:?} should mention {mention}: {out:?}"
        );
        assert!(out.stdout.is_empty(), "{args:?}: {out:?}");
    }
    // Commands on a user that does not exist fail (1).
    for args in [
        &["user", "rotate-key", "nobody"][..],
        &["user", "set", "nobody", "--role", "read"],
        &["user", "remove", "nobody"],
    ] {
        let out = server.cli(args);
        assert_eq!(out.code, 1, "{args:?}: {out:?}");
        assert!(out.stderr.contains("no user named \"nobody\""), "{out:?}");
        assert!(out.stdout.is_empty(), "{args:?}: {out:?}");
    }

    assert_eq!(server.cli(&["user", "list"]).stdout, list_before);
    server.restart();
    let admin = server.client(&server.login("admin", &key));
    admin.create(&json!({"name": "still a writer"}));
}

#[test]
fn rotate_set_and_remove_change_what_the_server_accepts() {
    let mut server = TestServer::unstarted(Options::default());
    let admin_key = server.cli(&["user", "add", "admin"]).key();
    let bob_key = server.cli(&["user", "add", "bob"]).key();
    server.restart();
    let bob = server.client(&server.login("bob", &bob_key));
    bob.create(&json!({"name": "Bob's"}));
    assert!(server.stop().success());

    // rotate-key prints the new key alone, like add.
    let new_key = server.cli(&["user", "rotate-key", "bob"]).key();
    // set: the role and the daily limit.
    // bob made one request today already: a limit of 3 leaves two.
    let out = server.cli(&["user", "set", "bob", "--role", "read", "--daily-limit", "3"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let rows = table(&server.cli(&["user", "list"]));
    assert_eq!(
        &row(&rows, "bob")[..5],
        ["bob", "default", "read", "3", "false"]
    );
    server.restart();
    server
        .req("POST", "/api/auth/token")
        .json(&json!({"userName": "bob", "apiKey": bob_key}))
        .send()
        .expect_error(401, "invalid_credentials");
    let bob = server.client(&server.login("bob", &new_key));
    bob.post("/api/groups", &json!({"name": "x"}))
        .expect_error(403, "forbidden");
    bob.get("/api/groups").expect_ok(200);
    bob.get("/api/groups")
        .expect_error(429, "daily_limit_exceeded");
    assert!(server.stop().success());

    // `--daily-limit none` goes back to the configured default (none here).
    let out = server.cli(&[
        "user",
        "set",
        "bob",
        "--daily-limit",
        "none",
        "--role",
        "write",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        &row(&table(&server.cli(&["user", "list"])), "bob")[..4],
        ["bob", "default", "write", "none"]
    );
    server.restart();
    let bob = server.client(&server.login("bob", &new_key));
    bob.create(&json!({"name": "Bob's second"}));
    assert!(server.stop().success());

    // remove: the user goes, the account's groups stay.
    let out = server.cli(&["user", "remove", "bob"]);
    assert_eq!(out.code, 0, "{out:?}");
    let rows = table(&server.cli(&["user", "list"]));
    assert!(rows.iter().all(|r| r[0] != "bob"), "{rows:?}");
    server.restart();
    server
        .req("POST", "/api/auth/token")
        .json(&json!({"userName": "bob", "apiKey": new_key}))
        .send()
        .expect_error(401, "invalid_credentials");
    let admin = server.client(&server.login("admin", &admin_key));
    let names: Vec<_> = admin.groups().iter().map(|g| g["name"].clone()).collect();
    assert_eq!(names, [json!("Bob's"), json!("Bob's second")]);
    assert!(server.stop().success());

    // A new user of the same name starts afresh with its own counters.
    let again = server.cli(&["user", "add", "bob"]).key();
    let rows = table(&server.cli(&["user", "list"]));
    assert_eq!(&row(&rows, "bob")[5..7], ["0", "0"]);
    server.restart();
    server.login("bob", &again);
}

#[test]
fn check_config_validates_and_names_the_bad_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };

    let out = cli_in(&data, &["check-config"], &[]);
    assert_eq!(out.code, 0, "{out:?}");
    // The embedded defaults: serve on 127.0.0.1:8080.
    assert!(
        out.stdout.contains("listen = \"127.0.0.1:8080\""),
        "{out:?}"
    );
    assert!(out.stdout.contains("max_body_bytes = 1048576"), "{out:?}");
    assert!(
        out.stdout.contains("max_devices_per_group = 10000"),
        "{out:?}"
    );

    let out = cli_in(
        &data,
        &["check-config"],
        &env(&[("FLEETGROUPS_LIMITS_MAX_DEVICES_PER_GROUP", "7")]),
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("max_devices_per_group = 7"), "{out:?}");

    for (vars, key) in [
        (
            &[("FLEETGROUPS_LIMITS_MAX_BODY_BYTES", "big")][..],
            "FLEETGROUPS_LIMITS_MAX_BODY_BYTES",
        ),
        (
            &[("FLEETGROUPS_LIMITS_MAX_BODY_BYTES", "10")],
            "limits.max_body_bytes",
        ),
        (
            &[("FLEETGROUPS_AUTH_TOKEN_TTL_SECS", "0")],
            "auth.token_ttl_secs",
        ),
        (
            &[("FLEETGROUPS_NO_SUCH_KEY", "1")],
            "FLEETGROUPS_NO_SUCH_KEY",
        ),
        (
            &[("FLEETGROUPS_STORAGE_DURABILITY", "sometimes")],
            "storage.durability",
        ),
    ] {
        let out = cli_in(&data, &["check-config"], &env(vars));
        assert_eq!(out.code, 2, "{vars:?}: {out:?}");
        assert!(
            out.stderr.contains(key),
            "{vars:?} should name {key}: {out:?}"
        );
    }

    let file = dir.path().join("bad.toml");
    for (text, key) in [
        ("[limits]\nmax_bodyy = 1\n", "max_bodyy"),
        (
            "[limits]\nmax_body_bytes = \"x\"\n",
            "limits.max_body_bytes",
        ),
        ("[auth]\ntokens_per_user = 0\n", "auth.tokens_per_user"),
        ("data_dir = 5\n", "data_dir"),
        ("[limitz]\n", "limitz"),
    ] {
        std::fs::write(&file, text).expect("write");
        let path = file.to_str().expect("utf-8 path");
        let out = cli_in(&data, &["--config", path, "check-config"], &[]);
        assert_eq!(out.code, 2, "{text:?}: {out:?}");
        assert!(
            out.stderr.contains(key),
            "{text:?} should name {key}: {out:?}"
        );
        // Nothing starts half-configured: `serve` refuses the same way, creating nothing.
        let out = crate::support::cli(&[])
            .data_dir(&data)
            .args(&["--config", path, "serve", "--listen", "127.0.0.1:0"])
            .cwd(dir.path())
            .run_within(Duration::from_secs(30));
        assert_eq!(out.code, 2, "{text:?}: {out:?}");
        assert!(out.stderr.contains(key), "{out:?}");
        assert!(!data.exists(), "a refused start created the data directory");
    }
    // The same for a user command.
    let out = cli_in(
        &data,
        &["user", "list"],
        &env(&[("FLEETGROUPS_LIMITS_MAX_BODY_BYTES", "big")]),
    );
    assert_eq!(out.code, 2, "{out:?}");
    assert!(!data.exists());
}

#[test]
fn the_data_directory_may_come_from_the_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("from-env");
    let run = |args: &[&str]| {
        crate::support::cli(args)
            .cwd(dir.path())
            .env("FLEETGROUPS_DATA_DIR", &data)
            .run()
    };
    run(&["user", "add", "envuser"]).key();
    assert!(
        data.join("store").is_dir(),
        "the store is where the variable says"
    );
    let out = run(&["user", "list"]);
    assert!(out.stdout.contains("envuser"), "{out:?}");
    // The flag wins over the variable.
    let other = dir.path().join("from-flag");
    let out = run(&["user", "list", "--data-dir", other.to_str().expect("utf-8")]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(!out.stdout.contains("envuser"), "{out:?}");
}
