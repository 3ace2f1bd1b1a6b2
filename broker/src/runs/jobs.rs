//! The job queue: agents lease the oldest queued job of their pool, and the lease holder reports
//! how it ended.
//!
//! A lease is a compare-and-set: `UPDATE jobs … WHERE id = ? AND state = 'queued' AND
//! fencing_token = ?`, committed with its audit entry. Of any number of agents (on any number of
//! broker replicas) reading the same candidate, exactly one write touches the row; the others are
//! refused and try the next candidate. Each lease increments the job's fencing token, and only a
//! report carrying the current token, from the agent holding the lease, counts.

use std::time::Duration;

use keyward_proto::claims::Phase;
use serde::Serialize;
use serde_json::Value;

use super::hooks::JobHook;
use super::tool::{Tool, Tools};
use super::{
    RunError, RunKind, RunState, Runs, Stack, parse_state, queue_apply_if, run_context, state_event, transition,
};
use crate::audit::{Append, AuditEvent, Committed, Context, Kind};
use crate::policy::{Outcome, PolicyKind};
use crate::store::DriftCounts;
use crate::store::runs::JobEnd;
use crate::store::write::{Refusal, Write};
use crate::store::{self, JobRow, RunRow};

/// How many queued jobs one lease attempt considers.
const CANDIDATES: i64 = 8;

/// Takes the oldest of `candidates` whose tool is among `tools`.
fn take_runnable(candidates: &mut Vec<(JobRow, Tool)>, tools: Tools) -> Option<JobRow> {
    let index = candidates.iter().position(|(_, tool)| tools.contains(*tool))?;
    Some(candidates.remove(index).0)
}

/// A job an agent now holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lease {
    /// Job ID.
    pub job_id: String,
    /// Its run.
    pub run_id: String,
    /// Stack name.
    pub stack: String,
    /// Plan or apply.
    pub phase: Phase,
    /// Repository to check out.
    pub repository: String,
    /// Exact commit.
    pub commit_sha: String,
    /// Directory of the configuration.
    pub path: String,
    /// This lease's fencing token.
    pub fencing_token: i64,
    /// When the lease ends unless renewed.
    pub lease_expires_at: i64,
    /// The stack's credential targets for the job's phase.
    pub credential_targets: Vec<String>,
    /// Apply jobs: SHA-256 of the saved plan to apply.
    pub plan_sha256: Option<Vec<u8>>,
    /// The run's kind: a drift run's plan job checks for drift instead of saving a plan.
    pub kind: RunKind,
    /// Whether the broker holds credentials for the repository (`SourceCredentials`).
    pub source_credentials: bool,
    /// Whether the broker keeps the stack's Terraform state (`StateBackend`).
    pub managed_state: bool,
    /// The hooks for the job's phase, in the order they run: at each point its contexts', then
    /// its stack's.
    pub hooks: Vec<JobHook>,
    /// Plan jobs: the scanners to run before anything else (docs/scans.md).
    pub scanners: Vec<super::scans::Scanner>,
    /// The program the job runs: its stack's tool.
    pub tool: Tool,
}

/// A job and what a credential decision about it needs to know.
#[derive(Debug, Clone)]
pub struct HeldJob {
    /// The job.
    pub job: JobRow,
    /// Its run.
    pub run: RunRow,
    /// The run's stack.
    pub stack: Stack,
    /// Who approved the run (apply jobs only: a plan runs before any review).
    pub approved_by: Vec<String>,
    /// When the lease ends unless renewed.
    pub lease_expires_at: i64,
}

impl HeldJob {
    /// The stack's credential targets for the job's phase.
    pub fn targets(&self) -> &[String] {
        self.stack.targets(self.job.phase)
    }

    /// A write that holds only while the lease is still this one and unexpired at `now`, and its
    /// holder is not revoked: it travels with whatever must not commit once the lease has moved
    /// on. The agent's state is read in the same statement because a revocation commits before
    /// it ends the agent's leases: a request that authenticated just before the revocation must
    /// not commit in between.
    pub fn lease_guard(&self, now: i64) -> Write {
        store::runs::lease_guard(&self.job, now)
    }
}

