//! A run's log as a self-contained bundle, and its offline verification.
//!
//! The bundle holds every stored chunk of the run with its digest and signature, the agent
//! certificates that signed them, the agent CA, and the head each job's `job.finished` audit
//! entry sealed. `keyward run logs ID --verify` and `keyward-verify logs` check it without
//! trusting the broker that served it beyond the CA (pin it with `--ca`): each certificate chains
//! to the CA and was valid when its chunk arrived, each chunk's digest and signature hold, each
//! lease's chain is complete from its first chunk, and its head is the sealed one.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use keyward_proto::encoding::{hex, hex_decode, pem_der};
use keyward_proto::logs::ChunkFields;
use rustls::pki_types::{CertificateDer, UnixTime};
use serde::{Deserialize, Serialize};

use super::chunk::{AgentKey, ChunkToCheck, check_chunk, fingerprint};

/// The bundle format this build writes and reads.
pub const FORMAT: &str = "keyward-log-bundle/1";

/// A run's log, verifiable offline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    /// [`FORMAT`].
    pub format: String,
    /// The run.
    pub run_id: String,
    /// The agent CA, PEM.
    pub ca_certificate: String,
    /// The certificates that signed chunks.
    pub signers: Vec<Signer>,
    /// Each lease of each job, in the order their chunks arrived.
    pub leases: Vec<LeaseLog>,
}

/// A certificate that signed chunks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signer {
    /// SHA-256 of its DER, hex.
    pub fingerprint: String,
    /// The agent it belongs to.
    pub agent_id: String,
    /// PEM.
    pub certificate: String,
}

/// One lease's chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseLog {
    /// The job.
    pub job_id: String,
    /// `plan` or `apply`.
    pub phase: String,
    /// The lease.
    pub fencing_token: u64,
    /// The head sealed into the job's `job.finished` entry, when the job reported its end on
    /// this lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<Seal>,
    /// The chunks, by position.
    pub chunks: Vec<BundleChunk>,
}

/// A sealed head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seal {
    /// The last chunk's digest, hex (`None`: the job logged nothing).
    pub digest: Option<String>,
    /// How many chunks.
    pub chunks: u64,
}

/// One chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleChunk {
    /// Position.
    pub seq: u64,
    /// Stream.
    pub stream: String,
    /// Previous digest, hex.
    pub prev_digest: String,
    /// Masked output, base64.
    pub data: String,
    /// Digest, hex.
    pub digest: String,
    /// Signature, base64.
    pub signature: String,
    /// The signing certificate's fingerprint.
    pub signer: String,
    /// When the broker received it (Unix seconds).
    pub received_at: i64,
}

/// What a verified bundle shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The run.
    pub run_id: String,
    /// SHA-256 of the CA the certificates chain to, hex.
    pub ca_fingerprint: String,
    /// Whether that CA was pinned by the verifier (`--ca`) rather than taken from the bundle.
    pub ca_pinned: bool,
    /// Per lease.
    pub leases: Vec<LeaseReport>,
}

/// One verified lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaseReport {
    /// The job.
    pub job_id: String,
    /// Its phase.
    pub phase: String,
    /// The lease.
    pub fencing_token: u64,
    /// Chunks verified.
    pub chunks: u64,
    /// Bytes of output.
    pub bytes: u64,
    /// The head, hex.
    pub head: Option<String>,
    /// The agents whose certificates signed them.
    pub agents: Vec<String>,
    /// Whether the head is the sealed one (`None`: the lease was never sealed, e.g. canceled).
    pub sealed: Option<bool>,
}

