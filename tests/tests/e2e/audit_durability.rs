//! The audit log under faults: the broker killed with SIGKILL in the middle of concurrent
//! issuance, and the disk filling up under it. Every token a client received has its entry, the
//! tree verifies, and a broker that cannot write its log issues nothing, says so, and recovers
//! by itself — also when the log fails after STS has already issued credentials (a full SQLite
//! disk, a stopped PostgreSQL), for `POST /v1/token` and for the agent `Credentials` RPC.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyward_broker::store::{DatabaseLocation, Store};
use keyward_proto::agent_v1::CredentialsRequest;
use keyward_tests::agent::{WorkSession, bootstrap, enroll_in_process};
use keyward_tests::audit::Audit;
use keyward_tests::broker::{Broker, ConfigExtra, TEST_KEK, write_config};
use keyward_tests::git::GitRepo;
use keyward_tests::held::HeldPassThrough;
use keyward_tests::moto::Moto;
use keyward_tests::postgres::PgCluster;
use keyward_tests::{eventually, free_addr, http, workspace_root};
use serde_json::{Value, json};

fn mint_body(run: &str) -> Value {
    json!({ "stack": "net", "run_id": run, "phase": "plan", "audience": "vault" })
}

/// Mints from `clients` concurrent loops until the broker stops answering; returns the `jti` of
/// every token a client received.
fn start_clients(addr: &str, token: &str, clients: usize) -> (Arc<Mutex<Vec<String>>>, tokio::task::JoinSet<()>) {
    let received = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..clients {
        let (received, url, token) = (Arc::clone(&received), format!("{addr}/v1/run-tokens"), token.to_owned());
        tasks.spawn(async move {
            let http = http();
            for i in 0.. {
                let request = http.post(&url).bearer_auth(&token).json(&mint_body(&format!("run-{client}-{i}")));
                let Ok(response) = request.send().await else { break };
                if response.status() != 201 {
                    continue;
                }
                let Ok(body) = response.json::<Value>().await else { break };
                received.lock().unwrap().push(body["jti"].as_str().unwrap().to_owned());
            }
        });
    }
    (received, tasks)
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_mid_stream_loses_nothing_a_client_received() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("dev");
    let broker = Broker::dev(&data_dir).await;
    let (received, clients) = start_clients(&broker.addr, &broker.admin_token, 8);
    eventually("a few hundred tokens issued", Duration::from_secs(60), || {
        let n = received.lock().unwrap().len();
        async move { (n >= 300).then_some(()) }
    })
    .await;
    broker.stop(); // SIGKILL, with requests in flight
    clients.join_all().await;
    let received = received.lock().unwrap().clone();
    assert!(received.len() >= 300);

    // Restart on the same data: the log recovers, every received token is on record, and
    // appends continue the same tree.
    let broker = Broker::dev(&data_dir).await;
    let audit = Audit::open(&data_dir).await;
    let size = audit.check_tree().await;
    assert!(size >= received.len() as u64, "{size} entries for {} tokens", received.len());
    for jti in &received {
        let entries = audit.referencing(&format!("jti:{jti}")).await;
        assert!(entries.iter().any(|e| e.kind == "minted"), "token {jti} was received but is not on record");
    }
    assert_eq!(broker.mint_raw(&mint_body("after-restart"), Some(&broker.admin_token)).await.0, 201);
    assert_eq!(audit.check_tree().await, size + 1);
}

