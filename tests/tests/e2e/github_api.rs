//! The broker's GitHub REST API client (`vcs::github::api::GithubApi`) against `FakeGithub`, the
//! stand-in that checks every request against GitHub's published OpenAPI description: App JWT and
//! installation tokens (fetched once, cached, refreshed 5 minutes before expiry), a pull request's
//! files over several pages, the pull requests of a commit, statuses and comments, and how each
//! kind of failure comes back. Every test ends with no violation recorded; one proves the
//! validator refuses a request GitHub would refuse.

use std::sync::Arc;

use keyward_broker::clock::{Clock as _, ManualClock, SharedClock};
use keyward_broker::vcs::github::GithubSettings;
use keyward_broker::vcs::github::api::{ApiError, CommitStatus, GithubApi, PullRequestSummary, RepoName, StatusState};
use keyward_broker::vcs::github::app::AppKey;
use keyward_proto::secret::Secret;
use keyward_tests::fake_github::{Auth, FakeGithub, PrInfo};
use serde_json::json;

const APP_ID: u64 = 4242;
const INSTALLATION: u64 = 31;
const REPO: &str = "octo-org/infra";
const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

struct Setup {
    fake: FakeGithub,
    clock: ManualClock,
    api: GithubApi,
    repo: RepoName,
}

async fn setup() -> Setup {
    let clock = ManualClock::at(keyward_tests::now());
    let shared: SharedClock = Arc::new(clock.clone());
    let fake = FakeGithub::start(APP_ID, Arc::clone(&shared)).await;
    fake.install(INSTALLATION, &[REPO]);
    let api =
        GithubApi::new(&settings(&fake, fake.private_key_pem()), shared).expect("the App's PKCS#1 key is accepted");
    Setup { fake, clock, api, repo: RepoName::parse(REPO).unwrap() }
}

fn settings(fake: &FakeGithub, key: &str) -> GithubSettings {
    GithubSettings {
        app_id: APP_ID,
        private_key: Secret::from(key.to_owned()),
        webhook_secret: Secret::from("a-long-random-webhook-secret".to_owned()),
        api_url: fake.url().to_owned(),
        ticket_pattern: Default::default(),
    }
}

fn assert_no_violations(fake: &FakeGithub) {
    let violations = fake.violations();
    assert!(violations.is_empty(), "requests GitHub would refuse: {violations:#?}");
}

fn token_requests(fake: &FakeGithub) -> usize {
    fake.requests_to("/app/installations/").len()
}

#[tokio::test]
async fn an_installation_token_is_fetched_once_cached_and_refreshed_five_minutes_before_expiry() {
    let s = setup().await;
    s.fake.add_pull_request(REPO, 7, &["network/main.tf"], PrInfo::default());
    for _ in 0..3 {
        assert_eq!(s.api.pull_request_files(INSTALLATION, &s.repo, 7).await.unwrap(), ["network/main.tf"]);
    }
    assert_eq!(token_requests(&s.fake), 1, "one token for three calls");
    let fetch = &s.fake.requests_to("/app/installations/")[0];
    assert_eq!(fetch.path, format!("/app/installations/{INSTALLATION}/access_tokens"));
    assert_eq!(fetch.auth, Auth::App(APP_ID), "authenticated with a valid App JWT");
    assert_eq!(
        fetch.body,
        Some(json!({"permissions": {"contents": "read", "pull_requests": "write", "statuses": "write"}})),
        "least privilege"
    );
    for call in s.fake.requests_to("/repos/") {
        assert_eq!(call.auth, Auth::Installation(INSTALLATION));
    }

    // The token lives an hour: kept until 5 minutes before that, replaced from then on.
    s.clock.advance(3600 - 300 - 1);
    s.api.pull_request_files(INSTALLATION, &s.repo, 7).await.unwrap();
    assert_eq!(token_requests(&s.fake), 1, "still cached 5 min + 1 s before expiry");
    s.clock.advance(1);
    s.api.pull_request_files(INSTALLATION, &s.repo, 7).await.unwrap();
    assert_eq!(token_requests(&s.fake), 2, "refreshed 5 min before expiry");
    s.api.pull_request_files(INSTALLATION, &s.repo, 7).await.unwrap();
    assert_eq!(token_requests(&s.fake), 2, "the new token is cached in turn");
    assert_no_violations(&s.fake);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_share_one_token_fetch() {
    let s = setup().await;
    s.fake.add_pull_request(REPO, 8, &["a.tf"], PrInfo::default());
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let (api, repo) = (s.api.clone(), s.repo.clone());
        calls.spawn(async move { api.pull_request_files(INSTALLATION, &repo, 8).await });
    }
    while let Some(files) = calls.join_next().await {
        assert_eq!(files.unwrap().unwrap(), ["a.tf"]);
    }
    assert_eq!(token_requests(&s.fake), 1, "one token for six concurrent calls");
    assert_no_violations(&s.fake);
}