/// How many times a plan job is leased before an expiry fails it.
const MAX_PLAN_ATTEMPTS: i64 = 3;

/// Why a lease ended without a report from its holder.
///
/// - `Expired`: heartbeats stopped. A plan is requeued (up to three attempts; planning changes
///   nothing); an apply is `interrupted` and its run with it: it may have half-applied, so it is
///   never re-applied silently.
/// - `Revoked`: the holder was revoked. Its work is not trusted: a plan fails, an apply is
///   interrupted.
/// - `Undelivered`: the assignment never reached the agent (its stream closed first), so the job
///   is queued again whatever its phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseEnd {
    /// No heartbeat before the lease ran out.
    Expired,
    /// The agent was revoked.
    Revoked,
    /// The assignment could not be sent.
    Undelivered,
}

impl LeaseEnd {
    /// The name recorded.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::Revoked => "agent revoked",
            Self::Undelivered => "undelivered",
        }
    }
}

/// The head of a job's log as the broker verified it, sealed with the job's end.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogSeal {
    /// The last stored chunk's digest (`None`: no chunk).
    pub digest: Option<Vec<u8>>,
    /// Chunks stored.
    pub chunks: i64,
    /// Bytes of output stored.
    pub bytes: i64,
    /// Whether that is the head the agent reports (else chunks are missing).
    pub complete: bool,
    /// The head the agent reports, hex, when it differs.
    pub claimed: Option<String>,
}

/// How a job ended, as its agent reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum JobOutcome {
    /// It succeeded.
    #[default]
    Succeeded,
    /// A drift check ran to the end and found this.
    Checked(Drift),
    /// It failed, and why.
    Failed(String),
}

/// What a drift check found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drift {
    /// Whether the real infrastructure differs from the configuration (`-detailed-exitcode` 2).
    pub drifted: bool,
    /// What differs, counted from the plan (`1 to add, 0 to change, 0 to destroy`), masked on
    /// the agent.
    pub summary: String,
    /// The same counts, and the resources changed outside Terraform.
    pub counts: DriftCounts,
    /// The addresses of the resources that differ (masked on the agent; an older agent reports
    /// none).
    pub addresses: Vec<String>,
}

/// Everything a lease holder reports when its job ends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobReport {
    /// How it ended.
    pub outcome: JobOutcome,
    /// The head of its log, as verified here (`None`: not known, as in tests of the queue alone).
    pub log: Option<LogSeal>,
    /// The sandbox layers its processes ran under, in order (empty: no sandbox).
    pub layers: Vec<String>,
}

impl From<JobOutcome> for JobReport {
    fn from(outcome: JobOutcome) -> Self {
        Self { outcome, ..Self::default() }
    }
}

/// The longest drift summary kept (Terraform's is one short line).
const MAX_DRIFT_SUMMARY: usize = 256;
/// The most layers kept, and the longest name of one.
const MAX_LAYERS: usize = 32;
const MAX_LAYER: usize = 128;

impl Runs {
    /// Leases the oldest queued job of `pool` to `agent_id` for `lease`, or `None` when there is
    /// nothing to do. The agent is taken to run every tool (tests of the queue alone).
    pub async fn lease_next(&self, pool: &str, agent_id: &str, lease: Duration) -> Result<Option<Lease>, RunError> {
        for (job, _) in self.store.queued_jobs(pool, None, CANDIDATES).await? {
            if let Some(leased) = self.try_lease(job, agent_id, lease).await? {
                return Ok(Some(leased));
            }
        }
        Ok(None)
    }

    /// [`lease_capable`](Self::lease_capable) with agents that run every tool (tests of the queue
    /// alone).
    pub async fn lease_batch(
        &self,
        pool: &str,
        agents: &[String],
        lease: Duration,
    ) -> Result<Option<Vec<(String, Lease)>>, RunError> {
        let agents: Vec<(String, Tools)> = agents.iter().map(|agent| (agent.clone(), Tools::ANY)).collect();
        self.lease_capable(pool, &agents, lease).await
    }

