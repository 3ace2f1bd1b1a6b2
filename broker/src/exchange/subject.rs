//! Who is asking: a verified subject token, or a job whose agent proved itself with its mTLS
//! certificate and its lease, reduced to the run context that the guard, the policy, the record and
//! the minted token all use.

use keyward_proto::claims::{Phase, RunChain};
use serde_json::{Map, Value};

use super::trusted_issuers::IssuerConfig;
use crate::store::write::Write;
use crate::tokens::mint::is_identifier_char;
use crate::tokens::verify::VerifiedToken;

/// Where the subject token came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum SubjectKind {
    /// A Keyward run token.
    Run,
    /// A trusted CI issuer's token; carries the configured issuer name.
    Ci(String),
    /// A job, asked for by the agent holding its lease (the `Credentials` RPC).
    Job,
}

impl SubjectKind {
    pub(super) fn as_str(&self) -> &str {
        match self {
            Self::Run => "run",
            Self::Ci(_) => "ci",
            Self::Job => "job",
        }
    }

    /// The audit entries' `actor`: `exchange:run`, `exchange:job`, or `exchange:ci:<name>` with
    /// the `[[issuers]]` name an operator chose (not its URL), the same on every entry.
    pub(super) fn actor(&self) -> String {
        match self {
            Self::Ci(name) => format!("exchange:ci:{name}"),
            other => format!("exchange:{}", other.as_str()),
        }
    }
}

/// A verified subject.
#[derive(Debug)]
pub(super) struct Subject {
    pub(super) kind: SubjectKind,
    /// The `iss` it was verified against.
    pub(super) issuer: String,
    /// What makes it single-use: its `jti`, or a digest of its signing input (never of its
    /// malleable signature) when it has none.
    pub(super) replay_key: String,
    pub(super) expires_at: i64,
    /// Every verified claim (for the policy's `input.subject.claims`).
    pub(super) claims: Map<String, Value>,
    /// The run it stands for. Its `approved_by` is recorded reviews only, filled in from the
    /// store at issuance; `asserted_by` is set for a run token minted on request.
    pub(super) run: RunChain,
    /// The worker pool, when the subject says.
    pub(super) pool: Option<String>,
    /// The agent, when the subject says.
    pub(super) agent_id: Option<String>,
    /// For a job: the only targets it may ask for (its stack's targets for its phase).
    pub(super) allowed_targets: Option<Vec<String>>,
    /// For a job: its stack's space and the spaces above it, which a target must serve.
    pub(super) space_chain: Option<Vec<String>>,
}

/// A job asking for credentials for its phase. Built by the run service once the agent's
/// certificate and lease have been checked; [`lease_guard`](Self::lease_guard) re-checks the lease
/// in the transaction that records the decision, so a lease that moves on meanwhile issues nothing.
#[derive(Debug, Clone)]
pub struct JobSubject {
    /// The job.
    pub job_id: String,
    /// The current lease's fencing token.
    pub fencing_token: i64,
    /// When that lease ends unless renewed.
    pub lease_expires_at: i64,
    /// The agent holding it.
    pub agent_id: String,
    /// The agent's SPIFFE ID, from its certificate.
    pub agent_spiffe_id: String,
    /// The agents' trust domain, `spiffe://<domain>`.
    pub trust_domain: String,
    /// The agent's pool.
    pub pool: String,
    /// The run.
    pub run_id: String,
    /// The stack (its name is its immutable ID).
    pub stack: String,
    /// The job's phase.
    pub phase: Phase,
    /// Repository URL.
    pub repository: String,
    /// Commit.
    pub commit_sha: String,
    /// Branch, if the commit was its head at submit.
    pub git_ref: Option<String>,
    /// Pull request.
    pub pull_request: Option<u64>,
    /// Ticket.
    pub ticket: Option<String>,
    /// Where the pull request and ticket were observed (`github`), if the broker observed them.
    pub pull_request_source: Option<String>,
    /// Who submitted the run.
    pub triggered_by: String,
    /// Whose approval counted (empty before the apply phase; never the run's author).
    pub approved_by: Vec<String>,
    /// The stack's credential targets for this phase.
    pub targets: Vec<String>,
    /// The stack's space, then its parent, … `root`: a target must serve one of them.
    pub space_chain: Vec<String>,
    /// The write that holds only while the lease does; it commits with the decision.
    pub lease_guard: Write,
}

