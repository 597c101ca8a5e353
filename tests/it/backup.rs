//! `backup` and `restore`: a round trip keeps every group, user, counter, change-feed
//! entry, idempotency record and the ID sequences; a backup works with the server
//! running (through the admin socket) and stopped, and both give the same records;
//! restore refuses bad input and a non-empty directory and leaves nothing behind, and
//! `restore --check` refuses the same input for the same reasons.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::{json, Value};

use crate::support::{cli_in, CliOutput, Options, TestServer};

fn ok(out: CliOutput) -> CliOutput {
    assert_eq!(
        out.code, 0,
        "stdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    out
}

fn create(server: &TestServer, token: &str, body: Value) -> Value {
    server.client(token).create(&body)
}

/// What a client can see of an account: groups, the change feed, a device lookup.
fn visible(server: &TestServer, token: &str) -> Value {
    let get = |path: &str| {
        let r = server.req("GET", path).bearer(token).send();
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        r.json()
    };
    let groups = get("/api/groups")["groups"].clone();
    let etags: Vec<Value> = groups
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| {
            let id = g["id"].as_str().expect("id");
            let r = server
                .req("GET", &format!("/api/groups/{id}"))
                .bearer(token)
                .send();
            json!(r.header("etag"))
        })
        .collect();
    json!({
        "groups": groups,
        "etags": etags,
        "changes": get("/api/changes?limit=1000")["changes"],
        "dev-1": get("/api/devices/dev-1/groups")["groups"],
    })
}

/// The body lines of a backup (everything after the header, whose `created` varies).
fn body(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).expect("read backup");
    text.lines().skip(1).map(str::to_string).collect()
}

