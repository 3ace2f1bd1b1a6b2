//! Where `keyward creds` gets its subject token: a file, a variable, or a command that asks the CI
//! system for a fresh one (a GitHub Actions job calls its ID-token endpoint again).
//!
//! A file or variable holds one token, which the broker accepts once; a command can be run again
//! for each new exchange, so only it lets cached credentials be renewed before they expire. The
//! command runs only when an exchange is needed, under a deadline, and its output is the token.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _};

use super::creds_cache::Secret;

/// How long the subject token command may take.
pub(super) const COMMAND_DEADLINE: Duration = Duration::from_secs(30);
/// A token longer than this is not a token.
const MAX_TOKEN_BYTES: usize = 64 * 1024;
/// How much of a failed command's stderr the error quotes.
const STDERR_QUOTE_CHARS: usize = 500;

/// Why no subject token was obtained. Never carries the token.
#[derive(Debug, thiserror::Error)]
pub(super) enum SubjectError {
    /// The token file could not be read.
    #[error("cannot read subject token file {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// The variable is not set.
    #[error("environment variable {0} is not set")]
    Unset(String),
    /// The token source gave nothing.
    #[error("the subject token from {0} is empty")]
    Empty(String),
    /// `sh` could not be started.
    #[error("cannot run the subject token command: {0}")]
    Spawn(std::io::Error),
    /// The command outlived its deadline (it was killed).
    #[error("the subject token command did not finish within {0:?}")]
    Deadline(Duration),
    /// The command failed.
    #[error("the subject token command failed ({status}){stderr}")]
    Failed {
        /// How it ended.
        status: std::process::ExitStatus,
        /// `: ` and the start of its stderr, or nothing.
        stderr: String,
    },
    /// The command printed more than a token.
    #[error("the subject token command printed more than {} KiB", MAX_TOKEN_BYTES / 1024)]
    TooLong,
}

/// Where the subject token comes from.
#[derive(Debug, Clone)]
pub(super) enum SubjectSource {
    /// A file holding one token.
    File(PathBuf),
    /// An environment variable holding one token.
    Env(String),
    /// A shell command that prints a fresh token each time.
    Command(String),
}

impl SubjectSource {
    /// Reads the token of a file or variable now (that consumes nothing); a command is kept to
    /// run only when an exchange is needed.
    pub(super) fn resolve(self, env: &dyn Fn(&str) -> Option<String>) -> Result<Token, SubjectError> {
        let (token, from) = match self {
            Self::File(path) => match std::fs::read_to_string(&path) {
                Ok(token) => (token, path.display().to_string()),
                Err(source) => return Err(SubjectError::File { path, source }),
            },
            Self::Env(name) => match env(&name) {
                Some(token) => (token, name),
                None => return Err(SubjectError::Unset(name)),
            },
            Self::Command(command) => return Ok(Token::Command(command)),
        };
        let token = Secret::new(token);
        match token.expose().trim() {
            "" => Err(SubjectError::Empty(from)),
            trimmed => Ok(Token::Fixed(Secret::new(trimmed.to_owned()))),
        }
    }
}

/// A subject token, or the way to get one.
#[derive(Debug)]
pub(super) enum Token {
    /// One token (from a file or a variable): the broker accepts it once.
    Fixed(Secret),
    /// A command printing a fresh token each time it runs.
    Command(String),
}

impl Token {
    /// The token to exchange: the fixed one, or what the command prints now.
    pub(super) async fn get(&self) -> Result<Secret, SubjectError> {
        match self {
            Self::Fixed(token) => Ok(token.clone()),
            Self::Command(command) => run_command(command, COMMAND_DEADLINE).await,
        }
    }
}

