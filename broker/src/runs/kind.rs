//! What a run is for: a deploy (plan, review, apply), a drift check (a read-only plan that says
//! whether the real infrastructure still matches the configuration, and never applies), or a
//! remediation (a deploy of the stack's branch that a drift check queued to put drift back).

use std::fmt;
use std::str::FromStr;

/// A run's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunKind {
    /// Plan, then (once the approval policy agrees) apply exactly that plan.
    #[default]
    Deploy,
    /// `terraform plan -detailed-exitcode` with the plan phase's read-only credentials; the run
    /// finishes with what it found (`drift`) and never queues an apply.
    Drift,
    /// A deploy the drift check queued because the stack drifted and its `drift_remediation`
    /// says so: plan, then apply as the approval policy allows (it sees this kind).
    Remediation,
    /// A plan of a change not merged yet (a pull request's head, docs/vcs.md): planned like a
    /// deploy, with the plan phase's read-only credentials, its plan judged by `keyward.plan`
    /// and shown; the run finishes there and never queues an apply.
    Proposed,
}

impl RunKind {
    /// Every kind.
    pub const ALL: [Self; 4] = [Self::Deploy, Self::Drift, Self::Remediation, Self::Proposed];

    /// Whether runs of this kind plan and then apply (deploys and remediations).
    pub fn applies(self) -> bool {
        matches!(self, Self::Deploy | Self::Remediation)
    }

    /// The stored, printed and policy-visible name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deploy => "deploy",
            Self::Drift => "drift",
            Self::Remediation => "remediation",
            Self::Proposed => "proposed",
        }
    }
}

impl fmt::Display for RunKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A kind name this build does not know.
#[derive(Debug, thiserror::Error)]
#[error("unknown run kind `{0}` (expected `deploy`, `drift`, `remediation` or `proposed`)")]
pub struct UnknownKind(pub String);

impl FromStr for RunKind {
    type Err = UnknownKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == s).ok_or_else(|| UnknownKind(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() -> Result<(), UnknownKind> {
        for kind in RunKind::ALL {
            assert_eq!(kind.as_str().parse::<RunKind>()?, kind);
        }
        assert_eq!(RunKind::default(), RunKind::Deploy);
        assert!("Drift".parse::<RunKind>().is_err() && "".parse::<RunKind>().is_err());
        Ok(())
    }
}
