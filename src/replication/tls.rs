//! TLS for the connection to the centre (rustls, never OpenSSL), with libpq's meaning
//! of each `sslmode`: `prefer`/`require` encrypt without checking the certificate,
//! `verify-ca` checks the chain against `replication.ca_file` but not the host name,
//! `verify-full` checks both.

use crate::pg_url::SettingError;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::pg_url::SslMode;
use crate::tls_client::{provider, NameUnchecked};

/// The client configuration for `ssl`, reading `ca_file` where the mode needs it;
/// None for `disable`.
pub(super) fn config_for(
    ssl: SslMode,
    ca_file: &str,
) -> Result<Option<Arc<rustls::ClientConfig>>, SettingError> {
    Ok(match ssl {
        SslMode::Disable => None,
        SslMode::Prefer | SslMode::Require => Some(tls_config(Verify::Nothing)?),
        SslMode::VerifyCa => Some(tls_config(Verify::Chain(read_roots(ca_file)?))?),
        SslMode::VerifyFull => Some(tls_config(Verify::Full(read_roots(ca_file)?))?),
    })
}

enum Verify {
    Nothing,
    Chain(rustls::RootCertStore),
    Full(rustls::RootCertStore),
}

const CA_KEY: &str = "replication.ca_file";

fn read_roots(path: &str) -> Result<rustls::RootCertStore, SettingError> {
    let bytes = std::fs::read(path)
        .map_err(|e| SettingError::new(CA_KEY, format!("cannot read {path}: {}", e.kind())))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&bytes) {
        let cert = cert.map_err(|_| SettingError::new(CA_KEY, format!("{path} is not PEM")))?;
        roots
            .add(cert)
            .map_err(|e| SettingError::new(CA_KEY, format!("{path}: {e}")))?;
    }
    if roots.is_empty() {
        return Err(SettingError::new(
            CA_KEY,
            format!("{path} holds no certificate"),
        ));
    }
    Ok(roots)
}

fn tls_config(verify: Verify) -> Result<Arc<rustls::ClientConfig>, SettingError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| SettingError::new("replication", format!("TLS: {e}")))?;
    let cfg = match verify {
        Verify::Full(roots) => builder.with_root_certificates(roots).with_no_client_auth(),
        // `sslmode=verify-ca`: the chain must lead to `ca_file`; the host name is not
        // checked.
        Verify::Chain(roots) => {
            let verifier = NameUnchecked::chain(roots)
                .map_err(|e| SettingError::new(CA_KEY, e.to_string()))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth()
        }
        // `sslmode=require`/`prefer`: encrypted, the certificate not checked (libpq's
        // meaning).
        Verify::Nothing => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NameUnchecked::any(provider())))
            .with_no_client_auth(),
    };
    Ok(Arc::new(cfg))
}
