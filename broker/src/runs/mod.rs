//! Stacks and runs: submission behind the `keyward.run` policy, reviews behind
//! `keyward.approval`, cancellation, and the jobs agents will execute (DESIGN.md §1 "queue").
//!
//! Every change here is a guarded write that commits in the same transaction as the audit entry
//! recording it ([`crate::store::write`]): a run exists exactly when its `run.created` entry does,
//! and every state it went through is on record. A write depends on the run's `version`, so a
//! decision taken on a state that has since moved on changes nothing and says so (409).

pub mod context_hooks;
pub mod contexts;
pub mod cron;
mod drift;
pub mod drift_schedule;
mod error;
mod git;
mod hooks;
mod jobs;
mod kind;
mod observed;
mod plan_changes;
mod plans;
mod policy_input;
pub mod redact;
mod remediation;
pub mod reviews;
pub mod scans;
mod signals;
mod source;
mod space_rules;
mod spec;
mod state;
mod tfstate;
pub mod tool;
pub mod triggers;
mod update;
mod waiting;

use std::collections::BTreeMap;
use std::sync::Arc;

use keyward_proto::claims::{Phase, RunChain};
use serde::Serialize;
use serde_json::{Value, json};

pub use drift::{DriftSettings, DriftStatus, MAX_ADDRESSES, Remediation, UnknownRemediation};
pub use drift_schedule::{DriftScheduler, SchedulerSettings, Tick};
pub use error::RunError;
pub use git::{GitError, is_commit_sha};
pub use hooks::{HookPoint, Hooks, HooksPatch, JobHook, MAX_HOOK_LEN, MAX_HOOKS};
pub use jobs::{Drift, HeldJob, JobOutcome, JobReport, Lease, LeaseEnd, LogSeal};
pub use kind::{RunKind, UnknownKind};
pub use observed::{ObservedChange, ObservedPullRequest};
pub use plan_changes::{ChangeAction, PlanChanges, ResourceChange};
pub use plans::{MAX_PLAN_FILE, MAX_PLAN_JSON, PlanVerdict, ReadPlan, SavedPlanError, read_plan_json, seal_context};
pub(crate) use policy_input::stack_object;
pub use signals::{Canceled, Signals};
pub use source::{IssuedSource, PasswordSource, RepositoryCredential, RepositoryCredentials, SourceError};
pub use spec::{DEFAULT_POOL, SpecError, Stack, StackSpec, valid_name};
pub use state::{RunState, UnknownState};
pub use tfstate::{MAX_STATE_BYTES, StateError, StateLockView, StateSummary, StateVersionView};
pub use update::StackUpdate;

use crate::audit::{Append, AuditEvent, AuditLog, Context, Kind};
use crate::clock::SharedClock;
use crate::kek::Kek;
use crate::policy::{Decision, Outcome, PolicyEngine, PolicyKind};
use crate::roles::Actor;
use crate::store::write::Write;
use crate::store::{self, JobRow, ReviewRow, RunFilter, RunRow, StackRow, Store, StoreError};
use crate::targets::TargetConfig;
use observed::Origin;

/// A run as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RunView {
    /// Run ID.
    pub id: String,
    /// Stack name.
    pub stack: String,
    /// State.
    pub state: String,
    /// `deploy`, `drift`, `remediation` or `proposed`.
    pub kind: String,
    /// Drift runs: whether the check found drift (absent until it ran).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drift: Option<bool>,
    /// The commit it runs.
    pub commit_sha: String,
    /// The branch that headed that commit at submit.
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    /// Pull request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pull_request: Option<i64>,
    /// Ticket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
    /// Where the pull request and ticket were observed (`github`); absent: the submitter's word.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pull_request_source: Option<String>,
    /// Who submitted it.
    pub triggered_by: String,
    /// Why it is where it is, when that needs saying.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Submitted at (Unix seconds).
    pub created_at: i64,
    /// Last change.
    pub updated_at: i64,
    /// Reviews, oldest first.
    pub reviews: Vec<ReviewView>,
    /// Jobs, oldest first.
    pub jobs: Vec<JobView>,
}

