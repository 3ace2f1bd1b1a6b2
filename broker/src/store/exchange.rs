//! Rows of `used_token_ids` (the replay cache) and `credential_events` (what was decided and issued).

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
    /// Marks `(issuer, jti)` as exchanged. Returns `false` if it already was (a replay).
    pub async fn claim_token_id(&self, issuer: &str, jti: &str, expires_at: i64, now: i64) -> Result<bool, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO used_token_ids (issuer, jti, expires_at, used_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (issuer, jti) DO NOTHING",
        )
        .bind(issuer)
        .bind(jti)
        .bind(expires_at)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(inserted.rows_affected() == 1)
    }

    /// Forgets token IDs whose tokens expired before `cutoff`. Returns how many.
    pub async fn prune_token_ids(&self, cutoff: i64) -> Result<u64, StoreError> {
        let done =
            sqlx::query("DELETE FROM used_token_ids WHERE expires_at < $1").bind(cutoff).execute(&self.pool).await?;
        Ok(done.rows_affected())
    }

    /// Records a credential decision or issuance.
    pub async fn record_credential_event(&self, event: &CredentialEvent) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO credential_events (id, at, kind, target, subject_issuer, subject_jti, run_id, stack_id, phase, reasons, details) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&event.id)
        .bind(event.at)
        .bind(&event.kind)
        .bind(&event.target)
        .bind(&event.subject_issuer)
        .bind(event.subject_jti.clone())
        .bind(event.run_id.clone())
        .bind(event.stack_id.clone())
        .bind(event.phase.clone())
        .bind(&event.reasons)
        .bind(&event.details)
        .execute(&self.pool)
        .await?;
        Ok(())
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
