//! OIDC discovery and JWKS: what lets AWS, Vault and anyone else verify the broker's tokens.
//!
//! The discovery document holds what strict clients require of a token issuer (OIDC Discovery 1.0
//! §3 minus the interactive-login endpoints, which a workload issuer does not have — the same shape
//! GitHub Actions and Vault's identity tokens publish).

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::AppState;

/// Claims a relying party may find in a run token.
const CLAIMS_SUPPORTED: &[&str] = &[
    "iss",
    "sub",
    "aud",
    "exp",
    "nbf",
    "iat",
    "jti",
    "run_id",
    "stack_id",
    "stack",
    "phase",
    "scope",
    "repository",
    "commit_sha",
    "ref",
    "pull_request",
    "ticket",
    "triggered_by",
    "approved_by",
    "pool",
    "agent_id",
    "https://aws.amazon.com/tags",
    "https://aws.amazon.com/source_identity",
];

#[derive(Serialize)]
struct Discovery<'a> {
    issuer: &'a str,
    jwks_uri: String,
    response_types_supported: [&'static str; 1],
    subject_types_supported: [&'static str; 1],
    id_token_signing_alg_values_supported: Vec<String>,
    scopes_supported: [&'static str; 1],
    claims_supported: &'static [&'static str],
}

fn cache_control(state: &AppState) -> String {
    format!("public, max-age={}", state.keys.jwks_max_age().as_secs())
}

pub(super) async fn discovery(State(state): State<AppState>) -> Response {
    let issuer = state.minter.issuer();
    let mut algorithms: Vec<String> = state.keys.list().into_iter().map(|k| k.algorithm).collect();
    algorithms.sort();
    algorithms.dedup();
    let document = Discovery {
        issuer,
        jwks_uri: format!("{issuer}/.well-known/jwks.json"),
        response_types_supported: ["id_token"],
        subject_types_supported: ["public"],
        id_token_signing_alg_values_supported: algorithms,
        scopes_supported: ["openid"],
        claims_supported: CLAIMS_SUPPORTED,
    };
    ([(header::CACHE_CONTROL, cache_control(&state))], axum::Json(document)).into_response()
}

pub(super) async fn jwks(State(state): State<AppState>) -> Response {
    let body = state.keys.jwks_json().to_string();
    ([(header::CONTENT_TYPE, "application/json".to_owned()), (header::CACHE_CONTROL, cache_control(&state))], body)
        .into_response()
}
