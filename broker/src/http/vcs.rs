//! `POST /v1/vcs/github/webhook`: GitHub's webhook deliveries (docs/vcs.md).
//!
//! Not found unless `[vcs.github]` is configured. The body is read up to GitHub's own cap (413
//! beyond it); the signature is checked before anything of it is parsed, and a caller that fails
//! it is counted and logged but writes nothing, not even an audit entry (DESIGN.md §8.10).
//! Accepted deliveries are answered 202 at once: they are queued, processed later.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use crate::metrics::Refusal;
use crate::vcs::github::webhook::Headers;
use crate::vcs::github::{Outcome, WebhookError};

/// `POST /v1/vcs/github/webhook`.
pub(super) async fn github_webhook(
    State(state): State<AppState>,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Some(github) = &state.github else {
        return Err(ApiError::not_found("no VCS integration: [vcs.github] is not configured"));
    };
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            state.metrics.request_refused(Refusal::Invalid);
            let description = format!("the body exceeds {} bytes", crate::vcs::github::MAX_BODY_BYTES);
            let body = json!({"error": "payload_too_large", "error_description": description});
            return Ok((StatusCode::PAYLOAD_TOO_LARGE, Json(body)).into_response());
        }
        Err(rejection) => return Err(ApiError::invalid_request(rejection.body_text())),
    };
    let value = |name: &str| headers.get(name).map(axum::http::HeaderValue::as_bytes);
    let sent = Headers {
        event: value("x-github-event"),
        delivery: value("x-github-delivery"),
        signature: value("x-hub-signature-256"),
    };
    match github.receive(sent, &body, super::caller(&extensions)).await {
        Ok(Outcome::Accepted) => Ok((StatusCode::ACCEPTED, Json(json!({"queued": true}))).into_response()),
        Ok(Outcome::Duplicate) => Ok((StatusCode::OK, Json(json!({"duplicate": true}))).into_response()),
        Ok(Outcome::Ignored(reason)) => Ok((StatusCode::ACCEPTED, Json(json!({"ignored": reason}))).into_response()),
        Err(WebhookError::Signature(error)) => {
            state.metrics.request_refused(Refusal::Unauthenticated);
            tracing::warn!(%error, "a GitHub webhook delivery was refused: its signature is missing or wrong");
            Err(ApiError::unauthenticated(error.to_string()))
        }
        Err(error @ (WebhookError::Header(_) | WebhookError::Json(_) | WebhookError::NoInstallation)) => {
            Err(ApiError::invalid_request(error.to_string()))
        }
        Err(WebhookError::Change(error)) => Err(error.into()),
    }
}
