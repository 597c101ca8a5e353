//! Starting the server (README.md "Quick start" and docs/operations/storage.md): the first start creates
//! `admin` and its key file (0600) and logs the file's path but never the key; later
//! starts keep both; a second server on the same data directory refuses with a clear
//! message; a store written by another format version is refused untouched; the data
//! directory is owner-only whatever the umask; a store lock held by a CLI command
//! during start-up is waited for.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{open_sled, raw, Options, TestServer};

#[test]
fn the_first_start_creates_admin_and_its_key_file() {
    let mut server = TestServer::start();
    let path = server.data_dir().join("initial-api-key");
    let key = server.admin_key();
    let contents = std::fs::read_to_string(&path).expect("key file");
    assert_eq!(contents, format!("{key}\n"), "the key alone on one line");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&path).expect("metadata").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let log = server.log();
    assert!(
        log.contains("initial-api-key"),
        "the log names the file: {log}"
    );
    assert!(!log.contains(&key), "the key must never be logged");
    assert!(!log.contains(&key["fgk_".len()..]));

    let admin = server.client(&server.admin_token());
    let v = admin.create(&json!({"name": "First"}));
    assert_eq!(v["id"], "grp-1");
    assert!(server.stop().success());
    let rows = server.cli(&["user", "list"]);
    assert!(rows.stdout.contains("admin  default  write"), "{rows:?}");

    // A restart neither replaces the key nor creates another user.
    server.restart();
    assert_eq!(std::fs::read_to_string(&path).expect("key file"), contents);
    let admin = server.client(&server.login("admin", &key));
    assert_eq!(admin.groups().len(), 1);
    assert!(!server.log().contains("first start"), "{}", server.log());
    assert!(server.stop().success());
    let rows = server.cli(&["user", "list"]);
    assert_eq!(
        rows.stdout.lines().count(),
        2,
        "header and admin only: {rows:?}"
    );
}

#[test]
fn a_second_server_on_the_same_data_directory_refuses_to_start() {
    let server = TestServer::start();
    let admin = server.client(&server.admin_token());
    admin.create(&json!({"name": "Kept"}));

    let out = server.second_server();
    assert_ne!(out.code, 0, "{out:?}");
    let text = out.stderr.to_lowercase();
    assert!(
        text.contains("in use") && text.contains("locked"),
        "a clear message: {out:?}"
    );
    assert!(!text.contains("listening on"), "{out:?}");

    // The first server is unharmed.
    assert_eq!(admin.groups().len(), 1);
    admin.create(&json!({"name": "Still writable"}));
}

#[test]
fn a_store_of_another_format_version_is_refused_untouched() {
    let mut server = TestServer::start();
    server
        .client(&server.admin_token())
        .create(&json!({"name": "Old"}));
    assert!(server.stop().success());

    // Pretend a newer binary wrote the store (sled is opened directly, as that binary
    // would have).
    let store = server.data_dir().join("store");
    let set_version = |v: &[u8]| {
        let db = open_sled(&store);
        // Formats 2 to 4: one tree, `m` is the meta key space.
        db.insert(b"mformat_version", v).expect("insert");
        db.flush().expect("flush");
        // That binary stopped; its seal would match its files, not ours.
        let _ = std::fs::remove_file(store.join("seal"));
        // And the marker file a binary reads before it opens sled.
        let text = format!("{}\n", u64::from_be_bytes(v.try_into().expect("8 bytes")));
        std::fs::write(store.join("format_version"), text).expect("marker");
    };
    set_version(&5u64.to_be_bytes());

    let out = server.second_server();
    assert_ne!(out.code, 0, "{out:?}");
    assert!(
        out.stderr.contains("format version 5") && out.stderr.contains("nothing was changed"),
        "{out:?}"
    );
    let out = server.cli(&["user", "list"]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("format version 5"), "{out:?}");
    {
        let db = open_sled(&store);
        let v = db.get(b"mformat_version").expect("get").expect("version");
        assert_eq!(&v[..], &5u64.to_be_bytes(), "the version was not rewritten");
    }

    // Back to this binary's version, everything is there.
    set_version(&4u64.to_be_bytes());
    server.restart();
    assert_eq!(
        server.client(&server.admin_token()).group("grp-1")["name"],
        "Old"
    );
}

