//! The configuration resolved: every value checked and every secret read, once.
//!
//! [`Config::resolve`] turns the file's tables into [`Settings`], the typed values the broker
//! runs with: the key-encryption key, where the database is, the mint rules with their parsed
//! subject template, targets, trusted issuers, sinks with their HMAC keys, repository
//! credentials. `keyward check-config` resolves and drops the result; `serve` and `dev` start
//! from it and never look at the file or the environment again. Checks run in the order of the
//! file's tables, so the first problem reported is the first an operator would meet.
//!
//! The key-encryption key is read last, in a step of its own ([`Checked::read_kek`]): `keyward
//! dev` keeps its key in the data dir, which it creates only once everything else is known good.

use std::net::SocketAddr;
use std::time::Duration;

use super::file::{
    AgentsConfig, AuditConfig, KeysConfig, LogConfig, PolicyConfig, RepositoryConfig, SchedulerConfig, ServerConfig,
    SinkEntry, StorageConfig, TokensConfig,
};
use super::secret_source::{DATABASE_URL, KEK, REPOSITORY_PASSWORD, SINK_SECRET, SecretSource};
use super::url::check_url;
use super::{Config, ConfigError, invalid, trust};
use crate::audit::sinks::SinkConfig;
use crate::exchange::trusted_issuers::IssuerConfig;
use crate::kek::Kek;
use crate::keys::KeySettings;
use crate::notify::NotificationConfig;
use crate::runs::{PasswordSource, RepositoryCredential, RepositoryCredentials, SchedulerSettings};
use crate::store::DatabaseLocation;
use crate::targets::{TargetConfig, url_host};
use crate::tokens::MintRules;
use crate::tokens::rules::{MAX_CLOCK_SKEW, MAX_TOKEN_LIFETIME, SubjectTemplate};

/// What the broker runs with: the configuration file checked, with every secret it names read.
/// `K` is the key-encryption key, read here; in [`Checked`] only its source is chosen.
#[derive(Debug)]
pub struct Settings<K = Kek> {
    /// `[server]`: the HTTP listener and the issuer URL.
    pub server: ServerConfig,
    /// `[log]`.
    pub log: LogConfig,
    /// Where the database is (`[storage]`).
    pub database: DatabaseLocation,
    /// The key-encryption key (`[keys]`).
    pub kek: K,
    /// How signing keys are made, rotated and published (`[keys]`, with `tokens.clock_skew`).
    pub keys: KeySettings,
    /// How tokens are minted (`[tokens]`).
    pub tokens: MintRules,
    /// Rego policies; without them every policy decision is a deny.
    pub policy: Option<PolicyConfig>,
    /// Credential targets callers may ask for by name.
    pub targets: Vec<TargetConfig>,
    /// CI systems whose tokens may be exchanged.
    pub issuers: Vec<IssuerConfig>,
    /// The audit log's checkpoints and sinks.
    pub audit: AuditSettings,
    /// Private worker agents.
    pub agents: AgentsSettings,
    /// Credentials for private repositories, by URL prefix.
    pub repositories: RepositoryCredentials,
    /// Who is told about drift, runs and denials.
    pub notifications: Vec<NotificationConfig>,
    /// The drift scheduler (`[scheduler]`); `None`: this replica does not take part.
    pub scheduler: Option<SchedulerSettings>,
    /// Sign-in for people (`[sso]`); `None`: nobody signs in, API tokens only.
    pub sso: Option<crate::sso::SsoSettings>,
    /// GitHub (`[vcs.github]`); `None`: the webhook endpoint answers 404.
    pub github: Option<crate::vcs::github::GithubSettings>,
}

/// A configuration checked, with every secret read but the key-encryption key, whose source is
/// only chosen.
pub type Checked = Settings<SecretSource>;

