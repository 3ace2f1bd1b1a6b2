//! The audit log's integrator step: turns committed batches into tiles and lookup keys.
//!
//! Why it exists: the append transaction writes one row per batch and nothing else, so that a
//! durable entry costs about a hundred bytes; what makes the log fast to search and to prove
//! (tiles, the `kind:`/`run:`/`jti:`/`akid:` keys) is built here, afterwards, by any replica.
//! A step reads and hashes outside any lock, checks every batch against the tree head recorded
//! with it, then writes tiles, keys and the new cursor in one short transaction that first
//! checks the cursor has not moved: two integrators never both apply the same step, and a step
//! that dies half-way leaves nothing (the next one redoes it, byte for byte).

use sqlx::Row as _;

use super::audit::{self, Batch};
use super::audit_batch::{placeholders, to_i64};
use super::{Backend, Store, StoreError};
use keyward_audit::merkle;
use keyward_audit::tiles::{self, TileBuilder, TileId};

/// Lookup-key rows per `INSERT`. SQLite keeps a statement journal of every page a statement
/// changes (in memory, `temp_store = MEMORY`): random keys touch about one leaf page each, so
/// this bounds that journal to ~16 MiB.
const REFS_PER_STATEMENT: usize = 4 * 1024;

/// What one step did: entries `from..to` are integrated now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Integrated {
    /// The cursor before.
    pub from: u64,
    /// The cursor after.
    pub to: u64,
}

/// A step's output, computed before any lock is taken.
struct Step {
    from: u64,
    to: u64,
    tiles: Vec<(TileId, Vec<merkle::Hash>)>,
    /// Every entry's lookup keys (`kind:<kind>` included), sorted by key, as the JSON arrays of
    /// `"<seq>:<ref>"` that [`write_refs`] sends.
    refs: Vec<String>,
}

impl Store {
    /// Integrates the batches past the cursor, about `max_entries` entries of them (whole
    /// batches). `None` when there was nothing to do; `Some` with an empty range when another
    /// replica took the same step first.
    pub async fn integrate_audit(&self, max_entries: u64) -> Result<Option<Integrated>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let Some(step) = prepare(&mut conn, max_entries).await? else { return Ok(None) };
        drop(conn);
        let _turn = self.audit_write_turn().await;
        let mut tx = self.begin_write().await?;
        let cursor_sql = match self.backend {
            Backend::Sqlite => "SELECT size FROM audit_integration WHERE id = 1",
            Backend::Postgres => "SELECT size FROM audit_integration WHERE id = 1 FOR UPDATE",
        };
        let cursor: i64 = sqlx::query(cursor_sql).fetch_one(&mut *tx).await?.try_get("size")?;
        if u64::try_from(cursor).ok() != Some(step.from) {
            return Ok(Some(Integrated { from: step.from, to: step.from }));
        }
        write_tiles(&mut tx, self.backend, &step.tiles).await?;
        let pruned = audit::pruned_before(&mut *tx).await?;
        write_refs(&mut tx, self.backend, &step.refs, pruned).await?;
        sqlx::query("UPDATE audit_integration SET size = $1 WHERE id = 1")
            .bind(to_i64(step.to)?)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(Integrated { from: step.from, to: step.to }))
    }
}

