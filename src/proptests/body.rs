//! Property tests (proptest) of the request-header checks in `http/body.rs`: for any
//! `Content-Type` and `Content-Length` a client can put on the wire, `check_headers`
//! never panics, refuses an oversized declared length before anything else, accepts
//! exactly the media types docs/api/http.md "Conventions" allows (case and parameters aside), and echoes
//! the sent type in a 415 only cleaned and cut short. Test-only.

use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use hyper::HeaderMap;
use proptest::prelude::*;

use crate::error::ApiError;
use crate::http::body::{check_headers, BodyKind};
use crate::http::router::Op;

const MAX: u64 = 4096;

fn body_op() -> impl Strategy<Value = Op> {
    prop::sample::select(vec![
        Op::Token,
        Op::CreateGroup,
        Op::PutGroup,
        Op::PatchGroup,
        Op::AddDevices,
    ])
}

/// A media type: one of the allowed essences in random case with random parameters and
/// white space, or arbitrary visible bytes.
fn content_type() -> impl Strategy<Value = Vec<u8>> {
    let essence = prop::sample::select(vec![
        "application/json",
        "application/json-patch+json",
        "application/merge-patch+json",
        "text/plain",
        "application/jsonx",
        "application/x-www-form-urlencoded",
        "",
    ]);
    prop_oneof![
        3 => (essence, any::<u64>(), "[ ]{0,2}", prop::option::of("; ?charset=(utf-8|UTF-8|latin1)")).prop_map(
            |(e, caps, pad, param)| {
                let mixed: String = e
                    .chars()
                    .enumerate()
                    .map(|(i, c)| if caps >> (i % 64) & 1 == 1 { c.to_ascii_uppercase() } else { c })
                    .collect();
                format!("{pad}{mixed}{pad}{}", param.unwrap_or_default()).into_bytes()
            }
        ),
        1 => prop::collection::vec(prop_oneof![0x20u8..0x7f, 0x80u8..=0xff, Just(b'\t')], 0..300),
    ]
}

fn headers(ctype: Option<&[u8]>, length: Option<&str>, chunked: bool) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Some(v) = ctype.and_then(|c| HeaderValue::from_bytes(c).ok()) {
        h.insert(CONTENT_TYPE, v);
    }
    if let Some(v) = length.and_then(|l| HeaderValue::from_str(l).ok()) {
        h.insert(CONTENT_LENGTH, v);
    }
    if chunked {
        h.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
    }
    h
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn content_checks_hold_for_any_headers(
        op in body_op(),
        ctype in prop::option::of(content_type()),
        length in prop::option::of(prop_oneof![(0u64..2 * MAX).prop_map(|n| n.to_string()), "[0-9a-z +-]{0,24}"]),
        chunked in any::<bool>(),
    ) {
        let h = headers(ctype.as_deref(), length.as_deref(), chunked);
        let declared = h.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|s| s.trim().parse::<u64>().ok());
        let result = check_headers(op, &h, MAX);
        if declared.is_some_and(|n| n > MAX) {
            prop_assert_eq!(result, Err(ApiError::BodyTooLarge));
            return Ok(());
        }
        match result {
            Ok(None) => prop_assert!(false, "a body route always gets a kind"),
            Ok(Some(kind)) => {
                let sent = h.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(|s| s.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
                match sent.as_deref() {
                    None => prop_assert_eq!(kind, BodyKind::Json),
                    Some("application/json") => prop_assert_eq!(kind, BodyKind::Json),
                    Some("application/json-patch+json") => prop_assert_eq!((op, kind), (Op::PatchGroup, BodyKind::JsonPatch)),
                    Some("application/merge-patch+json") => prop_assert_eq!((op, kind), (Op::PatchGroup, BodyKind::MergePatch)),
                    Some(other) => prop_assert!(false, "accepted {:?}", other),
                }
            }
            Err(ApiError::UnsupportedMediaType(shown)) => {
                prop_assert!(shown.chars().count() <= 100);
                prop_assert!(!shown.chars().any(char::is_control));
            }
            Err(ApiError::InvalidInput(m)) => prop_assert!(h.contains_key(CONTENT_LENGTH) && declared.is_none(), "{}", m),
            Err(other) => prop_assert!(false, "unexpected {:?}", other),
        }
    }
}
