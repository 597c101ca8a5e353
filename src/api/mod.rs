//! Handlers, one file per resource. A handler takes a typed [`Ctx`] (the caller, the
//! decoded path parameters, the relevant headers and the parsed body) and returns a
//! [`Reply`] or an [`ApiError`]; it never sees hyper and never picks a status code for
//! an error.

mod auth;
mod changes;
mod devices;
mod groups;
pub mod openapi;
pub(crate) mod ops;

use std::net::IpAddr;
use std::sync::Arc;

use crate::app::App;
use crate::error::ApiError;
use crate::http::body::JsonBody;
use crate::http::response::Reply;
use crate::http::router::Op;
use crate::store::users::UserRecord;

/// The request headers and connection facts handlers may use.
#[derive(Debug, Default)]
pub struct RequestInfo {
    pub if_match: Option<String>,
    pub if_none_match: Option<String>,
    pub idempotency_key: Option<String>,
    pub peer: Option<IpAddr>,
    pub query: Option<String>,
}

/// Everything a handler gets.
pub struct Ctx<'a> {
    /// Shared, so that a streamed answer can keep reading after the handler returns.
    pub app: &'a Arc<App>,
    /// The authenticated caller (None only on routes without authentication).
    pub user: Option<&'a UserRecord>,
    pub params: &'a [String],
    pub info: &'a RequestInfo,
    pub body: Option<JsonBody>,
}

impl Ctx<'_> {
    fn user(&self) -> Result<&UserRecord, ApiError> {
        self.user.ok_or_else(|| {
            ApiError::Internal("handler needs a user but the route has no authentication".into())
        })
    }

    fn param(&self, i: usize) -> Result<&str, ApiError> {
        self.params
            .get(i)
            .map(String::as_str)
            .ok_or_else(|| ApiError::Internal(format!("route has no parameter {i}")))
    }

    fn take_body(&mut self) -> Result<JsonBody, ApiError> {
        self.body
            .take()
            .ok_or_else(|| ApiError::InvalidInput("a JSON body is required".into()))
    }

    /// The query parameters named in `known`, decoded. Other parameters are ignored
    /// (clients and proxies add their own); a known one given twice is ambiguous, so
    /// it is a 400 naming it.
    fn query(&self, known: &[&'static str]) -> Result<Vec<(&'static str, String)>, ApiError> {
        crate::http::router::parse_query(self.info.query.as_deref().unwrap_or(""), known)
    }
}

/// Calls the handler of `op`.
pub async fn dispatch(op: Op, ctx: Ctx<'_>) -> Result<Reply, ApiError> {
    match op {
        Op::Token => auth::token(ctx).await,
        Op::ListGroups => groups::list(ctx),
        Op::CreateGroup => groups::create(ctx).await,
        Op::GetGroup => groups::get(ctx),
        Op::PutGroup => groups::put(ctx).await,
        Op::PatchGroup => groups::patch(ctx).await,
        Op::DeleteGroup => groups::delete(ctx).await,
        Op::AddDevices => groups::add_devices(ctx).await,
        Op::RemoveDevice => groups::remove_device(ctx).await,
        Op::DeviceGroups => devices::groups(ctx),
        Op::Changes => changes::list(ctx),
        Op::OpenApi => Ok(openapi::reply()),
        Op::Healthz => Ok(ops::healthz()),
        Op::Readyz => ops::readyz(ctx.app),
        Op::Metrics => ops::metrics(ctx.app, ctx.info.peer),
    }
}
