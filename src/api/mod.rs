//! Handlers, one file per resource. A handler takes a typed [`Ctx`] (for an
//! authenticated route, [`Authed`]: the caller, never missing), the path parameters it
//! needs already parsed (a [`GroupId`](crate::model::GroupId), a device ID), and
//! returns a [`Reply`] or an [`ApiError`]; it never sees hyper, the route table or the
//! raw path, and never picks a status code for an error. The HTTP layer
//! (`http/dispatch.rs`) calls them; nothing here imports `http/`.

pub(crate) mod changes;
pub(crate) mod devices;
pub(crate) mod groups;
pub(crate) mod login;
pub(crate) mod openapi;
pub(crate) mod ops;
mod reply;

pub use reply::{Chunks, Reply, Streamed};

use std::net::IpAddr;
use std::sync::Arc;

use serde_json::Value;

use crate::app::App;
use crate::error::ApiError;
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

/// How the body is to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// `application/json`.
    Json,
    /// `application/json-patch+json` (PATCH only).
    JsonPatch,
    /// `application/merge-patch+json` (PATCH only).
    MergePatch,
}

/// A parsed request body.
#[derive(Debug)]
pub struct JsonBody {
    pub kind: BodyKind,
    pub value: Value,
}

/// Everything a handler gets; `U` is the caller: `()` on routes without
/// authentication, the authenticated user on the others ([`Authed`]).
pub struct Ctx<'a, U = ()> {
    /// Shared, so that a streamed answer can keep reading after the handler returns.
    pub app: &'a Arc<App>,
    pub user: U,
    pub info: &'a RequestInfo,
    pub body: Option<JsonBody>,
}

/// The context of an authenticated route: its user cannot be missing.
pub type Authed<'a> = Ctx<'a, &'a UserRecord>;

impl<U> Ctx<'_, U> {
    fn take_body(&mut self) -> Result<JsonBody, ApiError> {
        self.body
            .take()
            .ok_or_else(|| ApiError::InvalidInput("a JSON body is required".into()))
    }

    /// The query parameters named in `known`, decoded. Other parameters are ignored
    /// (clients and proxies add their own); a known one given twice is ambiguous, so
    /// it is a 400 naming it.
    fn query(&self, known: &[&'static str]) -> Result<Vec<(&'static str, String)>, ApiError> {
        crate::percent::parse_query(self.info.query.as_deref().unwrap_or(""), known)
    }
}

/// The `limit` query parameter of a paged list: 1 to 1000.
fn parse_limit(v: &str) -> Result<usize, ApiError> {
    v.parse()
        .ok()
        .filter(|l| (1..=1000).contains(l))
        .ok_or_else(|| ApiError::InvalidInput("limit must be an integer from 1 to 1000".into()))
}

/// A device ID from the path (`deviceId`) or the query (`device`), checked by the §4
/// device rule; `what` names it in the message.
fn device_param(v: &str, what: &str) -> Result<(), ApiError> {
    crate::model::check_device_id(v).map_err(|why| ApiError::InvalidInput(format!("{what} {why}")))
}

/// A JSON string of `text`.
fn json_string(text: &str) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(text).map_err(|e| ApiError::Internal(e.to_string()))
}
