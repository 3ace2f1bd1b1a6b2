//! The slice of GitHub's REST API the broker calls, as a GitHub App installation: a pull request's
//! changed files, the pull requests a commit belongs to, commit statuses and issue comments.
//!
//! Every call authenticates with an installation access token, exchanged for the App JWT
//! ([`super::app`]) with least privilege (`contents: read`, `pull_requests: write`,
//! `statuses: write`) and cached per installation until 5 minutes before GitHub says it expires.
//! Repository names come from webhook payloads, so they are checked ([`RepoName`]) before they
//! become path segments. Errors say whether a retry can help ([`ApiError::is_transient`]) and never
//! carry a token or the JWT.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use keyward_proto::secret::Secret;
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::GithubSettings;
use super::app::{AppKey, KeyError};
use crate::clock::SharedClock;

/// The REST API version every request asks for.
pub const API_VERSION: &str = "2022-11-28";

/// A cached installation token is replaced this long before GitHub's `expires_at`.
pub const TOKEN_REFRESH_MARGIN_SECONDS: i64 = 300;

/// GitHub's limit on a commit status's description, in characters.
pub const STATUS_DESCRIPTION_MAX_CHARS: usize = 140;

/// Files per page when listing a pull request's files (GitHub's maximum).
const FILES_PER_PAGE: usize = 100;

/// GitHub lists at most 3000 files of a pull request: 30 full pages.
const MAX_FILE_PAGES: usize = 30;

/// The longest owner or repository name accepted (GitHub: 39 for owners, 100 for repositories).
const MAX_NAME_LEN: usize = 100;

/// The longest error message from GitHub kept in an [`ApiError`].
const MAX_MESSAGE_CHARS: usize = 300;

/// Why a GitHub API call failed. Never contains a token or the JWT.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The App has no installation with this ID (GitHub answered 404 for its access token).
    #[error("GitHub App installation {0} does not exist (uninstalled?)")]
    UnknownInstallation(u64),
    /// The resource does not exist (or the installation cannot see it).
    #[error("not found on GitHub")]
    NotFound,
    /// Worth retrying: the network, a timeout, a 5xx, 429 or a rate limit.
    #[error("GitHub is unavailable: {0}")]
    Transient(String),
    /// GitHub refused the request and will keep refusing it.
    #[error("GitHub refused the request ({status}): {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// GitHub's `message`, bounded, without control characters.
        message: String,
    },
    /// The App's private key cannot be used.
    #[error("{0}")]
    Key(String),
    /// Not a repository name (`owner/name`) that can be used in a request path.
    #[error("not a GitHub repository name: {0}")]
    InvalidRepository(String),
    /// Not a commit SHA that can be used in a request path.
    #[error("not a commit SHA: {0}")]
    InvalidSha(String),
    /// GitHub's answer is not the documented shape.
    #[error("unexpected answer from GitHub: {0}")]
    Response(String),
}

impl ApiError {
    /// Whether retrying the same call later can succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient(_))
    }
}

impl From<KeyError> for ApiError {
    fn from(error: KeyError) -> Self {
        Self::Key(error.to_string())
    }
}

/// A repository as `owner/name`, checked so that neither part can inject a path segment: only
/// `[A-Za-z0-9._-]`, not `.` or `..`, at most 100 characters each.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RepoName {
    owner: String,
    name: String,
}

impl RepoName {
    /// Parses a payload's `full_name`.
    pub fn parse(full_name: &str) -> Result<Self, ApiError> {
        let invalid = || ApiError::InvalidRepository(bounded(full_name, 2 * MAX_NAME_LEN + 1));
        let (owner, name) = full_name.split_once('/').ok_or_else(invalid)?;
        let valid = |part: &str| {
            !part.is_empty()
                && part.len() <= MAX_NAME_LEN
                && part != "."
                && part != ".."
                && part.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        };
        if !valid(owner) || !valid(name) {
            return Err(invalid());
        }
        Ok(Self { owner: owner.to_owned(), name: name.to_owned() })
    }

    /// The owner (user or organisation).
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The repository's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.owner, self.name)
    }
}

