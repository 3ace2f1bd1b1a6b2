//! The shipped policy library: its own cases pass through `keyward policy test`, and an independent
//! Rego engine (regopy) reaches the same decisions as the broker's regorus for every case input.

use std::time::Duration;

use keyward_broker::policy::{Decision, Outcome, PolicyKind, PolicySet};
use keyward_tests::broker::keyward;
use keyward_tests::{regopy, workspace_root};
use serde_json::Value;

#[test]
fn keyward_policy_test_passes_on_the_shipped_library() {
    let dir = workspace_root().join("policies");
    let out = keyward(&["policy", "test", dir.to_str().unwrap()], &[]);
    assert!(out.success, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains(" passed, 0 failed"), "{}", out.stdout);
    let json = keyward(&["policy", "test", dir.to_str().unwrap(), "--json"], &[]);
    let report: Value = serde_json::from_str(&json.stdout).unwrap();
    assert!(report["passed"].as_u64().unwrap() >= 20);
}

#[test]
fn a_failing_case_fails_the_command_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let policies = workspace_root().join("policies");
    for file in ["credentials.rego", "data.json"] {
        std::fs::copy(policies.join(file), dir.path().join(file)).unwrap();
    }
    std::fs::write(
        dir.path().join("wrong.cases.json"),
        r#"{"cases": [{"name": "an empty request is allowed (wrong)", "kind": "credentials", "input": {}, "expect": {"outcome": "allow"}}]}"#,
    )
    .unwrap();
    let out = keyward(&["policy", "test", dir.path().to_str().unwrap()], &[]);
    assert!(!out.success);
    assert!(
        out.stdout.contains("FAIL") && out.stdout.contains("an empty request is allowed (wrong)"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("0 passed, 1 failed"), "{}", out.stdout);
}

/// The outputs the broker reads, normalized (sets sorted) so two engines' documents compare.
fn outputs(kind: PolicyKind, document: &Value) -> Value {
    let rules: &[&str] = match kind {
        PolicyKind::Credentials => &["allow", "deny", "ttl_seconds", "session_policy"],
        PolicyKind::Run | PolicyKind::Plan | PolicyKind::Scan => &["allow", "deny", "warn"],
        PolicyKind::Approval => &["approve", "reject", "pending"],
        PolicyKind::Push => &["propose", "track", "reasons"],
    };
    let mut out = serde_json::Map::new();
    for rule in rules {
        let value = match document.get(*rule) {
            Some(Value::Array(items)) => {
                let mut items = items.clone();
                items.sort_by_key(|v| v.to_string());
                Value::Array(items)
            }
            Some(other) => other.clone(),
            None => continue,
        };
        // An empty set and an absent partial set rule mean the same.
        if value != Value::Array(Vec::new()) {
            out.insert((*rule).to_owned(), value);
        }
    }
    Value::Object(out)
}

#[test]
fn regopy_agrees_with_regorus_on_every_case() {
    let dir = workspace_root().join("policies");
    let set = PolicySet::load(&dir, Duration::from_secs(1)).unwrap();
    let mut compared = 0;
    for entry in std::fs::read_dir(dir.join("cases")).unwrap() {
        let file: Value = serde_json::from_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap()).unwrap();
        for case in file["cases"].as_array().unwrap() {
            let name = &case["name"];
            let kind: PolicyKind = serde_json::from_value(case["kind"].clone()).unwrap();
            let verdict = regopy::evaluate(&dir, kind.package(), &case["input"]);
            let theirs = verdict.get("document").unwrap_or_else(|| panic!("{name}: {verdict}"));
            let ours = set.outputs(kind, case["input"].clone()).unwrap();
            assert_eq!(outputs(kind, &ours), outputs(kind, theirs), "{name}: the engines' outputs differ");
            // And the broker would act the same on regopy's document.
            let decision = set.decide(kind, case["input"].clone());
            let from_theirs = Decision::from_document(kind, theirs, decision.policy_digest.clone());
            assert_eq!(decision, from_theirs, "{name}: the decisions differ");
            compared += 1;
        }
    }
    assert!(compared >= 20, "compared only {compared} cases");
}

/// The shipped library with one fault injected: `settings` (data.json's `keyward.settings`)
/// changed by `configure`, and the input of the case named `case` changed by `alter`. Returns the
/// broker's decision and the decision it would take on regopy's document: regopy runs without
/// strict built-in errors, so an error there is "undefined", as in OPA by default and in
/// regorus's bytecode VM. Both must refuse.
fn decide_with_fault(
    kind: PolicyKind,
    case: &str,
    configure: impl FnOnce(&mut Value),
    alter: impl FnOnce(&mut Value),
) -> (Decision, Decision) {
    let library = workspace_root().join("policies");
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&library).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rego") {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    let mut data: Value = serde_json::from_str(&std::fs::read_to_string(library.join("data.json")).unwrap()).unwrap();
    configure(&mut data["keyward"]["settings"]);
    std::fs::write(dir.path().join("data.json"), data.to_string()).unwrap();
    let cases = library.join(format!("cases/{kind}.cases.json"));
    let cases: Value = serde_json::from_str(&std::fs::read_to_string(cases).unwrap()).unwrap();
    let mut input = cases["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == case)
        .unwrap_or_else(|| panic!("{case}"))["input"]
        .clone();
    alter(&mut input);
    let set = PolicySet::load(dir.path(), Duration::from_secs(1)).unwrap();
    let ours = set.decide(kind, input.clone());
    let verdict = regopy::evaluate(dir.path(), kind.package(), &input);
    let theirs = match verdict.get("document") {
        Some(document) => Decision::from_document(kind, document, ours.policy_digest.clone()),
        None => panic!("regopy failed: {verdict}"),
    };
    (ours, theirs)
}

