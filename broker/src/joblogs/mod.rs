//! Jobs' signed logs on the broker: verified on receipt, stored, served live, sealed, bundled.
//!
//! Each chunk arriving on a work stream is checked before it is stored ([`verify`], which is
//! `keyward_audit::joblog::chunk`, the check the offline verifier runs too): it must name a job
//! this agent holds under that lease, its digest must cover its fields, its signature must be by
//! the key of the certificate the stream was opened with, and it must be exactly the next link of
//! the lease's chain. A bad chunk is refused with a receipt saying why and, unless it is merely
//! late, recorded as `log.rejected`; an agent that keeps sending bad chunks loses its stream.
//! When the lease holder reports the job's end, the head the broker verified is sealed into the
//! job's `job.finished` entry ([`crate::runs::LogSeal`]). [`bundle`] (the format, from
//! `keyward_audit::joblog`) is a run's log with everything needed to verify it offline; this
//! module fills it from the store.

pub use keyward_audit::joblog::bundle;
pub use keyward_audit::joblog::chunk as verify;

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use keyward_proto::agent_v1::SignedLogChunk;
use keyward_proto::logs::ChunkFields;
use serde::Serialize;

pub use bundle::Bundle;
pub use verify::{AgentKey, Rejection};

use crate::audit::{Append, AuditEvent, AuditLog, Context, Kind};
use crate::clock::SharedClock;
use crate::runs::LogSeal;
use crate::store::{ChunkRow, NewChunk, Store, StoreError};
use keyward_proto::encoding::hex;
use keyward_proto::encoding::pem;
use verify::{ChunkToCheck, check_chunk};

/// Recorded rejections after which a work stream is cut: an agent sending that many bad chunks
/// is broken or hostile, and the audit log should not fill with its noise.
pub const MAX_REJECTIONS: u32 = 16;

/// A chunk as it arrived on a work stream, as the checks see it. (A free function: neither the
/// gRPC type nor `ChunkToCheck` is this crate's, so no `From` can join them here.)
pub fn chunk_to_check(chunk: &SignedLogChunk) -> ChunkToCheck<'_> {
    ChunkToCheck {
        fields: ChunkFields {
            run_id: &chunk.run_id,
            job_id: &chunk.job_id,
            fencing_token: chunk.fencing_token,
            stream: &chunk.stream,
            seq: chunk.seq,
            prev_digest: &chunk.prev_digest,
            data: &chunk.data,
        },
        digest: &chunk.digest,
        signature: &chunk.signature,
    }
}

/// The logs service. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Logs {
    store: Store,
    audit: AuditLog,
    clock: SharedClock,
    ca_pem: Arc<str>,
    /// Counts the chunks stored on this replica, for live readers ([`Logs::arrivals`]).
    arrived: Arc<tokio::sync::watch::Sender<u64>>,
}

/// What one work stream knows about the chains it carries.
#[derive(Debug)]
pub struct StreamLogs {
    agent_id: String,
    certificate: Vec<u8>,
    key: Result<AgentKey, String>,
    signer_recorded: bool,
    leases: HashMap<(String, u64), LeaseChain>,
    /// Rejections recorded on this stream.
    pub recorded: u32,
}

#[derive(Debug)]
struct LeaseChain {
    run_id: String,
    head: Option<(u64, Vec<u8>)>,
    sealed: bool,
}

impl StreamLogs {
    /// The state of a stream opened by `agent_id` with `certificate` (DER).
    pub fn new(agent_id: &str, certificate: &[u8]) -> Self {
        Self {
            agent_id: agent_id.to_owned(),
            certificate: certificate.to_vec(),
            key: AgentKey::from_certificate(certificate),
            signer_recorded: false,
            leases: HashMap::new(),
            recorded: 0,
        }
    }

    /// Lets go of the chain of lease `fencing_token` of `job_id` once the job's end is committed:
    /// the stream lives as long as the agent's connection (days), so a chain kept after its job
    /// ended is memory that grows with every job. A late chunk of it is still refused — binding
    /// it again finds the job no longer leased (see `Logs::bind`).
    pub fn forget(&mut self, job_id: &str, fencing_token: u64) {
        self.leases.remove(&(job_id.to_owned(), fencing_token));
    }
}

/// One chunk as `keyward run logs` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ChunkView {
    /// Cursor: pass it as `after` to get what came next.
    pub id: i64,
    /// The job.
    pub job_id: String,
    /// The lease.
    pub fencing_token: i64,
    /// Position in its chain.
    pub seq: i64,
    /// `stdout`, `stderr` or `keyward`.
    pub stream: String,
    /// The masked output (invalid UTF-8 replaced).
    pub text: String,
    /// When it arrived.
    pub received_at: i64,
}

impl From<ChunkRow> for ChunkView {
    fn from(row: ChunkRow) -> Self {
        Self {
            id: row.id,
            job_id: row.job_id,
            fencing_token: row.fencing_token,
            seq: row.seq,
            stream: row.stream,
            text: String::from_utf8_lossy(&row.data).into_owned(),
            received_at: row.received_at,
        }
    }
}