/// One review.
#[derive(Debug, Clone, Serialize)]
pub struct ReviewView {
    /// Reviewer.
    pub by: String,
    /// `approve` or `reject`.
    pub decision: String,
    /// Comment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// When.
    pub at: i64,
    /// Whether it counts towards approval (the run's author's approval never does).
    pub counted: bool,
    /// Why it does not count.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<&'static str>,
    /// Who, as verified at review time: kind, name, `issuer#subject`, groups, `amr`, role in the
    /// stack's space (absent for reviews recorded before identities were).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reviewer: Option<Value>,
}

/// One job.
#[derive(Debug, Clone, Serialize)]
pub struct JobView {
    /// Job ID.
    pub id: String,
    /// Plan or apply.
    pub phase: Phase,
    /// The pool whose agents may run it.
    pub pool: String,
    /// Job state.
    pub state: String,
    /// Leases so far.
    pub attempt: i64,
    /// Agent holding or last holding it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How the agent that took it isolates jobs (`sandbox network=none`, `process`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub isolation: Option<String>,
    /// The sandbox layers its processes ran under, in order, as its agent reported at the end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<String>>,
    /// Plan jobs of a scanned stack: what the scanners found and what `keyward.scan` said
    /// (`scanners`, `allowed`, `deny`, `warn`; docs/scans.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scan: Option<Value>,
    /// A queued job that no agent of its pool can take: why (no active agent, or none with the
    /// stack's tool).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
}

/// What a submission asks for.
#[derive(Debug, Clone, Default)]
pub struct Submission {
    /// Stack name.
    pub stack: String,
    /// Exact commit; `None` takes the head of the stack's branch.
    pub commit: Option<String>,
    /// Pull request number.
    pub pull_request: Option<u64>,
    /// Change ticket.
    pub ticket: Option<String>,
    /// A deploy, or a drift check.
    pub kind: RunKind,
}

/// A review's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The reviewer approves.
    Approve,
    /// The reviewer rejects.
    Reject,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Self::Approve => "approve",
            Self::Reject => "reject",
        }
    }
}

/// What a review led to.
#[derive(Debug, Clone, Serialize)]
pub struct ReviewOutcome {
    /// The run after the review.
    pub run: RunView,
    /// `approve`, `reject` or `pending`: the approval policy's conclusion.
    pub approval: Outcome,
    /// The policy's reasons: why it rejected, or what the run still waits for.
    pub reasons: Vec<String>,
}

/// The stacks-and-runs service.
#[derive(Debug, Clone)]
pub struct Runs {
    store: Store,
    audit: AuditLog,
    policies: Option<Arc<PolicyEngine>>,
    targets: Arc<BTreeMap<String, TargetConfig>>,
    clock: SharedClock,
    signals: Arc<Signals>,
    repositories: Arc<RepositoryCredentials>,
    /// Seals saved plans at rest.
    kek: Arc<Kek>,
    /// Where job dispatch latency is counted.
    metrics: Arc<crate::metrics::Metrics>,
}

const MAX_TICKET: usize = 128;
const MAX_COMMENT: usize = 2000;

impl Runs {
    /// The service over `store`, recording through `audit`, deciding with `policies`, sealing
    /// saved plans under `kek`.
    pub fn new(
        store: Store,
        audit: AuditLog,
        policies: Option<Arc<PolicyEngine>>,
        targets: &[TargetConfig],
        clock: SharedClock,
        kek: Arc<Kek>,
    ) -> Self {
        let targets = Arc::new(targets.iter().map(|t| (t.id(), t.clone())).collect());
        let repositories = Arc::new(RepositoryCredentials::default());
        let signals = Arc::new(Signals::default());
        let metrics = Arc::default();
        Self { store, audit, policies, targets, clock, signals, repositories, kek, metrics }
    }

    /// The same service, counting job dispatch latency in `metrics`.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The same service, fetching private repositories with `repositories`.
    #[must_use]
    pub fn with_repositories(mut self, repositories: RepositoryCredentials) -> Self {
        self.repositories = Arc::new(repositories);
        self
    }

