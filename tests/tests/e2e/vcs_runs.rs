//! Pull requests drive runs (docs/vcs.md), end to end: a real broker process with `[vcs.github]`,
//! GitHub's webhook deliveries built from @octokit/webhooks-examples' real payloads (pointed at a
//! repository the tests' git HTTP server serves behind a token) and signed by
//! @octokit/webhooks-methods, GitHub's REST API answered by
//! `FakeGithub` — a stand-in that checks every request against GitHub's published OpenAPI
//! description — real Terraform in a sandboxed agent, and moto's STS for the credentials.
//!
//! The story: a pull request opened against a stack's repository yields a proposed plan (status
//! pending then success, a comment with the plan); a second push edits the same comment; the merge
//! queues a tracked run that waits for approval, applies, and whose apply credential's trace shows
//! the pull request as observed from GitHub. Then what must not run: a fork's pull request, an
//! installation GitHub does not know, a change that touches no stack.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use keyward_broker::clock::SystemClock;
use keyward_tests::agent::{Agent, join};
use keyward_tests::broker::{Broker, ConfigExtra, TEST_KEK, json as json_of, write_config};
use keyward_tests::fake_github::{FakeGithub, PrInfo};
use keyward_tests::git::GitRepo;
use keyward_tests::github_webhooks::{example, sign};
use keyward_tests::moto::Moto;
use keyward_tests::{eventually, free_addr, workspace_root};
use serde_json::{Value, json};

const SECRET: &str = "a-long-random-webhook-secret";
/// What the tests' git HTTP server lets through (as GitHub takes an installation token).
const GIT_TOKEN: &str = "ghs_InstallationToken0123456789abcdefXYZ";
const APP_ID: u64 = 4242;
const INSTALLATION: u64 = 77;
const REPOSITORY: &str = "octo-org/infra";
const ROLE_READ: &str = "arn:aws:iam::123456789012:role/state-read";
const ROLE_WRITE: &str = "arn:aws:iam::123456789012:role/network-apply";

/// A broker serving the shipped policies, with `[vcs.github]` pointed at `github` and AWS targets
/// on moto.
/// On SQLite, or on PostgreSQL at `database_url`.
/// `git`: the tests' git HTTP server's base URL, whose repositories the broker reads with
/// [`GIT_TOKEN`] (as a GitHub App's installation token reads GitHub's).
async fn broker(dir: &Path, github: &FakeGithub, sts: &str, database_url: Option<&str>, git: Option<&str>) -> Broker {
    let (config, data_dir, addr) = configure(dir, (github, sts, git), database_url.is_some());
    let mut envs = vec![("TEST_KEK", TEST_KEK)];
    envs.extend(database_url.map(|url| ("KW_DATABASE_URL", url)));
    Broker::serve(&config, &data_dir, &format!("http://{addr}"), &envs).await
}

/// The shipped policies, with `propose_forks = true`: the policy would propose a fork's pull
/// request, so only the broker's own refusal stands between a fork's code and the stack.
fn policies(dir: &Path) -> std::path::PathBuf {
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    for entry in std::fs::read_dir(workspace_root().join("policies")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, policies.join(path.file_name().unwrap())).unwrap();
        }
    }
    let data = policies.join("data.json");
    let mut settings: Value = serde_json::from_slice(&std::fs::read(&data).unwrap()).unwrap();
    settings["keyward"]["settings"]["propose_forks"] = json!(true);
    std::fs::write(&data, serde_json::to_vec(&settings).unwrap()).unwrap();
    policies
}

