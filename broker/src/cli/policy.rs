//! `keyward policy …`: test, evaluate and document policies offline, without a broker.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Subcommand;

use super::Connection;
use super::client::{Client, print_json, text};
use super::output::outln;
use crate::policy::{CaseOutcome, PolicyKind, PolicySet, input_schema, run_cases};

/// Time limit for one evaluation when testing offline (the broker's is `policy.evaluation_timeout`).
const OFFLINE_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Subcommand)]
pub(super) enum PolicyCommand {
    /// Run the policy test cases (`*.cases.json`) under DIR against the policies in DIR.
    Test {
        /// The policy directory.
        #[arg(default_value = "policies")]
        dir: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Evaluate one input and show the decision and its reasons.
    Eval {
        /// `credentials`, `run`, `plan`, `scan`, `approval` or `push`.
        #[arg(long = "type")]
        kind: String,
        /// A JSON file with the input (`-` for standard input).
        #[arg(long)]
        input: PathBuf,
        /// The policy directory.
        #[arg(long, default_value = "policies")]
        dir: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the JSON Schema of a policy type's input.
    Schema {
        /// `credentials`, `run`, `plan`, `scan`, `approval` or `push`.
        kind: String,
    },
    /// Make a running broker reload its policy directory (a broken set is refused and the last
    /// good one stays in force).
    Reload {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connection: Connection,
    },
}

pub(super) async fn run(command: PolicyCommand, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<()> {
    match command {
        PolicyCommand::Reload { json, connection } => {
            let status = Client::new(&connection, env)?.post("/v1/policies/reload", &serde_json::json!({})).await?;
            if json {
                return print_json(&status);
            }
            outln!("reloaded {} (digest {})", text(&status, "dir"), text(&status, "digest"))?;
            Ok(())
        }
        PolicyCommand::Test { dir, json } => test(&dir, json),
        PolicyCommand::Eval { kind, input, dir, json } => eval(&kind, &input, &dir, json),
        PolicyCommand::Schema { kind } => {
            let kind: PolicyKind = kind.parse()?;
            outln!("{}", serde_json::to_string_pretty(&input_schema(kind))?)?;
            Ok(())
        }
    }
}

fn test(dir: &Path, json: bool) -> anyhow::Result<()> {
    let set = PolicySet::load(dir, OFFLINE_TIMEOUT)?;
    let reports = run_cases(&set, dir)?;
    if reports.is_empty() {
        bail!("no test cases found: add *.cases.json files under {}", dir.display());
    }
    let failed = reports.iter().filter(|r| r.result == CaseOutcome::Fail).count();
    let passed = reports.len() - failed;
    if json {
        let document = serde_json::json!({
            "passed": passed, "failed": failed, "policy_digest": set.digest(), "cases": reports,
        });
        outln!("{}", serde_json::to_string_pretty(&document)?)?;
    } else {
        outln!("{:<6} {:<12} {:<28} CASE", "RESULT", "TYPE", "FILE")?;
        for report in &reports {
            let result = match report.result {
                CaseOutcome::Pass => "pass",
                CaseOutcome::Fail => "FAIL",
            };
            outln!("{result:<6} {:<12} {:<28} {}", report.kind.as_str(), report.file, report.name)?;
            if let Some(failure) = &report.failure {
                outln!("{:<6} {failure}", "")?;
            }
        }
        outln!("{passed} passed, {failed} failed")?;
    }
    if failed > 0 {
        bail!("{failed} policy test case(s) failed");
    }
    Ok(())
}

fn eval(kind: &str, input: &Path, dir: &Path, json: bool) -> anyhow::Result<()> {
    let kind: PolicyKind = kind.parse()?;
    let text = if input == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).context("cannot read the input from standard input")?
    } else {
        std::fs::read_to_string(input).with_context(|| format!("cannot read input file {}", input.display()))?
    };
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("input file {} is not JSON", input.display()))?;
    let set = PolicySet::load(dir, OFFLINE_TIMEOUT)?;
    let decision = set.decide(kind, value);
    if json {
        outln!("{}", serde_json::to_string_pretty(&decision)?)?;
        return Ok(());
    }
    outln!("decision: {}", serde_json::to_value(decision.outcome)?.as_str().unwrap_or_default())?;
    for reason in &decision.reasons {
        outln!("  reason: {reason}")?;
    }
    for warning in &decision.warnings {
        outln!("  warning: {warning}")?;
    }
    if let Some(ttl) = decision.ttl_seconds {
        outln!("ttl_seconds: {ttl}")?;
    }
    if let Some(policy) = &decision.session_policy {
        outln!("session_policy: {policy}")?;
    }
    outln!("policy set: {} ({})", dir.display(), decision.policy_digest)?;
    Ok(())
}
