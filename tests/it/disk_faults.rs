//! Real disk faults (issue 14, "a store that never serves a partial truth"): a tmpfs
//! that fills up (ENOSPC) and an ext4 image on a loop device, mounted
//! `errors=remount-ro`, whose error is triggered through sysfs (EROFS), both under the
//! default `storage.durability = "fsync"`. They pin docs/api/http.md "Durability" and docs/operations/storage.md:
//! a refused write answers 503 and leaves no trace on any read path (GET by the ID it
//! would have got, the list, the name filter, the reverse lookup, the change feed, the
//! `/metrics` group gauge); every acknowledged write stays readable; reads go on and
//! `/readyz` tells the truth; and no restart (kill -9 or polite) ever gives an ID a
//! client has seen in any 2xx answer to another group. The test-only flush-failure
//! switch (storage.rs) cannot show this: it fails before the disk is touched, so the
//! store's undo always works there, whereas a real disk can refuse the undo as well.
//! The faults are the kernel's, not switches, so these tests need root (mount,
//! losetup, sysfs) — CI runs as root — and they never skip: when the kernel refuses to
//! set a fault up, the test fails and says so.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{poll_until, Options, Resp, TestServer};

/// What to say when the machine refuses to set a fault up.
const NEEDS: &str = "these tests inject real faults and need root (CAP_SYS_ADMIN), tmpfs, \
                     loop devices and ext4 with /sys/fs/ext4/<dev>/trigger_fs_error; \
                     they fail instead of skipping";