#[tokio::test]
async fn a_revoked_token_is_replaced_once_and_the_call_succeeds() {
    let s = setup().await;
    s.fake.add_pull_request(REPO, 3, &["a.tf"], PrInfo::default());
    s.api.pull_request_files(INSTALLATION, &s.repo, 3).await.unwrap();
    s.fake.revoke_tokens(INSTALLATION);
    assert_eq!(s.api.pull_request_files(INSTALLATION, &s.repo, 3).await.unwrap(), ["a.tf"]);
    assert_eq!(token_requests(&s.fake), 2, "a new token after the 401");
    s.api.pull_request_files(INSTALLATION, &s.repo, 3).await.unwrap();
    assert_eq!(token_requests(&s.fake), 2, "and that one is cached");
    let violations = s.fake.violations();
    assert_eq!(violations.len(), 1, "only the revoked token's call: {violations:#?}");
    assert!(violations[0].message.starts_with("Bad credentials"), "{}", violations[0]);
    let shown = format!("{:?}", s.api);
    assert!(!shown.contains("ghs_") && !shown.contains("PRIVATE KEY"), "Debug shows a secret: {shown}");
}

#[tokio::test]
async fn a_pkcs8_key_works_too_and_a_garbage_key_is_refused_without_echoing_it() {
    let s = setup().await;
    let clock: SharedClock = Arc::new(s.clock.clone());
    let api = GithubApi::new(&settings(&s.fake, s.fake.private_key_pkcs8_pem()), Arc::clone(&clock)).unwrap();
    s.fake.add_pull_request(REPO, 1, &["a.tf"], PrInfo::default());
    assert_eq!(api.pull_request_files(INSTALLATION, &s.repo, 1).await.unwrap(), ["a.tf"]);

    let garbage = "-----BEGIN RSA PRIVATE KEY-----\nbm90LWEta2V5LWJ1dC1zZWNyZXQ=\n-----END RSA PRIVATE KEY-----\n";
    let error = GithubApi::new(&settings(&s.fake, garbage), clock).unwrap_err();
    let shown = format!("{error} {error:?}");
    assert!(matches!(error, ApiError::Key(_)), "{shown}");
    assert!(shown.contains("vcs.github.private_key_file"), "names the setting: {shown}");
    assert!(!shown.contains("bm90LWEta2V5"), "echoes the key: {shown}");
    assert_no_violations(&s.fake);
}