#[test]
fn keys_and_tokens_are_not_stored_in_plain_text() {
    let mut server = TestServer::start();
    let key = server.admin_key();
    let token = server.admin_token();
    server.client(&token).create(&json!({"name": "Something"}));
    assert!(server.stop().success());
    let second_key = server.cli(&["user", "add", "second"]).key();
    // Scan every file of the store for the random part of each secret, in the
    // forms a careless store would keep: as text, and as raw bytes.
    let secrets: Vec<Vec<u8>> = [
        &key["fgk_".len()..],
        &token["fgt_".len()..],
        &second_key["fgk_".len()..],
    ]
    .iter()
    .flat_map(|hex| {
        let raw: Vec<u8> = (0..hex.len() / 2)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex"))
            .collect();
        [hex.as_bytes().to_vec(), raw]
    })
    .collect();
    let mut files = vec![server.data_dir().join("store")];
    let mut scanned = 0;
    while let Some(p) = files.pop() {
        if p.is_dir() {
            for e in std::fs::read_dir(&p).expect("read_dir") {
                files.push(e.expect("entry").path());
            }
            continue;
        }
        let bytes = std::fs::read(&p).expect("read");
        scanned += bytes.len();
        for s in &secrets {
            assert!(
                !bytes.windows(s.len()).any(|w| w == s.as_slice()),
                "a secret is stored in plain text in {}",
                p.display()
            );
        }
    }
    assert!(scanned > 0, "the store has files");
}

/// Every directory and file below `dir` with a mode that group or others can use.
fn loose_modes(dir: &std::path::Path) -> Vec<(String, u32)> {
    let mut loose = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let mode = std::fs::metadata(&d)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777;
        if mode != 0o700 {
            loose.push((d.display().to_string(), mode));
        }
        for entry in std::fs::read_dir(&d).expect("read_dir") {
            let entry = entry.expect("entry");
            let kind = entry.file_type().expect("file type");
            let mode = entry.metadata().expect("metadata").permissions().mode() & 0o777;
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() && mode & 0o077 != 0 {
                loose.push((entry.path().display().to_string(), mode));
            }
        }
    }
    loose
}

/// Serves under `umask 022` (what a shell or a container gives), writes a group and
/// stops; returns the data directory's loose modes.
fn serve_under_umask_022(server: &mut TestServer) -> Vec<(String, u32)> {
    server.restart_with(Options::default().umask(0o022));
    let admin = server.client(&server.admin_token());
    admin.create(&json!({"name": format!("Private {}", admin.groups().len()), "devices": ["d1"]}));
    assert!(server.stop().success());
    loose_modes(&server.data_dir())
}

#[test]
fn the_data_directory_is_owner_only_whatever_the_umask() {
    let mut server = TestServer::unstarted(Options::default());
    assert_eq!(
        serve_under_umask_022(&mut server),
        Vec::new(),
        "a new store"
    );

    // A directory made by an older version under umask 022 is repaired at start.
    let data = server.data_dir();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let db = data.join("store/db");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    assert_eq!(loose_modes(&data).len(), 2);
    assert_eq!(
        serve_under_umask_022(&mut server),
        Vec::new(),
        "an old, loose store"
    );
}

#[test]
fn a_start_waits_for_a_cli_that_holds_the_store_lock() {
    let mut server = TestServer::start();
    server
        .client(&server.admin_token())
        .create(&json!({"name": "Before"}));
    assert!(server.stop().success());

    // Hold the lock the way a CLI command that opened the store does (sled takes an
    // exclusive flock on `store/db`).
    let db = std::fs::File::open(server.data_dir().join("store/db")).expect("open db");
    rustix::fs::flock(&db, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        .expect("take the store lock");
    let mut child =
        crate::support::cli(&["--data-dir", "data", "serve", "--listen", "127.0.0.1:0"])
            .cwd(server.dir.path())
            .spawn(Stdio::null(), Stdio::piped());
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut next_line = || {
        lines
            .next()
            .expect("the server exited instead of waiting")
            .expect("line")
    };
    loop {
        let line = next_line();
        assert!(
            !line.contains("listening on"),
            "served without the lock: {line}"
        );
        if line.contains("store is locked") {
            break;
        }
    }
    // The "CLI" finishes: the server takes the store and serves it.
    let released = Instant::now();
    drop(db);
    let addr = loop {
        let line = next_line();
        if let Some(at) = line.find("listening on http://") {
            let rest = &line[at + "listening on http://".len()..];
            let addr: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
            break addr.parse::<std::net::SocketAddr>().expect("address");
        }
    };
    assert!(released.elapsed() < Duration::from_secs(5));
    let login = json!({"userName": "admin", "apiKey": server.admin_key()}).to_string();
    let token = raw(
        addr,
        format!(
            "POST /api/Auth/Token HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{login}",
            login.len()
        )
        .as_bytes(),
    )
    .expect_ok(200)["token"]
        .as_str()
        .expect("token")
        .to_string();
    let list = raw(
        addr,
        format!("GET /api/groups HTTP/1.1\r\nHost: t\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\r\n").as_bytes(),
    )
    .expect_ok(200);
    assert_eq!(list["groups"].as_array().map(Vec::len), Some(1), "{list}");
    let _ = child.kill();
    let _ = child.wait();
}
