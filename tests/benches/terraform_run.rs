//! One plan + apply of a trivial stack, end to end: wall time from submit to finished, broken
//! down by phase (DESIGN.md §11 asks for the breakdown, not a target).
//!
//! A release broker (SQLite) and a release `keyward-agent` with its default sandbox (network
//! `none`), the shipped policy library (the stack's `env=dev` label lets the approval policy
//! apply without review), a stack of one `terraform_data` with a `local-exec` in a local git
//! repository, no credential targets. Each run is followed over the API every 10 ms; the agent's
//! own step timings come from its signed log (`keyward: terraform plan took 0.52 s`).
//!
//! Baseline, same run, interleaved: the same Terraform commands as plain processes in a fresh
//! clone (`git clone`, `init`, `plan -out`, `show -json`, `init`, `apply PLAN`), with no broker,
//! no sandbox, no signing. The difference is what Keyward adds around Terraform.
//!
//! `cargo build --release --bins && cargo bench -p keyward-tests --bench terraform_run` (as root,
//! like the agent). `KEYWARD_BENCH_RUNS` sets the number of runs of each (5).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, missing_docs)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use keyward_tests::agent::{Agent, join};
use keyward_tests::broker::{Broker, ConfigExtra, TEST_KEK, write_config};
use keyward_tests::git::GitRepo;
use keyward_tests::{free_addr, workspace_root};
use serde_json::{Value, json};

const CONFIG: &str = "resource \"terraform_data\" \"hello\" {\n  input = \"hello\"\n  provisioner \"local-exec\" {\n    \
                      command = \"echo applied\"\n  }\n}\n";

