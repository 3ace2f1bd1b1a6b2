//! Security scans before `init` (docs/scans.md): the scanners a plan job's assignment names run
//! on the checked-out code before any hook, state backend or Terraform command, and the broker's
//! `keyward.scan` policy decides from their findings whether the job goes on.
//!
//! A scanner runs exactly as untrusted code does: in the job's isolation, as the job's uid, in
//! the configuration's directory, under the job's deadline, with its output masked into the job's
//! log. It sees none of the job's credentials or variables (its environment is only what a
//! scanner needs), and its own program and runtime (a Python virtualenv and the interpreter it
//! was made from) are bound read-only. Its JSON report is kept by the agent (stdout, not the
//! log) and read into the few fields the policy sees.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use keyward_proto::agent_v1::{ScanFinding, ScanReport};
use serde_json::Value;

use crate::idrange::JobIds;
use crate::job::Job;
use crate::launch::{Isolation, Launch, Layers};
use crate::logs::JobLog;
use crate::plans::Plans;
use crate::step::{self, Cancel, StepEnd};
use crate::terraform::PhaseError;

/// Most failed checks sent per report (the rest are counted).
const MAX_FINDINGS: usize = 500;
/// The largest report read.
const MAX_REPORT: usize = 32 * 1024 * 1024;
/// Host directories every sandbox already shows: a runtime there needs no bind of its own.
const SYSTEM_DIRS: [&str; 6] = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64"];

/// A scanner this agent can run: its program and what must be visible for it to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// The program (absolute).
    pub program: PathBuf,
    /// Directories bound read-only into the sandbox for it (a virtualenv, its interpreter's
    /// prefix), beyond the system directories every sandbox has.
    pub runtime: Vec<PathBuf>,
}

/// The scanners this agent has, by name (`checkov`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scanners {
    installed: BTreeMap<String, Installed>,
}

/// The scanners this agent knows how to run.
pub const KNOWN: [&str; 1] = ["checkov"];

impl Scanners {
    /// The scanners given as `NAME=PATH` (`--scanner`), and any other known one found on `path`
    /// (the agent's `PATH`).
    pub fn locate(given: &[(String, PathBuf)], path: Option<&std::ffi::OsStr>) -> Result<Self, String> {
        let mut installed = BTreeMap::new();
        for (name, program) in given {
            if !KNOWN.contains(&name.as_str()) {
                return Err(format!("--scanner {name}=…: unknown scanner; known: {}", KNOWN.join(", ")));
            }
            if !program.is_absolute() || !program.is_file() {
                return Err(format!("--scanner {name}={}: not an absolute path to a file", program.display()));
            }
            installed.insert(name.clone(), Installed { program: program.clone(), runtime: runtime_of(program) });
        }
        for name in KNOWN {
            if installed.contains_key(name) {
                continue;
            }
            let found =
                path.into_iter().flat_map(std::env::split_paths).map(|dir| dir.join(name)).find(|p| p.is_file());
            if let Some(program) = found.filter(|p| p.is_absolute()) {
                let runtime = runtime_of(&program);
                installed.insert(name.to_owned(), Installed { program, runtime });
            }
        }
        Ok(Self { installed })
    }

    /// The scanner called `name`, if this agent has it.
    pub fn get(&self, name: &str) -> Option<&Installed> {
        self.installed.get(name)
    }

    /// `checkov=/opt/checkov/bin/checkov`, for the agent's start-up line.
    pub fn describe(&self) -> String {
        let listed: Vec<String> =
            self.installed.iter().map(|(name, i)| format!("{name}={}", i.program.display())).collect();
        if listed.is_empty() { "none".to_owned() } else { listed.join(", ") }
    }
}

/// What `program` needs visible to start, outside the system directories: the virtualenv it
/// lives in (`<root>/bin/<program>` beside `<root>/pyvenv.cfg`), and the prefix of the
/// interpreter its `#!` line names (`<prefix>/bin/python3.11`), symlinks resolved.
fn runtime_of(program: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let program = std::fs::canonicalize(program).unwrap_or_else(|_| program.to_owned());
    let venv = program.parent().and_then(Path::parent).filter(|root| root.join("pyvenv.cfg").is_file());
    dirs.extend(venv.map(Path::to_path_buf));
    let interpreter = shebang(&program).and_then(|interpreter| std::fs::canonicalize(interpreter).ok());
    dirs.extend(interpreter.as_deref().and_then(Path::parent).and_then(Path::parent).map(Path::to_path_buf));
    dirs.retain(|dir| dir.parent().is_some() && !SYSTEM_DIRS.iter().any(|system| dir.starts_with(system)));
    dirs.sort();
    dirs.dedup();
    // A directory inside another one is bound with it.
    let all = dirs.clone();
    dirs.retain(|dir| !all.iter().any(|other| other != dir && dir.starts_with(other)));
    dirs
}

