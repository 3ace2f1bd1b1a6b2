//! Pools and agents: `/v1/pools…`, `/v1/agents…`.
//!
//! Everything here needs the `admin` scope, except `GET /v1/agents/bootstrap`: the agent CA
//! certificate and the gRPC endpoint are public, and an enrolling agent checks the CA against the
//! fingerprint in its join token before trusting it.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, Authorized, can};
use crate::agents::{AgentView, Bootstrap};

/// Default join-token lifetime.
const DEFAULT_JOIN_TOKEN_TTL: Duration = Duration::from_secs(600);

/// `GET /v1/agents/bootstrap`.
pub(super) async fn bootstrap(State(state): State<AppState>) -> Result<Json<Bootstrap>, ApiError> {
    let bootstrap = state.agents.bootstrap();
    if bootstrap.endpoint.is_empty() {
        return Err(ApiError::not_found("this broker has no agent endpoint ([agents] listen is not set)"));
    }
    Ok(Json(bootstrap))
}

/// `POST /v1/pools` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PoolBody {
    name: String,
}

/// `POST /v1/pools`.
pub(super) async fn create_pool(
    State(state): State<AppState>,
    Authorized { operator, .. }: Authorized<can::Administer>,
    extensions: axum::http::Extensions,
    body: Result<ApiJson<PoolBody>, ApiError>,
) -> Result<Response, ApiError> {
    let ApiJson(body) = body?;
    let pool = state.agents.create_pool(&body.name, &operator.name, super::caller(&extensions)).await?;
    Ok((StatusCode::CREATED, Json(pool)).into_response())
}

/// `GET /v1/pools`.
pub(super) async fn list_pools(
    State(state): State<AppState>,
    _: Authorized<can::Administer>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "pools": state.agents.pools().await? })))
}

/// `POST /v1/pools/{name}/join-tokens` body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct JoinTokenBody {
    /// Lifetime in seconds.
    #[serde(default)]
    ttl_seconds: Option<u64>,
}

/// `POST /v1/pools/{name}/join-tokens`.
pub(super) async fn create_join_token(
    State(state): State<AppState>,
    Authorized { operator, .. }: Authorized<can::Administer>,
    extensions: axum::http::Extensions,
    Path(pool): Path<String>,
    body: Result<ApiJson<JoinTokenBody>, ApiError>,
) -> Result<Response, ApiError> {
    let ApiJson(body) = body?;
    let ttl = body.ttl_seconds.map_or(DEFAULT_JOIN_TOKEN_TTL, Duration::from_secs);
    let token = state.agents.join_token(&pool, ttl, &operator.name, super::caller(&extensions)).await?;
    Ok((StatusCode::CREATED, Json(token)).into_response())
}

/// `GET /v1/agents` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    pool: Option<String>,
}

/// `GET /v1/agents`.
pub(super) async fn list_agents(
    State(state): State<AppState>,
    _: Authorized<can::Administer>,
    Query(query): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "agents": state.agents.list(query.pool.as_deref()).await? })))
}

/// `GET /v1/agents/{id}`.
pub(super) async fn show_agent(
    State(state): State<AppState>,
    _: Authorized<can::Administer>,
    Path(id): Path<String>,
) -> Result<Json<AgentView>, ApiError> {
    Ok(Json(state.agents.get(&id).await?))
}

/// `POST /v1/agents/{id}/revoke`.
pub(super) async fn revoke_agent(
    State(state): State<AppState>,
    Authorized { operator, .. }: Authorized<can::Administer>,
    extensions: axum::http::Extensions,
    Path(id): Path<String>,
) -> Result<Json<AgentView>, ApiError> {
    Ok(Json(state.agents.revoke(&id, &operator.name, super::caller(&extensions)).await?))
}

/// `POST /v1/agents/{id}/drain`.
pub(super) async fn drain_agent(
    State(state): State<AppState>,
    Authorized { operator, .. }: Authorized<can::Administer>,
    extensions: axum::http::Extensions,
    Path(id): Path<String>,
) -> Result<Json<AgentView>, ApiError> {
    Ok(Json(state.agents.drain(&id, &operator.name, super::caller(&extensions)).await?))
}
