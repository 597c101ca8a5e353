//! The six Plaspy group endpoints (docs/api/http.md): the documentation example,
//! the envelope, IDs, timestamps, list order and scope, full replacement by PUT,
//! RFC 6902 PATCH (every op, atomicity, re-validation, its errors) and DELETE.

use serde_json::{json, Value};

use crate::support::{is_timestamp, now_ms, timestamp_ms, without_envelope, Client, TestServer};

/// The example body from the Plaspy documentation, verbatim.
fn plaspy_example() -> Value {
    json!({"name": "New Group", "description": "Description of the new group", "devices": ["dev-456", "dev-789"]})
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
    k.sort();
    k
}

fn sorted(names: &[&str]) -> Vec<String> {
    let mut k: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    k.sort();
    k
}

/// Plaspy's fields, and `origin` [ext] (`local` here; `office` for an office group),
/// which Plaspy clients ignore.
const GROUP_FIELDS: [&str; 7] = [
    "id",
    "name",
    "description",
    "devices",
    "creation",
    "lastModified",
    "origin",
];

#[test]
fn plaspy_documentation_example_creates_a_group() {
    let server = TestServer::start();
    let admin = server.client(&server.admin_token());
    let before = now_ms();

    let r = admin.post("/api/groups", &plaspy_example());
    let v = r.expect_ok(201);
    assert_eq!(r.header("location"), Some("/api/groups/grp-1"));
    // The envelope comes first, then the group's fields at the top level.
    assert!(
        r.text()
            .starts_with(r#"{"success":true,"error":null,"apiUsage":1,"apiDailyUsage":1,"#),
        "{}",
        r.text()
    );
    let mut expected = vec!["success", "error", "apiUsage", "apiDailyUsage"];
    expected.extend(GROUP_FIELDS);
    assert_eq!(keys(&v), sorted(&expected));
    assert_eq!(v["id"], "grp-1");
    assert_eq!(v["origin"], "local");
    assert_eq!(v["name"], "New Group");
    assert_eq!(v["description"], "Description of the new group");
    assert_eq!(v["devices"], json!(["dev-456", "dev-789"]));
    let creation = v["creation"].as_str().expect("creation");
    assert!(is_timestamp(creation), "{creation}");
    assert_eq!(v["lastModified"], v["creation"]);
    let t = timestamp_ms(creation);
    assert!(
        (before - 1000..=now_ms() + 1000).contains(&t),
        "creation {creation} is not now"
    );

    // GET shows exactly what the create answered.
    let got = admin.get("/api/groups/grp-1").expect_ok(200);
    assert_eq!(got["apiUsage"], 2);
    assert_eq!(without_envelope(got), without_envelope(v.clone()));
    let list = admin.get("/api/groups").expect_ok(200);
    assert_eq!(
        keys(&list),
        sorted(&["success", "error", "apiUsage", "apiDailyUsage", "groups"])
    );
    assert_eq!(list["groups"], json!([without_envelope(v)]));
}

#[test]
fn ids_increase_and_are_never_reused() {
    let mut server = TestServer::start();
    let token = server.admin_token();
    let ids = |server: &TestServer, token: &str, n: usize| -> Vec<String> {
        let c = server.client(token);
        (0..n)
            .map(|_| {
                c.create(&json!({"name": format!("g{}", unique())}))["id"]
                    .as_str()
                    .expect("id")
                    .to_string()
            })
            .collect()
    };
    assert_eq!(ids(&server, &token, 3), ["grp-1", "grp-2", "grp-3"]);
    let admin = server.client(&token);
    admin.delete("/api/groups/grp-3").expect_ok(200);
    admin.delete("/api/groups/grp-2").expect_ok(200);
    assert_eq!(ids(&server, &token, 1), ["grp-4"], "deleted IDs stay used");

    // After a graceful restart …
    admin.delete("/api/groups/grp-4").expect_ok(200);
    assert!(server.stop().success());
    server.restart();
    let token = server.admin_token();
    assert_eq!(ids(&server, &token, 1), ["grp-5"]);

    // … and after a crash right after deleting the newest group.
    server
        .client(&token)
        .delete("/api/groups/grp-5")
        .expect_ok(200);
    server.kill9();
    server.restart();
    let token = server.admin_token();
    // A crash skips the rest of the durable ID reservation (at most 128 numbers):
    // never a number that may have been handed out.
    let after_crash = ids(&server, &token, 1).remove(0);
    let n: u64 = after_crash
        .trim_start_matches("grp-")
        .parse()
        .expect("number");
    assert!((6..=6 + 128).contains(&n), "{after_crash}");
    let listed: Vec<Value> = server
        .client(&token)
        .groups()
        .iter()
        .map(|g| g["id"].clone())
        .collect();
    assert_eq!(listed, [json!("grp-1"), json!(after_crash)]);
}

/// A number not used before in this test process (for distinct group names).
fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    N.fetch_add(1, Ordering::Relaxed)
}