impl Logs {
    /// The service; `ca_pem` is the agent CA bundles name.
    pub fn new(store: Store, audit: AuditLog, clock: SharedClock, ca_pem: String) -> Self {
        Self { store, audit, clock, ca_pem: ca_pem.into(), arrived: Arc::new(tokio::sync::watch::Sender::new(0)) }
    }

    /// Verifies `chunk`, which arrived on `stream`, and stores it.
    pub async fn receive(&self, stream: &mut StreamLogs, chunk: &SignedLogChunk) -> Result<(), Rejection> {
        let key = stream.key.clone().map_err(Rejection::Malformed)?;
        let lease_key = (chunk.job_id.clone(), chunk.fencing_token);
        if !stream.leases.contains_key(&lease_key) {
            let chain = self.bind(&stream.agent_id, chunk).await?;
            stream.leases.insert(lease_key.clone(), chain);
        }
        let Some(chain) = stream.leases.get_mut(&lease_key) else {
            return Err(Rejection::Sealed(chunk.job_id.clone()));
        };
        if chain.sealed {
            return Err(Rejection::Sealed(chunk.job_id.clone()));
        }
        if chain.run_id != chunk.run_id {
            return Err(Rejection::ForeignJob { job_id: chunk.job_id.clone(), fencing_token: chunk.fencing_token });
        }
        let check = chunk_to_check(chunk);
        check_chunk(&check, chain.head.as_ref().map(|(seq, digest)| (*seq, digest.as_slice())), &key)?;
        let now = self.clock.now();
        let unavailable = |error: StoreError| {
            tracing::error!(%error, "could not store a log chunk");
            Rejection::Malformed("the broker could not store the chunk; it will be sent again".to_owned())
        };
        if !stream.signer_recorded {
            self.store
                .log_signer(&key.fingerprint, &stream.agent_id, &stream.certificate, now)
                .await
                .map_err(unavailable)?;
            stream.signer_recorded = true;
        }
        let stored = self
            .store
            .insert_chunk(&NewChunk {
                run_id: &chunk.run_id,
                job_id: &chunk.job_id,
                fencing_token: i64::try_from(chunk.fencing_token).unwrap_or(i64::MAX),
                seq: i64::try_from(chunk.seq).unwrap_or(i64::MAX),
                stream: &chunk.stream,
                prev_digest: &chunk.prev_digest,
                data: &chunk.data,
                digest: &chunk.digest,
                signature: &chunk.signature,
                signer: &key.fingerprint,
                received_at: now,
            })
            .await
            .map_err(unavailable)?;
        if !stored {
            return Err(Rejection::Replayed { seq: chunk.seq, next: chunk.seq + 1 });
        }
        chain.head = Some((chunk.seq, chunk.digest.clone()));
        self.arrived.send_modify(|n| *n = n.wrapping_add(1));
        Ok(())
    }

    /// What live readers (the console's run pages) wait on: it changes whenever a chunk of any
    /// run was stored on this replica; they read their run's chunks after their cursor then.
    pub fn arrivals(&self) -> tokio::sync::watch::Receiver<u64> {
        self.arrived.subscribe()
    }

    /// The chain `chunk` claims to extend, after checking that the stream's agent holds (or
    /// held, until its end) that lease of the job.
    async fn bind(&self, agent_id: &str, chunk: &SignedLogChunk) -> Result<LeaseChain, Rejection> {
        let foreign = || Rejection::ForeignJob { job_id: chunk.job_id.clone(), fencing_token: chunk.fencing_token };
        let job = self.store.job(&chunk.job_id).await.ok().flatten().ok_or_else(foreign)?;
        if job.run_id != chunk.run_id || job.agent_id.as_deref() != Some(agent_id) {
            return Err(foreign());
        }
        let token = i64::try_from(chunk.fencing_token).map_err(|_| foreign())?;
        if token > job.fencing_token {
            return Err(foreign());
        }
        if token < job.fencing_token || job.state != "leased" {
            // An earlier lease of this agent's, or a job that has ended: a late arrival.
            return Err(Rejection::Sealed(chunk.job_id.clone()));
        }
        let head = self
            .store
            .log_head(&chunk.job_id, token)
            .await
            .map_err(|_| Rejection::Malformed("the broker could not read the chain; retry".to_owned()))?;
        Ok(LeaseChain {
            run_id: job.run_id,
            head: head.and_then(|h| u64::try_from(h.seq).ok().map(|seq| (seq, h.digest))),
            sealed: false,
        })
    }

