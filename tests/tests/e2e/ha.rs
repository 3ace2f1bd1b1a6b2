//! High availability under faults, on real processes: three `keyward serve` replicas on one
//! PostgreSQL, behind one shared external URL (the load balancer's name, as a real deployment
//! has), with clients exchanging run tokens for moto STS credentials round-robin across them.
//! One replica is killed with SIGKILL mid-load; PostgreSQL is stopped and started again
//! mid-load; STS hangs mid-load. Each time: the clients see clean errors only, the survivors go
//! on (or recover by themselves), every credential a client received is on record exactly once,
//! nothing is on record twice, the tree verifies, and no job is applied twice. Agents dialing one
//! replica's endpoint cannot move when it dies (its leases end on a survivor); agents behind a
//! layer-4 balancer (`agents.advertise`) reconnect to a survivor and carry on.
//!
//! Expensive: each test starts PostgreSQL, three brokers and mostly moto (10–20 s each).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keyward_broker::store::{DatabaseLocation, Store};
use keyward_tests::agent::{Agent, join};
use keyward_tests::audit::Audit;
use keyward_tests::broker::{Broker, Output, TEST_KEK, keyward};
use keyward_tests::git::GitRepo;
use keyward_tests::moto::Moto;
use keyward_tests::postgres::PgCluster;
use keyward_tests::{eventually, free_addr, http, workspace_root};
use serde_json::{Value, json};

const ROLE: &str = "arn:aws:iam::123456789012:role/network-apply";
const REPLICAS: usize = 3;

/// Three replicas on one database. `shared` is the external URL they all carry (the issuer of
/// every token, the audience of run tokens); nothing listens there, as with a load balancer that
/// the tests go around to reach each replica directly.
struct Replicas {
    brokers: Vec<Option<Broker>>,
    urls: Vec<String>,
    shared: String,
    admin: String,
    database_url: String,
}

impl Replicas {
    /// Starts the replicas on `database_url`, their AWS target on `sts`, laid out as `layout`.
    async fn start(dir: &Path, database_url: &str, sts: &str, layout: &Layout<'_>) -> Self {
        let shared = format!("http://{}", free_addr());
        let envs = [("TEST_KEK", TEST_KEK), ("KW_DATABASE_URL", database_url)];
        let (mut brokers, mut urls, mut admin) = (Vec::new(), Vec::new(), None::<String>);
        for (i, agents) in layout.agents.iter().enumerate() {
            let addr = free_addr();
            let data_dir = dir.join(format!("broker-{i}"));
            let config = dir.join(format!("keyward-{i}.toml"));
            let text = config_text(addr, &shared, &data_dir, sts, layout, *agents);
            std::fs::write(&config, text).unwrap();
            let url = format!("http://{addr}");
            let broker = Broker::serve_as(&config, &data_dir, &url, &envs, admin.as_deref()).await;
            admin.get_or_insert_with(|| broker.admin_token.clone());
            brokers.push(Some(broker));
            urls.push(url);
        }
        let admin = admin.unwrap_or_default();
        Self { brokers, urls, shared, admin, database_url: database_url.to_owned() }
    }

    fn broker(&self, i: usize) -> &Broker {
        self.brokers[i].as_ref().expect("a live replica")
    }

    /// Runs a CLI command against replica `i`, expecting JSON.
    fn cli_json(&self, i: usize, args: &[&str]) -> Value {
        let out = self.broker(i).cli(args);
        assert!(out.success, "{args:?}: {}", out.stderr);
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{args:?} is not JSON ({e}): {}", out.stdout))
    }

    /// Submits a run of `stack` through replica `i`; returns its ID.
    fn submit(&self, i: usize, stack: &str) -> String {
        let out = self.broker(i).cli(&["run", "submit", "--stack", stack]);
        assert!(out.success, "run submit {stack}: {}", out.stderr);
        out.stdout.trim().to_owned()
    }

    async fn audit(&self) -> Audit {
        Audit(Store::open(&DatabaseLocation::Postgres(self.database_url.clone())).await.expect("open the database"))
    }

    /// `GET /readyz` of every live replica, as status codes.
    async fn readiness(&self) -> Vec<u16> {
        let client = http();
        let mut statuses = Vec::new();
        for (i, url) in self.urls.iter().enumerate() {
            if self.brokers[i].is_some() {
                let response = client.get(format!("{url}/readyz")).send().await;
                statuses.push(response.map_or(0, |r| r.status().as_u16()));
            }
        }
        statuses
    }

