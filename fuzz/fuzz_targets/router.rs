//! Fuzz target: the request line and headers as the server sees them. The input is
//! split at NUL bytes into method, path, query, Content-Type and Content-Length; the
//! router, the percent-decoder, the query parser and the body-header checks must never
//! panic, and a matched route's parameters are never empty.
#![no_main]

use fleetgroups::http::body::check_headers;
use fleetgroups::http::router::{parse_query, percent_decode, route, Op};
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::HeaderMap;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|b| *b == 0);
    let method = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let path = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let query = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let ctype = parts.next().unwrap_or_default();
    let clen = parts.next().unwrap_or_default();
    if let Ok(m) = route(&method, &path) {
        assert!(m.params.iter().all(|p| !p.is_empty()));
    }
    for seg in path.split('/') {
        if let Ok(d) = percent_decode(seg) {
            assert!(d.len() <= seg.len());
        }
    }
    let _ = parse_query(&query, &["limit", "after", "device", "name"]);
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(ctype) {
        headers.insert(CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_bytes(clen) {
        headers.insert(CONTENT_LENGTH, v);
    }
    for op in [Op::CreateGroup, Op::PatchGroup, Op::Token] {
        let _ = check_headers(op, &headers, 4096);
    }
});
