//! Security scans before `init` (docs/scans.md): a real broker (SQLite, and PostgreSQL), a real
//! `keyward-agent` (sandbox, network `none`) running real Checkov (pinned in the test peers, its
//! virtualenv bound read-only into the sandbox) and real Terraform over local git repositories.
//!
//! The repository holds an unencrypted `aws_s3_bucket` in a module directory its root does not
//! call: Checkov scans every `.tf` file under the configuration's directory, while Terraform loads
//! only the root, so a run that gets past the scan needs no AWS provider (none can be downloaded
//! here). In enforce mode (`scan=enforce`) the run is refused before `init` with the check IDs
//! and nothing after the scan runs; in warn-only mode it plans and applies, with the findings as
//! warnings, and `keyward.plan` sees them too. A plan job that sends no scan fails its run
//! whatever it reports; a stack naming an unknown scanner is refused and nothing is stored.

use std::path::{Path, PathBuf};
use std::time::Duration;

use keyward_tests::agent::{Agent, join};
use keyward_tests::broker::{Broker, ConfigExtra, Output, TEST_KEK, write_config};
use keyward_tests::git::GitRepo;
use keyward_tests::postgres::PgCluster;
use keyward_tests::{eventually, free_addr, venv, workspace_root};
use serde_json::{Value, json};

fn json(output: &Output) -> Value {
    assert!(output.success, "stdout: {}\nstderr: {}", output.stdout, output.stderr);
    serde_json::from_str(&output.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", output.stdout))
}

/// The pinned Checkov, installed by scripts/install-test-peers beside the test peers' venv.
fn checkov() -> PathBuf {
    let program = venv().parent().expect("the venv has a parent").join("checkov/bin/checkov");
    assert!(program.is_file(), "{} is missing: run scripts/install-test-peers", program.display());
    program
}

/// A broker over the shipped policies plus a plan rule that reads `input.scans`.
async fn start(dir: &Path, database_url: Option<&str>) -> Broker {
    let addr = free_addr();
    let config = dir.join("keyward.toml");
    let data_dir = dir.join("broker");
    let policies = dir.join("policies");
    std::fs::create_dir_all(policies.join("cases")).unwrap();
    for entry in std::fs::read_dir(workspace_root().join("policies")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, policies.join(path.file_name().unwrap())).unwrap();
        }
    }
    std::fs::write(
        policies.join("scans_in_plan.rego"),
        "package keyward.plan\n\nwarn contains msg if {\n\tsome check in input.scans.checkov.failed_checks\n\t\
         check.id == \"CKV_AWS_145\"\n\tmsg := sprintf(\"the plan policy sees checkov's %s on %s\", [check.id, check.resource])\n}\n",
    )
    .unwrap();
    let rest = format!(
        "[policy]\ndir = \"{policies}\"\n[agents]\nlisten = \"{agents}\"\nlease = \"30s\"\npoll_interval = \"200ms\"\n",
        policies = policies.display(),
        agents = free_addr(),
    );
    let storage = if database_url.is_some() { "database_url_env = \"KW_DATABASE_URL\"" } else { "" };
    write_config(&config, addr, &data_dir, &ConfigExtra { storage, rest: &rest, ..ConfigExtra::default() });
    let mut envs = vec![("TEST_KEK", TEST_KEK)];
    envs.extend(database_url.map(|url| ("KW_DATABASE_URL", url)));
    Broker::serve(&config, &data_dir, &format!("http://{addr}"), &envs).await
}

/// A real agent (sandbox, network `none`) enrolled in pool `default`, started with `args`.
fn agent(broker: &Broker, dir: &Path, args: &[&str]) -> Agent {
    let token = json(&broker.cli(&["pool", "join-token", "default", "--json"]))["token"].as_str().unwrap().to_owned();
    let (ok, agent_id, stderr) = join(&broker.addr, &token, dir);
    assert!(ok, "{stderr}");
    Agent::start(dir, &agent_id, args)
}

/// `infra/main.tf` (one `terraform_data`) and `infra/storage/bucket.tf`: an S3 bucket without
/// encryption, logging or versioning, in a module the root does not call.
fn repository(dir: &Path) -> GitRepo {
    let repo = GitRepo::init(&dir.join("repo"));
    std::fs::create_dir_all(repo.dir.join("infra/storage")).unwrap();
    repo.commit("infra/storage/bucket.tf", "resource \"aws_s3_bucket\" \"logs\" {\n  bucket = \"kw-logs\"\n}\n");
    repo.commit("infra/main.tf", "resource \"terraform_data\" \"scanned\" {\n  input = \"v1\"\n}\n");
    repo
}