#[test]
fn a_round_trip_keeps_everything_and_never_reuses_an_id() {
    let mut a = TestServer::start();
    let admin = a.admin_token();
    create(
        &a,
        &admin,
        json!({"name": "One", "devices": ["dev-1", "dev-2"]}),
    );
    let r = a
        .req("POST", "/api/groups")
        .bearer(&admin)
        .header("Idempotency-Key", "k-2")
        .json(&json!({"name": "Two", "description": "second", "devices": ["dev-1"]}))
        .send();
    assert_eq!(r.status, 201);
    create(&a, &admin, json!({"name": "Three"}));
    let r = a
        .req("PATCH", "/api/groups/grp-2")
        .bearer(&admin)
        .body_as(
            "application/merge-patch+json",
            br#"{"description":"patched"}"#,
        )
        .send();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        a.req("DELETE", "/api/groups/grp-3")
            .bearer(&admin)
            .send()
            .status,
        200
    );

    let ci_key = ok(a.cli(&["user", "add", "ci", "--daily-limit", "50"]))
        .stdout
        .trim()
        .to_string();
    let ci = a.login("ci", &ci_key);
    for _ in 0..3 {
        assert_eq!(a.req("GET", "/api/groups").bearer(&ci).send().status, 200);
    }
    let before = visible(&a, &admin);
    let list_before = ok(a.cli(&["user", "list"])).stdout;

    // Backup with the server running: the server writes the file.
    let out_dir = tempfile::tempdir().expect("tempdir");
    let file = out_dir.path().join("snap.jsonl");
    let out = ok(a.cli(&["backup", file.to_str().expect("utf-8")]));
    assert!(out.stderr.contains("2 groups, 2 users"), "{}", out.stderr);
    // The running server took it (it holds the store's lock; no other process could):
    // its own gauge of the last successful backup moved off 0.
    let last = a.metric("fleetgroups_backup_last_success_timestamp_seconds");
    assert!(last.is_some_and(|t| t > 0.0), "{last:?}");
    let mode = std::fs::metadata(&file)
        .expect("backup file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let text = std::fs::read_to_string(&file).expect("read");
    let header: Value = serde_json::from_str(text.lines().next().expect("header")).expect("json");
    assert_eq!(header["format"], "fleetgroups-backup");
    assert_eq!(header["version"], 1);
    assert_eq!(header["storeFormat"], 4);
    assert!(header["created"].as_str().expect("created").ends_with('Z'));
    assert!(
        !text.contains(&ci_key) && !text.contains(&ci),
        "no key or token in a backup"
    );
    assert_eq!(
        text.lines().last(),
        Some(
            format!(
                "{{\"type\":\"end\",\"records\":{}}}",
                text.lines().count() - 2
            )
            .as_str()
        )
    );

    // The same snapshot with the server stopped: the CLI opens the store itself.
    a.stop();
    let offline = out_dir.path().join("offline.jsonl");
    ok(a.cli(&["backup", offline.to_str().expect("utf-8")]));
    assert_eq!(
        body(&file),
        body(&offline),
        "running and stopped backups differ"
    );

    let b_dir = tempfile::tempdir().expect("tempdir");
    let b_data = b_dir.path().join("data");
    let out = ok(cli_in(
        &b_data,
        &["restore", file.to_str().expect("utf-8")],
        &[],
    ));
    assert!(
        out.stderr.contains("restored 2 groups, 2 users"),
        "{}",
        out.stderr
    );
    assert!(!b_data.join("initial-api-key").exists());
    let b = TestServer::with_dir(b_dir, Options::default());
    assert!(
        !b.log().contains("first start"),
        "users came back: no bootstrap"
    );

    // API keys keep working (their hashes came along); tokens do not (not backed up).
    assert_eq!(
        b.req("GET", "/api/groups").bearer(&admin).send().status,
        401
    );
    let admin_b = b.login("admin", &a.admin_key());
    let ci_b = b.login("ci", &ci_key);
    // Counters, limits, roles and key dates came along (logins are not counted).
    let list_after = ok(b.cli(&["user", "list"])).stdout;
    assert_eq!(list_after, list_before);
    assert_eq!(visible(&b, &admin_b), before);
    assert_eq!(
        b.req("GET", "/api/groups").bearer(&ci_b).send().json()["apiUsage"],
        4
    );

    // The name index was rebuilt; the ID sequence continues after the deleted grp-3.
    let r = b
        .req("POST", "/api/groups")
        .bearer(&admin_b)
        .json(&json!({"name": "one"}))
        .send();
    r.expect_error(409, "name_conflict");
    let four = create(&b, &admin_b, json!({"name": "Four"}));
    assert_eq!(four["id"], "grp-4");
    let changes = b
        .req("GET", "/api/changes?limit=1000")
        .bearer(&admin_b)
        .send()
        .json();
    let seqs: Vec<u64> = changes["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| c["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(
        seqs,
        vec![1, 2, 3, 4, 5, 6],
        "the change sequence continues too"
    );
    // The idempotency record came along: a replay answers with the first grp-2.
    let r = b
        .req("POST", "/api/groups")
        .bearer(&admin_b)
        .header("Idempotency-Key", "k-2")
        .json(&json!({"name": "Two", "description": "second", "devices": ["dev-1"]}))
        .send();
    assert_eq!(r.json()["id"], "grp-2", "{}", r.text());
}

#[test]
fn restore_refuses_bad_input_and_leaves_nothing_behind() {
    let mut a = TestServer::start();
    let admin = a.admin_token();
    create(&a, &admin, json!({"name": "One"}));
    create(&a, &admin, json!({"name": "Two"}));
    a.stop();
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.jsonl");
    ok(a.cli(&["backup", good.to_str().expect("utf-8")]));
    let lines: Vec<String> = std::fs::read_to_string(&good)
        .expect("read")
        .lines()
        .map(str::to_string)
        .collect();
    let write = |name: &str, lines: &[String]| {
        let p = dir.path().join(name);
        std::fs::write(&p, lines.join("\n") + "\n").expect("write");
        p
    };
    let restore =
        |data: &Path, file: &Path| cli_in(data, &["restore", file.to_str().expect("utf-8")], &[]);

    // A non-empty data directory: refused, untouched.
    let busy = dir.path().join("busy");
    std::fs::create_dir(&busy).expect("mkdir");
    std::fs::write(busy.join("keep"), b"mine").expect("write");
    let out = restore(&busy, &good);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("is not empty"), "{}", out.stderr);
    assert_eq!(std::fs::read_dir(&busy).expect("ls").count(), 1);
    assert_eq!(std::fs::read(busy.join("keep")).expect("read"), b"mine");

    let mut cases: Vec<(&str, Vec<String>, &str)> = Vec::new();
    let mut v2 = lines.clone();
    v2[0] = v2[0].replace("\"version\":1", "\"version\":2");
    cases.push(("v2", v2, "backup format version 2"));
    let mut foreign = lines.clone();
    foreign[0] = "{\"hello\":1}".into();
    cases.push(("foreign", foreign, "not a fleetgroups backup"));
    cases.push(("truncated", lines[..lines.len() - 1].to_vec(), "truncated"));
    let mut dup = lines.clone();
    let group_line = lines
        .iter()
        .find(|l| l.contains("\"type\":\"group\""))
        .expect("group")
        .clone();
    dup.insert(2, group_line.replace("\"id\":1", "\"id\":77"));
    let n = dup.len();
    dup[n - 1] = format!("{{\"type\":\"end\",\"records\":{}}}", n - 2);
    cases.push(("dup-name", dup, "has the name"));
    let mut low_seq = lines.clone();
    let seq_at = low_seq
        .iter()
        .position(|l| l.contains("\"type\":\"sequences\""))
        .expect("seq");
    low_seq[seq_at] = "{\"type\":\"sequences\",\"nextGroup\":2,\"nextChange\":9}".into();
    cases.push(("low-seq", low_seq, "not above the highest group"));
    let mut backwards = lines.clone();
    let g = backwards
        .iter()
        .position(|l| l.contains("\"type\":\"group\""))
        .expect("group");
    let mut v: Value = serde_json::from_str(&backwards[g]).expect("json");
    v["lastModified"] = json!(v["creation"].as_i64().expect("creation") - 1);
    backwards[g] = v.to_string();
    cases.push(("backwards", backwards, "lastModified is before creation"));
    let mut crowded = lines.clone();
    let mut v: Value = serde_json::from_str(&crowded[g]).expect("json");
    v["devices"] = json!((0..10_001).map(|i| format!("d{i}")).collect::<Vec<_>>());
    crowded[g] = v.to_string();
    cases.push(("crowded", crowded, "more than limits.max_devices_per_group"));
    // Argon2 costs beyond this binary's own (one failed login took 12 s and 2 GB).
    let mut costly = lines.clone();
    let u = costly
        .iter()
        .position(|l| l.contains("\"type\":\"user\""))
        .expect("user");
    assert!(costly[u].contains("m=19456,t=2,p=1"), "{}", costly[u]);
    costly[u] = costly[u].replace("m=19456,t=2,p=1", "m=2097152,t=10,p=1");
    cases.push((
        "costly-hash",
        costly,
        "user admin: keyHash asks for m=2097152 KiB, t=10, p=1",
    ));
    let mut unknown = lines.clone();
    unknown[seq_at] = unknown[seq_at].replace("}", ",\"extra\":true}");
    cases.push(("unknown-field", unknown, "unknown field"));

    for (name, content, expected) in cases {
        let file = write(&format!("{name}.jsonl"), &content);
        // Into a missing directory: it must not exist afterwards.
        let missing = dir.path().join(format!("{name}-missing"));
        let out = restore(&missing, &file);
        assert_eq!(out.code, 1, "{name}: {out:?}");
        assert!(out.stderr.contains(expected), "{name}: {}", out.stderr);
        assert!(
            !missing.exists(),
            "{name}: restore left {} behind",
            missing.display()
        );
        // `restore --check` refuses it for the same reason, and creates nothing.
        let out = cli_in(
            &missing,
            &["restore", "--check", file.to_str().expect("utf-8")],
            &[],
        );
        assert_eq!(out.code, 1, "{name}: {out:?}");
        assert!(out.stderr.contains(expected), "{name}: {}", out.stderr);
        assert!(
            !missing.exists(),
            "{name}: --check created the data directory"
        );
        // Into an empty directory: it must be empty afterwards.
        let empty = dir.path().join(format!("{name}-empty"));
        std::fs::create_dir(&empty).expect("mkdir");
        assert_eq!(restore(&empty, &file).code, 1, "{name}");
        assert_eq!(std::fs::read_dir(&empty).expect("ls").count(), 0, "{name}");
    }
    // And the good file still checks and restores.
    let fine = dir.path().join("fine");
    ok(cli_in(
        &fine,
        &["restore", "--check", good.to_str().expect("utf-8")],
        &[],
    ));
    assert!(!fine.exists());
    ok(restore(&fine, &good));
}

