//! `keyward-agent run`: stay connected, take jobs, report results, renew the certificate.
//!
//! The daemon outlives its connections. Jobs run in their own tasks and their results queue up
//! here, so a broker restart or a certificate renewal (which needs a new TLS connection) never
//! loses track of a running job: the next connection's first heartbeat names it again and the
//! broker renews its lease. Connections are retried with capped exponential backoff and jitter.
//!
//! Draining (SIGTERM, or the broker's `Drain`): take nothing new, finish what runs, report, exit.
//! A revoked or unknown agent stops at once: retrying cannot help it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use keyward_proto::agent_v1::agent_service_client::AgentServiceClient;
use keyward_proto::agent_v1::{
    AgentMessage, BrokerMessage, Draining, DriftReport, Heartbeat, Hello, JobAssignment, JobResult, RenewRequest,
    agent_message, broker_message,
};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Channel;

use crate::channel;
use crate::credentials::JobCredentials;
use crate::datadir::{DataDir, Identity};
use crate::enroll::{identity_from, key_and_csr, rediscover};
use crate::job::{Job, Refused};
use crate::launch::Layers;
use crate::logs::{Chunk, JobLog, MaskRules, Outbox, Patterns, Signer};
use crate::metrics::{self, JobOutcome};
use crate::plans::Plans;
use crate::runner::{Outcome, Runner};
use crate::slots::Slots;
use crate::tools::{Tool, Toolbox};

/// Heartbeat period when nothing shorter is needed.
const IDLE_HEARTBEAT: Duration = Duration::from_secs(10);
/// Shortest heartbeat period.
const MIN_HEARTBEAT: Duration = Duration::from_millis(500);
/// Failed connections in a row after which the agent asks the broker whether its endpoint moved.
const REDISCOVER_AFTER: u32 = 3;
/// First and largest reconnection delay.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(30));

/// Settings of the daemon.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Jobs run at once.
    pub capacity: u32,
    /// The phase runner.
    pub runner: Runner,
    /// The Terraform and OpenTofu binaries found, and their versions, reported in `Hello`.
    pub tools: Toolbox,
    /// Secret patterns masked in every job's log, besides the job's own credential values.
    pub mask_patterns: Patterns,
    /// The most bytes of output one job may log.
    pub log_limit: u64,
    /// Where jobs' files live and which host ids they run as, one slot per concurrent job.
    pub slots: Arc<Slots>,
}

/// Why the daemon stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The identity on disk is unusable.
    #[error(transparent)]
    DataDir(#[from] crate::datadir::DataDirError),
    /// The broker says this agent may not work (revoked, unknown).
    #[error("the broker refuses this agent: {0}; enroll again with a new join token")]
    Refused(String),
    /// The certificate expired while the broker was unreachable.
    #[error("the agent certificate expired at {0} (Unix time); enroll again with a new join token")]
    Expired(i64),
}

struct Running {
    fencing_token: u64,
    lease: Duration,
    cancel: Option<oneshot::Sender<String>>,
}

/// The daemon.
pub struct Daemon {
    dir: DataDir,
    settings: Settings,
    running: Mutex<HashMap<String, Running>>,
    results: Mutex<Vec<JobResult>>,
    results_ready: Notify,
    draining: Mutex<Option<String>>,
    drain_requested: Notify,
    outbox: Arc<Outbox>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon").field("dir", &self.dir).field("settings", &self.settings).finish_non_exhaustive()
    }
}

/// How one connection ended.
enum Ended {
    /// The certificate was renewed: reconnect with it at once.
    Renewed,
    /// Drained and everything reported.
    Drained,
    /// The stream closed or failed; retry after a pause.
    Lost(String),
}

impl Daemon {
    /// A daemon over the identity in `dir`.
    pub fn new(dir: DataDir, settings: Settings) -> Arc<Self> {
        Arc::new(Self {
            dir,
            settings,
            running: Mutex::new(HashMap::new()),
            results: Mutex::new(Vec::new()),
            results_ready: Notify::new(),
            draining: Mutex::new(None),
            drain_requested: Notify::new(),
            outbox: Arc::new(Outbox::default()),
        })
    }