/// Creates stack `name` over `repo`, scanned with Checkov, with `extra` arguments.
fn create(broker: &Broker, repo: &GitRepo, name: &str, extra: &[&str]) -> Value {
    let url = repo.url();
    let mut args = vec!["stack", "create", name, "--repository", &url, "--path", "infra", "--label", "env=dev"];
    args.extend_from_slice(&["--scan", "checkov", "--hook", "before_init=echo marker-before-init"]);
    args.extend_from_slice(extra);
    args.push("--json");
    json(&broker.cli(&args))
}

/// A `PATH` of the directory holding `terraform` and the system's, without Checkov.
fn which_terraform() -> String {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .find(|dir| dir.join("terraform").is_file())
        .expect("terraform on PATH");
    assert!(!found.join("checkov").exists(), "checkov beside terraform in {}", found.display());
    format!("{}:/usr/bin:/bin", found.display())
}

/// Submits a run of `stack` and waits for it to end; the run and its log.
async fn run_to_end(broker: &Broker, stack: &str) -> (Value, String) {
    let out = broker.cli(&["run", "submit", "--stack", stack]);
    assert!(out.success, "{}", out.stderr);
    let id = out.stdout.trim().to_owned();
    let run = eventually(&format!("run of {stack} to end"), Duration::from_secs(180), || {
        let run = json(&broker.cli(&["run", "show", &id, "--json"]));
        async move { matches!(run["state"].as_str(), Some("finished" | "failed" | "canceled")).then_some(run) }
    })
    .await;
    let logs = broker.cli(&["run", "logs", &id]);
    assert!(logs.success, "{}", logs.stderr);
    (run, logs.stdout)
}

