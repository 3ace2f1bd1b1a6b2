//! Reading the audit log's tables. Appends happen only in `audit::writer`, in one transaction with
//! the tree's new nodes; this module reads entries, nodes, lookup keys and checkpoints, and keeps
//! the checkpoint signing key.

use std::collections::HashMap;

use sqlx::Row as _;
use sqlx::any::AnyRow;

use super::{Store, StoreError, conflict_or};
use keyward_audit::merkle::Hash;

/// An entry as stored: its sequence number and the canonical JSON that was hashed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    /// Position in the log.
    pub seq: u64,
    /// Stable kind.
    pub kind: String,
    /// Canonical JSON.
    pub body: String,
}

/// A signed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointRow {
    /// Tree size it covers.
    pub size: u64,
    /// Tree head.
    pub root: Hash,
    /// The signed note.
    pub note: String,
    /// When it was made.
    pub at: i64,
}

fn to_u64(value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("negative sequence number {value}")))
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn to_hash(bytes: &[u8]) -> Result<Hash, StoreError> {
    bytes.try_into().map_err(|_| StoreError::Corrupt(format!("a tree hash has {} bytes, not 32", bytes.len())))
}

fn entry(row: &AnyRow) -> Result<StoredEntry, StoreError> {
    Ok(StoredEntry { seq: to_u64(row.try_get("seq")?)?, kind: row.try_get("kind")?, body: row.try_get("body")? })
}

/// The subtree hashes at `wanted` positions that exist (one query).
pub(crate) async fn nodes_in<'e, E>(executor: E, wanted: &[(u32, u64)]) -> Result<HashMap<(u32, u64), Hash>, StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    if wanted.is_empty() {
        return Ok(HashMap::new());
    }
    let mut sql = String::from("SELECT level, idx, hash FROM audit_nodes WHERE ");
    for i in 0..wanted.len() {
        if i > 0 {
            sql.push_str(" OR ");
        }
        sql.push_str(&format!("(level = ${} AND idx = ${})", 2 * i + 1, 2 * i + 2));
    }
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for (level, index) in wanted {
        query = query.bind(i32::try_from(*level).unwrap_or(i32::MAX)).bind(to_i64(*index));
    }
    let mut nodes = HashMap::with_capacity(wanted.len());
    for row in query.fetch_all(executor).await? {
        let level: i32 = row.try_get("level")?;
        let index: i64 = row.try_get("idx")?;
        let hash: Vec<u8> = row.try_get("hash")?;
        let level = u32::try_from(level).map_err(|_| StoreError::Corrupt(format!("tree level {level}")))?;
        nodes.insert((level, to_u64(index)?), to_hash(&hash)?);
    }
    Ok(nodes)
}

impl Store {
    /// The number of entries in the log.
    pub async fn audit_size(&self) -> Result<u64, StoreError> {
        to_u64(sqlx::query("SELECT size FROM audit_head WHERE id = 1").fetch_one(&self.pool).await?.try_get("size")?)
    }

    /// Entries with `from <= seq < to`, in order, at most `limit`.
    pub async fn audit_entries(&self, from: u64, to: u64, limit: u64) -> Result<Vec<StoredEntry>, StoreError> {
        let rows =
            sqlx::query("SELECT seq, kind, body FROM audit_entries WHERE seq >= $1 AND seq < $2 ORDER BY seq LIMIT $3")
                .bind(to_i64(from))
                .bind(to_i64(to))
                .bind(to_i64(limit))
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(entry).collect()
    }

