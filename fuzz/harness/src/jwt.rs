//! JWT/JWS compact parsing and verification (`tokens::verify`), and the unverified peek at
//! `iss`/`aud` the exchange does to pick an issuer (`exchange::trusted_issuers`).
//!
//! Input: the first byte chooses how the rest becomes a token.
//! - even: the rest is the token text, as a client sends it;
//! - odd: the rest is `header ‖ 0x00 ‖ claims`, signed here with a trusted key (RS256 when bit 1
//!   is set, else ES256), so hostile headers and claims reach the checks after the signature.
//!
//! Bits 2 says whether `nbf` is required. What must hold for a token that verifies:
//! - each part re-encodes to exactly its text (no second spelling of a verified token);
//! - the claims are exactly what the payload says, `iss` and `aud` are the expected ones, and
//!   it is not expired;
//! - the unverified peek agrees with the verified claims.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use keyward_broker::exchange::trusted_issuers::peek_issuer_and_audiences;
use keyward_broker::tokens::verify::{self, VerifiedToken};
use serde_json::Value;

use crate::Outcome;
use crate::fixtures::{ISSUER, NOW, expectations, key_set, sign_jws};

/// Runs one input.
pub fn check(data: &[u8]) -> Outcome {
    let Some((&mode, rest)) = data.split_first() else { return Outcome::Refused };
    let token = if mode & 1 == 1 {
        let (header, claims) = match rest.iter().position(|b| *b == 0) {
            Some(at) => (&rest[..at], &rest[at + 1..]),
            None => (rest, &b""[..]),
        };
        sign_jws(header, claims, mode & 2 == 2)
    } else {
        String::from_utf8_lossy(rest).into_owned()
    };
    let peeked = peek_issuer_and_audiences(&token);
    let expect = expectations(mode & 4 == 4);
    match verify::verify(&token, key_set(), &expect, NOW) {
        Ok(verified) => {
            holds_for_verified(&token, &verified, peeked);
            Outcome::Accepted
        }
        Err(error) => {
            // Refusals never echo the token: their text is bounded whatever it holds.
            assert!(error.to_string().len() < 200, "an unbounded refusal: {error}");
            Outcome::Refused
        }
    }
}

fn holds_for_verified(token: &str, verified: &VerifiedToken, peeked: Option<(String, Vec<String>)>) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a verified token has three parts");
    for part in &parts {
        let decoded = B64URL.decode(part).expect("a verified token's parts are base64url");
        assert_eq!(B64URL.encode(decoded), *part, "a verified token re-encodes to the same bytes");
    }
    let payload = B64URL.decode(parts[1]).expect("payload");
    let claims: Value = serde_json::from_slice(&payload).expect("a verified payload is JSON");
    assert_eq!(Some(&verified.claims), claims.as_object(), "the verified claims are the payload's");
    assert_eq!(verified.string("iss"), Some(ISSUER));
    let audience_ok = match verified.claims.get("aud") {
        Some(Value::String(aud)) => aud == ISSUER,
        Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(ISSUER)),
        _ => false,
    };
    assert!(audience_ok, "a verified token names the audience");
    assert!(verified.expires_at.saturating_add(60) >= NOW, "a verified token is not expired beyond the largest leeway");
    let (iss, audiences) = peeked.expect("the peek reads a verified token");
    assert_eq!(iss, ISSUER, "the peek agrees on iss");
    assert!(audiences.iter().any(|a| a == ISSUER), "the peek agrees on aud");
}
