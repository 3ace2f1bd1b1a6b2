//! Run-token minting: a validated request becomes the DESIGN.md §2 claim set, signed by the current key.
//!
//! The audience comes from an allow-list in server configuration and must match exactly; the
//! lifetime is capped; every free-text field is bounded. The minter is synchronous and does no I/O
//! (the signing key comes in through [`CurrentKey`]), so it can be benchmarked and tested on its
//! own and reused by every path that needs a token (operator mint, job credentials, exchanges).
//! What it returns is a [`PendingToken`]: signed, but not handed out before it is on record.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use keyward_proto::claims::{AwsTags, RunChain, RunClaims};

use super::pending::{MintedToken, PendingToken, TokenString};
use super::rules::{MintRules, SourceIdentity};
use super::signer::{Signer, SignerError};
use crate::clock::SharedClock;

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

/// What a token is for: a run's chain of custody, who it is for, and how long it lives. Built
/// from an operator request (`POST /v1/run-tokens`) or an exchange's subject.
#[derive(Debug, Clone)]
pub struct MintRequest {
    /// The run's chain of custody; its `approved_by` comes from recorded reviews, never the run's
    /// author.
    pub run: RunChain,
    /// Audience (must be allowed by configuration).
    pub audience: String,
    /// Lifetime; the configured default when `None`.
    pub ttl: Option<Duration>,
    /// Worker pool.
    pub pool: Option<String>,
    /// Agent.
    pub agent_id: Option<String>,
    /// Which AWS session tags to emit (by key); `None` follows `tokens.aws_session_tags`.
    pub aws_tag_keys: Option<Vec<String>>,
    /// Who becomes the AWS source identity; `None` follows `tokens.source_identity`.
    pub source_identity: Option<SourceIdentity>,
}

impl MintRequest {
    /// A token about `run` for `audience`, with the configured defaults for everything else.
    pub fn new(run: RunChain, audience: impl Into<String>) -> Self {
        Self {
            run,
            audience: audience.into(),
            ttl: None,
            pool: None,
            agent_id: None,
            aws_tag_keys: None,
            source_identity: None,
        }
    }
}

/// The AWS session-tag keys Keyward can emit.
pub const AWS_TAG_KEYS: &[&str] = &["run", "stack", "commit", "pr", "ticket", "approver"];

/// Where the minter gets the key that signs now: the DB-backed key ring (`keys::KeyRing`), which
/// rotates it, or one [`FixedKey`].
pub trait CurrentKey: fmt::Debug + Send + Sync {
    /// The key that signs new tokens.
    fn signer(&self) -> Arc<Signer>;
}

/// One key that never rotates: for benchmarks, tests and tools that sign with a given key.
#[derive(Debug, Clone)]
pub struct FixedKey(Arc<Signer>);

impl FixedKey {
    /// Signs with `signer`.
    pub fn new(signer: Signer) -> Self {
        Self(Arc::new(signer))
    }
}

impl CurrentKey for FixedKey {
    fn signer(&self) -> Arc<Signer> {
        Arc::clone(&self.0)
    }
}

/// Mints run tokens. Cheap to share.
#[derive(Debug)]
pub struct Minter {
    issuer: String,
    rules: MintRules,
    keys: Arc<dyn CurrentKey>,
    clock: SharedClock,
}

const MAX_ID_LEN: usize = 128;
const MAX_TEXT_LEN: usize = 512;
const MAX_APPROVERS: usize = 16;
const AWS_TAG_VALUE_MAX: usize = 256;

impl Minter {
    /// A minter for `issuer` following `rules`.
    pub fn new(issuer: String, rules: MintRules, keys: Arc<dyn CurrentKey>, clock: SharedClock) -> Self {
        Self { issuer, rules, keys, clock }
    }

    /// The issuer URL (`iss`).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The lifetime of a token minted without a `ttl` (`tokens.default_ttl`).
    pub fn default_ttl(&self) -> Duration {
        self.rules.default_ttl
    }

    /// The configured audience allow-list.
    pub fn allowed_audiences(&self) -> &[String] {
        &self.rules.allowed_audiences
    }

    /// Validates `request` and signs its claims with the current key. The token can be handed out
    /// once its `token.minted` entry is on record ([`PendingToken::release`]).
    pub fn mint(&self, request: MintRequest) -> Result<PendingToken, MintError> {
        let claims = self.claims(request)?;
        let mut json = Vec::with_capacity(1024);
        serde_json::to_writer(&mut json, &claims)
            .map_err(|e| MintError::InvalidField { field: "claims", reason: e.to_string() })?;
        let signer = self.keys.signer();
        let token = signer.sign_compact(&json)?;
        Ok(PendingToken::new(MintedToken {
            token: TokenString(token),
            claims,
            kid: signer.kid().to_owned(),
            algorithm: signer.algorithm(),
        }))
    }

