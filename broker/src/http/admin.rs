//! Operator endpoints: mint a run token, manage API tokens, list and rotate signing keys.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, Authorized, Scoped, can};
use super::guard::Guard;
use crate::access::{ApiScope, Permission};
use crate::keys::KeyRingError;
use crate::roles::{ROOT, Role, UnknownRole};
use crate::runs::reviews::RecordedRun;
use crate::tokens::MintRequest;
use keyward_proto::claims::RunChain;

/// `POST /v1/run-tokens` body. Approvals are not the caller's to say: `approved_by` is accepted
/// only to refuse it with a reason (see [`run_context`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MintBody {
    stack: String,
    #[serde(default)]
    stack_id: Option<String>,
    run_id: String,
    phase: String,
    audience: String,
    #[serde(default)]
    ttl_seconds: Option<u64>,
    #[serde(default)]
    repository: Option<String>,
    #[serde(default)]
    commit_sha: Option<String>,
    #[serde(default, rename = "ref")]
    git_ref: Option<String>,
    #[serde(default)]
    pull_request: Option<u64>,
    #[serde(default)]
    ticket: Option<String>,
    #[serde(default)]
    triggered_by: Option<String>,
    #[serde(default)]
    approved_by: Option<Vec<String>>,
    #[serde(default)]
    pool: Option<String>,
    #[serde(default)]
    agent_id: Option<String>,
}

/// The run context of a token minted on request, and whose word it rests on (`asserted_by`).
///
/// Approvals are the reviews the broker recorded, so they cannot be asserted. For a run the broker
/// recorded, every fact (ref and counted approvals included) comes from the record and the body
/// may only repeat it; for any other run ID the facts — the ref too — are the caller's word, and
/// the token says whose (`asserted_by`), so policies can tell them from a tracked job's.
fn run_context(body: MintBody, recorded: Option<RecordedRun>, operator: &str) -> Result<MintRequest, ApiError> {
    if body.approved_by.is_some_and(|a| !a.is_empty()) {
        return Err(ApiError::invalid_request(
            "`approved_by` cannot be asserted: approvals are the reviews the broker recorded for the run \
             (`keyward run approve`), and a token minted for a recorded run carries the ones that count",
        ));
    }
    let phase = body
        .phase
        .parse()
        .map_err(|e: keyward_proto::claims::UnknownPhase| ApiError::invalid_request(e.to_string()))?;
    let run = RunChain {
        repository: body.repository.clone(),
        commit_sha: body.commit_sha.clone(),
        git_ref: body.git_ref.clone(),
        pull_request: body.pull_request,
        ticket: body.ticket.clone(),
        triggered_by: body.triggered_by.clone(),
        asserted_by: Some(operator.to_owned()),
        ..RunChain::new(
            body.run_id.clone(),
            body.stack_id.clone().unwrap_or_else(|| body.stack.clone()),
            body.stack.clone(),
            phase,
        )
    };
    let mut request = MintRequest {
        ttl: body.ttl_seconds.map(Duration::from_secs),
        pool: body.pool,
        agent_id: body.agent_id,
        ..MintRequest::new(run, body.audience)
    };
    if let Some(run) = recorded {
        let id = &body.run_id;
        let same = |field: &str, given: Option<String>, recorded: Option<&str>| match given {
            Some(given) if Some(given.as_str()) != recorded => Err(ApiError::invalid_request(format!(
                "`{field}` {given:?} differs from what run {id} recorded ({}); leave it out to use the record",
                recorded.unwrap_or("nothing")
            ))),
            _ => Ok(()),
        };
        same("stack", Some(body.stack), Some(&run.stack))?;
        same("stack_id", body.stack_id, Some(&run.stack))?;
        same("repository", body.repository, Some(&run.repository))?;
        same("commit_sha", body.commit_sha, Some(&run.commit_sha))?;
        same("ticket", body.ticket, run.ticket.as_deref())?;
        same("ref", body.git_ref, run.git_ref.as_deref())?;
        same("triggered_by", body.triggered_by, Some(&run.triggered_by))?;
        let recorded_pr = run.pull_request.map(|n| n.to_string());
        same("pull_request", body.pull_request.map(|n| n.to_string()), recorded_pr.as_deref())?;
        let chain = &mut request.run;
        chain.repository = Some(run.repository);
        chain.commit_sha = Some(run.commit_sha);
        chain.git_ref = run.git_ref;
        chain.pull_request = run.pull_request;
        chain.ticket = run.ticket;
        chain.pull_request_source = run.pull_request_source;
        chain.triggered_by = Some(run.triggered_by);
        chain.approved_by = run.approved_by;
    }
    Ok(request)
}

