//! Reading pools, join tokens, agents and the agent CA; and the two writes that are not audit
//! facts: lease renewals (heartbeats) and "last seen" times.
//!
//! Creating a pool, issuing or consuming a join token, enrolling, renewing, draining and revoking
//! an agent are guarded writes committed with their audit entries (`crate::agents`).

use sqlx::Row as _;
use sqlx::any::AnyRow;

use super::{JobRow, Store, StoreError, conflict_or};

/// A stored pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolRow {
    /// Name (its ID).
    pub name: String,
    /// Creation time.
    pub created_at: i64,
    /// Who created it.
    pub created_by: String,
}

/// A stored join token (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinTokenRow {
    /// Token ID.
    pub id: String,
    /// The pool it enrolls into.
    pub pool: String,
    /// When it stops working.
    pub expires_at: i64,
    /// When it was used, if it was.
    pub used_at: Option<i64>,
}

/// A stored agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRow {
    /// Agent ID.
    pub id: String,
    /// Its pool.
    pub pool: String,
    /// Host name it reported at enrollment.
    pub hostname: String,
    /// Agent version it reported.
    pub version: String,
    /// `active`, `draining` or `revoked`.
    pub state: String,
    /// Serial number of its current certificate (hex).
    pub serial: String,
    /// When that certificate expires.
    pub not_after: i64,
    /// Enrollment time.
    pub enrolled_at: i64,
    /// Last renewal.
    pub renewed_at: Option<i64>,
    /// Revocation time.
    pub revoked_at: Option<i64>,
    /// Who revoked it.
    pub revoked_by: Option<String>,
    /// Last time a broker heard from it.
    pub last_seen_at: Option<i64>,
    /// The Terraform version it reported in its last `Hello`, if it has Terraform.
    pub terraform_version: Option<String>,
    /// How it isolates jobs, as it reported in its last `Hello`.
    pub isolation: Option<String>,
}

/// What an agent says about itself when it opens a work stream.
#[derive(Debug, Clone, Copy)]
pub struct AgentHello<'a> {
    /// Agent version.
    pub version: &'a str,
    /// Terraform version, if it has Terraform.
    pub terraform_version: Option<&'a str>,
    /// Isolation level of its runner.
    pub isolation: &'a str,
}

const AGENT_COLUMNS: &str = "id, pool, hostname, version, state, serial, not_after, enrolled_at, renewed_at, revoked_at, revoked_by, \
     last_seen_at, terraform_version, isolation";

fn pool_from(row: &AnyRow) -> Result<PoolRow, StoreError> {
    Ok(PoolRow {
        name: row.try_get("name")?,
        created_at: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
    })
}

fn agent_from(row: &AnyRow) -> Result<AgentRow, StoreError> {
    Ok(AgentRow {
        id: row.try_get("id")?,
        pool: row.try_get("pool")?,
        hostname: row.try_get("hostname")?,
        version: row.try_get("version")?,
        state: row.try_get("state")?,
        serial: row.try_get("serial")?,
        not_after: row.try_get("not_after")?,
        enrolled_at: row.try_get("enrolled_at")?,
        renewed_at: row.try_get("renewed_at")?,
        revoked_at: row.try_get("revoked_at")?,
        revoked_by: row.try_get("revoked_by")?,
        last_seen_at: row.try_get("last_seen_at")?,
        terraform_version: row.try_get("terraform_version")?,
        isolation: row.try_get("isolation")?,
    })
}

