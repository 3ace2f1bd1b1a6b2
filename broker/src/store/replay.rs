//! The replay cache, `used_token_ids`: which subject tokens were exchanged. Claims are taken only
//! through the audit log's appends (`audit::writer`), so a claim always commits with its record.

use super::{Store, StoreError};

impl Store {
    /// Forgets token IDs whose tokens expired before `cutoff`. Returns how many.
    pub async fn prune_token_ids(&self, cutoff: i64) -> Result<u64, StoreError> {
        let done =
            sqlx::query("DELETE FROM used_token_ids WHERE expires_at < $1").bind(cutoff).execute(&self.pool).await?;
        Ok(done.rows_affected())
    }
}
