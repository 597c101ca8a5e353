//! The README's quick start, run as written: every `sh` block between "## Quick start"
//! and the next section goes to bash with curl, against a real server, with only the
//! address changed (the server listens on a free port, not 8080) and `cargo run
//! --release` left out (the server under test is that command). So the README cannot
//! drift from what works; `smoke.rs` checks the same path field by field.

use std::process::Command;
use std::time::Duration;

use crate::support::{run_with_deadline, TestServer};

/// The `sh` blocks of the README's quick start, in order.
fn quick_start_blocks() -> Vec<String> {
    let readme = include_str!("../../README.md");
    let start = readme
        .find("\n## Quick start")
        .expect("README has a Quick start");
    let rest = &readme[start + 1..];
    let section = &rest[..rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3)];
    section
        .split("```sh\n")
        .skip(1)
        .filter_map(|b| b.split_once("\n```").map(|(code, _)| code.to_string()))
        .collect()
}

#[test]
fn the_quick_start_runs_as_written() {
    let blocks = quick_start_blocks();
    assert_eq!(
        blocks.first().map(String::as_str),
        Some("cargo run --release"),
        "the first command starts the server on its defaults"
    );
    let server = TestServer::start();
    let script = blocks[1..]
        .join("\n")
        .replace("http://127.0.0.1:8080", &format!("http://{}", server.addr));
    assert!(
        script.contains("curl") && !script.contains("8080"),
        "{script}"
    );
    let mut bash = Command::new("bash");
    bash.args(["-euo", "pipefail", "-c", &script])
        .current_dir(server.dir.path());
    let out = run_with_deadline(bash, Duration::from_secs(60));
    assert_eq!(
        out.code, 0,
        "the quick start failed (is curl installed?): {out:?}"
    );
    // The create, the list, the PUT, the PATCH and the DELETE each answered success.
    assert_eq!(
        out.stdout.matches("\"success\":true").count(),
        5,
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("\"id\":\"grp-1\",\"name\":\"New Group\""),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("\"devices\":[\"dev-1\",\"dev-2\"]"),
        "{}",
        out.stdout
    );
}
