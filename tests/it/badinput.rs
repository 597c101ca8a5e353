//! Malformed requests against the real binary: every one gets its documented error
//! (docs/api/http.md "Errors") or, below our code, hyper's status, and afterwards the server still
//! answers and the data is exactly as before. Bytes are written by hand where a normal
//! client could not send them (invalid UTF-8, duplicate headers, a head without its
//! body, huge heads, chunked bodies).

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{try_read_response, Options, Resp, TestServer};

/// A server with one group (`grp-1`, devices `a`, `b`) and a token.
fn setup(options: Options) -> (TestServer, String, Value) {
    let server = TestServer::with(options);
    let token = server.admin_token();
    let r = server
        .req("POST", "/api/groups")
        .bearer(&token)
        .json(&json!({"name": "Trucks", "description": "d", "devices": ["a", "b"]}))
        .send();
    assert_eq!(r.status, 201, "{}", r.text());
    let snapshot = state(&server, &token);
    (server, token, snapshot)
}

/// Everything a client can see: the groups and the change feed.
fn state(server: &TestServer, token: &str) -> Value {
    let groups = server.req("GET", "/api/groups").bearer(token).send().json()["groups"].clone();
    let changes = server
        .req("GET", "/api/changes")
        .bearer(token)
        .send()
        .json()["changes"]
        .clone();
    json!({"groups": groups, "changes": changes})
}

/// The server still answers and nothing changed.
fn unchanged(server: &TestServer, token: &str, before: &Value) {
    assert_eq!(server.req("GET", "/healthz").send().status, 200);
    assert_eq!(
        &state(server, token),
        before,
        "a refused request changed data"
    );
}

/// Writes raw bytes on a fresh connection and reads one response, within `wait`.
fn exchange(server: &TestServer, bytes: &[u8], wait: Duration) -> std::io::Result<Resp> {
    let mut s = TcpStream::connect(server.addr)?;
    s.set_read_timeout(Some(wait))?;
    s.write_all(bytes)?;
    try_read_response(&mut s)
}

fn head(method: &str, path: &str, token: &str, extra: &str) -> String {
    format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n{extra}")
}

