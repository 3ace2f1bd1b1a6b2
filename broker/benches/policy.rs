//! Policy decision latency with the shipped `keyward.credentials` policy (`policies/`).
//!
//! `cargo bench -p keyward-broker --bench policy`. Target (DESIGN.md §11): ≤ 25 µs p50 (criterion's
//! median). Baseline in the same run: a trivial one-rule policy through the same path (the fixed
//! per-decision cost of engine clone, input conversion and query).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use keyward_broker::policy::{Outcome, PolicyKind, PolicySet};

fn input(phase: &str, access: &str, approvers: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "subject": {"kind": "job", "issuer": "spiffe://keyward.example.com", "claims": {"sub": "spiffe://keyward.example.com/agent/a1"}},
        "run": {
            "id": "run-01JD5Z8Q4M6V7X3K2B9N0C1D2E", "stack_id": "network", "stack": "network", "phase": phase,
            "repository": "https://git.example.com/platform/infra.git",
            "commit_sha": "0123456789abcdef0123456789abcdef01234567", "ref": "refs/heads/main",
            "pull_request": 4711, "ticket": "CHG-7", "triggered_by": "alice", "approved_by": approvers
        },
        "target": {"name": "aws:network-apply", "type": "aws", "access": access, "max_ttl_seconds": 3600, "labels": {"env": "prod"}},
        "request": {"mode": "broker"},
        "time": {"unix": 1795400000, "rfc3339": "2026-11-23T02:13:20Z", "weekday": "Monday", "hour_utc": 2}
    })
}

fn bench(c: &mut Criterion) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let library = PolicySet::load(&dir, Duration::from_millis(100)).unwrap();
    let trivial = PolicySet::from_sources(
        Path::new("trivial"),
        &[("t.rego".to_owned(), "package keyward.credentials\n\nallow := true\n".to_owned())],
        Duration::from_millis(100),
    )
    .unwrap();
    let allowed = input("apply", "write", &["bob", "carol"]);
    let denied = input("plan", "write", &["bob"]);
    assert_eq!(library.decide(PolicyKind::Credentials, allowed.clone()).outcome, Outcome::Allow);
    assert_eq!(library.decide(PolicyKind::Credentials, denied.clone()).outcome, Outcome::Deny);

    let mut group = c.benchmark_group("policy");
    // Each decision gets its own input, built outside the timed region (the broker builds it per
    // request).
    let run = |set: &PolicySet, input: &serde_json::Value, b: &mut criterion::Bencher<'_>| {
        b.iter_batched(
            || input.clone(),
            |i| set.decide(PolicyKind::Credentials, black_box(i)),
            BatchSize::PerIteration,
        );
    };
    group.bench_function("trivial_policy_baseline", |b| run(&trivial, &allowed, b));
    group.bench_function("credentials_allow", |b| run(&library, &allowed, b));
    group.bench_function("credentials_deny", |b| run(&library, &denied, b));
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