/// The human-readable verdict `keyward run logs --verify` and `keyward-verify logs` print: one
/// line per lease, then the run and the CA it was checked against.
impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for lease in &self.leases {
            let sealed = match lease.sealed {
                Some(true) => "sealed in the audit log",
                Some(false) => "NOT the sealed head",
                None => "not sealed (the job did not report its end)",
            };
            writeln!(
                f,
                "{} job {} lease {}: {} chunks, {} bytes, signed by agent {}; head {} {sealed}",
                lease.phase,
                lease.job_id,
                lease.fencing_token,
                lease.chunks,
                lease.bytes,
                lease.agents.join(", "),
                lease.head.as_deref().map_or("-", |h| h.get(..16).unwrap_or(h)),
            )?;
        }
        let trust = if self.ca_pinned { "pinned with --ca" } else { "taken from the bundle; pin it with --ca" };
        writeln!(f, "verified: run {}; agent CA sha256 {} ({trust})", self.run_id, self.ca_fingerprint)
    }
}

/// Why a bundle does not verify; each problem named.
#[derive(Debug, thiserror::Error)]
#[error("the log bundle does not verify:\n  - {}", .0.join("\n  - "))]
pub struct BundleError(pub Vec<String>);

/// Verifies `bundle`; `pinned_ca` (DER) replaces the bundle's own CA as the trust anchor.
/// Every lease is checked, and every problem found is named, not just the first.
pub fn verify(bundle: &Bundle, pinned_ca: Option<&[u8]>) -> Result<Report, BundleError> {
    if bundle.format != FORMAT {
        return Err(BundleError(vec![format!("unknown format `{}` (expected {FORMAT})", bundle.format)]));
    }
    let mut problems = Vec::new();
    let ca = trust_anchor(bundle, pinned_ca, &mut problems)?;
    let signers: Signers<'_> =
        bundle.signers.iter().map(|s| (s.fingerprint.as_str(), (s, pem_der(&s.certificate)))).collect();
    let leases = bundle.leases.iter().map(|lease| verify_lease(bundle, lease, &signers, &ca, &mut problems)).collect();
    if !problems.is_empty() {
        return Err(BundleError(problems));
    }
    Ok(Report {
        run_id: bundle.run_id.clone(),
        ca_fingerprint: fingerprint(&ca),
        ca_pinned: pinned_ca.is_some(),
        leases,
    })
}

