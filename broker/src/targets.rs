//! Targets: the named places credentials come from (`[[targets]]`), shared by the exchange, which
//! issues from them, and runs, which check that a stack's plan phase names only read targets.
//!
//! Callers name a target (`aws:deploy`); they never pass a role ARN or a Vault path. What a target
//! is lives here, with no knowledge of the configuration file: `config` parses and checks the
//! file's `[[targets]]` tables into these types.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::tokens::SourceIdentity;

/// One `[[targets]]` entry: a named place credentials come from. Callers name it; they never pass
/// a role ARN or a Vault path.
#[derive(Debug, Clone)]
pub struct TargetConfig {
    /// Unique per type; callers ask for `<type>:<name>`.
    pub name: String,
    /// What it grants: `read` (plan phases may use it) or `write` (apply only).
    pub access: TargetAccess,
    /// Lifetime cap for what it issues (the policy's `ttl_seconds` may lower it).
    pub duration: Duration,
    /// Free-form labels handed to the policy (`input.target.labels`), e.g. `env = "prod"`.
    pub labels: BTreeMap<String, String>,
    /// Which kinds of subject the shipped policy lets obtain write credentials from this target
    /// (`input.target.write_subjects`): by default only jobs of runs the broker tracked, whose
    /// approvals are recorded reviews. A CI system's token or an admin-minted run token carries
    /// no such approvals; a target must opt in to serve them (`write_subjects = ["ci"]`).
    pub write_subjects: Vec<WriteSubject>,
    /// The spaces whose stacks may use it, each with every space under it (docs/access.md);
    /// by default `["root"]`: all of them.
    pub spaces: Vec<String>,
    /// The relying party.
    pub kind: TargetKind,
}

impl TargetConfig {
    /// Whether a stack in the space whose chain (the space, its parent, … `root`) is `chain`
    /// may use this target.
    pub fn serves(&self, chain: &[String]) -> bool {
        self.spaces.iter().any(|space| chain.contains(space))
    }

    /// `<type>:<name>`, how callers name it.
    pub fn id(&self) -> String {
        match &self.kind {
            TargetKind::Aws(_) => format!("aws:{}", self.name),
            TargetKind::Vault(_) => format!("vault:{}", self.name),
        }
    }
}

/// Read or write access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetAccess {
    /// Safe for plans.
    Read,
    /// Applies only.
    Write,
}

/// A kind of subject that may be let obtain write credentials (`write_subjects`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteSubject {
    /// A job of a tracked run, asking through its agent's lease.
    Job,
    /// A Keyward run token (minted through `POST /v1/run-tokens`).
    Run,
    /// A trusted CI issuer's token.
    Ci,
}

/// The relying party of a target.
#[derive(Debug, Clone)]
pub enum TargetKind {
    /// AWS STS `AssumeRoleWithWebIdentity`.
    Aws(AwsTarget),
    /// Vault/OpenBao JWT auth, then optional KV reads.
    Vault(VaultTarget),
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

/// Who calls the relying party.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExchangeMode {
    /// The broker does.
    #[default]
    Broker,
    /// The caller does, with the token the broker minted.
    Worker,
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

/// A KV version 2 secret read with the Vault token and returned with it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KvRead {
    /// The KV v2 mount, e.g. `secret`.
    pub mount: String,
    /// The secret's path under the mount.
    pub path: String,
}

/// A certificate issued from a Vault PKI role with the Vault token and returned with it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
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

/// The host of `scheme://host[:port][/path]`, without port or IPv6 brackets.
pub fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => authority.rsplit_once(':').map_or(authority, |(host, _)| host),
    }
}
