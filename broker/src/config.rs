//! The broker's one configuration file.
//!
//! A misspelled security setting must be an error, never a silent default, so every table denies
//! unknown keys (SPIRE does the same). Errors name the key path of the first problem so an operator
//! at 3 a.m. knows which line to fix. Nothing here touches the process environment directly: secrets
//! that come from the environment are looked up through a caller-supplied function, so tests can
//! build any environment without mutating the real one.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::identity::SigningAlgorithm;
use crate::identity::kek::{Kek, KekError};

mod overlay;

pub use overlay::{DevOverlay, OVERLAY_TABLES, OverlayError};

/// Hard upper bound on any token lifetime (DESIGN.md §2). Retired keys stay published at least this
/// long plus clock skew, whatever the configured maximum, so a later config change can never
/// unpublish a key that still has live tokens.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// Largest clock-skew leeway the broker accepts (DESIGN.md §8).
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Placeholders a subject template may use. The run ID is deliberately absent: subjects must be
/// stable across runs so trust policies can match them.
pub const SUBJECT_PLACEHOLDERS: &[&str] = &["stack_id", "stack", "phase", "scope", "pool"];

/// A configuration problem, with the dotted key path it concerns.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a key has the wrong type or is unknown.
    #[error("{path}: `{key}`: {message}")]
    Parse {
        /// The file.
        path: String,
        /// Dotted key path of the problem (`.` for the document root).
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A value parsed but is not acceptable.
    #[error("`{key}`: {message}")]
    Invalid {
        /// Dotted key path.
        key: &'static str,
        /// What is wrong and what is accepted.
        message: String,
    },
    /// The key-encryption key could not be obtained.
    #[error("`{key}`: {source}")]
    Kek {
        /// Which setting supplied it.
        key: &'static str,
        /// Why it is unusable.
        source: KekError,
    },
}

/// A configuration value that is a secret (an inline KEK, a database URL with a password). It
/// deserializes from a plain string and never prints.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "String")]
pub struct Secret(zeroize::Zeroizing<String>);

impl Secret {
    /// The value, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(zeroize::Zeroizing::new(value))
    }
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key, message: message.into() }
}

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
    pub targets: Vec<TargetConfig>,
    /// OIDC issuers (CI systems) whose tokens may be exchanged.
    #[serde(default)]
    pub issuers: Vec<IssuerConfig>,
    /// The audit log.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Private worker agents: the gRPC listener, their certificates and job leases.
    #[serde(default)]
    pub agents: AgentsConfig,
    /// Credentials for private repositories, by URL prefix (docs/runs.md).
    #[serde(default)]
    pub repositories: Vec<RepositoryConfig>,
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
    pub sinks: Vec<SinkConfig>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self { checkpoint_interval: default_checkpoint_interval(), sinks: Vec::new() }
    }
}

/// One `[[audit.sinks]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SinkConfig {
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

impl SinkConfig {
    /// The sink's name.
    pub fn name(&self) -> &str {
        match self {
            Self::File { name, .. } | Self::Webhook { name, .. } => name,
        }
    }
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

impl Config {
    /// The audit log's origin (checkpoint first line and key name): the issuer URL without its
    /// scheme, plus `/audit`.
    pub fn audit_origin(&self) -> String {
        let url = &self.server.external_url;
        let bare = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
        format!("{}/audit", bare.trim_end_matches('/'))
    }
}

/// One `[[issuers]]` entry: a CI system's OIDC issuer whose tokens the broker exchanges.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Unique name, for logs and the record.
    pub name: String,
    /// The exact `iss`; discovery is fetched from `{issuer}/.well-known/openid-configuration`.
    pub issuer: String,
    /// The exact `aud` its tokens must carry for this broker.
    pub audience: String,
    /// Accepted signature algorithms.
    #[serde(default = "default_issuer_algorithms")]
    pub algorithms: Vec<crate::identity::verify::Algorithm>,
    /// Whether tokens must carry `nbf` (always checked when present).
    #[serde(default = "yes")]
    pub require_nbf: bool,
    /// Claims that must be present with exactly these string values, e.g. `repository_owner = "acme"`.
    /// Required: CI systems let any workflow choose its own `aud`, so an issuer bound by audience
    /// alone would trust every repository it serves.
    #[serde(default)]
    pub required_claims: std::collections::BTreeMap<String, String>,
    /// The targets (`<type>:<name>`) this issuer's tokens may ask for; any other is refused before
    /// the policy runs. Required, and each must be a configured target.
    #[serde(default)]
    pub targets: Vec<String>,
    /// Which phase this issuer's tokens stand for: `plan` (read targets only) unless set to `apply`.
    #[serde(default = "default_ci_phase")]
    pub phase: keyward_proto::claims::Phase,
    /// Each token may be exchanged once.
    #[serde(default = "yes")]
    pub single_use: bool,
    /// Minimum time between two JWKS fetches when tokens name unknown keys.
    #[serde(default = "default_jwks_refresh_interval", with = "humantime_serde_compat")]
    pub jwks_refresh_interval: Duration,
    /// Where the run context is found in this issuer's tokens.
    #[serde(default)]
    pub claims: ClaimMapping,
}

