//! Runs a version-control event started (docs/vcs.md): the change as the provider described it
//! in a signed webhook delivery and its API, never as a caller claims it.
//!
//! A run started this way records its pull request and ticket with their source
//! (`runs.pull_request_source`), which flows into its tokens (`pull_request_source` claim, the
//! `pr_source` session tag), the policies' `input.run` and every audit entry's context; and a
//! `vcs_runs` row naming the delivery, so that processing a delivery again (a broker restarted
//! half-way) starts no stack's run twice, and the reporter knows where to report the run.

use serde::Serialize;
use serde_json::json;

use super::drift_schedule::FireClaim;
use crate::audit::AuditEvent;
use crate::store::vcs::{VcsRunRow, insert_vcs_run};
use crate::store::{RunRow, write::Write};

/// A pull request as the provider described it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObservedPullRequest {
    /// Its number.
    pub number: u64,
    /// Its title.
    pub title: String,
    /// Who opened it (the provider's login).
    pub author: String,
    /// The branch it merges into.
    pub base: String,
    /// The branch it merges from.
    pub head: String,
    /// The head commit.
    pub head_sha: String,
    /// Its web page.
    pub url: String,
}

/// The change a version-control event brought: what a run it starts is observed to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedChange {
    /// `github`.
    pub source: &'static str,
    /// The delivery that brought it.
    pub delivery_id: String,
    /// The App installation it came through (reports go back through it).
    pub installation_id: u64,
    /// `owner/name`.
    pub repository: String,
    /// Who caused the event (the provider's login).
    pub sender: String,
    /// The commit the run runs, and the one its status is reported on.
    pub commit_sha: String,
    /// The pull request, if the change is one (or a push merged one).
    pub pull_request: Option<ObservedPullRequest>,
    /// The ticket parsed from the pull request's title or branch.
    pub ticket: Option<String>,
}

impl ObservedChange {
    /// Who the run's author is on the record: the provider's user, named with the provider.
    pub fn author(&self) -> String {
        format!("{}:{}", self.source, self.sender)
    }

    /// The `run.created` detail describing it.
    fn detail(&self) -> serde_json::Value {
        json!({
            "source": self.source,
            "delivery": self.delivery_id,
            "installation": self.installation_id,
            "repository": self.repository,
            "sender": self.sender,
            "pull_request": self.pull_request,
            "ticket": self.ticket,
        })
    }
}

/// What queued a run, and so what commits with it.
#[derive(Debug, Clone, Copy)]
pub(super) enum Origin<'a> {
    /// A caller asked (`POST /v1/runs`, `keyward run submit`).
    Asked,
    /// The drift scheduler, with its claim on a fire time.
    Scheduled(&'a FireClaim),
    /// A version-control event.
    Observed(&'a ObservedChange),
}

impl Origin<'_> {
    /// `run` as this origin records it: an observed change's pull request and ticket, with
    /// their source.
    pub(super) fn stamp(self, run: &mut RunRow) {
        if let Self::Observed(change) = self {
            run.pull_request = change.pull_request.as_ref().and_then(|pr| i64::try_from(pr.number).ok());
            run.ticket.clone_from(&change.ticket);
            run.pull_request_source = Some(change.source.to_owned());
        }
    }

    /// The writes that commit with `run` of `stack`, before its own rows: a scheduled check's
    /// claim holds only while no other drift run of the stack is queued.
    pub(super) fn writes_before_run(self, stack: &str, run: &RunRow) -> Vec<Write> {
        match self {
            Self::Scheduled(claim) => vec![claim.for_run(stack, &run.id)],
            Self::Asked | Self::Observed(_) => Vec::new(),
        }
    }

    /// The writes that commit with `run` of `stack`, after its own rows: an observed change's
    /// record refers to the run.
    pub(super) fn writes_after_run(self, stack: &str, run: &RunRow) -> Vec<Write> {
        match self {
            Self::Asked | Self::Scheduled(_) => Vec::new(),
            Self::Observed(change) => vec![insert_vcs_run(&VcsRunRow {
                run_id: run.id.clone(),
                delivery_id: change.delivery_id.clone(),
                stack: stack.to_owned(),
                provider: change.source,
                installation_id: change.installation_id,
                repository: change.repository.clone(),
                status_sha: change.commit_sha.clone(),
                pull_request: change.pull_request.as_ref().map(|pr| json!(pr).to_string()),
                pull_request_number: change.pull_request.as_ref().map(|pr| pr.number),
            })],
        }
    }

    /// The writes that commit with `keyward.run`'s refusal.
    pub(super) fn refused_writes(self, stack: &str, reasons: &[String], now: i64) -> Vec<Write> {
        match self {
            Self::Scheduled(claim) => claim.refused(stack, reasons, now),
            Self::Asked | Self::Observed(_) => Vec::new(),
        }
    }

    /// `event` (a `run.created` or `run.refused`) saying where the run came from.
    pub(super) fn describe(self, event: AuditEvent) -> AuditEvent {
        match self {
            Self::Asked => event,
            Self::Scheduled(claim) => claim.describe(event),
            Self::Observed(change) => event.with("observed", change.detail()).with_ref("delivery", &change.delivery_id),
        }
    }
}
