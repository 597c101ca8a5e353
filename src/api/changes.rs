//! `GET /api/changes?after=&limit=` [ext]: the caller's account's change feed, oldest
//! first, with the store's `storeId`. `next` is always the `after` for the following
//! call (past other accounts' entries when the page reached the end: see
//! `Store::changes`); an empty page means the feed is read for now. A page stops at
//! `limit` entries or `limits.max_page_bytes` of them, whichever comes first. An
//! `after` below what retention may have removed is 410 `cursor_expired`.

use super::Ctx;
use crate::error::ApiError;
use crate::http::response::{push_member, Reply};

pub fn list(ctx: Ctx<'_>) -> Result<Reply, ApiError> {
    let mut after = None;
    let mut limit = 100usize;
    for (k, v) in ctx.query(&["after", "limit"])? {
        match k {
            "after" => {
                after = Some(v.parse().map_err(|_| {
                    ApiError::InvalidInput("after must be a non-negative integer".into())
                })?)
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
    let mut m = Vec::with_capacity(list.len() + 96);
    let store_id = serde_json::to_vec(ctx.app.store.store_id())
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    push_member(&mut m, "storeId", &store_id);
    push_member(&mut m, "changes", &list);
    push_member(&mut m, "next", page.next.to_string().as_bytes());
    Ok(Reply::ok(m))
}
