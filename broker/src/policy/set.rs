//! Loading a policy directory into one compiled, immutable [`PolicySet`].

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_lc_rs::digest;
use regorus::utils::limits::ExecutionTimerConfig;

use super::collector::{self, Outputs};
use super::engines;
use super::input::PolicyInput;
use super::{Decision, PolicyKind};
use keyward_proto::encoding::hex;

/// Why a policy set did not load, or a policy type was not understood.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The directory or a file could not be read.
    #[error("cannot read policy {path}: {source}")]
    Read {
        /// File or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A `.rego` file did not parse or compile.
    #[error("policy {file} does not compile: {message}")]
    Compile {
        /// The file.
        file: String,
        /// regorus's message (with line and column).
        message: String,
    },
    /// A `data.json` file is not a JSON object.
    #[error("policy data {file} is invalid: {message}")]
    Data {
        /// The file.
        file: String,
        /// What is wrong.
        message: String,
    },
    /// The directory holds no `.rego` file.
    #[error("policy directory {0} contains no .rego files")]
    Empty(PathBuf),
    /// The policy set as a whole does not compile (for example, an unknown built-in).
    #[error("policy set in {dir} does not compile: {message}")]
    Prepare {
        /// The directory.
        dir: PathBuf,
        /// regorus's message.
        message: String,
    },
    /// A policy type name that does not exist.
    #[error("unknown policy type `{0}`: expected credentials, run, plan, scan, approval or push")]
    UnknownKind(String),
}

/// Why an evaluation produced no document. Either way the decision is a deny (a pending approval),
/// but the reason on record says which: a policy that ran out of time is not a policy that broke.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The input is not a JSON object.
    #[error("the input must be a JSON object")]
    NotAnObject,
    /// Evaluation ran past the set's time limit (`policy.evaluation_timeout`).
    #[error("ran past its time limit of {}", humantime::format_duration(*.0))]
    TimeLimit(Duration),
    /// Evaluation failed: a built-in's error, conflicting outputs, a limit other than time.
    #[error("{0}")]
    Failed(String),
}

/// A compiled policy directory. Immutable; each decision evaluates a copy of its engine (one per
/// thread, reused: `engines.rs`).
///
/// Decisions run on regorus's interpreter, not its bytecode VM: in regorus 0.14.1 the VM turns a
/// failing built-in inside a rule body into "undefined" even in strict mode, so a `deny` rule that
/// errors would silently allow. The interpreter fails the decision, which is a deny. (Tested in
/// `a_deny_rule_that_errors_denies`.)
#[derive(Debug, Clone)]
pub struct PolicySet {
    engine: regorus::Engine,
    /// Identifies the set's engine for the per-thread engines (`engines.rs`).
    id: u64,
    timeout: Duration,
    digest: String,
    files: Vec<String>,
    packages: Vec<String>,
}

/// Largest policy or data file read.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

impl PolicySet {
    /// Compiles every `*.rego` under `dir` (recursively, in path order) and merges every
    /// `data.json` into `data`. Case files (`*.cases.json`) are ignored here.
    pub fn load(dir: &Path, timeout: Duration) -> Result<Self, PolicyError> {
        let mut files = Vec::new();
        collect(dir, &mut files)?;
        files.sort();
        let mut sources = Vec::new();
        for path in files {
            let name = path.strip_prefix(dir).unwrap_or(&path).display().to_string();
            let is_rego = path.extension().is_some_and(|e| e == "rego");
            let is_data = path.file_name().is_some_and(|n| n == "data.json");
            if !is_rego && !is_data {
                continue;
            }
            let size =
                std::fs::metadata(&path).map_err(|source| PolicyError::Read { path: path.clone(), source })?.len();
            if size > MAX_FILE_BYTES {
                return Err(PolicyError::Data { file: name, message: "larger than 1 MiB".to_owned() });
            }
            let text =
                std::fs::read_to_string(&path).map_err(|source| PolicyError::Read { path: path.clone(), source })?;
            sources.push((name, text));
        }
        Self::from_sources(dir, &sources, timeout)
    }

