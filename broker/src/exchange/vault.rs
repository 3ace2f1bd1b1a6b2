//! Vault / OpenBao targets: log in to the JWT auth method with the minted token, then read the
//! configured KV v2 secrets with the resulting Vault token.
//!
//! The broker keeps no Vault credentials of its own: the minted, target-audience JWT is the login.
//!
//! What the exchange decided is what Vault issues (DESIGN.md §8.12). JWT login takes no TTL (the
//! role's `token_ttl` decides), so a token that would outlive the exchange's [`Lifetime`] is
//! revoked at once and refused; certificates are asked for with a TTL no longer than it. A token
//! the caller does not receive (`return_token = false`) is revoked (`revoke-self`) as soon as the
//! reads are done, or when any of them fails, or in the background if the request is dropped
//! half-way; a revocation that fails is logged with the token's accessor and counted
//! (`keyward_vault_token_revocation_failures_total`), never with the token.
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
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use serde_json::Value;
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;
use zeroize::Zeroizing;

use super::enforce::Lifetime;
use crate::metrics::Metrics;
use crate::targets::VaultTarget;

/// What Vault issued. The token never prints.
pub struct VaultIssued {
    /// The Vault token (secret), when the target returns it; else it was revoked after the reads.
    pub token: Option<Zeroizing<String>>,
    /// What became of the token.
    pub fate: TokenFate,
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
            .field("token", &self.token.as_ref().map(|_| "…"))
            .field("fate", &self.fate)
            .field("accessor", &self.accessor)
            .field("lease_duration", &self.lease_duration)
            .field("policies", &self.policies)
            .field("secrets", &self.secrets.iter().map(|(m, p, _)| format!("{m}/{p}")).collect::<Vec<_>>())
            .finish()
    }
}

/// What the broker did with the Vault token it logged in with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenFate {
    /// Handed to the caller (`return_token = true`).
    Returned,
    /// Revoked (`auth/token/revoke-self`).
    Revoked,
    /// Not revoked: the revocation failed (logged and counted); it lives until its TTL ends.
    RevocationFailed,
    /// A batch token, which Vault cannot revoke; it lives until its TTL ends.
    Batch,
}

impl TokenFate {
    /// The name recorded in audit entries.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Returned => "returned",
            Self::Revoked => "revoked",
            Self::RevocationFailed => "revocation_failed",
            Self::Batch => "batch_expires",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Returned => "the token was returned",
            Self::Revoked => "the token was revoked",
            Self::RevocationFailed => "the token could not be revoked (see the broker log) and expires on its own",
            Self::Batch => "the batch token cannot be revoked and expires on its own",
        }
    }
}

/// Why Vault gave nothing.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The role's token would outlive what the exchange allows; the token was not handed out.
    #[error("{}", too_long(.role, *.lease_duration, .allowed, *.fate))]
    Lifetime {
        /// The JWT role logged in to.
        role: String,
        /// The token's TTL as Vault issued it (0: it never expires).
        lease_duration: u64,
        /// What the exchange allows, and who said so.
        allowed: Lifetime,
        /// The token's accessor (not secret), for the record.
        accessor: String,
        /// What became of the token.
        fate: TokenFate,
    },
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

fn too_long(role: &str, lease_duration: u64, allowed: &Lifetime, fate: TokenFate) -> String {
    let lives = if lease_duration == 0 {
        "tokens that never expire (the role sets no token_ttl)".to_owned()
    } else {
        format!("tokens that live {lease_duration}s (its token_ttl)")
    };
    format!(
        "Vault role `{role}` issues {lives}, longer than the {allowed} this exchange allows; {}, and nothing was \
         issued: set the role's token_ttl and token_max_ttl to at most {}s",
        fate.describe(),
        allowed.seconds()
    )
}

/// Attempts of a retryable call (login, KV read, revocation).
pub const ATTEMPTS: u32 = 3;
/// Deadline of one attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadline of the whole issuance (login and reads), inside the request's own deadline.
const ISSUE_DEADLINE: Duration = Duration::from_secs(12);
/// Deadline of a revocation, apart from the issuance's (it also runs after a failed one).
const REVOKE_DEADLINE: Duration = Duration::from_secs(8);
/// Wait before the second attempt; doubled for each later one.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

