//! `GET /api/changes?after=&limit=` [ext]: the caller's account's change feed, oldest
//! first. `next` is the `after` for the following page, or null when this page is the
//! end of the feed for now (a mirror then polls again with its last `seq`). A page
//! stops at `limit` entries or `limits.max_page_bytes` of them, whichever comes first.

use super::Ctx;
use crate::error::ApiError;
use crate::http::response::{push_member, Reply};

pub fn list(ctx: Ctx<'_>) -> Result<Reply, ApiError> {
    let mut after = 0u64;
    let mut limit = 100usize;
    for (k, v) in ctx.query(&["after", "limit"])? {
        match k {
            "after" => {
                after = v.parse().map_err(|_| {
                    ApiError::InvalidInput("after must be a non-negative integer".into())
                })?
            }
            _ => {
                limit = v
                    .parse()
                    .ok()
                    .filter(|l| (1..=1000).contains(l))
                    .ok_or_else(|| {
                        ApiError::InvalidInput("limit must be an integer from 1 to 1000".into())
                    })?
            }
        }
    }
    let max_bytes = usize::try_from(ctx.app.config.limits.max_page_bytes).unwrap_or(usize::MAX);
    let page = ctx
        .app
        .store
        .changes(&ctx.user()?.account, after, limit, max_bytes)?;
    let mut list = Vec::with_capacity(page.entries.iter().map(|e| e.len() + 1).sum::<usize>() + 2);
    list.push(b'[');
    for (i, e) in page.entries.iter().enumerate() {
        if i > 0 {
            list.push(b',');
        }
        list.extend_from_slice(e);
    }
    list.push(b']');
    let mut m = Vec::with_capacity(list.len() + 32);
    push_member(&mut m, "changes", &list);
    let next = page
        .next
        .map_or_else(|| "null".to_string(), |n| n.to_string());
    push_member(&mut m, "next", next.as_bytes());
    Ok(Reply::ok(m))
}
