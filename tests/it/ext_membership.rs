//! [ext] Membership calls (`POST /api/groups/{id}/devices`, `DELETE
//! /api/groups/{id}/devices/{deviceId}`) and the reverse lookup (`GET
//! /api/devices/{deviceId}/groups`): idempotent, atomic, limited, percent-decoded,
//! scoped to the caller's account, and consistent under concurrent writers.

use serde_json::{json, Value};

use crate::support::{group_ids_of, Options, TestServer};

fn create(server: &TestServer, token: &str, body: Value) -> String {
    server.client(token).create(&body)["id"]
        .as_str()
        .expect("the answer has this shape")
        .to_string()
}

fn add(server: &TestServer, token: &str, id: &str, devices: Value) -> (u16, Value) {
    let r = server
        .req("POST", &format!("/api/groups/{id}/devices"))
        .bearer(token)
        .json(&json!({ "devices": devices }))
        .send();
    (r.status, r.json())
}

fn group(server: &TestServer, token: &str, id: &str) -> Value {
    server
        .req("GET", &format!("/api/groups/{id}"))
        .bearer(token)
        .send()
        .ok()
}

/// IDs of the groups a reverse lookup answers, given the encoded device ID.
fn lookup(server: &TestServer, token: &str, encoded: &str) -> Vec<String> {
    group_ids_of(
        &server
            .req("GET", &format!("/api/devices/{encoded}/groups"))
            .bearer(token)
            .send()
            .ok(),
    )
}

#[test]
fn add_and_remove_are_idempotent_and_keep_order() {
    let server = TestServer::start();
    let t = server.admin_token();
    let id = create(&server, &t, json!({"name": "G", "devices": ["x"]}));
    let (s, v) = add(&server, &t, &id, json!(["a", "b", "a", "x"]));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["added"], json!(["a", "b"]));
    assert_eq!(v["devices"], json!(["x", "a", "b"]));
    assert_eq!(v["success"], true);
    let (_, v) = add(&server, &t, &id, json!(["b", "c"]));
    assert_eq!(v["added"], json!(["c"]));
    assert_eq!(v["devices"], json!(["x", "a", "b", "c"]));
    let modified = v["lastModified"].clone();
    // Retrying changes nothing: same devices, same revision, same lastModified.
    let r = server
        .req("POST", &format!("/api/groups/{id}/devices"))
        .bearer(&t)
        .json(&json!({"devices": ["b", "c"]}))
        .send();
    let v = r.ok();
    assert_eq!(v["added"], json!([]));
    assert_eq!(v["lastModified"], modified);
    assert_eq!(r.etag(), "\"3\"");
    // An empty list is a no-op too.
    assert_eq!(add(&server, &t, &id, json!([])).1["added"], json!([]));

    let del = |d: &str| {
        server
            .req("DELETE", &format!("/api/groups/{id}/devices/{d}"))
            .bearer(&t)
            .send()
    };
    let r = del("a");
    let v = r.ok();
    assert_eq!(v["removed"], true);
    assert_eq!(v["devices"], json!(["x", "b", "c"]));
    assert_eq!(r.etag(), "\"4\"");
    let r = del("a");
    assert_eq!(r.ok()["removed"], false);
    assert_eq!(r.etag(), "\"4\"");
    assert_eq!(group(&server, &t, &id)["devices"], json!(["x", "b", "c"]));
}