fn default_issuer_algorithms() -> Vec<crate::identity::verify::Algorithm> {
    vec![crate::identity::verify::Algorithm::RS256, crate::identity::verify::Algorithm::ES256]
}

fn default_jwks_refresh_interval() -> Duration {
    Duration::from_secs(30)
}

fn default_ci_phase() -> keyward_proto::claims::Phase {
    keyward_proto::claims::Phase::Plan
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

/// One `[[targets]]` entry: a named place credentials come from. Callers name it; they never pass
/// a role ARN or a Vault path.
#[derive(Debug, Clone, Deserialize)]
#[serde(from = "RawTarget")]
pub struct TargetConfig {
    /// Unique per type; callers ask for `<type>:<name>`.
    pub name: String,
    /// What it grants: `read` (plan phases may use it) or `write` (apply only).
    pub access: TargetAccess,
    /// Lifetime cap for what it issues (the policy's `ttl_seconds` may lower it).
    pub duration: Duration,
    /// Free-form labels handed to the policy (`input.target.labels`), e.g. `env = "prod"`.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Which kinds of subject the shipped policy lets obtain write credentials from this target
    /// (`input.target.write_subjects`): by default only jobs of runs the broker tracked, whose
    /// approvals are recorded reviews. A CI system's token or an admin-minted run token carries
    /// no such approvals; a target must opt in to serve them (`write_subjects = ["ci"]`).
    pub write_subjects: Vec<WriteSubject>,
    /// The relying party.
    pub kind: TargetKind,
}

/// A kind of subject that may be let obtain write credentials (`write_subjects`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteSubject {
    /// A job of a tracked run, asking through its agent's lease.
    Job,
    /// A Keyward run token (minted through `POST /v1/run-tokens`).
    Run,
    /// A trusted CI issuer's token.
    Ci,
}

fn default_write_subjects() -> Vec<WriteSubject> {
    vec![WriteSubject::Job]
}

/// The file form of a target: tagged by `type`, each type with its own closed set of keys
/// (`#[serde(flatten)]` would silently disable `deny_unknown_fields`).
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum RawTarget {
    Aws(RawAwsTarget),
    Vault(RawVaultTarget),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVaultTarget {
    name: String,
    access: TargetAccess,
    #[serde(default = "default_target_duration", with = "humantime_serde_compat")]
    duration: Duration,
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
    #[serde(default = "default_write_subjects")]
    write_subjects: Vec<WriteSubject>,
    address: String,
    #[serde(default = "default_jwt_mount")]
    auth_mount: String,
    role: String,
    #[serde(default = "default_vault_audience")]
    audience: String,
    #[serde(default = "yes")]
    return_token: bool,
    #[serde(default)]
    kv_reads: Vec<KvRead>,
    #[serde(default)]
    pki_issues: Vec<PkiIssue>,
}

/// A certificate issued from a Vault PKI role with the Vault token and returned with it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PkiIssue {
    /// The PKI mount, e.g. `pki`.
    pub mount: String,
    /// The PKI role.
    pub role: String,
    /// The certificate's common name.
    pub common_name: String,
    /// Optional lifetime, e.g. `1h` (capped by the role).
    #[serde(default)]
    pub ttl: Option<String>,
}

