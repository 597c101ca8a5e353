//! The `fleetgroups` binary: parses the command line and runs it (see `cli.rs`).
//!
//! The global allocator is mimalloc: sled clones and frees tree nodes on every write
//! and runs its IO on a pool of up to 128 threads, and glibc's per-thread arenas kept
//! that memory (peak RSS 128 MiB in the POST benchmark) and spent about a fifth of the
//! write path's CPU in malloc/free (perf).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    fleetgroups::cli::main()
}
