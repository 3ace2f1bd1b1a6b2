//! Durable audit appends: group commit against one commit (one sync) per entry, measured in the
//! same run, on SQLite (`synchronous = FULL`) and on PostgreSQL (a throwaway cluster with
//! production durability: `fsync`, `synchronous_commit = on`); and the integrator that builds
//! tiles and lookup keys from the committed batches afterwards.
//!
//! `cargo bench -p keyward-tests --bench audit_append` (PostgreSQL needs the test peers:
//! `scripts/install-test-peers`). Each entry is a realistic `credentials.issued` entry with the
//! full context chain (~900 bytes of canonical JSON) and a random access key ID (random lookup
//! keys are what production writes; sequential ones flatter a B-tree).
//!
//! Lines: `one commit per entry` (the baseline), `group commit` (the writer alone), `ratio:`,
//! the bytes the process wrote per entry (SQLite: `wchar` of `/proc/self/io`, WAL and checkpoints
//! included; PostgreSQL: WAL bytes from `pg_stat_wal`), `integrator:` (draining the group-commit
//! run's backlog alone) and `with the integrator running` (appends while it runs beside them, and
//! how far behind it was at the end).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

/// The broker binary's allocator (`broker/src/main.rs`): appends are measured as they run there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::Instant;

use keyward_broker::audit::{Append, AuditEvent, AuditLog, Context, Kind, integrator};
use keyward_broker::store::{Backend, DatabaseLocation, Store};
use keyward_tests::postgres::PgCluster;
use sqlx::Row as _;

/// Concurrent appenders in the group-commit runs (a broker under load has this many requests in
/// flight).
const CONCURRENCY: usize = 1024;

fn count(var: &str, default: usize) -> usize {
    std::env::var(var).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// SplitMix64: a stand-in for the randomness of real access key IDs.
fn scramble(i: usize) -> u64 {
    let mut z = (i as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn event(i: usize) -> AuditEvent {
    let akid = format!("ASIA{:016X}", scramble(i));
    let context = Context {
        run_id: Some(format!("run-01JD5Z8Q4M6V7X3K2B9N{i:06}")),
        stack_id: Some("network".into()),
        phase: Some("apply".into()),
        repository: Some("https://git.example.com/platform/infra.git".into()),
        commit_sha: Some("0123456789abcdef0123456789abcdef01234567".into()),
        git_ref: Some("refs/heads/main".into()),
        pull_request: Some(4711),
        ticket: Some("CHG-7".into()),
        pull_request_source: None,
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
        .with("access_key_id", akid.clone())
        .with("credentials_expire_at", 1_795_403_600)
        .with("mode", "broker")
        .with_ref("akid", &akid)
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

/// Bytes this process or the database server has written so far (see the module docs).
async fn written(store: &Store, pg: &Option<sqlx::AnyPool>) -> u64 {
    match (store.backend(), pg) {
        (Backend::Postgres, Some(pool)) => {
            let bytes: String =
                sqlx::query("SELECT wal_bytes::text AS b FROM pg_stat_wal").fetch_one(pool).await.unwrap().get("b");
            bytes.parse::<f64>().unwrap() as u64
        }
        _ => {
            let io = std::fs::read_to_string("/proc/self/io").unwrap();
            io.lines().find_map(|l| l.strip_prefix("wchar: ")).unwrap().trim().parse().unwrap()
        }
    }
}

/// Runs the integrator until it has covered the whole log; returns entries per second.
async fn drain(store: &Store) -> (f64, u64) {
    let started = Instant::now();
    let from = store.audit_integrated().await.unwrap();
    while store.integrate_audit(8192).await.unwrap().is_some() {}
    let to = store.audit_integrated().await.unwrap();
    ((to - from) as f64 / started.elapsed().as_secs_f64(), to - from)
}

async fn backend(name: &str, location: DatabaseLocation, pg: Option<sqlx::AnyPool>) {
    let store = Store::open(&location).await.unwrap();
    let log = AuditLog::start(store.clone());
    let single = count("KEYWARD_BENCH_SINGLE", 500);
    let grouped = count("KEYWARD_BENCH_GROUPED", 204_800);
    let one_by_one = run(&log, single, 1, 0).await;
    let (commits, entries) = (log.stats().commits(), log.stats().entries());
    let bytes_before = written(&store, &pg).await;
    let group = run(&log, grouped, CONCURRENCY, single).await;
    let bytes = written(&store, &pg).await - bytes_before;
    let appended = log.stats().entries() - entries;
    let batch = appended as f64 / (log.stats().commits() - commits) as f64;
    println!("{name:<10} one commit per entry: {one_by_one:>8.0} entries/s  ({single} entries)");
    println!(
        "{name:<10} group commit ({CONCURRENCY} appenders): {group:>8.0} entries/s  ({grouped} entries, {batch:.0} per commit)"
    );
    println!("{name:<10} ratio: {:.1}x", group / one_by_one);
    let what = if pg.is_some() { "WAL bytes" } else { "bytes written" };
    println!("{name:<10} {what} per entry: {:.0}", bytes as f64 / appended as f64);
    let (rate, integrated) = drain(&store).await;
    println!("{name:<10} integrator: {rate:>8.0} entries/s  ({integrated} entries: tiles and lookup keys)");

    // Production's shape: the integrator runs beside the writer.
    let running = tokio::spawn(integrator::run(store.clone(), log.clone()));
    let offset = single + grouped;
    let beside = run(&log, grouped, CONCURRENCY, offset).await;
    let size = store.audit_size().await.unwrap();
    let behind = size - store.audit_integrated().await.unwrap();
    println!("{name:<10} with the integrator running: {beside:>8.0} entries/s, {behind} entries behind at the end");
    // Keeping up: the lag at the end is one step's worth, gone within a step or two.
    let stopped = Instant::now();
    while store.audit_integrated().await.unwrap() < size {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    println!("{name:<10} integrator caught up {:.0} ms after the last append\n", stopped.elapsed().as_secs_f64() * 1e3);
    running.abort();

    // The tree must still be right after all that.
    assert_eq!(size as usize, single + 2 * (grouped - grouped % CONCURRENCY));
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    println!("\ndurable audit appends, 2 cores\n");
    // `KEYWARD_BENCH_BACKENDS=sqlite` (or `postgres`) runs one of them, e.g. to profile it.
    let only = std::env::var("KEYWARD_BENCH_BACKENDS").unwrap_or_default();
    let dir = tempfile::tempdir().unwrap();
    if only.is_empty() || only.contains("sqlite") {
        backend("sqlite", DatabaseLocation::Sqlite(dir.path().join("audit.db")), None).await;
    }
    if only.is_empty() || only.contains("postgres") {
        let cluster = PgCluster::start_durable();
        let url = cluster.database("audit_bench");
        sqlx::any::install_default_drivers();
        let stats = sqlx::AnyPool::connect(&url).await.unwrap();
        backend("postgres", DatabaseLocation::Postgres(url), Some(stats)).await;
    }
}
