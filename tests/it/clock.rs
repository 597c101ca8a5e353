//! Wall-clock steps while the server runs (issue 11, item 7). A gateway without a
//! battery-backed clock boots at a wrong date and NTP steps it later, by years; an
//! operator fixes a clock by hand. The server runs under libfaketime (Debian package
//! `faketime`, see `.ci/run`), which reads its offset from a file on every clock read
//! (`FAKETIME_NO_CACHE=1`), so a test steps the clock of the running server by
//! rewriting that file. `FAKETIME_DONT_FAKE_MONOTONIC=1` leaves CLOCK_MONOTONIC alone,
//! as a real step does (libfaketime fakes it by default). A missing libfaketime fails
//! the tests; they never skip. Every step is confirmed by reading the server's wall
//! clock back (a login's `expires`), so a libfaketime that silently does nothing fails
//! too.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{now_ms, poll_until, timestamp_ms, Client, Options, Resp, TestServer};

const TEN_YEARS_SECS: i64 = 3650 * 86_400;
const DAY_MS: i64 = 86_400_000;

/// Where Debian and a `make install` put libfaketime.
const LIBFAKETIME: [&str; 4] = [
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/local/lib/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
];

fn libfaketime() -> &'static str {
    LIBFAKETIME
        .iter()
        .find(|p| Path::new(p).exists())
        .copied()
        .unwrap_or_else(|| {
            panic!(
                "libfaketime is missing (looked in {LIBFAKETIME:?}); these tests step the \
                 server's clock with it: apt-get install -y faketime"
            )
        })
}

/// The offset file libfaketime reads on every clock read of the server.
pub struct FakeClock {
    _dir: tempfile::TempDir,
    file: PathBuf,
}

impl FakeClock {
    /// A clock that reads the real time until it is stepped.
    pub fn new() -> FakeClock {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = FakeClock {
            file: dir.path().join("faketime.rc"),
            _dir: dir,
        };
        clock.set_offset_secs(0);
        clock
    }

    /// `options` with the server (and the CLI it runs) under this clock.
    pub fn options(&self, options: Options) -> Options {
        options
            .env("LD_PRELOAD", libfaketime())
            .env("FAKETIME_TIMESTAMP_FILE", &self.file.to_string_lossy())
            .env("FAKETIME_NO_CACHE", "1")
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
    }

    /// Steps the clock to the real time plus `secs` (written whole: temp file and
    /// rename, so libfaketime never reads half an offset).
    pub fn set_offset_secs(&self, secs: i64) {
        let tmp = self.file.with_extension("tmp");
        std::fs::write(&tmp, format!("{secs:+}\n")).expect("write faketime offset");
        std::fs::rename(&tmp, &self.file).expect("rename faketime offset");
    }

    /// Steps the clock so that it reads `wall_ms` now; returns the offset in seconds.
    pub fn set_to(&self, wall_ms: i64) -> i64 {
        let secs = (wall_ms - now_ms()).div_euclid(1000);
        self.set_offset_secs(secs);
        secs
    }
}

/// The server's wall clock in ms, read from a login's `expires` (now + the token
/// lifetime). `probe` is a user that exists only for this, logging in from its own
/// address so it never meets a lockout under test.
fn server_clock_ms(server: &TestServer, probe_key: &str) -> i64 {
    let ttl_secs: i64 = server
        .options()
        .env
        .iter()
        .find(|(k, _)| k == "FLEETGROUPS_AUTH_TOKEN_TTL_SECS")
        .map_or(86_400, |(_, v)| v.parse().expect("ttl"));
    let r = server
        .req("POST", "/api/Auth/Token")
        .source_ip("127.0.0.250")
        .json(&json!({"userName": "probe", "apiKey": probe_key}))
        .send();
    let v = r.expect_ok(200);
    timestamp_ms(v["expires"].as_str().expect("expires")) - ttl_secs * 1000
}

/// Asserts the server's clock reads `offset_secs` from the real time (±30 s: the
/// time a login takes on a loaded machine, and whole-second offsets).
fn assert_server_offset(server: &TestServer, probe_key: &str, offset_secs: i64) {
    let before = now_ms();
    let seen = server_clock_ms(server, probe_key) - before;
    assert!(
        (seen - offset_secs * 1000).abs() < 30_000,
        "the server's clock is {} s from the real time, expected {offset_secs} s: \
         libfaketime did not step it",
        seen / 1000
    );
}

