//! `GET /api/devices/{deviceId}/groups` [ext]: the groups of the caller's account that
//! contain a device, served from the reverse index (never a scan of every group). It
//! pages with `limit` and `after` like the group list and, unpaged, streams the same
//! way (a device may be in many large groups).

use super::groups::{list_query, list_reply};
use super::Ctx;
use crate::error::ApiError;
use crate::http::response::Reply;
use crate::model::check_device_id;

pub fn groups(ctx: Ctx<'_>) -> Result<Reply, ApiError> {
    let device = ctx.param(0)?;
    check_device_id(device).map_err(|why| ApiError::InvalidInput(format!("deviceId {why}")))?;
    let mut q = list_query(&ctx, &["limit", "after"])?;
    q.device = Some(device.to_string());
    list_reply(&ctx, q)
}
