//! Signed log chunks over the agent protocol, against a real broker process over real mTLS: a
//! test client holding a real agent certificate sends good chunks and every kind of bad one
//! (edited, forged, replayed, reordered, missing, spliced, another agent's job). Each bad chunk is
//! refused with its reason and recorded; the good ones are stored, served by `keyward run logs`,
//! sealed with the job's end, and verify offline from an exported bundle — which stops verifying
//! once it is edited.

use std::path::Path;
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
use keyward_broker::store::{DatabaseLocation, Store};
use keyward_proto::agent_v1::{JobAssignment, JobResult, LogReceipt, SignedLogChunk, agent_message};
use keyward_proto::logs::{ChunkFields, GENESIS, chunk_digest};
use keyward_tests::agent::{WorkSession, bootstrap, enroll_with_key, pem};
use keyward_tests::audit::Audit;
use keyward_tests::broker::{Broker, ConfigExtra, TEST_KEK, json, write_config};
use keyward_tests::git::GitRepo;
use keyward_tests::postgres::PgCluster;
use keyward_tests::{eventually, free_addr, workspace_root};
use serde_json::Value;

async fn start(dir: &Path, database_url: Option<&str>) -> Broker {
    let addr = free_addr();
    let config = dir.join("keyward.toml");
    let data_dir = dir.join("broker");
    let rest = format!(
        "[policy]\ndir = \"{}\"\n[agents]\nlisten = \"{}\"\nlease = \"30s\"\npoll_interval = \"200ms\"\n",
        workspace_root().join("policies").display(),
        free_addr()
    );
    let storage = if database_url.is_some() { "database_url_env = \"KW_DATABASE_URL\"" } else { "" };
    write_config(&config, addr, &data_dir, &ConfigExtra { storage, rest: &rest, ..ConfigExtra::default() });
    let mut envs = vec![("TEST_KEK", TEST_KEK)];
    envs.extend(database_url.map(|url| ("KW_DATABASE_URL", url)));
    Broker::serve(&config, &data_dir, &format!("http://{addr}"), &envs).await
}

/// Signs chunks of one lease as an agent would.
struct Signing {
    key: EcdsaKeyPair,
    job: JobAssignment,
}

impl Signing {
    fn new(key_pem: &str, job: &JobAssignment) -> Self {
        let der = rcgen::KeyPair::from_pem(key_pem).unwrap().serialize_der();
        Self { key: EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &der).unwrap(), job: job.clone() }
    }

    fn chunk(&self, seq: u64, prev: &[u8], data: &str) -> SignedLogChunk {
        let digest = chunk_digest(&ChunkFields {
            run_id: &self.job.run_id,
            job_id: &self.job.job_id,
            fencing_token: self.job.fencing_token,
            stream: "stdout",
            seq,
            prev_digest: prev,
            data: data.as_bytes(),
        });
        let signature = self.key.sign(&SystemRandom::new(), &digest).unwrap();
        SignedLogChunk {
            run_id: self.job.run_id.clone(),
            job_id: self.job.job_id.clone(),
            stream: "stdout".to_owned(),
            seq,
            prev_digest: prev.to_vec(),
            data: data.as_bytes().to_vec(),
            digest: digest.to_vec(),
            signature: signature.as_ref().to_vec(),
            fencing_token: self.job.fencing_token,
        }
    }
}

async fn send(session: &mut WorkSession, chunk: SignedLogChunk) -> LogReceipt {
    session.send(agent_message::Kind::LogChunk(chunk)).await.expect("the work stream is open");
    session.next_receipt(Duration::from_secs(10)).await.expect("the stream is open").expect("a receipt")
}

