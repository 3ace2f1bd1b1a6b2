//! `POST /v1/token` with Keyward run tokens, on a broker configured with AWS targets in
//! "exchange in the worker" mode and the shipped policy library.

use std::path::Path;

use keyward_tests::audit::Audit;
use keyward_tests::broker::{Broker, ConfigExtra, TEST_KEK, exchange_form, write_config};
use keyward_tests::{free_addr, workspace_root};
use serde_json::{Value, json};

const APPLY_ROLE: &str = "arn:aws:iam::123456789012:role/network-apply";

async fn start(dir: &Path) -> Broker {
    let data_dir = dir.join("broker");
    let addr = free_addr();
    let config = dir.join("keyward.toml");
    let rest = format!(
        "[policy]\ndir = \"{}\"\n\
         [tokens]\nallowed_audiences = [\"sts.amazonaws.com\"]\n\
         [[targets]]\nname = \"network-apply\"\ntype = \"aws\"\naccess = \"write\"\nrole_arn = \"{APPLY_ROLE}\"\n\
         mode = \"worker\"\nduration = \"1h\"\nregion = \"eu-west-1\"\nlabels = {{ env = \"dev\" }}\n\
         write_subjects = [\"job\", \"run\"]\n\
         [[targets]]\nname = \"network-read\"\ntype = \"aws\"\naccess = \"read\"\n\
         role_arn = \"arn:aws:iam::123456789012:role/network-read\"\nmode = \"worker\"\nduration = \"1h\"\n",
        workspace_root().join("policies").display()
    );
    write_config(&config, addr, &data_dir, &ConfigExtra { rest: &rest, ..ConfigExtra::default() });
    Broker::serve(&config, &data_dir, &format!("http://{addr}"), &[("TEST_KEK", TEST_KEK)]).await
}

