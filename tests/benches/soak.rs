//! The soak (issue 24, docs/performance.md "Soak"): a release broker (SQLite) and a release
//! `keyward-agent` under a steady exchange and run load for `KEYWARD_SOAK_SECS` (600): one client
//! exchanging run tokens at a worker-mode AWS target as fast as answers come, and one submitting
//! plan + apply runs of a trivial stack back to back on the sandboxed agent. Every 10 s it samples
//! both processes' resident memory (`VmRSS`) and counts what was done and what failed.
//!
//! It reports the samples, then each process's RSS growth after a one-minute warm-up and the
//! least-squares slope over that stretch (KiB per minute): flat memory is a slope near zero, a
//! leak a slope that stays positive however long the soak. Any failed request or run is listed
//! and fails the bench.
//!
//! `cargo build --release --bins && cargo bench -p keyward-tests --bench soak` (as root, like the
//! agent; `KEYWARD_SOAK_SECS=60` for a short one).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, missing_docs)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use keyward_tests::agent::{Agent, join};
use keyward_tests::broker::{Broker, ConfigExtra, TEST_KEK, write_config};
use keyward_tests::git::GitRepo;
use keyward_tests::{forge, free_addr, workspace_root};
use serde_json::{Value, json};

const CONFIG: &str = "resource \"terraform_data\" \"hello\" {\n  input = \"hello\"\n}\n";

/// How often memory is sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// The warm-up left out of the growth figures (first Terraform starts, caches, pools).
const WARM_UP: Duration = Duration::from_secs(60);

