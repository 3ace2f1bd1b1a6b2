//! `FakeGithub`: a stand-in for GitHub's REST API, for the broker's outbound calls (no GitHub is
//! reachable from the tests). It is not a mock that answers whatever it is asked: every request is
//! checked against GitHub's published OpenAPI description ([`openapi`], `@octokit/openapi` pinned
//! in tests/npm): the operation must exist, its path and query parameters and JSON body must match
//! the operation's schemas, and the headers GitHub requires or documents must be there. A request
//! that fails a check is answered the way GitHub would (400/401/403/404/422 with `{"message"}`)
//! and recorded as a violation; every test asserts [`FakeGithub::violations`] is empty.
//!
//! Authentication works like GitHub's: `/app/...` endpoints take an RS256 App JWT for the
//! configured App ID, verified with the App's public key (the fake generates the key pair and
//! hands out the private key as GitHub does, PKCS#1 PEM), living at most 10 minutes; repository
//! endpoints take an installation token the fake issued, unexpired, for an installation covering
//! that repository. Time is the test's clock, shared with the broker's.
//!
//! Its answers start from the description's own examples with the test's state filled in, and are
//! themselves checked against the response schemas. Implemented: installation access tokens, a
//! pull request's files (paginated), the pull requests of a commit, commit statuses, issue
//! comments (create, update).

mod answers;
mod auth;
mod key;
pub mod openapi;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{KeyPair as _, RsaKeyPair};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use keyward_broker::clock::SharedClock;
use serde_json::{Value, json};

use answers::{body_link, error, injected, respond};
use auth::{authenticate, check_access, issue};
use key::{pem, pkcs1_of};
use openapi::description;

/// The REST API versions GitHub supports (docs.github.com, "API Versions").
pub const SUPPORTED_API_VERSIONS: &[&str] = &["2022-11-28"];

/// How long an installation token lives (GitHub: one hour).
pub const TOKEN_LIFETIME_SECONDS: i64 = 3600;

/// The permissions an installation has granted the App (a token may ask for fewer).
fn installation_permissions() -> Value {
    json!({"contents": "write", "pull_requests": "write", "statuses": "write", "issues": "write", "metadata": "read"})
}

/// Who a recorded request proved to be (never the credential itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// No `Authorization` header.
    None,
    /// A valid App JWT for this App ID.
    App(u64),
    /// A valid installation token of this installation.
    Installation(u64),
    /// A credential that proved nothing (why).
    Invalid(String),
}

/// A request as the fake received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// `GET`, `POST`, …
    pub method: String,
    /// The path, e.g. `/repos/octo/app/statuses/abc…`.
    pub path: String,
    /// The query string, if any.
    pub query: Option<String>,
    /// The body as JSON (a string holding the text when it is not JSON).
    pub body: Option<Value>,
    /// Who it authenticated as.
    pub auth: Auth,
}

/// A request GitHub would have refused: what, and why.
#[derive(Debug, Clone)]
pub struct Violation {
    /// The request's method.
    pub method: String,
    /// The request's path.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.method, self.path, self.message)
    }
}

/// A pull request's details, as the tests set them (the number and files are separate).
#[derive(Debug, Clone)]
pub struct PrInfo {
    /// Its title.
    pub title: String,
    /// Its author's login.
    pub author: String,
    /// The branch it merges into.
    pub base_ref: String,
    /// The branch it merges from.
    pub head_ref: String,
    /// The head commit.
    pub head_sha: String,
    /// Whether it was merged.
    pub merged: bool,
    /// Whether it is a draft.
    pub draft: bool,
    /// Its labels.
    pub labels: Vec<String>,
    /// The commit its merge made, once merged.
    pub merge_commit_sha: Option<String>,
    /// The head repository's `owner/name` when it is a fork (`None`: the base repository).
    pub head_repo: Option<String>,
}

impl Default for PrInfo {
    fn default() -> Self {
        Self {
            title: "Change the network".to_owned(),
            author: "octocat".to_owned(),
            base_ref: "main".to_owned(),
            head_ref: "feature".to_owned(),
            head_sha: "6dcb09b5b57875f334f61aebed695e2e4193db5e".to_owned(),
            merged: false,
            draft: false,
            labels: Vec::new(),
            merge_commit_sha: None,
            head_repo: None,
        }
    }
}

