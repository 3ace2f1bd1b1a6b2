//! Credentials for a job, asked for by the agent that holds its lease (the `Credentials` RPC).
//!
//! The agent proves who it is with its certificate and what it may ask for with the job's lease
//! and fencing token; the exchange path then does what it does for every subject: the phase rule
//! (a plan never gets a write target), the job's own targets, the `keyward.credentials` policy,
//! and a durable record before anything leaves the broker. The lease is checked a second time in
//! the transaction that records the decision, so a lease that expires or moves meanwhile issues
//! nothing.
//!
//! What the exchange returns becomes the environment the agent gives the job's process, in the
//! names the AWS SDKs and the Vault CLI read on their own ([`JobEnvironment`]; the gRPC edge
//! puts it on the wire).

use std::collections::HashMap;

use crate::exchange::{ExchangeResponse, JobSubject};
use crate::runs::HeldJob;
use crate::store::AgentRow;

/// The file variable of a web-identity token ("exchange in the worker").
pub const AWS_WEB_IDENTITY_TOKEN_FILE: &str = "AWS_WEB_IDENTITY_TOKEN_FILE";
/// The file variable of the secrets and certificates a Vault target read.
pub const VAULT_SECRETS_FILE: &str = "KEYWARD_VAULT_SECRETS_FILE";

/// The subject of a credential request for `held`, by `agent` (identified as `spiffe_id`).
pub(super) fn job_subject(
    held: &HeldJob,
    agent: &AgentRow,
    spiffe_id: String,
    trust_domain: &str,
    now: i64,
    space_chain: Vec<String>,
) -> JobSubject {
    let (job, run) = (&held.job, &held.run);
    JobSubject {
        job_id: job.id.clone(),
        fencing_token: job.fencing_token,
        lease_expires_at: held.lease_expires_at,
        agent_id: agent.id.clone(),
        agent_spiffe_id: spiffe_id,
        trust_domain: format!("spiffe://{trust_domain}"),
        pool: agent.pool.clone(),
        run_id: run.id.clone(),
        stack: run.stack.clone(),
        phase: job.phase,
        repository: held.stack.spec.repository.clone(),
        commit_sha: run.commit_sha.clone(),
        git_ref: run.git_ref.clone(),
        pull_request: run.pull_request.and_then(|pr| u64::try_from(pr).ok()),
        ticket: run.ticket.clone(),
        pull_request_source: run.pull_request_source.clone(),
        triggered_by: run.triggered_by.clone(),
        approved_by: held.approved_by.clone(),
        targets: held.targets().to_vec(),
        space_chain,
        lease_guard: held.lease_guard(now),
    }
}

/// What a job's processes are given for one target: variables, secrets in files, and when
/// they stop working. Every value is a secret as far as printing goes.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct JobEnvironment {
    /// Name → value, for the process's environment.
    pub variables: HashMap<String, String>,
    /// When the credentials expire (Unix seconds).
    pub expires_at: i64,
    /// Secrets the job reads from files: the agent writes each into a private file and sets
    /// its variable to the path.
    pub files: Vec<JobFile>,
}

/// A secret the job reads from a file.
#[derive(Clone, PartialEq, Eq)]
pub struct JobFile {
    /// The variable that names the file.
    pub variable: String,
    /// What the file holds.
    pub content: Vec<u8>,
}

impl std::fmt::Debug for JobEnvironment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&str> = self.variables.keys().map(String::as_str).collect();
        names.sort_unstable();
        f.debug_struct("JobEnvironment")
            .field("variables", &names)
            .field("expires_at", &self.expires_at)
            .field("files", &self.files)
            .finish()
    }
}

impl std::fmt::Debug for JobFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobFile").field("variable", &self.variable).finish_non_exhaustive()
    }
}

