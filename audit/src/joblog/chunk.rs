//! The checks every log chunk passes before the broker stores it, and again when a bundle is
//! verified offline: the digest recomputes, the agent's signature over it holds, and it is exactly
//! the next link of its lease's chain.
//!
//! Each failure has its own [`Rejection`], so the agent, the audit entry and the operator see
//! *what* was wrong: an edited chunk (digest), a forged one (signature), a replay (a position
//! already taken), a gap or reordering (a position skipped), a spliced chain (wrong previous
//! digest), another agent's job (binding).

use aws_lc_rs::digest;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};
use keyward_proto::encoding::hex;
use keyward_proto::logs::{ChunkFields, GENESIS, MAX_CHUNK_DATA, STREAMS, chunk_digest};

/// Why a chunk was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// A field is out of bounds (stream name, sizes).
    #[error("malformed chunk: {0}")]
    Malformed(String),
    /// The chunk names a job this agent does not hold under that lease.
    #[error("the chunk names job {job_id} lease {fencing_token}, which this agent does not hold")]
    ForeignJob {
        /// The job named.
        job_id: String,
        /// The lease named.
        fencing_token: u64,
    },
    /// The lease's log was already sealed (the job reported its end), or the job has moved on:
    /// a late chunk, not an attack; not recorded.
    #[error("the log of job {0} is sealed")]
    Sealed(String),
    /// The digest does not cover the chunk's fields: it was edited after it was hashed.
    #[error("chunk {seq} does not match its digest (edited)")]
    DigestMismatch {
        /// Position.
        seq: u64,
    },
    /// The signature is not the agent's over the digest.
    #[error("chunk {seq} is not signed by the agent's key")]
    BadSignature {
        /// Position.
        seq: u64,
    },
    /// A position the chain already has.
    #[error("chunk {seq} was already received (replayed); the chain is at {next}")]
    Replayed {
        /// Position claimed.
        seq: u64,
        /// The next position expected.
        next: u64,
    },
    /// A position after the next one: a chunk is missing or out of order.
    #[error("chunk {seq} arrived where chunk {next} was expected (missing or reordered)")]
    Gap {
        /// Position claimed.
        seq: u64,
        /// The next position expected.
        next: u64,
    },
    /// The previous digest is not the chain's head.
    #[error("chunk {seq} does not link to the chain's previous chunk")]
    ChainBroken {
        /// Position.
        seq: u64,
    },
}

impl Rejection {
    /// Whether the refusal goes into the audit log: every one but a late arrival.
    pub fn recorded(&self) -> bool {
        !matches!(self, Self::Sealed(_))
    }

    /// A short stable name for the audit entry and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::ForeignJob { .. } => "foreign_job",
            Self::Sealed(_) => "sealed",
            Self::DigestMismatch { .. } => "digest_mismatch",
            Self::BadSignature { .. } => "bad_signature",
            Self::Replayed { .. } => "replayed",
            Self::Gap { .. } => "gap",
            Self::ChainBroken { .. } => "chain_broken",
        }
    }
}

/// The public key of an agent certificate, ready to check chunk signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentKey {
    /// SHA-256 of the certificate DER, hex: how chunks name their signer.
    pub fingerprint: String,
    point: Vec<u8>,
}

impl AgentKey {
    /// The key of `certificate` (DER), which must be ECDSA P-256 (what agents generate).
    pub fn from_certificate(certificate: &[u8]) -> Result<Self, String> {
        let (_, parsed) =
            x509_parser::parse_x509_certificate(certificate).map_err(|e| format!("not a certificate: {e}"))?;
        let spki = &parsed.tbs_certificate.subject_pki;
        let p256 = x509_parser::oid_registry::OID_EC_P256;
        let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
        if curve.as_ref() != Some(&p256) {
            return Err("the certificate's key is not ECDSA P-256".to_owned());
        }
        Ok(Self { fingerprint: fingerprint(certificate), point: spki.subject_public_key.data.to_vec() })
    }

    /// Whether `signature` is this key's ECDSA P-256/SHA-256 signature over `message`.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &self.point).verify(message, signature).is_ok()
    }
}

/// SHA-256 of `der`, hex.
pub fn fingerprint(der: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, der).as_ref())
}

/// A chunk's fields as the checks see them (from the wire or from a bundle). The broker builds
/// one from a gRPC `SignedLogChunk`; a bundle's chunks are decoded into one.
#[derive(Debug, Clone, Copy)]
pub struct ChunkToCheck<'a> {
    /// The digested fields.
    pub fields: ChunkFields<'a>,
    /// The digest the chunk claims.
    pub digest: &'a [u8],
    /// The signature.
    pub signature: &'a [u8],
}

/// The end of a chain so far: the last position and digest, `None` before the first chunk.
pub type Head<'a> = Option<(u64, &'a [u8])>;

