//! Parsed signing keys and the compact JWS they produce.
//!
//! A key is parsed from PKCS#8 once, when it is loaded, and kept parsed: re-parsing per token costs
//! about a third of an ES256 signature. The JWS header for a key never changes, so it is encoded once
//! too; signing a token is then one serialization, one signature and two base64 passes.

use std::fmt;
use std::str::FromStr;

use aws_lc_rs::digest;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeySize, PublicKeyComponents};
use aws_lc_rs::signature::{self, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _, RsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// JWS algorithms the broker signs with. AWS STS accepts RS* and ES* only, so EdDSA is absent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SigningAlgorithm {
    /// ECDSA P-256 with SHA-256 (default).
    #[default]
    ES256,
    /// RSASSA-PKCS1-v1_5 with SHA-256, 2048-bit keys.
    RS256,
}

impl SigningAlgorithm {
    /// The JOSE name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ES256 => "ES256",
            Self::RS256 => "RS256",
        }
    }
}

impl fmt::Display for SigningAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SigningAlgorithm {
    type Err = SignerError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ES256" => Ok(Self::ES256),
            "RS256" => Ok(Self::RS256),
            other => Err(SignerError::UnknownAlgorithm(other.to_owned())),
        }
    }
}

/// Key handling failures.
#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    /// An algorithm name the broker does not sign with.
    #[error("unknown signing algorithm `{0}`: expected ES256 or RS256")]
    UnknownAlgorithm(String),
    /// The PKCS#8 document did not parse as a key of the expected algorithm.
    #[error("private key is not a valid {0} PKCS#8 key")]
    InvalidKey(SigningAlgorithm),
    /// Key generation or signing failed inside aws-lc-rs.
    #[error("{0} key operation failed in the crypto library")]
    Crypto(SigningAlgorithm),
}

/// A public key in JWK form (RFC 7517), as published in the JWKS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// `EC` or `RSA`.
    pub kty: String,
    /// Always `sig`.
    #[serde(rename = "use")]
    pub use_: String,
    /// The JOSE algorithm.
    pub alg: String,
    /// Key ID: the RFC 7638 thumbprint.
    pub kid: String,
    /// EC curve.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub crv: Option<String>,
    /// EC x coordinate.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub x: Option<String>,
    /// EC y coordinate.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub y: Option<String>,
    /// RSA modulus.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub n: Option<String>,
    /// RSA public exponent.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub e: Option<String>,
}

enum KeyPair {
    Ec(EcdsaKeyPair),
    Rsa(RsaKeyPair),
}