/// The interpreter a script's `#!` line names.
fn shebang(program: &Path) -> Option<PathBuf> {
    let mut head = [0_u8; 256];
    let read = std::io::Read::read(&mut std::fs::File::open(program).ok()?, &mut head).ok()?;
    let line = head.get(..read)?.strip_prefix(b"#!")?;
    let line = line.split(|b| *b == b'\n').next()?;
    let interpreter = std::str::from_utf8(line).ok()?.split_whitespace().next()?;
    Some(PathBuf::from(interpreter))
}

/// Reads Checkov's `-o json` output: one framework's object, a list of them, or the bare summary
/// it prints when nothing was found.
pub fn read_checkov(json: &[u8]) -> Result<ScanReport, String> {
    let value: Value = serde_json::from_slice(json).map_err(|e| format!("checkov's report is not JSON: {e}"))?;
    let parts = match value {
        Value::Array(parts) => parts,
        other => vec![other],
    };
    let mut report = ScanReport { scanner: "checkov".to_owned(), ..ScanReport::default() };
    for part in &parts {
        let summary = part.get("summary").unwrap_or(part);
        let count = |key: &str| {
            summary.get(key).and_then(Value::as_u64).and_then(|n| u32::try_from(n).ok()).unwrap_or_default()
        };
        if summary.get("passed").is_none() || summary.get("failed").is_none() {
            return Err("checkov's report has no summary (passed, failed)".to_owned());
        }
        report.passed = report.passed.saturating_add(count("passed"));
        report.failed = report.failed.saturating_add(count("failed"));
        report.skipped = report.skipped.saturating_add(count("skipped"));
        report.parsing_errors = report.parsing_errors.saturating_add(count("parsing_errors"));
        if let Some(version) = summary.get("checkov_version").and_then(Value::as_str) {
            version.clone_into(&mut report.version);
        }
        let failed = part.pointer("/results/failed_checks").and_then(Value::as_array).into_iter().flatten();
        let room = MAX_FINDINGS.saturating_sub(report.findings.len());
        report.findings.extend(failed.take(room).map(finding));
    }
    report.failed = report.failed.max(u32::try_from(report.findings.len()).unwrap_or(u32::MAX));
    Ok(report)
}

/// One entry of Checkov's `failed_checks`.
fn finding(check: &Value) -> ScanFinding {
    let text = |key: &str| check.get(key).and_then(Value::as_str).unwrap_or_default().to_owned();
    let line = |index: usize| {
        check
            .get("file_line_range")
            .and_then(|range| range.get(index))
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or_default()
    };
    ScanFinding {
        check_id: text("check_id"),
        check_name: text("check_name"),
        resource: text("resource"),
        file: text("file_path"),
        first_line: line(0),
        last_line: line(1),
        severity: text("severity"),
        guideline: text("guideline"),
    }
}

/// Where a job's scanners run: where its Terraform will.
#[derive(Debug)]
pub(crate) struct Place<'a> {
    /// The job.
    pub job: &'a Job,
    /// How processes are isolated.
    pub isolation: &'a Isolation,
    /// The job's writable directory (the checkout is in it).
    pub work_dir: &'a Path,
    /// The configuration's directory inside it: what is scanned.
    pub cwd: &'a Path,
    /// The agent's private scratch directory.
    pub scratch: &'a Path,
    /// When the phase is killed.
    pub deadline: std::time::SystemTime,
    /// The host uid and gid of the job's slot, or `None` for the agent's own.
    pub host_ids: Option<JobIds>,
    /// The sandbox layers its processes ran under.
    pub layers: &'a Layers,
}

