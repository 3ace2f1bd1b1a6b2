//! The `keyward.agent.v1.AgentService` implementation.
//!
//! `Enroll` is the only call that accepts a connection without a client certificate. Every other
//! call takes the agent's identity from the verified certificate of its TLS connection and checks
//! that the agent is enrolled and not revoked; no message field ever names the caller. A `Work`
//! stream re-checks revocation at every heartbeat, and a revocation on this broker cuts the stream
//! at once. The saved plans an agent's `SubmitPlan` streams hold together are bounded
//! ([`uploads`](crate::agents::uploads)).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use keyward_proto::agent_v1::agent_service_server::AgentService;
use keyward_proto::agent_v1::{
    AgentMessage, BrokerMessage, CredentialsRequest, CredentialsResponse, EnrollRequest, EnrollResponse,
    FetchPlanRequest, Hello, JobVariable, JobVariablesRequest, JobVariablesResponse, PlanPart, RenewRequest,
    ScanSubmission, ScanVerdict, SignedLogChunk, SourceCredentialsRequest, SourceCredentialsResponse,
    StateBackendRequest, StateBackendResponse, SubmitPlanResponse, agent_message,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status, Streaming};

use super::{status, wire};
use crate::agents::hub::{Disconnect, Outbound, Receipt};
use crate::agents::uploads::PlanUploads;
use crate::agents::{Agents, Certified, Enrollment};
use crate::audit::Context;
use crate::joblogs::{MAX_REJECTIONS, StreamLogs};
use crate::runs::{HeldJob, MAX_PLAN_FILE, MAX_PLAN_JSON};
use crate::store::AgentRow;

/// How long a new `Work` stream has to say `Hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The gRPC service over [`Agents`].
#[derive(Debug, Clone)]
pub struct AgentGrpc {
    agents: Agents,
    uploads: Arc<PlanUploads>,
}

impl AgentGrpc {
    /// The service.
    pub fn new(agents: Agents) -> Self {
        Self { agents, uploads: Arc::new(PlanUploads::new(MAX_PLAN_FILE + MAX_PLAN_JSON)) }
    }

    /// The enrolled, unrevoked agent behind `request`'s client certificate.
    async fn caller<T>(&self, request: &Request<T>) -> Result<AgentRow, Status> {
        let certificates = request
            .peer_certs()
            .ok_or_else(|| Status::unauthenticated("this call needs the agent's client certificate (mTLS)"))?;
        let leaf = certificates.first().ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        self.agents.authenticate(leaf).await.map_err(status::agent)
    }

    /// The job `job_id` whose lease `fencing_token` `agent` holds, unexpired.
    async fn held(&self, agent: &AgentRow, job_id: &str, fencing_token: u64) -> Result<HeldJob, Status> {
        let token = i64::try_from(fencing_token).map_err(|_| Status::invalid_argument("bad fencing token"))?;
        self.agents.runs().held_job(job_id, &agent.id, token).await.map_err(status::run)
    }

    fn certified(&self, certified: Certified) -> EnrollResponse {
        EnrollResponse {
            agent_id: certified.agent_id,
            pool: certified.pool,
            certificate_der: certified.certificate,
            ca_chain_der: vec![self.agents.ca().certificate().to_vec()],
            not_after_unix: certified.not_after,
            work_endpoint: self.agents.settings().endpoint.clone(),
        }
    }
}

/// The `Work` response stream.
type WorkStream = Pin<Box<dyn Stream<Item = Result<BrokerMessage, Status>> + Send>>;

/// The `FetchPlan` response stream.
type PlanStream = Pin<Box<dyn Stream<Item = Result<PlanPart, Status>> + Send>>;

/// The largest slice of a plan in one part.
const PLAN_PART: usize = 128 * 1024;

#[tonic::async_trait]
impl AgentService for AgentGrpc {
    async fn enroll(&self, request: Request<EnrollRequest>) -> Result<Response<EnrollResponse>, Status> {
        let remote_addr = request.remote_addr().map(|a| a.to_string());
        let body = request.into_inner();
        let enrollment = Enrollment {
            join_token: body.join_token,
            csr: body.csr_der,
            hostname: body.hostname,
            version: body.agent_version,
            remote_addr,
        };
        let certified = self.agents.enroll(enrollment).await.map_err(status::agent)?;
        Ok(Response::new(self.certified(certified)))
    }

