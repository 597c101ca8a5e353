//! Reading request bodies safely: the content type is checked first (415), a declared
//! length over the limit is refused before a byte is read (413), a chunked body is cut
//! off as soon as it passes the limit, and a body that does not arrive within
//! `limits.body_timeout_secs` is a 408. Then the bytes are parsed as JSON (400).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use hyper::HeaderMap;
use serde_json::Value;

// The body types are the handlers' (`api/`); this file produces them.
pub use crate::api::{BodyKind, JsonBody};
use crate::error::ApiError;
use crate::http::router::Op;

/// Decides the body kind from the headers, before reading anything.
pub fn check_headers(op: Op, headers: &HeaderMap, max: u64) -> Result<Option<BodyKind>, ApiError> {
    let declared = match headers.get(CONTENT_LENGTH) {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| ApiError::InvalidInput("Content-Length is not a number".into()))?,
        ),
        None => None,
    };
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

/// Reads and parses the body within the size and time limits.
pub async fn read_json(
    body: Incoming,
    kind: BodyKind,
    max: u64,
    timeout: Duration,
) -> Result<JsonBody, ApiError> {
    let limit = usize::try_from(max).unwrap_or(usize::MAX);
    let collected = tokio::time::timeout(timeout, Limited::new(body, limit).collect())
        .await
        .map_err(|_| ApiError::RequestTimeout)?;
    let bytes: Bytes = match collected {
        Ok(c) => c.to_bytes(),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return Err(ApiError::BodyTooLarge)
        }
        Err(e) => {
            return Err(ApiError::InvalidInput(format!(
                "the body could not be read ({e})"
            )))
        }
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::InvalidInput("a JSON body is required".into()));
    }
    let value = serde_json::from_slice::<Value>(&bytes)
        .map_err(|e| ApiError::InvalidInput(format!("the body is not valid JSON ({e})")))?;
    Ok(JsonBody { kind, value })
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
