//! Operator API tokens: creation, hashing and authentication.
//!
//! A token is `kw_` followed by 256 random bits in base64url; the `kw_` prefix lets secret scanners
//! recognise a leaked one. Only its SHA-256 is stored: with 256 bits of entropy a slow hash buys
//! nothing, and a fast one keeps every API call cheap. Scopes are coarse on purpose: `admin` can do
//! everything, `submit` submits runs, `review` approves or rejects them, `audit` reads the audit
//! log. Submitting and reviewing are separate scopes so that a CI system's token can never approve
//! the runs it submits (DESIGN.md §8.8); what each scope may do is [`Permission`]'s table.
//!
//! Since spaces (docs/access.md, "Spaces and roles"), a token holds one [`Role`] in one space; a
//! token made with a scope holds that scope's role on `root` ([`ApiScope::role`]), and so does
//! every token made before spaces.

use std::fmt;
use std::str::FromStr;

use aws_lc_rs::digest;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::audit::{Append, AuditEvent, AuditLog, ChangeError, Context, Kind};
use crate::clock::SharedClock;
use crate::roles::{Actor, ActorKind, Grants, ROOT, Role};
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
    /// The least role that grants this permission in a space.
    pub fn role(self) -> Role {
        match self {
            Self::ReadRuns | Self::ReadAudit => Role::Viewer,
            Self::SubmitRuns => Role::Submitter,
            Self::ReviewRuns => Role::Reviewer,
            Self::Administer => Role::Admin,
        }
    }

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

    /// The role on `root` a token with this scope holds: `admin` → admin, `review` → reviewer,
    /// `submit` → submitter, `audit` → viewer.
    pub fn role(self) -> Role {
        match self {
            Self::Admin => Role::Admin,
            Self::Submit => Role::Submitter,
            Self::Review => Role::Reviewer,
            Self::Audit => Role::Viewer,
        }
    }

    /// The scope stored (and listed) for a token holding `role`: the reverse of [`Self::role`].
    pub fn of_role(role: Role) -> Self {
        match role {
            Role::Admin => Self::Admin,
            Role::Submitter => Self::Submit,
            Role::Reviewer => Self::Review,
            Role::Viewer => Self::Audit,
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
    /// The caller is known but holds no role that allows the action (there, when `space` is set).
    #[error("this action needs the `{required}` role or higher{}; {held}", space.as_ref().map(|s| format!(" in space `{s}`")).unwrap_or_default())]
    InsufficientScope {
        /// The least role that would do.
        required: Role,
        /// Where, if the action is about one space's resource.
        space: Option<String>,
        /// What the caller holds, e.g. "the caller holds `submitter` on `payments`".
        held: String,
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
    /// An API token (a machine identity, or an operator's token).
    ApiToken,
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
    /// The roles it holds, by space: an API token's one role in its one space, or what a
    /// person's subject and groups are bound to.
    pub grants: Grants,
}

impl Operator {
    /// An API token's caller, holding `grants`.
    pub fn api_token(name: String, grants: Grants) -> Self {
        Self { name, via: AuthMethod::ApiToken, grants }
    }

    /// The person behind a session or CLI token, if this is one.
    pub fn person(&self) -> Option<&Person> {
        match &self.via {
            AuthMethod::ApiToken => None,
            AuthMethod::Session { person, .. } | AuthMethod::CliToken { person, .. } => Some(person),
        }
    }

    /// Who acted, as policies see it (`input.actor`).
    pub fn actor(&self) -> Actor {
        match self.person() {
            Some(person) => Actor {
                kind: ActorKind::Person,
                name: person_label(person),
                subject: Some(person.id()),
                groups: person.groups.clone(),
                roles: self.grants.by_space(),
                amr: person.amr.clone(),
            },
            None => Actor::token(&self.name, &self.grants),
        }
    }

    /// Succeeds if this operator holds `permission`'s role in some space: the gate before a
    /// handler, which then checks the role in the resource's own space ([`Self::require_in`]).
    pub fn require(&self, permission: Permission) -> Result<(), AccessError> {
        if self.grants.highest().is_some_and(|held| held >= permission.role()) {
            Ok(())
        } else {
            Err(self.refusal(permission, None))
        }
    }

    /// Succeeds if this operator holds `permission`'s role in the space whose chain (the space,
    /// its parent, … `root`) is `chain`.
    pub fn require_in(&self, permission: Permission, chain: &[String]) -> Result<(), AccessError> {
        if self.grants.role_in(chain).is_some_and(|held| held >= permission.role()) {
            Ok(())
        } else {
            Err(self.refusal(permission, chain.first().cloned()))
        }
    }

    fn refusal(&self, permission: Permission, space: Option<String>) -> AccessError {
        let held: Vec<String> = self.grants.iter().map(|g| format!("`{}` on `{}`", g.role, g.space)).collect();
        let who = match self.person() {
            Some(person) => format!("signed in as {}, ", person_label(person)),
            None => String::new(),
        };
        let held = if held.is_empty() {
            format!("{who}it holds no role (docs/access.md: `keyward space bind`)")
        } else {
            format!("{who}it holds {}", held.join(", "))
        };
        AccessError::InsufficientScope { required: permission.role(), space, held }
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

    /// Creates a token named `name` holding `scope`'s role on `root`. The secret is returned once
    /// and never stored.
    pub async fn create(&self, name: &str, scope: ApiScope, created_by: &str) -> Result<ApiTokenSecret, AccessError> {
        self.create_in(name, ROOT, scope.role(), created_by).await
    }

    /// Creates a token named `name` holding `role` in `space` (which the caller checked exists).
    pub async fn create_in(
        &self,
        name: &str,
        space: &str,
        role: Role,
        created_by: &str,
    ) -> Result<ApiTokenSecret, AccessError> {
        let (secret, token) = self.new_token(name, (space, role), created_by)?;
        self.store.insert_api_token(&token).await?;
        tracing::info!(name, space, role = role.as_str(), created_by, "created API token");
        Ok(secret)
    }

    /// A new token's secret and its row: `name` checked, the secret generated, only its hash kept.
    fn new_token(
        &self,
        name: &str,
        grant: (&str, Role),
        created_by: &str,
    ) -> Result<(ApiTokenSecret, NewApiToken), AccessError> {
        let (space, role) = grant;
        if !valid_name(name) {
            return Err(AccessError::InvalidName(name.to_owned()));
        }
        let secret = generate_secret();
        let token = NewApiToken {
            id: uuid::Uuid::now_v7().to_string(),
            name: name.to_owned(),
            scope: ApiScope::of_role(role).as_str().to_owned(),
            space: space.to_owned(),
            role: role.as_str().to_owned(),
            token_hash: token_hash(secret.expose()),
            created_at: self.clock.now(),
            created_by: created_by.to_owned(),
        };
        Ok((secret, token))
    }

    /// [`create_in`](Self::create_in), committed with its `api_token.created` entry on `audit`
    /// (by `who`): what `POST /v1/api-tokens` does. The entry names the token, its space and role,
    /// never its secret.
    pub async fn create_recorded(
        &self,
        audit: &AuditLog,
        name: &str,
        grant: (&str, Role),
        who: &str,
        caller: Context,
    ) -> Result<ApiTokenSecret, AccessError> {
        let (space, role) = grant;
        let (secret, token) = self.new_token(name, grant, who)?;
        let event = AuditEvent::new(Kind::ApiTokenCreated, token.created_at, crate::audit::events::by(who, caller))
            .with("name", name)
            .with("space", space)
            .with("role", role.as_str())
            .with_ref("space", space);
        let append = Append::changes(vec![crate::store::api_tokens::insert(&token)], vec![event]);
        audit.append(append).await?.into_change().map_err(change_error)?;
        tracing::info!(name, space, role = role.as_str(), created_by = who, "created API token");
        Ok(secret)
    }

    /// Revokes the live token `name`, committed with its `api_token.revoked` entry; `false` when
    /// there is no live token of that name.
    pub async fn revoke_recorded(
        &self,
        audit: &AuditLog,
        name: &str,
        who: &str,
        caller: Context,
    ) -> Result<bool, AccessError> {
        let now = self.clock.now();
        let event =
            AuditEvent::new(Kind::ApiTokenRevoked, now, crate::audit::events::by(who, caller)).with("name", name);
        let append = Append::changes(vec![crate::store::api_tokens::revoke(name, now)], vec![event]);
        match audit.append(append).await?.into_change() {
            Ok(()) => Ok(true),
            Err(ChangeError::Moved { .. } | ChangeError::Rejected { .. }) => Ok(false),
            Err(other) => Err(change_error(other)),
        }
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
        operator_of(row)
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

/// The operator a live token's row stands for: its role in its space.
pub fn operator_of(row: ApiTokenRow) -> Result<Operator, AccessError> {
    let grants = match (row.space, row.role) {
        (Some(space), Some(role)) => {
            Grants::one(space, role.parse().map_err(|e| StoreError::Corrupt(format!("api_tokens.role: {e}")))?)
        }
        // A token made before spaces: its scope's role on `root`.
        _ => Grants::one(ROOT, row.scope.parse::<ApiScope>()?.role()),
    };
    Ok(Operator::api_token(row.name, grants))
}

/// A refused token change as an access error: a taken name is a conflict, as the direct insert says.
fn change_error(error: ChangeError) -> AccessError {
    match error {
        ChangeError::Duplicate { what } => AccessError::Store(StoreError::Conflict(what)),
        ChangeError::Store(store) => AccessError::Store(store),
        other => AccessError::Store(StoreError::Append(other.to_string())),
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
        let ci = Operator::api_token("ci".into(), Grants::one(ROOT, ApiScope::Submit.role()));
        let error = ci.require(Permission::ReviewRuns).map(drop).map_err(|e| e.to_string());
        assert_eq!(
            error,
            Err("this action needs the `reviewer` role or higher; it holds `submitter` on `root`".to_owned())
        );
        assert!(ci.require(Permission::SubmitRuns).is_ok());
    }

    #[test]
    fn a_signed_in_person_holds_what_their_bindings_grant() {
        let person = Person {
            issuer: "https://idp".into(),
            subject: "u-1".into(),
            name: "Alice".into(),
            email: "a@x".into(),
            groups: vec!["admins".into()],
            amr: vec!["mfa".into()],
        };
        let via = AuthMethod::Session { person: person.clone(), session: "ab".into() };
        let alice = Operator { name: person.id(), via: via.clone(), grants: Grants::default() };
        for permission in [Permission::ReadRuns, Permission::ReviewRuns, Permission::ReadAudit, Permission::Administer]
        {
            let error = alice.require(permission).map(drop).map_err(|e| e.to_string()).unwrap_err();
            assert!(error.contains("signed in as Alice <a@x>, it holds no role"), "{error}");
        }
        let reviewer = Operator { grants: Grants::one("payments", Role::Reviewer), ..alice };
        let chain = ["payments".to_owned(), ROOT.to_owned()];
        assert!(reviewer.require_in(Permission::ReviewRuns, &chain).is_ok());
        let actor = reviewer.actor();
        assert_eq!(
            (actor.subject.as_deref(), actor.amr.as_slice()),
            (Some("https://idp#u-1"), ["mfa".to_owned()].as_slice())
        );
    }

    #[test]
    fn a_role_in_a_space_is_checked_on_the_resource_chain() {
        let team = Operator::api_token("team".into(), Grants::one("payments", Role::Submitter));
        let chain = |spaces: &[&str]| spaces.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(team.require_in(Permission::SubmitRuns, &chain(&["payments", "root"])).is_ok());
        let elsewhere = team.require_in(Permission::ReadRuns, &chain(&["search", "root"])).map_err(|e| e.to_string());
        assert_eq!(
            elsewhere,
            Err("this action needs the `viewer` role or higher in space `search`; it holds `submitter` on `payments`"
                .to_owned())
        );
    }

    #[test]
    fn old_scopes_map_to_roles_on_root_and_back() {
        for scope in [ApiScope::Admin, ApiScope::Submit, ApiScope::Review, ApiScope::Audit] {
            assert_eq!(ApiScope::of_role(scope.role()), scope);
        }
        assert_eq!(ApiScope::Review.role(), Role::Reviewer);
        assert_eq!(ApiScope::Audit.role(), Role::Viewer);
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
