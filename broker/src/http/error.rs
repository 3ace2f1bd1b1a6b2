//! The one place where domain errors become HTTP responses.
//!
//! Clients get a status, an RFC 6749/6750/8693 error code and a safe description. Internal failures
//! (database, crypto) are logged in full here and reach the client only as `server_error`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::access::AccessError;
use crate::agents::AgentError;
use crate::audit::ChangeError;
use crate::exchange::ExchangeError;
use crate::issuance::IssueError;
use crate::keys::KeyRingError;
use crate::metrics::Refusal;
use crate::runs::contexts::ContextError;
use crate::runs::{GitError, RunError, StateError};
use crate::store::StoreError;
use crate::tokens::mint::MintError;

/// An error response: `{"error": …, "error_description": …}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    description: String,
    refusal: Refusal,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    error_description: &'a str,
}

impl ApiError {
    /// The HTTP status it answers with.
    pub(super) fn status(&self) -> StatusCode {
        self.status
    }

    /// What went wrong, for people.
    pub(super) fn description(&self) -> &str {
        &self.description
    }

    fn new(status: StatusCode, code: &'static str, description: impl Into<String>, refusal: Refusal) -> Self {
        Self { status, code, description: description.into(), refusal }
    }

    /// 400 `invalid_request`.
    pub fn invalid_request(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description, Refusal::Invalid)
    }

    /// 400 `invalid_target` (RFC 8693): no such target.
    pub fn invalid_target(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_target", description, Refusal::Audience)
    }

    /// 400 `invalid_target` (RFC 8693) for a target that exists but was refused to this subject
    /// (the broker's rules, the policy, the relying party); counted as a denial, not a typo.
    pub fn target_denied(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_target", description, Refusal::Forbidden)
    }

    /// 400 `invalid_grant` (RFC 6749): the subject token was refused.
    pub fn invalid_grant(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_grant", description, Refusal::Unauthenticated)
    }

    /// 400 `unsupported_grant_type` (RFC 6749).
    pub fn unsupported_grant_type(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "unsupported_grant_type", description, Refusal::Invalid)
    }

    /// 403 `access_denied`: the broker's rules or the policy said no.
    pub fn access_denied(description: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "access_denied", description, Refusal::Forbidden)
    }

    /// 409 `conflict`.
    pub fn conflict(description: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", description, Refusal::Invalid)
    }

    /// 401 `invalid_token`: no credentials, or credentials that are not (or no longer) valid.
    pub fn unauthenticated(description: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_token", description, Refusal::Unauthenticated)
    }

    /// 405 `invalid_request`: a method the resource does not have.
    pub fn method_not_allowed(description: impl Into<String>) -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "invalid_request", description, Refusal::Invalid)
    }

    /// 404 `not_found`.
    pub fn not_found(description: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", description, Refusal::Invalid)
    }

    /// A store failure: the database out of reach is `503` and worth a retry (fail closed,
    /// nothing done); anything else is an internal error.
    pub fn store(error: &crate::store::StoreError) -> Self {
        if error.is_unavailable() {
            tracing::warn!(%error, "the database is out of reach");
            return Self::unavailable("the broker cannot reach its database; retry");
        }
        Self::internal(error)
    }

    /// 500 `server_error`; the detail goes to the log only.
    pub fn internal(detail: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "internal error; see the broker's log",
            Refusal::Internal,
        )
    }

    /// 422 `invalid_policy`: a policy set that does not load.
    pub fn invalid_policy(description: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_policy", description, Refusal::Invalid)
    }

    /// 502 `temporarily_unavailable`: a relying party (STS, Vault) failed; nothing was issued.
    pub fn bad_gateway(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, "temporarily_unavailable", description, Refusal::Internal)
    }

    /// 503 `temporarily_unavailable`.
    pub fn unavailable(description: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", description, Refusal::Internal)
    }

    /// Which refusal metric this error counts under.
    pub fn refusal(&self) -> Refusal {
        self.refusal
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body { error: self.code, error_description: &self.description };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert("www-authenticate", axum::http::HeaderValue::from_static("Bearer realm=\"keyward\""));
        }
        response
    }
}

