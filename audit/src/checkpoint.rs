//! Signed checkpoints in the C2SP `tlog-checkpoint` / `signed-note` formats, so the log's heads can
//! be checked with standard transparency-log tooling, not only with Keyward.
//!
//! ```text
//! keyward.example.com/audit          ← origin
//! 1204                               ← tree size
//! qXU3Lk…base64 root hash…=          ← tree head
//!
//! — keyward.example.com/audit Ab12Cd…base64(key ID ‖ Ed25519 signature)…
//! ```
//!
//! The key is Ed25519 (signed-note algorithm 0x01), separate from the JWT signing keys: it never
//! rotates with them, and a checkpoint's verifier key (`<name>+<key ID hex>+<base64(0x01 ‖ key)>`)
//! stays valid for the life of the log. This module is the format: signing with a parsed key
//! ([`CheckpointSigner`]) and verifying with the public one ([`VerifierKey`]). Where the private
//! half is kept (sealed under the KEK, in the broker's store) is the broker's business.

use std::fmt;

use aws_lc_rs::digest;
use aws_lc_rs::signature::{self, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use keyward_proto::encoding::hex;

use crate::merkle::Hash;

/// Signed-note signature type of Ed25519.
const ED25519: u8 = 0x01;

/// Why a checkpoint or verifier key could not be read or trusted.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The note or verifier key text is not in the expected format.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// `checkpoint` or `verifier key`.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// No signature by the expected key verifies.
    #[error("the checkpoint is not signed by {0}")]
    BadSignature(String),
}

/// Why a checkpoint signing key cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignerError {
    /// The name cannot appear in a signed note.
    #[error("a signed-note key name must be non-empty, without spaces or `+`")]
    Name,
    /// The PKCS#8 document is not an Ed25519 key.
    #[error("{0}")]
    Key(String),
    /// The public key has the wrong length.
    #[error("the public key is not 32 bytes")]
    PublicKey,
}

/// The key that signs checkpoints: a name and an Ed25519 key pair. Its `Debug` shows the name
/// and the public verifier key only.
pub struct CheckpointSigner {
    name: String,
    pair: Ed25519KeyPair,
    public: [u8; 32],
}

impl fmt::Debug for CheckpointSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckpointSigner")
            .field("name", &self.name)
            .field("verifier", &self.verifier().to_string())
            .finish()
    }
}

impl CheckpointSigner {
    /// The key `name` (the log's origin, without spaces or `+`) from an Ed25519 PKCS#8 document.
    pub fn from_pkcs8(name: &str, pkcs8: &[u8]) -> Result<Self, SignerError> {
        if name.is_empty() || name.contains(['+', ' ', '\n']) {
            return Err(SignerError::Name);
        }
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|e| SignerError::Key(e.to_string()))?;
        let public: [u8; 32] = pair.public_key().as_ref().try_into().map_err(|_| SignerError::PublicKey)?;
        Ok(Self { name: name.to_owned(), pair, public })
    }

    /// The raw Ed25519 public key.
    pub fn public_key(&self) -> &[u8; 32] {
        &self.public
    }

    /// The public half, as a signed-note verifier key.
    pub fn verifier(&self) -> VerifierKey {
        VerifierKey { name: self.name.clone(), public: self.public }
    }

    /// Signs the checkpoint of a tree of `size` entries with head `root`.
    pub fn sign(&self, size: u64, root: &Hash) -> String {
        let body = checkpoint_body(&self.name, size, root);
        let signature = self.pair.sign(body.as_bytes());
        let mut blob = key_id(&self.name, &self.public).to_vec();
        blob.extend_from_slice(signature.as_ref());
        format!("{body}\n\u{2014} {} {}\n", self.name, B64.encode(blob))
    }
}

/// `SHA-256(name ‖ "\n" ‖ 0x01 ‖ public key)[..4]`, as signed-note defines.
fn key_id(name: &str, public: &[u8; 32]) -> [u8; 4] {
    let mut context = digest::Context::new(&digest::SHA256);
    context.update(name.as_bytes());
    context.update(b"\n");
    context.update(&[ED25519]);
    context.update(public);
    let digest = context.finish();
    let mut id = [0; 4];
    id.iter_mut().zip(digest.as_ref()).for_each(|(out, byte)| *out = *byte);
    id
}

fn checkpoint_body(origin: &str, size: u64, root: &Hash) -> String {
    format!("{origin}\n{size}\n{}\n", B64.encode(root))
}

/// A public checkpoint key: `<name>+<key ID hex>+<base64(0x01 ‖ public key)>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifierKey {
    name: String,
    public: [u8; 32],
}

impl fmt::Display for VerifierKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut encoded = vec![ED25519];
        encoded.extend_from_slice(&self.public);
        write!(f, "{}+{}+{}", self.name, hex(&key_id(&self.name, &self.public)), B64.encode(encoded))
    }
}

impl std::str::FromStr for VerifierKey {
    type Err = CheckpointError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let malformed = |reason: &str| CheckpointError::Malformed { what: "verifier key", reason: reason.to_owned() };
        // Names never contain `+`; base64 key data may, so split from the left.
        let mut parts = text.trim().splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(malformed("expected <name>+<key id>+<key>"));
        };
        let key = B64.decode(key).map_err(|_| malformed("the key is not base64"))?;
        let (Some((&ED25519, public)), true) = (key.split_first(), key.len() == 33) else {
            return Err(malformed("only Ed25519 keys (type 0x01, 32 bytes) are supported"));
        };
        let public: [u8; 32] = public.try_into().map_err(|_| malformed("the key is not 32 bytes"))?;
        if hex(&key_id(name, &public)) != id.to_ascii_lowercase() {
            return Err(malformed("the key ID does not match the name and key"));
        }
        Ok(Self { name: name.to_owned(), public })
    }
}

