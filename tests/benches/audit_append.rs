//! Durable audit appends: group commit against one commit (one sync) per entry, measured in the
//! same run, on SQLite (`synchronous = FULL`) and on PostgreSQL (a throwaway cluster with
//! production durability: `fsync`, `synchronous_commit = on`).
//!
//! `cargo bench -p keyward-tests --bench audit_append` (PostgreSQL needs the test peers:
//! `scripts/install-test-peers`). Each entry is a realistic `credentials.issued` entry with the
//! full context chain (~900 bytes of canonical JSON).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::Instant;

use keyward_broker::audit::{Append, AuditEvent, AuditLog, Context, Kind};
use keyward_broker::store::{DatabaseLocation, Store};
use keyward_tests::postgres::PgCluster;

/// Concurrent appenders in the group-commit run (a broker under load has this many requests in
/// flight).
const CONCURRENCY: usize = 256;

fn count(var: &str, default: usize) -> usize {
    std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn event(i: usize) -> AuditEvent {
    let context = Context {
        run_id: Some(format!("run-01JD5Z8Q4M6V7X3K2B9N{i:06}")),
        stack_id: Some("network".into()),
        phase: Some("apply".into()),
        repository: Some("https://git.example.com/platform/infra.git".into()),
        commit_sha: Some("0123456789abcdef0123456789abcdef01234567".into()),
        git_ref: Some("refs/heads/main".into()),
        pull_request: Some(4711),
        ticket: Some("CHG-7".into()),
        triggered_by: Some("alice".into()),
        approved_by: vec!["bob".into(), "carol".into()],
        asserted_by: None,
        actor: Some("exchange:https://keyward.example.com".into()),
        subject_issuer: Some("https://keyward.example.com".into()),
        subject_jti: Some(format!("01a2071d-177e-7b78-b2dc-{i:012}")),
        target: Some("aws:network-apply".into()),
        request_id: Some(format!("01a2071d-177d-7469-bc76-{i:012}")),
        remote_addr: Some("10.0.3.17:53122".into()),
    };
    AuditEvent::new(Kind::CredentialsIssued, 1_795_400_000, context)
        .with("role_arn", "arn:aws:iam::123456789012:role/network-apply")
        .with("role_session_name", format!("run-{i}"))
        .with("access_key_id", format!("ASIA{i:016}"))
        .with("credentials_expire_at", 1_795_403_600)
        .with("mode", "broker")
        .with_ref("akid", &format!("ASIA{i:016}"))
}

/// Appends `n` entries, `concurrency` at a time; returns entries per second.
async fn run(log: &AuditLog, n: usize, concurrency: usize, offset: usize) -> f64 {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let per_task = n / concurrency;
    for t in 0..concurrency {
        let log = log.clone();
        tasks.spawn(async move {
            for i in 0..per_task {
                log.append(Append::events(vec![event(offset + t * per_task + i)])).await.unwrap();
            }
        });
    }
    tasks.join_all().await;
    (per_task * concurrency) as f64 / started.elapsed().as_secs_f64()
}

async fn backend(name: &str, location: DatabaseLocation) {
    let store = Store::open(&location).await.unwrap();
    let log = AuditLog::start(store.clone());
    let single = count("KEYWARD_BENCH_SINGLE", 500);
    let grouped = count("KEYWARD_BENCH_GROUPED", 51_200);
    let one_by_one = run(&log, single, 1, 0).await;
    let (commits, entries) = (log.stats().commits(), log.stats().entries());
    let group = run(&log, grouped, CONCURRENCY, single).await;
    let batch = (log.stats().entries() - entries) as f64 / (log.stats().commits() - commits) as f64;
    println!("{name:<10} one commit per entry: {one_by_one:>8.0} entries/s  ({single} entries)");
    println!(
        "{name:<10} group commit ({CONCURRENCY} appenders): {group:>8.0} entries/s  ({grouped} entries, {batch:.0} per commit)"
    );
    println!("{name:<10} ratio: {:.1}x\n", group / one_by_one);
    // The tree must still be right after all that.
    let size = store.audit_size().await.unwrap();
    assert_eq!(size as usize, single + grouped - grouped % CONCURRENCY);
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    println!("\ndurable audit appends, 2 cores\n");
    // `KEYWARD_BENCH_BACKENDS=sqlite` (or `postgres`) runs one of them, e.g. to profile it.
    let only = std::env::var("KEYWARD_BENCH_BACKENDS").unwrap_or_default();
    let dir = tempfile::tempdir().unwrap();
    if only.is_empty() || only.contains("sqlite") {
        backend("sqlite", DatabaseLocation::Sqlite(dir.path().join("audit.db"))).await;
    }
    if only.is_empty() || only.contains("postgres") {
        let cluster = PgCluster::start_durable();
        backend("postgres", DatabaseLocation::Postgres(cluster.database("audit_bench"))).await;
    }
}