    /// Creates a stack.
    pub async fn create_stack(&self, spec: StackSpec, who: &str, caller: Context) -> Result<Stack, RunError> {
        spec.validate(&self.targets)?;
        self.check_space(&spec).await?;
        let now = self.clock.now();
        let write = store::runs::insert_stack(&StackRow::created(spec.stored(), now, who.to_owned()));
        let context = Context {
            stack_id: Some(spec.name.clone()),
            repository: Some(spec.repository.clone()),
            actor: Some(who.to_owned()),
            ..caller
        };
        let mut event = AuditEvent::new(Kind::StackCreated, now, context)
            .with("branch", spec.branch.as_str())
            .with("path", spec.path.as_str())
            .with("pool", spec.pool.as_str())
            .with("plan_targets", spec.plan_targets.clone())
            .with("apply_targets", spec.apply_targets.clone())
            .with("space", spec.space.as_str())
            .with_ref("stack", &spec.name);
        if !spec.hooks.is_empty() {
            event = event.with("hooks", serde_json::to_value(&spec.hooks).unwrap_or_default());
        }
        if !spec.scanners.is_empty() {
            event = event.with("scanners", serde_json::to_value(&spec.scanners).unwrap_or_default());
        }
        if !spec.triggers.is_empty() {
            event = event.with("triggers", spec.triggers.clone());
        }
        self.commit(Append::changes(vec![write], vec![event])).await?;
        Ok(Stack::new(spec, now, who.to_owned()))
    }

    /// The stack called `name`.
    pub async fn stack(&self, name: &str) -> Result<Stack, RunError> {
        let row = self.store.stack(name).await?.ok_or_else(|| RunError::UnknownStack(name.to_owned()))?;
        Ok(Stack::try_from(row)?)
    }

    /// Every stack.
    pub async fn stacks(&self) -> Result<Vec<Stack>, RunError> {
        Ok(self.store.stacks().await?.into_iter().map(Stack::try_from).collect::<Result<_, _>>()?)
    }

    /// Submits a run: resolves the commit, asks `keyward.run`, and queues the plan job. A refusal
    /// is on record with the policy's reasons, and nothing is queued.
    pub async fn submit(&self, submission: Submission, who: &str, caller: Context) -> Result<RunView, RunError> {
        self.submit_from(submission, &Actor::broker(who), caller, Origin::Asked).await
    }

    /// [`submit`](Self::submit) by `actor`, whom `keyward.run` sees as `input.actor`.
    pub async fn submit_as(&self, submission: Submission, actor: &Actor, caller: Context) -> Result<RunView, RunError> {
        self.submit_from(submission, actor, caller, Origin::Asked).await
    }

