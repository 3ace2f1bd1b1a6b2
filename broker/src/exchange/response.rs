//! What an exchange returns.

use crate::tokens::TokenString;

/// AWS "exchange in the worker" material: the caller calls `AssumeRoleWithWebIdentity` itself.
#[derive(Debug)]
pub struct AwsWorkerCredentials {
    /// The minted web-identity token (audience: the target's).
    pub web_identity_token: TokenString,
    /// When that token expires.
    pub token_expires_at: i64,
    /// The role to assume.
    pub role_arn: String,
    /// `RoleSessionName` to use: the run ID.
    pub role_session_name: String,
    /// STS region.
    pub region: String,
    /// STS endpoint override, if the target has one.
    pub sts_endpoint: Option<String>,
    /// `DurationSeconds` to ask for.
    pub duration_seconds: u64,
}

/// AWS credentials the broker obtained from STS.
#[derive(Debug)]
pub struct AwsIssued {
    /// The credentials (secret parts never print).
    pub credentials: super::aws::AwsCredentials,
    /// The role assumed.
    pub role_arn: String,
    /// `RoleSessionName`: the run ID.
    pub role_session_name: String,
    /// STS region.
    pub region: String,
}

/// The result of an exchange.
#[derive(Debug)]
pub enum ExchangeResponse {
    /// A Vault token and the secrets read with it.
    Vault {
        /// What Vault issued (its token only when the target returns it).
        issued: super::vault::VaultIssued,
        /// The Vault address (the target's).
        address: String,
    },
    /// AWS credentials from STS.
    Aws(AwsIssued),
    /// AWS, exchanged in the worker.
    AwsWorker(AwsWorkerCredentials),
}