/// A server under `clock` with `env` settings and a `probe` user; returns it with
/// admin's key and probe's key.
fn server_under(clock: &FakeClock, env: &[(&str, &str)]) -> (TestServer, String, String) {
    let mut options = Options::default();
    for (k, v) in env {
        options = options.env(k, v);
    }
    let server = TestServer::with(clock.options(options));
    let admin = server.admin_key();
    let probe = server.add_user("probe", &[]);
    assert_server_offset(&server, &probe, 0);
    (server, admin, probe)
}

fn retry_after(r: &Resp) -> u64 {
    r.header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Retry-After: {} {}", r.status, r.text()))
}

/// The per-minute window runs on the monotonic clock: stepping the wall clock back ten
/// years used to leave it shut with `Retry-After: 315360060` until a restart, and a
/// step forward used to open it at once.
#[test]
fn rate_limit_window_ignores_clock_steps() {
    let clock = FakeClock::new();
    let (server, admin_key, probe) =
        server_under(&clock, &[("FLEETGROUPS_LIMITS_REQUESTS_PER_MINUTE", "3")]);
    let token = server.login("admin", &admin_key);
    let get = || server.req("GET", "/api/groups").bearer(&token).send();
    for _ in 0..3 {
        get().expect_ok(200);
    }
    let r = get();
    r.expect_error(429, "rate_limited");
    assert!(retry_after(&r) <= 60, "{:?}", r.headers);

    for offset in [-TEN_YEARS_SECS, 2 * 3600] {
        clock.set_offset_secs(offset);
        assert_server_offset(&server, &probe, offset);
        let r = get();
        r.expect_error(429, "rate_limited");
        let wait = retry_after(&r);
        assert!(
            wait <= 60,
            "after a step of {offset} s the rate window waits {wait} s"
        );
    }
}

/// The failed-login lockout runs on the monotonic clock: ten bad logins before a step
/// back used to lock `admin` out for ten years; a step forward used to unlock it.
#[test]
fn failed_login_lockout_ignores_clock_steps() {
    let clock = FakeClock::new();
    let (server, admin_key, probe) =
        server_under(&clock, &[("FLEETGROUPS_AUTH_MAX_FAILED_LOGINS", "3")]);
    let login = |from: &str, key: &str| {
        server
            .req("POST", "/api/Auth/Token")
            .source_ip(from)
            .json(&json!({"userName": "admin", "apiKey": key}))
            .send()
    };
    for _ in 0..3 {
        login("127.0.0.1", "fgk_wrong").expect_error(401, "invalid_credentials");
    }
    let r = login("127.0.0.2", &admin_key);
    r.expect_error(429, "too_many_failed_logins");
    assert!(retry_after(&r) <= 60, "{:?}", r.headers);

    for (offset, from) in [(-TEN_YEARS_SECS, "127.0.0.3"), (2 * 3600, "127.0.0.4")] {
        clock.set_offset_secs(offset);
        assert_server_offset(&server, &probe, offset);
        let r = login(from, &admin_key);
        r.expect_error(429, "too_many_failed_logins");
        let wait = retry_after(&r);
        assert!(
            wait <= 60,
            "after a step of {offset} s admin is locked out for {wait} s"
        );
    }
}

/// A daily limit of 5, the clock at 23:59:30 UTC, then stepped to 00:00:10 the next
/// day, then back to 23:59:40: the step back used to start the day over, so one real
/// day admitted 15 requests. The day counted goes on instead.
#[test]
fn daily_limit_holds_when_the_clock_steps_back_across_midnight() {
    let clock = FakeClock::new();
    let (server, admin_key, probe) =
        server_under(&clock, &[("FLEETGROUPS_LIMITS_DAILY_LIMIT", "5")]);
    let token = server.login("admin", &admin_key);
    let midnight = (now_ms().div_euclid(DAY_MS) + 1) * DAY_MS;
    let mut admitted = Vec::new();
    let mut last = None;
    for at in [midnight - 30_000, midnight + 10_000, midnight - 20_000] {
        let offset = clock.set_to(at);
        assert_server_offset(&server, &probe, offset);
        let mut n = 0;
        loop {
            let r = server.req("GET", "/api/groups").bearer(&token).send();
            if r.status != 200 {
                r.expect_error(429, "daily_limit_exceeded");
                last = Some(r);
                break;
            }
            n += 1;
            assert!(n <= 10, "the daily limit of 5 admitted {n} requests");
        }
        admitted.push(n);
    }
    assert_eq!(
        admitted,
        vec![5, 5, 0],
        "requests admitted before midnight, after a step past it, after a step back"
    );
    let last = last.expect("a refusal");
    assert_eq!(last.json()["apiDailyUsage"], 5, "{}", last.text());
    assert!(retry_after(&last) <= 86_400, "{:?}", last.headers);
}

