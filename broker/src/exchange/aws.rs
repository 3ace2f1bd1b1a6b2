//! AWS STS `AssumeRoleWithWebIdentity`, called by the broker ("broker" mode targets).
//!
//! The call is unsigned: the web-identity token is the credential, so the broker holds no AWS
//! keys. Retries are bounded (3 attempts) and every call has a deadline; failures are classified
//! as STS refusing (the trust policy or the token: the caller's problem, never retried) or STS
//! unavailable (throttling, 5xx, timeouts: retried, then reported). Nothing falls back to cached
//! or long-lived credentials.

use std::fmt;
use std::time::Duration;

use aws_sdk_sts::config::retry::RetryConfig;
use aws_sdk_sts::config::timeout::TimeoutConfig;
use aws_sdk_sts::config::{BehaviorVersion, Region};
use aws_sdk_sts::error::{ProvideErrorMetadata as _, SdkError};
use aws_sdk_sts::operation::assume_role_with_web_identity::AssumeRoleWithWebIdentityError;
use zeroize::Zeroizing;

use crate::targets::AwsTarget;

/// Temporary AWS credentials. The secret parts never print.
pub struct AwsCredentials {
    /// Non-secret; recorded, and what CloudTrail shows.
    pub access_key_id: String,
    /// Secret.
    pub secret_access_key: Zeroizing<String>,
    /// Secret.
    pub session_token: Zeroizing<String>,
    /// Expiry, seconds since the epoch.
    pub expires_at: i64,
    /// `arn:aws:sts::<account>:assumed-role/<role>/<session>`.
    pub assumed_role_arn: String,
}

impl fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"…")
            .field("session_token", &"…")
            .field("expires_at", &self.expires_at)
            .field("assumed_role_arn", &self.assumed_role_arn)
            .finish()
    }
}

/// Why STS gave no credentials.
#[derive(Debug, thiserror::Error)]
pub enum StsError {
    /// STS refused (trust policy, token, session policy): retrying will not help.
    #[error("AWS STS refused the request: {code}: {message}")]
    Refused {
        /// STS's error code.
        code: String,
        /// STS's message.
        message: String,
    },
    /// STS could not be reached or failed (after retries).
    #[error("AWS STS is unavailable: {0}")]
    Unavailable(String),
}

/// One STS call's parameters.
pub struct AssumeRole<'a> {
    /// The target.
    pub target: &'a AwsTarget,
    /// `RoleSessionName`.
    pub session_name: &'a str,
    /// The web-identity token (never logged).
    pub web_identity_token: &'a str,
    /// `DurationSeconds`.
    pub duration: Duration,
    /// Inline session policy from the `keyward.credentials` decision.
    pub session_policy: Option<String>,
}

impl fmt::Debug for AssumeRole<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AssumeRole")
            .field("role_arn", &self.target.role_arn)
            .field("session_name", &self.session_name)
            .field("web_identity_token", &"…")
            .field("duration", &self.duration)
            .field("session_policy", &self.session_policy.is_some())
            .finish()
    }
}

/// Calls `AssumeRoleWithWebIdentity`.
pub async fn assume_role(call: AssumeRole<'_>) -> Result<AwsCredentials, StsError> {
    let mut config = aws_sdk_sts::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(call.target.region.clone()))
        .retry_config(RetryConfig::standard().with_max_attempts(3))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                .operation_attempt_timeout(Duration::from_secs(5))
                .operation_timeout(Duration::from_secs(12))
                .build(),
        );
    if let Some(endpoint) = &call.target.sts_endpoint {
        config = config.endpoint_url(endpoint);
    }
    let client = aws_sdk_sts::Client::from_conf(config.build());
    let duration = i32::try_from(call.duration.as_secs()).unwrap_or(i32::MAX);
    let output = client
        .assume_role_with_web_identity()
        .role_arn(&call.target.role_arn)
        .role_session_name(call.session_name)
        .web_identity_token(call.web_identity_token)
        .duration_seconds(duration)
        .set_policy(call.session_policy)
        .send()
        .await
        .map_err(classify)?;
    let credentials =
        output.credentials().ok_or_else(|| StsError::Unavailable("the response carried no credentials".to_owned()))?;
    Ok(AwsCredentials {
        access_key_id: credentials.access_key_id().to_owned(),
        secret_access_key: Zeroizing::new(credentials.secret_access_key().to_owned()),
        session_token: Zeroizing::new(credentials.session_token().to_owned()),
        expires_at: credentials.expiration().secs(),
        assumed_role_arn: output.assumed_role_user().map(|u| u.arn().to_owned()).unwrap_or_default(),
    })
}

fn classify(error: SdkError<AssumeRoleWithWebIdentityError>) -> StsError {
    match &error {
        SdkError::ServiceError(service) => {
            let inner = service.err();
            let status = service.raw().status().as_u16();
            let code = inner.code().unwrap_or("Unknown").to_owned();
            let message = inner.message().unwrap_or_default().chars().take(300).collect::<String>();
            let transient = matches!(inner, AssumeRoleWithWebIdentityError::IdpCommunicationErrorException(_))
                || status >= 500
                || code == "Throttling";
            if transient {
                StsError::Unavailable(format!("{code} (HTTP {status}) after retries"))
            } else {
                StsError::Refused { code, message }
            }
        }
        SdkError::TimeoutError(_) => StsError::Unavailable("no answer before the deadline".to_owned()),
        SdkError::DispatchFailure(_) => StsError::Unavailable("cannot connect".to_owned()),
        SdkError::ResponseError(_) => StsError::Unavailable("malformed response".to_owned()),
        _ => StsError::Unavailable("request could not be built or sent".to_owned()),
    }
}
