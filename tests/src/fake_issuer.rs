//! `FakeIssuer`: a minimal OIDC issuer (discovery + JWKS) that **counts its JWKS fetches**, can
//! rotate its key on demand, say how long its JWKS may be cached (`Cache-Control: max-age`) and
//! fail its JWKS endpoint. It exists for faults a real provider cannot be made to show on demand:
//! how often the broker refetches keys when flooded with tokens naming unknown keys, whether cached
//! keys expire, whether a failing endpoint is hammered. Everything else about CI issuers is tested
//! against OpenBao's real OIDC provider. For sign-in it also has authorization and token
//! endpoints whose token endpoint answers with whatever ID token the test set: what only a broken
//! or hostile provider sends (an ID token for another client), which OpenBao cannot be made to.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use keyward_broker::tokens::{Signer, SigningAlgorithm};
use serde_json::{Value, json};

struct Inner {
    url: String,
    fetches: AtomicUsize,
    signer: Mutex<Arc<Signer>>,
    /// Bytes of padding added to the JWKS (a broken or hostile endpoint).
    padding: AtomicUsize,
    /// `Cache-Control: max-age` of the JWKS, in seconds; `u64::MAX` for no header.
    max_age: AtomicU64,
    /// The JWKS endpoint answers 500.
    failing: AtomicBool,
    /// What the token endpoint answers with as the `id_token` (none: it refuses).
    id_token: Mutex<Option<String>>,
}

/// A running fake issuer; stops when dropped.
#[allow(missing_debug_implementations)]
pub struct FakeIssuer {
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeIssuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn new_signer() -> Arc<Signer> {
    Arc::new(Signer::generate(SigningAlgorithm::ES256).expect("generate a key").0)
}

impl FakeIssuer {
    /// Serves discovery and JWKS on a free loopback port.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let inner = Arc::new(Inner {
            url,
            fetches: AtomicUsize::new(0),
            signer: Mutex::new(new_signer()),
            padding: AtomicUsize::new(0),
            max_age: AtomicU64::new(u64::MAX),
            failing: AtomicBool::new(false),
            id_token: Mutex::new(None),
        });
        let app = Router::new()
            .route(
                "/.well-known/openid-configuration",
                get(|State(inner): State<Arc<Inner>>| async move {
                    axum::Json(json!({
                        "issuer": inner.url,
                        "jwks_uri": format!("{}/jwks", inner.url),
                        "authorization_endpoint": format!("{}/authorize", inner.url),
                        "token_endpoint": format!("{}/token", inner.url),
                    }))
                }),
            )
            .route(
                "/jwks",
                get(|State(inner): State<Arc<Inner>>| async move {
                    use axum::response::IntoResponse as _;
                    inner.fetches.fetch_add(1, Ordering::SeqCst);
                    if inner.failing.load(Ordering::SeqCst) {
                        return axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response();
                    }
                    let jwk = serde_json::to_value(inner.signer.lock().expect("lock").jwk()).expect("jwk");
                    let padding = "x".repeat(inner.padding.load(Ordering::SeqCst));
                    let body = axum::Json(json!({ "keys": [jwk], "padding": padding }));
                    match inner.max_age.load(Ordering::SeqCst) {
                        u64::MAX => body.into_response(),
                        age => ([(axum::http::header::CACHE_CONTROL, format!("public, max-age={age}"))], body)
                            .into_response(),
                    }
                }),
            )
            .route(
                "/token",
                axum::routing::post(|State(inner): State<Arc<Inner>>| async move {
                    use axum::response::IntoResponse as _;
                    match inner.id_token.lock().expect("lock").clone() {
                        Some(id_token) => axum::Json(
                            json!({ "access_token": "stand-in", "token_type": "Bearer", "id_token": id_token }),
                        )
                        .into_response(),
                        None => axum::http::StatusCode::BAD_REQUEST.into_response(),
                    }
                }),
            )
            .with_state(Arc::clone(&inner));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { inner, task }
    }

    /// The issuer URL (`iss`).
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// How many times the JWKS was fetched.
    pub fn jwks_fetches(&self) -> usize {
        self.inner.fetches.load(Ordering::SeqCst)
    }

    /// Replaces the signing key; the JWKS serves only the new one from now on.
    pub fn rotate(&self) {
        *self.inner.signer.lock().expect("lock") = new_signer();
    }

    /// Serves the JWKS with `Cache-Control: public, max-age=SECONDS` from now on.
    pub fn set_max_age(&self, seconds: u64) {
        self.inner.max_age.store(seconds, Ordering::SeqCst);
    }

    /// Makes the JWKS endpoint answer 500 (or recover).
    pub fn set_failing(&self, failing: bool) {
        self.inner.failing.store(failing, Ordering::SeqCst);
    }

    /// A token with `claims` signed by the key before the last [`rotate`](Self::rotate), if kept.
    pub fn token_from(signer: &Signer, issuer: &str, mut claims: Value) -> String {
        claims["iss"] = json!(issuer);
        signer.sign_compact(claims.to_string().as_bytes()).expect("sign")
    }

    /// The current signing key (to keep signing with it after a rotation).
    pub fn current_signer(&self) -> Arc<Signer> {
        Arc::clone(&self.inner.signer.lock().expect("lock"))
    }

    /// Makes the token endpoint answer every code with `id_token`.
    pub fn answer_codes_with(&self, id_token: String) {
        *self.inner.id_token.lock().expect("lock") = Some(id_token);
    }

    /// Pads the JWKS with `bytes` of junk from now on.
    pub fn pad_jwks(&self, bytes: usize) {
        self.inner.padding.store(bytes, Ordering::SeqCst);
    }

    /// A token with `claims` (plus `iss`) signed by the current key.
    pub fn token(&self, mut claims: Value) -> String {
        claims["iss"] = json!(self.inner.url);
        let signer = Arc::clone(&self.inner.signer.lock().expect("lock"));
        signer.sign_compact(claims.to_string().as_bytes()).expect("sign")
    }

    /// A token with `claims` signed by a throwaway key no JWKS has ever served.
    pub fn token_from_unknown_key(&self, mut claims: Value) -> String {
        claims["iss"] = json!(self.inner.url);
        new_signer().sign_compact(claims.to_string().as_bytes()).expect("sign")
    }
}
