//! Rows of the Terraform state the broker keeps for each stack (`state_versions`, `state_locks`;
//! migration 0013): reads, and the guarded writes that commit with their audit entries.
//!
//! Every write carries the condition it was decided on: a new version is numbered one past the
//! version the caller read (so two writers racing cannot both succeed, and nothing is lost), and a
//! job's write or unlock holds only while the lock is the job's own.

use sqlx::Row as _;

use super::write::Write;
use super::{Store, StoreError};

/// One stored version of a stack's state, without its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateVersionRow {
    /// The stack.
    pub stack: String,
    /// 1, 2, … per stack.
    pub version: i64,
    /// Terraform's serial.
    pub serial: i64,
    /// Terraform's lineage.
    pub lineage: String,
    /// SHA-256 of the content.
    pub sha256: Vec<u8>,
    /// Bytes of content.
    pub size: i64,
    /// `apply`, `push` or `rollback`.
    pub source: String,
    /// The run whose apply wrote it.
    pub run_id: Option<String>,
    /// The job that wrote it.
    pub job_id: Option<String>,
    /// `job:<id>` or the operator's API token name.
    pub written_by: String,
    /// When.
    pub created_at: i64,
}

/// A version's sealed content.
pub struct SealedState {
    /// The version.
    pub version: i64,
    /// SHA-256 of the content.
    pub sha256: Vec<u8>,
    /// The content, sealed under the KEK.
    pub sealed: Vec<u8>,
}

impl std::fmt::Debug for SealedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedState").field("version", &self.version).field("sealed_len", &self.sealed.len()).finish()
    }
}

/// A stack's state lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateLockRow {
    /// Terraform's lock ID.
    pub lock_id: String,
    /// Terraform's lock information, as sent.
    pub info: String,
    /// The job that holds it.
    pub job_id: Option<String>,
    /// The lease it was taken under.
    pub fencing_token: Option<i64>,
    /// `job:<id>`.
    pub locked_by: String,
    /// When.
    pub created_at: i64,
}

/// A version to keep.
#[derive(Debug, Clone)]
pub struct NewStateVersion<'a> {
    /// The stack.
    pub stack: &'a str,
    /// The version this one follows (0: the stack has none yet).
    pub after: i64,
    /// Terraform's serial.
    pub serial: i64,
    /// Terraform's lineage.
    pub lineage: &'a str,
    /// SHA-256 of the content.
    pub sha256: Vec<u8>,
    /// Bytes of content.
    pub size: i64,
    /// The content, sealed.
    pub sealed: Vec<u8>,
    /// `apply`, `push` or `rollback`.
    pub source: &'a str,
    /// The run.
    pub run_id: Option<String>,
    /// The job.
    pub job_id: Option<String>,
    /// Who.
    pub written_by: &'a str,
}

const VERSION_COLUMNS: &str =
    "stack, version, serial, lineage, sha256, size, source, run_id, job_id, written_by, created_at";

fn version_row(row: &sqlx::any::AnyRow) -> Result<StateVersionRow, StoreError> {
    Ok(StateVersionRow {
        stack: row.try_get("stack")?,
        version: row.try_get("version")?,
        serial: row.try_get("serial")?,
        lineage: row.try_get("lineage")?,
        sha256: row.try_get("sha256")?,
        size: row.try_get("size")?,
        source: row.try_get("source")?,
        run_id: row.try_get("run_id")?,
        job_id: row.try_get("job_id")?,
        written_by: row.try_get("written_by")?,
        created_at: row.try_get("created_at")?,
    })
}

impl Store {
    /// Every version of `stack`'s state, newest first.
    pub async fn state_versions(&self, stack: &str) -> Result<Vec<StateVersionRow>, StoreError> {
        let sql = format!("SELECT {VERSION_COLUMNS} FROM state_versions WHERE stack = $1 ORDER BY version DESC");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(stack).fetch_all(&self.pool).await?;
        rows.iter().map(version_row).collect()
    }

    /// Version `version` of `stack`'s state, or its newest with `None`.
    pub async fn state_version(
        &self,
        stack: &str,
        version: Option<i64>,
    ) -> Result<Option<StateVersionRow>, StoreError> {
        let sql = format!(
            "SELECT {VERSION_COLUMNS} FROM state_versions WHERE stack = $1 AND ($2 < 0 OR version = $2) \
             ORDER BY version DESC LIMIT 1"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(stack)
            .bind(version.unwrap_or(-1))
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(version_row).transpose()
    }

    /// The sealed content of version `version` of `stack`'s state.
    pub async fn sealed_state(&self, stack: &str, version: i64) -> Result<Option<SealedState>, StoreError> {
        let row = sqlx::query("SELECT version, sha256, sealed FROM state_versions WHERE stack = $1 AND version = $2")
            .bind(stack)
            .bind(version)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            Ok(SealedState {
                version: row.try_get("version")?,
                sha256: row.try_get("sha256")?,
                sealed: row.try_get("sealed")?,
            })
        })
        .transpose()
    }

    /// Whether the broker keeps `stack`'s state; `None` for an unknown stack.
    pub async fn stack_manages_state(&self, stack: &str) -> Result<Option<bool>, StoreError> {
        let row = sqlx::query("SELECT managed_state FROM stacks WHERE name = $1")
            .bind(stack)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| Ok(row.try_get::<i64, _>("managed_state")? != 0)).transpose()
    }

    /// `stack`'s state lock, if one is held.
    pub async fn state_lock(&self, stack: &str) -> Result<Option<StateLockRow>, StoreError> {
        let row = sqlx::query(
            "SELECT lock_id, info, job_id, fencing_token, locked_by, created_at FROM state_locks WHERE stack = $1",
        )
        .bind(stack)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(StateLockRow {
                lock_id: row.try_get("lock_id")?,
                info: row.try_get("info")?,
                job_id: row.try_get("job_id")?,
                fencing_token: row.try_get("fencing_token")?,
                locked_by: row.try_get("locked_by")?,
                created_at: row.try_get("created_at")?,
            })
        })
        .transpose()
    }
}

