//! A stack's drift: its state from the last drift check that ended (docs/drift.md), its drift
//! schedule and what to do about drift once found, as stored and as the API shows them.
//!
//! The state is written with the check's end, in the same append as its `job.finished` entry:
//! `in_sync` and `drifted` when the check ran to the end, `failed` (with why) when it did not or
//! could not be queued, `unknown` before any check. `since` is the first check that found the
//! current drift: checks that keep finding drift, or fail, keep it; one that finds none clears it.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use super::cron::Schedule;
use super::jobs::{Drift, JobOutcome};
use super::spec::Stack;
use crate::audit::{AuditEvent, Context, Kind};
use crate::store::drift::{self as rows, DriftCounts, DriftRow};
use crate::store::write::Write;
use crate::store::{StackRow, StoreError};

/// The most drifted resource addresses kept per check (the counts say how many there are).
pub const MAX_ADDRESSES: usize = 256;
/// The longest address kept.
const MAX_ADDRESS: usize = 512;

/// What to do about drift once a check finds it. Stored and shown; acting on it comes later.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Remediation {
    /// Nothing: the drift state says it.
    #[default]
    Off,
    /// Plan a deploy of the stack's branch (for review).
    Plan,
    /// Plan and apply it, as the approval policy allows.
    Apply,
}

impl Remediation {
    /// Every value.
    pub const ALL: [Self; 3] = [Self::Off, Self::Plan, Self::Apply];

    /// The stored and shown name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Plan => "plan",
            Self::Apply => "apply",
        }
    }
}

impl fmt::Display for Remediation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A remediation name this build does not know.
#[derive(Debug, thiserror::Error)]
#[error("unknown drift remediation `{0}` (expected `off`, `plan` or `apply`)")]
pub struct UnknownRemediation(pub String);

impl FromStr for Remediation {
    type Err = UnknownRemediation;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| UnknownRemediation(s.to_owned()))
    }
}

/// A stack's drift state, as shown (`"state"` names it; the other fields depend on it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum DriftStatus {
    /// Never checked.
    #[default]
    Unknown,
    /// The last check found the infrastructure as configured.
    InSync {
        /// When that check ended.
        checked_at: i64,
        /// Its run.
        run_id: Option<String>,
    },
    /// The last check found drift.
    Drifted {
        /// When that check ended.
        checked_at: i64,
        /// Its run.
        run_id: Option<String>,
        /// The first check that found this drift.
        since: i64,
        /// Resources to create.
        to_add: i64,
        /// Resources to update in place.
        to_change: i64,
        /// Resources to delete.
        to_destroy: i64,
        /// Resources changed outside Terraform.
        changed_outside: i64,
        /// The drifted resources' addresses (at most [`MAX_ADDRESSES`]).
        addresses: Vec<String>,
    },
    /// The last check failed, or could not be queued.
    Failed {
        /// When.
        checked_at: i64,
        /// Its run, if it had one.
        run_id: Option<String>,
        /// Why.
        error: String,
        /// The first check that found the drift an earlier check found, if one did: a failed
        /// check does not end drift.
        #[serde(skip_serializing_if = "Option::is_none")]
        since: Option<i64>,
    },
}

impl DriftStatus {
    /// The state's name: `unknown`, `in_sync`, `drifted` or `failed`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::InSync { .. } => "in_sync",
            Self::Drifted { .. } => "drifted",
            Self::Failed { .. } => "failed",
        }
    }

    /// Whether the stack is drifted as far as anyone knows: the last check found drift, or it
    /// failed after one that did.
    pub fn is_drifted(&self) -> bool {
        matches!(self, Self::Drifted { .. } | Self::Failed { since: Some(_), .. })
    }

    /// The state of a stored row (`None`: never checked); a row this build cannot read is refused.
    pub(super) fn from_row(stack: &str, row: Option<DriftRow>) -> Result<Self, StoreError> {
        let Some(row) = row else { return Ok(Self::Unknown) };
        let DriftRow { state, checked_at, run_id, error, counts, addresses, since } = row;
        let corrupt = |what: &str| StoreError::Corrupt(format!("stack_drift of `{stack}`: {what}"));
        Ok(match state.as_str() {
            "in_sync" => Self::InSync { checked_at, run_id },
            "drifted" => Self::Drifted {
                checked_at,
                run_id,
                since: since.unwrap_or(checked_at),
                to_add: counts.to_add,
                to_change: counts.to_change,
                to_destroy: counts.to_destroy,
                changed_outside: counts.changed_outside,
                addresses: serde_json::from_str(&addresses).map_err(|e| corrupt(&e.to_string()))?,
            },
            "failed" => Self::Failed { checked_at, run_id, error: error.unwrap_or_default(), since },
            other => return Err(corrupt(&format!("unknown state `{other}`"))),
        })
    }
}