    /// A run of `kind` on `stack` that a version-control event started: at the change's commit,
    /// with its pull request and ticket as observed, authored by the provider's user. `None`
    /// when the change's delivery already started one on this stack (it was processed before).
    pub async fn submit_observed(
        &self,
        stack: &str,
        kind: RunKind,
        change: &ObservedChange,
        caller: Context,
    ) -> Result<Option<RunView>, RunError> {
        let submission = Submission {
            stack: stack.to_owned(),
            commit: Some(change.commit_sha.clone()),
            kind,
            ..Submission::default()
        };
        let actor = Actor::broker(&change.author());
        match self.submit_from(submission, &actor, caller, Origin::Observed(change)).await {
            Ok(run) => Ok(Some(run)),
            Err(RunError::Change(crate::audit::ChangeError::Duplicate { .. })) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// [`submit`](Self::submit) from `origin`, whose writes commit with the run (or with the
    /// refusal), or neither does: the drift scheduler's claim on a fire time of the stack's
    /// schedule, an observed change's delivery.
    async fn submit_from(
        &self,
        submission: Submission,
        actor: &Actor,
        caller: Context,
        origin: Origin<'_>,
    ) -> Result<RunView, RunError> {
        let who = actor.id();
        let pull_request = check_submission(&submission)?;
        let stack = self.stack(&submission.stack).await?;
        let mut run = self.new_run(submission, &stack, pull_request, who).await?;
        origin.stamp(&mut run);
        let now = run.created_at;
        let context = run_context(&run, &stack, Phase::Plan, who, caller);
        let variables = self.policy_variables(&stack).await;
        let decision = self.decide(PolicyKind::Run, || {
            with_variables(policy_input::run_input(&run, &stack, Some(actor), now), variables)
        });
        if !decision.permits() {
            let writes = origin.refused_writes(&stack.spec.name, &decision.reasons, now);
            return Err(self.refuse_run(context, decision, now, writes, origin).await);
        }
        let job_id = uuid::Uuid::now_v7().to_string();
        let mut writes = origin.writes_before_run(&stack.spec.name, &run);
        writes.push(store::runs::insert_run(&run));
        writes.push(store::runs::queue_job(&job_id, &run.id, Phase::Plan, &stack.spec.pool, now));
        writes.extend(origin.writes_after_run(&stack.spec.name, &run));
        let event = AuditEvent::new(Kind::RunCreated, now, context)
            .with("kind", run.kind.as_str())
            .with("state", RunState::Queued.as_str())
            .with("plan_job", job_id.as_str())
            .with("pool", stack.spec.pool.as_str())
            .with("policy_digest", decision.policy_digest.as_str())
            .with("warnings", decision.warnings.clone());
        let event = origin.describe(event);
        self.commit(Append::changes(writes, vec![event])).await?;
        self.signals.queued(&stack.spec.pool);
        tracing::info!(run_id = %run.id, stack = %run.stack, commit = %run.commit_sha, kind = %run.kind, "run queued");
        self.run(&run.id).await
    }

    /// The run `submission` asks for on `stack`, queued now, at the commit its repository
    /// resolves to (the branch's head unless the submission names one).
    async fn new_run(
        &self,
        submission: Submission,
        stack: &Stack,
        pull_request: Option<i64>,
        who: &str,
    ) -> Result<RunRow, RunError> {
        let auth = self.repositories.for_url(&stack.spec.repository);
        let resolved =
            git::resolve(&stack.spec.repository, &stack.spec.branch, submission.commit.as_deref(), auth).await?;
        let now = self.clock.now();
        Ok(RunRow {
            id: uuid::Uuid::now_v7().to_string(),
            stack: stack.spec.name.clone(),
            state: RunState::Queued.as_str().to_owned(),
            version: 1,
            commit_sha: resolved.commit_sha,
            git_ref: resolved.git_ref,
            pull_request,
            ticket: submission.ticket,
            pull_request_source: None,
            triggered_by: who.to_owned(),
            detail: None,
            created_at: now,
            updated_at: now,
            kind: submission.kind.as_str().to_owned(),
            drift: None,
        })
    }

    /// Records that `keyward.run` refused a submission (no run exists, so the entry names none),
    /// with `writes` that go with the refusal (a scheduled check's claim on its fire time), and
    /// returns the refusal; a failure to record it is returned instead.
    async fn refuse_run(
        &self,
        mut context: Context,
        decision: Decision,
        now: i64,
        writes: Vec<Write>,
        origin: Origin<'_>,
    ) -> RunError {
        context.run_id = None;
        let event = AuditEvent::new(Kind::RunRefused, now, context)
            .with("reasons", decision.reasons.clone())
            .with("policy_digest", decision.policy_digest.as_str());
        let event = origin.describe(event);
        match self.commit(Append::changes(writes, vec![event])).await {
            Ok(()) => RunError::Refused(decision.reasons),
            Err(error) => error,
        }
    }

    /// A run with its reviews and jobs.
    pub async fn run(&self, id: &str) -> Result<RunView, RunError> {
        let run = self.run_row(id).await?;
        let reviews = self.store.reviews(id).await?;
        let jobs = self.store.jobs_of(id).await?;
        let scans = self.store.run_scans(id).await?;
        let stack = run.stack.clone();
        let mut view = view(run, &reviews, &jobs, &scans);
        self.explain_waiting(&stack, &mut view.jobs).await?;
        Ok(view)
    }

    /// Says, on each queued job no agent of its pool can take, why ([`waiting::waiting_for`]).
    async fn explain_waiting(&self, stack: &str, jobs: &mut [JobView]) -> Result<(), RunError> {
        let pools: std::collections::BTreeSet<String> =
            jobs.iter().filter(|job| job.state == "queued").map(|job| job.pool.clone()).collect();
        if pools.is_empty() {
            return Ok(());
        }
        let Some(stack) = self.store.stack(stack).await? else { return Ok(()) };
        let Ok(tool) = tool::Tool::parse(&stack.tool) else { return Ok(()) };
        for pool in pools {
            let agents = self.store.agents(Some(&pool)).await?;
            for job in jobs.iter_mut().filter(|job| job.state == "queued" && job.pool == pool) {
                job.waiting_for = waiting::waiting_for(&pool, tool, &agents);
            }
        }
        Ok(())
    }

    /// The newest runs (without reviews and jobs).
    pub async fn runs(&self, stack: Option<&str>, limit: i64) -> Result<Vec<RunView>, RunError> {
        self.runs_matching(&RunFilter::stack(stack), limit).await
    }

    /// The newest `limit` (at most 1,000) runs that match `filter` (an unknown stack is an error).
    pub async fn runs_matching(&self, filter: &RunFilter, limit: i64) -> Result<Vec<RunView>, RunError> {
        if let Some(stack) = &filter.stack {
            self.stack(stack).await?;
        }
        Ok(self
            .store
            .runs(filter, limit.clamp(1, 1000))
            .await?
            .into_iter()
            .map(|run| view(run, &[], &[], &[]))
            .collect())
    }

    /// The run `id`'s facts as recorded (with the approvals that count), if it exists.
    pub async fn recorded(&self, id: &str) -> Result<Option<reviews::RecordedRun>, RunError> {
        Ok(reviews::RecordedRun::load(&self.store, id).await?)
    }

    async fn run_row(&self, id: &str) -> Result<RunRow, RunError> {
        self.store.run(id).await?.ok_or_else(|| RunError::UnknownRun(id.to_owned()))
    }

    /// The job `id`, as stored.
    pub async fn job_row(&self, id: &str) -> Result<JobRow, RunError> {
        self.store.job(id).await?.ok_or_else(|| RunError::UnknownJob(id.to_owned()))
    }

    /// Records `who`'s review and applies what `keyward.approval` concludes: approve queues the
    /// apply, reject discards the run, pending waits for more reviews.
    pub async fn review(
        &self,
        id: &str,
        verdict: Verdict,
        comment: Option<String>,
        who: &str,
        caller: Context,
    ) -> Result<ReviewOutcome, RunError> {
        self.review_as(id, verdict, comment, &Actor::broker(who), caller).await
    }

    /// [`review`](Self::review) by `actor`, whom `keyward.approval` sees as `input.actor`.
    pub async fn review_as(
        &self,
        id: &str,
        verdict: Verdict,
        comment: Option<String>,
        actor: &Actor,
        caller: Context,
    ) -> Result<ReviewOutcome, RunError> {
        let who = actor.id();
        let (run, state, mut reviews) = self.reviewable(id, who, comment.as_deref()).await?;
        let stack = self.stack(&run.stack).await?;
        let now = self.clock.now();
        let identity = self.reviewer_identity(actor, &stack).await?;
        let review = ReviewRow {
            reviewer: who.to_owned(),
            decision: verdict.as_str().to_owned(),
            comment,
            at: now,
            identity: Some(identity.to_string()),
        };
        reviews.push(review.clone());
        let decision = self.decide(PolicyKind::Approval, || {
            policy_input::approval_input(&run, &stack, &reviews, self.target_labels(&stack), Some(actor), now)
        });
        let approvers = reviews::counted_approvers(&run.triggered_by, &reviews);
        let (next, detail) = match decision.outcome {
            // Replaces "waiting for approval: …", which no longer holds.
            Outcome::Approve => (RunState::Applying, Some(approved_detail(&approvers))),
            Outcome::Reject => (RunState::Discarded, Some(decision.reasons.join("; "))),
            _ => (RunState::Planned, Some(waiting_detail(&decision.reasons))),
        };
        let mut context = run_context(&run, &stack, Phase::Apply, who, caller);
        context.approved_by = approvers;
        let mut writes = vec![store::runs::insert_review(id, &review), transition(&run, next, detail.clone(), now)];
        let mut events = vec![reviewed_event(&context, &run.triggered_by, &review, &decision, now)];
        if next != RunState::Planned {
            let event = state_event(&context, state, next, detail.as_deref(), now);
            events.push(queue_apply_if(next, event, &mut writes, id, &stack, now));
        }
        self.commit(Append::changes(writes, events)).await?;
        if next == RunState::Applying {
            self.signals.queued(&stack.spec.pool);
        }
        Ok(ReviewOutcome { run: self.run(id).await?, approval: decision.outcome, reasons: decision.reasons })
    }

    /// Who `actor` is, as the review records it: kind, name, `issuer#subject`, groups, `amr`, and
    /// the role they hold in `stack`'s space now (its own or inherited from a space above).
    async fn reviewer_identity(&self, actor: &Actor, stack: &Stack) -> Result<Value, RunError> {
        let tree = crate::spaces::tree(&self.store).await?;
        let chain = tree.chain(&stack.spec.space).unwrap_or_default();
        let role = chain.iter().filter_map(|space| actor.roles.get(space)).max().copied();
        Ok(serde_json::json!({
            "kind": actor.kind,
            "name": actor.name,
            "subject": actor.subject,
            "groups": actor.groups,
            "amr": actor.amr,
            "role": role,
        }))
    }

    /// Run `id`, its state and its reviews so far, if `who` may review it now: the run is planned,
    /// `who` has not reviewed it, and the `comment` is not too long.
    async fn reviewable(
        &self,
        id: &str,
        who: &str,
        comment: Option<&str>,
    ) -> Result<(RunRow, RunState, Vec<ReviewRow>), RunError> {
        if comment.is_some_and(|comment| comment.len() > MAX_COMMENT) {
            return Err(RunError::CommentTooLong);
        }
        let run = self.run_row(id).await?;
        let state = parse_state(&run.state)?;
        if !state.takes_reviews() {
            return Err(RunError::NotReviewable { run: id.to_owned(), state });
        }
        let reviews = self.store.reviews(id).await?;
        if reviews.iter().any(|r| r.reviewer == who) {
            return Err(RunError::AlreadyReviewed { run: id.to_owned(), reviewer: who.to_owned() });
        }
        Ok((run, state, reviews))
    }

    /// Cancels a run that has not finished; its queued and leased jobs are canceled with it.
    pub async fn cancel(&self, id: &str, who: &str, caller: Context) -> Result<RunView, RunError> {
        let run = self.run_row(id).await?;
        let state = parse_state(&run.state)?;
        if state.is_final() {
            return Err(RunError::AlreadyOver { run: id.to_owned(), state });
        }
        let stack = self.stack(&run.stack).await?;
        let now = self.clock.now();
        let detail = format!("canceled by {who}");
        let writes = vec![
            transition(&run, RunState::Canceled, Some(detail.clone()), now),
            store::runs::cancel_jobs(id, now),
            store::state::release_run_locks(id),
        ];
        let context = run_context(&run, &stack, Phase::Plan, who, caller);
        let event = state_event(&context, state, RunState::Canceled, Some(&detail), now);
        let leased: Vec<JobRow> = self.store.jobs_of(id).await?.into_iter().filter(|j| j.state == "leased").collect();
        self.commit(Append::changes(writes, vec![event])).await?;
        for job in leased {
            if let Some(agent_id) = job.agent_id {
                self.signals.canceled(Canceled { agent_id, job_id: job.id, reason: detail.clone() });
            }
        }
        self.run(id).await
    }

    /// The lifecycle's wake-ups, for the job dispatcher.
    pub fn signals(&self) -> &Arc<Signals> {
        &self.signals
    }

    /// Labels of what applying touches: the stack's, overlaid by its apply targets'.
    fn target_labels(&self, stack: &Stack) -> serde_json::Map<String, Value> {
        let mut labels: serde_json::Map<String, Value> =
            stack.spec.labels.iter().map(|(key, value)| (key.clone(), json!(value))).collect();
        for target in stack.spec.apply_targets.iter().filter_map(|id| self.targets.get(id)) {
            for (key, value) in &target.labels {
                labels.insert(key.clone(), json!(value));
            }
        }
        labels
    }

    /// `kind`'s decision on the input `build` makes; without a configured policy, the default
    /// (refuse a run, leave an approval pending) with the reason.
    /// `input.variables` for `stack`: names, secret or not, where from. A read failure becomes
    /// `null`, which the shipped policies do not read and a policy that requires the list denies.
    async fn policy_variables(&self, stack: &Stack) -> Value {
        self.variable_names(stack).await.unwrap_or_else(|error| {
            tracing::warn!(stack = %stack.spec.name, %error, "cannot read the stack's variables for the policy input");
            Value::Null
        })
    }

    fn decide(&self, kind: PolicyKind, build: impl FnOnce() -> Value) -> Decision {
        match &self.policies {
            Some(engine) => engine.decide(kind, build()),
            None => Decision::failed(kind, "no policy is configured ([policy] dir)".to_owned(), String::new()),
        }
    }

    async fn commit(&self, append: Append) -> Result<(), RunError> {
        self.audit.append(append).await?.into_change()?;
        self.signals.run_changed();
        Ok(())
    }
}

/// Checks what a submission says before anything is read: a full commit SHA if any, a pull
/// request number that is not 0 and fits, a printable ticket. Returns the pull request number.
fn check_submission(submission: &Submission) -> Result<Option<i64>, RunError> {
    if let Some(commit) = &submission.commit
        && !is_commit_sha(commit)
    {
        return Err(RunError::BadCommit(commit.clone()));
    }
    if submission.pull_request == Some(0) {
        return Err(RunError::PullRequestZero);
    }
    if let Some(ticket) = &submission.ticket
        && (ticket.is_empty() || ticket.len() > MAX_TICKET || ticket.chars().any(char::is_control))
    {
        return Err(RunError::BadTicket);
    }
    submission.pull_request.map(i64::try_from).transpose().map_err(|_| RunError::PullRequestTooLarge)
}

/// A JSON column's text. (Lists and maps of strings always serialise.)
fn json_text<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned())
}

