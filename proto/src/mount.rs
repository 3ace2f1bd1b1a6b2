//! Where a mounted file of a context or stack goes (docs/contexts.md, "Files"): a path relative
//! to the stack's configuration directory that cannot leave it. The broker checks it before it
//! stores anything; the agent checks it again before it writes (and then writes beneath the job's
//! work directory without following any link, so this check is not its only guard).
//!
//! Only plain names joined by `/`: no absolute path, no `.` or `..`, no empty component (`//`, a
//! trailing `/`), no NUL or other control character, at most [`MAX_PATH`] bytes in at most
//! [`MAX_DEPTH`] components of at most [`MAX_COMPONENT`] bytes each. The one name the agent
//! writes there itself, [`STATE_OVERRIDE`], is refused too.

use std::fmt;

/// Longest path, in bytes.
pub const MAX_PATH: usize = 512;
/// Longest component, in bytes (Linux's `NAME_MAX`).
pub const MAX_COMPONENT: usize = 255;
/// Most components.
pub const MAX_DEPTH: usize = 16;
/// The file the agent writes in the configuration directory when the broker keeps the state.
pub const STATE_OVERRIDE: &str = "keyward_state_override.tf";

/// Why a mount path is refused. Its message quotes the path (a path is not secret) and says
/// what to give instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountPathError {
    /// Empty, or longer than [`MAX_PATH`].
    Length(String),
    /// Starts with `/`.
    Absolute(String),
    /// Holds `.` or `..`: it could leave the configuration directory.
    Dots(String),
    /// An empty component: `//`, or a trailing `/`.
    EmptyComponent(String),
    /// A NUL or another control character.
    Control(String),
    /// A component over [`MAX_COMPONENT`] bytes, or more than [`MAX_DEPTH`] components.
    TooDeep(String),
    /// [`STATE_OVERRIDE`], the agent's own file.
    Reserved,
}

impl fmt::Display for MountPathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const RELATIVE: &str = "give a path relative to the stack's configuration directory, like `secrets/db.pem`";
        match self {
            Self::Length(path) => write!(f, "file path `{path}` must be 1 to {MAX_PATH} bytes long"),
            Self::Absolute(path) => write!(f, "file path `{path}` is absolute: {RELATIVE}"),
            Self::Dots(path) => {
                write!(
                    f,
                    "file path `{path}` holds `.` or `..` and could leave the configuration directory: {RELATIVE}"
                )
            }
            Self::EmptyComponent(path) => {
                write!(f, "file path `{path}` has an empty component (`//` or a trailing `/`)")
            }
            Self::Control(path) => write!(f, "file path `{path}` holds a NUL or another control character"),
            Self::TooDeep(path) => write!(
                f,
                "file path `{path}` has a component over {MAX_COMPONENT} bytes or more than {MAX_DEPTH} components"
            ),
            Self::Reserved => write!(f, "file path `{STATE_OVERRIDE}` is the agent's own (the state backend)"),
        }
    }
}

impl std::error::Error for MountPathError {}

/// Refuses a mount path that is not plain names joined by `/` (see the module documentation).
pub fn check(path: &str) -> Result<(), MountPathError> {
    // Shown in the message with control characters escaped, and cut to a readable length.
    let shown = || path.chars().take(80).flat_map(char::escape_debug).collect::<String>();
    if path.chars().any(char::is_control) {
        return Err(MountPathError::Control(shown()));
    }
    if path.is_empty() || path.len() > MAX_PATH {
        return Err(MountPathError::Length(shown()));
    }
    if path.starts_with('/') {
        return Err(MountPathError::Absolute(shown()));
    }
    let components: Vec<&str> = path.split('/').collect();
    if components.iter().any(|c| *c == "." || *c == "..") {
        return Err(MountPathError::Dots(shown()));
    }
    if components.iter().any(|c| c.is_empty()) {
        return Err(MountPathError::EmptyComponent(shown()));
    }
    if components.len() > MAX_DEPTH || components.iter().any(|c| c.len() > MAX_COMPONENT) {
        return Err(MountPathError::TooDeep(shown()));
    }
    if path == STATE_OVERRIDE {
        return Err(MountPathError::Reserved);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_relative_paths_pass() {
        for good in ["db.pem", "secrets/db.pem", ".env", "a/.hidden/b..c", "terraform.tfvars", "x".repeat(255).as_str()]
        {
            assert_eq!(check(good), Ok(()), "{good}");
        }
        let deepest = vec!["d"; MAX_DEPTH].join("/");
        assert_eq!(check(&deepest), Ok(()));
    }

    #[test]
    fn paths_that_could_leave_the_directory_or_confuse_are_refused() {
        type Expected = fn(String) -> MountPathError;
        let cases: [(&str, Expected); 11] = [
            ("../x", MountPathError::Dots),
            ("a/../../x", MountPathError::Dots),
            ("a/..", MountPathError::Dots),
            ("./x", MountPathError::Dots),
            ("/etc/x", MountPathError::Absolute),
            ("//x", MountPathError::Absolute),
            ("a//b", MountPathError::EmptyComponent),
            ("a/", MountPathError::EmptyComponent),
            ("a\0b", MountPathError::Control),
            ("a\nb", MountPathError::Control),
            ("", MountPathError::Length),
        ];
        for (bad, error) in cases {
            let shown: String = bad.chars().flat_map(char::escape_debug).collect();
            assert_eq!(check(bad), Err(error(shown)), "{bad:?}");
        }
        assert!(matches!(check(&"a".repeat(MAX_PATH + 1)), Err(MountPathError::Length(_))));
        assert!(matches!(check(&"x".repeat(256)), Err(MountPathError::TooDeep(_))));
        assert!(matches!(check(&vec!["d"; MAX_DEPTH + 1].join("/")), Err(MountPathError::TooDeep(_))));
        assert_eq!(check(STATE_OVERRIDE), Err(MountPathError::Reserved));
        assert_eq!(check("sub/keyward_state_override.tf"), Ok(()), "only the configuration directory's own");
        let message = check("../x").unwrap_err().to_string();
        assert!(message.contains("`../x`") && message.contains("could leave the configuration directory"), "{message}");
    }
}
