//! The run page's evidence (docs/console.md): its credentials per job and its log, read for the
//! page, and `GET /ui/runs/{id}/events`, the server-sent events that carry a run in progress's
//! new log output (`log`) and state (`state`) to the page's script until the run settles.
//!
//! Both are for whoever may read the run (`ReadRuns` in its stack's space; else not found, as
//! the page). The stream wakes on this replica's signals — a chunk stored, a run committed — and
//! looks every [`FALLBACK_POLL`] too, for what other replicas stored; it reads at most every
//! [`MIN_GAP`], and ends after [`MAX_STREAM`] (the browser reconnects from the last chunk it
//! got, and the caller's access is checked again). At most [`MAX_LIVE_STREAMS`] are open at once:
//! past that, a page is refused its events (it still shows everything on reload).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, SemaphorePermit, mpsc};
use tokio_stream::Stream;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;

use super::AppState;
use super::console::{PageError, page_error};
use super::error::ApiError;
use super::extract::{Scoped, can};
use crate::access::Permission;
use crate::audit::Entry;
use crate::audit::run_evidence::{self, RunEvidence};
use crate::console::run_evidence::{RunLog, credentials, log, observed, timeline};
use crate::runs::{RunState, RunView};

/// The most log chunks the page shows; `keyward run logs` prints the rest.
const MAX_PAGE_CHUNKS: i64 = 2000;

/// Chunks read at once by the stream.
const STREAM_BATCH: i64 = 500;

/// How often the stream looks even without a signal (other replicas raise none here).
const FALLBACK_POLL: Duration = Duration::from_secs(2);

/// The least time between two reads of one stream, however often signals fire.
const MIN_GAP: Duration = Duration::from_millis(200);

/// How long one stream lasts before the browser must reconnect (and be checked again).
const MAX_STREAM: Duration = Duration::from_secs(600);

/// The most event streams open at once in this process.
const MAX_LIVE_STREAMS: usize = 256;

/// The open event streams' permits.
pub(super) static LIVE_STREAMS: Semaphore = Semaphore::const_new(MAX_LIVE_STREAMS);

/// The credentials and log sections of `run`'s page.
pub(super) async fn evidence(state: &AppState, run: &RunView) -> Result<Markup, ApiError> {
    let evidence = run_evidence(state, &run.id).await?;
    let mut chunks =
        state.agents.logs().page(&run.id, 0, MAX_PAGE_CHUNKS + 1).await.map_err(|e| ApiError::store(&e))?;
    let truncated = chunks.len() > usize::try_from(MAX_PAGE_CHUNKS).unwrap_or(usize::MAX);
    chunks.truncate(usize::try_from(MAX_PAGE_CHUNKS).unwrap_or(usize::MAX));
    let shown = RunLog { run_id: &run.id, chunks: &chunks, truncated, live: !settled(run) };
    Ok(html! {
        (observed(evidence.observed.as_ref()))
        (timeline(&evidence.timeline))
        (credentials(&run.jobs, &evidence))
        (log(&run.jobs, shown, &evidence))
    })
}

/// What the audit log holds about run `id`'s jobs.
async fn run_evidence(state: &AppState, id: &str) -> Result<RunEvidence, ApiError> {
    let mut stored = state.store.audit_entries_for(&[format!("run:{id}")]).await.map_err(|e| ApiError::store(&e))?;
    stored.sort_by_key(|e| e.seq);
    let entries: Vec<Entry> = stored
        .iter()
        .filter_map(|e| {
            serde_json::from_str(&e.body)
                .inspect_err(|error| tracing::warn!(seq = e.seq, %error, "an audit entry does not parse"))
                .ok()
        })
        .collect();
    Ok(run_evidence::evidence(&entries))
}

/// Whether `run` will change no more without people (final, or waiting for reviews).
fn settled(run: &RunView) -> bool {
    run.state.parse::<RunState>().is_ok_and(RunState::is_settled)
}

/// `GET /ui/runs/{id}/events` query: the cursor after the last chunk the page shows.
#[derive(Debug, Deserialize)]
pub(super) struct EventsQuery {
    after: Option<i64>,
}

