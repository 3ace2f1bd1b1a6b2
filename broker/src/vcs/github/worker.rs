//! The delivery worker: takes queued deliveries one at a time, works out which stacks each change
//! touches, asks `keyward.push` what to do for each, starts the runs it says, and records what it
//! did (docs/vcs.md).
//!
//! A delivery is claimed for [`CLAIM`] seconds; a replica that dies mid-way leaves it to be
//! claimed again, and a stack whose run the delivery already started is not started twice
//! (`vcs_runs` is unique per delivery and stack). A delivery is settled in the same commit as its
//! `vcs.delivery_processed` (or `vcs.delivery_failed`) entry. Transient trouble (GitHub
//! unreachable or rate-limiting, the store busy) is retried with exponential backoff; the rest
//! fails the delivery for good, with the reason on record.
//!
//! What the broker refuses whatever the policy says: it never proposes a pull request from a fork
//! (its code would run with the stack's credentials, variables and state).

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};

use super::Github;
use super::api::{ApiError, RepoName};
use crate::audit::{Append, AuditEvent, ChangeError, Context, Kind};
use crate::policy::Outcome;
use crate::runs::{ObservedChange, ObservedPullRequest, RunError, RunKind, Stack};
use crate::store::StoreError;
use crate::store::vcs::{ClaimedDelivery, Processed, settle_delivery};
use crate::vcs::event::{EventError, EventKind, PullRequestFacts, VcsEvent};
use crate::vcs::{matching, push_policy};

/// How long a claimed delivery is the claimer's: longer than processing one takes.
const CLAIM: i64 = 300;
/// How often an idle worker looks again (another replica may have queued one).
const IDLE_POLL: Duration = Duration::from_secs(1);
/// Attempts before a delivery fails for good: about half an hour of retrying (2 s doubling to 5
/// minutes), so a GitHub outage or rate limit is waited out.
const MAX_ATTEMPTS: i64 = 12;
/// Claims before a delivery fails for good: a delivery whose processing never ends (the broker
/// dies on it, or hangs past its claim) is not taken up forever.
const MAX_CLAIMS: i64 = 10;
/// The first retry's delay; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: i64 = 2;
const MAX_BACKOFF: i64 = 300;

/// Why an older push is not tracked after a newer one was.
pub const OLDER_PUSH: &str = "a later push was already tracked: an older commit is not deployed over it";

/// The most files GitHub lists for a pull request.
const MAX_LISTED_FILES: usize = 3000;

/// Why the broker ignores a proposal for a fork's pull request, whatever the policy says.
pub const FORK_REFUSAL: &str = "pull requests from forks are never planned: their code would run with the stack's \
                                credentials, variables and state";

