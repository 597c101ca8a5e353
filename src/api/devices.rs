//! `GET /api/devices/{deviceId}/groups` [ext]: the groups of the caller's account that
//! contain a device, served from the reverse index (never a scan of every group).

use super::groups::groups_member;
use super::Ctx;
use crate::error::ApiError;
use crate::http::response::Reply;
use crate::model::check_device_id;

pub fn groups(ctx: Ctx<'_>) -> Result<Reply, ApiError> {
    let device = ctx.param(0)?;
    check_device_id(device).map_err(|why| ApiError::InvalidInput(format!("deviceId {why}")))?;
    let found = ctx.app.store.device_groups(&ctx.user()?.account, device)?;
    Ok(Reply::ok(groups_member(&found)))
}