    /// Waits until every live replica answers `/readyz` with `status`.
    async fn await_readiness(&self, status: u16, what: &str) {
        eventually(what, Duration::from_secs(60), || async move {
            self.readiness().await.iter().all(|s| *s == status).then_some(())
        })
        .await;
    }
}

/// How the replicas are set up besides their database and STS.
struct Layout<'a> {
    /// Extra lines for `[server]`.
    server: &'a str,
    /// Each replica's agent endpoint (one replica per entry).
    agents: Vec<std::net::SocketAddr>,
    /// `agents.advertise` of every replica, if they share one (a balancer in front).
    advertise: Option<String>,
}

impl<'a> Layout<'a> {
    fn new(server: &'a str) -> Self {
        Self { server, agents: (0..REPLICAS).map(|_| free_addr()).collect(), advertise: None }
    }
}

fn config_text(
    addr: std::net::SocketAddr,
    shared: &str,
    data_dir: &Path,
    sts: &str,
    layout: &Layout<'_>,
    agents: std::net::SocketAddr,
) -> String {
    let advertise = layout.advertise.as_ref().map(|a| format!("advertise = \"{a}\"\n")).unwrap_or_default();
    format!(
        "[server]\nlisten = \"{addr}\"\nexternal_url = \"{shared}\"\n{server}\n\
         [storage]\ndata_dir = \"{data}\"\ndatabase_url_env = \"KW_DATABASE_URL\"\n\
         [keys]\nkek_env = \"TEST_KEK\"\n\
         [policy]\ndir = \"{policies}\"\n[tokens]\nallowed_audiences = [\"sts.amazonaws.com\"]\n\
         [agents]\nlisten = \"{agents}\"\n{advertise}lease = \"6s\"\npoll_interval = \"200ms\"\n\
         [[targets]]\nname = \"network-apply\"\ntype = \"aws\"\naccess = \"write\"\nrole_arn = \"{ROLE}\"\n\
         region = \"eu-west-1\"\nsts_endpoint = \"{sts}\"\nduration = \"1h\"\nmode = \"broker\"\n\
         labels = {{ env = \"dev\" }}\nwrite_subjects = [\"job\", \"run\"]\n",
        server = layout.server,
        data = data_dir.display(),
        policies = workspace_root().join("policies").display(),
    )
}

// ---- The client load ----

/// What one client iteration (mint at one replica, exchange at the next) ended with.
#[derive(Debug, Clone)]
enum Outcome {
    /// Credentials received: the access key ID, and the replica that exchanged.
    Issued { run: String, access_key_id: String, via: usize },
    /// An HTTP answer other than success, from replica `via`, after `took`.
    Refused { run: String, via: usize, status: u16, body: Value, took: Duration, exchanging: bool },
    /// No HTTP answer from replica `via` (connection refused or reset).
    Unreachable { run: String, via: usize, exchanging: bool },
}

/// Clients minting and exchanging round-robin over the replicas they still believe alive: a
/// replica that does not answer at all is dropped from a client's rotation (the client moves to
/// the others), a replica that answers with an error is kept.
struct Load {
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    stop: Arc<AtomicBool>,
    tasks: tokio::task::JoinSet<()>,
}

impl Outcome {
    /// The replica that issued credentials, if this is an issuance.
    fn issued_via(&self) -> Option<usize> {
        if let Self::Issued { via, .. } = self { Some(*via) } else { None }
    }

    /// The replica that refused, if this is a refusal.
    fn refused_via(&self) -> Option<usize> {
        if let Self::Refused { via, .. } = self { Some(*via) } else { None }
    }
}

