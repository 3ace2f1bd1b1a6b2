//! The console's agents page and its forms (docs/console.md): `GET /ui/agents`, and
//! `POST /ui/agents/{id}/drain` and `POST /ui/agents/{id}/revoke` for administrators.
//!
//! The page reads each agent's current jobs in one query (every leased job), not one per agent.
//! The forms follow `console_forms`: the session's CSRF token in a hidden field, checked before
//! anything is done; then exactly the API's checks and actions (`super::agents::drain`,
//! `super::agents::revoke`: `Administer` in the agent's pool's space, an agent the caller may not
//! view is not found), audited the same way; then a redirect back to the page
//! (post/redirect/get), or an error page.

use std::collections::HashMap;

use axum::Form;
use axum::extract::{Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

use super::AppState;
use super::console::{PageError, page_error, who};
use super::console_forms::{TokenOnly, csrf_of, form_caller};
use super::error::ApiError;
use super::extract::{Scoped, can};
use super::guard::Guard;
use crate::access::{Operator, Permission};
use crate::console::agents::{CurrentJob, Listed};
use crate::store::JobRow;

/// Where the forms go back to.
const PAGE: &str = "/ui/agents";

/// `GET /ui/agents`: the agents of the pools the caller may read, with their current jobs; the
/// drain and revoke forms where the caller administers the pool.
pub(super) async fn page(
    State(state): State<AppState>,
    scoped: Result<Scoped<can::ReadRuns>, ApiError>,
    headers: HeaderMap,
) -> Result<Html<String>, PageError> {
    let fail = |error| page_error(&state, PAGE, error);
    let Scoped { operator, .. } = scoped.map_err(fail)?;
    let agents = super::agents::readable_agents(&state, operator.clone(), None).await.map_err(fail)?;
    let administered = administered_pools(&state, &operator).await.map_err(fail)?;
    let leased = state.store.leased_jobs().await.map_err(|e| fail(ApiError::store(&e)))?;
    let mut jobs = jobs_by_agent(&leased);
    let listed: Vec<Listed<'_>> = agents
        .iter()
        .map(|agent| Listed {
            agent,
            jobs: jobs.remove(agent.id.as_str()).unwrap_or_default(),
            may_administer: administered.get(&agent.pool).copied().unwrap_or(false),
        })
        .collect();
    let page = crate::console::agents::list(&listed, &csrf_of(&headers), &who(&operator));
    Ok(Html(page.into_string()))
}

/// Each pool's name, and whether `operator` administers its space.
async fn administered_pools(state: &AppState, operator: &Operator) -> Result<HashMap<String, bool>, ApiError> {
    let guard = Guard::new(state, operator.clone()).await?;
    let pools = state.agents.pools().await?;
    Ok(pools.into_iter().map(|pool| (pool.name, guard.may(Permission::Administer, &pool.space))).collect())
}

/// The leased jobs, by the agent holding each.
fn jobs_by_agent(leased: &[JobRow]) -> HashMap<&str, Vec<CurrentJob<'_>>> {
    let mut by_agent: HashMap<&str, Vec<CurrentJob<'_>>> = HashMap::new();
    for job in leased {
        if let Some(agent) = job.agent_id.as_deref() {
            let current = CurrentJob { id: &job.id, run_id: &job.run_id, phase: job.phase.as_str() };
            by_agent.entry(agent).or_default().push(current);
        }
    }
    by_agent
}

/// What a form asks for.
#[derive(Debug, Clone, Copy)]
enum Action {
    Drain,
    Revoke,
}

/// `POST /ui/agents/{id}/drain`: the agent finishes what it runs and is given nothing new.
pub(super) async fn drain(
    State(state): State<AppState>,
    parts: Parts,
    Path(id): Path<String>,
    form: Result<Form<TokenOnly>, axum::extract::rejection::FormRejection>,
) -> Result<Response, PageError> {
    act(state, parts, id, form, Action::Drain).await
}

/// `POST /ui/agents/{id}/revoke`: the agent's certificate and stream end now, and its jobs with
/// them.
pub(super) async fn revoke(
    State(state): State<AppState>,
    parts: Parts,
    Path(id): Path<String>,
    form: Result<Form<TokenOnly>, axum::extract::rejection::FormRejection>,
) -> Result<Response, PageError> {
    act(state, parts, id, form, Action::Revoke).await
}

/// The CSRF proof, the caller's role, then the API's own drain or revoke; back to the page.
async fn act(
    state: AppState,
    parts: Parts,
    id: String,
    form: Result<Form<TokenOnly>, axum::extract::rejection::FormRejection>,
    action: Action,
) -> Result<Response, PageError> {
    let fail = |error| page_error(&state, PAGE, error);
    let Form(form) = form.map_err(|e| fail(ApiError::invalid_request(e.body_text())))?;
    let operator = form_caller(&state, &parts, &form.csrf).await.map_err(fail)?.operator;
    operator.require(Permission::Administer).map_err(|e| fail(e.into()))?;
    let context = super::caller(&parts.extensions);
    match action {
        Action::Drain => super::agents::drain(&state, &operator, &id, context).await,
        Action::Revoke => super::agents::revoke(&state, &operator, &id, context).await,
    }
    .map_err(fail)?;
    let mut response = StatusCode::SEE_OTHER.into_response();
    response.headers_mut().insert(header::LOCATION, HeaderValue::from_static(PAGE));
    Ok(response)
}
