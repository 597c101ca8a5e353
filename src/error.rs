//! The one error type of the request path and the one place that turns an error into
//! an HTTP status, a stable `errorCode` and a client-safe message (docs/api/http.md "Errors").
//!
//! Handlers and the auth layer return [`ApiError`]; the store returns its own
//! [`crate::store::Error`], which the one `From` impl below maps. Nothing else in the
//! crate picks a status code. Internal causes (`Internal`, `Unavailable`) carry a detail
//! string — for a store error its whole cause chain, `{err}: {source}: …` — that goes
//! to the log with the request ID and never to the client.

use std::borrow::Cow;
use std::fmt;

use http::header::{ALLOW, CONNECTION, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderName, HeaderValue, StatusCode};

/// Everything a request can fail with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// 400: a body or parameter broke a rule; the text names the field.
    InvalidInput(String),
    /// 400: a JSON Patch document is malformed or addresses something outside the group.
    InvalidPatch(String),
    /// 401: no, a malformed, unknown, expired or revoked bearer token; why, for the
    /// `WWW-Authenticate` challenge and the log (the message stays Plaspy's).
    Unauthorized(TokenRefusal),
    /// 401: token exchange with an unknown user, a wrong key or a disabled user.
    InvalidCredentials,
    /// 403: the caller may not do this (a `read` user writing, a quota).
    Forbidden(String),
    /// 403: the group is an office group (defined centrally): read-only at a gateway.
    OfficeGroupReadOnly,
    /// 404: no such group in the caller's account (or in another one: same answer).
    GroupNotFound,
    /// 404: no such route.
    NotFound,
    /// 405: the path exists but not with this method; carries the `Allow` value.
    MethodNotAllowed(&'static str),
    /// 408: the body did not arrive in time.
    RequestTimeout,
    /// 409: another group of the account has this name (case-insensitively).
    NameConflict,
    /// 409: a JSON Patch `test` operation failed at this path.
    PatchTestFailed(String),
    /// 410: a change-feed cursor older than the retained history.
    CursorExpired,
    /// 412: `If-Match` named another revision.
    PreconditionFailed,
    /// 413: the body is over `limits.max_body_bytes`.
    BodyTooLarge,
    /// 415: the body's content type is not one this route accepts.
    UnsupportedMediaType(String),
    /// 422: an `Idempotency-Key` was reused with a different request.
    IdempotencyKeyReused,
    /// 429: over `limits.requests_per_minute`.
    RateLimited { retry_after: u64 },
    /// 429: over the user's daily limit.
    DailyLimitExceeded { retry_after: u64 },
    /// 429: too many failed logins for a userName or a client address.
    TooManyFailedLogins { retry_after: u64 },
    /// 500: a bug or an unexpected state; the detail is for the log only.
    Internal(String),
    /// 503: storage cannot take writes (or the server is stopping); detail for the log.
    Unavailable(String),
    /// 503: a shared byte budget is spent (request bodies or answers being held for
    /// clients); names the budget. Try again after `Retry-After`.
    Busy(&'static str),
}

/// Why a request's bearer token was refused. A client is told (RFC 6750's
/// `error_description`), because "Unauthorized access" alone leaves a developer
/// guessing between a typo, a clock, a rotated key and the wrong credential; none of
/// these says anything about a token the caller does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    /// No `Authorization` header at all (RFC 6750 §3.1: then no error code).
    NoHeader,
    /// More than one `Authorization` header.
    TwoHeaders,
    /// A header without the `Bearer` scheme (another scheme, or the token alone).
    NotBearer,
    /// An API key (`fgk_…`) sent where a token belongs.
    ApiKey,
    /// Empty, too long, not UTF-8.
    Malformed,
    /// Not a token this server knows (never issued here, or expired and purged).
    Unknown,
    /// Past its `expires`, or its lifetime on the monotonic clock.
    Expired,
    /// Its user's key was rotated, or the user was disabled or removed.
    Revoked,
}

