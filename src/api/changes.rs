//! `GET /api/changes?after=&limit=` [ext]: the caller's account's change feed, oldest
//! first, with the store's `storeId`. `next` is always the `after` for the following
//! call (past other accounts' entries when the page reached the end: see
//! `Store::changes`); an empty page means the feed is read for now. A page stops at
//! `limit` entries or `limits.max_page_bytes` of them, whichever comes first. An
//! `after` below what retention may have removed is 410 `cursor_expired`.

use super::{json_string, parse_limit, Authed, Reply};
use crate::error::ApiError;
use crate::json::{array, push_member};

pub fn list(ctx: Authed<'_>) -> Result<Reply, ApiError> {
    let mut after = None;
    let mut limit = 100usize;
    for (k, v) in ctx.query(&["after", "limit"])? {
        match k {
            "after" => {
                after = Some(v.parse().map_err(|_| {
                    ApiError::InvalidInput("after must be a non-negative integer".into())
                })?)
            }
            _ => limit = parse_limit(&v)?,
        }
    }
    let max_bytes = usize::try_from(ctx.app.config.limits.max_page_bytes).unwrap_or(usize::MAX);
    let page = ctx
        .app
        .store
        .changes(&ctx.user.account, after, limit, max_bytes)?;
    let list = array(page.entries.iter().map(|e| &e[..]));
    let mut m = Vec::with_capacity(list.len() + 96);
    let store_id = json_string(ctx.app.store.store_id())?;
    push_member(&mut m, "storeId", &store_id);
    push_member(&mut m, "changes", &list);
    push_member(&mut m, "next", page.next.to_string().as_bytes());
    Ok(Reply::ok(m))
}
