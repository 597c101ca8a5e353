//! Reading request bodies safely: the content type is checked first (415), a declared
//! length over the limit is refused before a byte is read (413), a chunked body is cut
//! off as soon as it passes the limit, and a body that does not arrive within
//! `limits.body_timeout_secs` is a 408. Then the bytes are parsed as JSON (400).
//!
//! Every body is also paid for from the shared body budget (`app/budget.rs`,
//! `limits.body_budget_bytes`) before it is read: a declared length at once, a chunked
//! body `CHUNKED_STEP` ahead of what has arrived. A body whose share is not free within
//! `BUDGET_WAIT` is refused with 503 `server_busy`; the share is held until the
//! request's handler is done with the parsed body.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use hyper::HeaderMap;
use serde_json::Value;

// The body types are the handlers' (`api/`); this file produces them.
pub use crate::api::{BodyKind, JsonBody};
use crate::app::budget::{Budget, Share};
use crate::error::ApiError;
use crate::http::router::Op;

/// How long a body waits for its share of the body budget before it is refused: long
/// enough to ride out a burst, short enough that a client is told to come back rather
/// than left hanging.
pub const BUDGET_WAIT: Duration = Duration::from_secs(1);

/// What a chunked body (no declared length) reserves ahead of what has arrived. hyper
/// hands over at most its read buffer (64 KiB, `server/mod.rs`) at a time.
const CHUNKED_STEP: u64 = 64 * 1024;

/// The declared `Content-Length`, if any.
pub fn content_length(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    match headers.get(CONTENT_LENGTH) {
        Some(v) => Ok(Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| ApiError::InvalidInput("Content-Length is not a number".into()))?,
        )),
        None => Ok(None),
    }
}

/// Decides the body kind from the headers, before reading anything.
pub fn check_headers(op: Op, headers: &HeaderMap, max: u64) -> Result<Option<BodyKind>, ApiError> {
    let declared = content_length(headers)?;
    if declared.is_some_and(|n| n > max) {
        return Err(ApiError::BodyTooLarge);
    }
    let has_body = declared.is_some_and(|n| n > 0) || headers.contains_key(TRANSFER_ENCODING);
    let ctype = match headers.get(CONTENT_TYPE) {
        Some(v) => v.to_str().unwrap_or("(not text)").to_string(),
        None if has_body => return Err(ApiError::UnsupportedMediaType("none".into())),
        None => return Ok(Some(BodyKind::Json)),
    };
    let essence = ctype
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let kind = match essence.as_str() {
        "application/json" => BodyKind::Json,
        "application/json-patch+json" if op == Op::PatchGroup => BodyKind::JsonPatch,
        "application/merge-patch+json" if op == Op::PatchGroup => BodyKind::MergePatch,
        _ => {
            let shown: String = ctype
                .chars()
                .filter(|c| !c.is_control())
                .take(100)
                .collect();
            return Err(ApiError::UnsupportedMediaType(shown));
        }
    };
    Ok(Some(kind))
}

/// A body to read: its limits, and the budget it is paid from.
pub struct BodyRead<'a> {
    pub kind: BodyKind,
    /// The declared length, when there is one (else the body is chunked).
    pub declared: Option<u64>,
    pub max: u64,
    pub timeout: Duration,
    pub budget: &'a Budget,
}

/// Reads and parses the body within the size and time limits and the body budget.
/// Returns the body with its share of the budget, to hold while the body is in use.
pub async fn read_json(body: Incoming, read: BodyRead<'_>) -> Result<(JsonBody, Share), ApiError> {
    let (bytes, share) = tokio::time::timeout(read.timeout, collect(body, &read))
        .await
        .map_err(|_| ApiError::RequestTimeout)??;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::InvalidInput("a JSON body is required".into()));
    }
    let value = serde_json::from_slice::<Value>(&bytes)
        .map_err(|e| ApiError::InvalidInput(format!("the body is not valid JSON ({e})")))?;
    let kind = read.kind;
    Ok((JsonBody { kind, value }, share))
}