fn default_jwt_mount() -> String {
    "jwt".to_owned()
}

fn default_vault_audience() -> String {
    "vault".to_owned()
}

/// A KV version 2 secret read with the Vault token and returned with it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct KvRead {
    /// The KV v2 mount, e.g. `secret`.
    pub mount: String,
    /// The secret's path under the mount.
    pub path: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAwsTarget {
    name: String,
    access: TargetAccess,
    #[serde(default = "default_target_duration", with = "humantime_serde_compat")]
    duration: Duration,
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
    #[serde(default = "default_write_subjects")]
    write_subjects: Vec<WriteSubject>,
    role_arn: String,
    #[serde(default = "default_region")]
    region: String,
    #[serde(default)]
    sts_endpoint: Option<String>,
    #[serde(default = "default_sts_audience")]
    audience: String,
    #[serde(default)]
    mode: ExchangeMode,
    #[serde(default)]
    session_tags: Option<Vec<String>>,
    #[serde(default)]
    source_identity: Option<SourceIdentity>,
}

impl From<RawTarget> for TargetConfig {
    fn from(raw: RawTarget) -> Self {
        match raw {
            RawTarget::Aws(aws) => Self {
                name: aws.name,
                access: aws.access,
                duration: aws.duration,
                labels: aws.labels,
                write_subjects: aws.write_subjects,
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
            RawTarget::Vault(vault) => Self {
                name: vault.name,
                access: vault.access,
                duration: vault.duration,
                labels: vault.labels,
                write_subjects: vault.write_subjects,
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

/// Read or write access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetAccess {
    /// Safe for plans.
    Read,
    /// Applies only.
    Write,
}

/// The relying party of a target.
#[derive(Debug, Clone)]
pub enum TargetKind {
    /// AWS STS `AssumeRoleWithWebIdentity`.
    Aws(AwsTarget),
    /// Vault/OpenBao JWT auth, then optional KV reads.
    Vault(VaultTarget),
}

/// A Vault (or OpenBao) role reached through its JWT auth method.
#[derive(Debug, Clone)]
pub struct VaultTarget {
    /// Vault's address.
    pub address: String,
    /// Where the JWT auth method is mounted.
    pub auth_mount: String,
    /// The JWT role to log in to.
    pub role: String,
    /// Audience of the minted token (the role's `bound_audiences`).
    pub audience: String,
    /// Whether the Vault token itself is returned (else only the secrets read with it).
    pub return_token: bool,
    /// KV v2 secrets read with the token and returned.
    pub kv_reads: Vec<KvRead>,
    /// Certificates issued with the token and returned.
    pub pki_issues: Vec<PkiIssue>,
}

/// An AWS role.
#[derive(Debug, Clone)]
pub struct AwsTarget {
    /// The role to assume.
    pub role_arn: String,
    /// STS region.
    pub region: String,
    /// STS endpoint override (regional endpoints, private links, test servers).
    pub sts_endpoint: Option<String>,
    /// Audience of the web-identity token (the IAM OIDC provider's client ID).
    pub audience: String,
    /// `broker`: the broker calls STS and returns credentials. `worker`: it returns the
    /// web-identity token and role so the caller calls STS inside its own network.
    pub mode: ExchangeMode,
    /// Which session tags the token carries for this role (`run`, `stack`, `commit`, `pr`,
    /// `ticket`, `approver`); unset follows `tokens.aws_session_tags`, empty emits none.
    pub session_tags: Option<Vec<String>>,
    /// Who becomes the source identity for this role; unset follows `tokens.source_identity`.
    pub source_identity: Option<SourceIdentity>,
}

fn default_region() -> String {
    "us-east-1".to_owned()
}

fn default_sts_audience() -> String {
    "sts.amazonaws.com".to_owned()
}

/// Who calls the relying party.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExchangeMode {
    /// The broker does.
    #[default]
    Broker,
    /// The caller does, with the token the broker minted.
    Worker,
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
    Duration::from_secs(300)
}

fn max_ttl() -> Duration {
    MAX_TOKEN_LIFETIME
}

fn default_skew() -> Duration {
    Duration::from_secs(30)
}

fn yes() -> bool {
    true
}

/// The default subject template: immutable IDs only, so trust policies can match it.
pub fn default_subject_template() -> String {
    "stack:{stack_id}:phase:{phase}".to_owned()
}

/// Which human the `https://aws.amazon.com/source_identity` claim names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceIdentity {
    /// The person who triggered the run, else the first approver.
    #[default]
    TriggeredBy,
    /// The first approver, else the person who triggered the run.
    FirstApprover,
    /// Do not emit the claim.
    None,
}

/// Durations written the way people write them: `30s`, `5m`, `24h`.
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!("invalid duration `{text}` ({e}); write e.g. `30s`, `5m`, `24h`"))
        })
    }
}

