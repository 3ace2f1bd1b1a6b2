//! Policy inputs: [`PolicyInput`], an input in the engine's own representation, and the pieces
//! every input shares (`keyward policy schema TYPE`): `input.run`, the same shape whichever policy
//! type reads it and wherever the run came from (a run token's claims, a CI token's mapped claims,
//! a stored run), and `input.time`, since policies have no clock.
//!
//! An input written as JSON is converted into the engine's values on every decision; the
//! credentials input, built on every exchange, is built as engine values directly (half the cost:
//! `docs/performance.md`). Both must give the same document; the tests below compare them.

use std::collections::BTreeMap;

use keyward_proto::claims::RunChain;
use serde::{Deserialize as _, Serialize};
use serde_json::{Value, json};

/// A decision's input (or a part of one) as the policy engine holds it. Build one from JSON
/// (`From<serde_json::Value>`), from a string, number or list of strings, or field by field with
/// [`InputObject`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyInput(regorus::Value);

impl PolicyInput {
    /// JSON `null`.
    pub fn null() -> Self {
        Self(regorus::Value::Null)
    }

    /// A list of strings.
    pub fn strings<S: AsRef<str>>(items: impl IntoIterator<Item = S>) -> Self {
        Self(regorus::Value::from(items.into_iter().map(|s| regorus::Value::from(s.as_ref())).collect::<Vec<_>>()))
    }

    /// A JSON object's fields (verified claims, say), converted.
    pub fn json_object(object: &serde_json::Map<String, Value>) -> Self {
        // Read in place, without a copy of the JSON tree; any JSON object is a regorus value.
        Self(regorus::Value::deserialize(object).unwrap_or_else(|_| regorus::Value::new_object()))
    }

    /// The same document as JSON, for callers that inspect an input (fuzzing, `policy eval`).
    pub fn to_json(&self) -> Value {
        // Every value built here is JSON: strings, numbers, lists and objects with string keys.
        serde_json::to_value(&self.0).unwrap_or(Value::Null)
    }

    pub(super) fn into_value(self) -> regorus::Value {
        self.0
    }
}

impl From<Value> for PolicyInput {
    fn from(value: Value) -> Self {
        Self(regorus::Value::from(value))
    }
}

impl From<&Value> for PolicyInput {
    fn from(value: &Value) -> Self {
        // Read in place, without a copy of the JSON tree; any JSON value is a regorus value.
        Self(regorus::Value::deserialize(value).unwrap_or(regorus::Value::Null))
    }
}

impl From<&str> for PolicyInput {
    fn from(value: &str) -> Self {
        Self(regorus::Value::from(value))
    }
}

impl From<u64> for PolicyInput {
    fn from(value: u64) -> Self {
        Self(regorus::Value::from(value))
    }
}

impl From<i64> for PolicyInput {
    fn from(value: i64) -> Self {
        Self(regorus::Value::from(value))
    }
}

impl<V: Into<PolicyInput>> From<Option<V>> for PolicyInput {
    /// `None` is `null`; to leave a field out instead, use [`InputObject::field_if`].
    fn from(value: Option<V>) -> Self {
        value.map_or_else(Self::null, Into::into)
    }
}

/// An input object, field by field.
#[derive(Debug, Default)]
pub struct InputObject(BTreeMap<regorus::Value, regorus::Value>);

impl InputObject {
    /// An empty object.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key`.
    #[must_use]
    pub fn field(mut self, key: &str, value: impl Into<PolicyInput>) -> Self {
        self.0.insert(regorus::Value::from(key), value.into().0);
        self
    }

    /// Sets `key` when there is a value; leaves it out (never `null`) when there is none.
    #[must_use]
    pub fn field_if<V: Into<PolicyInput>>(self, key: &str, value: Option<V>) -> Self {
        match value {
            Some(value) => self.field(key, value),
            None => self,
        }
    }
}

impl From<InputObject> for PolicyInput {
    fn from(object: InputObject) -> Self {
        Self(regorus::Value::from(object.0))
    }
}

impl<K: AsRef<str>, V: AsRef<str>> From<&BTreeMap<K, V>> for PolicyInput {
    /// An object of strings (labels).
    fn from(map: &BTreeMap<K, V>) -> Self {
        map.iter().fold(InputObject::new(), |object, (k, v)| object.field(k.as_ref(), v.as_ref())).into()
    }
}

/// `input.run`: a run's chain of custody ([`RunChain`], converted by `From`) under the names
/// policies read (`id`, not `run_id`), without `asserted_by`. Absent fields are left out, never
/// `null`, so `not input.run.ref` means "none".
#[derive(Debug, Clone, Serialize)]
pub struct RunInput<'a> {
    /// Run ID.
    pub id: &'a str,
    /// Stack ID.
    pub stack_id: &'a str,
    /// Stack name.
    pub stack: &'a str,
    /// `plan` or `apply`.
    pub phase: &'a str,
    /// Repository URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repository: Option<&'a str>,
    /// Commit SHA.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit_sha: Option<&'a str>,
    /// Git ref.
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<&'a str>,
    /// Pull request number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pull_request: Option<u64>,
    /// Change ticket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ticket: Option<&'a str>,
    /// Where the pull request and ticket were observed (`github`); absent: the submitter's word.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pull_request_source: Option<&'a str>,
    /// Who started the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub triggered_by: Option<&'a str>,
    /// Who approved it.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub approved_by: &'a [String],
}

