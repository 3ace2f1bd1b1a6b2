//! What an audit entry says: a stable `kind`, when, the context chain (run → stack, repository,
//! commit, PR, ticket → who triggered and approved → which request), and kind-specific details.
//!
//! Entries hold identifiers, never secrets: an AWS access key ID but not the secret key, a Vault
//! accessor but not the token, a token's `jti` but not the token.

use std::fmt::Write as _;

use keyward_proto::claims::RunChain;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::canonical::{CanonicalError, Members, to_canonical, write_map};
use super::merkle::{Hash, leaf_hash};

/// Stable entry kinds (DESIGN.md §4). Tools match on their names; never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A run token or target-audience token was signed and handed out.
    TokenMinted,
    /// The policy (and the broker's own rules) allowed a credential request.
    CredentialsAllowed,
    /// A credential request was refused (bad token, policy, relying party); with reasons.
    CredentialsDenied,
    /// Credentials were issued: identifiers of what the caller received.
    CredentialsIssued,
    /// Entries below a sequence number were exported and pruned (their tree nodes stay).
    AuditPruned,
    /// A policy set was loaded (at start, on SIGHUP, on request): its digest and files.
    PolicyLoaded,
    /// A policy set was refused (it did not compile); the last good one stayed.
    PolicyLoadFailed,
    /// The signing keys rotated: which key retired, which signs now, which is next.
    SigningKeyRotated,
    /// A stack was created: its repository, branch, pool and targets.
    StackCreated,
    /// A stack was updated: each field that changed, from what to what.
    StackUpdated,
    /// A run was submitted and allowed by `keyward.run`; its plan job is queued.
    RunCreated,
    /// A run submission was refused by `keyward.run`, with the policy's reasons; nothing queued.
    RunRefused,
    /// Someone approved or rejected a run, and what `keyward.approval` concluded.
    RunReviewed,
    /// A run moved from one state to another.
    RunStateChanged,
    /// An agent took a job: which agent, which lease (fencing token), until when.
    JobLeased,
    /// A job ended: success or the error, reported by the lease holder.
    JobFinished,
    /// A job's lease ended without a report: expired, its agent revoked, or never delivered; what became of the job.
    JobLeaseEnded,
    /// A worker pool was created.
    PoolCreated,
    /// A one-time join token for a pool was issued (its ID and expiry, never the token).
    JoinTokenCreated,
    /// An agent enrolled with a join token and received its first certificate.
    AgentEnrolled,
    /// An enrollment was refused (unknown, used or expired token; bad CSR), with why.
    AgentEnrollRefused,
    /// An agent renewed its certificate.
    AgentRenewed,
    /// An agent was told to drain: finish its jobs, take no new ones.
    AgentDraining,
    /// An agent was revoked: its stream cut, its leases ended, its certificate refused.
    AgentRevoked,
    /// A job's log chunk failed verification (signature, digest, chain, sequence, job binding)
    /// and was not stored; with why.
    LogRejected,
    /// A plan job submitted its saved plan: its SHA-256, what it changes, and the
    /// `keyward.plan` policy's deny and warn messages.
    PlanEvaluated,
    /// The agent holding a job was given the credentials of its private repository, for the
    /// checkout: which prefix and user name (never the password), to which lease.
    SourceCredentialsIssued,
    /// A version of a stack's Terraform state was kept: stack, version, serial, lineage,
    /// SHA-256, who wrote it (run and job, or an operator's push or rollback). Never the content.
    StateWritten,
    /// An apply job locked its stack's state (Terraform's lock ID and operation).
    StateLocked,
    /// A stack's state lock was released: by the job that held it, or forced by an operator.
    StateUnlocked,
    /// An operator read a version of a stack's state (`keyward state pull`): state holds secrets.
    StatePulled,
    /// A notification was delivered: which, for which event and entry, after how many attempts.
    NotificationDelivered,
    /// A notification failed for good: which, for which event and entry, and the last error.
    NotificationFailed,
    /// A drift check changed its stack's drift state: from, to, whether the stack was drifted
    /// before, and the drift found.
    StackDriftStateChanged,
    /// A context or a variable changed: created, deleted, attached, detached, a variable set
    /// (name, version, whether secret; never the value) or unset.
    ContextChanged,
    /// A job's lease holder was given its variables: names, versions, where from; never values.
    JobVariablesIssued,
    /// A plan job's security scan was judged by `keyward.scan` before `init`: each scanner's
    /// counts, the failed check IDs, and the policy's deny and warn messages.
    ScanEvaluated,
    /// A person signed in with the identity provider: issuer, subject, name, email, groups,
    /// `amr`, browser or CLI, and the session's hash prefix (never the session).
    PersonSignedIn,
    /// A person signed out: their session (hash prefix) was revoked.
    PersonSignedOut,
    /// A sign-in was refused after the provider's signature verified: who, and why (never a
    /// code or a token).
    PersonSignInFailed,
    /// `keyward login` redeemed its one-time grant for a CLI token: who, and the token's hash
    /// prefix and expiry.
    CliTokenIssued,
    /// An API token asked for a one-time console sign-in link (`keyward console`): the token,
    /// the link's session ID and expiry (never the link).
    ConsoleLinkCreated,
    /// A console sign-in link was redeemed for a browser session acting as its API token: the
    /// token, the session ID and expiry (never the session).
    ConsoleSignedIn,
    /// A console session acting as an API token was signed out.
    ConsoleSignedOut,
    /// A space was created: its parent.
    SpaceCreated,
    /// An empty space was deleted.
    SpaceDeleted,
    /// A role in a space was bound to an identity provider's group or a subject.
    RoleBound,
    /// A role binding was removed.
    RoleUnbound,
    /// An API token was created: its name, space and role, who created it (never the secret).
    ApiTokenCreated,
    /// An API token was revoked: its name, who revoked it.
    ApiTokenRevoked,
    /// A signed GitHub webhook delivery was accepted and queued: its event, delivery ID,
    /// repository, pull request, head SHA and sender (never the webhook secret).
    VcsDeliveryAccepted,
    /// A queued delivery was processed: per stack it touched, what `keyward.push` decided and
    /// the run it started, if any.
    VcsDeliveryProcessed,
    /// A queued delivery could not be processed, for good: why (an unknown installation, a
    /// payload missing what its event needs, GitHub refusing after every retry).
    VcsDeliveryFailed,
    /// Reporting a run back (its commit status, its pull request comment) failed after every
    /// retry; the run itself was not affected.
    VcsReportFailed,
}

