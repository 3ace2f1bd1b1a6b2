//! The web console's routes (`/ui`, docs/console.md): the same authentication, roles and spaces
//! as the API — a person's browser session, or an API token — with every answer an HTML page
//! (errors too) under a strict Content-Security-Policy. Rendering is `crate::console`'s.

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use super::AppState;
use super::console_forms;
use super::error::ApiError;
use super::extract::{Authorized, Scoped, can};
use crate::access::{AuthMethod, Operator, Permission};
use crate::console::{self, layout};

/// The most runs the list shows.
pub(super) const LIST_LIMIT: i64 = 200;

/// The console's routes, each answer with the console's security headers.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/runs") }))
        .route("/ui/runs", get(runs))
        .route("/ui/runs/events", get(super::console_live::events))
        .route("/ui/runs/{id}", get(run))
        .route("/ui/runs/{id}/review", post(console_forms::review))
        .route(console::SIGN_IN_PATH, get(console_forms::sign_in))
        .route("/ui/sign-out", get(console_forms::sign_out_page).post(console_forms::sign_out))
        .route("/ui/runs/{id}/events", get(super::console_run::events))
        .route("/ui/stacks", get(stacks))
        .route("/ui/stacks/{name}", get(super::console_stacks::page))
        .route("/ui/agents", get(super::console_agents::page))
        .route("/ui/agents/{id}/drain", post(super::console_agents::drain))
        .route("/ui/agents/{id}/revoke", post(super::console_agents::revoke))
        .route("/ui/audit", get(audit).post(audit_token))
        .route("/ui/policies", get(policies))
        .route(console::STYLESHEET_PATH, get(stylesheet))
        .route(console::ICON_PATH, get(icon))
        .route(console::VERIFY_SCRIPT_PATH, get(verify_script))
        .route(console::LIVE_SCRIPT_PATH, get(live_script))
        .layer(axum::middleware::from_fn(security_headers))
}

/// What an HTML page answers when it cannot be shown: the API's refusal, as a page.
pub(super) struct PageError {
    error: ApiError,
    sign_in: Option<String>,
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let status = self.error.status();
        let title = match status {
            StatusCode::UNAUTHORIZED => layout::UNAUTHENTICATED,
            StatusCode::FORBIDDEN => "Not allowed",
            StatusCode::NOT_FOUND => "Not found",
            StatusCode::BAD_REQUEST => "Not understood",
            StatusCode::CONFLICT => "Not possible now",
            _ => "Something went wrong",
        };
        (status, Html(layout::error(title, self.error.description(), self.sign_in.as_deref()).into_string()))
            .into_response()
    }
}

/// `error`, as a page; a caller who is not signed in is pointed at sign-in (when people can
/// sign in) and brought back to `path` after.
pub(super) fn page_error(state: &AppState, path: &str, error: ApiError) -> PageError {
    let sign_in = (error.status() == StatusCode::UNAUTHORIZED && state.sso.is_some())
        .then(|| format!("/auth/login?return_to={}", keyward_proto::encoding::percent_encode(path)));
    PageError { error, sign_in }
}

