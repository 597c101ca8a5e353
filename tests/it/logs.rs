//! Logs (docs/operations/running.md "Request log"): one line per request with method, path,
//! status, duration, request ID and user, in `text` and in `json` (every line parses);
//! and across a whole session — logins, a key rotation through the CLI with the server
//! stopped, bad logins, requests with live, revoked and bogus tokens — no key, no token
//! and no `Authorization` header ever reaches the log.

use serde_json::{json, Value};

use crate::support::{Options, Resp, TestServer};

/// What a session used and left behind.
struct Session {
    log: String,
    secrets: Vec<String>,
    /// Request IDs the test sent, one per request.
    request_ids: Vec<String>,
}

struct Client<'a> {
    server: &'a TestServer,
    ids: Vec<String>,
}

impl Client<'_> {
    fn next_id(&mut self) -> String {
        let id = format!("it-logs-{}-{}", self.server.addr.port(), self.ids.len());
        self.ids.push(id.clone());
        id
    }

    fn login(&mut self, user: &str, key: &str) -> Resp {
        let id = self.next_id();
        self.server
            .req("POST", "/api/Auth/Token")
            .header("X-Request-Id", &id)
            .json(&json!({"userName": user, "apiKey": key}))
            .send()
    }

    fn token(&mut self, user: &str, key: &str) -> String {
        let r = self.login(user, key);
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["token"].as_str().unwrap().to_string()
    }

    fn call(&mut self, method: &str, path: &str, auth: Option<&str>, body: Option<Value>) -> Resp {
        let id = self.next_id();
        let mut req = self.server.req(method, path).header("X-Request-Id", &id);
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send()
    }
}

fn run_session(format: &str) -> Session {
    let mut server = TestServer::with(Options::default().env("FLEETGROUPS_LOG_FORMAT", format));
    let first_key = server.admin_key();
    let mut secrets = vec![first_key.clone()];
    let mut ids = Vec::new();
    {
        let mut c = Client {
            server: &server,
            ids: Vec::new(),
        };
        let t = c.token("admin", &first_key);
        secrets.push(t.clone());
        let r = c.call(
            "POST",
            "/api/groups",
            Some(&format!("Bearer {t}")),
            Some(json!({"name": "Before rotation"})),
        );
        assert_eq!(r.status, 201, "{}", r.text());
        ids.append(&mut c.ids);
    }
    let old_token = secrets[1].clone();
    assert_eq!(server.stop().code(), Some(0));

    // With the server stopped the CLI opens the store itself.
    let added = server.cli(&["user", "add", "viewer", "--role", "read"]);
    assert_eq!(added.code, 0, "{}", added.stderr);
    let viewer_key = added.stdout.trim().to_string();
    let rotated = server.cli(&["user", "rotate-key", "admin"]);
    assert_eq!(rotated.code, 0, "{}", rotated.stderr);
    let admin_key = rotated.stdout.trim().to_string();
    assert!(viewer_key.starts_with("fgk_") && admin_key.starts_with("fgk_"));
    secrets.extend([viewer_key.clone(), admin_key.clone()]);

    server.restart();
    {
        let mut c = Client {
            server: &server,
            ids: Vec::new(),
        };
        let admin = c.token("admin", &admin_key);
        let viewer = c.token("viewer", &viewer_key);
        secrets.extend([admin.clone(), viewer.clone()]);
        // Bad logins: the rotated-out key, a wrong key, an unknown user, and a key
        // typed into the userName field.
        for (user, key) in [
            ("admin", first_key.as_str()),
            ("admin", "fgk_0000000000000000000000000000000000000000"),
            ("nobody", admin_key.as_str()),
            (admin_key.as_str(), viewer_key.as_str()),
        ] {
            assert_eq!(c.login(user, key).status, 401);
        }
        let bearer = |t: &str| format!("Bearer {t}");
        let r = c.call(
            "POST",
            "/api/groups",
            Some(&bearer(&admin)),
            Some(json!({"name": "After rotation"})),
        );
        assert_eq!(r.status, 201, "{}", r.text());
        assert_eq!(
            c.call("GET", "/api/groups", Some(&bearer(&viewer)), None)
                .status,
            200
        );
        assert_eq!(
            c.call(
                "POST",
                "/api/groups",
                Some(&bearer(&viewer)),
                Some(json!({"name": "No"}))
            )
            .status,
            403
        );
        // The token issued before the rotation died with the old key.
        assert_eq!(
            c.call("GET", "/api/groups", Some(&bearer(&old_token)), None)
                .status,
            401
        );
        assert_eq!(
            c.call("GET", "/api/groups", Some("Bearer fgt_forged"), None)
                .status,
            401
        );
        assert_eq!(
            c.call(
                "GET",
                "/api/groups",
                Some(&format!("Basic {admin_key}")),
                None
            )
            .status,
            401
        );
        assert_eq!(c.call("GET", "/api/groups", None, None).status, 401);
        ids.append(&mut c.ids);
    }
    assert_eq!(server.stop().code(), Some(0));
    Session {
        log: server.all_logs(),
        secrets,
        request_ids: ids,
    }
}

