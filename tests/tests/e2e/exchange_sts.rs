//! Broker-mode AWS targets: the broker calls STS `AssumeRoleWithWebIdentity` (moto's server here)
//! and returns credentials in the AWS CLI `credential_process` shape. moto validates nothing, so
//! the test reads back what the broker sent from moto's request recording.

use std::path::Path;

use keyward_tests::audit::Audit;
use keyward_tests::broker::{Broker, ConfigExtra, TEST_KEK, write_config};
use keyward_tests::moto::Moto;
use keyward_tests::now;
use keyward_tests::{free_addr, workspace_root};
use serde_json::{Value, json};

const ROLE: &str = "arn:aws:iam::123456789012:role/network-apply";

async fn start(dir: &Path, sts_endpoint: &str) -> Broker {
    let data_dir = dir.join("broker");
    let addr = free_addr();
    let config = dir.join("keyward.toml");
    let rest = format!(
        "[policy]\ndir = \"{}\"\n[tokens]\nallowed_audiences = [\"sts.amazonaws.com\"]\n\
         [[targets]]\nname = \"network-apply\"\ntype = \"aws\"\naccess = \"write\"\nrole_arn = \"{ROLE}\"\n\
         region = \"eu-west-1\"\nsts_endpoint = \"{sts_endpoint}\"\nduration = \"1h\"\nmode = \"broker\"\n\
         labels = {{ env = \"dev\" }}\nwrite_subjects = [\"job\", \"run\"]\n\
         [[targets]]\nname = \"network-worker\"\ntype = \"aws\"\naccess = \"write\"\nrole_arn = \"{ROLE}\"\n\
         sts_endpoint = \"{sts_endpoint}\"\nduration = \"30m\"\nmode = \"worker\"\n\
         session_tags = [\"run\", \"commit\"]\nsource_identity = \"first_approver\"\nwrite_subjects = [\"run\"]\n\
         labels = {{ env = \"dev\" }}\n",
        workspace_root().join("policies").display()
    );
    write_config(&config, addr, &data_dir, &ConfigExtra { rest: &rest, ..ConfigExtra::default() });
    Broker::serve(&config, &data_dir, &format!("http://{addr}"), &[("TEST_KEK", TEST_KEK)]).await
}

