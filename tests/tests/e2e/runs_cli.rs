//! The stack and run commands against a real `keyward dev` broker and a real git repository:
//! what a newcomer types, with `--json` for scripts and clear errors for mistakes.

use keyward_tests::broker::{Broker, json};
use keyward_tests::git::GitRepo;
use serde_json::Value;

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
    // A proposed plan (docs/vcs.md) plans and stops there: one job, never an apply, exit 0.
    let proposed = json(&broker.cli(&["run", "submit", "--stack", "example", "--proposed", "--wait", "--json"]));
    assert_eq!(
        (proposed["kind"].as_str(), proposed["state"].as_str()),
        (Some("proposed"), Some("finished")),
        "{proposed}"
    );
    assert_eq!(proposed["jobs"].as_array().unwrap().len(), 1, "{proposed}");
    assert!(proposed["detail"].as_str().unwrap().contains("never applied"), "{proposed}");
    assert!(proposed.get("pull_request_source").is_none(), "asked for, not observed: {proposed}");
    let both = broker.cli(&["run", "submit", "--stack", "example", "--proposed", "--drift"]);
    assert!(!both.success && both.stderr.contains("cannot be used with"), "{}", both.stderr);
}

/// A broker on SQLite, or on PostgreSQL at `database_url`, for the trigger tests.
async fn stacks_broker(dir: &std::path::Path, database_url: Option<&str>) -> Broker {
    use keyward_tests::broker::{ConfigExtra, TEST_KEK, write_config};
    let addr = keyward_tests::free_addr();
    let (config, data_dir) = (dir.join("keyward.toml"), dir.join("broker"));
    let storage = if database_url.is_some() { "database_url_env = \"KW_DATABASE_URL\"" } else { "" };
    write_config(&config, addr, &data_dir, &ConfigExtra { storage, ..ConfigExtra::default() });
    let mut envs = vec![("TEST_KEK", TEST_KEK)];
    envs.extend(database_url.map(|url| ("KW_DATABASE_URL", url)));
    Broker::serve(&config, &data_dir, &format!("http://{addr}"), &envs).await
}

#[tokio::test(flavor = "multi_thread")]
async fn on_sqlite_trigger_globs_are_set_replaced_cleared_and_bad_ones_refused() {
    trigger_globs(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn on_postgres_trigger_globs_are_set_replaced_cleared_and_bad_ones_refused() {
    let cluster = keyward_tests::postgres::PgCluster::start();
    trigger_globs(Some(&cluster.database("keyward_triggers"))).await;
}

/// Stack trigger globs (docs/vcs.md) from the command line and over HTTP: created with the stack,
/// shown, replaced and cleared by `stack update`; a glob that is absolute, climbs out with `..`,
/// does not compile, or one too many, is refused by both, and nothing is stored.
async fn trigger_globs(database_url: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::init(&dir.path().join("infra"));
    let broker = stacks_broker(dir.path(), database_url).await;
    let url = repo.url();
    let triggers = |stack: &Value| stack["triggers"].clone();

    let created = json(&broker.cli(&[
        "stack",
        "create",
        "network",
        "--repository",
        &url,
        "--path",
        "stacks/network",
        "--trigger",
        "modules/**",
        "--trigger",
        "stacks/network/*.tf",
        "--json",
    ]));
    assert_eq!(triggers(&created), serde_json::json!(["modules/**", "stacks/network/*.tf"]));
    let shown = broker.cli(&["stack", "show", "network"]);
    assert!(shown.stdout.contains("triggers       modules/**, stacks/network/*.tf"), "{}", shown.stdout);
    let replaced = json(&broker.cli(&["stack", "update", "network", "--trigger", "*.tfvars", "--json"]));
    assert_eq!(triggers(&replaced), serde_json::json!(["*.tfvars"]));
    let cleared = json(&broker.cli(&["stack", "update", "network", "--clear-triggers", "--json"]));
    assert_eq!(triggers(&cleared), serde_json::json!([]));
    let plain = json(&broker.cli(&["stack", "create", "plain", "--repository", &url, "--json"]));
    assert_eq!(triggers(&plain), serde_json::json!([]), "no triggers: the files under the path");

    for (glob, expected) in [
        ("/etc/**", "relative to the repository root"),
        ("modules/../../x", "no `..` segment"),
        ("a[", "invalid trigger glob `a[`"),
    ] {
        let create = broker.cli(&["stack", "create", "bad", "--repository", &url, "--trigger", glob]);
        assert!(!create.success && create.stderr.contains(expected), "{glob}: {}", create.stderr);
        let update = broker.cli(&["stack", "update", "network", "--trigger", glob]);
        assert!(!update.success && update.stderr.contains(expected), "{glob}: {}", update.stderr);
    }
    let client = reqwest::Client::new();
    let token = broker.admin_token.clone();
    let send = |request: reqwest::RequestBuilder| {
        let request = request.bearer_auth(&token);
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    let many: Vec<String> = (0..33).map(|i| format!("m{i}/**")).collect();
    let post = client
        .post(format!("{}/v1/stacks", broker.addr))
        .json(&serde_json::json!({"name": "bad", "repository": url, "triggers": many}));
    let (status, text) = send(post).await;
    assert!(status == 400 && text.contains("at most 32 trigger globs"), "{status} {text}");
    let patch = client
        .patch(format!("{}/v1/stacks/network", broker.addr))
        .json(&serde_json::json!({"triggers": ["ok/**", "a["]}));
    let (status, text) = send(patch).await;
    assert!(status == 400 && text.contains("invalid trigger glob"), "{status} {text}");
    let (status, text) =
        send(client.patch(format!("{}/v1/stacks/network", broker.addr)).json(&serde_json::json!({"triggers": "x"})))
            .await;
    assert_eq!(status, 400, "{text}");

    assert!(!broker.cli(&["stack", "show", "bad"]).success, "nothing was stored");
    let network = json(&broker.cli(&["stack", "show", "network", "--json"]));
    assert_eq!(triggers(&network), serde_json::json!([]), "refused updates changed nothing");

    // On record: the triggers a stack was created with, and each change, from what to what.
    let entries = |kind: &str| {
        let request = client.get(format!("{}/v1/audit/entries?tail=20&kind={kind}", broker.addr));
        async { serde_json::from_str::<Value>(&send(request).await.1).unwrap()["entries"].as_array().unwrap().clone() }
    };
    let created = entries("stack.created").await;
    assert_eq!(created.len(), 2, "{created:?}");
    assert!(
        created.iter().any(|e| e.to_string().contains(r#""triggers":["modules/**","stacks/network/*.tf"]"#)),
        "{created:?}"
    );
    let updated = entries("stack.updated").await;
    assert_eq!(updated.len(), 2, "only the two updates that were made: {updated:?}");
    assert!(
        updated.iter().any(|e| e.to_string().contains(r#""triggers":{"from":["*.tfvars"],"to":[]}"#)),
        "{updated:?}"
    );
}
