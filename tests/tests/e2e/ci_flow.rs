//! The GitHub-Actions-style flow, end to end: a CI system's OIDC token (OpenBao's identity
//! provider, a real issuer nobody here wrote, with GitHub's claim names) is exchanged through
//! `keyward creds aws --format credential-process` for STS credentials (moto), with the session
//! named after the CI run and the run's context in the tags; and boto3, with that command as its
//! `credential_process`, keeps working across a refresh because the command caches what it got.

use keyward_tests::audit::Audit;
use keyward_tests::broker::{Broker, ConfigExtra, TEST_KEK, keyward, write_config};
use keyward_tests::moto::Moto;
use keyward_tests::openbao::OpenBao;
use keyward_tests::{free_addr, workspace_root};
use serde_json::{Value, json};

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

/// A broker trusting OpenBao's OIDC provider at `issuer` under each `(name, audience)` (GitHub
/// claim names, `repository_owner = "acme"` required, `aws:network-apply` its only target), with
/// that write target on moto, which opts in CI subjects and lasts `duration`, and a read target
/// `aws:billing-read` that no issuer lists.
async fn start(dir: &std::path::Path, issuer: &str, issuers: &[(&str, &str)], sts: &str, duration: &str) -> Broker {
    let data_dir = dir.join("broker");
    let addr = free_addr();
    let config = dir.join("keyward.toml");
    let issuer_entries: String = issuers
        .iter()
        .map(|(name, audience)| {
            format!(
                "[[issuers]]\nname = \"{name}\"\nissuer = \"{issuer}\"\naudience = \"{audience}\"\nalgorithms = [\"RS256\"]\n\
                 require_nbf = false\nphase = \"apply\"\nrequired_claims = {{ repository_owner = \"acme\" }}\n\
                 targets = [\"aws:network-apply\"]\n"
            )
        })
        .collect();
    let rest = format!(
        "[policy]\ndir = \"{}\"\n[tokens]\nallowed_audiences = [\"sts.amazonaws.com\"]\n{issuer_entries}\
         [[targets]]\nname = \"network-apply\"\ntype = \"aws\"\naccess = \"write\"\n\
         role_arn = \"arn:aws:iam::123456789012:role/network-apply\"\nsts_endpoint = \"{sts}\"\nduration = \"{duration}\"\n\
         labels = {{ env = \"dev\" }}\nwrite_subjects = [\"ci\"]\n\
         [[targets]]\nname = \"billing-read\"\ntype = \"aws\"\naccess = \"read\"\n\
         role_arn = \"arn:aws:iam::123456789012:role/billing-read\"\nsts_endpoint = \"{sts}\"\n",
        workspace_root().join("policies").display(),
    );
    write_config(&config, addr, &data_dir, &ConfigExtra { rest: &rest, ..ConfigExtra::default() });
    Broker::serve(&config, &data_dir, &format!("http://{addr}"), &[("TEST_KEK", TEST_KEK)]).await
}

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

    let issuers = [("bao-ci", ci.audience.as_str()), ("bao-fork", fork.audience.as_str())];
    let broker = start(dir.path(), &ci.issuer, &issuers, &moto.endpoint, "1h").await;

    let token_file = dir.path().join("ci-token");
    let cache = dir.path().join("cache");
    let creds_with = |token: &str, extra: &[&str]| {
        std::fs::write(&token_file, token).unwrap();
        let mut args =
            vec!["creds", "aws", "--target", "aws:network-apply", "--subject-token-file", token_file.to_str().unwrap()];
        args.extend_from_slice(extra);
        keyward(&args, &[("KEYWARD_ADDR", broker.addr.as_str()), ("XDG_CACHE_HOME", cache.to_str().unwrap())])
    };
    let creds = |token: &str| creds_with(token, &[]);

    let token = bao.identity_token(&ci).await;
    let out = creds(&token);
    assert!(out.success, "{}", out.stderr);
    let process: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(process["Version"], 1);
    assert!(process["AccessKeyId"].as_str().unwrap().starts_with("ASIA"));

    // One call (`sts_requests` counts an STS client's retry of it once).
    let sent = moto.sts_requests();
    assert_eq!(sent.len(), 1, "one exchange made one STS call");
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

    // The CI key's trace names the issuer that vouched and the CI job's own claims.
    let trace = broker.cli(&["audit", "trace", process["AccessKeyId"].as_str().unwrap()]);
    assert!(trace.success, "{}", trace.stderr);
    for expected in [
        "run 4711",
        "CI job     issuer bao-ci (",
        "actor alice",
        "repository acme/infra",
        "run_id 4711",
        "phase apply",
        "target aws:network-apply",
        "approved   by nobody",
    ] {
        assert!(trace.stdout.contains(expected), "`{expected}` missing from the CI trace:\n{}", trace.stdout);
    }

    // The same CI token again (a client running its credential_process again): the cached
    // credentials, without asking the broker.
    let again = creds(&token);
    assert!(again.success, "{}", again.stderr);
    assert_eq!(serde_json::from_str::<Value>(&again.stdout).unwrap()["AccessKeyId"], process["AccessKeyId"]);
    assert_eq!(moto.sts_requests().len(), before_refusals, "a cache hit calls nobody");

    // Without the cache the broker sees the same token twice and refuses it (OpenBao's tokens
    // have no jti; the signature is the key): non-zero, and nothing on stdout.
    let out = creds_with(&token, &["--no-cache"]);
    assert!(!out.success && out.stderr.contains("already exchanged"), "{}", out.stderr);
    assert_eq!(out.stdout, "", "a failure prints nothing on stdout");

    // `--format dotenv`: the `NAME=value` lines `$GITHUB_ENV` takes.
    let out = creds_with(&bao.identity_token(&ci).await, &["--format", "dotenv"]);
    assert!(out.success, "{}", out.stderr);
    let names: Vec<&str> = out.stdout.lines().filter_map(|l| l.split_once('=')).map(|(name, _)| name).collect();
    assert_eq!(
        names,
        ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_CREDENTIAL_EXPIRATION"],
        "{}",
        out.stdout
    );
    assert!(out.stdout.starts_with("AWS_ACCESS_KEY_ID=ASIA"), "{}", out.stdout);
    let before_refusals = moto.sts_requests().len();

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
    assert_eq!(out.stdout, "", "a failure prints nothing on stdout");
    assert!(out.stderr.contains("repository_owner"), "{}", out.stderr);

    // A target the issuer does not list, although the policy would allow it (a read target):
    // refused before the policy runs, and audited, since the token itself verified.
    std::fs::write(&token_file, bao.identity_token(&ci).await).unwrap();
    let out = keyward(
        &["creds", "aws", "--target", "aws:billing-read", "--subject-token-file", token_file.to_str().unwrap()],
        &[("KEYWARD_ADDR", broker.addr.as_str()), ("XDG_CACHE_HOME", cache.to_str().unwrap())],
    );
    assert!(!out.success, "{}", out.stdout);
    assert!(
        out.stderr.contains("target `aws:billing-read` is not one of issuer `bao-ci`'s targets (aws:network-apply)"),
        "{}",
        out.stderr
    );
    assert_eq!(moto.sts_requests().len(), before_refusals, "no refused token reached STS");
    let denied = Audit::open(&broker.data_dir).await.for_run("4711").await;
    assert!(
        denied.iter().any(|e| e.kind == "denied" && e.body.contains("aws:billing-read")),
        "the verified caller's refusal is audited"
    );
}

