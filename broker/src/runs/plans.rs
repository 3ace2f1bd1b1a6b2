//! Saved plans: what a plan job submits (the plan file and its `terraform show -json`), judged by
//! the `keyward.plan` policy, kept for the run's apply, and handed only to the apply job's lease
//! holder.
//!
//! Submitting commits the plan row, its `plan.evaluated` entry and a re-check of the lease in one
//! transaction: a plan from an agent whose lease moved on is not kept. A plan the policy denies is
//! kept for the record, and the run fails when its plan job reports its end.
//!
//! Nothing of a plan's secrets rests in the clear (DESIGN.md §8.11). The plan file holds every
//! variable's and attribute's value, sensitive or not: it is sealed under the KEK, bound to its run,
//! plan job and SHA-256 ([`seal_context`]), so a sealed plan copied onto another run does not
//! open; it is opened only for the apply job's lease holder ([`Runs::saved_plan`]). The JSON has
//! its sensitive values replaced ([`super::redact`]) before the policy judges it and before it is
//! stored, so neither the record nor a policy's messages can hold them.

use aws_lc_rs::digest;
use keyward_proto::claims::Phase;
use serde_json::Value;
use zeroize::Zeroizing;

use super::redact::Redactor;
use super::spec::Stack;
use super::{HeldJob, RunError, Runs, run_context};
use crate::audit::{Append, AuditEvent, Context, Kind};
use crate::kek::{Kek, UnsealError};
use crate::policy::PolicyKind;
use crate::store::runs::NewPlan;
use crate::store::{self, RunRow, SealedPlanRow};
use keyward_proto::encoding::hex;

/// The largest saved plan kept.
pub const MAX_PLAN_FILE: usize = 16 * 1024 * 1024;
/// The largest plan JSON judged.
pub const MAX_PLAN_JSON: usize = 24 * 1024 * 1024;

/// Why a saved plan could not be handed to the apply job.
#[derive(Debug, thiserror::Error)]
pub enum SavedPlanError {
    /// The stored bytes are not in the sealed format: written by a broker from before saved plans
    /// were sealed (migration 0011 emptied those), or truncated.
    #[error(
        "the saved plan of run {run} is not sealed (it was stored before saved plans were sealed under the KEK, or is truncated): submit the run again to plan afresh"
    )]
    NotSealed {
        /// The run.
        run: String,
    },
    /// Sealed under another KEK, modified, or sealed for another run, plan job or digest.
    #[error("the saved plan of run {run} cannot be opened: {source}")]
    Unseal {
        /// The run.
        run: String,
        /// Why.
        source: UnsealError,
    },
    /// It opened, but is not the plan the digest on record names.
    #[error("the saved plan of run {run} does not match its recorded SHA-256")]
    Digest {
        /// The run.
        run: String,
    },
}

/// What a saved plan is sealed to: its run, the plan job that made it and its SHA-256. A sealed
/// plan moved to another run's row, or under another digest, fails to open.
pub fn seal_context(run_id: &str, job_id: &str, sha256: &[u8]) -> Vec<u8> {
    format!("keyward saved plan v1\0{run_id}\0{job_id}\0{}", hex(sha256)).into_bytes()
}

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
        if held.job.phase != Phase::Plan {
            return Err(RunError::NotAPlanJob { job: held.job.id.clone(), phase: held.job.phase });
        }
        if held.run.kind == super::RunKind::Drift.as_str() {
            return Err(RunError::DriftKeepsNoPlan(held.run.id.clone()));
        }
        if plan_file.is_empty() || plan_file.len() > MAX_PLAN_FILE {
            return Err(RunError::PlanFileSize);
        }
        let now = self.clock.now();
        let (run, stack) = (&held.run, &held.stack);
        let ReadPlan { stored_json, redacted, counts, input } = read_plan_json(plan_json, run, stack, now)?;
        let variables = self.policy_variables(stack).await;
        let scans = self.scans_input(&held.job.id).await;
        let decision = self
            .decide(PolicyKind::Plan, || super::with_field(super::with_variables(input, variables), "scans", scans));
        let sha256 = digest::digest(&digest::SHA256, plan_file).as_ref().to_vec();
        let sealed = self.kek.seal(&seal_context(&run.id, &held.job.id, &sha256), plan_file);
        let verdict = PlanVerdict { sha256, deny: decision.reasons.clone(), warn: decision.warnings.clone() };
        let writes = vec![
            store::runs::save_plan(
                NewPlan {
                    run_id: &run.id,
                    job_id: &held.job.id,
                    sha256: verdict.sha256.clone(),
                    sealed,
                    json: stored_json,
                    deny: super::json_text(&verdict.deny),
                    warn: super::json_text(&verdict.warn),
                },
                now,
            ),
            held.lease_guard(now),
        ];
        let agent = held.job.agent_id.clone().unwrap_or_default();
        let context = run_context(run, stack, Phase::Plan, &format!("agent:{agent}"), Context::default());
        let event = AuditEvent::new(Kind::PlanEvaluated, now, context)
            .with("job_id", held.job.id.as_str())
            .with("agent_id", agent.as_str())
            .with("fencing_token", held.job.fencing_token)
            .with("plan_sha256", hex(&verdict.sha256))
            .with("changes", counts)
            .with("sensitive_values_redacted", redacted)
            .with("deny", verdict.deny.clone())
            .with("warn", verdict.warn.clone())
            .with("policy_digest", decision.policy_digest.as_str())
            .with_ref("job", &held.job.id);
        self.commit(Append::changes(writes, vec![event])).await?;
        Ok(verdict)
    }

    /// The saved plan `held`'s apply job applies, opened: the file and its SHA-256. The only place
    /// a saved plan is opened; `held` proves the caller holds the apply job's lease.
    pub async fn saved_plan(&self, held: &HeldJob) -> Result<(Zeroizing<Vec<u8>>, Vec<u8>), RunError> {
        if held.job.phase != Phase::Apply {
            return Err(RunError::NotAnApplyJob(held.job.id.clone()));
        }
        let run = &held.run.id;
        let plan = self.store.sealed_plan(run).await?.ok_or_else(|| RunError::NoSavedPlan(run.clone()))?;
        let opened = open_plan(&self.kek, run, &plan)?;
        Ok((opened, plan.sha256))
    }
}

