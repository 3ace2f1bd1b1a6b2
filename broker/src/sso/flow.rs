//! The steps of a sign-in, a session's use and its end, on [`Sso`].

use serde_json::{Value, json};

use super::provider::{self, ClaimError};
use super::secrets::{self, SessionSecret};
use super::session::{Liveness, liveness};
use super::{LOGIN_TTL, Sso, SsoError};
use crate::access::{AuthMethod, Operator, Person};
use crate::audit::{Append, AuditEvent, Context, Kind};
use crate::roles::Grants;
use crate::store::sessions::{self as rows, LoginRow, SessionRow};

/// A finished sign-in.
#[derive(Debug)]
pub enum SignedIn {
    /// A browser's: set the cookies and go to `return_to`.
    Browser {
        /// The session secret (cookie `keyward_session`).
        secret: SessionSecret,
        /// Where to go.
        return_to: String,
    },
    /// `keyward login`'s: send the browser to the loopback URL with the grant.
    Cli {
        /// The one-time grant.
        grant: SessionSecret,
        /// The CLI's loopback URL.
        redirect: String,
    },
}

/// A session that authenticated a request.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// The caller.
    pub operator: Operator,
    /// The session row's ID (to revoke it).
    pub session_id: String,
    /// When it ends at the latest.
    pub expires_at: i64,
}

fn secs(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
}