impl Load {
    fn start(replicas: &Replicas, clients: usize) -> Self {
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let counter = Arc::new(AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..clients {
            let client = Client {
                urls: replicas.urls.clone(),
                shared: replicas.shared.clone(),
                admin: replicas.admin.clone(),
                alive: vec![true; replicas.urls.len()],
                http: http(),
            };
            let (outcomes, stop, counter) = (Arc::clone(&outcomes), Arc::clone(&stop), Arc::clone(&counter));
            tasks.spawn(client.run(outcomes, stop, counter));
        }
        Self { outcomes, stop, tasks }
    }

    fn snapshot(&self) -> Vec<Outcome> {
        self.outcomes.lock().unwrap().clone()
    }

    fn issued(&self) -> usize {
        self.snapshot().iter().filter(|o| matches!(o, Outcome::Issued { .. })).count()
    }

    /// Waits (up to 60 s) until every replica has given, from outcome `since` on, an outcome
    /// `via` picks (it returns the replica that gave it).
    async fn until_every_replica(&self, what: &str, since: usize, via: fn(&Outcome) -> Option<usize>) {
        self.until(what, Duration::from_secs(60), |o| {
            let after = o.get(since..).unwrap_or_default();
            (0..REPLICAS).all(|i| after.iter().any(|o| via(o) == Some(i)))
        })
        .await;
    }

    /// Waits until `check` holds for the outcomes so far.
    async fn until(&self, what: &str, timeout: Duration, check: impl Fn(&[Outcome]) -> bool) {
        let deadline = Instant::now() + timeout;
        while !check(&self.snapshot()) {
            if Instant::now() > deadline {
                let outcomes = self.snapshot();
                let failures: Vec<&Outcome> =
                    outcomes.iter().filter(|o| !matches!(o, Outcome::Issued { .. })).take(5).collect();
                panic!(
                    "timed out after {timeout:?} waiting for {what}; {} outcomes, first failures: {failures:?}",
                    outcomes.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn finish(mut self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::SeqCst);
        while let Some(joined) = self.tasks.join_next().await {
            joined.expect("a client task panicked");
        }
        self.snapshot()
    }
}

struct Client {
    urls: Vec<String>,
    shared: String,
    admin: String,
    alive: Vec<bool>,
    http: reqwest::Client,
}

impl Client {
    async fn run(mut self, outcomes: Arc<Mutex<Vec<Outcome>>>, stop: Arc<AtomicBool>, counter: Arc<AtomicUsize>) {
        while !stop.load(Ordering::SeqCst) {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let live: Vec<usize> = (0..self.urls.len()).filter(|i| self.alive[*i]).collect();
            assert!(!live.is_empty(), "every replica stopped answering");
            let (mint_at, exchange_at) = (live[n % live.len()], live[(n + 1) % live.len()]);
            let outcome = self.iteration(&format!("ha-{n}"), mint_at, exchange_at).await;
            if let Outcome::Unreachable { via, .. } = &outcome {
                self.alive[*via] = false;
            }
            outcomes.lock().unwrap().push(outcome);
        }
    }

    async fn iteration(&self, run: &str, mint_at: usize, exchange_at: usize) -> Outcome {
        let body = json!({
            "stack": "network", "run_id": run, "phase": "apply", "audience": self.shared,
            "commit_sha": "0123abc", "ref": "refs/heads/main", "triggered_by": "alice",
        });
        let started = Instant::now();
        let request = self.http.post(format!("{}/v1/run-tokens", self.urls[mint_at])).bearer_auth(&self.admin);
        let (status, minted) = match answer(request.json(&body)).await {
            Some(answer) => answer,
            None => return Outcome::Unreachable { run: run.to_owned(), via: mint_at, exchanging: false },
        };
        if status != 201 {
            let took = started.elapsed();
            return Outcome::Refused {
                run: run.to_owned(),
                via: mint_at,
                status,
                body: minted,
                took,
                exchanging: false,
            };
        }
        let token = minted["token"].as_str().unwrap_or_default();
        let form = keyward_tests::broker::exchange_form(token, "aws:network-apply");
        let started = Instant::now();
        let request = self.http.post(format!("{}/v1/token", self.urls[exchange_at])).form(&form);
        match answer(request).await {
            None => Outcome::Unreachable { run: run.to_owned(), via: exchange_at, exchanging: true },
            Some((200, body)) => Outcome::Issued {
                run: run.to_owned(),
                access_key_id: body["aws_credentials"]["AccessKeyId"].as_str().unwrap_or_default().to_owned(),
                via: exchange_at,
            },
            Some((status, body)) => {
                let took = started.elapsed();
                Outcome::Refused { run: run.to_owned(), via: exchange_at, status, body, took, exchanging: true }
            }
        }
    }
}

/// The status and JSON body of `request`, or `None` when no complete answer came.
async fn answer(request: reqwest::RequestBuilder) -> Option<(u16, Value)> {
    let response = request.send().await.ok()?;
    let status = response.status().as_u16();
    let bytes = response.bytes().await.ok()?;
    Some((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
}

// ---- What the log must say afterwards ----

/// Every entry of the log, parsed, after checking the tree from the stored bodies.
async fn entries(audit: &Audit) -> Vec<(String, Value)> {
    let size = audit.check_tree().await;
    let stored = audit.0.audit_entries(0, size, size).await.expect("entries");
    stored.into_iter().map(|e| (e.kind, serde_json::from_str(&e.body).expect("entry JSON"))).collect()
}

/// The access key IDs of the log's `credentials.issued` entries, each with how often it occurs.
fn issued_on_record(entries: &[(String, Value)]) -> BTreeMap<String, usize> {
    let mut issued = BTreeMap::new();
    for (kind, body) in entries {
        if kind == "credentials.issued" {
            let key = body["details"]["access_key_id"].as_str().expect("an issued entry names its key").to_owned();
            *issued.entry(key).or_insert(0) += 1;
        }
    }
    issued
}

/// Every credential a client received is on record exactly once, nothing is on record twice, and
/// what is on record but was not received belongs to an exchange that did not complete
/// (`unfinished` run IDs). Returns how many were received.
fn check_issuance(entries: &[(String, Value)], outcomes: &[Outcome], unfinished: &BTreeSet<String>) -> usize {
    let issued = issued_on_record(entries);
    let duplicated: Vec<_> = issued.iter().filter(|(_, n)| **n > 1).collect();
    assert!(duplicated.is_empty(), "access keys on record more than once: {duplicated:?}");
    let received: BTreeMap<&str, &str> = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Issued { run, access_key_id, .. } => Some((access_key_id.as_str(), run.as_str())),
            _ => None,
        })
        .collect();
    for (key, run) in &received {
        assert!(issued.contains_key(*key), "{run}: the client received {key}, which is not on record");
    }
    let run_of_key: BTreeMap<&str, &str> = entries
        .iter()
        .filter(|(kind, _)| kind == "credentials.issued")
        .filter_map(|(_, body)| Some((body["details"]["access_key_id"].as_str()?, body["context"]["run_id"].as_str()?)))
        .collect();
    for key in issued.keys().filter(|k| !received.contains_key(k.as_str())) {
        let run = run_of_key.get(key.as_str()).copied().unwrap_or_default();
        assert!(unfinished.contains(run), "{key} ({run}) is on record, but its exchange was not interrupted");
    }
    received.len()
}

/// Run IDs whose exchange got no complete answer.
fn interrupted_exchanges(outcomes: &[Outcome]) -> BTreeSet<String> {
    outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Unreachable { run, exchanging: true, .. } => Some(run.clone()),
            Outcome::Refused { run, exchanging: true, .. } => Some(run.clone()),
            _ => None,
        })
        .collect()
}

/// `keyward audit checkpoint`, `public-key` and `export` from replica `i`, then `keyward audit
/// verify` of the export against the checkpoint, offline.
fn verify_export(replicas: &Replicas, i: usize, dir: &Path) {
    let token_file = dir.join("admin-token");
    std::fs::write(&token_file, &replicas.admin).unwrap();
    let env = [("KEYWARD_ADDR", replicas.urls[i].as_str()), ("KEYWARD_TOKEN_FILE", token_file.to_str().unwrap())];
    let audit = |args: &[&str]| -> Output {
        let out = keyward(&[&["audit"], args].concat(), &env);
        assert!(out.success, "keyward audit {args:?}: {}", out.stderr);
        out
    };
    let checkpoint = dir.join("checkpoint.txt");
    std::fs::write(&checkpoint, audit(&["checkpoint"]).stdout).unwrap();
    let key = dir.join("log.pub");
    std::fs::write(&key, audit(&["public-key"]).stdout.trim()).unwrap();
    let log = dir.join("log.jsonl");
    std::fs::write(&log, audit(&["export"]).stdout).unwrap();
    let paths = [&log, &checkpoint, &key].map(|p| p.to_str().unwrap().to_owned());
    let verified = audit(&["verify", &paths[0], "--checkpoint", &paths[1], "--public-key", &paths[2]]);
    assert!(verified.stdout.contains("signature and head match"), "{}", verified.stdout);
}

// ---- Scenario 1: a replica killed with SIGKILL mid-load, with agents at work ----

/// An agent's command: an apply announces itself in `held` and waits for `go` to exist; every
/// job appends its ID to `marks` when it completes.
fn agent_exec(marks: &Path, held: &Path, go: &Path) -> String {
    format!(
        "if [ \"$KEYWARD_PHASE\" = apply ]; then echo \"$KEYWARD_JOB_ID\" >> '{held}'; \
         while [ ! -e '{go}' ]; do sleep 0.05; done; fi; echo \"$KEYWARD_JOB_ID\" >> '{marks}'",
        held = held.display(),
        go = go.display(),
        marks = marks.display()
    )
}

/// Enrolls an agent through replica `i` (its join token from there too) and runs it.
fn agent_through(replicas: &Replicas, i: usize, data: &Path, exec: &str) -> Agent {
    let token = replicas.cli_json(i, &["pool", "join-token", "blue", "--ttl", "10m", "--json"]);
    let (ok, id, stderr) = join(&replicas.urls[i], token["token"].as_str().unwrap(), data);
    assert!(ok, "keyward-agent join through replica {i}: {stderr}");
    Agent::run(data, &id, exec)
}

async fn run_in(replicas: &Replicas, i: usize, run_id: &str, states: &[&str]) -> Value {
    eventually(&format!("run {run_id} to reach {states:?}"), Duration::from_secs(60), || {
        let run = replicas.cli_json(i, &["run", "show", run_id, "--json"]);
        let done = states.contains(&run["state"].as_str().unwrap_or_default());
        async move { done.then_some(run) }
    })
    .await
}

/// Lines of `path` (none if it does not exist yet).
fn lines(path: &PathBuf) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_killed_mid_load_loses_nothing_and_repeats_nothing() {
    let cluster = PgCluster::start();
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path()).await;
    let mut replicas =
        Replicas::start(dir.path(), &cluster.database("keyward_ha"), &moto.endpoint, &Layout::new("")).await;
    let repo = GitRepo::init(&dir.path().join("infra"));
    replicas.cli_json(0, &["pool", "create", "blue", "--json"]);
    for stack in ["net-a", "net-b", "net-c"] {
        let url = repo.url();
        replicas.cli_json(
            0,
            &["stack", "create", stack, "--repository", &url, "--pool", "blue", "--label", "env=dev", "--json"],
        );
    }
    let [marks, held, go] = ["marks", "held", "go"].map(|name| dir.path().join(name));
    let exec = agent_exec(&marks, &held, &go);

    // An agent enrolled through replica 0 holds an apply when replica 0 dies.
    let _doomed_agent = agent_through(&replicas, 0, &dir.path().join("agent-0"), &exec);
    let held_run = replicas.submit(0, "net-a");
    eventually("the apply to start on the agent of replica 0", Duration::from_secs(60), || {
        let started = !lines(&held).is_empty();
        async move { started.then_some(()) }
    })
    .await;
    let survivor = agent_through(&replicas, 1, &dir.path().join("agent-1"), &agent_exec(&marks, &held, &go));

    let load = Load::start(&replicas, 3);
    load.until_every_replica("issuance through every replica", 0, Outcome::issued_via).await;
    replicas.brokers[0].take().expect("replica 0").stop();
    let issued_before = load.issued();

    // The survivors take new runs; the agent of replica 1 runs them.
    let mut later = Vec::new();
    for (i, stack) in [(1, "net-b"), (2, "net-c")] {
        later.push(replicas.submit(i, stack));
    }
    std::fs::write(&go, "").unwrap();
    load.until("issuance to go on through the survivors", Duration::from_secs(60), |o| {
        o.iter().filter(|o| matches!(o, Outcome::Issued { .. })).count() >= issued_before + 30
    })
    .await;
    for run_id in &later {
        let run = run_in(&replicas, 2, run_id, &["finished"]).await;
        assert!(run["jobs"].as_array().unwrap().iter().all(|j| j["agent_id"] == survivor.id.as_str()), "{run}");
    }
    let outcomes = load.finish().await;
    check_clean_failures_at(&outcomes, 0);

    // The apply held through the dead replica: its lease expires on a survivor, the run is
    // interrupted and never applied again, although the agent finished it on its own.
    let run = run_in(&replicas, 1, &held_run, &["interrupted"]).await;
    assert!(run["detail"].as_str().unwrap_or_default().contains("never re-applied"), "{run}");
    let applies = run["jobs"].as_array().unwrap().iter().filter(|j| j["phase"] == "apply").count();
    assert_eq!(applies, 1, "the interrupted apply was leased again: {run}");
    let held_job = lines(&held).first().cloned().unwrap();
    eventually("the orphaned apply to finish on its agent", Duration::from_secs(30), || {
        let done = lines(&marks).contains(&held_job);
        async move { done.then_some(()) }
    })
    .await;
    check_jobs_ran_once(&lines(&marks), &entries(&replicas.audit().await).await);

    let entries = entries(&replicas.audit().await).await;
    let received = check_issuance(&entries, &outcomes, &interrupted_exchanges(&outcomes));
    assert!(received >= issued_before + 30, "{received} credentials received");
    verify_export(&replicas, 2, dir.path());
}

/// Every failure the clients saw involved replica `killed` and had no answer at all (a request in
/// flight to it, or the one that found it gone); the survivors answered every request.
fn check_clean_failures_at(outcomes: &[Outcome], killed: usize) {
    for outcome in outcomes {
        match outcome {
            Outcome::Issued { .. } => {}
            Outcome::Unreachable { via, .. } => assert_eq!(*via, killed, "a survivor did not answer: {outcome:?}"),
            Outcome::Refused { .. } => panic!("a replica answered with an error: {outcome:?}"),
        }
    }
    let failures = outcomes.iter().filter(|o| !matches!(o, Outcome::Issued { .. })).count();
    // Each client finds the dead replica once (its rotation still had it), at most twice (mint
    // and exchange in flight), then moves on.
    assert!((1..=6).contains(&failures), "{failures} failures for 3 clients: the clients did not move on");
}

/// Each job ran at most once (its mark once) and finished at most once on record.
fn check_jobs_ran_once(marks: &[String], entries: &[(String, Value)]) {
    let unique: BTreeSet<&String> = marks.iter().collect();
    assert_eq!(unique.len(), marks.len(), "a job ran twice: {marks:?}");
    let mut finished = BTreeMap::new();
    for (kind, body) in entries {
        if kind == "job.finished" {
            *finished.entry(body["details"]["job_id"].as_str().unwrap_or_default().to_owned()).or_insert(0) += 1;
        }
    }
    assert!(finished.values().all(|n| *n == 1), "a job finished twice on record: {finished:?}");
    assert!(!finished.is_empty(), "no job finished on record");
}

// ---- Scenario 2: PostgreSQL stopped and started again mid-load ----

#[tokio::test(flavor = "multi_thread")]
async fn postgres_restarted_mid_load_fails_closed_then_every_replica_recovers() {
    // Durable: the server is crashed below (immediate shutdown), which is what is under test.
    let cluster = PgCluster::start_durable();
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path()).await;
    let server = "request_timeout = \"5s\"";
    let replicas =
        Replicas::start(dir.path(), &cluster.database("keyward_ha"), &moto.endpoint, &Layout::new(server)).await;
    let load = Load::start(&replicas, 3);
    load.until_every_replica("issuance through every replica", 0, Outcome::issued_via).await;

