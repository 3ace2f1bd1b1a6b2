//! Terraform state kept by the broker (`/v1/stacks/{name}/state`, `keyward state …`): a real
//! broker process, test clients holding real agent certificates and job leases, and Terraform's
//! `http` backend protocol spoken exactly as Terraform speaks it (HTTP Basic with the lease's
//! credentials; `GET`, `POST`, `LOCK`, `UNLOCK`).

use std::path::Path;
use std::time::Duration;

use keyward_proto::agent_v1::{JobAssignment, Phase, StateBackendRequest, StateBackendResponse};
use keyward_tests::agent::{WorkSession, bootstrap, enroll_in_process};
use keyward_tests::audit::Audit;
use keyward_tests::broker::{Broker, json, serve_with_agents};
use keyward_tests::git::GitRepo;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// A Terraform state document of `lineage` at `serial`, with a secret in it.
fn state(serial: i64, lineage: &str, secret: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "version": 4, "terraform_version": "1.11.4", "serial": serial, "lineage": lineage,
        "outputs": { "password": { "value": secret, "type": "string", "sensitive": true } },
        "resources": [], "check_results": null,
    }))
    .unwrap()
}

/// What Terraform's `http` backend sends, with `backend`'s credentials.
async fn terraform(backend: &StateBackendResponse, method: &str, query: &str, body: Vec<u8>) -> (StatusCode, String) {
    let response = reqwest::Client::new()
        .request(Method::from_bytes(method.as_bytes()).unwrap(), format!("{}{query}", backend.address))
        .basic_auth(&backend.username, Some(&backend.password))
        .body(body)
        .send()
        .await
        .unwrap();
    (response.status(), response.text().await.unwrap())
}

fn lock_info(id: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({ "ID": id, "Operation": "OperationTypePlan", "Who": "test@host", "Version": "1.11.4" }))
        .unwrap()
}

