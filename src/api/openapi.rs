//! `GET /api/openapi.json` [ext]: the OpenAPI 3.1 document describing the API, kept in
//! `openapi.json` beside this file and compiled into the binary. The tests below walk
//! the router's table and the document and fail when either has a route, a method, an
//! error code or an authentication rule the other lacks.

use super::Reply;

/// The document as served.
const DOCUMENT: &str = include_str!("openapi.json");

/// The document, with its own content type (it is not an envelope answer).
pub fn reply() -> Reply {
    Reply {
        raw: Some((
            "application/json; charset=utf-8",
            bytes::Bytes::from_static(DOCUMENT.as_bytes()),
        )),
        ..Reply::new(http::StatusCode::OK)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::DOCUMENT;
    use crate::error::ApiError;
    use crate::http::router::ROUTES;

    fn doc() -> Value {
        serde_json::from_str(DOCUMENT).expect("openapi.json is JSON")
    }

    /// The document's path for a route pattern: the same, except that
    /// case-insensitive routes are compared ignoring case.
    fn doc_path<'a>(
        doc: &'a Value,
        pattern: &str,
        case_insensitive: bool,
    ) -> Option<(&'a String, &'a Value)> {
        doc["paths"].as_object()?.iter().find(|(p, _)| {
            if case_insensitive {
                p.eq_ignore_ascii_case(pattern)
            } else {
                *p == pattern
            }
        })
    }

    const METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];

    /// Resolves a `$ref` inside the document.
    fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => doc
                .pointer(r.trim_start_matches('#'))
                .unwrap_or_else(|| panic!("dangling $ref {r}")),
            None => v,
        }
    }

    #[test]
    fn every_route_and_method_is_documented_and_nothing_else() {
        let doc = doc();
        assert_eq!(doc["openapi"], "3.1.0");
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for m in METHODS {
                if item.get(m).is_some() {
                    documented.insert((path.to_ascii_lowercase(), m.to_ascii_uppercase()));
                }
            }
        }
        let mut routed = BTreeSet::new();
        for r in ROUTES {
            let (path, item) = doc_path(&doc, r.pattern, r.any_case)
                .unwrap_or_else(|| panic!("{} is not in openapi.json", r.pattern));
            let (method, op) = (r.method, r.op);
            routed.insert((path.to_ascii_lowercase(), method.to_string()));
            let o = &item[method.to_ascii_lowercase()];
            assert!(o.is_object(), "{method} {path} is not in openapi.json");
            // Authentication as the router applies it.
            let open = o.get("security") == Some(&serde_json::json!([]));
            assert_eq!(open, !op.needs_auth(), "security of {method} {path}");
            let responses = o["responses"].as_object().expect("responses");
            if op.needs_auth() {
                for s in ["401", "429"] {
                    assert!(responses.contains_key(s), "{method} {path} lacks {s}");
                }
            }
            if op.writes() {
                assert!(responses.contains_key("403"), "{method} {path} lacks 403");
            }
            if op.has_body() {
                assert!(o["requestBody"].is_object(), "{method} {path} lacks a body");
                for s in ["400", "408", "413", "415"] {
                    assert!(responses.contains_key(s), "{method} {path} lacks {s}");
                }
            } else {
                assert!(o.get("requestBody").is_none(), "{method} {path} has a body");
            }
            assert!(
                responses.keys().any(|s| s.starts_with('2')),
                "{method} {path} has no success answer"
            );
            assert!(o["operationId"].is_string(), "{method} {path} operationId");
            // Every path parameter of the pattern is declared.
            let mut declared: Vec<String> = Vec::new();
            for p in item["parameters"]
                .as_array()
                .into_iter()
                .chain(o["parameters"].as_array())
                .flatten()
            {
                let p = resolve(&doc, p);
                if p["in"] == "path" {
                    declared.push(p["name"].as_str().expect("name").to_string());
                }
            }
            let wanted: Vec<String> = r
                .pattern
                .split('/')
                .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
                .map(str::to_string)
                .collect();
            assert_eq!(declared, wanted, "path parameters of {method} {path}");
        }
        assert_eq!(documented, routed, "openapi.json and ROUTES differ");
    }

    #[test]
    fn group_answers_document_their_etag() {
        let doc = doc();
        for (path, method, status) in [
            ("/api/groups", "post", "201"),
            ("/api/groups/{groupId}", "get", "200"),
            ("/api/groups/{groupId}", "get", "304"),
            ("/api/groups/{groupId}", "put", "200"),
            ("/api/groups/{groupId}", "patch", "200"),
            ("/api/groups/{groupId}/devices", "post", "200"),
            ("/api/groups/{groupId}/devices/{deviceId}", "delete", "200"),
        ] {
            let r = resolve(&doc, &doc["paths"][path][method]["responses"][status]);
            assert!(r["headers"]["ETag"].is_object(), "{method} {path} {status}");
        }
        let conditional = ["put", "patch", "delete"];
        for m in conditional {
            let params = doc["paths"]["/api/groups/{groupId}"][m]["parameters"].to_string();
            assert!(params.contains("If-Match"), "{m}");
            let r = &doc["paths"]["/api/groups/{groupId}"][m]["responses"]["412"];
            assert!(r.is_object(), "{m} 412");
        }
    }

    /// Every error the server can send, one of each variant; the match makes this
    /// fail to compile when a variant is added without being listed here.
    fn all_errors() -> Vec<ApiError> {
        let all = vec![
            ApiError::InvalidInput(String::new()),
            ApiError::InvalidPatch(String::new()),
            ApiError::Unauthorized(crate::error::TokenRefusal::Expired),
            ApiError::InvalidCredentials,
            ApiError::Forbidden(String::new()),
            ApiError::OfficeGroupReadOnly,
            ApiError::GroupNotFound,
            ApiError::NotFound,
            ApiError::MethodNotAllowed("GET"),
            ApiError::RequestTimeout,
            ApiError::NameConflict,
            ApiError::PatchTestFailed(String::new()),
            ApiError::CursorExpired,
            ApiError::PreconditionFailed,
            ApiError::BodyTooLarge,
            ApiError::UnsupportedMediaType(String::new()),
            ApiError::IdempotencyKeyReused,
            ApiError::RateLimited { retry_after: 1 },
            ApiError::DailyLimitExceeded { retry_after: 1 },
            ApiError::TooManyFailedLogins { retry_after: 1 },
            ApiError::Internal(String::new()),
            ApiError::Unavailable(String::new()),
            ApiError::Busy(""),
        ];
        for e in &all {
            match e {
                ApiError::InvalidInput(_)
                | ApiError::InvalidPatch(_)
                | ApiError::Unauthorized(_)
                | ApiError::InvalidCredentials
                | ApiError::Forbidden(_)
                | ApiError::OfficeGroupReadOnly
                | ApiError::GroupNotFound
                | ApiError::NotFound
                | ApiError::MethodNotAllowed(_)
                | ApiError::RequestTimeout
                | ApiError::NameConflict
                | ApiError::PatchTestFailed(_)
                | ApiError::CursorExpired
                | ApiError::PreconditionFailed
                | ApiError::BodyTooLarge
                | ApiError::UnsupportedMediaType(_)
                | ApiError::IdempotencyKeyReused
                | ApiError::RateLimited { .. }
                | ApiError::DailyLimitExceeded { .. }
                | ApiError::TooManyFailedLogins { .. }
                | ApiError::Internal(_)
                | ApiError::Unavailable(_)
                | ApiError::Busy(_) => {}
            }
        }
        all
    }

    #[test]
    fn every_error_code_is_documented_with_its_status() {
        let doc = doc();
        let documented: BTreeSet<String> = doc["components"]["schemas"]["ErrorCode"]["enum"]
            .as_array()
            .expect("ErrorCode enum")
            .iter()
            .map(|c| c.as_str().expect("code").to_string())
            .collect();
        let errors = all_errors();
        let codes: BTreeSet<String> = errors.iter().map(|e| e.code().to_string()).collect();
        assert_eq!(documented, codes);
        // Each code appears in some answer with its status (405 and the route-level
        // 404 answer any path, so the document describes them in its overview).
        let text = doc.to_string();
        for e in &errors {
            if matches!(e, ApiError::MethodNotAllowed(_) | ApiError::NotFound) {
                assert!(text.contains(e.code()), "{}", e.code());
                continue;
            }
            let found = doc["paths"]
                .as_object()
                .expect("paths")
                .values()
                .any(|item| {
                    METHODS.iter().any(|m| {
                        let r = resolve(&doc, &item[m]["responses"][e.status().as_str()]);
                        r.to_string().contains(&format!("\"{}\"", e.code()))
                    })
                });
            assert!(found, "no answer documents {} {}", e.status(), e.code());
        }
    }

    #[test]
    fn every_reference_resolves() {
        fn walk(doc: &Value, v: &Value) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        assert!(
                            doc.pointer(r.trim_start_matches('#')).is_some(),
                            "dangling {r}"
                        );
                    }
                    m.values().for_each(|x| walk(doc, x));
                }
                Value::Array(a) => a.iter().for_each(|x| walk(doc, x)),
                _ => {}
            }
        }
        let doc = doc();
        walk(&doc, &doc);
    }
}
