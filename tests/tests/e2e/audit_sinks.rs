//! Audit sinks against real receivers: a webhook served by Python's `http.server` that fails its
//! first requests and checks every signature with Python's own `hmac`, and a rotated JSON Lines
//! file. Every entry arrives, in sequence order, duplicated at most in ways the sequence number
//! lets a receiver drop; a receiver that is down never blocks issuance.

use std::process::{Child, Command};
use std::time::Duration;

use keyward_tests::audit::Audit;
use keyward_tests::broker::{Broker, ConfigExtra, TEST_KEK, keyward, write_config};
use keyward_tests::{eventually, free_addr, http};
use serde_json::{Value, json};

const SECRET: &str = "webhook-secret-0123456789";

/// The receiver: answers 500 to the first `FAIL_FIRST` POSTs, then 200; appends one JSON line
/// per request (status sent, sequence headers, whether the signature verified, the entries) to
/// the record file.
const RECEIVER: &str = r#"
import hashlib, hmac, json, os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

port, record, secret, fail_first = int(sys.argv[1]), sys.argv[2], sys.argv[3].encode(), int(sys.argv[4])
seen = {"n": 0}

class Hook(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        seen["n"] += 1
        status = 500 if seen["n"] <= fail_first else 200
        expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
        line = {
            "status": status,
            "signature_ok": hmac.compare_digest(expected, self.headers.get("X-Keyward-Signature-256", "")),
            "first": int(self.headers["X-Keyward-First-Seq"]),
            "last": int(self.headers["X-Keyward-Last-Seq"]),
            "seqs": [e["entry"]["seq"] for e in json.loads(body)["entries"]],
        }
        with open(record, "a") as f:
            f.write(json.dumps(line) + "\n")
        self.send_response(status)
        self.end_headers()

    def log_message(self, *args):
        pass

HTTPServer(("127.0.0.1", port), Hook).serve_forever()
"#;

struct Receiver(Child);

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_webhook_gets_every_entry_in_order_once_it_recovers_and_files_rotate() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_addr().port();
    let record = dir.path().join("received.jsonl");
    let script = dir.path().join("receiver.py");
    std::fs::write(&script, RECEIVER).unwrap();
    let _receiver = Receiver(
        Command::new("python3")
            .arg(&script)
            .args([&port.to_string(), record.to_str().unwrap(), SECRET, "3"])
            .spawn()
            .unwrap(),
    );
    // Listening before the broker starts, so the only failures are the three it is told to give.
    eventually("the receiver to listen", Duration::from_secs(30), || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok().map(drop)
    })
    .await;
    let file = dir.path().join("sink").join("audit.jsonl");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();

    let data_dir = dir.path().join("broker");
    let addr = free_addr();
    let config = dir.path().join("keyward.toml");
    let rest = format!(
        "[tokens]\nallowed_audiences = [\"vault\"]\n\
         [[audit.sinks]]\ntype = \"webhook\"\nname = \"siem\"\nurl = \"http://127.0.0.1:{port}/hook\"\n\
         secret_env = \"KW_HOOK_SECRET\"\nbatch = 4\n\
         [[audit.sinks]]\ntype = \"file\"\nname = \"archive\"\npath = \"{}\"\nmax_bytes = 8192\nkeep = 50\n",
        file.display()
    );
    write_config(&config, addr, &data_dir, &ConfigExtra { rest: &rest, ..ConfigExtra::default() });
    let envs = [("TEST_KEK", TEST_KEK), ("KW_HOOK_SECRET", SECRET)];
    let broker = Broker::serve(&config, &data_dir, &format!("http://{addr}"), &envs).await;

    // Issuance goes on while the receiver fails: the sink is not in the append path.
    for i in 0..30 {
        let body = json!({ "stack": "net", "run_id": format!("run-{i}"), "phase": "plan", "audience": "vault" });
        assert_eq!(broker.mint_raw(&body, Some(&broker.admin_token)).await.0, 201);
    }
    let size = Audit::open(&data_dir).await.check_tree().await;
    assert_eq!(size, 30);

    let received = || -> Vec<Value> {
        std::fs::read_to_string(&record).unwrap_or_default().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    eventually("every entry delivered", Duration::from_secs(60), || {
        let done = received()
            .iter()
            .filter(|r| r["status"] == 200)
            .flat_map(|r| r["seqs"].as_array().unwrap().clone())
            .count();
        async move { (done >= 30).then_some(()) }
    })
    .await;

    let requests = received();
    assert!(requests.iter().all(|r| r["signature_ok"] == true), "Python's hmac disagrees: {requests:?}");
    assert!(requests.iter().take(3).all(|r| r["status"] == 500), "the first three were refused");
    // Accepted batches, in arrival order, cover 0..30 exactly, in order: a receiver that drops
    // sequence numbers it has seen would have no duplicates to drop here, and no gap to fill.
    let accepted: Vec<u64> = requests
        .iter()
        .filter(|r| r["status"] == 200)
        .flat_map(|r| r["seqs"].as_array().unwrap().iter().map(|s| s.as_u64().unwrap()).collect::<Vec<_>>())
        .collect();
    assert_eq!(accepted, (0..30).collect::<Vec<_>>(), "{requests:?}");
    // The refused batches were retried from the same place.
    assert_eq!(requests[0]["first"], 0);
    assert!(
        requests
            .iter()
            .all(|r| r["first"] == r["seqs"][0] && r["last"] == *r["seqs"].as_array().unwrap().last().unwrap())
    );

    // The receiver records a batch before its answer reaches the broker: wait for the counters.
    let metrics_url = format!("{}/metrics", broker.addr);
    let metrics = eventually("the sink's counters", Duration::from_secs(10), || {
        let request = http().get(&metrics_url).send();
        async move {
            let text = request.await.ok()?.text().await.ok()?;
            text.contains("keyward_audit_sink_backlog{sink=\"siem\"} 0").then_some(text)
        }
    })
    .await;
    assert!(metrics.contains("keyward_audit_sink_delivered_total{sink=\"siem\"} 30"), "{metrics}");
    assert!(metrics.contains("keyward_audit_sink_failures_total{sink=\"siem\"} 3"), "{metrics}");
    assert!(metrics.contains("keyward_audit_sink_dead_letters_total{sink=\"siem\"} 0"), "{metrics}");

    // The file sink rotated (8 KiB per file), and its files, oldest first, are the export.
    eventually("the file sink caught up", Duration::from_secs(30), || {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        async move { text.contains("\"seq\":29}").then_some(()) }
    })
    .await;
    let mut rotated: Vec<_> = std::fs::read_dir(file.parent().unwrap()).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(rotated.len() > 1, "30 entries of ~500 bytes rotate an 8 KiB file: {rotated:?}");
    rotated
        .sort_by_key(|p| std::cmp::Reverse(p.extension().and_then(|e| e.to_str()).and_then(|e| e.parse::<u32>().ok())));
    let joined = dir.path().join("joined.jsonl");
    let text: String = rotated.iter().map(|p| std::fs::read_to_string(p).unwrap()).collect();
    std::fs::write(&joined, &text).unwrap();
    for path in &rotated {
        assert!(std::fs::metadata(path).unwrap().len() <= 8192, "{path:?} is over max_bytes");
    }
    let verified = keyward(&["audit", "verify", joined.to_str().unwrap()], &[]);
    assert!(
        verified.success && verified.stdout.contains("30 entries (0..30) verified"),
        "{}{}",
        verified.stdout,
        verified.stderr
    );
}