/// Runs a system command for the fault set-up; panics loudly when it fails.
fn run(what: &str, program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {program}: {e} ({NEEDS})"));
    if !out.status.success() {
        panic!(
            "{what}: the system refused `{program} {}` ({}): {} ({NEEDS})",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A filesystem mounted on a test's temporary directory (the `TestServer`'s root, so
/// the data directory `data` is inside it). Dropped after the server (declare it
/// first): unmounts, detaches the loop device and removes the mount point, also when
/// the test panics.
struct Mount {
    point: PathBuf,
    mounted: bool,
    /// The ext4 image's loop device (`/dev/loopN`) and the directory holding the image.
    ext4: Option<(String, tempfile::TempDir)>,
}

impl Mount {
    /// A tmpfs of `size` (e.g. "8m") on `point`.
    fn tmpfs(point: &Path, size: &str) -> Mount {
        let p = point.to_str().expect("utf-8 path");
        run(
            "mounting a tmpfs for the full-disk test",
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
                p,
            ],
        );
        Mount {
            point: point.to_path_buf(),
            mounted: true,
            ext4: None,
        }
    }

    /// A fresh 64 MiB ext4 image on a loop device, mounted `errors=remount-ro` on `point`.
    fn ext4(point: &Path) -> Mount {
        let image_dir = tempfile::tempdir().expect("tempdir for the image");
        let img = image_dir.path().join("fs.img");
        let img = img.to_str().expect("utf-8 path");
        run("creating the ext4 image", "truncate", &["-s", "64M", img]);
        run("formatting the ext4 image", "mkfs.ext4", &["-q", "-F", img]);
        let dev = run(
            "attaching the ext4 image to a loop device",
            "losetup",
            &["-f", "--show", img],
        );
        assert!(
            dev.starts_with("/dev/loop"),
            "losetup printed {dev:?}, not a loop device ({NEEDS})"
        );
        let mut m = Mount {
            point: point.to_path_buf(),
            mounted: false,
            ext4: Some((dev, image_dir)),
        };
        m.mount_ext4();
        m
    }

    fn dev(&self) -> &str {
        &self.ext4.as_ref().expect("an ext4 mount").0
    }

    fn mount_ext4(&mut self) {
        let p = self.point.to_str().expect("utf-8 path").to_string();
        let dev = self.dev().to_string();
        run(
            "mounting the ext4 image with errors=remount-ro",
            "mount",
            &["-t", "ext4", "-o", "errors=remount-ro", &dev, &p],
        );
        self.mounted = true;
    }

    /// Makes the ext4 filesystem fail the way a dying disk does: an error that remounts
    /// it read-only (`trigger_fs_error`), or, where the kernel has no such file, a plain
    /// read-only remount. Returns the method, and waits until the filesystem refuses a
    /// write.
    fn break_ext4(&self) -> &'static str {
        let name = self.dev().trim_start_matches("/dev/");
        let trigger = PathBuf::from(format!("/sys/fs/ext4/{name}/trigger_fs_error"));
        let method = if trigger.exists() {
            std::fs::write(&trigger, "1\n").unwrap_or_else(|e| {
                panic!("the kernel refused {}: {e} ({NEEDS})", trigger.display())
            });
            "trigger_fs_error (ext4 error, errors=remount-ro)"
        } else {
            let p = self.point.to_str().expect("utf-8 path");
            run(
                "remounting the ext4 image read-only",
                "mount",
                &["-o", "remount,ro", p],
            );
            "FALLBACK mount -o remount,ro (this kernel has no trigger_fs_error)"
        };
        eprintln!(
            "*** disk_faults: EROFS injected on {} with {method}",
            self.dev()
        );
        let probe = self.point.join("probe-erofs");
        poll_until(
            Duration::from_secs(10),
            "the filesystem to refuse writes after the injected error",
            || match std::fs::write(&probe, b"x") {
                Err(e) if e.raw_os_error() == Some(30) => Some(()),
                Err(e) => panic!("writing the probe failed with {e}, not EROFS"),
                Ok(()) => None,
            },
        );
        method
    }

    /// With the server stopped: unmounts the broken ext4, repairs it with e2fsck (what
    /// an operator does before mounting it again) and mounts it read-write again.
    fn repair_ext4(&mut self) {
        self.unmount();
        let dev = self.dev().to_string();
        let out = Command::new("e2fsck")
            .args(["-f", "-y", &dev])
            .output()
            .unwrap_or_else(|e| panic!("cannot run e2fsck: {e} ({NEEDS})"));
        // 0: clean, 1: errors corrected.
        assert!(
            matches!(out.status.code(), Some(0 | 1)),
            "e2fsck -fy {dev} could not repair the image ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        self.mount_ext4();
    }

    fn unmount(&mut self) {
        if self.mounted {
            let p = self.point.to_str().expect("utf-8 path").to_string();
            run("unmounting the test filesystem", "umount", &[&p]);
            self.mounted = false;
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.mounted {
            let ok = Command::new("umount")
                .arg(&self.point)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                // Still busy (a panic left something open): detach it lazily.
                let _ = Command::new("umount").arg("-l").arg(&self.point).status();
            }
        }
        if let Some((dev, _image_dir)) = &self.ext4 {
            let _ = Command::new("losetup").args(["-d", dev]).status();
        }
        let _ = std::fs::remove_dir_all(&self.point);
    }
}

/// A server whose whole directory (config, `data`) is on `mount`'s filesystem. The
/// caller's `let (mount, server) = …` drops the server (kill -9) before the mount.
fn server_on(make_mount: impl FnOnce(&Path) -> Mount) -> (Mount, TestServer) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mount = make_mount(dir.path());
    // One-MiB log segments: the 8 MiB tmpfs holds them (16 MiB, the default, would not).
    let options = Options::default().env("FLEETGROUPS_STORAGE_LOG_SEGMENT_MB", "1");
    let server = TestServer::with_dir(dir, options);
    (mount, server)
}

/// Fills the filesystem at `point` with a file until it reports ENOSPC; returns it.
fn fill(point: &Path) -> PathBuf {
    let path = point.join("filler");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("open filler");
    for chunk in [1 << 20, 4096, 1] {
        let bytes = vec![0u8; chunk];
        loop {
            match f.write(&bytes) {
                Ok(n) if n == chunk => {}
                Ok(_) => break,
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling the tmpfs failed with {e}, not ENOSPC"),
            }
        }
    }
    match f.write(&[0]) {
        Err(e) if e.raw_os_error() == Some(28) => {}
        other => panic!("the tmpfs is not full after filling it: {other:?} ({NEEDS})"),
    }
    path
}

fn parse_id(s: &str) -> Option<u64> {
    s.strip_prefix("grp-")?.parse().ok()
}

/// What clients have been told: the acknowledged groups and every group ID that
/// appeared in any 2xx answer, with the name it had when first seen.
#[derive(Default)]
struct Ledger {
    /// Groups that must exist: acknowledged creates (and refused ones that came back
    /// whole after a restart), ID → name.
    present: BTreeMap<u64, String>,
    /// Every group ID any 2xx answer showed, with the name it first had.
    seen: BTreeMap<u64, String>,
    /// Set while the disk refuses writes. sled may have to write to serve a read (it
    /// consolidates pages as it reads them), so a read may then answer 503 instead:
    /// allowed, and counted, but a 200 must never show a refused write.
    refusing: bool,
    /// Reads answered 503 while refusing.
    unavailable_reads: u64,
}

impl Ledger {
    /// Whether `r` is a read the disk fault may refuse (503 `unavailable` while the disk
    /// refuses writes); such a read is counted and printed.
    fn unavailable(&mut self, r: &Resp, path: &str) -> bool {
        if r.status != 503 || !self.refusing {
            return false;
        }
        r.expect_error(503, "unavailable");
        self.unavailable_reads += 1;
        eprintln!("*** disk_faults: GET {path} answered 503 while the disk refuses writes");
        true
    }

    /// Records every `{id: "grp-N", name}` object in a 2xx answer.
    fn note(&mut self, v: &Value) {
        match v {
            Value::Object(o) => {
                if let (Some(id), Some(name)) = (
                    o.get("id").and_then(Value::as_str).and_then(parse_id),
                    o.get("name").and_then(Value::as_str),
                ) {
                    self.seen.entry(id).or_insert_with(|| name.to_string());
                }
                o.values().for_each(|v| self.note(v));
            }
            Value::Array(a) => a.iter().for_each(|v| self.note(v)),
            _ => {}
        }
    }

    fn max_seen(&self) -> u64 {
        self.seen.keys().next_back().copied().unwrap_or(0)
    }
}

/// A GET answered 200, noted in the ledger.
fn get(server: &TestServer, token: &str, path: &str, ledger: &mut Ledger) -> Value {
    let r = server.req("GET", path).bearer(token).send();
    if ledger.unavailable(&r, path) {
        return serde_json::json!({"unavailable": true, "groups": [], "changes": [], "next": null});
    }
    assert_eq!(
        r.status,
        200,
        "reads must keep working: GET {path}: {}",
        r.text()
    );
    let v = r.json();
    ledger.note(&v);
    v
}

fn id_names(v: &Value) -> BTreeMap<u64, String> {
    v["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| {
            (
                parse_id(g["id"].as_str().expect("id")).expect("grp-N"),
                g["name"].as_str().expect("name").to_string(),
            )
        })
        .collect()
}

