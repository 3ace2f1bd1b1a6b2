//! Security scans before `init` (docs/scans.md): a stack names the scanners its plan jobs run on
//! the checked-out code; the agent runs them in the job's sandbox, before any hook, credential
//! use or `terraform init`, and sends what they found; the `keyward.scan` policy judges it, and a
//! refusal stops the job there.
//!
//! The broker, not the agent, makes the refusal stick: the first verdict on a job's scan is
//! kept (a job cannot replace a refused scan with a clean one), and when a scanned stack's plan job
//! ends, its run fails if the scan was refused or never sent, whatever the agent reported. The
//! findings are kept with the job, shown on the run, and handed to `keyward.plan` as
//! `input.scans` too.

use std::collections::BTreeMap;

use keyward_proto::claims::Phase;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::spec::{SpecError, Stack};
use super::{HeldJob, RunError, Runs, run_context};
use crate::audit::{Append, AuditEvent, Context, Kind};
use crate::policy::PolicyKind;
use crate::store::{self, JobScanRow};

/// Most failed checks one report lists (the rest are counted).
pub const MAX_FINDINGS: usize = 500;
/// Longest text field of a finding, in bytes; longer ones are cut (on a character boundary).
const MAX_FIELD: usize = 512;

/// A scanner the agent knows how to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scanner {
    /// Checkov (`checkov -d DIR --framework terraform -o json`).
    Checkov,
}

impl Scanner {
    /// Every scanner.
    pub const ALL: [Self; 1] = [Self::Checkov];

    /// Its name, in stacks, on the wire and in `input.scans`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Checkov => "checkov",
        }
    }

    /// The scanner named `name`.
    pub fn parse(name: &str) -> Result<Self, SpecError> {
        Self::ALL.into_iter().find(|scanner| scanner.as_str() == name).ok_or_else(|| {
            SpecError(format!("unknown scanner `{name}`; known: {}", Self::ALL.map(Self::as_str).join(", ")))
        })
    }
}

/// Checks a stack's scanner list: each at most once.
pub(super) fn validate(scanners: &[Scanner]) -> Result<(), SpecError> {
    for (i, scanner) in scanners.iter().enumerate() {
        if scanners.get(..i).is_some_and(|before| before.contains(scanner)) {
            return Err(SpecError(format!("scanner `{}` is named twice", scanner.as_str())));
        }
    }
    Ok(())
}

/// One failed check, as `input.scans.<scanner>.failed_checks` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// `CKV_AWS_145`.
    pub id: String,
    /// What the check asks for.
    pub name: String,
    /// `aws_s3_bucket.logs`.
    pub resource: String,
    /// The file, relative to the scanned directory.
    pub file: String,
    /// First and last line.
    pub lines: [u32; 2],
    /// `LOW` … `CRITICAL`, when the scanner gives one.
    pub severity: Option<String>,
    /// Where the check is explained, when the scanner gives it.
    pub guideline: Option<String>,
}

/// One scanner's report, as `input.scans.<scanner>` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The scanner's version.
    pub version: String,
    /// Checks passed.
    pub passed: u32,
    /// Checks failed (all of them, listed or not).
    pub failed: u32,
    /// Checks skipped (suppressed in the code).
    pub skipped: u32,
    /// Files the scanner could not parse, so did not check.
    pub parsing_errors: u32,
    /// The failed checks (at most [`MAX_FINDINGS`]).
    pub failed_checks: Vec<Finding>,
}

/// What the agent sent, checked: every report from a scanner the stack names, each once.
pub type Reports = BTreeMap<Scanner, Report>;

/// The `keyward.scan` verdict on a job's scan.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScanVerdict {
    /// The policy's `deny` messages: the job stops, the run fails.
    pub deny: Vec<String>,
    /// Its warnings.
    pub warn: Vec<String>,
}

impl ScanVerdict {
    /// Whether the job may go on.
    pub fn allowed(&self) -> bool {
        self.deny.is_empty()
    }
}

/// A scan report the broker will not take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadReport(pub String);

/// Reads the agent's reports for `stack`: one per scanner the stack names, nothing else.
pub fn read_reports(stack: &Stack, reports: Vec<(String, Report)>) -> Result<Reports, BadReport> {
    let mut read = Reports::new();
    for (name, mut report) in reports {
        let scanner = Scanner::parse(&name).map_err(|e| BadReport(e.0))?;
        if !stack.spec.scanners.contains(&scanner) {
            return Err(BadReport(format!("stack `{}` is not scanned with {name}", stack.spec.name)));
        }
        if report.failed_checks.len() > MAX_FINDINGS {
            return Err(BadReport(format!("a {name} report lists at most {MAX_FINDINGS} failed checks")));
        }
        if (report.failed as usize) < report.failed_checks.len() {
            return Err(BadReport(format!("a {name} report counts fewer failed checks than it lists")));
        }
        for finding in &mut report.failed_checks {
            for field in [&mut finding.id, &mut finding.name, &mut finding.resource, &mut finding.file] {
                cut(field);
            }
            for field in [&mut finding.severity, &mut finding.guideline].into_iter().flatten() {
                cut(field);
            }
        }
        cut(&mut report.version);
        if read.insert(scanner, report).is_some() {
            return Err(BadReport(format!("two {name} reports")));
        }
    }
    if let Some(missing) = stack.spec.scanners.iter().find(|scanner| !read.contains_key(scanner)) {
        return Err(BadReport(format!(
            "no {} report: stack `{}` is scanned with it",
            missing.as_str(),
            stack.spec.name
        )));
    }
    Ok(read)
}

