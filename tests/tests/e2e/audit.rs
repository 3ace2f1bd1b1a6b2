//! The audit log end to end: a run gets AWS credentials (moto's STS) and a Vault token (OpenBao),
//! and is refused once; `keyward audit trace` answers "why did this access key exist" from the
//! run ID and from the access key ID alone; an export verifies offline against a signed
//! checkpoint, and every kind of tampering is caught, naming the first bad entry.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use keyward_tests::audit::Audit;
use keyward_tests::broker::{
    Broker, ConfigExtra, Output as CliOutput, TEST_KEK, keyward, keyward_verify, write_config,
};
use keyward_tests::moto::Moto;
use keyward_tests::openbao::OpenBao;
use keyward_tests::{eventually, free_addr, workspace_root};
use reqwest::Method;
use serde_json::{Value, json};

const ROLE: &str = "arn:aws:iam::123456789012:role/network-apply";

async fn start(dir: &Path, sts_endpoint: &str, vault: &str) -> Broker {
    let data_dir = dir.join("broker");
    let addr = free_addr();
    let config = dir.join("keyward.toml");
    let rest = format!(
        "[policy]\ndir = \"{}\"\n[tokens]\nallowed_audiences = [\"sts.amazonaws.com\", \"vault\"]\n\
         [[targets]]\nname = \"network-apply\"\ntype = \"aws\"\naccess = \"write\"\nrole_arn = \"{ROLE}\"\n\
         region = \"eu-west-1\"\nsts_endpoint = \"{sts_endpoint}\"\nduration = \"1h\"\nmode = \"broker\"\n\
         labels = {{ env = \"dev\" }}\nwrite_subjects = [\"job\", \"run\"]\n\
         [[targets]]\nname = \"network-secrets\"\ntype = \"vault\"\naccess = \"read\"\naddress = \"{vault}\"\n\
         role = \"network\"\nkv_reads = [{{ mount = \"secret\", path = \"network/db\" }}]\n",
        workspace_root().join("policies").display()
    );
    write_config(&config, addr, &data_dir, &ConfigExtra { rest: &rest, ..ConfigExtra::default() });
    Broker::serve(&config, &data_dir, &format!("http://{addr}"), &[("TEST_KEK", TEST_KEK)]).await
}

async fn run_token(broker: &Broker, run_id: &str, phase: &str) -> String {
    let body = json!({
        "stack": "network", "run_id": run_id, "phase": phase, "audience": broker.addr, "commit_sha": "0123abc",
        "ref": "refs/heads/main", "repository": "https://git.example.com/platform/infra.git", "pull_request": 42,
        "ticket": "CHG-7", "triggered_by": "alice",
    });
    let (status, minted) = broker.mint_raw(&body, Some(&broker.admin_token)).await;
    assert_eq!(status, 201, "{minted}");
    minted["token"].as_str().unwrap().to_owned()
}

async fn openbao(dir: &Path) -> OpenBao {
    let bao = OpenBao::start(dir).await;
    bao.must(
        Method::POST,
        "sys/policies/acl/network-read",
        json!({ "policy": "path \"secret/data/network/*\" { capabilities = [\"read\"] }" }),
    )
    .await;
    bao.must(Method::POST, "secret/data/network/db", json!({ "data": { "password": "s3cret" } })).await;
    bao
}