impl TokenRefusal {
    /// The `error_description`: what is wrong and what to do (ASCII, no quotes).
    pub fn description(self) -> &'static str {
        use TokenRefusal::*;
        match self {
            NoHeader => "no Authorization header: send Authorization: Bearer <token>",
            TwoHeaders => "more than one Authorization header: send exactly one",
            NotBearer => "the Authorization header must be Bearer <token>",
            ApiKey => "an API key is not a token: trade it for one at POST /api/Auth/Token",
            Malformed => "the token is malformed",
            Unknown => "the token is unknown here: log in again at POST /api/Auth/Token",
            Expired => "the token has expired: log in again at POST /api/Auth/Token",
            Revoked => "the token was revoked (key rotated, or user disabled or removed)",
        }
    }

    /// The challenge: `Bearer` alone when no credentials were sent (RFC 6750 §3.1),
    /// else `invalid_token` with the description.
    fn challenge(self) -> HeaderValue {
        match self {
            TokenRefusal::NoHeader => HeaderValue::from_static("Bearer"),
            why => HeaderValue::from_str(&format!(
                "Bearer error=\"invalid_token\", error_description=\"{}\"",
                why.description()
            ))
            .unwrap_or_else(|_| HeaderValue::from_static("Bearer error=\"invalid_token\"")),
        }
    }
}

impl fmt::Display for TokenRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.description())
    }
}

impl ApiError {
    /// The HTTP status code.
    pub fn status(&self) -> StatusCode {
        use ApiError::*;
        match self {
            InvalidInput(_) | InvalidPatch(_) => StatusCode::BAD_REQUEST,
            Unauthorized(_) | InvalidCredentials => StatusCode::UNAUTHORIZED,
            Forbidden(_) | OfficeGroupReadOnly => StatusCode::FORBIDDEN,
            GroupNotFound | NotFound => StatusCode::NOT_FOUND,
            MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            NameConflict | PatchTestFailed(_) => StatusCode::CONFLICT,
            CursorExpired => StatusCode::GONE,
            PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            RateLimited { .. } | DailyLimitExceeded { .. } | TooManyFailedLogins { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Unavailable(_) | Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The stable snake_case `errorCode` clients match on.
    pub fn code(&self) -> &'static str {
        use ApiError::*;
        match self {
            InvalidInput(_) => "invalid_input",
            InvalidPatch(_) => "invalid_patch",
            Unauthorized(_) => "unauthorized",
            InvalidCredentials => "invalid_credentials",
            Forbidden(_) => "forbidden",
            OfficeGroupReadOnly => "office_group_read_only",
            GroupNotFound => "group_not_found",
            NotFound => "not_found",
            MethodNotAllowed(_) => "method_not_allowed",
            RequestTimeout => "request_timeout",
            NameConflict => "name_conflict",
            PatchTestFailed(_) => "patch_test_failed",
            CursorExpired => "cursor_expired",
            PreconditionFailed => "precondition_failed",
            BodyTooLarge => "body_too_large",
            UnsupportedMediaType(_) => "unsupported_media_type",
            IdempotencyKeyReused => "idempotency_key_reused",
            RateLimited { .. } => "rate_limited",
            DailyLimitExceeded { .. } => "daily_limit_exceeded",
            TooManyFailedLogins { .. } => "too_many_failed_logins",
            Internal(_) => "internal",
            Unavailable(_) => "unavailable",
            Busy(_) => "server_busy",
        }
    }

    /// The human-readable `error` message. Never contains internal details.
    pub fn message(&self) -> Cow<'static, str> {
        use ApiError::*;
        match self {
            InvalidInput(what) => format!("Invalid input: {what}").into(),
            InvalidPatch(what) => format!("Invalid patch operation: {what}").into(),
            Unauthorized(_) => "Unauthorized access".into(),
            InvalidCredentials => "Invalid API key or username.".into(),
            Forbidden(why) => format!("Forbidden: {why}").into(),
            OfficeGroupReadOnly => {
                "Forbidden: this is an office group, defined centrally and read-only on a gateway; change it in fleetgroups.office_groups".into()
            }
            GroupNotFound => "Group not found".into(),
            NotFound => "Not found".into(),
            MethodNotAllowed(_) => "Method not allowed".into(),
            RequestTimeout => "Request timeout".into(),
            NameConflict => "Group name already exists".into(),
            PatchTestFailed(path) => format!("Patch test failed: {path}").into(),
            CursorExpired => "Cursor expired: read the groups again".into(),
            PreconditionFailed => "Precondition failed".into(),
            BodyTooLarge => "Request body too large".into(),
            UnsupportedMediaType(sent) => format!("Unsupported media type: {sent}").into(),
            IdempotencyKeyReused => "Idempotency key reused with a different request".into(),
            RateLimited { .. } => "Too many requests".into(),
            DailyLimitExceeded { .. } => "Daily API limit exceeded".into(),
            TooManyFailedLogins { .. } => "Too many failed login attempts".into(),
            Internal(_) => "Internal server error".into(),
            Unavailable(_) => "Service unavailable".into(),
            Busy(budget) => format!(
                "Server busy: too many bytes held for clients ({budget}); try again shortly"
            )
            .into(),
        }
    }

    /// Extra response headers this error requires (`Allow`, `Retry-After`,
    /// `WWW-Authenticate`), as (name, value) pairs.
    pub fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        use ApiError::*;
        match self {
            Unauthorized(why) => vec![(WWW_AUTHENTICATE, why.challenge())],
            // The route table's `allow` values are checked to be header values by a
            // test in `http/router.rs`.
            MethodNotAllowed(allow) => vec![(ALLOW, HeaderValue::from_static(allow))],
            RateLimited { retry_after }
            | DailyLimitExceeded { retry_after }
            | TooManyFailedLogins { retry_after } => {
                vec![(RETRY_AFTER, HeaderValue::from(*retry_after))]
            }
            RequestTimeout => vec![(CONNECTION, HeaderValue::from_static("close"))],
            Busy(_) => vec![(RETRY_AFTER, HeaderValue::from_static("1"))],
            _ => Vec::new(),
        }
    }

