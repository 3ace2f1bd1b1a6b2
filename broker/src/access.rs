//! Operator API tokens: creation, hashing and authentication.
//!
//! A token is `kw_` followed by 256 random bits in base64url; the `kw_` prefix lets secret scanners
//! recognise a leaked one. Only its SHA-256 is stored: with 256 bits of entropy a slow hash buys
//! nothing, and a fast one keeps every API call cheap. Scopes are coarse on purpose: `admin` can do
//! everything, `submit` submits runs, `review` approves or rejects them, `audit` reads the audit
//! log. Submitting and reviewing are separate scopes so that a CI system's token can never approve
//! the runs it submits (DESIGN.md §8.8); what each scope may do is [`Permission`]'s table.

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
    /// Submit, follow and cancel runs.
    Submit,
    /// Follow runs, and approve or reject them.
    Review,
    /// Read the audit log.
    Audit,
}

/// What a request needs. Each permission names the scopes that grant it; `admin` grants all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Read stacks, runs and their logs.
    ReadRuns,
    /// Submit and cancel runs.
    SubmitRuns,
    /// Approve or reject runs.
    ReviewRuns,
    /// Read the audit log.
    ReadAudit,
    /// Everything else: stacks, pools, agents, keys, API tokens, run tokens.
    Administer,
}

impl Permission {
    /// The scopes granting this permission besides `admin`.
    pub fn scopes(self) -> &'static [ApiScope] {
        match self {
            Self::ReadRuns => &[ApiScope::Submit, ApiScope::Review],
            Self::SubmitRuns => &[ApiScope::Submit],
            Self::ReviewRuns => &[ApiScope::Review],
            Self::ReadAudit => &[ApiScope::Audit],
            Self::Administer => &[],
        }
    }

    /// The scope names that grant it, for error messages: `review` or `submit or review`.
    fn scope_names(self) -> String {
        let mut names: Vec<&str> = self.scopes().iter().map(|s| s.as_str()).collect();
        names.push("admin");
        match names.as_slice() {
            [only] => format!("`{only}`"),
            [rest @ .., last] => {
                format!("{} or `{last}`", rest.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", "))
            }
            [] => String::new(),
        }
    }
}

impl ApiScope {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Submit => "submit",
            Self::Review => "review",
            Self::Audit => "audit",
        }
    }

    /// Whether a token with this scope has `permission`.
    pub fn grants(self, permission: Permission) -> bool {
        self == Self::Admin || permission.scopes().contains(&self)
    }
}

impl FromStr for ApiScope {
    type Err = AccessError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "admin" => Ok(Self::Admin),
            "submit" => Ok(Self::Submit),
            "review" => Ok(Self::Review),
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
    #[error("this action needs the {required} scope; the token has `{held}`")]
    InsufficientScope {
        /// The scopes that would do, e.g. "`review` or `admin`".
        required: String,
        /// Held.
        held: &'static str,
    },
    /// A signed-in person, whom no role grants the action (roles do not exist yet).
    #[error(
        "signed in as {who}, but no role grants this action (it needs what the {required} API-token scope \
         grants); until spaces and roles exist a signed-in person can only read /v1/me and sign out"
    )]
    NoRole {
        /// The person.
        who: String,
        /// The scopes an API token would need.
        required: String,
    },
    /// A scope name that does not exist.
    #[error("unknown scope `{0}`: expected admin, submit, review or audit")]
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

/// A person the identity provider vouched for when they signed in (`[sso]`, docs/access.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Person {
    /// The provider's `iss`.
    pub issuer: String,
    /// The provider's `sub`.
    pub subject: String,
    /// Display name (may be empty).
    pub name: String,
    /// Email (may be empty).
    pub email: String,
    /// The provider's group names.
    pub groups: Vec<String>,
    /// How they authenticated to the provider (`amr`), e.g. `pwd`, `mfa`.
    pub amr: Vec<String>,
}

impl Person {
    /// `issuer#subject`: who this is, for the record and for role bindings.
    pub fn id(&self) -> String {
        format!("{}#{}", self.issuer, self.subject)
    }
}