    /// Compiles in-memory sources: `(name, text)` pairs, `.rego` policies and `data.json` data.
    pub fn from_sources(origin: &Path, sources: &[(String, String)], timeout: Duration) -> Result<Self, PolicyError> {
        let mut engine = regorus::Engine::new();
        engine.set_strict_builtin_errors(true);
        engine.set_execution_timer_config(ExecutionTimerConfig {
            limit: timeout,
            check_interval: NonZeroU32::MIN.saturating_add(63),
        });
        let mut hasher = digest::Context::new(&digest::SHA256);
        let mut files = Vec::new();
        for (name, text) in sources {
            hasher.update(name.as_bytes());
            hasher.update(&[0]);
            hasher.update(text.as_bytes());
            hasher.update(&[0]);
            if name.ends_with(".rego") {
                engine
                    .add_policy(name.clone(), text.clone())
                    .map_err(|e| PolicyError::Compile { file: name.clone(), message: e.to_string() })?;
            } else {
                let data: serde_json::Value = serde_json::from_str(text)
                    .map_err(|e| PolicyError::Data { file: name.clone(), message: e.to_string() })?;
                if !data.is_object() {
                    return Err(PolicyError::Data { file: name.clone(), message: "must be a JSON object".to_owned() });
                }
                engine
                    .add_data(regorus::Value::from(data))
                    .map_err(|e| PolicyError::Data { file: name.clone(), message: e.to_string() })?;
            }
            files.push(name.clone());
        }
        if !files.iter().any(|f| f.ends_with(".rego")) {
            return Err(PolicyError::Empty(origin.to_owned()));
        }
        let packages = engine
            .get_packages()
            .map_err(|e| PolicyError::Prepare { dir: origin.to_owned(), message: e.to_string() })?;
        if packages.iter().any(|p| p == &format!("data.{}", collector::PACKAGE)) {
            return Err(PolicyError::Prepare {
                dir: origin.to_owned(),
                message: format!("package {} is the broker's own; name the package otherwise", collector::PACKAGE),
            });
        }
        let outputs: Vec<Outputs> = PolicyKind::ALL.into_iter().map(|kind| Outputs::of(&engine, kind)).collect();
        for (kind, output) in PolicyKind::ALL.into_iter().zip(&outputs) {
            if output.deny_only() {
                tracing::warn!(
                    package = kind.package(),
                    "this package defines deny but no allow: it allows whatever it does not deny; \
                     define allow to make it fail closed (docs/policies.md)"
                );
            }
        }
        engine
            .add_policy("(keyward outputs)".to_owned(), collector::module(&outputs))
            .map_err(|e| PolicyError::Prepare { dir: origin.to_owned(), message: e.to_string() })?;
        // A first evaluation of every package, with an empty input, makes regorus analyse the set
        // now (so the clones decisions use start prepared) and finds calls to built-ins that do
        // not exist here, such as the network and clock ones, wherever they are reached without
        // input. Errors that depend on the input are left to decisions, which deny on them.
        engine.set_input(regorus::Value::from(serde_json::json!({})));
        for kind in PolicyKind::ALL {
            if !packages.iter().any(|p| p == &format!("data.{}", kind.package())) {
                tracing::warn!(
                    package = kind.package(),
                    "no policy defines this package; its decisions deny by default"
                );
                continue;
            }
            if let Err(error) = engine.eval_query(format!("data.{}", kind.package()), false) {
                let message = error.to_string();
                if message.contains("could not find function") {
                    return Err(PolicyError::Prepare { dir: origin.to_owned(), message });
                }
            }
        }
        Ok(Self { engine, id: engines::new_id(), timeout, digest: hex(hasher.finish().as_ref()), files, packages })
    }

    /// SHA-256 over the set's file names and contents.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The files the set was compiled from.
    pub fn files(&self) -> &[String] {
        &self.files
    }

    /// The packages it defines (`data.keyward.credentials`, …).
    pub fn packages(&self) -> &[String] {
        &self.packages
    }

    /// Evaluates the `kind` package with `input`. Never fails: failures are denies with reasons.
    /// Takes the input by value: a JSON input is converted for the engine, which consumes it, and
    /// a [`PolicyInput`] built for the decision is handed over as it is.
    pub fn decide(&self, kind: PolicyKind, input: impl Into<PolicyInput>) -> Decision {
        match self.outputs(kind, input) {
            Ok(document) => Decision::from_document(kind, &document, self.digest.clone()),
            Err(EvalError::TimeLimit(limit)) => Decision::timed_out(kind, limit, self.digest.clone()),
            Err(error) => Decision::failed(kind, error.to_string(), self.digest.clone()),
        }
    }

