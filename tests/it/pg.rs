//! A throwaway PostgreSQL cluster for the replication tests: `initdb` and `pg_ctl` from
//! Debian's `postgresql` package (found on PATH or under /usr/lib/postgresql/*/bin),
//! run as the `postgres` user (initdb refuses root) in a temporary directory chowned
//! to it, on a free 127.0.0.1 port with `trust` authentication. Anything that keeps it
//! from starting panics with the reason: a test that needs PostgreSQL never skips.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub struct Pg {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    runtime: tokio::runtime::Runtime,
    /// Extra server options (`-c ssl=on` …).
    extra: String,
    /// Whether the test's own connections need TLS (`hostssl` only).
    tls_only: bool,
}

fn bin_dir() -> PathBuf {
    if let Ok(out) = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
    {
        let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !p.is_empty() {
            let real = std::fs::canonicalize(&p).unwrap_or_else(|_| PathBuf::from(&p));
            return real.parent().expect("initdb has a directory").to_path_buf();
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path().join("bin"))
                .filter(|b| b.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!(
            "PostgreSQL is required for the replication tests and was not found \
             (no initdb on PATH or under /usr/lib/postgresql/*/bin): apt-get install -y postgresql"
        )
    })
}

fn as_postgres(bin: &Path, tool: &str, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", "postgres", "--"])
        .arg(bin.join(tool))
        .args(args);
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {tool} as postgres (runuser): {e}"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn postgres_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("id");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("there is no postgres user (apt-get install -y postgresql)"))
    };
    (id("-u"), id("-g"))
}

impl Pg {
    pub fn start() -> Pg {
        Self::start_with(None)
    }

    /// A cluster that takes TCP connections only over TLS (`hostssl`), with this
    /// certificate and key (PEM).
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> Pg {
        Self::start_with(Some((cert_pem, key_pem)))
    }

    fn start_with(tls: Option<(&str, &str)>) -> Pg {
        let bin = bin_dir();
        let dir = tempfile::tempdir().expect("tempdir");
        let (uid, gid) = postgres_ids();
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown to postgres");
        let data = dir.path().join("data");
        let out = as_postgres(
            &bin,
            "initdb",
            &[
                "-D",
                data.to_str().expect("utf-8"),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut extra = String::new();
        if let Some((cert, key)) = tls {
            for (name, text) in [("server.crt", cert), ("server.key", key)] {
                let path = data.join(name);
                std::fs::write(&path, text).expect("write TLS file");
                std::os::unix::fs::chown(&path, Some(uid), Some(gid)).expect("chown");
                std::fs::set_permissions(
                    &path,
                    std::os::unix::fs::PermissionsExt::from_mode(0o600),
                )
                .expect("chmod");
            }
            let hba = data.join("pg_hba.conf");
            std::fs::write(
                &hba,
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n",
            )
            .expect("pg_hba.conf");
            std::os::unix::fs::chown(&hba, Some(uid), Some(gid)).expect("chown");
            extra = "-c ssl=on".into();
        }
        let pg = Pg {
            dir,
            bin,
            port: free_port(),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
            extra,
            tls_only: tls.is_some(),
        };
        pg.start_again();
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts the (stopped) cluster and waits until it takes connections.
    pub fn start_again(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50 {}",
            self.port,
            self.dir.path().display(),
            self.extra
        );
        let log = self.dir.path().join("log");
        let out = as_postgres(
            &self.bin,
            "pg_ctl",
            &[
                "-D",
                self.data().to_str().expect("utf-8"),
                "-o",
                &opts,
                "-l",
                log.to_str().expect("utf-8"),
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}{}\nserver log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// `pg_ctl stop -m immediate`: the centre goes away without a clean shutdown.
    pub fn stop_immediate(&self) {
        let out = as_postgres(
            &self.bin,
            "pg_ctl",
            &[
                "-D",
                self.data().to_str().expect("utf-8"),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl stop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A URL for the gateway (password-less: trust).
    pub fn url(&self) -> String {
        format!(
            "postgresql://postgres@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }

    /// Runs `sql` and returns each row's columns as text (NULL as None).
    pub fn query(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        self.try_query(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// `query`, with the server's refusal as the error (its message) instead of a panic.
    pub fn try_query(&self, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
        // The test's own connection goes through the Unix socket, which needs no TLS.
        let url = if self.tls_only {
            format!(
                "host={} port={} user=postgres dbname=postgres",
                self.dir.path().display(),
                self.port
            )
        } else {
            self.url()
        };
        self.runtime.block_on(async {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| panic!("connect to the test cluster: {e}"));
            let task = tokio::spawn(conn);
            let rows = client.simple_query(sql).await;
            drop(client);
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
            let rows = rows.map_err(|e| match e.as_db_error() {
                Some(db) => db.message().to_string(),
                None => e.to_string(),
            })?;
            Ok(rows
                .into_iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => {
                        Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
                    }
                    _ => None,
                })
                .collect())
        })
    }

    /// One value (first column of the first row), if any.
    pub fn value(&self, sql: &str) -> Option<String> {
        self.query(sql)
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next().flatten())
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = as_postgres(
            &self.bin,
            "pg_ctl",
            &[
                "-D",
                self.data().to_str().unwrap_or(""),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }
}
