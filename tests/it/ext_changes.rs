//! [ext] The change feed `GET /api/changes?after=&limit=`: one entry per change, written
//! with the change (a failed write leaves none), only the caller's account, paged with
//! `next`, and enough to mirror the account's groups exactly. (Retention is tested at
//! the store level with an explicit elapsed clock, `store::changes` and
//! `store::retention` tests, and across clock steps in `clock.rs`.)

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::support::{cli_in, Options, TestServer};

fn feed(server: &TestServer, token: &str, query: &str) -> Value {
    server
        .req("GET", &format!("/api/changes{query}"))
        .bearer(token)
        .send()
        .ok()
}

fn entries(v: &Value) -> Vec<Value> {
    v["changes"]
        .as_array()
        .expect("the answer has this shape")
        .clone()
}

/// Reads the whole feed page by page, until a page is empty, and returns it.
fn read_all(server: &TestServer, token: &str, page: usize) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let v = feed(server, token, &format!("?after={after}&limit={page}"));
        let got = entries(&v);
        assert!(got.len() <= page);
        let next = v["next"].as_u64().expect("next is always a number");
        if got.len() == page {
            assert_eq!(Some(next), got.last().and_then(|e| e["seq"].as_u64()));
        }
        if got.is_empty() {
            assert_eq!(
                next, after,
                "an empty page's next is its after once caught up"
            );
            break;
        }
        assert!(next > after);
        out.extend(got);
        after = next;
    }
    out
}

fn strip_envelope(mut v: Value) -> Value {
    let o = v.as_object_mut().expect("the answer has this shape");
    for k in [
        "success",
        "error",
        "apiUsage",
        "apiDailyUsage",
        "added",
        "removed",
    ] {
        o.remove(k);
    }
    v
}