#[test]
fn list_is_ordered_by_id_number_and_holds_only_the_callers_account() {
    let mut server = TestServer::unstarted(Default::default());
    let admin_key = server.cli(&["user", "add", "admin"]).key();
    let colleague_key = server.cli(&["user", "add", "colleague"]).key();
    let other_key = server
        .cli(&["user", "add", "other", "--account", "acme"])
        .key();
    server.restart();
    let admin = server.client(&server.login("admin", &admin_key));
    let colleague = server.client(&server.login("colleague", &colleague_key));
    let other = server.client(&server.login("other", &other_key));

    assert_eq!(admin.groups(), Vec::<Value>::new());
    // Eleven groups, so grp-10 and grp-11 must come after grp-9 (numeric, not text order).
    for i in 1..=11 {
        admin.create(&json!({"name": format!("fleet {i}")}));
    }
    let theirs = other.create(&json!({"name": "fleet 1"}));
    assert_eq!(theirs["id"], "grp-12");

    let ids = |c: &Client<'_>| -> Vec<String> {
        c.groups()
            .iter()
            .map(|g| g["id"].as_str().expect("id").to_string())
            .collect()
    };
    let expected: Vec<String> = (1..=11).map(|i| format!("grp-{i}")).collect();
    assert_eq!(ids(&admin), expected);
    assert_eq!(
        ids(&colleague),
        expected,
        "users of one account share groups"
    );
    assert_eq!(ids(&other), ["grp-12"]);
    for g in admin.groups() {
        assert_eq!(keys(&g), sorted(&GROUP_FIELDS));
    }
}

#[test]
fn put_replaces_the_whole_group() {
    let server = TestServer::start();
    let admin = server.client(&server.admin_token());
    let created = admin.create(&plaspy_example());

    // Left-out fields take their defaults; unknown fields (a client sending back what
    // it read) are ignored, including an `id` and timestamps it may not change.
    let v = admin
        .put(
            "/api/groups/grp-1",
            &json!({"name": "  Renamed  ", "id": "grp-77", "creation": "1999-01-01T00:00:00.000Z", "success": true}),
        )
        .expect_ok(200);
    assert_eq!(v["id"], "grp-1");
    assert_eq!(v["name"], "Renamed");
    assert_eq!(v["description"], Value::Null);
    assert_eq!(v["devices"], json!([]));
    assert_eq!(v["creation"], created["creation"]);
    assert!(v["lastModified"].as_str() > created["lastModified"].as_str());
    assert_eq!(admin.group("grp-1"), without_envelope(v));

    // `null` is the same as leaving a field out.
    let v = admin
        .put(
            "/api/groups/grp-1",
            &json!({"name": "Renamed", "description": "back", "devices": ["a", "b"]}),
        )
        .expect_ok(200);
    assert_eq!(
        (v["description"].clone(), v["devices"].clone()),
        (json!("back"), json!(["a", "b"]))
    );
    let v = admin
        .put(
            "/api/groups/grp-1",
            &json!({"name": "Renamed", "description": null, "devices": null}),
        )
        .expect_ok(200);
    assert_eq!(
        (v["description"].clone(), v["devices"].clone()),
        (Value::Null, json!([]))
    );

    admin
        .put("/api/groups/grp-2", &json!({"name": "x"}))
        .expect_error_message(404, "group_not_found", "Group not found");
    assert_eq!(admin.groups().len(), 1, "PUT never creates");
}

