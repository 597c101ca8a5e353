//! The group endpoints: the six Plaspy calls (list, create, get, replace, patch, delete)
//! and the membership calls [ext]. Writes wait for group commit before answering, so a
//! 2xx means the change is on disk (docs/api/http.md "Durability").

use std::sync::Arc;

use serde_json::Value;
use sha2::{Digest, Sha256};

use http::header::{ETAG, LOCATION};
use http::{HeaderName, HeaderValue, StatusCode};

use super::reply::header_value;
use super::{device_param, parse_limit, Authed, BodyKind, Chunks, Ctx, Reply, Streamed};
use crate::app::App;
use crate::error::ApiError;
use crate::json::{push_member, push_object_members};
use crate::model::{
    distinct_devices, valid_idempotency_key, validate_doc, GroupDoc, GroupId, Rules, MAX_NAME_CHARS,
};
use crate::patch::{apply_json_patch, apply_merge_patch, parse_json_patch, PatchLimits};
use crate::store::groups::{push_served, Actor, GroupView, ListQuery};
use crate::store::idempotency::IdempotencyRequest;

/// Idempotency keys are remembered this long (docs/api/extensions.md "Retry-safe create").
const IDEMPOTENCY_TTL_MS: i64 = 24 * 3600 * 1000;

/// Set on a create answered from its `Idempotency-Key` record (docs/api/extensions.md "Retry-safe create").
const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

fn rules<U>(ctx: &Ctx<'_, U>) -> Rules {
    Rules {
        max_devices: ctx.app.config.limits.max_devices_per_group,
    }
}

fn actor<'a>(ctx: &Authed<'a>) -> Actor<'a> {
    Actor {
        account: &ctx.user.account,
        user: &ctx.user.name,
    }
}

fn etag(v: &GroupView) -> Result<HeaderValue, ApiError> {
    header_value(format!("\"{}\"", v.revision()))
}

/// One group's answer: its fields at the top level and its `ETag`.
fn one(v: &GroupView) -> Result<Reply, ApiError> {
    let mut m = Vec::with_capacity(v.json().len() + 20);
    push_object_members(&mut m, &v.served());
    Ok(Reply::ok(m).header(ETAG, etag(v)?))
}

/// Groups per chunk of a streamed list, and a chunk's byte budget: enough to keep the
/// socket busy, small enough that a slow client holds little memory.
const CHUNK_GROUPS: usize = 256;
const CHUNK_BYTES: usize = 64 * 1024;

/// Appends the groups as served (`origin` included), comma-separated.
fn join(groups: &[GroupView], out: &mut Vec<u8>) {
    out.reserve(groups.iter().map(|g| g.json().len() + 21).sum());
    for (i, g) in groups.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_served(out, g.id, g.json());
    }
}

/// `"groups":[…]` for a list of groups.
fn groups_member(groups: &[GroupView]) -> Vec<u8> {
    let mut list = vec![b'['];
    join(groups, &mut list);
    list.push(b']');
    let mut m = Vec::with_capacity(list.len() + 12);
    push_member(&mut m, "groups", &list);
    m
}

/// The answer of a group list, and of the reverse lookup (a list with a `device`
/// filter). A client that pages (gives `limit` or `after`) gets one page, at most
/// `limits.max_page_bytes` of groups, and `next`; a plain Plaspy client gets exactly the
/// Plaspy answer, every group, and when that is more than one chunk the rest is
/// streamed as the client reads it (`http/stream.rs`). Each group in a streamed list is
/// one whole state of that group; groups are read chunk by chunk, so a group created
/// while the list streams may or may not be in it (as if the list were read a moment
/// later), and none is ever shown twice or half-changed.
pub fn list_reply(ctx: &Authed<'_>, mut q: ListQuery) -> Result<Reply, ApiError> {
    let account = &ctx.user.account;
    if q.limit.is_some() || q.after.is_some() {
        q.max_bytes =
            Some(usize::try_from(ctx.app.config.limits.max_page_bytes).unwrap_or(usize::MAX));
        let page = ctx.app.store.list_groups(account, &q)?;
        let mut m = groups_member(&page.groups);
        let next = page
            .next
            .map_or_else(|| "null".to_string(), |id| format!("\"{id}\""));
        push_member(&mut m, "next", next.as_bytes());
        return Ok(Reply::ok(m));
    }
    q.limit = Some(CHUNK_GROUPS);
    q.max_bytes = Some(CHUNK_BYTES);
    let page = ctx.app.store.list_groups(account, &q)?;
    let Some(next) = page.next else {
        return Ok(Reply::ok(groups_member(&page.groups)));
    };
    let mut first = Vec::new();
    join(&page.groups, &mut first);
    q.after = Some(next.0);
    let rest = GroupChunks {
        app: Arc::clone(ctx.app),
        account: account.clone(),
        q,
        done: false,
    };
    Ok(Reply {
        stream: Some(Streamed {
            member: "groups",
            first,
            rest: Box::new(rest),
        }),
        ..Reply::new(StatusCode::OK)
    })
}

