//! The file format: one serde type per table, every table `deny_unknown_fields`, and the
//! defaults of every key that may be left out.
//!
//! Tables whose values belong to another module once checked are *entries* here
//! ([`TargetEntry`], [`IssuerEntry`], [`SinkEntry`]); `resolve` turns them into the owners' types.
//! Small value types (`TargetAccess`, `SourceIdentity`, `ClaimMapping`, …) keep their serde
//! derives where they are defined: they read the same everywhere.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use keyward_proto::claims::Phase;
use keyward_proto::secret::Secret;
use serde::Deserialize;

use crate::exchange::trusted_issuers::{ClaimMapping, IssuerConfig};
use crate::targets::{
    AwsTarget, ExchangeMode, KvRead, PkiIssue, TargetAccess, TargetConfig, TargetKind, VaultTarget, WriteSubject,
};
use crate::tokens::rules::SubjectTemplate;
use crate::tokens::verify::Algorithm;
use crate::tokens::{MintRules, SigningAlgorithm, SourceIdentity};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// HTTP listener and the issuer URL.
    pub server: ServerConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Where state lives.
    pub storage: StorageConfig,
    /// Signing keys and the key-encryption key.
    pub keys: KeysConfig,
    /// Token minting rules.
    #[serde(default)]
    pub tokens: TokensConfig,
    /// Rego policies. Without this table every policy decision is a deny.
    #[serde(default)]
    pub policy: Option<PolicyConfig>,
    /// Credential targets callers may ask for by name.
    #[serde(default)]
    pub targets: Vec<TargetEntry>,
    /// OIDC issuers (CI systems) whose tokens may be exchanged.
    #[serde(default)]
    pub issuers: Vec<IssuerEntry>,
    /// The audit log.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Private worker agents: the gRPC listener, their certificates and job leases.
    #[serde(default)]
    pub agents: AgentsConfig,
    /// Credentials for private repositories, by URL prefix (docs/runs.md).
    #[serde(default)]
    pub repositories: Vec<RepositoryConfig>,
    /// Who is told about drift, runs and denials (docs/notifications.md).
    #[serde(default)]
    pub notifications: Vec<NotificationEntry>,
    /// The drift scheduler (docs/drift.md).
    #[serde(default)]
    pub scheduler: SchedulerConfig,
    /// Sign-in for people (docs/access.md).
    #[serde(default)]
    pub sso: Option<super::sso::SsoConfig>,
    /// Pull requests and pushes from version control (docs/vcs.md).
    #[serde(default)]
    pub vcs: Option<super::vcs::VcsConfig>,
}

/// One `[[notifications]]` entry: which events, where, in which format, signed with which key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationEntry {
    /// Unique name (in delivery records and the audit log).
    pub name: String,
    /// Events: `stack.drifted`, `stack.in_sync`, `run.awaiting_approval`, `run.failed`,
    /// `run.finished`, `credentials.denied`.
    pub events: Vec<String>,
    /// Where to POST.
    pub url: String,
    /// `json` (the default) or `slack`.
    #[serde(default = "default_notification_format")]
    pub format: String,
    /// Environment variable holding the HMAC key of `X-Keyward-Signature` (optional).
    #[serde(default)]
    pub secret_env: Option<String>,
    /// File holding that key (optional).
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Attempts before a delivery fails for good.
    #[serde(default = "default_notification_attempts")]
    pub max_attempts: u32,
}

fn default_notification_format() -> String {
    "json".to_owned()
}

fn default_notification_attempts() -> u32 {
    8
}

/// `[scheduler]`: the drift scheduler, which queues stacks' scheduled drift checks on one
/// replica at a time (docs/drift.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerConfig {
    /// Whether this replica takes part (stacks without a schedule are never checked anyway).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// How often each replica wakes: renews or takes the lease, queues what is due.
    #[serde(default = "default_scheduler_interval", with = "humantime_serde_compat")]
    pub interval: Duration,
    /// How long the lease lasts unrenewed: another replica takes over this long (plus one
    /// interval) after the holder stops without releasing it.
    #[serde(default = "default_scheduler_lease", with = "humantime_serde_compat")]
    pub lease: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self { enabled: true, interval: default_scheduler_interval(), lease: default_scheduler_lease() }
    }
}

fn default_scheduler_interval() -> Duration {
    Duration::from_secs(5)
}

