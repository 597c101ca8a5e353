//! `systemd/fleetgroups.service` (docs/operations/install.md "What the unit does") and the backup
//! pair `fleetgroups-backup.service` + `.timer` (issue 12 item 4): the unit text must
//! carry every required directive, and systemd itself (`systemd-analyze`, which
//! scripts/test.sh installs; without it these tests fail) must accept the units without
//! a warning and rate each service's exposure at 2.0 or less.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

const UNIT: &str = include_str!("../../systemd/fleetgroups.service");
const BACKUP_UNIT: &str = include_str!("../../systemd/fleetgroups-backup.service");
const BACKUP_TIMER: &str = include_str!("../../systemd/fleetgroups-backup.timer");

/// `Key=value` settings of the `[Service]` section; repeated keys keep every value.
fn service_settings() -> BTreeMap<String, Vec<String>> {
    settings(UNIT, "[Service]")
}

/// `Key=value` settings of one section of `unit`; repeated keys keep every value.
fn settings(unit: &str, wanted: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut section = "";
    for line in unit.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') {
            section = line;
            continue;
        }
        if section != wanted {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not a setting: {line:?}"));
        out.entry(k.trim().to_string())
            .or_default()
            .push(v.trim().to_string());
    }
    out
}

#[test]
fn the_unit_has_every_required_directive() {
    let s = service_settings();
    let one = |k: &str| -> &str {
        let v = s.get(k).unwrap_or_else(|| panic!("{k}= missing"));
        assert_eq!(v.len(), 1, "{k}= set more than once: {v:?}");
        &v[0]
    };
    let yes = |k: &str| assert_eq!(one(k), "yes", "{k}");
    assert_eq!(one("Type"), "notify");
    assert_eq!(
        one("ExecStart"),
        "/usr/bin/fleetgroups --config /etc/fleetgroups/config.toml serve"
    );
    let env = &s["Environment"];
    assert!(
        env.contains(&"FLEETGROUPS_DATA_DIR=/var/lib/fleetgroups".to_string()),
        "{env:?}"
    );
    assert!(
        env.contains(&"FLEETGROUPS_ADMIN_SOCKET=/run/fleetgroups/admin.sock".to_string()),
        "{env:?}"
    );
    assert_eq!(one("StateDirectory"), "fleetgroups");
    assert_eq!(one("RuntimeDirectory"), "fleetgroups");
    assert_eq!(one("ConfigurationDirectory"), "fleetgroups");
    // A dedicated user: the admin socket answers only the server's uid, and the
    // operator runs the CLI as this user (docs/operations/install.md).
    assert_eq!(one("User"), "fleetgroups");
    assert_eq!(one("Group"), "fleetgroups");
    for k in [
        "NoNewPrivileges",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "RestrictNamespaces",
        "LockPersonality",
        "MemoryDenyWriteExecute",
    ] {
        yes(k);
    }
    assert_eq!(one("ProtectSystem"), "strict");
    assert_eq!(one("RestrictAddressFamilies"), "AF_INET AF_INET6 AF_UNIX");
    assert_eq!(s["SystemCallFilter"][0], "@system-service");
    assert_eq!(one("SystemCallArchitectures"), "native");
    assert_eq!(one("CapabilityBoundingSet"), "", "no capabilities at all");
    assert_eq!(one("UMask"), "0077");
    // Any death systemd did not ask for restarts the service: `on-failure` would leave
    // it down after a SIGHUP, SIGTERM or exit 0 that systemd counts as clean.
    assert_eq!(one("Restart"), "always");
    // … except a configuration error (exit 2) or a data directory that needs the
    // operator (exit 3), which a restart cannot fix.
    assert_eq!(one("RestartPreventExitStatus"), "2 3");
    // `systemctl reload` sends SIGHUP (src/server/reload.rs).
    assert_eq!(one("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(one("WatchdogSec"), "30");
    // The stop timeout must cover the grace period (default 10 s) plus the final flush.
    let stop = one("TimeoutStopSec").trim_end_matches('s');
    let stop: u64 = stop.parse().expect("TimeoutStopSec in seconds");
    let grace = fleetgroups::config::Config::default().shutdown_grace_secs;
    assert!(
        stop > grace,
        "TimeoutStopSec={stop} must exceed the {grace} s grace period"
    );
    // Restarts never run into the start limit and stop for good.
    assert!(UNIT.contains("\n[Unit]\n") && UNIT.contains("\nStartLimitIntervalSec=0\n"));
    assert!(UNIT.contains("\n[Install]\nWantedBy=multi-user.target\n"));
}

/// `systemd-analyze`; a test that needs it fails when it is not installed.
fn systemd_analyze() -> &'static str {
    let found = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "systemd-analyze is missing: install Debian's systemd package (scripts/test.sh does)"
    );
    "systemd-analyze"
}

/// The unit `name` with `ExecStart` pointing at the binary under test, since `verify`
/// checks that the executable exists.
fn unit_for_verify(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    let text = text.replace("/usr/bin/fleetgroups", crate::support::BIN);
    std::fs::write(&path, text).unwrap();
    path
}

