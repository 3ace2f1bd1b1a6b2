//! Contexts and stack variables with a real broker, a real agent and the real Terraform: a secret
//! set in an auto-attached context reaches a `local-exec` as `TF_VAR_…` and the log shows it
//! masked (plainly and in base64); contexts apply in priority order and a stack's own variables
//! override them; the API and CLI never return the secret, it is not at rest in the clear, and a
//! job of another stack never gets it. Bad input is refused with the reason, nothing stored.

use std::path::Path;
use std::time::Duration;

use keyward_broker::store::{DatabaseLocation, Store};
use keyward_tests::agent::{Agent, join};
use keyward_tests::audit::Audit;
use keyward_tests::broker::{Broker, ConfigExtra, Output, TEST_KEK, write_config};
use keyward_tests::git::GitRepo;
use keyward_tests::postgres::PgCluster;
use keyward_tests::{eventually, free_addr, workspace_root};
use serde_json::Value;

const SECRET: &str = "hunter2-Sup3r-s3cret";

fn json(output: &Output) -> Value {
    assert!(output.success, "stderr: {}", output.stderr);
    serde_json::from_str(&output.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", output.stdout))
}

fn ok(output: &Output) {
    assert!(output.success, "stdout: {}\nstderr: {}", output.stdout, output.stderr);
}

async fn start(dir: &Path, database_url: Option<&str>) -> Broker {
    let addr = free_addr();
    let config = dir.join("keyward.toml");
    let data_dir = dir.join("broker");
    // The shipped policies, plus a run rule that reads the variables' names (never values).
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    for entry in std::fs::read_dir(workspace_root().join("policies")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, policies.join(path.file_name().unwrap())).unwrap();
        }
    }
    std::fs::write(
        policies.join("variables.rego"),
        "package keyward.run\n\ndeny contains msg if {\n\tsome v in object.get(input, \"variables\", [])\n\t\
         v.name == \"TF_VAR_forbidden\"\n\tmsg := sprintf(\"variable %s (secret: %v) from %s is not allowed\", \
         [v.name, v.secret, v.from])\n}\n",
    )
    .unwrap();
    let rest = format!(
        "[policy]\ndir = \"{policies}\"\n[agents]\nlisten = \"{agents}\"\nlease = \"20s\"\npoll_interval = \"200ms\"\n",
        policies = policies.display(),
        agents = free_addr(),
    );
    let storage = if database_url.is_some() { "database_url_env = \"KW_DATABASE_URL\"" } else { "" };
    write_config(&config, addr, &data_dir, &ConfigExtra { storage, rest: &rest, ..ConfigExtra::default() });
    let mut envs = vec![("TEST_KEK", TEST_KEK)];
    envs.extend(database_url.map(|url| ("KW_DATABASE_URL", url)));
    Broker::serve(&config, &data_dir, &format!("http://{addr}"), &envs).await
}

/// A configuration that prints its variables from a `local-exec` (the password plainly and in
/// base64, as a careless script would).
const MAIN_TF: &str = r#"variable "db_password" {
  default = "none"
}
variable "region" {}
variable "owner" {
  default = "-"
}
resource "terraform_data" "show" {
  provisioner "local-exec" {
    command = "echo password=${var.db_password} b64=$(printf %s '${var.db_password}' | base64) region=${var.region} owner=${var.owner}"
  }
}
"#;

async fn run_to_end(broker: &Broker, stack: &str) -> (Value, String) {
    let out = broker.cli(&["run", "submit", "--stack", stack]);
    ok(&out);
    let id = out.stdout.trim().to_owned();
    let run = eventually(&format!("run of {stack} to end"), Duration::from_secs(120), || {
        let run = json(&broker.cli(&["run", "show", &id, "--json"]));
        async move { matches!(run["state"].as_str(), Some("finished" | "failed" | "canceled")).then_some(run) }
    })
    .await;
    let logs = broker.cli(&["run", "logs", &id]);
    ok(&logs);
    (run, logs.stdout)
}