    /// Whether this answer is refused for a limit, and so does not count as usage (§3).
    #[cfg(test)]
    fn is_limit(&self) -> bool {
        matches!(
            self,
            ApiError::RateLimited { .. } | ApiError::DailyLimitExceeded { .. }
        )
    }

    /// The detail to log for server-side failures, if any.
    pub fn log_detail(&self) -> Option<&str> {
        match self {
            ApiError::Internal(d) | ApiError::Unavailable(d) => Some(d),
            _ => None,
        }
    }
}

/// A document that breaks the §4 rules (`model.rs`) is the client's to fix.
impl From<crate::model::Invalid> for ApiError {
    fn from(e: crate::model::Invalid) -> ApiError {
        ApiError::InvalidInput(e.0)
    }
}

impl From<crate::store::Error> for ApiError {
    /// The status and `errorCode` of each store outcome (docs/api/http.md "Errors"). Storage failures
    /// are 503, damaged data 500; both keep the cause chain for the log.
    fn from(e: crate::store::Error) -> ApiError {
        use crate::store::Error as S;
        match e {
            S::GroupNotFound => ApiError::GroupNotFound,
            S::RevisionMismatch => ApiError::PreconditionFailed,
            S::NameTaken => ApiError::NameConflict,
            S::OfficeReadOnly => ApiError::OfficeGroupReadOnly,
            S::QuotaReached { .. } => ApiError::Forbidden(e.to_string()),
            S::IdempotencyKeyReused => ApiError::IdempotencyKeyReused,
            S::CursorExpired => ApiError::CursorExpired,
            S::Storage { .. }
            | S::Io { .. }
            | S::Flush { .. }
            | S::Failed
            | S::KeptChanging { .. } => ApiError::Unavailable(e.chain()),
            S::Corrupt { .. } | S::Encode { .. } => ApiError::Internal(e.chain()),
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status().as_u16(), self.code())
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_the_spec() {
        let rows: Vec<(ApiError, u16, &str, &str)> = vec![
            (
                ApiError::InvalidInput("name is required".into()),
                400,
                "invalid_input",
                "Invalid input: name is required",
            ),
            (
                ApiError::InvalidPatch("op".into()),
                400,
                "invalid_patch",
                "Invalid patch operation: op",
            ),
            (
                ApiError::Unauthorized(TokenRefusal::Expired),
                401,
                "unauthorized",
                "Unauthorized access",
            ),
            (
                ApiError::InvalidCredentials,
                401,
                "invalid_credentials",
                "Invalid API key or username.",
            ),
            (
                ApiError::Forbidden("read-only user".into()),
                403,
                "forbidden",
                "Forbidden: read-only user",
            ),
            (
                ApiError::GroupNotFound,
                404,
                "group_not_found",
                "Group not found",
            ),
            (ApiError::NotFound, 404, "not_found", "Not found"),
            (
                ApiError::MethodNotAllowed("GET"),
                405,
                "method_not_allowed",
                "Method not allowed",
            ),
            (
                ApiError::RequestTimeout,
                408,
                "request_timeout",
                "Request timeout",
            ),
            (
                ApiError::NameConflict,
                409,
                "name_conflict",
                "Group name already exists",
            ),
            (
                ApiError::PatchTestFailed("/name".into()),
                409,
                "patch_test_failed",
                "Patch test failed: /name",
            ),
            (
                ApiError::CursorExpired,
                410,
                "cursor_expired",
                "Cursor expired: read the groups again",
            ),
            (
                ApiError::PreconditionFailed,
                412,
                "precondition_failed",
                "Precondition failed",
            ),
            (
                ApiError::BodyTooLarge,
                413,
                "body_too_large",
                "Request body too large",
            ),
            (
                ApiError::UnsupportedMediaType("text/plain".into()),
                415,
                "unsupported_media_type",
                "Unsupported media type: text/plain",
            ),
            (
                ApiError::IdempotencyKeyReused,
                422,
                "idempotency_key_reused",
                "Idempotency key reused with a different request",
            ),
            (
                ApiError::RateLimited { retry_after: 3 },
                429,
                "rate_limited",
                "Too many requests",
            ),
            (
                ApiError::DailyLimitExceeded { retry_after: 3 },
                429,
                "daily_limit_exceeded",
                "Daily API limit exceeded",
            ),
            (
                ApiError::TooManyFailedLogins { retry_after: 3 },
                429,
                "too_many_failed_logins",
                "Too many failed login attempts",
            ),
            (
                ApiError::Internal("secret detail".into()),
                500,
                "internal",
                "Internal server error",
            ),
            (
                ApiError::Unavailable("disk".into()),
                503,
                "unavailable",
                "Service unavailable",
            ),
            (
                ApiError::Busy("request bodies"),
                503,
                "server_busy",
                "Server busy: too many bytes held for clients (request bodies); try again shortly",
            ),
        ];
        for (err, status, code, message) in rows {
            assert_eq!(
                (err.status().as_u16(), err.code(), err.message().as_ref()),
                (status, code, message)
            );
        }
    }

    /// Every store outcome keeps the status and `errorCode` it had when the store built
    /// `ApiError`s itself; the quota's message too.
    #[test]
    fn store_errors_map_to_their_answers() {
        use crate::store::Error as S;
        let rows: Vec<(S, u16, &str)> = vec![
            (S::GroupNotFound, 404, "group_not_found"),
            (S::RevisionMismatch, 412, "precondition_failed"),
            (S::NameTaken, 409, "name_conflict"),
            (S::OfficeReadOnly, 403, "office_group_read_only"),
            (S::QuotaReached { max: 5 }, 403, "forbidden"),
            (S::IdempotencyKeyReused, 422, "idempotency_key_reused"),
            (S::CursorExpired, 410, "cursor_expired"),
            (
                S::Io {
                    during: "reserving IDs",
                    source: std::io::Error::other("x"),
                },
                503,
                "unavailable",
            ),
            (S::Flush { detail: "x".into() }, 503, "unavailable"),
            (S::Failed, 503, "unavailable"),
            (S::KeptChanging { what: "x".into() }, 503, "unavailable"),
            (S::corrupt("x"), 500, "internal"),
        ];
        for (e, status, code) in rows {
            let api = ApiError::from(e);
            assert_eq!(
                (api.status().as_u16(), api.code()),
                (status, code),
                "{api:?}"
            );
        }
        assert_eq!(
            ApiError::from(S::CursorExpired).message(),
            "Cursor expired: read the groups again"
        );
        assert_eq!(
            ApiError::from(S::QuotaReached { max: 5 }).message(),
            "Forbidden: the account already has the maximum of 5 groups"
        );
        // The log gets the whole cause chain (sled's `Storage` is checked in
        // `store/error.rs`: only the store touches sled).
        let api = ApiError::from(S::Io {
            during: "reserving IDs",
            source: std::io::Error::other("no space left on device"),
        });
        assert_eq!(
            api.log_detail(),
            Some("reserving IDs: no space left on device")
        );
    }

    #[test]
    fn headers_that_errors_require() {
        assert_eq!(
            ApiError::Unauthorized(TokenRefusal::NoHeader).headers(),
            vec![(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))]
        );
        // Every other refusal names itself, RFC 6750 style, and is a valid header.
        use TokenRefusal::*;
        for why in [
            TwoHeaders, NotBearer, ApiKey, Malformed, Unknown, Expired, Revoked,
        ] {
            let headers = ApiError::Unauthorized(why).headers();
            assert_eq!(headers.len(), 1);
            assert_eq!(headers[0].0, WWW_AUTHENTICATE);
            assert_eq!(
                headers[0].1.to_str().unwrap(),
                format!(
                    "Bearer error=\"invalid_token\", error_description=\"{}\"",
                    why.description()
                )
            );
        }
        assert_eq!(
            ApiError::MethodNotAllowed("GET, POST").headers(),
            vec![(ALLOW, HeaderValue::from_static("GET, POST"))]
        );
        for e in [
            ApiError::RateLimited { retry_after: 7 },
            ApiError::DailyLimitExceeded { retry_after: 7 },
            ApiError::TooManyFailedLogins { retry_after: 7 },
        ] {
            assert_eq!(
                e.headers(),
                vec![(RETRY_AFTER, HeaderValue::from(7u64))],
                "{e}"
            );
        }
        assert_eq!(
            ApiError::Busy("answers").headers(),
            vec![(RETRY_AFTER, HeaderValue::from(1u64))]
        );
        assert!(ApiError::InvalidCredentials.headers().is_empty());
        assert!(ApiError::GroupNotFound.headers().is_empty());
    }

    #[test]
    fn only_usage_limits_are_limits_and_only_server_faults_log_details() {
        assert!(ApiError::RateLimited { retry_after: 1 }.is_limit());
        assert!(ApiError::DailyLimitExceeded { retry_after: 1 }.is_limit());
        assert!(!ApiError::TooManyFailedLogins { retry_after: 1 }.is_limit());
        assert!(!ApiError::Forbidden("x".into()).is_limit());
        assert_eq!(ApiError::Internal("d".into()).log_detail(), Some("d"));
        assert_eq!(ApiError::Unavailable("d".into()).log_detail(), Some("d"));
        assert_eq!(ApiError::InvalidInput("d".into()).log_detail(), None);
        // Internal details never reach the message.
        assert!(!ApiError::Internal("secret".into())
            .message()
            .contains("secret"));
    }
}
