//! What a policy evaluation concluded, per policy type.

use serde::Serialize;
use serde_json::Value;

use super::PolicyKind;

/// The verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// `credentials`, `run`, `plan`, `scan`: go ahead.
    Allow,
    /// `credentials`, `run`, `plan`, `scan`: refused.
    Deny,
    /// `approval`: enough approvals.
    Approve,
    /// `approval`: rejected.
    Reject,
    /// `approval`: neither yet.
    Pending,
    /// `push`: plan the pull request's head, read-only, never applied.
    Propose,
    /// `push`: run the stack on the pushed branch, as a normal run.
    Track,
    /// `push`: do nothing (also the answer to every failure: a push decision fails closed).
    Ignore,
}

/// One decision, with everything the policy said and the digest of the set that said it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// Which policy type decided.
    pub kind: PolicyKind,
    /// The verdict.
    pub outcome: Outcome,
    /// Why it was refused (the policy's `deny`/`reject` messages, or the evaluation failure); for a
    /// pending approval, what the run waits for (`pending`).
    pub reasons: Vec<String>,
    /// `keyward.run`, `keyward.plan` and `keyward.scan` warnings.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// `keyward.credentials`: lifetime cap the policy imposes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
    /// `keyward.credentials`: an AWS session policy to attach.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_policy: Option<serde_json::Value>,
    /// SHA-256 of the policy set that decided.
    pub policy_digest: String,
}

impl Decision {
    /// Whether the action may proceed (`allow` or `approve`). Never for a push decision, whatever
    /// it says: `propose` and `track` start runs that the run policy still judges.
    pub fn permits(&self) -> bool {
        matches!(self.outcome, Outcome::Allow | Outcome::Approve)
    }

    /// A deny because evaluation itself failed: deny by default, with the reason.
    pub(crate) fn failed(kind: PolicyKind, reason: String, policy_digest: String) -> Self {
        let outcome = match kind {
            PolicyKind::Approval => Outcome::Pending,
            PolicyKind::Push => Outcome::Ignore,
            _ => Outcome::Deny,
        };
        Self {
            kind,
            outcome,
            reasons: vec![format!("policy evaluation failed: {reason}")],
            warnings: Vec::new(),
            ttl_seconds: None,
            session_policy: None,
            policy_digest,
        }
    }

    /// A deny because evaluation ran past its time `limit`, saying so rather than "failed": an
    /// operator reading the audit log can tell a slow policy from a broken one.
    pub(crate) fn timed_out(kind: PolicyKind, limit: std::time::Duration, policy_digest: String) -> Self {
        let reason = format!("policy evaluation ran past its time limit of {}", humantime::format_duration(limit));
        Self { reasons: vec![reason], ..Self::failed(kind, String::new(), policy_digest) }
    }

    /// Interprets the package document (or just its output rules) a policy produced. An output
    /// of the wrong shape fails the decision closed, naming the rule.
    pub fn from_document(kind: PolicyKind, document: &Value, policy_digest: String) -> Self {
        let empty = Self {
            kind,
            outcome: Outcome::Deny,
            reasons: Vec::new(),
            warnings: Vec::new(),
            ttl_seconds: None,
            session_policy: None,
            policy_digest: policy_digest.clone(),
        };
        let result = match kind {
            PolicyKind::Credentials => credentials(document, empty),
            PolicyKind::Run | PolicyKind::Plan | PolicyKind::Scan => gate(document, empty),
            PolicyKind::Approval => approval(document, empty),
            PolicyKind::Push => push(document, empty),
        };
        result.unwrap_or_else(|reason| Self::failed(kind, reason, policy_digest))
    }
}

/// `keyward.credentials`: allowed only when `allow` is true and no `deny` message exists; a
/// `ttl_seconds` or `session_policy` of the wrong shape fails the decision.
fn credentials(document: &Value, mut decision: Decision) -> Result<Decision, String> {
    let denies = messages(document, "deny")?;
    let allowed = flag(document, "allow")?;
    decision.ttl_seconds = match document.get("ttl_seconds") {
        None | Some(Value::Null) => None,
        Some(value) => Some(
            value
                .as_u64()
                .filter(|ttl| *ttl > 0)
                .ok_or_else(|| format!("`ttl_seconds` must be a positive integer, got {value}"))?,
        ),
    };
    decision.session_policy = match document.get("session_policy") {
        None | Some(Value::Null) => None,
        Some(value @ Value::Object(_)) => Some(value.clone()),
        Some(other) => return Err(format!("`session_policy` must be an object, got {other}")),
    };
    allow_unless_denied(allowed, denies, decision)
}