/// `[audit]`, resolved.
#[derive(Debug)]
pub struct AuditSettings {
    /// The log's origin (checkpoint first line and key name): the issuer URL without its scheme,
    /// plus `/audit`.
    pub origin: String,
    /// How often a signed checkpoint is made when the log grew.
    pub checkpoint_interval: Duration,
    /// Where entries are also delivered, webhooks with their HMAC keys.
    pub sinks: Vec<SinkConfig>,
}

/// `[agents]`, resolved.
#[derive(Debug, Clone)]
pub struct AgentsSettings {
    /// Where the agents' gRPC endpoint listens; without it no agent can enroll or take jobs.
    pub listen: Option<SocketAddr>,
    /// The SPIFFE trust domain of agent identities.
    pub trust_domain: String,
    /// Names the gRPC server certificate carries besides the advertised host.
    pub server_names: Vec<String>,
    /// Lifetime of an agent certificate.
    pub certificate_lifetime: Duration,
    /// How long a job lease lasts without a heartbeat.
    pub lease: Duration,
    /// How often each broker looks for jobs queued by another replica.
    pub poll_interval: Duration,
    /// The longest a join token may live.
    pub join_token_max_ttl: Duration,
    /// `agents.advertise`, without a trailing slash.
    advertise: Option<String>,
    /// The external URL's host.
    external_host: String,
}

impl AgentsSettings {
    /// Where agents dial the gRPC endpoint listening on `port`: `agents.advertise`, else the
    /// external URL's host with that port.
    pub fn endpoint(&self, port: u16) -> String {
        if let Some(advertise) = &self.advertise {
            return advertise.clone();
        }
        let host = &self.external_host;
        if host.contains(':') { format!("https://[{host}]:{port}") } else { format!("https://{host}:{port}") }
    }
}

impl Config {
    /// Checks every table and reads every secret the file names; `env` looks up environment
    /// variables.
    pub fn resolve(self, env: &dyn Fn(&str) -> Option<String>) -> Result<Settings, ConfigError> {
        self.check(env)?.read_kek(env)
    }

    /// Where the database is, as `serve` would find it, reading no other secret: for commands
    /// that work on the database alone (`keyward backup`) on a host whose shell lacks the rest.
    pub fn database_location(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<DatabaseLocation, ConfigError> {
        database(&self.storage, env)
    }

    /// Checks every table and reads every secret but the key-encryption key.
    pub fn check(self, env: &dyn Fn(&str) -> Option<String>) -> Result<Checked, ConfigError> {
        let Self {
            server,
            log,
            storage,
            keys,
            tokens,
            policy,
            targets,
            issuers,
            audit,
            agents,
            repositories,
            notifications,
            scheduler,
            sso,
            vcs,
        } = self;
        check_server(&server)?;
        let tokens = mint_rules(&tokens)?;
        check_key_schedule(&keys)?;
        check_log_level(&log.level)?;
        let targets = trust::targets(targets, &tokens.allowed_audiences)?;
        let issuers = trust::issuers(issuers, &server.external_url, &targets)?;
        let audit = audit_settings(audit, &server.external_url, env)?;
        let repositories = repository_credentials(&repositories, env)?;
        let notifications = super::notifications::check(notifications, env)?;
        check_policy(policy.as_ref())?;
        let agents = agents_settings(agents, &server.external_url)?;
        let scheduler = scheduler_settings(&scheduler)?;
        let sso = sso.map(|sso| super::sso::check(sso, &server.external_url, server.listen)).transpose()?;
        let github = super::vcs::check(vcs)?;
        let database = database(&storage, env)?;
        let kek = KEK.required_source(keys.kek.as_ref(), keys.kek_env.as_deref(), keys.kek_file.as_deref())?;
        let keys = KeySettings {
            algorithm: keys.algorithm,
            rotation_period: keys.rotation_period,
            jwks_max_age: keys.jwks_max_age,
            clock_skew: tokens.clock_skew,
        };
        Ok(Settings {
            server,
            log,
            database,
            kek,
            keys,
            tokens,
            policy,
            targets,
            issuers,
            audit,
            agents,
            repositories,
            notifications,
            scheduler,
            sso,
            github,
        })
    }
}

fn check_server(server: &ServerConfig) -> Result<(), ConfigError> {
    check_url("server.external_url", &server.external_url)?;
    if !(Duration::from_secs(1)..=Duration::from_secs(300)).contains(&server.request_timeout) {
        return Err(invalid("server.request_timeout", "must be between 1s and 5m"));
    }
    if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&server.header_read_timeout) {
        return Err(invalid("server.header_read_timeout", "must be between 1s and 1m"));
    }
    Ok(())
}

