//! Crash safety: writer threads hammer the real binary with every kind of group write
//! (create, PUT, JSON Patch, Merge Patch, membership add/remove, delete) while the
//! process is killed with SIGKILL at a moment drawn from a seeded RNG. After each kill
//! the API key is rotated with the CLI (the server is down), the server restarts, and
//! the store is checked against what the writers were told:
//!
//! - every acknowledged write is there with exactly the acknowledged content; the one
//!   unacknowledged write per thread is either wholly there or wholly absent;
//! - no group exists that nobody created; no ID is acknowledged twice, and creates after
//!   a restart get IDs above every ID acknowledged before it;
//! - the name index agrees with the groups (a taken name 409s, a released one is free),
//!   so does the device index (`/api/devices/{d}/groups` and `?device=`), and so does
//!   the change feed (its latest entry per ID is the group's current state);
//! - the store reopens every time, and the rotated key revoked the old token;
//! - a second user's key, rotated through the admin socket (`user rotate-key` while the
//!   server runs) throughout the round, is the last acknowledged one after the restart
//!   (or, if a rotation was cut off by the kill, possibly the one after it).
//!
//! `FLEETGROUPS_CRASH_ROUNDS` (default 3) sets the number of rounds and
//! `FLEETGROUPS_CRASH_SEED` the seed; run many rounds with
//! `FLEETGROUPS_CRASH_ROUNDS=200 cargo test --release --test it crash -- --nocapture`.
//! `FLEETGROUPS_CRASH_DURABILITY=relaxed` runs the server without the fsync before the
//! answer: a control run that shows the harness does catch lost writes (it fails).
//!
//! `FLEETGROUPS_CRASH_POWERCUT=1` turns each SIGKILL into a simulated power cut: the
//! server runs under the LD_PRELOAD shim `tests/powercut/powercut.c` (built with `cc`),
//! which keeps an undo log of every file write, and after the kill every write since
//! its file's last fsync/fdatasync is undone before the restart (see the shim).
//! `FLEETGROUPS_CRASH_POWERCUT=reorder` simulates a disk that reorders writes instead:
//! at each cut, each unsynced 4 KiB page of each file is kept or undone at random
//! (a write spanning pages may be half kept; synced pages are always kept), with a
//! keep probability drawn per round; each round prints its cut seed, the keep
//! probability and the pages kept and undone, and the end a summary.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::support::{env_u64, try_raw, Options, Resp, TestServer};

const THREADS: usize = 4;
/// Groups each thread owns (its "slots"); names never collide across threads.
const SLOTS: usize = 5;
/// Device IDs are drawn from a small universe so indexes see many changes.
const DEVICES: usize = 10;
/// Upper bound on writes per thread per round, so a round ends even if the kill is late.
const MAX_OPS: usize = 5_000;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Doc {
    name: String,
    description: Option<String>,
    devices: Vec<String>,
}

impl Doc {
    fn from_json(v: &Value) -> Doc {
        Doc {
            name: v["name"].as_str().expect("name").to_string(),
            description: v["description"].as_str().map(str::to_string),
            devices: v["devices"]
                .as_array()
                .expect("devices")
                .iter()
                .map(|d| d.as_str().expect("device").to_string())
                .collect(),
        }
    }

    fn body(&self) -> Value {
        json!({"name": self.name, "description": self.description, "devices": self.devices})
    }
}

fn dedup(devices: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for d in devices {
        if !out.contains(&d) {
            out.push(d);
        }
    }
    out
}

/// What a thread knows about one of its groups.
#[derive(Debug, Clone, Default)]
struct Slot {
    /// The acknowledged group: its number and content.
    group: Option<(u64, Doc)>,
    /// Names this slot held or tried to take that must now be free.
    released: Vec<String>,
    version: u64,
}

/// The one write of a thread whose answer never came.
#[derive(Debug, Clone)]
enum Pending {
    Create { slot: usize, doc: Doc },
    Update { slot: usize, after: Doc },
    Delete { slot: usize },
}

struct Model {
    slots: Vec<Vec<Slot>>,
    /// Every group number ever acknowledged (or found applied after a crash).
    created: BTreeSet<u64>,
    /// Change-feed cursor and the latest entry per group number.
    feed_after: u64,
    latest: HashMap<u64, Value>,
}

/// Totals reported at the end.
#[derive(Debug, Default)]
struct Tally {
    acknowledged: usize,
    in_flight: usize,
    in_flight_applied: usize,
    groups_checked: usize,
    rotations: usize,
    index_checks: usize,
    lost: usize,
}

struct Client {
    addr: SocketAddr,
    token: String,
}

impl Client {
    fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, &Value)>,
    ) -> std::io::Result<Resp> {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAuthorization: Bearer {}\r\n",
            self.addr, self.token
        );
        let bytes = body.map(|(ctype, v)| {
            req.push_str(&format!("Content-Type: {ctype}\r\n"));
            serde_json::to_vec(v).expect("json")
        });
        if let Some(b) = &bytes {
            req.push_str(&format!("Content-Length: {}\r\n", b.len()));
        }
        req.push_str("\r\n");
        let mut wire = req.into_bytes();
        if let Some(b) = bytes {
            wire.extend_from_slice(&b);
        }
        try_raw(self.addr, &wire)
    }

    fn must(&self, method: &str, path: &str, body: Option<(&str, &Value)>) -> Resp {
        self.send(method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }
}

fn device(i: usize) -> String {
    format!("d{i}")
}