/// A planned run's detail: what it waits for, in the approval policy's words.
fn waiting_detail(reasons: &[String]) -> String {
    if reasons.is_empty() {
        "waiting for approval (the approval policy gave no reason)".to_owned()
    } else {
        format!("waiting for approval: {}", reasons.join("; "))
    }
}

fn parse_state(state: &str) -> Result<RunState, RunError> {
    state.parse().map_err(|e: UnknownState| RunError::Store(StoreError::Corrupt(e.to_string())))
}

fn outcome_name(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Allow | Outcome::Approve => "approve",
        Outcome::Deny | Outcome::Reject => "reject",
        Outcome::Pending => "pending",
        // A push decision is never an approval's: not approved.
        Outcome::Propose | Outcome::Track | Outcome::Ignore => "pending",
    }
}

/// `run` moves to `next`, if it is still at the version it was read at.
/// A run's detail once reviews approved it.
fn approved_detail(approvers: &[String]) -> String {
    if approvers.is_empty() { "approved by policy".to_owned() } else { format!("approved by {}", approvers.join(", ")) }
}

fn transition(run: &RunRow, next: RunState, detail: Option<String>, now: i64) -> Write {
    store::runs::transition(run, next.as_str(), detail, now)
}

/// The `run.reviewed` entry of `review` of a run `author` submitted: the verdict, whether it
/// counts (the author's own approval never does), and what the approval policy concluded.
fn reviewed_event(context: &Context, author: &str, review: &ReviewRow, decision: &Decision, now: i64) -> AuditEvent {
    let judged = reviews::judge(author, std::slice::from_ref(review));
    let note = judged.first().and_then(|j| j.note);
    AuditEvent::new(Kind::RunReviewed, now, context.clone())
        .with("decision", review.decision.as_str())
        .with("reviewer", review.identity.as_deref().and_then(|i| serde_json::from_str(i).ok()).unwrap_or(Value::Null))
        .with("comment", review.comment.clone().map_or(Value::Null, Value::from))
        .with("counted", note.is_none())
        .with("note", note.map_or(Value::Null, Value::from))
        .with("approval", outcome_name(decision.outcome))
        .with("reasons", decision.reasons.clone())
        .with("policy_digest", decision.policy_digest.as_str())
}

