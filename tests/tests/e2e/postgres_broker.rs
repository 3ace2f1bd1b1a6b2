//! The broker on PostgreSQL: it serves like it does on SQLite, and when the database goes away it
//! fails closed — readiness turns false and no token leaves without its record — and it recovers
//! by itself when the database returns. What it keeps there holds no secret in the clear.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use aws_lc_rs::digest;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keyward_broker::kek::Kek;
use keyward_proto::agent_v1::PlanPart;
use keyward_tests::agent::{WorkSession, bootstrap, enroll_in_process};
use keyward_tests::broker::{Broker, ConfigExtra, TEST_KEK, write_config};
use keyward_tests::git::GitRepo;
use keyward_tests::postgres::PgCluster;
use keyward_tests::{eventually, free_addr, http, workspace_root};
use serde_json::{Value, json};
use sqlx::SqlSafeStr as _;

#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_backed_broker_fails_closed_when_the_database_goes_away() {
    // Durable: the server is crashed below, and a test cluster's asynchronous commit would lose
    // the last moments of committed work, which is not what is under test.
    let cluster = PgCluster::start_durable();
    // The cluster trusts loopback, so any password works; this one must never be printed.
    let database_url = cluster.database("keyward").replace("postgres@", "postgres:pg-secret-4711@");
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("broker");
    let addr = free_addr();
    let config = dir.path().join("keyward.toml");
    let extra = ConfigExtra {
        server: "request_timeout = \"5s\"",
        storage: "database_url_env = \"KW_DATABASE_URL\"",
        rest: "[tokens]\nallowed_audiences = [\"vault\"]",
        ..ConfigExtra::default()
    };
    write_config(&config, addr, &data_dir, &extra);
    let envs = [("TEST_KEK", TEST_KEK), ("KW_DATABASE_URL", database_url.as_str())];
    let broker = Broker::serve(&config, &data_dir, &format!("http://{addr}"), &envs).await;
    broker.mint("run-1", "net", "vault").await;
    let log = broker.log_text();
    assert!(log.contains("postgres://postgres@127.0.0.1"), "the redacted location is logged: {log}");
    assert!(!log.contains("pg-secret-4711"), "the database password reached the log");
    // The scrape-time counts run on PostgreSQL too (their series are left out when they fail).
    let metrics = reqwest::get(format!("{}/metrics", broker.addr)).await.unwrap().text().await.unwrap();
    for series in [
        "keyward_runs{state=\"finished\"} 0\n",
        "keyward_jobs{state=\"queued\"} 0\n",
        "keyward_agents{state=\"active\"} 0\n",
    ] {
        assert!(metrics.contains(series), "no {series} in\n{metrics}");
    }

    cluster.stop();

    let client = http();
    let readyz = format!("{}/readyz", broker.addr);
    let body = eventually("readiness to turn false", Duration::from_secs(30), || {
        let request = client.get(&readyz).send();
        async move {
            let response = request.await.ok()?;
            (response.status() == 503).then_some(())?;
            response.json::<serde_json::Value>().await.ok()
        }
    })
    .await;
    assert_eq!(body["status"], "not ready");

    let (status, response) = broker
        .mint_raw(
            &json!({ "stack": "net", "run_id": "run-2", "phase": "plan", "audience": "vault" }),
            Some(&broker.admin_token),
        )
        .await;
    // 503 either way: the append failed ("…not issued"), or it was still waiting for a
    // connection when the request's deadline came ("…did not complete in time").
    assert_eq!((status, response["error"].as_str()), (503, Some("temporarily_unavailable")), "{response}");
    assert!(response.get("token").is_none(), "{response}");
    assert!(!response.to_string().contains("postgres"), "internal errors stay internal: {response}");
    assert!(!broker.log_text().contains("pg-secret-4711"), "the database password reached the log");
    let metrics = client.get(format!("{}/metrics", broker.addr)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("keyward_ready 0"), "{metrics}");

    // The database comes back: the broker turns ready by itself and issues again, with records.
    cluster.start_again();
    eventually("readiness to return", Duration::from_secs(30), || {
        let request = client.get(&readyz).send();
        async move { (request.await.ok()?.status() == 200).then_some(()) }
    })
    .await;
    let (status, minted) = broker
        .mint_raw(
            &json!({ "stack": "net", "run_id": "run-3", "phase": "plan", "audience": "vault" }),
            Some(&broker.admin_token),
        )
        .await;
    assert_eq!(status, 201, "{minted}");
    let store =
        keyward_broker::store::Store::open(&keyward_broker::store::DatabaseLocation::Postgres(database_url.clone()))
            .await
            .unwrap();
    let audit = keyward_tests::audit::Audit(store);
    assert_eq!(audit.check_tree().await, 2, "run-1 and run-3 are on record, run-2 is not");
    assert_eq!(audit.referencing(&format!("jti:{}", minted["jti"].as_str().unwrap())).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_the_broker_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::dev(&dir.path().join("dev")).await;
    let log = dir.path().join("dev.log");
    let status = broker.terminate();
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
    assert!(std::fs::read_to_string(log).unwrap().contains("broker stopped"));
}

