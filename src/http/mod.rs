//! The HTTP layer: turns a hyper request into a call of one handler and the handler's
//! result (or error) into a hyper response. Only this module and `server.rs` touch
//! hyper. Per request it: assigns the request ID, routes, authenticates and counts
//! usage, checks the role, reads the body, calls the handler (a panic becomes a 500 for
//! this request only), renders the envelope, records metrics and writes one log line.

pub mod body;
#[cfg(test)]
mod body_props;
pub mod conns;
pub mod response;
pub mod router;
pub mod stream;

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{HeaderMap, Request, Response, StatusCode, Version};

use crate::api::{self, Ctx, RequestInfo};
use crate::app::App;
use crate::error::ApiError;
use crate::store::users::Role;
use crate::usage::Limits;
use body::{check_headers, read_json};
use response::{error_body, push_member, success_body, success_head, Reply};
use router::Op;
use stream::OutBody;

const JSON: &str = "application/json; charset=utf-8";

/// Serves one request. Never fails: every outcome is a response.
pub async fn handle(app: Arc<App>, req: Request<Incoming>, peer: SocketAddr) -> Response<OutBody> {
    let started = Instant::now();
    let request_id = request_id(req.headers());
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let mut outcome = Outcome::default();
    let result = AssertUnwindSafe(serve(&app, req, peer, &mut outcome))
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(ApiError::Internal(format!("handler panicked: {what}")))
        });
    let response = match result {
        Ok(reply) => render(reply, outcome.usage, &request_id),
        Err(err) => {
            if let Some(detail) = err.log_detail() {
                tracing::error!(request_id = %request_id, detail, "request failed");
            }
            render_error(&err, outcome.usage, &request_id)
        }
    };
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    app.metrics
        .observe(outcome.op.map_or("unmatched", Op::label), status, elapsed);
    // `log.access`: at thousands of requests a second a line each would exceed
    // journald's rate limit (which then drops warnings too) and wear the flash.
    if app.config.log.access.logs(status) {
        tracing::info!(
            target: "fleetgroups::access",
            method = %method,
            path = %path,
            status,
            // Whole microseconds, so the value prints as 0.014 and not 0.013954999999999999.
            duration_ms = elapsed.as_micros() as f64 / 1000.0,
            request_id = %request_id,
            user = outcome.user.as_deref().unwrap_or("-"),
            "request"
        );
    }
    response
}

/// What the log line and the envelope need to know about a request as it progresses.
#[derive(Default)]
struct Outcome {
    op: Option<Op>,
    user: Option<String>,
    usage: Option<(u64, u64)>,
}

async fn serve(
    app: &Arc<App>,
    req: Request<Incoming>,
    peer: SocketAddr,
    outcome: &mut Outcome,
) -> Result<Reply, ApiError> {
    check_host(&req)?;
    let matched = router::route(req.method().as_str(), req.uri().path())?;
    let op = matched.op;
    outcome.op = Some(op);
    let user = if op.needs_auth() {
        // Two Authorization headers are ambiguous (proxies and we might pick different
        // ones), so they are refused like a malformed one.
        let mut auth_headers = req.headers().get_all(AUTHORIZATION).iter();
        let header = auth_headers.next();
        if auth_headers.next().is_some() {
            return Err(ApiError::Unauthorized);
        }
        let user = app.auth.authenticate(header.map(HeaderValue::as_bytes))?;
        outcome.user = Some(user.name.clone());
        let limits = Limits {
            daily: app.config.effective_daily_limit(user.daily_limit),
            per_minute: app.config.limits.requests_per_minute,
        };
        match app.usage.count(&user.name, limits, app.clock.now()) {
            Ok(counts) => outcome.usage = Some(counts),
            Err((err, total, daily)) => {
                outcome.usage = Some((total, daily));
                return Err(err);
            }
        }
        if op.writes() && user.role == Role::Read {
            return Err(ApiError::Forbidden(
                "this user has the read role and cannot change groups".into(),
            ));
        }
        Some(user)
    } else {
        None
    };
    let info = RequestInfo {
        if_match: header_string(req.headers(), "if-match"),
        if_none_match: header_string(req.headers(), "if-none-match"),
        idempotency_key: header_string(req.headers(), "idempotency-key"),
        peer: Some(peer.ip()),
        query: req.uri().query().map(str::to_string),
    };
    let body = if op.has_body() {
        let limits = &app.config.limits;
        let kind = check_headers(op, req.headers(), limits.max_body_bytes)?;
        match kind {
            Some(kind) => Some(
                read_json(
                    req.into_body(),
                    kind,
                    limits.max_body_bytes,
                    Duration::from_secs(limits.body_timeout_secs),
                )
                .await?,
            ),
            None => None,
        }
    } else {
        None
    };
    if op == Op::Token {
        // A login has no bearer user yet; the log names the user it is for.
        if let Some(name) = body
            .as_ref()
            .and_then(|b| b.value.get("userName"))
            .and_then(serde_json::Value::as_str)
            .filter(|n| app.auth.is_user(n))
        {
            outcome.user = Some(name.to_string());
        }
    }
    let ctx = Ctx {
        app,
        user: user.as_deref(),
        params: &matched.params,
        info: &info,
        body,
    };
    api::dispatch(op, ctx).await
}