/// Where the database is.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseLocation {
    /// An SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL URL (may contain a password; never printed).
    Postgres(String),
}

impl fmt::Debug for DatabaseLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            Self::Postgres(_) => f.write_str("Postgres(…)"),
        }
    }
}

impl Config {
    /// Reads and validates a config file. `env` looks up environment variables.
    pub fn load(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let config = Self::parse(&text, &path.display().to_string())?;
        config.validate(env)?;
        Ok(config)
    }

    /// Parses TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        parse_toml(text, origin)
    }

    /// Checks everything that parsing cannot: ranges, templates, URLs, and that the KEK resolves.
    pub fn validate(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        validate_issuer(&self.server.external_url)?;
        if !(Duration::from_secs(1)..=Duration::from_secs(300)).contains(&self.server.request_timeout) {
            return Err(invalid("server.request_timeout", "must be between 1s and 5m"));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&self.server.header_read_timeout) {
            return Err(invalid("server.header_read_timeout", "must be between 1s and 1m"));
        }
        self.tokens.validate()?;
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
        self.validate_targets()?;
        self.validate_issuers()?;
        self.validate_sinks(env)?;
        self.repository_credentials(env)?;
        self.validate_policy()?;
        self.validate_agents()?;
        self.database(env)?;
        self.kek(env)?;
        Ok(())
    }

    fn validate_policy(&self) -> Result<(), ConfigError> {
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

    fn validate_sinks(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if !(Duration::from_secs(10)..=Duration::from_secs(24 * 3600)).contains(&self.audit.checkpoint_interval) {
            return Err(invalid("audit.checkpoint_interval", "must be between 10s and 24h"));
        }
        let mut names = std::collections::BTreeSet::new();
        for sink in &self.audit.sinks {
            let name = sink.name();
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_".contains(c)) {
                return Err(invalid("audit.sinks.name", format!("`{name}`: use letters, digits, `-` and `_`")));
            }
            if !names.insert(name) {
                return Err(invalid("audit.sinks.name", format!("two sinks are named `{name}`")));
            }
            match sink {
                SinkConfig::File { max_bytes, .. } if *max_bytes < 4096 => {
                    return Err(invalid("audit.sinks.max_bytes", "must be at least 4096"));
                }
                SinkConfig::Webhook { url, batch, .. } => {
                    validate_url("audit.sinks.url", url)?;
                    if !(1..=1000).contains(batch) {
                        return Err(invalid("audit.sinks.batch", "must be between 1 and 1000"));
                    }
                    self.sink_secret(sink, env)?;
                }
                SinkConfig::File { .. } => {}
            }
        }
        Ok(())
    }

    /// The HMAC key of a webhook sink, from its `secret_env` or `secret_file` (exactly one).
    pub fn sink_secret(&self, sink: &SinkConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<Secret, ConfigError> {
        let SinkConfig::Webhook { secret_env, secret_file, .. } = sink else {
            return Err(invalid("audit.sinks.secret_env", "only webhook sinks have a secret"));
        };
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
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(DatabaseLocation::Postgres(url))
            }
            Some(url) if url.starts_with("sqlite:") => {
                let path = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
                Ok(DatabaseLocation::Sqlite(PathBuf::from(path)))
            }
            Some(_) => Err(invalid(
                "storage.database_url",
                "expected a postgres:// or sqlite: URL (or leave unset for SQLite in the data dir)",
            )),
        }
    }
}