#[tokio::test]
async fn a_pull_requests_files_are_read_over_all_pages_with_renames() {
    let s = setup().await;
    let mut files: Vec<String> = (0..249).map(|i| format!("stacks/app/file{i:03}.tf")).collect();
    files.push("stacks/old/main.tf => stacks/new/main.tf".to_owned());
    let names: Vec<&str> = files.iter().map(String::as_str).collect();
    s.fake.add_pull_request(REPO, 12, &names, PrInfo::default());

    let listed = s.api.pull_request_files(INSTALLATION, &s.repo, 12).await.unwrap();
    assert_eq!(listed.len(), 251, "250 files and the renamed file's old name");
    assert_eq!(listed[0], "stacks/app/file000.tf");
    assert_eq!(listed[248], "stacks/app/file248.tf");
    assert_eq!(&listed[249..], ["stacks/new/main.tf", "stacks/old/main.tf"]);
    let pages: Vec<String> =
        s.fake.requests_to("/repos/octo-org/infra/pulls/12/files").into_iter().map(|r| r.query.unwrap()).collect();
    assert_eq!(pages, ["per_page=100&page=1", "per_page=100&page=2", "per_page=100&page=3"]);

    // Exactly 100 files: the second page comes back empty and ends the listing.
    let hundred: Vec<String> = (0..100).map(|i| format!("f{i}.tf")).collect();
    s.fake.add_pull_request(REPO, 13, &hundred.iter().map(String::as_str).collect::<Vec<_>>(), PrInfo::default());
    assert_eq!(s.api.pull_request_files(INSTALLATION, &s.repo, 13).await.unwrap().len(), 100);
    assert_eq!(s.fake.requests_to("/repos/octo-org/infra/pulls/13/files").len(), 2);

    let missing = s.api.pull_request_files(INSTALLATION, &s.repo, 99).await.unwrap_err();
    assert!(matches!(missing, ApiError::NotFound), "{missing:?}");
    assert_no_violations(&s.fake);
}

#[tokio::test]
async fn the_pull_requests_of_a_merged_commit_are_read_with_their_details() {
    let s = setup().await;
    let info = PrInfo {
        title: "OPS-17: widen the VPC".to_owned(),
        author: "hubot".to_owned(),
        base_ref: "main".to_owned(),
        head_ref: "ops-17-vpc".to_owned(),
        head_sha: "fedcba9876543210fedcba9876543210fedcba98".to_owned(),
        merged: true,
        draft: false,
        labels: vec!["infra".to_owned(), "network".to_owned()],
        merge_commit_sha: Some(SHA.to_owned()),
        head_repo: None,
    };
    s.fake.add_pull_request(REPO, 42, &["network/vpc.tf"], info.clone());
    s.fake.associate_commit(REPO, SHA, 42);

    let pulls = s.api.pulls_of_commit(INSTALLATION, &s.repo, SHA).await.unwrap();
    assert_eq!(
        pulls,
        [PullRequestSummary {
            number: 42,
            title: "OPS-17: widen the VPC".to_owned(),
            author: "hubot".to_owned(),
            base_ref: "main".to_owned(),
            head_ref: "ops-17-vpc".to_owned(),
            head_sha: "fedcba9876543210fedcba9876543210fedcba98".to_owned(),
            url: "https://github.com/octo-org/infra/pull/42".to_owned(),
            merged: true,
            merge_commit_sha: Some(SHA.to_owned()),
            fork: false,
            draft: false,
            labels: vec!["infra".to_owned(), "network".to_owned()],
        }]
    );
    // From a fork: its head is in another repository.
    let fork = PrInfo { head_repo: Some("mallory/infra".to_owned()), ..info };
    s.fake.add_pull_request(REPO, 43, &["network/vpc.tf"], fork);
    s.fake.associate_commit(REPO, "1111111111111111111111111111111111111111", 43);
    let forked =
        s.api.pulls_of_commit(INSTALLATION, &s.repo, "1111111111111111111111111111111111111111").await.unwrap();
    assert_eq!(forked.iter().map(|pr| (pr.number, pr.fork)).collect::<Vec<_>>(), [(43, true)]);
    let other = "89abcdef0123456789abcdef0123456789abcdef";
    assert!(s.api.pulls_of_commit(INSTALLATION, &s.repo, other).await.unwrap().is_empty());
    let injected = s.api.pulls_of_commit(INSTALLATION, &s.repo, "../../../app").await.unwrap_err();
    assert!(matches!(injected, ApiError::InvalidSha(_)), "{injected:?}");
    assert_no_violations(&s.fake);
}

