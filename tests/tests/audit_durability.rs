//! The audit log under faults: the broker killed with SIGKILL in the middle of concurrent
//! issuance, and the disk filling up under it. Every token a client received has its entry, the
//! tree verifies, and a broker that cannot write its log issues nothing, says so, and recovers
//! by itself.

// A panic in a test is a failed test: unwrap and index freely.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyward_tests::audit::Audit;
use keyward_tests::broker::Broker;
use keyward_tests::{eventually, http};
use serde_json::{Value, json};

fn mint_body(run: &str) -> Value {
    json!({ "stack": "net", "run_id": run, "phase": "plan", "audience": "vault" })
}

/// Mints from `clients` concurrent loops until the broker stops answering; returns the `jti` of
/// every token a client received.
fn start_clients(addr: &str, token: &str, clients: usize) -> (Arc<Mutex<Vec<String>>>, tokio::task::JoinSet<()>) {
    let received = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..clients {
        let (received, url, token) = (Arc::clone(&received), format!("{addr}/v1/run-tokens"), token.to_owned());
        tasks.spawn(async move {
            let http = http();
            for i in 0.. {
                let request = http.post(&url).bearer_auth(&token).json(&mint_body(&format!("run-{client}-{i}")));
                let Ok(response) = request.send().await else { break };
                if response.status() != 201 {
                    continue;
                }
                let Ok(body) = response.json::<Value>().await else { break };
                received.lock().unwrap().push(body["jti"].as_str().unwrap().to_owned());
            }
        });
    }
    (received, tasks)
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_mid_stream_loses_nothing_a_client_received() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("dev");
    let broker = Broker::dev(&data_dir).await;
    let (received, clients) = start_clients(&broker.addr, &broker.admin_token, 8);
    eventually("a few hundred tokens issued", Duration::from_secs(60), || {
        let n = received.lock().unwrap().len();
        async move { (n >= 300).then_some(()) }
    })
    .await;
    broker.stop(); // SIGKILL, with requests in flight
    clients.join_all().await;
    let received = received.lock().unwrap().clone();
    assert!(received.len() >= 300);

    // Restart on the same data: the log recovers, every received token is on record, and
    // appends continue the same tree.
    let broker = Broker::dev(&data_dir).await;
    let audit = Audit::open(&data_dir).await;
    let size = audit.check_tree().await;
    assert!(size >= received.len() as u64, "{size} entries for {} tokens", received.len());
    for jti in &received {
        let entries = audit.referencing(&format!("jti:{jti}")).await;
        assert!(entries.iter().any(|e| e.kind == "minted"), "token {jti} was received but is not on record");
    }
    assert_eq!(broker.mint_raw(&mint_body("after-restart"), Some(&broker.admin_token)).await.0, 201);
    assert_eq!(audit.check_tree().await, size + 1);
}

/// A small tmpfs mounted for the test's data directory, unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(path: &Path, size: &str) -> Self {
        std::fs::create_dir_all(path).unwrap();
        let out =
            Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(path).output();
        let mounted = out.as_ref().is_ok_and(|o| o.status.success());
        assert!(mounted, "this test mounts a small tmpfs to fill it, which needs root (or CAP_SYS_ADMIN): {out:?}");
        Self(path.to_owned())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_stops_issuance_with_503_and_recovery_is_automatic() {
    let dir = tempfile::tempdir().unwrap();
    // The data directory is the small disk; the broker's log file sits beside it, on a disk with
    // room, so the log can say what happened.
    let data_dir = dir.path().join("dev");
    let _mounted = SmallDisk::mount(&data_dir, "16m");
    let disk = data_dir.clone();
    let broker = Broker::dev(&data_dir).await;
    let issued = |run: String| {
        let broker = &broker;
        async move { broker.mint_raw(&mint_body(&run), Some(&broker.admin_token)).await }
    };
    assert_eq!(issued("before".to_owned()).await.0, 201);

    // Fill the disk to the last byte.
    let filler = disk.join("filler");
    let _ = Command::new("dd").arg("if=/dev/zero").arg(format!("of={}", filler.display())).args(["bs=64k"]).output();
    // SQLite reuses the space its write-ahead log already has, so keep issuing until the log
    // needs more; every answer until then is a token with its record, every answer after it a 503.
    let mut received = Vec::new();
    let mut refusal = None;
    for i in 0..5000 {
        let (status, body) = issued(format!("filling-{i}")).await;
        match status {
            201 => received.push(body["jti"].as_str().unwrap().to_owned()),
            _ => {
                refusal = Some((status, body));
                break;
            }
        }
    }
    let (status, body) = refusal.expect("a full disk never stopped issuance");
    assert_eq!((status, body["error"].as_str()), (503, Some("temporarily_unavailable")), "{body}");
    assert!(body.get("token").is_none());
    let ready = http().get(format!("{}/readyz", broker.addr)).send().await.unwrap();
    assert_eq!(ready.status(), 503, "readiness reports the log it cannot write");
    assert!(ready.text().await.unwrap().contains("audit log"));
    let metrics = http().get(format!("{}/metrics", broker.addr)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("keyward_audit_healthy 0"), "{metrics}");

    // Space comes back: readiness recovers by itself, issuance resumes, and the log holds every
    // token a client received and nothing of the refused ones.
    std::fs::remove_file(&filler).unwrap();
    eventually("readiness to recover", Duration::from_secs(30), || {
        let request = http().get(format!("{}/readyz", broker.addr)).send();
        async move { (request.await.ok()?.status() == 200).then_some(()) }
    })
    .await;
    assert_eq!(issued("after".to_owned()).await.0, 201);
    let audit = Audit::open(&data_dir).await;
    audit.check_tree().await;
    for jti in &received {
        assert_eq!(audit.referencing(&format!("jti:{jti}")).await.len(), 1, "token {jti} is not on record");
    }
    assert_eq!(audit.for_run(&format!("filling-{}", received.len())).await.len(), 0, "the refused one left nothing");
}
