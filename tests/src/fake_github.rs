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

pub mod openapi;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_2048_8192_SHA256, RsaKeyPair, UnparsedPublicKey};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use keyward_broker::clock::{SharedClock, rfc3339};
use serde_json::{Value, json};

use openapi::{Description, Matched, description};

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

fn issue(data: &mut Data, installation: u64, now: i64, permissions: Value) -> String {
    let mut random = [0_u8; 27];
    aws_lc_rs::rand::fill(&mut random).expect("random");
    let token = format!("ghs_{}", URL_SAFE_NO_PAD.encode(random).replace(['-', '_'], "0"));
    data.tokens
        .insert(token.clone(), IssuedToken { installation, expires_at: now + TOKEN_LIFETIME_SECONDS, permissions });
    token
}

/// An answer in GitHub's error format.
fn error(status: u16, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(json!({"message": message, "documentation_url": "https://docs.github.com/rest"})))
        .into_response()
}

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
    let mut violations = Vec::new();
    let mut answer: Option<Response> = None;
    let refuse = |violations: &mut Vec<String>, status: u16, message: String, answer: &mut Option<Response>| {
        if answer.is_none() {
            *answer = Some(error(status, message.lines().next().unwrap_or_default()));
        }
        violations.push(message);
    };

    // Headers, in the order GitHub looks at them.
    if headers.get("user-agent").is_none_or(|v| v.is_empty()) {
        refuse(
            &mut violations,
            403,
            "Request forbidden by administrative rules. Please make sure your request has a User-Agent header".into(),
            &mut answer,
        );
    }
    if let Some(message) = auth_error {
        refuse(&mut violations, 401, message, &mut answer);
    }
    match headers.get("x-github-api-version").and_then(|v| v.to_str().ok()) {
        Some(v) if SUPPORTED_API_VERSIONS.contains(&v) => {}
        Some(v) => refuse(&mut violations, 400, format!("API version {v:?} is not supported."), &mut answer),
        None => violations.push("no X-GitHub-Api-Version header (GitHub documents sending it)".into()),
    }
    let accept = headers.get("accept").and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !accept.split(',').any(|a| {
        let a = a.trim();
        a.starts_with("application/vnd.github") || a == "application/json"
    }) {
        violations.push(format!("Accept {accept:?} is not a GitHub media type (application/vnd.github+json)"));
    }
    let spec = description();
    let matched = match spec.find(method.as_str(), &path) {
        Ok(matched) => Some(matched),
        Err(message) => {
            refuse(&mut violations, 404, format!("Not Found: {message}"), &mut answer);
            None
        }
    };
    let body_value = match json_body {
        None => None,
        Some(Ok(value)) => Some(value),
        Some(Err(e)) => {
            refuse(&mut violations, 400, format!("Problems parsing JSON: {e}"), &mut answer);
            None
        }
    };
    if !body.is_empty() && !headers.get("content-type").is_some_and(|v| v.as_bytes().starts_with(b"application/json")) {
        violations.push("a JSON body without Content-Type: application/json".into());
    }
    if let Some(matched) = &matched {
        let errors = spec.check_request(matched, &query, body_value.as_ref());
        if !errors.is_empty() {
            refuse(&mut violations, 422, format!("Invalid request.\n\n{}", errors.join("\n")), &mut answer);
        }
    }
    // Repository coverage and permissions of an installation token.
    if answer.is_none()
        && let (Auth::Installation(installation), Some(matched)) = (&auth, &matched)
        && let Some(message) = check_access(&data, &headers, *installation, matched)
    {
        let status = if message.starts_with("Not Found") { 404 } else { 403 };
        refuse(&mut violations, status, message, &mut answer);
    }
    for message in violations {
        data.violations.push(Violation { method: method.to_string(), path: path.clone(), message });
    }
    if let Some(answer) = answer {
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

/// The answer to an injected failure, as GitHub words it.
fn injected(status: u16) -> Response {
    let mut response = match status {
        403 => error(403, "API rate limit exceeded for installation. (fake_github: injected)"),
        429 => error(429, "You have exceeded a secondary rate limit. (fake_github: injected)"),
        422 => error(422, "Validation Failed (fake_github: injected)"),
        s => error(s, &format!("Server Error (fake_github: injected {s})")),
    };
    if matches!(status, 403 | 429) {
        let headers = response.headers_mut();
        headers.insert("x-ratelimit-remaining", "0".parse().expect("header"));
        headers.insert("retry-after", "60".parse().expect("header"));
    }
    response
}

/// Who the `Authorization` header proves to be, or why it proves nothing (a 401).
fn authenticate(inner: &Inner, data: &Data, headers: &HeaderMap, path: &str, now: i64) -> (Auth, Option<String>) {
    let Some(value) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        return (Auth::None, Some("Requires authentication".into()));
    };
    let credential = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("token ")).unwrap_or_default();
    let result = if path == "/app" || path.starts_with("/app/") {
        check_jwt(inner, credential, now).map(Auth::App)
    } else {
        match data.tokens.get(credential) {
            Some(token) if now < token.expires_at => Ok(Auth::Installation(token.installation)),
            Some(_) => Err("Bad credentials (the installation token expired)".to_owned()),
            None => Err("Bad credentials".to_owned()),
        }
    };
    match result {
        Ok(auth) => (auth, None),
        Err(message) => (Auth::Invalid(message.clone()), Some(message)),
    }
}

