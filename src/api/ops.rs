//! Operational endpoints (no authentication): `/healthz` (the process answers),
//! `/readyz` (storage takes writes and the server is not stopping) and `/metrics`
//! (Prometheus text format).

use crate::app::App;
use crate::error::ApiError;
use crate::http::response::{push_member, Reply};

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

pub fn metrics(app: &App) -> Result<Reply, ApiError> {
    if !app.config.metrics.enabled {
        return Err(ApiError::NotFound);
    }
    let text = app.metrics.render(app);
    Ok(Reply {
        status: 200,
        raw: Some((
            "text/plain; version=0.0.4; charset=utf-8",
            text.into_bytes().into(),
        )),
        ..Reply::default()
    })
}