/// The `[tokens]` rules, checked, with the subject template parsed.
fn mint_rules(tokens: &TokensConfig) -> Result<MintRules, ConfigError> {
    if tokens.max_ttl > MAX_TOKEN_LIFETIME {
        return Err(invalid("tokens.max_ttl", "must be at most 1h"));
    }
    if tokens.max_ttl < Duration::from_secs(60) {
        return Err(invalid("tokens.max_ttl", "must be at least 1m"));
    }
    if tokens.default_ttl > tokens.max_ttl || tokens.default_ttl < Duration::from_secs(60) {
        return Err(invalid("tokens.default_ttl", "must be between 1m and tokens.max_ttl"));
    }
    if tokens.clock_skew > MAX_CLOCK_SKEW {
        return Err(invalid("tokens.clock_skew", "must be at most 60s"));
    }
    for audience in &tokens.allowed_audiences {
        if audience.trim().is_empty() || audience.len() > 256 || audience.chars().any(char::is_control) {
            return Err(invalid("tokens.allowed_audiences", format!("invalid audience `{audience}`")));
        }
    }
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

fn check_key_schedule(keys: &KeysConfig) -> Result<(), ConfigError> {
    if keys.rotation_period < Duration::from_secs(60) {
        return Err(invalid("keys.rotation_period", "must be at least 1m"));
    }
    if keys.jwks_max_age > Duration::from_secs(24 * 3600) {
        return Err(invalid("keys.jwks_max_age", "must be at most 24h"));
    }
    if keys.jwks_max_age >= keys.rotation_period {
        return Err(invalid(
            "keys.jwks_max_age",
            "must be shorter than keys.rotation_period, or relying parties could miss a key before it signs",
        ));
    }
    Ok(())
}

fn check_log_level(level: &str) -> Result<(), ConfigError> {
    tracing_subscriber::EnvFilter::try_new(level)
        .map(drop)
        .map_err(|e| invalid("log.level", format!("invalid filter `{level}`: {e}")))
}

/// `[audit]`: the checkpoint interval and the sinks, webhooks with their secrets read.
fn audit_settings(
    audit: AuditConfig,
    external_url: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<AuditSettings, ConfigError> {
    if !(Duration::from_secs(10)..=Duration::from_secs(24 * 3600)).contains(&audit.checkpoint_interval) {
        return Err(invalid("audit.checkpoint_interval", "must be between 10s and 24h"));
    }
    let mut names = std::collections::BTreeSet::new();
    let mut sinks = Vec::with_capacity(audit.sinks.len());
    for entry in audit.sinks {
        let (SinkEntry::File { name, .. } | SinkEntry::Webhook { name, .. }) = &entry;
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_".contains(c)) {
            return Err(invalid("audit.sinks.name", format!("`{name}`: use letters, digits, `-` and `_`")));
        }
        if !names.insert(name.clone()) {
            return Err(invalid("audit.sinks.name", format!("two sinks are named `{name}`")));
        }
        sinks.push(sink(entry, env)?);
    }
    let bare = external_url.split_once("://").map_or(external_url, |(_, rest)| rest);
    let origin = format!("{}/audit", bare.trim_end_matches('/'));
    Ok(AuditSettings { origin, checkpoint_interval: audit.checkpoint_interval, sinks })
}

/// One `[[audit.sinks]]` entry's settings, checked; a webhook's secret is read.
fn sink(entry: SinkEntry, env: &dyn Fn(&str) -> Option<String>) -> Result<SinkConfig, ConfigError> {
    match entry {
        SinkEntry::File { max_bytes, .. } if max_bytes < 4096 => {
            Err(invalid("audit.sinks.max_bytes", "must be at least 4096"))
        }
        SinkEntry::File { name, path, max_bytes, keep } => Ok(SinkConfig::File { name, path, max_bytes, keep }),
        SinkEntry::Webhook { name, url, secret_env, secret_file, batch } => {
            check_url("audit.sinks.url", &url)?;
            if !(1..=1000).contains(&batch) {
                return Err(invalid("audit.sinks.batch", "must be between 1 and 1000"));
            }
            let source = SINK_SECRET.required_source(None, secret_env.as_deref(), secret_file.as_deref())?;
            let secret = SINK_SECRET.read(&source, env)?;
            if secret.expose().len() < 16 {
                return Err(invalid("audit.sinks.secret_env", "the webhook secret must be at least 16 characters"));
            }
            Ok(SinkConfig::Webhook { name, url, secret, batch })
        }
    }
}

/// The `[[repositories]]` credentials, checked: each prefix a URL git can be given secrets for,
/// unique, with a user name and exactly one readable password source.
fn repository_credentials(
    repositories: &[RepositoryConfig],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<RepositoryCredentials, ConfigError> {
    let mut entries: Vec<RepositoryCredential> = Vec::new();
    for repository in repositories {
        let prefix = &repository.url_prefix;
        check_url("repositories.url_prefix", prefix.trim_end_matches('/'))?;
        if entries.iter().any(|e| e.url_prefix() == prefix) {
            return Err(invalid("repositories.url_prefix", format!("`{prefix}` is listed twice")));
        }
        let username = &repository.username;
        if username.is_empty() || username.contains(':') || username.chars().any(char::is_control) {
            return Err(invalid("repositories.username", "a non-empty name without `:` or control characters"));
        }
        let source = REPOSITORY_PASSWORD.required_source(
            None,
            repository.password_env.as_deref(),
            repository.password_file.as_deref(),
        )?;
        // A password file is read again at every use (rotated in place); it is read once here
        // only to prove it readable.
        let password = match source {
            SecretSource::File(path) => PasswordSource::File(path),
            source => PasswordSource::Value(REPOSITORY_PASSWORD.read(&source, env)?),
        };
        let credential = RepositoryCredential::new(prefix.clone(), username.clone(), password);
        credential.password().map_err(|e| invalid("repositories.password_file", e.to_string()))?;
        entries.push(credential);
    }
    Ok(RepositoryCredentials::new(entries))
}

fn check_policy(policy: Option<&PolicyConfig>) -> Result<(), ConfigError> {
    if let Some(policy) = policy
        && !(Duration::from_millis(1)..=Duration::from_secs(10)).contains(&policy.evaluation_timeout)
    {
        return Err(invalid("policy.evaluation_timeout", "must be between 1ms and 10s"));
    }
    Ok(())
}

/// `[scheduler]`, checked: `None` when disabled. The lease must outlast two wakes, so a holder
/// renews it before it can expire.
fn scheduler_settings(scheduler: &SchedulerConfig) -> Result<Option<SchedulerSettings>, ConfigError> {
    if !(Duration::from_millis(100)..=Duration::from_secs(60)).contains(&scheduler.interval) {
        return Err(invalid("scheduler.interval", "must be between 100ms and 1m"));
    }
    if !(Duration::from_secs(2)..=Duration::from_secs(600)).contains(&scheduler.lease) {
        return Err(invalid("scheduler.lease", "must be between 2s and 10m"));
    }
    if scheduler.lease < scheduler.interval * 2 {
        return Err(invalid("scheduler.lease", "must be at least twice scheduler.interval"));
    }
    Ok(scheduler.enabled.then_some(SchedulerSettings { interval: scheduler.interval, lease: scheduler.lease }))
}

/// `[agents]`, checked, with the trust domain and the advertised endpoint settled.
fn agents_settings(agents: AgentsConfig, external_url: &str) -> Result<AgentsSettings, ConfigError> {
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
            || !domain.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')))
    {
        return Err(invalid("agents.trust_domain", "must be lower-case letters, digits, `.`, `-` or `_`"));
    }
    let external_host = url_host(external_url).to_owned();
    Ok(AgentsSettings {
        listen: agents.listen,
        trust_domain: agents.trust_domain.unwrap_or_else(|| external_host.to_ascii_lowercase()),
        server_names: agents.server_names,
        certificate_lifetime: agents.certificate_lifetime,
        lease: agents.lease,
        poll_interval: agents.poll_interval,
        join_token_max_ttl: agents.join_token_max_ttl,
        advertise: agents.advertise.map(|advertise| advertise.trim_end_matches('/').to_owned()),
        external_host,
    })
}

/// Where the database lives: the URL from `storage.database_url(_env)`, else SQLite in the data dir.
fn database(storage: &StorageConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<DatabaseLocation, ConfigError> {
    let Some(source) = DATABASE_URL.source(storage.database_url.as_ref(), storage.database_url_env.as_deref(), None)?
    else {
        return Ok(DatabaseLocation::Sqlite(storage.data_dir.join("keyward.db")));
    };
    let url = DATABASE_URL.read(&source, env)?;
    DatabaseLocation::from_url(url.expose().to_owned()).ok_or_else(|| {
        invalid(
            "storage.database_url",
            "expected a postgres:// or sqlite: URL (or leave unset for SQLite in the data dir)",
        )
    })
}

impl Checked {
    /// Reads the key-encryption key from its source (`keys.kek`, `keys.kek_env` or `keys.kek_file`).
    pub fn read_kek(self, env: &dyn Fn(&str) -> Option<String>) -> Result<Settings, ConfigError> {
        let Self {
            server,
            log,
            database,
            kek,
            keys,
            tokens,
            policy,
            targets,
            issuers,
            audit,
            agents,
            repositories,
            notifications,
            scheduler,
            sso,
            github,
        } = self;
        let kek = read_kek(&kek, env)?;
        Ok(Settings {
            server,
            log,
            database,
            kek,
            keys,
            tokens,
            policy,
            targets,
            issuers,
            audit,
            agents,
            repositories,
            notifications,
            scheduler,
            sso,
            github,
        })
    }
}

fn read_kek(source: &SecretSource, env: &dyn Fn(&str) -> Option<String>) -> Result<Kek, ConfigError> {
    let key = KEK.key(source);
    let kek = match source {
        // A file may hold 32 raw bytes as well as base64, and must not be readable by others.
        SecretSource::File(path) => Kek::from_file(path),
        SecretSource::Inline(_) => Kek::from_base64(KEK.read(source, env)?.expose(), key),
        SecretSource::Env(var) => {
            Kek::from_base64(KEK.read(source, env)?.expose(), &format!("environment variable `{var}`"))
        }
    };
    kek.map_err(|source| ConfigError::Kek { key, source })
}

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
        let config = parse(
            &format!("kek = \"{KEK}\""),
            "database_url = \"postgres://kw:hunter2@db/kw\"\n\
             [[audit.sinks]]\ntype = \"webhook\"\nname = \"siem\"\nurl = \"https://siem.example/hook\"\n\
             secret_env = \"HOOK\"\n\
             [[repositories]]\nurl_prefix = \"https://git.example.com/\"\nusername = \"u\"\npassword_env = \"GIT\"",
        )?;
        let printed = format!("{config:?}");
        assert!(!printed.contains(KEK) && !printed.contains("hunter2"), "{printed}");
        let env = |name: &str| match name {
            "HOOK" => Some("hook-secret-0123456789".to_owned()),
            "GIT" => Some("git-password-4711".to_owned()),
            _ => None,
        };
        let settings = config.resolve(&env)?;
        let printed = format!("{settings:?}");
        for secret in [KEK, "hunter2", "hook-secret-0123456789", "git-password-4711"] {
            assert!(!printed.contains(secret), "{secret} in {printed}");
        }
        assert!(matches!(settings.database, DatabaseLocation::Postgres(url) if url.contains("hunter2")));
        Ok(())
    }

    #[test]
    fn everything_is_resolved_once() -> Result<(), Box<dyn std::error::Error>> {
        let config = parse(
            "kek_env = \"MY_KEK\"",
            "[tokens]\nsubject_template = \"{pool}/{stack}\"\nallowed_audiences = [\"sts.amazonaws.com\"]\n\
             [agents]\nlisten = \"127.0.0.1:0\"",
        )?;
        let settings = config.resolve(&|name| (name == "MY_KEK").then(|| KEK.to_owned()))?;
        assert_eq!(settings.kek.fingerprint(), Kek::from_base64(KEK, "test")?.fingerprint());
        assert_eq!(settings.database, DatabaseLocation::Sqlite("/tmp/kw/keyward.db".into()));
        assert_eq!(settings.tokens.subject.render("s", "net", keyward_proto::claims::Phase::Plan, None), "-/net");
        assert_eq!(settings.keys.clock_skew, settings.tokens.clock_skew);
        assert_eq!(settings.audit.origin, "kw.example/audit");
        assert_eq!(settings.agents.trust_domain, "kw.example");
        assert_eq!(settings.agents.endpoint(8443), "https://kw.example:8443");
        Ok(())
    }

    /// `keyward dev` checks its configuration before it creates the data dir its key lives in.
    #[test]
    fn the_kek_is_read_last_in_a_step_of_its_own() -> Result<(), ConfigError> {
        let checked = parse("kek_file = \"/nonexistent/kek\"", "")?.check(&|_| None)?;
        assert_eq!(checked.kek, SecretSource::File("/nonexistent/kek".into()));
        let error = checked.read_kek(&|_| None).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.starts_with("`keys.kek_file`: cannot read key-encryption key file /nonexistent/kek"), "{error}");
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
        let settings = config.clone().resolve(&env)?;
        assert_eq!(settings.database, DatabaseLocation::Postgres("postgres://db/kw".to_owned()));
        let missing = config.resolve(&|_| None);
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
        hook("secret_env = \"HOOK\"")?.resolve(&env)?;
        let error = |config: Config| config.resolve(&env).err().map(|e| e.to_string()).unwrap_or_default();
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

    #[test]
    fn repository_credentials_are_checked() -> Result<(), ConfigError> {
        let repositories = |entries: &[&str]| {
            let tables: Vec<String> = entries.iter().map(|e| format!("[[repositories]]\n{e}\n")).collect();
            parse(&format!("kek = \"{KEK}\"\n{}", tables.join("")), "")
        };
        let env = |name: &str| (name == "GIT_TOKEN").then(|| "ghp_token".to_owned());
        let good = "url_prefix = \"https://git.example.com/acme/\"\nusername = \"x-access-token\"\npassword_env = \"GIT_TOKEN\"";
        repositories(&[good])?.resolve(&env)?;
        let error = |entries: &[&str]| -> Result<String, ConfigError> {
            Ok(repositories(entries)?.resolve(&env).err().map(|e| e.to_string()).unwrap_or_default())
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
        repositories(&[&loopback])?.resolve(&env)?;
        Ok(())
    }
}
