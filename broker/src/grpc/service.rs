//! The `keyward.agent.v1.AgentService` implementation.
//!
//! `Enroll` is the only call that accepts a connection without a client certificate. Every other
//! call takes the agent's identity from the verified certificate of its TLS connection and checks
//! that the agent is enrolled and not revoked; no message field ever names the caller. A `Work`
//! stream re-checks revocation at every heartbeat, and a revocation on this broker cuts the stream
//! at once. The saved plans an agent's `SubmitPlan` streams hold together are bounded
//! ([`uploads`](crate::agents::uploads)).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use keyward_proto::agent_v1::agent_service_server::AgentService;
use keyward_proto::agent_v1::{
    AgentMessage, BrokerMessage, CredentialsRequest, CredentialsResponse, EnrollRequest, EnrollResponse,
    FetchPlanRequest, Heartbeat, JobResult, LogReceipt, PlanPart, RenewRequest, SignedLogChunk,
    SourceCredentialsRequest, SourceCredentialsResponse, SubmitPlanResponse, agent_message, broker_message,
};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::agents::credentials::CredentialsError;
use crate::agents::hub::{Held, Outbound};
use crate::agents::uploads::{OverBudget, PlanUploads};
use crate::agents::{AgentError, Agents, Certified, Enrollment};
use crate::audit::Context;
use crate::exchange::ExchangeError;
use crate::logs::{MAX_REJECTIONS, StreamLogs};
use crate::runs::{Drift, JobOutcome, JobReport, MAX_PLAN_FILE, MAX_PLAN_JSON, RunError};
use crate::store::{AgentHello, AgentRow};

