//! Pools, join tokens, agents and the agent CA: reading them; the two writes that are not audit
//! facts (lease renewals at heartbeats, "last seen" times); and the guarded writes for the ones
//! that are.
//!
//! Creating a pool, issuing or consuming a join token, enrolling, renewing, draining and revoking
//! an agent are guarded writes built here and committed by `crate::agents` with their audit
//! entries ([`super::write`]).

use sqlx::Row as _;
use sqlx::any::AnyRow;

use super::write::Write;
use super::{JobRow, Store, StoreError, conflict_or};

/// A stored pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolRow {
    /// Name (its ID).
    pub name: String,
    /// The space it belongs to.
    pub space: String,
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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
    /// The tools it reported in its last `Hello` (JSON object: tool -> version); `None`: an
    /// agent older than tool reports.
    pub tools: Option<String>,
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
    /// Its tools and their versions (JSON object), if it reported them.
    pub tools: Option<&'a str>,
}

const AGENT_COLUMNS: &str = "id, pool, hostname, version, state, serial, not_after, enrolled_at, renewed_at, revoked_at, revoked_by, \
     last_seen_at, terraform_version, isolation, tools";

fn pool_from(row: &AnyRow) -> Result<PoolRow, StoreError> {
    Ok(PoolRow {
        name: row.try_get("name")?,
        space: row.try_get("space")?,
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
        tools: row.try_get("tools")?,
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
        let row = sqlx::query("SELECT name, space, created_at, created_by FROM pools WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(pool_from).transpose()
    }

    /// Every pool, by name.
    pub async fn pools(&self) -> Result<Vec<PoolRow>, StoreError> {
        let rows = sqlx::query("SELECT name, space, created_at, created_by FROM pools ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
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
            "UPDATE agents SET last_seen_at = $1, version = $2, terraform_version = $3, isolation = $4, tools = $6 \
             WHERE id = $5",
        )
        .bind(now)
        .bind(hello.version)
        .bind(hello.terraform_version)
        .bind(hello.isolation)
        .bind(agent_id)
        .bind(hello.tools)
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

    /// Every job leased now, to any agent, oldest lease first: what each agent is running, in
    /// one query (the console's agents page).
    pub async fn leased_jobs(&self) -> Result<Vec<JobRow>, StoreError> {
        let sql =
            format!("SELECT {} FROM jobs WHERE state = 'leased' ORDER BY created_at, id", super::runs::JOB_COLUMNS);
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(&self.pool).await?;
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

/// Creates pool `name` (unique: a second one is refused as a duplicate).
pub fn create_pool(name: &str, space: &str, who: &str, now: i64) -> Write {
    Write::one(
        format!("pool `{name}`"),
        "INSERT INTO pools (name, created_at, created_by, space) VALUES ($1, $2, $3, $4)",
        vec![name.into(), now.into(), who.into(), space.into()],
    )
}

/// Issues the join token `id` into `pool`, stored as `token_hash` only.
pub fn issue_join_token(id: &str, pool: &str, token_hash: String, expires_at: i64, who: &str, now: i64) -> Write {
    Write::one(
        format!("join token {id}"),
        "INSERT INTO join_tokens (id, pool, token_hash, expires_at, created_at, created_by, used_at, used_by) \
         VALUES ($1, $2, $3, $4, $5, $6, NULL, NULL)",
        vec![id.into(), pool.into(), token_hash.into(), expires_at.into(), now.into(), who.into()],
    )
}

/// Consumes the join token `id` for `agent_id`, if it is still unused and unexpired: of two
/// enrollments racing with one token, one wins.
pub fn use_join_token(id: &str, agent_id: &str, now: i64) -> Write {
    Write::one(
        format!("join token {id}"),
        "UPDATE join_tokens SET used_at = $1, used_by = $2 WHERE id = $3 AND used_at IS NULL AND expires_at > $1",
        vec![now.into(), agent_id.into(), id.into()],
    )
}

/// A newly enrolled agent and its first certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAgent<'a> {
    /// Agent ID.
    pub id: &'a str,
    /// Its pool.
    pub pool: &'a str,
    /// Host name it reported.
    pub hostname: &'a str,
    /// Version it reported.
    pub version: &'a str,
    /// Its certificate's serial (hex).
    pub serial: &'a str,
    /// Its certificate's expiry.
    pub not_after: i64,
}

/// Records `agent`, enrolled (and last seen) at `now`.
pub fn enroll(agent: &NewAgent<'_>, now: i64) -> Write {
    Write::one(
        format!("agent {}", agent.id),
        "INSERT INTO agents (id, pool, hostname, version, state, serial, not_after, enrolled_at, renewed_at, \
         revoked_at, revoked_by, last_seen_at) VALUES ($1, $2, $3, $4, 'active', $5, $6, $7, NULL, NULL, NULL, $7)",
        vec![
            agent.id.into(),
            agent.pool.into(),
            agent.hostname.into(),
            agent.version.into(),
            agent.serial.into(),
            agent.not_after.into(),
            now.into(),
        ],
    )
}

/// Records `agent_id`'s renewed certificate, unless it was revoked meanwhile.
pub fn renew(agent_id: &str, serial: &str, not_after: i64, now: i64) -> Write {
    Write::one(
        format!("agent {agent_id}"),
        "UPDATE agents SET serial = $1, not_after = $2, renewed_at = $3, last_seen_at = $3 \
         WHERE id = $4 AND state <> 'revoked'",
        vec![serial.into(), not_after.into(), now.into(), agent_id.into()],
    )
}

/// Revokes `agent_id` (once: revoking a revoked agent is refused as a moved state).
pub fn revoke(agent_id: &str, who: &str, now: i64) -> Write {
    Write::one(
        format!("agent {agent_id}"),
        "UPDATE agents SET state = 'revoked', revoked_at = $1, revoked_by = $2 WHERE id = $3 AND state <> 'revoked'",
        vec![now.into(), who.into(), agent_id.into()],
    )
}

/// Moves the active agent `agent_id` to `draining`.
pub fn drain(agent_id: &str) -> Write {
    Write::one(
        format!("agent {agent_id}"),
        "UPDATE agents SET state = 'draining' WHERE id = $1 AND state = 'active'",
        vec![agent_id.into()],
    )
}
