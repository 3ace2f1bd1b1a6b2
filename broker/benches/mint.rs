//! Token minting throughput, against the raw signature cost measured in the same run.
//!
//! `cargo bench -p keyward-broker --bench mint`. Criterion runs on one thread, so elements/s is
//! tokens per second per core. Baselines: the bare aws-lc-rs signature over a token-sized input
//! (the floor nothing can beat), and re-parsing the PKCS#8 key before every signature (what the
//! broker avoids by holding keys parsed).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, RSA_PKCS1_SHA256, RsaKeyPair};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use keyward_broker::clock::SystemClock;
use keyward_broker::tokens::{CurrentKey as _, FixedKey, MintRequest, MintRules, Minter, Signer, SigningAlgorithm};
use keyward_proto::claims::{Phase, RunChain};

/// A minter over one fresh key: minting is pure, so no store and no runtime are involved.
fn minter(algorithm: SigningAlgorithm) -> (Minter, FixedKey) {
    let (signer, _) = Signer::generate(algorithm).unwrap();
    let key = FixedKey::new(signer);
    let rules = MintRules { allowed_audiences: vec!["sts.amazonaws.com".into()], ..MintRules::default() };
    let minter = Minter::new("https://keyward.example.com".into(), rules, Arc::new(key.clone()), Arc::new(SystemClock));
    (minter, key)
}

/// A realistic apply-phase request: every optional claim present.
fn request() -> MintRequest {
    let run = RunChain {
        repository: Some("https://git.example.com/platform/infrastructure.git".into()),
        commit_sha: Some("0123456789abcdef0123456789abcdef01234567".into()),
        git_ref: Some("refs/heads/main".into()),
        pull_request: Some(4711),
        ticket: Some("CHG-20261123-042".into()),
        triggered_by: Some("alice@example.com".into()),
        approved_by: vec!["bob@example.com".into(), "carol@example.com".into()],
        ..RunChain::new("run-01JD5Z8Q4M6V7X3K2B9N0C1D2E", "stk-network-prod", "network-prod", Phase::Apply)
    };
    MintRequest {
        pool: Some("prod-eu".into()),
        agent_id: Some("agent-7f3a".into()),
        ..MintRequest::new(run, "sts.amazonaws.com")
    }
}

fn bench(c: &mut Criterion) {
    let rng = SystemRandom::new();
    let (es256, es256_key) = minter(SigningAlgorithm::ES256);
    let (rs256, _) = minter(SigningAlgorithm::RS256);
    let request = request();
    // What the minter signs: the header and the claims, as the same key signs them.
    let claims = serde_json::to_vec(es256.mint(request.clone()).unwrap().claims()).unwrap();
    let token = es256_key.signer().sign_compact(&claims).unwrap();
    let signing_input_len = token.rsplit_once('.').unwrap().0.len();
    let message = vec![b'a'; signing_input_len];

    let (_, ec_pkcs8) = Signer::generate(SigningAlgorithm::ES256).unwrap();
    let ec_pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &ec_pkcs8).unwrap();
    let (_, rsa_pkcs8) = Signer::generate(SigningAlgorithm::RS256).unwrap();
    let rsa_pair = RsaKeyPair::from_pkcs8(&rsa_pkcs8).unwrap();

    let mut group = c.benchmark_group("mint");
    group.throughput(Throughput::Elements(1));
    group.bench_function("es256/raw_signature_baseline", |b| {
        b.iter(|| ec_pair.sign(&rng, black_box(&message)).unwrap());
    });
    group.bench_function("es256/reparse_key_per_token_baseline", |b| {
        b.iter(|| {
            let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, black_box(&ec_pkcs8)).unwrap();
            pair.sign(&rng, black_box(&message)).unwrap()
        });
    });
    // The request is built outside the timed region: in the broker it is the HTTP body, parsed.
    group.bench_function("es256/mint_token", |b| {
        b.iter_batched(|| request.clone(), |r| es256.mint(black_box(r)).unwrap(), BatchSize::PerIteration);
    });
    group.bench_function("rs256/raw_signature_baseline", |b| {
        let mut signature = vec![0u8; rsa_pair.public_modulus_len()];
        b.iter(|| rsa_pair.sign(&RSA_PKCS1_SHA256, &rng, black_box(&message), &mut signature).unwrap());
    });
    group.bench_function("rs256/mint_token", |b| {
        b.iter_batched(|| request.clone(), |r| rs256.mint(black_box(r)).unwrap(), BatchSize::PerIteration);
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