/// When a run moves to `next` = applying, queues its apply job (in `writes`) and names it in the
/// state change's `event`.
fn queue_apply_if(
    next: RunState,
    event: AuditEvent,
    writes: &mut Vec<Write>,
    run_id: &str,
    stack: &Stack,
    now: i64,
) -> AuditEvent {
    if next != RunState::Applying {
        return event;
    }
    let job_id = uuid::Uuid::now_v7().to_string();
    writes.push(store::runs::queue_job(&job_id, run_id, Phase::Apply, &stack.spec.pool, now));
    event.with("apply_job", job_id.as_str())
}

/// A stored run's chain of custody in `phase`, with the approvals that counted.
fn run_chain(run: &RunRow, stack: &Stack, phase: Phase, approved_by: Vec<String>) -> RunChain {
    RunChain {
        repository: Some(stack.spec.repository.clone()),
        commit_sha: Some(run.commit_sha.clone()),
        git_ref: run.git_ref.clone(),
        pull_request: run.pull_request.and_then(|n| u64::try_from(n).ok()),
        ticket: run.ticket.clone(),
        pull_request_source: run.pull_request_source.clone(),
        triggered_by: Some(run.triggered_by.clone()),
        approved_by,
        ..RunChain::new(run.id.clone(), stack.spec.name.clone(), stack.spec.name.clone(), phase)
    }
}