#[test]
fn last_modified_strictly_increases_and_creation_never_changes() {
    let server = TestServer::start();
    let admin = server.client(&server.admin_token());
    let created = admin.create(&json!({"name": "Vans"}));
    let mut last = created["lastModified"].as_str().expect("ts").to_string();
    // Back-to-back changes, several within one millisecond on a fast machine.
    for i in 0..12 {
        let v = if i % 2 == 0 {
            admin.put(
                "/api/groups/grp-1",
                &json!({"name": "Vans", "devices": [format!("d{i}")]}),
            )
        } else {
            admin.patch(
                "/api/groups/grp-1",
                &json!([{"op": "add", "path": "/devices/-", "value": format!("e{i}")}]),
            )
        }
        .expect_ok(200);
        let now = v["lastModified"].as_str().expect("ts").to_string();
        assert!(is_timestamp(&now), "{now}");
        assert!(now > last, "lastModified went from {last} to {now}");
        assert_eq!(v["creation"], created["creation"]);
        last = now;
    }
    assert_eq!(admin.group("grp-1")["lastModified"], json!(last));
}

#[test]
fn patch_applies_every_operation_in_order() {
    let server = TestServer::start();
    let admin = server.client(&server.admin_token());
    admin.create(&json!({"name": "Trucks", "devices": ["a", "b"]}));

    let v = admin
        .patch(
            "/api/groups/grp-1",
            &json!([
                {"op": "test", "path": "/name", "value": "Trucks"},
                {"op": "test", "path": "/description", "value": null},
                {"op": "add", "path": "/devices/-", "value": "c"},
                {"op": "add", "path": "/devices/0", "value": "first"},
                {"op": "replace", "path": "/name", "value": "Big trucks"},
                {"op": "remove", "path": "/devices/1"},
                {"op": "copy", "from": "/name", "path": "/description"},
                {"op": "move", "from": "/devices/0", "path": "/devices/-"},
                {"op": "test", "path": "/devices", "value": ["b", "c", "first"]}
            ]),
        )
        .expect_ok(200);
    assert_eq!(v["name"], "Big trucks");
    assert_eq!(v["description"], "Big trucks");
    assert_eq!(v["devices"], json!(["b", "c", "first"]));
    assert_eq!(admin.group("grp-1"), without_envelope(v));

    // The same with the JSON Patch media type; replacing the whole list and removing
    // the description (back to null).
    let v = admin
        .req("PATCH", "/api/groups/grp-1")
        .body_as(
            "application/json-patch+json",
            br#"[{"op":"replace","path":"/devices","value":["z","z","y"]},{"op":"remove","path":"/description"}]"#,
        )
        .send()
        .expect_ok(200);
    assert_eq!(v["devices"], json!(["z", "y"]), "duplicates dropped");
    assert_eq!(v["description"], Value::Null);

    // An empty patch changes nothing.
    let before = admin.group("grp-1");
    let v = admin.patch("/api/groups/grp-1", &json!([])).expect_ok(200);
    assert_eq!(without_envelope(v), before);
}

