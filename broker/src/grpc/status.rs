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
use crate::audit::ChangeError;
use crate::exchange::ExchangeError;
use crate::runs::RunError;

/// What a failure the agent cannot act on looks like to it.
fn retry(error: &dyn std::fmt::Display) -> Status {
    tracing::error!(%error, "agent request failed");
    Status::unavailable("the broker could not complete the request; retry")
}

/// The status for an agent error.
pub fn agent(error: AgentError) -> Status {
    let message = error.to_string();
    match error {
        AgentError::BadPoolName(_)
        | AgentError::JoinTokenTtl { .. }
        | AgentError::CsrTooLarge
        | AgentError::BadHostname
        | AgentError::BadVersion
        | AgentError::Csr(_)
        | AgentError::Change(ChangeError::Rejected { .. }) => Status::invalid_argument(message),
        AgentError::UnknownAgent(_) | AgentError::UnknownPool(_) => Status::not_found(message),
        AgentError::AlreadyRevoked(_)
        | AgentError::NotActive { .. }
        | AgentError::Change(ChangeError::Duplicate { .. } | ChangeError::Moved { .. }) => {
            Status::failed_precondition(message)
        }
        AgentError::JoinToken(_)
        | AgentError::NoAgentInCertificate
        | AgentError::NotEnrolled(_)
        | AgentError::WrongPool { .. } => Status::unauthenticated(message),
        AgentError::Revoked(_) => Status::permission_denied(message),
        AgentError::Change(ChangeError::Store(_)) | AgentError::Ca(_) | AgentError::Store(_) | AgentError::Runs(_) => {
            retry(&error)
        }
    }
}