    /// Asks the daemon to drain (SIGTERM).
    pub fn drain(&self, reason: &str) {
        let mut draining = self.draining.lock().unwrap_or_else(PoisonError::into_inner);
        if draining.is_none() {
            *draining = Some(reason.to_owned());
            tracing::info!(reason, "draining: finishing running jobs, taking no new ones");
        }
        self.drain_requested.notify_waiters();
    }

    fn is_draining(&self) -> bool {
        self.draining.lock().unwrap_or_else(PoisonError::into_inner).is_some()
    }

    fn idle(&self) -> bool {
        self.running.lock().unwrap_or_else(PoisonError::into_inner).is_empty()
            && self.results.lock().unwrap_or_else(PoisonError::into_inner).is_empty()
    }

    /// Runs until drained, or until the broker refuses the agent.
    pub async fn run(self: Arc<Self>) -> Result<(), DaemonError> {
        let mut delay = BACKOFF.0;
        let mut unreachable = 0_u32;
        let mut first = true;
        loop {
            let identity = self.dir.load()?;
            if identity.state.not_after <= now() {
                return Err(DaemonError::Expired(identity.state.not_after));
            }
            if !std::mem::take(&mut first) {
                metrics::global().reconnecting();
            }
            let ended = Arc::clone(&self).connection(&identity).await;
            metrics::global().connected(false);
            match ended {
                Ok(Ended::Drained) => return Ok(()),
                Ok(Ended::Renewed) => {
                    delay = BACKOFF.0;
                    unreachable = 0;
                }
                Ok(Ended::Lost(why)) => {
                    unreachable = 0;
                    tracing::warn!(reason = %why, retry_in = ?delay, "connection to the broker lost");
                    self.pause(delay).await;
                    delay = (delay * 2).min(BACKOFF.1);
                }
                Err(status) if matches!(status.code(), Code::PermissionDenied | Code::Unauthenticated) => {
                    return Err(DaemonError::Refused(status.message().to_owned()));
                }
                Err(status) => {
                    unreachable = unreachable.wrapping_add(1);
                    if unreachable.is_multiple_of(REDISCOVER_AFTER) && self.follow_endpoint(identity).await {
                        delay = BACKOFF.0;
                        continue;
                    }
                    tracing::warn!(error = %status.message(), retry_in = ?delay, "cannot reach the broker");
                    self.pause(delay).await;
                    delay = (delay * 2).min(BACKOFF.1);
                }
            }
            if self.is_draining() && self.idle() {
                return Ok(());
            }
        }
    }

    /// Asks the broker where its work endpoint is now; true when it moved and the new one is
    /// stored.
    async fn follow_endpoint(&self, mut identity: Identity) -> bool {
        match rediscover(&identity).await {
            Ok(Some(endpoint)) => {
                tracing::info!(from = %identity.state.endpoint, to = %endpoint, "the broker's agent endpoint moved");
                identity.state.endpoint = endpoint;
                match self.dir.store(&identity) {
                    Ok(()) => true,
                    Err(error) => {
                        tracing::warn!(%error, "cannot store the new endpoint");
                        false
                    }
                }
            }
            Ok(None) => false,
            Err(error) => {
                tracing::warn!(%error, "cannot ask the broker where its agent endpoint is");
                false
            }
        }
    }

    /// Sleeps `delay` plus up to a quarter of it, so a fleet does not reconnect in lockstep.
    async fn pause(&self, delay: Duration) {
        let mut byte = [0_u8; 1];
        let _ = aws_lc_rs::rand::fill(&mut byte);
        let jitter = delay / 4 * u32::from(byte[0]) / 255;
        tokio::time::sleep(delay + jitter).await;
    }