/// Writes [`broker`]'s configuration: the file, the data directory and the address.
fn configure(
    dir: &Path,
    (github, sts, git): (&FakeGithub, &str, Option<&str>),
    postgres: bool,
) -> (std::path::PathBuf, std::path::PathBuf, std::net::SocketAddr) {
    let (key, secret, git_token) = (dir.join("app.pem"), dir.join("webhook-secret"), dir.join("git-token"));
    std::fs::write(&key, github.private_key_pem()).unwrap();
    std::fs::write(&secret, SECRET).unwrap();
    std::fs::write(&git_token, GIT_TOKEN).unwrap();
    let repositories = git.map_or_else(String::new, |base| {
        format!(
            "[[repositories]]\nurl_prefix = \"{base}\"\nusername = \"x-access-token\"\npassword_file = {:?}\n",
            git_token.display().to_string()
        )
    });
    let addr = free_addr();
    let config = dir.join("keyward.toml");
    let data_dir = dir.join("broker");
    let rest = format!(
        "[policy]\ndir = \"{policies}\"\n[tokens]\nallowed_audiences = [\"sts.amazonaws.com\"]\n\
         [agents]\nlisten = \"{agents}\"\nlease = \"20s\"\npoll_interval = \"200ms\"\n\
         [[targets]]\nname = \"state-read\"\ntype = \"aws\"\naccess = \"read\"\nrole_arn = \"{ROLE_READ}\"\n\
         region = \"eu-west-1\"\nsts_endpoint = \"{sts}\"\nduration = \"15m\"\nmode = \"broker\"\n\
         [[targets]]\nname = \"network-apply\"\ntype = \"aws\"\naccess = \"write\"\nrole_arn = \"{ROLE_WRITE}\"\n\
         region = \"eu-west-1\"\nsts_endpoint = \"{sts}\"\nduration = \"1h\"\nmode = \"broker\"\n\
         [vcs]\nticket_pattern = \"[A-Z]+-[0-9]+\"\n\
         [vcs.github]\napp_id = {APP_ID}\nprivate_key_file = {key:?}\nwebhook_secret_file = {secret:?}\napi_url = \"{api}\"\n\
         {repositories}",
        policies = policies(dir).display(),
        agents = free_addr(),
        key = key.display().to_string(),
        secret = secret.display().to_string(),
        api = github.url(),
    );
    let storage = if postgres { "database_url_env = \"KW_DATABASE_URL\"" } else { "" };
    write_config(&config, addr, &data_dir, &ConfigExtra { rest: &rest, storage, ..ConfigExtra::default() });
    (config, data_dir, addr)
}

