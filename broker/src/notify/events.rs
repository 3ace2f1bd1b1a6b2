//! Which audit entries are events someone is told about, and what the message says.
//!
//! Why from the audit log: every event here is already an entry (a run's state change, a denied
//! exchange, a stack's drift state change), committed with the change it records. Reading them
//! back means a notification is never sent for something that did not happen, never lost for
//! something that did, and never tied to the request path (a receiver that is down delays a
//! message, never an exchange). Only transitions are entries, so a scheduled check that finds
//! the same drift again sends nothing.

use std::fmt;
use std::str::FromStr;

use serde_json::{Value, json};

use crate::audit::{Entry, kinds};

/// An event a `[[notifications]]` entry may subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum EventName {
    /// A stack's drift check found drift where the last one found none (or none ran).
    StackDrifted,
    /// A drifted stack's check found it in sync again.
    StackInSync,
    /// A run planned and waits for a reviewer.
    RunAwaitingApproval,
    /// A run failed.
    RunFailed,
    /// A run finished (applied, or a drift check ran).
    RunFinished,
    /// An exchange was refused by the broker's rules or the policy.
    CredentialsDenied,
}

impl EventName {
    /// Every event, as configured.
    pub const ALL: [Self; 6] = [
        Self::StackDrifted,
        Self::StackInSync,
        Self::RunAwaitingApproval,
        Self::RunFailed,
        Self::RunFinished,
        Self::CredentialsDenied,
    ];

    /// The name in the configuration and in the messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::StackDrifted => "stack.drifted",
            Self::StackInSync => "stack.in_sync",
            Self::RunAwaitingApproval => "run.awaiting_approval",
            Self::RunFailed => "run.failed",
            Self::RunFinished => "run.finished",
            Self::CredentialsDenied => "credentials.denied",
        }
    }
}

impl fmt::Display for EventName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Not an event name; the message lists the known ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown event `{0}`; known: stack.drifted, stack.in_sync, run.awaiting_approval, run.failed, run.finished, credentials.denied"
)]
pub struct UnknownEvent(pub String);

impl FromStr for EventName {
    type Err = UnknownEvent;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|e| e.as_str() == text).ok_or_else(|| UnknownEvent(text.to_owned()))
    }
}

/// One event, read from an audit entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// What happened.
    pub name: EventName,
    /// The entry it was read from.
    pub seq: u64,
    /// When (Unix seconds).
    pub at: i64,
    /// The stack, if any.
    pub stack: Option<String>,
    /// The run, if any.
    pub run: Option<String>,
    /// One line for people.
    pub summary: String,
    /// The facts, for machines.
    pub details: Value,
}

/// The audit kinds an event can be read from: the scanner parses no other entry.
pub const EVENT_KINDS: [&str; 3] =
    [kinds::RUN_STATE_CHANGED, kinds::CREDENTIALS_DENIED, kinds::STACK_DRIFT_STATE_CHANGED];

/// The event `entry` is, if it is one.
pub fn event_of(entry: &Entry) -> Option<Event> {
    let (name, summary, details) = match entry.kind.as_str() {
        kinds::RUN_STATE_CHANGED => run_event(entry)?,
        kinds::CREDENTIALS_DENIED => denial_event(entry),
        kinds::STACK_DRIFT_STATE_CHANGED => drift_event(entry)?,
        _ => return None,
    };
    Some(Event {
        name,
        seq: entry.seq,
        at: entry.at,
        stack: entry.context.stack_id.clone(),
        run: entry.context.run_id.clone(),
        summary,
        details,
    })
}

/// What an event says: its name, one line for people, the facts for machines.
type Said = (EventName, String, Value);

fn detail(entry: &Entry, key: &str) -> String {
    entry.details.get(key).and_then(Value::as_str).unwrap_or_default().to_owned()
}

fn strings<'a>(entry: &'a Entry, key: &str) -> Vec<&'a str> {
    entry
        .details
        .get(key)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// A run planned (awaiting approval), failed or finished.
fn run_event(entry: &Entry) -> Option<Said> {
    let context = &entry.context;
    let (to, why) = (detail(entry, "to"), detail(entry, "detail"));
    let name = match to.as_str() {
        "planned" => EventName::RunAwaitingApproval,
        "failed" => EventName::RunFailed,
        "finished" => EventName::RunFinished,
        _ => return None,
    };
    let what = match name {
        EventName::RunAwaitingApproval => "planned and awaits approval",
        EventName::RunFailed => "failed",
        _ => "finished",
    };
    let because = if why.is_empty() { String::new() } else { format!(": {why}") };
    let (run_id, stack) = (context.run_id.as_deref().unwrap_or("?"), context.stack_id.as_deref().unwrap_or("?"));
    let facts = json!({ "from": detail(entry, "from"), "to": to, "detail": why, "triggered_by": context.triggered_by });
    Some((name, format!("run {run_id} of stack {stack} {what}{because}"), facts))
}

