//! Run-token minting: a validated request becomes the DESIGN.md §2 claim set, signed by the current key.
//!
//! The audience comes from an allow-list in server configuration and must match exactly; the
//! lifetime is capped; every free-text field is bounded. The minter is synchronous and does no I/O,
//! so it can be benchmarked on its own and reused by every path that needs a token (operator mint,
//! job credentials, exchanges).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use keyward_proto::claims::{AwsTags, Phase, RunClaims};

use super::keyring::KeyRing;
use super::signer::SignerError;
use crate::clock::SharedClock;
use crate::config::{SourceIdentity, TokensConfig};

/// Why a token was not minted. Every variant is the caller's fault except [`MintError::Signing`].
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// A field is missing or malformed.
    #[error("invalid `{field}`: {reason}")]
    InvalidField {
        /// The request field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The audience is not configured.
    #[error("audience `{0}` is not in the broker's allowed audiences")]
    AudienceNotAllowed(String),
    /// The lifetime is above the maximum.
    #[error("requested lifetime {requested}s exceeds the maximum of {maximum}s")]
    TtlTooLong {
        /// Asked for.
        requested: u64,
        /// Allowed.
        maximum: u64,
    },
    /// Signing failed.
    #[error(transparent)]
    Signing(#[from] SignerError),
}

/// What a token is for. Built from an operator request today; from a job or an exchange later.
#[derive(Debug, Clone, Default)]
pub struct MintRequest {
    /// Run ID.
    pub run_id: String,
    /// Immutable stack ID.
    pub stack_id: String,
    /// Stack name.
    pub stack: String,
    /// Phase.
    pub phase: Option<Phase>,
    /// Audience (must be allowed by configuration).
    pub audience: String,
    /// Lifetime; the configured default when `None`.
    pub ttl: Option<Duration>,
    /// Repository URL.
    pub repository: Option<String>,
    /// Commit SHA.
    pub commit_sha: Option<String>,
    /// Git ref.
    pub git_ref: Option<String>,
    /// Pull request number.
    pub pull_request: Option<u64>,
    /// Ticket.
    pub ticket: Option<String>,
    /// Who triggered the run.
    pub triggered_by: Option<String>,
    /// Who approved it.
    pub approved_by: Vec<String>,
    /// Worker pool.
    pub pool: Option<String>,
    /// Agent.
    pub agent_id: Option<String>,
}

/// A signed token string. Never printed by `Debug`; read it with [`TokenString::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct TokenString(String);

impl fmt::Debug for TokenString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenString(…)")
    }
}

impl TokenString {
    /// The compact JWS, for sending to the caller.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// A freshly signed token and what it says.
#[derive(Debug, Clone)]
pub struct MintedToken {
    /// The compact JWS.
    pub token: TokenString,
    /// Its claims.
    pub claims: RunClaims,
    /// The key that signed it.
    pub kid: String,
}

/// Mints run tokens. Cheap to share.
#[derive(Debug)]
pub struct Minter {
    issuer: String,
    rules: TokensConfig,
    keys: Arc<KeyRing>,
    clock: SharedClock,
}

const MAX_ID_LEN: usize = 128;
const MAX_TEXT_LEN: usize = 512;
const MAX_APPROVERS: usize = 16;
const AWS_TAG_VALUE_MAX: usize = 256;

impl Minter {
    /// A minter for `issuer` following `rules`.
    pub fn new(issuer: String, rules: TokensConfig, keys: Arc<KeyRing>, clock: SharedClock) -> Self {
        Self { issuer, rules, keys, clock }
    }

    /// The issuer URL (`iss`).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The configured audience allow-list.
    pub fn allowed_audiences(&self) -> &[String] {
        &self.rules.allowed_audiences
    }

    /// Validates `request` and signs its claims with the current key.
    pub fn mint(&self, request: &MintRequest) -> Result<MintedToken, MintError> {
        let claims = self.claims(request)?;
        let json = serde_json::to_vec(&claims)
            .map_err(|e| MintError::InvalidField { field: "claims", reason: e.to_string() })?;
        let signer = self.keys.signer();
        let token = signer.sign_compact(&json)?;
        Ok(MintedToken { token: TokenString(token), claims, kid: signer.kid().to_owned() })
    }

