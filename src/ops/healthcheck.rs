//! `fleetgroups healthcheck` (issue 12 item 7): exit 0 when `GET /readyz` on the
//! configured listen address answers 200 within 3 s, else 1 — a probe for container
//! `HEALTHCHECK`s and monitors that need no curl in the image.
//!
//! Plain blocking HTTP/1.1 over `std::net` (no runtime: a probe should start and end in
//! milliseconds). A wildcard listen address (`0.0.0.0`, `[::]`) is probed on the
//! loopback address of the same family, since the server accepts there too and a
//! probe must never leave the machine. With `[tls]` configured the probe speaks TLS
//! and checks neither the certificate's name nor its issuer: it asks "does this
//! server answer", not "is it who it says" — the certificate is made out to the
//! gateway's public name, not to 127.0.0.1, and the probe sends nothing secret. The
//! handshake's signatures are still checked, so the peer must hold the key of the
//! certificate it shows.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;

/// How long the whole probe (connect, handshake, request, status line) may take.
pub const DEADLINE: Duration = Duration::from_secs(3);

/// Why a probe failed; the CLI prints it and exits 1.
#[derive(Debug)]
pub struct Unhealthy(pub String);

/// Probes `/readyz` as `config` says the server listens. `Ok` holds a one-line note
/// for the operator (`ready: 200 from http://127.0.0.1:8080/readyz`).
pub fn probe(config: &Config) -> Result<String, Unhealthy> {
    let listen: SocketAddr = config
        .listen
        .parse()
        .map_err(|_| Unhealthy(format!("listen {:?} is not an address", config.listen)))?;
    if listen.port() == 0 {
        return Err(Unhealthy(
            "listen has port 0 (chosen by the kernel at start): there is no port to probe; \
             set listen (or FLEETGROUPS_LISTEN) to the server's address"
                .into(),
        ));
    }
    let addr = probe_address(listen);
    // The server's own rule (tls::load): either path set means HTTPS; validation refuses one alone.
    let tls = !(config.tls.cert.is_empty() && config.tls.key.is_empty());
    let scheme = if tls { "https" } else { "http" };
    let url = format!("{scheme}://{addr}/readyz");
    let started = Instant::now();
    let status = get_status(addr, tls, started + DEADLINE).map_err(|e| {
        if started.elapsed() >= DEADLINE {
            Unhealthy(format!(
                "{url}: no answer within {} s ({e})",
                DEADLINE.as_secs()
            ))
        } else {
            Unhealthy(format!("{url}: {e}"))
        }
    })?;
    if status == 200 {
        Ok(format!("ready: 200 from {url}"))
    } else {
        Err(Unhealthy(format!("not ready: {url} answered {status}")))
    }
}

/// Where to connect for a server listening on `listen`: its own address, or loopback
/// for a wildcard.
pub fn probe_address(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// Time left before `deadline`, or a timeout error when none is.
fn left(deadline: Instant) -> std::io::Result<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"))
}

/// A TCP stream whose every read and write waits at most until `deadline`, so a
/// server that accepts and then says nothing (or trickles bytes) cannot hold the
/// probe past it.
struct Bounded {
    tcp: TcpStream,
    deadline: Instant,
}

impl Read for Bounded {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.tcp.set_read_timeout(Some(left(self.deadline)?))?;
        self.tcp.read(buf)
    }
}

impl Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tcp.set_write_timeout(Some(left(self.deadline)?))?;
        self.tcp.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.tcp.flush()
    }
}

fn get_status(addr: SocketAddr, tls: bool, deadline: Instant) -> std::io::Result<u16> {
    let tcp = TcpStream::connect_timeout(&addr, left(deadline)?)?;
    let _ = tcp.set_nodelay(true);
    let io = Bounded { tcp, deadline };
    // The server answers 400 to a request without Host; `Connection: close` so it does
    // not keep the connection for a next request that never comes.
    let request = format!(
        "GET /readyz HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: fleetgroups-healthcheck/{}\r\nConnection: close\r\n\r\n",
        crate::build_info::VERSION
    );
    if tls {
        let conn = rustls::ClientConnection::new(
            tls_client(),
            rustls_pki_types::ServerName::IpAddress(addr.ip().into()),
        )
        .map_err(std::io::Error::other)?;
        exchange(rustls::StreamOwned::new(conn, io), &request)
    } else {
        exchange(io, &request)
    }
}

/// Sends `request` and reads just the status line.
fn exchange(mut io: impl Read + Write, request: &str) -> std::io::Result<u16> {
    io.write_all(request.as_bytes())?;
    io.flush()?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") {
        // A status line longer than this is not an HTTP server's.
        if head.len() > 4096 {
            return Err(bad("an over-long status line"));
        }
        let n = io.read(&mut buf)?;
        if n == 0 {
            return Err(bad("the connection closed without an answer"));
        }
        head.extend_from_slice(&buf[..n]);
    }
    parse_status(&head).ok_or_else(|| bad("an answer that is not HTTP/1.x"))
}

fn bad(why: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, why)
}

/// The status code of `HTTP/1.x NNN …`.
fn parse_status(head: &[u8]) -> Option<u16> {
    let line = head.split(|b| *b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.splitn(3, ' ');
    let version = parts.next()?;
    let code = parts.next()?;
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

/// A TLS client that accepts any certificate (see the module comment for why) but
/// still verifies the handshake signatures with ring's algorithms.
fn tls_client() -> Arc<rustls::ClientConfig> {
    let provider = crate::tls_client::provider();
    let verifier = Arc::new(crate::tls_client::NameUnchecked::any(Arc::clone(&provider)));
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth()
        });
    match config {
        Ok(c) => Arc::new(c),
        // The ring provider supports the default versions; this cannot fail.
        Err(e) => unreachable!("ring provider without TLS 1.2/1.3: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_are_probed_on_loopback() {
        let p = |s: &str| probe_address(s.parse().unwrap()).to_string();
        assert_eq!(p("0.0.0.0:8080"), "127.0.0.1:8080");
        assert_eq!(p("[::]:8080"), "[::1]:8080");
        assert_eq!(p("192.168.1.5:80"), "192.168.1.5:80");
        assert_eq!(p("[fe80::1]:443"), "[fe80::1]:443");
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(
            parse_status(b"HTTP/1.0 503 Service Unavailable\r\n"),
            Some(503)
        );
        assert_eq!(parse_status(b"HTTP/1.1 200\r\n"), Some(200));
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status(b"HTTP/1.1 20 OK\r\n"), None);
        assert_eq!(parse_status(b"HTTP/2 200\r\n"), None);
    }
}