/// How long a new `Work` stream has to say `Hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Most jobs one agent may run at once.
const MAX_CAPACITY: u32 = 16;
/// How stale an agent's recorded "last seen" time may get before a heartbeat rewrites it.
const LAST_SEEN_RESOLUTION: i64 = 60;
/// Longest error text an agent may report for a job.
const MAX_ERROR: usize = 4096;

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
        self.agents.authenticate(leaf).await.map_err(status)
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
        let certified = self.agents.enroll(enrollment).await.map_err(status)?;
        Ok(Response::new(self.certified(certified)))
    }

    async fn renew(&self, request: Request<RenewRequest>) -> Result<Response<EnrollResponse>, Status> {
        let agent = self.caller(&request).await?;
        let certified = self.agents.renew(&agent, &request.into_inner().csr_der).await.map_err(status)?;
        tracing::info!(agent_id = %agent.id, not_after = certified.not_after, "agent certificate renewed");
        Ok(Response::new(self.certified(certified)))
    }

    type WorkStream = WorkStream;

    async fn work(&self, request: Request<Streaming<AgentMessage>>) -> Result<Response<Self::WorkStream>, Status> {
        let agent = self.caller(&request).await?;
        let certificate = request.peer_certs().and_then(|c| c.first().map(|c| c.to_vec())).unwrap_or_default();
        let mut inbound = request.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(AgentMessage { kind: Some(agent_message::Kind::Hello(hello)) }))) => hello,
            Ok(Ok(Some(_))) => {
                return Err(Status::invalid_argument("the first message on a work stream must be Hello"));
            }
            Ok(Ok(None)) => return Err(Status::cancelled("the stream closed before Hello")),
            Ok(Err(status)) => return Err(status),
            Err(_) => return Err(Status::deadline_exceeded("no Hello within 10s")),
        };
        if hello.capacity == 0 || hello.capacity > MAX_CAPACITY {
            return Err(Status::invalid_argument(format!("capacity must be 1-{MAX_CAPACITY}")));
        }
        let held: HashMap<String, i64> = self
            .agents
            .store()
            .leased_jobs_of(&agent.id)
            .await
            .map_err(|e| status(e.into()))?
            .into_iter()
            .map(|job| (job.id, job.fencing_token))
            .collect();
        let capacity = usize::try_from(hello.capacity).unwrap_or(1);
        let draining = agent.state == "draining";
        let (guard, outbox) = self.agents.hub().register(&agent.id, &agent.pool, capacity, held, draining);
        let (version, terraform, isolation) =
            (bounded(&hello.agent_version), bounded(&hello.terraform_version), bounded(&hello.isolation));
        let reported = AgentHello {
            version: &version,
            terraform_version: Some(terraform.as_str()).filter(|v| !v.is_empty()),
            isolation: &isolation,
        };
        if let Err(error) = self.agents.store().agent_hello(&agent.id, self.agents.clock().now(), &reported).await {
            tracing::warn!(agent_id = %agent.id, %error, "could not record an agent's hello");
        }
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
        Ok(Response::new(Box::pin(ReceiverStream::new(outbox))))
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
            Ok(response) => {
                tracing::info!(agent_id = %agent.id, job_id = %body.job_id, target = %body.target, "job credentials issued");
                Ok(Response::new(response))
            }
            Err(error) => {
                tracing::info!(agent_id = %agent.id, job_id = %body.job_id, target = %body.target, %error, "job credentials refused");
                Err(credentials_status(error))
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
        upload.take(first.plan_file.len() + first.plan_json.len()).map_err(over_budget)?;
        let token = i64::try_from(first.fencing_token).map_err(|_| Status::invalid_argument("bad fencing token"))?;
        let job_id = first.job_id.clone();
        let held = self.agents.runs().held_job(&job_id, &agent.id, token).await.map_err(run_status)?;
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
            upload.take(part.plan_file.len() + part.plan_json.len()).map_err(over_budget)?;
            plan_file.extend_from_slice(&part.plan_file);
            plan_json.extend_from_slice(&part.plan_json);
        }
        let verdict = self.agents.runs().submit_plan(&held, &plan_file, &plan_json).await.map_err(run_status)?;
        tracing::info!(agent_id = %agent.id, job_id = %job_id, denied = !verdict.deny.is_empty(), "saved plan received");
        Ok(Response::new(SubmitPlanResponse { plan_sha256: verdict.sha256, deny: verdict.deny, warn: verdict.warn }))
    }

    async fn source_credentials(
        &self,
        request: Request<SourceCredentialsRequest>,
    ) -> Result<Response<SourceCredentialsResponse>, Status> {
        let agent = self.caller(&request).await?;
        let body = request.into_inner();
        let token = i64::try_from(body.fencing_token).map_err(|_| Status::invalid_argument("bad fencing token"))?;
        let held = self.agents.runs().held_job(&body.job_id, &agent.id, token).await.map_err(run_status)?;
        let issued = self.agents.runs().source_credentials(&held).await.map_err(run_status)?;
        tracing::info!(agent_id = %agent.id, job_id = %body.job_id, url_prefix = %issued.url_prefix, "repository credentials issued");
        Ok(Response::new(SourceCredentialsResponse {
            url_prefix: issued.url_prefix,
            username: issued.username,
            password: issued.password.expose().to_owned(),
        }))
    }

    type FetchPlanStream = PlanStream;

    async fn fetch_plan(&self, request: Request<FetchPlanRequest>) -> Result<Response<Self::FetchPlanStream>, Status> {
        let agent = self.caller(&request).await?;
        let body = request.into_inner();
        let token = i64::try_from(body.fencing_token).map_err(|_| Status::invalid_argument("bad fencing token"))?;
        let held = self.agents.runs().held_job(&body.job_id, &agent.id, token).await.map_err(run_status)?;
        let (plan_file, _) = self.agents.runs().saved_plan(&held).await.map_err(run_status)?;
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
            match message.kind {
                Some(agent_message::Kind::Heartbeat(heartbeat)) => {
                    if !self.heartbeat(heartbeat).await {
                        return;
                    }
                }
                Some(agent_message::Kind::Result(result)) => self.result(result, &mut logs).await,
                Some(agent_message::Kind::Draining(draining)) => {
                    tracing::info!(agent_id = %self.agent.id, reason = %draining.reason, "agent draining");
                    self.agents.hub().drain(&self.agent.id, &draining.reason);
                    if let Err(error) = self.agents.draining_by_itself(&self.agent).await {
                        tracing::warn!(%error, "could not record an agent's drain");
                    }
                }
                Some(agent_message::Kind::JobEvent(event)) => {
                    tracing::info!(agent_id = %self.agent.id, job_id = %event.job_id, state = %event.state, "job event");
                }
                Some(agent_message::Kind::LogChunk(chunk)) => {
                    if !self.log_chunk(chunk, &mut logs).await {
                        return;
                    }
                }
                Some(agent_message::Kind::Hello(_)) | None => {
                    tracing::warn!(agent_id = %self.agent.id, "unexpected message on the work stream");
                }
            }
        }
    }

    /// Renews the leases the agent reports, cancels jobs it should not be running, and re-checks
    /// that the agent may still work; false ends the stream.
    async fn heartbeat(&self, heartbeat: Heartbeat) -> bool {
        let hub = self.agents.hub();
        let now = self.agents.clock().now();
        let current = match self.agents.store().agent(&self.agent.id).await {
            Ok(Some(current)) => current,
            Ok(None) => return false,
            Err(error) => {
                tracing::warn!(%error, "could not re-check an agent; keeping its stream");
                self.agent.clone()
            }
        };
        if current.state == "revoked" {
            hub.cut(&self.agent.id, "the agent was revoked");
            return false;
        }
        if current.state == "draining" {
            hub.drain(&self.agent.id, "the agent is draining");
        }
        // "Last seen" is for operators, to the minute: not a write per heartbeat per agent.
        if current.last_seen_at.is_none_or(|seen| now - seen >= LAST_SEEN_RESOLUTION) {
            let _ = self.agents.store().agent_seen(&self.agent.id, now).await;
        }
        let lease = i64::try_from(self.agents.settings().lease.as_secs()).unwrap_or(30);
        for job_id in heartbeat.running_job_ids.iter().take(usize::try_from(MAX_CAPACITY).unwrap_or(16)) {
            let renewed = match hub.held(&self.agent.id, job_id) {
                Held::Renew(token) => {
                    self.agents.store().renew_lease(job_id, &self.agent.id, token, now + lease).await.unwrap_or(true)
                }
                Held::Unknown => false,
            };
            if !renewed {
                hub.cancel(&self.agent.id, job_id, "this agent no longer holds the job's lease");
            }
        }
        true
    }

    /// Verifies and stores a log chunk and answers with its receipt; false ends the stream (too
    /// many bad chunks, or the stream is gone).
    async fn log_chunk(&self, chunk: SignedLogChunk, logs: &mut StreamLogs) -> bool {
        let outcome = self.agents.logs().receive(logs, &chunk).await;
        let reason = match &outcome {
            Ok(()) => String::new(),
            Err(rejection) => {
                tracing::warn!(agent_id = %self.agent.id, job_id = %chunk.job_id, seq = chunk.seq, %rejection, "log chunk rejected");
                self.agents.logs().record_rejection(logs, &chunk, rejection).await;
                rejection.to_string()
            }
        };
        let receipt = LogReceipt {
            job_id: chunk.job_id,
            fencing_token: chunk.fencing_token,
            seq: chunk.seq,
            accepted: outcome.is_ok(),
            reason,
        };
        let message = BrokerMessage { kind: Some(broker_message::Kind::LogReceipt(receipt)) };
        if self.replies.send(Ok(message)).await.is_err() {
            return false;
        }
        if logs.recorded >= MAX_REJECTIONS {
            let why = format!("{MAX_REJECTIONS} log chunks failed verification on this stream");
            let _ = self.replies.send(Err(Status::invalid_argument(why))).await;
            return false;
        }
        true
    }

    async fn result(&self, result: JobResult, logs: &mut StreamLogs) {
        let Ok(fencing_token) = i64::try_from(result.fencing_token) else { return };
        let seal = match self
            .agents
            .logs()
            .seal(logs, &result.job_id, result.fencing_token, &result.final_log_digest, result.log_chunks)
            .await
        {
            Ok(seal) => seal,
            Err(error) => {
                // Unrecorded: the agent sends the result again on its next connection.
                tracing::warn!(agent_id = %self.agent.id, job_id = %result.job_id, %error, "could not read a job's log head");
                return;
            }
        };
        if !seal.complete {
            tracing::warn!(agent_id = %self.agent.id, job_id = %result.job_id, stored = seal.chunks, reported = result.log_chunks, "a job's log is incomplete");
        }
        let outcome = if let (true, Some(drift)) = (result.success, result.drift) {
            JobOutcome::Checked(Drift { drifted: drift.drifted, summary: drift.summary })
        } else if result.success {
            JobOutcome::Succeeded
        } else {
            let mut error = result.error;
            error.truncate(error.floor_char_boundary(MAX_ERROR));
            JobOutcome::Failed(if error.is_empty() { "the agent reported a failure".to_owned() } else { error })
        };
        let report = JobReport { outcome, log: Some(seal), layers: result.isolation_layers };
        match self.agents.runs().finish_job(&result.job_id, &self.agent.id, fencing_token, report).await {
            Ok(()) => {
                tracing::info!(agent_id = %self.agent.id, job_id = %result.job_id, success = result.success, "job finished")
            }
            Err(error) => {
                tracing::warn!(agent_id = %self.agent.id, job_id = %result.job_id, %error, "job result refused")
            }
        }
        self.agents.hub().release(&self.agent.id, &result.job_id);
    }
}

