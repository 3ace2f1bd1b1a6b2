//! What parsing cannot check: ranges, templates, URLs, cross-table references, and that every
//! secret the file points at can be read.

use std::time::Duration;

use keyward_proto::secret::Secret;

use super::file::{SinkEntry, TokensConfig, default_write_subjects};
use super::{Config, ConfigError, invalid};
use crate::audit::sinks::SinkConfig;
use crate::exchange::issuers::IssuerConfig;
use crate::identity::MintRules;
use crate::identity::kek::Kek;
use crate::identity::rules::{MAX_CLOCK_SKEW, MAX_TOKEN_LIFETIME, SubjectTemplate};
use crate::store::DatabaseLocation;
use crate::targets::{TargetAccess, TargetConfig, TargetKind, url_host};

impl Config {
    /// Checks everything that parsing cannot: ranges, templates, URLs, and that the KEK resolves.
    pub fn validate(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        validate_issuer(&self.server.external_url)?;
        if !(Duration::from_secs(1)..=Duration::from_secs(300)).contains(&self.server.request_timeout) {
            return Err(invalid("server.request_timeout", "must be between 1s and 5m"));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&self.server.header_read_timeout) {
            return Err(invalid("server.header_read_timeout", "must be between 1s and 1m"));
        }
        self.mint_rules()?;
        if self.keys.rotation_period < Duration::from_secs(60) {
            return Err(invalid("keys.rotation_period", "must be at least 1m"));
        }
        if self.keys.jwks_max_age > Duration::from_secs(24 * 3600) {
            return Err(invalid("keys.jwks_max_age", "must be at most 24h"));
        }
        if self.keys.jwks_max_age >= self.keys.rotation_period {
            return Err(invalid(
                "keys.jwks_max_age",
                "must be shorter than keys.rotation_period, or relying parties could miss a key before it signs",
            ));
        }
        tracing_filter_is_valid(&self.log.level)?;
        self.issuers()?;
        self.sinks(env)?;
        self.repository_credentials(env)?;
        self.validate_policy()?;
        self.validate_agents()?;
        self.database(env)?;
        self.kek(env)?;
        Ok(())
    }

    pub(super) fn validate_policy(&self) -> Result<(), ConfigError> {
        if let Some(policy) = &self.policy
            && !(Duration::from_millis(1)..=Duration::from_secs(10)).contains(&policy.evaluation_timeout)
        {
            return Err(invalid("policy.evaluation_timeout", "must be between 1ms and 10s"));
        }
        Ok(())
    }

