//! Rows of `console_sessions`: one-time console sign-in links and the browser sessions they
//! become, each acting as an API token. Secrets are stored as SHA-256 hashes only; every change
//! is a [`Write`], so it commits with the audit entry that records it.

use sqlx::Row as _;

use super::api_tokens::ApiTokenRow;
use super::write::{Param, Write};
use super::{Store, StoreError};

/// A new one-time sign-in link for the API token `token_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewLink {
    /// Random ID: the session's name in the audit log once redeemed.
    pub id: String,
    /// SHA-256 of the link's secret.
    pub secret_hash: Vec<u8>,
    /// The API token the session will act as.
    pub token_id: String,
    /// When it was made.
    pub created_at: i64,
    /// When it stops being usable.
    pub expires_at: i64,
}

/// Inserts `link`; must insert exactly one row.
pub fn insert_link(link: &NewLink) -> Write {
    Write::one(
        format!("console sign-in link {}", link.id),
        "INSERT INTO console_sessions (id, secret_hash, kind, token_id, created_at, expires_at) \
         VALUES ($1, $2, 'link', $3, $4, $5)",
        vec![
            Param::from(link.id.as_str()),
            Param::from(link.secret_hash.clone()),
            Param::from(link.token_id.as_str()),
            Param::from(link.created_at),
            Param::from(link.expires_at),
        ],
    )
}

/// Turns the live link `id` into a browser session holding `session_hash` until `expires_at`:
/// only a link not yet used, not expired at `now`, not revoked, whose token is live; once.
pub fn redeem_link(id: &str, session_hash: Vec<u8>, now: i64, expires_at: i64) -> Write {
    Write::one(
        "console sign-in link",
        "UPDATE console_sessions SET kind = 'browser', secret_hash = $1, expires_at = $2 \
         WHERE id = $3 AND kind = 'link' AND expires_at > $4 AND revoked_at IS NULL \
         AND token_id IN (SELECT id FROM api_tokens WHERE revoked_at IS NULL)",
        vec![Param::from(session_hash), Param::from(expires_at), Param::from(id), Param::from(now)],
    )
}

/// Revokes the live console session `id` at `now`.
pub fn revoke(id: &str, now: i64) -> Write {
    Write::one(
        format!("console session {id}"),
        "UPDATE console_sessions SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
        vec![Param::from(now), Param::from(id)],
    )
}

/// A live console link or session and the live API token it acts as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleSessionRow {
    /// The row's ID.
    pub id: String,
    /// When it stops being usable.
    pub expires_at: i64,
    /// The token.
    pub token: ApiTokenRow,
}

impl Store {
    /// The live (unexpired at `now`, not revoked) console row of `kind` (`link` or `browser`)
    /// whose secret hashes to `secret_hash`, with its token — if the token is live too.
    pub async fn console_session(
        &self,
        secret_hash: &[u8],
        kind: &str,
        now: i64,
    ) -> Result<Option<ConsoleSessionRow>, StoreError> {
        let row = sqlx::query(
            "SELECT s.id AS session_id, s.expires_at AS session_expires_at, t.id, t.name, t.scope, t.space, \
             t.role, t.created_at, t.created_by, t.revoked_at FROM console_sessions s \
             JOIN api_tokens t ON t.id = s.token_id \
             WHERE s.secret_hash = $1 AND s.kind = $2 AND s.expires_at > $3 AND s.revoked_at IS NULL \
             AND t.revoked_at IS NULL",
        )
        .bind(secret_hash.to_vec())
        .bind(kind)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(ConsoleSessionRow {
            id: row.try_get("session_id")?,
            expires_at: row.try_get("session_expires_at")?,
            token: super::api_tokens::from_row(&row)?,
        }))
    }

    /// The live API token named `name`.
    pub async fn live_api_token_by_name(&self, name: &str) -> Result<Option<ApiTokenRow>, StoreError> {
        let sql =
            format!("SELECT {} FROM api_tokens WHERE name = $1 AND revoked_at IS NULL", super::api_tokens::COLUMNS);
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(name).fetch_optional(&self.pool).await?;
        row.as_ref().map(super::api_tokens::from_row).transpose()
    }
}
