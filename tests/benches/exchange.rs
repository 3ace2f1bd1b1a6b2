//! `POST /v1/token` end to end over HTTP (worker mode: verify, replay check, policy, records,
//! mint), side by side with OpenBao's `auth/jwt/login` (verify a JWT against a role, issue a
//! Vault token) measured in the same run on the same machine.
//!
//! `cargo bench -p keyward-tests --bench exchange` (needs `cargo build --bins` and the test peers:
//! `scripts/install-test-peers`). Request counts are fixed and small; the run stops by itself.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, missing_docs)]

use std::sync::Arc;
use std::time::Instant;

use keyward_tests::broker::{Broker, ConfigExtra, TEST_KEK, write_config};
use keyward_tests::openbao::OpenBao;
use keyward_tests::{forge, free_addr, workspace_root};
use serde_json::json;

/// Requests per side; `KEYWARD_BENCH_REQUESTS` overrides (e.g. to profile a longer run).
fn request_count() -> usize {
    std::env::var("KEYWARD_BENCH_REQUESTS").ok().and_then(|v| v.parse().ok()).unwrap_or(5000)
}
const CONCURRENCY: usize = 16;

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Sends every request, `CONCURRENCY` at a time; returns requests per second.
async fn run(name: &str, requests: Vec<reqwest::RequestBuilder>) -> f64 {
    let queue = Arc::new(tokio::sync::Mutex::new(requests));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..CONCURRENCY {
        let queue = Arc::clone(&queue);
        workers.push(tokio::spawn(async move {
            let mut failures = 0usize;
            loop {
                let Some(request) = queue.lock().await.pop() else { break };
                let response = request.send().await.unwrap();
                if !response.status().is_success() {
                    failures += 1;
                }
            }
            failures
        }));
    }
    let mut failures = 0;
    for worker in workers {
        failures += worker.await.unwrap();
    }
    let elapsed = started.elapsed();
    let count = request_count();
    let rate = count as f64 / elapsed.as_secs_f64();
    println!("{name:<34} {count} requests in {elapsed:>8.2?}: {rate:>8.0}/s ({failures} failed)");
    assert_eq!(failures, 0, "{name}: requests failed");
    rate
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("broker");
    let addr = free_addr();
    let config = dir.path().join("keyward.toml");
    let rest = format!(
        "[log]\nlevel = \"warn\"\n[policy]\ndir = \"{}\"\n[tokens]\nallowed_audiences = [\"sts.amazonaws.com\", \"vault\"]\n\
         [[targets]]\nname = \"dev\"\ntype = \"aws\"\naccess = \"read\"\nrole_arn = \"arn:aws:iam::123456789012:role/dev\"\n\
         mode = \"worker\"\nduration = \"1h\"\n",
        workspace_root().join("policies").display()
    );
    write_config(&config, addr, &data_dir, &ConfigExtra { rest: &rest, ..ConfigExtra::default() });
    let broker = Broker::serve(&config, &data_dir, &format!("http://{addr}"), &[("TEST_KEK", TEST_KEK)]).await;
    let bao = OpenBao::start(dir.path()).await;
    bao.trust_issuer(&broker.addr).await;
    bao.jwt_role("bench", "vault", json!({ "stack_id": "net" })).await;

    let signer = forge::broker_signer(&data_dir, TEST_KEK).await;
    let token = |i: usize, aud: &str| {
        let claims = json!({
            "iss": broker.addr, "aud": aud, "sub": "stack:net:phase:plan", "iat": now(), "nbf": now(), "exp": now() + 600,
            "jti": format!("bench-{aud}-{i}"), "run_id": format!("run-{i}"), "stack_id": "net", "stack": "net",
            "phase": "plan", "scope": "read", "ref": "refs/heads/main", "commit_sha": "0123abc",
        });
        signer.sign_compact(claims.to_string().as_bytes()).unwrap()
    };
    let client = reqwest::Client::builder().pool_max_idle_per_host(CONCURRENCY).build().unwrap();

    println!("\nPOST /v1/token vs OpenBao auth/jwt/login, {CONCURRENCY} concurrent clients, 2 cores\n");
    let exchanges: Vec<_> = (0..request_count())
        .map(|i| {
            let form = vec![
                ("grant_type".to_owned(), "urn:ietf:params:oauth:grant-type:token-exchange".to_owned()),
                ("subject_token".to_owned(), token(i, &broker.addr)),
                ("subject_token_type".to_owned(), "urn:ietf:params:oauth:token-type:jwt".to_owned()),
                ("resource".to_owned(), "aws:dev".to_owned()),
            ];
            client.post(format!("{}/v1/token", broker.addr)).form(&form)
        })
        .collect();
    let logins: Vec<_> = (0..request_count())
        .map(|i| {
            client
                .post(format!("{}/v1/auth/jwt/login", bao.addr))
                .json(&json!({ "role": "bench", "jwt": token(i, "vault") }))
        })
        .collect();
    let keyward = run("keyward POST /v1/token (worker)", exchanges).await;
    let openbao = run("openbao auth/jwt/login", logins).await;
    println!("\nratio keyward/openbao: {:.2}x\n", keyward / openbao);
}