/// The App ID an App JWT proves, checked as GitHub does.
fn check_jwt(inner: &Inner, jwt: &str, now: i64) -> Result<u64, String> {
    let undecodable = || "A JSON web token could not be decoded".to_owned();
    let parts: Vec<&str> = jwt.split('.').collect();
    let [header, claims, signature] = parts.as_slice() else { return Err(undecodable()) };
    let decode = |part: &str| -> Result<Value, String> {
        let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| undecodable())?;
        serde_json::from_slice(&bytes).map_err(|_| undecodable())
    };
    let (header, claims) = (decode(header)?, decode(claims)?);
    if header["alg"] != "RS256" {
        return Err(format!("A JSON web token must be signed with RS256, not {}", header["alg"]));
    }
    let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| undecodable())?;
    UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &inner.public_key)
        .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
        .map_err(|_| "A JSON web token could not be decoded (bad signature)".to_owned())?;
    let issuer = match &claims["iss"] {
        Value::String(s) => s.parse::<u64>().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    };
    if issuer != Some(inner.app_id) {
        return Err(format!("Integration not found (iss {})", claims["iss"]));
    }
    let (Some(iat), Some(exp)) = (claims["iat"].as_i64(), claims["exp"].as_i64()) else {
        return Err("'Issued at' and 'Expiration time' claims must be integers".into());
    };
    if iat > now {
        return Err("'Issued at' claim ('iat') must be an Integer representing a time in the past.".into());
    }
    if exp <= now {
        return Err("'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires.".into());
    }
    if exp - iat > 600 {
        return Err("'Expiration time' claim ('exp') is too far in the future.".into());
    }
    Ok(inner.app_id)
}

/// Why installation `installation` may not make this repository request, if it may not.
fn check_access(data: &Data, headers: &HeaderMap, installation: u64, matched: &Matched<'_>) -> Option<String> {
    let owner = matched.params.iter().find(|(n, _)| n == "owner")?;
    let repo = format!("{}/{}", owner.1, matched.param("repo")).to_ascii_lowercase();
    let covered = data.installations.get(&installation).is_some_and(|repos| repos.contains(&repo));
    if !covered {
        return Some(format!("Not Found: installation {installation} does not cover {repo}"));
    }
    let credential = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let credential =
        credential.strip_prefix("Bearer ").or_else(|| credential.strip_prefix("token ")).unwrap_or_default();
    let permissions = data.tokens.get(credential).map(|t| &t.permissions)?;
    let has = |name: &str, write: bool| match permissions[name].as_str() {
        Some("write") => true,
        Some("read") => !write,
        _ => false,
    };
    let allowed = match matched.template {
        "/repos/{owner}/{repo}/statuses/{sha}" => has("statuses", true),
        "/repos/{owner}/{repo}/issues/{issue_number}/comments"
        | "/repos/{owner}/{repo}/issues/comments/{comment_id}" => has("pull_requests", true) || has("issues", true),
        _ => has("pull_requests", false) || has("contents", false),
    };
    (!allowed).then(|| format!("Resource not accessible by integration (permissions {permissions})"))
}

fn query_number(query: &[(String, String)], name: &str, default: usize) -> usize {
    query.iter().find(|(n, _)| n == name).and_then(|(_, v)| v.parse().ok()).unwrap_or(default)
}

/// The `Link` header of a paginated answer with a next page.
fn body_link(inner: &Inner, matched: &Matched<'_>, query: &[(String, String)], data: &Data) -> Option<String> {
    if matched.template != "/repos/{owner}/{repo}/pulls/{pull_number}/files" {
        return None;
    }
    let pr = find_pull(data, matched)?;
    let per_page = query_number(query, "per_page", 30).clamp(1, 100);
    let page = query_number(query, "page", 1).max(1);
    let last = pr.files.len().div_ceil(per_page).max(1);
    (page < last).then(|| {
        let base = format!("{}/repos/{}/{}/pulls/{}/files", inner.url, matched.param("owner"), matched.param("repo"), pr.number);
        format!(
            "<{base}?per_page={per_page}&page={}>; rel=\"next\", <{base}?per_page={per_page}&page={last}>; rel=\"last\"",
            page + 1
        )
    })
}

