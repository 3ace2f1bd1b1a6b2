//! Spaces and roles with a real broker, on SQLite and on PostgreSQL (docs/access.md): tokens of
//! one space see nothing of another (lists and direct reads: stacks, runs, logs, pools, agents,
//! audit entries; what they may not view is 404), and can do only what their role allows there;
//! a role holds down the tree; targets serve only the spaces they name; old global tokens keep
//! working; bad input is refused with nothing stored.

use std::path::Path;

use keyward_tests::agent::join;
use keyward_tests::broker::{Broker, ConfigExtra, Output, TEST_KEK, keyward, write_config};
use keyward_tests::git::GitRepo;
use keyward_tests::postgres::PgCluster;
use keyward_tests::{free_addr, workspace_root};
use serde_json::{Value, json};

fn json(output: &Output) -> Value {
    assert!(output.success, "stdout: {}\nstderr: {}", output.stdout, output.stderr);
    serde_json::from_str(&output.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", output.stdout))
}

async fn start(dir: &Path, database_url: Option<&str>) -> Broker {
    let addr = free_addr();
    let config = dir.join("keyward.toml");
    let data_dir = dir.join("broker");
    // A target only space `b` (and what is under it) may use; nothing ever calls it.
    let rest = format!(
        "[policy]\ndir = \"{policies}\"\n[tokens]\nallowed_audiences = [\"vault\"]\n[agents]\nlisten = \"{agents}\"\n\
         [[targets]]\ntype = \"vault\"\nname = \"b-only\"\naccess = \"write\"\naddress = \"http://127.0.0.1:9\"\n\
         role = \"r\"\nspaces = [\"b\"]\n",
        policies = workspace_root().join("policies").display(),
        agents = free_addr(),
    );
    let storage = if database_url.is_some() { "database_url_env = \"KW_DATABASE_URL\"" } else { "" };
    write_config(&config, addr, &data_dir, &ConfigExtra { storage, rest: &rest, ..ConfigExtra::default() });
    let mut envs = vec![("TEST_KEK", TEST_KEK)];
    envs.extend(database_url.map(|url| ("KW_DATABASE_URL", url)));
    Broker::serve(&config, &data_dir, &format!("http://{addr}"), &envs).await
}

/// A CLI command with `token`.
fn as_token(broker: &Broker, token: &str, args: &[&str]) -> Output {
    keyward(args, &[("KEYWARD_ADDR", broker.addr.as_str()), ("KEYWARD_TOKEN", token)])
}

/// `method path` with `token` (and a JSON body): the status and the body.
async fn call(broker: &Broker, token: &str, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = reqwest::Client::new().request(method, format!("{}{path}", broker.addr)).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn get(broker: &Broker, token: &str, path: &str) -> (u16, Value) {
    call(broker, token, reqwest::Method::GET, path, None).await
}

async fn post(broker: &Broker, token: &str, path: &str, body: Value) -> (u16, Value) {
    call(broker, token, reqwest::Method::POST, path, Some(body)).await
}

fn names(list: &Value, key: &str, field: &str) -> Vec<String> {
    list[key].as_array().unwrap().iter().map(|item| item[field].as_str().unwrap().to_owned()).collect()
}

fn token(broker: &Broker, name: &str, space: &str, role: &str) -> String {
    let created = json(&broker.cli(&["token", "create", name, "--space", space, "--role", role, "--json"]));
    assert_eq!((created["space"].as_str(), created["role"].as_str()), (Some(space), Some(role)), "{created}");
    created["token"].as_str().unwrap().to_owned()
}

/// The world: spaces `a` (with child `a-child`) and `b`, a pool and a stack in each, a queued
/// run of each stack, an agent in `b`'s pool; the run IDs by stack and the agent's ID.
struct World {
    runs: std::collections::HashMap<&'static str, String>,
    agent_b: String,
}

async fn world(broker: &Broker, dir: &Path) -> World {
    for (space, parent) in [("a", "root"), ("b", "root"), ("a-child", "a")] {
        json(&broker.cli(&["space", "create", space, "--parent", parent, "--json"]));
    }
    for (pool, space) in [("pool-a", "a"), ("pool-b", "b")] {
        assert_eq!(json(&broker.cli(&["pool", "create", pool, "--space", space, "--json"]))["space"], space);
    }
    let repo = GitRepo::init(&dir.join("repo"));
    repo.commit("main.tf", "terraform {}\n");
    let url = repo.url();
    let mut runs = std::collections::HashMap::new();
    for (stack, space, pool) in
        [("stack-a", "a", "pool-a"), ("stack-b", "b", "pool-b"), ("stack-child", "a-child", "pool-a")]
    {
        let args = ["stack", "create", stack, "--repository", &url, "--space", space, "--pool", pool, "--json"];
        assert_eq!(json(&broker.cli(&args))["space"], space);
        let submitted = broker.cli(&["run", "submit", "--stack", stack]);
        assert!(submitted.success, "{}", submitted.stderr);
        runs.insert(stack, submitted.stdout.trim().to_owned());
    }
    let join_token =
        json(&broker.cli(&["pool", "join-token", "pool-b", "--json"]))["token"].as_str().unwrap().to_owned();
    let (joined, agent_b, stderr) = join(&broker.addr, &join_token, &dir.join("agent-b"));
    assert!(joined, "{stderr}");
    World { runs, agent_b }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_space_sees_and_does_only_its_own() {
    isolation(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn on_postgres_a_space_sees_and_does_only_its_own() {
    let cluster = PgCluster::start();
    isolation(Some(&cluster.database("keyward_spaces"))).await;
}

async fn isolation(database_url: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), database_url).await;
    let world = world(&broker, dir.path()).await;
    viewer_sees_only_its_space(&broker, &world).await;
    roles_act_only_where_they_hold(&broker, &world).await;
    admins_manage_only_their_space(&broker).await;
    targets_serve_only_their_spaces(&broker);
    old_tokens_keep_working(&broker, &world).await;
    bad_input_is_refused_with_nothing_stored(&broker).await;
}

async fn viewer_sees_only_its_space(broker: &Broker, world: &World) {
    let viewer = token(broker, "viewer-a", "a", "viewer");
    let run_b = &world.runs["stack-b"];
    let stacks = get(broker, &viewer, "/v1/stacks").await.1;
    assert_eq!(names(&stacks, "stacks", "name"), ["stack-a", "stack-child"], "inherited into a-child, not b");
    let runs = get(broker, &viewer, "/v1/runs").await.1;
    let mut stacks_of_runs = names(&runs, "runs", "stack");
    stacks_of_runs.sort();
    assert_eq!(stacks_of_runs, ["stack-a", "stack-child"]);
    assert_eq!(names(&get(broker, &viewer, "/v1/pools").await.1, "pools", "name"), ["pool-a"]);
    assert_eq!(names(&get(broker, &viewer, "/v1/agents").await.1, "agents", "id"), Vec::<String>::new());
    assert_eq!(names(&get(broker, &viewer, "/v1/spaces").await.1, "spaces", "name"), ["a", "a-child"]);
    // Direct reads of space b's things are answered as if they did not exist.
    for path in [
        "/v1/stacks/stack-b".to_owned(),
        format!("/v1/runs/{run_b}"),
        format!("/v1/runs/{run_b}/logs"),
        format!("/v1/runs/{run_b}/logs/bundle"),
        "/v1/runs?stack=stack-b".to_owned(),
        "/v1/agents?pool=pool-b".to_owned(),
        format!("/v1/agents/{}", world.agent_b),
        "/v1/spaces/b".to_owned(),
    ] {
        let (status, body) = get(broker, &viewer, &path).await;
        assert_eq!(status, 404, "{path}: {body}");
    }
    let (status, _) = get(broker, &viewer, &format!("/v1/runs/{}", world.runs["stack-a"])).await;
    assert_eq!(status, 200);
    // The audit log: entries about a's stacks, none about b's, none about no stack.
    let tail = get(broker, &viewer, "/v1/audit/entries?tail=1000").await.1;
    let stacks: Vec<Option<&str>> =
        tail["entries"].as_array().unwrap().iter().map(|e| e["entry"]["context"]["stack_id"].as_str()).collect();
    assert!(stacks.contains(&Some("stack-a")) && stacks.contains(&Some("stack-child")), "{stacks:?}");
    assert!(stacks.iter().all(|s| matches!(s, Some("stack-a" | "stack-child"))), "{stacks:?}");
    // A viewer cannot submit, even in its own space.
    let (status, body) = post(broker, &viewer, "/v1/runs", json!({"stack": "stack-a"})).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error_description"].as_str().unwrap().contains("needs the `submitter` role"), "{body}");
}

async fn roles_act_only_where_they_hold(broker: &Broker, world: &World) {
    let submitter = token(broker, "submitter-a", "a", "submitter");
    let (status, body) = post(broker, &submitter, "/v1/runs", json!({"stack": "stack-a"})).await;
    assert_eq!(status, 201, "{body}");
    let (status, _) = post(broker, &submitter, "/v1/runs", json!({"stack": "stack-b"})).await;
    assert_eq!(status, 404, "a submitter of a cannot submit in b");
    let (status, _) = post(broker, &submitter, &format!("/v1/runs/{}/cancel", world.runs["stack-b"]), json!({})).await;
    assert_eq!(status, 404);
    let (status, body) =
        post(broker, &submitter, &format!("/v1/runs/{}/approve", world.runs["stack-a"]), json!({})).await;
    assert_eq!(status, 403, "a submitter does not review: {body}");
    // A reviewer of `a` reviews in `a-child`: past the role check, the run is not planned yet.
    let reviewer = token(broker, "reviewer-a", "a", "reviewer");
    let child_run = &world.runs["stack-child"];
    let (status, body) = post(broker, &reviewer, &format!("/v1/runs/{child_run}/approve"), json!({})).await;
    assert_eq!(status, 409, "allowed, and refused only for the run's state: {body}");
    let (status, _) = post(broker, &reviewer, &format!("/v1/runs/{}/approve", world.runs["stack-b"]), json!({})).await;
    assert_eq!(status, 404);
}

async fn admins_manage_only_their_space(broker: &Broker) {
    let admin_a = token(broker, "admin-a", "a", "admin");
    let refused = as_token(broker, &admin_a, &["stack", "create", "x", "--repository", "file:///r", "--space", "b"]);
    assert!(!refused.success && refused.stderr.contains("unknown space `b`"), "{}", refused.stderr);
    let (status, _) =
        call(broker, &admin_a, reqwest::Method::PATCH, "/v1/stacks/stack-b", Some(json!({"branch": "x"}))).await;
    assert_eq!(status, 404);
    for (path, body) in [
        ("/v1/pools", json!({"name": "p2", "space": "b"})),
        ("/v1/spaces", json!({"name": "b2", "parent": "b"})),
        ("/v1/api-tokens", json!({"name": "t2", "space": "b", "role": "admin"})),
    ] {
        let (status, answer) = post(broker, &admin_a, path, body).await;
        assert_eq!(status, 400, "{path}: {answer}");
    }
    let (status, _) = post(broker, &admin_a, "/v1/spaces/b/bind", json!({"role": "admin", "group": "g"})).await;
    assert_eq!(status, 404);
    let (status, _) = post(broker, &admin_a, "/v1/pools/pool-b/join-tokens", json!({})).await;
    assert_eq!(status, 404);
    // In its own space it manages: a child space, a binding, a token, and it sees only a's tokens.
    let (status, body) = post(broker, &admin_a, "/v1/spaces", json!({"name": "a-two", "parent": "a"})).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = post(broker, &admin_a, "/v1/spaces/a/bind", json!({"role": "reviewer", "group": "pay"})).await;
    assert_eq!(status, 201, "{body}");
    token_of(&as_token(
        broker,
        &admin_a,
        &["token", "create", "ci-a", "--space", "a", "--role", "submitter", "--json"],
    ));
    let mut tokens = names(&get(broker, &admin_a, "/v1/api-tokens").await.1, "api_tokens", "name");
    tokens.sort();
    assert_eq!(tokens, ["admin-a", "ci-a", "reviewer-a", "submitter-a", "viewer-a"]);
    // Keys, contexts and run tokens are root's: a space admin gets 403.
    assert_eq!(get(broker, &admin_a, "/v1/keys").await.0, 403);
    assert_eq!(get(broker, &admin_a, "/v1/contexts").await.0, 403);
    // The bindings and spaces are audited.
    let bound = tail(broker, "role.bound");
    assert!(bound.contains("\"group\":\"pay\""), "{bound}");
    let created = tail(broker, "space.created");
    assert!(created.contains("a-two"), "{created}");
}

/// The audit entries of `kind`, as `keyward audit tail --json` prints them (one per line).
fn tail(broker: &Broker, kind: &str) -> String {
    let out = broker.cli(&["audit", "tail", "--kind", kind, "--json"]);
    assert!(out.success, "{}", out.stderr);
    out.stdout
}

fn token_of(output: &Output) -> String {
    json(output)["token"].as_str().unwrap().to_owned()
}

fn targets_serve_only_their_spaces(broker: &Broker) {
    let create = |name: &str, space: &str| {
        broker.cli(&[
            "stack",
            "create",
            name,
            "--repository",
            "file:///r",
            "--space",
            space,
            "--apply-target",
            "vault:b-only",
        ])
    };
    let refused = create("in-a", "a");
    assert!(!refused.success && refused.stderr.contains("serves the spaces b only"), "{}", refused.stderr);
    assert!(!broker.cli(&["stack", "show", "in-a"]).success, "nothing stored");
    let updated = broker.cli(&["stack", "update", "stack-a", "--apply-target", "vault:b-only"]);
    assert!(!updated.success && updated.stderr.contains("serves the spaces b only"), "{}", updated.stderr);
    let stack = broker.cli(&[
        "stack",
        "create",
        "in-b",
        "--repository",
        "file:///r",
        "--space",
        "b",
        "--pool",
        "pool-b",
        "--apply-target",
        "vault:b-only",
    ]);
    assert!(stack.success, "{}", stack.stderr);
}

async fn old_tokens_keep_working(broker: &Broker, world: &World) {
    let old = token_of(&broker.cli(&["token", "create-api", "--name", "old-submit", "--scope", "submit", "--json"]));
    let (status, body) = post(broker, &old, "/v1/runs", json!({"stack": "stack-b"})).await;
    assert_eq!(status, 201, "a `submit` scope token is a submitter on root: {body}");
    assert_eq!(get(broker, &old, &format!("/v1/runs/{}", world.runs["stack-a"])).await.0, 200);
    let audit = token_of(&broker.cli(&["token", "create-api", "--name", "old-audit", "--scope", "audit", "--json"]));
    let entries = get(broker, &audit, "/v1/audit/entries?tail=5&kind=space.created").await.1;
    assert_eq!(entries["entries"].as_array().unwrap().len(), 4, "an `audit` token reads the whole log: {entries}");
    assert_eq!(get(broker, &broker.admin_token, "/v1/keys").await.0, 200);
    // Token creation and revocation are on the record: name, space, role, who; never a secret.
    let created = tail(broker, "api_token.created");
    assert!(created.contains("\"old-audit\"") && created.contains("\"viewer\""), "{created}");
    assert!(!created.contains(&old) && !created.contains(&audit), "never the secret: {created}");
    let (status, _) =
        call(broker, &broker.admin_token, reqwest::Method::DELETE, "/v1/api-tokens/old-audit", None).await;
    assert_eq!(status, 200);
    assert!(tail(broker, "api_token.revoked").contains("\"old-audit\""));
    assert_eq!(get(broker, &audit, "/v1/stacks").await.0, 401, "a revoked token is refused");
    let (status, _) =
        call(broker, &broker.admin_token, reqwest::Method::DELETE, "/v1/api-tokens/old-audit", None).await;
    assert_eq!(status, 404, "revoked once");
}

async fn bad_input_is_refused_with_nothing_stored(broker: &Broker) {
    let spaces = || names(&json(&broker.cli(&["space", "list", "--json"])), "spaces", "name");
    let before = spaces();
    for (args, says) in [
        (vec!["space", "create", "loop", "--parent", "loop"], "unknown space `loop`"),
        (vec!["space", "create", "x", "--parent", "nowhere"], "unknown space `nowhere`"),
        (vec!["space", "create", "Bad Name"], "invalid space name"),
        (vec!["space", "delete", "root"], "cannot be deleted"),
        (vec!["space", "delete", "a"], "it has 1 stack, 1 pool, 2 child spaces, 1 role binding, 5 API tokens"),
        (vec!["space", "delete", "nowhere"], "unknown space `nowhere`"),
    ] {
        let out = broker.cli(&args);
        assert!(!out.success && out.stderr.contains(says), "{args:?}: {}", out.stderr);
    }
    assert_eq!(spaces(), before);
    let stack = broker.cli(&["stack", "create", "lost", "--repository", "file:///r", "--space", "nowhere"]);
    assert!(!stack.success && stack.stderr.contains("unknown space `nowhere`"), "{}", stack.stderr);
    assert!(!broker.cli(&["stack", "show", "lost"]).success);
    let role = broker.cli(&["token", "create", "t-bad", "--space", "a", "--role", "owner"]);
    assert!(!role.success && role.stderr.contains("unknown role `owner`"), "{}", role.stderr);
    let listed = json(&broker.cli(&["token", "list-api", "--json"]));
    assert!(!listed.to_string().contains("t-bad"), "{listed}");
    let admin = &broker.admin_token;
    for body in [
        json!({"role": "admin"}),
        json!({"role": "admin", "group": "g", "subject": "s"}),
        json!({"role": "root", "group": "g"}),
    ] {
        let (status, answer) = post(broker, admin, "/v1/spaces/b/bind", body).await;
        assert_eq!(status, 400, "{answer}");
    }
    let b = json(&broker.cli(&["space", "show", "b", "--json"]));
    assert_eq!(b["bindings"], json!([]), "{b}");
    // Unbinding what is not bound is refused; the one binding of `a` goes, then `a-two` can too.
    assert_eq!(post(broker, admin, "/v1/spaces/a/unbind", json!({"role": "admin", "group": "pay"})).await.0, 404);
    let out = broker.cli(&["space", "unbind", "a", "--role", "reviewer", "--group", "pay"]);
    assert!(out.success, "{}", out.stderr);
    let out = broker.cli(&["space", "delete", "a-two"]);
    assert!(out.success, "{}", out.stderr);
    let unbound = tail(broker, "role.unbound");
    assert!(unbound.contains("pay"), "{unbound}");
}
