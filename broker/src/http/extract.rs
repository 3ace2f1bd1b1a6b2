//! Extractors that turn bad input into the API's JSON errors instead of axum's plain-text ones,
//! and [`Authorized`], which authenticates the caller's API token before a handler runs: it needs
//! the role on `root`; [`Scoped`] needs it in some space, and its handler checks the resource's
//! own space ([`super::guard`]).

use std::marker::PhantomData;

use axum::Json;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::HeaderMap;
use axum::http::request::Parts;
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

/// Where a caller must hold a permission for a handler to run at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reach {
    /// On `root` (and so everywhere).
    Root,
    /// In some space: the handler checks the resource's space itself.
    AnySpace,
}

/// Authenticates the `Authorization: Bearer` API token and checks it allows `required` (on
/// `root`, or in some space).
pub(super) async fn operator(
    state: &AppState,
    headers: &HeaderMap,
    required: Permission,
    reach: Reach,
) -> Result<Operator, ApiError> {
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or_default();
    let result = async {
        let operator = state.access.authenticate(presented).await?;
        match reach {
            Reach::Root => operator.require_in(required, &[crate::roles::ROOT.to_owned()])?,
            Reach::AnySpace => operator.require(required)?,
        }
        Ok::<_, ApiError>(operator)
    }
    .await;
    if let Err(error) = &result {
        state.metrics.request_refused(error.refusal());
    }
    result
}

/// The operator behind a request's API token, checked to hold `R`'s permission. As a handler
/// argument it runs before the body is read, so an unauthenticated caller learns nothing about
/// what its body would have done; a refusal is counted in the metrics.
#[derive(Debug)]
pub(super) struct Authorized<R> {
    /// Who the token belongs to.
    pub(super) operator: Operator,
    /// Private, so only the extractor makes one.
    requirement: PhantomData<R>,
}

impl<R: can::Requirement> FromRequestParts<AppState> for Authorized<R> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let operator = operator(state, &parts.headers, R::PERMISSION, Reach::Root).await?;
        Ok(Self { operator, requirement: PhantomData })
    }
}

/// Like [`Authorized`], for a handler that checks the role in its resource's space: the caller
/// must hold `R`'s permission in some space.
#[derive(Debug)]
pub(super) struct Scoped<R> {
    /// Who the token belongs to.
    pub(super) operator: Operator,
    /// Private, so only the extractor makes one.
    requirement: PhantomData<R>,
}

impl<R: can::Requirement> FromRequestParts<AppState> for Scoped<R> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let operator = operator(state, &parts.headers, R::PERMISSION, Reach::AnySpace).await?;
        Ok(Self { operator, requirement: PhantomData })
    }
}

/// What an [`Authorized`] caller can do: one marker type per [`Permission`].
pub(super) mod can {
    use crate::access::Permission;

    /// A permission as a type, so a handler's signature says what it needs.
    pub(in crate::http) trait Requirement: Send + Sync {
        /// The permission the API token must grant.
        const PERMISSION: Permission;
    }

    macro_rules! requirements {
        ($($(#[$doc:meta])* $name:ident => $permission:ident;)*) => {$(
            $(#[$doc])*
            #[derive(Debug)]
            pub(in crate::http) struct $name;

            impl Requirement for $name {
                const PERMISSION: Permission = Permission::$permission;
            }
        )*};
    }

    requirements! {
        /// Read stacks, runs and their logs.
        ReadRuns => ReadRuns;
        /// Submit and cancel runs.
        SubmitRuns => SubmitRuns;
        /// Approve or reject runs.
        ReviewRuns => ReviewRuns;
        /// Read the audit log.
        ReadAudit => ReadAudit;
        /// Stacks, pools, agents, keys, API tokens, run tokens.
        Administer => Administer;
    }
}
