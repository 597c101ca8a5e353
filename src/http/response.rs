//! Response bodies: the Plaspy envelope (`success`, `error`, `errorCode`, `apiUsage`,
//! `apiDailyUsage`) followed by the resource fields at the top level. Handlers hand over
//! the members of their JSON object as bytes (`api::Reply`); the envelope is written in
//! front of them into one buffer, without building a `serde_json::Value`.

use crate::error::ApiError;

/// The full JSON body of a success: envelope, usage, then the members.
pub fn success_body(usage: Option<(u64, u64)>, members: &[u8]) -> Vec<u8> {
    let mut out = success_head(usage, members, 1);
    out.push(b'}');
    out
}

/// A success body without its closing brace, with room for `extra` more bytes.
pub fn success_head(usage: Option<(u64, u64)>, members: &[u8], extra: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + members.len() + extra);
    out.extend_from_slice(b"{\"success\":true,\"error\":null");
    push_usage(&mut out, usage);
    if !members.is_empty() {
        out.push(b',');
        out.extend_from_slice(members);
    }
    out
}

/// The full JSON body of a failure.
pub fn error_body(err: &ApiError, usage: Option<(u64, u64)>) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(b"{\"success\":false,\"error\":");
    // Serialising a string cannot fail.
    let _ = serde_json::to_writer(&mut out, err.message().as_ref());
    out.extend_from_slice(b",\"errorCode\":\"");
    out.extend_from_slice(err.code().as_bytes());
    out.push(b'"');
    push_usage(&mut out, usage);
    out.push(b'}');
    out
}

fn push_usage(out: &mut Vec<u8>, usage: Option<(u64, u64)>) {
    if let Some((total, daily)) = usage {
        out.extend_from_slice(b",\"apiUsage\":");
        out.extend_from_slice(total.to_string().as_bytes());
        out.extend_from_slice(b",\"apiDailyUsage\":");
        out.extend_from_slice(daily.to_string().as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::push_object_members;

    #[test]
    fn envelope_shapes() {
        let mut m = Vec::new();
        push_object_members(&mut m, br#"{"id":"grp-1","name":"x"}"#);
        let body = success_body(Some((3, 2)), &m);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"success": true, "error": null, "apiUsage": 3, "apiDailyUsage": 2, "id": "grp-1", "name": "x"})
        );
        assert_eq!(success_body(None, b""), br#"{"success":true,"error":null}"#);
        let e = error_body(&ApiError::NameConflict, None);
        assert_eq!(
            e,
            br#"{"success":false,"error":"Group name already exists","errorCode":"name_conflict"}"#
        );
    }
}