    /// Records `rejection` of `chunk` from `agent_id` (when it is worth recording).
    pub async fn record_rejection(&self, stream: &mut StreamLogs, chunk: &SignedLogChunk, rejection: &Rejection) {
        if !rejection.recorded() {
            return;
        }
        stream.recorded += 1;
        let context = Context {
            run_id: Some(chunk.run_id.chars().take(64).collect()),
            actor: Some(format!("agent:{}", stream.agent_id)),
            ..Context::default()
        };
        let event = AuditEvent::new(Kind::LogRejected, self.clock.now(), context)
            .with("agent_id", stream.agent_id.as_str())
            .with("job_id", chunk.job_id.chars().take(64).collect::<String>())
            .with("fencing_token", chunk.fencing_token)
            .with("seq", chunk.seq)
            .with("reason", rejection.code())
            .with("detail", rejection.to_string())
            .with_ref("run", &chunk.run_id.chars().take(64).collect::<String>())
            .with_ref("agent", &stream.agent_id);
        if let Err(error) = self.audit.append(Append::events(vec![event])).await {
            tracing::error!(%error, "could not record a rejected log chunk");
        }
    }

    /// The lease `fencing_token` of `job_id` reported its end on `stream`: its chain is sealed
    /// (later chunks are refused) and the head the broker verified is returned for the
    /// `job.finished` entry, with whether it is the head the agent claims.
    pub async fn seal(
        &self,
        stream: &mut StreamLogs,
        job_id: &str,
        fencing_token: u64,
        claimed: &[u8],
        claimed_chunks: u64,
    ) -> Result<LogSeal, StoreError> {
        if let Some(chain) = stream.leases.get_mut(&(job_id.to_owned(), fencing_token)) {
            chain.sealed = true;
        }
        let head = self.store.log_head(job_id, i64::try_from(fencing_token).unwrap_or(i64::MAX)).await?;
        let (digest, chunks, bytes) = head.map_or((None, 0, 0), |h| (Some(h.digest), h.chunks, h.bytes));
        let complete = digest.as_deref().unwrap_or_default() == claimed
            && u64::try_from(chunks).is_ok_and(|chunks| chunks == claimed_chunks);
        Ok(LogSeal { digest, chunks, bytes, complete, claimed: (!complete).then(|| hex(claimed)) })
    }

    /// Up to `limit` chunks of `run_id` after cursor `after`, in arrival order.
    pub async fn page(&self, run_id: &str, after: i64, limit: i64) -> Result<Vec<ChunkView>, StoreError> {
        Ok(self.store.run_chunks(run_id, after, limit).await?.into_iter().map(ChunkView::from).collect())
    }

    /// Everything needed to verify `run_id`'s log offline.
    pub async fn bundle(&self, run_id: &str) -> Result<Bundle, StoreError> {
        let jobs = self.store.jobs_of(run_id).await?;
        let signers = self
            .store
            .run_log_signers(run_id)
            .await?
            .into_iter()
            .map(|(fingerprint, agent_id, der)| bundle::Signer {
                fingerprint,
                agent_id,
                certificate: pem("CERTIFICATE", &der),
            })
            .collect();
        let mut leases: Vec<bundle::LeaseLog> = Vec::new();
        let mut after = 0;
        loop {
            let rows = self.store.run_chunks(run_id, after, 1000).await?;
            let Some(last) = rows.last() else { break };
            after = last.id;
            for row in rows {
                let token = u64::try_from(row.fencing_token).unwrap_or_default();
                let index = match leases.iter().position(|l| l.job_id == row.job_id && l.fencing_token == token) {
                    Some(index) => index,
                    None => {
                        let job = jobs.iter().find(|j| j.id == row.job_id);
                        let sealed = job.filter(|j| j.fencing_token == row.fencing_token).and_then(|j| {
                            j.log_chunks.map(|chunks| bundle::Seal {
                                digest: j.log_digest.as_deref().map(hex),
                                chunks: u64::try_from(chunks).unwrap_or_default(),
                            })
                        });
                        leases.push(bundle::LeaseLog {
                            job_id: row.job_id.clone(),
                            phase: job.map(|j| j.phase.to_string()).unwrap_or_default(),
                            fencing_token: token,
                            sealed,
                            chunks: Vec::new(),
                        });
                        leases.len() - 1
                    }
                };
                let Some(lease) = leases.get_mut(index) else { continue };
                lease.chunks.push(bundle::BundleChunk {
                    seq: u64::try_from(row.seq).unwrap_or_default(),
                    stream: row.stream,
                    prev_digest: hex(&row.prev_digest),
                    data: STANDARD.encode(&row.data),
                    digest: hex(&row.digest),
                    signature: STANDARD.encode(&row.signature),
                    signer: row.signer,
                    received_at: row.received_at,
                });
            }
        }
        // Jobs that sealed an empty log still say so.
        for job in &jobs {
            let token = u64::try_from(job.fencing_token).unwrap_or_default();
            if job.log_chunks == Some(0) && !leases.iter().any(|l| l.job_id == job.id && l.fencing_token == token) {
                leases.push(bundle::LeaseLog {
                    job_id: job.id.clone(),
                    phase: job.phase.to_string(),
                    fencing_token: token,
                    sealed: Some(bundle::Seal { digest: None, chunks: 0 }),
                    chunks: Vec::new(),
                });
            }
        }
        Ok(Bundle {
            format: bundle::FORMAT.to_owned(),
            run_id: run_id.to_owned(),
            ca_certificate: self.ca_pem.to_string(),
            signers,
            leases,
        })
    }
}