impl Sso {
    /// Starts a sign-in: records the pending login and returns the provider URL to send the
    /// browser to. `cli` is `keyward login`'s loopback URL and challenge.
    pub async fn begin(&self, return_to: &str, cli: Option<(&str, &str)>) -> Result<String, SsoError> {
        let settings = &self.inner.settings;
        super::paths::check_return_to(return_to, &settings.allowed_return_to)?;
        let cli_redirect = cli.map(|(redirect, _)| super::paths::check_cli_redirect(redirect)).transpose()?;
        let cli_challenge = cli.map(|(_, challenge)| challenge.to_owned());
        if cli_challenge.as_deref().is_some_and(|c| c.len() != 43) {
            return Err(SsoError::Grant);
        }
        let endpoints = self.inner.provider.endpoints(&settings.issuer).await.map_err(SsoError::Provider)?;
        let (state, nonce) = (secrets::random_b64(), secrets::random_b64());
        let verifier = self.inner.pkce.verifier(&state);
        let now = self.inner.clock.now();
        let row = LoginRow {
            state_hash: secrets::hash(&state),
            nonce: nonce.clone(),
            return_to: return_to.to_owned(),
            cli_redirect,
            cli_challenge,
            created_at: now,
            expires_at: now + secs(LOGIN_TTL),
        };
        self.inner.store.insert_login(&row).await?;
        let mut url = endpoints.authorization.clone();
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &settings.client_id)
            .append_pair("redirect_uri", &settings.redirect_url)
            .append_pair("scope", &settings.scopes.join(" "))
            .append_pair("state", &state)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", &secrets::challenge(&verifier))
            .append_pair("code_challenge_method", "S256");
        Ok(url.to_string())
    }

    /// Finishes a sign-in from the provider's callback: `code` and `state`, or its `error`.
    pub async fn finish(
        &self,
        code: Option<&str>,
        state: &str,
        error: Option<&str>,
        caller: Context,
    ) -> Result<SignedIn, SsoError> {
        let login = self.inner.store.take_login(&secrets::hash(state)).await?.ok_or(SsoError::UnknownState)?;
        let now = self.inner.clock.now();
        if now >= login.expires_at {
            return Err(SsoError::LoginExpired);
        }
        if let Some(error) = error {
            return Err(SsoError::ProviderRefused(error.chars().filter(char::is_ascii_graphic).take(64).collect()));
        }
        let code = code.filter(|c| !c.is_empty()).ok_or_else(|| SsoError::ProviderRefused("no code".into()))?;
        let settings = &self.inner.settings;
        let verifier = self.inner.pkce.verifier(state);
        let id_token = self.inner.provider.redeem(settings, code, &verifier).await.map_err(SsoError::Provider)?;
        let person = match self.person(&id_token, &login.nonce, now).await {
            Ok(person) => person,
            Err(error) => return Err(self.refused(error, &id_token, caller).await),
        };
        self.open(person, &login, now, caller).await
    }

    /// Verifies the ID token and reads the person from it.
    async fn person(&self, id_token: &str, nonce: &str, now: i64) -> Result<Person, SsoError> {
        let settings = &self.inner.settings;
        let claims = self.inner.provider.verify(settings, id_token, now).await.map_err(|error| {
            if provider::after_signature(&error) {
                SsoError::Refused { subject: String::new(), reason: error.to_string() }
            } else {
                SsoError::Unverified(error.to_string())
            }
        })?;
        let refused = |e: ClaimError| SsoError::Refused { subject: String::new(), reason: e.to_string() };
        provider::check_claims(&claims, &settings.client_id, nonce).map_err(refused)?;
        provider::person(&claims, &settings.issuer, &settings.groups_claim, settings.require_groups).map_err(refused)
    }

    /// A refusal: audited when the provider's signature verified (it names a person), else
    /// logged only.
    async fn refused(&self, error: SsoError, id_token: &str, caller: Context) -> SsoError {
        let SsoError::Refused { reason, .. } = error else {
            tracing::warn!(%error, "sign-in refused");
            return error;
        };
        // The signature verified, so the payload is the provider's word.
        let claims = crate::exchange::trusted_issuers::peek_claims(id_token).unwrap_or_default();
        let subject = claims.get("sub").and_then(Value::as_str).unwrap_or_default().to_owned();
        let event = AuditEvent::new(Kind::PersonSignInFailed, self.inner.clock.now(), caller)
            .with("issuer", self.inner.settings.issuer.as_str())
            .with("subject", subject.as_str())
            .with("reason", reason.as_str());
        crate::audit::events::append(&self.inner.audit, event).await;
        tracing::warn!(subject, reason, "sign-in refused after the provider's signature verified");
        SsoError::Refused { subject, reason }
    }

    /// Opens the session (or the CLI grant) with its audit entry, in one commit.
    async fn open(&self, person: Person, login: &LoginRow, now: i64, caller: Context) -> Result<SignedIn, SsoError> {
        let settings = &self.inner.settings;
        let secret = SessionSecret::generate();
        let secret_hash = secrets::hash(secret.expose());
        let cli = login.cli_redirect.is_some();
        let expires_at = if cli { now + secs(LOGIN_TTL) } else { now + secs(settings.absolute_timeout) };
        let row = SessionRow {
            id: uuid::Uuid::now_v7().to_string(),
            kind: if cli { "cli_grant" } else { "browser" }.to_owned(),
            issuer: person.issuer.clone(),
            subject: person.subject.clone(),
            name: person.name.clone(),
            email: person.email.clone(),
            groups_json: json!(person.groups).to_string(),
            amr_json: json!(person.amr).to_string(),
            created_at: now,
            last_seen_at: now,
            expires_at,
        };
        let event = person_event(Kind::PersonSignedIn, now, &person, &secret_hash, caller)
            .with("method", if cli { "cli" } else { "browser" })
            .with("expires_at", expires_at);
        let write = rows::insert_session(&row, secret_hash, login.cli_challenge.clone());
        self.inner.audit.append(Append::changes(vec![write], vec![event])).await?.into_change().map_err(store_error)?;
        Ok(match &login.cli_redirect {
            Some(redirect) => SignedIn::Cli { grant: secret, redirect: redirect.clone() },
            None => SignedIn::Browser { secret, return_to: login.return_to.clone() },
        })
    }

    /// Redeems `keyward login`'s one-time grant with the verifier of its challenge: a CLI token.
    pub async fn redeem_grant(
        &self,
        grant: &str,
        verifier: &str,
        caller: Context,
    ) -> Result<(SessionSecret, i64), SsoError> {
        if !secrets::looks_like_session(grant) {
            return Err(SsoError::Grant);
        }
        let grant_hash = secrets::hash(grant);
        let row = self.inner.store.session_by_hash(&grant_hash, "cli_grant").await?.ok_or(SsoError::Grant)?;
        let now = self.inner.clock.now();
        let token = SessionSecret::generate();
        let token_hash = secrets::hash(token.expose());
        let expires_at = now + secs(self.inner.settings.absolute_timeout);
        let person = person_of(&row);
        let event =
            person_event(Kind::CliTokenIssued, now, &person, &token_hash, caller).with("expires_at", expires_at);
        let write = rows::redeem_grant(grant_hash, &secrets::challenge(verifier), token_hash, now, expires_at);
        match self.inner.audit.append(Append::changes(vec![write], vec![event])).await?.into_change() {
            Ok(()) => Ok((token, expires_at)),
            Err(crate::audit::ChangeError::Store(e)) => Err(SsoError::Store(e)),
            Err(_) => Err(SsoError::Grant),
        }
    }

    /// The person behind a presented session secret of `kind` (`browser` or `cli`), if it is
    /// live; marks it used.
    pub async fn authenticate(&self, presented: &str, kind: &str) -> Result<Option<Authenticated>, SsoError> {
        if !secrets::looks_like_session(presented) {
            return Ok(None);
        }
        let secret_hash = secrets::hash(presented);
        let Some(row) = self.inner.store.session_by_hash(&secret_hash, kind).await? else { return Ok(None) };
        let now = self.inner.clock.now();
        if liveness(row.last_seen_at, row.expires_at, self.inner.settings.idle_timeout, now) != Liveness::Live {
            return Ok(None);
        }
        self.inner.store.touch_session(&row.id, now).await?;
        let person = person_of(&row);
        let session = secrets::hash_prefix(&secret_hash);
        let via = if kind == "cli" {
            AuthMethod::CliToken { person: person.clone(), session }
        } else {
            AuthMethod::Session { person: person.clone(), session }
        };
        Ok(Some(Authenticated {
            // Roles come from the bindings, read by the caller per request (`http::extract`).
            operator: Operator { name: person.id(), via, grants: Grants::default() },
            session_id: row.id,
            expires_at: row.expires_at,
        }))
    }

    /// Revokes the session that authenticated this request, with its `person.signed_out` entry.
    pub async fn sign_out(&self, session: &Authenticated, caller: Context) -> Result<(), SsoError> {
        let now = self.inner.clock.now();
        let (AuthMethod::Session { person, session: prefix } | AuthMethod::CliToken { person, session: prefix }) =
            &session.operator.via
        else {
            return Ok(());
        };
        let event = AuditEvent::new(Kind::PersonSignedOut, now, Context { actor: Some(person.id()), ..caller })
            .with("issuer", person.issuer.as_str())
            .with("subject", person.subject.as_str())
            .with("session", prefix.as_str());
        let write = rows::revoke_session(&session.session_id, now);
        self.inner.audit.append(Append::changes(vec![write], vec![event])).await?.into_change().map_err(store_error)
    }
}

fn person_of(row: &SessionRow) -> Person {
    Person {
        issuer: row.issuer.clone(),
        subject: row.subject.clone(),
        name: row.name.clone(),
        email: row.email.clone(),
        groups: serde_json::from_str(&row.groups_json).unwrap_or_default(),
        amr: serde_json::from_str(&row.amr_json).unwrap_or_default(),
    }
}

fn person_event(kind: Kind, now: i64, person: &Person, secret_hash: &[u8], caller: Context) -> AuditEvent {
    AuditEvent::new(kind, now, Context { actor: Some(person.id()), ..caller })
        .with("issuer", person.issuer.as_str())
        .with("subject", person.subject.as_str())
        .with("name", person.name.as_str())
        .with("email", person.email.as_str())
        .with("groups", person.groups.clone())
        .with("amr", person.amr.clone())
        .with("session", secrets::hash_prefix(secret_hash))
}

fn store_error(error: crate::audit::ChangeError) -> SsoError {
    match error {
        crate::audit::ChangeError::Store(e) => SsoError::Store(e),
        other => SsoError::Store(crate::store::StoreError::Conflict(other.to_string())),
    }
}