    /// Builds (and validates) the claim set without signing: check the request, derive what AWS
    /// reads (session tags, source identity), assemble.
    pub fn claims(&self, request: MintRequest) -> Result<RunClaims, MintError> {
        let MintRequest { mut run, audience, ttl, pool, agent_id, aws_tag_keys, source_identity } = request;
        let ttl = self.check(&mut run, &audience, ttl, pool.as_deref(), agent_id.as_deref())?;
        let aws_tags = self.aws_tags(&run, aws_tag_keys.as_deref());
        let aws_source_identity = self.source_identity(&run, source_identity);
        let now = self.clock.now();
        let lifetime = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        Ok(RunClaims {
            iss: self.issuer.clone(),
            sub: self.rules.subject.render(&run.stack_id, &run.stack, run.phase, pool.as_deref()),
            aud: audience,
            iat: now,
            nbf: now,
            exp: now.saturating_add(lifetime),
            jti: token_id(now),
            scope: run.phase.scope(),
            run,
            pool,
            agent_id,
            aws_tags,
            aws_source_identity,
        })
    }

    /// Checks the request field by field, in a fixed order (the first bad field is the one
    /// named), normalises the commit SHA to lowercase, and returns the token's lifetime.
    fn check(
        &self,
        run: &mut RunChain,
        audience: &str,
        ttl: Option<Duration>,
        pool: Option<&str>,
        agent_id: Option<&str>,
    ) -> Result<Duration, MintError> {
        identifier("run_id", &run.run_id)?;
        identifier("stack_id", &run.stack_id)?;
        identifier("stack", &run.stack)?;
        let ttl = self.lifetime(audience, ttl)?;
        run.commit_sha = run.commit_sha.take().map(commit).transpose()?;
        optional_text("repository", run.repository.as_deref(), MAX_TEXT_LEN)?;
        optional_text("ref", run.git_ref.as_deref(), MAX_TEXT_LEN)?;
        optional_text("ticket", run.ticket.as_deref(), MAX_ID_LEN)?;
        optional_text("triggered_by", run.triggered_by.as_deref(), MAX_ID_LEN)?;
        optional_text("asserted_by", run.asserted_by.as_deref(), MAX_ID_LEN)?;
        optional_text("pull_request_source", run.pull_request_source.as_deref(), MAX_ID_LEN)?;
        pool.map_or(Ok(()), |pool| identifier("pool", pool))?;
        agent_id.map_or(Ok(()), |agent_id| identifier("agent_id", agent_id))?;
        if run.pull_request == Some(0) {
            return Err(MintError::InvalidField {
                field: "pull_request",
                reason: "must be a positive number".to_owned(),
            });
        }
        if run.approved_by.len() > MAX_APPROVERS {
            return Err(MintError::InvalidField {
                field: "approved_by",
                reason: format!("at most {MAX_APPROVERS} approvers"),
            });
        }
        run.approved_by.iter().try_for_each(|approver| text("approved_by", approver, MAX_ID_LEN))?;
        Ok(ttl)
    }

    /// The audience must be allowed and the lifetime within bounds; returns the lifetime.
    fn lifetime(&self, audience: &str, ttl: Option<Duration>) -> Result<Duration, MintError> {
        // The broker itself is always an allowed audience: that is the token a run exchanges at
        // `POST /v1/token` for target credentials.
        if audience != self.issuer && !self.rules.allowed_audiences.iter().any(|a| a == audience) {
            return Err(MintError::AudienceNotAllowed(audience.to_owned()));
        }
        let ttl = ttl.unwrap_or(self.rules.default_ttl);
        if ttl > self.rules.max_ttl {
            return Err(MintError::TtlTooLong { requested: ttl.as_secs(), maximum: self.rules.max_ttl.as_secs() });
        }
        if ttl < Duration::from_secs(1) {
            return Err(MintError::InvalidField { field: "ttl_seconds", reason: "must be at least 1".to_owned() });
        }
        Ok(ttl)
    }