impl Kind {
    /// The name entries carry.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TokenMinted => kinds::TOKEN_MINTED,
            Self::CredentialsAllowed => kinds::CREDENTIALS_ALLOWED,
            Self::CredentialsDenied => kinds::CREDENTIALS_DENIED,
            Self::CredentialsIssued => kinds::CREDENTIALS_ISSUED,
            Self::AuditPruned => kinds::AUDIT_PRUNED,
            Self::PolicyLoaded => kinds::POLICY_LOADED,
            Self::PolicyLoadFailed => kinds::POLICY_LOAD_FAILED,
            Self::SigningKeyRotated => kinds::SIGNING_KEY_ROTATED,
            Self::StackCreated => kinds::STACK_CREATED,
            Self::StackUpdated => kinds::STACK_UPDATED,
            Self::RunCreated => kinds::RUN_CREATED,
            Self::RunRefused => kinds::RUN_REFUSED,
            Self::RunReviewed => kinds::RUN_REVIEWED,
            Self::RunStateChanged => kinds::RUN_STATE_CHANGED,
            Self::JobLeased => kinds::JOB_LEASED,
            Self::JobFinished => kinds::JOB_FINISHED,
            Self::JobLeaseEnded => kinds::JOB_LEASE_ENDED,
            Self::PoolCreated => kinds::POOL_CREATED,
            Self::JoinTokenCreated => kinds::JOIN_TOKEN_CREATED,
            Self::AgentEnrolled => kinds::AGENT_ENROLLED,
            Self::AgentEnrollRefused => kinds::AGENT_ENROLL_REFUSED,
            Self::AgentRenewed => kinds::AGENT_RENEWED,
            Self::AgentDraining => kinds::AGENT_DRAINING,
            Self::AgentRevoked => kinds::AGENT_REVOKED,
            Self::LogRejected => kinds::LOG_REJECTED,
            Self::PlanEvaluated => kinds::PLAN_EVALUATED,
            Self::SourceCredentialsIssued => kinds::SOURCE_CREDENTIALS_ISSUED,
            Self::StateWritten => kinds::STATE_WRITTEN,
            Self::StateLocked => kinds::STATE_LOCKED,
            Self::StateUnlocked => kinds::STATE_UNLOCKED,
            Self::StatePulled => kinds::STATE_PULLED,
            Self::NotificationDelivered => kinds::NOTIFICATION_DELIVERED,
            Self::NotificationFailed => kinds::NOTIFICATION_FAILED,
            Self::StackDriftStateChanged => kinds::STACK_DRIFT_STATE_CHANGED,
            Self::ContextChanged => kinds::CONTEXT_CHANGED,
            Self::JobVariablesIssued => kinds::JOB_VARIABLES_ISSUED,
            Self::ScanEvaluated => kinds::SCAN_EVALUATED,
            Self::PersonSignedIn => kinds::PERSON_SIGNED_IN,
            Self::PersonSignedOut => kinds::PERSON_SIGNED_OUT,
            Self::PersonSignInFailed => kinds::PERSON_SIGN_IN_FAILED,
            Self::CliTokenIssued => kinds::CLI_TOKEN_ISSUED,
            Self::ConsoleLinkCreated => kinds::CONSOLE_LINK_CREATED,
            Self::ConsoleSignedIn => kinds::CONSOLE_SIGNED_IN,
            Self::ConsoleSignedOut => kinds::CONSOLE_SIGNED_OUT,
            Self::SpaceCreated => kinds::SPACE_CREATED,
            Self::SpaceDeleted => kinds::SPACE_DELETED,
            Self::RoleBound => kinds::ROLE_BOUND,
            Self::RoleUnbound => kinds::ROLE_UNBOUND,
            Self::ApiTokenCreated => kinds::API_TOKEN_CREATED,
            Self::ApiTokenRevoked => kinds::API_TOKEN_REVOKED,
            Self::VcsDeliveryAccepted => kinds::VCS_DELIVERY_ACCEPTED,
            Self::VcsDeliveryProcessed => kinds::VCS_DELIVERY_PROCESSED,
            Self::VcsDeliveryFailed => kinds::VCS_DELIVERY_FAILED,
            Self::VcsReportFailed => kinds::VCS_REPORT_FAILED,
        }
    }
}

