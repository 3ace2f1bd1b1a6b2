//! A plan job's `terraform show -json` (`runs::read_plan_json`: parsing, the change counts the
//! audit entry keeps, the `keyward.plan` input) and the shipped plan policy's verdict on it. The
//! agent masks and sends it, but its content is whatever the job's Terraform code made it.
//!
//! Input: the JSON. What must hold:
//! - the counts are whole numbers, never more changes than the plan lists;
//! - the policy sees exactly the redacted plan the store keeps, which lists the same changes;
//! - the policy decides without panicking, and a deny or warning says something.

use std::sync::OnceLock;

use keyward_broker::policy::PolicyKind;
use keyward_broker::runs::{Stack, read_plan_json};
use keyward_broker::store::RunRow;
use serde_json::{Value, json};

use crate::Outcome;
use crate::fixtures::{NOW, policies};

/// Runs one input.
pub fn check(data: &[u8]) -> Outcome {
    let (run, stack) = run_and_stack();
    let Ok(read) = read_plan_json(data, run, stack, NOW) else { return Outcome::Refused };
    let (counts, input) = (read.counts, read.input);
    let plan: Value = serde_json::from_str(&read.stored_json).expect("the stored plan is JSON");
    let parsed: Value = serde_json::from_slice(data).expect("an accepted plan is JSON");
    assert_eq!(
        plan.get("resource_changes").map(|c| c.as_array().map(Vec::len)),
        parsed.get("resource_changes").map(|c| c.as_array().map(Vec::len)),
        "redaction keeps every change"
    );
    let listed = plan.get("resource_changes").and_then(Value::as_array).map_or(0, Vec::len) as u64;
    let total: u64 = ["create", "update", "delete", "replace"]
        .iter()
        .map(|field| counts[field].as_u64().expect("a count is a whole number"))
        .sum();
    assert!(total <= listed, "{total} changes counted in a plan that lists {listed}");
    assert_eq!(input["plan"], plan, "the policy sees the plan the store keeps");
    let decision = policies().decide(PolicyKind::Plan, input);
    assert!(decision.reasons.iter().chain(&decision.warnings).all(|m| !m.is_empty()), "an empty message");
    Outcome::Accepted
}

/// The run and stack a plan belongs to.
fn run_and_stack() -> &'static (RunRow, Stack) {
    static RUN: OnceLock<(RunRow, Stack)> = OnceLock::new();
    RUN.get_or_init(|| {
        let run = RunRow {
            id: "run-01fuzz".to_owned(),
            stack: "network".to_owned(),
            state: "planning".to_owned(),
            version: 1,
            commit_sha: "0123456789abcdef0123456789abcdef01234567".to_owned(),
            git_ref: Some("refs/heads/main".to_owned()),
            pull_request: None,
            ticket: None,
            pull_request_source: None,
            triggered_by: "alice".to_owned(),
            detail: None,
            created_at: NOW - 60,
            updated_at: NOW - 30,
            kind: "deploy".to_owned(),
            drift: None,
        };
        let spec = serde_json::from_value(json!({
            "name": "network",
            "repository": "https://git.example/infra.git",
            "path": "network",
            "branch": "main",
        }))
        .expect("the stack");
        let stack = Stack::new(spec, NOW - 3600, "admin".to_owned());
        (run, stack)
    })
}
