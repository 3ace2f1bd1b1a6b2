//! The run-token claim set (DESIGN.md §2).
//!
//! These types are the wire contract of every token the broker signs. Relying parties (AWS STS, Vault,
//! anything reading the broker's JWKS) match on these names in trust policies and bound claims, so the
//! serialized names here must never change.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The claim AWS reads session tags from in `AssumeRoleWithWebIdentity`.
pub const AWS_TAGS_CLAIM: &str = "https://aws.amazon.com/tags";
/// The claim AWS reads the source identity from.
pub const AWS_SOURCE_IDENTITY_CLAIM: &str = "https://aws.amazon.com/source_identity";

/// Which Terraform phase a run token is for. A plan only reads; an apply writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// `terraform plan`: read-only access.
    Plan,
    /// `terraform apply`: write access.
    Apply,
}

impl Phase {
    /// The access scope a phase carries: `read` for plan, `write` for apply.
    pub fn scope(self) -> Scope {
        match self {
            Self::Plan => Scope::Read,
            Self::Apply => Scope::Write,
        }
    }

    /// The lowercase name used in claims and subjects.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plan => "plan",
            Self::Apply => "apply",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error for a phase name that is neither `plan` nor `apply`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownPhase(pub String);

impl fmt::Display for UnknownPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown phase `{}`: expected `plan` or `apply`", self.0)
    }
}

impl std::error::Error for UnknownPhase {}

impl FromStr for Phase {
    type Err = UnknownPhase;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "plan" => Ok(Self::Plan),
            "apply" => Ok(Self::Apply),
            other => Err(UnknownPhase(other.to_owned())),
        }
    }
}

/// The access scope of a token, derived from its phase and never chosen independently.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Read-only (plan).
    Read,
    /// Read-write (apply).
    Write,
}

/// AWS session tags carried in the token, in the exact shape STS requires: every value is a
/// one-element array. Keys are usually the broker's fixed names, hence `Cow<'static, str>`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AwsTags {
    /// Tag key → one-element array holding the value.
    pub principal_tags: BTreeMap<Cow<'static, str>, [String; 1]>,
    /// Keys that stay attached through role chaining.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transitive_tag_keys: Vec<Cow<'static, str>>,
}

/// A run's chain of custody: which run of which stack, in which phase, from which code, started,
/// approved and vouched for by whom. One type wherever the chain travels: a run token's claims
/// (flattened into [`RunClaims`], so the claim names are these), a mint request, an exchange's
/// subject, the policies' `input.run` and audit entries' context (each through one conversion).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunChain {
    /// The run this token belongs to.
    pub run_id: String,
    /// The immutable stack ID.
    pub stack_id: String,
    /// The stack's human-readable name.
    pub stack: String,
    /// `plan` or `apply`.
    pub phase: Phase,
    /// Repository URL of the code being run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// Commit SHA being run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_sha: Option<String>,
    /// Git ref the commit was resolved from.
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    /// Pull/merge request number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_request: Option<u64>,
    /// Change ticket justifying the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
    /// Where `pull_request` and `ticket` were observed: `github` when the broker saw them in a
    /// signed webhook delivery and GitHub's API; absent when they are the submitter's word.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_request_source: Option<String>,
    /// The human who triggered the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub triggered_by: Option<String>,
    /// The humans whose approval of the run counted: reviews the broker recorded, never the
    /// run's author, never a caller's say-so.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approved_by: Vec<String>,
    /// The operator (API token name) on whose word this run context rests, when a token was
    /// minted on request (`POST /v1/run-tokens`) rather than for a job the broker tracked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asserted_by: Option<String>,
}

impl RunChain {
    /// The chain of run `run_id` of stack `stack_id` (named `stack`) in `phase`, with nothing
    /// else known yet.
    pub fn new(run_id: impl Into<String>, stack_id: impl Into<String>, stack: impl Into<String>, phase: Phase) -> Self {
        Self {
            run_id: run_id.into(),
            stack_id: stack_id.into(),
            stack: stack.into(),
            phase,
            repository: None,
            commit_sha: None,
            git_ref: None,
            pull_request: None,
            ticket: None,
            pull_request_source: None,
            triggered_by: None,
            approved_by: Vec::new(),
            asserted_by: None,
        }
    }
}