fn soak_for() -> Duration {
    Duration::from_secs(std::env::var("KEYWARD_SOAK_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(600))
}

fn now() -> i64 {
    i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()).unwrap()
}

/// A process's resident set in KiB, from `/proc/PID/status`.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// What the load did.
#[derive(Default)]
struct Counts {
    exchanges: AtomicU64,
    runs: AtomicU64,
    failures: std::sync::Mutex<Vec<String>>,
}

impl Counts {
    fn fail(&self, what: String) {
        self.failures.lock().unwrap().push(what);
    }
}

async fn start(dir: &Path) -> Broker {
    let addr = free_addr();
    let config = dir.join("keyward.toml");
    let data_dir = dir.join("broker");
    let rest = format!(
        "[log]\nlevel = \"warn\"\n[policy]\ndir = \"{}\"\n[agents]\nlisten = \"{}\"\nlease = \"60s\"\n\
         [tokens]\nallowed_audiences = [\"sts.amazonaws.com\", \"vault\"]\n\
         [[targets]]\nname = \"dev\"\ntype = \"aws\"\naccess = \"read\"\nrole_arn = \"arn:aws:iam::123456789012:role/dev\"\n\
         mode = \"worker\"\nduration = \"1h\"\n",
        workspace_root().join("policies").display(),
        free_addr(),
    );
    write_config(&config, addr, &data_dir, &ConfigExtra { rest: &rest, ..ConfigExtra::default() });
    Broker::serve(&config, &data_dir, &format!("http://{addr}"), &[("TEST_KEK", TEST_KEK)]).await
}

/// Exchanges distinct run tokens one after another until `until`.
async fn exchanges(broker: Arc<Broker>, until: Instant, counts: Arc<Counts>) {
    let signer = forge::broker_signer(&broker.data_dir, TEST_KEK).await;
    let client = keyward_tests::http();
    let mut i = 0u64;
    while Instant::now() < until {
        i += 1;
        let claims = json!({
            "iss": broker.addr, "aud": broker.addr, "sub": "stack:net:phase:plan", "iat": now(), "nbf": now(),
            "exp": now() + 600, "jti": format!("soak-{i}"), "run_id": format!("run-{i}"), "stack_id": "net",
            "stack": "net", "phase": "plan", "scope": "read", "ref": "refs/heads/main", "commit_sha": "0123abc",
        });
        let token = signer.sign_compact(claims.to_string().as_bytes()).unwrap();
        let form = [
            ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
            ("subject_token", token.as_str()),
            ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
            ("resource", "aws:dev"),
        ];
        match client.post(format!("{}/v1/token", broker.addr)).form(&form).send().await {
            Ok(answer) if answer.status().is_success() => {
                counts.exchanges.fetch_add(1, Ordering::Relaxed);
            }
            Ok(answer) => counts.fail(format!("exchange {i}: HTTP {}", answer.status())),
            Err(error) => counts.fail(format!("exchange {i}: {error}")),
        }
    }
}

/// Submits runs one after another, each followed to its end, until `until`.
async fn runs(broker: Arc<Broker>, until: Instant, counts: Arc<Counts>) {
    let client = keyward_tests::http();
    let get = |request: reqwest::RequestBuilder| {
        let token = broker.admin_token.clone();
        async move { request.bearer_auth(token).send().await.ok()?.json::<Value>().await.ok() }
    };
    while Instant::now() < until {
        let Some(run) = get(client.post(format!("{}/v1/runs", broker.addr)).json(&json!({"stack": "soak"}))).await
        else {
            counts.fail("submit: no answer".into());
            continue;
        };
        let Some(id) = run["id"].as_str().map(str::to_owned) else {
            counts.fail(format!("submit refused: {run}"));
            continue;
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let state = get(client.get(format!("{}/v1/runs/{id}", broker.addr))).await.map(|r| r["state"].clone());
            match state.as_ref().and_then(Value::as_str) {
                Some("finished") => {
                    counts.runs.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Some(s @ ("failed" | "canceled" | "discarded" | "interrupted")) => {
                    counts.fail(format!("run {id}: {s}"));
                    break;
                }
                _ if Instant::now() > deadline => {
                    counts.fail(format!("run {id}: not finished in 120 s"));
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

/// Growth after the warm-up (KiB) and the least-squares slope over it (KiB per minute).
fn growth(samples: &[(f64, u64)]) -> (i64, f64) {
    let kept: Vec<(f64, f64)> =
        samples.iter().filter(|(t, _)| *t >= WARM_UP.as_secs_f64()).map(|&(t, kib)| (t / 60.0, kib as f64)).collect();
    if kept.len() < 2 {
        return (0, 0.0);
    }
    let n = kept.len() as f64;
    let (mean_t, mean_k) = (kept.iter().map(|p| p.0).sum::<f64>() / n, kept.iter().map(|p| p.1).sum::<f64>() / n);
    let cov: f64 = kept.iter().map(|(t, k)| (t - mean_t) * (k - mean_k)).sum();
    let var: f64 = kept.iter().map(|(t, _)| (t - mean_t).powi(2)).sum();
    let first = kept[0].1 as i64;
    let last = kept[kept.len() - 1].1 as i64;
    (last - first, if var > 0.0 { cov / var } else { 0.0 })
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Arc::new(start(dir.path()).await);
    let repo = GitRepo::init(&dir.path().join("repo"));
    repo.commit("main.tf", CONFIG);
    let created = broker.cli(&["stack", "create", "soak", "--repository", &repo.url(), "--label", "env=dev"]);
    assert!(created.success, "{}", created.stderr);
    let pool = broker.cli(&["pool", "join-token", "default", "--json"]);
    assert!(pool.success, "{}", pool.stderr);
    let token: Value = serde_json::from_str(&pool.stdout).unwrap();
    let agent_dir = dir.path().join("agent");
    let (ok, agent_id, stderr) = join(&broker.addr, token["token"].as_str().unwrap(), &agent_dir);
    assert!(ok, "{stderr}");
    let agent = Agent::start(&agent_dir, &agent_id, &[]);

    let length = soak_for();
    println!("\nsoak: exchanges and runs for {} s (memory every {} s)\n", length.as_secs(), SAMPLE_EVERY.as_secs());
    let started = Instant::now();
    let until = started + length;
    let counts = Arc::new(Counts::default());
    let load = [
        tokio::spawn(exchanges(Arc::clone(&broker), until, Arc::clone(&counts))),
        tokio::spawn(runs(Arc::clone(&broker), until, Arc::clone(&counts))),
    ];
    let (mut broker_rss, mut agent_rss) = (Vec::new(), Vec::new());
    println!("{:>6} {:>12} {:>12} {:>10} {:>6}", "t (s)", "broker KiB", "agent KiB", "exchanges", "runs");
    while Instant::now() < until {
        let t = started.elapsed().as_secs_f64();
        broker_rss.push((t, rss_kib(broker.pid())));
        agent_rss.push((t, rss_kib(agent.pid())));
        println!(
            "{:>6.0} {:>12} {:>12} {:>10} {:>6}",
            t,
            broker_rss.last().unwrap().1,
            agent_rss.last().unwrap().1,
            counts.exchanges.load(Ordering::Relaxed),
            counts.runs.load(Ordering::Relaxed)
        );
        tokio::time::sleep(SAMPLE_EVERY.min(until.saturating_duration_since(Instant::now()))).await;
    }
    for task in load {
        task.await.unwrap();
    }
    let (exchanges, runs) = (counts.exchanges.load(Ordering::Relaxed), counts.runs.load(Ordering::Relaxed));
    let secs = started.elapsed().as_secs_f64();
    println!(
        "\n{exchanges} exchanges ({:.0}/s), {runs} runs ({:.1}/min) in {secs:.0} s",
        exchanges as f64 / secs,
        runs as f64 * 60.0 / secs
    );
    for (name, samples) in [("broker", &broker_rss), ("agent", &agent_rss)] {
        let (grew, slope) = growth(samples);
        println!("{name:<7} RSS after the first minute: grew {grew} KiB, slope {slope:+.1} KiB/min");
    }
    let failures = counts.failures.lock().unwrap();
    assert!(failures.is_empty(), "{} failures, first: {:?}", failures.len(), failures.first());
    println!("no failures");
}