fn default_scheduler_lease() -> Duration {
    Duration::from_secs(30)
}

/// One `[[repositories]]` entry: how to fetch private repositories whose URL starts with
/// `url_prefix`. The broker uses it to resolve commits at submit; an agent holding a job of such
/// a repository gets it (`SourceCredentials`) for its checkout, in memory only.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryConfig {
    /// `https://host/owner/` (plain `http://` only for loopback): the longest matching prefix wins.
    pub url_prefix: String,
    /// The user name git sends (`x-access-token` for a GitHub token, `oauth2` for GitLab).
    pub username: String,
    /// Environment variable holding the password or token.
    #[serde(default)]
    pub password_env: Option<String>,
    /// File holding the password or token, read again at every use (rotate it in place).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

/// `[agents]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentsConfig {
    /// Where the agents' gRPC endpoint (TLS; mTLS after enrollment) listens. Without it no agent
    /// can enroll or take jobs.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// The `https://host:port` agents dial, when it is not the external URL's host with the
    /// listener's port (a load balancer, another name).
    #[serde(default)]
    pub advertise: Option<String>,
    /// The SPIFFE trust domain of agent identities; the external URL's host by default.
    #[serde(default)]
    pub trust_domain: Option<String>,
    /// Names (DNS or IP) the broker's gRPC server certificate carries besides the advertised host.
    #[serde(default)]
    pub server_names: Vec<String>,
    /// Lifetime of an agent certificate; agents renew at half of it.
    #[serde(default = "default_certificate_lifetime", with = "humantime_serde_compat")]
    pub certificate_lifetime: Duration,
    /// How long a job lease lasts without a heartbeat.
    #[serde(default = "default_lease", with = "humantime_serde_compat")]
    pub lease: Duration,
    /// How often each broker looks for jobs queued by another replica (its own are dispatched at once).
    #[serde(default = "default_poll_interval", with = "humantime_serde_compat")]
    pub poll_interval: Duration,
    /// The longest a join token may live.
    #[serde(default = "default_join_token_max_ttl", with = "humantime_serde_compat")]
    pub join_token_max_ttl: Duration,
}

impl Default for AgentsConfig {
    fn default() -> Self {
        Self {
            listen: None,
            advertise: None,
            trust_domain: None,
            server_names: Vec::new(),
            certificate_lifetime: default_certificate_lifetime(),
            lease: default_lease(),
            poll_interval: default_poll_interval(),
            join_token_max_ttl: default_join_token_max_ttl(),
        }
    }
}

fn default_certificate_lifetime() -> Duration {
    Duration::from_secs(3600)
}

fn default_lease() -> Duration {
    Duration::from_secs(30)
}

fn default_poll_interval() -> Duration {
    Duration::from_secs(1)
}

fn default_join_token_max_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}

/// `[audit]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// How often a signed checkpoint of the log is made (when it grew); also on demand with
    /// `keyward audit checkpoint`.
    #[serde(default = "default_checkpoint_interval", with = "humantime_serde_compat")]
    pub checkpoint_interval: Duration,
    /// Where entries are also delivered. A sink that is down never blocks issuance: only the
    /// log itself is fail-closed; a sink's backlog is in `/metrics`.
    #[serde(default)]
    pub sinks: Vec<SinkEntry>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self { checkpoint_interval: default_checkpoint_interval(), sinks: Vec::new() }
    }
}

/// One `[[audit.sinks]]` entry; it becomes an [`crate::audit::sinks::SinkConfig`] once a webhook's
/// secret is read.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SinkEntry {
    /// JSON Lines (the export format) appended to a file, rotated by size.
    File {
        /// Unique name (metrics label, delivery cursor).
        name: String,
        /// The file.
        path: PathBuf,
        /// Rotate when the file would grow past this many bytes.
        #[serde(default = "default_sink_max_bytes")]
        max_bytes: u64,
        /// Rotated files kept (`path.1` … `path.N`).
        #[serde(default = "default_sink_keep")]
        keep: u32,
    },
    /// Batches of entries POSTed as JSON, signed with HMAC-SHA256.
    Webhook {
        /// Unique name (metrics label, delivery cursor).
        name: String,
        /// Where to POST.
        url: String,
        /// Environment variable holding the HMAC key.
        #[serde(default)]
        secret_env: Option<String>,
        /// File holding the HMAC key.
        #[serde(default)]
        secret_file: Option<PathBuf>,
        /// Most entries per request.
        #[serde(default = "default_sink_batch")]
        batch: u32,
    },
}