/// The full claim set of a Keyward run token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunClaims {
    /// The broker's external URL.
    pub iss: String,
    /// Rendered from the subject template; by default `stack:<stack_id>:phase:<phase>`.
    pub sub: String,
    /// Exactly one audience, chosen by server-side configuration.
    pub aud: String,
    /// Issued at (seconds since the Unix epoch).
    pub iat: i64,
    /// Not before (seconds since the Unix epoch).
    pub nbf: i64,
    /// Expiry (seconds since the Unix epoch).
    pub exp: i64,
    /// Unique token ID (UUIDv7).
    pub jti: String,
    /// The run's chain of custody: `run_id`, `stack_id`, `stack`, `phase`, `repository`,
    /// `commit_sha`, `ref`, `pull_request`, `ticket`, `pull_request_source`, `triggered_by`, `approved_by`,
    /// `asserted_by`, as top-level claims.
    #[serde(flatten)]
    pub run: RunChain,
    /// `read` for plan, `write` for apply.
    pub scope: Scope,
    /// The worker pool the run executes in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// The agent executing the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// Session tags for AWS STS.
    #[serde(rename = "https://aws.amazon.com/tags", default, skip_serializing_if = "Option::is_none")]
    pub aws_tags: Option<AwsTags>,
    /// Source identity for AWS STS: the human behind the run.
    #[serde(rename = "https://aws.amazon.com/source_identity", default, skip_serializing_if = "Option::is_none")]
    pub aws_source_identity: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_round_trips_and_rejects_unknown() {
        assert_eq!("plan".parse::<Phase>(), Ok(Phase::Plan));
        assert_eq!("apply".parse::<Phase>(), Ok(Phase::Apply));
        assert_eq!("Apply".parse::<Phase>(), Err(UnknownPhase("Apply".into())));
        assert_eq!(Phase::Plan.scope(), Scope::Read);
        assert_eq!(Phase::Apply.scope(), Scope::Write);
    }

    #[test]
    fn claim_names_match_the_contract() -> Result<(), serde_json::Error> {
        let mut tags = BTreeMap::new();
        tags.insert(Cow::Borrowed("run"), ["r1".to_owned()]);
        let claims = RunClaims {
            iss: "https://kw.example".into(),
            sub: "stack:s1:phase:plan".into(),
            aud: "sts.amazonaws.com".into(),
            iat: 1,
            nbf: 1,
            exp: 301,
            jti: "j".into(),
            run: RunChain {
                commit_sha: Some("abc".into()),
                git_ref: Some("refs/heads/main".into()),
                pull_request: Some(7),
                triggered_by: Some("alice".into()),
                ..RunChain::new("r1", "s1", "net", Phase::Plan)
            },
            scope: Scope::Read,
            pool: None,
            agent_id: None,
            aws_tags: Some(AwsTags { principal_tags: tags, transitive_tag_keys: vec![Cow::Borrowed("run")] }),
            aws_source_identity: Some("alice".into()),
        };
        let value = serde_json::to_value(&claims)?;
        assert_eq!(value["ref"], "refs/heads/main");
        assert_eq!(value["scope"], "read");
        assert_eq!(value[AWS_TAGS_CLAIM]["principal_tags"]["run"][0], "r1");
        assert_eq!(value[AWS_SOURCE_IDENTITY_CLAIM], "alice");
        assert!(value.get("approved_by").is_none(), "empty approvers are omitted");
        let back: RunClaims = serde_json::from_value(value)?;
        assert_eq!(back, claims);
        Ok(())
    }

    /// Every claim of a fully populated token, as the claim set serialized before the run chain
    /// became one type (flattened): the same names and values, nothing added or missing.
    #[test]
    fn the_flattened_run_chain_serializes_the_claims_of_before() -> Result<(), serde_json::Error> {
        let mut tags = BTreeMap::new();
        tags.insert(Cow::Borrowed("run"), ["r1".to_owned()]);
        let claims = RunClaims {
            iss: "https://kw.example".into(),
            sub: "stack:s1:phase:apply".into(),
            aud: "vault".into(),
            iat: 1,
            nbf: 1,
            exp: 301,
            jti: "j".into(),
            run: RunChain {
                repository: Some("https://git.example/infra.git".into()),
                commit_sha: Some("abc1234".into()),
                git_ref: Some("refs/heads/main".into()),
                pull_request: Some(7),
                ticket: Some("CHG-1".into()),
                triggered_by: Some("alice".into()),
                approved_by: vec!["bob".into(), "carol".into()],
                asserted_by: Some("ops".into()),
                ..RunChain::new("r1", "s1", "net", Phase::Apply)
            },
            scope: Scope::Write,
            pool: Some("prod".into()),
            agent_id: Some("a1".into()),
            aws_tags: Some(AwsTags { principal_tags: tags, transitive_tag_keys: vec![Cow::Borrowed("run")] }),
            aws_source_identity: Some("alice".into()),
        };
        // The exact text the claim set serialized to before (key order aside: `scope` now
        // follows the chain instead of `phase`; JSON objects are unordered).
        let before = r#"{"iss":"https://kw.example","sub":"stack:s1:phase:apply","aud":"vault","iat":1,"nbf":1,"exp":301,"jti":"j","run_id":"r1","stack_id":"s1","stack":"net","phase":"apply","scope":"write","repository":"https://git.example/infra.git","commit_sha":"abc1234","ref":"refs/heads/main","pull_request":7,"ticket":"CHG-1","triggered_by":"alice","approved_by":["bob","carol"],"asserted_by":"ops","pool":"prod","agent_id":"a1","https://aws.amazon.com/tags":{"principal_tags":{"run":["r1"]},"transitive_tag_keys":["run"]},"https://aws.amazon.com/source_identity":"alice"}"#;
        let expected: serde_json::Value = serde_json::from_str(before)?;
        assert_eq!(serde_json::to_value(&claims)?, expected);
        let back: RunClaims = serde_json::from_str(before)?;
        assert_eq!(back, claims, "a token of before reads back into the same claims");
        Ok(())
    }
}
