//! DESIGN.md §8.2: a token naming an unknown key causes at most one JWKS refresh per interval. A
//! flood of unknown `kid`s does not make the broker hammer the issuer; a real key rotation is
//! picked up once the interval has passed. And a CI token without `jti` is single-use even against
//! ECDSA malleability (security review M2).

use std::time::{Duration, Instant};

use keyward_tests::broker::{Broker, ConfigExtra, TEST_KEK, exchange_form, write_config};
use keyward_tests::fake_issuer::FakeIssuer;
use keyward_tests::now;
use keyward_tests::{eventually, free_addr, http, workspace_root};
use serde_json::{Value, json};

fn claims(jti: &str) -> Value {
    json!({ "aud": "keyward-test", "iat": now(), "nbf": now(), "exp": now() + 300, "jti": jti, "run_id": jti, "repository": "acme/infra" })
}

/// Sends `count` exchanges at once, each with a token from `token(i)`; their answers.
async fn all_at_once(broker: &Broker, count: usize, token: impl Fn(usize) -> String) -> Vec<(u16, Value)> {
    let tasks: Vec<_> = (0..count)
        .map(|i| {
            let form: Vec<(String, String)> =
                exchange_form(&token(i), "aws:dev").into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
            let url = format!("{}/v1/token", broker.addr);
            tokio::spawn(async move {
                let response = http().post(url).form(&form).send().await.unwrap();
                (response.status().as_u16(), response.json::<Value>().await.unwrap())
            })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    answers
}

/// Within one refresh interval (an hour here, so no clock is involved) a flood of tokens naming
/// keys nobody knows makes the broker fetch the issuer's keys no more than the once it already has.
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_unknown_keys_refetches_nothing_within_the_interval() {
    let issuer = FakeIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let broker = broker_for(&issuer, dir.path(), 3600).await;
    assert_eq!(issuer.jwks_fetches(), 0, "keys are fetched on first use, not at start");

    let (status, body) = broker.exchange(&issuer.token(claims("first")), "aws:dev").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(issuer.jwks_fetches(), 1);

    let flood = all_at_once(&broker, 20, |i| issuer.token_from_unknown_key(claims(&format!("flood-{i}")))).await;
    for (status, body) in flood {
        assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")), "{body}");
        assert!(body["error_description"].as_str().unwrap().contains("unknown key"), "{body}");
    }
    assert_eq!(issuer.jwks_fetches(), 1, "no refetch within the interval, however many unknown kids");
    // A real rotation waits for the interval too: the new key is not fetched yet.
    issuer.rotate();
    let (status, body) = broker.exchange(&issuer.token(claims("rotated-early")), "aws:dev").await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")), "{body}");
    assert_eq!(issuer.jwks_fetches(), 1);
}

/// With a short interval, a real rotation is picked up by one refresh once the interval has
/// passed; an endpoint that answers with an endless document is cut off at the cap.
#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_key_is_picked_up_by_one_refresh_after_the_interval() {
    let issuer = FakeIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let broker = broker_for(&issuer, dir.path(), 1).await;
    let (status, body) = broker.exchange(&issuer.token(claims("first")), "aws:dev").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(issuer.jwks_fetches(), 1);

    // Tokens from the new key are refused (unknown key) until the interval has passed on the
    // broker's clock; then one refresh finds the key.
    issuer.rotate();
    let mut attempt = 0;
    let broker = &broker;
    eventually("the rotated key to verify", Duration::from_secs(30), || {
        attempt += 1;
        let token = issuer.token(claims(&format!("rotated-{attempt}")));
        async move {
            let (status, body) = broker.exchange(&token, "aws:dev").await;
            if status != 200 {
                assert!(body["error_description"].as_str().unwrap().contains("unknown key"), "{body}");
            }
            (status == 200).then_some(())
        }
    })
    .await;
    assert_eq!(issuer.jwks_fetches(), 2, "one refresh picked the new key up");

    // An endpoint that answers with an endless document is cut off at the cap, and the keys it
    // served before stay unknown for the new key: a clear 502, nothing issued.
    issuer.rotate();
    issuer.pad_jwks(300 * 1024);
    let body = eventually("the oversized key set to be fetched", Duration::from_secs(30), || {
        attempt += 1;
        let token = issuer.token(claims(&format!("oversized-{attempt}")));
        async move {
            let (status, body) = broker.exchange(&token, "aws:dev").await;
            (status != 400).then_some((status, body))
        }
    })
    .await;
    let (status, body) = body;
    assert_eq!((status, body["error"].as_str()), (502, Some("temporarily_unavailable")), "{body}");
    assert!(body["error_description"].as_str().unwrap().contains("larger than 256 KiB"), "{body}");
    assert!(body.get("access_token").is_none());
}

/// Security review M2: a CI token without `jti` is single-use by a digest of what it says, not of
/// its signature, so its ECDSA twin `(r, n − s)` — which verifies just as well — is a replay.
#[tokio::test(flavor = "multi_thread")]
async fn a_ci_tokens_malleable_twin_is_refused_as_a_replay() {
    let issuer = FakeIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let broker = broker_for(&issuer, dir.path(), 30).await;

    let token = issuer.token(json!({ "aud": "keyward-test", "iat": now(), "nbf": now(), "exp": now() + 300,
                                     "run_id": "twin-1", "repository": "acme/infra" }));
    let twin = keyward_tests::forge::ecdsa_twin(&token);
    assert_ne!(twin, token);
    let (status, body) = broker.exchange(&token, "aws:dev").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = broker.exchange(&twin, "aws:dev").await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")), "{body}");
    assert!(body["error_description"].as_str().unwrap().contains("already exchanged"), "{body}");
}

/// A broker trusting the fake issuer `issuer` (ES256, refresh interval `refresh_s`).
async fn broker_for(issuer: &FakeIssuer, dir: &std::path::Path, refresh_s: u64) -> Broker {
    let data_dir = dir.join("broker");
    let addr = free_addr();
    let config = dir.join("keyward.toml");
    let rest = format!(
        "[policy]\ndir = \"{}\"\n[tokens]\nallowed_audiences = [\"sts.amazonaws.com\"]\n\
         [[issuers]]\nname = \"fake\"\nissuer = \"{}\"\naudience = \"keyward-test\"\nalgorithms = [\"ES256\"]\n\
         jwks_refresh_interval = \"{refresh_s}s\"\nrequired_claims = {{ repository = \"acme/infra\" }}\n\
         targets = [\"aws:dev\"]\n\
         [[targets]]\nname = \"dev\"\ntype = \"aws\"\naccess = \"read\"\nrole_arn = \"arn:aws:iam::123456789012:role/dev\"\n\
         mode = \"worker\"\n",
        workspace_root().join("policies").display(),
        issuer.url(),
    );
    write_config(&config, addr, &data_dir, &ConfigExtra { rest: &rest, ..ConfigExtra::default() });
    Broker::serve(&config, &data_dir, &format!("http://{addr}"), &[("TEST_KEK", TEST_KEK)]).await
}

/// Security review M3: cached issuer keys expire after the JWKS response's `max-age`, so a key
/// the issuer removed stops verifying; L7: a failing JWKS endpoint is not asked again at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_key_the_issuer_removed_stops_verifying_once_its_keys_expire() {
    let issuer = FakeIssuer::start().await;
    issuer.set_max_age(1);
    let dir = tempfile::tempdir().unwrap();
    let broker = broker_for(&issuer, dir.path(), 1).await;
    let old_key = issuer.current_signer();
    let (status, body) = broker.exchange(&issuer.token(claims("m3-first")), "aws:dev").await;
    assert_eq!(status, 200, "{body}");
    let fetched = Instant::now();

    // The issuer withdraws the key (say it leaked). Tokens it signed must stop verifying once the
    // cached JWKS is older than its max-age, without waiting for an unknown `kid`.
    issuer.rotate();
    // Waiting for real time is the point: the expiry is on the broker process's clock.
    tokio::time::sleep(Duration::from_millis(1200).saturating_sub(fetched.elapsed())).await;
    let stale = FakeIssuer::token_from(&old_key, issuer.url(), claims("m3-stale"));
    let (status, body) = broker.exchange(&stale, "aws:dev").await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")), "{body}");
    assert!(body["error_description"].as_str().unwrap().contains("unknown key"), "{body}");
    let (status, body) = broker.exchange(&issuer.token(claims("m3-new")), "aws:dev").await;
    assert_eq!(status, 200, "the new key verifies: {body}");

    // The endpoint fails: the refusal is remembered, not re-asked for every token.
    issuer.set_failing(true);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let before = issuer.jwks_fetches();
    let started = Instant::now();
    for i in 0..10 {
        let (status, body) = broker.exchange(&issuer.token(claims(&format!("m3-down-{i}"))), "aws:dev").await;
        assert_eq!(status, 502, "expired keys are not trusted while the issuer is down: {body}");
    }
    // A failure is remembered for 5 s: one fetch per 5 s window the ten exchanges spanned (one,
    // unless the machine is very slow), never one per token.
    let windows = usize::try_from(1 + started.elapsed().as_secs() / 5).unwrap();
    let fetches = issuer.jwks_fetches() - before;
    assert!((1..=windows).contains(&fetches), "{fetches} fetches for ten tokens over {windows} window(s)");
}
