//! Reading the audit log's tables. Appends happen only in `audit::writer` (one batch row per
//! commit); tiles and lookup keys are added by the integrator (`store::audit_integrate`). This
//! module reads entries, subtree hashes, lookup keys and checkpoints, and keeps the checkpoint
//! signing key.
//!
//! Every read that uses what the integrator builds reads its cursor first and then takes the
//! entries past it from the batches themselves, so an answer is never stale or missing an entry
//! the integrator has not reached: lookup keys and tiles cover `seq < cursor`, batch bodies the
//! rest.

use std::collections::{HashMap, HashSet};

use sqlx::Row as _;

use super::audit_codec::{self, BatchEntry};
use super::{Store, StoreError, conflict_or};
use keyward_audit::merkle::{self, Hash, ProofError, Subtrees as _};
use keyward_audit::tiles::{TileId, TiledTree};

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

pub(crate) fn to_hash(bytes: &[u8]) -> Result<Hash, StoreError> {
    bytes.try_into().map_err(|_| StoreError::Corrupt(format!("a tree hash has {} bytes, not 32", bytes.len())))
}

/// The tiles among `wanted` that are stored (one query).
pub(crate) async fn tiles_in(
    conn: &mut sqlx::AnyConnection,
    wanted: &[TileId],
) -> Result<HashMap<TileId, Vec<Hash>>, StoreError> {
    let mut tiles = HashMap::with_capacity(wanted.len());
    for chunk in wanted.chunks(256) {
        let mut sql = String::from("SELECT level, idx, hashes FROM audit_tiles WHERE ");
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push_str(" OR ");
            }
            sql.push_str(&format!("(level = ${} AND idx = ${})", 2 * i + 1, 2 * i + 2));
        }
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for tile in chunk {
            query = query.bind(i32::try_from(tile.level).unwrap_or(i32::MAX)).bind(to_i64(tile.index));
        }
        for row in query.fetch_all(&mut *conn).await? {
            let level: i32 = row.try_get("level")?;
            let index: i64 = row.try_get("idx")?;
            let bytes: Vec<u8> = row.try_get("hashes")?;
            let level = u32::try_from(level).map_err(|_| StoreError::Corrupt(format!("tile level {level}")))?;
            tiles.insert(TileId { level, index: to_u64(index)? }, to_hashes(&bytes)?);
        }
    }
    Ok(tiles)
}

/// Concatenated tree hashes (a tile, a frontier).
pub(crate) fn to_hashes(bytes: &[u8]) -> Result<Vec<Hash>, StoreError> {
    if !bytes.len().is_multiple_of(32) {
        return Err(StoreError::Corrupt(format!("{} bytes of tree hashes, not a multiple of 32", bytes.len())));
    }
    bytes.chunks_exact(32).map(to_hash).collect()
}

/// How far the integrator has come: tiles and lookup keys cover the entries below it.
pub(crate) async fn integrated<'e, E>(executor: E) -> Result<u64, StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    to_u64(sqlx::query("SELECT size FROM audit_integration WHERE id = 1").fetch_one(executor).await?.try_get("size")?)
}

/// A stored batch, decoded.
#[derive(Debug)]
pub(crate) struct Batch {
    /// Sequence number of its first entry.
    pub(crate) first_seq: u64,
    /// Its entries, in order.
    pub(crate) entries: Vec<BatchEntry>,
    /// The tree head recorded after it.
    pub(crate) root: Hash,
}

/// Up to `max_rows` batches holding entries in `from..to`, in order (the first may start before
/// `from`).
pub(crate) async fn batches_between(
    conn: &mut sqlx::AnyConnection,
    from: u64,
    to: u64,
    max_rows: u64,
) -> Result<Vec<Batch>, StoreError> {
    let rows = sqlx::query(
        "SELECT first_seq, n, codec, body, root FROM audit_batches WHERE first_seq < $2 AND first_seq + n > $1 \
         AND first_seq >= (SELECT COALESCE(MAX(first_seq), 0) FROM audit_batches WHERE first_seq <= $1) \
         ORDER BY first_seq LIMIT $3",
    )
    .bind(to_i64(from))
    .bind(to_i64(to))
    .bind(to_i64(max_rows))
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|row| {
            let n = to_u64(row.try_get("n")?)?;
            let body: Vec<u8> = row.try_get("body")?;
            let root: Vec<u8> = row.try_get("root")?;
            Ok(Batch {
                first_seq: to_u64(row.try_get("first_seq")?)?,
                entries: audit_codec::decode(row.try_get("codec")?, &body, n)?,
                root: to_hash(&root)?,
            })
        })
        .collect()
}

