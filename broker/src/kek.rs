//! The key-encryption key (KEK) that seals secrets at rest: token signing keys (`keys/`), the audit
//! log's checkpoint key (`audit/log_key.rs`), the agents' CA key (`agents/ca.rs`) and saved plans
//! (`runs/plans.rs`).
//!
//! Private keys are never stored in the clear: each is sealed with AES-256-GCM under the
//! operator's KEK. The additional authenticated data binds the ciphertext to a context the caller
//! names (for a signing key: its ID and algorithm), so a row copied onto another key, or an
//! algorithm swapped underneath it, fails to open instead of being used. A short KEK fingerprint travels with the ciphertext so "you configured the
//! wrong KEK" is told apart from "the stored bytes are corrupted".

use std::fmt;
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::digest;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use keyward_proto::encoding::hex;
use zeroize::{Zeroize, Zeroizing};

const KEK_LEN: usize = 32;
const FORMAT_V1: u8 = 1;
const FINGERPRINT_LEN: usize = 8;
const HEADER_LEN: usize = 1 + FINGERPRINT_LEN + NONCE_LEN;

/// Why a KEK could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KekError {
    /// The KEK file could not be read.
    #[error("cannot read key-encryption key file {path}: {source}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The KEK is not 32 bytes of base64.
    #[error(
        "key-encryption key from {origin} is invalid: expected 32 bytes, base64-encoded (generate one with `head -c32 /dev/urandom | base64`)"
    )]
    Malformed {
        /// Where it came from (a file, a variable, a config key).
        origin: String,
    },
    /// The KEK file is readable by other users.
    #[error("key-encryption key file {path} is readable by group or others (mode {mode:o}); run `chmod 600 {path}`")]
    TooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

/// Why sealed key material could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum UnsealError {
    /// Too short, or an unknown format version.
    #[error("sealed key material is truncated or in an unknown format")]
    Malformed,
    /// Sealed under a different KEK than the one configured.
    #[error("it was sealed under key-encryption key {stored}, but the configured key-encryption key is {configured}")]
    WrongKek {
        /// Fingerprint stored with the ciphertext.
        stored: String,
        /// Fingerprint of the configured KEK.
        configured: String,
    },
    /// Authentication failed: corrupted or modified.
    #[error("authentication failed: the stored key material is corrupted or was modified")]
    Tampered,
}

/// A 256-bit key-encryption key. Never printed; wiped on drop.
pub struct Kek {
    key: LessSafeKey,
    bytes: Zeroizing<[u8; KEK_LEN]>,
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Kek({})", self.fingerprint())
    }
}

impl Clone for Kek {
    fn clone(&self) -> Self {
        Self::from_bytes(*self.bytes)
    }
}

impl Kek {
    fn from_bytes(mut bytes: [u8; KEK_LEN]) -> Self {
        let key = match UnboundKey::new(&AES_256_GCM, &bytes) {
            Ok(key) => LessSafeKey::new(key),
            // AES-256-GCM accepts every 32-byte key; this arm is unreachable by construction.
            Err(_) => unreachable_kek(),
        };
        let kek = Self { key, bytes: Zeroizing::new(bytes) };
        bytes.zeroize();
        kek
    }

    /// Generates a fresh random KEK (used by `keyward dev` only).
    pub fn generate() -> Self {
        let mut bytes = [0u8; KEK_LEN];
        if SystemRandom::new().fill(&mut bytes).is_err() {
            unreachable_kek();
        }
        Self::from_bytes(bytes)
    }

