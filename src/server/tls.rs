//! TLS: builds the rustls server configuration from `[tls] cert` and `key` (PEM files).
//! rustls uses the `ring` crypto backend, which builds with a C compiler alone (no
//! cmake, no nasm), so the binary still cross-compiles for ARM gateways. Only HTTP/1.1
//! is offered (ALPN `http/1.1`), like the plain listener.
//!
//! Every problem — a missing file, no certificate in it, no or an unsupported private
//! key, a key that does not match the certificate — is a configuration error naming the
//! key and the file, so the start stops with exit code 2 before the store is touched.
//! Error messages name the key file but never include its contents.
//!
//! The certificate can be replaced while the server runs (SIGHUP, `reload.rs`): the
//! acceptor's configuration never changes, its certificate resolver ([`Certs`]) hands
//! every new handshake the pair loaded last. A replacement is checked exactly like the
//! first pair and only installed when it passes, so a broken file on disk leaves the
//! running certificate in place. Connections already open keep theirs.

use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::{ConfigError, TlsConfig};

/// The acceptor for `config`, or `None` when TLS is off (both paths empty).
pub fn acceptor(config: &TlsConfig) -> Result<Option<TlsAcceptor>, ConfigError> {
    Ok(load(config)?.map(|tls| tls.acceptor))
}

/// The TLS side of a server: the acceptor for the accept loop and the certificate
/// slot that `reload` replaces.
pub struct Tls {
    pub acceptor: TlsAcceptor,
    certs: Arc<Certs>,
}

impl Tls {
    /// Loads the pair named by `config` and, when it is valid, makes it the certificate
    /// of every new handshake. On error the old pair stays and the error names the key.
    pub fn reload(&self, config: &TlsConfig) -> Result<(), ConfigError> {
        let pair = certified_key(config, &self.certs.provider)?;
        *self
            .certs
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(pair);
        Ok(())
    }
}

/// Like [`acceptor`], keeping the handle that reloads the certificate.
pub fn load(config: &TlsConfig) -> Result<Option<Tls>, ConfigError> {
    if config.cert.is_empty() && config.key.is_empty() {
        return Ok(None);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = Arc::new(Certs {
        current: RwLock::new(Arc::new(certified_key(config, &provider)?)),
        provider: Arc::clone(&provider),
    });
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError(format!("tls: {e}")))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::clone(&certs) as Arc<dyn ResolvesServerCert>);
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Tls {
        acceptor: TlsAcceptor::from(Arc::new(server)),
        certs,
    }))
}

/// The certificate and key new handshakes get; replaced whole by `Tls::reload`.
#[derive(Debug)]
struct Certs {
    current: RwLock<Arc<CertifiedKey>>,
    provider: Arc<CryptoProvider>,
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // A poisoned lock still holds a whole pair: it is only ever replaced whole.
        Some(Arc::clone(
            &self.current.read().unwrap_or_else(|e| e.into_inner()),
        ))
    }
}

/// Reads and checks the pair: the same checks as rustls' `with_single_cert`, including
/// that the key belongs to the certificate.
fn certified_key(
    config: &TlsConfig,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, ConfigError> {
    let certs = load_certs(Path::new(&config.cert))?;
    let key = load_key(Path::new(&config.key))?;
    CertifiedKey::from_der(certs, key, provider).map_err(|e| {
        ConfigError(format!(
            "tls.key: {} does not fit the certificate in {}: {e}",
            config.key, config.cert
        ))
    })
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let bad = |why: String| ConfigError(format!("tls.cert: {}: {why}", path.display()));
    let bytes = std::fs::read(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not a PEM certificate chain: {e}")))?;
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE block found".into()));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let bad = |why: &str| ConfigError(format!("tls.key: {}: {why}", path.display()));
    let bytes = std::fs::read(path).map_err(|e| bad(&format!("cannot read: {e}")))?;
    // The PEM parser's error text is about the file's structure, not its secret bytes.
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|_| {
        bad("no private key found (expected a PEM PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(cert: &Path, key: &Path) -> TlsConfig {
        TlsConfig {
            cert: cert.display().to_string(),
            key: key.display().to_string(),
        }
    }

    #[test]
    fn off_when_both_paths_are_empty() {
        assert!(acceptor(&TlsConfig::default()).unwrap().is_none());
    }

    #[test]
    fn loads_a_generated_pair_and_names_the_key_on_errors() {
        let dir = tempfile::tempdir().unwrap();
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, generated.cert.pem()).unwrap();
        std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
        assert!(acceptor(&cfg(&cert, &key)).unwrap().is_some());

        let missing = dir.path().join("missing.pem");
        let e = acceptor(&cfg(&missing, &key)).err().unwrap();
        assert!(
            e.0.starts_with("tls.cert:") && e.0.contains("missing.pem"),
            "{e}"
        );
        let e = acceptor(&cfg(&key, &key)).err().unwrap();
        assert!(
            e.0.starts_with("tls.cert:") && e.0.contains("no CERTIFICATE"),
            "{e}"
        );
        let e = acceptor(&cfg(&cert, &cert)).err().unwrap();
        assert!(
            e.0.starts_with("tls.key:") && e.0.contains("no private key"),
            "{e}"
        );

        // A valid key that belongs to another certificate.
        let other = rcgen::generate_simple_self_signed(vec!["other".into()]).unwrap();
        let other_key = dir.path().join("other-key.pem");
        std::fs::write(&other_key, other.signing_key.serialize_pem()).unwrap();
        let e = acceptor(&cfg(&cert, &other_key)).err().unwrap();
        assert!(
            e.0.starts_with("tls.key:") && e.0.contains("does not fit"),
            "{e}"
        );
    }

    #[test]
    fn reload_replaces_the_pair_only_when_the_new_one_is_valid() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str| {
            let g = rcgen::generate_simple_self_signed(vec![name.into()]).unwrap();
            let cert = dir.path().join(format!("{name}.pem"));
            let key = dir.path().join(format!("{name}-key.pem"));
            std::fs::write(&cert, g.cert.pem()).unwrap();
            std::fs::write(&key, g.signing_key.serialize_pem()).unwrap();
            (cfg(&cert, &key), g.cert.der().clone())
        };
        let (first, first_der) = write("first");
        let (second, second_der) = write("second");
        let tls = load(&first).unwrap().unwrap();
        let served = || tls.certs.current.read().unwrap().cert[0].clone();
        assert_eq!(served(), first_der);

        tls.reload(&second).unwrap();
        assert_eq!(served(), second_der);

        // A broken replacement: the error names the key, the second pair stays.
        let missing = TlsConfig {
            cert: dir.path().join("gone.pem").display().to_string(),
            ..second.clone()
        };
        let e = tls.reload(&missing).unwrap_err();
        assert!(
            e.0.starts_with("tls.cert:") && e.0.contains("gone.pem"),
            "{e}"
        );
        let mismatched = TlsConfig {
            key: first.key.clone(),
            ..second.clone()
        };
        let e = tls.reload(&mismatched).unwrap_err();
        assert!(
            e.0.starts_with("tls.key:") && e.0.contains("does not fit"),
            "{e}"
        );
        assert_eq!(served(), second_der);
    }
}
