//! From a matched route to a handler call. The route table (`router.rs`) yields an
//! [`Op`] and the decoded `{…}` segments; here they become a typed call — its path
//! parameters parsed (a malformed `{groupId}` names no group: 404) — and the call
//! goes to its handler in `api/` with the context it needs: [`Authed`] (the user is
//! never missing) for the routes behind a bearer token, [`Ctx`] for the others.
//!
//! The only runtime link between the table and the handlers is `public_call` /
//! `user_call` (an operation with the segments its pattern has); a test walks every
//! route of the table through them, so a pattern and a handler cannot disagree
//! unnoticed. Past that, a handler cannot be called without its parameters.

use crate::api::{self, Authed, Ctx, Reply};
use crate::error::ApiError;
use crate::http::router::Op;
use crate::model::GroupId;

/// An operation on a route without authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublicCall {
    Token,
    OpenApi,
    Healthz,
    Readyz,
    Metrics,
}

/// An operation on a route behind a bearer token, with its path parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserCall<'p> {
    ListGroups,
    CreateGroup,
    GetGroup(GroupId),
    PutGroup(GroupId),
    PatchGroup(GroupId),
    DeleteGroup(GroupId),
    AddDevices(GroupId),
    RemoveDevice(GroupId, &'p str),
    DeviceGroups(&'p str),
    Changes,
}

/// The route table and this file disagree: a bug, caught by the tests below.
fn mismatch(op: Op) -> ApiError {
    ApiError::Internal(format!("route {} has no handler of its shape", op.label()))
}

/// `{groupId}`: a malformed ID names no group, so it is a 404.
fn group(segment: &str) -> Result<GroupId, ApiError> {
    GroupId::parse(segment).ok_or(ApiError::GroupNotFound)
}

/// The call of an operation without authentication.
pub fn public_call(op: Op, params: &[String]) -> Result<PublicCall, ApiError> {
    match (op, params) {
        (Op::Token, []) => Ok(PublicCall::Token),
        (Op::OpenApi, []) => Ok(PublicCall::OpenApi),
        (Op::Healthz, []) => Ok(PublicCall::Healthz),
        (Op::Readyz, []) => Ok(PublicCall::Readyz),
        (Op::Metrics, []) => Ok(PublicCall::Metrics),
        _ => Err(mismatch(op)),
    }
}

/// The call of an authenticated operation, its path parameters parsed.
pub fn user_call(op: Op, params: &[String]) -> Result<UserCall<'_>, ApiError> {
    match (op, params) {
        (Op::ListGroups, []) => Ok(UserCall::ListGroups),
        (Op::CreateGroup, []) => Ok(UserCall::CreateGroup),
        (Op::GetGroup, [g]) => Ok(UserCall::GetGroup(group(g)?)),
        (Op::PutGroup, [g]) => Ok(UserCall::PutGroup(group(g)?)),
        (Op::PatchGroup, [g]) => Ok(UserCall::PatchGroup(group(g)?)),
        (Op::DeleteGroup, [g]) => Ok(UserCall::DeleteGroup(group(g)?)),
        (Op::AddDevices, [g]) => Ok(UserCall::AddDevices(group(g)?)),
        (Op::RemoveDevice, [g, d]) => Ok(UserCall::RemoveDevice(group(g)?, d)),
        (Op::DeviceGroups, [d]) => Ok(UserCall::DeviceGroups(d)),
        (Op::Changes, []) => Ok(UserCall::Changes),
        _ => Err(mismatch(op)),
    }
}

/// Calls the handler of a route without authentication.
pub async fn call_public(call: PublicCall, ctx: Ctx<'_>) -> Result<Reply, ApiError> {
    match call {
        PublicCall::Token => api::login::token(ctx).await,
        PublicCall::OpenApi => Ok(api::openapi::reply()),
        PublicCall::Healthz => Ok(api::ops::healthz()),
        PublicCall::Readyz => api::ops::readyz(ctx.app),
        PublicCall::Metrics => api::ops::metrics(ctx.app, ctx.info.peer),
    }
}

/// Calls the handler of an authenticated route.
pub async fn call_user(call: UserCall<'_>, ctx: Authed<'_>) -> Result<Reply, ApiError> {
    match call {
        UserCall::ListGroups => api::groups::list(ctx),
        UserCall::CreateGroup => api::groups::create(ctx).await,
        UserCall::GetGroup(id) => api::groups::get(ctx, id),
        UserCall::PutGroup(id) => api::groups::put(ctx, id).await,
        UserCall::PatchGroup(id) => api::groups::patch(ctx, id).await,
        UserCall::DeleteGroup(id) => api::groups::delete(ctx, id).await,
        UserCall::AddDevices(id) => api::groups::add_devices(ctx, id).await,
        UserCall::RemoveDevice(id, device) => api::groups::remove_device(ctx, id, device).await,
        UserCall::DeviceGroups(device) => api::devices::groups(ctx, device),
        UserCall::Changes => api::changes::list(ctx),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::router::{route, ROUTES};

    #[test]
    fn every_route_has_a_handler_of_its_shape() {
        for r in ROUTES {
            // A path of the pattern with sample segments: a group ID where one goes.
            let path = r
                .pattern
                .replace("{groupId}", "grp-7")
                .replace("{deviceId}", "d-1");
            let (method, op) = (r.method, r.op);
            let m = route(method, &path).unwrap_or_else(|e| panic!("{method} {path}: {e}"));
            assert_eq!(m.op, op);
            if op.needs_auth() {
                assert!(user_call(m.op, &m.params).is_ok(), "{method} {path}");
                assert!(public_call(m.op, &m.params).is_err(), "{method} {path}");
            } else {
                assert!(public_call(m.op, &m.params).is_ok(), "{method} {path}");
                assert!(user_call(m.op, &m.params).is_err(), "{method} {path}");
            }
        }
    }

    #[test]
    fn path_parameters_arrive_parsed() {
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let params = p(&["grp-42", "a/b"]);
        assert_eq!(
            user_call(Op::RemoveDevice, &params),
            Ok(UserCall::RemoveDevice(GroupId(42), "a/b"))
        );
        for bad in [
            "grp-0",
            "grp-01",
            "42",
            "grp-99999999999999999999",
            "grp-9223372036854775808",
            "ofc-0",
            "ofc-9223372036854775808",
        ] {
            assert_eq!(
                user_call(Op::GetGroup, &p(&[bad])),
                Err(ApiError::GroupNotFound),
                "{bad}"
            );
        }
    }
}
