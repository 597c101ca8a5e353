//! `/metrics` an operator can alert on (issue 12 item 5), checked on the real binary's
//! output: every line parses by the Prometheus text format's rules (a strict parser
//! below, and `promtool check metrics` where it is installed), names follow
//! Prometheus' conventions, the latency histogram is per route, and the values are
//! plausible.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::json;

use crate::support::TestServer;

/// One sample line.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed scrape: the families with their TYPE, and every sample in order.
#[derive(Debug, Default)]
pub struct Scrape {
    pub types: BTreeMap<String, String>,
    pub samples: Vec<Sample>,
}

impl Scrape {
    /// The value of the one series `name` with exactly `labels`.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }

    /// Like `get`, failing the test when the series is missing.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no series {name}{labels:?} in {:#?}", self.samples))
    }

    /// Every sample of `name`.
    pub fn all(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }
}

fn valid_metric_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !n.starts_with("__")
}

/// `{a="x",b="y"}` (the braces already stripped) → labels; `Err` names the problem.
fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (name, after) = rest
            .split_once("=\"")
            .ok_or_else(|| format!("label without =\"value\": {rest:?}"))?;
        if !valid_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(format!("unterminated label value in {text:?}")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?} in {text:?}")),
                },
                Some((_, '\n')) => return Err("raw newline in a label value".into()),
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("label {name} given twice"));
        }
        rest = &after[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if !rest.is_empty() {
            return Err(format!("expected , between labels: {rest:?}"));
        }
    }
    Ok(labels)
}

fn parse_value(v: &str) -> Result<f64, String> {
    match v {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => v.parse().map_err(|_| format!("bad value {v:?}")),
    }
}

/// The family a sample belongs to: histograms own `_bucket`, `_sum` and `_count`.
fn family_of<'a>(name: &'a str, types: &BTreeMap<String, String>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if types.get(base).is_some_and(|t| t == "histogram") {
                return base;
            }
        }
    }
    name
}

/// Parses the text exposition format (0.0.4) strictly, failing the test on the first
/// line that breaks a rule: every sample's family has exactly one HELP and one TYPE,
/// both before its first sample; a family's lines are contiguous; no series appears
/// twice; names and labels are well formed; counters end in `_total` and are ≥ 0;
/// histograms have increasing `le` bounds, cumulative counts, `+Inf` equal to
/// `_count`, and a `_sum`. Also Prometheus' naming rules that can be checked
/// mechanically: base units (no milliseconds, kilobytes…) and the `fleetgroups_` or
/// `process_` prefix.
pub fn parse(text: &str) -> Scrape {
    let mut scrape = Scrape::default();
    let mut helps = BTreeSet::new();
    let mut finished: BTreeSet<String> = BTreeSet::new();
    let mut current: Option<String> = None;
    let mut series = BTreeSet::new();
    let mut enter = |family: &str, current: &mut Option<String>, line: &str| {
        if current.as_deref() != Some(family) {
            if let Some(done) = current.take() {
                finished.insert(done);
            }
            assert!(
                !finished.contains(family),
                "family {family} is not contiguous: {line:?}"
            );
            *current = Some(family.to_string());
        }
    };
    assert!(text.ends_with('\n'), "the text must end with a newline");
    for line in text.lines() {
        assert!(!line.trim().is_empty(), "an empty line");
        if let Some(comment) = line.strip_prefix('#') {
            let mut parts = comment.trim_start().splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("HELP"), Some(name), Some(help)) => {
                    assert!(valid_metric_name(name), "{line:?}");
                    assert!(!help.trim().is_empty(), "empty HELP: {line:?}");
                    assert!(helps.insert(name.to_string()), "second HELP: {line:?}");
                    enter(name, &mut current, line);
                }
                (Some("TYPE"), Some(name), Some(kind)) => {
                    assert!(valid_metric_name(name), "{line:?}");
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                        "{line:?}"
                    );
                    assert!(
                        scrape
                            .types
                            .insert(name.to_string(), kind.to_string())
                            .is_none(),
                        "second TYPE: {line:?}"
                    );
                    enter(name, &mut current, line);
                }
                _ => panic!("a comment that is neither HELP nor TYPE: {line:?}"),
            }
            continue;
        }
        let (series_text, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line:?}"));
        let value = parse_value(value).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        let (name, labels) = match series_text.split_once('{') {
            None => (series_text, BTreeMap::new()),
            Some((name, rest)) => {
                let inner = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels: {line:?}"));
                (
                    name,
                    parse_labels(inner).unwrap_or_else(|e| panic!("{e}: {line:?}")),
                )
            }
        };
        assert!(valid_metric_name(name), "bad name: {line:?}");
        let family = family_of(name, &scrape.types).to_string();
        let kind = scrape
            .types
            .get(&family)
            .unwrap_or_else(|| panic!("sample before its TYPE: {line:?}"))
            .clone();
        assert!(helps.contains(&family), "sample without HELP: {line:?}");
        enter(&family, &mut current, line);
        assert!(
            series.insert(series_text.to_string()),
            "series twice: {line:?}"
        );
        if kind == "counter" {
            assert!(
                name.ends_with("_total"),
                "a counter without _total: {line:?}"
            );
            assert!(value >= 0.0, "a negative counter: {line:?}");
        }
        scrape.samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    for family in scrape.types.keys() {
        assert!(
            family.starts_with("fleetgroups_") || family.starts_with("process_"),
            "{family}: not ours"
        );
        for unit in [
            "_ms",
            "_milliseconds",
            "_microseconds",
            "_kb",
            "_kilobytes",
            "_mb",
            "_percent",
        ] {
            assert!(
                !family.contains(unit),
                "{family}: Prometheus wants base units"
            );
        }
    }
    check_histograms(&scrape);
    scrape
}

