//! Extractors that turn bad input into the API's JSON errors instead of axum's plain-text ones,
//! and [`Authorized`], which authenticates the caller (an API token, a person's `keyward login`
//! token or browser session) before a handler runs: it needs the role on `root`; [`Scoped`]
//! needs it in some space, and its handler checks the resource's own space ([`super::guard`]).

use std::marker::PhantomData;

use axum::Json;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method};
use serde::de::DeserializeOwned;

use super::AppState;
use super::error::ApiError;
use crate::access::{AccessError, Operator, Permission};
use crate::sso::{Authenticated, secrets, session};

/// A JSON body whose rejection is an `invalid_request` error.
#[derive(Debug)]
pub(super) struct ApiJson<T>(pub(super) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(ApiError::invalid_request(rejection.body_text())),
        }
    }
}

/// Where a caller must hold a permission for a handler to run at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reach {
    /// On `root` (and so everywhere).
    Root,
    /// In some space: the handler checks the resource's space itself.
    AnySpace,
}

/// Authenticates the caller (see [`authenticate`]) and checks it holds `required` (on `root`,
/// or in some space).
pub(super) async fn operator(
    state: &AppState,
    method: &Method,
    headers: &HeaderMap,
    required: Permission,
    reach: Reach,
) -> Result<Operator, ApiError> {
    let result = async {
        let caller = authenticate(state, method, headers).await?;
        let operator = caller.operator;
        match reach {
            Reach::Root => operator.require_in(required, &[crate::roles::ROOT.to_owned()])?,
            Reach::AnySpace => operator.require(required)?,
        }
        Ok::<_, ApiError>(operator)
    }
    .await;
    if let Err(error) = &result {
        state.metrics.request_refused(error.refusal());
    }
    result
}

/// A caller, and the session that authenticated them if it was one.
#[derive(Debug)]
pub(super) struct Caller {
    /// Who.
    pub(super) operator: Operator,
    /// Their session (browser or CLI), to sign it out.
    pub(super) session: Option<Authenticated>,
    /// The console session acting as an API token (its ID), to sign it out.
    pub(super) console_session: Option<String>,
}

/// Where a browser session's state-changing request proves it came from the broker's own page.
#[derive(Debug, Clone, Copy)]
pub(super) enum CsrfProof<'a> {
    /// The `X-Keyward-CSRF` header (the API's callers: script that read the `keyward_csrf` cookie).
    Header,
    /// A console form's hidden field (`crate::console::CSRF_FIELD`).
    Form(&'a str),
}

/// Who is calling: an `Authorization: Bearer` API token (`kw_…`) or `keyward login` token
/// (`kws_…`), else the `keyward_session` cookie — a person's session or a console session acting
/// as an API token (`kwc_…`) — whose state-changing requests must repeat the `keyward_csrf`
/// cookie in `X-Keyward-CSRF` (a page on another site can make the browser send the cookie, but
/// cannot read the CSRF cookie to repeat it).
pub(super) async fn authenticate(state: &AppState, method: &Method, headers: &HeaderMap) -> Result<Caller, ApiError> {
    authenticate_with(state, method, headers, CsrfProof::Header).await
}

/// [`authenticate`], with a browser session's CSRF proof taken from `proof`.
pub(super) async fn authenticate_with(
    state: &AppState,
    method: &Method,
    headers: &HeaderMap,
    proof: CsrfProof<'_>,
) -> Result<Caller, ApiError> {
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim);
    let cookies = || headers.get_all(axum::http::header::COOKIE).iter().filter_map(|v| v.to_str().ok());
    let caller = match (bearer, &state.sso) {
        (Some(token), Some(sso)) if secrets::looks_like_session(token) => {
            let session = sso.authenticate(token, "cli").await.map_err(ApiError::from)?.ok_or_else(expired)?;
            let operator = with_grants(state, session.operator.clone()).await?;
            return Ok(Caller { operator, session: Some(session), console_session: None });
        }
        (Some(token), _) => {
            let operator = state.access.authenticate(token).await?;
            return Ok(Caller { operator, session: None, console_session: None });
        }
        (None, sso) => {
            let secret = session::cookie(cookies(), session::SESSION_COOKIE).ok_or(AccessError::Unauthenticated)?;
            let caller = cookie_caller(state, sso.as_ref(), secret).await?;
            if !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
                let cookie = session::cookie(cookies(), session::CSRF_COOKIE);
                let (presented, cookie) = match proof {
                    CsrfProof::Header => (headers.get(session::CSRF_HEADER).and_then(|v| v.to_str().ok()), cookie),
                    // A form's field is checked against the session itself; the cookie, if sent, too.
                    CsrfProof::Form(field) => (Some(field), cookie.or(Some(field))),
                };
                check_csrf(secret, presented.unwrap_or_default(), cookie)?;
            }
            caller
        }
    };
    Ok(caller)
}

