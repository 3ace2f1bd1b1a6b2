//! Strict verification of incoming JWTs: Keyward's own run tokens and trusted CI issuers' tokens.
//!
//! Written against DESIGN.md §8.2 rather than delegated to a general JWT library, so that every
//! rule is visible here and every refusal has its own typed reason:
//! - the algorithm comes from the verifier's allow-list and must match the key's type and its
//!   declared `alg`; the token's header never chooses it (`none` and HMAC are never accepted, so
//!   "HS256 with the public key as secret" has nothing to work with);
//! - the key is found by `kid` in a key set the caller trusts; `jku`, `x5u`, `x5c` and `jwk`
//!   headers are never read, and `crit` is refused;
//! - `iss` must match exactly; `aud` (a string or an array) must contain the expected audience
//!   exactly; `exp` and `iat` are required integers, and so is `nbf` unless the issuer is
//!   configured without it (OpenBao's identity tokens carry none); a present `nbf` is always
//!   checked; leeway is at most 60 s;
//! - tokens over 16 KiB are refused before any parsing.
//!
//! An unknown `kid` is reported as [`VerifyError::UnknownKey`] so a caller holding a remote JWKS
//! can refresh it once (rate-limited) and retry; nothing here does I/O.

use std::time::Duration;

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P384_SHA384_FIXED, RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_2048_8192_SHA384,
    RSA_PKCS1_2048_8192_SHA512, RsaPublicKeyComponents, UnparsedPublicKey,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde_json::{Map, Value};

use super::rules::MAX_CLOCK_SKEW;

/// Largest token accepted (DESIGN.md §8.2).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Signature algorithms a verifier may allow. Asymmetric only: `none` and HMAC do not exist here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Algorithm {
    /// ECDSA P-256 / SHA-256.
    ES256,
    /// ECDSA P-384 / SHA-384.
    ES384,
    /// RSASSA-PKCS1-v1_5 / SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 / SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 / SHA-512.
    RS512,
}

impl Algorithm {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "ES256" => Self::ES256,
            "ES384" => Self::ES384,
            "RS256" => Self::RS256,
            "RS384" => Self::RS384,
            "RS512" => Self::RS512,
            _ => return None,
        })
    }

    fn family(self) -> &'static str {
        match self {
            Self::ES256 | Self::ES384 => "EC",
            Self::RS256 | Self::RS384 | Self::RS512 => "RSA",
        }
    }
}

