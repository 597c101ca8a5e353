//! The operator's tools around a server: the admin socket that runs `user …` and
//! `backup` in a running server (or in the CLI when none runs), the backup file,
//! `fleetgroups healthcheck`, and the completions and man pages the package ships.

pub(crate) mod admin;
pub mod assets;
pub(crate) mod backup;
pub(crate) mod healthcheck;