/// Keeps `new` as version `new.after + 1`, if `new.after` is still the stack's newest version and
/// the stack is unlocked or locked by the writer: `new.job_id` under `lock_id` (an operator, who
/// has no job, writes only to an unlocked stack).
pub fn insert_state_version(new: NewStateVersion<'_>, lock_id: Option<&str>, now: i64) -> Write {
    Write::one(
        format!("the state of stack `{}` (version {} and its lock)", new.stack, new.after),
        "INSERT INTO state_versions (stack, version, serial, lineage, sha256, size, sealed, source, run_id, job_id, \
         written_by, created_at) SELECT $1, $2 + 1, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12 \
         WHERE (SELECT COALESCE(MAX(version), 0) FROM state_versions WHERE stack = $1) = $2 \
         AND NOT EXISTS (SELECT 1 FROM state_locks WHERE state_locks.stack = $1 \
         AND NOT (state_locks.job_id = COALESCE($10, '') AND state_locks.lock_id = COALESCE($13, '')))",
        vec![
            new.stack.into(),
            new.after.into(),
            new.serial.into(),
            new.lineage.into(),
            new.sha256.into(),
            new.size.into(),
            new.sealed.into(),
            new.source.into(),
            new.run_id.into(),
            new.job_id.into(),
            new.written_by.into(),
            now.into(),
            lock_id.map(str::to_owned).into(),
        ],
    )
}

/// Takes `stack`'s lock for a job's lease; replaces a lock whose job's lease is over (its job no
/// longer leased under the fencing token it locked with), so a dead job never keeps a stack locked.
pub fn take_state_lock(stack: &str, lock: &StateLockRow) -> Write {
    Write::one(
        format!("the state lock of stack `{stack}`"),
        "INSERT INTO state_locks (stack, lock_id, info, job_id, fencing_token, locked_by, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (stack) DO UPDATE SET lock_id = $2, info = $3, job_id = $4, fencing_token = $5, \
         locked_by = $6, created_at = $7 \
         WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.id = state_locks.job_id \
         AND jobs.fencing_token = state_locks.fencing_token AND jobs.state = 'leased' AND jobs.lease_expires_at >= $7)",
        vec![
            stack.into(),
            lock.lock_id.as_str().into(),
            lock.info.as_str().into(),
            lock.job_id.clone().into(),
            lock.fencing_token.into(),
            lock.locked_by.as_str().into(),
            lock.created_at.into(),
        ],
    )
}

/// Releases every state lock `job_id` holds: its lease is over (the job ended, or its lease
/// did), and a lock outlives neither.
pub fn release_job_locks(job_id: &str) -> Write {
    Write::any(
        format!("the state locks of job {job_id}"),
        "DELETE FROM state_locks WHERE job_id = $1",
        vec![job_id.into()],
    )
}

/// Releases every state lock a job of `run_id` holds: the run was canceled, its leases with it.
pub fn release_run_locks(run_id: &str) -> Write {
    Write::any(
        format!("the state locks of run {run_id}"),
        "DELETE FROM state_locks WHERE job_id IN (SELECT id FROM jobs WHERE run_id = $1)",
        vec![run_id.into()],
    )
}

/// Releases `stack`'s lock if `job_id` holds it under `lock_id`.
pub fn release_state_lock(stack: &str, job_id: &str, lock_id: &str) -> Write {
    Write::one(
        format!("the state lock `{lock_id}` of stack `{stack}`"),
        "DELETE FROM state_locks WHERE stack = $1 AND job_id = $2 AND lock_id = $3",
        vec![stack.into(), job_id.into(), lock_id.into()],
    )
}

/// Removes `stack`'s lock, whoever holds it (an operator's `keyward state unlock`), if it is
/// still the lock `lock_id` the operator was shown.
pub fn force_unlock_state(stack: &str, lock_id: &str) -> Write {
    Write::one(
        format!("the state lock `{lock_id}` of stack `{stack}`"),
        "DELETE FROM state_locks WHERE stack = $1 AND lock_id = $2",
        vec![stack.into(), lock_id.into()],
    )
}
