//! Connections to the broker's gRPC endpoint: TLS that trusts only the pinned agent CA, with the
//! agent's certificate once it has one.

use std::time::Duration;

use keyward_proto::agent_v1::agent_service_client::AgentServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity as TlsIdentity};

use crate::datadir::Identity;

/// Largest message either side sends (the broker enforces the same).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the endpoint could not be reached.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to {endpoint}: {message}")]
pub struct ConnectError {
    /// Where.
    pub endpoint: String,
    /// Why (with its causes).
    pub message: String,
}

/// A client for `endpoint` trusting only `ca_pem`; with `identity`, it presents the agent's
/// certificate (mTLS).
pub async fn connect(
    endpoint: &str,
    ca_pem: &str,
    identity: Option<&Identity>,
) -> Result<AgentServiceClient<Channel>, ConnectError> {
    let failed = |message: String| ConnectError { endpoint: endpoint.to_owned(), message };
    let host = host_of(endpoint).ok_or_else(|| failed("not an https://host:port address".to_owned()))?;
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)).domain_name(host);
    if let Some(identity) = identity {
        tls = tls.identity(TlsIdentity::from_pem(&identity.cert_pem, identity.key_pem.as_bytes()));
    }
    let channel = Endpoint::from_shared(endpoint.to_owned())
        .map_err(|e| failed(e.to_string()))?
        .tls_config(tls)
        .map_err(|e| failed(chain(&e)))?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .connect()
        .await
        .map_err(|e| failed(chain(&e)))?;
    Ok(AgentServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// The host of `https://host:port`, without brackets.
fn host_of(endpoint: &str) -> Option<String> {
    let authority = endpoint.strip_prefix("https://")?.split('/').next()?;
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => authority.rsplit_once(':').map_or(authority, |(host, _)| host),
    };
    (!host.is_empty()).then(|| host.to_owned())
}

/// An error and its causes on one line.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn hosts_come_from_https_endpoints_only() {
        assert_eq!(host_of("https://127.0.0.1:8443").as_deref(), Some("127.0.0.1"));
        assert_eq!(host_of("https://[::1]:8443").as_deref(), Some("::1"));
        assert_eq!(host_of("https://broker.example").as_deref(), Some("broker.example"));
        assert_eq!(host_of("http://broker.example:1"), None);
    }
}
