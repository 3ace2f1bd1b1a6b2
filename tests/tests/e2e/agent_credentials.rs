//! Job credentials over the agent protocol (`Credentials`): a real broker process, moto's STS, a
//! real `keyward-agent`, and test clients that hold real agent certificates and try what a
//! compromised agent would — another job's credentials, a stale fencing token, a write target
//! during a plan, a target the stack does not name.

use std::path::{Path, PathBuf};
use std::time::Duration;

use keyward_broker::store::{DatabaseLocation, Store};
use keyward_proto::agent_v1::{CredentialsRequest, CredentialsResponse, JobAssignment, Phase};
use keyward_tests::agent::{Agent, WorkSession, bootstrap, enroll_in_process};
use keyward_tests::audit::{Audit, Logged};
use keyward_tests::broker::{Broker, ConfigExtra, Output, TEST_KEK, json, write_config};
use keyward_tests::git::GitRepo;
use keyward_tests::moto::Moto;
use keyward_tests::postgres::PgCluster;
use keyward_tests::{eventually, free_addr, now, workspace_root};
use serde_json::Value;
use tonic::Code;

const ROLE_READ: &str = "arn:aws:iam::123456789012:role/state-read";
const ROLE_WRITE: &str = "arn:aws:iam::123456789012:role/network-apply";

/// A broker with an agent endpoint and four AWS targets on moto: a read target and two write
/// targets (env=dev, env=staging) in broker mode, and a read target in worker mode. SQLite, or the
/// PostgreSQL database at `database_url`. The read targets last less than the shipped policy's
/// cap (1 h, `policies/data.json`), `network-apply` longer, so each side of "the lower of the
/// two" shows.
async fn start(dir: &Path, sts: &str, database_url: Option<&str>) -> Broker {
    let addr = free_addr();
    let config = dir.join("keyward.toml");
    let data_dir = dir.join("broker");
    let rest = format!(
        "[policy]\ndir = \"{policies}\"\n[tokens]\nallowed_audiences = [\"sts.amazonaws.com\"]\n\
         [agents]\nlisten = \"{agents}\"\nlease = \"20s\"\npoll_interval = \"200ms\"\n\
         [[targets]]\nname = \"state-read\"\ntype = \"aws\"\naccess = \"read\"\nrole_arn = \"{ROLE_READ}\"\n\
         region = \"eu-west-1\"\nsts_endpoint = \"{sts}\"\nduration = \"15m\"\nmode = \"broker\"\n\
         [[targets]]\nname = \"network-apply\"\ntype = \"aws\"\naccess = \"write\"\nrole_arn = \"{ROLE_WRITE}\"\n\
         region = \"eu-west-1\"\nsts_endpoint = \"{sts}\"\nduration = \"2h\"\nmode = \"broker\"\n\
         labels = {{ env = \"dev\" }}\n\
         [[targets]]\nname = \"staging-apply\"\ntype = \"aws\"\naccess = \"write\"\nrole_arn = \"{ROLE_WRITE}\"\n\
         region = \"eu-west-1\"\nsts_endpoint = \"{sts}\"\nduration = \"1h\"\nmode = \"broker\"\n\
         labels = {{ env = \"staging\" }}\n\
         [[targets]]\nname = \"state-worker\"\ntype = \"aws\"\naccess = \"read\"\nrole_arn = \"{ROLE_READ}\"\n\
         region = \"eu-west-1\"\nsts_endpoint = \"{sts}\"\nduration = \"15m\"\nmode = \"worker\"\n",
        policies = workspace_root().join("policies").display(),
        agents = free_addr(),
    );
    let storage = if database_url.is_some() { "database_url_env = \"KW_DATABASE_URL\"" } else { "" };
    write_config(&config, addr, &data_dir, &ConfigExtra { storage, rest: &rest, ..ConfigExtra::default() });
    let mut envs = vec![("TEST_KEK", TEST_KEK)];
    envs.extend(database_url.map(|url| ("KW_DATABASE_URL", url)));
    Broker::serve(&config, &data_dir, &format!("http://{addr}"), &envs).await
}

async fn audit(broker: &Broker, database_url: Option<&str>) -> Audit {
    match database_url {
        Some(url) => Audit(Store::open(&DatabaseLocation::Postgres(url.to_owned())).await.unwrap()),
        None => Audit::open(&broker.data_dir).await,
    }
}

/// Stack `name` on the default pool, env=dev (no approvals needed), with these targets.
fn stack(broker: &Broker, repo: &GitRepo, name: &str, plan: &[&str], apply: &[&str]) {
    let url = repo.url();
    let mut args = vec!["stack", "create", name, "--repository", &url, "--label", "env=dev", "--json"];
    for target in plan {
        args.extend(["--plan-target", target]);
    }
    for target in apply {
        args.extend(["--apply-target", target]);
    }
    json(&broker.cli(&args));
}

fn submit(broker: &Broker, stack: &str) -> String {
    let out = broker.cli(&["run", "submit", "--stack", stack]);
    assert!(out.success, "{}", out.stderr);
    out.stdout.trim().to_owned()
}

fn join_token(broker: &Broker) -> String {
    json(&broker.cli(&["pool", "join-token", "default", "--json"]))["token"].as_str().unwrap().to_owned()
}

