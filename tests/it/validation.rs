//! Every rule of the group resource (docs/api/http.md "The group") through POST and PUT: normalisation
//! (trimming, dropping duplicate devices), the limits at their exact edges, wrong
//! types naming the field, unknown fields ignored, and case-insensitive name
//! uniqueness per account. Every refused body is followed by a look at the data to
//! show that nothing changed.

use serde_json::{json, Value};

use crate::support::{Options, TestServer};

/// Bodies that break one rule each, with the exact message.
fn bad_bodies() -> Vec<(Value, String)> {
    let mut cases: Vec<(Value, &str)> = vec![
        (json!({}), "name is required"),
        (json!({"name": null}), "name is required"),
        (json!({"description": "no name"}), "name is required"),
        (json!({"name": ""}), "name must not be empty"),
        (json!({"name": " \t\n "}), "name must not be empty"),
        (json!({"name": 5}), "name must be a string"),
        (json!({"name": ["a"]}), "name must be a string"),
        (json!({"name": {"text": "a"}}), "name must be a string"),
        (json!({"name": true}), "name must be a string"),
        (
            json!({"name": "x".repeat(129)}),
            "name must be at most 128 characters",
        ),
        (
            json!({"name": format!(" {} ", "é".repeat(129))}),
            "name must be at most 128 characters",
        ),
        (
            json!({"name": "tab\tinside"}),
            "name must not contain control characters",
        ),
        (
            json!({"name": "nul\u{0}"}),
            "name must not contain control characters",
        ),
        (
            json!({"name": "esc\u{1b}[31m"}),
            "name must not contain control characters",
        ),
        (
            json!({"name": "del\u{7f}"}),
            "name must not contain control characters",
        ),
        (
            json!({"name": "ok", "description": 5}),
            "description must be a string or null",
        ),
        (
            json!({"name": "ok", "description": ["x"]}),
            "description must be a string or null",
        ),
        (
            json!({"name": "ok", "description": "x".repeat(1025)}),
            "description must be at most 1024 characters",
        ),
        (
            json!({"name": "ok", "devices": "dev-1"}),
            "devices must be an array of strings",
        ),
        (
            json!({"name": "ok", "devices": {"0": "dev-1"}}),
            "devices must be an array of strings",
        ),
        (
            json!({"name": "ok", "devices": ["dev-1", 2]}),
            "devices[1] must be a string",
        ),
        (
            json!({"name": "ok", "devices": [null]}),
            "devices[0] must be a string",
        ),
        (
            json!({"name": "ok", "devices": [""]}),
            "devices[0] must not be empty",
        ),
        (
            json!({"name": "ok", "devices": ["a", "x".repeat(65)]}),
            "devices[1] must be at most 64 characters",
        ),
        (
            json!({"name": "ok", "devices": [" dev-1"]}),
            "devices[0] must not start or end with white space",
        ),
        (
            json!({"name": "ok", "devices": ["dev-1\t"]}),
            "devices[0] must not start or end with white space",
        ),
        (
            json!({"name": "ok", "devices": ["dev\u{0}1"]}),
            "devices[0] must not contain control characters",
        ),
        (
            json!({"name": "ok", "devices": ["d1", "d2", "d3", "d4"]}),
            "devices must hold at most 3 distinct IDs",
        ),
    ];
    cases
        .drain(..)
        .map(|(v, m)| (v, format!("Invalid input: {m}")))
        .collect()
}

fn three_devices_max() -> Options {
    Options::default().env("FLEETGROUPS_LIMITS_MAX_DEVICES_PER_GROUP", "3")
}

#[test]
fn every_broken_rule_is_refused_naming_the_field_and_changes_nothing() {
    let server = TestServer::with(three_devices_max());
    let admin = server.client(&server.admin_token());
    admin.create(&json!({"name": "Keep", "description": "as is", "devices": ["k1"]}));
    let before = admin.groups();

    for (body, message) in bad_bodies() {
        admin
            .post("/api/groups", &body)
            .expect_error_message(400, "invalid_input", &message);
        admin
            .put("/api/groups/grp-1", &body)
            .expect_error_message(400, "invalid_input", &message);
        assert_eq!(admin.groups(), before, "after {body}");
    }
    // Nothing was created, so the next ID is still the second one.
    assert_eq!(admin.create(&json!({"name": "Next"}))["id"], "grp-2");
}

#[test]
fn limits_hold_at_their_exact_edges() {
    let server = TestServer::with(three_devices_max());
    let admin = server.client(&server.admin_token());

    // Characters, not bytes: 128 two-byte characters fit, after trimming.
    let name = "é".repeat(128);
    let v = admin.create(
        &json!({"name": format!("  {name}\t"), "description": "ü".repeat(1024),
        "devices": ["d".repeat(64), "ü".repeat(64), "x"]}),
    );
    assert_eq!(v["name"], name.as_str());
    assert_eq!(
        v["description"].as_str().map(|s| s.chars().count()),
        Some(1024)
    );
    assert_eq!(v["devices"].as_array().map(Vec::len), Some(3));

    // One-character values, an empty description and inner white space are fine.
    let v = admin.create(&json!({"name": "a", "description": "", "devices": ["b", "dev 1"]}));
    assert_eq!(v["description"], "");
    assert_eq!(v["devices"], json!(["b", "dev 1"]));
    // Line breaks and tabs are text in a description.
    let v = admin.create(&json!({"name": "multi", "description": "line 1\nline 2\r\n\tend"}));
    assert_eq!(v["description"], "line 1\nline 2\r\n\tend");
}

