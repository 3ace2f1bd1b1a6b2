//! Policy test cases: JSON files (`*.cases.json`) of inputs and expected decisions, run by
//! `keyward policy test` so a policy change is checked like code.
//!
//! ```json
//! {"cases": [
//!   {"name": "plan may read dev", "kind": "credentials",
//!    "input": {...},
//!    "expect": {"outcome": "allow", "ttl_seconds": 900}},
//!   {"name": "plan may not write", "kind": "credentials", "input": {...},
//!    "expect": {"outcome": "deny", "reasons_include": ["read targets only"]}}
//! ]}
//! ```
//! `reasons_include` and `warnings_include` match substrings, so rewording a message does not
//! need every case rewritten.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Decision, Outcome, PolicyError, PolicyKind, PolicySet};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    kind: PolicyKind,
    input: serde_json::Value,
    expect: Expectation,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Expectation {
    outcome: Outcome,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    reasons_include: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    warnings_include: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ttl_seconds: Option<u64>,
}

impl<'de> Deserialize<'de> for Outcome {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match String::deserialize(d)?.as_str() {
            "allow" => Ok(Self::Allow),
            "deny" => Ok(Self::Deny),
            "approve" => Ok(Self::Approve),
            "reject" => Ok(Self::Reject),
            "pending" => Ok(Self::Pending),
            "propose" => Ok(Self::Propose),
            "track" => Ok(Self::Track),
            "ignore" => Ok(Self::Ignore),
            other => Err(serde::de::Error::custom(format!(
                "unknown outcome `{other}`: expected allow, deny, approve, reject, pending, propose, track or ignore"
            ))),
        }
    }
}

/// Whether a case passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CaseOutcome {
    /// The decision matched.
    Pass,
    /// It did not.
    Fail,
}

/// The result of one case.
#[derive(Debug, Clone, Serialize)]
pub struct CaseReport {
    /// The case file, relative to the directory.
    pub file: String,
    /// The case's name.
    pub name: String,
    /// The policy type.
    pub kind: PolicyKind,
    /// Pass or fail.
    pub result: CaseOutcome,
    /// What was expected, as JSON.
    pub expected: serde_json::Value,
    /// The decision.
    pub decision: Decision,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

/// Runs every `*.cases.json` under `dir` against `set`. A case file that does not parse is an error.
pub fn run_cases(set: &PolicySet, dir: &Path) -> Result<Vec<CaseReport>, PolicyError> {
    let mut files = Vec::new();
    find_case_files(dir, &mut files)?;
    files.sort();
    let mut reports = Vec::new();
    for path in files {
        let name = path.strip_prefix(dir).unwrap_or(&path).display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|source| PolicyError::Read { path: path.clone(), source })?;
        let file: CaseFile = serde_json::from_str(&text)
            .map_err(|e| PolicyError::Data { file: name.clone(), message: e.to_string() })?;
        for case in file.cases {
            let decision = set.decide(case.kind, case.input);
            let failure = check(&case.expect, &decision);
            reports.push(CaseReport {
                file: name.clone(),
                name: case.name,
                kind: case.kind,
                result: if failure.is_none() { CaseOutcome::Pass } else { CaseOutcome::Fail },
                expected: serde_json::to_value(&case.expect).unwrap_or_default(),
                decision,
                failure,
            });
        }
    }
    Ok(reports)
}

fn check(expect: &Expectation, decision: &Decision) -> Option<String> {
    if expect.outcome != decision.outcome {
        return Some(format!(
            "expected {:?}, got {:?} ({})",
            expect.outcome,
            decision.outcome,
            decision.reasons.join("; ")
        ));
    }
    for wanted in &expect.reasons_include {
        if !decision.reasons.iter().any(|r| r.contains(wanted.as_str())) {
            return Some(format!("no reason contains {wanted:?}; reasons: {:?}", decision.reasons));
        }
    }
    for wanted in &expect.warnings_include {
        if !decision.warnings.iter().any(|w| w.contains(wanted.as_str())) {
            return Some(format!("no warning contains {wanted:?}; warnings: {:?}", decision.warnings));
        }
    }
    if expect.ttl_seconds.is_some() && expect.ttl_seconds != decision.ttl_seconds {
        return Some(format!("expected ttl_seconds {:?}, got {:?}", expect.ttl_seconds, decision.ttl_seconds));
    }
    None
}

fn find_case_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), PolicyError> {
    let entries = std::fs::read_dir(dir).map_err(|source| PolicyError::Read { path: dir.to_owned(), source })?;
    for entry in entries {
        let entry = entry.map_err(|source| PolicyError::Read { path: dir.to_owned(), source })?;
        let path = entry.path();
        if path.is_dir() {
            find_case_files(&path, out)?;
        } else if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(".cases.json")) {
            out.push(path);
        }
    }
    Ok(())
}
