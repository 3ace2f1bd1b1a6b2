//! The broker's one configuration file.
//!
//! A misspelled security setting must be an error, never a silent default, so every table denies
//! unknown keys (SPIRE does the same). Errors name the key path of the first problem so an operator
//! at 3 a.m. knows which line to fix. Nothing here touches the process environment directly: secrets
//! that come from the environment are looked up through a caller-supplied function, so tests can
//! build any environment without mutating the real one.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::identity::kek::KekError;

mod file;
mod overlay;
mod resolve;

pub use file::{
    AgentsConfig, AuditConfig, AwsTarget, ClaimMapping, Config, DEV_AUDIENCES, ExchangeMode, IssuerConfig, KeysConfig,
    KvRead, LogConfig, LogFormat, PkiIssue, PolicyConfig, RepositoryConfig, ServerConfig, SinkConfig, SourceIdentity,
    StorageConfig, TargetAccess, TargetConfig, TargetKind, TokensConfig, VaultTarget, WriteSubject,
    default_subject_template, url_host,
};
pub use overlay::{DevOverlay, OVERLAY_TABLES, OverlayError};

/// Hard upper bound on any token lifetime (DESIGN.md §2). Retired keys stay published at least this
/// long plus clock skew, whatever the configured maximum, so a later config change can never
/// unpublish a key that still has live tokens.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// Largest clock-skew leeway the broker accepts (DESIGN.md §8).
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Placeholders a subject template may use. The run ID is deliberately absent: subjects must be
/// stable across runs so trust policies can match them.
pub const SUBJECT_PLACEHOLDERS: &[&str] = &["stack_id", "stack", "phase", "scope", "pool"];

/// A configuration problem, with the dotted key path it concerns.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a key has the wrong type or is unknown.
    #[error("{path}: `{key}`: {message}")]
    Parse {
        /// The file.
        path: String,
        /// Dotted key path of the problem (`.` for the document root).
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A value parsed but is not acceptable.
    #[error("`{key}`: {message}")]
    Invalid {
        /// Dotted key path.
        key: &'static str,
        /// What is wrong and what is accepted.
        message: String,
    },
    /// The key-encryption key could not be obtained.
    #[error("`{key}`: {source}")]
    Kek {
        /// Which setting supplied it.
        key: &'static str,
        /// Why it is unusable.
        source: KekError,
    },
}

/// A configuration value that is a secret (an inline KEK, a database URL with a password). It
/// deserializes from a plain string and never prints.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "String")]
pub struct Secret(zeroize::Zeroizing<String>);

impl Secret {
    /// The value, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(zeroize::Zeroizing::new(value))
    }
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key, message: message.into() }
}

/// Where the database is.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseLocation {
    /// An SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL URL (may contain a password; never printed).
    Postgres(String),
}

impl fmt::Debug for DatabaseLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            Self::Postgres(_) => f.write_str("Postgres(…)"),
        }
    }
}

impl Config {
    /// Reads and validates a config file. `env` looks up environment variables.
    pub fn load(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let config = Self::parse(&text, &path.display().to_string())?;
        config.validate(env)?;
        Ok(config)
    }

    /// Parses TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        parse_toml(text, origin)
    }
}

/// Parses TOML text into `T`; errors name `origin`, the dotted key path and the line.
fn parse_toml<T: serde::de::DeserializeOwned>(text: &str, origin: &str) -> Result<T, ConfigError> {
    let deserializer = toml::Deserializer::parse(text).map_err(|e| ConfigError::Parse {
        path: origin.to_owned(),
        key: ".".to_owned(),
        message: e.message().to_owned() + &line_hint(text, e.span()),
    })?;
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        ConfigError::Parse {
            path: origin.to_owned(),
            key,
            message: inner.message().to_owned() + &line_hint(text, inner.span()),
        }
    })
}

fn line_hint(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(span) => {
            let line = text.get(..span.start).unwrap_or_default().matches('\n').count() + 1;
            format!(" (line {line})")
        }
        None => String::new(),
    }
}