fn client(address: &str, token: &str) -> Result<VaultClient, VaultError> {
    let settings = VaultClientSettingsBuilder::default()
        .address(address)
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
                VaultError::Unavailable(reason) => last = VaultError::Unavailable(format!("{what}: {reason}")),
                final_answer => return Err(final_answer),
            },
            Err(_) => last = VaultError::Unavailable(format!("{what}: no answer within {}s", budget.as_secs_f32())),
        }
        tracing::debug!(what, attempt = number, "Vault call failed");
    }
    Err(last)
}

/// Logs in with `jwt` and performs the target's reads; nothing it issues outlives `lifetime`.
pub async fn issue(
    target: &VaultTarget,
    jwt: &str,
    lifetime: Lifetime,
    metrics: &Arc<Metrics>,
) -> Result<VaultIssued, VaultError> {
    let deadline = Instant::now() + ISSUE_DEADLINE;
    let anonymous = client(&target.address, "")?;
    let auth = attempt("login", ATTEMPTS, deadline, || {
        vaultrs::auth::oidc::login(&anonymous, &target.auth_mount, jwt, Some(target.role.clone()))
    })
    .await?;
    let session = Session {
        address: target.address.clone(),
        token: Some(Zeroizing::new(auth.client_token)),
        accessor: auth.accessor.clone(),
        batch: auth.token_type == "batch",
        metrics: Arc::clone(metrics),
    };
    // JWT login takes no TTL: the role decided it. Too long is refused, never handed out.
    if auth.lease_duration == 0 || auth.lease_duration > lifetime.seconds() {
        let fate = session.end().await;
        return Err(VaultError::Lifetime {
            role: target.role.clone(),
            lease_duration: auth.lease_duration,
            allowed: lifetime,
            accessor: auth.accessor,
            fate,
        });
    }
    let (secrets, certificates) = match read(target, &session, lifetime, deadline).await {
        Ok(read) => read,
        Err(error) => {
            session.end().await;
            return Err(error);
        }
    };
    let (token, fate) =
        if target.return_token { (Some(session.hand_out()), TokenFate::Returned) } else { (None, session.end().await) };
    Ok(VaultIssued {
        token,
        fate,
        certificates,
        accessor: auth.accessor,
        lease_duration: auth.lease_duration,
        renewable: auth.renewable,
        policies: auth.policies,
        secrets,
    })
}

