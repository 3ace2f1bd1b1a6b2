//! Lifecycle hooks (docs/runs.md, "Lifecycle hooks"): shell commands the assignment names for
//! points around the Terraform commands of its phase, the stack's own and its contexts' (which
//! come first at each point).
//!
//! Each runs as `/bin/sh -c COMMAND` exactly where Terraform runs: the same isolation, the same
//! environment (credentials and state settings included), the same read-only binds, the
//! configuration's directory as its working directory, the job's deadline and its log (masked
//! like every step). It is never wrapped in the state relay: a hook is not Terraform. The first
//! hook that fails fails the phase, named by its point, its number among its source's hooks at
//! that point and, for a context's, the context; nothing after it runs.

use crate::launch::Launch;
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
    /// The context it comes from; `None`: the stack's own.
    pub context: Option<String>,
}

impl Hook {
    /// Where it comes from, as the log and a failure say it: ` of context "base"`, or nothing
    /// for the stack's own.
    fn whose(&self) -> String {
        self.context.as_ref().map(|context| format!(" of context {context:?}")).unwrap_or_default()
    }
}

/// Each of `hooks` at `point` in order, with its number among its source's hooks there.
fn numbered(hooks: &[Hook], point: HookPoint) -> Vec<(usize, &Hook)> {
    let mut counts: Vec<(Option<&str>, usize)> = Vec::new();
    let mut out = Vec::new();
    for hook in hooks.iter().filter(|hook| hook.point == point) {
        let source = hook.context.as_deref();
        let number = match counts.iter_mut().find(|(seen, _)| *seen == source) {
            Some((_, count)) => {
                *count += 1;
                *count
            }
            None => {
                counts.push((source, 1));
                1
            }
        };
        out.push((number, hook));
    }
    out
}

impl Phase<'_> {
    /// Runs the job's hooks at `point`, in order; the first that fails fails the phase.
    pub(crate) async fn hooks(&self, point: HookPoint, log: &JobLog, cancel: &mut Cancel) -> Result<(), PhaseError> {
        for (number, hook) in numbered(&self.job.hooks, point) {
            self.hook(hook, number, log, cancel).await?;
        }
        Ok(())
    }

    /// `/bin/sh -c command` where Terraform runs, not under the state relay.
    async fn hook(&self, hook: &Hook, number: usize, log: &JobLog, cancel: &mut Cancel) -> Result<(), PhaseError> {
        let (point, command, whose) = (hook.point, hook.command.as_str(), hook.whose());
        let name = point.as_str();
        log.note(&format!("$ hook {name}{whose}: {command}")).await;
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
        let verdict = self.isolation.verdict(status_file.as_deref(), self.layers);
        let shown = String::from_utf8_lossy(&log.mask(command.as_bytes()).await).into_owned();
        let what = format!("{name} hook {number}{whose} ({shown:?})");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_are_numbered_within_their_source_at_their_point() {
        let hook = |point, command: &str, context: Option<&str>| Hook {
            point,
            command: command.to_owned(),
            context: context.map(str::to_owned),
        };
        let hooks = [
            hook(HookPoint::BeforeInit, "i", None),
            hook(HookPoint::BeforePlan, "a1", Some("a")),
            hook(HookPoint::BeforePlan, "a2", Some("a")),
            hook(HookPoint::BeforePlan, "b1", Some("b")),
            hook(HookPoint::BeforePlan, "s1", None),
            hook(HookPoint::BeforePlan, "s2", None),
        ];
        let seen: Vec<String> = numbered(&hooks, HookPoint::BeforePlan)
            .into_iter()
            .map(|(number, hook)| format!("{} hook {number}{}: {}", hook.point.as_str(), hook.whose(), hook.command))
            .collect();
        assert_eq!(
            seen,
            [
                r#"before_plan hook 1 of context "a": a1"#,
                r#"before_plan hook 2 of context "a": a2"#,
                r#"before_plan hook 1 of context "b": b1"#,
                "before_plan hook 1: s1",
                "before_plan hook 2: s2",
            ]
        );
    }
}
