//! The file format: one serde type per table, every table `deny_unknown_fields`, and the
//! defaults of every key that may be left out.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{MAX_TOKEN_LIFETIME, Secret};
use crate::identity::SigningAlgorithm;

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

pub(super) fn default_write_subjects() -> Vec<WriteSubject> {
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
