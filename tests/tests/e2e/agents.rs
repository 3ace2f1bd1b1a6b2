//! Private worker agents as separate processes against a real broker process, over real mTLS:
//! enrollment with one-time join tokens, the work stream, leases, revocation, crashes, restarts,
//! and the certificates and messages the endpoint must refuse.

use std::path::{Path, PathBuf};
use std::time::Duration;

use keyward_broker::agents::ca::AgentCa;
use keyward_broker::kek::Kek;
use keyward_broker::store::{DatabaseLocation, Store};
use keyward_proto::agent_v1::agent_service_client::AgentServiceClient;
use keyward_proto::agent_v1::{
    AgentMessage, BrokerMessage, CredentialsRequest, EnrollRequest, Hello, Isolation, JobAssignment, PlanPart,
    RenewRequest, SourceCredentialsRequest, agent_message,
};
use keyward_tests::agent::{Agent, WorkSession, bootstrap, channel, enroll_in_process, join, pem};
use keyward_tests::audit::Audit;
use keyward_tests::broker::{Broker, ConfigExtra, TEST_KEK, json, write_config};
use keyward_tests::git::GitRepo;
use keyward_tests::{eventually, free_addr, now, workspace_root};
use serde_json::Value;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Identity;
use tonic::{Code, Streaming};

/// A phase command that takes a while during `phase`, is quick otherwise, and appends the job ID
/// to `marks` when it completes.
fn slow_in(phase: &str, marks: &Path) -> String {
    format!("if [ \"$KEYWARD_PHASE\" = {phase} ]; then sleep 60; fi; echo \"$KEYWARD_JOB_ID\" >> '{}'", marks.display())
}

/// How long a lease lasts without a heartbeat where no test waits for one to expire: long enough
/// that no stall of a loaded machine expires a live agent's lease.
const LEASE: &str = "30s";
/// The lease where a test waits for crashed agents' leases to expire. Agents heartbeat every
/// third of it, so a live lease survives a stall of four seconds.
const SHORT_LEASE: &str = "6s";

/// A broker config with the agent endpoint on `agents` and leases of `lease`.
fn config(dir: &Path, addr: std::net::SocketAddr, agents: std::net::SocketAddr, storage: &str, lease: &str) -> PathBuf {
    let config = dir.join(format!("keyward-{}.toml", addr.port()));
    let rest = format!(
        "[policy]\ndir = \"{}\"\n[agents]\nlisten = \"{agents}\"\nlease = \"{lease}\"\npoll_interval = \"200ms\"\n",
        workspace_root().join("policies").display()
    );
    let data_dir = dir.join(format!("broker-{}", addr.port()));
    write_config(&config, addr, &data_dir, &ConfigExtra { storage, rest: &rest, ..ConfigExtra::default() });
    config
}

async fn serve(config: &Path, addr: std::net::SocketAddr, envs: &[(&str, &str)], admin: Option<&str>) -> Broker {
    let data_dir = config.with_file_name(format!("broker-{}", addr.port()));
    let mut all = vec![("TEST_KEK", TEST_KEK)];
    all.extend_from_slice(envs);
    Broker::serve_as(config, &data_dir, &format!("http://{addr}"), &all, admin).await
}

async fn start(dir: &Path) -> Broker {
    let addr = free_addr();
    serve(&config(dir, addr, free_addr(), "", LEASE), addr, &[], None).await
}

/// Where a test broker keeps its state: SQLite in its data directory, or a PostgreSQL database.
struct Backend {
    database_url: Option<String>,
}

impl Backend {
    const SQLITE: Self = Self { database_url: None };

    fn postgres(cluster: &keyward_tests::postgres::PgCluster, name: &str) -> Self {
        Self { database_url: Some(cluster.database(name)) }
    }

    fn storage(&self) -> &'static str {
        if self.database_url.is_some() { "database_url_env = \"KW_DATABASE_URL\"" } else { "" }
    }

    fn envs(&self) -> Vec<(&str, &str)> {
        self.database_url.iter().map(|url| ("KW_DATABASE_URL", url.as_str())).collect()
    }

    async fn audit(&self, broker: &Broker) -> Audit {
        match &self.database_url {
            Some(url) => Audit(Store::open(&DatabaseLocation::Postgres(url.clone())).await.unwrap()),
            None => Audit::open(&broker.data_dir).await,
        }
    }
}

fn token(broker: &Broker, pool: &str, ttl: &str) -> String {
    json(&broker.cli(&["pool", "join-token", pool, "--ttl", ttl, "--json"]))["token"].as_str().unwrap().to_owned()
}

fn stack(broker: &Broker, repo: &GitRepo, name: &str, pool: &str) {
    let url = repo.url();
    json(&broker.cli(&["stack", "create", name, "--repository", &url, "--pool", pool, "--label", "env=dev", "--json"]));
}

fn submit(broker: &Broker, stack: &str) -> String {
    let out = broker.cli(&["run", "submit", "--stack", stack]);
    assert!(out.success, "{}", out.stderr);
    out.stdout.trim().to_owned()
}

