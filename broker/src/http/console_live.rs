//! `GET /ui/runs/events`: the runs list's live updates (docs/console.md). The stream sends a
//! `changed` event (no data) whenever the list the caller is looking at — the same filter, the
//! same spaces, the same limit — would show other runs or other states; the page's script then
//! fetches the list again. Nothing of runs the caller may not read moves it, so it tells no
//! one about another space's activity.
//!
//! Like the run page's stream (`console_run`), it wakes on this replica's run changes and looks
//! every [`FALLBACK_POLL`] for other replicas', reads at most every [`MIN_GAP`], ends after
//! [`MAX_STREAM`] (the browser reconnects and is checked again), and shares the process's
//! limit of open streams.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use tokio::sync::{SemaphorePermit, mpsc};
use tokio_stream::Stream;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;

use super::AppState;
use super::console::{LIST_LIMIT, PageError, page_error};
use super::console_run::LIVE_STREAMS;
use super::error::ApiError;
use super::extract::{Scoped, can};
use crate::access::Operator;
use crate::store::RunFilter;

/// How often the stream looks even without a signal (other replicas raise none here).
const FALLBACK_POLL: Duration = Duration::from_secs(5);

/// The least time between two reads of one stream, however often runs change.
const MIN_GAP: Duration = Duration::from_secs(1);

/// How long one stream lasts before the browser must reconnect (and be checked again).
const MAX_STREAM: Duration = Duration::from_secs(600);

/// `GET /ui/runs/events?<the list's filter>`: `changed` whenever that list changes.
pub(super) async fn events(
    State(state): State<AppState>,
    scoped: Result<Scoped<can::ReadRuns>, ApiError>,
    query: Result<Query<super::runs::ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, PageError> {
    let fail = |error| page_error(&state, "/ui/runs", error);
    let Scoped { operator, .. } = scoped.map_err(fail)?;
    let Query(query) = query.map_err(|e| fail(ApiError::invalid_request(e.body_text())))?;
    let filter = query.filter().map_err(fail)?;
    let first = shown(&state, &operator, &filter).await.map_err(fail)?;
    let permit = LIVE_STREAMS.try_acquire().map_err(|_| {
        fail(ApiError::unavailable("too many live pages are open; reload the page to see what changed"))
    })?;
    let (sender, receiver) = mpsc::channel(4);
    tokio::spawn(watch(state, operator, filter, first, sender, permit));
    Ok(Sse::new(ReceiverStream::new(receiver).map(Ok)).keep_alive(KeepAlive::default()))
}

/// What the list shows that can change: each run's ID and state, newest first.
async fn shown(state: &AppState, operator: &Operator, filter: &RunFilter) -> Result<Vec<(String, String)>, ApiError> {
    let runs = super::runs::readable_runs(state, operator.clone(), filter, LIST_LIMIT).await?;
    Ok(runs.into_iter().map(|run| (run.id, run.state)).collect())
}

/// Sends `changed` each time the list differs from the one last seen, until the reader goes or
/// [`MAX_STREAM`] passes; `_permit` is its place among the open streams.
async fn watch(
    state: AppState,
    operator: Operator,
    filter: RunFilter,
    mut seen: Vec<(String, String)>,
    sender: mpsc::Sender<Event>,
    _permit: SemaphorePermit<'static>,
) {
    let mut revisions = state.runs.signals().run_revisions();
    let deadline = tokio::time::Instant::now() + MAX_STREAM;
    loop {
        tokio::select! {
            _ = revisions.changed() => {}
            () = tokio::time::sleep(FALLBACK_POLL) => {}
            () = tokio::time::sleep_until(deadline) => return,
            () = sender.closed() => return,
        }
        tokio::time::sleep(MIN_GAP).await;
        // Marked before reading: a change from here on wakes the next wait.
        revisions.mark_unchanged();
        let now = match shown(&state, &operator, &filter).await {
            Ok(now) => now,
            Err(error) => return tracing::warn!(error = error.description(), "a live runs list ended"),
        };
        if now != seen {
            if sender.send(Event::default().event("changed").data("")).await.is_err() {
                return;
            }
            seen = now;
        }
    }
}
