//! Pieces every policy input shares (`keyward policy schema TYPE`): `input.run`, the same shape
//! whichever policy type reads it and wherever the run came from (a run token's claims, a CI
//! token's mapped claims, a stored run), and `input.time`, since policies have no clock.

use keyward_proto::claims::RunChain;
use serde::Serialize;
use serde_json::{Value, json};

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
}

/// `input.time`: `{unix, rfc3339, weekday, hour_utc}`.
pub fn time(now: i64) -> Value {
    let days = now.div_euclid(86_400);
    let seconds = now.rem_euclid(86_400);
    const WEEKDAYS: [&str; 7] = ["Thursday", "Friday", "Saturday", "Sunday", "Monday", "Tuesday", "Wednesday"];
    let weekday = WEEKDAYS.get(usize::try_from(days.rem_euclid(7)).unwrap_or(0)).copied().unwrap_or("Thursday");
    json!({
        "unix": now,
        "rfc3339": crate::clock::rfc3339(now),
        "weekday": weekday,
        "hour_utc": seconds / 3600,
    })
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
            triggered_by: None,
            approved_by: &[],
        };
        assert_eq!(
            run.to_value(),
            json!({"id": "r", "stack_id": "s", "stack": "s", "phase": "plan", "commit_sha": "abc"})
        );
    }
}