impl Place<'_> {
    /// Runs the job's scanners on the configuration's directory and hands their reports to the
    /// broker; the job goes on only if `keyward.scan` allows. Before anything else runs.
    pub(crate) async fn scan(
        &self,
        scanners: &Scanners,
        plans: &mut Plans,
        log: &JobLog,
        cancel: &mut Cancel,
    ) -> Result<(), PhaseError> {
        let mut reports = Vec::new();
        for name in &self.job.scanners {
            let installed = scanners.get(name).ok_or_else(|| {
                PhaseError::Failed(format!(
                    "this stack is scanned with {name} before init, and this agent has no {name} \
                     (install it on the agent's PATH or pass --scanner {name}=PATH)"
                ))
            })?;
            reports.push(self.run_scanner(name, installed, log, cancel).await?);
        }
        let verdict = plans.submit_scan(self.job, reports).await.map_err(|e| PhaseError::Failed(e.to_string()))?;
        for warning in &verdict.warn {
            log.note(&format!("keyward: scan policy warns: {warning}")).await;
        }
        if verdict.allowed {
            return Ok(());
        }
        let reasons = verdict.deny.join("; ");
        log.note(&format!("keyward: the scan policy refuses the run before init: {reasons}")).await;
        Err(PhaseError::Failed(format!("the scan policy refused the run before init: {reasons}")))
    }

    /// One scanner, in the sandbox, its JSON report kept from stdout.
    async fn run_scanner(
        &self,
        name: &str,
        installed: &Installed,
        log: &JobLog,
        cancel: &mut Cancel,
    ) -> Result<ScanReport, PhaseError> {
        let program = installed.program.display().to_string();
        let args = ["-d", ".", "--framework", "terraform", "-o", "json", "--quiet", "--compact"];
        let args = args.into_iter().chain(["--skip-download", "--soft-fail"]);
        let argv: Vec<String> = std::iter::once(program).chain(args.map(str::to_owned)).collect();
        log.note(&format!("$ {} (scan before init)", argv.join(" "))).await;
        let home = self.work_dir.display().to_string();
        let env = [
            ("PATH", "/usr/local/bin:/usr/bin:/bin"),
            ("HOME", home.as_str()),
            // No calls home for check metadata, and nothing written beside the scanner.
            ("BC_SKIP_MAPPING", "TRUE"),
            ("PYTHONDONTWRITEBYTECODE", "1"),
            ("LOG_LEVEL", "WARNING"),
        ];
        let launch = Launch {
            argv,
            env: env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            work_dir: self.work_dir.to_path_buf(),
            cwd: self.cwd.to_path_buf(),
            read_only: installed.runtime.clone(),
            deadline: self.deadline,
            scratch: self.scratch.to_path_buf(),
            host_ids: self.host_ids,
        };
        let prepared = self.isolation.prepare(launch).map_err(PhaseError::Failed)?;
        let status_file = prepared.status_file.clone();
        let started = std::time::Instant::now();
        let step = step::run(prepared, log, cancel, self.deadline, Some(MAX_REPORT)).await;
        let verdict = self.isolation.verdict(status_file.as_deref(), self.layers);
        let why = match step.end {
            StepEnd::Exited(status) if status.success() => None,
            StepEnd::Exited(status) => Some(verdict.unwrap_or_else(|| format!("exited with {status}"))),
            StepEnd::Canceled(reason) => return Err(PhaseError::Canceled(reason)),
            StepEnd::TimedOut => Some("ran past the job's deadline".to_owned()),
            StepEnd::NotStarted(error) => Some(format!("could not start: {error}")),
        };
        if let Some(why) = why {
            log.note(&format!("keyward: the {name} scan {why}")).await;
            return Err(PhaseError::Failed(format!("the {name} scan {why}: {}", log.tail().await)));
        }
        let report = read_checkov(&step.stdout).map_err(|e| PhaseError::Failed(format!("the {name} scan: {e}")))?;
        log.note(&format!(
            "keyward: {name} {}: {} passed, {} failed, {} skipped, {} unparsable file(s) in {:.2} s",
            report.version,
            report.passed,
            report.failed,
            report.skipped,
            report.parsing_errors,
            started.elapsed().as_secs_f64()
        ))
        .await;
        for finding in &report.findings {
            let line = format!(
                "keyward:   {} {} ({}:{})",
                finding.check_id, finding.resource, finding.file, finding.first_line
            );
            log.note(&line).await;
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checkov 3.3's `-o json` for one unencrypted bucket (trimmed), its bare summary when
    /// nothing was found, and the list it prints for several frameworks.
    const ONE_BUCKET: &str = r#"{"check_type": "terraform", "results": {"failed_checks": [
        {"check_id": "CKV_AWS_145", "bc_check_id": null, "check_name": "Ensure that S3 buckets are encrypted with KMS by default",
         "check_result": {"result": "FAILED"}, "file_path": "/storage/bucket.tf", "file_line_range": [1, 3],
         "resource": "aws_s3_bucket.logs", "severity": null, "guideline": null}]},
        "summary": {"passed": 4, "failed": 1, "skipped": 0, "parsing_errors": 0, "resource_count": 2, "checkov_version": "3.3.30"}}"#;

    #[test]
    fn checkov_reports_are_read_in_each_shape() -> Result<(), String> {
        let one = read_checkov(ONE_BUCKET.as_bytes())?;
        assert_eq!((one.passed, one.failed, one.version.as_str()), (4, 1, "3.3.30"));
        let finding = one.findings.first().ok_or("no finding")?;
        assert_eq!(finding.check_id, "CKV_AWS_145");
        assert_eq!((finding.resource.as_str(), finding.file.as_str()), ("aws_s3_bucket.logs", "/storage/bucket.tf"));
        assert_eq!((finding.first_line, finding.last_line, finding.severity.as_str()), (1, 3, ""));
        let bare = read_checkov(
            br#"{"passed": 0, "failed": 0, "skipped": 0, "parsing_errors": 1, "checkov_version": "3.3.30"}"#,
        )?;
        assert_eq!((bare.failed, bare.parsing_errors, bare.findings.len()), (0, 1, 0));
        let list = read_checkov(format!("[{ONE_BUCKET}, {ONE_BUCKET}]").as_bytes())?;
        assert_eq!((list.passed, list.failed, list.findings.len()), (8, 2, 2));
        Ok(())
    }

    #[test]
    fn a_report_without_a_summary_or_not_json_is_refused() {
        assert!(read_checkov(b"Traceback (most recent call last)").is_err_and(|e| e.contains("not JSON")));
        assert!(read_checkov(br#"{"results": {}}"#).is_err_and(|e| e.contains("no summary")));
    }

    #[test]
    fn findings_are_capped_but_counted() -> Result<(), String> {
        let check = r#"{"check_id": "CKV_AWS_21", "resource": "aws_s3_bucket.b", "file_path": "/m.tf", "file_line_range": [1, 2]}"#;
        let checks = vec![check; MAX_FINDINGS + 20].join(",");
        let json =
            format!(r#"{{"results": {{"failed_checks": [{checks}]}}, "summary": {{"passed": 0, "failed": 520}}}}"#);
        let report = read_checkov(json.as_bytes())?;
        assert_eq!((report.findings.len(), report.failed), (MAX_FINDINGS, 520));
        Ok(())
    }

    #[test]
    fn a_virtualenvs_runtime_is_the_venv_and_its_interpreters_prefix() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let prefix = dir.path().join("python");
        std::fs::create_dir_all(prefix.join("bin"))?;
        std::fs::write(prefix.join("bin/python3.11"), "")?;
        let venv = dir.path().join("venv");
        std::fs::create_dir_all(venv.join("bin"))?;
        std::fs::write(venv.join("pyvenv.cfg"), "home = x\n")?;
        std::os::unix::fs::symlink(prefix.join("bin/python3.11"), venv.join("bin/python3"))?;
        let program = venv.join("bin/checkov");
        std::fs::write(&program, format!("#!{}\nimport checkov\n", venv.join("bin/python3").display()))?;
        let canonical = |p: &Path| std::fs::canonicalize(p);
        assert_eq!(runtime_of(&program), vec![canonical(&prefix)?, canonical(&venv)?]);
        let system = dir.path().join("system");
        std::fs::write(&system, "#!/usr/bin/python3\n")?;
        assert_eq!(runtime_of(&system), Vec::<PathBuf>::new(), "the system's own interpreter needs no bind");
        Ok(())
    }

    #[test]
    fn scanners_are_found_on_the_path_or_given() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let program = dir.path().join("checkov");
        std::fs::write(&program, "#!/bin/sh\n")?;
        let on_path = Scanners::locate(&[], Some(dir.path().as_os_str())).map_err(std::io::Error::other)?;
        assert_eq!(on_path.get("checkov").map(|i| i.program.clone()), Some(program.clone()));
        assert_eq!(Scanners::locate(&[], None).map(|s| s.get("checkov").cloned()), Ok(None));
        let given = vec![("checkov".to_owned(), program.clone())];
        assert!(Scanners::locate(&given, None).is_ok_and(|s| s.get("checkov").is_some()));
        let unknown = vec![("trivy".to_owned(), program)];
        assert!(Scanners::locate(&unknown, None).is_err_and(|e| e.contains("unknown scanner")));
        let relative = vec![("checkov".to_owned(), PathBuf::from("checkov"))];
        assert!(Scanners::locate(&relative, None).is_err_and(|e| e.contains("absolute")));
        Ok(())
    }
}
