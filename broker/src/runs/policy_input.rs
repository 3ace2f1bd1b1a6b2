//! The documented inputs of `keyward.run`, `keyward.scan`, `keyward.plan` and `keyward.approval`
//! (`keyward policy schema run`).

use keyward_proto::claims::Phase;
use serde_json::{Map, Value, json};

use super::spec::Stack;
use crate::policy::input::{self, RunInput};
use crate::roles::Actor;
use crate::store::{ReviewRow, RunRow};

/// `input.run` for a stored run in `phase`.
fn run_object(run: &RunRow, stack: &Stack, phase: Phase, approved_by: &[String]) -> Value {
    RunInput::from(&super::run_chain(run, stack, phase, approved_by.to_vec())).to_value()
}

/// `input.stack` (also the `keyward.push` input's: `crate::vcs::push_policy`).
pub(crate) fn stack_object(stack: &Stack) -> Value {
    let spec = &stack.spec;
    json!({
        "id": spec.name,
        "name": spec.name,
        "repository": spec.repository,
        "path": spec.path,
        "branch": spec.branch,
        "pool": spec.pool,
        "labels": spec.labels,
        "policies": spec.policies,
        "space": spec.space,
        "triggers": spec.triggers,
        "tool": spec.tool.as_str(),
    })
}

/// The `keyward.run` input for a submission by `actor` (`null` when it is not known).
pub(super) fn run_input(run: &RunRow, stack: &Stack, actor: Option<&Actor>, now: i64) -> Value {
    json!({
        "run": run_object(run, stack, Phase::Plan, &[]),
        "stack": stack_object(stack),
        "kind": run.kind,
        "submitted_by": run.triggered_by,
        "actor": actor,
        "time": input::time(now),
    })
}

/// The `keyward.scan` input: the run as `keyward.run` sees it, and what the plan job's scanners
/// found.
pub(super) fn scan_input(run: &RunRow, stack: &Stack, scans: Value, now: i64) -> Value {
    super::with_field(run_input(run, stack, None, now), "scans", scans)
}

/// The `keyward.plan` input: the run and `terraform show -json` of its saved plan.
pub(super) fn plan_input(run: &RunRow, stack: &Stack, plan: Value, now: i64) -> Value {
    json!({
        "run": run_object(run, stack, Phase::Plan, &[]),
        "plan": plan,
        "time": input::time(now),
    })
}

/// The `keyward.approval` input: the run (whose `approved_by` holds only the approvals that
/// count), every review so far (each saying whether its reviewer is the run's author and whether
/// it counts), and the labels of what applying it will touch (the stack's labels, overlaid by its
/// apply targets' labels). `actor`: who reviewed just now (`None` right after the plan).
pub(super) fn approval_input(
    run: &RunRow,
    stack: &Stack,
    reviews: &[ReviewRow],
    target_labels: Map<String, Value>,
    actor: Option<&Actor>,
    now: i64,
) -> Value {
    let approved_by = super::reviews::counted_approvers(&run.triggered_by, reviews);
    let approvals: Vec<Value> = super::reviews::judge(&run.triggered_by, reviews)
        .into_iter()
        .map(|judged| {
            let r = judged.review;
            let mut review =
                json!({"by": r.reviewer, "decision": r.decision, "at": r.at, "author": judged.author, "counted": judged.counted});
            if let (Some(comment), Some(object)) = (&r.comment, review.as_object_mut()) {
                object.insert("comment".to_owned(), json!(comment));
            }
            // Who, as verified at review time (null for reviews recorded before identities were).
            let reviewer: Value = r.identity.as_deref().and_then(|i| serde_json::from_str(i).ok()).unwrap_or(Value::Null);
            if let Some(object) = review.as_object_mut() {
                object.insert("reviewer".to_owned(), reviewer);
            }
            review
        })
        .collect();
    let mut run_value = run_object(run, stack, Phase::Apply, &approved_by);
    if let Some(object) = run_value.as_object_mut() {
        object.insert("kind".to_owned(), json!(run.kind));
        if run.kind == super::RunKind::Remediation.as_str() {
            object.insert("remediation".to_owned(), json!(stack.drift_settings.drift_remediation.as_str()));
        }
    }
    json!({
        "run": run_value,
        "stack": stack_object(stack),
        "approvals": approvals,
        "target_labels": target_labels,
        "actor": actor,
        "time": input::time(now),
    })
}
