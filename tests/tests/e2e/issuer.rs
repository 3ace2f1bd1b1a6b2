//! The broker as an OIDC issuer, seen from outside: discovery and JWKS as strict clients expect
//! them, tokens an independent verifier (PyJWT) accepts for both ES256 and RS256, bad mint requests
//! refused with nothing issued, and `keyward dev` keeping its state across restarts.

use std::path::Path;

use keyward_tests::audit::Audit;
use keyward_tests::broker::{Broker, ConfigExtra, TEST_KEK, keyward, write_config};
use keyward_tests::{forge, http, pyjwt};
use serde_json::{Value, json};

async fn issued_count(data_dir: &Path) -> u64 {
    Audit::open(data_dir).await.count("token.minted").await
}

/// Every byte of the SQLite database in `data_dir`, as a copy of it would hold them (the file and
/// its write-ahead log).
fn database_bytes(data_dir: &Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    for file in ["keyward.db", "keyward.db-wal"] {
        bytes.extend(std::fs::read(data_dir.join(file)).unwrap_or_default());
    }
    bytes
}

#[tokio::test(flavor = "multi_thread")]
async fn discovery_and_jwks_satisfy_strict_clients() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::dev(&dir.path().join("dev")).await;
    let discovery = broker.get_json("/.well-known/openid-configuration").await;
    assert_eq!(discovery["issuer"], broker.addr.as_str(), "issuer matches the discovery URL exactly");
    assert_eq!(discovery["jwks_uri"], format!("{}/.well-known/jwks.json", broker.addr));
    assert_eq!(discovery["response_types_supported"], json!(["id_token"]));
    assert_eq!(discovery["subject_types_supported"], json!(["public"]));
    assert_eq!(discovery["id_token_signing_alg_values_supported"], json!(["ES256"]));
    for claim in ["sub", "aud", "jti", "run_id", "https://aws.amazon.com/tags"] {
        assert!(discovery["claims_supported"].as_array().unwrap().contains(&json!(claim)), "{claim}");
    }

    let response = http().get(format!("{}/.well-known/jwks.json", broker.addr)).send().await.unwrap();
    assert_eq!(response.headers()["cache-control"], "public, max-age=300");
    assert_eq!(response.headers()["content-type"], "application/json");
    let jwks: Value = response.json().await.unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "the signing key and the pre-published next key");
    for key in keys {
        assert_eq!(
            (key["kty"].as_str(), key["crv"].as_str(), key["use"].as_str()),
            (Some("EC"), Some("P-256"), Some("sig"))
        );
        assert!(key.get("d").is_none(), "no private material in the JWKS");
    }

    let health = http().get(format!("{}/healthz", broker.addr)).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let metrics = http().get(format!("{}/metrics", broker.addr)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("keyward_jwks_keys 2") && metrics.contains("keyward_ready 1"), "{metrics}");
    let missing = http().get(format!("{}/v1/nope", broker.addr)).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.json::<Value>().await.unwrap()["error"], "not_found");
}

#[tokio::test(flavor = "multi_thread")]
async fn pyjwt_verifies_es256_tokens_from_the_jwks_and_refuses_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::dev(&dir.path().join("dev")).await;
    let out = broker.cli(&[
        "token",
        "mint",
        "--stack",
        "network",
        "--run",
        "run-42",
        "--phase",
        "apply",
        "--audience",
        "sts.amazonaws.com",
        "--commit",
        "0123456789abcdef0123456789abcdef01234567",
        "--repository",
        "https://git.example.com/infra.git",
        "--pr",
        "17",
        "--ticket",
        "CHG-9",
        "--triggered-by",
        "alice",
    ]);
    assert!(out.success, "{}", out.stderr);
    let token = out.stdout.trim();
    let jwks = format!("{}/.well-known/jwks.json", broker.addr);

    let verdict = pyjwt::verify(&jwks, token, "sts.amazonaws.com", &broker.addr);
    assert_eq!(verdict["ok"], true, "{verdict}");
    assert_eq!(verdict["alg"], "ES256");
    let claims = &verdict["claims"];
    assert_eq!(claims["sub"], "stack:network:phase:apply");
    assert_eq!(claims["scope"], "write");
    assert!(claims.get("approved_by").is_none(), "nobody approved an unrecorded run: {claims}");
    let asserted_by = claims["asserted_by"].as_str().unwrap();
    assert!(asserted_by.starts_with("dev-admin") || asserted_by == "bootstrap-admin", "{claims}");
    assert_eq!(claims["https://aws.amazon.com/source_identity"], "alice");
    assert_eq!(claims["https://aws.amazon.com/tags"]["principal_tags"]["pr"], json!(["17"]));
    assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 300);

    let wrong_audience = pyjwt::verify(&jwks, token, "vault", &broker.addr);
    assert!(wrong_audience["error"].as_str().unwrap().contains("InvalidAudience"), "{wrong_audience}");
    let wrong_issuer = pyjwt::verify(&jwks, token, "sts.amazonaws.com", "https://other.example");
    assert!(wrong_issuer["error"].as_str().unwrap().contains("InvalidIssuer"), "{wrong_issuer}");
    let kid = forge::header(token)["kid"].as_str().unwrap().to_owned();
    let forged = pyjwt::verify(&jwks, &forge::resign_with_foreign_key(token, &kid), "sts.amazonaws.com", &broker.addr);
    assert!(forged["error"].as_str().unwrap().contains("InvalidSignature"), "{forged}");
}

