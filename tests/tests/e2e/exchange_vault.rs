//! Vault targets against a real OpenBao: the broker logs in to JWT auth with a minted token and
//! reads KV secrets with it; the returned token can read what its policy allows and nothing else;
//! a bound-claim mismatch is a refusal, and a sealed Vault issues nothing.

use keyward_tests::audit::Audit;
use keyward_tests::broker::{Broker, ConfigExtra, TEST_KEK, write_config};
use keyward_tests::openbao::OpenBao;
use keyward_tests::{free_addr, http, workspace_root};
use reqwest::Method;
use serde_json::{Value, json};

const PASSWORD: &str = "s3cret-db-password";

async fn run_token(broker: &Broker, run_id: &str, stack: &str) -> String {
    let body =
        json!({ "stack": stack, "run_id": run_id, "phase": "plan", "audience": broker.addr, "ref": "refs/heads/main" });
    let (status, minted) = broker.mint_raw(&body, Some(&broker.admin_token)).await;
    assert_eq!(status, 201, "{minted}");
    minted["token"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_token_becomes_a_scoped_vault_token_and_its_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let bao = OpenBao::start(dir.path()).await;
    let data_dir = dir.path().join("broker");
    let addr = free_addr();
    let config = dir.path().join("keyward.toml");
    let rest = format!(
        "[policy]\ndir = \"{}\"\n[tokens]\nallowed_audiences = [\"vault\"]\n\
         [[targets]]\nname = \"network-secrets\"\ntype = \"vault\"\naccess = \"read\"\naddress = \"{}\"\nrole = \"network\"\n\
         kv_reads = [{{ mount = \"secret\", path = \"network/db\" }}]\n\
         pki_issues = [{{ mount = \"pki\", role = \"network\", common_name = \"run.network.internal\", ttl = \"10m\" }}]\n",
        workspace_root().join("policies").display(),
        bao.addr
    );
    write_config(&config, addr, &data_dir, &ConfigExtra { rest: &rest, ..ConfigExtra::default() });
    let broker = Broker::serve(&config, &data_dir, &format!("http://{addr}"), &[("TEST_KEK", TEST_KEK)]).await;

    bao.trust_issuer(&broker.addr).await;
    bao.must(
        Method::POST,
        "sys/policies/acl/network-read",
        json!({ "policy": "path \"secret/data/network/*\" { capabilities = [\"read\"] }\n\
                           path \"pki/issue/network\" { capabilities = [\"update\"] }" }),
    )
    .await;
    bao.must(Method::POST, "sys/mounts/pki", json!({ "type": "pki", "config": { "max_lease_ttl": "24h" } })).await;
    bao.must(Method::POST, "pki/root/generate/internal", json!({ "common_name": "keyward-test-ca", "ttl": "24h" }))
        .await;
    bao.must(
        Method::POST,
        "pki/roles/network",
        json!({ "allowed_domains": ["network.internal"], "allow_subdomains": true, "max_ttl": "1h" }),
    )
    .await;
    bao.must(
        Method::POST,
        "auth/jwt/role/network",
        json!({
            "role_type": "jwt", "user_claim": "sub", "bound_audiences": ["vault"],
            "bound_claims": { "stack_id": "network" }, "token_policies": ["network-read"], "token_ttl": "10m",
        }),
    )
    .await;
    bao.must(Method::POST, "secret/data/network/db", json!({ "data": { "password": PASSWORD } })).await;
    bao.must(Method::POST, "secret/data/payments/db", json!({ "data": { "password": "not-yours" } })).await;

    let (status, body) = broker.exchange(&run_token(&broker, "run-v1", "network").await, "vault:network-secrets").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["issued_token_type"], "urn:keyward:params:oauth:token-type:vault-token");
    assert!(body["vault"]["policies"].as_array().unwrap().contains(&json!("network-read")), "{body}");
    assert_eq!(body["vault"]["lease_duration"], 600);
    let secret = &body["vault"]["secrets"][0];
    assert_eq!((secret["mount"].as_str(), secret["path"].as_str()), (Some("secret"), Some("network/db")));
    assert_eq!(secret["data"]["password"], PASSWORD, "{body}");
    let certificate = &body["vault"]["certificates"][0];
    assert!(certificate["certificate"].as_str().unwrap().starts_with("-----BEGIN CERTIFICATE-----"), "{body}");
    let private_key = certificate["private_key"].as_str().unwrap().to_owned();
    assert!(private_key.contains("PRIVATE KEY"));
    let serial = certificate["serial_number"].as_str().unwrap().to_owned();
    // OpenBao itself knows the certificate by that serial: it really issued it.
    let (status, known) = bao.api(Method::GET, &format!("pki/cert/{serial}"), None).await;
    assert_eq!(status, 200, "{known}");
    assert_eq!(
        known["data"]["certificate"].as_str().map(str::trim),
        certificate["certificate"].as_str().map(str::trim)
    );

    // The Vault token reads what its policy allows, and nothing else.
    let vault_token = body["access_token"].as_str().unwrap().to_owned();
    let read = |path: &str| {
        http().get(format!("{}/v1/secret/data/{path}", bao.addr)).header("X-Vault-Token", &vault_token).send()
    };
    assert_eq!(read("network/db").await.unwrap().status(), 200);
    assert_eq!(read("payments/db").await.unwrap().status(), 403);

    // The same through the CLI: the token alone, or an export line, and it works.
    let token_file = dir.path().join("run-token");
    std::fs::write(&token_file, run_token(&broker, "run-cli", "network").await).unwrap();
    let cache = dir.path().join("cache");
    let cli = |format: &str| {
        keyward_tests::broker::keyward(
            &[
                "creds",
                "vault",
                "--target",
                "network-secrets",
                "--subject-token-file",
                token_file.to_str().unwrap(),
                "--format",
                format,
            ],
            &[("KEYWARD_ADDR", broker.addr.as_str()), ("XDG_CACHE_HOME", cache.to_str().unwrap())],
        )
    };
    let out = cli("token");
    assert!(out.success, "{}", out.stderr);
    let cli_token = out.stdout.trim().to_owned();
    let cli_read = |path: &str| {
        http().get(format!("{}/v1/secret/data/{path}", bao.addr)).header("X-Vault-Token", &cli_token).send()
    };
    assert_eq!(cli_read("network/db").await.unwrap().status(), 200, "the CLI's token reads the secret");
    assert_eq!(cli_read("payments/db").await.unwrap().status(), 403, "and nothing else");
    // The same run token again: the cached Vault token (the broker would refuse a replay), in
    // the `NAME=value` form `$GITHUB_ENV` takes.
    let out = cli("dotenv");
    assert!(out.success, "{}", out.stderr);
    assert_eq!(out.stdout, format!("VAULT_TOKEN={cli_token}\n"));
    std::fs::write(&token_file, run_token(&broker, "run-cli-2", "network").await).unwrap();
    let out = cli("env");
    assert!(out.success && out.stdout.starts_with("export VAULT_TOKEN="), "{}{}", out.stdout, out.stderr);
    assert_ne!(out.stdout.trim(), format!("export VAULT_TOKEN={cli_token}"), "a new run token, a new exchange");

    // A stack the role does not bind: OpenBao refuses, the broker says so, nothing is issued.
    let (status, body) =
        broker.exchange(&run_token(&broker, "run-v2", "payments").await, "vault:network-secrets").await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_target")), "{body}");
    assert!(body["error_description"].as_str().unwrap().contains("Vault refused"), "{body}");

    // A sealed Vault: a clear 502, nothing issued.
    bao.must(Method::PUT, "sys/seal", Value::Null).await;
    let (status, body) = broker.exchange(&run_token(&broker, "run-v3", "network").await, "vault:network-secrets").await;
    assert_eq!((status, body["error"].as_str()), (502, Some("temporarily_unavailable")), "{body}");
    assert!(body["error_description"].as_str().unwrap().contains("Vault is unavailable"), "{body}");

    // On record: the accessor and the paths read, never the token or the secret.
    let store = Audit::open(&data_dir).await;
    assert_eq!(store.count("credentials.issued").await, 3, "the HTTP exchange and two CLI exchanges (one cached)");
    assert_eq!(store.for_run("run-cli").await.iter().filter(|e| e.kind == "denied").count(), 0, "no replay");
    let events = store.for_run("run-v1").await;
    let issued = events.iter().find(|e| e.kind == "issued").unwrap();
    let details: Value = serde_json::from_str(&issued.details).unwrap();
    assert!(details["accessor"].as_str().is_some_and(|a| !a.is_empty()));
    assert_eq!(details["secrets_read"], json!(["secret/network/db"]));
    assert_eq!(details["certificate_serials"], json!([serial]));
    for secret in [vault_token.as_str(), PASSWORD, private_key.as_str()] {
        assert!(!issued.details.contains(secret), "a secret is on record");
        assert!(!broker.log_text().contains(secret), "a secret reached the broker log");
    }
}