/// Every entry with `from <= seq < to`, read from the batches (for the entries past the
/// integrator's cursor, and for ranges).
async fn entries_between(
    conn: &mut sqlx::AnyConnection,
    from: u64,
    to: u64,
    limit: u64,
) -> Result<Vec<StoredEntry>, StoreError> {
    let mut entries = Vec::new();
    let mut next = from;
    while next < to && (entries.len() as u64) < limit {
        let batches = batches_between(conn, next, to, BATCHES_PER_READ).await?;
        let Some(last) = batches.last() else { break };
        let after = last.first_seq + last.entries.len() as u64;
        for batch in batches {
            for (seq, entry) in (batch.first_seq..).zip(batch.entries) {
                if seq >= next && seq < to && (entries.len() as u64) < limit {
                    entries.push(StoredEntry { seq, kind: entry.kind, body: entry.body });
                }
            }
        }
        next = after;
    }
    Ok(entries)
}

/// Batch rows one read takes at most (each up to 4,096 entries).
const BATCHES_PER_READ: u64 = 8;

/// The hashes of the perfect subtrees `wanted` of the tree of `size` entries, from the tiles
/// below the integrator's cursor and the leaf hashes of the entries past it.
pub(crate) async fn subtrees_on(
    conn: &mut sqlx::AnyConnection,
    wanted: &[(u32, u64)],
    size: u64,
) -> Result<HashMap<(u32, u64), Hash>, StoreError> {
    let integrated = integrated(&mut *conn).await?;
    let (tiles, needs_recent) = TiledTree::needed_tiles(integrated, wanted);
    let tiles = tiles_in(conn, &tiles.into_iter().collect::<Vec<_>>()).await?;
    let recent: Vec<Hash> = if needs_recent && size > integrated {
        let entries = entries_between(conn, integrated, size, size - integrated).await?;
        if entries.first().is_some_and(|e| e.seq != integrated) {
            return Err(StoreError::Corrupt(format!("the audit log has no entry {integrated}")));
        }
        entries.iter().map(|e| merkle::leaf_hash(e.body.as_bytes())).collect()
    } else {
        Vec::new()
    };
    let tree = TiledTree { tiles: &tiles, integrated, recent: &recent };
    wanted
        .iter()
        .filter_map(|&(level, index)| match tree.hash(level, index) {
            Ok(hash) => Some(Ok(((level, index), hash))),
            Err(ProofError::Missing { .. }) => None,
            Err(other) => Some(Err(StoreError::Corrupt(other.to_string()))),
        })
        .collect()
}

/// An entry past the integrator's cursor, with its lookup keys.
#[derive(Debug)]
struct RecentEntry {
    seq: u64,
    kind: String,
    refs: Vec<String>,
    body: String,
}

impl From<RecentEntry> for StoredEntry {
    fn from(entry: RecentEntry) -> Self {
        Self { seq: entry.seq, kind: entry.kind, body: entry.body }
    }
}

/// The integrator's cursor, and every (unpruned) entry past it, read from the batches.
async fn unintegrated(conn: &mut sqlx::AnyConnection) -> Result<(u64, Vec<RecentEntry>), StoreError> {
    let cursor = integrated(&mut *conn).await?;
    let pruned = pruned_before(&mut *conn).await?;
    let mut recent = Vec::new();
    let mut next = cursor;
    loop {
        let batches = batches_between(conn, next, u64::MAX >> 1, BATCHES_PER_READ).await?;
        let Some(last) = batches.last() else { break };
        next = last.first_seq + last.entries.len() as u64;
        for batch in batches {
            let first = batch.first_seq;
            for (seq, entry) in (first..).zip(batch.entries) {
                if seq >= cursor && seq >= pruned {
                    recent.push(RecentEntry { seq, kind: entry.kind, refs: entry.refs, body: entry.body });
                }
            }
        }
    }
    Ok((cursor, recent))
}

