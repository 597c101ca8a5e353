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
//! `completions/fleetgroups.fish`, `man/fleetgroups.1`, one
//! `man/fleetgroups-<command>.1` per visible subcommand, and `man/fleetgroups.toml.5`.
//!
//! Every command page gets FILES, ENVIRONMENT, EXIT STATUS and EXAMPLES
//! (`assets/extra.rs`). `fleetgroups.toml(5)` and the key table of docs/configuration.md are
//! made by [`config_keys`] from the declarations `check-config` prints (the defaults of
//! `Config`, via `config::known_keys`) and the comment above each key in the
//! repository's `config.toml` (held equal to those defaults by a config test); a test
//! here fails when the docs table differs or a key lacks its comment.

use std::path::Path;

use clap_complete::Shell;

mod extra;

/// Writes every asset into `dir` (created if missing).
pub fn generate(cmd: clap::Command, dir: &Path) -> Result<(), AssetError> {
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
    write_man(&man_cmd, &man)?;
    publish(&man.join("fleetgroups.toml.5"), config_page()?.as_bytes())
}

/// Why the assets could not be made.
#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    /// Writing a file (or its directory) failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// clap_mangen could not render a command's page.
    #[error("rendering the man page of {command}: {source}")]
    Render {
        command: String,
        #[source]
        source: std::io::Error,
    },
    /// config.toml and the configuration's keys disagree (a key without its comment,
    /// or one the file lacks): the documentation would be wrong.
    #[error("{0}")]
    Undocumented(String),
}

fn io(what: &Path, e: std::io::Error) -> AssetError {
    AssetError::Io {
        path: what.to_path_buf(),
        source: e,
    }
}

/// Completions and man pages are public files of the package, not data: 0644
/// whatever the process umask (cli.rs sets 0077 for the data directory's sake).
fn publish(path: &Path, bytes: &[u8]) -> Result<(), AssetError> {
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
fn write_man(cmd: &clap::Command, dir: &Path) -> Result<(), AssetError> {
    // Subcommands carry no version of their own: name the build on every page.
    let page = clap_mangen::Man::new(cmd.clone())
        .source(format!("fleetgroups {}", crate::build_info::VERSION));
    let mut out = Vec::new();
    page.render(&mut out).map_err(|source| AssetError::Render {
        command: cmd.get_name().to_string(),
        source,
    })?;
    let file = page.get_filename();
    out.extend_from_slice(extra::sections(file.trim_end_matches(".1")).as_bytes());
    publish(&dir.join(file), &out)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_man(sub, dir)?;
    }
    Ok(())
}

/// One configuration key as the manual and the docs describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyDoc {
    /// `listen`, `limits.max_body_bytes`.
    pub key: String,
    /// The built-in default as TOML writes it.
    pub default: String,
    /// `FLEETGROUPS_LISTEN`.
    pub env: String,
    /// The comment above the key in `config.toml`, on one line.
    pub meaning: String,
}

/// Every configuration key in the order of `config.toml`: key and default from the
/// declarations (`config::known_keys`, what `check-config` prints), meaning from the
/// file's comment (a key without its own comment shares the one above it, as `tls.key`
/// shares `tls.cert`'s). Err when the file and the declarations disagree on the keys.
// Long because each key is checked against config.toml where it is read, naming it.
pub(crate) fn config_keys() -> Result<Vec<KeyDoc>, AssetError> {
    let declared = crate::config::known_keys();
    let mut out = Vec::new();
    let (mut section, mut comment, mut shared) = (String::new(), Vec::new(), String::new());
    // The file's opening comment (up to the first blank line) is about the file.
    let body = include_str!("../../config.toml")
        .split_once("\n\n")
        .map_or("", |(_, rest)| rest);
    for line in body.lines().map(str::trim) {
        if line.is_empty() {
            comment.clear();
            shared.clear();
        } else if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            comment.clear();
            shared.clear();
        } else if let Some(text) = line.strip_prefix('#') {
            comment.push(text.trim().to_string());
        } else if let Some((key, _)) = line.split_once('=') {
            let key = key.trim();
            if !comment.is_empty() {
                shared = comment.join(" ");
                comment.clear();
            }
            let full = if section.is_empty() {
                key.to_string()
            } else {
                format!("{section}.{key}")
            };
            let (_, _, default) = declared
                .iter()
                .find(|(s, k, _)| *s == section && k == key)
                .ok_or_else(|| {
                    AssetError::Undocumented(format!(
                        "config.toml: {full} is not a configuration key"
                    ))
                })?;
            if shared.is_empty() {
                return Err(AssetError::Undocumented(format!(
                    "config.toml: {full} has no comment to document it"
                )));
            }
            out.push(KeyDoc {
                env: crate::config::env_name(&section, key),
                default: default.to_string(),
                key: full,
                meaning: shared.clone(),
            });
        }
    }
    if let Some((s, k, _)) = declared.iter().find(|(s, k, _)| {
        let full = if s.is_empty() {
            k.clone()
        } else {
            format!("{s}.{k}")
        };
        !out.iter().any(|d| d.key == full)
    }) {
        return Err(AssetError::Undocumented(format!(
            "config.toml lacks the key {s}.{k}"
        )));
    }
    Ok(out)
}