impl Store {
    /// The agent CA's certificate (DER) and sealed key, once created.
    pub async fn agent_ca(&self, name: &str) -> Result<Option<(Vec<u8>, Vec<u8>)>, StoreError> {
        let row = sqlx::query("SELECT certificate, sealed_key FROM agent_ca WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| Ok((row.try_get("certificate")?, row.try_get("sealed_key")?))).transpose()
    }

    /// Stores the agent CA; [`StoreError::Conflict`] if another replica stored one first.
    pub async fn insert_agent_ca(
        &self,
        name: &str,
        certificate: &[u8],
        sealed_key: &[u8],
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO agent_ca (name, certificate, sealed_key, created_at) VALUES ($1, $2, $3, $4)")
            .bind(name)
            .bind(certificate.to_vec())
            .bind(sealed_key.to_vec())
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(conflict_or(format!("agent CA `{name}`")))?;
        Ok(())
    }

    /// The pool called `name`.
    pub async fn pool(&self, name: &str) -> Result<Option<PoolRow>, StoreError> {
        let row = sqlx::query("SELECT name, created_at, created_by FROM pools WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(pool_from).transpose()
    }

    /// Every pool, by name.
    pub async fn pools(&self) -> Result<Vec<PoolRow>, StoreError> {
        let rows =
            sqlx::query("SELECT name, created_at, created_by FROM pools ORDER BY name").fetch_all(&self.pool).await?;
        rows.iter().map(pool_from).collect()
    }

    /// The join token whose SHA-256 is `hash`.
    pub async fn join_token(&self, hash: &str) -> Result<Option<JoinTokenRow>, StoreError> {
        let row = sqlx::query("SELECT id, pool, expires_at, used_at FROM join_tokens WHERE token_hash = $1")
            .bind(hash)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| {
            Ok(JoinTokenRow {
                id: row.try_get("id")?,
                pool: row.try_get("pool")?,
                expires_at: row.try_get("expires_at")?,
                used_at: row.try_get("used_at")?,
            })
        })
        .transpose()
    }

    /// The agent `id`.
    pub async fn agent(&self, id: &str) -> Result<Option<AgentRow>, StoreError> {
        let sql = format!("SELECT {AGENT_COLUMNS} FROM agents WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(agent_from).transpose()
    }

    /// Every agent, of one pool or of all, oldest enrollment first.
    pub async fn agents(&self, pool: Option<&str>) -> Result<Vec<AgentRow>, StoreError> {
        let rows = match pool {
            Some(pool) => {
                let sql = format!("SELECT {AGENT_COLUMNS} FROM agents WHERE pool = $1 ORDER BY enrolled_at, id");
                sqlx::query(sqlx::AssertSqlSafe(sql)).bind(pool).fetch_all(&self.pool).await?
            }
            None => {
                let sql = format!("SELECT {AGENT_COLUMNS} FROM agents ORDER BY enrolled_at, id");
                sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(&self.pool).await?
            }
        };
        rows.iter().map(agent_from).collect()
    }

    /// Records that a broker heard from `agent_id` at `now`.
    pub async fn agent_seen(&self, agent_id: &str, now: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE agents SET last_seen_at = $1 WHERE id = $2")
            .bind(now)
            .bind(agent_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records what the agent reported when it opened a work stream, and that it was seen.
    pub async fn agent_hello(&self, agent_id: &str, now: i64, hello: &AgentHello<'_>) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE agents SET last_seen_at = $1, version = $2, terraform_version = $3, isolation = $4 WHERE id = $5",
        )
        .bind(now)
        .bind(hello.version)
        .bind(hello.terraform_version)
        .bind(hello.isolation)
        .bind(agent_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Extends the lease of `job_id` to `expires_at` if `agent_id` still holds it with
    /// `fencing_token`; false when it does not (the job was canceled, expired or re-leased). A
    /// renewal is not an audit fact: the lease and its holder are.
    pub async fn renew_lease(
        &self,
        job_id: &str,
        agent_id: &str,
        fencing_token: i64,
        expires_at: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE jobs SET lease_expires_at = $1 WHERE id = $2 AND agent_id = $3 AND fencing_token = $4 \
             AND state = 'leased'",
        )
        .bind(expires_at)
        .bind(job_id)
        .bind(agent_id)
        .bind(fencing_token)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Jobs `agent_id` holds a lease on.
    pub async fn leased_jobs_of(&self, agent_id: &str) -> Result<Vec<JobRow>, StoreError> {
        let sql = format!("SELECT {} FROM jobs WHERE agent_id = $1 AND state = 'leased'", super::runs::JOB_COLUMNS);
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(agent_id).fetch_all(&self.pool).await?;
        rows.iter().map(super::runs::job_from).collect()
    }

    /// Leased jobs whose lease ended before `now`.
    pub async fn expired_leases(&self, now: i64, limit: i64) -> Result<Vec<JobRow>, StoreError> {
        let sql = format!(
            "SELECT {} FROM jobs WHERE state = 'leased' AND lease_expires_at < $1 ORDER BY lease_expires_at LIMIT $2",
            super::runs::JOB_COLUMNS
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now).bind(limit).fetch_all(&self.pool).await?;
        rows.iter().map(super::runs::job_from).collect()
    }
}