    /// Leases one of the oldest queued jobs of `pool` to each of `agents` that has the job's
    /// stack's tool, all at once: the compare-and-sets are separate appends, so they share the
    /// audit log's group commit instead of waiting for one another's sync. An agent whose job was
    /// taken meanwhile (by another replica) tries the next candidates it can run, in turn. A job
    /// no agent here can run stays queued for one that can. Returns `None` when nothing is
    /// queued, else the leases made (fewer than `agents` when jobs ran out).
    pub async fn lease_capable(
        &self,
        pool: &str,
        agents: &[(String, Tools)],
        lease: Duration,
    ) -> Result<Option<Vec<(String, Lease)>>, RunError> {
        let limit = i64::try_from(agents.len()).unwrap_or(0).saturating_add(CANDIDATES);
        let mut candidates: Vec<(JobRow, Tool)> = Vec::new();
        let only = agents.iter().map(|(_, tools)| *tools).reduce(Tools::union).and_then(Tools::single);
        for (job, tool) in self.store.queued_jobs(pool, only.map(Tool::as_str), limit).await? {
            // A stack row this build cannot read: leave its job queued, say why.
            match Tool::parse(&tool) {
                Ok(tool) => candidates.push((job, tool)),
                Err(error) => tracing::warn!(job_id = %job.id, %error, "a queued job's stack names no known tool"),
            }
        }
        if candidates.is_empty() {
            return Ok(None);
        }
        let mut attempts = tokio::task::JoinSet::new();
        let mut unlucky = Vec::new();
        for (agent, tools) in agents {
            let Some(job) = take_runnable(&mut candidates, *tools) else {
                unlucky.push((agent.clone(), *tools));
                continue;
            };
            let (runs, agent, tools) = (self.clone(), agent.clone(), *tools);
            attempts.spawn(async move {
                let leased = runs.try_lease(job, &agent, lease).await;
                (agent, tools, leased)
            });
        }
        let mut leases = Vec::new();
        while let Some(attempt) = attempts.join_next().await {
            match attempt {
                Ok((agent, _, Ok(Some(lease)))) => leases.push((agent, lease)),
                Ok((agent, tools, Ok(None))) => unlucky.push((agent, tools)),
                Ok((agent, _, Err(error))) => tracing::warn!(%error, agent_id = %agent, "could not lease a job"),
                Err(error) => tracing::error!(%error, "a lease attempt panicked"),
            }
        }
        for (agent, tools) in unlucky {
            while let Some(job) = take_runnable(&mut candidates, tools) {
                if let Some(lease) = self.try_lease(job, &agent, lease).await? {
                    leases.push((agent, lease));
                    break;
                }
            }
        }
        Ok(Some(leases))
    }