async fn backend_for(session: &mut WorkSession, job: &JobAssignment) -> StateBackendResponse {
    let request = StateBackendRequest { job_id: job.job_id.clone(), fencing_token: job.fencing_token };
    session.client.state_backend(request).await.expect("the lease holder gets the state backend").into_inner()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plan_job_reads_its_stacks_state_and_can_neither_write_nor_lock_it() {
    let dir = tempfile::tempdir().unwrap();
    let broker = serve_with_agents(dir.path()).await;
    let repo = GitRepo::init(&dir.path().join("repo"));
    for name in ["network", "other"] {
        json(&broker.cli(&["stack", "create", name, "--repository", &repo.url(), "--label", "env=dev", "--json"]));
    }
    // An operator imports an existing state: the first version takes any lineage.
    let file = dir.path().join("imported.tfstate");
    std::fs::write(&file, state(7, "lineage-a", "hunter2-secret")).unwrap();
    let pushed = json(&broker.cli(&["state", "push", "network", file.to_str().unwrap(), "--json"]));
    assert_eq!((pushed["version"].as_i64(), pushed["serial"].as_i64()), (Some(1), Some(7)));
    assert_eq!(pushed["source"], "push");

    let (endpoint, ca) = bootstrap(&broker.addr).await;
    let token = json(&broker.cli(&["pool", "join-token", "default", "--json"]))["token"].as_str().unwrap().to_owned();
    let (_, identity) = enroll_in_process(&endpoint, &ca, &token).await;
    let mut session = WorkSession::open(&endpoint, &ca, identity, 1).await.expect("work stream");
    let run = broker.cli(&["run", "submit", "--stack", "network"]);
    assert!(run.success, "{}", run.stderr);
    let job = session.next_assignment(Duration::from_secs(20)).await.expect("an assignment");
    assert_eq!(job.job_phase(), Phase::Plan);
    assert!(job.managed_state, "the assignment says the broker keeps the stack's state");
    let backend = backend_for(&mut session, &job).await;
    assert_eq!(backend.address, format!("{}/v1/stacks/network/state", broker.addr));
    assert_eq!(backend.username, job.job_id);

    // The plan reads the state, exactly as kept.
    let (status, body) = terraform(&backend, "GET", "", Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.as_bytes(), state(7, "lineage-a", "hunter2-secret"));

    // It can neither write nor lock: those are the apply job's.
    let (status, body) = terraform(&backend, "POST", "", state(8, "lineage-a", "x")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("only reads its stack's state"), "{body}");
    let (status, body) = terraform(&backend, "LOCK", "", lock_info("lock-1")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // Nor read another stack's state, nor use a wrong password.
    let other = StateBackendResponse { address: backend.address.replace("/network/", "/other/"), ..backend.clone() };
    let (status, body) = terraform(&other, "GET", "", Vec::new()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let forged = StateBackendResponse { password: format!("{}x", backend.password), ..backend.clone() };
    assert_eq!(terraform(&forged, "GET", "", Vec::new()).await.0, StatusCode::UNAUTHORIZED);
    let anonymous =
        reqwest::Client::new().post(&backend.address).body(state(8, "lineage-a", "x")).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);

    // Nothing of that changed anything: one version, no lock.
    let summary = json(&broker.cli(&["state", "list", "network", "--json"]));
    assert_eq!(summary["versions"].as_array().map(Vec::len), Some(1), "{summary}");
    assert!(summary["lock"].is_null(), "{summary}");

    // Once the lease is gone, so are its credentials.
    let cancel = broker.cli(&["run", "cancel", run.stdout.trim()]);
    assert!(cancel.success, "{}", cancel.stderr);
    keyward_tests::eventually("the ended lease's state credentials refused", Duration::from_secs(20), || async {
        (terraform(&backend, "GET", "", Vec::new()).await.0 == StatusCode::UNAUTHORIZED).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_pushes_pulls_and_rolls_back_and_bad_pushes_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let broker = serve_with_agents(dir.path()).await;
    let repo = GitRepo::init(&dir.path().join("repo"));
    json(&broker.cli(&["stack", "create", "network", "--repository", &repo.url(), "--label", "env=dev", "--json"]));
    let push = |serial: i64, lineage: &str, secret: &str| {
        let file = dir.path().join(format!("{serial}-{lineage}.tfstate"));
        std::fs::write(&file, state(serial, lineage, secret)).unwrap();
        broker.cli(&["state", "push", "network", file.to_str().unwrap(), "--json"])
    };
    let none = broker.cli(&["state", "pull", "network"]);
    assert!(!none.success && none.stderr.contains("has no state yet"), "{}", none.stderr);
    json(&push(3, "lineage-a", "first-secret"));
    json(&push(5, "lineage-a", "second-secret"));

    // Refused, with the reason, and nothing changes: another lineage, an older serial, the same
    // serial with other content, something that is not state at all.
    for (out, words) in [
        (push(9, "lineage-b", "x"), "is not stack `network`'s lineage"),
        (push(4, "lineage-a", "x"), "older than serial 5"),
        (push(5, "lineage-a", "changed"), "already kept with different content"),
    ] {
        assert!(!out.success, "accepted: {}", out.stdout);
        assert!(out.stderr.contains(words), "{words:?} not in {}", out.stderr);
    }
    let garbage = dir.path().join("garbage");
    std::fs::write(&garbage, b"{\"resources\": []}").unwrap();
    let out = broker.cli(&["state", "push", "network", garbage.to_str().unwrap()]);
    assert!(!out.success && out.stderr.contains("not Terraform state"), "{}", out.stderr);
    let unchanged = json(&push(5, "lineage-a", "second-secret"));
    assert_eq!(unchanged["unchanged"], true, "the same state again is not a new version");
    let listed = json(&broker.cli(&["state", "list", "network", "--json"]));
    let versions: Vec<i64> =
        listed["versions"].as_array().unwrap().iter().map(|v| v["serial"].as_i64().unwrap()).collect();
    assert_eq!(versions, [5, 3], "newest first, nothing else kept");

    // Pull: the newest, or any version, byte for byte.
    let pulled = broker.cli(&["state", "pull", "network"]);
    assert_eq!(pulled.stdout.as_bytes(), state(5, "lineage-a", "second-secret"));
    let out_file = dir.path().join("v1.tfstate");
    let pulled = broker.cli(&["state", "pull", "network", "--version", "1", "--output", out_file.to_str().unwrap()]);
    assert!(pulled.success, "{}", pulled.stderr);
    assert_eq!(std::fs::read(&out_file).unwrap(), state(3, "lineage-a", "first-secret"));
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(&out_file).unwrap().permissions().mode() & 0o077, 0, "state holds secrets");

    // Rollback: version 1's content again, with the next serial.
    let rolled = json(&broker.cli(&["state", "rollback", "network", "--version", "1", "--json"]));
    assert_eq!((rolled["version"].as_i64(), rolled["serial"].as_i64()), (Some(3), Some(6)), "{rolled}");
    let newest: Value = serde_json::from_str(&broker.cli(&["state", "pull", "network"]).stdout).unwrap();
    assert_eq!((newest["serial"].as_i64(), &newest["outputs"]["password"]["value"]), (Some(6), &json!("first-secret")));
    let out = broker.cli(&["state", "rollback", "network", "--version", "9"]);
    assert!(!out.success && out.stderr.contains("no state version 9"), "{}", out.stderr);
    let out = broker.cli(&["state", "unlock", "network"]);
    assert!(out.success && out.stdout.contains("was not locked"), "{}", out.stdout);

    // The trail: every version written and every pull, never the content; at rest, sealed.
    let audit = Audit::open(&broker.data_dir).await;
    assert_eq!(audit.count("state.written").await, 3);
    assert_eq!(audit.count("state.pulled").await, 3);
    drop(audit);
    broker.stop();
    let mut database = Vec::new();
    for entry in std::fs::read_dir(dir.path().join("broker")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            database.extend(std::fs::read(path).unwrap());
        }
    }
    for secret in ["first-secret", "second-secret", "lineage-a\",\"outputs"] {
        assert!(!database.windows(secret.len()).any(|w| w == secret.as_bytes()), "{secret} at rest in the clear");
    }
    assert!(database.windows(9).any(|w| w == b"lineage-a"), "the check can fail: the lineage is stored in the clear");
}

/// A real `keyward-agent` (sandbox, `--network none`), enrolled in pool `default`.
fn real_agent(broker: &Broker, dir: &Path) -> keyward_tests::agent::Agent {
    let token = json(&broker.cli(&["pool", "join-token", "default", "--json"]))["token"].as_str().unwrap().to_owned();
    let (ok, agent_id, stderr) = keyward_tests::agent::join(&broker.addr, &token, &dir.join("agent"));
    assert!(ok, "{stderr}");
    keyward_tests::agent::Agent::start(&dir.join("agent"), &agent_id, &[])
}

/// Submits a run of `stack` and waits for it to end.
async fn run_to_end(broker: &Broker, stack: &str) -> Value {
    let out = broker.cli(&["run", "submit", "--stack", stack]);
    assert!(out.success, "{}", out.stderr);
    let id = out.stdout.trim().to_owned();
    keyward_tests::eventually(&format!("run of {stack} to end"), Duration::from_secs(120), || {
        let run = json(&broker.cli(&["run", "show", &id, "--json"]));
        async move { matches!(run["state"].as_str(), Some("finished" | "failed" | "canceled")).then_some(run) }
    })
    .await
}

/// Real Terraform in the agent's sandbox (network `none`), through the state relay: each apply
/// locks, writes and unlocks its stack's state; the next run starts from it.
#[tokio::test(flavor = "multi_thread")]
async fn applies_keep_their_state_in_the_broker_through_the_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let broker = serve_with_agents(dir.path()).await;
    let _agent = real_agent(&broker, dir.path());
    let repo = GitRepo::init(&dir.path().join("repo"));
    let config = |input: &str| format!("resource \"terraform_data\" \"kept\" {{\n  input = \"{input}\"\n}}\n");
    repo.commit("main.tf", &config("v1"));
    json(&broker.cli(&["stack", "create", "kept", "--repository", &repo.url(), "--label", "env=dev", "--json"]));

    let first = run_to_end(&broker, "kept").await;
    assert_eq!(first["state"], "finished", "{first}");
    let after_first = json(&broker.cli(&["state", "show", "kept", "--json"]));
    let first_serial = after_first["version"]["serial"].as_i64().unwrap();
    assert_eq!(after_first["version"]["run_id"], first["id"], "{after_first}");

    // The second run plans against the kept state: only the change, not the whole stack again.
    repo.commit("main.tf", &config("v2"));
    let second = run_to_end(&broker, "kept").await;
    assert_eq!(second["state"], "finished", "{second}");
    let logs = broker.cli(&["run", "logs", second["id"].as_str().unwrap()]);
    assert!(
        logs.stdout.contains("Plan: 0 to add, 1 to change, 0 to destroy"),
        "the second plan starts from the first apply's state:\n{}",
        logs.stdout
    );
    assert!(!logs.stdout.contains("Plan: 1 to add, 0 to change, 0 to destroy"), "{}", logs.stdout);
    let after_second = json(&broker.cli(&["state", "show", "kept", "--json"]));
    assert!(after_second["version"]["serial"].as_i64().unwrap() > first_serial, "{after_second}");
    assert_eq!(after_second["version"]["lineage"], after_first["version"]["lineage"]);
    assert!(after_second["lock"].is_null(), "{after_second}");
    let pulled: Value = serde_json::from_str(&broker.cli(&["state", "pull", "kept"]).stdout).unwrap();
    assert_eq!(pulled["resources"][0]["instances"][0]["attributes"]["input"]["value"], "v2", "{pulled}");

    // On the trail: each apply locked, wrote and unlocked; the plans did none of that.
    let audit = Audit::open(&broker.data_dir).await;
    assert_eq!(audit.count("state.locked").await, 2);
    assert_eq!(audit.count("state.unlocked").await, 2);
    assert!(audit.count("state.written").await >= 2);
}

/// The override is the agent's: a repository that has a file of its name fails the job, clearly,
/// and the agent never writes through a link the repository planted.
#[tokio::test(flavor = "multi_thread")]
async fn a_repository_file_in_the_overrides_place_fails_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let broker = serve_with_agents(dir.path()).await;
    let _agent = real_agent(&broker, dir.path());
    let outside = dir.path().join("outside.tf");
    let repo = GitRepo::init(&dir.path().join("repo"));
    repo.commit("main.tf", "locals {\n  a = 1\n}\n");
    repo.commit_symlink("keyward_state_override.tf", outside.to_str().unwrap());
    json(&broker.cli(&["stack", "create", "planted", "--repository", &repo.url(), "--label", "env=dev", "--json"]));
    let run = run_to_end(&broker, "planted").await;
    assert_eq!(run["state"], "failed", "{run}");
    assert!(run["detail"].as_str().unwrap().contains("keyward_state_override.tf"), "{run}");
    assert!(!outside.exists(), "the agent wrote through the planted link");
}

