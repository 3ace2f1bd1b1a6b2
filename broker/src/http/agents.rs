//! Pools and agents: `/v1/pools…`, `/v1/agents…`.
//!
//! A pool belongs to a space, and an agent to its pool's space (docs/access.md): reading them
//! needs `viewer` there, creating pools, join tokens, draining and revoking `admin`; what a caller
//! may not view is not found, and lists show only what it may view. `GET /v1/agents/bootstrap` is
//! public: the agent CA certificate and the gRPC endpoint are, and an enrolling agent checks the
//! CA against the fingerprint in its join token before trusting it.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, Scoped, can};
use super::guard::{Guard, pool_space};
use crate::access::{Operator, Permission};
use crate::agents::{AgentError, AgentView, Bootstrap};

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
    /// Its space (default `root`).
    #[serde(default = "root")]
    space: String,
}

fn root() -> String {
    crate::roles::ROOT.to_owned()
}

/// Succeeds if `operator` holds `permission` in pool `name`'s space; a pool it may not view is
/// not found.
async fn check_pool(state: &AppState, operator: &Operator, permission: Permission, name: &str) -> Result<(), ApiError> {
    let space = pool_space(state, name).await?;
    let hidden = || AgentError::UnknownPool(name.to_owned()).into();
    Guard::new(state, operator.clone()).await?.require(permission, &space, hidden)
}

/// Succeeds if `operator` holds `permission` in the space of agent `id`'s pool; an agent it may
/// not view is not found.
async fn check_agent(state: &AppState, operator: &Operator, permission: Permission, id: &str) -> Result<(), ApiError> {
    let agent = state.agents.get(id).await?;
    let space = pool_space(state, &agent.pool).await?;
    let hidden = || AgentError::UnknownAgent(id.to_owned()).into();
    Guard::new(state, operator.clone()).await?.require(permission, &space, hidden)
}

/// `POST /v1/pools`.
pub(super) async fn create_pool(
    State(state): State<AppState>,
    Scoped { operator, .. }: Scoped<can::Administer>,
    extensions: axum::http::Extensions,
    body: Result<ApiJson<PoolBody>, ApiError>,
) -> Result<Response, ApiError> {
    let ApiJson(body) = body?;
    Guard::new(&state, operator.clone()).await?.require_to_create(Permission::Administer, &body.space)?;
    let pool = state.agents.create_pool(&body.name, &body.space, &operator.name, super::caller(&extensions)).await?;
    Ok((StatusCode::CREATED, Json(pool)).into_response())
}

/// `GET /v1/pools`.
pub(super) async fn list_pools(
    State(state): State<AppState>,
    Scoped { operator, .. }: Scoped<can::ReadRuns>,
) -> Result<Json<Value>, ApiError> {
    let guard = Guard::new(&state, operator).await?;
    let mut pools = state.agents.pools().await?;
    pools.retain(|pool| guard.may(Permission::ReadRuns, &pool.space));
    Ok(Json(json!({ "pools": pools })))
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
    Scoped { operator, .. }: Scoped<can::Administer>,
    extensions: axum::http::Extensions,
    Path(pool): Path<String>,
    body: Result<ApiJson<JoinTokenBody>, ApiError>,
) -> Result<Response, ApiError> {
    let ApiJson(body) = body?;
    check_pool(&state, &operator, Permission::Administer, &pool).await?;
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
    Scoped { operator, .. }: Scoped<can::ReadRuns>,
    Query(query): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    if let Some(pool) = &query.pool {
        check_pool(&state, &operator, Permission::ReadRuns, pool).await?;
    }
    Ok(Json(json!({ "agents": readable_agents(&state, operator, query.pool.as_deref()).await? })))
}

/// The agents (of `pool`, if given) in the pools `operator` may read.
pub(super) async fn readable_agents(
    state: &AppState,
    operator: Operator,
    pool: Option<&str>,
) -> Result<Vec<AgentView>, ApiError> {
    let guard = Guard::new(state, operator).await?;
    let spaces: std::collections::HashMap<String, String> =
        state.agents.pools().await?.into_iter().map(|pool| (pool.name, pool.space)).collect();
    let mut agents = state.agents.list(pool).await?;
    agents.retain(|agent| spaces.get(&agent.pool).is_some_and(|space| guard.may(Permission::ReadRuns, space)));
    Ok(agents)
}

/// `GET /v1/agents/{id}`.
pub(super) async fn show_agent(
    State(state): State<AppState>,
    Scoped { operator, .. }: Scoped<can::ReadRuns>,
    Path(id): Path<String>,
) -> Result<Json<AgentView>, ApiError> {
    check_agent(&state, &operator, Permission::ReadRuns, &id).await?;
    Ok(Json(state.agents.get(&id).await?))
}

/// `POST /v1/agents/{id}/revoke`.
pub(super) async fn revoke_agent(
    State(state): State<AppState>,
    Scoped { operator, .. }: Scoped<can::Administer>,
    extensions: axum::http::Extensions,
    Path(id): Path<String>,
) -> Result<Json<AgentView>, ApiError> {
    Ok(Json(revoke(&state, &operator, &id, super::caller(&extensions)).await?))
}

/// Revokes agent `id` as `operator`, who must administer its pool's space (an agent it may not
/// view is not found): the API's and the console's revoke.
pub(super) async fn revoke(
    state: &AppState,
    operator: &Operator,
    id: &str,
    caller: crate::audit::Context,
) -> Result<AgentView, ApiError> {
    check_agent(state, operator, Permission::Administer, id).await?;
    Ok(state.agents.revoke(id, &operator.name, caller).await?)
}

/// `POST /v1/agents/{id}/drain`.
pub(super) async fn drain_agent(
    State(state): State<AppState>,
    Scoped { operator, .. }: Scoped<can::Administer>,
    extensions: axum::http::Extensions,
    Path(id): Path<String>,
) -> Result<Json<AgentView>, ApiError> {
    Ok(Json(drain(&state, &operator, &id, super::caller(&extensions)).await?))
}

/// Drains agent `id` as `operator`, who must administer its pool's space: the API's and the
/// console's drain.
pub(super) async fn drain(
    state: &AppState,
    operator: &Operator,
    id: &str,
    caller: crate::audit::Context,
) -> Result<AgentView, ApiError> {
    check_agent(state, operator, Permission::Administer, id).await?;
    Ok(state.agents.drain(id, &operator.name, caller).await?)
}
