//! Stacks and runs: `/v1/stacks…` and `/v1/runs…`.
//!
//! Creating and updating stacks needs the `admin` scope; submitting and canceling runs needs `submit`;
//! approving and rejecting needs `review`; reading stacks, runs and logs needs either. The
//! caller's API token name is who triggered or reviewed a run.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, Authorized, can};
use crate::access::Operator;
use crate::runs::{RunError, RunKind, RunState, Stack, StackSpec, StackUpdate, Submission, Verdict};

/// `POST /v1/stacks`.
pub(super) async fn create_stack(
    State(state): State<AppState>,
    Authorized { operator, .. }: Authorized<can::Administer>,
    extensions: axum::http::Extensions,
    body: Result<ApiJson<StackSpec>, ApiError>,
) -> Result<Response, ApiError> {
    let ApiJson(spec) = body?;
    let stack = state.runs.create_stack(spec, &operator.name, super::caller(&extensions)).await?;
    Ok((StatusCode::CREATED, Json(stack)).into_response())
}

/// `PATCH /v1/stacks/{name}`: fields left out stay, lists replace, labels merge (`null` removes
/// one); the stack after it is checked like a new one, or nothing changes.
pub(super) async fn update_stack(
    State(state): State<AppState>,
    Authorized { operator, .. }: Authorized<can::Administer>,
    extensions: axum::http::Extensions,
    Path(name): Path<String>,
    body: Result<ApiJson<StackUpdate>, ApiError>,
) -> Result<Json<Stack>, ApiError> {
    let ApiJson(update) = body?;
    Ok(Json(state.runs.update_stack(&name, update, &operator.name, super::caller(&extensions)).await?))
}

/// `GET /v1/stacks`.
pub(super) async fn list_stacks(
    State(state): State<AppState>,
    _: Authorized<can::ReadRuns>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "stacks": state.runs.stacks().await? })))
}

/// `GET /v1/stacks/{name}`.
pub(super) async fn show_stack(
    State(state): State<AppState>,
    _: Authorized<can::ReadRuns>,
    Path(name): Path<String>,
) -> Result<Json<Stack>, ApiError> {
    Ok(Json(state.runs.stack(&name).await?))
}

/// `POST /v1/runs` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SubmitBody {
    stack: String,
    #[serde(default)]
    commit_sha: Option<String>,
    #[serde(default)]
    pull_request: Option<u64>,
    #[serde(default)]
    ticket: Option<String>,
    /// `deploy` (the default) or `drift`.
    #[serde(default)]
    kind: RunKind,
}

/// `POST /v1/runs`.
pub(super) async fn submit_run(
    State(state): State<AppState>,
    Authorized { operator, .. }: Authorized<can::SubmitRuns>,
    extensions: axum::http::Extensions,
    body: Result<ApiJson<SubmitBody>, ApiError>,
) -> Result<Response, ApiError> {
    let ApiJson(body) = body?;
    let submission = Submission {
        stack: body.stack,
        commit: body.commit_sha,
        pull_request: body.pull_request,
        ticket: body.ticket,
        kind: body.kind,
    };
    let run = state.runs.submit(submission, &operator.name, super::caller(&extensions)).await?;
    Ok((StatusCode::CREATED, Json(run)).into_response())
}

/// `GET /v1/runs` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    stack: Option<String>,
    limit: Option<i64>,
}

/// `GET /v1/runs?stack=S&limit=N`: newest first.
pub(super) async fn list_runs(
    State(state): State<AppState>,
    _: Authorized<can::ReadRuns>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid_request(e.body_text()))?;
    let runs = state.runs.runs(query.stack.as_deref(), query.limit.unwrap_or(50)).await?;
    Ok(Json(json!({ "runs": runs })))
}

/// `GET /v1/runs/{id}`.
pub(super) async fn show_run(
    State(state): State<AppState>,
    _: Authorized<can::ReadRuns>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(state.runs.run(&id).await?)))
}

/// `POST /v1/runs/{id}/approve|reject` body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReviewBody {
    #[serde(default)]
    comment: Option<String>,
}

async fn review(
    state: AppState,
    operator: Operator,
    extensions: axum::http::Extensions,
    id: String,
    verdict: Verdict,
    body: Result<ApiJson<ReviewBody>, ApiError>,
) -> Result<Json<Value>, ApiError> {
    let ApiJson(body) = body?;
    let outcome = state.runs.review(&id, verdict, body.comment, &operator.name, super::caller(&extensions)).await?;
    Ok(Json(json!(outcome)))
}

/// `POST /v1/runs/{id}/approve`.
pub(super) async fn approve_run(
    State(state): State<AppState>,
    Authorized { operator, .. }: Authorized<can::ReviewRuns>,
    extensions: axum::http::Extensions,
    Path(id): Path<String>,
    body: Result<ApiJson<ReviewBody>, ApiError>,
) -> Result<Json<Value>, ApiError> {
    review(state, operator, extensions, id, Verdict::Approve, body).await
}

/// `POST /v1/runs/{id}/reject`.
pub(super) async fn reject_run(
    State(state): State<AppState>,
    Authorized { operator, .. }: Authorized<can::ReviewRuns>,
    extensions: axum::http::Extensions,
    Path(id): Path<String>,
    body: Result<ApiJson<ReviewBody>, ApiError>,
) -> Result<Json<Value>, ApiError> {
    review(state, operator, extensions, id, Verdict::Reject, body).await
}

/// `POST /v1/runs/{id}/cancel`.
pub(super) async fn cancel_run(
    State(state): State<AppState>,
    Authorized { operator, .. }: Authorized<can::SubmitRuns>,
    extensions: axum::http::Extensions,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(state.runs.cancel(&id, &operator.name, super::caller(&extensions)).await?)))
}

/// `GET /v1/runs/{id}/logs` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LogsQuery {
    after: Option<i64>,
    limit: Option<i64>,
}

/// `GET /v1/runs/{id}/logs?after=CURSOR&limit=N`: the run's verified, masked log chunks in
/// arrival order, from after `CURSOR`, and whether the run has settled (a follower stops when it
/// has and nothing new came).
pub(super) async fn run_logs(
    State(state): State<AppState>,
    _: Authorized<can::ReadRuns>,
    Path(id): Path<String>,
    query: Result<Query<LogsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid_request(e.body_text()))?;
    let run = state.runs.run(&id).await?;
    let after = query.after.unwrap_or(0).max(0);
    let chunks = state
        .agents
        .logs()
        .page(&id, after, query.limit.unwrap_or(500).clamp(1, 1000))
        .await
        .map_err(RunError::from)?;
    let cursor = chunks.last().map_or(after, |c| c.id);
    let settled = run.state.parse::<RunState>().is_ok_and(RunState::is_settled);
    let jobs: Vec<Value> = run.jobs.iter().map(|j| json!({"id": j.id, "phase": j.phase, "state": j.state})).collect();
    Ok(Json(
        json!({ "run_id": run.id, "state": run.state, "settled": settled, "cursor": cursor, "jobs": jobs, "chunks": chunks }),
    ))
}

/// `GET /v1/runs/{id}/logs/bundle`: the run's log with the signatures, certificates and sealed
/// heads that let `keyward run logs --verify` check it offline.
pub(super) async fn run_log_bundle(
    State(state): State<AppState>,
    _: Authorized<can::ReadRuns>,
    Path(id): Path<String>,
) -> Result<Json<crate::joblogs::Bundle>, ApiError> {
    state.runs.run(&id).await?;
    Ok(Json(state.agents.logs().bundle(&id).await.map_err(RunError::from)?))
}
