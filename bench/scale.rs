//! Scale benchmark for the read extensions: seeds a real fleetgroups server with
//! 100,000 groups of 10 devices each, restarts it with the default `fsync` durability,
//! and prints a table of median and p99 latency for GET of one group, the reverse
//! lookup, pages of `limit=100` at the start, middle and end of the account (`after=`),
//! the `device=` and `name=` filters, and the full Plaspy list.
//!
//! Run it through `bench/scale.sh` (builds the release binary and this example). It
//! talks plain HTTP/1.1 over keep-alive connections with a minimal client of its own,
//! so the figures are the server's, not a client library's. Seeding uses several
//! concurrent clients and `storage.durability = "relaxed"` (only to seed quickly); the
//! measurements run against a server restarted with fsync on, one request at a time.
//!
//! Environment: `SCALE_BIN` (the server binary, required), `SCALE_GROUPS`
//! (100000), `SCALE_DEVICES` (10 per group), `SCALE_CLIENTS` (8 seeding clients),
//! `SCALE_SAMPLES` (1000 per read kind), `SCALE_DIR` (data directory, default
//! `target/scale-data`; reused without seeding when it already holds the same number of
//! groups, so a second run measures at once).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A running server process.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(bin: &Path, data: &Path, relaxed: bool) -> Result<Server> {
        let mut cmd = Command::new(bin);
        cmd.arg("--data-dir")
            .arg(data)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env_remove("FLEETGROUPS_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // An empty working directory, so no ./config.toml is picked up.
        cmd.current_dir(data.parent().unwrap_or(data));
        if relaxed {
            cmd.env("FLEETGROUPS_STORAGE_DURABILITY", "relaxed");
        }
        // The listening line is logged at info; the access log is silenced by
        // reading only what the benchmark needs from stderr.
        let mut child = cmd.spawn()?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(pos) = line.find("listening on http://") {
                    let addr: String = line[pos + 20..]
                        .chars()
                        .take_while(|c| !c.is_whitespace() && *c != '"')
                        .collect();
                    if let (Some(tx), Ok(a)) = (tx.take(), addr.parse::<SocketAddr>()) {
                        let _ = tx.send(a);
                    }
                } else if !line.contains("fleetgroups::access") {
                    // Startup problems (a configuration error) and warnings.
                    eprintln!("server: {line}");
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(120))
            .map_err(|_| "the server did not start within 120 s")?;
        Ok(Server { child, addr })
    }

    /// SIGTERM and wait: the graceful stop flushes everything.
    fn stop(mut self) -> Result<()> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        let status = self.child.wait()?;
        if !status.success() {
            return Err(format!("server exited with {status}").into());
        }
        Ok(())
    }
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    host: String,
}

impl Conn {
    fn open(addr: SocketAddr) -> Result<Conn> {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        Ok(Conn {
            reader: BufReader::with_capacity(1 << 16, s.try_clone()?),
            writer: s,
            host: addr.to_string(),
        })
    }

    fn send(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&[u8]>,
    ) -> Result<(u16, Vec<u8>)> {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.host);
        if let Some(t) = token {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        if let Some(b) = body {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        if let Some(b) = body {
            bytes.extend_from_slice(b);
        }
        self.writer.write_all(&bytes)?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {line:?}"))?;
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            self.reader.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse()?;
                }
            }
        }
        let mut body = vec![0; len];
        self.reader.read_exact(&mut body)?;
        Ok((status, body))
    }
}

fn login(addr: SocketAddr, data: &Path) -> Result<String> {
    let key = std::fs::read_to_string(data.join("initial-api-key"))?;
    let body = serde_json::to_vec(&serde_json::json!({"userName": "admin", "apiKey": key.trim()}))?;
    let (status, answer) = Conn::open(addr)?.send("POST", "/api/Auth/Token", None, Some(&body))?;
    if status != 200 {
        return Err(format!("login: {status} {}", String::from_utf8_lossy(&answer)).into());
    }
    let v: Value = serde_json::from_slice(&answer)?;
    Ok(v["token"].as_str().ok_or("no token")?.to_string())
}

/// The devices of group number `n` (1-based): device pool as large as the group count,
/// so each device is in `per` groups spread over the whole ID range.
fn devices_of(n: usize, per: usize, groups: usize) -> Vec<String> {
    (0..per)
        .map(|j| format!("dev-{}", ((n - 1) * per + j) % groups))
        .collect()
}

