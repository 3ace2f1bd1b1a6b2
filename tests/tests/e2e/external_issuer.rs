//! The broker's strict JWT verifier against tokens from an issuer nobody here wrote: OpenBao's
//! `identity/oidc` provider, standing in for a CI system (GitHub Actions, GitLab) issuing RS256
//! tokens with custom claims.

use std::time::Duration;

use keyward_broker::tokens::verify::{Algorithm, Expectations, KeySet, VerifyError, verify};
use keyward_tests::now;
use keyward_tests::openbao::OpenBao;
use keyward_tests::{forge, http};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn tokens_from_openbaos_oidc_provider_verify_and_tampering_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bao = OpenBao::start(dir.path()).await;
    let issuer = bao.external_issuer("deploy", &json!({ "repository": "acme/infra", "ref": "refs/heads/main" })).await;
    let token = bao.identity_token(&issuer).await;
    let jwks = http().get(&issuer.jwks_url).send().await.unwrap().text().await.unwrap();
    let keys = KeySet::from_jwks(&jwks).unwrap();
    assert!(!keys.is_empty(), "{jwks}");
    let expect = Expectations {
        issuer: issuer.issuer.clone(),
        audience: issuer.audience.clone(),
        algorithms: vec![Algorithm::RS256],
        leeway: Duration::from_secs(30),
        // OpenBao's identity tokens carry no `nbf` (RFC 7519 makes it optional).
        require_nbf: false,
    };

    let verified = verify(&token, &keys, &expect, now()).unwrap();
    assert_eq!(verified.algorithm, Algorithm::RS256);
    assert_eq!(verified.string("repository"), Some("acme/infra"));
    assert_eq!(verified.string("ref"), Some("refs/heads/main"));

    let wrong_audience = Expectations { audience: "someone-else".into(), ..expect.clone() };
    assert_eq!(verify(&token, &keys, &wrong_audience, now()).err(), Some(VerifyError::WrongAudience));
    let wrong_issuer = Expectations { issuer: format!("{}/", issuer.issuer), ..expect.clone() };
    assert_eq!(verify(&token, &keys, &wrong_issuer, now()).err(), Some(VerifyError::WrongIssuer));
    let es_only = Expectations { algorithms: vec![Algorithm::ES256], ..expect.clone() };
    assert!(matches!(verify(&token, &keys, &es_only, now()), Err(VerifyError::AlgorithmNotAllowed(_))));
    assert_eq!(verify(&token, &keys, &expect, now() + 3600).err(), Some(VerifyError::Expired));

    let kid = forge::header(&token)["kid"].as_str().unwrap().to_owned();
    let forged = forge::resign_with_foreign_key(&token, &kid);
    assert_eq!(verify(&forged, &keys, &expect, now()).err(), Some(VerifyError::AlgorithmNotAllowed("ES256".into())));
    let lenient = Expectations { algorithms: vec![Algorithm::RS256, Algorithm::ES256], ..expect.clone() };
    assert_eq!(
        verify(&forged, &keys, &lenient, now()).err(),
        Some(VerifyError::KeyMismatch),
        "even when ES256 is allowed, an EC signature never verifies against the issuer's RSA key"
    );
    let mut claims = forge::claims(&token);
    claims["repository"] = json!("evil/infra");
    let parts: Vec<&str> = token.split('.').collect();
    use base64::Engine as _;
    let swapped = format!(
        "{}.{}.{}",
        parts[0],
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims.to_string()),
        parts[2]
    );
    assert_eq!(verify(&swapped, &keys, &expect, now()).err(), Some(VerifyError::BadSignature), "edited claims");
}
