//! Build information everywhere (issue 12 item 2): `--version`, the start-up log line,
//! `fleetgroups_build_info` in `/metrics` and the backup header all name the same
//! version and git revision; and `build.rs` itself, compiled and run here with the
//! environment cargo gives it, takes the revision from `FLEETGROUPS_BUILD_REVISION`,
//! else from this crate's own git checkout, else says `unknown`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

use crate::support::{Options, TestServer};

const VERSION: &str = env!("CARGO_PKG_VERSION");
const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The revision the binary under test must report, found independently of build.rs:
/// the override the build saw, else the checkout's short commit, else `unknown`.
fn expected_revision() -> String {
    if let Some(r) = option_env!("FLEETGROUPS_BUILD_REVISION").filter(|r| !r.trim().is_empty()) {
        return r.trim().to_string();
    }
    let dir = Path::new(MANIFEST_DIR);
    let top = git(dir, &["rev-parse", "--show-toplevel"]).map(PathBuf::from);
    match top {
        Some(t) if t.canonicalize().ok() == dir.canonicalize().ok() => {
            git(dir, &["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into())
        }
        _ => "unknown".into(),
    }
}

#[test]
fn version_names_the_version_revision_target_and_rustc() {
    let out = crate::support::cli(&["--version"]).run();
    assert_eq!(out.code, 0, "{out:?}");
    let text = out.stdout;
    let line = text.trim_end();
    assert_eq!(text.lines().count(), 1, "one line: {text:?}");
    let prefix = format!(
        "fleetgroups {VERSION} (revision {}, target ",
        expected_revision()
    );
    let rest = line
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{line:?} does not start with {prefix:?}"));
    let (target, rustc) = rest
        .split_once(", rustc ")
        .unwrap_or_else(|| panic!("{line:?}"));
    assert!(
        target.starts_with(std::env::consts::ARCH) && target.contains(std::env::consts::OS),
        "target {target:?}"
    );
    assert!(
        rustc.starts_with("1.") && rustc.ends_with(')'),
        "rustc version {rustc:?}"
    );
    // -V is the same line (scripts use either).
    let short = crate::support::cli(&["-V"]).run();
    assert_eq!(short.stdout, text);
}

#[test]
fn the_start_up_log_line_names_the_build_first() {
    let server = TestServer::start();
    let log = server.log();
    let first = log.lines().next().unwrap_or_default();
    assert!(
        first.contains(&format!(
            "starting fleetgroups {VERSION} (revision {}",
            expected_revision()
        )),
        "{log}"
    );
    // Also as fields, for the JSON log format and journald.
    assert!(first.contains(&format!("version=\"{VERSION}\"")), "{first}");
    assert!(
        first.contains(&format!("revision=\"{}\"", expected_revision())),
        "{first}"
    );
}

#[test]
fn a_failed_start_still_names_the_build() {
    // The store is locked by a first server: the second one fails, and its only log
    // lines must still say which build failed.
    let server = TestServer::start();
    let out = server.second_server();
    assert_ne!(out.code, 0, "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("starting fleetgroups {VERSION}")),
        "{out:?}"
    );
}

#[test]
fn metrics_carry_build_info() {
    let server = TestServer::start();
    let text = server.req("GET", "/metrics").send().text();
    assert!(
        text.contains("# TYPE fleetgroups_build_info gauge\n"),
        "{text}"
    );
    let sample = text
        .lines()
        .find(|l| l.starts_with("fleetgroups_build_info{"))
        .unwrap_or_else(|| panic!("no fleetgroups_build_info in {text}"));
    let want = format!(
        "fleetgroups_build_info{{version=\"{VERSION}\",revision=\"{}\",target=\"",
        expected_revision()
    );
    assert!(sample.starts_with(&want), "{sample}");
    assert!(sample.ends_with("\"} 1"), "{sample}");
}

#[test]
fn backups_name_their_writer_and_older_backups_stay_readable() {
    let server = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("snap.jsonl");
    let out = server.cli(&["backup", file.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
    let text = std::fs::read_to_string(&file).unwrap();
    let (first, rest) = text.split_once('\n').unwrap();
    let mut header: Value = serde_json::from_str(first).unwrap();
    assert_eq!(header["writerVersion"], VERSION, "{header}");
    assert_eq!(
        header["writerRevision"],
        expected_revision().as_str(),
        "{header}"
    );

    // A backup from before these fields existed restores as before.
    let object = header.as_object_mut().unwrap();
    object.remove("writerVersion");
    object.remove("writerRevision");
    let old = dir.path().join("old.jsonl");
    std::fs::write(&old, format!("{header}\n{rest}")).unwrap();
    // TestServer serves `home/data`: restore there.
    let home = tempfile::tempdir().unwrap();
    let out = crate::support::cli_in(
        &home.path().join("data"),
        &["restore", old.to_str().unwrap()],
        &[],
    );
    assert_eq!(out.code, 0, "{out:?}");
    let restored = TestServer::with_dir(home, Options::default());
    assert!(restored.cli(&["user", "list"]).stdout.contains("admin"));
}

#[test]
fn the_build_revision_variable_does_not_stop_a_start() {
    // CI exports it for the build and runs the binary in the same environment; any
    // other unknown FLEETGROUPS_* variable is refused (config.rs).
    let server = TestServer::with(Options::default().env("FLEETGROUPS_BUILD_REVISION", "ci-123"));
    assert_eq!(server.req("GET", "/healthz").send().status, 200);
}

/// build.rs, compiled once as a program of its own.
fn build_script() -> &'static Path {
    static SCRIPT: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, path) = SCRIPT.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("build-script");
        let out = Command::new(rustc())
            .args(["--edition", "2021", "-o"])
            .arg(&exe)
            .arg(Path::new(MANIFEST_DIR).join("build.rs"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "compiling build.rs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (dir, exe)
    });
    path
}

fn rustc() -> String {
    std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into())
}

/// Runs build.rs as cargo would for a crate in `manifest_dir`; returns the
/// `cargo:rustc-env=` values it printed and the `rerun-if-changed` paths.
fn run_build_script(
    manifest_dir: &Path,
    revision: Option<&str>,
) -> (Vec<(String, String)>, Vec<String>) {
    let mut cmd = Command::new(build_script());
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", std::env::var_os("HOME").unwrap_or_default())
        .env("CARGO_MANIFEST_DIR", manifest_dir)
        .env("TARGET", "riscv64gc-unknown-linux-gnu")
        .env("RUSTC", rustc());
    if let Some(r) = revision {
        cmd.env("FLEETGROUPS_BUILD_REVISION", r);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let envs = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("cargo:rustc-env="))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let reruns = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("cargo:rerun-if-changed="))
        .map(str::to_string)
        .collect();
    (envs, reruns)
}

