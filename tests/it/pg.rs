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
    /// `max_connections` of the cluster.
    max_connections: u32,
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
        Self::start_with(None, 50)
    }

    /// A cluster with only `max_connections` slots (a fleet larger than the centre).
    pub fn start_limited(max_connections: u32) -> Pg {
        Self::start_with(None, max_connections)
    }

    /// A cluster that takes TCP connections only over TLS (`hostssl`), with this
    /// certificate and key (PEM).
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> Pg {
        Self::start_with(Some((cert_pem, key_pem)), 50)
    }

    fn start_with(tls: Option<(&str, &str)>, max_connections: u32) -> Pg {
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
            max_connections,
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
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections={} {}",
            self.port,
            self.dir.path().display(),
            self.max_connections,
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
        self.stop("immediate");
    }

    /// `pg_ctl stop -m fast`: a clean shutdown that closes every connection.
    pub fn stop_fast(&self) {
        self.stop("fast");
    }

    /// `pg_ctl stop -m <mode>`, waiting until it is down.
    fn stop(&self, mode: &str) {
        let data = self.data();
        let data = data.to_str().expect("utf-8");
        let out = as_postgres(&self.bin, "pg_ctl", &["-D", data, "-m", mode, "-w", "stop"]);
        assert!(
            out.status.success(),
            "pg_ctl stop -m {mode} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// Connects as `user` over TCP and runs `sql` on a runtime of its own (so any
    /// thread may call it while the test uses `query`): how long connecting and the
    /// query took and the first value, or why it failed.
    pub fn run_as(&self, user: &str, sql: &str) -> Result<(Duration, Option<String>), String> {
        let url = self.url_as(user);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let started = std::time::Instant::now();
        runtime.block_on(async {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .map_err(|e| e.to_string())?;
            let task = tokio::spawn(conn);
            let rows = client.simple_query(sql).await.map_err(|e| e.to_string())?;
            let took = started.elapsed();
            drop(client);
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
            let first = rows.into_iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_string)),
                _ => None,
            });
            Ok((took, first.flatten()))
        })
    }

    /// A URL for `user` (password-less: trust).
    pub fn url_as(&self, user: &str) -> String {
        format!(
            "postgresql://{user}@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
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

/// A real Debian `pgbouncer` in front of a `Pg`, in transaction pooling mode (the mode
/// that breaks named prepared statements and session state), run as the postgres user
/// on a free port; stopped with the test.
pub struct Bouncer {
    _dir: tempfile::TempDir,
    child: std::process::Child,
    pub port: u16,
    log: PathBuf,
}

fn pgbouncer_bin() -> PathBuf {
    for p in ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!(
        "PgBouncer is required for the pooler tests and was not found (/usr/sbin/pgbouncer): apt-get install -y pgbouncer"
    )
}

impl Bouncer {
    /// PgBouncer in transaction mode with at most `pool_size` server connections.
    pub fn start(pg: &Pg, pool_size: u32) -> Bouncer {
        use std::os::unix::process::CommandExt;
        let bin = pgbouncer_bin();
        let dir = tempfile::tempdir().expect("tempdir");
        let (uid, gid) = postgres_ids();
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown to postgres");
        let port = free_port();
        let d = dir.path().display();
        let users = dir.path().join("users.txt");
        std::fs::write(&users, "\"postgres\" \"\"\n\"fleet\" \"\"\n").expect("users.txt");
        let ini = dir.path().join("pgbouncer.ini");
        std::fs::write(
            &ini,
            format!(
                "[databases]\npostgres = host=127.0.0.1 port={} dbname=postgres\n\
                 [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 auth_type = trust\nauth_file = {d}/users.txt\npool_mode = transaction\n\
                 max_client_conn = 2000\ndefault_pool_size = {pool_size}\n\
                 logfile = {d}/pgbouncer.log\n",
                pg.port
            ),
        )
        .expect("pgbouncer.ini");
        let child = Command::new(&bin)
            .arg(&ini)
            .uid(uid)
            .gid(gid)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let b = Bouncer {
            log: dir.path().join("pgbouncer.log"),
            _dir: dir,
            child,
            port,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "pgbouncer did not listen on {port}: {}",
                b.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        b
    }

    /// A URL through the pooler.
    pub fn url(&self, user: &str) -> String {
        format!(
            "postgresql://{user}@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }

    /// PgBouncer's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
