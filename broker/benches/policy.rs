//! Policy decision latency with the shipped `keyward.credentials` policy (`policies/`).
//!
//! `cargo bench -p keyward-broker --bench policy`. Target (DESIGN.md §11): ≤ 25 µs p50 (criterion's
//! median). Baselines in the same run, through the same path: a trivial one-rule policy (the fixed
//! per-decision cost of engine clone, input conversion and the collector rule) and the
//! deny-only credentials policy the library shipped before it was rewritten as positive evidence
//! (`*_old_policy`). The `*_engine_input` lines hand the decision an input already built as the
//! engine's values, as the exchange does since then; `input_*` measure building the input each
//! way, so "JSON built, converted, decided" and "engine values built, decided" add up.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

/// The broker binary's allocator (`broker/src/main.rs`): decisions are measured as they run there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use keyward_broker::policy::{InputObject, Outcome, PolicyInput, PolicyKind, PolicySet};

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

/// [`input`], built as the engine's values (as `exchange::policy_input` builds the real one).
fn engine_input(phase: &str, access: &str, approvers: &[&str]) -> PolicyInput {
    let claims = InputObject::new().field("sub", "spiffe://keyward.example.com/agent/a1");
    InputObject::new()
        .field(
            "subject",
            InputObject::new()
                .field("kind", "job")
                .field("issuer", "spiffe://keyward.example.com")
                .field("claims", claims),
        )
        .field(
            "run",
            InputObject::new()
                .field("id", "run-01JD5Z8Q4M6V7X3K2B9N0C1D2E")
                .field("stack_id", "network")
                .field("stack", "network")
                .field("phase", phase)
                .field("repository", "https://git.example.com/platform/infra.git")
                .field("commit_sha", "0123456789abcdef0123456789abcdef01234567")
                .field("ref", "refs/heads/main")
                .field("pull_request", 4711_u64)
                .field("ticket", "CHG-7")
                .field("triggered_by", "alice")
                .field("approved_by", PolicyInput::strings(approvers)),
        )
        .field(
            "target",
            InputObject::new()
                .field("name", "aws:network-apply")
                .field("type", "aws")
                .field("access", access)
                .field("max_ttl_seconds", 3600_u64)
                .field("labels", InputObject::new().field("env", "prod")),
        )
        .field("request", InputObject::new().field("mode", "broker"))
        .field(
            "time",
            InputObject::new()
                .field("unix", 1_795_400_000_i64)
                .field("rfc3339", "2026-11-23T02:13:20Z")
                .field("weekday", "Monday")
                .field("hour_utc", 2_u64),
        )
        .into()
}

/// `policies/credentials.rego` as shipped until 2026-12-06: deny-only (`allow` is "a name and no
/// `deny`"), module-level aliases, `object.get` defaults. Kept to measure the rewrite against.
const OLD_CREDENTIALS: &str = r#"# Who may obtain cloud and Vault credentials (DESIGN.md §3).
#
# Deny by default: `allow` holds only when a known target was named and no `deny` rule fired. Every
# field is read with object.get and a default, because in Rego a comparison against a missing field
# is undefined, and an undefined `deny` body silently allows.
package keyward.credentials

settings := data.keyward.settings

run := object.get(input, "run", {})

target := object.get(input, "target", {})

labels := object.get(target, "labels", {})

default allow := false

allow if {
	object.get(target, "name", "") != ""
	count(deny) == 0
}

# A plan only reads. The broker enforces this in code as well; saying it here puts the reason in
# the audit log and lets `keyward policy test` show it.
deny contains msg if {
	object.get(run, "phase", "") != "apply"
	object.get(target, "access", "write") != "read"
	msg := sprintf("target '%s' grants write access; only apply-phase runs may use it", [target.name])
}

# Write credentials go to jobs of runs the broker tracked: their approvals are reviews it recorded.
# A CI system's token or an admin-minted run token carries no recorded review, so a write target
# serves them only when its configuration opts in (`write_subjects = ["ci"]`).
deny contains msg if {
	object.get(target, "access", "write") == "write"
	subject_kind := object.get(object.get(input, "subject", {}), "kind", "")
	allowed_kinds := object.get(target, "write_subjects", ["job"])
	not subject_kind in allowed_kinds
	msg := sprintf(
		"write target '%s' serves only the subject kinds its write_subjects lists (by default only jobs of tracked runs), not a '%s' subject; set write_subjects on the target to opt in",
		[target.name, subject_kind],
	)
}

# Apply only what has been merged: write targets need a commit on the default branch.
deny contains msg if {
	object.get(target, "access", "write") == "write"
	not run.ref
	msg := sprintf("write target '%s' needs a commit on %s; this run names no ref", [target.name, settings.default_branch_ref])
}

deny contains msg if {
	object.get(target, "access", "write") == "write"
	run.ref != settings.default_branch_ref
	msg := sprintf("write target '%s' needs a commit on %s; this run is on '%s'", [target.name, settings.default_branch_ref, run.ref])
}

# Write targets need independent approvals, none from the person who triggered the run: as many
# as `required_approvals` says for the target's `env` label, and `default_required_approvals`
# (one) for a label it does not list or no label at all. Only an explicit entry (dev: 0) waives it.
deny contains msg if {
	env := object.get(labels, "env", "")
	required := object.get(settings.required_approvals, env, object.get(settings, "default_required_approvals", 1))
	object.get(target, "access", "write") == "write"
	count(independent_approvers) < required
	msg := sprintf(
		"target '%s' (env=%s) needs %d approvals from someone other than '%s'; it has %d",
		[target.name, env_shown, required, object.get(run, "triggered_by", "(unknown)"), count(independent_approvers)],
	)
}

