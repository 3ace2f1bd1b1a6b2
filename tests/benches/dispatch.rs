//! The job queue and the agent endpoint under load, against real broker processes (release
//! build) over real mTLS, with in-process agents that speak the protocol directly:
//!
//! 1. dispatch latency with 100 connected agents: submit a run, time until an agent holds its
//!    plan job; baseline: the submit round trip alone, in the same run;
//! 2. jobs/s through the queue: a backlog of runs drained by 100 agents that report each job the
//!    moment they get it (plan, then the apply the approval policy queues); baseline: the submit
//!    rate of the same runs, in the same run; on SQLite and on PostgreSQL (durable settings);
//! 3. broker memory with 1,000 idle connected agents; baseline: the same broker before they
//!    connect;
//! 4. the real `keyward-agent` idle and connected: resident memory.
//!
//! `cargo build --release --bins && cargo bench -p keyward-tests --bench dispatch` (PostgreSQL
//! binaries as for the tests). `KEYWARD_BENCH_SAMPLES`, `KEYWARD_BENCH_RUNS` and
//! `KEYWARD_BENCH_IDLE_AGENTS` change the sizes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, missing_docs)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyward_proto::agent_v1::{JobAssignment, JobResult, agent_message};
use keyward_tests::agent::{Agent, WorkSession, bootstrap, enroll_in_process, join};
use keyward_tests::broker::{Broker, ConfigExtra, TEST_KEK, write_config};
use keyward_tests::git::GitRepo;
use keyward_tests::postgres::PgCluster;
use keyward_tests::{free_addr, memory_of, workspace_root};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tonic::transport::Identity;

const AGENTS: usize = 100;
const SUBMITTERS: usize = 16;

fn size(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

async fn start(dir: &Path, name: &str, storage: &str, envs: &[(&str, &str)]) -> Broker {
    let addr = free_addr();
    let config = dir.join(format!("{name}.toml"));
    let data_dir = dir.join(name);
    let rest = format!(
        "[log]\nlevel = \"warn\"\n[policy]\ndir = \"{}\"\n[agents]\nlisten = \"{}\"\nlease = \"60s\"\n",
        workspace_root().join("policies").display(),
        free_addr(),
    );
    write_config(&config, addr, &data_dir, &ConfigExtra { storage, rest: &rest, ..ConfigExtra::default() });
    let mut all = vec![("TEST_KEK", TEST_KEK)];
    all.extend_from_slice(envs);
    Broker::serve(&config, &data_dir, &format!("http://{addr}"), &all).await
}

async fn post(broker: &Broker, path: &str, body: Value) -> Value {
    let response = keyward_tests::http()
        .post(format!("{}{path}", broker.addr))
        .bearer_auth(&broker.admin_token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "POST {path}: {status} {body}");
    body
}

/// Pool `pool` with stack `pool` (env=dev: plans apply without a review).
async fn pool_and_stack(broker: &Broker, repo: &GitRepo, pool: &str) {
    post(broker, "/v1/pools", json!({ "name": pool })).await;
    let stack = json!({ "name": pool, "repository": repo.url(), "pool": pool, "labels": { "env": "dev" } });
    post(broker, "/v1/stacks", stack).await;
}

/// Enrolls `count` in-process agents in `pool`, `SUBMITTERS` at a time.
async fn enroll(broker: &Broker, pool: &str, count: usize) -> Vec<Identity> {
    let (endpoint, ca) = bootstrap(&broker.addr).await;
    let mut identities = Vec::with_capacity(count);
    for chunk in (0..count).collect::<Vec<_>>().chunks(SUBMITTERS) {
        let mut enrolling = Vec::new();
        for _ in chunk {
            let token = post(broker, &format!("/v1/pools/{pool}/join-tokens"), json!({ "ttl_seconds": 600 })).await;
            let token = token["token"].as_str().unwrap().to_owned();
            let (endpoint, ca) = (endpoint.clone(), ca.clone());
            enrolling.push(tokio::spawn(async move { enroll_in_process(&endpoint, &ca, &token).await.1 }));
        }
        for task in enrolling {
            identities.push(task.await.unwrap());
        }
    }
    identities
}

/// Connects every identity; each session reports every job it gets at once (`success`) and
/// sends `(time received, assignment)` to the returned channel.
async fn connect(
    broker: &Broker,
    identities: Vec<Identity>,
    success: bool,
) -> mpsc::UnboundedReceiver<(Instant, JobAssignment)> {
    let (endpoint, ca) = bootstrap(&broker.addr).await;
    let (tx, rx) = mpsc::unbounded_channel();
    for identity in identities {
        let mut session = WorkSession::open(&endpoint, &ca, identity, 1).await.unwrap();
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(job) = session.next_assignment(Duration::from_secs(3600)).await {
                let received = Instant::now();
                let result = JobResult {
                    job_id: job.job_id.clone(),
                    fencing_token: job.fencing_token,
                    success,
                    error: if success { String::new() } else { "benchmark: done".to_owned() },
                    ..JobResult::default()
                };
                if tx.send((received, job)).is_err() {
                    return;
                }
                if session.send(agent_message::Kind::Result(result)).await.is_err() {
                    return;
                }
            }
        });
    }
    rx
}

