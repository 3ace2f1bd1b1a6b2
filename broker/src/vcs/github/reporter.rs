//! The reporter: tells GitHub how the runs its events started are doing (docs/vcs.md) — a commit
//! status `keyward/<stack>` on the run's commit, and one comment per stack on the pull request,
//! edited in place as the run moves on and on every new push.
//!
//! Driven by the database, like the notifier: a run is due when its version moved past the one
//! last reported (`vcs_runs.reported_version`), so a report is a sync of the run's current state
//! and a replica that dies mid-way leaves it due. Failures are retried with exponential backoff;
//! after [`MAX_ATTEMPTS`] the version is given up on with a `vcs.report_failed` entry. Nothing
//! here ever holds a run up.

use std::time::Duration;

use super::Github;
use super::api::{ApiError, CommitStatus, RepoName};
use crate::audit::{AuditEvent, Context, Kind};
use crate::runs::RunError;
use crate::store::StoreError;
use crate::store::vcs::{DueReport, Processed};
use crate::vcs::report;

/// How long a claimed report is the claimer's: longer than one takes.
const CLAIM: i64 = 120;
/// How often an idle reporter looks again, if no run change on this replica woke it first.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// Attempts at one version of a run before it is given up on: about half an hour of retrying
/// (1 s doubling to 5 minutes), so a GitHub outage or rate limit is waited out.
const MAX_ATTEMPTS: i64 = 14;
/// The first retry's delay; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: i64 = 1;
const MAX_BACKOFF: i64 = 300;

