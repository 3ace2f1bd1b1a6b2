//! Token exchange (RFC 8693): a verified subject token becomes credentials for a named target,
//! only after a policy says yes, and only once the decision is on record.
//!
//! The order is the security argument, so it is spelled out in [`Exchanger::exchange`]:
//! 1. the request names a configured target (callers never pass an ARN or a path);
//! 2. the subject token verifies strictly (see `tokens::verify`); a token that does not is
//!    refused without an audit entry (the caller proved nothing: see `unproven`), one that
//!    verified and is refused for what it says is audited;
//! 3. a plan-phase token never reaches a write target — checked in code, before any policy;
//! 4. the `keyward.credentials` policy decides (deny by default), and an `allow` the target
//!    cannot carry out exactly as decided (a worker-mode session policy, say) is a refusal
//!    (see `enforce`); what is issued never outlives the decision's [`enforce::Lifetime`];
//! 5. one audit-log append commits the decision, the claim on the subject token's `jti` (so it
//!    is exchanged at most once; a replay commits a refusal instead) and, when allowed, the
//!    `token.minted` entry of the target-audience token minted for it. Nothing is handed out, and no relying party
//!    is called, before that commit; a decision that cannot be recorded issues nothing;
//! 6. what the relying party returned (or why it refused) is recorded before the response.
//!
//! A job's agent takes the same path through [`Exchanger::exchange_for_job`]: step 2 is its
//! certificate and its lease (checked by the agent service), step 3 also keeps a job to its
//! stack's targets for its phase, and the append of step 5 carries a write that re-checks the
//! lease, so a lease that moved on meanwhile issues nothing.

pub mod aws;
pub mod enforce;
mod policy_input;
mod response;
mod subject;
pub mod trusted_issuers;
mod unproven;
pub mod vault;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use enforce::Lifetime;
use keyward_proto::claims::{Phase, RunChain};
use keyward_proto::secret::Secret;
use serde_json::{Value, json};
use subject::{Subject, SubjectKind};
use unproven::UnprovenRefusals;

pub use response::{AwsIssued, AwsWorkerCredentials, ExchangeResponse};
pub use subject::JobSubject;

use crate::audit::{Append, AuditEvent, AuditLog, Committed, Context, Kind, TokenClaim};
use crate::clock::SharedClock;
use crate::issuance::{self, IssueError};
use crate::keys::KeyRing;
use crate::metrics::{ExchangeOutcome, Metrics};
use crate::policy::{Decision, PolicyEngine, PolicyKind};
use crate::runs::reviews::RecordedRun;
use crate::store::write::Write;
use crate::store::{Store, StoreError};
use crate::targets::{AwsTarget, ExchangeMode, TargetAccess, TargetConfig, TargetKind, VaultTarget};
use crate::tokens::verify::{self, Algorithm, Expectations, VerifyError};
use crate::tokens::{MintRequest, MintedToken, Minter, PendingToken};
use trusted_issuers::{TrustedIssuers, peek_issuer_and_audiences};

/// RFC 8693 `grant_type`.
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// Subject token types accepted.
pub const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
/// Also accepted for subject tokens (CI systems call theirs ID tokens).
pub const ID_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id_token";
/// `issued_token_type` of a Vault token (a Keyward URI).
pub const VAULT_TOKEN_TYPE: &str = "urn:keyward:params:oauth:token-type:vault-token";
/// `issued_token_type` of AWS credentials (a Keyward URI: RFC 8693 defines none for them).
pub const AWS_CREDENTIALS_TOKEN_TYPE: &str = "urn:keyward:params:oauth:token-type:aws-credentials";

/// Why an exchange did not happen, by cause; each edge picks its status (`http/error.rs`,
/// `grpc/status.rs`). Messages are safe for the caller.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// An unknown target.
    #[error("unknown target `{0}`; targets are named `<type>:<name>`, e.g. `aws:network-apply`")]
    UnknownTarget(String),
    /// The subject token was refused.
    #[error("subject token refused: {0}")]
    SubjectTokenRefused(String),
    /// The broker's rules, or the policy, refused this target to this subject.
    #[error("denied: {}", .0.join("; "))]
    Denied(Vec<String>),
    /// Something the caller cannot fix, now; nothing was issued.
    #[error("{0}")]
    Unavailable(String),
    /// The relying party refused (for AWS: the role's trust policy, the token, the session policy).
    #[error("{0}")]
    UpstreamRefused(String),
    /// The relying party could not be reached, or failed, within the deadline and retries.
    #[error("{0}")]
    UpstreamUnavailable(String),
}

