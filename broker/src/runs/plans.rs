//! Saved plans: what a plan job submits (the plan file and its `terraform show -json`), judged by
//! the `keyward.plan` policy, kept for the run's apply, and handed only to the apply job's lease
//! holder.
//!
//! Submitting commits the plan row, its `plan.evaluated` entry and a re-check of the lease in one
//! transaction: a plan from an agent whose lease moved on is not kept. A plan the policy denies is
//! kept for the record, and the run fails when its plan job reports its end.

use aws_lc_rs::digest;
use serde_json::Value;

use super::spec::Stack;
use super::{HeldJob, RunError, Runs, run_context};
use crate::audit::{Append, AuditEvent, Context, Kind};
use crate::identity::kek::hex;
use crate::policy::PolicyKind;
use crate::store::RunRow;
use crate::store::write::Write;

/// The largest saved plan kept.
pub const MAX_PLAN_FILE: usize = 16 * 1024 * 1024;
/// The largest plan JSON judged.
pub const MAX_PLAN_JSON: usize = 24 * 1024 * 1024;

/// The policy's verdict on a submitted plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanVerdict {
    /// SHA-256 of the plan file.
    pub sha256: Vec<u8>,
    /// `deny` messages: the run fails before apply.
    pub deny: Vec<String>,
    /// `warn` messages.
    pub warn: Vec<String>,
}

impl Runs {
    /// Keeps the saved plan `held`'s plan job made, after the `keyward.plan` policy judged its JSON.
    pub async fn submit_plan(
        &self,
        held: &HeldJob,
        plan_file: &[u8],
        plan_json: &[u8],
    ) -> Result<PlanVerdict, RunError> {
        if held.job.phase != "plan" {
            return Err(RunError::Invalid(format!(
                "job {} is an {} job; only plans submit plans",
                held.job.id, held.job.phase
            )));
        }
        if held.run.kind == super::RunKind::Drift.as_str() {
            return Err(RunError::Invalid(format!(
                "run {} is a drift check: it reports what it found and keeps no plan",
                held.run.id
            )));
        }
        if plan_file.is_empty() || plan_file.len() > MAX_PLAN_FILE {
            return Err(RunError::Invalid(format!("a saved plan is 1 byte to {MAX_PLAN_FILE} bytes")));
        }
        let now = self.clock.now();
        let (run, stack) = (&held.run, &held.stack);
        let (counts, input) = read_plan_json(plan_json, run, stack, now)?;
        let decision = self.decide(PolicyKind::Plan, || input);
        let sha256 = digest::digest(&digest::SHA256, plan_file).as_ref().to_vec();
        let verdict = PlanVerdict { sha256, deny: decision.reasons.clone(), warn: decision.warnings.clone() };
        let writes = vec![
            Write::one(
                format!("the saved plan of run {}", run.id),
                "INSERT INTO plans (run_id, job_id, sha256, plan_file, plan_json, deny, warn, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (run_id) DO UPDATE SET job_id = $2, \
                 sha256 = $3, plan_file = $4, plan_json = $5, deny = $6, warn = $7, created_at = $8",
                vec![
                    run.id.as_str().into(),
                    held.job.id.as_str().into(),
                    verdict.sha256.clone().into(),
                    plan_file.to_vec().into(),
                    String::from_utf8_lossy(plan_json).into_owned().into(),
                    super::json_text(&verdict.deny).into(),
                    super::json_text(&verdict.warn).into(),
                    now.into(),
                ],
            ),
            held.lease_guard(now),
        ];
        let agent = held.job.agent_id.clone().unwrap_or_default();
        let context = run_context(run, stack, "plan", &format!("agent:{agent}"), Context::default());
        let event = AuditEvent::new(Kind::PlanEvaluated, now, context)
            .with("job_id", held.job.id.as_str())
            .with("agent_id", agent.as_str())
            .with("fencing_token", held.job.fencing_token)
            .with("plan_sha256", hex(&verdict.sha256))
            .with("changes", counts)
            .with("deny", verdict.deny.clone())
            .with("warn", verdict.warn.clone())
            .with("policy_digest", decision.policy_digest.as_str())
            .with_ref("job", &held.job.id);
        self.commit(Append::changes(writes, vec![event])).await?;
        Ok(verdict)
    }

    /// The saved plan `held`'s apply job applies: the file and its SHA-256.
    pub async fn saved_plan(&self, held: &HeldJob) -> Result<(Vec<u8>, Vec<u8>), RunError> {
        if held.job.phase != "apply" {
            return Err(RunError::Invalid(format!("job {} is not an apply job", held.job.id)));
        }
        let plan = self
            .store
            .plan(&held.run.id)
            .await?
            .ok_or_else(|| RunError::NotFound(format!("run {} has no saved plan", held.run.id)))?;
        Ok((plan.plan_file, plan.sha256))
    }
}

/// What [`Runs::submit_plan`] makes of an agent's `terraform show -json` before the policy sees
/// it: how many resources it changes, and the `keyward.plan` input for `run` of `stack`. Public as
/// the fuzzing entry (`fuzz/`).
pub fn read_plan_json(plan_json: &[u8], run: &RunRow, stack: &Stack, now: i64) -> Result<(Value, Value), RunError> {
    if plan_json.len() > MAX_PLAN_JSON {
        return Err(RunError::Invalid(format!("the plan JSON is larger than {MAX_PLAN_JSON} bytes")));
    }
    let plan: Value = serde_json::from_slice(plan_json)
        .map_err(|e| RunError::Invalid(format!("the plan JSON does not parse: {e}")))?;
    let counts = change_counts(&plan);
    Ok((counts, super::input::plan_input(run, stack, plan, now)))
}

/// How many resources the plan creates, updates, deletes and replaces.
fn change_counts(plan: &Value) -> Value {
    let (mut create, mut update, mut delete, mut replace) = (0_u64, 0_u64, 0_u64, 0_u64);
    let changes = plan.get("resource_changes").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    for change in changes {
        let actions: Vec<&str> = change
            .pointer("/change/actions")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        match actions.as_slice() {
            ["create"] => create += 1,
            ["update"] => update += 1,
            ["delete"] => delete += 1,
            [_, _] => replace += 1,
            _ => {}
        }
    }
    serde_json::json!({"create": create, "update": update, "delete": delete, "replace": replace})
}