#[derive(Serialize)]
struct Minted<'a> {
    token: &'a str,
    token_type: &'static str,
    jti: &'a str,
    kid: &'a str,
    expires_at: i64,
    claims: &'a keyward_proto::claims::RunClaims,
}

pub(super) async fn mint_run_token(
    State(state): State<AppState>,
    Authorized { operator, .. }: Authorized<can::Administer>,
    extensions: axum::http::Extensions,
    body: Result<ApiJson<MintBody>, ApiError>,
) -> Result<Response, ApiError> {
    let result = async {
        let ApiJson(body) = body?;
        let recorded = state.runs.recorded(&body.run_id).await?;
        let request = run_context(body, recorded, &operator.name)?;
        let context = crate::audit::Context { actor: Some(operator.name.clone()), ..super::caller(&extensions) };
        Ok::<_, ApiError>(crate::issuance::issue(&state.minter, &state.audit, request, context).await?)
    }
    .await;
    match result {
        Ok(minted) => {
            state.metrics.token_issued(minted.algorithm);
            let body = Minted {
                token: minted.token.expose(),
                token_type: "urn:ietf:params:oauth:token-type:jwt",
                jti: &minted.claims.jti,
                kid: &minted.kid,
                expires_at: minted.claims.exp,
                claims: &minted.claims,
            };
            Ok((StatusCode::CREATED, [(axum::http::header::CACHE_CONTROL, "no-store")], Json(body)).into_response())
        }
        Err(error) => {
            state.metrics.request_refused(error.refusal());
            Err(error)
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateApiTokenBody {
    name: String,
    /// The old way: a scope, which is its role on `root`.
    #[serde(default)]
    scope: Option<String>,
    /// The token's space (default `root`), with `role`.
    #[serde(default)]
    space: Option<String>,
    #[serde(default)]
    role: Option<String>,
}

impl CreateApiTokenBody {
    /// The space and role asked for: a `role` (in `space`, default `root`), or a `scope`.
    fn grant(&self) -> Result<(String, Role), ApiError> {
        let space = self.space.clone().unwrap_or_else(|| ROOT.to_owned());
        match (&self.scope, &self.role) {
            (Some(scope), None) if self.space.is_none() => Ok((space, scope.parse::<ApiScope>()?.role())),
            (None, Some(role)) => {
                Ok((space, role.parse().map_err(|e: UnknownRole| ApiError::invalid_request(e.to_string()))?))
            }
            _ => Err(ApiError::invalid_request(
                "name a `role` (and a `space`, default root), or an old `scope`; not both",
            )),
        }
    }
}

/// `POST /v1/api-tokens`: needs `admin` in the token's space.
pub(super) async fn create_api_token(
    State(state): State<AppState>,
    extensions: axum::http::Extensions,
    Scoped { operator, .. }: Scoped<can::Administer>,
    body: Result<ApiJson<CreateApiTokenBody>, ApiError>,
) -> Result<Response, ApiError> {
    let ApiJson(body) = body?;
    let (space, role) = body.grant()?;
    Guard::new(&state, operator.clone()).await?.require_to_create(Permission::Administer, &space)?;
    let caller = super::caller(&extensions);
    let secret = state.access.create_recorded(&state.audit, &body.name, (&space, role), &operator.name, caller).await?;
    let scope = ApiScope::of_role(role);
    let response = json!({ "name": body.name, "space": space, "role": role, "scope": scope, "token": secret.expose() });
    Ok((StatusCode::CREATED, [(axum::http::header::CACHE_CONTROL, "no-store")], Json(response)).into_response())
}

/// A token's space and role: its own, or (made before spaces) its scope's role on `root`.
fn token_grant(token: &crate::store::ApiTokenRow) -> (String, Option<Role>) {
    match (&token.space, &token.role) {
        (Some(space), Some(role)) => (space.clone(), role.parse().ok()),
        _ => (ROOT.to_owned(), token.scope.parse::<ApiScope>().ok().map(ApiScope::role)),
    }
}

/// `GET /v1/api-tokens`: the tokens of the spaces the caller administers.
pub(super) async fn list_api_tokens(
    State(state): State<AppState>,
    Scoped { operator, .. }: Scoped<can::Administer>,
) -> Result<Response, ApiError> {
    let guard = Guard::new(&state, operator).await?;
    let tokens: Vec<_> = state
        .access
        .list()
        .await?
        .into_iter()
        .filter_map(|t| {
            let (space, role) = token_grant(&t);
            guard.may(Permission::Administer, &space).then(|| {
                json!({
                    "name": t.name, "scope": t.scope, "space": space, "role": role, "created_at": t.created_at,
                    "created_by": t.created_by, "revoked_at": t.revoked_at,
                })
            })
        })
        .collect();
    Ok(Json(json!({ "api_tokens": tokens })).into_response())
}

/// `DELETE /v1/api-tokens/{name}`: needs `admin` in the token's space.
pub(super) async fn revoke_api_token(
    State(state): State<AppState>,
    extensions: axum::http::Extensions,
    Scoped { operator, .. }: Scoped<can::Administer>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let hidden = || ApiError::not_found(format!("no live API token named `{name}`"));
    let token = state.access.list().await?.into_iter().find(|t| t.name == name).ok_or_else(hidden)?;
    let (space, _) = token_grant(&token);
    Guard::new(&state, operator.clone()).await?.require(Permission::Administer, &space, hidden)?;
    if !state.access.revoke_recorded(&state.audit, &name, &operator.name, super::caller(&extensions)).await? {
        return Err(ApiError::not_found(format!("no live API token named `{name}`")));
    }
    tracing::info!(name, revoked_by = %operator.name, "revoked API token");
    Ok(Json(json!({ "name": name, "revoked": true })).into_response())
}

pub(super) async fn list_keys(
    State(state): State<AppState>,
    _: Authorized<can::Administer>,
) -> Result<Response, ApiError> {
    Ok(Json(json!({ "keys": state.keys.list() })).into_response())
}

pub(super) async fn policy_status(
    State(state): State<AppState>,
    _: Authorized<can::Administer>,
) -> Result<Response, ApiError> {
    let engine = state.policies.as_ref().ok_or_else(no_policies)?;
    Ok(Json(engine.status()).into_response())
}

pub(super) async fn reload_policies(
    State(state): State<AppState>,
    Authorized { operator, .. }: Authorized<can::Administer>,
    extensions: axum::http::Extensions,
) -> Result<Response, ApiError> {
    let engine = Arc::clone(state.policies.as_ref().ok_or_else(no_policies)?);
    // Compiling reads files and may take a while: keep it off the async workers.
    let reloading = Arc::clone(&engine);
    let reloaded = tokio::task::spawn_blocking(move || reloading.reload().map(|_| reloading.status()))
        .await
        .map_err(|e| ApiError::internal(&e))?;
    state.metrics.policy_reload(reloaded.is_ok());
    let failure = reloaded.as_ref().err().map(ToString::to_string);
    crate::audit::events::policy_load(
        &state.audit,
        state.clock_now(),
        &operator.name,
        super::caller(&extensions),
        &engine,
        failure.as_deref(),
    )
    .await;
    match reloaded {
        Ok(status) => {
            tracing::info!(requested_by = %operator.name, "policy set reloaded on request");
            Ok(Json(status).into_response())
        }
        Err(error) => Err(ApiError::invalid_policy(format!("{error}; the last good policy set stays in force"))),
    }
}

fn no_policies() -> ApiError {
    ApiError::not_found("no policy directory is configured ([policy] dir)")
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RotateBody {
    #[serde(default)]
    force: bool,
}

pub(super) async fn rotate_keys(
    State(state): State<AppState>,
    Authorized { operator, .. }: Authorized<can::Administer>,
    extensions: axum::http::Extensions,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let body: RotateBody = if body.is_empty() {
        RotateBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::invalid_request(format!("invalid JSON body: {e}")))?
    };
    let force = body.force;
    let outcome = state.keys.rotate(force).await;
    match &outcome {
        Ok(Some(_)) => state.metrics.rotation(true),
        Ok(None) | Err(KeyRingError::TooSoon { .. }) => {}
        Err(_) => state.metrics.rotation(false),
    }
    match outcome? {
        Some(rotation) => {
            tracing::info!(requested_by = %operator.name, "on-demand key rotation");
            let context = super::caller(&extensions);
            crate::keys::key_rotated(&state.audit, state.clock_now(), &operator.name, context, &rotation, force).await;
            Ok(Json(json!({ "rotated": true, "rotation": rotation })).into_response())
        }
        None => Err(ApiError::unavailable("another broker replica rotated the keys at the same moment; retry")),
    }
}
