//! Group names that render the same are the same name (docs/api/http.md "The group"): stored NFC,
//! compared with full Unicode case folding, refused with bidirectional controls or with
//! nothing visible. A store written before these rules keeps working: its names stay as
//! written, two that now fold the same both stay, and the name they share stays taken.

use serde_json::{json, Value};

use crate::support::{cli_in, group_ids_of, Options, TestServer};

#[test]
fn names_are_stored_nfc_and_compared_case_folded() {
    let server = TestServer::start();
    let admin = server.client(&server.admin_token());
    // "Café" with a combining acute accent is stored precomposed.
    let cafe = admin.create(&json!({"name": "Cafe\u{0301}"}));
    assert_eq!(cafe["name"], "Caf\u{e9}");
    admin.create(&json!({"name": "Straße"}));
    let before = admin.groups();
    for taken in [
        "Caf\u{e9}",
        "CAFE\u{0301}",
        "café",
        "STRASSE",
        "strasse",
        "STRAẞE",
    ] {
        admin
            .post("/api/groups", &json!({ "name": taken }))
            .expect_error_message(409, "name_conflict", "Group name already exists");
    }
    admin
        .put("/api/groups/grp-2", &json!({"name": "cafe\u{0301}"}))
        .expect_error(409, "name_conflict");
    assert_eq!(admin.groups(), before, "refused writes changed nothing");
    // The name filter folds the same way.
    let found = admin.get("/api/groups?name=STRASSE").expect_ok(200);
    assert_eq!(group_ids_of(&found), ["grp-2"]);
    let found = admin.get("/api/groups?name=caf%C3%A9").expect_ok(200);
    assert_eq!(group_ids_of(&found), ["grp-1"]);
    // A group may change the case of its own name.
    let v = admin
        .put("/api/groups/grp-2", &json!({"name": "STRASSE"}))
        .expect_ok(200);
    assert_eq!(v["name"], "STRASSE");
}

#[test]
fn bidi_controls_and_invisible_names_are_refused_naming_the_field() {
    let server = TestServer::start();
    let admin = server.client(&server.admin_token());
    admin.create(&json!({"name": "Keep"}));
    let before = admin.groups();
    for (name, why) in [
        (
            "invoice\u{202e}txt.exe",
            "name must not contain bidirectional control characters",
        ),
        (
            "a\u{2067}b",
            "name must not contain bidirectional control characters",
        ),
        ("\u{200b}", "name must contain a visible character"),
        (
            "\u{200b}\u{200d}\u{feff}",
            "name must contain a visible character",
        ),
        ("\u{3164}", "name must contain a visible character"),
    ] {
        let message = format!("Invalid input: {why}");
        admin
            .post("/api/groups", &json!({ "name": name }))
            .expect_error_message(400, "invalid_input", &message);
        admin
            .put("/api/groups/grp-1", &json!({ "name": name }))
            .expect_error_message(400, "invalid_input", &message);
        admin
            .req("PATCH", "/api/groups/grp-1")
            .json(&json!([{"op": "replace", "path": "/name", "value": name}]))
            .send()
            .expect_error(400, "invalid_input");
    }
    assert_eq!(admin.groups(), before);
    // Right-to-left scripts and joiners inside a name are text, not controls.
    for fine in ["דוד", "مرحبا", "👨\u{200d}👩\u{200d}👧"] {
        admin.create(&json!({ "name": fine }));
    }
}

/// A backup file as an earlier version writes it, holding `names` in account
/// `default` (grp-1, grp-2, …) and the user `admin` with `key`'s hash taken from `from`.
fn backup_with_names(from: &str, names: &[&str]) -> String {
    let mut lines: Vec<Value> = from
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .filter(|v: &Value| !matches!(v["type"].as_str(), Some("group" | "change" | "end")))
        .collect();
    for (i, name) in names.iter().enumerate() {
        lines.push(json!({
            "type": "group", "account": "default", "id": i + 1, "revision": 1,
            "creation": 1_700_000_000_000i64, "lastModified": 1_700_000_000_000i64,
            "name": name, "description": null, "devices": [],
        }));
    }
    for v in &mut lines {
        if v["type"] == "sequences" {
            v["nextGroup"] = json!(names.len() + 1);
        }
    }
    lines.push(json!({"type": "end", "records": lines.len() - 1}));
    lines.iter().map(|v| format!("{v}\n")).collect()
}

#[test]
fn an_older_store_keeps_names_that_now_collide_and_the_name_stays_taken() {
    // A backup of an earlier version: "Straße" and "STRASSE" were two names then, and
    // an invisible name was allowed.
    let source = TestServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("old.jsonl");
    let out = source.cli(&["backup", file.to_str().expect("utf-8")]);
    assert_eq!(out.code, 0, "{out:?}");
    let text = backup_with_names(
        &std::fs::read_to_string(&file).expect("read"),
        &["Straße", "STRASSE", "\u{200b}"],
    );
    std::fs::write(&file, text).expect("write");
    let mut server = TestServer::unstarted(Options::default());
    let out = cli_in(
        &server.data_dir(),
        &["restore", file.to_str().expect("utf-8")],
        &[],
    );
    assert_eq!(out.code, 0, "{out:?}");
    server.restart();
    let admin = server.client(&server.login("admin", &source.admin_key()));

    let names: Vec<Value> = admin.groups().iter().map(|g| g["name"].clone()).collect();
    assert_eq!(
        names,
        [json!("Straße"), json!("STRASSE"), json!("\u{200b}")]
    );
    assert!(
        out.stderr
            .contains("grp-1 and grp-2 have names that are now the same name")
            && out.stderr.contains("breaks this version's name rules"),
        "{}",
        out.stderr
    );
    // The shared name is taken, by both.
    admin
        .post("/api/groups", &json!({"name": "strasse"}))
        .expect_error(409, "name_conflict");
    // Either group can be changed in other ways, keeping its name.
    admin
        .put(
            "/api/groups/grp-2",
            &json!({"name": "STRASSE", "devices": ["d1"]}),
        )
        .expect_ok(200);
    // Renaming or deleting the younger one does not free the name the older one holds.
    admin
        .put("/api/groups/grp-2", &json!({"name": "Other"}))
        .expect_ok(200);
    admin
        .post("/api/groups", &json!({"name": "STRASSE"}))
        .expect_error(409, "name_conflict");
    // The invisible name must become a valid one at its next write.
    admin
        .put("/api/groups/grp-3", &json!({"name": "\u{200b}"}))
        .expect_error(400, "invalid_input");
    // Deleting the older one frees it.
    assert_eq!(admin.delete("/api/groups/grp-1").status, 200);
    admin.create(&json!({"name": "STRASSE"}));
    // And all of it survives a restart (the index is rebuilt once, not every start).
    assert!(server.stop().success());
    server.restart();
    assert!(
        !server.log().contains("rebuilt the name index"),
        "{}",
        server.log()
    );
    let admin = server.client(&server.login("admin", &source.admin_key()));
    admin
        .post("/api/groups", &json!({"name": "strasse"}))
        .expect_error(409, "name_conflict");
}