/// The table of docs/configuration.md (between its generated-table markers).
pub fn config_table_markdown() -> Result<String, AssetError> {
    let mut t =
        String::from("| key | default | environment variable | meaning |\n|---|---|---|---|\n");
    for k in config_keys()? {
        t.push_str(&format!(
            "| `{}` | `{}` | `{}` | {} |\n",
            k.key, k.default, k.env, k.meaning
        ));
    }
    Ok(t)
}

/// `fleetgroups.toml(5)`: the file, where it is read from, and every key.
fn config_page() -> Result<String, AssetError> {
    use roff::{bold, italic, roman, Roff};
    let mut r = Roff::new();
    r.control(
        "TH",
        [
            "FLEETGROUPS.TOML",
            "5",
            "",
            &format!("fleetgroups {}", crate::build_info::VERSION),
            "File Formats",
        ],
    );
    r.control("SH", ["NAME"]);
    r.text([roman(
        "fleetgroups.toml - configuration file of fleetgroups(1)",
    )]);
    r.control("SH", ["SYNOPSIS"]);
    r.text([bold("/etc/fleetgroups/config.toml")]);
    r.control("SH", ["DESCRIPTION"]);
    r.text([roman(
        "A TOML file. Every key is optional: a missing key takes its built-in default, and a file listing every key with its default (the package's conffile as installed, less the two paths it sets) runs exactly as no file. Where a setting comes from, the first found wins: a command-line flag (--listen, --data-dir), the key's environment variable, the file, the default. The file is --config FILE, else FLEETGROUPS_CONFIG, else ./config.toml when it exists, else /etc/fleetgroups/config.toml when it exists (FLEETGROUPS_SYSTEM_CONFIG replaces that path; empty: none).",
    )]);
    r.control("PP", []);
    r.text([roman(
        "An unknown key, a wrong type or an impossible value stops every command with a message naming the key (exit status 2); a key placed in the wrong section is named with the section it belongs to. Top-level keys must come before the first [section] header. A list is comma-separated in its environment variable. SIGHUP (systemctl reload fleetgroups) re-reads the file and applies tls.cert, tls.key and log.level; other changes wait for a restart. fleetgroups check-config prints the effective values, secrets redacted.",
    )]);
    r.control("SH", ["KEYS"]);
    for k in config_keys()? {
        r.control("TP", []);
        r.text([bold(k.key.clone()), roman(" = "), roman(k.default.clone())]);
        r.text([roman(k.meaning.clone())]);
        r.text([roman("Environment: "), italic(k.env.clone()), roman(".")]);
    }
    r.control("SH", ["EXAMPLES"]);
    r.text([roman(
        "Listen on every address with TLS, and keep the change feed a week:",
    )]);
    r.control("PP", []);
    r.control("nf", []);
    for line in [
        "listen = \"0.0.0.0:8443\"",
        "data_dir = \"/var/lib/fleetgroups\"",
        "",
        "[tls]",
        "cert = \"/etc/fleetgroups/tls.crt\"",
        "key = \"/etc/fleetgroups/tls.key\"",
        "",
        "[retention]",
        "changes_days = 7",
    ] {
        r.text([roman(line)]);
    }
    r.control("fi", []);
    r.control("SH", ["SEE ALSO"]);
    r.text([roman(
        "fleetgroups(1), fleetgroups-check-config(1); docs/configuration.md in the source, which holds the same table.",
    )]);
    Ok(r.render())
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
        // Every command's page has the sections an operator looks for.
        for entry in std::fs::read_dir(dir.path().join("man")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "1") {
                let page = std::fs::read_to_string(&path).unwrap();
                for section in ["FILES", "ENVIRONMENT", "EXIT STATUS", "EXAMPLES"] {
                    assert!(
                        page.contains(&format!(".SH \"{section}\""))
                            || page.contains(&format!(".SH {section}\n")),
                        "{} lacks {section}",
                        path.display()
                    );
                }
            }
        }
        // restore's FILE says what it is.
        assert!(read("man/fleetgroups-restore.1").contains("written by"));
        let toml5 = read("man/fleetgroups.toml.5");
        for k in config_keys().unwrap() {
            assert!(
                toml5.contains(&k.env),
                "fleetgroups.toml(5) lacks {}",
                k.key
            );
        }
    }

    #[test]
    fn every_key_is_documented_and_the_docs_table_is_the_generated_one() {
        let keys = config_keys().unwrap();
        assert_eq!(keys.len(), crate::config::known_keys().len());
        let listen = &keys[0];
        assert_eq!(
            (
                listen.key.as_str(),
                listen.default.as_str(),
                listen.env.as_str()
            ),
            ("listen", "\"127.0.0.1:8080\"", "FLEETGROUPS_LISTEN")
        );
        let tls_key = keys.iter().find(|k| k.key == "tls.key").unwrap();
        assert!(tls_key.meaning.contains("private key"), "{tls_key:?}");
        let table = config_table_markdown().unwrap();
        let doc = include_str!("../../docs/configuration.md");
        assert!(
            doc.contains(&table),
            "docs/configuration.md's key table is not the generated one; replace it with:\n{table}"
        );
    }
}
