//! Configuration through the real binary (docs/configuration.md): `check-config`
//! prints the effective values with the TLS key redacted; flag > environment > file >
//! default, for the file's own location too; a bad key stops the start with exit 2 and
//! touches nothing; and two servers with different configurations run side by side.

use std::path::Path;

use serde_json::json;

use crate::support::{run_expecting_exit, Options, TestServer};

/// Runs `check-config` in `dir` and returns the effective configuration it printed.
fn effective(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> toml::Table {
    let mut all = args.to_vec();
    all.push("check-config");
    let out = run_expecting_exit(dir, &all, env);
    assert_eq!(out.code, 0, "{all:?}: {}", out.stderr);
    assert!(
        out.stderr.contains("configuration is valid"),
        "{}",
        out.stderr
    );
    out.stdout
        .parse()
        .unwrap_or_else(|e| panic!("check-config printed no TOML ({e}):\n{}", out.stdout))
}

fn get<'a>(t: &'a toml::Table, path: &str) -> &'a toml::Value {
    let mut v = None::<&toml::Value>;
    let mut table = t;
    for part in path.split('.') {
        let next = table
            .get(part)
            .unwrap_or_else(|| panic!("{path} missing in {t}"));
        if let toml::Value::Table(inner) = next {
            table = inner;
        }
        v = Some(next);
    }
    v.unwrap_or_else(|| panic!("{path}"))
}

#[test]
fn check_config_prints_every_effective_value_with_the_key_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("secret-key.pem");
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    std::fs::write(
        dir.path().join("c.toml"),
        format!(
            "[tls]\ncert = {:?}\nkey = {:?}\n[limits]\nmax_body_bytes = 4096\n",
            cert.display().to_string(),
            key.display().to_string()
        ),
    )
    .unwrap();
    let out = run_expecting_exit(dir.path(), &["--config", "c.toml", "check-config"], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        !out.stdout.contains("secret-key"),
        "the key path shows:\n{}",
        out.stdout
    );
    assert!(!out.stdout.contains("PRIVATE KEY"), "{}", out.stdout);
    let t: toml::Table = out.stdout.parse().unwrap();
    assert_eq!(get(&t, "tls.key").as_str(), Some("***"));
    assert_eq!(get(&t, "tls.cert").as_str(), Some(cert.to_str().unwrap()));
    assert_eq!(get(&t, "limits.max_body_bytes").as_integer(), Some(4096));
    // Every other key shows its default: the shipped config.toml lists them all.
    let shipped: toml::Table = include_str!("../../config.toml").parse().unwrap();
    for (section, value) in &shipped {
        match value {
            toml::Value::Table(keys) => {
                for k in keys.keys() {
                    get(&t, &format!("{section}.{k}"));
                }
            }
            _ => {
                get(&t, section);
            }
        }
    }
    assert_eq!(get(&t, "limits.body_timeout_secs").as_integer(), Some(30));
}

