//! Terraform state: the `http` backend Terraform talks to (`/v1/stacks/{name}/state`, methods
//! `GET`, `POST`, `LOCK`, `UNLOCK`), and the operators' endpoints behind `keyward state …`.
//!
//! Terraform authenticates with HTTP Basic: the user name is the job's ID and the password the
//! one its agent was given for the job's lease (`TF_HTTP_USERNAME`/`TF_HTTP_PASSWORD`), so what a
//! job may do follows its lease and phase. Operators use their `admin` API token (Bearer), for
//! the metadata, pulls and pushes, rollbacks and forced unlocks, each recorded.
//!
//! Terraform's protocol, as its `http` backend speaks it: `GET` answers the state, or `204` when
//! there is none yet; `POST` stores one (`?ID=<lock>` while locked); `LOCK` takes the lock with
//! Terraform's lock information as the body and answers `423` with the holder's lock information
//! when someone else holds it; `UNLOCK` releases it.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use zeroize::Zeroizing;

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, Authorized, can};
use crate::runs::{HeldJob, StateError};

/// `?ID=` on Terraform's `POST` while it holds the lock.
#[derive(Debug, Deserialize)]
pub(super) struct LockQuery {
    #[serde(rename = "ID")]
    id: Option<String>,
}

/// `/v1/stacks/{name}/state`: Terraform's `http` backend, and `GET` for operators (a pull of the
/// newest version).
pub(super) async fn backend(
    State(state): State<AppState>,
    Path(stack): Path<String>,
    Query(lock): Query<LockQuery>,
    method: Method,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Some((job_id, password)) = basic_credentials(&headers) else {
        if method == Method::GET {
            return operator_pull(&state, &headers, &stack, None, extensions).await;
        }
        return Err(ApiError::unauthenticated(
            "Terraform's state backend needs the job's state credentials (HTTP Basic)",
        ));
    };
    let held = state.runs.job_for_state(&job_id, &password).await.inspect_err(|_| {
        state.metrics.request_refused(crate::metrics::Refusal::Unauthenticated);
    })?;
    match method.as_str() {
        "GET" => match state.runs.job_state(&held, &stack).await? {
            Some(content) => Ok(state_response(content)),
            None => Ok(StatusCode::NO_CONTENT.into_response()),
        },
        "POST" => {
            state.runs.write_job_state(&held, &stack, &body, lock.id.as_deref()).await?;
            Ok(StatusCode::OK.into_response())
        }
        "LOCK" => lock_state(&state, &held, &stack, &body).await,
        "UNLOCK" => {
            state.runs.unlock_job_state(&held, &stack, &body).await?;
            Ok(StatusCode::OK.into_response())
        }
        other => Err(ApiError::method_not_allowed(format!(
            "{other} is not part of the state backend: GET, POST, LOCK and UNLOCK are"
        ))),
    }
}

/// `LOCK`: `423` with the holder's lock information when someone else holds it, which Terraform
/// shows to its user.
async fn lock_state(state: &AppState, held: &HeldJob, stack: &str, body: &[u8]) -> Result<Response, ApiError> {
    match state.runs.lock_job_state(held, stack, body).await {
        Ok(()) => Ok(StatusCode::OK.into_response()),
        Err(StateError::Locked { lock, .. }) => {
            Ok((StatusCode::LOCKED, [(header::CONTENT_TYPE, "application/json")], lock.info).into_response())
        }
        Err(error) => Err(error.into()),
    }
}

/// The user name and password of an HTTP Basic `Authorization` header, if it is one.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, Zeroizing<String>)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = Zeroizing::new(STANDARD.decode(encoded.trim()).ok()?);
    let text = std::str::from_utf8(&decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), Zeroizing::new(password.to_owned())))
}

fn state_response(content: Zeroizing<Vec<u8>>) -> Response {
    ([(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store")], content.to_vec())
        .into_response()
}

/// An operator's pull of version `version` (the newest with `None`), authorized as `admin`.
async fn operator_pull(
    state: &AppState,
    headers: &HeaderMap,
    stack: &str,
    version: Option<i64>,
    extensions: axum::http::Extensions,
) -> Result<Response, ApiError> {
    let operator = super::extract::operator(
        state,
        &axum::http::Method::GET,
        headers,
        crate::access::Permission::Administer,
        super::extract::Reach::Root,
    )
    .await?;
    let (_, content) = state.runs.pull_state(stack, version, &operator.name, super::caller(&extensions)).await?;
    Ok(state_response(content))
}

/// `GET /v1/stacks/{name}/state/versions`: the lock and every version's metadata.
pub(super) async fn versions(
    State(state): State<AppState>,
    _: Authorized<can::Administer>,
    Path(stack): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(state.runs.state_summary(&stack).await?).into_response())
}

/// `GET /v1/stacks/{name}/state/versions/{version}`: that version's content.
pub(super) async fn version_content(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((stack, version)): Path<(String, i64)>,
    extensions: axum::http::Extensions,
) -> Result<Response, ApiError> {
    operator_pull(&state, &headers, &stack, Some(version), extensions).await
}

/// `POST /v1/stacks/{name}/state/versions`: an operator's push (the body is the state).
pub(super) async fn push(
    State(state): State<AppState>,
    Authorized { operator, .. }: Authorized<can::Administer>,
    Path(stack): Path<String>,
    extensions: axum::http::Extensions,
    body: Bytes,
) -> Result<Response, ApiError> {
    let kept = state.runs.push_state(&stack, &body, &operator.name, super::caller(&extensions)).await?;
    Ok(pushed(kept))
}

/// `POST /v1/stacks/{name}/state/rollback` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RollbackBody {
    version: i64,
}

/// `POST /v1/stacks/{name}/state/rollback`.
pub(super) async fn rollback(
    State(state): State<AppState>,
    Authorized { operator, .. }: Authorized<can::Administer>,
    Path(stack): Path<String>,
    extensions: axum::http::Extensions,
    body: Result<ApiJson<RollbackBody>, ApiError>,
) -> Result<Response, ApiError> {
    let ApiJson(body) = body?;
    let kept = state.runs.rollback_state(&stack, body.version, &operator.name, super::caller(&extensions)).await?;
    Ok(pushed(kept))
}

/// `201` with the new version, or `200 {"unchanged": true}` when it was already the newest.
fn pushed(kept: Option<crate::runs::StateVersionView>) -> Response {
    match kept {
        Some(version) => (StatusCode::CREATED, Json(version)).into_response(),
        None => Json(serde_json::json!({ "unchanged": true })).into_response(),
    }
}

/// `?id=` of a forced unlock: only if the lock is still that one.
#[derive(Debug, Deserialize)]
pub(super) struct UnlockQuery {
    id: Option<String>,
}

/// `DELETE /v1/stacks/{name}/state/lock`: an operator's forced unlock.
pub(super) async fn force_unlock(
    State(state): State<AppState>,
    Authorized { operator, .. }: Authorized<can::Administer>,
    Path(stack): Path<String>,
    Query(query): Query<UnlockQuery>,
    extensions: axum::http::Extensions,
) -> Result<Response, ApiError> {
    let released =
        state.runs.force_unlock_state(&stack, query.id.as_deref(), &operator.name, super::caller(&extensions)).await?;
    Ok(Json(serde_json::json!({ "released": released })).into_response())
}