async fn submit(broker: &Broker, stack: &str) -> String {
    post(broker, "/v1/runs", json!({ "stack": stack })).await["id"].as_str().unwrap().to_owned()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn summary(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let (p50, p99) = (percentile(&samples, 0.50), percentile(&samples, 0.99));
    println!("{name:<58} p50 {p50:>9.2?}  p99 {p99:>9.2?}  max {:>9.2?}", samples[samples.len() - 1]);
}

/// Submits runs one at a time, first to a pool with no agents (the baseline: the submit round
/// trip), then to a pool with `AGENTS` connected agents (until one holds the plan job).
async fn latency(broker: &Broker, repo: &GitRepo) {
    let samples = size("KEYWARD_BENCH_SAMPLES", 300);
    pool_and_stack(broker, repo, "empty").await;
    pool_and_stack(broker, repo, "fast").await;
    let identities = enroll(broker, "fast", AGENTS).await;
    let mut assignments = connect(broker, identities, false).await;

    let mut round_trips = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        submit(broker, "empty").await;
        round_trips.push(started.elapsed());
    }
    let mut to_assignment = Vec::with_capacity(samples);
    let mut after_response = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        let run_id = submit(broker, "fast").await;
        let answered = Instant::now();
        let received = loop {
            let (received, job) =
                tokio::time::timeout(Duration::from_secs(30), assignments.recv()).await.unwrap().unwrap();
            if job.run_id == run_id {
                break received;
            }
        };
        to_assignment.push(received - started);
        after_response.push(received.saturating_duration_since(answered));
    }
    println!("\nDispatch latency, {AGENTS} connected agents, {samples} runs submitted one at a time\n");
    summary("baseline: submit round trip (pool without agents)", round_trips);
    summary("submit -> an agent holds the plan job", to_assignment);
    summary("queued (submit answered) -> an agent holds the plan job", after_response);
    println!();
}

/// A backlog of `runs` runs, drained by `AGENTS` agents: jobs/s, against the submit rate.
async fn throughput(broker: &Broker, repo: &GitRepo, backend: &str) {
    let runs = size("KEYWARD_BENCH_RUNS", 1000);
    pool_and_stack(broker, repo, "bulk").await;
    let identities = enroll(broker, "bulk", AGENTS).await;

    let queue = Arc::new(tokio::sync::Mutex::new(runs));
    let started = Instant::now();
    let mut submitters = Vec::new();
    for _ in 0..SUBMITTERS {
        let (queue, broker_addr, admin) = (Arc::clone(&queue), broker.addr.clone(), broker.admin_token.clone());
        submitters.push(tokio::spawn(async move {
            let client = keyward_tests::http();
            loop {
                {
                    let mut left = queue.lock().await;
                    if *left == 0 {
                        return;
                    }
                    *left -= 1;
                }
                let response = client
                    .post(format!("{broker_addr}/v1/runs"))
                    .bearer_auth(&admin)
                    .json(&json!({ "stack": "bulk" }))
                    .send()
                    .await
                    .unwrap();
                assert!(response.status().is_success(), "{}", response.status());
            }
        }));
    }
    for submitter in submitters {
        submitter.await.unwrap();
    }
    let submitting = started.elapsed();

    let jobs = runs * 2;
    let mut assignments = connect(broker, identities, true).await;
    let mut seen = std::collections::HashSet::with_capacity(jobs);
    let (first, job) = assignments.recv().await.unwrap();
    let mut last = first;
    seen.insert(job.job_id);
    while seen.len() < jobs {
        let (received, job) = tokio::time::timeout(Duration::from_secs(60), assignments.recv()).await.unwrap().unwrap();
        assert!(seen.insert(job.job_id), "a job was assigned twice");
        last = received;
    }
    let draining = last - first;
    let submit_rate = runs as f64 / submitting.as_secs_f64();
    let job_rate = (jobs - 1) as f64 / draining.as_secs_f64();
    println!("Queue throughput on {backend}: {runs} runs, {jobs} jobs (plan + apply), {AGENTS} agents\n");
    println!(
        "{:<58} {submit_rate:>8.0}/s ({runs} in {submitting:.2?}, {SUBMITTERS} clients)",
        "baseline: runs submitted"
    );
    println!("{:<58} {job_rate:>8.0}/s ({jobs} in {draining:.2?})", "jobs leased, delivered and reported");
    println!("{:<58} {:>8.2}x\n", "ratio jobs/s : submits/s", job_rate / submit_rate);
}

