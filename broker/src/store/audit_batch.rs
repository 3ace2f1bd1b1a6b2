//! The statements of the audit writer's batch transaction, driven by hand on one connection.
//!
//! Why it exists: every SQL statement lives in `store/`; the writer (`audit::writer`) decides
//! what a batch holds and in which order these run (claim, guarded writes, head, the batch row,
//! commit), and this module only knows the tables. A failed batch is rolled back
//! and its connection closed by the writer, never reused.

use std::collections::HashSet;
use std::fmt::Write as _;

use sqlx::Row as _;

use super::{Backend, StoreError};

/// What a readiness probe writes: about one large batch.
const PROBE_BYTES: usize = 64 * 1024;

/// Rows per multi-row `INSERT` (SQLite allows 32,766 parameters).
const ROWS_PER_STATEMENT: usize = 64;

/// A subject token's one-time claim, as `used_token_ids` stores it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Claim<'a> {
    /// The token's issuer.
    pub(crate) issuer: &'a str,
    /// Its `jti` (or replay key).
    pub(crate) jti: &'a str,
    /// When the claim may be forgotten (the token expired).
    pub(crate) expires_at: i64,
    /// When it was used.
    pub(crate) used_at: i64,
}

/// Opens the batch's write transaction (`BEGIN IMMEDIATE` on SQLite: writers queue here).
pub(crate) async fn begin(conn: &mut sqlx::AnyConnection, backend: Backend) -> Result<(), StoreError> {
    sqlx::query(backend.begin_write_sql()).execute(&mut *conn).await?;
    Ok(())
}

/// Commits the batch.
pub(crate) async fn commit(conn: &mut sqlx::AnyConnection) -> Result<(), StoreError> {
    sqlx::query("COMMIT").execute(&mut *conn).await?;
    Ok(())
}

/// Rolls a failed batch back, best effort: the writer closes the connection either way.
pub(crate) async fn rollback(conn: &mut sqlx::AnyConnection) {
    let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
}

/// Takes each claim not taken before; returns the `(issuer, jti)` pairs this batch took.
pub(crate) async fn claim_tokens(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
    claims: &[Claim<'_>],
) -> Result<HashSet<(String, String)>, StoreError> {
    let mut taken = HashSet::new();
    for chunk in claims.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO used_token_ids (issuer, jti, expires_at, used_at) VALUES {} \
             ON CONFLICT (issuer, jti) DO NOTHING RETURNING issuer, jti",
            placeholders(chunk.len(), 4, backend)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for claim in chunk {
            query = query.bind(claim.issuer).bind(claim.jti).bind(claim.expires_at).bind(claim.used_at);
        }
        for row in query.fetch_all(&mut *conn).await? {
            let issuer: String = row.try_get("issuer")?;
            let jti: String = row.try_get("jti")?;
            taken.insert((issuer, jti));
        }
    }
    Ok(taken)
}

/// Grows the log by `count` entries and returns its new size. The first statement that writes
/// the head: from here on, other appenders (on any replica) wait for this commit.
pub(crate) async fn grow_head(conn: &mut sqlx::AnyConnection, count: u64, written_at: i64) -> Result<u64, StoreError> {
    let size: i64 = sqlx::query("UPDATE audit_head SET size = size + $1, written_at = $2 WHERE id = 1 RETURNING size")
        .bind(i64::try_from(count).map_err(|_| StoreError::Corrupt("batch too large".to_owned()))?)
        .bind(written_at)
        .fetch_one(&mut *conn)
        .await?
        .try_get("size")?;
    u64::try_from(size).map_err(|_| StoreError::Corrupt(format!("audit_head.size is {size}")))
}

/// Writes a batch-sized row, proving the database takes a write of a real batch's size.
pub(crate) async fn probe(conn: &mut sqlx::AnyConnection) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO audit_probe (id, pad) VALUES (1, $1) ON CONFLICT (id) DO UPDATE SET pad = excluded.pad")
        .bind(vec![0u8; PROBE_BYTES])
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// A committed batch as the append transaction writes it.
#[derive(Debug)]
pub(crate) struct NewBatch<'a> {
    /// Sequence number of its first entry.
    pub(crate) first_seq: u64,
    /// Entries in it.
    pub(crate) n: u64,
    /// The compressed body ([`super::audit_codec`]).
    pub(crate) body: &'a [u8],
    /// The tree head after it.
    pub(crate) root: &'a [u8; 32],
    /// The tree's frontier after it, largest subtree first.
    pub(crate) frontier: &'a [[u8; 32]],
}

/// Inserts one batch row: every entry of the batch, the head and the frontier after it.
pub(crate) async fn insert_batch(conn: &mut sqlx::AnyConnection, batch: &NewBatch<'_>) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit_batches (first_seq, n, codec, body, root, frontier) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(to_i64(batch.first_seq)?)
    .bind(to_i64(batch.n)?)
    .bind(super::audit_codec::ZSTD_V1)
    .bind(batch.body)
    .bind(&batch.root[..])
    .bind(batch.frontier.concat())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The frontier recorded with the last batch, if that batch ends the log at `size`.
pub(crate) async fn frontier_at(
    conn: &mut sqlx::AnyConnection,
    size: u64,
) -> Result<Option<Vec<[u8; 32]>>, StoreError> {
    let row = sqlx::query("SELECT first_seq, n, frontier FROM audit_batches ORDER BY first_seq DESC LIMIT 1")
        .fetch_optional(&mut *conn)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let (first, n): (i64, i64) = (row.try_get("first_seq")?, row.try_get("n")?);
    if first.checked_add(n) != i64::try_from(size).ok() {
        return Ok(None);
    }
    let bytes: Vec<u8> = row.try_get("frontier")?;
    Ok(Some(super::audit::to_hashes(&bytes)?))
}

/// A sequence number or index as a `BIGINT`, refusing what does not fit.
pub(crate) fn to_i64(value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::Corrupt(format!("{value} does not fit a BIGINT")))
}

/// `(?, ?), (?, ?)` on SQLite, `($1, $2), ($3, $4)` on PostgreSQL, for `rows` rows of `columns`.
/// SQLite gets anonymous parameters because looking up a numbered one's name is a linear scan,
/// which makes binding a wide multi-row statement quadratic.
pub(crate) fn placeholders(rows: usize, columns: usize, backend: Backend) -> String {
    let mut sql = String::with_capacity(rows * columns * 5);
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for column in 0..columns {
            if column > 0 {
                sql.push_str(", ");
            }
            match backend {
                Backend::Sqlite => sql.push('?'),
                Backend::Postgres => {
                    let _ = write!(sql, "${}", row * columns + column + 1);
                }
            }
        }
        sql.push(')');
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::{Backend, placeholders};

    #[test]
    fn placeholders_number_every_parameter_once() {
        assert_eq!(placeholders(1, 1, Backend::Postgres), "($1)");
        assert_eq!(placeholders(2, 3, Backend::Postgres), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(placeholders(2, 2, Backend::Sqlite), "(?, ?), (?, ?)");
    }
}
