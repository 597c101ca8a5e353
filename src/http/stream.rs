//! The response body type: a whole answer (`Full`), or one that ends in a JSON array
//! streamed as the client takes it (`Stream`). A streamed answer is pulled: hyper asks
//! for the next chunk only when the previous one has been handed to the socket, so a
//! client that reads slowly holds one chunk of memory, not the whole answer (and one
//! that stops reading is cut by the write timeout, `http/conns.rs`). Unpaged lists use
//! it: Plaspy clients never page, and a list of 100,000 groups is tens of megabytes.
//!
//! Once a streamed answer has begun, its status line is sent; a read error later can
//! only end the connection without the final chunk, which every HTTP client reports as
//! a truncated answer (never a well-formed wrong one). The error goes to the log.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use crate::api::Chunks;

/// A response body.
pub enum OutBody {
    /// The whole answer; `None` once sent.
    Full(Option<Bytes>),
    /// A head already rendered, then the array's elements, then `tail`.
    Stream(Streaming),
}

/// The state of a streamed body.
pub struct Streaming {
    head: Option<Bytes>,
    chunks: Box<dyn Chunks>,
    /// Whether an element has been sent since the head (the next chunk needs a comma).
    /// The head may end in elements already.
    comma: bool,
    tail: &'static [u8],
    done: bool,
}

impl OutBody {
    pub fn full(bytes: impl Into<Bytes>) -> OutBody {
        OutBody::Full(Some(bytes.into()))
    }

    /// `head`, then the elements of `chunks`, then `tail`. `head_has_elements` says
    /// whether `head` ends with array elements (so the first chunk needs a comma).
    pub fn stream(
        head: Vec<u8>,
        head_has_elements: bool,
        chunks: Box<dyn Chunks>,
        tail: &'static [u8],
    ) -> OutBody {
        OutBody::Stream(Streaming {
            head: Some(head.into()),
            chunks,
            comma: head_has_elements,
            tail,
            done: false,
        })
    }
}

impl Body for OutBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let s = match self.get_mut() {
            OutBody::Full(b) => return Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            OutBody::Stream(s) => s,
        };
        if let Some(head) = s.head.take() {
            return Poll::Ready(Some(Ok(Frame::data(head))));
        }
        if s.done {
            return Poll::Ready(None);
        }
        let mut out = Vec::with_capacity(64 * 1024);
        if s.comma {
            out.push(b',');
        }
        match s.chunks.next_chunk(&mut out) {
            Ok(true) => {
                s.comma = true;
                Poll::Ready(Some(Ok(Frame::data(out.into()))))
            }
            Ok(false) => {
                s.done = true;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(s.tail)))))
            }
            Err(e) => {
                s.done = true;
                tracing::error!(
                    detail = e.log_detail().unwrap_or_default(),
                    "a streamed answer failed; closing its connection"
                );
                Poll::Ready(Some(Err(io::Error::other("a streamed answer failed"))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            OutBody::Full(b) => b.is_none(),
            OutBody::Stream(s) => s.done && s.head.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            OutBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            OutBody::Full(None) => SizeHint::with_exact(0),
            OutBody::Stream(_) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ApiError;
    use http_body_util::BodyExt;

    struct Counter(u32);

    impl Chunks for Counter {
        fn next_chunk(&mut self, out: &mut Vec<u8>) -> Result<bool, ApiError> {
            if self.0 == 0 {
                return Ok(false);
            }
            out.extend_from_slice(format!("{},{}", self.0, self.0 * 10).as_bytes());
            self.0 -= 1;
            Ok(true)
        }
    }

    async fn collect(body: OutBody) -> String {
        let bytes = body.collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn streamed_bodies_join_head_chunks_and_tail() {
        let b = OutBody::stream(b"{\"a\":[0".to_vec(), true, Box::new(Counter(2)), b"]}");
        assert_eq!(collect(b).await, "{\"a\":[0,2,20,1,10]}");
        let b = OutBody::stream(b"{\"a\":[".to_vec(), false, Box::new(Counter(1)), b"]}");
        assert_eq!(collect(b).await, "{\"a\":[1,10]}");
        let b = OutBody::stream(b"{\"a\":[".to_vec(), false, Box::new(Counter(0)), b"]}");
        assert_eq!(collect(b).await, "{\"a\":[]}");
    }

    struct Failing;

    impl Chunks for Failing {
        fn next_chunk(&mut self, _out: &mut Vec<u8>) -> Result<bool, ApiError> {
            Err(ApiError::Unavailable("disk gone".into()))
        }
    }

    #[tokio::test]
    async fn a_failing_stream_ends_in_an_error_not_a_well_formed_answer() {
        let b = OutBody::stream(b"{\"a\":[".to_vec(), false, Box::new(Failing), b"]}");
        assert!(b.collect().await.is_err());
    }
}