/// Security review L2 and test review H1 (§8.6, §8.11) on PostgreSQL: the database, read as
/// whoever holds a copy of it, has API tokens and join tokens only as hashes, RS256 keys only
/// sealed, and a saved plan only sealed (opening as its own run's only) with its JSON free of the
/// plan's sensitive value. The plan is real Terraform output, submitted over the agent protocol
/// by an agent the test plays.
#[tokio::test(flavor = "multi_thread")]
async fn nothing_secret_rests_in_postgres_in_the_clear() {
    const MARK: &str = "L2PgSensitive4711";
    let cluster = PgCluster::start();
    let database_url = cluster.database("keyward");
    let dir = tempfile::tempdir().unwrap();
    let (plan_file, plan_json) = terraform_plan(&dir.path().join("tf"), MARK);
    assert!(String::from_utf8_lossy(&plan_json).contains(MARK), "Terraform's JSON holds the value");
    let repo = GitRepo::init(&dir.path().join("repo"));
    let data_dir = dir.path().join("broker");
    let addr = free_addr();
    let config = dir.path().join("keyward.toml");
    let rest = format!(
        "[policy]\ndir = \"{}\"\n[agents]\nlisten = \"{}\"\n",
        workspace_root().join("policies").display(),
        free_addr()
    );
    let extra = ConfigExtra {
        storage: "database_url_env = \"KW_DATABASE_URL\"",
        keys: "algorithm = \"RS256\"",
        rest: &rest,
        ..ConfigExtra::default()
    };
    write_config(&config, addr, &data_dir, &extra);
    let envs = [("TEST_KEK", TEST_KEK), ("KW_DATABASE_URL", database_url.as_str())];
    let broker = Broker::serve(&config, &data_dir, &format!("http://{addr}"), &envs).await;
    let cli = |args: &[&str]| {
        let out = broker.cli(args);
        assert!(out.success, "{args:?}: {}", out.stderr);
        out.stdout
    };
    let join_token = || {
        let out: Value = serde_json::from_str(&cli(&["pool", "join-token", "default", "--json"])).unwrap();
        out["token"].as_str().unwrap().to_owned()
    };
    let (used, unused) = (join_token(), join_token());
    let (endpoint, ca) = bootstrap(&broker.addr).await;
    let (_, identity) = enroll_in_process(&endpoint, &ca, &used).await;
    let mut session = WorkSession::open(&endpoint, &ca, identity, 1).await.expect("work stream");
    cli(&["stack", "create", "sealed", "--repository", &repo.url(), "--label", "env=dev", "--json"]);
    let run_id = cli(&["run", "submit", "--stack", "sealed"]).trim().to_owned();
    let job = session.next_assignment(Duration::from_secs(20)).await.expect("the plan job");
    let part = |plan_file: &[u8], plan_json: &[u8]| PlanPart {
        job_id: job.job_id.clone(),
        fencing_token: job.fencing_token,
        plan_file: plan_file.to_vec(),
        plan_json: plan_json.to_vec(),
    };
    let parts = vec![part(&plan_file, &[]), part(&[], &plan_json)];
    let verdict = session.client.submit_plan(tokio_stream::iter(parts)).await.expect("plan kept").into_inner();
    let sha256 = digest::digest(&digest::SHA256, &plan_file).as_ref().to_vec();
    assert_eq!(verdict.plan_sha256, sha256);
    let jwks = broker.get_json("/.well-known/jwks.json").await;

    let at_rest = database_text(&database_url).await;
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    // What must be there, so that what must not be proves something.
    for present in [run_id.as_str(), "(sensitive ", &hex(&sha256)] {
        assert!(at_rest.contains(present), "{present} is not in the database");
    }
    for (what, secret) in [
        ("the admin API token", broker.admin_token.as_str()),
        ("a used join token's secret", used.rsplit('.').next().unwrap()),
        ("an unused join token's secret", unused.rsplit('.').next().unwrap()),
        ("the plan's sensitive value", MARK),
    ] {
        assert!(!at_rest.contains(secret), "{what} rests in the clear");
    }
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "{jwks}");
    for key in keys {
        let modulus = URL_SAFE_NO_PAD.decode(key["n"].as_str().unwrap()).unwrap();
        assert!(!at_rest.contains(&hex(&modulus)), "an RSA private key rests unsealed");
    }
    // A plan file is a zip archive whose entry names are in the clear.
    assert!(!at_rest.contains(&hex(b"tfconfig/")), "the saved plan rests in the clear");

    // Sealed under the broker's KEK, for this run: it opens as the file that was planned.
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&database_url).await.unwrap();
    let (job_id, stored_sha, sealed): (String, Vec<u8>, Vec<u8>) =
        sqlx::query_as("SELECT job_id, sha256, plan_file FROM plans WHERE run_id = $1")
            .bind(&run_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    pool.close().await;
    let kek = Kek::from_base64(TEST_KEK, "test").unwrap();
    let context = keyward_broker::runs::seal_context(&run_id, &job_id, &stored_sha);
    assert_eq!(kek.open(&context, &sealed).unwrap().as_slice(), plan_file.as_slice());
    let elsewhere = keyward_broker::runs::seal_context("another-run", &job_id, &stored_sha);
    assert!(kek.open(&elsewhere, &sealed).is_err());
}