/// The names of the [`Kind`]s, for queries and tools (`keyward audit tail --kind`).
pub mod kinds {
    /// [`super::Kind::TokenMinted`].
    pub const TOKEN_MINTED: &str = "token.minted";
    /// [`super::Kind::CredentialsAllowed`].
    pub const CREDENTIALS_ALLOWED: &str = "credentials.allowed";
    /// [`super::Kind::CredentialsDenied`].
    pub const CREDENTIALS_DENIED: &str = "credentials.denied";
    /// [`super::Kind::CredentialsIssued`].
    pub const CREDENTIALS_ISSUED: &str = "credentials.issued";
    /// [`super::Kind::AuditPruned`].
    pub const AUDIT_PRUNED: &str = "audit.pruned";
    /// [`super::Kind::PolicyLoaded`].
    pub const POLICY_LOADED: &str = "policy.loaded";
    /// [`super::Kind::PolicyLoadFailed`].
    pub const POLICY_LOAD_FAILED: &str = "policy.load_failed";
    /// [`super::Kind::SigningKeyRotated`].
    pub const SIGNING_KEY_ROTATED: &str = "signing_key.rotated";
    /// [`super::Kind::StackCreated`].
    pub const STACK_CREATED: &str = "stack.created";
    /// [`super::Kind::StackUpdated`].
    pub const STACK_UPDATED: &str = "stack.updated";
    /// [`super::Kind::RunCreated`].
    pub const RUN_CREATED: &str = "run.created";
    /// [`super::Kind::RunRefused`].
    pub const RUN_REFUSED: &str = "run.refused";
    /// [`super::Kind::RunReviewed`].
    pub const RUN_REVIEWED: &str = "run.reviewed";
    /// [`super::Kind::RunStateChanged`].
    pub const RUN_STATE_CHANGED: &str = "run.state_changed";
    /// [`super::Kind::JobLeased`].
    pub const JOB_LEASED: &str = "job.leased";
    /// [`super::Kind::JobFinished`].
    pub const JOB_FINISHED: &str = "job.finished";
    /// [`super::Kind::JobLeaseEnded`].
    pub const JOB_LEASE_ENDED: &str = "job.lease_ended";
    /// [`super::Kind::PoolCreated`].
    pub const POOL_CREATED: &str = "pool.created";
    /// [`super::Kind::JoinTokenCreated`].
    pub const JOIN_TOKEN_CREATED: &str = "join_token.created";
    /// [`super::Kind::AgentEnrolled`].
    pub const AGENT_ENROLLED: &str = "agent.enrolled";
    /// [`super::Kind::AgentEnrollRefused`].
    pub const AGENT_ENROLL_REFUSED: &str = "agent.enroll_refused";
    /// [`super::Kind::AgentRenewed`].
    pub const AGENT_RENEWED: &str = "agent.renewed";
    /// [`super::Kind::AgentDraining`].
    pub const AGENT_DRAINING: &str = "agent.draining";
    /// [`super::Kind::AgentRevoked`].
    pub const AGENT_REVOKED: &str = "agent.revoked";
    /// [`super::Kind::LogRejected`].
    pub const LOG_REJECTED: &str = "log.rejected";
    /// [`super::Kind::PlanEvaluated`].
    pub const PLAN_EVALUATED: &str = "plan.evaluated";
    /// [`super::Kind::SourceCredentialsIssued`].
    pub const SOURCE_CREDENTIALS_ISSUED: &str = "source.credentials_issued";
    /// [`super::Kind::StateWritten`].
    pub const STATE_WRITTEN: &str = "state.written";
    /// [`super::Kind::StateLocked`].
    pub const STATE_LOCKED: &str = "state.locked";
    /// [`super::Kind::StateUnlocked`].
    pub const STATE_UNLOCKED: &str = "state.unlocked";
    /// [`super::Kind::StatePulled`].
    pub const STATE_PULLED: &str = "state.pulled";
    /// [`super::Kind::NotificationDelivered`].
    pub const NOTIFICATION_DELIVERED: &str = "notification.delivered";
    /// [`super::Kind::NotificationFailed`].
    pub const NOTIFICATION_FAILED: &str = "notification.failed";
    /// [`super::Kind::StackDriftStateChanged`].
    pub const STACK_DRIFT_STATE_CHANGED: &str = "stack.drift_state_changed";
    /// [`super::Kind::ContextChanged`].
    pub const CONTEXT_CHANGED: &str = "context.changed";
    /// [`super::Kind::JobVariablesIssued`].
    pub const JOB_VARIABLES_ISSUED: &str = "job.variables_issued";
    /// [`super::Kind::ScanEvaluated`].
    pub const SCAN_EVALUATED: &str = "scan.evaluated";
    /// [`super::Kind::PersonSignedIn`].
    pub const PERSON_SIGNED_IN: &str = "person.signed_in";
    /// [`super::Kind::PersonSignedOut`].
    pub const PERSON_SIGNED_OUT: &str = "person.signed_out";
    /// [`super::Kind::PersonSignInFailed`].
    pub const PERSON_SIGN_IN_FAILED: &str = "person.sign_in_failed";
    /// [`super::Kind::CliTokenIssued`].
    pub const CLI_TOKEN_ISSUED: &str = "person.cli_token_issued";
    /// [`super::Kind::SpaceCreated`].
    pub const SPACE_CREATED: &str = "space.created";
    /// [`super::Kind::SpaceDeleted`].
    pub const SPACE_DELETED: &str = "space.deleted";
    /// [`super::Kind::RoleBound`].
    pub const ROLE_BOUND: &str = "role.bound";
    /// [`super::Kind::RoleUnbound`].
    pub const ROLE_UNBOUND: &str = "role.unbound";
    /// [`super::Kind::ApiTokenCreated`].
    pub const API_TOKEN_CREATED: &str = "api_token.created";
    /// [`super::Kind::ConsoleLinkCreated`].
    pub const CONSOLE_LINK_CREATED: &str = "console.link_created";
    /// [`super::Kind::ConsoleSignedIn`].
    pub const CONSOLE_SIGNED_IN: &str = "console.signed_in";
    /// [`super::Kind::ConsoleSignedOut`].
    pub const CONSOLE_SIGNED_OUT: &str = "console.signed_out";
    /// [`super::Kind::ApiTokenRevoked`].
    pub const API_TOKEN_REVOKED: &str = "api_token.revoked";
    /// [`super::Kind::VcsDeliveryAccepted`].
    pub const VCS_DELIVERY_ACCEPTED: &str = "vcs.delivery_accepted";
    /// [`super::Kind::VcsDeliveryProcessed`].
    pub const VCS_DELIVERY_PROCESSED: &str = "vcs.delivery_processed";
    /// [`super::Kind::VcsDeliveryFailed`].
    pub const VCS_DELIVERY_FAILED: &str = "vcs.delivery_failed";
    /// [`super::Kind::VcsReportFailed`].
    pub const VCS_REPORT_FAILED: &str = "vcs.report_failed";
}