fn audit_cli(broker: &Broker, args: &[&str]) -> CliOutput {
    let token_file = broker.data_dir.join("admin-token");
    std::fs::write(&token_file, &broker.admin_token).unwrap();
    keyward(
        &[&["audit"], args].concat(),
        &[("KEYWARD_ADDR", broker.addr.as_str()), ("KEYWARD_TOKEN_FILE", token_file.to_str().unwrap())],
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn trace_answers_why_an_access_key_existed_and_exports_verify_offline() {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path()).await;
    let bao = openbao(dir.path()).await;
    let broker = start(dir.path(), &moto.endpoint, &bao.addr).await;
    bao.trust_issuer(&broker.addr).await;
    bao.must(
        Method::POST,
        "auth/jwt/role/network",
        json!({
            "role_type": "jwt", "user_claim": "sub", "bound_audiences": ["vault"],
            "bound_claims": { "stack_id": "network" }, "token_policies": ["network-read"], "token_ttl": "10m",
        }),
    )
    .await;

    // One run: AWS credentials, a Vault token, and a refused request.
    let (status, aws) = broker.exchange(&run_token(&broker, "run-trace-1", "apply").await, "aws:network-apply").await;
    assert_eq!(status, 200, "{aws}");
    let access_key_id = aws["aws_credentials"]["AccessKeyId"].as_str().unwrap().to_owned();
    let (status, vault) =
        broker.exchange(&run_token(&broker, "run-trace-1", "apply").await, "vault:network-secrets").await;
    assert_eq!(status, 200, "{vault}");
    let (status, denied) = broker.exchange(&run_token(&broker, "run-trace-1", "plan").await, "aws:network-apply").await;
    assert_eq!((status, denied["error"].as_str()), (400, Some("invalid_target")), "{denied}");

    // The question, from the run ID and from the access key ID alone.
    for key in ["run-trace-1", access_key_id.as_str()] {
        let out = audit_cli(&broker, &["trace", key]);
        assert!(out.success, "{}", out.stderr);
        for expected in [
            "run run-trace-1",
            "repository https://git.example.com/platform/infra.git",
            "commit 0123abc",
            "PR #42",
            "ticket CHG-7",
            "submitted  by alice",
            "asserted   by bootstrap-admin",
            "token.minted",
            "aud sts.amazonaws.com",
            "aud vault",
            &format!("access key {access_key_id}"),
            "session run-trace-1",
            &format!("role {ROLE}"),
            "vault accessor",
            "credentials.denied",
            "only apply-phase tokens may use it",
            "every entry above verified by inclusion proof",
        ] {
            assert!(out.stdout.contains(expected), "trace {key}: `{expected}` missing from\n{}", out.stdout);
        }
    }
    let json_trace = audit_cli(&broker, &["trace", &access_key_id, "--json"]);
    let traced: Value = serde_json::from_str(&json_trace.stdout).unwrap();
    assert_eq!(traced["verified"], true);
    for secret in
        [aws["aws_credentials"]["SecretAccessKey"].as_str().unwrap(), vault["access_token"].as_str().unwrap(), "s3cret"]
    {
        assert!(!json_trace.stdout.contains(secret), "a secret is in the audit log");
    }
    let missing = audit_cli(&broker, &["trace", "no-such-run"]);
    assert_eq!(missing.code, Some(1), "{missing:?}");
    assert!(missing.stderr.contains("nothing in the audit log refers to"), "{missing:?}");

    // `keyward audit trace … | head`: a reader that went away ends the command quietly (status 0,
    // nothing on stderr), never a panic. The pipe's read end is closed before the command starts.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let token_file = broker.data_dir.join("admin-token");
    let closed = std::process::Command::new(keyward_tests::binary("keyward"))
        .args(["audit", "trace", access_key_id.as_str(), "--token-file", token_file.to_str().unwrap()])
        .env("KEYWARD_ADDR", &broker.addr)
        .env_remove("KEYWARD_TOKEN")
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&closed.stderr);
    assert_eq!(closed.status.code(), Some(0), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");

    // Export, checkpoint, public key; offline verification.
    let checkpoint = audit_cli(&broker, &["checkpoint"]);
    assert!(checkpoint.success && checkpoint.stdout.contains("/audit\n"), "{}", checkpoint.stderr);
    let cp = dir.path().join("checkpoint.txt");
    std::fs::write(&cp, &checkpoint.stdout).unwrap();
    let key = audit_cli(&broker, &["public-key"]);
    let key_file = dir.path().join("log.pub");
    std::fs::write(&key_file, key.stdout.trim()).unwrap();
    let export = audit_cli(&broker, &["export"]);
    assert!(export.success, "{}", export.stderr);
    let log = dir.path().join("log.jsonl");
    std::fs::write(&log, &export.stdout).unwrap();
    let verify = |file: &Path, checkpoint: &Path| {
        audit_cli(
            &broker,
            &[
                "verify",
                file.to_str().unwrap(),
                "--checkpoint",
                checkpoint.to_str().unwrap(),
                "--public-key",
                key_file.to_str().unwrap(),
            ],
        )
    };
    // Without the key, the checkpoint cannot be checked: say that the key is missing, and where to get it.
    let keyless = audit_cli(&broker, &["verify", log.to_str().unwrap(), "--checkpoint", cp.to_str().unwrap()]);
    assert!(!keyless.success, "{}", keyless.stdout);
    assert!(
        keyless.stderr.contains("public key is missing") && keyless.stderr.contains("keyward audit public-key"),
        "{}",
        keyless.stderr
    );
    let good = verify(&log, &cp);
    assert!(good.success && good.stdout.contains("signature and head match"), "{}{}", good.stdout, good.stderr);
    let size = Audit::open(&broker.data_dir).await.check_tree().await;
    assert!(good.stdout.contains(&format!("{size} entries (0..{size}) verified")), "{}", good.stdout);

    // Every tampering is caught, naming the first bad sequence number.
    let lines: Vec<String> = export.stdout.lines().map(str::to_owned).collect();
    assert!(lines.len() >= 8, "{}", lines.len());
    let tampered = |name: &str, edit: &dyn Fn(&mut Vec<String>)| {
        let mut copy = lines.clone();
        edit(&mut copy);
        let file = dir.path().join(name);
        std::fs::write(&file, copy.join("\n") + "\n").unwrap();
        let out = verify(&file, &cp);
        assert!(!out.success, "{name}: tampering went unnoticed");
        out.stderr
    };
    let edited = tampered("edited", &|l| l[3] = l[3].replace("run-trace-1", "run-trace-2"));
    assert!(edited.contains("entry 3 is bad") && edited.contains("edited"), "{edited}");
    let deleted = tampered("deleted", &|l| drop(l.remove(4)));
    assert!(deleted.contains("entry 4 is bad") && deleted.contains("deleted, duplicated or reordered"), "{deleted}");
    let reordered = tampered("reordered", &|l| l.swap(2, 5));
    assert!(reordered.contains("entry 2 is bad"), "{reordered}");
    let duplicated = tampered("duplicated", &|l| {
        let copy = l[1].clone();
        l.insert(2, copy);
    });
    assert!(duplicated.contains("entry 2 is bad"), "{duplicated}");
    let truncated = tampered("truncated", &|l| l.truncate(l.len() - 2));
    let cut = lines.len() - 2;
    assert!(truncated.contains(&format!("entry {cut} is bad")) && truncated.contains("cut off"), "{truncated}");
    // Rewritten together with its hash: only the signed head can tell.
    let rewritten = tampered("rewritten", &|l| {
        let mut line: Value = serde_json::from_str(&l[0]).unwrap();
        line["entry"]["context"]["actor"] = json!("mallory");
        let entry: keyward_broker::audit::Entry = serde_json::from_value(line["entry"].clone()).unwrap();
        let hash = entry.leaf_hash().unwrap();
        line["leaf_hash"] = json!(hash.iter().map(|b| format!("{b:02x}")).collect::<String>());
        l[0] = line.to_string();
    });
    assert!(rewritten.contains("the checkpoint says"), "{rewritten}");

    // A checkpoint signed by another log's key does not verify with this log's key.
    let other_dir = tempfile::tempdir().unwrap();
    let other = Broker::dev(&other_dir.path().join("dev")).await;
    let foreign = audit_cli(&other, &["checkpoint"]);
    let foreign_cp = dir.path().join("foreign.txt");
    std::fs::write(&foreign_cp, &foreign.stdout).unwrap();
    let refused = verify(&log, &foreign_cp);
    assert!(!refused.success && refused.stderr.contains("not signed by"), "{}", refused.stderr);

    // Online proofs, checked by the CLI itself.
    let proved = audit_cli(&broker, &["prove", "--entry", "2"]);
    assert!(proved.success && proved.stdout.contains("entry 2 is in the log"), "{}", proved.stderr);
    let extends = audit_cli(&broker, &["prove", "--since", cp.to_str().unwrap()]);
    assert!(extends.success && extends.stdout.contains("extends the checkpoint"), "{}", extends.stderr);
    let tail = audit_cli(&broker, &["tail", "-n", "3", "--kind", "credentials.issued"]);
    assert!(tail.success && tail.stdout.lines().count() == 2, "two issued entries:\n{}", tail.stdout);
}

/// Someone with database access rewrites history after a checkpoint was published: the next
/// checkpoint is not an extension of the published one, and `prove --since` says so.
#[tokio::test(flavor = "multi_thread")]
async fn a_rewritten_history_fails_the_consistency_check() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::dev(&dir.path().join("dev")).await;
    for run in ["r1", "r2", "r3"] {
        let body = json!({ "stack": "net", "run_id": run, "phase": "plan", "audience": "vault" });
        assert_eq!(broker.mint_raw(&body, Some(&broker.admin_token)).await.0, 201);
    }
    let published = audit_cli(&broker, &["checkpoint"]);
    let cp = dir.path().join("published.txt");
    std::fs::write(&cp, &published.stdout).unwrap();

    // Replace the first leaf's hash in the stored tiles, as a rewrite would: the tiles are what
    // heads and proofs read, once the integrator has built them.
    eventually("the integrator to cover the log", std::time::Duration::from_secs(30), || {
        let data_dir = broker.data_dir.clone();
        async move {
            let audit = Audit::open(&data_dir).await;
            (audit.0.audit_integrated().await.unwrap() == audit.0.audit_size().await.unwrap()).then_some(())
        }
    })
    .await;
    let db = broker.data_dir.join("keyward.db");
    let script = format!(
        "import sqlite3, sys; c = sqlite3.connect({:?}); \
         n = c.execute(\"UPDATE audit_tiles SET hashes = CAST(zeroblob(32) || substr(hashes, 33) AS BLOB) WHERE level = 0 AND idx = 0\").rowcount; \
         c.commit(); sys.exit(0 if n == 1 else 1)",
        db.to_str().unwrap()
    );
    let status = std::process::Command::new("python3").args(["-c", &script]).status().unwrap();
    assert!(status.success());
    let body = json!({ "stack": "net", "run_id": "r4", "phase": "plan", "audience": "vault" });
    assert_eq!(broker.mint_raw(&body, Some(&broker.admin_token)).await.0, 201);

    let out = audit_cli(&broker, &["prove", "--since", cp.to_str().unwrap()]);
    assert!(!out.success && out.stderr.contains("NOT an extension"), "{}{}", out.stdout, out.stderr);
}

