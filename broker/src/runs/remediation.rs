//! Putting drift back: when a drift check finds drift on a stack whose `drift_remediation` is
//! `plan` or `apply`, a remediation run (a deploy of the stack's branch head, kind
//! `remediation`) is queued by `drift-remediation`, through the same submission path and
//! `keyward.run` decision as any run. What happens to its plan is the `keyward.approval`
//! policy's call: it sees `input.run.kind == "remediation"` and `input.run.remediation`; the
//! shipped policy applies `apply` remediations without review only on stacks labelled
//! `drift-remediation=auto`, and every other one waits for a review.
//!
//! Never doubled: a remediation is not queued while a deploy or remediation of the stack may
//! still apply (queued, planning, planned or applying).

use super::drift::Remediation;
use super::spec::Stack;
use super::{RunKind, Runs, Submission};
use crate::audit::Context;

/// Who remediation runs are submitted by (their author, whose approval would never count).
pub(super) const REMEDIATION_AUTHOR: &str = "drift-remediation";

impl Runs {
    /// Queues a remediation of `stack` after its drift check `check_run` found drift, if the
    /// stack asks for one and none may already apply. Failures are logged: the check's own
    /// record stands either way.
    pub(super) async fn remediate(&self, stack: &Stack, check_run: &str) {
        let mode = stack.drift_settings.drift_remediation;
        if mode == Remediation::Off {
            return;
        }
        let name = &stack.spec.name;
        match self.store.active_applying_run(name).await {
            Ok(Some(active)) => {
                tracing::info!(stack = %name, %check_run, run = %active.id, state = %active.state, "drift found; a run that may apply is already under way, so no remediation is queued");
                return;
            }
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(stack = %name, %check_run, %error, "drift found, but the stack's runs could not be read; no remediation queued");
                return;
            }
        }
        let submission = Submission { stack: name.clone(), kind: RunKind::Remediation, ..Submission::default() };
        let caller = Context { actor: Some(REMEDIATION_AUTHOR.to_owned()), ..Context::default() };
        match self.submit(submission, REMEDIATION_AUTHOR, caller).await {
            Ok(run) => {
                tracing::info!(stack = %name, %check_run, run = %run.id, mode = mode.as_str(), "drift found; remediation queued")
            }
            Err(error) => {
                tracing::warn!(stack = %name, %check_run, %error, "drift found; the remediation run was not queued")
            }
        }
    }
}
