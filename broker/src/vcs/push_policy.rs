//! The `keyward.push` decision for one stack and one event: propose a plan of a pull request,
//! track a pushed branch with a run, or ignore (docs/vcs.md).
//!
//! The input is built here from the event's observed facts only (the signed webhook and what
//! the broker read from GitHub's API), never from a caller. The decision fails closed: an
//! evaluation error, a time limit, outputs of the wrong type, `propose` and `track` both true,
//! or no policy engine at all is `ignore` with the reason (`crate::policy::Decision`).

use serde_json::{Map, Value, json};

use super::event::{EventKind, PullRequestFacts, VcsEvent};
use crate::policy::{Decision, Outcome, PolicyEngine, PolicyKind};
use crate::runs::Stack;

/// The reason a push decision gives when the broker has no policy directory.
pub const NO_POLICY: &str = "no policy is configured ([policy] dir): pull requests and pushes are ignored";

/// The `keyward.push` input for `stack`, which `files` of `event` touch.
///
/// `pull_request`: for a push, the merged pull request the push came from, if the caller found
/// one through the API (for a `pull_request` event the event's own is used and this is
/// ignored). `ticket`: parsed from that pull request's title or branch, shown with it.
pub fn input(
    stack: &Stack,
    event: &VcsEvent,
    pull_request: Option<&PullRequestFacts>,
    ticket: Option<&str>,
    files: &[String],
) -> Value {
    let mut input = Map::new();
    let (event_name, pull_request) = match &event.kind {
        EventKind::PullRequest { action, pull_request } => {
            input.insert("action".to_owned(), json!(action));
            ("pull_request", Some(pull_request))
        }
        EventKind::Push(push) => {
            let mut object = json!({
                "ref": push.git_ref, "before": push.before, "after": push.after,
                "created": push.created, "deleted": push.deleted, "forced": push.forced,
            });
            if let (Some(branch), Some(object)) = (push.git_ref.strip_prefix("refs/heads/"), object.as_object_mut()) {
                object.insert("branch".to_owned(), json!(branch));
            }
            input.insert("push".to_owned(), object);
            ("push", pull_request)
        }
    };
    input.insert("event".to_owned(), json!(event_name));
    input.insert("repository".to_owned(), json!(event.repository.full_name));
    input.insert("sender".to_owned(), json!(event.sender));
    input.insert("stack".to_owned(), crate::runs::stack_object(stack));
    input.insert("changed_files".to_owned(), json!(files));
    if let Some(pr) = pull_request {
        let mut object = json!({
            "number": pr.number, "title": pr.title, "author": pr.author,
            "base": pr.base_ref, "head": pr.head_ref, "head_sha": pr.head_sha, "url": pr.url,
            "draft": pr.draft, "fork": pr.fork, "merged": pr.merged, "labels": pr.labels,
        });
        if let (Some(ticket), Some(object)) = (ticket, object.as_object_mut()) {
            object.insert("ticket".to_owned(), json!(ticket));
        }
        input.insert("pull_request".to_owned(), object);
    }
    Value::Object(input)
}

