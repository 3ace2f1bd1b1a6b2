//! Console sessions that act as an API token (`keyward console`, docs/console.md).
//!
//! A caller holding an API token cannot hand it to a browser without pasting it somewhere, and a
//! token in a browser's cookie jar would outlive the visit. Instead the token asks for a one-time
//! sign-in link ([`ConsoleSessions::create_link`]): usable once, for [`LINK_TTL`], stored as a
//! hash. Opening it ([`ConsoleSessions::redeem`]) turns the link into a browser session in the
//! same row, with a new secret (cookie `keyward_session`, the same cookies and CSRF rule as a
//! person's session) that lasts at most [`SESSION_TTL`]. The session acts as its token: it holds
//! the token's role in the token's space, read on every request, and ends when the token is
//! revoked. Each step commits with its audit entry, which names the token and the session's ID,
//! never a secret.

use std::time::Duration;

use keyward_audit::{AuditEvent, Context, Kind};

use crate::access::{AccessError, Operator, operator_of};
use crate::audit::{Append, AuditLog, ChangeError};
use crate::clock::SharedClock;
use crate::sso::secrets::{self, SessionSecret};
use crate::store::console_sessions::{self as rows, NewLink};
use crate::store::{Store, StoreError};

/// How long a sign-in link may wait to be opened.
pub const LINK_TTL: Duration = Duration::from_secs(60);
/// How long a console session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Prefix of a sign-in link's secret.
pub const LINK_PREFIX: &str = "kwl_";
/// Prefix of a console session's secret (its cookie value).
pub const SESSION_PREFIX: &str = "kwc_";
/// Longest secret accepted; anything longer is not one of ours.
const MAX_SECRET_LEN: usize = 128;

/// Why a console sign-in did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleSessionError {
    /// The caller is not an API token.
    #[error("only an API token gets a console sign-in link; people sign in to the console with SSO at /ui")]
    NotAToken,
    /// The link is unknown, used, expired, or its token was revoked.
    #[error("this sign-in link was already used, has expired, or never existed; run `keyward console` for a new one")]
    Link,
    /// The store or the audit log failed.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The token's row did not make an operator.
    #[error("{0}")]
    Access(#[from] AccessError),
}

/// A new sign-in link: its secret (shown once, in the URL) and when it stops working.
#[derive(Debug)]
pub struct Link {
    /// The secret, for `/ui/sign-in?link=…`.
    pub secret: SessionSecret,
    /// Unix seconds.
    pub expires_at: i64,
}

/// A redeemed link: the session's secret, for the cookie, and how long it lasts.
#[derive(Debug)]
pub struct Session {
    /// The cookie's value.
    pub secret: SessionSecret,
    /// How long it lasts.
    pub max_age: Duration,
}

/// Makes, redeems, authenticates and ends console sessions.
#[derive(Debug, Clone)]
pub struct ConsoleSessions {
    store: Store,
    audit: AuditLog,
    clock: SharedClock,
    /// Whether cookies get `Secure` (not when the broker listens on loopback).
    pub secure_cookies: bool,
}

impl ConsoleSessions {
    /// Console sessions over `store`, recorded on `audit`.
    pub fn new(store: Store, audit: AuditLog, clock: SharedClock, secure_cookies: bool) -> Self {
        Self { store, audit, clock, secure_cookies }
    }

    /// A one-time link for `operator`, which must be an API token, committed with its
    /// `console.link_created` entry.
    pub async fn create_link(&self, operator: &Operator, caller: Context) -> Result<Link, ConsoleSessionError> {
        if operator.person().is_some() {
            return Err(ConsoleSessionError::NotAToken);
        }
        let token = self.store.live_api_token_by_name(&operator.name).await?.ok_or(AccessError::Unauthenticated)?;
        let now = self.clock.now();
        let secret = SessionSecret::with_prefix(LINK_PREFIX);
        let link = NewLink {
            id: uuid::Uuid::now_v7().to_string(),
            secret_hash: secrets::hash(secret.expose()),
            token_id: token.id,
            created_at: now,
            expires_at: now + secs(LINK_TTL),
        };
        let event = AuditEvent::new(Kind::ConsoleLinkCreated, now, crate::audit::events::by(&operator.name, caller))
            .with("session", link.id.as_str())
            .with("expires_at", link.expires_at);
        self.commit(rows::insert_link(&link), event).await?.map_err(|e| StoreError::Append(e.to_string()))?;
        Ok(Link { secret, expires_at: link.expires_at })
    }

    /// Redeems the link `presented` for a browser session, once, committed with its
    /// `console.signed_in` entry.
    pub async fn redeem(&self, presented: &str, caller: Context) -> Result<Session, ConsoleSessionError> {
        if !looks_like(presented, LINK_PREFIX) {
            return Err(ConsoleSessionError::Link);
        }
        let now = self.clock.now();
        let link = self
            .store
            .console_session(&secrets::hash(presented), "link", now)
            .await?
            .ok_or(ConsoleSessionError::Link)?;
        let secret = SessionSecret::with_prefix(SESSION_PREFIX);
        let expires_at = now + secs(SESSION_TTL);
        let event = AuditEvent::new(Kind::ConsoleSignedIn, now, crate::audit::events::by(&link.token.name, caller))
            .with("session", link.id.as_str())
            .with("expires_at", expires_at);
        let write = rows::redeem_link(&link.id, secrets::hash(secret.expose()), now, expires_at);
        match self.commit(write, event).await? {
            Ok(()) => Ok(Session { secret, max_age: SESSION_TTL }),
            // Another request redeemed it first, or it expired or was revoked in between.
            Err(ChangeError::Moved { .. } | ChangeError::Rejected { .. }) => Err(ConsoleSessionError::Link),
            Err(other) => Err(StoreError::Append(other.to_string()).into()),
        }
    }

    /// The operator behind the console session `presented` (a cookie's value), if it is live
    /// and its token too; `None` for anything else.
    pub async fn authenticate(&self, presented: &str) -> Result<Option<(String, Operator)>, ConsoleSessionError> {
        if !looks_like(presented, SESSION_PREFIX) {
            return Ok(None);
        }
        let now = self.clock.now();
        let Some(row) = self.store.console_session(&secrets::hash(presented), "browser", now).await? else {
            return Ok(None);
        };
        Ok(Some((row.id, operator_of(row.token)?)))
    }

    /// Ends the console session `id` (acting as `token`), committed with its
    /// `console.signed_out` entry; `false` when it had already ended.
    pub async fn sign_out(&self, id: &str, token: &str, caller: Context) -> Result<bool, ConsoleSessionError> {
        let now = self.clock.now();
        let event =
            AuditEvent::new(Kind::ConsoleSignedOut, now, crate::audit::events::by(token, caller)).with("session", id);
        Ok(self.commit(rows::revoke(id, now), event).await?.is_ok())
    }

    async fn commit(
        &self,
        write: crate::store::write::Write,
        event: AuditEvent,
    ) -> Result<Result<(), ChangeError>, StoreError> {
        let outcome = self.audit.append(Append::changes(vec![write], vec![event])).await?;
        Ok(match outcome.into_change() {
            Err(ChangeError::Store(store)) => return Err(store),
            other => other,
        })
    }
}

/// Whether `presented` has the shape of a secret behind `prefix` (checked before any lookup).
pub fn looks_like(presented: &str, prefix: &str) -> bool {
    presented.starts_with(prefix) && presented.len() <= MAX_SECRET_LEN
}

fn secs(duration: Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
}
