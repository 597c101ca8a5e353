//! The sections clap cannot derive from the command line, for every command's manual
//! page: FILES, ENVIRONMENT, EXIT STATUS and EXAMPLES (and SEE ALSO). Written as data so
//! each page reads like the command it describes; `assets.rs` appends them to what
//! clap_mangen renders. Facts here repeat docs/operations/: a test checks every page has
//! all four sections, and the exit codes are the ones `cli.rs` returns.

use roff::{bold, roman, Roff};

/// What one page adds.
struct Page {
    exit: &'static [(&'static str, &'static str)],
    examples: &'static [(&'static str, &'static str)],
}

const FILES: &[(&str, &str)] = &[
    (
        "/etc/fleetgroups/config.toml",
        "The configuration the package installs; read when neither --config nor FLEETGROUPS_CONFIG names a file and there is no ./config.toml. See fleetgroups.toml(5).",
    ),
    ("./config.toml", "Read before the system file when it exists."),
    (
        "/var/lib/fleetgroups (the package's data_dir; ./data by default)",
        "The data directory, 0700: store/ (the embedded store), initial-api-key (the first start's key of admin, 0600; removed when admin's key is rotated), last-backup, backups/ (the daily backups of fleetgroups-backup.timer).",
    ),
    (
        "/run/fleetgroups/admin.sock (admin.socket; <data_dir>/admin.sock by default)",
        "The running server's admin socket, 0600, answering only its own user; the CLI's user and backup commands go through it when a server answers there.",
    ),
];

const ENVIRONMENT: &[(&str, &str)] = &[
    ("FLEETGROUPS_CONFIG", "The configuration file, as --config."),
    ("FLEETGROUPS_DATA_DIR", "The data directory, as --data-dir."),
    (
        "FLEETGROUPS_<SECTION>_<KEY>",
        "Every configuration key (FLEETGROUPS_LISTEN, FLEETGROUPS_LIMITS_MAX_BODY_BYTES, ...); it wins over the file and loses to a flag. A FLEETGROUPS_ variable that names no key is an error (exit status 2), except Kubernetes service links, which are ignored with a warning. Every key and its variable: fleetgroups.toml(5).",
    ),
    (
        "FLEETGROUPS_SYSTEM_CONFIG",
        "Replaces the path /etc/fleetgroups/config.toml (empty: no system file).",
    ),
    (
        "NOTIFY_SOCKET, WATCHDOG_USEC, JOURNAL_STREAM",
        "Set by systemd: serve reports readiness and pings the watchdog, and writes syslog priorities instead of timestamps under journald.",
    ),
];

const USER_EXIT: &[(&str, &str)] = &[
    ("0", "Done."),
    (
        "1",
        "Failed: an unknown or duplicate user, a data directory owned by another user (the message gives the command to run as the owner), a store locked by a server whose admin socket does not answer, stdout that cannot be written.",
    ),
    ("2", "Bad usage or configuration (an invalid name, --daily-limit 0)."),
];