fn repo_key(matched: &Matched<'_>) -> String {
    format!("{}/{}", matched.param("owner"), matched.param("repo")).to_ascii_lowercase()
}

fn find_pull<'a>(data: &'a Data, matched: &Matched<'_>) -> Option<&'a PullRequest> {
    let number: u64 = matched.param("pull_number").parse().ok()?;
    data.pulls.get(&repo_key(matched))?.iter().find(|pr| pr.number == number)
}

/// The status and body of a well-formed, authorised request.
#[allow(clippy::too_many_arguments)]
fn respond(
    inner: &Inner,
    data: &mut Data,
    method: &str,
    matched: &Matched<'_>,
    query: &[(String, String)],
    body: Value,
    auth: &Auth,
    now: i64,
) -> (u16, Value) {
    let spec = description();
    let not_found = || (404, json!({"message": "Not Found", "documentation_url": "https://docs.github.com/rest"}));
    let repo = repo_key(matched);
    let html = format!("https://github.com/{repo}");
    let api = format!("{}/repos/{repo}", inner.url);
    match (method, matched.template) {
        ("POST", "/app/installations/{installation_id}/access_tokens") => {
            let Ok(installation) = matched.param("installation_id").parse::<u64>() else { return not_found() };
            if !data.installations.contains_key(&installation) || *auth != Auth::App(inner.app_id) {
                return not_found();
            }
            let permissions = match &body["permissions"] {
                Value::Object(p) if !p.is_empty() => Value::Object(p.clone()),
                _ => installation_permissions(),
            };
            let token = issue(data, installation, now, permissions.clone());
            let mut answer = spec.example("installation-token");
            answer["token"] = token.into();
            answer["expires_at"] = rfc3339(now + TOKEN_LIFETIME_SECONDS).into();
            answer["permissions"] = permissions;
            answer["repository_selection"] = "selected".into();
            if let Some(fields) = answer.as_object_mut() {
                fields.remove("repositories");
            }
            (201, answer)
        }
        ("GET", "/repos/{owner}/{repo}/pulls/{pull_number}/files") => {
            let Some(pr) = find_pull(data, matched) else { return not_found() };
            let per_page = query_number(query, "per_page", 30).clamp(1, 100);
            let page = query_number(query, "page", 1).max(1);
            let template = spec.example("diff-entry-items")[0].clone();
            let entries: Vec<Value> = pr
                .files
                .iter()
                .skip((page - 1) * per_page)
                .take(per_page)
                .map(|(filename, previous)| {
                    let mut entry = template.clone();
                    entry["filename"] = filename.as_str().into();
                    entry["blob_url"] = format!("{html}/blob/{}/{filename}", pr.info.head_sha).into();
                    entry["raw_url"] = format!("{html}/raw/{}/{filename}", pr.info.head_sha).into();
                    entry["contents_url"] = format!("{api}/contents/{filename}?ref={}", pr.info.head_sha).into();
                    match previous {
                        Some(previous) => {
                            entry["status"] = "renamed".into();
                            entry["previous_filename"] = previous.as_str().into();
                        }
                        None => {
                            entry["status"] = "modified".into();
                            if let Some(fields) = entry.as_object_mut() {
                                fields.remove("previous_filename");
                            }
                        }
                    }
                    entry
                })
                .collect();
            (200, Value::Array(entries))
        }
        ("GET", "/repos/{owner}/{repo}/commits/{commit_sha}/pulls") => {
            let numbers =
                data.commits.get(&(repo.clone(), matched.param("commit_sha").to_owned())).cloned().unwrap_or_default();
            let template = spec.example("pull-request-simple-items")[0].clone();
            let pulls = data.pulls.get(&repo);
            let items = numbers
                .iter()
                .filter_map(|n| pulls.and_then(|p| p.iter().find(|pr| pr.number == *n)))
                .map(|pr| pull_request_simple(&template, pr, &html, now))
                .collect();
            (200, Value::Array(items))
        }
        ("POST", "/repos/{owner}/{repo}/statuses/{sha}") => {
            let sha = matched.param("sha").to_owned();
            data.statuses.entry((repo.clone(), sha.clone())).or_default().push(body.clone());
            data.next_id += 1;
            let mut answer = spec.example("status");
            answer["id"] = data.next_id.into();
            answer["url"] = format!("{api}/statuses/{sha}").into();
            answer["state"] = body["state"].clone();
            answer["description"] = body.get("description").cloned().unwrap_or(Value::Null);
            answer["target_url"] = body.get("target_url").cloned().unwrap_or(Value::Null);
            answer["context"] = body.get("context").cloned().unwrap_or_else(|| "default".into());
            answer["created_at"] = rfc3339(now).into();
            answer["updated_at"] = rfc3339(now).into();
            (201, answer)
        }
        ("POST", "/repos/{owner}/{repo}/issues/{issue_number}/comments") => {
            let Ok(issue) = matched.param("issue_number").parse::<u64>() else { return not_found() };
            if !data.pulls.get(&repo).is_some_and(|p| p.iter().any(|pr| pr.number == issue)) {
                return not_found();
            }
            data.next_id += 1;
            let id = data.next_id;
            let text = body["body"].as_str().unwrap_or_default().to_owned();
            data.comments.push((id, StoredComment { repo: repo.clone(), issue, body: text.clone(), deleted: false }));
            (201, issue_comment(spec, id, issue, &text, &html, &api, now))
        }
        ("PATCH", "/repos/{owner}/{repo}/issues/comments/{comment_id}") => {
            let Ok(id) = matched.param("comment_id").parse::<u64>() else { return not_found() };
            let text = body["body"].as_str().unwrap_or_default().to_owned();
            let Some((_, comment)) = data.comments.iter_mut().find(|(i, c)| *i == id && c.repo == repo && !c.deleted)
            else {
                return not_found();
            };
            comment.body = text.clone();
            let issue = comment.issue;
            (200, issue_comment(spec, id, issue, &text, &html, &api, now))
        }
        _ => {
            let message = format!("fake_github does not implement {method} {}", matched.template);
            data.violations.push(Violation {
                method: method.to_owned(),
                path: matched.template.to_owned(),
                message: message.clone(),
            });
            (501, json!({"message": message}))
        }
    }
}