#[test]
fn patch_is_atomic_and_its_result_is_validated() {
    let server = TestServer::start();
    let admin = server.client(&server.admin_token());
    admin.create(&json!({"name": "Trucks", "devices": ["a", "b"]}));
    admin.create(&json!({"name": "Vans"}));
    let before = admin.group("grp-1");

    // A later operation fails: the earlier ones do not stick.
    let r = admin.patch(
        "/api/groups/grp-1",
        &json!([
            {"op": "replace", "path": "/name", "value": "Changed"},
            {"op": "add", "path": "/devices/-", "value": "c"},
            {"op": "remove", "path": "/devices/9"}
        ]),
    );
    let e = r.expect_error(400, "invalid_patch");
    assert!(e["error"]
        .as_str()
        .expect("msg")
        .starts_with("Invalid patch operation"));
    assert_eq!(admin.group("grp-1"), before);

    let r = admin.patch(
        "/api/groups/grp-1",
        &json!([
            {"op": "replace", "path": "/name", "value": "Changed"},
            {"op": "test", "path": "/devices/0", "value": "not a"}
        ]),
    );
    r.expect_error_message(409, "patch_test_failed", "Patch test failed: /devices/0");
    assert_eq!(admin.group("grp-1"), before);

    // The result must pass the rules of a PUT body.
    let cases: Vec<(Value, &str)> = vec![
        (
            json!([{"op": "replace", "path": "/name", "value": "   "}]),
            "Invalid input: name must not be empty",
        ),
        (
            json!([{"op": "remove", "path": "/name"}]),
            "Invalid input: name is required",
        ),
        (
            json!([{"op": "replace", "path": "/name", "value": 7}]),
            "Invalid input: name must be a string",
        ),
        (
            json!([{"op": "add", "path": "/devices/-", "value": " padded"}]),
            "Invalid input: devices[2] must not start or end with white space",
        ),
        (
            json!([{"op": "replace", "path": "/devices", "value": "a"}]),
            "Invalid input: devices must be an array of strings",
        ),
        (
            json!([{"op": "replace", "path": "/description", "value": "x".repeat(1025)}]),
            "Invalid input: description must be at most 1024 characters",
        ),
    ];
    for (patch, message) in cases {
        admin
            .patch("/api/groups/grp-1", &patch)
            .expect_error_message(400, "invalid_input", message);
        assert_eq!(admin.group("grp-1"), before, "after {patch}");
    }
    // Renaming onto another group's name, in any case, conflicts.
    admin
        .patch(
            "/api/groups/grp-1",
            &json!([{"op": "replace", "path": "/name", "value": "vANS"}]),
        )
        .expect_error_message(409, "name_conflict", "Group name already exists");
    assert_eq!(admin.group("grp-1"), before);
    // Trimming and de-duplication apply to the patched result too.
    let v = admin
        .patch(
            "/api/groups/grp-1",
            &json!([
                {"op": "replace", "path": "/name", "value": "  Trucks 2 "},
                {"op": "add", "path": "/devices/-", "value": "a"}
            ]),
        )
        .expect_ok(200);
    assert_eq!(
        (v["name"].clone(), v["devices"].clone()),
        (json!("Trucks 2"), json!(["a", "b"]))
    );
}

