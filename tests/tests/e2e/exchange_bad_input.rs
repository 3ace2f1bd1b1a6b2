//! Every bad subject token and every policy failure at `POST /v1/token` (the issue's list): a
//! clear 4xx and nothing issued; a `denied` record when the subject proved something (a verified
//! signature), only a rate-limited log line when it did not (DESIGN.md §8.10).

use keyward_tests::audit::Audit;
use keyward_tests::broker::{Broker, ConfigExtra, TEST_KEK, exchange_form, write_config};
use keyward_tests::now;
use keyward_tests::{forge, free_addr, workspace_root};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread")]
async fn bad_subject_tokens_and_failing_policies_are_refused_recorded_and_issue_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // The shipped library plus a module that errors for stack `boom` and runs long for `slow`
    // (100 million steps that build nothing: far past the 1 s limit, in bounded memory). The limit
    // is generous so that the good token's decision never meets it, however loaded the machine.
    let policies = dir.path().join("policies");
    for file in ["credentials.rego", "data.json"] {
        std::fs::create_dir_all(&policies).unwrap();
        std::fs::copy(workspace_root().join("policies").join(file), policies.join(file)).unwrap();
    }
    std::fs::write(
        policies.join("faults.rego"),
        "package keyward.credentials\n\n\
         deny contains \"boom\" if {\n\tinput.run.stack == \"boom\"\n\tto_number(\"not a number\") > 0\n}\n\n\
         deny contains \"slow\" if {\n\tinput.run.stack == \"slow\"\n\
         \tsome a in numbers.range(1, 10000)\n\tsome b in numbers.range(1, 10000)\n\ta * b < 0\n}\n",
    )
    .unwrap();
    let data_dir = dir.path().join("broker");
    let addr = free_addr();
    let config = dir.path().join("keyward.toml");
    let rest = format!(
        "[policy]\ndir = \"{}\"\nevaluation_timeout = \"1s\"\n[tokens]\nallowed_audiences = [\"sts.amazonaws.com\"]\n\
         [[targets]]\nname = \"dev\"\ntype = \"aws\"\naccess = \"read\"\nrole_arn = \"arn:aws:iam::123456789012:role/dev\"\n\
         mode = \"worker\"\nduration = \"1h\"\n",
        policies.display()
    );
    write_config(&config, addr, &data_dir, &ConfigExtra { rest: &rest, ..ConfigExtra::default() });
    let broker = Broker::serve(&config, &data_dir, &format!("http://{addr}"), &[("TEST_KEK", TEST_KEK)]).await;
    let signer = forge::broker_signer(&data_dir, TEST_KEK).await;
    let kid = signer.kid().to_owned();
    let jwk = serde_json::to_string(signer.jwk()).unwrap();

    let base = |jti: &str| {
        json!({
            "iss": broker.addr, "aud": broker.addr, "sub": "stack:net:phase:plan", "iat": now(), "nbf": now(),
            "exp": now() + 300, "jti": jti, "run_id": "r", "stack_id": "net", "stack": "net", "phase": "plan", "scope": "read",
        })
    };
    let with = |jti: &str, key: &str, value: Value| {
        let mut claims = base(jti);
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(key);
        } else {
            claims[key] = value;
        }
        signer.sign_compact(claims.to_string().as_bytes()).unwrap()
    };
    let header = |extra: Value| {
        let mut h = json!({"alg": "ES256", "kid": kid, "typ": "JWT"});
        for (k, v) in extra.as_object().unwrap() {
            h[k] = v.clone();
        }
        h
    };
    let unsigned = |header: Value, claims: Value| {
        use base64::Engine as _;
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!("{}.{}.", b.encode(header.to_string()), b.encode(claims.to_string()))
    };
    let mut big = base("big");
    big["padding"] = json!("x".repeat(17 * 1024));

    let cases: Vec<(&str, String, &str)> = vec![
        ("alg none", unsigned(json!({"alg": "none", "typ": "JWT"}), base("a1")), "not allowed"),
        (
            "HS256 with the public key as secret",
            forge::hs256_token(jwk.as_bytes(), &json!({"alg": "HS256", "kid": kid}), &base("a2")),
            "not allowed",
        ),
        ("unknown kid", forge::foreign_token(&json!({"alg": "ES256", "kid": "unknown"}), &base("a3")), "unknown key"),
        (
            "jku header",
            forge::foreign_token(&header(json!({"jku": "https://evil.example/jwks", "kid": "evil"})), &base("a4")),
            "unknown key",
        ),
        (
            "x5u header",
            forge::foreign_token(&header(json!({"x5u": "https://evil.example/cert", "kid": "evil"})), &base("a5")),
            "unknown key",
        ),
        ("forged signature under the real kid", forge::foreign_token(&header(json!({})), &base("a6")), "signature"),
        ("exp of the wrong type", with("a7", "exp", json!((now() + 300).to_string())), "wrong type"),
        ("nbf of the wrong type", with("a8", "nbf", json!(1.5)), "wrong type"),
        ("missing aud", with("a9", "aud", Value::Null), "no `aud`"),
        ("wrong aud string", with("a10", "aud", json!("sts.amazonaws.com")), "audience"),
        ("wrong aud array", with("a11", "aud", json!(["sts.amazonaws.com", "vault"])), "audience"),
        ("wrong iss", with("a12", "iss", json!("https://impostor.example")), "do not match any issuer"),
        ("expired", with("a13", "exp", json!(now() - 120)), "expired"),
        ("nbf in the future", with("a14", "nbf", json!(now() + 600)), "not valid yet"),
        ("oversized", signer.sign_compact(big.to_string().as_bytes()).unwrap(), "not a JWT"),
        ("no jti", with("a15", "jti", Value::Null), "jti"),
        ("no exp", with("a16", "exp", Value::Null), "no `exp` claim"),
        // The signing key's own certificate in `x5c`: never read, so the key is still looked up
        // by `kid` among the broker's keys — unknown under the attacker's kid, a bad signature
        // under the broker's.
        ("x5c header", forge::foreign_token_with_x5c(&header(json!({"kid": "evil"})), &base("a17")), "unknown key"),
        ("x5c header under the real kid", forge::foreign_token_with_x5c(&header(json!({})), &base("a18")), "signature"),
    ];
    for (what, token, reason) in &cases {
        let (status, body) = broker.exchange(token, "aws:dev").await;
        assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")), "{what}: {body}");
        let description = body["error_description"].as_str().unwrap();
        assert!(description.contains(reason), "{what}: refused for the wrong reason: {description}");
        assert!(!description.contains(token.as_str()), "{what}: the token is echoed back");
    }

    // Policy failures are denies that say what failed, to the caller and on record: an error is
    // told apart from a policy that ran out of time (DESIGN.md §3 wants the reason audited).
    let failures = [
        ("boom", "policy evaluation failed: ", "ran past its time limit"),
        ("slow", "policy evaluation ran past its time limit of 1s", "policy evaluation failed"),
    ];
    for (stack, reason, not) in failures {
        let mut claims = base(&format!("p-{stack}"));
        claims["stack"] = json!(stack);
        claims["run_id"] = json!(format!("p-{stack}"));
        let token = signer.sign_compact(claims.to_string().as_bytes()).unwrap();
        let (status, body) = broker.exchange(&token, "aws:dev").await;
        assert_eq!((status, body["error"].as_str()), (400, Some("invalid_target")), "{stack}: {body}");
        let description = body["error_description"].as_str().unwrap();
        assert!(description.contains(reason) && !description.contains(not), "{stack}: {body}");
        let denied = Audit::open(&data_dir).await.for_run(&format!("p-{stack}")).await;
        let denied: Vec<_> = denied.iter().filter(|e| e.kind == "denied").collect();
        assert_eq!(denied.len(), 1, "{stack}: {denied:?}");
        assert!(denied[0].reasons.contains(reason) && !denied[0].reasons.contains(not), "{stack}: {denied:?}");
    }

    // DESIGN.md §8.10 (security review M5): a caller who proved nothing cannot write to the
    // durable log. A flood of garbage tokens naming a real target adds no entry, and the broker
    // keeps answering.
    let before = Audit::open(&data_dir).await.check_tree().await;
    // Half plain garbage, half well-formed tokens under the broker's real `kid` signed by another key.
    let garbage: Vec<String> = (0..1000)
        .map(|i| {
            if i % 2 == 0 {
                format!("garbage.{i}.x")
            } else {
                forge::foreign_token(&header(json!({})), &base(&format!("flood-{i}")))
            }
        })
        .collect();
    let flood: Vec<_> = garbage
        .chunks(125)
        .map(|tokens| {
            let (addr, tokens) = (broker.addr.clone(), tokens.to_vec());
            tokio::spawn(async move {
                let client = keyward_tests::http();
                for token in tokens {
                    let form = exchange_form(&token, "aws:dev");
                    let response = client.post(format!("{addr}/v1/token")).form(&form).send().await.unwrap();
                    assert_eq!(response.status().as_u16(), 400);
                }
            })
        })
        .collect();
    for task in flood {
        task.await.unwrap();
    }
    assert_eq!(Audit::open(&data_dir).await.check_tree().await, before, "1,000 unproven refusals wrote no entry");

    // A good token still works: the refusals above changed nothing.
    let (status, body) = broker.exchange(&with("good", "jti", json!("good")), "aws:dev").await;
    assert_eq!(status, 200, "{body}");

    let store = Audit::open(&data_dir).await;
    assert_eq!(store.count("credentials.issued").await, 1, "only the good token was issued anything");
    // On record: the refusals of subjects that proved something — the broker's own signature on
    // a token without `jti`, and the two policy failures. The unverified ones are only logged.
    assert_eq!(store.count("credentials.denied").await, 3, "only verified subjects' refusals are on record");
    assert_eq!(store.count("token.minted").await, 1, "no token was minted for a refused request");
    assert!(broker.log_text().contains("subject token refused before it verified"), "unproven refusals are logged");
}