    /// Leases `job`, as read from the queue, to `agent_id`; `None` when someone else took it or
    /// its run moved on meanwhile.
    async fn try_lease(&self, job: JobRow, agent_id: &str, lease: Duration) -> Result<Option<Lease>, RunError> {
        let lease_secs = i64::try_from(lease.as_secs()).unwrap_or(i64::MAX);
        let run = self.run_row(&job.run_id).await?;
        let stack = self.stack(&run.stack).await?;
        // Read before the lease commits, so that a failure here leaves the job queued.
        let hooks = self.lease_hooks(&stack, job.phase).await?;
        let now = self.clock.now();
        let fencing_token = job.fencing_token + 1;
        let expires = now.saturating_add(lease_secs);
        let mut writes = vec![store::runs::lease_job(&job, agent_id, fencing_token, expires, now)];
        let context = run_context(&run, &stack, job.phase, &format!("agent:{agent_id}"), Context::default());
        let mut events = vec![
            AuditEvent::new(Kind::JobLeased, now, context.clone())
                .with("job_id", job.id.as_str())
                .with("agent_id", agent_id)
                .with("fencing_token", fencing_token)
                .with("lease_expires_at", expires)
                .with_ref("job", &job.id),
        ];
        let from = parse_state(&run.state)?;
        let kind = run_kind(&run)?;
        let phase = job.phase;
        if phase == Phase::Plan && from == RunState::Queued {
            writes.push(transition(&run, RunState::Planning, None, now));
            events.push(state_event(&context, from, RunState::Planning, None, now));
        }
        match self.audit.append(Append::changes(writes, events)).await? {
            Committed::Recorded(_) => {
                self.signals.run_changed();
                self.metrics.job_dispatched(now.saturating_sub(job.created_at));
                let source_credentials = self.repositories.for_url(&stack.spec.repository).is_some();
                let credential_targets = stack.targets(job.phase).to_vec();
                let managed_state = stack.spec.managed_state;
                let scanners = if phase == Phase::Plan { stack.spec.scanners.clone() } else { Vec::new() };
                let plan_sha256 = if job.phase == Phase::Apply {
                    self.store.plan(&run.id).await?.map(|plan| plan.sha256)
                } else {
                    None
                };
                Ok(Some(Lease {
                    job_id: job.id,
                    run_id: run.id,
                    stack: stack.spec.name,
                    credential_targets,
                    phase,
                    repository: stack.spec.repository,
                    commit_sha: run.commit_sha,
                    path: stack.spec.path,
                    fencing_token,
                    lease_expires_at: expires,
                    plan_sha256,
                    kind,
                    source_credentials,
                    managed_state,
                    hooks,
                    scanners,
                    tool: stack.spec.tool,
                }))
            }
            // Someone else took it (or the run moved on).
            Committed::Refused(Refusal::Unmet { .. }) => Ok(None),
            Committed::Refused(refusal) => Err(RunError::LeaseWrite(refusal)),
            Committed::Replayed => Err(RunError::UnexpectedReplay),
        }
    }

    /// Records how the job ended, if `agent_id` holds its current lease (`fencing_token`), and
    /// moves the run on: a plan that succeeded makes the run `planned` (and asks
    /// `keyward.approval`, which may let it apply at once); an apply that succeeded finishes it;
    /// a drift check finishes its run with what it found; a failure fails it.
    pub async fn finish_job(
        &self,
        job_id: &str,
        agent_id: &str,
        fencing_token: i64,
        report: JobReport,
    ) -> Result<(), RunError> {
        let job = self.store.job(job_id).await?.ok_or_else(|| RunError::UnknownJob(job_id.to_owned()))?;
        check_holder(&job, agent_id, fencing_token)?;
        let run = self.run_row(&job.run_id).await?;
        let stack = self.stack(&run.stack).await?;
        let outcome = expected_outcome(run_kind(&run)?, job.phase, report.outcome);
        let from = parse_state(&run.state)?;
        let now = self.clock.now();
        let context = run_context(&run, &stack, job.phase, &format!("agent:{agent_id}"), Context::default());
        let layers = bounded_layers(report.layers);
        let (write, finished) = job_finished(&job, agent_id, &outcome, layers, report.log.as_ref(), &context, now);
        let (mut writes, mut events) = (vec![write, store::state::release_job_locks(&job.id)], vec![finished]);
        if !from.is_final() {
            let (more, moved) = self.advance_run(&run, &stack, &job, &outcome, (from, &context), now).await?;
            writes.extend(more);
            events.push(moved);
            if run_kind(&run)? == RunKind::Drift {
                events.extend(super::drift::state_changed(&stack, &outcome, &context, now));
            }
        }
        let queued_apply = events.iter().any(|e| e.details.contains_key("apply_job"));
        self.commit(Append::changes(writes, events)).await?;
        if queued_apply {
            self.signals.queued(&stack.spec.pool);
        }
        if run_kind(&run)? == RunKind::Drift
            && matches!(&outcome, JobOutcome::Checked(drift) if drift.drifted)
            && !from.is_final()
        {
            self.remediate(&stack, &run.id).await;
        }
        Ok(())
    }

