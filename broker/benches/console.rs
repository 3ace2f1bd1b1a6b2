//! The console's runs list over a store holding 10,000 runs: reading the newest page from
//! SQLite (`Runs::runs`, what `GET /v1/runs` and `GET /ui/runs` both do) and rendering it as the
//! page (`console::runs::list`).
//!
//! `cargo bench -p keyward-broker --bench console` (`KEYWARD_BENCH_RUNS=N` to change the count).
//! Baseline in the same run: serialising the same page as the API's JSON answer, so the figure
//! says what rendering HTML costs beside what the API already pays.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, missing_docs)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyward_broker::audit::AuditLog;
use keyward_broker::clock::ManualClock;
use keyward_broker::kek::Kek;
use keyward_broker::runs::Runs;
use keyward_broker::store::runs::{NewStack, insert_run, insert_stack};
use keyward_broker::store::{DatabaseLocation, RunFilter, RunRow, StackRow, Store};

/// The page size the console shows.
const PAGE: i64 = 200;

fn main() {
    let n: usize = std::env::var("KEYWARD_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(bench(n));
}

async fn bench(n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&DatabaseLocation::Sqlite(dir.path().join("keyward.db"))).await.unwrap();
    let stack = NewStack {
        name: "network".into(),
        repository: "https://git.example.com/platform/infra.git".into(),
        path: "stacks/network".into(),
        branch: "main".into(),
        pool: "default".into(),
        plan_targets: "[]".into(),
        apply_targets: "[]".into(),
        labels: "{}".into(),
        policies: "[]".into(),
        managed_state: true,
        hooks: "{}".into(),
        scanners: "[]".into(),
        tool: "terraform".into(),
        triggers: "[]".into(),
        space: "root".into(),
    };
    assert!(store.apply_writes(&[insert_stack(&StackRow::created(stack, 1, "admin".into()))]).await.unwrap());
    let started = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let writes: Vec<_> = chunk.iter().map(|&i| insert_run(&run(i))).collect();
        assert!(store.apply_writes(&writes).await.unwrap());
    }
    println!("\nconsole runs list over {n} runs (stored in {:.1?})\n", started.elapsed());
    let clock = Arc::new(ManualClock::at(1_800_000_000));
    let runs = Runs::new(store.clone(), AuditLog::start(store.clone()), None, &[], clock, Arc::new(Kek::generate()));

    let page = runs.runs(None, PAGE).await.unwrap();
    assert_eq!(page.len(), usize::try_from(PAGE).unwrap().min(n));
    let query = time(|| async { black_box(runs.runs(None, PAGE).await.unwrap()) }).await;
    let json = time_sync(|| black_box(serde_json::to_vec(&serde_json::json!({ "runs": page })).unwrap()));
    let html =
        time_sync(|| black_box(keyward_broker::console::runs::list(&page, &Default::default(), "admin").into_string()));
    let size = keyward_broker::console::runs::list(&page, &Default::default(), "admin").into_string().len();
    println!("{:<44} {:>10}", "step (newest 200 of the runs)", "per page");
    println!("{:<44} {:>10.2?}", "read from SQLite (Runs::runs)", query);
    println!("{:<44} {:>10.2?}", "baseline: the API's JSON answer", json);
    println!(
        "{:<44} {:>10.2?}  ({:.1}x the JSON; {} KB)",
        "render the HTML page",
        html,
        ratio(html, json),
        size / 1024
    );
    println!("{:<44} {:>10.2?}", "read + render (the page's server time)", query + html);

    // The list's filters run in the database: by state (indexed) and by pull request (not).
    let planned = RunFilter { state: Some("planned".into()), ..RunFilter::default() };
    let by_state = time(|| async { black_box(runs.runs_matching(&planned, PAGE).await.unwrap()) }).await;
    println!("{:<44} {:>10.2?}", "read, filtered by state (?state=planned)", by_state);
    let pr = RunFilter { pull_request: Some(7), ..RunFilter::default() };
    let by_pr = time(|| async { black_box(runs.runs_matching(&pr, PAGE).await.unwrap()) }).await;
    println!("{:<44} {:>10.2?}", "read, filtered by PR (?pull_request=7)", by_pr);
}

/// A run of the bench's stack, `i` seconds after the first.
fn run(i: usize) -> RunRow {
    let at = 1_800_000_000 + i64::try_from(i).unwrap();
    RunRow {
        id: format!("01a2071d-177d-7469-bc76-{i:012}"),
        stack: "network".into(),
        state: ["finished", "failed", "planned", "applying"][i % 4].into(),
        version: 3,
        commit_sha: format!("{:040x}", i * 7919),
        git_ref: Some("refs/heads/main".into()),
        pull_request: Some(i64::try_from(i % 500).unwrap() + 1),
        ticket: Some(format!("CHG-{i}")),
        pull_request_source: i.is_multiple_of(2).then(|| "github".to_owned()),
        triggered_by: "github:octocat".into(),
        detail: None,
        created_at: at,
        updated_at: at,
        kind: "deploy".into(),
        drift: None,
    }
}

/// The median of 21 timings of `f`.
async fn time<F, Fut, T>(mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let mut samples = Vec::new();
    for _ in 0..21 {
        let started = Instant::now();
        f().await;
        samples.push(started.elapsed());
    }
    samples.sort();
    samples[samples.len() / 2]
}

/// The median of 21 timings of `f`.
fn time_sync<T>(mut f: impl FnMut() -> T) -> Duration {
    let mut samples = Vec::new();
    for _ in 0..21 {
        let started = Instant::now();
        f();
        samples.push(started.elapsed());
    }
    samples.sort();
    samples[samples.len() / 2]
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}
