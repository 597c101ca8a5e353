//! Build information for `fleetgroups --version`, the start-up log line, the
//! `fleetgroups_build_info` metric and backup headers (src/build_info.rs reads them).
//! With hundreds of gateways, "which build runs here?" is the first support question,
//! so the binary carries its git revision, target triple and compiler version.
//!
//! The revision is `FLEETGROUPS_BUILD_REVISION` when set (builds from a tarball, or a
//! packager who wants a tag), else `git rev-parse --short=12 HEAD` of this crate's own
//! checkout, else `unknown`. No dependencies: this runs before every build.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=FLEETGROUPS_BUILD_REVISION");
    let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let revision = match std::env::var("FLEETGROUPS_BUILD_REVISION") {
        Ok(r) if !r.trim().is_empty() => r.trim().to_string(),
        _ => git_revision(&manifest_dir).unwrap_or_else(|| "unknown".into()),
    };
    let rustc = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().trim_start_matches("rustc ").to_string())
        .unwrap_or_else(|| "unknown".into());
    // Not FLEETGROUPS_*: cargo also puts these into the environment of `cargo test`
    // and `cargo run`, and the binary refuses any FLEETGROUPS_* variable that names no
    // setting, so every test that starts it without clearing the environment failed.
    println!("cargo:rustc-env=FG_BUILD_REVISION={revision}");
    println!("cargo:rustc-env=FG_BUILD_TARGET={}", env("TARGET"));
    println!("cargo:rustc-env=FG_BUILD_RUSTC={rustc}");
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("cargo sets {name} for build scripts"))
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// The short commit of the checkout this crate is the top of, or `None`. A source
/// tree unpacked inside some other repository (a vendored copy, a distribution's
/// packaging repository) must not report that repository's commit as ours.
fn git_revision(dir: &Path) -> Option<String> {
    let top = git(dir, &["rev-parse", "--show-toplevel"])?;
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if !same(Path::new(&top), dir) {
        return None;
    }
    let revision = git(dir, &["rev-parse", "--short=12", "HEAD"])?;
    // Build again when HEAD moves: a commit, a checkout, a reset. These are the files
    // git changes then (a worktree keeps HEAD and its reflog apart from the shared
    // refs). A path that does not exist would make cargo rerun this on every build.
    let mut watch = vec!["HEAD".to_string(), "logs/HEAD".into(), "packed-refs".into()];
    if let Some(r) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
        watch.push(r);
    }
    for name in watch {
        // Relative to `dir` or absolute; `join` keeps an absolute path as it is.
        if let Some(p) = git(dir, &["rev-parse", "--git-path", &name]) {
            let p = dir.join(p);
            if p.exists() {
                println!("cargo:rerun-if-changed={}", p.display());
            }
        }
    }
    Some(revision)
}