/// Every row of every table of the database at `url`, as text (`bytea` as hex).
async fn database_text(url: &str) -> String {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY table_name",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(tables.iter().any(|t| t == "plans") && tables.iter().any(|t| t == "join_tokens"), "{tables:?}");
    let mut text = String::new();
    for table in tables {
        let sql = format!("SELECT COALESCE(string_agg(t::text, chr(10)), '') FROM \"{table}\" t");
        let rows: String = sqlx::query_scalar(sqlx::AssertSqlSafe(sql).into_sql_str()).fetch_one(&pool).await.unwrap();
        text.push_str(&rows);
        text.push('\n');
    }
    pool.close().await;
    text
}

/// A real saved plan and its `terraform show -json`, of a configuration with a sensitive variable
/// whose value is `secret`.
fn terraform_plan(dir: &Path, secret: &str) -> (Vec<u8>, Vec<u8>) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("main.tf"),
        format!(
            "variable \"token\" {{\n  type      = string\n  sensitive = true\n  default   = \"{secret}\"\n}}\n\
             resource \"terraform_data\" \"uses\" {{\n  input = var.token\n}}\n"
        ),
    )
    .unwrap();
    let terraform = |args: &[&str]| {
        let output = Command::new("terraform").args(args).current_dir(dir).output().expect("terraform on PATH");
        assert!(output.status.success(), "terraform {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        output.stdout
    };
    terraform(&["init", "-input=false", "-no-color"]);
    terraform(&["plan", "-input=false", "-no-color", "-out=saved.tfplan"]);
    let json = terraform(&["show", "-json", "-no-color", "saved.tfplan"]);
    (std::fs::read(dir.join("saved.tfplan")).unwrap(), json)
}
