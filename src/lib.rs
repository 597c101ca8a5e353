//! fleetgroups: a self-hosted, single-binary server for the Plaspy Groups API, with
//! its data in an embedded sled store. `main.rs` only calls [`cli::main`]; everything
//! else is this library. See ARCHITECTURE.md for the map and the invariants.

pub mod admin;
pub mod api;
pub mod app;
pub mod assets;
pub mod auth;
pub mod backup;
pub mod build_info;
pub mod cidr;
pub mod cli;
pub mod config;
pub mod error;
pub mod hashing;
pub mod healthcheck;
pub mod http;
pub mod json;
pub mod log;
pub mod login_limiter;
pub mod metrics;
pub mod model;
pub mod names;
pub mod office;
pub mod patch;
pub mod percent;
pub mod perms;
pub mod pg_url;
#[cfg(test)]
mod proptests;
pub mod reload;
pub mod replication;
pub mod server;
pub mod signals;
pub mod store;
pub mod sync;
pub mod systemd;
pub mod time;
pub mod tls;
pub mod usage;
pub mod users;
