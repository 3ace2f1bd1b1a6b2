//! Liveness, readiness and metrics for whoever runs the broker.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use crate::metrics::{Sampled, WorkCounts};

pub(super) async fn healthz() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

/// Ready when the database answers and the audit log can commit, within the timeout. A broker
/// that cannot record what it issues must not receive traffic. After a failed audit commit,
/// readiness itself probes the log (an empty append writes `audit_head`), so the broker turns
/// ready again by itself once writes work, even with no other traffic.
pub(super) async fn readyz(State(state): State<AppState>) -> Response {
    match ready(&state).await {
        Ok(()) => Json(json!({ "status": "ready" })).into_response(),
        Err(reason) => {
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "not ready", "reason": reason }))).into_response()
        }
    }
}

async fn ready(state: &AppState) -> Result<(), &'static str> {
    if !state.audit.stats().healthy() {
        match tokio::time::timeout(state.readiness_timeout, state.audit.probe()).await {
            Ok(Ok(())) => tracing::info!("readiness: the audit log commits again"),
            Ok(Err(error)) => {
                tracing::warn!(%error, "readiness: the audit log cannot commit");
                return Err("audit log cannot be written");
            }
            Err(_) => return Err("audit log write timed out"),
        }
    }
    match tokio::time::timeout(state.readiness_timeout, state.store.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => {
            tracing::warn!(%error, "readiness: database check failed");
            Err("database unavailable")
        }
        Err(_) => {
            tracing::warn!("readiness: database check timed out");
            Err("database timed out")
        }
    }
}

pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    // Side by side, so a database that does not answer costs one timeout, not one per query.
    let (ready, stacks, work) = tokio::join!(ready(&state), stack_drift(&state), work_counts(&state));
    let ready = ready.is_ok();
    let sampled = Sampled {
        published_keys: state.keys.published_keys(),
        audit: state.audit.stats(),
        sinks: &state.sinks,
        ready,
        stacks,
        work,
        agents_connected: state.agents.hub().connected(),
        policies: state.policies.as_deref(),
    };
    let body = state.metrics.render(&sampled);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

/// Runs, jobs and agents by state: three cheap queries, together bounded by the readiness
/// timeout; `None` (and no such series) when the database does not answer in time.
async fn work_counts(state: &AppState) -> Option<WorkCounts> {
    let store = &state.store;
    let counted = tokio::time::timeout(state.readiness_timeout, async {
        Ok::<_, crate::store::StoreError>((
            store.run_states().await?,
            store.active_job_states().await?,
            store.agent_states().await?,
        ))
    })
    .await;
    let (runs, jobs, agents) = match counted {
        Ok(Ok(counted)) => counted,
        Ok(Err(error)) => {
            tracing::warn!(%error, "metrics: could not count runs, jobs and agents by state");
            return None;
        }
        Err(_) => return None,
    };
    let unsigned = |rows: Vec<(String, i64)>| -> Vec<(String, u64)> {
        rows.into_iter().map(|(state, n)| (state, u64::try_from(n).unwrap_or(0))).collect()
    };
    Some(WorkCounts { runs: unsigned(runs), jobs: unsigned(jobs), agents: unsigned(agents) })
}

/// How many stacks are in each drift state, if the database answers in time.
async fn stack_drift(state: &AppState) -> Option<crate::metrics::StackDrift> {
    let states = match tokio::time::timeout(state.readiness_timeout, state.store.drift_states()).await {
        Ok(Ok(states)) => states,
        Ok(Err(error)) => {
            tracing::warn!(%error, "metrics: could not count stacks by drift state");
            return None;
        }
        Err(_) => return None,
    };
    let count =
        |name: &str| states.iter().find(|(state, _)| state == name).map_or(0, |(_, n)| u64::try_from(*n).unwrap_or(0));
    Some(crate::metrics::StackDrift { drifted: count("drifted"), failed: count("failed"), in_sync: count("in_sync") })
}

pub(super) async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}