/// A pull request as `GET /repos/{owner}/{repo}/commits/{sha}/pulls` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequestSummary {
    /// Its number.
    pub number: u64,
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
    /// Its page on GitHub (`html_url`).
    pub url: String,
    /// Whether it was merged (`merged_at` is set).
    pub merged: bool,
    /// The commit its merge made (or, before the merge, GitHub's test merge), if any.
    pub merge_commit_sha: Option<String>,
    /// Whether its head is in another repository (a fork; also when that fork was deleted).
    pub fork: bool,
    /// Whether it is a draft.
    pub draft: bool,
    /// Its labels' names.
    pub labels: Vec<String>,
}

/// A commit status's state (GitHub's four).
pub use crate::vcs::report::StatusState;

/// A commit status to set (`keyward/<stack>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitStatus {
    /// Its state.
    pub state: StatusState,
    /// Its label, e.g. `keyward/network`.
    pub context: String,
    /// A short description (cut to GitHub's 140 characters when sent).
    pub description: String,
    /// Where it links to (the run's page).
    pub target_url: Option<String>,
}

/// The GitHub REST API client of one GitHub App. Cheap to clone.
#[derive(Clone)]
pub struct GithubApi {
    inner: Arc<Inner>,
}

struct Inner {
    app: AppKey,
    api_url: String,
    client: reqwest::Client,
    clock: SharedClock,
    /// Per installation: its cached token, behind an async lock so concurrent calls fetch one
    /// token between them rather than one each.
    tokens: Mutex<HashMap<u64, TokenSlot>>,
}

type TokenSlot = Arc<tokio::sync::Mutex<Option<CachedToken>>>;

struct CachedToken {
    token: Secret,
    /// When to stop using it: `expires_at` minus the margin.
    refresh_at: i64,
}

impl fmt::Debug for GithubApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GithubApi")
            .field("app_id", &self.inner.app.app_id())
            .field("api_url", &self.inner.api_url)
            .finish_non_exhaustive()
    }
}

