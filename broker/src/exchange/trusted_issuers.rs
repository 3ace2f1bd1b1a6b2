//! Trusted external OIDC issuers (CI systems): discovery, JWKS caching, verification.
//!
//! Keys are fetched lazily (a CI provider's outage never stops the broker from starting) from the
//! `jwks_uri` of the issuer's discovery document, whose `issuer` must equal the configured one.
//! A token signed by a key the cache does not know triggers at most one refresh per
//! `jwks_refresh_interval` (30 s by default) per issuer, so a flood of tokens with random `kid`s
//! cannot turn the broker into a JWKS-fetching amplifier. `jku`/`x5u` are never followed: only the configured issuer's
//! own discovery document points at keys.
//!
//! Cached keys expire (security review M3): after the JWKS response's `Cache-Control: max-age`
//! (at least the refresh interval, at most [`MAX_KEYS_AGE`], which is also the default), the next
//! token refetches them, so a key the issuer removed stops verifying; if that refetch fails, tokens
//! are refused (fail closed) rather than checked against keys the issuer may have withdrawn. A
//! failed fetch is remembered for `FAILURE_MEMORY` (L7): tokens arriving meanwhile get the same
//! refusal without another request to the issuer.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use keyward_proto::claims::Phase;
use serde::Deserialize;
use serde_json::Value;

use crate::tokens::verify::{self, Expectations, KeySet, VerifiedToken, VerifyError};

/// Largest discovery or JWKS document read.
const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
/// The longest cached keys are trusted, and how long when the issuer says nothing.
pub const MAX_KEYS_AGE: Duration = Duration::from_secs(3600);
/// How long a failed key fetch is answered from memory.
const FAILURE_MEMORY: Duration = Duration::from_secs(5);

/// Why a CI token could not be verified.
#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    /// The token itself was refused.
    #[error(transparent)]
    Token(#[from] VerifyError),
    /// A required claim is missing or has another value.
    #[error("token claim `{0}` does not have the value this broker requires")]
    RequiredClaim(String),
    /// The issuer's keys could not be fetched.
    #[error("cannot fetch the signing keys of issuer `{issuer}`: {reason}")]
    Keys {
        /// The configured issuer name.
        issuer: String,
        /// What went wrong.
        reason: String,
    },
}

/// One trusted issuer (`[[issuers]]`): a CI system's OIDC issuer whose tokens the broker exchanges.
#[derive(Debug, Clone)]
pub struct IssuerConfig {
    /// Unique name, for logs and the record.
    pub name: String,
    /// The exact `iss`; discovery is fetched from `{issuer}/.well-known/openid-configuration`.
    pub issuer: String,
    /// The exact `aud` its tokens must carry for this broker.
    pub audience: String,
    /// Accepted signature algorithms.
    pub algorithms: Vec<verify::Algorithm>,
    /// Whether tokens must carry `nbf` (always checked when present).
    pub require_nbf: bool,
    /// Claims that must be present with exactly these string values, e.g. `repository_owner = "acme"`.
    /// Required: CI systems let any workflow choose its own `aud`, so an issuer bound by audience
    /// alone would trust every repository it serves.
    pub required_claims: BTreeMap<String, String>,
    /// The targets (`<type>:<name>`) this issuer's tokens may ask for; any other is refused before
    /// the policy runs. Required, and each must be a configured target.
    pub targets: Vec<String>,
    /// Which phase this issuer's tokens stand for: `plan` (read targets only) unless set to `apply`.
    pub phase: Phase,
    /// Each token may be exchanged once.
    pub single_use: bool,
    /// Minimum time between two JWKS fetches when tokens name unknown keys.
    pub jwks_refresh_interval: Duration,
    /// Where the run context is found in this issuer's tokens.
    pub claims: ClaimMapping,
}

/// Claim names of a CI token that carry the run context. Defaults are GitHub Actions' names.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClaimMapping {
    /// The CI run (becomes the AWS role session name).
    pub run_id: String,
    /// Repository.
    pub repository: String,
    /// Git ref.
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// Commit SHA.
    pub commit_sha: String,
    /// Who triggered it.
    pub triggered_by: String,
    /// What counts as the stack (defaults to the repository).
    pub stack: String,
}

impl Default for ClaimMapping {
    fn default() -> Self {
        Self {
            run_id: "run_id".to_owned(),
            repository: "repository".to_owned(),
            git_ref: "ref".to_owned(),
            commit_sha: "sha".to_owned(),
            triggered_by: "actor".to_owned(),
            stack: "repository".to_owned(),
        }
    }
}

struct CachedKeys {
    keys: Arc<KeySet>,
    fetched_at: Instant,
    /// How long they may be trusted (the response's `max-age`, bounded).
    max_age: Duration,
}

/// The last failed fetch: when, and why.
struct FetchFailure {
    at: Instant,
    reason: String,
}

