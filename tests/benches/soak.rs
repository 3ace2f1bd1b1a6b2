//! The soak (issue 24, docs/performance.md "Soak"): a release broker (SQLite) and a release
//! `keyward-agent` under a steady exchange and run load for `KEYWARD_SOAK_SECS` (600): one client
//! exchanging run tokens at a worker-mode AWS target as fast as answers come, and one submitting
//! plan + apply runs of a trivial stack back to back on the sandboxed agent. Every 10 s it samples
//! both processes' resident memory (`VmRSS`) and counts what was done and what failed.
//!
//! It reports the samples (all resident memory and its anonymous part: the heap, where a leak
//! would show; the rest is the binaries' pages, which grow as code paths are first run), then
//! for each process the growth after a three-minute warm-up and the least-squares slope over
//! that stretch and over its second half (KiB per minute): caches filling to their caps flatten
//! in the second half, a leak keeps its slope however long the soak. Any failed request or run
//! is listed and fails the bench.
//!
//! `cargo build --release --workspace --bins && cargo bench -p keyward-tests --bench soak` (as
//! root, like the agent; `KEYWARD_SOAK_SECS=60` for a short one).

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

/// The warm-up left out of the growth figures: the first Terraform starts, caches and pools
/// filling, and the replay cache's first prunes (tokens live [`TOKEN_LIFETIME`], pruned 30 s
/// past expiry, every 30 s).
const WARM_UP: Duration = Duration::from_secs(180);

fn soak_for() -> Duration {
    Duration::from_secs(std::env::var("KEYWARD_SOAK_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(600))
}

fn now() -> i64 {
    i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()).unwrap()
}

/// A process's resident memory in KiB, from `/proc/PID/status`: all of it (`VmRSS`) and its
/// anonymous part (`RssAnon`: the heap and stacks, where a leak would show; the rest is the
/// binary's and libraries' pages, which grow as new code paths are first run).
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("RssAnon:"))
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

/// How long the exchanged tokens live. Short, so the replay cache's pruning of expired token IDs
/// (every 30 s, once a token is past expiry and the clock-skew leeway) reaches its steady state in
/// the soak's first minutes instead of starting near its end.
const TOKEN_LIFETIME: i64 = 60;

/// Exchanges distinct run tokens one after another until `until`.
async fn exchanges(broker: Arc<Broker>, until: Instant, counts: Arc<Counts>) {
    let signer = forge::broker_signer(&broker.data_dir, TEST_KEK).await;
    let client = keyward_tests::http();
    let mut i = 0u64;
    while Instant::now() < until {
        i += 1;
        let claims = json!({
            "iss": broker.addr, "aud": broker.addr, "sub": "stack:net:phase:plan", "iat": now(), "nbf": now(),
            "exp": now() + TOKEN_LIFETIME, "jti": format!("soak-{i}"), "run_id": format!("run-{i}"), "stack_id": "net",
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

/// Least-squares slope of `samples` (seconds, KiB) in KiB per minute.
fn slope(samples: &[(f64, f64)]) -> f64 {
    let n = samples.len() as f64;
    if samples.len() < 2 {
        return 0.0;
    }
    let (mean_t, mean_k) = (samples.iter().map(|p| p.0).sum::<f64>() / n, samples.iter().map(|p| p.1).sum::<f64>() / n);
    let cov: f64 = samples.iter().map(|(t, k)| (t - mean_t) * (k - mean_k)).sum();
    let var: f64 = samples.iter().map(|(t, _)| (t - mean_t).powi(2)).sum();
    if var > 0.0 { cov / var * 60.0 } else { 0.0 }
}

/// How one memory series moved after the warm-up: its growth (KiB), its slope over all of it
/// and over its second half (KiB per minute). Caches filling to their caps show a second-half
/// slope near zero; a leak keeps the same slope in both halves, however long the soak.
fn growth(samples: &[(f64, u64)]) -> (i64, f64, f64) {
    let kept: Vec<(f64, f64)> =
        samples.iter().filter(|(t, _)| *t >= WARM_UP.as_secs_f64()).map(|&(t, kib)| (t, kib as f64)).collect();
    let (Some(first), Some(last)) = (kept.first(), kept.last()) else { return (0, 0.0, 0.0) };
    (last.1 as i64 - first.1 as i64, slope(&kept), slope(&kept[kept.len() / 2..]))
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
    println!(
        "{:>6} {:>12} {:>12} {:>12} {:>12} {:>10} {:>6}",
        "t (s)", "broker KiB", "(anon)", "agent KiB", "(anon)", "exchanges", "runs"
    );
    while Instant::now() < until {
        let t = started.elapsed().as_secs_f64();
        let (broker_now, agent_now) = (rss_kib(broker.pid()), rss_kib(agent.pid()));
        broker_rss.push((t, broker_now));
        agent_rss.push((t, agent_now));
        println!(
            "{:>6.0} {:>12} {:>12} {:>12} {:>12} {:>10} {:>6}",
            t,
            broker_now.0,
            broker_now.1,
            agent_now.0,
            agent_now.1,
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
    println!(
        "\nafter the warm-up of {} s (growth; least-squares slope over all of it / over its second half):",
        WARM_UP.as_secs()
    );
    for (name, samples) in [("broker", &broker_rss), ("agent", &agent_rss)] {
        for (part, pick) in [("RSS", 0), ("anon", 1)] {
            let series: Vec<(f64, u64)> =
                samples.iter().map(|&(t, kib)| (t, if pick == 0 { kib.0 } else { kib.1 })).collect();
            let (grew, all, late) = growth(&series);
            println!("{name:<7} {part:<5} grew {grew:>+7} KiB, slope {all:+8.1} / {late:+8.1} KiB/min");
        }
    }
    let failures = counts.failures.lock().unwrap();
    assert!(failures.is_empty(), "{} failures, first: {:?}", failures.len(), failures.first());
    println!("no failures");
}