    /// Builds (and validates) the claim set without signing.
    pub fn claims(&self, request: &MintRequest) -> Result<RunClaims, MintError> {
        let run_id = identifier("run_id", &request.run_id)?;
        let stack_id = identifier("stack_id", &request.stack_id)?;
        let stack = identifier("stack", &request.stack)?;
        let phase = request
            .phase
            .ok_or(MintError::InvalidField { field: "phase", reason: "required: `plan` or `apply`".to_owned() })?;
        if !self.rules.allowed_audiences.contains(&request.audience) {
            return Err(MintError::AudienceNotAllowed(request.audience.clone()));
        }
        let ttl = request.ttl.unwrap_or(self.rules.default_ttl);
        if ttl > self.rules.max_ttl {
            return Err(MintError::TtlTooLong { requested: ttl.as_secs(), maximum: self.rules.max_ttl.as_secs() });
        }
        if ttl < Duration::from_secs(1) {
            return Err(MintError::InvalidField { field: "ttl_seconds", reason: "must be at least 1".to_owned() });
        }
        let commit_sha = request.commit_sha.as_deref().map(commit).transpose()?;
        let repository = optional_text("repository", request.repository.as_deref(), MAX_TEXT_LEN)?;
        let git_ref = optional_text("ref", request.git_ref.as_deref(), MAX_TEXT_LEN)?;
        let ticket = optional_text("ticket", request.ticket.as_deref(), MAX_ID_LEN)?;
        let triggered_by = optional_text("triggered_by", request.triggered_by.as_deref(), MAX_ID_LEN)?;
        let pool = request.pool.as_deref().map(|p| identifier("pool", p)).transpose()?;
        let agent_id = request.agent_id.as_deref().map(|a| identifier("agent_id", a)).transpose()?;
        if request.pull_request == Some(0) {
            return Err(MintError::InvalidField {
                field: "pull_request",
                reason: "must be a positive number".to_owned(),
            });
        }
        if request.approved_by.len() > MAX_APPROVERS {
            return Err(MintError::InvalidField {
                field: "approved_by",
                reason: format!("at most {MAX_APPROVERS} approvers"),
            });
        }
        let approved_by =
            request.approved_by.iter().map(|a| text("approved_by", a, MAX_ID_LEN)).collect::<Result<Vec<_>, _>>()?;

        let now = self.clock.now();
        let lifetime = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        let sub = render_subject(&self.rules.subject_template, &stack_id, &stack, phase, pool.as_deref());
        let aws_tags = self.rules.aws_session_tags.then(|| {
            aws_tags(&run_id, &stack_id, commit_sha.as_deref(), request.pull_request, ticket.as_deref(), &approved_by)
        });
        let human = match self.rules.source_identity {
            SourceIdentity::TriggeredBy => triggered_by.as_deref().or(approved_by.first().map(String::as_str)),
            SourceIdentity::FirstApprover => approved_by.first().map(String::as_str).or(triggered_by.as_deref()),
            SourceIdentity::None => None,
        }
        .and_then(source_identity);
        Ok(RunClaims {
            iss: self.issuer.clone(),
            sub,
            aud: request.audience.clone(),
            iat: now,
            nbf: now,
            exp: now.saturating_add(lifetime),
            jti: uuid::Uuid::now_v7().to_string(),
            run_id,
            stack_id,
            stack,
            phase,
            scope: phase.scope(),
            repository,
            commit_sha,
            git_ref,
            pull_request: request.pull_request,
            ticket,
            triggered_by,
            approved_by,
            pool,
            agent_id,
            aws_tags,
            aws_source_identity: human,
        })
    }
}

fn render_subject(template: &str, stack_id: &str, stack: &str, phase: Phase, pool: Option<&str>) -> String {
    template
        .replace("{stack_id}", stack_id)
        .replace("{stack}", stack)
        .replace("{phase}", phase.as_str())
        .replace("{scope}", if phase == Phase::Plan { "read" } else { "write" })
        .replace("{pool}", pool.unwrap_or("-"))
}

fn identifier(field: &'static str, value: &str) -> Result<String, MintError> {
    let bad = |reason: &str| MintError::InvalidField { field, reason: reason.to_owned() };
    if value.is_empty() {
        return Err(bad("required"));
    }
    if value.len() > MAX_ID_LEN {
        return Err(bad("longer than 128 bytes"));
    }
    if !value.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:@/+".contains(c)) {
        return Err(bad("may only contain letters, digits and - _ . : @ / +"));
    }
    Ok(value.to_owned())
}

