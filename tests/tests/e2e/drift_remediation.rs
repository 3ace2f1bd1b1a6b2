//! The whole drift story with real drift: the real Terraform, our `kwobjects` provider from a
//! filesystem mirror (`--provider-mirror`), objects in a store on loopback (the agent on the
//! host's network, as the provider needs to reach it), the stack's state kept by the broker.
//! An object is changed behind Terraform's back; the *scheduled* check reports exactly that
//! resource, a notification says so once, and remediation puts it back: in `plan` mode after a
//! review, in `apply` mode (on a stack labelled for it) by itself. Then a check finds the stack
//! in sync and that is notified once too. On SQLite and on PostgreSQL.

use std::process::{Child, Command};
use std::time::Duration;

use keyward_tests::agent::{Agent, join};
use keyward_tests::broker::{Broker, ConfigExtra, TEST_KEK, json, write_config};
use keyward_tests::git::GitRepo;
use keyward_tests::object_store::ObjectStore;
use keyward_tests::postgres::PgCluster;
use keyward_tests::tf_provider::ProviderMirror;
use keyward_tests::{eventually, free_addr, workspace_root};
use serde_json::Value;

/// A receiver of notifications: one JSON line per request (Python's `http.server`).
const RECEIVER: &str = r#"
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

port, record = int(sys.argv[1]), sys.argv[2]