/// The status for a run error met on a job's call (the lease, the saved plan). A lease that
/// moved on is `PermissionDenied`: the job's agent stops asking for it.
pub fn run(error: RunError) -> Status {
    let message = error.to_string();
    match error {
        RunError::Spec(_)
        | RunError::NoSuchPool(_)
        | RunError::BadCommit(_)
        | RunError::PullRequestZero
        | RunError::PullRequestTooLarge
        | RunError::BadTicket
        | RunError::CommentTooLong
        | RunError::NotAPlanJob { .. }
        | RunError::NotAnApplyJob(_)
        | RunError::DriftKeepsNoPlan(_)
        | RunError::BadScan(_)
        | RunError::PlanFileSize
        | RunError::PlanJsonTooLarge
        | RunError::PlanJson(_)
        | RunError::Change(ChangeError::Rejected { .. }) => Status::invalid_argument(message),
        RunError::UnknownStack(_)
        | RunError::UnknownRun(_)
        | RunError::UnknownJob(_)
        | RunError::NoSavedPlan(_)
        | RunError::NoRepositoryCredentials(_) => Status::not_found(message),
        RunError::ScanFirst(_) | RunError::ScanRefused(_) => Status::failed_precondition(message),
        RunError::NotReviewable { .. }
        | RunError::AlreadyReviewed { .. }
        | RunError::AlreadyOver { .. }
        | RunError::NotLeaseHolder { .. }
        | RunError::LeaseExpired { .. }
        | RunError::LeaseWrite(_)
        | RunError::UnexpectedReplay
        | RunError::Change(ChangeError::Duplicate { .. } | ChangeError::Moved { .. }) => {
            Status::permission_denied(message)
        }
        RunError::Change(ChangeError::Store(_))
        | RunError::Refused(_)
        | RunError::Git(_)
        | RunError::Store(_)
        | RunError::SavedPlan(_) => retry(&error),
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
        ExchangeError::UnknownTarget(_) => Status::invalid_argument(error.to_string()),
        ExchangeError::SubjectTokenRefused(_) | ExchangeError::Denied(_) | ExchangeError::UpstreamRefused(_) => {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tonic::Code;

    use super::*;
    use crate::agents::JoinTokenRefusal;
    use crate::agents::ca::{CaError, CsrError};
    use crate::runs::{GitError, RunState, SavedPlanError, SpecError};
    use crate::store::StoreError;
    use crate::store::write::Refusal;

    fn change_conflict() -> ChangeError {
        ChangeError::Moved { what: "run 1 (version 1)".into() }
    }

    fn plan_json_error() -> serde_json::Error {
        serde_json::from_str::<serde_json::Value>("{").unwrap_err()
    }

    /// Every agent error, with the code agents (and operators' tools) rely on.
    #[test]
    fn each_agent_error_has_its_code() {
        let table: Vec<(AgentError, Code)> = vec![
            (AgentError::BadPoolName("Bad".into()), Code::InvalidArgument),
            (AgentError::JoinTokenTtl { max: Duration::from_secs(60) }, Code::InvalidArgument),
            (AgentError::CsrTooLarge, Code::InvalidArgument),
            (AgentError::BadHostname, Code::InvalidArgument),
            (AgentError::BadVersion, Code::InvalidArgument),
            (AgentError::Csr(CsrError::Malformed), Code::InvalidArgument),
            (AgentError::Change(ChangeError::Rejected { what: "agent a".into() }), Code::InvalidArgument),
            (AgentError::UnknownAgent("a".into()), Code::NotFound),
            (AgentError::UnknownPool("p".into()), Code::NotFound),
            (AgentError::AlreadyRevoked("a".into()), Code::FailedPrecondition),
            (AgentError::NotActive { agent: "a".into(), state: "draining".into() }, Code::FailedPrecondition),
            (AgentError::Change(change_conflict()), Code::FailedPrecondition),
            (AgentError::JoinToken(JoinTokenRefusal::NotValid), Code::Unauthenticated),
            (AgentError::JoinToken(JoinTokenRefusal::Used), Code::Unauthenticated),
            (AgentError::JoinToken(JoinTokenRefusal::Expired), Code::Unauthenticated),
            (AgentError::JoinToken(JoinTokenRefusal::OtherCa), Code::Unauthenticated),
            (AgentError::NoAgentInCertificate, Code::Unauthenticated),
            (AgentError::NotEnrolled("a".into()), Code::Unauthenticated),
            (AgentError::WrongPool { agent: "a".into(), pool: "p".into() }, Code::Unauthenticated),
            (AgentError::Revoked("a".into()), Code::PermissionDenied),
            (AgentError::Change(ChangeError::Store(StoreError::Append("disk".into()))), Code::Unavailable),
            (AgentError::Ca(CaError::Sign("no randomness".into())), Code::Unavailable),
            (AgentError::Store(StoreError::Corrupt("row".into())), Code::Unavailable),
            (AgentError::Runs(RunError::UnknownJob("j".into())), Code::Unavailable),
        ];
        for (error, code) in table {
            let described = error.to_string();
            let status = agent(error);
            assert_eq!(status.code(), code, "{described}");
            if code == Code::Unavailable {
                assert!(!status.message().contains("disk") && !status.message().contains("row"), "{status:?}");
            } else {
                assert_eq!(status.message(), described, "the agent is told the cause");
            }
        }
    }

    /// Every run error met on a job's call, with its code: a lease that moved on is
    /// `PermissionDenied`, so the job's agent stops asking.
    #[test]
    fn each_run_error_has_its_code() {
        let state = RunState::Finished;
        let table: Vec<(RunError, Code)> = vec![
            (RunError::Spec(SpecError("bad name".into())), Code::InvalidArgument),
            (RunError::NoSuchPool("p".into()), Code::InvalidArgument),
            (RunError::BadCommit("abc".into()), Code::InvalidArgument),
            (RunError::PullRequestZero, Code::InvalidArgument),
            (RunError::PullRequestTooLarge, Code::InvalidArgument),
            (RunError::BadTicket, Code::InvalidArgument),
            (RunError::CommentTooLong, Code::InvalidArgument),
            (
                RunError::NotAPlanJob { job: "j".into(), phase: keyward_proto::claims::Phase::Apply },
                Code::InvalidArgument,
            ),
            (RunError::NotAnApplyJob("j".into()), Code::InvalidArgument),
            (RunError::DriftKeepsNoPlan("r".into()), Code::InvalidArgument),
            (RunError::PlanFileSize, Code::InvalidArgument),
            (RunError::PlanJsonTooLarge, Code::InvalidArgument),
            (RunError::PlanJson(plan_json_error()), Code::InvalidArgument),
            (RunError::Change(ChangeError::Rejected { what: "x".into() }), Code::InvalidArgument),
            (RunError::UnknownStack("s".into()), Code::NotFound),
            (RunError::UnknownRun("r".into()), Code::NotFound),
            (RunError::UnknownJob("j".into()), Code::NotFound),
            (RunError::NoSavedPlan("r".into()), Code::NotFound),
            (RunError::NoRepositoryCredentials("https://git.example/r".into()), Code::NotFound),
            (RunError::NotReviewable { run: "r".into(), state }, Code::PermissionDenied),
            (RunError::AlreadyReviewed { run: "r".into(), reviewer: "bob".into() }, Code::PermissionDenied),
            (RunError::AlreadyOver { run: "r".into(), state }, Code::PermissionDenied),
            (RunError::NotLeaseHolder { job: "j".into(), agent: "a".into(), fencing_token: 2 }, Code::PermissionDenied),
            (RunError::LeaseExpired { job: "j".into(), fencing_token: 2 }, Code::PermissionDenied),
            (RunError::LeaseWrite(Refusal::Invalid { what: "lease 2".into() }), Code::PermissionDenied),
            (RunError::UnexpectedReplay, Code::PermissionDenied),
            (RunError::Change(change_conflict()), Code::PermissionDenied),
            (RunError::Change(ChangeError::Store(StoreError::Append("disk".into()))), Code::Unavailable),
            (RunError::Refused(vec!["no".into()]), Code::Unavailable),
            (RunError::Git(GitError::Timeout("r".into())), Code::Unavailable),
            (RunError::Store(StoreError::Corrupt("row".into())), Code::Unavailable),
            (RunError::SavedPlan(SavedPlanError::Digest { run: "r".into() }), Code::Unavailable),
        ];
        for (error, code) in table {
            let described = error.to_string();
            let status = run(error);
            assert_eq!(status.code(), code, "{described}");
            if code != Code::Unavailable {
                assert_eq!(status.message(), described, "the agent is told the cause");
            }
        }
    }

    /// Only a revocation ends an agent for good; every other end of a stream makes it reconnect.
    #[test]
    fn each_disconnect_has_the_code_the_agent_acts_on() {
        let table = [
            (Disconnect::Replaced, Code::Aborted, "replaced by a newer connection of this agent"),
            (Disconnect::Revoked, Code::PermissionDenied, "the agent was revoked"),
            (Disconnect::ShuttingDown, Code::Unavailable, "the broker is shutting down; reconnect"),
            (Disconnect::BadLogChunks(16), Code::InvalidArgument, "16 log chunks failed verification on this stream"),
        ];
        for (why, code, message) in table {
            let status = disconnect(&why);
            assert_eq!((status.code(), status.message()), (code, message), "{why:?}");
        }
    }

    #[test]
    fn credentials_refusals_have_their_codes() {
        let table = [
            (CredentialsError::NoTargets, Code::FailedPrecondition),
            (
                CredentialsError::Lease(RunError::LeaseExpired { job: "j".into(), fencing_token: 1 }),
                Code::PermissionDenied,
            ),
            (CredentialsError::Exchange(ExchangeError::UnknownTarget("t".into())), Code::InvalidArgument),
            (CredentialsError::Exchange(ExchangeError::Denied(vec!["no".into()])), Code::PermissionDenied),
            (CredentialsError::Exchange(ExchangeError::SubjectTokenRefused("g".into())), Code::PermissionDenied),
            (CredentialsError::Exchange(ExchangeError::UpstreamRefused("sts".into())), Code::PermissionDenied),
            (CredentialsError::Exchange(ExchangeError::Unavailable("db".into())), Code::Unavailable),
            (CredentialsError::Exchange(ExchangeError::UpstreamUnavailable("sts".into())), Code::Unavailable),
        ];
        for (error, code) in table {
            let described = error.to_string();
            assert_eq!(credentials(error).code(), code, "{described}");
        }
    }
}