/// A token lives its lifetime on the monotonic clock too: one issued before a step back
/// of ten years used to stay valid for ten years (its `expires` is a wall-clock date).
#[test]
fn a_step_back_does_not_stretch_a_token_lifetime() {
    let clock = FakeClock::new();
    let (server, admin_key, probe) =
        server_under(&clock, &[("FLEETGROUPS_AUTH_TOKEN_TTL_SECS", "5")]);
    let issued = Instant::now();
    let token = server.login("admin", &admin_key);
    clock.set_offset_secs(-TEN_YEARS_SECS);
    assert_server_offset(&server, &probe, -TEN_YEARS_SECS);
    let status = || {
        server
            .req("GET", "/api/groups")
            .bearer(&token)
            .send()
            .status
    };
    if issued.elapsed() < Duration::from_secs(4) {
        assert_eq!(status(), 200, "the token ended early");
    }
    poll_until(Duration::from_secs(30), "the token to expire", || {
        (status() == 401).then_some(())
    });
    assert!(
        issued.elapsed() >= Duration::from_secs(5),
        "refused before its lifetime was over"
    );
}

/// `lastModified` stays strictly increasing per group when the clock steps back (it
/// already did: a change takes max(now, previous + 1 ms)); the change feed follows it.
#[test]
fn last_modified_stays_strictly_increasing_across_a_step_back() {
    let clock = FakeClock::new();
    let (server, admin_key, probe) = server_under(&clock, &[]);
    let admin = server.client(&server.login("admin", &admin_key));
    let created = admin.create(&json!({"name": "Trucks"}));
    let id = created["id"].as_str().expect("id").to_string();
    let mut last = timestamp_ms(created["lastModified"].as_str().expect("ts"));

    clock.set_offset_secs(-TEN_YEARS_SECS);
    assert_server_offset(&server, &probe, -TEN_YEARS_SECS);
    let mut times = Vec::new();
    for i in 0..3 {
        let v = admin
            .put(
                &format!("/api/groups/{id}"),
                &json!({"name": format!("T{i}")}),
            )
            .expect_ok(200);
        let t = timestamp_ms(v["lastModified"].as_str().expect("ts"));
        assert!(t > last, "lastModified went from {last} to {t}");
        last = t;
        times.push(t);
    }
    let feed = admin.get("/api/changes").expect_ok(200);
    let feed_times: Vec<i64> = feed["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .skip(1)
        .map(|e| timestamp_ms(e["time"].as_str().expect("time")))
        .collect();
    assert_eq!(feed_times, times);
}

/// Change-feed entries written while the clock was ten years behind are fresh: once
/// the clock is set right they used to be purged by the next retention pass (10 s after
/// start); retention counts elapsed time now, so they stay.
#[test]
fn entries_written_while_the_clock_was_behind_survive_the_fix() {
    let clock = FakeClock::new();
    clock.set_offset_secs(-TEN_YEARS_SECS);
    let server =
        TestServer::with(clock.options(Options::default().env("FLEETGROUPS_LOG_LEVEL", "debug")));
    let probe = server.add_user("probe", &[]);
    assert_server_offset(&server, &probe, -TEN_YEARS_SECS);
    let admin = server.client(&server.admin_token());
    for i in 0..3 {
        admin.create(&json!({"name": format!("g{i}")}));
    }
    let before = changes(&admin);
    assert_eq!(before.len(), 3, "{before:?}");

    clock.set_offset_secs(0);
    assert_server_offset(&server, &probe, 0);
    // Tokens expire by the wall clock: the step forward ended the first one.
    let admin = server.client(&server.admin_token());
    // The first retention pass runs 10 s after the start. The old server logs only
    // when it purges; this one logs every pass at debug level. A pass that purges
    // nothing changes no state a client can see, so its line is the only sign it ran.
    poll_until(Duration::from_secs(40), "a retention pass", || {
        let log = server.log();
        (log.contains("retention pass") || log.contains("purged old change-feed entries"))
            .then_some(())
    });
    assert_eq!(changes(&admin), before, "fresh entries were purged");
}

fn changes(admin: &Client<'_>) -> Vec<Value> {
    admin.get("/api/changes").expect_ok(200)["changes"]
        .as_array()
        .expect("changes")
        .clone()
}