    /// The last `limit` entries of `kind` (any kind when `None`), oldest first.
    pub async fn audit_tail(&self, kind: Option<&str>, limit: u64) -> Result<Vec<StoredEntry>, StoreError> {
        let rows = match kind {
            Some(kind) => {
                sqlx::query("SELECT seq, kind, body FROM audit_entries WHERE kind = $1 ORDER BY seq DESC LIMIT $2")
                    .bind(kind)
                    .bind(to_i64(limit))
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                sqlx::query("SELECT seq, kind, body FROM audit_entries ORDER BY seq DESC LIMIT $1")
                    .bind(to_i64(limit))
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        let mut entries: Vec<StoredEntry> = rows.iter().map(entry).collect::<Result<_, _>>()?;
        entries.reverse();
        Ok(entries)
    }

    /// Entries carrying any of `refs` (`run:<id>`, `akid:<key id>`…), in order.
    pub async fn audit_entries_for(&self, refs: &[String]) -> Result<Vec<StoredEntry>, StoreError> {
        if refs.is_empty() {
            return Ok(Vec::new());
        }
        let list: Vec<String> = (1..=refs.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT e.seq, e.kind, e.body FROM audit_entries e WHERE e.seq IN \
             (SELECT seq FROM audit_refs WHERE ref IN ({})) ORDER BY e.seq",
            list.join(", ")
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for reference in refs {
            query = query.bind(reference.as_str());
        }
        query.fetch_all(&self.pool).await?.iter().map(entry).collect()
    }

    /// How many entries of `kind` the log holds.
    pub async fn audit_count(&self, kind: &str) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM audit_entries WHERE kind = $1")
            .bind(kind)
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?;
        to_u64(n)
    }

    /// The subtree hashes at `wanted` positions that exist.
    pub async fn audit_nodes(&self, wanted: &[(u32, u64)]) -> Result<HashMap<(u32, u64), Hash>, StoreError> {
        nodes_in(&self.pool, wanted).await
    }

    /// Stores a signed checkpoint (a second one for the same size is ignored).
    pub async fn save_checkpoint(&self, checkpoint: &CheckpointRow) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO audit_checkpoints (size, root, note, at) VALUES ($1, $2, $3, $4) ON CONFLICT (size) DO NOTHING")
            .bind(to_i64(checkpoint.size))
            .bind(checkpoint.root.to_vec())
            .bind(&checkpoint.note)
            .bind(checkpoint.at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The checkpoint with the largest size, if any.
    pub async fn latest_checkpoint(&self) -> Result<Option<CheckpointRow>, StoreError> {
        let row = sqlx::query("SELECT size, root, note, at FROM audit_checkpoints ORDER BY size DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            let root: Vec<u8> = row.try_get("root")?;
            Ok(CheckpointRow {
                size: to_u64(row.try_get("size")?)?,
                root: to_hash(&root)?,
                note: row.try_get("note")?,
                at: row.try_get("at")?,
            })
        })
        .transpose()
    }

    /// The sealed checkpoint key named `name`: `(public key, sealed private key)`.
    pub async fn audit_log_key(&self, name: &str) -> Result<Option<(Vec<u8>, Vec<u8>)>, StoreError> {
        let row = sqlx::query("SELECT public_key, sealed_key FROM audit_log_keys WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| Ok((row.try_get("public_key")?, row.try_get("sealed_key")?))).transpose()
    }

    /// Stores a new checkpoint key; [`StoreError::Conflict`] if another replica stored one first.
    pub async fn insert_audit_log_key(
        &self,
        name: &str,
        public_key: &[u8],
        sealed_key: &[u8],
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO audit_log_keys (name, public_key, sealed_key, created_at) VALUES ($1, $2, $3, $4)")
            .bind(name)
            .bind(public_key.to_vec())
            .bind(sealed_key.to_vec())
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(conflict_or(format!("audit log key `{name}`")))?;
        Ok(())
    }

    /// The next sequence number sink `name` has to deliver (0 for a new sink).
    pub async fn sink_cursor(&self, name: &str) -> Result<u64, StoreError> {
        let row = sqlx::query("SELECT next_seq FROM audit_sink_cursors WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.map_or(Ok(0), |row| to_u64(row.try_get("next_seq")?))
    }

    /// Records that sink `name` delivered everything before `next_seq`. The cursor never moves
    /// back: with several replicas delivering the same sink, a slower one cannot undo a faster
    /// one's progress.
    pub async fn set_sink_cursor(&self, name: &str, next_seq: u64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_sink_cursors (name, next_seq) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET next_seq = CASE \
             WHEN excluded.next_seq > audit_sink_cursors.next_seq THEN excluded.next_seq \
             ELSE audit_sink_cursors.next_seq END",
        )
        .bind(name)
        .bind(to_i64(next_seq))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The first sequence number still stored (entries below it were pruned).
    pub async fn audit_pruned_before(&self) -> Result<u64, StoreError> {
        to_u64(
            sqlx::query("SELECT pruned_before FROM audit_head WHERE id = 1")
                .fetch_one(&self.pool)
                .await?
                .try_get("pruned_before")?,
        )
    }

    /// Deletes the entries (and their lookup keys) below `before`, keeping every tree node so
    /// heads and proofs still cover the whole log. Returns how many entries went. `before` may
    /// not pass the log's size; pruning less than before is a no-op.
    pub async fn prune_audit_entries(&self, before: u64) -> Result<u64, StoreError> {
        let mut tx = self.begin_write().await?;
        let head = sqlx::query("SELECT size, pruned_before FROM audit_head WHERE id = 1").fetch_one(&mut *tx).await?;
        let size = to_u64(head.try_get("size")?)?;
        let already = to_u64(head.try_get("pruned_before")?)?;
        if before > size {
            return Err(StoreError::Corrupt(format!("cannot prune before entry {before}: the log has {size}")));
        }
        if before <= already {
            return Ok(0);
        }
        let deleted =
            sqlx::query("DELETE FROM audit_entries WHERE seq < $1").bind(to_i64(before)).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM audit_refs WHERE seq < $1").bind(to_i64(before)).execute(&mut *tx).await?;
        sqlx::query("UPDATE audit_head SET pruned_before = $1 WHERE id = 1")
            .bind(to_i64(before))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(deleted.rows_affected())
    }
}