/// Retention: entries covered by a signed checkpoint are archived and pruned; the archive plus
/// what remains still verifies against checkpoints, and proofs still cover the pruned range.
#[tokio::test(flavor = "multi_thread")]
async fn pruned_entries_stay_verifiable_through_their_archive() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::dev(&dir.path().join("dev")).await;
    // `keyward dev` records its own setup (pool, stack, its agent's enrollment) first; the
    // entries of this test start after them.
    let base = eventually("the dev agent to enroll", std::time::Duration::from_secs(30), || {
        let data_dir = broker.data_dir.clone();
        async move {
            let audit = Audit::open(&data_dir).await;
            (audit.count("agent.enrolled").await == 1).then_some(())?;
            Some(audit.0.audit_size().await.unwrap())
        }
    })
    .await;
    let cut = base + 5;
    let (cut_text, short_text) = (cut.to_string(), (cut + 2).to_string());
    let mint = |run: String| {
        let broker = &broker;
        async move {
            let body = json!({ "stack": "net", "run_id": run, "phase": "plan", "audience": "vault" });
            assert_eq!(broker.mint_raw(&body, Some(&broker.admin_token)).await.0, 201);
        }
    };
    for i in 0..10 {
        mint(format!("old-{i}")).await;
    }
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write("cp10.txt", &audit_cli(&broker, &["checkpoint"]).stdout);
    write("log.pub", audit_cli(&broker, &["public-key"]).stdout.trim());
    let archive = audit_cli(&broker, &["export", "--to", &cut_text]);
    write("archive.jsonl", &archive.stdout);

    // Refused: beyond the signed checkpoint; an archive that is not the log's prefix.
    let signed = Audit::open(&broker.data_dir).await.0.audit_size().await.unwrap();
    let past = (signed + 1).to_string();
    let beyond = audit_cli(&broker, &["prune", "--before", &past, "--archive", &path("archive.jsonl")]);
    assert!(!beyond.success && beyond.stderr.contains(&format!("sign one covering {past} first")), "{}", beyond.stderr);
    let short = audit_cli(&broker, &["prune", "--before", &short_text, "--archive", &path("archive.jsonl")]);
    assert!(
        !short.success && short.stderr.contains(&format!("needs an archive of 0..{short_text}")),
        "{}",
        short.stderr
    );
    let mut forged: Vec<String> = archive.stdout.lines().map(str::to_owned).collect();
    let mut line: Value = serde_json::from_str(&forged[2]).unwrap();
    line["entry"]["context"]["actor"] = json!("mallory");
    let entry: keyward_broker::audit::Entry = serde_json::from_value(line["entry"].clone()).unwrap();
    line["leaf_hash"] = json!(entry.leaf_hash().unwrap().iter().map(|b| format!("{b:02x}")).collect::<String>());
    forged[2] = line.to_string();
    write("forged.jsonl", &(forged.join("\n") + "\n"));
    let refused = audit_cli(&broker, &["prune", "--before", &cut_text, "--archive", &path("forged.jsonl")]);
    assert!(!refused.success && refused.stderr.contains("nothing pruned"), "{}", refused.stderr);
    assert_eq!(Audit::open(&broker.data_dir).await.for_run("old-0").await.len(), 1, "nothing was pruned");

    let pruned = audit_cli(&broker, &["prune", "--before", &cut_text, "--archive", &path("archive.jsonl")]);
    assert!(
        pruned.success && pruned.stdout.contains(&format!("pruned {cut} entries before {cut}")),
        "{}{}",
        pruned.stdout,
        pruned.stderr
    );
    let audit = Audit::open(&broker.data_dir).await;
    // old-0..old-4 are entries base..base+5.
    assert!(audit.for_run("old-0").await.is_empty() && audit.for_run("old-4").await.is_empty());
    assert_eq!(audit.for_run("old-5").await.len(), 1);
    assert_eq!(audit.0.audit_count("audit.pruned").await.unwrap(), 1, "the pruning is on record");

    // The log goes on; the archive plus today's export verifies against old and new checkpoints.
    mint("new-0".to_owned()).await;
    write("cp12.txt", &audit_cli(&broker, &["checkpoint"]).stdout);
    let rest = audit_cli(&broker, &["export"]);
    assert!(rest.stderr.contains(&format!("entries 0..{cut} were pruned")), "{}", rest.stderr);
    write("full.jsonl", &format!("{}{}", archive.stdout, rest.stdout));
    let verified = audit_cli(
        &broker,
        &[
            "verify",
            &path("full.jsonl"),
            "--checkpoint",
            &path("cp10.txt"),
            "--checkpoint",
            &path("cp12.txt"),
            "--public-key",
            &path("log.pub"),
        ],
    );
    let size = audit.0.audit_size().await.unwrap();
    assert!(
        verified.success && verified.stdout.contains(&format!("{size} entries (0..{size}) verified")),
        "{}{}",
        verified.stdout,
        verified.stderr
    );
    let proved = audit_cli(&broker, &["prove", "--entry", "2"]);
    assert!(proved.success, "proofs still cover pruned entries: {}", proved.stderr);
    let extends = audit_cli(&broker, &["prove", "--since", &path("cp10.txt")]);
    assert!(extends.success, "{}", extends.stderr);
}