/// Parses TOML text into `T`; errors name `origin`, the dotted key path and the line.
fn parse_toml<T: serde::de::DeserializeOwned>(text: &str, origin: &str) -> Result<T, ConfigError> {
    let deserializer = toml::Deserializer::parse(text).map_err(|e| ConfigError::Parse {
        path: origin.to_owned(),
        key: ".".to_owned(),
        message: e.message().to_owned() + &line_hint(text, e.span()),
    })?;
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        ConfigError::Parse {
            path: origin.to_owned(),
            key,
            message: inner.message().to_owned() + &line_hint(text, inner.span()),
        }
    })
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
        validate_subject_template(&self.subject_template)
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

fn validate_subject_template(template: &str) -> Result<(), ConfigError> {
    const KEY: &str = "tokens.subject_template";
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = rest.get(open + 1..).unwrap_or_default();
        let close = after.find('}').ok_or_else(|| invalid(KEY, format!("unclosed `{{` in `{template}`")))?;
        let name = after.get(..close).unwrap_or_default();
        if !SUBJECT_PLACEHOLDERS.contains(&name) {
            return Err(invalid(
                KEY,
                format!("unknown placeholder `{{{name}}}`; use one of {}", SUBJECT_PLACEHOLDERS.join(", ")),
            ));
        }
        rest = after.get(close + 1..).unwrap_or_default();
    }
    if rest.contains('}') || template.is_empty() {
        return Err(invalid(KEY, format!("malformed template `{template}`")));
    }
    Ok(())
}

fn tracing_filter_is_valid(level: &str) -> Result<(), ConfigError> {
    tracing_subscriber::EnvFilter::try_new(level)
        .map(drop)
        .map_err(|e| invalid("log.level", format!("invalid filter `{level}`: {e}")))
}

fn line_hint(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(span) => {
            let line = text.get(..span.start).unwrap_or_default().matches('\n').count() + 1;
            format!(" (line {line})")
        }
        None => String::new(),
    }
}