/// A small tmpfs mounted for the test's data directory, unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(path: &Path, size: &str) -> Self {
        std::fs::create_dir_all(path).unwrap();
        let out =
            Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(path).output();
        let mounted = out.as_ref().is_ok_and(|o| o.status.success());
        assert!(mounted, "this test mounts a small tmpfs to fill it, which needs root (or CAP_SYS_ADMIN): {out:?}");
        Self(path.to_owned())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_stops_issuance_with_503_and_recovery_is_automatic() {
    let dir = tempfile::tempdir().unwrap();
    // The data directory is the small disk; the broker's log file sits beside it, on a disk with
    // room, so the log can say what happened.
    let data_dir = dir.path().join("dev");
    let _mounted = SmallDisk::mount(&data_dir, "16m");
    let disk = data_dir.clone();
    let broker = Broker::dev(&data_dir).await;
    let issued = |run: String| {
        let broker = &broker;
        async move { broker.mint_raw(&mint_body(&run), Some(&broker.admin_token)).await }
    };
    assert_eq!(issued("before".to_owned()).await.0, 201);

    // Fill the disk to the last byte.
    let filler = disk.join("filler");
    let _ = Command::new("dd").arg("if=/dev/zero").arg(format!("of={}", filler.display())).args(["bs=64k"]).output();
    // SQLite reuses the space its write-ahead log already has, so keep issuing until the log
    // needs more; every answer until then is a token with its record, every answer after it a 503.
    let mut received = Vec::new();
    let mut refusal = None;
    for i in 0..5000 {
        let (status, body) = issued(format!("filling-{i}")).await;
        match status {
            201 => received.push(body["jti"].as_str().unwrap().to_owned()),
            _ => {
                refusal = Some((status, body));
                break;
            }
        }
    }
    let (status, body) = refusal.expect("a full disk never stopped issuance");
    assert_eq!((status, body["error"].as_str()), (503, Some("temporarily_unavailable")), "{body}");
    assert!(body.get("token").is_none());
    let ready = http().get(format!("{}/readyz", broker.addr)).send().await.unwrap();
    assert_eq!(ready.status(), 503, "readiness reports the log it cannot write");
    assert!(ready.text().await.unwrap().contains("audit log"));
    let metrics = http().get(format!("{}/metrics", broker.addr)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("keyward_audit_healthy 0"), "{metrics}");

    // Space comes back: readiness recovers by itself, issuance resumes, and the log holds every
    // token a client received and nothing of the refused ones.
    std::fs::remove_file(&filler).unwrap();
    eventually("readiness to recover", Duration::from_secs(30), || {
        let request = http().get(format!("{}/readyz", broker.addr)).send();
        async move { (request.await.ok()?.status() == 200).then_some(()) }
    })
    .await;
    assert_eq!(issued("after".to_owned()).await.0, 201);
    let audit = Audit::open(&data_dir).await;
    audit.check_tree().await;
    for jti in &received {
        assert_eq!(audit.referencing(&format!("jti:{jti}")).await.len(), 1, "token {jti} is not on record");
    }
    assert_eq!(audit.for_run(&format!("filling-{}", received.len())).await.len(), 0, "the refused one left nothing");
}

// ---- Audit failure after the relying party answered (DESIGN.md §8.1) ----
//
// The decision commits before STS is called; what STS issued is recorded after it answered. If
// that second record cannot be made, the credentials STS issued must not leave the broker. The
// tests hold STS's answer in a pass-through, break the database meanwhile, and let the answer go.

const ROLE_READ: &str = "arn:aws:iam::123456789012:role/state-read";

/// What breaks the broker's database while STS's answer is held, and how it is mended.
enum Fault<'a> {
    /// The SQLite database's disk is full and its write-ahead log has no room left to reuse.
    FullDisk { db: PathBuf, filler: PathBuf },
    /// PostgreSQL is down (immediate shutdown).
    StoppedPostgres(&'a PgCluster),
}

impl Fault<'_> {
    fn inject(&self) {
        match self {
            Self::FullDisk { db, filler } => {
                // SQLite reuses the space its write-ahead log already has, so the next commit
                // might fit in a full disk: write the log back and cut it to nothing first.
                let script = format!(
                    "import sqlite3, sys\nc = sqlite3.connect({:?}, timeout=30)\n\
                     busy = c.execute('PRAGMA wal_checkpoint(TRUNCATE)').fetchone()[0]\nsys.exit(busy)",
                    db.to_str().unwrap()
                );
                let status = Command::new("python3").args(["-c", &script]).status().unwrap();
                assert!(status.success(), "the write-ahead log could not be truncated");
                let out = Command::new("dd")
                    .arg("if=/dev/zero")
                    .arg(format!("of={}", filler.display()))
                    .args(["bs=64k"])
                    .output()
                    .unwrap();
                assert!(
                    String::from_utf8_lossy(&out.stderr).contains("No space left"),
                    "the disk did not fill: {out:?}"
                );
            }
            Self::StoppedPostgres(cluster) => cluster.stop(),
        }
    }

    fn heal(&self) {
        match self {
            Self::FullDisk { filler, .. } => std::fs::remove_file(filler).unwrap(),
            Self::StoppedPostgres(cluster) => cluster.start_again(),
        }
    }
}

