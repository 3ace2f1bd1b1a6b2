//! `[sso]`: sign-in for people with an OpenID Connect provider (docs/access.md), checked into
//! [`SsoSettings`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use keyward_proto::secret::Secret;
use serde::Deserialize;

use super::url::check_url;
use super::{ConfigError, invalid};
use crate::sso::SsoSettings;
use crate::tokens::verify::Algorithm;

/// The `[sso]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SsoConfig {
    /// The provider's exact issuer URL.
    pub issuer: String,
    /// This broker's client ID at the provider.
    pub client_id: String,
    /// A file holding the client secret.
    pub client_secret_file: PathBuf,
    /// Scopes requested; `openid` is required.
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// The ID token claim listing the person's groups.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// The redirect URI registered with the provider; default `<external_url>/auth/callback`.
    #[serde(default)]
    pub redirect_url: Option<String>,
    /// Path prefixes `return_to` may point under.
    #[serde(default = "default_return_to")]
    pub allowed_return_to: Vec<String>,
    /// A session unused this long ends.
    #[serde(default = "default_idle", with = "super::file::humantime_serde_compat")]
    pub idle_timeout: Duration,
    /// A session ends this long after sign-in.
    #[serde(default = "default_absolute", with = "super::file::humantime_serde_compat")]
    pub absolute_timeout: Duration,
    /// ID token signature algorithms accepted.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<Algorithm>,
    /// Refuse a person the provider puts in no group.
    #[serde(default)]
    pub require_groups: bool,
}

fn default_scopes() -> Vec<String> {
    ["openid", "profile", "email", "groups"].map(str::to_owned).to_vec()
}
fn default_groups_claim() -> String {
    "groups".to_owned()
}
fn default_return_to() -> Vec<String> {
    vec!["/".to_owned()]
}
fn default_idle() -> Duration {
    Duration::from_secs(3600)
}
fn default_absolute() -> Duration {
    Duration::from_secs(12 * 3600)
}
fn default_algorithms() -> Vec<Algorithm> {
    vec![Algorithm::RS256, Algorithm::ES256]
}

/// Checks `[sso]` and reads the client secret. `listen` decides whether cookies are `Secure`.
pub(super) fn check(sso: SsoConfig, external_url: &str, listen: SocketAddr) -> Result<SsoSettings, ConfigError> {
    check_url("sso.issuer", &sso.issuer)?;
    if sso.client_id.trim().is_empty() || sso.client_id.len() > 256 || sso.client_id.chars().any(char::is_control) {
        return Err(invalid("sso.client_id", "must be the client ID the provider gave this broker"));
    }
    let secret = std::fs::read_to_string(&sso.client_secret_file).map_err(|e| {
        invalid("sso.client_secret_file", format!("cannot read {}: {e}", sso.client_secret_file.display()))
    })?;
    let client_secret = Secret::from(Secret::from(secret).expose().trim().to_owned());
    if client_secret.expose().is_empty() {
        return Err(invalid("sso.client_secret_file", format!("{} is empty", sso.client_secret_file.display())));
    }
    if !sso.scopes.iter().any(|s| s == "openid") {
        return Err(invalid("sso.scopes", "must include `openid`"));
    }
    if sso.scopes.iter().any(|s| s.is_empty() || !s.chars().all(|c| c.is_ascii_graphic() && c != '"' && c != '\\')) {
        return Err(invalid("sso.scopes", "each scope is one word of printable ASCII"));
    }
    if sso.groups_claim.trim().is_empty() {
        return Err(invalid("sso.groups_claim", "must name a claim"));
    }
    let redirect_url = sso.redirect_url.unwrap_or_else(|| format!("{external_url}/auth/callback"));
    check_url("sso.redirect_url", &redirect_url)?;
    if sso.allowed_return_to.is_empty()
        || sso.allowed_return_to.iter().any(|p| !p.starts_with('/') || p.starts_with("//") || p.contains('\\'))
    {
        return Err(invalid("sso.allowed_return_to", "each entry is a local path prefix such as `/` or `/ui/`"));
    }
    check_timeouts(sso.idle_timeout, sso.absolute_timeout)?;
    if sso.algorithms.is_empty() {
        return Err(invalid("sso.algorithms", "must allow at least one algorithm"));
    }
    Ok(SsoSettings {
        issuer: sso.issuer,
        client_id: sso.client_id,
        client_secret,
        scopes: sso.scopes,
        groups_claim: sso.groups_claim,
        redirect_url,
        allowed_return_to: sso.allowed_return_to,
        idle_timeout: sso.idle_timeout,
        absolute_timeout: sso.absolute_timeout,
        algorithms: sso.algorithms,
        require_groups: sso.require_groups,
        secure_cookies: !listen.ip().is_loopback(),
    })
}

fn check_timeouts(idle: Duration, absolute: Duration) -> Result<(), ConfigError> {
    if !(Duration::from_secs(1)..=Duration::from_secs(24 * 3600)).contains(&idle) {
        return Err(invalid("sso.idle_timeout", "must be between 1s and 24h"));
    }
    if !(Duration::from_secs(1)..=Duration::from_secs(30 * 24 * 3600)).contains(&absolute) {
        return Err(invalid("sso.absolute_timeout", "must be between 1s and 30 days"));
    }
    if idle > absolute {
        return Err(invalid("sso.idle_timeout", "must not be longer than sso.absolute_timeout"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str, secret: &std::path::Path) -> Result<SsoSettings, ConfigError> {
        let text = format!(
            "issuer = \"https://idp.example\"\nclient_id = \"kw\"\nclient_secret_file = \"{}\"\n{extra}",
            secret.display()
        );
        let sso: SsoConfig = super::super::parse_toml(&text, "sso.toml")?;
        check(sso, "https://keyward.example", ([10, 0, 0, 1], 8422).into())
    }

    #[test]
    fn defaults_and_errors() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s3cret\n")?;
        let ok = config("", &secret)?;
        assert_eq!(ok.redirect_url, "https://keyward.example/auth/callback");
        assert_eq!(ok.scopes, ["openid", "profile", "email", "groups"]);
        assert_eq!((ok.idle_timeout.as_secs(), ok.absolute_timeout.as_secs()), (3600, 12 * 3600));
        assert!(ok.secure_cookies && ok.client_secret.expose() == "s3cret");
        let cases = [
            ("scopes = [\"profile\"]", "sso.scopes"),
            ("idle_timeout = \"2h\"\nabsolute_timeout = \"1h\"", "sso.idle_timeout"),
            ("allowed_return_to = [\"//evil\"]", "sso.allowed_return_to"),
            ("redirect_url = \"http://evil.example/cb\"", "sso.redirect_url"),
            ("groups_clam = \"g\"", "groups_clam"),
        ];
        for (extra, key) in cases {
            let error = config(extra, &secret).map(drop).map_err(|e| e.to_string());
            assert!(error.as_ref().is_err_and(|e| e.contains(key)), "{extra}: {error:?}");
        }
        let missing = config("", &dir.path().join("nope")).map(drop).map_err(|e| e.to_string());
        assert!(missing.is_err_and(|e| e.contains("sso.client_secret_file")));
        Ok(())
    }
}