impl Config {
    fn validate_targets(&self) -> Result<(), ConfigError> {
        let mut seen = std::collections::BTreeSet::new();
        for target in &self.targets {
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
                    format!(
                        "target `{}` grants read access; write_subjects only applies to write targets",
                        target.id()
                    ),
                ));
            }
            if target.write_subjects.is_empty() {
                return Err(invalid(
                    "targets.write_subjects",
                    format!(
                        "target `{}`: write_subjects is empty; leave it out for the default [\"job\"]",
                        target.id()
                    ),
                ));
            }
            match &target.kind {
                TargetKind::Vault(vault) => {
                    validate_url("targets.address", &vault.address)?;
                    if !self.tokens.allowed_audiences.contains(&vault.audience) {
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
                    if !self.tokens.allowed_audiences.contains(&aws.audience) {
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
}

impl Config {
    fn validate_issuers(&self) -> Result<(), ConfigError> {
        let mut seen = std::collections::BTreeSet::new();
        for issuer in &self.issuers {
            if !seen.insert(issuer.name.as_str()) {
                return Err(invalid("issuers.name", format!("issuer `{}` is defined twice", issuer.name)));
            }
            validate_url("issuers.issuer", &issuer.issuer)?;
            if issuer.issuer == self.server.external_url {
                return Err(invalid(
                    "issuers.issuer",
                    "the broker's own tokens are trusted already; do not list its issuer",
                ));
            }
            if issuer.audience.trim().is_empty() {
                return Err(invalid(
                    "issuers.audience",
                    format!("issuer `{}`: audience must not be empty", issuer.name),
                ));
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
            self.validate_issuer_binding(issuer)?;
        }
        Ok(())
    }

    /// An issuer must say whose tokens it accepts (`required_claims`) and what they may reach
    /// (`targets`): CI systems mint tokens for every repository they host, with any audience the
    /// workflow asks for, so neither is implied by trusting the issuer.
    fn validate_issuer_binding(&self, issuer: &IssuerConfig) -> Result<(), ConfigError> {
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
            let Some(target) = self.targets.iter().find(|target| &target.id() == wanted) else {
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
}

/// Claims the verifier checks on every token, which therefore bind no caller.
const UNBINDING_CLAIMS: &[&str] = &["iss", "aud", "exp", "nbf", "iat", "jti"];

impl TargetConfig {
    /// `<type>:<name>`, how callers name it.
    pub fn id(&self) -> String {
        match &self.kind {
            TargetKind::Aws(_) => format!("aws:{}", self.name),
            TargetKind::Vault(_) => format!("vault:{}", self.name),
        }
    }
}

/// The host of `scheme://host[:port][/path]`, without port or IPv6 brackets.
pub fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => authority.rsplit_once(':').map_or(authority, |(host, _)| host),
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
            audit: AuditConfig::default(),
            agents: AgentsConfig {
                listen: Some(SocketAddr::new(listen.ip(), 0)),
                trust_domain: Some("keyward.dev".to_owned()),
                ..AgentsConfig::default()
            },
        }
    }
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

    #[test]
    fn subject_templates_are_checked() {
        assert!(validate_subject_template("stack:{stack_id}:phase:{phase}").is_ok());
        assert!(validate_subject_template("{pool}/{stack}/{scope}").is_ok());
        assert!(validate_subject_template("run:{run_id}").is_err(), "run IDs make subjects unmatchable");
        assert!(validate_subject_template("stack:{stack_id").is_err());
        assert!(validate_subject_template("stack}").is_err());
        assert!(validate_subject_template("").is_err());
    }
}

#[cfg(test)]
mod target_tests {
    use super::*;

    fn parse_target(target: &str) -> Result<Config, ConfigError> {
        let config = Config::parse(
            &format!(
                "[server]\nlisten = \"127.0.0.1:1\"\nexternal_url = \"https://kw.example\"\n\
                 [storage]\ndata_dir = \"/tmp/kw\"\n[keys]\nkek_env = \"K\"\n\
                 [tokens]\nallowed_audiences = [\"sts.amazonaws.com\", \"vault\"]\n[[targets]]\n{target}\n"
            ),
            "t.toml",
        )?;
        config.validate(&|_| Some("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".to_owned()))?;
        Ok(config)
    }

    const GOOD: &str =
        "name = \"net\"\ntype = \"aws\"\naccess = \"write\"\nrole_arn = \"arn:aws:iam::123456789012:role/net\"";
    const VAULT: &str =
        "name = \"secrets\"\ntype = \"vault\"\naccess = \"read\"\naddress = \"https://vault.example\"\nrole = \"r\"";

    #[test]
    fn a_valid_vault_target_parses_with_defaults() -> Result<(), ConfigError> {
        let config = parse_target(&format!("{VAULT}\nkv_reads = [{{ mount = \"secret\", path = \"db\" }}]"))?;
        let target = &config.targets[0];
        assert_eq!(target.id(), "vault:secrets");
        let TargetKind::Vault(vault) = &target.kind else { panic!("a vault target") };
        assert_eq!((vault.auth_mount.as_str(), vault.audience.as_str(), vault.return_token), ("jwt", "vault", true));
        assert_eq!(vault.kv_reads, vec![KvRead { mount: "secret".into(), path: "db".into() }]);
        Ok(())
    }

    #[test]
    fn a_valid_aws_target_parses_with_defaults() -> Result<(), ConfigError> {
        let config = parse_target(&format!("{GOOD}\nlabels = {{ env = \"prod\" }}"))?;
        let target = &config.targets[0];
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
        let config = parse_target(&format!("{GOOD}\nwrite_subjects = [\"job\", \"ci\"]"))?;
        assert_eq!(config.targets[0].write_subjects, [WriteSubject::Job, WriteSubject::Ci]);
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