/// A broker whose two broker-mode AWS targets reach moto's STS through `sts` (the pass-through),
/// with an agent endpoint; SQLite in `data_dir`, or PostgreSQL at `database_url`.
async fn held_sts_broker(dir: &Path, data_dir: &Path, sts: &str, database_url: Option<&str>) -> Broker {
    let addr = free_addr();
    let config = dir.join("keyward.toml");
    let rest = format!(
        "[policy]\ndir = \"{policies}\"\n[tokens]\nallowed_audiences = [\"sts.amazonaws.com\"]\n\
         [agents]\nlisten = \"{agents}\"\nlease = \"10m\"\npoll_interval = \"200ms\"\n\
         [[targets]]\nname = \"state-read\"\ntype = \"aws\"\naccess = \"read\"\nrole_arn = \"{ROLE_READ}\"\n\
         region = \"eu-west-1\"\nsts_endpoint = \"{sts}\"\nduration = \"15m\"\nmode = \"broker\"\n",
        policies = workspace_root().join("policies").display(),
        agents = free_addr(),
    );
    let storage = if database_url.is_some() { "database_url_env = \"KW_DATABASE_URL\"" } else { "" };
    write_config(&config, addr, data_dir, &ConfigExtra { storage, rest: &rest, ..ConfigExtra::default() });
    let mut envs = vec![("TEST_KEK", TEST_KEK)];
    envs.extend(database_url.map(|url| ("KW_DATABASE_URL", url)));
    Broker::serve(&config, data_dir, &format!("http://{addr}"), &envs).await
}

fn cli_json(out: &keyward_tests::broker::Output) -> Value {
    assert!(out.success, "{}", out.stderr);
    serde_json::from_str(&out.stdout).unwrap()
}

/// Every `<tag>…</tag>` value in STS's answers.
fn xml_values(text: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    text.split(&open).skip(1).filter_map(|rest| rest.split_once(&close)).map(|(value, _)| value.to_owned()).collect()
}

async fn readiness(broker: &Broker) -> u16 {
    http().get(format!("{}/readyz", broker.addr)).send().await.unwrap().status().as_u16()
}