/// The broker does not vouch for itself: an independent verifier in Python with `cryptography`
/// (tests/py/verify_audit.py), written from the formats' public descriptions, checks an export's
/// RFC 6962 root against the signed checkpoint (C2SP signed note, Ed25519) and a job log bundle's
/// ECDSA-signed chunk chains against the heads sealed in that log. Each wrong root, signature or
/// digest fails it.
#[tokio::test(flavor = "multi_thread")]
async fn an_independent_verifier_accepts_the_log_and_a_log_bundle_and_nothing_tampered() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::dev(&dir.path().join("dev")).await;
    let submitted = broker.cli(&["run", "submit", "--stack", "example", "--wait", "--json"]);
    assert!(submitted.success, "{}", submitted.stderr);
    let run: Value = serde_json::from_str(&submitted.stdout).unwrap();
    assert_eq!(run["state"], "finished", "{run}");
    let path = |name: &str| dir.path().join(name);
    let bundle = path("run.logbundle.json");
    let exported = broker.cli(&["run", "logs", run["id"].as_str().unwrap(), "--export", bundle.to_str().unwrap()]);
    assert!(exported.success, "{}", exported.stderr);
    let (_, ca) = keyward_tests::agent::bootstrap(&broker.addr).await;
    std::fs::write(path("agent-ca.pem"), ca).unwrap();
    for (args, file) in [(["checkpoint"], "cp.txt"), (["public-key"], "log.pub"), (["export"], "log.jsonl")] {
        let out = audit_cli(&broker, &args);
        assert!(out.success, "{}", out.stderr);
        std::fs::write(path(file), out.stdout).unwrap();
    }
    let verify = |export: &str, checkpoint: &str, bundle: &str| -> Value {
        let script = workspace_root().join("tests/py/verify_audit.py");
        let output = std::process::Command::new(keyward_tests::venv().join("bin/python"))
            .arg(script)
            .args([export, checkpoint, "log.pub", bundle, "agent-ca.pem"].map(&path))
            .output()
            .unwrap();
        let verdict: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!("{e}: {}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
        });
        assert_eq!(output.status.success(), verdict["ok"] == true, "{verdict}");
        verdict
    };
    let refused = |verdict: Value, words: &str| {
        assert_eq!(verdict["ok"], false, "tampering went unnoticed ({words}): {verdict}");
        assert!(verdict["error"].as_str().unwrap().contains(words), "{words}: {verdict}");
    };

    let good = verify("log.jsonl", "cp.txt", "run.logbundle.json");
    assert_eq!(good["ok"], true, "{good}");
    let size = Audit::open(&broker.data_dir).await.check_tree().await;
    assert_eq!(good["entries"], size, "{good}");
    assert_eq!(good["leases"], 2, "the plan's and the apply's chains: {good}");
    assert!(good["chunks"].as_u64().unwrap() >= 2, "{good}");

    // The export: an entry rewritten together with its leaf hash changes the root.
    let lines: Vec<String> = std::fs::read_to_string(path("log.jsonl")).unwrap().lines().map(str::to_owned).collect();
    let mut rewritten = lines.clone();
    let mut line: Value = serde_json::from_str(&rewritten[1]).unwrap();
    line["entry"]["context"]["actor"] = json!("mallory");
    let entry: keyward_broker::audit::Entry = serde_json::from_value(line["entry"].clone()).unwrap();
    line["leaf_hash"] = json!(entry.leaf_hash().unwrap().iter().map(|b| format!("{b:02x}")).collect::<String>());
    rewritten[1] = line.to_string();
    std::fs::write(path("rewritten.jsonl"), rewritten.join("\n") + "\n").unwrap();
    refused(verify("rewritten.jsonl", "cp.txt", "run.logbundle.json"), "is not the checkpoint's signed root");
    let mut edited = lines.clone();
    edited[1] = edited[1].replace("\"seq\":1", "\"seq\":1,\"note\":\"x\"");
    std::fs::write(path("edited.jsonl"), edited.join("\n") + "\n").unwrap();
    refused(verify("edited.jsonl", "cp.txt", "run.logbundle.json"), "leaf hash does not match");

    // The checkpoint: another root under the same signature, or a signature with one bit flipped.
    let note = std::fs::read_to_string(path("cp.txt")).unwrap();
    let root = note.lines().nth(2).unwrap();
    std::fs::write(path("other-root.txt"), note.replace(root, &STANDARD.encode([7_u8; 32]))).unwrap();
    refused(verify("log.jsonl", "other-root.txt", "run.logbundle.json"), "signature does not verify");
    let signature_line = note.lines().last().unwrap();
    let (prefix, encoded) = signature_line.rsplit_once(' ').unwrap();
    let mut blob = STANDARD.decode(encoded).unwrap();
    *blob.last_mut().unwrap() ^= 0x01;
    let flipped = note.replace(signature_line, &format!("{prefix} {}", STANDARD.encode(&blob)));
    std::fs::write(path("flipped.txt"), flipped).unwrap();
    refused(verify("log.jsonl", "flipped.txt", "run.logbundle.json"), "signature does not verify");

    // The bundle: chunk signatures swapped between the two chains, a chunk's bytes edited, a seal
    // that is not the chain's head.
    let original: Value = serde_json::from_slice(&std::fs::read(&bundle).unwrap()).unwrap();
    let tampered = |name: &str, edit: &dyn Fn(&mut Value)| {
        let mut copy = original.clone();
        edit(&mut copy);
        std::fs::write(path(name), serde_json::to_vec(&copy).unwrap()).unwrap();
        verify("log.jsonl", "cp.txt", name)
    };
    refused(
        tampered("swapped.json", &|b| {
            let first = b["leases"][0]["chunks"][0]["signature"].clone();
            b["leases"][0]["chunks"][0]["signature"] = b["leases"][1]["chunks"][0]["signature"].clone();
            b["leases"][1]["chunks"][0]["signature"] = first;
        }),
        "signature does not verify",
    );
    refused(
        tampered("edited.json", &|b| {
            let data = STANDARD.decode(b["leases"][0]["chunks"][0]["data"].as_str().unwrap()).unwrap();
            b["leases"][0]["chunks"][0]["data"] = json!(STANDARD.encode([data.as_slice(), b"!"].concat()));
        }),
        "digest does not match",
    );
    refused(tampered("resealed.json", &|b| b["leases"][1]["sealed"]["chunks"] = json!(0)), "not the sealed one");
}

