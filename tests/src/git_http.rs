//! A private git server for tests: git's own smart-HTTP server (`git http-backend`, run as a
//! CGI program per request) behind HTTP Basic authentication, on loopback.
//!
//! Every request without the right `Authorization` header gets 401; the server counts the
//! requests it let through and those it refused, so a test can tell that a fetch really
//! authenticated (and that one without credentials really was turned away).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use tokio::io::AsyncWriteExt as _;

/// Requests let through and refused.
#[derive(Debug, Default)]
pub struct Counts {
    /// Requests with the right credentials.
    pub authorized: AtomicUsize,
    /// Requests without them (or with wrong ones).
    pub refused: AtomicUsize,
}

struct Shared {
    root: PathBuf,
    authorization: String,
    counts: Arc<Counts>,
}

/// A running server; stops when dropped.
#[derive(Debug)]
pub struct GitServer {
    /// `http://127.0.0.1:PORT/`.
    pub base_url: String,
    /// What it let through and refused.
    pub counts: Arc<Counts>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GitServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GitServer {
    /// Serves the repositories under `root` (`root/NAME.git` or working trees with `.git`) to
    /// `username`:`password` only.
    pub async fn start(root: &Path, username: &str, password: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base_url = format!("http://{}/", listener.local_addr().expect("addr"));
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
        let counts = Arc::new(Counts::default());
        let shared = Arc::new(Shared {
            root: root.to_path_buf(),
            authorization: format!("Basic {basic}"),
            counts: counts.clone(),
        });
        let app = axum::Router::new().fallback(handle).with_state(shared);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { base_url, counts, task }
    }

    /// Requests let through so far.
    pub fn authorized(&self) -> usize {
        self.counts.authorized.load(Ordering::SeqCst)
    }

    /// Requests refused so far.
    pub fn refused(&self) -> usize {
        self.counts.refused.load(Ordering::SeqCst)
    }
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let authorized = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())
        == Some(shared.authorization.as_str());
    if !authorized {
        shared.counts.refused.fetch_add(1, Ordering::SeqCst);
        let mut response = (StatusCode::UNAUTHORIZED, "authentication required\n").into_response();
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"git\""));
        return response;
    }
    shared.counts.authorized.fetch_add(1, Ordering::SeqCst);
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, 64 << 20).await {
        Ok(body) => body,
        Err(error) => return (StatusCode::BAD_REQUEST, error.to_string()).into_response(),
    };
    match cgi(&shared.root, &parts.method, &parts.uri, &parts.headers, body).await {
        Ok(response) => response,
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error).into_response(),
    }
}

/// Runs `git http-backend` for one request (RFC 3875 CGI) and turns its output into a response.
async fn cgi(
    root: &Path,
    method: &axum::http::Method,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, String> {
    let header_text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let mut env: HashMap<&str, String> = HashMap::new();
    env.insert("GIT_PROJECT_ROOT", root.display().to_string());
    env.insert("GIT_HTTP_EXPORT_ALL", "1".into());
    env.insert("REQUEST_METHOD", method.to_string());
    env.insert("PATH_INFO", uri.path().to_owned());
    env.insert("QUERY_STRING", uri.query().unwrap_or_default().to_owned());
    env.insert("CONTENT_TYPE", header_text(header::CONTENT_TYPE).to_owned());
    env.insert("CONTENT_LENGTH", body.len().to_string());
    env.insert("HTTP_CONTENT_ENCODING", header_text(header::CONTENT_ENCODING).to_owned());
    env.insert(
        "GIT_PROTOCOL",
        headers.get("git-protocol").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned(),
    );
    env.insert("REMOTE_USER", "git".into());
    env.insert("REMOTE_ADDR", "127.0.0.1".into());
    let mut child = tokio::process::Command::new("git")
        .arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run git http-backend: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(&body).await;
    });
    let output = child.wait_with_output().await.map_err(|e| e.to_string())?;
    let _ = writer.await;
    let split = output.stdout.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i, 4));
    let split = split.or_else(|| output.stdout.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)));
    let (at, skip) = split.ok_or_else(|| format!("git http-backend: {}", String::from_utf8_lossy(&output.stderr)))?;
    let head = String::from_utf8_lossy(&output.stdout[..at]).into_owned();
    let mut response = Response::new(Body::from(output.stdout[at + skip..].to_vec()));
    for line in head.lines() {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split(' ').next().and_then(|c| c.parse().ok()).unwrap_or(500);
            *response.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        } else if let (Ok(name), Ok(value)) =
            (header::HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value))
        {
            response.headers_mut().append(name, value);
        }
    }
    Ok(response)
}
