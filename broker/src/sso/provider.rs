//! The identity provider, as a relying party sees it: its discovery document (where to send the
//! browser, where to redeem a code), its token endpoint, and its ID tokens, verified with the same
//! code and strictness as CI tokens ([`TrustedIssuers`]: algorithm allow-list, exact `iss`,
//! `aud` = our client ID, `exp`/`iat`/`nbf`, size cap, rate-limited JWKS refresh), then the claims
//! only a sign-in has: `nonce`, `azp`, `sub`.

use std::time::Duration;

use serde_json::{Map, Value};
use zeroize::Zeroizing;

use super::SsoSettings;
use crate::access::Person;
use crate::exchange::trusted_issuers::{ClaimMapping, IssuerConfig, IssuerError, TrustedIssuers};
use crate::tokens::verify::VerifyError;

/// Largest discovery or token response read.
const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// What the provider's discovery document says.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// Where the browser is sent.
    pub authorization: reqwest::Url,
    /// Where a code is redeemed.
    pub token: String,
}

/// Why an ID token's claims were refused after its signature verified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// `nonce` missing or not the one this login sent.
    #[error("the ID token's nonce is not the one this sign-in sent")]
    Nonce,
    /// Several audiences and no `azp`, or an `azp` that is not our client.
    #[error("the ID token was issued to another client (azp)")]
    AuthorizedParty,
    /// No usable `sub`.
    #[error("the ID token has no usable `sub`")]
    Subject,
    /// The groups claim is not an array of strings.
    #[error("the ID token's `{0}` claim is not a list of group names")]
    Groups(String),
    /// `require_groups` and the person is in none.
    #[error("the person is in no group, and [sso] require_groups is set")]
    NoGroups,
}

/// The provider: discovery, code redemption, ID token verification.
#[derive(Debug)]
pub struct Provider {
    issuers: TrustedIssuers,
    http: reqwest::Client,
    endpoints: tokio::sync::OnceCell<Endpoints>,
}

/// Whether an ID token refusal came after its signature verified: the provider vouched for a
/// person, so the refusal is on the audit record (DESIGN.md §8.10).
pub fn after_signature(error: &IssuerError) -> bool {
    use VerifyError::*;
    matches!(
        error,
        IssuerError::Token(
            MissingClaim(_) | WrongClaimType(_) | WrongIssuer | WrongAudience | Expired | NotYetValid | IssuedInFuture
        ) | IssuerError::RequiredClaim(_)
    )
}

impl Provider {
    /// The provider of `settings`; nothing is fetched until the first sign-in.
    pub fn new(settings: &SsoSettings) -> Result<Self, reqwest::Error> {
        let config = IssuerConfig {
            name: "sso".to_owned(),
            issuer: settings.issuer.clone(),
            audience: settings.client_id.clone(),
            algorithms: settings.algorithms.clone(),
            require_nbf: false,
            required_claims: Default::default(),
            targets: Vec::new(),
            phase: keyward_proto::claims::Phase::Plan,
            single_use: false,
            jwks_refresh_interval: Duration::from_secs(30),
            claims: ClaimMapping::default(),
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(3))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self { issuers: TrustedIssuers::new(&[config])?, http, endpoints: tokio::sync::OnceCell::new() })
    }

    /// The provider's endpoints, from its discovery document (fetched once).
    pub async fn endpoints(&self, issuer: &str) -> Result<&Endpoints, String> {
        self.endpoints.get_or_try_init(|| self.discover(issuer)).await
    }

    async fn discover(&self, issuer: &str) -> Result<Endpoints, String> {
        let url = format!("{issuer}/.well-known/openid-configuration");
        let response = self.http.get(&url).send().await.map_err(|e| format!("GET {url}: {e}"))?;
        let document: Value = serde_json::from_slice(&read_capped(response, &url).await?)
            .map_err(|e| format!("the discovery document is not JSON: {e}"))?;
        if document.get("issuer").and_then(Value::as_str) != Some(issuer) {
            return Err("the discovery document names a different issuer".to_owned());
        }
        let endpoint = |name: &str| {
            let value =
                document.get(name).and_then(Value::as_str).ok_or(format!("the discovery document has no {name}"))?;
            // Codes and secrets only over TLS, unless the provider itself is a loopback one.
            if value.starts_with("https://") || (issuer.starts_with("http://") && value.starts_with("http://")) {
                Ok(value.to_owned())
            } else {
                Err(format!("the discovery document's {name} `{value}` is not https"))
            }
        };
        let authorization = reqwest::Url::parse(&endpoint("authorization_endpoint")?)
            .map_err(|e| format!("the authorization_endpoint is not a URL: {e}"))?;
        Ok(Endpoints { authorization, token: endpoint("token_endpoint")? })
    }

    /// Redeems `code` (with the PKCE `verifier`) at the token endpoint; returns the ID token.
    pub async fn redeem(
        &self,
        settings: &SsoSettings,
        code: &str,
        verifier: &str,
    ) -> Result<Zeroizing<String>, String> {
        let endpoints = self.endpoints(&settings.issuer).await?;
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", settings.redirect_url.as_str()),
            ("code_verifier", verifier),
        ];
        let response = self
            .http
            .post(&endpoints.token)
            .basic_auth(&settings.client_id, Some(settings.client_secret.expose()))
            .form(&form)
            .send()
            .await
            .map_err(|e| format!("the token endpoint could not be reached: {e}"))?;
        let status = response.status();
        let body = read_capped(response, "the token endpoint").await?;
        if !status.is_success() {
            // The provider's error code (invalid_grant, …) says why; never the body's other text.
            let code = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned));
            return Err(format!(
                "the token endpoint refused the code: HTTP {} {}",
                status.as_u16(),
                code.unwrap_or_default()
            ));
        }
        let body: Value = serde_json::from_slice(&body).map_err(|_| "the token response is not JSON".to_owned())?;
        let token = body.get("id_token").and_then(Value::as_str).ok_or("the token response has no id_token")?;
        Ok(Zeroizing::new(token.to_owned()))
    }

    /// Verifies an ID token's signature and standard claims; returns its claims.
    pub async fn verify(
        &self,
        settings: &SsoSettings,
        id_token: &str,
        now: i64,
    ) -> Result<Map<String, Value>, IssuerError> {
        let audiences = [settings.client_id.clone()];
        let issuer =
            self.issuers.find(&settings.issuer, &audiences).ok_or(IssuerError::Token(VerifyError::WrongIssuer))?;
        Ok(self.issuers.verify(issuer, id_token, now, Duration::from_secs(60)).await?.claims)
    }
}