fn seed(addr: SocketAddr, token: &str, groups: usize, per: usize, clients: usize) -> Result<()> {
    let started = Instant::now();
    let next = std::sync::atomic::AtomicUsize::new(1);
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    let mut c = Conn::open(addr)?;
                    loop {
                        let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if n > groups {
                            return Ok(());
                        }
                        let body = serde_json::to_vec(&serde_json::json!({
                            "name": format!("group-{n:06}"),
                            "description": format!("scale benchmark group {n}"),
                            "devices": devices_of(n, per, groups),
                        }))?;
                        let (status, answer) =
                            c.send("POST", "/api/groups", Some(token), Some(&body))?;
                        if status != 201 {
                            return Err(format!(
                                "create {n}: {status} {}",
                                String::from_utf8_lossy(&answer)
                            )
                            .into());
                        }
                        if n % 20_000 == 0 {
                            eprintln!(
                                "  seeded {n} groups ({:.0} s)",
                                started.elapsed().as_secs_f64()
                            );
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| "seeding thread panicked")??;
        }
        Ok(())
    })?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "seeded {groups} groups in {secs:.1} s ({:.0} creates/s, {clients} clients, relaxed durability)",
        groups as f64 / secs
    );
    Ok(())
}

/// A small deterministic generator (xorshift64*), so runs are comparable.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
    }
}

/// One row of the table.
struct Row {
    what: String,
    samples: usize,
    median_ms: f64,
    p99_ms: f64,
    bytes: usize,
    items: String,
}

/// Runs `samples` requests (after a few warm-up ones) and checks each answer.
fn measure(
    c: &mut Conn,
    token: &str,
    what: &str,
    samples: usize,
    mut path: impl FnMut(usize) -> String,
    mut check: impl FnMut(&Value) -> std::result::Result<usize, String>,
) -> Result<Row> {
    for i in 0..samples.min(20) {
        c.send("GET", &path(i), Some(token), None)?;
    }
    let mut times = Vec::with_capacity(samples);
    let mut bytes = 0;
    let mut items = Vec::new();
    for i in 0..samples {
        let p = path(i);
        let t = Instant::now();
        let (status, body) = c.send("GET", &p, Some(token), None)?;
        times.push(t.elapsed());
        if status != 200 {
            return Err(format!("{what}: {p} answered {status}").into());
        }
        let v: Value = serde_json::from_slice(&body)?;
        items.push(check(&v).map_err(|e| format!("{what}: {p}: {e}"))?);
        bytes = bytes.max(body.len());
    }
    times.sort();
    let at = |q: f64| {
        let i = ((times.len() as f64 * q).ceil() as usize).clamp(1, times.len()) - 1;
        times[i].as_secs_f64() * 1000.0
    };
    items.sort_unstable();
    items.dedup();
    let items = match (items.first(), items.last()) {
        (Some(a), Some(b)) if a == b => a.to_string(),
        (Some(a), Some(b)) => format!("{a}–{b}"),
        _ => "-".into(),
    };
    Ok(Row {
        what: what.to_string(),
        samples,
        median_ms: at(0.5),
        p99_ms: at(0.99),
        bytes,
        items,
    })
}

fn groups_len(v: &Value) -> std::result::Result<usize, String> {
    v["groups"]
        .as_array()
        .map(Vec::len)
        .ok_or_else(|| "no groups".to_string())
}