    /// The AWS session tags, the configured ones or the target's selection (`keys`); `None`
    /// when none are emitted.
    fn aws_tags(&self, run: &RunChain, keys: Option<&[String]>) -> Option<AwsTags> {
        let emit = keys.map_or(self.rules.aws_session_tags, |keys| !keys.is_empty());
        if !emit {
            return None;
        }
        let mut tags = aws_tags(
            &run.run_id,
            &run.stack_id,
            run.commit_sha.as_deref(),
            Observed {
                pull_request: run.pull_request,
                ticket: run.ticket.as_deref(),
                source: run.pull_request_source.as_deref(),
            },
            &run.approved_by,
        );
        if let Some(keys) = keys {
            tags.principal_tags.retain(|key, _| keys.iter().any(|k| k == key.as_ref()));
            tags.transitive_tag_keys.retain(|key| keys.iter().any(|k| k == key.as_ref()));
        }
        Some(tags).filter(|tags| !tags.principal_tags.is_empty())
    }

    /// The AWS source identity: the human behind the run, by the configured or the target's rule.
    fn source_identity(&self, run: &RunChain, rule: Option<SourceIdentity>) -> Option<String> {
        let first_approver = run.approved_by.first().map(String::as_str);
        match rule.unwrap_or(self.rules.source_identity) {
            SourceIdentity::TriggeredBy => run.triggered_by.as_deref().or(first_approver),
            SourceIdentity::FirstApprover => first_approver.or(run.triggered_by.as_deref()),
            SourceIdentity::None => None,
        }
        .and_then(source_identity)
    }
}

/// Random bytes for token IDs, drawn from aws-lc's DRBG a block at a time: one DRBG call per 32
/// IDs instead of one each (the `uuid` crate's own generator makes a `getrandom` syscall per ID,
/// a fifth of the minting overhead).
struct RandomPool {
    bytes: [u8; 320],
    used: usize,
}

thread_local! {
    static RANDOM: RefCell<RandomPool> = const { RefCell::new(RandomPool { bytes: [0; 320], used: 320 }) };
}

fn random_10() -> [u8; 10] {
    RANDOM.with_borrow_mut(|pool| {
        if pool.used + 10 > pool.bytes.len() {
            if aws_lc_rs::rand::fill(&mut pool.bytes).is_err() {
                failed_rng();
            }
            pool.used = 0;
        }
        let mut out = [0u8; 10];
        out.copy_from_slice(pool.bytes.get(pool.used..pool.used + 10).unwrap_or(&[0; 10]));
        pool.used += 10;
        out
    })
}

/// A UUIDv7 token ID: the millisecond timestamp, then 74 random bits.
fn token_id(now_secs: i64) -> String {
    let random = random_10();
    let millis = u64::try_from(now_secs).unwrap_or(0).saturating_mul(1000) + u64::from(subsec_millis());
    uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid().hyphenated().to_string()
}

fn subsec_millis() -> u32 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_millis()).unwrap_or(0)
}

#[cold]
#[allow(clippy::panic)]
fn failed_rng() -> ! {
    panic!("the system random number generator failed")
}

/// The alphabet of run, stack, pool and agent IDs.
pub fn is_identifier_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-_.:@/+".contains(c)
}

/// `text` reduced to STS's name alphabet (`[\w+=,.@-]`) and at most 64 characters, as
/// `RoleSessionName` and `SourceIdentity` require; other characters become `-`.
pub fn sts_name(text: &str) -> String {
    text.chars().map(|c| if c.is_ascii_alphanumeric() || "_+=,.@-".contains(c) { c } else { '-' }).take(64).collect()
}

fn identifier(field: &'static str, value: &str) -> Result<(), MintError> {
    let bad = |reason: &str| MintError::InvalidField { field, reason: reason.to_owned() };
    if value.is_empty() {
        return Err(bad("required"));
    }
    if value.len() > MAX_ID_LEN {
        return Err(bad("longer than 128 bytes"));
    }
    if !value.chars().all(is_identifier_char) {
        return Err(bad("may only contain letters, digits and - _ . : @ / +"));
    }
    Ok(())
}

fn text(field: &'static str, value: &str, max: usize) -> Result<(), MintError> {
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
    Ok(())
}

fn optional_text(field: &'static str, value: Option<&str>, max: usize) -> Result<(), MintError> {
    value.map_or(Ok(()), |v| text(field, v, max))
}

fn commit(mut value: String) -> Result<String, MintError> {
    let valid = (7..=64).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_hexdigit());
    if !valid {
        return Err(MintError::InvalidField {
            field: "commit_sha",
            reason: "expected 7 to 64 hexadecimal characters".to_owned(),
        });
    }
    value.make_ascii_lowercase();
    Ok(value)
}

/// A run's pull request and ticket, and where they were observed (`None`: the submitter's word).
#[derive(Debug, Clone, Copy)]
struct Observed<'a> {
    pull_request: Option<u64>,
    ticket: Option<&'a str>,
    source: Option<&'a str>,
}

