//! The broker's one configuration file, read and resolved once at start.
//!
//! A misspelled security setting must be an error, never a silent default, so every table denies
//! unknown keys (SPIRE does the same). Errors name the key path of the first problem so an operator
//! at 3 a.m. knows which line to fix. Nothing here touches the process environment directly: secrets
//! that come from the environment are looked up through a caller-supplied function, so tests can
//! build any environment without mutating the real one.
//!
//! Config sits on top of the broker's modules: it imports the types they own (targets, mint
//! rules, sinks, trusted issuers, the database location, repository credentials) and fills them
//! in; none of them imports it (`scripts/module-graph` checks).
//! - `file`: the TOML format ([`Config`]), one serde type per table.
//! - `resolve`: [`Config::load`] and [`Config::resolve`] check every value and read every secret
//!   into [`Settings`], once; [`Config::check`] stops short of the key-encryption key.
//! - `secret_source`: the one rule for a secret given inline, by environment variable or by file.
//! - `trust`: targets and trusted issuers, checked against each other; `url`: the URL rule.
//! - `overlay`: the `keyward dev --config` tables ([`DevOverlay`]).
//! - `sso`, `notifications`, `vcs`: `[sso]`, `[[notifications]]`, `[vcs.github]`.

use std::path::{Path, PathBuf};

use crate::kek::KekError;

mod file;
mod notifications;
mod overlay;
mod resolve;
mod secret_source;
mod sso;
mod trust;
mod url;
mod vcs;

pub use file::{
    AgentsConfig, AuditConfig, AwsTargetEntry, Config, DEV_AUDIENCES, IssuerEntry, KeysConfig, LogConfig, LogFormat,
    NotificationEntry, PolicyConfig, RepositoryConfig, SchedulerConfig, ServerConfig, SinkEntry, StorageConfig,
    TargetEntry, TokensConfig, VaultTargetEntry,
};
pub use overlay::{DevOverlay, OVERLAY_TABLES, OverlayError};
pub use resolve::{AgentsSettings, AuditSettings, Checked, Settings};
pub use secret_source::SecretSource;
pub use sso::SsoConfig;
pub use vcs::{GithubConfig, VcsConfig};

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

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key, message: message.into() }
}

impl Config {
    /// Reads a config file and resolves it. `env` looks up environment variables.
    pub fn load(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Settings, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::parse(&text, &path.display().to_string())?.resolve(env)
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
