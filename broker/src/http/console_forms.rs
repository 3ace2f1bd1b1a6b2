//! The console's forms and sign-in (docs/console.md): `GET /ui/sign-in?link=…` (a one-time link
//! from `keyward console`), `GET`/`POST /ui/sign-out`, and `POST /ui/runs/{id}/review`.
//!
//! A form is a browser's state-changing request, so a caller signed in with a cookie must carry
//! the session's CSRF token in the form's hidden field ([`crate::console::CSRF_FIELD`]), checked
//! in constant time against the token derived from the session before anything is done; a caller
//! authenticated by a bearer token needs none (no other site can make a browser send one). Each
//! form answers with a redirect to the page it came from (post/redirect/get), or an error page.

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;

use super::AppState;
use super::console::{PageError, page_error};
use super::error::ApiError;
use super::extract::{Caller, CsrfProof, authenticate, authenticate_with};
use crate::access::{Operator, Permission};
use crate::console::review::{self, Reviewing};
use crate::runs::{RunState, RunView, Verdict};
use crate::sso::{secrets, session};

/// `GET /ui/sign-in` query.
#[derive(Debug, Deserialize)]
pub(super) struct SignInQuery {
    link: Option<String>,
}

/// `GET /ui/sign-in?link=kwl_…`: redeems a one-time link for a console session (cookies) and
/// goes to the runs.
pub(super) async fn sign_in(
    State(state): State<AppState>,
    parts: Parts,
    query: Result<Query<SignInQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, PageError> {
    let fail = |error| page_error(&state, "/ui/runs", error);
    let link = query.ok().and_then(|Query(q)| q.link).unwrap_or_default();
    let redeemed = state.console_sessions.redeem(&link, super::caller(&parts.extensions)).await;
    let session = redeemed.map_err(|e| {
        let error = ApiError::from(e);
        state.metrics.request_refused(error.refusal());
        fail(error)
    })?;
    let secret = session.secret.expose();
    let cookies = session::set_cookies(
        secret,
        &secrets::csrf_token(secret),
        state.console_sessions.secure_cookies,
        session.max_age,
    );
    see_other("/ui/runs", &cookies).map_err(fail)
}

/// `GET /ui/sign-out`: a page with the sign-out button.
pub(super) async fn sign_out_page(State(state): State<AppState>, parts: Parts) -> Result<Html<String>, PageError> {
    let fail = |error| page_error(&state, "/ui/sign-out", error);
    let caller = authenticate(&state, &parts.method, &parts.headers).await.map_err(fail)?;
    Ok(Html(review::sign_out(&csrf_of(&parts.headers), &super::console::who(&caller.operator)).into_string()))
}

/// A form that carries nothing but its CSRF token.
#[derive(Debug, Deserialize)]
pub(super) struct TokenOnly {
    #[serde(default)]
    pub(super) csrf: String,
}

/// `POST /ui/sign-out`: ends the browser's session (a console session or a person's) and
/// clears its cookies.
pub(super) async fn sign_out(
    State(state): State<AppState>,
    parts: Parts,
    form: Result<Form<TokenOnly>, axum::extract::rejection::FormRejection>,
) -> Result<Response, PageError> {
    let fail = |error| page_error(&state, "/ui/sign-out", error);
    let Form(form) = form.map_err(|e| fail(ApiError::invalid_request(e.body_text())))?;
    let caller = form_caller(&state, &parts, &form.csrf).await.map_err(fail)?;
    let context = super::caller(&parts.extensions);
    let secure = match (&caller.console_session, &caller.session, &state.sso) {
        (Some(id), _, _) => {
            state.console_sessions.sign_out(id, &caller.operator.name, context).await.map_err(|e| fail(e.into()))?;
            state.console_sessions.secure_cookies
        }
        (None, Some(person), Some(sso)) => {
            sso.sign_out(person, context).await.map_err(|e| fail(e.into()))?;
            sso.settings().secure_cookies
        }
        _ => return Err(fail(ApiError::invalid_request("signed in with a bearer token: there is no session to end"))),
    };
    let mut response = Html(review::signed_out().into_string()).into_response();
    for cookie in session::clear_cookies(secure) {
        let value = HeaderValue::from_str(&cookie).map_err(|e| fail(ApiError::internal(&e)))?;
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    Ok(response)
}

/// `POST /ui/runs/{id}/review`'s form.
#[derive(Debug, Deserialize)]
pub(super) struct ReviewForm {
    #[serde(default)]
    csrf: String,
    decision: String,
    #[serde(default)]
    comment: String,
}

/// `POST /ui/runs/{id}/review`: approve or reject, as the API's approve/reject do — except that
/// a run's author may not approve it here at all.
pub(super) async fn review(
    State(state): State<AppState>,
    parts: Parts,
    Path(id): Path<String>,
    form: Result<Form<ReviewForm>, axum::extract::rejection::FormRejection>,
) -> Result<Response, PageError> {
    let back = format!("/ui/runs/{id}");
    let fail = |error| page_error(&state, &back, error);
    let Form(form) = form.map_err(|e| fail(ApiError::invalid_request(e.body_text())))?;
    let operator = form_caller(&state, &parts, &form.csrf).await.map_err(fail)?.operator;
    operator.require(Permission::ReviewRuns).map_err(|e| fail(e.into()))?;
    let run = super::runs::check_run(&state, &operator, Permission::ReviewRuns, &id).await.map_err(fail)?;
    let verdict = match form.decision.as_str() {
        "approve" if is_author(&operator, &run) => {
            return Err(fail(ApiError::access_denied(
                "you submitted this run: your approval would not count; another reviewer must approve it",
            )));
        }
        "approve" => Verdict::Approve,
        "reject" => Verdict::Reject,
        _ => return Err(fail(ApiError::invalid_request("decision must be `approve` or `reject`"))),
    };
    let comment = Some(form.comment.trim().to_owned()).filter(|c| !c.is_empty());
    state
        .runs
        .review_as(&id, verdict, comment, &operator.actor(), super::caller(&parts.extensions))
        .await
        .map_err(|e| fail(e.into()))?;
    see_other(&back, &[]).map_err(fail)
}

/// The caller behind a console form, authenticated as the API authenticates, with a browser
/// session's CSRF proof taken from the form's `csrf` field; a refusal is counted in the metrics.
pub(super) async fn form_caller(state: &AppState, parts: &Parts, csrf: &str) -> Result<Caller, ApiError> {
    authenticate_with(state, &parts.method, &parts.headers, CsrfProof::Form(csrf))
        .await
        .inspect_err(|e| state.metrics.request_refused(e.refusal()))
}

/// What the run page's review form needs: whether the run waits for reviews, whether the viewer
/// may review it, is its author, or already reviewed it, and the viewer's CSRF token.
pub(super) async fn reviewing<'a>(
    state: &AppState,
    operator: &Operator,
    run: &'a RunView,
    csrf: &'a str,
) -> Result<Reviewing<'a>, ApiError> {
    let open = run.state.parse::<RunState>().is_ok_and(RunState::takes_reviews);
    let may_review = if open {
        let space = super::guard::stack_space(state, &run.stack).await?;
        super::guard::Guard::new(state, operator.clone()).await?.may(Permission::ReviewRuns, &space)
    } else {
        false
    };
    let who = operator.actor();
    let reviewed = run.reviews.iter().any(|review| review.by == who.id());
    Ok(Reviewing { run_id: &run.id, open, may_review, author: is_author(operator, run), reviewed, csrf })
}

fn is_author(operator: &Operator, run: &RunView) -> bool {
    run.triggered_by == operator.actor().id()
}

/// The CSRF token of the browser session in `headers`' cookie, for a page's forms; empty when
/// there is none (a bearer caller needs none).
pub(super) fn csrf_of(headers: &HeaderMap) -> String {
    let cookies = headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok());
    session::cookie(cookies, session::SESSION_COOKIE).map(secrets::csrf_token).unwrap_or_default()
}

/// 303 to `location`, setting `cookies`.
fn see_other(location: &str, cookies: &[String]) -> Result<Response, ApiError> {
    let mut response = StatusCode::SEE_OTHER.into_response();
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, HeaderValue::from_str(location).map_err(|e| ApiError::internal(&e))?);
    for cookie in cookies {
        headers.append(header::SET_COOKIE, HeaderValue::from_str(cookie).map_err(|e| ApiError::internal(&e))?);
    }
    Ok(response)
}