fn text(field: &'static str, value: &str, max: usize) -> Result<String, MintError> {
    let bad = |reason: String| MintError::InvalidField { field, reason };
    if value.trim().is_empty() {
        return Err(bad("must not be empty".to_owned()));
    }
    if value.len() > max {
        return Err(bad(format!("longer than {max} bytes")));
    }
    if value.chars().any(char::is_control) {
        return Err(bad("must not contain control characters".to_owned()));
    }
    Ok(value.to_owned())
}

fn optional_text(field: &'static str, value: Option<&str>, max: usize) -> Result<Option<String>, MintError> {
    value.map(|v| text(field, v, max)).transpose()
}

fn commit(value: &str) -> Result<String, MintError> {
    let valid = (7..=64).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_hexdigit());
    if !valid {
        return Err(MintError::InvalidField {
            field: "commit_sha",
            reason: "expected 7 to 64 hexadecimal characters".to_owned(),
        });
    }
    Ok(value.to_ascii_lowercase())
}

/// Session tags in STS's shape. Values are reduced to the characters STS accepts
/// (`[\p{L}\p{Z}\p{N}_.:/=+\-@]`, at most 256) rather than failing the whole exchange.
fn aws_tags(
    run_id: &str,
    stack_id: &str,
    commit_sha: Option<&str>,
    pull_request: Option<u64>,
    ticket: Option<&str>,
    approvers: &[String],
) -> AwsTags {
    let mut tags = BTreeMap::new();
    let mut put = |key: &str, value: &str| {
        let clean: String = value
            .chars()
            .map(|c| if c.is_alphanumeric() || c.is_whitespace() || "_.:/=+-@".contains(c) { c } else { '_' })
            .take(AWS_TAG_VALUE_MAX)
            .collect();
        if !clean.trim().is_empty() {
            tags.insert(key.to_owned(), vec![clean]);
        }
    };
    put("run", run_id);
    put("stack", stack_id);
    if let Some(sha) = commit_sha {
        put("commit", sha);
    }
    if let Some(pr) = pull_request {
        put("pr", &pr.to_string());
    }
    if let Some(ticket) = ticket {
        put("ticket", ticket);
    }
    if !approvers.is_empty() {
        put("approver", &approvers.join(" "));
    }
    let transitive_tag_keys = tags.keys().cloned().collect();
    AwsTags { principal_tags: tags, transitive_tag_keys }
}

/// STS source identity: 2–64 characters of `[\w+=,.@-]`.
fn source_identity(human: &str) -> Option<String> {
    let clean: String = human
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "_+=,.@-".contains(c) { c } else { '-' })
        .take(64)
        .collect();
    (clean.len() >= 2).then_some(clean)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_template_renders_immutable_ids() {
        let sub = render_subject("stack:{stack_id}:phase:{phase}", "stk_1", "network", Phase::Apply, None);
        assert_eq!(sub, "stack:stk_1:phase:apply");
    }

    #[test]
    fn tags_follow_sts_shape_and_character_rules() {
        let tags = aws_tags("run-1", "stk", Some("abc1234"), Some(42), Some("OPS#12"), &["bob".into(), "carol".into()]);
        assert_eq!(tags.principal_tags["run"], vec!["run-1".to_owned()]);
        assert_eq!(tags.principal_tags["pr"], vec!["42".to_owned()]);
        assert_eq!(tags.principal_tags["ticket"], vec!["OPS_12".to_owned()], "`#` is not allowed by STS");
        assert_eq!(tags.principal_tags["approver"], vec!["bob carol".to_owned()]);
        assert!(tags.principal_tags.values().all(|v| v.len() == 1));
        assert_eq!(tags.transitive_tag_keys.len(), tags.principal_tags.len());
    }

    #[test]
    fn source_identity_is_sanitized_or_omitted() {
        assert_eq!(source_identity("alice@example.com").as_deref(), Some("alice@example.com"));
        assert_eq!(source_identity("Jane Doe").as_deref(), Some("Jane-Doe"));
        assert_eq!(source_identity("x"), None);
        assert_eq!(source_identity(&"a".repeat(100)).map(|s| s.len()), Some(64));
    }

    #[test]
    fn field_validation() {
        assert!(identifier("run_id", "run-01J/x").is_ok());
        assert!(identifier("run_id", "").is_err());
        assert!(identifier("run_id", "has space").is_err());
        assert!(identifier("run_id", &"a".repeat(129)).is_err());
        assert!(commit("ABCDEF1").is_ok_and(|c| c == "abcdef1"));
        assert!(commit("xyz1234").is_err());
        assert!(commit("abc").is_err());
        assert!(text("ticket", "line\nbreak", 10).is_err());
    }
}

