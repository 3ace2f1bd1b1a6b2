//! A job as the agent runs it: the broker's `JobAssignment`, parsed once, when it arrives.
//!
//! The protocol spells a job's phase and its run's kind as enums whose zero value,
//! UNSPECIFIED, is what a broker from before the enums sends (its text fields are reserved
//! now) and what an unknown future value reads as. Such an assignment is refused here with an
//! error that says so, and the rest of the agent only ever sees a [`Task`]: which Terraform work
//! to do, from a closed list, so no later step matches on text.

use keyward_proto::agent_v1::{self as wire, JobAssignment};
use keyward_proto::claims::Phase;

use crate::hooks::{Hook, HookPoint};
use crate::tools::Tool;

/// The work a job asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Task {
    /// A deploy's plan: `terraform plan -out`, the saved plan submitted for review.
    #[default]
    Plan,
    /// A drift check: `terraform plan -detailed-exitcode` with read-only credentials; nothing is
    /// saved or applied, the finding is reported.
    CheckDrift,
    /// A deploy's apply of the plan that was reviewed.
    Apply,
}

impl Task {
    /// The Terraform phase: what the job's credentials may do.
    pub fn phase(self) -> Phase {
        match self {
            Self::Plan | Self::CheckDrift => Phase::Plan,
            Self::Apply => Phase::Apply,
        }
    }
}

/// A job the broker leased to this agent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Job {
    /// Job ID.
    pub job_id: String,
    /// Its run.
    pub run_id: String,
    /// Its stack.
    pub stack_id: String,
    /// What to do.
    pub task: Task,
    /// The repository to check out.
    pub repository: String,
    /// The exact commit.
    pub commit_sha: String,
    /// The configuration's directory in the repository.
    pub path: String,
    /// The lease's fencing token, shown on every call about the job.
    pub fencing_token: u64,
    /// When the lease ends unless a heartbeat renews it (Unix seconds).
    pub lease_expires_unix: i64,
    /// The broker's deadline for the job (Unix seconds; 0: none).
    pub deadline_unix: i64,
    /// The credential targets to fetch before the phase starts.
    pub credential_targets: Vec<String>,
    /// Applies: the SHA-256 of the saved plan to apply.
    pub plan_sha256: Vec<u8>,
    /// Whether the broker holds credentials for the repository.
    pub source_credentials: bool,
    /// Whether the broker keeps the stack's Terraform state (the state relay serves it).
    pub managed_state: bool,
    /// The lifecycle hooks for this phase, in the order they run: at each point the stack's
    /// contexts', then its own.
    pub hooks: Vec<Hook>,
    /// Plan jobs of a scanned stack: the scanners to run before anything else (docs/scans.md).
    pub scanners: Vec<String>,
    /// The program the phase runs: the stack's tool.
    pub tool: Tool,
}

/// An assignment this agent will not run, and which job it was (to report the refusal).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct Refused {
    /// The job.
    pub job_id: String,
    /// Its run.
    pub run_id: String,
    /// The lease it came with.
    pub fencing_token: u64,
    /// Why it is refused.
    pub error: JobError,
}

/// Why an assignment cannot be run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// No phase: a broker older than this agent's protocol (or a phase this agent does not know).
    #[error(
        "the broker sent a job without a phase this agent knows (job_phase is UNSPECIFIED): a broker older than this agent's protocol; upgrade the broker"
    )]
    NoPhase,
    /// No run kind: as for the phase.
    #[error(
        "the broker sent a job without a run kind this agent knows (job_run_kind is UNSPECIFIED): a broker older than this agent's protocol; upgrade the broker"
    )]
    NoRunKind,
    /// A combination no run has: a drift check never applies.
    #[error("this agent cannot run an apply job of a drift run")]
    ApplyOfDriftRun,
    /// A hook at a point this agent does not know (a broker newer than this agent).
    #[error("the broker sent a hook for `{0}`, a point this agent does not know; upgrade the agent")]
    UnknownHookPoint(String),
    /// A scanner this agent does not know how to run (a broker newer than this agent).
    #[error("the stack is scanned with `{0}`, a scanner this agent does not know; upgrade the agent")]
    UnknownScanner(String),
    /// A tool this agent does not know (a broker newer than this agent).
    #[error("the stack runs a tool this agent does not know (tool {0}); upgrade the agent")]
    UnknownTool(i32),
}

impl TryFrom<JobAssignment> for Job {
    type Error = Refused;

    fn try_from(assignment: JobAssignment) -> Result<Self, Refused> {
        let checked = task(assignment.job_phase(), assignment.job_run_kind())
            .and_then(|task| Ok((task, hooks(&assignment.hooks)?)))
            .and_then(|checked| known_scanners(&assignment.scanners).map(|()| checked))
            .and_then(|(task, hooks)| {
                let tool = Tool::from_wire(assignment.tool).ok_or(JobError::UnknownTool(assignment.tool))?;
                Ok((task, hooks, tool))
            });
        let (task, hooks, tool) = match checked {
            Ok(checked) => checked,
            Err(error) => {
                let JobAssignment { job_id, run_id, fencing_token, .. } = assignment;
                return Err(Refused { job_id, run_id, fencing_token, error });
            }
        };
        Ok(Self {
            job_id: assignment.job_id,
            run_id: assignment.run_id,
            stack_id: assignment.stack_id,
            task,
            repository: assignment.repository,
            commit_sha: assignment.commit_sha,
            path: assignment.path,
            fencing_token: assignment.fencing_token,
            lease_expires_unix: assignment.lease_expires_unix,
            deadline_unix: assignment.deadline_unix,
            credential_targets: assignment.credential_targets,
            plan_sha256: assignment.plan_sha256,
            source_credentials: assignment.source_credentials,
            managed_state: assignment.managed_state,
            hooks,
            scanners: assignment.scanners,
            tool,
        })
    }
}