    cluster.stop();
    replicas.await_readiness(503, "every replica to turn not ready").await;
    // Every replica, asked during the outage, refuses.
    let stopped_at = load.snapshot().len();
    load.until_every_replica("every replica to refuse during the outage", stopped_at, Outcome::refused_via).await;

    cluster.start_again();
    replicas.await_readiness(200, "every replica to recover by itself").await;
    let resumed = load.snapshot().len();
    load.until_every_replica("issuance through every replica again", resumed, Outcome::issued_via).await;
    let outcomes = load.finish().await;

    for outcome in &outcomes {
        match outcome {
            Outcome::Issued { .. } => {}
            Outcome::Unreachable { .. } => panic!("a replica stopped answering: {outcome:?}"),
            Outcome::Refused { status, body, .. } => {
                assert_eq!((*status, body["error"].as_str()), (503, Some("temporarily_unavailable")), "{outcome:?}");
                assert!(body.get("token").is_none() && body.get("aws_credentials").is_none(), "{outcome:?}");
                assert!(!body.to_string().contains("postgres"), "internal errors stay internal: {outcome:?}");
            }
        }
    }
    let entries = entries(&replicas.audit().await).await;
    check_issuance(&entries, &outcomes, &interrupted_exchanges(&outcomes));
    verify_export(&replicas, 1, dir.path());
}