#[test]
fn names_are_trimmed_and_duplicate_devices_dropped_keeping_order() {
    let server = TestServer::with(three_devices_max());
    let admin = server.client(&server.admin_token());
    let v = admin.create(&json!({
        "name": " \t Trucks North \n",
        "devices": ["d2", "d1", "d2", "d3", "d1", "d3"]
    }));
    assert_eq!(v["name"], "Trucks North");
    // Six entries, three distinct: under the limit of three, first occurrences kept.
    assert_eq!(v["devices"], json!(["d2", "d1", "d3"]));
    assert_eq!(v["description"], Value::Null);
    let v = admin
        .put(
            "/api/groups/grp-1",
            &json!({"name": "Trucks North", "devices": ["z", "z", "a"]}),
        )
        .expect_ok(200);
    assert_eq!(v["devices"], json!(["z", "a"]));
    // Device IDs are case-sensitive: these are two devices.
    let v = admin.create(&json!({"name": "Case", "devices": ["ABC", "abc"]}));
    assert_eq!(v["devices"], json!(["ABC", "abc"]));
    // Missing or null devices mean an empty list.
    let v = admin.create(&json!({"name": "Empty", "devices": null}));
    assert_eq!(v["devices"], json!([]));
}

#[test]
fn the_default_device_limit_is_ten_thousand() {
    let server = TestServer::start();
    let admin = server.client(&server.admin_token());
    let devices: Vec<String> = (0..10_000).map(|i| format!("dev-{i}")).collect();
    let v = admin.create(&json!({"name": "Big", "devices": devices}));
    assert_eq!(v["devices"].as_array().map(Vec::len), Some(10_000));
    let mut more = devices.clone();
    more.push("one-too-many".into());
    admin
        .put(
            "/api/groups/grp-1",
            &json!({"name": "Big", "devices": more}),
        )
        .expect_error_message(
            400,
            "invalid_input",
            "Invalid input: devices must hold at most 10000 distinct IDs",
        );
    assert_eq!(
        admin.group("grp-1")["devices"].as_array().map(Vec::len),
        Some(10_000)
    );
}

#[test]
fn unknown_fields_are_ignored() {
    let server = TestServer::start();
    let admin = server.client(&server.admin_token());
    let v = admin.create(&json!({
        "name": "Echo",
        "id": "grp-99",
        "creation": "2001-01-01T00:00:00.000Z",
        "lastModified": 5,
        "success": false,
        "error": "x",
        "apiUsage": 1000,
        "color": {"nested": [1, 2, 3]}
    }));
    assert_eq!(v["id"], "grp-1");
    assert_ne!(v["creation"], "2001-01-01T00:00:00.000Z");
    assert!(v.get("color").is_none());
    assert_eq!(v["success"], true);
    assert_eq!(v["apiUsage"], 1);
    // Sending back exactly what was read is a valid PUT.
    let read = admin.get("/api/groups/grp-1").expect_ok(200);
    let v = admin.put("/api/groups/grp-1", &read).expect_ok(200);
    assert_eq!(v["name"], "Echo");
}

#[test]
fn names_are_unique_per_account_ignoring_case() {
    let (server, admin_token, other_token) = TestServer::two_accounts();
    let admin = server.client(&admin_token);
    let other = server.client(&other_token);

    admin.create(&json!({"name": "Trucks"}));
    admin.create(&json!({"name": "Vans"}));
    let before = admin.groups();
    for name in ["Trucks", "TRUCKS", "trucks", "  tRuCkS  "] {
        admin
            .post("/api/groups", &json!({"name": name}))
            .expect_error_message(409, "name_conflict", "Group name already exists");
        admin
            .put("/api/groups/grp-2", &json!({"name": name}))
            .expect_error_message(409, "name_conflict", "Group name already exists");
    }
    assert_eq!(admin.groups(), before);
    // Unicode case folding too.
    admin.create(&json!({"name": "Öl"}));
    admin
        .post("/api/groups", &json!({"name": "öL"}))
        .expect_error(409, "name_conflict");

    // A group may change the case of its own name.
    let v = admin
        .put("/api/groups/grp-1", &json!({"name": "TRUCKS"}))
        .expect_ok(200);
    assert_eq!(v["name"], "TRUCKS");
    // Another account may use the same name.
    let theirs = other.create(&json!({"name": "trucks"}));
    assert_eq!(theirs["name"], "trucks");
    // A renamed group frees its old name.
    admin
        .put("/api/groups/grp-1", &json!({"name": "Lorries"}))
        .expect_ok(200);
    admin.create(&json!({"name": "Trucks"}));
}

#[test]
fn a_device_may_belong_to_any_number_of_groups() {
    let server = TestServer::start();
    let admin = server.client(&server.admin_token());
    for name in ["North", "South", "Refrigerated"] {
        let v = admin.create(&json!({"name": name, "devices": ["truck-7", "truck-9"]}));
        assert_eq!(v["devices"], json!(["truck-7", "truck-9"]));
    }
    // Device IDs are not checked against any registry.
    let v = admin
        .create(&json!({"name": "Future", "devices": ["not-seen-yet", "IMEI:356938035643809"]}));
    assert_eq!(
        v["devices"],
        json!(["not-seen-yet", "IMEI:356938035643809"])
    );
    assert_eq!(admin.groups().len(), 4);
}
