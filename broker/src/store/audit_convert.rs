//! Converting an audit log written before batch rows (versions up to 0.11's schema) into
//! batches and tiles, once, at the first start after the upgrade.
//!
//! Why in Rust and not in the SQL migration: a batch body is compressed and carries the tree
//! head and frontier after it, which SQL cannot compute. Migration 0012 renames the old tables
//! (`audit_legacy_entries`, `audit_legacy_nodes`) and adds the `kind:` lookup keys; this module
//! moves the entries into batch rows of up to 4,096, each in its own transaction (so a broker
//! stopped half-way resumes where it was), checking every entry's hash against the leaf stored
//! for it, then copies the stored subtree hashes into tiles and drops the old tables. Leaf hashes
//! do not change, so every checkpoint signed before the upgrade still verifies after it.

use std::collections::HashMap;

use sqlx::Row as _;

use super::audit::to_hash;
use super::audit_batch::{self, NewBatch, to_i64};
use super::audit_codec::BatchEncoder;
use super::audit_integrate::write_tiles;
use super::{Backend, Store, StoreError};
use keyward_audit::merkle::{self, Hash, NodeMap, Query, Subtrees as _};
use keyward_audit::tiles::{TILE_HEIGHT, TILE_WIDTH, TileId, TiledTree};

/// Entries per converted batch (the writer's largest batch).
const ENTRIES_PER_BATCH: i64 = 4096;

/// Subtree hashes read per query while building tiles.
const NODES_PER_READ: i64 = 64 * 1024;

impl Store {
    /// Converts an old-layout audit log, if there is one; a no-op afterwards.
    pub(crate) async fn convert_legacy_audit(&self) -> Result<(), StoreError> {
        if !self.legacy_pending().await? {
            return Ok(());
        }
        let size = self.audit_size().await?;
        let mut converted = 0u64;
        loop {
            let moved = self.convert_chunk().await?;
            if moved == 0 {
                break;
            }
            converted += moved;
            if converted.is_multiple_of(64 * ENTRIES_PER_BATCH as u64) {
                tracing::info!(converted, size, "converting the audit log to batch rows");
            }
        }
        self.finish_conversion(size).await?;
        if converted > 0 {
            tracing::info!(converted, size, "the audit log is converted to batch rows and tiles");
        }
        Ok(())
    }

    async fn legacy_pending(&self) -> Result<bool, StoreError> {
        let legacy: i32 = sqlx::query("SELECT legacy FROM audit_integration WHERE id = 1")
            .fetch_one(&self.pool)
            .await?
            .try_get("legacy")?;
        Ok(legacy != 0)
    }

