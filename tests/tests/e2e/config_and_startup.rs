//! Bad configuration and bad key material: a clear message naming the key path or file, a non-zero
//! exit, and nothing written.

use std::path::Path;

use keyward_tests::broker::{Broker, keyward};

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

fn config(data_dir: &Path, keys: &str, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nexternal_url = \"http://127.0.0.1:1\"\n\
         [storage]\ndata_dir = \"{}\"\n[keys]\n{keys}\n{extra}",
        data_dir.display()
    )
}

#[test]
fn check_config_accepts_the_shipped_example() {
    // As an operator would: the example, with the policy library where its `[policy] dir` says.
    let dir = tempfile::tempdir().unwrap();
    let policies = keyward_tests::workspace_root().join("policies");
    let example = std::fs::read_to_string(keyward_tests::workspace_root().join("deploy/keyward.example.toml")).unwrap();
    assert!(example.contains("dir = \"/etc/keyward/policies\""));
    let config = dir.path().join("keyward.toml");
    write(&config, &example.replace("/etc/keyward/policies", policies.to_str().unwrap()));
    let kek = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let out = keyward(&["check-config", config.to_str().unwrap()], &[("KEYWARD_KEK", kek)]);
    assert!(out.success, "{}", out.stderr);
    assert!(out.stdout.contains("OK") && out.stdout.contains("policy files"), "{}", out.stdout);
}

#[test]
fn check_config_names_the_first_problem_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let file = dir.path().join("keyward.toml");
    let kek_file = dir.path().join("kek");
    let cases = [
        (
            "unknown key",
            config(&data_dir, "kek = \"x\"\nrotaton_period = \"1h\"", ""),
            "`keys.rotaton_period`",
            "unknown field",
        ),
        (
            "wrong type",
            config(&data_dir, "kek_env = \"K\"", "[tokens]\nmax_ttl = 5"),
            "`tokens.max_ttl`",
            "invalid type",
        ),
        (
            "out of range",
            config(&data_dir, "kek_env = \"K\"", "[tokens]\nmax_ttl = \"2h\""),
            "`tokens.max_ttl`",
            "at most 1h",
        ),
        ("missing KEK", config(&data_dir, "algorithm = \"ES256\"", ""), "`keys.kek_file`", "no key-encryption key"),
        (
            "unset KEK variable",
            config(&data_dir, "kek_env = \"KEYWARD_TEST_UNSET_KEK\"", ""),
            "`keys.kek_env`",
            "KEYWARD_TEST_UNSET_KEK",
        ),
        (
            "unreadable KEK file",
            config(&data_dir, &format!("kek_file = \"{}\"", kek_file.display()), ""),
            "`keys.kek_file`",
            "cannot read key-encryption key file",
        ),
        ("malformed KEK", config(&data_dir, "kek = \"c2hvcnQ=\"", ""), "`keys.kek`", "expected 32 bytes"),
        (
            "bad subject template",
            config(&data_dir, "kek_env = \"K\"", "[tokens]\nsubject_template = \"run:{run_id}\""),
            "`tokens.subject_template`",
            "unknown placeholder",
        ),
        (
            "plain http issuer",
            config(&data_dir, "kek_env = \"K\"", "").replace("http://127.0.0.1:1", "http://keyward.example.com"),
            "`server.external_url`",
            "loopback",
        ),
        (
            "unknown algorithm",
            config(&data_dir, "kek_env = \"K\"\nalgorithm = \"HS256\"", ""),
            "`keys.algorithm`",
            "unknown variant",
        ),
    ];
    let kek = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    for (what, text, key, reason) in cases {
        write(&file, &text);
        for command in [vec!["check-config", file.to_str().unwrap()], vec!["serve", "--config", file.to_str().unwrap()]]
        {
            let out = keyward(&command, &[("K", kek)]);
            assert!(!out.success, "{what}: {command:?} must fail");
            assert!(
                out.stderr.contains(key) && out.stderr.contains(reason),
                "{what}: {command:?} said: {}",
                out.stderr
            );
            assert!(!out.stderr.contains("panicked"), "{what}: {}", out.stderr);
            assert!(!data_dir.exists(), "{what}: {command:?} wrote to the data dir");
        }
    }
    let missing = keyward(&["check-config", dir.path().join("absent.toml").to_str().unwrap()], &[]);
    assert!(!missing.success && missing.stderr.contains("absent.toml"), "{}", missing.stderr);
}

