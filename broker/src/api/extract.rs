//! Extractors that turn bad input into the API's JSON errors instead of axum's plain-text ones.

use axum::Json;
use axum::extract::{FromRequest, Request};
use axum::http::HeaderMap;
use serde::de::DeserializeOwned;

use super::AppState;
use super::error::ApiError;
use crate::access::{Operator, Permission};

/// A JSON body whose rejection is an `invalid_request` error.
#[derive(Debug)]
pub(super) struct ApiJson<T>(pub(super) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(ApiError::invalid_request(rejection.body_text())),
        }
    }
}

/// Authenticates the `Authorization: Bearer` API token and checks it allows `required`.
pub(super) async fn operator(
    state: &AppState,
    headers: &HeaderMap,
    required: Permission,
) -> Result<Operator, ApiError> {
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or_default();
    let result = async {
        let operator = state.access.authenticate(presented).await?;
        operator.require(required)?;
        Ok::<_, ApiError>(operator)
    }
    .await;
    if let Err(error) = &result {
        state.metrics.request_refused(error.refusal());
    }
    result
}
