//! The HTTP client for the object store the provider manages: `GET`, `PUT` and `DELETE` of
//! `{endpoint}/objects/{name}`, plain-text bodies.
//!
//! Why a module: this is the only code that touches the network on the provider's behalf, and
//! its errors say what a person needs to fix it (the store unreachable, or what it answered).

use std::time::Duration;

use reqwest::{Method, StatusCode, Url};

/// How long one request may take, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why an endpoint cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EndpointError {
    /// Not a URL.
    #[error("{endpoint:?} is not a URL: {reason}")]
    NotUrl {
        /// The endpoint as configured.
        endpoint: String,
        /// What the URL parser said.
        reason: String,
    },
    /// A URL of another scheme.
    #[error("{0:?} is not an http:// or https:// URL")]
    Scheme(String),
    /// The HTTP client could not be built.
    #[error("cannot set up an HTTP client: {0}")]
    Client(String),
}

/// Why a request to the store failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    /// No answer: refused, unresolvable, timed out, or cut off.
    #[error("cannot reach the object store at {endpoint}: {reason}")]
    Unreachable {
        /// The store's base URL.
        endpoint: String,
        /// The cause, from the transport.
        reason: String,
    },
    /// An answer other than success (or 404 where that means "no such object").
    #[error("the object store answered {status} to {method} {url}")]
    Status {
        /// The request's method.
        method: Method,
        /// The object's URL.
        url: Url,
        /// What the store answered.
        status: StatusCode,
    },
}

/// A configured object store.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    client: reqwest::Client,
    base: Url,
}

impl Store {
    /// A store at `endpoint` (its objects live under `{endpoint}/objects/`).
    pub(crate) fn new(endpoint: &str) -> Result<Self, EndpointError> {
        let base = Url::parse(endpoint)
            .map_err(|e| EndpointError::NotUrl { endpoint: endpoint.to_owned(), reason: e.to_string() })?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(EndpointError::Scheme(endpoint.to_owned()));
        }
        // No proxy from the environment: a store on loopback must not be sent elsewhere.
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| EndpointError::Client(e.to_string()))?;
        Ok(Store { client, base })
    }

    /// The object's content, or `None` if the store has no object `name`.
    pub(crate) async fn get(&self, name: &str) -> Result<Option<String>, StoreError> {
        let url = self.url(name);
        let response = self.send(self.client.get(url.clone())).await?;
        match response.status() {
            StatusCode::NOT_FOUND => Ok(None),
            status if status.is_success() => response.text().await.map(Some).map_err(|e| self.unreachable(&e)),
            status => Err(StoreError::Status { method: Method::GET, url, status }),
        }
    }

    /// Creates or replaces object `name`.
    pub(crate) async fn put(&self, name: &str, content: &str) -> Result<(), StoreError> {
        let url = self.url(name);
        let response = self.send(self.client.put(url.clone()).body(content.to_owned())).await?;
        match response.status() {
            status if status.is_success() => Ok(()),
            status => Err(StoreError::Status { method: Method::PUT, url, status }),
        }
    }

    /// Deletes object `name`; one that is already gone is not an error.
    pub(crate) async fn delete(&self, name: &str) -> Result<(), StoreError> {
        let url = self.url(name);
        let response = self.send(self.client.delete(url.clone())).await?;
        match response.status() {
            status if status.is_success() || status == StatusCode::NOT_FOUND => Ok(()),
            status => Err(StoreError::Status { method: Method::DELETE, url, status }),
        }
    }

    /// `{endpoint}/objects/{name}`, the name percent-encoded as one path segment.
    fn url(&self, name: &str) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().extend(["objects", name]);
        }
        url
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, StoreError> {
        request.send().await.map_err(|e| self.unreachable(&e))
    }

    fn unreachable(&self, error: &reqwest::Error) -> StoreError {
        StoreError::Unreachable { endpoint: self.base.to_string(), reason: causes(error) }
    }
}

/// `error`'s causes, innermost last, without reqwest's own "error sending request for url"
/// (the endpoint is already in the message).
fn causes(error: &reqwest::Error) -> String {
    let mut causes = Vec::new();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        causes.push(cause.to_string());
        source = cause.source();
    }
    if causes.is_empty() {
        return error.to_string();
    }
    causes.join(": ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn object_urls_are_one_encoded_segment_under_the_endpoint() {
        let store = Store::new("http://127.0.0.1:9/base/").unwrap();
        assert_eq!(store.url("a b/c").as_str(), "http://127.0.0.1:9/base/objects/a%20b%2Fc");
        let store = Store::new("http://127.0.0.1:9").unwrap();
        assert_eq!(store.url("x").as_str(), "http://127.0.0.1:9/objects/x");
    }

    #[test]
    fn endpoints_that_are_not_http_urls_are_refused() {
        assert!(matches!(Store::new("127.0.0.1:9"), Err(EndpointError::Scheme(_) | EndpointError::NotUrl { .. })));
        assert!(matches!(Store::new("file:///tmp"), Err(EndpointError::Scheme(_))));
        assert!(matches!(Store::new("not a url"), Err(EndpointError::NotUrl { .. })));
    }
}
