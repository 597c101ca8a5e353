//! [ext] `GET /api/openapi.json`: served without authentication, identical to the
//! file in the repository, in step with the router's table, and truthful about the
//! statuses and headers a real server sends for one request of every operation.
//! (Schemathesis, `scripts/schemathesis.sh`, explores far more requests.)

use serde_json::{json, Value};

use crate::support::{Resp, TestServer};
use fleetgroups::http::router::ROUTES;

const FILE: &str = include_str!("../../src/api/openapi.json");

/// The documented operation for a concrete request.
fn operation<'a>(doc: &'a Value, template: &str, method: &str) -> &'a Value {
    let path = doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .find(|(p, _)| p.eq_ignore_ascii_case(template))
        .unwrap_or_else(|| panic!("{template} not documented"))
        .1;
    let op = &path[method.to_ascii_lowercase()];
    assert!(op.is_object(), "{method} {template} not documented");
    op
}

fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => doc
            .pointer(r.trim_start_matches('#'))
            .expect("ref resolves"),
        None => v,
    }
}

/// Checks that the answer's status is documented for the operation, with its required
/// headers, and for a JSON answer its errorCode (if any) is one the document lists.
fn conforms(doc: &Value, template: &str, method: &str, r: &Resp) {
    let op = operation(doc, template, method);
    let documented = resolve(doc, &op["responses"][r.status.to_string()]);
    assert!(
        documented.is_object(),
        "{method} {template} answered {} which is not documented: {}",
        r.status,
        r.text()
    );
    if let Some(headers) = documented["headers"].as_object() {
        for (name, h) in headers {
            let h = resolve(doc, h);
            if h["required"] == true {
                assert!(
                    r.header(name).is_some(),
                    "{method} {template} {}: no {name}",
                    r.status
                );
            }
        }
    }
    assert!(r.header("x-request-id").is_some());
    if let Some(code) = (r.status >= 400).then(|| r.json()["errorCode"].clone()) {
        assert!(
            documented
                .to_string()
                .contains(&format!("\"{}\"", code.as_str().expect("code"))),
            "{method} {template} {}: {code} not documented",
            r.status
        );
    }
}

#[test]
fn the_document_is_served_without_auth_and_matches_the_router() {
    let server = TestServer::start();
    let r = server.req("GET", "/api/openapi.json").send();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(r.text(), FILE);
    let doc = r.json();
    assert_eq!(doc["openapi"], "3.1.0");
    for r in ROUTES {
        operation(&doc, r.pattern, r.method);
    }
}

