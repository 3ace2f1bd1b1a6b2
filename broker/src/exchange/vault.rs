//! Vault / OpenBao targets: log in to the JWT auth method with the minted token, then read the
//! configured KV v2 secrets with the resulting Vault token.
//!
//! The broker keeps no Vault credentials of its own: the minted, target-audience JWT is the login.
//! Failures are classified like STS's: Vault refusing (403, bad role or claims) is the caller's
//! problem; Vault sealed, down or failing is reported as unavailable. Nothing is cached.
//!
//! Like the STS call: each attempt has its own deadline, the whole issuance has one too, and
//! unavailability is retried at most [`ATTEMPTS`] times with a short backoff. A refusal is never
//! retried. A PKI issue is never retried either: it is not idempotent (a retry after a lost answer
//! would mint a second certificate). A retried login after a lost answer can leave one unused
//! Vault token behind; its TTL bounds it and its accessor is in Vault's own audit log.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use serde_json::Value;
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;
use zeroize::Zeroizing;

use crate::config::VaultTarget;

/// What Vault issued. The token never prints.
pub struct VaultIssued {
    /// The Vault token (secret).
    pub token: Zeroizing<String>,
    /// Non-secret token accessor (recorded, usable to revoke or look up the token).
    pub accessor: String,
    /// Token lifetime, seconds.
    pub lease_duration: u64,
    /// Whether the token can be renewed.
    pub renewable: bool,
    /// Policies attached to the token.
    pub policies: Vec<String>,
    /// `(mount, path, data)` of each KV secret read (secret values).
    pub secrets: Vec<(String, String, Value)>,
    /// Certificates issued (their private keys are secret).
    pub certificates: Vec<IssuedCertificate>,
}

/// A certificate from a PKI role. The private key never prints.
pub struct IssuedCertificate {
    /// The PKI mount.
    pub mount: String,
    /// The role.
    pub role: String,
    /// Non-secret; recorded.
    pub serial_number: String,
    /// PEM certificate.
    pub certificate: String,
    /// PEM issuing CA.
    pub issuing_ca: String,
    /// PEM private key (secret).
    pub private_key: Zeroizing<String>,
    /// Expiry, seconds since the epoch, when Vault says.
    pub expiration: Option<u64>,
}

impl fmt::Debug for IssuedCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCertificate")
            .field("mount", &self.mount)
            .field("role", &self.role)
            .field("serial_number", &self.serial_number)
            .field("private_key", &"…")
            .finish_non_exhaustive()
    }
}

impl VaultIssued {
    /// What the token read, as the caller receives it: `{"secrets": […], "certificates": […]}`.
    /// Holds secret values: it goes to the caller, never to a log or a record.
    pub fn material(&self) -> Value {
        let secrets: Vec<Value> = self
            .secrets
            .iter()
            .map(|(mount, path, data)| serde_json::json!({ "mount": mount, "path": path, "data": data }))
            .collect();
        let certificates: Vec<Value> = self
            .certificates
            .iter()
            .map(|c| {
                serde_json::json!({
                    "mount": c.mount, "role": c.role, "serial_number": c.serial_number,
                    "certificate": c.certificate, "issuing_ca": c.issuing_ca,
                    "private_key": c.private_key.as_str(), "expiration": c.expiration,
                })
            })
            .collect();
        serde_json::json!({ "secrets": secrets, "certificates": certificates })
    }

    /// Whether it read anything besides the token.
    pub fn has_material(&self) -> bool {
        !self.secrets.is_empty() || !self.certificates.is_empty()
    }
}

impl fmt::Debug for VaultIssued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultIssued")
            .field("token", &"…")
            .field("accessor", &self.accessor)
            .field("lease_duration", &self.lease_duration)
            .field("policies", &self.policies)
            .field("secrets", &self.secrets.iter().map(|(m, p, _)| format!("{m}/{p}")).collect::<Vec<_>>())
            .finish()
    }
}

/// Why Vault gave nothing.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// Vault refused (role, bound claims, policy): retrying will not help.
    #[error("Vault refused the request: HTTP {code}: {message}")]
    Refused {
        /// HTTP status.
        code: u16,
        /// Vault's errors.
        message: String,
    },
    /// Vault is sealed, down or failing.
    #[error("Vault is unavailable: {0}")]
    Unavailable(String),
}