/// The entries at `seqs` (any order, no duplicates), in order; each batch is read once.
async fn entries_at(conn: &mut sqlx::AnyConnection, mut seqs: Vec<u64>) -> Result<Vec<StoredEntry>, StoreError> {
    seqs.sort_unstable();
    seqs.dedup();
    let mut found = Vec::with_capacity(seqs.len());
    let mut pending = seqs.as_slice();
    while let Some(&first) = pending.first() {
        let batches = batches_between(conn, first, first + 1, 1).await?;
        let Some(mut batch) = batches.into_iter().next() else {
            return Err(StoreError::Corrupt(format!("the audit log has no batch holding entry {first}")));
        };
        let end = batch.first_seq + batch.entries.len() as u64;
        let (inside, rest) = pending.split_at(pending.partition_point(|&seq| seq < end));
        for &seq in inside {
            let offset = usize::try_from(seq - batch.first_seq).unwrap_or(usize::MAX);
            let entry = batch.entries.get_mut(offset).ok_or_else(|| {
                StoreError::Corrupt(format!("the audit log has no entry {seq} in the batch at {}", batch.first_seq))
            })?;
            // `seqs` has no duplicates, so each entry is taken at most once.
            found.push(StoredEntry {
                seq,
                kind: std::mem::take(&mut entry.kind),
                body: std::mem::take(&mut entry.body),
            });
        }
        pending = rest;
    }
    Ok(found)
}

/// The first sequence number still readable.
pub(crate) async fn pruned_before<'e, E>(executor: E) -> Result<u64, StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    to_u64(
        sqlx::query("SELECT pruned_before FROM audit_head WHERE id = 1")
            .fetch_one(executor)
            .await?
            .try_get("pruned_before")?,
    )
}

impl Store {
    /// The number of entries in the log.
    pub async fn audit_size(&self) -> Result<u64, StoreError> {
        to_u64(sqlx::query("SELECT size FROM audit_head WHERE id = 1").fetch_one(&self.pool).await?.try_get("size")?)
    }

