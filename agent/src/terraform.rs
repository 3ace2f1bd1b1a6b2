//! The Terraform phases of a job, each process in the job's isolation.
//!
//! - plan: `terraform init`, `terraform plan -out keyward.tfplan`; the agent reads the saved plan
//!   at once without following links ([`crate::planfile`]), copies it where only it writes, and
//!   runs `terraform show -json` on that read-only copy; the plan and its JSON (masked like the
//!   log) go to the broker (`SubmitPlan`), which replaces the JSON's sensitive values and seals
//!   the plan, and where the `keyward.plan` policy judges it.
//! - apply: the saved plan from the plan job (`FetchPlan`), checked against the SHA-256 the
//!   assignment names, written as a new file where only the agent writes (never into the
//!   checkout), then `terraform init` and `terraform apply` of that read-only copy: exactly what
//!   was planned and reviewed, never a fresh plan.
//! - drift check (a drift run's plan job): `terraform init`, `terraform plan -detailed-exitcode
//!   -lock=false` (0: in sync, 2: drift, anything else: failed) and, on drift, `terraform show
//!   -json` of that plan to say what differs. Nothing is submitted and nothing is applied.
//!
//! Around these, the stack's lifecycle hooks ([`crate::hooks`]): `before_init` before `init`,
//! `before_plan`/`after_plan` around the plan (after the saved plan was read and shown, before
//! it is submitted), `before_apply`/`after_apply` around the apply.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use aws_lc_rs::digest;

use crate::hooks::HookPoint;
use crate::idrange::JobIds;
use crate::job::Job;
use crate::launch::{Isolation, Launch, Layers};
use crate::logs::JobLog;
use crate::planfile::{self, PlanFileError};
use crate::plans::Plans;
use crate::state_relay::StateRelay;
use crate::step::{self, Cancel, StepEnd};

/// Directories every sandbox sees (read-only): a program beneath them needs no bind of its own.
const SYSTEM_DIRS: [&str; 4] = ["/usr", "/bin", "/sbin", "/lib"];

/// The saved plan's file name in the configuration's directory.
pub const PLAN_FILE: &str = "keyward.tfplan";
/// The largest `terraform show -json` kept.
const MAX_PLAN_JSON: usize = 24 * 1024 * 1024;
/// The largest saved plan read (the broker takes no more either).
const MAX_PLAN_FILE: usize = 16 * 1024 * 1024;

/// Why a phase failed; the job's error.
#[derive(Debug, thiserror::Error)]
pub enum PhaseError {
    /// A step failed; with what it said last.
    #[error("{0}")]
    Failed(String),
    /// The job was canceled.
    #[error("canceled: {0}")]
    Canceled(String),
}

/// What one phase runs with.
#[derive(Debug)]
pub struct Phase<'a> {
    /// The job.
    pub job: &'a Job,
    /// How processes are isolated.
    pub isolation: &'a Isolation,
    /// The terraform binary (absolute).
    pub terraform: &'a Path,
    /// The job's writable directory (the checkout is in it).
    pub work_dir: &'a Path,
    /// The configuration's directory inside it.
    pub cwd: PathBuf,
    /// The environment (scrubbed, plus credentials).
    pub env: Vec<(String, String)>,
    /// Extra read-only host paths (credential files; the jailer binds the terraform binary itself).
    pub read_only: Vec<PathBuf>,
    /// The agent's private scratch directory.
    pub scratch: &'a Path,
    /// A directory only the agent writes, outside the work dir: the saved plan's copies go
    /// there and are bound read-only into the sandbox.
    pub plan_dir: &'a Path,
    /// When the phase is killed.
    pub deadline: SystemTime,
    /// The sandbox layers its processes ran under, collected step by step.
    pub layers: &'a Layers,
    /// The host uid and gid of the job's slot, or `None` for the agent's own.
    pub host_ids: Option<JobIds>,
    /// The state relay when the broker keeps the stack's state: every Terraform command then
    /// runs under its inside half.
    pub relay: Option<&'a StateRelay>,
}

/// What a drift check found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drift {
    /// `terraform plan -detailed-exitcode` exited 2.
    pub drifted: bool,
    /// What differs, counted from the plan (`1 to add, 0 to change, 0 to destroy`), or empty.
    pub summary: String,
    /// The same counts, one by one.
    pub counts: DriftCounts,
    /// The addresses of the resources that differ, masked (at most [`MAX_DRIFT_ADDRESSES`]).
    pub addresses: Vec<String>,
}