    /// Moves the first (up to) 4,096 old entries into one batch row. Returns how many moved.
    async fn convert_chunk(&self) -> Result<u64, StoreError> {
        let mut tx = self.begin_write().await?;
        if !lock_legacy(&mut tx, self.backend).await? {
            return Ok(0);
        }
        let rows = sqlx::query("SELECT seq, kind, body FROM audit_legacy_entries ORDER BY seq LIMIT $1")
            .bind(ENTRIES_PER_BATCH)
            .fetch_all(&mut *tx)
            .await?;
        let Some(first) = rows.first() else { return Ok(0) };
        let first: i64 = first.try_get("seq")?;
        let end = first + rows.len() as i64;
        let leaves: HashMap<i64, Vec<u8>> =
            sqlx::query("SELECT idx, hash FROM audit_legacy_nodes WHERE level = 0 AND idx >= $1 AND idx < $2")
                .bind(first)
                .bind(end)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|row| Ok((row.try_get("idx")?, row.try_get("hash")?)))
                .collect::<Result<_, sqlx::Error>>()?;
        let mut refs: HashMap<i64, Vec<String>> = HashMap::new();
        for row in sqlx::query("SELECT ref, seq FROM audit_refs WHERE seq >= $1 AND seq < $2 ORDER BY ref")
            .bind(first)
            .bind(end)
            .fetch_all(&mut *tx)
            .await?
        {
            let reference: String = row.try_get("ref")?;
            if !reference.starts_with("kind:") {
                refs.entry(row.try_get("seq")?).or_default().push(reference);
            }
        }
        let mut encoder = BatchEncoder::with_capacity(rows.len());
        for (expected, row) in (first..).zip(&rows) {
            let seq: i64 = row.try_get("seq")?;
            if seq != expected {
                return Err(StoreError::Corrupt(format!("the old audit log has no entry {expected}")));
            }
            let (kind, body): (String, String) = (row.try_get("kind")?, row.try_get("body")?);
            let stored = encoder.push(&kind, refs.get(&seq).map_or(&[][..], Vec::as_slice), &body)?;
            if leaves.get(&seq).map(Vec::as_slice) != Some(&merkle::leaf_hash(stored)[..]) {
                return Err(StoreError::Corrupt(format!("old audit entry {seq} does not match its stored leaf hash")));
            }
        }
        let end_u = u64::try_from(end).map_err(|_| StoreError::Corrupt(format!("sequence number {end}")))?;
        let (root, frontier) = legacy_head(&mut tx, end_u).await?;
        let body = encoder.finish()?;
        let batch = NewBatch {
            first_seq: end_u - rows.len() as u64,
            n: rows.len() as u64,
            body: &body,
            root: &root,
            frontier: &frontier,
        };
        audit_batch::insert_batch(&mut tx, &batch).await?;
        sqlx::query("DELETE FROM audit_legacy_entries WHERE seq < $1").bind(end).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(rows.len() as u64)
    }

    /// Copies the old subtree hashes of levels 0, 8, 16… into tiles, checks they give the same
    /// head as the old nodes, marks the integrator done up to `size` and drops the old tables.
    async fn finish_conversion(&self, size: u64) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        if !lock_legacy(&mut tx, self.backend).await? {
            return Ok(());
        }
        let (wanted, _) = TiledTree::needed_tiles(
            size,
            &merkle::needed_subtrees(Query::Root(size)).map_err(corrupt)?.into_iter().collect::<Vec<_>>(),
        );
        let mut kept: HashMap<TileId, Vec<Hash>> = HashMap::new();
        for level in 0..64 / TILE_HEIGHT {
            let positions = size >> (TILE_HEIGHT * level);
            if positions == 0 {
                break;
            }
            let mut next = 0u64;
            while next < positions {
                let rows = sqlx::query(
                    "SELECT idx, hash FROM audit_legacy_nodes WHERE level = $1 AND idx >= $2 AND idx < $3 ORDER BY idx LIMIT $4",
                )
                .bind(i32::try_from(TILE_HEIGHT * level).unwrap_or(i32::MAX))
                .bind(to_i64(next)?)
                .bind(to_i64(positions)?)
                .bind(NODES_PER_READ)
                .fetch_all(&mut *tx)
                .await?;
                if rows.is_empty() {
                    return Err(StoreError::Corrupt(format!(
                        "the old audit tree has no node at level {}, index {next}",
                        TILE_HEIGHT * level
                    )));
                }
                let mut hashes = Vec::with_capacity(rows.len());
                for row in &rows {
                    let index: i64 = row.try_get("idx")?;
                    if u64::try_from(index).ok() != Some(next + hashes.len() as u64) {
                        return Err(StoreError::Corrupt(format!(
                            "the old audit tree has no node at level {}, index {}",
                            TILE_HEIGHT * level,
                            next + hashes.len() as u64
                        )));
                    }
                    let hash: Vec<u8> = row.try_get("hash")?;
                    hashes.push(to_hash(&hash)?);
                }
                // NODES_PER_READ is a multiple of the tile width: every read starts a tile.
                let tiles: Vec<(TileId, Vec<Hash>)> = hashes
                    .chunks(TILE_WIDTH)
                    .zip(next / TILE_WIDTH as u64..)
                    .map(|(tile, index)| (TileId { level, index }, tile.to_vec()))
                    .collect();
                write_tiles(&mut tx, self.backend, &tiles).await?;
                kept.extend(tiles.into_iter().filter(|(id, _)| wanted.contains(id)));
                next += hashes.len() as u64;
            }
        }
        let tiled = merkle::root(&TiledTree { tiles: &kept, integrated: size, recent: &[] }, size).map_err(corrupt)?;
        let (root, _) = legacy_head(&mut tx, size).await?;
        if tiled != root {
            return Err(StoreError::Corrupt("the audit log's tiles do not give the head of its old tree".to_owned()));
        }
        sqlx::query("UPDATE audit_integration SET size = $1, legacy = 0 WHERE id = 1")
            .bind(to_i64(size)?)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DROP TABLE audit_legacy_entries").execute(&mut *tx).await?;
        sqlx::query("DROP TABLE audit_legacy_nodes").execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Waits for other replicas converting at the same time (PostgreSQL) and says whether there is
/// still something to convert.
async fn lock_legacy(conn: &mut sqlx::AnyConnection, backend: Backend) -> Result<bool, StoreError> {
    let sql = match backend {
        Backend::Sqlite => "SELECT legacy FROM audit_integration WHERE id = 1",
        Backend::Postgres => "SELECT legacy FROM audit_integration WHERE id = 1 FOR UPDATE",
    };
    let legacy: i32 = sqlx::query(sql).fetch_one(&mut *conn).await?.try_get("legacy")?;
    Ok(legacy != 0)
}

/// The head and frontier of the old tree at `size`, from its stored nodes.
async fn legacy_head(conn: &mut sqlx::AnyConnection, size: u64) -> Result<(Hash, Vec<Hash>), StoreError> {
    let positions = merkle::frontier(size);
    let mut nodes = HashMap::new();
    for &(level, index) in &positions {
        let row = sqlx::query("SELECT hash FROM audit_legacy_nodes WHERE level = $1 AND idx = $2")
            .bind(i32::try_from(level).unwrap_or(i32::MAX))
            .bind(to_i64(index)?)
            .fetch_optional(&mut *conn)
            .await?
            .ok_or_else(|| {
                StoreError::Corrupt(format!("the old audit tree has no node at level {level}, index {index}"))
            })?;
        let hash: Vec<u8> = row.try_get("hash")?;
        nodes.insert((level, index), to_hash(&hash)?);
    }
    let map = NodeMap(nodes);
    let root = merkle::root(&map, size).map_err(corrupt)?;
    let frontier =
        positions.iter().map(|&(level, index)| map.hash(level, index)).collect::<Result<_, _>>().map_err(corrupt)?;
    Ok((root, frontier))
}

fn corrupt(error: merkle::ProofError) -> StoreError {
    StoreError::Corrupt(error.to_string())
}
