//! Policy decisions, in Rego, evaluated by `regorus` (DESIGN.md §3).
//!
//! Deny by default: an allow (an approval) needs a rule that says so and no `deny` (`reject`)
//! message, for every policy type; an evaluation error, an undefined result or an exceeded time
//! limit is a deny whose reason says what went wrong. The
//! policy directory (`*.rego` plus `*.json` data files, like an OPA bundle) is parsed and analysed
//! once into a [`PolicySet`]; each decision evaluates a copy of it. [`PolicyEngine`] holds the live set
//! and swaps it on reload; a set that fails to load never replaces a good one.
//!
//! Built-ins that reach the network or the clock are not compiled in (see the `regorus` features in
//! Cargo.toml): policies get the time from their input, so decisions are reproducible.

mod cases;
mod collector;
mod decision;
mod engines;
pub mod input;
pub mod library;
mod schema;
mod set;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use keyward_proto::prometheus::{Histogram, Snapshot};

pub use cases::{CaseOutcome, CaseReport, run_cases};
pub use decision::{Decision, Outcome};
pub use input::{InputObject, PolicyInput};
pub use schema::input_schema;
pub use set::{EvalError, PolicyError, PolicySet};

/// The six policy types and the package each is evaluated in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyKind {
    /// `keyward.credentials`: before any token is minted for a relying party.
    Credentials,
    /// `keyward.run`: when a run is submitted.
    Run,
    /// `keyward.plan`: on a finished plan.
    Plan,
    /// `keyward.scan`: on a plan job's security scan, before `init` (docs/scans.md).
    Scan,
    /// `keyward.approval`: when a review is added or a plan finishes.
    Approval,
    /// `keyward.push`: per stack, on a pull request or push that touches it (docs/vcs.md):
    /// propose a plan, track the branch with a run, or ignore.
    Push,
}

impl PolicyKind {
    /// Every kind.
    pub const ALL: [Self; 6] = [Self::Credentials, Self::Run, Self::Plan, Self::Scan, Self::Approval, Self::Push];

    /// The Rego package.
    pub fn package(self) -> &'static str {
        match self {
            Self::Credentials => "keyward.credentials",
            Self::Run => "keyward.run",
            Self::Plan => "keyward.plan",
            Self::Scan => "keyward.scan",
            Self::Approval => "keyward.approval",
            Self::Push => "keyward.push",
        }
    }

    /// The lowercase name used on the command line and in case files.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Credentials => "credentials",
            Self::Run => "run",
            Self::Plan => "plan",
            Self::Scan => "scan",
            Self::Approval => "approval",
            Self::Push => "push",
        }
    }
}

impl std::str::FromStr for PolicyKind {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == s).ok_or_else(|| PolicyError::UnknownKind(s.to_owned()))
    }
}

impl std::fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The live policy set of a running broker, reloadable.
#[derive(Debug)]
pub struct PolicyEngine {
    dir: PathBuf,
    timeout: Duration,
    current: RwLock<Arc<PolicySet>>,
    /// How long decisions took, per kind (in [`PolicyKind::ALL`]'s order), for `/metrics`.
    timings: Vec<Histogram>,
}

impl PolicyEngine {
    /// Loads `dir`. A set that does not load stops the broker at start (DESIGN.md §3).
    pub fn load(dir: &Path, timeout: Duration) -> Result<Self, PolicyError> {
        let set = PolicySet::load(dir, timeout)?;
        tracing::info!(dir = %dir.display(), digest = %set.digest(), files = set.files().len(), "policy set loaded");
        let timings =
            PolicyKind::ALL.iter().map(|_| Histogram::new(keyward_proto::prometheus::LATENCY_SECONDS)).collect();
        Ok(Self { dir: dir.to_owned(), timeout, current: RwLock::new(Arc::new(set)), timings })
    }

    /// The set decisions are made with now.
    pub fn current(&self) -> Arc<PolicySet> {
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Reloads the directory. On failure the last good set stays in force and the error says why.
    pub fn reload(&self) -> Result<Arc<PolicySet>, PolicyError> {
        match PolicySet::load(&self.dir, self.timeout) {
            Ok(set) => {
                let set = Arc::new(set);
                tracing::info!(dir = %self.dir.display(), digest = %set.digest(), "policy set reloaded");
                match self.current.write() {
                    Ok(mut guard) => *guard = Arc::clone(&set),
                    Err(poisoned) => *poisoned.into_inner() = Arc::clone(&set),
                }
                Ok(set)
            }
            Err(error) => {
                tracing::error!(
                    dir = %self.dir.display(), %error,
                    kept = %self.current().digest(), "policy reload failed; keeping the last good policy set"
                );
                Err(error)
            }
        }
    }

    /// The directory the set is loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What is loaded, for `GET /v1/policies`.
    pub fn status(&self) -> serde_json::Value {
        let set = self.current();
        serde_json::json!({
            "dir": self.dir.display().to_string(),
            "digest": set.digest(),
            "files": set.files(),
            "packages": set.packages(),
        })
    }

    /// Decides with the current set.
    pub fn decide(&self, kind: PolicyKind, input: impl Into<PolicyInput>) -> Decision {
        let started = Instant::now();
        let decision = self.current().decide(kind, input);
        if let Some(timing) = PolicyKind::ALL.iter().position(|k| *k == kind).and_then(|i| self.timings.get(i)) {
            timing.observe_duration(started.elapsed());
        }
        decision
    }

    /// How long this engine's decisions took, per kind, for `/metrics`.
    pub fn decision_seconds(&self) -> impl Iterator<Item = (PolicyKind, Snapshot)> + '_ {
        PolicyKind::ALL.iter().zip(&self.timings).map(|(kind, timing)| (*kind, timing.snapshot()))
    }
}
