//! Writes the seed corpus (`fuzz/corpus/<target>/`) from the broker's own code and the fixture
//! keys: valid tokens, a real export with signed checkpoints, a signed chunk chain, a bundle, one
//! message of each type, and a few near misses. The plan JSON seeds are real `terraform show
//! -json` output and are kept as they are.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml -p keyward-fuzz-harness --bin seed-corpus`
//!
//! Signatures are randomized, so a rerun rewrites the signed seeds with other bytes; the corpus
//! test (`harness/tests/corpus.rs`) says whether each still lands where its name says.

#![allow(clippy::expect_used)]

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD as B64URL};
use keyward_broker::audit::merkle::{leaf_hash, root};
use keyward_broker::audit::{AuditEvent, Context, Kind};
use keyward_broker::joblogs::chunk_to_check;
use keyward_fuzz_harness::fixtures::{ISSUER, NOW, agent_certificates, agent_sign, es256, rs256, sign_checkpoint};
use keyward_proto::agent_v1::{
    AgentMessage, CredentialsRequest, EnrollRequest, FetchPlanRequest, Heartbeat, Hello, Isolation, JobResult,
    PlanPart, RenewRequest, SignedLogChunk, SourceCredentialsRequest, agent_message,
};
use keyward_proto::logs::{GENESIS, chunk_digest};
use prost::Message as _;
use serde_json::{Value, json};

fn main() {
    let root = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus"));
    let mut seeds = Seeds { root };
    jwt(&mut seeds);
    jwks(&mut seeds);
    token_form(&mut seeds);
    policy_input(&mut seeds);
    audit_export(&mut seeds);
    let chain = log_chunk(&mut seeds);
    log_bundle(&mut seeds, &chain);
    agent_proto(&mut seeds, &chain);
    vcs_event(&mut seeds);
}

struct Seeds {
    root: PathBuf,
}

impl Seeds {
    fn write(&mut self, target: &str, name: &str, bytes: impl AsRef<[u8]>) {
        let dir = self.root.join(target);
        std::fs::create_dir_all(&dir).expect("corpus directory");
        std::fs::write(dir.join(name), bytes).expect("seed");
    }

    /// A seed whose first byte is a mode or selector.
    fn write_with(&mut self, target: &str, name: &str, first: u8, rest: impl AsRef<[u8]>) {
        let mut bytes = vec![first];
        bytes.extend_from_slice(rest.as_ref());
        self.write(target, name, bytes);
    }
}

fn run_claims() -> Value {
    json!({
        "iss": ISSUER, "sub": "stack:network:phase:plan", "aud": ISSUER,
        "iat": NOW - 10, "nbf": NOW - 10, "exp": NOW + 290, "jti": "01J9Z3V6T1K2M3N4P5Q6R7S8T9",
        "run_id": "run-01J9Z3", "stack_id": "network", "stack": "network", "phase": "plan", "scope": "plan",
        "repository": "https://git.example/infra.git", "commit_sha": "0123456789abcdef0123456789abcdef01234567",
        "ref": "refs/heads/main", "pull_request": 42, "triggered_by": "alice", "approved_by": ["bob"],
        "aws_tags": {"principal_tags": {"run": ["run-01J9Z3"]}, "transitive_tag_keys": ["run"]},
    })
}