async fn apply_token(broker: &Broker, run_id: &str) -> String {
    let body = json!({
        "stack": "network", "run_id": run_id, "phase": "apply", "audience": broker.addr, "commit_sha": "0123abc",
        "ref": "refs/heads/main", "pull_request": 42, "ticket": "CHG-7", "triggered_by": "alice",
    });
    let (status, minted) = broker.mint_raw(&body, Some(&broker.admin_token)).await;
    assert_eq!(status, 201, "{minted}");
    minted["token"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_broker_assumes_the_role_with_a_token_naming_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path()).await;
    let broker = start(dir.path(), &moto.endpoint).await;
    let token = apply_token(&broker, "run-sts-1").await;

    let (status, body) = broker.exchange(&token, "aws:network-apply").await;
    assert_eq!(status, 200, "{body}");
    let credentials = &body["aws_credentials"];
    assert_eq!(credentials["Version"], 1);
    let access_key_id = credentials["AccessKeyId"].as_str().unwrap();
    let secret = credentials["SecretAccessKey"].as_str().unwrap();
    let session_token = credentials["SessionToken"].as_str().unwrap();
    assert!(access_key_id.starts_with("ASIA") && !secret.is_empty() && !session_token.is_empty(), "{credentials}");
    assert!(credentials["Expiration"].as_str().unwrap().ends_with('Z'));
    // What STS was asked for (`DurationSeconds`, below) is the exact check of the policy's 1 h;
    // `expires_in` counts down from it on the clock.
    assert!((1..=3600).contains(&body["expires_in"].as_i64().unwrap()), "session lasts at most 1 h: {body}");
    assert!(body["aws"]["assumed_role_arn"].as_str().unwrap().ends_with("/network-apply/run-sts-1"), "{body}");

    // What the broker actually sent to STS.
    let requests = moto.sts_requests();
    assert_eq!(requests.len(), 1, "exactly one STS call");
    let sent = &requests[0];
    assert_eq!(sent.field("Action"), Some("AssumeRoleWithWebIdentity"));
    assert_eq!(sent.field("RoleArn"), Some(ROLE));
    assert_eq!(sent.field("RoleSessionName"), Some("run-sts-1"), "the session is named after the run");
    assert_eq!(sent.field("DurationSeconds"), Some("3600"));
    let web_identity = sent.field("WebIdentityToken").unwrap();
    let verdict = broker.pyjwt_verify(web_identity, "sts.amazonaws.com");
    assert_eq!(verdict["ok"], true, "{verdict}");
    let claims = &verdict["claims"];
    assert_eq!(claims["sub"], "stack:network:phase:apply");
    assert_eq!(claims["run_id"], "run-sts-1");
    assert_eq!(claims["https://aws.amazon.com/source_identity"], "alice");
    assert_eq!(claims["https://aws.amazon.com/tags"]["principal_tags"]["pr"], json!(["42"]));
    assert_eq!(claims["https://aws.amazon.com/tags"]["principal_tags"]["ticket"], json!(["CHG-7"]));
    assert!(claims["exp"].as_i64().unwrap() <= now() + 300, "the web-identity token itself is short-lived");

    // On record: the access key ID, never the secret parts.
    let store = Audit::open(&broker.data_dir).await;
    let events = store.for_run("run-sts-1").await;
    let issued = events.iter().find(|e| e.kind == "issued").expect("an issued event");
    let details: Value = serde_json::from_str(&issued.details).unwrap();
    assert_eq!(details["access_key_id"], access_key_id);
    assert_eq!(details["role_session_name"], "run-sts-1");
    for event in &events {
        for secret_part in [secret, session_token, web_identity] {
            assert!(
                !event.details.contains(secret_part) && !event.reasons.contains(secret_part),
                "a secret is on record"
            );
        }
    }
    let log = broker.log_text();
    for secret_part in [secret, session_token, web_identity, token.as_str()] {
        assert!(!log.contains(secret_part), "a secret reached the broker log");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn keyward_creds_aws_prints_credential_process_json_and_env_lines() {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path()).await;
    let broker = start(dir.path(), &moto.endpoint).await;
    let token_file = dir.path().join("token");
    let creds = |target: &str, format: &str, run_id: &str| {
        let token = futures_token(&broker, run_id);
        std::fs::write(&token_file, token).unwrap();
        keyward_tests::broker::keyward(
            &[
                "creds",
                "aws",
                "--target",
                target,
                "--subject-token-file",
                token_file.to_str().unwrap(),
                "--format",
                format,
            ],
            &[("KEYWARD_ADDR", broker.addr.as_str())],
        )
    };

    let out = creds("aws:network-apply", "credential-process", "run-cli-1");
    assert!(out.success, "{}", out.stderr);
    let process: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(process["Version"], 1);
    for key in ["AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration"] {
        assert!(process[key].as_str().is_some_and(|v| !v.is_empty()), "{key} in {process}");
    }

    let out = creds("network-apply", "env", "run-cli-2");
    assert!(out.success, "{}", out.stderr);
    for var in ["AWS_ACCESS_KEY_ID=ASIA", "AWS_SECRET_ACCESS_KEY=", "AWS_SESSION_TOKEN=", "AWS_CREDENTIAL_EXPIRATION="]
    {
        assert!(out.stdout.contains(&format!("export {var}")), "{var} in {}", out.stdout);
    }

    // Worker mode: the CLI calls STS itself with the token the broker minted.
    let before = moto.sts_requests().len();
    let out = creds("aws:network-worker", "credential-process", "run-cli-3");
    assert!(out.success, "{}", out.stderr);
    let requests = moto.sts_requests();
    assert_eq!(requests.len(), before + 1, "the CLI made the STS call");
    let sent = requests.last().unwrap();
    assert_eq!((sent.field("RoleSessionName"), sent.field("DurationSeconds")), (Some("run-cli-3"), Some("1800")));
    // This target selects its own tags and source identity.
    let verdict = broker.pyjwt_verify(sent.field("WebIdentityToken").unwrap(), "sts.amazonaws.com");
    let tags = &verdict["claims"]["https://aws.amazon.com/tags"]["principal_tags"];
    assert_eq!(tags.as_object().unwrap().keys().collect::<Vec<_>>(), ["commit", "run"], "{verdict}");
    // No review was recorded for this run, so there is no approver: the submitter stands behind it.
    assert_eq!(verdict["claims"]["https://aws.amazon.com/source_identity"], "alice", "nobody approved");

    // A refused exchange is a non-zero exit with the broker's reason and nothing on stdout.
    std::fs::write(&token_file, "not-a-token").unwrap();
    let out = keyward_tests::broker::keyward(
        &["creds", "aws", "--target", "aws:network-apply", "--subject-token-file", token_file.to_str().unwrap()],
        &[("KEYWARD_ADDR", broker.addr.as_str())],
    );
    assert!(!out.success && out.stdout.is_empty());
    assert!(out.stderr.contains("invalid_grant"), "{}", out.stderr);
}

/// Mints an apply token from a sync context (the CLI closure above runs blocking commands).
fn futures_token(broker: &Broker, run_id: &str) -> String {
    let handle = tokio::runtime::Handle::current();
    tokio::task::block_in_place(|| handle.block_on(apply_token(broker, run_id)))
}

#[tokio::test(flavor = "multi_thread")]
async fn sts_down_is_a_clear_502_and_nothing_is_issued() {
    let dir = tempfile::tempdir().unwrap();
    let closed = format!("http://{}", free_addr());
    let broker = start(dir.path(), &closed).await;
    let token = apply_token(&broker, "run-sts-down").await;
    let (status, body) = broker.exchange(&token, "aws:network-apply").await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"], "temporarily_unavailable");
    assert!(body["error_description"].as_str().unwrap().contains("AWS STS is unavailable"), "{body}");
    assert!(body.get("aws_credentials").is_none() && body.get("access_token").is_none());
    let store = Audit::open(&broker.data_dir).await;
    assert_eq!(store.count("credentials.issued").await, 0);
    let events = store.for_run("run-sts-down").await;
    assert!(events.iter().any(|e| e.kind == "denied" && e.reasons.contains("unavailable")), "the failure is on record");
}

/// STS failing (a named fake: moto cannot answer 500) or hanging (moto itself, stopped with
/// SIGSTOP): bounded retries, a deadline, a clear 502, and no credentials from anywhere else.
#[tokio::test(flavor = "multi_thread")]
async fn sts_errors_and_hangs_are_retried_boundedly_then_reported() {
    use keyward_tests::fake_upstream::{FakeUpstream, Speaks};

    let refused = |what: &str, status: u16, body: &Value| {
        assert_eq!((status, body["error"].as_str()), (502, Some("temporarily_unavailable")), "{what}: {body}");
        assert!(body["error_description"].as_str().unwrap().contains("AWS STS is unavailable"), "{what}: {body}");
        assert!(body.get("aws_credentials").is_none(), "{what}: {body}");
    };

    let dir = tempfile::tempdir().unwrap();
    let sts = FakeUpstream::start(Speaks::Sts).await;
    let broker = start(dir.path(), &sts.endpoint).await;
    let (status, body) = broker.exchange(&apply_token(&broker, "run-sts-500").await, "aws:network-apply").await;
    refused("a 500", status, &body);
    assert!((1..=3).contains(&sts.calls()), "at most 3 attempts, got {}", sts.calls());
    assert_eq!(Audit::open(&broker.data_dir).await.count("credentials.issued").await, 0);

    // A hang: the real STS stand-in accepts the connection and never answers. A 502 (not the
    // request deadline's 503) shows the STS call's own deadline ended it.
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path()).await;
    let broker = start(dir.path(), &moto.endpoint).await;
    let token = apply_token(&broker, "run-sts-hang").await;
    let frozen = moto.frozen();
    let (status, body) = broker.exchange(&token, "aws:network-apply").await;
    drop(frozen);
    refused("a hang", status, &body);
    assert_eq!(Audit::open(&broker.data_dir).await.count("credentials.issued").await, 0);
}