fn dir_size(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn main() -> Result<()> {
    let bin = PathBuf::from(std::env::var("SCALE_BIN").map_err(|_| "set SCALE_BIN")?);
    let groups = env_usize("SCALE_GROUPS", 100_000);
    let per = env_usize("SCALE_DEVICES", 10);
    let clients = env_usize("SCALE_CLIENTS", 8);
    let samples = env_usize("SCALE_SAMPLES", 1000);
    // Absolute, because the server runs in that directory (away from any config.toml).
    let root = std::env::current_dir()?
        .join(std::env::var("SCALE_DIR").unwrap_or_else(|_| "target/scale-data".into()));
    let data = root.join("data");
    let marker = root.join("seeded");
    let seeded = std::fs::read_to_string(&marker)
        .ok()
        .map(|s| s.trim().to_string());
    if seeded.as_deref() != Some(&format!("{groups} {per}")) {
        if root.exists() {
            std::fs::remove_dir_all(&root)?;
        }
        std::fs::create_dir_all(&root)?;
        eprintln!("seeding {groups} groups of {per} devices with {clients} clients …");
        let server = Server::start(&bin, &data, true)?;
        let token = login(server.addr, &data)?;
        seed(server.addr, &token, groups, per, clients)?;
        server.stop()?;
        std::fs::write(&marker, format!("{groups} {per}\n"))?;
    } else {
        eprintln!("reusing the seeded store in {}", root.display());
    }

    let started = Instant::now();
    let server = Server::start(&bin, &data, false)?;
    eprintln!(
        "restarted with fsync durability in {:.2} s; store {:.0} MiB on disk",
        started.elapsed().as_secs_f64(),
        dir_size(&data) as f64 / 1_048_576.0
    );
    let token = login(server.addr, &data)?;
    let mut c = Conn::open(server.addr)?;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let ids: Vec<usize> = (0..samples).map(|_| 1 + rng.below(groups)).collect();
    let devs: Vec<usize> = (0..samples).map(|_| rng.below(groups)).collect();
    let mut rows = Vec::new();

    rows.push(measure(
        &mut c,
        &token,
        "GET /api/groups/{id}",
        samples,
        |i| format!("/api/groups/grp-{}", ids[i % ids.len()]),
        |v| v["id"].as_str().map(|_| 1).ok_or_else(|| "no id".into()),
    )?);
    rows.push(measure(
        &mut c,
        &token,
        "GET /api/devices/{id}/groups",
        samples,
        |i| format!("/api/devices/dev-{}/groups", devs[i % devs.len()]),
        |v| {
            let n = groups_len(v)?;
            if n == per {
                Ok(n)
            } else {
                Err(format!("{n} groups, expected {per}"))
            }
        },
    )?);
    rows.push(measure(
        &mut c,
        &token,
        "GET /api/groups?device={id}",
        samples,
        |i| format!("/api/groups?device=dev-{}", devs[(i + 7) % devs.len()]),
        |v| {
            let n = groups_len(v)?;
            if n == per {
                Ok(n)
            } else {
                Err(format!("{n} groups, expected {per}"))
            }
        },
    )?);
    let pages = [
        ("page limit=100, start", String::new()),
        (
            "page limit=100, middle",
            format!("&after=grp-{}", groups / 2),
        ),
        (
            "page limit=100, end",
            format!("&after=grp-{}", groups - 100),
        ),
    ];
    for (what, after) in &pages {
        rows.push(measure(
            &mut c,
            &token,
            &format!("GET /api/groups?{what}"),
            samples,
            |_| format!("/api/groups?limit=100{after}"),
            |v| {
                let n = groups_len(v)?;
                if n == 100 {
                    Ok(n)
                } else {
                    Err(format!("{n} groups"))
                }
            },
        )?);
    }
    rows.push(measure(
        &mut c,
        &token,
        "GET /api/groups?limit=100&device={id}&after=",
        samples,
        |i| {
            format!(
                "/api/groups?limit=100&device=dev-{}&after=grp-{}",
                devs[(i + 3) % devs.len()],
                groups / 2
            )
        },
        groups_len,
    )?);
    // The name filter reads the account until the page is full: an early match is a
    // short scan, a name near the end (or none) is the whole account.
    let name_samples = (samples / 20).max(5);
    rows.push(measure(
        &mut c,
        &token,
        "GET /api/groups?name= (match near the start, limit=100)",
        name_samples,
        |_| "/api/groups?name=group-00&limit=100".into(),
        groups_len,
    )?);
    rows.push(measure(
        &mut c,
        &token,
        "GET /api/groups?name= (one match at the end, full scan)",
        name_samples,
        |_| format!("/api/groups?name=group-{groups:06}"),
        |v| {
            let n = groups_len(v)?;
            if n == 1 {
                Ok(n)
            } else {
                Err(format!("{n} groups"))
            }
        },
    )?);
    let full_samples = (samples / 100).max(3);
    rows.push(measure(
        &mut c,
        &token,
        "GET /api/groups (all, Plaspy)",
        full_samples,
        |_| "/api/groups".into(),
        |v| {
            let n = groups_len(v)?;
            if n == groups {
                Ok(n)
            } else {
                Err(format!("{n} groups"))
            }
        },
    )?);
    server.stop()?;

    println!();
    println!("fleetgroups scale benchmark: {groups} groups × {per} devices, one keep-alive client, release build, fsync durability");
    println!();
    println!("| request | samples | median ms | p99 ms | groups in answer | answer bytes |");
    println!("|---|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {:.3} | {:.3} | {} | {} |",
            r.what, r.samples, r.median_ms, r.p99_ms, r.items, r.bytes
        );
    }
    Ok(())
}