/// What a plan changes, counted as Terraform's summary line counts it, plus what changed outside
/// Terraform.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DriftCounts {
    /// Resources to create (a replacement counts here and in `to_destroy`).
    pub to_add: u64,
    /// Resources to update in place.
    pub to_change: u64,
    /// Resources to delete.
    pub to_destroy: u64,
    /// Resources changed outside Terraform (`resource_drift`).
    pub changed_outside: u64,
}

/// The most addresses a drift report carries (the counts say how many there are).
pub const MAX_DRIFT_ADDRESSES: usize = 256;

impl Phase<'_> {
    /// Runs `terraform args…` in the configuration's directory; its stdout kept when `keep`.
    async fn terraform(
        &self,
        args: &[&str],
        log: &JobLog,
        cancel: &mut Cancel,
        keep: Option<usize>,
    ) -> Result<Vec<u8>, PhaseError> {
        Ok(self.terraform_exits(args, log, cancel, keep, &[0], None).await?.1)
    }

    /// Runs `terraform args…` with the saved plan at `plan` bound read-only into the sandbox.
    async fn terraform_with_plan(
        &self,
        args: &[&str],
        plan: &Path,
        log: &JobLog,
        cancel: &mut Cancel,
        keep: Option<usize>,
    ) -> Result<Vec<u8>, PhaseError> {
        Ok(self.terraform_exits(args, log, cancel, keep, &[0], Some(plan)).await?.1)
    }

    /// Runs `terraform args…`, which succeeds when it exits with one of `success` codes; returns
    /// that code and its stdout (kept when `keep`).
    async fn terraform_exits(
        &self,
        args: &[&str],
        log: &JobLog,
        cancel: &mut Cancel,
        keep: Option<usize>,
        success: &[i32],
        plan: Option<&Path>,
    ) -> Result<(i32, Vec<u8>), PhaseError> {
        log.note(&format!("$ terraform {}", args.join(" "))).await;
        let started = std::time::Instant::now();
        let mut argv = vec![self.terraform.display().to_string()];
        // (Wrapped below when the state relay is on.)
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        let mut read_only = self.read_only.clone();
        read_only.extend(plan.map(Path::to_path_buf));
        if let Some(relay) = self.relay {
            let agent = std::env::current_exe()
                .map_err(|e| PhaseError::Failed(format!("cannot find the agent's own binary: {e}")))?;
            argv = relay.wrap(&agent, argv);
            read_only.push(relay.socket().to_path_buf());
            // The jailer binds the program (now the agent) by itself, but not Terraform.
            if !SYSTEM_DIRS.iter().any(|dir| self.terraform.starts_with(dir)) {
                read_only.push(self.terraform.to_path_buf());
            }
        }
        let launch = Launch {
            argv,
            env: self.env.clone(),
            work_dir: self.work_dir.to_path_buf(),
            cwd: self.cwd.clone(),
            read_only,
            deadline: self.deadline,
            scratch: self.scratch.to_path_buf(),
            host_ids: self.host_ids,
        };
        let prepared = self.isolation.prepare(launch).map_err(PhaseError::Failed)?;
        let status_file = prepared.status_file.clone();
        let step = step::run(prepared, log, cancel, self.deadline, keep).await;
        let verdict = self.isolation.verdict(status_file.as_deref(), self.layers);
        let what = format!("terraform {}", args.first().copied().unwrap_or_default());
        log.note(&format!("keyward: {what} took {:.2} s", started.elapsed().as_secs_f64())).await;
        match step.end {
            StepEnd::Exited(status) if status.code().is_some_and(|c| success.contains(&c)) => {
                Ok((status.code().unwrap_or_default(), step.stdout))
            }
            StepEnd::Exited(status) => {
                let why = verdict.unwrap_or_else(|| format!("exited with {status}"));
                log.note(&format!("keyward: {what} {why}")).await;
                Err(PhaseError::Failed(format!("{what} {why}: {}", log.tail().await)))
            }
            StepEnd::Canceled(reason) => Err(PhaseError::Canceled(reason)),
            StepEnd::TimedOut => Err(PhaseError::Failed(format!("{what} ran past the job's deadline"))),
            StepEnd::NotStarted(error) => Err(PhaseError::Failed(format!("cannot start {what}: {error}"))),
        }
    }

    /// `terraform init`, `plan -out`, `show -json`, each with its hooks; submits the plan and
    /// logs the verdict.
    pub async fn plan(&self, plans: &mut Plans, log: &JobLog, cancel: &mut Cancel) -> Result<(), PhaseError> {
        self.init(log, cancel).await?;
        self.hooks(HookPoint::BeforePlan, log, cancel).await?;
        // No lock: a plan only reads the state (the broker refuses a plan job's lock).
        let plan = ["plan", "-input=false", "-no-color", "-lock=false", &format!("-out={PLAN_FILE}")];
        self.terraform(&plan, log, cancel, None).await?;
        // Read at once, before anything else runs in the sandbox, without following a link the
        // job planted; `show` then reads the agent's own copy, so what is judged and stored is
        // what Terraform wrote, whatever the job does with its work dir afterwards.
        let plan_file = self.read_saved_plan().await?;
        let judged =
            planfile::write_private(self.plan_dir, "judged.tfplan", plan_file.clone()).await.map_err(failed)?;
        let show = ["show", "-json", "-no-color", &judged.display().to_string()];
        let json = self.terraform_with_plan(&show, &judged, log, cancel, Some(MAX_PLAN_JSON)).await?;
        // After the saved plan was read: nothing a hook does changes what is submitted, and a
        // failing hook leaves nothing submitted.
        self.hooks(HookPoint::AfterPlan, log, cancel).await?;
        let submitting = std::time::Instant::now();
        let plan_json = log.mask(&json).await;
        let verdict =
            plans.submit(self.job, &plan_file, &plan_json).await.map_err(|e| PhaseError::Failed(e.to_string()))?;
        log.note(&format!(
            "keyward: saved plan sha256 {} submitted in {:.2} s",
            keyward_proto::encoding::hex(&verdict.plan_sha256),
            submitting.elapsed().as_secs_f64()
        ))
        .await;
        for warning in &verdict.warn {
            log.note(&format!("keyward: plan policy warns: {warning}")).await;
        }
        for denial in &verdict.deny {
            log.note(&format!("keyward: plan policy denies: {denial}")).await;
        }
        Ok(())
    }

    /// `terraform init`, `terraform plan -detailed-exitcode`, and on drift `terraform show
    /// -json` of that plan for the summary (masked like the log), with the plan phase's hooks.
    pub async fn check_drift(&self, log: &JobLog, cancel: &mut Cancel) -> Result<Drift, PhaseError> {
        self.init(log, cancel).await?;
        self.hooks(HookPoint::BeforePlan, log, cancel).await?;
        let drift = self.drift_plan(log, cancel).await?;
        self.hooks(HookPoint::AfterPlan, log, cancel).await?;
        Ok(drift)
    }

    /// `terraform plan -detailed-exitcode`, and on drift what differs.
    async fn drift_plan(&self, log: &JobLog, cancel: &mut Cancel) -> Result<Drift, PhaseError> {
        // No lock: a drift check only reads, and must not block (or be blocked by) a deploy.
        let plan =
            ["plan", "-input=false", "-no-color", "-lock=false", "-detailed-exitcode", &format!("-out={PLAN_FILE}")];
        let (code, _) = self.terraform_exits(&plan, log, cancel, None, &[0, 2], None).await?;
        if code == 0 {
            log.note("keyward: no drift: the infrastructure matches the configuration").await;
            return Ok(Drift::default());
        }
        let json = self.terraform(&["show", "-json", "-no-color", PLAN_FILE], log, cancel, Some(MAX_PLAN_JSON)).await?;
        let findings = PlanFindings::read(&json);
        let summary = String::from_utf8_lossy(&log.mask(findings.summary().as_bytes()).await).into_owned();
        let mut addresses = Vec::with_capacity(findings.addresses.len());
        for address in findings.addresses {
            addresses.push(String::from_utf8_lossy(&log.mask(address.as_bytes()).await).into_owned());
        }
        log.note(&format!("keyward: drift: {summary}")).await;
        for address in &addresses {
            log.note(&format!("keyward: drifted: {address}")).await;
        }
        Ok(Drift { drifted: true, summary, counts: findings.counts, addresses })
    }

    /// Fetches the saved plan, checks its digest, `terraform init`, `terraform apply` it.
    pub async fn apply(&self, plans: &mut Plans, log: &JobLog, cancel: &mut Cancel) -> Result<(), PhaseError> {
        if self.job.plan_sha256.len() != 32 {
            return Err(PhaseError::Failed("the apply names no saved plan; it is never planned afresh".to_owned()));
        }
        let fetching = std::time::Instant::now();
        let plan_file = plans.fetch(self.job).await.map_err(|e| PhaseError::Failed(e.to_string()))?;
        let actual = digest::digest(&digest::SHA256, &plan_file);
        if actual.as_ref() != self.job.plan_sha256.as_slice() {
            return Err(PhaseError::Failed(format!(
                "the saved plan's SHA-256 is {}, not the planned {}: refusing to apply it",
                keyward_proto::encoding::hex(actual.as_ref()),
                keyward_proto::encoding::hex(&self.job.plan_sha256)
            )));
        }
        log.note(&format!(
            "keyward: applying saved plan sha256 {} (fetched in {:.2} s)",
            keyward_proto::encoding::hex(actual.as_ref()),
            fetching.elapsed().as_secs_f64()
        ))
        .await;
        // Never into the checkout, where a committed symlink could send the write anywhere: a new
        // file in the agent's own directory, bound read-only into the sandbox.
        let saved = planfile::write_private(self.plan_dir, "apply.tfplan", plan_file).await.map_err(failed)?;
        self.init(log, cancel).await?;
        self.hooks(HookPoint::BeforeApply, log, cancel).await?;
        let apply = ["apply", "-input=false", "-no-color", "-auto-approve", &saved.display().to_string()];
        self.terraform_with_plan(&apply, &saved, log, cancel, None).await?;
        self.hooks(HookPoint::AfterApply, log, cancel).await
    }

    /// The `before_init` hooks, then `terraform init`.
    async fn init(&self, log: &JobLog, cancel: &mut Cancel) -> Result<(), PhaseError> {
        self.hooks(HookPoint::BeforeInit, log, cancel).await?;
        self.terraform(&["init", "-input=false", "-no-color"], log, cancel, None).await?;
        Ok(())
    }

    /// The plan `terraform plan -out` wrote in the configuration's directory, opened beneath the
    /// work dir without following links (see [`planfile`]).
    async fn read_saved_plan(&self) -> Result<Vec<u8>, PhaseError> {
        let relative = self
            .cwd
            .strip_prefix(self.work_dir)
            .map_err(|_| PhaseError::Failed("the configuration's directory is outside the work dir".to_owned()))?
            .join(PLAN_FILE);
        planfile::read_saved(self.work_dir, &relative, MAX_PLAN_FILE).await.map_err(failed)
    }
}