/// Vault failing (a named fake: OpenBao can be sealed, which the test above covers, but not
/// made to answer 500) or hanging (OpenBao itself, stopped with SIGSTOP): bounded retries of the
/// login, a deadline, a clear 502, and nothing issued.
#[tokio::test(flavor = "multi_thread")]
async fn vault_errors_and_hangs_are_retried_boundedly_then_reported() {
    use keyward_tests::fake_upstream::{FakeUpstream, Speaks};

    /// A broker whose one Vault target lives at `address`; returns it and the exchange's answer.
    async fn exchange_against(dir: &std::path::Path, address: &str, frozen: Option<&OpenBao>) -> (Broker, u16, Value) {
        let data_dir = dir.join("broker");
        let addr = free_addr();
        let config = dir.join("keyward.toml");
        let rest = format!(
            "[policy]\ndir = \"{}\"\n[tokens]\nallowed_audiences = [\"vault\"]\n\
             [[targets]]\nname = \"network-secrets\"\ntype = \"vault\"\naccess = \"read\"\naddress = \"{address}\"\n\
             role = \"network\"\n",
            workspace_root().join("policies").display(),
        );
        write_config(&config, addr, &data_dir, &ConfigExtra { rest: &rest, ..ConfigExtra::default() });
        let broker = Broker::serve(&config, &data_dir, &format!("http://{addr}"), &[("TEST_KEK", TEST_KEK)]).await;
        let token = run_token(&broker, "run-vault-fault", "network").await;
        let stopped = frozen.map(OpenBao::frozen);
        let (status, body) = broker.exchange(&token, "vault:network-secrets").await;
        drop(stopped);
        (broker, status, body)
    }
    async fn check_refused(what: &str, broker: &Broker, status: u16, body: &Value) {
        assert_eq!((status, body["error"].as_str()), (502, Some("temporarily_unavailable")), "{what}: {body}");
        assert!(body["error_description"].as_str().unwrap().contains("Vault is unavailable"), "{what}: {body}");
        assert!(body.get("access_token").is_none(), "{what}: {body}");
        let store = Audit::open(&broker.data_dir).await;
        assert_eq!(store.count("credentials.issued").await, 0, "{what}");
        let events = store.for_run("run-vault-fault").await;
        assert!(events.iter().any(|e| e.kind == "denied" && e.reasons.contains("unavailable")), "{what}");
    }

    let dir = tempfile::tempdir().unwrap();
    let vault = FakeUpstream::start(Speaks::Vault).await;
    let (broker, status, body) = exchange_against(dir.path(), &vault.endpoint, None).await;
    check_refused("a 500", &broker, status, &body).await;
    assert_eq!(vault.calls(), 3, "three login attempts");

    // A hang: OpenBao accepts the connection and never answers. A 502 (not the request
    // deadline's 503) shows the Vault call's own deadline ended it.
    let dir = tempfile::tempdir().unwrap();
    let bao = OpenBao::start(dir.path()).await;
    let (broker, status, body) = exchange_against(dir.path(), &bao.addr, Some(&bao)).await;
    check_refused("a hang", &broker, status, &body).await;
}

