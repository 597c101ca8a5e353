//! The integration tests: one test binary, one module per area. Every test starts the
//! real `fleetgroups` binary (see `support.rs`) and talks HTTP to it.

// Tests may unwrap (house rules); clippy's `allow-unwrap-in-tests` covers `#[test]`
// functions only, not the helpers beside them.
#![allow(clippy::unwrap_used)]

mod support;

mod abuse;
mod admin;
mod auth;
mod backup;
mod backup_schedule;
mod badinput;
mod bounds;
mod build_info;
mod cli;
mod cli_safety;
mod clock;
mod config;
mod crash;
mod disk_faults;
mod docs;
mod durability;
mod errors;
mod exhaustion;
mod ext_changes;
mod ext_conditional;
mod ext_idempotency;
mod ext_membership;
mod ext_merge_patch;
mod ext_paging;
mod failed_logins;
mod fleet;
mod groups;
mod healthcheck;
mod journald;
mod log_control;
mod log_sink;
mod logs;
mod metrics;
mod names;
mod notify;
mod office;
mod openapi;
mod operator_messages;
mod ops_endpoints;
mod pg;
mod readme;
mod replication;
mod security;
mod shutdown;
mod signals;
mod smoke;
mod start;
mod storage;
mod tls;
mod unit_file;
mod usage;
mod validation;
mod wal;
