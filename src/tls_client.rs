//! The rustls client pieces the binary's two TLS clients share: `fleetgroups
//! healthcheck` (a probe of our own server) and replication's connection to the centre.
//! A leaf, so neither client reaches into the server's TLS (`server/tls.rs`).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{VerifierBuilderError, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

/// The crypto backend both clients use: ring, like the server (`server/tls.rs` says why).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client-side verifier that never holds the server to a name. Without roots it
/// accepts any certificate, "encrypted, not authenticated": `fleetgroups healthcheck`
/// (a probe of our own server, whose certificate may be for another name) and
/// replication's `sslmode=require`/`prefer` (libpq's meaning). With roots
/// (`sslmode=verify-ca`) the chain must lead to one of them. Either way the handshake
/// signatures are checked with the provider's algorithms.
#[derive(Debug)]
pub(crate) struct NameUnchecked {
    provider: Arc<CryptoProvider>,
    chain: Option<Arc<WebPkiServerVerifier>>,
}

impl NameUnchecked {
    /// Any certificate.
    pub(crate) fn any(provider: Arc<CryptoProvider>) -> NameUnchecked {
        NameUnchecked {
            provider,
            chain: None,
        }
    }

    /// A certificate whose chain leads to `roots`, for any name.
    pub(crate) fn chain(roots: RootCertStore) -> Result<NameUnchecked, VerifierBuilderError> {
        let provider = provider();
        let chain =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                .build()?;
        Ok(NameUnchecked {
            provider,
            chain: Some(chain),
        })
    }
}

impl ServerCertVerifier for NameUnchecked {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