    /// Moves `run` on (from the state `from`, recorded under `context`) now that `job` ended
    /// with `outcome`: the writes (a drift finding, the transition, an apply job to queue) and
    /// the state change's entry.
    async fn advance_run(
        &self,
        run: &RunRow,
        stack: &Stack,
        job: &JobRow,
        outcome: &JobOutcome,
        (from, context): (RunState, &Context),
        now: i64,
    ) -> Result<(Vec<Write>, AuditEvent), RunError> {
        let mut writes = Vec::new();
        if let JobOutcome::Checked(drift) = outcome {
            writes.push(store::runs::record_drift(&run.id, drift.drifted));
        }
        if run_kind(run)? == RunKind::Drift {
            writes.extend(super::drift::record(&stack.spec.name, &run.id, outcome, now));
        }
        let (next, detail) = self.next_state(run, stack, job, outcome, now).await?;
        writes.push(transition(run, next, detail.clone(), now));
        let event = state_event(context, from, next, detail.as_deref(), now);
        let event = queue_apply_if(next, event, &mut writes, &run.id, stack, now);
        Ok((writes, event))
    }

    /// Where `run` goes now that `job` ended with `outcome`, and why: a failure fails it, a drift
    /// check or an apply finishes it, a plan goes to review unless the plan policy denied it.
    async fn next_state(
        &self,
        run: &RunRow,
        stack: &Stack,
        job: &JobRow,
        outcome: &JobOutcome,
        now: i64,
    ) -> Result<(RunState, Option<String>), RunError> {
        // A refused scan fails the run whatever the agent reported; a missing one fails a plan
        // that claims success (a failure before the scan keeps its own reason).
        let succeeded = !matches!(outcome, JobOutcome::Failed(_));
        if job.phase == Phase::Plan
            && let Some(refusal) = self.scan_refusal(stack, &job.id, succeeded).await?
        {
            return Ok((RunState::Failed, Some(refusal)));
        }
        Ok(match (outcome, job.phase) {
            (JobOutcome::Failed(error), phase) => (RunState::Failed, Some(format!("{phase} failed: {error}"))),
            (JobOutcome::Checked(drift), _) => (RunState::Finished, Some(drift_detail(drift))),
            (JobOutcome::Succeeded, Phase::Plan) => match self.plan_denial(&run.id, &job.id).await? {
                Some(denial) => (RunState::Failed, Some(denial)),
                None if run_kind(run)? == RunKind::Proposed => (RunState::Finished, Some(PROPOSED_DETAIL.to_owned())),
                None => self.after_plan(run, stack, now),
            },
            (JobOutcome::Succeeded, _) => (RunState::Finished, None),
        })
    }

    /// The job `job_id` with its run, stack and approvers, if `agent_id` holds its current lease
    /// `fencing_token` and the lease has not run out: what a credential request for the job must
    /// show. The lease can still move on afterwards; [`HeldJob::lease_guard`] re-checks it.
    pub async fn held_job(&self, job_id: &str, agent_id: &str, fencing_token: i64) -> Result<HeldJob, RunError> {
        let job = self.store.job(job_id).await?.ok_or_else(|| RunError::UnknownJob(job_id.to_owned()))?;
        self.hold(job, agent_id, fencing_token).await
    }

    /// [`held_job`](Self::held_job) for `job` as already read.
    pub(super) async fn hold(&self, job: JobRow, agent_id: &str, fencing_token: i64) -> Result<HeldJob, RunError> {
        check_holder(&job, agent_id, fencing_token)?;
        let now = self.clock.now();
        let lease_expires_at = job.lease_expires_at.unwrap_or(i64::MIN);
        if lease_expires_at < now {
            return Err(RunError::LeaseExpired { job: job.id.clone(), fencing_token });
        }
        let run = self.run_row(&job.run_id).await?;
        let stack = self.stack(&run.stack).await?;
        let approved_by = if job.phase == Phase::Apply {
            super::reviews::counted_approvers(&run.triggered_by, &self.store.reviews(&run.id).await?)
        } else {
            Vec::new()
        };
        Ok(HeldJob { job, run, stack, approved_by, lease_expires_at })
    }

