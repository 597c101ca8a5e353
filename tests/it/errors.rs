//! The error table of docs/api/http.md "Errors" as the core produces it: status, `errorCode` and
//! message for bad bodies, unknown routes, wrong methods, other accounts' groups,
//! oversized bodies and media types; `X-Request-Id` and the JSON content type on every
//! answer. Each refused write is followed by a look showing nothing changed.

use serde_json::{json, Value};

use crate::support::{raw, Options, TestServer};

#[test]
fn malformed_json_and_non_object_bodies_are_invalid_input() {
    let server = TestServer::start();
    let admin = server.client(&server.admin_token());
    admin.create(&json!({"name": "Keep"}));
    let before = admin.groups();

    let not_json: [&[u8]; 7] = [
        b"{\"name\": ",
        b"{name: 'x'}",
        b"{\"name\": \"x\",}",
        b"\"unterminated",
        b"{\"name\": \"x\"} trailing",
        b"\xff\xfe{}",
        b"{\"name\": \"\xc3\x28\"}",
    ];
    for body in not_json {
        for (method, path) in [("POST", "/api/groups"), ("PUT", "/api/groups/grp-1")] {
            let e = admin
                .req(method, path)
                .body_as("application/json", body)
                .send()
                .expect_error(400, "invalid_input");
            let msg = e["error"].as_str().expect("msg");
            assert!(
                msg.starts_with("Invalid input: the body is not valid JSON"),
                "{msg}"
            );
        }
    }
    for body in ["[]", "[{\"name\": \"x\"}]", "\"x\"", "42", "null", "true"] {
        for (method, path) in [("POST", "/api/groups"), ("PUT", "/api/groups/grp-1")] {
            admin
                .req(method, path)
                .body_as("application/json", body.as_bytes())
                .send()
                .expect_error_message(
                    400,
                    "invalid_input",
                    "Invalid input: the body must be a JSON object",
                );
        }
    }
    // No body at all, or only white space.
    for body in [&b""[..], b"  \r\n"] {
        admin
            .req("POST", "/api/groups")
            .body_as("application/json", body)
            .send()
            .expect_error_message(
                400,
                "invalid_input",
                "Invalid input: a JSON body is required",
            );
    }
    admin
        .req("POST", "/api/groups")
        .send()
        .expect_error_message(
            400,
            "invalid_input",
            "Invalid input: a JSON body is required",
        );
    assert_eq!(admin.groups(), before);
}

#[test]
fn unknown_routes_and_trailing_slashes_are_not_found() {
    let server = TestServer::start();
    let admin = server.client(&server.admin_token());
    admin.create(&json!({"name": "Keep"}));
    for path in [
        "/",
        "/api",
        "/api/",
        "/api/groups/",
        "/api/groups/grp-1/",
        "/api//groups",
        "/api/Groups",
        "/API/groups",
        "/api/group",
        "/api/groups/grp-1/extra",
        "/api/nothing",
        "/groups",
        "/api/auth/token/",
    ] {
        for r in [server.req("GET", path).send(), admin.get(path)] {
            r.expect_error_message(404, "not_found", "Not found");
        }
    }
    // A path that names no group (not `grp-<n>`) is a missing group, not a route.
    for id in [
        "nope",
        "grp-0",
        "grp-01",
        "GRP-1",
        "grp-1x",
        "grp-99999999999999999999",
    ] {
        admin
            .get(&format!("/api/groups/{id}"))
            .expect_error_message(404, "group_not_found", "Group not found");
    }
    // Segments are percent-decoded before matching.
    assert_eq!(
        admin.get("/api/groups/grp%2D1").expect_ok(200)["id"],
        "grp-1"
    );
    assert_eq!(
        admin.get("/api/%67roups").expect_ok(200)["groups"][0]["id"],
        "grp-1"
    );
}