/// Runs `command` with `sh -c`, stdin closed, and returns its trimmed stdout; kills it after
/// `deadline`.
pub(super) async fn run_command(command: &str, deadline: Duration) -> Result<Secret, SubjectError> {
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(SubjectError::Spawn)?;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(SubjectError::Spawn(std::io::Error::other("no pipes to the command")));
    };
    let finished = tokio::time::timeout(deadline, async {
        let (out, err, status) =
            tokio::join!(read_bounded(stdout, MAX_TOKEN_BYTES), read_bounded(stderr, 4 * 1024), child.wait());
        (out, err, status)
    })
    .await;
    // On the deadline, dropping `child` kills it (kill_on_drop).
    let Ok((out, err, status)) = finished else { return Err(SubjectError::Deadline(deadline)) };
    let status = status.map_err(SubjectError::Spawn)?;
    let (out, out_truncated) = out.map_err(SubjectError::Spawn)?;
    let out = Secret::new(String::from_utf8_lossy(&out).into_owned());
    if !status.success() {
        let (err, _) = err.unwrap_or_default();
        let text = String::from_utf8_lossy(&err);
        let text: String = text.trim().chars().take(STDERR_QUOTE_CHARS).collect();
        let stderr = if text.is_empty() { String::new() } else { format!(": {text}") };
        return Err(SubjectError::Failed { status, stderr });
    }
    if out_truncated {
        return Err(SubjectError::TooLong);
    }
    match out.expose().trim() {
        "" => Err(SubjectError::Empty("the subject token command".to_owned())),
        trimmed => Ok(Secret::new(trimmed.to_owned())),
    }
}

/// Reads a pipe to its end, keeping at most `limit` bytes (so the command never blocks on a full
/// pipe); says whether more came.
async fn read_bounded(mut pipe: impl AsyncRead + Unpin, limit: usize) -> std::io::Result<(Vec<u8>, bool)> {
    let mut kept = Vec::new();
    let mut buffer = [0; 8192];
    let mut truncated = false;
    loop {
        let n = pipe.read(&mut buffer).await?;
        if n == 0 {
            return Ok((kept, truncated));
        }
        let room = limit.saturating_sub(kept.len());
        kept.extend_from_slice(buffer.get(..n.min(room)).unwrap_or_default());
        truncated |= n > room;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[tokio::test]
    async fn the_command_s_trimmed_stdout_is_the_token() {
        let token = run_command("printf '  eyJ.token.sig\\n'", COMMAND_DEADLINE).await.unwrap();
        assert_eq!(token.expose(), "eyJ.token.sig");
    }

    #[tokio::test]
    async fn a_failing_or_silent_command_is_a_clear_error() {
        let error = run_command("echo partial; echo 'no token for you' >&2; exit 3", COMMAND_DEADLINE)
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("exit status: 3") && error.contains("no token for you"), "{error}");
        assert!(!error.contains("partial"), "stdout is never quoted: {error}");
        let error = run_command("true", COMMAND_DEADLINE).await.unwrap_err().to_string();
        assert!(error.contains("empty"), "{error}");
        let long = run_command("head -c 100000 /dev/zero | tr '\\0' a", COMMAND_DEADLINE).await.unwrap_err();
        assert!(matches!(long, SubjectError::TooLong), "{long}");
        let hung = run_command("sleep 30", Duration::from_millis(200)).await.unwrap_err();
        assert!(matches!(hung, SubjectError::Deadline(_)), "{hung}");
    }

    #[test]
    fn a_file_or_variable_is_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "abc\n").unwrap();
        let none = |_: &str| None;
        let fixed = |token: Result<Token, SubjectError>| match token {
            Ok(Token::Fixed(token)) => Some(token.expose().to_owned()),
            _ => None,
        };
        assert_eq!(fixed(SubjectSource::File(file).resolve(&none)).as_deref(), Some("abc"));
        let set = |_: &str| Some(" def ".to_owned());
        assert_eq!(fixed(SubjectSource::Env("T".into()).resolve(&set)).as_deref(), Some("def"));
        assert!(matches!(SubjectSource::Env("T".into()).resolve(&none), Err(SubjectError::Unset(_))));
        let blank = |_: &str| Some(" \n".to_owned());
        assert!(matches!(SubjectSource::Env("T".into()).resolve(&blank), Err(SubjectError::Empty(_))));
        assert!(matches!(SubjectSource::Command("x".into()).resolve(&none), Ok(Token::Command(_))));
    }
}