fn failed(error: PlanFileError) -> PhaseError {
    PhaseError::Failed(error.to_string())
}

/// What a plan's `terraform show -json` changes: counted as Terraform's own summary line counts
/// it, plus outputs and what changed outside Terraform (`resource_drift`), and which resources.
#[derive(Debug, Default, PartialEq, Eq)]
struct PlanFindings {
    counts: DriftCounts,
    outputs: usize,
    addresses: Vec<String>,
    /// The JSON did not parse: the plan has changes, nobody knows which.
    unreadable: bool,
}

impl PlanFindings {
    fn read(plan_json: &[u8]) -> Self {
        let Ok(plan) = serde_json::from_slice::<serde_json::Value>(plan_json) else {
            return Self { unreadable: true, ..Self::default() };
        };
        let list = |key: &str| plan.get(key).and_then(serde_json::Value::as_array).map(Vec::as_slice).unwrap_or(&[]);
        let mut findings = Self::default();
        for resource in list("resource_changes") {
            let actions: Vec<&str> = resource
                .pointer("/change/actions")
                .and_then(serde_json::Value::as_array)
                .map(|a| a.iter().filter_map(serde_json::Value::as_str).collect())
                .unwrap_or_default();
            let counts = &mut findings.counts;
            counts.to_add += u64::from(actions.contains(&"create"));
            counts.to_change += u64::from(actions.contains(&"update"));
            counts.to_destroy += u64::from(actions.contains(&"delete"));
            // A data source's `read` changes nothing, and Terraform's summary does not count it.
            if actions.iter().any(|a| !matches!(*a, "no-op" | "read")) {
                findings.note(resource);
            }
        }
        for resource in list("resource_drift") {
            findings.counts.changed_outside += 1;
            findings.note(resource);
        }
        findings.outputs = plan
            .get("output_changes")
            .and_then(serde_json::Value::as_object)
            .map(|o| o.values().filter(|c| c.pointer("/actions/0").and_then(|a| a.as_str()) != Some("no-op")).count())
            .unwrap_or_default();
        findings
    }

