//! A CLI that is safe to use on a gateway (issue 12 item 6): with no `--config` it
//! finds the system-wide `/etc/fleetgroups/config.toml` (here a file named by the
//! documented override `FLEETGROUPS_SYSTEM_CONFIG`) when there is no `./config.toml`;
//! run by anyone but the data directory's owner — root included — it refuses with the
//! command to run instead and leaves nothing behind; `--output json` gives scripts
//! stable fields, the same through the admin socket as offline; `--help` lists the
//! roles; `check-config` names the line and column of a TOML syntax error.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::support::{clear_fleetgroups_env, cli_in, run_with_deadline, CliOutput, Options};
use crate::support::{TestServer, BIN};

/// Runs the binary in `cwd` with exactly these `FLEETGROUPS_*` variables.
fn run_in(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> CliOutput {
    crate::support::cli(args)
        .cwd(cwd)
        .envs(env.iter().copied())
        .run()
}

fn json(out: &CliOutput) -> Value {
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.lines().count(), 1, "one line: {out:?}");
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"))
}

#[test]
fn without_config_the_system_file_is_used_when_there_is_no_local_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cwd = dir.path().join("work");
    std::fs::create_dir(&cwd).expect("mkdir");
    let system = dir.path().join("etc-config.toml");
    std::fs::write(&system, "listen = \"127.0.0.1:7001\"\n").expect("write");
    let system_s = system.to_str().expect("utf-8");
    let listen = |out: &CliOutput| -> String {
        json(out)["config"]["listen"]
            .as_str()
            .expect("listen")
            .to_string()
    };
    let check = |env: &[(&str, &str)], extra: &[&str]| {
        let mut args = extra.to_vec();
        args.extend(["check-config", "--output", "json"]);
        run_in(&cwd, &args, env)
    };
    let with_system = [("FLEETGROUPS_SYSTEM_CONFIG", system_s)];

    // No ./config.toml: the system-wide file.
    let out = check(&with_system, &[]);
    assert_eq!(listen(&out), "127.0.0.1:7001");
    assert_eq!(json(&out)["configFile"], system_s);
    // Text output says which file it read.
    let text = run_in(&cwd, &["check-config"], &with_system);
    assert!(
        text.stderr
            .contains(&format!("configuration file: {system_s}")),
        "{text:?}"
    );
    // ./config.toml wins over it.
    std::fs::write(cwd.join("config.toml"), "listen = \"127.0.0.1:7002\"\n").expect("write");
    let out = check(&with_system, &[]);
    assert_eq!(listen(&out), "127.0.0.1:7002");
    assert_eq!(json(&out)["configFile"], "config.toml");
    std::fs::remove_file(cwd.join("config.toml")).expect("rm");
    // --config and FLEETGROUPS_CONFIG win over both.
    let named = dir.path().join("named.toml");
    std::fs::write(&named, "listen = \"127.0.0.1:7003\"\n").expect("write");
    let named_s = named.to_str().expect("utf-8");
    assert_eq!(
        listen(&check(&with_system, &["--config", named_s])),
        "127.0.0.1:7003"
    );
    assert_eq!(
        listen(&check(
            &[
                ("FLEETGROUPS_SYSTEM_CONFIG", system_s),
                ("FLEETGROUPS_CONFIG", named_s)
            ],
            &[]
        )),
        "127.0.0.1:7003"
    );
    // A system file that is not there: the built-in defaults.
    let missing = dir.path().join("missing.toml");
    let out = check(
        &[(
            "FLEETGROUPS_SYSTEM_CONFIG",
            missing.to_str().expect("utf-8"),
        )],
        &[],
    );
    assert_eq!(listen(&out), "127.0.0.1:8080");
    assert_eq!(json(&out)["configFile"], Value::Null);
    // It is the configuration of every command, not only check-config: its data_dir
    // is where `user add` puts the store.
    let data = dir.path().join("from-system");
    std::fs::write(
        &system,
        format!("data_dir = \"{}\"\n", data.to_str().expect("utf-8")),
    )
    .expect("write");
    run_in(&cwd, &["user", "add", "ops"], &with_system).key();
    assert!(data.join("store").is_dir(), "{}", data.display());
    // A broken system-wide file stops the command (exit 2) and names itself.
    std::fs::write(&system, "listen = \n").expect("write");
    let out = run_in(&cwd, &["user", "list"], &with_system);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains(system_s), "{out:?}");
}