#[test]
fn flag_beats_environment_beats_file_beats_default() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("file.toml"),
        "data_dir = \"from-file\"\nlisten = \"127.0.0.1:1111\"\n[limits]\nmax_body_bytes = 2048\n",
    )
    .unwrap();
    let file = ["--config", "file.toml"];
    let env_dir = ("FLEETGROUPS_DATA_DIR", "from-env");
    let env_listen = ("FLEETGROUPS_LISTEN", "127.0.0.1:2222");
    let env_body = ("FLEETGROUPS_LIMITS_MAX_BODY_BYTES", "8192");

    // data_dir at each level.
    let all = [&file[..], &["--data-dir", "from-flag"]].concat();
    let t = effective(d, &all, &[env_dir]);
    assert_eq!(get(&t, "data_dir").as_str(), Some("from-flag"));
    let t = effective(d, &file, &[env_dir]);
    assert_eq!(get(&t, "data_dir").as_str(), Some("from-env"));
    let t = effective(d, &file, &[]);
    assert_eq!(get(&t, "data_dir").as_str(), Some("from-file"));
    // No --config and no ./config.toml in this directory: the defaults.
    let t = effective(d, &[], &[]);
    assert_eq!(get(&t, "data_dir").as_str(), Some("data"));
    assert_eq!(get(&t, "listen").as_str(), Some("127.0.0.1:8080"));
    assert_eq!(
        get(&t, "limits.max_body_bytes").as_integer(),
        Some(1_048_576)
    );

    // Sectioned keys: environment over file.
    let t = effective(d, &file, &[env_listen, env_body]);
    assert_eq!(get(&t, "listen").as_str(), Some("127.0.0.1:2222"));
    assert_eq!(get(&t, "limits.max_body_bytes").as_integer(), Some(8192));
    let t = effective(d, &file, &[]);
    assert_eq!(get(&t, "listen").as_str(), Some("127.0.0.1:1111"));
    assert_eq!(get(&t, "limits.max_body_bytes").as_integer(), Some(2048));

    // Which file: --config over FLEETGROUPS_CONFIG over ./config.toml.
    std::fs::write(d.join("other.toml"), "data_dir = \"from-other\"\n").unwrap();
    std::fs::write(d.join("config.toml"), "data_dir = \"from-cwd\"\n").unwrap();
    let t = effective(d, &file, &[("FLEETGROUPS_CONFIG", "other.toml")]);
    assert_eq!(get(&t, "data_dir").as_str(), Some("from-file"));
    let t = effective(d, &[], &[("FLEETGROUPS_CONFIG", "other.toml")]);
    assert_eq!(get(&t, "data_dir").as_str(), Some("from-other"));
    let t = effective(d, &[], &[]);
    assert_eq!(get(&t, "data_dir").as_str(), Some("from-cwd"));

    // The serve flag --listen beats both: TestServer passes --listen 127.0.0.1:0.
    let server = TestServer::with(
        Options::default()
            .config("listen = \"127.0.0.1:1111\"\n")
            .env("FLEETGROUPS_LISTEN", "127.0.0.1:2222"),
    );
    assert!(
        ![1111, 2222].contains(&server.addr.port()),
        "{}",
        server.addr
    );
    assert_eq!(server.req("GET", "/healthz").send().status, 200);
}

#[test]
fn a_bad_key_stops_the_start_naming_it_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (text, env, names) in [
        ("[limits]\nmax_body_bytez = 1\n", None, "max_body_bytez"),
        (
            "[limits]\nmax_body_bytes = \"big\"\n",
            None,
            "limits.max_body_bytes",
        ),
        (
            "",
            Some(("FLEETGROUPS_AUTH_TOKEN_TTL_SECS", "0")),
            "auth.token_ttl_secs",
        ),
        ("", Some(("FLEETGROUPS_LOG_FORMAT", "xml")), "log.format"),
    ] {
        std::fs::write(d.join("bad.toml"), text).unwrap();
        let env: Vec<(&str, &str)> = env.into_iter().collect();
        for cmd in ["serve", "check-config"] {
            let out = run_expecting_exit(
                d,
                &["--config", "bad.toml", "--data-dir", "data", cmd],
                &env,
            );
            assert_eq!(out.code, 2, "{text} {env:?} {cmd}: {}", out.stderr);
            assert!(out.stderr.contains(names), "{names}: {}", out.stderr);
            assert!(!d.join("data").exists(), "{cmd} created the data directory");
        }
    }
}

#[test]
fn two_servers_with_different_configurations_differ() {
    let small = TestServer::with(Options::default().config("[limits]\nmax_body_bytes = 2048\n"));
    let large = TestServer::start();
    let devices: Vec<String> = (0..200).map(|i| format!("device-{i:04}")).collect();
    let body = json!({"name": "Big", "devices": devices});
    assert!(serde_json::to_vec(&body).unwrap().len() > 2048);
    let r = small
        .req("POST", "/api/groups")
        .bearer(&small.admin_token())
        .json(&body)
        .send();
    r.expect_error(413, "body_too_large");
    let r = large
        .req("POST", "/api/groups")
        .bearer(&large.admin_token())
        .json(&body)
        .send();
    assert_eq!(r.status, 201, "{}", r.text());
    // Nothing of the refused request was kept.
    let token = small.admin_token();
    let r = small.req("GET", "/api/groups").bearer(&token).send();
    assert_eq!(r.json()["groups"], json!([]));
}

/// What Kubernetes injects into a pod for a Service named `fleetgroups` with a port
/// 8080 named `http`.
const SERVICE_LINKS: [(&str, &str); 8] = [
    ("FLEETGROUPS_PORT", "tcp://10.96.0.12:8080"),
    ("FLEETGROUPS_PORT_8080_TCP", "tcp://10.96.0.12:8080"),
    ("FLEETGROUPS_PORT_8080_TCP_PROTO", "tcp"),
    ("FLEETGROUPS_PORT_8080_TCP_PORT", "8080"),
    ("FLEETGROUPS_PORT_8080_TCP_ADDR", "10.96.0.12"),
    ("FLEETGROUPS_SERVICE_HOST", "10.96.0.12"),
    ("FLEETGROUPS_SERVICE_PORT", "8080"),
    ("FLEETGROUPS_SERVICE_PORT_HTTP", "8080"),
];