/// The whole change feed of the caller's account.
fn feed(server: &TestServer, token: &str, ledger: &mut Ledger) -> Vec<Value> {
    let mut all = Vec::new();
    let mut after = String::new();
    loop {
        let v = get(
            server,
            token,
            &format!("/api/changes?limit=1000{after}"),
            ledger,
        );
        let changes = v["changes"].as_array().expect("changes").clone();
        let done = changes.is_empty() || v["next"].is_null();
        all.extend(changes);
        if done {
            return all;
        }
        after = format!("&after={}", v["next"]);
    }
}

/// The `fleetgroups_groups` gauge.
fn metric(server: &TestServer, name: &str) -> u64 {
    let r = server.req("GET", "/metrics").send();
    assert_eq!(r.status, 200, "/metrics: {}", r.text());
    r.text()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{}", r.text()))
}

/// The `fleetgroups_groups` gauge; None when `/metrics` leaves it out because the
/// store cannot read its counts (allowed only while the disk refuses writes).
fn group_gauge(server: &TestServer, ledger: &mut Ledger) -> Option<u64> {
    let r = server.req("GET", "/metrics").send();
    assert_eq!(r.status, 200, "/metrics: {}", r.text());
    let value = r.text().lines().find_map(|l| {
        l.strip_prefix("fleetgroups_groups")?
            .strip_prefix(' ')?
            .parse()
            .ok()
    });
    if value.is_none() {
        assert!(
            ledger.refusing,
            "no fleetgroups_groups in /metrics:\n{}",
            r.text()
        );
        ledger.unavailable_reads += 1;
        eprintln!(
            "*** disk_faults: /metrics left fleetgroups_groups out while the disk refuses writes"
        );
    }
    value
}