    /// One connection: Hello, then messages both ways until it ends.
    async fn connection(self: Arc<Self>, identity: &Identity) -> Result<Ended, tonic::Status> {
        let signer = Signer::new(identity).map_err(|e| tonic::Status::internal(e.to_string()))?;
        let mut client = channel::connect(&identity.state.endpoint, &identity.ca_pem, Some(identity))
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        // Chunks sent on an earlier connection without a receipt go first, in order.
        self.outbox.resend_unacknowledged();
        let (outbound, outbox) = mpsc::channel::<AgentMessage>(64);
        let send = |kind| AgentMessage { kind: Some(kind) };
        let _ = outbound
            .send(send(agent_message::Kind::Hello(Hello {
                agent_version: crate::version().to_owned(),
                capacity: self.settings.capacity,
                terraform_version: self.terraform_version(),
                job_isolation: self.settings.runner.isolation().wire().into(),
                runs_exec: !self.settings.runner.runs_terraform(),
                tools: if self.settings.runner.runs_terraform() { self.settings.tools.wire() } else { Vec::new() },
            })))
            .await;
        let _ = outbound.send(send(agent_message::Kind::Heartbeat(self.heartbeat()))).await;
        let draining = self.draining.lock().unwrap_or_else(PoisonError::into_inner).clone();
        if let Some(reason) = draining {
            let _ = outbound.send(send(agent_message::Kind::Draining(Draining { reason }))).await;
        }
        let mut inbound = client.work(ReceiverStream::new(outbox)).await?.into_inner();
        tracing::info!(agent_id = %identity.state.agent_id, endpoint = %identity.state.endpoint, "connected");
        metrics::global().connected(true);
        let renew_in = Duration::from_secs(u64::try_from(identity.renew_at() - now()).unwrap_or(0));
        let renewal = tokio::time::sleep(renew_in);
        tokio::pin!(renewal);
        let mut heartbeat = tokio::time::interval(self.heartbeat_period());
        heartbeat.tick().await;
        let mut told_draining = self.is_draining();
        loop {
            if !self.send_pending(&signer, &outbound).await? {
                return Ok(Ended::Lost("the stream closed".to_owned()));
            }
            if self.is_draining() && self.idle() {
                return Ok(Ended::Drained);
            }
            tokio::select! {
                message = inbound.message() => match message {
                    Ok(Some(message)) => self.handle(message, &client),
                    Ok(None) => return Ok(Ended::Lost("the broker closed the stream".to_owned())),
                    Err(status) if matches!(status.code(), Code::PermissionDenied | Code::Unauthenticated) => {
                        self.cancel_all(status.message());
                        return Err(status);
                    }
                    Err(status) => return Ok(Ended::Lost(status.message().to_owned())),
                },
                () = self.results_ready.notified() => {}
                () = self.outbox.ready.notified() => {}
                _ = heartbeat.tick() => {
                    if outbound.send(send(agent_message::Kind::Heartbeat(self.heartbeat()))).await.is_err() {
                        return Ok(Ended::Lost("the stream closed".to_owned()));
                    }
                    heartbeat = tokio::time::interval(self.heartbeat_period());
                    heartbeat.tick().await;
                }
                () = self.drain_requested.notified(), if !told_draining => {
                    told_draining = true;
                    let reason = self.draining.lock().unwrap_or_else(PoisonError::into_inner).clone().unwrap_or_default();
                    let _ = outbound.send(send(agent_message::Kind::Draining(Draining { reason }))).await;
                }
                () = &mut renewal => {
                    self.renew(&mut client, identity).await?;
                    return Ok(Ended::Renewed);
                }
            }
        }
    }