impl GithubApi {
    /// A client for the App in `settings`, its key parsed now (a bad key is [`ApiError::Key`]).
    /// Token lifetimes are judged by `clock`.
    pub fn new(settings: &GithubSettings, clock: SharedClock) -> Result<Self, ApiError> {
        let app = AppKey::parse(settings.app_id, &settings.private_key)?;
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("application/vnd.github+json"));
        headers.insert("x-github-api-version", HeaderValue::from_static(API_VERSION));
        let client = reqwest::Client::builder()
            .user_agent(concat!("keyward/", env!("CARGO_PKG_VERSION")))
            .default_headers(headers)
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(20))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ApiError::Transient(format!("cannot build the HTTP client: {e}")))?;
        let api_url = settings.api_url.trim_end_matches('/').to_owned();
        Ok(Self { inner: Arc::new(Inner { app, api_url, client, clock, tokens: Mutex::new(HashMap::new()) }) })
    }

    /// The files a pull request changes: each file's `filename`, and its `previous_filename` for a
    /// rename. Follows pages until a short one (GitHub lists at most 3000 files).
    pub async fn pull_request_files(
        &self,
        installation: u64,
        repo: &RepoName,
        number: u64,
    ) -> Result<Vec<String>, ApiError> {
        #[derive(Deserialize)]
        struct DiffEntry {
            filename: String,
            previous_filename: Option<String>,
        }
        let path = format!("/repos/{}/{}/pulls/{number}/files", repo.owner, repo.name);
        let mut files = Vec::new();
        for page in 1..=MAX_FILE_PAGES {
            let query = [("per_page", FILES_PER_PAGE.to_string()), ("page", page.to_string())];
            let entries: Vec<DiffEntry> =
                self.installation_call(installation, Method::GET, &path, &query, None).await?;
            let full = entries.len() >= FILES_PER_PAGE;
            for entry in entries {
                files.push(entry.filename);
                files.extend(entry.previous_filename);
            }
            if !full {
                break;
            }
        }
        Ok(files)
    }

    /// The pull requests `sha` belongs to (on a push after a merge: the merged one).
    pub async fn pulls_of_commit(
        &self,
        installation: u64,
        repo: &RepoName,
        sha: &str,
    ) -> Result<Vec<PullRequestSummary>, ApiError> {
        #[derive(Deserialize)]
        struct Simple {
            number: u64,
            title: String,
            user: Option<User>,
            base: Branch,
            head: Branch,
            html_url: String,
            merged_at: Option<String>,
            #[serde(default)]
            merge_commit_sha: Option<String>,
            #[serde(default)]
            draft: bool,
            #[serde(default)]
            labels: Vec<Label>,
        }
        #[derive(Deserialize)]
        struct User {
            login: String,
        }
        #[derive(Deserialize)]
        struct Branch {
            #[serde(rename = "ref")]
            name: String,
            sha: String,
            /// `null` when the head's fork was deleted.
            #[serde(default)]
            repo: Option<Repo>,
        }
        #[derive(Deserialize)]
        struct Repo {
            full_name: String,
        }
        #[derive(Deserialize)]
        struct Label {
            name: String,
        }
        let sha = checked_sha(sha)?;
        let path = format!("/repos/{}/{}/commits/{sha}/pulls", repo.owner, repo.name);
        let query = [("per_page", "100".to_owned())];
        let pulls: Vec<Simple> = self.installation_call(installation, Method::GET, &path, &query, None).await?;
        Ok(pulls
            .into_iter()
            .map(|pr| PullRequestSummary {
                number: pr.number,
                title: pr.title,
                author: pr.user.map(|u| u.login).unwrap_or_default(),
                fork: match (&pr.head.repo, &pr.base.repo) {
                    (Some(head), Some(base)) => !head.full_name.eq_ignore_ascii_case(&base.full_name),
                    _ => true,
                },
                base_ref: pr.base.name,
                head_ref: pr.head.name,
                head_sha: pr.head.sha,
                url: pr.html_url,
                merged: pr.merged_at.is_some(),
                merge_commit_sha: pr.merge_commit_sha,
                draft: pr.draft,
                labels: pr.labels.into_iter().map(|l| l.name).collect(),
            })
            .collect())
    }

    /// Sets a commit status on `sha`.
    pub async fn set_status(
        &self,
        installation: u64,
        repo: &RepoName,
        sha: &str,
        status: &CommitStatus,
    ) -> Result<(), ApiError> {
        let sha = checked_sha(sha)?;
        let path = format!("/repos/{}/{}/statuses/{sha}", repo.owner, repo.name);
        let mut body = serde_json::json!({
            "state": status.state.as_str(),
            "context": status.context,
            "description": status.description.chars().take(STATUS_DESCRIPTION_MAX_CHARS).collect::<String>(),
        });
        if let (Some(url), Some(fields)) = (&status.target_url, body.as_object_mut()) {
            fields.insert("target_url".to_owned(), url.clone().into());
        }
        let _: serde::de::IgnoredAny =
            self.installation_call(installation, Method::POST, &path, &[], Some(&body)).await?;
        Ok(())
    }

    /// Comments `body` on issue or pull request `issue`; returns the comment's ID.
    pub async fn create_comment(
        &self,
        installation: u64,
        repo: &RepoName,
        issue: u64,
        body: &str,
    ) -> Result<u64, ApiError> {
        #[derive(Deserialize)]
        struct Created {
            id: u64,
        }
        let path = format!("/repos/{}/{}/issues/{issue}/comments", repo.owner, repo.name);
        let body = serde_json::json!({ "body": body });
        let created: Created = self.installation_call(installation, Method::POST, &path, &[], Some(&body)).await?;
        Ok(created.id)
    }

    /// Replaces comment `comment_id`'s body. [`ApiError::NotFound`] when it is gone (deleted by a
    /// person): the caller then creates a new one.
    pub async fn update_comment(
        &self,
        installation: u64,
        repo: &RepoName,
        comment_id: u64,
        body: &str,
    ) -> Result<(), ApiError> {
        let path = format!("/repos/{}/{}/issues/comments/{comment_id}", repo.owner, repo.name);
        let body = serde_json::json!({ "body": body });
        let _: serde::de::IgnoredAny =
            self.installation_call(installation, Method::PATCH, &path, &[], Some(&body)).await?;
        Ok(())
    }

    /// A call authenticated as `installation`. A 401 with a cached token (revoked before its
    /// expiry: the App's permissions changed, say) drops it and tries once more with a new one.
    async fn installation_call<T: DeserializeOwned>(
        &self,
        installation: u64,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&serde_json::Value>,
    ) -> Result<T, ApiError> {
        let (token, cached) = self.installation_token(installation).await?;
        let mut answer = self.send(method.clone(), path, query, &token, body).await;
        if let Err(ApiError::Refused { status: 401, .. }) = &answer {
            let slot = self.slot(installation);
            let mut slot = slot.lock().await;
            if slot.as_ref().is_some_and(|c| c.token == token) {
                *slot = None;
            }
            drop(slot);
            if cached {
                let (token, _) = self.installation_token(installation).await?;
                answer = self.send(method, path, query, &token, body).await;
            }
        }
        let bytes = answer?;
        serde_json::from_slice(&bytes).map_err(|e| ApiError::Response(bounded(&e.to_string(), MAX_MESSAGE_CHARS)))
    }

    /// `installation`'s access token: the cached one while it has over 5 minutes left, else a
    /// new one from `POST /app/installations/{id}/access_tokens`. Says whether it was cached.
    async fn installation_token(&self, installation: u64) -> Result<(Secret, bool), ApiError> {
        let slot = self.slot(installation);
        let mut cached = slot.lock().await;
        let now = self.inner.clock.now();
        if let Some(token) = cached.as_ref()
            && now < token.refresh_at
        {
            return Ok((token.token.clone(), true));
        }
        let (token, expires_at) = self.new_token(installation, now).await?;
        let refresh_at = expires_at - TOKEN_REFRESH_MARGIN_SECONDS;
        *cached = (now < refresh_at).then(|| CachedToken { token: token.clone(), refresh_at });
        Ok((token, false))
    }

    /// `installation`'s token slot, created on first use.
    fn slot(&self, installation: u64) -> TokenSlot {
        let mut tokens = self.inner.tokens.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(tokens.entry(installation).or_default())
    }

    /// A new access token for `installation` and when it expires (Unix seconds), fetched with
    /// the App JWT.
    async fn new_token(&self, installation: u64, now: i64) -> Result<(Secret, i64), ApiError> {
        #[derive(Deserialize)]
        struct Issued {
            token: Secret,
            expires_at: String,
        }
        let jwt = self.inner.app.jwt(now)?;
        let path = format!("/app/installations/{installation}/access_tokens");
        let body = serde_json::json!({
            "permissions": { "contents": "read", "pull_requests": "write", "statuses": "write" }
        });
        let bytes = match self.send(Method::POST, &path, &[], &jwt, Some(&body)).await {
            Err(ApiError::NotFound) => return Err(ApiError::UnknownInstallation(installation)),
            other => other?,
        };
        // serde's message could quote a value of the answer, which holds the token: say less.
        let issued: Issued = serde_json::from_slice(&bytes)
            .map_err(|_| ApiError::Response("the installation token answer is not the documented shape".into()))?;
        let expires_at =
            time::OffsetDateTime::parse(&issued.expires_at, &time::format_description::well_known::Rfc3339)
                .map_err(|_| {
                    ApiError::Response(format!(
                        "the installation token's expires_at is not RFC 3339: {}",
                        bounded(&issued.expires_at, 64)
                    ))
                })?
                .unix_timestamp();
        Ok((issued.token, expires_at))
    }

    /// One request; the body of a 2xx answer, or the error it means.
    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        credential: &Secret,
        body: Option<&serde_json::Value>,
    ) -> Result<Vec<u8>, ApiError> {
        // The query values are numbers the client chose: nothing to escape.
        let query: Vec<String> = query.iter().map(|(name, value)| format!("{name}={value}")).collect();
        let url = match query.is_empty() {
            true => format!("{}{path}", self.inner.api_url),
            false => format!("{}{path}?{}", self.inner.api_url, query.join("&")),
        };
        let mut request = self.inner.client.request(method, url);
        let mut authorization = HeaderValue::try_from(format!("Bearer {}", credential.expose()))
            .map_err(|_| ApiError::Response("a GitHub token is not a valid header value".into()))?;
        authorization.set_sensitive(true);
        request = request.header(AUTHORIZATION, authorization);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| ApiError::Transient(e.without_url().to_string()))?;
        let status = response.status();
        let rate_limited = response.headers().get("x-ratelimit-remaining").is_some_and(|v| v.as_bytes() == b"0");
        let bytes = response.bytes().await.map_err(|e| ApiError::Transient(e.without_url().to_string()))?;
        if status.is_success() {
            return Ok(bytes.to_vec());
        }
        let message = github_message(&bytes);
        Err(match status {
            StatusCode::NOT_FOUND => ApiError::NotFound,
            StatusCode::TOO_MANY_REQUESTS => ApiError::Transient(format!("rate limited (429): {message}")),
            StatusCode::FORBIDDEN if rate_limited || message.to_ascii_lowercase().contains("rate limit") => {
                ApiError::Transient(format!("rate limited (403): {message}"))
            }
            s if s.is_server_error() => ApiError::Transient(format!("{s}: {message}")),
            s => ApiError::Refused { status: s.as_u16(), message },
        })
    }
}

