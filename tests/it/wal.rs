//! The write-ahead log where it is busiest, under `kill -9`: a start that replays the
//! log after a crash, killed at moments spread over its replay and what follows, and
//! writes under frequent checkpoints, killed at seeded moments. Every acknowledged
//! write must be there after the next start, whole (docs/design/store.md, "Log first,
//! apply after"). The sleeps here are the injected fault (when the kill lands), never
//! a synchronisation.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{env_u64, Options, TestServer};

/// A group's device list: `n` devices named after the group, so a read can tell a
/// whole list from a torn one.
fn devices(group: usize, n: usize) -> Vec<String> {
    (0..n).map(|d| format!("g{group}-device-{d:05}")).collect()
}

/// Reads every acknowledged group back and checks its name and whole device list.
fn assert_all_present(server: &TestServer, acked: &[(String, usize, usize)], when: &str) {
    let admin = server.client(&server.admin_token());
    for (id, group, n) in acked {
        let r = admin.get(&format!("/api/groups/{id}"));
        assert_eq!(
            r.status,
            200,
            "{when}: acknowledged {id} is gone: {}",
            r.text()
        );
        let g = r.json();
        let g = g.get("group").unwrap_or(&g);
        assert_eq!(g["name"], format!("g{group}"), "{when}: {id}");
        let got: Vec<String> = g["devices"]
            .as_array()
            .expect("devices")
            .iter()
            .map(|d| d.as_str().expect("a device").to_string())
            .collect();
        assert_eq!(got, devices(*group, *n), "{when}: {id}'s devices");
    }
}

/// Copies a stopped data directory (files and directories, recursively).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else if entry.file_type().expect("type").is_file() {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// A tiny seeded generator (the harness reports its seed, as crash.rs does).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n.max(1)
    }
}

/// A crashed store with megabytes of log past its checkpoint is started again and
/// killed at moments spread over the start — during the replay, during the checkpoint
/// the open makes after it, before serving — each time from the same crashed copy;
/// the start after each kill has every acknowledged group, whole.
#[test]
fn kills_during_the_replay_after_a_crash_lose_nothing() {
    // No checkpoint while writing: the whole history stays in the log to replay.
    let options = Options::default()
        .env("FLEETGROUPS_STORAGE_CHECKPOINT_SECS", "86400")
        .env("FLEETGROUPS_STORAGE_CHECKPOINT_MB", "1024");
    let mut server = TestServer::with(options);
    let admin = server.client(&server.admin_token());
    let mut acked = Vec::new();
    for group in 0..48 {
        let n = 1_500 + group * 7;
        let g = admin.create(&json!({"name": format!("g{group}"), "devices": devices(group, n)}));
        acked.push((g["id"].as_str().expect("id").to_string(), group, n));
    }
    server.kill9();
    let data = server.data_dir();
    let crashed = server.dir.path().join("crashed");
    copy_dir(&data, &crashed);

    // One start left alone: how long the replay and the start take.
    let started = Instant::now();
    server.restart();
    let ready = started.elapsed();
    let log = server.log();
    assert!(
        log.contains("replayed the store's write-ahead log"),
        "the start after the crash replayed nothing:\n{log}"
    );
    let replay_line = log
        .lines()
        .find(|l| l.contains("replayed the store's write-ahead log"))
        .unwrap_or_default()
        .to_string();
    println!("wal replay: {replay_line}");
    assert_all_present(&server, &acked, "after an uninterrupted replay");
    server.kill9();

    let seed = env_u64("FLEETGROUPS_WAL_SEED", 0x5eed_0a11);
    let mut rng = Lcg(seed);
    let rounds = env_u64("FLEETGROUPS_WAL_ROUNDS", 5);
    let (mut before_replay_done, mut after) = (0, 0);
    for round in 0..rounds {
        std::fs::remove_dir_all(&data).expect("remove");
        copy_dir(&crashed, &data);
        // Spread over the start, with a seeded jitter inside each slice.
        let slice = ready.as_micros() as u64 / rounds.max(1);
        let at = Duration::from_micros(slice * round + rng.below(slice));
        let text = server.start_killed_after(at);
        if text.contains("replayed the store's write-ahead log") {
            after += 1;
        } else {
            before_replay_done += 1;
        }
        server.restart();
        assert_all_present(&server, &acked, &format!("round {round}, killed at {at:?}"));
        server.kill9();
    }
    println!(
        "wal replay kills: seed {seed:#x}, start took {ready:?}, {rounds} kills: {before_replay_done} before the replay had finished, {after} after it; {} groups checked each time",
        acked.len()
    );
    assert!(
        before_replay_done > 0,
        "no kill landed before the replay finished (start took {ready:?}): the test did not test a killed replay"
    );
}