/// The assignment's hooks, each at a point this agent knows.
fn hooks(hooks: &[wire::Hook]) -> Result<Vec<Hook>, JobError> {
    hooks
        .iter()
        .map(|hook| {
            let point = HookPoint::parse(&hook.point).ok_or_else(|| JobError::UnknownHookPoint(hook.point.clone()))?;
            let context = Some(hook.context.clone()).filter(|name| !name.is_empty());
            Ok(Hook { point, command: hook.command.clone(), context })
        })
        .collect()
}

/// Every scanner named is one this agent can run.
fn known_scanners(scanners: &[String]) -> Result<(), JobError> {
    match scanners.iter().find(|name| !crate::scan::KNOWN.contains(&name.as_str())) {
        Some(unknown) => Err(JobError::UnknownScanner(unknown.clone())),
        None => Ok(()),
    }
}

/// The task a phase of a run of a kind is.
fn task(phase: wire::Phase, kind: wire::RunKind) -> Result<Task, JobError> {
    match (phase, kind) {
        (wire::Phase::Unspecified, _) => Err(JobError::NoPhase),
        (_, wire::RunKind::Unspecified) => Err(JobError::NoRunKind),
        (wire::Phase::Plan, wire::RunKind::Deploy) => Ok(Task::Plan),
        (wire::Phase::Plan, wire::RunKind::Drift) => Ok(Task::CheckDrift),
        (wire::Phase::Apply, wire::RunKind::Deploy) => Ok(Task::Apply),
        (wire::Phase::Apply, wire::RunKind::Drift) => Err(JobError::ApplyOfDriftRun),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(phase: wire::Phase, kind: wire::RunKind) -> JobAssignment {
        JobAssignment {
            job_id: "job-1".into(),
            run_id: "run-1".into(),
            fencing_token: 3,
            job_phase: phase.into(),
            job_run_kind: kind.into(),
            ..JobAssignment::default()
        }
    }

    #[test]
    fn each_phase_and_kind_becomes_one_task() -> Result<(), Refused> {
        let parsed = |phase, kind| Job::try_from(assignment(phase, kind)).map(|job| job.task);
        assert_eq!(parsed(wire::Phase::Plan, wire::RunKind::Deploy)?, Task::Plan);
        assert_eq!(parsed(wire::Phase::Plan, wire::RunKind::Drift)?, Task::CheckDrift);
        assert_eq!(parsed(wire::Phase::Apply, wire::RunKind::Deploy)?, Task::Apply);
        assert_eq!(Task::CheckDrift.phase(), Phase::Plan, "a drift check gets read-only credentials");
        let job = Job::try_from(assignment(wire::Phase::Apply, wire::RunKind::Deploy))?;
        assert_eq!((job.job_id.as_str(), job.run_id.as_str(), job.fencing_token), ("job-1", "run-1", 3));
        Ok(())
    }

    /// What a broker from before the enums sends (its text fields are reserved now: they decode
    /// as nothing), or a value this agent does not know, is refused, saying so, with what is
    /// needed to report the refusal.
    #[test]
    fn an_unspecified_phase_or_kind_is_refused_clearly() {
        let refused = |assignment: JobAssignment| Job::try_from(assignment).err();
        let old_broker = JobAssignment { job_id: "job-1".into(), fencing_token: 3, ..JobAssignment::default() };
        let no_kind = assignment(wire::Phase::Plan, wire::RunKind::Unspecified);
        let unknown_phase = JobAssignment { job_phase: 7, ..assignment(wire::Phase::Plan, wire::RunKind::Deploy) };
        for (assignment, error) in
            [(old_broker, JobError::NoPhase), (no_kind, JobError::NoRunKind), (unknown_phase, JobError::NoPhase)]
        {
            let refusal = refused(assignment);
            assert_eq!(
                refusal.as_ref().map(|r| (&r.error, r.job_id.as_str(), r.fencing_token)),
                Some((&error, "job-1", 3))
            );
            let message = error.to_string();
            assert!(message.contains("UNSPECIFIED") && message.contains("upgrade the broker"), "{message}");
        }
        let apply_of_drift = refused(assignment(wire::Phase::Apply, wire::RunKind::Drift)).map(|r| r.error);
        assert_eq!(apply_of_drift, Some(JobError::ApplyOfDriftRun));
    }

    #[test]
    fn hooks_keep_their_order_and_an_unknown_point_is_refused() -> Result<(), Refused> {
        let hook = |point: &str, command: &str| wire::Hook {
            point: point.into(),
            command: command.into(),
            context: if command == "b" { "base".into() } else { String::new() },
        };
        let hooks = vec![hook("before_init", "a"), hook("before_plan", "b"), hook("before_init", "c")];
        let job = Job::try_from(JobAssignment { hooks, ..assignment(wire::Phase::Plan, wire::RunKind::Deploy) })?;
        let seen: Vec<(&str, &str, Option<&str>)> =
            job.hooks.iter().map(|h| (h.point.as_str(), h.command.as_str(), h.context.as_deref())).collect();
        assert_eq!(seen, [("before_init", "a", None), ("before_plan", "b", Some("base")), ("before_init", "c", None)]);
        let unknown = JobAssignment {
            hooks: vec![hook("after_init", "x")],
            ..assignment(wire::Phase::Plan, wire::RunKind::Deploy)
        };
        let refusal = Job::try_from(unknown).err().map(|r| r.error);
        assert_eq!(refusal, Some(JobError::UnknownHookPoint("after_init".into())));
        Ok(())
    }
}