    /// Ends the lease `job` was read with, without a report from its holder, and decides what
    /// becomes of the job (see [`LeaseEnd`]). Returns what happened, or `None` when the lease
    /// had already moved on (another replica got there first, or the holder reported).
    pub async fn end_lease(&self, job: &JobRow, end: LeaseEnd) -> Result<Option<&'static str>, RunError> {
        let Some(agent_id) = job.agent_id.as_deref() else { return Ok(None) };
        if job.state != "leased" {
            return Ok(None);
        }
        let run = self.run_row(&job.run_id).await?;
        let stack = self.stack(&run.stack).await?;
        let now = self.clock.now();
        let from = parse_state(&run.state)?;
        let requeue = match end {
            LeaseEnd::Undelivered => true,
            LeaseEnd::Expired => job.phase == Phase::Plan && job.attempt < MAX_PLAN_ATTEMPTS,
            LeaseEnd::Revoked => false,
        };
        let (job_state, run_next, detail) = if requeue {
            let back = (from == RunState::Planning && job.phase == Phase::Plan).then_some(RunState::Queued);
            ("queued", back, None)
        } else if job.phase == Phase::Apply {
            let detail = format!("the apply lease of agent {agent_id} ended ({}); never re-applied", end.as_str());
            ("interrupted", Some(RunState::Interrupted), Some(detail))
        } else {
            let detail = format!("the plan lease of agent {agent_id} ended ({})", end.as_str());
            ("failed", Some(RunState::Failed), Some(detail))
        };
        let mut writes = vec![
            store::runs::end_lease(job, job_state, format!("lease ended: {}", end.as_str()), now),
            store::state::release_job_locks(&job.id),
        ];
        let context = run_context(&run, &stack, job.phase, &format!("agent:{agent_id}"), Context::default());
        let mut events = vec![
            AuditEvent::new(Kind::JobLeaseEnded, now, context.clone())
                .with("job_id", job.id.as_str())
                .with("agent_id", agent_id)
                .with("fencing_token", job.fencing_token)
                .with("reason", end.as_str())
                .with("outcome", job_state),
        ];
        if let Some(next) = run_next.filter(|_| !from.is_final()) {
            writes.push(transition(&run, next, detail.clone(), now));
            events.push(state_event(&context, from, next, detail.as_deref(), now));
            if next == RunState::Failed && run_kind(&run)? == RunKind::Drift {
                let error = detail.as_deref().unwrap_or("the check's lease ended");
                writes.push(store::drift::record_failed(&stack.spec.name, Some(&run.id), error, now));
            }
        }
        match self.audit.append(Append::changes(writes, events)).await? {
            Committed::Recorded(_) => {
                self.signals.run_changed();
                if requeue {
                    self.signals.queued(&job.pool);
                }
                tracing::warn!(job_id = %job.id, agent_id, reason = end.as_str(), outcome = job_state, "job lease ended");
                Ok(Some(job_state))
            }
            Committed::Refused(Refusal::Unmet { .. }) => Ok(None),
            Committed::Refused(refusal) => Err(RunError::LeaseWrite(refusal)),
            Committed::Replayed => Err(RunError::UnexpectedReplay),
        }
    }

    /// Ends every lease whose time ran out before now; returns how many ended.
    pub async fn expire_leases(&self) -> Result<usize, RunError> {
        let mut ended = 0;
        for job in self.store.expired_leases(self.clock.now(), 64).await? {
            if self.end_lease(&job, LeaseEnd::Expired).await?.is_some() {
                ended += 1;
            }
        }
        Ok(ended)
    }

    /// Ends every lease `agent_id` holds (it was revoked).
    pub async fn end_leases_of(&self, agent_id: &str, end: LeaseEnd) -> Result<usize, RunError> {
        let mut ended = 0;
        for job in self.store.leased_jobs_of(agent_id).await? {
            if self.end_lease(&job, end).await?.is_some() {
                ended += 1;
            }
        }
        Ok(ended)
    }

    /// Why the plan policy refused the saved plan `job_id` submitted for `run_id`, if it did.
    async fn plan_denial(&self, run_id: &str, job_id: &str) -> Result<Option<String>, RunError> {
        let Some(plan) = self.store.plan(run_id).await?.filter(|plan| plan.job_id == job_id) else { return Ok(None) };
        let deny: Vec<String> = serde_json::from_str(&plan.deny).unwrap_or_default();
        Ok((!deny.is_empty()).then(|| format!("the plan policy denies the plan: {}", deny.join("; "))))
    }

    /// Where a run goes once planned: `keyward.approval` with the reviews so far (usually none)
    /// may already approve (auto-apply) or reject; otherwise it waits for reviews.
    fn after_plan(&self, run: &RunRow, stack: &Stack, now: i64) -> (RunState, Option<String>) {
        let decision = self.decide(PolicyKind::Approval, || {
            super::policy_input::approval_input(run, stack, &[], self.target_labels(stack), None, now)
        });
        match decision.outcome {
            Outcome::Approve => {
                (RunState::Applying, Some("applied without review: the approval policy allows it".to_owned()))
            }
            Outcome::Reject => (RunState::Discarded, Some(decision.reasons.join("; "))),
            _ => (RunState::Planned, Some(super::waiting_detail(&decision.reasons))),
        }
    }
}

