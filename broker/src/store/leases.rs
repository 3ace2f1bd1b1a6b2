//! `scheduler_leases`: work that exactly one broker replica does at a time.
//!
//! One row per kind of work. Taking and renewing are the same conditional upsert: the row is
//! written only when it does not exist, when the caller already holds it, or when it expired, so
//! of any number of replicas asking at once exactly one touches it. Time is the caller's clock.

use sqlx::Row as _;

use super::{Store, StoreError};

impl Store {
    /// Takes or renews the lease `name` for `holder` until `expires_at`, if it is free, expired
    /// before `now`, or already `holder`'s. Returns whether `holder` holds it now.
    pub async fn take_lease(&self, name: &str, holder: &str, now: i64, expires_at: i64) -> Result<bool, StoreError> {
        // On SQLite, wait for the audit writer's turn rather than meet its write lock in the
        // busy handler, which would hold up the writer's next commit by its sleeps.
        let _turn = self.audit_write_turn().await;
        let done = sqlx::query(
            "INSERT INTO scheduler_leases (name, holder, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET holder = $2, expires_at = $3 \
             WHERE scheduler_leases.holder = $2 OR scheduler_leases.expires_at < $4",
        )
        .bind(name)
        .bind(holder)
        .bind(expires_at)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Gives up the lease `name`, if `holder` holds it (a replica stopping cleanly), so another
    /// takes it at once instead of when it expires.
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let _turn = self.audit_write_turn().await;
        sqlx::query("DELETE FROM scheduler_leases WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Who holds the lease `name`, and until when (it may have expired).
    pub async fn lease_holder(&self, name: &str) -> Result<Option<(String, i64)>, StoreError> {
        let row = sqlx::query("SELECT holder, expires_at FROM scheduler_leases WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| Ok((row.try_get("holder")?, row.try_get("expires_at")?))).transpose()
    }
}