#[test]
fn backups_taken_under_concurrent_writes_are_consistent() {
    let server = TestServer::start();
    let token = server.admin_token();
    let dir = tempfile::tempdir().expect("tempdir");
    std::thread::scope(|s| {
        let writer = s.spawn(|| {
            for i in 0..60 {
                create(
                    &server,
                    &token,
                    json!({"name": format!("g{i}"), "devices": ["dev-1"]}),
                );
            }
        });
        let mut files = Vec::new();
        for i in 0..3 {
            let f = dir.path().join(format!("b{i}.jsonl"));
            ok(server.cli(&["backup", f.to_str().expect("utf-8")]));
            files.push(f);
        }
        writer.join().expect("writer");
        for (i, f) in files.iter().enumerate() {
            // Restore checks names, IDs and sequences; on top, every group must have
            // its "created" entry and nothing more (there were no other changes).
            let data = dir.path().join(format!("r{i}"));
            ok(cli_in(&data, &["restore", f.to_str().expect("utf-8")], &[]));
            let text = std::fs::read_to_string(f).expect("read");
            let groups = text.matches("\"type\":\"group\"").count();
            let changes = text.matches("\"type\":\"change\"").count();
            assert_eq!(groups, changes, "backup {i} is not a snapshot");
        }
    });
}