/// An exchange refused.
fn denial_event(entry: &Entry) -> Said {
    let context = &entry.context;
    let target = context.target.as_deref().unwrap_or("?");
    let reasons = strings(entry, "reasons");
    let who = context.run_id.as_deref().or(context.subject_jti.as_deref()).unwrap_or("a caller");
    let summary = format!("credentials for {target} denied to {who}: {}", reasons.join("; "));
    let facts = json!({ "target": target, "reasons": reasons, "subject_issuer": context.subject_issuer });
    (EventName::CredentialsDenied, summary, facts)
}

/// A stack newly drifted, or back in sync after drift.
fn drift_event(entry: &Entry) -> Option<Said> {
    let previously_drifted = entry.details.get("previously_drifted").and_then(Value::as_bool) == Some(true);
    let name = match detail(entry, "to").as_str() {
        "drifted" if !previously_drifted => EventName::StackDrifted,
        "in_sync" if previously_drifted => EventName::StackInSync,
        _ => return None,
    };
    let stack = entry.context.stack_id.as_deref().unwrap_or("?");
    let addresses = strings(entry, "addresses");
    let summary = match name {
        EventName::StackDrifted if addresses.is_empty() => format!("stack {stack} drifted"),
        EventName::StackDrifted => format!("stack {stack} drifted: {}", addresses.join(", ")),
        _ => format!("stack {stack} is back in sync"),
    };
    let mut details = Value::Object(entry.details.clone());
    if let Some(object) = details.as_object_mut() {
        object.remove("stack");
    }
    Some((name, summary, details))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Context;

    fn entry(kind: &str, details: Value) -> Entry {
        let context = Context { run_id: Some("run-1".into()), stack_id: Some("net".into()), ..Context::default() };
        Entry { seq: 7, at: 100, kind: kind.into(), context, details: details.as_object().cloned().unwrap_or_default() }
    }

    #[test]
    fn run_transitions_are_events_and_other_entries_are_not() {
        let failed = event_of(&entry(
            kinds::RUN_STATE_CHANGED,
            json!({"from": "applying", "to": "failed", "detail": "apply failed"}),
        ));
        let failed = failed.unwrap();
        assert_eq!((failed.name, failed.seq, failed.run.as_deref()), (EventName::RunFailed, 7, Some("run-1")));
        assert_eq!(failed.summary, "run run-1 of stack net failed: apply failed");
        let waiting = event_of(&entry(kinds::RUN_STATE_CHANGED, json!({"from": "planning", "to": "planned"})));
        assert_eq!(waiting.map(|e| e.name), Some(EventName::RunAwaitingApproval));
        assert!(event_of(&entry(kinds::RUN_STATE_CHANGED, json!({"from": "queued", "to": "planning"}))).is_none());
        assert!(event_of(&entry(kinds::TOKEN_MINTED, json!({}))).is_none());
    }

    #[test]
    fn drift_state_changes_are_events_only_as_transitions() {
        let changed = kinds::STACK_DRIFT_STATE_CHANGED;
        let first_drift =
            json!({"from": "in_sync", "to": "drifted", "previously_drifted": false, "addresses": ["a.b"]});
        let drifted = event_of(&entry(changed, first_drift)).map(|e| (e.name, e.summary));
        assert_eq!(drifted, Some((EventName::StackDrifted, "stack net drifted: a.b".into())));
        let back = event_of(&entry(changed, json!({"from": "drifted", "to": "in_sync", "previously_drifted": true})));
        assert_eq!(back.map(|e| e.name), Some(EventName::StackInSync));
        let first = json!({"from": "unknown", "to": "in_sync", "previously_drifted": false});
        assert!(event_of(&entry(changed, first)).is_none(), "first check in sync: nothing to tell");
        let failing = json!({"from": "drifted", "to": "failed", "previously_drifted": true});
        assert!(event_of(&entry(changed, failing)).is_none());
        let again = json!({"from": "failed", "to": "drifted", "previously_drifted": true});
        assert!(event_of(&entry(changed, again)).is_none(), "drift found again after a failed check: no news");
    }

    #[test]
    fn event_names_parse_and_unknown_ones_are_named() {
        for name in EventName::ALL {
            assert_eq!(name.as_str().parse::<EventName>(), Ok(name));
        }
        assert_eq!("run.exploded".parse::<EventName>(), Err(UnknownEvent("run.exploded".into())));
    }
}