/// How a caller authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthMethod {
    /// An API token (a machine identity, or an operator's token), with its scope.
    ApiToken {
        /// The token's scope.
        scope: ApiScope,
    },
    /// A person's browser session (cookie `keyward_session`).
    Session {
        /// Who.
        person: Person,
        /// The session's hash prefix (not usable as the session).
        session: String,
    },
    /// A person's CLI token (`keyward login`).
    CliToken {
        /// Who.
        person: Person,
        /// The token's hash prefix.
        session: String,
    },
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    /// The token's name, or a person's `issuer#subject`: the actor in audit entries.
    pub name: String,
    /// How they authenticated.
    pub via: AuthMethod,
}

impl Operator {
    /// An API token's caller.
    pub fn api_token(name: String, scope: ApiScope) -> Self {
        Self { name, via: AuthMethod::ApiToken { scope } }
    }

    /// The API token's scope, if this is an API token.
    pub fn scope(&self) -> Option<ApiScope> {
        match &self.via {
            AuthMethod::ApiToken { scope } => Some(*scope),
            AuthMethod::Session { .. } | AuthMethod::CliToken { .. } => None,
        }
    }

    /// The person behind a session or CLI token, if this is one.
    pub fn person(&self) -> Option<&Person> {
        match &self.via {
            AuthMethod::ApiToken { .. } => None,
            AuthMethod::Session { person, .. } | AuthMethod::CliToken { person, .. } => Some(person),
        }
    }

    /// Succeeds if this operator has `permission`. A signed-in person has none until spaces and
    /// roles exist: only `/v1/me` and sign-out, which need no permission.
    pub fn require(&self, permission: Permission) -> Result<(), AccessError> {
        match &self.via {
            AuthMethod::ApiToken { scope } if scope.grants(permission) => Ok(()),
            AuthMethod::ApiToken { scope } => {
                Err(AccessError::InsufficientScope { required: permission.scope_names(), held: scope.as_str() })
            }
            AuthMethod::Session { person, .. } | AuthMethod::CliToken { person, .. } => {
                Err(AccessError::NoRole { who: person_label(person), required: permission.scope_names() })
            }
        }
    }
}

/// How a person is named in messages: name and email when the provider gave them.
fn person_label(person: &Person) -> String {
    match (person.name.is_empty(), person.email.is_empty()) {
        (false, false) => format!("{} <{}>", person.name, person.email),
        (false, true) => person.name.clone(),
        (true, false) => person.email.clone(),
        (true, true) => person.id(),
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
        Ok(Operator::api_token(row.name, scope))
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
    fn scopes_grant_only_their_table_row() {
        use Permission::*;
        let all = [ReadRuns, SubmitRuns, ReviewRuns, ReadAudit, Administer];
        assert!(all.iter().all(|p| ApiScope::Admin.grants(*p)));
        let granted = |scope: ApiScope| all.iter().copied().filter(|p| scope.grants(*p)).collect::<Vec<_>>();
        assert_eq!(granted(ApiScope::Submit), [ReadRuns, SubmitRuns]);
        assert_eq!(granted(ApiScope::Review), [ReadRuns, ReviewRuns], "a reviewer cannot submit");
        assert_eq!(granted(ApiScope::Audit), [ReadAudit]);
        assert!("root".parse::<ApiScope>().is_err());
        assert_eq!("review".parse::<ApiScope>().ok(), Some(ApiScope::Review));
    }

    #[test]
    fn a_submit_token_cannot_review() {
        let ci = Operator::api_token("ci".into(), ApiScope::Submit);
        let error = ci.require(Permission::ReviewRuns).map(drop).map_err(|e| e.to_string());
        assert_eq!(error, Err("this action needs the `review` or `admin` scope; the token has `submit`".to_owned()));
        assert!(ci.require(Permission::SubmitRuns).is_ok());
    }

    #[test]
    fn a_signed_in_person_has_no_permission_before_roles_exist() {
        let person = Person {
            issuer: "https://idp".into(),
            subject: "u-1".into(),
            name: "Alice".into(),
            email: "a@x".into(),
            groups: vec!["admins".into()],
            amr: vec!["mfa".into()],
        };
        let alice = Operator { name: person.id(), via: AuthMethod::Session { person, session: "ab".into() } };
        for permission in [Permission::ReadRuns, Permission::ReviewRuns, Permission::ReadAudit, Permission::Administer]
        {
            let error = alice.require(permission).map(drop).map_err(|e| e.to_string()).unwrap_err();
            assert!(error.starts_with("signed in as Alice <a@x>, but no role grants this action"), "{error}");
        }
        assert_eq!((alice.name.as_str(), alice.scope()), ("https://idp#u-1", None));
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