# How an absent `env` label reads in a reason.
env_shown := object.get(labels, "env", "none") if object.get(labels, "env", "") != ""

else := "none"

independent_approvers contains who if {
	some who in object.get(run, "approved_by", [])
	who != object.get(run, "triggered_by", "")
}

# A target labelled `repositories` (space-separated, exact: `acme/network` as a CI token names it,
# `https://github.com/acme/network.git` as a stack does) serves only runs of those repositories,
# whoever the caller is: one repository's pipeline cannot deploy another's infrastructure.
deny contains msg if {
	count(bound_repositories) > 0
	not object.get(run, "repository", "") in bound_repositories
	msg := sprintf(
		"target '%s' serves only runs of the repositories its 'repositories' label lists; this run is of '%s'",
		[target.name, repository_shown],
	)
}

repository_shown := run.repository if run.repository

else := "(no repository)"

bound_repositories := {repository |
	some repository in split(object.get(labels, "repositories", ""), " ")
	repository != ""
}

# Only the organisation's repositories (when a list is configured in data.json).
deny contains msg if {
	prefixes := settings.allowed_repository_prefixes
	count(prefixes) > 0
	not has_prefix(object.get(run, "repository", ""), prefixes)
	msg := repository_message
}

repository_message := sprintf("repository '%s' is not in the allowed list", [run.repository]) if run.repository

else := "the run names no repository, and only listed repositories are allowed"

has_prefix(s, prefixes) if {
	some prefix in prefixes
	startswith(s, prefix)
}

# Lifetimes: an hour for plans and applies (data.json, ttl_caps): shorter would put CI
# credentials inside the 15 minutes in which AWS clients refresh them.
ttl_seconds := settings.ttl_caps[object.get(run, "phase", "plan")]
"#;

fn library_with(credentials: Option<&str>) -> PolicySet {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let mut sources = Vec::new();
    for file in ["approval.rego", "credentials.rego", "data.json", "plan.rego", "run.rego"] {
        let text = match (file, credentials) {
            ("credentials.rego", Some(text)) => text.to_owned(),
            _ => std::fs::read_to_string(dir.join(file)).unwrap(),
        };
        sources.push((file.to_owned(), text));
    }
    PolicySet::from_sources(&dir, &sources, Duration::from_millis(100)).unwrap()
}

fn bench(c: &mut Criterion) {
    let library = library_with(None);
    let old = library_with(Some(OLD_CREDENTIALS));
    let trivial = PolicySet::from_sources(
        Path::new("trivial"),
        &[("t.rego".to_owned(), "package keyward.credentials\n\nallow := true\n".to_owned())],
        Duration::from_millis(100),
    )
    .unwrap();
    let allowed = input("apply", "write", &["bob", "carol"]);
    let denied = input("plan", "write", &["bob"]);
    assert_eq!(engine_input("apply", "write", &["bob", "carol"]), PolicyInput::from(allowed.clone()));
    assert_eq!(engine_input("plan", "write", &["bob"]), PolicyInput::from(denied.clone()));
    for set in [&library, &old] {
        assert_eq!(set.decide(PolicyKind::Credentials, allowed.clone()).outcome, Outcome::Allow);
        let refused = set.decide(PolicyKind::Credentials, denied.clone());
        assert_eq!((refused.outcome, refused.reasons.len()), (Outcome::Deny, 2), "{refused:?}");
    }

    let mut group = c.benchmark_group("policy");
    // Each decision gets its own input, built outside the timed region (the broker builds it per
    // request); a JSON input is converted inside it, as the broker must.
    let run = |set: &PolicySet, input: &serde_json::Value, b: &mut criterion::Bencher<'_>| {
        b.iter_batched(
            || input.clone(),
            |i| set.decide(PolicyKind::Credentials, black_box(i)),
            BatchSize::PerIteration,
        );
    };
    let run_engine = |set: &PolicySet, input: &PolicyInput, b: &mut criterion::Bencher<'_>| {
        b.iter_batched(
            || input.clone(),
            |i| set.decide(PolicyKind::Credentials, black_box(i)),
            BatchSize::PerIteration,
        );
    };
    group.bench_function("trivial_policy_baseline", |b| run(&trivial, &allowed, b));
    group.bench_function("credentials_allow", |b| run(&library, &allowed, b));
    group.bench_function("credentials_deny", |b| run(&library, &denied, b));
    group.bench_function("credentials_allow_old_policy", |b| run(&old, &allowed, b));
    group.bench_function("credentials_deny_old_policy", |b| run(&old, &denied, b));
    let (allowed_engine, denied_engine) =
        (engine_input("apply", "write", &["bob", "carol"]), engine_input("plan", "write", &["bob"]));
    group.bench_function("credentials_allow_engine_input", |b| run_engine(&library, &allowed_engine, b));
    group.bench_function("credentials_deny_engine_input", |b| run_engine(&library, &denied_engine, b));
    group.bench_function("input_json_then_convert", |b| {
        b.iter(|| PolicyInput::from(input(black_box("apply"), "write", &["bob", "carol"])));
    });
    group.bench_function("input_engine_values", |b| {
        b.iter(|| engine_input(black_box("apply"), "write", &["bob", "carol"]))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