/// Attempts of a retryable call (login, KV read).
pub const ATTEMPTS: u32 = 3;
/// Deadline of one attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of the whole issuance (login and reads), inside the request's own deadline.
const ISSUE_DEADLINE: Duration = Duration::from_secs(12);
/// Wait before the second attempt; doubled for each later one.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

fn client(target: &VaultTarget, token: &str) -> Result<VaultClient, VaultError> {
    let settings = VaultClientSettingsBuilder::default()
        .address(&target.address)
        .token(token)
        .timeout(Some(ATTEMPT_TIMEOUT))
        .build()
        .map_err(|e| VaultError::Unavailable(format!("invalid client settings: {e}")))?;
    VaultClient::new(settings).map_err(|e| VaultError::Unavailable(format!("cannot build the client: {e}")))
}

fn classify(error: ClientError) -> VaultError {
    match error {
        ClientError::APIError { code, errors } if code < 500 => {
            VaultError::Refused { code, message: errors.join("; ").chars().take(300).collect() }
        }
        ClientError::APIError { code, errors } => {
            let sealed = errors.iter().any(|e| e.contains("sealed"));
            VaultError::Unavailable(if sealed { format!("sealed (HTTP {code})") } else { format!("HTTP {code}") })
        }
        other => VaultError::Unavailable(other.to_string().chars().take(200).collect()),
    }
}

/// Runs `call` up to `attempts` times while Vault is unavailable, each attempt within its own
/// deadline and all of them before `deadline`.
async fn attempt<T, F, Fut>(what: &str, attempts: u32, deadline: Instant, mut call: F) -> Result<T, VaultError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let mut backoff = FIRST_BACKOFF;
    let mut last = VaultError::Unavailable(format!("{what}: no attempt fit in the deadline"));
    for number in 1..=attempts {
        if number > 1 {
            if Instant::now() + backoff >= deadline {
                break;
            }
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
        let budget = deadline.saturating_duration_since(Instant::now()).min(ATTEMPT_TIMEOUT);
        match tokio::time::timeout(budget, call()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(error)) => match classify(error) {
                refused @ VaultError::Refused { .. } => return Err(refused),
                VaultError::Unavailable(reason) => last = VaultError::Unavailable(format!("{what}: {reason}")),
            },
            Err(_) => last = VaultError::Unavailable(format!("{what}: no answer within {}s", budget.as_secs_f32())),
        }
        tracing::debug!(what, attempt = number, "Vault call failed");
    }
    Err(last)
}

/// Logs in with `jwt` and performs the target's reads.
pub async fn issue(target: &VaultTarget, jwt: &str) -> Result<VaultIssued, VaultError> {
    let deadline = Instant::now() + ISSUE_DEADLINE;
    let anonymous = client(target, "")?;
    let auth = attempt("login", ATTEMPTS, deadline, || {
        vaultrs::auth::oidc::login(&anonymous, &target.auth_mount, jwt, Some(target.role.clone()))
    })
    .await?;
    let token = Zeroizing::new(auth.client_token);
    let authenticated = client(target, &token)?;
    let mut secrets = Vec::with_capacity(target.kv_reads.len());
    for read in &target.kv_reads {
        let data: Value =
            attempt("KV read", ATTEMPTS, deadline, || vaultrs::kv2::read(&authenticated, &read.mount, &read.path))
                .await?;
        secrets.push((read.mount.clone(), read.path.clone(), data));
    }
    let mut certificates = Vec::with_capacity(target.pki_issues.len());
    for issue in &target.pki_issues {
        let cert = attempt("PKI issue", 1, deadline, || async {
            let mut options = vaultrs::api::pki::requests::GenerateCertificateRequest::builder();
            options.common_name(issue.common_name.clone());
            if let Some(ttl) = &issue.ttl {
                options.ttl(ttl.clone());
            }
            vaultrs::pki::cert::generate(&authenticated, &issue.mount, &issue.role, Some(&mut options)).await
        })
        .await?;
        certificates.push(IssuedCertificate {
            mount: issue.mount.clone(),
            role: issue.role.clone(),
            serial_number: cert.serial_number,
            certificate: cert.certificate,
            issuing_ca: cert.issuing_ca,
            private_key: Zeroizing::new(cert.private_key),
            expiration: cert.expiration,
        });
    }
    Ok(VaultIssued {
        certificates,
        token,
        accessor: auth.accessor,
        lease_duration: auth.lease_duration,
        renewable: auth.renewable,
        policies: auth.policies,
        secrets,
    })
}
