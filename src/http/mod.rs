//! The HTTP layer: turns a hyper request into a call of one handler and the handler's
//! result (or error) into a hyper response. Only this module and `server/` touch
//! hyper. Per request it: assigns the request ID, routes, authenticates and counts
//! usage, checks the role, reads the body, calls the handler (`dispatch.rs`; a panic
//! becomes a 500 for this request only), renders the envelope, records metrics and
//! writes one log line. It calls into `api/`; nothing there calls back.

pub mod body;
pub(crate) mod conns;
mod dispatch;
mod response;
pub mod router;
mod stream;

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use hyper::body::Incoming;
use hyper::header::{
    HeaderName, HeaderValue, AUTHORIZATION, CONNECTION, CONTENT_TYPE, HOST, IF_MATCH,
    IF_NONE_MATCH, TRANSFER_ENCODING,
};
use hyper::{HeaderMap, Request, Response, StatusCode, Version};

use crate::api::{Ctx, JsonBody, Reply, RequestInfo};
use crate::app::budget::Share;
use crate::app::App;
use crate::auth::usage::Limits;
use crate::error::{ApiError, TokenRefusal};
use crate::json::push_member;
use crate::store::users::{Role, UserRecord};
use body::{check_headers, content_length, read_json, BodyRead};
use dispatch::{call_public, call_user, public_call, user_call};
use response::{error_body, success_body, success_head};
use router::Op;
use stream::OutBody;

const JSON: &str = "application/json; charset=utf-8";

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Serves one request. Never fails: every outcome is a response.
pub(crate) async fn handle(
    app: Arc<App>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<OutBody> {
    let started = Instant::now();
    let request_id = request_id(req.headers());
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let mut seen = Seen::default();
    let result = AssertUnwindSafe(answer(&app, req, peer, &mut seen))
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
        // A raw answer (the OpenAPI document from the binary, `/metrics`) is not
        // built from client data and is not paid for.
        Ok(reply) if reply.raw.is_some() => render(reply, seen.usage, &request_id),
        Ok(reply) => pay_for_answer(&app, seen.op, render(reply, seen.usage, &request_id))
            .unwrap_or_else(|err| render_error(&err, seen.usage, &request_id)),
        Err(err) => {
            if let Some(detail) = err.log_detail() {
                tracing::error!(request_id = %request_id, detail, "request failed");
            }
            render_error(&err, seen.usage, &request_id)
        }
    };
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    app.metrics
        .observe(seen.op.map_or("unmatched", Op::label), status, elapsed);
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
            user = seen.user.as_deref().unwrap_or("-"),
            "request"
        );
    }
    response
}

/// Answers up to this size are not paid for from the answer budget: as small as a
/// streamed chunk, so the connection limit bounds them (and an error or `/healthz` is
/// never refused for a budget).
const SMALL_ANSWER: usize = stream::SLICE;

/// Pays for a large whole answer from the answer budget (`limits.answer_budget_bytes`)
/// until its client has taken it. When the budget is spent, a read is refused (503
/// `server_busy`: the client reads again shortly, and the answer built is dropped at
/// once), but a write's answer is sent unpaid: the change is made and must be told.
fn pay_for_answer(
    app: &App,
    op: Option<Op>,
    mut response: Response<OutBody>,
) -> Result<Response<OutBody>, ApiError> {
    let Some(len) = response.body().full_len().filter(|n| *n > SMALL_ANSWER) else {
        return Ok(response);
    };
    match app.answers.try_take(len as u64) {
        Some(share) => response.body_mut().hold(share),
        None if !op.is_some_and(Op::writes) => {
            return Err(ApiError::Busy("answers (limits.answer_budget_bytes)"))
        }
        None => {}
    }
    Ok(response)
}

/// What the log line and the envelope need to know about a request, learnt as it
/// progresses (and kept when a step fails).
#[derive(Default)]
struct Seen {
    op: Option<Op>,
    user: Option<String>,
    usage: Option<(u64, u64)>,
}

/// Routes, authenticates, reads the body and calls the handler.
async fn answer(
    app: &Arc<App>,
    req: Request<Incoming>,
    peer: SocketAddr,
    seen: &mut Seen,
) -> Result<Reply, ApiError> {
    check_host(&req)?;
    let matched = router::route(req.method().as_str(), req.uri().path())?;
    let op = matched.op;
    seen.op = Some(op);
    let user = if op.needs_auth() {
        Some(authenticate(app, req.headers(), op, seen)?)
    } else {
        None
    };
    let info = request_info(&req, peer);
    // The body's share of the body budget is held until the handler is done with it.
    let (body, _body_share) = read_body(app, op, req).await?;
    if op == Op::Token {
        // A login has no bearer user yet; the log names the user it is for.
        if let Some(name) = login_user(app, body.as_ref()) {
            seen.user = Some(name);
        }
    }
    // Path parameters are parsed only now, after authentication and the body, so a
    // malformed group ID answers 404 in the order it always has.
    match user {
        None => {
            let ctx = Ctx {
                app,
                user: (),
                info: &info,
                body,
            };
            call_public(public_call(op, &matched.params)?, ctx).await
        }
        Some(user) => {
            // A read whose answer may be a whole page is refused before it is built when
            // the answer budget has less than a page free: building it only to drop it
            // would spend the CPU that other clients are waiting for.
            let page = app.config.limits.max_page_bytes;
            if !op.writes() && app.answers.free() < page {
                app.answers.refuse();
                return Err(ApiError::Busy("answers (limits.answer_budget_bytes)"));
            }
            let ctx = Ctx {
                app,
                user: &*user,
                info: &info,
                body,
            };
            call_user(user_call(op, &matched.params)?, ctx).await
        }
    }
}

