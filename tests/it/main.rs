//! The integration tests: one test binary, one module per area. Every test starts the
//! real `fleetgroups` binary (see `support.rs`) and talks HTTP to it.

mod support;

mod smoke;