/// STS issued credentials, then the broker could not record them: the caller of the agent
/// `Credentials` RPC and the caller of `POST /v1/token` each get an error and none of them.
async fn issued_but_unrecorded_credentials_never_leave(
    dir: &Path,
    broker: &Broker,
    sts: &mut HeldPassThrough,
    moto: &Moto,
    fault: &Fault<'_>,
    audit: impl AsyncFn() -> Audit,
) {
    let repo = GitRepo::init(&dir.join("repo"));
    let url = repo.url();
    cli_json(&broker.cli(&[
        "stack",
        "create",
        "network",
        "--repository",
        &url,
        "--label",
        "env=dev",
        "--plan-target",
        "aws:state-read",
        "--json",
    ]));
    let (endpoint, ca) = bootstrap(&broker.addr).await;
    let join =
        cli_json(&broker.cli(&["pool", "join-token", "default", "--json"]))["token"].as_str().unwrap().to_owned();
    let (_, identity) = enroll_in_process(&endpoint, &ca, &join).await;
    let mut session = WorkSession::open(&endpoint, &ca, identity, 1).await.expect("work stream");
    let out = broker.cli(&["run", "submit", "--stack", "network"]);
    assert!(out.success, "{}", out.stderr);
    let job_run = out.stdout.trim().to_owned();
    let job = session.next_assignment(Duration::from_secs(30)).await.expect("an assignment");
    assert_eq!(job.run_id, job_run);

    let mut refused_secrets = Vec::new();
    // The job's credentials: the agent asks, STS answers, the record fails.
    let request = CredentialsRequest {
        job_id: job.job_id.clone(),
        fencing_token: job.fencing_token,
        target: "aws:state-read".to_owned(),
    };
    let mut client = session.client.clone();
    let asked = tokio::spawn(async move { client.credentials(request).await });
    sts.request_arrived(Duration::from_secs(60)).await;
    fault.inject();
    sts.release();
    let answer = asked.await.unwrap();
    let issued_by_sts = sts.answered();
    let keys = xml_values(&issued_by_sts, "AccessKeyId");
    assert_eq!(keys.len(), 1, "STS issued credentials for the job: {issued_by_sts}");
    let status = match answer {
        Ok(response) => {
            panic!("the job got credentials that are not on record: {:?}", response.get_ref().environment.keys())
        }
        Err(status) => status,
    };
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("could not be recorded, so nothing was issued"), "{status:?}");
    assert_eq!(readiness(broker).await, 503, "readiness reports the log it cannot write");
    for tag in ["AccessKeyId", "SecretAccessKey", "SessionToken"] {
        for value in xml_values(&issued_by_sts, tag) {
            assert!(!status.message().contains(&value), "the refusal carries the {tag}");
            refused_secrets.push(value);
        }
    }
    sts.hold();
    fault.heal();
    eventually("readiness to recover", Duration::from_secs(60), || async {
        (readiness(broker).await == 200).then_some(())
    })
    .await;

    // A run token at `POST /v1/token`: the same, over HTTP.
    let minted = json!({ "stack": "network", "run_id": "run-held-token", "phase": "plan", "audience": broker.addr });
    let (status, body) = broker.mint_raw(&minted, Some(&broker.admin_token)).await;
    assert_eq!(status, 201, "{body}");
    let token = body["token"].as_str().unwrap().to_owned();
    let exchanged = {
        let (addr, form) = (broker.addr.clone(), keyward_tests::broker::exchange_form(&token, "aws:state-read"));
        let form: Vec<(String, String)> = form.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        tokio::spawn(async move {
            let response = http().post(format!("{addr}/v1/token")).form(&form).send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        })
    };
    sts.request_arrived(Duration::from_secs(60)).await;
    fault.inject();
    sts.release();
    let (status, text) = exchanged.await.unwrap();
    let issued_by_sts = sts.answered();
    let keys = xml_values(&issued_by_sts, "AccessKeyId");
    assert_eq!(keys.len(), 2, "STS issued credentials for the token too: {issued_by_sts}");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!((status, body["error"].as_str()), (503, Some("temporarily_unavailable")), "{text}");
    assert!(body.get("aws_credentials").is_none() && body.get("access_token").is_none(), "{text}");
    for tag in ["AccessKeyId", "SecretAccessKey", "SessionToken"] {
        for value in xml_values(&issued_by_sts, tag) {
            assert!(!text.contains(&value), "the refusal carries an {tag}: {text}");
            refused_secrets.push(value);
        }
    }
    fault.heal();
    eventually("readiness to recover", Duration::from_secs(60), || async {
        (readiness(broker).await == 200).then_some(())
    })
    .await;

    // Each decision was on record before STS was asked; neither issuance is, and no secret is
    // anywhere in the log.
    assert_eq!(moto.sts_requests().len(), 2, "exactly one STS call per request");
    let audit = audit().await;
    audit.check_tree().await;
    for run in [job_run.as_str(), "run-held-token"] {
        let kinds: Vec<String> = audit.for_run(run).await.into_iter().map(|e| e.kind).collect();
        assert!(kinds.iter().any(|k| k == "allowed"), "{run}: {kinds:?}");
        assert!(!kinds.iter().any(|k| k == "issued"), "{run}: {kinds:?}");
    }
    assert_eq!(audit.count("credentials.issued").await, 0);
    let size = audit.0.audit_size().await.unwrap();
    for entry in audit.0.audit_entries(0, size, size).await.unwrap() {
        for secret in &refused_secrets {
            assert!(!entry.body.contains(secret.as_str()), "what STS issued is in entry {}", entry.seq);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_after_sts_answered_hands_out_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(dir.path()).await;
    let mut sts = HeldPassThrough::start(&moto.endpoint).await;
    let data_dir = dir.path().join("broker");
    let _mounted = SmallDisk::mount(&data_dir, "16m");
    let broker = held_sts_broker(dir.path(), &data_dir, &sts.endpoint, None).await;
    let fault = Fault::FullDisk { db: data_dir.join("keyward.db"), filler: data_dir.join("filler") };
    let audit = async || Audit::open(&data_dir).await;
    issued_but_unrecorded_credentials_never_leave(dir.path(), &broker, &mut sts, &moto, &fault, audit).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_stopping_after_sts_answered_hands_out_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = PgCluster::start();
    let url = cluster.database("keyward_held_sts");
    let moto = Moto::start(dir.path()).await;
    let mut sts = HeldPassThrough::start(&moto.endpoint).await;
    let broker = held_sts_broker(dir.path(), &dir.path().join("broker"), &sts.endpoint, Some(&url)).await;
    let fault = Fault::StoppedPostgres(&cluster);
    let audit = async || Audit(Store::open(&DatabaseLocation::Postgres(url.clone())).await.unwrap());
    issued_but_unrecorded_credentials_never_leave(dir.path(), &broker, &mut sts, &moto, &fault, audit).await;
}