fn default_sink_max_bytes() -> u64 {
    64 * 1024 * 1024
}

fn default_sink_keep() -> u32 {
    5
}

fn default_sink_batch() -> u32 {
    100
}

fn default_checkpoint_interval() -> Duration {
    Duration::from_secs(300)
}

/// One `[[issuers]]` entry ([`IssuerConfig`] says what each key means).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct IssuerEntry {
    pub name: String,
    pub issuer: String,
    pub audience: String,
    #[serde(default = "default_issuer_algorithms")]
    pub algorithms: Vec<Algorithm>,
    #[serde(default = "yes")]
    pub require_nbf: bool,
    #[serde(default)]
    pub required_claims: BTreeMap<String, String>,
    #[serde(default)]
    pub targets: Vec<String>,
    #[serde(default = "default_ci_phase")]
    pub phase: Phase,
    #[serde(default = "yes")]
    pub single_use: bool,
    #[serde(default = "default_jwks_refresh_interval", with = "humantime_serde_compat")]
    pub jwks_refresh_interval: Duration,
    #[serde(default)]
    pub claims: ClaimMapping,
}

impl From<IssuerEntry> for IssuerConfig {
    fn from(entry: IssuerEntry) -> Self {
        let IssuerEntry {
            name,
            issuer,
            audience,
            algorithms,
            require_nbf,
            required_claims,
            targets,
            phase,
            single_use,
            jwks_refresh_interval,
            claims,
        } = entry;
        Self {
            name,
            issuer,
            audience,
            algorithms,
            require_nbf,
            required_claims,
            targets,
            phase,
            single_use,
            jwks_refresh_interval,
            claims,
        }
    }
}

fn default_issuer_algorithms() -> Vec<Algorithm> {
    vec![Algorithm::RS256, Algorithm::ES256]
}

fn default_jwks_refresh_interval() -> Duration {
    Duration::from_secs(30)
}

fn default_ci_phase() -> Phase {
    Phase::Plan
}

fn default_target_spaces() -> Vec<String> {
    vec![crate::roles::ROOT.to_owned()]
}

pub(super) fn default_write_subjects() -> Vec<WriteSubject> {
    vec![WriteSubject::Job]
}

/// One `[[targets]]` entry: tagged by `type`, each type with its own closed set of keys
/// (`#[serde(flatten)]` would silently disable `deny_unknown_fields`).
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum TargetEntry {
    /// `type = "aws"`.
    Aws(AwsTargetEntry),
    /// `type = "vault"`.
    Vault(VaultTargetEntry),
}

/// A `type = "vault"` target's keys ([`TargetConfig`] and [`VaultTarget`] say what each means).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct VaultTargetEntry {
    pub name: String,
    pub access: TargetAccess,
    #[serde(default = "default_target_duration", with = "humantime_serde_compat")]
    pub duration: Duration,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default = "default_write_subjects")]
    pub write_subjects: Vec<WriteSubject>,
    #[serde(default = "default_target_spaces")]
    pub spaces: Vec<String>,
    pub address: String,
    #[serde(default = "default_jwt_mount")]
    pub auth_mount: String,
    pub role: String,
    #[serde(default = "default_vault_audience")]
    pub audience: String,
    #[serde(default = "yes")]
    pub return_token: bool,
    #[serde(default)]
    pub kv_reads: Vec<KvRead>,
    #[serde(default)]
    pub pki_issues: Vec<PkiIssue>,
}

fn default_jwt_mount() -> String {
    "jwt".to_owned()
}

fn default_vault_audience() -> String {
    "vault".to_owned()
}

/// A `type = "aws"` target's keys ([`TargetConfig`] and [`AwsTarget`] say what each means).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct AwsTargetEntry {
    pub name: String,
    pub access: TargetAccess,
    #[serde(default = "default_target_duration", with = "humantime_serde_compat")]
    pub duration: Duration,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default = "default_write_subjects")]
    pub write_subjects: Vec<WriteSubject>,
    #[serde(default = "default_target_spaces")]
    pub spaces: Vec<String>,
    pub role_arn: String,
    #[serde(default = "default_region")]
    pub region: String,
    #[serde(default)]
    pub sts_endpoint: Option<String>,
    #[serde(default = "default_sts_audience")]
    pub audience: String,
    #[serde(default)]
    pub mode: ExchangeMode,
    #[serde(default)]
    pub session_tags: Option<Vec<String>>,
    #[serde(default)]
    pub source_identity: Option<SourceIdentity>,
}

