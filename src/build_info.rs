//! Which build this is (issue 12 item 2): the crate version, the git revision, the
//! target triple and the compiler, set by `build.rs`. One place says it the same way
//! for `--version`, the start-up log line, `fleetgroups_build_info` and backup headers,
//! so an operator can match what a gateway runs with what a backup was written by.

/// The crate version (`Cargo.toml`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Short git commit, `FLEETGROUPS_BUILD_REVISION` when the build set it, or `unknown`.
pub const REVISION: &str = env!("FG_BUILD_REVISION");
/// The target triple the binary was built for.
pub const TARGET: &str = env!("FG_BUILD_TARGET");
/// `rustc --version` without the leading `rustc `.
#[cfg(test)]
const RUSTC: &str = env!("FG_BUILD_RUSTC");

/// The build variable `build.rs` reads. The binary sees it too when a build and a run
/// share one environment (CI exports it, then runs the tests), and every other
/// `FLEETGROUPS_*` variable is a setting, so `config.rs` skips this one by name.
pub const REVISION_ENV: &str = "FLEETGROUPS_BUILD_REVISION";

/// What `--version` prints after the program name: one line, so that
/// `ssh gw fleetgroups --version` across a fleet sorts and greps.
pub const LONG: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (revision ",
    env!("FG_BUILD_REVISION"),
    ", target ",
    env!("FG_BUILD_TARGET"),
    ", rustc ",
    env!("FG_BUILD_RUSTC"),
    ")"
);

/// The `fleetgroups_build_info` gauge (always 1; the labels are the information), in
/// the Prometheus text format, with its HELP and TYPE lines.
pub fn prometheus() -> String {
    format!(
        "# HELP fleetgroups_build_info The running build: version, git revision and target triple.\n\
         # TYPE fleetgroups_build_info gauge\n\
         fleetgroups_build_info{{version=\"{}\",revision=\"{}\",target=\"{}\"}} 1\n",
        label(VERSION),
        label(REVISION),
        label(TARGET)
    )
}

/// A label value escaped as the text format requires: the revision comes from an
/// environment variable, so it may hold anything.
fn label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_version_names_every_part() {
        assert!(LONG.starts_with(VERSION), "{LONG}");
        for part in [REVISION, TARGET, RUSTC] {
            assert!(!part.is_empty());
            assert!(LONG.contains(part), "{part} missing in {LONG}");
        }
        assert!(!LONG.contains('\n'));
    }

    #[test]
    fn metric_is_one_sample_with_escaped_labels() {
        let text = prometheus();
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(samples.len(), 1, "{text}");
        assert!(samples[0].starts_with("fleetgroups_build_info{version=\""));
        assert!(samples[0].ends_with("} 1"));
        assert_eq!(label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(label("x\ny"), "x\\ny");
    }
}
