//! Contexts and stack variables: `/v1/contexts…` and `/v1/stacks/{name}/variables…`
//! (docs/contexts.md). Every call needs the `admin` scope; a secret's value is accepted, never
//! returned; a mounted file's path is.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, Authorized, can};
use crate::runs::context_hooks::ContextUpdate;
use crate::runs::contexts::{NewContext, NewVariable, Owner};

/// `POST /v1/contexts`.
pub(super) async fn create(
    State(state): State<AppState>,
    Authorized { operator, .. }: Authorized<can::Administer>,
    extensions: axum::http::Extensions,
    body: Result<ApiJson<NewContext>, ApiError>,
) -> Result<Response, ApiError> {
    let ApiJson(new) = body?;
    let view = state.runs.create_context(new, &operator.name, super::caller(&extensions)).await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// `GET /v1/contexts`.
pub(super) async fn list(State(state): State<AppState>, _: Authorized<can::Administer>) -> Result<Response, ApiError> {
    Ok(Json(json!({ "contexts": state.runs.contexts().await? })).into_response())
}

/// `GET /v1/contexts/{name}`.
pub(super) async fn show(
    State(state): State<AppState>,
    _: Authorized<can::Administer>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(state.runs.context_view(&name).await?).into_response())
}

/// `PATCH /v1/contexts/{name}`: its hooks, as a stack's are changed.
pub(super) async fn update(
    State(state): State<AppState>,
    Authorized { operator, .. }: Authorized<can::Administer>,
    Path(name): Path<String>,
    extensions: axum::http::Extensions,
    body: Result<ApiJson<ContextUpdate>, ApiError>,
) -> Result<Response, ApiError> {
    let ApiJson(update) = body?;
    let view = state.runs.update_context(&name, update, &operator.name, super::caller(&extensions)).await?;
    Ok(Json(view).into_response())
}

/// `DELETE /v1/contexts/{name}`.
pub(super) async fn delete(
    State(state): State<AppState>,
    Authorized { operator, .. }: Authorized<can::Administer>,
    Path(name): Path<String>,
    extensions: axum::http::Extensions,
) -> Result<Response, ApiError> {
    state.runs.delete_context(&name, &operator.name, super::caller(&extensions)).await?;
    Ok(Json(json!({ "deleted": name })).into_response())
}

/// `PUT …/variables/{key}` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SetBody {
    value: String,
    #[serde(default)]
    secret: bool,
    /// Mount the value as a file at this path (relative to the stack's configuration
    /// directory) instead of putting it into the environment.
    #[serde(default)]
    file: Option<String>,
}

/// `PUT /v1/contexts/{name}/variables/{key}`.
pub(super) async fn set_context_variable(
    State(state): State<AppState>,
    Authorized { operator, .. }: Authorized<can::Administer>,
    Path((name, key)): Path<(String, String)>,
    extensions: axum::http::Extensions,
    body: Result<ApiJson<SetBody>, ApiError>,
) -> Result<Response, ApiError> {
    set(&state, &operator.name, Owner::Context(&name), &key, &extensions, body).await
}

/// `DELETE /v1/contexts/{name}/variables/{key}`.
pub(super) async fn unset_context_variable(
    State(state): State<AppState>,
    Authorized { operator, .. }: Authorized<can::Administer>,
    Path((name, key)): Path<(String, String)>,
    extensions: axum::http::Extensions,
) -> Result<Response, ApiError> {
    unset(&state, &operator.name, Owner::Context(&name), &key, &extensions).await
}

/// `PUT /v1/stacks/{name}/variables/{key}`.
pub(super) async fn set_stack_variable(
    State(state): State<AppState>,
    Authorized { operator, .. }: Authorized<can::Administer>,
    Path((name, key)): Path<(String, String)>,
    extensions: axum::http::Extensions,
    body: Result<ApiJson<SetBody>, ApiError>,
) -> Result<Response, ApiError> {
    set(&state, &operator.name, Owner::Stack(&name), &key, &extensions, body).await
}

/// `DELETE /v1/stacks/{name}/variables/{key}`.
pub(super) async fn unset_stack_variable(
    State(state): State<AppState>,
    Authorized { operator, .. }: Authorized<can::Administer>,
    Path((name, key)): Path<(String, String)>,
    extensions: axum::http::Extensions,
) -> Result<Response, ApiError> {
    unset(&state, &operator.name, Owner::Stack(&name), &key, &extensions).await
}

/// Sets `owner`'s variable `key` as the body says.
async fn set(
    state: &AppState,
    who: &str,
    owner: Owner<'_>,
    key: &str,
    extensions: &axum::http::Extensions,
    body: Result<ApiJson<SetBody>, ApiError>,
) -> Result<Response, ApiError> {
    let ApiJson(body) = body?;
    let new = NewVariable { name: key, value: &body.value, secret: body.secret, file: body.file.as_deref() };
    let view = state.runs.set_variable(owner, new, who, super::caller(extensions)).await?;
    Ok(Json(view).into_response())
}

/// Removes `owner`'s variable `key`.
async fn unset(
    state: &AppState,
    who: &str,
    owner: Owner<'_>,
    key: &str,
    extensions: &axum::http::Extensions,
) -> Result<Response, ApiError> {
    state.runs.unset_variable(owner, key, who, super::caller(extensions)).await?;
    Ok(Json(json!({ "unset": key })).into_response())
}

/// `POST /v1/contexts/{name}/attach` and `…/detach` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AttachBody {
    stack: String,
}

/// `POST /v1/contexts/{name}/attach`.
pub(super) async fn attach(
    State(state): State<AppState>,
    Authorized { operator, .. }: Authorized<can::Administer>,
    Path(name): Path<String>,
    extensions: axum::http::Extensions,
    body: Result<ApiJson<AttachBody>, ApiError>,
) -> Result<Response, ApiError> {
    let ApiJson(body) = body?;
    let view = state.runs.attach_context(&name, &body.stack, true, &operator.name, super::caller(&extensions)).await?;
    Ok(Json(view).into_response())
}

/// `POST /v1/contexts/{name}/detach`.
pub(super) async fn detach(
    State(state): State<AppState>,
    Authorized { operator, .. }: Authorized<can::Administer>,
    Path(name): Path<String>,
    extensions: axum::http::Extensions,
    body: Result<ApiJson<AttachBody>, ApiError>,
) -> Result<Response, ApiError> {
    let ApiJson(body) = body?;
    let view = state.runs.attach_context(&name, &body.stack, false, &operator.name, super::caller(&extensions)).await?;
    Ok(Json(view).into_response())
}