/// A stack that brings its own backend: no backend in its jobs' assignments, none handed out, no
/// state kept; switching managed state on is an audited update.
#[tokio::test(flavor = "multi_thread")]
async fn a_stack_may_opt_out_and_bring_its_own_backend() {
    let dir = tempfile::tempdir().unwrap();
    let broker = serve_with_agents(dir.path()).await;
    let repo = GitRepo::init(&dir.path().join("repo"));
    let url = repo.url();
    let created = json(&broker.cli(&[
        "stack",
        "create",
        "own",
        "--repository",
        &url,
        "--label",
        "env=dev",
        "--no-managed-state",
        "--json",
    ]));
    assert_eq!(created["managed_state"], false, "{created}");
    let shown = broker.cli(&["stack", "show", "own"]);
    assert!(shown.stdout.contains("the configuration's own backend"), "{}", shown.stdout);

    let (endpoint, ca) = bootstrap(&broker.addr).await;
    let token = json(&broker.cli(&["pool", "join-token", "default", "--json"]))["token"].as_str().unwrap().to_owned();
    let (_, identity) = enroll_in_process(&endpoint, &ca, &token).await;
    let mut session = WorkSession::open(&endpoint, &ca, identity, 1).await.expect("work stream");
    assert!(broker.cli(&["run", "submit", "--stack", "own"]).success);
    let job = session.next_assignment(Duration::from_secs(20)).await.expect("an assignment");
    assert!(!job.managed_state, "the assignment names no backend");
    let request = StateBackendRequest { job_id: job.job_id.clone(), fencing_token: job.fencing_token };
    let refused = session.client.state_backend(request).await.expect_err("no backend for this stack");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");

    let file = dir.path().join("s.tfstate");
    std::fs::write(&file, state(1, "l", "x")).unwrap();
    let pushed = broker.cli(&["state", "push", "own", file.to_str().unwrap()]);
    assert!(!pushed.success && pushed.stderr.contains("does not keep its Terraform state"), "{}", pushed.stderr);

    let updated = json(&broker.cli(&["stack", "update", "own", "--managed-state", "true", "--json"]));
    assert_eq!(updated["managed_state"], true, "{updated}");
    assert_eq!(json(&broker.cli(&["state", "list", "own", "--json"]))["managed"], true);
    json(&broker.cli(&["state", "push", "own", file.to_str().unwrap(), "--json"]));
}