fn assert_no_secrets(s: &Session) {
    assert_eq!(s.secrets.len(), 6);
    for secret in &s.secrets {
        assert!(
            !s.log.contains(secret.as_str()),
            "a key or token was logged:\n{}",
            s.log
        );
    }
    for needle in ["Authorization", "authorization", "Bearer", "fgt_", "fgk_"] {
        assert!(!s.log.contains(needle), "{needle:?} was logged:\n{}", s.log);
    }
}

#[test]
fn text_logs_one_line_per_request_and_no_secret() {
    let s = run_session("text");
    assert_no_secrets(&s);
    for id in &s.request_ids {
        let lines: Vec<&str> = s
            .log
            .lines()
            .filter(|l| l.contains(&format!("request_id={id} ")))
            .collect();
        assert_eq!(lines.len(), 1, "{id}: {lines:?}");
        let line = lines[0];
        for field in ["method=", "path=/api/", "status=", "duration_ms=", "user="] {
            assert!(line.contains(field), "{field} missing in {line}");
        }
    }
    let create = s
        .log
        .lines()
        .find(|l| l.contains("method=POST path=/api/groups status=201"))
        .expect("the create is logged");
    assert!(create.contains("user=\"admin\""), "{create}");
    let forbidden = s
        .log
        .lines()
        .find(|l| l.contains("status=403"))
        .expect("the refused create is logged");
    assert!(forbidden.contains("user=\"viewer\""), "{forbidden}");
}

#[test]
fn json_logs_parse_line_by_line_with_the_request_fields() {
    let s = run_session("json");
    assert_no_secrets(&s);
    let lines: Vec<Value> = s
        .log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines
        .iter()
        .all(|v| v["timestamp"].is_string() && v["level"].is_string()));
    let requests: Vec<&Value> = lines.iter().filter(|v| v["message"] == "request").collect();
    assert_eq!(requests.len(), s.request_ids.len(), "one line per request");
    for (v, id) in requests.iter().zip(&s.request_ids) {
        assert_eq!(v["request_id"], id.as_str(), "{v}");
        assert!(v["method"].is_string(), "{v}");
        assert!(
            v["path"].as_str().is_some_and(|p| p.starts_with("/api/")),
            "{v}"
        );
        assert!(v["status"].is_u64(), "{v}");
        assert!(v["duration_ms"].as_f64().is_some_and(|d| d >= 0.0), "{v}");
        assert!(v["user"].is_string(), "{v}");
    }
    // A login names its user once the user exists; a failed one for a stranger does not.
    let logins: Vec<(&Value, &Value)> = requests
        .iter()
        .filter(|v| v["path"] == "/api/Auth/Token")
        .map(|v| (&v["status"], &v["user"]))
        .collect();
    assert!(
        logins.contains(&(&json!(200), &json!("viewer"))),
        "{logins:?}"
    );
    assert!(logins.contains(&(&json!(401), &json!("-"))), "{logins:?}");
}