impl From<AccessError> for ApiError {
    fn from(error: AccessError) -> Self {
        match error {
            AccessError::Unauthenticated => {
                Self::new(StatusCode::UNAUTHORIZED, "invalid_token", error.to_string(), Refusal::Unauthenticated)
            }
            AccessError::InsufficientScope { .. } => {
                Self::new(StatusCode::FORBIDDEN, "insufficient_scope", error.to_string(), Refusal::Forbidden)
            }
            AccessError::UnknownScope(_) | AccessError::InvalidName(_) => Self::invalid_request(error.to_string()),
            AccessError::Store(StoreError::Conflict(what)) => {
                Self::new(StatusCode::CONFLICT, "conflict", format!("{what} already exists"), Refusal::Invalid)
            }
            AccessError::Store(e) => {
                // The database is unreachable or failing: a retry may work, and the caller's
                // credentials are not the problem.
                tracing::error!(error = %e, "cannot check the API token");
                Self::unavailable("the broker cannot reach its database; retry")
            }
        }
    }
}

impl From<MintError> for ApiError {
    fn from(error: MintError) -> Self {
        match error {
            MintError::AudienceNotAllowed(_) => {
                Self::new(StatusCode::BAD_REQUEST, "invalid_target", error.to_string(), Refusal::Audience)
            }
            MintError::TtlTooLong { .. } => {
                Self::new(StatusCode::BAD_REQUEST, "invalid_request", error.to_string(), Refusal::Ttl)
            }
            MintError::InvalidField { .. } => Self::invalid_request(error.to_string()),
            MintError::Signing(e) => Self::internal(&e),
        }
    }
}

impl From<IssueError> for ApiError {
    fn from(error: IssueError) -> Self {
        match error {
            IssueError::Mint(e) => e.into(),
            IssueError::Record(e) => {
                tracing::error!(error = %e, "token discarded: it could not be recorded");
                Self::unavailable("the token could not be recorded durably, so it was not issued")
            }
            // Only entries that claim a subject token can be replays; operator minting claims none.
            IssueError::Replayed => Self::unavailable("the token was not issued; retry"),
            IssueError::Refused(refusal) => Self::conflict(format!("the token was not issued: {refusal}")),
        }
    }
}

impl From<ChangeError> for ApiError {
    fn from(error: ChangeError) -> Self {
        match error {
            ChangeError::Duplicate { .. } | ChangeError::Moved { .. } => Self::conflict(error.to_string()),
            ChangeError::Rejected { .. } => Self::invalid_request(error.to_string()),
            ChangeError::Store(StoreError::Append(e)) => {
                tracing::error!(error = %e, "a change could not be recorded, so it was not made");
                Self::unavailable("the change could not be recorded durably, so it was not made; retry")
            }
            ChangeError::Store(e) => Self::store(&e),
        }
    }
}

impl From<ContextError> for ApiError {
    fn from(error: ContextError) -> Self {
        let message = error.to_string();
        match error {
            ContextError::Invalid(_) => Self::invalid_request(message),
            ContextError::UnknownContext(_) | ContextError::UnknownVariable { .. } => Self::not_found(message),
            ContextError::Run(run) => run.into(),
        }
    }
}

impl From<StateError> for ApiError {
    fn from(error: StateError) -> Self {
        let message = error.to_string();
        match error {
            StateError::Malformed(_) | StateError::TooLarge(_) | StateError::BadLockInfo => {
                Self::invalid_request(message)
            }
            StateError::NotManaged(_) | StateError::NoSuchVersion { .. } | StateError::NoState(_) => {
                Self::not_found(message)
            }
            StateError::ForeignLineage { .. }
            | StateError::OlderSerial { .. }
            | StateError::SerialReused { .. }
            | StateError::Locked { .. }
            | StateError::NotLockHolder { .. } => Self::conflict(message),
            StateError::ReadOnlyPhase(_) | StateError::OtherStack { .. } => Self::access_denied(message),
            StateError::BadJobCredentials => Self::unauthenticated(message),
            StateError::Unseal { .. } | StateError::Digest { .. } => Self::internal(&message),
            StateError::Run(run) => run.into(),
            StateError::Change(change) => change.into(),
            StateError::Store(StoreError::Append(e)) => {
                tracing::error!(error = %e, "a state change could not be recorded, so it was not made");
                Self::unavailable("the change could not be recorded durably, so it was not made; retry")
            }
            StateError::Store(e) => Self::store(&e),
        }
    }
}

