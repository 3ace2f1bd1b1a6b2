//! A stack's lifecycle hooks (docs/runs.md, "Lifecycle hooks"): shell commands the assignment
//! names for points around the Terraform commands of its phase.
//!
//! Each runs as `/bin/sh -c COMMAND` exactly where Terraform runs: the same isolation, the same
//! environment (credentials and state settings included), the same read-only binds, the
//! configuration's directory as its working directory, the job's deadline and its log (masked
//! like every step). It is never wrapped in the state relay: a hook is not Terraform. The first
//! hook that fails fails the phase, named by its point and number, and nothing after it runs.

use crate::launch::{Isolation, Launch, SandboxSettings, sandbox_verdict};
use crate::logs::JobLog;
use crate::step::{self, Cancel, StepEnd};
use crate::terraform::{Phase, PhaseError};

/// Where a hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookPoint {
    /// Before `terraform init`.
    BeforeInit,
    /// Before `terraform plan` (plans and drift checks).
    BeforePlan,
    /// After `terraform plan` (plans and drift checks).
    AfterPlan,
    /// Before `terraform apply`.
    BeforeApply,
    /// After `terraform apply`.
    AfterApply,
}

impl HookPoint {
    /// Its name on the wire and in the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BeforeInit => "before_init",
            Self::BeforePlan => "before_plan",
            Self::AfterPlan => "after_plan",
            Self::BeforeApply => "before_apply",
            Self::AfterApply => "after_apply",
        }
    }

    /// The point called `name`, if this agent knows it.
    pub fn parse(name: &str) -> Option<Self> {
        [Self::BeforeInit, Self::BeforePlan, Self::AfterPlan, Self::BeforeApply, Self::AfterApply]
            .into_iter()
            .find(|point| point.as_str() == name)
    }

    /// What a failure here means for what already happened.
    fn consequence(self) -> &'static str {
        match self {
            Self::AfterPlan => " (the plan already ran)",
            Self::AfterApply => " (the apply already happened: the infrastructure has changed)",
            Self::BeforeInit | Self::BeforePlan | Self::BeforeApply => "",
        }
    }
}

/// One hook of the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    /// Where it runs.
    pub point: HookPoint,
    /// The shell command.
    pub command: String,
}

impl Phase<'_> {
    /// Runs the job's hooks at `point`, in order; the first that fails fails the phase.
    pub(crate) async fn hooks(&self, point: HookPoint, log: &JobLog, cancel: &mut Cancel) -> Result<(), PhaseError> {
        let at_point = self.job.hooks.iter().filter(|hook| hook.point == point);
        for (index, hook) in at_point.enumerate() {
            self.hook(point, index + 1, &hook.command, log, cancel).await?;
        }
        Ok(())
    }

    /// `/bin/sh -c command` where Terraform runs, not under the state relay.
    async fn hook(
        &self,
        point: HookPoint,
        number: usize,
        command: &str,
        log: &JobLog,
        cancel: &mut Cancel,
    ) -> Result<(), PhaseError> {
        let name = point.as_str();
        log.note(&format!("$ hook {name}: {command}")).await;
        let launch = Launch {
            argv: vec!["/bin/sh".to_owned(), "-c".to_owned(), command.to_owned()],
            env: self.env.clone(),
            work_dir: self.work_dir.to_path_buf(),
            cwd: self.cwd.clone(),
            read_only: self.read_only.clone(),
            deadline: self.deadline,
            scratch: self.scratch.to_path_buf(),
            host_ids: self.host_ids,
        };
        let prepared = self.isolation.prepare(launch).map_err(PhaseError::Failed)?;
        let status_file = prepared.status_file.clone();
        let step = step::run(prepared, log, cancel, self.deadline, None).await;
        let settings: Option<&SandboxSettings> = match self.isolation {
            Isolation::Sandbox(settings) => Some(settings),
            Isolation::Process => None,
        };
        let verdict = sandbox_verdict(status_file.as_deref(), settings, self.layers);
        let shown = String::from_utf8_lossy(&log.mask(command.as_bytes()).await).into_owned();
        let what = format!("{name} hook {number} ({shown:?})");
        let why = match step.end {
            StepEnd::Exited(status) if status.success() => return Ok(()),
            StepEnd::Exited(status) => verdict.unwrap_or_else(|| format!("exited with {status}")),
            StepEnd::Canceled(reason) => return Err(PhaseError::Canceled(reason)),
            StepEnd::TimedOut => "ran past the job's deadline".to_owned(),
            StepEnd::NotStarted(error) => format!("could not start: {error}"),
        };
        let consequence = point.consequence();
        log.note(&format!("keyward: {what} {why}{consequence}")).await;
        Err(PhaseError::Failed(format!("{what} {why}{consequence}: {}", log.tail().await)))
    }
}
