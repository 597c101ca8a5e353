//! Percent-decoding of URL parts, and the one query-string parser: the router decodes
//! path segments with it (`http/router.rs`), handlers their query parameters
//! (`api::Ctx::query`). Plain functions of strings, below both.

use crate::error::ApiError;

/// Decodes `%XX` escapes in one path segment (a `+` stays a `+` in paths).
pub fn percent_decode(s: &str) -> Result<String, ApiError> {
    decode(s, false)
}

/// Decodes a query-string component (`+` is a space there).
pub fn query_decode(s: &str) -> Result<String, ApiError> {
    decode(s, true)
}

fn decode(s: &str, plus_is_space: bool) -> Result<String, ApiError> {
    if !(s.contains('%') || plus_is_space && s.contains('+')) {
        return Ok(s.to_string());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        ApiError::InvalidInput("the URL has an invalid percent-encoding".into())
                    })?;
                out.push(hex);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
        .map_err(|_| ApiError::InvalidInput("the URL decodes to invalid UTF-8".into()))
}

/// The one query-string parser (what handlers get through `Ctx::query`): the
/// parameters among `known`, decoded, in the order given. A name that does not decode,
/// or is not known, is not one of ours and is skipped (clients add their own); a known
/// name given twice, or with a value that does not decode, is 400 `invalid_input`.
pub fn parse_query(
    q: &str,
    known: &[&'static str],
) -> Result<Vec<(&'static str, String)>, ApiError> {
    let mut out: Vec<(&'static str, String)> = Vec::new();
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let Ok(k) = query_decode(k) else { continue };
        let Some(name) = known.iter().find(|n| **n == k) else {
            continue;
        };
        if out.iter().any(|(n, _)| n == name) {
            return Err(ApiError::InvalidInput(format!(
                "{name} must be given at most once"
            )));
        }
        let v = query_decode(v).map_err(|_| {
            ApiError::InvalidInput(format!("{name} has an invalid percent-encoding"))
        })?;
        out.push((name, v));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries() {
        let known = ["limit", "name", "device", "flag"];
        assert_eq!(
            parse_query(
                "limit=10&name=big+trucks&device=a%26b&flag&utm=x&%ff=1",
                &known
            )
            .unwrap(),
            vec![
                ("limit", "10".to_string()),
                ("name", "big trucks".to_string()),
                ("device", "a&b".to_string()),
                ("flag", String::new())
            ]
        );
        assert!(matches!(
            parse_query("limit=1&limit=2", &known),
            Err(ApiError::InvalidInput(m)) if m == "limit must be given at most once"
        ));
        assert!(matches!(
            parse_query("name=%zz", &known),
            Err(ApiError::InvalidInput(m)) if m == "name has an invalid percent-encoding"
        ));
    }
}
