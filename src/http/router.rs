//! The hand-rolled router: a table of path patterns and the operations each method maps
//! to. A path is split on `/` once, each segment is percent-decoded, and the segments
//! are matched against the table. A known path with another method is 405 with `Allow`.
//! The table is plain data, one row per route, so the OpenAPI tests can walk it. Percent-decoding and the
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
    /// This operation's row in [`ROUTES`] (the table is in `Op` order; a test checks).
    fn route(self) -> &'static Route {
        &ROUTES[self as usize]
    }

    /// Whether the operation needs a bearer token.
    pub fn needs_auth(self) -> bool {
        self.route().token
    }

    /// Whether the operation changes groups (refused to `read` users).
    pub fn writes(self) -> bool {
        self.route().writes
    }

    /// Whether the operation reads a JSON request body.
    pub fn has_body(self) -> bool {
        self.route().body
    }

    /// A stable label for logs and metrics (the route, not the concrete path).
    pub fn label(self) -> &'static str {
        self.route().pattern
    }
}

/// One route: a method on a path pattern, the operation it runs and what the request
/// pipeline does before the handler. Everything else about a route (the `Allow` value
/// of a 405, the OpenAPI consistency checks, the metrics label) is derived from here,
/// so adding an endpoint is an `Op`, one row and its dispatch arm.
#[derive(Debug)]
pub struct Route {
    pub method: &'static str,
    /// `/api/groups/{groupId}` style; `{x}` matches one non-empty segment.
    pub pattern: &'static str,
    pub op: Op,
    /// Needs a bearer token (the default; [`Route::public`] clears it).
    pub token: bool,
    /// Changes groups: refused to `read` users.
    pub writes: bool,
    /// Reads a JSON request body.
    pub body: bool,
    /// Literal segments compare ASCII-case-insensitively (only `/api/Auth/Token`).
    pub any_case: bool,
}

impl Route {
    const fn new(method: &'static str, pattern: &'static str, op: Op) -> Route {
        Route {
            method,
            pattern,
            op,
            token: true,
            writes: false,
            body: false,
            any_case: false,
        }
    }

    const fn public(mut self) -> Route {
        self.token = false;
        self
    }

    const fn writes(mut self) -> Route {
        self.writes = true;
        self
    }

    const fn body(mut self) -> Route {
        self.body = true;
        self
    }

    const fn any_case(mut self) -> Route {
        self.any_case = true;
        self
    }

    /// Whether `segments` (percent-decoded) fit this route's pattern.
    fn fits(&self, segments: &[String]) -> bool {
        self.pattern.matches('/').count() == segments.len()
            && self.pattern[1..].split('/').zip(segments).all(|(p, s)| {
                if p.starts_with('{') {
                    !s.is_empty()
                } else if self.any_case {
                    p.eq_ignore_ascii_case(s)
                } else {
                    p == s
                }
            })
    }
}

/// The route table, one row per method and pattern, in `Op` order; rows of one pattern
/// stay together, in the order their methods are listed in `Allow`.
pub static ROUTES: &[Route] = &[
    Route::new("POST", "/api/auth/token", Op::Token)
        .public()
        .body()
        .any_case(),
    Route::new("GET", "/api/groups", Op::ListGroups),
    Route::new("POST", "/api/groups", Op::CreateGroup)
        .writes()
        .body(),
    Route::new("GET", "/api/groups/{groupId}", Op::GetGroup),
    Route::new("PUT", "/api/groups/{groupId}", Op::PutGroup)
        .writes()
        .body(),
    Route::new("PATCH", "/api/groups/{groupId}", Op::PatchGroup)
        .writes()
        .body(),
    Route::new("DELETE", "/api/groups/{groupId}", Op::DeleteGroup).writes(),
    Route::new("POST", "/api/groups/{groupId}/devices", Op::AddDevices)
        .writes()
        .body(),
    Route::new(
        "DELETE",
        "/api/groups/{groupId}/devices/{deviceId}",
        Op::RemoveDevice,
    )
    .writes(),
    Route::new("GET", "/api/devices/{deviceId}/groups", Op::DeviceGroups),
    Route::new("GET", "/api/changes", Op::Changes),
    Route::new("GET", "/api/openapi.json", Op::OpenApi).public(),
    Route::new("GET", "/healthz", Op::Healthz).public(),
    Route::new("GET", "/readyz", Op::Readyz).public(),
    Route::new("GET", "/metrics", Op::Metrics).public(),
];

/// The `Allow` value of a 405 on `pattern`: its rows' methods, joined once per process
/// (the error carries a `&'static str`, and the table is static).
pub fn allow(pattern: &str) -> &'static str {
    static ALLOW: std::sync::OnceLock<Vec<(&'static str, String)>> = std::sync::OnceLock::new();
    let table = ALLOW.get_or_init(|| {
        let mut out: Vec<(&'static str, String)> = Vec::new();
        for r in ROUTES {
            match out.iter_mut().find(|(p, _)| *p == r.pattern) {
                Some((_, methods)) => {
                    methods.push_str(", ");
                    methods.push_str(r.method);
                }
                None => out.push((r.pattern, r.method.to_string())),
            }
        }
        out
    });
    table
        .iter()
        .find(|(p, _)| *p == pattern)
        .map_or("", |(_, methods)| methods.as_str())
}

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
    // Patterns are walked in place (no per-request allocation per route), once per
    // pattern (its rows are adjacent); the parameters are copied only for the row that
    // matches.
    let mut fitting: Option<&'static str> = None;
    let mut last: Option<(&'static str, bool)> = None;
    for r in ROUTES {
        let fits = match last {
            Some((pattern, fits)) if pattern == r.pattern => fits,
            _ => r.fits(&segments),
        };
        last = Some((r.pattern, fits));
        if !fits {
            continue;
        }
        if r.method == method {
            let params = r.pattern[1..]
                .split('/')
                .zip(segments)
                .filter(|(p, _)| p.starts_with('{'))
                .map(|(_, s)| s)
                .collect();
            return Ok(Matched { op: r.op, params });
        }
        fitting = Some(r.pattern);
    }
    if let Some(pattern) = fitting {
        return Err(ApiError::MethodNotAllowed(allow(pattern)));
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
    fn the_table_is_in_op_order_with_each_pattern_together() {
        for (i, r) in ROUTES.iter().enumerate() {
            assert_eq!(r.op as usize, i, "{:?} is not at its Op's place", r.op);
        }
        let mut seen: Vec<&str> = Vec::new();
        for w in ROUTES.windows(2) {
            if w[0].pattern != w[1].pattern {
                seen.push(w[0].pattern);
                assert!(!seen.contains(&w[1].pattern), "{} is split", w[1].pattern);
            }
        }
    }

    #[test]
    fn allow_values_are_header_values() {
        // `ApiError::headers` makes them with `HeaderValue::from_static`.
        for r in ROUTES {
            let allow = allow(r.pattern);
            assert!(http::HeaderValue::from_str(allow).is_ok(), "{}", r.pattern);
            assert!(allow.split(", ").any(|m| m == r.method), "{}", r.pattern);
        }
        assert_eq!(allow("/api/groups/{groupId}"), "GET, PUT, PATCH, DELETE");
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