/// A parsed private key, ready to sign. Never printed.
pub struct Signer {
    algorithm: SigningAlgorithm,
    kid: String,
    pair: KeyPair,
    encoded_header: String,
    jwk: Jwk,
    rng: SystemRandom,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer").field("algorithm", &self.algorithm).field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl Signer {
    /// Generates a new key and returns it with its PKCS#8 encoding (to be sealed for storage).
    pub fn generate(algorithm: SigningAlgorithm) -> Result<(Self, Zeroizing<Vec<u8>>), SignerError> {
        let crypto = |_| SignerError::Crypto(algorithm);
        let pkcs8 = match algorithm {
            SigningAlgorithm::ES256 => {
                let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).map_err(crypto)?;
                Zeroizing::new(pair.to_pkcs8v1().map_err(crypto)?.as_ref().to_vec())
            }
            SigningAlgorithm::RS256 => {
                let pair = RsaKeyPair::generate(KeySize::Rsa2048).map_err(crypto)?;
                Zeroizing::new(AsDer::as_der(&pair).map_err(crypto)?.as_ref().to_vec())
            }
        };
        let signer = Self::from_pkcs8(algorithm, &pkcs8)?;
        Ok((signer, pkcs8))
    }

    /// Parses a PKCS#8 private key.
    pub fn from_pkcs8(algorithm: SigningAlgorithm, pkcs8: &[u8]) -> Result<Self, SignerError> {
        let invalid = |_| SignerError::InvalidKey(algorithm);
        let (pair, jwk_fields) = match algorithm {
            SigningAlgorithm::ES256 => {
                let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8).map_err(invalid)?;
                // Uncompressed SEC1 point: 0x04 ‖ x (32) ‖ y (32).
                let fields = match pair.public_key().as_ref() {
                    [0x04, rest @ ..] if rest.len() == 64 => {
                        let (x, y) = rest.split_at(32);
                        JwkFields::Ec { x: B64URL.encode(x), y: B64URL.encode(y) }
                    }
                    _ => return Err(SignerError::InvalidKey(algorithm)),
                };
                (KeyPair::Ec(pair), fields)
            }
            SigningAlgorithm::RS256 => {
                let pair = RsaKeyPair::from_pkcs8(pkcs8).map_err(invalid)?;
                let components = PublicKeyComponents::<Vec<u8>>::from(pair.public_key());
                let fields = JwkFields::Rsa { n: B64URL.encode(&components.n), e: B64URL.encode(&components.e) };
                (KeyPair::Rsa(pair), fields)
            }
        };
        let kid = jwk_fields.thumbprint();
        let jwk = jwk_fields.into_jwk(algorithm, kid.clone());
        let header = format!(r#"{{"alg":"{}","kid":"{}","typ":"JWT"}}"#, algorithm.as_str(), kid);
        Ok(Self { algorithm, kid, pair, encoded_header: B64URL.encode(header), jwk, rng: SystemRandom::new() })
    }

    /// The key ID (RFC 7638 JWK thumbprint).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The algorithm.
    pub fn algorithm(&self) -> SigningAlgorithm {
        self.algorithm
    }

    /// The public key as a JWK.
    pub fn jwk(&self) -> &Jwk {
        &self.jwk
    }

    /// The bare JWS signature over `input` (for building test tokens with arbitrary headers).
    #[cfg(test)]
    pub(crate) fn raw_signature(&self, input: &[u8]) -> Result<Vec<u8>, SignerError> {
        let crypto = |_| SignerError::Crypto(self.algorithm);
        match &self.pair {
            KeyPair::Ec(pair) => Ok(pair.sign(&self.rng, input).map_err(crypto)?.as_ref().to_vec()),
            KeyPair::Rsa(pair) => {
                let mut signature = vec![0u8; pair.public_modulus_len()];
                pair.sign(&signature::RSA_PKCS1_SHA256, &self.rng, input, &mut signature).map_err(crypto)?;
                Ok(signature)
            }
        }
    }

    /// Produces a compact JWS over the JSON `claims`.
    pub fn sign_compact(&self, claims: &[u8]) -> Result<String, SignerError> {
        let payload_len = base64::encoded_len(claims.len(), false).unwrap_or(0);
        let mut token = String::with_capacity(self.encoded_header.len() + payload_len + 2 + 344);
        token.push_str(&self.encoded_header);
        token.push('.');
        B64URL.encode_string(claims, &mut token);
        let crypto = |_| SignerError::Crypto(self.algorithm);
        match &self.pair {
            KeyPair::Ec(pair) => {
                let signature = pair.sign(&self.rng, token.as_bytes()).map_err(crypto)?;
                token.push('.');
                B64URL.encode_string(signature.as_ref(), &mut token);
            }
            KeyPair::Rsa(pair) => {
                let mut signature = vec![0u8; pair.public_modulus_len()];
                pair.sign(&signature::RSA_PKCS1_SHA256, &self.rng, token.as_bytes(), &mut signature).map_err(crypto)?;
                token.push('.');
                B64URL.encode_string(&signature, &mut token);
            }
        }
        Ok(token)
    }
}

enum JwkFields {
    Ec { x: String, y: String },
    Rsa { n: String, e: String },
}

