//! The documented inputs of `keyward.run` and `keyward.approval` (`keyward policy schema run`).

use serde_json::{Map, Value, json};

use crate::store::{ReviewRow, RunRow, StackRow};

/// `input.run`: the run as policies see it (the same shape the credentials policy gets).
pub(super) fn run_object(run: &RunRow, phase: &str, approved_by: &[String]) -> Value {
    let mut object = Map::new();
    let mut put = |key: &str, value: Value| {
        if !value.is_null() {
            object.insert(key.to_owned(), value);
        }
    };
    put("id", json!(run.id));
    put("stack_id", json!(run.stack));
    put("stack", json!(run.stack));
    put("phase", json!(phase));
    put("commit_sha", json!(run.commit_sha));
    put("ref", json!(run.git_ref));
    put("pull_request", json!(run.pull_request));
    put("ticket", json!(run.ticket));
    put("triggered_by", json!(run.triggered_by));
    if !approved_by.is_empty() {
        put("approved_by", json!(approved_by));
    }
    Value::Object(object)
}

/// `input.stack`.
pub(super) fn stack_object(stack: &StackRow) -> Value {
    let parse = |text: &str| serde_json::from_str::<Value>(text).unwrap_or(Value::Null);
    json!({
        "id": stack.name,
        "name": stack.name,
        "repository": stack.repository,
        "path": stack.path,
        "branch": stack.branch,
        "pool": stack.pool,
        "labels": parse(&stack.labels),
        "policies": parse(&stack.policies),
    })
}

/// The `keyward.run` input for a submission.
pub(super) fn run_input(run: &RunRow, stack: &StackRow, now: i64) -> Value {
    let mut run_json = run_object(run, "plan", &[]);
    if let Some(object) = run_json.as_object_mut() {
        object.insert("repository".to_owned(), json!(stack.repository));
    }
    json!({
        "run": run_json,
        "stack": stack_object(stack),
        "submitted_by": run.triggered_by,
        "time": crate::clock::policy_time(now),
    })
}

/// The `keyward.approval` input: the run, every review so far, and the labels of what applying
/// it will touch (the stack's labels, overlaid by its apply targets' labels).
pub(super) fn approval_input(
    run: &RunRow,
    stack: &StackRow,
    reviews: &[ReviewRow],
    target_labels: Map<String, Value>,
    now: i64,
) -> Value {
    let approved_by: Vec<String> =
        reviews.iter().filter(|r| r.decision == "approve").map(|r| r.reviewer.clone()).collect();
    let mut run_json = run_object(run, "apply", &approved_by);
    if let Some(object) = run_json.as_object_mut() {
        object.insert("repository".to_owned(), json!(stack.repository));
    }
    let approvals: Vec<Value> = reviews
        .iter()
        .map(|r| {
            let mut review = json!({"by": r.reviewer, "decision": r.decision, "at": r.at});
            if let (Some(comment), Some(object)) = (&r.comment, review.as_object_mut()) {
                object.insert("comment".to_owned(), json!(comment));
            }
            review
        })
        .collect();
    json!({
        "run": run_json,
        "stack": stack_object(stack),
        "approvals": approvals,
        "target_labels": target_labels,
        "time": crate::clock::policy_time(now),
    })
}