/// Each attempted create has its own device, beside the one all groups share.
const SHARED: &str = "dev-shared";

fn device_of(name: &str) -> String {
    format!("dev-{name}")
}

fn create(server: &TestServer, token: &str, name: &str) -> Resp {
    server
        .req("POST", "/api/groups")
        .bearer(token)
        .json(&json!({"name": name, "devices": [device_of(name), SHARED]}))
        .send()
}

/// Creates `name`, which must be acknowledged; returns its ID.
fn create_acked(server: &TestServer, token: &str, name: &str, ledger: &mut Ledger) -> u64 {
    let r = create(server, token, name);
    assert_eq!(r.status, 201, "create {name}: {}", r.text());
    let v = r.json();
    ledger.note(&v);
    let id = parse_id(v["id"].as_str().expect("id")).expect("grp-N");
    ledger.present.insert(id, name.to_string());
    id
}

/// A create that the fault refused: its name and the ID the server would have given it.
struct Refused {
    name: String,
    would_be: u64,
}

/// The read paths `traces` looks at.
const PATHS: usize = 5;

/// On which read paths the group `name` shows (`id`: where GET should find it).
fn traces(
    server: &TestServer,
    token: &str,
    name: &str,
    id: u64,
    ledger: &mut Ledger,
) -> Vec<String> {
    let mut out = Vec::new();
    let list = id_names(&get(server, token, "/api/groups", ledger));
    if let Some((id, _)) = list.iter().find(|(_, n)| n.as_str() == name) {
        out.push(format!("GET /api/groups lists it as grp-{id}"));
    }
    let filtered = id_names(&get(
        server,
        token,
        &format!("/api/groups?name={name}"),
        ledger,
    ));
    if filtered.values().any(|n| n == name) {
        out.push(format!("GET /api/groups?name={name} finds it"));
    }
    let r = server
        .req("GET", &format!("/api/groups/grp-{id}"))
        .bearer(token)
        .send();
    match r.status {
        200 => {
            let v = r.json();
            ledger.note(&v);
            if v["name"] == name {
                out.push(format!("GET /api/groups/grp-{id} answers it"));
            }
        }
        404 => {}
        503 if ledger.unavailable(&r, &format!("/api/groups/grp-{id}")) => {}
        s => panic!("GET /api/groups/grp-{id}: {s} {}", r.text()),
    }
    let device = device_of(name);
    let lookup = id_names(&get(
        server,
        token,
        &format!("/api/devices/{device}/groups"),
        ledger,
    ));
    if !lookup.is_empty() {
        out.push(format!(
            "GET /api/devices/{device}/groups lists {:?}",
            lookup.keys().collect::<Vec<_>>()
        ));
    }
    let entries: Vec<Value> = feed(server, token, ledger)
        .into_iter()
        .filter(|c| c["group"]["name"] == name)
        .collect();
    if !entries.is_empty() {
        out.push(format!("GET /api/changes has {}", Value::Array(entries)));
    }
    out
}

