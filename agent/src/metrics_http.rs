//! `keyward-agent run --metrics-listen ADDR`: serves `GET /metrics` over plain HTTP.
//!
//! Off by default. The address must be loopback unless `--metrics-listen-any` says otherwise:
//! the agent's metrics are unauthenticated and say when it runs jobs and how they end, and the
//! agent's host is where customer infrastructure is changed, so the page is for a scraper on the
//! same host (a node exporter's sidecar, a local Prometheus agent) unless the operator decides a
//! network is private enough.

use std::convert::Infallible;
use std::net::SocketAddr;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

/// Why the metrics endpoint did not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsListenError {
    /// A non-loopback address without the flag that allows it.
    #[error(
        "--metrics-listen {0}: not a loopback address; the metrics page has no authentication, so it \
         listens on 127.0.0.1 or ::1 unless --metrics-listen-any is given as well"
    )]
    NotLoopback(SocketAddr),
    /// The address could not be bound.
    #[error("--metrics-listen {0}: cannot listen: {1}")]
    Bind(SocketAddr, std::io::Error),
}

/// Binds `address` (refusing a non-loopback one unless `any`) and serves `/metrics` from a
/// background task; returns the bound address (port 0 picks one).
pub async fn serve(address: SocketAddr, any: bool) -> Result<SocketAddr, MetricsListenError> {
    if !any && !address.ip().is_loopback() {
        return Err(MetricsListenError::NotLoopback(address));
    }
    let listener = tokio::net::TcpListener::bind(address).await.map_err(|e| MetricsListenError::Bind(address, e))?;
    let bound = listener.local_addr().map_err(|e| MetricsListenError::Bind(address, e))?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(|request| async move { Ok::<_, Infallible>(answer(&request)) });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    tracing::info!(address = %bound, "serving metrics at /metrics");
    Ok(bound)
}

fn answer(request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = if request.uri().path() != "/metrics" {
        (StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "not found: the agent serves /metrics only\n".to_owned())
    } else if request.method() != Method::GET && request.method() != Method::HEAD {
        (StatusCode::METHOD_NOT_ALLOWED, "text/plain; charset=utf-8", "use GET\n".to_owned())
    } else {
        (StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", crate::metrics::global().render())
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}
