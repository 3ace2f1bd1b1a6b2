//! Which change ticket a pull request is for: the first match of `[vcs] ticket_pattern` in its
//! title, else in its head branch (`CHG-42: rotate keys`, `feature/OPS-7-bucket`). The ticket
//! then travels with the run as observed, like the pull request itself.

use regex::Regex;

/// The default pattern: a Jira-style key (`OPS-7`, `CHG2-42`).
pub const DEFAULT_PATTERN: &str = "[A-Z][A-Z0-9]+-[0-9]+";

/// The longest pattern accepted, and the most compiled program it may grow to.
const MAX_PATTERN_LEN: usize = 256;
const MAX_PROGRAM_BYTES: usize = 1 << 20;

/// The longest ticket kept (as for a ticket given at submit).
const MAX_TICKET_LEN: usize = 128;

/// A checked ticket pattern.
#[derive(Debug, Clone)]
pub struct TicketPattern(Regex);

impl TicketPattern {
    /// Compiles `pattern`, refusing one that is too long, does not compile, or matches the empty
    /// string (it would find a "ticket" in every title).
    pub fn parse(pattern: &str) -> Result<Self, String> {
        if pattern.is_empty() || pattern.len() > MAX_PATTERN_LEN {
            return Err(format!("must be a regular expression of 1 to {MAX_PATTERN_LEN} characters"));
        }
        let regex = regex::RegexBuilder::new(pattern)
            .size_limit(MAX_PROGRAM_BYTES)
            .build()
            .map_err(|e| format!("is not a regular expression: {e}"))?;
        if regex.is_match("") {
            return Err("matches the empty string, so it would find a ticket in every title".to_owned());
        }
        Ok(Self(regex))
    }

    /// The ticket in `title`, else in `branch`: the first match, if it is printable and short
    /// enough to keep.
    pub fn find(&self, title: &str, branch: &str) -> Option<String> {
        [title, branch].into_iter().find_map(|text| {
            let found = self.0.find(text)?.as_str();
            (found.len() <= MAX_TICKET_LEN && !found.chars().any(char::is_control)).then(|| found.to_owned())
        })
    }
}

impl Default for TicketPattern {
    fn default() -> Self {
        Self::parse(DEFAULT_PATTERN).unwrap_or_else(|_| unreachable!("the default pattern compiles"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_title_wins_over_the_branch_and_the_default_finds_jira_keys() -> Result<(), String> {
        let pattern = TicketPattern::default();
        assert_eq!(pattern.find("CHG-42: rotate keys", "feature/OPS-7").as_deref(), Some("CHG-42"));
        assert_eq!(pattern.find("Rotate keys", "feature/OPS-7-bucket").as_deref(), Some("OPS-7"));
        assert_eq!(pattern.find("Rotate keys", "feature/bucket"), None);
        let custom = TicketPattern::parse("#[0-9]+")?;
        assert_eq!(custom.find("Fixes #12", "main").as_deref(), Some("#12"));
        Ok(())
    }

    #[test]
    fn empty_unbounded_or_broken_patterns_are_refused() {
        for (pattern, expected) in [
            ("", "1 to 256"),
            ("[A-Z]*", "matches the empty string"),
            ("(", "is not a regular expression"),
            (&"a".repeat(300), "1 to 256"),
        ] {
            let error = TicketPattern::parse(pattern).err().unwrap_or_default();
            assert!(error.contains(expected), "{pattern}: {error}");
        }
    }
}
