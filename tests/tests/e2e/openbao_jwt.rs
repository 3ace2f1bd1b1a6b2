//! OpenBao's JWT auth method, a real relying party nobody here wrote, trusts the broker through
//! its discovery document and JWKS: it accepts minted tokens and refuses every bad one, and keeps
//! accepting across a key rotation.

use keyward_tests::broker::Broker;
use keyward_tests::forge;
use keyward_tests::now;
use keyward_tests::openbao::OpenBao;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn openbao_accepts_minted_tokens_and_refuses_bad_ones_across_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("broker");
    let broker = Broker::dev(&data_dir).await;
    let bao = OpenBao::start(dir.path()).await;
    bao.trust_issuer(&broker.addr).await;
    bao.jwt_role("run", "vault", json!({ "run_id": "run-1", "stack_id": "net" })).await;

    let good = broker.mint("run-1", "net", "vault").await;
    let login = bao.login("run", &good).await;
    assert!(login.accepted(), "a minted token logs in: {login:?}");
    assert_eq!(login.body["auth"]["metadata"]["role"], "run");

    let refusals = [
        ("another audience", broker.mint("run-1", "net", "sts.amazonaws.com").await, "invalid audience (aud)"),
        ("a different bound claim", broker.mint("run-2", "net", "vault").await, r#"claim \"run_id\" does not match"#),
        (
            "an expired token",
            forge::minter_at(&data_dir, &broker.addr, now() - 7200).await.mint(forge::request("run-1", "net", "vault")),
            "token is expired",
        ),
        ("a key not in the JWKS", forge::resign_with_foreign_key(&good, "not-published"), "signature"),
        (
            "a published kid with a forged signature",
            forge::resign_with_foreign_key(&good, forge::header(&good)["kid"].as_str().unwrap()),
            "signature",
        ),
    ];
    for (what, token, reason) in &refusals {
        let login = bao.login("run", token).await;
        assert!(!login.accepted(), "OpenBao must refuse {what}: {login:?}");
        assert!((400..500).contains(&login.status), "{what}: {login:?}");
        let errors = login.body["errors"].to_string();
        assert!(errors.contains(reason), "{what}: refused for the wrong reason: {errors}");
    }

    // Rotation: the old key retires but stays published; the new one was published in advance.
    let before_rotation = broker.mint("run-1", "net", "vault").await;
    let rotated = broker.cli(&["keys", "rotate", "--force", "--json"]);
    assert!(rotated.success, "{}", rotated.stderr);
    let rotation: serde_json::Value = serde_json::from_str(&rotated.stdout).unwrap();
    let after_rotation = broker.mint("run-1", "net", "vault").await;
    let old_kid = forge::header(&before_rotation)["kid"].as_str().unwrap().to_owned();
    let new_kid = forge::header(&after_rotation)["kid"].as_str().unwrap().to_owned();
    assert_ne!(old_kid, new_kid, "tokens after rotation are signed by the new key");
    assert_eq!(rotation["rotation"]["retired_kid"], old_kid.as_str());
    assert_eq!(rotation["rotation"]["current_kid"], new_kid.as_str());
    assert!(bao.login("run", &after_rotation).await.accepted(), "a token from the new key logs in");
    assert!(bao.login("run", &before_rotation).await.accepted(), "a live token from the retired key still logs in");

    // The rotation is in the audit log, with who asked and whether it was forced.
    let audit = keyward_tests::audit::Audit::open(&broker.data_dir).await;
    let rotations = audit.0.audit_tail(Some("signing_key.rotated"), 5).await.unwrap();
    assert_eq!(rotations.len(), 1);
    let entry: serde_json::Value = serde_json::from_str(&rotations[0].body).unwrap();
    assert_eq!(entry["details"]["retired_kid"], old_kid.as_str());
    assert_eq!(entry["details"]["current_kid"], new_kid.as_str());
    assert_eq!(entry["details"]["forced"], true);
    assert_eq!(entry["context"]["actor"], "bootstrap-admin");
}