/// The job's environment for what an exchange issued. `now` dates a Vault token's expiry.
pub(super) fn response(issued: ExchangeResponse, now: i64) -> JobEnvironment {
    let mut out = JobEnvironment::default();
    let mut set = |name: &str, value: &str| {
        out.variables.insert(name.to_owned(), value.to_owned());
    };
    match issued {
        ExchangeResponse::Aws(aws) => {
            let credentials = &aws.credentials;
            set("AWS_ACCESS_KEY_ID", &credentials.access_key_id);
            set("AWS_SECRET_ACCESS_KEY", &credentials.secret_access_key);
            set("AWS_SESSION_TOKEN", &credentials.session_token);
            set("AWS_REGION", &aws.region);
            set("AWS_DEFAULT_REGION", &aws.region);
            out.expires_at = credentials.expires_at;
        }
        ExchangeResponse::AwsWorker(aws) => {
            set("AWS_ROLE_ARN", &aws.role_arn);
            set("AWS_ROLE_SESSION_NAME", &aws.role_session_name);
            set("AWS_REGION", &aws.region);
            set("AWS_DEFAULT_REGION", &aws.region);
            if let Some(endpoint) = &aws.sts_endpoint {
                set("AWS_ENDPOINT_URL_STS", endpoint);
            }
            out.expires_at = aws.token_expires_at;
            out.files.push(JobFile {
                variable: AWS_WEB_IDENTITY_TOKEN_FILE.to_owned(),
                content: aws.web_identity_token.expose().as_bytes().to_vec(),
            });
        }
        ExchangeResponse::Vault { issued, address } => {
            set("VAULT_ADDR", &address);
            if let Some(token) = &issued.token {
                set("VAULT_TOKEN", token);
            }
            out.expires_at = now.saturating_add(i64::try_from(issued.lease_duration).unwrap_or(i64::MAX));
            if issued.has_material() {
                out.files.push(JobFile {
                    variable: VAULT_SECRETS_FILE.to_owned(),
                    content: issued.material().to_string().into_bytes(),
                });
            }
        }
    }
    out
}

/// Why a job got no credentials.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The job, its lease or its fencing token did not check out.
    #[error(transparent)]
    Lease(#[from] crate::runs::RunError),
    /// The exchange refused, or failed.
    #[error(transparent)]
    Exchange(#[from] crate::exchange::ExchangeError),
    /// The broker has no credential targets.
    #[error("this broker has no credential targets configured")]
    NoTargets,
}

impl super::Agents {
    /// Credentials for `target`, for the job `job_id` that `agent` holds under `fencing_token`.
    pub async fn credentials(
        &self,
        agent: &AgentRow,
        job_id: &str,
        fencing_token: i64,
        target: &str,
        caller: &crate::audit::Context,
    ) -> Result<JobEnvironment, CredentialsError> {
        let held = self.runs.held_job(job_id, &agent.id, fencing_token).await?;
        self.runs.scan_gate(&held).await?;
        let exchanger = self.exchanger.as_ref().ok_or(CredentialsError::NoTargets)?;
        let now = self.clock.now();
        let spiffe_id = self.ca.spiffe_id(&agent.pool, &agent.id);
        // An unknown space (never stored) has no chain, and no target serves it.
        let chain = crate::spaces::tree(&self.store).await.map_err(crate::runs::RunError::from)?;
        let chain = chain.chain(&held.stack.spec.space).unwrap_or_default();
        let subject = job_subject(&held, agent, spiffe_id, self.ca.trust_domain(), now, chain);
        let issued = exchanger.exchange_for_job(&subject, target, caller).await?;
        Ok(response(issued, now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_environment_never_prints_its_values() {
        let environment = JobEnvironment {
            variables: [("AWS_SECRET_ACCESS_KEY".to_owned(), "hunter2-secret".to_owned())].into_iter().collect(),
            expires_at: 1,
            files: vec![JobFile { variable: VAULT_SECRETS_FILE.to_owned(), content: b"vault-secret".to_vec() }],
        };
        let printed = format!("{environment:?}");
        assert!(printed.contains("AWS_SECRET_ACCESS_KEY") && printed.contains(VAULT_SECRETS_FILE), "{printed}");
        assert!(!printed.contains("hunter2") && !printed.contains("vault-secret"), "{printed}");
    }
}
