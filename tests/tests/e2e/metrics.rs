//! `/metrics` of the broker and of an agent, after real work: a real broker process on moto's
//! STS, token exchanges allowed and denied, and a run taken by a real `keyward-agent` with
//! `--metrics-listen`. Both pages pass Prometheus's own linter (`promtool check metrics`, Debian's
//! `prometheus` package, installed by scripts/install-test-peers), their series hold what the
//! activity implies, the JSON log lines of the run's work carry its run and job IDs, and every
//! metric the Grafana dashboard (deploy/grafana/keyward.json) queries is on one of the pages.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use keyward_tests::agent::Agent;
use keyward_tests::broker::{Broker, ConfigExtra, TEST_KEK, json as json_of, write_config};
use keyward_tests::git::GitRepo;
use keyward_tests::moto::Moto;
use keyward_tests::{eventually, free_addr, workspace_root};
use serde_json::{Value, json};

const ROLE_READ: &str = "arn:aws:iam::123456789012:role/state-read";
const ROLE_WRITE: &str = "arn:aws:iam::123456789012:role/network-apply";

/// A broker logging JSON, with an agent endpoint and two AWS targets on moto.
async fn start(dir: &Path, sts: &str) -> Broker {
    let addr = free_addr();
    let config = dir.join("keyward.toml");
    let data_dir = dir.join("broker");
    let rest = format!(
        "[log]\nformat = \"json\"\n\
         [policy]\ndir = \"{policies}\"\n[tokens]\nallowed_audiences = [\"sts.amazonaws.com\"]\n\
         [agents]\nlisten = \"{agents}\"\nlease = \"20s\"\npoll_interval = \"200ms\"\n\
         [[targets]]\nname = \"state-read\"\ntype = \"aws\"\naccess = \"read\"\nrole_arn = \"{ROLE_READ}\"\n\
         region = \"eu-west-1\"\nsts_endpoint = \"{sts}\"\nduration = \"15m\"\nmode = \"broker\"\n\
         [[targets]]\nname = \"network-apply\"\ntype = \"aws\"\naccess = \"write\"\nrole_arn = \"{ROLE_WRITE}\"\n\
         region = \"eu-west-1\"\nsts_endpoint = \"{sts}\"\nduration = \"1h\"\nmode = \"broker\"\n\
         labels = {{ env = \"dev\" }}\nwrite_subjects = [\"job\", \"run\"]\n",
        policies = workspace_root().join("policies").display(),
        agents = free_addr(),
    );
    write_config(&config, addr, &data_dir, &ConfigExtra { rest: &rest, ..ConfigExtra::default() });
    Broker::serve(&config, &data_dir, &format!("http://{addr}"), &[("TEST_KEK", TEST_KEK)]).await
}

async fn token(broker: &Broker, run_id: &str, phase: &str) -> String {
    let body = json!({
        "stack": "network", "run_id": run_id, "phase": phase, "audience": broker.addr, "commit_sha": "0123abc",
        "ref": "refs/heads/main", "triggered_by": "alice",
    });
    let (status, minted) = broker.mint_raw(&body, Some(&broker.admin_token)).await;
    assert_eq!(status, 201, "{minted}");
    minted["token"].as_str().unwrap().to_owned()
}

/// `promtool`: `KEYWARD_PROMTOOL`, else the one on `PATH`.
fn promtool() -> String {
    std::env::var("KEYWARD_PROMTOOL").unwrap_or_else(|_| "promtool".to_owned())
}

/// `promtool check metrics` passes `page` with nothing to say (no lint problem either).
fn promtool_passes(page: &str, whose: &str) {
    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool ({e}): run scripts/install-test-peers or set KEYWARD_PROMTOOL")
        });
    child.stdin.take().unwrap().write_all(page.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool on the {whose}'s page: {said}\n{page}");
}

/// The page's samples, `name{labels}` → value.
fn samples(page: &str) -> BTreeMap<String, f64> {
    page.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| line.rsplit_once(' '))
        .map(|(series, value)| (series.to_owned(), value.parse().unwrap_or_else(|_| panic!("bad value: {value}"))))
        .collect()
}

/// The families the page declares (`# TYPE` lines).
fn families(page: &str) -> BTreeSet<String> {
    page.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect()
}

