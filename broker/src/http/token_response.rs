//! The RFC 8693 response body of `POST /v1/token`, one shape per kind of credential.
//!
//! Why it exists: the body is a contract (`keyward creds`, the AWS CLI's `credential_process`
//! and customers' scripts read it), so it is a type rather than maps mutated in the handler.
//! Fields are declared in alphabetical order, the order `serde_json` maps wrote them in before
//! the body had a type, so responses stay byte-identical.

use serde::Serialize;
use serde_json::{Value, json};

use crate::exchange::vault::VaultIssued;
use crate::exchange::{
    AWS_CREDENTIALS_TOKEN_TYPE, AwsIssued, AwsWorkerCredentials, ExchangeResponse, JWT_TOKEN_TYPE, VAULT_TOKEN_TYPE,
};

/// What the token endpoint answers. Holds secrets: it goes to the caller and nowhere else.
#[derive(Serialize)]
pub(super) struct TokenResponse<'a> {
    /// The credential the caller uses: an STS session token, a web-identity token, a Vault token,
    /// or `N_A` when the Vault token was revoked after the reads (RFC 8693 requires the field).
    access_token: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    aws: Option<AwsDetails<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aws_credentials: Option<CredentialProcess<'a>>,
    expires_in: i64,
    issued_token_type: &'static str,
    /// RFC 8693 §2.2.1: `N_A`, the issued token is not an OAuth access token.
    token_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    vault: Option<Value>,
}

/// Where an AWS credential came from or is to be exchanged.
#[derive(Serialize)]
struct AwsDetails<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    assumed_role_arn: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_seconds: Option<u64>,
    mode: &'static str,
    region: &'a str,
    role_arn: &'a str,
    role_session_name: &'a str,
    /// Worker mode only; `null` when the target names no endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    sts_endpoint: Option<Option<&'a str>>,
}

/// The AWS CLI `credential_process` shape, ready for `keyward creds aws`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct CredentialProcess<'a> {
    access_key_id: &'a str,
    expiration: String,
    secret_access_key: &'a str,
    session_token: &'a str,
    version: u8,
}

impl<'a> TokenResponse<'a> {
    /// The body for `response`, with lifetimes counted from `now` (Unix seconds).
    pub(super) fn new(response: &'a ExchangeResponse, now: i64) -> Self {
        match response {
            ExchangeResponse::Vault { issued, .. } => Self::vault(issued),
            ExchangeResponse::Aws(aws) => Self::aws_broker(aws, now),
            ExchangeResponse::AwsWorker(aws) => Self::aws_worker(aws, now),
        }
    }

    fn vault(issued: &'a VaultIssued) -> Self {
        let mut vault = issued.material();
        if let Some(fields) = vault.as_object_mut() {
            fields.insert("accessor".to_owned(), json!(issued.accessor));
            fields.insert("lease_duration".to_owned(), json!(issued.lease_duration));
            fields.insert("renewable".to_owned(), json!(issued.renewable));
            fields.insert("policies".to_owned(), json!(issued.policies));
        }
        Self {
            access_token: issued.token.as_ref().map_or("N_A", |token| token.as_str()),
            aws: None,
            aws_credentials: None,
            expires_in: i64::try_from(issued.lease_duration).unwrap_or(i64::MAX),
            issued_token_type: VAULT_TOKEN_TYPE,
            token_type: "N_A",
            vault: Some(vault),
        }
    }

    fn aws_broker(aws: &'a AwsIssued, now: i64) -> Self {
        let credentials = &aws.credentials;
        Self {
            access_token: credentials.session_token.as_str(),
            aws: Some(AwsDetails {
                assumed_role_arn: Some(&credentials.assumed_role_arn),
                duration_seconds: None,
                mode: "broker",
                region: &aws.region,
                role_arn: &aws.role_arn,
                role_session_name: &aws.role_session_name,
                sts_endpoint: None,
            }),
            aws_credentials: Some(CredentialProcess {
                access_key_id: &credentials.access_key_id,
                expiration: crate::clock::rfc3339(credentials.expires_at),
                secret_access_key: credentials.secret_access_key.as_str(),
                session_token: credentials.session_token.as_str(),
                version: 1,
            }),
            expires_in: (credentials.expires_at - now).max(0),
            issued_token_type: AWS_CREDENTIALS_TOKEN_TYPE,
            token_type: "N_A",
            vault: None,
        }
    }

    fn aws_worker(aws: &'a AwsWorkerCredentials, now: i64) -> Self {
        Self {
            access_token: aws.web_identity_token.expose(),
            aws: Some(AwsDetails {
                assumed_role_arn: None,
                duration_seconds: Some(aws.duration_seconds),
                mode: "worker",
                region: &aws.region,
                role_arn: &aws.role_arn,
                role_session_name: &aws.role_session_name,
                sts_endpoint: Some(aws.sts_endpoint.as_deref()),
            }),
            aws_credentials: None,
            expires_in: (aws.token_expires_at - now).max(0),
            issued_token_type: JWT_TOKEN_TYPE,
            token_type: "N_A",
            vault: None,
        }
    }
}