/// A run token addressed to the broker itself.
async fn run_token(broker: &Broker, run_id: &str, phase: &str, git_ref: &str) -> String {
    let (status, body) = broker
        .mint_raw(
            &json!({
                "stack": "network", "run_id": run_id, "phase": phase, "audience": broker.addr,
                "commit_sha": "0123abc", "ref": git_ref, "repository": "https://git.example.com/infra.git",
                "triggered_by": "alice",
            }),
            Some(&broker.admin_token),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn run_tokens_exchange_for_aws_worker_credentials_only_when_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path()).await;

    // Apply on main: allowed, for the policy's apply cap (1 h).
    let apply = run_token(&broker, "run-apply-1", "apply", "refs/heads/main").await;
    let (status, body) = broker.exchange_form(&exchange_form(&apply, "aws:network-apply")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["issued_token_type"], "urn:ietf:params:oauth:token-type:jwt");
    assert_eq!(body["aws"]["role_arn"], APPLY_ROLE);
    assert_eq!(body["aws"]["role_session_name"], "run-apply-1", "the session is named after the run");
    assert_eq!(body["aws"]["region"], "eu-west-1");
    assert_eq!(body["aws"]["duration_seconds"], 3600);
    let web_identity = body["access_token"].as_str().unwrap();
    let verdict = broker.pyjwt_verify(web_identity, "sts.amazonaws.com");
    assert_eq!(verdict["ok"], true, "{verdict}");
    assert_eq!(verdict["claims"]["run_id"], "run-apply-1");
    assert_eq!(verdict["claims"]["phase"], "apply");
    assert_eq!(verdict["claims"]["https://aws.amazon.com/source_identity"], "alice");
    assert_eq!(verdict["claims"]["https://aws.amazon.com/tags"]["principal_tags"]["run"], json!(["run-apply-1"]));

    // The same subject token a second time.
    let (status, body) = broker.exchange_form(&exchange_form(&apply, "aws:network-apply")).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")), "{body}");
    assert!(body["error_description"].as_str().unwrap().contains("already exchanged"));

    // A plan never gets a write target, whatever the policy says.
    let plan = run_token(&broker, "run-plan-1", "plan", "refs/heads/main").await;
    let (status, body) = broker.exchange_form(&exchange_form(&plan, "aws:network-apply")).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_target")), "{body}");
    assert!(body["error_description"].as_str().unwrap().contains("only apply-phase tokens"), "{body}");

    // A plan gets read credentials, for the policy's hour (data.json, ttl_caps).
    let plan = run_token(&broker, "run-plan-2", "plan", "refs/heads/feature/x").await;
    let (status, body) = broker.exchange_form(&exchange_form(&plan, "aws:network-read")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["aws"]["duration_seconds"], 3600);

    // The policy refuses an apply from a feature branch, and says why.
    let feature = run_token(&broker, "run-apply-2", "apply", "refs/heads/feature/x").await;
    let (status, body) = broker.exchange_form(&exchange_form(&feature, "aws:network-apply")).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_target")), "{body}");
    assert!(body["error_description"].as_str().unwrap().contains("needs a commit on refs/heads/main"), "{body}");

    // Asking for less than STS's 15-minute minimum is refused, never stretched.
    let short = run_token(&broker, "run-plan-3", "plan", "refs/heads/main").await;
    let mut short_form = exchange_form(&short, "aws:network-read");
    short_form.push(("ttl_seconds", "600"));
    let (status, body) = broker.exchange_form(&short_form).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_target")), "{body}");
    assert!(body["error_description"].as_str().unwrap().contains("below STS's minimum of 900s"), "{body}");

    // Tokens for someone else, unknown targets, malformed requests.
    let (status, sts) = broker
        .mint_raw(
            &json!({"stack": "network", "run_id": "r9", "phase": "apply", "audience": "sts.amazonaws.com"}),
            Some(&broker.admin_token),
        )
        .await;
    assert_eq!(status, 201);
    let (status, body) =
        broker.exchange_form(&exchange_form(sts["token"].as_str().unwrap(), "aws:network-apply")).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")), "{body}");
    assert!(body["error_description"].as_str().unwrap().contains("audience"), "{body}");
    let fresh = run_token(&broker, "run-apply-3", "apply", "refs/heads/main").await;
    let (status, body) = broker.exchange_form(&exchange_form(&fresh, "aws:nope")).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_target")), "{body}");
    let (status, body) = broker.exchange_form(&exchange_form(&fresh, "aws:network-apply")[1..]).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("unsupported_grant_type")), "{body}");
    let mut tampered = fresh.clone();
    tampered.insert(tampered.find('.').unwrap() + 5, 'x');
    let (status, body) = broker.exchange_form(&exchange_form(&tampered, "aws:network-apply")).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")), "{body}");

    // Every decision is on record; nothing secret is.
    let store = Audit::open(&broker.data_dir).await;
    assert_eq!(store.count("credentials.issued").await, 2);
    assert_eq!(store.count("credentials.allowed").await, 2);
    // Verified subjects' refusals: plan/write, feature branch, too short, replay. The wrong-audience
    // and tampered tokens proved nothing: logged, not audited (DESIGN.md §8.10).
    assert_eq!(store.count("credentials.denied").await, 4, "plan/write, feature branch, too short, replay");
    let events = store.for_run("run-apply-1").await;
    let issued = events.iter().find(|e| e.kind == "issued").unwrap();
    assert_eq!(issued.context["ref"], "refs/heads/main", "the run's context chain is on the entry");
    assert!(issued.context["request_id"].as_str().is_some_and(|id| !id.is_empty()));
    assert!(issued.context["remote_addr"].as_str().is_some_and(|a| a.starts_with("127.0.0.1:")));
    assert_eq!(store.check_tree().await, store.0.audit_size().await.unwrap());
    let details: Value = serde_json::from_str(&issued.details).unwrap();
    assert_eq!(details["role_session_name"], "run-apply-1");
    assert!(!issued.details.contains(web_identity) && !issued.reasons.contains(web_identity));
    assert!(!broker.log_text().contains(web_identity), "the minted token reached the log");
    assert!(!broker.log_text().contains(&apply), "the subject token reached the log");
}

/// Each subject token is exchanged once (DESIGN.md §8), also when copies race: the claim on its
/// `jti` commits with the decision, in one audit-log commit, before anything is handed out.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_copies_of_one_token_are_exchanged_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let broker = std::sync::Arc::new(start(dir.path()).await);
    let token = run_token(&broker, "run-race-1", "plan", "refs/heads/main").await;
    let mut copies = tokio::task::JoinSet::new();
    for _ in 0..24 {
        let (broker, token) = (std::sync::Arc::clone(&broker), token.clone());
        copies.spawn(async move { broker.exchange(&token, "aws:network-read").await });
    }
    let outcomes = copies.join_all().await;
    let granted: Vec<_> = outcomes.iter().filter(|(status, _)| *status == 200).collect();
    assert_eq!(granted.len(), 1, "{outcomes:?}");
    for (status, body) in outcomes.iter().filter(|(status, _)| *status != 200) {
        assert_eq!((*status, body["error"].as_str()), (400, Some("invalid_grant")), "{body}");
        assert!(body["error_description"].as_str().unwrap().contains("already exchanged"), "{body}");
    }

    let store = Audit::open(&broker.data_dir).await;
    let events = store.for_run("run-race-1").await;
    let exchanged: Vec<_> =
        events.iter().filter(|e| e.kind == "minted" && e.details.contains("\"aud\":\"sts.amazonaws.com\"")).collect();
    assert_eq!(exchanged.len(), 1, "only the winner's web-identity token is on record: {events:?}");
    let count = |kind: &str| events.iter().filter(|e| e.kind == kind).count();
    assert_eq!((count("allowed"), count("issued"), count("denied")), (1, 1, 23), "every refusal is on record");
}
