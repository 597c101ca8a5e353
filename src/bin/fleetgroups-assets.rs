//! `fleetgroups-assets DIR`: writes the shell completions and man pages of the
//! `fleetgroups` command line into DIR (see `src/ops/assets.rs` for the layout and for why
//! this is a program of its own). A packaging tool, not part of the package:
//! `scripts/build-deb.sh` runs it (`cargo run --release --bin fleetgroups-assets`).
//! `fleetgroups-assets --config-table` prints the key table of docs/configuration.md.

use std::process::ExitCode;

use clap::CommandFactory;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), None) = (args.next(), args.next()) else {
        eprintln!("usage: fleetgroups-assets DIR | --config-table");
        return ExitCode::from(2);
    };
    if dir == "--config-table" {
        return match fleetgroups::ops::assets::config_table_markdown() {
            Ok(table) => {
                print!("{table}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("fleetgroups-assets: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match fleetgroups::ops::assets::generate(fleetgroups::cli::Cli::command(), dir.as_ref()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleetgroups-assets: {e}");
            ExitCode::FAILURE
        }
    }
}