#[tokio::test(flavor = "multi_thread")]
async fn on_sqlite_enforce_mode_refuses_before_init_and_warn_mode_passes_with_warnings() {
    scans(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn on_postgres_enforce_mode_refuses_before_init_and_warn_mode_passes_with_warnings() {
    let cluster = PgCluster::start();
    scans(Some(&cluster.database("keyward_scans"))).await;
}

async fn scans(database_url: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), database_url).await;
    let checkov = format!("checkov={}", checkov().display());
    let _agent = agent(&broker, &dir.path().join("agent"), &["--scanner", &checkov]);
    let repo = repository(dir.path());

    let created = create(&broker, &repo, "guarded", &["--label", "scan=enforce"]);
    assert_eq!(created["scanners"], json!(["checkov"]), "{created}");
    let shown = broker.cli(&["stack", "show", "guarded"]);
    assert!(shown.stdout.contains("scanned with   checkov"), "{}", shown.stdout);
    let (run, log) = run_to_end(&broker, "guarded").await;
    assert_eq!(run["state"], "failed", "{run}\n{log}");
    let detail = run["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("the scan policy refused the run before init"), "{detail}");
    assert!(detail.contains("CKV_AWS_145 on aws_s3_bucket.logs (/storage/bucket.tf:1)"), "{detail}");
    assert!(detail.contains("scan=enforce"), "{detail}");
    // The scan ran in the sandbox, and nothing after it: no hook, no init.
    assert!(log.contains("(scan before init)") && log.contains("CKV_AWS_145 aws_s3_bucket.logs"), "{log}");
    assert!(!log.contains("marker-before-init") && !log.contains("$ terraform"), "{log}");
    let scan = &run["jobs"][0]["scan"];
    assert_eq!(scan["allowed"], false, "{run}");
    let ids = scan["scanners"]["checkov"]["failed_check_ids"].as_array().cloned().unwrap_or_default();
    assert!(ids.contains(&json!("CKV_AWS_145")), "{scan}");
    let show = broker.cli(&["run", "show", run["id"].as_str().unwrap()]);
    assert!(
        show.stdout.contains("scan        checkov:") && show.stdout.contains("refused     checkov:"),
        "{}",
        show.stdout
    );

    // Warn-only (no `scan` label): the same findings are warnings; the run plans and applies,
    // and the plan policy sees the scan.
    create(&broker, &repo, "advised", &[]);
    let (run, log) = run_to_end(&broker, "advised").await;
    assert_eq!(run["state"], "finished", "{run}\n{log}");
    assert!(log.contains("keyward: scan policy warns: checkov:") && log.contains("warn-only"), "{log}");
    assert!(log.contains("marker-before-init") && log.contains("$ terraform apply"), "{log}");
    assert!(log.contains("the plan policy sees checkov's CKV_AWS_145 on aws_s3_bucket.logs"), "{log}");
    let scan = &run["jobs"][0]["scan"];
    assert_eq!(scan["allowed"], true, "{run}");
    assert!(scan["warn"][0].as_str().is_some_and(|w| w.contains("CKV_AWS_145")), "{scan}");
    assert!(run["jobs"][1].get("scan").is_none(), "applies are not scanned: {run}");

    // Each verdict is on the record, with its findings.
    let tail = broker.cli(&["audit", "tail", "--kind", "scan.evaluated", "--json"]);
    assert!(tail.success, "{}", tail.stderr);
    let entries: Vec<Value> = tail.stdout.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    let allowed: Vec<Value> = entries.iter().map(|e| e["entry"]["details"]["allowed"].clone()).collect();
    assert_eq!(allowed, [json!(false), json!(true)], "{entries:?}");
    let failed = |e: &Value| e["entry"]["details"]["scanners"]["checkov"]["failed"].as_u64().unwrap_or_default();
    assert!(entries.iter().all(|e| failed(e) >= 1), "{entries:?}");
}

/// The broker, not the agent, makes a scan stick: an agent that runs no scan (here an `--exec`
/// agent, which runs the operator's command instead of Terraform, as an agent from before scans
/// would skip it) reports success, and the run fails all the same; an agent without Checkov fails
/// the job saying what to install. A stack naming an unknown scanner is refused, nothing stored.
#[tokio::test(flavor = "multi_thread")]
async fn a_plan_without_a_scan_fails_its_run_and_unknown_scanners_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), None).await;
    let repo = repository(dir.path());
    {
        let _exec = agent(&broker, &dir.path().join("exec-agent"), &["--exec", "true", "--isolation", "process"]);
        create(&broker, &repo, "skipped", &[]);
        let (run, log) = run_to_end(&broker, "skipped").await;
        assert_eq!(run["state"], "failed", "{run}\n{log}");
        let detail = run["detail"].as_str().unwrap_or_default();
        assert!(detail.contains("its plan job sent no scan"), "{detail}");
    }
    // No Checkov given and none on a PATH of system directories only.
    let token = json(&broker.cli(&["pool", "join-token", "default", "--json"]))["token"].as_str().unwrap().to_owned();
    let (ok, bare_id, stderr) = join(&broker.addr, &token, &dir.path().join("bare-agent"));
    assert!(ok, "{stderr}");
    let terraform = which_terraform();
    let _bare = Agent::start_with_path(&dir.path().join("bare-agent"), &bare_id, &[], Some(&terraform));
    create(&broker, &repo, "unscannable", &[]);
    let (run, log) = run_to_end(&broker, "unscannable").await;
    assert_eq!(run["state"], "failed", "{run}\n{log}");
    let error = run["jobs"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("this agent has no checkov") && error.contains("--scanner checkov=PATH"), "{error}");

    let url = repo.url();
    let refused = broker.cli(&["stack", "create", "bad", "--repository", &url, "--scan", "trivy"]);
    assert!(!refused.success && refused.stderr.contains("trivy"), "{}", refused.stderr);
    let body = json!({"name": "bad", "repository": url, "scanners": ["trivy"]});
    let post = |body: Value| {
        let request = reqwest::Client::new()
            .post(format!("{}/v1/stacks", broker.addr))
            .bearer_auth(&broker.admin_token)
            .json(&body);
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    let (status, text) = post(body).await;
    assert!(status == 400 && text.contains("trivy"), "{status} {text}");
    let (status, text) = post(json!({"name": "bad", "repository": url, "scanners": ["checkov", "checkov"]})).await;
    assert!(status == 400 && text.contains("named twice"), "{status} {text}");
    assert!(!broker.cli(&["stack", "show", "bad"]).success, "nothing was stored");
}