/// The target's KV reads and PKI issues, with the session's token.
async fn read(
    target: &VaultTarget,
    session: &Session,
    lifetime: Lifetime,
    deadline: Instant,
) -> Result<(Vec<(String, String, Value)>, Vec<IssuedCertificate>), VaultError> {
    let authenticated = client(&target.address, session.secret())?;
    let mut secrets = Vec::with_capacity(target.kv_reads.len());
    for read in &target.kv_reads {
        let data: Value =
            attempt("KV read", ATTEMPTS, deadline, || vaultrs::kv2::read(&authenticated, &read.mount, &read.path))
                .await?;
        secrets.push((read.mount.clone(), read.path.clone(), data));
    }
    let mut certificates = Vec::with_capacity(target.pki_issues.len());
    for issue in &target.pki_issues {
        let ttl = certificate_ttl(issue.ttl.as_deref(), lifetime);
        let cert = attempt("PKI issue", 1, deadline, || async {
            let mut options = vaultrs::api::pki::requests::GenerateCertificateRequest::builder();
            options.common_name(issue.common_name.clone());
            options.ttl(ttl.clone());
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
    Ok((secrets, certificates))
}

/// A certificate's `ttl`: the configured one, lowered to `lifetime`; `lifetime` when none is
/// configured, or when it is not a duration the broker can read (Vault's PKI role still caps it
/// with its own `max_ttl`).
fn certificate_ttl(configured: Option<&str>, lifetime: Lifetime) -> String {
    let cap = lifetime.seconds();
    let configured = configured.and_then(|text| {
        let text = text.trim();
        text.parse::<u64>().ok().or_else(|| humantime::parse_duration(text).ok().map(|d| d.as_secs()))
    });
    format!("{}s", configured.map_or(cap, |seconds| seconds.min(cap)))
}

/// The Vault token the broker logged in with, until it is handed out or its end is settled.
/// Dropped before either (the request was cancelled half-way), it is revoked in the background.
struct Session {
    address: String,
    /// `None` once handed out or ended.
    token: Option<Zeroizing<String>>,
    accessor: String,
    batch: bool,
    metrics: Arc<Metrics>,
}

impl Session {
    fn secret(&self) -> &str {
        self.token.as_ref().map_or("", |token| token.as_str())
    }

    /// The token, for the caller: it is no longer the broker's to revoke.
    fn hand_out(mut self) -> Zeroizing<String> {
        self.token.take().unwrap_or_default()
    }

    /// Revokes the token (a batch token cannot be: it expires on its own).
    async fn end(mut self) -> TokenFate {
        if self.batch {
            self.token = None;
            return TokenFate::Batch;
        }
        // The token stays in `self` until the revocation has an answer, so a cancellation
        // half-way still revokes it, from `drop`.
        let fate = revoke(&self.address, self.secret(), &self.accessor, &self.metrics).await;
        self.token = None;
        fate
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let Some(token) = self.token.take() else { return };
        if self.batch {
            return;
        }
        let (address, accessor, metrics) = (self.address.clone(), self.accessor.clone(), Arc::clone(&self.metrics));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { revoke(&address, &token, &accessor, &metrics).await });
        } else {
            tracing::warn!(accessor = %self.accessor, "a Vault token the broker did not hand out was left to expire");
            self.metrics.vault_revocation_failed();
        }
    }
}

/// `auth/token/revoke-self` with `token`; a failure is logged with the accessor and counted.
async fn revoke(address: &str, token: &str, accessor: &str, metrics: &Metrics) -> TokenFate {
    let deadline = Instant::now() + REVOKE_DEADLINE;
    let revoked = match client(address, token) {
        Ok(client) => attempt("revoke", ATTEMPTS, deadline, || vaultrs::token::revoke_self(&client)).await,
        Err(error) => Err(error),
    };
    match revoked {
        Ok(()) => TokenFate::Revoked,
        Err(error) => {
            tracing::warn!(
                accessor,
                %error,
                "could not revoke a Vault token the broker did not hand out; it stays valid until its TTL ends \
                 (revoke it with `bao token revoke -accessor ACCESSOR`)"
            );
            metrics.vault_revocation_failed();
            TokenFate::RevocationFailed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::enforce::Cap;

    #[test]
    fn certificates_never_outlive_the_exchange() {
        let lifetime = Lifetime { duration: Duration::from_secs(300), cap: Cap::Policy };
        assert_eq!(certificate_ttl(None, lifetime), "300s");
        assert_eq!(certificate_ttl(Some("1h"), lifetime), "300s");
        assert_eq!(certificate_ttl(Some("2m"), lifetime), "120s");
        assert_eq!(certificate_ttl(Some("90"), lifetime), "90s", "bare seconds, as Vault reads them");
        assert_eq!(certificate_ttl(Some("1.5 fortnights"), lifetime), "300s", "unreadable: the cap");
    }

    #[test]
    fn a_refusal_names_the_role_its_ttl_and_the_cap() {
        let allowed = Lifetime { duration: Duration::from_secs(300), cap: Cap::Policy };
        let error = VaultError::Lifetime {
            role: "network".to_owned(),
            lease_duration: 600,
            allowed,
            accessor: "acc".to_owned(),
            fate: TokenFate::Revoked,
        };
        assert_eq!(
            error.to_string(),
            "Vault role `network` issues tokens that live 600s (its token_ttl), longer than the 300s (the policy's \
             ttl_seconds) this exchange allows; the token was revoked, and nothing was issued: set the role's \
             token_ttl and token_max_ttl to at most 300s"
        );
    }
}
