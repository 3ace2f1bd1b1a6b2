//! The GitHub App's own identity: its private key, parsed once, and the short-lived RS256 JSON Web
//! Token it signs to authenticate as the App ("Generating a JSON Web Token (JWT) for a GitHub
//! App"). The JWT is only ever exchanged for installation access tokens ([`super::api`]).
//!
//! Signing uses aws-lc-rs, the project's one crypto stack. The key is accepted as GitHub hands it
//! out (PKCS#1, `-----BEGIN RSA PRIVATE KEY-----`) and as PKCS#8 (`-----BEGIN PRIVATE KEY-----`).
//! Neither the key nor a JWT ever prints: `Debug` shows the App ID only, errors never quote the key.

use std::fmt;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keyward_proto::secret::Secret;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject as _;

/// How far a JWT's `iat` is backdated, for clock drift between the broker and GitHub (GitHub's
/// documentation recommends 60 seconds).
pub const JWT_BACKDATE_SECONDS: i64 = 60;

/// How long after "now" a JWT expires: 9 minutes, under GitHub's 10-minute cap even with the
/// backdated `iat`.
pub const JWT_LIFETIME_SECONDS: i64 = 540;

/// Why the App's private key cannot be used. Never quotes the key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Not a PEM RSA private key at all.
    #[error(
        "vcs.github.private_key_file: not a PEM RSA private key (expected `-----BEGIN RSA PRIVATE KEY-----` \
         as GitHub hands it out, or PKCS#8 `-----BEGIN PRIVATE KEY-----`)"
    )]
    NotPem,
    /// PEM, but aws-lc-rs rejects the key inside (its reason is a fixed description).
    #[error("vcs.github.private_key_file: the RSA private key is rejected: {0}")]
    Rejected(String),
    /// Signing failed (should not happen with a key that parsed).
    #[error("signing the GitHub App JWT failed")]
    Sign,
}

/// The GitHub App: its ID and private key, ready to sign JWTs.
pub struct AppKey {
    app_id: u64,
    key: RsaKeyPair,
    rng: SystemRandom,
}

impl fmt::Debug for AppKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppKey").field("app_id", &self.app_id).finish_non_exhaustive()
    }
}

impl AppKey {
    /// Parses the App's PEM private key (PKCS#1 or PKCS#8).
    pub fn parse(app_id: u64, pem: &Secret) -> Result<Self, KeyError> {
        let der = PrivateKeyDer::from_pem_slice(pem.expose().as_bytes()).map_err(|_| KeyError::NotPem)?;
        let key = match &der {
            PrivateKeyDer::Pkcs1(pkcs1) => RsaKeyPair::from_der(pkcs1.secret_pkcs1_der()),
            PrivateKeyDer::Pkcs8(pkcs8) => RsaKeyPair::from_pkcs8(pkcs8.secret_pkcs8_der()),
            _ => return Err(KeyError::NotPem),
        }
        .map_err(|rejected| KeyError::Rejected(rejected.to_string()))?;
        Ok(Self { app_id, key, rng: SystemRandom::new() })
    }

    /// The App's ID (the JWT's issuer).
    pub fn app_id(&self) -> u64 {
        self.app_id
    }