#[tokio::test]
async fn statuses_are_set_in_order_with_the_description_cut_to_140_characters() {
    let s = setup().await;
    let pending = CommitStatus {
        state: StatusState::Pending,
        context: "keyward/network".to_owned(),
        description: "Planning…".to_owned(),
        target_url: Some("https://keyward.example/runs/r-1".to_owned()),
    };
    s.api.set_status(INSTALLATION, &s.repo, SHA, &pending).await.unwrap();
    let long = "é".repeat(200);
    let done = CommitStatus { state: StatusState::Success, description: long, target_url: None, ..pending.clone() };
    s.api.set_status(INSTALLATION, &s.repo, SHA, &done).await.unwrap();
    let failed = CommitStatus { state: StatusState::Failure, ..done.clone() };
    s.api.set_status(INSTALLATION, &s.repo, SHA, &failed).await.unwrap();
    let errored = CommitStatus { state: StatusState::Error, ..done.clone() };
    s.api.set_status(INSTALLATION, &s.repo, SHA, &errored).await.unwrap();

    let statuses = s.fake.statuses(REPO, SHA);
    let states: Vec<&str> = statuses.iter().map(|s| s["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["pending", "success", "failure", "error"]);
    assert_eq!(statuses[0]["target_url"], "https://keyward.example/runs/r-1");
    assert_eq!(statuses[0]["context"], "keyward/network");
    assert_eq!(statuses[1]["description"].as_str().unwrap(), "é".repeat(140));
    assert!(statuses[1].get("target_url").is_none());
    assert_no_violations(&s.fake);
}

#[tokio::test]
async fn a_comment_is_created_updated_and_recreated_after_a_person_deletes_it() {
    let s = setup().await;
    s.fake.add_pull_request(REPO, 5, &["a.tf"], PrInfo::default());
    let id = s.api.create_comment(INSTALLATION, &s.repo, 5, "Plan: 1 to add").await.unwrap();
    s.api.update_comment(INSTALLATION, &s.repo, id, "Plan: 2 to add").await.unwrap();
    let comments = s.fake.comments(REPO, 5);
    assert_eq!(comments.len(), 1, "edited in place");
    assert_eq!((comments[0].id, comments[0].body.as_str()), (id, "Plan: 2 to add"));

    s.fake.delete_comment(id);
    let gone = s.api.update_comment(INSTALLATION, &s.repo, id, "Plan: 3 to add").await.unwrap_err();
    assert!(matches!(gone, ApiError::NotFound), "{gone:?}");
    let again = s.api.create_comment(INSTALLATION, &s.repo, 5, "Plan: 3 to add").await.unwrap();
    assert_ne!(again, id);
    let comments = s.fake.comments(REPO, 5);
    assert_eq!(comments.len(), 1);
    assert_eq!((comments[0].id, comments[0].body.as_str()), (again, "Plan: 3 to add"));
    assert_no_violations(&s.fake);
}

#[tokio::test]
async fn an_unknown_installation_is_its_own_error() {
    let s = setup().await;
    let error = s.api.pull_request_files(999, &s.repo, 1).await.unwrap_err();
    assert!(matches!(error, ApiError::UnknownInstallation(999)), "{error:?}");
    assert!(!error.is_transient());
    assert_no_violations(&s.fake);
}

#[tokio::test]
async fn server_errors_and_rate_limits_are_transient_and_other_refusals_carry_githubs_message() {
    let s = setup().await;
    let status = CommitStatus {
        state: StatusState::Pending,
        context: "keyward/app".to_owned(),
        description: "Planning".to_owned(),
        target_url: None,
    };
    let prefix = format!("/repos/{REPO}/statuses/");
    for code in [500, 502, 429, 403] {
        s.fake.fail_next(&prefix, code, 1);
        let error = s.api.set_status(INSTALLATION, &s.repo, SHA, &status).await.unwrap_err();
        assert!(error.is_transient(), "{code}: {error:?}");
    }
    s.fake.fail_next(&prefix, 422, 1);
    match s.api.set_status(INSTALLATION, &s.repo, SHA, &status).await.unwrap_err() {
        ApiError::Refused { status, message } => {
            assert_eq!(status, 422);
            assert_eq!(message, "Validation Failed (fake_github: injected)");
        }
        other => panic!("not Refused: {other:?}"),
    }
    // The token endpoint failing is transient too, and nothing was cached from it.
    s.fake.fail_next("/app/installations/", 503, 1);
    let fresh = GithubApi::new(&settings(&s.fake, s.fake.private_key_pem()), Arc::new(s.clock.clone())).unwrap();
    assert!(fresh.set_status(INSTALLATION, &s.repo, SHA, &status).await.unwrap_err().is_transient());
    fresh.set_status(INSTALLATION, &s.repo, SHA, &status).await.unwrap();
    assert!(s.fake.statuses(REPO, SHA).len() == 1, "only the last call set a status");
    assert_no_violations(&s.fake);
}

#[tokio::test]
async fn a_repository_outside_the_installation_is_not_found() {
    let s = setup().await;
    let other = RepoName::parse("octo-org/elsewhere").unwrap();
    let error = s.api.pull_request_files(INSTALLATION, &other, 1).await.unwrap_err();
    assert!(matches!(error, ApiError::NotFound), "{error:?}");
    let violations = s.fake.violations();
    assert_eq!(violations.len(), 1, "{violations:#?}");
    assert!(violations[0].message.contains("does not cover octo-org/elsewhere"), "{}", violations[0]);
}

/// The stand-in is only worth something if it refuses what GitHub refuses.
#[tokio::test]
async fn the_validator_refuses_requests_github_would_refuse() {
    let s = setup().await;
    s.fake.add_pull_request(REPO, 5, &["a.tf"], PrInfo::default());
    let token = s.fake.issue_token(INSTALLATION);
    let client = reqwest::Client::new();
    let send = |method: reqwest::Method, path: &str, body: Option<serde_json::Value>| {
        let mut request = client
            .request(method, format!("{}{path}", s.fake.url()))
            .header("accept", "application/vnd.github+json")
            .header("x-github-api-version", "2022-11-28")
            .header("user-agent", "keyward-tests")
            .bearer_auth(&token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<serde_json::Value>().await.unwrap())
        }
    };
    let statuses = format!("/repos/{REPO}/statuses/{SHA}");

    let (code, body) = send(reqwest::Method::POST, &statuses, Some(json!({"state": "done"}))).await;
    assert_eq!(code, 422, "{body}");
    assert!(s.fake.statuses(REPO, SHA).is_empty(), "nothing stored");
    let (code, _) =
        send(reqwest::Method::POST, &format!("/repos/{REPO}/issues/5/comments"), Some(json!({"text": "x"}))).await;
    assert_eq!(code, 422, "a comment without its required body");
    let (code, _) =
        send(reqwest::Method::POST, &format!("/repos/{REPO}/issues/five/comments"), Some(json!({"body": "x"}))).await;
    assert_eq!(code, 422, "an issue number that is no integer");
    let (code, _) =
        send(reqwest::Method::POST, &format!("/repos/{REPO}/statuses"), Some(json!({"state": "success"}))).await;
    assert_eq!(code, 404, "no such operation");
    let (code, _) = send(reqwest::Method::DELETE, &statuses, None).await;
    assert_eq!(code, 404, "no such method on the path");
    let (code, _) = send(reqwest::Method::GET, &format!("/repos/{REPO}/pulls/5/files?per_page=100&pgae=2"), None).await;
    assert_eq!(code, 422, "an undocumented query parameter");

    let violations: Vec<String> = s.fake.violations().iter().map(ToString::to_string).collect();
    assert_eq!(violations.len(), 6, "{violations:#?}");
    assert!(violations[0].contains("body.state") && violations[0].contains("\"done\""), "{}", violations[0]);
    assert!(violations[1].contains("required field body is missing"), "{}", violations[1]);
    assert!(violations[2].contains("issue_number must be an integer"), "{}", violations[2]);
    assert!(violations[3].contains("no path of GitHub's REST API"), "{}", violations[3]);
    assert!(violations[4].contains("DELETE is not an operation"), "{}", violations[4]);
    assert!(violations[5].contains("pgae"), "{}", violations[5]);

    // The token endpoint wants a valid App JWT: none, one issued in the future, an expired one.
    let now = s.clock.now();
    let key = AppKey::parse(APP_ID, &Secret::from(s.fake.private_key_pem().to_owned())).unwrap();
    let future = key.jwt(now + 3600).unwrap();
    let expired = key.jwt(now - 600).unwrap();
    for jwt in [None, Some(future.expose()), Some(expired.expose())] {
        let mut request = client
            .post(format!("{}/app/installations/{INSTALLATION}/access_tokens", s.fake.url()))
            .header("user-agent", "keyward-tests")
            .header("x-github-api-version", "2022-11-28")
            .header("accept", "application/vnd.github+json");
        if let Some(jwt) = jwt {
            request = request.bearer_auth(jwt);
        }
        assert_eq!(request.send().await.unwrap().status().as_u16(), 401);
    }
    assert_eq!(s.fake.violations().len(), 9);
    assert!(s.fake.requests_to("/app/").iter().all(|r| matches!(r.auth, Auth::None | Auth::Invalid(_))));
}

/// The schema subset `fake_github` checks with, on schemas written here and on the description's
/// own: each keyword refuses what OpenAPI 3.0 says it refuses and lets the rest through.
#[test]
fn the_validators_schema_subset_follows_openapi() {
    use keyward_tests::fake_github::openapi::description;
    let spec = description();
    let errors = |schema: serde_json::Value, value: serde_json::Value| {
        let mut errors = Vec::new();
        spec.validate(&schema, &value, "v", &mut errors);
        errors
    };
    let ok = |schema: serde_json::Value, value: serde_json::Value| {
        let found = errors(schema.clone(), value.clone());
        assert!(found.is_empty(), "{value} against {schema}: {found:?}");
    };
    let bad = |schema: serde_json::Value, value: serde_json::Value, expected: &str| {
        let found = errors(schema.clone(), value.clone());
        assert!(found.iter().any(|e| e.contains(expected)), "{value} against {schema}: {found:?}, not {expected:?}");
    };

    ok(json!({"type": "string", "nullable": true}), json!(null));
    bad(json!({"type": "string"}), json!(null), "expected string, got null");
    ok(json!({"type": ["string", "null"]}), json!(null));
    ok(json!({"type": "integer"}), json!(3));
    bad(json!({"type": "integer"}), json!(3.5), "expected integer, got number");
    bad(json!({"type": "string", "enum": ["a", "b"]}), json!("c"), "is not one of");
    bad(json!({"type": "string", "maxLength": 3}), json!("abcd"), "longer than 3");
    ok(json!({"type": "string", "maxLength": 3}), json!("ééé"));
    bad(json!({"type": "string", "minLength": 1}), json!(""), "shorter than 1");
    bad(json!({"type": "integer", "minimum": 1}), json!(0), "below the minimum");
    bad(json!({"type": "array", "items": {"type": "integer"}}), json!([1, "2"]), "v[1]: expected integer");
    let object = json!({"type": "object", "required": ["a"], "properties": {"a": {"type": "string"}}, "additionalProperties": false});
    bad(object.clone(), json!({}), "required field a is missing");
    bad(object.clone(), json!({"a": "x", "b": 1}), "v.b: not a documented field");
    ok(object, json!({"a": "x"}));
    let one_of = json!({"oneOf": [{"type": "string"}, {"type": "string", "maxLength": 1}]});
    ok(one_of.clone(), json!("long"));
    bad(one_of, json!("x"), "matches 2 of oneOf");
    bad(json!({"anyOf": [{"type": "string"}, {"type": "integer"}]}), json!(true), "matches none of anyOf");
    bad(json!({"allOf": [{"type": "string"}, {"maxLength": 1}]}), json!("xy"), "longer than 1");

    // `$ref`s into the description: a token may not ask for a permission level that does not exist.
    let permissions = json!({"$ref": "#/components/schemas/app-permissions"});
    ok(permissions.clone(), json!({"contents": "read", "pull_requests": "write", "statuses": "write"}));
    bad(permissions, json!({"contents": "admin"}), "v.contents: \"admin\" is not one of");
}