fn jwt(seeds: &mut Seeds) {
    let claims = run_claims().to_string();
    seeds.write_with("jwt", "accept-es256", 0, es256().sign_compact(claims.as_bytes()).expect("ES256"));
    seeds.write_with("jwt", "accept-rs256", 0, rs256().sign_compact(claims.as_bytes()).expect("RS256"));
    let header = |alg: &str| json!({"alg": alg, "kid": es256().kid(), "typ": "JWT"}).to_string();
    let oracle =
        |header: String, claims: &Value| [header.into_bytes(), vec![0], claims.to_string().into_bytes()].concat();
    seeds.write_with("jwt", "accept-signed-claims", 1, oracle(header("ES256"), &run_claims()));
    let mut audiences = run_claims();
    audiences["aud"] = json!(["sts.amazonaws.com", ISSUER]);
    seeds.write_with("jwt", "accept-audience-array", 1, oracle(header("ES256"), &audiences));
    let mut expired = run_claims();
    expired["exp"] = json!(NOW - 61);
    seeds.write_with("jwt", "refuse-expired", 0, es256().sign_compact(expired.to_string().as_bytes()).expect("ES256"));
    let mut string_exp = run_claims();
    string_exp["exp"] = json!((NOW + 300).to_string());
    seeds.write_with("jwt", "refuse-string-exp", 1, oracle(header("ES256"), &string_exp));
    seeds.write_with("jwt", "refuse-hs256", 1, oracle(header("HS256"), &run_claims()));
    let none = format!("{}.{}.", B64URL.encode(r#"{"alg":"none"}"#), B64URL.encode(&claims));
    seeds.write_with("jwt", "refuse-alg-none", 0, none);
    let crit = json!({"alg": "ES256", "kid": es256().kid(), "crit": ["exp"]}).to_string();
    seeds.write_with("jwt", "refuse-crit", 1, oracle(crit, &run_claims()));
}

fn jwks(seeds: &mut Seeds) {
    seeds.write("jwks", "accept-keyward", keyward_fuzz_harness::fixtures::jwks_json());
    let mut rsa = serde_json::to_value(rs256().jwk()).expect("JWK");
    rsa["n"] = json!(format!("AAAA{}", rsa["n"].as_str().unwrap_or_default()));
    let mixed = json!({"keys": [
        {"kty": "EC", "crv": "P-384", "kid": "p384", "alg": "ES384", "use": "sig",
         "x": B64URL.encode([1u8; 48]), "y": B64URL.encode([2u8; 48])},
        {"kty": "EC", "crv": "P-256", "kid": "enc", "use": "enc", "x": B64URL.encode([3u8; 32]), "y": B64URL.encode([4u8; 32])},
        {"kty": "oct", "kid": "hmac", "k": B64URL.encode(b"secret")},
        {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": B64URL.encode([5u8; 32])},
        rsa,
        es256().jwk(),
    ]});
    seeds.write("jwks", "accept-mixed", mixed.to_string());
    seeds.write("jwks", "refuse-no-keys", r#"{"keys": {"kty": "EC"}}"#);
}

fn token_form(seeds: &mut Seeds) {
    let token = es256().sign_compact(run_claims().to_string().as_bytes()).expect("ES256");
    let form = |fields: &[(&str, &str)]| serde_urlencoded::to_string(fields).expect("form");
    let grant = ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange");
    let jwt = ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt");
    seeds.write(
        "token_form",
        "accept-resource",
        form(&[grant, ("subject_token", &token), jwt, ("resource", "aws:network-plan")]),
    );
    seeds.write(
        "token_form",
        "accept-audience-ttl",
        form(&[
            grant,
            ("subject_token", &token),
            ("subject_token_type", "urn:ietf:params:oauth:token-type:id_token"),
            ("audience", "vault:prod-apply"),
            ("requested_token_type", "urn:ietf:params:oauth:token-type:jwt"),
            ("ttl_seconds", "900"),
            ("scope", "ignored"),
        ]),
    );
    seeds.write("token_form", "refuse-grant-type", form(&[("grant_type", "client_credentials"), jwt]));
    seeds.write(
        "token_form",
        "refuse-two-targets",
        form(&[grant, ("subject_token", "x"), jwt, ("resource", "aws:a"), ("audience", "aws:b")]),
    );
    seeds.write(
        "token_form",
        "refuse-ttl-not-a-number",
        form(&[grant, ("subject_token", "x"), jwt, ("resource", "aws:a"), ("ttl_seconds", "-1")]),
    );
}

fn policy_input(seeds: &mut Seeds) {
    // The claims of a GitHub Actions OIDC token (their documented shape).
    let github = json!({
        "jti": "example-id", "sub": "repo:acme/infra:ref:refs/heads/main", "aud": ISSUER,
        "ref": "refs/heads/main", "sha": "0123456789abcdef0123456789abcdef01234567",
        "repository": "acme/infra", "repository_owner": "acme", "repository_owner_id": "65",
        "run_id": "8675309", "run_number": "42", "run_attempt": "1", "repository_visibility": "private",
        "repository_id": "74", "actor_id": "12", "actor": "octocat", "workflow": "deploy",
        "head_ref": "", "base_ref": "", "event_name": "push", "ref_type": "branch", "environment": "prod",
        "job_workflow_ref": "acme/infra/.github/workflows/deploy.yml@refs/heads/main",
        "iss": "https://token.actions.githubusercontent.com", "nbf": NOW - 10, "exp": NOW + 290, "iat": NOW - 10,
    });
    seeds.write_with("policy_input", "accept-github-read", 1, github.to_string());
    seeds.write_with("policy_input", "accept-github-write", 3, github.to_string());
    let mut no_jti = github.clone();
    if let Some(claims) = no_jti.as_object_mut() {
        claims.remove("jti");
        claims.insert("run_id".to_owned(), json!(8_675_309));
        claims.insert("sha".to_owned(), json!("not-hex"));
    }
    seeds.write_with("policy_input", "accept-github-without-jti", 5, no_jti.to_string());
    seeds.write_with("policy_input", "accept-run-token", 0, run_claims().to_string());
    let mut apply = run_claims();
    apply["phase"] = json!("apply");
    seeds.write_with("policy_input", "accept-run-token-apply", 6, apply.to_string());
    let mut no_phase = run_claims();
    no_phase.as_object_mut().map(|c| c.remove("phase"));
    seeds.write_with("policy_input", "refuse-run-token-without-phase", 0, no_phase.to_string());
}

fn audit_export(seeds: &mut Seeds) {
    let context = Context {
        run_id: Some("run-01J9Z3".to_owned()),
        stack_id: Some("network".to_owned()),
        phase: Some("plan".to_owned()),
        repository: Some("https://git.example/infra.git".to_owned()),
        commit_sha: Some("0123456789abcdef0123456789abcdef01234567".to_owned()),
        triggered_by: Some("alice".to_owned()),
        approved_by: vec!["bob".to_owned()],
        actor: Some("exchange:ci:github".to_owned()),
        target: Some("aws:network-plan".to_owned()),
        request_id: Some("req-1".to_owned()),
        ..Context::default()
    };
    let events = [
        AuditEvent::new(Kind::PolicyLoaded, NOW - 100, Context::default())
            .with("digest", "ab".repeat(32))
            .with("files", vec!["credentials.rego", "run.rego"]),
        AuditEvent::new(Kind::CredentialsAllowed, NOW - 50, context.clone())
            .with("policy_digest", "ab".repeat(32))
            .with("subject_claims", json!({"workflow": "deploy", "run_attempt": "1"})),
        AuditEvent::new(Kind::TokenMinted, NOW - 50, context.clone())
            .with("jti", "01J9Z3V6T1K2M3N4P5Q6R7S8T9")
            .with("exp", NOW + 850)
            .with("note", "tab\there, quote \" and \u{e9}\u{1f600}"),
        AuditEvent::new(Kind::CredentialsDenied, NOW - 40, context)
            .with("reasons", vec!["target 'prod-apply' grants write access; only apply-phase runs may use it"]),
    ];
    let bodies: Vec<String> =
        events.iter().enumerate().map(|(seq, e)| e.prepare().expect("event").body(seq as u64)).collect();
    let leaves: Vec<[u8; 32]> = bodies.iter().map(|b| leaf_hash(b.as_bytes())).collect();
    let line = |body: &str| format!("{{\"entry\":{body},\"leaf_hash\":\"{}\"}}\n", hex(&leaf_hash(body.as_bytes())));
    let export: String = bodies.iter().map(|b| line(b)).collect();
    let head = |size: u64| root(&leaves[..], size).expect("tree head");
    let mut whole = vec![0];
    whole.extend_from_slice(export.as_bytes());
    for size in [4, 2] {
        whole.push(0);
        whole.extend_from_slice(sign_checkpoint(size, &head(size)).as_bytes());
    }
    seeds.write("audit_export", "accept-export-with-checkpoints", &whole);
    whole[0] = 1;
    seeds.write("audit_export", "accept-rehashed", &whole);
    let tail: String = bodies.iter().skip(2).map(|b| line(b)).collect();
    seeds.write_with("audit_export", "accept-export-tail", 0, tail);
    let edited = export.replacen("alice", "mallory", 1);
    seeds.write_with("audit_export", "refuse-edited-entry", 0, &edited);
    let mut rehashed = vec![1];
    rehashed.extend_from_slice(edited.as_bytes());
    rehashed.push(0);
    rehashed.extend_from_slice(sign_checkpoint(4, &head(4)).as_bytes());
    seeds.write("audit_export", "refuse-edited-and-rehashed", rehashed);
    let mut out_of_order: Vec<String> = bodies.iter().map(|b| line(b)).collect();
    out_of_order.swap(1, 2);
    seeds.write_with("audit_export", "refuse-reordered", 1, out_of_order.concat());
    let cut: String = bodies.iter().take(3).map(|b| line(b)).collect();
    seeds.write(
        "audit_export",
        "refuse-cut-off-end",
        [cut.into_bytes(), vec![0], sign_checkpoint(4, &head(4)).into_bytes()].concat(),
    );
}

/// Signs a chain of chunks; returns them.
fn log_chunk(seeds: &mut Seeds) -> Vec<SignedLogChunk> {
    let mut chain: Vec<SignedLogChunk> = Vec::new();
    for (stream, data) in [
        ("keyward", &b"$ terraform init -input=false\n"[..]),
        ("stdout", b"Initializing the backend...\nTerraform has been successfully initialized!\n"),
        ("stderr", b"\x1b[33mWarning:\x1b[0m ****** masked\n"),
    ] {
        let prev = chain.last().map_or(GENESIS.to_vec(), |c| c.digest.clone());
        let mut chunk = SignedLogChunk {
            run_id: "run-01J9Z3".to_owned(),
            job_id: "job-01J9Z4".to_owned(),
            stream: stream.to_owned(),
            seq: chain.len() as u64,
            prev_digest: prev,
            data: data.to_vec(),
            digest: Vec::new(),
            signature: Vec::new(),
            fencing_token: 3,
        };
        let digest = chunk_digest(&chunk_to_check(&chunk).fields);
        chunk.signature = agent_sign(&digest);
        chunk.digest = digest.to_vec();
        chain.push(chunk);
    }
    seeds.write_with("log_chunk", "accept-first", 0, chain[0].encode_to_vec());
    seeds.write_with("log_chunk", "accept-second", 2, chain[1].encode_to_vec());
    let mut unsigned = chain[0].clone();
    unsigned.data = b"re-signed by the harness\n".to_vec();
    unsigned.signature.clear();
    seeds.write_with("log_chunk", "accept-resigned", 1, unsigned.encode_to_vec());
    let mut edited = chain[0].clone();
    edited.data = b"Initialising".to_vec();
    seeds.write_with("log_chunk", "refuse-edited", 0, edited.encode_to_vec());
    seeds.write_with("log_chunk", "refuse-gap", 0, chain[2].encode_to_vec());
    chain
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn pem(label: &str, der: &[u8]) -> String {
    keyward_proto::encoding::pem(label, der)
}

fn log_bundle(seeds: &mut Seeds, chain: &[SignedLogChunk]) {
    let (ca, agent) = agent_certificates();
    let fingerprint = keyward_broker::joblogs::verify::fingerprint(agent);
    let chunks: Vec<Value> = chain
        .iter()
        .map(|c| {
            json!({
                "seq": c.seq, "stream": c.stream, "prev_digest": hex(&c.prev_digest),
                "data": STANDARD.encode(&c.data), "digest": hex(&c.digest),
                "signature": STANDARD.encode(&c.signature), "signer": fingerprint, "received_at": NOW - 5,
            })
        })
        .collect();
    let head = chain.last().map(|c| hex(&c.digest));
    let bundle = json!({
        "format": "keyward-log-bundle/1",
        "run_id": "run-01J9Z3",
        "ca_certificate": pem("CERTIFICATE", ca),
        "signers": [{"fingerprint": fingerprint, "agent_id": "a1", "certificate": pem("CERTIFICATE", agent)}],
        "leases": [{"job_id": "job-01J9Z4", "phase": "plan", "fencing_token": 3,
                    "sealed": {"digest": head, "chunks": chain.len()}, "chunks": chunks}],
    });
    seeds.write("log_bundle", "accept-sealed", serde_json::to_vec_pretty(&bundle).expect("bundle"));
    let mut wrong_seal = bundle.clone();
    wrong_seal["leases"][0]["sealed"]["chunks"] = json!(2);
    seeds.write("log_bundle", "refuse-wrong-seal", serde_json::to_vec(&wrong_seal).expect("bundle"));
}

fn agent_proto(seeds: &mut Seeds, chain: &[SignedLogChunk]) {
    let key = rcgen::KeyPair::generate().expect("key");
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .expect("params")
        .serialize_request(&key)
        .expect("CSR")
        .der()
        .to_vec();
    let join_token = format!("kwj1.{}.{}", "ab".repeat(32), B64URL.encode([7u8; 32]));
    let enroll = EnrollRequest {
        join_token,
        csr_der: csr.clone(),
        hostname: "worker-1".to_owned(),
        agent_version: "0.1.0".to_owned(),
    };
    seeds.write_with("agent_proto", "accept-enroll", 0, enroll.encode_to_vec());
    seeds.write_with("agent_proto", "accept-renew", 1, RenewRequest { csr_der: csr }.encode_to_vec());
    let message = |kind| AgentMessage { kind: Some(kind) }.encode_to_vec();
    let hello = Hello {
        agent_version: "0.1.0".to_owned(),
        capacity: 2,
        terraform_version: "1.11.4".to_owned(),
        job_isolation: Isolation::Process.into(),
        runs_exec: false,
        tools: Vec::new(),
    };
    seeds.write_with("agent_proto", "accept-hello", 2, message(agent_message::Kind::Hello(hello)));
    let heartbeat = Heartbeat { running_job_ids: vec!["job-01J9Z4".to_owned()] };
    seeds.write_with("agent_proto", "accept-heartbeat", 2, message(agent_message::Kind::Heartbeat(heartbeat)));
    seeds.write_with("agent_proto", "accept-log-chunk", 2, message(agent_message::Kind::LogChunk(chain[0].clone())));
    let result = JobResult {
        job_id: "job-01J9Z4".to_owned(),
        fencing_token: 3,
        success: true,
        error: String::new(),
        final_log_digest: chain.last().map(|c| c.digest.clone()).unwrap_or_default(),
        log_chunks: chain.len() as u64,
        drift: None,
        isolation_layers: vec!["user-namespace".to_owned(), "seccomp".to_owned()],
    };
    seeds.write_with("agent_proto", "accept-result", 2, message(agent_message::Kind::Result(result)));
    let credentials =
        CredentialsRequest { job_id: "job-01J9Z4".to_owned(), fencing_token: 3, target: "aws:network-plan".to_owned() };
    seeds.write_with("agent_proto", "accept-credentials", 3, credentials.encode_to_vec());
    let part = PlanPart {
        job_id: "job-01J9Z4".to_owned(),
        fencing_token: 3,
        plan_file: b"PK\x03\x04 a saved plan".to_vec(),
        plan_json: br#"{"format_version":"1.2","resource_changes":[]}"#.to_vec(),
    };
    seeds.write_with("agent_proto", "accept-plan-part", 4, part.encode_to_vec());
    let fetch = FetchPlanRequest { job_id: "job-01J9Z5".to_owned(), fencing_token: 4 };
    seeds.write_with("agent_proto", "accept-fetch-plan", 5, fetch.encode_to_vec());
    let source = SourceCredentialsRequest { job_id: "job-01J9Z4".to_owned(), fencing_token: 3 };
    seeds.write_with("agent_proto", "accept-source-credentials", 6, source.encode_to_vec());
    seeds.write_with("agent_proto", "refuse-truncated", 0, enroll_prefix());
}

/// A field header promising more bytes than follow.
fn enroll_prefix() -> Vec<u8> {
    vec![0x0a, 0x40, b'k', b'w']
}

/// The broker's own webhook test payloads (real `@octokit/webhooks-examples` ones), each behind
/// its selector byte, and near misses.
fn vcs_event(seeds: &mut Seeds) {
    let testdata = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../broker/src/vcs/testdata");
    let read = |name: &str| std::fs::read(testdata.join(name)).expect("a broker webhook test payload");
    seeds.write_with("vcs_event", "accept-pull-request-opened", 0, read("pull_request.opened.json"));
    seeds.write_with("vcs_event", "accept-pull-request-fork", 0, read("pull_request.opened-fork.json"));
    seeds.write_with("vcs_event", "accept-push", 1, read("push.json"));
    seeds.write_with("vcs_event", "accept-push-tag-deleted", 1, read("push.tag-deleted.json"));
    seeds.write_with("vcs_event", "refuse-ping", 2, read("ping.json"));
    seeds.write_with("vcs_event", "refuse-push-as-pull-request", 0, read("push.json"));
}