/// Runs Python's own sqlite3 module against the broker's database: an independent tool, so the
/// corruption is done the way a disk or an intruder would, not through Keyward's code.
fn python_sqlite(db: &Path, script: &str) -> String {
    let program = format!("import sqlite3, sys\nc = sqlite3.connect(sys.argv[1])\n{script}\nc.commit()");
    let out = std::process::Command::new("python3").args(["-c", &program]).arg(db).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupted_key_material_or_a_wrong_kek_refuses_to_start_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("dev");
    Broker::dev(&data_dir).await.stop();
    let db = data_dir.join("keyward.db");
    let dev = ["dev", "--data-dir", data_dir.to_str().unwrap(), "--listen", "127.0.0.1:0"];

    // A different KEK: told apart from corruption.
    let kek = std::fs::read(data_dir.join("kek")).unwrap();
    write(&data_dir.join("kek"), "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=");
    let out = keyward(&dev, &[]);
    assert!(!out.success);
    assert!(
        out.stderr.contains("keyward.db") && out.stderr.contains("sealed under key-encryption key"),
        "{}",
        out.stderr
    );
    std::fs::write(data_dir.join("kek"), kek).unwrap();

    // Flip one bit of the current key's ciphertext.
    let kid = python_sqlite(
        &db,
        "kid, key = c.execute(\"SELECT kid, sealed_key FROM signing_keys WHERE state = 'current'\").fetchone()\n\
         key = bytearray(key); key[-1] ^= 1\n\
         c.execute('UPDATE signing_keys SET sealed_key = ? WHERE kid = ?', (bytes(key), kid))\n\
         print(kid)",
    );
    let out = keyward(&dev, &[]);
    assert!(!out.success, "must refuse to start");
    assert!(out.stderr.contains(&kid), "names the key: {}", out.stderr);
    assert!(out.stderr.contains(db.to_str().unwrap()), "names the file: {}", out.stderr);
    assert!(out.stderr.contains("corrupted or was modified"), "says why: {}", out.stderr);

    // A row whose column no longer has the right type.
    python_sqlite(&db, "c.execute(\"UPDATE signing_keys SET public_jwk = x'ff00' WHERE state = 'next'\")");
    let out = keyward(&dev, &[]);
    assert!(!out.success);
    assert!(out.stderr.contains("signing_keys") && out.stderr.contains(db.to_str().unwrap()), "{}", out.stderr);
}

const ROLE: &str = "arn:aws:iam::123456789012:role/ci-read";

/// A `keyward dev --config` overlay: a read target on moto's STS and a trusted CI issuer.
fn overlay(sts_endpoint: &str) -> String {
    format!(
        "[[targets]]\nname = \"ci-read\"\ntype = \"aws\"\naccess = \"read\"\nrole_arn = \"{ROLE}\"\n\
         sts_endpoint = \"{sts_endpoint}\"\nlabels = {{ env = \"staging\" }}\n\
         [[issuers]]\nname = \"ci\"\nissuer = \"http://127.0.0.1:1/v1/identity/oidc\"\naudience = \"keyward\"\n\
         require_nbf = false\nrequired_claims = {{ repository_owner = \"acme\" }}\ntargets = [\"aws:ci-read\"]\n"
    )
}

/// What a newcomer trying docs/ci.md does: `keyward dev --config ci.toml` with a target and an
/// issuer, no `serve` configuration. The target works, and the agent endpoint stays where enrolled
/// agents expect it across a restart.
#[tokio::test(flavor = "multi_thread")]
async fn keyward_dev_takes_targets_and_issuers_from_an_overlay_and_keeps_its_agent_port() {
    let dir = tempfile::tempdir().unwrap();
    let moto = keyward_tests::moto::Moto::start(dir.path()).await;
    let file = dir.path().join("ci.toml");
    write(&file, &overlay(&moto.endpoint));
    let data_dir = dir.path().join("data");
    let args = ["--config", file.to_str().unwrap()];
    let broker = Broker::dev_with(&data_dir, &args).await;
    assert!(broker.log_text().contains("targets    aws:ci-read"), "{}", broker.log_text());
    assert!(broker.log_text().contains("issuers    ci"), "{}", broker.log_text());

    // A run token is exchanged for STS credentials of the overlay's target.
    let (status, minted) = broker
        .mint_raw(
            &serde_json::json!({ "stack": "network", "run_id": "run-dev-1", "phase": "plan", "audience": broker.addr }),
            Some(&broker.admin_token),
        )
        .await;
    assert_eq!(status, 201, "{minted}");
    let (status, body) = broker.exchange(minted["token"].as_str().unwrap(), "aws:ci-read").await;
    assert_eq!(status, 200, "{body}");
    assert!(body["aws_credentials"]["AccessKeyId"].as_str().unwrap().starts_with("ASIA"), "{body}");
    assert_eq!(moto.sts_requests()[0].field("RoleArn"), Some(ROLE));

    let endpoint = broker.get_json("/v1/agents/bootstrap").await["endpoint"].as_str().unwrap().to_owned();
    broker.stop();
    let again = Broker::dev_with(&data_dir, &args).await;
    let after = again.get_json("/v1/agents/bootstrap").await["endpoint"].as_str().unwrap().to_owned();
    assert_eq!(after, endpoint, "the agent endpoint moved across a restart");
}

