//! Stacks and runs: `/v1/stacks…` and `/v1/runs…`.
//!
//! Each needs a role in the stack's space (docs/access.md): creating and updating stacks `admin`,
//! submitting and canceling runs `submitter`, approving and rejecting `reviewer`, reading stacks,
//! runs and logs `viewer`. A stack or run in a space the caller may not view is not found; lists
//! show only what the caller may view. The caller's name is who triggered or reviewed a run.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, Scoped, can};
use super::guard::{Guard, stack_space, stack_spaces};
use crate::access::{Operator, Permission};
use crate::runs::{RunError, RunKind, RunState, RunView, Stack, StackSpec, StackUpdate, Submission, Verdict};
use crate::store::RunFilter;

/// `POST /v1/stacks`.
pub(super) async fn create_stack(
    State(state): State<AppState>,
    Scoped { operator, .. }: Scoped<can::Administer>,
    extensions: axum::http::Extensions,
    body: Result<ApiJson<StackSpec>, ApiError>,
) -> Result<Response, ApiError> {
    let ApiJson(spec) = body?;
    Guard::new(&state, operator.clone()).await?.require_to_create(Permission::Administer, &spec.space)?;
    let stack = state.runs.create_stack(spec, &operator.name, super::caller(&extensions)).await?;
    Ok((StatusCode::CREATED, Json(stack)).into_response())
}

/// `PATCH /v1/stacks/{name}`: fields left out stay, lists replace, labels merge (`null` removes
/// one); the stack after it is checked like a new one, or nothing changes.
pub(super) async fn update_stack(
    State(state): State<AppState>,
    Scoped { operator, .. }: Scoped<can::Administer>,
    extensions: axum::http::Extensions,
    Path(name): Path<String>,
    body: Result<ApiJson<StackUpdate>, ApiError>,
) -> Result<Json<Stack>, ApiError> {
    let ApiJson(update) = body?;
    check_stack(&state, &operator, Permission::Administer, &name).await?;
    Ok(Json(state.runs.update_stack(&name, update, &operator.name, super::caller(&extensions)).await?))
}

/// `GET /v1/stacks`.
pub(super) async fn list_stacks(
    State(state): State<AppState>,
    Scoped { operator, .. }: Scoped<can::ReadRuns>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "stacks": readable_stacks(&state, operator).await? })))
}

/// The stacks `operator` may read.
pub(super) async fn readable_stacks(state: &AppState, operator: Operator) -> Result<Vec<Stack>, ApiError> {
    let guard = Guard::new(state, operator).await?;
    let mut stacks = state.runs.stacks().await?;
    stacks.retain(|stack| guard.may(Permission::ReadRuns, &stack.spec.space));
    Ok(stacks)
}

/// The caller as policies see it (`input.actor`): a token, or a person with their subject,
/// groups and `amr`.
fn actor(operator: &Operator) -> crate::roles::Actor {
    operator.actor()
}

/// Succeeds if `operator` holds `permission` in the space of the stack `name`; a stack it may not
/// view is not found.
pub(super) async fn check_stack(
    state: &AppState,
    operator: &Operator,
    permission: Permission,
    name: &str,
) -> Result<(), ApiError> {
    let space = stack_space(state, name).await?;
    let hidden = || RunError::UnknownStack(name.to_owned()).into();
    Guard::new(state, operator.clone()).await?.require(permission, &space, hidden)
}

/// Run `id`, if `operator` holds `permission` in the space of its stack; a run it may not view
/// is not found.
pub(super) async fn check_run(
    state: &AppState,
    operator: &Operator,
    permission: Permission,
    id: &str,
) -> Result<RunView, ApiError> {
    let run = state.runs.run(id).await?;
    let space = stack_space(state, &run.stack).await?;
    let hidden = || RunError::UnknownRun(id.to_owned()).into();
    Guard::new(state, operator.clone()).await?.require(permission, &space, hidden)?;
    Ok(run)
}

/// `GET /v1/stacks/{name}`.
pub(super) async fn show_stack(
    State(state): State<AppState>,
    Scoped { operator, .. }: Scoped<can::ReadRuns>,
    Path(name): Path<String>,
) -> Result<Json<Stack>, ApiError> {
    check_stack(&state, &operator, Permission::ReadRuns, &name).await?;
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
    Scoped { operator, .. }: Scoped<can::SubmitRuns>,
    extensions: axum::http::Extensions,
    body: Result<ApiJson<SubmitBody>, ApiError>,
) -> Result<Response, ApiError> {
    let ApiJson(body) = body?;
    check_stack(&state, &operator, Permission::SubmitRuns, &body.stack).await?;
    let submission = Submission {
        stack: body.stack,
        commit: body.commit_sha,
        pull_request: body.pull_request,
        ticket: body.ticket,
        kind: body.kind,
    };
    let run = state.runs.submit_as(submission, &actor(&operator), super::caller(&extensions)).await?;
    Ok((StatusCode::CREATED, Json(run)).into_response())
}