#[tokio::test(flavor = "multi_thread")]
async fn variables_reach_exactly_their_stacks_jobs_and_secrets_stay_secret() {
    variables(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn on_postgres_variables_reach_exactly_their_stacks_jobs() {
    let cluster = PgCluster::start();
    variables(Some(&cluster.database("keyward_contexts"))).await;
}

async fn variables(database_url: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), database_url).await;
    let token = json(&broker.cli(&["pool", "join-token", "default", "--json"]))["token"].as_str().unwrap().to_owned();
    let (joined, agent_id, stderr) = join(&broker.addr, &token, &dir.path().join("agent"));
    assert!(joined, "{stderr}");
    let _agent = Agent::start(&dir.path().join("agent"), &agent_id, &[]);
    let repo = GitRepo::init(&dir.path().join("repo"));
    repo.commit("main.tf", MAIN_TF);
    let url = repo.url();
    // env=dev: applies need no review; `tier` tells the two apart for autoattach.
    for (stack, tier) in [("app", "prod"), ("other", "test")] {
        let label = format!("tier={tier}");
        json(&broker.cli(&[
            "stack",
            "create",
            stack,
            "--repository",
            &url,
            "--label",
            "env=dev",
            "--label",
            &label,
            "--json",
        ]));
    }

    // `base` (priority 0) on both stacks by name; `secrets` (priority 10) on tier=prod by label.
    json(&broker.cli(&["context", "create", "base", "--json"]));
    ok(&broker.cli(&["context", "set", "base", "TF_VAR_region=us-east-1"]));
    for stack in ["app", "other"] {
        ok(&broker.cli(&["context", "attach", "base", "--stack", stack]));
    }
    json(&broker.cli(&["context", "create", "secrets", "--autoattach", "tier=prod", "--priority", "10", "--json"]));
    ok(&broker.cli(&["context", "set", "secrets", &format!("TF_VAR_db_password={SECRET}"), "--secret"]));
    ok(&broker.cli(&["context", "set", "secrets", "TF_VAR_region=eu-west-1"]));
    ok(&broker.cli(&["stack", "set-var", "app", "TF_VAR_owner=team-a"]));

    // Bad input: refused with the reason, nothing stored.
    for (args, words) in [
        (vec!["context", "set", "secrets", "1BAD=x"], "is not an environment variable name"),
        (vec!["context", "set", "secrets", "KEYWARD_JOB_ID=x"], "set by the agent itself"),
        (vec!["stack", "set-var", "app", "PATH=/tmp"], "set by the agent itself"),
        (vec!["context", "set", "nope", "A=b"], "context `nope` does not exist"),
        (vec!["context", "create", "Bad Name"], "invalid context name"),
    ] {
        let out = broker.cli(&args);
        assert!(!out.success && out.stderr.contains(words), "{args:?}: {}", out.stderr);
    }
    let huge = format!("TF_VAR_big={}", "x".repeat(64 * 1024 + 1));
    let out = broker.cli(&["context", "set", "secrets", &huge]);
    assert!(!out.success && out.stderr.contains("at most 65536"), "{}", out.stderr);
    let shown = json(&broker.cli(&["context", "show", "secrets", "--json"]));
    let names: Vec<&str> = shown["variables"].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["TF_VAR_db_password", "TF_VAR_region"], "nothing else stored: {shown}");

    // The secret is never returned: not by show (JSON or text), not by list.
    let secret_view = &shown["variables"][0];
    assert_eq!((secret_view["secret"].as_bool(), secret_view.get("value")), (Some(true), None), "{shown}");
    assert_eq!(secret_view["sha256_prefix"].as_str().map(str::len), Some(8));
    for out in [broker.cli(&["context", "show", "secrets"]), broker.cli(&["context", "list", "--json"])] {
        ok(&out);
        assert!(!out.stdout.contains(SECRET), "{}", out.stdout);
    }

    // app: priority order (secrets' region over base's), its own owner, the secret masked.
    let (run, log) = run_to_end(&broker, "app").await;
    assert_eq!(run["state"], "finished", "{run}\n{log}");
    assert!(log.contains("password=*** b64=*** region=eu-west-1 owner=team-a"), "{log}");
    let b64 = base64_of(SECRET);
    assert!(!log.contains(SECRET) && !log.contains(&b64), "the secret leaked into the log:\n{log}");
    // other: base only; never the secret.
    let (run, log) = run_to_end(&broker, "other").await;
    assert_eq!(run["state"], "finished", "{run}\n{log}");
    assert!(log.contains("password=none b64=bm9uZQ== region=us-east-1 owner=-"), "{log}");

    // Policies see the variables' names, whether secret and where from; never a value.
    ok(&broker.cli(&["stack", "set-var", "other", "TF_VAR_forbidden=top-secret-value", "--secret"]));
    let refused = broker.cli(&["run", "submit", "--stack", "other"]);
    assert!(!refused.success, "{}", refused.stdout);
    assert!(
        refused.stderr.contains("variable TF_VAR_forbidden (secret: true) from stack:other is not allowed"),
        "{}",
        refused.stderr
    );
    assert!(!refused.stderr.contains("top-secret-value"), "{}", refused.stderr);

    // The trail says which variables each job got (names, versions, where from), never values.
    let audit = match database_url {
        Some(url) => Audit(Store::open(&DatabaseLocation::Postgres(url.to_owned())).await.unwrap()),
        None => Audit::open(&broker.data_dir).await,
    };
    let issued = audit.count("job.variables_issued").await;
    assert!(issued >= 4, "plan and apply of both stacks: {issued}");
    let app_entries = audit.referencing("stack:app").await;
    assert!(app_entries.iter().all(|e| !e.body.contains(SECRET)), "a value on the audit log");
    let all = audit.referencing("context:secrets").await;
    assert!(!all.is_empty() && all.iter().all(|e| !e.body.contains(SECRET)));
    drop(audit);
    if database_url.is_some() {
        return;
    }
    broker.stop();
    let mut at_rest = Vec::new();
    for entry in std::fs::read_dir(dir.path().join("broker")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            at_rest.extend(std::fs::read(path).unwrap());
        }
    }
    assert!(!at_rest.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()), "the secret at rest in the clear");
    assert!(at_rest.windows(9).any(|w| w == b"us-east-1"), "the check can fail: plain values are stored as given");
}

fn base64_of(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}
