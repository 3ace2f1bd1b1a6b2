//! The audit log's checkpoint key at rest: an Ed25519 key generated on first start, sealed under
//! the KEK in the store, opened at every start.
//!
//! The signed-note format and the signing itself are `keyward_audit::checkpoint`'s (shared with
//! the offline verifier); this module only keeps the private half, which never leaves the broker.

use std::fmt;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::Ed25519KeyPair;
use keyward_audit::checkpoint::{CheckpointSigner, VerifierKey};
use keyward_audit::merkle::Hash;

use crate::kek::Kek;
use crate::store::{Store, StoreError};

/// Why the checkpoint key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum LogKeyError {
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The sealed key did not open (wrong KEK, tampering), or the key or its name is unusable.
    #[error("the audit log key `{name}` cannot be opened: {reason}")]
    Key {
        /// Key name.
        name: String,
        /// Why.
        reason: String,
    },
}

/// The key that signs checkpoints.
pub struct LogKey(CheckpointSigner);

impl fmt::Debug for LogKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verifier = self.verifier();
        f.debug_struct("LogKey").field("name", &verifier.name()).field("verifier", &verifier.to_string()).finish()
    }
}

impl LogKey {
    /// Loads the key named `name`, creating it on first use. Concurrent first starts of several
    /// replicas agree on one key (the loser of the insert reloads).
    pub async fn load_or_create(store: &Store, kek: &Kek, name: &str, now: i64) -> Result<Self, LogKeyError> {
        if let Some((public, sealed)) = store.audit_log_key(name).await? {
            return Self::open(kek, name, &public, &sealed);
        }
        let earlier = store.audit_log_key_names().await?;
        if !earlier.is_empty() {
            // The name follows `server.external_url`: a restored or moved broker that changed it
            // signs from now on under a name and key no auditor has pinned.
            tracing::warn!(
                key = name,
                earlier = %earlier.join(", "),
                "this database's audit log was signed under another name; a new checkpoint key is made for \
                 this one. If the broker was restored or moved, set server.external_url back to what it was"
            );
        }
        let failed = |reason: String| LogKeyError::Key { name: name.to_owned(), reason };
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| failed("key generation failed".to_owned()))?;
        // Parsed (and the name checked) before anything is stored: a key that cannot sign is
        // never written.
        let signer = CheckpointSigner::from_pkcs8(name, pkcs8.as_ref()).map_err(|e| failed(e.to_string()))?;
        let sealed = kek.seal(&seal_context(name), pkcs8.as_ref());
        match store.insert_audit_log_key(name, signer.public_key(), &sealed, now).await {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => {
                if let Some((public, sealed)) = store.audit_log_key(name).await? {
                    return Self::open(kek, name, &public, &sealed);
                }
            }
            Err(other) => return Err(other.into()),
        }
        tracing::info!(key = name, "generated the audit log key");
        Ok(Self(signer))
    }

    fn open(kek: &Kek, name: &str, public: &[u8], sealed: &[u8]) -> Result<Self, LogKeyError> {
        let failed = |reason: String| LogKeyError::Key { name: name.to_owned(), reason };
        let pkcs8 = kek.open(&seal_context(name), sealed).map_err(|e| failed(e.to_string()))?;
        let signer = CheckpointSigner::from_pkcs8(name, &pkcs8).map_err(|e| failed(e.to_string()))?;
        if signer.public_key().as_slice() != public {
            return Err(failed("the stored public key does not match the private key".to_owned()));
        }
        Ok(Self(signer))
    }

    /// The public half, as a signed-note verifier key.
    pub fn verifier(&self) -> VerifierKey {
        self.0.verifier()
    }

    /// Signs the checkpoint of a tree of `size` entries with head `root`.
    pub fn sign(&self, size: u64, root: &Hash) -> String {
        self.0.sign(size, root)
    }
}

/// The AAD the key is sealed under; changing it would make every stored key unreadable.
fn seal_context(name: &str) -> Vec<u8> {
    format!("keyward audit log key v1\0{name}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys sealed by earlier builds open only under this exact context.
    #[test]
    fn the_seal_context_is_the_one_stored_keys_were_sealed_under() {
        assert_eq!(seal_context("kw/audit"), b"keyward audit log key v1\0kw/audit");
    }
}