/// Session tags in STS's shape. Values are reduced to the characters STS accepts
/// (`[\p{L}\p{Z}\p{N}_.:/=+\-@]`, at most 256) rather than failing the whole exchange.
fn aws_tags(
    run_id: &str,
    stack_id: &str,
    commit_sha: Option<&str>,
    change: Observed<'_>,
    approvers: &[String],
) -> AwsTags {
    let mut tags = BTreeMap::new();
    let allowed = |c: char| c.is_alphanumeric() || c.is_whitespace() || "_.:/=+-@".contains(c);
    let mut put = |key: &'static str, value: &str| {
        let clean: String = if value.len() <= AWS_TAG_VALUE_MAX && value.chars().all(allowed) {
            value.to_owned()
        } else {
            value.chars().map(|c| if allowed(c) { c } else { '_' }).take(AWS_TAG_VALUE_MAX).collect()
        };
        if !clean.trim().is_empty() {
            tags.insert(Cow::Borrowed(key), [clean]);
        }
    };
    put("run", run_id);
    put("stack", stack_id);
    if let Some(sha) = commit_sha {
        put("commit", sha);
    }
    if let Some(pr) = change.pull_request {
        put("pr", &pr.to_string());
    }
    if let Some(ticket) = change.ticket {
        put("ticket", ticket);
    }
    if let Some(source) = change.source {
        put("pr_source", source);
    }
    if !approvers.is_empty() {
        put("approver", &approvers.join(" "));
    }
    let transitive_tag_keys = tags.keys().cloned().collect();
    AwsTags { principal_tags: tags, transitive_tag_keys }
}

/// STS source identity: 2–64 characters of `[\w+=,.@-]`.
fn source_identity(human: &str) -> Option<String> {
    let clean = sts_name(human);
    (clean.len() >= 2).then_some(clean)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_ids_are_unique_time_ordered_uuidv7() {
        let a = token_id(1_800_000_000);
        let b = token_id(1_800_000_001);
        let parsed = uuid::Uuid::parse_str(&a).map(|u| u.get_version_num());
        assert_eq!(parsed.ok(), Some(7));
        assert!(a < b, "later IDs sort later");
        assert_ne!(token_id(1), token_id(1));
    }

    #[test]
    fn tags_follow_sts_shape_and_character_rules() {
        let observed = Observed { pull_request: Some(42), ticket: Some("OPS#12"), source: Some("github") };
        let tags = aws_tags("run-1", "stk", Some("abc1234"), observed, &["bob".into(), "carol".into()]);
        assert_eq!(tags.principal_tags["run"], ["run-1".to_owned()]);
        assert_eq!(tags.principal_tags["pr"], ["42".to_owned()]);
        assert_eq!(tags.principal_tags["ticket"], ["OPS_12".to_owned()], "`#` is not allowed by STS");
        assert_eq!(tags.principal_tags["pr_source"], ["github".to_owned()]);
        assert_eq!(tags.principal_tags["approver"], ["bob carol".to_owned()]);
        assert_eq!(tags.transitive_tag_keys.len(), tags.principal_tags.len());
        // The submitter's word carries no source tag.
        let asserted = Observed { source: None, ..observed };
        assert!(!aws_tags("run-1", "stk", None, asserted, &[]).principal_tags.contains_key("pr_source"));
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
        assert!(commit("ABCDEF1".into()).is_ok_and(|c| c == "abcdef1"));
        assert!(commit("xyz1234".into()).is_err());
        assert!(commit("abc".into()).is_err());
        assert!(text("ticket", "line\nbreak", 10).is_err());
    }
}

#[cfg(test)]
mod minting {
    use super::*;
    use crate::clock::ManualClock;
    use crate::tokens::signer::SigningAlgorithm;

    const T0: i64 = 1_800_000_000;

    /// A minter signing with one fresh ES256 key, at `T0`: no store, no runtime.
    fn minter(rules: MintRules) -> Result<Minter, SignerError> {
        let (signer, _) = Signer::generate(SigningAlgorithm::ES256)?;
        let clock = Arc::new(ManualClock::at(T0));
        Ok(Minter::new("https://kw.example".into(), rules, Arc::new(FixedKey::new(signer)), clock))
    }

    fn rules() -> MintRules {
        MintRules { allowed_audiences: vec!["vault".into(), "sts.amazonaws.com".into()], ..MintRules::default() }
    }

    fn request() -> MintRequest {
        let run = RunChain {
            triggered_by: Some("alice".into()),
            approved_by: vec!["bob".into()],
            ..RunChain::new("run-7", "stk-1", "network", keyward_proto::claims::Phase::Apply)
        };
        MintRequest::new(run, "vault")
    }