fn with_body(method: &str, path: &str, token: &str, ctype: &str, body: &[u8]) -> Vec<u8> {
    let mut b = head(
        method,
        path,
        token,
        &format!(
            "Content-Type: {ctype}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        ),
    )
    .into_bytes();
    b.extend_from_slice(body);
    b
}

fn send(server: &TestServer, bytes: &[u8]) -> Resp {
    exchange(server, bytes, Duration::from_secs(10)).expect("an answer")
}

#[test]
fn malformed_bodies_are_400_and_change_nothing() {
    let (server, token, before) = setup(Options::default());
    let deep_array = "[".repeat(100_000);
    let deep_object = format!("{{\"name\":{}", "{\"a\":".repeat(50_000));
    let cases: Vec<(&str, &str, &str, Vec<u8>, &str)> = vec![
        (
            "POST",
            "/api/groups",
            "application/json",
            b"{\"name\": ".to_vec(),
            "not valid JSON",
        ),
        (
            "POST",
            "/api/groups",
            "application/json",
            b"{\"name\": \"\xff\xfe\"}".to_vec(),
            "not valid JSON",
        ),
        (
            "PUT",
            "/api/groups/grp-1",
            "application/json",
            b"\xc0\xaf".to_vec(),
            "not valid JSON",
        ),
        (
            "POST",
            "/api/groups",
            "application/json",
            b"   ".to_vec(),
            "a JSON body is required",
        ),
        (
            "POST",
            "/api/groups",
            "application/json",
            deep_array.clone().into_bytes(),
            "not valid JSON",
        ),
        (
            "PATCH",
            "/api/groups/grp-1",
            "application/json-patch+json",
            deep_array.into_bytes(),
            "not valid JSON",
        ),
        (
            "POST",
            "/api/groups",
            "application/json",
            deep_object.into_bytes(),
            "not valid JSON",
        ),
        (
            "POST",
            "/api/groups",
            "application/json",
            b"{\"name\": 1e999999}".to_vec(),
            "not valid JSON",
        ),
        (
            "POST",
            "/api/groups",
            "application/json",
            br#"{"name": 123456789012345678901234567890}"#.to_vec(),
            "name must be a string",
        ),
        (
            "POST",
            "/api/groups",
            "application/json",
            br#"{"name": "x", "devices": [1e308]}"#.to_vec(),
            "devices[0] must be a string",
        ),
        (
            "POST",
            "/api/groups",
            "application/json",
            br#"{"name": "a\u0000b"}"#.to_vec(),
            "control characters",
        ),
        (
            "POST",
            "/api/groups",
            "application/json",
            br#"{"name": "\u001b[31mred"}"#.to_vec(),
            "control characters",
        ),
        (
            "POST",
            "/api/groups",
            "application/json",
            br#"{"name": "x", "devices": ["a\u0000"]}"#.to_vec(),
            "devices[0] must not contain control characters",
        ),
        (
            "POST",
            "/api/groups",
            "application/json",
            br#"{"name": "x", "description": "nul\u0000"}"#.to_vec(),
            "description must not contain control",
        ),
        (
            "POST",
            "/api/groups",
            "application/json",
            format!(r#"{{"name": "{}"}}"#, "n".repeat(129)).into_bytes(),
            "at most 128",
        ),
        (
            "POST",
            "/api/groups",
            "application/json",
            format!(r#"{{"name": "x", "devices": ["{}"]}}"#, "d".repeat(65)).into_bytes(),
            "at most 64",
        ),
        (
            "POST",
            "/api/groups",
            "application/json",
            br#"{"name": "\ud800"}"#.to_vec(),
            "not valid JSON",
        ),
        (
            "POST",
            "/api/groups",
            "application/json",
            b"[]".to_vec(),
            "must be a JSON object",
        ),
        (
            "PATCH",
            "/api/groups/grp-1",
            "application/json-patch+json",
            b"{}".to_vec(),
            "JSON Patch array",
        ),
        (
            "POST",
            "/api/groups/grp-1/devices",
            "application/json",
            br#"{"devices": ["ok", "  "]}"#.to_vec(),
            "devices[1]",
        ),
        (
            "POST",
            "/api/Auth/Token",
            "application/json",
            br#"{"userName": ["admin"], "apiKey": "x"}"#.to_vec(),
            "userName must be a string",
        ),
    ];
    for (method, path, ctype, body, want) in cases {
        let r = send(&server, &with_body(method, path, &token, ctype, &body));
        let v = r.expect_error(400, "invalid_input");
        let msg = v["error"].as_str().unwrap_or("");
        assert!(msg.starts_with("Invalid input: "), "{msg}");
        assert!(
            msg.contains(want),
            "{method} {path}: {msg:?} lacks {want:?}"
        );
        assert!(msg.len() < 300, "error messages stay short: {msg}");
    }
    unchanged(&server, &token, &before);
}

#[test]
fn bad_patches_apply_entirely_or_not_at_all() {
    let (server, token, before) = setup(Options::default());
    let cases = [
        (
            json!([{"op": "add", "path": "/devices/-", "value": "c"}, {"op": "remove", "path": "/devices/9"}]),
            400,
            "invalid_patch",
        ),
        (
            json!([{"op": "replace", "path": "/name", "value": "Vans"}, {"op": "test", "path": "/name", "value": "Trucks"}]),
            409,
            "patch_test_failed",
        ),
        (
            json!([{"op": "add", "path": "/devices/-", "value": "c"}, {"op": "replace", "path": "/name", "value": ""}]),
            400,
            "invalid_input",
        ),
        (
            json!([{"op": "add", "path": "/devices/-", "value": "c"}, {"op": "add", "path": "/id", "value": "grp-9"}]),
            400,
            "invalid_patch",
        ),
        (
            json!([{"op": "move", "from": "/devices", "path": "/devices/0"}]),
            400,
            "invalid_patch",
        ),
        (
            json!([{"op": "copy", "from": "/name", "path": "/devices/-"}, {"op": "replace", "path": "", "value": {}}]),
            400,
            "invalid_patch",
        ),
        (
            json!([{"op": "add", "path": "/devices/-"}]),
            400,
            "invalid_patch",
        ),
        (
            json!([{"op": "add", "path": "/devices/-", "value": "x\u{7}"}]),
            400,
            "invalid_input",
        ),
    ];
    for (patch, status, code) in cases {
        let r = server
            .req("PATCH", "/api/groups/grp-1")
            .bearer(&token)
            .body_as("application/json-patch+json", patch.to_string().as_bytes())
            .send();
        r.expect_error(status, code);
    }
    let r = server
        .req("PATCH", "/api/groups/grp-1")
        .bearer(&token)
        .body_as("application/merge-patch+json", br#"{"devices": ["ok", 7]}"#)
        .send();
    r.expect_error(400, "invalid_input");
    unchanged(&server, &token, &before);
}

#[test]
fn tricky_paths_get_clear_answers() {
    let (server, token, before) = setup(Options::default());
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("GET", "/api/groups/grp-1%00".into(), 404, "group_not_found"),
        ("GET", "/api/groups/grp-%31".into(), 200, ""),
        ("GET", "/api/groups/grp-1%2F".into(), 404, "group_not_found"),
        ("GET", "/api/groups%2Fgrp-1".into(), 404, "not_found"),
        ("GET", "/api/groups/%".into(), 400, "invalid_input"),
        ("GET", "/api/groups/grp-1%".into(), 400, "invalid_input"),
        ("GET", "/api/groups/%zz".into(), 400, "invalid_input"),
        (
            "GET",
            "/api/devices/%C0%AF/groups".into(),
            400,
            "invalid_input",
        ),
        (
            "GET",
            "/api/devices/%ED%A0%80/groups".into(),
            400,
            "invalid_input",
        ),
        (
            "GET",
            "/api/devices/a%00b/groups".into(),
            400,
            "invalid_input",
        ),
        ("GET", "/api/devices/a%2Fb/groups".into(), 200, ""),
        (
            "GET",
            "/api/devices/%20a/groups".into(),
            400,
            "invalid_input",
        ),
        (
            "DELETE",
            "/api/groups/grp-1/devices/a%0A".into(),
            400,
            "invalid_input",
        ),
        ("GET", "/api/groups?device=%00".into(), 400, "invalid_input"),
        (
            "GET",
            "/api/groups?limit=99999999999999999999999".into(),
            400,
            "invalid_input",
        ),
        (
            "GET",
            "/api/groups?after=grp-0".into(),
            400,
            "invalid_input",
        ),
        ("GET", "/api/groups?name=%".into(), 400, "invalid_input"),
        ("GET", "/api/changes?after=-1".into(), 400, "invalid_input"),
        (
            "GET",
            "/api/groups/grp-99999999999999999999999".into(),
            404,
            "group_not_found",
        ),
        (
            "GET",
            format!("/api/groups/{}", "x".repeat(5000)),
            404,
            "not_found",
        ),
        (
            "GET",
            format!("/api/devices/{}/groups", "d".repeat(65)),
            400,
            "invalid_input",
        ),
        ("GET", "/api/groups/../groups".into(), 404, "not_found"),
        ("GET", "//api/groups".into(), 404, "not_found"),
    ];
    for (method, path, status, code) in cases {
        let r = server.req(method, &path).bearer(&token).send();
        if code.is_empty() {
            assert_eq!(r.status, status, "{method} {path}: {}", r.text());
        } else {
            r.expect_error(status, code);
        }
    }
    unchanged(&server, &token, &before);
}

#[test]
fn oversized_heads_are_refused_by_hyper_and_the_server_stays_up() {
    let (server, token, before) = setup(Options::default());
    // Request heads are capped at 16 KiB (src/server/mod.rs): past it hyper answers 431 and
    // closes the connection. No handler runs, so the answer has no JSON envelope.
    for extra in [
        format!("X-Big: {}\r\n\r\n", "a".repeat(100 * 1024)),
        (0..3000)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect::<String>()
            + "\r\n",
    ] {
        let r = send(
            &server,
            head("GET", "/api/groups", &token, &extra).as_bytes(),
        );
        assert_eq!(r.status, 431, "{}", r.text());
    }
    let long_path = format!("/api/groups/{}", "x".repeat(100 * 1024));
    let r = send(&server, head("GET", &long_path, &token, "\r\n").as_bytes());
    assert!(matches!(r.status, 414 | 431), "{}", r.status);
    // Invalid bytes in a header value: hyper refuses the head with 400.
    let r = send(
        &server,
        b"GET /api/groups HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    );
    assert_eq!(r.status, 400);
    // Not HTTP at all.
    let r = exchange(
        &server,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        Duration::from_secs(10),
    );
    assert!(r.map_or(true, |r| r.status == 400));
    unchanged(&server, &token, &before);
}

#[test]
fn duplicate_headers_are_refused() {
    let (server, token, before) = setup(Options::default());
    let body = br#"{"name": "Dup"}"#;
    // Two different Content-Lengths: request smuggling material; hyper answers 400.
    let mut req = head(
        "POST",
        "/api/groups",
        &token,
        &format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\nContent-Length: 3\r\n\r\n",
            body.len()
        ),
    )
    .into_bytes();
    req.extend_from_slice(body);
    assert_eq!(send(&server, &req).status, 400);
    // Two Authorization headers are ambiguous: refused whichever one is valid.
    for (first, second) in [(token.as_str(), "fgt_bogus"), ("fgt_bogus", token.as_str())] {
        let req = format!(
            "GET /api/groups HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {first}\r\nAuthorization: Bearer {second}\r\n\r\n"
        );
        send(&server, req.as_bytes()).expect_error(401, "unauthorized");
    }
    unchanged(&server, &token, &before);
}

#[test]
fn oversized_bodies_get_413_before_the_body_is_read() {
    let options = Options::default().env("FLEETGROUPS_LIMITS_MAX_BODY_BYTES", "2048");
    let (server, token, before) = setup(options);
    // Only the head, announcing 1 GB: the 413 must come without a byte of body.
    let req = head(
        "POST",
        "/api/groups",
        &token,
        "Content-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n",
    );
    let t = Instant::now();
    let r =
        exchange(&server, req.as_bytes(), Duration::from_secs(5)).expect("413 without the body");
    r.expect_error(413, "body_too_large");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(t.elapsed() < Duration::from_secs(5));
    // The same for the token exchange, before authentication matters.
    let req = "POST /api/Auth/Token HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 99999999\r\n\r\n";
    exchange(&server, req.as_bytes(), Duration::from_secs(5))
        .expect("413")
        .expect_error(413, "body_too_large");

    // Chunked: under the limit it is read; over it, cut off at the limit.
    let chunked = |payload: &[u8]| {
        let mut b = head(
            "POST",
            "/api/groups",
            &token,
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        )
        .into_bytes();
        for part in payload.chunks(500) {
            b.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
            b.extend_from_slice(part);
            b.extend_from_slice(b"\r\n");
        }
        b.extend_from_slice(b"0\r\n\r\n");
        b
    };
    let big = format!(
        r#"{{"name": "Big", "description": "{}"}}"#,
        "x".repeat(3000)
    );
    send(&server, &chunked(big.as_bytes())).expect_error(413, "body_too_large");
    let small = br#"{"name": "Chunked", "devices": ["c1"]}"#;
    let r = send(&server, &chunked(small));
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["name"], "Chunked");
    // A declared length just over the limit with the body sent: 413 as well.
    let body = format!(r#"{{"name": "{}"}}"#, "y".repeat(2100));
    send(
        &server,
        &with_body(
            "POST",
            "/api/groups",
            &token,
            "application/json",
            body.as_bytes(),
        ),
    )
    .expect_error(413, "body_too_large");
    let after = state(&server, &token);
    assert_eq!(after["groups"].as_array().map(Vec::len), Some(2));
    assert_eq!(after["groups"][0], before["groups"][0]);
}

#[test]
fn wrong_content_types_are_415() {
    let (server, token, before) = setup(Options::default());
    let body = br#"{"name": "Typed"}"#;
    for (method, path, ctype) in [
        ("POST", "/api/groups", "text/plain"),
        ("POST", "/api/groups", "application/x-www-form-urlencoded"),
        ("POST", "/api/groups", "application/json-patch+json"),
        ("POST", "/api/groups", "application/merge-patch+json"),
        ("PUT", "/api/groups/grp-1", "application/jsonx"),
        ("PATCH", "/api/groups/grp-1", "text/json"),
        (
            "POST",
            "/api/groups/grp-1/devices",
            "multipart/form-data; boundary=x",
        ),
    ] {
        let r = send(&server, &with_body(method, path, &token, ctype, body));
        let v = r.expect_error(415, "unsupported_media_type");
        assert!(v["error"]
            .as_str()
            .unwrap_or("")
            .contains(ctype.split(';').next().unwrap_or("")));
    }
    // A body without any Content-Type.
    let mut req = head(
        "POST",
        "/api/groups",
        &token,
        &format!("Content-Length: {}\r\n\r\n", body.len()),
    )
    .into_bytes();
    req.extend_from_slice(body);
    send(&server, &req).expect_error(415, "unsupported_media_type");
    // Allowed: any case, a charset parameter.
    let r = send(
        &server,
        &with_body(
            "POST",
            "/api/groups",
            &token,
            "Application/JSON; Charset=UTF-8",
            body,
        ),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let after = state(&server, &token);
    assert_eq!(after["groups"].as_array().map(Vec::len), Some(2));
    assert_eq!(after["groups"][0], before["groups"][0]);
}

#[test]
fn content_length_with_chunked_follows_chunked_and_closes() {
    // RFC 9112 §6.3: Transfer-Encoding wins and the connection must close afterwards.
    // hyper drops the Content-Length and turns keep-alive off, so a smuggled second
    // request after the body is never read.
    let (server, token, _) = setup(Options::default());
    let req = format!(
        "POST /api/groups HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nf\r\n{{\"name\": \"Dup\"}}\r\n0\r\n\r\nGET /api/groups HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    let mut s = TcpStream::connect(server.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(req.as_bytes()).expect("write");
    let r = try_read_response(&mut s).expect("answer");
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["name"], "Dup");
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut s, &mut rest);
    assert!(
        rest.is_empty(),
        "a second request was served: {}",
        String::from_utf8_lossy(&rest)
    );
}
