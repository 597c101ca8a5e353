//! The integration tests: one test binary, one module per area. Every test starts the
//! real `fleetgroups` binary (see `support.rs`) and talks HTTP to it.

mod support;

mod auth;
mod cli;
mod durability;
mod errors;
mod groups;
mod smoke;
mod start;
mod usage;
mod validation;
