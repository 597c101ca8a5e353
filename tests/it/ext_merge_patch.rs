//! [ext] JSON Merge Patch (RFC 7396) on `PATCH /api/groups/{id}` sent as
//! `application/merge-patch+json`: the same rules as a PUT body, all or nothing. Also
//! a JSON Patch sequence Schemathesis found that used to panic in the patch library.

use serde_json::{json, Value};

use crate::support::{Options, Resp, TestServer};

fn merge(server: &TestServer, token: &str, id: &str, body: &[u8]) -> Resp {
    server
        .req("PATCH", &format!("/api/groups/{id}"))
        .bearer(token)
        .body_as("application/merge-patch+json", body)
        .send()
}

fn group(server: &TestServer, token: &str, id: &str) -> Value {
    server
        .req("GET", &format!("/api/groups/{id}"))
        .bearer(token)
        .send()
        .ok()
}

fn fields(v: &Value) -> Value {
    json!([v["name"], v["description"], v["devices"], v["lastModified"]])
}

#[test]
fn merge_patch_sets_replaces_and_clears() {
    let server = TestServer::start();
    let t = server.admin_token();
    let r = server
        .req("POST", "/api/groups")
        .bearer(&t)
        .json(&json!({"name": "Trucks", "description": "big", "devices": ["a", "b"]}))
        .send();
    let id = r.json()["id"].as_str().unwrap().to_string();
    let created = r.json();

    // Only the members present change; devices is replaced as a whole.
    let r = merge(&server, &t, &id, br#"{"devices": ["c", "a", "c"]}"#);
    let v = r.ok();
    assert_eq!(v["name"], "Trucks");
    assert_eq!(v["description"], "big");
    assert_eq!(v["devices"], json!(["c", "a"]));
    assert_eq!(r.etag(), "\"2\"");
    assert_eq!(v["creation"], created["creation"]);
    assert!(v["lastModified"].as_str() > created["lastModified"].as_str());

    // null removes: description becomes null, devices becomes [].
    let v = merge(
        &server,
        &t,
        &id,
        br#"{"description": null, "devices": null}"#,
    )
    .ok();
    assert_eq!(
        (v["description"].clone(), v["devices"].clone()),
        (Value::Null, json!([]))
    );

    // The name is trimmed like in a PUT; a charset parameter is fine; unknown members
    // (a whole group sent back) are ignored.
    let r = server
        .req("PATCH", &format!("/api/groups/{id}"))
        .bearer(&t)
        .body_as(
            "Application/Merge-Patch+JSON; charset=utf-8",
            br#"{"name": "  Vans ", "id": "grp-999", "creation": "x", "success": true}"#,
        )
        .send();
    let v = r.ok();
    assert_eq!(v["name"], "Vans");
    assert_eq!(v["id"], id.as_str());
    assert_eq!(r.etag(), "\"4\"");

    // An empty patch (or one equal to the group) changes nothing, not even the tag.
    let before = group(&server, &t, &id);
    let r = merge(&server, &t, &id, b"{}");
    r.ok();
    assert_eq!(r.etag(), "\"4\"");
    let r = merge(&server, &t, &id, br#"{"name": "Vans"}"#);
    assert_eq!(r.etag(), "\"4\"");
    assert_eq!(fields(&group(&server, &t, &id)), fields(&before));
}

#[test]
fn invalid_merge_patches_change_nothing() {
    let server =
        TestServer::with(Options::default().env("FLEETGROUPS_LIMITS_MAX_DEVICES_PER_GROUP", "10"));
    let t = server.admin_token();
    for name in ["Other", "Trucks"] {
        server
            .req("POST", "/api/groups")
            .bearer(&t)
            .json(&json!({"name": name, "devices": ["a"]}))
            .send()
            .ok();
    }
    let id = "grp-2";
    let before = group(&server, &t, id);
    for (body, field) in [
        (br#"{"name": null}"#.as_slice(), "name"),
        (br#"{"name": ""}"#, "name"),
        (br#"{"name": 5}"#, "name"),
        (br#"{"description": 1}"#, "description"),
        (br#"{"devices": "a"}"#, "devices"),
        (br#"{"devices": ["ok", " bad"]}"#, "devices[1]"),
        (br#"{"devices": {"0": "a"}}"#, "devices"),
        (br#"[{"op": "remove", "path": "/name"}]"#, "merge patch"),
        (br#""Trucks""#, "merge patch"),
        (br#"{"name": "x""#, "JSON"),
    ] {
        let v = merge(&server, &t, id, body).expect_error(400, "invalid_input");
        assert!(v["error"].as_str().unwrap().contains(field), "{field}: {v}");
    }
    // A body that is wrong on its own is 400 whatever the group or its If-Match.
    for target in [id, "grp-99"] {
        for (body, field) in [
            (b"-5931835954327".as_slice(), "merge patch"),
            (br#"{"description": -3.5e-110}"#, "description"),
            (br#"{"name": "  "}"#, "name"),
            (
                br#"{"devices": ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k"]}"#,
                "at most",
            ),
        ] {
            let v = server
                .req("PATCH", &format!("/api/groups/{target}"))
                .bearer(&t)
                .header("If-Match", "\"77\"")
                .body_as("application/merge-patch+json", body)
                .send()
                .expect_error(400, "invalid_input");
            assert!(v["error"].as_str().unwrap().contains(field), "{v}");
        }
    }
    merge(&server, &t, id, br#"{"name": "OTHER"}"#).expect_error(409, "name_conflict");
    merge(&server, &t, "grp-99", br#"{"name": "x"}"#).expect_error(404, "group_not_found");
    // A rename and back frees and takes the names in the index.
    assert_eq!(
        merge(&server, &t, id, br#"{"name": "x"}"#).ok()["name"],
        "x"
    );
    assert_eq!(
        merge(&server, &t, id, br#"{"name": "Trucks"}"#).ok()["name"],
        "Trucks"
    );
    let after = group(&server, &t, id);
    assert_eq!(after["devices"], before["devices"]);
    assert_eq!(after["description"], before["description"]);
    // Merge patch is a PATCH type only.
    server
        .req("PUT", &format!("/api/groups/{id}"))
        .bearer(&t)
        .body_as("application/merge-patch+json", br#"{"name": "x"}"#)
        .send()
        .expect_error(415, "unsupported_media_type");
    server
        .req("POST", "/api/groups")
        .bearer(&t)
        .body_as("application/merge-patch+json", br#"{"name": "x"}"#)
        .send()
        .expect_error(415, "unsupported_media_type");
    // Exactly one name is held per group: the index was not left half-changed.
    let all = server.req("GET", "/api/groups").bearer(&t).send().ok();
    let names: Vec<&str> = all["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["Other", "Trucks"]);
    // The freed intermediate name "x" is usable again, "Trucks" is not.
    server
        .req("POST", "/api/groups")
        .bearer(&t)
        .json(&json!({"name": "X"}))
        .send()
        .ok();
    server
        .req("POST", "/api/groups")
        .bearer(&t)
        .json(&json!({"name": "trucks"}))
        .send()
        .expect_error(409, "name_conflict");
}

#[test]
fn a_json_patch_failing_after_a_move_into_a_parent_is_400_and_changes_nothing() {
    let server = TestServer::start();
    let t = server.admin_token();
    let r = server
        .req("POST", "/api/groups")
        .bearer(&t)
        .json(&json!({"name": "G", "description": "d", "devices": ["a", "b"]}))
        .send();
    let before = r.json();
    let r = server
        .req("PATCH", "/api/groups/grp-1")
        .bearer(&t)
        .header("If-Match", "*")
        .body_as(
            "application/json-patch+json",
            br#"[{"op": "move", "from": "/devices/0", "path": "/devices"},
                 {"op": "remove", "path": "/description"},
                 {"op": "remove", "path": "/devices/7"}]"#,
        )
        .send();
    r.expect_error(400, "invalid_patch");
    let after = group(&server, &t, "grp-1");
    assert_eq!(fields(&after), fields(&before));
    assert!(!server.log().contains("panicked"), "{}", server.log());
}
