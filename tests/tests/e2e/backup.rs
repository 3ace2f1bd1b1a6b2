//! `keyward backup` end to end: a copy taken from a serving broker while clients keep minting
//! restores into a fresh data directory (same KEK) whose audit log is proven to extend a signed
//! checkpoint published before the backup, holds what was issued before the copy and nothing
//! begun after it, and goes on appending. A backup never overwrites a file, is 0600, and leaves
//! nothing behind when it fails; PostgreSQL is sent to `pg_dump`.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyward_tests::broker::{Broker, ConfigExtra, Output, TEST_KEK, keyward, keyward_verify, write_config};
use keyward_tests::{eventually, free_addr, http, workspace_root};
use serde_json::{Value, json};

fn mint_body(run: &str) -> Value {
    json!({ "stack": "net", "run_id": run, "phase": "plan", "audience": "vault" })
}

/// A `keyward serve` config listening on `addr` with its SQLite database in `data_dir`; returns the
/// file and the broker's URL.
fn config(dir: &Path, name: &str, addr: SocketAddr, data_dir: &Path) -> (PathBuf, String) {
    let file = dir.join(name);
    let rest = format!(
        "[policy]\ndir = \"{}\"\n[tokens]\nallowed_audiences = [\"vault\"]\n",
        workspace_root().join("policies").display()
    );
    write_config(&file, addr, data_dir, &ConfigExtra { rest: &rest, ..ConfigExtra::default() });
    (file, format!("http://{addr}"))
}

fn audit_cli(broker: &Broker, args: &[&str]) -> Output {
    let out = broker.cli(&[&["audit"], args].concat());
    assert!(out.success, "audit {args:?}: {}", out.stderr);
    out
}

