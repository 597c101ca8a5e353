//! TLS (docs/configuration.md, `[tls]`): with a certificate and key the server
//! speaks HTTPS only — a client that trusts the certificate logs in and creates a group,
//! plain HTTP on the same port gets no API answer — and a bad certificate or key stops
//! the start with exit code 2, a message naming the key, and an untouched data
//! directory.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use serde_json::{json, Value};

use crate::support::{read_response, run_expecting_exit, Options, Resp, TestServer};

/// A self-signed certificate for `localhost` and its key, as PEM files in `dir`.
fn self_signed(dir: &Path) -> (PathBuf, PathBuf, CertificateDer<'static>) {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    (cert, key, generated.cert.der().clone())
}

fn tls_config(cert: &Path, key: &Path) -> String {
    format!(
        "[tls]\ncert = {:?}\nkey = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    )
}

/// A rustls client (ring provider) that trusts only `cert`.
fn client(cert: CertificateDer<'static>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(cert).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// One HTTPS request (`Connection: close`).
fn https(
    server: &TestServer,
    config: &Arc<ClientConfig>,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Resp {
    let conn = ClientConnection::new(
        Arc::clone(config),
        ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let tcp = TcpStream::connect(server.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut tls = StreamOwned::new(conn, tcp);
    let body = body
        .map(|b| serde_json::to_vec(&b).unwrap())
        .unwrap_or_default();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str("\r\n");
    tls.write_all(req.as_bytes()).unwrap();
    tls.write_all(&body).unwrap();
    read_response(&mut tls)
}

#[test]
fn https_only_when_a_certificate_is_configured() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key, der) = self_signed(certs.path());
    let server = TestServer::with(Options::default().config(&tls_config(&cert, &key)));
    assert!(
        server
            .log()
            .contains(&format!("listening on https://{}", server.addr)),
        "{}",
        server.log()
    );
    let config = client(der);

    let r = https(
        &server,
        &config,
        "POST",
        "/api/Auth/Token",
        None,
        Some(json!({"userName": "admin", "apiKey": server.admin_key()})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let token = r.json()["token"].as_str().unwrap().to_string();
    let r = https(
        &server,
        &config,
        "POST",
        "/api/groups",
        Some(&token),
        Some(json!({"name": "Over TLS"})),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let r = https(
        &server,
        &config,
        "GET",
        "/api/groups/grp-1",
        Some(&token),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["name"], "Over TLS");

    // Plain HTTP to the TLS port: the handshake fails and no HTTP answer comes back.
    let mut plain = TcpStream::connect(server.addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    plain
        .write_all(
            format!(
                "GET /healthz HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                server.addr
            )
            .as_bytes(),
        )
        .unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(
        !answer.starts_with(b"HTTP/"),
        "plain HTTP got {:?}",
        String::from_utf8_lossy(&answer)
    );
    assert!(
        !String::from_utf8_lossy(&answer).contains("\"status\""),
        "{answer:?}"
    );

    // The server still serves TLS clients after the bad one.
    let r = https(&server, &config, "GET", "/healthz", None, None);
    assert_eq!(r.status, 200);
}

#[test]
fn a_silent_client_neither_blocks_others_nor_stays_forever() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key, der) = self_signed(certs.path());
    let server = TestServer::with(
        Options::default()
            .config(&tls_config(&cert, &key))
            .env("FLEETGROUPS_LIMITS_HEADER_TIMEOUT_SECS", "1"),
    );
    // Connected but never sends a ClientHello: its handshake waits in its own task.
    let mut silent: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(server.addr).unwrap())
        .collect();
    let r = https(&server, &client(der), "GET", "/healthz", None, None);
    assert_eq!(r.status, 200);
    // The handshake timeout (header_timeout_secs) then closes the silent connections.
    for s in &mut silent {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(
            s.read(&mut buf)
                .expect("closed by the server, not timed out"),
            0
        );
    }
}

#[test]
fn a_bad_certificate_or_key_stops_the_start_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = self_signed(dir.path());
    let missing = dir.path().join("missing.pem");
    let cases = [
        (tls_config(&missing, &key), "tls.cert", "missing.pem"),
        (tls_config(&key, &key), "tls.cert", "no CERTIFICATE"),
        (tls_config(&cert, &cert), "tls.key", "no private key"),
        (tls_config(&cert, &missing), "tls.key", "missing.pem"),
        (
            format!("[tls]\ncert = {:?}\n", cert.display().to_string()),
            "tls",
            "set both cert and key",
        ),
    ];
    let key_pem = std::fs::read_to_string(&key).unwrap();
    for (i, (text, names, says)) in cases.iter().enumerate() {
        let config = dir.path().join(format!("c{i}.toml"));
        std::fs::write(&config, text).unwrap();
        let data = dir.path().join(format!("data{i}"));
        let (c, d) = (config.to_str().unwrap(), data.to_str().unwrap());
        for args in [
            vec![
                "--config",
                c,
                "--data-dir",
                d,
                "serve",
                "--listen",
                "127.0.0.1:0",
            ],
            vec!["--config", c, "--data-dir", d, "check-config"],
        ] {
            let out = run_expecting_exit(dir.path(), &args, &[]);
            assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
            assert!(
                out.stderr.contains(names) && out.stderr.contains(says),
                "{args:?}: {}",
                out.stderr
            );
            // The key's PEM never shows in a message, and nothing was created.
            assert!(
                !out.stderr.contains(key_pem.lines().nth(1).unwrap()),
                "{}",
                out.stderr
            );
            assert!(!data.exists(), "{args:?} created {}", data.display());
        }
    }
}

/// Completes a TLS handshake with `config`; `Err` when the client refuses the server's
/// certificate (or the handshake fails otherwise).
fn handshake(server: &TestServer, config: &Arc<ClientConfig>) -> Result<(), String> {
    let mut conn = ClientConnection::new(
        Arc::clone(config),
        ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let mut tcp = TcpStream::connect(server.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[test]
fn sighup_reloads_the_certificate_and_a_broken_one_keeps_the_old() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key, first) = self_signed(certs.path());
    let mut server = TestServer::with(Options::default().config(&tls_config(&cert, &key)));
    let trusts_first = client(first);
    handshake(&server, &trusts_first).expect("the first certificate is served");

    // New files at the same paths (a renewal), then SIGHUP.
    let renewed = tempfile::tempdir().unwrap();
    let (new_cert, new_key, second) = self_signed(renewed.path());
    std::fs::copy(&new_cert, &cert).unwrap();
    std::fs::copy(&new_key, &key).unwrap();
    let trusts_second = client(second);
    assert!(
        handshake(&server, &trusts_second).is_err(),
        "nothing changes before the signal"
    );
    server.signal("HUP");
    // The reload is done when new connections get the new certificate.
    crate::support::poll_until(Duration::from_secs(30), "the new certificate", || {
        handshake(&server, &trusts_second).ok()
    });
    assert!(handshake(&server, &trusts_first).is_err());
    let r = https(&server, &trusts_second, "GET", "/healthz", None, None);
    assert_eq!(r.status, 200);

    // A broken replacement (a truncated certificate): the running pair stays. Nothing
    // changes that a client could see, by design, so the refusal's log line is both
    // the sign that the reload ran and what is checked (it must name the key).
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nMIIB\n").unwrap();
    server.signal("HUP");
    server.wait_for_log("TLS certificate not reloaded, new connections keep the old one");
    assert!(
        server.log().contains("tls.cert:"),
        "the reason names the key:\n{}",
        server.log()
    );
    handshake(&server, &trusts_second).expect("the previous certificate is still served");
    let r = https(&server, &trusts_second, "GET", "/healthz", None, None);
    assert_eq!(r.status, 200);
    assert_eq!(server.stop().code(), Some(0), "{}", server.log());
}
