//! Credentials for private repositories (`[[repositories]]` in the configuration), by URL prefix.
//!
//! The broker needs them twice: to resolve a run's commit at submit (`git ls-remote`), and to
//! hand them to the agent that holds one of the run's jobs, for its checkout (the
//! `SourceCredentials` RPC, lease-checked and recorded as `source.credentials_issued`). They are
//! never stored: a password file is read again at every use, so rotating it in place needs no
//! restart, and neither the database nor the agent's disk ever holds one.

use std::path::PathBuf;

use keyward_proto::secret::Secret;

use super::{GitError, HeldJob, RunError, Runs, run_context};
use crate::audit::{Append, AuditEvent, Context, Kind};

/// The longest password or token read.
const MAX_PASSWORD: usize = 4096;

/// Where a repository password comes from.
#[derive(Debug, Clone)]
pub enum PasswordSource {
    /// A value read once, at start (`password_env`).
    Value(Secret),
    /// A file read at every use (`password_file`).
    File(PathBuf),
}

/// A repository password could not be had.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The password file could not be read.
    #[error("cannot read the password of repositories under `{prefix}` from {path}: {source}")]
    Unreadable {
        /// The configured prefix.
        prefix: String,
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The password is empty, too long, or not one line of text.
    #[error("the password of repositories under `{0}` must be one line of 1 to {MAX_PASSWORD} bytes")]
    Malformed(String),
}

/// The credentials of one URL prefix.
#[derive(Debug, Clone)]
pub struct RepositoryCredential {
    url_prefix: String,
    username: String,
    password: PasswordSource,
}

impl RepositoryCredential {
    /// Credentials for URLs starting with `url_prefix`.
    pub fn new(url_prefix: String, username: String, password: PasswordSource) -> Self {
        Self { url_prefix, username, password }
    }

    /// The URL prefix.
    pub fn url_prefix(&self) -> &str {
        &self.url_prefix
    }

    /// The user name.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// The password, read now.
    pub fn password(&self) -> Result<Secret, SourceError> {
        let value = match &self.password {
            PasswordSource::Value(secret) => secret.clone(),
            PasswordSource::File(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| SourceError::Unreadable {
                    prefix: self.url_prefix.clone(),
                    path: path.display().to_string(),
                    source,
                })?;
                Secret::from(text.trim_end_matches(['\n', '\r']).to_owned())
            }
        };
        let text = value.expose();
        if text.is_empty() || text.len() > MAX_PASSWORD || text.chars().any(char::is_control) {
            return Err(SourceError::Malformed(self.url_prefix.clone()));
        }
        Ok(value)
    }

    /// The environment that makes git authenticate under this prefix, with the password read now.
    pub fn git_environment(&self) -> Result<[(String, String); 3], SourceError> {
        let password = self.password()?;
        Ok(keyward_proto::git::auth_environment(&self.url_prefix, &self.username, password.expose()))
    }
}

/// Every configured prefix, longest first.
#[derive(Debug, Clone, Default)]
pub struct RepositoryCredentials(Vec<RepositoryCredential>);

impl RepositoryCredentials {
    /// The table of `entries`.
    pub fn new(mut entries: Vec<RepositoryCredential>) -> Self {
        entries.sort_by_key(|entry| std::cmp::Reverse(entry.url_prefix.len()));
        Self(entries)
    }

    /// The credentials for `url`: the longest prefix it starts with, if git may carry them there
    /// (HTTPS, or HTTP to loopback).
    pub fn for_url(&self, url: &str) -> Option<&RepositoryCredential> {
        if !keyward_proto::git::may_carry_credentials(url) {
            return None;
        }
        self.0.iter().find(|entry| url.starts_with(&entry.url_prefix))
    }
}

/// What the agent holding a job is given for its checkout.
#[derive(Debug)]
pub struct IssuedSource {
    /// The URL prefix the credentials are for (git sends them only there).
    pub url_prefix: String,
    /// The user name.
    pub username: String,
    /// The password or token.
    pub password: Secret,
}

impl Runs {
    /// The credentials of `held`'s repository, for the agent holding the job, recorded with a
    /// re-check of the lease: an agent whose lease moved on meanwhile gets nothing.
    pub async fn source_credentials(&self, held: &HeldJob) -> Result<IssuedSource, RunError> {
        let repository = &held.stack.spec.repository;
        let entry = self
            .repositories
            .for_url(repository)
            .ok_or_else(|| RunError::NoRepositoryCredentials(repository.clone()))?;
        let password = entry.password().map_err(GitError::from)?;
        let now = self.clock.now();
        let agent = held.job.agent_id.clone().unwrap_or_default();
        let context =
            run_context(&held.run, &held.stack, held.job.phase, &format!("agent:{agent}"), Context::default());
        let event = AuditEvent::new(Kind::SourceCredentialsIssued, now, context)
            .with("job_id", held.job.id.as_str())
            .with("agent_id", agent.as_str())
            .with("fencing_token", held.job.fencing_token)
            .with("url_prefix", entry.url_prefix())
            .with("username", entry.username())
            .with_ref("job", &held.job.id);
        self.commit(Append::changes(vec![held.lease_guard(now)], vec![event])).await?;
        Ok(IssuedSource { url_prefix: entry.url_prefix().to_owned(), username: entry.username().to_owned(), password })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(prefix: &str, password: &str) -> RepositoryCredential {
        RepositoryCredential::new(
            prefix.into(),
            "x-access-token".into(),
            PasswordSource::Value(password.to_owned().into()),
        )
    }

    #[test]
    fn the_longest_prefix_wins_and_plain_http_gets_nothing() {
        let table = RepositoryCredentials::new(vec![
            entry("https://git.example.com/", "org"),
            entry("https://git.example.com/platform/", "team"),
        ]);
        let found = |url: &str| table.for_url(url).map(|e| e.password().unwrap().expose().to_owned());
        assert_eq!(found("https://git.example.com/platform/infra.git").as_deref(), Some("team"));
        assert_eq!(found("https://git.example.com/other/infra.git").as_deref(), Some("org"));
        assert_eq!(found("https://elsewhere.example.com/infra.git"), None);
        let plain = RepositoryCredentials::new(vec![entry("http://git.example.com/", "org")]);
        assert!(plain.for_url("http://git.example.com/infra.git").is_none(), "never in the clear");
    }

    #[test]
    fn password_files_are_read_at_every_use_and_must_be_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let credential = RepositoryCredential::new(
            "https://git.example.com/".into(),
            "u".into(),
            PasswordSource::File(path.clone()),
        );
        assert!(matches!(credential.password(), Err(SourceError::Unreadable { .. })));
        std::fs::write(&path, "first\n").unwrap();
        assert_eq!(credential.password().unwrap().expose(), "first");
        std::fs::write(&path, "rotated").unwrap();
        assert_eq!(credential.password().unwrap().expose(), "rotated");
        for bad in ["", "two\nlines", &"x".repeat(MAX_PASSWORD + 1)] {
            std::fs::write(&path, bad).unwrap();
            assert!(matches!(credential.password(), Err(SourceError::Malformed(_))), "{bad:?}");
        }
        assert!(!format!("{credential:?}").contains("rotated"));
    }
}