/// The caller behind a `keyward_session` cookie: a console session acting as an API token, or
/// (when people can sign in) a person's browser session.
async fn cookie_caller(state: &AppState, sso: Option<&crate::sso::Sso>, secret: &str) -> Result<Caller, ApiError> {
    if crate::console_sessions::looks_like(secret, crate::console_sessions::SESSION_PREFIX) {
        let found = state.console_sessions.authenticate(secret).await?;
        let (id, operator) = found.ok_or_else(expired)?;
        return Ok(Caller { operator, session: None, console_session: Some(id) });
    }
    let sso = sso.ok_or(AccessError::Unauthenticated)?;
    let session = sso.authenticate(secret, "browser").await.map_err(ApiError::from)?.ok_or_else(expired)?;
    Ok(Caller {
        operator: with_grants(state, session.operator.clone()).await?,
        session: Some(session),
        console_session: None,
    })
}

/// A person's operator, holding what their subject and groups are bound to: read on every
/// request, so a binding removed takes effect at once.
async fn with_grants(state: &AppState, mut operator: Operator) -> Result<Operator, ApiError> {
    if let Some(person) = operator.person() {
        operator.grants = state.spaces.grants_of(person).await?;
    }
    Ok(operator)
}

fn expired() -> ApiError {
    ApiError::unauthenticated("missing, unknown, expired or revoked session; sign in again")
}

/// The CSRF proof presented (header or form field) must equal the CSRF cookie, and both the
/// token derived from this session.
fn check_csrf(secret: &str, presented: &str, cookie: Option<&str>) -> Result<(), ApiError> {
    let expected = secrets::csrf_token(secret);
    let cookie = cookie.unwrap_or_default();
    // Both compared in full (no early return), each in constant time.
    let ok = secrets::same(presented, cookie) & secrets::same(presented, &expected);
    if ok {
        Ok(())
    } else {
        Err(ApiError::access_denied(
            "a request signed in with a browser session that changes something needs the header X-Keyward-CSRF \
             equal to the keyward_csrf cookie (a console form carries it itself: reload the page and try again)",
        ))
    }
}

/// The operator behind a request's API token, checked to hold `R`'s permission. As a handler
/// argument it runs before the body is read, so an unauthenticated caller learns nothing about
/// what its body would have done; a refusal is counted in the metrics.
#[derive(Debug)]
pub(super) struct Authorized<R> {
    /// Who the token belongs to.
    pub(super) operator: Operator,
    /// Private, so only the extractor makes one.
    requirement: PhantomData<R>,
}

impl<R: can::Requirement> FromRequestParts<AppState> for Authorized<R> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let operator = operator(state, &parts.method, &parts.headers, R::PERMISSION, Reach::Root).await?;
        Ok(Self { operator, requirement: PhantomData })
    }
}

/// Like [`Authorized`], for a handler that checks the role in its resource's space: the caller
/// must hold `R`'s permission in some space.
#[derive(Debug)]
pub(super) struct Scoped<R> {
    /// Who the token belongs to.
    pub(super) operator: Operator,
    /// Private, so only the extractor makes one.
    requirement: PhantomData<R>,
}

impl<R: can::Requirement> FromRequestParts<AppState> for Scoped<R> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let operator = operator(state, &parts.method, &parts.headers, R::PERMISSION, Reach::AnySpace).await?;
        Ok(Self { operator, requirement: PhantomData })
    }
}

/// What an [`Authorized`] caller can do: one marker type per [`Permission`].
pub(super) mod can {
    use crate::access::Permission;

    /// A permission as a type, so a handler's signature says what it needs.
    pub(in crate::http) trait Requirement: Send + Sync {
        /// The permission the API token must grant.
        const PERMISSION: Permission;
    }

    macro_rules! requirements {
        ($($(#[$doc:meta])* $name:ident => $permission:ident;)*) => {$(
            $(#[$doc])*
            #[derive(Debug)]
            pub(in crate::http) struct $name;

            impl Requirement for $name {
                const PERMISSION: Permission = Permission::$permission;
            }
        )*};
    }

    requirements! {
        /// Read stacks, runs and their logs.
        ReadRuns => ReadRuns;
        /// Submit and cancel runs.
        SubmitRuns => SubmitRuns;
        /// Approve or reject runs.
        ReviewRuns => ReviewRuns;
        /// Read the audit log.
        ReadAudit => ReadAudit;
        /// Stacks, pools, agents, keys, API tokens, run tokens.
        Administer => Administer;
    }
}