/// `input` with `input.variables` set.
fn with_variables(input: Value, variables: Value) -> Value {
    with_field(input, "variables", variables)
}

/// `input` (a policy input object) with `key` set to `value`.
fn with_field(mut input: Value, key: &str, value: Value) -> Value {
    if let Some(object) = input.as_object_mut() {
        object.insert(key.to_owned(), value);
    }
    input
}

/// The audit context of `who` acting on a stored run in `phase`.
fn run_context(run: &RunRow, stack: &Stack, phase: Phase, who: &str, caller: Context) -> Context {
    Context { actor: Some(who.to_owned()), ..caller.with_run(&run_chain(run, stack, phase, Vec::new())) }
}

fn state_event(context: &Context, from: RunState, to: RunState, detail: Option<&str>, now: i64) -> AuditEvent {
    AuditEvent::new(Kind::RunStateChanged, now, context.clone())
        .with("from", from.as_str())
        .with("to", to.as_str())
        .with("detail", detail.map_or(Value::Null, Value::from))
}

fn view(run: RunRow, reviews: &[ReviewRow], jobs: &[JobRow], scans: &[crate::store::JobScanRow]) -> RunView {
    let reviews = reviews::judge(&run.triggered_by, reviews)
        .into_iter()
        .map(|judged| ReviewView {
            by: judged.review.reviewer.clone(),
            decision: judged.review.decision.clone(),
            comment: judged.review.comment.clone(),
            at: judged.review.at,
            counted: judged.counted,
            note: judged.note,
            reviewer: judged.review.identity.as_deref().and_then(|i| serde_json::from_str(i).ok()),
        })
        .collect();
    RunView {
        id: run.id,
        stack: run.stack,
        state: run.state,
        kind: run.kind,
        drift: run.drift,
        commit_sha: run.commit_sha,
        git_ref: run.git_ref,
        pull_request: run.pull_request,
        ticket: run.ticket,
        pull_request_source: run.pull_request_source,
        triggered_by: run.triggered_by,
        detail: run.detail,
        created_at: run.created_at,
        updated_at: run.updated_at,
        reviews,
        jobs: jobs
            .iter()
            .map(|j| JobView {
                id: j.id.clone(),
                phase: j.phase,
                pool: j.pool.clone(),
                state: j.state.clone(),
                attempt: j.attempt,
                agent_id: j.agent_id.clone(),
                error: j.error.clone(),
                isolation: j.isolation.clone(),
                layers: j.layers.as_deref().and_then(|layers| serde_json::from_str(layers).ok()),
                scan: scans.iter().find(|scan| scan.job_id == j.id).map(scans::view),
                waiting_for: None,
            })
            .collect(),
    }
}
