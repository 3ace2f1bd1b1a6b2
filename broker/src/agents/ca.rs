//! The agent CA: it signs every agent's short-lived certificate and the broker's own gRPC server
//! certificate.
//!
//! One CA per deployment, created by the first broker to start and shared by every replica
//! through the store; its private key is sealed under the KEK exactly like the token signing keys,
//! so a database dump alone cannot mint agent identities. Agents pin the CA through the
//! fingerprint carried in their join token, so enrollment never trusts on first use.
//!
//! An agent's certificate carries exactly one name, the URI SAN
//! `spiffe://<trust-domain>/pool/<pool>/agent/<agent-id>`, chosen by the broker. A CSR proves
//! possession of its key (its signature is checked) and may not ask for names or CA rights: the
//! identity is the broker's to assign.

use std::fmt;

use aws_lc_rs::digest;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer, PrivatePkcs8KeyDer};

use crate::kek::Kek;
use crate::store::{Store, StoreError};
use keyward_proto::encoding::{hex, pem};

/// The store name of the deployment's one agent CA.
const CA_NAME: &str = "agents";
/// How long the CA certificate is valid.
const CA_LIFETIME_SECS: i64 = 10 * 365 * 24 * 3600;
/// Backdating of `notBefore`, for agents whose clocks run a little behind.
pub const BACKDATE_SECS: i64 = 60;
/// The smallest RSA modulus a CSR may carry.
const MIN_RSA_BITS: usize = 2048;

/// Why the CA could not be loaded or could not sign.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stored CA does not open or parse.
    #[error("the agent CA in {location} is unusable: {reason}")]
    Unusable {
        /// The database holding it.
        location: String,
        /// Why.
        reason: String,
    },
    /// Signing failed.
    #[error("could not sign a certificate: {0}")]
    Sign(String),
}

/// Why a CSR was refused. The messages go back to the enrolling agent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    /// Not a CSR, or its signature does not verify (no proof of possession).
    #[error("the CSR is malformed or its signature does not verify")]
    Malformed,
    /// The key type or size is not accepted.
    #[error("the CSR's key is too weak or of an unsupported type: {0}")]
    WeakKey(String),
    /// The CSR asks for names, key usages or CA rights.
    #[error("the CSR asks for {0}; the broker assigns the agent's identity, so send a CSR without names or extensions")]
    Requests(String),
}

/// A certificate the CA issued.
#[derive(Clone, PartialEq, Eq)]
pub struct Issued {
    /// DER.
    pub der: Vec<u8>,
    /// Serial number, lower-case hex.
    pub serial: String,
    /// Expiry, seconds since the epoch.
    pub not_after: i64,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued").field("serial", &self.serial).field("not_after", &self.not_after).finish()
    }
}

/// A server certificate and its private key (PKCS#8 DER).
pub struct ServerIdentity {
    /// Certificate, DER.
    pub certificate: CertificateDer<'static>,
    /// Private key.
    pub key: PrivatePkcs8KeyDer<'static>,
    /// Expiry, seconds since the epoch.
    pub not_after: i64,
}

impl fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerIdentity").field("not_after", &self.not_after).finish_non_exhaustive()
    }
}

/// The loaded agent CA.
pub struct AgentCa {
    certificate: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    trust_domain: String,
}

