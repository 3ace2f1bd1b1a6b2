//! `POST /v1/token`: OAuth 2.0 Token Exchange (RFC 8693), form-encoded as the RFC requires.

use std::time::Duration;

use axum::Form;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use crate::audit::Context;
use crate::exchange::{
    AWS_CREDENTIALS_TOKEN_TYPE, ExchangeError, ExchangeRequest, ExchangeResponse, GRANT_TYPE, ID_TOKEN_TYPE,
    JWT_TOKEN_TYPE, VAULT_TOKEN_TYPE,
};

/// The form fields of an exchange. Unknown fields are ignored, as RFC 6749 §3.2 asks.
#[derive(Deserialize)]
pub(super) struct ExchangeForm {
    grant_type: Option<String>,
    subject_token: Option<String>,
    subject_token_type: Option<String>,
    resource: Option<String>,
    audience: Option<String>,
    requested_token_type: Option<String>,
    /// Keyward extension: a lifetime, in seconds, below the target's and the policy's caps.
    ttl_seconds: Option<u64>,
}

pub(super) async fn exchange(
    State(state): State<AppState>,
    extensions: axum::http::Extensions,
    form: Result<Form<ExchangeForm>, axum::extract::rejection::FormRejection>,
) -> Result<Response, ApiError> {
    let Form(form) = form.map_err(|e| ApiError::invalid_request(e.body_text()))?;
    let request = exchange_request(form, state.exchanger.is_some(), super::caller(&extensions))?;
    let exchanger =
        state.exchanger.as_ref().ok_or_else(|| ApiError::invalid_target("no credential targets are configured"))?;
    let response = exchanger.exchange(request).await.map_err(ApiError::from)?;
    let body = match response {
        ExchangeResponse::Vault { issued, .. } => {
            let mut vault = issued.material();
            if let Some(fields) = vault.as_object_mut() {
                fields.insert("accessor".to_owned(), json!(issued.accessor));
                fields.insert("lease_duration".to_owned(), json!(issued.lease_duration));
                fields.insert("renewable".to_owned(), json!(issued.renewable));
                fields.insert("policies".to_owned(), json!(issued.policies));
            }
            let mut body = json!({
                "issued_token_type": VAULT_TOKEN_TYPE,
                "token_type": "N_A",
                "expires_in": issued.lease_duration,
                "vault": vault,
            });
            if let Some(object) = body.as_object_mut() {
                // RFC 8693 requires an access_token; without the Vault token it is "N_A".
                let token = issued.token.as_ref().map_or("N_A", |token| token.as_str());
                object.insert("access_token".to_owned(), json!(token));
            }
            body
        }
        ExchangeResponse::Aws(aws) => {
            let credentials = &aws.credentials;
            json!({
                "access_token": credentials.session_token.as_str(),
                "issued_token_type": AWS_CREDENTIALS_TOKEN_TYPE,
                "token_type": "N_A",
                "expires_in": (credentials.expires_at - state.clock_now()).max(0),
                "aws": {
                    "mode": "broker",
                    "role_arn": aws.role_arn,
                    "role_session_name": aws.role_session_name,
                    "assumed_role_arn": credentials.assumed_role_arn,
                    "region": aws.region,
                },
                // The AWS CLI `credential_process` shape, ready for `keyward creds aws`.
                "aws_credentials": {
                    "Version": 1,
                    "AccessKeyId": credentials.access_key_id,
                    "SecretAccessKey": credentials.secret_access_key.as_str(),
                    "SessionToken": credentials.session_token.as_str(),
                    "Expiration": crate::exchange::aws::rfc3339(credentials.expires_at),
                },
            })
        }
        ExchangeResponse::AwsWorker(aws) => {
            let expires_in = (aws.token_expires_at - state.clock_now()).max(0);
            json!({
                "access_token": aws.web_identity_token.expose(),
                "issued_token_type": JWT_TOKEN_TYPE,
                "token_type": "N_A",
                "expires_in": expires_in,
                "aws": {
                    "mode": "worker",
                    "role_arn": aws.role_arn,
                    "role_session_name": aws.role_session_name,
                    "region": aws.region,
                    "sts_endpoint": aws.sts_endpoint,
                    "duration_seconds": aws.duration_seconds,
                },
            })
        }
    };
    Ok((StatusCode::OK, [(header::CACHE_CONTROL, "no-store"), (header::PRAGMA, "no-cache")], axum::Json(body))
        .into_response())
}