/// `keyward-verify`, the auditor's verifier (crate `keyward-audit`, built without the broker),
/// accepts exactly what a running broker hands out: an export with a checkpoint and the public
/// key, and the `/v1/audit/proof/…` answers tied to signed checkpoints. Each kind of tampering
/// exits 1 naming what broke; evidence it cannot check (a checkpoint without the key) exits 2.
#[tokio::test(flavor = "multi_thread")]
async fn keyward_verify_checks_a_brokers_export_checkpoints_and_proofs() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::dev(&dir.path().join("dev")).await;
    let mint = |run: &'static str| {
        let broker = &broker;
        async move {
            let body = json!({ "stack": "net", "run_id": run, "phase": "plan", "audience": "vault" });
            assert_eq!(broker.mint_raw(&body, Some(&broker.admin_token)).await.0, 201);
        }
    };
    for run in ["r1", "r2", "r3"] {
        mint(run).await;
    }
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let save = |args: &[&str], file: &str| {
        let out = audit_cli(&broker, args);
        assert!(out.success, "{}", out.stderr);
        std::fs::write(path(file), out.stdout).unwrap();
    };
    save(&["checkpoint"], "cp.txt");
    save(&["public-key"], "log.pub");
    save(&["export"], "log.jsonl");
    let size: u64 = std::fs::read_to_string(path("cp.txt")).unwrap().lines().nth(1).unwrap().parse().unwrap();
    let refused = |out: CliOutput, words: &str| {
        assert_eq!(out.code, Some(1), "tampering went unnoticed ({words}): {}{}", out.stdout, out.stderr);
        assert!(out.stderr.contains(words), "{words}: {}", out.stderr);
    };

    // The export, as the broker wrote it.
    let good = keyward_verify(&[
        "export",
        &path("log.jsonl"),
        "--checkpoint",
        &path("cp.txt"),
        "--public-key",
        &path("log.pub"),
    ]);
    assert_eq!(good.code, Some(0), "{}{}", good.stdout, good.stderr);
    assert!(good.stdout.contains(&format!("at size {size}: signature and head match")), "{}", good.stdout);

    // An entry edited in place, one rewritten together with its leaf hash, one deleted.
    let lines: Vec<String> = std::fs::read_to_string(path("log.jsonl")).unwrap().lines().map(str::to_owned).collect();
    let write = |name: &str, lines: &[String]| std::fs::write(path(name), lines.join("\n") + "\n").unwrap();
    let mut edited = lines.clone();
    let mut line: Value = serde_json::from_str(&edited[2]).unwrap();
    line["entry"]["context"]["actor"] = json!("mallory");
    edited[2] = line.to_string();
    write("edited.jsonl", &edited);
    let verify_export = |file: &str| {
        keyward_verify(&["export", &path(file), "--checkpoint", &path("cp.txt"), "--public-key", &path("log.pub")])
    };
    let out = verify_export("edited.jsonl");
    refused(out, "entry 2 is bad: its content does not match its leaf hash: the entry was edited");
    let entry: keyward_broker::audit::Entry = serde_json::from_value(line["entry"].clone()).unwrap();
    line["leaf_hash"] = json!(keyward_proto::encoding::hex(&entry.leaf_hash().unwrap()));
    let mut rewritten = lines.clone();
    rewritten[2] = line.to_string();
    write("rewritten.jsonl", &rewritten);
    refused(verify_export("rewritten.jsonl"), &format!("the tree of the export's first {size} entries has head"));
    let mut deleted = lines.clone();
    deleted.remove(2);
    write("deleted.jsonl", &deleted);
    refused(verify_export("deleted.jsonl"), "entry 2 is bad: line 3 holds entry 3 where entry 2 belongs");

    // Another key under the log's name; and a checkpoint with no key to check it against.
    let name = std::fs::read_to_string(path("log.pub")).unwrap().split('+').next().unwrap().to_owned();
    let pkcs8 = aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new()).unwrap();
    let other = keyward_broker::audit::checkpoint::CheckpointSigner::from_pkcs8(&name, pkcs8.as_ref()).unwrap();
    std::fs::write(path("other.pub"), other.verifier().to_string()).unwrap();
    let out = keyward_verify(&[
        "export",
        &path("log.jsonl"),
        "--checkpoint",
        &path("cp.txt"),
        "--public-key",
        &path("other.pub"),
    ]);
    refused(out, "the checkpoint is not signed by");
    let keyless = keyward_verify(&["export", &path("log.jsonl"), "--checkpoint", &path("cp.txt")]);
    assert_eq!(keyless.code, Some(2), "{}", keyless.stderr);
    assert!(keyless.stderr.contains("public key is missing"), "{}", keyless.stderr);

    // An inclusion proof of entry 2 in the checkpoint's tree, as the API answers it.
    let get = |query: String| {
        let broker = &broker;
        async move {
            let response = keyward_tests::http()
                .get(format!("{}/v1/audit/proof/{query}", broker.addr))
                .bearer_auth(&broker.admin_token)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.unwrap()
        }
    };
    let inclusion = get(format!("inclusion?seq=2&size={size}")).await;
    std::fs::write(path("inclusion.json"), inclusion.to_string()).unwrap();
    let anchored = ["--checkpoint", &path("cp.txt"), "--public-key", &path("log.pub")].map(str::to_owned);
    let prove = |kind: &str, file: &str, extra: &[&str]| {
        let mut args = vec!["proof".to_owned(), kind.to_owned(), path(file)];
        args.extend(anchored.iter().cloned());
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        keyward_verify(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let good = prove("inclusion", "inclusion.json", &["--export", &path("log.jsonl")]);
    assert_eq!(good.code, Some(0), "{}{}", good.stdout, good.stderr);
    assert!(good.stdout.contains(&format!("entry 2 is in the log of {size} entries")), "{}", good.stdout);
    assert!(good.stdout.contains("is the one checkpoint") && good.stdout.contains("entry 2 of"), "{}", good.stdout);
    let mut forged = inclusion.clone();
    forged["leaf_hash"] = serde_json::from_str::<Value>(&lines[3]).unwrap()["leaf_hash"].clone();
    std::fs::write(path("forged.json"), forged.to_string()).unwrap();
    refused(prove("inclusion", "forged.json", &[]), "the broker's inclusion proof for entry 2 does not verify");
    // The proof holds, but the entry in hand is not the one proven.
    refused(prove("inclusion", "inclusion.json", &["--export", &path("rewritten.jsonl")]), "is not the one in the log");

    // A consistency proof from that checkpoint to a later one.
    mint("r4").await;
    save(&["checkpoint"], "cp2.txt");
    let consistency = get(format!("consistency?old={size}&new={}", size + 1)).await;
    std::fs::write(path("consistency.json"), consistency.to_string()).unwrap();
    let good = prove("consistency", "consistency.json", &["--checkpoint", &path("cp2.txt")]);
    assert_eq!(good.code, Some(0), "{}{}", good.stdout, good.stderr);
    assert!(
        good.stdout.contains(&format!("the log of {} entries", size + 1))
            && good.stdout.contains(&format!("extends the checkpoint of {size} entries")),
        "{}",
        good.stdout
    );
    // A proof about a tree that no checkpoint given vouches for is not anchored by it.
    let unanchored = get("inclusion?seq=2".to_owned()).await;
    std::fs::write(path("unanchored.json"), unanchored.to_string()).unwrap();
    refused(
        prove("inclusion", "unanchored.json", &[]),
        &format!("the checkpoint is of {size} entries; the answer's heads are at {}", size + 1),
    );
    let mut forged = consistency.clone();
    forged["old_root"] = json!("00".repeat(32));
    std::fs::write(path("forged.json"), forged.to_string()).unwrap();
    refused(
        prove("consistency", "forged.json", &[]),
        &format!("is NOT an extension of the checkpoint of {size} entries"),
    );
}

/// `keyward-verify logs` accepts the log bundle of a real run (the dev agent's Terraform plan and
/// apply), pinned to the agent CA, and refuses it edited, re-signed, for another run or under
/// another CA, naming the chunk or the problem.
#[tokio::test(flavor = "multi_thread")]
async fn keyward_verify_checks_a_real_runs_log_bundle_against_the_agent_ca() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::dev(&dir.path().join("dev")).await;
    let submitted = broker.cli(&["run", "submit", "--stack", "example", "--wait", "--json"]);
    assert!(submitted.success, "{}", submitted.stderr);
    let run: Value = serde_json::from_str(&submitted.stdout).unwrap();
    assert_eq!(run["state"], "finished", "{run}");
    let run_id = run["id"].as_str().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let exported = broker.cli(&["run", "logs", run_id, "--export", &path("bundle.json")]);
    assert!(exported.success, "{}", exported.stderr);
    let (_, ca) = keyward_tests::agent::bootstrap(&broker.addr).await;
    std::fs::write(path("agent-ca.pem"), ca).unwrap();

    let good = keyward_verify(&["logs", &path("bundle.json"), "--ca", &path("agent-ca.pem"), "--run", run_id]);
    assert_eq!(good.code, Some(0), "{}{}", good.stdout, good.stderr);
    assert!(
        good.stdout.contains(&format!("verified: run {run_id}")) && good.stdout.contains("(pinned with --ca)"),
        "{}",
        good.stdout
    );
    assert_eq!(
        good.stdout.matches("sealed in the audit log").count(),
        2,
        "the plan's and the apply's chains: {}",
        good.stdout
    );

    let original: Value = serde_json::from_slice(&std::fs::read(path("bundle.json")).unwrap()).unwrap();
    let tampered = |edit: &dyn Fn(&mut Value)| {
        let mut copy = original.clone();
        edit(&mut copy);
        std::fs::write(path("tampered.json"), serde_json::to_vec(&copy).unwrap()).unwrap();
        keyward_verify(&["logs", &path("tampered.json"), "--ca", &path("agent-ca.pem")])
    };
    let refused = |out: CliOutput, words: &str| {
        assert_eq!(out.code, Some(1), "tampering went unnoticed ({words}): {}{}", out.stdout, out.stderr);
        assert!(out.stderr.contains(words), "{words}: {}", out.stderr);
    };
    let lease = &original["leases"][0];
    let first_chunk = format!("job {} lease {} chunk 0", lease["job_id"].as_str().unwrap(), lease["fencing_token"]);
    let out = tampered(&|b| {
        let data = STANDARD.decode(b["leases"][0]["chunks"][0]["data"].as_str().unwrap()).unwrap();
        b["leases"][0]["chunks"][0]["data"] = json!(STANDARD.encode([data.as_slice(), b"!"].concat()));
    });
    refused(out, &format!("{first_chunk}: chunk 0 does not match its digest (edited)"));
    let out = tampered(&|b| {
        let first = b["leases"][0]["chunks"][0]["signature"].clone();
        b["leases"][0]["chunks"][0]["signature"] = b["leases"][1]["chunks"][0]["signature"].clone();
        b["leases"][1]["chunks"][0]["signature"] = first;
    });
    refused(out, &format!("{first_chunk}: chunk 0 is not signed by the agent's key"));
    refused(tampered(&|b| b["leases"][1]["sealed"]["chunks"] = json!(0)), "but the audit log sealed");

    let other_run =
        keyward_verify(&["logs", &path("bundle.json"), "--ca", &path("agent-ca.pem"), "--run", "run-other"]);
    refused(other_run, &format!("the bundle is the log of run {run_id}, not run-other"));
    let foreign = rcgen::generate_simple_self_signed(vec!["foreign.example".to_owned()]).unwrap();
    std::fs::write(path("foreign-ca.pem"), foreign.cert.pem()).unwrap();
    let out = keyward_verify(&["logs", &path("bundle.json"), "--ca", &path("foreign-ca.pem")]);
    refused(out, "the bundle names another CA than the pinned one");
    let unreadable = keyward_verify(&["logs", &path("bundle.json"), "--ca", &path("no-such-ca.pem")]);
    assert_eq!(unreadable.code, Some(2), "{}", unreadable.stderr);
}
