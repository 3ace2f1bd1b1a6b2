//! What a running job asks of the broker besides its log: take this plan, give me the saved one;
//! judge this scan, and then give me the rest of my credentials.
//!
//! Why it exists: the runner and the Terraform phases speak of plans, scans and verdicts; this is
//! the one place that knows those travel as `AgentService` calls (`SubmitPlan`, `FetchPlan`,
//! `SubmitScan`, and a scanned job's credential calls) on the agent's mTLS channel, in parts small
//! enough for gRPC's message limit.

use keyward_proto::agent_v1::agent_service_client::AgentServiceClient;
use keyward_proto::agent_v1::{FetchPlanRequest, PlanPart, ScanReport, ScanSubmission, ScanVerdict};
use tonic::transport::Channel;

use std::path::Path;

use crate::credentials::{CredentialsError, JobCredentials};
use crate::job::Job;

/// The most bytes of a plan file or its JSON in one streamed part.
const PLAN_PART: usize = 128 * 1024;

/// The broker's side of a job's plans.
#[derive(Debug, Clone)]
pub struct Plans {
    client: AgentServiceClient<Channel>,
}

/// What the broker said of a submitted plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// SHA-256 of the saved plan, as the broker stored it.
    pub plan_sha256: Vec<u8>,
    /// The plan policy's warnings.
    pub warn: Vec<String>,
    /// The plan policy's denials (the run fails).
    pub deny: Vec<String>,
}

/// Why the broker did not take or give a plan, in its words.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// `SubmitPlan` failed.
    #[error("the broker refused the plan: {0}")]
    Refused(String),
    /// `FetchPlan` failed.
    #[error("cannot fetch the saved plan: {0}")]
    Fetch(String),
    /// `SubmitScan` failed.
    #[error("the broker refused the scan: {0}")]
    Scan(String),
}

impl Plans {
    /// Plans over the agent's connection to the broker.
    pub fn new(client: AgentServiceClient<Channel>) -> Self {
        Self { client }
    }

    /// Hands `job`'s saved plan and its (masked) JSON to the broker, which judges and stores them.
    pub async fn submit(&mut self, job: &Job, plan_file: &[u8], plan_json: &[u8]) -> Result<Verdict, PlanError> {
        let part = |plan_file: &[u8], plan_json: &[u8]| PlanPart {
            job_id: job.job_id.clone(),
            fencing_token: job.fencing_token,
            plan_file: plan_file.to_vec(),
            plan_json: plan_json.to_vec(),
        };
        let mut parts: Vec<PlanPart> = plan_file.chunks(PLAN_PART).map(|slice| part(slice, &[])).collect();
        parts.extend(plan_json.chunks(PLAN_PART).map(|slice| part(&[], slice)));
        let verdict = self
            .client
            .submit_plan(tokio_stream::iter(parts))
            .await
            .map_err(|status| PlanError::Refused(status.message().to_owned()))?
            .into_inner();
        Ok(Verdict { plan_sha256: verdict.plan_sha256, warn: verdict.warn, deny: verdict.deny })
    }

    /// Hands `job`'s scan reports to the broker, which judges and keeps them; its verdict.
    pub async fn submit_scan(&mut self, job: &Job, reports: Vec<ScanReport>) -> Result<ScanVerdict, PlanError> {
        let submission = ScanSubmission { job_id: job.job_id.clone(), fencing_token: job.fencing_token, reports };
        let verdict =
            self.client.submit_scan(submission).await.map_err(|status| PlanError::Scan(status.message().to_owned()))?;
        Ok(verdict.into_inner())
    }

    /// The rest of a scanned `job`'s credentials (state backend, variables, targets), asked for
    /// once its scan is allowed; files go under `parent`.
    pub async fn rest_of_credentials(
        &mut self,
        job: &Job,
        credentials: &mut JobCredentials,
        parent: &Path,
    ) -> Result<(), CredentialsError> {
        credentials.fetch_rest(&mut self.client, job, parent).await
    }

    /// The saved plan of `job`'s run, for its apply (the caller checks the digest).
    pub async fn fetch(&mut self, job: &Job) -> Result<Vec<u8>, PlanError> {
        let refused = |status: tonic::Status| PlanError::Fetch(status.message().to_owned());
        let request = FetchPlanRequest { job_id: job.job_id.clone(), fencing_token: job.fencing_token };
        let mut parts = self.client.fetch_plan(request).await.map_err(refused)?.into_inner();
        let mut plan_file = Vec::new();
        while let Some(part) = parts.message().await.map_err(refused)? {
            plan_file.extend_from_slice(&part.plan_file);
        }
        Ok(plan_file)
    }
}
