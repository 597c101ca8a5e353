//! Operational endpoints (no authentication): `/healthz` (the process answers),
//! `/readyz` (storage takes writes and the server is not stopping) and `/metrics`
//! (Prometheus text format, for clients in `metrics.allowed_networks`).

use std::net::IpAddr;

use http::StatusCode;

use super::Reply;
use crate::app::App;
use crate::error::ApiError;
use crate::json::push_member;

pub fn healthz() -> Reply {
    let mut m = Vec::new();
    push_member(&mut m, "status", b"\"ok\"");
    Reply::ok(m)
}

pub fn readyz(app: &App) -> Result<Reply, ApiError> {
    if app.is_stopping() {
        return Err(ApiError::Unavailable("shutting down".into()));
    }
    if !app.store.healthy() {
        return Err(ApiError::Unavailable("storage refuses writes".into()));
    }
    let mut m = Vec::new();
    push_member(&mut m, "status", b"\"ready\"");
    Ok(Reply::ok(m))
}

/// `/metrics`: 404 when turned off (there is no such endpoint then), 403 `forbidden`
/// for a client outside `metrics.allowed_networks` (the endpoint exists, so a scraper
/// set up on the wrong network is told so plainly instead of chasing a wrong path).
pub fn metrics(app: &App, peer: Option<IpAddr>) -> Result<Reply, ApiError> {
    let config = &app.config.metrics;
    if !config.enabled {
        return Err(ApiError::NotFound);
    }
    let allowed = peer.is_some_and(|ip| config.allowed_networks.iter().any(|n| n.contains(ip)));
    if !allowed {
        return Err(ApiError::Forbidden(
            "metrics are not served to this address (metrics.allowed_networks)".into(),
        ));
    }
    let text = app.metrics.render(&app.metrics_snapshot());
    Ok(Reply {
        raw: Some((
            "text/plain; version=0.0.4; charset=utf-8",
            text.into_bytes().into(),
        )),
        ..Reply::new(StatusCode::OK)
    })
}