/// One configured issuer and its key cache.
pub struct TrustedIssuer {
    /// Its configuration.
    pub config: IssuerConfig,
    cache: RwLock<Option<CachedKeys>>,
    refresh: tokio::sync::Mutex<()>,
    failure: std::sync::Mutex<Option<FetchFailure>>,
}

impl std::fmt::Debug for TrustedIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustedIssuer").field("name", &self.config.name).field("issuer", &self.config.issuer).finish()
    }
}

/// All configured issuers.
#[derive(Debug)]
pub struct TrustedIssuers {
    issuers: Vec<Arc<TrustedIssuer>>,
    http: reqwest::Client,
}

/// `iss` and `aud` read from a token *without* verifying it, only to choose which issuer's strict
/// expectations to verify it against.
pub fn peek_issuer_and_audiences(token: &str) -> Option<(String, Vec<String>)> {
    use base64::Engine as _;
    if token.len() > verify::MAX_TOKEN_BYTES {
        return None;
    }
    let claims = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(claims).ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    let iss = claims.get("iss")?.as_str()?.to_owned();
    let aud = match claims.get("aud") {
        Some(Value::String(aud)) => vec![aud.clone()],
        Some(Value::Array(auds)) => auds.iter().filter_map(|a| a.as_str().map(str::to_owned)).collect(),
        _ => Vec::new(),
    };
    Some((iss, aud))
}

/// The claims of a token read *without* verifying it: only for a token whose signature already
/// verified, to name its subject in a refusal.
pub fn peek_claims(token: &str) -> Option<serde_json::Map<String, Value>> {
    use base64::Engine as _;
    if token.len() > verify::MAX_TOKEN_BYTES {
        return None;
    }
    let claims = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(claims).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Keys only over TLS, unless the issuer itself is a loopback one (the config allows plain http
/// only for those): a discovery document cannot downgrade where keys come from.
fn jwks_uri_allowed(issuer: &str, jwks_uri: &str) -> bool {
    jwks_uri.starts_with("https://") || issuer.starts_with("http://")
}

impl TrustedIssuers {
    /// The configured issuers, with an HTTP client for their discovery documents.
    pub fn new(configs: &[IssuerConfig]) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(3))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let issuers = configs
            .iter()
            .map(|config| {
                Arc::new(TrustedIssuer {
                    config: config.clone(),
                    cache: RwLock::new(None),
                    refresh: tokio::sync::Mutex::new(()),
                    failure: std::sync::Mutex::new(None),
                })
            })
            .collect();
        Ok(Self { issuers, http })
    }

    /// The issuer whose `iss` and `aud` this token names, if one is configured.
    pub fn find(&self, iss: &str, audiences: &[String]) -> Option<&Arc<TrustedIssuer>> {
        self.issuers.iter().find(|i| i.config.issuer == iss && audiences.iter().any(|a| *a == i.config.audience))
    }

    /// Verifies `token` against `issuer`, refreshing its keys once if the signing key is unknown.
    pub async fn verify(
        &self,
        issuer: &TrustedIssuer,
        token: &str,
        now: i64,
        leeway: Duration,
    ) -> Result<VerifiedToken, IssuerError> {
        let expect = Expectations {
            issuer: issuer.config.issuer.clone(),
            audience: issuer.config.audience.clone(),
            algorithms: issuer.config.algorithms.clone(),
            leeway,
            require_nbf: issuer.config.require_nbf,
        };
        let keys = self.keys(issuer, false).await?;
        let verified = match verify::verify(token, &keys, &expect, now) {
            Err(VerifyError::UnknownKey) => {
                let keys = self.keys(issuer, true).await?;
                verify::verify(token, &keys, &expect, now)?
            }
            other => other?,
        };
        for (claim, wanted) in &issuer.config.required_claims {
            if verified.string(claim) != Some(wanted.as_str()) {
                return Err(IssuerError::RequiredClaim(claim.clone()));
            }
        }
        Ok(verified)
    }

    async fn keys(&self, issuer: &TrustedIssuer, refresh: bool) -> Result<Arc<KeySet>, IssuerError> {
        let cached = |fresh_enough: &dyn Fn(&CachedKeys) -> bool| -> Option<Arc<KeySet>> {
            let guard = issuer.cache.read().ok()?;
            guard.as_ref().filter(|c| fresh_enough(c)).map(|c| Arc::clone(&c.keys))
        };
        let unexpired = |c: &CachedKeys| c.fetched_at.elapsed() < c.max_age;
        if !refresh && let Some(keys) = cached(&unexpired) {
            return Ok(keys);
        }
        let _one_at_a_time = issuer.refresh.lock().await;
        // Rate limit: a refresh within the interval (ours or a concurrent caller's) is reused.
        let interval = issuer.config.jwks_refresh_interval;
        if let Some(keys) = cached(&|c| c.fetched_at.elapsed() < interval && unexpired(c)) {
            return Ok(keys);
        }
        let failed = |reason: String| IssuerError::Keys { issuer: issuer.config.name.clone(), reason };
        if let Some(reason) = issuer
            .failure
            .lock()
            .ok()
            .and_then(|f| f.as_ref().filter(|f| f.at.elapsed() < FAILURE_MEMORY).map(|f| f.reason.clone()))
        {
            return Err(failed(reason));
        }
        let (keys, max_age) = match self.fetch(&issuer.config).await {
            Ok(fetched) => fetched,
            Err(reason) => {
                tracing::warn!(issuer = %issuer.config.name, %reason, "cannot fetch issuer keys");
                if let Ok(mut failure) = issuer.failure.lock() {
                    *failure = Some(FetchFailure { at: Instant::now(), reason: reason.clone() });
                }
                return Err(failed(reason));
            }
        };
        let keys = Arc::new(keys);
        let max_age = max_age.unwrap_or(MAX_KEYS_AGE).clamp(interval, MAX_KEYS_AGE.max(interval));
        tracing::info!(issuer = %issuer.config.name, keys = keys.len(), max_age_s = max_age.as_secs(), "fetched issuer keys");
        if let Ok(mut guard) = issuer.cache.write() {
            *guard = Some(CachedKeys { keys: Arc::clone(&keys), fetched_at: Instant::now(), max_age });
        }
        if let Ok(mut failure) = issuer.failure.lock() {
            *failure = None;
        }
        Ok(keys)
    }

    /// The issuer's keys, and how long its JWKS response says they may be cached.
    async fn fetch(&self, config: &IssuerConfig) -> Result<(KeySet, Option<Duration>), String> {
        let discovery_url = format!("{}/.well-known/openid-configuration", config.issuer);
        let discovery: Value = serde_json::from_str(&self.get(&discovery_url).await?.0)
            .map_err(|e| format!("discovery document is not JSON: {e}"))?;
        if discovery.get("issuer").and_then(Value::as_str) != Some(config.issuer.as_str()) {
            return Err("the discovery document names a different issuer".to_owned());
        }
        let jwks_uri = discovery
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or_else(|| "the discovery document has no jwks_uri".to_owned())?;
        if !jwks_uri_allowed(&config.issuer, jwks_uri) {
            return Err(format!("the discovery document's jwks_uri `{jwks_uri}` is not https"));
        }
        let (jwks, max_age) = self.get(jwks_uri).await?;
        let keys = KeySet::from_jwks(&jwks).map_err(|e| e.to_string())?;
        if keys.is_empty() {
            return Err("the JWKS has no usable signing key".to_owned());
        }
        Ok((keys, max_age))
    }

    /// The body of `url`, and its `Cache-Control: max-age` if it has one.
    async fn get(&self, url: &str) -> Result<(String, Option<Duration>), String> {
        let response = self.http.get(url).send().await.map_err(|e| format!("GET {url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("GET {url}: HTTP {}", response.status().as_u16()));
        }
        let max_age = response
            .headers()
            .get(reqwest::header::CACHE_CONTROL)
            .and_then(|value| value.to_str().ok())
            .and_then(max_age);
        // Read in chunks against the cap: a hostile or broken endpoint cannot make the broker
        // buffer an unbounded body.
        let mut response = response;
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| format!("GET {url}: {e}"))? {
            if bytes.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(format!("GET {url}: document larger than 256 KiB"));
            }
            bytes.extend_from_slice(&chunk);
        }
        let body = String::from_utf8(bytes).map_err(|_| format!("GET {url}: not UTF-8"))?;
        Ok((body, max_age))
    }
}