#[test]
fn kubernetes_service_link_variables_are_ignored_with_one_warning() {
    let mut options = Options::default();
    for (k, v) in SERVICE_LINKS {
        options = options.env(k, v);
    }
    let mut server = TestServer::with(options);
    assert_eq!(server.req("GET", "/healthz").send().status, 200);
    let log = server.log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Kubernetes service-link"))
        .collect();
    assert_eq!(warnings.len(), 1, "one line for all of them:\n{log}");
    assert!(warnings[0].contains("WARN"), "{}", warnings[0]);
    for (name, _) in SERVICE_LINKS {
        assert!(warnings[0].contains(name), "{name}: {}", warnings[0]);
    }
    assert_eq!(server.stop().code(), Some(0));
}

#[test]
fn a_misspelt_setting_beside_service_links_still_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    for misspelt in [
        ("FLEETGROUPS_LIMITS_MAX_BODY_BYTE", "4096"),
        // Looks like a service link, but Kubernetes would have written tcp://….
        ("FLEETGROUPS_PORT", "8080"),
    ] {
        let mut env: Vec<(&str, &str)> = SERVICE_LINKS
            .iter()
            .copied()
            .filter(|(k, _)| *k != misspelt.0)
            .collect();
        env.push(misspelt);
        let out = run_expecting_exit(
            dir.path(),
            &["--data-dir", "data", "serve", "--listen", "127.0.0.1:0"],
            &env,
        );
        assert_eq!(out.code, 2, "{misspelt:?}: {}", out.stderr);
        assert!(
            out.stderr.contains(misspelt.0) && out.stderr.contains("unknown environment variable"),
            "{misspelt:?}: {}",
            out.stderr
        );
        assert!(!dir.path().join("data").exists());
    }
}

/// A password in `replication.postgres_url` is never shown, whatever form it takes:
/// the user info, a `password=` parameter (also with a percent-encoded name), an
/// `sslpassword=` parameter. Not by `check-config` (text, JSON, or the error of a URL
/// it refuses), not in the server's log while it fails to reach the database; and the
/// default `sslmode=prefer` is warned about once.
#[test]
fn every_form_of_a_database_password_is_redacted_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let url =
        "postgresql://fleet:Ui9secret@127.0.0.1:1/fleet?pass%77ord=Qp7secret&connect_timeout=2";
    let env = [("FLEETGROUPS_REPLICATION_POSTGRES_URL", url)];
    let mut shown = Vec::new();
    for output in ["text", "json"] {
        let out = run_expecting_exit(dir.path(), &["check-config", "--output", output], &env);
        assert_eq!(out.code, 0, "{output}: {}", out.stderr);
        assert!(out.stdout.contains("pass%77ord=***"), "{}", out.stdout);
        assert!(
            out.stderr
                .contains("warning: replication.postgres_url: sslmode=prefer"),
            "{}",
            out.stderr
        );
        shown.extend([out.stdout, out.stderr]);
    }
    // A URL check-config refuses: the error is scrubbed too.
    for bad in [
        "postgresql://fleet@127.0.0.1:1/fleet?password=Qp7secret&sslmode=maybe",
        "postgresql://fleet@127.0.0.1:1/fleet?sslpassword=Qp7secret&nonsense=1",
    ] {
        let out = run_expecting_exit(
            dir.path(),
            &["check-config", "--output", "json"],
            &[("FLEETGROUPS_REPLICATION_POSTGRES_URL", bad)],
        );
        assert_eq!(out.code, 2, "{bad}: {}", out.stderr);
        shown.extend([out.stdout, out.stderr]);
    }
    // The server retries a database that is not there and logs why, without it.
    let mut server = TestServer::with(
        Options::default()
            .env("FLEETGROUPS_REPLICATION_POSTGRES_URL", url)
            .env("FLEETGROUPS_LOG_LEVEL", "debug"),
    );
    server.wait_for_log("cannot reach the central database");
    let m = server.req("GET", "/metrics").send().text();
    assert!(server.stop().success());
    let log = server.log();
    assert_eq!(
        log.matches("sslmode=prefer (the default) falls back to plaintext")
            .count(),
        1,
        "warned once:\n{log}"
    );
    shown.extend([log, m]);
    for text in &shown {
        for secret in ["Ui9secret", "Qp7secret"] {
            assert!(!text.contains(secret), "{secret} was shown: {text}");
        }
    }
}