/// A label set as a sorted list (a map key).
type Labels = Vec<(String, String)>;

fn check_histograms(scrape: &Scrape) {
    for (family, kind) in &scrape.types {
        if kind != "histogram" {
            continue;
        }
        // Label sets without `le` → (le, count) in order of appearance.
        let mut buckets: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
        for s in scrape.all(&format!("{family}_bucket")) {
            let le = parse_value(s.labels.get("le").expect("a bucket without le")).unwrap();
            let mut key: Labels = s.labels.clone().into_iter().collect();
            key.retain(|(k, _)| k != "le");
            buckets.entry(key).or_default().push((le, s.value));
        }
        // No buckets at all is fine: a family may have no series yet.
        for (key, b) in &buckets {
            assert!(
                b.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
                "{family}{key:?}: bounds must increase and counts never decrease: {b:?}"
            );
            let (last_le, last) = *b.last().unwrap();
            assert_eq!(last_le, f64::INFINITY, "{family}{key:?}: no +Inf bucket");
            let labels: Vec<(&str, &str)> =
                key.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            assert_eq!(
                scrape.value(&format!("{family}_count"), &labels),
                last,
                "{family}{key:?}: +Inf must equal _count"
            );
            assert!(scrape.value(&format!("{family}_sum"), &labels) >= 0.0);
        }
    }
}

