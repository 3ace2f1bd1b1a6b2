//! The RFC 8693 token-exchange form of `POST /v1/token` (`api::read_exchange_form`): axum's
//! form extractor, then the handler's own checks, up to where the exchange starts.
//!
//! Input: the request body. What must hold:
//! - a refusal is a 400 with an OAuth error, never a panic or a 500;
//! - an accepted form names a subject token and a target, and encoding what was understood as a
//!   form again reads back the same request (no field is read two ways).

use std::pin::pin;
use std::task::{Context, Poll, Waker};

use axum::http::StatusCode;
use axum::response::IntoResponse as _;
use keyward_broker::exchange::{ExchangeRequest, GRANT_TYPE, JWT_TOKEN_TYPE};
use keyward_broker::http::error::ApiError;
use keyward_broker::http::read_exchange_form;

use crate::Outcome;

/// Runs one input.
pub fn check(data: &[u8]) -> Outcome {
    match read(data.to_vec()) {
        Ok(request) => {
            assert!(!request.subject_token.expose().is_empty(), "an accepted exchange has a subject token");
            let mut fields = vec![
                ("grant_type", GRANT_TYPE.to_owned()),
                ("subject_token", request.subject_token.expose().to_owned()),
                ("subject_token_type", JWT_TOKEN_TYPE.to_owned()),
                ("resource", request.target.clone()),
            ];
            if let Some(ttl) = request.requested_ttl {
                fields.push(("ttl_seconds", ttl.as_secs().to_string()));
            }
            let body = serde_urlencoded::to_string(&fields).expect("a form encodes");
            let again = read(body.into_bytes()).expect("a re-encoded accepted form is accepted");
            assert_eq!(again.subject_token.expose(), request.subject_token.expose(), "the subject token reads back");
            assert_eq!(again.target, request.target, "the target reads back");
            assert_eq!(again.requested_ttl, request.requested_ttl, "the lifetime reads back");
            Outcome::Accepted
        }
        Err(error) => {
            assert_eq!(error.into_response().status(), StatusCode::BAD_REQUEST, "a bad form is a 400");
            Outcome::Refused
        }
    }
}

/// The body is all in memory, so reading it never waits: one poll finishes it.
fn read(body: Vec<u8>) -> Result<ExchangeRequest, ApiError> {
    let mut future = pin!(read_exchange_form(body));
    match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(result) => result,
        Poll::Pending => panic!("reading an in-memory form waited"),
    }
}
