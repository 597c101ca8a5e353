//! `GET /api/devices/{deviceId}/groups` [ext]: the groups of the caller's account that
//! contain a device, served from the reverse index (never a scan of every group). It
//! pages with `limit` and `after` like the group list and, unpaged, streams the same
//! way (a device may be in many large groups).

use super::groups::{list_query, list_reply};
use super::{device_param, Authed, Reply};
use crate::error::ApiError;

pub fn groups(ctx: Authed<'_>, device: &str) -> Result<Reply, ApiError> {
    device_param(device, "deviceId")?;
    let mut q = list_query(&ctx, &["limit", "after"])?;
    q.device = Some(device.to_string());
    list_reply(&ctx, q)
}