/// Mints in a loop until `stop`; each run ID is recorded with whether the backup had finished
/// before its request was sent, and only once the broker answered 201.
struct Minter {
    stop: Arc<AtomicBool>,
    backup_done: Arc<AtomicBool>,
    minted: Arc<Mutex<Vec<(String, bool)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Minter {
    fn start(broker: &Broker) -> Self {
        let (stop, backup_done): (Arc<AtomicBool>, Arc<AtomicBool>) = (Arc::default(), Arc::default());
        let minted: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
        let (url, token) = (format!("{}/v1/run-tokens", broker.addr), broker.admin_token.clone());
        let task = tokio::spawn({
            let (stop, backup_done, minted) = (Arc::clone(&stop), Arc::clone(&backup_done), Arc::clone(&minted));
            async move {
                let client = http();
                for i in 0.. {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let after = backup_done.load(Ordering::SeqCst);
                    let run = format!("live-{i}");
                    let response = client.post(&url).bearer_auth(&token).json(&mint_body(&run)).send().await;
                    assert_eq!(response.expect("mint").status(), 201);
                    minted.lock().unwrap().push((run, after));
                }
            }
        });
        Self { stop, backup_done, minted, task }
    }

    fn count(&self) -> usize {
        self.minted.lock().unwrap().len()
    }

    async fn until(&self, what: &str, n: usize) {
        eventually(what, Duration::from_secs(60), || {
            let count = self.count();
            async move { (count >= n).then_some(()) }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_taken_while_serving_restores_a_log_that_extends_an_earlier_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    let listen = free_addr();
    let (config_file, addr) = config(dir.path(), "keyward.toml", listen, &path("broker"));
    let broker = Broker::serve(&config_file, &path("broker"), &addr, &[("TEST_KEK", TEST_KEK)]).await;
    for run in ["before-1", "before-2", "before-3"] {
        assert_eq!(broker.mint_raw(&mint_body(run), Some(&broker.admin_token)).await.0, 201);
    }
    std::fs::write(path("cp.txt"), audit_cli(&broker, &["checkpoint"]).stdout).unwrap();
    std::fs::write(path("log.pub"), audit_cli(&broker, &["public-key"]).stdout.trim()).unwrap();
    let checkpoint_size: u64 =
        std::fs::read_to_string(path("cp.txt")).unwrap().lines().nth(1).unwrap().parse().unwrap();

    // The copy is taken while a client keeps minting: before, during and after it.
    let minter = Minter::start(&broker);
    minter.until("tokens minted before the backup", 20).await;
    let minted_before = minter.count();
    let backup_file = path("keyward-backup.db");
    let args: Vec<String> =
        ["backup", "--to", backup_file.to_str().unwrap(), "--config", config_file.to_str().unwrap(), "--json"]
            .map(str::to_owned)
            .to_vec();
    let out = tokio::task::spawn_blocking(move || keyward(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[]))
        .await
        .unwrap();
    minter.backup_done.store(true, Ordering::SeqCst);
    assert!(out.success, "{}", out.stderr);
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    let backed_up = report["audit_entries"].as_u64().unwrap();
    assert!(backed_up > checkpoint_size, "{report}");
    assert_eq!(std::fs::metadata(&backup_file).unwrap().permissions().mode() & 0o777, 0o600);
    minter.until("tokens minted after the backup", minter.count() + 20).await;
    minter.stop.store(true, Ordering::SeqCst);
    minter.task.await.unwrap();
    let minted = minter.minted.lock().unwrap().clone();
    let head_before_stop = audit_cli(&broker, &["checkpoint"]).stdout;
    let admin_token = broker.admin_token.clone();
    broker.stop();

    // Before restoring: the backup's own log verifies offline against the checkpoint (read-only:
    // the file is unchanged), not against one signed after the backup, and not once edited.
    let untouched = std::fs::read(&backup_file).unwrap();
    let verify = |file: &Path, checkpoint: &str| {
        let [file, checkpoint, key] =
            [file, &path(checkpoint), &path("log.pub")].map(|p| p.to_str().unwrap().to_owned());
        keyward(&["backup", "verify", &file, "--checkpoint", &checkpoint, "--public-key", &key], &[])
    };
    let checked = verify(&backup_file, "cp.txt");
    assert!(checked.success, "{}", checked.stderr);
    assert!(checked.stdout.contains(&format!("audit log of {backed_up} entries verified")), "{}", checked.stdout);
    assert!(
        checked.stdout.contains(&format!("at size {checkpoint_size}: signature and head match")),
        "{}",
        checked.stdout
    );
    assert!(std::fs::read(&backup_file).unwrap() == untouched, "verify changed the backup");
    std::fs::write(path("cp-late.txt"), &head_before_stop).unwrap();
    let late = verify(&backup_file, "cp-late.txt");
    assert!(!late.success && late.stderr.contains("signed after this copy was made"), "{}", late.stderr);
    let edited = path("edited.db");
    std::fs::copy(&backup_file, &edited).unwrap();
    let deleted = std::process::Command::new("sqlite3")
        .arg(&edited)
        .arg("DELETE FROM audit_batches WHERE first_seq = (SELECT first_seq FROM audit_batches ORDER BY first_seq LIMIT 1 OFFSET 1)")
        .status()
        .unwrap();
    assert!(deleted.success());
    let refused = verify(&edited, "cp.txt");
    assert!(
        !refused.success && refused.stderr.contains("does not verify") && refused.stderr.contains("deleted"),
        "{}",
        refused.stderr
    );

    // Restore: the file becomes the database of a fresh data directory; the KEK and the external
    // URL (the issuer, and the name of the audit log's key) are the same.
    let restored_dir = path("restored");
    std::fs::create_dir(&restored_dir).unwrap();
    std::fs::copy(&backup_file, restored_dir.join("keyward.db")).unwrap();
    let (restored_config, restored_addr) = config(dir.path(), "restored.toml", listen, &restored_dir);
    let restored = Broker::serve_as(
        &restored_config,
        &restored_dir,
        &restored_addr,
        &[("TEST_KEK", TEST_KEK)],
        Some(&admin_token),
    )
    .await;

    // The restored log extends the checkpoint signed before the backup, online and offline.
    let key = audit_cli(&restored, &["public-key"]).stdout;
    assert_eq!(
        key.trim(),
        std::fs::read_to_string(path("log.pub")).unwrap(),
        "the log's key was restored, not replaced"
    );
    let proved = audit_cli(&restored, &["prove", "--since", path("cp.txt").to_str().unwrap()]);
    assert!(proved.stdout.contains("extends the checkpoint"), "{}", proved.stdout);
    std::fs::write(path("restored.jsonl"), audit_cli(&restored, &["export"]).stdout).unwrap();
    let [export, cp, key] = ["restored.jsonl", "cp.txt", "log.pub"].map(|name| path(name).to_str().unwrap().to_owned());
    let verified = keyward_verify(&["export", &export, "--checkpoint", &cp, "--public-key", &key]);
    assert_eq!(verified.code, Some(0), "{}{}", verified.stdout, verified.stderr);
    assert!(
        verified.stdout.contains(&format!("at size {checkpoint_size}: signature and head match")),
        "{}",
        verified.stdout
    );

    // What was issued before the copy is there; nothing begun after it is.
    let exported = std::fs::read_to_string(path("restored.jsonl")).unwrap();
    let lines = exported.lines().count() as u64;
    assert!(lines >= backed_up, "{lines} entries restored, {backed_up} backed up");
    for (run, after) in &minted[..minted_before] {
        assert!(!after && exported.contains(&format!("{run}\"")), "{run}, minted before the backup, is missing");
    }
    for (run, _) in minted.iter().filter(|(_, after)| *after) {
        assert!(!exported.contains(&format!("{run}\"")), "{run}, minted after the backup, was restored");
    }
    let original_size: u64 = head_before_stop.lines().nth(1).unwrap().parse().unwrap();
    assert!(lines < original_size, "the restored log ({lines}) is the original's ({original_size}) as of the backup");

    // The restored broker goes on: same admin token, same keys, the log appends.
    assert_eq!(restored.mint_raw(&mint_body("after-restore"), Some(&admin_token)).await.0, 201);
    let proved = audit_cli(&restored, &["prove", "--since", path("cp.txt").to_str().unwrap()]);
    assert!(proved.stdout.contains("extends the checkpoint"), "{}", proved.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_never_overwrites_and_a_failed_one_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    let data_dir = path("dev");
    let broker = Broker::dev(&data_dir).await;
    let backup =
        |to: &Path| keyward(&["backup", "--to", to.to_str().unwrap(), "--data-dir", data_dir.to_str().unwrap()], &[]);

    let out_dir = path("out");
    std::fs::create_dir(&out_dir).unwrap();
    let first = out_dir.join("b.db");
    let made = backup(&first);
    assert!(made.success, "{}", made.stderr);
    assert!(made.stdout.contains("key-encryption key is not in the backup"), "{}", made.stdout);
    assert_eq!(std::fs::metadata(&first).unwrap().permissions().mode() & 0o777, 0o600);

    // An existing file, backup or not, is left as it was.
    std::fs::write(out_dir.join("notes.txt"), "keep me").unwrap();
    let refused = backup(&out_dir.join("notes.txt"));
    assert!(!refused.success && refused.stderr.contains("already exists"), "{}", refused.stderr);
    assert_eq!(std::fs::read_to_string(out_dir.join("notes.txt")).unwrap(), "keep me");

    // A target the broker's host cannot write, and a data directory with no database: no file.
    let unwritable = backup(&path("missing-dir/b.db"));
    assert!(!unwritable.success && unwritable.stderr.contains("cannot write the backup in"), "{}", unwritable.stderr);
    assert!(!path("missing-dir").exists());
    let nowhere = keyward(
        &["backup", "--to", out_dir.join("c.db").to_str().unwrap(), "--data-dir", path("none").to_str().unwrap()],
        &[],
    );
    assert!(!nowhere.success && nowhere.stderr.contains("no database at"), "{}", nowhere.stderr);
    let mut names: Vec<String> =
        std::fs::read_dir(&out_dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["b.db", "notes.txt"]);
    drop(broker);

    // PostgreSQL: refused, naming pg_dump, never printing the URL's password.
    let (config_file, _) = config(dir.path(), "pg.toml", free_addr(), &path("pg"));
    let text = std::fs::read_to_string(&config_file)
        .unwrap()
        .replace("[storage]\n", "[storage]\ndatabase_url = \"postgres://kw:hunter2@127.0.0.1:1/kw\"\n");
    std::fs::write(&config_file, text).unwrap();
    let pg = keyward(
        &["backup", "--to", out_dir.join("pg.db").to_str().unwrap(), "--config", config_file.to_str().unwrap()],
        &[],
    );
    assert!(!pg.success && pg.stderr.contains("pg_dump") && !pg.stderr.contains("hunter2"), "{}", pg.stderr);
    assert!(!out_dir.join("pg.db").exists());
}