/// `GET /ui/runs?stack=&state=&kind=&pull_request=&submitter=`: the newest runs the caller may
/// read, filtered.
async fn runs(
    State(state): State<AppState>,
    scoped: Result<Scoped<can::ReadRuns>, ApiError>,
    query: Result<Query<super::runs::ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Html<String>, PageError> {
    let fail = |error| page_error(&state, "/ui/runs", error);
    let Scoped { operator, .. } = scoped.map_err(fail)?;
    let Query(query) = query.map_err(|e| fail(ApiError::invalid_request(e.body_text())))?;
    let filter = query.filter().map_err(fail)?;
    let runs = super::runs::readable_runs(&state, operator.clone(), &filter, LIST_LIMIT).await.map_err(fail)?;
    Ok(Html(console::runs::list(&runs, &filter, &who(&operator)).into_string()))
}

/// `GET /ui/runs/{id}`: one run, if the caller may read its stack's runs (else not found), with
/// its credentials per job and its log (followed live by `/ui/runs/{id}/events` while it runs).
async fn run(
    State(state): State<AppState>,
    scoped: Result<Scoped<can::ReadRuns>, ApiError>,
    headers: axum::http::HeaderMap,
    Path(id): Path<String>,
) -> Result<Html<String>, PageError> {
    let path = format!("/ui/runs/{id}");
    let fail = |error| page_error(&state, &path, error);
    let Scoped { operator, .. } = scoped.map_err(fail)?;
    let run = super::runs::check_run(&state, &operator, Permission::ReadRuns, &id).await.map_err(fail)?;
    let changes = state.runs.plan_changes(&id).await.map_err(|e| fail(e.into()))?;
    let csrf = console_forms::csrf_of(&headers);
    let reviewing = console_forms::reviewing(&state, &operator, &run, &csrf).await.map_err(fail)?;
    let review = console::review::form(&reviewing);
    let evidence = super::console_run::evidence(&state, &run).await.map_err(fail)?;
    let page = console::runs::detail(&run, changes.as_ref(), review, evidence, &who(&operator));
    Ok(Html(page.into_string()))
}

/// `GET /ui/stacks`: the stacks the caller may read, drifted first.
async fn stacks(
    State(state): State<AppState>,
    scoped: Result<Scoped<can::ReadRuns>, ApiError>,
) -> Result<Html<String>, PageError> {
    let fail = |error| page_error(&state, "/ui/stacks", error);
    let Scoped { operator, .. } = scoped.map_err(fail)?;
    let stacks = super::runs::readable_stacks(&state, operator.clone()).await.map_err(fail)?;
    Ok(Html(console::stacks::list(&stacks, &who(&operator)).into_string()))
}

/// `GET /ui/audit?key=K`: the trace of `K`, for callers who may read the audit log. A key that
/// is a whole token is traced by its `jti`, and only the `jti` is shown.
async fn audit(
    State(state): State<AppState>,
    authorized: Result<Authorized<can::ReadAudit>, ApiError>,
    headers: axum::http::HeaderMap,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Html<String>, PageError> {
    let key = query.ok().and_then(|Query(q)| q.key).map(|k| k.trim().to_owned()).filter(|k| !k.is_empty());
    let fail = |error| page_error(&state, "/ui/audit", error);
    let Authorized { operator, .. } = authorized.map_err(fail)?;
    let key = key.map(|key| console::audit::jti_of_token(&key).unwrap_or(key));
    audit_page(&state, &operator, key.as_deref(), &console_forms::csrf_of(&headers)).await.map_err(fail)
}

/// `POST /ui/audit`'s form: a whole token, in the body.
#[derive(Debug, Deserialize)]
struct TokenSearch {
    #[serde(default)]
    csrf: String,
    token: String,
}

/// `POST /ui/audit`: the trace of a whole token's `jti` (the token stays out of URLs).
async fn audit_token(
    State(state): State<AppState>,
    parts: axum::http::request::Parts,
    form: Result<axum::Form<TokenSearch>, axum::extract::rejection::FormRejection>,
) -> Result<Html<String>, PageError> {
    let fail = |error| page_error(&state, "/ui/audit", error);
    let axum::Form(form) = form.map_err(|e| fail(ApiError::invalid_request(e.body_text())))?;
    let operator = console_forms::form_caller(&state, &parts, &form.csrf).await.map_err(fail)?.operator;
    operator.require_in(Permission::ReadAudit, &[crate::roles::ROOT.to_owned()]).map_err(|e| fail(e.into()))?;
    let jti = console::audit::jti_of_token(&form.token)
        .ok_or_else(|| fail(ApiError::invalid_request("that is not a token: a JWT has three parts and a `jti`")))?;
    audit_page(&state, &operator, Some(&jti), &console_forms::csrf_of(&parts.headers)).await.map_err(fail)
}

/// The audit page: the latest signed checkpoint, and the trace of `key` with each entry's
/// inclusion proof when a key is given.
async fn audit_page(
    state: &AppState,
    operator: &Operator,
    key: Option<&str>,
    csrf: &str,
) -> Result<Html<String>, ApiError> {
    let latest = state.store.latest_checkpoint().await.map_err(|e| ApiError::store(&e))?;
    let root = latest.as_ref().map(|row| keyward_proto::encoding::hex(&row.root));
    let checkpoint = latest.as_ref().zip(root.as_deref()).map(|(row, root)| console::audit_proofs::Checkpoint {
        size: row.size,
        root,
        note: &row.note,
        at: row.at,
    });
    let Some(key) = key else {
        return Ok(Html(console::audit::search(checkpoint, None, csrf, &who(operator)).into_string()));
    };
    if key.len() > MAX_KEY_LEN {
        return Err(ApiError::invalid_request(format!("a key is at most {MAX_KEY_LEN} characters")));
    }
    let traced = super::audit::trace_of(state, key).await?;
    let seqs: Vec<u64> = traced.stored.iter().map(|e| e.seq).collect();
    let proofs = super::audit::inclusions(state, &seqs, latest.as_ref().map(|row| row.size), traced.size).await?;
    let proved: Vec<console::audit_proofs::Proved> = traced
        .stored
        .iter()
        .zip(proofs)
        .map(|(entry, (tree_size, inclusion))| console::audit_proofs::Proved {
            seq: entry.seq,
            kind: entry.kind.clone(),
            body: entry.body.clone(),
            leaf_hash: keyward_proto::encoding::hex(&inclusion.leaf),
            tree_size,
            proof: inclusion.proof.iter().map(|h| keyward_proto::encoding::hex(h)).collect(),
        })
        .collect();
    let trace =
        console::audit::Trace { key, lines: &traced.lines, size: traced.size, root: &traced.root, proved: &proved };
    Ok(Html(console::audit::search(checkpoint, Some(trace), csrf, &who(operator)).into_string()))
}

/// `GET /ui/audit` query.
#[derive(Debug, Deserialize)]
struct AuditQuery {
    key: Option<String>,
}

/// The longest key searched for (an access key ID is 20 characters, a run ID 36).
const MAX_KEY_LEN: usize = 256;

/// The most decisions (and, apart, denials) the policies page lists.
const DECISIONS_SHOWN: u64 = 50;

/// `GET /ui/policies`: the policy set in force, its last load, and its recent decisions; for
/// callers who may read `GET /v1/policies` (`Administer` on `root`).
async fn policies(
    State(state): State<AppState>,
    authorized: Result<Authorized<can::Administer>, ApiError>,
) -> Result<Html<String>, PageError> {
    use console::policies::{DECISION_KINDS, DENIAL_KINDS, LOAD_KINDS, Loaded, Policies};
    let fail = |error| page_error(&state, "/ui/policies", error);
    let Authorized { operator, .. } = authorized.map_err(fail)?;
    let set = state.policies.as_ref().map(|engine| (engine.dir().display().to_string(), engine.current()));
    let loaded = set.as_ref().map(|(dir, set)| Loaded {
        dir,
        digest: set.digest(),
        files: set.files(),
        packages: set.packages(),
    });
    let last_load = super::audit::recent_of_kinds(&state, &LOAD_KINDS, 1).await.map_err(fail)?;
    let denials = super::audit::recent_of_kinds(&state, &DENIAL_KINDS, DECISIONS_SHOWN).await.map_err(fail)?;
    let decisions = super::audit::recent_of_kinds(&state, &DECISION_KINDS, DECISIONS_SHOWN).await.map_err(fail)?;
    let view = Policies { loaded, last_load: last_load.first(), denials: &denials, decisions: &decisions };
    Ok(Html(console::policies::list(view, &who(&operator)).into_string()))
}

/// `GET /ui/assets/verify.js`.
async fn verify_script() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], console::VERIFY_SCRIPT)
}

/// `GET /ui/assets/console.css`.
async fn stylesheet() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], console::STYLESHEET)
}

/// `GET /ui/assets/favicon.svg`.
async fn icon() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "image/svg+xml")], console::ICON)
}

/// `GET /ui/assets/live.js`.
async fn live_script() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], console::LIVE_SCRIPT)
}

/// Who is signed in, as the header shows it: a person's name, or the token's.
pub(super) fn who(operator: &Operator) -> String {
    match &operator.via {
        AuthMethod::Session { person, .. } | AuthMethod::CliToken { person, .. } => person.name.clone(),
        AuthMethod::ApiToken => format!("token {}", operator.name),
    }
}

/// The console's security headers on every answer: its CSP, no framing, no sniffing, no
/// referrer, and nothing cached (pages hold what only the caller may see).
async fn security_headers(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(console::CONTENT_SECURITY_POLICY));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