/// Writers run while checkpoints come every MiB of log (flush sled, fsync, record
/// the checkpoint, recycle segments), and the server is killed at seeded moments; each
/// restart has every acknowledged group, whole.
#[test]
fn kills_while_checkpoints_run_lose_nothing() {
    let options = Options::default().env("FLEETGROUPS_STORAGE_CHECKPOINT_MB", "1");
    let mut server = TestServer::with(options);
    let token = server.admin_token();
    let seed = env_u64("FLEETGROUPS_WAL_SEED", 0x5eed_0a11);
    let mut rng = Lcg(seed);
    let rounds = env_u64("FLEETGROUPS_WAL_ROUNDS", 6);
    let acked: Arc<Mutex<Vec<(String, usize, usize)>>> = Arc::default();
    let mut next_group = 0usize;
    let mut checkpoints = 0.0;
    for round in 0..rounds {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writers: Vec<_> = (0..2)
            .map(|w| {
                let (addr, token) = (server.addr, token.clone());
                let (acked, stop) = (Arc::clone(&acked), Arc::clone(&stop));
                let first = next_group + w * 10_000;
                std::thread::spawn(move || write_until_refused(addr, &token, first, &acked, &stop))
            })
            .collect();
        next_group += 20_000;
        let at = Duration::from_millis(300 + rng.below(1_200));
        std::thread::sleep(at);
        checkpoints = server
            .metric("fleetgroups_store_checkpoints_total")
            .unwrap_or(checkpoints);
        server.kill9();
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for w in writers {
            w.join().expect("writer");
        }
        server.restart();
        let acked = acked.lock().expect("acked").clone();
        assert_all_present(&server, &acked, &format!("round {round}, killed at {at:?}"));
    }
    let n = acked.lock().expect("acked").len();
    println!(
        "wal checkpoint kills: seed {seed:#x}, {rounds} kills, {n} acknowledged groups checked, {checkpoints} checkpoints in the last run before its kill"
    );
    assert!(
        checkpoints >= 1.0,
        "no checkpoint ran before the kill: the test did not kill a store that checkpoints"
    );
}

/// Creates groups of ~600 devices until a request fails (the kill) or `stop`;
/// records each acknowledged one.
fn write_until_refused(
    addr: std::net::SocketAddr,
    token: &str,
    first: usize,
    acked: &Mutex<Vec<(String, usize, usize)>>,
    stop: &std::sync::atomic::AtomicBool,
) {
    for group in first.. {
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let n = 600 + group % 50;
        let body = json!({"name": format!("g{group}"), "devices": devices(group, n)});
        let Some(v) = post(addr, token, &body) else {
            return;
        };
        let id = v["id"].as_str().expect("id").to_string();
        acked.lock().expect("acked").push((id, group, n));
    }
}

/// One POST /api/groups on its own connection; None when it did not answer 201 (the
/// server was killed).
fn post(addr: std::net::SocketAddr, token: &str, body: &Value) -> Option<Value> {
    use std::io::{Read, Write};
    let text = body.to_string();
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let req = format!(
        "POST /api/groups HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let out = String::from_utf8_lossy(&out);
    if !out.starts_with("HTTP/1.1 201") {
        return None;
    }
    let body = out.split("\r\n\r\n").nth(1)?;
    let v: Value = serde_json::from_str(body).ok()?;
    Some(v.get("group").cloned().unwrap_or(v))
}