/// boto3 with `credential_process = keyward creds aws --subject-token-command …`, the setup
/// issue 15 found broken: a 15-minute credential sits inside boto3's refresh window, so boto3 runs
/// the command before every call. The cache answers those runs until the credentials enter
/// `--refresh-before`; then one new exchange, with a fresh token from the command. Never a replay.
#[tokio::test(flavor = "multi_thread")]
async fn boto3_keeps_working_across_a_refresh_with_one_exchange_per_refresh() {
    const REFRESH_BEFORE_SECONDS: u64 = 885; // 15 s after an exchange (STS sessions last 900 s)
    let dir = tempfile::tempdir().unwrap();
    let bao = OpenBao::start(dir.path()).await;
    let moto = Moto::start(dir.path()).await;
    let claims = json!({
        "repository": "acme/infra", "repository_owner": "acme", "ref": "refs/heads/main",
        "sha": SHA, "run_id": "4712", "actor": "alice",
    });
    let ci = bao.external_issuer("deploy", &claims).await;

    let broker = start(dir.path(), &ci.issuer, &[("bao-ci", ci.audience.as_str())], &moto.endpoint, "15m").await;

    // The subject token command: asks OpenBao for a fresh identity token, as a GitHub job asks
    // its ID-token endpoint, and keeps a copy of each token it printed (to look for on disk).
    let python = keyward_tests::venv().join("bin/python");
    let (token_url, client_token) = bao.identity_token_request(&ci);
    let issued_tokens = dir.path().join("issued-tokens");
    let fetch = dir.path().join("fetch-token.py");
    std::fs::write(
        &fetch,
        format!(
            "import json, urllib.request\n\
             request = urllib.request.Request({token_url:?}, headers={{'X-Vault-Token': {client_token:?}}})\n\
             token = json.load(urllib.request.urlopen(request))['data']['token']\n\
             open({issued:?}, 'a').write(token + '\\n')\n\
             print(token)\n",
            issued = issued_tokens.to_str().unwrap(),
        ),
    )
    .unwrap();
    let credential_process = format!(
        "{} creds aws --target aws:network-apply --refresh-before {REFRESH_BEFORE_SECONDS}s \
         --subject-token-command '{} {}'",
        keyward_tests::binary("keyward").display(),
        python.display(),
        fetch.display(),
    );
    let aws_config = dir.path().join("aws-config");
    std::fs::write(&aws_config, format!("[profile ci]\ncredential_process = {credential_process}\n")).unwrap();

    // Three calls, then (waiting for exactly the moment the cached entry enters the refresh
    // window) three more; the credentials boto3 used for each call are recorded.
    let calls = dir.path().join("calls.py");
    std::fs::write(
        &calls,
        format!(
            "import datetime, json, shlex, subprocess, time, boto3, botocore.credentials\n\
             runs = 0\n\
             run_process = botocore.credentials.ProcessProvider._retrieve_credentials_using\n\
             def counted(self, command):\n    global runs\n    runs += 1\n    return run_process(self, command)\n\
             botocore.credentials.ProcessProvider._retrieve_credentials_using = counted\n\
             session = boto3.Session(profile_name='ci')\n\
             sts = session.client('sts', endpoint_url={endpoint:?}, region_name='us-east-1')\n\
             def call():\n    sts.get_caller_identity()\n    return session.get_credentials().get_frozen_credentials().access_key\n\
             before = [call() for _ in range(3)]\n\
             # The command itself answers from the cache: when its credentials expire.\n\
             cached = json.loads(subprocess.run(shlex.split({credential_process:?}), capture_output=True, check=True).stdout)\n\
             expiry = datetime.datetime.fromisoformat(cached['Expiration'].replace('Z', '+00:00')).timestamp()\n\
             due = expiry - {REFRESH_BEFORE_SECONDS}\n\
             in_time = time.time() < due\n\
             time.sleep(max(0.0, due - time.time()) + 1.0)\n\
             after = [call() for _ in range(3)]\n\
             print(json.dumps({{'before': before, 'after': after, 'in_time': in_time, 'runs': runs}}))\n",
            endpoint = moto.endpoint,
        ),
    )
    .unwrap();
    let cache = dir.path().join("cache");
    let output = std::process::Command::new(&python)
        .arg(&calls)
        .current_dir(dir.path())
        .env("AWS_CONFIG_FILE", &aws_config)
        .env("AWS_SHARED_CREDENTIALS_FILE", dir.path().join("no-credentials"))
        .env("XDG_CACHE_HOME", &cache)
        .env("KEYWARD_ADDR", &broker.addr)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "boto3 failed: {stderr}");
    let result: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(result["in_time"], true, "the first calls took longer than the fresh window; {result}");
    let keys = |phase: &str| {
        let keys: Vec<&str> = result[phase].as_array().unwrap().iter().map(|k| k.as_str().unwrap()).collect();
        keys
    };
    let (before, after) = (keys("before"), keys("after"));
    assert!(before.iter().all(|k| k.starts_with("ASIA") && *k == before[0]), "one set of credentials: {result}");
    assert!(after.iter().all(|k| *k == after[0]), "one set after the refresh: {result}");
    assert_ne!(before[0], after[0], "the refresh obtained new credentials: {result}");

    // boto3 ran the command for every call; the broker saw one exchange per refresh, each with a
    // fresh token from the command, and no replay.
    assert!(result["runs"].as_u64().unwrap() >= 6, "boto3 ran credential_process for each call: {result}");
    let store = keyward_tests::audit::Audit::open(&broker.data_dir).await;
    assert_eq!(store.count("credentials.issued").await, 2, "one exchange, then one at the refresh");
    assert_eq!(store.count("credentials.denied").await, 0, "no replayed token: {stderr}");
    let tokens = std::fs::read_to_string(&issued_tokens).unwrap();
    assert_eq!(tokens.lines().count(), 2, "the token command ran only for the two exchanges");

    // The cache: one private entry in a private directory, holding no subject token.
    use std::os::unix::fs::PermissionsExt as _;
    let creds_dir = cache.join("keyward/creds");
    assert_eq!(std::fs::metadata(&creds_dir).unwrap().permissions().mode() & 0o777, 0o700);
    let entries: Vec<_> = std::fs::read_dir(&creds_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.file_name().unwrap().to_str().unwrap().starts_with('.'))
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(std::fs::metadata(&entries[0]).unwrap().permissions().mode() & 0o777, 0o600);
    let cached = std::fs::read_to_string(&entries[0]).unwrap();
    assert!(cached.contains(after[0]), "the entry holds the current credentials");
    for token in tokens.lines() {
        assert!(!cached.contains(token), "a subject token is in the cache");
    }
}
