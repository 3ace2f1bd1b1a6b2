//! What an agent's work stream does, apart from how it is spelled on the wire.
//!
//! A stream opens with the agent's self-description: the agent joins the [`hub`](super::hub)
//! holding the leases it has on record (it may still run them from an earlier connection) and
//! its description is recorded for operators. Each heartbeat re-checks that the agent may still
//! work (a revocation on another replica ends the stream here too), renews the leases of the jobs
//! it names and cancels any it should not be running. A job's end is sealed with the head of its
//! log as this broker verified it, then recorded. The gRPC edge ([`crate::grpc`]) decodes the
//! messages and calls these.

use std::collections::HashMap;

use tokio::sync::mpsc;

use super::hub::{Disconnect, Held, Outbound, SessionGuard};
use super::{AgentError, Agents};
use crate::joblogs::StreamLogs;
use crate::runs::tool::{Tool, Tools};
use crate::runs::{JobOutcome, JobReport};
use crate::store::{AgentHello, AgentRow};

/// Most jobs one agent may run at once.
pub const MAX_CAPACITY: u32 = 16;
/// How stale an agent's recorded "last seen" time may get before a heartbeat rewrites it.
const LAST_SEEN_RESOLUTION: i64 = 60;

/// What an agent says about itself when its stream opens, already bounded by the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Its version.
    pub version: String,
    /// How many jobs it runs at once (1 to [`MAX_CAPACITY`]).
    pub capacity: usize,
    /// `terraform version` on its host, if it has Terraform.
    pub terraform_version: Option<String>,
    /// How it isolates jobs, as operators read it (`sandbox network=none`, `process`).
    pub isolation: String,
    /// The tools whose stacks' jobs it takes.
    pub can_run: Tools,
    /// The tools it reported and their versions (empty: an agent older than tool reports).
    pub tools: Vec<(Tool, String)>,
}

/// A job's end as its lease holder reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// The job.
    pub job_id: String,
    /// The lease it ran under.
    pub fencing_token: u64,
    /// The digest of its last log chunk (empty: it wrote none).
    pub final_log_digest: Vec<u8>,
    /// How many chunks its log has.
    pub log_chunks: u64,
    /// How it ended.
    pub outcome: JobOutcome,
    /// The sandbox layers its processes ran under, in order.
    pub layers: Vec<String>,
}

impl Agents {
    /// Opens `agent`'s session on this broker: it holds the leases on record for it, and its
    /// `hello` is recorded. The receiver carries what the broker tells the agent.
    pub async fn open_session(
        &self,
        agent: &AgentRow,
        hello: &Hello,
    ) -> Result<(SessionGuard, mpsc::Receiver<Outbound>), AgentError> {
        let held: HashMap<String, i64> =
            self.store.leased_jobs_of(&agent.id).await?.into_iter().map(|job| (job.id, job.fencing_token)).collect();
        let draining = agent.state == "draining";
        let session = self.hub().register(&agent.id, &agent.pool, hello.capacity, held, draining, hello.can_run);
        let tools = (!hello.tools.is_empty()).then(|| {
            let map: std::collections::BTreeMap<&str, &str> =
                hello.tools.iter().map(|(tool, version)| (tool.as_str(), version.as_str())).collect();
            serde_json::to_string(&map).unwrap_or_default()
        });
        let reported = AgentHello {
            version: &hello.version,
            terraform_version: hello.terraform_version.as_deref().filter(|v| !v.is_empty()),
            isolation: &hello.isolation,
            tools: tools.as_deref(),
        };
        if let Err(error) = self.store.agent_hello(&agent.id, self.clock.now(), &reported).await {
            tracing::warn!(agent_id = %agent.id, %error, "could not record an agent's hello");
        }
        Ok(session)
    }

    /// Renews the leases `agent` reports running, cancels jobs it should not be running, and
    /// re-checks that it may still work; false ends the stream.
    pub async fn heartbeat(&self, agent: &AgentRow, running: &[String]) -> bool {
        let now = self.clock.now();
        let Some(current) = self.recheck(agent).await else { return false };
        if current.state == "revoked" {
            self.hub.cut(&agent.id, Disconnect::Revoked);
            return false;
        }
        if current.state == "draining" {
            self.hub.drain(&agent.id, "the agent is draining");
        }
        // "Last seen" is for operators, to the minute: not a write per heartbeat per agent.
        if current.last_seen_at.is_none_or(|seen| now - seen >= LAST_SEEN_RESOLUTION) {
            let _ = self.store.agent_seen(&agent.id, now).await;
        }
        let lease = i64::try_from(self.settings.lease.as_secs()).unwrap_or(30);
        for job_id in running.iter().take(usize::try_from(MAX_CAPACITY).unwrap_or(16)) {
            let renewed = match self.hub.held(&agent.id, job_id) {
                Held::Renew(token) => {
                    self.store.renew_lease(job_id, &agent.id, token, now + lease).await.unwrap_or(true)
                }
                Held::Unknown => false,
            };
            if !renewed {
                self.hub.cancel(&agent.id, job_id, "this agent no longer holds the job's lease");
            }
        }
        true
    }

    /// `agent` as stored now; `None` when it is gone. A store failure keeps the stream (with
    /// what was known).
    async fn recheck(&self, agent: &AgentRow) -> Option<AgentRow> {
        match self.store.agent(&agent.id).await {
            Ok(current) => current,
            Err(error) => {
                tracing::warn!(%error, "could not re-check an agent; keeping its stream");
                Some(agent.clone())
            }
        }
    }

    /// `agent` says it is draining (SIGTERM): it is given nothing new, and that is recorded.
    pub async fn agent_draining(&self, agent: &AgentRow, reason: &str) {
        tracing::info!(agent_id = %agent.id, reason, "agent draining");
        self.hub.drain(&agent.id, reason);
        if let Err(error) = self.draining_by_itself(agent).await {
            tracing::warn!(%error, "could not record an agent's drain");
        }
    }

    /// Records the end of a job `agent` ran, sealed with its log's head as verified on `logs`,
    /// and frees its slot. Nothing is recorded when the head cannot be read: the agent sends the
    /// result again on its next connection.
    pub async fn finished(&self, agent: &AgentRow, logs: &mut StreamLogs, finished: Finished) {
        let Ok(fencing_token) = i64::try_from(finished.fencing_token) else { return };
        let job_id = finished.job_id.as_str();
        let seal = match self
            .logs
            .seal(logs, job_id, finished.fencing_token, &finished.final_log_digest, finished.log_chunks)
            .await
        {
            Ok(seal) => seal,
            Err(error) => {
                tracing::warn!(agent_id = %agent.id, job_id, %error, "could not read a job's log head");
                return;
            }
        };
        if !seal.complete {
            tracing::warn!(agent_id = %agent.id, job_id, stored = seal.chunks, reported = finished.log_chunks, "a job's log is incomplete");
        }
        let success = !matches!(finished.outcome, JobOutcome::Failed(_));
        let report = JobReport { outcome: finished.outcome, log: Some(seal), layers: finished.layers };
        match self.runs.finish_job(job_id, &agent.id, fencing_token, report).await {
            Ok(()) => {
                logs.forget(job_id, finished.fencing_token);
                tracing::info!(agent_id = %agent.id, job_id, success, "job finished");
            }
            Err(error) => tracing::warn!(agent_id = %agent.id, job_id, %error, "job result refused"),
        }
        self.hub.release(&agent.id, job_id);
    }
}