/// Why a proposed run finishes after its plan.
const PROPOSED_DETAIL: &str = "planned as proposed: a proposed run is never applied";

/// The stored run's kind.
fn run_kind(run: &RunRow) -> Result<RunKind, RunError> {
    run.kind.parse().map_err(|e: super::UnknownKind| RunError::Store(crate::store::StoreError::Corrupt(e.to_string())))
}

/// The stored job's phase.
/// `reported`, unless it does not fit the job: a drift run's plan job must report what it found
/// (an agent that planned and said nothing else did not check for drift), and only that job may.
fn expected_outcome(kind: RunKind, phase: Phase, reported: JobOutcome) -> JobOutcome {
    match (kind, phase, reported) {
        (_, _, JobOutcome::Failed(error)) => JobOutcome::Failed(error),
        (RunKind::Drift, Phase::Plan, JobOutcome::Checked(drift)) => {
            let mut summary: String = drift.summary.chars().filter(|c| !c.is_control()).collect();
            summary.truncate(summary.floor_char_boundary(MAX_DRIFT_SUMMARY));
            JobOutcome::Checked(super::drift::bounded(Drift { summary, ..drift }))
        }
        (RunKind::Drift, _, _) => JobOutcome::Failed(
            "the agent did not report the drift check's result (an agent older than the broker?)".to_owned(),
        ),
        (RunKind::Deploy | RunKind::Remediation | RunKind::Proposed, _, JobOutcome::Checked(_)) => {
            JobOutcome::Failed("the agent reported a drift check for a deploy run".to_owned())
        }
        (RunKind::Deploy | RunKind::Remediation | RunKind::Proposed, _, JobOutcome::Succeeded) => JobOutcome::Succeeded,
    }
}

/// The job row's end and its `job.finished` entry, for `job` whose holder `agent_id` reported
/// `outcome`, with the `layers` it ran under and the head of its `log` as verified.
fn job_finished(
    job: &JobRow,
    agent_id: &str,
    outcome: &JobOutcome,
    layers: Vec<String>,
    log: Option<&LogSeal>,
    context: &Context,
    now: i64,
) -> (Write, AuditEvent) {
    let (state, error) = match outcome {
        JobOutcome::Succeeded | JobOutcome::Checked(_) => ("succeeded", None),
        JobOutcome::Failed(error) => ("failed", Some(error.clone())),
    };
    let end = JobEnd {
        state,
        error: error.clone(),
        log_digest: log.and_then(|l| l.digest.clone()),
        log_chunks: log.map(|l| l.chunks),
        layers: (!layers.is_empty()).then(|| super::json_text(&layers)),
    };
    let write = store::runs::finish_job(&job.id, agent_id, job.fencing_token, end, now);
    let mut finished = AuditEvent::new(Kind::JobFinished, now, context.clone())
        .with("job_id", job.id.as_str())
        .with("agent_id", agent_id)
        .with("fencing_token", job.fencing_token)
        .with("outcome", state)
        .with("error", error.map_or(Value::Null, Value::from))
        .with("isolation", job.isolation.clone().map_or(Value::Null, Value::from))
        .with("layers", layers);
    if let Some(log) = log {
        finished = with_log(finished, log);
    }
    if let JobOutcome::Checked(drift) = outcome {
        finished = finished
            .with("drift", drift.drifted)
            .with("drift_summary", drift.summary.as_str())
            .with("drift_to_add", drift.counts.to_add)
            .with("drift_to_change", drift.counts.to_change)
            .with("drift_to_destroy", drift.counts.to_destroy)
            .with("drift_changed_outside", drift.counts.changed_outside)
            .with("drift_addresses", drift.addresses.clone());
    }
    (write, finished)
}

