//! Rows of `sso_logins` (authorization requests in flight) and `person_sessions` (signed-in
//! people): secrets are stored as SHA-256 hashes only. Inserting a session and revoking one are
//! [`Write`]s, so each commits with the audit entry that records it.

use sqlx::Row as _;
use sqlx::any::AnyRow;

use super::write::{Param, Write};
use super::{Store, StoreError};

/// An authorization request the broker sent a browser off with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginRow {
    /// SHA-256 of the `state` parameter.
    pub state_hash: Vec<u8>,
    /// The `nonce` the ID token must carry.
    pub nonce: String,
    /// Where the browser goes after signing in (a checked local path).
    pub return_to: String,
    /// `keyward login`'s loopback URL, for a CLI sign-in.
    pub cli_redirect: Option<String>,
    /// The S256 challenge of the CLI's verifier, for a CLI sign-in.
    pub cli_challenge: Option<String>,
    /// When it was made.
    pub created_at: i64,
    /// When it stops being usable.
    pub expires_at: i64,
}

/// A signed-in person's session, browser or CLI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    /// Random ID.
    pub id: String,
    /// `browser` or `cli`.
    pub kind: String,
    /// The IdP's `iss`.
    pub issuer: String,
    /// The IdP's `sub`.
    pub subject: String,
    /// Display name (may be empty).
    pub name: String,
    /// Email (may be empty).
    pub email: String,
    /// JSON array of group names.
    pub groups_json: String,
    /// JSON array of `amr` values.
    pub amr_json: String,
    /// Sign-in time.
    pub created_at: i64,
    /// Last authenticated request.
    pub last_seen_at: i64,
    /// The absolute timeout.
    pub expires_at: i64,
}

fn session_from_row(row: &AnyRow) -> Result<SessionRow, StoreError> {
    Ok(SessionRow {
        id: row.try_get("id")?,
        kind: row.try_get("kind")?,
        issuer: row.try_get("issuer")?,
        subject: row.try_get("subject")?,
        name: row.try_get("name")?,
        email: row.try_get("email")?,
        groups_json: row.try_get("groups_json")?,
        amr_json: row.try_get("amr_json")?,
        created_at: row.try_get("created_at")?,
        last_seen_at: row.try_get("last_seen_at")?,
        expires_at: row.try_get("expires_at")?,
    })
}

/// The row that inserts `session` with the hash of its secret; must insert exactly one.
pub fn insert_session(session: &SessionRow, secret_hash: Vec<u8>, grant_challenge: Option<String>) -> Write {
    Write::one(
        format!("session {}", session.id),
        "INSERT INTO person_sessions (id, secret_hash, kind, issuer, subject, name, email, groups_json, amr_json, \
         created_at, last_seen_at, expires_at, grant_challenge) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        vec![
            Param::from(session.id.as_str()),
            Param::from(secret_hash),
            Param::from(session.kind.as_str()),
            Param::from(session.issuer.as_str()),
            Param::from(session.subject.as_str()),
            Param::from(session.name.as_str()),
            Param::from(session.email.as_str()),
            Param::from(session.groups_json.as_str()),
            Param::from(session.amr_json.as_str()),
            Param::from(session.created_at),
            Param::from(session.last_seen_at),
            Param::from(session.expires_at),
            Param::from(grant_challenge),
        ],
    )
}

/// The row change that turns a one-time CLI grant into a CLI token: only a live grant whose
/// challenge is `challenge`, once.
pub fn redeem_grant(grant_hash: Vec<u8>, challenge: &str, token_hash: Vec<u8>, now: i64, expires_at: i64) -> Write {
    Write::one(
        "sign-in grant",
        "UPDATE person_sessions SET kind = 'cli', secret_hash = $1, last_seen_at = $2, expires_at = $3, \
         grant_challenge = NULL WHERE secret_hash = $4 AND kind = 'cli_grant' AND grant_challenge = $5 \
         AND expires_at > $2 AND revoked_at IS NULL",
        vec![
            Param::from(token_hash),
            Param::from(now),
            Param::from(expires_at),
            Param::from(grant_hash),
            Param::from(challenge),
        ],
    )
}

/// The row change that revokes a live session; touches exactly one row, or the session was
/// already revoked.
pub fn revoke_session(id: &str, now: i64) -> Write {
    Write::one(
        format!("session {id}"),
        "UPDATE person_sessions SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
        vec![Param::from(now), Param::from(id)],
    )
}

impl Store {
    /// Records a pending login, forgetting the ones that expired before `row` was made.
    pub async fn insert_login(&self, row: &LoginRow) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM sso_logins WHERE expires_at < $1").bind(row.created_at).execute(&self.pool).await?;
        sqlx::query(
            "INSERT INTO sso_logins (state_hash, nonce, return_to, cli_redirect, cli_challenge, created_at, \
             expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(row.state_hash.clone())
        .bind(&row.nonce)
        .bind(&row.return_to)
        .bind(row.cli_redirect.as_deref())
        .bind(row.cli_challenge.as_deref())
        .bind(row.created_at)
        .bind(row.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Takes (deletes and returns) the pending login with this state hash: whoever calls this
    /// first gets it, so a login's callback is honoured at most once.
    pub async fn take_login(&self, state_hash: &[u8]) -> Result<Option<LoginRow>, StoreError> {
        let row = sqlx::query(
            "DELETE FROM sso_logins WHERE state_hash = $1 \
             RETURNING nonce, return_to, cli_redirect, cli_challenge, created_at, expires_at",
        )
        .bind(state_hash.to_vec())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(LoginRow {
                state_hash: state_hash.to_vec(),
                nonce: row.try_get("nonce")?,
                return_to: row.try_get("return_to")?,
                cli_redirect: row.try_get("cli_redirect")?,
                cli_challenge: row.try_get("cli_challenge")?,
                created_at: row.try_get("created_at")?,
                expires_at: row.try_get("expires_at")?,
            })
        })
        .transpose()
    }

    /// The live (not revoked) session of `kind` with this secret hash.
    pub async fn session_by_hash(&self, secret_hash: &[u8], kind: &str) -> Result<Option<SessionRow>, StoreError> {
        let row = sqlx::query(
            "SELECT id, kind, issuer, subject, name, email, groups_json, amr_json, created_at, last_seen_at, \
             expires_at FROM person_sessions WHERE secret_hash = $1 AND kind = $2 AND revoked_at IS NULL",
        )
        .bind(secret_hash.to_vec())
        .bind(kind)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(session_from_row).transpose()
    }

    /// Moves a session's last use forward to `now` (never back).
    pub async fn touch_session(&self, id: &str, now: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE person_sessions SET last_seen_at = $1 WHERE id = $2 AND last_seen_at < $1")
            .bind(now)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Number of sessions ever created (revoked ones included), for tests and metrics.
    pub async fn session_count(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query("SELECT COUNT(*) AS n FROM person_sessions").fetch_one(&self.pool).await?.try_get("n")?)
    }
}