/// A checkpoint whose signature verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's origin line.
    pub origin: String,
    /// Tree size.
    pub size: u64,
    /// Tree head.
    pub root: Hash,
}

impl VerifierKey {
    /// The key's name, which is the log's origin line.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Parses `note` and checks that this key signed it.
    pub fn verify(&self, note: &str) -> Result<Checkpoint, CheckpointError> {
        let malformed = |reason: &str| CheckpointError::Malformed { what: "checkpoint", reason: reason.to_owned() };
        let (body, signatures) = note.split_once("\n\n").ok_or_else(|| malformed("no blank line before signatures"))?;
        let body = format!("{body}\n");
        let mut lines = body.lines();
        let (Some(origin), Some(size), Some(root)) = (lines.next(), lines.next(), lines.next()) else {
            return Err(malformed("expected origin, size and root hash lines"));
        };
        let size: u64 = size.parse().map_err(|_| malformed("the size is not a number"))?;
        let root: Hash = B64
            .decode(root)
            .ok()
            .and_then(|r| r.try_into().ok())
            .ok_or_else(|| malformed("the root is not a base64 SHA-256 hash"))?;
        let wanted_id = key_id(&self.name, &self.public);
        let verifier = UnparsedPublicKey::new(&signature::ED25519, self.public);
        let signed_by_us = signatures.lines().filter_map(|line| line.strip_prefix("\u{2014} ")).any(|line| {
            let Some((name, blob)) = line.split_once(' ') else { return false };
            let Ok(blob) = B64.decode(blob) else { return false };
            let Some((id, signature)) = blob.split_first_chunk::<4>() else { return false };
            name == self.name
                && signature.len() == 64
                && *id == wanted_id
                && verifier.verify(body.as_bytes(), signature).is_ok()
        });
        if !signed_by_us {
            return Err(CheckpointError::BadSignature(self.to_string()));
        }
        Ok(Checkpoint { origin: origin.to_owned(), size, root })
    }
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::rand::SystemRandom;

    use super::*;

    pub(super) fn key(name: &str) -> CheckpointSigner {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        CheckpointSigner::from_pkcs8(name, pkcs8.as_ref()).unwrap()
    }

    #[test]
    fn signers_refuse_names_a_note_cannot_carry_and_keys_that_are_not_ed25519() {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        for name in ["", "kw audit", "kw+audit", "kw\naudit"] {
            assert_eq!(CheckpointSigner::from_pkcs8(name, pkcs8.as_ref()).unwrap_err(), SignerError::Name, "{name:?}");
        }
        assert!(matches!(CheckpointSigner::from_pkcs8("kw/audit", b"not a key"), Err(SignerError::Key(_))));
        let signer = CheckpointSigner::from_pkcs8("kw/audit", pkcs8.as_ref()).unwrap();
        assert_eq!(signer.verifier().to_string().parse::<VerifierKey>().unwrap(), signer.verifier());
    }

    #[test]
    fn checkpoints_verify_with_their_key_only() {
        let log = key("keyward.example.com/audit");
        let root = [7u8; 32];
        let note = log.sign(42, &root);
        assert!(note.starts_with("keyward.example.com/audit\n42\n"), "{note}");
        let verifier: VerifierKey = log.verifier().to_string().parse().unwrap();
        let checkpoint = verifier.verify(&note).unwrap();
        assert_eq!((checkpoint.size, checkpoint.root), (42, root));

        let other = key("keyward.example.com/audit");
        assert!(matches!(other.verifier().verify(&note), Err(CheckpointError::BadSignature(_))), "another key");
        let forged = note.replacen("\n42\n", "\n43\n", 1);
        assert!(matches!(verifier.verify(&forged), Err(CheckpointError::BadSignature(_))), "an edited size");
        assert!(verifier.verify("nonsense").is_err());
    }

    #[test]
    fn verifier_keys_round_trip_and_reject_mismatched_ids() {
        // Enough keys that some base64 encodings contain `+`, which must not confuse parsing.
        for _ in 0..32 {
            let log = key("kw/audit");
            assert_eq!(log.verifier().to_string().parse::<VerifierKey>().unwrap(), log.verifier());
        }
        let log = key("kw/audit");
        let text = log.verifier().to_string();
        let mut parts: Vec<&str> = text.split('+').collect();
        parts[1] = "00000000";
        assert!(parts.join("+").parse::<VerifierKey>().is_err());
    }
}

#[cfg(test)]
mod hostile_input_tests {
    use super::*;

    /// Truncated, flipped and random notes and keys are refused, never a panic.
    #[test]
    fn hostile_notes_and_keys_are_refused_without_panicking() {
        let log = super::tests::key("kw/audit");
        let note = log.sign(7, &[3u8; 32]);
        let key = log.verifier().to_string();
        let verifier = log.verifier();
        for cut in 0..note.len() {
            if let Some(prefix) = note.get(..cut) {
                assert!(verifier.verify(prefix).is_err() || prefix == note.trim_end(), "{prefix:?}");
            }
        }
        for cut in 0..key.len() {
            if let Some(prefix) = key.get(..cut) {
                let _ = prefix.parse::<VerifierKey>();
            }
        }
        let mut flipped = note.clone().into_bytes();
        for i in 0..flipped.len() {
            flipped[i] ^= 0x01;
            if let Ok(text) = std::str::from_utf8(&flipped) {
                assert!(verifier.verify(text).is_err(), "a one-bit change at byte {i} still verified");
            }
            flipped[i] ^= 0x01;
        }
    }
}
