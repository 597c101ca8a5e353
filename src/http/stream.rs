//! The response body type: a whole answer (`Full`), or one that ends in a JSON array
//! streamed as the client takes it (`Stream`). A streamed answer is pulled: hyper asks
//! for the next chunk only when the previous one has been handed to the socket, so a
//! client that reads slowly holds one chunk of memory, not the whole answer (and one
//! that stops reading is cut by the write timeout, `http/conns.rs`). Unpaged lists use
//! it: Plaspy clients never page, and a list of 100,000 groups is tens of megabytes.
//!
//! A whole answer is handed over in `SLICE`-sized pieces of one buffer (no copy), so
//! hyper takes the next piece only when it has written the previous: the answer's
//! share of the answer budget (`app/budget.rs`), which it carries, is given back when the
//! last piece has been taken, not when the first is queued.
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
use crate::app::budget::Share;

/// The piece of a whole answer handed to hyper at a time.
pub const SLICE: usize = 64 * 1024;

/// A response body.
pub enum OutBody {
    /// The whole answer (what is left of it; `None` once sent), with its share of the
    /// answer budget.
    Full(Option<Bytes>, Share),
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
        OutBody::Full(Some(bytes.into()), Share::default())
    }

    /// The length of a whole answer (None for a streamed one).
    pub fn full_len(&self) -> Option<usize> {
        match self {
            OutBody::Full(b, _) => Some(b.as_ref().map_or(0, Bytes::len)),
            OutBody::Stream(_) => None,
        }
    }

    /// Makes a whole answer carry `share` until its last piece is taken.
    pub fn hold(&mut self, share: Share) {
        if let OutBody::Full(_, held) = self {
            *held = share;
        }
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
            OutBody::Full(b, share) => {
                let piece = match b {
                    Some(rest) if rest.len() > SLICE => Some(rest.split_to(SLICE)),
                    _ => b.take(),
                };
                if b.is_none() {
                    // The last piece is taken: the share goes back.
                    *share = Share::default();
                }
                return Poll::Ready(piece.map(|p| Ok(Frame::data(p))));
            }
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
            OutBody::Full(b, _) => b.is_none(),
            OutBody::Stream(s) => s.done && s.head.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            OutBody::Full(Some(b), _) => SizeHint::with_exact(b.len() as u64),
            OutBody::Full(None, _) => SizeHint::with_exact(0),
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
    async fn a_whole_answer_goes_in_pieces_and_gives_its_share_back_at_the_end() {
        let budget = crate::app::budget::Budget::new(1 << 20);
        let answer: Vec<u8> = (0..SLICE * 2 + 10).map(|i| (i % 251) as u8).collect();
        let mut body = OutBody::full(answer.clone());
        body.hold(budget.try_take(answer.len() as u64).unwrap());
        let mut got = Vec::new();
        let mut pieces = 0;
        while let Some(frame) = body.frame().await {
            assert_eq!(
                budget.in_use() > 0,
                !body.is_end_stream(),
                "held until the end"
            );
            got.extend_from_slice(&frame.unwrap().into_data().unwrap());
            pieces += 1;
        }
        assert_eq!((got, pieces, budget.in_use()), (answer, 3, 0));
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
