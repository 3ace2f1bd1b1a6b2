//! Builds the documented `keyward.credentials` policy input (`keyward policy schema credentials`).
//!
//! Built as the policy engine's values directly, not as JSON converted afterwards: this input is
//! built for every exchange, and skipping the JSON tree halves its cost (`docs/performance.md`).

use std::time::Duration;

use super::subject::{Subject, SubjectKind};
use crate::policy::input::{self, InputObject, PolicyInput, RunInput};
use crate::targets::{ExchangeMode, TargetAccess, TargetConfig, TargetKind, WriteSubject};

/// The input for a decision about `target` for a verified `subject`.
pub(super) fn credentials_input(
    subject: &Subject,
    target: &TargetConfig,
    requested_ttl: Option<Duration>,
    now: i64,
) -> PolicyInput {
    let (kind, mode) = match &target.kind {
        TargetKind::Aws(aws) => ("aws", aws.mode),
        TargetKind::Vault(_) => ("vault", ExchangeMode::Broker),
    };
    let issuer_name = match &subject.kind {
        SubjectKind::Ci(name) => Some(name.as_str()),
        SubjectKind::Run | SubjectKind::Job => None,
    };
    let subject_object = InputObject::new()
        .field("kind", subject.kind.as_str())
        .field("issuer", subject.issuer.as_str())
        .field("claims", PolicyInput::json_object(&subject.claims))
        .field_if("issuer_name", issuer_name);
    let target_object = InputObject::new()
        .field("name", target.id().as_str())
        .field("type", kind)
        .field(
            "access",
            match target.access {
                TargetAccess::Read => "read",
                TargetAccess::Write => "write",
            },
        )
        .field("max_ttl_seconds", target.duration.as_secs())
        .field("labels", &target.labels)
        .field("write_subjects", PolicyInput::strings(target.write_subjects.iter().map(|s| write_subject(*s))));
    let request = InputObject::new().field("ttl_seconds", requested_ttl.map(|ttl| ttl.as_secs())).field(
        "mode",
        match mode {
            ExchangeMode::Broker => "broker",
            ExchangeMode::Worker => "worker",
        },
    );
    InputObject::new()
        .field("subject", subject_object)
        .field("run", RunInput::from(&subject.run).to_input())
        .field("target", target_object)
        .field("request", request)
        .field("time", input::time_input(now))
        .into()
}

/// How `write_subjects` reads in the input (as in the configuration).
fn write_subject(subject: WriteSubject) -> &'static str {
    match subject {
        WriteSubject::Job => "job",
        WriteSubject::Run => "run",
        WriteSubject::Ci => "ci",
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use keyward_proto::claims::{Phase, RunChain};
    use serde_json::json;

    use super::*;
    use crate::targets::AwsTarget;

    fn subject(kind: SubjectKind) -> Subject {
        let mut run = RunChain::new("run-1", "network", "network", Phase::Apply);
        run.repository = Some("https://git.example.com/platform/infra.git".to_owned());
        run.git_ref = Some("refs/heads/main".to_owned());
        run.pull_request = Some(42);
        run.triggered_by = Some("alice".to_owned());
        run.approved_by = vec!["bob".to_owned()];
        Subject {
            kind,
            issuer: "https://ci.example.com".to_owned(),
            replay_key: "k".to_owned(),
            expires_at: 0,
            claims: json!({"sub": "repo:acme/network", "nested": {"n": [1, 2.5, null, true]}})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            run,
            pool: None,
            agent_id: None,
            allowed_targets: None,
            space_chain: None,
        }
    }

    fn target(mode: ExchangeMode) -> TargetConfig {
        TargetConfig {
            name: "network-apply".to_owned(),
            access: TargetAccess::Write,
            duration: Duration::from_secs(3600),
            labels: BTreeMap::from([("env".to_owned(), "prod".to_owned())]),
            write_subjects: vec![WriteSubject::Job, WriteSubject::Ci],
            spaces: vec!["root".to_owned()],
            kind: TargetKind::Aws(AwsTarget {
                role_arn: "arn:aws:iam::123456789012:role/network-apply".to_owned(),
                region: "us-east-1".to_owned(),
                sts_endpoint: None,
                audience: "sts.amazonaws.com".to_owned(),
                mode,
                session_tags: None,
                source_identity: None,
            }),
        }
    }

    /// The input built as engine values is the documented JSON document, field for field.
    #[test]
    fn the_input_is_the_documented_document() {
        let time = input::time(1_795_400_000);
        let input = credentials_input(
            &subject(SubjectKind::Ci("github".to_owned())),
            &target(ExchangeMode::Worker),
            Some(Duration::from_secs(900)),
            1_795_400_000,
        );
        let expected = json!({
            "subject": {"kind": "ci", "issuer": "https://ci.example.com", "issuer_name": "github",
                        "claims": {"sub": "repo:acme/network", "nested": {"n": [1, 2.5, null, true]}}},
            "run": {"id": "run-1", "stack_id": "network", "stack": "network", "phase": "apply",
                    "repository": "https://git.example.com/platform/infra.git", "ref": "refs/heads/main",
                    "pull_request": 42, "triggered_by": "alice", "approved_by": ["bob"]},
            "target": {"name": "aws:network-apply", "type": "aws", "access": "write", "max_ttl_seconds": 3600,
                       "labels": {"env": "prod"}, "write_subjects": ["job", "ci"]},
            "request": {"ttl_seconds": 900, "mode": "worker"},
            "time": time,
        });
        assert_eq!(input.to_json(), expected);
        assert_eq!(input, PolicyInput::from(expected));
        let job = credentials_input(&subject(SubjectKind::Job), &target(ExchangeMode::Broker), None, 1_795_400_000);
        let job = job.to_json();
        assert_eq!(job["subject"].get("issuer_name"), None);
        assert_eq!(job["request"], json!({"ttl_seconds": null, "mode": "broker"}));
    }
}
