//! A handler's successful answer, as plain data the HTTP layer renders: a status that
//! is a real status code, typed header names and values, the members of the JSON
//! object (the envelope goes around them in `http/response.rs`), or a raw body, or a
//! last member streamed as the client reads it ([`Chunks`], sent by `http/stream.rs`).

use http::{HeaderName, HeaderValue, StatusCode};

use crate::error::ApiError;

/// Where a streamed array's elements come from, chunk by chunk.
pub trait Chunks: Send {
    /// Appends the next elements to `out` (JSON values, comma-separated among
    /// themselves, no leading comma). Returns false, having appended nothing, at the end.
    fn next_chunk(&mut self, out: &mut Vec<u8>) -> Result<bool, ApiError>;
}

/// A handler's successful answer.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    /// JSON object members without the braces, e.g. `"id":"grp-1","name":"x"`.
    pub members: Vec<u8>,
    /// Extra headers (`Location`, `ETag` …).
    pub headers: Vec<(HeaderName, HeaderValue)>,
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
    /// An answer with `status` and nothing in it yet.
    pub fn new(status: StatusCode) -> Reply {
        Reply {
            status,
            members: Vec::new(),
            headers: Vec::new(),
            raw: None,
            stream: None,
        }
    }

    /// 200 with the given members.
    pub fn ok(members: Vec<u8>) -> Reply {
        Reply {
            members,
            ..Reply::new(StatusCode::OK)
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Reply {
        self.headers.push((name, value));
        self
    }
}

/// A header value from text the server made. Every value a handler makes is ASCII
/// (tags, paths of group IDs), so this failing is a bug: a 500, never a dropped header.
pub fn header_value(text: String) -> Result<HeaderValue, ApiError> {
    HeaderValue::try_from(text).map_err(|e| ApiError::Internal(format!("not a header value: {e}")))
}