/// Every entry below `dir` with its owner and size, to see that nothing changed.
fn snapshot(dir: &Path) -> Vec<(String, u32, u64)> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for e in std::fs::read_dir(&d).expect("ls") {
            let e = e.expect("entry");
            let meta = std::fs::symlink_metadata(e.path()).expect("stat");
            if meta.is_dir() {
                pending.push(e.path());
            }
            out.push((e.path().display().to_string(), meta.uid(), meta.len()));
        }
    }
    out.sort();
    out
}

fn chown_tree(dir: &Path, uid: u32) {
    let status = Command::new("chown")
        .args(["-R", &format!("{uid}:{uid}")])
        .arg(dir)
        .status()
        .expect("chown");
    assert!(status.success());
}

#[test]
fn a_cli_run_by_another_user_than_the_owner_refuses_with_a_hint() {
    let uid = std::fs::metadata("/proc/self").map(|m| m.uid());
    assert_eq!(
        uid.ok(),
        Some(0),
        "this test hands directories to another uid and runs as one, which needs root (CI runs as root)"
    );
    // A service-owned data directory with a store, as the unit leaves it.
    let server = TestServer::unstarted(Options::default());
    let data = server.data_dir();
    server.cli(&["user", "add", "admin"]).key();
    chown_tree(&data, 65534);
    let before = snapshot(&data);
    let data_s = data.to_str().expect("utf-8");
    let out_dir = tempfile::tempdir().expect("tempdir");
    let sched = out_dir.path().join("sched");
    let file = out_dir.path().join("b.jsonl");
    let empty_target = out_dir.path().join("empty");
    std::fs::create_dir(&empty_target).expect("mkdir");
    chown_tree(&empty_target, 65534);
    // Root, as every command that writes into the data directory.
    for args in [
        &["user", "list"][..],
        &["user", "add", "x"],
        &["user", "rotate-key", "admin"],
        &["user", "set", "admin", "--role", "read"],
        &["user", "remove", "admin"],
        &["backup", file.to_str().expect("utf-8")],
        &[
            "backup",
            "--dir",
            sched.to_str().expect("utf-8"),
            "--keep",
            "2",
        ],
    ] {
        let out = cli_in(&data, args, &[]);
        assert_eq!(out.code, 1, "{args:?}: {out:?}");
        assert!(out.stdout.is_empty(), "{args:?}: {out:?}");
        // The hint is the same command line, run as the owner.
        let hint = format!(
            "runuser -u nobody -- {BIN} --data-dir {data_s} {}",
            args.join(" ")
        );
        assert!(
            out.stderr.contains("belongs to nobody (uid 65534)")
                && out.stderr.contains("runs as root (uid 0)")
                && out.stderr.contains(&hint),
            "{args:?}: {out:?}\nexpected {hint}"
        );
        assert_eq!(
            snapshot(&data),
            before,
            "{args:?} changed the data directory"
        );
    }
    assert!(!file.exists() && !sched.exists());
    // restore into another user's empty directory: refused, still empty.
    let plain = tempfile::tempdir().expect("tempdir");
    let good = plain.path().join("good.jsonl");
    std::fs::write(&good, "").expect("write");
    let out = cli_in(
        &empty_target,
        &["restore", good.to_str().expect("utf-8")],
        &[],
    );
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("runuser -u nobody"), "{out:?}");
    assert_eq!(std::fs::read_dir(&empty_target).expect("ls").count(), 0);
    // Reading a backup (`restore --check`) and check-config write nothing: allowed.
    let out = cli_in(&data, &["check-config"], &[]);
    assert_eq!(out.code, 0, "{out:?}");

    // The owner itself is served, and the tip really works (with a copy of the binary
    // and a path to the data that uid 65534 can reach wherever the checkout lives).
    std::fs::set_permissions(server.dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    let shared = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let bin = shared.path().join("fleetgroups");
    std::fs::copy(BIN, &bin).expect("copy binary");
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut runuser = Command::new("runuser");
    clear_fleetgroups_env(&mut runuser);
    runuser
        .args(["-u", "nobody", "--"])
        .arg(&bin)
        .args(["--data-dir", data_s, "user", "list"])
        .current_dir("/");
    let runuser = runuser.output().expect("runuser");
    assert!(
        runuser.status.success(),
        "{}",
        String::from_utf8_lossy(&runuser.stderr)
    );
    assert!(String::from_utf8_lossy(&runuser.stdout).contains("admin"));

    // Another user than root, on root's data directory: refused too, with sudo.
    let mine = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(mine.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let root_data = mine.path().join("data");
    cli_in(&root_data, &["user", "add", "admin"], &[]).key();
    std::fs::set_permissions(&root_data, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut setpriv = Command::new("setpriv");
    clear_fleetgroups_env(&mut setpriv);
    setpriv
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bin)
        .arg("--data-dir")
        .arg(&root_data)
        .args(["user", "list"])
        .current_dir("/");
    let out = run_with_deadline(setpriv, Duration::from_secs(60));
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("belongs to root (uid 0)")
            && out.stderr.contains("runs as nobody (uid 65534)")
            && out.stderr.contains("sudo -u root -- "),
        "{out:?}"
    );
}

