//! `[vcs.github]`: the GitHub App pull requests and pushes come from (docs/vcs.md), checked into
//! [`GithubSettings`] with its private key and webhook secret read once, at start.

use std::path::{Path, PathBuf};

use keyward_proto::secret::Secret;
use serde::Deserialize;

use super::url::check_url;
use super::{ConfigError, invalid};
use crate::vcs::github::{GithubSettings, MIN_SECRET_BYTES};
use crate::vcs::ticket::TicketPattern;

/// The `[vcs]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VcsConfig {
    /// GitHub, as a GitHub App.
    #[serde(default)]
    pub github: Option<GithubConfig>,
    /// The regular expression that finds a change ticket in a pull request's title or branch
    /// (default `[A-Z][A-Z0-9]+-[0-9]+`).
    #[serde(default)]
    pub ticket_pattern: Option<String>,
}

/// The `[vcs.github]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GithubConfig {
    /// The GitHub App's ID.
    pub app_id: u64,
    /// A file holding the App's private key (PEM, as GitHub hands it out).
    pub private_key_file: PathBuf,
    /// A file holding the webhook secret set on the App.
    pub webhook_secret_file: PathBuf,
    /// The REST API's base URL (GitHub Enterprise Server: `https://HOST/api/v3`).
    #[serde(default = "default_api_url")]
    pub api_url: String,
}

fn default_api_url() -> String {
    "https://api.github.com".to_owned()
}

/// Checks `[vcs.github]` and reads its secrets.
pub(super) fn check(vcs: Option<VcsConfig>) -> Result<Option<GithubSettings>, ConfigError> {
    let Some(vcs) = vcs else { return Ok(None) };
    let ticket_pattern = match &vcs.ticket_pattern {
        Some(pattern) => TicketPattern::parse(pattern).map_err(|e| invalid("vcs.ticket_pattern", e))?,
        None => TicketPattern::default(),
    };
    let Some(github) = vcs.github else { return Ok(None) };
    if github.app_id == 0 {
        return Err(invalid("vcs.github.app_id", "must be the GitHub App's ID (a positive number)"));
    }
    check_url("vcs.github.api_url", &github.api_url)?;
    let private_key = read("vcs.github.private_key_file", &github.private_key_file)?;
    if !private_key.expose().starts_with("-----BEGIN ") || !private_key.expose().contains("PRIVATE KEY-----") {
        return Err(invalid(
            "vcs.github.private_key_file",
            format!("{} is not a PEM private key (the .pem file GitHub generates)", github.private_key_file.display()),
        ));
    }
    let webhook_secret = read("vcs.github.webhook_secret_file", &github.webhook_secret_file)?;
    if webhook_secret.expose().len() < MIN_SECRET_BYTES {
        return Err(invalid(
            "vcs.github.webhook_secret_file",
            format!(
                "{} holds a secret shorter than {MIN_SECRET_BYTES} characters; use a long random one",
                github.webhook_secret_file.display()
            ),
        ));
    }
    Ok(Some(GithubSettings {
        app_id: github.app_id,
        private_key,
        webhook_secret,
        api_url: github.api_url.trim_end_matches('/').to_owned(),
        ticket_pattern,
    }))
}

/// The file's text, trimmed; an error names the key when it cannot be read or is empty.
fn read(key: &'static str, path: &Path) -> Result<Secret, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))?;
    let secret = Secret::from(Secret::from(text).expose().trim().to_owned());
    if secret.expose().is_empty() {
        return Err(invalid(key, format!("{} is empty", path.display())));
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----\n";

    fn config(dir: &Path, secret: &str) -> Result<VcsConfig, Box<dyn std::error::Error>> {
        std::fs::write(dir.join("key.pem"), KEY)?;
        std::fs::write(dir.join("secret"), secret)?;
        let text = format!(
            "[github]\napp_id = 12\nprivate_key_file = {:?}\nwebhook_secret_file = {:?}\n",
            dir.join("key.pem"),
            dir.join("secret")
        );
        Ok(toml::from_str(&text)?)
    }

    fn message(result: Result<Option<GithubSettings>, ConfigError>) -> String {
        result.map(drop).map_err(|e| e.to_string()).err().unwrap_or_default()
    }

    #[test]
    fn a_complete_table_reads_both_secrets_and_defaults_the_api_url() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let settings = check(Some(config(dir.path(), "a-long-random-webhook-secret\n")?))?.ok_or("no settings")?;
        assert_eq!((settings.app_id, settings.api_url.as_str()), (12, "https://api.github.com"));
        assert_eq!(settings.webhook_secret.expose(), "a-long-random-webhook-secret");
        assert!(settings.private_key.expose().starts_with("-----BEGIN RSA PRIVATE KEY-----"));
        assert!(check(None)?.is_none());
        Ok(())
    }

    #[test]
    fn a_short_missing_or_unreadable_secret_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let short = message(check(Some(config(dir.path(), "short")?)));
        assert!(short.starts_with("`vcs.github.webhook_secret_file`") && short.contains("shorter than 16"), "{short}");
        let mut missing = config(dir.path(), "a-long-random-webhook-secret")?;
        if let Some(github) = missing.github.as_mut() {
            github.webhook_secret_file = dir.path().join("absent");
        }
        let error = message(check(Some(missing)));
        assert!(error.starts_with("`vcs.github.webhook_secret_file`: cannot read"), "{error}");
        let mut not_pem = config(dir.path(), "a-long-random-webhook-secret")?;
        if let Some(github) = not_pem.github.as_mut() {
            github.private_key_file = dir.path().join("secret");
        }
        assert!(message(check(Some(not_pem))).contains("is not a PEM private key"));
        let unknown: Result<VcsConfig, _> = toml::from_str("[github]\napp_id = 1\nwebhook_secret = \"x\"\n");
        let mut empty_ticket = config(dir.path(), "a-long-random-webhook-secret")?;
        empty_ticket.ticket_pattern = Some(".*".to_owned());
        assert!(message(check(Some(empty_ticket))).starts_with("`vcs.ticket_pattern`: matches the empty string"));
        assert!(unknown.is_err(), "an inline secret key is not accepted");
        Ok(())
    }

    #[test]
    fn the_api_url_follows_the_url_rule() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let mut vcs = config(dir.path(), "a-long-random-webhook-secret")?;
        if let Some(github) = vcs.github.as_mut() {
            github.api_url = "http://github.example.com/api/v3".to_owned();
        }
        assert!(message(check(Some(vcs))).starts_with("`vcs.github.api_url`"));
        Ok(())
    }
}
