//! A stack's trigger globs (docs/vcs.md): which changed files, relative to the repository root,
//! concern the stack instead of its path. Checked when a stack is created or updated; compiled
//! when a change is matched (`vcs::matching`).

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

/// The most trigger globs a stack may have.
pub const MAX_TRIGGERS: usize = 32;
/// The longest trigger glob (bytes).
pub const MAX_TRIGGER_BYTES: usize = 256;

/// Why a stack's trigger globs were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TriggerError {
    /// More than [`MAX_TRIGGERS`].
    #[error("at most 32 trigger globs per stack, got {0}")]
    TooMany(usize),
    /// A glob that is empty, too long, absolute, climbs out with `..`, or does not compile.
    #[error("invalid trigger glob `{glob}`: {reason}")]
    Invalid {
        /// The glob (cut to 256 characters).
        glob: String,
        /// Why.
        reason: String,
    },
}

/// Checks a stack's trigger globs: at most 32, each 1–256 bytes, relative to the repository
/// root, with no `..` segment, and compiling.
pub fn check_triggers(globs: &[String]) -> Result<(), TriggerError> {
    if globs.len() > MAX_TRIGGERS {
        return Err(TriggerError::TooMany(globs.len()));
    }
    for glob in globs {
        trigger(glob)?;
    }
    Ok(())
}

/// One trigger glob, checked and compiled: `*` stays within a directory, `**` crosses them.
fn trigger(glob: &str) -> Result<Glob, TriggerError> {
    let invalid = |reason: &str| TriggerError::Invalid {
        glob: glob.chars().filter(|c| !c.is_control()).take(MAX_TRIGGER_BYTES).collect(),
        reason: reason.to_owned(),
    };
    if glob.is_empty() || glob.len() > MAX_TRIGGER_BYTES {
        return Err(invalid("use 1-256 bytes"));
    }
    if glob.chars().any(char::is_control) {
        return Err(invalid("no control characters"));
    }
    if glob.starts_with('/') {
        return Err(invalid("globs are relative to the repository root: drop the leading `/`"));
    }
    if glob.split('/').any(|segment| segment == "..") {
        return Err(invalid("no `..` segment"));
    }
    GlobBuilder::new(glob).literal_separator(true).build().map_err(|e| invalid(&e.kind().to_string()))
}

/// The compiled globs; `None` when one does not compile (which validation prevents): such a
/// stack is touched by nothing rather than by everything.
pub fn trigger_set(globs: &[String]) -> Option<GlobSet> {
    let mut builder = GlobSetBuilder::new();
    for glob in globs {
        builder.add(trigger(glob).ok()?);
    }
    builder.build().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_globs_are_checked() {
        assert_eq!(check_triggers(&["modules/**".to_owned(), "*.tfvars".to_owned()]), Ok(()));
        for bad in ["", "/abs/**", "../x", "a/../b", "a[", &"x".repeat(257), "a\nb"] {
            assert!(matches!(check_triggers(&[bad.to_owned()]), Err(TriggerError::Invalid { .. })), "{bad:?}");
        }
        let many: Vec<String> = (0..=MAX_TRIGGERS).map(|i| format!("m{i}")).collect();
        assert_eq!(check_triggers(&many), Err(TriggerError::TooMany(33)));
        assert_eq!(check_triggers(&many[..MAX_TRIGGERS]), Ok(()));
    }
}