/// The run once it is in one of `states`; on a timeout, says where the run and its jobs were.
async fn run_in(broker: &Broker, id: &str, states: &[&str]) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let run = json(&broker.cli(&["run", "show", id, "--json"]));
        if states.contains(&run["state"].as_str().unwrap_or_default()) {
            return run;
        }
        assert!(std::time::Instant::now() < deadline, "run {id} did not reach {states:?} in 60 s; it is now: {run:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn leased(broker: &Broker, run_id: &str) -> Value {
    eventually("a job to be leased", Duration::from_secs(30), || {
        let run = json(&broker.cli(&["run", "show", run_id, "--json"]));
        let job = run["jobs"].as_array().unwrap().iter().find(|j| j["state"] == "leased").cloned();
        async move { job }
    })
    .await
}

/// Opens a work stream with `identity`, saying Hello as agent version `version`. The broker
/// answers a work stream only once it has checked the caller's certificate and recorded its
/// Hello, so `Ok` (the open stream) is its acceptance; `Err` is its refusal, or the TLS layer's.
async fn open_work(
    endpoint: &str,
    ca_pem: &str,
    identity: Identity,
    version: &str,
) -> Result<Streaming<BrokerMessage>, String> {
    let channel = channel(endpoint, ca_pem, Some(identity)).await?;
    let mut client = AgentServiceClient::new(channel);
    let hello = AgentMessage {
        kind: Some(agent_message::Kind::Hello(Hello {
            agent_version: version.into(),
            capacity: 1,
            job_isolation: Isolation::Process.into(),
            ..Hello::default()
        })),
    };
    client
        .work(tokio_stream::iter(vec![hello]))
        .await
        .map(tonic::Response::into_inner)
        .map_err(|status| format!("{status:?}"))
}