/// A policy that allows everything, with a 5-minute cap for runs named `short-*` and an AWS
/// session policy for runs named `scoped-*`.
const DECIDING_POLICY: &str = r#"package keyward.credentials

allow := true

ttl_seconds := 300 if startswith(input.run.id, "short-")

session_policy := {"Version": "2012-10-17", "Statement": []} if startswith(input.run.id, "scoped-")
"#;

/// Whether OpenBao still knows the token behind `accessor` (asked as root).
async fn token_alive(bao: &OpenBao, accessor: &str) -> bool {
    let (status, body) =
        bao.api(Method::POST, "auth/token/lookup-accessor", Some(json!({ "accessor": accessor }))).await;
    match status {
        200 => true,
        400 if body.to_string().contains("invalid accessor") => false,
        other => panic!("lookup-accessor answered {other}: {body}"),
    }
}

/// Review M4, against a real OpenBao: a Vault token the caller does not receive is revoked once
/// its reads are done (and a revocation Vault refuses is logged and counted); a role whose tokens
/// outlive the policy's `ttl_seconds` is refused, on record, and its token revoked; a
/// `session_policy`, which means nothing to Vault, is refused rather than ignored.
#[tokio::test(flavor = "multi_thread")]
async fn what_the_policy_decided_is_what_vault_issues() {
    let dir = tempfile::tempdir().unwrap();
    let bao = OpenBao::start(dir.path()).await;
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(policies.join("credentials.rego"), DECIDING_POLICY).unwrap();
    let data_dir = dir.path().join("broker");
    let addr = free_addr();
    let config = dir.path().join("keyward.toml");
    let target = |name: &str, role: &str, extra: &str| {
        format!(
            "[[targets]]\nname = \"{name}\"\ntype = \"vault\"\naccess = \"read\"\naddress = \"{}\"\nrole = \"{role}\"\n{extra}",
            bao.addr
        )
    };
    let kv_only = "return_token = false\nkv_reads = [{ mount = \"secret\", path = \"network/db\" }]\n";
    let rest = format!(
        "[policy]\ndir = \"{}\"\n[tokens]\nallowed_audiences = [\"vault\"]\n{}{}{}",
        policies.display(),
        target("kv-only", "network", kv_only),
        target("kv-stuck", "stuck", kv_only),
        target("network", "network", ""),
    );
    write_config(&config, addr, &data_dir, &ConfigExtra { rest: &rest, ..ConfigExtra::default() });
    let broker = Broker::serve(&config, &data_dir, &format!("http://{addr}"), &[("TEST_KEK", TEST_KEK)]).await;

    bao.trust_issuer(&broker.addr).await;
    bao.must(
        Method::POST,
        "sys/policies/acl/network-read",
        json!({ "policy": "path \"secret/data/network/*\" { capabilities = [\"read\"] }" }),
    )
    .await;
    let role = |no_default_policy: bool| {
        json!({
            "role_type": "jwt", "user_claim": "sub", "bound_audiences": ["vault"],
            "bound_claims": { "stack_id": "network" }, "token_policies": ["network-read"], "token_ttl": "10m",
            "token_no_default_policy": no_default_policy,
        })
    };
    bao.must(Method::POST, "auth/jwt/role/network", role(false)).await;
    // Without the `default` policy a token may not revoke itself: the failure must show.
    bao.must(Method::POST, "auth/jwt/role/stuck", role(true)).await;
    bao.must(Method::POST, "secret/data/network/db", json!({ "data": { "password": PASSWORD } })).await;
    let store = Audit::open(&data_dir).await;
    let issued = |run: &'static str| {
        let store = &store;
        async move {
            let events = store.for_run(run).await;
            let issued = events.iter().find(|e| e.kind == "issued").unwrap_or_else(|| panic!("{run}: {events:?}"));
            serde_json::from_str::<Value>(&issued.details).unwrap()
        }
    };

    // Secrets only: they come back, and the token that read them is gone.
    let (status, body) = broker.exchange(&run_token(&broker, "plain-kv", "network").await, "vault:kv-only").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["access_token"], "N_A", "{body}");
    assert_eq!(body["vault"]["secrets"][0]["data"]["password"], PASSWORD);
    let details = issued("plain-kv").await;
    assert_eq!(details["vault_token"], "revoked", "{details}");
    let accessor = details["accessor"].as_str().unwrap();
    assert!(!token_alive(&bao, accessor).await, "the broker's KV-only Vault token is still valid");

    // A revocation Vault refuses: the secrets still come back, and the failure is logged (with
    // the accessor) and counted, and on record.
    let (status, body) = broker.exchange(&run_token(&broker, "plain-stuck", "network").await, "vault:kv-stuck").await;
    assert_eq!(status, 200, "{body}");
    let details = issued("plain-stuck").await;
    assert_eq!(details["vault_token"], "revocation_failed", "{details}");
    let stuck = details["accessor"].as_str().unwrap();
    assert!(token_alive(&bao, stuck).await, "it really was not revoked");
    let log = broker.log_text();
    assert!(log.lines().any(|l| l.contains("could not revoke a Vault token") && l.contains(stuck)), "{log}");
    let metrics = http().get(format!("{}/metrics", broker.addr)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("keyward_vault_token_revocation_failures_total 1\n"), "{metrics}");

    // The policy caps the exchange at 5 minutes; the role's tokens live 10: refused, revoked.
    let (status, body) = broker.exchange(&run_token(&broker, "short-1", "network").await, "vault:network").await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_target")), "{body}");
    assert!(body.get("access_token").is_none(), "{body}");
    let description = body["error_description"].as_str().unwrap();
    let why = "Vault role `network` issues tokens that live 600s (its token_ttl), longer than the 300s (the policy's \
               ttl_seconds) this exchange allows; the token was revoked";
    assert!(description.contains(why), "{body}");
    let events = store.for_run("short-1").await;
    assert!(events.iter().all(|e| e.kind != "issued"), "{events:?}");
    let denied = events.iter().find(|e| e.kind == "denied").expect("the refusal is on record");
    assert!(denied.reasons.contains(why), "{}", denied.reasons);
    let details: Value = serde_json::from_str(&denied.details).unwrap();
    assert_eq!((details["lease_duration"].as_u64(), details["vault_token"].as_str()), (Some(600), Some("revoked")));
    assert!(!token_alive(&bao, details["accessor"].as_str().unwrap()).await, "the refused token is still valid");

    // A session policy means nothing to Vault: refused before anything is minted.
    let (status, body) = broker.exchange(&run_token(&broker, "scoped-1", "network").await, "vault:network").await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_target")), "{body}");
    assert!(body["error_description"].as_str().unwrap().contains("no meaning for Vault"), "{body}");
    let kinds: Vec<String> = store.for_run("scoped-1").await.into_iter().map(|e| e.kind).collect();
    assert_eq!(kinds, ["minted", "denied"], "the run token, then the refusal: no token for Vault");

    // Control: the same role without a cap below its TTL issues, and the token is returned.
    let (status, body) = broker.exchange(&run_token(&broker, "plain-1", "network").await, "vault:network").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(issued("plain-1").await["vault_token"], "returned");
    assert!(token_alive(&bao, body["vault"]["accessor"].as_str().unwrap()).await);
}
