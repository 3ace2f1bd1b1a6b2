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

use keyward_proto::agent_v1::{
    JobResult, JobVariablesRequest, ScanFinding, ScanReport, ScanSubmission, StateBackendRequest, agent_message,
};
use keyward_tests::agent::{Agent, WorkSession, bootstrap, enroll_in_process, join};
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
    // The refused job got nothing but its checkout: its variables were never issued; the allowed
    // one got them after its scan.
    let job_of = |e: &Value| e["entry"]["details"]["job_id"].as_str().unwrap_or_default().to_owned();
    let tail = broker.cli(&["audit", "tail", "--kind", "job.variables_issued", "--json"]);
    let issued: Vec<String> = tail.stdout.lines().map(|line| job_of(&serde_json::from_str(line).unwrap())).collect();
    let (refused_job, allowed_job) = (job_of(&entries[0]), job_of(&entries[1]));
    assert!(!issued.contains(&refused_job), "{issued:?}");
    assert!(issued.contains(&allowed_job), "{issued:?}");
}

/// The broker, not the agent, makes a scan stick: an agent that runs no scan (here an `--exec`
/// agent, which runs the operator's command instead of Terraform, as an agent from before scans
/// would skip it) is given nothing, so its job and run fail saying why; an agent without Checkov
/// fails the job saying what to install. A stack naming an unknown scanner is refused, nothing
/// stored.
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
        assert!(detail.contains("is scanned before init: send its scan first"), "{detail}");
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

/// The broker's gate, spoken to as an agent would (an in-process work stream, mTLS): before its
/// scan is allowed, a scanned stack's plan job gets neither its variables nor its state backend;
/// after an allowing verdict it does; the first verdict is final (a clean report after a dirty
/// one changes nothing); after a refusal it gets nothing, and reports for scanners the stack does
/// not name are refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_scanned_job_gets_nothing_but_its_checkout_before_its_scan_is_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), None).await;
    let repo = repository(dir.path());
    create(&broker, &repo, "warned", &[]);
    create(&broker, &repo, "enforced", &["--label", "scan=enforce"]);
    let (endpoint, ca) = bootstrap(&broker.addr).await;
    let token = json(&broker.cli(&["pool", "join-token", "default", "--json"]))["token"].as_str().unwrap().to_owned();
    let (_, identity) = enroll_in_process(&endpoint, &ca, &token).await;
    let mut session = WorkSession::open(&endpoint, &ca, identity, 2).await.expect("work stream");
    let mut jobs = Vec::new();
    for stack in ["warned", "enforced"] {
        assert!(broker.cli(&["run", "submit", "--stack", stack]).success);
        let job = session.next_assignment(Duration::from_secs(20)).await.expect("an assignment");
        assert_eq!(job.scanners, ["checkov"], "{job:?}");
        jobs.push(job);
    }
    let (warned, enforced) = (&jobs[0], &jobs[1]);
    session.heartbeat(&[&warned.job_id, &enforced.job_id]).await.expect("the stream is open");
    let mut client = session.client.clone();
    let variables = |job: &keyward_proto::agent_v1::JobAssignment| JobVariablesRequest {
        job_id: job.job_id.clone(),
        fencing_token: job.fencing_token,
    };
    let before = client.job_variables(variables(warned)).await.expect_err("no variables before the scan");
    assert_eq!(before.code(), tonic::Code::FailedPrecondition, "{before:?}");
    assert!(before.message().contains("send its scan first"), "{before:?}");
    let state = StateBackendRequest { job_id: warned.job_id.clone(), fencing_token: warned.fencing_token };
    let before = client.state_backend(state.clone()).await.expect_err("no state backend before the scan");
    assert_eq!(before.code(), tonic::Code::FailedPrecondition, "{before:?}");

    let report = |failed: u32| ScanReport {
        scanner: "checkov".into(),
        version: "3.3.30".into(),
        passed: 1,
        failed,
        findings: (0..failed)
            .map(|_| ScanFinding {
                check_id: "CKV_AWS_145".into(),
                resource: "aws_s3_bucket.logs".into(),
                file: "/storage/bucket.tf".into(),
                first_line: 1,
                last_line: 3,
                ..ScanFinding::default()
            })
            .collect(),
        ..ScanReport::default()
    };
    let submit = |job: &keyward_proto::agent_v1::JobAssignment, reports: Vec<ScanReport>| ScanSubmission {
        job_id: job.job_id.clone(),
        fencing_token: job.fencing_token,
        reports,
    };
    let unnamed = ScanReport { scanner: "trivy".into(), ..report(0) };
    let refused = client.submit_scan(submit(warned, vec![unnamed])).await.expect_err("an unknown scanner");
    assert!(refused.message().contains("unknown scanner `trivy`"), "{refused:?}");
    let verdict = client.submit_scan(submit(warned, vec![report(1)])).await.expect("judged").into_inner();
    assert!(verdict.allowed && verdict.warn.iter().any(|w| w.contains("CKV_AWS_145")), "{verdict:?}");
    assert!(client.job_variables(variables(warned)).await.is_ok(), "variables once the scan is allowed");
    assert!(client.state_backend(state).await.is_ok(), "the state backend once the scan is allowed");

    let verdict = client.submit_scan(submit(enforced, vec![report(1)])).await.expect("judged").into_inner();
    assert!(!verdict.allowed && verdict.deny.iter().any(|d| d.contains("CKV_AWS_145")), "{verdict:?}");
    let again = client.submit_scan(submit(enforced, vec![report(0)])).await.expect("judged").into_inner();
    assert_eq!(again, verdict, "the first verdict is final");
    let after = client.job_variables(variables(enforced)).await.expect_err("nothing after a refusal");
    assert!(after.message().contains("refused"), "{after:?}");
    // The refused job reports success anyway: its run fails with the policy's reasons.
    let ended = |run: &str| {
        let run = run.to_owned();
        let broker = &broker;
        eventually("the run to end", Duration::from_secs(30), move || {
            let shown = json(&broker.cli(&["run", "show", &run, "--json"]));
            async move { (shown["state"] != "planning" && shown["state"] != "queued").then_some(shown) }
        })
    };
    report_success(&session, enforced).await;
    let run = ended(&enforced.run_id).await;
    assert_eq!(run["state"], "failed", "{run}");
    assert!(run["detail"].as_str().is_some_and(|d| d.contains("refused the run before init: checkov")), "{run}");

    // A job that never sends a scan and claims success (an agent that skipped it): its run fails.
    create(&broker, &repo, "silent", &[]);
    assert!(broker.cli(&["run", "submit", "--stack", "silent"]).success);
    let silent = session.next_assignment(Duration::from_secs(20)).await.expect("an assignment");
    report_success(&session, &silent).await;
    let run = ended(&silent.run_id).await;
    assert_eq!(run["state"], "failed", "{run}");
    assert!(run["detail"].as_str().is_some_and(|d| d.contains("its plan job sent no scan")), "{run}");
}

/// Reports `job` as succeeded, as an agent that ignored the scan would.
async fn report_success(session: &WorkSession, job: &keyward_proto::agent_v1::JobAssignment) {
    let result = JobResult {
        job_id: job.job_id.clone(),
        fencing_token: job.fencing_token,
        success: true,
        ..JobResult::default()
    };
    session.send(agent_message::Kind::Result(result)).await.expect("the stream is open");
}