/// `KEY=VALUE` lines of a file the phase command wrote.
fn variables(path: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter_map(|line| line.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect()
}

fn variable<'a>(variables: &'a [(String, String)], name: &str) -> &'a str {
    variables.iter().find(|(k, _)| k == name).map_or_else(|| panic!("{name} not set: {variables:?}"), |(_, v)| v)
}

/// No entry of the log holds any of `secrets`.
fn nothing_secret(entries: &[Logged], secrets: &[&str]) {
    for entry in entries {
        for secret in secrets {
            assert!(!entry.body.contains(secret), "a secret is on record in a {} entry", entry.kind);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn each_phase_runs_with_its_own_targets_credentials_from_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path()).await;
    let broker = start(dir.path(), &moto.endpoint, None).await;
    let repo = GitRepo::init(&dir.path().join("repo"));
    stack(&broker, &repo, "network", &["aws:state-read"], &["aws:network-apply"]);
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    // Besides recording what it got, the phase prints its secrets the ways a careless or hostile
    // configuration would: plainly; split over two writes (the masker holds a line back until it
    // ends, so the halves are masked together: splits at every byte, and across chunks, are
    // `logs::mask`'s unit tests); base64 (the session token's encoding is long enough for `base64`
    // to wrap it); and on stderr.
    let exec = format!(
        "env | grep '^AWS_' | sort > '{}'/\"$KEYWARD_PHASE\".env; s=\"$AWS_SECRET_ACCESS_KEY\"; \
         echo \"plain $s\"; printf 'split %s' \"${{s%????????????????????}}\"; \
         printf '%s done\\n' \"${{s#????????????????????}}\"; printf '%s' \"$s\" | base64; \
         printf '%s' \"$AWS_SESSION_TOKEN\" | base64; echo \"token $AWS_SESSION_TOKEN\" >&2",
        out.display()
    );
    let agent = Agent::enroll_and_run(&broker.addr, &join_token(&broker), &dir.path().join("agent"), &exec);

    let run_id = submit(&broker, "network");
    let run = eventually("the run to finish", Duration::from_secs(60), || {
        let run = json(&broker.cli(&["run", "show", &run_id, "--json"]));
        async move { matches!(run["state"].as_str(), Some("finished" | "failed")).then_some(run) }
    })
    .await;
    assert_eq!(run["state"], "finished", "{run}\nagent log:\n{}", agent.log_text());

    // Each phase's process saw credentials, and different ones.
    let plan = variables(&out.join("plan.env"));
    let apply = variables(&out.join("apply.env"));
    for phase in [&plan, &apply] {
        assert!(variable(phase, "AWS_ACCESS_KEY_ID").starts_with("ASIA"), "{phase:?}");
        assert_eq!(variable(phase, "AWS_REGION"), "eu-west-1");
        assert!(
            !variable(phase, "AWS_SECRET_ACCESS_KEY").is_empty() && !variable(phase, "AWS_SESSION_TOKEN").is_empty()
        );
    }
    assert_ne!(variable(&plan, "AWS_ACCESS_KEY_ID"), variable(&apply, "AWS_ACCESS_KEY_ID"));

    // What the broker asked STS for: the read role for the plan, the write role for the apply,
    // each with a token that names the run, the phase and the agent.
    let requests = moto.sts_requests();
    assert_eq!(requests.len(), 2, "one STS call per phase");
    // The lower of the target's duration and the policy's cap: the read target's 15 min for the
    // plan, the policy's 1 h (not the target's 2 h) for the apply.
    for (request, role, phase, scope, seconds) in
        [(&requests[0], ROLE_READ, "plan", "read", "900"), (&requests[1], ROLE_WRITE, "apply", "write", "3600")]
    {
        assert_eq!(request.field("RoleArn"), Some(role));
        assert_eq!(request.field("RoleSessionName"), Some(run_id.as_str()), "the session is named after the run");
        assert_eq!(request.field("DurationSeconds"), Some(seconds), "the {phase}'s lifetime");
        let verdict = broker.pyjwt_verify(request.field("WebIdentityToken").unwrap(), "sts.amazonaws.com");
        assert_eq!(verdict["ok"], true, "{verdict}");
        let claims = &verdict["claims"];
        assert_eq!((claims["phase"].as_str(), claims["scope"].as_str()), (Some(phase), Some(scope)));
        assert_eq!(claims["run_id"], run_id.as_str());
        assert_eq!(claims["agent_id"], agent.id.as_str(), "the token names the agent that ran the phase");
        assert_eq!(claims["pool"], "default");
        assert_eq!(claims["commit_sha"], run["commit_sha"]);
        assert_eq!(claims["ref"], "refs/heads/main");
    }

    // On record: one decision and one issuance per phase, naming the agent and its lease; no secret.
    let store = Audit::open(&broker.data_dir).await;
    let entries = store.for_run(&run_id).await;
    let allowed: Vec<&Logged> = entries.iter().filter(|e| e.kind == "allowed").collect();
    assert_eq!(allowed.len(), 2, "{entries:#?}");
    for entry in &allowed {
        let details: Value = serde_json::from_str(&entry.details).unwrap();
        assert_eq!(details["agent_id"], agent.id.as_str());
        assert!(details["agent_spiffe_id"].as_str().unwrap().ends_with(&format!("/pool/default/agent/{}", agent.id)));
        assert!(details["fencing_token"].as_i64().unwrap() >= 1);
        assert_eq!(entry.context["actor"], "exchange:job");
    }
    let issued: Vec<Value> = entries
        .iter()
        .filter(|e| e.kind == "issued")
        .map(|e| serde_json::from_str::<Value>(&e.details).unwrap())
        .collect();
    let keys: Vec<&str> = issued.iter().map(|d| d["access_key_id"].as_str().unwrap()).collect();
    assert_eq!(keys, [variable(&plan, "AWS_ACCESS_KEY_ID"), variable(&apply, "AWS_ACCESS_KEY_ID")]);
    let secrets = [
        variable(&plan, "AWS_SECRET_ACCESS_KEY"),
        variable(&plan, "AWS_SESSION_TOKEN"),
        variable(&apply, "AWS_SECRET_ACCESS_KEY"),
        variable(&apply, "AWS_SESSION_TOKEN"),
    ];
    nothing_secret(&entries, &secrets);
    let logs = format!("{}{}", broker.log_text(), agent.log_text());
    for secret in secrets {
        assert!(!logs.contains(secret), "a secret reached a log");
    }
    // The job's own log, as stored and served: every form of every secret masked.
    let printed = broker.cli(&["run", "logs", &run_id]);
    assert!(printed.success, "{}", printed.stderr);
    let text = printed.stdout;
    assert_eq!(text.matches("plain ***\n").count(), 2, "{text}");
    assert_eq!(text.matches("split *** done\n").count(), 2, "split over two writes: {text}");
    assert_eq!(text.matches("token ***\n").count(), 2, "{text}");
    for secret in secrets {
        use base64::Engine as _;
        let encoded = base64::engine::general_purpose::STANDARD.encode(secret);
        for needle in [secret, &secret[..20], &secret[20..], &encoded[..40], &encoded[encoded.len() - 40..]] {
            assert!(!text.contains(needle), "a secret (or part, or its base64) is in the job's log:\n{text}");
        }
    }
    let base64_lines = text.lines().filter(|l| l.starts_with("***")).count();
    assert!(base64_lines >= 4, "the base64 lines are masked: {text}");
    // Complete, sealed, and verifiable.
    let verified = broker.cli(&["run", "logs", &run_id, "--verify"]);
    assert!(verified.success, "{}", verified.stderr);
    assert_eq!(verified.stdout.matches("sealed in the audit log").count(), 2, "{}", verified.stdout);
    for entry in entries.iter().filter(|e| e.kind == "finished") {
        assert!(entry.details.contains("\"log_complete\":true"), "{}", entry.details);
    }
    // The credential files and work directory of each job are gone with the job: the agent's
    // private jobs directory is empty again.
    let leftovers: Vec<PathBuf> =
        std::fs::read_dir(dir.path().join("agent/jobs")).unwrap().filter_map(Result::ok).map(|e| e.path()).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

async fn ask(
    session: &mut WorkSession,
    job: &JobAssignment,
    fencing_token: u64,
    target: &str,
) -> Result<CredentialsResponse, tonic::Status> {
    let request = CredentialsRequest { job_id: job.job_id.clone(), fencing_token, target: target.to_owned() };
    session.client.credentials(request).await.map(tonic::Response::into_inner)
}

fn refused(result: Result<CredentialsResponse, tonic::Status>, code: Code, words: &str) {
    match result {
        Ok(response) => panic!("issued instead of refused ({words}): {:?}", response.environment.keys()),
        Err(status) => {
            assert_eq!(status.code(), code, "{status:?}");
            assert!(status.message().contains(words), "{words:?} not in {:?}", status.message());
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_lease_holder_gets_credentials_and_a_plan_never_writes() {
    lease_holders_only(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn on_postgres_only_the_lease_holder_gets_credentials_and_a_plan_never_writes() {
    let cluster = PgCluster::start();
    lease_holders_only(Some(&cluster.database("keyward_job_credentials"))).await;
}

async fn lease_holders_only(database_url: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path()).await;
    let broker = start(dir.path(), &moto.endpoint, database_url).await;
    let repo = GitRepo::init(&dir.path().join("repo"));
    stack(&broker, &repo, "network", &["aws:state-read"], &["aws:network-apply"]);
    stack(&broker, &repo, "worker", &["aws:state-worker"], &[]);
    let (endpoint, ca) = bootstrap(&broker.addr).await;
    let (holder_id, holder) = enroll_in_process(&endpoint, &ca, &join_token(&broker)).await;
    let (_, other) = enroll_in_process(&endpoint, &ca, &join_token(&broker)).await;

    let mut session = WorkSession::open(&endpoint, &ca, holder, 2).await.expect("work stream");
    let network_run = submit(&broker, "network");
    let worker_run = submit(&broker, "worker");
    let mut jobs = Vec::new();
    for _ in 0..2 {
        jobs.push(session.next_assignment(Duration::from_secs(20)).await.expect("an assignment"));
    }
    jobs.sort_by_key(|job| job.run_id != network_run);
    let (network, worker) = (&jobs[0], &jobs[1]);
    assert_eq!((network.job_phase(), worker.run_id.as_str()), (Phase::Plan, worker_run.as_str()));
    assert_eq!(network.credential_targets, ["aws:state-read"], "the assignment names the phase's targets");
    session.heartbeat(&[&network.job_id, &worker.job_id]).await.expect("the work stream is open");
    let store = audit(&broker, database_url).await;
    let minted_before = store.count("token.minted").await;

    // A plan never gets a write target, even one the stack names for its apply.
    refused(
        ask(&mut session, network, network.fencing_token, "aws:network-apply").await,
        Code::PermissionDenied,
        "grants write access",
    );
    // Nor a read target its stack does not name.
    refused(
        ask(&mut session, network, network.fencing_token, "aws:state-worker").await,
        Code::PermissionDenied,
        "is not one of stack `network`'s plan targets",
    );
    // Both refusals are on record with the job and the agent; nothing was minted for them.
    let denied: Vec<Logged> = store.for_run(&network_run).await.into_iter().filter(|e| e.kind == "denied").collect();
    assert_eq!(denied.len(), 2, "{denied:#?}");
    assert!(denied.iter().all(|e| e.details.contains(&holder_id) && e.details.contains(&network.job_id)));
    assert_eq!(store.count("token.minted").await, minted_before, "a refusal mints nothing");

    // A stale fencing token, and a valid agent that does not hold the lease, get nothing.
    refused(
        ask(&mut session, network, network.fencing_token + 1, "aws:state-read").await,
        Code::PermissionDenied,
        "stale or foreign lease",
    );
    let mut intruder = WorkSession::open(&endpoint, &ca, other, 1).await.expect("second agent's stream");
    refused(
        ask(&mut intruder, network, network.fencing_token, "aws:state-read").await,
        Code::PermissionDenied,
        "stale or foreign lease",
    );
    refused(
        ask(&mut session, network, network.fencing_token, "aws:nowhere").await,
        Code::InvalidArgument,
        "unknown target",
    );
    assert_eq!(moto.sts_requests().len(), 0, "no STS call for any refusal");

    // The holder, with its lease: broker-mode credentials for the phase's target.
    let issued = ask(&mut session, network, network.fencing_token, "aws:state-read").await.expect("issued");
    assert!(issued.environment["AWS_ACCESS_KEY_ID"].starts_with("ASIA"), "{:?}", issued.environment.keys());
    let requests = moto.sts_requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].field("DurationSeconds"), Some("900"), "the read target's 15 min, under the cap");
    assert!(issued.expires_unix <= now() + 900, "expiry within the lifetime asked for: {}", issued.expires_unix);

    // Worker mode: a web-identity token in a file, for the job to take to STS itself.
    let worker_issued = ask(&mut session, worker, worker.fencing_token, "aws:state-worker").await.expect("issued");
    assert_eq!(worker_issued.environment["AWS_ROLE_ARN"], ROLE_READ);
    assert_eq!(worker_issued.environment["AWS_ROLE_SESSION_NAME"], worker_run);
    assert_eq!(worker_issued.environment["AWS_ENDPOINT_URL_STS"], moto.endpoint);
    assert!(!worker_issued.environment.contains_key("AWS_SECRET_ACCESS_KEY"));
    let file = worker_issued
        .files
        .iter()
        .find(|f| f.environment_variable == "AWS_WEB_IDENTITY_TOKEN_FILE")
        .expect("token file");
    let token = String::from_utf8(file.content.clone()).unwrap();
    let verdict = broker.pyjwt_verify(&token, "sts.amazonaws.com");
    assert_eq!(verdict["ok"], true, "{verdict}");
    assert_eq!(verdict["claims"]["agent_id"], holder_id.as_str());
    assert_eq!(verdict["claims"]["scope"], "read");
    assert_eq!(moto.sts_requests().len(), 1, "worker mode: the broker calls no STS");

    // Once the run is canceled the lease is gone, and so are the credentials.
    json(&broker.cli(&["run", "cancel", &network_run, "--json"]));
    refused(
        ask(&mut session, network, network.fencing_token, "aws:state-read").await,
        Code::PermissionDenied,
        "stale or foreign lease",
    );
    nothing_secret(
        &store.for_run(&network_run).await,
        &[issued.environment["AWS_SECRET_ACCESS_KEY"].as_str(), issued.environment["AWS_SESSION_TOKEN"].as_str()],
    );
    nothing_secret(&store.for_run(&worker_run).await, &[token.as_str()]);
}

/// `keyward ARGS` as the API token `token` (not the admin's).
fn as_token(broker: &Broker, token: &str, args: &[&str]) -> Output {
    keyward_tests::broker::keyward(args, &[("KEYWARD_ADDR", broker.addr.as_str()), ("KEYWARD_TOKEN", token)])
}

fn api_token(broker: &Broker, name: &str, scope: &str) -> String {
    json(&broker.cli(&["token", "create-api", "--name", name, "--scope", scope, "--json"]))["token"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn wait_for_state(broker: &Broker, run_id: &str, states: &[&str]) -> Value {
    eventually("the run to settle", Duration::from_secs(60), || {
        let run = json(&broker.cli(&["run", "show", run_id, "--json"]));
        let done = run["state"].as_str().is_some_and(|s| {
            states.contains(&s) || matches!(s, "finished" | "failed" | "canceled" | "discarded" | "interrupted")
        });
        async move { done.then_some(run) }
    })
    .await
}

/// The trail's human end, end to end: a run submitted by `alice` (submit scope), whose approval
/// is refused; an admin author's own approval that is recorded but never counts; `bob` (review
/// scope) approves; the agent applies with write credentials; `audit trace` of the apply's access
/// key names bob as the approver, alice only as submitter, the apply phase, commit, PR and ticket;
/// the export verifies against the signed checkpoint.
#[tokio::test(flavor = "multi_thread")]
async fn the_trail_names_the_people_who_really_approved() {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path()).await;
    let broker = start(dir.path(), &moto.endpoint, None).await;
    let repo = GitRepo::init(&dir.path().join("repo"));
    // env=staging: one independent approval, for the approval policy and for the write target.
    let url = repo.url();
    json(&broker.cli(&[
        "stack",
        "create",
        "network",
        "--repository",
        &url,
        "--label",
        "env=staging",
        "--plan-target",
        "aws:state-read",
        "--apply-target",
        "aws:staging-apply",
        "--json",
    ]));
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let exec = format!("env | grep '^AWS_' | sort > '{}'/\"$KEYWARD_PHASE\".env", out.display());
    let agent = Agent::enroll_and_run(&broker.addr, &join_token(&broker), &dir.path().join("agent"), &exec);
    let alice = api_token(&broker, "alice", "submit");
    let bob = api_token(&broker, "bob", "review");
    let carol = api_token(&broker, "carol", "admin");

    let submitted =
        as_token(&broker, &alice, &["run", "submit", "--stack", "network", "--pr", "42", "--ticket", "CHG-7"]);
    assert!(submitted.success, "{}", submitted.stderr);
    let run_id = submitted.stdout.trim().to_owned();
    let planned = wait_for_state(&broker, &run_id, &["planned"]).await;
    assert_eq!(planned["state"], "planned", "{planned}\nagent log:\n{}", agent.log_text());
    assert!(
        planned["detail"].as_str().unwrap().contains("needs 1 approval(s) from someone other than its author 'alice'"),
        "a planned run says what it waits for: {planned}"
    );

    // A submit token never approves, its own run or any other.
    let refused = as_token(&broker, &alice, &["run", "approve", &run_id]);
    assert!(!refused.success && refused.stderr.contains("HTTP 403"), "{}", refused.stderr);
    assert!(refused.stderr.contains("needs the `reviewer` role or higher"), "{}", refused.stderr);

    // An author with every scope: the approval is recorded, never counted, and says why.
    let own = as_token(&broker, &carol, &["run", "submit", "--stack", "network", "--wait", "--timeout", "60s"]);
    assert_eq!(own.code, Some(3), "--wait stops at a run waiting for approval: {}", own.stderr);
    assert!(own.stderr.contains("waiting for approval: needs 1 approval(s)"), "{}", own.stderr);
    let own_id = own.stdout.lines().next().unwrap().trim().to_owned();
    let approved_own = as_token(&broker, &carol, &["run", "approve", &own_id]);
    assert!(approved_own.success, "{}", approved_own.stderr);
    assert!(approved_own.stdout.contains("author's own approval does not count"), "{}", approved_own.stdout);
    let own_run = json(&broker.cli(&["run", "show", &own_id, "--json"]));
    assert_eq!(own_run["state"], "planned", "{own_run}");
    assert_eq!(own_run["reviews"][0]["counted"], false, "{own_run}");
    assert!(own_run["detail"].as_str().unwrap().contains("carol's own approval does not count"), "{own_run}");
    let shown = broker.cli(&["run", "show", &own_id]);
    assert!(shown.stdout.contains("approved by   nobody yet"), "{}", shown.stdout);
    assert!(shown.stdout.contains("(not counted: the run's author cannot approve it)"), "{}", shown.stdout);
    json(&broker.cli(&["run", "cancel", &own_id, "--json"]));

    // bob reviews alice's run: it applies.
    let approved = as_token(&broker, &bob, &["run", "approve", &run_id, "--comment", "LGTM"]);
    assert!(approved.success, "{}", approved.stderr);
    let finished = wait_for_state(&broker, &run_id, &["finished"]).await;
    assert_eq!(finished["state"], "finished", "{finished}\nagent log:\n{}", agent.log_text());
    let apply_key = variable(&variables(&out.join("apply.env")), "AWS_ACCESS_KEY_ID").to_owned();

    // What STS was shown for the apply: bob as the approver, in the claims and the session tags.
    let requests = moto.sts_requests();
    let apply_request = requests.iter().find(|r| r.field("RoleArn") == Some(ROLE_WRITE)).expect("an apply STS call");
    let verdict = broker.pyjwt_verify(apply_request.field("WebIdentityToken").unwrap(), "sts.amazonaws.com");
    let claims = &verdict["claims"];
    assert_eq!(claims["approved_by"], serde_json::json!(["bob"]), "{claims}");
    assert_eq!(claims["https://aws.amazon.com/tags"]["principal_tags"]["approver"], serde_json::json!(["bob"]));
    assert_eq!(claims["triggered_by"], "alice");
    assert!(claims.get("asserted_by").is_none(), "a job's token rests on the broker's own record: {claims}");

    // The trace of the apply's key.
    let trace = broker.cli(&["audit", "trace", &apply_key]);
    assert!(trace.success, "{}", trace.stderr);
    for expected in [
        &format!("run {run_id}  stack network  (deploy run)"),
        &format!("{apply_key}: credentials.issued"),
        "phase apply  target aws:staging-apply",
        &format!("agent {}", agent.id),
        "pool default",
        &format!("commit {}", finished["commit_sha"].as_str().unwrap()),
        "ref refs/heads/main",
        "PR #42  ticket CHG-7",
        "submitted  by alice",
        "bob approved",
        "approved   by bob (as this credential carries it)",
    ] {
        assert!(trace.stdout.contains(expected), "`{expected}` missing from the trace:\n{}", trace.stdout);
    }
    assert!(!trace.stdout.contains("approved   by alice"), "{}", trace.stdout);

    // The export verifies offline against the signed checkpoint.
    let checkpoint = dir.path().join("checkpoint.txt");
    let public_key = dir.path().join("log.pub");
    let export = dir.path().join("log.jsonl");
    for (args, file) in [
        (vec!["audit", "checkpoint"], &checkpoint),
        (vec!["audit", "public-key"], &public_key),
        (vec!["audit", "export"], &export),
    ] {
        let out = broker.cli(&args);
        assert!(out.success, "{}", out.stderr);
        std::fs::write(file, &out.stdout).unwrap();
    }
    // The trace names the tree head the way the checkpoint does (nothing was appended since).
    let note = std::fs::read_to_string(&checkpoint).unwrap();
    let (size, root) = (note.lines().nth(1).unwrap(), note.lines().nth(2).unwrap());
    let retraced = broker.cli(&["audit", "trace", &apply_key]);
    assert!(
        retraced.stdout.contains(&format!("log: {size} entries, head {root} (base64")),
        "{}\n{note}",
        retraced.stdout
    );
    let key = std::fs::read_to_string(&public_key).unwrap();
    let verified = broker.cli(&[
        "audit",
        "verify",
        export.to_str().unwrap(),
        "--checkpoint",
        checkpoint.to_str().unwrap(),
        "--public-key",
        key.trim(),
    ]);
    assert!(verified.success, "{}\n{}", verified.stdout, verified.stderr);
    assert!(verified.stdout.contains("verified"), "{}", verified.stdout);
}

/// What the policy decided is what a job gets (DESIGN.md §8.12, §8.1): a target the policy denies
/// fails the job with the policy's reason, on record, with no STS call and no token; a policy TTL
/// below the target's duration is the session the job gets. The shipped library, with a plan cap
/// of 20 minutes and one more rule.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_meets_the_policys_refusal_and_its_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    for entry in std::fs::read_dir(workspace_root().join("policies")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rego") {
            std::fs::copy(&path, policies.join(path.file_name().unwrap())).unwrap();
        }
    }
    let mut data: Value =
        serde_json::from_str(&std::fs::read_to_string(workspace_root().join("policies/data.json")).unwrap()).unwrap();
    data["keyward"]["settings"]["ttl_caps"]["plan"] = Value::from(1200);
    std::fs::write(policies.join("data.json"), data.to_string()).unwrap();
    const REASON: &str = "restricted targets are closed to jobs";
    std::fs::write(
        policies.join("restricted.rego"),
        format!(
            "package keyward.credentials\n\ndeny contains \"{REASON}\" if {{\n\
             \tobject.get(object.get(object.get(input, \"target\", {{}}), \"labels\", {{}}), \"tier\", \"\") == \"restricted\"\n}}\n"
        ),
    )
    .unwrap();

    let moto = Moto::start(dir.path()).await;
    let addr = free_addr();
    let config = dir.path().join("keyward.toml");
    let data_dir = dir.path().join("broker");
    let rest = format!(
        "[policy]\ndir = \"{policies}\"\n[tokens]\nallowed_audiences = [\"sts.amazonaws.com\"]\n\
         [agents]\nlisten = \"{agents}\"\nlease = \"20s\"\npoll_interval = \"200ms\"\n\
         [[targets]]\nname = \"state-read\"\ntype = \"aws\"\naccess = \"read\"\nrole_arn = \"{ROLE_READ}\"\n\
         region = \"eu-west-1\"\nsts_endpoint = \"{sts}\"\nduration = \"1h\"\nmode = \"broker\"\n\
         [[targets]]\nname = \"vault-of-secrets\"\ntype = \"aws\"\naccess = \"read\"\nrole_arn = \"{ROLE_READ}\"\n\
         region = \"eu-west-1\"\nsts_endpoint = \"{sts}\"\nduration = \"1h\"\nmode = \"broker\"\n\
         labels = {{ tier = \"restricted\" }}\n",
        policies = policies.display(),
        agents = free_addr(),
        sts = moto.endpoint,
    );
    write_config(&config, addr, &data_dir, &ConfigExtra { rest: &rest, ..ConfigExtra::default() });
    let broker = Broker::serve(&config, &data_dir, &format!("http://{addr}"), &[("TEST_KEK", TEST_KEK)]).await;
    let repo = GitRepo::init(&dir.path().join("repo"));
    stack(&broker, &repo, "capped", &["aws:state-read"], &[]);
    stack(&broker, &repo, "restricted", &["aws:vault-of-secrets"], &[]);
    let marks = dir.path().join("marks");
    let exec = format!("echo \"$KEYWARD_RUN_ID\" >> '{}'", marks.display());
    let agent = Agent::enroll_and_run(&broker.addr, &join_token(&broker), &dir.path().join("agent"), &exec);

    // Refused by the policy: the job fails before its command runs, saying why.
    let refused_run = submit(&broker, "restricted");
    let run = wait_for_state(&broker, &refused_run, &[]).await;
    assert_eq!(run["state"], "failed", "{run}\nagent log:\n{}", agent.log_text());
    let detail = run["detail"].as_str().unwrap();
    assert!(detail.contains("credentials for target `aws:vault-of-secrets` refused"), "{run}");
    assert!(detail.contains(REASON), "the policy's reason: {run}");
    let store = Audit::open(&broker.data_dir).await;
    let entries = store.for_run(&refused_run).await;
    let denied: Vec<&Logged> = entries.iter().filter(|e| e.kind == "denied").collect();
    assert_eq!(denied.len(), 1, "{entries:#?}");
    assert!(denied[0].reasons.contains(REASON), "{:?}", denied[0].reasons);
    let details: Value = serde_json::from_str(&denied[0].details).unwrap();
    assert_eq!(details["agent_id"].as_str(), Some(agent.id.as_str()), "{details}");
    assert_eq!(details["job_id"], run["jobs"][0]["id"], "{details}");
    assert!(!entries.iter().any(|e| e.kind == "minted" || e.kind == "issued"), "{entries:#?}");
    assert!(!std::fs::read_to_string(&marks).unwrap_or_default().contains(&refused_run), "the job's command ran");
    assert_eq!(moto.sts_requests().len(), 0, "no STS call for a refusal");

    // Capped by the policy below the target's hour: the session lasts the policy's 20 minutes.
    let capped_run = submit(&broker, "capped");
    let run = wait_for_state(&broker, &capped_run, &[]).await;
    assert_eq!(run["state"], "finished", "{run}\nagent log:\n{}", agent.log_text());
    let requests = moto.sts_requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].field("DurationSeconds"), Some("1200"), "the policy's ttl, not the target's 3600");
    let entries = store.for_run(&capped_run).await;
    let at = |kind: &str| {
        let entry = entries.iter().find(|e| e.kind == kind).unwrap_or_else(|| panic!("no {kind}: {entries:#?}"));
        let body: Value = serde_json::from_str(&entry.body).unwrap();
        (body["at"].as_i64().unwrap(), serde_json::from_str::<Value>(&entry.details).unwrap())
    };
    let ((allowed_at, _), (issued_at, issued)) = (at("allowed"), at("issued"));
    assert_eq!(issued["duration_seconds"], 1200, "{issued}");
    // STS was called between the decision and the record of what it issued: the job's
    // credentials expire 20 minutes after that.
    let expires = issued["credentials_expire_at"].as_i64().unwrap();
    assert!((allowed_at + 1200..=issued_at + 1200).contains(&expires), "{allowed_at} {issued_at} {issued}");
}