/// Asserts that every read path shows exactly `ledger.present`: the list, GET of each,
/// the shared device's reverse lookup, the feed's creates and the group gauge.
fn assert_exactly_present(server: &TestServer, token: &str, ledger: &mut Ledger, when: &str) {
    let want = ledger.present.clone();
    let answered = |v: &Value| v.get("unavailable").is_none();
    let v = get(server, token, "/api/groups", ledger);
    if answered(&v) {
        assert_eq!(id_names(&v), want, "{when}: GET /api/groups");
    }
    for (id, name) in &want {
        let v = get(server, token, &format!("/api/groups/grp-{id}"), ledger);
        if answered(&v) {
            assert_eq!(v["name"], name.as_str(), "{when}: GET /api/groups/grp-{id}");
        }
    }
    let v = get(
        server,
        token,
        &format!("/api/devices/{SHARED}/groups"),
        ledger,
    );
    if answered(&v) {
        assert_eq!(
            id_names(&v).keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{when}: GET /api/devices/{SHARED}/groups"
        );
    }
    let entries = feed(server, token, ledger);
    let created: BTreeMap<u64, String> = entries
        .iter()
        .filter(|c| c["op"] == "created")
        .map(|c| {
            (
                parse_id(c["id"].as_str().expect("id")).expect("grp-N"),
                c["group"]["name"].as_str().expect("name").to_string(),
            )
        })
        .collect();
    if !ledger.refusing || !entries.is_empty() {
        assert_eq!(created, want, "{when}: the creates in GET /api/changes");
    }
    if let Some(gauge) = group_gauge(server, ledger) {
        assert_eq!(
            gauge,
            want.len() as u64,
            "{when}: the fleetgroups_groups gauge"
        );
    }
}

/// Right after the refusal: the refused create is nowhere, the acknowledged ones are all
/// there, nothing sits at the IDs just past the last one handed out.
fn assert_refused_invisible(
    server: &TestServer,
    token: &str,
    refused: &Refused,
    ledger: &mut Ledger,
) {
    ledger.refusing = true;
    let mut traces = traces(server, token, &refused.name, refused.would_be, ledger);
    let gauge = group_gauge(server, ledger);
    if gauge.is_some_and(|g| g != ledger.present.len() as u64) {
        traces.push(format!(
            "fleetgroups_groups is {gauge:?}, with {} creates acknowledged",
            ledger.present.len()
        ));
    }
    assert!(
        traces.is_empty(),
        "the write of {:?} was answered 503 but is visible: {traces:#?}",
        refused.name
    );
    for id in refused.would_be..refused.would_be + 3 {
        let r = server
            .req("GET", &format!("/api/groups/grp-{id}"))
            .bearer(token)
            .send();
        if ledger.unavailable(&r, &format!("/api/groups/grp-{id}")) {
            continue;
        }
        assert_eq!(
            r.status,
            404,
            "grp-{id} (at or past the ID the refused create would have got) exists: {}",
            r.text()
        );
    }
    assert_exactly_present(server, token, ledger, "after the 503");
}

