//! The GitHub-Actions-style flow, end to end: a CI system's OIDC token (OpenBao's identity
//! provider, a real issuer nobody here wrote, with GitHub's claim names) is exchanged through
//! `keyward creds aws --format credential-process` for STS credentials (moto), with the session
//! named after the CI run and the run's context in the tags.

// A panic in a test is a failed test: unwrap and index freely.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use keyward_tests::audit::Audit;
use keyward_tests::broker::{Broker, ConfigExtra, TEST_KEK, keyward, write_config};
use keyward_tests::moto::Moto;
use keyward_tests::openbao::OpenBao;
use keyward_tests::{free_addr, workspace_root};
use serde_json::{Value, json};

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

#[tokio::test(flavor = "multi_thread")]
async fn a_ci_token_becomes_sts_credentials_named_after_the_ci_run() {
    let dir = tempfile::tempdir().unwrap();
    let bao = OpenBao::start(dir.path()).await;
    let moto = Moto::start(dir.path()).await;
    let github_like = json!({
        "repository": "acme/infra", "repository_owner": "acme", "ref": "refs/heads/main",
        "sha": SHA, "run_id": "4711", "actor": "alice",
    });
    let ci = bao.external_issuer("deploy", &github_like).await;
    let mut forked = github_like.clone();
    forked["repository_owner"] = json!("evil");
    let fork = bao.external_issuer("fork", &forked).await;

    let data_dir = dir.path().join("broker");
    let addr = free_addr();
    let config = dir.path().join("keyward.toml");
    let issuer_entry = |name: &str, audience: &str| {
        format!(
            "[[issuers]]\nname = \"{name}\"\nissuer = \"{}\"\naudience = \"{audience}\"\nalgorithms = [\"RS256\"]\n\
             require_nbf = false\nphase = \"apply\"\nrequired_claims = {{ repository_owner = \"acme\" }}\n",
            ci.issuer
        )
    };
    let rest = format!(
        "[policy]\ndir = \"{}\"\n[tokens]\nallowed_audiences = [\"sts.amazonaws.com\"]\n{}{}\
         [[targets]]\nname = \"network-apply\"\ntype = \"aws\"\naccess = \"write\"\n\
         role_arn = \"arn:aws:iam::123456789012:role/network-apply\"\nsts_endpoint = \"{}\"\nduration = \"1h\"\n\
         labels = {{ env = \"dev\" }}\n",
        workspace_root().join("policies").display(),
        issuer_entry("bao-ci", &ci.audience),
        issuer_entry("bao-fork", &fork.audience),
        moto.endpoint,
    );
    write_config(&config, addr, &data_dir, &ConfigExtra { rest: &rest, ..ConfigExtra::default() });
    let broker = Broker::serve(&config, &data_dir, &format!("http://{addr}"), &[("TEST_KEK", TEST_KEK)]).await;

    let token_file = dir.path().join("ci-token");
    let creds = |token: &str| {
        std::fs::write(&token_file, token).unwrap();
        keyward(
            &["creds", "aws", "--target", "aws:network-apply", "--subject-token-file", token_file.to_str().unwrap()],
            &[("KEYWARD_ADDR", broker.addr.as_str())],
        )
    };

    let token = bao.identity_token(&ci).await;
    let out = creds(&token);
    assert!(out.success, "{}", out.stderr);
    let process: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(process["Version"], 1);
    assert!(process["AccessKeyId"].as_str().unwrap().starts_with("ASIA"));

    // The STS client retries a transient failure (a loaded machine), so count distinct requests:
    // a retry repeats the same web identity token.
    let sent = moto.sts_requests();
    assert!(!sent.is_empty(), "STS was called");
    assert!(
        sent.iter().all(|r| r.field("WebIdentityToken") == sent[0].field("WebIdentityToken")),
        "one exchange made one STS request (retried at most)"
    );
    let before_refusals = sent.len();
    assert_eq!(sent[0].field("RoleSessionName"), Some("4711"), "the STS session is named after the CI run");
    let web_identity = sent[0].field("WebIdentityToken").unwrap();
    let verdict = broker.pyjwt_verify(web_identity, "sts.amazonaws.com");
    assert_eq!(verdict["ok"], true, "{verdict}");
    let tags = &verdict["claims"]["https://aws.amazon.com/tags"]["principal_tags"];
    assert_eq!(tags["run"], json!(["4711"]));
    assert_eq!(tags["stack"], json!(["acme/infra"]));
    assert_eq!(tags["commit"], json!([SHA]));
    assert_eq!(verdict["claims"]["https://aws.amazon.com/source_identity"], "alice");
    assert_eq!(verdict["claims"]["repository"], "acme/infra");
    assert_eq!(verdict["claims"]["ref"], "refs/heads/main");

    // The same CI token again: refused (OpenBao's tokens have no jti; the signature is the key).
    let out = creds(&token);
    assert!(!out.success && out.stderr.contains("already exchanged"), "{}", out.stderr);

    // Every entry of the CI run names the exchange after the issuer entry the operator configured,
    // the same way each time (not its URL on one entry and `ci` on the next).
    let entries = Audit::open(&broker.data_dir).await.for_run("4711").await;
    let kinds: Vec<&str> = entries.iter().map(|e| e.kind.as_str()).collect();
    assert!(["minted", "allowed", "issued", "denied"].iter().all(|k| kinds.contains(k)), "{kinds:?}");
    for entry in &entries {
        assert_eq!(entry.context["actor"], "exchange:ci:bao-ci", "{}", entry.body);
    }

    // A token whose required claim differs (a fork's repository owner).
    let out = creds(&bao.identity_token(&fork).await);
    assert!(!out.success, "{}", out.stdout);
    assert!(out.stderr.contains("repository_owner"), "{}", out.stderr);
    assert_eq!(moto.sts_requests().len(), before_refusals, "no refused token reached STS");
}