/// `GET /v1/runs` query (and the console's runs list's).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    pub(super) stack: Option<String>,
    pub(super) state: Option<String>,
    pub(super) kind: Option<String>,
    pub(super) pull_request: Option<i64>,
    pub(super) submitter: Option<String>,
    pub(super) limit: Option<i64>,
}

impl ListQuery {
    /// The filter it asks for, each value checked (an empty one is no filter); a state or kind
    /// that does not exist is an error rather than an empty list.
    pub(super) fn filter(&self) -> Result<RunFilter, ApiError> {
        let given =
            |value: &Option<String>| value.as_deref().map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned);
        let state = given(&self.state);
        if let Some(state) = &state {
            state.parse::<RunState>().map_err(|e| ApiError::invalid_request(e.to_string()))?;
        }
        let kind = given(&self.kind);
        if let Some(kind) = &kind {
            kind.parse::<RunKind>().map_err(|e| ApiError::invalid_request(e.to_string()))?;
        }
        Ok(RunFilter {
            stack: given(&self.stack),
            state,
            kind,
            pull_request: self.pull_request,
            triggered_by: given(&self.submitter),
        })
    }
}

/// `GET /v1/runs?stack=S&state=S&kind=K&pull_request=N&submitter=W&limit=N`: newest first.
pub(super) async fn list_runs(
    State(state): State<AppState>,
    Scoped { operator, .. }: Scoped<can::ReadRuns>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid_request(e.body_text()))?;
    let filter = query.filter()?;
    let runs = readable_runs(&state, operator, &filter, query.limit.unwrap_or(50)).await?;
    Ok(Json(json!({ "runs": runs })))
}

/// The newest `limit` runs matching `filter` that `operator` may read (a stack it may not read
/// is not found).
pub(super) async fn readable_runs(
    state: &AppState,
    operator: Operator,
    filter: &RunFilter,
    limit: i64,
) -> Result<Vec<RunView>, ApiError> {
    if let Some(stack) = &filter.stack {
        check_stack(state, &operator, Permission::ReadRuns, stack).await?;
    }
    let guard = Guard::new(state, operator).await?;
    let spaces = stack_spaces(state).await?;
    let mut runs = state.runs.runs_matching(filter, limit).await?;
    runs.retain(|run| spaces.get(&run.stack).is_some_and(|space| guard.may(Permission::ReadRuns, space)));
    Ok(runs)
}

/// `GET /v1/runs/{id}`.
pub(super) async fn show_run(
    State(state): State<AppState>,
    Scoped { operator, .. }: Scoped<can::ReadRuns>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(check_run(&state, &operator, Permission::ReadRuns, &id).await?)))
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
    check_run(&state, &operator, Permission::ReviewRuns, &id).await?;
    let outcome =
        state.runs.review_as(&id, verdict, body.comment, &actor(&operator), super::caller(&extensions)).await?;
    Ok(Json(json!(outcome)))
}

/// `POST /v1/runs/{id}/approve`.
pub(super) async fn approve_run(
    State(state): State<AppState>,
    Scoped { operator, .. }: Scoped<can::ReviewRuns>,
    extensions: axum::http::Extensions,
    Path(id): Path<String>,
    body: Result<ApiJson<ReviewBody>, ApiError>,
) -> Result<Json<Value>, ApiError> {
    review(state, operator, extensions, id, Verdict::Approve, body).await
}

/// `POST /v1/runs/{id}/reject`.
pub(super) async fn reject_run(
    State(state): State<AppState>,
    Scoped { operator, .. }: Scoped<can::ReviewRuns>,
    extensions: axum::http::Extensions,
    Path(id): Path<String>,
    body: Result<ApiJson<ReviewBody>, ApiError>,
) -> Result<Json<Value>, ApiError> {
    review(state, operator, extensions, id, Verdict::Reject, body).await
}

/// `POST /v1/runs/{id}/cancel`.
pub(super) async fn cancel_run(
    State(state): State<AppState>,
    Scoped { operator, .. }: Scoped<can::SubmitRuns>,
    extensions: axum::http::Extensions,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_run(&state, &operator, Permission::SubmitRuns, &id).await?;
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
    Scoped { operator, .. }: Scoped<can::ReadRuns>,
    Path(id): Path<String>,
    query: Result<Query<LogsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid_request(e.body_text()))?;
    check_run(&state, &operator, Permission::ReadRuns, &id).await?;
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
    Scoped { operator, .. }: Scoped<can::ReadRuns>,
    Path(id): Path<String>,
) -> Result<Json<crate::joblogs::Bundle>, ApiError> {
    check_run(&state, &operator, Permission::ReadRuns, &id).await?;
    Ok(Json(state.agents.logs().bundle(&id).await.map_err(RunError::from)?))
}