impl fmt::Debug for AgentCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentCa")
            .field("trust_domain", &self.trust_domain)
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl AgentCa {
    /// Loads the deployment's CA, creating it on first use. Concurrent first starts agree on
    /// one CA (the loser of the insert reloads).
    pub async fn load_or_create(store: &Store, kek: &Kek, trust_domain: &str, now: i64) -> Result<Self, CaError> {
        if let Some((certificate, sealed)) = store.agent_ca(CA_NAME).await? {
            return Self::open(kek, trust_domain, certificate, &sealed, store.location());
        }
        let key = KeyPair::generate().map_err(|e| CaError::Sign(e.to_string()))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(&format!("Keyward agent CA ({trust_domain})"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = at(now - BACKDATE_SECS)?;
        params.not_after = at(now + CA_LIFETIME_SECS)?;
        params.serial_number = Some(random_serial()?);
        let certificate = params.self_signed(&key).map_err(|e| CaError::Sign(e.to_string()))?;
        let sealed = kek.seal(CA_NAME.as_bytes(), &key.serialize_der());
        match store.insert_agent_ca(CA_NAME, certificate.der(), &sealed, now).await {
            Ok(()) => tracing::info!("generated the agent CA"),
            Err(StoreError::Conflict(_)) => {
                if let Some((certificate, sealed)) = store.agent_ca(CA_NAME).await? {
                    return Self::open(kek, trust_domain, certificate, &sealed, store.location());
                }
            }
            Err(other) => return Err(other.into()),
        }
        Ok(Self {
            certificate: certificate.der().clone(),
            issuer: Issuer::new(params, key),
            trust_domain: trust_domain.to_owned(),
        })
    }

    fn open(
        kek: &Kek,
        trust_domain: &str,
        certificate: Vec<u8>,
        sealed: &[u8],
        location: &str,
    ) -> Result<Self, CaError> {
        let unusable = |reason: String| CaError::Unusable { location: location.to_owned(), reason };
        let pkcs8 = kek.open(CA_NAME.as_bytes(), sealed).map_err(|e| unusable(e.to_string()))?;
        let key = KeyPair::try_from(pkcs8.as_slice()).map_err(|e| unusable(e.to_string()))?;
        let certificate = CertificateDer::from(certificate);
        let issuer = Issuer::from_ca_cert_der(&certificate, key).map_err(|e| unusable(e.to_string()))?;
        Ok(Self { certificate, issuer, trust_domain: trust_domain.to_owned() })
    }

    /// The CA certificate (DER), which agents and the gRPC listener trust.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.certificate
    }

    /// The CA certificate as PEM.
    pub fn certificate_pem(&self) -> String {
        pem("CERTIFICATE", &self.certificate)
    }

    /// SHA-256 of the CA certificate, lower-case hex: what a join token pins.
    pub fn fingerprint(&self) -> String {
        hex(digest::digest(&digest::SHA256, &self.certificate).as_ref())
    }

    /// The trust domain of agent SPIFFE IDs.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The SPIFFE ID of agent `agent_id` in `pool`.
    pub fn spiffe_id(&self, pool: &str, agent_id: &str) -> String {
        format!("spiffe://{}/pool/{pool}/agent/{agent_id}", self.trust_domain)
    }

    /// Signs a client certificate for `agent_id` in `pool` over the key in `csr`, valid for
    /// `lifetime_secs` from `now`.
    pub fn issue_agent(
        &self,
        csr: &[u8],
        pool: &str,
        agent_id: &str,
        lifetime_secs: i64,
        now: i64,
    ) -> Result<Issued, IssueError> {
        let request = checked_csr(csr)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(agent_id);
        let uri = self.spiffe_id(pool, agent_id);
        params.subject_alt_names =
            vec![SanType::URI(uri.try_into().map_err(|_| IssueError::Ca(CaError::Sign("bad SPIFFE ID".into())))?)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        self.sign(params, &request.public_key, lifetime_secs, now).map_err(IssueError::Ca)
    }

    /// A fresh key and server certificate for the gRPC listener, naming `names` (DNS names or
    /// IP addresses).
    pub fn issue_server(&self, names: &[String], lifetime_secs: i64, now: i64) -> Result<ServerIdentity, CaError> {
        let key = KeyPair::generate().map_err(|e| CaError::Sign(e.to_string()))?;
        let mut params = CertificateParams::new(names.to_vec()).map_err(|e| CaError::Sign(e.to_string()))?;
        params.distinguished_name = name("Keyward broker");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let issued = self.sign(params, &key, lifetime_secs, now)?;
        Ok(ServerIdentity {
            certificate: CertificateDer::from(issued.der),
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
            not_after: issued.not_after,
        })
    }

    fn sign(
        &self,
        mut params: CertificateParams,
        public_key: &impl rcgen::PublicKeyData,
        lifetime_secs: i64,
        now: i64,
    ) -> Result<Issued, CaError> {
        let not_after = now.saturating_add(lifetime_secs);
        let serial = random_serial()?;
        params.serial_number = Some(serial.clone());
        params.not_before = at(now - BACKDATE_SECS)?;
        params.not_after = at(not_after)?;
        let certificate = params.signed_by(public_key, &self.issuer).map_err(|e| CaError::Sign(e.to_string()))?;
        Ok(Issued { der: certificate.der().to_vec(), serial: hex(&serial.to_bytes()), not_after })
    }
}

/// Why an agent certificate was not issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The CSR is unacceptable (the agent's fault).
    #[error(transparent)]
    Csr(#[from] CsrError),
    /// The CA failed (the broker's fault).
    #[error(transparent)]
    Ca(#[from] CaError),
}

/// Whether [`AgentCa::issue_agent`] would accept the CSR `der`: the fuzzing entry (`fuzz/`) to
/// the checks an enrolling or renewing agent's CSR passes.
pub fn check_csr(der: &[u8]) -> Result<(), CsrError> {
    checked_csr(der).map(drop)
}

/// Parses `der`, verifies its self-signature and checks that it asks for nothing but a
/// certificate over a strong key.
fn checked_csr(der: &[u8]) -> Result<CertificateSigningRequestParams, CsrError> {
    let request =
        CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(der)).map_err(|e| match e {
            rcgen::Error::UnsupportedExtension => CsrError::Requests("an extension the broker does not grant".into()),
            rcgen::Error::UnsupportedSignatureAlgorithm => CsrError::WeakKey("unsupported signature algorithm".into()),
            // aws-lc does not verify signatures of RSA keys under 2048 bits at all.
            _ => match rsa_bits(der) {
                Some(bits) if bits < MIN_RSA_BITS => weak_rsa(bits),
                _ => CsrError::Malformed,
            },
        })?;
    let alg = request.public_key.algorithm();
    if alg == &rcgen::PKCS_RSA_SHA256 || alg == &rcgen::PKCS_RSA_SHA384 || alg == &rcgen::PKCS_RSA_SHA512 {
        let bits = rsa_bits(der).ok_or(CsrError::Malformed)?;
        if bits < MIN_RSA_BITS {
            return Err(weak_rsa(bits));
        }
    } else if !(alg == &rcgen::PKCS_ECDSA_P256_SHA256
        || alg == &rcgen::PKCS_ECDSA_P384_SHA384
        || alg == &rcgen::PKCS_ED25519)
    {
        return Err(CsrError::WeakKey(format!("{alg:?}; use ECDSA P-256/P-384, Ed25519 or RSA ≥ {MIN_RSA_BITS}")));
    }
    let params = &request.params;
    if !params.subject_alt_names.is_empty() {
        let names: Vec<String> = params.subject_alt_names.iter().map(|n| format!("{n:?}")).collect();
        return Err(CsrError::Requests(format!("subject alternative names ({})", names.join(", "))));
    }
    if !matches!(params.is_ca, IsCa::NoCa | IsCa::ExplicitNoCa) {
        return Err(CsrError::Requests("CA rights".into()));
    }
    if !params.key_usages.is_empty() || !params.extended_key_usages.is_empty() {
        return Err(CsrError::Requests("key usages".into()));
    }
    Ok(request)
}

fn weak_rsa(bits: usize) -> CsrError {
    CsrError::WeakKey(format!("RSA {bits} bits; at least {MIN_RSA_BITS} are required"))
}

/// The modulus size of an RSA CSR's key; `None` for other keys.
fn rsa_bits(der: &[u8]) -> Option<usize> {
    use x509_parser::prelude::FromDer as _;
    let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(der).ok()?;
    match csr.certification_request_info.subject_pki.parsed().ok()? {
        x509_parser::public_key::PublicKey::RSA(rsa) => Some(rsa.key_size()),
        _ => None,
    }
}

/// The agent identity in a client certificate: `(pool, agent_id)` from its one SPIFFE URI SAN
/// in `trust_domain`. The TLS layer has already verified the chain and validity period.
pub fn agent_identity(certificate: &[u8], trust_domain: &str) -> Option<(String, String)> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    let [GeneralName::URI(uri)] = san.value.general_names.as_slice() else { return None };
    let rest = uri.strip_prefix("spiffe://")?.strip_prefix(trust_domain)?.strip_prefix("/pool/")?;
    let (pool, agent) = rest.split_once("/agent/")?;
    let valid = |part: &str| !part.is_empty() && !part.contains('/');
    (valid(pool) && valid(agent)).then(|| (pool.to_owned(), agent.to_owned()))
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Keyward");
    name.push(DnType::CommonName, common_name);
    name
}

fn at(seconds: i64) -> Result<time::OffsetDateTime, CaError> {
    time::OffsetDateTime::from_unix_timestamp(seconds).map_err(|e| CaError::Sign(e.to_string()))
}

fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0_u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| CaError::Sign("no randomness".into()))?;
    // Positive and never with a leading zero byte (RFC 5280 §4.1.2.2).
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> AgentCa {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let certificate = params.self_signed(&key).expect("ca");
        AgentCa {
            certificate: certificate.der().clone(),
            issuer: Issuer::new(params, key),
            trust_domain: "keyward.test".to_owned(),
        }
    }

    fn csr(names: Vec<String>) -> Vec<u8> {
        let key = KeyPair::generate().expect("key");
        let params = CertificateParams::new(names).expect("params");
        params.serialize_request(&key).expect("csr").der().to_vec()
    }

    #[test]
    fn an_agent_certificate_names_exactly_its_spiffe_id() {
        let ca = ca();
        let issued = ca.issue_agent(&csr(vec![]), "blue", "a1", 3600, 1_800_000_000).expect("issued");
        assert_eq!(issued.not_after, 1_800_003_600);
        assert_eq!(agent_identity(&issued.der, "keyward.test"), Some(("blue".to_owned(), "a1".to_owned())));
        assert_eq!(agent_identity(&issued.der, "other.test"), None, "another trust domain is not this one");
    }

    #[test]
    fn a_csr_asking_for_names_is_refused() {
        let refused = ca().issue_agent(&csr(vec!["evil.example".into()]), "blue", "a1", 3600, 1_800_000_000);
        assert!(matches!(refused, Err(IssueError::Csr(CsrError::Requests(_)))), "{refused:?}");
    }

    #[test]
    fn a_csr_with_a_broken_signature_is_refused() {
        let mut der = csr(vec![]);
        let last = der.len() - 2;
        der[last] ^= 0xff;
        let refused = ca().issue_agent(&der, "blue", "a1", 3600, 1_800_000_000);
        assert!(matches!(refused, Err(IssueError::Csr(CsrError::Malformed))), "{refused:?}");
        assert!(matches!(ca().issue_agent(b"junk", "b", "a", 1, 1), Err(IssueError::Csr(CsrError::Malformed))));
    }

    #[test]
    fn a_server_certificate_is_not_an_agent_identity() {
        let ca = ca();
        let server = ca.issue_server(&["localhost".to_owned()], 3600, 1_800_000_000).expect("server");
        assert_eq!(agent_identity(&server.certificate, "keyward.test"), None);
    }
}