#[tokio::test(flavor = "multi_thread")]
async fn pyjwt_verifies_rs256_tokens_from_a_configured_broker() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("serve");
    let addr = keyward_tests::free_addr();
    let config = dir.path().join("keyward.toml");
    let extra = ConfigExtra {
        keys: "algorithm = \"RS256\"",
        rest: "[log]\nformat = \"json\"\n[tokens]\nallowed_audiences = [\"https://relying.example\"]\ndefault_ttl = \"2m\"",
        ..ConfigExtra::default()
    };
    write_config(&config, addr, &data_dir, &extra);
    let kek = TEST_KEK;
    let broker = Broker::serve(&config, &data_dir, &format!("http://{addr}"), &[("TEST_KEK", kek)]).await;
    let token = broker.mint("run-1", "db", "https://relying.example").await;
    let verdict = broker.pyjwt_verify(&token, "https://relying.example");
    assert_eq!(verdict["ok"], true, "{verdict}");
    assert_eq!(verdict["alg"], "RS256");
    assert_eq!(verdict["claims"]["exp"].as_i64().unwrap() - verdict["claims"]["iat"].as_i64().unwrap(), 120);
    let discovery = broker.get_json("/.well-known/openid-configuration").await;
    assert_eq!(discovery["id_token_signing_alg_values_supported"], json!(["RS256"]));
    let jwks = broker.get_json("/.well-known/jwks.json").await;
    broker.stop();

    // At rest the RSA keys are sealed: a PKCS#8 RSA key holds its modulus in the clear (and the
    // rsaEncryption OID); only the public JWK, base64url, may show it.
    let at_rest = database_bytes(&data_dir);
    let contains = |needle: &[u8]| at_rest.windows(needle.len()).any(|w| w == needle);
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "current and next: {jwks}");
    for key in keys {
        let n = key["n"].as_str().unwrap();
        assert!(contains(n.as_bytes()), "the public JWK is on record");
        let modulus = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, n).unwrap();
        assert!(!contains(&modulus), "an RSA private key is at rest unsealed");
    }
    let rsa_encryption = [0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    assert!(!contains(&rsa_encryption), "a PKCS#8 RSA key is at rest unsealed");

    let without_kek = keyward(&["serve", "--init", "--config", config.to_str().unwrap()], &[]);
    assert!(!without_kek.success && without_kek.stderr.contains("TEST_KEK"), "{}", without_kek.stderr);

    // `--init` prints the bootstrap token only on the very first start.
    let mut again = std::process::Command::new(keyward_tests::binary("keyward"))
        .args(["serve", "--init", "--config"])
        .arg(&config)
        .env("TEST_KEK", kek)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let client = http();
    keyward_tests::eventually("second start to be ready", std::time::Duration::from_secs(30), || {
        let request = client.get(format!("http://{addr}/readyz")).send();
        async move { request.await.ok().filter(|r| r.status().is_success()).map(drop) }
    })
    .await;
    again.kill().unwrap();
    let output = again.wait_with_output().unwrap();
    assert!(!String::from_utf8_lossy(&output.stdout).contains("kw_"), "no second bootstrap token");
    assert!(String::from_utf8_lossy(&output.stderr).contains("API tokens already exist"));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_mint_requests_get_json_errors_and_issue_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("dev");
    let broker = Broker::dev(&data_dir).await;
    let submit = broker.cli(&["token", "create-api", "--name", "ci", "--scope", "submit"]);
    assert!(submit.success, "{}", submit.stderr);
    let submit_token = submit.stdout.trim().to_owned();
    let good = json!({ "stack": "net", "run_id": "r1", "phase": "plan", "audience": "vault" });
    let with = |patch: Value| {
        let mut body = good.clone();
        for (key, value) in patch.as_object().unwrap() {
            body[key] = value.clone();
        }
        body
    };
    let admin = Some(broker.admin_token.as_str());
    let cases: Vec<(&str, Value, Option<&str>, u16, &str)> = vec![
        ("audience not allowed", with(json!({ "audience": "https://evil.example" })), admin, 400, "invalid_target"),
        ("ttl over the maximum", with(json!({ "ttl_seconds": 3601 })), admin, 400, "invalid_request"),
        ("unknown phase", with(json!({ "phase": "destroy" })), admin, 400, "invalid_request"),
        ("bad commit", with(json!({ "commit_sha": "not-a-sha" })), admin, 400, "invalid_request"),
        ("unknown field", with(json!({ "role_arn": "arn:aws:iam::1:role/x" })), admin, 400, "invalid_request"),
        ("missing field", json!({ "stack": "net" }), admin, 400, "invalid_request"),
        ("missing API token", good.clone(), None, 401, "invalid_token"),
        (
            "invalid API token",
            good.clone(),
            Some("kw_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
            401,
            "invalid_token",
        ),
        ("insufficient scope", good.clone(), Some(submit_token.as_str()), 403, "insufficient_scope"),
        ("asserted approvals", with(json!({ "approved_by": ["bob"] })), admin, 400, "invalid_request"),
        // Only the broker observes a pull request (docs/vcs.md); a caller cannot claim it did.
        ("asserted observation", with(json!({ "pull_request_source": "github" })), admin, 400, "invalid_request"),
    ];
    for (what, body, token, status, code) in cases {
        let (got, response) = broker.mint_raw(&body, token).await;
        assert_eq!(got, status, "{what}: {response}");
        assert_eq!(response["error"], code, "{what}: {response}");
        assert!(response["error_description"].as_str().is_some_and(|d| !d.is_empty()), "{what}: {response}");
    }
    let (_, refused) = broker.mint_raw(&with(json!({ "approved_by": ["bob"] })), admin).await;
    assert!(refused["error_description"].as_str().unwrap().contains("`approved_by` cannot be asserted"), "{refused}");
    let malformed = http()
        .post(format!("{}/v1/run-tokens", broker.addr))
        .bearer_auth(&broker.admin_token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);
    assert_eq!(malformed.json::<Value>().await.unwrap()["error"], "invalid_request");
    // `/v1/token` speaks one grant type, and says so before anything about targets (a dev
    // broker has none).
    let (status, body) =
        broker.exchange_form(&[("grant_type", "password"), ("subject_token", "x"), ("resource", "aws:nope")]).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("unsupported_grant_type")), "{body}");
    assert_eq!(issued_count(&data_dir).await, 0, "no refused request issued a token");

    let cli = broker.cli(&["token", "mint", "--stack", "net", "--run", "r1", "--phase", "plan", "--audience", "nope"]);
    assert!(
        !cli.success && cli.stderr.contains("audience `nope` is not in the broker's allowed audiences"),
        "{}",
        cli.stderr
    );
    assert!(cli.stdout.is_empty());

    // `--token-file` typed on the command line wins over the token the shell exported; between the
    // two variables, `KEYWARD_TOKEN` wins.
    let token_file = data_dir.join("admin-token");
    let stale = "kw_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let flag = keyward(
        &["keys", "list", "--json", "--token-file", token_file.to_str().unwrap()],
        &[("KEYWARD_ADDR", broker.addr.as_str()), ("KEYWARD_TOKEN", stale)],
    );
    assert!(flag.success, "--token-file must win over KEYWARD_TOKEN: {}", flag.stderr);
    let env = keyward(
        &["keys", "list", "--json"],
        &[
            ("KEYWARD_ADDR", broker.addr.as_str()),
            ("KEYWARD_TOKEN", broker.admin_token.as_str()),
            ("KEYWARD_TOKEN_FILE", "/nonexistent/token"),
        ],
    );
    assert!(env.success, "KEYWARD_TOKEN wins over KEYWARD_TOKEN_FILE: {}", env.stderr);
    let missing = keyward(&["keys", "list"], &[("KEYWARD_ADDR", broker.addr.as_str())]);
    assert!(!missing.success && missing.stderr.contains("--token-file"), "{}", missing.stderr);

    let (status, minted) = broker.mint_raw(&good, admin).await;
    assert_eq!(status, 201, "{minted}");
    assert_eq!(issued_count(&data_dir).await, 1, "the accepted request is on record");
    let metrics = http().get(format!("{}/metrics", broker.addr)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("keyward_tokens_issued_total{alg=\"ES256\"} 1"), "{metrics}");
    let token = minted["token"].as_str().unwrap();
    assert!(!metrics.contains(&broker.admin_token) && !metrics.contains(token));
    let log = broker.log_text();
    assert!(log.contains(minted["jti"].as_str().unwrap()), "issuance is logged by jti: {log}");
    assert!(!log.contains('\u{1b}'), "no colour codes in a log that is not a terminal: {log}");
    for secret in [broker.admin_token.as_str(), submit_token.as_str(), token] {
        assert!(!log.contains(secret), "a secret reached the broker log");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_restart_keeps_keys_tokens_and_data() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("dev");
    let first = Broker::dev(&data_dir).await;
    let kids = |jwks: &Value| -> Vec<String> {
        jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap().to_owned()).collect()
    };
    let jwks_before = kids(&first.get_json("/.well-known/jwks.json").await);
    let token = first.mint("r1", "net", "vault").await;
    let created = first.cli(&["token", "create-api", "--name", "auditor", "--scope", "audit", "--json"]);
    assert!(created.success, "{}", created.stderr);
    let admin_before = first.admin_token.clone();
    let join = first.cli(&["pool", "join-token", "dev", "--json"]);
    assert!(join.success, "{}", join.stderr);
    let join_token = serde_json::from_str::<Value>(&join.stdout).unwrap()["token"].as_str().unwrap().to_owned();
    first.stop();

    let second = Broker::dev(&data_dir).await;
    assert_eq!(second.admin_token, admin_before, "the admin token file is kept");
    assert_eq!(kids(&second.get_json("/.well-known/jwks.json").await), jwks_before, "same keys after restart");
    let listed = second.cli(&["token", "list-api", "--json"]);
    assert!(listed.success, "the old admin token still works: {}", listed.stderr);
    assert!(listed.stdout.contains("auditor"));
    let new_token = second.mint("r2", "net", "vault").await;
    assert_eq!(forge::header(&new_token)["kid"], forge::header(&token)["kid"], "still signing with the same key");
    second.stop();
    assert_eq!(issued_count(&data_dir).await, 2);

    // At rest: API tokens and join tokens only as hashes, private keys only sealed.
    let at_rest = database_bytes(&data_dir);
    assert!(!at_rest.is_empty());
    let contains = |needle: &[u8]| at_rest.windows(needle.len()).any(|w| w == needle);
    assert!(!contains(admin_before.as_bytes()), "the admin API token is stored in plaintext");
    let created: Value = serde_json::from_str(&created.stdout).unwrap();
    assert!(!contains(created["token"].as_str().unwrap().as_bytes()), "an API token is stored in plaintext");
    let secret = join_token.rsplit('.').next().unwrap();
    assert!(!contains(secret.as_bytes()), "a join token's secret is stored in plaintext");
    let hash = keyward_broker::agents::join::JoinToken::parse(&join_token).unwrap().hash();
    assert!(contains(hash.as_bytes()), "the join token is on record, as its hash");
    assert!(
        !contains(b"PRIVATE KEY") && !contains(&[0x30, 0x81, 0x87, 0x02, 0x01, 0x00]),
        "an unsealed PKCS#8 key is at rest"
    );
}