    /// A JWT authenticating as the App at `now` (Unix seconds): `iat = now - 60`,
    /// `exp = now + 540`, `iss = "<app_id>"`.
    pub fn jwt(&self, now: i64) -> Result<Secret, KeyError> {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
        let claims = serde_json::json!({
            "iat": now - JWT_BACKDATE_SECONDS,
            "exp": now + JWT_LIFETIME_SECONDS,
            "iss": self.app_id.to_string(),
        });
        let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signing_input = format!("{header}.{claims}");
        let mut signature = vec![0_u8; self.key.public_modulus_len()];
        self.key
            .sign(&RSA_PKCS1_SHA256, &self.rng, signing_input.as_bytes(), &mut signature)
            .map_err(|_| KeyError::Sign)?;
        Ok(Secret::from(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))))
    }
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::encoding::AsDer as _;
    use aws_lc_rs::rsa::KeySize;
    use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};

    use super::*;

    /// A fresh RSA key as PKCS#8 DER, and its public key (PKCS#1 `RSAPublicKey` DER).
    fn generated() -> (Vec<u8>, Vec<u8>) {
        let pair = RsaKeyPair::generate(KeySize::Rsa2048).expect("generate");
        let pkcs8 = pair.as_der().expect("pkcs8").as_ref().to_vec();
        (pkcs8, pair.public_key().as_ref().to_vec())
    }

    fn pem(label: &str, der: &[u8]) -> Secret {
        let body = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = body.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).expect("ascii")).collect();
        Secret::from(format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n")))
    }

    /// One DER element at the start of `der`: (tag, contents, rest).
    fn element(der: &[u8]) -> (u8, &[u8], &[u8]) {
        let (&tag, rest) = der.split_first().expect("tag");
        let (&first, rest) = rest.split_first().expect("length");
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let (bytes, rest) = rest.split_at(usize::from(first & 0x7f));
            (bytes.iter().fold(0_usize, |n, b| n << 8 | usize::from(*b)), rest)
        };
        let (contents, rest) = rest.split_at(len);
        (tag, contents, rest)
    }

    /// The PKCS#1 `RSAPrivateKey` inside a PKCS#8 `PrivateKeyInfo`'s OCTET STRING.
    fn pkcs1_of(pkcs8: &[u8]) -> Vec<u8> {
        let (_, info, _) = element(pkcs8);
        let (_, _version, rest) = element(info);
        let (_, _algorithm, rest) = element(rest);
        let (tag, key, _) = element(rest);
        assert_eq!(tag, 0x04, "an OCTET STRING");
        key.to_vec()
    }

    fn decode(part: &str) -> serde_json::Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("json")
    }

    fn verify(jwt: &str, public: &[u8]) -> serde_json::Value {
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3, "header.claims.signature");
        let signature = URL_SAFE_NO_PAD.decode(parts[2]).expect("signature");
        UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, public)
            .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
            .expect("the signature verifies with the App's public key");
        assert_eq!(decode(parts[0]), serde_json::json!({"alg": "RS256", "typ": "JWT"}));
        decode(parts[1])
    }

    #[test]
    fn a_pkcs1_key_as_github_hands_it_out_signs_a_verifiable_jwt() {
        let (pkcs8, public) = generated();
        let key = AppKey::parse(4242, &pem("RSA PRIVATE KEY", &pkcs1_of(&pkcs8))).expect("PKCS#1 parses");
        let now = 1_800_000_000;
        let claims = verify(key.jwt(now).expect("jwt").expose(), &public);
        assert_eq!(claims, serde_json::json!({"iat": now - 60, "exp": now + 540, "iss": "4242"}));
    }

    #[test]
    fn a_pkcs8_key_signs_a_verifiable_jwt() {
        let (pkcs8, public) = generated();
        let key = AppKey::parse(7, &pem("PRIVATE KEY", &pkcs8)).expect("PKCS#8 parses");
        let claims = verify(key.jwt(1_000).expect("jwt").expose(), &public);
        assert_eq!(claims["iss"], "7", "the issuer is the App ID as a string");
    }

    #[test]
    fn the_jwt_stays_under_githubs_ten_minute_cap() {
        let (pkcs8, public) = generated();
        let key = AppKey::parse(1, &pem("PRIVATE KEY", &pkcs8)).expect("parses");
        let claims = verify(key.jwt(5_000).expect("jwt").expose(), &public);
        let (iat, exp) = (claims["iat"].as_i64().expect("iat"), claims["exp"].as_i64().expect("exp"));
        assert!(iat < 5_000, "iat is backdated for clock drift");
        assert!(exp - iat <= 600, "GitHub refuses a JWT living over 10 minutes: {}", exp - iat);
    }

    #[test]
    fn a_garbage_key_is_a_typed_error_that_does_not_echo_it() {
        let garbage = Secret::from(
            "-----BEGIN RSA PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n-----END RSA PRIVATE KEY-----\n".to_owned(),
        );
        let error = AppKey::parse(1, &garbage).expect_err("not an RSA key");
        assert!(matches!(error, KeyError::Rejected(_)), "{error:?}");
        let not_pem = AppKey::parse(1, &Secret::from("secret-key-material".to_owned())).expect_err("not PEM");
        assert!(matches!(not_pem, KeyError::NotPem), "{not_pem:?}");
        for error in [error, not_pem] {
            let shown = format!("{error} {error:?}");
            assert!(shown.contains("vcs.github.private_key_file"), "names the setting: {shown}");
            assert!(!shown.contains("c2VjcmV0") && !shown.contains("secret-key-material"), "echoes the key: {shown}");
        }
    }

    #[test]
    fn debug_never_shows_the_key() {
        let (pkcs8, _) = generated();
        let key = AppKey::parse(99, &pem("PRIVATE KEY", &pkcs8)).expect("parses");
        assert_eq!(format!("{key:?}"), "AppKey { app_id: 99, .. }");
        assert_eq!(format!("{:?}", key.jwt(1).expect("jwt")), "Secret(…)");
    }
}