/// The rest of a streamed list: the next chunk after the last group sent.
struct GroupChunks {
    app: Arc<App>,
    account: String,
    q: ListQuery,
    done: bool,
}

impl Chunks for GroupChunks {
    fn next_chunk(&mut self, out: &mut Vec<u8>) -> Result<bool, ApiError> {
        if self.done {
            return Ok(false);
        }
        let page = self.app.store.list_groups(&self.account, &self.q)?;
        match page.next {
            Some(n) => self.q.after = Some(n.0),
            None => self.done = true,
        }
        if page.groups.is_empty() {
            return Ok(false);
        }
        join(&page.groups, out);
        Ok(true)
    }
}

/// The `If-Match` condition of a write: `None` when there is none or it is `*` (any
/// current revision: the group only has to exist, which the write checks anyway), else
/// the revisions it names. Strong comparison (RFC 9110 §13.1.1): a weak tag `W/"3"`
/// never matches, and a tag matches only when it is exactly `"<revision>"` as the
/// server sent it (`"03"` is not `"3"`). A value that names no revision at all (empty,
/// garbage) can never match, so it gives 412 like a stale tag.
fn if_match(ctx: &Authed<'_>) -> Option<Vec<u64>> {
    parse_if_match(ctx.info.if_match.as_deref()?)
}

fn parse_if_match(raw: &str) -> Option<Vec<u64>> {
    if raw.trim() == "*" {
        return None;
    }
    Some(
        raw.split(',')
            .filter_map(|t| strong_tag(t.trim()))
            .collect(),
    )
}

/// The revision a strong entity tag names, if it is one the server could have sent.
fn strong_tag(t: &str) -> Option<u64> {
    let inner = t.strip_prefix('"')?.strip_suffix('"')?;
    let n: u64 = inner.parse().ok()?;
    (n.to_string() == inner).then_some(n)
}

/// Whether an `If-None-Match` value matches the current revision: weak comparison
/// (RFC 9110 §13.1.2), so `W/"3"` matches revision 3, and `*` matches any group.
fn if_none_match_hits(raw: &str, revision: u64) -> bool {
    raw.split(',').any(|t| {
        let t = t.trim();
        t == "*" || strong_tag(t.strip_prefix("W/").unwrap_or(t)) == Some(revision)
    })
}

pub fn list(ctx: Authed<'_>) -> Result<Reply, ApiError> {
    let q = list_query(&ctx, &["limit", "after", "device", "name"])?;
    list_reply(&ctx, q)
}

/// The list parameters among `known` (a subset of `limit`, `after`, `device`, `name`).
pub fn list_query(ctx: &Authed<'_>, known: &[&'static str]) -> Result<ListQuery, ApiError> {
    let mut q = ListQuery::default();
    for (k, v) in ctx.query(known)? {
        match k {
            "limit" => q.limit = Some(parse_limit(&v)?),
            "after" => q.after = Some(parse_after(&v)?),
            "device" => {
                device_param(&v, "device")?;
                q.device = Some(v);
            }
            _ => {
                if v.is_empty() || v.chars().count() > MAX_NAME_CHARS {
                    return Err(ApiError::InvalidInput(format!(
                        "name must be 1 to {MAX_NAME_CHARS} characters"
                    )));
                }
                q.name = Some(v);
            }
        }
    }
    Ok(q)
}

/// The `after` cursor (`GroupId::parse_cursor`); a malformed one is a 400.
fn parse_after(v: &str) -> Result<u64, ApiError> {
    GroupId::parse_cursor(v).ok_or_else(|| {
        ApiError::InvalidInput("after must be a group ID such as grp-42 or ofc-7".into())
    })
}