/// Cuts `text` to [`MAX_FIELD`] bytes.
fn cut(text: &mut String) {
    if text.len() > MAX_FIELD {
        let end = (0..=MAX_FIELD).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
        text.truncate(end);
    }
}

impl Runs {
    /// Judges `held`'s scan `reports` with `keyward.scan` and keeps them with the verdict. The
    /// first verdict on a job is final: a second submission gets it back, whatever it carries.
    pub async fn submit_scan(&self, held: &HeldJob, reports: Vec<(String, Report)>) -> Result<ScanVerdict, RunError> {
        if held.job.phase != Phase::Plan {
            return Err(RunError::BadScan(format!("job {} is an apply job; plan jobs are scanned", held.job.id)));
        }
        if let Some(kept) = self.store.job_scan(&held.job.id).await? {
            return Ok(verdict_of(&kept));
        }
        let (run, stack) = (&held.run, &held.stack);
        let reports = read_reports(stack, reports).map_err(|e| RunError::BadScan(e.0))?;
        let now = self.clock.now();
        let scans = json!(reports);
        let variables = self.policy_variables(stack).await;
        let decision = self.decide(PolicyKind::Scan, || {
            let input = super::policy_input::scan_input(run, stack, scans.clone(), now);
            super::with_variables(input, variables)
        });
        let verdict = ScanVerdict { deny: decision.reasons.clone(), warn: decision.warnings.clone() };
        let row = JobScanRow {
            job_id: held.job.id.clone(),
            run_id: run.id.clone(),
            reports: scans.to_string(),
            deny: super::json_text(&verdict.deny),
            warn: super::json_text(&verdict.warn),
            policy_digest: decision.policy_digest.clone(),
            created_at: now,
        };
        let agent = held.job.agent_id.clone().unwrap_or_default();
        let context = run_context(run, stack, Phase::Plan, &format!("agent:{agent}"), Context::default());
        let event = AuditEvent::new(Kind::ScanEvaluated, now, context)
            .with("job_id", held.job.id.as_str())
            .with("agent_id", agent.as_str())
            .with("fencing_token", held.job.fencing_token)
            .with("scanners", summary(&reports))
            .with("allowed", verdict.allowed())
            .with("deny", verdict.deny.clone())
            .with("warn", verdict.warn.clone())
            .with("policy_digest", decision.policy_digest.as_str())
            .with_ref("job", &held.job.id);
        self.commit(Append::changes(vec![store::scans::save_job_scan(&row), held.lease_guard(now)], vec![event]))
            .await?;
        Ok(verdict)
    }

    /// What a scanned stack's plan job may have before its scan is allowed: only its checkout's
    /// credentials. Its state backend, variables and target credentials wait for an allowing
    /// verdict, so a refused run never holds them.
    pub async fn scan_gate(&self, held: &HeldJob) -> Result<(), RunError> {
        if held.job.phase != Phase::Plan || held.stack.spec.scanners.is_empty() {
            return Ok(());
        }
        match self.store.job_scan(&held.job.id).await? {
            None => Err(RunError::ScanFirst(held.job.id.clone())),
            Some(kept) if verdict_of(&kept).allowed() => Ok(()),
            Some(_) => Err(RunError::ScanRefused(held.job.id.clone())),
        }
    }

    /// Why `job_id`'s run must fail over its scan, for a plan job of a scanned stack: the scan was
    /// refused, or, for a job that `succeeded`, never sent (an agent older than scanning, or one
    /// that skipped it).
    pub(super) async fn scan_refusal(
        &self,
        stack: &Stack,
        job_id: &str,
        succeeded: bool,
    ) -> Result<Option<String>, RunError> {
        if stack.spec.scanners.is_empty() {
            return Ok(None);
        }
        Ok(match self.store.job_scan(job_id).await? {
            None if !succeeded => None,
            None => Some(format!(
                "stack `{}` is scanned ({}) before init, and its plan job sent no scan (an agent older than scanning?)",
                stack.spec.name,
                stack.spec.scanners.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            )),
            Some(kept) => {
                let verdict = verdict_of(&kept);
                (!verdict.allowed())
                    .then(|| format!("the scan policy refused the run before init: {}", verdict.deny.join("; ")))
            }
        })
    }

