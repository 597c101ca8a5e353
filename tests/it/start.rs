//! Starting the server (operations.md "Start" and "Data"): the first start creates
//! `admin` and its key file (0600) and logs the file's path but never the key; later
//! starts keep both; a second server on the same data directory refuses with a clear
//! message; a store written by another format version is refused untouched.

use serde_json::json;

use crate::support::TestServer;

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
        let db = sled::open(&store).expect("open store");
        let meta = db.open_tree("meta").expect("meta");
        meta.insert("format_version", v).expect("insert");
        db.flush().expect("flush");
    };
    set_version(&2u64.to_be_bytes());

    let out = server.second_server();
    assert_ne!(out.code, 0, "{out:?}");
    assert!(
        out.stderr.contains("format version 2") && out.stderr.contains("nothing was changed"),
        "{out:?}"
    );
    let out = server.cli(&["user", "list"]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("format version 2"), "{out:?}");
    {
        let db = sled::open(&store).expect("open store");
        let meta = db.open_tree("meta").expect("meta");
        let v = meta.get("format_version").expect("get").expect("version");
        assert_eq!(&v[..], &2u64.to_be_bytes(), "the version was not rewritten");
    }

    // Back to this binary's version, everything is there.
    set_version(&1u64.to_be_bytes());
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
