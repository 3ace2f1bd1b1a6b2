//! One-time join tokens: `kwj1.<CA fingerprint>.<secret>`.
//!
//! The secret (32 random bytes, base64url) is what authorizes one enrollment into one pool; the
//! broker keeps only its SHA-256. The CA fingerprint (SHA-256 of the agent CA certificate, hex)
//! lets the agent check the CA it downloads from the broker before it trusts it, so enrollment
//! over an unauthenticated first hop cannot be intercepted (Docker Swarm and kubeadm do the same).

use std::fmt;

use aws_lc_rs::digest;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

const PREFIX: &str = "kwj1";

/// A join token. `Debug` never prints the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    fingerprint: String,
    secret: zeroize::Zeroizing<String>,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken").field("fingerprint", &self.fingerprint).finish_non_exhaustive()
    }
}

impl JoinToken {
    /// A fresh token pinning the CA with `fingerprint`; `None` if the system has no randomness.
    pub fn generate(fingerprint: &str) -> Option<Self> {
        let mut bytes = zeroize::Zeroizing::new([0_u8; 32]);
        aws_lc_rs::rand::fill(bytes.as_mut()).ok()?;
        Some(Self { fingerprint: fingerprint.to_owned(), secret: zeroize::Zeroizing::new(B64.encode(bytes.as_ref())) })
    }

    /// Parses a token; `None` when it is not one.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.trim().split('.');
        let (Some(PREFIX), Some(fingerprint), Some(secret), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let hex = fingerprint.len() == 64 && fingerprint.bytes().all(|b| b.is_ascii_hexdigit());
        let secret_ok = B64.decode(secret).is_ok_and(|bytes| bytes.len() == 32);
        (hex && secret_ok).then(|| Self {
            fingerprint: fingerprint.to_ascii_lowercase(),
            secret: zeroize::Zeroizing::new(secret.to_owned()),
        })
    }

    /// The CA fingerprint it pins.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// What the store keeps: SHA-256 of the secret, hex.
    pub fn hash(&self) -> String {
        keyward_proto::encoding::hex(digest::digest(&digest::SHA256, self.secret.as_bytes()).as_ref())
    }

    /// The token text, for the one place that hands it out.
    pub fn expose(&self) -> String {
        format!("{PREFIX}.{}.{}", self.fingerprint, self.secret.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[test]
    fn a_token_round_trips_and_hides_its_secret() {
        let token = JoinToken::generate(FP).expect("random");
        let parsed = JoinToken::parse(&token.expose()).expect("parses");
        assert_eq!(parsed, token);
        assert_eq!(parsed.fingerprint(), FP);
        assert!(!format!("{token:?}").contains(token.secret.as_str()));
        assert_ne!(JoinToken::generate(FP).expect("random").hash(), token.hash(), "secrets are random");
    }

    #[test]
    fn malformed_tokens_are_not_tokens() {
        let good = JoinToken::generate(FP).expect("random").expose();
        for bad in [
            "",
            "kwj1",
            &good.replacen("kwj1", "kwj2", 1),
            &good.replacen(FP, "abc", 1),
            &format!("{good}.extra"),
            &good[..good.len() - 4],
        ] {
            assert!(JoinToken::parse(bad).is_none(), "{bad:?} parsed");
        }
    }
}