impl From<RunError> for ApiError {
    fn from(error: RunError) -> Self {
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
            | RunError::PlanJson(_) => Self::invalid_request(message),
            RunError::UnknownStack(_)
            | RunError::UnknownRun(_)
            | RunError::UnknownJob(_)
            | RunError::NoSavedPlan(_)
            | RunError::NoRepositoryCredentials(_) => Self::not_found(message),
            RunError::ScanFirst(_) | RunError::ScanRefused(_) => Self::conflict(message),
            RunError::NotReviewable { .. }
            | RunError::AlreadyReviewed { .. }
            | RunError::AlreadyOver { .. }
            | RunError::NotLeaseHolder { .. }
            | RunError::LeaseExpired { .. }
            | RunError::LeaseWrite(_)
            | RunError::UnexpectedReplay => Self::conflict(message),
            RunError::Change(change) => change.into(),
            RunError::Refused(_) => Self::access_denied(message),
            RunError::Git(GitError::Spawn(e)) => Self::internal(&e),
            RunError::Git(GitError::Timeout(_)) => Self::unavailable(message),
            RunError::Git(_) => Self::invalid_request(message),
            RunError::Store(StoreError::Append(e)) => {
                tracing::error!(error = %e, "a run change could not be recorded, so it was not made");
                Self::unavailable("the change could not be recorded durably, so it was not made; retry")
            }
            RunError::Store(e) => Self::store(&e),
            // Only the agent's FetchPlan opens a saved plan; never reached over HTTP.
            RunError::SavedPlan(e) => Self::internal(&e),
        }
    }
}

impl From<AgentError> for ApiError {
    fn from(error: AgentError) -> Self {
        let message = error.to_string();
        match error {
            AgentError::BadPoolName(_)
            | AgentError::JoinTokenTtl { .. }
            | AgentError::CsrTooLarge
            | AgentError::BadHostname
            | AgentError::BadVersion
            | AgentError::Csr(_) => Self::invalid_request(message),
            AgentError::UnknownAgent(_) | AgentError::UnknownPool(_) => Self::not_found(message),
            AgentError::AlreadyRevoked(_) | AgentError::NotActive { .. } => Self::conflict(message),
            AgentError::Change(change) => change.into(),
            AgentError::JoinToken(_)
            | AgentError::NoAgentInCertificate
            | AgentError::NotEnrolled(_)
            | AgentError::WrongPool { .. }
            | AgentError::Revoked(_) => Self::access_denied(message),
            AgentError::Runs(runs) => runs.into(),
            AgentError::Store(StoreError::Append(e)) => {
                tracing::error!(error = %e, "an agent change could not be recorded, so it was not made");
                Self::unavailable("the change could not be recorded durably, so it was not made; retry")
            }
            AgentError::Store(e) => Self::store(&e),
            AgentError::Ca(e) => Self::internal(&e),
        }
    }
}

impl From<KeyRingError> for ApiError {
    fn from(error: KeyRingError) -> Self {
        match error {
            KeyRingError::TooSoon { .. } => {
                Self::new(StatusCode::CONFLICT, "too_soon", error.to_string(), Refusal::Invalid)
            }
            KeyRingError::Store(store) => Self::store(&store),
            other => Self::internal(&other),
        }
    }
}
impl From<ExchangeError> for ApiError {
    fn from(error: ExchangeError) -> Self {
        match &error {
            ExchangeError::UnknownTarget(_) => Self::invalid_target(error.to_string()),
            ExchangeError::SubjectTokenRefused(_) => Self::invalid_grant(error.to_string()),
            // RFC 8693 §2.2.2: a target the server will not issue for is `invalid_target`, whether
            // the broker's rules, the policy or the relying party said no; the reason goes in
            // `error_description`. OAuth has no `access_denied` at the token endpoint.
            ExchangeError::Denied(_) | ExchangeError::UpstreamRefused(_) => Self::target_denied(error.to_string()),
            ExchangeError::Unavailable(_) => Self::unavailable(error.to_string()),
            ExchangeError::UpstreamUnavailable(_) => Self::bad_gateway(error.to_string()),
        }
    }
}

impl From<crate::sso::SsoError> for ApiError {
    fn from(error: crate::sso::SsoError) -> Self {
        use crate::sso::SsoError;
        match error {
            SsoError::NotConfigured => Self::not_found(error.to_string()),
            SsoError::Path(_) | SsoError::UnknownState | SsoError::LoginExpired | SsoError::Grant => {
                Self::invalid_request(error.to_string())
            }
            SsoError::ProviderRefused(_) | SsoError::Unverified(_) | SsoError::Refused { .. } => {
                Self::access_denied(error.to_string())
            }
            SsoError::Provider(_) => Self::bad_gateway(error.to_string()),
            SsoError::Store(e) => Self::store(&e),
        }
    }
}

