//! A real OpenBao dev server (the Vault API) on a reserved loopback port, from the pinned venv.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::{eventually, free_addr_pair, http, venv};

/// A running `bao server -dev`, killed on drop.
#[allow(missing_debug_implementations)]
pub struct OpenBao {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub addr: String,
    /// Root token of the dev server.
    pub root_token: String,
    log: std::path::PathBuf,
    /// Every identity token handed out, so none is handed out twice.
    issued: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- openbao log ----\n{}", std::fs::read_to_string(&self.log).unwrap_or_default());
        }
    }
}

/// Result of a JWT login attempt.
#[derive(Debug)]
pub struct Login {
    /// HTTP status.
    pub status: u16,
    /// Response body.
    pub body: Value,
}

impl Login {
    /// Whether OpenBao issued a client token.
    pub fn accepted(&self) -> bool {
        self.status == 200 && self.body["auth"]["client_token"].is_string()
    }
}

impl OpenBao {
    /// Stops the server until the guard is dropped: connections are accepted, nothing answers.
    pub fn frozen(&self) -> crate::frozen::Frozen {
        crate::frozen::Frozen::stop(self.child.id())
    }

    /// Starts a dev server; `dir` receives its log. Not on port 0: OpenBao derives its API
    /// address (the `iss` of its identity tokens) from the configured one, and listens for its
    /// cluster on the next port, so both are reserved up front.
    pub async fn start(dir: &Path) -> Self {
        let addr = free_addr_pair();
        let root_token = "keyward-test-root".to_owned();
        let log = dir.join("openbao.log");
        let child = Command::new(venv().join("bin/bao"))
            .args(["server", "-dev", "-dev-no-store-token"])
            .arg(format!("-dev-listen-address={addr}"))
            .arg(format!("-dev-root-token-id={root_token}"))
            .env("HOME", dir)
            .env_remove("VAULT_ADDR")
            .env_remove("BAO_ADDR")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn bao server");
        let bao = Self { child, addr: format!("http://{addr}"), root_token, log, issued: Default::default() };
        let client = http();
        let health = format!("{}/v1/sys/health", bao.addr);
        eventually("OpenBao to become healthy", Duration::from_secs(60), || {
            let request = client.get(&health).send();
            async move { request.await.ok().filter(|r| r.status().as_u16() == 200).map(drop) }
        })
        .await;
        bao
    }