/// A stack's drift schedule and what the scheduler last did about it, as shown.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DriftSettings {
    /// The cron expression (UTC); `null`: no scheduled checks.
    pub drift_schedule: Option<String>,
    /// What to do about drift once found (stored; acted on in a later version).
    pub drift_remediation: Remediation,
    /// The last fire time the scheduler handled.
    pub last_drift_check_at: Option<i64>,
    /// What it did then (queued a run, skipped, could not queue).
    pub last_drift_check: Option<String>,
    /// The next fire time (in the past when the scheduler is behind, as when no replica runs it).
    pub next_drift_check_at: Option<i64>,
}

impl DriftSettings {
    /// The settings of a stored stack; an unreadable schedule or remediation is refused.
    pub(super) fn from_row(row: &StackRow) -> Result<Self, StoreError> {
        let corrupt = |what: String| StoreError::Corrupt(format!("stack `{}`: {what}", row.name));
        let drift_remediation =
            row.drift_remediation.parse().map_err(|e: UnknownRemediation| corrupt(e.to_string()))?;
        let next_drift_check_at = match &row.drift_schedule {
            Some(text) => {
                let schedule = Schedule::parse(text).map_err(|e| corrupt(format!("drift schedule: {e}")))?;
                let after = row.last_drift_check_at.max(row.drift_schedule_set_at).unwrap_or(row.created_at);
                schedule.next_after(after)
            }
            None => None,
        };
        Ok(Self {
            drift_schedule: row.drift_schedule.clone(),
            drift_remediation,
            last_drift_check_at: row.last_drift_check_at,
            last_drift_check: row.last_drift_check.clone(),
            next_drift_check_at,
        })
    }
}

/// The write that records how a drift check of `stack` (run `run_id`) ended at `now`, if it
/// tells anything: what a check that ran found, or why it failed.
pub(super) fn record(stack: &str, run_id: &str, outcome: &JobOutcome, now: i64) -> Option<Write> {
    match outcome {
        JobOutcome::Checked(drift) if drift.drifted => {
            let addresses = serde_json::to_string(&drift.addresses).unwrap_or_else(|_| "[]".to_owned());
            Some(rows::record_drifted(stack, run_id, drift.counts, addresses, now))
        }
        JobOutcome::Checked(_) => Some(rows::record_in_sync(stack, run_id, now)),
        JobOutcome::Failed(error) => Some(rows::record_failed(stack, Some(run_id), error, now)),
        JobOutcome::Succeeded => None,
    }
}

/// The entry recording that a drift check of `stack` ending with `outcome` changes its drift
/// state, if it does: from what (the state before, and whether the stack was drifted as far as
/// anyone knew) to what, with the counts and addresses of drift found. Only changes are
/// recorded, so a check that finds the same drift again says nothing new.
pub(super) fn state_changed(stack: &Stack, outcome: &JobOutcome, context: &Context, now: i64) -> Option<AuditEvent> {
    let to = match outcome {
        JobOutcome::Checked(drift) if drift.drifted => "drifted",
        JobOutcome::Checked(_) => "in_sync",
        JobOutcome::Failed(_) => "failed",
        JobOutcome::Succeeded => return None,
    };
    let from = stack.drift.name();
    if from == to {
        return None;
    }
    let mut event = AuditEvent::new(Kind::StackDriftStateChanged, now, context.clone())
        .with("stack", stack.spec.name.as_str())
        .with("from", from)
        .with("to", to)
        .with("previously_drifted", stack.drift.is_drifted())
        .with_ref("stack", &stack.spec.name);
    if let JobOutcome::Checked(drift) = outcome
        && drift.drifted
    {
        event = event
            .with("addresses", drift.addresses.clone())
            .with("to_add", drift.counts.to_add)
            .with("to_change", drift.counts.to_change)
            .with("to_destroy", drift.counts.to_destroy)
            .with("changed_outside", drift.counts.changed_outside);
    }
    Some(event)
}