/// A validated exchange request. Its `Debug` never shows the subject token.
#[derive(Debug)]
pub struct ExchangeRequest {
    /// The subject token.
    pub subject_token: Secret,
    /// `<type>:<name>`.
    pub target: String,
    /// Lifetime asked for, if any.
    pub requested_ttl: Option<Duration>,
    /// Where the request came from (request ID, remote address), for the audit entries.
    pub caller: Context,
}

/// A subject on its way to a decision.
struct Grant {
    subject: Subject,
    /// The single-use claim on its token, if it has one.
    claim: Option<TokenClaim>,
    /// Writes that must hold when the decision commits (a job's lease), or nothing is issued.
    guard: Vec<Write>,
    requested_ttl: Option<Duration>,
}

/// What [`Exchanger::judge`] concluded.
struct Judgement {
    /// The decision, when it allows and the broker can carry it out.
    allowed: Option<Decision>,
    /// Why: the decision's reasons, or what refused it.
    reasons: Vec<String>,
    lifetime: Lifetime,
    /// The audited facts of the decision (the policy's digest).
    decided: Value,
}

/// An allowed exchange on its way out: what its issuing steps share.
#[derive(Clone, Copy)]
struct Issuing<'a> {
    caller: &'a Context,
    subject: &'a Subject,
    target: &'a TargetConfig,
    lifetime: Lifetime,
    reasons: &'a [String],
    decided: &'a Value,
    guard: &'a [Write],
}

/// Performs exchanges. Cheap to share.
#[derive(Debug)]
pub struct Exchanger {
    targets: BTreeMap<String, TargetConfig>,
    keys: Arc<KeyRing>,
    minter: Arc<Minter>,
    policies: Option<Arc<PolicyEngine>>,
    issuers: TrustedIssuers,
    log: AuditLog,
    store: Store,
    clock: SharedClock,
    self_issuer: String,
    leeway: Duration,
    unproven: UnprovenRefusals,
    metrics: Arc<Metrics>,
}

/// A subject token refused: whether its signature had verified against a trusted key decides
/// whether the refusal is audited (see [`unproven`]).
struct SubjectRefused {
    error: ExchangeError,
    /// The token verified (a trusted key signed it) and was refused for what it says.
    proven: bool,
}

impl SubjectRefused {
    fn unproven(error: ExchangeError) -> Self {
        Self { error, proven: false }
    }
}

