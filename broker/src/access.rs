//! Operator API tokens: creation, hashing and authentication.
//!
//! A token is `kw_` followed by 256 random bits in base64url; the `kw_` prefix lets secret scanners
//! recognise a leaked one. Only its SHA-256 is stored: with 256 bits of entropy a slow hash buys
//! nothing, and a fast one keeps every API call cheap. Scopes are coarse on purpose: `admin` can do
//! everything, `submit` submits runs, `audit` reads the audit log.

use std::fmt;
use std::str::FromStr;

use aws_lc_rs::digest;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::clock::SharedClock;
use crate::store::{ApiTokenRow, NewApiToken, Store, StoreError};

const PREFIX: &str = "kw_";
/// Name of the token `keyward dev` and `keyward serve --init` create.
pub const BOOTSTRAP_TOKEN_NAME: &str = "bootstrap-admin";

/// What an API token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiScope {
    /// Everything.
    Admin,
    /// Submit and follow runs.
    Submit,
    /// Read the audit log.
    Audit,
}

impl ApiScope {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Submit => "submit",
            Self::Audit => "audit",
        }
    }

    /// Whether a token with this scope may perform an action needing `required`.
    pub fn allows(self, required: Self) -> bool {
        self == Self::Admin || self == required
    }
}

impl FromStr for ApiScope {
    type Err = AccessError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "admin" => Ok(Self::Admin),
            "submit" => Ok(Self::Submit),
            "audit" => Ok(Self::Audit),
            other => Err(AccessError::UnknownScope(other.to_owned())),
        }
    }
}

/// Authentication and token-management failures.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// No token, or one that is unknown or revoked. Deliberately does not say which.
    #[error("missing, unknown or revoked API token")]
    Unauthenticated,
    /// The token is valid but its scope does not allow the action.
    #[error("this action needs the `{required}` scope; the token has `{held}`")]
    InsufficientScope {
        /// Needed.
        required: &'static str,
        /// Held.
        held: &'static str,
    },
    /// A scope name that does not exist.
    #[error("unknown scope `{0}`: expected admin, submit or audit")]
    UnknownScope(String),
    /// A token name that is not acceptable.
    #[error("invalid token name `{0}`: use 1-64 of a-z, 0-9, `-`, `_`, `.`")]
    InvalidName(String),
    /// The store failed, or the name is taken.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A plaintext API token. Shown once at creation; never printed by `Debug`.
pub struct ApiTokenSecret(Zeroizing<String>);

impl fmt::Debug for ApiTokenSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiTokenSecret(…)")
    }
}

impl ApiTokenSecret {
    /// The token text, to show its owner once.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    /// The token's name.
    pub name: String,
    /// The token's scope.
    pub scope: ApiScope,
}

impl Operator {
    /// Succeeds if this operator may do something needing `required`.
    pub fn require(&self, required: ApiScope) -> Result<(), AccessError> {
        if self.scope.allows(required) {
            Ok(())
        } else {
            Err(AccessError::InsufficientScope { required: required.as_str(), held: self.scope.as_str() })
        }
    }
}

/// Issues and checks API tokens.
#[derive(Debug, Clone)]
pub struct Access {
    store: Store,
    clock: SharedClock,
}

/// SHA-256 of a presented token, the lookup key in the store.
fn token_hash(token: &str) -> Vec<u8> {
    digest::digest(&digest::SHA256, token.as_bytes()).as_ref().to_vec()
}

fn generate_secret() -> ApiTokenSecret {
    let mut bytes = Zeroizing::new([0u8; 32]);
    if SystemRandom::new().fill(bytes.as_mut()).is_err() {
        failed_rng();
    }
    ApiTokenSecret(Zeroizing::new(format!("{PREFIX}{}", B64URL.encode(bytes.as_ref()))))
}

#[cold]
#[allow(clippy::panic)]
fn failed_rng() -> ! {
    panic!("the system random number generator failed")
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

impl Access {
    /// Token management over `store`.
    pub fn new(store: Store, clock: SharedClock) -> Self {
        Self { store, clock }
    }

    /// Creates a token named `name`. The secret is returned once and never stored.
    pub async fn create(&self, name: &str, scope: ApiScope, created_by: &str) -> Result<ApiTokenSecret, AccessError> {
        if !valid_name(name) {
            return Err(AccessError::InvalidName(name.to_owned()));
        }
        let secret = generate_secret();
        self.store
            .insert_api_token(&NewApiToken {
                id: uuid::Uuid::now_v7().to_string(),
                name: name.to_owned(),
                scope: scope.as_str().to_owned(),
                token_hash: token_hash(secret.expose()),
                created_at: self.clock.now(),
                created_by: created_by.to_owned(),
            })
            .await?;
        tracing::info!(name, scope = scope.as_str(), created_by, "created API token");
        Ok(secret)
    }

    /// Creates the bootstrap admin token if no token was ever created. `None` if one exists.
    pub async fn bootstrap(&self) -> Result<Option<ApiTokenSecret>, AccessError> {
        if self.store.api_token_count().await? > 0 {
            return Ok(None);
        }
        match self.create(BOOTSTRAP_TOKEN_NAME, ApiScope::Admin, "bootstrap").await {
            Ok(secret) => Ok(Some(secret)),
            // Another replica bootstrapped at the same moment.
            Err(AccessError::Store(StoreError::Conflict(_))) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Resolves a presented bearer token to its operator.
    pub async fn authenticate(&self, presented: &str) -> Result<Operator, AccessError> {
        if !presented.starts_with(PREFIX) || presented.len() > 128 {
            return Err(AccessError::Unauthenticated);
        }
        let row = self.store.api_token_by_hash(&token_hash(presented)).await?.ok_or(AccessError::Unauthenticated)?;
        let scope = row.scope.parse()?;
        Ok(Operator { name: row.name, scope })
    }

    /// Every token (without secrets).
    pub async fn list(&self) -> Result<Vec<ApiTokenRow>, AccessError> {
        Ok(self.store.api_tokens().await?)
    }

    /// Revokes a token by name.
    pub async fn revoke(&self, name: &str) -> Result<bool, AccessError> {
        Ok(self.store.revoke_api_token(name, self.clock.now()).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_nest_under_admin_only() {
        assert!(ApiScope::Admin.allows(ApiScope::Submit));
        assert!(ApiScope::Admin.allows(ApiScope::Audit));
        assert!(!ApiScope::Submit.allows(ApiScope::Admin));
        assert!(!ApiScope::Audit.allows(ApiScope::Submit));
        assert!("root".parse::<ApiScope>().is_err());
    }

    #[test]
    fn secrets_are_random_prefixed_and_not_debug_printed() {
        let a = generate_secret();
        let b = generate_secret();
        assert_ne!(a.expose(), b.expose());
        assert!(a.expose().starts_with("kw_") && a.expose().len() == 3 + 43);
        assert!(!format!("{a:?}").contains(a.expose()));
        assert_ne!(token_hash(a.expose()), token_hash(b.expose()));
    }

    #[test]
    fn names_are_restricted() {
        assert!(valid_name("ci-deployer.prod"));
        assert!(!valid_name("Has Space"));
        assert!(!valid_name(""));
    }
}