    /// Entries with `from <= seq < to`, in order, at most `limit` (none below the pruning point).
    pub async fn audit_entries(&self, from: u64, to: u64, limit: u64) -> Result<Vec<StoredEntry>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let from = from.max(pruned_before(&mut *conn).await?);
        entries_between(&mut conn, from, to, limit).await
    }

    /// The last `limit` entries of `kind` (any kind when `None`), oldest first.
    pub async fn audit_tail(&self, kind: Option<&str>, limit: u64) -> Result<Vec<StoredEntry>, StoreError> {
        let Some(kind) = kind else {
            let size = self.audit_size().await?;
            return self.audit_entries(size.saturating_sub(limit), size, limit).await;
        };
        let mut conn = self.pool.acquire().await?;
        let (cursor, recent) = unintegrated(&mut conn).await?;
        let mut tail: Vec<StoredEntry> = recent.into_iter().filter(|e| e.kind == kind).map(StoredEntry::from).collect();
        let skip = tail.len().saturating_sub(usize::try_from(limit).unwrap_or(usize::MAX));
        tail.drain(..skip);
        let wanted = limit.saturating_sub(tail.len() as u64);
        if wanted > 0 {
            let seqs: Vec<u64> =
                sqlx::query("SELECT seq FROM audit_refs WHERE ref = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3")
                    .bind(format!("kind:{kind}"))
                    .bind(to_i64(cursor))
                    .bind(to_i64(wanted))
                    .fetch_all(&mut *conn)
                    .await?
                    .iter()
                    .map(|row| to_u64(row.try_get("seq")?))
                    .collect::<Result<_, _>>()?;
            let mut older = entries_at(&mut conn, seqs).await?;
            older.append(&mut tail);
            tail = older;
        }
        Ok(tail)
    }

    /// Entries carrying any of `refs` (`run:<id>`, `akid:<key id>`…), in order.
    pub async fn audit_entries_for(&self, refs: &[String]) -> Result<Vec<StoredEntry>, StoreError> {
        if refs.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.pool.acquire().await?;
        let (cursor, recent) = unintegrated(&mut conn).await?;
        let list: Vec<String> = (2..=refs.len() + 1).map(|i| format!("${i}")).collect();
        let sql = format!("SELECT DISTINCT seq FROM audit_refs WHERE seq < $1 AND ref IN ({})", list.join(", "));
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(to_i64(cursor));
        for reference in refs {
            query = query.bind(reference.as_str());
        }
        let seqs: Vec<u64> = query
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|row| to_u64(row.try_get("seq")?))
            .collect::<Result<_, _>>()?;
        let mut found = entries_at(&mut conn, seqs).await?;
        let wanted: HashSet<&str> = refs.iter().map(String::as_str).collect();
        found.extend(
            recent
                .into_iter()
                .filter(|e| {
                    wanted.contains(format!("kind:{}", e.kind).as_str())
                        || e.refs.iter().any(|r| wanted.contains(r.as_str()))
                })
                .map(StoredEntry::from),
        );
        Ok(found)
    }

    /// How many entries of `kind` the log holds.
    pub async fn audit_count(&self, kind: &str) -> Result<u64, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let (cursor, recent) = unintegrated(&mut conn).await?;
        let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM audit_refs WHERE ref = $1 AND seq < $2")
            .bind(format!("kind:{kind}"))
            .bind(to_i64(cursor))
            .fetch_one(&mut *conn)
            .await?
            .try_get("n")?;
        Ok(to_u64(n)? + recent.iter().filter(|e| e.kind == kind).count() as u64)
    }

    /// The hashes of the perfect subtrees `wanted` of the tree of `size` entries; a subtree the
    /// tree does not have (yet) is absent from the answer.
    pub async fn audit_subtrees(
        &self,
        wanted: &[(u32, u64)],
        size: u64,
    ) -> Result<HashMap<(u32, u64), Hash>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        subtrees_on(&mut conn, wanted, size).await
    }

    /// How many entries the integrator has covered with tiles and lookup keys.
    pub async fn audit_integrated(&self) -> Result<u64, StoreError> {
        integrated(&self.pool).await
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

    /// The names of the checkpoint keys stored, oldest first.
    pub async fn audit_log_key_names(&self) -> Result<Vec<String>, StoreError> {
        let names = sqlx::query_scalar("SELECT name FROM audit_log_keys ORDER BY created_at, name")
            .fetch_all(&self.pool)
            .await?;
        Ok(names)
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
        Ok(self.sink_cursor_if_set(name).await?.unwrap_or(0))
    }

    /// Sink `name`'s cursor, or `None` before it was first set.
    pub async fn sink_cursor_if_set(&self, name: &str) -> Result<Option<u64>, StoreError> {
        let row = sqlx::query("SELECT next_seq FROM audit_sink_cursors WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| to_u64(row.try_get("next_seq")?)).transpose()
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
        pruned_before(&self.pool).await
    }

    /// Makes the entries below `before` unreadable and deletes what holds only them: their
    /// lookup keys, and each batch row whose entries are all below `before` and integrated. The
    /// tiles stay, so heads and proofs still cover the whole log. Returns how many entries went.
    /// `before` may not pass the log's size; pruning less than before is a no-op.
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
        // A batch the integrator has not read yet stays until it has: its leaves become tiles.
        let deletable = before.min(integrated(&mut *tx).await?);
        sqlx::query("DELETE FROM audit_batches WHERE first_seq + n <= $1")
            .bind(to_i64(deletable))
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM audit_refs WHERE seq < $1").bind(to_i64(before)).execute(&mut *tx).await?;
        sqlx::query("UPDATE audit_head SET pruned_before = $1 WHERE id = 1")
            .bind(to_i64(before))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(before - already)
    }
}