/// The bundle's signing certificates by fingerprint, each with its DER when its PEM parses.
type Signers<'a> = BTreeMap<&'a str, (&'a Signer, Option<Vec<u8>>)>;

/// The CA certificates must chain to (DER): the pinned one, else the bundle's. A bundle naming
/// another CA than the pinned one is a problem, not a stop: the chains are still checked.
fn trust_anchor(bundle: &Bundle, pinned_ca: Option<&[u8]>, problems: &mut Vec<String>) -> Result<Vec<u8>, BundleError> {
    let bundled_ca = pem_der(&bundle.ca_certificate);
    let ca = match (pinned_ca, &bundled_ca) {
        (Some(pinned), _) => pinned.to_vec(),
        (None, Some(bundled)) => bundled.clone(),
        (None, None) => return Err(BundleError(vec!["the bundle's CA certificate is not PEM".to_owned()])),
    };
    if let (Some(_), Some(bundled)) = (pinned_ca, &bundled_ca)
        && fingerprint(bundled) != fingerprint(&ca)
    {
        problems.push("the bundle names another CA than the pinned one".to_owned());
    }
    Ok(ca)
}

/// One lease's chain, from its first chunk to its head, against the head the audit log sealed.
/// The chain stops at its first bad chunk (everything after it is unproven).
fn verify_lease(
    bundle: &Bundle,
    lease: &LeaseLog,
    signers: &Signers<'_>,
    ca: &[u8],
    problems: &mut Vec<String>,
) -> LeaseReport {
    let mut head: Option<(u64, Vec<u8>)> = None;
    let mut bytes = 0_u64;
    let mut agents = Vec::new();
    for chunk in &lease.chunks {
        let previous = head.as_ref().map(|(seq, digest)| (*seq, digest.as_slice()));
        match verify_chunk(bundle, lease, chunk, signers, ca, previous) {
            Ok((signer, length, digest)) => {
                bytes += length;
                if !agents.contains(&signer.agent_id) {
                    agents.push(signer.agent_id.clone());
                }
                head = Some((chunk.seq, digest));
            }
            Err(why) => {
                problems.push(format!("job {} lease {} chunk {}: {why}", lease.job_id, lease.fencing_token, chunk.seq));
                break;
            }
        }
    }
    let chunks = head.as_ref().map_or(0, |(seq, _)| seq + 1);
    let head = head.map(|(_, digest)| hex(&digest));
    let sealed = lease.sealed.as_ref().map(|seal| seal.digest == head && seal.chunks == chunks);
    if sealed == Some(false) {
        problems.push(format!(
            "job {} lease {}: the chain ends at {} ({chunks} chunks), but the audit log sealed {} ({} chunks)",
            lease.job_id,
            lease.fencing_token,
            head.as_deref().unwrap_or("nothing"),
            lease.sealed.as_ref().and_then(|s| s.digest.as_deref()).unwrap_or("nothing"),
            lease.sealed.as_ref().map_or(0, |s| s.chunks),
        ));
    }
    LeaseReport {
        job_id: lease.job_id.clone(),
        phase: lease.phase.clone(),
        fencing_token: lease.fencing_token,
        chunks,
        bytes,
        head,
        agents,
        sealed,
    }
}

/// One chunk: its signer's certificate chains to `ca` when the broker received it, and the
/// chunk's digest, link to `previous` and signature hold. Returns the signer, the output's
/// length and the chunk's digest.
fn verify_chunk<'a>(
    bundle: &Bundle,
    lease: &LeaseLog,
    chunk: &BundleChunk,
    signers: &Signers<'a>,
    ca: &[u8],
    previous: Option<(u64, &[u8])>,
) -> Result<(&'a Signer, u64, Vec<u8>), String> {
    let Some((signer, Some(der))) = signers.get(chunk.signer.as_str()) else {
        return Err(format!("its signer {} is not in the bundle", chunk.signer));
    };
    if fingerprint(der) != signer.fingerprint {
        return Err("the certificate does not match its fingerprint".to_owned());
    }
    chains_to(der, ca, chunk.received_at).map_err(|why| format!("agent {}'s certificate {why}", signer.agent_id))?;
    let key = AgentKey::from_certificate(der).map_err(|why| why.to_string())?;
    let decoded = (
        hex_decode(&chunk.prev_digest),
        STANDARD.decode(&chunk.data).ok(),
        hex_decode(&chunk.digest),
        STANDARD.decode(&chunk.signature).ok(),
    );
    let (Some(prev), Some(data), Some(digest), Some(signature)) = decoded else {
        return Err("a field is not valid hex/base64".to_owned());
    };
    let fields = ChunkFields {
        run_id: &bundle.run_id,
        job_id: &lease.job_id,
        fencing_token: lease.fencing_token,
        stream: &chunk.stream,
        seq: chunk.seq,
        prev_digest: &prev,
        data: &data,
    };
    let check = ChunkToCheck { fields, digest: &digest, signature: &signature };
    check_chunk(&check, previous, &key).map_err(|rejection| rejection.to_string())?;
    Ok((signer, data.len() as u64, digest))
}

/// Whether `certificate` is a client certificate issued by `ca` and valid at `at`.
fn chains_to(certificate: &[u8], ca: &[u8], at: i64) -> Result<(), String> {
    let ca = CertificateDer::from(ca);
    let anchor = webpki::anchor_from_trusted_cert(&ca).map_err(|e| format!("cannot use the CA: {e}"))?;
    let leaf = CertificateDer::from(certificate);
    let end_entity = webpki::EndEntityCert::try_from(&leaf).map_err(|e| format!("is not a certificate: {e}"))?;
    let algorithms = rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms.all;
    let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(u64::try_from(at).unwrap_or(0)));
    end_entity
        .verify_for_usage(algorithms, &[anchor], &[], time, webpki::KeyUsage::client_auth(), None, None)
        .map(|_| ())
        .map_err(|e| format!("does not chain to the CA at the time the chunk arrived ({e})"))
}
