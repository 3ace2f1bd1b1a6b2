//! Builds the documented `keyward.credentials` policy input (`keyward policy schema credentials`).

use std::time::Duration;

use serde_json::{Value, json};

use super::subject::{Subject, SubjectKind};
use crate::policy::input::{self, RunInput};
use crate::targets::{ExchangeMode, TargetAccess, TargetConfig, TargetKind};

/// The input for a decision about `target` for a verified `subject`.
pub(super) fn credentials_input(
    subject: &Subject,
    target: &TargetConfig,
    requested_ttl: Option<Duration>,
    now: i64,
) -> Value {
    let run_json = RunInput::from(&subject.run).to_value();
    let (kind, mode) = match &target.kind {
        TargetKind::Aws(aws) => ("aws", aws.mode),
        TargetKind::Vault(_) => ("vault", ExchangeMode::Broker),
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
            "write_subjects": target.write_subjects,
        },
        "request": {
            "ttl_seconds": requested_ttl.map(|t| t.as_secs()),
            "mode": mode,
        },
        "time": input::time(now),
    })
}
