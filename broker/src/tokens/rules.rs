//! The rules every minted token follows (`[tokens]` in the configuration): its lifetime, the
//! audiences it may be for, how its subject is built, and which AWS claims it carries.
//!
//! They are checked once, when the configuration is resolved, and reach the minter parsed: the
//! subject template is a list of segments by then, so minting never meets a malformed one.

use std::time::Duration;

use keyward_proto::claims::{Phase, Scope};
use serde::Deserialize;

/// Hard upper bound on any token lifetime (DESIGN.md §2). Retired keys stay published at least this
/// long plus clock skew, whatever the configured maximum, so a later config change can never
/// unpublish a key that still has live tokens.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// Largest clock-skew leeway the broker accepts (DESIGN.md §8).
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Placeholders a subject template may use. The run ID is deliberately absent: subjects must be
/// stable across runs so trust policies can match them.
pub const SUBJECT_PLACEHOLDERS: &[&str] = &["stack_id", "stack", "phase", "scope", "pool"];

/// How tokens are minted.
#[derive(Debug, Clone)]
pub struct MintRules {
    /// Lifetime when the request does not ask for one.
    pub default_ttl: Duration,
    /// Longest lifetime a request may ask for (at most [`MAX_TOKEN_LIFETIME`]).
    pub max_ttl: Duration,
    /// Leeway granted to relying parties' clocks (at most [`MAX_CLOCK_SKEW`]).
    pub clock_skew: Duration,
    /// The only audiences tokens may be minted for (besides the broker itself).
    pub allowed_audiences: Vec<String>,
    /// How `sub` is built.
    pub subject: SubjectTemplate,
    /// Who becomes the AWS source identity.
    pub source_identity: SourceIdentity,
    /// Whether to emit the AWS session-tags claim.
    pub aws_session_tags: bool,
}

impl Default for MintRules {
    fn default() -> Self {
        Self {
            default_ttl: Duration::from_secs(300),
            max_ttl: MAX_TOKEN_LIFETIME,
            clock_skew: Duration::from_secs(30),
            allowed_audiences: Vec::new(),
            subject: SubjectTemplate::default(),
            source_identity: SourceIdentity::default(),
            aws_session_tags: true,
        }
    }
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

/// Why a subject template was refused.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// A `{` without its `}`.
    #[error("unclosed `{{` in `{0}`")]
    Unclosed(String),
    /// A placeholder that is not one of [`SUBJECT_PLACEHOLDERS`].
    #[error("unknown placeholder `{{{0}}}`; use one of {list}", list = SUBJECT_PLACEHOLDERS.join(", "))]
    UnknownPlaceholder(String),
    /// Empty, or a stray `}` at the end.
    #[error("malformed template `{0}`")]
    Malformed(String),
}

/// A subject template (`stack:{stack_id}:phase:{phase}`), split into literal text and placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectTemplate(Vec<Segment>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Text(String),
    StackId,
    Stack,
    Phase,
    Scope,
    Pool,
}

impl Default for SubjectTemplate {
    /// Immutable IDs only, so trust policies can match it: `stack:{stack_id}:phase:{phase}`.
    fn default() -> Self {
        Self(vec![
            Segment::Text("stack:".to_owned()),
            Segment::StackId,
            Segment::Text(":phase:".to_owned()),
            Segment::Phase,
        ])
    }
}

impl SubjectTemplate {
    /// The template as written in the configuration when it is left out.
    pub const DEFAULT: &str = "stack:{stack_id}:phase:{phase}";

    /// Splits `template` into text and the placeholders of [`SUBJECT_PLACEHOLDERS`].
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        let mut segments = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            let (text, after) = rest.split_at(open);
            let close = after.find('}').ok_or_else(|| TemplateError::Unclosed(template.to_owned()))?;
            if !text.is_empty() {
                segments.push(Segment::Text(text.to_owned()));
            }
            segments.push(match after.get(1..close).unwrap_or_default() {
                "stack_id" => Segment::StackId,
                "stack" => Segment::Stack,
                "phase" => Segment::Phase,
                "scope" => Segment::Scope,
                "pool" => Segment::Pool,
                name => return Err(TemplateError::UnknownPlaceholder(name.to_owned())),
            });
            rest = after.get(close + 1..).unwrap_or_default();
        }
        if rest.contains('}') || template.is_empty() {
            return Err(TemplateError::Malformed(template.to_owned()));
        }
        if !rest.is_empty() {
            segments.push(Segment::Text(rest.to_owned()));
        }
        Ok(Self(segments))
    }

    /// The subject of a token for this stack, phase and pool (`-` without a pool).
    pub fn render(&self, stack_id: &str, stack: &str, phase: Phase, pool: Option<&str>) -> String {
        let mut out = String::with_capacity(64);
        for segment in &self.0 {
            out.push_str(match segment {
                Segment::Text(text) => text,
                Segment::StackId => stack_id,
                Segment::Stack => stack,
                Segment::Phase => phase.as_str(),
                Segment::Scope => match phase.scope() {
                    Scope::Read => "read",
                    Scope::Write => "write",
                },
                Segment::Pool => pool.unwrap_or("-"),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_template_renders_immutable_ids() -> Result<(), TemplateError> {
        let template = SubjectTemplate::parse("stack:{stack_id}:phase:{phase}")?;
        assert_eq!(template.render("stk_1", "network", Phase::Apply, None), "stack:stk_1:phase:apply");
        let every = SubjectTemplate::parse("{pool}/{stack}:{scope}")?;
        assert_eq!(every.render("s", "net", Phase::Plan, Some("eu")), "eu/net:read");
        assert_eq!(every.render("s", "net", Phase::Apply, None), "-/net:write");
        Ok(())
    }

    #[test]
    fn the_default_is_the_documented_template() -> Result<(), TemplateError> {
        assert_eq!(SubjectTemplate::default(), SubjectTemplate::parse(SubjectTemplate::DEFAULT)?);
        Ok(())
    }

    #[test]
    fn subject_templates_are_checked() {
        let error = |template: &str| SubjectTemplate::parse(template).err().map(|e| e.to_string());
        assert_eq!(error("stack:{stack_id}:phase:{phase}"), None);
        assert_eq!(error("{pool}/{stack}/{scope}"), None);
        assert_eq!(
            error("run:{run_id}").as_deref(),
            Some("unknown placeholder `{run_id}`; use one of stack_id, stack, phase, scope, pool"),
            "run IDs make subjects unmatchable"
        );
        assert_eq!(error("stack:{stack_id").as_deref(), Some("unclosed `{` in `stack:{stack_id`"));
        assert_eq!(error("stack}").as_deref(), Some("malformed template `stack}`"));
        assert_eq!(error("").as_deref(), Some("malformed template ``"));
    }
}