#[test]
fn one_request_of_every_operation_conforms() {
    let server = TestServer::start();
    let doc: Value = serde_json::from_str(FILE).expect("json");
    let key = server.admin_key();
    let login = server
        .req("POST", "/api/Auth/Token")
        .json(&json!({"userName": "admin", "apiKey": key}))
        .send();
    conforms(&doc, "/api/Auth/Token", "POST", &login);
    let t = login.json()["token"].as_str().expect("token").to_string();
    let bad_login = server
        .req("POST", "/api/auth/token")
        .json(&json!({"userName": "admin", "apiKey": "nope"}))
        .send();
    conforms(&doc, "/api/Auth/Token", "POST", &bad_login);

    let g = "/api/groups/{groupId}";
    /// (documented path, method, concrete path, body, headers)
    type Case<'a> = (
        &'a str,
        &'a str,
        String,
        Option<(&'a str, Value)>,
        Vec<(&'a str, &'a str)>,
    );
    let cases: Vec<Case> = vec![
        (
            "/api/groups",
            "POST",
            "/api/groups".into(),
            Some(("application/json", json!({"name": "A", "devices": ["d"]}))),
            vec![("Idempotency-Key", "k1")],
        ),
        (
            "/api/groups",
            "POST",
            "/api/groups".into(),
            Some(("application/json", json!({"name": "A", "devices": ["d"]}))),
            vec![("Idempotency-Key", "k1")],
        ),
        (
            "/api/groups",
            "POST",
            "/api/groups".into(),
            Some(("application/json", json!({"name": "B"}))),
            vec![("Idempotency-Key", "k1")],
        ),
        (
            "/api/groups",
            "POST",
            "/api/groups".into(),
            Some(("application/json", json!({"name": "a"}))),
            vec![],
        ),
        (
            "/api/groups",
            "POST",
            "/api/groups".into(),
            Some(("text/plain", json!("x"))),
            vec![],
        ),
        ("/api/groups", "GET", "/api/groups".into(), None, vec![]),
        (
            "/api/groups",
            "GET",
            "/api/groups?limit=1&device=d&name=a".into(),
            None,
            vec![],
        ),
        (
            "/api/groups",
            "GET",
            "/api/groups?limit=0".into(),
            None,
            vec![],
        ),
        (g, "GET", "/api/groups/grp-1".into(), None, vec![]),
        (
            g,
            "GET",
            "/api/groups/grp-1".into(),
            None,
            vec![("If-None-Match", "\"1\"")],
        ),
        (g, "GET", "/api/groups/grp-9".into(), None, vec![]),
        (
            g,
            "PUT",
            "/api/groups/grp-1".into(),
            Some(("application/json", json!({"name": "A2"}))),
            vec![("If-Match", "\"1\"")],
        ),
        (
            g,
            "PUT",
            "/api/groups/grp-1".into(),
            Some(("application/json", json!({"name": "A3"}))),
            vec![("If-Match", "\"1\"")],
        ),
        (
            g,
            "PATCH",
            "/api/groups/grp-1".into(),
            Some((
                "application/json-patch+json",
                json!([{"op": "add", "path": "/devices/-", "value": "e"}]),
            )),
            vec![],
        ),
        (
            g,
            "PATCH",
            "/api/groups/grp-1".into(),
            Some((
                "application/json",
                json!([{"op": "test", "path": "/name", "value": "x"}]),
            )),
            vec![],
        ),
        (
            g,
            "PATCH",
            "/api/groups/grp-1".into(),
            Some(("application/json", json!([{"op": "nope", "path": "/name"}]))),
            vec![],
        ),
        (
            g,
            "PATCH",
            "/api/groups/grp-1".into(),
            Some(("application/merge-patch+json", json!({"description": "x"}))),
            vec![],
        ),
        (
            "/api/groups/{groupId}/devices",
            "POST",
            "/api/groups/grp-1/devices".into(),
            Some(("application/json", json!({"devices": ["f"]}))),
            vec![],
        ),
        (
            "/api/groups/{groupId}/devices/{deviceId}",
            "DELETE",
            "/api/groups/grp-1/devices/f".into(),
            None,
            vec![],
        ),
        (
            "/api/groups/{groupId}/devices/{deviceId}",
            "DELETE",
            "/api/groups/grp-1/devices/%20f".into(),
            None,
            vec![],
        ),
        (
            "/api/devices/{deviceId}/groups",
            "GET",
            "/api/devices/e/groups".into(),
            None,
            vec![],
        ),
        (
            "/api/changes",
            "GET",
            "/api/changes?limit=2".into(),
            None,
            vec![],
        ),
        (
            "/api/changes",
            "GET",
            "/api/changes?after=x".into(),
            None,
            vec![],
        ),
        (
            g,
            "DELETE",
            "/api/groups/grp-1".into(),
            None,
            vec![("If-Match", "\"1\"")],
        ),
        (g, "DELETE", "/api/groups/grp-1".into(), None, vec![]),
        (
            "/api/openapi.json",
            "GET",
            "/api/openapi.json".into(),
            None,
            vec![],
        ),
        ("/healthz", "GET", "/healthz".into(), None, vec![]),
        ("/readyz", "GET", "/readyz".into(), None, vec![]),
        ("/metrics", "GET", "/metrics".into(), None, vec![]),
    ];
    let mut statuses = Vec::new();
    for (template, method, path, body, headers) in cases {
        let mut req = server.req(method, &path).bearer(&t);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        if let Some((ctype, v)) = body {
            let bytes = match v {
                Value::String(s) => s.into_bytes(),
                v => serde_json::to_vec(&v).expect("json"),
            };
            req = req.body_as(ctype, &bytes);
        }
        let r = req.send();
        conforms(&doc, template, method, &r);
        statuses.push(r.status);
    }
    assert_eq!(
        statuses,
        vec![
            201, 201, 422, 409, 415, 200, 200, 400, 200, 304, 404, 200, 412, 200, 409, 400, 200,
            200, 200, 400, 200, 200, 400, 412, 200, 200, 200, 200, 200
        ]
    );
    // Without a token: 401 with WWW-Authenticate, as documented.
    let r = server.req("GET", "/api/changes").send();
    conforms(&doc, "/api/changes", "GET", &r);
    assert_eq!(r.status, 401);
}