/// A policy that allows everything, with a session policy for runs named `scoped-*` and a
/// 15-minute cap for runs named `short-*`.
const DECIDING_POLICY: &str = r#"package keyward.credentials

allow := true

session_policy := {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}]} if startswith(input.run.id, "scoped-")

ttl_seconds := 900 if startswith(input.run.id, "short-")
"#;

/// Review M4: in worker mode the job calls STS itself, so a session policy or a lifetime below
/// the target's that the policy decided could not be enforced: the exchange is refused, with the
/// reason on record and in the answer, and nothing is minted. Broker mode carries both out. The
/// worker-mode token itself never outlives the decision, even when tokens live longer by default.
#[tokio::test(flavor = "multi_thread")]
async fn worker_mode_refuses_what_only_the_broker_could_enforce() {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path()).await;
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(policies.join("credentials.rego"), DECIDING_POLICY).unwrap();
    let data_dir = dir.path().join("broker");
    let addr = free_addr();
    let config = dir.path().join("keyward.toml");
    let rest = format!(
        "[policy]\ndir = \"{}\"\n[tokens]\nallowed_audiences = [\"sts.amazonaws.com\"]\ndefault_ttl = \"1h\"\n\
         [[targets]]\nname = \"network-apply\"\ntype = \"aws\"\naccess = \"write\"\nrole_arn = \"{ROLE}\"\n\
         sts_endpoint = \"{sts}\"\nduration = \"1h\"\nmode = \"broker\"\nwrite_subjects = [\"run\"]\n\
         [[targets]]\nname = \"network-worker\"\ntype = \"aws\"\naccess = \"write\"\nrole_arn = \"{ROLE}\"\n\
         sts_endpoint = \"{sts}\"\nduration = \"30m\"\nmode = \"worker\"\nwrite_subjects = [\"run\"]\n",
        policies.display(),
        sts = moto.endpoint,
    );
    write_config(&config, addr, &data_dir, &ConfigExtra { rest: &rest, ..ConfigExtra::default() });
    let broker = Broker::serve(&config, &data_dir, &format!("http://{addr}"), &[("TEST_KEK", TEST_KEK)]).await;
    let store = Audit::open(&broker.data_dir).await;

    for (run_id, words) in [
        ("scoped-worker", "the policy set a session_policy for target `aws:network-worker`, which is in worker mode"),
        ("short-worker", "the policy set ttl_seconds 900 for target `aws:network-worker`, which is in worker mode"),
    ] {
        let (status, body) = broker.exchange(&apply_token(&broker, run_id).await, "aws:network-worker").await;
        assert_eq!(status, 400, "{run_id}: {body}");
        let description = body["error_description"].as_str().unwrap();
        assert!(description.contains(words) && description.contains("use broker mode"), "{run_id}: {body}");
        assert!(body.get("access_token").is_none(), "{run_id}: {body}");
        let events = store.for_run(run_id).await;
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        // The run token the admin minted, then the refusal: no token for STS, nothing issued.
        assert_eq!(kinds, ["minted", "denied"], "{run_id}");
        assert!(events[1].reasons.contains(words), "{run_id}: {}", events[1].reasons);
    }
    assert_eq!(moto.sts_requests().len(), 0);

    // Broker mode carries both out: the session policy and the 15 minutes reach STS.
    let (status, body) = broker.exchange(&apply_token(&broker, "scoped-broker").await, "aws:network-apply").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = broker.exchange(&apply_token(&broker, "short-broker").await, "aws:network-apply").await;
    assert_eq!(status, 200, "{body}");
    let requests = moto.sts_requests();
    let policy: Value = serde_json::from_str(requests[0].field("Policy").expect("a session policy")).unwrap();
    assert_eq!(policy["Statement"][0]["Action"], "s3:GetObject");
    assert_eq!((requests[1].field("Policy"), requests[1].field("DurationSeconds")), (None, Some("900")));

    // Nothing to refuse: the worker-mode token lives the target's 30 minutes, not the 1 h default.
    let (status, body) = broker.exchange(&apply_token(&broker, "plain-worker").await, "aws:network-worker").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["aws"]["duration_seconds"], 1800);
    let verdict = broker.pyjwt_verify(body["access_token"].as_str().unwrap(), "sts.amazonaws.com");
    let claims = &verdict["claims"];
    assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 1800, "{verdict}");
}