fn runs() -> usize {
    std::env::var("KEYWARD_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(5).max(1)
}

async fn start(dir: &Path) -> Broker {
    let addr = free_addr();
    let config = dir.join("keyward.toml");
    let data_dir = dir.join("broker");
    let rest = format!(
        "[log]\nlevel = \"warn\"\n[policy]\ndir = \"{}\"\n[agents]\nlisten = \"{}\"\nlease = \"60s\"\n",
        workspace_root().join("policies").display(),
        free_addr(),
    );
    write_config(&config, addr, &data_dir, &ConfigExtra { rest: &rest, ..ConfigExtra::default() });
    Broker::serve(&config, &data_dir, &format!("http://{addr}"), &[("TEST_KEK", TEST_KEK)]).await
}

/// When each milestone of a run was first seen, from submit.
#[derive(Debug, Default)]
struct Milestones(BTreeMap<&'static str, Duration>);

impl Milestones {
    fn see(&mut self, name: &'static str, at: Duration) {
        self.0.entry(name).or_insert(at);
    }

    fn get(&self, name: &str) -> Duration {
        *self.0.get(name).unwrap_or_else(|| panic!("milestone {name} never seen: {:?}", self.0))
    }
}

/// `request` with the admin token; its JSON answer.
async fn read(request: reqwest::RequestBuilder, broker: &Broker) -> Value {
    request.bearer_auth(&broker.admin_token).send().await.unwrap().json().await.unwrap()
}

/// Submits a run and follows it to `finished`, noting when each job was leased and ended.
async fn deploy(broker: &Broker) -> (String, Milestones) {
    let client = keyward_tests::http();
    let started = Instant::now();
    let run: Value =
        read(client.post(format!("{}/v1/runs", broker.addr)).json(&json!({"stack": "bench"})), broker).await;
    let id = run["id"].as_str().unwrap_or_else(|| panic!("no run: {run}")).to_owned();
    let mut seen = Milestones::default();
    seen.see("submitted", started.elapsed());
    loop {
        let run = read(client.get(format!("{}/v1/runs/{id}", broker.addr)), broker).await;
        let at = started.elapsed();
        for job in run["jobs"].as_array().into_iter().flatten() {
            let (phase, state) = (job["phase"].as_str().unwrap_or(""), job["state"].as_str().unwrap_or(""));
            match (phase, state) {
                ("plan", "leased") => seen.see("plan leased", at),
                ("plan", "succeeded") => {
                    seen.see("plan leased", at);
                    seen.see("plan ended", at);
                }
                ("apply", "queued") => seen.see("apply queued", at),
                ("apply", "leased") => seen.see("apply leased", at),
                ("apply", "succeeded") => {
                    seen.see("apply leased", at);
                    seen.see("apply ended", at);
                }
                _ => {}
            }
        }
        match run["state"].as_str() {
            Some("finished") => {
                seen.see("finished", at);
                return (id, seen);
            }
            Some("failed" | "canceled" | "discarded" | "interrupted") => panic!("the run ended badly: {run}"),
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// The agent's own timings in the run's log: `keyward: <step> took <s> s`, in order.
fn step_timings(broker: &Broker, id: &str) -> Vec<(String, f64)> {
    let out = broker.cli(&["run", "logs", id]);
    assert!(out.success, "{}", out.stderr);
    let mut steps = Vec::new();
    let mut phase = "plan";
    for line in out.stdout.lines() {
        // `run logs` heads each job's output with `── PHASE (job ID) ──`.
        if line.starts_with("── apply") {
            phase = "apply";
        }
        let Some(rest) = line.split("keyward: ").nth(1) else { continue };
        if let Some((step, secs)) = rest.split_once(" took ")
            && let Some(secs) = secs.strip_suffix(" s").and_then(|s| s.parse::<f64>().ok())
        {
            steps.push((format!("{phase}: {step}"), secs));
        }
    }
    steps
}

/// The same Terraform work as plain processes: returns the wall time of each step.
fn plain(repo_url: &str, dir: &Path) -> Vec<(String, f64)> {
    let work = dir.join("plain");
    let _ = std::fs::remove_dir_all(&work);
    let mut steps = Vec::new();
    let mut step = |name: &str, program: &str, args: &[&str], cwd: &Path| {
        let started = Instant::now();
        let out = Command::new(program)
            .args(args)
            .current_dir(cwd)
            .env("TF_IN_AUTOMATION", "1")
            .env("CHECKPOINT_DISABLE", "1")
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        steps.push((name.to_owned(), started.elapsed().as_secs_f64()));
    };
    step("clone", "git", &["clone", "-q", repo_url, work.to_str().unwrap()], dir);
    step("plan: terraform init", "terraform", &["init", "-input=false", "-no-color"], &work);
    step("plan: terraform plan", "terraform", &["plan", "-input=false", "-no-color", "-out=p.tfplan"], &work);
    step("plan: terraform show", "terraform", &["show", "-json", "-no-color", "p.tfplan"], &work);
    step("apply: terraform init", "terraform", &["init", "-input=false", "-no-color"], &work);
    step(
        "apply: terraform apply",
        "terraform",
        &["apply", "-input=false", "-no-color", "-auto-approve", "p.tfplan"],
        &work,
    );
    let _ = std::fs::remove_dir_all(&work);
    steps
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path()).await;
    let repo = GitRepo::init(&dir.path().join("repo"));
    repo.commit("main.tf", CONFIG);
    let created = broker.cli(&["stack", "create", "bench", "--repository", &repo.url(), "--label", "env=dev"]);
    assert!(created.success, "{}", created.stderr);
    let token = broker.cli(&["pool", "join-token", "default", "--json"]);
    let token: Value = serde_json::from_str(&token.stdout).unwrap();
    let agent_dir = dir.path().join("agent");
    let (ok, agent_id, stderr) = join(&broker.addr, token["token"].as_str().unwrap(), &agent_dir);
    assert!(ok, "{stderr}");
    let agent = Agent::start(&agent_dir, &agent_id, &[]);

    // Warm-up: one of each (the first Terraform start and the first sandbox are slower).
    let (id, _) = deploy(&broker).await;
    assert!(!step_timings(&broker, &id).is_empty(), "the agent logs no step timings");
    plain(&repo.url(), dir.path());

    let n = runs();
    let mut totals: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut add = |name: String, secs: f64| totals.entry(name).or_default().push(secs);
    for _ in 0..n {
        let (id, seen) = deploy(&broker).await;
        let secs = |from: &str, to: &str| seen.get(to).saturating_sub(seen.get(from)).as_secs_f64();
        add("1 submit answered".into(), seen.get("submitted").as_secs_f64());
        add("2 queued -> plan leased".into(), secs("submitted", "plan leased"));
        add("3 plan job (agent)".into(), secs("plan leased", "plan ended"));
        add("4 plan ended -> apply leased".into(), secs("plan ended", "apply leased"));
        add("5 apply job (agent)".into(), secs("apply leased", "apply ended"));
        add("6 apply ended -> run finished".into(), secs("apply ended", "finished"));
        add("= submit -> finished".into(), seen.get("finished").as_secs_f64());
        for (step, secs) in step_timings(&broker, &id) {
            add(format!("  keyward {step}"), secs);
        }
        let plain_steps = plain(&repo.url(), dir.path());
        add("  plain total (baseline)".into(), plain_steps.iter().map(|(_, s)| s).sum());
        for (step, secs) in plain_steps {
            add(format!("  plain {step}"), secs);
        }
    }
    drop(agent);

    println!("\nplan + apply of one terraform_data with a local-exec: {n} runs, medians (s)\n");
    for (name, values) in &mut totals {
        println!("{name:<44} {:>8.3}", median(values));
    }
    let keyward = median(totals.get_mut("= submit -> finished").unwrap());
    let baseline = median(totals.get_mut("  plain total (baseline)").unwrap());
    println!("\nsubmit -> finished / plain Terraform: {:.2}x ({:+.3} s)\n", keyward / baseline, keyward - baseline);
}