// ---- Scenario 3: STS hangs mid-load ----

#[tokio::test(flavor = "multi_thread")]
async fn sts_hanging_mid_load_is_a_bounded_502_and_nothing_comes_from_elsewhere() {
    let cluster = PgCluster::start();
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path()).await;
    let replicas = Replicas::start(dir.path(), &cluster.database("keyward_ha"), &moto.endpoint, &Layout::new("")).await;
    let load = Load::start(&replicas, 3);
    load.until_every_replica("issuance through every replica", 0, Outcome::issued_via).await;

    // STS accepts connections and never answers: every exchange ends in the STS call's own
    // deadline (12 s over at most 3 attempts), as a 502, never with credentials from anywhere.
    let frozen = moto.frozen();
    let frozen_at = load.snapshot().len();
    let refused_while_frozen = |o: &[Outcome]| {
        let after = o.get(frozen_at..).unwrap_or_default();
        after.iter().filter(|o| matches!(o, Outcome::Refused { .. })).count()
    };
    load.until("exchanges refused while STS hangs", Duration::from_secs(60), |o| refused_while_frozen(o) >= 3).await;
    drop(frozen);
    let thawed = load.snapshot().len();
    load.until_every_replica("issuance through every replica once STS is back", thawed, Outcome::issued_via).await;
    let outcomes = load.finish().await;

    for outcome in &outcomes {
        match outcome {
            Outcome::Issued { .. } => {}
            Outcome::Unreachable { .. } => panic!("a replica stopped answering: {outcome:?}"),
            Outcome::Refused { status, body, took, exchanging, .. } => {
                assert!(*exchanging, "a mint was refused: {outcome:?}");
                assert_eq!((*status, body["error"].as_str()), (502, Some("temporarily_unavailable")), "{outcome:?}");
                let description = body["error_description"].as_str().unwrap_or_default();
                assert!(description.contains("AWS STS is unavailable"), "{outcome:?}");
                assert!(body.get("aws_credentials").is_none(), "{outcome:?}");
                assert!(*took < Duration::from_secs(20), "the STS deadline did not bound the exchange: {outcome:?}");
            }
        }
    }
    let entries = entries(&replicas.audit().await).await;
    // Every refused exchange has no credentials on record; everything on record was received.
    let received = check_issuance(&entries, &outcomes, &BTreeSet::new());
    assert_eq!(received, issued_on_record(&entries).len(), "credentials on record that no client received");
    let denied: BTreeSet<&str> = entries
        .iter()
        .filter(|(kind, body)| kind == "credentials.denied" && body.to_string().contains("unavailable"))
        .filter_map(|(_, body)| body["context"]["run_id"].as_str())
        .collect();
    for run in interrupted_exchanges(&outcomes) {
        assert!(denied.contains(run.as_str()), "{run}: the STS failure is not on record");
    }
    check_single_use_across_replicas(&replicas).await;
}