/// Broker memory before and after `count` agents hold idle work streams.
async fn idle_memory(broker: &Broker) {
    let count = size("KEYWARD_BENCH_IDLE_AGENTS", 1000);
    post(broker, "/v1/pools", json!({ "name": "idle" })).await;
    let identities = enroll(broker, "idle", count).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (before, threads_before) = memory_of(broker.pid());
    let (endpoint, ca) = bootstrap(&broker.addr).await;
    let mut sessions = Vec::with_capacity(count);
    for identity in identities {
        sessions.push(WorkSession::open(&endpoint, &ca, identity, 1).await.unwrap());
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (after, threads_after) = memory_of(broker.pid());
    let connected = broker_agents_connected(broker).await;
    println!("Broker memory, {count} idle agents on open work streams ({connected} seen by the broker)\n");
    println!(
        "{:<58} {:>8.1} MiB ({threads_before} threads)",
        "baseline: broker RSS, agents enrolled, none connected",
        mib(before)
    );
    println!("{:<58} {:>8.1} MiB ({threads_after} threads)", "broker RSS, all connected", mib(after));
    println!(
        "{:<58} {:>8.1} KiB\n",
        "per connected agent",
        after.saturating_sub(before) as f64 / 1024.0 / count as f64
    );
    drop(sessions);
}

async fn broker_agents_connected(broker: &Broker) -> usize {
    let response = keyward_tests::http()
        .get(format!("{}/v1/agents?pool=idle", broker.addr))
        .bearer_auth(&broker.admin_token)
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    body["agents"].as_array().map_or(0, |agents| agents.iter().filter(|a| a["connected"] == true).count())
}

/// The real agent binary, enrolled, connected and idle.
async fn agent_memory(broker: &Broker, dir: &Path) {
    post(broker, "/v1/pools", json!({ "name": "solo" })).await;
    let token = post(broker, "/v1/pools/solo/join-tokens", json!({ "ttl_seconds": 600 })).await;
    let data_dir = dir.join("agent");
    let (ok, id, stderr) = join(&broker.addr, token["token"].as_str().unwrap(), &data_dir);
    assert!(ok, "{stderr}");
    let agent = Agent::run(&data_dir, &id, "true");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !agent.log_text().contains("connected") {
        assert!(Instant::now() < deadline, "agent did not connect: {}", agent.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (rss, threads) = memory_of(agent.pid());
    println!("Agent (release build), connected and idle\n");
    println!("{:<58} {:>8.1} MiB ({threads} threads; goal <= 15 MB)\n", "keyward-agent RSS", mib(rss));
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1024.0 / 1024.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::init(&dir.path().join("infra"));

    let sqlite = start(dir.path(), "sqlite", "", &[]).await;
    println!("\nAgent endpoint and job queue, release broker, real mTLS, 2 cores");
    latency(&sqlite, &repo).await;
    throughput(&sqlite, &repo, "SQLite").await;
    agent_memory(&sqlite, dir.path()).await;
    drop(sqlite);

    let cluster = PgCluster::start_durable();
    let url = cluster.database("keyward_bench");
    let postgres =
        start(dir.path(), "postgres", "database_url_env = \"KW_DATABASE_URL\"", &[("KW_DATABASE_URL", &url)]).await;
    throughput(&postgres, &repo, "PostgreSQL").await;
    drop(postgres);

    let memory = start(dir.path(), "memory", "", &[]).await;
    idle_memory(&memory).await;
}