/// Who and what an event concerns. Every field is optional: an event records what it knows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    /// Run ID (Keyward run, or the CI system's run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// Stack ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack_id: Option<String>,
    /// `plan` or `apply`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Repository URL or slug.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// Commit SHA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_sha: Option<String>,
    /// Git ref.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    /// Pull request number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_request: Option<u64>,
    /// Change ticket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
    /// Where the pull request and ticket were observed (`github`); absent: the submitter's word.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_request_source: Option<String>,
    /// Who started the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub triggered_by: Option<String>,
    /// Whose approval counted (recorded reviews, never the run's author).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approved_by: Vec<String>,
    /// For a token minted on request: the operator whose word its run context rests on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asserted_by: Option<String>,
    /// Who asked: an API token's name, or `exchange:<issuer>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// The subject token's issuer, when the request carried one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_issuer: Option<String>,
    /// The subject token's `jti` (or replay key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_jti: Option<String>,
    /// The credential target, `<type>:<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The HTTP request that caused the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The peer address of that request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_addr: Option<String>,
}

impl Context {
    /// Writes this context's canonical JSON: the bytes that serializing it to a [`Value`] and
    /// [`to_canonical`] give, without building the tree. The fields in canonical order, by their
    /// serialized names (`git_ref` is `ref`), each left out where serde skips it (`None`, no
    /// approvers). The test `direct_encoding_equals_the_value_trees` holds this to the derived
    /// `Serialize`, attributes included.
    fn write_canonical(&self, out: &mut String) {
        // Every field by name: a field added to the struct but not here fails to compile.
        let Self {
            run_id,
            stack_id,
            phase,
            repository,
            commit_sha,
            git_ref,
            pull_request,
            ticket,
            pull_request_source,
            triggered_by,
            approved_by,
            asserted_by,
            actor,
            subject_issuer,
            subject_jti,
            target,
            request_id,
            remote_addr,
        } = self;
        let mut members = Members::open(out);
        members.string_if_some("actor", actor.as_deref());
        members.strings_if_any("approved_by", approved_by);
        members.string_if_some("asserted_by", asserted_by.as_deref());
        members.string_if_some("commit_sha", commit_sha.as_deref());
        members.string_if_some("phase", phase.as_deref());
        members.unsigned_if_some("pull_request", *pull_request);
        members.string_if_some("pull_request_source", pull_request_source.as_deref());
        members.string_if_some("ref", git_ref.as_deref());
        members.string_if_some("remote_addr", remote_addr.as_deref());
        members.string_if_some("repository", repository.as_deref());
        members.string_if_some("request_id", request_id.as_deref());
        members.string_if_some("run_id", run_id.as_deref());
        members.string_if_some("stack_id", stack_id.as_deref());
        members.string_if_some("subject_issuer", subject_issuer.as_deref());
        members.string_if_some("subject_jti", subject_jti.as_deref());
        members.string_if_some("target", target.as_deref());
        members.string_if_some("ticket", ticket.as_deref());
        members.string_if_some("triggered_by", triggered_by.as_deref());
        members.close();
    }

