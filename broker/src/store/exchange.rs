//! Reading `used_token_ids` (the replay cache) and `credential_events` (what was decided and
//! issued). Both are written only through the [`Journal`](super::Journal).

use sqlx::Row as _;
use sqlx::any::AnyRow;

use super::{Store, StoreError};

/// One credential decision or issuance. Holds identifiers only, never a credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialEvent {
    /// UUIDv7.
    pub id: String,
    /// When.
    pub at: i64,
    /// `allowed`, `denied` or `issued`.
    pub kind: String,
    /// `<type>:<name>`.
    pub target: String,
    /// The subject token's issuer.
    pub subject_issuer: String,
    /// The subject token's `jti`.
    pub subject_jti: Option<String>,
    /// Run.
    pub run_id: Option<String>,
    /// Stack.
    pub stack_id: Option<String>,
    /// Phase.
    pub phase: Option<String>,
    /// JSON array of the policy's (or the broker's) reasons.
    pub reasons: String,
    /// JSON object: minted token `jti`, role session name, access key ID, expiry, policy digest…
    pub details: String,
}

fn from_row(row: &AnyRow) -> Result<CredentialEvent, StoreError> {
    Ok(CredentialEvent {
        id: row.try_get("id")?,
        at: row.try_get("at")?,
        kind: row.try_get("kind")?,
        target: row.try_get("target")?,
        subject_issuer: row.try_get("subject_issuer")?,
        subject_jti: row.try_get("subject_jti")?,
        run_id: row.try_get("run_id")?,
        stack_id: row.try_get("stack_id")?,
        phase: row.try_get("phase")?,
        reasons: row.try_get("reasons")?,
        details: row.try_get("details")?,
    })
}

impl Store {
    /// Forgets token IDs whose tokens expired before `cutoff`. Returns how many.
    pub async fn prune_token_ids(&self, cutoff: i64) -> Result<u64, StoreError> {
        let done =
            sqlx::query("DELETE FROM used_token_ids WHERE expires_at < $1").bind(cutoff).execute(&self.pool).await?;
        Ok(done.rows_affected())
    }

    /// Credential events of a run, oldest first.
    pub async fn credential_events_for_run(&self, run_id: &str) -> Result<Vec<CredentialEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at, kind, target, subject_issuer, subject_jti, run_id, stack_id, phase, reasons, details \
             FROM credential_events WHERE run_id = $1 ORDER BY at, id",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// Number of credential events of `kind`.
    pub async fn credential_event_count(&self, kind: &str) -> Result<i64, StoreError> {
        Ok(sqlx::query("SELECT COUNT(*) AS n FROM credential_events WHERE kind = $1")
            .bind(kind)
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?)
    }
}