/// `GET /ui/runs/{id}/events[?after=CURSOR]`: `log` events (`id:` the chunk's cursor, data
/// `{"job", "stream", "text"}`) from after `CURSOR` — or after the `Last-Event-ID` a reconnecting
/// browser sends — and `state` events (`{"state", "detail", "settled", "jobs"}`) on every change;
/// the stream ends once the run has settled and all of its log was sent.
pub(super) async fn events(
    State(state): State<AppState>,
    scoped: Result<Scoped<can::ReadRuns>, ApiError>,
    Path(id): Path<String>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, PageError> {
    let path = format!("/ui/runs/{id}");
    let fail = |error| page_error(&state, &path, error);
    let Scoped { operator, .. } = scoped.map_err(fail)?;
    let run = super::runs::check_run(&state, &operator, Permission::ReadRuns, &id).await.map_err(fail)?;
    let resumed = headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<i64>().ok());
    let cursor = resumed.or_else(|| query.ok().and_then(|Query(q)| q.after)).unwrap_or(0).max(0);
    let permit = LIVE_STREAMS.try_acquire().map_err(|_| {
        fail(ApiError::unavailable("too many live pages are open; reload the page to see what changed"))
    })?;
    let (sender, receiver) = mpsc::channel(16);
    tokio::spawn(follow(state, run.id, cursor, sender, permit));
    Ok(Sse::new(ReceiverStream::new(receiver).map(Ok)).keep_alive(KeepAlive::default()))
}

/// Sends run `id`'s chunks after `cursor` and its state changes to `sender` until the run
/// settles, the reader goes, or [`MAX_STREAM`] passes; `_permit` is its place among the
/// [`MAX_LIVE_STREAMS`], given back when it ends.
async fn follow(
    state: AppState,
    id: String,
    mut cursor: i64,
    sender: mpsc::Sender<Event>,
    _permit: SemaphorePermit<'static>,
) {
    let mut arrivals = state.agents.logs().arrivals();
    let mut revisions = state.runs.signals().run_revisions();
    let deadline = tokio::time::Instant::now() + MAX_STREAM;
    let mut sent: Option<Value> = None;
    loop {
        // Marked before reading: a change from here on wakes the wait below.
        arrivals.mark_unchanged();
        revisions.mark_unchanged();
        // The run before its log: once it has settled, every chunk of it is stored (a job's log
        // is sealed when the job ends).
        let run = match state.runs.run(&id).await {
            Ok(run) => run,
            Err(error) => return tracing::warn!(run_id = %id, %error, "a live run stream ended: cannot read the run"),
        };
        match send_chunks(&state, &id, &mut cursor, &sender).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(error) => return tracing::warn!(run_id = %id, %error, "a live run stream ended: cannot read the log"),
        }
        let now = state_json(&run);
        if sent.as_ref() != Some(&now) {
            if sender.send(Event::default().event("state").data(now.to_string())).await.is_err() {
                return;
            }
            sent = Some(now);
        }
        if settled(&run) {
            return;
        }
        tokio::select! {
            _ = arrivals.changed() => {}
            _ = revisions.changed() => {}
            () = tokio::time::sleep(FALLBACK_POLL) => {}
            () = tokio::time::sleep_until(deadline) => return,
            () = sender.closed() => return,
        }
        tokio::time::sleep(MIN_GAP).await;
    }
}

/// Sends every chunk after `cursor`, moving it; `false` once the reader has gone.
async fn send_chunks(
    state: &AppState,
    id: &str,
    cursor: &mut i64,
    sender: &mpsc::Sender<Event>,
) -> Result<bool, crate::store::StoreError> {
    loop {
        let chunks = state.agents.logs().page(id, *cursor, STREAM_BATCH).await?;
        for chunk in &chunks {
            // JSON: the text's newlines and carriage returns travel escaped.
            let data = json!({ "job": chunk.job_id, "stream": chunk.stream, "text": chunk.text }).to_string();
            if sender.send(Event::default().event("log").id(chunk.id.to_string()).data(data)).await.is_err() {
                return Ok(false);
            }
            *cursor = chunk.id;
        }
        if chunks.len() < usize::try_from(STREAM_BATCH).unwrap_or(usize::MAX) {
            return Ok(true);
        }
    }
}

/// A `state` event's data.
fn state_json(run: &RunView) -> Value {
    let jobs: Vec<Value> =
        run.jobs.iter().map(|j| json!({ "id": j.id, "phase": j.phase.as_str(), "state": j.state })).collect();
    json!({ "state": run.state, "detail": run.detail, "settled": settled(run), "jobs": jobs })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_events_data_is_one_line_of_json_whatever_the_text() {
        let data = json!({ "job": "j", "stream": "stdout", "text": "a\r\nb\n<script>" }).to_string();
        // A newline or carriage return would end the SSE field: JSON holds neither.
        assert!(!data.contains('\n') && !data.contains('\r'), "{data}");
    }
}
