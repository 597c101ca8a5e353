//! [ext] Paging and filters on `GET /api/groups`: `limit` + `after` with `next`,
//! `device`, `name`; invalid values are 400, unknown parameters are ignored, and without
//! parameters the answer is exactly Plaspy's.

use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{json, Value};

use crate::support::TestServer;

fn list(server: &TestServer, token: &str, query: &str) -> Value {
    server
        .req("GET", &format!("/api/groups{query}"))
        .bearer(token)
        .send()
        .ok()
}

fn ids(v: &Value) -> Vec<u64> {
    v["groups"]
        .as_array()
        .expect("the answer has this shape")
        .iter()
        .map(|g| {
            g["id"].as_str().expect("the answer has this shape")[4..]
                .parse()
                .expect("the answer has this shape")
        })
        .collect()
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .expect("the answer has this shape")
        .keys()
        .cloned()
        .collect();
    k.sort();
    k
}

/// 25 groups: grp-n is named "Truck n" when n is even and "Van n" when odd; every
/// third holds device "d3", and every group holds its own "own-n".
fn seed(server: &TestServer, token: &str) {
    for n in 1..=25u64 {
        let name = if n % 2 == 0 {
            format!("Truck {n}")
        } else {
            format!("Van {n}")
        };
        let mut devices = vec![format!("own-{n}")];
        if n % 3 == 0 {
            devices.push("d3".into());
        }
        let r = server
            .req("POST", "/api/groups")
            .bearer(token)
            .json(&json!({"name": name, "devices": devices}))
            .send();
        assert_eq!(r.status, 201, "{}", r.text());
    }
}

#[test]
fn pages_follow_next_to_the_end() {
    let server = TestServer::start();
    let t = server.admin_token();
    seed(&server, &t);

    // No parameter, or only unknown ones: exactly the Plaspy answer, no `next`.
    for q in ["", "?", "?foo=bar", "?x=%zz&page=2", "?Limit=1"] {
        let v = list(&server, &t, q);
        assert_eq!(
            keys(&v),
            vec!["apiDailyUsage", "apiUsage", "error", "groups", "success"],
            "{q}"
        );
        assert_eq!(ids(&v), (1..=25).collect::<Vec<_>>(), "{q}");
    }

    let v = list(&server, &t, "?limit=10");
    assert_eq!(ids(&v), (1..=10).collect::<Vec<_>>());
    assert_eq!(v["next"], "grp-10");
    let v = list(&server, &t, "?limit=10&after=grp-10");
    assert_eq!(ids(&v), (11..=20).collect::<Vec<_>>());
    assert_eq!(v["next"], "grp-20");
    let v = list(&server, &t, "?after=grp-20&limit=10");
    assert_eq!(ids(&v), (21..=25).collect::<Vec<_>>());
    assert_eq!(v["next"], Value::Null);
    // A page that ends exactly at the last group says so (no empty extra page).
    assert_eq!(list(&server, &t, "?limit=25")["next"], Value::Null);
    assert_eq!(
        list(&server, &t, "?limit=5&after=grp-20")["next"],
        Value::Null
    );
    assert_eq!(
        list(&server, &t, "?limit=1000")["groups"]
            .as_array()
            .unwrap()
            .len(),
        25
    );
    // `after` alone: everything after it, and `next` (null) since the client pages.
    let v = list(&server, &t, "?after=grp-22");
    assert_eq!(ids(&v), vec![23, 24, 25]);
    assert_eq!(v["next"], Value::Null);
    assert_eq!(ids(&list(&server, &t, "?after=grp-999")), Vec::<u64>::new());

    // A deleted group still works as a cursor.
    server
        .req("DELETE", "/api/groups/grp-10")
        .bearer(&t)
        .send()
        .ok();
    let v = list(&server, &t, "?limit=3&after=grp-9");
    assert_eq!(ids(&v), vec![11, 12, 13]);
    let v = list(&server, &t, "?limit=3&after=grp-10");
    assert_eq!(ids(&v), vec![11, 12, 13]);

    // Walking every page sees every group once.
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let v = list(&server, &t, &format!("?limit=4{after}"));
        seen.extend(ids(&v));
        match v["next"].as_str() {
            Some(n) => after = format!("&after={n}"),
            None => break,
        }
    }
    let mut want: Vec<u64> = (1..=25).collect();
    want.retain(|n| *n != 10);
    assert_eq!(seen, want);
}