/// A backup file of `groups` groups (10 devices each) in account `default`, with the
/// header, users and sequences of a real backup of `from`.
fn big_backup(from: &TestServer, path: &Path, groups: usize) {
    ok(from.cli(&["backup", path.to_str().expect("utf-8")]));
    let mut lines: Vec<Value> = std::fs::read_to_string(path)
        .expect("read")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .filter(|v: &Value| !matches!(v["type"].as_str(), Some("group" | "change" | "end")))
        .collect();
    for v in &mut lines {
        if v["type"] == "sequences" {
            v["nextGroup"] = json!(groups + 1);
        }
    }
    for n in 1..=groups {
        lines.push(json!({
            "type": "group", "account": "default", "id": n, "revision": 1,
            "creation": 1_700_000_000_000i64, "lastModified": 1_700_000_000_000i64,
            "name": format!("Restored {n}"), "description": null,
            "devices": (0..10).map(|d| format!("dev-{n}-{d}")).collect::<Vec<_>>(),
        }));
    }
    lines.push(json!({"type": "end", "records": lines.len() - 1}));
    let text: String = lines.iter().map(|v| format!("{v}\n")).collect();
    std::fs::write(path, text).expect("write");
}

#[test]
fn a_restore_killed_at_any_moment_is_refused_and_a_second_restore_redoes_it() {
    let source = TestServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("big.jsonl");
    let groups = 8_000;
    big_backup(&source, &file, groups);
    // Seeded kill moments spread over a restore's run; some rounds the restore wins.
    let (mut interrupted, mut finished) = (0, 0);
    let mut seed = 0x9e37_79b9_u64;
    for round in 0..6 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = std::time::Duration::from_millis(20 + seed % 600);
        let mut server = TestServer::unstarted(Options::default());
        let data = server.data_dir();
        let mut child = crate::support::cli(&["restore"])
            .arg(&file)
            .data_dir(&data)
            .spawn(std::process::Stdio::null(), std::process::Stdio::null());
        // The fault itself: SIGKILL after a seeded delay (not a wait for the restore).
        std::thread::sleep(delay);
        let _ = child.kill();
        let status = child.wait().expect("wait");
        if status.success() {
            finished += 1;
        } else {
            interrupted += 1;
            if data.join("restore-in-progress").exists() {
                let refused = server.second_server();
                assert_eq!(refused.code, 3, "round {round}: {refused:?}");
                assert!(
                    refused.stderr.contains("restore was interrupted: remove")
                        && refused.stderr.contains("and restore again"),
                    "round {round}: {}",
                    refused.stderr
                );
            }
            // A second restore cleans up and redoes it.
            let again = cli_in(&data, &["restore", file.to_str().expect("utf-8")], &[]);
            assert_eq!(again.code, 0, "round {round}: {again:?}");
        }
        server.restart();
        let admin = server.client(&server.login("admin", &source.admin_key()));
        let page = admin
            .get("/api/groups?after=grp-7990&limit=100")
            .expect_ok(200);
        assert_eq!(
            page["groups"].as_array().map(Vec::len),
            Some(10),
            "round {round}"
        );
        let one = admin.get("/api/devices/dev-1-3/groups").expect_ok(200);
        assert_eq!(one["groups"][0]["id"], "grp-1", "round {round}");
        admin.create(&json!({"name": "After the restore"}));
        assert_eq!(
            admin.get("/api/groups?after=grp-8000").expect_ok(200)["groups"][0]["id"],
            "grp-8001",
            "round {round}: IDs continue after the restored ones"
        );
    }
    println!("restore kill rounds: {interrupted} interrupted, {finished} finished");
    assert!(interrupted >= 2, "the kills must land inside restores");
}