/// The agent version the broker last recorded a Hello from for `agent_id`.
fn recorded_version(broker: &Broker, agent_id: &str) -> Value {
    json(&broker.cli(&["agent", "show", agent_id, "--json"]))["version"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_enroll_take_jobs_and_lose_everything_when_revoked() {
    lifecycle(Backend::SQLITE).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn on_postgres_agents_enroll_take_jobs_and_lose_everything_when_revoked() {
    let cluster = keyward_tests::postgres::PgCluster::start();
    lifecycle(Backend::postgres(&cluster, "keyward_lifecycle")).await;
}

/// Enrollment, a run, drain, revocation mid-job and their records, on `backend`.
async fn lifecycle(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::init(&dir.path().join("infra"));
    let addr = free_addr();
    let broker =
        serve(&config(dir.path(), addr, free_addr(), backend.storage(), LEASE), addr, &backend.envs(), None).await;
    let marks = dir.path().join("marks");
    json(&broker.cli(&["pool", "create", "blue", "--json"]));
    stack(&broker, &repo, "net", "blue");
    // A token that expires in a second, used once the steps below have let it expire.
    let short = json(&broker.cli(&["pool", "join-token", "blue", "--ttl", "1s", "--json"]));

    // Enroll: the token works once.
    let first = token(&broker, "blue", "10m");
    let mut quick = Agent::enroll_and_run(&broker.addr, &first, &dir.path().join("a1"), &slow_in("never", &marks));
    let (reused, _, stderr) = join(&broker.addr, &first, &dir.path().join("a-reuse"));
    assert!(!reused && stderr.contains("already used"), "{stderr}");
    assert!(!dir.path().join("a-reuse/key.pem").exists(), "a refused enrollment leaves no identity");
    // A token for an unknown pool cannot even be issued.
    let unknown = broker.cli(&["pool", "join-token", "nope"]);
    assert!(!unknown.success && unknown.stderr.contains("no pool named `nope`"), "{}", unknown.stderr);

    let agents = json(&broker.cli(&["agent", "list", "--json"]));
    let listed = &agents["agents"][0];
    assert_eq!(listed["id"], quick.id.as_str());
    assert_eq!(listed["spiffe_id"].as_str().unwrap(), format!("spiffe://127.0.0.1/pool/blue/agent/{}", quick.id));

    // It reported what it can run with when it connected.
    let shown = eventually("the agent's hello to be recorded", Duration::from_secs(15), || {
        let shown = json(&broker.cli(&["agent", "show", &quick.id, "--json"]));
        async move { shown["isolation"].is_string().then_some(shown) }
    })
    .await;
    // An `--exec` agent says so, and claims no Terraform: its runs are not Terraform applies.
    assert_eq!(shown["isolation"], "process, runs --exec (not terraform)", "{shown}");
    assert!(shown["terraform_version"].is_null(), "{shown}");
    let human = broker.cli(&["agent", "show", &quick.id]);
    assert!(human.success, "{}", human.stderr);
    let isolation = human.stdout.lines().find(|l| l.starts_with("Isolation")).unwrap_or_default();
    assert!(isolation.ends_with("  process, runs --exec (not terraform)"), "{}", human.stdout);
    assert!(human.stdout.contains("valid until 20"), "dates, not Unix seconds: {}", human.stdout);
    // The table's columns line up whatever the (spaced) isolation says: it comes last.
    let table = broker.cli(&["agent", "list"]);
    let (header, row) = (table.stdout.lines().next().unwrap(), table.stdout.lines().nth(1).unwrap());
    assert_eq!(header.find("ISOLATION"), row.find("process, runs --exec"), "{}", table.stdout);
    assert_eq!(header.find("HOST"), row.find(shown["hostname"].as_str().unwrap()), "{}", table.stdout);

    // A run goes through plan and (env=dev: no review needed) apply on the agent.
    let run_id = submit(&broker, "net");
    let run = run_in(&broker, &run_id, &["finished", "failed"]).await;
    assert_eq!(run["state"], "finished", "{run}");
    let jobs: Vec<&str> = run["jobs"].as_array().unwrap().iter().map(|j| j["state"].as_str().unwrap()).collect();
    assert_eq!(jobs, ["succeeded", "succeeded"]);
    assert_eq!(std::fs::read_to_string(&marks).unwrap().lines().count(), 2, "each job ran once");
    let logs = broker.cli(&["run", "logs", &run_id]);
    assert!(logs.stdout.contains("an --exec command, not terraform"), "{}{}", logs.stdout, logs.stderr);
    assert!(!logs.stdout.contains(", terraform "), "an --exec job's log claims no Terraform: {}", logs.stdout);

    // The one-second token has expired by now (the broker's clock is this machine's, in whole
    // seconds; on a fast machine this waits out the rest of the second): it is refused.
    let expires_at = short["expires_at"].as_i64().unwrap();
    if let Ok(left) = u64::try_from(expires_at - now()) {
        tokio::time::sleep(Duration::from_secs(left)).await;
    }
    let (expired, _, stderr) = join(&broker.addr, short["token"].as_str().unwrap(), &dir.path().join("a-expired"));
    assert!(!expired && stderr.contains("expired"), "{stderr}");

    // A second agent that is slow to plan; the quick one drains so the slow one gets the job.
    let drained = broker.cli(&["agent", "drain", &quick.id]);
    assert!(drained.stdout.starts_with(&format!("agent {} drained: ", quick.id)), "{}", drained.stderr);
    let second = token(&broker, "blue", "10m");
    let mut slow = Agent::enroll_and_run(&broker.addr, &second, &dir.path().join("a2"), &slow_in("plan", &marks));
    let run_id = submit(&broker, "net");
    let job = leased(&broker, &run_id).await;
    assert_eq!(job["agent_id"], slow.id.as_str());

    // Revoked mid-job: the stream is cut at once, the plan fails, the agent stops for good.
    let revoked = broker.cli(&["agent", "revoke", &slow.id]);
    assert!(revoked.stdout.starts_with(&format!("agent {} revoked: ", slow.id)), "{}", revoked.stderr);
    let status = slow.wait_exit(Duration::from_secs(15));
    assert!(!status.success());
    assert!(slow.log_text().contains("revoked"), "{}", slow.log_text());
    let run = run_in(&broker, &run_id, &["failed"]).await;
    assert!(run["detail"].as_str().unwrap().contains("agent revoked"), "{run}");
    let restarted = Agent::run(&dir.path().join("a2"), &slow.id, "true");
    let mut restarted = restarted;
    assert!(!restarted.wait_exit(Duration::from_secs(15)).success(), "a revoked agent cannot come back");

    // The drained agent still exits cleanly on SIGTERM.
    quick.terminate();
    assert!(quick.wait_exit(Duration::from_secs(15)).success(), "{}", quick.log_text());

    let audit = backend.audit(&broker).await;
    for (kind, count) in [
        ("pool.created", 1),
        ("join_token.created", 3),
        ("agent.enrolled", 2),
        ("agent.enroll_refused", 2),
        ("agent.draining", 1),
        ("agent.revoked", 1),
    ] {
        assert_eq!(audit.count(kind).await, count, "{kind} entries");
    }
    let ended = audit.referencing(&format!("run:{run_id}")).await;
    assert!(ended.iter().any(|e| e.kind == "lease_ended" && e.details.contains("agent revoked")), "{ended:?}");
    audit.check_tree().await;
}

/// A CSR (DER) for a fresh P-256 key, asking for `names`.
fn csr(names: Vec<String>) -> (rcgen::KeyPair, Vec<u8>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let der = rcgen::CertificateParams::new(names).unwrap().serialize_request(&key).unwrap().der().to_vec();
    (key, der)
}

/// A CSR over an RSA-1024 key, made with the openssl CLI.
fn weak_csr(dir: &Path) -> Vec<u8> {
    let out = dir.join("weak.csr");
    let status = std::process::Command::new("openssl")
        .args(["req", "-new", "-newkey", "rsa:1024", "-nodes", "-subj", "/CN=weak", "-outform", "DER", "-keyout"])
        .arg(dir.join("weak.key"))
        .arg("-out")
        .arg(&out)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl");
    assert!(status.success());
    std::fs::read(out).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_endpoint_refuses_foreign_expired_and_malformed_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path()).await;
    json(&broker.cli(&["pool", "create", "blue", "--json"]));
    let (endpoint, ca_pem) = bootstrap(&broker.addr).await;
    let join_token = token(&broker, "blue", "10m");
    let mut enroll = AgentServiceClient::new(channel(&endpoint, &ca_pem, None).await.unwrap());
    let request = |csr_der: Vec<u8>| EnrollRequest {
        join_token: join_token.clone(),
        csr_der,
        hostname: "test-host".into(),
        agent_version: "test".into(),
    };

    // CSRs that ask for names, or carry a weak key, are refused, and do not use up the token.
    let named = enroll.enroll(request(csr(vec!["evil.example".into()]).1)).await.unwrap_err();
    assert_eq!(named.code(), Code::InvalidArgument);
    assert!(named.message().contains("broker assigns"), "{}", named.message());
    let weak = enroll.enroll(request(weak_csr(dir.path()))).await.unwrap_err();
    assert_eq!(weak.code(), Code::InvalidArgument);
    assert!(weak.message().contains("RSA 1024"), "{}", weak.message());
    let oversized = enroll.enroll(request(vec![0x30; 300 * 1024])).await.unwrap_err();
    assert!(matches!(oversized.code(), Code::OutOfRange | Code::ResourceExhausted), "{oversized:?}");
    let garbage = enroll.enroll(request(b"not a CSR".to_vec())).await.unwrap_err();
    assert_eq!(garbage.code(), Code::InvalidArgument);
    let wrong =
        enroll.enroll(EnrollRequest { join_token: "kwj1.nope".into(), ..request(csr(vec![]).1) }).await.unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);
    let (key, der) = csr(vec![]);
    let enrolled = enroll.enroll(request(der)).await.expect("the token still works").into_inner();
    let agent_id = enrolled.agent_id.clone();
    let mine = Identity::from_pem(pem("CERTIFICATE", &enrolled.certificate_der), key.serialize_pem());

    // Control: the real certificate opens a work stream, and the broker records its Hello.
    let control = open_work(&endpoint, &ca_pem, mine, "control").await;
    assert!(control.is_ok(), "a valid agent certificate is refused: {:?}", control.err());
    assert_eq!(recorded_version(&broker, &agent_id), "control");

    // No certificate at all: only Enroll is open.
    let mut anonymous = AgentServiceClient::new(channel(&endpoint, &ca_pem, None).await.unwrap());
    let hello = AgentMessage {
        kind: Some(agent_message::Kind::Hello(Hello {
            agent_version: "t".into(),
            capacity: 1,
            job_isolation: Isolation::Process.into(),
            ..Hello::default()
        })),
    };
    let refused = anonymous.work(tokio_stream::iter(vec![hello])).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");

    // The same agent identity from another CA: the TLS handshake fails.
    let foreign_key = rcgen::KeyPair::generate().unwrap();
    let mut foreign_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    foreign_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let foreign = rcgen::CertifiedIssuer::self_signed(foreign_params, foreign_key).unwrap();
    let (key, _) = csr(vec![]);
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names =
        vec![rcgen::SanType::URI(format!("spiffe://127.0.0.1/pool/blue/agent/{agent_id}").try_into().unwrap())];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let forged = params.signed_by(&key, &foreign).unwrap();
    let forged = Identity::from_pem(forged.pem(), key.serialize_pem());
    let refused = open_work(&endpoint, &ca_pem, forged, "forged").await;
    assert!(refused.is_err(), "a certificate from another CA was accepted");

    // An expired certificate from the real CA: refused too.
    let store = Store::open(&DatabaseLocation::Sqlite(broker.data_dir.join("keyward.db"))).await.unwrap();
    let kek = Kek::from_base64(TEST_KEK, "test").unwrap();
    let real_ca = AgentCa::load_or_create(&store, &kek, "127.0.0.1", keyward_tests::now()).await.unwrap();
    let (key, der) = csr(vec![]);
    let expired = real_ca.issue_agent(&der, "blue", &agent_id, 3600, keyward_tests::now() - 7200).unwrap();
    let expired = Identity::from_pem(pem("CERTIFICATE", &expired.der), key.serialize_pem());
    let refused = open_work(&endpoint, &ca_pem, expired, "expired").await;
    assert!(refused.is_err(), "an expired certificate was accepted");
    assert_eq!(recorded_version(&broker, &agent_id), "control", "no refused stream said Hello");
    // …while a current one from the same CA works (the refusal above was about expiry).
    let (key, der) = csr(vec![]);
    let current = real_ca.issue_agent(&der, "blue", &agent_id, 3600, keyward_tests::now()).unwrap();
    let current = Identity::from_pem(pem("CERTIFICATE", &current.der), key.serialize_pem());
    let accepted = open_work(&endpoint, &ca_pem, current, "current").await;
    assert!(accepted.is_ok(), "a current certificate is refused: {:?}", accepted.err());
    assert_eq!(recorded_version(&broker, &agent_id), "current");

    // Exactly one agent exists: no refusal left a partial enrollment behind.
    let agents = json(&broker.cli(&["agent", "list", "--json"]));
    assert_eq!(agents["agents"].as_array().unwrap().len(), 1, "{agents}");
}

#[tokio::test(flavor = "multi_thread")]
async fn crashed_agents_and_restarted_brokers_lose_nothing_and_repeat_nothing() {
    crashes_and_restarts(Backend::SQLITE).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn on_postgres_crashed_agents_and_restarted_brokers_lose_nothing_and_repeat_nothing() {
    let cluster = keyward_tests::postgres::PgCluster::start();
    crashes_and_restarts(Backend::postgres(&cluster, "keyward_crashes")).await;
}

/// Agents killed mid-plan and mid-apply, a broker restarted, then restarted with its agent
/// endpoint moved, on `backend`.
async fn crashes_and_restarts(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::init(&dir.path().join("infra"));
    let marks = dir.path().join("marks");
    let envs = backend.envs();
    let addr = free_addr();
    let config = config(dir.path(), addr, free_addr(), backend.storage(), SHORT_LEASE);
    let broker = serve(&config, addr, &envs, None).await;
    json(&broker.cli(&["pool", "create", "blue", "--json"]));
    stack(&broker, &repo, "net", "blue");

    // Killed mid-plan: the lease expires and the plan is retried by another agent.
    let mut crashing = Agent::enroll_and_run(
        &broker.addr,
        &token(&broker, "blue", "10m"),
        &dir.path().join("a1"),
        &slow_in("plan", &marks),
    );
    let run_id = submit(&broker, "net");
    leased(&broker, &run_id).await;
    crashing.kill();
    let steady = Agent::enroll_and_run(
        &broker.addr,
        &token(&broker, "blue", "10m"),
        &dir.path().join("a2"),
        &slow_in("never", &marks),
    );
    let run = run_in(&broker, &run_id, &["finished"]).await;
    assert_eq!(run["jobs"][0]["attempt"], 2, "the plan ran a second time after the crash: {run}");
    assert_eq!(run["jobs"][0]["agent_id"], steady.id.as_str());

    // Killed mid-apply: the run is interrupted, never applied again.
    drop(steady);
    let mut crashing = Agent::enroll_and_run(
        &broker.addr,
        &token(&broker, "blue", "10m"),
        &dir.path().join("a3"),
        &slow_in("apply", &marks),
    );
    let run_id = submit(&broker, "net");
    eventually("the apply to start", Duration::from_secs(30), || {
        let run = json(&broker.cli(&["run", "show", &run_id, "--json"]));
        let applying = run["jobs"].as_array().unwrap().iter().any(|j| j["phase"] == "apply" && j["state"] == "leased");
        async move { applying.then_some(()) }
    })
    .await;
    crashing.kill();
    let run = run_in(&broker, &run_id, &["interrupted"]).await;
    assert!(run["detail"].as_str().unwrap().contains("never re-applied"), "{run}");

    // The broker restarts: the agent reconnects by itself and takes new jobs; nothing repeats.
    let agent = Agent::enroll_and_run(
        &broker.addr,
        &token(&broker, "blue", "10m"),
        &dir.path().join("a4"),
        &slow_in("never", &marks),
    );
    let first = submit(&broker, "net");
    run_in(&broker, &first, &["finished"]).await;
    let admin = broker.admin_token.clone();
    broker.terminate();
    let broker = serve(&config, addr, &envs, Some(&admin)).await;
    let second = submit(&broker, "net");
    let run = run_in(&broker, &second, &["finished"]).await;
    assert_eq!(run["jobs"][0]["agent_id"], agent.id.as_str());

    // It restarts with the agent endpoint on another port: the agent, failing to reach the old
    // one, asks the broker address it enrolled with, follows, and remembers.
    broker.terminate();
    let moved = free_addr();
    let config = self::config(dir.path(), addr, moved, backend.storage(), SHORT_LEASE);
    let broker = serve(&config, addr, &envs, Some(&admin)).await;
    let third = submit(&broker, "net");
    let run = run_in(&broker, &third, &["finished"]).await;
    assert_eq!(run["jobs"][0]["agent_id"], agent.id.as_str());
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("a4/agent.json")).unwrap()).unwrap();
    assert!(state["endpoint"].as_str().unwrap().ends_with(&format!(":{}", moved.port())), "{state}");
    assert!(agent.log_text().contains("endpoint moved"), "{}", agent.log_text());

    let marked = std::fs::read_to_string(&marks).unwrap();
    let mut lines: Vec<&str> = marked.lines().collect();
    let total = lines.len();
    lines.sort_unstable();
    lines.dedup();
    assert_eq!(lines.len(), total, "a job ran twice: {marked}");
    let audit = backend.audit(&broker).await;
    assert_eq!(audit.count("job.lease_ended").await, 2, "the two crashed leases expired");
    audit.check_tree().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_postgres_brokers_share_the_queue_and_every_job_runs_once() {
    let cluster = keyward_tests::postgres::PgCluster::start();
    let database_url = cluster.database("keyward_agents");
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::init(&dir.path().join("infra"));
    let marks = dir.path().join("marks");
    let storage = "database_url_env = \"KW_DATABASE_URL\"";
    let envs = [("KW_DATABASE_URL", database_url.as_str())];
    let (addr_a, addr_b) = (free_addr(), free_addr());
    let broker_a = serve(&config(dir.path(), addr_a, free_addr(), storage, LEASE), addr_a, &envs, None).await;
    let admin = broker_a.admin_token.clone();
    let broker_b = serve(&config(dir.path(), addr_b, free_addr(), storage, LEASE), addr_b, &envs, Some(&admin)).await;
    json(&broker_a.cli(&["pool", "create", "blue", "--json"]));
    stack(&broker_a, &repo, "net", "blue");
    // The first four jobs wait until four have started: with one job per agent, every agent (two
    // on each broker's endpoint) holds one at once, so both brokers hand out work.
    let started = dir.path().join("started");
    let exec = format!(
        "echo \"$KEYWARD_JOB_ID\" >> '{started}'; while [ \"$(wc -l < '{started}')\" -lt 4 ]; do sleep 0.05; done; {}",
        slow_in("never", &marks),
        started = started.display()
    );
    let mut agents = Vec::new();
    for (i, broker) in [&broker_a, &broker_b, &broker_a, &broker_b].into_iter().enumerate() {
        let data = dir.path().join(format!("agent-{i}"));
        agents.push(Agent::enroll_and_run(&broker.addr, &token(broker, "blue", "10m"), &data, &exec));
    }
    let runs: Vec<String> = (0..8).map(|i| submit(if i % 2 == 0 { &broker_a } else { &broker_b }, "net")).collect();
    let mut jobs = 0;
    let mut served = std::collections::BTreeSet::new();
    for run_id in &runs {
        let run = run_in(&broker_a, run_id, &["finished"]).await;
        jobs += run["jobs"].as_array().unwrap().len();
        served.extend(run["jobs"].as_array().unwrap().iter().map(|j| j["agent_id"].as_str().unwrap().to_owned()));
    }
    assert_eq!(jobs, 16);
    let all: std::collections::BTreeSet<String> = agents.iter().map(|a| a.id.clone()).collect();
    assert_eq!(served, all, "every agent, on either broker's endpoint, ran jobs");
    let marked = std::fs::read_to_string(&marks).unwrap();
    let mut lines: Vec<&str> = marked.lines().collect();
    lines.sort_unstable();
    lines.dedup();
    assert_eq!((lines.len(), marked.lines().count()), (16, 16), "every job ran exactly once: {marked}");
    let store = Store::open(&DatabaseLocation::Postgres(database_url.clone())).await.unwrap();
    assert_eq!(store.audit_count("job.leased").await.unwrap(), 16, "one lease per job, across both brokers");
}

/// The certificate inside an enrollment answer: (serial as hex, notBefore, notAfter, URI SANs).
fn certificate_facts(der: &[u8]) -> (String, i64, i64, Vec<String>) {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(der).expect("an X.509 certificate");
    let serial = parsed.raw_serial().iter().skip_while(|b| **b == 0).map(|b| format!("{b:02x}")).collect();
    let validity = parsed.validity();
    let sans = parsed
        .subject_alternative_name()
        .expect("a well-formed SAN extension")
        .map(|san| {
            san.value
                .general_names
                .iter()
                .map(|name| match name {
                    GeneralName::URI(uri) => format!("URI:{uri}"),
                    other => format!("{other:?}"),
                })
                .collect()
        })
        .unwrap_or_default();
    (serial, validity.not_before.timestamp(), validity.not_after.timestamp(), sans)
}

/// What the endpoint makes of `identity` on an authenticated call: `NotFound` for a job that does
/// not exist means the certificate was accepted; otherwise the refusal.
async fn accepted(endpoint: &str, ca_pem: &str, identity: Identity) -> Result<(), String> {
    let mut client = AgentServiceClient::new(channel(endpoint, ca_pem, Some(identity)).await?);
    let request = CredentialsRequest { job_id: "no-such-job".into(), fencing_token: 1, target: "aws:none".into() };
    match client.credentials(request).await {
        Err(status) if status.code() == Code::NotFound => Ok(()),
        Err(status) => Err(format!("{status:?}")),
        Ok(_) => Err("credentials for a job that does not exist".to_owned()),
    }
}

/// Enrollment issues certificates of the configured lifetime; `Renew` gives the same identity a
/// new certificate over a new key, while the previous one keeps working until it expires (docs/
/// agents.md: revocation, not serial pinning, is the control); a revoked agent cannot renew; and
/// of enrollments racing on one join token, exactly one wins.
#[tokio::test(flavor = "multi_thread")]
async fn enrollment_and_renewal_issue_the_configured_lifetime_and_a_join_token_admits_one_racer() {
    // Not the 1 h default, so a hard-coded lifetime anywhere would show.
    const LIFETIME: i64 = 20 * 60;
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let config = dir.path().join(format!("keyward-{}.toml", addr.port()));
    let rest = format!(
        "[policy]\ndir = \"{}\"\n[agents]\nlisten = \"{}\"\ncertificate_lifetime = \"20m\"\n",
        workspace_root().join("policies").display(),
        free_addr()
    );
    let data_dir = dir.path().join(format!("broker-{}", addr.port()));
    write_config(&config, addr, &data_dir, &ConfigExtra { rest: &rest, ..ConfigExtra::default() });
    let broker = serve(&config, addr, &[], None).await;
    let (endpoint, ca_pem) = bootstrap(&broker.addr).await;

    // Racing enrollments on one token, each on its own connection: exactly one wins.
    let join_token = token(&broker, "default", "10m");
    let mut racers = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (endpoint, ca_pem, join_token) = (endpoint.clone(), ca_pem.clone(), join_token.clone());
        racers.spawn(async move {
            let (key, der) = csr(vec![]);
            let mut client = AgentServiceClient::new(channel(&endpoint, &ca_pem, None).await.unwrap());
            let request =
                EnrollRequest { join_token, csr_der: der, hostname: "racer".into(), agent_version: "t".into() };
            client.enroll(request).await.map(|answer| (key, answer.into_inner()))
        });
    }
    let (mut winners, mut losers) = (Vec::new(), Vec::new());
    while let Some(result) = racers.join_next().await {
        match result.unwrap() {
            Ok(won) => winners.push(won),
            Err(status) => losers.push(status),
        }
    }
    assert_eq!((winners.len(), losers.len()), (1, 3), "one winner: {losers:?}");
    for status in &losers {
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        assert!(status.message().contains("already used"), "{status:?}");
    }
    let agents = json(&broker.cli(&["agent", "list", "--json"]));
    assert_eq!(agents["agents"].as_array().unwrap().len(), 1, "{agents}");
    let (key, enrolled) = winners.pop().unwrap();
    let agent_id = enrolled.agent_id.clone();
    let spiffe_id = format!("URI:spiffe://127.0.0.1/pool/default/agent/{agent_id}");

    // The lifetime is the configured one. notBefore is backdated for agents whose clocks lag.
    let (first_serial, not_before, not_after, sans) = certificate_facts(&enrolled.certificate_der);
    assert_eq!(not_after - not_before, LIFETIME + keyward_broker::agents::ca::BACKDATE_SECS);
    assert_eq!(enrolled.not_after_unix, not_after, "the answer states the certificate's own expiry");
    assert_eq!(sans, std::slice::from_ref(&spiffe_id));
    let first = Identity::from_pem(pem("CERTIFICATE", &enrolled.certificate_der), key.serialize_pem());
    accepted(&endpoint, &ca_pem, first.clone()).await.expect("the enrolled certificate is accepted");

    // Renew over mTLS with a fresh key: a new certificate, same identity and lifetime.
    let (new_key, new_csr) = csr(vec![]);
    let mut client = AgentServiceClient::new(channel(&endpoint, &ca_pem, Some(first.clone())).await.unwrap());
    let renewed = client.renew(RenewRequest { csr_der: new_csr }).await.expect("renewed").into_inner();
    assert_eq!((renewed.agent_id.as_str(), renewed.pool.as_str()), (agent_id.as_str(), "default"));
    let (second_serial, not_before, not_after, sans) = certificate_facts(&renewed.certificate_der);
    assert_ne!(second_serial, first_serial, "a new serial");
    assert_eq!(not_after - not_before, LIFETIME + keyward_broker::agents::ca::BACKDATE_SECS);
    assert_eq!(sans, [spiffe_id], "the same identity");
    let second = Identity::from_pem(pem("CERTIFICATE", &renewed.certificate_der), new_key.serialize_pem());
    accepted(&endpoint, &ca_pem, second.clone()).await.expect("the renewed certificate is accepted");
    // As designed, the previous certificate is not retired before it expires.
    accepted(&endpoint, &ca_pem, first.clone()).await.expect("the previous certificate still works");
    let shown = json(&broker.cli(&["agent", "show", &agent_id, "--json"]));
    assert_eq!(shown["serial"].as_str().unwrap().trim_start_matches('0'), second_serial, "{shown}");
    let audit = Audit::open(&broker.data_dir).await;
    let renewals: Vec<Value> = audit
        .referencing(&format!("agent:{agent_id}"))
        .await
        .into_iter()
        .filter(|e| e.kind == "renewed")
        .map(|e| serde_json::from_str(&e.details).unwrap())
        .collect();
    assert_eq!(renewals.len(), 1, "{renewals:?}");
    let serial_of = |value: &Value| value.as_str().unwrap().trim_start_matches('0').to_owned();
    assert_eq!(
        (serial_of(&renewals[0]["previous_serial"]), serial_of(&renewals[0]["serial"])),
        (first_serial, second_serial.clone())
    );

    // Revoked: neither certificate renews, or is accepted at all.
    json(&broker.cli(&["agent", "revoke", &agent_id, "--json"]));
    for identity in [second, first] {
        let mut client = AgentServiceClient::new(channel(&endpoint, &ca_pem, Some(identity.clone())).await.unwrap());
        let refused = client.renew(RenewRequest { csr_der: csr(vec![]).1 }).await.unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
        assert!(refused.message().contains("revoked"), "{refused:?}");
        assert!(accepted(&endpoint, &ca_pem, identity).await.unwrap_err().contains("revoked"));
    }
    let shown = json(&broker.cli(&["agent", "show", &agent_id, "--json"]));
    assert_eq!(shown["serial"].as_str().unwrap().trim_start_matches('0'), second_serial, "no renewal after revocation");
    assert_eq!(audit.count("agent.renewed").await, 1);
}