/// Checks one chunk against the chain's `head` and the signer's `key`.
pub fn check_chunk(chunk: &ChunkToCheck<'_>, head: Head<'_>, key: &AgentKey) -> Result<(), Rejection> {
    let fields = &chunk.fields;
    let seq = fields.seq;
    if !STREAMS.contains(&fields.stream) {
        return Err(Rejection::Malformed(format!("unknown stream `{}`", fields.stream.escape_debug())));
    }
    if fields.data.len() > MAX_CHUNK_DATA {
        return Err(Rejection::Malformed(format!("{} bytes of data (at most {MAX_CHUNK_DATA})", fields.data.len())));
    }
    if fields.prev_digest.len() != 32 || chunk.digest.len() != 32 {
        return Err(Rejection::Malformed("digests are 32 bytes".to_owned()));
    }
    if chunk_digest(fields).as_slice() != chunk.digest {
        return Err(Rejection::DigestMismatch { seq });
    }
    if !key.verifies(chunk.digest, chunk.signature) {
        return Err(Rejection::BadSignature { seq });
    }
    let (next, expected_prev) = match head {
        None => (0, GENESIS.as_slice()),
        Some((last, digest)) => (last + 1, digest),
    };
    if seq < next {
        return Err(Rejection::Replayed { seq, next });
    }
    if seq > next {
        return Err(Rejection::Gap { seq, next });
    }
    if fields.prev_digest != expected_prev {
        return Err(Rejection::ChainBroken { seq });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _};

    use super::*;

    struct Signed {
        data: Vec<u8>,
        prev: [u8; 32],
        seq: u64,
        digest: [u8; 32],
        signature: Vec<u8>,
    }

    fn key() -> (EcdsaKeyPair, AgentKey) {
        let random = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &random).expect("key");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).expect("pair");
        let public = AgentKey { fingerprint: "f".into(), point: pair.public_key().as_ref().to_vec() };
        (pair, public)
    }

    fn fields<'a>(s: &'a Signed) -> ChunkFields<'a> {
        ChunkFields {
            run_id: "r",
            job_id: "j",
            fencing_token: 1,
            stream: "stdout",
            seq: s.seq,
            prev_digest: &s.prev,
            data: &s.data,
        }
    }

    fn sign(pair: &EcdsaKeyPair, seq: u64, prev: [u8; 32], data: &[u8]) -> Signed {
        let mut signed = Signed { data: data.to_vec(), prev, seq, digest: [0; 32], signature: Vec::new() };
        signed.digest = chunk_digest(&fields(&signed));
        signed.signature = pair.sign(&SystemRandom::new(), &signed.digest).expect("sign").as_ref().to_vec();
        signed
    }

    fn check(s: &Signed, head: Head<'_>, key: &AgentKey) -> Result<(), Rejection> {
        check_chunk(&ChunkToCheck { fields: fields(s), digest: &s.digest, signature: &s.signature }, head, key)
    }

    #[test]
    fn each_kind_of_bad_chunk_is_named() {
        let (pair, public) = key();
        let first = sign(&pair, 0, GENESIS, b"one");
        let second = sign(&pair, 1, first.digest, b"two");
        let third = sign(&pair, 2, second.digest, b"three");
        assert_eq!(check(&first, None, &public), Ok(()));
        assert_eq!(check(&second, Some((0, &first.digest)), &public), Ok(()));
        // Replayed, reordered/missing, spliced.
        assert_eq!(check(&first, Some((0, &first.digest)), &public), Err(Rejection::Replayed { seq: 0, next: 1 }));
        assert_eq!(check(&third, Some((0, &first.digest)), &public), Err(Rejection::Gap { seq: 2, next: 1 }));
        let spliced = sign(&pair, 1, [7; 32], b"two");
        assert_eq!(check(&spliced, Some((0, &first.digest)), &public), Err(Rejection::ChainBroken { seq: 1 }));
        // Edited data; re-hashed but not re-signed; signed by another key.
        let mut edited = sign(&pair, 0, GENESIS, b"one");
        edited.data = b"0ne".to_vec();
        assert_eq!(check(&edited, None, &public), Err(Rejection::DigestMismatch { seq: 0 }));
        edited.digest = chunk_digest(&fields(&edited));
        assert_eq!(check(&edited, None, &public), Err(Rejection::BadSignature { seq: 0 }));
        let (other, _) = key();
        assert_eq!(check(&sign(&other, 0, GENESIS, b"one"), None, &public), Err(Rejection::BadSignature { seq: 0 }));
        // Bounds.
        let huge = sign(&pair, 0, GENESIS, &vec![0; MAX_CHUNK_DATA + 1]);
        assert!(matches!(check(&huge, None, &public), Err(Rejection::Malformed(_))));
        assert!(Rejection::Gap { seq: 2, next: 1 }.recorded() && !Rejection::Sealed("j".into()).recorded());
    }
}