pub async fn create(mut ctx: Authed<'_>) -> Result<Reply, ApiError> {
    let body = ctx.take_body()?.value;
    let doc = validate_doc(&body, rules(&ctx))?;
    let idempotency = match &ctx.info.idempotency_key {
        Some(key) => {
            if !valid_idempotency_key(key) {
                return Err(ApiError::InvalidInput(
                    "Idempotency-Key must be 1 to 255 visible ASCII characters".into(),
                ));
            }
            Some(IdempotencyRequest {
                key: key.clone(),
                fingerprint: fingerprint(&body),
                ttl_ms: IDEMPOTENCY_TTL_MS,
                max_per_user: ctx.app.config.limits.idempotency_keys_per_user,
                max_bytes_per_user: ctx.app.config.limits.idempotency_bytes_per_user,
            })
        }
        None => None,
    };
    let app = ctx.app;
    let turn = app.store.write_turn().await;
    let created = app.store.create_group(
        actor(&ctx),
        &doc,
        app.config.limits.max_groups_per_account,
        idempotency.as_ref(),
    )?;
    drop(turn);
    app.store.durable().await?;
    let location = header_value(format!("/api/groups/{}", created.group.id))?;
    let mut reply = one(&created.group)?.header(LOCATION, location);
    reply.status = StatusCode::CREATED;
    if created.replayed {
        reply = reply.header(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(reply)
}

pub fn get(ctx: Authed<'_>, id: GroupId) -> Result<Reply, ApiError> {
    let v = ctx
        .app
        .store
        .get_group(&ctx.user.account, id)?
        .ok_or(ApiError::GroupNotFound)?;
    if let Some(inm) = ctx.info.if_none_match.as_deref() {
        if if_none_match_hits(inm, v.revision()) {
            return Ok(Reply::new(StatusCode::NOT_MODIFIED).header(ETAG, etag(&v)?));
        }
    }
    one(&v)
}

/// Refuses any write to an office group (403 `office_group_read_only`), before its body
/// is read: an office group is changed only centrally. One that this account does not
/// have goes on as any missing group (400 for a bad body, else 404). The store refuses
/// such a write too (`OfficeReadOnly`), whatever comes in between.
fn writable(ctx: &Authed<'_>, id: GroupId) -> Result<(), ApiError> {
    if id.is_office() && ctx.app.store.get_group(&ctx.user.account, id)?.is_some() {
        return Err(ApiError::OfficeGroupReadOnly);
    }
    Ok(())
}

pub async fn put(mut ctx: Authed<'_>, id: GroupId) -> Result<Reply, ApiError> {
    writable(&ctx, id)?;
    let body = ctx.take_body()?.value;
    let doc = validate_doc(&body, rules(&ctx))?;
    let turn = ctx.app.store.write_turn().await;
    let (v, ()) = ctx
        .app
        .store
        .update_group(actor(&ctx), id, if_match(&ctx).as_deref(), |_| {
            Ok::<_, ApiError>((doc, ()))
        })?;
    // A rename frees a name: an office group held for it may fit now.
    durable_then_retry_office(&ctx, turn).await?;
    one(&v)
}

/// After a write that may free a name or a quota slot: gives the writer's turn back,
/// waits until the write is durable, then retries the office groups held for the
/// account (a held one may fit now).
async fn durable_then_retry_office(
    ctx: &Authed<'_>,
    turn: crate::store::WriteTurn<'_>,
) -> Result<(), ApiError> {
    drop(turn);
    ctx.app.store.durable().await?;
    ctx.app.retry_office_held(&ctx.user.account).await;
    Ok(())
}

/// PATCH: the patch is applied to a copy of the group read without the store's writer
/// lock, which every account's writes wait on; under the lock, when the group is still
/// the one it was applied to, that result (or error) is taken as it is, and only when a
/// write came in between is it applied again there — within the same bounds
/// (`patch.rs`), so even then the lock is held for a bounded time.
pub async fn patch(mut ctx: Authed<'_>, id: GroupId) -> Result<Reply, ApiError> {
    writable(&ctx, id)?;
    let body = ctx.take_body()?;
    let rules = rules(&ctx);
    let limits = patch_limits(&ctx);
    // A body that is wrong on its own is a 400 before the group or If-Match is looked
    // at, as for PUT (found by Schemathesis).
    let ops = match body.kind {
        BodyKind::MergePatch => {
            // A merge patch replaces each member it names as a whole, so applying it
            // to any valid group finds exactly the errors it would cause on the real
            // one.
            let any_group = GroupDoc {
                name: "x".into(),
                description: None,
                devices: Vec::new(),
            };
            apply_merge_patch(&any_group, &body.value, rules, &limits)?;
            None
        }
        BodyKind::Json | BodyKind::JsonPatch => Some(parse_json_patch(&body.value, &limits)?),
    };
    let apply = |cur: &GroupDoc| match &ops {
        None => apply_merge_patch(cur, &body.value, rules, &limits),
        Some(ops) => apply_json_patch(cur, ops, rules, &limits),
    };
    let early = ctx
        .app
        .store
        .get_group(&ctx.user.account, id)?
        .map(|v| v.doc())
        .transpose()?
        .map(|doc| {
            let result = apply(&doc);
            (doc, result)
        });
    let turn = ctx.app.store.write_turn().await;
    let (v, ()) =
        ctx.app
            .store
            .update_group(actor(&ctx), id, if_match(&ctx).as_deref(), |cur| {
                let new = match early {
                    Some((seen, result)) if seen == *cur => result?,
                    _ => apply(cur)?,
                };
                Ok::<_, ApiError>((new, ()))
            })?;
    durable_then_retry_office(&ctx, turn).await?;
    one(&v)
}

fn patch_limits(ctx: &Authed<'_>) -> PatchLimits {
    let l = &ctx.app.config.limits;
    PatchLimits {
        max_operations: usize::try_from(l.max_patch_operations).unwrap_or(usize::MAX),
        max_document_bytes: usize::try_from(l.max_patch_document_bytes).unwrap_or(usize::MAX),
    }
}

pub async fn delete(ctx: Authed<'_>, id: GroupId) -> Result<Reply, ApiError> {
    writable(&ctx, id)?;
    let turn = ctx.app.store.write_turn().await;
    ctx.app
        .store
        .delete_group(actor(&ctx), id, if_match(&ctx).as_deref())?;
    // The name and a quota slot are free: an office group held for them may fit now.
    durable_then_retry_office(&ctx, turn).await?;
    Ok(Reply::ok(Vec::new()))
}

pub async fn add_devices(mut ctx: Authed<'_>, id: GroupId) -> Result<Reply, ApiError> {
    writable(&ctx, id)?;
    let body = ctx.take_body()?.value;
    let wanted = match body.as_object().map(|o| o.get("devices")) {
        None => {
            return Err(ApiError::InvalidInput(
                "the body must be a JSON object".into(),
            ))
        }
        Some(None | Some(Value::Null)) => {
            return Err(ApiError::InvalidInput("devices is required".into()))
        }
        // The limit applies to the group with them added, checked below.
        Some(Some(Value::Array(items))) => distinct_devices(items, None)?,
        Some(Some(_)) => {
            return Err(ApiError::InvalidInput(
                "devices must be an array of strings".into(),
            ))
        }
    };
    let max = ctx.app.config.limits.max_devices_per_group;
    let turn = ctx.app.store.write_turn().await;
    let (v, added) =
        ctx.app
            .store
            .update_group(actor(&ctx), id, if_match(&ctx).as_deref(), |cur| {
                let present: std::collections::HashSet<&str> =
                    cur.devices.iter().map(String::as_str).collect();
                let added: Vec<String> = wanted
                    .iter()
                    .filter(|d| !present.contains(d.as_str()))
                    .cloned()
                    .collect();
                let mut doc = cur.clone();
                doc.devices.extend(added.iter().cloned());
                if doc.devices.len() > max {
                    return Err(ApiError::InvalidInput(format!(
                        "devices must hold at most {max} distinct IDs"
                    )));
                }
                Ok((doc, added))
            })?;
    drop(turn);
    ctx.app.store.durable().await?;
    let mut reply = one(&v)?;
    let added_json = serde_json::to_vec(&added).map_err(|e| ApiError::Internal(e.to_string()))?;
    push_member(&mut reply.members, "added", &added_json);
    Ok(reply)
}

pub async fn remove_device(ctx: Authed<'_>, id: GroupId, device: &str) -> Result<Reply, ApiError> {
    writable(&ctx, id)?;
    device_param(device, "deviceId")?;
    let turn = ctx.app.store.write_turn().await;
    let (v, removed) =
        ctx.app
            .store
            .update_group(actor(&ctx), id, if_match(&ctx).as_deref(), |cur| {
                let mut doc = cur.clone();
                doc.devices.retain(|d| *d != device);
                let removed = doc.devices.len() != cur.devices.len();
                Ok::<_, ApiError>((doc, removed))
            })?;
    drop(turn);
    ctx.app.store.durable().await?;
    let mut reply = one(&v)?;
    push_member(
        &mut reply.members,
        "removed",
        if removed { b"true" } else { b"false" },
    );
    Ok(reply)
}

/// The fingerprint of a create body: SHA-256 of its canonical JSON (object keys sorted,
/// no white space), so a retry that differs only in formatting or key order is the same
/// request, while any difference in a value (unknown members included) is another.
fn fingerprint(body: &Value) -> String {
    fn canonical(v: &Value, out: &mut Vec<u8>) {
        match v {
            Value::Object(map) => {
                let mut members: Vec<(&String, &Value)> = map.iter().collect();
                members.sort_by(|a, b| a.0.cmp(b.0));
                out.push(b'{');
                for (i, (k, v)) in members.into_iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    // Serialising a string into a Vec cannot fail.
                    let _ = serde_json::to_writer(&mut *out, k);
                    out.push(b':');
                    canonical(v, out);
                }
                out.push(b'}');
            }
            Value::Array(items) => {
                out.push(b'[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    canonical(v, out);
                }
                out.push(b']');
            }
            scalar => {
                let _ = serde_json::to_writer(&mut *out, scalar);
            }
        }
    }
    let mut bytes = Vec::new();
    canonical(body, &mut bytes);
    format!("{:x}", Sha256::digest(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn after_takes_every_canonical_id() {
        assert_eq!(parse_after("grp-42"), Ok(42));
        // Lists run local groups first, then office groups: a `grp-` cursor past the
        // last local number still has the office groups after it.
        let last_local = crate::model::OFFICE_BASE - 1;
        assert_eq!(parse_after("grp-18446744073709551615"), Ok(last_local));
        assert_eq!(parse_after("grp-99999999999999999999"), Ok(last_local));
        assert_eq!(parse_after("ofc-7"), Ok(crate::model::OFFICE_BASE + 7));
        assert_eq!(parse_after("ofc-9223372036854775807"), Ok(u64::MAX));
        assert_eq!(parse_after("ofc-99999999999999999999"), Ok(u64::MAX));
        for bad in [
            "grp-0",
            "grp-01",
            "grp-",
            "42",
            "grp-123456789012345678901",
            "grp-1a",
            "ofc-0",
            "ofc-",
        ] {
            assert!(parse_after(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn if_match_is_strong_and_exact() {
        assert_eq!(parse_if_match("*"), None);
        assert_eq!(parse_if_match(" * "), None);
        assert_eq!(parse_if_match("\"3\""), Some(vec![3]));
        assert_eq!(parse_if_match("\"1\", \"7\""), Some(vec![1, 7]));
        assert_eq!(parse_if_match("W/\"3\""), Some(vec![]));
        assert_eq!(parse_if_match("\"03\""), Some(vec![]));
        assert_eq!(parse_if_match("\"+3\""), Some(vec![]));
        assert_eq!(parse_if_match("3"), Some(vec![]));
        assert_eq!(parse_if_match(""), Some(vec![]));
    }

    #[test]
    fn if_none_match_is_weak() {
        assert!(if_none_match_hits("\"3\"", 3));
        assert!(if_none_match_hits("W/\"3\"", 3));
        assert!(if_none_match_hits("\"1\", W/\"3\"", 3));
        assert!(if_none_match_hits("*", 3));
        assert!(!if_none_match_hits("\"4\"", 3));
        assert!(!if_none_match_hits("\"03\"", 3));
        assert!(!if_none_match_hits("", 3));
    }

    #[test]
    fn fingerprint_ignores_formatting_only() {
        let a = json!({"name": "x", "devices": ["a", "b"], "description": null});
        let b: Value =
            serde_json::from_str(r#"{ "description" : null, "devices":["a","b"], "name":"x" }"#)
                .unwrap();
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert_ne!(
            fingerprint(&a),
            fingerprint(&json!({"name": "x", "devices": ["b", "a"], "description": null}))
        );
        assert_ne!(
            fingerprint(&json!({"name": "x"})),
            fingerprint(&json!({"name": "x", "id": 1}))
        );
        assert_ne!(
            fingerprint(&json!({"a": {"b": 1, "c": 2}})),
            fingerprint(&json!({"a": {"b": 2, "c": 1}}))
        );
    }
}