async fn deliver(broker: &Broker, event: &str, delivery: &str, payload: &Value) -> (u16, Value) {
    let body = serde_json::to_vec(payload).unwrap();
    let response = reqwest::Client::new()
        .post(format!("{}/v1/vcs/github/webhook", broker.addr))
        .header("x-github-event", event)
        .header("x-github-delivery", delivery)
        .header("x-hub-signature-256", sign(&body, SECRET))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The repository as GitHub describes it, cloned from the local `url`.
fn repository(payload: &mut Value, url: &str, full_name: &str) {
    let repository = &mut payload["repository"];
    repository["full_name"] = json!(full_name);
    repository["name"] = json!(full_name.split('/').nth(1).unwrap());
    repository["clone_url"] = json!(url);
    repository["html_url"] = json!(format!("https://github.com/{full_name}"));
    repository["ssh_url"] = json!(format!("git@github.com:{full_name}.git"));
    repository["default_branch"] = json!("main");
}

/// A real `pull_request` delivery (@octokit/webhooks-examples) for pull request `number` of
/// `head_ref` at `head_sha` into `main`.
fn pull_request(action: &str, url: &str, number: u64, (head_ref, head_sha): (&str, &str), title: &str) -> Value {
    let mut payload: Value = serde_json::from_slice(&example("pull_request", Some(action))).unwrap();
    repository(&mut payload, url, REPOSITORY);
    payload["installation"]["id"] = json!(INSTALLATION);
    payload["sender"]["login"] = json!("octocat");
    let base_repo = payload["repository"].clone();
    let pr = &mut payload["pull_request"];
    pr["number"] = json!(number);
    pr["title"] = json!(title);
    pr["draft"] = json!(false);
    pr["user"]["login"] = json!("octocat");
    pr["html_url"] = json!(format!("https://github.com/{REPOSITORY}/pull/{number}"));
    pr["head"]["ref"] = json!(head_ref);
    pr["head"]["sha"] = json!(head_sha);
    pr["head"]["repo"] = base_repo.clone();
    pr["base"]["ref"] = json!("main");
    pr["base"]["repo"] = base_repo;
    payload["number"] = json!(number);
    payload
}

/// A real `push` delivery of `after` to `main`, changing `files`.
fn push(url: &str, (before, after): (&str, &str), files: &[&str]) -> Value {
    let mut payload: Value = serde_json::from_slice(&example("push", None)).unwrap();
    repository(&mut payload, url, REPOSITORY);
    payload["installation"]["id"] = json!(INSTALLATION);
    payload["sender"]["login"] = json!("octocat");
    payload["ref"] = json!("refs/heads/main");
    payload["before"] = json!(before);
    payload["after"] = json!(after);
    payload["created"] = json!(false);
    payload["deleted"] = json!(false);
    payload["forced"] = json!(false);
    let commit = json!({"id": after, "tree_id": after, "distinct": true, "message": "Merge",
        "timestamp": "2026-12-06T10:00:00Z", "url": format!("https://github.com/{REPOSITORY}/commit/{after}"),
        "author": {"name": "Octo Cat", "email": "octocat@github.com", "username": "octocat"},
        "committer": {"name": "GitHub", "email": "noreply@github.com", "username": "web-flow"},
        "added": [], "removed": [], "modified": files});
    payload["commits"] = json!([commit.clone()]);
    payload["head_commit"] = commit;
    payload
}

/// Waits for `stack`'s newest run of `kind` (other than `not`) to reach one of `states`.
async fn run_of(broker: &Broker, stack: &str, kind: &str, not: &[&str], states: &[&str]) -> Value {
    eventually(&format!("a {kind} run of {stack} in {states:?}"), Duration::from_secs(120), || {
        let runs = json_of(&broker.cli(&["run", "list", "--stack", stack, "--json"]));
        let found = runs["runs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["kind"] == kind && !not.contains(&r["id"].as_str().unwrap()))
            .cloned();
        let full = found.map(|r| json_of(&broker.cli(&["run", "show", r["id"].as_str().unwrap(), "--json"])));
        let done = full.filter(|r| r["state"].as_str().is_some_and(|s| states.contains(&s) || s == "failed"));
        async move { done }
    })
    .await
}

/// Waits until `check` holds of `sha`'s statuses.
async fn statuses(github: &FakeGithub, sha: &str, check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    eventually(&format!("statuses of {sha}"), Duration::from_secs(60), || {
        let statuses = github.statuses(REPOSITORY, sha);
        let done = check(&statuses).then_some(statuses);
        async move { done }
    })
    .await
}

fn states_of(statuses: &[Value]) -> Vec<&str> {
    statuses.iter().filter(|s| s["context"] == "keyward/network").filter_map(|s| s["state"].as_str()).collect()
}

/// An agent (real Terraform, sandboxed) enrolled in the default pool.
fn agent(broker: &Broker, dir: &Path) -> Agent {
    let token =
        json_of(&broker.cli(&["pool", "join-token", "default", "--json"]))["token"].as_str().unwrap().to_owned();
    let (ok, agent_id, stderr) = join(&broker.addr, &token, dir);
    assert!(ok, "{stderr}");
    Agent::start(dir, &agent_id, &[])
}

/// Waits for `delivery`'s `vcs.delivery_processed` or `vcs.delivery_failed` entry.
async fn settled(broker: &Broker, delivery: &str) -> Value {
    eventually(&format!("delivery {delivery} processed"), Duration::from_secs(60), || {
        let found = ["vcs.delivery_processed", "vcs.delivery_failed"]
            .into_iter()
            .flat_map(|kind| entries(broker, kind))
            .map(|e| e["entry"].clone())
            .find(|e| e["details"]["delivery"] == delivery);
        async move { found }
    })
    .await
}

/// The broker's audit entries of `kind`.
fn entries(broker: &Broker, kind: &str) -> Vec<Value> {
    let out = broker.cli(&["audit", "tail", "--kind", kind, "--json", "-n", "1000"]);
    assert!(out.success, "{}", out.stderr);
    out.stdout.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn on_sqlite_a_pull_request_is_planned_commented_merged_tracked_and_traced() {
    pull_request_story(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn on_postgres_a_pull_request_is_planned_commented_merged_tracked_and_traced() {
    let cluster = keyward_tests::postgres::PgCluster::start();
    pull_request_story(Some(&cluster.database("keyward_vcs"))).await;
}

async fn pull_request_story(database_url: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path()).await;
    let github = FakeGithub::start(APP_ID, Arc::new(SystemClock)).await;
    github.install(INSTALLATION, &[REPOSITORY]);
    // The repository is served over HTTP, behind a token, as GitHub serves it.
    let served = dir.path().join("served");
    let repo = GitRepo::init(&served.join(REPOSITORY));
    let git = keyward_tests::git_http::GitServer::start(&served, "x-access-token", GIT_TOKEN).await;
    let url = format!("{}{REPOSITORY}", git.base_url);
    let broker = broker(dir.path(), &github, &moto.endpoint, database_url, Some(&git.base_url)).await;
    json_of(&broker.cli(&[
        "stack",
        "create",
        "network",
        "--repository",
        &url,
        "--plan-target",
        "aws:state-read",
        "--apply-target",
        "aws:network-apply",
        "--json",
    ]));
    let agent = agent(&broker, &dir.path().join("agent"));

    // 1. The pull request is opened: a proposed plan of its head, reported back.
    let bucket = "resource \"terraform_data\" \"bucket\" {\n  input = \"logs\"\n}\n";
    let head = repo.commit_to("feature/OPS-7-bucket", "bucket.tf", bucket);
    let title = "OPS-7: add the logs bucket";
    let info = PrInfo {
        title: title.to_owned(),
        head_ref: "feature/OPS-7-bucket".to_owned(),
        head_sha: head.clone(),
        ..PrInfo::default()
    };
    github.add_pull_request(REPOSITORY, 7, &["bucket.tf"], info.clone());
    let opened = pull_request("opened", &url, 7, ("feature/OPS-7-bucket", &head), title);
    assert_eq!(deliver(&broker, "pull_request", "d-open", &opened).await, (202, json!({"queued": true})));
    let processed = settled(&broker, "d-open").await;
    assert_eq!(processed["kind"], "vcs.delivery_processed", "{processed}\n{}", broker.log_text());
    let decided = &processed["details"]["stacks"][0];
    assert_eq!(
        (decided["stack"].as_str(), decided["decision"].as_str()),
        (Some("network"), Some("propose")),
        "{processed}"
    );
    assert!(decided["run"].is_string() && decided["error"].is_null(), "{processed}");
    let proposed = run_of(&broker, "network", "proposed", &[], &["finished"]).await;
    assert_eq!(proposed["state"], "finished", "{proposed}\n{}", agent.log_text());
    assert_eq!(proposed["commit_sha"], head.as_str());
    assert_eq!((proposed["pull_request"].as_i64(), proposed["ticket"].as_str()), (Some(7), Some("OPS-7")));
    assert_eq!(proposed["pull_request_source"], "github", "{proposed}");
    assert_eq!(proposed["triggered_by"], "github:octocat");
    assert_eq!(proposed["jobs"].as_array().unwrap().len(), 1, "a proposed run never applies: {proposed}");
    let seen = statuses(&github, &head, |s| states_of(s).last() == Some(&"success")).await;
    let states = states_of(&seen);
    assert_eq!(states.first(), Some(&"pending"), "{seen:?}");
    let success = seen.iter().rev().find(|s| s["context"] == "keyward/network").unwrap();
    assert!(success["description"].as_str().unwrap().starts_with("Planned: 2 to add"), "{success}");
    assert!(
        success["target_url"].as_str().unwrap().ends_with(&format!("/v1/runs/{}", proposed["id"].as_str().unwrap()))
    );
    let comments = eventually("the plan comment", Duration::from_secs(60), || {
        let comments = github.comments(REPOSITORY, 7);
        let done = comments.first().is_some_and(|c| c.body.contains("Planned (proposed")).then_some(comments);
        async move { done }
    })
    .await;
    assert_eq!(comments.len(), 1, "{comments:?}");
    let body = &comments[0].body;
    assert!(
        body.contains("+ terraform_data.bucket (create)")
            && body.contains("**Plan:** 2 to add, 0 to change, 0 to destroy."),
        "{body}"
    );
    let first_comment = comments[0].id;

    // 2. A second push to the pull request: another proposed plan, the same comment edited.
    let more = "resource \"terraform_data\" \"archive\" {\n  input = \"archive\"\n}\n";
    let head2 = repo.commit_to("feature/OPS-7-bucket", "archive.tf", more);
    let info2 = PrInfo { head_sha: head2.clone(), ..info };
    github.add_pull_request(REPOSITORY, 7, &["bucket.tf", "archive.tf"], info2);
    let synchronize = pull_request("synchronize", &url, 7, ("feature/OPS-7-bucket", &head2), title);
    assert_eq!(deliver(&broker, "pull_request", "d-sync", &synchronize).await.0, 202);
    let first = proposed["id"].as_str().unwrap().to_owned();
    let second = run_of(&broker, "network", "proposed", &[&first], &["finished"]).await;
    assert_eq!(
        (second["state"].as_str(), second["commit_sha"].as_str()),
        (Some("finished"), Some(head2.as_str())),
        "{second}"
    );
    statuses(&github, &head2, |s| states_of(s).last() == Some(&"success")).await;
    let comments = eventually("the comment edited", Duration::from_secs(60), || {
        let comments = github.comments(REPOSITORY, 7);
        let done = comments.first().is_some_and(|c| c.body.contains("terraform_data.archive")).then_some(comments);
        async move { done }
    })
    .await;
    assert_eq!(comments.len(), 1, "edited in place, not added: {comments:?}");
    assert_eq!(comments[0].id, first_comment);
    assert!(comments[0].body.contains("**Plan:** 3 to add"), "{}", comments[0].body);

    // 3. The merge: GitHub pushes the merge commit to main; a tracked run waits for approval.
    let before = repo.head();
    let merged = repo.merge("feature/OPS-7-bucket");
    github.associate_commit(REPOSITORY, &merged, 7);
    github.add_pull_request(
        REPOSITORY,
        7,
        &["bucket.tf", "archive.tf"],
        PrInfo {
            title: title.to_owned(),
            head_ref: "feature/OPS-7-bucket".to_owned(),
            head_sha: head2.clone(),
            merged: true,
            merge_commit_sha: Some(merged.clone()),
            ..PrInfo::default()
        },
    );
    let pushed = push(&url, (&before, &merged), &["bucket.tf", "archive.tf"]);
    assert_eq!(deliver(&broker, "push", "d-merge", &pushed).await.0, 202);
    let tracked = run_of(&broker, "network", "deploy", &[], &["planned"]).await;
    assert_eq!(tracked["state"], "planned", "{tracked}\n{}", agent.log_text());
    assert_eq!((tracked["commit_sha"].as_str(), tracked["pull_request"].as_i64()), (Some(merged.as_str()), Some(7)));
    assert_eq!(tracked["pull_request_source"], "github");
    let waiting = statuses(&github, &merged, |s| {
        states_of(s).last() == Some(&"pending")
            && s.iter().any(|x| x["description"].as_str().is_some_and(|d| d.contains("waiting for approval")))
    })
    .await;
    assert!(!waiting.is_empty());
    let tracked_id = tracked["id"].as_str().unwrap().to_owned();
    let approved = broker.cli(&["run", "approve", &tracked_id, "--comment", "ship it"]);
    assert!(approved.success, "{}", approved.stderr);
    let done = run_of(&broker, "network", "deploy", &[], &["finished"]).await;
    assert_eq!(done["state"], "finished", "{done}\n{}", agent.log_text());
    statuses(&github, &merged, |s| states_of(s).last() == Some(&"success")).await;
    let comments = eventually("the comment showing the apply", Duration::from_secs(60), || {
        let comments = github.comments(REPOSITORY, 7);
        let done = comments.first().is_some_and(|c| c.body.contains("✅ Applied")).then_some(comments);
        async move { done }
    })
    .await;
    assert_eq!((comments.len(), comments[0].id), (1, first_comment));

    // 4. The trail: the apply's credential traces back to the pull request, observed from GitHub.
    let issued = entries(&broker, "credentials.issued");
    let apply = issued
        .iter()
        .map(|e| &e["entry"])
        .find(|e| e["context"]["run_id"] == tracked_id.as_str() && e["context"]["phase"] == "apply")
        .unwrap_or_else(|| panic!("no apply credential: {issued:?}"));
    assert_eq!(apply["context"]["pull_request_source"], "github", "{apply}");
    let key = apply["details"]["access_key_id"].as_str().unwrap();
    let trace = broker.cli(&["audit", "trace", key]);
    assert!(trace.success, "{}", trace.stderr);
    assert!(trace.stdout.contains("PR #7  ticket OPS-7  (observed from github)"), "{}", trace.stdout);
    assert!(
        trace.stdout.contains("observed   github delivery d-merge: #7 \"OPS-7: add the logs bucket\" by octocat"),
        "{}",
        trace.stdout
    );
    // The run token STS saw says so too, and carries the tag.
    let write = moto.sts_requests().into_iter().find(|r| r.field("RoleArn") == Some(ROLE_WRITE)).unwrap();
    let verdict = broker.pyjwt_verify(write.field("WebIdentityToken").unwrap(), "sts.amazonaws.com");
    assert_eq!(verdict["claims"]["pull_request_source"], "github", "{verdict}");
    assert_eq!(verdict["claims"]["https://aws.amazon.com/tags"]["principal_tags"]["pr_source"], json!(["github"]));

    // The broker resolved and the agent checked out every commit over HTTP, with the token.
    assert!(git.authorized() >= 8 && git.refused() == 0, "{} let through, {} refused", git.authorized(), git.refused());
    // Every delivery was processed, and every request the broker made was one GitHub documents.
    let processed = entries(&broker, "vcs.delivery_processed");
    assert_eq!(processed.len(), 3, "{processed:?}");
    assert!(github.violations().is_empty(), "{:?}", github.violations());
}

/// What must not run: a fork's pull request (whatever the policy would say), a pull request
/// through an installation GitHub does not know, a change that touches no stack's files, an
/// older push processed after a newer one was tracked. Each is processed with its reason on
/// record, and no run is started for it.
#[tokio::test(flavor = "multi_thread")]
async fn forks_unknown_installations_and_untouched_stacks_start_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path()).await;
    let github = FakeGithub::start(APP_ID, Arc::new(SystemClock)).await;
    github.install(INSTALLATION, &[REPOSITORY]);
    let broker = broker(dir.path(), &github, &moto.endpoint, None, None).await;
    let repo = GitRepo::init(&dir.path().join("repo"));
    let url = repo.url();
    json_of(&broker.cli(&["stack", "create", "network", "--repository", &url, "--path", "network", "--json"]));
    let head = repo.commit_to("feature", "network.tf", "# not under network/\n");

    // A pull request from a fork: the broker never plans it.
    let mut fork = pull_request("opened", &url, 8, ("feature", &head), "Fork change");
    fork["pull_request"]["head"]["repo"]["full_name"] = json!("mallory/infra");
    github.add_pull_request(
        REPOSITORY,
        8,
        &["network/main.tf"],
        PrInfo { head_sha: head.clone(), ..PrInfo::default() },
    );
    assert_eq!(deliver(&broker, "pull_request", "d-fork", &fork).await.0, 202);

    // An installation GitHub does not know: its files cannot be read; the delivery fails for good.
    let mut unknown = pull_request("opened", &url, 9, ("feature", &head), "Unknown installation");
    unknown["installation"]["id"] = json!(999);
    assert_eq!(deliver(&broker, "pull_request", "d-unknown", &unknown).await.0, 202);

    // A change outside the stack's path.
    github.add_pull_request(
        REPOSITORY,
        10,
        &["network.tf", "docs/README.md"],
        PrInfo { head_sha: head.clone(), ..PrInfo::default() },
    );
    let untouched = pull_request("opened", &url, 10, ("feature", &head), "Docs");
    assert_eq!(deliver(&broker, "pull_request", "d-untouched", &untouched).await.0, 202);

    let (processed, failed) = eventually("every delivery settled", Duration::from_secs(60), || {
        let processed = entries(&broker, "vcs.delivery_processed");
        let failed = entries(&broker, "vcs.delivery_failed");
        let done = (processed.len() == 2 && failed.len() == 1).then_some((processed, failed));
        async move { done }
    })
    .await;
    let by_delivery =
        |id: &str| processed.iter().map(|e| &e["entry"]).find(|e| e["details"]["delivery"] == id).cloned().unwrap();
    let fork_entry = by_delivery("d-fork");
    let decided = &fork_entry["details"]["stacks"][0];
    assert_eq!(
        (decided["stack"].as_str(), decided["decision"].as_str()),
        (Some("network"), Some("ignore")),
        "{fork_entry}"
    );
    // The policy (propose_forks = true) said propose; the broker refused.
    assert_eq!(decided["reasons"], json!([keyward_broker::vcs::github::FORK_REFUSAL]), "{fork_entry}");
    assert!(decided["run"].is_null());
    let untouched_entry = by_delivery("d-untouched");
    assert_eq!(untouched_entry["details"]["stacks"], json!([]), "{untouched_entry}");
    let failure = &failed[0]["entry"];
    assert_eq!(failure["details"]["delivery"], "d-unknown");
    assert!(failure["details"]["error"].as_str().unwrap().contains("999"), "{failure}");

    // Two pushes to main: GitHub is briefly down for the first one's pull request lookup, so it is
    // retried after the second was tracked; its older commit is not deployed over the newer one.
    let before = repo.head();
    std::fs::create_dir_all(dir.path().join("repo/network")).unwrap();
    let older = repo.commit("network/a.tf", "# a\n");
    let newer = repo.commit("network/b.tf", "# b\n");
    github.fail_next(&format!("/repos/{REPOSITORY}/commits/{older}/pulls"), 503, 1);
    assert_eq!(deliver(&broker, "push", "d-older", &push(&url, (&before, &older), &["network/a.tf"])).await.0, 202);
    let waiting = "SELECT COUNT(*) AS n FROM vcs_deliveries WHERE delivery_id = 'd-older' AND attempts = 1";
    eventually("the older push to wait for a retry", Duration::from_secs(30), || {
        let broker = &broker;
        async move { (count(broker, waiting).await == 1).then_some(()) }
    })
    .await;
    assert_eq!(deliver(&broker, "push", "d-newer", &push(&url, (&older, &newer), &["network/b.tf"])).await.0, 202);
    let newer_entry = settled(&broker, "d-newer").await;
    let tracked = &newer_entry["details"]["stacks"][0];
    assert_eq!(tracked["decision"], "track", "{newer_entry}");
    let older_entry = settled(&broker, "d-older").await;
    let ignored = &older_entry["details"]["stacks"][0];
    assert_eq!(ignored["decision"], "ignore", "{older_entry}");
    assert_eq!(ignored["reasons"], json!([keyward_broker::vcs::github::OLDER_PUSH]), "{older_entry}");
    let runs = json_of(&broker.cli(&["run", "list", "--json"]));
    let commits: Vec<&str> = runs["runs"].as_array().unwrap().iter().filter_map(|r| r["commit_sha"].as_str()).collect();
    assert_eq!(commits, [newer.as_str()], "only the newer push runs: {runs}");
    // Nor can a caller submit a run claiming GitHub observed it.
    let claimed = reqwest::Client::new()
        .post(format!("{}/v1/runs", broker.addr))
        .bearer_auth(&broker.admin_token)
        .json(&json!({"stack": "network", "pull_request": 8, "pull_request_source": "github"}))
        .send()
        .await
        .unwrap();
    assert_eq!(claimed.status().as_u16(), 400);
    let runs = json_of(&broker.cli(&["run", "list", "--json"]));
    assert_eq!(runs["runs"].as_array().unwrap().len(), 1, "nothing else ran: {runs}");
    assert!(github.statuses(REPOSITORY, &head).is_empty());
    assert!(github.violations().is_empty(), "{:?}", github.violations());
}

/// `SELECT COUNT(*) AS n …` on the broker's SQLite database.
async fn count(broker: &Broker, sql: &str) -> i64 {
    let url = format!("sqlite://{}?mode=rw", broker.data_dir.join("keyward.db").display());
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    let n: i64 = sqlx::Row::get(&sqlx::query(sqlx::AssertSqlSafe(sql.to_owned())).fetch_one(&pool).await.unwrap(), "n");
    pool.close().await;
    n
}

/// GitHub unavailable: the delivery waits with backoff, survives a broker restart, and is
/// processed once GitHub answers. A report GitHub refuses is recorded as `vcs.report_failed` and
/// never holds the run up.
#[tokio::test(flavor = "multi_thread")]
async fn deliveries_wait_out_github_across_a_restart_and_refused_reports_never_hold_a_run() {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path()).await;
    let github = FakeGithub::start(APP_ID, Arc::new(SystemClock)).await;
    github.install(INSTALLATION, &[REPOSITORY]);
    let (config, data_dir, addr) = configure(dir.path(), (&github, &moto.endpoint, None), false);
    let envs = [("TEST_KEK", TEST_KEK)];
    let broker = Broker::serve(&config, &data_dir, &format!("http://{addr}"), &envs).await;
    let admin = broker.admin_token.clone();
    let repo = GitRepo::init(&dir.path().join("repo"));
    let url = repo.url();
    json_of(&broker.cli(&["stack", "create", "network", "--repository", &url, "--json"]));
    let head = repo.commit_to("feature", "bucket.tf", "resource \"terraform_data\" \"bucket\" {}\n");
    github.add_pull_request(
        REPOSITORY,
        11,
        &["bucket.tf"],
        PrInfo { head_sha: head.clone(), head_ref: "feature".to_owned(), ..PrInfo::default() },
    );
    // GitHub is down for the pull request's files: three answers of 503.
    github.fail_next(&format!("/repos/{REPOSITORY}/pulls/11/files"), 503, 3);
    // And it refuses every status: the reporter gives up on each, the run goes on.
    github.fail_next(&format!("/repos/{REPOSITORY}/statuses/"), 422, 1000);
    let opened = pull_request("opened", &url, 11, ("feature", &head), "Outage");
    assert_eq!(deliver(&broker, "pull_request", "d-outage", &opened).await.0, 202);
    let waiting = "SELECT COUNT(*) AS n FROM vcs_deliveries WHERE delivery_id = 'd-outage' AND status = 'queued' \
                   AND attempts >= 1 AND error LIKE '%503%'";
    eventually("the delivery to wait for a retry", Duration::from_secs(30), || {
        let broker = &broker;
        async move { (count(broker, waiting).await == 1).then_some(()) }
    })
    .await;
    broker.stop();

    let broker = Broker::serve_as(&config, &data_dir, &format!("http://{addr}"), &envs, Some(&admin)).await;
    let processed = settled(&broker, "d-outage").await;
    assert_eq!(processed["kind"], "vcs.delivery_processed", "{processed}");
    assert_eq!(processed["details"]["stacks"][0]["decision"], "propose", "{processed}");
    let files = github.requests_to(&format!("/repos/{REPOSITORY}/pulls/11/files"));
    assert_eq!(files.len(), 4, "three refused, one answered: {files:?}");
    let agent = agent(&broker, &dir.path().join("agent"));
    let run = run_of(&broker, "network", "proposed", &[], &["finished"]).await;
    assert_eq!(run["state"], "finished", "{run}\n{}", agent.log_text());
    let failed = eventually("a failed report on record", Duration::from_secs(60), || {
        let failed = entries(&broker, "vcs.report_failed");
        let found = failed.into_iter().map(|e| e["entry"].clone()).find(|e| e["context"]["run_id"] == run["id"]);
        async move { found }
    })
    .await;
    assert!(failed["details"]["error"].as_str().unwrap().contains("422"), "{failed}");
    assert!(github.statuses(REPOSITORY, &head).is_empty());
    assert!(github.violations().is_empty(), "{:?}", github.violations());
}