struct PullRequest {
    number: u64,
    info: PrInfo,
    /// `(filename, previous_filename)`.
    files: Vec<(String, Option<String>)>,
}

/// A comment on an issue or pull request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comment {
    /// Its ID.
    pub id: u64,
    /// Its body.
    pub body: String,
}

struct StoredComment {
    repo: String,
    issue: u64,
    body: String,
    deleted: bool,
}

struct IssuedToken {
    installation: u64,
    expires_at: i64,
    permissions: Value,
}

struct Failure {
    path_prefix: String,
    status: u16,
    remaining: usize,
}

#[derive(Default)]
struct Data {
    /// Installation ID → the repositories it covers (lowercase `owner/name`).
    installations: HashMap<u64, Vec<String>>,
    tokens: HashMap<String, IssuedToken>,
    /// Lowercase `owner/name` → its pull requests.
    pulls: HashMap<String, Vec<PullRequest>>,
    /// (lowercase `owner/name`, SHA) → pull request numbers.
    commits: HashMap<(String, String), Vec<u64>>,
    /// (lowercase `owner/name`, SHA) → the status bodies, in order.
    statuses: HashMap<(String, String), Vec<Value>>,
    comments: Vec<(u64, StoredComment)>,
    next_id: u64,
    requests: Vec<RecordedRequest>,
    violations: Vec<Violation>,
    failures: Vec<Failure>,
}

struct Inner {
    app_id: u64,
    public_key: Vec<u8>,
    private_key_pkcs1_pem: String,
    private_key_pkcs8_pem: String,
    url: String,
    clock: SharedClock,
    data: Mutex<Data>,
}

/// A running stand-in for GitHub's REST API; stops when dropped.
#[allow(missing_debug_implementations)]
pub struct FakeGithub {
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeGithub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeGithub {
    /// Starts the fake for GitHub App `app_id` on a free loopback port, with a fresh RSA key pair;
    /// `clock` is the time it judges JWTs and tokens by (the broker's test clock).
    pub async fn start(app_id: u64, clock: SharedClock) -> Self {
        // Parse the description now, not in the middle of the first request.
        let _ = description();
        let pair = RsaKeyPair::generate(KeySize::Rsa2048).expect("generate the App's key");
        let pkcs8 = pair.as_der().expect("PKCS#8").as_ref().to_vec();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let inner = Arc::new(Inner {
            app_id,
            public_key: pair.public_key().as_ref().to_vec(),
            private_key_pkcs1_pem: pem("RSA PRIVATE KEY", &pkcs1_of(&pkcs8)),
            private_key_pkcs8_pem: pem("PRIVATE KEY", &pkcs8),
            url,
            clock,
            data: Mutex::new(Data { next_id: 1_000_001, ..Data::default() }),
        });
        let app = Router::new().fallback(handle).with_state(Arc::clone(&inner));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { inner, task }
    }

    /// The API's base URL (`api_url`), `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// The App's private key as GitHub hands it out (PKCS#1 PEM).
    pub fn private_key_pem(&self) -> &str {
        &self.inner.private_key_pkcs1_pem
    }

    /// The same key as PKCS#8 PEM.
    pub fn private_key_pkcs8_pem(&self) -> &str {
        &self.inner.private_key_pkcs8_pem
    }

    fn data(&self) -> std::sync::MutexGuard<'_, Data> {
        self.inner.data.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Installs the App as `installation`, covering `repos` (`owner/name`).
    pub fn install(&self, installation: u64, repos: &[&str]) {
        self.data().installations.insert(installation, repos.iter().map(|r| r.to_ascii_lowercase()).collect());
    }

    /// Adds pull request `number` to `repo` changing `files`; a rename is written `old => new`.
    pub fn add_pull_request(&self, repo: &str, number: u64, files: &[&str], info: PrInfo) {
        let files = files
            .iter()
            .map(|f| match f.split_once(" => ") {
                Some((old, new)) => (new.to_owned(), Some(old.to_owned())),
                None => ((*f).to_owned(), None),
            })
            .collect();
        let mut data = self.data();
        let pulls = data.pulls.entry(repo.to_ascii_lowercase()).or_default();
        pulls.retain(|pr| pr.number != number);
        pulls.push(PullRequest { number, info, files });
    }

    /// Makes commit `sha` of `repo` belong to pull request `number`.
    pub fn associate_commit(&self, repo: &str, sha: &str, number: u64) {
        self.data().commits.entry((repo.to_ascii_lowercase(), sha.to_owned())).or_default().push(number);
    }

    /// The statuses set on `sha` of `repo` (the request bodies), oldest first.
    pub fn statuses(&self, repo: &str, sha: &str) -> Vec<Value> {
        self.data().statuses.get(&(repo.to_ascii_lowercase(), sha.to_owned())).cloned().unwrap_or_default()
    }

    /// The comments on issue or pull request `issue` of `repo` that are still there, oldest first.
    pub fn comments(&self, repo: &str, issue: u64) -> Vec<Comment> {
        let repo = repo.to_ascii_lowercase();
        self.data()
            .comments
            .iter()
            .filter(|(_, c)| c.repo == repo && c.issue == issue && !c.deleted)
            .map(|(id, c)| Comment { id: *id, body: c.body.clone() })
            .collect()
    }

    /// Deletes comment `id`, as a person on GitHub would.
    pub fn delete_comment(&self, id: u64) {
        if let Some((_, comment)) = self.data().comments.iter_mut().find(|(i, _)| *i == id) {
            comment.deleted = true;
        }
    }

    /// Every request received, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.data().requests.clone()
    }