/// `required_approvals` set to `null` for prod (a value commented out, say): the old policy
/// compared `1 < null`, which is false in Rego's type order, so its `deny` never fired and one
/// approval got prod write credentials.
#[test]
fn credentials_fail_closed_on_a_required_approvals_of_the_wrong_type() {
    let (ours, theirs) = decide_with_fault(
        PolicyKind::Credentials,
        "prod with one approval is refused",
        |settings| settings["required_approvals"]["prod"] = Value::Null,
        |_| {},
    );
    for decision in [&ours, &theirs] {
        assert_eq!(decision.outcome, Outcome::Deny, "{decision:?}");
    }
    assert!(ours.reasons[0].contains("data.json gives no number of approvals"), "{ours:?}");
}

/// `commit_sha: null` (what a serializer that writes `None` as `null` would send): the old policy
/// read it with `object.get(run, "commit_sha", "") == ""`, false for `null`, and let the run in.
#[test]
fn run_fails_closed_on_a_commit_of_the_wrong_type() {
    for commit in [Value::Null, serde_json::json!(7), serde_json::json!(["0123abc"])] {
        let (ours, theirs) = decide_with_fault(
            PolicyKind::Run,
            "a commit on a branch may run",
            |_| {},
            |input| input["run"]["commit_sha"] = commit.clone(),
        );
        for decision in [&ours, &theirs] {
            assert_eq!(decision.outcome, Outcome::Deny, "{commit}: {decision:?}");
        }
        assert_eq!(ours.reasons, ["a run must name a commit (commit_sha)"], "{commit}");
    }
}

/// `protected_resource_types` written as an object (or a string) instead of a list: `"aws_db_instance"
/// in {...}` is false, so the old policy's `deny` never fired and the plan deleted a database.
#[test]
fn plan_fails_closed_on_protected_resource_types_of_the_wrong_type() {
    for protected in [serde_json::json!({"aws_db_instance": true}), serde_json::json!("aws_db_instance")] {
        let (ours, theirs) = decide_with_fault(
            PolicyKind::Plan,
            "deleting a database is refused",
            |settings| settings["protected_resource_types"] = protected.clone(),
            |_| {},
        );
        for decision in [&ours, &theirs] {
            assert_eq!(decision.outcome, Outcome::Deny, "{protected}: {decision:?}");
        }
        assert!(ours.reasons.iter().any(|r| r.contains("protected_resource_types must be a list")), "{ours:?}");
    }
}

/// `required_approvals` of the wrong type for prod: the old policy approved on `count(approvers)
/// >= null` (true in Rego's type order), so one approval, or none, let a prod run apply.
#[test]
fn approval_fails_closed_on_a_required_approvals_of_the_wrong_type() {
    for required in [Value::Null, Value::Bool(false)] {
        let (ours, theirs) = decide_with_fault(
            PolicyKind::Approval,
            "prod: one approval is pending",
            |settings| settings["required_approvals"]["prod"] = required.clone(),
            |_| {},
        );
        for decision in [&ours, &theirs] {
            assert_eq!(decision.outcome, Outcome::Pending, "{required}: {decision:?}");
        }
        assert!(ours.reasons.iter().any(|r| r.contains("data.json gives no number of approvals")), "{ours:?}");
    }
}

/// `propose_forks` (data.json) of the wrong type (`"true"`, `1`, `null`) keeps pull requests from
/// forks unproposed on both engines, with the reason users see; only `true` proposes them.
#[test]
fn push_proposes_forks_only_on_a_propose_forks_of_exactly_true() {
    let fork_case = "a pull request from a fork is not proposed";
    for setting in [serde_json::json!("true"), serde_json::json!(1), Value::Null] {
        let (ours, theirs) = decide_with_fault(
            PolicyKind::Push,
            fork_case,
            |settings| settings["propose_forks"] = setting.clone(),
            |_| {},
        );
        for decision in [&ours, &theirs] {
            assert_eq!(decision.outcome, Outcome::Ignore, "{setting}: {decision:?}");
        }
        assert!(ours.reasons.iter().any(|r| r.contains("pull requests from forks are not planned")), "{ours:?}");
    }
    let (ours, theirs) = decide_with_fault(
        PolicyKind::Push,
        fork_case,
        |settings| settings["propose_forks"] = Value::Bool(true),
        |_| {},
    );
    for decision in [&ours, &theirs] {
        assert_eq!(decision.outcome, Outcome::Propose, "{decision:?}");
    }
}
