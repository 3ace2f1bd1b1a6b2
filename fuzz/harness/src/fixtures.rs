//! Fixed keys, expectations and the shipped policy set the checks run against, built once per
//! process. The keys are fixed so that seeds signed by them (`fuzz/corpus/`) stay valid.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _,
    RSA_PKCS1_SHA256, RsaKeyPair,
};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use keyward_broker::audit::checkpoint::VerifierKey;
use keyward_broker::joblogs::AgentKey;
use keyward_broker::policy::PolicySet;
use keyward_broker::policy::library::LIBRARY;
use keyward_broker::tokens::verify::{Algorithm, Expectations, KeySet};
use keyward_broker::tokens::{Signer, SigningAlgorithm};

/// `iss` and `aud` of the broker the checks stand in for (run tokens carry it as both).
pub const ISSUER: &str = "https://keyward.fuzz";
/// The time every check runs at.
pub const NOW: i64 = 1_800_000_000;
/// The audit log's key name.
pub const LOG_NAME: &str = "keyward.fuzz/audit";

const ES256_PKCS8: &[u8] = include_bytes!("../keys/es256.pk8");
const RS256_PKCS8: &[u8] = include_bytes!("../keys/rs256.pk8");
const AGENT_PKCS8: &[u8] = include_bytes!("../keys/agent.pk8");
const CA_PKCS8: &[u8] = include_bytes!("../keys/ca.pk8");
const LOG_SEED: [u8; 32] = [0x4b; 32];

/// The ES256 run-token signer.
pub fn es256() -> &'static Signer {
    static SIGNER: OnceLock<Signer> = OnceLock::new();
    SIGNER.get_or_init(|| Signer::from_pkcs8(SigningAlgorithm::ES256, ES256_PKCS8).expect("keys/es256.pk8"))
}

/// The RS256 run-token signer.
pub fn rs256() -> &'static Signer {
    static SIGNER: OnceLock<Signer> = OnceLock::new();
    SIGNER.get_or_init(|| Signer::from_pkcs8(SigningAlgorithm::RS256, RS256_PKCS8).expect("keys/rs256.pk8"))
}

/// The JWKS publishing both signers, as the broker serves it.
pub fn jwks_json() -> String {
    serde_json::json!({ "keys": [es256().jwk(), rs256().jwk()] }).to_string()
}

/// [`jwks_json`] parsed.
pub fn key_set() -> &'static KeySet {
    static KEYS: OnceLock<KeySet> = OnceLock::new();
    KEYS.get_or_init(|| KeySet::from_jwks(&jwks_json()).expect("the fixture JWKS"))
}

/// What a run token must satisfy here.
pub fn expectations(require_nbf: bool) -> Expectations {
    Expectations {
        issuer: ISSUER.to_owned(),
        audience: ISSUER.to_owned(),
        algorithms: vec![Algorithm::ES256, Algorithm::RS256],
        leeway: Duration::from_secs(30),
        require_nbf,
    }
}

/// A compact JWS over exactly these header and claims bytes, whatever they say: lets the fuzzer
/// reach the claim checks, which only run on a good signature.
pub fn sign_jws(header: &[u8], claims: &[u8], rsa: bool) -> String {
    let input = format!("{}.{}", B64URL.encode(header), B64URL.encode(claims));
    let random = SystemRandom::new();
    let signature = if rsa {
        static PAIR: OnceLock<RsaKeyPair> = OnceLock::new();
        let pair = PAIR.get_or_init(|| RsaKeyPair::from_pkcs8(RS256_PKCS8).expect("keys/rs256.pk8"));
        let mut signature = vec![0; pair.public_modulus_len()];
        pair.sign(&RSA_PKCS1_SHA256, &random, input.as_bytes(), &mut signature).expect("RSA signing");
        signature
    } else {
        static PAIR: OnceLock<EcdsaKeyPair> = OnceLock::new();
        let pair = PAIR.get_or_init(|| {
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, ES256_PKCS8).expect("keys/es256.pk8")
        });
        pair.sign(&random, input.as_bytes()).expect("ECDSA signing").as_ref().to_vec()
    };
    format!("{input}.{}", B64URL.encode(signature))
}

fn log_pair() -> &'static Ed25519KeyPair {
    static PAIR: OnceLock<Ed25519KeyPair> = OnceLock::new();
    PAIR.get_or_init(|| Ed25519KeyPair::from_seed_unchecked(&LOG_SEED).expect("Ed25519 seed"))
}

