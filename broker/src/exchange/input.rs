//! Builds the documented `keyward.credentials` policy input (`keyward policy schema credentials`).

use std::time::Duration;

use serde_json::{Map, Value, json};

use super::subject::{Subject, SubjectKind};
use crate::config::{TargetAccess, TargetConfig, TargetKind};

/// The input for a decision about `target` for a verified `subject`.
pub(super) fn credentials_input(
    subject: &Subject,
    target: &TargetConfig,
    requested_ttl: Option<Duration>,
    now: i64,
) -> Value {
    let run = &subject.run;
    let mut run_json = Map::new();
    let mut put = |key: &str, value: Value| {
        if !value.is_null() {
            run_json.insert(key.to_owned(), value);
        }
    };
    put("id", json!(run.id));
    put("stack_id", json!(run.stack_id));
    put("stack", json!(run.stack));
    put("phase", json!(run.phase.as_str()));
    put("repository", json!(run.repository));
    put("commit_sha", json!(run.commit_sha));
    put("ref", json!(run.git_ref));
    put("pull_request", json!(run.pull_request));
    put("ticket", json!(run.ticket));
    put("triggered_by", json!(run.triggered_by));
    if !run.approved_by.is_empty() {
        put("approved_by", json!(run.approved_by));
    }
    let (kind, mode) = match &target.kind {
        TargetKind::Aws(aws) => ("aws", aws.mode),
        TargetKind::Vault(_) => ("vault", crate::config::ExchangeMode::Broker),
    };
    let mut subject_json = json!({ "kind": subject.kind.as_str(), "issuer": subject.issuer, "claims": subject.claims });
    if let SubjectKind::Ci(name) = &subject.kind
        && let Some(object) = subject_json.as_object_mut()
    {
        object.insert("issuer_name".to_owned(), json!(name));
    }
    json!({
        "subject": subject_json,
        "run": run_json,
        "target": {
            "name": target.id(),
            "type": kind,
            "access": match target.access { TargetAccess::Read => "read", TargetAccess::Write => "write" },
            "max_ttl_seconds": target.duration.as_secs(),
            "labels": target.labels,
        },
        "request": {
            "ttl_seconds": requested_ttl.map(|t| t.as_secs()),
            "mode": mode,
        },
        "time": crate::clock::policy_time(now),
    })
}