/// An agent played by the test, enrolled in the `default` pool and holding the lease of the plan
/// job of a run of stack `net`: its ID, its work stream and the assignment.
async fn holding_a_plan(broker: &Broker, dir: &Path) -> (String, WorkSession, JobAssignment) {
    let repo = GitRepo::init(&dir.join("infra"));
    stack(broker, &repo, "net", "default");
    let (endpoint, ca) = bootstrap(&broker.addr).await;
    let (agent_id, identity) = enroll_in_process(&endpoint, &ca, &token(broker, "default", "10m")).await;
    let mut session = WorkSession::open(&endpoint, &ca, identity, 1).await.expect("work stream");
    submit(broker, "net");
    let job = session.next_assignment(Duration::from_secs(20)).await.expect("the plan job");
    session.heartbeat(&[&job.job_id]).await.expect("the lease holder's heartbeat");
    (agent_id, session, job)
}

/// A plan of `file` bytes and `json` bytes of JSON for `job`, in parts of the size an agent sends.
fn plan_parts(job: &JobAssignment, file: usize, json: usize) -> Vec<PlanPart> {
    const PART: usize = 128 * 1024;
    let part = |plan_file: Vec<u8>, plan_json: Vec<u8>| PlanPart {
        job_id: job.job_id.clone(),
        fencing_token: job.fencing_token,
        plan_file,
        plan_json,
    };
    let mut parts: Vec<PlanPart> =
        (0..file.div_ceil(PART)).map(|i| part(vec![b'p'; PART.min(file - i * PART)], Vec::new())).collect();
    parts.extend((0..json.div_ceil(PART)).map(|i| part(Vec::new(), vec![b'{'; PART.min(json - i * PART)])));
    parts
}

