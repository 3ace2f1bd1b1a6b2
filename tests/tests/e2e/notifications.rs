//! Notifications (`[[notifications]]`) against real receivers served by Python's `http.server`:
//! one that checks every signature with Python's own `hmac` (and the timestamp's age) and fails
//! its first requests, one that always fails, and `SlackWebhookStandIn`, a stand-in for Slack's
//! incoming webhooks that accepts only what Slack documents ("Sending messages using incoming
//! webhooks": a `POST` of `application/json` whose object has a non-empty `text` string; `ok` on
//! success, `400 invalid_payload` otherwise). Real runs on a real agent make the events.

use std::process::{Child, Command};
use std::time::Duration;

use keyward_tests::agent::{Agent, join};
use keyward_tests::audit::Audit;
use keyward_tests::broker::{Broker, ConfigExtra, TEST_KEK, json, write_config};
use keyward_tests::git::GitRepo;
use keyward_tests::postgres::PgCluster;
use keyward_tests::{eventually, free_addr, workspace_root};
use serde_json::Value;

const SECRET: &str = "notification-secret-0123456789";

/// `port record mode fail_first secret`: mode `json` (verify the signature, fail the first
/// `fail_first` requests with 500) or `slack` (Slack's documented contract). One JSON line per
/// request in `record`.
const RECEIVER: &str = r#"
import hashlib, hmac, json, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer

port, record, mode, fail_first, secret = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5].encode()
seen = {"n": 0}

