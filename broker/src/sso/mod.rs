//! Sign-in for people with OpenID Connect (issue 21 part 1, docs/access.md).
//!
//! The authorization code flow with PKCE: [`Sso::begin`] records a pending login (its `state`
//! hashed, its `nonce`, where to go afterwards) and returns the provider's authorization URL;
//! [`Sso::finish`] takes the pending login back (once: a replayed callback finds nothing),
//! redeems the code with the PKCE verifier and the client secret, verifies the ID token as
//! strictly as a CI token plus `nonce` and `azp`, and opens a session: a row holding only the
//! hash of its secret, committed with its `person.signed_in` audit entry. A browser gets the
//! secret as a cookie; `keyward login` gets a one-time grant on its loopback redirect, which it
//! redeems ([`Sso::redeem_grant`]) with the verifier of the challenge it sent, for a bearer token.
//!
//! Written over the broker's own JWT verification rather than the `openidconnect` crate, which
//! would bring a second cryptography implementation (RustCrypto's rsa, p256, p384, ed25519) and
//! a second, laxer verifier beside the one CI tokens go through.
//!
//! Refusals of callers who proved nothing (an unknown or used `state`, a code the provider
//! refused, a token whose signature does not verify) go to the service log and the metrics; a
//! refusal after the provider's signature verified names a person and is audited
//! (`person.sign_in_failed`), as DESIGN.md §8.10 asks.

mod flow;
pub mod paths;
pub mod provider;
pub mod secrets;
pub mod session;

use std::sync::Arc;
use std::time::Duration;

use keyward_proto::secret::Secret;

pub use flow::{Authenticated, SignedIn};

use crate::audit::AuditLog;
use crate::clock::SharedClock;
use crate::store::{Store, StoreError};
use crate::tokens::verify::Algorithm;

/// How long a pending login (and a CLI grant) may wait for its callback.
pub const LOGIN_TTL: Duration = Duration::from_secs(600);

/// `[sso]`, resolved (see the configuration reference in docs/access.md).
#[derive(Debug, Clone)]
pub struct SsoSettings {
    /// The provider's exact `iss`; discovery is read from `{issuer}/.well-known/openid-configuration`.
    pub issuer: String,
    /// This broker's client ID at the provider (the ID token's `aud`).
    pub client_id: String,
    /// The client secret.
    pub client_secret: Secret,
    /// Scopes requested (always with `openid`).
    pub scopes: Vec<String>,
    /// The ID token claim holding group names.
    pub groups_claim: String,
    /// The redirect URI registered with the provider (the broker's `/auth/callback`).
    pub redirect_url: String,
    /// Path prefixes `return_to` may point under.
    pub allowed_return_to: Vec<String>,
    /// A session unused this long ends.
    pub idle_timeout: Duration,
    /// A session ends this long after sign-in, used or not.
    pub absolute_timeout: Duration,
    /// ID token signature algorithms accepted.
    pub algorithms: Vec<Algorithm>,
    /// Refuse a person in no group.
    pub require_groups: bool,
    /// Cookies carry `Secure` (the broker does not listen on loopback).
    pub secure_cookies: bool,
}

/// Why a sign-in, a session or a sign-out was refused. Messages are safe to show the caller:
/// never a code, a token or a secret.
#[derive(Debug, thiserror::Error)]
pub enum SsoError {
    /// `[sso]` is not configured.
    #[error("sign-in is not configured on this broker ([sso])")]
    NotConfigured,
    /// `return_to` or `cli_redirect` refused.
    #[error(transparent)]
    Path(#[from] paths::PathError),
    /// No pending login has this `state` (never made, already used, or forged).
    #[error("unknown or already used sign-in state; start again at /auth/login")]
    UnknownState,
    /// The pending login is older than [`LOGIN_TTL`].
    #[error("the sign-in took too long; start again at /auth/login")]
    LoginExpired,
    /// The provider answered the authorization request with an error.
    #[error("the identity provider refused the sign-in: {0}")]
    ProviderRefused(String),
    /// The provider could not be used (discovery, token endpoint, keys).
    #[error("the identity provider could not complete the sign-in: {0}")]
    Provider(String),
    /// The ID token was refused before its signature verified.
    #[error("the ID token was refused: {0}")]
    Unverified(String),
    /// The ID token verified but names a person who may not sign in this way.
    #[error("the ID token was refused: {reason}")]
    Refused {
        /// The provider's `sub`, when readable.
        subject: String,
        /// Why.
        reason: String,
    },
    /// A CLI grant that is unknown, used, expired or presented without its verifier.
    #[error("unknown, used or expired sign-in grant; run `keyward login` again")]
    Grant,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Sign-in, sessions and sign-out.
#[derive(Debug, Clone)]
pub struct Sso {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    settings: SsoSettings,
    provider: provider::Provider,
    pkce: secrets::PkceKey,
    store: Store,
    audit: AuditLog,
    clock: SharedClock,
}

impl Sso {
    /// Sign-in by `settings`; `pkce_secret` is derived from the KEK so every replica derives the
    /// same PKCE verifiers.
    pub fn new(
        settings: SsoSettings,
        pkce_secret: &[u8],
        store: Store,
        audit: AuditLog,
        clock: SharedClock,
    ) -> Result<Self, reqwest::Error> {
        let provider = provider::Provider::new(&settings)?;
        let pkce = secrets::PkceKey::new(pkce_secret);
        Ok(Self { inner: Arc::new(Inner { settings, provider, pkce, store, audit, clock }) })
    }

    /// The settings in force.
    pub fn settings(&self) -> &SsoSettings {
        &self.inner.settings
    }
}
