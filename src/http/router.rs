//! The hand-rolled router: a table of path patterns and the operations each method maps
//! to. A path is split on `/` once, each segment is percent-decoded, and the segments
//! are matched against the table. A known path with another method is 405 with `Allow`.
//! The table is plain data so the OpenAPI test can walk it. Percent-decoding and the
//! query parser live in `percent.rs`, below the handlers that parse their queries.

use crate::error::ApiError;
// Re-exported: the fuzz targets and property tests reach the decoders here.
pub use crate::percent::{parse_query, percent_decode};

/// Every operation the server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Token,
    ListGroups,
    CreateGroup,
    GetGroup,
    PutGroup,
    PatchGroup,
    DeleteGroup,
    AddDevices,
    RemoveDevice,
    DeviceGroups,
    Changes,
    OpenApi,
    Healthz,
    Readyz,
    Metrics,
}

impl Op {
    /// Whether the operation needs a bearer token.
    pub fn needs_auth(self) -> bool {
        !matches!(
            self,
            Op::Token | Op::OpenApi | Op::Healthz | Op::Readyz | Op::Metrics
        )
    }

    /// Whether the operation changes groups (refused to `read` users).
    pub fn writes(self) -> bool {
        matches!(
            self,
            Op::CreateGroup
                | Op::PutGroup
                | Op::PatchGroup
                | Op::DeleteGroup
                | Op::AddDevices
                | Op::RemoveDevice
        )
    }

    /// Whether the operation reads a JSON request body.
    pub fn has_body(self) -> bool {
        matches!(
            self,
            Op::Token | Op::CreateGroup | Op::PutGroup | Op::PatchGroup | Op::AddDevices
        )
    }

    /// A stable label for logs and metrics (the route, not the concrete path).
    pub fn label(self) -> &'static str {
        ROUTES
            .iter()
            .find(|r| r.methods.iter().any(|(_, op)| *op == self))
            .map_or("unknown", |r| r.pattern)
    }
}

/// One path pattern and its methods.
#[derive(Debug)]
pub struct RouteDef {
    /// `/api/groups/{groupId}` style; `{x}` matches one non-empty segment.
    pub pattern: &'static str,
    pub methods: &'static [(&'static str, Op)],
    /// `Allow` header value for 405 answers.
    pub allow: &'static str,
    /// Literal segments compare ASCII-case-insensitively (only `/api/Auth/Token`).
    pub case_insensitive: bool,
}

/// The route table.
pub static ROUTES: &[RouteDef] = &[
    RouteDef {
        pattern: "/api/auth/token",
        methods: &[("POST", Op::Token)],
        allow: "POST",
        case_insensitive: true,
    },
    RouteDef {
        pattern: "/api/groups",
        methods: &[("GET", Op::ListGroups), ("POST", Op::CreateGroup)],
        allow: "GET, POST",
        case_insensitive: false,
    },
    RouteDef {
        pattern: "/api/groups/{groupId}",
        methods: &[
            ("GET", Op::GetGroup),
            ("PUT", Op::PutGroup),
            ("PATCH", Op::PatchGroup),
            ("DELETE", Op::DeleteGroup),
        ],
        allow: "GET, PUT, PATCH, DELETE",
        case_insensitive: false,
    },
    RouteDef {
        pattern: "/api/groups/{groupId}/devices",
        methods: &[("POST", Op::AddDevices)],
        allow: "POST",
        case_insensitive: false,
    },
    RouteDef {
        pattern: "/api/groups/{groupId}/devices/{deviceId}",
        methods: &[("DELETE", Op::RemoveDevice)],
        allow: "DELETE",
        case_insensitive: false,
    },
    RouteDef {
        pattern: "/api/devices/{deviceId}/groups",
        methods: &[("GET", Op::DeviceGroups)],
        allow: "GET",
        case_insensitive: false,
    },
    RouteDef {
        pattern: "/api/changes",
        methods: &[("GET", Op::Changes)],
        allow: "GET",
        case_insensitive: false,
    },
    RouteDef {
        pattern: "/api/openapi.json",
        methods: &[("GET", Op::OpenApi)],
        allow: "GET",
        case_insensitive: false,
    },
    RouteDef {
        pattern: "/healthz",
        methods: &[("GET", Op::Healthz)],
        allow: "GET",
        case_insensitive: false,
    },
    RouteDef {
        pattern: "/readyz",
        methods: &[("GET", Op::Readyz)],
        allow: "GET",
        case_insensitive: false,
    },
    RouteDef {
        pattern: "/metrics",
        methods: &[("GET", Op::Metrics)],
        allow: "GET",
        case_insensitive: false,
    },
];

/// A matched route: the operation and the decoded `{…}` parameters in order.
#[derive(Debug, PartialEq, Eq)]
pub struct Matched {
    pub op: Op,
    pub params: Vec<String>,
}