/// Review L1, end to end: once revoked, an agent's certificate (still within its validity) gets
/// nothing for the lease it held: no job credentials, no repository credentials, no plan kept.
#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_agents_certificate_gets_nothing_for_its_lease() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path()).await;
    let (agent_id, mut session, job) = holding_a_plan(&broker, dir.path()).await;
    let credentials =
        || CredentialsRequest { job_id: job.job_id.clone(), fencing_token: job.fencing_token, target: "aws:x".into() };
    // Control: before the revocation the agent is heard (this broker just has no targets).
    let before = session.client.credentials(credentials()).await.unwrap_err();
    assert!(!before.message().contains("revoked"), "{before:?}");

    let revoked = broker.cli(&["agent", "revoke", &agent_id]);
    assert!(revoked.success, "{}", revoked.stderr);
    let refused = |status: tonic::Status, call: &str| {
        assert_eq!(status.code(), Code::PermissionDenied, "{call}: {status:?}");
        assert!(status.message().contains(&format!("agent {agent_id} is revoked")), "{call}: {status:?}");
    };
    refused(session.client.credentials(credentials()).await.unwrap_err(), "Credentials");
    let source = SourceCredentialsRequest { job_id: job.job_id.clone(), fencing_token: job.fencing_token };
    refused(session.client.source_credentials(source).await.unwrap_err(), "SourceCredentials");
    let plan = plan_parts(&job, 16, 2);
    refused(session.client.submit_plan(tokio_stream::iter(plan)).await.unwrap_err(), "SubmitPlan");

    let audit = Audit::open(&broker.data_dir).await;
    for kind in ["credentials.allowed", "source.credentials_issued", "plan.evaluated"] {
        assert_eq!(audit.count(kind).await, 0, "{kind}");
    }
}