    /// This context, about `run`: the run's chain of custody replaces the run fields (`run_id`
    /// … `asserted_by`; the stack's name is not kept, its ID is), who asked and which request
    /// stay. The one way a [`RunChain`] becomes entry context; the fields stay this struct's own
    /// (not a flattened `RunChain`), since entries are read with `deny_unknown_fields`.
    pub fn with_run(self, run: &RunChain) -> Self {
        Self {
            run_id: Some(run.run_id.clone()),
            stack_id: Some(run.stack_id.clone()),
            phase: Some(run.phase.as_str().to_owned()),
            repository: run.repository.clone(),
            commit_sha: run.commit_sha.clone(),
            git_ref: run.git_ref.clone(),
            pull_request: run.pull_request,
            ticket: run.ticket.clone(),
            pull_request_source: run.pull_request_source.clone(),
            triggered_by: run.triggered_by.clone(),
            approved_by: run.approved_by.clone(),
            asserted_by: run.asserted_by.clone(),
            ..self
        }
    }
}

/// An event to append: the entry minus its sequence number, which the log assigns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// What happened.
    pub kind: Kind,
    /// Seconds since the epoch.
    pub at: i64,
    /// The context chain.
    pub context: Context,
    /// Kind-specific, non-secret details (a JSON object).
    pub details: Map<String, Value>,
    /// Extra lookup keys for `audit trace` beyond those derived from the context
    /// (`akid:<access key id>`, `session:<role session name>`, `jti:<minted jti>`…).
    pub refs: Vec<String>,
}

impl AuditEvent {
    /// An event with no details yet.
    pub fn new(kind: Kind, at: i64, context: Context) -> Self {
        Self { kind, at, context, details: Map::new(), refs: Vec::new() }
    }

    /// Adds a detail.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }

    /// Adds a lookup key (`prefix:value`).
    pub fn with_ref(mut self, prefix: &str, value: &str) -> Self {
        self.refs.push(format!("{prefix}:{value}"));
        self
    }

    /// Every lookup key: the context's and the explicit ones, deduplicated.
    pub fn all_refs(&self) -> Vec<String> {
        let c = &self.context;
        let mut refs: Vec<String> = [("run", &c.run_id), ("jti", &c.subject_jti)]
            .into_iter()
            .filter_map(|(prefix, value)| value.as_ref().map(|v| format!("{prefix}:{v}")))
            .chain(self.refs.iter().cloned())
            .collect();
        refs.sort();
        refs.dedup();
        refs
    }

