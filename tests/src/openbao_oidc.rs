//! OpenBao's OIDC provider (`identity/oidc/provider/…`) as the identity provider people sign in
//! with: userpass users whose entities sit in identity groups, a `groups` and a `profile` scope,
//! a confidential client for the broker. Its authorize API, called with the user's own Vault
//! token, answers `{code, state}`: a test plays the browser that a person would drive.

use reqwest::Method;
use serde_json::{Value, json};

use crate::http;
use crate::openbao::OpenBao;

/// A provider and the broker's client at it.
#[derive(Debug, Clone)]
pub struct OidcProvider {
    /// The provider's `iss`.
    pub issuer: String,
    /// The broker's client ID.
    pub client_id: String,
    /// The broker's client secret.
    pub client_secret: String,
}

impl OpenBao {
    /// Sets up provider `name` (once per server: keys, scopes) with a client `client` whose only
    /// redirect URI is `redirect_uri`, open to every entity (`allow_all`).
    pub async fn oidc_provider(&self, name: &str, client: &str, redirect_uri: &str) -> OidcProvider {
        self.must(Method::POST, "identity/oidc/key/people", json!({ "allowed_client_ids": "*", "algorithm": "RS256" }))
            .await;
        let groups = r#"{"groups": {{identity.entity.groups.names}}}"#;
        self.must(Method::POST, "identity/oidc/scope/groups", json!({ "template": groups })).await;
        let profile = r#"{"name": {{identity.entity.name}}, "email": {{identity.entity.metadata.email}}}"#;
        self.must(Method::POST, "identity/oidc/scope/profile", json!({ "template": profile })).await;
        self.must(
            Method::POST,
            &format!("identity/oidc/client/{client}"),
            json!({ "redirect_uris": [redirect_uri], "assignments": ["allow_all"], "key": "people",
                    "id_token_ttl": "10m", "access_token_ttl": "10m" }),
        )
        .await;
        let info = self.must(Method::GET, &format!("identity/oidc/client/{client}"), Value::Null).await;
        self.must(
            Method::POST,
            &format!("identity/oidc/provider/{name}"),
            json!({ "allowed_client_ids": ["*"], "scopes_supported": ["groups", "profile"] }),
        )
        .await;
        OidcProvider {
            issuer: format!("{}/v1/identity/oidc/provider/{name}", self.addr),
            client_id: info["data"]["client_id"].as_str().expect("client_id").to_owned(),
            client_secret: info["data"]["client_secret"].as_str().expect("client_secret").to_owned(),
        }
    }

    /// A userpass user `name` (email `name@example.com`) in the identity groups `groups`;
    /// returns their Vault token, as after they typed their password.
    pub async fn oidc_user(&self, name: &str, groups: &[&str]) -> String {
        let (status, _) = self.api(Method::POST, "sys/auth/userpass", Some(json!({ "type": "userpass" }))).await;
        assert!(status == 204 || status == 400, "enable userpass: {status}");
        let mounts = self.must(Method::GET, "sys/auth", Value::Null).await;
        let accessor = mounts["data"]["userpass/"]["accessor"].as_str().expect("userpass accessor").to_owned();
        self.must(Method::POST, &format!("auth/userpass/users/{name}"), json!({ "password": "pw-of-a-person" })).await;
        let entity = self
            .must(
                Method::POST,
                "identity/entity",
                json!({ "name": name, "metadata": { "email": format!("{name}@example.com") } }),
            )
            .await;
        let entity_id = entity["data"]["id"].as_str().expect("entity id").to_owned();
        self.must(
            Method::POST,
            "identity/entity-alias",
            json!({ "name": name, "mount_accessor": accessor, "canonical_id": entity_id }),
        )
        .await;
        for group in groups {
            self.must(
                Method::POST,
                &format!("identity/group/name/{group}"),
                json!({ "member_entity_ids": [entity_id] }),
            )
            .await;
        }
        let login = http()
            .post(format!("{}/v1/auth/userpass/login/{name}", self.addr))
            .json(&json!({ "password": "pw-of-a-person" }))
            .send()
            .await
            .expect("userpass login");
        let login: Value = login.json().await.expect("login body");
        login["auth"]["client_token"].as_str().expect("client token").to_owned()
    }

    /// What the provider's authorization page does when the signed-in user agrees: the
    /// authorize API (the UI's URL with `/ui/vault/` as `/v1/`) with their token; returns the
    /// callback's `code` and `state`.
    pub async fn authorize(&self, authorize_url: &str, user_token: &str) -> (String, String) {
        let url = authorize_url.replacen("/ui/vault/", "/v1/", 1);
        let response = http().get(&url).header("X-Vault-Token", user_token).send().await.expect("authorize");
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 200, "authorize: {body}");
        let field = |name: &str| body[name].as_str().unwrap_or_else(|| panic!("no {name} in {body}")).to_owned();
        (field("code"), field("state"))
    }
}