/// Why a token was refused. Messages are safe to show the caller: they never echo the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// Larger than [`MAX_TOKEN_BYTES`].
    #[error("token is larger than 16 KiB")]
    Oversized,
    /// Not three base64url parts, or a part that does not decode to JSON.
    #[error("token is malformed: {0}")]
    Malformed(&'static str),
    /// `alg` is missing, unknown, symmetric, `none`, or not allowed for this issuer.
    #[error("token algorithm `{0}` is not allowed")]
    AlgorithmNotAllowed(String),
    /// The header carries `crit` extensions, which are not supported.
    #[error("token has critical header extensions, which are not supported")]
    CriticalHeader,
    /// No trusted key has the token's `kid` (or the token has no `kid` and several keys exist).
    #[error("token is signed by an unknown key")]
    UnknownKey,
    /// The key found cannot be used with the token's algorithm.
    #[error("token algorithm does not match its key")]
    KeyMismatch,
    /// The signature does not verify.
    #[error("token signature is invalid")]
    BadSignature,
    /// A required claim is absent.
    #[error("token has no `{0}` claim")]
    MissingClaim(&'static str),
    /// A claim has the wrong JSON type (for example, a string `exp`).
    #[error("token claim `{0}` has the wrong type")]
    WrongClaimType(&'static str),
    /// `iss` is not the expected issuer.
    #[error("token issuer is not trusted here")]
    WrongIssuer,
    /// `aud` does not contain the expected audience.
    #[error("token audience does not match")]
    WrongAudience,
    /// Past `exp` plus leeway.
    #[error("token has expired")]
    Expired,
    /// Before `nbf` minus leeway.
    #[error("token is not valid yet")]
    NotYetValid,
    /// `iat` is in the future beyond leeway.
    #[error("token was issued in the future")]
    IssuedInFuture,
}

/// A public key the verifier trusts.
#[derive(Debug, Clone)]
enum PublicKey {
    Ec { curve: &'static str, point: Vec<u8> },
    Rsa(RsaPublicKeyComponents<Vec<u8>>),
}

/// One trusted key: its `kid`, its declared `alg` (if the JWK declares one), the key.
#[derive(Debug, Clone)]
struct TrustedKey {
    kid: Option<String>,
    alg: Option<String>,
    key: PublicKey,
}

/// A set of trusted keys, built from a JWKS document.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: Vec<TrustedKey>,
}

impl KeySet {
    /// Parses a JWKS (`{"keys": [...]}`). Keys this verifier cannot use (other types, `use:
    /// enc`, unsupported curves) are skipped; a document without a `keys` array is an error.
    pub fn from_jwks(jwks: &str) -> Result<Self, VerifyError> {
        let document: Value = serde_json::from_str(jwks).map_err(|_| VerifyError::Malformed("JWKS is not JSON"))?;
        let keys = document.get("keys").and_then(Value::as_array).ok_or(VerifyError::Malformed("JWKS has no keys"))?;
        Ok(Self { keys: keys.iter().filter_map(trusted_key).collect() })
    }

    /// Number of usable keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there is no usable key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn find(&self, kid: Option<&str>) -> Result<&TrustedKey, VerifyError> {
        match kid {
            Some(kid) => self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)).ok_or(VerifyError::UnknownKey),
            // Without a kid, only an unambiguous key set will do.
            None => match self.keys.as_slice() {
                [only] => Ok(only),
                _ => Err(VerifyError::UnknownKey),
            },
        }
    }
}

fn decode_field(jwk: &Value, name: &str) -> Option<Vec<u8>> {
    B64URL.decode(jwk.get(name)?.as_str()?).ok()
}

fn trusted_key(jwk: &Value) -> Option<TrustedKey> {
    if jwk.get("use").and_then(Value::as_str).is_some_and(|u| u != "sig") {
        return None;
    }
    let key = match jwk.get("kty")?.as_str()? {
        "EC" => {
            let (curve, len) = match jwk.get("crv")?.as_str()? {
                "P-256" => ("P-256", 32),
                "P-384" => ("P-384", 48),
                _ => return None,
            };
            let (x, y) = (decode_field(jwk, "x")?, decode_field(jwk, "y")?);
            if x.len() != len || y.len() != len {
                return None;
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            PublicKey::Ec { curve, point }
        }
        "RSA" => {
            let n = decode_field(jwk, "n")?;
            let e = decode_field(jwk, "e")?;
            // Strip leading zero bytes: aws-lc-rs wants minimal big-endian integers.
            let trim = |mut v: Vec<u8>| {
                let zeros = v.iter().take_while(|b| **b == 0).count();
                v.drain(..zeros);
                v
            };
            PublicKey::Rsa(RsaPublicKeyComponents { n: trim(n), e: trim(e) })
        }
        _ => return None,
    };
    Some(TrustedKey {
        kid: jwk.get("kid").and_then(Value::as_str).map(str::to_owned),
        alg: jwk.get("alg").and_then(Value::as_str).map(str::to_owned),
        key,
    })
}

/// What a token must satisfy.
#[derive(Debug, Clone)]
pub struct Expectations {
    /// Exact `iss`.
    pub issuer: String,
    /// The audience `aud` must contain, exactly.
    pub audience: String,
    /// Algorithms accepted from this issuer.
    pub algorithms: Vec<Algorithm>,
    /// Clock-skew leeway; capped at 60 s.
    pub leeway: Duration,
    /// Whether `nbf` must be present (it is always checked when present).
    pub require_nbf: bool,
}

/// A token that passed every check.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    /// The algorithm it was signed with.
    pub algorithm: Algorithm,
    /// The signing key's ID.
    pub kid: Option<String>,
    /// Every claim.
    pub claims: Map<String, Value>,
    /// `exp`.
    pub expires_at: i64,
}

