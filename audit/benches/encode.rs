//! The CPU cost of encoding one audit event (`AuditEvent::prepare`), which every exchange
//! request pays before its entry is appended.
//!
//! `cargo bench -p keyward-audit --bench encode`. Baseline in the same run: `prepare_via_value`,
//! the encoding as it was before the direct encoder (serialize the event into a
//! `serde_json::Value` tree, then write that tree canonically, then the lookup keys), against
//! `prepare_direct`, `AuditEvent::prepare` itself. The event is the realistic `credentials.issued`
//! entry of `tests/benches/audit_append.rs` (full context chain, ~900 bytes of canonical JSON).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use keyward_audit::canonical::to_canonical;
use keyward_audit::{AuditEvent, Context, Kind};
use serde::Serialize;
use serde_json::{Map, Value};

/// SplitMix64: a stand-in for the randomness of real access key IDs.
fn scramble(i: usize) -> u64 {
    let mut z = (i as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `tests/benches/audit_append.rs`'s `event(i)`.
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

/// What `AuditEvent::prepare` did before the direct encoder: the canonical JSON without
/// `,"seq":N}`, through a `Value` tree, and the lookup keys.
fn prepare_via_value(event: &AuditEvent) -> (String, Vec<String>) {
    #[derive(Serialize)]
    struct Unnumbered<'a> {
        at: i64,
        context: &'a Context,
        details: &'a Map<String, Value>,
        kind: &'a str,
    }
    let unnumbered =
        Unnumbered { at: event.at, context: &event.context, details: &event.details, kind: event.kind.as_str() };
    let value = serde_json::to_value(unnumbered).unwrap();
    let mut prefix = to_canonical(&value).unwrap();
    prefix.pop();
    (prefix, event.all_refs())
}

fn bench(c: &mut Criterion) {
    let event = event(42);
    // Both paths encode the same bytes, or the comparison means nothing.
    let (prefix, refs) = prepare_via_value(&event);
    let prepared = event.prepare().unwrap();
    assert_eq!(format!("{prefix},\"seq\":7}}"), prepared.body(7));
    assert_eq!(refs, prepared.refs);

    let mut group = c.benchmark_group("encode");
    group.bench_function("prepare_via_value", |b| b.iter(|| prepare_via_value(black_box(&event))));
    group.bench_function("prepare_direct", |b| b.iter(|| black_box(&event).prepare().unwrap()));
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