/// What a handler may read of the request's headers, its peer and its query.
fn request_info(req: &Request<Incoming>, peer: SocketAddr) -> RequestInfo {
    RequestInfo {
        if_match: header_string(req.headers(), &IF_MATCH),
        if_none_match: header_string(req.headers(), &IF_NONE_MATCH),
        idempotency_key: header_string(req.headers(), &IDEMPOTENCY_KEY),
        peer: Some(peer.ip()),
        query: req.uri().query().map(str::to_string),
    }
}

/// A login's `userName`, for the log, only when such a user exists (so a key typed
/// into the wrong field is never logged).
fn login_user(app: &App, body: Option<&JsonBody>) -> Option<String> {
    body.and_then(|b| b.value.get("userName"))
        .and_then(serde_json::Value::as_str)
        .filter(|n| app.auth.is_user(n))
        .map(str::to_string)
}

/// The bearer token's user, counted against its limits and checked for the role `op`
/// needs.
fn authenticate(
    app: &App,
    headers: &HeaderMap,
    op: Op,
    seen: &mut Seen,
) -> Result<Arc<UserRecord>, ApiError> {
    // Two Authorization headers are ambiguous (proxies and we might pick different
    // ones), so they are refused like a malformed one.
    let mut auth_headers = headers.get_all(AUTHORIZATION).iter();
    let header = auth_headers.next();
    let user = if auth_headers.next().is_some() {
        Err(ApiError::Unauthorized(TokenRefusal::TwoHeaders))
    } else {
        app.auth.authenticate(header.map(HeaderValue::as_bytes))
    }
    .inspect_err(|e| {
        if let ApiError::Unauthorized(why) = e {
            // The reason the client is told, for whoever reads the log at debug.
            tracing::debug!(reason = %why, "bearer token refused");
        }
    })?;
    seen.user = Some(user.name.clone());
    let limits = Limits {
        daily: app.config.effective_daily_limit(user.daily_limit),
        per_minute: app.config.limits.requests_per_minute,
    };
    match app.usage.count(&user.name, limits, app.clock.now()) {
        Ok(counts) => seen.usage = Some(counts),
        Err((err, total, daily)) => {
            seen.usage = Some((total, daily));
            return Err(err);
        }
    }
    if op.writes() && user.role == Role::Read {
        return Err(ApiError::Forbidden(
            "this user has the read role and cannot change groups".into(),
        ));
    }
    Ok(user)
}

/// The JSON body of an operation that takes one (None when it sent none), with its
/// share of the body budget. A login's body is limited far below the others'
/// (`limits.max_token_body_bytes`): it is the one body anyone may send unauthenticated.
async fn read_body(
    app: &App,
    op: Op,
    req: Request<Incoming>,
) -> Result<(Option<JsonBody>, Share), ApiError> {
    if !op.has_body() {
        return Ok((None, Share::default()));
    }
    let limits = &app.config.limits;
    let max = if op == Op::Token {
        limits.max_token_body_bytes.min(limits.max_body_bytes)
    } else {
        limits.max_body_bytes
    };
    let Some(kind) = check_headers(op, req.headers(), max)? else {
        return Ok((None, Share::default()));
    };
    // Without a length or a transfer coding, an HTTP/1.1 request has no body.
    let declared = match content_length(req.headers())? {
        None if !req.headers().contains_key(TRANSFER_ENCODING) => Some(0),
        declared => declared,
    };
    let read = BodyRead {
        kind,
        declared,
        max,
        timeout: Duration::from_secs(limits.body_timeout_secs),
        budget: &app.bodies,
    };
    let (body, share) = read_json(req.into_body(), read).await?;
    Ok((Some(body), share))
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

fn header_string(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The client's `X-Request-Id` when it is sane (1–128 of `A-Za-z0-9-_.:`), else a new one.
fn request_id(headers: &HeaderMap) -> String {
    if let Some(id) = headers.get(X_REQUEST_ID).and_then(|v| v.to_str().ok()) {
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
    let status = reply.status;
    let (ctype, body) = match (reply.raw, reply.stream) {
        (Some((ctype, bytes)), _) => (ctype, OutBody::full(bytes)),
        (None, _) if status == StatusCode::NOT_MODIFIED => {
            (JSON, OutBody::Full(None, Share::default()))
        }
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
    let status = err.status();
    let mut headers = err.headers();
    // A body we did not read (413) leaves the connection in an unknown state.
    if matches!(err, ApiError::BodyTooLarge) {
        headers.push((CONNECTION, HeaderValue::from_static("close")));
    }
    let body = OutBody::full(error_body(err, usage));
    build(status, JSON, body, &headers, request_id)
}

fn build(
    status: StatusCode,
    ctype: &'static str,
    body: OutBody,
    headers: &[(HeaderName, HeaderValue)],
    request_id: &str,
) -> Response<OutBody> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    // A 304 has no content, so no content type (RFC 9110 §15.4.5).
    if status != StatusCode::NOT_MODIFIED {
        h.insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    }
    // Always a valid value: a client's ID is kept only when it is sane (`request_id`).
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert(X_REQUEST_ID, v);
    }
    for (name, value) in headers {
        h.append(name.clone(), value.clone());
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id_for(value: &str) -> String {
        let mut h = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(X_REQUEST_ID, v);
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
