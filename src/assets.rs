//! The shell completions (bash, zsh, fish; clap_complete) and man pages (clap_mangen)
//! that the Debian package installs, generated from the very `Cli` the binary parses,
//! so they cannot drift from it. `fleetgroups-assets DIR` (src/bin/) runs this for
//! `scripts/build-deb.sh`.
//!
//! Why not `build.rs`: the clap definitions use the library's types and checks
//! (`Role`, the name rules) and change with every new flag, so a build script would
//! need a second copy of them or a `cli.rs` cut loose from the crate. Why not a hidden
//! `fleetgroups generate-assets` subcommand: clap_complete offers hidden subcommands
//! in its completions, so every operator's shell would suggest it. A second binary
//! keeps the product's command line exactly what its pages describe, and, being a
//! host program run by `cargo run`, also works when the package is cross-compiled.
//!
//! Layout under DIR, mirroring where the package puts each file:
//! `completions/fleetgroups.bash`, `completions/_fleetgroups` (zsh),
//! `completions/fleetgroups.fish`, `man/fleetgroups.1` and one
//! `man/fleetgroups-<command>.1` per visible subcommand.

use std::path::Path;

use clap_complete::Shell;

/// Writes every asset into `dir` (created if missing).
pub fn generate(cmd: clap::Command, dir: &Path) -> Result<(), String> {
    let completions = dir.join("completions");
    let man = dir.join("man");
    for d in [&completions, &man] {
        std::fs::create_dir_all(d).map_err(|e| io(d, e))?;
    }
    // The pages are built from a copy without clap's `help` subcommands: every page
    // lists its commands and options already, and a "SEE ALSO fleetgroups-help(1)"
    // would name a page that is not there. The completions keep `help`: it works.
    let mut man_cmd = without_help(cmd.clone());
    let mut cmd = cmd;
    for (shell, file) in [
        (Shell::Bash, "fleetgroups.bash"),
        (Shell::Zsh, "_fleetgroups"),
        (Shell::Fish, "fleetgroups.fish"),
    ] {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut cmd, "fleetgroups", &mut out);
        publish(&completions.join(file), &out)?;
    }
    // `build` names every subcommand for its page: `fleetgroups-user-add`, as git
    // and cargo name theirs.
    man_cmd.build();
    write_man(&man_cmd, &man)
}

fn io(what: &Path, e: std::io::Error) -> String {
    format!("{}: {e}", what.display())
}

/// Completions and man pages are public files of the package, not data: 0644
/// whatever the process umask (cli.rs sets 0077 for the data directory's sake).
fn publish(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, bytes).map_err(|e| io(path, e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).map_err(|e| io(path, e))
}

fn without_help(cmd: clap::Command) -> clap::Command {
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    let mut cmd = cmd.disable_help_subcommand(true);
    for name in names {
        cmd = cmd.mut_subcommand(name, without_help);
    }
    cmd
}

/// The page of `cmd`, then one page per visible subcommand.
fn write_man(cmd: &clap::Command, dir: &Path) -> Result<(), String> {
    // Subcommands carry no version of their own: name the build on every page.
    let page = clap_mangen::Man::new(cmd.clone())
        .source(format!("fleetgroups {}", crate::build_info::VERSION));
    let mut out = Vec::new();
    page.render(&mut out)
        .map_err(|e| format!("rendering the man page of {}: {e}", cmd.get_name()))?;
    publish(&dir.join(page.get_filename()), &out)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_man(sub, dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_completions_and_a_page_per_visible_command() {
        let dir = tempfile::tempdir().unwrap();
        let cmd = <crate::cli::Cli as clap::CommandFactory>::command();
        generate(cmd, dir.path()).unwrap();
        let read = |p: &str| std::fs::read_to_string(dir.path().join(p)).unwrap();
        for p in [
            "completions/fleetgroups.bash",
            "completions/_fleetgroups",
            "completions/fleetgroups.fish",
        ] {
            let text = read(p);
            // Every command is completed.
            for c in [
                "serve",
                "user",
                "backup",
                "restore",
                "check-config",
                "healthcheck",
            ] {
                assert!(text.contains(c), "{p} lacks {c}");
            }
        }
        let main = read("man/fleetgroups.1");
        assert!(
            main.starts_with(".ie \\n(.g .ds Aq"),
            "not roff: {main:.80}"
        );
        assert!(main.contains("healthcheck"), "{main}");
        assert!(read("man/fleetgroups-user-add.1").contains("daily"));
        assert!(!dir.path().join("man/fleetgroups-help.1").exists());
    }
}