#[test]
fn device_and_name_filters_combine_with_paging() {
    let server = TestServer::start();
    let t = server.admin_token();
    seed(&server, &t);
    let d3: Vec<u64> = (1..=25).filter(|n| n % 3 == 0).collect();
    let v = list(&server, &t, "?device=d3");
    assert_eq!(ids(&v), d3);
    assert!(v.get("next").is_none(), "filters alone do not page");
    let v = list(&server, &t, "?device=d3&limit=3");
    assert_eq!(
        (ids(&v), v["next"].clone()),
        (vec![3, 6, 9], json!("grp-9"))
    );
    let v = list(&server, &t, "?device=d3&limit=3&after=grp-9");
    assert_eq!(
        (ids(&v), v["next"].clone()),
        (vec![12, 15, 18], json!("grp-18"))
    );
    let v = list(&server, &t, "?device=d3&limit=3&after=grp-18");
    assert_eq!((ids(&v), v["next"].clone()), (vec![21, 24], Value::Null));
    assert_eq!(ids(&list(&server, &t, "?device=own-7")), vec![7]);
    assert_eq!(ids(&list(&server, &t, "?device=nobody")), Vec::<u64>::new());
    assert_eq!(ids(&list(&server, &t, "?device=own%2D7")), vec![7]);

    // Name: substring, case-insensitive; `+` and %20 are spaces in a query.
    let trucks: Vec<u64> = (1..=25).filter(|n| n % 2 == 0).collect();
    assert_eq!(ids(&list(&server, &t, "?name=truck")), trucks);
    assert_eq!(ids(&list(&server, &t, "?name=TRUCK")), trucks);
    assert_eq!(
        ids(&list(&server, &t, "?name=ck+1")),
        vec![10, 12, 14, 16, 18]
    );
    assert_eq!(
        ids(&list(&server, &t, "?name=ck%201")),
        vec![10, 12, 14, 16, 18]
    );
    assert_eq!(ids(&list(&server, &t, "?name=van%202")), vec![21, 23, 25]);
    let v = list(&server, &t, "?name=truck&limit=4&after=grp-8");
    assert_eq!(
        (ids(&v), v["next"].clone()),
        (vec![10, 12, 14, 16], json!("grp-16"))
    );
    // Both filters: trucks holding d3.
    assert_eq!(
        ids(&list(&server, &t, "?name=Truck&device=d3")),
        vec![6, 12, 18, 24]
    );
    // Non-ASCII names, case-insensitively.
    server
        .req("POST", "/api/groups")
        .bearer(&t)
        .json(&json!({"name": "Große Flotte ÄÖ"}))
        .send()
        .ok();
    assert_eq!(ids(&list(&server, &t, "?name=%C3%A4%C3%B6")), vec![26]);
    assert_eq!(ids(&list(&server, &t, "?name=gro%C3%9Fe")), vec![26]);

    // Another account sees none of it, filtered or not.
    let key = server.add_user("other", &["--account", "elsewhere"]);
    let o = server.login("other", &key);
    assert_eq!(ids(&list(&server, &o, "")), Vec::<u64>::new());
    assert_eq!(ids(&list(&server, &o, "?device=d3")), Vec::<u64>::new());
    assert_eq!(
        ids(&list(&server, &o, "?name=truck&limit=5")),
        Vec::<u64>::new()
    );
}

#[test]
fn invalid_values_are_400_naming_the_parameter() {
    let server = TestServer::start();
    let t = server.admin_token();
    seed(&server, &t);
    let long = "n".repeat(129);
    let long_device = "d".repeat(65);
    let cases = [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=-1", "limit"),
        ("limit=ten", "limit"),
        ("limit=", "limit"),
        ("limit=1.5", "limit"),
        ("limit=99999999999999999999999", "limit"),
        ("after=10", "after"),
        ("after=grp-0", "after"),
        ("after=grp-01", "after"),
        ("after=", "after"),
        ("device=", "device"),
        ("device=%20x", "device"),
        (&format!("device={long_device}"), "device"),
        ("device=%zz", "device"),
        ("name=", "name"),
        (&format!("name={long}"), "name"),
        ("limit=1&limit=2", "limit"),
        ("name=a&name=b", "name"),
    ];
    for (q, param) in cases {
        let r = server
            .req("GET", &format!("/api/groups?{q}"))
            .bearer(&t)
            .send();
        let v = r.expect_error(400, "invalid_input");
        let msg = v["error"].as_str().unwrap();
        assert!(
            msg.starts_with("Invalid input: ") && msg.contains(param),
            "{q}: {msg}"
        );
    }
    // Valid edges.
    assert_eq!(ids(&list(&server, &t, "?limit=1")), vec![1]);
    assert_eq!(
        ids(&list(&server, &t, &format!("?name={}", "n".repeat(128)))),
        Vec::<u64>::new()
    );
}

#[test]
fn name_filter_under_concurrent_renames_never_shows_a_stale_name() {
    let server = TestServer::start();
    let t = server.admin_token();
    for n in 1..=4 {
        server
            .req("POST", "/api/groups")
            .bearer(&t)
            .json(&json!({"name": format!("Blue {n}")}))
            .send()
            .ok();
    }
    /// Sets the flag when dropped, so readers stop also when the writer panics.
    struct SetOnDrop<'a>(&'a AtomicBool);
    impl Drop for SetOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        // A writer renames every group away from "Blue" and back, over and over.
        let writer = s.spawn(|| {
            let _done = SetOnDrop(&done);
            for round in 0..40 {
                for n in 1..=4 {
                    for name in [format!("Red {n} {round}"), format!("Blue {n}")] {
                        server
                            .req("PUT", &format!("/api/groups/grp-{n}"))
                            .bearer(&t)
                            .json(&json!({ "name": name }))
                            .send()
                            .ok();
                    }
                }
            }
        });
        // Two readers, until the writer is done (or has failed: join reports it).
        let readers: Vec<_> = ["?name=blue", "?name=blue&limit=2"]
            .into_iter()
            .map(|q| {
                let (server, t, done) = (&server, &t, &done);
                s.spawn(move || {
                    while !done.load(Ordering::SeqCst) {
                        let v = list(server, t, q);
                        for g in v["groups"].as_array().unwrap() {
                            assert!(g["name"].as_str().unwrap().starts_with("Blue"), "{g}");
                        }
                    }
                })
            })
            .collect();
        for r in readers {
            r.join().unwrap();
        }
        writer.join().unwrap();
    });
    assert_eq!(ids(&list(&server, &t, "?name=BLUE")), vec![1, 2, 3, 4]);
}