/// `keyward.run`, `keyward.plan` and `keyward.scan`: like `credentials`, allowed only when `allow` is true and no
/// `deny` message exists; `warn` is shown. (A deny-only package gets its `allow` from the broker's
/// collector: `collector.rs`.)
fn gate(document: &Value, mut decision: Decision) -> Result<Decision, String> {
    let denies = messages(document, "deny")?;
    let allowed = flag(document, "allow")?;
    decision.warnings = messages(document, "warn")?;
    allow_unless_denied(allowed, denies, decision)
}

/// Allow only with `allowed` and no `denies`; a deny always says why.
fn allow_unless_denied(allowed: bool, denies: Vec<String>, mut decision: Decision) -> Result<Decision, String> {
    decision.outcome = if allowed && denies.is_empty() { Outcome::Allow } else { Outcome::Deny };
    decision.reasons = denies;
    if decision.outcome == Outcome::Deny && decision.reasons.is_empty() {
        decision.reasons.push("no rule allowed the request (deny by default)".to_owned());
    }
    Ok(decision)
}

/// `keyward.approval`: any `reject` message rejects; else `approve` approves; else the run
/// waits, for what `pending` says.
fn approval(document: &Value, mut decision: Decision) -> Result<Decision, String> {
    let rejections = messages(document, "reject")?;
    decision.outcome = if !rejections.is_empty() {
        Outcome::Reject
    } else if flag(document, "approve")? {
        Outcome::Approve
    } else {
        Outcome::Pending
    };
    decision.reasons = match decision.outcome {
        Outcome::Reject => rejections,
        Outcome::Pending => messages(document, "pending")?,
        _ => Vec::new(),
    };
    Ok(decision)
}

/// `keyward.push`: `propose` or `track` (not both: that is a policy error, and ignored), else
/// ignore; `reasons` says why either way.
fn push(document: &Value, mut decision: Decision) -> Result<Decision, String> {
    let propose = flag(document, "propose")?;
    let track = flag(document, "track")?;
    decision.reasons = messages(document, "reasons")?;
    decision.outcome = match (propose, track) {
        (true, true) => {
            return Err("`propose` and `track` are both true: a change is proposed or tracked, not both".to_owned());
        }
        (true, false) => Outcome::Propose,
        (false, true) => Outcome::Track,
        (false, false) => Outcome::Ignore,
    };
    if decision.outcome == Outcome::Ignore && decision.reasons.is_empty() {
        decision.reasons.push("no rule proposed or tracked the change (ignored by default)".to_owned());
    }
    Ok(decision)
}

/// A message rule: a set of strings (other values shown as JSON), or a boolean (true says the
/// rule's name); anything else is an error naming the rule.
fn messages(document: &Value, rule: &str) -> Result<Vec<String>, String> {
    match document.get(rule) {
        None | Some(Value::Null) | Some(Value::Bool(false)) => Ok(Vec::new()),
        Some(Value::Array(items)) => Ok(items
            .iter()
            .map(|item| match item {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            })
            .collect()),
        Some(Value::Bool(true)) => Ok(vec![format!("{rule} is true")]),
        Some(other) => Err(format!("`{rule}` must be a set of messages, got {other}")),
    }
}