/// The body's bytes, each paid for from the budget before it is read.
async fn collect(mut body: Incoming, read: &BodyRead<'_>) -> Result<(Bytes, Share), ApiError> {
    let busy = || ApiError::Busy("request bodies (limits.body_budget_bytes)");
    let ahead = read.declared.unwrap_or(CHUNKED_STEP.min(read.max));
    let mut share = read
        .budget
        .take(ahead, BUDGET_WAIT)
        .await
        .ok_or_else(busy)?;
    let mut out: Vec<u8> = Vec::with_capacity(usize::try_from(ahead).unwrap_or(0).min(1 << 20));
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| ApiError::InvalidInput(format!("the body could not be read ({e})")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let received = (out.len() + data.len()) as u64;
        if received > read.max {
            return Err(ApiError::BodyTooLarge);
        }
        out.extend_from_slice(&data);
        // A chunked body stays a step ahead; a declared one was paid in full (hyper
        // never hands over more than it declared).
        let wanted = received.saturating_add(CHUNKED_STEP).min(read.max);
        if read.declared.is_none() && wanted > share.bytes() {
            let more = wanted - share.bytes();
            if !read.budget.grow(&mut share, more, BUDGET_WAIT).await {
                return Err(busy());
            }
        }
    }
    Ok((Bytes::from(out), share))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn kind(op: Op, pairs: &[(&'static str, &'static str)]) -> Result<Option<BodyKind>, ApiError> {
        check_headers(op, &headers(pairs), 1024)
    }

    #[test]
    fn json_with_or_without_parameters_in_any_case() {
        for ct in [
            "application/json",
            "application/json; charset=utf-8",
            "application/json;charset=UTF-8",
            "Application/JSON",
            " application/json ",
        ] {
            assert_eq!(
                kind(
                    Op::CreateGroup,
                    &[("content-type", ct), ("content-length", "2")]
                ),
                Ok(Some(BodyKind::Json)),
                "{ct}"
            );
        }
    }

    #[test]
    fn patch_types_only_on_patch() {
        let patch = [
            ("content-type", "application/json-patch+json"),
            ("content-length", "2"),
        ];
        let merge = [
            ("content-type", "application/merge-patch+json"),
            ("content-length", "2"),
        ];
        assert_eq!(kind(Op::PatchGroup, &patch), Ok(Some(BodyKind::JsonPatch)));
        assert_eq!(kind(Op::PatchGroup, &merge), Ok(Some(BodyKind::MergePatch)));
        for op in [Op::CreateGroup, Op::PutGroup, Op::Token, Op::AddDevices] {
            assert_eq!(
                kind(op, &patch),
                Err(ApiError::UnsupportedMediaType(
                    "application/json-patch+json".into()
                ))
            );
        }
    }

    #[test]
    fn other_types_and_missing_types_are_415() {
        assert_eq!(
            kind(
                Op::CreateGroup,
                &[("content-type", "text/plain"), ("content-length", "2")]
            ),
            Err(ApiError::UnsupportedMediaType("text/plain".into()))
        );
        assert_eq!(
            kind(Op::CreateGroup, &[("content-length", "2")]),
            Err(ApiError::UnsupportedMediaType("none".into()))
        );
        assert_eq!(
            kind(Op::CreateGroup, &[("transfer-encoding", "chunked")]),
            Err(ApiError::UnsupportedMediaType("none".into()))
        );
        // No body and no type: the handler reports the missing body (400), not 415.
        assert_eq!(kind(Op::CreateGroup, &[]), Ok(Some(BodyKind::Json)));
        assert_eq!(
            kind(Op::CreateGroup, &[("content-length", "0")]),
            Ok(Some(BodyKind::Json))
        );
        // The echoed type is cut short and has no control characters.
        let long = "x/".to_string() + &"y".repeat(300);
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_str(&long).unwrap());
        h.insert("content-length", HeaderValue::from_static("2"));
        match check_headers(Op::CreateGroup, &h, 1024) {
            Err(ApiError::UnsupportedMediaType(shown)) => assert_eq!(shown.len(), 100),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn declared_length_over_the_limit_is_413_before_the_type() {
        assert_eq!(
            kind(
                Op::CreateGroup,
                &[("content-type", "text/plain"), ("content-length", "1025")]
            ),
            Err(ApiError::BodyTooLarge)
        );
        assert_eq!(
            kind(
                Op::CreateGroup,
                &[
                    ("content-type", "application/json"),
                    ("content-length", "1024")
                ]
            ),
            Ok(Some(BodyKind::Json))
        );
        assert!(matches!(
            kind(
                Op::CreateGroup,
                &[
                    ("content-type", "application/json"),
                    ("content-length", "lots")
                ]
            ),
            Err(ApiError::InvalidInput(_))
        ));
    }
}
