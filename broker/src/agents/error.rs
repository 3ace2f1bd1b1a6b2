//! Why an agent request was refused, by cause. Which status a cause becomes is the edges'
//! choice (`api/error.rs` for HTTP, `grpc/status.rs` for agents), not this module's.

use std::time::Duration;

use super::ca::{CaError, CsrError, IssueError};
use super::{MAX_CSR_BYTES, MAX_HOSTNAME, MAX_VERSION};
use crate::audit::ChangeError;
use crate::runs::RunError;
use crate::store::StoreError;

/// Why an agent request was refused.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A pool name breaks the naming rule; nothing was changed.
    #[error("invalid pool name `{0}`: 1-64 characters of a-z, 0-9, `-`, `_`, starting with a letter or digit")]
    BadPoolName(String),
    /// A join token's asked lifetime is out of bounds.
    #[error("a join token lives between 1s and {} (agents.join_token_max_ttl)", humantime::format_duration(*.max))]
    JoinTokenTtl {
        /// The longest allowed.
        max: Duration,
    },
    /// The CSR is larger than any agent sends.
    #[error("the CSR is larger than {MAX_CSR_BYTES} bytes")]
    CsrTooLarge,
    /// The host name an enrolling agent reports is empty, too long or not printable.
    #[error("invalid host name: 1-{MAX_HOSTNAME} printable ASCII characters")]
    BadHostname,
    /// The version an enrolling agent reports is empty, too long or not printable.
    #[error("invalid agent version: 1-{MAX_VERSION} printable ASCII characters")]
    BadVersion,
    /// The CSR is unacceptable.
    #[error(transparent)]
    Csr(#[from] CsrError),
    /// No agent has this ID.
    #[error("no agent with ID `{0}`")]
    UnknownAgent(String),
    /// No pool has this name.
    #[error("no pool named `{0}`; create it with `keyward pool create {0}`")]
    UnknownPool(String),
    /// The agent is already revoked.
    #[error("agent {0} is already revoked")]
    AlreadyRevoked(String),
    /// The agent is not active (draining or revoked), so it cannot be drained.
    #[error("agent {agent} is {state}")]
    NotActive {
        /// The agent.
        agent: String,
        /// Its state.
        state: String,
    },
    /// A guarded write found the state it was decided on moved on, or its row already there.
    #[error(transparent)]
    Change(#[from] ChangeError),
    /// The join token does not enroll anyone.
    #[error(transparent)]
    JoinToken(#[from] JoinTokenRefusal),
    /// The client certificate names no agent of this CA's trust domain.
    #[error("the client certificate names no agent")]
    NoAgentInCertificate,
    /// The certificate names an agent that is not enrolled.
    #[error("agent {0} is not enrolled")]
    NotEnrolled(String),
    /// The certificate names an agent in another pool than the one on record.
    #[error("agent {agent} is not in pool {pool}")]
    WrongPool {
        /// The agent.
        agent: String,
        /// The pool the certificate names.
        pool: String,
    },
    /// The agent is revoked: it may not do anything any more.
    #[error("agent {0} is revoked")]
    Revoked(String),
    /// The CA failed.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// The store or the audit log failed; nothing was changed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Ending the agent's leases failed.
    #[error(transparent)]
    Runs(#[from] RunError),
}

/// Why a join token does not enroll. The messages are all an unauthenticated caller learns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JoinTokenRefusal {
    /// Not a join token, or one that was never issued.
    #[error("the join token is not valid")]
    NotValid,
    /// Already used by another enrollment.
    #[error("the join token was already used")]
    Used,
    /// Past its expiry.
    #[error("the join token has expired")]
    Expired,
    /// Made for another broker's agent CA.
    #[error("the join token pins another CA")]
    OtherCa,
}

impl From<IssueError> for AgentError {
    fn from(error: IssueError) -> Self {
        match error {
            IssueError::Csr(csr) => Self::Csr(csr),
            IssueError::Ca(ca) => Self::Ca(ca),
        }
    }
}
