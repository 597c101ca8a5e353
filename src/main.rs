//! The `fleetgroups` binary: parses the command line and runs it (see `cli.rs`).

fn main() -> std::process::ExitCode {
    fleetgroups::cli::main()
}