    /// A key for one `purpose` (e.g. `"keyward state token v1"`), derived from the KEK:
    /// HMAC-SHA256 keyed with the KEK over the purpose. Keys for different purposes are
    /// independent, and none reveals the KEK.
    pub fn derive(&self, purpose: &str) -> Zeroizing<[u8; KEK_LEN]> {
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &*self.bytes);
        let tag = aws_lc_rs::hmac::sign(&key, purpose.as_bytes());
        let mut derived = Zeroizing::new([0u8; KEK_LEN]);
        derived.copy_from_slice(tag.as_ref());
        derived
    }

    /// The KEK as base64, for writing the dev KEK file.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(*self.bytes))
    }

    /// Parses base64 text; `origin` names the source in errors.
    pub fn from_base64(text: &str, origin: &str) -> Result<Self, KekError> {
        let malformed = || KekError::Malformed { origin: origin.to_owned() };
        let decoded = Zeroizing::new(STANDARD.decode(text.trim()).map_err(|_| malformed())?);
        let bytes: [u8; KEK_LEN] = decoded.as_slice().try_into().map_err(|_| malformed())?;
        Ok(Self::from_bytes(bytes))
    }

    /// Reads a KEK file: base64 text, or exactly 32 raw bytes. Refuses files others can read.
    pub fn from_file(path: &Path) -> Result<Self, KekError> {
        let unreadable = |source| KekError::Unreadable { path: path.to_owned(), source };
        let metadata = std::fs::metadata(path).map_err(unreadable)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = metadata.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(KekError::TooOpen { path: path.to_owned(), mode });
            }
        }
        let contents = Zeroizing::new(std::fs::read(path).map_err(unreadable)?);
        if let Ok(raw) = <[u8; KEK_LEN]>::try_from(contents.as_slice())
            && std::str::from_utf8(&raw).is_err()
        {
            return Ok(Self::from_bytes(raw));
        }
        let text =
            std::str::from_utf8(&contents).map_err(|_| KekError::Malformed { origin: path.display().to_string() })?;
        Self::from_base64(text, &path.display().to_string())
    }

    /// Short, non-secret identifier of this KEK (truncated SHA-256 over a domain-separated input).
    pub fn fingerprint(&self) -> String {
        hex(&self.fingerprint_bytes())
    }

    fn fingerprint_bytes(&self) -> [u8; FINGERPRINT_LEN] {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(b"keyward kek fingerprint v1\0");
        ctx.update(&*self.bytes);
        let digest = ctx.finish();
        let mut out = [0u8; FINGERPRINT_LEN];
        out.copy_from_slice(digest.as_ref().get(..FINGERPRINT_LEN).unwrap_or(&[0; FINGERPRINT_LEN]));
        out
    }

    /// Seals `plaintext`, binding it to `context` (the key ID and algorithm).
    pub fn seal(&self, context: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        if SystemRandom::new().fill(&mut nonce).is_err() {
            unreachable_kek();
        }
        let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + AES_256_GCM.tag_len());
        out.push(FORMAT_V1);
        out.extend_from_slice(&self.fingerprint_bytes());
        out.extend_from_slice(&nonce);
        let mut body = plaintext.to_vec();
        let sealed =
            self.key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(context), &mut body);
        if sealed.is_err() {
            unreachable_kek();
        }
        out.extend_from_slice(&body);
        body.zeroize();
        out
    }

    /// Opens what [`Kek::seal`] produced with the same `context`.
    pub fn open(&self, context: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, UnsealError> {
        let (header, body) = sealed.split_at_checked(HEADER_LEN).ok_or(UnsealError::Malformed)?;
        let (version, rest) = header.split_first().ok_or(UnsealError::Malformed)?;
        if *version != FORMAT_V1 || body.len() < AES_256_GCM.tag_len() {
            return Err(UnsealError::Malformed);
        }
        let (fingerprint, nonce) = rest.split_at(FINGERPRINT_LEN);
        if fingerprint != self.fingerprint_bytes() {
            return Err(UnsealError::WrongKek { stored: hex(fingerprint), configured: self.fingerprint() });
        }
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| UnsealError::Malformed)?;
        let mut buffer = Zeroizing::new(body.to_vec());
        let plaintext_len =
            self.key.open_in_place(nonce, Aad::from(context), &mut buffer).map_err(|_| UnsealError::Tampered)?.len();
        buffer.truncate(plaintext_len);
        Ok(buffer)
    }
}

/// aws-lc-rs only fails these calls on programming errors (wrong key length) or a broken RNG, in
/// which case continuing would be worse than stopping.
#[cold]
#[allow(clippy::panic)]
fn unreachable_kek() -> ! {
    panic!("aws-lc-rs refused an AES-256-GCM operation or the system RNG failed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_binding() -> Result<(), UnsealError> {
        let kek = Kek::generate();
        let sealed = kek.seal(b"kid-1:ES256", b"secret key bytes");
        assert_eq!(kek.open(b"kid-1:ES256", &sealed)?.as_slice(), b"secret key bytes");
        assert!(!sealed.windows(6).any(|w| w == b"secret"), "plaintext must not appear in the sealed form");
        assert!(matches!(kek.open(b"kid-2:ES256", &sealed), Err(UnsealError::Tampered)));
        Ok(())
    }

    #[test]
    fn wrong_kek_and_corruption_are_told_apart() {
        let kek = Kek::generate();
        let other = Kek::generate();
        let mut sealed = kek.seal(b"ctx", b"data");
        assert!(matches!(other.open(b"ctx", &sealed), Err(UnsealError::WrongKek { .. })));
        if let Some(last) = sealed.last_mut() {
            *last ^= 1;
        }
        assert!(matches!(kek.open(b"ctx", &sealed), Err(UnsealError::Tampered)));
        assert!(matches!(kek.open(b"ctx", &sealed[..5]), Err(UnsealError::Malformed)));
    }

    #[test]
    fn base64_parsing_rejects_wrong_lengths() {
        assert!(Kek::from_base64(&STANDARD.encode([7u8; 32]), "t").is_ok());
        assert!(matches!(Kek::from_base64(&STANDARD.encode([7u8; 31]), "t"), Err(KekError::Malformed { .. })));
        assert!(matches!(Kek::from_base64("not base64!", "t"), Err(KekError::Malformed { .. })));
    }

    #[test]
    fn debug_never_prints_key_bytes() {
        let kek = Kek::from_base64(&STANDARD.encode([0xAB; 32]), "t").map_err(|e| e.to_string());
        let printed = format!("{kek:?}");
        assert!(!printed.contains("171") && !printed.to_lowercase().contains("abab"), "{printed}");
    }
}
