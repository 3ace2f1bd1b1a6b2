//! Jobs' log chunks and the certificates that signed them.
//!
//! Chunks are not audit facts one by one (a job writes thousands); they are evidence that carries
//! its own integrity (hash chain + agent signature), and the chain's head is sealed into the
//! job's `job.finished` entry. So they are plain inserts, outside the audit writer, and only
//! after `crate::joblogs` verified them. The `(job, lease, seq)` uniqueness makes a second copy of a
//! chunk impossible to store.

use sqlx::Row as _;
use sqlx::any::AnyRow;

use super::{Store, StoreError};

/// A verified chunk to store.
#[derive(Debug, Clone, Copy)]
pub struct NewChunk<'a> {
    /// The run.
    pub run_id: &'a str,
    /// The job.
    pub job_id: &'a str,
    /// The lease whose chain it belongs to.
    pub fencing_token: i64,
    /// Position in the chain.
    pub seq: i64,
    /// `stdout`, `stderr` or `keyward`.
    pub stream: &'a str,
    /// The previous chunk's digest.
    pub prev_digest: &'a [u8],
    /// Masked output.
    pub data: &'a [u8],
    /// Its digest.
    pub digest: &'a [u8],
    /// The agent's signature over the digest.
    pub signature: &'a [u8],
    /// SHA-256 (hex) of the certificate whose key signed it.
    pub signer: &'a str,
    /// When the broker received it.
    pub received_at: i64,
}

/// A stored chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkRow {
    /// Arrival order across the broker (the `run logs` cursor).
    pub id: i64,
    /// The run.
    pub run_id: String,
    /// The job.
    pub job_id: String,
    /// The lease.
    pub fencing_token: i64,
    /// Position in the chain.
    pub seq: i64,
    /// The stream.
    pub stream: String,
    /// The previous digest.
    pub prev_digest: Vec<u8>,
    /// Masked output.
    pub data: Vec<u8>,
    /// Its digest.
    pub digest: Vec<u8>,
    /// The agent's signature.
    pub signature: Vec<u8>,
    /// The signing certificate's fingerprint.
    pub signer: String,
    /// When it arrived.
    pub received_at: i64,
}

/// The end of one lease's chain as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogHead {
    /// The last chunk's sequence number.
    pub seq: i64,
    /// Its digest.
    pub digest: Vec<u8>,
    /// How many chunks.
    pub chunks: i64,
    /// Bytes of output.
    pub bytes: i64,
}

const CHUNK_COLUMNS: &str = "id, run_id, job_id, fencing_token, seq, stream, prev_digest, data, digest, signature, \
                             signer, received_at";

fn chunk_from(row: &AnyRow) -> Result<ChunkRow, StoreError> {
    Ok(ChunkRow {
        id: row.try_get("id")?,
        run_id: row.try_get("run_id")?,
        job_id: row.try_get("job_id")?,
        fencing_token: row.try_get("fencing_token")?,
        seq: row.try_get("seq")?,
        stream: row.try_get("stream")?,
        prev_digest: row.try_get("prev_digest")?,
        data: row.try_get("data")?,
        digest: row.try_get("digest")?,
        signature: row.try_get("signature")?,
        signer: row.try_get("signer")?,
        received_at: row.try_get("received_at")?,
    })
}

impl Store {
    /// Records the certificate `fingerprint` of `agent_id` (once).
    pub async fn log_signer(
        &self,
        fingerprint: &str,
        agent_id: &str,
        certificate: &[u8],
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO log_signers (fingerprint, agent_id, certificate, first_seen_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (fingerprint) DO NOTHING",
        )
        .bind(fingerprint)
        .bind(agent_id)
        .bind(certificate)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Stores a verified chunk; `false` when the chain already has one at its position.
    pub async fn insert_chunk(&self, chunk: &NewChunk<'_>) -> Result<bool, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO log_chunks (run_id, job_id, fencing_token, seq, stream, prev_digest, data, digest, \
             signature, signer, received_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
             ON CONFLICT (job_id, fencing_token, seq) DO NOTHING",
        )
        .bind(chunk.run_id)
        .bind(chunk.job_id)
        .bind(chunk.fencing_token)
        .bind(chunk.seq)
        .bind(chunk.stream)
        .bind(chunk.prev_digest)
        .bind(chunk.data)
        .bind(chunk.digest)
        .bind(chunk.signature)
        .bind(chunk.signer)
        .bind(chunk.received_at)
        .execute(&self.pool)
        .await?;
        Ok(inserted.rows_affected() == 1)
    }

    /// The end of the chain of lease `fencing_token` of `job_id`, if it has chunks.
    pub async fn log_head(&self, job_id: &str, fencing_token: i64) -> Result<Option<LogHead>, StoreError> {
        let row = sqlx::query(
            "SELECT seq, digest FROM log_chunks WHERE job_id = $1 AND fencing_token = $2 ORDER BY seq DESC LIMIT 1",
        )
        .bind(job_id)
        .bind(fencing_token)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let totals = sqlx::query(
            "SELECT COUNT(*) AS chunks, CAST(COALESCE(SUM(LENGTH(data)), 0) AS BIGINT) AS bytes \
             FROM log_chunks WHERE job_id = $1 AND fencing_token = $2",
        )
        .bind(job_id)
        .bind(fencing_token)
        .fetch_one(&self.pool)
        .await?;
        Ok(Some(LogHead {
            seq: row.try_get("seq")?,
            digest: row.try_get("digest")?,
            chunks: totals.try_get("chunks")?,
            bytes: totals.try_get("bytes")?,
        }))
    }

    /// Up to `limit` chunks of `run_id` that arrived after cursor `after`, in arrival order.
    pub async fn run_chunks(&self, run_id: &str, after: i64, limit: i64) -> Result<Vec<ChunkRow>, StoreError> {
        let sql = format!("SELECT {CHUNK_COLUMNS} FROM log_chunks WHERE run_id = $1 AND id > $2 ORDER BY id LIMIT $3");
        let rows =
            sqlx::query(sqlx::AssertSqlSafe(sql)).bind(run_id).bind(after).bind(limit).fetch_all(&self.pool).await?;
        rows.iter().map(chunk_from).collect()
    }

    /// The certificates (fingerprint, agent, DER) that signed chunks of `run_id`.
    pub async fn run_log_signers(&self, run_id: &str) -> Result<Vec<(String, String, Vec<u8>)>, StoreError> {
        let rows = sqlx::query(
            "SELECT fingerprint, agent_id, certificate FROM log_signers WHERE fingerprint IN \
             (SELECT DISTINCT signer FROM log_chunks WHERE run_id = $1) ORDER BY first_seen_at, fingerprint",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("fingerprint")?, row.try_get("agent_id")?, row.try_get("certificate")?)))
            .collect()
    }
}