class Hook(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        seen["n"] += 1
        line = {"event": self.headers.get("X-Keyward-Event"), "delivery": self.headers.get("X-Keyward-Delivery")}
        if mode == "slack":
            try:
                message = json.loads(body)
                valid = (self.headers.get("Content-Type", "").startswith("application/json")
                         and isinstance(message, dict) and isinstance(message.get("text"), str) and message["text"])
            except ValueError:
                valid = False
            status, answer = (200, b"ok") if valid else (400, b"invalid_payload")
            line.update({"status": status, "text": message.get("text") if valid else None})
        else:
            signature = dict(p.split("=", 1) for p in self.headers.get("X-Keyward-Signature", "").split(",") if "=" in p)
            t = signature.get("t", "0")
            expected = hmac.new(secret, t.encode() + b"." + body, hashlib.sha256).hexdigest()
            line["signature_ok"] = hmac.compare_digest(expected, signature.get("v1", ""))
            line["fresh"] = abs(time.time() - int(t)) < 300
            status = 500 if seen["n"] <= fail_first else 200
            answer = b""
            line.update({"status": status, "body": json.loads(body)})
        with open(record, "a") as f:
            f.write(json.dumps(line) + "\n")
        self.send_response(status)
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass

HTTPServer(("127.0.0.1", port), Hook).serve_forever()
"#;

struct Receiver {
    child: Child,
    port: u16,
    record: std::path::PathBuf,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Receiver {
    async fn start(dir: &std::path::Path, name: &str, mode: &str, fail_first: u32) -> Self {
        let port = free_addr().port();
        let record = dir.join(format!("{name}.jsonl"));
        let script = dir.join("receiver.py");
        std::fs::write(&script, RECEIVER).unwrap();
        let child = Command::new("python3")
            .arg(&script)
            .args([&port.to_string(), record.to_str().unwrap(), mode, &fail_first.to_string(), SECRET])
            .spawn()
            .unwrap();
        eventually("the receiver to listen", Duration::from_secs(30), || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok().map(drop)
        })
        .await;
        Self { child, port, record }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    fn received(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.record)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn accepted(&self) -> Vec<Value> {
        self.received().into_iter().filter(|r| r["status"] == 200).collect()
    }
}

/// A broker with three notifications, on SQLite or the PostgreSQL database at `database_url`;
/// `admin_token`: a replica joining a database that has one.
async fn start(
    dir: &std::path::Path,
    name: &str,
    receivers: &[&Receiver; 3],
    database_url: Option<&str>,
    admin_token: Option<&str>,
) -> Broker {
    let addr = free_addr();
    let config = dir.join(format!("{name}.toml"));
    let data_dir = dir.join(name);
    let [ops, chat, broken] = receivers;
    let rest = format!(
        "[policy]\ndir = \"{policies}\"\n[agents]\nlisten = \"{agents}\"\nlease = \"20s\"\npoll_interval = \"200ms\"\n\
         [[notifications]]\nname = \"ops\"\nevents = [\"run.failed\", \"run.finished\"]\nurl = \"{ops}\"\n\
         secret_env = \"KW_NOTIFY_SECRET\"\n\
         [[notifications]]\nname = \"chat\"\nevents = [\"run.failed\"]\nurl = \"{chat}\"\nformat = \"slack\"\n\
         [[notifications]]\nname = \"broken\"\nevents = [\"run.failed\"]\nurl = \"{broken}\"\nmax_attempts = 2\n",
        policies = workspace_root().join("policies").display(),
        agents = free_addr(),
        ops = ops.url(),
        chat = chat.url(),
        broken = broken.url(),
    );
    let storage = if database_url.is_some() { "database_url_env = \"KW_DATABASE_URL\"" } else { "" };
    write_config(&config, addr, &data_dir, &ConfigExtra { storage, rest: &rest, ..ConfigExtra::default() });
    let mut envs = vec![("TEST_KEK", TEST_KEK), ("KW_NOTIFY_SECRET", SECRET)];
    envs.extend(database_url.map(|url| ("KW_DATABASE_URL", url)));
    Broker::serve_as(&config, &data_dir, &format!("http://{addr}"), &envs, admin_token).await
}

async fn run_to_end(broker: &Broker, stack: &str) -> Value {
    let out = broker.cli(&["run", "submit", "--stack", stack]);
    assert!(out.success, "{}", out.stderr);
    let id = out.stdout.trim().to_owned();
    eventually(&format!("run of {stack} to end"), Duration::from_secs(120), || {
        let run = json(&broker.cli(&["run", "show", &id, "--json"]));
        async move { matches!(run["state"].as_str(), Some("finished" | "failed" | "canceled")).then_some(run) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_are_notified_once_signed_retried_and_failures_recorded() {
    notified(None).await;
}

/// Two replicas on one database, both running the notifier: still one delivery per event.
#[tokio::test(flavor = "multi_thread")]
async fn on_postgres_two_replicas_notify_each_event_once() {
    let cluster = PgCluster::start();
    notified(Some(&cluster.database("keyward_notifications"))).await;
}

async fn notified(database_url: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let ops = Receiver::start(dir.path(), "ops", "json", 2).await;
    let chat = Receiver::start(dir.path(), "chat", "slack", 0).await;
    let broken = Receiver::start(dir.path(), "broken", "json", 1000).await;
    let receivers = [&ops, &chat, &broken];
    let broker = start(dir.path(), "broker", &receivers, database_url, None).await;
    let _replica = match database_url {
        Some(_) => Some(start(dir.path(), "replica", &receivers, database_url, Some(&broker.admin_token)).await),
        None => None,
    };
    let token = json(&broker.cli(&["pool", "join-token", "default", "--json"]))["token"].as_str().unwrap().to_owned();
    let (ok, agent_id, stderr) = join(&broker.addr, &token, &dir.path().join("agent"));
    assert!(ok, "{stderr}");
    let _agent = Agent::start(&dir.path().join("agent"), &agent_id, &[]);
    for (name, config) in [
        ("good", "resource \"terraform_data\" \"x\" {\n  input = \"hello\"\n}\n"),
        ("bad", "resource \"terraform_data\" {\n"),
    ] {
        let repo = GitRepo::init(&dir.path().join(format!("repo-{name}")));
        repo.commit("main.tf", config);
        let url = repo.url();
        json(&broker.cli(&["stack", "create", name, "--repository", &url, "--label", "env=dev", "--json"]));
    }
    let finished = run_to_end(&broker, "good").await;
    assert_eq!(finished["state"], "finished", "{finished}");
    let failed = run_to_end(&broker, "bad").await;
    assert_eq!(failed["state"], "failed", "{failed}");

    // `ops` refused the first two requests; each event still arrives, signed, fresh, once.
    eventually("both runs notified to ops", Duration::from_secs(60), || {
        let count = ops.accepted().len();
        async move { (count >= 2).then_some(()) }
    })
    .await;
    // `broken` fails every time: after its two attempts the failure is on record.
    let audit = match database_url {
        Some(url) => Audit(
            keyward_broker::store::Store::open(&keyward_broker::store::DatabaseLocation::Postgres(url.to_owned()))
                .await
                .unwrap(),
        ),
        None => Audit::open(&broker.data_dir).await,
    };
    eventually("the broken receiver's failure recorded", Duration::from_secs(60), || {
        let audit = &audit;
        async move { (audit.count("notification.failed").await >= 1).then_some(()) }
    })
    .await;
    eventually("every delivery recorded", Duration::from_secs(60), || {
        let audit = &audit;
        async move { (audit.count("notification.delivered").await >= 3).then_some(()) }
    })
    .await;

    let received = ops.received();
    assert!(received.iter().all(|r| r["signature_ok"] == true && r["fresh"] == true), "{received:?}");
    let accepted = ops.accepted();
    let mut events: Vec<(&str, &str)> =
        accepted.iter().map(|r| (r["body"]["event"].as_str().unwrap(), r["body"]["run"].as_str().unwrap())).collect();
    events.sort_unstable();
    let (good, bad) = (finished["id"].as_str().unwrap(), failed["id"].as_str().unwrap());
    let mut expected = vec![("run.failed", bad), ("run.finished", good)];
    expected.sort_unstable();
    assert_eq!(events, expected, "each event once, nothing else: {received:?}");
    // A retried delivery keeps its ID, so a receiver can drop a duplicate.
    let first = &received[0]["delivery"];
    assert!(received.iter().filter(|r| &r["delivery"] == first).count() >= 2, "{received:?}");

    let chat_messages = chat.received();
    assert_eq!(chat_messages.len(), 1, "{chat_messages:?}");
    assert_eq!(chat_messages[0]["status"], 200, "Slack's contract: {chat_messages:?}");
    let text = chat_messages[0]["text"].as_str().unwrap();
    assert!(text.contains(bad) && text.contains("failed"), "{text}");

    assert_eq!(broken.received().len(), 2, "max_attempts = 2");
    assert_eq!(audit.count("notification.failed").await, 1);
    assert_eq!(audit.count("notification.delivered").await, 3, "ops twice, chat once");

    // One replica made every attempt: its /metrics counts each one by outcome.
    if database_url.is_none() {
        let metrics = reqwest::get(format!("{}/metrics", broker.addr)).await.unwrap().text().await.unwrap();
        for (notification, outcome, count) in [
            ("ops", "retried", 2),
            ("ops", "delivered", 2),
            ("chat", "delivered", 1),
            ("broken", "retried", 1),
            ("broken", "failed", 1),
        ] {
            let series = format!(
                "keyward_notification_deliveries_total{{notification=\"{notification}\",outcome=\"{outcome}\"}} {count}\n"
            );
            assert!(metrics.contains(&series), "no {series} in\n{metrics}");
        }
    }
}
