//! The replay cache, `used_token_ids`: which subject tokens were exchanged. Claims are taken only
//! through the audit log's appends (`audit::writer`), so a claim always commits with its record.

use super::{Store, StoreError};

/// Most token IDs one pruning statement forgets.
pub const PRUNE_BATCH: i64 = 1000;

impl Store {
    /// Forgets token IDs whose tokens expired before `cutoff`. Returns how many.
    ///
    /// In batches of [`PRUNE_BATCH`], each its own short transaction: at hundreds of exchanges a
    /// second, one statement for everything expired since the last pass would hold the write
    /// lock (and the pages it dirtied) long enough to stall the audit log's appends behind it.
    pub async fn prune_token_ids(&self, cutoff: i64) -> Result<u64, StoreError> {
        let mut pruned = 0;
        loop {
            let done = sqlx::query(
                "DELETE FROM used_token_ids WHERE (issuer, jti) IN \
                 (SELECT issuer, jti FROM used_token_ids WHERE expires_at < $1 ORDER BY expires_at LIMIT $2)",
            )
            .bind(cutoff)
            .bind(PRUNE_BATCH)
            .execute(&self.pool)
            .await?;
            pruned += done.rows_affected();
            if done.rows_affected() < PRUNE_BATCH.unsigned_abs() {
                return Ok(pruned);
            }
        }
    }
}