/// Runs `promtool check metrics` on `text` (Debian's `prometheus` package, which
/// scripts/test.sh installs); without promtool this fails.
pub fn promtool_check(text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = child.unwrap_or_else(|e| {
        panic!(
            "cannot run promtool ({e}): install Debian's prometheus package (scripts/test.sh does)"
        )
    });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn scrape(server: &TestServer) -> (String, Scrape) {
    let r = server.req("GET", "/metrics").send();
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    let parsed = parse(&text);
    (text, parsed)
}

#[test]
fn every_line_parses_and_promtool_agrees() {
    let server = TestServer::start();
    let token = server.admin_token();
    let client = server.client(&token);
    client.create(&json!({"name": "a"}));
    assert_eq!(client.get("/api/groups/grp-1").status, 200);
    assert_eq!(client.get("/api/groups/grp-9").status, 404);
    assert_eq!(server.req("GET", "/nope").send().status, 404);
    let (text, _) = scrape(&server);
    promtool_check(&text);
    // A second scrape also holds the first one's own series.
    let (text, _) = scrape(&server);
    promtool_check(&text);
}

#[test]
fn the_latency_histogram_is_per_route() {
    let server = TestServer::start();
    let token = server.admin_token();
    let client = server.client(&token);
    for i in 0..3 {
        client.create(&json!({"name": format!("g{i}")}));
    }
    for id in ["grp-1", "grp-2", "grp-3", "grp-404"] {
        client.get(&format!("/api/groups/{id}"));
    }
    assert_eq!(server.req("GET", "/healthz").send().status, 200);
    let (text, m) = scrape(&server);
    let count = |route: &str| {
        m.value(
            "fleetgroups_request_duration_seconds_count",
            &[("route", route)],
        )
    };
    // Each route's histogram counts that route's requests, whatever their status.
    let requests = |route: &str| -> f64 {
        m.all("fleetgroups_requests_total")
            .iter()
            .filter(|s| s.labels["route"] == route)
            .map(|s| s.value)
            .sum()
    };
    for (route, n) in [
        ("/api/auth/token", 1.0),
        ("/api/groups", 3.0),
        ("/api/groups/{groupId}", 4.0),
        ("/healthz", 1.0),
    ] {
        assert_eq!(count(route), n, "{route}: {text}");
        assert_eq!(requests(route), n, "{route}: {text}");
        let buckets = m
            .all("fleetgroups_request_duration_seconds_bucket")
            .into_iter()
            .filter(|s| s.labels["route"] == route)
            .count();
        assert_eq!(buckets, 13, "{route}: 12 bounds and +Inf");
    }
    // Only routes that were asked for, and no series without a route label.
    let routes: BTreeSet<&str> = m
        .all("fleetgroups_request_duration_seconds_count")
        .iter()
        .map(|s| s.labels["route"].as_str())
        .collect();
    assert_eq!(
        routes.into_iter().collect::<Vec<_>>(),
        [
            "/api/auth/token",
            "/api/groups",
            "/api/groups/{groupId}",
            "/healthz"
        ]
    );
    assert!(m
        .samples
        .iter()
        .filter(|s| s.name.starts_with("fleetgroups_request_duration_seconds"))
        .all(|s| s.labels.contains_key("route")));
}

#[test]
fn the_parser_refuses_broken_text() {
    let ok = "# HELP fleetgroups_x_total X.\n# TYPE fleetgroups_x_total counter\nfleetgroups_x_total{a=\"1\"} 2\n";
    assert_eq!(parse(ok).value("fleetgroups_x_total", &[("a", "1")]), 2.0);
    let h = "# HELP fleetgroups_h_seconds H.\n# TYPE fleetgroups_h_seconds histogram\n";
    for bad in [
        // no TYPE, no HELP, a counter without _total, a negative counter
        "fleetgroups_x_total 1\n".to_string(),
        "# TYPE fleetgroups_x_total counter\nfleetgroups_x_total 1\n".to_string(),
        "# HELP fleetgroups_x X.\n# TYPE fleetgroups_x counter\nfleetgroups_x 1\n".to_string(),
        ok.replace("} 2", "} -1"),
        // a series twice, a family split in two, a bad label, a bad value, no newline
        format!("{ok}fleetgroups_x_total{{a=\"1\"}} 3\n"),
        format!("{ok}# HELP fleetgroups_y Y.\n# TYPE fleetgroups_y gauge\nfleetgroups_y 1\nfleetgroups_x_total{{a=\"2\"}} 1\n"),
        ok.replace("a=\"1\"", "a=1"),
        ok.replace("} 2", "} two"),
        ok.trim_end().to_string(),
        // not base units
        ok.replace("fleetgroups_x_total", "fleetgroups_x_ms_total"),
        // histograms: +Inf missing, counts decreasing, +Inf not the count
        format!("{h}fleetgroups_h_seconds_bucket{{le=\"1\"}} 1\nfleetgroups_h_seconds_sum 1\nfleetgroups_h_seconds_count 1\n"),
        format!("{h}fleetgroups_h_seconds_bucket{{le=\"1\"}} 2\nfleetgroups_h_seconds_bucket{{le=\"+Inf\"}} 1\nfleetgroups_h_seconds_sum 1\nfleetgroups_h_seconds_count 1\n"),
        format!("{h}fleetgroups_h_seconds_bucket{{le=\"+Inf\"}} 2\nfleetgroups_h_seconds_sum 1\nfleetgroups_h_seconds_count 1\n"),
    ] {
        let refused = std::panic::catch_unwind(|| parse(&bad)).is_err();
        assert!(refused, "accepted:\n{bad}");
    }
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A field of `/proc/<pid>/status` in kB, as bytes (read from outside the server).
fn status_bytes(pid: u32, field: &str) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = text.lines().find(|l| l.starts_with(field)).unwrap();
    let kb: f64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024.0
}

#[test]
fn process_metrics_are_present_and_plausible() {
    let before = now_secs();
    let server = TestServer::with(
        crate::support::Options::default().config("[limits]\nmax_connections = 77\n"),
    );
    let started = now_secs();
    let (text, m) = scrape(&server);
    let pid = server.pid();

    let rss = m.value("process_resident_memory_bytes", &[]);
    let outside = status_bytes(pid, "VmRSS:");
    assert!(rss > 1e6 && rss < 2e9, "RSS {rss}");
    assert!(
        rss > outside / 2.0 && rss < outside * 2.0,
        "RSS {rss} vs VmRSS {outside}"
    );
    let vm = m.value("process_virtual_memory_bytes", &[]);
    assert!(vm >= rss, "virtual {vm} < resident {rss}");
    let outside = status_bytes(pid, "VmSize:");
    assert!(
        vm > outside / 2.0 && vm < outside * 2.0,
        "VM {vm} vs VmSize {outside}"
    );
    let cpu = m.value("process_cpu_seconds_total", &[]);
    let wall = now_secs() - before;
    assert!(
        cpu >= 0.0 && cpu <= wall * 2.0 + 1.0,
        "cpu {cpu} in {wall} s"
    );
    // stdin, stdout, stderr, the listener, the store's files, the scrape's socket.
    let fds = m.value("process_open_fds", &[]);
    assert!(fds >= 6.0, "{fds} open fds");
    let max = m.value("process_max_fds", &[]);
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let soft: f64 = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(max, soft, "{limits}");
    assert!(fds < max);
    // Started between the test's clock readings around the spawn (ticks are 10 ms).
    let start = m.value("process_start_time_seconds", &[]);
    assert!(
        start >= before - 1.0 && start <= started + 1.0,
        "start {start} not in [{before}, {started}]"
    );
    for (name, kind) in [
        ("process_resident_memory_bytes", "gauge"),
        ("process_virtual_memory_bytes", "gauge"),
        ("process_cpu_seconds_total", "counter"),
        ("process_open_fds", "gauge"),
        ("process_max_fds", "gauge"),
        ("process_start_time_seconds", "gauge"),
    ] {
        assert_eq!(m.types.get(name).map(String::as_str), Some(kind), "{text}");
    }

    // CPU time only grows.
    for i in 0..50 {
        server.req("GET", &format!("/api/groups/grp-{i}")).send();
    }
    let (_, again) = scrape(&server);
    assert!(again.value("process_cpu_seconds_total", &[]) >= cpu);
    assert_eq!(again.value("process_start_time_seconds", &[]), start);
}

#[test]
fn connection_token_and_store_gauges_tell_the_truth() {
    let server = TestServer::with(
        crate::support::Options::default().config("[limits]\nmax_connections = 77\n"),
    );
    let (_, m) = scrape(&server);
    assert_eq!(m.value("fleetgroups_connections_max", &[]), 77.0);
    // The scrape's own connection is open while the answer is rendered.
    assert!(m.value("fleetgroups_connections_open", &[]) >= 1.0);
    assert_eq!(
        m.value(
            "fleetgroups_connections_closed_total",
            &[("reason", "evicted_idle")]
        ),
        0.0
    );
    assert_eq!(m.value("fleetgroups_tokens", &[]), 0.0);
    assert_eq!(m.value("fleetgroups_store_healthy", &[]), 1.0);

    // Three logins, three live tokens; a key rotation revokes all of them.
    let key = server.admin_key();
    for _ in 0..3 {
        server.login("admin", &key);
    }
    let ci = server.add_user("ci", &[]);
    server.login("ci", &ci);
    assert_eq!(scrape(&server).1.value("fleetgroups_tokens", &[]), 4.0);
    let rotated = server.cli(&["user", "rotate-key", "admin"]);
    assert_eq!(rotated.code, 0, "{}", rotated.stderr);
    assert_eq!(scrape(&server).1.value("fleetgroups_tokens", &[]), 1.0);

    // Tokens that expire stop counting without waiting for the hourly purge.
    let short = TestServer::with(
        crate::support::Options::default().env("FLEETGROUPS_AUTH_TOKEN_TTL_SECS", "1"),
    );
    short.admin_token();
    assert_eq!(scrape(&short).1.value("fleetgroups_tokens", &[]), 1.0);
    crate::support::poll_until(
        std::time::Duration::from_secs(10),
        "the token to expire",
        || (scrape(&short).1.value("fleetgroups_tokens", &[]) == 0.0).then_some(()),
    );
}

#[test]
fn store_healthy_turns_0_when_the_store_refuses_writes() {
    let server = TestServer::with(
        crate::support::Options::default().env("FLEETGROUPS_FAULT_FAIL_FLUSH_AFTER", "5"),
    );
    let token = server.admin_token();
    assert_eq!(
        scrape(&server).1.value("fleetgroups_store_healthy", &[]),
        1.0
    );
    let refused = (0..20).any(|i| {
        let r = server
            .req("POST", "/api/groups")
            .bearer(&token)
            .json(&json!({"name": format!("g{i}")}))
            .send();
        assert!(matches!(r.status, 201 | 503), "{}", r.text());
        r.status == 503
    });
    assert!(refused, "a write must fail once flushing fails");
    assert_eq!(server.req("GET", "/readyz").send().status, 503);
    let (text, m) = scrape(&server);
    assert_eq!(m.value("fleetgroups_store_healthy", &[]), 0.0, "{text}");
}

/// `GET path` from `from` to `to`, on a connection of its own.
fn get_from(from: &str, to: std::net::SocketAddr, path: &str) -> crate::support::Resp {
    let mut s = crate::support::connect_from(from.parse().unwrap(), to);
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    crate::support::read_response(&mut s)
}

#[test]
fn only_allowed_networks_may_read_metrics() {
    // The default: loopback and the private ranges, so any 127.x.y.z may.
    let server = TestServer::start();
    for from in ["127.0.0.1", "127.0.0.2", "127.1.2.3"] {
        assert_eq!(
            get_from(from, server.addr, "/metrics").status,
            200,
            "{from}"
        );
    }

    let server = TestServer::with(
        crate::support::Options::default()
            .config("[metrics]\nallowed_networks = [\"127.0.0.1/32\"]\n"),
    );
    assert_eq!(get_from("127.0.0.1", server.addr, "/metrics").status, 200);
    let refused = get_from("127.0.0.2", server.addr, "/metrics");
    refused.expect_error_message(
        403,
        "forbidden",
        "Forbidden: metrics are not served to this address (metrics.allowed_networks)",
    );
    assert!(
        !refused.text().contains("fleetgroups_"),
        "{}",
        refused.text()
    );
    // Only /metrics: the probes and the API answer everyone as before.
    assert_eq!(get_from("127.0.0.2", server.addr, "/healthz").status, 200);
    assert_eq!(get_from("127.0.0.2", server.addr, "/readyz").status, 200);
    assert_eq!(
        get_from("127.0.0.2", server.addr, "/api/groups").status,
        401
    );
    // The refusals are counted, so a scraper on the wrong network shows up.
    let (_, m) = scrape(&server);
    assert_eq!(
        m.value(
            "fleetgroups_requests_total",
            &[("route", "/metrics"), ("status", "403")]
        ),
        1.0
    );

    // Networks that leave out loopback altogether.
    let server = TestServer::with(crate::support::Options::default().env(
        "FLEETGROUPS_METRICS_ALLOWED_NETWORKS",
        "10.0.0.0/8,192.168.0.0/16",
    ));
    server
        .req("GET", "/metrics")
        .send()
        .expect_error(403, "forbidden");
    // Turned off is 404 whatever the address, as before.
    let server = TestServer::with(
        crate::support::Options::default()
            .config("[metrics]\nenabled = false\nallowed_networks = [\"127.0.0.1/32\"]\n"),
    );
    for from in ["127.0.0.1", "127.0.0.2"] {
        get_from(from, server.addr, "/metrics").expect_error(404, "not_found");
    }
}

#[test]
fn on_a_dual_stack_listener_ipv4_clients_compare_as_ipv4() {
    // On [::] an IPv4 client's address is ::ffff:127.0.0.x; it must match 127.0.0.1/32
    // (and not ::/0). ::1 is matched as IPv6.
    let server = TestServer::with(
        crate::support::Options::default()
            .listen("[::]:0")
            .config("[metrics]\nallowed_networks = [\"127.0.0.1/32\", \"::1/128\"]\n"),
    );
    let port = server.addr.port();
    let v4 = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let v6 = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
    assert_eq!(get_from("127.0.0.1", v4, "/metrics").status, 200);
    get_from("127.0.0.2", v4, "/metrics").expect_error(403, "forbidden");
    assert_eq!(get_from("::1", v6, "/metrics").status, 200);

    let server = TestServer::with(
        crate::support::Options::default()
            .listen("[::]:0")
            .config("[metrics]\nallowed_networks = [\"::/0\"]\n"),
    );
    let v4 = std::net::SocketAddr::from(([127, 0, 0, 1], server.addr.port()));
    get_from("127.0.0.1", v4, "/metrics").expect_error(403, "forbidden");
}

#[test]
fn a_bad_network_stops_the_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["10.0.0.0/33", "192.168.1.0/16", "gateway.local", ""] {
        let out = crate::support::run_expecting_exit(
            dir.path(),
            &["--data-dir", "data", "serve", "--listen", "127.0.0.1:0"],
            &[("FLEETGROUPS_METRICS_ALLOWED_NETWORKS", bad)],
        );
        assert_eq!(out.code, 2, "{bad:?}: {out:?}");
        assert!(
            out.stderr.contains("metrics.allowed_networks: "),
            "{bad:?}: {}",
            out.stderr
        );
    }
}