/// `drift`'s addresses bounded: at most [`MAX_ADDRESSES`], printable, each at most
/// [`MAX_ADDRESS`] bytes, each once, in the agent's order; counts never negative.
pub(super) fn bounded(drift: Drift) -> Drift {
    let mut addresses: Vec<String> = Vec::new();
    for address in drift.addresses {
        let mut address: String = address.chars().filter(|c| !c.is_control()).collect();
        address.truncate(address.floor_char_boundary(MAX_ADDRESS));
        if !address.is_empty() && !addresses.contains(&address) {
            addresses.push(address);
        }
        if addresses.len() == MAX_ADDRESSES {
            break;
        }
    }
    let counts = DriftCounts {
        to_add: drift.counts.to_add.max(0),
        to_change: drift.counts.to_change.max(0),
        to_destroy: drift.counts.to_destroy.max(0),
        changed_outside: drift.counts.changed_outside.max(0),
    };
    Drift { addresses, counts, ..drift }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(state: &str) -> DriftRow {
        DriftRow {
            state: state.to_owned(),
            checked_at: 200,
            run_id: Some("r".to_owned()),
            error: Some("boom".to_owned()),
            counts: DriftCounts { to_add: 1, to_change: 2, to_destroy: 3, changed_outside: 4 },
            addresses: r#"["a.b"]"#.to_owned(),
            since: Some(100),
        }
    }

    #[test]
    fn each_state_shows_what_it_means() {
        let show = |row: Option<DriftRow>| serde_json::to_value(DriftStatus::from_row("s", row).unwrap()).unwrap();
        assert_eq!(show(None), serde_json::json!({"state": "unknown"}));
        assert_eq!(
            show(Some(row("in_sync"))),
            serde_json::json!({"state": "in_sync", "checked_at": 200, "run_id": "r"})
        );
        assert_eq!(
            show(Some(row("drifted"))),
            serde_json::json!({"state": "drifted", "checked_at": 200, "run_id": "r", "since": 100, "to_add": 1,
                "to_change": 2, "to_destroy": 3, "changed_outside": 4, "addresses": ["a.b"]})
        );
        assert_eq!(
            show(Some(row("failed"))),
            serde_json::json!({"state": "failed", "checked_at": 200, "run_id": "r", "error": "boom", "since": 100})
        );
        assert!(DriftStatus::from_row("s", Some(row("sideways"))).is_err());
    }

    #[test]
    fn remediation_names_round_trip_and_unknown_ones_are_refused() {
        for remediation in Remediation::ALL {
            assert_eq!(remediation.as_str().parse::<Remediation>().ok(), Some(remediation));
        }
        let refused = "fix".parse::<Remediation>().err().map(|e| e.to_string());
        assert_eq!(refused.as_deref(), Some("unknown drift remediation `fix` (expected `off`, `plan` or `apply`)"));
    }

    #[test]
    fn reported_addresses_are_bounded_printable_and_unique() {
        let many = (0..1000).map(|i| format!("terraform_data.r{i}\u{1b}[0m")).collect();
        let counts = DriftCounts { to_add: -1, ..DriftCounts::default() };
        let bounded = bounded(Drift { drifted: true, summary: String::new(), counts, addresses: many });
        assert_eq!(bounded.addresses.len(), MAX_ADDRESSES);
        assert_eq!(bounded.addresses[0], "terraform_data.r0[0m");
        assert_eq!(bounded.counts.to_add, 0);
        let twice = vec!["a".to_owned(), "a".to_owned(), "\n".to_owned(), "é".repeat(400)];
        let bounded = super::bounded(Drift { addresses: twice, ..Drift::default() });
        assert_eq!(bounded.addresses.len(), 2);
        assert!(bounded.addresses[1].len() <= MAX_ADDRESS);
    }
}