    /// Encodes the event once, off the writer's path: everything of the entry but its sequence
    /// number, which the log assigns at commit. Fails for values with no canonical form (floats).
    pub fn prepare(&self) -> Result<PreparedEvent, CanonicalError> {
        // Written straight into the output, the entry's members in canonical order; `seq` sorts
        // after every other key of an entry, so the canonical form with it is this prefix, then
        // `,"seq":N}`: the object is left open.
        let mut prefix = String::with_capacity(1024);
        let mut members = Members::open(&mut prefix);
        members.signed("at", self.at);
        self.context.write_canonical(members.key("context"));
        write_map(&self.details, members.key("details"))?;
        members.string("kind", self.kind.as_str());
        Ok(PreparedEvent { kind: self.kind.as_str(), at: self.at, refs: self.all_refs(), prefix })
    }

    /// The entry this event becomes at `seq`.
    pub fn at_seq(&self, seq: u64) -> Entry {
        Entry {
            seq,
            at: self.at,
            kind: self.kind.as_str().to_owned(),
            context: self.context.clone(),
            details: self.details.clone(),
        }
    }
}

/// An event encoded for appending; see [`AuditEvent::prepare`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedEvent {
    /// Kind.
    pub kind: &'static str,
    /// Seconds since the epoch.
    pub at: i64,
    /// Lookup keys.
    pub refs: Vec<String>,
    /// The canonical JSON without `,"seq":N}`.
    prefix: String,
}

impl PreparedEvent {
    /// The canonical JSON of the entry at `seq`.
    pub fn body(&self, seq: u64) -> String {
        let mut body = String::with_capacity(self.prefix.len() + 32);
        body.push_str(&self.prefix);
        let _ = write!(body, ",\"seq\":{seq}}}");
        body
    }
}

/// One log entry, exactly as hashed (its canonical JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Position in the log, from 0; the Merkle leaf index.
    pub seq: u64,
    /// Seconds since the epoch.
    pub at: i64,
    /// Stable kind.
    pub kind: String,
    /// Context chain.
    pub context: Context,
    /// Kind-specific details.
    pub details: Map<String, Value>,
}

impl Entry {
    /// The canonical JSON that is hashed and stored.
    pub fn canonical(&self) -> Result<String, CanonicalError> {
        let value = serde_json::to_value(self).map_err(|e| CanonicalError::Encode(e.to_string()))?;
        to_canonical(&value)
    }