/// A mistake in the overlay file: a non-zero exit naming the file and the key, nothing started and
/// nothing written, whether the data dir is new or already in use.
#[test]
fn a_bad_dev_overlay_names_the_file_and_key_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let file = dir.path().join("ci.toml");
    let good = overlay("http://127.0.0.1:1");
    let cases = [
        ("a table dev mode owns", format!("{good}[server]\nlisten = \"0.0.0.0:80\"\n"), "`server`", "dev mode owns"),
        ("an unknown table", format!("{good}[store]\n"), "`store`", "unknown table"),
        ("a misspelled key", good.replace("role_arn", "role_ar"), "role_ar", "unknown field"),
        ("an invalid target", good.replace(ROLE, "role/ci"), "`targets.role_arn`", "not an IAM role ARN"),
        (
            "an audience dev mode does not allow",
            good.replace("labels", "audience = \"minio\"\nlabels"),
            "`targets.audience`",
            "not in tokens.allowed_audiences",
        ),
        (
            "a plain-http issuer",
            good.replace("http://127.0.0.1:1", "http://ci.example"),
            "`issuers.issuer`",
            "loopback",
        ),
        (
            "a missing policy dir",
            format!("{good}[policy]\ndir = \"{}\"\n", dir.path().join("absent").display()),
            "`policy.dir`",
            "absent",
        ),
    ];
    let dev = |data_dir: &Path| {
        keyward(
            &[
                "dev",
                "--data-dir",
                data_dir.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
                "--config",
                file.to_str().unwrap(),
            ],
            &[],
        )
    };
    let used = dir.path().join("used");
    std::fs::create_dir(&used).unwrap();
    write(&used.join("kek"), "kept");
    for (what, text, key, reason) in cases {
        write(&file, &text);
        for target in [&data_dir, &used] {
            let out = dev(target);
            assert!(!out.success, "{what}: must fail");
            assert!(
                out.stderr.contains("ci.toml: ") && out.stderr.contains(key) && out.stderr.contains(reason),
                "{what}: {}",
                out.stderr
            );
            assert!(out.stdout.is_empty(), "{what}: printed exports: {}", out.stdout);
        }
        assert!(!data_dir.exists(), "{what}: created the data dir");
        let entries: Vec<_> = std::fs::read_dir(&used).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(entries, ["kek"], "{what}: wrote to a data dir in use");
    }
    std::fs::remove_file(&file).unwrap();
    let missing = dev(&data_dir);
    assert!(!missing.success && missing.stderr.contains("ci.toml"), "{}", missing.stderr);
}

/// The audit log's checkpoint key is named after the external URL: a broker started over a
/// database whose log was signed under another name (a restore or move that changed
/// `server.external_url`) says so at start, naming both, instead of switching keys silently.
#[tokio::test(flavor = "multi_thread")]
async fn a_broker_whose_external_url_changed_warns_that_its_log_key_is_new() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("dev");
    let first = Broker::dev(&data_dir).await;
    let first_origin = format!("{}/audit", first.addr.trim_start_matches("http://"));
    assert!(!first.log_text().contains("signed under another name"), "{}", first.log_text());
    first.stop();

    // `dev --listen 127.0.0.1:0` binds another port: another external URL over the same database.
    let second = Broker::dev(&data_dir).await;
    let log = second.log_text();
    let warning = log.lines().find(|l| l.contains("signed under another name")).unwrap_or_else(|| panic!("{log}"));
    assert!(warning.contains(&first_origin), "names the earlier key: {warning}");
    assert!(warning.contains(second.addr.trim_start_matches("http://")), "names the new one: {warning}");
    assert!(warning.contains("server.external_url"), "says what to set: {warning}");
}