/// `sha` if it is a hex commit SHA (7 to 64 digits), so it cannot inject a path segment.
fn checked_sha(sha: &str) -> Result<&str, ApiError> {
    if (7..=64).contains(&sha.len()) && sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(sha)
    } else {
        Err(ApiError::InvalidSha(bounded(sha, 72)))
    }
}

/// GitHub's JSON `message` from an error answer, bounded and without control characters.
fn github_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Error {
        message: String,
    }
    match serde_json::from_slice::<Error>(body) {
        Ok(error) => bounded(&error.message, MAX_MESSAGE_CHARS),
        Err(_) => "(no message)".to_owned(),
    }
}

/// `text` without control characters, cut to `max` characters.
fn bounded(text: &str, max: usize) -> String {
    text.chars().filter(|c| !c.is_control()).take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_names_cannot_inject_path_segments() {
        let repo = RepoName::parse("octo-org/hello.world_2").expect("valid");
        assert_eq!((repo.owner(), repo.name()), ("octo-org", "hello.world_2"));
        assert_eq!(repo.to_string(), "octo-org/hello.world_2");
        let long = format!("o/{}", "a".repeat(101));
        for bad in [
            "octo", "/repo", "owner/", "a/b/c", "../repo", "owner/..", "owner/.", "own er/r", "o/r?x=1", "o/r%2f",
            &long,
        ] {
            assert!(matches!(RepoName::parse(bad), Err(ApiError::InvalidRepository(_))), "{bad} accepted");
        }
    }

    #[test]
    fn shas_are_hex_only() {
        assert!(checked_sha("0123456789abcdef0123456789abcdef01234567").is_ok());
        for bad in ["", "abc", "../../x", "0123456789abcdef0123456789abcdef0123456g", &"a".repeat(65)] {
            assert!(matches!(checked_sha(bad), Err(ApiError::InvalidSha(_))), "{bad} accepted");
        }
    }

    #[test]
    fn githubs_message_is_bounded_and_stripped_of_control_characters() {
        assert_eq!(github_message(br#"{"message":"Validation\u001b[31m Failed\n"}"#), "Validation[31m Failed");
        assert_eq!(github_message(b"<html>"), "(no message)");
        let long = format!(r#"{{"message":"{}"}}"#, "x".repeat(1000));
        assert_eq!(github_message(long.as_bytes()).chars().count(), MAX_MESSAGE_CHARS);
    }

    #[test]
    fn only_transient_errors_are_worth_a_retry() {
        assert!(ApiError::Transient("503".into()).is_transient());
        assert!(!ApiError::NotFound.is_transient());
        assert!(!ApiError::Refused { status: 422, message: String::new() }.is_transient());
        assert!(!ApiError::UnknownInstallation(1).is_transient());
    }
}
