//! The agents' gRPC endpoint: TLS termination and the tonic server.
//!
//! One listener serves both enrollment (server-authenticated TLS: the agent has no certificate
//! yet) and everything else (mTLS). The TLS layer verifies any client certificate that is
//! presented against the agent CA (chain, validity period, client-auth usage), so a certificate
//! from another CA, or an expired one, never completes a handshake; the service then requires a
//! certificate on every call but `Enroll`. The broker's own server certificate comes from the same
//! CA and is re-issued in place at half its lifetime, with no restart and no dropped stream.

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use keyward_proto::agent_v1::agent_service_server::AgentServiceServer;
use rustls::RootCertStore;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::Sender;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use super::service::AgentGrpc;
use crate::agents::Agents;
use crate::agents::ca::{AgentCa, CaError, ServerIdentity};
use crate::clock::SharedClock;

/// Largest message an agent may send (log chunks are 64 KiB, plan parts 128 KiB).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The broker's gRPC server certificate lifetime.
const SERVER_CERT_LIFETIME: i64 = 30 * 24 * 3600;
/// How often the server certificate's age is checked.
const SERVER_CERT_CHECK: Duration = Duration::from_secs(3600);

/// Why the endpoint could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    /// The server certificate could not be issued.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// rustls refused the configuration.
    #[error("cannot configure TLS for the agent endpoint: {0}")]
    Tls(String),
}

/// The server certificate, swapped in place when it is renewed.
#[derive(Debug)]
struct RotatingCertificate {
    current: RwLock<(Arc<CertifiedKey>, i64)>,
    names: Vec<String>,
}

impl RotatingCertificate {
    fn issue(ca: &AgentCa, names: &[String], now: i64) -> Result<(Arc<CertifiedKey>, i64), ListenerError> {
        let ServerIdentity { certificate, key, not_after } = ca.issue_server(names, SERVER_CERT_LIFETIME, now)?;
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let signing =
            provider.key_provider.load_private_key(key.into()).map_err(|e| ListenerError::Tls(e.to_string()))?;
        Ok((Arc::new(CertifiedKey::new(vec![certificate, ca.certificate().clone()], signing)), not_after))
    }

    fn renew_if_due(&self, ca: &AgentCa, now: i64) {
        let not_after = self.current.read().map(|c| c.1).unwrap_or(0);
        if now < not_after - SERVER_CERT_LIFETIME / 2 {
            return;
        }
        match Self::issue(ca, &self.names, now) {
            Ok(fresh) => {
                if let Ok(mut current) = self.current.write() {
                    *current = fresh;
                    tracing::info!("renewed the agent endpoint's server certificate");
                }
            }
            Err(error) => tracing::error!(%error, "could not renew the agent endpoint's server certificate"),
        }
    }
}

impl ResolvesServerCert for RotatingCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| Arc::clone(&c.0))
    }
}

/// The names the server certificate carries: the advertised host and any configured extras.
pub fn server_names(endpoint: &str, extra: &[String]) -> Vec<String> {
    let mut names = vec![crate::targets::url_host(endpoint).to_owned()];
    for name in extra {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    names
}

/// Serves the agent endpoint on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    agents: Agents,
    names: Vec<String>,
    clock: SharedClock,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ListenerError> {
    let ca = Arc::clone(agents.ca());
    let certificate = Arc::new(RotatingCertificate {
        current: RwLock::new(RotatingCertificate::issue(&ca, &names, clock.now())?),
        names,
    });
    let acceptor = tls_acceptor(&ca, Arc::clone(&certificate))?;
    let renewal = tokio::spawn(renew_periodically(certificate, ca, clock));
    let cancellations = tokio::spawn(Arc::clone(agents.hub()).forward_cancellations());
    let (connections, incoming) = tokio::sync::mpsc::channel(64);
    let accepting = tokio::spawn(accept(listener, acceptor, connections));

    let hub = Arc::clone(agents.hub());
    let shutdown = async move {
        shutdown.await;
        hub.close_all();
    };
    let service = AgentServiceServer::new(AgentGrpc::new(agents))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let served = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .max_concurrent_streams(Some(32))
        .add_service(service)
        .serve_with_incoming_shutdown(ReceiverStream::new(incoming), shutdown)
        .await;
    accepting.abort();
    renewal.abort();
    cancellations.abort();
    if let Err(error) = served {
        tracing::error!(%error, "the agent endpoint stopped");
    }
    Ok(())
}

/// TLS 1.3 only, HTTP/2, the broker's rotating `certificate`, and any client certificate that
/// is presented verified against the agent CA (none is needed to enroll).
fn tls_acceptor(ca: &AgentCa, certificate: Arc<RotatingCertificate>) -> Result<TlsAcceptor, ListenerError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.certificate().clone()).map_err(|e| ListenerError::Tls(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
        .allow_unauthenticated()
        .build()
        .map_err(|e| ListenerError::Tls(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ListenerError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(certificate as Arc<dyn ResolvesServerCert>);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Checks the server certificate's age every [`SERVER_CERT_CHECK`] and renews it at half-life.
async fn renew_periodically(certificate: Arc<RotatingCertificate>, ca: Arc<AgentCa>, clock: SharedClock) {
    let mut ticker = tokio::time::interval(SERVER_CERT_CHECK);
    loop {
        ticker.tick().await;
        certificate.renew_if_due(&ca, clock.now());
    }
}

/// Accepts connections and hands each one that completes its TLS handshake in time to the gRPC
/// server through `connections`; a slow or refused handshake holds up no other.
async fn accept(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    connections: Sender<Result<TlsStream<TcpStream>, std::io::Error>>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "agent endpoint accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let connections = connections.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let _ = connections.send(Ok(tls)).await;
                }
                Ok(Err(error)) => tracing::info!(%peer, %error, "agent TLS handshake refused"),
                Err(_) => tracing::info!(%peer, "agent TLS handshake timed out"),
            }
        });
    }
}
