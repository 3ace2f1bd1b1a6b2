//! The HTTP surface (axum). Handlers parse input, call domain code, and map errors in one place
//! ([`error`]). Nothing below `http/` knows what HTTP is.

mod admin;
mod agents;
mod audit;
mod auth;
mod console;
mod console_agents;
mod console_forms;
mod console_live;
mod console_run;
mod console_stacks;
mod contexts;
pub mod error;
mod extract;
mod guard;
mod oidc;
mod ops;
mod runs;
pub mod serve;
mod spaces;
mod tfstate;
mod token;
mod token_response;
mod vcs;

pub use token::read_exchange_form;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{any, delete, get, post, put};

use crate::access::Access;
use crate::audit::AuditLog;
use crate::exchange::Exchanger;
use crate::keys::KeyRing;
use crate::metrics::Metrics;
use crate::policy::PolicyEngine;
use crate::store::Store;
use crate::tokens::Minter;

/// Largest request body the API reads.
const BODY_LIMIT: usize = 64 * 1024;

/// Everything a handler may need. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Signing keys and JWKS.
    pub keys: Arc<KeyRing>,
    /// Mints run tokens (`POST /v1/run-tokens`; each is recorded before it leaves, see `issuance`).
    pub minter: Arc<Minter>,
    /// Operator authentication.
    pub access: Access,
    /// Persistence (readiness probes it).
    pub store: Store,
    /// The audit log: every record that must be durable before a response.
    pub audit: AuditLog,
    /// Signs the audit log's checkpoints.
    pub log_key: Arc<crate::audit::LogKey>,
    /// Where the log is also delivered.
    pub sinks: Arc<Vec<Arc<crate::audit::sinks::Sink>>>,
    /// The `[[notifications]]`, if any are configured.
    pub notifier: Option<Arc<crate::notify::Notifier>>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// How long readiness waits for the database.
    pub readiness_timeout: Duration,
    /// Deadline for one request.
    pub request_timeout: Duration,
    /// The live policy set, when `[policy]` is configured.
    pub policies: Option<Arc<PolicyEngine>>,
    /// Token exchange, when targets are configured.
    pub exchanger: Option<Arc<Exchanger>>,
    /// The broker's clock.
    pub clock: crate::clock::SharedClock,
    /// Stacks and runs.
    pub runs: crate::runs::Runs,
    /// Pools and agents.
    pub agents: crate::agents::Agents,
    /// Sign-in for people, when `[sso]` is configured.
    pub sso: Option<crate::sso::Sso>,
    /// Console sessions acting as API tokens (`keyward console`).
    pub console_sessions: crate::console_sessions::ConsoleSessions,
    /// Spaces and role bindings.
    pub spaces: crate::spaces::Spaces,
    /// GitHub's webhook receiver, when `[vcs.github]` is configured.
    pub github: Option<crate::vcs::github::Github>,
}

impl AppState {
    /// Now, by the broker's clock.
    pub fn clock_now(&self) -> i64 {
        self.clock.now()
    }
}

/// A variable's body: room for the largest value JSON-escaped, so an oversized value gets the
/// variables' own error (the cap, by name) rather than the router's.
const VARIABLE_BODY_LIMIT: usize = 8 * crate::runs::contexts::MAX_VALUE;