impl Exchanger {
    /// An exchanger over the configured targets. Run tokens are accepted when their `iss` and
    /// `aud` are both this broker (`self_issuer`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        targets: &[TargetConfig],
        keys: Arc<KeyRing>,
        minter: Arc<Minter>,
        policies: Option<Arc<PolicyEngine>>,
        issuers: TrustedIssuers,
        log: AuditLog,
        store: Store,
        clock: SharedClock,
        self_issuer: String,
        leeway: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        let targets = targets.iter().map(|t| (t.id(), t.clone())).collect();
        Self {
            targets,
            keys,
            minter,
            policies,
            issuers,
            log,
            store,
            clock,
            self_issuer,
            leeway,
            unproven: UnprovenRefusals::default(),
            metrics,
        }
    }

    /// Exchanges `request`; see the module documentation for the order of checks.
    pub async fn exchange(&self, request: ExchangeRequest) -> Result<ExchangeResponse, ExchangeError> {
        let started = Instant::now();
        let target = request.target.clone();
        let result = self.exchange_unobserved(request).await;
        self.observe(&target, &result, started);
        result
    }

    /// Counts and times an exchange for a configured target (an unknown one is not a label).
    fn observe(&self, target: &str, result: &Result<ExchangeResponse, ExchangeError>, started: Instant) {
        if !self.targets.contains_key(target) {
            return;
        }
        let outcome = match result {
            Ok(_) => ExchangeOutcome::Issued,
            Err(ExchangeError::Denied(_)) => ExchangeOutcome::Denied,
            Err(ExchangeError::SubjectTokenRefused(_) | ExchangeError::UnknownTarget(_)) => {
                ExchangeOutcome::SubjectRefused
            }
            Err(ExchangeError::UpstreamRefused(_)) => ExchangeOutcome::UpstreamRefused,
            Err(ExchangeError::UpstreamUnavailable(_)) => ExchangeOutcome::UpstreamUnavailable,
            Err(ExchangeError::Unavailable(_)) => ExchangeOutcome::Unavailable,
        };
        self.metrics.exchange(target, outcome, started.elapsed());
    }

    async fn exchange_unobserved(&self, request: ExchangeRequest) -> Result<ExchangeResponse, ExchangeError> {
        let target = self.target(&request.target)?;
        let now = self.clock.now();
        let caller = &request.caller;

        let (mut subject, single_use) = match self.verify_subject(request.subject_token.expose(), now).await {
            Ok(verified) => verified,
            Err(SubjectRefused { error, proven: true }) => {
                self.record_refusal(caller, target, &error).await?;
                return Err(error);
            }
            Err(SubjectRefused { error, proven: false }) => {
                self.unproven.refused(now, caller, &target.id(), &error.to_string());
                return Err(error);
            }
        };
        if subject.kind == SubjectKind::Run {
            subject.run.approved_by = self.recorded_approvals(&subject.run).await?;
        }
        let claim = single_use.then(|| TokenClaim {
            issuer: subject.issuer.clone(),
            jti: subject.replay_key.clone(),
            expires_at: subject.expires_at,
            used_at: now,
        });
        let grant = Grant { subject, claim, guard: Vec::new(), requested_ttl: request.requested_ttl };
        self.grant(grant, target, caller).await
    }

    /// Credentials for a job, asked for by the agent holding its lease (the `Credentials` RPC).
    /// Steps 1 and 3-6 are those of [`exchange`](Self::exchange); step 2 is done by the caller
    /// (the agent's certificate, the job's lease and fencing token), and the lease is checked
    /// again in the transaction that records the decision. A job may only ask for its stack's
    /// targets for its phase.
    pub async fn exchange_for_job(
        &self,
        job: &JobSubject,
        target: &str,
        caller: &Context,
    ) -> Result<ExchangeResponse, ExchangeError> {
        let started = Instant::now();
        let target_config = self.target(target)?;
        let grant = Grant {
            subject: Subject::from_job(job),
            claim: None,
            guard: vec![job.lease_guard.clone()],
            requested_ttl: None,
        };
        // The job's lines (the decision, the issue) carry its run and job IDs.
        let span = tracing::info_span!("job", run_id = %job.run_id, job_id = %job.job_id);
        let result = tracing::Instrument::instrument(self.grant(grant, target_config, caller), span).await;
        self.observe(target, &result, started);
        result
    }

    /// Whose approval of a run token's run counted, from the reviews the broker recorded for it:
    /// nobody, unless the run exists and is the one the token describes (same stack and commit).
    async fn recorded_approvals(&self, run: &RunChain) -> Result<Vec<String>, ExchangeError> {
        let recorded = RecordedRun::load(&self.store, &run.run_id)
            .await
            .map_err(|e| unavailable("the run's reviews could not be read, so nothing was issued", &e))?;
        Ok(recorded
            .filter(|r| r.stack == run.stack_id && run.commit_sha.as_deref() == Some(r.commit_sha.as_str()))
            .map(|r| r.approved_by)
            .unwrap_or_default())
    }

    fn target(&self, name: &str) -> Result<&TargetConfig, ExchangeError> {
        self.targets.get(name).ok_or_else(|| ExchangeError::UnknownTarget(name.chars().take(80).collect()))
    }

    /// Steps 3-6: decide, record, issue.
    async fn grant(
        &self,
        grant: Grant,
        target: &TargetConfig,
        caller: &Context,
    ) -> Result<ExchangeResponse, ExchangeError> {
        let Grant { subject, claim, guard, requested_ttl } = grant;
        let judged = self.judge(&subject, target, requested_ttl);
        let Some(decision) = judged.allowed else {
            return Err(self.refuse(caller, target, &subject, claim, &judged.reasons, judged.decided).await);
        };
        // Allowed: the decision, the consumed subject token and the minted token commit together,
        // before anything leaves the broker.
        let issuing = Issuing {
            caller,
            subject: &subject,
            target,
            lifetime: judged.lifetime,
            reasons: &judged.reasons,
            decided: &judged.decided,
            guard: &guard,
        };
        let response = match &target.kind {
            TargetKind::Vault(vault_target) => self.issue_vault(&issuing, vault_target, claim).await?,
            TargetKind::Aws(aws) if aws.mode == ExchangeMode::Worker => {
                self.issue_aws_worker(&issuing, aws, claim).await?
            }
            TargetKind::Aws(aws) => self.issue_aws_broker(&issuing, aws, &decision, claim).await?,
        };
        tracing::info!(credential_target = %target.id(), run_id = %subject.run.run_id, subject = subject.kind.as_str(), "credentials issued");
        Ok(response)
    }

    /// The broker's rules, the policy, and whether the broker can carry out what it decided: what
    /// it cannot is refused, never weakened (§8.12).
    fn judge(&self, subject: &Subject, target: &TargetConfig, requested_ttl: Option<Duration>) -> Judgement {
        let decision = self.decide(subject, target, requested_ttl, self.clock.now());
        let lifetime = match &decision {
            Ok(decision) => Lifetime::of(target.duration, decision.ttl_seconds, requested_ttl),
            Err(_) => Lifetime::of(target.duration, None, None),
        };
        let digest = decision.as_ref().map(|d| d.policy_digest.clone()).unwrap_or_default();
        let decided = json!({ "policy_digest": digest });
        let (allowed, reasons) = match decision {
            Ok(decision) if decision.permits() => match enforce::unenforceable(target, &decision, lifetime) {
                unenforceable if unenforceable.is_empty() => {
                    let reasons = decision.reasons.clone();
                    (Some(decision), reasons)
                }
                unenforceable => (None, unenforceable),
            },
            Ok(decision) => (None, decision.reasons),
            Err(reasons) => (None, reasons),
        };
        Judgement { allowed, reasons, lifetime, decided }
    }

    /// Records a refusal (with the subject token's claim, so a replay is refused on record too)
    /// and returns the error the caller gets.
    async fn refuse(
        &self,
        caller: &Context,
        target: &TargetConfig,
        subject: &Subject,
        claim: Option<TokenClaim>,
        reasons: &[String],
        decided: Value,
    ) -> ExchangeError {
        let entry = Append {
            claim,
            writes: Vec::new(),
            events: vec![self.event(caller, target, Some(subject), Kind::CredentialsDenied, reasons, decided)],
            if_replayed: vec![self.replay_event(caller, target, subject)],
        };
        match self.log.append(entry).await {
            Ok(Committed::Recorded(_)) => ExchangeError::Denied(reasons.to_vec()),
            Ok(Committed::Replayed) => replayed(),
            Ok(Committed::Refused(refusal)) => {
                unavailable("the decision could not be recorded", &StoreError::Append(refusal.to_string()))
            }
            Err(e) => unavailable("the decision could not be recorded, so nothing was issued", &e),
        }
    }

    /// The `credentials.allowed` append: the decision, the subject token's claim and the guard.
    fn allowed_entry(&self, issuing: &Issuing<'_>, claim: Option<TokenClaim>) -> Append {
        let Issuing { caller, subject, target, .. } = *issuing;
        Append {
            claim,
            writes: issuing.guard.to_vec(),
            events: vec![self.event(
                caller,
                target,
                Some(subject),
                Kind::CredentialsAllowed,
                issuing.reasons,
                issuing.decided.clone(),
            )],
            if_replayed: vec![self.replay_event(caller, target, subject)],
        }
    }

    /// A Vault target: a token for its JWT auth, then the login, reads and certificates.
    async fn issue_vault(
        &self,
        issuing: &Issuing<'_>,
        vault_target: &VaultTarget,
        claim: Option<TokenClaim>,
    ) -> Result<ExchangeResponse, ExchangeError> {
        let Issuing { caller, subject, target, lifetime, .. } = *issuing;
        let pending = self.mint_for(subject, &vault_target.audience, None, None)?;
        let mut details =
            json!({ "minted_jti": pending.claims().jti, "role": vault_target.role, "address": vault_target.address });
        let minted = self.release(pending, caller, subject, self.allowed_entry(issuing, claim)).await?;
        let issued = match vault::issue(vault_target, minted.token.expose(), lifetime, &self.metrics).await {
            Ok(issued) => issued,
            Err(error) => {
                let reason = error.to_string();
                let refusal = match error {
                    vault::VaultError::Lifetime { accessor, lease_duration, fate, .. } => {
                        if let Some(fields) = details.as_object_mut() {
                            fields.insert("accessor".to_owned(), Value::from(accessor));
                            fields.insert("lease_duration".to_owned(), Value::from(lease_duration));
                            fields.insert("vault_token".to_owned(), Value::from(fate.as_str()));
                        }
                        ExchangeError::Denied(vec![reason.clone()])
                    }
                    vault::VaultError::Refused { .. } => ExchangeError::UpstreamRefused(reason.clone()),
                    vault::VaultError::Unavailable(_) => ExchangeError::UpstreamUnavailable(reason.clone()),
                };
                return Err(self.upstream_failed(caller, subject, target, details, reason, refusal).await);
            }
        };
        if let Some(fields) = details.as_object_mut() {
            fields.insert("accessor".to_owned(), Value::from(issued.accessor.clone()));
            fields.insert("lease_duration".to_owned(), Value::from(issued.lease_duration));
            fields.insert("vault_token".to_owned(), Value::from(issued.fate.as_str()));
            fields.insert("policies".to_owned(), json!(issued.policies));
            let paths: Vec<String> = issued.secrets.iter().map(|(m, p, _)| format!("{m}/{p}")).collect();
            fields.insert("secrets_read".to_owned(), json!(paths));
            let serials: Vec<&str> = issued.certificates.iter().map(|c| c.serial_number.as_str()).collect();
            fields.insert("certificate_serials".to_owned(), json!(serials));
        }
        self.record(caller, subject, target, Kind::CredentialsIssued, &[], details).await?;
        Ok(ExchangeResponse::Vault { issued, address: vault_target.address.clone() })
    }

    /// The minted token's audit details for an AWS target.
    fn aws_details(aws: &AwsTarget, pending: &PendingToken, session_name: &str, duration: Duration) -> Value {
        json!({
            "minted_jti": pending.claims().jti,
            "role_arn": aws.role_arn,
            "role_session_name": session_name,
            "duration_seconds": duration.as_secs(),
            "mode": aws.mode,
            "expires_at": pending.claims().exp,
        })
    }

    /// An AWS target in worker mode: the minted web-identity token is the credential, so its
    /// issuance commits with the decision. The job trades it at STS as often as it likes while it
    /// lives: it never outlives the decision.
    async fn issue_aws_worker(
        &self,
        issuing: &Issuing<'_>,
        aws: &AwsTarget,
        claim: Option<TokenClaim>,
    ) -> Result<ExchangeResponse, ExchangeError> {
        let Issuing { caller, subject, target, lifetime, .. } = *issuing;
        let duration = lifetime.duration;
        let ttl = self.minter.default_ttl().min(duration);
        let pending = self.mint_for(subject, &aws.audience, Some(aws), Some(ttl))?;
        let session_name = role_session_name(&subject.run.run_id);
        let details = Self::aws_details(aws, &pending, &session_name, duration);
        let mut entry = self.allowed_entry(issuing, claim);
        entry.events.push(self.event(caller, target, Some(subject), Kind::CredentialsIssued, &[], details));
        let minted = self.release(pending, caller, subject, entry).await?;
        Ok(ExchangeResponse::AwsWorker(AwsWorkerCredentials {
            web_identity_token: minted.token,
            token_expires_at: minted.claims.exp,
            role_arn: aws.role_arn.clone(),
            role_session_name: session_name,
            region: aws.region.clone(),
            sts_endpoint: aws.sts_endpoint.clone(),
            duration_seconds: duration.as_secs(),
        }))
    }

    /// An AWS target in broker mode: the broker calls STS with the decision's session policy and
    /// lifetime, and records what STS issued before it is returned.
    async fn issue_aws_broker(
        &self,
        issuing: &Issuing<'_>,
        aws: &AwsTarget,
        decision: &Decision,
        claim: Option<TokenClaim>,
    ) -> Result<ExchangeResponse, ExchangeError> {
        let Issuing { caller, subject, target, lifetime, .. } = *issuing;
        let duration = lifetime.duration;
        let pending = self.mint_for(subject, &aws.audience, Some(aws), None)?;
        let session_name = role_session_name(&subject.run.run_id);
        let mut details = Self::aws_details(aws, &pending, &session_name, duration);
        let minted = self.release(pending, caller, subject, self.allowed_entry(issuing, claim)).await?;
        let call = aws::AssumeRole {
            target: aws,
            session_name: &session_name,
            web_identity_token: minted.token.expose(),
            duration,
            session_policy: decision.session_policy.as_ref().map(Value::to_string),
        };
        let credentials = match aws::assume_role(call).await {
            Ok(credentials) => credentials,
            Err(error) => {
                let reason = error.to_string();
                let refusal = match error {
                    aws::StsError::Refused { .. } => ExchangeError::UpstreamRefused(reason.clone()),
                    aws::StsError::Unavailable(_) => ExchangeError::UpstreamUnavailable(reason.clone()),
                };
                return Err(self.upstream_failed(caller, subject, target, details, reason, refusal).await);
            }
        };
        if let Some(fields) = details.as_object_mut() {
            fields.insert("access_key_id".to_owned(), Value::from(credentials.access_key_id.clone()));
            fields.insert("assumed_role_arn".to_owned(), Value::from(credentials.assumed_role_arn.clone()));
            fields.insert("credentials_expire_at".to_owned(), Value::from(credentials.expires_at));
        }
        self.record(caller, subject, target, Kind::CredentialsIssued, &[], details).await?;
        Ok(ExchangeResponse::Aws(AwsIssued {
            credentials,
            role_arn: aws.role_arn.clone(),
            role_session_name: session_name,
            region: aws.region.clone(),
        }))
    }

    /// Verifies the subject token; also says whether it is single-use. Writes nothing: its claim
    /// commits with the decision.
    async fn verify_subject(&self, token: &str, now: i64) -> Result<(Subject, bool), SubjectRefused> {
        let (iss, audiences) = peek_issuer_and_audiences(token).ok_or_else(|| {
            SubjectRefused::unproven(ExchangeError::SubjectTokenRefused(
                VerifyError::Malformed("not a JWT with iss").to_string(),
            ))
        })?;
        let (subject, single_use) = if iss == self.self_issuer {
            let expect = Expectations {
                issuer: self.self_issuer.clone(),
                audience: self.self_issuer.clone(),
                algorithms: vec![Algorithm::ES256, Algorithm::RS256],
                leeway: self.leeway,
                require_nbf: true,
            };
            let verified =
                verify::verify(token, &self.keys.verification_keys(), &expect, now).map_err(|e: VerifyError| {
                    SubjectRefused::unproven(ExchangeError::SubjectTokenRefused(e.to_string()))
                })?;
            // Signed by this broker: a refusal for what it says is audited.
            let subject = Subject::from_run_token(&self.self_issuer, verified)
                .map_err(|e| SubjectRefused { error: ExchangeError::SubjectTokenRefused(e), proven: true })?;
            (subject, true)
        } else if let Some(issuer) = self.issuers.find(&iss, &audiences) {
            let verified = self.issuers.verify(issuer, token, now, self.leeway).await.map_err(|e| match e {
                trusted_issuers::IssuerError::Keys { .. } => {
                    SubjectRefused::unproven(ExchangeError::UpstreamUnavailable(e.to_string()))
                }
                // The issuer signed it; what it says is refused, and that is on record.
                trusted_issuers::IssuerError::RequiredClaim(_) => {
                    SubjectRefused { error: ExchangeError::SubjectTokenRefused(e.to_string()), proven: true }
                }
                other => SubjectRefused::unproven(ExchangeError::SubjectTokenRefused(other.to_string())),
            })?;
            (Subject::from_ci_token(&issuer.config, verified, token), issuer.config.single_use)
        } else {
            return Err(SubjectRefused::unproven(ExchangeError::SubjectTokenRefused(
                "token issuer and audience do not match any issuer this broker trusts".to_owned(),
            )));
        };
        Ok((subject, single_use))
    }

    /// The broker's own rule first (a plan never writes), then the policy. `Err` carries the
    /// reasons of a deny that happened before the policy was asked.
    fn decide(
        &self,
        subject: &Subject,
        target: &TargetConfig,
        requested_ttl: Option<Duration>,
        now: i64,
    ) -> Result<Decision, Vec<String>> {
        if subject.run.phase != Phase::Apply && target.access == TargetAccess::Write {
            return Err(vec![format!(
                "target `{}` grants write access; only apply-phase tokens may use it (this one is {})",
                target.id(),
                subject.run.phase,
            )]);
        }
        if let Some(allowed) = &subject.allowed_targets
            && !allowed.contains(&target.id())
        {
            let listed = if allowed.is_empty() { "it has none".to_owned() } else { allowed.join(", ") };
            let whose = match &subject.kind {
                SubjectKind::Ci(issuer) => format!("issuer `{issuer}`'s"),
                _ => format!("stack `{}`'s {}", subject.run.stack, subject.run.phase),
            };
            return Err(vec![format!("target `{}` is not one of {whose} targets ({listed})", target.id())]);
        }
        if let Some(refusal) = space_refusal(subject.space_chain.as_deref(), target, &subject.run.stack) {
            return Err(vec![refusal]);
        }
        let Some(policies) = &self.policies else {
            return Err(vec!["no policy is configured ([policy] dir); credentials are denied by default".to_owned()]);
        };
        let input = policy_input::credentials_input(subject, target, requested_ttl, now);
        Ok(policies.decide(PolicyKind::Credentials, input))
    }

    /// A token for `audience` about `subject`, living `ttl` (default: `tokens.default_ttl`).
    fn mint_for(
        &self,
        subject: &Subject,
        audience: &str,
        aws_target: Option<&AwsTarget>,
        ttl: Option<Duration>,
    ) -> Result<PendingToken, ExchangeError> {
        let request = MintRequest {
            run: subject.run.clone(),
            audience: audience.to_owned(),
            ttl,
            pool: subject.pool.clone(),
            agent_id: subject.agent_id.clone(),
            aws_tag_keys: aws_target.and_then(|a| a.session_tags.clone()),
            source_identity: aws_target.and_then(|a| a.source_identity),
        };
        self.minter
            .mint(request)
            .map_err(|e| ExchangeError::SubjectTokenRefused(format!("the subject token cannot be re-issued: {e}")))
    }

    /// Hands out `pending` once its `token.minted` entry and `entry` are committed: the
    /// exchange's one commit.
    async fn release(
        &self,
        pending: PendingToken,
        caller: &Context,
        subject: &Subject,
        entry: Append,
    ) -> Result<MintedToken, ExchangeError> {
        let context = Context {
            actor: Some(subject.kind.actor()),
            subject_issuer: Some(subject.issuer.clone()),
            subject_jti: Some(subject.replay_key.clone()),
            ..caller.clone()
        };
        issuance::record(&self.log, pending, context, entry).await.map_err(|error| match error {
            IssueError::Mint(e) => {
                ExchangeError::SubjectTokenRefused(format!("the subject token cannot be re-issued: {e}"))
            }
            IssueError::Record(e) => {
                unavailable("the decision and token could not be recorded, so nothing was issued", &e)
            }
            IssueError::Replayed => replayed(),
            IssueError::Refused(refusal) => ExchangeError::Denied(vec![format!("nothing was issued: {refusal}")]),
        })
    }

    async fn record(
        &self,
        caller: &Context,
        subject: &Subject,
        target: &TargetConfig,
        kind: Kind,
        reasons: &[String],
        details: Value,
    ) -> Result<(), ExchangeError> {
        let event = self.event(caller, target, Some(subject), kind, reasons, details);
        self.log
            .append(Append::events(vec![event]))
            .await
            .map(drop)
            .map_err(|e| unavailable("the decision could not be recorded, so nothing was issued", &e))
    }

    /// Records why the relying party's answer issued nothing (it refused, failed, or issued
    /// more than the decision allows), and returns `refusal`, the caller's error; if even the
    /// record fails, that failure is the caller's error.
    async fn upstream_failed(
        &self,
        caller: &Context,
        subject: &Subject,
        target: &TargetConfig,
        details: Value,
        reason: String,
        refusal: ExchangeError,
    ) -> ExchangeError {
        let reasons = std::slice::from_ref(&reason);
        if let Err(error) = self.record(caller, subject, target, Kind::CredentialsDenied, reasons, details).await {
            return error;
        }
        refusal
    }

    /// Records a refusal that happened before the subject was known.
    async fn record_refusal(
        &self,
        caller: &Context,
        target: &TargetConfig,
        error: &ExchangeError,
    ) -> Result<(), ExchangeError> {
        let event = self.event(caller, target, None, Kind::CredentialsDenied, &[error.to_string()], json!({}));
        self.log
            .append(Append::events(vec![event]))
            .await
            .map(drop)
            .map_err(|e| unavailable("the refusal could not be recorded", &e))
    }

    /// The record of refusing a replayed subject token.
    fn replay_event(&self, caller: &Context, target: &TargetConfig, subject: &Subject) -> AuditEvent {
        self.event(caller, target, Some(subject), Kind::CredentialsDenied, &[replayed().to_string()], json!({}))
    }

    /// An entry about `target`, with the subject's run chain (when verified) and the caller's
    /// request. Identifiers in `details` become lookup keys for `audit trace`.
    fn event(
        &self,
        caller: &Context,
        target: &TargetConfig,
        subject: Option<&Subject>,
        kind: Kind,
        reasons: &[String],
        details: Value,
    ) -> AuditEvent {
        let mut context = Context { target: Some(target.id()), ..caller.clone() };
        if let Some(subject) = subject {
            context = Context {
                subject_issuer: Some(subject.issuer.clone()),
                subject_jti: Some(subject.replay_key.clone()),
                actor: Some(subject.kind.actor()),
                ..context.with_run(&subject.run)
            };
        }
        let mut event = AuditEvent::new(kind, self.clock.now(), context);
        match subject.map(|s| (s, &s.kind)) {
            Some((subject, SubjectKind::Job)) => {
                // Which agent asked, under which lease: the certificate and the fencing token.
                for (claim, field) in [
                    ("sub", "agent_spiffe_id"),
                    ("agent_id", "agent_id"),
                    ("pool", "pool"),
                    ("job_id", "job_id"),
                    ("fencing_token", "fencing_token"),
                ] {
                    if let Some(value) = subject.claims.get(claim) {
                        event = event.with(field, value.clone());
                    }
                }
            }
            // Which CI job asked: the issuer's configured name and the token's own claims, so
            // `audit trace` can name the workflow and job behind a key.
            Some((subject, SubjectKind::Ci(name))) => {
                event = event
                    .with("subject_kind", "ci")
                    .with("issuer_name", name.as_str())
                    .with("subject_claims", Value::Object(subject::recordable_claims(&subject.claims)));
            }
            Some((_, SubjectKind::Run)) => event = event.with("subject_kind", "run"),
            None => {}
        }
        if !reasons.is_empty() {
            event = event.with("reasons", reasons.to_vec());
        }
        if let Value::Object(fields) = details {
            event.details.extend(fields);
        }
        for (field, prefix) in [
            ("minted_jti", "jti"),
            ("access_key_id", "akid"),
            ("role_session_name", "session"),
            ("accessor", "accessor"),
        ] {
            if let Some(value) = event.details.get(field).and_then(Value::as_str).map(str::to_owned) {
                event = event.with_ref(prefix, &value);
            }
        }
        event
    }
}