async fn read_capped(mut response: reqwest::Response, what: &str) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| format!("{what}: {e}"))? {
        if bytes.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(format!("{what}: response larger than 256 KiB"));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// The checks only a sign-in's ID token needs, after [`Provider::verify`]: our `nonce`, and an
/// `azp` naming us when the token has several audiences (OIDC Core §3.1.3.7).
pub fn check_claims(claims: &Map<String, Value>, client_id: &str, nonce: &str) -> Result<(), ClaimError> {
    let sent = claims.get("nonce").and_then(Value::as_str).unwrap_or_default();
    if sent.is_empty() || !super::secrets::same(sent, nonce) {
        return Err(ClaimError::Nonce);
    }
    let several = claims.get("aud").and_then(Value::as_array).is_some_and(|a| a.len() > 1);
    match claims.get("azp") {
        Some(Value::String(azp)) if azp == client_id => {}
        None if !several => {}
        _ => return Err(ClaimError::AuthorizedParty),
    }
    Ok(())
}

/// The person an ID token names: `sub`, `name` (else `preferred_username`), `email`, the groups
/// claim (missing: no groups) and `amr` (missing: none).
pub fn person(
    claims: &Map<String, Value>,
    issuer: &str,
    groups_claim: &str,
    require_groups: bool,
) -> Result<Person, ClaimError> {
    let text = |name: &str| claims.get(name).and_then(Value::as_str).map(|s| s.chars().take(256).collect::<String>());
    let subject = text("sub").filter(|s| !s.is_empty()).ok_or(ClaimError::Subject)?;
    let strings = |name: &str| -> Option<Vec<String>> {
        match claims.get(name) {
            None | Some(Value::Null) => Some(Vec::new()),
            Some(Value::Array(items)) => items.iter().map(|v| v.as_str().map(str::to_owned)).collect(),
            Some(_) => None,
        }
    };
    let groups = strings(groups_claim).ok_or_else(|| ClaimError::Groups(groups_claim.to_owned()))?;
    if require_groups && groups.is_empty() {
        return Err(ClaimError::NoGroups);
    }
    Ok(Person {
        issuer: issuer.to_owned(),
        subject,
        name: text("name").or_else(|| text("preferred_username")).unwrap_or_default(),
        email: text("email").unwrap_or_default(),
        groups,
        amr: strings("amr").unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn claims(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn the_nonce_must_be_the_one_sent() {
        let ok = claims(json!({ "nonce": "n1", "aud": "kw" }));
        assert_eq!(check_claims(&ok, "kw", "n1"), Ok(()));
        assert_eq!(check_claims(&ok, "kw", "n2"), Err(ClaimError::Nonce));
        assert_eq!(check_claims(&claims(json!({ "aud": "kw" })), "kw", ""), Err(ClaimError::Nonce), "none sent back");
    }

    #[test]
    fn another_clients_token_is_refused_by_azp() {
        let several = claims(json!({ "nonce": "n", "aud": ["kw", "other"] }));
        assert_eq!(check_claims(&several, "kw", "n"), Err(ClaimError::AuthorizedParty));
        let other = claims(json!({ "nonce": "n", "aud": ["kw", "other"], "azp": "other" }));
        assert_eq!(check_claims(&other, "kw", "n"), Err(ClaimError::AuthorizedParty));
        let ours = claims(json!({ "nonce": "n", "aud": ["kw", "other"], "azp": "kw" }));
        assert_eq!(check_claims(&ours, "kw", "n"), Ok(()));
        let single_other_azp = claims(json!({ "nonce": "n", "aud": "kw", "azp": "other" }));
        assert_eq!(check_claims(&single_other_azp, "kw", "n"), Err(ClaimError::AuthorizedParty));
    }

    #[test]
    fn the_person_is_read_from_the_claims() {
        let c =
            claims(json!({ "sub": "e-1", "name": "Alice", "email": "a@x", "groups": ["ops"], "amr": ["pwd", "mfa"] }));
        let p = person(&c, "https://idp", "groups", false).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((p.subject.as_str(), p.name.as_str(), p.email.as_str()), ("e-1", "Alice", "a@x"));
        assert_eq!((p.groups, p.amr), (vec!["ops".to_owned()], vec!["pwd".to_owned(), "mfa".to_owned()]));
        let no_groups = claims(json!({ "sub": "e-2", "preferred_username": "bob" }));
        assert_eq!(person(&no_groups, "i", "groups", false).map(|p| (p.name, p.groups.len())), Ok(("bob".into(), 0)));
        assert_eq!(person(&no_groups, "i", "groups", true), Err(ClaimError::NoGroups));
        assert_eq!(person(&claims(json!({ "sub": "" })), "i", "groups", false), Err(ClaimError::Subject));
        let bad = claims(json!({ "sub": "s", "groups": "ops" }));
        assert_eq!(person(&bad, "i", "groups", false), Err(ClaimError::Groups("groups".into())));
    }
}