    #[test]
    fn claims_follow_the_contract() -> Result<(), Box<dyn std::error::Error>> {
        let minter = minter(rules())?;
        let minted = minter.mint(request())?;
        let c = minted.claims();
        assert_eq!(
            (c.iss.as_str(), c.aud.as_str(), c.sub.as_str()),
            ("https://kw.example", "vault", "stack:stk-1:phase:apply")
        );
        assert_eq!((c.iat, c.nbf, c.exp), (T0, T0, T0 + 300), "default lifetime is 5 minutes");
        assert_eq!(c.scope, keyward_proto::claims::Scope::Write);
        assert_eq!(c.aws_source_identity.as_deref(), Some("alice"));
        assert!(uuid::Uuid::parse_str(&c.jti).is_ok_and(|u| u.get_version_num() == 7));
        assert_ne!(minter.mint(request())?.claims().jti, c.jti, "every token has its own jti");
        assert_eq!(minted.kid(), minter.keys.signer().kid());
        let token = minted.token_for_tests().expose();
        assert_eq!(token.split('.').count(), 3);
        assert!(!format!("{minted:?}").contains(token), "Debug never prints the token");
        Ok(())
    }

    #[test]
    fn a_target_chooses_its_session_tags_and_source_identity() -> Result<(), Box<dyn std::error::Error>> {
        let minter = minter(rules())?;
        let only = MintRequest { aws_tag_keys: Some(vec!["run".into(), "approver".into()]), ..request() };
        let tags = minter.mint(only)?.claims().aws_tags.clone().ok_or("tags")?;
        let keys: Vec<&str> = tags.principal_tags.keys().map(|k| k.as_ref()).collect();
        assert_eq!(keys, ["approver", "run"]);
        assert_eq!(tags.transitive_tag_keys.len(), 2);
        let none = MintRequest { aws_tag_keys: Some(Vec::new()), ..request() };
        assert!(minter.mint(none)?.claims().aws_tags.is_none(), "an empty selection emits no tags claim");
        let approver = MintRequest { source_identity: Some(SourceIdentity::FirstApprover), ..request() };
        assert_eq!(minter.mint(approver)?.claims().aws_source_identity.as_deref(), Some("bob"));
        let nobody = MintRequest { source_identity: Some(SourceIdentity::None), ..request() };
        assert_eq!(minter.mint(nobody)?.claims().aws_source_identity, None);
        Ok(())
    }

    #[test]
    fn audience_allow_list_and_ttl_cap_are_enforced() -> Result<(), Box<dyn std::error::Error>> {
        let minter = minter(MintRules { max_ttl: Duration::from_secs(600), ..rules() })?;
        let wrong = MintRequest { audience: "vault ".into(), ..request() };
        assert!(matches!(minter.mint(wrong), Err(MintError::AudienceNotAllowed(_))), "exact match only");
        let long = MintRequest { ttl: Some(Duration::from_secs(601)), ..request() };
        assert!(matches!(minter.mint(long), Err(MintError::TtlTooLong { requested: 601, maximum: 600 })));
        let at_cap = MintRequest { ttl: Some(Duration::from_secs(600)), ..request() };
        assert_eq!(minter.mint(at_cap)?.claims().exp, T0 + 600);
        let zero = MintRequest { ttl: Some(Duration::ZERO), ..request() };
        assert!(matches!(minter.mint(zero), Err(MintError::InvalidField { field: "ttl_seconds", .. })));
        Ok(())
    }

    /// The checks run in their documented order, so of several bad fields the first is named.
    #[test]
    fn the_first_bad_field_is_the_one_named() -> Result<(), Box<dyn std::error::Error>> {
        let minter = minter(rules())?;
        let mut bad = MintRequest { audience: "nobody".into(), ..request() };
        bad.run.commit_sha = Some("not-hex".into());
        assert!(matches!(minter.mint(bad.clone()), Err(MintError::AudienceNotAllowed(_))), "audience before commit");
        bad.run.stack = "has space".into();
        assert!(matches!(minter.mint(bad.clone()), Err(MintError::InvalidField { field: "stack", .. })));
        bad.audience = "vault".into();
        bad.run.stack = "network".into();
        bad.pool = Some("bad pool".into());
        assert!(matches!(minter.mint(bad), Err(MintError::InvalidField { field: "commit_sha", .. })));
        let mut upper = request();
        upper.run.commit_sha = Some("ABCDEF1".into());
        assert_eq!(minter.mint(upper)?.claims().run.commit_sha.as_deref(), Some("abcdef1"), "stored lowercase");
        Ok(())
    }
}
