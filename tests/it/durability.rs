//! Durability basics (docs/api/http.md "Durability"): every acknowledged create, update and delete
//! survives `kill -9` exactly, and the ID sequence continues after the crash.

use serde_json::{json, Value};

use crate::support::TestServer;

#[test]
fn acknowledged_writes_survive_kill_9_exactly() {
    let mut server = TestServer::start();
    let admin = server.client(&server.admin_token());
    for i in 1..=5 {
        admin.create(&json!({"name": format!("g{i}"), "devices": [format!("d{i}")]}));
    }
    admin
        .put(
            "/api/groups/grp-2",
            &json!({"name": "replaced", "description": "by PUT"}),
        )
        .expect_ok(200);
    admin
        .patch(
            "/api/groups/grp-3",
            &json!([{"op": "add", "path": "/devices/-", "value": "d-extra"}]),
        )
        .expect_ok(200);
    admin.delete("/api/groups/grp-4").expect_ok(200);
    admin.delete("/api/groups/grp-5").expect_ok(200);
    let before: Vec<Value> = admin.groups();
    assert_eq!(before.len(), 3);

    server.kill9();
    server.restart();
    let admin = server.client(&server.admin_token());
    assert_eq!(admin.groups(), before, "exactly what was acknowledged");
    // The name index and the sequence came back with the groups.
    admin
        .post("/api/groups", &json!({"name": "G1"}))
        .expect_error(409, "name_conflict");
    admin
        .get("/api/groups/grp-4")
        .expect_error(404, "group_not_found");
    // After a crash the numbers continue past the durable reservation (up to 128
    // skipped, like a database sequence), never at a number that may have been seen.
    let id = admin.create(&json!({"name": "g4"}))["id"]
        .as_str()
        .expect("id")
        .to_string();
    let n: u64 = id.trim_start_matches("grp-").parse().expect("number");
    assert!((6..=6 + 128).contains(&n), "{id}");

    // A crash right after a single write, with nothing else going on.
    admin
        .put(
            &format!("/api/groups/{id}"),
            &json!({"name": "g4", "devices": ["last"]}),
        )
        .expect_ok(200);
    let expected = admin.group(&id);
    server.kill9();
    server.restart();
    let admin = server.client(&server.admin_token());
    assert_eq!(admin.group(&id), expected);
}
