//! Rows of the `api_tokens` table: operator credentials, stored as hashes only.

use sqlx::Row as _;
use sqlx::any::AnyRow;

use super::write::Write;
use super::{Store, StoreError, conflict_or};

/// An API token to store. Carries the hash, never the secret.
#[derive(Debug, Clone)]
pub struct NewApiToken {
    /// Random ID.
    pub id: String,
    /// Unique, human-chosen name.
    pub name: String,
    /// `admin`, `submit`, `review` or `audit`: the scope nearest its role (for listings).
    pub scope: String,
    /// The space it belongs to.
    pub space: String,
    /// Its role there.
    pub role: String,
    /// SHA-256 of the secret.
    pub token_hash: Vec<u8>,
    /// Creation time.
    pub created_at: i64,
    /// Who created it (another token's name, or `bootstrap`).
    pub created_by: String,
}

/// A stored API token (without its hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiTokenRow {
    /// Random ID.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Scope.
    pub scope: String,
    /// Its space (`None`: made before spaces; its scope's role on `root`).
    pub space: Option<String>,
    /// Its role there.
    pub role: Option<String>,
    /// Creation time.
    pub created_at: i64,
    /// Creator.
    pub created_by: String,
    /// When revoked, if it was.
    pub revoked_at: Option<i64>,
}

/// The columns [`from_row`] reads.
pub(super) const COLUMNS: &str = "id, name, scope, space, role, created_at, created_by, revoked_at";

pub(super) fn from_row(row: &AnyRow) -> Result<ApiTokenRow, StoreError> {
    Ok(ApiTokenRow {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        scope: row.try_get("scope")?,
        space: row.try_get("space")?,
        role: row.try_get("role")?,
        created_at: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

impl Store {
    /// Stores a new API token. A duplicate name is a [`StoreError::Conflict`].
    pub async fn insert_api_token(&self, token: &NewApiToken) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO api_tokens (id, name, scope, token_hash, created_at, created_by, space, role) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&token.id)
        .bind(&token.name)
        .bind(&token.scope)
        .bind(token.token_hash.clone())
        .bind(token.created_at)
        .bind(&token.created_by)
        .bind(&token.space)
        .bind(&token.role)
        .execute(&self.pool)
        .await
        .map_err(conflict_or(format!("API token `{}`", token.name)))?;
        Ok(())
    }

    /// Finds a live (not revoked) token by the hash of its secret.
    pub async fn api_token_by_hash(&self, token_hash: &[u8]) -> Result<Option<ApiTokenRow>, StoreError> {
        let row = sqlx::query(
            "SELECT id, name, scope, space, role, created_at, created_by, revoked_at FROM api_tokens \
             WHERE token_hash = $1 AND revoked_at IS NULL",
        )
        .bind(token_hash.to_vec())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// All API tokens, by name.
    pub async fn api_tokens(&self) -> Result<Vec<ApiTokenRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, name, scope, space, role, created_at, created_by, revoked_at FROM api_tokens ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// Number of API tokens ever created (revoked ones included).
    pub async fn api_token_count(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query("SELECT COUNT(*) AS n FROM api_tokens").fetch_one(&self.pool).await?.try_get("n")?)
    }

    /// Revokes a token by name. Returns whether a live token was revoked.
    pub async fn revoke_api_token(&self, name: &str, now: i64) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE api_tokens SET revoked_at = $1 WHERE name = $2 AND revoked_at IS NULL")
            .bind(now)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }
}

/// Creates `token`, to commit with its `api_token.created` entry (a name taken is a duplicate).
pub fn insert(token: &NewApiToken) -> Write {
    Write::one(
        format!("API token `{}`", token.name),
        "INSERT INTO api_tokens (id, name, scope, token_hash, created_at, created_by, space, role) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        vec![
            token.id.as_str().into(),
            token.name.as_str().into(),
            token.scope.as_str().into(),
            token.token_hash.clone().into(),
            token.created_at.into(),
            token.created_by.as_str().into(),
            token.space.as_str().into(),
            token.role.as_str().into(),
        ],
    )
}

/// Revokes the live token `name` at `at`, to commit with its `api_token.revoked` entry (none
/// live: the change does not hold).
pub fn revoke(name: &str, at: i64) -> Write {
    Write::one(
        format!("live API token `{name}`"),
        "UPDATE api_tokens SET revoked_at = $2 WHERE name = $1 AND revoked_at IS NULL",
        vec![name.into(), at.into()],
    )
}
