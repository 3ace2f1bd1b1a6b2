//! The run lifecycle: which states exist and which moves between them are legal.
//!
//! ```text
//! queued → planning → planned ─(approval policy)→ applying → finished
//!                        └─(rejected)→ discarded
//! any non-final state → canceled; a failed job → failed; an apply whose lease expired → interrupted
//! ```

use std::fmt;
use std::str::FromStr;

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// Submitted; its plan job waits for an agent.
    Queued,
    /// An agent is planning it.
    Planning,
    /// Planned; waits for the approval policy to say it may apply.
    Planned,
    /// Approved; its apply job is queued or running.
    Applying,
    /// Applied.
    Finished,
    /// A job failed, or the plan policy refused the plan.
    Failed,
    /// Canceled by someone.
    Canceled,
    /// Rejected at review; never applied.
    Discarded,
    /// Its apply job's agent vanished mid-apply: never re-applied silently.
    Interrupted,
}

impl RunState {
    /// Every state.
    pub const ALL: [Self; 9] = [
        Self::Queued,
        Self::Planning,
        Self::Planned,
        Self::Applying,
        Self::Finished,
        Self::Failed,
        Self::Canceled,
        Self::Discarded,
        Self::Interrupted,
    ];

    /// The stored and printed name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Planning => "planning",
            Self::Planned => "planned",
            Self::Applying => "applying",
            Self::Finished => "finished",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
            Self::Discarded => "discarded",
            Self::Interrupted => "interrupted",
        }
    }

    /// A state nothing leaves.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Finished | Self::Failed | Self::Canceled | Self::Discarded | Self::Interrupted)
    }

    /// Where `run submit --wait` stops: a final state, or waiting for people.
    pub fn is_settled(self) -> bool {
        self.is_final() || self == Self::Planned
    }

    /// Whether reviews are taken: only once there is a plan to review, and before it applies.
    pub fn takes_reviews(self) -> bool {
        self == Self::Planned
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state name the store holds that this build does not know.
#[derive(Debug, thiserror::Error)]
#[error("unknown run state `{0}`")]
pub struct UnknownState(pub String);

impl FromStr for RunState {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|state| state.as_str() == s).ok_or_else(|| UnknownState(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_final_states_are_settled() -> Result<(), UnknownState> {
        for state in RunState::ALL {
            assert_eq!(state.as_str().parse::<RunState>()?, state);
            if state.is_final() {
                assert!(state.is_settled() && !state.takes_reviews(), "{state}");
            }
        }
        assert!("approved".parse::<RunState>().is_err());
        assert!(RunState::Planned.is_settled() && RunState::Planned.takes_reviews());
        assert!(!RunState::Queued.is_settled() && !RunState::Applying.takes_reviews());
        Ok(())
    }
}