/// `SHA-256(name ‖ "\n" ‖ 0x01 ‖ public key)[..4]`, the signed-note key ID.
fn log_key_id() -> [u8; 4] {
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    context.update(LOG_NAME.as_bytes());
    context.update(b"\n\x01");
    context.update(log_pair().public_key().as_ref());
    let digest = context.finish();
    let mut id = [0; 4];
    id.copy_from_slice(digest.as_ref().get(..4).expect("32 bytes"));
    id
}

/// The audit log's verifier key, parsed from its `<name>+<id>+<key>` text.
pub fn log_verifier() -> &'static VerifierKey {
    static KEY: OnceLock<VerifierKey> = OnceLock::new();
    KEY.get_or_init(|| {
        let mut key = vec![0x01];
        key.extend_from_slice(log_pair().public_key().as_ref());
        let id: String = log_key_id().iter().map(|b| format!("{b:02x}")).collect();
        format!("{LOG_NAME}+{id}+{}", B64.encode(key)).parse().expect("the fixture verifier key")
    })
}

/// A checkpoint note for a tree of `size` entries with head `root`, signed by the log key.
pub fn sign_checkpoint(size: u64, root: &[u8; 32]) -> String {
    let body = format!("{LOG_NAME}\n{size}\n{}\n", B64.encode(root));
    let mut blob = log_key_id().to_vec();
    blob.extend_from_slice(log_pair().sign(body.as_bytes()).as_ref());
    format!("{body}\n\u{2014} {LOG_NAME} {}\n", B64.encode(blob))
}

/// An agent's signing key: signs log chunks.
pub fn agent_pair() -> &'static EcdsaKeyPair {
    static PAIR: OnceLock<EcdsaKeyPair> = OnceLock::new();
    PAIR.get_or_init(|| EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, AGENT_PKCS8).expect("keys/agent.pk8"))
}

/// ECDSA P-256 (ASN.1) signature of the agent key over `message`.
pub fn agent_sign(message: &[u8]) -> Vec<u8> {
    agent_pair().sign(&SystemRandom::new(), message).expect("ECDSA signing").as_ref().to_vec()
}

/// The agent CA and an agent certificate it issued over [`agent_pair`]'s key, valid for a year
/// around [`NOW`], both DER; made as the broker's CA makes them (client auth, SPIFFE URI).
pub fn agent_certificates() -> &'static (Vec<u8>, Vec<u8>) {
    static CERTS: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    CERTS.get_or_init(|| {
        use rcgen::{
            BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
            SanType,
        };
        let at = |t: i64| time::OffsetDateTime::from_unix_timestamp(t).expect("a valid time");
        let ca_key = KeyPair::try_from(CA_PKCS8).expect("keys/ca.pk8");
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        ca.not_before = at(NOW - 365 * 86_400);
        ca.not_after = at(NOW + 365 * 86_400);
        let ca_der = ca.self_signed(&ca_key).expect("the CA").der().to_vec();
        let agent_key = KeyPair::try_from(AGENT_PKCS8).expect("keys/agent.pk8");
        let mut agent = CertificateParams::default();
        agent.subject_alt_names =
            vec![SanType::URI("spiffe://keyward.fuzz/pool/blue/agent/a1".try_into().expect("a URI"))];
        agent.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        agent.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        agent.not_before = at(NOW - 365 * 86_400);
        agent.not_after = at(NOW + 365 * 86_400);
        let issuer = Issuer::new(ca, ca_key);
        let agent_der = agent.signed_by(&agent_key, &issuer).expect("the agent certificate").der().to_vec();
        (ca_der, agent_der)
    })
}

/// The public half of [`agent_pair`], as the broker reads it from the agent's certificate.
pub fn agent_key() -> &'static AgentKey {
    static KEY: OnceLock<AgentKey> = OnceLock::new();
    KEY.get_or_init(|| AgentKey::from_certificate(&agent_certificates().1).expect("the agent certificate"))
}

/// The shipped policy library (`policies/`), compiled as the broker compiles it.
pub fn policies() -> &'static PolicySet {
    static SET: OnceLock<PolicySet> = OnceLock::new();
    SET.get_or_init(|| {
        let sources: Vec<(String, String)> = LIBRARY
            .iter()
            .filter(|(name, _)| name.ends_with(".rego") || *name == "data.json")
            .map(|(name, text)| ((*name).to_owned(), (*text).to_owned()))
            .collect();
        PolicySet::from_sources(Path::new("policies"), &sources, Duration::from_secs(2))
            .expect("the shipped policy library compiles")
    })
}
