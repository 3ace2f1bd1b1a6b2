//! The console's stack page (docs/console.md): `GET /ui/stacks/{name}` — the stack, its newest
//! runs and its state versions' metadata — for whoever may read the stack's runs (`ReadRuns` in
//! its space, as `GET /v1/stacks/{name}`); a stack of a space the caller may not view is not
//! found, exactly like one that does not exist.
//!
//! The state versions come from `Runs::state_summary`, which reads metadata rows only: the
//! sealed content is never opened for a page.

use axum::extract::{Path, State};
use axum::response::Html;

use super::AppState;
use super::console::{PageError, page_error, who};
use super::error::ApiError;
use super::extract::{Scoped, can};
use crate::access::Permission;
use crate::console::stack::{StackPage, detail};
use crate::store::RunFilter;

/// How many of the stack's newest runs the page lists.
const RUNS_SHOWN: i64 = 20;

/// `GET /ui/stacks/{name}`.
pub(super) async fn page(
    State(state): State<AppState>,
    scoped: Result<Scoped<can::ReadRuns>, ApiError>,
    Path(name): Path<String>,
) -> Result<Html<String>, PageError> {
    let path = format!("/ui/stacks/{}", keyward_proto::encoding::percent_encode(&name));
    let fail = |error| page_error(&state, &path, error);
    let Scoped { operator, .. } = scoped.map_err(fail)?;
    super::runs::check_stack(&state, &operator, Permission::ReadRuns, &name).await.map_err(fail)?;
    let stack = state.runs.stack(&name).await.map_err(|e| fail(e.into()))?;
    let filter = RunFilter::stack(Some(&name));
    let runs = super::runs::readable_runs(&state, operator.clone(), &filter, RUNS_SHOWN).await.map_err(fail)?;
    let summary = state.runs.state_summary(&name).await.map_err(|e| fail(e.into()))?;
    let view = StackPage { stack: &stack, runs: &runs, state: &summary };
    Ok(Html(detail(view, &who(&operator)).into_string()))
}