impl VerifiedToken {
    /// A string claim, if present.
    pub fn string(&self, name: &str) -> Option<&str> {
        self.claims.get(name).and_then(Value::as_str)
    }
}

fn part(token_part: &str, what: &'static str) -> Result<Map<String, Value>, VerifyError> {
    let bytes = B64URL.decode(token_part).map_err(|_| VerifyError::Malformed(what))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(VerifyError::Malformed(what)),
    }
}

fn integer_claim(claims: &Map<String, Value>, name: &'static str) -> Result<i64, VerifyError> {
    match claims.get(name) {
        None | Some(Value::Null) => Err(VerifyError::MissingClaim(name)),
        Some(Value::Number(n)) => n.as_i64().ok_or(VerifyError::WrongClaimType(name)),
        Some(_) => Err(VerifyError::WrongClaimType(name)),
    }
}

/// Verifies `token` against `keys` and `expect` at time `now` (seconds since the epoch).
///
/// Long by design: one strict check sequence (size, header, key, signature, then claims), read
/// top to bottom; splitting it would hide the order, which is the security property.
pub fn verify(token: &str, keys: &KeySet, expect: &Expectations, now: i64) -> Result<VerifiedToken, VerifyError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(VerifyError::Oversized);
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(claims_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(VerifyError::Malformed("expected three dot-separated parts"));
    };
    let header = part(header_b64, "header")?;
    let alg_name = header.get("alg").and_then(Value::as_str).unwrap_or_default();
    let algorithm = Algorithm::parse(alg_name)
        .filter(|alg| expect.algorithms.contains(alg))
        .ok_or_else(|| VerifyError::AlgorithmNotAllowed(alg_name.chars().take(16).collect()))?;
    if header.contains_key("crit") {
        return Err(VerifyError::CriticalHeader);
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(VerifyError::Malformed("kid is not a string")),
    };
    let key = keys.find(kid.as_deref())?;
    if key.alg.as_deref().is_some_and(|declared| declared != alg_name) {
        return Err(VerifyError::KeyMismatch);
    }
    let signature = B64URL.decode(signature_b64).map_err(|_| VerifyError::Malformed("signature"))?;
    let signing_input_len = header_b64.len() + 1 + claims_b64.len();
    let signing_input = token.get(..signing_input_len).ok_or(VerifyError::Malformed("signing input"))?.as_bytes();
    let verified = match (&key.key, algorithm) {
        (PublicKey::Ec { curve: "P-256", point }, Algorithm::ES256) => {
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point).verify(signing_input, &signature)
        }
        (PublicKey::Ec { curve: "P-384", point }, Algorithm::ES384) => {
            UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, point).verify(signing_input, &signature)
        }
        (PublicKey::Rsa(components), Algorithm::RS256) => {
            components.verify(&RSA_PKCS1_2048_8192_SHA256, signing_input, &signature)
        }
        (PublicKey::Rsa(components), Algorithm::RS384) => {
            components.verify(&RSA_PKCS1_2048_8192_SHA384, signing_input, &signature)
        }
        (PublicKey::Rsa(components), Algorithm::RS512) => {
            components.verify(&RSA_PKCS1_2048_8192_SHA512, signing_input, &signature)
        }
        (key, alg) => {
            tracing::debug!(key_family = ?std::mem::discriminant(key), alg = alg.family(), "key type does not fit the algorithm");
            return Err(VerifyError::KeyMismatch);
        }
    };
    verified.map_err(|_| VerifyError::BadSignature)?;

    // Only now, with the signature good, are the claims worth reading.
    let claims = part(claims_b64, "claims")?;
    match claims.get("iss") {
        Some(Value::String(iss)) if *iss == expect.issuer => {}
        Some(Value::String(_)) => return Err(VerifyError::WrongIssuer),
        None => return Err(VerifyError::MissingClaim("iss")),
        Some(_) => return Err(VerifyError::WrongClaimType("iss")),
    }
    let audience_ok = match claims.get("aud") {
        Some(Value::String(aud)) => *aud == expect.audience,
        Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(expect.audience.as_str())),
        None => return Err(VerifyError::MissingClaim("aud")),
        Some(_) => return Err(VerifyError::WrongClaimType("aud")),
    };
    if !audience_ok {
        return Err(VerifyError::WrongAudience);
    }
    let leeway = i64::try_from(expect.leeway.min(MAX_CLOCK_SKEW).as_secs()).unwrap_or(0);
    let exp = integer_claim(&claims, "exp")?;
    let iat = integer_claim(&claims, "iat")?;
    let nbf = match integer_claim(&claims, "nbf") {
        Err(VerifyError::MissingClaim(_)) if !expect.require_nbf => None,
        other => Some(other?),
    };
    if now > exp.saturating_add(leeway) {
        return Err(VerifyError::Expired);
    }
    if nbf.is_some_and(|nbf| now < nbf.saturating_sub(leeway)) {
        return Err(VerifyError::NotYetValid);
    }
    if now < iat.saturating_sub(leeway) {
        return Err(VerifyError::IssuedInFuture);
    }
    Ok(VerifiedToken { algorithm, kid, claims, expires_at: exp })
}