    /// Sends an authenticated API request and returns status and JSON body.
    pub async fn api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request =
            http().request(method, format!("{}/v1/{path}", self.addr)).header("X-Vault-Token", &self.root_token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("OpenBao request");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Like [`OpenBao::api`], failing the test on a non-2xx status.
    pub async fn must(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let body = (!body.is_null()).then_some(body);
        let (status, response) = self.api(method, path, body).await;
        assert!((200..300).contains(&status), "OpenBao {path} failed with {status}: {response}");
        response
    }

    /// Enables JWT auth at `auth/jwt`, trusting `issuer` through its OIDC discovery document.
    pub async fn trust_issuer(&self, issuer: &str) {
        self.must(reqwest::Method::POST, "sys/auth/jwt", json!({ "type": "jwt" })).await;
        self.must(
            reqwest::Method::POST,
            "auth/jwt/config",
            json!({ "oidc_discovery_url": issuer, "bound_issuer": issuer }),
        )
        .await;
    }

    /// Creates a JWT role with bound audience and bound claims, and no leeway, so expiry is exact.
    pub async fn jwt_role(&self, name: &str, audience: &str, bound_claims: Value) {
        self.must(
            reqwest::Method::POST,
            &format!("auth/jwt/role/{name}"),
            json!({
                "role_type": "jwt",
                "user_claim": "sub",
                "bound_audiences": [audience],
                "bound_claims": bound_claims,
                "token_policies": ["default"],
                "token_ttl": "5m",
                "clock_skew_leeway": -1,
                "expiration_leeway": -1,
                "not_before_leeway": -1,
            }),
        )
        .await;
    }

    /// `auth/jwt/login` with `jwt` for `role`.
    pub async fn login(&self, role: &str, jwt: &str) -> Login {
        let response = http()
            .post(format!("{}/v1/auth/jwt/login", self.addr))
            .json(&json!({ "role": role, "jwt": jwt }))
            .send()
            .await
            .expect("OpenBao login request");
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        Login { status, body }
    }
}

/// OpenBao's `identity/oidc` provider configured as a stand-in for a CI system's OIDC issuer.
#[derive(Debug)]
pub struct ExternalIssuer {
    /// The `iss` of its tokens.
    pub issuer: String,
    /// Its JWKS URL.
    pub jwks_url: String,
    /// The `aud` of its tokens (the role's client ID).
    pub audience: String,
    client_token: String,
    role: String,
}

impl OpenBao {
    /// Sets up a signing key, a role whose tokens carry `claims` (a JSON object template), and a
    /// userpass identity allowed to fetch tokens for that role.
    pub async fn external_issuer(&self, role: &str, claims: &Value) -> ExternalIssuer {
        use reqwest::Method;
        self.must(Method::POST, "identity/oidc/config", json!({ "issuer": self.addr })).await;
        self.must(Method::POST, "identity/oidc/key/ci", json!({ "algorithm": "RS256", "allowed_client_ids": "*" }))
            .await;
        self.must(
            Method::POST,
            &format!("identity/oidc/role/{role}"),
            json!({ "key": "ci", "ttl": "5m", "template": claims.to_string() }),
        )
        .await;
        let role_info = self.must(Method::GET, &format!("identity/oidc/role/{role}"), json!(null)).await;
        let audience = role_info["data"]["client_id"].as_str().expect("role client_id").to_owned();
        // One policy and one user per role, so several roles can coexist.
        self.must(
            Method::POST,
            &format!("sys/policies/acl/ci-token-{role}"),
            json!({ "policy": format!("path \"identity/oidc/token/{role}\" {{ capabilities = [\"read\"] }}") }),
        )
        .await;
        let (status, _) = self.api(Method::POST, "sys/auth/userpass", Some(json!({ "type": "userpass" }))).await;
        assert!(status == 204 || status == 400, "enable userpass: {status}");
        self.must(
            Method::POST,
            &format!("auth/userpass/users/ci-runner-{role}"),
            json!({ "password": "ci-runner-pw", "token_policies": [format!("ci-token-{role}")] }),
        )
        .await;
        let login = http()
            .post(format!("{}/v1/auth/userpass/login/ci-runner-{role}", self.addr))
            .json(&json!({ "password": "ci-runner-pw" }))
            .send()
            .await
            .expect("userpass login");
        let login: Value = login.json().await.expect("login body");
        let client_token = login["auth"]["client_token"].as_str().expect("client token").to_owned();
        ExternalIssuer {
            issuer: format!("{}/v1/identity/oidc", self.addr),
            jwks_url: format!("{}/v1/identity/oidc/.well-known/keys", self.addr),
            audience,
            client_token,
            role: role.to_owned(),
        }
    }

    /// What a CI job would use to fetch a token itself: the token endpoint's URL and the
    /// `X-Vault-Token` allowed to read it.
    pub fn identity_token_request(&self, issuer: &ExternalIssuer) -> (String, String) {
        (format!("{}/v1/identity/oidc/token/{}", self.addr, issuer.role), issuer.client_token.clone())
    }

    /// Fetches a fresh identity token from `issuer`: one never handed out before. OpenBao's
    /// tokens carry no `jti` and whole-second times, so two requests within a second get the same
    /// bytes, which a CI system never hands a job twice (and the broker rightly refuses as a replay).
    pub async fn identity_token(&self, issuer: &ExternalIssuer) -> String {
        let client = http();
        let url = format!("{}/v1/identity/oidc/token/{}", self.addr, issuer.role);
        eventually("OpenBao to sign an identity token not seen before", Duration::from_secs(10), || {
            let request = client.get(&url).header("X-Vault-Token", &issuer.client_token).send();
            async move {
                let body: Value = request.await.expect("identity token request").json().await.expect("token body");
                let token = body["data"]["token"].as_str().unwrap_or_else(|| panic!("no token in {body}")).to_owned();
                self.issued.lock().expect("issued tokens").insert(token.clone()).then_some(token)
            }
        })
        .await
    }
}
