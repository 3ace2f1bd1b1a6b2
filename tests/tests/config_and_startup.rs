//! Bad configuration and bad key material: a clear message naming the key path or file, a non-zero
//! exit, and nothing written.

// A panic in a test is a failed test: unwrap and index freely.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

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