    /// The requests whose path starts with `prefix`.
    pub fn requests_to(&self, prefix: &str) -> Vec<RecordedRequest> {
        self.requests().into_iter().filter(|r| r.path.starts_with(prefix)).collect()
    }

    /// Every request GitHub would have refused.
    pub fn violations(&self) -> Vec<Violation> {
        self.data().violations.clone()
    }

    /// Fails the next `times` well-formed requests whose path starts with `path_prefix` with
    /// `status`, as GitHub does (a 403 or 429 as a rate limit).
    pub fn fail_next(&self, path_prefix: &str, status: u16, times: usize) {
        self.data().failures.push(Failure { path_prefix: path_prefix.to_owned(), status, remaining: times });
    }

    /// Revokes every token issued for `installation` (as GitHub may before they expire).
    pub fn revoke_tokens(&self, installation: u64) {
        self.data().tokens.retain(|_, token| token.installation != installation);
    }

    /// A token for `installation`, as if fetched with the App JWT (for hand-made requests).
    pub fn issue_token(&self, installation: u64) -> String {
        let now = self.inner.clock.now();
        issue(&mut self.data(), installation, now, installation_permissions())
    }
}

/// What is wrong with a request: every violation, and the answer to the first that GitHub refuses.
#[derive(Default)]
struct Findings {
    violations: Vec<String>,
    answer: Option<Response>,
}

impl Findings {
    /// A violation GitHub refuses with `status` (the first one decides the answer).
    fn refuse(&mut self, status: u16, message: String) {
        if self.answer.is_none() {
            self.answer = Some(error(status, message.lines().next().unwrap_or_default()));
        }
        self.violations.push(message);
    }

    /// A violation of what GitHub documents, which it answers anyway.
    fn note(&mut self, message: String) {
        self.violations.push(message);
    }
}

/// The headers, in the order GitHub looks at them: `User-Agent` (403 without), the credential
/// (401), `X-GitHub-Api-Version` (400 if unsupported), `Accept`.
fn check_headers(headers: &HeaderMap, auth_error: Option<String>, findings: &mut Findings) {
    if headers.get("user-agent").is_none_or(|v| v.is_empty()) {
        findings.refuse(
            403,
            "Request forbidden by administrative rules. Please make sure your request has a User-Agent header".into(),
        );
    }
    if let Some(message) = auth_error {
        findings.refuse(401, message);
    }
    match headers.get("x-github-api-version").and_then(|v| v.to_str().ok()) {
        Some(v) if SUPPORTED_API_VERSIONS.contains(&v) => {}
        Some(v) => findings.refuse(400, format!("API version {v:?} is not supported.")),
        None => findings.note("no X-GitHub-Api-Version header (GitHub documents sending it)".into()),
    }
    let accept = headers.get("accept").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let github_media_type =
        accept.split(',').map(str::trim).any(|a| a.starts_with("application/vnd.github") || a == "application/json");
    if !github_media_type {
        findings.note(format!("Accept {accept:?} is not a GitHub media type (application/vnd.github+json)"));
    }
}