/// Review L6: the saved plans one agent's `SubmitPlan` streams hold at once are bounded by one
/// plan's worth (16 MiB of plan and 24 MiB of JSON), however many streams it opens; the stream
/// that would go over is refused at once with RESOURCE_EXHAUSTED, and what a stream held is given
/// back when it ends.
#[tokio::test(flavor = "multi_thread")]
async fn one_agents_plan_uploads_share_one_budget() {
    const MIB: usize = 1024 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path()).await;
    let (_, session, job) = holding_a_plan(&broker, dir.path()).await;
    // Each stream is within the per-plan limits (16 MiB + 5 MiB); the two together are not.
    let upload = |parts: Vec<PlanPart>| {
        let mut client = session.client.clone();
        let (sender, outbox) = tokio::sync::mpsc::channel(8);
        let call = tokio::spawn(async move { client.submit_plan(ReceiverStream::new(outbox)).await });
        // Sends every part and keeps the stream open: the upload ends when the sender is dropped.
        let feeder = tokio::spawn(async move {
            for part in parts {
                if sender.send(part).await.is_err() {
                    break;
                }
            }
            sender
        });
        (call, feeder)
    };
    let (mut first, first_feeder) = upload(plan_parts(&job, 16 * MIB, 5 * MIB));
    let (mut second, second_feeder) = upload(plan_parts(&job, 16 * MIB, 5 * MIB));

    // Neither can finish while its stream is open, so the first answer is the refusal. (The
    // timeout only turns a hang of the unbounded broker into a failure.)
    let (refusal, survivor, survivor_feeder) = tokio::time::timeout(Duration::from_secs(120), async {
        tokio::select! {
            answer = &mut first => (answer, second, second_feeder),
            answer = &mut second => (answer, first, first_feeder),
        }
    })
    .await
    .expect("neither upload was refused: one agent's plans in flight are unbounded");
    let refusal = refusal.unwrap().unwrap_err();
    assert_eq!(refusal.code(), Code::ResourceExhausted, "{refusal:?}");
    assert!(refusal.message().contains("budget") && refusal.message().contains("one at a time"), "{refusal:?}");

    // The other stream, closed, ends too: read to the end and judged, or, when its next part
    // reached the broker before the refused stream gave its bytes back, refused the same way.
    // Either way it is answered rather than held.
    drop(survivor_feeder.await.unwrap());
    let answered = survivor.await.unwrap().unwrap_err();
    match answered.code() {
        Code::InvalidArgument => assert!(answered.message().contains("does not parse"), "{answered:?}"),
        Code::ResourceExhausted => assert!(answered.message().contains("budget"), "{answered:?}"),
        _ => panic!("the second upload was neither judged nor refused for the budget: {answered:?}"),
    }

    // Both are over, so the whole budget is back: a plan as large goes through alone.
    let (alone, feeder) = upload(plan_parts(&job, 16 * MIB, 5 * MIB));
    drop(feeder.await.unwrap());
    let judged = alone.await.unwrap().unwrap_err();
    assert!(judged.message().contains("does not parse"), "{judged:?}");
}