#[cfg(test)]
mod minting {
    use super::*;
    use crate::clock::ManualClock;
    use crate::config::DatabaseLocation;
    use crate::identity::SigningAlgorithm;
    use crate::identity::kek::Kek;
    use crate::identity::keyring::KeySettings;
    use crate::store::Store;

    const T0: i64 = 1_800_000_000;

    async fn minter(dir: &tempfile::TempDir, rules: TokensConfig) -> Result<Minter, Box<dyn std::error::Error>> {
        let clock = ManualClock::at(T0);
        let store = Store::open(&DatabaseLocation::Sqlite(dir.path().join("m.db"))).await?;
        let settings = KeySettings {
            algorithm: SigningAlgorithm::ES256,
            rotation_period: Duration::from_secs(86_400),
            jwks_max_age: Duration::from_secs(300),
            clock_skew: Duration::from_secs(30),
        };
        let keys = KeyRing::load(store, Kek::generate(), Arc::new(clock.clone()), settings).await?;
        Ok(Minter::new("https://kw.example".into(), rules, Arc::new(keys), Arc::new(clock)))
    }

    fn rules() -> TokensConfig {
        TokensConfig { allowed_audiences: vec!["vault".into(), "sts.amazonaws.com".into()], ..TokensConfig::default() }
    }

    fn request() -> MintRequest {
        MintRequest {
            run_id: "run-7".into(),
            stack_id: "stk-1".into(),
            stack: "network".into(),
            phase: Some(Phase::Apply),
            audience: "vault".into(),
            triggered_by: Some("alice".into()),
            approved_by: vec!["bob".into()],
            ..MintRequest::default()
        }
    }

    #[tokio::test]
    async fn claims_follow_the_contract() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let minter = minter(&dir, rules()).await?;
        let minted = minter.mint(&request())?;
        let c = &minted.claims;
        assert_eq!(
            (c.iss.as_str(), c.aud.as_str(), c.sub.as_str()),
            ("https://kw.example", "vault", "stack:stk-1:phase:apply")
        );
        assert_eq!((c.iat, c.nbf, c.exp), (T0, T0, T0 + 300), "default lifetime is 5 minutes");
        assert_eq!(c.scope, keyward_proto::claims::Scope::Write);
        assert_eq!(c.aws_source_identity.as_deref(), Some("alice"));
        assert!(uuid::Uuid::parse_str(&c.jti).is_ok_and(|u| u.get_version_num() == 7));
        assert_ne!(minter.mint(&request())?.claims.jti, c.jti, "every token has its own jti");
        assert_eq!(minted.kid, minter.keys.signer().kid());
        assert_eq!(minted.token.expose().split('.').count(), 3);
        assert!(!format!("{minted:?}").contains(minted.token.expose()), "Debug never prints the token");
        Ok(())
    }

    #[tokio::test]
    async fn audience_allow_list_and_ttl_cap_are_enforced() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let minter = minter(&dir, TokensConfig { max_ttl: Duration::from_secs(600), ..rules() }).await?;
        let wrong = MintRequest { audience: "vault ".into(), ..request() };
        assert!(matches!(minter.mint(&wrong), Err(MintError::AudienceNotAllowed(_))), "exact match only");
        let long = MintRequest { ttl: Some(Duration::from_secs(601)), ..request() };
        assert!(matches!(minter.mint(&long), Err(MintError::TtlTooLong { requested: 601, maximum: 600 })));
        let at_cap = MintRequest { ttl: Some(Duration::from_secs(600)), ..request() };
        assert_eq!(minter.mint(&at_cap)?.claims.exp, T0 + 600);
        let no_phase = MintRequest { phase: None, ..request() };
        assert!(matches!(minter.mint(&no_phase), Err(MintError::InvalidField { field: "phase", .. })));
        Ok(())
    }
}
