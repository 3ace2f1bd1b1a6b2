//! Rows of the `signing_keys` table and the state transitions between them.
//!
//! A key moves `next → current → retired → (deleted)`. Rotation is one transaction guarded by the
//! expected current key ID, so two broker replicas rotating at the same moment cannot both win.

use std::fmt;

use sqlx::Row as _;
use sqlx::any::AnyRow;

use super::{Store, StoreError, conflict_or};

/// Lifecycle state of a signing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Published in JWKS, not yet signing. Becomes current at the next rotation.
    Next,
    /// Signs every new token.
    Current,
    /// Published until its last token has expired plus skew; can no longer sign.
    Retired,
}

impl KeyState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Next => "next",
            Self::Current => "current",
            Self::Retired => "retired",
        }
    }

    fn parse(text: &str) -> Result<Self, StoreError> {
        match text {
            "next" => Ok(Self::Next),
            "current" => Ok(Self::Current),
            "retired" => Ok(Self::Retired),
            other => Err(StoreError::Corrupt(format!("unknown signing key state `{other}`"))),
        }
    }
}

/// One signing key as stored. The private key is only present sealed, and only while the key can sign.
#[derive(Clone)]
pub struct SigningKeyRow {
    /// Key ID (JWK thumbprint).
    pub kid: String,
    /// `ES256` or `RS256`.
    pub algorithm: String,
    /// Lifecycle state.
    pub state: KeyState,
    /// PKCS#8 sealed under the KEK; `None` once retired.
    pub sealed_key: Option<Vec<u8>>,
    /// The public JWK as JSON.
    pub public_jwk: String,
    /// When generated.
    pub created_at: i64,
    /// When it became current.
    pub activated_at: Option<i64>,
    /// When it retired.
    pub retired_at: Option<i64>,
    /// When it leaves the JWKS.
    pub publish_until: Option<i64>,
}

impl fmt::Debug for SigningKeyRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKeyRow")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("state", &self.state)
            .field("sealed_key", &self.sealed_key.as_ref().map(|_| "…"))
            .field("created_at", &self.created_at)
            .field("activated_at", &self.activated_at)
            .field("retired_at", &self.retired_at)
            .field("publish_until", &self.publish_until)
            .finish()
    }
}

const COLUMNS: &str =
    "kid, algorithm, state, sealed_key, public_jwk, created_at, activated_at, retired_at, publish_until";

fn from_row(row: &AnyRow) -> Result<SigningKeyRow, StoreError> {
    Ok(SigningKeyRow {
        kid: row.try_get("kid")?,
        algorithm: row.try_get("algorithm")?,
        state: KeyState::parse(&row.try_get::<String, _>("state")?)?,
        sealed_key: row.try_get("sealed_key")?,
        public_jwk: row.try_get("public_jwk")?,
        created_at: row.try_get("created_at")?,
        activated_at: row.try_get("activated_at")?,
        retired_at: row.try_get("retired_at")?,
        publish_until: row.try_get("publish_until")?,
    })
}

async fn insert<'c, E>(executor: E, row: &SigningKeyRow) -> Result<(), StoreError>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    sqlx::query(
        "INSERT INTO signing_keys (kid, algorithm, state, sealed_key, public_jwk, created_at, activated_at, retired_at, publish_until) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&row.kid)
    .bind(&row.algorithm)
    .bind(row.state.as_str())
    .bind(row.sealed_key.clone())
    .bind(&row.public_jwk)
    .bind(row.created_at)
    .bind(row.activated_at)
    .bind(row.retired_at)
    .bind(row.publish_until)
    .execute(executor)
    .await
    .map_err(conflict_or(format!("a `{}` signing key", row.state.as_str())))?;
    Ok(())
}

impl Store {
    /// All signing keys, oldest first.
    pub async fn signing_keys(&self) -> Result<Vec<SigningKeyRow>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM signing_keys ORDER BY created_at, kid");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                from_row(row).map_err(|error| match error {
                    StoreError::Query(e) => {
                        StoreError::Corrupt(format!("table signing_keys in {}: {e}", self.location))
                    }
                    StoreError::Corrupt(e) => {
                        StoreError::Corrupt(format!("table signing_keys in {}: {e}", self.location))
                    }
                    other => other,
                })
            })
            .collect()
    }

    /// Stores the first `current` and `next` keys of a new deployment. Returns `false` if another
    /// replica initialized the key set first (nothing is written then).
    pub async fn init_signing_keys(&self, current: &SigningKeyRow, next: &SigningKeyRow) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let existing: i64 = sqlx::query("SELECT COUNT(*) AS n FROM signing_keys WHERE state IN ('current', 'next')")
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
        if existing > 0 {
            return Ok(false);
        }
        match insert(&mut *tx, current).await.and(insert(&mut *tx, next).await) {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => return Ok(false),
            Err(e) => return Err(e),
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Rotates: `current` retires (its sealed key erased), `next` becomes current, `new_next` is
    /// added. Only happens if the current key is still `expected_current`; returns whether it did.
    pub async fn rotate_signing_keys(
        &self,
        expected_current: &str,
        new_next: &SigningKeyRow,
        now: i64,
        publish_until: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let retired = sqlx::query(
            "UPDATE signing_keys SET state = 'retired', sealed_key = NULL, retired_at = $1, publish_until = $2 \
             WHERE kid = $3 AND state = 'current'",
        )
        .bind(now)
        .bind(publish_until)
        .bind(expected_current)
        .execute(&mut *tx)
        .await?;
        if retired.rows_affected() != 1 {
            return Ok(false);
        }
        let promoted = sqlx::query("UPDATE signing_keys SET state = 'current', activated_at = $1 WHERE state = 'next'")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        if promoted.rows_affected() != 1 {
            return Err(StoreError::Corrupt("no `next` signing key to promote".to_owned()));
        }
        insert(&mut *tx, new_next).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Deletes retired keys whose publication window has ended. Returns their key IDs.
    pub async fn prune_signing_keys(&self, now: i64) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("DELETE FROM signing_keys WHERE state = 'retired' AND publish_until < $1 RETURNING kid")
            .bind(now)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|row| Ok(row.try_get("kid")?)).collect()
    }
}