    /// `SHA-256(0x00 ‖ canonical JSON)`.
    pub fn leaf_hash(&self) -> Result<Hash, CanonicalError> {
        Ok(leaf_hash(self.canonical()?.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `with_run` sets every run field the hand copies set (and overwrites what the caller's
    /// context had there), keeps who asked and which request, and records no stack name.
    #[test]
    fn a_run_chain_becomes_the_context_run_fields() {
        let run = RunChain {
            repository: Some("https://git.example/infra.git".into()),
            commit_sha: Some("abc1234".into()),
            git_ref: Some("refs/heads/main".into()),
            pull_request: Some(7),
            ticket: Some("CHG-1".into()),
            triggered_by: Some("alice".into()),
            approved_by: vec!["bob".into()],
            asserted_by: Some("ops".into()),
            ..RunChain::new("r1", "s1", "net", keyward_proto::claims::Phase::Apply)
        };
        let caller = Context {
            actor: Some("exchange:run".into()),
            request_id: Some("req-1".into()),
            ticket: Some("stale".into()),
            ..Context::default()
        };
        let expected = Context {
            run_id: Some("r1".into()),
            stack_id: Some("s1".into()),
            phase: Some("apply".into()),
            repository: Some("https://git.example/infra.git".into()),
            commit_sha: Some("abc1234".into()),
            git_ref: Some("refs/heads/main".into()),
            pull_request: Some(7),
            ticket: Some("CHG-1".into()),
            triggered_by: Some("alice".into()),
            approved_by: vec!["bob".into()],
            asserted_by: Some("ops".into()),
            actor: Some("exchange:run".into()),
            request_id: Some("req-1".into()),
            ..Context::default()
        };
        assert_eq!(caller.with_run(&run), expected);
        let bare = Context::default().with_run(&RunChain::new("r1", "s1", "net", keyward_proto::claims::Phase::Plan));
        assert_eq!((bare.ticket, bare.approved_by, bare.phase.as_deref()), (None, Vec::new(), Some("plan")));
    }

    #[test]
    fn prepared_bodies_are_the_canonical_entries() {
        let context = Context {
            run_id: Some("run-1".into()),
            approved_by: vec!["b".into(), "a".into()],
            remote_addr: Some("127.0.0.1:1".into()),
            ..Context::default()
        };
        let event = AuditEvent::new(Kind::CredentialsIssued, 1_795_400_000, context)
            .with("access_key_id", "ASIA1")
            .with("z", serde_json::json!({"y": [1, "x"], "a": null}))
            .with("seq_like", "not the seq");
        let prepared = event.prepare().unwrap();
        for seq in [0, 7, u64::MAX] {
            assert_eq!(prepared.body(seq), event.at_seq(seq).canonical().unwrap(), "seq {seq}");
        }
        assert!(AuditEvent::new(Kind::TokenMinted, 0, Context::default()).with("f", 0.5).prepare().is_err());
    }

    /// Generated events for comparing the direct encoding with the `Value` tree's.
    mod generate {
        use serde_json::{Map, Value};

        use super::super::{AuditEvent, Context, Kind};
        use crate::canonical::generate::Rng;

        const KINDS: &[Kind] = &[
            Kind::TokenMinted,
            Kind::CredentialsAllowed,
            Kind::CredentialsDenied,
            Kind::CredentialsIssued,
            Kind::AuditPruned,
            Kind::PolicyLoaded,
            Kind::RunStateChanged,
            Kind::JobLeaseEnded,
            Kind::SourceCredentialsIssued,
        ];

        /// Keys that collide, prefix one another, or sort differently in UTF-8 and UTF-16
        /// (U+FB01 after U+1F600 in UTF-16, before it in UTF-8), besides the generated ones.
        const KEYS: &[&str] =
            &["", "a", "ab", "b", "Z", "seq", "kind", "\u{FB01}", "\u{1F600}", "\u{FFFF}", "\u{10000}", "é", "a\u{0}"];

        fn optional(rng: &mut Rng) -> Option<String> {
            // Empty strings too: present but empty is not absent.
            (rng.below(3) != 0).then(|| rng.string(12))
        }

        fn key(rng: &mut Rng) -> String {
            if rng.below(2) == 0 {
                KEYS.get(rng.below(KEYS.len() as u64) as usize).copied().unwrap_or("k").to_owned()
            } else {
                rng.string(6)
            }
        }

        fn integer(rng: &mut Rng) -> Value {
            match rng.below(6) {
                0 => Value::from(i64::MIN),
                1 => Value::from(u64::MAX),
                2 => Value::from(0),
                3 => Value::from(rng.next_u64()),
                4 => Value::from(rng.next_u64() as i64),
                _ => Value::from(rng.below(2000) as i64 - 1000),
            }
        }

        /// A JSON value; with `floats`, some numbers are not integers.
        pub(super) fn value(rng: &mut Rng, depth: u32, floats: bool) -> Value {
            let leaf_only = depth == 0;
            match rng.below(if leaf_only { 5 } else { 7 }) {
                0 => Value::Null,
                1 => Value::Bool(rng.below(2) == 0),
                2 if floats && rng.below(4) == 0 => {
                    const FLOATS: &[f64] = &[0.5, -0.0, 1e300, -2.5e-8, 3.25];
                    Value::from(FLOATS.get(rng.below(FLOATS.len() as u64) as usize).copied().unwrap_or(0.5))
                }
                2 => integer(rng),
                3 | 4 => Value::String(rng.string(16)),
                5 => Value::Array((0..rng.below(4)).map(|_| value(rng, depth - 1, floats)).collect()),
                _ => Value::Object(map(rng, depth - 1, floats)),
            }
        }

        pub(super) fn map(rng: &mut Rng, depth: u32, floats: bool) -> Map<String, Value> {
            (0..rng.below(6)).map(|_| (key(rng), value(rng, depth, floats))).collect()
        }

        pub(super) fn context(rng: &mut Rng) -> Context {
            // A struct literal without `..`: a new field must be generated here too.
            Context {
                run_id: optional(rng),
                stack_id: optional(rng),
                phase: optional(rng),
                repository: optional(rng),
                commit_sha: optional(rng),
                git_ref: optional(rng),
                pull_request: match rng.below(4) {
                    0 => None,
                    1 => Some(u64::MAX),
                    2 => Some(0),
                    _ => Some(rng.next_u64() >> rng.below(64)),
                },
                ticket: optional(rng),
                pull_request_source: optional(rng),
                triggered_by: optional(rng),
                approved_by: (0..rng.below(4)).map(|_| rng.string(8)).collect(),
                asserted_by: optional(rng),
                actor: optional(rng),
                subject_issuer: optional(rng),
                subject_jti: optional(rng),
                target: optional(rng),
                request_id: optional(rng),
                remote_addr: optional(rng),
            }
        }

        pub(super) fn event(rng: &mut Rng, floats: bool) -> AuditEvent {
            let kind = KINDS.get(rng.below(KINDS.len() as u64) as usize).copied().unwrap_or(Kind::TokenMinted);
            let at = match rng.below(4) {
                0 => i64::MIN,
                1 => i64::MAX,
                2 => rng.next_u64() as i64,
                _ => 1_795_400_000,
            };
            let mut event = AuditEvent::new(kind, at, context(rng));
            event.details = map(rng, 3, floats);
            for _ in 0..rng.below(3) {
                event = event.with_ref("akid", &rng.string(8));
            }
            event
        }
    }

    /// What `prepare` wrote before it encoded directly: the event serialized to a `Value` tree,
    /// that tree written canonically, the closing brace taken off.
    fn prefix_via_value(event: &AuditEvent) -> Result<String, CanonicalError> {
        #[derive(Serialize)]
        struct Unnumbered<'a> {
            at: i64,
            context: &'a Context,
            details: &'a Map<String, Value>,
            kind: &'a str,
        }
        let unnumbered =
            Unnumbered { at: event.at, context: &event.context, details: &event.details, kind: event.kind.as_str() };
        let value = serde_json::to_value(unnumbered).map_err(|e| CanonicalError::Encode(e.to_string()))?;
        let mut prefix = to_canonical(&value)?;
        prefix.pop();
        Ok(prefix)
    }

    /// A check of canonical key order that shares no code with the encoder: a deserializer meets
    /// an object's keys in the order of the text, and each must sort after the one before it by
    /// UTF-16 code units, at every depth.
    #[derive(Debug)]
    struct SortedKeys;

    impl<'de> Deserialize<'de> for SortedKeys {
        fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            deserializer.deserialize_any(SortedKeysVisitor)
        }
    }

    struct SortedKeysVisitor;

    impl<'de> serde::de::Visitor<'de> for SortedKeysVisitor {
        type Value = SortedKeys;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("JSON")
        }

        fn visit_unit<E>(self) -> Result<SortedKeys, E> {
            Ok(SortedKeys)
        }

        fn visit_bool<E>(self, _: bool) -> Result<SortedKeys, E> {
            Ok(SortedKeys)
        }

        fn visit_i64<E>(self, _: i64) -> Result<SortedKeys, E> {
            Ok(SortedKeys)
        }

        fn visit_u64<E>(self, _: u64) -> Result<SortedKeys, E> {
            Ok(SortedKeys)
        }

        fn visit_str<E>(self, _: &str) -> Result<SortedKeys, E> {
            Ok(SortedKeys)
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<SortedKeys, A::Error> {
            while seq.next_element::<SortedKeys>()?.is_some() {}
            Ok(SortedKeys)
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<SortedKeys, A::Error> {
            let mut last: Option<Vec<u16>> = None;
            while let Some(key) = map.next_key::<String>()? {
                let units: Vec<u16> = key.encode_utf16().collect();
                if last.as_ref().is_some_and(|last| *last >= units) {
                    return Err(serde::de::Error::custom(format!("key {key:?} is out of canonical order")));
                }
                last = Some(units);
                map.next_value::<SortedKeys>()?;
            }
            Ok(SortedKeys)
        }
    }

    /// The direct encoding is the `Value` tree's, byte for byte, for events with every context
    /// field absent, empty or awkward, details nested three deep with keys whose UTF-8 and
    /// UTF-16 orders differ, and strings with every escape and multi-byte characters; and the
    /// entry the verifier re-encodes (`Entry::canonical`) is the prepared body. Both share
    /// [`write_map`] and the string escaping (tested on their own in `canonical`), so the body is
    /// also checked without them: its keys in order, and it parses back to the entry.
    #[test]
    fn direct_encoding_equals_the_value_trees() {
        let mut rng = crate::canonical::generate::Rng::new(18);
        for i in 0..10_000 {
            let event = generate::event(&mut rng, false);
            let prepared = event.prepare().unwrap();
            assert_eq!(prepared.prefix, prefix_via_value(&event).unwrap(), "event {i}: {event:?}");
            let seq = rng.next_u64() >> rng.below(64);
            let body = prepared.body(seq);
            assert_eq!(body, event.at_seq(seq).canonical().unwrap(), "event {i}: {event:?}");
            // And, without the shared code: sorted keys, and the text reads back as the entry.
            serde_json::from_str::<SortedKeys>(&body).unwrap_or_else(|e| panic!("event {i}: {e}: {body}"));
            let reread: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(reread, serde_json::to_value(event.at_seq(seq)).unwrap(), "event {i}: {body}");
        }
    }

    /// A float anywhere in the details is refused with the same error (the first in canonical
    /// order) as through the `Value` tree.
    #[test]
    fn floats_are_refused_as_through_the_value_tree() {
        let mut rng = crate::canonical::generate::Rng::new(8785);
        let mut refused = 0;
        for i in 0..5_000 {
            let event = generate::event(&mut rng, true);
            let direct = event.prepare().map(|prepared| prepared.prefix);
            refused += usize::from(direct.is_err());
            assert_eq!(direct, prefix_via_value(&event), "event {i}: {event:?}");
        }
        assert!(refused > 500, "only {refused} events had a float");
    }
}
