//! The shipped policy library: its own cases pass through `keyward policy test`, and an independent
//! Rego engine (regopy) reaches the same decisions as the broker's regorus for every case input.

use std::time::Duration;

use keyward_broker::policy::{Decision, PolicyKind, PolicySet};
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
        PolicyKind::Run | PolicyKind::Plan => &["deny", "warn"],
        PolicyKind::Approval => &["approve", "reject", "pending"],
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
