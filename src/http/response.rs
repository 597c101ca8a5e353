//! Response bodies: the Plaspy envelope (`success`, `error`, `errorCode`, `apiUsage`,
//! `apiDailyUsage`) followed by the resource fields at the top level. Handlers hand over
//! the members of their JSON object as bytes; the envelope is written in front of them
//! into one buffer, without building a `serde_json::Value`.

use crate::error::ApiError;
use crate::http::stream::Chunks;

/// A handler's successful answer.
#[derive(Debug, Default)]
pub struct Reply {
    pub status: u16,
    /// JSON object members without the braces, e.g. `"id":"grp-1","name":"x"`.
    pub members: Vec<u8>,
    /// Extra headers (`Location`, `ETag` …).
    pub headers: Vec<(&'static str, String)>,
    /// A body that is not the JSON envelope (metrics, OpenAPI): content type and bytes
    /// (`Bytes`, so the OpenAPI document is sent from the binary without a copy).
    pub raw: Option<(&'static str, bytes::Bytes)>,
    /// An array member sent after `members` as the client reads it (`http/stream.rs`).
    pub stream: Option<Streamed>,
}

/// The last member of an answer, an array streamed chunk by chunk.
pub struct Streamed {
    /// The member's name, e.g. `groups`.
    pub member: &'static str,
    /// The first elements, already read (comma-separated JSON values; may be empty).
    pub first: Vec<u8>,
    /// The rest.
    pub rest: Box<dyn Chunks>,
}

impl std::fmt::Debug for Streamed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streamed")
            .field("member", &self.member)
            .field("first_bytes", &self.first.len())
            .finish_non_exhaustive()
    }
}

impl Reply {
    /// 200 with the given members.
    pub fn ok(members: Vec<u8>) -> Reply {
        Reply {
            status: 200,
            members,
            ..Reply::default()
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &'static str, value: String) -> Reply {
        self.headers.push((name, value));
        self
    }
}

/// Appends the members of a JSON object (`{...}`) without its braces.
pub fn push_object_members(out: &mut Vec<u8>, object: &[u8]) {
    if object.len() >= 2 {
        let inner = &object[1..object.len() - 1];
        if !inner.is_empty() {
            if !out.is_empty() {
                out.push(b',');
            }
            out.extend_from_slice(inner);
        }
    }
}

/// Appends `"name":<json>` as a member.
pub fn push_member(out: &mut Vec<u8>, name: &str, json: &[u8]) {
    if !out.is_empty() {
        out.push(b',');
    }
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
    out.extend_from_slice(json);
}

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