/// The files of the job in `slot` (a `slot-N` directory): its work directory and the path of
/// its web-identity token file.
fn job_files(slot: &Path) -> Option<(PathBuf, PathBuf)> {
    let mut work = None;
    let mut token = None;
    for entry in std::fs::read_dir(slot).ok()?.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("run-") {
            work = Some(entry.path().join("work"));
        } else if name.starts_with("keyward-job-") {
            token = Some(entry.path().join("aws_web_identity_token_file"));
        }
    }
    Some((work?, token?))
}

/// `cat` of `dir/name` as host `uid`/`gid`, reaching `dir` through a descriptor the shell opened
/// as root (so the agent's private parent directories are not in the way: only the job
/// directory's and the file's own modes decide). True when it read the file.
fn read_as(uid: u32, gid: u32, dir: &Path, name: &str) -> (bool, String) {
    let script = format!(
        "exec 3< '{}' && exec setpriv --reuid={uid} --regid={gid} --clear-groups cat /proc/self/fd/3/{name}",
        dir.display()
    );
    let out = std::process::Command::new("bash").args(["-c", &script]).output().expect("bash");
    (out.status.success() && !out.stdout.is_empty(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Security review M6: two jobs running at once run as two host uids of the agent's range
/// (neither `nobody`), each owns only its own credential file, and neither can read the other's
/// (inside the sandbox, where it is not even visible, nor on the host as the other job's uid).
/// Jobs' files live in the agent's own 0700 `jobs/` directory, not in /tmp.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_jobs_run_as_distinct_host_uids_and_cannot_read_each_others_credentials() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path()).await;
    let broker = start(dir.path(), &moto.endpoint, None).await;
    let repo = GitRepo::init(&dir.path().join("repo"));
    stack(&broker, &repo, "first", &["aws:state-worker"], &[]);
    stack(&broker, &repo, "second", &["aws:state-worker"], &[]);
    // The plan job says who it is, then waits on a FIFO for the path of the other job's token
    // file, tries to read it (it must fail: not even visible), and checks it can read its own.
    let exec = "[ \"$KEYWARD_PHASE\" = plan ] || exit 0; id -u > inside-uid; mkfifo gate; read other < gate; \
                if cat \"$other\" > /dev/null 2> err; then echo 'read the other job s credentials'; exit 1; fi; \
                grep -q 'No such file' err || { cat err; exit 1; }; \
                head -c 1 \"$AWS_WEB_IDENTITY_TOKEN_FILE\" > /dev/null";
    let agent_dir = dir.path().join("agent");
    let (ok, agent_id, stderr) = keyward_tests::agent::join(&broker.addr, &join_token(&broker), &agent_dir);
    assert!(ok, "{stderr}");
    let agent = Agent::start(&agent_dir, &agent_id, &["--exec", exec, "--capacity", "2"]);
    let runs = [submit(&broker, "first"), submit(&broker, "second")];

    // Both plan jobs running at once, each waiting at its gate.
    let jobs_dir = agent_dir.join("jobs");
    let jobs = eventually("two jobs waiting at their gates", Duration::from_secs(60), || {
        let found: Vec<(PathBuf, PathBuf)> = (0..2)
            .filter_map(|slot| job_files(&jobs_dir.join(format!("slot-{slot}"))))
            .filter(|(work, _)| work.join("gate").exists())
            .collect();
        async move { (found.len() == 2).then_some(found) }
    })
    .await;

    // The agent's private parent: 0700, root's, inside its data dir, not in the temp dir.
    let meta = std::fs::metadata(&jobs_dir).unwrap();
    assert_eq!((meta.permissions().mode() & 0o777, meta.uid()), (0o700, 0));
    // Nothing of these jobs in the system's temp dir (where they used to be, world-listable).
    let job_ids: Vec<String> = runs
        .iter()
        .flat_map(|run| json(&broker.cli(&["run", "show", run, "--json"]))["jobs"].as_array().unwrap().clone())
        .map(|job| job["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(job_ids.len(), 2);
    let temp = std::fs::read_dir(std::env::temp_dir()).unwrap().filter_map(Result::ok);
    let in_temp: Vec<String> = temp
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| job_ids.iter().any(|id| name.contains(id.as_str())))
        .collect();
    assert!(in_temp.is_empty(), "job files in the temp dir: {in_temp:?}");

    // Seen from the host: the owner of what each job created, and of its credential file.
    let mut ids = Vec::new();
    for (work, token) in &jobs {
        let made = std::fs::metadata(work.join("inside-uid")).unwrap();
        assert_eq!(std::fs::read_to_string(work.join("inside-uid")).unwrap().trim(), "0", "root inside");
        let file = std::fs::metadata(token).unwrap();
        assert_eq!((file.uid(), file.gid()), (made.uid(), made.gid()), "the token file is the job's");
        assert_eq!(file.permissions().mode() & 0o777, 0o400);
        assert_eq!(std::fs::metadata(token.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o500);
        ids.push((made.uid(), made.gid()));
    }
    let [(uid_a, gid_a), (uid_b, gid_b)] = [ids[0], ids[1]];
    assert_ne!(uid_a, uid_b, "two running jobs, two uids");
    assert_ne!(gid_a, gid_b, "and two gids");
    for uid in [uid_a, uid_b] {
        assert_ne!(uid, 65534, "not nobody");
        assert!((2_080_374_784..2_080_374_784 + 65_536).contains(&uid), "from the default range: {uid}");
    }

    // On the host, as job A's uid: job B's token file cannot be read; as B's own uid it can
    // (the method works).
    let (token_a, token_b) = (&jobs[0].1, &jobs[1].1);
    let name = "aws_web_identity_token_file";
    let (read, error) = read_as(uid_a, gid_a, token_b.parent().unwrap(), name);
    assert!(!read && error.contains("Permission denied"), "job A's uid read job B's credentials: {error}");
    let (read, error) = read_as(uid_b, gid_b, token_a.parent().unwrap(), name);
    assert!(!read && error.contains("Permission denied"), "job B's uid read job A's credentials: {error}");
    let (read, error) = read_as(uid_b, gid_b, token_b.parent().unwrap(), name);
    assert!(read, "job B's uid reads its own token file: {error}");

    // Inside the sandbox: each job gets the other's path and fails to read it.
    for (gate, other) in [(&jobs[0].0, token_b), (&jobs[1].0, token_a)] {
        let gate = gate.join("gate");
        let other = format!("{}\n", other.display());
        let write = tokio::task::spawn_blocking(move || std::fs::write(gate, other));
        tokio::time::timeout(Duration::from_secs(30), write).await.expect("a job reads its gate").unwrap().unwrap();
    }
    for run_id in &runs {
        let run = eventually("the run to finish", Duration::from_secs(60), || {
            let run = json(&broker.cli(&["run", "show", run_id, "--json"]));
            async move { matches!(run["state"].as_str(), Some("finished" | "failed")).then_some(run) }
        })
        .await;
        let log = broker.cli(&["run", "logs", run_id]).stdout;
        assert_eq!(run["state"], "finished", "{run}\n{log}\nagent log:\n{}", agent.log_text());
    }
    let left: Vec<PathBuf> = std::fs::read_dir(&jobs_dir).unwrap().filter_map(Result::ok).map(|e| e.path()).collect();
    assert!(left.is_empty(), "the jobs' files are gone: {left:?}");
}