async fn refused(session: &mut WorkSession, chunk: SignedLogChunk, words: &str) {
    let receipt = send(session, chunk).await;
    assert!(!receipt.accepted, "accepted instead of refused ({words})");
    assert!(receipt.reason.contains(words), "{words:?} not in {:?}", receipt.reason);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_log_chunks_are_refused_and_recorded_and_the_log_verifies_offline() {
    bad_chunks(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn on_postgres_bad_log_chunks_are_refused_and_recorded() {
    let cluster = PgCluster::start();
    bad_chunks(Some(&cluster.database("keyward_agent_logs"))).await;
}

async fn bad_chunks(database_url: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), database_url).await;
    let repo = GitRepo::init(&dir.path().join("repo"));
    let url = repo.url();
    json(&broker.cli(&["stack", "create", "net", "--repository", &url, "--label", "env=dev", "--json"]));
    let (endpoint, ca) = bootstrap(&broker.addr).await;
    let token =
        || json(&broker.cli(&["pool", "join-token", "default", "--json"]))["token"].as_str().unwrap().to_owned();
    let (holder_id, holder, holder_key) = enroll_with_key(&endpoint, &ca, &token()).await;
    let (_, other, other_key) = enroll_with_key(&endpoint, &ca, &token()).await;
    let submit = || {
        let out = broker.cli(&["run", "submit", "--stack", "net"]);
        assert!(out.success, "{}", out.stderr);
        out.stdout.trim().to_owned()
    };

    let mut session = WorkSession::open(&endpoint, &ca, holder, 1).await.expect("stream");
    let run_id = submit();
    let job = session.next_assignment(Duration::from_secs(20)).await.expect("assignment");
    let mut intruder = WorkSession::open(&endpoint, &ca, other, 1).await.expect("second stream");
    let other_run = submit();
    let other_job = intruder.next_assignment(Duration::from_secs(20)).await.expect("assignment");
    assert_eq!(other_job.run_id, other_run);

    let signing = Signing::new(&holder_key, &job);
    let first = signing.chunk(0, &GENESIS, "$ terraform plan\n");
    assert!(send(&mut session, first.clone()).await.accepted);

    // Replayed; missing or reordered; spliced; edited after signing; signed by another key.
    refused(&mut session, first.clone(), "replayed").await;
    refused(&mut session, signing.chunk(2, &first.digest, "later"), "missing or reordered").await;
    refused(&mut session, signing.chunk(1, &[9; 32], "spliced"), "does not link").await;
    let mut edited = signing.chunk(1, &first.digest, "Plan: 1 to add\n");
    edited.data = b"Plan: 0 to add\n".to_vec();
    refused(&mut session, edited, "edited").await;
    let forged = Signing::new(&other_key, &job).chunk(1, &first.digest, "Plan: 1 to add\n");
    refused(&mut session, forged, "not signed by the agent's key").await;
    // Another agent's job, even correctly signed by this agent.
    let foreign = Signing::new(&holder_key, &other_job).chunk(0, &GENESIS, "not mine");
    refused(&mut session, foreign, "does not hold").await;

    // The chain goes on from where it really is.
    let second = signing.chunk(1, &first.digest, "Plan: 1 to add\n");
    assert!(send(&mut session, second.clone()).await.accepted);

    let store = match database_url {
        Some(url) => Audit(Store::open(&DatabaseLocation::Postgres(url.to_owned())).await.unwrap()),
        None => Audit::open(&broker.data_dir).await,
    };
    let rejected: Vec<Value> = store
        .referencing(&format!("agent:{holder_id}"))
        .await
        .into_iter()
        .filter(|e| e.kind == "rejected")
        .map(|e| serde_json::from_str(&e.details).unwrap())
        .collect();
    let reasons: Vec<&str> = rejected.iter().map(|d| d["reason"].as_str().unwrap()).collect();
    assert_eq!(
        reasons,
        ["replayed", "gap", "chain_broken", "digest_mismatch", "bad_signature", "foreign_job"],
        "{rejected:#?}"
    );

    // The holder reports the end with its head: sealed, complete.
    let result = JobResult {
        job_id: job.job_id.clone(),
        fencing_token: job.fencing_token,
        success: true,
        final_log_digest: second.digest.clone(),
        log_chunks: 2,
        ..JobResult::default()
    };
    session.send(agent_message::Kind::Result(result)).await.expect("the work stream is open");
    let finished = eventually("the plan's end on record", Duration::from_secs(20), || {
        let store = &store;
        let run_id = run_id.clone();
        async move { store.for_run(&run_id).await.into_iter().find(|e| e.kind == "finished").map(|e| e.details) }
    })
    .await;
    let finished: Value = serde_json::from_str(&finished).unwrap();
    assert_eq!(finished["log_complete"], true, "{finished}");
    assert_eq!(finished["log_chunks"], 2);
    assert_eq!(finished["log_digest"].as_str().unwrap().len(), 64);
    // Sealed: a later chunk of that lease is refused (but not recorded as an attack).
    refused(&mut session, signing.chunk(2, &second.digest, "late"), "sealed").await;

    // What `run logs` prints and what verifies.
    let logs = broker.cli(&["run", "logs", &run_id]);
    assert!(logs.success, "{}", logs.stderr);
    assert!(logs.stdout.contains("$ terraform plan\nPlan: 1 to add\n"), "{}", logs.stdout);
    assert!(!logs.stdout.contains("spliced") && !logs.stdout.contains("0 to add"), "{}", logs.stdout);
    let verified = broker.cli(&["run", "logs", &run_id, "--verify"]);
    assert!(verified.success, "{}", verified.stderr);
    assert!(
        verified.stdout.contains("2 chunks") && verified.stdout.contains("sealed in the audit log"),
        "{}",
        verified.stdout
    );

    // An exported bundle verifies offline against the pinned CA; edited, it does not.
    let bundle = dir.path().join("bundle.json");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca).unwrap();
    let bundle_arg = bundle.to_str().unwrap();
    assert!(broker.cli(&["run", "logs", &run_id, "--export", bundle_arg]).success);
    let offline = broker.cli(&["run", "logs", "--verify", "--bundle", bundle_arg, "--ca", ca_file.to_str().unwrap()]);
    assert!(offline.success && offline.stdout.contains("pinned with --ca"), "{}{}", offline.stdout, offline.stderr);
    let original: Value = serde_json::from_slice(&std::fs::read(&bundle).unwrap()).unwrap();
    for (tamper, words) in [
        (edit_data as fn(&mut Value), "edited"),
        (drop_first_chunk, "missing or reordered"),
        (swap_certificate, "does not match its fingerprint"),
    ] {
        let mut copy = original.clone();
        tamper(&mut copy);
        std::fs::write(&bundle, serde_json::to_vec(&copy).unwrap()).unwrap();
        let out = broker.cli(&["run", "logs", "--verify", "--bundle", bundle_arg]);
        assert!(!out.success && out.stderr.contains(words), "{words}: {}", out.stderr);
    }
    // A bundle signed under another CA does not verify against the pinned one.
    let mut foreign_ca = original.clone();
    foreign_ca["ca_certificate"] = Value::from(pem("CERTIFICATE", b"not a CA"));
    std::fs::write(&bundle, serde_json::to_vec(&foreign_ca).unwrap()).unwrap();
    let out = broker.cli(&["run", "logs", "--verify", "--bundle", bundle_arg, "--ca", ca_file.to_str().unwrap()]);
    assert!(!out.success && out.stderr.contains("another CA"), "{}", out.stderr);

    // An agent that keeps sending bad chunks loses its stream (late ones do not count).
    let noise = Signing::new(&holder_key, &other_job);
    let mut ended = None;
    for _ in 0..20 {
        // Once the broker has cut the stream a send fails; its status then comes below.
        let _closed = session.send(agent_message::Kind::LogChunk(noise.chunk(0, &GENESIS, "noise"))).await;
        match session.next_receipt(Duration::from_secs(10)).await {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(status) => {
                ended = Some(status);
                break;
            }
        }
    }
    let ended = ended.expect("the stream was cut");
    assert!(ended.message().contains("failed verification"), "{ended:?}");
}

fn edit_data(bundle: &mut Value) {
    let data = &mut bundle["leases"][0]["chunks"][1]["data"];
    let text = data.as_str().unwrap().replace('M', "N");
    *data = Value::from(if text == data.as_str().unwrap() { format!("A{text}") } else { text });
}

fn drop_first_chunk(bundle: &mut Value) {
    bundle["leases"][0]["chunks"].as_array_mut().unwrap().remove(0);
}

fn swap_certificate(bundle: &mut Value) {
    let ca = bundle["ca_certificate"].clone();
    bundle["signers"][0]["certificate"] = ca;
}