/// Why processing a delivery failed.
#[derive(Debug, thiserror::Error)]
enum ProcessError {
    /// The payload lacks what its event needs.
    #[error(transparent)]
    Event(#[from] EventError),
    /// The delivery names no App installation.
    #[error("the delivery names no installation")]
    NoInstallation,
    /// GitHub's API failed.
    #[error("GitHub: {0}")]
    Api(#[from] ApiError),
    /// Stacks or runs could not be read or written.
    #[error(transparent)]
    Runs(#[from] RunError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Processing was taken up this many times and never finished.
    #[error("processing was started {0} times and never finished")]
    NeverFinished(i64),
}

impl ProcessError {
    /// Whether another attempt may succeed.
    fn is_transient(&self) -> bool {
        match self {
            Self::Api(error) => error.is_transient(),
            Self::Runs(RunError::Store(_) | RunError::Git(_)) | Self::Store(_) => true,
            Self::Runs(RunError::Change(ChangeError::Store(_))) => true,
            _ => false,
        }
    }
}

/// What became of one stack a delivery touched.
#[derive(Debug, Clone, PartialEq)]
struct StackOutcome {
    stack: String,
    /// `propose`, `track` or `ignore`, as decided (after the broker's own refusals).
    decision: &'static str,
    reasons: Vec<String>,
    /// The run started (or started before, by an earlier attempt).
    run: Option<String>,
    /// Why the run was not started although the decision said so.
    error: Option<String>,
}

/// What processing a delivery found.
#[derive(Debug, Default)]
struct Handled {
    /// Why nothing was decided at all (an event not acted on, no stack of the repository).
    ignored: Option<String>,
    stacks: Vec<StackOutcome>,
    files: usize,
    pull_request: Option<u64>,
    repository: Option<String>,
    commit_sha: Option<String>,
}

impl Github {
    /// Processes queued deliveries, forever.
    pub async fn process_deliveries(self) {
        loop {
            let queued = self.queued.notified();
            let now = self.clock.now();
            match self.store.claim_vcs_delivery(now, now + CLAIM).await {
                Ok(Some(delivery)) => self.attempt(delivery).await,
                Ok(None) => {
                    let _ = tokio::time::timeout(IDLE_POLL, queued).await;
                }
                Err(error) => {
                    tracing::warn!(%error, "vcs: cannot claim a delivery; will retry");
                    tokio::time::sleep(IDLE_POLL).await;
                }
            }
        }
    }

    /// One attempt at a claimed delivery, and its settlement.
    async fn attempt(&self, delivery: ClaimedDelivery) {
        let result = if delivery.claim > MAX_CLAIMS {
            Err(ProcessError::NeverFinished(delivery.claim - 1))
        } else {
            self.handle(&delivery).await
        };
        let attempts = delivery.attempts + 1;
        let now = self.clock.now();
        let (write, entry) = match &result {
            Ok(handled) => (settle_delivery(&delivery, Processed::Done, now), Some(processed(&delivery, handled, now))),
            Err(error) if error.is_transient() && attempts < MAX_ATTEMPTS => {
                let why = error.to_string();
                let at = now + backoff(attempts);
                tracing::info!(delivery = %delivery.delivery_id, error = %why, retry_at = at, "vcs: processing a delivery failed; will retry");
                let retry = Processed::Retry { at, error: &why };
                (settle_delivery(&delivery, retry, now), None)
            }
            Err(error) => {
                let why = error.to_string();
                tracing::warn!(delivery = %delivery.delivery_id, error = %why, "vcs: a delivery failed for good");
                let entry = AuditEvent::new(Kind::VcsDeliveryFailed, now, Context::default())
                    .with("provider", "github")
                    .with("event", delivery.event.as_str())
                    .with("delivery", delivery.delivery_id.as_str())
                    .with("attempts", attempts)
                    .with("error", why.as_str())
                    .with_ref("delivery", &delivery.delivery_id);
                (settle_delivery(&delivery, Processed::Failed(&why), now), Some(entry))
            }
        };
        let committed = match entry {
            Some(entry) => {
                self.audit.append(Append::changes(vec![write], vec![entry])).await.map_err(ChangeError::from)
            }
            None => match self.store.apply_writes(&[write]).await {
                Ok(_) => return,
                Err(error) => Err(ChangeError::from(error)),
            },
        };
        if let Err(error) = committed.and_then(|c| c.into_change()) {
            tracing::warn!(delivery = %delivery.delivery_id, %error, "vcs: cannot settle a delivery; it will be processed again");
        }
    }

    /// Works out and acts on what `delivery` asks for.
    async fn handle(&self, delivery: &ClaimedDelivery) -> Result<Handled, ProcessError> {
        let Some(event) = VcsEvent::parse(&delivery.event, &delivery.payload)? else {
            return Ok(Handled {
                ignored: Some(format!("event `{}` is not acted on", delivery.event)),
                ..Handled::default()
            });
        };
        let mut handled = Handled { repository: Some(event.repository.full_name.clone()), ..Handled::default() };
        let installation = event.installation.ok_or(ProcessError::NoInstallation)?;
        let repository = RepoName::parse(&event.repository.full_name)?;
        let urls = event.repository.urls();
        let wanted: BTreeSet<String> = urls.iter().filter_map(|url| matching::normalise_repository(url)).collect();
        let stacks: Vec<Stack> = self
            .runs
            .stacks()
            .await?
            .into_iter()
            .filter(|s| matching::normalise_repository(&s.spec.repository).is_some_and(|n| wanted.contains(&n)))
            .collect();
        if stacks.is_empty() {
            handled.ignored = Some(format!("no stack uses repository {}", event.repository.full_name));
            return Ok(handled);
        }
        let (pull_request, files, complete) = match &event.kind {
            EventKind::PullRequest { pull_request, .. } => {
                let files = self.api.pull_request_files(installation, &repository, pull_request.number).await?;
                // GitHub lists at most 3000 files: a longer list may leave stacks out.
                let complete = files.len() < MAX_LISTED_FILES;
                (Some(pull_request.clone()), files, complete)
            }
            EventKind::Push(push) => {
                let merged =
                    if push.deleted { None } else { self.merged_into(installation, &repository, push).await? };
                (merged, push.changed_files.clone(), push.files_complete)
            }
        };
        handled.files = files.len();
        handled.pull_request = pull_request.as_ref().map(|pr| pr.number);
        handled.commit_sha = Some(match &event.kind {
            EventKind::PullRequest { pull_request, .. } => pull_request.head_sha.clone(),
            EventKind::Push(push) => push.after.clone(),
        });
        // A push GitHub listed only in part touches every stack of the repository.
        let touched: Vec<(&Stack, Vec<String>)> = if complete {
            matching::touched(&stacks, &urls, &files).into_iter().map(|t| (t.stack, t.files)).collect()
        } else {
            stacks.iter().map(|stack| (stack, files.clone())).collect()
        };
        for (stack, files) in touched {
            let outcome = self.decide(delivery, &event, installation, pull_request.as_ref(), stack, &files).await?;
            handled.stacks.push(outcome);
        }
        Ok(handled)
    }

    /// The pull request a push to a branch merged: one GitHub associates with the pushed commit,
    /// merged into that branch, whose merge made that very commit (or, fast-forwarded, whose head
    /// it is), checked as a payload's is. `None` when there is none — a direct push — or GitHub
    /// refuses to say (only an outage is worth a retry: the push itself is what matters).
    async fn merged_into(
        &self,
        installation: u64,
        repository: &RepoName,
        push: &crate::vcs::event::PushFacts,
    ) -> Result<Option<PullRequestFacts>, ProcessError> {
        let Some(branch) = push.git_ref.strip_prefix("refs/heads/") else { return Ok(None) };
        let pulls = match self.api.pulls_of_commit(installation, repository, &push.after).await {
            Ok(pulls) => pulls,
            Err(error) if error.is_transient() => return Err(error.into()),
            Err(error) => {
                tracing::info!(%error, commit = %push.after, "vcs: cannot read the pull request of a pushed commit");
                return Ok(None);
            }
        };
        let merged = pulls.into_iter().find(|pr| {
            pr.merged
                && pr.base_ref == branch
                && (pr.merge_commit_sha.as_deref() == Some(push.after.as_str()) || pr.head_sha == push.after)
        });
        let Some(pr) = merged else { return Ok(None) };
        let facts = PullRequestFacts {
            number: pr.number,
            title: pr.title,
            author: pr.author,
            base_ref: pr.base_ref,
            head_ref: pr.head_ref,
            head_sha: pr.head_sha,
            base_sha: String::new(),
            url: pr.url,
            draft: pr.draft,
            fork: pr.fork,
            merged: true,
            merge_commit_sha: Some(push.after.clone()),
            labels: pr.labels,
        };
        match facts.checked("pulls_of_commit") {
            Ok(facts) => Ok(Some(facts)),
            Err(error) => {
                tracing::warn!(%error, commit = %push.after, "vcs: GitHub described a pushed commit's pull request oddly; not recorded");
                Ok(None)
            }
        }
    }

    /// Asks `keyward.push` about `stack` and acts on it.
    async fn decide(
        &self,
        delivery: &ClaimedDelivery,
        event: &VcsEvent,
        installation: u64,
        pull_request: Option<&PullRequestFacts>,
        stack: &Stack,
        files: &[String],
    ) -> Result<StackOutcome, ProcessError> {
        let ticket = pull_request.and_then(|pr| self.settings.ticket_pattern.find(&pr.title, &pr.head_ref));
        let input = push_policy::input(stack, event, pull_request, ticket.as_deref(), files);
        let decision = push_policy::decide(self.policies.as_deref(), input);
        let mut outcome = StackOutcome {
            stack: stack.spec.name.clone(),
            decision: "ignore",
            reasons: decision.reasons.clone(),
            run: None,
            error: None,
        };
        let (kind, commit) = match runnable(decision.outcome, event, stack) {
            Ok(Some(run)) => run,
            Ok(None) => return Ok(outcome),
            Err(refusal) => {
                outcome.reasons = vec![refusal];
                return Ok(outcome);
            }
        };
        if kind == RunKind::Deploy
            && self.store.newer_tracked_vcs_run(&stack.spec.name, delivery.received_order).await?
        {
            outcome.reasons = vec![OLDER_PUSH.to_owned()];
            return Ok(outcome);
        }
        outcome.decision = if kind == RunKind::Proposed { "propose" } else { "track" };
        let change = ObservedChange {
            source: "github",
            delivery_id: delivery.delivery_id.clone(),
            installation_id: installation,
            repository: event.repository.full_name.clone(),
            sender: event.sender.clone(),
            commit_sha: commit,
            pull_request: pull_request.map(observed),
            ticket,
        };
        match self.runs.submit_observed(&stack.spec.name, kind, &change, Context::default()).await {
            Ok(Some(run)) => outcome.run = Some(run.id),
            Ok(None) => outcome.run = self.started_before(&delivery.delivery_id, &stack.spec.name).await?,
            Err(RunError::Refused(reasons)) => {
                outcome.error = Some(format!("keyward.run refused the run: {}", reasons.join("; ")));
            }
            Err(error @ (RunError::Store(_) | RunError::Git(_) | RunError::Change(ChangeError::Store(_)))) => {
                return Err(error.into());
            }
            Err(error) => outcome.error = Some(error.to_string()),
        }
        Ok(outcome)
    }

    /// The run an earlier attempt at `delivery` started on `stack`.
    async fn started_before(&self, delivery: &str, stack: &str) -> Result<Option<String>, StoreError> {
        let runs = self.store.vcs_runs_of_delivery(delivery).await?;
        Ok(runs.into_iter().find(|(s, _)| s == stack).map(|(_, run)| run))
    }
}

/// The run `decision` asks for on `stack`, if the broker allows it: `Ok(None)` to ignore,
/// `Err` with the broker's reason when it refuses what the policy said. The broker proposes no
/// fork's pull request, and tracks only commits on the stack's branch: a push to it, or a pull
/// request merged into it.
fn runnable(decision: Outcome, event: &VcsEvent, stack: &Stack) -> Result<Option<(RunKind, String)>, String> {
    let branch = stack.spec.branch.as_str();
    let off_branch = || format!("only commits on the stack's branch `{branch}` are tracked");
    match (decision, &event.kind) {
        (Outcome::Propose, EventKind::PullRequest { pull_request, .. }) if pull_request.fork => {
            Err(FORK_REFUSAL.to_owned())
        }
        (Outcome::Propose, EventKind::PullRequest { pull_request, .. }) => {
            Ok(Some((RunKind::Proposed, pull_request.head_sha.clone())))
        }
        (Outcome::Track, EventKind::Push(push)) if push.deleted => {
            Err("a deleted branch has nothing to run".to_owned())
        }
        (Outcome::Track, EventKind::Push(push)) if push.git_ref.strip_prefix("refs/heads/") == Some(branch) => {
            Ok(Some((RunKind::Deploy, push.after.clone())))
        }
        (Outcome::Track, EventKind::PullRequest { pull_request, .. })
            if pull_request.merged && pull_request.base_ref == branch =>
        {
            match &pull_request.merge_commit_sha {
                Some(sha) => Ok(Some((RunKind::Deploy, sha.clone()))),
                None => Err("GitHub named no merge commit to track".to_owned()),
            }
        }
        (Outcome::Track, _) => Err(off_branch()),
        (Outcome::Propose, _) => Err("only a pull request can be proposed".to_owned()),
        _ => Ok(None),
    }
}

/// The pull request as a run records it.
fn observed(pr: &PullRequestFacts) -> ObservedPullRequest {
    ObservedPullRequest {
        number: pr.number,
        title: pr.title.clone(),
        author: pr.author.clone(),
        base: pr.base_ref.clone(),
        head: pr.head_ref.clone(),
        head_sha: pr.head_sha.clone(),
        url: pr.url.clone(),
    }
}

/// The `vcs.delivery_processed` entry of `delivery`.
fn processed(delivery: &ClaimedDelivery, handled: &Handled, now: i64) -> AuditEvent {
    let context = Context {
        repository: handled.repository.clone(),
        pull_request: handled.pull_request,
        commit_sha: handled.commit_sha.clone(),
        ..Context::default()
    };
    let stacks: Vec<Value> = handled
        .stacks
        .iter()
        .map(
            |s| json!({"stack": s.stack, "decision": s.decision, "reasons": s.reasons, "run": s.run, "error": s.error}),
        )
        .collect();
    let mut entry = AuditEvent::new(Kind::VcsDeliveryProcessed, now, context)
        .with("provider", "github")
        .with("event", delivery.event.as_str())
        .with("delivery", delivery.delivery_id.as_str())
        .with("changed_files", handled.files)
        .with("stacks", stacks)
        .with_ref("delivery", &delivery.delivery_id);
    if let Some(why) = &handled.ignored {
        entry = entry.with("ignored", why.as_str());
    }
    entry
}

/// The delay before attempt `attempts + 1`.
fn backoff(attempts: i64) -> i64 {
    crate::backoff::delay(attempts, FIRST_BACKOFF, MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runs::StackSpec;

    /// A real payload from broker/src/vcs/testdata (@octokit/webhooks-examples).
    fn event(name: &str, file: &str) -> VcsEvent {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/vcs/testdata").join(file);
        let payload = std::fs::read(path).unwrap_or_else(|e| panic!("{file}: {e}"));
        VcsEvent::parse(name, &payload).ok().flatten().unwrap_or_else(|| panic!("{file} does not parse"))
    }

    fn stack(branch: &str) -> Stack {
        let spec: StackSpec = serde_json::from_value(json!({
            "name": "network", "repository": "https://github.com/Codertocat/Hello-World.git", "branch": branch,
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        Stack::new(spec, 1, "admin".into())
    }

    #[test]
    fn a_forks_pull_request_is_never_proposed_whatever_the_policy_says() {
        let fork = event("pull_request", "pull_request.opened-fork.json");
        assert_eq!(runnable(Outcome::Propose, &fork, &stack("master")), Err(FORK_REFUSAL.to_owned()));
        let own = event("pull_request", "pull_request.opened.json");
        assert!(matches!(runnable(Outcome::Propose, &own, &stack("master")), Ok(Some((RunKind::Proposed, _)))));
        assert_eq!(runnable(Outcome::Ignore, &fork, &stack("master")), Ok(None));
    }

    #[test]
    fn only_commits_on_the_stacks_branch_are_tracked() {
        let push = event("push", "push.json");
        assert!(matches!(runnable(Outcome::Track, &push, &stack("master")), Ok(Some((RunKind::Deploy, _)))));
        let elsewhere = runnable(Outcome::Track, &push, &stack("main"));
        assert!(matches!(&elsewhere, Err(why) if why.contains("stack's branch `main`")), "{elsewhere:?}");
        let merged = event("pull_request", "pull_request.closed-merged.json");
        assert_eq!(
            runnable(Outcome::Track, &merged, &stack("master")),
            Ok(Some((RunKind::Deploy, "c4295bd74fb0f4fda03689c3df3f2803b658fd85".to_owned())))
        );
        assert!(runnable(Outcome::Track, &merged, &stack("main")).is_err(), "merged into another branch");
        let open = event("pull_request", "pull_request.opened.json");
        assert!(runnable(Outcome::Track, &open, &stack("master")).is_err(), "an open pull request is not tracked");
        assert!(runnable(Outcome::Propose, &push, &stack("master")).is_err(), "a push is not proposed");
    }

    #[test]
    fn retries_back_off_exponentially_to_a_cap() {
        assert_eq!([1, 2, 3, 4].map(backoff), [2, 4, 8, 16]);
        assert_eq!(backoff(40), 300);
    }
}