/// What an exchange makes of a verified subject token before it decides anything.
#[derive(Debug)]
pub struct SubjectView {
    /// The `keyward.credentials` policy input.
    pub input: Value,
    /// The token's claims as its audit entries keep them (CI tokens; empty for run tokens).
    pub recorded_claims: serde_json::Map<String, Value>,
    /// The AWS role session name its run becomes.
    pub role_session_name: String,
}

/// The fuzzing entry (`fuzz/`; the broker never calls it): what [`Exchanger::exchange`] makes of
/// a verified token, a run token when `ci` is `None`, else a token of that CI issuer (`token` is
/// its text, which names a token without `jti`), up to the policy input for `target`, so hostile
/// claims reach every step that reads them.
pub fn subject_view(
    verified: verify::VerifiedToken,
    ci: Option<&trusted_issuers::IssuerConfig>,
    token: &str,
    target: &TargetConfig,
    requested_ttl: Option<Duration>,
    now: i64,
) -> Result<SubjectView, String> {
    let subject = match ci {
        None => {
            let issuer = verified.string("iss").unwrap_or_default().to_owned();
            Subject::from_run_token(&issuer, verified)?
        }
        Some(config) => Subject::from_ci_token(config, verified, token),
    };
    let recorded_claims = match subject.kind {
        SubjectKind::Ci(_) => subject::recordable_claims(&subject.claims),
        SubjectKind::Run | SubjectKind::Job => serde_json::Map::new(),
    };
    Ok(SubjectView {
        input: policy_input::credentials_input(&subject, target, requested_ttl, now).to_json(),
        recorded_claims,
        role_session_name: role_session_name(&subject.run.run_id),
    })
}