/// Two `restore` runs into one directory: the second, started while the first is
/// writing (its in-progress marker is there), is refused with exit 1 and a message
/// naming the directory, instead of taking the marker for an abandoned restore and
/// emptying the directory under the first; the first finishes and its store starts
/// with every group. One started after the first finished is refused (not empty) and
/// leaves the finished restore as it was. (Before the lock, 4 of 4 such pairs ended
/// with an empty or missing directory.)
#[test]
fn a_second_restore_into_the_same_directory_is_refused_and_touches_nothing() {
    let source = TestServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("big.jsonl");
    let groups = 8_000;
    big_backup(&source, &file, groups);
    let mut server = TestServer::unstarted(Options::default());
    let data = server.data_dir();
    let first = crate::support::cli(&["restore"])
        .arg(&file)
        .data_dir(&data)
        .spawn(std::process::Stdio::null(), std::process::Stdio::piped());
    let marker = data.join("restore-in-progress");
    crate::support::poll_until(
        std::time::Duration::from_secs(30),
        "the first restore's marker",
        || marker.exists().then_some(()),
    );
    let second = cli_in(&data, &["restore", file.to_str().expect("utf-8")], &[]);
    let first = first.wait_with_output().expect("wait");
    assert!(
        first.status.success(),
        "the first restore: {}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert_eq!(second.code, 1, "{second:?}");
    assert!(
        second.stderr.contains(&format!(
            "another restore into {} is running; nothing was changed",
            data.display()
        )),
        "{}",
        second.stderr
    );
    // A third, after the first finished: refused, and the restored store stays.
    let third = cli_in(&data, &["restore", file.to_str().expect("utf-8")], &[]);
    assert_eq!(third.code, 1, "{third:?}");
    assert!(third.stderr.contains("is not empty"), "{}", third.stderr);
    server.restart();
    let admin = server.client(&server.login("admin", &source.admin_key()));
    let page = admin
        .get("/api/groups?after=grp-7990&limit=100")
        .expect_ok(200);
    assert_eq!(page["groups"].as_array().map(Vec::len), Some(10));
    assert!(
        !server.log().contains("created user admin"),
        "a first start: the restore was undone"
    );
}

/// A server started on a directory a restore is filling (its marker there, its lock
/// held: here the lock is taken as `restore` takes it, an `flock` on the directory)
/// says a restore is running and exits 1, so systemd retries once it is done; the same
/// marker without the lock is an interrupted restore (exit 3, the operator's).
#[test]
fn a_server_started_during_a_restore_says_a_restore_is_running() {
    let server = TestServer::unstarted(Options::default());
    let data = server.data_dir();
    std::fs::create_dir_all(&data).expect("mkdir");
    std::fs::write(data.join("restore-in-progress"), b"restoring b.jsonl\n").expect("marker");
    let held = std::fs::File::open(&data).expect("open");
    rustix::fs::flock(&held, rustix::fs::FlockOperation::LockExclusive).expect("flock");
    let out = server.second_server();
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr
            .contains("a restore into data is running; start once it has finished"),
        "{}",
        out.stderr
    );
    drop(held);
    let out = server.second_server();
    assert_eq!(out.code, 3, "{out:?}");
    assert!(
        out.stderr.contains("restore was interrupted"),
        "{}",
        out.stderr
    );
}