    fn validate_agents(&self) -> Result<(), ConfigError> {
        let agents = &self.agents;
        if !(Duration::from_secs(60)..=Duration::from_secs(7 * 24 * 3600)).contains(&agents.certificate_lifetime) {
            return Err(invalid("agents.certificate_lifetime", "must be between 1m and 7d"));
        }
        if !(Duration::from_secs(2)..=Duration::from_secs(3600)).contains(&agents.lease) {
            return Err(invalid("agents.lease", "must be between 2s and 1h"));
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(60)).contains(&agents.poll_interval) {
            return Err(invalid("agents.poll_interval", "must be between 100ms and 1m"));
        }
        if !(Duration::from_secs(60)..=Duration::from_secs(30 * 24 * 3600)).contains(&agents.join_token_max_ttl) {
            return Err(invalid("agents.join_token_max_ttl", "must be between 1m and 30d"));
        }
        if let Some(advertise) = &agents.advertise {
            let host = advertise.strip_prefix("https://").map(|rest| rest.trim_end_matches('/'));
            if host.is_none_or(|h| h.is_empty() || h.contains('/')) {
                return Err(invalid("agents.advertise", "must be https://host:port"));
            }
        }
        if let Some(domain) = &agents.trust_domain
            && (domain.is_empty()
                || !domain
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')))
        {
            return Err(invalid("agents.trust_domain", "must be lower-case letters, digits, `.`, `-` or `_`"));
        }
        Ok(())
    }

    /// The audit log's origin (checkpoint first line and key name): the issuer URL without its
    /// scheme, plus `/audit`.
    pub fn audit_origin(&self) -> String {
        let url = &self.server.external_url;
        let bare = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
        format!("{}/audit", bare.trim_end_matches('/'))
    }

    /// The host of the external URL (without port).
    fn external_host(&self) -> &str {
        url_host(&self.server.external_url)
    }

    /// The agents' SPIFFE trust domain.
    pub fn trust_domain(&self) -> String {
        self.agents.trust_domain.clone().unwrap_or_else(|| self.external_host().to_ascii_lowercase())
    }

    /// Where agents dial the gRPC endpoint, listening on `port`: `agents.advertise`, else the
    /// external URL's host with that port.
    pub fn agents_endpoint(&self, port: u16) -> String {
        if let Some(advertise) = &self.agents.advertise {
            return advertise.trim_end_matches('/').to_owned();
        }
        let host = self.external_host();
        if host.contains(':') { format!("https://[{host}]:{port}") } else { format!("https://{host}:{port}") }
    }

    /// The configured key-encryption key.
    pub fn kek(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<Kek, ConfigError> {
        let keys = &self.keys;
        let sources = [keys.kek.is_some(), keys.kek_env.is_some(), keys.kek_file.is_some()];
        match sources.iter().filter(|set| **set).count() {
            0 => {
                return Err(invalid(
                    "keys.kek_file",
                    "no key-encryption key: set exactly one of keys.kek_file, keys.kek_env or keys.kek \
                     (32 random bytes, base64; generate with `head -c32 /dev/urandom | base64`)",
                ));
            }
            1 => {}
            _ => return Err(invalid("keys.kek", "set only one of keys.kek, keys.kek_env, keys.kek_file")),
        }
        if let Some(inline) = &keys.kek {
            return Kek::from_base64(inline.expose(), "keys.kek")
                .map_err(|source| ConfigError::Kek { key: "keys.kek", source });
        }
        if let Some(var) = &keys.kek_env {
            let value =
                env(var).ok_or_else(|| invalid("keys.kek_env", format!("environment variable `{var}` is not set")))?;
            return Kek::from_base64(&value, &format!("environment variable `{var}`"))
                .map_err(|source| ConfigError::Kek { key: "keys.kek_env", source });
        }
        match &keys.kek_file {
            Some(path) => Kek::from_file(path).map_err(|source| ConfigError::Kek { key: "keys.kek_file", source }),
            None => Err(invalid("keys.kek_file", "no key-encryption key configured")),
        }
    }

    /// The `[[audit.sinks]]`, checked, with webhooks' secrets read.
    pub fn sinks(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<Vec<SinkConfig>, ConfigError> {
        if !(Duration::from_secs(10)..=Duration::from_secs(24 * 3600)).contains(&self.audit.checkpoint_interval) {
            return Err(invalid("audit.checkpoint_interval", "must be between 10s and 24h"));
        }
        let mut names = std::collections::BTreeSet::new();
        let mut sinks = Vec::with_capacity(self.audit.sinks.len());
        for sink in &self.audit.sinks {
            let name = match sink {
                SinkEntry::File { name, .. } | SinkEntry::Webhook { name, .. } => name.as_str(),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_".contains(c)) {
                return Err(invalid("audit.sinks.name", format!("`{name}`: use letters, digits, `-` and `_`")));
            }
            if !names.insert(name) {
                return Err(invalid("audit.sinks.name", format!("two sinks are named `{name}`")));
            }
            sinks.push(match sink {
                SinkEntry::File { max_bytes, .. } if *max_bytes < 4096 => {
                    return Err(invalid("audit.sinks.max_bytes", "must be at least 4096"));
                }
                SinkEntry::File { name, path, max_bytes, keep } => {
                    SinkConfig::File { name: name.clone(), path: path.clone(), max_bytes: *max_bytes, keep: *keep }
                }
                SinkEntry::Webhook { name, url, secret_env, secret_file, batch } => {
                    validate_url("audit.sinks.url", url)?;
                    if !(1..=1000).contains(batch) {
                        return Err(invalid("audit.sinks.batch", "must be between 1 and 1000"));
                    }
                    let secret = sink_secret(secret_env.as_deref(), secret_file.as_deref(), env)?;
                    SinkConfig::Webhook { name: name.clone(), url: url.clone(), secret, batch: *batch }
                }
            });
        }
        Ok(sinks)
    }

    /// The `[[repositories]]` credentials, checked: each prefix a URL git can be given secrets
    /// for, unique, with a user name and exactly one readable password source.
    pub fn repository_credentials(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<crate::runs::RepositoryCredentials, ConfigError> {
        let mut entries = Vec::new();
        for repository in &self.repositories {
            let prefix = &repository.url_prefix;
            validate_url("repositories.url_prefix", prefix.trim_end_matches('/'))?;
            if entries.iter().any(|e: &crate::runs::RepositoryCredential| e.url_prefix() == prefix) {
                return Err(invalid("repositories.url_prefix", format!("`{prefix}` is listed twice")));
            }
            let username = &repository.username;
            if username.is_empty() || username.contains(':') || username.chars().any(char::is_control) {
                return Err(invalid("repositories.username", "a non-empty name without `:` or control characters"));
            }
            let password = match (&repository.password_env, &repository.password_file) {
                (Some(var), None) => crate::runs::PasswordSource::Value(Secret::from(env(var).ok_or_else(|| {
                    invalid("repositories.password_env", format!("environment variable `{var}` is not set"))
                })?)),
                (None, Some(path)) => crate::runs::PasswordSource::File(path.clone()),
                _ => {
                    return Err(invalid(
                        "repositories.password_env",
                        "set exactly one of password_env or password_file",
                    ));
                }
            };
            let credential = crate::runs::RepositoryCredential::new(prefix.clone(), username.clone(), password);
            credential.password().map_err(|e| invalid("repositories.password_file", e.to_string()))?;
            entries.push(credential);
        }
        Ok(crate::runs::RepositoryCredentials::new(entries))
    }

    /// Where the database lives.
    pub fn database(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<DatabaseLocation, ConfigError> {
        let url = match (&self.storage.database_url, &self.storage.database_url_env) {
            (Some(_), Some(_)) => {
                return Err(invalid("storage.database_url", "set database_url or database_url_env, not both"));
            }
            (Some(url), None) => Some(url.expose().to_owned()),
            (None, Some(var)) => Some(env(var).ok_or_else(|| {
                invalid("storage.database_url_env", format!("environment variable `{var}` is not set"))
            })?),
            (None, None) => None,
        };
        match url {
            None => Ok(DatabaseLocation::Sqlite(self.storage.data_dir.join("keyward.db"))),
            Some(url) => DatabaseLocation::from_url(url).ok_or_else(|| {
                invalid(
                    "storage.database_url",
                    "expected a postgres:// or sqlite: URL (or leave unset for SQLite in the data dir)",
                )
            }),
        }
    }

    /// The `[tokens]` rules, checked, with the subject template parsed.
    pub fn mint_rules(&self) -> Result<MintRules, ConfigError> {
        let tokens = &self.tokens;
        tokens.validate()?;
        let subject = SubjectTemplate::parse(&tokens.subject_template)
            .map_err(|e| invalid("tokens.subject_template", e.to_string()))?;
        Ok(MintRules {
            default_ttl: tokens.default_ttl,
            max_ttl: tokens.max_ttl,
            clock_skew: tokens.clock_skew,
            allowed_audiences: tokens.allowed_audiences.clone(),
            subject,
            source_identity: tokens.source_identity,
            aws_session_tags: tokens.aws_session_tags,
        })
    }

    /// The `[[targets]]`, checked.
    pub fn targets(&self) -> Result<Vec<TargetConfig>, ConfigError> {
        let targets: Vec<TargetConfig> = self.targets.iter().cloned().map(TargetConfig::from).collect();
        check_targets(&targets, &self.tokens.allowed_audiences)?;
        Ok(targets)
    }

    /// The `[[issuers]]`, checked against the targets they name.
    pub fn issuers(&self) -> Result<Vec<IssuerConfig>, ConfigError> {
        let targets = self.targets()?;
        let issuers: Vec<IssuerConfig> = self.issuers.iter().cloned().map(IssuerConfig::from).collect();
        check_issuers(&issuers, &self.server.external_url, &targets)?;
        Ok(issuers)
    }
}

/// The HMAC key of a webhook sink, from its `secret_env` or `secret_file` (exactly one).
fn sink_secret(
    secret_env: Option<&str>,
    secret_file: Option<&std::path::Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Secret, ConfigError> {
    let secret = match (secret_env, secret_file) {
        (Some(var), None) => env(var)
            .ok_or_else(|| invalid("audit.sinks.secret_env", format!("environment variable `{var}` is not set")))?,
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| invalid("audit.sinks.secret_file", format!("cannot read {}: {e}", path.display())))?
            .trim()
            .to_owned(),
        _ => return Err(invalid("audit.sinks.secret_env", "set exactly one of secret_env or secret_file")),
    };
    if secret.len() < 16 {
        return Err(invalid("audit.sinks.secret_env", "the webhook secret must be at least 16 characters"));
    }
    Ok(Secret::from(secret))
}

impl TokensConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.max_ttl > MAX_TOKEN_LIFETIME {
            return Err(invalid("tokens.max_ttl", "must be at most 1h"));
        }
        if self.max_ttl < Duration::from_secs(60) {
            return Err(invalid("tokens.max_ttl", "must be at least 1m"));
        }
        if self.default_ttl > self.max_ttl || self.default_ttl < Duration::from_secs(60) {
            return Err(invalid("tokens.default_ttl", "must be between 1m and tokens.max_ttl"));
        }
        if self.clock_skew > MAX_CLOCK_SKEW {
            return Err(invalid("tokens.clock_skew", "must be at most 60s"));
        }
        for audience in &self.allowed_audiences {
            if audience.trim().is_empty() || audience.len() > 256 || audience.chars().any(char::is_control) {
                return Err(invalid("tokens.allowed_audiences", format!("invalid audience `{audience}`")));
            }
        }
        Ok(())
    }
}

fn validate_issuer(url: &str) -> Result<(), ConfigError> {
    validate_url("server.external_url", url)
}

fn validate_url(key: &'static str, url: &str) -> Result<(), ConfigError> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| invalid(key, format!("`{url}` must start with https:// (http:// only for loopback)")))?;
    if url.starts_with("http://") {
        let host = if rest.starts_with("[::1]") { "[::1]" } else { rest.split(['/', ':']).next().unwrap_or_default() };
        if !matches!(host, "127.0.0.1" | "localhost" | "[::1]") {
            return Err(invalid(key, format!("`{url}`: plain http is only allowed for a loopback issuer")));
        }
    }
    if rest.is_empty() || url.ends_with('/') || url.contains(['?', '#']) {
        return Err(invalid(
            key,
            format!("`{url}` must be an absolute URL without a trailing slash, query or fragment"),
        ));
    }
    Ok(())
}

fn tracing_filter_is_valid(level: &str) -> Result<(), ConfigError> {
    tracing_subscriber::EnvFilter::try_new(level)
        .map(drop)
        .map_err(|e| invalid("log.level", format!("invalid filter `{level}`: {e}")))
}

/// Checks the targets: names, lifetimes, who may write, and each relying party's settings.
fn check_targets(targets: &[TargetConfig], allowed_audiences: &[String]) -> Result<(), ConfigError> {
    let mut seen = std::collections::BTreeSet::new();
    for target in targets {
        let valid_name = !target.name.is_empty()
            && target.name.len() <= 64
            && target.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !valid_name {
            return Err(invalid(
                "targets.name",
                format!("invalid target name `{}`: use 1-64 of a-z, 0-9, `-`, `_`, `.`", target.name),
            ));
        }
        if !seen.insert(target.id()) {
            return Err(invalid("targets.name", format!("target `{}` is defined twice", target.id())));
        }
        if target.duration < Duration::from_secs(60) || target.duration > MAX_TOKEN_LIFETIME * 12 {
            return Err(invalid(
                "targets.duration",
                format!("target `{}`: duration must be between 1m and 12h", target.id()),
            ));
        }
        if target.access == TargetAccess::Read && target.write_subjects != default_write_subjects() {
            return Err(invalid(
                "targets.write_subjects",
                format!("target `{}` grants read access; write_subjects only applies to write targets", target.id()),
            ));
        }
        if target.write_subjects.is_empty() {
            return Err(invalid(
                "targets.write_subjects",
                format!("target `{}`: write_subjects is empty; leave it out for the default [\"job\"]", target.id()),
            ));
        }
        match &target.kind {
            TargetKind::Vault(vault) => {
                validate_url("targets.address", &vault.address)?;
                if !allowed_audiences.contains(&vault.audience) {
                    return Err(invalid(
                        "targets.audience",
                        format!(
                            "target `{}`: audience `{}` is not in tokens.allowed_audiences",
                            target.id(),
                            vault.audience
                        ),
                    ));
                }
                if !vault.return_token && vault.kv_reads.is_empty() && vault.pki_issues.is_empty() {
                    return Err(invalid(
                        "targets.kv_reads",
                        format!(
                            "target `{}` returns nothing: set return_token, or list kv_reads or pki_issues",
                            target.id()
                        ),
                    ));
                }
            }
            TargetKind::Aws(aws) => {
                if let Some(unknown) = aws
                    .session_tags
                    .iter()
                    .flatten()
                    .find(|k| !crate::identity::mint::AWS_TAG_KEYS.contains(&k.as_str()))
                {
                    return Err(invalid(
                        "targets.session_tags",
                        format!(
                            "target `{}`: unknown tag `{unknown}`; use {}",
                            target.id(),
                            crate::identity::mint::AWS_TAG_KEYS.join(", ")
                        ),
                    ));
                }
                if !aws.role_arn.starts_with("arn:aws")
                    || aws.role_arn.split(':').count() != 6
                    || !aws.role_arn.contains(":role/")
                {
                    return Err(invalid(
                        "targets.role_arn",
                        format!("target `{}`: `{}` is not an IAM role ARN", target.id(), aws.role_arn),
                    ));
                }
                if !allowed_audiences.contains(&aws.audience) {
                    return Err(invalid(
                        "targets.audience",
                        format!(
                            "target `{}`: audience `{}` is not in tokens.allowed_audiences",
                            target.id(),
                            aws.audience
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Checks the trusted issuers: unique, reachable, bound to claims and to configured targets.
fn check_issuers(issuers: &[IssuerConfig], external_url: &str, targets: &[TargetConfig]) -> Result<(), ConfigError> {
    let mut seen = std::collections::BTreeSet::new();
    for issuer in issuers {
        if !seen.insert(issuer.name.as_str()) {
            return Err(invalid("issuers.name", format!("issuer `{}` is defined twice", issuer.name)));
        }
        validate_url("issuers.issuer", &issuer.issuer)?;
        if issuer.issuer == external_url {
            return Err(invalid(
                "issuers.issuer",
                "the broker's own tokens are trusted already; do not list its issuer",
            ));
        }
        if issuer.audience.trim().is_empty() {
            return Err(invalid("issuers.audience", format!("issuer `{}`: audience must not be empty", issuer.name)));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&issuer.jwks_refresh_interval) {
            return Err(invalid(
                "issuers.jwks_refresh_interval",
                format!("issuer `{}`: must be between 1s and 1h", issuer.name),
            ));
        }
        if issuer.algorithms.is_empty() {
            return Err(invalid(
                "issuers.algorithms",
                format!("issuer `{}`: allow at least one algorithm", issuer.name),
            ));
        }
        check_issuer_binding(issuer, targets)?;
    }
    Ok(())
}

/// An issuer must say whose tokens it accepts (`required_claims`) and what they may reach
/// (`targets`): CI systems mint tokens for every repository they host, with any audience the
/// workflow asks for, so neither is implied by trusting the issuer.
fn check_issuer_binding(issuer: &IssuerConfig, targets: &[TargetConfig]) -> Result<(), ConfigError> {
    let name = &issuer.name;
    if issuer.required_claims.is_empty() {
        return Err(invalid(
            "issuers.required_claims",
            format!(
                "issuer `{name}` has no required_claims, so every repository its CI system serves could exchange \
                     tokens; bind it, e.g. required_claims = {{ repository_owner = \"acme\" }}"
            ),
        ));
    }
    if let Some(claim) = issuer.required_claims.keys().find(|claim| UNBINDING_CLAIMS.contains(&claim.as_str())) {
        return Err(invalid(
            "issuers.required_claims",
            format!(
                "issuer `{name}`: `{claim}` is checked on every token already and binds no repository; require \
                     a claim naming who the token is for (repository_owner, repository, namespace_path, sub)"
            ),
        ));
    }
    if issuer.targets.is_empty() {
        return Err(invalid(
            "issuers.targets",
            format!(
                "issuer `{name}` lists no targets; name the ones its tokens may ask for, e.g. targets = [\"aws:ci-read\"]"
            ),
        ));
    }
    for wanted in &issuer.targets {
        let Some(target) = targets.iter().find(|target| &target.id() == wanted) else {
            return Err(invalid(
                "issuers.targets",
                format!(
                    "issuer `{name}`: `{wanted}` is not a configured target (write `<type>:<name>`, e.g. aws:deploy)"
                ),
            ));
        };
        if issuer.phase != keyward_proto::claims::Phase::Apply && target.access == TargetAccess::Write {
            return Err(invalid(
                "issuers.targets",
                format!(
                    "issuer `{name}` stands for the plan phase, which never gets write target `{wanted}`; \
                         use a separate issuer entry with phase = \"apply\" for it"
                ),
            ));
        }
    }
    Ok(())
}

/// Claims the verifier checks on every token, which therefore bind no caller.
const UNBINDING_CLAIMS: &[&str] = &["iss", "aud", "exp", "nbf", "iat", "jti"];

#[cfg(test)]
mod tests {
    use super::*;

    const KEK: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    fn parse(extra_keys: &str, extra: &str) -> Result<Config, ConfigError> {
        Config::parse(
            &format!(
                "[server]\nlisten = \"127.0.0.1:1\"\nexternal_url = \"https://kw.example\"\n\
                 [storage]\ndata_dir = \"/tmp/kw\"\n{extra}\n[keys]\n{extra_keys}\n"
            ),
            "test.toml",
        )
    }

    #[test]
    fn secrets_in_the_config_never_print() -> Result<(), ConfigError> {
        let config = parse(&format!("kek = \"{KEK}\""), "database_url = \"postgres://kw:hunter2@db/kw\"")?;
        let printed = format!("{config:?}");
        assert!(!printed.contains(KEK) && !printed.contains("hunter2"), "{printed}");
        config.validate(&|_| None)?;
        assert!(matches!(config.database(&|_| None)?, DatabaseLocation::Postgres(url) if url.contains("hunter2")));
        Ok(())
    }

    #[test]
    fn the_environment_is_read_through_the_given_function() -> Result<(), ConfigError> {
        let config = parse("kek_env = \"MY_KEK\"", "database_url_env = \"MY_DB\"")?;
        let env = |name: &str| match name {
            "MY_KEK" => Some(KEK.to_owned()),
            "MY_DB" => Some("postgres://db/kw".to_owned()),
            _ => None,
        };
        config.validate(&env)?;
        assert_eq!(config.database(&env)?, DatabaseLocation::Postgres("postgres://db/kw".to_owned()));
        let missing = config.validate(&|_| None);
        assert!(matches!(missing, Err(ConfigError::Invalid { key: "storage.database_url_env", .. })), "{missing:?}");
        Ok(())
    }

    #[test]
    fn audit_sinks_are_checked() -> Result<(), ConfigError> {
        let hook = |extra: &str| {
            parse(
                &format!(
                    "kek = \"{KEK}\"\n[[audit.sinks]]\ntype = \"webhook\"\nname = \"siem\"\nurl = \"https://siem.example/hook\"\n{extra}"
                ),
                "",
            )
        };
        let env = |name: &str| (name == "HOOK").then(|| "0123456789abcdef0123".to_owned());
        hook("secret_env = \"HOOK\"")?.validate(&env)?;
        let error = |config: Config| config.validate(&env).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error(hook("")?).contains("exactly one of secret_env or secret_file"));
        assert!(error(hook("secret_env = \"NOPE\"")?).contains("`NOPE` is not set"));
        assert!(error(hook("secret_env = \"HOOK\"\nbatch = 0")?).contains("audit.sinks.batch"));
        let unknown = hook("secret_env = \"HOOK\"\nretries = 3").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(unknown.contains("retries"), "{unknown}");
        let twice = parse(
            &format!(
                "kek = \"{KEK}\"\n[[audit.sinks]]\ntype = \"file\"\nname = \"a\"\npath = \"/tmp/a\"\n\
                      [[audit.sinks]]\ntype = \"file\"\nname = \"a\"\npath = \"/tmp/b\""
            ),
            "",
        )?;
        assert!(error(twice).contains("two sinks are named `a`"));
        Ok(())
    }

    /// Security review M1: an issuer says whose tokens it accepts and which targets they reach.
    #[test]
    fn issuers_must_be_bound_to_claims_and_targets() -> Result<(), ConfigError> {
        let with_issuer = |binding: &str| {
            parse(
                &format!(
                    "kek = \"{KEK}\"\n[tokens]\nallowed_audiences = [\"sts.amazonaws.com\"]\n\
                     [[targets]]\nname = \"deploy\"\ntype = \"aws\"\naccess = \"write\"\n\
                     role_arn = \"arn:aws:iam::123456789012:role/deploy\"\n\
                     [[targets]]\nname = \"read\"\ntype = \"aws\"\naccess = \"read\"\n\
                     role_arn = \"arn:aws:iam::123456789012:role/read\"\n\
                     [[issuers]]\nname = \"gh\"\nissuer = \"https://token.actions.githubusercontent.com\"\n\
                     audience = \"https://kw.example\"\n{binding}"
                ),
                "",
            )
        };
        let error = |binding: &str| -> Result<String, ConfigError> {
            Ok(with_issuer(binding)?.validate(&|_| None).err().map(|e| e.to_string()).unwrap_or_default())
        };
        let owner = "required_claims = { repository_owner = \"acme\" }\n";
        with_issuer(&format!("{owner}targets = [\"aws:read\"]"))?.validate(&|_| None)?;
        with_issuer(&format!("{owner}targets = [\"aws:deploy\", \"aws:read\"]\nphase = \"apply\""))?
            .validate(&|_| None)?;

        let unbound = error("targets = [\"aws:read\"]")?;
        assert!(unbound.starts_with("`issuers.required_claims`: issuer `gh` has no required_claims"), "{unbound}");
        let audience_only = error("required_claims = { aud = \"https://kw.example\" }\ntargets = [\"aws:read\"]")?;
        assert!(audience_only.contains("`aud` is checked on every token already"), "{audience_only}");
        let no_targets = error(owner)?;
        assert!(no_targets.starts_with("`issuers.targets`: issuer `gh` lists no targets"), "{no_targets}");
        let unknown = error(&format!("{owner}targets = [\"aws:nope\"]"))?;
        assert!(unknown.contains("`aws:nope` is not a configured target"), "{unknown}");
        let plan_writes = error(&format!("{owner}targets = [\"aws:deploy\"]"))?;
        assert!(plan_writes.contains("plan phase, which never gets write target `aws:deploy`"), "{plan_writes}");
        Ok(())
    }

    #[test]
    fn repository_credentials_are_checked() -> Result<(), ConfigError> {
        let repositories = |entries: &[&str]| {
            let tables: Vec<String> = entries.iter().map(|e| format!("[[repositories]]\n{e}\n")).collect();
            parse(&format!("kek = \"{KEK}\"\n{}", tables.join("")), "")
        };
        let env = |name: &str| (name == "GIT_TOKEN").then(|| "ghp_token".to_owned());
        let good = "url_prefix = \"https://git.example.com/acme/\"\nusername = \"x-access-token\"\npassword_env = \"GIT_TOKEN\"";
        repositories(&[good])?.validate(&env)?;
        let error = |entries: &[&str]| -> Result<String, ConfigError> {
            Ok(repositories(entries)?.validate(&env).err().map(|e| e.to_string()).unwrap_or_default())
        };
        let with = |from: &str, to: &str| good.replace(from, to);
        let cases = [
            (with("https://git.example.com", "http://git.example.com"), "plain http is only allowed"),
            (with("https://git.example.com/acme/", "git@github.com:acme/"), "must start with https://"),
            (with("x-access-token", "user:name"), "repositories.username"),
            (with("GIT_TOKEN", "NOPE"), "`NOPE` is not set"),
            (format!("{good}\npassword_file = \"/nonexistent\""), "exactly one of password_env or password_file"),
            (with("password_env = \"GIT_TOKEN\"", "password_file = \"/nonexistent/token\""), "cannot read"),
        ];
        for (entry, says) in cases {
            assert!(error(&[&entry])?.contains(says), "{entry}: {:?}", error(&[&entry])?);
        }
        assert!(error(&[good, good])?.contains("listed twice"));
        let loopback = with("https://git.example.com", "http://127.0.0.1:3000");
        repositories(&[&loopback])?.validate(&env)?;
        Ok(())
    }

    #[test]
    fn issuer_urls_are_checked() {
        for (url, ok) in [
            ("https://kw.example", true),
            ("https://kw.example/tenant-a", true),
            ("http://127.0.0.1:8422", true),
            ("http://[::1]:8422", true),
            ("http://kw.example", false),
            ("https://kw.example/", false),
            ("https://kw.example?x=1", false),
            ("ftp://kw.example", false),
        ] {
            assert_eq!(validate_issuer(url).is_ok(), ok, "{url}");
        }
    }
}

#[cfg(test)]
mod target_tests {
    use super::*;
    use crate::targets::{ExchangeMode, KvRead, WriteSubject};

    fn parse_target(target: &str) -> Result<Vec<TargetConfig>, ConfigError> {
        let config = Config::parse(
            &format!(
                "[server]\nlisten = \"127.0.0.1:1\"\nexternal_url = \"https://kw.example\"\n\
                 [storage]\ndata_dir = \"/tmp/kw\"\n[keys]\nkek_env = \"K\"\n\
                 [tokens]\nallowed_audiences = [\"sts.amazonaws.com\", \"vault\"]\n[[targets]]\n{target}\n"
            ),
            "t.toml",
        )?;
        config.validate(&|_| Some("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".to_owned()))?;
        config.targets()
    }

    const GOOD: &str =
        "name = \"net\"\ntype = \"aws\"\naccess = \"write\"\nrole_arn = \"arn:aws:iam::123456789012:role/net\"";
    const VAULT: &str =
        "name = \"secrets\"\ntype = \"vault\"\naccess = \"read\"\naddress = \"https://vault.example\"\nrole = \"r\"";

    #[test]
    fn a_valid_vault_target_parses_with_defaults() -> Result<(), ConfigError> {
        let targets = parse_target(&format!("{VAULT}\nkv_reads = [{{ mount = \"secret\", path = \"db\" }}]"))?;
        let target = &targets[0];
        assert_eq!(target.id(), "vault:secrets");
        let TargetKind::Vault(vault) = &target.kind else { panic!("a vault target") };
        assert_eq!((vault.auth_mount.as_str(), vault.audience.as_str(), vault.return_token), ("jwt", "vault", true));
        assert_eq!(vault.kv_reads, vec![KvRead { mount: "secret".into(), path: "db".into() }]);
        Ok(())
    }

    #[test]
    fn a_valid_aws_target_parses_with_defaults() -> Result<(), ConfigError> {
        let targets = parse_target(&format!("{GOOD}\nlabels = {{ env = \"prod\" }}"))?;
        let target = &targets[0];
        assert_eq!(target.id(), "aws:net");
        assert_eq!(target.access, TargetAccess::Write);
        assert_eq!(target.duration, Duration::from_secs(3600));
        assert_eq!(target.labels.get("env").map(String::as_str), Some("prod"));
        assert_eq!(target.write_subjects, [WriteSubject::Job], "only jobs get write credentials unless opted in");
        let TargetKind::Aws(aws) = &target.kind else { panic!("an aws target") };
        assert_eq!(
            (aws.region.as_str(), aws.audience.as_str(), aws.mode),
            ("us-east-1", "sts.amazonaws.com", ExchangeMode::Broker)
        );
        Ok(())
    }

    #[test]
    fn a_write_target_can_opt_in_ci_subjects() -> Result<(), ConfigError> {
        let targets = parse_target(&format!("{GOOD}\nwrite_subjects = [\"job\", \"ci\"]"))?;
        assert_eq!(targets[0].write_subjects, [WriteSubject::Job, WriteSubject::Ci]);
        Ok(())
    }

    #[test]
    fn bad_targets_are_refused_with_a_key_path() {
        for (text, key) in [
            (format!("{GOOD}\nrole_arm = \"x\""), "role_arm"),
            (format!("{GOOD}\nacess = \"read\""), "acess"),
            (GOOD.replace("aws", "gcp"), "gcp"),
            (GOOD.replace("write", "admin"), "admin"),
            (GOOD.replace("role/net", "user/net"), "not an IAM role ARN"),
            (format!("{GOOD}\naudience = \"elsewhere\""), "tokens.allowed_audiences"),
            (format!("{GOOD}\n[[targets]]\n{GOOD}"), "defined twice"),
            (GOOD.replace("\"net\"", "\"net work\""), "invalid target name"),
            (VAULT.replace("vault\"\naccess", "vault\"\nreturn_token = false\naccess"), "returns nothing"),
            (format!("{VAULT}\naudience = \"elsewhere\""), "tokens.allowed_audiences"),
            (VAULT.replace("https://vault.example", "http://vault.example"), "loopback"),
            (format!("{VAULT}\nrole_arn = \"x\""), "role_arn"),
            (format!("{GOOD}\nsession_tags = [\"run\", \"owner\"]"), "unknown tag `owner`"),
            (format!("{GOOD}\nwrite_subjects = [\"human\"]"), "human"),
            (format!("{GOOD}\nwrite_subjects = []"), "write_subjects is empty"),
            (format!("{VAULT}\nwrite_subjects = [\"ci\"]"), "only applies to write targets"),
        ] {
            let error = parse_target(&text).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(error.contains(key), "{text:?} gave {error:?}");
        }
    }
}
