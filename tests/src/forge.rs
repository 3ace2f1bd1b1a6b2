//! Tokens the broker would never issue, built from its real key material, to prove relying
//! parties refuse them: expired ones (minted with a clock set in the past) and ones signed by a key
//! that is not in the JWKS.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use keyward_broker::clock::ManualClock;
use keyward_broker::kek::Kek;
use keyward_broker::keys::{KeyRing, KeySettings};
use keyward_broker::store::{DatabaseLocation, Store};
use keyward_broker::tokens::{MintRequest, MintRules, Minter, Signer, SigningAlgorithm};
use keyward_proto::claims::{Phase, RunChain};

/// Signs what the broker's minter would, with its real current key, but hands the token straight
/// out: no audit entry, which is what a forgery is.
#[derive(Debug)]
pub struct Forger {
    minter: Minter,
    signer: Arc<Signer>,
}

impl Forger {
    /// The compact JWS of the token the broker would mint for `request` at the forger's time.
    pub fn mint(&self, request: MintRequest) -> String {
        let claims = self.minter.claims(request).unwrap();
        self.signer.sign_compact(&serde_json::to_vec(&claims).unwrap()).unwrap()
    }
}

/// A forger over a `keyward dev` data directory's real keys, with a clock of our choosing.
pub async fn minter_at(data_dir: &Path, issuer: &str, now: i64) -> Forger {
    let store = Store::open(&DatabaseLocation::Sqlite(data_dir.join("keyward.db"))).await.unwrap();
    let kek = Kek::from_file(&data_dir.join("kek")).unwrap();
    let clock = ManualClock::at(now);
    let settings = KeySettings {
        algorithm: SigningAlgorithm::ES256,
        rotation_period: Duration::from_secs(86_400),
        jwks_max_age: Duration::from_secs(300),
        clock_skew: Duration::from_secs(30),
    };
    let keys = KeyRing::load(store, kek, Arc::new(clock.clone()), settings).await.unwrap();
    let rules =
        MintRules { allowed_audiences: vec!["vault".into(), "sts.amazonaws.com".into()], ..MintRules::default() };
    let keys = Arc::new(keys);
    let signer = keys.signer();
    Forger { minter: Minter::new(issuer.to_owned(), rules, keys, Arc::new(clock)), signer }
}

/// A plan request for `run_id` on `stack` for `audience`.
pub fn request(run_id: &str, stack: &str, audience: &str) -> MintRequest {
    MintRequest::new(RunChain::new(run_id, stack, stack, Phase::Plan), audience)
}

/// The decoded JOSE header of a compact JWS.
pub fn header(token: &str) -> serde_json::Value {
    let part = token.split('.').next().unwrap();
    serde_json::from_slice(&B64URL.decode(part).unwrap()).unwrap()
}

/// The decoded claims of a compact JWS (unverified).
pub fn claims(token: &str) -> serde_json::Value {
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&B64URL.decode(part).unwrap()).unwrap()
}

/// Re-signs `token`'s claims with a fresh P-256 key that no JWKS publishes, under header `kid`.
pub fn resign_with_foreign_key(token: &str, kid: &str) -> String {
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new()).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    let header = B64URL.encode(format!(r#"{{"alg":"ES256","kid":"{kid}","typ":"JWT"}}"#));
    let payload = token.split('.').nth(1).unwrap();
    let signing_input = format!("{header}.{payload}");
    let signature = pair.sign(&SystemRandom::new(), signing_input.as_bytes()).unwrap();
    format!("{signing_input}.{}", B64URL.encode(signature.as_ref()))
}

/// The current signing key of a configured broker's data directory (SQLite), given its KEK.
pub async fn broker_signer(data_dir: &Path, kek_base64: &str) -> Arc<Signer> {
    let store = Store::open(&DatabaseLocation::Sqlite(data_dir.join("keyward.db"))).await.unwrap();
    let kek = Kek::from_base64(kek_base64, "test").unwrap();
    let settings = KeySettings {
        algorithm: SigningAlgorithm::ES256,
        rotation_period: Duration::from_secs(86_400),
        jwks_max_age: Duration::from_secs(300),
        clock_skew: Duration::from_secs(30),
    };
    let keys = KeyRing::load(store, kek, Arc::new(ManualClock::at(0)), settings).await.unwrap();
    keys.signer()
}

/// A token with any header and claims, signed (ES256) by a fresh key no JWKS publishes.
pub fn foreign_token(header: &serde_json::Value, claims: &serde_json::Value) -> String {
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new()).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    let input = format!("{}.{}", B64URL.encode(header.to_string()), B64URL.encode(claims.to_string()));
    let signature = pair.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
    format!("{input}.{}", B64URL.encode(signature.as_ref()))
}

/// A token with any header and claims, signed (ES256) by a fresh key no JWKS publishes, whose
/// header also carries that key's self-signed certificate as `x5c`: a verifier that took its key
/// from `x5c` would accept it.
pub fn foreign_token_with_x5c(header: &serde_json::Value, claims: &serde_json::Value) -> String {
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new()).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    let certified = rcgen::KeyPair::try_from(pkcs8.as_ref()).unwrap();
    let certificate =
        rcgen::CertificateParams::new(vec!["attacker.example".to_owned()]).unwrap().self_signed(&certified).unwrap();
    let mut header = header.clone();
    header["x5c"] = serde_json::json!([base64::engine::general_purpose::STANDARD.encode(certificate.der())]);
    let input = format!("{}.{}", B64URL.encode(header.to_string()), B64URL.encode(claims.to_string()));
    let signature = pair.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
    format!("{input}.{}", B64URL.encode(signature.as_ref()))
}

/// `alg: HS256`, MACed with the given bytes as the secret (the classic "public key as HMAC
/// secret" confusion attack).
pub fn hs256_token(secret: &[u8], header: &serde_json::Value, claims: &serde_json::Value) -> String {
    let input = format!("{}.{}", B64URL.encode(header.to_string()), B64URL.encode(claims.to_string()));
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let tag = aws_lc_rs::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", B64URL.encode(tag.as_ref()))
}

/// The order of the P-256 group.
const P256_ORDER: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xbc, 0xe6, 0xfa,
    0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

/// The ES256 token's malleable twin: the same signing input with `(r, n − s)`, which verifies
/// just as well (ECDSA does not bind the signature's encoding).
pub fn ecdsa_twin(token: &str) -> String {
    let (input, signature) = token.rsplit_once('.').expect("a JWS");
    let raw = B64URL.decode(signature).expect("base64url signature");
    assert_eq!(raw.len(), 64, "an ES256 signature is r ‖ s");
    let (r, s) = raw.split_at(32);
    let mut twin_s = [0_u8; 32];
    let mut borrow = 0_i16;
    for i in (0..32).rev() {
        let mut digit = i16::from(P256_ORDER[i]) - i16::from(s[i]) - borrow;
        borrow = i16::from(digit < 0);
        if digit < 0 {
            digit += 256;
        }
        twin_s[i] = u8::try_from(digit).expect("a byte");
    }
    let twin: Vec<u8> = r.iter().chain(twin_s.iter()).copied().collect();
    format!("{input}.{}", B64URL.encode(twin))
}
