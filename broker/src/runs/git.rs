//! Resolving what a run will check out: the head of a branch, or which branch a commit heads,
//! read with `git ls-remote` when the run is submitted, so the run records an exact commit.
//!
//! `git` runs with prompts disabled and a deadline: a repository that asks for credentials or
//! does not answer fails the submission with a clear error instead of hanging it. A private
//! repository's credentials ([`super::source`]) reach git only through its environment.

use std::time::Duration;

use tokio::process::Command;

/// How long `git ls-remote` may take.
const DEADLINE: Duration = Duration::from_secs(20);

/// Largest listing read (a repository with very many refs is refused, not buffered forever).
const MAX_LISTING: usize = 8 * 1024 * 1024;

/// What a submission runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Resolved {
    /// 40 lowercase hex characters.
    pub commit_sha: String,
    /// A branch whose head is that commit now, if any.
    pub git_ref: Option<String>,
}

/// Why the repository could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// `git` could not be started.
    #[error("cannot run git: {0}")]
    Spawn(std::io::Error),
    /// It did not finish in time.
    #[error("git ls-remote {0} did not answer within {DEADLINE:?}")]
    Timeout(String),
    /// It failed.
    #[error("git ls-remote {repository} failed: {message}")]
    Failed {
        /// The repository.
        repository: String,
        /// The first line git printed.
        message: String,
    },
    /// The repository's configured credentials could not be read.
    #[error(transparent)]
    Credentials(#[from] super::SourceError),
    /// The branch does not exist.
    #[error("branch `{branch}` does not exist in {repository}")]
    NoBranch {
        /// The repository.
        repository: String,
        /// The branch.
        branch: String,
    },
}

/// Whether `sha` is a full commit SHA-1: 40 lowercase hex characters.
pub fn is_commit_sha(sha: &str) -> bool {
    sha.len() == 40 && sha.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `commit` (or, when `None`, the head of `branch`) and the branch it heads.
pub(super) async fn resolve(
    repository: &str,
    branch: &str,
    commit: Option<&str>,
    auth: Option<&super::RepositoryCredential>,
) -> Result<Resolved, GitError> {
    let heads = ls_remote(repository, auth).await?;
    let branch_ref = format!("refs/heads/{branch}");
    let branch_head = heads.iter().find(|(_, name)| *name == branch_ref).map(|(sha, _)| sha.clone());
    match commit {
        None => {
            let commit_sha = branch_head
                .ok_or_else(|| GitError::NoBranch { repository: repository.to_owned(), branch: branch.to_owned() })?;
            Ok(Resolved { commit_sha, git_ref: Some(branch_ref) })
        }
        Some(commit) => {
            // The stack's branch first, then any branch that heads the commit.
            let git_ref = if branch_head.as_deref() == Some(commit) {
                Some(branch_ref)
            } else {
                heads.iter().find(|(sha, _)| sha == commit).map(|(_, name)| name.clone())
            };
            Ok(Resolved { commit_sha: commit.to_owned(), git_ref })
        }
    }
}

/// `(sha, ref)` of every branch.
async fn ls_remote(
    repository: &str,
    auth: Option<&super::RepositoryCredential>,
) -> Result<Vec<(String, String)>, GitError> {
    let mut command = Command::new("git");
    if let Some(auth) = auth {
        command.envs(auth.git_environment()?);
    }
    command
        .args(["ls-remote", "--heads", "--end-of-options", repository])
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ASKPASS", "true")
        .env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(DEADLINE, command.output())
        .await
        .map_err(|_| GitError::Timeout(repository.to_owned()))?
        .map_err(GitError::Spawn)?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let message = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("no output").trim().to_owned();
        return Err(GitError::Failed { repository: repository.to_owned(), message });
    }
    if output.stdout.len() > MAX_LISTING {
        return Err(GitError::Failed { repository: repository.to_owned(), message: "too many refs".to_owned() });
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .filter(|(sha, _)| is_commit_sha(sha))
        .map(|(sha, name)| (sha.to_owned(), name.trim().to_owned()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_shas_are_forty_lowercase_hex() {
        assert!(is_commit_sha("0123456789abcdef0123456789abcdef01234567"));
        assert!(!is_commit_sha("0123456789ABCDEF0123456789abcdef01234567"));
        assert!(!is_commit_sha("0123abc"));
        assert!(!is_commit_sha("0123456789abcdef0123456789abcdef0123456g"));
    }
}