fn value(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    *samples.get(series).unwrap_or_else(|| panic!("no series {series} in {samples:#?}"))
}

async fn scrape(url: &str) -> String {
    let response = reqwest::get(url).await.unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

/// The JSON lines of `log` with `message` about run `run_id` (at the top level or in a span):
/// each must carry a `job_id` too. Returns how many there are.
fn carries_ids(log: &str, message: &str, run_id: &str, whose: &str) -> usize {
    let scopes = |line: &Value| {
        let mut scopes = vec![line.clone(), line["span"].clone()];
        scopes.extend(line["spans"].as_array().cloned().unwrap_or_default());
        scopes
    };
    let lines: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["message"] == message && scopes(l).iter().any(|s| s["run_id"] == run_id))
        .collect();
    for line in &lines {
        let job_id = scopes(line).iter().any(|s| s["job_id"].as_str().is_some_and(|v| !v.is_empty()));
        assert!(job_id, "the {whose}'s `{message}` line about the run lacks its job_id: {line}");
    }
    lines.len()
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_and_agent_metrics_pass_promtool_and_count_the_work() {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path()).await;
    let broker = start(dir.path(), &moto.endpoint).await;

    // One exchange allowed, one denied (a plan token never reaches a write target).
    let (status, body) = broker.exchange(&token(&broker, "run-metrics-1", "apply").await, "aws:network-apply").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = broker.exchange(&token(&broker, "run-metrics-2", "plan").await, "aws:network-apply").await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_target")), "{body}");

    // A run: a plan with read credentials, then an apply, on an agent serving its metrics.
    let repo = GitRepo::init(&dir.path().join("repo"));
    let url = repo.url();
    json_of(&broker.cli(&[
        "stack",
        "create",
        "network",
        "--repository",
        &url,
        "--label",
        "env=dev",
        "--plan-target",
        "aws:state-read",
        "--json",
    ]));
    let join = json_of(&broker.cli(&["pool", "join-token", "default", "--json"]));
    let data_dir = dir.path().join("agent");
    let (ok, id, stderr) = keyward_tests::agent::join(&broker.addr, join["token"].as_str().unwrap(), &data_dir);
    assert!(ok, "{stderr}");
    let metrics_addr = free_addr().to_string();
    let agent = Agent::start(
        &data_dir,
        &id,
        &["--exec", "true", "--isolation", "process", "--log-format", "json", "--metrics-listen", &metrics_addr],
    );
    let submitted = broker.cli(&["run", "submit", "--stack", "network"]);
    assert!(submitted.success, "{}", submitted.stderr);
    let run_id = submitted.stdout.trim().to_owned();
    let run = eventually("the run to finish", Duration::from_secs(60), || {
        let run = json_of(&broker.cli(&["run", "show", &run_id, "--json"]));
        async move { matches!(run["state"].as_str(), Some("finished" | "failed")).then_some(run) }
    })
    .await;
    assert_eq!(run["state"], "finished", "{run}\nagent log:\n{}", agent.log_text());

    let page = scrape(&format!("{}/metrics", broker.addr)).await;
    promtool_passes(&page, "broker");
    let broker_samples = samples(&page);
    let s = &broker_samples;
    let issued = "target=\"aws:network-apply\",outcome=\"issued\"";
    assert_eq!(value(s, &format!("keyward_exchanges_total{{{issued}}}")), 1.0);
    assert_eq!(value(s, "keyward_exchanges_total{target=\"aws:network-apply\",outcome=\"denied\"}"), 1.0);
    assert_eq!(
        value(s, "keyward_exchanges_total{target=\"aws:state-read\",outcome=\"issued\"}"),
        1.0,
        "the plan job's"
    );
    assert_eq!(value(s, &format!("keyward_exchange_seconds_count{{{issued}}}")), 1.0);
    assert_eq!(value(s, &format!("keyward_exchange_seconds_bucket{{{issued},le=\"+Inf\"}}")), 1.0);
    assert!(value(s, &format!("keyward_exchange_seconds_sum{{{issued}}}")) > 0.0);
    // The denied exchange never asked the policy (the broker's own rule refused it); the two
    // issued ones did, and the run's submission asked `keyward.run`.
    assert!(value(s, "keyward_policy_decision_seconds_count{kind=\"credentials\"}") >= 2.0);
    assert!(value(s, "keyward_policy_decision_seconds_count{kind=\"run\"}") >= 1.0);
    assert!(value(s, "keyward_runs{state=\"finished\"}") >= 1.0);
    assert_eq!(value(s, "keyward_jobs{state=\"queued\"}"), 0.0);
    assert_eq!(value(s, "keyward_jobs{state=\"leased\"}"), 0.0);
    assert_eq!(value(s, "keyward_job_dispatch_seconds_count"), 2.0, "the plan and the apply were leased");
    assert_eq!(value(s, "keyward_agents{state=\"active\"}"), 1.0);
    assert_eq!(value(s, "keyward_agents_connected"), 1.0);
    let commits = value(s, "keyward_audit_commits_total") + value(s, "keyward_audit_failed_commits_total");
    assert!(value(s, "keyward_audit_commit_seconds_count") >= commits && commits >= 1.0);
    assert!(value(s, "keyward_audit_batch_entries_sum") >= value(s, "keyward_audit_batch_entries_count"));
    assert!(!page.contains("run-metrics-1") && !page.contains(&run_id), "no run ID is a label");

    let agent_page = scrape(&format!("http://{metrics_addr}/metrics")).await;
    promtool_passes(&agent_page, "agent");
    let a = samples(&agent_page);
    assert_eq!(value(&a, "keyward_agent_jobs_total{task=\"plan\",outcome=\"succeeded\"}"), 1.0);
    assert_eq!(value(&a, "keyward_agent_jobs_total{task=\"apply\",outcome=\"succeeded\"}"), 1.0);
    assert_eq!(value(&a, "keyward_agent_job_seconds_count{task=\"plan\"}"), 1.0);
    assert_eq!(value(&a, "keyward_agent_job_seconds_bucket{task=\"apply\",le=\"+Inf\"}"), 1.0);
    assert_eq!(value(&a, "keyward_agent_connected"), 1.0);
    assert_eq!(value(&a, "keyward_agent_jobs_running"), 0.0);
    assert_eq!(value(&a, "keyward_agent_sandbox_failures_total{reason=\"setup\"}"), 0.0);

    // The JSON log lines of the run's work carry its run and job IDs.
    let broker_log = broker.log_text();
    assert_eq!(carries_ids(&broker_log, "job assigned", &run_id, "broker"), 2, "{broker_log}");
    assert_eq!(carries_ids(&broker_log, "credentials issued", &run_id, "broker"), 1, "the plan job's");
    // Each key once: the credential's target is not a second `target` beside tracing's own.
    for line in broker_log.lines().filter(|l| l.contains("credentials issued") || l.contains("job credentials")) {
        assert_eq!(line.matches("\"target\":").count(), 1, "{line}");
        assert!(line.contains("\"credential_target\":\"aws:"), "{line}");
    }
    let agent_log = agent.log_text();
    assert_eq!(carries_ids(&agent_log, "job started", &run_id, "agent"), 2, "{agent_log}");
    assert_eq!(carries_ids(&agent_log, "job finished", &run_id, "agent"), 2, "{agent_log}");

    dashboard_queries_exist(&families(&page).union(&families(&agent_page)).cloned().collect());
}

/// Every metric a panel of the Grafana dashboard queries is a family of a real page.
fn dashboard_queries_exist(families: &BTreeSet<String>) {
    let path = workspace_root().join("deploy/grafana/keyward.json");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).expect("the dashboard is JSON");
    let mut queried = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(at) = rest.find("keyward_") {
                let name: String = rest[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                rest = &rest[at + name.len()..];
                queried.insert(name);
            }
        }
    }
    assert!(queried.len() >= 20, "the dashboard covers the main series: {queried:?}");
    for name in &queried {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix).filter(|base| families.contains(*base)))
            .unwrap_or(name);
        assert!(families.contains(family), "the dashboard queries {name}, which no page has");
    }
}

#[test]
fn the_agent_refuses_a_non_loopback_metrics_address() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(keyward_tests::binary("keyward-agent"))
        .args(["run", "--data-dir"])
        .arg(dir.path())
        .args(["--metrics-listen", "0.0.0.0:9465"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("not a loopback address") && stderr.contains("--metrics-listen-any"), "{stderr}");
}
