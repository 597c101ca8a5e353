//! The property tests (proptest) of the crate, in one place: each file states what must
//! hold for *any* input to one piece of the request path, where the unit tests beside
//! each module check chosen examples. A property test lives here unless it needs a
//! module's private items, in which case it stays in that module's own test block
//! (`store/delta.rs` is one). Test-only; compiled under `cfg(test)`. Failing cases
//! proptest finds are kept in `proptest-regressions/proptests/<file>.txt` (proptest
//! names them after the source file) and re-run first.

// Request headers: the `Content-Type` and `Content-Length` checks of `http/body.rs`.
mod body;
// The pure request-path logic: validation, JSON Patch and Merge Patch, the router's
// decoding and query parsing.
mod request;