impl JwkFields {
    /// RFC 7638: SHA-256 over the required members in lexicographic order, no whitespace.
    fn thumbprint(&self) -> String {
        let canonical = match self {
            Self::Ec { x, y } => format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#),
            Self::Rsa { n, e } => format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#),
        };
        B64URL.encode(digest::digest(&digest::SHA256, canonical.as_bytes()))
    }

    fn into_jwk(self, algorithm: SigningAlgorithm, kid: String) -> Jwk {
        let base = Jwk {
            kty: String::new(),
            use_: "sig".to_owned(),
            alg: algorithm.as_str().to_owned(),
            kid,
            crv: None,
            x: None,
            y: None,
            n: None,
            e: None,
        };
        match self {
            Self::Ec { x, y } => {
                Jwk { kty: "EC".to_owned(), crv: Some("P-256".to_owned()), x: Some(x), y: Some(y), ..base }
            }
            Self::Rsa { n, e } => Jwk { kty: "RSA".to_owned(), n: Some(n), e: Some(e), ..base },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};

    fn verify(signer: &Signer, token: &str) -> bool {
        let Some((signing_input, signature)) = token.rsplit_once('.') else { return false };
        let Ok(signature) = B64URL.decode(signature) else { return false };
        match &signer.pair {
            KeyPair::Ec(pair) => UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, pair.public_key().as_ref())
                .verify(signing_input.as_bytes(), &signature)
                .is_ok(),
            KeyPair::Rsa(pair) => UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, pair.public_key().as_ref())
                .verify(signing_input.as_bytes(), &signature)
                .is_ok(),
        }
    }

    #[test]
    fn es256_and_rs256_sign_verifiable_tokens() -> Result<(), SignerError> {
        for algorithm in [SigningAlgorithm::ES256, SigningAlgorithm::RS256] {
            let (signer, pkcs8) = Signer::generate(algorithm)?;
            let token = signer.sign_compact(br#"{"sub":"x"}"#)?;
            assert!(verify(&signer, &token), "{algorithm} signature must verify");
            let mut tampered = token.clone();
            tampered.insert(tampered.find('.').unwrap_or(0) + 1, 'A');
            assert!(!verify(&signer, &tampered), "{algorithm}: a modified payload must not verify");
            let reparsed = Signer::from_pkcs8(algorithm, &pkcs8)?;
            assert_eq!(reparsed.kid(), signer.kid(), "kid is a stable thumbprint");
            let header: serde_json::Value =
                serde_json::from_slice(&B64URL.decode(token.split('.').next().unwrap_or_default()).unwrap_or_default())
                    .unwrap_or_default();
            assert_eq!(header["alg"], algorithm.as_str());
            assert_eq!(header["kid"], signer.kid());
            assert_eq!(header["typ"], "JWT");
        }
        Ok(())
    }

    #[test]
    fn rfc7638_thumbprint_known_answer() {
        // RFC 7638 §3.1 example key and its thumbprint.
        let fields = JwkFields::Rsa {
            n: "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw".to_owned(),
            e: "AQAB".to_owned(),
        };
        assert_eq!(fields.thumbprint(), "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
    }

    #[test]
    fn wrong_algorithm_pkcs8_is_rejected() -> Result<(), SignerError> {
        let (_, ec_pkcs8) = Signer::generate(SigningAlgorithm::ES256)?;
        assert!(matches!(
            Signer::from_pkcs8(SigningAlgorithm::RS256, &ec_pkcs8),
            Err(SignerError::InvalidKey(SigningAlgorithm::RS256))
        ));
        assert!(Signer::from_pkcs8(SigningAlgorithm::ES256, b"garbage").is_err());
        Ok(())
    }

    #[test]
    fn debug_shows_kid_not_key() -> Result<(), SignerError> {
        let (signer, pkcs8) = Signer::generate(SigningAlgorithm::ES256)?;
        let printed = format!("{signer:?}");
        assert!(printed.contains(signer.kid()));
        assert!(!printed.contains(&B64URL.encode(&*pkcs8)));
        Ok(())
    }
}