#[test]
fn a_known_path_with_another_method_is_405_with_allow() {
    let server = TestServer::start();
    let admin = server.client(&server.admin_token());
    for (method, path, allow) in [
        ("DELETE", "/api/groups", "GET, POST"),
        ("PUT", "/api/groups", "GET, POST"),
        ("PATCH", "/api/groups", "GET, POST"),
        ("POST", "/api/groups/grp-1", "GET, PUT, PATCH, DELETE"),
        ("GET", "/api/Auth/Token", "POST"),
        ("DELETE", "/api/auth/token", "POST"),
    ] {
        let r = admin.req(method, path).send();
        r.expect_error_message(405, "method_not_allowed", "Method not allowed");
        assert_eq!(r.header("allow"), Some(allow), "{method} {path}");
    }
}

#[test]
fn another_accounts_group_is_answered_exactly_like_a_missing_one() {
    let (server, admin_token, other_token) = TestServer::two_accounts();
    let admin = server.client(&admin_token);
    let other = server.client(&other_token);
    other.create(&json!({"name": "Theirs", "devices": ["x"]}));
    let theirs = other.groups();

    let body = json!({"name": "Mine"});
    let patch = json!([{"op": "replace", "path": "/name", "value": "Mine"}]);
    // Everything but the counters and the per-request headers must be identical.
    let shape = |r: &crate::support::Resp| {
        let v = r.expect_error_message(404, "group_not_found", "Group not found");
        let mut names: Vec<String> = r
            .headers
            .iter()
            .map(|(k, _)| k.to_ascii_lowercase())
            .filter(|k| k != "date")
            .collect();
        names.sort();
        let mut fixed: Vec<(String, String)> = r
            .headers
            .iter()
            .filter(|(k, _)| !matches!(k.to_ascii_lowercase().as_str(), "date" | "x-request-id"))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        fixed.sort();
        let mut v = v;
        v["apiUsage"] = json!(0);
        v["apiDailyUsage"] = json!(0);
        (r.status, v.to_string(), names, fixed)
    };
    for method in ["GET", "PUT", "PATCH", "DELETE"] {
        let call = |id: &str| {
            let path = format!("/api/groups/{id}");
            match method {
                "GET" => admin.get(&path),
                "PUT" => admin.put(&path, &body),
                "PATCH" => admin.patch(&path, &patch),
                _ => admin.delete(&path),
            }
        };
        let theirs = shape(&call("grp-1"));
        assert_eq!(theirs, shape(&call("grp-2")), "{method}");
        assert_eq!(theirs, shape(&call("grp-424242")), "{method}");
    }
    assert_eq!(other.groups(), theirs);
    assert_eq!(admin.groups(), Vec::<Value>::new());
}