// Long because it is one table entry per man page: static text that reads best whole.
fn page(name: &str) -> Page {
    match name {
        "fleetgroups" | "fleetgroups-serve" => Page {
            exit: &[
                ("0", "Stopped cleanly after SIGTERM or SIGINT (and every command that succeeded)."),
                ("1", "The listen address, the store or the admin socket could not be had, the final flush failed, or a second signal ended the grace period."),
                ("2", "Bad usage or configuration, including TLS and replication files that cannot be used."),
                ("3", "The data directory needs the operator: a damaged store, an interrupted restore, another store format. The unit does not restart it."),
            ],
            examples: &[
                ("Serve on the defaults (127.0.0.1:8080, data in ./data):", "fleetgroups"),
                ("Serve on every address, another port:", "fleetgroups serve --listen 0.0.0.0:8081"),
                ("As the package's service does:", "systemctl enable --now fleetgroups"),
            ],
        },
        "fleetgroups-user" => Page {
            exit: USER_EXIT,
            examples: &[
                ("The users of the installed service, run as its user:", "runuser -u fleetgroups -- fleetgroups user list"),
                ("A read-only user for a dashboard, its key in a variable:", "KEY=$(fleetgroups user add grafana --role read)"),
            ],
        },
        "fleetgroups-user-add" => Page {
            exit: USER_EXIT,
            examples: &[
                ("A user of account fleet-a with 5000 requests a day:", "fleetgroups user add ci --account fleet-a --daily-limit 5000"),
                ("For a script (one JSON document on stdout):", "fleetgroups user add ci --role read --output json"),
            ],
        },
        "fleetgroups-user-list" => Page {
            exit: USER_EXIT,
            examples: &[
                ("As the service's user:", "runuser -u fleetgroups -- fleetgroups user list"),
                ("For a script:", "fleetgroups user list --output json"),
            ],
        },
        "fleetgroups-user-rotate-key" => Page {
            exit: USER_EXIT,
            examples: &[(
                "A new key for admin; its old key and tokens stop working, and initial-api-key is removed:",
                "fleetgroups user rotate-key admin",
            )],
        },
        "fleetgroups-user-set" => Page {
            exit: USER_EXIT,
            examples: &[
                ("Make ci read-only with the configured daily limit:", "fleetgroups user set ci --role read --daily-limit none"),
                ("Lock ci out (its tokens stop working):", "fleetgroups user set ci --disabled true"),
            ],
        },
        "fleetgroups-user-remove" => Page {
            exit: USER_EXIT,
            examples: &[("Remove ci (the account's groups stay):", "fleetgroups user remove ci")],
        },
        "fleetgroups-backup" => Page {
            exit: &[
                ("0", "The backup is written, fsynced and in place (and, with --keep, the old ones removed)."),
                ("1", "Failed: the file could not be written, the data directory belongs to another user, or a backup was written but an old one could not be removed."),
                ("2", "Bad usage or configuration."),
            ],
            examples: &[
                ("The daily backup as the package's timer takes it:", "fleetgroups backup --dir /var/lib/fleetgroups/backups --keep 14"),
                ("One compressed file, through the running server (the path must be writable by its user):", "runuser -u fleetgroups -- fleetgroups backup /var/lib/fleetgroups/fg.jsonl.gz"),
            ],
        },
        "fleetgroups-restore" => Page {
            exit: &[
                ("0", "Restored (or, with --check, the file is a valid backup)."),
                ("1", "The file is not a valid backup, the data directory is not empty or belongs to another user, or writing failed; what restore created is removed."),
                ("2", "Bad usage or configuration."),
            ],
            examples: &[
                ("Check a backup without writing anything:", "fleetgroups restore --check /var/lib/fleetgroups/backups/fleetgroups-20261201T085300Z.jsonl.gz"),
                ("Restore into a new data directory, then point the service at it:", "fleetgroups --data-dir /var/lib/fleetgroups-new restore fg.jsonl.gz"),
            ],
        },
        "fleetgroups-check-config" => Page {
            exit: &[("0", "The configuration is valid."), ("2", "It is not; the message names the key.")],
            examples: &[
                ("The installed service's configuration:", "fleetgroups --config /etc/fleetgroups/config.toml check-config"),
                ("For a script:", "fleetgroups check-config --output json"),
            ],
        },
        "fleetgroups-check" => Page {
            exit: &[
                ("0", "The store is clean."),
                ("1", "It is damaged (each problem listed), a server is running on it, or it cannot be opened."),
                ("2", "Bad usage or configuration."),
            ],
            examples: &[(
                "Check the service's store while it is stopped:",
                "systemctl stop fleetgroups && runuser -u fleetgroups -- fleetgroups check",
            )],
        },
        "fleetgroups-healthcheck" => Page {
            exit: &[
                ("0", "/readyz answered 200 within 3 s."),
                ("1", "Anything else, a configuration that cannot be read included (Docker reserves 2)."),
            ],
            examples: &[("In a Dockerfile:", "HEALTHCHECK CMD [\"fleetgroups\", \"healthcheck\"]")],
        },
        // A page this table does not know yet still gets the sections, with the
        // codes every command shares.
        _ => Page {
            exit: &[("0", "Done."), ("1", "Failed."), ("2", "Bad usage or configuration.")],
            examples: &[("Its options:", "fleetgroups help")],
        },
    }
}

/// The sections for the page `name` (`fleetgroups`, `fleetgroups-user-add`, …), as roff
/// to append to the page clap_mangen rendered (which already has the preamble).
pub fn sections(name: &str) -> String {
    let page = page(name);
    let mut r = Roff::new();
    let list = |r: &mut Roff, title: &str, items: &[(&str, &str)]| {
        r.control("SH", [title]);
        for (term, text) in items {
            r.control("TP", []);
            r.text([bold(*term)]);
            r.text([roman(*text)]);
        }
    };
    list(&mut r, "EXIT STATUS", page.exit);
    list(&mut r, "ENVIRONMENT", ENVIRONMENT);
    list(&mut r, "FILES", FILES);
    r.control("SH", ["EXAMPLES"]);
    for (what, command) in page.examples {
        r.text([roman(*what)]);
        r.control("PP", []);
        r.control("RS", ["4"]);
        r.text([bold(*command)]);
        r.control("RE", []);
        r.control("PP", []);
    }
    r.control("SH", ["SEE ALSO"]);
    r.text([roman(
        "fleetgroups(1), fleetgroups.toml(5), systemctl(1), journalctl(1); the documentation in /usr/share/doc/fleetgroups.",
    )]);
    // The page already starts with roff's apostrophe preamble; leave it out here.
    let preamble = Roff::new().render();
    let text = r.render();
    text.strip_prefix(&preamble).unwrap_or(&text).to_string()
}