impl<'a> From<&'a RunChain> for RunInput<'a> {
    fn from(run: &'a RunChain) -> Self {
        Self {
            id: &run.run_id,
            stack_id: &run.stack_id,
            stack: &run.stack,
            phase: run.phase.as_str(),
            repository: run.repository.as_deref(),
            commit_sha: run.commit_sha.as_deref(),
            git_ref: run.git_ref.as_deref(),
            pull_request: run.pull_request,
            ticket: run.ticket.as_deref(),
            pull_request_source: run.pull_request_source.as_deref(),
            triggered_by: run.triggered_by.as_deref(),
            approved_by: &run.approved_by,
        }
    }
}

impl RunInput<'_> {
    /// As JSON for the input document.
    pub fn to_value(&self) -> Value {
        // Strings, integers and a list of strings always serialise.
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// As the engine's value (the same document as [`to_value`](Self::to_value)).
    pub fn to_input(&self) -> PolicyInput {
        InputObject::new()
            .field("id", self.id)
            .field("stack_id", self.stack_id)
            .field("stack", self.stack)
            .field("phase", self.phase)
            .field_if("repository", self.repository)
            .field_if("commit_sha", self.commit_sha)
            .field_if("ref", self.git_ref)
            .field_if("pull_request", self.pull_request)
            .field_if("ticket", self.ticket)
            .field_if("pull_request_source", self.pull_request_source)
            .field_if("triggered_by", self.triggered_by)
            .field_if("approved_by", (!self.approved_by.is_empty()).then(|| PolicyInput::strings(self.approved_by)))
            .into()
    }
}

/// `input.time`'s fields for `now`: `(rfc3339, weekday, hour_utc)`.
fn time_fields(now: i64) -> (String, &'static str, i64) {
    let days = now.div_euclid(86_400);
    let seconds = now.rem_euclid(86_400);
    const WEEKDAYS: [&str; 7] = ["Thursday", "Friday", "Saturday", "Sunday", "Monday", "Tuesday", "Wednesday"];
    let weekday = WEEKDAYS.get(usize::try_from(days.rem_euclid(7)).unwrap_or(0)).copied().unwrap_or("Thursday");
    (crate::clock::rfc3339(now), weekday, seconds / 3600)
}

/// `input.time`: `{unix, rfc3339, weekday, hour_utc}`.
pub fn time(now: i64) -> Value {
    let (rfc3339, weekday, hour_utc) = time_fields(now);
    json!({ "unix": now, "rfc3339": rfc3339, "weekday": weekday, "hour_utc": hour_utc })
}

/// [`time`] as the engine's value.
pub fn time_input(now: i64) -> PolicyInput {
    let (rfc3339, weekday, hour_utc) = time_fields(now);
    InputObject::new()
        .field("unix", now)
        .field("rfc3339", rfc3339.as_str())
        .field("weekday", weekday)
        .field("hour_utc", hour_utc)
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_known_answers() {
        assert_eq!(time(0)["rfc3339"], "1970-01-01T00:00:00Z");
        assert_eq!(time(0)["weekday"], "Thursday");
        assert_eq!(time(1_795_400_000)["rfc3339"], "2026-11-23T02:13:20Z");
        assert_eq!(time(1_795_400_000)["weekday"], "Monday");
        assert_eq!(time(951_782_400)["rfc3339"], "2000-02-29T00:00:00Z", "leap day");
        assert_eq!(time(1_795_400_000 + 13 * 3600)["hour_utc"], 15);
    }

    #[test]
    fn absent_run_fields_are_left_out() {
        let run = RunInput {
            id: "r",
            stack_id: "s",
            stack: "s",
            phase: "plan",
            repository: None,
            commit_sha: Some("abc"),
            git_ref: None,
            pull_request: None,
            ticket: None,
            pull_request_source: None,
            triggered_by: None,
            approved_by: &[],
        };
        assert_eq!(
            run.to_value(),
            json!({"id": "r", "stack_id": "s", "stack": "s", "phase": "plan", "commit_sha": "abc"})
        );
        assert_eq!(run.to_input(), PolicyInput::from(run.to_value()));
    }

    #[test]
    fn built_inputs_equal_their_json() {
        let approved = ["bob".to_owned(), "carol".to_owned()];
        let run = RunInput {
            id: "run-1",
            stack_id: "network",
            stack: "network",
            phase: "apply",
            repository: Some("https://git.example.com/platform/infra.git"),
            commit_sha: Some("0123abc"),
            git_ref: Some("refs/heads/main"),
            pull_request: Some(42),
            ticket: Some("CHG-7"),
            pull_request_source: Some("github"),
            triggered_by: Some("alice"),
            approved_by: &approved,
        };
        assert_eq!(run.to_input(), PolicyInput::from(run.to_value()));
        for now in [0, 1_795_400_000, -86_401] {
            assert_eq!(time_input(now), PolicyInput::from(time(now)), "{now}");
        }
        let labels = BTreeMap::from([("env".to_owned(), "prod".to_owned())]);
        assert_eq!(PolicyInput::from(&labels), PolicyInput::from(json!({"env": "prod"})));
        assert_eq!(PolicyInput::from(None::<u64>), PolicyInput::from(Value::Null));
        assert_eq!(PolicyInput::from(json!({"a": [1, "b"]})).to_json(), json!({"a": [1, "b"]}));
        let document = json!({"a": [1, -2, 2.5, 1e300, "b", null, true, {"c": {}}], "d": u64::MAX});
        assert_eq!(PolicyInput::from(&document), PolicyInput::from(document.clone()));
        let object = document.as_object().cloned().unwrap_or_default();
        assert_eq!(PolicyInput::json_object(&object), PolicyInput::from(document));
    }
}