/// A run token exchanged at one replica is spent at every other.
async fn check_single_use_across_replicas(replicas: &Replicas) {
    let body = json!({
        "stack": "network", "run_id": "ha-replay", "phase": "apply", "audience": replicas.shared,
        "commit_sha": "0123abc", "ref": "refs/heads/main",
    });
    let (status, minted) = replicas.broker(0).mint_raw(&body, Some(&replicas.admin)).await;
    assert_eq!(status, 201, "{minted}");
    let token = minted["token"].as_str().unwrap();
    let (status, body) = replicas.broker(1).exchange(token, "aws:network-apply").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = replicas.broker(2).exchange(token, "aws:network-apply").await;
    assert_eq!(status, 400, "a replayed token at another replica: {body}");
    assert!(body.get("aws_credentials").is_none(), "{body}");
}

// ---- Scenario 4: agents behind a TCP balancer move to the survivors ----

/// A TCP balancer in front of the replicas' agent endpoints, in priority order: each connection
/// goes to the first backend that accepts it, its bytes relayed both ways (mTLS passes through
/// untouched, as with a layer-4 load balancer). Counts the connections each backend received.
struct Balancer {
    addr: std::net::SocketAddr,
    connections: Arc<Vec<AtomicUsize>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Balancer {
    async fn start(backends: Vec<std::net::SocketAddr>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the balancer");
        let addr = listener.local_addr().expect("the balancer's address");
        let connections = Arc::new(backends.iter().map(|_| AtomicUsize::new(0)).collect::<Vec<_>>());
        let counts = Arc::clone(&connections);
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let (backends, counts) = (backends.clone(), Arc::clone(&counts));
                tokio::spawn(async move {
                    for (i, backend) in backends.iter().enumerate() {
                        if let Ok(mut outbound) = tokio::net::TcpStream::connect(backend).await {
                            counts[i].fetch_add(1, Ordering::SeqCst);
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            return;
                        }
                    }
                });
            }
        });
        Self { addr, connections, task }
    }

    fn connections(&self, backend: usize) -> usize {
        self.connections[backend].load(Ordering::SeqCst)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_behind_a_balancer_move_to_the_survivors_and_run_each_job_once() {
    let cluster = PgCluster::start();
    let dir = tempfile::tempdir().unwrap();
    let mut layout = Layout::new("");
    let balancer = Balancer::start(layout.agents.clone()).await;
    layout.advertise = Some(format!("https://{}", balancer.addr));
    let closed_sts = format!("http://{}", free_addr());
    let mut replicas = Replicas::start(dir.path(), &cluster.database("keyward_ha"), &closed_sts, &layout).await;
    let repo = GitRepo::init(&dir.path().join("infra"));
    replicas.cli_json(0, &["pool", "create", "blue", "--json"]);
    for stack in ["net-a", "net-b"] {
        let url = repo.url();
        replicas.cli_json(
            1,
            &["stack", "create", stack, "--repository", &url, "--pool", "blue", "--label", "env=dev", "--json"],
        );
    }
    let [marks, held, go] = ["marks", "held", "go"].map(|name| dir.path().join(name));
    std::fs::write(&go, "").unwrap();
    // Enrolled through replica 1's API; its work stream reaches replica 0 through the balancer.
    let agent = agent_through(&replicas, 1, &dir.path().join("agent"), &agent_exec(&marks, &held, &go));
    let first = replicas.submit(2, "net-a");
    let run = run_in(&replicas, 2, &first, &["finished"]).await;
    assert!(run["jobs"].as_array().unwrap().iter().all(|j| j["agent_id"] == agent.id.as_str()), "{run}");
    assert!(balancer.connections(0) > 0 && balancer.connections(1) == 0, "the stream is on replica 0");

    // The agent holds the next run's apply when replica 0, its stream's end, dies.
    std::fs::remove_file(&go).unwrap();
    let second = replicas.submit(2, "net-b");
    eventually("the second apply to start", Duration::from_secs(60), || {
        let started = lines(&held).len() == 2;
        async move { started.then_some(()) }
    })
    .await;
    replicas.brokers[0].take().expect("replica 0").stop();
    std::fs::write(&go, "").unwrap();
    // The agent reconnects through the balancer and reports the apply it finished; whether a
    // survivor still accepts it (finished) or the lease had ended first (interrupted), the apply
    // ran once and is never leased again.
    let run = run_in(&replicas, 1, &second, &["finished", "interrupted"]).await;
    let applies = run["jobs"].as_array().unwrap().iter().filter(|j| j["phase"] == "apply").count();
    assert_eq!(applies, 1, "the apply was leased again: {run}");
    let third = replicas.submit(1, "net-a");
    let run = run_in(&replicas, 2, &third, &["finished"]).await;
    assert!(run["jobs"].as_array().unwrap().iter().all(|j| j["agent_id"] == agent.id.as_str()), "{run}");
    assert!(balancer.connections(1) > 0, "the agent reconnected to replica 1 through the balancer");

    let marked = lines(&marks);
    assert_eq!(marked.len(), 6, "plan and apply of each run, once each: {marked:?}");
    check_jobs_ran_once(&marked, &entries(&replicas.audit().await).await);
    verify_export(&replicas, 2, dir.path());
}
