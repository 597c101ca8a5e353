//! TLS: builds the rustls server configuration from `[tls] cert` and `key` (PEM files).
//! rustls uses the `ring` crypto backend, which builds with a C compiler alone (no
//! cmake, no nasm), so the binary still cross-compiles for ARM gateways. Only HTTP/1.1
//! is offered (ALPN `http/1.1`), like the plain listener.
//!
//! Every problem — a missing file, no certificate in it, no or an unsupported private
//! key, a key that does not match the certificate — is a configuration error naming the
//! key and the file, so the start stops with exit code 2 before the store is touched.
//! Error messages name the key file but never include its contents.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::{ConfigError, TlsConfig};

/// The acceptor for `config`, or `None` when TLS is off (both paths empty).
pub fn acceptor(config: &TlsConfig) -> Result<Option<TlsAcceptor>, ConfigError> {
    if config.cert.is_empty() && config.key.is_empty() {
        return Ok(None);
    }
    let certs = load_certs(Path::new(&config.cert))?;
    let key = load_key(Path::new(&config.key))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError(format!("tls: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            ConfigError(format!(
                "tls.key: {} does not fit the certificate in {}: {e}",
                config.key, config.cert
            ))
        })?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(server))))
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
}