/// `max-age=N` of a `Cache-Control` value (`no-store`/`no-cache` mean none: refetch as often as
/// the refresh interval allows).
fn max_age(cache_control: &str) -> Option<Duration> {
    let directives: Vec<&str> = cache_control.split(',').map(str::trim).collect();
    if directives.iter().any(|d| d.eq_ignore_ascii_case("no-store") || d.eq_ignore_ascii_case("no-cache")) {
        return Some(Duration::ZERO);
    }
    directives
        .iter()
        .filter_map(|d| d.split_once('='))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("max-age"))
        .and_then(|(_, n)| n.trim().trim_matches('"').parse::<u64>().ok())
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_gives_the_keys_age() {
        assert_eq!(max_age("public, max-age=300"), Some(Duration::from_secs(300)));
        assert_eq!(max_age("max-age=\"60\""), Some(Duration::from_secs(60)));
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("private"), None);
        assert_eq!(max_age("max-age=soon"), None);
    }

    #[test]
    fn discovery_cannot_downgrade_key_transport() {
        assert!(jwks_uri_allowed("https://token.actions.githubusercontent.com", "https://x.example/jwks"));
        assert!(!jwks_uri_allowed("https://token.actions.githubusercontent.com", "http://x.example/jwks"));
        assert!(!jwks_uri_allowed("https://gitlab.example", "file:///etc/keys"));
        assert!(jwks_uri_allowed("http://127.0.0.1:8200/v1/identity/oidc", "http://127.0.0.1:8200/keys"));
    }
}
