//! Scheduled backups (issue 12 item 4): `backup --dir DIR --keep N` writes a new
//! timestamped gzip file and removes only its own oldest files beyond N, through the
//! running server and offline alike; compressed backups restore to the same state as
//! plain ones (gzip found by its magic bytes, not the name); `restore --check` accepts
//! a good file and refuses a truncated or corrupted one without writing anything; and
//! `/metrics` shows when the last backup succeeded, also after a restart.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::support::{cli_in, CliOutput, TestServer};

fn ok(out: CliOutput) -> CliOutput {
    assert_eq!(
        out.code, 0,
        "stdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    out
}

fn utf8(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Whether `name` is `fleetgroups-YYYYMMDDTHHMMSSZ[_N].jsonl.gz`.
fn is_scheduled_name(name: &str) -> bool {
    let Some(rest) = name
        .strip_prefix("fleetgroups-")
        .and_then(|r| r.strip_suffix(".jsonl.gz"))
    else {
        return false;
    };
    let (stamp, seq) = rest.split_once('_').unwrap_or((rest, "2"));
    // `_N` is a number from 2 up, written without leading zeros.
    if seq
        .parse::<u32>()
        .map_or(true, |n| n < 2 || n.to_string() != seq)
    {
        return false;
    }
    let b = stamp.as_bytes();
    b.len() == 16
        && b[8] == b'T'
        && b[15] == b'Z'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 8 || i == 15 || c.is_ascii_digit())
}

/// The decompressed text of a gzip file.
fn gunzip(path: &Path) -> String {
    let mut text = String::new();
    flate2::read::MultiGzDecoder::new(std::fs::File::open(path).expect("open"))
        .read_to_string(&mut text)
        .expect("a whole gzip stream");
    text
}

/// The lines after the header (whose `created` differs between two backups).
fn body(text: &str) -> Vec<String> {
    text.lines().skip(1).map(str::to_string).collect()
}

/// A server with a few groups, two users and some usage.
fn populated() -> (TestServer, String) {
    let server = TestServer::start();
    let admin = server.admin_token();
    let client = server.client(&admin);
    client.create(&json!({"name": "Trucks", "devices": ["dev-1", "dev-2"]}));
    client.create(&json!({"name": "Vans", "description": "white", "devices": ["dev-1"]}));
    client.create(&json!({"name": "Gone"}));
    assert_eq!(client.delete("/api/groups/grp-3").status, 200);
    server.add_user("ci", &["--role", "read"]);
    (server, admin)
}

#[test]
fn backup_dir_keeps_the_newest_n_of_its_own_files_and_touches_nothing_else() {
    let (mut server, _) = populated();
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("backups");
    let mut written: Vec<PathBuf> = Vec::new();
    let mut run = |server: &TestServer| {
        let out = ok(server.cli(&["backup", "--dir", utf8(&dir), "--keep", "3"]));
        // The new file's path alone on stdout.
        let path = PathBuf::from(out.stdout.trim_end());
        assert_eq!(out.stdout.lines().count(), 1, "{out:?}");
        assert_eq!(path.parent(), Some(dir.as_path()), "{out:?}");
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        assert!(is_scheduled_name(&name), "{name}");
        assert!(out.stderr.contains("2 groups, 2 users"), "{out:?}");
        written.push(path);
        out
    };
    // The first run creates the directory, owner-only.
    run(&server);
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    // Files that are not this command's backups, some of them look-alikes.
    let others = [
        "notes.txt",
        "fleetgroups-manual.jsonl.gz",
        "fleetgroups-20000101T000000Z.jsonl",
        "fleetgroups-20000101T000000Z.jsonl.gz.bak",
        "fleetgroups-2000-01-01T00:00:00Z.jsonl.gz",
        "fleetgroups-20000101T000000Z_01.jsonl.gz",
    ];
    for name in others {
        std::fs::write(dir.join(name), name).expect("write");
    }
    // A directory with a backup's name is not a backup file either.
    std::fs::create_dir(dir.join("fleetgroups-20000101T000001Z.jsonl.gz")).expect("mkdir");

    // Two more through the running server, two with it stopped (N + 2 = 5 runs).
    run(&server);
    run(&server);
    // All three went through the running server: its log, whole once it has exited,
    // has one admin line for each.
    let log = server.stop_for_log();
    assert_eq!(log.matches("command=\"backup\"").count(), 3, "{log}");
    run(&server);
    let last = run(&server);
    assert!(
        last.stderr.contains("removed the old backup"),
        "{}",
        last.stderr
    );

    let kept: Vec<String> = names(&dir)
        .into_iter()
        .filter(|n| is_scheduled_name(n) && dir.join(n).is_file())
        .collect();
    let newest: Vec<String> = written[2..]
        .iter()
        .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
        .collect();
    let mut newest_sorted = newest.clone();
    newest_sorted.sort();
    assert_eq!(kept, newest_sorted, "the 3 newest stay, in name order");
    for old in &written[..2] {
        assert!(!old.exists(), "{} should be gone", old.display());
    }
    for name in others {
        assert_eq!(
            std::fs::read_to_string(dir.join(name)).expect("still there"),
            name
        );
    }
    assert!(dir.join("fleetgroups-20000101T000001Z.jsonl.gz").is_dir());
    // Each kept file is a complete, owner-only gzip backup.
    for name in &kept {
        let path = dir.join(name);
        assert_eq!(mode(&path), 0o600, "{name}");
        ok(server.cli(&["restore", "--check", utf8(&path)]));
    }
    // No temporary file is left behind.
    assert!(
        names(&dir).iter().all(|n| !n.contains(".tmp-")),
        "{:?}",
        names(&dir)
    );

    // --keep needs --dir, and is at least 1 (it never removes the one just written).
    for args in [
        &["backup", "--keep", "3", "x.jsonl"][..],
        &["backup", "--dir", utf8(&dir), "--keep", "0"],
        &["backup"],
    ] {
        let out = server.cli(args);
        assert_eq!(out.code, 2, "{args:?}: {out:?}");
    }
}

#[test]
fn a_compressed_backup_restores_to_the_same_state_as_a_plain_one() {
    let (mut server, admin) = populated();
    let dir = tempfile::tempdir().expect("tempdir");
    // Through the running server: a name ending in .gz is written compressed.
    // (A request counts in the usage counters, which backups hold: read first.)
    let before = server.client(&admin).groups();
    let list_before = ok(server.cli(&["user", "list"])).stdout;
    let gz = dir.path().join("snap.jsonl.gz");
    ok(server.cli(&["backup", utf8(&gz)]));
    assert!(server.stop().success());
    let plain = dir.path().join("snap.jsonl");
    ok(server.cli(&["backup", utf8(&plain)]));
    let scheduled = PathBuf::from(
        ok(server.cli(&["backup", "--dir", utf8(&dir.path().join("sched"))]))
            .stdout
            .trim_end(),
    );

    let raw = std::fs::read(&gz).expect("read");
    assert_eq!(raw[..2], [0x1f, 0x8b], "gzip magic");
    let plain_text = std::fs::read_to_string(&plain).expect("read");
    assert!(plain_text.starts_with("{\"format\":\"fleetgroups-backup\""));
    assert_eq!(body(&gunzip(&gz)), body(&plain_text));
    assert_eq!(body(&gunzip(&scheduled)), body(&plain_text));
    assert!(raw.len() < plain_text.len(), "compressed is smaller");

    // Gzip is found by its magic bytes: a compressed file under a plain name restores.
    let renamed = dir.path().join("renamed.jsonl");
    std::fs::copy(&gz, &renamed).expect("copy");
    let mut states = Vec::new();
    for (i, file) in [&plain, &gz, &renamed, &scheduled].into_iter().enumerate() {
        let target = tempfile::tempdir().expect("tempdir");
        let out = ok(cli_in(
            &target.path().join("data"),
            &["restore", utf8(file)],
            &[],
        ));
        assert!(out.stderr.contains("restored 2 groups, 2 users"), "{out:?}");
        let restored = TestServer::with_dir(target, Default::default());
        let list = ok(restored.cli(&["user", "list"])).stdout;
        // A plain backup of the restored store has the very same records.
        let again = dir.path().join(format!("again-{i}.jsonl"));
        ok(restored.cli(&["backup", utf8(&again)]));
        states.push((list, body(&std::fs::read_to_string(&again).expect("read"))));
        let token = restored.login("admin", &server.admin_key());
        assert_eq!(restored.client(&token).groups(), before, "file {i}");
    }
    for (i, (list, records)) in states.iter().enumerate() {
        assert_eq!(list, &list_before, "file {i}");
        assert_eq!(records, &states[0].1, "file {i}");
    }
}

#[test]
fn restore_check_accepts_a_good_backup_and_refuses_damaged_ones_writing_nothing() {
    let (mut server, _) = populated();
    assert!(server.stop().success());
    let dir = tempfile::tempdir().expect("tempdir");
    let gz = dir.path().join("good.jsonl.gz");
    let plain = dir.path().join("good.jsonl");
    ok(server.cli(&["backup", utf8(&gz)]));
    ok(server.cli(&["backup", utf8(&plain)]));
    let raw = std::fs::read(&gz).expect("read");

    // Runs in a directory of its own, with a data directory that does not exist: a
    // check must create neither it nor anything else.
    let scratch = tempfile::tempdir().expect("tempdir");
    let data = scratch.path().join("data");
    let check = |file: &Path| cli_in(&data, &["restore", "--check", utf8(file)], &[]);

    for (file, encoding) in [(&gz, "gzip"), (&plain, "plain")] {
        let out = check(file);
        assert_eq!(out.code, 0, "{out:?}");
        assert!(
            out.stdout.contains("a valid fleetgroups backup")
                && out.stdout.contains(encoding)
                && out
                    .stdout
                    .contains("2 groups, 2 users, 4 change-feed entries"),
            "{out:?}"
        );
    }

    let write = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).expect("write");
        p
    };
    // Truncated: the gzip trailer is missing, or the stream stops half-way.
    let cut_trailer = write("cut-trailer.gz", &raw[..raw.len() - 8]);
    let cut_half = write("cut-half.gz", &raw[..raw.len() / 2]);
    // One flipped bit in the middle of the deflate data, and one in the CRC-32.
    let mut flipped = raw.clone();
    flipped[raw.len() / 2] ^= 0x10;
    let flipped = write("flipped.gz", &flipped);
    let mut bad_crc = raw.clone();
    bad_crc[raw.len() - 6] ^= 0x01;
    let bad_crc = write("bad-crc.gz", &bad_crc);
    // A plain file without its end line.
    let text = std::fs::read_to_string(&plain).expect("read");
    let lines: Vec<&str> = text.lines().collect();
    let no_end = write(
        "no-end.jsonl",
        (lines[..lines.len() - 1].join("\n") + "\n").as_bytes(),
    );
    for file in [&cut_trailer, &cut_half, &flipped, &bad_crc, &no_end] {
        let out = check(file);
        assert_eq!(out.code, 1, "{}: {out:?}", file.display());
        assert!(
            out.stderr.contains("not a valid backup"),
            "{}: {out:?}",
            file.display()
        );
        assert!(out.stdout.is_empty(), "{out:?}");
    }
    assert!(!data.exists(), "restore --check created the data directory");
    assert!(
        names(scratch.path()).is_empty(),
        "{:?}",
        names(scratch.path())
    );
}