/// After a restart: the next create gets an ID above every ID a client has seen (it
/// comes first, as a client's would, while the new process is still starting up), every
/// acknowledged create is there, each refused one is wholly there or wholly absent
/// (and, if there, keeps the ID it was first seen with), and no ID a client saw belongs
/// to another group.
fn assert_after_restart(
    server: &TestServer,
    token: &str,
    refused: &[Refused],
    ledger: &mut Ledger,
    round: &str,
) {
    if ledger.unavailable_reads > 0 {
        eprintln!(
            "*** disk_faults {round}: {} reads answered 503 while the disk refused writes",
            ledger.unavailable_reads
        );
    }
    ledger.refusing = false;
    let max_seen = ledger.max_seen();
    let name = format!("{round}-after-restart");
    let seen_before = ledger.seen.clone();
    let id = create_acked(server, token, &name, ledger);
    assert!(
        id > max_seen,
        "{round}: the first create after the restart got grp-{id}, but clients have seen IDs \
         up to grp-{max_seen} (grp-{id} was {:?})",
        seen_before.get(&id)
    );
    for r in refused {
        if ledger.present.values().any(|n| n == &r.name) {
            continue;
        }
        let list = id_names(&get(server, token, "/api/groups", ledger));
        let at = list
            .iter()
            .find(|(_, n)| n.as_str() == r.name)
            .map_or(r.would_be, |(id, _)| *id);
        let traces = traces(server, token, &r.name, at, ledger);
        // The spec allows a write whose outcome was unknown to come back after a restart,
        // wholly, never in part. Observed at 26d936f (Linux 6.18, sled 0.34.7): after the
        // space is freed, or the ext4 image repaired, and a kill -9 or a polite restart,
        // the refused create was absent every time (though before the restart it was
        // visible on every read path, see `assert_refused_invisible`).
        eprintln!(
            "*** disk_faults {round}: the refused create {:?} after the restart: {}",
            r.name,
            if traces.is_empty() {
                "absent".to_string()
            } else {
                format!("back as grp-{at}")
            }
        );
        if !traces.is_empty() {
            assert_eq!(
                traces.len(),
                PATHS,
                "{round}: the refused create {:?} is only partly there after the restart: \
                 {traces:#?}",
                r.name
            );
            ledger.present.insert(at, r.name.clone());
        }
    }
    assert_exactly_present(
        server,
        token,
        ledger,
        &format!("{round}, after the restart"),
    );
    for (id, name) in &ledger.present {
        if let Some(first) = ledger.seen.get(id) {
            assert_eq!(
                first, name,
                "{round}: grp-{id} was seen as {first:?} and is now another group, {name:?}"
            );
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Restart {
    Kill9,
    Polite,
}

/// Stops the server the way `how` says (a polite stop may fail on a broken disk; its
/// status is printed, not judged).
fn stop(server: &mut TestServer, how: Restart, tag: &str) {
    match how {
        Restart::Kill9 => server.kill9(),
        Restart::Polite => {
            server.signal("TERM");
            let status = server
                .wait_timeout(Duration::from_secs(30))
                .unwrap_or_else(|| {
                    panic!(
                        "{tag}: SIGTERM did not stop the server; log:\n{}",
                        server.log()
                    )
                });
            eprintln!(
                "*** disk_faults {tag}: the polite stop after the fault exited with {status}"
            );
        }
    }
}

/// What the tests check between the refusal and the restart.
#[derive(Clone, Copy, PartialEq)]
enum Check {
    /// The refused write leaves no trace on any read path, reads answer 200,
    /// `/readyz` and `fleetgroups_store_healthy` say the store refuses writes.
    NoTrace,
    /// Only read what a client could read now (any 2xx answer's IDs are "seen"); the
    /// restart and the create after it are what is judged.
    IdsOnly,
}

/// Reads every path a client could read now, leniently (a failed read is skipped), so
/// every ID the server shows, rightly or not, is in the ledger.
fn observe(server: &TestServer, token: &str, refused: &Refused, ledger: &mut Ledger) {
    let paths = [
        "/api/groups".to_string(),
        format!("/api/groups?name={}", refused.name),
        format!("/api/groups/grp-{}", refused.would_be),
        format!("/api/devices/{}/groups", device_of(&refused.name)),
        format!("/api/devices/{SHARED}/groups"),
        "/api/changes?limit=1000".to_string(),
    ];
    for path in paths {
        let r = server.req("GET", &path).bearer(token).send();
        if r.status == 200 {
            ledger.note(&r.json());
        }
    }
}

/// The checks right after a refusal.
fn check_refusal(
    server: &TestServer,
    token: &str,
    refused: &Refused,
    ledger: &mut Ledger,
    check: Check,
) {
    match check {
        Check::IdsOnly => observe(server, token, refused, ledger),
        Check::NoTrace => {
            assert_refused_invisible(server, token, refused, ledger);
            server
                .req("GET", "/readyz")
                .send()
                .expect_error(503, "unavailable");
            assert_eq!(server.req("GET", "/healthz").send().status, 200);
            assert_eq!(
                metric(server, "fleetgroups_store_healthy"),
                0,
                "fleetgroups_store_healthy while writes are refused"
            );
        }
    }
}

/// One round on the tmpfs at `point`: a few acknowledged creates, fill the disk, create
/// until one is refused (503). Returns the refused create and the filler.
fn fill_until_refused(
    server: &TestServer,
    token: &str,
    point: &Path,
    tag: &str,
    ledger: &mut Ledger,
) -> (Refused, PathBuf) {
    let mut last = 0;
    for i in 0..3 {
        last = create_acked(server, token, &format!("{tag}-ok{i}"), ledger);
    }
    let filler = fill(point);
    for i in 0..3000 {
        let name = format!("{tag}-full{i}");
        let r = create(server, token, &name);
        match r.status {
            201 => {
                let v = r.json();
                ledger.note(&v);
                last = parse_id(v["id"].as_str().expect("id")).expect("grp-N");
                ledger.present.insert(last, name);
            }
            503 => {
                r.expect_error(503, "unavailable");
                eprintln!(
                    "*** disk_faults {tag}: {name:?} refused (503) after {} acknowledged creates",
                    ledger.present.len()
                );
                let refused = Refused {
                    name,
                    would_be: last + 1,
                };
                return (refused, filler);
            }
            s => panic!("{tag}: a create on a full disk answered {s}: {}", r.text()),
        }
    }
    panic!(
        "{tag}: 3000 creates on a full tmpfs were all acknowledged; log:\n{}",
        server.log()
    )
}

/// Rounds on an 8 MiB tmpfs: fill it until a create is refused, check (`check`), free
/// the space, restart (`how` of each round), check the store and create once more.
fn full_disk_rounds(restarts: &[Restart], check: Check) {
    let (mount, mut server) = server_on(|p| Mount::tmpfs(p, "8m"));
    let mut ledger = Ledger::default();
    let mut refused = Vec::new();
    for (round, &how) in restarts.iter().enumerate() {
        let tag = format!("enospc-r{round}-{how:?}");
        let token = server.admin_token();
        let (refusal, filler) =
            fill_until_refused(&server, &token, &mount.point, &tag, &mut ledger);
        check_refusal(&server, &token, &refusal, &mut ledger, check);
        refused.push(refusal);
        std::fs::remove_file(&filler).expect("free the space");
        stop(&mut server, how, &tag);
        server.restart();
        let token = server.admin_token();
        assert_after_restart(&server, &token, &refused, &mut ledger, &tag);
        assert_eq!(
            server.req("GET", "/readyz").send().status,
            200,
            "{tag}: /readyz after the restart"
        );
    }
}

/// Rounds on an ext4 image: a few acknowledged creates, the filesystem turns read-only,
/// one create is refused, check (`check`), stop (`how`), e2fsck and mount it again,
/// restart, check the store and create once more.
fn read_only_rounds(restarts: &[Restart], check: Check) {
    let (mut mount, mut server) = server_on(Mount::ext4);
    let mut ledger = Ledger::default();
    let mut refused = Vec::new();
    for (round, &how) in restarts.iter().enumerate() {
        let tag = format!("erofs-r{round}-{how:?}");
        let token = server.admin_token();
        let mut last = 0;
        for i in 0..3 {
            last = create_acked(&server, &token, &format!("{tag}-ok{i}"), &mut ledger);
        }
        let method = mount.break_ext4();
        let refusal = Refused {
            name: format!("{tag}-refused"),
            would_be: last + 1,
        };
        let r = create(&server, &token, &refusal.name);
        assert_eq!(
            r.status,
            503,
            "{tag}: a create on a read-only filesystem ({method}) must be refused: {}",
            r.text()
        );
        r.expect_error(503, "unavailable");
        check_refusal(&server, &token, &refusal, &mut ledger, check);
        refused.push(refusal);
        stop(&mut server, how, &tag);
        mount.repair_ext4();
        server.restart();
        let token = server.admin_token();
        assert_after_restart(&server, &token, &refused, &mut ledger, &tag);
    }
}

#[test]
fn full_disk_a_refused_write_leaves_no_trace_and_survives_kill_9_restarts() {
    full_disk_rounds(&[Restart::Kill9; 3], Check::NoTrace);
}

#[test]
fn full_disk_a_refused_write_leaves_no_trace_and_survives_polite_restarts() {
    full_disk_rounds(&[Restart::Polite; 3], Check::NoTrace);
}

#[test]
fn full_disk_a_refused_write_then_restart_then_create_never_hands_out_an_id_twice() {
    full_disk_rounds(
        &[
            Restart::Polite,
            Restart::Kill9,
            Restart::Polite,
            Restart::Kill9,
        ],
        Check::IdsOnly,
    );
}

#[test]
fn read_only_filesystem_a_refused_write_leaves_no_trace_and_reads_go_on() {
    let (mount, server) = server_on(Mount::ext4);
    let token = server.admin_token();
    let mut ledger = Ledger::default();
    let mut last = 0;
    for i in 0..5 {
        last = create_acked(&server, &token, &format!("erofs-ok{i}"), &mut ledger);
    }
    let method = mount.break_ext4();

    let refused = Refused {
        name: "erofs-refused".to_string(),
        would_be: last + 1,
    };
    let r = create(&server, &token, &refused.name);
    assert_eq!(
        r.status,
        503,
        "a create on a read-only filesystem ({method}) must be refused: {}",
        r.text()
    );
    r.expect_error(503, "unavailable");
    check_refusal(&server, &token, &refused, &mut ledger, Check::NoTrace);

    // Every other kind of write is refused too and changes nothing.
    let (first, first_name) = ledger
        .present
        .first_key_value()
        .map(|(k, v)| (*k, v.clone()))
        .expect("a group");
    let second = *ledger.present.keys().nth(1).expect("a second group");
    let refusals = [
        (
            "PUT",
            format!("/api/groups/grp-{first}"),
            Some(json!({"name": "erofs-renamed"})),
        ),
        ("DELETE", format!("/api/groups/grp-{second}"), None),
        (
            "POST",
            format!("/api/groups/grp-{first}/devices"),
            Some(json!({"devices": ["dev-erofs-late"]})),
        ),
    ];
    for (method, path, body) in refusals {
        let mut req = server.req(method, &path).bearer(&token);
        if let Some(b) = &body {
            req = req.json(b);
        }
        let r = req.send();
        assert_eq!(
            r.status,
            503,
            "{method} {path} on a read-only filesystem: {}",
            r.text()
        );
        r.expect_error(503, "unavailable");
    }
    let g = get(
        &server,
        &token,
        &format!("/api/groups/grp-{first}"),
        &mut ledger,
    );
    assert_eq!(
        g["name"],
        first_name.as_str(),
        "a refused PUT changed grp-{first}: {g}"
    );
    assert_eq!(
        g["devices"],
        json!([device_of(&first_name), SHARED]),
        "a refused device add changed grp-{first}: {g}"
    );
    let late = id_names(&get(
        &server,
        &token,
        "/api/devices/dev-erofs-late/groups",
        &mut ledger,
    ));
    assert!(
        late.is_empty(),
        "a refused device add is visible in the reverse lookup: {late:?}"
    );
    assert_exactly_present(
        &server,
        &token,
        &mut ledger,
        "after the refused PUT, DELETE and device add",
    );
    server
        .req("GET", "/readyz")
        .send()
        .expect_error(503, "unavailable");
}

#[test]
fn read_only_filesystem_a_refused_write_then_restart_then_create_never_hands_out_an_id_twice() {
    read_only_rounds(&[Restart::Polite, Restart::Kill9].repeat(3), Check::IdsOnly);
}