/// At most this many of a CI token's claims go into an audit entry, each value cut to
/// [`MAX_RECORDED_VALUE`] bytes: a token's claims are the issuer's word about the job, never a
/// secret, but an entry must stay small whatever the issuer puts in them.
const MAX_RECORDED_CLAIMS: usize = 40;
const MAX_RECORDED_VALUE: usize = 256;

/// The scalar claims of a verified CI token worth keeping in the audit log (workflow, job,
/// environment, …), without the timestamps every token has. A number that is not an integer is
/// kept as its text: audit entries carry integers only, and an entry that cannot be encoded
/// would fail the whole exchange, refusal record included (found by `fuzz/`, target
/// `policy_input`).
pub(super) fn recordable_claims(claims: &Map<String, Value>) -> Map<String, Value> {
    claims
        .iter()
        .filter(|(name, _)| !matches!(name.as_str(), "iat" | "nbf" | "exp" | "aud"))
        .filter_map(|(name, value)| {
            let value = match value {
                Value::String(text) => {
                    Value::from(text.get(..text.floor_char_boundary(MAX_RECORDED_VALUE)).unwrap_or_default())
                }
                Value::Number(n) if n.is_i64() || n.is_u64() => value.clone(),
                Value::Number(n) => Value::from(n.to_string()),
                Value::Bool(_) => value.clone(),
                _ => return None,
            };
            Some((name.chars().take(64).collect(), value))
        })
        .take(MAX_RECORDED_CLAIMS)
        .collect()
}