#[test]
fn every_change_is_recorded_with_who_and_the_state_after() {
    let mut server = TestServer::start();
    let t = server.admin_token();
    let empty = feed(&server, &t, "");
    assert_eq!(empty["changes"], json!([]));
    assert_eq!(empty["next"], 0);
    assert_eq!(empty["storeId"].as_str().map(str::len), Some(32));
    assert!(empty["apiUsage"].is_u64());

    let mut states = Vec::new();
    let r = server
        .req("POST", "/api/groups")
        .bearer(&t)
        .json(&json!({"name": "A", "devices": ["d"]}))
        .send();
    states.push(strip_envelope(r.ok()));
    let id = states[0]["id"].as_str().unwrap().to_string();
    let path = format!("/api/groups/{id}");
    let r = server
        .req("PUT", &path)
        .bearer(&t)
        .json(&json!({"name": "B"}))
        .send();
    states.push(strip_envelope(r.ok()));
    let r = server
        .req("PATCH", &path)
        .bearer(&t)
        .json(&json!([{"op": "add", "path": "/devices/-", "value": "e"}]))
        .send();
    states.push(strip_envelope(r.ok()));
    let r = server
        .req("PATCH", &path)
        .bearer(&t)
        .body_as("application/merge-patch+json", br#"{"description": "x"}"#)
        .send();
    states.push(strip_envelope(r.ok()));
    let r = server
        .req("POST", &format!("{path}/devices"))
        .bearer(&t)
        .json(&json!({"devices": ["f"]}))
        .send();
    states.push(strip_envelope(r.ok()));
    let r = server
        .req("DELETE", &format!("{path}/devices/e"))
        .bearer(&t)
        .send();
    states.push(strip_envelope(r.ok()));

    // Writes that fail or change nothing leave no entry.
    server
        .req("PUT", &path)
        .bearer(&t)
        .header("If-Match", "\"1\"")
        .json(&json!({"name": "C"}))
        .send()
        .expect_error(412, "precondition_failed");
    server
        .req("POST", "/api/groups")
        .bearer(&t)
        .json(&json!({"name": "b"}))
        .send()
        .expect_error(409, "name_conflict");
    server
        .req("PATCH", &path)
        .bearer(&t)
        .json(&json!([{"op": "test", "path": "/name", "value": "nope"}]))
        .send()
        .expect_error(409, "patch_test_failed");
    server
        .req("PUT", &path)
        .bearer(&t)
        .json(&json!({"name": "B", "description": "x", "devices": ["f"]}))
        .send()
        .ok();
    server.req("DELETE", &path).bearer(&t).send().ok();

    let all = read_all(&server, &t, 100);
    let ops: Vec<&str> = all.iter().map(|e| e["op"].as_str().unwrap()).collect();
    assert_eq!(
        ops,
        vec!["created", "updated", "updated", "updated", "updated", "updated", "deleted"]
    );
    let mut last_seq = 0;
    for (i, e) in all.iter().enumerate() {
        let o = e.as_object().unwrap();
        let mut k: Vec<&str> = o.keys().map(String::as_str).collect();
        k.sort();
        if e["op"] == "deleted" {
            assert_eq!(k, vec!["group", "id", "op", "seq", "time", "userName"]);
        } else {
            assert_eq!(
                k,
                vec!["group", "id", "op", "revision", "seq", "time", "userName"]
            );
            // The revision after the change: the ETag the write answered with.
            assert_eq!(e["revision"], i as u64 + 1, "entry {i}");
        }
        assert_eq!(e["id"], id.as_str());
        assert_eq!(e["userName"], "admin");
        let seq = e["seq"].as_u64().unwrap();
        assert!(seq > last_seq);
        last_seq = seq;
        if i < states.len() {
            assert_eq!(e["group"], states[i], "entry {i}");
            assert_eq!(e["time"], states[i]["lastModified"]);
        }
    }
    assert_eq!(all[6]["group"], Value::Null);
    let t6 = all[6]["time"].as_str().unwrap();
    assert!(t6.len() == 24 && t6.ends_with('Z') && t6 >= all[5]["time"].as_str().unwrap());

    // The feed is on disk with the groups.
    server.stop();
    server.restart();
    let t = server.admin_token();
    assert_eq!(read_all(&server, &t, 3), all);
}

#[test]
fn the_feed_is_per_account_paged_and_mirrors_the_groups() {
    let server = TestServer::start();
    let other_key = server.add_user("other", &["--account", "elsewhere"]);
    let reader_key = server.add_user("reader", &["--role", "read"]);
    let t = server.admin_token();
    let o = server.login("other", &other_key);
    let reader = server.login("reader", &reader_key);
    for i in 0..12 {
        for (tok, prefix) in [(&t, "a"), (&o, "o")] {
            server
                .req("POST", "/api/groups")
                .bearer(tok)
                .json(&json!({"name": format!("{prefix}{i}"), "devices": [format!("d{i}")]}))
                .send()
                .ok();
        }
    }
    for n in [2, 4] {
        server
            .req("DELETE", &format!("/api/groups/grp-{n}"))
            .bearer(&o)
            .send()
            .ok();
    }
    server
        .req("PATCH", "/api/groups/grp-3")
        .bearer(&t)
        .body_as("application/merge-patch+json", br#"{"name": "renamed"}"#)
        .send()
        .ok();

    let mine = read_all(&server, &t, 5);
    let theirs = read_all(&server, &o, 5);
    assert_eq!(mine.len(), 13);
    assert_eq!(theirs.len(), 14);
    assert!(mine.iter().all(|e| e["userName"] == "admin"));
    assert!(theirs.iter().all(|e| e["userName"] == "other"));
    // A read user sees its account's feed.
    assert_eq!(read_all(&server, &reader, 1000), mine);

    // Replaying the feed gives exactly the account's groups.
    for (tok, feed) in [(&t, &mine), (&o, &theirs)] {
        let mut mirror: BTreeMap<u64, Value> = BTreeMap::new();
        for e in feed.iter() {
            let n: u64 = e["id"].as_str().unwrap()[4..].parse().unwrap();
            match e["op"].as_str().unwrap() {
                "deleted" => {
                    mirror.remove(&n);
                }
                _ => {
                    mirror.insert(n, e["group"].clone());
                }
            }
        }
        let live = server.req("GET", "/api/groups").bearer(tok).send().ok();
        assert_eq!(
            Value::from(mirror.into_values().collect::<Vec<_>>()),
            live["groups"]
        );
    }

    // Paging details: `next` is the last seq of a full page with more to come, and
    // on the last page the store's highest seq, past the other account's entries.
    let v = feed(&server, &t, "?limit=2");
    let e = entries(&v);
    assert_eq!(e.len(), 2);
    assert_eq!(v["next"], e[1]["seq"]);
    let tail = feed(&server, &t, &format!("?after={}", mine[10]["seq"]));
    assert_eq!(entries(&tail), mine[11..].to_vec());
    let highest = mine
        .iter()
        .chain(&theirs)
        .filter_map(|e| e["seq"].as_u64())
        .max();
    assert_eq!(tail["next"].as_u64(), highest);
    // A quiet account's cursor keeps up with the store while the others write.
    for i in 0..3 {
        server
            .req("POST", "/api/groups")
            .bearer(&o)
            .json(&json!({"name": format!("later{i}")}))
            .send()
            .ok();
    }
    let quiet = feed(&server, &t, &format!("?after={}", tail["next"]));
    assert_eq!(entries(&quiet), Vec::<Value>::new());
    assert_eq!(quiet["next"].as_u64(), highest.map(|h| h + 3));
    assert_eq!(
        entries(&feed(&server, &t, "?after=18446744073709551615")),
        Vec::<Value>::new()
    );
    // Default page: 100 entries.
    assert_eq!(entries(&feed(&server, &t, "")).len(), 13);

    for (q, param) in [
        ("after=-1", "after"),
        ("after=x", "after"),
        ("after=", "after"),
        ("after=18446744073709551616", "after"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=a", "limit"),
        ("after=1&after=2", "after"),
    ] {
        let v = server
            .req("GET", &format!("/api/changes?{q}"))
            .bearer(&t)
            .send()
            .expect_error(400, "invalid_input");
        assert!(v["error"].as_str().unwrap().contains(param), "{q}: {v}");
    }
    // Unknown parameters are ignored.
    assert_eq!(entries(&feed(&server, &t, "?since=5&x=%zz")).len(), 13);
    server
        .req("GET", "/api/changes")
        .send()
        .expect_error(401, "unauthorized");
}

/// `storeId` is the data directory's identity: the same across restarts and in the
/// backup's header, and new in a store restored from that backup. A backup whose feed
/// history was purged restores with that history expired: an `after` before its oldest
/// entry is 410 `cursor_expired`, never a silent jump; no `after` reads what is kept.
#[test]
fn the_store_id_survives_restarts_and_a_restore_makes_a_new_one_and_old_cursors_expire() {
    let mut server = TestServer::start();
    let t = server.admin_token();
    for i in 0..3 {
        server
            .req("POST", "/api/groups")
            .bearer(&t)
            .json(&json!({"name": format!("g{i}")}))
            .send()
            .ok();
    }
    let id = feed(&server, &t, "?after=0")["storeId"].clone();
    assert_eq!(id.as_str().map(str::len), Some(32), "{id}");
    server.stop();
    server.restart();
    let t = server.login("admin", &server.admin_key());
    assert_eq!(feed(&server, &t, "?after=0")["storeId"], id);

    let out_dir = tempfile::tempdir().expect("tempdir");
    let file = out_dir.path().join("b.jsonl");
    let out = server.cli(&["backup", file.to_str().expect("utf-8")]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let text = std::fs::read_to_string(&file).expect("backup");
    let header: Value = serde_json::from_str(text.lines().next().expect("header")).expect("json");
    assert_eq!(header["storeId"], id);

    // The same backup without its first feed entry: history that retention removed.
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines.retain(|l| {
        let v: Value = serde_json::from_str(l).expect("json");
        !(v["type"] == "change" && v["seq"] == 1)
    });
    let records = lines.len() - 2;
    *lines.last_mut().expect("end") = format!("{{\"type\":\"end\",\"records\":{records}}}");
    let purged = out_dir.path().join("purged.jsonl");
    std::fs::write(&purged, lines.join("\n") + "\n").expect("write");

    for (backup, expired) in [(&file, false), (&purged, true)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = cli_in(
            &dir.path().join("data"),
            &["restore", backup.to_str().expect("utf-8")],
            &[],
        );
        assert_eq!(out.code, 0, "{}", out.stderr);
        let restored = TestServer::with_dir(dir, Options::default());
        let rt = restored.login("admin", &server.admin_key());
        let kept = feed(&restored, &rt, "");
        assert_ne!(kept["storeId"], id, "a restore makes a new store identity");
        assert_eq!(kept["storeId"].as_str().map(str::len), Some(32));
        assert_eq!(entries(&kept).len(), if expired { 2 } else { 3 });
        if expired {
            let v = restored
                .req("GET", "/api/changes?after=0")
                .bearer(&rt)
                .send()
                .expect_error(410, "cursor_expired");
            assert_eq!(v["error"], "Cursor expired: read the groups again");
            assert_eq!(entries(&feed(&restored, &rt, "?after=1")).len(), 2);
        } else {
            assert_eq!(entries(&feed(&restored, &rt, "?after=0")).len(), 3);
        }
    }
}