fn pull_request_simple(template: &Value, pr: &PullRequest, html: &str, now: i64) -> Value {
    let mut item = template.clone();
    let info = &pr.info;
    item["number"] = pr.number.into();
    item["title"] = info.title.as_str().into();
    item["html_url"] = format!("{html}/pull/{}", pr.number).into();
    item["user"]["login"] = info.author.as_str().into();
    item["base"]["ref"] = info.base_ref.as_str().into();
    item["head"]["ref"] = info.head_ref.as_str().into();
    item["head"]["sha"] = info.head_sha.as_str().into();
    item["draft"] = info.draft.into();
    item["state"] = if info.merged { "closed" } else { "open" }.into();
    item["merged_at"] = if info.merged { rfc3339(now).into() } else { Value::Null };
    item["closed_at"] = item["merged_at"].clone();
    // The description's example team lacks the `type` its schema requires; none is requested here.
    item["requested_teams"] = json!([]);
    let label = template["labels"][0].clone();
    item["labels"] = info
        .labels
        .iter()
        .map(|name| {
            let mut label = label.clone();
            label["name"] = name.as_str().into();
            label
        })
        .collect();
    item
}

fn issue_comment(spec: &Description, id: u64, issue: u64, body: &str, html: &str, api: &str, now: i64) -> Value {
    let mut answer = spec.example("issue-comment");
    answer["id"] = id.into();
    answer["body"] = body.into();
    answer["url"] = format!("{api}/issues/comments/{id}").into();
    answer["html_url"] = format!("{html}/pull/{issue}#issuecomment-{id}").into();
    answer["issue_url"] = format!("{api}/issues/{issue}").into();
    answer["created_at"] = rfc3339(now).into();
    answer["updated_at"] = rfc3339(now).into();
    answer
}

/// PEM text of `der` under `label`.
fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let lines: Vec<&str> =
        body.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).expect("base64 is ASCII")).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

/// One DER element at the start of `der`: (tag, contents, rest).
fn element(der: &[u8]) -> (u8, &[u8], &[u8]) {
    let (&tag, rest) = der.split_first().expect("a DER tag");
    let (&first, rest) = rest.split_first().expect("a DER length");
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let (bytes, rest) = rest.split_at(usize::from(first & 0x7f));
        (bytes.iter().fold(0_usize, |n, b| n << 8 | usize::from(*b)), rest)
    };
    let (contents, rest) = rest.split_at(len);
    (tag, contents, rest)
}

/// The PKCS#1 `RSAPrivateKey` a PKCS#8 `PrivateKeyInfo` wraps in its OCTET STRING (RFC 5208:
/// SEQUENCE { version, algorithm, privateKey OCTET STRING, … }).
fn pkcs1_of(pkcs8: &[u8]) -> Vec<u8> {
    let (_, info, _) = element(pkcs8);
    let (_, _version, rest) = element(info);
    let (_, _algorithm, rest) = element(rest);
    let (tag, key, _) = element(rest);
    assert_eq!(tag, 0x04, "PrivateKeyInfo.privateKey is an OCTET STRING");
    key.to_vec()
}
