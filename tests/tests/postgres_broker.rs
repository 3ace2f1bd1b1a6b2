//! The broker on PostgreSQL: it serves like it does on SQLite, and when the database goes away it
//! fails closed — readiness turns false and no token leaves without its record — and it recovers
//! by itself when the database returns.

// A panic in a test is a failed test: unwrap and index freely.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::time::Duration;

use keyward_tests::broker::{Broker, ConfigExtra, TEST_KEK, write_config};
use keyward_tests::postgres::PgCluster;
use keyward_tests::{eventually, free_addr, http};
use serde_json::json;

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
        keyward_broker::store::Store::open(&keyward_broker::config::DatabaseLocation::Postgres(database_url.clone()))
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