/// Longest self-description field (version, isolation) an agent may report.
const MAX_REPORTED: usize = 64;

/// An agent-reported string cut to [`MAX_REPORTED`] printable characters.
fn bounded(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(MAX_REPORTED).collect()
}

/// The gRPC status for an agent error; internal errors are not described to the caller.
fn status(error: AgentError) -> Status {
    match error {
        AgentError::Invalid(message) => Status::invalid_argument(message),
        AgentError::Csr(csr) => Status::invalid_argument(csr.to_string()),
        AgentError::NotFound(message) => Status::not_found(message),
        AgentError::Conflict(message) => Status::failed_precondition(message),
        AgentError::Unauthenticated(message) => Status::unauthenticated(message),
        AgentError::Forbidden(message) => Status::permission_denied(message),
        AgentError::Ca(_) | AgentError::Store(_) | AgentError::Runs(_) => {
            tracing::error!(%error, "agent request failed");
            Status::unavailable("the broker could not complete the request; retry")
        }
    }
}

fn credentials_status(error: CredentialsError) -> Status {
    match error {
        CredentialsError::Lease(error) => run_status(error),
        CredentialsError::NoTargets => Status::failed_precondition(error.to_string()),
        CredentialsError::Exchange(error) => match &error {
            ExchangeError::InvalidRequest(_) | ExchangeError::InvalidTarget(_) => {
                Status::invalid_argument(error.to_string())
            }
            ExchangeError::InvalidGrant(_) | ExchangeError::Denied(_) | ExchangeError::UpstreamRefused(_) => {
                Status::permission_denied(error.to_string())
            }
            ExchangeError::Unavailable(_) | ExchangeError::UpstreamUnavailable(_) => {
                Status::unavailable(error.to_string())
            }
        },
    }
}

fn over_budget(error: OverBudget) -> Status {
    Status::resource_exhausted(error.to_string())
}

fn run_status(error: RunError) -> Status {
    match error {
        RunError::NotFound(message) => Status::not_found(message),
        RunError::Conflict(message) => Status::permission_denied(message),
        RunError::Invalid(message) => Status::invalid_argument(message),
        other => {
            tracing::error!(error = %other, "agent request failed");
            Status::unavailable("the broker could not complete the request; retry")
        }
    }
}
