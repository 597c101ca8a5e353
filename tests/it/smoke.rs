//! The README's quick start, end to end: initial key → token → first group.

use serde_json::json;

use crate::support::TestServer;

#[test]
fn quick_start_creates_a_first_group() {
    let server = TestServer::start();
    let key = server.admin_key();
    assert!(key.starts_with("fgk_"));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(server.data_dir().join("initial-api-key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    assert!(!server.log().contains(&key), "the key must never be logged");
    let token = server.login("admin", &key);
    let r = server
        .req("POST", "/api/groups")
        .bearer(&token)
        .json(&json!({"name": "New Group", "description": "Description of the new group", "devices": ["dev-456", "dev-789"]}))
        .send();
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json();
    assert_eq!(v["success"], true);
    assert_eq!(v["error"], serde_json::Value::Null);
    assert_eq!(v["apiUsage"], 1);
    assert_eq!(v["apiDailyUsage"], 1);
    assert_eq!(v["id"], "grp-1");
    assert_eq!(r.header("location"), Some("/api/groups/grp-1"));
    assert_eq!(v["devices"], json!(["dev-456", "dev-789"]));
}