impl From<crate::console_sessions::ConsoleSessionError> for ApiError {
    fn from(error: crate::console_sessions::ConsoleSessionError) -> Self {
        use crate::console_sessions::ConsoleSessionError;
        match error {
            ConsoleSessionError::NotAToken => Self::invalid_request(error.to_string()),
            ConsoleSessionError::Link => Self::unauthenticated(error.to_string()),
            ConsoleSessionError::Access(access) => access.into(),
            ConsoleSessionError::Store(e) => Self::store(&e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agents::JoinTokenRefusal;
    use crate::runs::RunState;

    fn answer(error: impl Into<ApiError>) -> (StatusCode, &'static str, String) {
        let error = error.into();
        (error.status, error.code, error.description)
    }

    /// The causes keep the statuses and messages HTTP clients saw when they were strings.
    #[test]
    fn run_and_agent_causes_keep_their_http_statuses() {
        let conflict = || ChangeError::Duplicate { what: "stack `network`".into() };
        assert_eq!(answer(RunError::Change(conflict())), (StatusCode::CONFLICT, "conflict", conflict().to_string()));
        assert_eq!(answer(AgentError::Change(conflict())).0, StatusCode::CONFLICT);
        assert_eq!(answer(RunError::Change(ChangeError::Rejected { what: "x".into() })).0, StatusCode::BAD_REQUEST);
        let table: Vec<(ApiError, StatusCode, &str)> = vec![
            (RunError::BadTicket.into(), StatusCode::BAD_REQUEST, "invalid ticket: 1-128 printable characters"),
            (
                RunError::NoSuchPool("p".into()).into(),
                StatusCode::BAD_REQUEST,
                "unknown pool `p`; create it with `keyward pool create p`",
            ),
            (RunError::UnknownRun("r".into()).into(), StatusCode::NOT_FOUND, "no run with ID `r`"),
            (
                RunError::NotReviewable { run: "r".into(), state: RunState::Applying }.into(),
                StatusCode::CONFLICT,
                "run r is applying; reviews are taken only while it is planned",
            ),
            (RunError::Refused(vec!["a".into(), "b".into()]).into(), StatusCode::FORBIDDEN, "refused by policy: a; b"),
            (
                AgentError::UnknownPool("p".into()).into(),
                StatusCode::NOT_FOUND,
                "no pool named `p`; create it with `keyward pool create p`",
            ),
            (AgentError::AlreadyRevoked("a".into()).into(), StatusCode::CONFLICT, "agent a is already revoked"),
            (
                AgentError::JoinToken(JoinTokenRefusal::Used).into(),
                StatusCode::FORBIDDEN,
                "the join token was already used",
            ),
            (AgentError::Runs(RunError::UnknownJob("j".into())).into(), StatusCode::NOT_FOUND, "no job with ID `j`"),
        ];
        for (error, status, description) in table {
            assert_eq!((error.status, error.description.as_str()), (status, description));
        }
        let unavailable = answer(RunError::Change(ChangeError::Store(StoreError::Append("disk full".into()))));
        assert_eq!(unavailable.0, StatusCode::SERVICE_UNAVAILABLE);
        assert!(!unavailable.2.contains("disk"), "{unavailable:?}");
    }

    /// The database out of reach fails closed with a retryable 503; a bad row is still a 500.
    #[test]
    fn an_unreachable_database_is_503_and_a_bad_row_500() {
        for lost in [StoreError::Query(sqlx::Error::PoolTimedOut), StoreError::Query(sqlx::Error::PoolClosed)] {
            assert_eq!(answer(RunError::Store(lost)).0, StatusCode::SERVICE_UNAVAILABLE);
        }
        let io = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "expected to read 5 bytes, got 0 bytes at EOF");
        assert_eq!(ApiError::store(&StoreError::Query(sqlx::Error::Io(io))).status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            answer(RunError::Store(StoreError::Corrupt("runs.state".into()))).0,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    /// Every cause that carries a store error keeps the 503 of a database out of reach.
    #[test]
    fn every_store_cause_fails_closed_with_503() {
        let lost = || StoreError::Query(sqlx::Error::PoolTimedOut);
        let answers: Vec<(&str, ApiError)> = vec![
            ("change", ChangeError::Store(lost()).into()),
            ("state", StateError::Store(lost()).into()),
            ("run", RunError::Store(lost()).into()),
            ("agent", AgentError::Store(lost()).into()),
            ("key ring", KeyRingError::Store(lost()).into()),
            ("sso", crate::sso::SsoError::Store(lost()).into()),
            ("console session", crate::console_sessions::ConsoleSessionError::Store(lost()).into()),
            ("space", crate::spaces::SpaceError::Store(lost()).into()),
            ("audit tree", crate::audit::tree::TreeError::Store(lost()).into()),
        ];
        for (cause, error) in answers {
            assert_eq!(error.status, StatusCode::SERVICE_UNAVAILABLE, "{cause}");
            assert_eq!(error.code, "temporarily_unavailable", "{cause}");
        }
    }
}