/// Decides with `engine`'s current policy set; without an engine, ignore ([`NO_POLICY`]).
pub fn decide(engine: Option<&PolicyEngine>, input: Value) -> Decision {
    match engine {
        Some(engine) => engine.decide(PolicyKind::Push, input),
        None => Decision {
            kind: PolicyKind::Push,
            outcome: Outcome::Ignore,
            reasons: vec![NO_POLICY.to_owned()],
            warnings: Vec::new(),
            ttl_seconds: None,
            session_policy: None,
            policy_digest: String::new(),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::policy::PolicySet;
    use crate::runs::StackSpec;

    fn fixture(name: &str) -> VcsEvent {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/vcs/testdata").join(name);
        let payload = std::fs::read(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let event = if name.starts_with("push") { "push" } else { "pull_request" };
        VcsEvent::parse(event, &payload).unwrap_or_else(|e| panic!("{name}: {e}")).unwrap_or_else(|| panic!("{name}"))
    }

    fn stack(labels: Value) -> Stack {
        let spec: StackSpec = serde_json::from_value(json!({
            "name": "hello", "repository": "https://github.com/Codertocat/Hello-World.git",
            "branch": "master", "labels": labels, "triggers": ["*.md"],
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        Stack::new(spec, 1, "admin".into())
    }

    /// The shipped library, with `settings` overriding data.json's settings.
    fn library(settings: Value) -> PolicySet {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        let mut data: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("data.json")).unwrap_or_default())
            .unwrap_or_default();
        if let (Some(target), Some(overrides)) = (data["keyward"]["settings"].as_object_mut(), settings.as_object()) {
            target.extend(overrides.clone());
        }
        let sources = [
            ("push.rego".to_owned(), std::fs::read_to_string(dir.join("push.rego")).unwrap_or_default()),
            ("data.json".to_owned(), data.to_string()),
        ];
        PolicySet::from_sources(&dir, &sources, Duration::from_secs(1)).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_pull_request_input_carries_the_observed_pull_request() {
        let event = fixture("pull_request.opened.json");
        let files = vec!["README.md".to_owned()];
        let input = input(&stack(json!({})), &event, None, Some("OPS-7"), &files);
        assert_eq!(
            input,
            json!({
                "event": "pull_request", "action": "opened", "repository": "Codertocat/Hello-World",
                "sender": "Codertocat", "changed_files": ["README.md"],
                "stack": crate::runs::stack_object(&stack(json!({}))),
                "pull_request": {
                    "number": 2, "title": "Update the README with new information.", "author": "Codertocat",
                    "base": "master", "head": "changes", "head_sha": "ec26c3e57ca3a959ca5aad62de7213c562f8c821",
                    "url": "https://github.com/Codertocat/Hello-World/pull/2", "draft": false, "fork": false,
                    "merged": false, "labels": ["bug"], "ticket": "OPS-7",
                },
            })
        );
        assert_eq!(input["stack"]["triggers"], json!(["*.md"]));
    }

    #[test]
    fn a_push_input_has_its_branch_and_the_merged_pull_request_if_found() {
        let push = fixture("push.json");
        let merged = fixture("pull_request.closed-merged.json");
        let EventKind::PullRequest { pull_request, .. } = &merged.kind else { panic!("{merged:?}") };
        let input = input(&stack(json!({})), &push, Some(pull_request), None, &[]);
        assert_eq!(input["event"], "push");
        assert_eq!(input.get("action"), None);
        assert_eq!(
            input["push"],
            json!({"ref": "refs/heads/master", "branch": "master", "before": "0".repeat(40),
                   "after": "6113728f27ae82c7b1a177c8d03f9e96e0adf246", "created": true, "deleted": false, "forced": false})
        );
        assert_eq!((input["pull_request"]["merged"].clone(), input["pull_request"].get("ticket")), (json!(true), None));
        let tag = input_for_tag();
        assert_eq!((tag["push"].get("branch"), tag.get("pull_request")), (None, None));
    }

    fn input_for_tag() -> Value {
        input(&stack(json!({})), &fixture("push.tag-deleted.json"), None, None, &[])
    }

    #[test]
    fn the_shipped_policy_on_real_payloads() {
        let set = library(json!({}));
        let files = vec!["README.md".to_owned()];
        let decide = |name: &str, labels: Value| {
            set.decide(PolicyKind::Push, input(&stack(labels), &fixture(name), None, None, &files))
        };
        assert_eq!(decide("pull_request.opened.json", json!({})).outcome, Outcome::Propose);
        assert_eq!(decide("pull_request.synchronize.json", json!({})).outcome, Outcome::Propose);
        let closed = decide("pull_request.closed-merged.json", json!({}));
        assert_eq!(closed.outcome, Outcome::Ignore);
        assert!(closed.reasons.iter().any(|r| r.contains("pull_request closed")), "{closed:?}");
        let fork = decide("pull_request.opened-fork.json", json!({}));
        assert_eq!(
            (fork.outcome, fork.reasons.as_slice()),
            (
                Outcome::Ignore,
                ["pull requests from forks are not planned: their code would run with the stack's credentials"
                    .to_owned()]
                .as_slice()
            )
        );
        assert_eq!(decide("push.json", json!({})).outcome, Outcome::Track);
        let off = decide("push.json", json!({"autodeploy": "false"}));
        assert_eq!(off.outcome, Outcome::Ignore);
        assert!(off.reasons.iter().any(|r| r.contains("autodeploy=false")), "{off:?}");
        assert_eq!(decide("push.tag-deleted.json", json!({})).outcome, Outcome::Ignore);
    }

    /// `propose_forks` lets forks be proposed only when it is exactly `true`.
    #[test]
    fn forks_are_proposed_only_when_the_setting_says_true() {
        let fork = fixture("pull_request.opened-fork.json");
        let input = input(&stack(json!({})), &fork, None, None, &["README.md".to_owned()]);
        for (setting, outcome) in
            [(json!(true), Outcome::Propose), (json!(false), Outcome::Ignore), (json!("true"), Outcome::Ignore)]
        {
            let decision = library(json!({"propose_forks": setting})).decide(PolicyKind::Push, input.clone());
            assert_eq!(decision.outcome, outcome, "propose_forks = {setting}: {decision:?}");
        }
    }

    #[test]
    fn without_a_policy_engine_everything_is_ignored() {
        let decision = decide(None, input_for_tag());
        assert_eq!(
            (decision.outcome, decision.reasons.as_slice()),
            (Outcome::Ignore, [NO_POLICY.to_owned()].as_slice())
        );
        assert!(!decision.permits());
    }
}