/// Finds the operation for a method and a raw path (without the query).
pub fn route(method: &str, path: &str) -> Result<Matched, ApiError> {
    let rest = path.strip_prefix('/').ok_or(ApiError::NotFound)?;
    if path.len() > 4096 {
        return Err(ApiError::NotFound);
    }
    let segments: Vec<String> = rest
        .split('/')
        .map(percent_decode)
        .collect::<Result<_, _>>()?;
    // Patterns are walked in place (no per-request allocation per route); the
    // parameters are copied only for the route that matches.
    for def in ROUTES {
        if def.pattern.matches('/').count() != segments.len() {
            continue;
        }
        let fits = def.pattern[1..].split('/').zip(&segments).all(|(p, s)| {
            if p.starts_with('{') {
                !s.is_empty()
            } else if def.case_insensitive {
                p.eq_ignore_ascii_case(s)
            } else {
                p == s
            }
        });
        if !fits {
            continue;
        }
        return match def.methods.iter().find(|(m, _)| *m == method) {
            Some((_, op)) => {
                let params = def.pattern[1..]
                    .split('/')
                    .zip(segments)
                    .filter(|(p, _)| p.starts_with('{'))
                    .map(|(_, s)| s)
                    .collect();
                Ok(Matched { op: *op, params })
            }
            None => Err(ApiError::MethodNotAllowed(def.allow)),
        };
    }
    Err(ApiError::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(method: &str, path: &str) -> (Op, Vec<String>) {
        let m = route(method, path).unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        (m.op, m.params)
    }

    #[test]
    fn table() {
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(ok("POST", "/api/Auth/Token"), (Op::Token, vec![]));
        assert_eq!(ok("POST", "/api/auth/token"), (Op::Token, vec![]));
        assert_eq!(ok("POST", "/API/AUTH/TOKEN"), (Op::Token, vec![]));
        assert_eq!(ok("GET", "/api/groups"), (Op::ListGroups, vec![]));
        assert_eq!(ok("POST", "/api/groups"), (Op::CreateGroup, vec![]));
        assert_eq!(
            ok("GET", "/api/groups/grp-1"),
            (Op::GetGroup, p(&["grp-1"]))
        );
        assert_eq!(
            ok("PUT", "/api/groups/grp-1"),
            (Op::PutGroup, p(&["grp-1"]))
        );
        assert_eq!(
            ok("PATCH", "/api/groups/grp-1"),
            (Op::PatchGroup, p(&["grp-1"]))
        );
        assert_eq!(
            ok("DELETE", "/api/groups/grp-1"),
            (Op::DeleteGroup, p(&["grp-1"]))
        );
        assert_eq!(
            ok("POST", "/api/groups/grp-1/devices"),
            (Op::AddDevices, p(&["grp-1"]))
        );
        assert_eq!(
            ok("DELETE", "/api/groups/grp-1/devices/a%2Fb%20c"),
            (Op::RemoveDevice, p(&["grp-1", "a/b c"]))
        );
        assert_eq!(
            ok("GET", "/api/devices/d+1/groups"),
            (Op::DeviceGroups, p(&["d+1"]))
        );
        assert_eq!(ok("GET", "/api/changes"), (Op::Changes, vec![]));
        assert_eq!(ok("GET", "/api/openapi.json"), (Op::OpenApi, vec![]));
        assert_eq!(ok("GET", "/healthz"), (Op::Healthz, vec![]));
        assert_eq!(ok("GET", "/readyz"), (Op::Readyz, vec![]));
        assert_eq!(ok("GET", "/metrics"), (Op::Metrics, vec![]));
    }

    #[test]
    fn allow_values_are_header_values() {
        // `ApiError::headers` makes them with `HeaderValue::from_static`.
        for def in ROUTES {
            assert!(
                http::HeaderValue::from_str(def.allow).is_ok(),
                "{}",
                def.pattern
            );
            let methods: Vec<&str> = def.methods.iter().map(|(m, _)| *m).collect();
            assert_eq!(def.allow, methods.join(", "), "{}", def.pattern);
        }
    }

    #[test]
    fn misses() {
        assert_eq!(route("GET", "/api/groups/"), Err(ApiError::NotFound));
        assert_eq!(route("GET", "/api/Groups"), Err(ApiError::NotFound));
        assert_eq!(route("GET", "/api/groups/grp-1/"), Err(ApiError::NotFound));
        assert_eq!(route("GET", "/"), Err(ApiError::NotFound));
        assert_eq!(route("GET", "nothing"), Err(ApiError::NotFound));
        assert_eq!(
            route("DELETE", "/api/groups"),
            Err(ApiError::MethodNotAllowed("GET, POST"))
        );
        assert_eq!(
            route("GET", "/api/auth/token"),
            Err(ApiError::MethodNotAllowed("POST"))
        );
        assert_eq!(
            route("HEAD", "/api/groups/grp-1"),
            Err(ApiError::MethodNotAllowed("GET, PUT, PATCH, DELETE"))
        );
        assert!(matches!(
            route("GET", "/api/groups/%zz"),
            Err(ApiError::InvalidInput(_))
        ));
        assert!(matches!(
            route("GET", "/api/groups/%ff"),
            Err(ApiError::InvalidInput(_))
        ));
    }
}