/// The value of one sample in a Prometheus text answer.
fn sample(server: &TestServer, name: &str) -> f64 {
    let text = server.req("GET", "/metrics").send().text();
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"));
    line.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{line}"))
}

#[test]
fn metrics_show_the_last_successful_backup_also_after_a_restart() {
    const METRIC: &str = "fleetgroups_backup_last_success_timestamp_seconds";
    let mut server = TestServer::start();
    let text = server.req("GET", "/metrics").send().text();
    assert!(text.contains(&format!("# TYPE {METRIC} gauge")), "{text}");
    assert_eq!(sample(&server, METRIC), 0.0, "no backup yet");

    let dir = tempfile::tempdir().expect("tempdir");
    let before = crate::support::now_ms() as f64 / 1e3;
    ok(server.cli(&["backup", "--dir", utf8(dir.path()), "--keep", "2"]));
    let after = crate::support::now_ms() as f64 / 1e3;
    let first = sample(&server, METRIC);
    assert!(
        before <= first && first <= after,
        "{before} <= {first} <= {after}"
    );
    // A failed backup changes nothing.
    let out = server.cli(&["backup", "/nonexistent-dir/x.jsonl"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(sample(&server, METRIC), first);

    // Known after a restart (the state file in the data directory).
    assert!(server.stop().success());
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(server.data_dir().join("last-backup")).expect("state file"),
    )
    .expect("json");
    assert_eq!(state["ms"].as_f64().map(|ms| ms / 1e3), Some(first));
    server.restart();
    assert_eq!(sample(&server, METRIC), first);

    // A backup the CLI took with the server stopped counts too (`backup FILE`).
    assert!(server.stop().success());
    let offline = dir.path().join("offline.jsonl");
    let before = crate::support::now_ms() as f64 / 1e3;
    ok(server.cli(&["backup", utf8(&offline)]));
    server.restart();
    let second = sample(&server, METRIC);
    assert!(second >= before && second > first, "{first} {second}");
}