/// A boolean rule; undefined is false, anything but a boolean is an error naming the rule.
fn flag(document: &Value, rule: &str) -> Result<bool, String> {
    match document.get(rule) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(value)) => Ok(*value),
        Some(other) => Err(format!("`{rule}` must be a boolean, got {other}")),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn credentials_need_an_allow_and_no_deny() {
        let d = |doc| Decision::from_document(PolicyKind::Credentials, &doc, "d".into());
        assert_eq!(d(json!({"allow": true})).outcome, Outcome::Allow);
        assert_eq!(d(json!({})).outcome, Outcome::Deny, "undefined is deny");
        assert_eq!(d(json!({})).reasons, ["no rule allowed the request (deny by default)"]);
        let both = d(json!({"allow": true, "deny": ["prod needs two approvals"]}));
        assert_eq!(
            (both.outcome, both.reasons.as_slice()),
            (Outcome::Deny, ["prod needs two approvals".to_owned()].as_slice())
        );
        assert_eq!(d(json!({"allow": true, "ttl_seconds": 900})).ttl_seconds, Some(900));
    }

    #[test]
    fn malformed_outputs_are_denies_that_say_why() {
        let d = |doc| Decision::from_document(PolicyKind::Credentials, &doc, "d".into());
        for doc in [
            json!({"allow": "yes"}),
            json!({"allow": true, "ttl_seconds": -5}),
            json!({"allow": true, "session_policy": 3}),
        ] {
            let decision = d(doc.clone());
            assert_eq!(decision.outcome, Outcome::Deny, "{doc}");
            assert!(decision.reasons[0].starts_with("policy evaluation failed"), "{decision:?}");
        }
    }

    #[test]
    fn runs_and_plans_need_an_allow_and_no_deny() {
        for kind in [PolicyKind::Run, PolicyKind::Plan, PolicyKind::Scan] {
            let d = |doc| Decision::from_document(kind, &doc, "d".into());
            assert_eq!(d(json!({"allow": true})).outcome, Outcome::Allow);
            assert_eq!(d(json!({"allow": true, "warn": ["big"]})).warnings, ["big"]);
            let none = d(json!({}));
            assert_eq!(
                (none.outcome, none.reasons.as_slice()),
                (Outcome::Deny, ["no rule allowed the request (deny by default)".to_owned()].as_slice())
            );
            assert_eq!(d(json!({"deny": []})).outcome, Outcome::Deny, "no deny is not an allow");
            assert_eq!(d(json!({"allow": true, "deny": ["no"]})).reasons, ["no"]);
            assert_eq!(d(json!({"allow": "yes"})).outcome, Outcome::Deny);
        }
    }

    #[test]
    fn push_decisions_propose_track_or_ignore_and_never_permit() {
        let d = |doc| Decision::from_document(PolicyKind::Push, &doc, "d".into());
        let proposed = d(json!({"propose": true, "reasons": ["a pull request to main"]}));
        assert_eq!(
            (proposed.outcome, proposed.reasons.as_slice()),
            (Outcome::Propose, ["a pull request to main".to_owned()].as_slice())
        );
        assert_eq!(d(json!({"track": true, "propose": false})).outcome, Outcome::Track);
        let ignored = d(json!({"reasons": ["a tag"]}));
        assert_eq!((ignored.outcome, ignored.reasons.as_slice()), (Outcome::Ignore, ["a tag".to_owned()].as_slice()));
        assert_eq!(d(json!({})).reasons, ["no rule proposed or tracked the change (ignored by default)"]);
        for doc in
            [json!({"propose": true, "track": true}), json!({"propose": "yes"}), json!({"track": true, "reasons": 3})]
        {
            let decision = d(doc.clone());
            assert_eq!(decision.outcome, Outcome::Ignore, "{doc}");
            assert!(decision.reasons[0].starts_with("policy evaluation failed"), "{doc}: {decision:?}");
        }
        for doc in [json!({"propose": true}), json!({"track": true}), json!({})] {
            assert!(!d(doc).permits(), "a push decision is never an allow");
        }
        let failed = Decision::failed(PolicyKind::Push, "boom".into(), String::new());
        assert_eq!(failed.outcome, Outcome::Ignore);
        let slow = Decision::timed_out(PolicyKind::Push, std::time::Duration::from_millis(5), String::new());
        assert_eq!(slow.outcome, Outcome::Ignore);
    }

    #[test]
    fn approval_outcomes() {
        let d = |doc| Decision::from_document(PolicyKind::Approval, &doc, "d".into()).outcome;
        assert_eq!(d(json!({"approve": true})), Outcome::Approve);
        assert_eq!(d(json!({"approve": true, "reject": ["author approved own run"]})), Outcome::Reject);
        assert_eq!(d(json!({})), Outcome::Pending);
    }
}