/// Why a report failed.
#[derive(Debug, thiserror::Error)]
enum ReportError {
    #[error("GitHub: {0}")]
    Api(#[from] ApiError),
    #[error(transparent)]
    Runs(#[from] RunError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored {0} is not valid")]
    Stored(String),
}

impl ReportError {
    fn is_transient(&self) -> bool {
        match self {
            Self::Api(error) => error.is_transient(),
            Self::Store(_) | Self::Runs(RunError::Store(_)) => true,
            Self::Runs(_) | Self::Stored(_) => false,
        }
    }
}

impl Github {
    /// Reports runs whose state moved on, forever: woken when a run changes on this replica,
    /// and looking again every [`IDLE_POLL`] for other replicas' runs.
    pub async fn report_runs(self) {
        let signals = std::sync::Arc::clone(self.runs.signals());
        loop {
            let changed = signals.run_changes().notified();
            let now = self.clock.now();
            match self.store.claim_vcs_report(now, now + CLAIM).await {
                Ok(Some(due)) => self.report(due).await,
                Ok(None) => {
                    let _ = tokio::time::timeout(IDLE_POLL, changed).await;
                }
                Err(error) => {
                    tracing::warn!(%error, "vcs: cannot claim a run to report; will retry");
                    tokio::time::sleep(IDLE_POLL).await;
                }
            }
        }
    }

    /// One attempt at reporting `due`, and its settlement.
    async fn report(&self, due: DueReport) {
        let result = self.send_report(&due).await;
        let attempts = due.attempts + 1;
        let now = self.clock.now();
        let why = result.as_ref().err().map(ToString::to_string);
        let outcome = match (&result, &why) {
            (Ok(()), _) => Processed::Done,
            (Err(error), Some(why)) if error.is_transient() && attempts < MAX_ATTEMPTS => {
                Processed::Retry { at: now + backoff(attempts), error: why }
            }
            (Err(_), why) => Processed::Failed(why.as_deref().unwrap_or("unknown")),
        };
        if let Err(error) = self.store.settle_vcs_report(&due, outcome, attempts, now).await {
            tracing::warn!(run_id = %due.run_id, %error, "vcs: cannot record a report; it will be sent again");
            return;
        }
        match outcome {
            Processed::Done => {}
            Processed::Retry { at, error } => {
                tracing::info!(run_id = %due.run_id, %error, retry_at = at, "vcs: reporting a run failed; will retry");
            }
            Processed::Failed(why) => {
                tracing::warn!(run_id = %due.run_id, error = why, "vcs: reporting a run failed for good");
                let context = Context { run_id: Some(due.run_id.clone()), ..Context::default() };
                let entry = AuditEvent::new(Kind::VcsReportFailed, now, context)
                    .with("provider", "github")
                    .with("stack", due.stack.as_str())
                    .with("repository", due.repository.as_str())
                    .with("run_version", due.version)
                    .with("attempts", attempts)
                    .with("error", why);
                crate::audit::events::append(&self.audit, entry).await;
            }
        }
    }

    /// Sets the run's commit status and, when it has a pull request and is its newest run
    /// there, its comment.
    async fn send_report(&self, due: &DueReport) -> Result<(), ReportError> {
        let run = self.runs.run(&due.run_id).await?;
        let changes = self.runs.plan_changes(&due.run_id).await?;
        let repository = RepoName::parse(&due.repository)?;
        let installation = u64::try_from(due.installation_id)
            .map_err(|_| ReportError::Stored(format!("installation ID {}", due.installation_id)))?;
        let url = format!("{}/v1/runs/{}", self.external_url.trim_end_matches('/'), run.id);
        let status = report::status(&run, changes.as_ref());
        let status = CommitStatus {
            state: status.state,
            context: report::status_context(&due.stack),
            description: status.description,
            target_url: Some(url.clone()),
        };
        if self.store.is_newest_vcs_run(due, None).await? {
            self.api.set_status(installation, &repository, &due.status_sha, &status).await?;
        }
        let Some(number) = due.pull_request_number else { return Ok(()) };
        if !self.store.is_newest_vcs_run(due, Some(number)).await? {
            return Ok(());
        }
        let parts = report::comment(&due.stack, &run, changes.as_ref(), &url);
        self.keep_comment(installation, &repository, (number, &due.stack), &parts).await
    }

    /// Makes the stack's comment on pull request `number` read `parts`: edits the parts kept
    /// before (a part deleted by someone is created again), creates the missing ones, and marks
    /// parts no longer needed as such (kept, to be reused).
    async fn keep_comment(
        &self,
        installation: u64,
        repository: &RepoName,
        (number, stack): (i64, &str),
        parts: &[String],
    ) -> Result<(), ReportError> {
        let name = repository.to_string();
        let issue = u64::try_from(number).map_err(|_| ReportError::Stored(format!("pull request number {number}")))?;
        let mut ids = self.store.vcs_comment_ids("github", &name, number, stack).await?;
        let spare = format!("{}\n_This part of Keyward's comment is no longer needed._", report::marker(stack));
        let bodies = parts
            .iter()
            .map(String::as_str)
            .chain(std::iter::repeat_n(spare.as_str(), ids.len().saturating_sub(parts.len())));
        let mut deleted_spares = false;
        for (i, body) in bodies.enumerate() {
            let id = match ids.get(i).copied() {
                Some(id) => match self.api.update_comment(installation, repository, id, body).await {
                    Ok(()) => continue,
                    // A spare part someone deleted is not posted again just to say it is spare.
                    Err(ApiError::NotFound) if i >= parts.len() => {
                        deleted_spares = true;
                        continue;
                    }
                    Err(ApiError::NotFound) => self.api.create_comment(installation, repository, issue, body).await?,
                    Err(error) => return Err(error.into()),
                },
                None => self.api.create_comment(installation, repository, issue, body).await?,
            };
            // Kept at once: a retry edits this comment rather than adding another.
            match ids.get_mut(i) {
                Some(slot) => *slot = id,
                None => ids.push(id),
            }
            self.store.set_vcs_comment_ids("github", &name, number, stack, &ids, self.clock.now()).await?;
        }
        if deleted_spares {
            ids.truncate(parts.len());
            self.store.set_vcs_comment_ids("github", &name, number, stack, &ids, self.clock.now()).await?;
        }
        Ok(())
    }
}

/// The delay before attempt `attempts + 1`.
fn backoff(attempts: i64) -> i64 {
    crate::backoff::delay(attempts, FIRST_BACKOFF, MAX_BACKOFF)
}
