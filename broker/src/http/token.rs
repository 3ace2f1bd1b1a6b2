//! `POST /v1/token`: OAuth 2.0 Token Exchange (RFC 8693), form-encoded as the RFC requires.

use std::time::Duration;

use axum::Form;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::AppState;
use super::error::ApiError;
use super::token_response::TokenResponse;
use crate::audit::Context;
use crate::exchange::{ExchangeRequest, GRANT_TYPE, ID_TOKEN_TYPE, JWT_TOKEN_TYPE};

/// The form fields of an exchange. Unknown fields are ignored, as RFC 6749 §3.2 asks.
#[derive(Deserialize)]
pub(super) struct ExchangeForm {
    grant_type: Option<String>,
    subject_token: Option<String>,
    subject_token_type: Option<String>,
    resource: Option<String>,
    audience: Option<String>,
    requested_token_type: Option<String>,
    /// Keyward extension: a lifetime, in seconds, below the target's and the policy's caps.
    ttl_seconds: Option<u64>,
}

/// `POST /v1/token`: the form's checks, the exchange, and its RFC 8693 body, never cached.
pub(super) async fn exchange(
    State(state): State<AppState>,
    extensions: axum::http::Extensions,
    form: Result<Form<ExchangeForm>, axum::extract::rejection::FormRejection>,
) -> Result<Response, ApiError> {
    let Form(form) = form.map_err(|e| ApiError::invalid_request(e.body_text()))?;
    let request = exchange_request(form, state.exchanger.is_some(), super::caller(&extensions))?;
    let exchanger =
        state.exchanger.as_ref().ok_or_else(|| ApiError::invalid_target("no credential targets are configured"))?;
    let response = exchanger.exchange(request).await?;
    let body = TokenResponse::new(&response, state.clock_now());
    Ok((StatusCode::OK, [(header::CACHE_CONTROL, "no-store"), (header::PRAGMA, "no-cache")], axum::Json(body))
        .into_response())
}

/// The checks of an exchange's form, in the order the client hears about them.
fn exchange_request(
    form: ExchangeForm,
    targets_configured: bool,
    caller: Context,
) -> Result<ExchangeRequest, ApiError> {
    // The grant type says which protocol the request speaks: answer it before anything about
    // targets, so a client speaking the wrong one hears that first (RFC 6749 §5.2).
    if form.grant_type.as_deref() != Some(GRANT_TYPE) {
        return Err(ApiError::unsupported_grant_type(format!("grant_type must be {GRANT_TYPE}")));
    }
    if !targets_configured {
        return Err(ApiError::invalid_target("no credential targets are configured"));
    }
    let subject_token = form
        .subject_token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::invalid_request("subject_token is required"))?;
    match form.subject_token_type.as_deref() {
        Some(JWT_TOKEN_TYPE | ID_TOKEN_TYPE) => {}
        _ => {
            return Err(ApiError::invalid_request(format!(
                "subject_token_type must be {JWT_TOKEN_TYPE} or {ID_TOKEN_TYPE}"
            )));
        }
    }
    if let Some(requested) = form.requested_token_type.as_deref()
        && requested != JWT_TOKEN_TYPE
    {
        return Err(ApiError::invalid_request(format!("requested_token_type must be {JWT_TOKEN_TYPE} when given")));
    }
    let target = match (form.resource, form.audience) {
        (Some(t), None) | (None, Some(t)) => t,
        (Some(r), Some(a)) if r == a => r,
        (Some(_), Some(_)) => return Err(ApiError::invalid_request("resource and audience name different targets")),
        (None, None) => {
            return Err(ApiError::invalid_request(
                "name the target in `resource` (or `audience`), e.g. aws:network-apply",
            ));
        }
    };
    Ok(ExchangeRequest {
        subject_token: subject_token.into(),
        target,
        requested_ttl: form.ttl_seconds.map(Duration::from_secs),
        caller,
    })
}

/// The fuzzing entry (`fuzz/`; the broker never calls it): reads `body` as `POST /v1/token`
/// reads its form (axum's form extractor, then `exchange_request`'s checks), for a broker
/// with targets configured, and stops where the exchange would start.
pub async fn read_exchange_form(body: Vec<u8>) -> Result<ExchangeRequest, ApiError> {
    use axum::extract::FromRequest as _;
    let request = axum::http::Request::post("/v1/token")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(axum::body::Body::from(body))
        .map_err(|e| ApiError::invalid_request(e.to_string()))?;
    let Form(form) =
        Form::<ExchangeForm>::from_request(request, &()).await.map_err(|e| ApiError::invalid_request(e.body_text()))?;
    exchange_request(form, true, Context::default())
}
