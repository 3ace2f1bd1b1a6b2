//! `/v1/spaces…`: the space tree and its role bindings (docs/access.md, "Spaces and roles").
//!
//! Reading a space needs `viewer` in it (a space the caller may not view is not found; the list
//! shows only those it may view); creating or deleting one needs `admin` in its parent; binding
//! and unbinding roles need `admin` in the space.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, Scoped, can};
use super::guard::Guard;
use crate::access::{Operator, Permission};
use crate::roles::{ROOT, Role};
use crate::spaces::{Bindee, SpaceError};

impl From<SpaceError> for ApiError {
    fn from(error: SpaceError) -> Self {
        match error {
            SpaceError::Unknown(_) | SpaceError::UnknownBinding { .. } => Self::not_found(error.to_string()),
            SpaceError::NotEmpty { .. } => Self::conflict(error.to_string()),
            SpaceError::Change(change) => change.into(),
            SpaceError::Store(store) => Self::store(&store),
            SpaceError::InvalidName(_)
            | SpaceError::Root
            | SpaceError::BindingIdentity
            | SpaceError::BindingValue(_)
            | SpaceError::UnknownRole(_) => Self::invalid_request(error.to_string()),
        }
    }
}

/// `POST /v1/spaces` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateBody {
    name: String,
    #[serde(default)]
    parent: Option<String>,
}

/// Succeeds if `operator` holds `permission` in `space`; a space it may not view is not found.
async fn check(state: &AppState, operator: &Operator, permission: Permission, space: &str) -> Result<Guard, ApiError> {
    let guard = Guard::new(state, operator.clone()).await?;
    guard.require(permission, space, || SpaceError::Unknown(space.to_owned()).into())?;
    Ok(guard)
}

/// `POST /v1/spaces`.
pub(super) async fn create(
    State(state): State<AppState>,
    Scoped { operator, .. }: Scoped<can::Administer>,
    extensions: axum::http::Extensions,
    body: Result<ApiJson<CreateBody>, ApiError>,
) -> Result<Response, ApiError> {
    let ApiJson(body) = body?;
    let parent = body.parent.unwrap_or_else(|| ROOT.to_owned());
    Guard::new(&state, operator.clone()).await?.require_to_create(Permission::Administer, &parent)?;
    let space = state.spaces.create(&body.name, &parent, &operator.name, super::caller(&extensions)).await?;
    Ok((StatusCode::CREATED, Json(space)).into_response())
}

/// `GET /v1/spaces`: the spaces the caller may view, each with the caller's role there.
pub(super) async fn list(
    State(state): State<AppState>,
    Scoped { operator, .. }: Scoped<can::ReadRuns>,
) -> Result<Json<Value>, ApiError> {
    let guard = Guard::new(&state, operator).await?;
    let spaces: Vec<Value> = state
        .spaces
        .list()
        .await?
        .into_iter()
        .filter_map(|space| {
            let role = guard.tree().role_of(&guard.operator.grants, &space.name)?;
            let mut value = json!(space);
            if let Some(object) = value.as_object_mut() {
                object.insert("role".to_owned(), json!(role));
            }
            Some(value)
        })
        .collect();
    Ok(Json(json!({ "spaces": spaces })))
}

/// `GET /v1/spaces/{name}`: the space, its children, its bindings, and the caller's role there.
pub(super) async fn show(
    State(state): State<AppState>,
    Scoped { operator, .. }: Scoped<can::ReadRuns>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let guard = check(&state, &operator, Permission::ReadRuns, &name).await?;
    let space = state.spaces.get(&name).await?;
    let bindings = state.spaces.bindings_of(&name).await?;
    let role = guard.tree().role_of(&guard.operator.grants, &name);
    let children = guard.tree().children(&name);
    let mut value = json!(space);
    if let Some(object) = value.as_object_mut() {
        object.insert("children".to_owned(), json!(children));
        object.insert("bindings".to_owned(), json!(bindings));
        object.insert("role".to_owned(), json!(role));
    }
    Ok(Json(value))
}

/// `DELETE /v1/spaces/{name}`: needs `admin` in its parent.
pub(super) async fn delete(
    State(state): State<AppState>,
    Scoped { operator, .. }: Scoped<can::Administer>,
    extensions: axum::http::Extensions,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    if name == ROOT {
        return Err(SpaceError::Root.into());
    }
    check(&state, &operator, Permission::ReadRuns, &name).await?;
    let parent = state.spaces.get(&name).await?.parent.unwrap_or_else(|| ROOT.to_owned());
    check(&state, &operator, Permission::Administer, &parent).await?;
    state.spaces.delete(&name, &operator.name, super::caller(&extensions)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/spaces/{name}/bind|unbind` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BindBody {
    role: String,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    subject: Option<String>,
}

impl BindBody {
    fn parse(self) -> Result<(Role, Bindee), ApiError> {
        let role: Role = self.role.parse().map_err(SpaceError::from)?;
        Ok((role, Bindee::new(self.group, self.subject)?))
    }
}

/// `POST /v1/spaces/{name}/bind`.
pub(super) async fn bind(
    State(state): State<AppState>,
    Scoped { operator, .. }: Scoped<can::Administer>,
    extensions: axum::http::Extensions,
    Path(name): Path<String>,
    body: Result<ApiJson<BindBody>, ApiError>,
) -> Result<Response, ApiError> {
    let ApiJson(body) = body?;
    let (role, bindee) = body.parse()?;
    check(&state, &operator, Permission::Administer, &name).await?;
    let binding = state.spaces.bind(&name, role, &bindee, &operator.name, super::caller(&extensions)).await?;
    Ok((StatusCode::CREATED, Json(binding)).into_response())
}

/// `POST /v1/spaces/{name}/unbind`.
pub(super) async fn unbind(
    State(state): State<AppState>,
    Scoped { operator, .. }: Scoped<can::Administer>,
    extensions: axum::http::Extensions,
    Path(name): Path<String>,
    body: Result<ApiJson<BindBody>, ApiError>,
) -> Result<StatusCode, ApiError> {
    let ApiJson(body) = body?;
    let (role, bindee) = body.parse()?;
    check(&state, &operator, Permission::Administer, &name).await?;
    state.spaces.unbind(&name, role, &bindee, &operator.name, super::caller(&extensions)).await?;
    Ok(StatusCode::NO_CONTENT)
}
