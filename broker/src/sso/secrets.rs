//! The random values of a sign-in and what is derived from them: session secrets (stored only
//! as SHA-256), the CSRF token (derived from the session secret, so it needs no storage and
//! cannot be paired with another session), the PKCE verifier (derived from `state` with a key
//! derived from the KEK, so it is never stored), and the constant-time compare they are checked
//! with.

use std::fmt;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::{constant_time, digest, hmac};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use zeroize::Zeroizing;

/// Prefix of a session secret (cookie value or CLI bearer token), so scanners recognise one.
pub const SESSION_PREFIX: &str = "kws_";
/// Longest session secret accepted; anything longer is not one of ours.
const MAX_SECRET_LEN: usize = 128;

/// A session secret or a one-time CLI grant: shown once, stored hashed, never printed.
pub struct SessionSecret(Zeroizing<String>);

impl fmt::Debug for SessionSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionSecret(…)")
    }
}

impl SessionSecret {
    /// A new random secret.
    pub fn generate() -> Self {
        Self::with_prefix(SESSION_PREFIX)
    }

    /// A new random secret behind `prefix` (a console link's or console session's).
    pub fn with_prefix(prefix: &str) -> Self {
        Self(Zeroizing::new(format!("{prefix}{}", random_b64())))
    }

    /// The text, for the cookie or the response that hands it over once.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// 256 random bits, base64url.
pub fn random_b64() -> String {
    let mut bytes = Zeroizing::new([0u8; 32]);
    if SystemRandom::new().fill(bytes.as_mut()).is_err() {
        failed_rng();
    }
    B64URL.encode(bytes.as_ref())
}

#[cold]
#[allow(clippy::panic)]
fn failed_rng() -> ! {
    panic!("the system random number generator failed")
}

/// SHA-256 of a presented secret or `state`: the lookup key in the store.
pub fn hash(secret: &str) -> Vec<u8> {
    digest::digest(&digest::SHA256, secret.as_bytes()).as_ref().to_vec()
}

/// The first 16 hex digits of a session's secret hash: names a session in the audit log and in
/// `/v1/me` without being usable as one.
pub fn hash_prefix(secret_hash: &[u8]) -> String {
    secret_hash.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Whether `presented` has the shape of a session secret (checked before any lookup).
pub fn looks_like_session(presented: &str) -> bool {
    presented.starts_with(SESSION_PREFIX) && presented.len() <= MAX_SECRET_LEN
}

/// The CSRF token of the session whose secret is `secret`: the `keyward_csrf` cookie's value,
/// which state-changing requests repeat in `X-Keyward-CSRF`.
pub fn csrf_token(secret: &str) -> String {
    let digest = digest::digest(&digest::SHA256, format!("keyward-csrf\0{secret}").as_bytes());
    B64URL.encode(digest.as_ref())
}

/// Whether `a` and `b` are equal, in time that depends only on their lengths.
pub fn same(a: &str, b: &str) -> bool {
    constant_time::verify_slices_are_equal(a.as_bytes(), b.as_bytes()).is_ok()
}

/// Derives the PKCE code verifiers of pending logins from their `state`.
pub struct PkceKey(hmac::Key);

impl fmt::Debug for PkceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PkceKey(…)")
    }
}

impl PkceKey {
    /// A key from 32 secret bytes (derived from the KEK, so every replica derives the same).
    pub fn new(secret: &[u8]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    /// The code verifier for `state`: 43 base64url characters (RFC 7636 §4.1).
    pub fn verifier(&self, state: &str) -> Zeroizing<String> {
        Zeroizing::new(B64URL.encode(hmac::sign(&self.0, state.as_bytes()).as_ref()))
    }
}

/// The S256 code challenge of `verifier` (RFC 7636 §4.2).
pub fn challenge(verifier: &str) -> String {
    B64URL.encode(digest::digest(&digest::SHA256, verifier.as_bytes()).as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csrf_compare_is_exact() {
        let token = csrf_token("kws_a");
        assert!(same(&token, &csrf_token("kws_a")));
        assert!(!same(&token, &csrf_token("kws_b")), "another session's token does not do");
        assert!(!same(&token, ""));
        assert!(!same(&token, token.get(..token.len() - 1).unwrap_or_default()));
        assert!(!same(&token, &format!("{token}x")));
    }

    #[test]
    fn pkce_matches_rfc_7636_appendix_b() {
        // RFC 7636 Appendix B: this verifier has this S256 challenge.
        assert_eq!(
            challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let key = PkceKey::new(&[7; 32]);
        assert_eq!(key.verifier("s").len(), 43);
        assert_eq!(*key.verifier("s"), *key.verifier("s"), "every replica derives the same");
        assert_ne!(*key.verifier("s"), *key.verifier("t"));
        assert_ne!(*PkceKey::new(&[8; 32]).verifier("s"), *key.verifier("s"));
    }

    #[test]
    fn secrets_are_random_prefixed_and_not_printed() {
        let (a, b) = (SessionSecret::generate(), SessionSecret::generate());
        assert_ne!(a.expose(), b.expose());
        assert!(looks_like_session(a.expose()) && a.expose().len() == 4 + 43);
        assert!(!looks_like_session("kw_abc"));
        assert!(!format!("{a:?}").contains(a.expose()));
        assert_eq!(hash_prefix(&hash(a.expose())).len(), 16);
    }
}
