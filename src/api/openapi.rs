//! `GET /api/openapi.json`: the OpenAPI 3.1 document describing the API.

use crate::http::response::Reply;

/// The document, built once.
pub fn reply() -> Reply {
    Reply {
        status: 200,
        raw: Some(("application/json; charset=utf-8", document().into_bytes())),
        ..Reply::default()
    }
}

fn document() -> String {
    include_str!("openapi.json").to_string()
}