    /// The reports kept for `job_id`, as `input.scans` (`null`: none).
    pub(super) async fn scans_input(&self, job_id: &str) -> Value {
        match self.store.job_scan(job_id).await {
            Ok(Some(kept)) => serde_json::from_str(&kept.reports).unwrap_or(Value::Null),
            Ok(None) => Value::Null,
            Err(error) => {
                tracing::warn!(job_id, %error, "cannot read the job's scan for the plan policy input");
                Value::Null
            }
        }
    }
}

/// The verdict kept in `row`.
fn verdict_of(row: &JobScanRow) -> ScanVerdict {
    ScanVerdict {
        deny: serde_json::from_str(&row.deny).unwrap_or_default(),
        warn: serde_json::from_str(&row.warn).unwrap_or_default(),
    }
}

/// Per scanner: its counts and the IDs of the checks that failed (for the audit entry and the run).
pub fn summary(reports: &Reports) -> Value {
    let scanners: serde_json::Map<String, Value> = reports
        .iter()
        .map(|(scanner, report)| {
            let mut ids: Vec<&str> = report.failed_checks.iter().map(|f| f.id.as_str()).collect();
            ids.sort_unstable();
            ids.dedup();
            let counts = json!({
                "version": report.version,
                "passed": report.passed,
                "failed": report.failed,
                "skipped": report.skipped,
                "parsing_errors": report.parsing_errors,
                "failed_check_ids": ids,
            });
            (scanner.as_str().to_owned(), counts)
        })
        .collect();
    Value::Object(scanners)
}

/// What a run shows of a job's scan: per scanner its counts, and the policy's messages.
pub(super) fn view(row: &JobScanRow) -> Value {
    let reports: Reports = serde_json::from_str(&row.reports).unwrap_or_default();
    let verdict = verdict_of(row);
    json!({"scanners": summary(&reports), "allowed": verdict.allowed(), "deny": verdict.deny, "warn": verdict.warn})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runs::spec::StackSpec;

    fn stack(scanners: Vec<Scanner>) -> Stack {
        let mut spec: StackSpec = serde_json::from_value(json!({"name": "web", "repository": "file:///r"}))
            .unwrap_or_else(|e| panic!("spec: {e}"));
        spec.scanners = scanners;
        Stack::new(spec, 0, "t".into())
    }

    fn report(failed: u32, listed: usize) -> Report {
        let finding = Finding {
            id: "CKV_AWS_145".into(),
            name: "x".repeat(2000),
            resource: "aws_s3_bucket.logs".into(),
            file: "/main.tf".into(),
            lines: [1, 3],
            severity: None,
            guideline: None,
        };
        Report {
            version: "3.3.30".into(),
            passed: 4,
            failed,
            skipped: 0,
            parsing_errors: 0,
            failed_checks: vec![finding; listed],
        }
    }

    #[test]
    fn reports_must_match_the_stacks_scanners() {
        let scanned = stack(vec![Scanner::Checkov]);
        let read = read_reports(&scanned, vec![("checkov".into(), report(1, 1))]);
        let read = read.unwrap_or_else(|e| panic!("{e}"));
        let kept = read.get(&Scanner::Checkov).map(|r| r.failed_checks.iter().map(|f| f.name.len()).collect());
        assert_eq!(kept, Some(vec![MAX_FIELD]), "long fields are cut");
        let refused = |stack: &Stack, reports: Vec<(String, Report)>| read_reports(stack, reports).err().map(|e| e.0);
        assert!(refused(&scanned, vec![]).is_some_and(|e| e.contains("no checkov report")));
        assert!(
            refused(&stack(vec![]), vec![("checkov".into(), report(0, 0))]).is_some_and(|e| e.contains("not scanned"))
        );
        assert!(refused(&scanned, vec![("trivy".into(), report(0, 0))]).is_some_and(|e| e.contains("unknown scanner")));
        let twice = vec![("checkov".into(), report(0, 0)), ("checkov".into(), report(0, 0))];
        assert!(refused(&scanned, twice).is_some_and(|e| e.contains("two checkov")));
        assert!(refused(&scanned, vec![("checkov".into(), report(1, 2))]).is_some_and(|e| e.contains("fewer")));
        let many = report(600, MAX_FINDINGS + 1);
        assert!(refused(&scanned, vec![("checkov".into(), many)]).is_some_and(|e| e.contains("at most")));
    }

    #[test]
    fn a_scanner_is_named_once_and_known() {
        assert_eq!(Scanner::parse("checkov"), Ok(Scanner::Checkov));
        assert!(Scanner::parse("trivy").is_err());
        assert!(validate(&[Scanner::Checkov]).is_ok());
        assert!(validate(&[Scanner::Checkov, Scanner::Checkov]).is_err());
    }

    #[test]
    fn the_summary_lists_each_failed_check_once() {
        let mut reports = Reports::new();
        reports.insert(Scanner::Checkov, report(3, 3));
        let summary = summary(&reports);
        assert_eq!(summary.pointer("/checkov/failed_check_ids"), Some(&json!(["CKV_AWS_145"])));
        assert_eq!(summary.pointer("/checkov/failed"), Some(&json!(3)));
    }
}
