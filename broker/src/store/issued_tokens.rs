//! Rows of the `issued_tokens` table: one per signed token, written (through the
//! [`Journal`](super::Journal)) before the token is returned.
//! The audit log will supersede this as the durable record; the row shape is its context chain.

use sqlx::Row as _;
use sqlx::any::AnyRow;

use super::{Store, StoreError};

/// The record of one signed token. Holds claims only, never the token itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedTokenRow {
    /// Token ID.
    pub jti: String,
    /// Signing key.
    pub kid: String,
    /// `sub`.
    pub subject: String,
    /// `aud`.
    pub audience: String,
    /// Run.
    pub run_id: String,
    /// Stack.
    pub stack_id: String,
    /// Phase.
    pub phase: String,
    /// `iat`.
    pub issued_at: i64,
    /// `exp`.
    pub expires_at: i64,
    /// Name of the API token that asked.
    pub issued_by: String,
    /// Full claim set as JSON.
    pub claims: String,
}

fn from_row(row: &AnyRow) -> Result<IssuedTokenRow, StoreError> {
    Ok(IssuedTokenRow {
        jti: row.try_get("jti")?,
        kid: row.try_get("kid")?,
        subject: row.try_get("subject")?,
        audience: row.try_get("audience")?,
        run_id: row.try_get("run_id")?,
        stack_id: row.try_get("stack_id")?,
        phase: row.try_get("phase")?,
        issued_at: row.try_get("issued_at")?,
        expires_at: row.try_get("expires_at")?,
        issued_by: row.try_get("issued_by")?,
        claims: row.try_get("claims")?,
    })
}

impl Store {
    /// Tokens issued for a run, oldest first.
    pub async fn issued_tokens_for_run(&self, run_id: &str) -> Result<Vec<IssuedTokenRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT jti, kid, subject, audience, run_id, stack_id, phase, issued_at, expires_at, issued_by, claims \
             FROM issued_tokens WHERE run_id = $1 ORDER BY issued_at, jti",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// Number of tokens ever issued.
    pub async fn issued_token_count(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query("SELECT COUNT(*) AS n FROM issued_tokens").fetch_one(&self.pool).await?.try_get("n")?)
    }
}
