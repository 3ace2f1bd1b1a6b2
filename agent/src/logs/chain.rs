//! The hash chain of one job's log, and the signature each chunk gets when it is sent.
//!
//! Chunks are chained when they are cut (so their order is fixed by the job, not by the network)
//! and signed when they are sent, with the key of the certificate the sending connection
//! presented: a certificate renewed mid-job means a new key, and the broker checks each chunk
//! against the certificate of the stream it arrived on. A chunk sent again after a reconnection
//! is signed again; its digest, and so the chain, does not change.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
use keyward_proto::agent_v1::SignedLogChunk;
use keyward_proto::logs::{ChunkFields, GENESIS, chunk_digest};

use crate::datadir::Identity;
use keyward_proto::encoding::pem_der;

/// A chained chunk, not yet signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The run.
    pub run_id: String,
    /// The job.
    pub job_id: String,
    /// The lease the chain belongs to.
    pub fencing_token: u64,
    /// `stdout`, `stderr` or `keyward`.
    pub stream: &'static str,
    /// Position in the chain.
    pub seq: u64,
    /// The previous chunk's digest.
    pub prev_digest: [u8; 32],
    /// Masked output.
    pub data: Vec<u8>,
    /// This chunk's digest.
    pub digest: [u8; 32],
}

/// The chain of one lease of a job: hands out sequence numbers and links digests.
#[derive(Debug)]
pub struct Chain {
    run_id: String,
    job_id: String,
    fencing_token: u64,
    next_seq: u64,
    head: [u8; 32],
}

impl Chain {
    /// An empty chain for the lease `fencing_token` of `job_id`.
    pub fn new(run_id: &str, job_id: &str, fencing_token: u64) -> Self {
        Self { run_id: run_id.to_owned(), job_id: job_id.to_owned(), fencing_token, next_seq: 0, head: GENESIS }
    }

    /// Appends `data` on `stream` and returns the chained chunk.
    pub fn append(&mut self, stream: &'static str, data: Vec<u8>) -> Chunk {
        let digest = chunk_digest(&ChunkFields {
            run_id: &self.run_id,
            job_id: &self.job_id,
            fencing_token: self.fencing_token,
            stream,
            seq: self.next_seq,
            prev_digest: &self.head,
            data: &data,
        });
        let chunk = Chunk {
            run_id: self.run_id.clone(),
            job_id: self.job_id.clone(),
            fencing_token: self.fencing_token,
            stream,
            seq: self.next_seq,
            prev_digest: self.head,
            data,
            digest,
        };
        self.head = digest;
        self.next_seq += 1;
        chunk
    }

    /// The last chunk's digest and how many chunks there are (`None` when there are none).
    pub fn head(&self) -> Option<([u8; 32], u64)> {
        (self.next_seq > 0).then_some((self.head, self.next_seq))
    }
}

/// Why the agent's key cannot sign.
#[derive(Debug, thiserror::Error)]
#[error("the agent's private key cannot sign log chunks: {0}")]
pub struct SignerError(String);

/// Signs chunks with the key of one connection's certificate.
pub struct Signer {
    key: EcdsaKeyPair,
    random: SystemRandom,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(ECDSA P-256)")
    }
}

impl Signer {
    /// The signer for `identity`'s key (PKCS#8 PEM, ECDSA P-256).
    pub fn new(identity: &Identity) -> Result<Self, SignerError> {
        let der = zeroize::Zeroizing::new(
            pem_der(&identity.key_pem).ok_or_else(|| SignerError("the key file is not PEM".to_owned()))?,
        );
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &der)
            .map_err(|e| SignerError(format!("not an ECDSA P-256 PKCS#8 key ({e})")))?;
        Ok(Self { key, random: SystemRandom::new() })
    }

    /// `chunk`, signed, as it goes on the wire.
    pub fn sign(&self, chunk: &Chunk) -> Result<SignedLogChunk, SignerError> {
        let signature =
            self.key.sign(&self.random, &chunk.digest).map_err(|_| SignerError("signing failed".to_owned()))?;
        Ok(SignedLogChunk {
            run_id: chunk.run_id.clone(),
            job_id: chunk.job_id.clone(),
            stream: chunk.stream.to_owned(),
            seq: chunk.seq,
            prev_digest: chunk.prev_digest.to_vec(),
            data: chunk.data.clone(),
            digest: chunk.digest.to_vec(),
            signature: signature.as_ref().to_vec(),
            fencing_token: chunk.fencing_token,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_linked_in_order() {
        let mut chain = Chain::new("r", "j", 3);
        assert_eq!(chain.head(), None);
        let first = chain.append("stdout", b"a".to_vec());
        let second = chain.append("stderr", b"b".to_vec());
        assert_eq!((first.seq, second.seq), (0, 1));
        assert_eq!(first.prev_digest, GENESIS);
        assert_eq!(second.prev_digest, first.digest);
        assert_eq!(chain.head(), Some((second.digest, 2)));
        let recomputed = chunk_digest(&ChunkFields {
            run_id: "r",
            job_id: "j",
            fencing_token: 3,
            stream: "stderr",
            seq: 1,
            prev_digest: &first.digest,
            data: b"b",
        });
        assert_eq!(second.digest, recomputed);
    }
}