#[test]
fn patch_refuses_malformed_operations_and_paths_outside_the_group() {
    let server = TestServer::start();
    let admin = server.client(&server.admin_token());
    admin.create(&json!({"name": "Trucks", "devices": ["a"]}));
    let before = admin.group("grp-1");

    let invalid_patch = [
        json!([{"op": "frobnicate", "path": "/name", "value": "x"}]),
        json!([{"op": "ADD", "path": "/name", "value": "x"}]),
        json!([{"path": "/name", "value": "x"}]),
        json!([{"op": 1, "path": "/name", "value": "x"}]),
        json!([{"op": "add", "value": "x"}]),
        json!([{"op": "add", "path": "/name"}]),
        json!([{"op": "move", "path": "/name"}]),
        json!([{"op": "add", "path": "name", "value": "x"}]),
        json!(["not an operation"]),
        json!([{"op": "add", "path": "/id", "value": "grp-9"}]),
        json!([{"op": "replace", "path": "/creation", "value": "2020-01-01T00:00:00.000Z"}]),
        json!([{"op": "add", "path": "/lastModified", "value": "x"}]),
        json!([{"op": "add", "path": "/owner", "value": "x"}]),
        json!([{"op": "replace", "path": "", "value": {"name": "x"}}]),
        json!([{"op": "remove", "path": "/"}]),
        json!([{"op": "copy", "from": "/id", "path": "/name"}]),
        json!([{"op": "move", "from": "/creation", "path": "/description"}]),
        json!([{"op": "remove", "path": "/devices/5"}]),
        json!([{"op": "replace", "path": "/devices/x", "value": "b"}]),
        json!([{"op": "add", "path": "/name/first", "value": "b"}]),
    ];
    for patch in invalid_patch {
        let e = admin
            .patch("/api/groups/grp-1", &patch)
            .expect_error(400, "invalid_patch");
        assert!(
            e["error"]
                .as_str()
                .expect("msg")
                .starts_with("Invalid patch operation: "),
            "{patch}: {e}"
        );
        assert_eq!(admin.group("grp-1"), before, "after {patch}");
    }
    // A body that is not an array at all is invalid input, not a bad operation.
    for body in [
        json!({"op": "add", "path": "/name", "value": "x"}),
        json!("x"),
        json!(null),
    ] {
        let e = admin
            .patch("/api/groups/grp-1", &body)
            .expect_error(400, "invalid_input");
        assert!(e["error"]
            .as_str()
            .expect("msg")
            .starts_with("Invalid input: "));
    }
    // A failed test is a conflict, whether the value differs or is not there at all.
    for (path, value) in [
        ("/name", json!("Vans")),
        ("/devices/3", json!("a")),
        ("/description", json!("")),
    ] {
        admin
            .patch(
                "/api/groups/grp-1",
                &json!([{"op": "test", "path": path, "value": value}]),
            )
            .expect_error_message(
                409,
                "patch_test_failed",
                &format!("Patch test failed: {path}"),
            );
    }
    assert_eq!(admin.group("grp-1"), before);
    admin
        .patch("/api/groups/grp-2", &json!([]))
        .expect_error_message(404, "group_not_found", "Group not found");
}

#[test]
fn delete_answers_the_envelope_alone_and_frees_the_name() {
    let server = TestServer::start();
    let admin = server.client(&server.admin_token());
    admin.create(&plaspy_example());
    admin.create(&json!({"name": "Other"}));

    let r = admin.delete("/api/groups/grp-1");
    let v = r.expect_ok(200);
    assert_eq!(
        keys(&v),
        sorted(&["success", "error", "apiUsage", "apiDailyUsage"])
    );
    assert_eq!(r.header("location"), None);
    admin
        .get("/api/groups/grp-1")
        .expect_error_message(404, "group_not_found", "Group not found");
    admin.delete("/api/groups/grp-1").expect_error_message(
        404,
        "group_not_found",
        "Group not found",
    );
    assert_eq!(admin.groups().len(), 1);
    // The name may be used again, by a new group with a new ID.
    let again = admin.create(&json!({"name": "new group"}));
    assert_eq!(again["id"], "grp-3");
}

#[test]
fn concurrent_creates_get_distinct_ids_and_one_name_wins_once() {
    let server = TestServer::start();
    let token = server.admin_token();
    let answers: Vec<(u16, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let server = &server;
                let token = token.as_str();
                s.spawn(move || {
                    let c = server.client(token);
                    let same = c.post("/api/groups", &json!({"name": "Contested"}));
                    let own = c.post("/api/groups", &json!({"name": format!("own {i}")}));
                    [(same.status, same.json()), (own.status, own.json())]
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("thread"))
            .collect()
    });
    let created: Vec<&Value> = answers
        .iter()
        .filter(|(status, _)| *status == 201)
        .map(|(_, v)| v)
        .collect();
    let conflicts = answers
        .iter()
        .filter(|(status, v)| *status == 409 && v["errorCode"] == "name_conflict")
        .count();
    assert_eq!(
        created.len(),
        9,
        "eight own names and one Contested: {answers:?}"
    );
    assert_eq!(conflicts, 7);
    let mut ids: Vec<u64> = created
        .iter()
        .map(|v| {
            v["id"].as_str().expect("id")["grp-".len()..]
                .parse()
                .expect("number")
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 9, "distinct IDs");
    let admin = server.client(&token);
    let listed = admin.groups();
    assert_eq!(listed.len(), 9);
    assert_eq!(
        listed.iter().filter(|g| g["name"] == "Contested").count(),
        1
    );
}
