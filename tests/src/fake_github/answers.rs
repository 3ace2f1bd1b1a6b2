//! What `FakeGithub` answers a well-formed, authorised request: the operation's behaviour on the
//! test's state, its body started from the description's own example for that schema (so the
//! field set is GitHub's) with the state filled in. Also GitHub's error format and the failures a
//! test injects.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keyward_broker::clock::rfc3339;
use serde_json::{Value, json};

use super::auth::issue;
use super::openapi::{Description, Matched, description};
use super::{
    Auth, Data, Inner, PullRequest, StoredComment, TOKEN_LIFETIME_SECONDS, Violation, installation_permissions,
};

/// An answer in GitHub's error format.
pub(super) fn error(status: u16, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(json!({"message": message, "documentation_url": "https://docs.github.com/rest"})))
        .into_response()
}

/// The answer to an injected failure, as GitHub words it.
pub(super) fn injected(status: u16) -> Response {
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

fn query_number(query: &[(String, String)], name: &str, default: usize) -> usize {
    query.iter().find(|(n, _)| n == name).and_then(|(_, v)| v.parse().ok()).unwrap_or(default)
}

/// The `Link` header of a paginated answer with a next page.
pub(super) fn body_link(
    inner: &Inner,
    matched: &Matched<'_>,
    query: &[(String, String)],
    data: &Data,
) -> Option<String> {
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
pub(super) fn respond(
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
    let base_repo = html.trim_start_matches("https://github.com/").to_owned();
    item["base"]["repo"]["full_name"] = base_repo.as_str().into();
    item["head"]["repo"]["full_name"] = info.head_repo.clone().unwrap_or(base_repo).into();
    item["merge_commit_sha"] = info.merge_commit_sha.clone().map_or(Value::Null, Value::from);
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