/// Filler device names: a run of them makes a device list long enough to be stored in
/// pieces (over 2 KiB of JSON, `store/pieces.rs`), so kills land in those writes too.
/// A fixed set of 1,000 keeps every group far below the device limit; the reverse
/// index is checked for the `d` devices only (fillers would cost thousands of reads).
const FILLERS: usize = 1000;

fn random_devices(rng: &mut StdRng) -> Vec<String> {
    let n = rng.gen_range(0..4);
    let mut out: Vec<String> = (0..n).map(|_| device(rng.gen_range(0..DEVICES))).collect();
    if rng.gen_range(0..8) == 0 {
        let len = rng.gen_range(150..400);
        let start = rng.gen_range(0..FILLERS - len);
        out.extend((start..start + len).map(|j| format!("filler-device-{j:04}")));
    }
    dedup(out)
}

/// What a writer reports: its write in flight at the kill, its acknowledged writes and
/// the group numbers it created.
type WriterResult = (Option<Pending>, usize, Vec<u64>);

/// One writer thread for one round: random writes on its own slots until the server
/// dies (or `MAX_OPS`). Returns the write that was in flight, if any, and the number of
/// acknowledged writes.
fn writer(
    t: usize,
    client: &Client,
    slots: &mut [Slot],
    rng: &mut StdRng,
    min_new_id: u64,
    killed: &AtomicBool,
) -> WriterResult {
    let mut acked = 0;
    let mut new_ids = Vec::new();
    for _ in 0..MAX_OPS {
        let s = rng.gen_range(0..SLOTS);
        let slot = &mut slots[s];
        let (pending, method, path, ctype, body) = match &slot.group {
            None => {
                slot.version += 1;
                let doc = Doc {
                    name: format!("t{t}s{s}v{}", slot.version),
                    description: rng.gen_bool(0.5).then(|| format!("made {}", slot.version)),
                    devices: random_devices(rng),
                };
                let body = doc.body();
                (
                    Pending::Create { slot: s, doc },
                    "POST",
                    "/api/groups".to_string(),
                    "application/json",
                    body,
                )
            }
            Some((id, cur)) => {
                let path = format!("/api/groups/grp-{id}");
                match rng.gen_range(0..7) {
                    0 => {
                        let mut doc = Doc {
                            name: cur.name.clone(),
                            description: rng.gen_bool(0.5).then(|| "put".to_string()),
                            devices: random_devices(rng),
                        };
                        if rng.gen_bool(0.5) {
                            slot.version += 1;
                            doc.name = format!("t{t}s{s}v{}", slot.version);
                        }
                        let body = doc.body();
                        (
                            Pending::Update {
                                slot: s,
                                after: doc,
                            },
                            "PUT",
                            path,
                            "application/json",
                            body,
                        )
                    }
                    1 => {
                        let d = device(rng.gen_range(0..DEVICES));
                        let text = format!("patched {}", rng.gen::<u16>());
                        let after = Doc {
                            name: cur.name.clone(),
                            description: Some(text.clone()),
                            devices: dedup(cur.devices.iter().cloned().chain([d.clone()])),
                        };
                        // The `test` op checks the server agrees with the model.
                        let body = json!([
                            {"op": "test", "path": "/name", "value": cur.name},
                            {"op": "replace", "path": "/description", "value": text},
                            {"op": "add", "path": "/devices/-", "value": d},
                        ]);
                        (
                            Pending::Update { slot: s, after },
                            "PATCH",
                            path,
                            "application/json-patch+json",
                            body,
                        )
                    }
                    2 => {
                        let devices = random_devices(rng);
                        let after = Doc {
                            name: cur.name.clone(),
                            description: None,
                            devices: devices.clone(),
                        };
                        let body = json!({"description": null, "devices": devices});
                        (
                            Pending::Update { slot: s, after },
                            "PATCH",
                            path,
                            "application/merge-patch+json",
                            body,
                        )
                    }
                    3 | 4 => {
                        let add = random_devices(rng);
                        let after = Doc {
                            devices: dedup(cur.devices.iter().cloned().chain(add.clone())),
                            ..cur.clone()
                        };
                        (
                            Pending::Update { slot: s, after },
                            "POST",
                            format!("{path}/devices"),
                            "application/json",
                            json!({ "devices": add }),
                        )
                    }
                    5 => {
                        let d = device(rng.gen_range(0..DEVICES));
                        let after = Doc {
                            devices: cur.devices.iter().filter(|x| **x != d).cloned().collect(),
                            ..cur.clone()
                        };
                        (
                            Pending::Update { slot: s, after },
                            "DELETE",
                            format!("{path}/devices/{d}"),
                            "",
                            Value::Null,
                        )
                    }
                    _ => (Pending::Delete { slot: s }, "DELETE", path, "", Value::Null),
                }
            }
        };
        let body = (!ctype.is_empty()).then_some((ctype, &body));
        let resp = match client.send(method, &path, body) {
            Ok(r) => r,
            Err(e) => {
                assert!(
                    killed.load(Ordering::SeqCst),
                    "thread {t}: {method} {path} failed before the kill: {e}"
                );
                return (Some(pending), acked, new_ids);
            }
        };
        assert!(
            (200..300).contains(&resp.status),
            "thread {t}: {method} {path} answered {}: {}",
            resp.status,
            resp.text()
        );
        acked += 1;
        let v = resp.json();
        match pending {
            Pending::Create { doc, .. } => {
                let id = parse_id(&v["id"]);
                assert!(
                    id >= min_new_id,
                    "grp-{id} created after a restart is not above every earlier ID (< {min_new_id})"
                );
                assert_eq!(Doc::from_json(&v), doc, "create answer");
                new_ids.push(id);
                slot.group = Some((id, doc));
            }
            Pending::Update { after, .. } => {
                assert_eq!(Doc::from_json(&v), after, "{method} {path} answer");
                let old = slot.group.as_ref().map(|(_, d)| d.name.clone());
                if old.as_deref() != Some(after.name.as_str()) {
                    slot.released.extend(old);
                }
                if let Some((_, d)) = &mut slot.group {
                    *d = after;
                }
            }
            Pending::Delete { .. } => {
                if let Some((_, d)) = slot.group.take() {
                    slot.released.push(d.name);
                }
            }
        }
    }
    (None, acked, new_ids)
}