fn string(claims: &Map<String, Value>, name: &str) -> Option<String> {
    match claims.get(name)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Reduces free text to the identifier alphabet run IDs and stack IDs use.
fn identifier(text: &str) -> String {
    text.chars().map(|c| if is_identifier_char(c) { c } else { '-' }).take(128).collect()
}

impl Subject {
    /// A Keyward run token: every field is in its claims.
    pub(super) fn from_run_token(issuer: &str, verified: VerifiedToken) -> Result<Self, String> {
        let claims = verified.claims;
        let jti = string(&claims, "jti").ok_or("token has no `jti` claim")?;
        let phase =
            string(&claims, "phase").and_then(|p| p.parse().ok()).ok_or("run token has no valid `phase` claim")?;
        let required = |name: &str| string(&claims, name).ok_or_else(|| format!("run token has no `{name}` claim"));
        let run = RunChain {
            run_id: required("run_id")?,
            stack_id: required("stack_id")?,
            stack: required("stack")?,
            phase,
            repository: string(&claims, "repository"),
            commit_sha: string(&claims, "commit_sha"),
            git_ref: string(&claims, "ref"),
            pull_request: claims.get("pull_request").and_then(Value::as_u64),
            ticket: string(&claims, "ticket"),
            pull_request_source: string(&claims, "pull_request_source"),
            triggered_by: string(&claims, "triggered_by"),
            // A token's `approved_by` claim is never taken on its word: the exchange reads the
            // run's recorded reviews instead (`Exchanger::recorded_approvals`).
            approved_by: Vec::new(),
            asserted_by: string(&claims, "asserted_by"),
        };
        let (pool, agent_id) = (string(&claims, "pool"), string(&claims, "agent_id"));
        Ok(Self {
            kind: SubjectKind::Run,
            issuer: issuer.to_owned(),
            replay_key: jti,
            expires_at: verified.expires_at,
            claims,
            run,
            pool,
            agent_id,
            allowed_targets: None,
            space_chain: None,
        })
    }

    /// A job: its run context comes from the broker's own records, its proof from the agent's
    /// certificate and lease.
    pub(super) fn from_job(job: &JobSubject) -> Self {
        let claims = Map::from_iter([
            ("sub".to_owned(), Value::from(job.agent_spiffe_id.as_str())),
            ("agent_id".to_owned(), Value::from(job.agent_id.as_str())),
            ("pool".to_owned(), Value::from(job.pool.as_str())),
            ("job_id".to_owned(), Value::from(job.job_id.as_str())),
            ("fencing_token".to_owned(), Value::from(job.fencing_token)),
        ]);
        let run = RunChain {
            repository: Some(job.repository.clone()),
            commit_sha: Some(job.commit_sha.clone()),
            git_ref: job.git_ref.clone(),
            pull_request: job.pull_request,
            ticket: job.ticket.clone(),
            pull_request_source: job.pull_request_source.clone(),
            triggered_by: Some(job.triggered_by.clone()),
            approved_by: job.approved_by.clone(),
            ..RunChain::new(job.run_id.clone(), job.stack.clone(), job.stack.clone(), job.phase)
        };
        Self {
            kind: SubjectKind::Job,
            issuer: job.trust_domain.clone(),
            replay_key: format!("job:{}#{}", job.job_id, job.fencing_token),
            expires_at: job.lease_expires_at,
            claims,
            run,
            pool: Some(job.pool.clone()),
            agent_id: Some(job.agent_id.clone()),
            allowed_targets: Some(job.targets.clone()),
            space_chain: Some(job.space_chain.clone()),
        }
    }

    /// A CI token: the run context comes from the issuer's claim mapping; the phase from its
    /// configuration (never from the token).
    pub(super) fn from_ci_token(config: &IssuerConfig, verified: VerifiedToken, token: &str) -> Self {
        let claims = verified.claims;
        let mapping = &config.claims;
        let replay_key = string(&claims, "jti").unwrap_or_else(|| {
            // The signing input (header and claims), never the signature: ECDSA signatures are
            // malleable (`(r, n − s)` verifies too), so a digest of the signature would let one
            // observed token be exchanged twice.
            let signing_input = token.rsplit_once('.').map_or(token, |(input, _)| input);
            let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, signing_input.as_bytes());
            format!("sha256:{}", keyward_proto::encoding::hex(digest.as_ref()))
        });
        let repository = string(&claims, &mapping.repository);
        let stack = string(&claims, &mapping.stack).map_or_else(|| config.name.clone(), |s| identifier(&s));
        let id = string(&claims, &mapping.run_id)
            .map_or_else(|| identifier(&replay_key.replace("sha256:", "ci-")), |id| identifier(&id));
        // A commit that is not hexadecimal is dropped rather than failing the exchange.
        let commit_sha = string(&claims, &mapping.commit_sha)
            .filter(|c| (7..=64).contains(&c.len()) && c.bytes().all(|b| b.is_ascii_hexdigit()));
        let run = RunChain {
            repository,
            commit_sha,
            git_ref: string(&claims, &mapping.git_ref),
            triggered_by: string(&claims, &mapping.triggered_by),
            ..RunChain::new(id, stack.clone(), stack, config.phase)
        };
        Self {
            kind: SubjectKind::Ci(config.name.clone()),
            issuer: config.issuer.clone(),
            replay_key,
            expires_at: verified.expires_at,
            claims,
            run,
            pool: None,
            agent_id: None,
            allowed_targets: Some(config.targets.clone()),
            space_chain: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn recorded_claims_are_scalar_bounded_and_skip_timestamps() {
        let mut claims = Map::new();
        claims.insert("workflow".into(), json!("deploy"));
        claims.insert("run_attempt".into(), json!(2));
        claims.insert("exp".into(), json!(1));
        claims.insert("groups".into(), json!(["a"]));
        claims.insert("long".into(), json!("é".repeat(300)));
        let recorded = recordable_claims(&claims);
        assert_eq!(recorded.get("workflow"), Some(&json!("deploy")));
        assert_eq!(recorded.get("run_attempt"), Some(&json!(2)));
        assert!(recorded.get("exp").is_none() && recorded.get("groups").is_none());
        assert!(recorded.get("long").and_then(Value::as_str).is_some_and(|v| v.len() <= MAX_RECORDED_VALUE));
    }

    /// A CI token's claims are the issuer's word: a fractional number among them must not make
    /// the exchange's audit entry unencodable (audit entries carry integers only).
    #[test]
    fn fractional_claims_are_recorded_as_text_so_the_entry_encodes() {
        let mut claims = Map::new();
        claims.insert("run_attempt".into(), json!(1.5));
        claims.insert("big".into(), json!(u64::MAX));
        claims.insert("negative".into(), json!(-3));
        let recorded = recordable_claims(&claims);
        assert_eq!(recorded.get("run_attempt"), Some(&json!("1.5")));
        assert_eq!(recorded.get("big"), Some(&json!(u64::MAX)));
        assert_eq!(recorded.get("negative"), Some(&json!(-3)));
        let entry = crate::audit::AuditEvent::new(crate::audit::Kind::CredentialsDenied, 0, Default::default())
            .with("subject_claims", Value::Object(recorded));
        assert!(entry.prepare().is_ok(), "the entry recording the claims encodes");
    }
}