fn replayed() -> ExchangeError {
    ExchangeError::SubjectTokenRefused("token was already exchanged (each token is single-use)".to_owned())
}

fn unavailable(what: &str, error: &StoreError) -> ExchangeError {
    tracing::error!(%error, "{what}");
    ExchangeError::Unavailable(format!("{what}; retry"))
}

/// STS `RoleSessionName`: `[\w+=,.@-]{2,64}`.
fn role_session_name(run_id: &str) -> String {
    let mut name = crate::tokens::mint::sts_name(run_id);
    while name.len() < 2 {
        name.push('-');
    }
    name
}

/// Why a job of `stack`, whose space's chain is `chain`, may not use `target`: the target serves
/// none of the spaces on it (docs/access.md). `None` for a subject with no space (not a job).
fn space_refusal(chain: Option<&[String]>, target: &TargetConfig, stack: &str) -> Option<String> {
    let chain = chain?;
    (!target.serves(chain)).then(|| {
        format!(
            "target `{}` serves the spaces {} only; stack `{stack}` is in space `{}`",
            target.id(),
            target.spaces.join(", "),
            chain.first().map_or("(none)", String::as_str),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_gets_no_credentials_from_a_target_outside_its_space() {
        let target = TargetConfig {
            name: "pay".to_owned(),
            access: crate::targets::TargetAccess::Read,
            duration: std::time::Duration::from_secs(60),
            labels: std::collections::BTreeMap::new(),
            write_subjects: Vec::new(),
            spaces: vec!["payments".to_owned()],
            kind: crate::targets::TargetKind::Vault(crate::targets::VaultTarget {
                address: "http://127.0.0.1:8200".to_owned(),
                auth_mount: "jwt".to_owned(),
                role: "r".to_owned(),
                audience: "vault".to_owned(),
                return_token: true,
                kv_reads: Vec::new(),
                pki_issues: Vec::new(),
            }),
        };
        let chain = |spaces: &[&str]| spaces.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(space_refusal(Some(&chain(&["cards", "payments", "root"])), &target, "s"), None);
        assert_eq!(space_refusal(None, &target, "s"), None, "not a job");
        assert_eq!(
            space_refusal(Some(&chain(&["search", "root"])), &target, "s").as_deref(),
            Some("target `vault:pay` serves the spaces payments only; stack `s` is in space `search`")
        );
        assert!(space_refusal(Some(&[]), &target, "s").is_some(), "an unknown space is served by nothing");
    }

    #[test]
    fn a_request_never_prints_its_subject_token() {
        let request = ExchangeRequest {
            subject_token: "eyJhbGciOiJFUzI1NiJ9.secret-payload.sig".to_owned().into(),
            target: "aws:dev".to_owned(),
            requested_ttl: None,
            caller: Context::default(),
        };
        let printed = format!("{request:?}");
        assert!(!printed.contains("secret-payload"), "{printed}");
        assert!(printed.contains("aws:dev"), "{printed}");
    }

    #[test]
    fn session_names_fit_sts_rules() {
        assert_eq!(role_session_name("run-01J"), "run-01J");
        assert_eq!(role_session_name("run 1/x"), "run-1-x");
        assert_eq!(role_session_name("r"), "r-");
        assert_eq!(role_session_name(&"a".repeat(100)).len(), 64);
    }
}