impl From<TargetEntry> for TargetConfig {
    fn from(entry: TargetEntry) -> Self {
        match entry {
            TargetEntry::Aws(aws) => Self {
                name: aws.name,
                access: aws.access,
                duration: aws.duration,
                labels: aws.labels,
                write_subjects: aws.write_subjects,
                spaces: aws.spaces,
                kind: TargetKind::Aws(AwsTarget {
                    role_arn: aws.role_arn,
                    region: aws.region,
                    sts_endpoint: aws.sts_endpoint,
                    audience: aws.audience,
                    mode: aws.mode,
                    session_tags: aws.session_tags,
                    source_identity: aws.source_identity,
                }),
            },
            TargetEntry::Vault(vault) => Self {
                name: vault.name,
                access: vault.access,
                duration: vault.duration,
                labels: vault.labels,
                write_subjects: vault.write_subjects,
                spaces: vault.spaces,
                kind: TargetKind::Vault(VaultTarget {
                    address: vault.address,
                    auth_mount: vault.auth_mount,
                    role: vault.role,
                    audience: vault.audience,
                    return_token: vault.return_token,
                    kv_reads: vault.kv_reads,
                    pki_issues: vault.pki_issues,
                }),
            },
        }
    }
}

/// An hour: outside the 15 minutes in which boto3 and the AWS CLI refresh credentials, so a
/// `credential_process` is not run again on every call.
fn default_target_duration() -> Duration {
    Duration::from_secs(3600)
}

fn default_region() -> String {
    "us-east-1".to_owned()
}

fn default_sts_audience() -> String {
    "sts.amazonaws.com".to_owned()
}

/// `[policy]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Directory of `*.rego` policies, `data.json` and `*.cases.json` test cases.
    pub dir: PathBuf,
    /// Time limit for one evaluation; past it the decision is a deny.
    #[serde(default = "default_evaluation_timeout", with = "humantime_serde_compat")]
    pub evaluation_timeout: Duration,
}

fn default_evaluation_timeout() -> Duration {
    Duration::from_millis(100)
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
    /// The broker's external URL: the `iss` of every token, and where discovery is served.
    pub external_url: String,
    /// Deadline for handling one request; past it the client gets 503 and nothing is issued.
    #[serde(default = "default_request_timeout", with = "humantime_serde_compat")]
    pub request_timeout: Duration,
    /// How long a client has to send its request headers before the connection is closed.
    #[serde(default = "default_header_read_timeout", with = "humantime_serde_compat")]
    pub header_read_timeout: Duration,
}

fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (default) or `json`.
    #[serde(default)]
    pub format: LogFormat,
    /// A `tracing` filter directive, e.g. `info` or `keyward_broker=debug,info`.
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::default(), level: default_log_level() }
    }
}

fn default_log_level() -> String {
    "info".to_owned()
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[storage]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Directory for the embedded database and local state.
    pub data_dir: PathBuf,
    /// `postgres://…` to use PostgreSQL; unset for SQLite at `<data_dir>/keyward.db`.
    #[serde(default)]
    pub database_url: Option<Secret>,
    /// Name of an environment variable holding the database URL (keeps passwords out of the file).
    #[serde(default)]
    pub database_url_env: Option<String>,
}

/// `[keys]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    /// Signing algorithm for new keys: `ES256` (default) or `RS256`.
    #[serde(default)]
    pub algorithm: SigningAlgorithm,
    /// Key-encryption key inline, base64 (32 bytes). Prefer `kek_file` or `kek_env`.
    #[serde(default)]
    pub kek: Option<Secret>,
    /// Environment variable holding the base64 key-encryption key.
    #[serde(default)]
    pub kek_env: Option<String>,
    /// File holding the base64 key-encryption key (or exactly 32 raw bytes).
    #[serde(default)]
    pub kek_file: Option<PathBuf>,
    /// How often the signing key rotates on its own.
    #[serde(default = "default_rotation_period", with = "humantime_serde_compat")]
    pub rotation_period: Duration,
    /// `Cache-Control: max-age` of the JWKS document.
    #[serde(default = "default_jwks_max_age", with = "humantime_serde_compat")]
    pub jwks_max_age: Duration,
}

