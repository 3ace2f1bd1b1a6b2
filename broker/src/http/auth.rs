//! Sign-in for people (docs/access.md): `GET /auth/login`, `GET /auth/callback`, `POST
//! /auth/logout`, `POST /auth/cli/token` (`keyward login`'s grant) and `GET /v1/me`; and for
//! API tokens in the console, `POST /v1/console/links` (`keyward console`'s one-time link).

use axum::Json;
use axum::extract::{Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, authenticate};
use crate::access::AuthMethod;
use crate::sso::{SignedIn, Sso, SsoError, session};

fn sso(state: &AppState) -> Result<&Sso, ApiError> {
    state.sso.as_ref().ok_or_else(|| SsoError::NotConfigured.into())
}

/// `/auth/login`'s query.
#[derive(Debug, Deserialize)]
pub(super) struct LoginQuery {
    return_to: Option<String>,
    cli_redirect: Option<String>,
    cli_challenge: Option<String>,
}

/// `GET /auth/login?return_to=PATH`: 302 to the identity provider.
pub(super) async fn login(
    State(state): State<AppState>,
    Query(query): Query<LoginQuery>,
) -> Result<Response, ApiError> {
    let cli = match (&query.cli_redirect, &query.cli_challenge) {
        (Some(redirect), Some(challenge)) => Some((redirect.as_str(), challenge.as_str())),
        (None, None) => None,
        _ => return Err(ApiError::invalid_request("cli_redirect and cli_challenge go together")),
    };
    let url = sso(&state)?.begin(query.return_to.as_deref().unwrap_or("/"), cli).await?;
    redirect(&url, &[])
}

/// `/auth/callback`'s query, from the provider.
#[derive(Debug, Deserialize)]
pub(super) struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// `GET /auth/callback`: finishes the sign-in; a browser gets its cookies and goes to
/// `return_to`, `keyward login`'s browser goes to its loopback URL with the one-time grant.
pub(super) async fn callback(
    State(state): State<AppState>,
    parts: Parts,
    Query(query): Query<CallbackQuery>,
) -> Result<Response, ApiError> {
    let sso = sso(&state)?;
    let login_state = query.state.as_deref().unwrap_or_default();
    let finished =
        sso.finish(query.code.as_deref(), login_state, query.error.as_deref(), super::caller(&parts.extensions)).await;
    let finished = finished.map_err(|error| {
        let error = ApiError::from(error);
        state.metrics.request_refused(error.refusal());
        error
    })?;
    match finished {
        SignedIn::Browser { secret, return_to } => {
            let settings = sso.settings();
            let csrf = crate::sso::secrets::csrf_token(secret.expose());
            let cookies =
                session::set_cookies(secret.expose(), &csrf, settings.secure_cookies, settings.absolute_timeout);
            redirect(&return_to, &cookies)
        }
        SignedIn::Cli { grant, redirect: loopback } => {
            let mut url = reqwest::Url::parse(&loopback).map_err(|e| ApiError::internal(&e))?;
            url.query_pairs_mut().append_pair("grant", grant.expose());
            redirect(url.as_str(), &[])
        }
    }
}

fn redirect(location: &str, cookies: &[String]) -> Result<Response, ApiError> {
    let mut response = StatusCode::FOUND.into_response();
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, HeaderValue::from_str(location).map_err(|e| ApiError::internal(&e))?);
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for cookie in cookies {
        headers.append(header::SET_COOKIE, HeaderValue::from_str(cookie).map_err(|e| ApiError::internal(&e))?);
    }
    Ok(response)
}

/// `POST /auth/logout`: revokes the caller's session (browser: with the CSRF header) or CLI
/// token, and clears the cookies.
pub(super) async fn logout(State(state): State<AppState>, parts: Parts) -> Result<Response, ApiError> {
    let sso = sso(&state)?;
    let caller = authenticate(&state, &parts.method, &parts.headers).await.inspect_err(|e| {
        state.metrics.request_refused(e.refusal());
    })?;
    let Some(session) = caller.session else {
        return Err(ApiError::invalid_request("an API token is not signed out; revoke it with `keyward token revoke`"));
    };
    sso.sign_out(&session, super::caller(&parts.extensions)).await?;
    let mut response = Json(json!({ "signed_out": true })).into_response();
    for cookie in session::clear_cookies(sso.settings().secure_cookies) {
        response
            .headers_mut()
            .append(header::SET_COOKIE, HeaderValue::from_str(&cookie).map_err(|e| ApiError::internal(&e))?);
    }
    Ok(response)
}

/// `POST /auth/cli/token`'s body.
#[derive(Debug, Deserialize)]
pub(super) struct GrantBody {
    grant: String,
    verifier: String,
}

/// `POST /auth/cli/token`: `keyward login` redeems its one-time grant with its PKCE-style
/// verifier for a CLI token, shown once.
pub(super) async fn cli_token(
    State(state): State<AppState>,
    parts: Parts,
    ApiJson(body): ApiJson<GrantBody>,
) -> Result<Response, ApiError> {
    let (token, expires_at) =
        sso(&state)?.redeem_grant(&body.grant, &body.verifier, super::caller(&parts.extensions)).await?;
    let mut response = Json(json!({ "token": token.expose(), "expires_at": expires_at })).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// `GET /v1/me`: who the caller is, how they authenticated, and their roles by space (those
/// granted directly; each holds in the spaces below too).
pub(super) async fn me(State(state): State<AppState>, parts: Parts) -> Result<Response, ApiError> {
    let caller = authenticate(&state, &parts.method, &parts.headers).await.inspect_err(|e| {
        state.metrics.request_refused(e.refusal());
    })?;
    let expires_at = caller.session.as_ref().map(|s| s.expires_at);
    let roles = caller.operator.grants.by_space();
    let body = match &caller.operator.via {
        AuthMethod::ApiToken => {
            json!({ "kind": "api_token", "via": "api_token", "name": caller.operator.name, "roles": roles })
        }
        AuthMethod::Session { person, session } | AuthMethod::CliToken { person, session } => {
            let via = if matches!(caller.operator.via, AuthMethod::Session { .. }) { "session" } else { "cli_token" };
            json!({
                "kind": "person", "via": via, "id": person.id(), "issuer": person.issuer, "subject": person.subject,
                "name": person.name, "email": person.email, "groups": person.groups, "amr": person.amr,
                "session": session, "expires_at": expires_at, "roles": roles,
            })
        }
    };
    Ok(Json(body).into_response())
}

/// `POST /v1/console/links`: a one-time console sign-in link for the calling API token, valid
/// once and for a minute (`keyward console`). The answer is the link's path: the caller knows
/// the address it reaches the broker at.
pub(super) async fn console_link(State(state): State<AppState>, parts: Parts) -> Result<Response, ApiError> {
    let caller = authenticate(&state, &parts.method, &parts.headers).await.inspect_err(|e| {
        state.metrics.request_refused(e.refusal());
    })?;
    let link = state.console_sessions.create_link(&caller.operator, super::caller(&parts.extensions)).await?;
    let path = format!("{}?link={}", crate::console::SIGN_IN_PATH, link.secret.expose());
    let mut response = Json(json!({ "path": path, "expires_at": link.expires_at })).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}