/// `tests/it/fixtures/backup-v1.jsonl` was written by the build at 786b2f1 (before the
/// backup records wrapped the store's record types), from a store with a user and its
/// usage counters, an updated group, a group made with an `Idempotency-Key`, a deleted
/// group and their change-feed entries (one edit by hand: the idempotency record
/// expires in 2100 instead of a day after it was written, so the retry below stays a
/// retry). It restores; a backup of the restored store
/// writes the same records line for line (so the format did not change); and the
/// restored store serves what it held, to the user's unchanged API key.
#[test]
fn a_backup_written_by_an_earlier_build_restores_and_writes_back_the_same_lines() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/fixtures/backup-v1.jsonl");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let out = ok(cli_in(
        &data,
        &["restore", fixture.to_str().expect("utf-8")],
        &[],
    ));
    assert!(
        out.stderr.contains(
            "2 groups, 1 users, 5 change-feed entries, 1 idempotency records, 1 usage counters"
        ),
        "{}",
        out.stderr
    );
    let again = dir.path().join("again.jsonl");
    ok(cli_in(
        &data,
        &["backup", again.to_str().expect("utf-8")],
        &[],
    ));
    assert_eq!(body(&again), body(&fixture));

    let server = TestServer::with_dir(dir, Options::default());
    // The fixture's own test user (its key is in no other place).
    let token = server.login(
        "fixture",
        "fgk_058858f69fa0a763a5acaa09bfff6ca78d9d2e3e7d99b79145b3755fa856c8a7",
    );
    let groups = server.client(&token).groups();
    let names: Vec<&str> = groups.iter().filter_map(|g| g["name"].as_str()).collect();
    assert_eq!(names, ["Trucks", "Vans"]);
    assert_eq!(
        groups[0]["devices"],
        json!(["truck-1", "truck-2", "truck-3", "shared-9"])
    );
    let feed = server.req("GET", "/api/changes").bearer(&token).send();
    assert_eq!(feed.status, 200, "{}", feed.text());
    let feed = feed.json();
    let ops: Vec<&str> = feed["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .filter_map(|c| c["op"].as_str())
        .collect();
    assert_eq!(ops, ["created", "created", "created", "updated", "deleted"]);
    // The remembered create answers a retry with the first answer, not a new group.
    let retry = server
        .req("POST", "/api/groups")
        .bearer(&token)
        .header("Idempotency-Key", "fixture-key-1")
        .json(&json!({"name": "Vans", "devices": ["van-1", "shared-9"]}))
        .send();
    assert_eq!(retry.json()["id"], "grp-2", "{}", retry.text());
    let next = server
        .client(&token)
        .create(&json!({"name": "After restore"}));
    assert_eq!(next["id"], "grp-4", "numbers are never reused");
}