class Hook(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with open(record, "a") as f:
            f.write(json.dumps(body) + "\n")
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass

HTTPServer(("127.0.0.1", port), Hook).serve_forever()
"#;

struct Receiver(Child, std::path::PathBuf);

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Receiver {
    /// The notifications received: (event, stack, summary).
    fn events(&self) -> Vec<(String, String, String)> {
        std::fs::read_to_string(&self.1)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .map(|b| {
                let text = |k: &str| b[k].as_str().unwrap_or_default().to_owned();
                (text("event"), text("stack"), text("summary"))
            })
            .collect()
    }
}

fn config(endpoint: &str) -> String {
    format!(
        "terraform {{\n  required_providers {{\n    kwobjects = {{ source = \"keyward/kwobjects\" }}\n  }}\n}}\n\
         provider \"kwobjects\" {{\n  endpoint = \"{endpoint}\"\n}}\n\
         resource \"kwobjects_object\" \"a\" {{\n  name    = \"a\"\n  content = \"desired-a\"\n}}\n\
         resource \"kwobjects_object\" \"b\" {{\n  name    = \"b\"\n  content = \"desired-b\"\n}}\n"
    )
}

async fn wait_run(broker: &Broker, id: &str, states: &[&str]) -> Value {
    eventually(&format!("run {id} in {states:?}"), Duration::from_secs(180), || {
        let run = json(&broker.cli(&["run", "show", id, "--json"]));
        async move { states.contains(&run["state"].as_str().unwrap_or_default()).then_some(run) }
    })
    .await
}

/// The stack's newest run of `kind`, once there is one other than `after`.
async fn next_run(broker: &Broker, kind: &str, after: &[String]) -> Value {
    eventually(&format!("a new {kind} run"), Duration::from_secs(150), || {
        let runs = json(&broker.cli(&["run", "list", "--stack", "story", "--json"]));
        async move {
            runs["runs"]
                .as_array()?
                .iter()
                .find(|r| r["kind"] == kind && !after.iter().any(|a| r["id"] == a.as_str()))
                .cloned()
        }
    })
    .await
}

fn drift_check(broker: &Broker) -> Value {
    let out = broker.cli(&["run", "submit", "--stack", "story", "--drift", "--wait", "--timeout", "3m", "--json"]);
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", out.stdout, out.stderr))
}

#[tokio::test(flavor = "multi_thread")]
async fn scheduled_drift_is_found_notified_once_and_remediated() {
    story(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn on_postgres_scheduled_drift_is_found_notified_once_and_remediated() {
    let cluster = PgCluster::start();
    story(Some(&cluster.database("keyward_drift_story"))).await;
}

async fn story(database_url: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let store = ObjectStore::start().await;
    let _mirror = ProviderMirror::install(dir.path());
    let port = free_addr().port();
    let record = dir.path().join("notified.jsonl");
    let script = dir.path().join("receiver.py");
    std::fs::write(&script, RECEIVER).unwrap();
    let child =
        Command::new("python3").arg(&script).args([&port.to_string(), record.to_str().unwrap()]).spawn().unwrap();
    let receiver = Receiver(child, record);
    eventually("the receiver to listen", Duration::from_secs(30), || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok().map(drop)
    })
    .await;

    let addr = free_addr();
    let data_dir = dir.path().join("broker");
    let rest = format!(
        "[policy]\ndir = \"{policies}\"\n[agents]\nlisten = \"{agents}\"\nlease = \"20s\"\npoll_interval = \"200ms\"\n\
         [scheduler]\ninterval = \"1s\"\nlease = \"3s\"\n\
         [[notifications]]\nname = \"drift\"\nevents = [\"stack.drifted\", \"stack.in_sync\"]\n\
         url = \"http://127.0.0.1:{port}/hook\"\n",
        policies = workspace_root().join("policies").display(),
        agents = free_addr(),
    );
    let storage = if database_url.is_some() { "database_url_env = \"KW_DATABASE_URL\"" } else { "" };
    let config_file = dir.path().join("keyward.toml");
    write_config(&config_file, addr, &data_dir, &ConfigExtra { storage, rest: &rest, ..ConfigExtra::default() });
    let mut envs = vec![("TEST_KEK", TEST_KEK)];
    envs.extend(database_url.map(|url| ("KW_DATABASE_URL", url)));
    let broker = Broker::serve(&config_file, &data_dir, &format!("http://{addr}"), &envs).await;

    let token = json(&broker.cli(&["pool", "join-token", "default", "--json"]))["token"].as_str().unwrap().to_owned();
    let agent_dir = dir.path().join("agent");
    let (ok, agent_id, stderr) = join(&broker.addr, &token, &agent_dir);
    assert!(ok, "{stderr}");
    let mirror = dir.path().join("mirror");
    let args = ["--network", "host", "--provider-mirror", mirror.to_str().unwrap()];
    let agent = Agent::start(&agent_dir, &agent_id, &args);

    let repo = GitRepo::init(&dir.path().join("repo"));
    repo.commit("main.tf", &config(store.endpoint()));
    let url = repo.url();
    json(&broker.cli(&["stack", "create", "story", "--repository", &url, "--label", "env=dev", "--json"]));

    // The first deploy (env=dev: no review) creates both objects; the broker keeps the state.
    let first = broker.cli(&["run", "submit", "--stack", "story"]);
    assert!(first.success, "{}", first.stderr);
    let deployed = wait_run(&broker, first.stdout.trim(), &["finished", "failed"]).await;
    assert_eq!(deployed["state"], "finished", "{deployed}\n{}", agent.log_text());
    assert_eq!((store.get("a").as_deref(), store.get("b").as_deref()), (Some("desired-a"), Some("desired-b")));

    // Behind Terraform's back: b changes. The scheduled check (every minute) finds exactly b.
    store.put("b", "changed-by-hand");
    let updated = broker.cli(&[
        "stack",
        "update",
        "story",
        "--drift-schedule",
        "* * * * *",
        "--drift-remediation",
        "plan",
        "--json",
    ]);
    json(&updated);
    let drifted = eventually("the scheduled check to find drift", Duration::from_secs(150), || {
        let stack = json(&broker.cli(&["stack", "show", "story", "--json"]));
        async move { (stack["drift"]["state"] == "drifted").then_some(stack) }
    })
    .await;
    assert_eq!(drifted["drift"]["addresses"], serde_json::json!(["kwobjects_object.b"]), "{drifted}");
    assert_eq!(drifted["drift"]["to_change"], 1, "{drifted}");
    let check = next_run(&broker, "drift", &[]).await;
    assert_eq!(check["triggered_by"], "scheduler", "{check}");
    // From here on the checks are the test's own, so what each finds is known when it runs.
    json(&broker.cli(&["stack", "update", "story", "--drift-schedule", "off", "--json"]));
    // Checks only read: b is still as the hand left it.
    assert_eq!(store.get("b").as_deref(), Some("changed-by-hand"));

    // `plan` remediation: a remediation run plans the branch head and waits for a review even
    // where deploys need none; an approval applies it and b is back.
    let remediation = next_run(&broker, "remediation", &[]).await;
    let id = remediation["id"].as_str().unwrap().to_owned();
    let planned = wait_run(&broker, &id, &["planned", "failed", "finished"]).await;
    assert_eq!(planned["state"], "planned", "waits for a review: {planned}");
    assert_eq!(planned["triggered_by"], "drift-remediation");
    assert_eq!(store.get("b").as_deref(), Some("changed-by-hand"), "nothing applied before the review");
    json(&broker.cli(&["run", "approve", &id, "--comment", "put b back", "--json"]));
    let applied = wait_run(&broker, &id, &["finished", "failed"]).await;
    assert_eq!(applied["state"], "finished", "{applied}");
    assert_eq!(store.get("b").as_deref(), Some("desired-b"));

    // A check now finds the stack in sync: notified once as well.
    let in_sync = drift_check(&broker);
    assert_eq!(in_sync["drift"], false, "{in_sync}");
    eventually("stack.in_sync notified", Duration::from_secs(30), || {
        let events = receiver.events();
        async move { events.iter().any(|(event, _, _)| event == "stack.in_sync").then_some(()) }
    })
    .await;

    // `apply` remediation on a stack labelled for it: found, notified, put back by itself.
    json(&broker.cli(&[
        "stack",
        "update",
        "story",
        "--drift-remediation",
        "apply",
        "--label",
        "drift-remediation=auto",
        "--json",
    ]));
    store.delete("a");
    let found = drift_check(&broker);
    assert_eq!(found["drift"], true, "{found}");
    let auto = next_run(&broker, "remediation", std::slice::from_ref(&id)).await;
    let auto_id = auto["id"].as_str().unwrap().to_owned();
    let done = wait_run(&broker, &auto_id, &["finished", "failed", "planned"]).await;
    assert_eq!(done["state"], "finished", "applied without review: {done}");
    assert_eq!(store.get("a").as_deref(), Some("desired-a"));

    // Notified on transitions only, each once: drifted, in sync, drifted again.
    let expected = ["stack.drifted", "stack.in_sync", "stack.drifted"];
    let events = eventually("the second stack.drifted", Duration::from_secs(30), || {
        let events = receiver.events();
        async move { (events.len() >= expected.len()).then_some(events) }
    })
    .await;
    let names: Vec<&str> = events.iter().map(|(event, _, _)| event.as_str()).collect();
    assert_eq!(names, expected, "{events:?}");
    assert!(events.iter().all(|(_, stack, _)| stack == "story"), "{events:?}");
    assert!(events[0].2.contains("kwobjects_object.b"), "the first names what drifted: {events:?}");
    // One remediation per drift found: the two asked for, nothing doubled.
    let runs = json(&broker.cli(&["run", "list", "--stack", "story", "--json"]));
    let remediations = runs["runs"].as_array().unwrap().iter().filter(|r| r["kind"] == "remediation").count();
    assert_eq!(remediations, 2, "{runs}");
}
