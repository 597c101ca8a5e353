//! [ext] Conditional requests: the strong `ETag` on every answer that carries one group,
//! `If-Match` on every write to a group (412, nothing changed), `If-None-Match` on GET
//! (304), and the race of ten writers holding the same tag.

use serde_json::{json, Value};

use crate::support::TestServer;

fn create(server: &TestServer, token: &str, body: Value) -> (String, String) {
    let r = server
        .req("POST", "/api/groups")
        .bearer(token)
        .json(&body)
        .send();
    assert_eq!(r.status, 201, "{}", r.text());
    (
        r.json()["id"]
            .as_str()
            .expect("the answer has this shape")
            .to_string(),
        r.etag(),
    )
}

fn get(server: &TestServer, token: &str, id: &str) -> (Value, String) {
    let r = server
        .req("GET", &format!("/api/groups/{id}"))
        .bearer(token)
        .send();
    let v = r.ok();
    (v, r.etag())
}

/// The group fields only (the envelope's usage counters change with every request).
fn fields(v: &Value) -> Value {
    json!({"id": v["id"], "name": v["name"], "description": v["description"], "devices": v["devices"], "lastModified": v["lastModified"]})
}

#[test]
fn every_group_answer_has_an_etag_and_stale_writes_change_nothing() {
    let server = TestServer::start();
    let t = server.admin_token();
    let (id, e1) = create(&server, &t, json!({"name": "Trucks", "devices": ["d1"]}));
    assert_eq!(e1, "\"1\"");
    let path = format!("/api/groups/{id}");
    assert_eq!(get(&server, &t, &id).1, e1);

    // PUT with the current tag works and moves the tag on.
    let r = server
        .req("PUT", &path)
        .bearer(&t)
        .header("If-Match", &e1)
        .json(&json!({"name": "Trucks", "devices": ["d1", "d2"]}))
        .send();
    r.ok();
    let e2 = r.etag();
    assert_eq!(e2, "\"2\"");
    let (before, _) = get(&server, &t, &id);

    // Every write with a stale tag is 412 and leaves the group as it was.
    type Write<'a> = (&'a str, String, Option<(&'a str, Vec<u8>)>);
    let stale: Vec<Write> = vec![
        (
            "PUT",
            path.clone(),
            Some(("application/json", br#"{"name":"X"}"#.to_vec())),
        ),
        (
            "PATCH",
            path.clone(),
            Some((
                "application/json-patch+json",
                br#"[{"op":"replace","path":"/name","value":"X"}]"#.to_vec(),
            )),
        ),
        (
            "PATCH",
            path.clone(),
            Some(("application/merge-patch+json", br#"{"name":"X"}"#.to_vec())),
        ),
        (
            "POST",
            format!("{path}/devices"),
            Some(("application/json", br#"{"devices":["d9"]}"#.to_vec())),
        ),
        ("DELETE", format!("{path}/devices/d1"), None),
        ("DELETE", path.clone(), None),
    ];
    for tag in [e1.as_str(), "W/\"2\"", "\"02\"", "2", "", "\"1\", \"3\""] {
        for (method, p, body) in &stale {
            let mut req = server.req(method, p).bearer(&t).header("If-Match", tag);
            if let Some((ctype, bytes)) = body {
                req = req.body_as(ctype, bytes);
            }
            let r = req.send();
            let v = r.expect_error(412, "precondition_failed");
            assert_eq!(v["error"], "Precondition failed");
            assert!(v["apiUsage"].is_u64(), "usage is on failures too: {v}");
        }
    }
    let (after, etag) = get(&server, &t, &id);
    assert_eq!(fields(&after), fields(&before));
    assert_eq!(etag, e2);

    // A list of tags that includes the current one matches; so does `*`.
    let r = server
        .req("PATCH", &path)
        .bearer(&t)
        .header("If-Match", "\"1\", \"2\"")
        .body_as("application/merge-patch+json", br#"{"description":"d"}"#)
        .send();
    r.ok();
    assert_eq!(r.etag(), "\"3\"");
    let r = server
        .req("POST", &format!("{path}/devices"))
        .bearer(&t)
        .header("If-Match", "*")
        .json(&json!({"devices": ["d3"]}))
        .send();
    assert_eq!(r.ok()["added"], json!(["d3"]));
    assert_eq!(r.etag(), "\"4\"");
    let r = server
        .req("DELETE", &format!("{path}/devices/d3"))
        .bearer(&t)
        .header("If-Match", "\"4\"")
        .send();
    assert_eq!(r.ok()["removed"], true);
    assert_eq!(r.etag(), "\"5\"");

    // A write that changes nothing keeps the revision (and so the tag).
    let r = server
        .req("PUT", &path)
        .bearer(&t)
        .header("If-Match", "\"5\"")
        .json(&json!({"name": "Trucks", "description": "d", "devices": ["d1", "d2"]}))
        .send();
    r.ok();
    assert_eq!(r.etag(), "\"5\"");

    // Existence comes before the precondition: a missing group is 404 whatever the tag.
    server
        .req("PUT", "/api/groups/grp-999")
        .bearer(&t)
        .header("If-Match", "\"1\"")
        .json(&json!({"name": "x"}))
        .send()
        .expect_error(404, "group_not_found");
    server
        .req("DELETE", "/api/groups/grp-999")
        .bearer(&t)
        .header("If-Match", "*")
        .send()
        .expect_error(404, "group_not_found");

    // DELETE with the current tag deletes; the answer is the envelope alone, no ETag.
    let r = server
        .req("DELETE", &path)
        .bearer(&t)
        .header("If-Match", "\"5\"")
        .send();
    r.ok();
    assert_eq!(r.header("etag"), None);
    server
        .req("GET", &path)
        .bearer(&t)
        .send()
        .expect_error(404, "group_not_found");
}

#[test]
fn if_none_match_answers_304_while_unchanged() {
    let server = TestServer::start();
    let t = server.admin_token();
    let (id, etag) = create(&server, &t, json!({"name": "Vans"}));
    let path = format!("/api/groups/{id}");
    for tag in [etag.as_str(), "W/\"1\"", "\"7\", \"1\"", "*"] {
        let r = server
            .req("GET", &path)
            .bearer(&t)
            .header("If-None-Match", tag)
            .send();
        assert_eq!(r.status, 304, "{tag}: {}", r.text());
        assert_eq!(r.etag(), etag);
        assert!(r.body.is_empty());
        assert_eq!(r.header("content-type"), None);
        assert!(r.header("x-request-id").is_some());
    }
    server
        .req("PUT", &path)
        .bearer(&t)
        .json(&json!({"name": "Vans 2"}))
        .send()
        .ok();
    let r = server
        .req("GET", &path)
        .bearer(&t)
        .header("If-None-Match", &etag)
        .send();
    assert_eq!(r.ok()["name"], "Vans 2");
    assert_eq!(r.etag(), "\"2\"");
    // Another account's group, or none: 404, not 304, even for `*`.
    server
        .req("GET", "/api/groups/grp-77")
        .bearer(&t)
        .header("If-None-Match", "*")
        .send()
        .expect_error(404, "group_not_found");
}

#[test]
fn ten_parallel_puts_with_the_same_if_match_one_wins() {
    let server = TestServer::start();
    let t = server.admin_token();
    let (id, etag) = create(&server, &t, json!({"name": "Race"}));
    let path = format!("/api/groups/{id}");
    let results: Vec<(u16, String, usize)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..10)
            .map(|i| {
                let (server, t, path, etag) = (&server, &t, &path, &etag);
                s.spawn(move || {
                    let r = server
                        .req("PUT", path)
                        .bearer(t)
                        .header("If-Match", etag)
                        .json(&json!({"name": format!("Race {i}"), "devices": [format!("d{i}")]}))
                        .send();
                    (r.status, r.text(), i)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let winners: Vec<_> = results.iter().filter(|r| r.0 == 200).collect();
    let losers = results.iter().filter(|r| r.0 == 412).count();
    assert_eq!((winners.len(), losers), (1, 9), "{results:?}");
    let winner = winners[0].2;
    let (v, etag) = get(&server, &t, &id);
    assert_eq!(v["name"], format!("Race {winner}"));
    assert_eq!(v["devices"], json!([format!("d{winner}")]));
    assert_eq!(etag, "\"2\"");
    // Exactly one change was recorded after the create.
    let feed = server.req("GET", "/api/changes").bearer(&t).send().ok();
    let ops: Vec<&str> = feed["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["op"].as_str().unwrap())
        .collect();
    assert_eq!(ops, vec!["created", "updated"]);
}