/// Opens `run`'s sealed plan and checks it against its digest.
fn open_plan(kek: &Kek, run: &str, plan: &SealedPlanRow) -> Result<Zeroizing<Vec<u8>>, SavedPlanError> {
    let opened =
        kek.open(&seal_context(run, &plan.job_id, &plan.sha256), &plan.sealed).map_err(|source| match source {
            UnsealError::Malformed => SavedPlanError::NotSealed { run: run.to_owned() },
            source => SavedPlanError::Unseal { run: run.to_owned(), source },
        })?;
    if digest::digest(&digest::SHA256, &opened).as_ref() != plan.sha256.as_slice() {
        return Err(SavedPlanError::Digest { run: run.to_owned() });
    }
    Ok(opened)
}

/// What [`Runs::submit_plan`] makes of an agent's `terraform show -json` before the policy sees
/// it. Public as the fuzzing entry (`fuzz/`).
#[derive(Debug)]
pub struct ReadPlan {
    /// The plan JSON with its sensitive values redacted: what the policy sees and the store keeps.
    pub stored_json: String,
    /// How many sensitive values were replaced.
    pub redacted: usize,
    /// How many resources it creates, updates, deletes and replaces.
    pub counts: Value,
    /// The `keyward.plan` input.
    pub input: Value,
}

/// Parses `plan_json` of `run` of `stack` and redacts its sensitive values before anything reads
/// it (the policy, its messages, the stored copy).
pub fn read_plan_json(plan_json: &[u8], run: &RunRow, stack: &Stack, now: i64) -> Result<ReadPlan, RunError> {
    if plan_json.len() > MAX_PLAN_JSON {
        return Err(RunError::PlanJsonTooLarge);
    }
    let mut plan: Value = serde_json::from_slice(plan_json).map_err(RunError::PlanJson)?;
    let redacted = Redactor::new().redact(&mut plan);
    let stored_json = plan.to_string();
    let counts = change_counts(&plan);
    Ok(ReadPlan { stored_json, redacted, counts, input: super::policy_input::plan_input(run, stack, plan, now) })
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

#[cfg(test)]
mod tests {
    use super::*;

    const PLAN: &[u8] = b"PK\x03\x04 tfplan tfconfig/m-/main.tf";

    fn sealed(kek: &Kek, run: &str, job: &str) -> SealedPlanRow {
        let sha256 = digest::digest(&digest::SHA256, PLAN).as_ref().to_vec();
        let sealed = kek.seal(&seal_context(run, job, &sha256), PLAN);
        SealedPlanRow { job_id: job.to_owned(), sha256, sealed }
    }

    #[test]
    fn a_sealed_plan_opens_for_its_own_run_only() -> Result<(), SavedPlanError> {
        let kek = Kek::generate();
        let plan = sealed(&kek, "run-1", "job-1");
        assert!(!plan.sealed.windows(6).any(|w| w == b"tfplan"), "the file is not in the clear");
        assert_eq!(open_plan(&kek, "run-1", &plan)?.as_slice(), PLAN);
        // Copied onto another run's row.
        assert!(matches!(
            open_plan(&kek, "run-2", &plan),
            Err(SavedPlanError::Unseal { source: UnsealError::Tampered, .. })
        ));
        // Claimed by another plan job, or under another digest.
        let other_job = SealedPlanRow { job_id: "job-2".to_owned(), ..plan.clone() };
        assert!(matches!(open_plan(&kek, "run-1", &other_job), Err(SavedPlanError::Unseal { .. })));
        let other_digest = SealedPlanRow { sha256: vec![0; 32], ..plan.clone() };
        assert!(matches!(open_plan(&kek, "run-1", &other_digest), Err(SavedPlanError::Unseal { .. })));
        // Another broker's KEK.
        let error = open_plan(&Kek::generate(), "run-1", &plan).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("sealed under key-encryption key"), "{error}");
        Ok(())
    }

    #[test]
    fn a_plan_stored_before_sealing_is_refused_with_what_to_do() {
        let kek = Kek::generate();
        let sha256 = digest::digest(&digest::SHA256, PLAN).as_ref().to_vec();
        // In the clear as before, and as migration 0011 left such rows: empty.
        for stored in [PLAN.to_vec(), Vec::new()] {
            let row = SealedPlanRow { job_id: "job-1".to_owned(), sha256: sha256.clone(), sealed: stored };
            let error = open_plan(&kek, "run-1", &row).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(error.contains("run run-1 is not sealed") && error.contains("submit the run again"), "{error}");
        }
    }

    #[test]
    fn sealed_plan_rows_do_not_print_their_bytes() {
        let plan = sealed(&Kek::generate(), "run-1", "job-1");
        let printed = format!("{plan:?}");
        assert!(printed.contains("job-1") && !printed.contains('['), "{printed}");
    }
}