/// Reads the batches past the cursor and builds their tiles and keys, checking each batch's
/// recorded tree head on the way.
async fn prepare(conn: &mut sqlx::AnyConnection, max_entries: u64) -> Result<Option<Step>, StoreError> {
    let from = audit::integrated(&mut *conn).await?;
    let mut batches: Vec<Batch> = Vec::new();
    let mut next = from;
    'read: while next - from < max_entries {
        let more = audit::batches_between(conn, next, u64::MAX >> 1, 4).await?;
        if more.is_empty() {
            break;
        }
        for batch in more {
            next = batch.first_seq + batch.entries.len() as u64;
            batches.push(batch);
            if next - from >= max_entries {
                break 'read;
            }
        }
    }
    let Some(first) = batches.first() else { return Ok(None) };
    if first.first_seq != from {
        return Err(StoreError::Corrupt(format!(
            "the audit log's integrator is at entry {from}, but the next batch starts at {}",
            first.first_seq
        )));
    }
    let wanted = tiles::partial_tiles(from);
    let stored = audit::tiles_in(conn, &wanted).await?;
    let mut builder = TileBuilder::resume(from, &stored).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let mut refs = Vec::new();
    for Batch { first_seq, entries, root } in batches {
        if first_seq != builder.size() {
            return Err(StoreError::Corrupt(format!(
                "the audit batch at {first_seq} does not follow the one ending at {}",
                builder.size()
            )));
        }
        for (seq, entry) in (first_seq..).zip(entries) {
            builder.push(merkle::leaf_hash(entry.body.as_bytes()));
            refs.push((format!("kind:{}", entry.kind), seq));
            refs.extend(entry.refs.into_iter().map(|r| (r, seq)));
        }
        if builder.root().map_err(|e| StoreError::Corrupt(e.to_string()))? != root {
            return Err(StoreError::Corrupt(format!(
                "the audit batch at {first_seq} does not hash to the tree head recorded with it"
            )));
        }
    }
    refs.sort_unstable();
    let mut chunks = Vec::with_capacity(refs.len().div_ceil(REFS_PER_STATEMENT));
    for chunk in refs.chunks(REFS_PER_STATEMENT) {
        let keys: Vec<String> = chunk.iter().map(|(reference, seq)| format!("{seq}:{reference}")).collect();
        chunks.push(serde_json::to_string(&keys).map_err(|e| StoreError::Corrupt(e.to_string()))?);
    }
    Ok(Some(Step { from, to: builder.size(), tiles: builder.take_tiles(), refs: chunks }))
}

pub(crate) async fn write_tiles(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
    tiles: &[(TileId, Vec<merkle::Hash>)],
) -> Result<(), StoreError> {
    // A tile is a function of the tree alone, so writing one again (a partial tile grown, or a
    // step redone) replaces it with the same or a longer row.
    for chunk in tiles.chunks(64) {
        let sql = format!(
            "INSERT INTO audit_tiles (level, idx, hashes) VALUES {} \
             ON CONFLICT (level, idx) DO UPDATE SET hashes = excluded.hashes",
            placeholders(chunk.len(), 3, backend)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (tile, hashes) in chunk {
            query = query
                .bind(i32::try_from(tile.level).unwrap_or(i32::MAX))
                .bind(to_i64(tile.index)?)
                .bind(hashes.concat());
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Inserts lookup keys of entries from `pruned` on, many per statement: each statement's keys
/// travel as one JSON array of `"<seq>:<ref>"` strings (a sequence number has no `:`, so the
/// first one separates) that the database unpacks itself, because binding two parameters per row
/// costs more than the insert, and unpacking a nested pair per row more than splitting a string.
/// They are sorted, so neighbouring keys share B-tree pages.
async fn write_refs(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
    chunks: &[String],
    pruned: u64,
) -> Result<(), StoreError> {
    let sql = match backend {
        Backend::Sqlite => {
            // `OR IGNORE` rather than `ON CONFLICT DO NOTHING`: no constraint can abort the
            // statement then, so SQLite keeps no statement journal for it (a multi-row insert
            // that may abort journals every page it touches to a temporary file first).
            "INSERT OR IGNORE INTO audit_refs (ref, seq) SELECT substr(value, instr(value, ':') + 1), \
             CAST(substr(value, 1, instr(value, ':') - 1) AS INTEGER) AS at \
             FROM json_each($1) WHERE at >= $2"
        }
        Backend::Postgres => {
            "INSERT INTO audit_refs (ref, seq) SELECT substr(v, strpos(v, ':') + 1), at \
             FROM json_array_elements_text($1::json) AS v, LATERAL (SELECT substr(v, 1, strpos(v, ':') - 1)::bigint AS at) AS s \
             WHERE at >= $2 ON CONFLICT (ref, seq) DO NOTHING"
        }
    };
    for json in chunks {
        sqlx::query(sql).bind(json.as_str()).bind(to_i64(pruned)?).execute(&mut *conn).await?;
    }
    Ok(())
}
