//! The one table where domain errors become gRPC statuses.
//!
//! Agents act on the code, so these codes are part of the protocol: `PermissionDenied` and
//! `Unauthenticated` end an agent for good (it must enroll again); every other code on the work
//! stream makes it reconnect; on a job's calls the code decides whether the job fails. Internal
//! failures (database, CA) are logged in full here and reach the agent only as a plain
//! `Unavailable` "retry".

use tonic::Status;

use crate::agents::AgentError;
use crate::agents::credentials::CredentialsError;
use crate::agents::hub::Disconnect;
use crate::agents::uploads::OverBudget;
use crate::exchange::ExchangeError;
use crate::runs::RunError;

/// What a failure the agent cannot act on looks like to it.
fn retry(error: &dyn std::fmt::Display) -> Status {
    tracing::error!(%error, "agent request failed");
    Status::unavailable("the broker could not complete the request; retry")
}

/// The status for an agent error.
pub fn agent(error: AgentError) -> Status {
    match error {
        AgentError::Invalid(message) => Status::invalid_argument(message),
        AgentError::Csr(csr) => Status::invalid_argument(csr.to_string()),
        AgentError::NotFound(message) => Status::not_found(message),
        AgentError::Conflict(message) => Status::failed_precondition(message),
        AgentError::Unauthenticated(message) => Status::unauthenticated(message),
        AgentError::Forbidden(message) => Status::permission_denied(message),
        AgentError::Ca(_) | AgentError::Store(_) | AgentError::Runs(_) => retry(&error),
    }
}

/// The status for a run error met on a job's call (the lease, the saved plan).
pub fn run(error: RunError) -> Status {
    match error {
        RunError::NotFound(message) => Status::not_found(message),
        RunError::Conflict(message) => Status::permission_denied(message),
        RunError::Invalid(message) => Status::invalid_argument(message),
        other => retry(&other),
    }
}

/// The status for a refused `Credentials` call.
pub fn credentials(error: CredentialsError) -> Status {
    match error {
        CredentialsError::Lease(error) => run(error),
        CredentialsError::NoTargets => Status::failed_precondition(error.to_string()),
        CredentialsError::Exchange(error) => exchange(&error),
    }
}

/// The status for an exchange a job's credentials needed.
fn exchange(error: &ExchangeError) -> Status {
    match error {
        ExchangeError::InvalidRequest(_) | ExchangeError::InvalidTarget(_) => {
            Status::invalid_argument(error.to_string())
        }
        ExchangeError::InvalidGrant(_) | ExchangeError::Denied(_) | ExchangeError::UpstreamRefused(_) => {
            Status::permission_denied(error.to_string())
        }
        ExchangeError::Unavailable(_) | ExchangeError::UpstreamUnavailable(_) => Status::unavailable(error.to_string()),
    }
}

/// The status for a saved-plan part over the agent's budget.
pub fn over_budget(error: OverBudget) -> Status {
    Status::resource_exhausted(error.to_string())
}

/// The status that ends a work stream: only a revocation stops the agent for good.
pub fn disconnect(why: &Disconnect) -> Status {
    let message = why.to_string();
    match why {
        Disconnect::Replaced => Status::aborted(message),
        Disconnect::Revoked => Status::permission_denied(message),
        Disconnect::ShuttingDown => Status::unavailable(message),
        Disconnect::BadLogChunks(_) => Status::invalid_argument(message),
    }
}