/// The signature algorithms used when minting map onto the verifier's.
impl From<super::SigningAlgorithm> for Algorithm {
    fn from(alg: super::SigningAlgorithm) -> Self {
        match alg {
            super::SigningAlgorithm::ES256 => Self::ES256,
            super::SigningAlgorithm::RS256 => Self::RS256,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::tokens::{Signer, SigningAlgorithm};

    const NOW: i64 = 1_800_000_000;

    fn jwks(signers: &[&Signer]) -> KeySet {
        let keys: Vec<_> = signers.iter().map(|s| serde_json::to_value(s.jwk()).unwrap_or_default()).collect();
        KeySet::from_jwks(&json!({ "keys": keys }).to_string()).unwrap_or_default()
    }

    fn expect() -> Expectations {
        Expectations {
            issuer: "https://kw.example".into(),
            audience: "keyward".into(),
            algorithms: vec![Algorithm::ES256, Algorithm::RS256],
            leeway: Duration::from_secs(30),
            require_nbf: true,
        }
    }

    fn claims() -> Value {
        json!({"iss": "https://kw.example", "aud": "keyward", "sub": "s", "iat": NOW, "nbf": NOW, "exp": NOW + 300, "jti": "j"})
    }

    fn sign(signer: &Signer, claims: &Value) -> String {
        signer.sign_compact(claims.to_string().as_bytes()).unwrap_or_default()
    }

    /// A token with a header of our choosing, really signed by `signer`'s key.
    fn with_header(signer: &Signer, header: &Value, claims: &Value) -> String {
        let input = format!("{}.{}", B64URL.encode(header.to_string()), B64URL.encode(claims.to_string()));
        let signature = signer.raw_signature(input.as_bytes()).unwrap_or_default();
        format!("{input}.{}", B64URL.encode(signature))
    }

    fn setup() -> (Signer, KeySet) {
        let (signer, _) = Signer::generate(SigningAlgorithm::ES256).unwrap_or_else(|_| unreachable_setup());
        let keys = jwks(&[&signer]);
        (signer, keys)
    }

    #[allow(clippy::panic)]
    fn unreachable_setup() -> (Signer, zeroize::Zeroizing<Vec<u8>>) {
        panic!("key generation failed")
    }

    #[test]
    fn a_good_token_verifies_for_both_algorithms() -> Result<(), VerifyError> {
        for algorithm in [SigningAlgorithm::ES256, SigningAlgorithm::RS256] {
            let (signer, _) = Signer::generate(algorithm).map_err(|_| VerifyError::BadSignature)?;
            let token = sign(&signer, &claims());
            let verified = verify(&token, &jwks(&[&signer]), &expect(), NOW)?;
            assert_eq!(verified.algorithm, Algorithm::from(algorithm));
            assert_eq!(verified.string("sub"), Some("s"));
            assert_eq!(verified.expires_at, NOW + 300);
        }
        Ok(())
    }

    #[test]
    fn header_attacks_are_refused() {
        let (signer, keys) = setup();
        let kid = signer.kid().to_owned();
        let c = claims();
        let cases = [
            ("alg none", json!({"alg": "none", "kid": kid}), VerifyError::AlgorithmNotAllowed("none".into())),
            (
                "HS256 with the public key",
                json!({"alg": "HS256", "kid": kid}),
                VerifyError::AlgorithmNotAllowed("HS256".into()),
            ),
            ("missing alg", json!({"kid": kid}), VerifyError::AlgorithmNotAllowed(String::new())),
            ("RS256 on an EC key", json!({"alg": "RS256", "kid": kid}), VerifyError::KeyMismatch),
            ("crit extension", json!({"alg": "ES256", "kid": kid, "crit": ["exp"]}), VerifyError::CriticalHeader),
            ("unknown kid", json!({"alg": "ES256", "kid": "nope"}), VerifyError::UnknownKey),
        ];
        for (what, header, error) in cases {
            let token = with_header(&signer, &header, &c);
            assert_eq!(verify(&token, &keys, &expect(), NOW).err(), Some(error), "{what}");
        }
        // HS256 with the public key as the HMAC secret: a valid HMAC, still refused on alg.
        let hs = format!(
            "{}.{}.{}",
            B64URL.encode(r#"{"alg":"HS256"}"#),
            B64URL.encode(c.to_string()),
            B64URL.encode([0u8; 32])
        );
        assert!(matches!(verify(&hs, &keys, &expect(), NOW), Err(VerifyError::AlgorithmNotAllowed(_))));
    }

    #[test]
    fn jku_x5u_and_embedded_jwk_are_never_used() {
        let (signer, keys) = setup();
        let (attacker, _) = Signer::generate(SigningAlgorithm::ES256).unwrap_or_else(|_| unreachable_setup());
        let attacker_jwk = serde_json::to_value(attacker.jwk()).unwrap_or_default();
        for header in [
            json!({"alg": "ES256", "kid": attacker.kid(), "jku": "https://evil.example/jwks.json"}),
            json!({"alg": "ES256", "kid": attacker.kid(), "x5u": "https://evil.example/cert.pem"}),
            json!({"alg": "ES256", "kid": attacker.kid(), "jwk": attacker_jwk}),
            json!({"alg": "ES256", "kid": attacker.kid(), "x5c": ["MIIBattacker"]}),
        ] {
            let token = with_header(&attacker, &header, &claims());
            assert_eq!(verify(&token, &keys, &expect(), NOW).err(), Some(VerifyError::UnknownKey), "{header}");
        }
        // The attacker's key under the trusted kid: the signature fails.
        let forged = with_header(&attacker, &json!({"alg": "ES256", "kid": signer.kid()}), &claims());
        assert_eq!(verify(&forged, &keys, &expect(), NOW).err(), Some(VerifyError::BadSignature));
        // Never read, not even parsed: garbage in them does not disturb a good token.
        for header in [
            json!({"alg": "ES256", "kid": signer.kid(), "x5c": ["not base64 DER", 7]}),
            json!({"alg": "ES256", "kid": signer.kid(), "x5u": {"not": "a URL"}, "jku": 1, "jwk": "?"}),
        ] {
            let token = with_header(&signer, &header, &claims());
            assert!(verify(&token, &keys, &expect(), NOW).is_ok(), "{header}");
        }
    }

    #[test]
    fn claim_rules() {
        let (signer, keys) = setup();
        let set = |key: &str, value: Value| {
            let mut c = claims();
            c[key] = value;
            verify(&sign(&signer, &c), &keys, &expect(), NOW).err()
        };
        assert_eq!(set("iss", json!("https://kw.example/")), Some(VerifyError::WrongIssuer), "exact iss");
        assert_eq!(set("aud", json!("other")), Some(VerifyError::WrongAudience));
        assert_eq!(set("aud", json!(["other", "keyward"])), None, "array containing the audience");
        assert_eq!(set("aud", json!(["other"])), Some(VerifyError::WrongAudience));
        assert_eq!(set("aud", json!("keyward ")), Some(VerifyError::WrongAudience), "exact aud");
        assert_eq!(set("aud", json!(7)), Some(VerifyError::WrongClaimType("aud")));
        assert_eq!(set("exp", json!(String::from("1900000000"))), Some(VerifyError::WrongClaimType("exp")));
        assert_eq!(set("nbf", json!(1.5)), Some(VerifyError::WrongClaimType("nbf")));
        assert_eq!(set("iat", Value::Null), Some(VerifyError::MissingClaim("iat")));
        assert_eq!(set("exp", Value::Null), Some(VerifyError::MissingClaim("exp")), "a token that never expires");
        assert_eq!(set("exp", json!(NOW - 31)), Some(VerifyError::Expired), "past exp + leeway");
        assert_eq!(set("exp", json!(NOW - 30)), None, "within leeway");
        assert_eq!(set("nbf", json!(NOW + 31)), Some(VerifyError::NotYetValid));
        assert_eq!(set("iat", json!(NOW + 31)), Some(VerifyError::IssuedInFuture));
        assert_eq!(set("nbf", Value::Null), Some(VerifyError::MissingClaim("nbf")));
        let optional_nbf = Expectations { require_nbf: false, ..expect() };
        let without = |c: &Value| verify(&sign(&signer, c), &keys, &optional_nbf, NOW).err();
        let mut c = claims();
        c.as_object_mut().map(|m| m.remove("nbf"));
        assert_eq!(without(&c), None, "nbf may be absent when the issuer is configured so");
        c["nbf"] = json!(NOW + 31);
        assert_eq!(without(&c), Some(VerifyError::NotYetValid), "a present nbf is still enforced");
        c["nbf"] = json!("soon");
        assert_eq!(without(&c), Some(VerifyError::WrongClaimType("nbf")), "and type-checked");
    }

    #[test]
    fn leeway_is_capped_at_sixty_seconds() {
        let (signer, keys) = setup();
        let mut c = claims();
        c["exp"] = json!(NOW - 61);
        let generous = Expectations { leeway: Duration::from_secs(3600), ..expect() };
        assert_eq!(verify(&sign(&signer, &c), &keys, &generous, NOW).err(), Some(VerifyError::Expired));
    }

    #[test]
    fn size_and_shape() {
        let (signer, keys) = setup();
        let mut c = claims();
        c["padding"] = json!("x".repeat(MAX_TOKEN_BYTES));
        assert_eq!(verify(&sign(&signer, &c), &keys, &expect(), NOW).err(), Some(VerifyError::Oversized));
        for bad in ["", "a.b", "a.b.c.d", "!!!.e30.AA", "e30.e30.!!!"] {
            assert!(
                matches!(
                    verify(bad, &keys, &expect(), NOW),
                    Err(VerifyError::Malformed(_) | VerifyError::AlgorithmNotAllowed(_))
                ),
                "{bad}"
            );
        }
        let token = sign(&signer, &claims());
        let tampered = token.replacen('.', ".e30", 1);
        assert!(verify(&tampered, &keys, &expect(), NOW).is_err());
    }
}
