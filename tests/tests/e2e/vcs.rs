//! GitHub webhook deliveries (docs/vcs.md): real payloads from @octokit/webhooks-examples signed
//! by @octokit/webhooks-methods are queued once with their audit entry; a replay, a wrong or
//! missing signature, an oversized or malformed body and an unhandled event store nothing new.

use std::path::Path;
use std::sync::Arc;

use keyward_broker::clock::SystemClock;

use keyward_tests::broker::Broker;
use keyward_tests::fake_github::FakeGithub;
use keyward_tests::github_webhooks::{self, example, sign};
use serde_json::Value;

const SECRET: &str = "a-long-random-webhook-secret";

/// `keyward dev` with `[vcs.github]` for an App whose API `FakeGithub` answers (no stack uses the
/// example payloads' repository, so the worker calls it for nothing).
async fn broker(dir: &Path) -> (Broker, FakeGithub) {
    let github = FakeGithub::start(1, Arc::new(SystemClock)).await;
    let (key, secret, overlay) = (dir.join("app.pem"), dir.join("webhook-secret"), dir.join("vcs.toml"));
    std::fs::write(&key, github.private_key_pem()).unwrap();
    std::fs::write(&secret, SECRET).unwrap();
    let text = format!(
        "[vcs.github]\napp_id = 1\nprivate_key_file = {:?}\nwebhook_secret_file = {:?}\napi_url = {:?}\n",
        key.display().to_string(),
        secret.display().to_string(),
        github.url()
    );
    std::fs::write(&overlay, text).unwrap();
    (Broker::dev_with(&dir.join("data"), &["--config", overlay.to_str().unwrap()]).await, github)
}

async fn deliver(broker: &Broker, event: &str, delivery: &str, body: Vec<u8>, signature: Option<&str>) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("{}/v1/vcs/github/webhook", broker.addr))
        .header("x-github-event", event)
        .header("x-github-delivery", delivery)
        .header("content-type", "application/json")
        .body(body);
    if let Some(signature) = signature {
        request = request.header("x-hub-signature-256", signature);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn count(broker: &Broker, sql: &str) -> i64 {
    let url = format!("sqlite://{}?mode=rw", broker.data_dir.join("keyward.db").display());
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    let n: i64 = sqlx::Row::get(&sqlx::query(sqlx::AssertSqlSafe(sql.to_owned())).fetch_one(&pool).await.unwrap(), "n");
    pool.close().await;
    n
}

async fn queued(broker: &Broker) -> i64 {
    count(broker, "SELECT COUNT(*) AS n FROM vcs_deliveries").await
}

fn accepted_entries(broker: &Broker) -> Vec<Value> {
    let out = broker.cli(&["audit", "tail", "--kind", "vcs.delivery_accepted", "--json"]);
    assert!(out.success, "{}", out.stderr);
    out.stdout.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[tokio::test]
async fn a_signed_pull_request_is_queued_once_with_its_audit_entry() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, _github) = broker(dir.path()).await;
    let body = example("pull_request", Some("opened"));
    let payload: Value = serde_json::from_slice(&body).unwrap();
    let signature = sign(&body, SECRET);
    let (status, answer) = deliver(&broker, "pull_request", "d-1", body.clone(), Some(&signature)).await;
    assert_eq!((status, &answer), (202, &serde_json::json!({"queued": true})));
    assert_eq!(queued(&broker).await, 1);
    let sql = "SELECT COUNT(*) AS n FROM vcs_deliveries WHERE delivery_id = 'd-1' AND event = 'pull_request'";
    assert_eq!(count(&broker, sql).await, 1);
    let entries = accepted_entries(&broker);
    assert_eq!(entries.len(), 1, "{entries:?}");
    let text = entries[0].to_string();
    let pr = &payload["pull_request"];
    for expected in [
        payload["repository"]["full_name"].as_str().unwrap(),
        pr["head"]["sha"].as_str().unwrap(),
        payload["sender"]["login"].as_str().unwrap(),
        "\"d-1\"",
        "\"pull_request\"",
    ] {
        assert!(text.contains(expected), "{expected} missing from {text}");
    }
    assert!(text.contains(&format!("\"pull_request\":{}", pr["number"])), "{text}");
    assert!(!text.contains(SECRET));

    // The same delivery again: a duplicate, nothing new.
    let (status, answer) = deliver(&broker, "pull_request", "d-1", body, Some(&signature)).await;
    assert_eq!((status, answer), (200, serde_json::json!({"duplicate": true})));
    assert_eq!(queued(&broker).await, 1);
    assert_eq!(accepted_entries(&broker).len(), 1);

    // A push is queued too.
    let push = example("push", None);
    let signature = sign(&push, SECRET);
    assert_eq!(deliver(&broker, "push", "d-2", push, Some(&signature)).await.0, 202);
    assert_eq!(queued(&broker).await, 2);
    broker.stop();
}

#[tokio::test]
async fn unproven_oversized_malformed_and_unhandled_deliveries_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, _github) = broker(dir.path()).await;
    let body = example("pull_request", Some("opened"));
    let wrong = sign(&body, "another-secret-of-enough-length");
    assert_eq!(deliver(&broker, "pull_request", "w-1", body.clone(), Some(&wrong)).await.0, 401);
    assert_eq!(deliver(&broker, "pull_request", "w-2", body.clone(), None).await.0, 401);
    let mut tampered = body.clone();
    tampered.extend_from_slice(b" ");
    let signature = sign(&body, SECRET);
    assert_eq!(deliver(&broker, "pull_request", "w-3", tampered, Some(&signature)).await.0, 401);

    let oversized = vec![b' '; 25 * 1024 * 1024 + 1];
    assert_eq!(deliver(&broker, "pull_request", "w-4", oversized, Some(&signature)).await.0, 413);

    let malformed = b"{\"repository\": ".to_vec();
    let signature = sign(&malformed, SECRET);
    assert_eq!(deliver(&broker, "pull_request", "w-5", malformed, Some(&signature)).await.0, 400);

    // A repository webhook's delivery (no App installation): nothing to report back through.
    let repository_hook = github_webhooks::examples("pull_request", Some("opened"))
        .into_iter()
        .find(|e| e.get("installation").is_none())
        .map(|e| serde_json::to_vec(&e).unwrap())
        .unwrap();
    let signature = sign(&repository_hook, SECRET);
    let (status, answer) = deliver(&broker, "pull_request", "w-7", repository_hook, Some(&signature)).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["error_description"].as_str().unwrap().contains("names no installation"), "{answer}");

    let issue = example("issues", Some("opened"));
    let signature = sign(&issue, SECRET);
    let (status, answer) = deliver(&broker, "issues", "w-6", issue, Some(&signature)).await;
    assert_eq!(status, 202);
    assert!(answer["ignored"].as_str().unwrap().contains("issues"), "{answer}");

    assert_eq!(queued(&broker).await, 0);
    assert!(accepted_entries(&broker).is_empty());
    assert!(broker.log_text().contains("signature is missing or wrong"));
    broker.stop();
}

#[tokio::test]
async fn without_vcs_github_the_endpoint_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::dev(dir.path()).await;
    let body = example("ping", None);
    let signature = sign(&body, SECRET);
    assert_eq!(deliver(&broker, "ping", "n-1", body, Some(&signature)).await.0, 404);
    broker.stop();
}