/// Records the request, checks it (headers, operation, parameters, body, credential), then
/// answers: the first refusal, an injected failure, or the operation's behaviour.
async fn handle(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut data = inner.data.lock().unwrap_or_else(PoisonError::into_inner);
    let path = uri.path().to_owned();
    let query: Vec<(String, String)> = uri
        .query()
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').map(|(n, v)| (n.to_owned(), v.to_owned())).unwrap_or((p.to_owned(), String::new())))
        .collect();
    let json_body = (!body.is_empty()).then(|| serde_json::from_slice::<Value>(&body));
    let now = inner.clock.now();
    let (auth, auth_error) = authenticate(&inner, &data, &headers, &path, now);
    data.requests.push(RecordedRequest {
        method: method.to_string(),
        path: path.clone(),
        query: uri.query().map(str::to_owned),
        body: json_body.as_ref().map(|b| match b {
            Ok(v) => v.clone(),
            Err(_) => Value::String(String::from_utf8_lossy(&body).into_owned()),
        }),
        auth: auth.clone(),
    });
    let mut findings = Findings::default();
    check_headers(&headers, auth_error, &mut findings);
    let spec = description();
    let matched = match spec.find(method.as_str(), &path) {
        Ok(matched) => Some(matched),
        Err(message) => {
            findings.refuse(404, format!("Not Found: {message}"));
            None
        }
    };
    let body_value = match json_body {
        None => None,
        Some(Ok(value)) => Some(value),
        Some(Err(e)) => {
            findings.refuse(400, format!("Problems parsing JSON: {e}"));
            None
        }
    };
    if !body.is_empty() && !headers.get("content-type").is_some_and(|v| v.as_bytes().starts_with(b"application/json")) {
        findings.note("a JSON body without Content-Type: application/json".into());
    }
    if let Some(matched) = &matched {
        let errors = spec.check_request(matched, &query, body_value.as_ref());
        if !errors.is_empty() {
            findings.refuse(422, format!("Invalid request.\n\n{}", errors.join("\n")));
        }
    }
    // Repository coverage and permissions of an installation token.
    if findings.answer.is_none()
        && let (Auth::Installation(installation), Some(matched)) = (&auth, &matched)
        && let Some(message) = check_access(&data, &headers, *installation, matched)
    {
        findings.refuse(if message.starts_with("Not Found") { 404 } else { 403 }, message);
    }
    for message in findings.violations {
        data.violations.push(Violation { method: method.to_string(), path: path.clone(), message });
    }
    if let Some(answer) = findings.answer {
        return answer;
    }
    let Some(matched) = matched else { return error(404, "Not Found") };
    if let Some(failure) = data.failures.iter_mut().find(|f| f.remaining > 0 && path.starts_with(&f.path_prefix)) {
        failure.remaining -= 1;
        return injected(failure.status);
    }
    let (status, body) =
        respond(&inner, &mut data, method.as_str(), &matched, &query, body_value.unwrap_or(Value::Null), &auth, now);
    if (200..300).contains(&status) {
        let errors = spec.check_response(&matched, status, &body);
        for message in errors {
            data.violations.push(Violation {
                method: method.to_string(),
                path: path.clone(),
                message: format!("the fake's own answer: {message}"),
            });
        }
    }
    let mut response =
        (StatusCode::from_u16(status).unwrap_or(StatusCode::OK), axum::Json(body.clone())).into_response();
    if let Some(link) = body_link(&inner, &matched, &query, &data) {
        response.headers_mut().insert("link", link.parse().expect("a header value"));
    }
    response
}