/// Builds the router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/.well-known/openid-configuration", get(oidc::discovery))
        .route("/.well-known/jwks.json", get(oidc::jwks))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/auth/login", get(auth::login))
        .route("/auth/callback", get(auth::callback))
        .route("/auth/logout", post(auth::logout))
        .route("/auth/cli/token", post(auth::cli_token))
        .route("/v1/me", get(auth::me))
        .route("/v1/console/links", post(auth::console_link))
        .route("/v1/token", post(token::exchange))
        .route("/v1/run-tokens", post(admin::mint_run_token))
        .route("/v1/api-tokens", post(admin::create_api_token).get(admin::list_api_tokens))
        .route("/v1/api-tokens/{name}", delete(admin::revoke_api_token))
        .route("/v1/keys", get(admin::list_keys))
        .route("/v1/keys/rotate", post(admin::rotate_keys))
        .route("/v1/policies", get(admin::policy_status))
        .route("/v1/policies/reload", post(admin::reload_policies))
        .route("/v1/audit/entries", get(audit::entries))
        .route("/v1/audit/public-key", get(audit::public_key))
        .route("/v1/audit/checkpoint", get(audit::latest_checkpoint).post(audit::make_checkpoint))
        .route("/v1/audit/proof/inclusion", get(audit::inclusion))
        .route("/v1/audit/proof/consistency", get(audit::consistency))
        .route("/v1/audit/trace/{key}", get(audit::trace))
        .route("/v1/audit/prune", post(audit::prune))
        .route("/v1/stacks", post(runs::create_stack).get(runs::list_stacks))
        .route("/v1/stacks/{name}", get(runs::show_stack).patch(runs::update_stack))
        .route(
            "/v1/stacks/{name}/state",
            any(tfstate::backend).layer(DefaultBodyLimit::max(crate::runs::MAX_STATE_BYTES)),
        )
        .route(
            "/v1/stacks/{name}/state/versions",
            get(tfstate::versions).post(tfstate::push).layer(DefaultBodyLimit::max(crate::runs::MAX_STATE_BYTES)),
        )
        .route("/v1/stacks/{name}/state/versions/{version}", get(tfstate::version_content))
        .route("/v1/stacks/{name}/state/rollback", post(tfstate::rollback))
        .route("/v1/stacks/{name}/state/lock", delete(tfstate::force_unlock))
        .route(
            "/v1/stacks/{name}/variables/{key}",
            put(contexts::set_stack_variable)
                .delete(contexts::unset_stack_variable)
                .layer(DefaultBodyLimit::max(VARIABLE_BODY_LIMIT)),
        )
        .route("/v1/contexts", post(contexts::create).get(contexts::list))
        .route("/v1/contexts/{name}", get(contexts::show).patch(contexts::update).delete(contexts::delete))
        .route(
            "/v1/contexts/{name}/variables/{key}",
            put(contexts::set_context_variable)
                .delete(contexts::unset_context_variable)
                .layer(DefaultBodyLimit::max(VARIABLE_BODY_LIMIT)),
        )
        .route("/v1/contexts/{name}/attach", post(contexts::attach))
        .route("/v1/contexts/{name}/detach", post(contexts::detach))
        .route("/v1/runs", post(runs::submit_run).get(runs::list_runs))
        .route("/v1/runs/{id}", get(runs::show_run))
        .route("/v1/runs/{id}/approve", post(runs::approve_run))
        .route("/v1/runs/{id}/reject", post(runs::reject_run))
        .route("/v1/runs/{id}/cancel", post(runs::cancel_run))
        .route("/v1/runs/{id}/logs", get(runs::run_logs))
        .route("/v1/runs/{id}/logs/bundle", get(runs::run_log_bundle))
        .route("/v1/pools", post(agents::create_pool).get(agents::list_pools))
        .route("/v1/pools/{name}/join-tokens", post(agents::create_join_token))
        .route("/v1/agents", get(agents::list_agents))
        .route("/v1/agents/bootstrap", get(agents::bootstrap))
        .route("/v1/agents/{id}", get(agents::show_agent))
        .route("/v1/agents/{id}/revoke", post(agents::revoke_agent))
        .route("/v1/agents/{id}/drain", post(agents::drain_agent))
        .merge(space_routes())
        .merge(vcs_routes())
        .merge(console::routes())
        .fallback(ops::not_found)
        .layer(axum::middleware::from_fn_with_state(state.request_timeout, deadline))
        .layer(axum::middleware::from_fn(request_id))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

/// Spaces and their role bindings.
fn space_routes() -> Router<AppState> {
    Router::new()
        .route("/v1/spaces", post(spaces::create).get(spaces::list))
        .route("/v1/spaces/{name}", get(spaces::show).delete(spaces::delete))
        .route("/v1/spaces/{name}/bind", post(spaces::bind))
        .route("/v1/spaces/{name}/unbind", post(spaces::unbind))
}

/// Version control webhooks, each with its provider's own body cap.
fn vcs_routes() -> Router<AppState> {
    let github = post(vcs::github_webhook).layer(DefaultBodyLimit::max(crate::vcs::github::MAX_BODY_BYTES));
    Router::new().route("/v1/vcs/github/webhook", github)
}

/// The broker's ID for one request: in the `x-request-id` response header, in the request's
/// log lines and in every audit entry it causes, so an operator can go from a client's error to
/// the log and the record. Always generated here; a client's own `x-request-id` is not trusted
/// into the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

async fn request_id(mut request: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    let id = uuid::Uuid::now_v7().to_string();
    request.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!("request", request_id = %id);
    let mut response = tracing::Instrument::instrument(next.run(request), span).await;
    if let Ok(value) = axum::http::HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// The audit context of a request: its ID and where it came from.
pub(crate) fn caller(parts: &axum::http::Extensions) -> crate::audit::Context {
    crate::audit::Context {
        request_id: parts.get::<RequestId>().map(|id| id.0.clone()),
        remote_addr: parts.get::<serve::Peer>().map(|peer| peer.0.to_string()),
        ..crate::audit::Context::default()
    }
}

/// Bounds every request. Dropping the handler future at the deadline cancels its work; a token
/// is only ever returned after its record was written, so a cancelled mint issues nothing.
async fn deadline(
    axum::extract::State(timeout): axum::extract::State<Duration>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(timeout_secs = timeout.as_secs(), "request exceeded its deadline");
            error::ApiError::unavailable("the request did not complete in time; retry").into_response()
        }
    }
}