fn value<'a>(envs: &'a [(String, String)], key: &str) -> &'a str {
    envs.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("{key} not set: {envs:?}"))
}

fn git_repo_with_a_commit(dir: &Path) -> String {
    let ok = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    // git is one of the tools scripts/test.sh installs: without it this fails.
    assert!(
        ok(&["init", "-q"]) && ok(&["commit", "-q", "--allow-empty", "-m", "one"]),
        "git init/commit failed: is git installed? (scripts/test.sh installs it)"
    );
    git(dir, &["rev-parse", "--short=12", "HEAD"]).expect("git rev-parse HEAD")
}

#[test]
fn build_script_without_git_says_unknown_and_names_target_and_rustc() {
    let dir = tempfile::tempdir().unwrap();
    let (envs, reruns) = run_build_script(dir.path(), None);
    assert_eq!(value(&envs, "FG_BUILD_REVISION"), "unknown");
    assert_eq!(
        value(&envs, "FG_BUILD_TARGET"),
        "riscv64gc-unknown-linux-gnu"
    );
    let rustc = value(&envs, "FG_BUILD_RUSTC");
    assert!(
        rustc.starts_with("1.") && !rustc.starts_with("rustc"),
        "{rustc}"
    );
    // No git files to watch: a missing path would make cargo rerun it every build.
    assert_eq!(reruns, vec!["build.rs".to_string()]);
    // cargo also exports these to `cargo test`/`cargo run` processes, where a
    // FLEETGROUPS_* name would be an unknown setting that stops every start.
    for (k, _) in &envs {
        assert!(!k.starts_with("FLEETGROUPS_"), "{k}");
    }
}

#[test]
fn build_script_takes_the_override() {
    let dir = tempfile::tempdir().unwrap();
    let (envs, _) = run_build_script(dir.path(), Some("v0.1.0-gateway-7 "));
    assert_eq!(value(&envs, "FG_BUILD_REVISION"), "v0.1.0-gateway-7");
    // An empty override is no override.
    let (envs, _) = run_build_script(dir.path(), Some(""));
    assert_eq!(value(&envs, "FG_BUILD_REVISION"), "unknown");
}

#[test]
fn build_script_reads_its_own_checkout_and_watches_head() {
    let dir = tempfile::tempdir().unwrap();
    let head = git_repo_with_a_commit(dir.path());
    let (envs, reruns) = run_build_script(dir.path(), None);
    assert_eq!(value(&envs, "FG_BUILD_REVISION"), head);
    assert!(reruns.iter().any(|p| p.ends_with("HEAD")), "{reruns:?}");
    assert!(
        reruns
            .iter()
            .all(|p| Path::new(p).exists() || p == "build.rs"),
        "{reruns:?}"
    );
    // The override wins over git.
    let (envs, _) = run_build_script(dir.path(), Some("pinned"));
    assert_eq!(value(&envs, "FG_BUILD_REVISION"), "pinned");
}

#[test]
fn build_script_ignores_a_repository_it_is_only_inside_of() {
    // A source tarball unpacked inside another repository (a distribution's packaging
    // repository, a vendored copy) must not report that repository's commit.
    let dir = tempfile::tempdir().unwrap();
    git_repo_with_a_commit(dir.path());
    let vendored = dir.path().join("vendor/fleetgroups");
    std::fs::create_dir_all(&vendored).unwrap();
    let (envs, _) = run_build_script(&vendored, None);
    assert_eq!(value(&envs, "FG_BUILD_REVISION"), "unknown");
}