/// An apply killed while it holds its stack's lock (its run canceled mid-apply) does not leave
/// the stack locked: the lock goes with the lease.
#[tokio::test(flavor = "multi_thread")]
async fn a_lock_goes_with_its_lease() {
    let dir = tempfile::tempdir().unwrap();
    let broker = serve_with_agents(dir.path()).await;
    let _agent = real_agent(&broker, dir.path());
    let repo = GitRepo::init(&dir.path().join("repo"));
    repo.commit(
        "main.tf",
        "resource \"terraform_data\" \"slow\" {\n  provisioner \"local-exec\" {\n    command = \"sleep 120\"\n  }\n}\n",
    );
    json(&broker.cli(&["stack", "create", "slow", "--repository", &repo.url(), "--label", "env=dev", "--json"]));
    let out = broker.cli(&["run", "submit", "--stack", "slow"]);
    assert!(out.success, "{}", out.stderr);
    let id = out.stdout.trim().to_owned();
    let locked = keyward_tests::eventually("the apply to lock the state", Duration::from_secs(120), || {
        let summary = json(&broker.cli(&["state", "list", "slow", "--json"]));
        async move { (!summary["lock"].is_null()).then_some(summary) }
    })
    .await;
    assert!(locked["lock"]["locked_by"].as_str().unwrap().starts_with("job:"), "{locked}");
    let canceled = broker.cli(&["run", "cancel", &id]);
    assert!(canceled.success, "{}", canceled.stderr);
    let summary = json(&broker.cli(&["state", "list", "slow", "--json"]));
    assert!(summary["lock"].is_null(), "the canceled apply's lock is gone: {summary}");
}
