//! `FakeSts`: an STS endpoint that only fails — HTTP 500 on every call, or no answer at all. moto
//! cannot be made to do either, and these are the faults the broker's retry bound and deadline
//! exist for. Successful STS behaviour is tested against moto.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;

/// How the fake misbehaves.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// Answer every request with a 500 and an STS-shaped error body.
    InternalError,
    /// Accept the request and never answer (well, after 10 minutes).
    Hang,
}

/// A running fake; stops when dropped.
#[allow(missing_debug_implementations)]
pub struct FakeSts {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    calls: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeSts {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeSts {
    /// Starts a fake with `fault` on a free loopback port.
    pub async fn start(fault: Fault) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let calls = Arc::new(AtomicUsize::new(0));
        let app = Router::new()
            .route(
                "/",
                post(move |State(calls): State<Arc<AtomicUsize>>| async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    if let Fault::Hang = fault {
                        tokio::time::sleep(Duration::from_secs(600)).await;
                    }
                    (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        [("content-type", "text/xml")],
                        "<ErrorResponse><Error><Type>Receiver</Type><Code>InternalFailure</Code>\
                         <Message>fake failure</Message></Error></ErrorResponse>",
                    )
                }),
            )
            .with_state(Arc::clone(&calls));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { endpoint, calls, task }
    }

    /// How many requests reached it.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}