fn parse_id(v: &Value) -> u64 {
    v.as_str()
        .and_then(|s| s.strip_prefix("grp-"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a group ID: {v}"))
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let rounds = env_u64("FLEETGROUPS_CRASH_ROUNDS", 3);
    let seed = env_u64("FLEETGROUPS_CRASH_SEED", 0x5eed_f1ee7);
    let started = Instant::now();
    let mut options = Options::default();
    if let Ok(d) = std::env::var("FLEETGROUPS_CRASH_DURABILITY") {
        options = options.env("FLEETGROUPS_STORAGE_DURABILITY", &d);
    }
    // Each round tries the key a rotation replaced; the failed-login limit would
    // start answering those (and, per address, everything) with 429.
    options = options.env("FLEETGROUPS_AUTH_MAX_FAILED_LOGINS", "1000000");
    let powercut = PowerCut::from_env();
    if let Some(p) = &powercut {
        options = p.options(options);
    }
    let mut reverted = 0;
    let mut reordered = ReorderCut::default();
    let mut reordered_rounds = 0;
    let mut server = TestServer::with(options);
    let mut token = server.admin_token();
    // User `rot` gets its key rotated through the admin socket during every round.
    let mut rot_key = server.cli(&["user", "add", "rot"]).key();
    let mut model = Model {
        slots: vec![vec![Slot::default(); SLOTS]; THREADS],
        created: BTreeSet::new(),
        feed_after: 0,
        latest: HashMap::new(),
    };
    let mut tally = Tally::default();
    let mut delays = Vec::new();
    for round in 0..rounds {
        let mut rng = StdRng::seed_from_u64(seed ^ round.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let delay = Duration::from_micros(rng.gen_range(2_000..400_000));
        delays.push(delay);
        let min_new_id = model.created.last().map_or(1, |m| m + 1);
        let killed = AtomicBool::new(false);
        let client = Client {
            addr: server.addr,
            token: token.clone(),
        };
        let mut thread_rngs: Vec<StdRng> = (0..THREADS)
            .map(|t| StdRng::seed_from_u64(rng.gen::<u64>() ^ t as u64))
            .collect();
        let (results, rotations): (Vec<WriterResult>, _) = std::thread::scope(|scope| {
            let rotator = {
                let (server, killed) = (&server, &killed);
                scope.spawn(move || rotate_during(server, killed))
            };
            let handles: Vec<_> = model
                .slots
                .iter_mut()
                .zip(thread_rngs.iter_mut())
                .enumerate()
                .map(|(t, (slots, trng))| {
                    let (client, killed) = (&client, &killed);
                    scope.spawn(move || writer(t, client, slots, trng, min_new_id, killed))
                })
                .collect();
            // The kill moment is the experiment's variable, drawn from the seeded RNG.
            std::thread::sleep(delay);
            killed.store(true, Ordering::SeqCst);
            server.signal("KILL");
            let results = handles
                .into_iter()
                .map(|h| h.join().expect("writer thread"))
                .collect();
            (results, rotator.join().expect("rotation thread"))
        });
        server.kill9();
        if let Some(p) = &powercut {
            match p.mode {
                CutMode::NothingUnsynced => reverted += p.cut(),
                CutMode::Reorder => {
                    // Its own RNG, so the kill moments and the writes are those of the
                    // other modes for the same seed.
                    let cut_seed = seed ^ round.wrapping_mul(0xc2b2_ae3d_27d4_eb4f) ^ 0x0c07;
                    let mut cut_rng = StdRng::seed_from_u64(cut_seed);
                    let keep = cut_rng.gen_range(0.0..=1.0);
                    let c = p.cut_reordered(&mut cut_rng, keep);
                    let files: Vec<String> = c
                        .detail
                        .iter()
                        .map(|(f, k, u)| format!("{f} {k}/{u}"))
                        .collect();
                    println!(
                        "round {round}: reordering power cut (cut seed {cut_seed:#x}, keep {keep:.2}): {} unsynced pages in {} files, {} kept ({} behind an undone one), {} undone (kept/undone: {})",
                        c.kept + c.undone,
                        c.files,
                        c.kept,
                        c.behind,
                        c.undone,
                        files.join(", ")
                    );
                    reordered.files += c.files;
                    reordered.kept += c.kept;
                    reordered.undone += c.undone;
                    reordered.behind += c.behind;
                    reordered_rounds += usize::from(c.behind > 0);
                }
            }
        }
        let mut pendings = Vec::new();
        for (t, (pending, acked, new_ids)) in results.into_iter().enumerate() {
            tally.acknowledged += acked;
            for id in new_ids {
                assert!(model.created.insert(id), "grp-{id} was acknowledged twice");
            }
            if let Some(p) = pending {
                pendings.push((t, p));
            }
        }
        tally.in_flight += pendings.len();

        // Rotate the key while the server is down; the old token must die with it.
        let out = server.cli(&["user", "rotate-key", "admin"]);
        assert_eq!(out.code, 0, "rotate-key: {}", out.stderr);
        let key = out.stdout.trim().to_string();
        server.restart();
        let old = server.req("GET", "/api/groups").bearer(&token).send();
        old.expect_error(401, "unauthorized");
        token = server.login("admin", &key);
        rot_key = check_rotations(&server, rot_key, rotations, &mut tally, round);
        let client = Client {
            addr: server.addr,
            token: token.clone(),
        };
        verify(
            &client, &mut model, &pendings, min_new_id, &mut tally, round,
        );
    }
    let elapsed = started.elapsed();
    delays.sort();
    match powercut.as_ref().map(|p| p.mode) {
        Some(CutMode::NothingUnsynced) => {
            println!("power cut: {reverted} unsynced writes undone over {rounds} cuts")
        }
        Some(CutMode::Reorder) => println!(
            "reordering power cut: {} unsynced 4 KiB pages over {rounds} cuts ({} file cuts), {} kept ({} behind an undone page of their file, in {reordered_rounds} cuts), {} undone",
            reordered.kept + reordered.undone,
            reordered.files,
            reordered.kept,
            reordered.behind,
            reordered.undone
        ),
        None => {}
    }
    println!(
        "crash: {rounds} rounds (seed {seed:#x}), {} acknowledged writes and {} key rotations through the admin socket, {} in flight at the kill ({} applied wholly, {} absent wholly), {} group states and {} index entries checked, {} lost, kill delays {:?}..{:?} (median {:?}), {:.1} s",
        tally.acknowledged,
        tally.rotations,
        tally.in_flight,
        tally.in_flight_applied,
        tally.in_flight - tally.in_flight_applied,
        tally.groups_checked,
        tally.index_checks,
        tally.lost,
        delays.first().copied().unwrap_or_default(),
        delays.last().copied().unwrap_or_default(),
        delays.get(delays.len() / 2).copied().unwrap_or_default(),
        elapsed.as_secs_f64()
    );
    assert_eq!(tally.lost, 0);
}

/// Rotates user `rot`'s key with the CLI (through the admin socket) until the kill.
/// Returns the keys acknowledged (exit 0, key printed), in order, and whether a rotation
/// was cut off by the kill (it may or may not have happened).
fn rotate_during(server: &TestServer, killed: &AtomicBool) -> (Vec<String>, bool) {
    let mut keys = Vec::new();
    while !killed.load(Ordering::SeqCst) {
        let out = server.cli(&["user", "rotate-key", "rot"]);
        if out.code == 0 {
            keys.push(out.key());
        } else {
            assert!(
                killed.load(Ordering::SeqCst),
                "rotate-key failed before the kill: {}",
                out.stderr
            );
            return (keys, true);
        }
    }
    (keys, false)
}

/// After the restart: the last acknowledged key of `rot` works (unless a rotation was
/// in flight, which may have replaced it), and the key before it does not. Returns the
/// key to use from now on.
fn check_rotations(
    server: &TestServer,
    mut key: String,
    (keys, in_flight): (Vec<String>, bool),
    tally: &mut Tally,
    round: u64,
) -> String {
    tally.rotations += keys.len();
    let mut previous = None;
    if let Some(last) = keys.last() {
        previous = Some(std::mem::replace(&mut key, last.clone()));
    }
    let login = |k: &str| {
        server
            .req("POST", "/api/Auth/Token")
            .json(&json!({"userName": "rot", "apiKey": k}))
            .send()
    };
    if let Some(old) = previous {
        login(&old).expect_error(401, "invalid_credentials");
    }
    let r = login(&key);
    match (r.status, in_flight) {
        (200, _) => key,
        (401, true) => {
            // The cut-off rotation happened; its key was never shown. Start afresh.
            let out = server.cli(&["user", "rotate-key", "rot"]);
            out.key()
        }
        _ => panic!(
            "round {round}: the last acknowledged key of rot answers {}: {}",
            r.status,
            r.text()
        ),
    }
}

/// Checks the restarted server against the model and resolves the in-flight writes.
fn verify(
    client: &Client,
    model: &mut Model,
    pendings: &[(usize, Pending)],
    min_new_id: u64,
    tally: &mut Tally,
    round: u64,
) {
    let list = client.must("GET", "/api/groups", None);
    assert_eq!(list.status, 200, "{}", list.text());
    let mut present: BTreeMap<u64, Value> = list.json()["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| (parse_id(&g["id"]), g.clone()))
        .collect();
    let by_name: HashMap<String, u64> = present
        .iter()
        .map(|(id, g)| (g["name"].as_str().unwrap_or("").to_string(), *id))
        .collect();

    // Resolve each in-flight write: wholly applied or wholly absent.
    for (t, p) in pendings {
        match p {
            Pending::Create { slot, doc } => {
                let s = &mut model.slots[*t][*slot];
                match by_name.get(&doc.name) {
                    Some(&id) => {
                        assert_eq!(
                            Doc::from_json(&present[&id]),
                            *doc,
                            "round {round}: in-flight create grp-{id} is not whole"
                        );
                        assert!(id >= min_new_id, "in-flight create reused grp-{id}");
                        assert!(model.created.insert(id));
                        s.group = Some((id, doc.clone()));
                        tally.in_flight_applied += 1;
                    }
                    None => s.released.push(doc.name.clone()),
                }
            }
            Pending::Update { slot, after } => {
                let s = &mut model.slots[*t][*slot];
                let (id, before) = s.group.clone().expect("update of a known group");
                let g = present
                    .get(&id)
                    .unwrap_or_else(|| panic!("round {round}: grp-{id} vanished during an update"));
                let now = Doc::from_json(g);
                if now == *after && now != before {
                    tally.in_flight_applied += 1;
                    if before.name != after.name {
                        s.released.push(before.name.clone());
                    }
                    s.group = Some((id, after.clone()));
                } else {
                    assert_eq!(
                        now, before,
                        "round {round}: grp-{id} is neither the acknowledged state nor the in-flight one"
                    );
                    if before.name != after.name {
                        s.released.push(after.name.clone());
                    }
                }
            }
            Pending::Delete { slot } => {
                let s = &mut model.slots[*t][*slot];
                let (id, before) = s.group.clone().expect("delete of a known group");
                match present.get(&id) {
                    None => {
                        tally.in_flight_applied += 1;
                        s.released.push(before.name.clone());
                        s.group = None;
                    }
                    Some(g) => assert_eq!(
                        Doc::from_json(g),
                        before,
                        "round {round}: grp-{id} half-deleted"
                    ),
                }
            }
        }
    }

    // Every acknowledged state is there exactly; nothing else is.
    for (t, slots) in model.slots.iter().enumerate() {
        for (s, slot) in slots.iter().enumerate() {
            if let Some((id, doc)) = &slot.group {
                tally.groups_checked += 1;
                match present.remove(id) {
                    Some(g) if Doc::from_json(&g) == *doc => {}
                    Some(g) => {
                        tally.lost += 1;
                        panic!("round {round}: thread {t} slot {s} grp-{id}: acknowledged {doc:?}, found {g}");
                    }
                    None => {
                        tally.lost += 1;
                        panic!(
                            "round {round}: thread {t} slot {s}: acknowledged grp-{id} is missing"
                        );
                    }
                }
            }
        }
    }
    assert!(
        present.is_empty(),
        "round {round}: groups nobody created: {present:?}"
    );

    check_feed(client, model, round);
    check_names(client, model, tally, round);
    check_devices(client, model, tally, round);
}

/// The latest change-feed entry of every group is its current state (or `deleted`).
fn check_feed(client: &Client, model: &mut Model, round: u64) {
    loop {
        let r = client.must(
            "GET",
            &format!("/api/changes?after={}&limit=1000", model.feed_after),
            None,
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        let changes = v["changes"].as_array().expect("changes");
        for c in changes {
            let seq = c["seq"].as_u64().expect("seq");
            assert!(seq > model.feed_after, "feed out of order at {seq}");
            model.feed_after = seq;
            model.latest.insert(parse_id(&c["id"]), c.clone());
        }
        if changes.is_empty() || v["next"].is_null() {
            break;
        }
    }
    for (t, slots) in model.slots.iter().enumerate() {
        for slot in slots {
            if let Some((id, _)) = &slot.group {
                let g = client.must("GET", &format!("/api/groups/grp-{id}"), None);
                assert_eq!(g.status, 200, "{}", g.text());
                let mut g = g.json();
                let obj = g.as_object_mut().expect("object");
                for k in ["success", "error", "apiUsage", "apiDailyUsage"] {
                    obj.remove(k);
                }
                let entry = model
                    .latest
                    .get(id)
                    .unwrap_or_else(|| panic!("round {round}: grp-{id} has no change entry"));
                assert_ne!(entry["op"], "deleted", "round {round}: grp-{id} is live");
                assert_eq!(
                    entry["group"], g,
                    "round {round}: thread {t}: latest change of grp-{id} is not its state"
                );
            }
        }
    }
    let live: BTreeSet<u64> = model
        .slots
        .iter()
        .flatten()
        .filter_map(|s| s.group.as_ref().map(|(id, _)| *id))
        .collect();
    for (id, entry) in &model.latest {
        assert!(
            model.created.contains(id),
            "round {round}: change entry for grp-{id}, which nobody created"
        );
        if !live.contains(id) {
            assert_eq!(
                entry["op"], "deleted",
                "round {round}: grp-{id} is gone but its last change is {entry}"
            );
            assert_eq!(entry["group"], Value::Null);
        }
    }
    for id in &model.created {
        assert!(
            model.latest.contains_key(id),
            "round {round}: grp-{id} has no change entry"
        );
    }
}

/// A taken name 409s (case-insensitively); a released name can be taken again, which
/// also creates or renames groups the next round keeps checking.
fn check_names(client: &Client, model: &mut Model, tally: &mut Tally, round: u64) {
    for slots in &mut model.slots {
        for slot in slots.iter_mut() {
            if let Some((_, doc)) = &slot.group {
                let r = client.must(
                    "POST",
                    "/api/groups",
                    Some((
                        "application/json",
                        &json!({"name": doc.name.to_uppercase()}),
                    )),
                );
                tally.index_checks += 1;
                r.expect_error(409, "name_conflict");
            }
            let Some(free) = slot.released.pop() else {
                continue;
            };
            slot.released.clear();
            tally.index_checks += 1;
            match &mut slot.group {
                Some((id, doc)) => {
                    let mut renamed = doc.clone();
                    renamed.name = free;
                    let r = client.must(
                        "PUT",
                        &format!("/api/groups/grp-{id}"),
                        Some(("application/json", &renamed.body())),
                    );
                    assert_eq!(
                        r.status,
                        200,
                        "round {round}: released name {} is still taken: {}",
                        renamed.name,
                        r.text()
                    );
                    slot.released.push(std::mem::replace(doc, renamed).name);
                }
                None => {
                    let doc = Doc {
                        name: free,
                        description: None,
                        devices: vec![device(0)],
                    };
                    let r = client.must(
                        "POST",
                        "/api/groups",
                        Some(("application/json", &doc.body())),
                    );
                    assert_eq!(
                        r.status,
                        201,
                        "round {round}: released name {} is still taken: {}",
                        doc.name,
                        r.text()
                    );
                    let id = parse_id(&r.json()["id"]);
                    let min = model.created.last().map_or(1, |m| m + 1);
                    assert!(
                        id >= min,
                        "round {round}: grp-{id} reused (expected >= {min})"
                    );
                    model.created.insert(id);
                    slot.group = Some((id, doc));
                }
            }
        }
    }
    // The verification's own writes are in the feed too.
    check_feed_tail(client, model);
}

fn check_feed_tail(client: &Client, model: &mut Model) {
    loop {
        let r = client.must(
            "GET",
            &format!("/api/changes?after={}&limit=1000", model.feed_after),
            None,
        );
        let v = r.json();
        let changes = v["changes"].as_array().expect("changes");
        for c in changes {
            model.feed_after = c["seq"].as_u64().expect("seq");
            model.latest.insert(parse_id(&c["id"]), c.clone());
        }
        if changes.is_empty() || v["next"].is_null() {
            break;
        }
    }
}

/// The reverse index answers exactly the groups that hold each device.
fn check_devices(client: &Client, model: &Model, tally: &mut Tally, round: u64) {
    let mut expected: BTreeMap<String, BTreeSet<u64>> =
        (0..DEVICES).map(|i| (device(i), BTreeSet::new())).collect();
    for slot in model.slots.iter().flatten() {
        if let Some((id, doc)) = &slot.group {
            for d in &doc.devices {
                if let Some(groups) = expected.get_mut(d) {
                    groups.insert(*id);
                }
            }
        }
    }
    let ids = |r: Resp| -> BTreeSet<u64> {
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["groups"]
            .as_array()
            .expect("groups")
            .iter()
            .map(|g| parse_id(&g["id"]))
            .collect()
    };
    for (d, want) in &expected {
        let reverse = ids(client.must("GET", &format!("/api/devices/{d}/groups"), None));
        assert_eq!(&reverse, want, "round {round}: /api/devices/{d}/groups");
        let filtered = ids(client.must("GET", &format!("/api/groups?device={d}"), None));
        assert_eq!(&filtered, want, "round {round}: /api/groups?device={d}");
        tally.index_checks += 2;
    }
}

/// The reorder mode on a file written through the shim by `dd`: three synced pages,
/// then one unsynced write spanning pages 0–3 (the last one past the synced end). With keep 0 the
/// file is the synced one; with keep 1 the written one; in between every page is
/// wholly one or the other, some writes are half kept, and the file ends where the
/// last page chosen ends (here the synced end, or the write's end when its last page
/// is kept).
#[test]
fn reorder_cut_keeps_or_undoes_whole_pages() {
    let data = tempfile::tempdir().expect("tempdir");
    let dir = std::fs::canonicalize(data.path()).expect("canonical");
    let file = dir.join("f");
    let synced: Vec<u8> = (0..3 * PAGE).map(|i| b'a' + (i / PAGE) as u8).collect();
    let patch = vec![b'z'; 3 * PAGE + 1000];
    let at = 1000;
    let mut written = synced.clone();
    written.resize(at + patch.len(), 0);
    written[at..].copy_from_slice(&patch);
    std::fs::write(dir.join("synced"), &synced).expect("write");
    std::fs::write(dir.join("patch"), &patch).expect("write");
    let mut halves = 0;
    let mut behind = 0;
    // One shim for every round: each cut consumes (removes) its undo log.
    let cut = PowerCut::build(CutMode::Reorder);
    for (round, keep) in [
        (0u64, 0.0),
        (1, 1.0),
        (2, 0.5),
        (3, 0.5),
        (4, 0.5),
        (5, 0.5),
    ] {
        let dd = |args: &[String]| {
            let status = std::process::Command::new("dd")
                .args(args)
                .env("LD_PRELOAD", cut.dir.path().join("powercut.so"))
                .env("POWERCUT_DIR", &dir)
                .env("POWERCUT_LOG", cut.log())
                .stderr(std::process::Stdio::null())
                .status()
                .expect("run dd");
            assert!(status.success(), "dd {args:?}");
        };
        std::fs::remove_file(&file).ok();
        let f = file.display();
        dd(&[
            format!("if={}", dir.join("synced").display()),
            format!("of={f}"),
            "conv=fsync".into(),
        ]);
        dd(&[
            format!("if={}", dir.join("patch").display()),
            format!("of={f}"),
            format!("bs={}", patch.len()),
            format!("seek={at}"),
            "oflag=seek_bytes".into(),
            "conv=notrunc".into(),
        ]);
        let now = std::fs::read(&file).expect("read");
        assert!(now == written, "dd wrote {}", diff(&now, &written));
        let mut rng = StdRng::seed_from_u64(round.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let c = cut.cut_reordered(&mut rng, keep);
        let after = std::fs::read(&file).expect("read");
        assert_eq!(c.kept + c.undone, 4, "pages 0-3 changed: {c:?}");
        match keep {
            0.0 => assert!(
                after == synced,
                "keep 0 is not the synced file: {}",
                diff(&after, &synced)
            ),
            1.0 => assert!(
                after == written,
                "keep 1 is not the file as written: {}",
                diff(&after, &written)
            ),
            _ => {
                assert!(
                    after.len() == synced.len() || after.len() == written.len(),
                    "round {round}: the file ends at the synced end or at the kept last page"
                );
                for (p, page) in after.chunks(PAGE).enumerate() {
                    let range = p * PAGE..(p * PAGE + page.len());
                    assert!(
                        Some(page) == written.get(range.clone()) || Some(page) == synced.get(range),
                        "round {round}: page {p} is neither its synced nor its written bytes"
                    );
                }
                if c.kept > 0 && c.undone > 0 {
                    halves += 1;
                }
                behind += c.behind;
            }
        }
    }
    assert!(
        halves > 0,
        "no seed kept part of the write and undid the rest"
    );
    assert!(behind > 0, "no seed kept a page behind an undone one");
}

/// Where two files differ (for a failure message; the files are too large to print).
fn diff(got: &[u8], want: &[u8]) -> String {
    let at = got.iter().zip(want).position(|(g, w)| g != w);
    format!(
        "{} bytes, expected {}; first difference at {at:?}",
        got.len(),
        want.len()
    )
}

/// How a simulated power cut treats what was written but not yet synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CutMode {
    /// `FLEETGROUPS_CRASH_POWERCUT=1` (or any value but `reorder`): nothing unsynced
    /// survives; every write since its file's last sync is undone, newest first.
    NothingUnsynced,
    /// `FLEETGROUPS_CRASH_POWERCUT=reorder`: a disk that reorders writes. Each unsynced
    /// 4 KiB page of each file is kept or undone at random (seeded per round); a write
    /// spanning pages may be half kept. Synced pages are always kept.
    Reorder,
}

/// The size of a page the reorder mode keeps or undoes as a whole: what a drive (or
/// the page cache writing back) persists in one piece.
const PAGE: usize = 4096;

/// One record of the shim's undo log (see `tests/powercut/powercut.c`).
struct UndoRec {
    kind: u8,
    path: String,
    /// W/T: where the saved bytes go back, and the file's size before the write.
    at: u64,
    size: u64,
    /// W/T: the overwritten bytes, as a range of the log.
    old: std::ops::Range<usize>,
}

/// What the reorder mode did at one cut.
#[derive(Debug, Default, Clone)]
struct ReorderCut {
    files: usize,
    kept: usize,
    undone: usize,
    /// Kept pages with an undone page of the same file before them: the state only a
    /// reordering disk leaves (a later write on disk, an earlier one not).
    behind: usize,
    /// Per file cut: its name, pages kept, pages undone.
    detail: Vec<(String, usize, usize)>,
}

/// The power-cut simulation: the shim, built for this run, and its undo log.
struct PowerCut {
    dir: tempfile::TempDir,
    mode: CutMode,
}

impl PowerCut {
    fn from_env() -> Option<PowerCut> {
        let value = std::env::var("FLEETGROUPS_CRASH_POWERCUT").ok()?;
        Some(PowerCut::build(match value.as_str() {
            "reorder" => CutMode::Reorder,
            _ => CutMode::NothingUnsynced,
        }))
    }

    fn build(mode: CutMode) -> PowerCut {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/powercut/powercut.c");
        let status = std::process::Command::new("cc")
            .args(["-shared", "-fPIC", "-O2", "-o"])
            .arg(dir.path().join("powercut.so"))
            .arg(src)
            .arg("-ldl")
            .status()
            .expect("run cc");
        assert!(status.success(), "building the power-cut shim failed");
        PowerCut { dir, mode }
    }

    fn log(&self) -> std::path::PathBuf {
        self.dir.path().join("undo.log")
    }

    /// The server (and the CLI) run under the shim, tracking every file they write
    /// below the temporary directory (the data directory is in there).
    fn options(&self, options: Options) -> Options {
        let shim = self.dir.path().join("powercut.so");
        let tracked = std::fs::canonicalize(std::env::temp_dir()).expect("temp dir");
        options
            .env("LD_PRELOAD", &shim.to_string_lossy())
            .env("POWERCUT_DIR", &tracked.to_string_lossy())
            .env("POWERCUT_LOG", &self.log().to_string_lossy())
    }

    /// Parses the undo log. The shim logs a record before doing the write, so a record
    /// torn by the kill belongs to a write that never ran: parsing stops there.
    fn parse(bytes: &[u8]) -> Vec<UndoRec> {
        let mut recs = Vec::new();
        let mut i = 0;
        let take = |i: &mut usize, n: usize| -> std::ops::Range<usize> {
            let r = *i..*i + n;
            *i += n;
            r
        };
        let u64_at =
            |r: std::ops::Range<usize>| u64::from_ne_bytes(bytes[r].try_into().expect("8 bytes"));
        while i < bytes.len() {
            let kind = bytes[i];
            i += 1;
            if i + 4 > bytes.len() {
                break;
            }
            let plen = u32::from_ne_bytes(bytes[take(&mut i, 4)].try_into().expect("4")) as usize;
            if i + plen > bytes.len() {
                break;
            }
            let path = String::from_utf8_lossy(&bytes[take(&mut i, plen)]).into_owned();
            let (mut at, mut size, mut old) = (0, 0, 0..0);
            if kind != b'S' {
                if i + 24 > bytes.len() {
                    break;
                }
                at = u64_at(take(&mut i, 8));
                size = u64_at(take(&mut i, 8));
                let saved = u64_at(take(&mut i, 8)) as usize;
                if i + saved > bytes.len() {
                    break;
                }
                old = take(&mut i, saved);
            }
            recs.push(UndoRec {
                kind,
                path,
                at,
                size,
                old,
            });
        }
        recs
    }

    /// The index of each file's last successful fsync/fdatasync record.
    fn last_syncs(recs: &[UndoRec]) -> HashMap<&str, usize> {
        let mut last_sync = HashMap::new();
        for (n, r) in recs.iter().enumerate() {
            if r.kind == b'S' {
                last_sync.insert(r.path.as_str(), n);
            }
        }
        last_sync
    }

    /// After the SIGKILL: undoes, newest first, every write of each file made after
    /// that file's last successful fsync/fdatasync. Returns the writes undone.
    fn cut(&self) -> usize {
        use std::os::unix::fs::FileExt;
        let bytes = std::fs::read(self.log()).unwrap_or_default();
        let recs = Self::parse(&bytes);
        let last_sync = Self::last_syncs(&recs);
        let mut undone = 0;
        for (n, r) in recs.iter().enumerate().rev() {
            if r.kind == b'S' || last_sync.get(r.path.as_str()).is_some_and(|s| n < *s) {
                continue;
            }
            let Ok(f) = std::fs::OpenOptions::new().write(true).open(&r.path) else {
                continue;
            };
            f.write_all_at(&bytes[r.old.clone()], r.at)
                .expect("undo write");
            f.set_len(r.size).expect("undo length");
            undone += 1;
        }
        std::fs::remove_file(self.log()).ok();
        undone
    }

    /// After the SIGKILL, in the reorder mode: for each file written since its last
    /// sync, rebuilds its synced image (the undo log replayed backwards in memory) and
    /// compares it with the file now, page by page. Each page that differs is unsynced:
    /// it is kept (its bytes now) with probability `keep`, else undone (its synced
    /// bytes). The file ends where the last page chosen ends, so a kept page past the
    /// synced end extends the file and an undone page before it reads as zeros (a
    /// hole); an undone page past the current end brings back what a truncation cut.
    /// Pages that did not change, synced ones among them, stay as they are.
    fn cut_reordered(&self, rng: &mut StdRng, keep: f64) -> ReorderCut {
        let bytes = std::fs::read(self.log()).unwrap_or_default();
        let recs = Self::parse(&bytes);
        let last_sync = Self::last_syncs(&recs);
        // The unsynced records of each file, oldest first; files in path order so a
        // seed always draws the same pages from the same log.
        let mut unsynced: BTreeMap<&str, Vec<&UndoRec>> = BTreeMap::new();
        for (n, r) in recs.iter().enumerate() {
            if r.kind == b'S' || last_sync.get(r.path.as_str()).is_some_and(|s| n < *s) {
                continue;
            }
            unsynced.entry(r.path.as_str()).or_default().push(r);
        }
        let mut out = ReorderCut::default();
        for (path, recs) in unsynced {
            let Ok(now) = std::fs::read(path) else {
                continue; // removed or renamed since: directory operations are not simulated
            };
            let mut synced = now.clone();
            for r in recs.iter().rev() {
                let old = &bytes[r.old.clone()];
                let at = r.at as usize;
                if synced.len() < at + old.len() {
                    synced.resize(at + old.len(), 0);
                }
                synced[at..at + old.len()].copy_from_slice(old);
                synced.resize(r.size as usize, 0);
            }
            let page = |img: &[u8], p: usize| -> std::ops::Range<usize> {
                (p * PAGE).min(img.len())..((p + 1) * PAGE).min(img.len())
            };
            let pages = now.len().max(synced.len()).div_ceil(PAGE);
            let mut chosen: Vec<&[u8]> = Vec::with_capacity(pages);
            let (kept0, undone0) = (out.kept, out.undone);
            let mut touched = false;
            let mut undone_before = false;
            for p in 0..pages {
                let (n, s) = (&now[page(&now, p)], &synced[page(&synced, p)]);
                if n == s {
                    chosen.push(n);
                } else if rng.gen_bool(keep) {
                    touched = true;
                    out.kept += 1;
                    out.behind += usize::from(undone_before);
                    chosen.push(n);
                } else {
                    touched = true;
                    undone_before = true;
                    out.undone += 1;
                    chosen.push(s);
                }
            }
            if !touched {
                continue;
            }
            out.files += 1;
            let name = std::path::Path::new(path)
                .file_name()
                .map_or_else(|| path.to_string(), |n| n.to_string_lossy().into_owned());
            out.detail
                .push((name, out.kept - kept0, out.undone - undone0));
            let len = chosen
                .iter()
                .enumerate()
                .filter(|(_, c)| !c.is_empty())
                .map(|(p, c)| p * PAGE + c.len())
                .max()
                .unwrap_or(0);
            let mut image = vec![0u8; len];
            for (p, c) in chosen.iter().enumerate().filter(|(_, c)| !c.is_empty()) {
                image[p * PAGE..p * PAGE + c.len()].copy_from_slice(c);
            }
            if image != now {
                std::fs::write(path, &image).expect("write the reordered image");
            }
        }
        std::fs::remove_file(self.log()).ok();
        out
    }
}
