//! JWKS documents (`tokens::verify::KeySet::from_jwks`), as a CI issuer's `jwks_uri` serves
//! them to `exchange::trusted_issuers`, and verification against whatever keys they hold (hostile RSA
//! moduli and exponents, EC points off the curve, duplicate `kid`s).
//!
//! Input: the document. What must hold:
//! - keys are judged one at a time: a document keeps exactly as many keys as its `keys`
//!   entries keep on their own, and never more keys than it lists;
//! - verifying real tokens against the keys never panics, and a token verifies only against a
//!   key set that holds its signer's key (here: never, unless the document has it).

use std::sync::OnceLock;

use keyward_broker::tokens::verify::{self, KeySet};
use serde_json::{Value, json};

use crate::Outcome;
use crate::fixtures::{ISSUER, NOW, es256, expectations, rs256};

/// Runs one input.
pub fn check(data: &[u8]) -> Outcome {
    let text = String::from_utf8_lossy(data);
    let Ok(keys) = KeySet::from_jwks(&text) else { return Outcome::Refused };
    let listed = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|doc| doc.get("keys").and_then(Value::as_array).cloned())
        .expect("a JWKS that parses has a keys array");
    assert!(keys.len() <= listed.len(), "more keys than the document lists");
    let one_by_one: usize = listed
        .iter()
        .map(|key| KeySet::from_jwks(&json!({ "keys": [key] }).to_string()).map_or(0, |set| set.len()))
        .sum();
    assert_eq!(keys.len(), one_by_one, "a key's fate depends on the other keys");
    for (kid, token) in tokens() {
        if verify::verify(token, &keys, &expectations(true), NOW).is_ok() {
            let listed_kid = listed.iter().any(|key| key.get("kid").and_then(Value::as_str) == Some(kid.as_str()));
            assert!(listed_kid, "a token verified against a key set without its key");
        }
    }
    Outcome::Accepted
}

/// A good token of each fixture signer, with its `kid` (signed once: RSA signing is slow).
fn tokens() -> &'static [(String, String); 2] {
    static TOKENS: OnceLock<[(String, String); 2]> = OnceLock::new();
    TOKENS.get_or_init(|| {
        let claims = json!({"iss": ISSUER, "aud": ISSUER, "iat": NOW, "nbf": NOW, "exp": NOW + 300}).to_string();
        [es256(), rs256()]
            .map(|signer| (signer.kid().to_owned(), signer.sign_compact(claims.as_bytes()).expect("signing")))
    })
}