    async fn renew(&self, request: Request<RenewRequest>) -> Result<Response<EnrollResponse>, Status> {
        let agent = self.caller(&request).await?;
        let certified = self.agents.renew(&agent, &request.into_inner().csr_der).await.map_err(status::agent)?;
        tracing::info!(agent_id = %agent.id, not_after = certified.not_after, "agent certificate renewed");
        Ok(Response::new(self.certified(certified)))
    }

    type WorkStream = WorkStream;

    async fn work(&self, request: Request<Streaming<AgentMessage>>) -> Result<Response<Self::WorkStream>, Status> {
        let agent = self.caller(&request).await?;
        let certificate = request.peer_certs().and_then(|c| c.first().map(|c| c.to_vec())).unwrap_or_default();
        let mut inbound = request.into_inner();
        let hello = wire::hello(first_hello(&mut inbound).await?)?;
        let (guard, outbox) = self.agents.open_session(&agent, &hello).await.map_err(status::agent)?;
        let logs = StreamLogs::new(&agent.id, &certificate);
        let worker = StreamWorker { agents: self.agents.clone(), agent, replies: guard.outbox.clone() };
        tokio::spawn(async move {
            let closed = Arc::clone(&guard.closed);
            tokio::select! {
                () = worker.read(inbound, logs) => {}
                () = closed.notified() => {}
            }
            drop(guard);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(outbox).map(wire::outbound))))
    }

    async fn credentials(&self, request: Request<CredentialsRequest>) -> Result<Response<CredentialsResponse>, Status> {
        let agent = self.caller(&request).await?;
        let caller = Context {
            remote_addr: request.remote_addr().map(|a| a.to_string()),
            request_id: Some(uuid::Uuid::now_v7().to_string()),
            ..Context::default()
        };
        let body = request.into_inner();
        let fencing_token =
            i64::try_from(body.fencing_token).map_err(|_| Status::invalid_argument("bad fencing token"))?;
        match self.agents.credentials(&agent, &body.job_id, fencing_token, &body.target, &caller).await {
            Ok(environment) => {
                tracing::info!(agent_id = %agent.id, job_id = %body.job_id, credential_target = %body.target, "job credentials issued");
                Ok(Response::new(wire::credentials(environment)))
            }
            Err(error) => {
                tracing::info!(agent_id = %agent.id, job_id = %body.job_id, credential_target = %body.target, %error, "job credentials refused");
                Err(status::credentials(error))
            }
        }
    }

    async fn submit_plan(&self, request: Request<Streaming<PlanPart>>) -> Result<Response<SubmitPlanResponse>, Status> {
        let agent = self.caller(&request).await?;
        let mut parts = request.into_inner();
        // Held until the plan is judged and stored: all of this agent's plans in flight together
        // stay within one plan's worth of memory.
        let mut upload = self.uploads.start(&agent.id);
        let first = parts.message().await?.ok_or_else(|| Status::invalid_argument("no plan was sent"))?;
        upload.take(first.plan_file.len() + first.plan_json.len()).map_err(status::over_budget)?;
        let token = i64::try_from(first.fencing_token).map_err(|_| Status::invalid_argument("bad fencing token"))?;
        let job_id = first.job_id.clone();
        let held = self.agents.runs().held_job(&job_id, &agent.id, token).await.map_err(status::run)?;
        let (mut plan_file, mut plan_json) = (first.plan_file, first.plan_json);
        while let Some(part) = parts.message().await? {
            if part.job_id != job_id || part.fencing_token != first.fencing_token {
                return Err(Status::invalid_argument("every part of a plan names the same job and lease"));
            }
            if plan_file.len() + part.plan_file.len() > MAX_PLAN_FILE
                || plan_json.len() + part.plan_json.len() > MAX_PLAN_JSON
            {
                return Err(Status::invalid_argument(format!(
                    "the plan is too large (at most {MAX_PLAN_FILE} bytes of plan and {MAX_PLAN_JSON} of JSON)"
                )));
            }
            upload.take(part.plan_file.len() + part.plan_json.len()).map_err(status::over_budget)?;
            plan_file.extend_from_slice(&part.plan_file);
            plan_json.extend_from_slice(&part.plan_json);
        }
        let verdict = self.agents.runs().submit_plan(&held, &plan_file, &plan_json).await.map_err(status::run)?;
        tracing::info!(agent_id = %agent.id, job_id = %job_id, denied = !verdict.deny.is_empty(), "saved plan received");
        Ok(Response::new(SubmitPlanResponse { plan_sha256: verdict.sha256, deny: verdict.deny, warn: verdict.warn }))
    }

    async fn source_credentials(
        &self,
        request: Request<SourceCredentialsRequest>,
    ) -> Result<Response<SourceCredentialsResponse>, Status> {
        let agent = self.caller(&request).await?;
        let body = request.into_inner();
        let held = self.held(&agent, &body.job_id, body.fencing_token).await?;
        let issued = self.agents.runs().source_credentials(&held).await.map_err(status::run)?;
        tracing::info!(agent_id = %agent.id, job_id = %body.job_id, url_prefix = %issued.url_prefix, "repository credentials issued");
        Ok(Response::new(SourceCredentialsResponse {
            url_prefix: issued.url_prefix,
            username: issued.username,
            password: issued.password.expose().to_owned(),
        }))
    }

    async fn state_backend(
        &self,
        request: Request<StateBackendRequest>,
    ) -> Result<Response<StateBackendResponse>, Status> {
        let agent = self.caller(&request).await?;
        let body = request.into_inner();
        let held = self.held(&agent, &body.job_id, body.fencing_token).await?;
        let runs = self.agents.runs();
        runs.scan_gate(&held).await.map_err(status::run)?;
        if !held.stack.spec.managed_state {
            return Err(Status::failed_precondition("the broker does not keep this stack's state"));
        }
        let address = format!("{}/v1/stacks/{}/state", self.agents.settings().api_url, held.stack.spec.name);
        let password = runs.state_password(&held.job.id, held.job.fencing_token);
        Ok(Response::new(StateBackendResponse {
            address,
            username: held.job.id.clone(),
            password: password.as_str().to_owned(),
        }))
    }

    async fn job_variables(
        &self,
        request: Request<JobVariablesRequest>,
    ) -> Result<Response<JobVariablesResponse>, Status> {
        let agent = self.caller(&request).await?;
        let body = request.into_inner();
        let held = self.held(&agent, &body.job_id, body.fencing_token).await?;
        let runs = self.agents.runs();
        runs.scan_gate(&held).await.map_err(status::run)?;
        let variables = runs.job_variables(&held).await.map_err(|error| match error {
            crate::runs::contexts::ContextError::Run(run) => status::run(run),
            other => Status::failed_precondition(other.to_string()),
        })?;
        let variables = variables
            .into_iter()
            .map(|v| JobVariable {
                name: v.name,
                value: v.value.as_str().to_owned(),
                secret: v.secret,
                file: v.file.unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(JobVariablesResponse { variables }))
    }

    async fn submit_scan(&self, request: Request<ScanSubmission>) -> Result<Response<ScanVerdict>, Status> {
        let agent = self.caller(&request).await?;
        let body = request.into_inner();
        let held = self.held(&agent, &body.job_id, body.fencing_token).await?;
        let reports = body.reports.into_iter().map(wire::scan_report).collect();
        let verdict = self.agents.runs().submit_scan(&held, reports).await.map_err(status::run)?;
        tracing::info!(agent_id = %agent.id, job_id = %body.job_id, allowed = verdict.allowed(), "scan judged");
        Ok(Response::new(ScanVerdict { allowed: verdict.allowed(), deny: verdict.deny, warn: verdict.warn }))
    }

    type FetchPlanStream = PlanStream;

    async fn fetch_plan(&self, request: Request<FetchPlanRequest>) -> Result<Response<Self::FetchPlanStream>, Status> {
        let agent = self.caller(&request).await?;
        let body = request.into_inner();
        let held = self.held(&agent, &body.job_id, body.fencing_token).await?;
        let (plan_file, _) = self.agents.runs().saved_plan(&held).await.map_err(status::run)?;
        let parts: Vec<Result<PlanPart, Status>> = plan_file
            .chunks(PLAN_PART)
            .map(|slice| {
                Ok(PlanPart {
                    job_id: body.job_id.clone(),
                    fencing_token: body.fencing_token,
                    plan_file: slice.to_vec(),
                    plan_json: Vec::new(),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(parts))))
    }
}

/// Reads one agent's work stream.
struct StreamWorker {
    agents: Agents,
    agent: AgentRow,
    replies: mpsc::Sender<Outbound>,
}

impl StreamWorker {
    async fn read(&self, mut inbound: Streaming<AgentMessage>, mut logs: StreamLogs) {
        loop {
            let message = match inbound.message().await {
                Ok(Some(message)) => message,
                Ok(None) => return,
                Err(error) => {
                    tracing::info!(agent_id = %self.agent.id, %error, "work stream ended");
                    return;
                }
            };
            let carry_on = match message.kind {
                Some(agent_message::Kind::Heartbeat(heartbeat)) => {
                    self.agents.heartbeat(&self.agent, &heartbeat.running_job_ids).await
                }
                Some(agent_message::Kind::Result(result)) => {
                    self.agents.finished(&self.agent, &mut logs, wire::finished(result)).await;
                    true
                }
                Some(agent_message::Kind::Draining(draining)) => {
                    self.agents.agent_draining(&self.agent, &draining.reason).await;
                    true
                }
                Some(agent_message::Kind::JobEvent(event)) => {
                    match wire::job_state(&event) {
                        Some(state) => {
                            tracing::info!(agent_id = %self.agent.id, job_id = %event.job_id, state, "job event")
                        }
                        None => {
                            tracing::warn!(agent_id = %self.agent.id, job_id = %event.job_id, "job event without a state refused")
                        }
                    }
                    true
                }
                Some(agent_message::Kind::LogChunk(chunk)) => self.log_chunk(chunk, &mut logs).await,
                Some(agent_message::Kind::Hello(_)) | None => {
                    tracing::warn!(agent_id = %self.agent.id, "unexpected message on the work stream");
                    true
                }
            };
            if !carry_on {
                return;
            }
        }
    }

    /// Verifies and stores a log chunk and answers with its receipt; false ends the stream (too
    /// many bad chunks, or the stream is gone).
    async fn log_chunk(&self, chunk: SignedLogChunk, logs: &mut StreamLogs) -> bool {
        let outcome = self.agents.logs().receive(logs, &chunk).await;
        let refused = match &outcome {
            Ok(()) => None,
            Err(rejection) => {
                tracing::warn!(agent_id = %self.agent.id, job_id = %chunk.job_id, seq = chunk.seq, %rejection, "log chunk rejected");
                self.agents.logs().record_rejection(logs, &chunk, rejection).await;
                Some(rejection.to_string())
            }
        };
        let receipt = Receipt { job_id: chunk.job_id, fencing_token: chunk.fencing_token, seq: chunk.seq, refused };
        if self.replies.send(Outbound::Receipt(receipt)).await.is_err() {
            return false;
        }
        if logs.recorded >= MAX_REJECTIONS {
            let _ = self.replies.send(Outbound::Disconnect(Disconnect::BadLogChunks(MAX_REJECTIONS))).await;
            return false;
        }
        true
    }
}

/// The first message of a work stream, which must be `Hello`, within [`HELLO_TIMEOUT`].
async fn first_hello(inbound: &mut Streaming<AgentMessage>) -> Result<Hello, Status> {
    match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
        Ok(Ok(Some(AgentMessage { kind: Some(agent_message::Kind::Hello(hello)) }))) => Ok(hello),
        Ok(Ok(Some(_))) => Err(Status::invalid_argument("the first message on a work stream must be Hello")),
        Ok(Ok(None)) => Err(Status::cancelled("the stream closed before Hello")),
        Ok(Err(status)) => Err(status),
        Err(_) => Err(Status::deadline_exceeded("no Hello within 10s")),
    }
}
