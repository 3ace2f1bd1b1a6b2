//! `FakeUpstream`: a relying party (STS or Vault) that only fails, with HTTP 500 on every call.
//! moto and OpenBao cannot be made to answer that, and it is the fault the broker's retry bounds
//! exist for. Successful behaviour is tested against moto and OpenBao; a sealed OpenBao (a real
//! 503) is tested against OpenBao itself, and a peer that never answers is a real one stopped
//! with `SIGSTOP` ([`crate::frozen`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;

/// Whose error format the fake uses.
#[derive(Debug, Clone, Copy)]
pub enum Speaks {
    /// AWS STS (XML).
    Sts,
    /// Vault / OpenBao (JSON `errors`).
    Vault,
}

/// A running fake; stops when dropped.
#[allow(missing_debug_implementations)]
pub struct FakeUpstream {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    calls: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeUpstream {
    /// Starts a fake on a free loopback port; it answers every method and path with a 500.
    pub async fn start(speaks: Speaks) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let calls = Arc::new(AtomicUsize::new(0));
        let app = Router::new()
            .fallback(move |State(calls): State<Arc<AtomicUsize>>| async move {
                calls.fetch_add(1, Ordering::SeqCst);
                let (content_type, body) = match speaks {
                    Speaks::Sts => (
                        "text/xml",
                        "<ErrorResponse><Error><Type>Receiver</Type><Code>InternalFailure</Code>\
                         <Message>fake failure</Message></Error></ErrorResponse>",
                    ),
                    Speaks::Vault => ("application/json", r#"{"errors":["fake failure"]}"#),
                };
                (StatusCode::INTERNAL_SERVER_ERROR, [("content-type", content_type)], body)
            })
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