/// RFC 9112 §3.2: an HTTP/1.1 request without a `Host` header, or with more than one,
/// is answered 400. HTTP/1.0 predates the header, so it may leave it out.
fn check_host<B>(req: &Request<B>) -> Result<(), ApiError> {
    let mut hosts = req.headers().get_all(HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err(ApiError::InvalidInput(
            "the Host header must be given once".into(),
        ));
    }
    if first.is_none() && req.version() != Version::HTTP_10 {
        return Err(ApiError::InvalidInput(
            "the Host header is required (RFC 9112)".into(),
        ));
    }
    Ok(())
}

fn header_string(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The client's `X-Request-Id` when it is sane (1–128 of `A-Za-z0-9-_.:`), else a new one.
fn request_id(headers: &HeaderMap) -> String {
    if let Some(id) = headers.get("x-request-id").and_then(|v| v.to_str().ok()) {
        if (1..=128).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        {
            return id.to_string();
        }
    }
    crate::app::new_request_id()
}

fn render(reply: Reply, usage: Option<(u64, u64)>, request_id: &str) -> Response<OutBody> {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK);
    let (ctype, body) = match (reply.raw, reply.stream) {
        (Some((ctype, bytes)), _) => (ctype, OutBody::full(bytes)),
        (None, _) if status == StatusCode::NOT_MODIFIED => (JSON, OutBody::Full(None)),
        (None, Some(st)) => {
            let mut head =
                success_head(usage, &reply.members, st.member.len() + 4 + st.first.len());
            push_member(&mut head, st.member, b"[");
            let has_elements = !st.first.is_empty();
            head.extend_from_slice(&st.first);
            (JSON, OutBody::stream(head, has_elements, st.rest, b"]}"))
        }
        (None, None) => (JSON, OutBody::full(success_body(usage, &reply.members))),
    };
    build(status, ctype, body, &reply.headers, request_id)
}

fn render_error(err: &ApiError, usage: Option<(u64, u64)>, request_id: &str) -> Response<OutBody> {
    let status = StatusCode::from_u16(err.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut headers = err.headers();
    // A body we did not read (413) leaves the connection in an unknown state.
    if matches!(err, ApiError::BodyTooLarge) {
        headers.push(("connection", "close".to_string()));
    }
    let body = OutBody::full(error_body(err, usage));
    build(status, JSON, body, &headers, request_id)
}

fn build(
    status: StatusCode,
    ctype: &'static str,
    body: OutBody,
    headers: &[(&'static str, String)],
    request_id: &str,
) -> Response<OutBody> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    // A 304 has no content, so no content type (RFC 9110 §15.4.5).
    if status != StatusCode::NOT_MODIFIED {
        h.insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    }
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert(HeaderName::from_static("x-request-id"), v);
    }
    for (name, value) in headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            h.append(n, v);
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id_for(value: &str) -> String {
        let mut h = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert("x-request-id", v);
        }
        request_id(&h)
    }

    #[test]
    fn sane_client_request_ids_are_kept_others_replaced() {
        for sane in ["a", "abc-123", "trace:1.2_3", &"x".repeat(128)] {
            assert_eq!(id_for(sane), sane);
        }
        for insane in ["", "has space", "semi;colon", "quote\"", &"x".repeat(129)] {
            let got = id_for(insane);
            assert_ne!(got, insane);
            assert!(!got.is_empty());
        }
        assert_ne!(request_id(&HeaderMap::new()), request_id(&HeaderMap::new()));
    }
}