#[test]
fn bodies_over_the_limit_are_refused_with_413() {
    let server =
        TestServer::with(Options::default().env("FLEETGROUPS_LIMITS_MAX_BODY_BYTES", "1024"));
    let admin = server.client(&server.admin_token());
    admin.create(&json!({"name": "Keep"}));
    let before = admin.groups();

    let padded = |len: usize| {
        let head = r#"{"name": "Big", "description": ""#;
        let tail = r#""}"#;
        let fill = "x".repeat(len - head.len() - tail.len());
        format!("{head}{fill}{tail}")
    };
    // Over the limit with a declared length (refused before reading) …
    for len in [1025, 100_000] {
        let r = admin
            .req("POST", "/api/groups")
            .body_as("application/json", padded(len).as_bytes())
            .send();
        r.expect_error_message(413, "body_too_large", "Request body too large");
        assert!(r.usage().0 > 0, "a 413 to an authenticated caller counts");
    }
    // … and sent in chunks without a length (cut off while reading).
    let body = padded(5000);
    let mut chunked = Vec::new();
    for part in body.as_bytes().chunks(700) {
        chunked.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        chunked.extend_from_slice(part);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let head = format!(
        "PUT /api/groups/grp-1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        admin.token
    );
    let mut request = head.into_bytes();
    request.extend_from_slice(&chunked);
    raw(server.addr, &request).expect_error(413, "body_too_large");
    assert_eq!(admin.groups(), before);

    // Exactly at the limit is fine.
    let v = admin
        .req("POST", "/api/groups")
        .body_as("application/json", padded(1024).as_bytes())
        .send()
        .expect_ok(201);
    assert_eq!(v["name"], "Big");
}

#[test]
fn request_bodies_must_be_json() {
    let server = TestServer::start();
    let admin = server.client(&server.admin_token());
    admin.create(&json!({"name": "Keep"}));
    let before = admin.groups();
    let body = br#"{"name": "New"}"#;

    for (method, path, ctype) in [
        ("POST", "/api/groups", "text/plain"),
        ("POST", "/api/groups", "application/x-www-form-urlencoded"),
        ("POST", "/api/groups", "application/json-patch+json"),
        ("POST", "/api/groups", "application/merge-patch+json"),
        ("POST", "/api/groups", "application/jsonx"),
        ("PUT", "/api/groups/grp-1", "text/json"),
        ("PATCH", "/api/groups/grp-1", "text/plain; charset=utf-8"),
    ] {
        admin
            .req(method, path)
            .body_as(ctype, body)
            .send()
            .expect_error_message(
                415,
                "unsupported_media_type",
                &format!("Unsupported media type: {ctype}"),
            );
    }
    // A body with no content type at all.
    admin
        .req("POST", "/api/groups")
        .raw_body(body)
        .send()
        .expect_error_message(
            415,
            "unsupported_media_type",
            "Unsupported media type: none",
        );
    assert_eq!(admin.groups(), before);

    // What is accepted: a charset parameter, any letter case, and the JSON Patch type
    // for PATCH.
    for (i, ctype) in [
        "application/json; charset=utf-8",
        "application/json;charset=UTF-8",
        "Application/JSON",
    ]
    .iter()
    .enumerate()
    {
        admin
            .req("POST", "/api/groups")
            .body_as(ctype, format!(r#"{{"name": "n{i}"}}"#).as_bytes())
            .send()
            .expect_ok(201);
    }
    admin
        .req("PATCH", "/api/groups/grp-1")
        .body_as(
            "application/json-patch+json",
            br#"[{"op":"replace","path":"/name","value":"Patched"}]"#,
        )
        .send()
        .expect_ok(200);
}

#[test]
fn every_answer_carries_a_request_id() {
    let server =
        TestServer::with(Options::default().env("FLEETGROUPS_LIMITS_MAX_BODY_BYTES", "1024"));
    let admin = server.client(&server.admin_token());
    admin.create(&json!({"name": "x"}));
    let mut seen = std::collections::HashSet::new();
    for r in [
        admin.get("/api/groups"),
        server.req("GET", "/api/groups").send(),
        admin.get("/api/nothing"),
        admin.get("/api/groups/grp-9"),
        admin.req("DELETE", "/api/groups").send(),
        admin
            .req("POST", "/api/groups")
            .body_as("application/json", &[b' '; 2000])
            .send(),
        server
            .req("POST", "/api/auth/token")
            .json(&json!({"userName": "x", "apiKey": "y"}))
            .send(),
    ] {
        r.assert_json_answer();
        let id = r.header("x-request-id").expect("id").to_string();
        assert!(seen.insert(id), "request IDs are unique");
    }

    // A sane client ID is echoed, on success and failure alike.
    for id in [
        "abc-123",
        "7f3a9c2e-4b1d-4e8a-9f0c-2d5e6b7a8c9d",
        "trace:1.2_3",
        &"a".repeat(128),
    ] {
        for r in [
            admin
                .req("GET", "/api/groups")
                .header("X-Request-Id", id)
                .send(),
            server
                .req("GET", "/api/groups")
                .header("x-request-id", id)
                .send(),
        ] {
            assert_eq!(r.header("x-request-id"), Some(id));
        }
    }
    // An insane one is replaced by the server's own.
    for id in [
        "",
        "has space",
        "semi;colon",
        "quote\"",
        "ünïcode",
        &"a".repeat(129),
    ] {
        let r = admin
            .req("GET", "/api/groups")
            .header("X-Request-Id", id)
            .send();
        let got = r.header("x-request-id").expect("id");
        assert!(!got.is_empty() && got != id, "{id:?} -> {got:?}");
    }
}

#[test]
fn one_keep_alive_connection_serves_many_requests() {
    use std::io::Write;
    let server = TestServer::start();
    let token = server.admin_token();
    let mut conn = std::net::TcpStream::connect(server.addr).expect("connect");
    conn.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .expect("timeout");
    let body = r#"{"name": "Over one connection"}"#;
    let requests = [
        format!(
            "POST /api/groups HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
        format!("GET /api/groups/grp-1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"),
        "GET /api/nothing HTTP/1.1\r\nHost: x\r\n\r\n".to_string(),
        format!("GET /api/groups HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"),
    ];
    let mut statuses = Vec::new();
    for r in &requests {
        conn.write_all(r.as_bytes()).expect("write");
        let resp = crate::support::read_response(&mut conn);
        resp.assert_json_answer();
        statuses.push(resp.status);
        if resp.status == 200 && r.starts_with("GET /api/groups ") {
            assert_eq!(resp.json()["groups"][0]["name"], "Over one connection");
        }
    }
    assert_eq!(statuses, [201, 200, 404, 200]);
}

#[test]
fn garbage_on_the_wire_does_not_hurt_the_server() {
    use std::io::{Read, Write};
    let server = TestServer::start();
    let admin = server.client(&server.admin_token());
    admin.create(&json!({"name": "Survivor"}));
    let garbage: Vec<Vec<u8>> = vec![
        b"\x00\x01\x02\x03\xff\xfe\r\n\r\n".to_vec(),
        b"GET\r\n\r\n".to_vec(),
        b"GET / HTTP/9.9\r\n\r\n".to_vec(),
        b"POST /api/groups HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n".to_vec(),
        b"POST /api/groups HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!".to_vec(),
        b"POST /api/groups HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\nzz\r\n".to_vec(),
        format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(100_000)).into_bytes(),
        format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "b".repeat(100_000)).into_bytes(),
        format!("GET /api/groups HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n", "\u{1F600}".repeat(100)).into_bytes(),
        b"GET /api/groups/%ZZ HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"GET /api/groups/%C3%28 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
    ];
    for bytes in garbage {
        let mut s = std::net::TcpStream::connect(server.addr).expect("connect");
        s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .expect("timeout");
        // The server may answer 4xx or just close; either way it must not hang or die.
        let _ = s.write_all(&bytes);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        let head = String::from_utf8_lossy(&answer[..answer.len().min(12)]).into_owned();
        assert!(
            answer.is_empty() || head.starts_with("HTTP/1.1 4"),
            "{head:?} for {:?}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(60)])
        );
    }
    assert_eq!(admin.group("grp-1")["name"], "Survivor");
    admin.create(&json!({"name": "After the garbage"}));
}

#[test]
fn http11_without_exactly_one_host_is_400_and_http10_may_omit_it() {
    let server = TestServer::start();
    let token = server.admin_token();
    let create = |host: &str, version: &str| {
        let body = r#"{"name":"Hostless"}"#;
        raw(
            server.addr,
            format!(
                "POST /api/groups {version}\r\n{host}Connection: close\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
    };
    let e = create("", "HTTP/1.1").expect_error(400, "invalid_input");
    assert_eq!(
        e["error"],
        "Invalid input: the Host header is required (RFC 9112)"
    );
    create("Host: a\r\nHost: b\r\n", "HTTP/1.1").expect_error(400, "invalid_input");
    let admin = server.client(&token);
    assert_eq!(
        admin.groups(),
        Vec::<Value>::new(),
        "a refused create left a group"
    );
    // Unauthenticated routes too: the check comes before routing.
    raw(
        server.addr,
        b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .expect_error(400, "invalid_input");
    // HTTP/1.0 has no Host requirement.
    let ok = create("", "HTTP/1.0");
    assert_eq!(ok.status, 201, "{:?}", ok.text());
}
