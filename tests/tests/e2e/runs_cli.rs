//! The stack and run commands against a real `keyward dev` broker and a real git repository:
//! what a newcomer types, with `--json` for scripts and clear errors for mistakes.

use keyward_tests::broker::Broker;
use keyward_tests::git::GitRepo;
use serde_json::Value;

fn json(output: &keyward_tests::broker::Output) -> Value {
    assert!(output.success, "stderr: {}", output.stderr);
    serde_json::from_str(&output.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", output.stdout))
}

#[tokio::test(flavor = "multi_thread")]
async fn stacks_and_runs_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::init(&dir.path().join("infra"));
    let broker = Broker::dev(&dir.path().join("data")).await;

    let url = repo.url();
    let created = broker.cli(&["stack", "create", "network", "--repository", &url, "--label", "env=dev", "--json"]);
    assert_eq!(json(&created)["labels"]["env"], "dev");
    // `keyward dev` made `example`; ours is listed beside it.
    let listed = json(&broker.cli(&["stack", "list", "--json"]));
    let names: Vec<&str> = listed["stacks"].as_array().unwrap().iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(names, ["example", "network"]);
    let shown = broker.cli(&["stack", "show", "network"]);
    assert!(shown.success && shown.stdout.contains(&url), "{}", shown.stdout);

    // Submit prints the run ID alone (so `ID=$(keyward run submit …)` works), or JSON.
    let submitted = broker.cli(&["run", "submit", "--stack", "network", "--ticket", "CHG-9"]);
    assert!(submitted.success, "{}", submitted.stderr);
    let id = submitted.stdout.trim().to_owned();
    assert_eq!(id.len(), 36, "a bare run ID: {:?}", submitted.stdout);
    let run = json(&broker.cli(&["run", "show", &id, "--json"]));
    assert_eq!((run["state"].as_str(), run["commit_sha"].as_str()), (Some("queued"), Some(repo.head().as_str())));
    assert_eq!(run["triggered_by"], "bootstrap-admin");
    let by_json = json(&broker.cli(&["run", "submit", "--stack", "network", "--json"]));
    assert!(by_json["id"].as_str().is_some_and(|i| i != id), "{by_json}");
    let listed = json(&broker.cli(&["run", "list", "--stack", "network", "--json"]));
    assert_eq!(listed["runs"].as_array().map(Vec::len), Some(2));

    // Mistakes get clear errors and change nothing.
    for (args, expected) in [
        (vec!["run", "submit", "--stack", "nope"], "no stack named `nope`"),
        (vec!["run", "submit", "--stack", "network", "--commit", "abc123"], "40 lowercase hex"),
        (vec!["run", "approve", &id], "reviews are taken only while it is planned"),
        (vec!["run", "show", "no-such-run"], "no run with ID"),
        (vec!["stack", "create", "network", "--repository", &url], "already exists"),
        (vec!["stack", "create", "other", "--repository", "/not/a/url"], "https://, ssh:// or file://"),
    ] {
        let out = broker.cli(&args);
        assert!(!out.success && out.stderr.contains(expected), "{args:?}: {}", out.stderr);
    }
    let still = json(&broker.cli(&["run", "list", "--json"]));
    assert_eq!(still["runs"].as_array().map(Vec::len), Some(2));

    // Waiting on a pool no agent serves gives up when told to, saying why; the run stays queued.
    let waited = broker.cli(&["run", "submit", "--stack", "network", "--wait", "--timeout", "1s"]);
    assert!(!waited.success, "{}", waited.stdout);
    assert!(waited.stderr.contains("is still queued after 1s"), "{}", waited.stderr);
    assert!(waited.stderr.contains("is an agent of pool `default` connected?"), "{}", waited.stderr);
    let waited_id = waited.stdout.trim();
    assert_eq!(json(&broker.cli(&["run", "show", waited_id, "--json"]))["state"], "queued");

    let canceled = json(&broker.cli(&["run", "cancel", &id, "--json"]));
    assert_eq!(canceled["state"], "canceled");
    let again = broker.cli(&["run", "cancel", &id]);
    assert!(!again.success && again.stderr.contains("already canceled"), "{}", again.stderr);
}

/// What a newcomer does first: `keyward dev`, then one command, and the run plans, is approved by
/// policy (the example stack is `env=dev`) and applies on the local agent `keyward dev` enrolled.
#[tokio::test(flavor = "multi_thread")]
async fn keyward_dev_runs_the_example_stack_on_its_own_agent() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::dev(&dir.path().join("data")).await;
    let out = broker.cli(&["run", "submit", "--stack", "example", "--wait", "--json"]);
    let run = json(&out);
    assert_eq!(run["state"], "finished", "{run}");
    let phases: Vec<(&str, &str)> = run["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| (j["phase"].as_str().unwrap(), j["state"].as_str().unwrap()))
        .collect();
    assert_eq!(phases, [("plan", "succeeded"), ("apply", "succeeded")]);
    let agents = json(&broker.cli(&["agent", "list", "--json"]));
    let agent = &agents["agents"][0];
    assert_eq!((agent["pool"].as_str(), agent["connected"].as_bool()), (Some("dev"), Some(true)), "{agents}");
    assert_eq!(run["jobs"][0]["agent_id"], agent["id"]);
    assert!(agent["isolation"].as_str().unwrap().starts_with("sandbox"), "{agent}");
    // Real Terraform ran both phases in the sandbox; its output is in the run's signed log.
    let id = run["id"].as_str().unwrap();
    let logs = broker.cli(&["run", "logs", id]);
    assert!(logs.success, "{}", logs.stderr);
    for line in [
        "keyward: terraform binary /",
        ", terraform 1.",
        "isolation sandbox network=none",
        "$ terraform plan",
        "Plan: 1 to add",
        "keyward: applying saved plan sha256",
        "applied: hello from keyward",
    ] {
        assert!(logs.stdout.contains(line), "{line:?} missing from:\n{}", logs.stdout);
    }
    let verified = broker.cli(&["run", "logs", id, "--verify"]);
    assert!(verified.success, "{}{}", verified.stdout, verified.stderr);
    assert!(logs.stdout.contains("keyward: state kept by the broker"), "{}", logs.stdout);
    // The broker kept the state the apply wrote, tied to the run and its apply job.
    let state = json(&broker.cli(&["state", "list", "example", "--json"]));
    let versions = state["versions"].as_array().unwrap();
    assert!(!versions.is_empty(), "{state}");
    let apply_job = run["jobs"][1]["id"].as_str().unwrap();
    for version in versions {
        assert_eq!((version["source"].as_str(), version["run_id"].as_str()), (Some("apply"), Some(id)), "{state}");
        assert_eq!(version["job_id"].as_str(), Some(apply_job), "{state}");
    }
    assert!(state["lock"].is_null(), "the apply released its lock: {state}");
    let listed = broker.cli(&["state", "list", "example"]);
    assert!(listed.success && listed.stdout.contains(id), "{}{}", listed.stdout, listed.stderr);
    // A drift check of the same stack reads that state: no changes, exit 0; nothing applied.
    let drift = broker.cli(&["run", "submit", "--stack", "example", "--drift", "--wait", "--timeout", "2m"]);
    assert_eq!(drift.code, Some(0), "{}{}", drift.stdout, drift.stderr);
    assert!(drift.stdout.contains("drift check (no drift)"), "{}", drift.stdout);
    assert!(!drift.stdout.contains("job           apply"), "{}", drift.stdout);
}