    /// Sends the chunks and results waiting, every job's chunks before its result (see
    /// [`take_pending`]). False when the stream closed; results not sent stay queued for the next
    /// connection, and chunks wait for their receipts anyway.
    async fn send_pending(
        &self,
        signer: &Signer,
        outbound: &mpsc::Sender<AgentMessage>,
    ) -> Result<bool, tonic::Status> {
        let send = |kind| AgentMessage { kind: Some(kind) };
        let (results, chunks) = take_pending(&self.results, &self.outbox);
        let mut results = results.into_iter();
        for chunk in chunks {
            let signed = match signer.sign(&chunk) {
                Ok(signed) => signed,
                Err(error) => {
                    self.requeue_results(results);
                    return Err(tonic::Status::internal(error.to_string()));
                }
            };
            if outbound.send(send(agent_message::Kind::LogChunk(signed))).await.is_err() {
                self.requeue_results(results);
                return Ok(false);
            }
        }
        while let Some(result) = results.next() {
            if let Err(unsent) = outbound.send(send(agent_message::Kind::Result(result))).await {
                if let Some(agent_message::Kind::Result(result)) = unsent.0.kind {
                    self.requeue_results(std::iter::once(result).chain(results));
                }
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn handle(self: &Arc<Self>, message: BrokerMessage, client: &AgentServiceClient<Channel>) {
        match message.kind {
            Some(broker_message::Kind::Assignment(job)) => self.start(job, client.clone()),
            Some(broker_message::Kind::Cancel(cancel)) => {
                let sender = self
                    .running
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get_mut(&cancel.job_id)
                    .and_then(|r| r.cancel.take());
                if let Some(sender) = sender {
                    let _ = sender.send(cancel.reason);
                }
            }
            Some(broker_message::Kind::Drain(drain)) => self.drain(&drain.reason),
            Some(broker_message::Kind::LogReceipt(receipt)) => {
                if !receipt.accepted {
                    tracing::warn!(job_id = %receipt.job_id, seq = receipt.seq, reason = %receipt.reason, "the broker refused a log chunk");
                }
                self.outbox.acknowledge(&receipt.job_id, receipt.fencing_token, receipt.seq);
            }
            None => {}
        }
    }

    fn start(self: &Arc<Self>, assignment: JobAssignment, mut client: AgentServiceClient<Channel>) {
        let job = match Job::try_from(assignment) {
            Ok(job) => job,
            Err(refused) => return self.refuse(refused),
        };
        let lease = Duration::from_secs(u64::try_from(job.lease_expires_unix - now()).unwrap_or(0).max(1));
        let (cancel, canceled) = oneshot::channel();
        {
            let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
            if running.contains_key(&job.job_id) {
                return;
            }
            running
                .insert(job.job_id.clone(), Running { fencing_token: job.fencing_token, lease, cancel: Some(cancel) });
        }
        // Every line logged for this job, here and in the runner, carries its run and job IDs.
        let span = tracing::info_span!("job", run_id = %job.run_id, job_id = %job.job_id);
        span.in_scope(|| tracing::info!(job_id = %job.job_id, run_id = %job.run_id, task = ?job.task, "job started"));
        metrics::global().job_started();
        let started = std::time::Instant::now();
        let daemon = Arc::clone(self);
        let work = async move {
            let layers = Layers::default();
            let (outcome, log) = daemon.execute(&job, &mut client, &layers, canceled).await;
            metrics::global().job_finished(job.task, job_outcome(&outcome), started.elapsed());
            let summary = log.finish().await;
            let finished = daemon.running.lock().unwrap_or_else(PoisonError::into_inner).remove(&job.job_id);
            let Some(finished) = finished else { return };
            let (success, error, drift) = match outcome {
                Outcome::Succeeded => (true, String::new(), None),
                Outcome::Checked(drift) => (true, String::new(), Some(drift_report(drift))),
                Outcome::Failed(error) => (false, error, None),
                // The broker already moved the job on; a report would be refused as stale.
                Outcome::Canceled => return,
            };
            tracing::info!(job_id = %job.job_id, success, log_chunks = summary.chunks, "job finished");
            daemon.results.lock().unwrap_or_else(PoisonError::into_inner).push(JobResult {
                job_id: job.job_id,
                fencing_token: finished.fencing_token,
                success,
                error,
                final_log_digest: summary.head.map(|head| head.to_vec()).unwrap_or_default(),
                log_chunks: summary.chunks,
                drift,
                isolation_layers: layers.list(),
            });
            daemon.results_ready.notify_one();
        };
        tokio::spawn(tracing::Instrument::instrument(work, span));
    }

    /// Reports a job this agent will not run as failed, saying why, so the broker moves its run
    /// on instead of waiting for the lease to expire.
    fn refuse(&self, refused: Refused) {
        metrics::global().job_refused();
        tracing::warn!(job_id = %refused.job_id, run_id = %refused.run_id, error = %refused.error, "job refused");
        self.results.lock().unwrap_or_else(PoisonError::into_inner).push(JobResult {
            job_id: refused.job_id,
            fencing_token: refused.fencing_token,
            success: false,
            error: refused.error.to_string(),
            ..JobResult::default()
        });
        self.results_ready.notify_one();
    }

    /// Fetches the job's credentials and runs its phase, logging to a log masked with them.
    async fn execute(
        &self,
        job: &Job,
        client: &mut AgentServiceClient<Channel>,
        layers: &Layers,
        canceled: oneshot::Receiver<String>,
    ) -> (Outcome, JobLog) {
        let patterns = self.settings.mask_patterns.clone();
        let log_of = |rules| JobLog::new(job, &rules, self.settings.log_limit, Arc::clone(&self.outbox));
        // The job's files and host ids; released (files removed) when this returns.
        let slot = match self.settings.slots.acquire() {
            Ok(slot) => slot,
            Err(error) => {
                let log = log_of(MaskRules::patterns_only(patterns));
                log.note(&format!("keyward: {error}")).await;
                return (Outcome::Failed(error.to_string()), log);
            }
        };
        // A scanned plan job gets only its checkout's credentials now, the rest once its scan is
        // allowed (the broker refuses them before).
        let scanned = !job.scanners.is_empty() && self.settings.runner.runs_terraform();
        let fetched = if scanned {
            JobCredentials::for_checkout(client, job).await
        } else {
            JobCredentials::fetch(client, job, slot.dir()).await
        };
        let mut credentials = match fetched {
            Ok(credentials) => credentials,
            Err(error) => {
                let log = log_of(MaskRules::patterns_only(patterns));
                log.note(&format!("keyward: {error}")).await;
                return (Outcome::Failed(error.to_string()), log);
            }
        };
        let log = log_of(MaskRules::new(credentials.secret_values(), patterns));
        let runs = if self.settings.runner.runs_terraform() {
            match self.settings.tools.get(job.tool) {
                Some(installed) => format!("{} {}", installed.tool.name(), installed.version),
                None => format!("{} none", job.tool.name()),
            }
        } else {
            "an --exec command, not terraform".to_owned()
        };
        log.note(&format!(
            "keyward: agent {} ({}), {runs}, isolation {}",
            env!("CARGO_PKG_VERSION"),
            crate::enroll::hostname(),
            self.settings.runner.describe()
        ))
        .await;
        credentials.note_received(job, &log).await;
        let mut plans = Plans::new(client.clone());
        let outcome = self.settings.runner.run(job, &slot, &mut plans, &mut credentials, &log, layers, canceled).await;
        // The credential files go first, then the slot's directory, and only then is the slot
        // (and its uid) free for another job.
        drop(credentials);
        drop(slot);
        (outcome, log)
    }

    fn cancel_all(&self, reason: &str) {
        for running in self.running.lock().unwrap_or_else(PoisonError::into_inner).values_mut() {
            if let Some(cancel) = running.cancel.take() {
                let _ = cancel.send(reason.to_owned());
            }
        }
    }

    /// Puts results that were taken but not sent back, ahead of any queued since.
    fn requeue_results(&self, unsent: impl Iterator<Item = JobResult>) {
        let mut results = self.results.lock().unwrap_or_else(PoisonError::into_inner);
        let queued_since = std::mem::take(&mut *results);
        results.extend(unsent);
        results.extend(queued_since);
    }

    /// `Hello.terraform_version`, as brokers before tool reports read it: Terraform's version,
    /// empty without Terraform (or with `--exec`).
    fn terraform_version(&self) -> String {
        let terraform = self.settings.tools.get(Tool::Terraform).filter(|_| self.settings.runner.runs_terraform());
        terraform.map(|installed| installed.version.clone()).unwrap_or_default()
    }

    fn heartbeat(&self) -> Heartbeat {
        Heartbeat {
            running_job_ids: self.running.lock().unwrap_or_else(PoisonError::into_inner).keys().cloned().collect(),
        }
    }

    /// A third of the shortest lease held, between 0.5 s and 10 s.
    fn heartbeat_period(&self) -> Duration {
        let running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        running.values().map(|r| r.lease / 3).min().unwrap_or(IDLE_HEARTBEAT).clamp(MIN_HEARTBEAT, IDLE_HEARTBEAT)
    }

    /// Renews the certificate with a fresh key and stores the new identity.
    async fn renew(&self, client: &mut AgentServiceClient<Channel>, identity: &Identity) -> Result<(), tonic::Status> {
        let (key, csr) = key_and_csr(&crate::enroll::hostname()).map_err(|e| tonic::Status::internal(e.to_string()))?;
        let response = client.renew(RenewRequest { csr_der: csr }).await?.into_inner();
        let renewed = identity_from(response, &key, &identity.state.broker, &identity.state.endpoint, &identity.ca_pem)
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        self.dir.store(&renewed).map_err(|e| tonic::Status::internal(e.to_string()))?;
        tracing::info!(not_after = renewed.state.not_after, "certificate renewed");
        Ok(())
    }
}

/// The results and chunks to send now, results taken first.
///
/// The broker seals a job's log when its result arrives and refuses its chunks after that. A job
/// queues its result only once its last chunk is in the outbox, so taking results first means
/// every chunk of a result taken here is taken too (or went earlier). Taken the other way round,
/// a job that ended between the two takes would have its result sent ahead of its last chunks,
/// and the job's stored log would miss its end.
fn take_pending(results: &Mutex<Vec<JobResult>>, outbox: &Outbox) -> (Vec<JobResult>, Vec<Chunk>) {
    let results = std::mem::take(&mut *results.lock().unwrap_or_else(PoisonError::into_inner));
    (results, outbox.take_unsent())
}

/// What a drift check found, as the broker hears it.
fn drift_report(drift: crate::terraform::Drift) -> DriftReport {
    DriftReport {
        drifted: drift.drifted,
        summary: drift.summary,
        to_add: drift.counts.to_add,
        to_change: drift.counts.to_change,
        to_destroy: drift.counts.to_destroy,
        changed_outside: drift.counts.changed_outside,
        addresses: drift.addresses,
    }
}

/// The metric label of how a job ended.
fn job_outcome(outcome: &Outcome) -> JobOutcome {
    match outcome {
        Outcome::Succeeded | Outcome::Checked(_) => JobOutcome::Succeeded,
        Outcome::Failed(_) => JobOutcome::Failed,
        Outcome::Canceled => JobOutcome::Canceled,
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::logs::chain::Chain;

    /// Jobs ending on another thread while the connection takes what to send: every result goes
    /// out with or after all of its job's chunks, however the two interleave.
    #[test]
    fn a_result_is_never_taken_ahead_of_its_jobs_chunks() {
        const JOBS: usize = 20_000;
        let results = Arc::new(Mutex::new(Vec::new()));
        let outbox = Arc::new(Outbox::new(usize::MAX));
        let jobs = {
            let (results, outbox) = (Arc::clone(&results), Arc::clone(&outbox));
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
                for job in 0..JOBS {
                    let job_id = job.to_string();
                    let mut chain = Chain::new("r", &job_id, 1);
                    runtime.block_on(outbox.push(chain.append("stdout", b"last words".to_vec())));
                    let result = JobResult { job_id, fencing_token: 1, ..JobResult::default() };
                    results.lock().unwrap_or_else(PoisonError::into_inner).push(result);
                }
            })
        };
        let (mut sent_chunks, mut sent_results) = (HashSet::new(), 0);
        while sent_results < JOBS {
            let (results, chunks) = take_pending(&results, &outbox);
            sent_chunks.extend(chunks.into_iter().map(|chunk| chunk.job_id));
            for result in results {
                assert!(sent_chunks.contains(&result.job_id), "job {}'s result went before its chunk", result.job_id);
                sent_results += 1;
            }
        }
        jobs.join().expect("the jobs' thread");
    }
}