fn default_rotation_period() -> Duration {
    Duration::from_secs(24 * 3600)
}

fn default_jwks_max_age() -> Duration {
    Duration::from_secs(300)
}

/// `[tokens]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensConfig {
    /// Lifetime when the request does not ask for one.
    #[serde(default = "default_ttl", with = "humantime_serde_compat")]
    pub default_ttl: Duration,
    /// Longest lifetime a request may ask for (at most 1 h).
    #[serde(default = "max_ttl", with = "humantime_serde_compat")]
    pub max_ttl: Duration,
    /// Leeway granted to relying parties' clocks (at most 60 s).
    #[serde(default = "default_skew", with = "humantime_serde_compat")]
    pub clock_skew: Duration,
    /// The only audiences tokens may be minted for.
    #[serde(default)]
    pub allowed_audiences: Vec<String>,
    /// Template for `sub`; placeholders in braces.
    #[serde(default = "default_subject_template")]
    pub subject_template: String,
    /// Who becomes the AWS source identity.
    #[serde(default)]
    pub source_identity: SourceIdentity,
    /// Whether to emit the AWS session-tags claim.
    #[serde(default = "yes")]
    pub aws_session_tags: bool,
}

impl Default for TokensConfig {
    fn default() -> Self {
        Self {
            default_ttl: default_ttl(),
            max_ttl: max_ttl(),
            clock_skew: default_skew(),
            allowed_audiences: Vec::new(),
            subject_template: default_subject_template(),
            source_identity: SourceIdentity::default(),
            aws_session_tags: true,
        }
    }
}

fn default_ttl() -> Duration {
    MintRules::default().default_ttl
}

fn max_ttl() -> Duration {
    MintRules::default().max_ttl
}

fn default_skew() -> Duration {
    MintRules::default().clock_skew
}

fn default_subject_template() -> String {
    SubjectTemplate::DEFAULT.to_owned()
}

fn yes() -> bool {
    true
}

/// Durations written the way people write them: `30s`, `5m`, `24h`.
pub(super) mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(in crate::config) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!("invalid duration `{text}` ({e}); write e.g. `30s`, `5m`, `24h`"))
        })
    }
}

/// Audiences `keyward dev` allows (DESIGN.md §7).
pub const DEV_AUDIENCES: &[&str] = &["sts.amazonaws.com", "vault"];

impl Config {
    /// The configuration `keyward dev` runs with: loopback, SQLite and a generated KEK file in
    /// `data_dir`, the dev audiences.
    pub fn dev(data_dir: PathBuf, listen: SocketAddr, external_url: String, policy_dir: PathBuf) -> Self {
        Self {
            server: ServerConfig {
                listen,
                external_url,
                request_timeout: default_request_timeout(),
                header_read_timeout: default_header_read_timeout(),
            },
            log: LogConfig::default(),
            storage: StorageConfig { data_dir: data_dir.clone(), database_url: None, database_url_env: None },
            keys: KeysConfig {
                algorithm: SigningAlgorithm::ES256,
                kek: None,
                kek_env: None,
                kek_file: Some(data_dir.join("kek")),
                rotation_period: default_rotation_period(),
                jwks_max_age: default_jwks_max_age(),
            },
            tokens: TokensConfig {
                allowed_audiences: DEV_AUDIENCES.iter().map(|a| (*a).to_owned()).collect(),
                ..TokensConfig::default()
            },
            policy: Some(PolicyConfig { dir: policy_dir, evaluation_timeout: default_evaluation_timeout() }),
            targets: Vec::new(),
            issuers: Vec::new(),
            repositories: Vec::new(),
            notifications: Vec::new(),
            audit: AuditConfig::default(),
            agents: AgentsConfig {
                listen: Some(SocketAddr::new(listen.ip(), 0)),
                trust_domain: Some("keyward.dev".to_owned()),
                ..AgentsConfig::default()
            },
            scheduler: SchedulerConfig::default(),
            sso: None,
            vcs: None,
        }
    }
}
