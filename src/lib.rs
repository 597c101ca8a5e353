//! fleetgroups: a self-hosted, single-binary server for the Plaspy Groups API, with
//! its data in an embedded sled store. `main.rs` only calls [`cli::main`]; everything
//! else is this library. See ARCHITECTURE.md for the map and the invariants.
//!
//! The modules are private: what is `pub` here is what the binaries (`src/main.rs`,
//! `src/bin/`), the integration tests, `fuzz/` and `bench/` use, and nothing else, so
//! the compiler names code that nothing calls.

// The entry and the layers under it, top down: each imports only the ones below it.
mod api;
mod app;
mod auth;
pub mod cli;
pub mod http;
mod metrics;
pub mod ops;
pub mod replication;
mod server;
// Dead in the store once it is private, left to the store's rewrite (issue 22):
// `Delta::is_empty`, `Space::remove`, `Batch::len`, `Batch::is_empty`.
#[allow(dead_code)]
mod store;

// The leaves: read by every layer, importing no layer.
mod build_info;
mod cidr;
pub mod config;
mod error;
mod json;
mod key_hash;
mod log;
pub mod model;
mod names;
pub mod patch;
mod percent;
mod perms;
mod pg_url;
mod sync;
mod time;
mod tls_client;

#[cfg(test)]
mod proptests;