/// The checks of an exchange's form, in the order the client hears about them.
fn exchange_request(
    form: ExchangeForm,
    targets_configured: bool,
    caller: Context,
) -> Result<ExchangeRequest, ApiError> {
    // The grant type says which protocol the request speaks: answer it before anything about
    // targets, so a client speaking the wrong one hears that first (RFC 6749 §5.2).
    if form.grant_type.as_deref() != Some(GRANT_TYPE) {
        return Err(ApiError::unsupported_grant_type(format!("grant_type must be {GRANT_TYPE}")));
    }
    if !targets_configured {
        return Err(ApiError::invalid_target("no credential targets are configured"));
    }
    let subject_token = form
        .subject_token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::invalid_request("subject_token is required"))?;
    match form.subject_token_type.as_deref() {
        Some(JWT_TOKEN_TYPE | ID_TOKEN_TYPE) => {}
        _ => {
            return Err(ApiError::invalid_request(format!(
                "subject_token_type must be {JWT_TOKEN_TYPE} or {ID_TOKEN_TYPE}"
            )));
        }
    }
    if let Some(requested) = form.requested_token_type.as_deref()
        && requested != JWT_TOKEN_TYPE
    {
        return Err(ApiError::invalid_request(format!("requested_token_type must be {JWT_TOKEN_TYPE} when given")));
    }
    let target = match (form.resource, form.audience) {
        (Some(t), None) | (None, Some(t)) => t,
        (Some(r), Some(a)) if r == a => r,
        (Some(_), Some(_)) => return Err(ApiError::invalid_request("resource and audience name different targets")),
        (None, None) => {
            return Err(ApiError::invalid_request(
                "name the target in `resource` (or `audience`), e.g. aws:network-apply",
            ));
        }
    };
    Ok(ExchangeRequest { subject_token, target, requested_ttl: form.ttl_seconds.map(Duration::from_secs), caller })
}

/// The fuzzing entry (`fuzz/`; the broker never calls it): reads `body` as `POST /v1/token`
/// reads its form (axum's form extractor, then `exchange_request`'s checks), for a broker
/// with targets configured, and stops where the exchange would start.
pub async fn read_exchange_form(body: Vec<u8>) -> Result<ExchangeRequest, ApiError> {
    use axum::extract::FromRequest as _;
    let request = axum::http::Request::post("/v1/token")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(axum::body::Body::from(body))
        .map_err(|e| ApiError::invalid_request(e.to_string()))?;
    let Form(form) =
        Form::<ExchangeForm>::from_request(request, &()).await.map_err(|e| ApiError::invalid_request(e.body_text()))?;
    exchange_request(form, true, Context::default())
}

impl From<ExchangeError> for ApiError {
    fn from(error: ExchangeError) -> Self {
        match &error {
            ExchangeError::InvalidRequest(_) => Self::invalid_request(error.to_string()),
            ExchangeError::InvalidTarget(_) => Self::invalid_target(error.to_string()),
            ExchangeError::InvalidGrant(_) => Self::invalid_grant(error.to_string()),
            // RFC 8693 §2.2.2: a target the server will not issue for is `invalid_target`, whether
            // the broker's rules, the policy or the relying party said no; the reason goes in
            // `error_description`. OAuth has no `access_denied` at the token endpoint.
            ExchangeError::Denied(_) | ExchangeError::UpstreamRefused(_) => Self::target_denied(error.to_string()),
            ExchangeError::Unavailable(_) => Self::unavailable(error.to_string()),
            ExchangeError::UpstreamUnavailable(_) => Self::bad_gateway(error.to_string()),
        }
    }
}
