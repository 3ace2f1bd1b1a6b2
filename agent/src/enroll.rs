//! `keyward-agent join`: trade a one-time join token for the agent's first certificate.
//!
//! 1. Fetch `GET <broker>/v1/agents/bootstrap`: the gRPC endpoint and the agent CA.
//! 2. Check the CA's SHA-256 against the fingerprint in the join token, so a broker address
//!    reached over plain HTTP (or a spoofed one) cannot substitute its own CA.
//! 3. Generate the key here (ECDSA P-256); it never leaves the data directory.
//! 4. `Enroll` over TLS that trusts only that CA, with the token and a CSR that asks for no names.
//! 5. Store key, certificate, CA and state in the data directory.

use std::time::Duration;

use aws_lc_rs::digest;
use keyward_proto::agent_v1::{EnrollRequest, EnrollResponse};
use keyward_proto::encoding::{hex, pem, pem_der};
use rcgen::{CertificateParams, DistinguishedName, KeyPair};
use serde::Deserialize;

use crate::channel::{self, chain};
use crate::datadir::{AgentState, DataDir, Identity};

/// Why enrollment failed.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// The token is not a join token.
    #[error("the join token is malformed (expected kwj1.<fingerprint>.<secret>)")]
    MalformedToken,
    /// The broker could not be asked for its endpoint and CA.
    #[error("cannot fetch {url}: {message}")]
    Bootstrap {
        /// What was fetched.
        url: String,
        /// Why.
        message: String,
    },
    /// The broker's CA does not match the token.
    #[error(
        "the broker's agent CA (sha256 {actual}) is not the one the join token pins ({expected}); \
         check the --broker address"
    )]
    CaMismatch {
        /// From the token.
        expected: String,
        /// From the broker.
        actual: String,
    },
    /// The broker refused.
    #[error("the broker refused the enrollment: {0}")]
    Refused(String),
    /// Something local failed.
    #[error("{0}")]
    Local(String),
    /// The data directory failed.
    #[error(transparent)]
    DataDir(#[from] crate::datadir::DataDirError),
    /// The endpoint could not be reached.
    #[error(transparent)]
    Connect(#[from] channel::ConnectError),
}

#[derive(Debug, Deserialize)]
struct Bootstrap {
    endpoint: String,
    ca_certificate: String,
}

/// A fresh key and a CSR for it that asks for nothing but a certificate.
pub fn key_and_csr(hostname: &str) -> Result<(KeyPair, Vec<u8>), EnrollError> {
    let key = KeyPair::generate().map_err(|e| EnrollError::Local(format!("cannot generate a key: {e}")))?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(rcgen::DnType::CommonName, hostname);
    params.distinguished_name = name;
    let csr = params.serialize_request(&key).map_err(|e| EnrollError::Local(format!("cannot build a CSR: {e}")))?;
    Ok((key, csr.der().to_vec()))
}

/// This host's name, for the record.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Enrolls into the broker at `broker` with `token`, storing the identity in `dir`.
pub async fn join(broker: &str, token: &str, dir: &DataDir) -> Result<Identity, EnrollError> {
    dir.ensure_empty()?;
    let expected = pinned_fingerprint(token).ok_or(EnrollError::MalformedToken)?;
    let bootstrap = fetch_bootstrap(broker).await?;
    let ca_der = pem_der(&bootstrap.ca_certificate)
        .ok_or_else(|| EnrollError::Refused("the broker sent an unreadable CA certificate".to_owned()))?;
    let actual = hex(digest::digest(&digest::SHA256, &ca_der).as_ref());
    if actual != expected {
        return Err(EnrollError::CaMismatch { expected, actual });
    }
    let host = hostname();
    let (key, csr) = key_and_csr(&host)?;
    let mut client = channel::connect(&bootstrap.endpoint, &bootstrap.ca_certificate, None).await?;
    let request = EnrollRequest {
        join_token: token.trim().to_owned(),
        csr_der: csr,
        hostname: host,
        agent_version: crate::version().to_owned(),
    };
    let response = client.enroll(request).await.map_err(|status| EnrollError::Refused(status.message().to_owned()))?;
    let identity = identity_from(response.into_inner(), &key, broker, &bootstrap.endpoint, &bootstrap.ca_certificate)?;
    dir.store(&identity)?;
    Ok(identity)
}

/// Asks the broker address the agent enrolled with where the work endpoint is now (an operator
/// may have moved it). Returns the new endpoint when it changed. The bootstrap document must name
/// the CA the agent already trusts: a different one is refused, so a spoofed answer can at most
/// point the agent at an endpoint it cannot authenticate.
pub async fn rediscover(identity: &Identity) -> Result<Option<String>, EnrollError> {
    let bootstrap = fetch_bootstrap(&identity.state.broker).await?;
    let fetched = pem_der(&bootstrap.ca_certificate);
    if fetched.is_none() || fetched != pem_der(&identity.ca_pem) {
        return Err(EnrollError::Refused(
            "the broker now presents a different agent CA; enroll again if that is intended".to_owned(),
        ));
    }
    Ok((bootstrap.endpoint != identity.state.endpoint).then_some(bootstrap.endpoint))
}

/// The identity an `Enroll` or `Renew` response gives, with the key the CSR was made from.
pub fn identity_from(
    response: EnrollResponse,
    key: &KeyPair,
    broker: &str,
    fallback_endpoint: &str,
    ca_pem: &str,
) -> Result<Identity, EnrollError> {
    if response.certificate_der.is_empty() || response.agent_id.is_empty() {
        return Err(EnrollError::Refused("the broker's answer carries no certificate".to_owned()));
    }
    let endpoint =
        if response.work_endpoint.is_empty() { fallback_endpoint.to_owned() } else { response.work_endpoint };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
    Ok(Identity {
        state: AgentState {
            agent_id: response.agent_id,
            pool: response.pool,
            broker: broker.trim_end_matches('/').to_owned(),
            endpoint,
            not_after: response.not_after_unix,
            issued_at: now,
        },
        key_pem: zeroize::Zeroizing::new(key.serialize_pem()),
        cert_pem: pem("CERTIFICATE", &response.certificate_der),
        ca_pem: ca_pem.to_owned(),
    })
}

async fn fetch_bootstrap(broker: &str) -> Result<Bootstrap, EnrollError> {
    let url = format!("{}/v1/agents/bootstrap", broker.trim_end_matches('/'));
    let failed = |message: String| EnrollError::Bootstrap { url: url.clone(), message };
    let client = reqwest::Client::builder().timeout(Duration::from_secs(15)).build().map_err(|e| failed(chain(&e)))?;
    let response = client.get(&url).send().await.map_err(|e| failed(chain(&e)))?;
    let status = response.status();
    let body = response.text().await.map_err(|e| failed(chain(&e)))?;
    if !status.is_success() {
        let description = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error_description").and_then(|d| d.as_str()).map(str::to_owned))
            .unwrap_or_else(|| status.to_string());
        return Err(failed(description));
    }
    serde_json::from_str(&body).map_err(|e| failed(format!("unexpected answer: {e}")))
}

/// The CA fingerprint a `kwj1.<fingerprint>.<secret>` token pins.
fn pinned_fingerprint(token: &str) -> Option<String> {
    let mut parts = token.trim().split('.');
    let (Some("kwj1"), Some(fingerprint), Some(secret), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    (fingerprint.len() == 64 && fingerprint.bytes().all(|b| b.is_ascii_hexdigit()) && !secret.is_empty())
        .then(|| fingerprint.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_tokens_pin_a_fingerprint() {
        let fp = "ab".repeat(32);
        assert_eq!(pinned_fingerprint(&format!("kwj1.{fp}.secret")), Some(fp.clone()));
        assert_eq!(pinned_fingerprint(&format!("kwj2.{fp}.secret")), None);
        assert_eq!(pinned_fingerprint("kwj1.abc.secret"), None);
        assert_eq!(pinned_fingerprint(&format!("kwj1.{fp}.")), None);
    }

    #[test]
    fn a_csr_asks_for_no_names() {
        let (key, csr) = key_and_csr("host-1").expect("csr");
        let parsed = rcgen::CertificateSigningRequestParams::from_der(&csr.as_slice().into()).expect("valid CSR");
        assert!(parsed.params.subject_alt_names.is_empty());
        assert!(parsed.params.extended_key_usages.is_empty());
        assert_eq!(rcgen::PublicKeyData::der_bytes(&parsed.public_key), key.public_key_raw());
    }
}