    /// The raw output rules (`allow`, `deny`, …) the policy produced for `input`, before they are
    /// interpreted as a [`Decision`]. `Err` when evaluation failed (an error, a limit).
    pub fn outputs(&self, kind: PolicyKind, input: impl Into<PolicyInput>) -> Result<serde_json::Value, EvalError> {
        let input = input.into().into_value();
        if !matches!(input, regorus::Value::Object(_)) {
            return Err(EvalError::NotAnObject);
        }
        // One rule, the collector of this kind's outputs: only what the outputs depend on is
        // evaluated, and nothing but the outputs is converted back.
        let rule = format!("data.{}.{}", collector::PACKAGE, kind.as_str());
        let value = engines::with_engine(self.id, &self.engine, |engine| {
            engine.set_input(input);
            engine.eval_rule(rule)
        })
        .map_err(|error| {
            let timed_out = matches!(
                error.downcast_ref::<regorus::LimitError>(),
                Some(regorus::LimitError::TimeLimitExceeded { .. })
            );
            if timed_out { EvalError::TimeLimit(self.timeout) } else { EvalError::Failed(error.to_string()) }
        })?;
        let mut outputs = serde_json::Map::new();
        // Undefined or empty: no output rule is defined for this input, a deny by default.
        if let regorus::Value::Set(pairs) = &value {
            for pair in pairs.iter() {
                let regorus::Value::Array(pair) = pair else { continue };
                if let [regorus::Value::String(rule), value] = pair.as_slice() {
                    let value = serde_json::to_value(value).map_err(|e| EvalError::Failed(e.to_string()))?;
                    outputs.insert(rule.to_string(), value);
                }
            }
        }
        Ok(serde_json::Value::Object(outputs))
    }
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), PolicyError> {
    let entries = std::fs::read_dir(dir).map_err(|source| PolicyError::Read { path: dir.to_owned(), source })?;
    for entry in entries {
        let entry = entry.map_err(|source| PolicyError::Read { path: dir.to_owned(), source })?;
        let path = entry.path();
        let kind = entry.file_type().map_err(|source| PolicyError::Read { path: path.clone(), source })?;
        if kind.is_dir() {
            collect(&path, out)?;
        } else if kind.is_file() {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::policy::Outcome;

    fn set(rego: &str) -> Result<PolicySet, PolicyError> {
        PolicySet::from_sources(Path::new("mem"), &[("p.rego".to_owned(), rego.to_owned())], Duration::from_millis(200))
    }

    const BASIC: &str = r#"
package keyward.credentials

default allow := false

allow if input.target.name == "dev"

deny contains "plan tokens get read targets only" if {
    input.run.phase == "plan"
    input.target.access == "write"
}

ttl_seconds := 600 if input.run.phase == "plan"
"#;

    #[test]
    fn the_collector_package_is_reserved() {
        let sources = [(
            "p.rego".to_owned(),
            "package keyward_broker_outputs\n\ncredentials contains [\"allow\", true]\n".to_owned(),
        )];
        let error = PolicySet::from_sources(Path::new("p"), &sources, Duration::from_secs(1)).err();
        assert!(
            error.as_ref().is_some_and(|e| e.to_string().contains("keyward_broker_outputs is the broker's own")),
            "{error:?}"
        );
    }

    #[test]
    fn decisions_follow_the_policy() -> Result<(), PolicyError> {
        let set = set(BASIC)?;
        let allowed = set.decide(
            PolicyKind::Credentials,
            json!({"target": {"name": "dev", "access": "read"}, "run": {"phase": "plan"}}),
        );
        assert_eq!((allowed.outcome, allowed.ttl_seconds), (Outcome::Allow, Some(600)));
        let denied = set.decide(
            PolicyKind::Credentials,
            json!({"target": {"name": "dev", "access": "write"}, "run": {"phase": "plan"}}),
        );
        assert_eq!(denied.outcome, Outcome::Deny);
        assert_eq!(denied.reasons, ["plan tokens get read targets only"]);
        let unknown = set.decide(PolicyKind::Credentials, json!({"target": {"name": "prod"}}));
        assert_eq!(unknown.outcome, Outcome::Deny, "deny by default");
        let undefined_package = set.decide(PolicyKind::Run, json!({}));
        assert_eq!(undefined_package.outcome, Outcome::Deny, "a set without keyward.run refuses runs");
        assert_eq!(undefined_package.reasons, ["no rule allowed the request (deny by default)"]);
        Ok(())
    }

    /// A `run` or `plan` package written deny-only (before `allow` was required) keeps allowing
    /// what it does not deny; one that defines `allow` is held to it.
    #[test]
    fn deny_only_run_and_plan_packages_keep_working() -> Result<(), PolicyError> {
        for kind in [PolicyKind::Run, PolicyKind::Plan, PolicyKind::Scan] {
            let package = kind.package();
            let deny_only = set(&format!("package {package}\n\ndeny contains \"no x\" if input.x\n"))?;
            assert_eq!(deny_only.decide(kind, json!({})).outcome, Outcome::Allow, "{kind}");
            assert_eq!(deny_only.decide(kind, json!({"x": true})).reasons, ["no x"], "{kind}");
            let positive = set(&format!(
                "package {package}\n\ndefault allow := false\n\nallow if input.y\n\ndeny contains \"no x\" if input.x\n"
            ))?;
            assert_eq!(positive.decide(kind, json!({})).outcome, Outcome::Deny, "{kind}");
            assert_eq!(positive.decide(kind, json!({"y": true})).outcome, Outcome::Allow, "{kind}");
            assert_eq!(positive.decide(kind, json!({"y": true, "x": true})).reasons, ["no x"], "{kind}");
            // A package with neither (only warnings) allows nothing.
            let warn_only = set(&format!("package {package}\n\nwarn contains \"w\" if true\n"))?;
            assert_eq!(warn_only.decide(kind, json!({})).outcome, Outcome::Deny, "{kind}");
        }
        Ok(())
    }

    /// Deny by default must survive errors: a `deny` rule whose built-in fails makes the whole
    /// decision a deny, whether the argument is a literal or comes from the input.
    #[test]
    fn a_deny_rule_that_errors_denies() -> Result<(), PolicyError> {
        let set = set(r#"
package keyward.credentials

allow if count(deny) == 0

deny contains "literal" if {
    input.stack == "literal"
    to_number("not a number") > 0
}

deny contains "from input" if {
    x := to_number(input.x)
    x > 0
}
"#)?;
        for input in [json!({"stack": "literal"}), json!({"x": "abc"})] {
            let decision = set.decide(PolicyKind::Credentials, input.clone());
            assert_eq!(decision.outcome, Outcome::Deny, "{input}: {decision:?}");
            assert!(decision.reasons[0].contains("could not parse string as number"), "{decision:?}");
        }
        assert_eq!(set.decide(PolicyKind::Credentials, json!({"x": "1"})).outcome, Outcome::Deny, "deny fired");
        assert_eq!(set.decide(PolicyKind::Credentials, json!({"x": "-1"})).outcome, Outcome::Allow);
        Ok(())
    }

    /// Each thread reuses its engine from decision to decision (`engines.rs`): what one decision
    /// evaluated, or failed on, is not what the next one sees, and sets do not share engines.
    #[test]
    fn reused_engines_decide_as_fresh_ones() -> Result<(), PolicyError> {
        let remembers = set(r#"
package keyward.credentials

seen := input.x

allow if seen == input.expect

deny contains "bad" if to_number(input.bad) > 0
"#)?;
        let basic = set(BASIC)?;
        for round in 0..3 {
            for (x, expect, outcome) in [(1, 1, Outcome::Allow), (2, 2, Outcome::Allow), (3, 1, Outcome::Deny)] {
                let decision = remembers.decide(PolicyKind::Credentials, json!({"x": x, "expect": expect}));
                assert_eq!(decision.outcome, outcome, "round {round}: x={x} expect={expect}: {decision:?}");
            }
            let failed = remembers.decide(PolicyKind::Credentials, json!({"x": 1, "expect": 1, "bad": "abc"}));
            assert!(failed.reasons[0].starts_with("policy evaluation failed"), "{failed:?}");
            let other = basic.decide(PolicyKind::Credentials, json!({"target": {"name": "dev", "access": "read"}}));
            assert_eq!(other.outcome, Outcome::Allow, "another set on the same thread: {other:?}");
        }
        Ok(())
    }

    #[test]
    fn broken_sets_fail_to_load_naming_the_file() {
        let error = set("package keyward.credentials\nallow if {").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("p.rego"), "{error}");
        let error =
            set("package keyward.credentials\nallow if http.send({})").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("http.send"), "network built-ins are not available: {error}");
        let error = set("package keyward.credentials\nallow if time.now_ns() > 0")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("time.now_ns"), "clock built-ins are not available: {error}");
    }

    #[test]
    fn runtime_errors_and_time_limits_deny_with_the_reason() -> Result<(), PolicyError> {
        let set = set(r#"
package keyward.credentials

allow if to_number(input.x) > 0

deny contains "slow" if {
    count([x | some a in numbers.range(1, 5000); some b in numbers.range(1, 5000); x := a * b]) < 0
}
"#)?;
        let bad_builtin = set.decide(PolicyKind::Credentials, json!({"x": "not a number"}));
        assert_eq!(bad_builtin.outcome, Outcome::Deny);
        assert!(bad_builtin.reasons[0].starts_with("policy evaluation failed: "), "{bad_builtin:?}");
        assert!(bad_builtin.reasons[0].contains("could not parse string as number"), "{bad_builtin:?}");
        // A time limit is a deny too, and says so: the two are told apart in the audit log.
        let slow = set.decide(PolicyKind::Credentials, json!({"x": "1"}));
        assert_eq!(slow.outcome, Outcome::Deny);
        assert_eq!(slow.reasons, ["policy evaluation ran past its time limit of 200ms"], "{slow:?}");
        let not_object = set.decide(PolicyKind::Credentials, json!([1]));
        assert_eq!(not_object.outcome, Outcome::Deny);
        Ok(())
    }
}