/// `event` with the head of the job's log as the broker verified it.
fn with_log(event: AuditEvent, log: &LogSeal) -> AuditEvent {
    let digest = log.digest.as_deref().map(keyward_proto::encoding::hex);
    let event = event
        .with("log_digest", digest.map_or(Value::Null, Value::from))
        .with("log_chunks", log.chunks)
        .with("log_bytes", log.bytes)
        .with("log_complete", log.complete);
    match &log.claimed {
        Some(claimed) => event.with("log_claimed_digest", claimed.as_str()),
        None => event,
    }
}

/// A finished drift check's detail on its run.
fn drift_detail(drift: &Drift) -> String {
    if drift.drifted {
        format!("drift: {}", if drift.summary.is_empty() { "changes pending" } else { &drift.summary })
    } else {
        "no drift: the infrastructure matches the configuration".to_owned()
    }
}

/// At most [`MAX_LAYERS`] layer names of printable characters, each at most [`MAX_LAYER`] characters.
fn bounded_layers(layers: Vec<String>) -> Vec<String> {
    layers
        .into_iter()
        .take(MAX_LAYERS)
        .map(|layer| layer.chars().filter(|c| !c.is_control()).take(MAX_LAYER).collect::<String>())
        .filter(|layer| !layer.is_empty())
        .collect()
}

/// Only the agent holding the job's current lease may report on it.
fn check_holder(job: &JobRow, agent_id: &str, fencing_token: i64) -> Result<(), RunError> {
    if job.state != "leased" || job.agent_id.as_deref() != Some(agent_id) || job.fencing_token != fencing_token {
        return Err(RunError::NotLeaseHolder { job: job.id.clone(), agent: agent_id.to_owned(), fencing_token });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked(drifted: bool, summary: &str) -> JobOutcome {
        JobOutcome::Checked(Drift { drifted, summary: summary.to_owned(), ..Drift::default() })
    }

    #[test]
    fn only_a_drift_runs_plan_job_may_report_drift_and_it_must() {
        let failed = |outcome: JobOutcome| matches!(outcome, JobOutcome::Failed(_));
        assert_eq!(expected_outcome(RunKind::Drift, Phase::Plan, checked(true, "1 to add")), checked(true, "1 to add"));
        assert!(failed(expected_outcome(RunKind::Drift, Phase::Plan, JobOutcome::Succeeded)));
        assert!(failed(expected_outcome(RunKind::Drift, Phase::Apply, checked(false, ""))));
        assert!(failed(expected_outcome(RunKind::Deploy, Phase::Plan, checked(false, ""))));
        assert_eq!(expected_outcome(RunKind::Deploy, Phase::Apply, JobOutcome::Succeeded), JobOutcome::Succeeded);
        let failure = JobOutcome::Failed("boom".to_owned());
        assert_eq!(expected_outcome(RunKind::Drift, Phase::Plan, failure.clone()), failure);
    }

    #[test]
    fn reported_text_is_bounded_and_printable() {
        let long = format!("{}\u{1b}[31m", "é".repeat(MAX_DRIFT_SUMMARY));
        let JobOutcome::Checked(drift) = expected_outcome(RunKind::Drift, Phase::Plan, checked(true, &long)) else {
            panic!("a drift report stays one")
        };
        assert!(drift.summary.len() <= MAX_DRIFT_SUMMARY && !drift.summary.contains('\u{1b}'));
        let layers = bounded_layers((0..100).map(|i| format!("layer {i}\n{}", "x".repeat(500))).collect());
        assert_eq!(layers.len(), MAX_LAYERS);
        assert!(layers.iter().all(|l| l.chars().count() == MAX_LAYER && !l.contains('\n')));
        assert!(bounded_layers(vec!["\n".to_owned()]).is_empty());
    }
}
