//! go-plugin's automatic mutual TLS, provider side.
//!
//! Terraform starts every provider with its own fresh client certificate in `PLUGIN_CLIENT_CERT`
//! (PEM) and expects the provider to answer with a fresh self-signed server certificate in the
//! handshake line; each side then trusts exactly the other's certificate. The provider here
//! generates an ECDSA P-256 certificate for `localhost` (the name Terraform checks), serves
//! TLS 1.3 with ALPN `h2`, and requires the client to present exactly the certificate from
//! `PLUGIN_CLIENT_CERT`: a pin, compared byte for byte, with the handshake signature checked
//! against its key. Not a WebPKI path check: Terraform's certificate is a self-signed CA
//! certificate used as a leaf, which WebPKI refuses as an end entity.

use std::sync::Arc;

use rustls::DistinguishedName;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    /// `PLUGIN_CLIENT_CERT` holds no PEM certificate.
    #[error("PLUGIN_CLIENT_CERT holds no PEM certificate: {0}")]
    ClientCertificate(String),
    /// The server certificate could not be generated.
    #[error("cannot generate the server certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("cannot configure TLS: {0}")]
    Config(#[from] rustls::Error),
}

/// The provider's TLS server: its configuration, and its certificate for the handshake line.
#[derive(Debug)]
pub(crate) struct ServerTls {
    /// What the listener's acceptor uses.
    pub(crate) config: Arc<rustls::ServerConfig>,
    /// The server certificate (DER), for Terraform to trust.
    pub(crate) certificate: CertificateDer<'static>,
}

/// A fresh server identity that accepts only the client whose certificate is `client_pem`.
pub(crate) fn server(client_pem: &str) -> Result<ServerTls, TlsError> {
    let client = CertificateDer::from_pem_slice(client_pem.as_bytes())
        .map_err(|e| TlsError::ClientCertificate(e.to_string()))?;
    let rcgen::CertifiedKey { cert, signing_key } = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
    let certificate = cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(signing_key.serialize_der()));

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier =
        Arc::new(PinnedClient { certificate: client, algorithms: provider.signature_verification_algorithms });
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![certificate.clone()], key)?;
    // gRPC runs over HTTP/2; newer gRPC clients insist on ALPN saying so.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(ServerTls { config: Arc::new(config), certificate })
}

/// Accepts exactly one client certificate.
#[derive(Debug)]
struct PinnedClient {
    certificate: CertificateDer<'static>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for PinnedClient {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.certificate.as_ref() {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, PKCS_ECDSA_P521_SHA512};
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// A client certificate like the one go-plugin makes for Terraform: self-signed, P-521, a CA
    /// certificate for `localhost`.
    fn terraform_like_client() -> (String, CertificateDer<'static>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P521_SHA512).unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (cert.pem(), cert.der().clone(), der)
    }

    /// Connects to `server` as a client presenting `identity` (or none); whether the server
    /// took the handshake and answered.
    async fn connect(server: &ServerTls, identity: Option<(CertificateDer<'static>, PrivateKeyDer<'static>)>) -> bool {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(server.certificate.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots);
        let config = match identity {
            Some((cert, key)) => builder.with_client_auth_cert(vec![cert], key).unwrap(),
            None => builder.with_no_client_auth(),
        };
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&server.config));
        let serving = tokio::spawn(async move {
            let mut stream = acceptor.accept(server_io).await.ok()?;
            stream.write_all(b"ok").await.ok()?;
            stream.flush().await.ok()
        });
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = ServerName::try_from("localhost").unwrap();
        let mut answer = Vec::new();
        if let Ok(mut stream) = connector.connect(name, client_io).await {
            // TLS 1.3: the server judges the client's certificate after the client thinks it is done.
            let _ = stream.read_to_end(&mut answer).await;
        }
        serving.await.unwrap().is_some() && answer == b"ok"
    }

    #[tokio::test]
    async fn only_the_client_certificate_terraform_announced_gets_in() {
        let (pem, cert, key) = terraform_like_client();
        let server = server(&pem).unwrap();
        assert!(connect(&server, Some((cert, key))).await, "Terraform's own certificate");

        let (_, other_cert, other_key) = terraform_like_client();
        assert!(!connect(&server, Some((other_cert, other_key))).await, "another certificate");
        assert!(!connect(&server, None).await, "no certificate");
    }

    #[test]
    fn a_client_certificate_that_is_not_pem_is_refused() {
        assert!(matches!(server("not a certificate"), Err(TlsError::ClientCertificate(_))));
    }
}