    /// Keeps `resource`'s address, once, while there is room.
    fn note(&mut self, resource: &serde_json::Value) {
        let Some(address) = resource.get("address").and_then(serde_json::Value::as_str) else { return };
        if self.addresses.len() < MAX_DRIFT_ADDRESSES && !self.addresses.iter().any(|a| a == address) {
            self.addresses.push(address.to_owned());
        }
    }

    /// `1 to add, 0 to change, 0 to destroy`, with outputs and outside changes when there are any.
    fn summary(&self) -> String {
        if self.unreadable {
            return "the plan has changes (its JSON did not parse)".to_owned();
        }
        let DriftCounts { to_add, to_change, to_destroy, changed_outside } = self.counts;
        let mut summary = format!("{to_add} to add, {to_change} to change, {to_destroy} to destroy");
        if self.outputs > 0 {
            summary.push_str(&format!("; {} output(s) change", self.outputs));
        }
        if changed_outside > 0 {
            summary.push_str(&format!("; {changed_outside} resource(s) changed outside Terraform"));
        }
        summary
    }
}

/// `program` on `PATH`, made absolute (the sandbox sees only what is bound); the agent itself
/// finds its binaries with [`crate::tools::Toolbox::locate`].
pub fn locate(program: &str) -> Option<PathBuf> {
    let path = Path::new(program);
    if path.is_absolute() {
        return path.is_file().then(|| path.to_path_buf());
    }
    std::env::var_os("PATH")?.to_str()?.split(':').map(|dir| Path::new(dir).join(program)).find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::{DriftCounts, MAX_DRIFT_ADDRESSES, PlanFindings};

    fn drift_summary(plan_json: &[u8]) -> String {
        PlanFindings::read(plan_json).summary()
    }

    #[test]
    fn drift_is_summarised_from_the_plan_json_as_terraform_counts_it() {
        let plan = br#"{
            "resource_changes": [
                {"address": "terraform_data.new", "change": {"actions": ["create"]}},
                {"address": "terraform_data.edit", "change": {"actions": ["update"]}},
                {"address": "terraform_data.swap", "change": {"actions": ["delete", "create"]}},
                {"address": "terraform_data.same", "change": {"actions": ["no-op"]}},
                {"address": "data.external.x", "change": {"actions": ["read"]}}
            ],
            "output_changes": {"a": {"actions": ["update"]}, "b": {"actions": ["no-op"]}},
            "resource_drift": [{"address": "terraform_data.edit"}, {"address": "terraform_data.gone"}]
        }"#;
        assert_eq!(
            drift_summary(plan),
            "2 to add, 1 to change, 1 to destroy; 1 output(s) change; 2 resource(s) changed outside Terraform"
        );
        let findings = PlanFindings::read(plan);
        assert_eq!(findings.counts, DriftCounts { to_add: 2, to_change: 1, to_destroy: 1, changed_outside: 2 });
        assert_eq!(
            findings.addresses,
            ["terraform_data.new", "terraform_data.edit", "terraform_data.swap", "terraform_data.gone"],
            "changes that change something, then outside changes, each once"
        );
        assert_eq!(drift_summary(br#"{"resource_changes": []}"#), "0 to add, 0 to change, 0 to destroy");
        assert!(drift_summary(b"not json").contains("did not parse"));
        assert!(PlanFindings::read(b"not json").addresses.is_empty());
    }

    #[test]
    fn drift_addresses_are_bounded() {
        let changes: Vec<serde_json::Value> = (0..1000)
            .map(|i| serde_json::json!({"address": format!("terraform_data.r{i}"), "change": {"actions": ["create"]}}))
            .collect();
        let plan = serde_json::to_vec(&serde_json::json!({ "resource_changes": changes })).unwrap();
        let findings = PlanFindings::read(&plan);
        assert_eq!((findings.counts.to_add, findings.addresses.len()), (1000, MAX_DRIFT_ADDRESSES));
    }
}
