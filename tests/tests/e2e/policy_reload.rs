//! A running broker's policy set: loaded at start (a broken one stops the start), reloaded on
//! `keyward policy reload` and on SIGHUP, and never replaced by a set that does not compile.

use std::time::Duration;

use keyward_tests::broker::{Broker, ConfigExtra, TEST_KEK, keyward, write_config};
use keyward_tests::{eventually, free_addr, http};
use serde_json::Value;

async fn status(broker: &Broker) -> Value {
    let response =
        http().get(format!("{}/v1/policies", broker.addr)).bearer_auth(&broker.admin_token).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_keeps_the_last_good_set_and_sighup_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("dev");
    let broker = Broker::dev(&data_dir).await;
    let policies = data_dir.join("policies");
    let first = status(&broker).await;
    assert_eq!(first["dir"], policies.to_str().unwrap(), "dev seeds its own copy of the library");
    assert!(first["files"].as_array().unwrap().contains(&"credentials.rego".into()));

    std::fs::write(policies.join("broken.rego"), "package keyward.credentials\n\nallow if {\n").unwrap();
    let refused = broker.cli(&["policy", "reload"]);
    assert!(!refused.success);
    assert!(
        refused.stderr.contains("broken.rego") && refused.stderr.contains("last good policy set stays in force"),
        "{}",
        refused.stderr
    );
    assert_eq!(status(&broker).await["digest"], first["digest"], "the broken set did not replace the good one");

    std::fs::remove_file(policies.join("broken.rego")).unwrap();
    let data = std::fs::read_to_string(policies.join("data.json")).unwrap().replace("\"plan\": 3600", "\"plan\": 600");
    std::fs::write(policies.join("data.json"), data).unwrap();
    let reloaded = broker.cli(&["policy", "reload", "--json"]);
    assert!(reloaded.success, "{}", reloaded.stderr);
    let second: Value = serde_json::from_str(&reloaded.stdout).unwrap();
    assert_ne!(second["digest"], first["digest"]);
    assert_eq!(status(&broker).await["digest"], second["digest"]);

    std::fs::write(policies.join("extra.rego"), "package keyward.extra\n\nx := 1\n").unwrap();
    broker.signal("HUP");
    let client = http();
    let url = format!("{}/v1/policies", broker.addr);
    let token = broker.admin_token.clone();
    let third = eventually("SIGHUP to reload the policies", Duration::from_secs(20), || {
        let request = client.get(&url).bearer_auth(&token).send();
        let previous = second["digest"].clone();
        async move {
            let body: Value = request.await.ok()?.json().await.ok()?;
            (body["digest"] != previous).then_some(body)
        }
    })
    .await;
    assert!(third["files"].as_array().unwrap().contains(&"extra.rego".into()));

    let metrics = client.get(format!("{}/metrics", broker.addr)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("keyward_policy_reloads_total 2"), "{metrics}");
    assert!(metrics.contains("keyward_policy_reload_failures_total 1"), "{metrics}");

    // Every load and refusal is in the audit log, with who caused it.
    let audit = keyward_tests::audit::Audit::open(&data_dir).await;
    // The SIGHUP reload is recorded just after it takes effect.
    let loads = eventually("the SIGHUP reload on record", Duration::from_secs(10), || {
        let store = audit.0.clone();
        async move { store.audit_tail(Some("policy.loaded"), 10).await.ok().filter(|l| l.len() == 3) }
    })
    .await;
    let actors: Vec<Value> =
        loads.iter().map(|e| serde_json::from_str::<Value>(&e.body).unwrap()["context"]["actor"].clone()).collect();
    assert_eq!(actors, ["start", "bootstrap-admin", "signal"], "{loads:?}");
    let last: Value = serde_json::from_str(&loads[2].body).unwrap();
    assert_eq!(last["details"]["digest"], third["digest"]);
    let refused = audit.0.audit_tail(Some("policy.load_failed"), 10).await.unwrap();
    assert_eq!(refused.len(), 1);
    assert!(refused[0].body.contains("broken.rego") && refused[0].body.contains(first["digest"].as_str().unwrap()));
}

#[test]
fn a_broken_policy_set_stops_the_start_and_check_config_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(policies.join("ok.rego"), "package keyward.run\n\ndeny contains \"no\" if input.x\n").unwrap();
    std::fs::write(policies.join("typo.rego"), "package keyward.credentials\n\nallow iff true\n").unwrap();
    let data_dir = dir.path().join("data");
    let config = dir.path().join("keyward.toml");
    let rest = format!("[policy]\ndir = \"{}\"", policies.display());
    write_config(&config, free_addr(), &data_dir, &ConfigExtra { rest: &rest, ..ConfigExtra::default() });
    for command in [vec!["check-config", config.to_str().unwrap()], vec!["serve", "--config", config.to_str().unwrap()]]
    {
        let out = keyward(&command, &[("TEST_KEK", TEST_KEK)]);
        assert!(!out.success, "{command:?} must fail");
        assert!(out.stderr.contains("typo.rego"), "{command:?}: {}", out.stderr);
        assert!(!data_dir.exists(), "{command:?} wrote to the data dir");
    }
    std::fs::remove_file(policies.join("typo.rego")).unwrap();
    let out = keyward(&["check-config", config.to_str().unwrap()], &[("TEST_KEK", TEST_KEK)]);
    assert!(out.success, "{}", out.stderr);
    assert!(out.stdout.contains("1 policy files"), "{}", out.stdout);
}