#[test]
fn device_ids_in_paths_are_percent_decoded() {
    let server = TestServer::start();
    let t = server.admin_token();
    let weird = ["a/b", "x y", "p+q", "é-ü", "日本", "100%", "q?r#s"];
    let id = create(&server, &t, json!({"name": "Weird", "devices": weird}));
    let other = create(&server, &t, json!({"name": "Plain", "devices": ["x y"]}));
    // (encoded, decoded)
    let cases = [
        ("a%2Fb", "a/b"),
        ("x%20y", "x y"),
        ("p+q", "p+q"),
        ("%C3%A9-%C3%BC", "é-ü"),
        ("%E6%97%A5%E6%9C%AC", "日本"),
        ("100%25", "100%"),
        ("q%3Fr%23s", "q?r#s"),
    ];
    for (encoded, decoded) in cases {
        let expect: Vec<String> = if decoded == "x y" {
            vec![id.clone(), other.clone()]
        } else {
            vec![id.clone()]
        };
        assert_eq!(lookup(&server, &t, encoded), expect, "{decoded}");
    }
    // `+` in a path is a plus, not a space.
    assert!(lookup(&server, &t, "p%20q").is_empty());
    for (encoded, decoded) in cases {
        let r = server
            .req("DELETE", &format!("/api/groups/{id}/devices/{encoded}"))
            .bearer(&t)
            .send();
        let v = r.ok();
        assert_eq!(v["removed"], true, "{decoded}: {v}");
        assert!(!v["devices"].as_array().unwrap().contains(&json!(decoded)));
    }
    assert_eq!(group(&server, &t, &id)["devices"], json!([]));
    assert_eq!(lookup(&server, &t, "x%20y"), vec![other]);
    // An unencoded slash is another path.
    server
        .req("DELETE", &format!("/api/groups/{id}/devices/a/b"))
        .bearer(&t)
        .send()
        .expect_error(404, "not_found");
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let server =
        TestServer::with(Options::default().env("FLEETGROUPS_LIMITS_MAX_DEVICES_PER_GROUP", "3"));
    let t = server.admin_token();
    let id = create(&server, &t, json!({"name": "G", "devices": ["a"]}));
    let before = group(&server, &t, &id);
    let post = |body: &[u8]| {
        server
            .req("POST", &format!("/api/groups/{id}/devices"))
            .bearer(&t)
            .body_as("application/json", body)
            .send()
    };
    for (body, field) in [
        (br#"{"devices": ["b", 7]}"#.as_slice(), "devices[1]"),
        (br#"{"devices": ["b", ""]}"#, "devices[1]"),
        (br#"{"devices": [" b"]}"#, "devices[0]"),
        (br#"{"devices": "b"}"#, "devices"),
        (br#"{"devices": null}"#, "devices"),
        (br#"{}"#, "devices"),
        (br#"["b"]"#, "object"),
        (br#"{"devices": ["b", "c", "d"]}"#, "at most 3"),
        (br#"{"devices": [1"#, "JSON"),
    ] {
        let v = post(body).expect_error(400, "invalid_input");
        assert!(v["error"].as_str().unwrap().contains(field), "{field}: {v}");
    }
    // Exactly at the limit is fine.
    assert_eq!(
        add(&server, &t, &id, json!(["b", "c", "a"])).1["added"],
        json!(["b", "c"])
    );
    let v = post(br#"{"devices": ["d"]}"#).expect_error(400, "invalid_input");
    assert!(v["error"].as_str().unwrap().contains("at most 3"), "{v}");
    let after = group(&server, &t, &id);
    assert_eq!(after["devices"], json!(["a", "b", "c"]));
    assert_ne!(before["lastModified"], after["lastModified"]);

    let del = |path: &str| server.req("DELETE", path).bearer(&t).send();
    del(&format!("/api/groups/{id}/devices/%20a")).expect_error(400, "invalid_input");
    del(&format!("/api/groups/{id}/devices/%zz")).expect_error(400, "invalid_input");
    del(&format!("/api/groups/{id}/devices/%FF")).expect_error(400, "invalid_input");
    del(&format!("/api/groups/{id}/devices/{}", "x".repeat(65))).expect_error(400, "invalid_input");
    del("/api/groups/grp-99/devices/a").expect_error(404, "group_not_found");
    server
        .req("POST", "/api/groups/grp-99/devices")
        .bearer(&t)
        .json(&json!({"devices": ["a"]}))
        .send()
        .expect_error(404, "group_not_found");
    server
        .req("POST", &format!("/api/groups/{id}/devices"))
        .bearer(&t)
        .body_as("text/plain", b"a")
        .send()
        .expect_error(415, "unsupported_media_type");
    server
        .req("GET", &format!("/api/groups/{id}/devices"))
        .bearer(&t)
        .send()
        .expect_error(405, "method_not_allowed");
    server
        .req("GET", "/api/devices/%20a/groups")
        .bearer(&t)
        .send()
        .expect_error(400, "invalid_input");
    assert_eq!(group(&server, &t, &id)["devices"], json!(["a", "b", "c"]));

    // A read user may look up but not change membership; another account sees nothing.
    let reader = server.add_user("reader", &["--role", "read"]);
    let stranger = server.add_user("stranger", &["--account", "other"]);
    let (reader, stranger) = (
        server.login("reader", &reader),
        server.login("stranger", &stranger),
    );
    let t = server.admin_token();
    assert_eq!(lookup(&server, &reader, "a"), vec![id.clone()]);
    server
        .req("DELETE", &format!("/api/groups/{id}/devices/a"))
        .bearer(&reader)
        .send()
        .expect_error(403, "forbidden");
    assert_eq!(add(&server, &reader, &id, json!(["z"])).0, 403);
    assert!(lookup(&server, &stranger, "a").is_empty());
    assert_eq!(
        add(&server, &stranger, &id, json!(["z"])).1["errorCode"],
        "group_not_found"
    );
    server
        .req("DELETE", &format!("/api/groups/{id}/devices/a"))
        .bearer(&stranger)
        .send()
        .expect_error(404, "group_not_found");
    assert_eq!(group(&server, &t, &id)["devices"], json!(["a", "b", "c"]));
}

#[test]
fn concurrent_membership_changes_are_atomic() {
    let server = TestServer::start();
    let t = server.admin_token();
    let id = create(&server, &t, json!({"name": "Busy"}));
    // Eight writers add their own devices and one shared device at the same time.
    let answers: Vec<Value> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|i| {
                let (server, t, id) = (&server, &t, &id);
                s.spawn(move || {
                    let (status, v) = add(
                        server,
                        t,
                        id,
                        json!([format!("own-{i}-a"), "shared", format!("own-{i}-b")]),
                    );
                    assert_eq!(status, 200, "{v}");
                    v
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let shared_added = answers
        .iter()
        .filter(|v| v["added"].as_array().unwrap().contains(&json!("shared")))
        .count();
    assert_eq!(
        shared_added, 1,
        "exactly one writer added the shared device"
    );
    let devices = group(&server, &t, &id)["devices"].clone();
    let devices = devices.as_array().unwrap();
    assert_eq!(devices.len(), 17);
    for i in 0..8 {
        let a = devices
            .iter()
            .position(|d| *d == json!(format!("own-{i}-a")))
            .unwrap();
        let b = devices
            .iter()
            .position(|d| *d == json!(format!("own-{i}-b")))
            .unwrap();
        assert!(a < b, "each writer's devices stay in its order");
    }
    // Concurrent removals of the same device: exactly one removes it.
    let removed: Vec<bool> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..6)
            .map(|_| {
                s.spawn(|| {
                    server
                        .req("DELETE", &format!("/api/groups/{id}/devices/shared"))
                        .bearer(&t)
                        .send()
                        .ok()["removed"]
                        .as_bool()
                        .unwrap()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(removed.iter().filter(|r| **r).count(), 1, "{removed:?}");
    assert!(lookup(&server, &t, "shared").is_empty());
    assert_eq!(lookup(&server, &t, "own-3-b"), vec![id]);
}

#[test]
fn reverse_lookup_follows_every_kind_of_change() {
    let mut server = TestServer::start();
    let t = server.admin_token();
    let g1 = create(&server, &t, json!({"name": "One", "devices": ["dev", "x"]}));
    let g2 = create(&server, &t, json!({"name": "Two", "devices": ["y"]}));
    let g3 = create(&server, &t, json!({"name": "Three", "devices": ["dev"]}));
    assert_eq!(lookup(&server, &t, "dev"), vec![g1.clone(), g3.clone()]);
    let v = server
        .req("GET", "/api/devices/nobody/groups")
        .bearer(&t)
        .send()
        .ok();
    assert_eq!(v["groups"], json!([]));
    assert!(v["apiUsage"].is_u64());
    // The answer's groups are whole group objects, as in the list.
    let v = server
        .req("GET", "/api/devices/dev/groups")
        .bearer(&t)
        .send()
        .ok();
    assert_eq!(v["groups"][0], {
        let mut g = group(&server, &t, &g1);
        let o = g.as_object_mut().unwrap();
        for k in ["success", "error", "apiUsage", "apiDailyUsage"] {
            o.remove(k);
        }
        g
    });
    // Membership call, PUT, JSON Patch, Merge Patch, DELETE: the index follows each.
    add(&server, &t, &g2, json!(["dev"]));
    assert_eq!(
        lookup(&server, &t, "dev"),
        vec![g1.clone(), g2.clone(), g3.clone()]
    );
    server
        .req("PUT", &format!("/api/groups/{g1}"))
        .bearer(&t)
        .json(&json!({"name": "One", "devices": ["x"]}))
        .send()
        .ok();
    assert_eq!(lookup(&server, &t, "dev"), vec![g2.clone(), g3.clone()]);
    server
        .req("PATCH", &format!("/api/groups/{g1}"))
        .bearer(&t)
        .json(&json!([{"op": "add", "path": "/devices/-", "value": "dev"}]))
        .send()
        .ok();
    server
        .req("PATCH", &format!("/api/groups/{g2}"))
        .bearer(&t)
        .body_as("application/merge-patch+json", br#"{"devices": ["y"]}"#)
        .send()
        .ok();
    assert_eq!(lookup(&server, &t, "dev"), vec![g1.clone(), g3.clone()]);
    server
        .req("DELETE", &format!("/api/groups/{g3}"))
        .bearer(&t)
        .send()
        .ok();
    assert_eq!(lookup(&server, &t, "dev"), vec![g1.clone()]);
    // The index is on disk with the groups.
    server.stop();
    server.restart();
    let t = server.admin_token();
    assert_eq!(lookup(&server, &t, "dev"), vec![g1]);
    assert_eq!(lookup(&server, &t, "y"), vec![g2]);
}

#[test]
fn reverse_lookup_under_concurrent_writers_never_shows_a_stale_group() {
    let server = TestServer::start();
    let t = server.admin_token();
    let ids: Vec<String> = (0..4)
        .map(|i| {
            create(
                &server,
                &t,
                json!({"name": format!("g{i}"), "devices": ["flip"]}),
            )
        })
        .collect();
    std::thread::scope(|s| {
        // Writers take the device out of and back into every group, over and over.
        let writer = s.spawn(|| {
            for round in 0..15 {
                for id in &ids {
                    let r = server
                        .req("DELETE", &format!("/api/groups/{id}/devices/flip"))
                        .bearer(&t)
                        .send();
                    assert_eq!(r.status, 200, "{}", r.text());
                    add(&server, &t, id, json!(["flip", format!("r{round}")]));
                }
            }
        });
        // Every group a lookup answers must contain the device in the answer itself,
        // until the writer is done (or has failed: join reports it).
        while !writer.is_finished() {
            let v = server
                .req("GET", "/api/devices/flip/groups")
                .bearer(&t)
                .send()
                .ok();
            for g in v["groups"].as_array().unwrap() {
                assert!(
                    g["devices"].as_array().unwrap().contains(&json!("flip")),
                    "{g}"
                );
            }
        }
        writer.join().unwrap();
    });
    assert_eq!(lookup(&server, &t, "flip"), ids);
}