#[test]
fn output_json_has_stable_fields_offline_and_through_the_admin_socket() {
    let mut server = TestServer::unstarted(Options::default());
    let added = json(&server.cli(&[
        "user",
        "add",
        "ci",
        "--account",
        "fleet-a",
        "--role",
        "read",
        "--daily-limit",
        "50",
        "--output",
        "json",
    ]));
    let key = added["apiKey"].as_str().expect("apiKey").to_string();
    assert!(key.starts_with("fgk_"), "{added}");
    let mut fields: Vec<&str> = added
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "account",
            "apiKey",
            "dailyLimit",
            "disabled",
            "keyCreated",
            "name",
            "role"
        ]
    );
    assert_eq!(
        (
            &added["name"],
            &added["account"],
            &added["role"],
            &added["dailyLimit"],
            &added["disabled"]
        ),
        (
            &Value::from("ci"),
            &Value::from("fleet-a"),
            &Value::from("read"),
            &Value::from(50),
            &Value::from(false)
        )
    );
    assert!(crate::support::is_timestamp(
        added["keyCreated"].as_str().expect("keyCreated")
    ));
    let admin_key = server.cli(&["user", "add", "admin"]).key();

    server.restart();
    // The key from the JSON works.
    let token = server.login("ci", &key);
    assert_eq!(
        server
            .req("GET", "/api/groups")
            .bearer(&token)
            .send()
            .status,
        200
    );
    server.login("admin", &admin_key);

    // Through the admin socket (the server runs): the same shapes.
    // The server holds the store's lock, so these can only have gone through its socket.
    let rotated = json(&server.cli(&["user", "rotate-key", "ci", "--output", "json"]));
    let new_key = rotated["apiKey"].as_str().expect("apiKey").to_string();
    assert_ne!(new_key, key);
    assert_eq!(rotated["name"], "ci");
    assert_eq!(rotated["role"], "read");
    server
        .req("POST", "/api/Auth/Token")
        .json(&serde_json::json!({"userName": "ci", "apiKey": key}))
        .send()
        .expect_error(401, "invalid_credentials");
    server.login("ci", &new_key);
    let live = json(&server.cli(&["user", "list", "--output", "json"]));
    let users = live["users"].as_array().expect("users");
    assert_eq!(users.len(), 2, "{live}");
    let ci = users.iter().find(|u| u["name"] == "ci").expect("ci");
    let mut fields: Vec<&str> = ci
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "account",
            "apiDailyUsage",
            "apiUsage",
            "dailyLimit",
            "disabled",
            "keyCreated",
            "lastUsed",
            "name",
            "role"
        ]
    );
    assert_eq!(ci["apiUsage"], 1);
    assert_eq!(ci["apiDailyUsage"], 1);
    assert_eq!(ci["keyCreated"], rotated["keyCreated"]);
    assert!(crate::support::is_timestamp(
        ci["lastUsed"].as_str().expect("lastUsed")
    ));
    let admin = users.iter().find(|u| u["name"] == "admin").expect("admin");
    assert_eq!(admin["lastUsed"], Value::Null, "logins are not requests");
    assert_eq!(admin["dailyLimit"], Value::Null);
    // No key and no hash in a list.
    assert!(!live.to_string().contains("fgk_") && !live.to_string().contains("argon2"));

    // Both went through the socket: the server's whole log, once it has exited, has
    // their admin lines.
    let log = server.stop_for_log();
    assert!(
        log.contains("command=\"user rotate-key\"") && log.contains("command=\"user list\""),
        "{log}"
    );
    // Offline: the same document.
    assert_eq!(
        json(&server.cli(&["user", "list", "--output", "json"])),
        live
    );
    // Text stays the default.
    assert!(server.cli(&["user", "list"]).stdout.starts_with("NAME"));
    // Failures print nothing on stdout, also with --output json.
    let out = server.cli(&["user", "rotate-key", "nobody", "--output", "json"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let out = server.cli(&["user", "list", "--output", "yaml"]);
    assert_eq!(out.code, 2, "{out:?}");
}

#[test]
fn check_config_output_json_and_the_line_and_column_of_a_syntax_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[tls]\ncert = \"\"\nkey = \"\"\n[limits]\nmax_body_bytes = 4096\n",
    )
    .expect("write");
    let out = run_in(
        dir.path(),
        &[
            "--config",
            good.to_str().expect("utf-8"),
            "check-config",
            "--output",
            "json",
        ],
        &[("FLEETGROUPS_LISTEN", "127.0.0.1:7777")],
    );
    let doc = json(&out);
    assert_eq!(doc["valid"], true);
    assert_eq!(doc["configFile"], good.to_str().expect("utf-8"));
    assert_eq!(doc["config"]["limits"]["max_body_bytes"], 4096);
    assert_eq!(doc["config"]["listen"], "127.0.0.1:7777");
    assert_eq!(doc["config"]["storage"]["durability"], "fsync");
    assert_eq!(doc["warnings"], serde_json::json!([]));

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "listen = \"127.0.0.1:8080\"\n\n[limits]\nmax_body_bytes = 4096\nheader_timeout_secs = 10 20\nbody_timeout_secs = 30\n",
    )
    .expect("write");
    let bad_s = bad.to_str().expect("utf-8");
    let out = run_in(dir.path(), &["--config", bad_s, "check-config"], &[]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("{bad_s}: line 5, column 26: ")),
        "{out:?}"
    );
    let out = run_in(
        dir.path(),
        &["--config", bad_s, "check-config", "--output", "json"],
        &[],
    );
    assert_eq!(out.code, 2, "{out:?}");
    let doc: Value = serde_json::from_str(&out.stdout).expect("json on stdout");
    assert_eq!(doc["valid"], false);
    assert_eq!(doc["configFile"], bad_s);
    assert!(
        doc["error"]
            .as_str()
            .expect("error")
            .contains("line 5, column 26"),
        "{doc}"
    );
    // A value error still names the key (and the file is found, so it is named too).
    std::fs::write(&bad, "[limits]\nmax_body_bytes = 10\n").expect("write");
    let out = run_in(
        dir.path(),
        &["--config", bad_s, "check-config", "--output", "json"],
        &[],
    );
    assert_eq!(out.code, 2, "{out:?}");
    let doc: Value = serde_json::from_str(&out.stdout).expect("json on stdout");
    assert!(
        doc["error"]
            .as_str()
            .expect("error")
            .contains("limits.max_body_bytes"),
        "{doc}"
    );
}

#[test]
fn help_lists_the_roles() {
    let dir = tempfile::tempdir().expect("tempdir");
    for args in [&["user", "add", "--help"][..], &["user", "set", "--help"]] {
        let out = run_in(dir.path(), args, &[]);
        assert_eq!(out.code, 0, "{out:?}");
        let role = out
            .stdout
            .split("--role <ROLE>")
            .nth(1)
            .unwrap_or_else(|| panic!("no --role in {out:?}"));
        let until_next = role.split("\n      --").next().unwrap_or("");
        assert!(
            until_next.contains("read") && until_next.contains("write"),
            "{args:?}: {until_next}"
        );
    }
    let out = run_in(dir.path(), &["user", "add", "-h"], &[]);
    assert!(
        out.stdout.contains("[possible values: read, write]"),
        "{out:?}"
    );
    // A wrong role names the choices.
    let out = run_in(dir.path(), &["user", "add", "x", "--role", "admin"], &[]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("[possible values: read, write]"),
        "{out:?}"
    );
}