/// `systemd-analyze verify` accepts `units` (written together into one directory, so
/// the timer finds its service) without a word on stderr. `--man=no`: the
/// `Documentation=man:` pages exist only once the package is installed.
fn verify_quietly(tool: &str, units: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<_> = units
        .iter()
        .map(|(name, text)| unit_for_verify(dir.path(), name, text))
        .collect();
    let out = Command::new(tool)
        .args(["verify", "--man=no"])
        .args(&paths)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "verify failed: {stderr}");
    // verify exits 0 even for unknown or misspelt keys; it only warns.
    assert!(stderr.trim().is_empty(), "verify warned: {stderr}");
    dir
}

#[test]
fn systemd_accepts_the_unit_and_rates_it_ok() {
    let tool = systemd_analyze();
    let dir = verify_quietly(tool, &[("fleetgroups.service", UNIT)]);
    assert_rated_ok(tool, &dir.path().join("fleetgroups.service"));
}

/// `systemd-analyze security --offline=yes` rates `unit` at 2.0 ("OK") or better.
fn assert_rated_ok(tool: &str, unit: &Path) {
    let out = Command::new(tool)
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(unit)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| {
            panic!(
                "no rating in: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the rating in {line:?}"));
    assert!(score <= 2.0, "exposure {score} > 2.0: {line}");
}

#[test]
fn the_backup_service_runs_the_backup_as_the_service_user_in_the_same_sandbox() {
    let s = settings(BACKUP_UNIT, "[Service]");
    let one = |k: &str| -> &str {
        let v = s.get(k).unwrap_or_else(|| panic!("{k}= missing"));
        assert_eq!(v.len(), 1, "{k}= set more than once: {v:?}");
        &v[0]
    };
    assert_eq!(one("Type"), "oneshot");
    assert_eq!(
        one("ExecStart"),
        "/usr/bin/fleetgroups --config /etc/fleetgroups/config.toml backup --dir /var/lib/fleetgroups/backups --keep 14"
    );
    // The same store and socket as the server, the same user.
    let server = service_settings();
    for k in ["Environment", "User", "Group", "UMask", "WorkingDirectory"] {
        assert_eq!(
            s.get(k),
            server.get(k),
            "{k}= differs from fleetgroups.service"
        );
    }
    // Writes land in the state directory, and backups/ exists before the start.
    assert_eq!(one("StateDirectory"), "fleetgroups fleetgroups/backups");
    // Declaring the server's runtime directory would delete its admin socket when
    // the oneshot ends.
    assert!(!s.contains_key("RuntimeDirectory"), "{s:?}");
    // Every sandbox setting of the server, at least as strict.
    let relaxed_on_purpose = [
        // Settings of a long-running notify service, not of a sandbox.
        "Type",
        "NotifyAccess",
        "ExecStart",
        "ExecReload",
        "Restart",
        "RestartSec",
        "RestartPreventExitStatus",
        "WatchdogSec",
        "TimeoutStopSec",
        "TimeoutStartSec",
        "KillSignal",
        "KillMode",
        "LimitNOFILE",
        "RuntimeDirectory",
        "RuntimeDirectoryMode",
        "ConfigurationDirectory",
        "ConfigurationDirectoryMode",
        "StateDirectory",
        // Narrowed: the CLI needs a Unix socket only.
        "RestrictAddressFamilies",
    ];
    for (k, v) in &server {
        if relaxed_on_purpose.contains(&k.as_str()) {
            continue;
        }
        assert_eq!(s.get(k), Some(v), "{k}= differs from fleetgroups.service");
    }
    assert_eq!(one("RestrictAddressFamilies"), "AF_UNIX");
    assert_eq!(one("PrivateNetwork"), "yes");
    // It waits for a server starting at the same time rather than racing its lock.
    let unit = settings(BACKUP_UNIT, "[Unit]");
    assert_eq!(unit["After"], vec!["fleetgroups.service".to_string()]);
    // Enabled through the timer only.
    assert!(!BACKUP_UNIT.contains("[Install]"));
}

#[test]
fn the_backup_timer_is_daily_persistent_and_spread() {
    let t = settings(BACKUP_TIMER, "[Timer]");
    assert_eq!(t["OnCalendar"], vec!["daily".to_string()]);
    assert_eq!(t["Persistent"], vec!["true".to_string()]);
    assert!(t.contains_key("RandomizedDelaySec"), "{t:?}");
    assert!(BACKUP_TIMER.contains("\n[Install]\nWantedBy=timers.target\n"));
}

#[test]
fn systemd_accepts_the_backup_units_and_rates_the_service_ok() {
    let tool = systemd_analyze();
    let dir = verify_quietly(
        tool,
        &[
            ("fleetgroups.service", UNIT),
            ("fleetgroups-backup.service", BACKUP_UNIT),
            ("fleetgroups-backup.timer", BACKUP_TIMER),
        ],
    );
    assert_rated_ok(tool, &dir.path().join("fleetgroups-backup.service"));
}
